//! Waiting for something to become true, with an explanation when it does not.

use std::time::{Duration, Instant};

/// Polls `check` every `every` until it returns `Some`, for at most `timeout`.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(what, timeout, String::new, check)
}

/// [`wait_for`] whose timeout message also carries `explain()` (what was last seen, what the
/// server logged), computed only when it times out.
pub fn wait_for_explained<T>(
    what: &str,
    timeout: Duration,
    explain: impl Fn() -> String,
    check: impl FnMut() -> Option<T>,
) -> T {
    poll(timeout, Duration::from_millis(50), check).unwrap_or_else(|| {
        panic!(
            "timed out after {timeout:?} waiting until {what}\n{}",
            explain()
        )
    })
}
