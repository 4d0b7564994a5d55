//! The route table: one entry per endpoint, from which both the router and the OpenAPI
//! document are built (see [`build`] and `openapi::document`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use schemars::JsonSchema;
use slipway_controller::Controller;

use crate::auth::{self, Guard, Guarded};
use crate::error::ApiError;
use crate::openapi::{SchemaFn, inline_schema, schema_of};
use crate::{AppState, ServerOptions, StopSignal};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone, without a token.
    Public,
    /// Any token (`viewer` and up).
    Viewer,
    /// `developer` and up.
    Developer,
    /// For the environment `{name}` of the path: `developer` and up when it is ad-hoc or
    /// generated, `deployer` and up otherwise.
    Environment,
    /// `admin` only.
    Admin,
}

/// What a route answers on success.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// JSON of a type, whose schema is derived from it.
    Json {
        status: StatusCode,
        schema: SchemaFn,
        description: &'static str,
    },
    /// Text of a content type, e.g. the Prometheus exposition.
    Text {
        content_type: &'static str,
        description: &'static str,
    },
    /// A stream of server-sent events whose `data` are JSON of a type.
    EventStream {
        schema: SchemaFn,
        description: &'static str,
    },
}

/// One endpoint: how it is called, who may call it, what it takes and answers, and its handler.
/// What it takes and answers are the handler's own types ([`Route::query`], [`Route::body`],
/// [`Route::json`]): the document derives their schemas from them.
pub(crate) struct Route {
    pub method: Method,
    pub path: &'static str,
    /// The OpenAPI `operationId`.
    pub operation_id: &'static str,
    /// What the audit log calls it, e.g. `environment.destroy`.
    pub action: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
    pub access: Access,
    /// The query's type: each of its fields is a query parameter.
    pub query: Option<SchemaFn>,
    /// The request body's type, when it takes one.
    pub request: Option<SchemaFn>,
    pub reply: Reply,
    /// Client errors it may answer besides the ones every route of its kind may (400, 401,
    /// 403, 404, 413 and 500 are derived from the rest of the entry).
    pub errors: &'static [(StatusCode, &'static str)],
    /// OpenAPI links from its success answer to other operations: `(operationId, path
    /// parameter, runtime expression)`, e.g. a created environment's name to its `get`.
    pub links: &'static [(&'static str, &'static str, &'static str)],
    /// A change to the environment of its path: with several replicas, sent on to the one that
    /// works on it when this one does not (`forward.rs`).
    pub forwarded: bool,
    handler: MethodRouter<AppState>,
}

impl Route {
    fn new<H, T>(method: Method, path: &'static str, handler: H) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .expect("routes use GET, POST or DELETE, which are method filters");
        Route {
            method,
            path,
            operation_id: "",
            action: "",
            summary: "",
            description: "",
            access: Access::Viewer,
            query: None,
            request: None,
            reply: Reply::Text {
                content_type: "",
                description: "",
            },
            errors: &[],
            links: &[],
            forwarded: false,
            handler: on(filter, handler),
        }
    }

    pub fn get<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route::new(Method::GET, path, handler)
    }

    pub fn post<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route::new(Method::POST, path, handler)
    }

    pub fn delete<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route::new(Method::DELETE, path, handler)
    }

    /// Its `operationId` and audit action.
    pub fn id(mut self, operation_id: &'static str, action: &'static str) -> Route {
        self.operation_id = operation_id;
        self.action = action;
        self
    }

    pub fn summary(mut self, summary: &'static str, description: &'static str) -> Route {
        self.summary = summary;
        self.description = description;
        self
    }

    pub fn access(mut self, access: Access) -> Route {
        self.access = access;
        self
    }

    /// The type its handler reads the query into (with [`crate::body::QueryArgs`]).
    pub fn query<Q: JsonSchema>(mut self) -> Route {
        self.query = Some(inline_schema::<Q>);
        self
    }

    /// The type its handler reads the body into (with [`crate::body::JsonBody`]).
    pub fn body<B: JsonSchema>(mut self) -> Route {
        self.request = Some(schema_of::<B>);
        self
    }

    /// It answers `status` with a JSON `R`.
    pub fn json<R: JsonSchema>(mut self, status: StatusCode, description: &'static str) -> Route {
        self.reply = Reply::Json {
            status,
            schema: schema_of::<R>,
            description,
        };
        self
    }

    pub fn reply(mut self, reply: Reply) -> Route {
        self.reply = reply;
        self
    }

    pub fn errors(mut self, errors: &'static [(StatusCode, &'static str)]) -> Route {
        self.errors = errors;
        self
    }

    pub fn links(mut self, links: &'static [(&'static str, &'static str, &'static str)]) -> Route {
        self.links = links;
        self
    }

    /// It changes the environment of its path, and so is forwarded to the replica that works
    /// on it when another gets it (see [`Route::forwarded`]).
    pub fn forwarded(mut self) -> Route {
        self.forwarded = true;
        self
    }

    /// Whether it changes something (and so is always audited).
    pub fn is_mutating(&self) -> bool {
        self.method != Method::GET
    }

    /// The names of its path parameters, in order.
    pub fn path_params(&self) -> Vec<&'static str> {
        self.path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .collect()
    }
}

