//! The [`Forge`] trait, its configuration, its errors, and the one HTTP client the three
//! adapters share.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::event::{ExpectedRepository, ForgeKind, PullRequestInfo};
use crate::names;
use crate::scrub::Scrubber;
use crate::webhook::WebhookVerifier;

/// A comment's id on its forge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommentId(pub u64);

impl fmt::Display for CommentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A commit status's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusState {
    /// Work is under way.
    Pending,
    /// Done, and good.
    Success,
    /// Done, and the change is not acceptable (the plan failed, a rule refused it).
    Failure,
    /// Slipway itself could not finish (GitLab has no such state: it shows `failed`).
    Error,
}

impl StatusState {
    /// The name GitHub and Gitea give it (`pending`, `success`, `failure`, `error`).
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
        }
    }
}

/// A commit status to set on a pull request's head commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    /// The commit (40 or 64 hex digits).
    pub sha: String,
    /// The check's name, e.g. `slipway/plan`; one status per context is shown.
    pub context: String,
    /// Its state.
    pub state: StatusState,
    /// One line for the forge's UI (cut to 140 characters, GitHub's limit).
    pub description: String,
    /// A link to the details, if any.
    pub target_url: Option<String>,
}

/// A pull request as the forge's API describes it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestDetails {
    /// What every forge says about a pull request.
    pub info: PullRequestInfo,
    /// Whether it can be merged without conflicts; `None` while the forge is still computing
    /// it (GitHub computes it lazily: ask again a few seconds later).
    pub mergeable: Option<bool>,
    /// Open, closed or merged.
    pub state: PrState,
    /// Once merged: the commit the merge made on the base branch (a merge, squash or rebase
    /// commit; GitLab's squash commit when it squashed).
    pub merge_commit_sha: Option<String>,
}

/// A pull request's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrState {
    /// Open (GitLab: `opened`, or `locked`).
    Open,
    /// Closed without being merged.
    Closed,
    /// Merged.
    Merged,
}

/// A reviewer whose latest verdict on a pull request is an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The reviewer's login.
    pub author: String,
    /// The commit the approval was given on, when the forge says (GitHub, Gitea); compare it
    /// with the head to refuse approvals of an older commit.
    pub commit_sha: Option<String>,
}

/// One forge, one repository: what Slipway needs to gate changes on pull requests.
///
/// Every method is a blocking HTTP call (or a few): call them from a blocking thread
/// (`tokio::task::spawn_blocking`), not from an async task.
///
/// # Guarantees
/// - Every request carries the token in a header (never in the URL), and no error or `Debug`
///   output contains it.
/// - The token goes to the configured API only: redirects are not followed (a `3xx` is
///   [`ForgeError::Redirected`], naming where it pointed), and lists are paged by asking the
///   configured API for `page=N`, never by following the URLs of a `Link` header.
/// - Every text sent (comments, status descriptions) has [`ForgeConfig::private_texts`]
///   replaced by their stand-ins, whichever method sends it.
/// - Every value put into a URL path is percent-encoded as one segment.
/// - Lists are read `per_page=100` (Gitea: `limit=50`) for at most
///   [`ForgeConfig::max_pages`] pages.
pub trait Forge: Send + Sync {
    /// Which forge this is.
    fn kind(&self) -> ForgeKind;

    /// Creates or updates Slipway's comment on pull request `pr` that carries `marker` (an
    /// HTML comment such as `<!-- slipway:plan -->`, invisible in the rendered page), so that
    /// each pull request has one such comment however many times it is pushed to.
    ///
    /// Only comments written by Slipway's own account are considered (a comment that anyone
    /// else wrote with the marker in it is left alone); the oldest one is updated, and it is
    /// not written at all when its body is already `body`. `body` is posted as is when it
    /// contains `marker`, else with `marker` on a first line of its own.
    ///
    /// # Caveats
    /// Read-then-write, not atomic: two concurrent calls for the same pull request may both
    /// create a comment. Call it from one place per pull request (the controller's queue).
    fn upsert_comment(&self, pr: u64, marker: &str, body: &str) -> Result<CommentId, ForgeError>;

