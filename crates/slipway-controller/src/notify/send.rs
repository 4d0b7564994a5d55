//! The notifier's two tasks: reading the event log into the outbox, and sending what is due.

use std::sync::Arc;
use std::time::Duration;

use slipway_state::PendingNotification;

use super::{Notification, Receiver, describe_failure, read_events, render};
use crate::Controller;

/// How often the event log is read and the outbox looked at.
const TICK: Duration = Duration::from_secs(1);
/// The first retry's delay; each failure doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Notifications being sent at once (each on a blocking thread while its receiver answers).
const IN_FLIGHT: usize = 8;
/// The most of a receiver's answer read (and thrown away).
const MAX_ANSWER: u64 = 64 << 10;

/// Runs the notifier and the sender until the controller stops (the tasks are dropped with
/// its runtime).
pub(crate) async fn run(controller: Controller, receivers: Arc<Vec<Receiver>>) {
    let reader = {
        let (controller, receivers) = (controller.clone(), receivers.clone());
        async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if controller.stepped_aside().is_some() {
                    continue;
                }
                let (inner, receivers) = (controller.inner.clone(), receivers.clone());
                match tokio::task::spawn_blocking(move || read_events(&inner, &receivers)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "reading events for notifications failed")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading events for notifications panicked")
                    }
                }
            }
        }
    };
    let sender = async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let agents: Arc<Vec<(Receiver, ureq::Agent)>> = Arc::new(
            receivers
                .iter()
                .map(|r| (r.clone(), agent(r.timeout)))
                .collect(),
        );
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if controller.stepped_aside().is_some() {
                continue;
            }
            let free = slots.available_permits();
            if free == 0 {
                continue;
            }
            let inner = controller.inner.clone();
            // A claim outlives the longest attempt: only a dead sender's claim ends unsent.
            let longest = agents.iter().map(|(r, _)| r.timeout).max().unwrap_or(TICK);
            let claim =
                i64::try_from((longest + Duration::from_secs(30)).as_millis()).unwrap_or(i64::MAX);
            let claimed = tokio::task::spawn_blocking(move || {
                let now = inner.now();
                inner
                    .engine
                    .store()
                    .claim_notifications(now, now.saturating_add(claim), free)
            })
            .await;
            let due = match claimed {
                Ok(Ok(due)) => due,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading due notifications failed");
                    continue;
                }
                Err(_) => continue,
            };
            for pending in due {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (inner, agents) = (controller.inner.clone(), agents.clone());
                tokio::task::spawn_blocking(move || {
                    deliver(&inner, &agents, pending);
                    drop(permit);
                });
            }
        }
    };
    tokio::join!(reader, sender);
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        // A redirect is the receiver's answer, never followed: the URL is the configuration's
        // and nobody else's.
        .max_redirects(0)
        .build()
        .into()
}

/// Sends one notification and records what came of it.
fn deliver(inner: &crate::Inner, agents: &[(Receiver, ureq::Agent)], pending: PendingNotification) {
    let store = inner.engine.store();
    if pending.receiver == super::FORGE_RECEIVER {
        return deliver_to_forge(inner, pending);
    }
    let Some((receiver, agent)) = agents.iter().find(|(r, _)| r.name == pending.receiver) else {
        // Its receiver left the configuration: nobody to tell.
        let _ = store.give_up_notification(
            pending.id,
            pending.environment.as_ref(),
            &format!(
                "the {} notification for `{}` was dropped: [notify.{}] is no longer configured",
                pending.kind, pending.receiver, pending.receiver
            ),
            &serde_json::json!({ "receiver": pending.receiver, "kind": pending.kind }),
            inner.now(),
        );
        return;
    };
    let body = match serde_json::from_str::<Notification>(&pending.payload) {
        Ok(notification) => render(&notification, receiver.format),
        Err(e) => {
            let _ = store.give_up_notification(
                pending.id,
                pending.environment.as_ref(),
                &format!("a {} notification could not be read: {e}", pending.kind),
                &serde_json::json!({ "receiver": receiver.name, "kind": pending.kind }),
                inner.now(),
            );
            return;
        }
    };
    let failure = match post(agent, &receiver.url, &body) {
        Ok(()) => {
            if let Err(e) = store.finish_notification(pending.id) {
                tracing::warn!(error = %e, receiver = %receiver.name, "recording a delivered notification failed");
            }
            tracing::debug!(receiver = %receiver.name, kind = %pending.kind, "notified");
            return;
        }
        Err(why) => describe_failure(&why, &receiver.url),
    };
    let attempts = pending.attempts.saturating_add(1);
    if attempts >= i64::from(receiver.attempts) {
        tracing::warn!(receiver = %receiver.name, kind = %pending.kind, attempts, error = %failure, "notification given up");
        let message = format!(
            "the {} notification to `{}` was given up after {attempts} attempt(s): {failure}",
            pending.kind, receiver.name
        );
        if let Err(e) = store.give_up_notification(
            pending.id,
            pending.environment.as_ref(),
            &message,
            &serde_json::json!({
                "receiver": receiver.name,
                "kind": pending.kind,
                "attempts": attempts,
            }),
            inner.now(),
        ) {
            tracing::warn!(error = %e, "recording a notification given up failed");
        }
        return;
    }
    let delay = backoff(pending.attempts);
    tracing::info!(receiver = %receiver.name, kind = %pending.kind, attempts, retry_in = ?delay, error = %failure, "notification failed; retried");
    let next = inner
        .now()
        .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
    if let Err(e) = store.retry_notification(pending.id, next, &failure) {
        tracing::warn!(error = %e, "rescheduling a notification failed");
    }
}

