//! Pull requests as the controller knows them, webhook deliveries already handled, and the
//! locks `/slipway apply ENV` takes on an environment for one pull request.

use crate::db::{DbError, DecodeError, Exec, Row, params};
use serde::{Deserialize, Serialize};
use slipway_core::EnvName;

use crate::StateError;
use crate::environments::{EnvironmentRecord, update_in};
use crate::store::{Store, env_name, one_of, sql};

/// Pull request states.
pub const PULL_REQUEST_STATES: &[&str] = &["open", "closed", "merged"];

/// One pull request (merge request) of the forge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestRecord {
    /// Its number.
    pub number: i64,
    /// Its title.
    pub title: String,
    /// Who opened it.
    pub author: String,
    /// The commit at its head, as last seen.
    pub head_sha: String,
    /// Its branch (in the fork, for a fork).
    pub head_ref: String,
    /// The branch it merges into.
    pub base_ref: String,
    /// Whether its code comes from another repository.
    pub is_fork: bool,
    /// One of [`PULL_REQUEST_STATES`].
    pub state: String,
    /// Whether it may have a preview environment (not a fork, an allowed author, or a
    /// maintainer's `/slipway preview`).
    pub preview_allowed: bool,
    /// Its page on the forge.
    pub url: String,
    /// When it was last written, unix milliseconds.
    pub updated_at: i64,
    /// Reviewers whose approval predates the current head, on a forge whose approvals do not
    /// name the commit they were given for (GitLab): they do not count for it.
    #[serde(default)]
    pub stale_approvers: Vec<String>,
    /// Its labels' names as the forge last said, sorted (policies read them).
    #[serde(default)]
    pub labels: Vec<String>,
    /// When Slipway first saw its head, unix milliseconds (`None` for a record from before
    /// this was kept): an approval by comment that names no commit is not taken for a head
    /// this recent, which the person may not have seen.
    #[serde(default)]
    pub head_seen_at: Option<i64>,
}

const COLUMNS: &str = "number, title, author, head_sha, head_ref, base_ref, is_fork, state, \
                       preview_allowed, url, updated_at, stale_approvers, labels, head_seen_at";

fn from_row(row: &Row) -> Result<PullRequestRecord, DbError> {
    Ok(PullRequestRecord {
        number: row.get(0)?,
        title: row.get(1)?,
        author: row.get(2)?,
        head_sha: row.get(3)?,
        head_ref: row.get(4)?,
        base_ref: row.get(5)?,
        is_fork: row.get(6)?,
        state: row.get(7)?,
        preview_allowed: row.get(8)?,
        url: row.get(9)?,
        updated_at: row.get(10)?,
        // Unreadable, the list of approvers a push made stale is an error, not an empty list:
        // written back empty, they would count again.
        stale_approvers: json_list(row, 11)?,
        labels: json_list(row, 12)?,
        head_seen_at: row.get(13)?,
    })
}

/// Column `index` of `row`: a JSON list of texts.
fn json_list(row: &Row, index: usize) -> Result<Vec<String>, DbError> {
    serde_json::from_str(&row.get::<String>(index)?).map_err(|e| DbError::Decode {
        index,
        reason: DecodeError::Type(format!("expected a JSON list of texts: {e}")),
    })
}

/// Who pushed to a pull request, as [`Store::pushers_of`] knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushers {
    /// Who pushed its head commit, sorted: empty when no push of it was seen.
    pub of_head: Vec<String>,
    /// Everyone who pushed any commit to it or to its branch (a branch of that name, ever:
    /// within the retention of deliveries), sorted.
    pub all: Vec<String>,
}

/// An environment locked to a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The environment.
    pub environment: EnvName,
    /// The pull request holding it.
    pub pull_request: i64,
    /// Who applied it.
    pub who: String,
    /// When, unix milliseconds.
    pub at: i64,
}

