//! `[controller]` of the configuration file: how `slipway serve` paces itself.

use std::time::Duration;

use serde::Deserialize;

use crate::Options;

/// `[controller]`. Every interval is a duration longer than zero.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// How often every environment is observed for drift.
    #[serde(deserialize_with = "slipway_core::duration::positive")]
    pub drift_interval: Duration,
    /// The safety-net requeue of every environment.
    #[serde(deserialize_with = "slipway_core::duration::positive")]
    pub requeue_interval: Duration,
    /// Most environments reconciled at once.
    pub concurrency: usize,
    /// Workers beyond `concurrency` that only static environments take: environments made
    /// from branches, however long their jobs run, never hold them.
    pub static_concurrency: usize,
    /// How many of `concurrency` one person's environments may take at once (who pushed a
    /// branch, opened a pull request or made an ad-hoc environment); default: half of
    /// `concurrency`, at least one; 0: no limit.
    pub author_concurrency: Option<usize>,
    /// How long audit entries and events are kept; older ones are deleted hourly.
    #[serde(deserialize_with = "slipway_core::duration::positive")]
    pub retention: Duration,
    /// How long the ids of handled webhook deliveries are kept (a delivery replayed after
    /// that is handled again, so keep it longer than anyone could hold on to a delivery).
    #[serde(deserialize_with = "slipway_core::duration::positive")]
    pub delivery_retention: Duration,
    /// This replica's name among those sharing a PostgreSQL state (default: host name and
    /// process id).
    pub replica: Option<String>,
    /// How long a replica's leases last unless renewed: a replica that dies or stalls loses
    /// its environments to the others within about two.
    #[serde(deserialize_with = "slipway_core::duration::positive")]
    pub lease: Duration,
    /// How long the signed link to a private preview in a pull request's plan comment holds
    /// (`"0s"`: the comment shows the plain URL, which asks for a sign-in; for a public
    /// repository, where anyone reads the comment).
    #[serde(deserialize_with = "slipway_core::duration::deserialize")]
    pub comment_links: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        let defaults = Options::default();
        ControllerConfig {
            drift_interval: defaults.drift_interval,
            requeue_interval: defaults.requeue_interval,
            concurrency: defaults.concurrency,
            static_concurrency: defaults.static_concurrency,
            author_concurrency: defaults.author_concurrency,
            retention: Duration::from_secs(90 * 24 * 3600),
            delivery_retention: Duration::from_secs(365 * 24 * 3600),
            replica: None,
            lease: Duration::from_secs(15),
            comment_links: Duration::from_secs(24 * 3600),
        }
    }
}

impl ControllerConfig {
    /// This replica's options, for a controller sharing a PostgreSQL state.
    pub fn replica(&self, advertise: Option<String>) -> crate::ReplicaOptions {
        let name = self.replica.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "slipway".to_owned());
            format!("{host}-{}", std::process::id())
        });
        crate::ReplicaOptions {
            name,
            lease: self.lease,
            advertise,
        }
    }

    /// The controller's options as this section sets them, with the repository's poll
    /// interval and the engine's parallelism from their own sections.
    pub fn options(&self, poll_interval: Duration, parallelism: usize) -> Options {
        Options {
            poll_interval,
            drift_interval: self.drift_interval,
            requeue_interval: self.requeue_interval,
            concurrency: self.concurrency.max(1),
            static_concurrency: self.static_concurrency,
            author_concurrency: self.author_concurrency,
            parallelism,
            retention: Some(self.retention),
            delivery_retention: Some(self.delivery_retention),
            comment_links: self.comment_links,
            ..Options::default()
        }
    }
}
