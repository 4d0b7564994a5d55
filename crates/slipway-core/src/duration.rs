//! The one duration grammar of Slipway, used by `slipway.yaml` (`ttl`, health checks,
//! resource timeouts), the providers that read those configurations, the engine
//! configuration file, the API and the CLI.
//!
//! A duration is one or more `<digits><unit>` parts with no space between them, the units
//! `ms`, `s`, `m`, `h` and `d`: `500ms`, `30s`, `1h30m`, `7d`. Surrounding whitespace is
//! ignored. Anything else is refused (no bare number, no sign, no fraction, no other unit, no
//! more than 12 digits in a part, nothing that overflows `u64` milliseconds), never guessed.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// What to write instead, for messages about a duration that did not parse.
pub const HINT: &str = "write a duration such as `30s`, `15m`, `72h` or `1h30m`";

/// Parses `30s`, `5m`, `72h`, `1h30m`, `7d`, `500ms`; `None` for anything else.
pub fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let n: u128 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let millis = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(millis)?)?;
    }
    Some(Duration::from_millis(u64::try_from(total).ok()?))
}

fn refuse<E: serde::de::Error>(text: &str) -> E {
    E::custom(format!("`{text}` is not a duration; {HINT}"))
}

/// `#[serde(deserialize_with = "slipway_core::duration::deserialize")]` for a `Duration`
/// field written in this grammar.
pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse(&text).ok_or_else(|| refuse(&text))
}

/// Like [`deserialize`], for a timeout or an interval that must not be zero (a zero timeout
/// would close every connection at once, a zero interval spin).
pub fn positive<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    match parse(&text) {
        Some(d) if d.is_zero() => Err(serde::de::Error::custom(format!(
            "`{text}` must be longer than 0, e.g. \"10s\""
        ))),
        Some(d) => Ok(d),
        None => Err(refuse(&text)),
    }
}

/// `#[serde(default, deserialize_with = "slipway_core::duration::optional")]` for an
/// `Option<Duration>` field written in this grammar.
pub fn optional<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    let Some(text) = Option::<String>::deserialize(de)? else {
        return Ok(None);
    };
    parse(&text).map(Some).ok_or_else(|| refuse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse("72h"), Some(Duration::from_secs(72 * 3600)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse(" 7d "), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(parse("0s"), Some(Duration::ZERO));
        assert_eq!(parse("72"), None, "a unit is required");
        assert_eq!(parse("1x"), None);
        assert_eq!(parse("99999999999999h"), None, "overflow is refused");
    }

    #[test]
    fn hostile_text_is_refused_not_guessed() {
        for text in [
            "",
            "   ",
            "s",
            "ms",
            "-5s",
            "+5s",
            "5.5s",
            "1h 30m",
            "1 h",
            "10sec",
            "1hour",
            "5S",
            "5sms",
            "1h\u{0}",
            "\u{661}s",
            "５s",
            "1e3ms",
            "0x10s",
            "1000000000000s",
            "213503982335d",
        ] {
            assert_eq!(parse(text), None, "{text:?} is not a duration");
        }
    }

    #[test]
    fn a_sum_past_u64_milliseconds_is_refused() {
        let near = "999999999999d".repeat(30);
        assert_eq!(parse(&near), None);
        assert_eq!(
            parse("213503982334d"),
            Some(Duration::from_millis(213_503_982_334 * 86_400_000))
        );
    }

    #[test]
    fn serde_reads_the_grammar_and_names_what_it_refuses() {
        #[derive(Deserialize)]
        struct Timeouts {
            #[serde(deserialize_with = "deserialize")]
            grace: Duration,
            #[serde(default, deserialize_with = "optional")]
            ready: Option<Duration>,
        }
        #[derive(Deserialize)]
        struct Timeout {
            #[serde(deserialize_with = "positive")]
            _after: Duration,
        }
        let t: Timeouts = serde_json::from_str(r#"{"grace": "1m30s"}"#).expect("parses");
        assert_eq!((t.grace, t.ready), (Duration::from_secs(90), None));
        let e = serde_json::from_str::<Timeouts>(r#"{"grace": "1s", "ready": "2 m"}"#)
            .err()
            .expect("a space inside is refused");
        assert!(e.to_string().contains("`2 m` is not a duration"), "{e}");
        let e = serde_json::from_str::<Timeout>(r#"{"_after": "0ms"}"#)
            .err()
            .expect("a zero timeout is refused");
        assert!(e.to_string().contains("longer than 0"), "{e}");
        assert!(serde_json::from_str::<Timeout>(r#"{"_after": "1ms"}"#).is_ok());
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = parse(&text);
        }

        #[test]
        fn parts_add_up(parts in proptest::collection::vec((0u64..100_000, 0usize..5), 1..6)) {
            const UNITS: [(&str, u64); 5] =
                [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)];
            let text: String =
                parts.iter().map(|(n, u)| format!("{n}{}", UNITS[*u].0)).collect();
            let millis: u64 = parts.iter().map(|(n, u)| n * UNITS[*u].1).sum();
            prop_assert_eq!(parse(&text), Some(Duration::from_millis(millis)));
        }
    }
}