impl Store {
    /// Records a pull request, replacing what was known of it.
    pub fn upsert_pull_request(&self, pr: &PullRequestRecord) -> Result<(), StateError> {
        one_of("pull request state", &pr.state, PULL_REQUEST_STATES)?;
        self.conn()
            .execute(
                // `opened_base` is written once, with the first record: see
                // [`Store::pull_request_opened_base`].
                &format!(
                    "INSERT INTO pull_requests ({COLUMNS}, opened_base) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?6) \
                     ON CONFLICT (number) DO UPDATE SET title = excluded.title, \
                       author = excluded.author, head_sha = excluded.head_sha, \
                       head_ref = excluded.head_ref, base_ref = excluded.base_ref, \
                       is_fork = excluded.is_fork, state = excluded.state, \
                       preview_allowed = excluded.preview_allowed, url = excluded.url, \
                       updated_at = excluded.updated_at, \
                       stale_approvers = excluded.stale_approvers, labels = excluded.labels, \
                       head_seen_at = excluded.head_seen_at"
                ),
                params![
                    pr.number,
                    pr.title,
                    pr.author,
                    pr.head_sha,
                    pr.head_ref,
                    pr.base_ref,
                    pr.is_fork,
                    pr.state,
                    pr.preview_allowed,
                    pr.url,
                    pr.updated_at,
                    crate::store::to_json(&pr.stale_approvers),
                    crate::store::to_json(&pr.labels),
                    pr.head_seen_at,
                ],
            )
            .map_err(sql(format!("record pull request #{}", pr.number)))?;
        Ok(())
    }

    /// Records that `who` approved the soft policy denials of pull request `number` at
    /// `head_sha` (for that commit only; approving again keeps the first approval).
    pub fn approve_policies(
        &self,
        number: i64,
        head_sha: &str,
        who: &str,
        at: i64,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO policy_approvals (pull_request, head_sha, who, at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (pull_request, head_sha) DO NOTHING",
                params![number, head_sha, who, at],
            )
            .map_err(sql(format!("record the policy approval of #{number}")))?;
        Ok(())
    }

    /// The pull requests recorded merged at or after `since` (unix milliseconds) whose merge
    /// commit is not recorded: its record failed (the forge could not answer then), to try
    /// again.
    pub fn merges_unrecorded(&self, since: i64) -> Result<Vec<i64>, StateError> {
        self.conn()
            .query(
                "SELECT number FROM pull_requests p WHERE state = 'merged' AND updated_at >= ?1 \
                 AND NOT EXISTS (SELECT 1 FROM merged_commits m WHERE m.pull_request = p.number) \
                 ORDER BY number",
                params![since],
                |row| row.get(0),
            )
            .map_err(sql("read the merges not recorded"))
    }

    /// Records that `pusher` pushed commit `sha` to `source`: a branch's full ref
    /// (`refs/heads/NAME`, from a push webhook) or `pull/N` (pull request N, from its
    /// `synchronize` webhook, or a fork's `opened`). Nothing is forgotten when a branch is
    /// deleted and made again (deliveries may come in any order, so a record started over
    /// could lose a push made after the new branch): who pushed to a branch of that name
    /// before still counts. Recording the same push again changes nothing.
    pub fn record_push(
        &self,
        source: &str,
        sha: &str,
        pusher: &str,
        at: i64,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO head_pushes (source, sha, pusher, at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (source, sha, pusher) DO NOTHING",
                params![source, sha, pusher, at],
            )
            .map_err(sql(format!("record who pushed {sha} to {source}")))?;
        Ok(())
    }

