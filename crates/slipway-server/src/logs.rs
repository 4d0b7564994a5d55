//! `/api/v1/environments/{name}/logs/{resource}`: a process's or job's log, as `slipway logs`
//! shows it: the last lines, and with `/follow` what it writes from then on, as server-sent
//! events.
//!
//! # Who may read what
//! Any token (the viewer role and up) reads the logs of any environment, as it reads their
//! status. The lines are redacted as `slipway logs` redacts them: every secret output and
//! secret-bearing value of the environment's resources is replaced by `<redacted>`. Only a
//! resource the environment records, of a type that keeps a log (`process`, `job`), names a
//! file: the name in the path is never joined to a path otherwise, so `../` and the like find
//! nothing (404).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures_util::{Stream, StreamExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use slipway_controller::Controller;
use slipway_core::EnvName;
use slipway_engine::secrets::Redactor;

use crate::auth::Principal;
use crate::body::{EnvResourcePath, QueryArgs, printable};
use crate::error::ApiError;
use crate::openapi::schema_of;
use crate::routes::{Reply, Route};
use crate::{AppState, StopSignal};

/// Lines of a log answered when `tail` is not given.
const DEFAULT_TAIL: usize = 200;
/// The most lines `tail` may ask for.
const MAX_TAIL: usize = 10_000;
/// The most bytes read from the end of a log for its last lines (a log is capped, see
/// `[local] log_max_bytes`, but an answer need not be as large).
const MAX_READ: u64 = 4 * 1024 * 1024;
/// How often a followed log is looked at.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

const NOT_FOUND: &str = "The environment does not exist, or has no process or job of that name (its resources and their types: `GET /api/v1/environments/{name}`).";

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/v1/environments/{name}/logs/{resource}", tail)
            .id("getLogs", "environment.logs")
            .summary(
                "Read a process's or job's log",
                "The last `tail` lines (default 200, at most 10,000) of the log of the resource (a `process` or a `job`), redacted as `slipway logs` redacts them. `…/follow` streams what it writes next.",
            )
            .query::<TailQuery>()
            .json::<LogTail>(StatusCode::OK, "The last lines, oldest first.")
            .errors(&[(StatusCode::NOT_FOUND, NOT_FOUND)]),
        Route::get("/api/v1/environments/{name}/logs/{resource}/follow", follow)
            .id("followLogs", "environment.logs")
            .summary(
                "Follow a process's or job's log",
                "Server-sent events: the last `tail` lines (default 200), then each line the resource writes, as it writes it; each `data:` is a `LogLine` in JSON. A log that is rotated is read again from its start.",
            )
            .query::<TailQuery>()
            .reply(Reply::EventStream {
                schema: schema_of::<LogLine>,
                description: "An endless stream of lines; comments (`:`) keep it alive.",
            })
            .errors(&[
                (StatusCode::NOT_FOUND, NOT_FOUND),
                (StatusCode::TOO_MANY_REQUESTS, crate::streams::TOO_MANY),
            ]),
    ]
}

#[derive(Debug, Deserialize, JsonSchema)]
struct TailQuery {
    /// How many of the last lines (default 200, at most 10,000).
    #[schemars(range(min = 0, max = 10_000))]
    tail: Option<u64>,
}

/// The last lines of a log.
#[derive(Debug, Serialize, JsonSchema)]
struct LogTail {
    environment: String,
    resource: String,
    /// Oldest first, each without its line break, secrets replaced by `<redacted>`.
    lines: Vec<String>,
}

/// One line of a followed log.
#[derive(Debug, Serialize, JsonSchema)]
struct LogLine {
    /// Without its line break, secrets replaced by `<redacted>`.
    line: String,
}