    /// Posts a new comment on pull request (or issue) `pr`.
    fn post_comment(&self, pr: u64, body: &str) -> Result<CommentId, ForgeError>;

    /// Sets a commit status (GitHub and Gitea: a commit status; GitLab: a commit status whose
    /// `name` is the context).
    fn set_status(&self, status: &CommitStatus) -> Result<(), ForgeError>;

    /// Reads pull request `number`.
    fn pull_request(&self, number: u64) -> Result<PullRequestDetails, ForgeError>;

    /// Reviewers whose latest verdict (approve, request changes or dismissed; plain comments do
    /// not count) is an approval.
    fn approvals(&self, number: u64) -> Result<Vec<Approval>, ForgeError>;

    /// Whether `user` may push to the repository (GitHub: `admin`, `maintain` or `write`;
    /// GitLab: Developer or above; Gitea: `write`, `admin` or `owner`). A user the forge does
    /// not know is `false`, not an error.
    fn has_write_access(&self, user: &str) -> Result<bool, ForgeError>;

    /// Every open pull request (a reconciliation pass uses it to catch missed webhooks).
    fn open_pull_requests(&self) -> Result<Vec<PullRequestInfo>, ForgeError>;

    /// The ref under which the forge publishes pull request `number`'s head, for `git fetch`:
    /// `refs/pull/N/head` (GitHub, Gitea) or `refs/merge-requests/N/head` (GitLab).
    fn pr_head_ref(&self, number: u64) -> String;
}

/// A secret string (a token, a webhook secret) whose `Debug` output is redacted.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// How to reach one forge repository. Build it with [`ForgeConfig::new`], change the public
/// fields, then [`connect`].
#[derive(Debug, Clone)]
pub struct ForgeConfig {
    /// Which forge.
    pub kind: ForgeKind,
    /// The repository: `owner/name` (GitLab: `group/subgroup/project`, or the project's
    /// numeric id). Webhooks about any other repository are ignored.
    pub repository: String,
    /// The repository's numeric id on the forge (GitHub's and Gitea's `repository.id`,
    /// GitLab's project id), when known: webhooks are then matched by id, which survives
    /// renames and transfers, so that another repository that takes the old name is not
    /// taken for ours. `None`: matched by [`ForgeConfig::repository`].
    pub repository_id: Option<u64>,
    /// The API's root URL, without a trailing `/`. `None` means `https://api.github.com` or
    /// `https://gitlab.com/api/v4`; Gitea has no default and needs its `https://host/api/v1`.
    pub api_url: Option<String>,
    /// The API token (GitHub: a fine-grained or installation token; GitLab: a project access
    /// token with `api`; Gitea: an access token).
    pub token: Secret,
    /// The webhook's secret (GitLab: its secret token).
    pub webhook_secret: Secret,
    /// Slipway's own login on the forge, whose comments [`Forge::upsert_comment`] may edit.
    /// `None` asks the forge once (`GET /user`); set it for a GitHub App, whose installation
    /// token cannot read `/user` (its login is `<app-slug>[bot]`).
    pub bot_login: Option<String>,
    /// The time limit for one HTTP request, connection included.
    pub timeout: Duration,
    /// The most pages read from one list.
    pub max_pages: u32,
    /// Texts that must never reach the forge, each with the neutral word that replaces it in
    /// comments and status descriptions: the server's repository URL and local paths, its home
    /// directory. A URL is also replaced without its credentials, a `file://` URL also as its
    /// path.
    pub private_texts: Vec<(String, String)>,
}

impl ForgeConfig {
    /// A configuration with the defaults: the forge's public API URL, a 30 s timeout, 20
    /// pages per list (2,000 items on GitHub and GitLab).
    pub fn new(kind: ForgeKind, repository: impl Into<String>, token: impl Into<Secret>) -> Self {
        ForgeConfig {
            kind,
            repository: repository.into(),
            repository_id: None,
            api_url: None,
            token: token.into(),
            webhook_secret: Secret::default(),
            bot_login: None,
            timeout: Duration::from_secs(30),
            max_pages: 20,
            private_texts: Vec::new(),
        }
    }

