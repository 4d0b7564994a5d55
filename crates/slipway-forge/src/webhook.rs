//! Webhook deliveries: verify the signature (or token) over the raw body, then parse the
//! payload into a [`ForgeEvent`].

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::event::{Delivery, ExpectedRepository, ForgeEvent, ForgeKind, RepositoryRef};
use crate::profile::SignatureScheme;

type HmacSha256 = Hmac<Sha256>;

/// The largest webhook body accepted by default: 1 MiB. GitHub caps its payloads at 25 MB, but
/// the events Slipway reads are a few tens of KiB; a push of many commits is the biggest.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Header lookup, so that verification works on `http::HeaderMap` (what axum hands a handler)
/// and on plain `(name, value)` pairs alike.
pub trait Headers {
    /// The first value of the header `name` (matched case-insensitively), if it is present and
    /// is visible ASCII.
    fn header(&self, name: &str) -> Option<&str>;
}

impl Headers for http::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Headers for [(K, V)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Headers for Vec<(K, V)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

/// Why a delivery was refused. Every variant's message says what to fix; none contains the
/// secret or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Slipway has no webhook secret for this forge, so it cannot tell a real delivery from a
    /// forged one, and refuses them all.
    #[error(
        "no webhook secret is configured for {0}: every delivery is refused until one is set \
         (the same secret on the forge's webhook and in Slipway's configuration)"
    )]
    NoSecret(ForgeKind),
    /// The body is larger than the limit; it was not read further.
    #[error("webhook body is {size} bytes, over the {limit}-byte limit")]
    BodyTooLarge {
        /// The body's size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The signature or token header is missing: the forge's webhook has no secret set, or
    /// the request did not come from the forge.
    #[error(
        "missing {header} header: the delivery is not signed; set the webhook's secret on the \
         forge to the one Slipway has"
    )]
    MissingSignature {
        /// The header that was expected.
        header: &'static str,
    },
    /// The signature does not match the body, or the token is not the secret: a wrong secret
    /// on one side, or a forged delivery.
    #[error(
        "{header} does not match: the secret on the forge differs from Slipway's, or the \
         delivery was forged or altered"
    )]
    BadSignature {
        /// The header that was checked.
        header: &'static str,
    },
    /// The header naming the event is missing.
    #[error("missing {header} header: cannot tell which event this delivery is")]
    MissingEvent {
        /// The header that was expected.
        header: &'static str,
    },
    /// The body (or the delivery id) is not what the forge sends for this event.
    #[error("malformed webhook delivery: {0}")]
    Malformed(String),
}

impl WebhookError {
    /// The HTTP status a webhook endpoint should answer with: `413` for a body too large,
    /// `401` for a missing or bad signature, `400` for a malformed delivery, `503` when no
    /// secret is configured (the server's fault, and the forge will retry).
    pub fn http_status(&self) -> u16 {
        match self {
            WebhookError::NoSecret(_) => 503,
            WebhookError::BodyTooLarge { .. } => 413,
            WebhookError::MissingSignature { .. } | WebhookError::BadSignature { .. } => 401,
            WebhookError::MissingEvent { .. } | WebhookError::Malformed(_) => 400,
        }
    }
}

/// Verifies and parses the deliveries of one forge's webhook.
///
/// # Guarantees
/// - The body size is checked first, then the signature (GitHub's `X-Hub-Signature-256`,
///   Gitea's `X-Gitea-Signature` or Forgejo's `X-Forgejo-Signature`: HMAC-SHA256 of the raw
///   body; GitLab's `X-Gitlab-Token`: the secret itself), compared in constant time, and only
///   then is the body parsed.
/// - An empty secret refuses every delivery ([`WebhookError::NoSecret`]): an HMAC under an
///   empty key proves nothing.
/// - Every object id in the returned event is hex, every ref and branch name is a valid git
///   ref name that cannot be taken for an option, every login is free of control characters
///   (see `names.rs`); a payload that breaks this is [`WebhookError::Malformed`].
///
/// # Caveats
/// Replay protection is the caller's: deduplicate on [`Delivery::id`].
///
/// With [`WebhookVerifier::with_repository`] (what [`crate::ForgeConfig::webhook_verifier`]
/// gives), a push, pull request, review or comment about another repository (or one whose
/// payload names none) is [`ForgeEvent::Ignored`] and [`Delivery::other_repository`] says
/// which: organisation- and group-level hooks deliver every repository's events under one
/// secret, and another repository's pull request 7 is not ours.
#[derive(Clone)]
pub struct WebhookVerifier {
    forge: ForgeKind,
    secret: Vec<u8>,
    max_body_bytes: usize,
    repository: Option<ExpectedRepository>,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("forge", &self.forge)
            .field("secret", &"<redacted>")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("repository", &self.repository)
            .finish()
    }
}

impl WebhookVerifier {
    /// A verifier for `forge`'s deliveries signed with `secret`, with the default body limit.
    pub fn new(forge: ForgeKind, secret: impl Into<Vec<u8>>) -> Self {
        WebhookVerifier {
            forge,
            secret: secret.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            repository: None,
        }
    }

