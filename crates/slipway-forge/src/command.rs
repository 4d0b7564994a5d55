//! `/slipway …` commands in pull request comments, Atlantis-style, read strictly.
//!
//! A comment is a command when its first non-blank line starts with the word `/slipway`; the
//! rest of that line is the command, and later lines are free text (a reason, a thank-you).
//! Words are separated by ASCII spaces and tabs only. Nothing is ever passed to a shell: the
//! strictness is about saying no clearly to what is not a command, not about quoting.

use slipway_core::EnvName;
use std::fmt;

use crate::render::inline_code;

/// The reply to `/slipway help`, and the end of every [`CommandError`]'s message.
pub const USAGE: &str = "\
Usage (one command per comment, on its first line):
- `/slipway plan [ENV]`: plan this pull request for ENV, or for every environment it changes
- `/slipway apply ENV [COMMIT]`: apply this pull request's head to ENV (once its apply requirements hold; for a fork, a maintainer's say-so for that head)
- `/slipway unlock ENV`: release ENV's lock held by this pull request
- `/slipway preview [COMMIT]`: build a preview environment for this pull request's head (maintainers, for forks)
- `/slipway approve-policies [COMMIT]`: let this head commit through the soft policies that deny it (policy owners)
- `/slipway help`: show this message

ENV is an environment name: 1 to 63 of a-z, 0-9 and `-`, not starting or ending with `-`.
COMMIT is the head commit you reviewed, by its whole id: nothing is approved if the head is \
another one. Without it (or with only its first digits), a head pushed moments before the \
command is not approved.";

/// A command read from a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Plan the pull request for one environment, or for every one it changes.
    Plan {
        /// The environment, if one was named.
        env: Option<EnvName>,
    },
    /// Apply the pull request to an environment.
    Apply {
        /// The environment.
        env: EnvName,
        /// The head commit the maintainer reviewed, if they named it (for a fork's).
        commit: Option<CommitPrefix>,
    },
    /// Release an environment's lock held by the pull request.
    Unlock {
        /// The environment.
        env: EnvName,
    },
    /// Build a preview environment (a maintainer's say-so for a fork).
    Preview {
        /// The head commit the maintainer reviewed, if they named it.
        commit: Option<CommitPrefix>,
    },
    /// Approve the soft policy denials of the pull request's head commit (a policy owner's).
    ApprovePolicies {
        /// The head commit the owner reviewed, if they named it.
        commit: Option<CommitPrefix>,
    },
    /// Show the usage.
    Help,
}

impl fmt::Display for Command {
    /// The command as it would be typed: `parse_command(&cmd.to_string())` gives it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Plan { env: None } => f.write_str("/slipway plan"),
            Command::Plan { env: Some(env) } => write!(f, "/slipway plan {env}"),
            Command::Apply { env, commit: None } => write!(f, "/slipway apply {env}"),
            Command::Apply {
                env,
                commit: Some(commit),
            } => write!(f, "/slipway apply {env} {commit}"),
            Command::Unlock { env } => write!(f, "/slipway unlock {env}"),
            Command::Preview { commit: None } => f.write_str("/slipway preview"),
            Command::Preview {
                commit: Some(commit),
            } => write!(f, "/slipway preview {commit}"),
            Command::ApprovePolicies { commit: None } => f.write_str("/slipway approve-policies"),
            Command::ApprovePolicies {
                commit: Some(commit),
            } => write!(f, "/slipway approve-policies {commit}"),
            Command::Help => f.write_str("/slipway help"),
        }
    }
}

/// A commit a command names: 7 to 64 hexadecimal digits, kept in lower case, the whole commit
/// id or its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrefix(String);

impl CommitPrefix {
    /// Reads `word` as a commit prefix; `None` when it is not 7 to 64 hex digits.
    pub fn parse(word: &str) -> Option<CommitPrefix> {
        ((7..=64).contains(&word.len()) && word.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| CommitPrefix(word.to_ascii_lowercase()))
    }

    /// Whether `sha`, a whole commit id, starts with this.
    pub fn names(&self, sha: &str) -> bool {
        sha.len() >= self.0.len()
            && sha
                .get(..self.0.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(&self.0))
    }

    /// Whether this is all of `sha`, a whole commit id (not only its start, which a commit
    /// made to look alike can share).
    pub fn is_whole(&self, sha: &str) -> bool {
        self.0.len() == sha.len() && self.names(sha)
    }
}

