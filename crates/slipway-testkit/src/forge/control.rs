//! The control API of a fake forge under `/_fake/` (see the crate's documentation): what the
//! `slipway-fake-forge` binary offers a benchmark in place of the Rust methods.

use serde_json::{Value, json};

use super::{Forge, Recorded, Reply, Request};

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

/// What a fake offers its control API.
pub trait Control: Send + Sync {
    /// Which forge it plays.
    fn forge(&self) -> Forge;
    /// Its API root (`api_url`).
    fn api_url(&self) -> String;
    /// The bot's login.
    fn bot(&self) -> String;
    /// Where `slipway serve` receives this forge's deliveries.
    fn webhook_path(&self) -> &'static str;
    /// Adds, replaces, closes or merges a pull request.
    fn announce(&self, pr: &Announced);
    /// The comments on pull request `number`, oldest first: `[{"id", "author", "body", "edits"}]`.
    fn comments_json(&self, number: u64) -> Value;
    /// The statuses of commit `sha`, oldest first: `[{"context", "state", "description", "target_url"}]`.
    fn statuses_json(&self, sha: &str) -> Value;
    /// Every request so far.
    fn log(&self) -> Vec<Recorded>;
}

/// The control API's answer to `req`, or `None` when it is not under `/_fake/`.
pub fn answer(fake: &dyn Control, repo: &str, req: &Request) -> Option<Reply> {
    let rest = req.path.strip_prefix("/_fake")?;
    let parts: Vec<&str> = rest.trim_matches('/').split('/').collect();
    let bad = |why: String| Reply::json(400, json!({ "message": why }));
    let reply = match (req.method.as_str(), parts.as_slice()) {
        ("GET", [""]) => Reply::json(
            200,
            json!({
                "forge": fake.forge().name(),
                "repo": repo,
                "bot": fake.bot(),
                "api_url": fake.api_url(),
                "webhook_path": fake.webhook_path(),
            }),
        ),
        ("POST", ["prs"]) => match serde_json::from_slice::<Value>(&req.body)
            .map_err(|e| format!("the body is not JSON: {e}"))
            .and_then(|v| Announced::from_json(&v))
        {
            Ok(pr) => {
                fake.announce(&pr);
                Reply::json(200, json!({ "number": pr.number }))
            }
            Err(why) => bad(why),
        },
        ("GET", ["prs", n, "comments"]) => match n.parse::<u64>() {
            Ok(n) => Reply::json(200, fake.comments_json(n)),
            Err(_) => bad(format!("{n:?} is not a number")),
        },
        ("GET", ["statuses", sha]) => Reply::json(200, fake.statuses_json(sha)),
        ("GET", ["requests"]) => {
            let since = super::parse_query(&req.query)
                .into_iter()
                .find(|(k, _)| k == "since")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            Reply::json(200, log_json(fake.log(), since, |_| true))
        }
        ("GET", ["unhandled"]) => {
            Reply::json(200, log_json(fake.log(), 0, |r| r.operation.is_none()))
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

/// How a fake takes an announced pull request: unknown or changed beyond its head, `add`
/// (anew, without reviews); only its head moved, `set_head` (a push keeps reviews); then its
/// state. `moved` is the known one with the announced head, `None` when it is unknown.
pub fn place<S: PartialEq>(
    moved: Option<S>,
    spec: S,
    set_head: impl FnOnce(),
    add: impl FnOnce(S),
    set_state: impl FnOnce(&Option<Option<String>>),
    ended: &Option<Option<String>>,
) {
    match moved {
        Some(moved) if moved == spec => set_head(),
        _ => add(spec),
    }
    set_state(ended);
}

/// `[{"id", "author", "body", "edits"}]`.
pub fn comments_json(comments: impl IntoIterator<Item = (u64, String, String, u32)>) -> Value {
    comments
        .into_iter()
        .map(|(id, author, body, edits)| {
            json!({ "id": id, "author": author, "body": body, "edits": edits })
        })
        .collect()
}

/// `[{"context", "state", "description", "target_url"}]`.
pub fn statuses_json(
    statuses: impl IntoIterator<Item = (String, String, Option<String>, Option<String>)>,
) -> Value {
    statuses
        .into_iter()
        .map(|(context, state, description, target_url)| {
            json!({
                "context": context, "state": state,
                "description": description, "target_url": target_url,
            })
        })
        .collect()
}

/// Implements [`Control`] (and `server()`) for a fake whose pull requests are `$spec`s (built
/// by `$spec::new(number, head_sha)`, with the branch fields `$head`/`$base`) in `$state`s.
macro_rules! impl_control {
    (
        $fake:ident, $forge:ident, $spec:ident, $state:ident { $open:ident, $closed:ident },
        head: $head:ident, base: $base:ident, find: $find:ident, add: $add:ident,
        comments: $comments:ident, context: $context:ident
    ) => {
        impl $crate::forge::control::Control for $fake {
            fn forge(&self) -> $crate::forge::Forge {
                $crate::forge::Forge::$forge
            }

            fn api_url(&self) -> String {
                self.url()
            }

            fn bot(&self) -> String {
                self.bot_login().to_owned()
            }

            fn webhook_path(&self) -> &'static str {
                WEBHOOK_PATH
            }

            fn announce(&self, pr: &$crate::forge::control::Announced) {
                let defaults = $spec::new(pr.number, &pr.head_sha);
                let spec = $spec {
                    $head: pr.head_ref.clone().unwrap_or(defaults.$head),
                    $base: pr.base_ref.clone().unwrap_or(defaults.$base),
                    author: pr.author.clone().unwrap_or(defaults.author),
                    title: pr.title.clone().unwrap_or(defaults.title),
                    fork: pr.fork,
                    ..defaults
                };
                let moved = self.lock().$find(pr.number).map(|p| $spec {
                    head_sha: pr.head_sha.clone(),
                    ..p.spec.clone()
                });
                $crate::forge::control::place(
                    moved,
                    spec,
                    || self.set_head(pr.number, &pr.head_sha),
                    |spec| self.$add(spec),
                    |ended| {
                        let state = match ended {
                            None => $state::$open,
                            Some(None) => $state::$closed,
                            Some(Some(merge_sha)) => $state::Merged {
                                merge_sha: merge_sha.clone(),
                            },
                        };
                        self.set_state(pr.number, state);
                    },
                    &pr.ended,
                );
            }

            fn comments_json(&self, number: u64) -> serde_json::Value {
                $crate::forge::control::comments_json(
                    self.$comments(number)
                        .into_iter()
                        .map(|c| (c.id, c.author, c.body, c.edits)),
                )
            }

            fn statuses_json(&self, sha: &str) -> serde_json::Value {
                $crate::forge::control::statuses_json(
                    self.statuses(sha)
                        .into_iter()
                        .map(|s| (s.$context, s.state, s.description, s.target_url)),
                )
            }

            fn log(&self) -> Vec<$crate::forge::Recorded> {
                self.requests()
            }
        }

        impl $fake {
            /// The HTTP server it answers on.
            pub fn server(&self) -> &$crate::http::Server {
                &self.server
            }
        }
    };
}
pub(crate) use impl_control;