    /// Acts only on events about `repository`: the others are [`ForgeEvent::Ignored`] (see
    /// [`Delivery::other_repository`]).
    pub fn with_repository(mut self, repository: ExpectedRepository) -> Self {
        self.repository = Some(repository);
        self
    }

    /// The repository events must be about, if one was given.
    pub fn repository(&self) -> Option<&ExpectedRepository> {
        self.repository.as_ref()
    }

    /// Sets the largest body accepted.
    pub fn with_max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// The forge this verifier is for.
    pub fn forge(&self) -> ForgeKind {
        self.forge
    }

    /// Verifies the delivery's signature over `body`, then parses it.
    pub fn verify_and_parse<H: Headers + ?Sized>(
        &self,
        headers: &H,
        body: &[u8],
    ) -> Result<Delivery, WebhookError> {
        if self.secret.is_empty() {
            return Err(WebhookError::NoSecret(self.forge));
        }
        if body.len() > self.max_body_bytes {
            return Err(WebhookError::BodyTooLarge {
                size: body.len(),
                limit: self.max_body_bytes,
            });
        }
        self.verify(headers, body)?;
        let event_headers = self.forge.profile().event_headers;
        let event = first_header(headers, event_headers)
            .ok_or(WebhookError::MissingEvent {
                header: event_headers[0],
            })?
            .1
            .trim();
        let id = delivery_id(self.forge, headers, body)?;
        let event_name = event;
        let mut event = parse_payload(self.forge, event_name, body)?;
        let repository = payload_repository(self.forge, body);
        let mut other_repository = None;
        let acted_on = match &event {
            ForgeEvent::Push { .. } => Some("push"),
            ForgeEvent::PullRequest { .. } => Some("pull_request"),
            ForgeEvent::Review { .. } => Some("review"),
            ForgeEvent::Comment { .. } => Some("comment"),
            ForgeEvent::Ping | ForgeEvent::Ignored { .. } => None,
        };
        if let (Some(expected), Some(kind)) = (&self.repository, acted_on)
            && !expected.matches(repository.as_ref())
        {
            other_repository = Some(
                repository
                    .as_ref()
                    .map_or_else(|| "(no repository)".to_owned(), ToString::to_string),
            );
            event = ForgeEvent::Ignored {
                kind: format!("{kind}.other_repository"),
            };
        }
        Ok(Delivery {
            forge: self.forge,
            id,
            event,
            repository,
            other_repository,
        })
    }

    /// Checks the profile's signature header over `body`.
    fn verify<H: Headers + ?Sized>(&self, headers: &H, body: &[u8]) -> Result<(), WebhookError> {
        let profile = self.forge.profile();
        let (header, value) = first_header(headers, profile.signature_headers).ok_or(
            WebhookError::MissingSignature {
                header: profile.signature_headers[0],
            },
        )?;
        let genuine = match profile.signature {
            SignatureScheme::HmacSha256 { prefix } => value
                .trim()
                .strip_prefix(prefix)
                .is_some_and(|hex_sig| verify_hmac(&self.secret, body, hex_sig).is_ok()),
            SignatureScheme::Token => tokens_equal(value.as_bytes(), &self.secret),
        };
        if genuine {
            Ok(())
        } else {
            Err(WebhookError::BadSignature { header })
        }
    }
}

/// Verifies and parses one delivery with the default body limit: shorthand for
/// [`WebhookVerifier::verify_and_parse`].
pub fn verify_and_parse<H: Headers + ?Sized>(
    forge: ForgeKind,
    headers: &H,
    body: &[u8],
    secret: &[u8],
) -> Result<Delivery, WebhookError> {
    WebhookVerifier::new(forge, secret).verify_and_parse(headers, body)
}

/// Parses a payload **without verifying it**: `event` is the value of the forge's event
/// header (`X-GitHub-Event`, `X-Gitlab-Event`, `X-Gitea-Event`).
///
/// This is the parser behind [`verify_and_parse`], exposed for fuzzing (and for tools that read
/// payloads already verified elsewhere). It never panics, for any `forge`, `event` and `body`;
/// a fuzz target can feed it arbitrary bytes:
///
/// ```
/// use slipway_forge::{ForgeKind, parse_payload, KNOWN_EVENTS};
/// let data: &[u8] = b"{\"action\": \"opened\"}";
/// for forge in ForgeKind::ALL {
///     for event in KNOWN_EVENTS {
///         let _ = parse_payload(forge, event, data);
///     }
/// }
/// ```
///
/// Never act on its result for a delivery from the network: use [`verify_and_parse`].
pub fn parse_payload(
    forge: ForgeKind,
    event: &str,
    body: &[u8],
) -> Result<ForgeEvent, WebhookError> {
    (forge.profile().parse_event)(event, body)
}

