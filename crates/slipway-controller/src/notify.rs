//! Notifications (`[notify.NAME]`): what happened to an environment, told to a generic JSON
//! webhook or a Slack incoming webhook.
//!
//! Two tasks of the controller, never on a reconcile's path: the *notifier* reads the event
//! log after the state's one cursor, turns the events a receiver asked for into
//! notifications (with the environment's stack, commit, author and preview URL) and adds them
//! to the state's outbox, deduplicated per (receiver, environment, kind) by a state key (a
//! deploy of the same commit and desired state, drift seen again, the same hold: nothing
//! new); the *sender* claims due notifications, POSTs them with a timeout, and on a failure
//! tries again with exponential backoff (1 s doubling to 5 min, `attempts` in all), then gives
//! up with a `notify.failed` event. A receiver that fails or hangs delays only its own
//! notifications.
//!
//! # Guarantees
//! - Receivers come only from the engine's configuration, their URLs only from the
//!   environment variables their `url_env` names: nothing a branch holds chooses where a
//!   notification goes. A URL (a Slack webhook URL is a secret) appears in no log, event,
//!   error or API answer: failures are described without it ([`describe_failure`]).
//! - A notification holds names, the commit, its author's name, the preview URL and the
//!   event's message (redacted as every event is); in Slack's format every text from a
//!   branch is mrkdwn-escaped, so it cannot make links or mentions (`<!channel>`).
//! - With several replicas, the event log is read once and each notification is sent by one
//!   replica at a time (the outbox's cursor and claims, `slipway_state::notifications`).
//!
//! # Caveats
//! - Delivery is at least once: a replica that dies after a receiver accepted a notification
//!   but before recording it leaves it to be sent again once its claim ends.
//! - Events older than [`STALE`] when first read are not announced (a notifier configured on
//!   an old state, or a state restored from a backup, does not replay history).

mod send;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slipway_core::EnvName;
use slipway_core::vocab::EventKind;
use slipway_state::{EventRecord, NewNotification, NotifyStep, StateError};

use crate::Inner;

pub(crate) use send::run;

/// What a receiver is told about. The words are the configuration's and the payload's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// A new commit or desired state was applied (`apply.succeeded`).
    Deployed,
    /// An apply or a reconcile failed (`apply.failed`, `reconcile.failed`).
    Failed,
    /// Its time to live ran out and it was destroyed (`environment.expired`).
    Expired,
    /// Live objects differ from what was applied (`drift.detected`).
    Drift,
    /// A change or an expiry waits for a person (`change.held`, `expiry.held`).
    Held,
    /// A sleeping environment's processes were started again (`environment.woke`).
    Woke,
    /// It will be destroyed soon for want of requests (`idle_ttl`), unless visited or
    /// extended (`environment.idle`).
    Idle,
}

impl NotifyKind {
    /// Every kind, in the configuration's order.
    pub const ALL: [NotifyKind; 7] = [
        NotifyKind::Deployed,
        NotifyKind::Failed,
        NotifyKind::Expired,
        NotifyKind::Drift,
        NotifyKind::Held,
        NotifyKind::Woke,
        NotifyKind::Idle,
    ];

    /// Its word.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Deployed => "deployed",
            NotifyKind::Failed => "failed",
            NotifyKind::Expired => "expired",
            NotifyKind::Drift => "drift",
            NotifyKind::Held => "held",
            NotifyKind::Woke => "woke",
            NotifyKind::Idle => "idle",
        }
    }

    /// The kind of notification an event is, if any.
    pub fn of(kind: EventKind) -> Option<NotifyKind> {
        Some(match kind {
            EventKind::ApplySucceeded => NotifyKind::Deployed,
            EventKind::ApplyFailed | EventKind::ReconcileFailed => NotifyKind::Failed,
            EventKind::EnvironmentExpired => NotifyKind::Expired,
            EventKind::DriftDetected => NotifyKind::Drift,
            EventKind::ChangeHeld | EventKind::ExpiryHeld => NotifyKind::Held,
            EventKind::EnvironmentWoke => NotifyKind::Woke,
            EventKind::EnvironmentIdle => NotifyKind::Idle,
            _ => return None,
        })
    }
}

