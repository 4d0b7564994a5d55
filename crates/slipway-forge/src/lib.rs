//! Slipway's pull-request gate, as a library: what a forge (GitHub, GitLab, Gitea/Forgejo)
//! tells Slipway through webhooks, what Slipway asks and tells the forge through its API, the
//! `/slipway …` comment commands, and the plan comment Slipway keeps on each pull request.
//! Nothing here decides policy (who may apply where); it gives the controller checked facts and
//! the means to answer.
//!
//! Where to start:
//! - **Webhooks**: [`WebhookVerifier::verify_and_parse`] (or [`verify_and_parse`]) takes the
//!   request's headers and raw body, checks the size, then the signature or token in constant
//!   time, then parses the payload into a [`Delivery`]: the forge's delivery id and one
//!   [`ForgeEvent`], the same closed set for the three forges. Events Slipway has no use for
//!   are [`ForgeEvent::Ignored`], not errors. [`parse_payload`] is the parser alone, for
//!   fuzzing.
//! - **The forge's API**: [`connect`] turns a [`ForgeConfig`] into a `Box<dyn` [`Forge`]`>`:
//!   comments kept up to date in place ([`Forge::upsert_comment`]), commit statuses, pull
//!   requests, approvals, write access, the ref to fetch a pull request's head from. Calls are
//!   blocking (`ureq`); errors carry the HTTP status and the forge's short reason, never the
//!   token, and say whether a retry may help ([`ForgeError::retryable`]).
//! - **Comment commands**: [`parse_command`] reads `/slipway plan [ENV]`, `apply ENV`,
//!   `unlock ENV`, `preview` and `help` from a comment, strictly; anything else that starts
//!   with `/slipway` is a [`CommandError`] whose message is a polite reply with the usage.
//! - **Each forge's facts**: [`ForgeKind::profile`] gives its [`ForgeProfile`] (header names,
//!   signature scheme, auth header, default API URL, token variable, …), the one place that
//!   says how the forges differ short of their payloads' and answers' shapes.
//! - **The plan comment**: [`render_plan_comment`] turns per-environment plans ([`EnvPlan`])
//!   into one Markdown comment: a table, each plan folded in `<details>`, every text escaped,
//!   and the whole cut to fit GitHub's 65,536-character limit.
//!
//! # Guarantees
//! - No webhook payload is parsed before its signature is verified, and no secret, token or
//!   payload appears in an error message or `Debug` output.
//! - Every object id, ref name, login and repository path that leaves this crate has been
//!   checked (hex ids; ref names valid for git and not starting with `-`; no control
//!   characters), whether it came from a webhook or an API answer.
//! - Nothing here runs a shell or a subprocess.
//! - The parsers ([`parse_payload`], [`parse_command`]) never panic, whatever the input.
//!
//! # Assumptions
//! The webhook endpoint hands over the raw body as received (not re-serialized JSON), and
//! limits the body size before reading it ([`DEFAULT_MAX_BODY_BYTES`] is checked again here).
//!
//! # Caveats
//! - HTTPS needs the `tls` feature; without it an `https://` API URL is a [`ConfigError`].
//! - Secret redaction in plan text is the caller's job; [`render_plan_comment`] only makes
//!   sure that nothing can break out of its Markdown.
#![deny(missing_docs)]

mod adapter;
mod api;
mod approvals;
mod command;
mod config;
mod error;
mod event;
mod gitea;
mod github;
mod gitlab;
mod http;
mod names;
mod paging;
mod profile;
mod pull_wire;
mod render;
mod scrub;
mod section;
mod webhook;

pub use adapter::connect;
pub use api::{
    CommentId, CommitStatus, DeploymentState, Forge, PrState, PreviewDeployment,
    PullRequestDetails, StatusState,
};
pub use approvals::Approval;
pub use command::{Command, CommandError, CommitPrefix, USAGE, parse_command};
pub use config::{ConfigError, ForgeConfig, Secret};
pub use error::ForgeError;
pub use event::{
    Delivery, ExpectedRepository, ForgeEvent, ForgeKind, PrAction, PullRequestInfo, RepositoryRef,
    ReviewState, UnknownForge,
};
pub use names::is_bot;
pub use profile::{ForgeProfile, SignatureScheme, StatusNames};
pub use render::{
    DEFAULT_PLAN_MARKER, EnvPlan, GITHUB_COMMENT_LIMIT, PlanCommentOptions, literal_block,
    render_plan_comment,
};
pub use section::ForgeSection;
pub use webhook::{
    DEFAULT_MAX_BODY_BYTES, Headers, KNOWN_EVENTS, WebhookError, WebhookVerifier, body_digest,
    parse_payload, payload_repository, sign, verify_and_parse,
};