/// The log file of `resource` in `env`, and the environment's redactor; 404 unless the
/// environment records such a resource of a type with a log.
fn log_of(
    controller: &Controller,
    env: &EnvName,
    resource: &str,
) -> Result<(PathBuf, Redactor), ApiError> {
    let engine = controller.engine();
    let missing = || {
        ApiError::not_found(format!(
            "environment `{env}` has no process or job `{}`",
            printable(resource)
        ))
        .hint(format!(
            "GET /api/v1/environments/{env} lists its resources and their types"
        ))
    };
    if engine.store().environment(env)?.is_none() {
        return Err(ApiError::no_environment(env));
    }
    let records = engine.store().resources(env)?;
    let known = records
        .iter()
        .any(|r| r.name == resource && slipway_core::types::capabilities(&r.type_name).logs);
    if !known {
        return Err(missing());
    }
    let file = engine
        .log_files(env, Some(resource))?
        .into_iter()
        .next()
        .ok_or_else(missing)?;
    Ok((file.path, engine.redactor(env)?))
}

fn tail_of(query: &TailQuery) -> Result<usize, ApiError> {
    match query.tail {
        None => Ok(DEFAULT_TAIL),
        Some(n) if n <= MAX_TAIL as u64 => Ok(n as usize),
        Some(n) => Err(
            ApiError::bad_request(format!("`tail` {n} is more than {MAX_TAIL} lines"))
                .hint("ask for 10,000 lines or fewer"),
        ),
    }
}

/// The last `n` lines of `path` (none when it does not exist yet), and the offset its end
/// was at.
fn last_lines(path: &std::path::Path, n: usize) -> std::io::Result<(Vec<String>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(MAX_READ);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(len - start).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line read is cut: it began before what was read.
        lines.remove(0);
    }
    let lines = lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect();
    Ok((lines, start + bytes.len() as u64))
}

fn read_error(path: &std::path::Path, e: &std::io::Error) -> ApiError {
    ApiError::internal(format!("cannot read the log {}: {e}", path.display()))
}

async fn tail(
    State(app): State<AppState>,
    EnvResourcePath(env, resource): EnvResourcePath,
    QueryArgs(query): QueryArgs<TailQuery>,
) -> Result<Json<LogTail>, ApiError> {
    let n = tail_of(&query)?;
    app.blocking(move |c| {
        let (path, redactor) = log_of(c, &env, &resource)?;
        let (lines, _) = last_lines(&path, n).map_err(|e| read_error(&path, &e))?;
        Ok(Json(LogTail {
            environment: env.to_string(),
            lines: lines.iter().map(|l| redactor.redact(l)).collect(),
            resource,
        }))
    })
    .await
}

async fn follow(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    EnvResourcePath(env, resource): EnvResourcePath,
    QueryArgs(query): QueryArgs<TailQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let n = tail_of(&query)?;
    let slot = app.streams.take(&caller.token_hash)?;
    let (path, redactor, first, offset) = app
        .blocking(move |c| {
            let (path, redactor) = log_of(c, &env, &resource)?;
            let (lines, offset) = last_lines(&path, n).map_err(|e| read_error(&path, &e))?;
            Ok((path, redactor, lines, offset))
        })
        .await?;
    let followed = Followed {
        path,
        redactor,
        offset,
        pending: first.into(),
        partial: Vec::new(),
        stop: app.stop.clone(),
    };
    // The slot is the stream's: given back when the response is dropped.
    let lines = lines(followed).map(move |line| {
        let _ = &slot;
        line
    });
    let sse = Sse::new(lines).keep_alive(KeepAlive::new().interval(app.options.event_keep_alive));
    let no_buffering = [(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    )];
    Ok((no_buffering, sse))
}

/// A log being followed.
struct Followed {
    path: PathBuf,
    redactor: Redactor,
    /// How far it was read.
    offset: u64,
    /// Lines read, not sent yet.
    pending: VecDeque<String>,
    /// The start of a line whose end is not written yet.
    partial: Vec<u8>,
    stop: StopSignal,
}

impl Followed {
    /// Reads what was written since the last look (from the start again when the file got
    /// shorter: rotated).
    fn read_more(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        // At most MAX_READ at a time: a log written faster than it is read is read in turns.
        if file.take(MAX_READ).read_to_end(&mut bytes).is_err() {
            return;
        }
        self.offset += bytes.len() as u64;
        split_lines(&mut self.partial, &mut self.pending, &bytes);
    }
}

