//! Running `git` safely: one place builds every command line and environment.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::GitError;
use crate::error::printable_bytes;

/// Variables that would make git read another repository, index or configuration than the one
/// we name: inherited from a parent git (we may run inside a hook) or from a hostile
/// environment.
const SCRUBBED_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_QUARANTINE_PATH",
    "GIT_REPLACE_REF_BASE",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_GRAFT_FILE",
    "GIT_LITERAL_PATHSPECS",
    "GIT_GLOB_PATHSPECS",
    "GIT_NOGLOB_PATHSPECS",
    "GIT_ICASE_PATHSPECS",
];

/// Configuration given on every command line; it overrides every configuration file.
const CONFIG: &[&str] = &[
    // Never run a hook, even one a repository or a template would install.
    "core.hooksPath=/dev/null",
    // A repository's config could name a program to run as its filesystem monitor.
    "core.fsmonitor=false",
    // Only file, https and ssh: no `ext::` (runs a command), `fd::`, git://, http://.
    "protocol.allow=never",
    "protocol.file.allow=always",
    "protocol.https.allow=always",
    "protocol.ssh.allow=always",
    // A remote that stalls (under 1 KiB/s for a minute) fails the fetch, rather than hold
    // the mirror's fetch lock, and every caller waiting on it, for ever.
    "http.lowSpeedLimit=1024",
    "http.lowSpeedTime=60",
];

/// How to run git against one repository (or none, to probe a path).
#[derive(Clone, Debug)]
pub(crate) struct Git {
    git_dir: Option<PathBuf>,
    /// A URL whose credentials must not appear in errors.
    secret_url: Option<(String, String)>,
    /// An HTTP header git sends to the remote (its credentials), given through git's
    /// environment: never in an argument.
    header: Option<String>,
}

impl Git {
    /// Git not bound to a repository (for `clone` and probing a path).
    pub(crate) fn unbound() -> Git {
        Git {
            git_dir: None,
            secret_url: None,
            header: None,
        }
    }

    /// Git bound to the repository at `git_dir` (an absolute path).
    pub(crate) fn bound(git_dir: PathBuf) -> Git {
        Git {
            git_dir: Some(git_dir),
            secret_url: None,
            header: None,
        }
    }

    /// Redacts `url` as `redacted` wherever it would appear in an error.
    pub(crate) fn redacting(mut self, url: &str, redacted: &str) -> Git {
        if url != redacted {
            self.secret_url = Some((url.to_owned(), redacted.to_owned()));
        }
        self
    }

    /// Sends `header` (`Name: value`) with git's HTTP requests. It is passed in git's
    /// environment (`GIT_CONFIG_*`), which only this user and root may read, never in its
    /// arguments, which anyone on the machine may.
    pub(crate) fn with_header(mut self, header: Option<String>) -> Git {
        self.header = header;
        self
    }

    /// The repository this runs against.
    pub(crate) fn git_dir(&self) -> Option<&Path> {
        self.git_dir.as_deref()
    }

    /// A `git` command with the hardened environment and configuration, stdin closed.
    pub(crate) fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new("git");
        for name in SCRUBBED_ENV {
            command.env_remove(name);
        }
        command
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_ALLOW_PROTOCOL", "file:https:ssh")
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_OPTIONAL_LOCKS", "0")
            // Messages in English: a few are matched below.
            .env("LC_ALL", "C");
        for setting in CONFIG {
            command.arg("-c").arg(setting);
        }
        if let Some(header) = &self.header {
            command
                .env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env("GIT_CONFIG_VALUE_0", header);
        }
        if let Some(dir) = &self.git_dir {
            let mut flag = OsString::from("--git-dir=");
            flag.push(dir);
            command.arg(flag);
        }
        command.args(args).stdin(Stdio::null());
        command
    }

    /// Runs git to completion, capturing its output, whatever its exit status.
    pub(crate) fn output<I, S>(&self, args: I, cwd: Option<&Path>) -> Result<Output, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command(args);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| GitError::Spawn { source })
    }

    /// The error for a failed command.
    pub(crate) fn failure<I, S>(&self, args: I, output: &Output) -> GitError
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        GitError::Command {
            command: self.describe(args),
            status: output.status.to_string(),
            stderr: self.stderr(&output.stderr),
        }
    }

    /// The arguments of a command, for messages.
    pub(crate) fn describe<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let words: Vec<String> = args
            .into_iter()
            .map(|arg| arg.as_ref().to_string_lossy().into_owned())
            .collect();
        self.redact(&words.join(" "))
    }

    /// Git's stderr, for messages: trimmed, bounded, printable, credentials redacted.
    pub(crate) fn stderr(&self, stderr: &[u8]) -> String {
        const MAX: usize = 2_000;
        let lines: Vec<String> = stderr
            .trim_ascii()
            .split(|byte| *byte == b'\n')
            .map(printable_bytes)
            .collect();
        let text = lines.join("; ");
        let text = self.redact(&text);
        match text.char_indices().nth(MAX) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text,
        }
    }

    fn redact(&self, text: &str) -> String {
        match &self.secret_url {
            Some((url, redacted)) => text.replace(url.as_str(), redacted),
            None => text.to_owned(),
        }
    }
}
