//! Durations in resource configurations are humantime strings: `"10s"`, `"500ms"`, `"2m 30s"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `#[serde(default, deserialize_with = "crate::duration::optional")]` for an
/// `Option<Duration>` field written as a humantime string.
pub(crate) fn optional<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    let Some(text) = Option::<String>::deserialize(de)? else {
        return Ok(None);
    };
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write it like \"10s\" or \"500ms\""
        ))
    })
}

/// A duration as people read it in messages: `"1s 500ms"`.
pub(crate) fn show(d: Duration) -> String {
    // Sub-millisecond precision only adds noise to an error message.
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}