    /// Who pushed to pull request `number`, whose head is `head`: through the pull request
    /// itself, or to its branch `branch` (`None` for a fork's, whose pushes this repository
    /// never sees).
    pub fn pushers_of(
        &self,
        number: i64,
        branch: Option<&str>,
        head: &str,
    ) -> Result<Pushers, StateError> {
        let pull = format!("pull/{number}");
        let branch = branch.map(|b| format!("refs/heads/{b}"));
        let rows: Vec<(String, String)> = self
            .conn()
            .query(
                "SELECT pusher, sha FROM head_pushes WHERE source = ?1 OR source = ?2",
                params![pull, branch],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(sql(format!("read who pushed to #{number}")))?;
        let mut pushers = Pushers::default();
        for (pusher, sha) in rows {
            if sha == head {
                pushers.of_head.push(pusher.clone());
            }
            pushers.all.push(pusher);
        }
        for list in [&mut pushers.of_head, &mut pushers.all] {
            list.sort();
            list.dedup();
        }
        Ok(pushers)
    }

    /// Who pushed to each source [`Store::record_push`] names (`refs/heads/NAME`, `pull/N`):
    /// for each, the person who pushed its tip (`tip_of` the source; the first by name, when
    /// several did), else the one who pushed to it last, with whether they pushed the tip.
    /// Sources nobody is known to have pushed to are left out.
    pub fn pushers<'t>(
        &self,
        tip_of: impl Fn(&str) -> Option<&'t str>,
    ) -> Result<std::collections::HashMap<String, (String, bool)>, StateError> {
        let rows: Vec<(String, String, String)> = self
            .conn()
            .query(
                "SELECT source, sha, pusher FROM head_pushes ORDER BY source, at, pusher",
                params![],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .map_err(sql("read who pushed"))?;
        let mut found: std::collections::HashMap<String, (bool, String)> = Default::default();
        for (source, sha, pusher) in rows {
            let of_tip = tip_of(&source) == Some(sha.as_str());
            match found.get_mut(&source) {
                // The tip's pusher stays; among the tip's, the first by name.
                Some((true, known)) => {
                    if of_tip && pusher < *known {
                        *known = pusher;
                    }
                }
                // Rows come by time: a later push, or the tip's, takes over.
                Some(entry) => *entry = (of_tip, pusher),
                None => {
                    found.insert(source, (of_tip, pusher));
                }
            }
        }
        Ok(found
            .into_iter()
            .map(|(source, (of_tip, pusher))| (source, (pusher, of_tip)))
            .collect())
    }

    /// Who approved the soft policy denials of pull request `number` at `head_sha`, if anyone.
    pub fn policies_approved(
        &self,
        number: i64,
        head_sha: &str,
    ) -> Result<Option<String>, StateError> {
        self.conn()
            .query_opt(
                "SELECT who FROM policy_approvals WHERE pull_request = ?1 AND head_sha = ?2",
                params![number, head_sha],
                |row| row.get(0),
            )
            .map_err(sql(format!("read the policy approval of #{number}")))
    }

    /// Pull request `number`, if known.
    pub fn pull_request(&self, number: i64) -> Result<Option<PullRequestRecord>, StateError> {
        self.conn()
            .query_opt(
                &format!("SELECT {COLUMNS} FROM pull_requests WHERE number = ?1"),
                params![number],
                from_row,
            )
            .map_err(sql(format!("read pull request #{number}")))
    }

    /// The branch pull request `number` merged into when it was first recorded (its
    /// `base_ref` then; later records do not change it), if it is known. A pull request whose
    /// base changed since was reviewed against another branch.
    pub fn pull_request_opened_base(&self, number: i64) -> Result<Option<String>, StateError> {
        self.conn()
            .query_opt(
                "SELECT opened_base FROM pull_requests WHERE number = ?1",
                params![number],
                |row| row.get::<Option<String>>(0),
            )
            .map(Option::flatten)
            .map_err(sql(format!(
                "read the first base of pull request #{number}"
            )))
    }

    /// The pull requests in `state` (`None`: all), by number. A record that cannot be read (a
    /// damaged row) is left out, so that it stops nothing but its own pull request: reading
    /// it alone ([`Store::pull_request`]) says why, and so does every event about it.
    pub fn pull_requests(&self, state: Option<&str>) -> Result<Vec<PullRequestRecord>, StateError> {
        Ok(self.pull_requests_and_unreadable(state)?.0)
    }

    /// [`Store::pull_requests`], and the numbers of those in `state` whose record cannot be
    /// read: what works on every pull request leaves them as they are (a preview of one is
    /// not destroyed for want of its record), or judges them by the forge alone.
    pub fn pull_requests_and_unreadable(
        &self,
        state: Option<&str>,
    ) -> Result<(Vec<PullRequestRecord>, Vec<i64>), StateError> {
        let rows = self
            .conn()
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM pull_requests WHERE state = ?1 OR ?1 IS NULL \
                     ORDER BY number"
                ),
                params![state],
                |row| Ok(from_row(row).map_err(|_| row.get::<i64>(0))),
            )
            .map_err(sql("list pull requests"))?;
        let mut readable = Vec::new();
        let mut unreadable = Vec::new();
        for row in rows {
            match row {
                Ok(record) => readable.push(record),
                Err(Ok(number)) => unreadable.push(number),
                Err(Err(e)) => return Err(sql("list pull requests")(e)),
            }
        }
        Ok((readable, unreadable))
    }

    /// Sets only the state of pull request `number` (a record that cannot be read as a whole
    /// is not written over). Whether it was recorded.
    pub fn set_pull_request_state(&self, number: i64, state: &str) -> Result<bool, StateError> {
        one_of("pull request state", state, PULL_REQUEST_STATES)?;
        let changed = self
            .conn()
            .execute(
                "UPDATE pull_requests SET state = ?1, updated_at = ?2 WHERE number = ?3",
                params![state, crate::now_ms(), number],
            )
            .map_err(sql(format!("record pull request #{number} {state}")))?;
        Ok(changed == 1)
    }

    /// Remembers a webhook delivery. Returns `false` when it was seen before (a redelivery,
    /// or a replay), so that each is handled once.
    pub fn record_delivery(&self, id: &str, at: i64) -> Result<bool, StateError> {
        let inserted = self
            .conn()
            .execute(
                "INSERT INTO deliveries (id, received_at) VALUES (?1, ?2) \
                 ON CONFLICT DO NOTHING",
                params![id, at],
            )
            .map_err(sql("record a webhook delivery"))?;
        Ok(inserted == 1)
    }

    /// Locks `environment` to pull request `pr`. Returns the lock that holds it: this one, or
    /// another pull request's, which is left as it was.
    pub fn lock_environment(
        &self,
        environment: &EnvName,
        pr: i64,
        who: &str,
        at: i64,
    ) -> Result<LockRecord, StateError> {
        let mut conn = self.conn();
        conn.execute(
            "INSERT INTO locks (environment, pull_request, who, at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![environment.as_str(), pr, who, at],
        )
        .map_err(sql(format!("lock {environment}")))?;
        conn.query_one(
            "SELECT environment, pull_request, who, at FROM locks WHERE environment = ?1",
            params![environment.as_str()],
            lock_from_row,
        )
        .map_err(sql(format!("read the lock of {environment}")))
    }

    /// [`Store::lock_environment`], only while pull request `pr` is recorded open, in the same
    /// statement: `None` when it is not (and no lock is there). A close handled meanwhile (on
    /// any replica) has released its locks: a lock taken after it would stay for ever.
    ///
    /// # Errors
    /// [`StateError::Database`] when the database fails.
    pub fn lock_environment_while_open(
        &self,
        environment: &EnvName,
        pr: i64,
        who: &str,
        at: i64,
    ) -> Result<Option<LockRecord>, StateError> {
        let mut conn = self.conn();
        conn.execute(
            "INSERT INTO locks (environment, pull_request, who, at) \
             SELECT ?1, ?2, ?3, ?4 WHERE EXISTS \
             (SELECT 1 FROM pull_requests WHERE number = ?2 AND state = 'open') \
             ON CONFLICT DO NOTHING",
            params![environment.as_str(), pr, who, at],
        )
        .map_err(sql(format!("lock {environment}")))?;
        conn.query_opt(
            "SELECT environment, pull_request, who, at FROM locks WHERE environment = ?1",
            params![environment.as_str()],
            lock_from_row,
        )
        .map_err(sql(format!("read the lock of {environment}")))
    }

    /// The lock on `environment`, if any.
    pub fn environment_lock(
        &self,
        environment: &EnvName,
    ) -> Result<Option<LockRecord>, StateError> {
        self.conn()
            .query_opt(
                "SELECT environment, pull_request, who, at FROM locks WHERE environment = ?1",
                params![environment.as_str()],
                lock_from_row,
            )
            .map_err(sql(format!("read the lock of {environment}")))
    }

    /// Every lock, by environment.
    pub fn locks(&self) -> Result<Vec<LockRecord>, StateError> {
        self.conn()
            .query(
                "SELECT environment, pull_request, who, at FROM locks ORDER BY environment",
                params![],
                lock_from_row,
            )
            .map_err(sql("list locks"))
    }

    /// Releases the lock on `environment` if pull request `pr` holds it. Returns whether it
    /// did.
    pub fn unlock_environment(&self, environment: &EnvName, pr: i64) -> Result<bool, StateError> {
        let deleted = self
            .conn()
            .execute(
                "DELETE FROM locks WHERE environment = ?1 AND pull_request = ?2",
                params![environment.as_str(), pr],
            )
            .map_err(sql(format!("unlock {environment}")))?;
        Ok(deleted == 1)
    }

    /// [`Store::update_environment`] for a person's pin, rollback or unpin, which ends a pull
    /// request's lock on the environment in the same transaction (what the person chose
    /// stays; the pull request's close no longer moves it). Returns the record written and
    /// the pull request whose lock ended. One transaction, so that a `/slipway apply` pinning
    /// the environment ([`Store::update_environment_locked_by`]) comes wholly before or after.
    pub fn update_environment_ending_lock(
        &self,
        name: &EnvName,
        change: impl FnOnce(Option<EnvironmentRecord>) -> EnvironmentRecord,
    ) -> Result<(EnvironmentRecord, Option<i64>), StateError> {
        self.write_env(Some(name), &[], |tx| {
            lock_environment_row(tx, name)?;
            let ended = tx
                .query(
                    "DELETE FROM locks WHERE environment = ?1 RETURNING pull_request",
                    params![name.as_str()],
                    |row| row.get::<i64>(0),
                )
                .map_err(sql(format!("unlock {name}")))?;
            let written = update_in(tx, name, |current| {
                Ok::<_, std::convert::Infallible>(change(current))
            })?;
            let Ok(written) = written;
            Ok((written, ended.into_iter().next()))
        })
    }

    /// [`Store::update_environment`] made only while pull request `pr` holds the
    /// environment's lock, checked in the same transaction; `None` (nothing written) when it does not: a person's pin or
    /// unpin ended it, or the pull request was closed or unlocked.
    pub fn update_environment_locked_by<E>(
        &self,
        name: &EnvName,
        pr: i64,
        change: impl FnOnce(Option<EnvironmentRecord>) -> Result<EnvironmentRecord, E>,
    ) -> Result<Option<Result<EnvironmentRecord, E>>, StateError> {
        self.write_env(Some(name), &[], |tx| {
            lock_environment_row(tx, name)?;
            let held = tx
                .query(
                    "SELECT pull_request FROM locks WHERE environment = ?1 AND pull_request = ?2",
                    params![name.as_str(), pr],
                    |row| row.get::<i64>(0),
                )
                .map_err(sql(format!("read the lock of {name}")))?;
            if held.is_empty() {
                return Ok(None);
            }
            update_in(tx, name, change).map(Some)
        })
    }

    /// Releases every lock `pr` holds; returns the environments it held.
    pub fn release_locks(&self, pr: i64) -> Result<Vec<EnvName>, StateError> {
        let mut envs = self
            .conn()
            .query(
                "DELETE FROM locks WHERE pull_request = ?1 RETURNING environment",
                params![pr],
                |row| env_name(row, 0),
            )
            .map_err(sql(format!("release the locks of #{pr}")))?;
        envs.sort();
        Ok(envs)
    }
}