    /// The API root in force: `api_url`, or the forge's public default.
    pub fn api_base(&self) -> Result<String, ConfigError> {
        let url = match (&self.api_url, self.kind) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, ForgeKind::GitHub) => "https://api.github.com".to_owned(),
            (None, ForgeKind::GitLab) => "https://gitlab.com/api/v4".to_owned(),
            (None, ForgeKind::Gitea) => return Err(ConfigError::ApiUrlRequired),
        };
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or(ConfigError::InvalidApiUrl {
                reason: "it must start with https:// (or http:// for a forge on this machine)",
            })?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(ConfigError::InvalidApiUrl {
                reason: "it has no host",
            });
        }
        if authority.contains('@') {
            return Err(ConfigError::InvalidApiUrl {
                reason: "it must not carry credentials: put the token in `token`",
            });
        }
        if url.contains(['?', '#', ' ']) {
            return Err(ConfigError::InvalidApiUrl {
                reason: "it must be a plain URL, without query, fragment or spaces",
            });
        }
        if url.starts_with("https://") && !cfg!(feature = "tls") {
            return Err(ConfigError::TlsNotCompiled);
        }
        Ok(url)
    }

    /// A webhook verifier for this forge with [`ForgeConfig::webhook_secret`], that acts only
    /// on events about [`ForgeConfig::repository`] (or [`ForgeConfig::repository_id`]).
    pub fn webhook_verifier(&self) -> WebhookVerifier {
        WebhookVerifier::new(self.kind, self.webhook_secret.expose().as_bytes()).with_repository(
            ExpectedRepository {
                name: self.repository.clone(),
                id: self.repository_id,
            },
        )
    }

    /// Whether [`ForgeConfig::repository`] is usable: `owner/name`, or on GitLab also a
    /// numeric project id.
    fn repository_is_valid(&self) -> bool {
        names::is_repository_path(&self.repository)
            || (self.kind == ForgeKind::GitLab && is_numeric_id(&self.repository))
    }
}

/// A [`ForgeConfig`] that cannot work. Each message names the setting to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Gitea has no public instance to default to.
    #[error("forge.gitea needs api_url, e.g. \"https://gitea.example.com/api/v1\"")]
    ApiUrlRequired,
    /// `api_url` is not a usable URL.
    #[error("forge api_url is not usable: {reason}")]
    InvalidApiUrl {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// This build cannot speak HTTPS.
    #[error(
        "forge api_url is https:// but this build of Slipway has no TLS support (build \
         slipway-forge with its `tls` feature)"
    )]
    TlsNotCompiled,
    /// The repository is not `owner/name`.
    #[error(
        "forge repository {0:?} is not of the form owner/name (GitLab: group/subgroup/project, \
         or the project's numeric id), each part of A-Z a-z 0-9 . _ -"
    )]
    InvalidRepository(String),
    /// No token: Slipway could not comment or set statuses.
    #[error("forge token is empty: set it (token_env names the variable that holds it)")]
    MissingToken,
    /// `bot_login` is not a login.
    #[error("forge bot_login {0:?} is not a login")]
    InvalidBotLogin(String),
}

/// Builds the adapter for `config.kind`.
pub fn connect(config: ForgeConfig) -> Result<Box<dyn Forge>, ConfigError> {
    let api = Api::new(&config)?;
    Ok(match config.kind {
        ForgeKind::GitHub => Box::new(crate::github::GitHub::new(api, &config)),
        ForgeKind::GitLab => Box::new(crate::gitlab::GitLab::new(api, &config)),
        ForgeKind::Gitea => Box::new(crate::gitea::Gitea::new(api, &config)),
    })
}

