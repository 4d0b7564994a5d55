//! The vocabulary every layer shares: environment kinds, sync and health states, resource and
//! deployment statuses, event kinds, and why a plan changes a resource.
//!
//! Each word is defined once here, with the exact text the state store, the API's JSON, the
//! CLI's JSON and the web UI use (those are contracts). Text becomes an enum once, at an edge
//! (a row read from the store, a request, a stored plan): [`std::str::FromStr`] and serde
//! refuse a word outside the vocabulary instead of defaulting, so a typo or a row written by
//! something else is an error where it enters, never a silent state.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A word outside one of the vocabularies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWord {
    /// Which vocabulary (`sync state`, `event kind`, ...).
    pub what: &'static str,
    /// The text found.
    pub found: String,
    /// The words of that vocabulary.
    pub allowed: &'static [&'static str],
}

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a {}; expected one of {}",
            self.found,
            self.what,
            self.allowed.join(", ")
        )
    }
}

impl std::error::Error for UnknownWord {}

/// Defines a closed vocabulary: an enum, its words (`as_str`, `WORDS`), `Display`, `FromStr`
/// and serde as those words.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every word of the vocabulary, in declaration order.
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word as the store, the API and the UI spell it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $word, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownWord;

            fn from_str(text: &str) -> Result<Self, UnknownWord> {
                match text {
                    $( $word => Ok($name::$variant), )+
                    _ => Err(UnknownWord {
                        what: $what,
                        found: text.to_string(),
                        allowed: $name::WORDS,
                    }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "enum": $name::WORDS})
            }
        }
    };
}

vocabulary! {
    /// How an environment came to be.
    EnvKind ("environment kind") {
        /// Declared with `track:`.
        Static = "static",
        /// Made by a family for a pull request or branch.
        Generated = "generated",
        /// Made by a person.
        Adhoc = "adhoc",
    }
}

vocabulary! {
    /// Whether an environment runs the commit it should.
    SyncState ("sync state") {
        /// It runs its desired commit.
        Synced = "synced",
        /// It does not (a new commit, drift, not applied yet).
        OutOfSync = "out_of_sync",
        /// An apply is under way.
        Syncing = "syncing",
        /// The last apply failed.
        Failed = "failed",
    }
}

vocabulary! {
    /// An environment's health, as the providers observe it.
    Health ("health state") {
        /// Every resource is ready.
        Healthy = "healthy",
        /// An apply is under way.
        Progressing = "progressing",
        /// A resource failed or is not ready.
        Degraded = "degraded",
        /// Nothing runs (not applied yet, or its resources are gone).
        Missing = "missing",
    }
}

vocabulary! {
    /// The state of a recorded resource: an operation in flight, or its outcome.
    ResourceStatus ("resource status") {
        /// A create began; its result was never recorded (interrupted).
        Creating = "creating",
        /// An update or replace began and was not finished.
        Updating = "updating",
        /// A delete began and was not finished.
        Deleting = "deleting",
        /// Applied and its result recorded.
        Ready = "ready",
        /// The last operation failed.
        Failed = "failed",
    }
}

vocabulary! {
    /// A resource's status as `status` and the API show it: as recorded, except that a `ready`
    /// resource is looked at and may turn out `missing` or `drifted`.
    ShownStatus ("shown resource status") {
        /// A create is in flight (or was interrupted).
        Creating = "creating",
        /// An update or replace is in flight (or was interrupted).
        Updating = "updating",
        /// A delete is in flight (or was interrupted).
        Deleting = "deleting",
        /// Applied, and found as applied.
        Ready = "ready",
        /// The last operation failed.
        Failed = "failed",
        /// Applied, but its live object is gone.
        Missing = "missing",
        /// Applied, but its live object differs.
        Drifted = "drifted",
    }
}

impl From<ResourceStatus> for ShownStatus {
    fn from(status: ResourceStatus) -> ShownStatus {
        match status {
            ResourceStatus::Creating => ShownStatus::Creating,
            ResourceStatus::Updating => ShownStatus::Updating,
            ResourceStatus::Deleting => ShownStatus::Deleting,
            ResourceStatus::Ready => ShownStatus::Ready,
            ResourceStatus::Failed => ShownStatus::Failed,
        }
    }
}

