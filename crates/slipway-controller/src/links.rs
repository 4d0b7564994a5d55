//! Signed links to private preview URLs (`access: private`, SPEC §3).
//!
//! A link names one environment of one stack, as it was made (its record's `created_at`),
//! and until when it holds; it is signed with an HMAC keyed from the home's `state.key`
//! ([`slipway_state::seal::Sealer::mac`]), which every replica of a shared state holds, so a
//! link one replica makes every router accepts. Its text is `slipway_core::preview_link`'s:
//! `<env>.<stack>.<created_at>.<expires_at>~<tag>`; nothing in it is secret but the tag.
//!
//! # Guarantees
//! - A link opens only the environment it names: the router checks the name and the stack
//!   against the host it is presented on.
//! - It stops holding when it expires, when its environment is destroyed, and when another
//!   environment of the same name is made later (its `created_at` differs): a preview of a
//!   pull request closed and reopened does not inherit the links of the first.
//! - Without the home's key nobody makes one: the tag is checked in constant time, and text
//!   that is not a link (any length, any bytes) is refused without reading the state.
//!
//! # Who can make one, and what it opens
//! Anyone the API lets act on the environment (`POST /api/v1/environments/{name}/link`:
//! the developer role for generated and ad-hoc environments, deployer for static ones), the
//! `slipway` CLI on the home (which holds the key), the web UI's session (a short-lived link
//! handed to the preview host right after a signed-in person asks for it), and the pull
//! request's plan comment. A link opens the preview URL of its environment only: never the
//! API, the UI, or another environment.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use slipway_core::EnvName;
use slipway_core::preview_link;
use slipway_state::EnvironmentRecord;

use crate::{Controller, ControllerError, Inner};

/// What the links' tags are made for (a tag of another purpose is no link).
const PURPOSE: &str = "preview-link";

/// The longest a link may hold.
pub const MAX_LINK: Duration = Duration::from_secs(30 * 24 * 3600);

/// The path on a preview host that takes a link (`?link=...&next=/path`), sets the preview
/// cookie and sends the browser on; never passed to the application.
pub const AUTH_PATH: &str = "/.slipway/auth";

/// A signed link, made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewLink {
    /// The link's text (what `?link=` carries and the preview cookie holds).
    pub token: String,
    /// Until when it holds, unix milliseconds.
    pub expires_at: i64,
    /// The URL that opens the preview with it.
    pub url: String,
}

/// What a link that was checked says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Until when it holds, unix milliseconds.
    pub expires_at: i64,
}

/// Why a link was refused (said to the person holding it; never anything of the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a link at all, a tag that does not hold, or a link of another environment.
    #[error("this is not a link to this preview")]
    Invalid,
    /// It held until its time, which is past.
    #[error("this link has expired")]
    Expired,
    /// Its environment is gone, or was made again since the link was.
    #[error("the environment this link opens no longer exists")]
    Gone,
}

impl Controller {
    /// A link to environment `name`'s preview URL, holding for `valid` (at most
    /// [`MAX_LINK`]).
    ///
    /// # Errors
    /// [`ControllerError::NotFound`] for an environment not recorded;
    /// [`ControllerError::Invalid`] when no preview router runs here (the URL's port is
    /// unknown) or `valid` is zero or past [`MAX_LINK`].
    pub fn preview_link(
        &self,
        name: &EnvName,
        valid: Duration,
    ) -> Result<PreviewLink, ControllerError> {
        if valid.is_zero() || valid > MAX_LINK {
            return Err(ControllerError::Invalid(format!(
                "a link holds for between a second and {}; asked: {}",
                humantime::format_duration(MAX_LINK),
                humantime::format_duration(valid)
            )));
        }
        let record = self
            .engine()
            .store()
            .environment(name)?
            .ok_or_else(|| ControllerError::NotFound(name.to_string()))?;
        let expires_at = self
            .inner
            .now()
            .saturating_add(i64::try_from(valid.as_millis()).unwrap_or(i64::MAX));
        self.link_until(&record, expires_at)
    }

    /// A link to `record`'s preview URL holding until `expires_at` (unix milliseconds).
    pub fn link_until(
        &self,
        record: &EnvironmentRecord,
        expires_at: i64,
    ) -> Result<PreviewLink, ControllerError> {
        self.inner.link_until(record, expires_at)
    }

    /// A link's text for environment `name` of `stack` made at `created_at`, holding until
    /// `expires_at`: what the router's cookie holds too.
    pub fn sign(&self, name: &EnvName, stack: &str, created_at: i64, expires_at: i64) -> String {
        self.inner.sign(name, stack, created_at, expires_at)
    }

    /// Checks `token`, presented on the preview host of environment `name` of `stack`, now.
    /// Reads the environment's record (its `created_at`) only once the tag holds.
    pub fn check_link(&self, token: &str, name: &EnvName, stack: &str) -> Result<Checked, Refused> {
        let parsed = preview_link::parse(token).ok_or(Refused::Invalid)?;
        if &parsed.env != name || parsed.stack != stack {
            return Err(Refused::Invalid);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(parsed.tag)
            .map_err(|_| Refused::Invalid)?;
        let sealer = self.engine().store().sealer();
        if !sealer.verify_mac(PURPOSE, parsed.payload.as_bytes(), &tag) {
            return Err(Refused::Invalid);
        }
        if parsed.expires_at <= self.inner.now() {
            return Err(Refused::Expired);
        }
        match self.engine().store().environment(name) {
            Ok(Some(record)) if record.created_at == parsed.created_at => Ok(Checked {
                expires_at: parsed.expires_at,
            }),
            // Gone, made again since, or not readable just now: no access.
            _ => Err(Refused::Gone),
        }
    }
}

impl Inner {
    /// See [`Controller::link_until`].
    pub(crate) fn link_until(
        &self,
        record: &EnvironmentRecord,
        expires_at: i64,
    ) -> Result<PreviewLink, ControllerError> {
        let port = self.preview_port.get().ok_or_else(|| {
            ControllerError::Invalid(
                "no preview router runs here, so a preview URL has no address yet; make \
                 links through `slipway serve` (`slipway --server URL env link NAME`)"
                    .into(),
            )
        })?;
        let token = self.sign(&record.name, &record.stack, record.created_at, expires_at);
        let url = format!(
            "http://{}.{}.localhost:{port}{AUTH_PATH}?link={token}",
            record.name, record.stack
        );
        Ok(PreviewLink {
            token,
            expires_at,
            url,
        })
    }

    /// See [`Controller::sign`].
    pub(crate) fn sign(
        &self,
        name: &EnvName,
        stack: &str,
        created_at: i64,
        expires_at: i64,
    ) -> String {
        let payload = preview_link::payload(name, stack, created_at, expires_at);
        let tag = self
            .engine
            .store()
            .sealer()
            .mac(PURPOSE, payload.as_bytes());
        format!("{payload}~{}", URL_SAFE_NO_PAD.encode(tag))
    }
}
