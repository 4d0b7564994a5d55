//! The core's architecture invariant on stable Rust, in every `cargo test`: load → render →
//! plan does not panic on any input, and a load without errors has a stack that renders for
//! every environment, plans only creates on an empty store, and plans nothing after an apply.
//!
//! This is the cheap sibling of the cargo-fuzz target `fuzz/fuzz_targets/load.rs` and takes
//! inputs in the same format: `slipway.yaml`, then optionally a line `#---include` and the
//! text of `more.yaml`. A crash the fuzzer finds is pasted here as a regression test, named
//! after the bug. Inputs are arbitrary strings and mutations of the seed files: the loader's
//! fixtures, the quickstart example and `fuzz/seeds/load/` (see docs/fuzzing.md).

mod common;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::LazyLock;

use common::applied;
use proptest::prelude::*;
use proptest::sample::Index;
use slipway_core::EnvName;
use slipway_core::plan::{Action, PlanInput, plan};
use slipway_core::render::{EnvKind, Target, render};
use slipway_core::stack::{FileError, Files, LoadLimits, load};

/// The line that separates `slipway.yaml` from `more.yaml` in one input.
const INCLUDE_MARKER: &str = "#---include";

/// The two files of one input; every other path does not exist.
struct Repo<'a> {
    entry: &'a str,
    included: Option<&'a str>,
}

impl Files for Repo<'_> {
    fn read(&self, path: &str) -> Result<String, FileError> {
        match (path, self.included) {
            ("slipway.yaml", _) => Ok(self.entry.to_string()),
            ("more.yaml", Some(text)) => Ok(text.to_string()),
            _ => Err(FileError::NotFound),
        }
    }

    /// `more.yaml` may also be the manifests of a `kubernetes.manifests` resource, so the
    /// manifest reader (multi-document YAML, objects, references) is fuzzed too.
    fn list(&self) -> Result<Vec<String>, FileError> {
        let mut files = vec!["slipway.yaml".to_string()];
        files.extend(self.included.map(|_| "more.yaml".to_string()));
        Ok(files)
    }
}

/// Splits an input at its first marker line into `slipway.yaml` and `more.yaml`.
fn split(text: &str) -> Repo<'_> {
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end_matches(['\n', '\r']) == INCLUDE_MARKER {
            return Repo {
                entry: &text[..start],
                included: Some(&text[start + line.len()..]),
            };
        }
        start += line.len();
    }
    Repo {
        entry: text,
        included: None,
    }
}

/// Runs the pipeline on one input. `Err` says which promise a stack that loaded without
/// errors broke; a panic is caught by [`check`].
fn exercise(input: &str) -> Result<(), String> {
    let loaded = load(&split(input), "slipway.yaml", &LoadLimits::default());
    if loaded.has_errors() {
        return Ok(());
    }
    // Callers (`slipway validate`, `slipway render`, `Engine::prepare`) check `has_errors()`
    // and then `expect` a stack.
    let Some(stack) = loaded.stack else {
        return Err("a load without errors has a stack, but there is none".to_string());
    };
    let preview = EnvName::pull_request(1);
    for (definition, def) in &stack.environments {
        // Its deploy windows judge an instant without panicking, and `until` is allowed.
        let windows = slipway_core::windows::Windows::of(&def.windows);
        if let Some(until) = windows.verdict(1_796_400_000_000).until
            && !windows.verdict(until).allowed()
        {
            return Err(format!(
                "`{definition}`'s windows deny changes at their own `until`"
            ));
        }
        let name = EnvName::parse(definition).map_err(|e| {
            format!("a stack that loaded without errors names environments with DNS labels: {e}")
        })?;
        let target = match def.generate {
            None => Target {
                name: &name,
                definition,
                kind: EnvKind::Static,
            },
            Some(_) => Target {
                name: &preview,
                definition,
                kind: EnvKind::Generated,
            },
        };
        let desired = render(&stack, target, "c1", &BTreeMap::new()).map_err(|e| {
            format!("environment `{definition}` of a stack that loaded without errors renders: {e}")
        })?;
        let again = render(&stack, target, "c1", &BTreeMap::new())
            .map_err(|e| format!("rendering `{definition}` a second time succeeds: {e}"))?;
        if desired.canonical_json() != again.canonical_json() {
            return Err(format!(
                "the same stack and target render to the same bytes (`{definition}` did not)"
            ));
        }
        let first = plan(&desired, &PlanInput::default());
        if let Some(c) = first.changes.iter().find(|c| c.action != Action::Create) {
            return Err(format!(
                "a plan against an empty store only creates, but `{definition}` plans {} {}",
                c.action.as_str(),
                c.resource
            ));
        }
        let after = plan(
            &desired,
            &PlanInput {
                recorded: applied(&desired),
                ..Default::default()
            },
        );
        if let Some(c) = after.changes.iter().find(|c| c.action != Action::Noop) {
            return Err(format!(
                "the plan after an apply is empty, but `{definition}` plans {} {} ({:?})",
                c.action.as_str(),
                c.resource,
                c.reason
            ));
        }
    }
    Ok(())
}

