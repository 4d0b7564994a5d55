//! `slipway policy test`: the `test_*` rules of a directory's Rego files, run as `opa test`
//! runs them. A test passes when its rule is `true`; `false`, undefined or an error fails it.
//!
//! Fixture plans sit beside the tests as JSON files (made with `slipway plan --output json`):
//! each `NAME.json` under the directory is data at `data.fixtures.NAME`, so a test says
//! `deny with input as data.fixtures.NAME`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::PolicyFile;

/// One test's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    /// `data.slipway.test_denies_deletes`.
    pub name: String,
    /// The file that holds it.
    pub file: String,
    /// `pass`, `fail` or `error`.
    pub outcome: &'static str,
    /// Why it errored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

/// Every test's outcome, and the files that could not be loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TestReport {
    pub tests: Vec<TestResult>,
    /// A file that does not parse, with its location: nothing is run then.
    pub errors: Vec<String>,
}

impl TestReport {
    /// Whether every test passed and every file loaded (and there was a test to run).
    pub fn passed(&self) -> bool {
        self.errors.is_empty()
            && !self.tests.is_empty()
            && self.tests.iter().all(|t| t.outcome == "pass")
    }
}

/// A fixture: its name (the file's stem) and its JSON text.
pub type Fixture = (String, String);

/// The Rego and JSON files under `dir` (paths relative to it, sorted). Hidden directories and
/// symbolic links are skipped.
pub fn read_dir(dir: &Path) -> std::io::Result<(Vec<PolicyFile>, Vec<Fixture>)> {
    let mut rego = Vec::new();
    let mut json = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type()?;
            if name.starts_with('.') || kind.is_symlink() {
                continue;
            }
            let path = entry.path();
            let relative = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            if kind.is_dir() {
                stack.push(path);
            } else if name.ends_with(".rego") {
                rego.push(PolicyFile {
                    path: relative,
                    text: std::fs::read_to_string(&path)?,
                });
            } else if let Some(stem) = name.strip_suffix(".json") {
                json.push((stem.to_string(), std::fs::read_to_string(&path)?));
            }
        }
    }
    rego.sort_by(|a, b| a.path.cmp(&b.path));
    json.sort();
    Ok((rego, json))
}

/// The names of the `test_*` rules `text` defines (a rule's head starts its line).
fn test_rules(text: &str) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    text.lines()
        .filter(|l| l.starts_with("test_"))
        .map(|l| {
            l.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| seen.insert(name.clone()))
        .collect()
}

/// Runs every test of `files`, with `fixtures` (name, JSON text) as `data.fixtures`.
pub fn run(files: &[PolicyFile], fixtures: &[Fixture], timeout: Duration) -> TestReport {
    let mut report = TestReport::default();
    let all: Vec<&PolicyFile> = files.iter().collect();
    let mut engine = match crate::engine_with(&all, timeout) {
        Ok(e) => e,
        Err(e) => {
            report.errors.push(e);
            return report;
        }
    };
    let mut data = serde_json::Map::new();
    for (name, text) in fixtures {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => {
                data.insert(name.clone(), v);
            }
            Err(e) => report.errors.push(format!("{name}.json: {e}")),
        }
    }
    let data = serde_json::json!({ "fixtures": data });
    match regorus::Value::from_json_str(&data.to_string()) {
        Ok(v) => {
            if let Err(e) = engine.add_data(v) {
                report.errors.push(format!("fixtures: {e}"));
            }
        }
        Err(e) => report.errors.push(format!("fixtures: {e}")),
    }
    if !report.errors.is_empty() {
        return report;
    }
    for file in files {
        let package = match crate::meta::read(&file.text) {
            Ok(m) => m.package,
            Err(e) => {
                report.errors.push(format!("{}: {e}", file.path));
                continue;
            }
        };
        for rule in test_rules(&file.text) {
            let name = format!("data.{package}.{rule}");
            let started = Instant::now();
            let value = engine.eval_rule(name.clone());
            let duration_ms = started.elapsed().as_millis() as u64;
            let (outcome, error) = match value {
                Ok(regorus::Value::Bool(true)) => ("pass", None),
                Ok(_) => ("fail", None),
                Err(e) => ("error", Some(e.to_string())),
            };
            report.tests.push(TestResult {
                name,
                file: file.path.clone(),
                outcome,
                error,
                duration_ms,
            });
        }
    }
    report
}
