//! One entrance per stage, for every caller (the CLI, the controller, the API): opening the
//! repository, loading a commit (through the commit cache), naming the environment an
//! operation is for, rendering it, the protected-destroy decision, and where a resource's
//! log is. The binary only parses arguments, asks and prints.

use slipway_core::EnvName;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use slipway_core::render::{self, DesiredState, EnvKind, Target};
use slipway_core::vocab::SyncState;
use slipway_git::{GitRepository, Source};
use slipway_state::EnvironmentRecord;

use crate::cache::Cached;
use crate::{Engine, EngineError, EnvTarget, Envelope, Origin, Prepared, discover};

/// A repository opened for one command, with how fresh it is.
pub struct OpenedRepository {
    /// The repository (a remote is a mirror in the home).
    pub repository: GitRepository,
    /// Why the remote could not be fetched, when the command works offline from the copy
    /// the home already held.
    pub offline: Option<String>,
}

/// Opens `spec` (a local path or a URL) for a command. A URL is mirrored into `home` and
/// fetched, so that a command never reads a stale copy unknowingly: when the fetch fails, the
/// answer says why, and the command works offline from the copy the home holds.
pub fn open_repository(home: &Path, spec: &str) -> Result<OpenedRepository, EngineError> {
    let repository = GitRepository::open(spec, &home.join("repos"))?;
    let offline = match repository.fetch() {
        Ok(()) => None,
        Err(e) => Some(e.to_string()),
    };
    Ok(OpenedRepository {
        repository,
        offline,
    })
}

/// An environment named by a person (the command line), and where its stack comes from.
pub struct Named<'a> {
    /// The environment's name: static, a member of a generated family (`br-feature-x`, as
    /// discovery names it), or one recorded here (an ad-hoc environment).
    pub name: &'a EnvName,
    /// The repository.
    pub source: &'a dyn Source,
    /// How the user named the repository.
    pub repo: &'a str,
    /// The ref asked for; `None`: the ref the environment follows (a generated or ad-hoc
    /// one), else `HEAD`.
    pub reference: Option<&'a str>,
    /// Folder of `slipway.yaml` inside the repository.
    pub folder: &'a str,
}

/// Why an apply (or a destroy) needs a person's confirmation: it destroys something in a
/// protected environment, or removes the protection itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmationNeeded {
    /// The environment.
    pub environment: EnvName,
    /// What is destroyed, e.g. `db (replace postgres.database)`; every resource when
    /// `whole` is set.
    pub destroys: Vec<String>,
    /// The commit removes the environment's `protected` setting.
    pub unprotects: bool,
    /// The whole environment is destroyed.
    pub whole: bool,
}

impl fmt::Display for ConfirmationNeeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env = &self.environment;
        if self.whole {
            return write!(
                f,
                "`{env}` is protected: destroying it needs an explicit confirmation"
            );
        }
        let destroys = self.destroys.join(", ");
        match (self.destroys.is_empty(), self.unprotects) {
            (true, _) => write!(
                f,
                "`{env}` is protected and this commit removes its `protected` setting"
            ),
            (false, false) => write!(f, "`{env}` is protected and this plan destroys {destroys}"),
            (false, true) => write!(
                f,
                "`{env}` is protected and this commit removes its `protected` setting and \
                 destroys {destroys}"
            ),
        }
    }
}

impl ConfirmationNeeded {
    /// Destroying the whole protected environment `environment`.
    pub(crate) fn whole(environment: &EnvName) -> ConfirmationNeeded {
        ConfirmationNeeded {
            environment: environment.clone(),
            destroys: Vec::new(),
            unprotects: false,
            whole: true,
        }
    }
}

impl Prepared {
    /// What applying this plan needs a person to confirm, if anything: the one place that
    /// decides it, for the CLI (which asks), the controller (which holds) and apply (which
    /// refuses without it).
    pub fn needs_confirmation(&self) -> Option<ConfirmationNeeded> {
        let destroys: Vec<String> = crate::apply::protected_destroys(self)
            .iter()
            .map(|c| format!("{} ({} {})", c.resource, c.action.as_str(), c.type_name))
            .collect();
        let unprotects = self.protected && !self.declared.protected;
        (!destroys.is_empty() || unprotects).then(|| ConfirmationNeeded {
            environment: self.desired.environment.name.clone(),
            destroys,
            unprotects,
            whole: false,
        })
    }
}