/// `Err` with the input and what went wrong if the pipeline panicked or broke a promise.
fn check(input: &str) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| exercise(input))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(broken)) => Err(format!("{broken}\ninput: {input:?}")),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(a non-string panic payload)".to_string());
            Err(format!(
                "load → render → plan never panics, but it panicked with {message:?}\ninput: {input:?}"
            ))
        }
    }
}

/// Every seed: the loader's fixtures, the quickstart example and the fuzzer's seed corpus,
/// deduplicated, as (file name, bytes).
static SEEDS: LazyLock<Vec<(String, Vec<u8>)>> = LazyLock::new(|| {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let folders = [
        "crates/slipway-core/tests/fixtures/valid",
        "crates/slipway-core/tests/fixtures/invalid",
        "examples/quickstart",
        "fuzz/seeds/load",
    ];
    let mut seeds: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for folder in folders {
        let dir = repository.join(folder);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the seed folder {folder} is readable: {e}"));
        for entry in entries {
            let entry = entry.expect("a seed folder entry is readable");
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.ends_with(".yaml") {
                let bytes = std::fs::read(entry.path())
                    .unwrap_or_else(|e| panic!("the seed {folder}/{file} is readable: {e}"));
                seeds
                    .entry(bytes)
                    .or_insert_with(|| format!("{folder}/{file}"));
            }
        }
    }
    seeds
        .into_iter()
        .map(|(bytes, name)| (name, bytes))
        .collect()
});

/// The seeds that load without errors: mutating these reaches render and plan far more often
/// than mutating the (mostly invalid) rest.
static VALID_SEEDS: LazyLock<Vec<&'static (String, Vec<u8>)>> = LazyLock::new(|| {
    SEEDS
        .iter()
        .filter(|(_, bytes)| {
            let text = String::from_utf8_lossy(bytes);
            let loaded = load(&split(&text), "slipway.yaml", &LoadLimits::default());
            !loaded.has_errors() && loaded.stack.is_some()
        })
        .collect()
});

/// Pieces of slipway.yaml worth splicing in: syntax, reference templates, field and type
/// names, limits, and the include marker.
const TOKENS: &[&str] = &[
    "${",
    "}",
    "$${",
    "${vars.",
    "${env.name}",
    "${env.kind}",
    "${resources.",
    ".url}",
    "${ports.",
    "${secrets.",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!int ",
    "!custom ",
    "[",
    "]",
    "{",
    ", ",
    ": ",
    "- ",
    "? ",
    "\n",
    "\n  ",
    "\n    ",
    "\t",
    "#",
    "'",
    "\"",
    "\\",
    "|\n",
    ">-\n",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "include: [more.yaml]\n",
    "\n#---include\n",
    "depends_on: [",
    "type: process",
    "type: file",
    "type: job",
    "type: exec",
    "type: postgres.database",
    "type: postgres.role",
    "type: kubernetes.manifests",
    "generate: { pull_requests: true, branches: [\"a/*\"] }",
    "track: main",
    "ttl: 72h",
    "protected: true",
    "self_heal: no",
    "ports: [http]",
    "expose: http",
    "health: { http: /h, tcp: http }",
    "mode: \"0644\"",
    "path: ../x",
    "version: 2",
    "99999999999999999999",
    "-0",
    "0x1F",
    "1e309",
    ".nan",
    "~",
    "null",
    "yes",
    "\u{feff}",
    "é",
    "\u{0}",
    "\r\n",
];

