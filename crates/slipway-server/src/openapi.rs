//! The OpenAPI 3.1 document, built from the route table and the types of the handlers.
//! Nothing here is written by hand per endpoint: a route added to the table appears in the
//! document with its role, parameters, body and responses, and every schema is derived
//! (`schemars`) from the serde type the handler reads or answers, so the document describes
//! what the server really takes and sends.

use axum::http::StatusCode;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema, json_schema};
use serde_json::{Map, Value, json};

use crate::routes::{Access, Reply, Route};

/// The schema of a type, added to the document's components when it is named.
pub(crate) type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// `T`'s schema: a reference into the components for a named type.
pub(crate) fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// `T`'s own schema (its properties), for a query whose fields are parameters.
pub(crate) fn inline_schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

/// A schema for a string that is one of `values`.
pub(crate) fn one_of(values: &[&str]) -> Schema {
    json_schema!({"type": "string", "enum": values})
}

/// The generator of the schemas of what clients send (serde's deserialising side: a field
/// with a default is optional) or, `for_responses`, of what the server sends (a field left
/// out when empty is optional; every other is always there).
fn generator(for_responses: bool) -> SchemaGenerator {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    if for_responses {
        settings.for_serialize().into_generator()
    } else {
        settings.for_deserialize().into_generator()
    }
}

/// The schemas of requests and of responses, gathered while the operations are built.
struct Schemas {
    requests: SchemaGenerator,
    responses: SchemaGenerator,
}

impl Schemas {
    /// The components: every named schema of both sides. A name both sides use must mean one
    /// schema (a type read and sent alike).
    fn components(mut self) -> Map<String, Value> {
        let mut all = self.requests.take_definitions(true);
        for (name, schema) in self.responses.take_definitions(true) {
            if let Some(other) = all.get(&name) {
                assert_eq!(
                    other, &schema,
                    "the schema `{name}` is the same read as sent"
                );
            }
            all.insert(name, schema);
        }
        for schema in all.values_mut() {
            close_objects(schema);
        }
        all
    }

    /// The schema of a reference the requests' generator made, resolved.
    fn request_definition(&self, reference: &Schema) -> Option<&Value> {
        let name = reference
            .get("$ref")?
            .as_str()?
            .strip_prefix("#/components/schemas/")?;
        self.requests.definitions().get(name)
    }
}

/// Marks every object schema that lists its properties as having no others (what the server
/// sends has exactly its type's fields; what it reads refuses unknown ones), unless it says
/// otherwise.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && !map.contains_key("unevaluatedProperties")
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// The document for `routes`.
pub(crate) fn document(routes: &[Route]) -> Value {
    let mut schemas = Schemas {
        requests: generator(false),
        responses: generator(true),
    };
    let mut paths = Map::new();
    for route in routes {
        let op = operation(route, &mut schemas);
        let item = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = op;
    }
    let schemas = schemas.components();
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Slipway API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Environments, deployments and events of a Slipway controller. Send `Authorization: Bearer <token>` (`slipway token create --role ROLE`); the web UI instead exchanges a token for a session cookie (`POST /api/v1/session`), and then sends the session's CSRF token in `X-Slipway-CSRF` with every POST and DELETE. Roles, weakest first: viewer (every GET), developer (also changes ad-hoc and generated environments, creates ad-hoc ones, refreshes), deployer (changes every environment), admin (also reads the audit log). Each operation's `x-slipway-role` is the least role it needs. Errors are `{\"error\", \"hint\"?, \"id\"?}`."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "A token made by `slipway token create`."},
                "session": {"type": "apiKey", "in": "cookie", "name": "slipway_session", "description": "A browser session started by `POST /api/v1/session`; POST and DELETE calls made with it also send its CSRF token in `X-Slipway-CSRF`."}
            },
            "schemas": schemas
        },
        "security": [{"bearer": []}, {"session": []}]
    })
}

fn role_of(access: Access) -> &'static str {
    match access {
        Access::Public => "none",
        Access::Viewer => "viewer",
        Access::Developer => "developer",
        Access::Environment => {
            "developer for ad-hoc and generated environments, deployer otherwise"
        }
        Access::Admin => "admin",
    }
}

fn error_response(error: &Schema, description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": error}}
    })
}

/// A parameter's schema with its description taken out (it goes on the parameter).
fn parameter(name: &str, place: &str, required: bool, mut schema: Value) -> Value {
    let description = schema
        .as_object_mut()
        .and_then(|s| s.remove("description"))
        .unwrap_or_else(|| json!(""));
    json!({
        "name": name, "in": place, "required": required,
        "description": description, "schema": schema
    })
}

