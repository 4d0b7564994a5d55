//! Extractors that turn every malformed request into an [`ApiError`] (JSON, naming the problem)
//! rather than axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use schemars::generate::SchemaGenerator;
use schemars::{JsonSchema, Schema};
use serde::de::DeserializeOwned;
use slipway_core::EnvName;

use crate::AppState;
use crate::error::ApiError;
use crate::openapi::{SchemaFn, schema_of};

/// A JSON request body. An empty body reads as `{}`, so that calls whose fields are all
/// optional need none. Unknown fields are refused by the request types themselves
/// (`deny_unknown_fields`), so a misspelt field is an error rather than silently ignored.
pub(crate) struct JsonBody<T>(pub T);

pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is over the limit of {limit} bytes"),
    )
    .hint("request bodies of this API are small JSON objects")
}

/// The whole body of `req`, at most [`crate::ServerOptions::body_limit`] bytes (`413`
/// beyond, a declared length refused before anything is read).
pub(crate) async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let limit = state.options.body_limit;
    // Refuse a declared length at once: the body is never read.
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    // The router's `DefaultBodyLimit` bounds what this reads (a chunked body has no length).
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            ApiError::bad_request(format!(
                "the request body could not be read: {}",
                rejection.body_text()
            ))
        }
    })
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let parsed = match serde_path_to_error::deserialize(&mut deserializer) {
            Ok(value) => deserializer
                .end()
                .map(|()| value)
                .map_err(|e| format!("invalid JSON body: {e}")),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                Err(if path == "." || path.is_empty() {
                    format!("invalid JSON body: {inner}")
                } else {
                    format!("invalid JSON body at `{path}`: {inner}")
                })
            }
        };
        let value = parsed.map_err(|message| {
            ApiError::bad_request(message)
                .hint("send a JSON object; /api/v1/openapi.json lists the fields of each request")
        })?;
        Ok(JsonBody(value))
    }
}

/// The body of calls that take none: empty or `{}`; anything else is refused.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoFields {}

/// Query parameters; a malformed one is a `400` naming it.
pub(crate) struct QueryArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| QueryArgs(value))
            .map_err(|rejection| {
                ApiError::bad_request(format!("invalid query: {}", rejection.body_text()))
                    .hint("/api/v1/openapi.json lists the query parameters of each request")
            })
    }
}

/// The `{name}` of a path, parsed as an environment name before any lookup.
pub(crate) struct EnvPath(pub EnvName);

impl<S: Send + Sync> FromRequestParts<S> for EnvPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::bad_request(format!(
                    "the environment name in the path cannot be read: {}",
                    rejection.body_text()
                ))
                .hint(NAME_HINT)
            })?;
        parse_name(&name).map(EnvPath)
    }
}

/// The `{name}` and `{resource}` of a path: an environment's name, and a resource's name as
/// slipway.yaml gives them (`[A-Za-z0-9_-]{1,63}`); anything else is a `400` saying so.
pub(crate) struct EnvResourcePath(pub EnvName, pub String);

impl<S: Send + Sync> FromRequestParts<S> for EnvResourcePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((name, resource)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::bad_request(format!(
                    "the path cannot be read: {}",
                    rejection.body_text()
                ))
            })?;
        let valid = (1..=63).contains(&resource.len())
            && resource
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(ApiError::bad_request(format!(
                "`{}` is not a resource name",
                printable(&resource)
            ))
            .hint("1 to 63 of A-Z, a-z, 0-9, `_` and `-`, as slipway.yaml names it"));
        }
        Ok(EnvResourcePath(parse_name(&name)?, resource))
    }
}

/// The `{id}` of a path, a deployment id.
pub(crate) struct DeploymentId(pub i64);

impl JsonSchema for DeploymentId {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DeploymentId".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = i64::json_schema(generator);
        schema.insert("description".into(), "The deployment's id.".into());
        schema
    }
}

/// The `{forge}` of a webhook's path.
struct ForgeName;

impl JsonSchema for ForgeName {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ForgeName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let forges: Vec<&str> = slipway_forge::ForgeKind::ALL
            .iter()
            .map(|f| f.as_str())
            .collect();
        let mut schema = crate::openapi::one_of(&forges);
        schema.insert(
            "description".into(),
            "The forge the controller is configured with.".into(),
        );
        schema
    }
}

/// The type of the path parameter `name`: what the extractor of that parameter reads.
///
/// # Panics
/// For a parameter no extractor reads (a route table that names one is a programming error,
/// which the document's tests find).
pub(crate) fn path_param(name: &str) -> SchemaFn {
    match name {
        "name" => |g| {
            let mut schema = schema_of::<EnvName>(g);
            schema.insert("description".into(), "The environment's name.".into());
            schema
        },
        "resource" => |_| {
            let schema = serde_json::json!({
                "type": "string",
                "pattern": "^[A-Za-z0-9_-]{1,63}$",
                "description": "A resource's name, as slipway.yaml gives it."
            });
            schemars::Schema::try_from(schema).expect("a schema object")
        },
        "id" => schema_of::<DeploymentId>,
        "forge" => schema_of::<ForgeName>,
        other => panic!("no extractor reads the path parameter `{other}`"),
    }
}

/// An integer field: what JSON Schema calls one, so `12.0` too (serde's `i64` refuses it),
/// but not `1.5` nor one outside `i64`.
pub(crate) fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    use serde::Deserialize;
    use serde::de::Error;
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = number.as_i64() {
        return Ok(n);
    }
    match number.as_f64() {
        // i64::MIN is -2^63 exactly; 2^63 is one past i64::MAX.
        Some(f)
            if f.fract() == 0.0
                && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) =>
        {
            Ok(f as i64)
        }
        _ => Err(D::Error::custom(format!(
            "{number} is not an integer of 64 bits"
        ))),
    }
}

/// A resume cursor of a query (`after`): an id, 0 or more.
pub(crate) fn cursor(field: &str, value: Option<i64>) -> Result<Option<i64>, ApiError> {
    match value {
        Some(n) if n < 0 => Err(ApiError::bad_request(format!(
            "`{field}` {n} is not an id: ids are 0 or more"
        ))
        .hint("send the id of the last entry received, or 0 for all")),
        other => Ok(other),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for DeploymentId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::bad_request(format!(
                    "the deployment id in the path cannot be read: {}",
                    rejection.body_text()
                ))
            })?;
        raw.parse::<i64>().map(DeploymentId).map_err(|_| {
            ApiError::bad_request(format!(
                "`{}` is not a deployment id",
                printable(&raw)
            ))
            .hint("deployment ids are integers; GET /api/v1/environments/{name}/deployments lists them")
        })
    }
}

const NAME_HINT: &str = slipway_core::env_name::ENV_NAME_RULE;

/// Parses an environment name from a request; anything else is a `400` naming it.
pub(crate) fn parse_name(name: &str) -> Result<EnvName, ApiError> {
    EnvName::parse(name).map_err(|_| {
        ApiError::bad_request(format!(
            "`{}` is not a valid environment name",
            printable(name)
        ))
        .hint(NAME_HINT)
    })
}

/// Untrusted text made safe to echo in a message: control characters escaped, and cut at 80
/// characters.
pub(crate) fn printable(text: &str) -> String {
    let mut out: String = text.chars().take(80).flat_map(char::escape_debug).collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    out
}