vocabulary! {
    /// A deployment's status. `running` is the only one that changes; the others are final.
    DeploymentStatus ("deployment status") {
        /// Under way (or its process died: see `interrupted`).
        Running = "running",
        /// Every change applied.
        Succeeded = "succeeded",
        /// A change failed.
        Failed = "failed",
        /// The process running it stopped before it finished.
        Interrupted = "interrupted",
    }
}

impl DeploymentStatus {
    /// Whether a deployment with this status is finished.
    pub fn is_final(self) -> bool {
        self != DeploymentStatus::Running
    }
}

vocabulary! {
    /// What an event of the event log says happened.
    EventKind ("event kind") {
        /// An apply began.
        ApplyStarted = "apply.started",
        /// An apply finished with every change made.
        ApplySucceeded = "apply.succeeded",
        /// An apply failed.
        ApplyFailed = "apply.failed",
        /// A reconcile failed; the message is the error (recorded once while it lasts).
        ReconcileFailed = "reconcile.failed",
        /// A blue/green replacement's old instance could not be stopped.
        SwapCleanupFailed = "swap.cleanup_failed",
        /// The controller recorded a new environment.
        EnvironmentCreated = "environment.created",
        /// Two sources want one environment name.
        EnvironmentConflict = "environment.conflict",
        /// An environment and everything in it was deleted.
        EnvironmentDestroyed = "environment.destroyed",
        /// An environment's time to live ran out.
        EnvironmentExpired = "environment.expired",
        /// An environment's expiry moved.
        EnvironmentExtended = "environment.extended",
        /// An environment was pinned to a commit.
        EnvironmentPinned = "environment.pinned",
        /// An environment follows its ref again.
        EnvironmentUnpinned = "environment.unpinned",
        /// A destroy failed.
        DestroyFailed = "destroy.failed",
        /// A change waits for a confirmation.
        ChangeHeld = "change.held",
        /// An expiry waits for a confirmation.
        ExpiryHeld = "expiry.held",
        /// A person applied a change while a deploy window denied it (`--override-window`).
        WindowOverridden = "window.overridden",
        /// A sync a person asked for found the environment running what its commit renders
        /// to: nothing to change.
        SyncUnchanged = "sync.unchanged",
        /// Live objects differ from what was applied.
        DriftDetected = "drift.detected",
        /// Drift was repaired.
        DriftRepaired = "drift.repaired",
        /// A commit's stack is invalid.
        CommitInvalid = "commit.invalid",
        /// Talking to the forge failed.
        ForgeFailed = "forge.failed",
        /// Pruning old rows failed.
        RetentionFailed = "retention.failed",
        /// A webhook delivery could not be handled.
        WebhookFailed = "webhook.failed",
        /// An environment lock of `/slipway apply` was released.
        LockReleased = "lock.released",
        /// Handling a pull request failed.
        PullRequestFailed = "pull_request.failed",
        /// A pull request was merged.
        PullRequestMerged = "pull_request.merged",
        /// A pull request's base branch changed.
        PullRequestRetargeted = "pull_request.retargeted",
        /// A pull request's head moved.
        PullRequestUpdated = "pull_request.updated",
        /// Its processes were stopped after `sleep_after` without a request (or by hand).
        EnvironmentSlept = "environment.slept",
        /// A sleeping environment's processes were started again (a request, or by hand).
        EnvironmentWoke = "environment.woke",
        /// It will be destroyed soon for want of requests (`idle_ttl`), unless extended or
        /// visited.
        EnvironmentIdle = "environment.idle",
        /// Its family runs `max_environments` already: it waits for a slot.
        EnvironmentQueued = "environment.queued",
        /// It left its family's queue and starts.
        EnvironmentDequeued = "environment.dequeued",
        /// A notification receiver (`[notify.NAME]`) refused or did not answer, after retries.
        NotifyFailed = "notify.failed",
    }
}

vocabulary! {
    /// Whether an environment's processes run, wait for a request or wait for a slot.
    Activity ("activity") {
        /// Deployed and running (or not deployed yet and not waiting).
        Awake = "awake",
        /// Its processes are stopped for want of requests; the next request starts them.
        Sleeping = "sleeping",
        /// Its family runs `max_environments` already; it starts when a slot frees.
        Queued = "queued",
    }
}

