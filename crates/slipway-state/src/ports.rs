//! Ports: TCP ports allocated to a resource's named ports, stable across deployments.

use slipway_core::EnvName;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use crate::db::{DbError, Exec, params};

use crate::StateError;
use crate::store::{Store, env_name, sql};

impl Store {
    /// The ports for `names` of a resource: those already allocated to it are returned as they
    /// are, and each missing name gets the lowest port of `range` that no one holds in the
    /// store and `is_free` accepts.
    ///
    /// # Guarantees
    /// - All or nothing: the allocation is one transaction, so a failure (or a crash) allocates
    ///   none of the new names.
    /// - A port belongs to at most one `(environment, resource, name)` across all environments
    ///   (a `UNIQUE` constraint, so two processes cannot both take it).
    /// - A port already allocated is returned even if `range` no longer contains it: stability
    ///   wins over a changed configuration. Release it to move it.
    ///
    /// # Caveats
    /// `is_free` runs while the database write lock is held: make it quick (a bind probe).
    /// Port 0 is never allocated.
    ///
    /// # Errors
    /// [`StateError::PortsExhausted`] when the range has too few free ports;
    /// [`StateError::Database`] (a foreign-key failure) when the environment is not recorded.
    pub fn allocate_ports(
        &self,
        environment: &EnvName,
        resource: &str,
        names: &[String],
        range: RangeInclusive<u16>,
        is_free: &dyn Fn(u16) -> bool,
    ) -> Result<BTreeMap<String, u16>, StateError> {
        let operation = || format!("allocate ports for {environment}/{resource}");
        if names.is_empty() {
            // Nothing to allocate, nor to return: no write (most resources have no ports).
            return Ok(BTreeMap::new());
        }
        let allocated = self.write_env(Some(environment), &["ports"], |tx| {
            let mut allocated = read_ports(tx, environment, resource).map_err(sql(operation()))?;
            let missing: BTreeSet<&String> = names
                .iter()
                .filter(|name| !allocated.contains_key(name.as_str()))
                .collect();
            if missing.is_empty() {
                return Ok(allocated);
            }
            let taken: BTreeSet<u16> = tx
                .query(
                    "SELECT port FROM ports WHERE port BETWEEN ?1 AND ?2",
                    params![range.start(), range.end()],
                    |row| row.get(0),
                )
                .map_err(sql(operation()))?
                .into_iter()
                .collect();
            // One pass over the range: a port rejected for one name is not offered to the next.
            let mut candidates = range
                .clone()
                .filter(|port| *port != 0 && !taken.contains(port));
            for (index, name) in missing.iter().enumerate() {
                let Some(port) = candidates.find(|port| is_free(*port)) else {
                    return Err(StateError::PortsExhausted {
                        environment: environment.to_string(),
                        resource: resource.to_owned(),
                        start: *range.start(),
                        end: *range.end(),
                        needed: missing.len() - index,
                    });
                };
                tx.execute(
                    "INSERT INTO ports (environment, resource, name, port) VALUES (?1, ?2, ?3, ?4)",
                    params![environment, resource, name, port],
                )
                .map_err(sql(operation()))?;
                allocated.insert((*name).clone(), port);
            }
            Ok(allocated)
        })?;
        Ok(names
            .iter()
            .filter_map(|name| allocated.get_key_value(name))
            .map(|(name, port)| (name.clone(), *port))
            .collect())
    }

    /// Every port allocated to a resource, by name.
    pub fn ports(
        &self,
        environment: &EnvName,
        resource: &str,
    ) -> Result<BTreeMap<String, u16>, StateError> {
        read_ports(&mut *self.conn(), environment, resource)
            .map_err(sql(format!("read the ports of {environment}/{resource}")))
    }

