//! The corpus of broken stacks: every file gets located, helpful errors and no panic. The
//! rendered diagnostics are snapshots (`cargo insta review` after a deliberate change).

use std::collections::BTreeMap;
use std::path::Path;

use slipway_core::stack::{FileError, Files, LoadLimits, load};

struct Dir<'a>(&'a Path, BTreeMap<String, FileError>);

impl Files for Dir<'_> {
    fn read(&self, path: &str) -> Result<String, FileError> {
        if let Some(e) = self.1.get(path) {
            return Err(e.clone());
        }
        std::fs::read_to_string(self.0.join(path)).map_err(|_| FileError::NotFound)
    }

    fn list(&self) -> Result<Vec<String>, FileError> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("a readable fixture directory") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else if let Ok(relative) = path.strip_prefix(root) {
                    out.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Vec::new();
        walk(self.0, self.0, &mut out);
        Ok(out)
    }
}

fn diagnose(dir: &Path, entry: &str, errors: BTreeMap<String, FileError>) -> String {
    let loaded = load(&Dir(dir, errors), entry, &LoadLimits::default());
    assert!(loaded.has_errors(), "{entry} must be reported as invalid");
    for d in &loaded.diagnostics {
        assert!(
            d.location.pos.line >= 1 && d.location.pos.col >= 1,
            "{entry}: every diagnostic is located: {d}"
        );
        assert!(!d.message.is_empty());
    }
    loaded
        .diagnostics
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_broken_file_gets_a_located_helpful_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("the corpus exists")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .to_string()
        })
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 25, "the corpus has at least 25 broken files");
    for name in names {
        let text = diagnose(&dir, &name, BTreeMap::new());
        insta::assert_snapshot!(name.trim_end_matches(".yaml").to_string(), text);
    }
}

#[test]
fn an_oversized_file_is_refused_with_its_size() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let errors = [(
        "slipway.yaml".to_string(),
        FileError::TooLarge {
            size: 50 * 1024 * 1024,
            limit: 4 * 1024 * 1024,
        },
    )]
    .into_iter()
    .collect();
    let text = diagnose(&dir, "slipway.yaml", errors);
    assert!(
        text.contains("52428800 bytes, larger than the limit"),
        "{text}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    // 09 has one problem; a file with several gets all of them.
    let many = "version: 1\nstack: shop\nresources:\n  a: { type: job, comand: [x] }\n  b: { type: job, command: [\"${vars.nope}\"], depends_on: [zz] }\n";
    let tmp = std::env::temp_dir().join(format!("slipway-many-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("a temp dir");
    std::fs::write(tmp.join("slipway.yaml"), many).expect("write");
    let text = diagnose(&tmp, "slipway.yaml", BTreeMap::new());
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = dir;
    assert_eq!(
        text.lines().filter(|l| l.contains(": error: ")).count(),
        4,
        "four problems, four errors:\n{text}"
    );
}