/// The repository a payload is about: `repository` (GitHub, Gitea: `full_name`, `id`), or
/// GitLab's `project` (`path_with_namespace`, `id`; else `project_id`, else a merge request's
/// `target` and `target_project_id`). `None` when the payload names none, or is not JSON.
/// Never panics, for any input.
pub fn payload_repository(forge: ForgeKind, body: &[u8]) -> Option<RepositoryRef> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    (forge.profile().payload_repository)(&v)
        .filter(|found| found.full_name.is_some() || found.id.is_some())
}

/// The repository a GitHub or Gitea payload is about: its `repository` (`full_name`, `id`).
pub(crate) fn repository_object(v: &serde_json::Value) -> Option<RepositoryRef> {
    let repo = v.get("repository").filter(|r| r.is_object())?;
    Some(RepositoryRef {
        full_name: repo
            .get("full_name")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        id: repo.get("id").and_then(serde_json::Value::as_u64),
    })
}

/// Event header values that [`parse_payload`] reads a payload for, across the three forges
/// (every other value is [`ForgeEvent::Ignored`]); a fuzz target's dictionary.
pub const KNOWN_EVENTS: &[&str] = &[
    "ping",
    "push",
    "delete",
    "pull_request",
    "pull_request_review",
    "issue_comment",
    "pull_request_approved",
    "pull_request_rejected",
    "pull_request_comment",
    "pull_request_review_approved",
    "pull_request_review_rejected",
    "pull_request_review_comment",
    "Push Hook",
    "Tag Push Hook",
    "Merge Request Hook",
    "Note Hook",
    "Confidential Note Hook",
];

/// The first of `names` present in `headers`, with its value.
fn first_header<'h, H: Headers + ?Sized>(
    headers: &'h H,
    names: &[&'static str],
) -> Option<(&'static str, &'h str)> {
    names
        .iter()
        .find_map(|name| headers.header(name).map(|value| (*name, value)))
}

/// The forge's delivery id, or a hash of the body when it sent none.
fn delivery_id<H: Headers + ?Sized>(
    forge: ForgeKind,
    headers: &H,
    body: &[u8],
) -> Result<String, WebhookError> {
    let names = forge.profile().delivery_headers;
    match first_header(headers, names) {
        Some((_, id)) => {
            let id = id.trim();
            let ok = !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
            if ok {
                Ok(id.to_owned())
            } else {
                Err(WebhookError::Malformed(format!(
                    "the {} header is not a delivery id (1 to 128 of A-Z a-z 0-9 - _ . :)",
                    names[0]
                )))
            }
        }
        None => Ok(format!("sha256:{}", body_digest(body))),
    }
}

fn verify_hmac(secret: &[u8], body: &[u8], hex_sig: &str) -> Result<(), ()> {
    let sig = hex::decode(hex_sig).map_err(|_| ())?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| ())?;
    mac.update(body);
    // verify_slice compares in constant time, and refuses a signature of the wrong length.
    mac.verify_slice(&sig).map_err(|_| ())
}

/// Compares a token from a request with the secret in constant time. Both are MACed under a
/// fixed key and the tags compared with `verify_slice`: equal tags mean equal inputs (short of
/// a SHA-256 collision), and the comparison time says nothing about where they differ.
fn tokens_equal(given: &[u8], secret: &[u8]) -> bool {
    const KEY: &[u8] = b"slipway webhook token comparison";
    let tag = |input: &[u8]| {
        let mut mac = HmacSha256::new_from_slice(KEY).expect("HMAC takes a key of any length");
        mac.update(input);
        mac
    };
    let expected = tag(secret).finalize().into_bytes();
    tag(given).verify_slice(&expected).is_ok()
}

/// The lowercase hex of SHA-256 over a delivery's raw body. The signature (or GitLab's token)
/// covers the body only, not the delivery id: a receiver that also deduplicates on this
/// digest handles a captured body once, whatever id a replay puts on it.
pub fn body_digest(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Signs `body` the way GitHub and Gitea do: the lowercase hex of HMAC-SHA256 under `secret`
/// (GitHub sends it as `sha256=<hex>`). For tests and for tools that replay deliveries.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Decodes a JSON payload into `T`, naming the event and serde's reason (path, line, column)
/// but never quoting the body.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &[u8],
) -> Result<T, WebhookError> {
    serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("{what} payload: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        assert!(tokens_equal(b"s3cret", b"s3cret"));
        assert!(!tokens_equal(b"s3cret", b"s3creT"));
        assert!(!tokens_equal(b"s3cre", b"s3cret"));
        assert!(!tokens_equal(b"", b"s3cret"));
    }

    #[test]
    fn signatures_of_the_wrong_shape_are_refused_not_panicked_on() {
        assert!(verify_hmac(b"k", b"body", "zz").is_err());
        assert!(verify_hmac(b"k", b"body", "").is_err());
        assert!(verify_hmac(b"k", b"body", &"00".repeat(31)).is_err());
        let good = sign(b"k", b"body");
        assert!(verify_hmac(b"k", b"body", &good).is_ok());
        assert!(verify_hmac(b"k", b"body", &good.to_uppercase()).is_ok());
    }
}
