//! The OpenAPI 3.1 document, built from the route table and the schemas written beside the
//! handlers. Nothing here is written by hand per endpoint: a route added to the table appears
//! in the document with its role, parameters, body and responses.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::routes::{Access, Reply, Route};

/// Every schema the routes refer to, by name.
pub(crate) fn schemas() -> Vec<(&'static str, Value)> {
    let mut all = vec![("Error", crate::error::schema())];
    all.extend(crate::environments::schemas());
    all.extend(crate::deployments::schemas());
    all.extend(crate::events::schemas());
    all.extend(crate::ops::schemas());
    all.extend(crate::webhooks::schemas());
    all.extend(crate::session::schemas());
    all.extend(crate::pulls::schemas());
    all
}

/// The document for `routes`.
pub(crate) fn document(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        let item = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = operation(route);
    }
    let schemas: Map<String, Value> = schemas()
        .into_iter()
        .map(|(name, schema)| (name.to_string(), schema))
        .collect();
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

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn operation(route: &Route) -> Value {
    let mut parameters = Vec::new();
    for name in route.path_params() {
        let (schema, description) = match name {
            "name" => (
                json!({"$ref": "#/components/schemas/EnvironmentName"}),
                "The environment's name.",
            ),
            "id" => (json!({"type": "integer"}), "The deployment's id."),
            _ => (json!({"type": "string"}), ""),
        };
        parameters.push(json!({
            "name": name, "in": "path", "required": true,
            "description": description, "schema": schema
        }));
    }
    for param in &route.query {
        parameters.push(json!({
            "name": param.name, "in": "query", "required": false,
            "description": param.description, "schema": param.schema
        }));
    }
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
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
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
        } => (
            StatusCode::OK,
            json!({
                "description": format!("{description} Each event's `data:` is an `{schema}` in JSON."),
                "content": {"text/event-stream": {
                    "schema": {"type": "string"},
                    "x-slipway-event-data": {"$ref": format!("#/components/schemas/{schema}")}
                }}
            }),
        ),
    };
    responses.insert(status.as_u16().to_string(), success);
    let takes_input =
        route.request.is_some() || !route.query.is_empty() || !route.path_params().is_empty();
    if takes_input || route.is_mutating() {
        responses.insert(
            "400".into(),
            error_response("The request is malformed: the error names the field or parameter."),
        );
    }
    if route.access != Access::Public {
        responses.insert(
            "401".into(),
            error_response("No token, or an unknown or revoked one."),
        );
        responses.insert(
            "403".into(),
            error_response("The token's role is too weak for this call."),
        );
    }
    if !route.path_params().is_empty() {
        responses.insert(
            "404".into(),
            error_response("No such environment or deployment."),
        );
    }
    if route.is_mutating() {
        responses.insert(
            "413".into(),
            error_response("The request body is over the limit (1 MiB)."),
        );
    }
    for (status, description) in route.errors {
        responses.insert(status.as_u16().to_string(), error_response(description));
    }
    responses.insert(
        "500".into(),
        error_response("The server failed; the `id` names the details in its log."),
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
    if let Some(schema) = route.request {
        op["requestBody"] = json!({
            "required": false,
            "description": "A JSON object; an empty body reads as `{}`.",
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
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