/// A line longer than this is sent without waiting for its end, as the log's writer writes
/// it: a process that never ends a line must not grow what each follower holds.
const MAX_PARTIAL: usize = 64 * 1024;

/// Adds `bytes` to `partial` (the start of a line), and moves every whole line to `pending`,
/// and, of a line with no end yet, pieces of at most [`MAX_PARTIAL`] bytes (cut between two
/// characters) while more than that is held: the rest, never empty, ends the line when its
/// end comes.
fn split_lines(partial: &mut Vec<u8>, pending: &mut VecDeque<String>, bytes: &[u8]) {
    partial.extend_from_slice(bytes);
    if let Some(end) = partial.iter().rposition(|&b| b == b'\n') {
        let whole: Vec<u8> = partial.drain(..=end).collect();
        for line in String::from_utf8_lossy(&whole).lines() {
            pending.push_back(line.to_owned());
        }
    }
    while partial.len() > MAX_PARTIAL {
        // Not inside a character: back over its continuation bytes (`10xxxxxx`).
        let mut cut = MAX_PARTIAL;
        while cut > MAX_PARTIAL - 4 && partial[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        let piece: Vec<u8> = partial.drain(..cut).collect();
        pending.push_back(String::from_utf8_lossy(&piece).into_owned());
    }
}

fn lines(followed: Followed) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(followed, |mut f| async move {
        loop {
            if let Some(line) = f.pending.pop_front() {
                let view = LogLine {
                    line: f.redactor.redact(&line),
                };
                let event = Event::default()
                    .json_data(&view)
                    .unwrap_or_else(|_| Event::default().comment("a line could not be sent"));
                return Some((Ok(event), f));
            }
            if f.stop.is_stopping() {
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = f.stop.stopped() => return None,
            }
            let mut moved = f;
            moved = tokio::task::spawn_blocking(move || {
                moved.read_more();
                moved
            })
            .await
            .ok()?;
            f = moved;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole lines go as they end; a line that never ends goes in pieces of at most
    /// [`MAX_PARTIAL`] bytes, each cut between two characters, so that a follower never holds
    /// more of it; its end ends the last piece, never an empty line of its own.
    #[test]
    fn a_line_without_its_end_is_sent_in_pieces_and_never_held_whole() {
        let (mut partial, mut pending) = (Vec::new(), VecDeque::new());
        split_lines(&mut partial, &mut pending, b"one\ntwo\nthr");
        assert_eq!(pending, ["one", "two"]);
        assert_eq!(partial, b"thr");
        split_lines(&mut partial, &mut pending, b"ee\n");
        assert_eq!(pending, ["one", "two", "three"]);
        assert!(partial.is_empty());
        pending.clear();
        // Five times the limit, in writes of 4 KiB: four pieces sent, the fifth held.
        for _ in 0..80 {
            split_lines(&mut partial, &mut pending, &[b'x'; 4096]);
            assert!(partial.len() <= MAX_PARTIAL, "held: {}", partial.len());
        }
        assert_eq!(pending.len(), 4);
        split_lines(&mut partial, &mut pending, b"\n");
        assert_eq!(pending.len(), 5, "the end closes the fifth piece");
        assert!(pending.iter().all(|p| p.len() == MAX_PARTIAL));
        pending.clear();
        // Two-byte characters across the cut: every piece is whole characters.
        split_lines(&mut partial, &mut pending, b"x");
        for _ in 0..(MAX_PARTIAL / 2 + 10) {
            split_lines(&mut partial, &mut pending, "é".as_bytes());
        }
        split_lines(&mut partial, &mut pending, b"\n");
        assert_eq!(pending.len(), 2);
        assert!(
            pending.iter().all(|p| !p.contains('\u{FFFD}')),
            "no character cut in two"
        );
        assert_eq!(
            pending[0].len(),
            MAX_PARTIAL - 1,
            "cut before the character"
        );
    }
}