/// A call to the forge's API failed.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// The forge answered with an error status.
    #[error("{method} {path}: the forge answered {status}: {reason}")]
    Status {
        /// The request's method.
        method: &'static str,
        /// The request's path (no host, no query).
        path: String,
        /// The HTTP status.
        status: u16,
        /// The forge's message, cut short.
        reason: String,
        /// The answer said the rate limit is used up.
        rate_limited: bool,
    },
    /// The request did not get an answer.
    #[error("{method} {path}: {reason}")]
    Transport {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// What went wrong (connection refused, timeout…).
        reason: String,
    },
    /// The answer was not what the forge's API documents.
    #[error("{method} {path}: unexpected answer from the forge: {reason}")]
    Decode {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// What did not fit.
        reason: String,
    },
    /// The forge answered with a redirect, which is not followed: the token must go to the
    /// configured API only, never to wherever an answer points.
    #[error(
        "{method} {path}: the forge API redirected ({status}) to {location}; Slipway does not \
         follow redirects with its token: set api_url (and repository, if it was renamed or \
         moved) to the final address"
    )]
    Redirected {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// The HTTP status (301, 302, 303, 307, 308).
        status: u16,
        /// Where it pointed, without its query (`(none)` when the forge did not say).
        location: String,
    },
    /// An argument cannot be sent (a sha that is not hex, a marker that is not an HTML
    /// comment…).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl ForgeError {
    /// Whether trying again later may succeed: no answer, a timeout, `408`, `429`, a `5xx`, or
    /// a rate limit. Anything else (`401`, `404`, `422`, a bad argument) fails the same way
    /// every time.
    pub fn retryable(&self) -> bool {
        match self {
            ForgeError::Status {
                status,
                rate_limited,
                ..
            } => *rate_limited || matches!(status, 408 | 429 | 500..=599),
            ForgeError::Transport { .. } => true,
            ForgeError::Decode { .. }
            | ForgeError::InvalidInput { .. }
            | ForgeError::Redirected { .. } => false,
        }
    }

    /// The HTTP status the forge answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Status { status, .. } | ForgeError::Redirected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// The HTTP client shared by the adapters: base URL, auth header, forge-specific headers, and
/// the rules every request follows.
pub(crate) struct Api {
    agent: ureq::Agent,
    base: String,
    token: Secret,
    auth_header: &'static str,
    auth_prefix: &'static str,
    extra_headers: &'static [(&'static str, &'static str)],
    pub(crate) max_pages: u32,
    scrubber: Scrubber,
}

/// The largest API answer read: lists of 100 pull requests run to a few MiB on GitHub.
const MAX_RESPONSE_BYTES: u64 = 32 << 20;

/// An HTTP method the adapters use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
    Patch,
    Put,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Put => "PUT",
        }
    }
}

/// One page of a list, and whether the forge says there is another.
struct Page<T> {
    items: Vec<T>,
    link_next: Option<bool>,
}

