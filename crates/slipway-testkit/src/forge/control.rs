//! The control API of a fake forge under `/_fake/` (see the crate's documentation): what the
//! `slipway-fake-forge` binary offers a benchmark in place of the Rust methods.

use serde_json::{Value, json};

use super::state::{FakeForge, PrSpec, PrState};
use super::{Recorded, Reply, Request};

/// A pull (merge) request to put on a fake, forge-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// Its number (GitLab: `iid`).
    pub number: u64,
    /// Its head commit.
    pub head_sha: String,
    /// Its source branch (default `feature-<number>`).
    pub head_ref: Option<String>,
    /// Its target branch (default `main`).
    pub base_ref: Option<String>,
    /// Its author (default `alice`).
    pub author: Option<String>,
    /// Its title (default `Change <number>`).
    pub title: Option<String>,
    /// From a fork.
    pub fork: bool,
    /// `None` open, `Some(None)` closed, `Some(Some(sha))` merged as `sha`.
    pub ended: Option<Option<String>>,
}

impl Announced {
    /// From the control API's JSON: the plain fields, or `{"pull_request": …}` of a delivery
    /// (GitHub's or Gitea's shape), or `{"object_attributes": …}` (GitLab's).
    pub fn from_json(v: &Value) -> Result<Announced, String> {
        let s = |v: &Value| v.as_str().map(str::to_owned);
        if let Some(pr) = v.get("pull_request") {
            let number = pr["number"]
                .as_u64()
                .ok_or("pull_request.number is missing")?;
            let merged = pr["merged"].as_bool().unwrap_or(false);
            let ended = match (pr["state"].as_str(), merged) {
                (_, true) => Some(Some(
                    s(&pr["merge_commit_sha"]).unwrap_or_else(|| "0".repeat(40)),
                )),
                (Some("closed"), false) => Some(None),
                _ => None,
            };
            return Ok(Announced {
                number,
                head_sha: s(&pr["head"]["sha"]).ok_or("pull_request.head.sha is missing")?,
                head_ref: s(&pr["head"]["ref"]),
                base_ref: s(&pr["base"]["ref"]),
                author: s(&pr["user"]["login"]),
                title: s(&pr["title"]),
                fork: pr["head"]["repo"]["fork"].as_bool().unwrap_or(false),
                ended,
            });
        }
        if let Some(mr) = v.get("object_attributes") {
            let number = mr["iid"]
                .as_u64()
                .ok_or("object_attributes.iid is missing")?;
            let ended = match mr["state"].as_str() {
                Some("merged") => Some(Some(
                    s(&mr["merge_commit_sha"]).unwrap_or_else(|| "0".repeat(40)),
                )),
                Some("closed") => Some(None),
                _ => None,
            };
            return Ok(Announced {
                number,
                head_sha: s(&mr["last_commit"]["id"])
                    .ok_or("object_attributes.last_commit.id is missing")?,
                head_ref: s(&mr["source_branch"]),
                base_ref: s(&mr["target_branch"]),
                author: s(&v["user"]["username"]),
                title: s(&mr["title"]),
                fork: mr["source_project_id"] != mr["target_project_id"],
                ended,
            });
        }
        Ok(Announced {
            number: v["number"].as_u64().ok_or("number is missing")?,
            head_sha: s(&v["head_sha"]).ok_or("head_sha is missing")?,
            head_ref: s(&v["head_ref"]),
            base_ref: s(&v["base_ref"]),
            author: s(&v["author"]),
            title: s(&v["title"]),
            fork: v["fork"].as_bool().unwrap_or(false),
            ended: None,
        })
    }
}

