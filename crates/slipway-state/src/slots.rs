//! Slots: how many generated and ad-hoc environments may run at once, and the queue of those
//! waiting for one.
//!
//! A family's `max_environments` caps its members (generated, and ad-hoc ones made `--like`
//! it); `[local] max_environments` caps every generated and ad-hoc environment of the home
//! together. Static environments are the team's: they never queue and take no slot. An
//! environment that finds no slot is recorded `queued` (nothing else of it exists: no ports,
//! no uid, no process) and waits, in order of arrival (`queued_at`, then name), until
//! [`Store::promote`] finds it one.
//!
//! # Guarantees
//! Counting the slots taken and promoting (or admitting) is one transaction that locks the
//! environments table against other writers (SQLite's `BEGIN IMMEDIATE`, PostgreSQL's `SHARE
//! ROW EXCLUSIVE`): two replicas, or a refresh and a destroy, never both fill one slot. A
//! decision is recorded before anything acts on it, so a controller killed after it finds the
//! environment awake (and reconciles it) or queued (and promotes it later) on restart.
//!
//! # Caveats
//! A cap lowered below the count running stops nothing: the environments running stay, and
//! the queue moves only once fewer than the new cap run.

use std::collections::BTreeMap;

use slipway_core::EnvName;
use slipway_core::vocab::{Activity, EnvKind};

use crate::EnvironmentRecord;
use crate::StateError;
use crate::db::{Exec, Tx, params};
use crate::environments::{COLUMNS, from_row, read_one, read_queued, write_row};
use crate::store::{Store, sql};

/// The caps in force: the families' `max_environments` (as the stack at the default ref says)
/// and the home's `[local] max_environments`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// `max_environments` of each family that has one, by the family's name.
    pub families: BTreeMap<String, u32>,
    /// `[local] max_environments`: generated and ad-hoc environments together.
    pub total: Option<u32>,
}

impl Caps {
    /// Whether a cap applies to `record`: a generated or ad-hoc environment, of a family with
    /// `max_environments` or on a home with `[local] max_environments`.
    pub fn bind(&self, record: &EnvironmentRecord) -> bool {
        record.kind != EnvKind::Static
            && (self.total.is_some()
                || record
                    .definition
                    .as_ref()
                    .is_some_and(|d| self.families.contains_key(d)))
    }
}

/// What [`Store::admit`] recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The new environment as recorded: `awake`, or `queued` with its `queued_at`.
    pub record: EnvironmentRecord,
    /// Its place in its family's queue, from 1, when queued.
    pub position: Option<u32>,
    /// Other environments that found a slot in the same transaction (a cap raised since the
    /// last promotion).
    pub promoted: Vec<Promoted>,
}

/// An environment that left the queue for a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promoted {
    /// Its name.
    pub name: EnvName,
    /// Its family.
    pub definition: Option<String>,
    /// How long it waited, in milliseconds.
    pub waited_ms: i64,
}

/// Each queued environment's place in its family's queue, from 1: by `queued_at`, then name.
/// Environments not queued are left out.
pub fn queue_positions<'a>(
    records: impl IntoIterator<Item = &'a EnvironmentRecord>,
) -> BTreeMap<EnvName, u32> {
    let mut queued: Vec<&EnvironmentRecord> = records
        .into_iter()
        .filter(|r| r.activity == Activity::Queued)
        .collect();
    queued.sort_by(|a, b| order(a).cmp(&order(b)));
    let mut next: BTreeMap<Option<&str>, u32> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for record in queued {
        let place = next.entry(record.definition.as_deref()).or_insert(0);
        *place += 1;
        out.insert(record.name.clone(), *place);
    }
    out
}

/// The queue's order: earlier first (a record without a time first, as the oldest), then by
/// name, which only breaks ties of one millisecond (one refresh).
fn order(record: &EnvironmentRecord) -> (i64, &str) {
    (record.queued_at.unwrap_or(i64::MIN), record.name.as_str())
}

/// The slots taken: generated and ad-hoc environments that are not queued, by family and in
/// all.
struct Taken {
    families: BTreeMap<Option<String>, u32>,
    total: u32,
}

impl Taken {
    fn read(tx: &mut Tx<'_>) -> Result<Taken, StateError> {
        let rows = tx
            .query(
                "SELECT definition, COUNT(*) FROM environments \
                 WHERE kind <> ?1 AND activity <> ?2 GROUP BY definition",
                params![EnvKind::Static.as_str(), Activity::Queued.as_str()],
                |row| {
                    let n: i64 = row.get(1)?;
                    Ok((row.get::<Option<String>>(0)?, u32::try_from(n).unwrap_or(0)))
                },
            )
            .map_err(sql("count the environments holding a slot"))?;
        let total = rows.iter().map(|(_, n)| n).sum();
        Ok(Taken {
            families: rows.into_iter().collect(),
            total,
        })
    }

    /// Whether an environment of `family` fits under `caps`.
    fn fits(&self, caps: &Caps, family: Option<&String>) -> bool {
        let in_family = family
            .and_then(|f| caps.families.get(f))
            .is_none_or(|cap| self.families.get(&family.cloned()).copied().unwrap_or(0) < *cap);
        in_family && caps.total.is_none_or(|cap| self.total < cap)
    }

    fn take(&mut self, family: Option<&String>) {
        *self.families.entry(family.cloned()).or_insert(0) += 1;
        self.total += 1;
    }
}

