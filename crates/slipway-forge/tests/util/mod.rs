//! Test helpers: the fetched GitHub artefacts, a recording HTTP server on 127.0.0.1, and a
//! checker of requests against GitHub's OpenAPI description.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses a different part of this module"
)]

use std::sync::{Arc, Mutex};

use serde_json::Value;
pub use slipway_testkit::fixtures::{fixtures_dir, read_json};
use slipway_testkit::forge::parse_query;
use slipway_testkit::http;

/// A fixture under `tests/fixtures/`.
pub fn fixture(rel: &str) -> Value {
    slipway_testkit::fixtures::forge_fixture(rel)
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path as sent (still percent-encoded), without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {} body is not JSON ({e}): {}",
                self.method, self.path, self.body
            )
        })
    }

    /// `METHOD /path?query`, for assertion messages.
    pub fn line(&self) -> String {
        let q: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if q.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {}?{}", self.method, self.path, q.join("&"))
        }
    }
}

/// What the server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// The test kit's HTTP server on 127.0.0.1, recording every request (before the client can
/// see the answer, so that a test that looks right after a call sees every request of that
/// call) and answering with `respond`.
pub struct Server {
    http: http::Server,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Server {
    pub fn start(respond: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Server {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let log = Arc::clone(&requests);
        let http = http::Server::start("forge-test", move |_| {
            move |req: http::Request| {
                let recorded = Recorded {
                    method: req.method,
                    path: req.path,
                    query: parse_query(&req.query),
                    headers: req.headers,
                    body: String::from_utf8_lossy(&req.body).into_owned(),
                };
                let reply = respond(&recorded);
                log.lock().expect("not poisoned").push(recorded);
                http::Reply {
                    status: reply.status,
                    body: serde_json::from_str(&reply.body).ok(),
                    headers: reply.headers,
                }
            }
        });
        Server { http, requests }
    }

    pub fn url(&self) -> String {
        self.http.url()
    }

    /// The requests received so far, and forgets them.
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.requests.lock().expect("not poisoned"))
    }
}

pub use slipway_testkit::openapi::OpenApi;
use slipway_testkit::openapi::has_type;

/// The checks of requests against GitHub's description, and its example answers.
pub trait RequestCheck {
    /// Checks a request against the operation it matches: the path and method exist, every
    /// query parameter is one the operation declares, and the JSON body has the operation's
    /// required fields, only fields it knows, of the right types and enum values. Returns the
    /// operation id.
    fn check(&self, req: &Recorded) -> Result<String, String>;

    /// The operation's documented example answer: its first 2xx status and the value of its
    /// first JSON example.
    fn example_reply(&self, method: &str, path: &str) -> Option<Reply>;
}

impl RequestCheck for OpenApi {
    /// Checks a request against the operation it matches: the path and method exist, every
    /// query parameter is one the operation declares, and the JSON body has the operation's
    /// required fields, only fields it knows, of the right types and enum values. Returns the
    /// operation id.
    fn check(&self, req: &Recorded) -> Result<String, String> {
        let op = self.operation(&req.method, &req.path)?;
        let params: Vec<&Value> = op
            .op
            .get("parameters")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().map(|p| self.resolve(p)).collect())
            .unwrap_or_default();
        for (k, _) in &req.query {
            let declared = params
                .iter()
                .any(|p| p["in"] == "query" && p["name"].as_str() == Some(k));
            if !declared {
                return Err(format!(
                    "{}: {} takes no query parameter {k}",
                    req.line(),
                    op.id
                ));
            }
        }
        match op.op.get("requestBody") {
            None => {
                if !req.body.is_empty() {
                    return Err(format!("{}: {} takes no body", req.line(), op.id));
                }
            }
            Some(rb) => {
                let rb = self.resolve(rb);
                let schema = self.resolve(&rb["content"]["application/json"]["schema"]);
                let body = req.json();
                let obj = body
                    .as_object()
                    .ok_or_else(|| format!("{}: body is not an object", req.line()))?;
                for required in schema["required"].as_array().into_iter().flatten() {
                    let name = required.as_str().expect("required names are strings");
                    if !obj.contains_key(name) {
                        return Err(format!(
                            "{}: {} requires body field {name}",
                            req.line(),
                            op.id
                        ));
                    }
                }
                let props = schema["properties"].as_object();
                for (k, v) in obj {
                    let prop = props
                        .and_then(|p| p.get(k))
                        .map(|p| self.resolve(p))
                        .ok_or_else(|| {
                            format!("{}: {} has no body field {k}", req.line(), op.id)
                        })?;
                    check_value(prop, v)
                        .map_err(|e| format!("{}: body field {k}: {e}", req.line()))?;
                }
            }
        }
        Ok(op.id)
    }

    /// The operation's documented example answer: its first 2xx status and the value of its
    /// first JSON example.
    fn example_reply(&self, method: &str, path: &str) -> Option<Reply> {
        let op = self.operation(method, path).ok()?;
        let responses = op.op["responses"].as_object()?;
        let (status, response) = responses.iter().find(|(s, _)| s.starts_with('2'))?;
        let response = self.resolve(response);
        let examples = response["content"]["application/json"]["examples"].as_object()?;
        let (_, example) = examples.iter().next()?;
        let value = self.resolve(example)["value"].clone();
        Some(Reply::json(status.parse().ok()?, &value))
    }
}

/// Checks a value against a property's schema: null, type, enum.
fn check_value(schema: &Value, v: &Value) -> Result<(), String> {
    if v.is_null() {
        return if schema["nullable"] == true {
            Ok(())
        } else {
            Err("null where the schema does not allow it".into())
        };
    }
    if !has_type(schema, v) {
        return Err(format!("{v} is not of type {}", schema["type"]));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        return Err(format!(
            "{v} is not one of {}",
            Value::Array(allowed.clone())
        ));
    }
    Ok(())
}