/// How a receiver wants its notifications written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// The notification as JSON ([`Notification`]).
    #[default]
    Json,
    /// Slack's incoming-webhook message (`text` and `blocks`, mrkdwn-escaped).
    Slack,
}

fn all_kinds() -> Vec<NotifyKind> {
    NotifyKind::ALL.to_vec()
}

fn default_attempts() -> u32 {
    8
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[notify.NAME]` of the configuration file: one receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// The environment variable holding the receiver's URL (read at start; a Slack webhook
    /// URL is a secret, so it is never written in the file).
    pub url_env: String,
    /// `json` (default) or `slack`.
    #[serde(default)]
    pub format: NotifyFormat,
    /// What it is told about (default: everything).
    #[serde(default = "all_kinds")]
    pub events: Vec<NotifyKind>,
    /// Only about environments whose name matches one of these globs (default: every one).
    #[serde(default)]
    pub environments: Vec<String>,
    /// Attempts in all before a notification is given up (default 8: about four minutes).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// How long one attempt may take (default 10s).
    #[serde(
        default = "default_timeout",
        deserialize_with = "slipway_core::duration::positive"
    )]
    pub timeout: Duration,
}

/// A receiver, ready: its URL read from its variable.
#[derive(Clone)]
pub struct Receiver {
    /// Its name (`[notify.NAME]`).
    pub name: String,
    url: String,
    format: NotifyFormat,
    events: Vec<NotifyKind>,
    environments: Vec<glob::Pattern>,
    attempts: u32,
    timeout: Duration,
}

impl std::fmt::Debug for Receiver {
    // Never the URL: it is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Whether it wants `kind` about `env`.
    fn wants(&self, kind: NotifyKind, env: Option<&EnvName>) -> bool {
        self.events.contains(&kind)
            && (self.environments.is_empty()
                || env.is_some_and(|e| self.environments.iter().any(|p| p.matches(e.as_str()))))
    }
}

/// The receivers of the configuration's `[notify.NAME]` sections, each URL read from the
/// variable its `url_env` names. An error names the section and the variable, never a value.
pub fn receivers_from_config(
    sections: &BTreeMap<String, NotifySection>,
) -> Result<Vec<Receiver>, String> {
    let mut receivers = Vec::new();
    for (name, section) in sections {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "[notify.{name}]: a receiver's name is letters, digits, `-` and `_`"
            ));
        }
        let var = &section.url_env;
        let url = std::env::var(var).unwrap_or_default();
        if url.trim().is_empty() {
            return Err(format!(
                "[notify.{name}] reads its URL from ${var}, which is not set or empty; set it \
                 to the receiver's webhook URL"
            ));
        }
        let url = url.trim().to_owned();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!(
                "[notify.{name}]: the URL in ${var} is not an http:// or https:// URL"
            ));
        }
        if section.events.is_empty() {
            return Err(format!(
                "[notify.{name}] events = []: it would hear nothing; list what it should hear \
                 (deployed, failed, expired, drift, held, woke) or remove the section"
            ));
        }
        if !(1..=20).contains(&section.attempts) {
            return Err(format!(
                "[notify.{name}] attempts = {}: give between 1 and 20",
                section.attempts
            ));
        }
        let environments = section
            .environments
            .iter()
            .map(|g| {
                glob::Pattern::new(g)
                    .map_err(|e| format!("[notify.{name}] environments: `{g}` is no glob: {e}"))
            })
            .collect::<Result<_, _>>()?;
        receivers.push(Receiver {
            name: name.clone(),
            url,
            format: section.format,
            events: section.events.clone(),
            environments,
            attempts: section.attempts,
            timeout: section.timeout,
        });
    }
    Ok(receivers)
}

/// One notification, as the JSON format sends it and the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// What happened: a [`NotifyKind`]'s word.
    pub event: NotifyKind,
    /// The environment.
    pub environment: Option<String>,
    /// Its stack, when the environment is still recorded.
    pub stack: Option<String>,
    /// The commit it is about (the applied one, or the one the environment runs).
    pub commit: Option<String>,
    /// That commit's author's name.
    pub author: Option<String>,
    /// The environment's preview URL, when it exposes a port.
    pub url: Option<String>,
    /// The event's message.
    pub message: String,
    /// When it happened (RFC 3339, UTC).
    pub at: String,
}

/// Events older than this when the notifier first reads them are not announced.
pub const STALE: Duration = Duration::from_secs(24 * 3600);

/// How long an event is left unread on PostgreSQL: ids are numbered when a transaction
/// inserts, not when it commits, so a later id may be visible before an earlier one; reading
/// only events this old lets the earlier one commit first.
const SETTLE_MS: i64 = 2_000;

/// Places the cursor at the end of the event log when the notifier first runs on this state,
/// before the controller does anything: what happens from then on is announced, history is
/// not.
pub(crate) fn start(inner: &Inner) -> Result<(), StateError> {
    let store = inner.engine.store();
    if store.notify_cursor()?.is_none() {
        // `None` when another replica placed it first: as good.
        store.enqueue_notifications(None, store.last_event_id()?, &[], inner.now())?;
    }
    Ok(())
}

/// Reads the event log after the cursor and adds what the receivers asked for to the
/// outbox; returns how many notifications it added.
pub(crate) fn read_events(inner: &Inner, receivers: &[Receiver]) -> Result<usize, StateError> {
    let store = inner.engine.store();
    let now = inner.now();
    let Some(cursor) = store.notify_cursor()? else {
        return start(inner).map(|()| 0);
    };
    let events = store.events(&slipway_state::EventQuery {
        environment: None,
        after_id: Some(cursor),
        limit: 200,
    })?;
    let settled = match store.dialect() {
        slipway_state::Dialect::Postgres => now - SETTLE_MS,
        slipway_state::Dialect::Sqlite => i64::MAX,
    };
    let stale = now.saturating_sub(i64::try_from(STALE.as_millis()).unwrap_or(i64::MAX));
    let mut steps = Vec::new();
    let mut to = cursor;
    for event in events.iter().take_while(|e| e.at <= settled) {
        to = event.id;
        if event.at >= stale {
            steps.extend(steps_for(inner, receivers, event));
            steps.extend(deployment_steps(inner, event));
        }
    }
    if to == cursor {
        return Ok(0);
    }
    Ok(store
        .enqueue_notifications(Some(cursor), to, &steps, now)?
        .unwrap_or(0))
}

/// What one event changes in the outbox: the notifications it is, and the states it ends.
fn steps_for(inner: &Inner, receivers: &[Receiver], event: &EventRecord) -> Vec<NotifyStep> {
    let Some(env) = event.environment.as_ref() else {
        return Vec::new();
    };
    let mut steps = Vec::new();
    if let Some(kind) = NotifyKind::of(event.kind) {
        let wanted: Vec<&Receiver> = receivers
            .iter()
            .filter(|r| r.wants(kind, Some(env)))
            .collect();
        if !wanted.is_empty() {
            let (notification, state_key) = notification(inner, env, kind, event);
            let payload =
                serde_json::to_string(&notification).expect("a notification always serializes");
            for receiver in wanted {
                steps.push(NotifyStep::Add(NewNotification {
                    receiver: receiver.name.clone(),
                    environment: Some(env.clone()),
                    kind: kind.as_str().into(),
                    state_key: state_key.clone(),
                    payload: payload.clone(),
                }));
            }
        }
    }
    // What ends a state: the next time it is seen, it is news again.
    let forget = |kinds: &[NotifyKind]| NotifyStep::Forget {
        environment: env.clone(),
        kinds: Some(kinds.iter().map(|k| k.as_str().to_owned()).collect()),
    };
    match event.kind {
        EventKind::ApplySucceeded => steps.push(forget(&[
            NotifyKind::Failed,
            NotifyKind::Drift,
            NotifyKind::Held,
        ])),
        EventKind::DriftRepaired => steps.push(forget(&[NotifyKind::Drift])),
        EventKind::EnvironmentDestroyed | EventKind::EnvironmentExpired => {
            steps.push(NotifyStep::Forget {
                environment: env.clone(),
                kinds: None,
            });
        }
        _ => {}
    }
    steps
}

/// The notification an event is, and its state key (`None`: every such event is news).
fn notification(
    inner: &Inner,
    env: &EnvName,
    kind: NotifyKind,
    event: &EventRecord,
) -> (Notification, Option<String>) {
    let store = inner.engine.store();
    let record = store.environment(env).ok().flatten();
    // The deployment an apply's event names, else the environment's latest one.
    let deployment = event
        .data
        .get("deployment")
        .and_then(serde_json::Value::as_i64)
        .and_then(|id| store.deployment(id).ok().flatten())
        .or_else(|| {
            store
                .deployments(env, 1)
                .ok()
                .and_then(|d| d.into_iter().next())
        });
    let commit = match kind {
        NotifyKind::Deployed | NotifyKind::Failed if deployment.is_some() => {
            deployment.as_ref().map(|d| d.commit.clone())
        }
        _ => record
            .as_ref()
            .and_then(|r| r.commit.clone())
            .or_else(|| deployment.as_ref().map(|d| d.commit.clone())),
    };
    let author = commit
        .as_deref()
        .and_then(|sha| inner.source.resolve(sha).ok())
        .map(|c| author_name(&c.author));
    let exposed = store
        .resources(env)
        .ok()
        .is_some_and(|rs| rs.iter().any(|r| r.outputs.get("url").is_some()));
    let url = match (&record, exposed) {
        (Some(r), true) => inner
            .preview_port
            .get()
            .map(|port| format!("http://{env}.{}.localhost:{port}/", r.stack)),
        _ => None,
    };
    let state_key = match kind {
        NotifyKind::Deployed => deployment
            .as_ref()
            .map(|d| format!("{}:{}", d.commit, d.hash)),
        NotifyKind::Failed => match (event.kind, &deployment) {
            (EventKind::ApplyFailed, Some(d)) => Some(format!("commit {}", d.commit)),
            _ => Some(event.message.clone()),
        },
        NotifyKind::Drift | NotifyKind::Held => Some(event.message.clone()),
        NotifyKind::Expired | NotifyKind::Woke | NotifyKind::Idle => None,
    };
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(event.at).unwrap_or(0));
    (
        Notification {
            event: kind,
            environment: Some(env.to_string()),
            stack: record.as_ref().map(|r| r.stack.clone()),
            commit,
            author,
            url,
            message: event.message.clone(),
            at: humantime::format_rfc3339_seconds(at).to_string(),
        },
        state_key,
    )
}

/// The outbox's receiver name of the forge's deployments (a configured receiver's name is
/// letters, digits, `-` and `_`: never this).
pub(crate) const FORGE_RECEIVER: &str = "(forge)";

/// A pull request preview's deployment to show on the forge, as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ForgeDeployment {
    /// The commit.
    pub sha: String,
    /// The preview environment.
    pub environment: String,
    /// `in_progress`, `success`, `failure` or `inactive`.
    pub state: String,
    /// Its preview URL.
    pub url: Option<String>,
    /// One line.
    pub description: String,
}

impl ForgeDeployment {
    /// What the forge is told.
    pub(crate) fn to_forge(&self) -> Option<slipway_forge::PreviewDeployment> {
        use slipway_forge::DeploymentState as S;
        let state = match self.state.as_str() {
            "in_progress" => S::InProgress,
            "success" => S::Success,
            "failure" => S::Failure,
            "inactive" => S::Inactive,
            _ => return None,
        };
        Some(slipway_forge::PreviewDeployment {
            sha: self.sha.clone(),
            environment: self.environment.clone(),
            state,
            environment_url: self.url.clone(),
            description: self.description.clone(),
        })
    }
}

/// What one event changes of a pull request preview's deployment on the forge (GitHub's
/// Deployments API): its commit being applied, applied, failed, or the preview gone. Only
/// for `pr-N` whose deployment ran the forge's ref of pull request N.
fn deployment_steps(inner: &Inner, event: &EventRecord) -> Vec<NotifyStep> {
    let Some(setup) = inner.forge.get() else {
        return Vec::new();
    };
    let Some(env) = event.environment.as_ref() else {
        return Vec::new();
    };
    if !setup.forge.has_deployments() {
        return Vec::new();
    }
    let Some(number) = env
        .as_str()
        .strip_prefix("pr-")
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return Vec::new();
    };
    let (state, keyed) = match event.kind {
        EventKind::ApplyStarted => ("in_progress", true),
        EventKind::ApplySucceeded => ("success", true),
        EventKind::ApplyFailed => ("failure", true),
        EventKind::EnvironmentDestroyed => ("inactive", false),
        _ => return Vec::new(),
    };
    let store = inner.engine.store();
    let pr_ref = setup.forge.pr_head_ref(number);
    // A person's environment named like a preview is not one: its deployments ran another
    // ref. A destroy is a deployment of its own (`destroy`): the preview's is the one before.
    let deployment = match event.kind {
        EventKind::EnvironmentDestroyed => store.deployments(env, 50).ok().and_then(|d| {
            d.into_iter()
                .find(|d| d.reference.as_deref() == Some(pr_ref.as_str()))
        }),
        _ => event
            .data
            .get("deployment")
            .and_then(serde_json::Value::as_i64)
            .and_then(|id| store.deployment(id).ok().flatten())
            .filter(|d| d.reference.as_deref() == Some(pr_ref.as_str())),
    };
    let Some(deployment) = deployment else {
        return Vec::new();
    };
    let url = (state == "success")
        .then(|| notification(inner, env, NotifyKind::Deployed, event).0.url)
        .flatten();
    let payload = ForgeDeployment {
        sha: deployment.commit.clone(),
        environment: env.to_string(),
        state: state.to_owned(),
        url,
        description: event.message.clone(),
    };
    let mut steps = Vec::new();
    if event.kind == EventKind::ApplySucceeded {
        steps.push(NotifyStep::Forget {
            environment: env.clone(),
            kinds: Some(vec!["failure".to_owned()]),
        });
    }
    steps.push(NotifyStep::Add(NewNotification {
        receiver: FORGE_RECEIVER.to_owned(),
        environment: Some(env.clone()),
        kind: state.to_owned(),
        // A drift repair applies the same commit and desired state again: nothing new.
        state_key: keyed.then(|| format!("{}:{}", deployment.commit, deployment.hash)),
        payload: serde_json::to_string(&payload).expect("a deployment always serializes"),
    }));
    if event.kind == EventKind::EnvironmentDestroyed {
        steps.push(NotifyStep::Forget {
            environment: env.clone(),
            kinds: None,
        });
    }
    steps
}

/// `Name` of git's `Name <email>`: people's names, not their addresses, go to chat.
fn author_name(author: &str) -> String {
    author
        .split_once(" <")
        .map_or(author, |(name, _)| name)
        .trim()
        .to_owned()
}

/// Escapes text for Slack's mrkdwn: `&`, `<` and `>` are the only characters Slack asks to
/// escape, and the only ones that make links, mentions and `<!channel>`.
pub fn slack_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The body sent to a receiver of `format`.
pub fn render(notification: &Notification, format: NotifyFormat) -> serde_json::Value {
    match format {
        NotifyFormat::Json => {
            serde_json::to_value(notification).expect("a notification always serializes")
        }
        NotifyFormat::Slack => slack(notification),
    }
}

fn slack(n: &Notification) -> serde_json::Value {
    let env = slack_escape(n.environment.as_deref().unwrap_or("(engine)"));
    let headline = match n.event {
        NotifyKind::Deployed => format!("{env} deployed"),
        NotifyKind::Failed => format!("{env} failed"),
        NotifyKind::Expired => format!("{env} expired"),
        NotifyKind::Drift => format!("{env} drifted"),
        NotifyKind::Held => format!("{env} is held"),
        NotifyKind::Woke => format!("{env} woke"),
        NotifyKind::Idle => format!("{env} is idle and will be destroyed soon"),
    };
    let mut facts = Vec::new();
    if let Some(stack) = &n.stack {
        facts.push(format!("stack {}", slack_escape(stack)));
    }
    if let Some(commit) = &n.commit {
        facts.push(format!(
            "commit `{}`",
            slack_escape(&commit[..commit.len().min(12)])
        ));
    }
    if let Some(author) = &n.author {
        facts.push(format!("by {}", slack_escape(author)));
    }
    let mut text = format!("*{headline}*");
    // The preview URL is Slipway's own (`http://<env>.<stack>.localhost:<port>/`, DNS labels
    // only): the one link in the message.
    if let Some(url) = &n.url {
        text.push_str(&format!(" <{}|open the preview>", slack_escape(url)));
    }
    text.push('\n');
    text.push_str(&slack_escape(&n.message));
    let fallback = format!("{headline}: {}", slack_escape(&n.message));
    let (text, fallback) = (cut(&text, SLACK_TEXT), cut(&fallback, SLACK_TEXT));
    // `verbatim`: Slack would otherwise make links of bare URLs and names of channels in the
    // text (an author's name, a job's message: the branch's words); only the `<…|…>` link
    // Slipway writes is one.
    let mut blocks = vec![serde_json::json!({
        "type": "section",
        "text": { "type": "mrkdwn", "text": text, "verbatim": true },
    })];
    if !facts.is_empty() {
        blocks.push(serde_json::json!({
            "type": "context",
            "elements": [{ "type": "mrkdwn", "text": facts.join(" · "), "verbatim": true }],
        }));
    }
    serde_json::json!({
        "text": fallback,
        "blocks": blocks,
        "unfurl_links": false,
        "unfurl_media": false,
    })
}