    /// Releases every port of a resource; returns how many were released.
    pub fn release_ports(
        &self,
        environment: &EnvName,
        resource: &str,
    ) -> Result<usize, StateError> {
        self.write_env(Some(environment), &[], |tx| {
            tx.execute(
                "DELETE FROM ports WHERE environment = ?1 AND resource = ?2",
                params![environment, resource],
            )
            .map(|n| n as usize)
            .map_err(sql(format!(
                "release the ports of {environment}/{resource}"
            )))
        })
    }

    /// Releases the ports of a resource whose names are not in `keep` (ports no longer
    /// declared); returns how many were released.
    pub fn retain_ports(
        &self,
        environment: &EnvName,
        resource: &str,
        keep: &[String],
    ) -> Result<usize, StateError> {
        let operation = || format!("release undeclared ports of {environment}/{resource}");
        // Nothing to release (the common case): no write. Only this resource's own step
        // allocates its ports, so none can appear meanwhile.
        let current = self.ports(environment, resource)?;
        if current.keys().all(|name| keep.contains(name)) {
            return Ok(0);
        }
        self.write_env(Some(environment), &["ports"], |tx| {
            let current = read_ports(tx, environment, resource).map_err(sql(operation()))?;
            let mut released = 0;
            for name in current.keys().filter(|name| !keep.contains(name)) {
                released += tx
                    .execute(
                        "DELETE FROM ports WHERE environment = ?1 AND resource = ?2 AND name = ?3",
                        params![environment, resource, name],
                    )
                    .map_err(sql(operation()))? as usize;
            }
            Ok(released)
        })
    }
}

impl Store {
    /// Every allocated port of `environment`, by resource then port name: one query where
    /// a plan over many resources would otherwise make one per resource.
    pub fn environment_ports(
        &self,
        environment: &EnvName,
    ) -> Result<BTreeMap<String, BTreeMap<String, u16>>, StateError> {
        let operation = || format!("read the ports of {environment}");
        let rows = self
            .conn()
            .query(
                "SELECT resource, name, port FROM ports WHERE environment = ?1",
                params![environment],
                |row| {
                    Ok((
                        row.get::<String>(0)?,
                        row.get::<String>(1)?,
                        row.get::<u16>(2)?,
                    ))
                },
            )
            .map_err(sql(operation()))?;
        let mut out: BTreeMap<String, BTreeMap<String, u16>> = BTreeMap::new();
        for (resource, name, port) in rows {
            out.entry(resource).or_default().insert(name, port);
        }
        Ok(out)
    }

    /// Every allocated port, by environment, resource and port name:
    /// [`Store::environment_ports`] of every environment in one query.
    #[allow(clippy::type_complexity)] // The three levels are the three names of a port.
    pub fn all_ports(
        &self,
    ) -> Result<BTreeMap<EnvName, BTreeMap<String, BTreeMap<String, u16>>>, StateError> {
        let rows = self
            .conn()
            .query(
                "SELECT environment, resource, name, port FROM ports",
                params![],
                |row| {
                    Ok((
                        env_name(row, 0)?,
                        row.get::<String>(1)?,
                        row.get::<String>(2)?,
                        row.get::<u16>(3)?,
                    ))
                },
            )
            .map_err(sql("read every environment's ports"))?;
        let mut out: BTreeMap<EnvName, BTreeMap<String, BTreeMap<String, u16>>> = BTreeMap::new();
        for (environment, resource, name, port) in rows {
            out.entry(environment)
                .or_default()
                .entry(resource)
                .or_default()
                .insert(name, port);
        }
        Ok(out)
    }
}

fn read_ports(
    conn: &mut impl Exec,
    environment: &EnvName,
    resource: &str,
) -> Result<BTreeMap<String, u16>, DbError> {
    // No ORDER BY: the rows go into a sorted map anyway, and with it SQLite marks the
    // statement "re-prepare on bind", which the statement cache then pays on every call.
    let rows = conn.query(
        "SELECT name, port FROM ports WHERE environment = ?1 AND resource = ?2",
        params![environment, resource],
        |row| Ok((row.get::<String>(0)?, row.get::<u16>(1)?)),
    )?;
    Ok(rows.into_iter().collect())
}