/// One edit of a seed's bytes. Positions are indexes into whatever the bytes are by then.
#[derive(Debug, Clone)]
enum Edit {
    SetByte(Index, u8),
    InsertToken(Index, Index),
    DeleteRange(Index, u8),
    Truncate(Index),
    DuplicateLine(Index),
    DeleteLine(Index),
    SwapLines(Index, Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Edit::SetByte(at, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(at, t)| Edit::InsertToken(at, t)),
        (any::<Index>(), 1..32u8).prop_map(|(at, n)| Edit::DeleteRange(at, n)),
        any::<Index>().prop_map(Edit::Truncate),
        any::<Index>().prop_map(Edit::DuplicateLine),
        any::<Index>().prop_map(Edit::DeleteLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

/// An index into `len + 1` positions (the end included).
fn position(at: &Index, len: usize) -> usize {
    at.index(len + 1)
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let mut lines: Vec<Vec<u8>> = bytes
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    match edit {
        Edit::SetByte(at, b) if !bytes.is_empty() => {
            let i = at.index(bytes.len());
            bytes[i] = *b;
            return;
        }
        Edit::SetByte(..) => return,
        Edit::InsertToken(at, t) => {
            let i = position(at, bytes.len());
            let token = TOKENS[t.index(TOKENS.len())].as_bytes();
            bytes.splice(i..i, token.iter().copied());
            return;
        }
        Edit::DeleteRange(at, n) => {
            let i = position(at, bytes.len());
            let end = (i + usize::from(*n)).min(bytes.len());
            bytes.drain(i..end);
            return;
        }
        Edit::Truncate(at) => {
            bytes.truncate(position(at, bytes.len()));
            return;
        }
        Edit::DuplicateLine(at) if !lines.is_empty() => {
            let i = at.index(lines.len());
            let line = lines[i].clone();
            lines.insert(i, line);
        }
        Edit::DeleteLine(at) if !lines.is_empty() => {
            lines.remove(at.index(lines.len()));
        }
        Edit::SwapLines(a, b) if !lines.is_empty() => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        Edit::DuplicateLine(_) | Edit::DeleteLine(_) | Edit::SwapLines(..) => return,
    }
    *bytes = lines.concat();
}

/// Text that looks a little like YAML: tokens and short words, joined.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<Index>().prop_map(|t| TOKENS[t.index(TOKENS.len())].to_string()),
        "[a-z_]{1,8}",
        "[0-9]{1,4}",
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
}

#[test]
fn the_manifest_seed_loads_its_objects_from_the_included_file() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/seeds/load/kubernetes-manifests.yaml"),
    )
    .expect("the seed is readable");
    let loaded = load(&split(&text), "slipway.yaml", &LoadLimits::default());
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let stack = loaded.stack.expect("a stack");
    let manifests = &stack.resources["app"].fields["manifests"];
    assert!(
        matches!(&manifests.value, slipway_core::yaml::Value::Seq(objects) if objects.len() == 2),
        "two objects read from more.yaml: {manifests:?}"
    );
}

#[test]
fn every_seed_goes_through_the_pipeline() {
    assert!(
        SEEDS.len() > 40,
        "the seed folders hold the loader's fixtures (found {})",
        SEEDS.len()
    );
    assert!(
        VALID_SEEDS.len() >= 3,
        "the seeds include valid stacks: the SPEC example, the quickstart, an include (found {})",
        VALID_SEEDS.len()
    );
    for (name, bytes) in SEEDS.iter() {
        if let Err(why) = check(&String::from_utf8_lossy(bytes)) {
            panic!("seed {name}: {why}");
        }
    }
}