/// The control API's answer to `req`, or `None` when it is not under `/_fake/`.
pub fn answer(fake: &FakeForge, repo: &str, req: &Request) -> Option<Reply> {
    let rest = req.path.strip_prefix("/_fake")?;
    let parts: Vec<&str> = rest.trim_matches('/').split('/').collect();
    let bad = |why: String| Reply::json(400, json!({ "message": why }));
    let reply = match (req.method.as_str(), parts.as_slice()) {
        ("GET", [""]) => Reply::json(
            200,
            json!({
                "forge": fake.forge().name(),
                "repo": repo,
                "bot": fake.bot_login(),
                "api_url": fake.url(),
                "webhook_path": fake.webhook_path(),
            }),
        ),
        ("POST", ["prs"]) => match serde_json::from_slice::<Value>(&req.body)
            .map_err(|e| format!("the body is not JSON: {e}"))
            .and_then(|v| Announced::from_json(&v))
        {
            Ok(pr) => {
                announce(fake, &pr);
                Reply::json(200, json!({ "number": pr.number }))
            }
            Err(why) => bad(why),
        },
        ("GET", ["prs", n, "comments"]) => match n.parse::<u64>() {
            Ok(n) => Reply::json(200, comments_json(fake, n)),
            Err(_) => bad(format!("{n:?} is not a number")),
        },
        ("GET", ["statuses", sha]) => Reply::json(200, statuses_json(fake, sha)),
        ("GET", ["requests"]) => {
            let since = super::parse_query(&req.query)
                .into_iter()
                .find(|(k, _)| k == "since")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            Reply::json(200, log_json(fake.requests(), since, |_| true))
        }
        ("GET", ["unhandled"]) => {
            Reply::json(200, log_json(fake.requests(), 0, |r| r.operation.is_none()))
        }
        _ => Reply::json(404, json!({ "message": "no such control endpoint" })),
    };
    Some(reply)
}

fn log_json(log: Vec<Recorded>, since: usize, keep: impl Fn(&Recorded) -> bool) -> Value {
    Value::Array(
        log.into_iter()
            .enumerate()
            .skip(since)
            .filter(|(_, r)| keep(r))
            .map(|(i, r)| {
                let mut v = r.to_json();
                v["index"] = json!(i);
                v
            })
            .collect(),
    )
}

/// Puts an announced pull request on `fake`: unknown or changed beyond its head, anew
/// (without reviews); only its head moved, a push (which keeps reviews); then its state.
fn announce(fake: &FakeForge, pr: &Announced) {
    let defaults = PrSpec::new(pr.number, &pr.head_sha);
    let spec = PrSpec {
        head_ref: pr.head_ref.clone().unwrap_or(defaults.head_ref),
        base_ref: pr.base_ref.clone().unwrap_or(defaults.base_ref),
        author: pr.author.clone().unwrap_or(defaults.author),
        title: pr.title.clone().unwrap_or(defaults.title),
        fork: pr.fork,
        ..defaults
    };
    let moved = fake.find_pr(pr.number).map(|known| PrSpec {
        head_sha: pr.head_sha.clone(),
        ..known
    });
    if moved.as_ref() == Some(&spec) {
        fake.set_head(pr.number, &pr.head_sha);
    } else {
        fake.add_pr(spec);
    }
    let state = match &pr.ended {
        None => PrState::Open,
        Some(None) => PrState::Closed,
        Some(Some(merge_sha)) => PrState::Merged {
            merge_sha: merge_sha.clone(),
        },
    };
    fake.set_state(pr.number, state);
}

/// `[{"id", "author", "body", "edits"}]`.
fn comments_json(fake: &FakeForge, number: u64) -> Value {
    fake.comments(number)
        .into_iter()
        .map(|c| json!({ "id": c.id, "author": c.author, "body": c.body, "edits": c.edits }))
        .collect()
}

/// `[{"context", "state", "description", "target_url"}]`.
fn statuses_json(fake: &FakeForge, sha: &str) -> Value {
    fake.statuses(sha)
        .into_iter()
        .map(|s| {
            json!({
                "context": s.context, "state": s.state,
                "description": s.description, "target_url": s.target_url,
            })
        })
        .collect()
}
