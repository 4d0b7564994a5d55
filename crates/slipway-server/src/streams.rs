//! How many endless responses (event streams, followed logs) one token holds at once: each is
//! a busy connection for as long as its client reads, so without a cap one viewer's token
//! could hold every one of `max_connections` and keep everyone else out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use crate::error::ApiError;

/// What a `429` of a stream says, in the OpenAPI document.
pub(crate) const TOO_MANY: &str = "The token already holds as many event and log streams as one token may (a sixteenth of \
     `[server] max_connections`).";

/// The streams open per token (by the stored hash of the token, which a browser session is
/// bound to too).
#[derive(Debug)]
pub(crate) struct Streams {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream of a token: counted until dropped (with its response).
#[derive(Debug)]
pub(crate) struct Slot {
    streams: Arc<Streams>,
    token: String,
}

impl Streams {
    /// At most `max` streams per token.
    pub(crate) fn new(max: usize) -> Arc<Streams> {
        Arc::new(Streams {
            max: max.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // One insert or update at a time: a panic cannot leave the map inconsistent.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for one more stream of `token`; `429` when it holds `max` already.
    pub(crate) fn take(self: &Arc<Streams>, token: &str) -> Result<Slot, ApiError> {
        let mut open = self.open();
        let count = open.entry(token.to_owned()).or_insert(0);
        if *count >= self.max {
            return Err(ApiError::client(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this token already has {} event or log streams open, the most one token \
                     may hold",
                    self.max
                ),
            )
            .hint(
                "close a stream (a browser tab) first; [server] max_connections sets the limit \
                 (a sixteenth of it per token, 8 at least)",
            ));
        }
        *count += 1;
        Ok(Slot {
            streams: self.clone(),
            token: token.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.open();
        if let Some(count) = open.get_mut(&self.token) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_at_most_max_streams_and_gets_them_back_as_they_close() {
        let streams = Streams::new(2);
        let a = streams.take("a").expect("first");
        let b = streams.take("a").expect("second");
        let refused = streams.take("a").expect_err("a third");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let other = streams.take("b").expect("another token has its own");
        drop(a);
        let again = streams.take("a").expect("one closed, one more");
        drop((b, again, other));
        assert!(
            streams.open().is_empty(),
            "nothing is kept for closed streams"
        );
    }
}
