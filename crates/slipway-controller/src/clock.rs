//! What time it is, injected: the controller's times to live and expiries read a [`Clock`], so
//! that tests move time by hand instead of waiting for it.

/// A source of the current time, in milliseconds since the Unix epoch (the store's unit).
pub trait Clock: std::fmt::Debug + Send + Sync {
    /// Now.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        slipway_state::now_ms()
    }
}