/// Slack's limit on a section's text, in characters (less a margin for the ellipsis).
const SLACK_TEXT: usize = 2_900;

/// `text` cut to `max` characters, with `…` when cut, never inside an escape (`&lt;`).
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut kept: String = text.chars().take(max).collect();
    if let Some(at) = kept.rfind('&')
        && !kept[at..].contains(';')
    {
        kept.truncate(at);
    }
    kept.push('…');
    kept
}

/// A failure to deliver, described without the receiver's URL (it is a secret).
pub(crate) fn describe_failure(text: &str, url: &str) -> String {
    let mut text = text.replace(url, "<the receiver's URL>");
    // The host, with any credentials or port: what an error names when it names less.
    if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        if !authority.is_empty() {
            text = text.replace(authority, "<the receiver's host>");
        }
        if let Some((_, host)) = authority.rsplit_once('@') {
            text = text.replace(host, "<the receiver's host>");
        }
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if host.len() > 3 {
            text = text.replace(host, "<the receiver's host>");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile() -> Notification {
        Notification {
            event: NotifyKind::Deployed,
            environment: Some("br-x".into()),
            stack: Some("shop".into()),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            author: Some("Mallory <!channel> & <https://evil.example|click>".into()),
            url: Some("http://br-x.shop.localhost:7300/".into()),
            message: "br-x is at 0123456 <!here> <@U123>".into(),
            at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn slack_messages_carry_no_link_or_mention_from_a_branch() {
        let body = render(&hostile(), NotifyFormat::Slack).to_string();
        for injected in ["<!channel>", "<!here>", "<@U123>", "<https://evil"] {
            assert!(!body.contains(injected), "{injected} is escaped: {body}");
        }
        assert!(body.contains("&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;"));
        assert!(body.contains("<http://br-x.shop.localhost:7300/|open the preview>"));
        // Nor does Slack make a link of a bare URL in the branch's words.
        let message = render(&hostile(), NotifyFormat::Slack);
        for text in [
            &message["blocks"][0]["text"],
            &message["blocks"][1]["elements"][0],
        ] {
            assert_eq!(text["verbatim"], true, "{text}");
        }
        assert_eq!(message["unfurl_links"], false);
    }

    #[test]
    fn a_long_message_is_cut_for_slack_never_inside_an_escape() {
        let n = Notification {
            message: "<".repeat(5_000),
            url: None,
            ..hostile()
        };
        let body = render(&n, NotifyFormat::Slack);
        let text = body["blocks"][0]["text"]["text"].as_str().expect("text");
        assert!(
            text.chars().count() <= SLACK_TEXT + 1 && text.ends_with("&lt;…"),
            "{text}"
        );
        assert!(!text.contains('<'));
    }

    #[test]
    fn failures_never_name_the_receiver() {
        let url = "https://hooks.slack.com/services/T000/B000/XXXXSECRET";
        let said = describe_failure(
            "io: connection refused to https://hooks.slack.com/services/T000/B000/XXXXSECRET \
             (hooks.slack.com:443)",
            url,
        );
        assert!(
            !said.contains("XXXXSECRET") && !said.contains("hooks.slack.com"),
            "{said}"
        );
    }

    #[test]
    fn every_word_of_the_configuration_is_a_kind() {
        let words: Vec<&str> = NotifyKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            words,
            [
                "deployed", "failed", "expired", "drift", "held", "woke", "idle"
            ]
        );
        for kind in NotifyKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).expect("serializes"),
                kind.as_str()
            );
        }
    }
}