impl Api {
    fn new(config: &ForgeConfig) -> Result<Api, ConfigError> {
        let base = config.api_base()?;
        if !config.repository_is_valid() {
            return Err(ConfigError::InvalidRepository(config.repository.clone()));
        }
        if config.token.is_empty() {
            return Err(ConfigError::MissingToken);
        }
        if let Some(login) = &config.bot_login
            && !names::is_login(login)
        {
            return Err(ConfigError::InvalidBotLogin(login.clone()));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            // Status codes are answers to read (404 = "not a collaborator"), not transport
            // errors.
            .http_status_as_error(false)
            // A redirect is an answer to report, never to follow: ureq drops `Authorization`
            // on a redirect to another host, but not GitLab's `PRIVATE-TOKEN`, and no header
            // of ours has any business at an address the configuration does not name.
            .max_redirects(0)
            .build()
            .into();
        let (auth_header, auth_prefix, extra_headers): (_, _, &'static [(&str, &str)]) =
            match config.kind {
                ForgeKind::GitHub => (
                    "Authorization",
                    "Bearer ",
                    &[
                        ("Accept", "application/vnd.github+json"),
                        ("X-GitHub-Api-Version", "2022-11-28"),
                    ],
                ),
                ForgeKind::GitLab => ("PRIVATE-TOKEN", "", &[("Accept", "application/json")]),
                ForgeKind::Gitea => ("Authorization", "token ", &[("Accept", "application/json")]),
            };
        Ok(Api {
            agent,
            base,
            token: config.token.clone(),
            auth_header,
            auth_prefix,
            extra_headers,
            max_pages: config.max_pages.max(1),
            scrubber: Scrubber::new(&config.private_texts),
        })
    }

    /// `GET path`, decoded.
    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ForgeError> {
        let (_, body) = self.call(Method::Get, path, None)?;
        self.decode(Method::Get, path, &body)
    }

    /// `GET path`, decoded, or `None` on `404`.
    pub(crate) fn get_optional<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ForgeError> {
        match self.call(Method::Get, path, None) {
            Ok((_, body)) => self.decode(Method::Get, path, &body).map(Some),
            Err(ForgeError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `text` with the private texts (the repository's URL and paths, the home) replaced: what
    /// may be shown on the forge. [`Api::send`] does it to every string it sends; call it too
    /// where a text is compared with what the forge has (an existing comment's body).
    pub(crate) fn scrub(&self, text: &str) -> String {
        self.scrubber.scrub(text)
    }

    /// `method path` with a JSON body, decoded. Every string in `body` is scrubbed first
    /// ([`Api::scrub`]).
    pub(crate) fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ForgeError> {
        let body = self.scrubber.scrub_json(body);
        let (_, answer) = self.call(method, path, Some(&body))?;
        self.decode(method, path, &answer)
    }

    /// Every item of a paginated list: `page=1,2,…` with `per_page_param=per_page`, until the
    /// forge's `Link` header has no `rel="next"` (or, without a `Link` header, a page comes
    /// back short), for at most `max_pages` pages.
    pub(crate) fn get_all<T: DeserializeOwned>(
        &self,
        path: &str,
        per_page_param: &str,
        per_page: usize,
    ) -> Result<Vec<T>, ForgeError> {
        let mut all = Vec::new();
        let sep = if path.contains('?') { '&' } else { '?' };
        for page in 1..=self.max_pages {
            let url = format!("{path}{sep}{per_page_param}={per_page}&page={page}");
            let Page { items, link_next } = self.get_page::<T>(&url)?;
            let short = items.len() < per_page;
            all.extend(items);
            let more = link_next.unwrap_or(!short);
            if !more {
                break;
            }
        }
        Ok(all)
    }

    fn get_page<T: DeserializeOwned>(&self, path: &str) -> Result<Page<T>, ForgeError> {
        let (link, body) = self.call(Method::Get, path, None)?;
        let items: Vec<T> = self.decode(Method::Get, path, &body)?;
        let link_next = link.map(|l| has_next_link(&l));
        Ok(Page { items, link_next })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> Result<T, ForgeError> {
        serde_json::from_str(body).map_err(|e| ForgeError::Decode {
            method: method.as_str(),
            path: path_only(path),
            reason: self.redact(&e.to_string()),
        })
    }

    /// Sends one request; returns the `Link` header and the body of a `2xx` answer.
    fn call(
        &self,
        method: Method,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<(Option<String>, String), ForgeError> {
        let url = format!("{}{}", self.base, path);
        let auth = format!("{}{}", self.auth_prefix, self.token.expose());
        let result = match (method, json) {
            (Method::Get, _) => {
                let mut rb = self.agent.get(&url);
                rb = rb
                    .header(self.auth_header, &auth)
                    .header("User-Agent", "slipway");
                for (k, v) in self.extra_headers {
                    rb = rb.header(*k, *v);
                }
                rb.call()
            }
            (_, body) => {
                let mut rb = match method {
                    Method::Post => self.agent.post(&url),
                    Method::Patch => self.agent.patch(&url),
                    Method::Put => self.agent.put(&url),
                    Method::Get => unreachable!("GET is handled above"),
                };
                rb = rb
                    .header(self.auth_header, &auth)
                    .header("User-Agent", "slipway");
                for (k, v) in self.extra_headers {
                    rb = rb.header(*k, *v);
                }
                let text = body.map(|b| b.to_string()).unwrap_or_default();
                rb.content_type("application/json").send(text)
            }
        };
        let mut response = result.map_err(|e| ForgeError::Transport {
            method: method.as_str(),
            path: path_only(path),
            reason: self.redact(&e.to_string()),
        })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let link = header("link");
        let location = header("location");
        let rate_limited = header("x-ratelimit-remaining").as_deref() == Some("0");
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string()
            .map_err(|e| ForgeError::Transport {
                method: method.as_str(),
                path: path_only(path),
                reason: self.redact(&e.to_string()),
            })?;
        if (200..300).contains(&status) {
            return Ok((link, body));
        }
        if (300..400).contains(&status) {
            let location = location.map_or_else(
                || "(none)".to_owned(),
                |l| names::short_text(&self.redact(&path_only(&l)), 200),
            );
            return Err(ForgeError::Redirected {
                method: method.as_str(),
                path: path_only(path),
                status,
                location,
            });
        }
        Err(ForgeError::Status {
            method: method.as_str(),
            path: path_only(path),
            status,
            reason: self.redact(&error_reason(&body)),
            rate_limited: rate_limited && (status == 403 || status == 429),
        })
    }

    /// `text` with the token replaced, in case a forge or a library echoes it.
    fn redact(&self, text: &str) -> String {
        let token = self.token.expose();
        if token.len() >= 4 {
            text.replace(token, "<redacted>")
        } else {
            text.to_owned()
        }
    }
}

/// The path of `path_and_query`, for error messages: the query is dropped (it carries only
/// paging and filters, but there is no reason to log it).
fn path_only(path_and_query: &str) -> String {
    path_and_query
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The forge's own explanation from an error body (`{"message": …}` on GitHub and Gitea,
/// `{"message"|"error": …}` on GitLab), cut to 200 characters.
fn error_reason(body: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "error", "error_description"]
                .iter()
                .find_map(|k| match v.get(k) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(other @ serde_json::Value::Object(_))
                    | Some(other @ serde_json::Value::Array(_)) => Some(other.to_string()),
                    _ => None,
                })
        });
    let text = from_json.unwrap_or_else(|| body.to_owned());
    let text = names::short_text(&text, 200);
    if text.is_empty() {
        "(no message)".to_owned()
    } else {
        text
    }
}

/// Whether an RFC 8288 `Link` header has a `rel="next"` link.
fn has_next_link(link: &str) -> bool {
    link.split(',').any(|part| {
        part.split(';').skip(1).any(|param| {
            let param = param.trim();
            param
                .strip_prefix("rel=")
                .map(|v| v.trim_matches('"').split_whitespace().any(|r| r == "next"))
                .unwrap_or(false)
        })
    })
}

/// Checks `sha` before it goes into a URL.
pub(crate) fn check_sha(sha: &str) -> Result<(), ForgeError> {
    if names::is_object_id(sha) {
        Ok(())
    } else {
        Err(ForgeError::InvalidInput {
            what: "commit sha",
            reason: format!(
                "{:?} is not 40 or 64 hex digits",
                names::short_text(sha, 80)
            ),
        })
    }
}

/// Checks a comment marker: an HTML comment on one line, so that it stays invisible and
/// cannot end early.
pub(crate) fn check_marker(marker: &str) -> Result<(), ForgeError> {
    let inner = marker
        .strip_prefix("<!--")
        .and_then(|m| m.strip_suffix("-->"))
        .filter(|inner| {
            !inner.trim().is_empty()
                && !inner.contains("--")
                && !inner.contains('>')
                && !inner.chars().any(char::is_control)
        });
    match inner {
        Some(_) if marker.len() <= 200 => Ok(()),
        _ => Err(ForgeError::InvalidInput {
            what: "comment marker",
            reason: "it must be a one-line HTML comment such as `<!-- slipway:plan -->`".into(),
        }),
    }
}

/// The body to post for `upsert_comment`: `body`, with `marker` on its own first line unless
/// `body` already carries it.
pub(crate) fn body_with_marker(marker: &str, body: &str) -> String {
    if body.contains(marker) {
        body.to_owned()
    } else {
        format!("{marker}\n{body}")
    }
}

/// All digits: a numeric id (GitLab's project id in place of its path).
pub(crate) fn is_numeric_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Cuts a status description to GitHub's 140 characters.
pub(crate) fn status_description(text: &str) -> String {
    names::short_text(text, 139)
}

/// Checks a status context.
pub(crate) fn check_context(context: &str) -> Result<(), ForgeError> {
    if context.trim().is_empty() || context.len() > 255 || context.chars().any(char::is_control) {
        return Err(ForgeError::InvalidInput {
            what: "status context",
            reason: "it must be one non-empty line of at most 255 bytes, e.g. `slipway/plan`"
                .into(),
        });
    }
    Ok(())
}

/// Checks a login before it goes into a URL.
pub(crate) fn check_login(user: &str) -> Result<(), ForgeError> {
    if names::is_login(user) {
        Ok(())
    } else {
        Err(ForgeError::InvalidInput {
            what: "login",
            reason: format!("{:?} is not a login", names::short_text(user, 80)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_are_found_in_github_and_gitlab_link_headers() {
        let github = r#"<https://api.github.com/repositories/1/pulls?page=2>; rel="next", <https://api.github.com/repositories/1/pulls?page=5>; rel="last""#;
        assert!(has_next_link(github));
        let last = r#"<https://api.github.com/repositories/1/pulls?page=1>; rel="first", <https://api.github.com/repositories/1/pulls?page=4>; rel="prev""#;
        assert!(!has_next_link(last));
        assert!(!has_next_link(""));
    }

    #[test]
    fn markers_must_be_one_line_html_comments() {
        assert!(check_marker("<!-- slipway:plan -->").is_ok());
        for bad in [
            "slipway",
            "<!-- -->",
            "<!-- a -- b -->",
            "<!-- a\nb -->",
            "<!-- a > -->",
        ] {
            assert!(check_marker(bad).is_err(), "{bad:?} is refused as a marker");
        }
    }

    #[test]
    fn error_reasons_come_from_the_json_message() {
        assert_eq!(error_reason(r#"{"message":"Not Found"}"#), "Not Found");
        assert_eq!(
            error_reason(r#"{"error":"insufficient_scope"}"#),
            "insufficient_scope"
        );
        assert_eq!(error_reason(""), "(no message)");
        assert_eq!(error_reason(&"x".repeat(500)).chars().count(), 201);
    }

    #[test]
    fn api_urls_are_checked() {
        let mut config = ForgeConfig::new(ForgeKind::Gitea, "a/b", "t");
        assert_eq!(config.api_base(), Err(ConfigError::ApiUrlRequired));
        config.api_url = Some("http://127.0.0.1:3000/api/v1/".into());
        assert_eq!(
            config.api_base().as_deref(),
            Ok("http://127.0.0.1:3000/api/v1")
        );
        config.api_url = Some("http://user:pw@host/api".into());
        assert!(matches!(
            config.api_base(),
            Err(ConfigError::InvalidApiUrl { .. })
        ));
        config.api_url = Some("ftp://host".into());
        assert!(matches!(
            config.api_base(),
            Err(ConfigError::InvalidApiUrl { .. })
        ));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let mut config = ForgeConfig::new(ForgeKind::GitHub, "a/b", "ghp_supersecret");
        config.webhook_secret = Secret::new("hook-secret");
        let debug = format!("{config:?} {:?}", config.webhook_verifier());
        assert!(!debug.contains("supersecret"), "{debug}");
        assert!(!debug.contains("hook-secret"), "{debug}");
    }
}