/// How many times a deployment status is tried before it is given up.
const FORGE_ATTEMPTS: i64 = 8;

/// Shows a preview's deployment on the forge, retried like a notification.
fn deliver_to_forge(inner: &crate::Inner, pending: PendingNotification) {
    let store = inner.engine.store();
    let deployment = serde_json::from_str::<super::ForgeDeployment>(&pending.payload)
        .ok()
        .and_then(|d| d.to_forge());
    let (Some(setup), Some(deployment)) = (inner.forge.get(), deployment) else {
        // No forge any more, or a row this version cannot read: nothing to show it on.
        let _ = store.finish_notification(pending.id);
        return;
    };
    let failure = match setup.forge.set_deployment(&deployment) {
        Ok(()) => {
            let _ = store.finish_notification(pending.id);
            return;
        }
        Err(e) => e.to_string(),
    };
    let attempts = pending.attempts.saturating_add(1);
    if attempts >= FORGE_ATTEMPTS {
        let _ = store.give_up_notification(
            pending.id,
            pending.environment.as_ref(),
            &format!(
                "showing {}'s deployment ({}) on the forge was given up after {attempts} \
                 attempt(s): {failure}",
                deployment.environment,
                deployment.state.as_str()
            ),
            &serde_json::json!({ "receiver": super::FORGE_RECEIVER, "kind": pending.kind }),
            inner.now(),
        );
        return;
    }
    let next = inner
        .now()
        .saturating_add(i64::try_from(backoff(pending.attempts).as_millis()).unwrap_or(i64::MAX));
    let _ = store.retry_notification(pending.id, next, &failure);
}

/// The delay after the `failed`-th failure (0-based): 1s doubling, at most 5 min, a tenth of
/// jitter so that receivers coming back are not met by every replica at once.
fn backoff(failed: i64) -> Duration {
    let exponent = u32::try_from(failed.clamp(0, 16)).unwrap_or(16);
    let base = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_BACKOFF);
    base + base.mul_f64(fastrand::f64() / 10.0)
}

/// POSTs `body`; `Err` says why it was not accepted (a 2xx status is acceptance).
fn post(agent: &ureq::Agent, url: &str, body: &serde_json::Value) -> Result<(), String> {
    let text = body.to_string();
    let response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("User-Agent", concat!("slipway/", env!("CARGO_PKG_VERSION")))
        .send(text.as_bytes())
        .map_err(|e| match e {
            ureq::Error::Timeout(_) => "the receiver did not answer in time".to_owned(),
            other => format!("the receiver could not be reached: {other}"),
        })?;
    let status = response.status().as_u16();
    // Read (a little of) the answer so that the connection may be reused; its text is the
    // receiver's, never shown.
    let _ = response
        .into_body()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec();
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the receiver answered HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_a_second_to_five_minutes() {
        assert!(backoff(0) >= Duration::from_secs(1) && backoff(0) < Duration::from_millis(1100));
        assert!(backoff(3) >= Duration::from_secs(8));
        assert!(backoff(40) >= MAX_BACKOFF && backoff(40) <= MAX_BACKOFF.mul_f64(1.1));
    }
}