/// Where a resource's log is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    /// The resource.
    pub resource: String,
    /// Its live instance's log file.
    pub path: PathBuf,
}

impl Engine {
    /// The stack at `reference` (a branch, tag or commit) through the commit cache.
    pub fn load_ref(
        &self,
        source: &dyn Source,
        reference: &str,
        folder: &str,
    ) -> Result<Arc<Cached>, EngineError> {
        self.load_cached(&Origin {
            source,
            repo: "",
            reference,
            folder,
            tip: None,
        })
    }

    /// The stack at the tip of the tracked branch `reference` (never a tag named like it)
    /// through the commit cache.
    pub fn load_tracked(
        &self,
        source: &dyn Source,
        reference: &str,
        folder: &str,
    ) -> Result<Arc<Cached>, EngineError> {
        let commit = source.resolve_tracked(reference)?;
        self.load_cached(&Origin {
            source,
            repo: "",
            reference,
            folder,
            tip: Some(&commit.sha),
        })
    }

    /// The target for an environment named on the command line: what the store recorded of
    /// it (a generated or ad-hoc environment keeps its family), or a static environment of
    /// that name. A record of another kind under a name the stack defines (an ad-hoc `prod`)
    /// keeps its kind here, and [`Engine::prepare`] refuses it: it is never adopted.
    pub fn target_for(&self, name: &EnvName) -> Result<EnvTarget, EngineError> {
        Ok(match self.store.environment(name)? {
            Some(record) => EnvTarget {
                name: record.name.clone(),
                definition: record
                    .definition
                    .clone()
                    .unwrap_or_else(|| record.name.to_string()),
                kind: match record.kind.as_str() {
                    "generated" => EnvKind::Generated,
                    "adhoc" => EnvKind::Adhoc,
                    _ => EnvKind::Static,
                },
                owner: record.owner.clone(),
                ttl: record
                    .ttl_ms
                    .map(|ms| Duration::from_millis(ms.max(0) as u64)),
                idle_limits: (None, None),
                access_in_force: None,
                windows_in_force: Default::default(),
            },
            None => EnvTarget::static_env(name),
        })
    }

    /// Which environment `named` is, and the ref to read it at: one recorded here keeps its
    /// kind and family; a name of the stack at the ref asked for is static (a family's name
    /// is refused: it is not one environment); a name discovery gives a branch matching a
    /// family (`br-feature-x` for `feature/x`) is that generated environment, read at its
    /// branch unless a ref was asked for.
    pub fn name_target(&self, named: &Named<'_>) -> Result<(EnvTarget, String), EngineError> {
        let asked = named.reference.map(str::to_string);
        if let Some(record) = self.store.environment(named.name)? {
            let mut target = self.target_for(named.name)?;
            if target.kind != EnvKind::Static {
                let family = self.family_in_force(
                    named.source,
                    "HEAD",
                    named.folder,
                    &target.definition,
                    target.kind,
                )?;
                target.idle_limits = family.idle_limits;
                target.access_in_force = family.access;
                target.windows_in_force = family.windows;
            }
            let follows = match target.kind {
                EnvKind::Static => None,
                _ if record.pinned => record.desired_commit,
                _ => record.tracked_ref,
            };
            return Ok((target, asked.or(follows).unwrap_or_else(|| "HEAD".into())));
        }
        let cached = self.load_ref(
            named.source,
            named.reference.unwrap_or("HEAD"),
            named.folder,
        )?;
        let static_env = || {
            (
                EnvTarget::static_env(named.name),
                asked.clone().unwrap_or_else(|| "HEAD".into()),
            )
        };
        // An invalid stack is reported by the stage that renders it.
        let Ok(stack) = cached.loaded.valid_stack() else {
            return Ok(static_env());
        };
        if stack.environments.contains_key(named.name.as_str()) {
            return Ok(static_env());
        }
        let generated = self.generated(named.source, stack)?;
        Ok(
            match generated.into_iter().find(|w| &w.name == named.name) {
                Some(w) => {
                    let family = self.family_in_force(
                        named.source,
                        "HEAD",
                        named.folder,
                        &w.definition,
                        EnvKind::Generated,
                    )?;
                    (
                        EnvTarget {
                            name: w.name,
                            definition: w.definition,
                            kind: EnvKind::Generated,
                            owner: None,
                            ttl: w.ttl,
                            idle_limits: family.idle_limits,
                            access_in_force: family.access,
                            windows_in_force: family.windows,
                        },
                        asked.unwrap_or(w.tracked_ref),
                    )
                }
                None => static_env(),
            },
        )
    }

