//! Wake-ups between replicas sharing a PostgreSQL state: `NOTIFY` when something every
//! replica should act on at once happened (a push webhook one of them received, work handed
//! over to the one holding an environment), `LISTEN` on a connection of its own in each. A wake-up only hurries what polling does anyway: one lost
//! (a replica reconnecting, the server restarting) costs at most a poll interval, so after
//! each (re)connection the listener wakes its replica once, for what it may have missed.
//!
//! Who can trigger one: whoever can write to the state's database (the replicas); the
//! payload is one of a few words, anything else is ignored, and a wake-up only makes a
//! replica do early what it would do at its next poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use crate::StateError;
use crate::db::{Dialect, Exec, params};
use crate::store::Store;

/// The channel the replicas listen on.
const CHANNEL: &str = "slipway_wake";

/// What a replica is woken up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The repository moved (a push webhook arrived): fetch and reconcile now.
    Refresh,
    /// Work was handed to the replica that works on an environment
    /// ([`Store::hand_off`]): each replica looks for its own now.
    Handoff,
}

impl Wake {
    fn payload(self) -> &'static str {
        match self {
            Wake::Refresh => "refresh",
            Wake::Handoff => "handoff",
        }
    }

    fn parse(payload: &str) -> Option<Wake> {
        match payload {
            "refresh" => Some(Wake::Refresh),
            "handoff" => Some(Wake::Handoff),
            _ => None,
        }
    }
}

/// A listening thread; it stops within a second of being dropped.
#[derive(Debug)]
pub struct Listener {
    stop: Arc<AtomicBool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Store {
    /// Wakes every replica listening on this state (this one too) for `wake`. Nothing on
    /// SQLite, where there is one controller.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub fn notify(&self, wake: Wake) -> Result<(), StateError> {
        let mut conn = self.conn();
        if conn.dialect() != Dialect::Postgres {
            return Ok(());
        }
        conn.query_opt(
            "SELECT pg_notify(?1, ?2)::TEXT",
            params![CHANNEL, wake.payload()],
            |_| Ok(()),
        )
        .map_err(|source| StateError::Database {
            operation: "wake the other replicas".into(),
            source,
        })?;
        Ok(())
    }

    /// Listens for wake-ups on a connection of its own, calling `on_wake` for each (on the
    /// listener's thread), and once after every (re)connection. `None` on SQLite.
    pub fn listen(&self, on_wake: impl Fn(Wake) + Send + 'static) -> Option<Listener> {
        let url = self.conn().postgres_url()?.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("slipway-listen".into())
            .spawn(move || listen(&url, &stopped, &on_wake))
            .ok()?;
        Some(Listener { stop })
    }
}

fn listen(url: &str, stop: &AtomicBool, on_wake: &dyn Fn(Wake)) {
    let mut backoff = Duration::from_millis(250);
    while !stop.load(Ordering::SeqCst) {
        let client = url.parse::<postgres::Config>().and_then(|mut config| {
            config.application_name("slipway-listen");
            config.connect_timeout(Duration::from_secs(5));
            let mut client = config.connect(postgres::NoTls)?;
            client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            Ok(client)
        });
        let Ok(mut client) = client else {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        backoff = Duration::from_millis(250);
        on_wake(Wake::Refresh);
        while !stop.load(Ordering::SeqCst) {
            let next = client
                .notifications()
                .timeout_iter(Duration::from_secs(1))
                .next()
                .map(|note| note.and_then(|n| Wake::parse(n.payload())));
            match next {
                Ok(Some(wake)) => on_wake(wake),
                Ok(None) if client.is_closed() => break,
                Ok(None) => {}
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_words_wake_a_replica() {
        for wake in [Wake::Refresh, Wake::Handoff] {
            assert_eq!(Wake::parse(wake.payload()), Some(wake));
        }
        for other in [
            "",
            "REFRESH",
            "refresh ",
            "env:prod",
            "x".repeat(8000).as_str(),
        ] {
            assert_eq!(Wake::parse(other), None, "{other:?}");
        }
    }
}