fn operation(route: &Route, schemas: &mut Schemas) -> Value {
    let mut parameters = Vec::new();
    for name in route.path_params() {
        let schema = crate::body::path_param(name)(&mut schemas.requests);
        parameters.push(parameter(name, "path", true, schema.to_value()));
    }
    if let Some(query) = route.query {
        let query = query(&mut schemas.requests).to_value();
        let required: Vec<&str> = query["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (name, schema) in query["properties"].as_object().into_iter().flatten() {
            let required = required.contains(&name.as_str());
            parameters.push(parameter(name, "query", required, schema.clone()));
        }
    }
    let error = schemas.responses.subschema_for::<crate::error::ErrorBody>();
    let mut responses = Map::new();
    let (status, success) = match &route.reply {
        Reply::Json {
            status,
            schema,
            description,
        } => (
            *status,
            json!({
                "description": description,
                "content": {"application/json": {"schema": schema(&mut schemas.responses)}}
            }),
        ),
        Reply::Text {
            content_type,
            description,
        } => (
            StatusCode::OK,
            json!({
                "description": description,
                "content": {*content_type: {"schema": {"type": "string"}}}
            }),
        ),
        Reply::EventStream {
            schema,
            description,
        } => {
            let data = schema(&mut schemas.responses);
            let named = data
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.rsplit('/').next())
                .unwrap_or("JSON value")
                .to_string();
            (
                StatusCode::OK,
                json!({
                    "description": format!("{description} Each event's `data:` is an `{named}` in JSON."),
                    "content": {"text/event-stream": {
                        "schema": {"type": "string"},
                        "x-slipway-event-data": data
                    }}
                }),
            )
        }
    };
    let mut success = success;
    if !route.links.is_empty() {
        let links: Map<String, Value> = route
            .links
            .iter()
            .map(|(operation, parameter, expression)| {
                (
                    operation.to_string(),
                    json!({"operationId": operation, "parameters": {*parameter: expression}}),
                )
            })
            .collect();
        success["links"] = Value::Object(links);
    }
    responses.insert(status.as_u16().to_string(), success);
    let takes_input =
        route.request.is_some() || route.query.is_some() || !route.path_params().is_empty();
    if takes_input || route.is_mutating() {
        responses.insert(
            "400".into(),
            error_response(
                &error,
                "The request is malformed: the error names the field or parameter.",
            ),
        );
    }
    if route.access != Access::Public {
        responses.insert(
            "401".into(),
            error_response(&error, "No token, or an unknown or revoked one."),
        );
        responses.insert(
            "403".into(),
            error_response(&error, "The token's role is too weak for this call."),
        );
    }
    if !route.path_params().is_empty() {
        responses.insert(
            "404".into(),
            error_response(&error, "No such environment or deployment."),
        );
    }
    if route.is_mutating() {
        responses.insert(
            "413".into(),
            error_response(&error, "The request body is over the limit (1 MiB)."),
        );
    }
    for (status, description) in route.errors {
        responses.insert(
            status.as_u16().to_string(),
            error_response(&error, description),
        );
    }
    responses.insert(
        "500".into(),
        error_response(
            &error,
            "The server failed; the `id` names the details in its log.",
        ),
    );
    let mut op = json!({
        "operationId": route.operation_id,
        "summary": route.summary,
        "description": route.description,
        "x-slipway-role": role_of(route.access),
        "x-slipway-audit-action": route.action,
        "responses": responses,
    });
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    if let Some(request) = route.request {
        let schema = request(&mut schemas.requests);
        // A body with a field it must have is required; one whose fields are all optional
        // may be left out (an empty body reads as `{}`).
        let required = schemas
            .request_definition(&schema)
            .and_then(|d| d["required"].as_array())
            .is_some_and(|r| !r.is_empty());
        let description = if required {
            "A JSON object."
        } else {
            "A JSON object; an empty body reads as `{}`."
        };
        op["requestBody"] = json!({
            "required": required,
            "description": description,
            "content": {"application/json": {"schema": schema}}
        });
    }
    if route.access == Access::Public {
        op["security"] = json!([]);
    }
    op
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    if key == "$ref"
                        && let Some(r) = v.as_str()
                    {
                        out.push(r.to_string());
                    }
                    refs(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_schema_reference_of_the_document_resolves() {
        let doc = document(&crate::routes::table());
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty(), "the document refers to its schemas");
        for r in found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("references point into components/schemas: {r}"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "the schema `{name}` a route refers to is defined"
            );
        }
    }

    #[test]
    fn every_operation_has_a_unique_id_and_an_audit_action() {
        let routes = crate::routes::table();
        let mut ids: Vec<&str> = routes.iter().map(|r| r.operation_id).collect();
        assert!(
            routes.iter().all(|r| !r.operation_id.is_empty()
                && !r.action.is_empty()
                && !r.summary.is_empty()),
            "every route is named, audited under an action, and summarised"
        );
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, ids.len(), "operation ids are unique");
    }

    #[test]
    fn every_schema_is_a_valid_json_schema() {
        let doc = document(&crate::routes::table());
        for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
            let root = json!({"components": doc["components"], "allOf": [schema]});
            assert!(
                jsonschema::validator_for(&root).is_ok(),
                "the schema `{name}` compiles"
            );
        }
    }
}