/// Locks environment `name`'s row until the transaction ends, on PostgreSQL (SQLite's write
/// lock is the transaction's): a person's pin and an apply's pin each take it before they
/// read or change the pull request's lock, so that one comes wholly after the other (under
/// READ COMMITTED, a lock row an apply inserts is otherwise unseen by a person's `DELETE`
/// already running, which then pins over the apply's pin and leaves its lock). An `UPDATE`
/// that changes nothing, not a `SELECT ... FOR UPDATE`: it takes the table's `ROW EXCLUSIVE`
/// with the row, as every other write of an environment does, so that a writer holding
/// `SHARE ROW EXCLUSIVE` (the slots' promotions) is waited for before the row is taken, never
/// after. Fenced writes take their lease's row first, then this.
fn lock_environment_row(tx: &mut impl Exec, name: &EnvName) -> Result<(), StateError> {
    if tx.dialect() == crate::db::Dialect::Postgres {
        tx.execute(
            "UPDATE environments SET updated_at = updated_at WHERE name = ?1",
            params![name.as_str()],
        )
        .map_err(sql(format!("lock environment {name}")))?;
    }
    Ok(())
}

/// A commit a merged pull request made on its base branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedCommit {
    /// The commit.
    pub sha: String,
    /// The pull request merged.
    pub pull_request: i64,
    /// Whether a review approved its head when it was merged.
    pub approved: bool,
    /// When it was recorded, unix milliseconds.
    pub at: i64,
    /// The branch it was merged into; `None` for merges recorded before it was kept, which
    /// count for no environment.
    pub base_ref: Option<String>,
}