    /// What the `environments:` entry `definition` at `reference` (the default branch: what is
    /// in force for a family, whatever a branch of it says) sets for its environments: its
    /// `sleep_after` and `idle_ttl`, its `access` when written there, and its deploy
    /// windows; nothing when the stack there no longer defines it. A stack that cannot be
    /// read, or is not valid, is an error: its freeze or its `access: private` must not be
    /// passed over because someone pushed a broken `slipway.yaml` there.
    pub fn family_in_force(
        &self,
        source: &dyn Source,
        reference: &str,
        folder: &str,
        definition: &str,
        kind: EnvKind,
    ) -> Result<FamilyInForce, EngineError> {
        let cached = match self.load_tracked(source, reference, folder) {
            Ok(cached) => cached,
            Err(_) => self.load_ref(source, reference, folder)?,
        };
        let stack = cached.loaded.valid_stack().map_err(|first| {
            EngineError::Environment(format!(
                "{} at {} ({reference}) is not valid, so the deploy windows, access and idle \
                 limits it sets for `{definition}`'s environments cannot be read: {first}; \
                 fix it there",
                cached.loaded.entry,
                crate::apply::short(&cached.loaded.commit.sha),
            ))
        })?;
        Ok(stack
            .environments
            .get(definition)
            .map(|def| FamilyInForce {
                idle_limits: (def.sleep_after, def.idle_ttl),
                access: Some(def.access(kind)),
                windows: slipway_core::windows::Windows::of(&def.windows),
            })
            .unwrap_or_default())
    }

    /// The generated environments `stack` makes of `source`'s branches, named as the
    /// controller's discovery names them.
    fn generated(
        &self,
        source: &dyn Source,
        stack: &slipway_core::stack::Stack,
    ) -> Result<Vec<discover::Wanted>, EngineError> {
        let branches = source.branches()?;
        let holder = |name: &EnvName| {
            self.store
                .environment(name)
                .ok()
                .flatten()
                .filter(|r| r.kind == EnvKind::Generated)
                .and_then(|r| r.tracked_ref)
        };
        Ok(discover::wanted(stack, &branches, &[], &holder)
            .into_iter()
            .filter(|w| w.kind == EnvKind::Generated)
            .collect())
    }

    /// Renders the environment a person named (see [`Engine::name_target`]).
    pub fn render_named(&self, named: &Named<'_>) -> Result<DesiredState, EngineError> {
        self.at_named(named, |origin, target| Ok(self.render(origin, target)?.1))
    }

    /// Prepares a plan for the environment a person named (see [`Engine::name_target`]).
    pub fn prepare_named(&self, named: &Named<'_>) -> Result<Prepared, EngineError> {
        self.at_named(named, |origin, target| self.prepare(origin, target))
    }

