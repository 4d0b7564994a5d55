//! Slipway's test kit: what the tests of every crate (and the benchmarks) share, so that it
//! exists once. Dev-only: never a dependency of a shipped crate.
//!
//! - [`git`]: repositories built with the real `git` CLI ([`git::git`], [`git::Repo`]).
//! - [`wait`]: [`wait::wait_for`] and [`wait::wait_for_explained`], which say what they waited
//!   for (and what was last seen) when they time out.
//! - [`fixtures`]: GitHub's own example deliveries and REST API description, fetched once per
//!   target directory, and `slipway-forge`'s committed fixtures.
//! - [`stack`]: stack files in memory, written into a repository in one call.
//! - [`openapi`]: GitHub's REST API description, resolved and matched to requests.
//! - [`http`]: the one HTTP server of the fakes (hyper on tokio, on `127.0.0.1:0`) and a plain
//!   client for hostile requests.
//! - [`cluster`]: a real Kubernetes control plane (`scripts/test-cluster.sh`), `kubectl`
//!   against it, and a stand-in for the kubelet's status updates.
//! - [`pg`]: a throwaway PostgreSQL database per test, on the test server.
//! - [`proxy`]: a TCP proxy a test can sever, for network partitions.
//! - [`process`]: a process named by pid and start time, so that a reused pid is not taken
//!   for it.
//! - [`forge`]: ONE fake forge, [`forge::FakeForge`], parameterised by forge
//!   ([`forge::Forge`]): one state (pull requests, comments, reviews and approvals, statuses,
//!   roles, the request log [`forge::Recorded`]) and one set of test-side methods, with
//!   GitHub's, GitLab's and Gitea's route tables, JSON shapes, auth headers and webhook
//!   payload builders in [`forge::github`], [`forge::gitlab`] and [`forge::gitea`].
//!
//! # The `slipway-fake-forge` binary
//!
//! The same fake for a benchmark (or a person) outside Rust:
//!
//! ```text
//! slipway-fake-forge --forge github|gitlab|gitea [--repo acme/shop] [--token T] [--bot LOGIN]
//!                    [--listen 127.0.0.1:0]
//! ```
//!
//! It listens on `127.0.0.1:0` (or `--listen`), prints its base URL (`http://127.0.0.1:PORT`)
//! as the first line of stdout, and serves until it is killed (SIGTERM, SIGKILL). The forge's
//! API is at the base URL (GitHub), `BASE/api/v4` (GitLab) or `BASE/api/v1` (Gitea): the
//! `api_url` to configure is the `api_url` field of `GET /_fake/`. With `--token`, every API
//! request must carry that token (else `401`); `--bot` is the login of the token's holder
//! (comments the API posts are its). The fake serves one repository, `acme/shop`: `--repo`
//! names it for the command line's sake and is refused when it names another.
//!
//! Its control API, under `/_fake/` (JSON in and out, never recorded in the request log):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /_fake/` | `{"forge", "repo", "bot", "api_url", "webhook_path"}` |
//! | `POST /_fake/prs` | adds (or replaces) an open pull (merge) request: `{"number", "head_sha", "head_ref"?, "base_ref"?, "author"?, "title"?, "fork"?}`, or announces one from a delivery's pull request object: `{"pull_request": {...}}` (GitHub's or Gitea's shape: `number`, `head.sha`, `head.ref`, `base.ref`, `user.login`, `title`, `head.repo.fork`, `state`, `merged`; GitLab's `object_attributes`: `iid`, `last_commit.id`, `source_branch`, `target_branch`, `title`, `state`); a closed or merged one is closed or merged on the fake. `200` `{"number"}` |
//! | `GET /_fake/prs/{n}/comments` | `[{"id", "author", "body", "edits"}]`, oldest first |
//! | `GET /_fake/statuses/{sha}` | `[{"context", "state", "description", "target_url"}]`, oldest first |
//! | `GET /_fake/requests?since=I` | the request log from index `I` (default 0): `[{"index", "at", "method", "path", "query", "status", "operation", "json", "response", "connection"}]` |
//! | `GET /_fake/unhandled` | the same, for the requests the fake does not implement (`404`, `operation: null`) |
//!
//! `at` is when the request's body had been read, in seconds of `CLOCK_MONOTONIC`: the clock
//! of Python's `time.monotonic()` and `time.perf_counter()` on Linux, so that a benchmark
//! subtracts its own times from it. `json` is the request's body as JSON (`null` when empty or
//! not JSON), `response` the answer's.

pub mod cluster;
pub mod fixtures;
pub mod forge;
pub mod git;
pub mod http;
pub mod openapi;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod stack;
pub mod wait;