impl Store {
    /// Records the commit pull request `pr` made when it was merged.
    pub fn record_merged_commit(&self, merged: &MergedCommit) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO merged_commits (sha, pull_request, approved, at, base_ref) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (sha) DO UPDATE SET \
                 pull_request = excluded.pull_request, approved = excluded.approved, \
                 at = excluded.at, base_ref = excluded.base_ref",
                params![
                    merged.sha,
                    merged.pull_request,
                    merged.approved,
                    merged.at,
                    merged.base_ref
                ],
            )
            .map_err(sql(format!("record the merge of #{}", merged.pull_request)))?;
        Ok(())
    }

    /// The merged pull request that made commit `sha`, if one did.
    pub fn merged_commit(&self, sha: &str) -> Result<Option<MergedCommit>, StateError> {
        self.conn()
            .query_opt(
                "SELECT sha, pull_request, approved, at, base_ref FROM merged_commits \
                 WHERE sha = ?1",
                params![sha],
                |row| {
                    Ok(MergedCommit {
                        sha: row.get(0)?,
                        pull_request: row.get(1)?,
                        approved: row.get(2)?,
                        at: row.get(3)?,
                        base_ref: row.get(4)?,
                    })
                },
            )
            .map_err(sql(format!("read merged commit {sha}")))
    }
}