impl fmt::Display for CommitPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A comment that starts with `/slipway` but is not a command. Its message is a polite reply,
/// in Markdown, ending with the [`USAGE`]; the comment's own text in it is cut short and put in
/// code spans, so that it can be posted back as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}\n\n{USAGE}")]
pub struct CommandError {
    problem: String,
}

impl CommandError {
    fn new(problem: String) -> Self {
        CommandError { problem }
    }

    /// The problem alone, without the usage.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

/// The longest command line read; anything longer is refused without being echoed.
const MAX_LINE: usize = 200;

/// Reads a command from a comment's body.
///
/// Returns `Ok(None)` for a comment that is not a command (its first non-blank line does not
/// start with the word `/slipway`), `Ok(Some(command))` for a valid one, and an error for
/// anything else that starts with `/slipway`: no verb, an unknown verb, a missing, extra or
/// invalid argument.
pub fn parse_command(body: &str) -> Result<Option<Command>, CommandError> {
    let Some(line) = body.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
    if words.next() != Some("/slipway") {
        return Ok(None);
    }
    if line.len() > MAX_LINE {
        return Err(CommandError::new(format!(
            "Sorry, that command is too long ({} bytes; commands are short).",
            line.len()
        )));
    }
    let words: Vec<&str> = words.collect();
    let Some((&verb, args)) = words.split_first() else {
        return Err(CommandError::new(
            "Sorry, `/slipway` needs a command.".to_owned(),
        ));
    };
    let command = match verb {
        "plan" => match args {
            [] => Command::Plan { env: None },
            [env] => Command::Plan {
                env: Some(env_name(env)?),
            },
            _ => return Err(extra_arguments("plan", &args[1..])),
        },
        "apply" | "unlock" => match args {
            [] => {
                return Err(CommandError::new(format!(
                    "Sorry, `/slipway {verb}` needs the environment's name, e.g. \
                     `/slipway {verb} staging`."
                )));
            }
            [env] if verb == "apply" => Command::Apply {
                env: env_name(env)?,
                commit: None,
            },
            // A second word that is not a commit is refused as any extra word is.
            [env, word] if verb == "apply" && CommitPrefix::parse(word).is_some() => {
                Command::Apply {
                    env: env_name(env)?,
                    commit: CommitPrefix::parse(word),
                }
            }
            [env] => Command::Unlock {
                env: env_name(env)?,
            },
            _ => return Err(extra_arguments(verb, &args[1..])),
        },
        "preview" | "approve-policies" => {
            let commit = match args {
                [] => None,
                [word] => Some(commit(word)?),
                _ => return Err(extra_arguments(verb, &args[1..])),
            };
            if verb == "preview" {
                Command::Preview { commit }
            } else {
                Command::ApprovePolicies { commit }
            }
        }
        "help" => match args {
            [] => Command::Help,
            _ => return Err(extra_arguments(verb, args)),
        },
        other => {
            return Err(CommandError::new(format!(
                "Sorry, {} is not a Slipway command.",
                inline_code(&clip(other))
            )));
        }
    };
    Ok(Some(command))
}

/// Checks an environment name (see [`EnvName`]).
fn env_name(word: &str) -> Result<EnvName, CommandError> {
    EnvName::parse(word).map_err(|_| {
        CommandError::new(format!(
            "Sorry, {} is not an environment name.",
            inline_code(&clip(word))
        ))
    })
}

/// Checks a commit prefix (see [`CommitPrefix`]).
fn commit(word: &str) -> Result<CommitPrefix, CommandError> {
    CommitPrefix::parse(word).ok_or_else(|| {
        CommandError::new(format!(
            "Sorry, {} is not a commit: name the head commit you reviewed by its whole id (40 \
             or 64 hex digits).",
            inline_code(&clip(word))
        ))
    })
}

fn extra_arguments(verb: &str, extra: &[&str]) -> CommandError {
    CommandError::new(format!(
        "Sorry, `/slipway {verb}` does not take {}.",
        inline_code(&clip(&extra.join(" ")))
    ))
}

/// At most 40 characters of the user's text, for an error message, with no comment marker
/// ([`crate::render::without_markers`]).
fn clip(s: &str) -> String {
    crate::render::without_markers(&crate::names::short_text(s, 40))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> EnvName {
        EnvName::parse(name).expect("the test's environment names are DNS labels")
    }

    fn cmd(s: &str) -> Option<Command> {
        parse_command(s).expect("a valid command")
    }

    #[test]
    fn a_named_commit_is_the_whole_id_or_its_start() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let whole = CommitPrefix::parse(&sha.to_ascii_uppercase()).expect("40 hex digits");
        assert!(whole.names(sha) && whole.is_whole(sha));
        let start = CommitPrefix::parse("0123456").expect("7 hex digits");
        assert!(start.names(sha) && !start.is_whole(sha));
        assert!(!CommitPrefix::parse("1123456").expect("hex").names(sha));
        let sha256 = "a".repeat(64);
        assert!(CommitPrefix::parse(&sha256).expect("64").is_whole(&sha256));
        assert!(!whole.names("0123"), "longer than the id");
        for bad in ["", "012345", "012345g", "+123456", &"a".repeat(65)] {
            assert_eq!(CommitPrefix::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn valid_commands() {
        let table: &[(&str, Command)] = &[
            ("/slipway plan", Command::Plan { env: None }),
            (
                "/slipway plan staging",
                Command::Plan {
                    env: Some(env("staging")),
                },
            ),
            (
                "  /slipway   plan\t pr-42  ",
                Command::Plan {
                    env: Some(env("pr-42")),
                },
            ),
            (
                "\n\n/slipway apply prod\nthanks!",
                Command::Apply {
                    env: env("prod"),
                    commit: None,
                },
            ),
            (
                "/slipway apply qa 1A2b3C4",
                Command::Apply {
                    env: env("qa"),
                    commit: CommitPrefix::parse("1a2b3c4"),
                },
            ),
            ("/slipway unlock qa", Command::Unlock { env: env("qa") }),
            ("/slipway preview", Command::Preview { commit: None }),
            (
                "/slipway preview 1A2b3C4",
                Command::Preview {
                    commit: CommitPrefix::parse("1a2b3c4"),
                },
            ),
            (
                &format!("/slipway approve-policies {}", "f".repeat(64)),
                Command::ApprovePolicies {
                    commit: CommitPrefix::parse(&"f".repeat(64)),
                },
            ),
            ("/slipway help", Command::Help),
            (
                &format!("/slipway apply {}", "a".repeat(63)),
                Command::Apply {
                    env: env(&"a".repeat(63)),
                    commit: None,
                },
            ),
        ];
        for (text, expected) in table {
            assert_eq!(cmd(text).as_ref(), Some(expected), "{text:?}");
        }
    }

    #[test]
    fn comments_that_are_not_commands() {
        for text in [
            "",
            "   \n\t\n",
            "LGTM",
            "please /slipway apply prod",
            "> /slipway apply prod",
            "/slipwayapply prod",
            "/slipway-bot apply prod",
            "`/slipway apply prod`",
            "thanks\n/slipway apply prod",
        ] {
            assert_eq!(parse_command(text), Ok(None), "{text:?} is not a command");
        }
    }

    #[test]
    fn hostile_and_wrong_commands_are_refused() {
        for text in [
            "/slipway",
            "/slipway apply",
            "/slipway unlock",
            "/slipway apply prod; rm -rf /",
            "/slipway apply $(touch /tmp/pwned)",
            "/slipway apply `id`",
            "/slipway apply prod extra",
            "/slipway apply prod && echo",
            "/slipway apply Prod",
            "/slipway apply -prod",
            "/slipway apply prod-",
            "/slipway apply ../prod",
            "/slipway apply prod\u{a0}x",
            "/slipway plan a b",
            "/slipway preview now",
            "/slipway preview 123456",
            "/slipway preview 1234567g",
            "/slipway preview 1234567 1234567",
            &format!("/slipway approve-policies {}", "a".repeat(65)),
            "/slipway approve-policies HEAD",
            "/slipway help me",
            "/slipway destroy prod",
            "/slipway Plan",
            &format!("/slipway apply {}", "a".repeat(64)),
            &format!("/slipway apply {}", "a".repeat(300)),
        ] {
            let err = parse_command(text).expect_err(text);
            assert!(
                err.to_string().ends_with(USAGE),
                "{text:?}: the reply shows the usage"
            );
        }
    }

    #[test]
    fn errors_quote_user_text_in_code_spans_only() {
        let err = parse_command("/slipway apply @org/admins").expect_err("not an env");
        assert_eq!(
            err.problem(),
            "Sorry, `@org/admins` is not an environment name."
        );
        let err = parse_command("/slipway apply a`b").expect_err("not an env");
        assert_eq!(err.problem(), "Sorry, ``a`b`` is not an environment name.");
        let err = parse_command("/slipway help <!--x").expect_err("an extra argument");
        assert!(
            !err.to_string().contains("<!--"),
            "no comment marker: {err}"
        );
    }
}
