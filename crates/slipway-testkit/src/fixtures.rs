//! The forge fixtures: GitHub's own example webhook deliveries (`@octokit/webhooks-examples`)
//! and REST API description (`@octokit/openapi`), fetched by `slipway-forge`'s
//! `tests/fetch-fixtures.sh` once per target directory, and the fixtures committed under
//! `slipway-forge/tests/fixtures/`; and [`fetched_once`], how such artefacts (axe-core for
//! the UI tests too) are fetched once per target directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

/// `slipway-forge`'s `tests/` directory.
fn forge_tests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../slipway-forge/tests")
}

/// Where `fetch-fixtures.sh` put GitHub's artefacts: `<target dir>/forge-fixtures`
/// (`webhooks-examples/<flavour>/index.json`, `openapi/api.github.com.json`), fetched on first
/// use, once per target directory. `SLIPWAY_FORGE_FIXTURES` names another directory that
/// already holds them.
pub fn fixtures_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SLIPWAY_FORGE_FIXTURES") {
            return PathBuf::from(dir);
        }
        fetched_once("forge-fixtures", &forge_tests().join("fetch-fixtures.sh"))
    })
}

/// The target directory of the running test binary (`<target>/<profile>/deps/<name>`, or a
/// binary's `<target>/<profile>/<name>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running binary has a path");
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent()?.parent())
        .or_else(|| exe.parent()?.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// `<target dir>/<name>`, after `bash script <target dir>/<name>` (which fetches something
/// there, and returns at once when it is there already), run under a file lock so that
/// parallel test processes do not fetch twice.
///
/// # Panics
/// When the script fails: its output says why.
pub fn fetched_once(name: &str, script: &Path) -> PathBuf {
    let target = target_dir();
    let dir = target.join(name);
    std::fs::create_dir_all(&target).expect("create the target dir");
    let lock = std::fs::File::create(target.join(format!("{name}.lock")))
        .expect("create the fetch's lock file");
    lock.lock().expect("lock the fetch's lock file");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "fetching {name} failed: bash {} {}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        script.display(),
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    drop(lock);
    dir
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// A fixture committed under `slipway-forge/tests/fixtures/` (`rel` below it).
pub fn forge_fixture(rel: &str) -> Value {
    read_json(&forge_tests().join("fixtures").join(rel))
}

/// The text of a fixture committed under `slipway-forge/tests/fixtures/`.
pub fn forge_fixture_text(rel: &str) -> String {
    let path = forge_tests().join("fixtures").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