fn lock_from_row(row: &Row) -> Result<LockRecord, DbError> {
    Ok(LockRecord {
        environment: env_name(row, 0)?,
        pull_request: row.get(1)?,
        who: row.get(2)?,
        at: row.get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> EnvName {
        EnvName::parse(name).expect("a valid name")
    }

    fn pr(number: i64) -> PullRequestRecord {
        PullRequestRecord {
            number,
            title: "t".into(),
            author: "a".into(),
            head_sha: "0".repeat(40),
            head_ref: "feature/x".into(),
            base_ref: "main".into(),
            is_fork: false,
            state: "open".into(),
            preview_allowed: true,
            url: String::new(),
            updated_at: 1,
            stale_approvers: Vec::new(),
            labels: Vec::new(),
            head_seen_at: None,
        }
    }

    #[test]
    fn an_environment_is_locked_to_a_pull_request_only_while_it_is_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.upsert_pull_request(&pr(7)).expect("#7, open");
        store
            .upsert_pull_request(&PullRequestRecord {
                state: "closed".into(),
                ..pr(8)
            })
            .expect("#8, closed");
        let qa = env("qa");
        assert_eq!(
            store
                .lock_environment_while_open(&qa, 8, "a", 1)
                .expect("locks"),
            None,
            "a closed pull request takes no lock"
        );
        assert_eq!(store.environment_lock(&qa).expect("read"), None);
        let held = store
            .lock_environment_while_open(&qa, 7, "a", 2)
            .expect("locks")
            .expect("an open one does");
        assert_eq!(held.pull_request, 7);
        let other = store
            .lock_environment_while_open(&qa, 7 + 2, "b", 3)
            .expect("locks");
        assert_eq!(other.map(|l| l.pull_request), Some(7), "the holder stays");
    }

    #[test]
    fn a_source_is_its_tips_pushers_else_its_last_pushers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (a, b, c) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
        for (source, sha, who, at) in [
            ("refs/heads/x", &a, "mallory", 10),
            ("refs/heads/x", &a, "carol", 11),
            ("refs/heads/x", &b, "alice", 20),
            ("pull/7", &c, "bob", 30),
            ("pull/7", &a, "dan", 40),
        ] {
            store.record_push(source, sha, who, at).expect("record");
        }
        let pushers = |tips: &[(&str, &str)]| {
            let tip_of =
                |source: &str| tips.iter().find(|(s, _)| *s == source).map(|(_, sha)| *sha);
            let mut found: Vec<(String, (String, bool))> =
                store.pushers(tip_of).expect("read").into_iter().collect();
            found.sort();
            found
        };
        let pair = |b: &str, who: &str, tip| (b.to_string(), (who.to_string(), tip));
        assert_eq!(
            pushers(&[("refs/heads/x", &a), ("pull/7", &c)]),
            [
                pair("pull/7", "bob", true),
                pair("refs/heads/x", "carol", true)
            ],
            "the tip's pushers (the first by name), whoever pushed later"
        );
        assert_eq!(
            pushers(&[("refs/heads/x", &c)]),
            [
                pair("pull/7", "dan", false),
                pair("refs/heads/x", "alice", false)
            ],
            "a tip nobody is known to have pushed: the last pusher"
        );
    }

    #[test]
    fn who_pushed_is_asked_of_the_pull_request_and_of_its_own_branch_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (a, b, c) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
        let push = |source: &str, sha: &str, who: &str, at: i64| {
            store
                .record_push(source, sha, who, at)
                .expect("record a push");
        };
        push("refs/heads/feature/x", &a, "mallory", 10);
        push("pull/7", &b, "alice", 11);
        push("pull/7", &b, "alice", 12);
        // Pushed elsewhere: another branch, another pull request.
        push("refs/heads/other", &b, "eve", 13);
        push("pull/8", &b, "trent", 14);
        let pushers = store.pushers_of(7, Some("feature/x"), &b).expect("read");
        assert_eq!(pushers.of_head, ["alice"], "who pushed the head");
        assert_eq!(
            pushers.all,
            ["alice", "mallory"],
            "everyone who pushed to it or its branch, whatever commit"
        );
        let fork = store.pushers_of(7, None, &b).expect("read");
        assert_eq!(
            fork.all,
            ["alice"],
            "a fork's branch is not this repository's branch of the same name"
        );
        assert_eq!(
            store.pushers_of(9, Some("main"), &a).expect("read"),
            Pushers::default()
        );

        // The branch made again (deleted, then pushed anew) keeps who pushed to it before.
        push("refs/heads/feature/x", &c, "bob", 20);
        let pushers = store.pushers_of(7, Some("feature/x"), &c).expect("read");
        assert_eq!(pushers.of_head, ["bob"]);
        assert_eq!(pushers.all, ["alice", "bob", "mallory"]);

        // Pruned once old, except what an open pull request asks about.
        let mut open = pr(7);
        open.head_ref = "feature/x".into();
        store.upsert_pull_request(&open).expect("record");
        let pruned = store
            .prune(&crate::Retention {
                deliveries_before: Some(100),
                ..crate::Retention::default()
            })
            .expect("prune");
        assert_eq!(pruned.pushes, 2, "the pushes to `other` and to #8");
        assert!(
            store
                .pushers_of(8, Some("other"), &b)
                .expect("read")
                .all
                .is_empty()
        );
        assert_eq!(
            store
                .pushers_of(7, Some("feature/x"), &c)
                .expect("read")
                .all,
            ["alice", "bob", "mallory"]
        );
    }

    #[test]
    fn pull_requests_deliveries_and_locks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.upsert_pull_request(&pr(7)).expect("record");
        let mut closed = pr(8);
        closed.state = "closed".into();
        store.upsert_pull_request(&closed).expect("record");
        assert_eq!(store.pull_requests(Some("open")).expect("list").len(), 1);
        assert_eq!(store.pull_requests(None).expect("list").len(), 2);
        let mut bad = pr(9);
        bad.state = "draft".into();
        assert!(store.upsert_pull_request(&bad).is_err());
        let mut retargeted = pr(7);
        retargeted.base_ref = "dev".into();
        store.upsert_pull_request(&retargeted).expect("record");
        assert_eq!(
            store.pull_request_opened_base(7).expect("read").as_deref(),
            Some("main"),
            "the first base is kept when the base changes"
        );
        assert_eq!(
            store.pull_request(7).expect("read").expect("#7").base_ref,
            "dev"
        );
        assert_eq!(store.pull_request_opened_base(99).expect("read"), None);

        assert!(store.record_delivery("github:abc", 1).expect("first"));
        assert!(!store.record_delivery("github:abc", 2).expect("replay"));

        assert_eq!(
            store
                .lock_environment(&env("prod"), 7, "ann", 1)
                .expect("lock")
                .pull_request,
            7
        );
        let held = store
            .lock_environment(&env("prod"), 8, "bob", 2)
            .expect("lock");
        assert_eq!(held.pull_request, 7, "the first lock holds");
        assert!(!store.unlock_environment(&env("prod"), 8).expect("not 8's"));
        store
            .lock_environment(&env("qa"), 7, "ann", 3)
            .expect("lock");
        assert_eq!(store.release_locks(7).expect("release"), vec!["prod", "qa"]);
        assert!(
            store
                .environment_lock(&env("prod"))
                .expect("read")
                .is_none()
        );
    }

    /// A record whose list of stale approvers cannot be read is an error: read as empty, it
    /// would be written back so, and the approvals a push made stale would count again.
    #[test]
    fn a_record_whose_stale_approvers_cannot_be_read_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let record = PullRequestRecord {
            stale_approvers: vec!["alice".into()],
            ..pr(7)
        };
        store.upsert_pull_request(&record).expect("record");
        assert_eq!(store.pull_request(7).expect("read"), Some(record));
        store.upsert_pull_request(&pr(8)).expect("record another");
        store
            .conn()
            .execute(
                "UPDATE pull_requests SET stale_approvers = 'alice' WHERE number = 7",
                &[],
            )
            .expect("damage the record");
        let error = store.pull_request(7).expect_err("an unreadable record");
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        assert!(
            error.to_string().contains("pull request #7")
                && cause
                    .as_deref()
                    .is_some_and(|c| c.contains("a JSON list of texts")),
            "{error}: {cause:?}"
        );
        assert_eq!(
            store.pull_requests(None).expect("list"),
            vec![pr(8)],
            "the listing leaves it out, and lists the others"
        );
        assert_eq!(
            store
                .pull_requests_and_unreadable(Some("open"))
                .expect("list"),
            (vec![pr(8)], vec![7]),
            "and says which it left out"
        );
    }

    /// A merge remembers the branch it went into (`require_pr` counts only merges into the
    /// tracked branch); a row recorded before that was kept reads as into no branch.
    #[test]
    fn a_merged_commit_keeps_its_base_branch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let merged = MergedCommit {
            sha: "a".repeat(40),
            pull_request: 5,
            approved: true,
            at: 1,
            base_ref: Some("scratch".into()),
        };
        store.record_merged_commit(&merged).expect("record");
        assert_eq!(
            store.merged_commit(&merged.sha).expect("read"),
            Some(merged.clone()),
            "the base branch is read back"
        );
        store
            .conn()
            .execute(
                "INSERT INTO merged_commits (sha, pull_request, approved, at) \
                 VALUES (?1, 4, 1, 1)",
                params!["b".repeat(40)],
            )
            .expect("an older row");
        assert_eq!(
            store
                .merged_commit(&"b".repeat(40))
                .expect("read")
                .and_then(|m| m.base_ref),
            None,
            "an older row names no base branch"
        );
    }
}
