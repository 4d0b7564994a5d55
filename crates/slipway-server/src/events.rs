//! `/api/v1/events`: the store's event log as server-sent events.
//!
//! The stream replays what came after the client's cursor (`Last-Event-ID`, which browsers
//! send on reconnect, else `?after=`), then polls the store's `events` table and sends what
//! is new. Each SSE `id:` is the event's id, so a reconnecting client loses nothing and sees
//! nothing twice. Polling the table, rather than a channel fed by the controller, also shows
//! events written by other processes on the same home (a CLI `apply`).

use slipway_core::EnvName;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use slipway_controller::Controller;
use slipway_core::vocab::EventKind;
use slipway_state::{EventQuery, EventRecord};

use crate::auth::Principal;
use crate::body::{QueryArgs, cursor, parse_name, printable};
use crate::error::ApiError;
use crate::openapi::schema_of;
use crate::routes::{Reply, Route};
use crate::{AppState, StopSignal, rfc3339};

/// Most events read from the store per poll.
const BATCH: usize = 500;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/v1/events", stream)
            .id("streamEvents", "event.stream")
            .summary(
                "Stream events",
                "Server-sent events, one per event of the log; each `id:` is the event's id and each `data:` an `Event` in JSON. Replays the events after `Last-Event-ID` (or `?after=`), else starts with the next new event; then streams new ones as they are recorded.",
            )
            .query::<EventsQuery>()
            .reply(Reply::EventStream {
                schema: schema_of::<EventView>,
                description: "An endless stream of events; comments (`:`) keep it alive.",
            })
            .errors(&[(StatusCode::TOO_MANY_REQUESTS, crate::streams::TOO_MANY)]),
    ]
}

#[derive(Debug, Deserialize, JsonSchema)]
struct EventsQuery {
    /// Only the events of this environment.
    #[serde(default)]
    #[schemars(with = "EnvName")]
    environment: Option<String>,
    /// Replay the events with a greater id (the `Last-Event-ID` header wins over it).
    #[schemars(range(min = 0))]
    after: Option<i64>,
}

/// An event as the stream sends it.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Event")]
struct EventView<'a> {
    /// Increasing, never reused: the resume cursor.
    id: i64,
    /// The environment it concerns; null for engine-wide events.
    environment: Option<&'a str>,
    /// What happened, e.g. `apply.started`, `drift.detected`, `environment.created`.
    kind: EventKind,
    /// A sentence for people.
    message: &'a str,
    /// Details for programs.
    data: &'a Value,
    #[schemars(extend("format" = "date-time"))]
    at: String,
}

async fn stream(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    headers: HeaderMap,
    QueryArgs(query): QueryArgs<EventsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let environment = query.environment.as_deref().map(parse_name).transpose()?;
    let slot = app.streams.take(&caller.token_hash)?;
    let from_query = cursor("after", query.after)?;
    let resume = match headers.get("last-event-id") {
        Some(value) => {
            let text = value.to_str().unwrap_or("");
            Some(text.trim().parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "`Last-Event-ID` `{}` is not an event id",
                    printable(text)
                ))
                .hint("send back the `id:` of the last event received")
            })?)
        }
        None => from_query,
    };
    // Without a cursor the stream starts at the end of the log: fixed before the response
    // starts, so whatever is recorded once the client sees the headers is delivered.
    let after = match resume {
        Some(id) => id.max(0),
        None => app.blocking(latest_event_id).await?,
    };
    let tail = Tail {
        controller: app.controller.clone(),
        environment,
        after,
        pending: VecDeque::new(),
        stop: app.stop.clone(),
        poll: app.options.event_poll_interval,
    };
    // The slot is the stream's: given back when the response is dropped.
    let events = events(tail).map(move |event| {
        let _ = &slot;
        event
    });
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(app.options.event_keep_alive));
    // Proxies such as nginx buffer responses unless told not to.
    let no_buffering = [(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    )];
    Ok((no_buffering, sse))
}

/// The id of the newest event (0 for none): one query, however long the log (each stream
/// opened without a cursor asks it, and any viewer may open one).
fn latest_event_id(controller: &Controller) -> Result<i64, ApiError> {
    Ok(controller.engine().store().last_event_id()?)
}

/// Where one stream is in the log.
struct Tail {
    controller: Controller,
    environment: Option<EnvName>,
    after: i64,
    pending: VecDeque<EventRecord>,
    stop: StopSignal,
    poll: Duration,
}

fn events(tail: Tail) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(tail, |mut tail| async move {
        loop {
            if let Some(event) = tail.pending.pop_front() {
                tail.after = event.id;
                return Some((Ok(to_sse(&event)), tail));
            }
            if tail.stop.is_stopping() {
                return None;
            }
            let controller = tail.controller.clone();
            let query = EventQuery {
                environment: tail.environment.clone(),
                after_id: Some(tail.after),
                limit: BATCH,
            };
            let read =
                tokio::task::spawn_blocking(move || controller.engine().store().events(&query))
                    .await;
            match read {
                Ok(Ok(events)) => tail.pending.extend(events),
                // A busy or failing store: say so in the log and try again next poll; the
                // cursor has not moved, so nothing is lost.
                Ok(Err(e)) => eprintln!("slipway-server: event stream cannot read events: {e}"),
                Err(e) => eprintln!("slipway-server: event stream read task failed: {e}"),
            }
            if tail.pending.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(tail.poll) => {}
                    _ = tail.stop.stopped() => return None,
                }
            }
        }
    })
}

fn to_sse(event: &EventRecord) -> Event {
    let view = EventView {
        id: event.id,
        environment: event.environment.as_deref(),
        kind: event.kind,
        message: &event.message,
        data: &event.data,
        at: rfc3339(event.at),
    };
    let data = serde_json::to_string(&view)
        .expect("an event view serializes: its fields are strings, numbers and JSON values");
    Event::default().id(event.id.to_string()).data(data)
}
