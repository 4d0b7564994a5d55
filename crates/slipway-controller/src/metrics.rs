//! Counters for `/metrics`, rendered in the Prometheus text format by hand (a dozen lines do
//! not need a metrics framework).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Trigger;

const BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The controller's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    failures: AtomicU64,
    drift_detected: AtomicU64,
    drift_repairs: AtomicU64,
    leases_held: AtomicU64,
    leases_acquired: AtomicU64,
    leases_lost: AtomicU64,
    leases_handed_over: AtomicU64,
    /// Reconciles by what triggered them, in [`TRIGGERS`]' order.
    by_trigger: [AtomicU64; TRIGGERS.len()],
}

/// Every trigger, with its word in `/metrics`.
const TRIGGERS: [(Trigger, &str); 9] = [
    (Trigger::Poll, "poll"),
    (Trigger::Push, "push"),
    (Trigger::Timer, "timer"),
    (Trigger::Drift, "drift"),
    (Trigger::Manual, "manual"),
    (Trigger::Ttl, "ttl"),
    (Trigger::Apply, "apply"),
    (Trigger::Wake, "wake"),
    (Trigger::Idle, "idle"),
];

impl Metrics {
    pub(crate) fn observe_reconcile(&self, trigger: Trigger, took: Duration, ok: bool) {
        if let Some(i) = TRIGGERS.iter().position(|(t, _)| *t == trigger) {
            self.by_trigger[i].fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn drift_detected(&self, n: usize) {
        self.drift_detected.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn drift_repaired(&self, n: usize) {
        self.drift_repairs.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn leases(&self, held: usize) {
        self.leases_held.store(held as u64, Ordering::Relaxed);
    }

    pub(crate) fn lease_acquired(&self) {
        self.leases_acquired.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn lease_lost(&self) {
        self.leases_lost.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn lease_handed_over(&self) {
        self.leases_handed_over.fetch_add(1, Ordering::Relaxed);
    }

    /// Reconciles that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Drifted resources repaired so far.
    pub fn drift_repairs(&self) -> u64 {
        self.drift_repairs.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of these counters plus the gauges given.
    pub fn render(
        &self,
        queue_depth: usize,
        running: usize,
        by_state: &[(String, String, usize)],
    ) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "# HELP slipway_reconcile_duration_seconds Time to reconcile one environment."
        );
        let _ = writeln!(w, "# TYPE slipway_reconcile_duration_seconds histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                w,
                "slipway_reconcile_duration_seconds_bucket{{le=\"{le}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            w,
            "slipway_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            w,
            "slipway_reconcile_duration_seconds_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(w, "slipway_reconcile_duration_seconds_count {count}");
        let _ = writeln!(
            w,
            "# HELP slipway_reconciles_total Reconciles by what triggered them (a drift tick \
             observes every resource; the periodic timer only checks an unchanged \
             environment's commit and desired state)."
        );
        let _ = writeln!(w, "# TYPE slipway_reconciles_total counter");
        for ((_, word), n) in TRIGGERS.iter().zip(&self.by_trigger) {
            let _ = writeln!(
                w,
                "slipway_reconciles_total{{trigger=\"{word}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            w,
            "# HELP slipway_reconcile_failures_total Reconciles that ended in an error."
        );
        let _ = writeln!(w, "# TYPE slipway_reconcile_failures_total counter");
        let _ = writeln!(w, "slipway_reconcile_failures_total {}", self.failures());
        let _ = writeln!(
            w,
            "# HELP slipway_drift_detected_total Drifted resources found."
        );
        let _ = writeln!(w, "# TYPE slipway_drift_detected_total counter");
        let _ = writeln!(
            w,
            "slipway_drift_detected_total {}",
            self.drift_detected.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            w,
            "# HELP slipway_drift_repairs_total Drifted resources repaired."
        );
        let _ = writeln!(w, "# TYPE slipway_drift_repairs_total counter");
        let _ = writeln!(w, "slipway_drift_repairs_total {}", self.drift_repairs());
        for (name, help, kind, value) in [
            (
                "slipway_leases_held",
                "Environments this replica holds the lease of (several replicas on one state).",
                "gauge",
                &self.leases_held,
            ),
            (
                "slipway_leases_acquired_total",
                "Leases this replica began to hold: new environments, and failovers from a \
                 replica that died or stalled.",
                "counter",
                &self.leases_acquired,
            ),
            (
                "slipway_leases_lost_total",
                "Leases this replica found taken over by another (it stalled past them).",
                "counter",
                &self.leases_lost,
            ),
            (
                "slipway_leases_handed_over_total",
                "Leases this replica released because another live replica should hold them.",
                "counter",
                &self.leases_handed_over,
            ),
        ] {
            let _ = writeln!(w, "# HELP {name} {help}");
            let _ = writeln!(w, "# TYPE {name} {kind}");
            let _ = writeln!(w, "{name} {}", value.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            w,
            "# HELP slipway_queue_depth Environments waiting to be reconciled."
        );
        let _ = writeln!(w, "# TYPE slipway_queue_depth gauge");
        let _ = writeln!(w, "slipway_queue_depth {queue_depth}");
        let _ = writeln!(
            w,
            "# HELP slipway_reconciles_running Environments being reconciled now."
        );
        let _ = writeln!(w, "# TYPE slipway_reconciles_running gauge");
        let _ = writeln!(w, "slipway_reconciles_running {running}");
        let _ = writeln!(
            w,
            "# HELP slipway_environments Environments by sync state and health."
        );
        let _ = writeln!(w, "# TYPE slipway_environments gauge");
        for (sync, health, n) in by_state {
            let _ = writeln!(
                w,
                "slipway_environments{{sync=\"{sync}\",health=\"{health}\"}} {n}"
            );
        }
        out
    }
}
