//! Which reviews count as approvals, for every forge: a reviewer's latest verdict decides
//! ([`latest_approvals`]), and an approval counts for the commit it names, or, when the forge
//! names none (GitLab), unless its reviewer approved before the last push
//! ([`Approval::counts_for`]). The adapters only read their forge's reviews into [`Verdict`]s.

use std::collections::HashMap;

use crate::event::ReviewState;

/// A reviewer whose latest verdict on a pull request is an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The reviewer's login.
    pub author: String,
    /// The commit the approval was given on, when the forge says (GitHub, Gitea); compare it
    /// with the head to refuse approvals of an older commit.
    pub commit_sha: Option<String>,
}

impl Approval {
    /// Whether this approval is of `head`: it names `head`, or it names no commit (GitLab keeps
    /// approvals across pushes) and its reviewer is not one of `stale_approvers` (those who had
    /// approved when the head last moved, and so approved older code).
    pub fn counts_for(&self, head: &str, stale_approvers: &[String]) -> bool {
        match self.commit_sha.as_deref() {
            Some(commit) => commit == head,
            None => !stale_approvers.contains(&self.author),
        }
    }
}

/// The commit a review of a forge that names one (GitHub, Gitea) was given on. That forge
/// answers `null` once the commit is gone (force-pushed away and collected): such an approval
/// is of no commit there is, never "of no commit in particular" (GitLab's), which would count
/// for whatever the head is then.
pub(crate) fn named_commit(commit: Option<String>) -> String {
    commit.unwrap_or_default()
}

/// One review's verdict, as a forge lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The reviewer's login.
    pub(crate) author: String,
    /// What they said.
    pub(crate) state: ReviewState,
    /// The commit they reviewed, when the forge says.
    pub(crate) commit_sha: Option<String>,
}

/// Approvals from a chronological list of verdicts: a reviewer's latest approve /
/// request-changes / dismissed verdict counts; plain comments do not change it (on GitHub,
/// commenting after approving leaves the approval in place). Reviewers are told apart without
/// regard to case, and listed in the order of their first verdict.
pub(crate) fn latest_approvals(reviews: impl IntoIterator<Item = Verdict>) -> Vec<Approval> {
    let mut order: Vec<String> = Vec::new();
    let mut latest: HashMap<String, (ReviewState, Option<String>)> = HashMap::new();
    for Verdict {
        author,
        state,
        commit_sha,
    } in reviews
    {
        if state == ReviewState::Commented {
            continue;
        }
        let key = author.to_ascii_lowercase();
        if !latest.contains_key(&key) {
            order.push(author.clone());
        }
        latest.insert(key, (state, commit_sha));
    }
    order
        .into_iter()
        .filter_map(|author| {
            let (state, commit) = latest.remove(&author.to_ascii_lowercase())?;
            (state == ReviewState::Approved).then_some(Approval {
                author,
                commit_sha: commit,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_request_for_changes_or_dismissal_cancels_an_approval_but_a_comment_does_not() {
        let sha = |c: &str| Some(c.repeat(40));
        let verdict = |author: &str, state, commit_sha| Verdict {
            author: author.to_owned(),
            state,
            commit_sha,
        };
        let reviews = vec![
            verdict("alice", ReviewState::Approved, sha("a")),
            verdict("bob", ReviewState::Approved, sha("a")),
            verdict("alice", ReviewState::Commented, sha("b")),
            verdict("bob", ReviewState::ChangesRequested, sha("b")),
            verdict("carol", ReviewState::ChangesRequested, sha("a")),
            verdict("carol", ReviewState::Approved, sha("b")),
            verdict("dave", ReviewState::Approved, sha("a")),
            verdict("Dave", ReviewState::Dismissed, sha("a")),
        ];
        let approvals = latest_approvals(reviews);
        let who: Vec<_> = approvals.iter().map(|a| a.author.as_str()).collect();
        assert_eq!(who, ["alice", "carol"]);
        assert_eq!(approvals[1].commit_sha, sha("b"));
    }

    #[test]
    fn an_approval_counts_for_the_head_it_names_or_if_it_names_none_unless_it_went_stale() {
        let head = "b".repeat(40);
        let of = |commit_sha: Option<String>| Approval {
            author: "alice".into(),
            commit_sha,
        };
        assert!(of(Some(head.clone())).counts_for(&head, &[]));
        assert!(
            !of(Some("a".repeat(40))).counts_for(&head, &[]),
            "an approval of an older commit does not count for the head"
        );
        assert!(of(None).counts_for(&head, &["bob".into()]));
        assert!(
            !of(None).counts_for(&head, &["alice".into()]),
            "an approval that names no commit, given before the last push, does not count"
        );
    }
}