/// Every route of the API.
pub(crate) fn table() -> Vec<Route> {
    let mut routes = crate::ops::routes();
    routes.extend(crate::environments::routes());
    routes.extend(crate::deployments::routes());
    routes.extend(crate::events::routes());
    routes.extend(crate::logs::routes());
    routes.extend(crate::webhooks::routes());
    routes.extend(crate::session::routes());
    routes.extend(crate::pulls::routes());
    routes
}

/// The router over [`table`], with the OpenAPI document built from the same table.
pub(crate) fn build(controller: Controller, options: ServerOptions, stop: StopSignal) -> Router {
    let routes = table();
    let openapi = Arc::new(crate::openapi::document(&routes));
    let body_limit = options.body_limit;
    let options_max_connections = options.max_connections;
    let state = AppState {
        controller,
        options: Arc::new(options),
        stop,
        openapi,
        forwarder: crate::forward::Forwarder::new(),
        // A sixteenth of the connections per token (64 of 1,024), 8 at least for a browser's
        // few tabs, half of them at most: one token's streams never fill them.
        streams: crate::streams::Streams::new(
            (options_max_connections / 16)
                .max(8)
                .min((options_max_connections / 2).max(1)),
        ),
    };
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for route in routes {
        let guard = Guard {
            app: state.clone(),
            route: Arc::new(Guarded {
                action: route.action,
                summary: route.summary,
                access: route.access,
                audited: route.is_mutating(),
            }),
        };
        // `route_layer`: the guard runs for this method only, not for the 405 of others.
        // Forwarding runs inside the guard: a request is authenticated and allowed here
        // before it goes anywhere else.
        let mut method_router = route.handler;
        if route.forwarded {
            method_router =
                method_router.route_layer(from_fn_with_state(state.clone(), crate::forward::layer));
        }
        let method_router = method_router.route_layer(from_fn_with_state(guard, auth::guard));
        match by_path.iter_mut().find(|(path, _)| *path == route.path) {
            Some((_, existing)) => {
                let merged = std::mem::take(existing).merge(method_router);
                *existing = merged;
            }
            None => by_path.push((route.path, method_router)),
        }
    }
    // The web UI's page and files: outside the table, as they are not the API (see `ui.rs`).
    let mut router = crate::ui::router();
    for (path, method_router) in by_path {
        router = router.route(path, method_router);
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(from_fn(catch_panic))
        .with_state(state)
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route").hint("/api/v1/openapi.json lists the routes")
}

async fn no_method() -> ApiError {
    ApiError::client(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method",
    )
    .hint("/api/v1/openapi.json lists the methods of each route")
}

/// Turns a panicking handler into a `500` with an id, instead of a dropped connection.
async fn catch_panic(request: Request, next: Next) -> Response {
    match CatchUnwind(Box::pin(next.run(request))).await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            ApiError::internal(format!("a handler panicked: {what}")).into_response()
        }
    }
}

type BoxedResponse = Pin<Box<dyn Future<Output = Response> + Send>>;

/// A future that reports a panic while polled instead of unwinding through the server.
struct CatchUnwind(BoxedResponse);

impl Future for CatchUnwind {
    type Output = std::thread::Result<Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.get_mut().0;
        // Unwind safety: after a panic the inner future is never polled again (it is dropped
        // with this one), so no broken invariant of it can be observed.
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(response)) => Poll::Ready(Ok(response)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