vocabulary! {
    /// Who may open an environment's preview URL.
    Access ("access") {
        /// Anyone who can reach the router.
        Public = "public",
        /// A person signed in to Slipway who may view the environment, or a signed link.
        Private = "private",
    }
}

/// Why a plan changes a resource when its field diff does not say it.
///
/// Written in JSON (plans in the store, the API and `--output json`) as one sentence, drift
/// prefixed with `drift: `, as before this type existed; inside, whether a change repairs
/// drift is a variant, not a prefix to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The live object differs from what was applied, or is gone: the sentence says how.
    Drift(String),
    /// Anything else: an interrupted apply, a changed type or input.
    Other(String),
}

impl Reason {
    const DRIFT: &'static str = "drift: ";

    /// Whether this change repairs drift.
    pub fn is_drift(&self) -> bool {
        matches!(self, Reason::Drift(_))
    }

    /// The sentence, without the `drift: ` prefix.
    pub fn text(&self) -> &str {
        match self {
            Reason::Drift(text) | Reason::Other(text) => text,
        }
    }

    /// Reads a reason as written in JSON.
    pub fn parse(text: &str) -> Reason {
        match text.strip_prefix(Self::DRIFT) {
            Some(why) => Reason::Drift(why.to_string()),
            None => Reason::Other(text.to_string()),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Drift(why) => write!(f, "{}{why}", Self::DRIFT),
            Reason::Other(text) => f.write_str(text),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Reason::parse(&std::borrow::Cow::<str>::deserialize(
            deserializer,
        )?))
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Reason {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Reason".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Why, when the diff does not say it; drift begins with `drift: `."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T>(all: &[T])
    where
        T: Copy + fmt::Debug + PartialEq + fmt::Display + std::str::FromStr + Serialize,
        T: for<'de> Deserialize<'de>,
        <T as std::str::FromStr>::Err: fmt::Debug,
    {
        for value in all {
            let text = value.to_string();
            assert_eq!(text.parse::<T>().expect("its own word parses"), *value);
            let json = serde_json::to_value(value).expect("serializes");
            assert_eq!(
                json,
                serde_json::Value::String(text.clone()),
                "JSON is the word"
            );
            assert_eq!(
                serde_json::from_value::<T>(json).expect("deserializes"),
                *value
            );
        }
    }

    #[test]
    fn every_word_round_trips_as_itself() {
        round_trips(EnvKind::ALL);
        round_trips(SyncState::ALL);
        round_trips(Health::ALL);
        round_trips(ResourceStatus::ALL);
        round_trips(ShownStatus::ALL);
        round_trips(DeploymentStatus::ALL);
        round_trips(EventKind::ALL);
        round_trips(Activity::ALL);
        round_trips(Access::ALL);
    }

    #[test]
    fn the_words_are_the_contract() {
        assert_eq!(EnvKind::WORDS, ["static", "generated", "adhoc"]);
        assert_eq!(
            SyncState::WORDS,
            ["synced", "out_of_sync", "syncing", "failed"]
        );
        assert_eq!(
            Health::WORDS,
            ["healthy", "progressing", "degraded", "missing"]
        );
        assert_eq!(
            ResourceStatus::WORDS,
            ["creating", "updating", "deleting", "ready", "failed"]
        );
        assert_eq!(
            DeploymentStatus::WORDS,
            ["running", "succeeded", "failed", "interrupted"]
        );
    }

    #[test]
    fn a_word_outside_the_vocabulary_is_refused_not_defaulted() {
        let e = "in_sync".parse::<SyncState>().unwrap_err();
        assert_eq!(e.found, "in_sync");
        assert!(e.to_string().contains("synced, out_of_sync"), "{e}");
        assert!(serde_json::from_str::<Health>("\"Healthy\"").is_err());
        assert!(serde_json::from_str::<EventKind>("\"destroyed\"").is_err());
    }

    #[test]
    fn a_drift_reason_is_written_with_its_prefix_and_read_back_typed() {
        let drift = Reason::Drift("process 12 is not running".into());
        let json = serde_json::to_value(&drift).expect("serializes");
        assert_eq!(json, "drift: process 12 is not running");
        assert_eq!(
            serde_json::from_value::<Reason>(json).expect("reads"),
            drift
        );
        let other = Reason::Other("a previous create was interrupted".into());
        assert!(!other.is_drift());
        assert_eq!(Reason::parse(&other.to_string()), other);
    }
}
