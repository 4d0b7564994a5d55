//! The one HTTP client the adapters share ([`Api`]): the token in the profile's header, no
//! redirects followed, every text sent scrubbed, every error free of the token.

use serde::de::DeserializeOwned;

use crate::config::{ConfigError, ForgeConfig, Secret};
use crate::error::{ForgeError, error_reason, path_only};
use crate::names;
use crate::profile::ForgeProfile;
use crate::scrub::Scrubber;

/// The HTTP client shared by the adapters: base URL, auth header, forge-specific headers, and
/// the rules every request follows.
pub(crate) struct Api {
    agent: ureq::Agent,
    base: String,
    token: Secret,
    /// Where the auth header, the extra headers and the page size come from.
    pub(crate) profile: &'static ForgeProfile,
    pub(crate) max_pages: u32,
    scrubber: Scrubber,
}

/// What an answer says of the list it is a page of: its `Link` header, and the number of
/// items in the whole list (`X-Total-Count`, Gitea's and GitLab's).
pub(crate) struct Paging {
    pub(crate) link: Option<String>,
    pub(crate) total: Option<u64>,
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Put => "PUT",
        }
    }
}

impl Api {
    pub(crate) fn new(config: &ForgeConfig) -> Result<Api, ConfigError> {
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
        Ok(Api {
            agent,
            base,
            token: config.token.clone(),
            profile: config.kind.profile(),
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

    pub(crate) fn decode<T: DeserializeOwned>(
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
    pub(crate) fn call(
        &self,
        method: Method,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<(Paging, String), ForgeError> {
        let url = format!("{}{}", self.base, path);
        let result = match (method, json) {
            (Method::Get, _) => self.headers(self.agent.get(&url)).call(),
            (_, body) => {
                let rb = match method {
                    Method::Post => self.agent.post(&url),
                    Method::Patch => self.agent.patch(&url),
                    Method::Put => self.agent.put(&url),
                    Method::Get => unreachable!("GET is handled above"),
                };
                let text = body.map(|b| b.to_string()).unwrap_or_default();
                self.headers(rb).content_type("application/json").send(text)
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
        let paging = Paging {
            link: header("link"),
            total: header("x-total-count").and_then(|t| t.trim().parse().ok()),
        };
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
            return Ok((paging, body));
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

    /// `request` with the token in the profile's auth header, and the profile's other headers.
    fn headers<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        let profile = self.profile;
        let auth = format!("{}{}", profile.auth_prefix, self.token.expose());
        let request = request
            .header(profile.auth_header, &auth)
            .header("User-Agent", "slipway");
        profile
            .api_headers
            .iter()
            .fold(request, |request, (k, v)| request.header(*k, *v))
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
