//! The web UI: a page at `/` and its script, style sheet and icon under `/ui/`, embedded in
//! the binary (no CDN, no build step: plain HTML, CSS and JavaScript in `ui/`).
//!
//! The page is a client of the same API as the CLI: it logs in by exchanging a token for a
//! session cookie (`session.rs`), reads `/api/v1/...` and follows `/api/v1/events`. Nothing
//! here reads the store. These routes are not part of the API's route table (they answer
//! HTML, not JSON, and need no token: the page asks for one), so the OpenAPI document leaves
//! them out; `docs/ui.md` describes them.
//!
//! # Guarantees
//! Every response carries `Content-Security-Policy: default-src 'self'` (plus no framing, no
//! `<base>`, forms only to this origin): the page runs only the script served here, with no
//! inline script or style, so text from the API that reached the page as HTML could not run.

use axum::Router;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::ApiError;

/// The policy of every UI response.
const CSP: &str = "default-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The embedded files: name under `/ui/`, content type, content.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../ui/favicon.svg"),
    ),
];

const INDEX: &str = include_str!("../ui/index.html");

/// The UI's routes, to be merged into the API's router.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{asset}", get(asset))
}

fn with_headers(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    // Small files, embedded: a browser asks again each time rather than running an old
    // script against a newer server.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index() -> Response {
    with_headers("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => with_headers(content_type, *body),
        None => ApiError::client(StatusCode::NOT_FOUND, "no such file of the web UI")
            .hint("the UI is at /")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_and_no_inline_code() {
        for (file, _, _) in ASSETS {
            if *file != "favicon.svg" {
                assert!(
                    INDEX.contains(&format!("/ui/{file}")),
                    "the page loads /ui/{file}"
                );
            }
        }
        for forbidden in [
            "<style",
            " style=",
            "onclick=",
            "onload=",
            "javascript:",
            "http://",
            "https://",
        ] {
            assert!(
                !INDEX.contains(forbidden),
                "the page has no `{forbidden}`: the CSP would block inline code, and nothing comes from elsewhere"
            );
        }
        let script = std::str::from_utf8(ASSETS[0].2).expect("app.js is UTF-8");
        for forbidden in [
            "innerHTML",
            "eval(",
            "new Function",
            "document.write",
            "setAttribute(\"style\"",
        ] {
            assert!(
                !script.contains(forbidden),
                "app.js builds the page with DOM calls and text, never `{forbidden}`"
            );
        }
    }
}
