//! Durations in resource configurations are written in the core's one grammar
//! ([`slipway_core::duration`]: `"10s"`, `"500ms"`, `"1h30m"`), which `slipway.yaml`'s
//! validation already checked; this module only shows them in messages.

use std::time::Duration;

/// A duration as people read it in messages: `"1s 500ms"`.
pub(crate) fn show(d: Duration) -> String {
    // Sub-millisecond precision only adds noise to an error message.
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}