/// Promotes, in `tx`, every queued environment there is a slot for, earliest first: each
/// becomes `awake` since `now`, and its time to live starts.
fn promote_in(tx: &mut Tx<'_>, caps: &Caps, now: i64) -> Result<Vec<Promoted>, StateError> {
    let mut queued = read_queued(tx)?;
    if queued.is_empty() {
        return Ok(Vec::new());
    }
    queued.sort_by(|a, b| order(a).cmp(&order(b)));
    let mut taken = Taken::read(tx)?;
    let mut promoted = Vec::new();
    for record in queued {
        // A family's queue is first come, first served: one held back by its family's cap
        // holds back those behind it in the family, while another family's may go.
        if !taken.fits(caps, record.definition.as_ref()) {
            continue;
        }
        taken.take(record.definition.as_ref());
        // Its time to live starts now; an expiry a person set further while it waited (`env
        // extend`) stands.
        let expires_at = record
            .ttl_ms
            .map(|ttl| now.saturating_add(ttl))
            .max(record.expires_at);
        tx.execute(
            "UPDATE environments SET activity = ?2, activity_since = ?3, queued_at = NULL, \
             expires_at = ?4, updated_at = ?3 WHERE name = ?1",
            params![
                record.name.as_str(),
                Activity::Awake.as_str(),
                now,
                expires_at
            ],
        )
        .map_err(sql(format!("promote environment {}", record.name)))?;
        promoted.push(Promoted {
            waited_ms: now.saturating_sub(record.queued_at.unwrap_or(now)),
            name: record.name,
            definition: record.definition,
        });
    }
    Ok(promoted)
}

impl Store {
    /// Records a new environment, queued when `caps` leave it no slot, unless one of that name
    /// is recorded already (`None`: another replica recorded it meanwhile).
    ///
    /// A capped environment joins the back of the queue (`queued_at` after every one queued,
    /// so that names never jump it), then takes a slot if there is one for it and for every
    /// one ahead of it in its family: counting and recording are one transaction (see the
    /// module's guarantees). A queued environment has no expiry until it runs: its time to
    /// live starts when it gets a slot.
    pub fn admit(
        &self,
        record: &EnvironmentRecord,
        caps: &Caps,
        now: i64,
    ) -> Result<Option<Admitted>, StateError> {
        if !caps.bind(record) {
            // No cap to count against: recorded as any environment, without locking the
            // table against every other writer.
            let inserted = self.insert_environment(record)?;
            return Ok(inserted.then(|| Admitted {
                record: record.clone(),
                position: None,
                promoted: Vec::new(),
            }));
        }
        self.write_env(Some(&record.name), &["environments"], |tx| {
            if read_one(tx, &record.name)?.is_some() {
                return Ok(None);
            }
            let mut record = record.clone();
            let last: Option<i64> = tx
                .query_one(
                    "SELECT MAX(queued_at) FROM environments WHERE activity = ?1",
                    params![Activity::Queued.as_str()],
                    |row| row.get(0),
                )
                .map_err(sql("read the queue's last arrival"))?;
            record.activity = Activity::Queued;
            record.activity_since = Some(now);
            record.queued_at = Some(last.map_or(now, |last| now.max(last.saturating_add(1))));
            record.expires_at = None;
            write_row(tx, &record, "DO NOTHING")?;
            let mut promoted = promote_in(tx, caps, now)?;
            let position = match promoted.iter().position(|p| p.name == record.name) {
                Some(at) => {
                    promoted.remove(at);
                    record.activity = Activity::Awake;
                    record.queued_at = None;
                    record.expires_at = record.ttl_ms.map(|ttl| now.saturating_add(ttl));
                    None
                }
                None => position_in(tx, &record)?,
            };
            Ok(Some(Admitted {
                record,
                position,
                promoted,
            }))
        })
    }

    /// Gives every queued environment there is a slot for under `caps` its slot, earliest
    /// first (in its family's order), in one transaction; returns those promoted, to
    /// reconcile. Safe to call at any time and from any replica: with no slot free or no one
    /// queued it changes nothing.
    pub fn promote(&self, caps: &Caps, now: i64) -> Result<Vec<Promoted>, StateError> {
        self.write_env(None, &["environments"], |tx| promote_in(tx, caps, now))
    }

    /// Removes environment `name` from the queue, and from the records, if it is still
    /// queued: nothing of it exists beyond its record. Returns whether it did; `false` when
    /// it is not recorded or has a slot by now (destroy it instead).
    pub fn leave_queue(&self, name: &EnvName) -> Result<bool, StateError> {
        let deleted = self.write_env(Some(name), &["environments"], |tx| {
            tx.execute(
                "DELETE FROM environments WHERE name = ?1 AND activity = ?2",
                params![name.as_str(), Activity::Queued.as_str()],
            )
            .map_err(sql(format!("remove environment {name} from the queue")))
        })?;
        Ok(deleted > 0)
    }

    /// Environment `name`'s place in its family's queue, from 1, if it is queued.
    pub fn queue_position(&self, name: &EnvName) -> Result<Option<u32>, StateError> {
        let mut conn = self.conn();
        match read_one(&mut *conn, name)? {
            Some(record) if record.activity == Activity::Queued => position_in(&mut *conn, &record),
            _ => Ok(None),
        }
    }
}

/// `record`'s place in its family's queue, read through `db`.
fn position_in(db: &mut impl Exec, record: &EnvironmentRecord) -> Result<Option<u32>, StateError> {
    let family = db
        .query_owned(
            &format!("SELECT {COLUMNS} FROM environments WHERE activity = ?1 AND definition = ?2"),
            params![Activity::Queued.as_str(), record.definition],
            from_row,
        )
        .map_err(sql("read a family's queue"))?;
    Ok(queue_positions(&family).get(&record.name).copied())
}