    /// Runs `stage` on the environment a person named, at the ref it is read at.
    fn at_named<T>(
        &self,
        named: &Named<'_>,
        stage: impl FnOnce(&Origin<'_>, &EnvTarget) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let (target, reference) = self.name_target(named)?;
        let origin = Origin {
            source: named.source,
            repo: named.repo,
            reference: &reference,
            folder: named.folder,
            tip: None,
        };
        stage(&origin, &target)
    }

    /// Renders the recorded environment `name` at the commit it runs.
    pub fn render_running(
        &self,
        name: &EnvName,
        source: &dyn Source,
        folder: &str,
    ) -> Result<DesiredState, EngineError> {
        let record = self.store.environment(name)?.ok_or_else(|| {
            EngineError::Environment(format!("environment `{name}` does not exist here"))
        })?;
        let commit = record
            .commit
            .ok_or_else(|| EngineError::Environment(format!("`{name}` runs no commit yet")))?;
        let origin = Origin {
            source,
            repo: &record.repo,
            reference: &commit,
            folder,
            tip: Some(&commit),
        };
        Ok(self.render(&origin, &self.target_for(name)?)?.1)
    }

    /// Loads and renders `target` at `origin`: the stage [`Engine::prepare`] plans from.
    /// Refuses a name the stack does not define, a family named as a static environment, and
    /// a target that is not what the store recorded under its name.
    pub fn render(
        &self,
        origin: &Origin<'_>,
        target: &EnvTarget,
    ) -> Result<(Arc<Cached>, DesiredState), EngineError> {
        self.render_recorded(origin, target, None)
    }

    /// Whether `record`'s environment runs what rendering it at `origin` gives now: the
    /// commit it runs and last applied in full (`synced`), with the desired-state hash that
    /// apply recorded. Then a plan could differ from nothing only by what it observes (drift)
    /// — which is what the controller's periodic look and its look on start skip, leaving it
    /// to the drift interval. A commit that does not render, or renders otherwise (a newer
    /// Slipway, another definition), is not: [`Engine::prepare`] says why.
    ///
    /// # Guarantees
    /// Reads nothing of the store and observes nothing: `record` is the caller's.
    pub fn runs_as_rendered(
        &self,
        origin: &Origin<'_>,
        target: &EnvTarget,
        record: &EnvironmentRecord,
    ) -> bool {
        let Some(tip) = origin.tip else {
            return false;
        };
        if record.sync != SyncState::Synced
            || record.commit.as_deref() != Some(tip)
            || record.desired_commit.as_deref() != Some(tip)
            || record.hash.is_none()
        {
            return false;
        }
        match self.render_recorded(origin, target, Some(record)) {
            Ok((_, desired)) => record.hash.as_deref() == Some(desired.hash.as_str()),
            Err(_) => false,
        }
    }

    /// [`Engine::render`], with the environment's record in hand when the caller has it
    /// (else read from the store).
    fn render_recorded(
        &self,
        origin: &Origin<'_>,
        target: &EnvTarget,
        recorded: Option<&EnvironmentRecord>,
    ) -> Result<(Arc<Cached>, DesiredState), EngineError> {
        let environment = &target.name;
        let cached = self.load_cached(origin)?;
        let loaded = &cached.loaded;
        let Some(stack) = loaded
            .loaded
            .stack
            .as_ref()
            .filter(|_| !loaded.loaded.has_errors())
        else {
            return Err(EngineError::Invalid {
                commit: loaded.commit.sha.clone(),
                diagnostics: loaded.loaded.diagnostics.clone(),
            });
        };
        let def = stack.environments.get(&target.definition).ok_or_else(|| {
            let known: Vec<&str> = stack.environments.keys().map(String::as_str).collect();
            EngineError::Environment(format!(
                "no environment `{}` in {}; it defines: {}",
                target.definition,
                loaded.entry,
                known.join(", ")
            ))
        })?;
        if def.generate.is_some() && target.kind == EnvKind::Static {
            let members = self
                .generated(origin.source, stack)
                .unwrap_or_default()
                .into_iter()
                .filter(|w| w.definition == target.definition)
                .map(|w| format!("{} (branch `{}`)", w.name, w.tracked_ref))
                .collect();
            return Err(EngineError::Family {
                family: target.definition.clone(),
                members,
            });
        }
        self.check_kind(target, stack, recorded)?;
        let render_target = Target {
            name: environment,
            definition: &target.definition,
            kind: target.kind,
        };
        let desired = render::render(stack, render_target, &loaded.commit.sha, &cached.sources)
            .map_err(|e| EngineError::Environment(e.to_string()))?;
        self.check_postgres_roles(&desired)?;
        Ok((cached, desired))
    }

    /// Refuses a generated or ad-hoc environment with more PostgreSQL roles (a
    /// `postgres.database` makes one, a `postgres.role` one) than `[environments]
    /// max_postgres_roles`: each role holds up to its server's `preview_connection_limit`
    /// connections, and whoever writes the branch chooses how many it declares.
    fn check_postgres_roles(&self, desired: &DesiredState) -> Result<(), EngineError> {
        if desired.environment.kind == EnvKind::Static {
            return Ok(());
        }
        let roles: Vec<&str> = desired
            .resources
            .iter()
            .filter(|(_, r)| matches!(r.type_name.as_str(), "postgres.database" | "postgres.role"))
            .map(|(name, _)| name.as_str())
            .collect();
        let max = self.config.environments.max_postgres_roles();
        if roles.len() > max as usize {
            return Err(EngineError::Environment(format!(
                "`{}` is a {} environment with {} PostgreSQL roles ({}: each `postgres.database` \
                 and `postgres.role` is one), and such an environment may have {max} \
                 (`[environments] max_postgres_roles` in the engine configuration): each may \
                 hold its server's `preview_connection_limit` connections",
                desired.environment.name,
                desired.environment.kind.as_str(),
                roles.len(),
                roles.join(", ")
            )));
        }
        Ok(())
    }

    /// Refuses to render `target` as something it is not: an ad-hoc or generated
    /// environment standing under a name the stack gives an environment (an ad-hoc `prod`
    /// would otherwise run as prod, or prod's record be turned into an ad-hoc one), one that
    /// follows a static entry (`--like prod`: prod's variables and secret overrides), or a
    /// target whose kind differs from the environment recorded under its name.
    fn check_kind(
        &self,
        target: &EnvTarget,
        stack: &slipway_core::stack::Stack,
        recorded: Option<&EnvironmentRecord>,
    ) -> Result<(), EngineError> {
        let name = &target.name;
        let read;
        let recorded = match recorded {
            Some(record) => Some(record),
            None => {
                read = self.store.environment(name)?;
                read.as_ref()
            }
        };
        if let Some(record) = recorded
            && record.kind != target.kind
        {
            return Err(EngineError::NotAdopted(format!(
                "`{name}` is recorded as a {} environment, not {}; it is not adopted as one: \
                 destroy it (`slipway env destroy {name}`) first",
                record.kind,
                target.kind.as_str()
            )));
        }
        if target.kind == EnvKind::Static {
            return Ok(());
        }
        if stack.environments.contains_key(name.as_str()) {
            return Err(EngineError::NotAdopted(format!(
                "held: the stack defines `{name}` itself, but this `{name}` is a {} \
                 environment; it is not adopted as the stack's: destroy it \
                 (`slipway env destroy {name}`) so that the stack's `{name}` can be made",
                target.kind.as_str()
            )));
        }
        if stack
            .environments
            .get(&target.definition)
            .is_some_and(|def| def.generate.is_none())
        {
            return Err(EngineError::Environment(format!(
                "`{name}` is a {} environment that follows the static environment `{}`; \
                 generated and ad-hoc environments take variables and secrets only from a \
                 generated family",
                target.kind.as_str(),
                target.definition
            )));
        }
        Ok(())
    }

    /// The log of each resource of `env` that writes one (or of `resource` only), at its
    /// live instance (an exposed process may run as its second instance after a blue/green
    /// replacement). Sorted by resource.
    pub fn log_files(
        &self,
        env: &EnvName,
        resource: Option<&str>,
    ) -> Result<Vec<LogFile>, EngineError> {
        let records = self.store.resources(env)?;
        let dir = self.env_dirs(env, "", "").logs;
        let path_of = |name: &str| {
            let instance = records
                .iter()
                .find(|r| r.name == name)
                .map(|r| Envelope::of(r).instance(name).to_string())
                .unwrap_or_else(|| name.to_string());
            dir.join(format!("{instance}.log"))
        };
        let mut names: Vec<&str> = match resource {
            Some(r) => vec![r],
            None => records
                .iter()
                .filter(|r| slipway_core::types::capabilities(&r.type_name).logs)
                .map(|r| r.name.as_str())
                .collect(),
        };
        names.sort_unstable();
        Ok(names
            .into_iter()
            .map(|name| LogFile {
                resource: name.to_string(),
                path: path_of(name),
            })
            .collect())
    }
}

/// What a family's entry at the default branch holds its environments to
/// ([`Engine::family_in_force`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyInForce {
    /// Its `sleep_after` and `idle_ttl`.
    pub idle_limits: (Option<Duration>, Option<Duration>),
    /// The `access` of a generated or ad-hoc environment of it (as written, else `private`).
    pub access: Option<slipway_core::vocab::Access>,
    /// Its deploy windows.
    pub windows: slipway_core::windows::Windows,
}
