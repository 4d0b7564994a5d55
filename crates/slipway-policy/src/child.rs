//! Policies evaluated in a child process, bounded in memory (`RLIMIT_AS`) and time (a
//! deadline after which it is killed), so that a policy that allocates or loops without bound
//! costs the child, never the controller.
//!
//! The parent runs `PROGRAM...` (the `slipway` binary's hidden `__policy`), writes one JSON
//! [`Request`] on its standard input, and reads one JSON line per result from its standard
//! output, in the order [`order`] gives. When the child dies or is killed, the policy it was
//! evaluating is the one after the last result it wrote: that one gets the reason, the ones
//! after it are reported as not evaluated, and all of them hold the change.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::{Enforcement, Limits, PolicyFile, PolicyResult, Verdict};

/// What the parent sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The policy files (policies, libraries; tests are ignored).
    pub files: Vec<PolicyFile>,
    /// The plan document.
    pub input: Json,
    /// The limits (the child uses the timeout for regorus's own timer).
    pub limits: Limits,
}

/// The files results are reported for, in the order the child reports them.
pub fn order(files: &[PolicyFile]) -> Vec<String> {
    let split = crate::split(files);
    let mut out: Vec<String> = split.broken.iter().map(|r| r.policy.clone()).collect();
    out.extend(split.policies.iter().map(|(f, _)| f.path.clone()));
    out.sort();
    out
}

/// The child's side: reads a [`Request`] from `input`, writes each result as a JSON line to
/// `output`, flushing after each (so the parent knows how far it got). Exit code 0, or 2 when
/// the request cannot be read.
pub fn serve(input: &mut dyn Read, output: &mut dyn Write) -> i32 {
    let mut text = String::new();
    if let Err(e) = input.read_to_string(&mut text) {
        eprintln!("slipway __policy: cannot read the request: {e}");
        return 2;
    }
    let request: Request = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("slipway __policy: the request is not one: {e}");
            return 2;
        }
    };
    // One policy at a time, each written as soon as it is judged.
    let split = crate::split(&request.files);
    let mut paths = order(&request.files);
    paths.dedup();
    for path in paths {
        let only: Vec<PolicyFile> = request
            .files
            .iter()
            .filter(|f| f.path == path || split.libraries.iter().any(|l| l.path == f.path))
            .cloned()
            .collect();
        let verdict = crate::evaluate(&only, &request.input, &request.limits);
        for result in verdict.results.into_iter().filter(|r| r.policy == path) {
            let line = serde_json::to_string(&result).expect("a result serializes");
            if writeln!(output, "{line}")
                .and_then(|()| output.flush())
                .is_err()
            {
                return 1;
            }
        }
    }
    0
}

/// The parent's side: judges `input` with `files` in a child `program`, within `limits`.
/// Never fails: what goes wrong becomes the reason of the policies it concerns.
pub fn evaluate(
    program: &[OsString],
    files: &[PolicyFile],
    input: &Json,
    limits: &Limits,
) -> Verdict {
    let paths = order(files);
    if paths.is_empty() {
        return Verdict::default();
    }
    let enforcement_of = |path: &str| {
        crate::split(files)
            .policies
            .iter()
            .find(|(f, _)| f.path == path)
            .map_or(Enforcement::Hard, |(_, m)| m.enforcement)
    };
    let fail_from = |done: &[PolicyResult], why: String| -> Verdict {
        let mut results = done.to_vec();
        for (i, path) in paths.iter().skip(done.len()).enumerate() {
            results.push(PolicyResult {
                policy: path.clone(),
                title: None,
                enforcement: enforcement_of(path),
                denies: Vec::new(),
                warns: Vec::new(),
                error: Some(if i == 0 {
                    why.clone()
                } else {
                    format!("not evaluated: the evaluation stopped at an earlier policy ({why})")
                }),
            });
        }
        Verdict { results }
    };
    let Some((exe, args)) = program.split_first() else {
        return fail_from(&[], "no program to evaluate policies with".into());
    };
    let request = Request {
        files: files.to_vec(),
        input: input.clone(),
        limits: *limits,
    };
    let body = serde_json::to_vec(&request).expect("a request serializes");
    let mut command = Command::new(exe);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear();
    let memory = limits.memory;
    // SAFETY: between fork and exec only async-signal-safe calls: setrlimit.
    unsafe {
        command.pre_exec(move || {
            use nix::sys::resource::{Resource, setrlimit};
            setrlimit(Resource::RLIMIT_AS, memory, memory).map_err(std::io::Error::from)?;
            setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return fail_from(&[], format!("cannot start the policy evaluator: {e}")),
    };
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut results = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<PolicyResult>(&line) {
                Ok(r) => results.push(r),
                Err(_) => break,
            }
        }
        results
    });
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.by_ref().take(4096).read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limits.timeout + Duration::from_millis(500);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => break None,
        }
    };
    let _ = writer.join();
    let results = reader.join().unwrap_or_default();
    let stderr = errors.join().unwrap_or_default();
    match status {
        Some(s) if s.success() && results.len() == paths.len() => Verdict { results },
        None => fail_from(&results, crate::out_of_time(limits.timeout)),
        Some(s) => {
            let why = if s.signal().is_some() || stderr.contains("memory allocation") {
                format!(
                    "stopped: the policy went past its memory limit of {} MiB",
                    limits.memory >> 20
                )
            } else {
                format!(
                    "the policy evaluator failed ({s}): {}",
                    stderr.lines().last().unwrap_or("no message")
                )
            };
            fail_from(&results, why)
        }
    }
}