/// Found while writing the fuzz target (2026-11-26): an entry file with no YAML document in it
/// (empty, blank, comments only) loaded as no stack and no diagnostic, so `slipway validate`
/// and `slipway render` panicked on `expect("a stack without errors is present")`.
#[test]
fn an_entry_file_without_a_document_is_an_error_not_a_missing_stack() {
    for input in [
        "",
        "\n",
        "   \n\t\n",
        "# only a comment\n",
        "\u{feff}",
        "#---include\nversion: 1\nstack: shop\n",
    ] {
        let loaded = load(&split(input), "slipway.yaml", &LoadLimits::default());
        assert!(
            loaded.has_errors() || loaded.stack.is_some(),
            "slipway.yaml holding {input:?} is reported as an error, not loaded as nothing: {:?}",
            loaded.diagnostics
        );
        if let Err(why) = check(input) {
            panic!("{why}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(
        text in prop_oneof![any::<String>(), "[ -~\n\t]{0,200}", yamlish()],
    ) {
        let outcome = check(&text);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }

    #[test]
    fn mutated_seeds_never_panic(
        seed in any::<Index>(),
        edits in proptest::collection::vec(edit(), 1..8),
    ) {
        let (name, bytes) = &SEEDS[seed.index(SEEDS.len())];
        let mut bytes = bytes.clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        let outcome = check(&String::from_utf8_lossy(&bytes));
        prop_assert!(outcome.is_ok(), "seed {name} after {edits:?}: {}", outcome.unwrap_err());
    }

    #[test]
    fn lightly_mutated_valid_stacks_never_panic(
        seed in any::<Index>(),
        edits in proptest::collection::vec(edit(), 1..3),
    ) {
        let (name, bytes) = VALID_SEEDS[seed.index(VALID_SEEDS.len())];
        let mut bytes = bytes.clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        let outcome = check(&String::from_utf8_lossy(&bytes));
        prop_assert!(outcome.is_ok(), "seed {name} after {edits:?}: {}", outcome.unwrap_err());
    }
}

/// The secrets file on stable Rust, like `fuzz/fuzz_targets/secrets.rs`: never a panic, and a
/// file that parses cleanly is rewritten (as `slipway secret set` does) without losing a value.
fn secrets_file_survives(text: &str) {
    use slipway_core::secrets::{parse_file, write_file};
    use slipway_core::yaml::Limits;
    let (entries, diags) = parse_file("s.yaml", text, Limits::default());
    if !diags.is_empty() {
        return;
    }
    let written = write_file(&entries);
    let (again, diags) = parse_file("s.yaml", &written, Limits::default());
    assert!(diags.is_empty(), "{diags:?}\n{written}");
    let strip = |m: &BTreeMap<String, slipway_core::secrets::SecretEntry>| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.value.clone(), v.environments.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&entries), strip(&again));
}

const ARMORED: &str = "-----BEGIN AGE ENCRYPTED FILE-----\nYWJj\n-----END AGE ENCRYPTED FILE-----";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_secrets_file_parser_never_panics(text in ".{0,400}") {
        secrets_file_survives(&text);
    }

    #[test]
    fn secrets_files_round_trip(
        names in proptest::collection::btree_set("[A-Za-z_][A-Za-z0-9_-]{0,12}", 0..5),
        envs in proptest::collection::btree_set("[a-z][a-z0-9-]{0,8}", 0..3),
        junk in "[ -~]{0,8}",
    ) {
        let mut text = String::from("version: 1\nsecrets:\n");
        for name in &names {
            text.push_str(&format!("  {name}:\n    value: |\n"));
            for line in ARMORED.lines() {
                text.push_str(&format!("      {line}\n"));
            }
            if !envs.is_empty() {
                text.push_str("    environments:\n");
                for env in &envs {
                    text.push_str(&format!("      {env}: \"{}\"\n", ARMORED.replace('\n', "\\n")));
                }
            }
        }
        secrets_file_survives(&text);
        secrets_file_survives(&format!("{text}{junk}"));
    }
}
