//! The loader on whole files: the SPEC example, and diagnostics.

use std::collections::BTreeMap;

use slipway_core::EnvName;
use slipway_core::render::{DesiredState, EnvKind, Target, render};
use slipway_core::stack::{FileError, Files, LoadLimits, Stack, load};

/// A name the test knows to be valid.
fn env(name: &str) -> EnvName {
    EnvName::parse(name).expect("the test's environment names are DNS labels")
}

/// `stack` rendered for environment `name` of definition `definition` at `commit`, which must
/// succeed.
fn render_env(
    stack: &Stack,
    name: &str,
    definition: &str,
    kind: EnvKind,
    commit: &str,
) -> DesiredState {
    let target = Target {
        name: &env(name),
        definition,
        kind,
    };
    render(stack, target, commit, &BTreeMap::new()).expect("renders")
}

struct MapFiles(BTreeMap<String, String>);

impl Files for MapFiles {
    fn read(&self, path: &str) -> Result<String, FileError> {
        self.0.get(path).cloned().ok_or(FileError::NotFound)
    }

    fn list(&self) -> Result<Vec<String>, FileError> {
        Ok(self.0.keys().cloned().collect())
    }
}

fn one(text: &str) -> MapFiles {
    MapFiles(
        [("slipway.yaml".to_string(), text.to_string())]
            .into_iter()
            .collect(),
    )
}

const SPEC_EXAMPLE: &str = include_str!("fixtures/valid/spec-example.yaml");

#[test]
fn the_spec_example_validates_unchanged() {
    let loaded = load(&one(SPEC_EXAMPLE), "slipway.yaml", &LoadLimits::default());
    assert!(
        loaded.diagnostics.is_empty(),
        "the SPEC §1 example must validate: {:#?}",
        loaded.diagnostics
    );
    let stack = loaded.stack.expect("a stack");
    assert_eq!(stack.name, "shop");
    let api = &stack.resources["api"];
    assert_eq!(
        api.dependencies
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        vec!["db", "migrate"],
        "api depends on migrate explicitly and on db through ${{resources.db.url}}"
    );
}

#[test]
fn render_applies_environment_overrides_and_is_deterministic() {
    let stack = load(&one(SPEC_EXAMPLE), "slipway.yaml", &LoadLimits::default())
        .stack
        .expect("a stack");
    let prod = render_env(&stack, "prod", "prod", EnvKind::Static, "c0ffee");
    assert_eq!(
        prod.resources["api"].config["env"]["WORKERS"], "4",
        "prod overrides workers"
    );
    assert_eq!(
        prod.resources["api"].config["env"]["DATABASE_URL"], "${resources.db.url}",
        "resource outputs stay references until apply"
    );
    let again = render_env(&stack, "prod", "prod", EnvKind::Static, "c0ffee");
    assert_eq!(prod.canonical_json(), again.canonical_json());
    let qa = render_env(&stack, "qa", "qa", EnvKind::Static, "c0ffee");
    assert_ne!(
        prod.hash, qa.hash,
        "different variables give different hashes"
    );
}

const ARMOR: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
const ARMOR_END: &str = "-----END AGE ENCRYPTED FILE-----";

fn secret_files(stack: &str, secrets: &str) -> MapFiles {
    MapFiles(
        [
            ("deploy/slipway.yaml".to_string(), stack.to_string()),
            (
                "deploy/slipway.secrets.yaml".to_string(),
                secrets.to_string(),
            ),
        ]
        .into_iter()
        .collect(),
    )
}

#[test]
fn secrets_are_referenced_by_name_and_rendered_as_ciphertext_per_environment() {
    let stack = "version: 1\nstack: s\nsecrets: { recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p] }\nenvironments:\n  prod: { track: main }\n  previews: { generate: { branches: ['f/*'] } }\nresources:\n  api: { type: process, command: [app], env: { TOKEN: \"${secrets.token}\" } }\n";
    let secrets = format!(
        "version: 1\nsecrets:\n  token:\n    value: |\n      {ARMOR}\n      ZGVmYXVsdA==\n      {ARMOR_END}\n    environments:\n      prod: |\n        {ARMOR}\n        cHJvZA==\n        {ARMOR_END}\n"
    );
    let loaded = load(
        &secret_files(stack, &secrets),
        "deploy/slipway.yaml",
        &LoadLimits::default(),
    );
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let stack = loaded.stack.expect("a stack");
    assert_eq!(stack.secrets.file, "deploy/slipway.secrets.yaml");
    assert_eq!(stack.secrets.recipients.len(), 1);
    let prod = render_env(&stack, "prod", "prod", EnvKind::Static, "c1");
    let pr = render_env(&stack, "br-f-x", "previews", EnvKind::Generated, "c1");
    assert!(prod.secrets["token"].contains("cHJvZA=="));
    assert!(pr.secrets["token"].contains("ZGVmYXVsdA=="));
    assert_ne!(prod.hash, pr.hash);
    // The config keeps the reference: the value is only known to the engine.
    assert_eq!(
        prod.resources["api"].config["env"]["TOKEN"],
        "${secrets.token}"
    );
}

#[test]
fn secret_problems_are_located() {
    let stack = "version: 1\nstack: s\nsecrets: { recipients: [not-a-key], file: ../x.yaml }\nenvironments:\n  prod: { track: main }\nresources:\n  api: { type: process, command: [app, \"${secrets.tokn}\"] }\n";
    let secrets =
        format!("version: 1\nsecrets:\n  token: {{ value: \"{ARMOR}\\nAA==\\n{ARMOR_END}\" }}\n");
    let loaded = load(
        &secret_files(stack, &secrets),
        "deploy/slipway.yaml",
        &LoadLimits::default(),
    );
    let text: Vec<String> = loaded
        .diagnostics
        .iter()
        .map(|d| {
            format!(
                "{}:{}: {} ({:?})",
                d.location.file, d.location.pos.line, d.message, d.hint
            )
        })
        .collect();
    assert!(
        text.iter()
            .any(|t| t.contains("`not-a-key` is not an age recipient")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t.contains("`..` is not allowed")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t.starts_with("deploy/slipway.yaml:7")
            && t.contains("secret `tokn` is not set")
            && t.contains("did you mean `token`")),
        "{text:#?}"
    );
}

#[test]
fn a_branch_cannot_make_the_loader_read_gigabytes_of_manifests() {
    // Files of 4 MiB each (the engine's limit per file) until the resource's budget is
    // passed: the files past it are not parsed, and the stack is refused with why.
    let object = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: x }\ndata: { a: b }\n# ";
    let padding = "x".repeat(4 * 1024 * 1024 - object.len() - 1);
    let big = format!("{object}{padding}\n");
    let mut files = one(
        "version: 1\nstack: shop\nenvironments: { dev: { track: main } }\nresources:\n  app: { type: kubernetes.manifests, cluster: main, manifests: [\"k8s/*.yaml\"] }\n",
    );
    for i in 0..9 {
        files.0.insert(format!("k8s/{i}.yaml"), big.clone());
    }
    let loaded = load(&files, "slipway.yaml", &LoadLimits::default());
    let errors: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("more than 32 MiB of manifests")),
        "{errors:?}"
    );
    files
        .0
        .retain(|path, _| !path.starts_with("k8s/") || path.as_str() < "k8s/7");
    let loaded = load(&files, "slipway.yaml", &LoadLimits::default());
    assert!(
        !loaded.has_errors(),
        "seven files fit: {:?}",
        loaded.diagnostics
    );
    // The budget is the stack's: a hundred resources naming the same seven files do not get
    // a budget each (3 GiB read and parsed).
    let many: String = (0..100)
        .map(|i| {
            format!(
                "  r{i}: {{ type: kubernetes.manifests, cluster: main, manifests: [\"k8s/*.yaml\"] }}\n"
            )
        })
        .collect();
    files.0.insert(
        "slipway.yaml".into(),
        format!("version: 1\nstack: shop\nenvironments: {{ dev: {{ track: main }} }}\nresources:\n{many}"),
    );
    let loaded = load(&files, "slipway.yaml", &LoadLimits::default());
    let errors: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        errors.len() == 1 && errors[0].contains("more than 32 MiB of manifests"),
        "{errors:?}"
    );
}

/// Each file's expansion is bounded, and so are the stack's files together: small files
/// that each expand to near a file's limit (aliases of aliases), named a thousand times over,
/// made the loader hold billions of values.
#[test]
fn the_stack_s_files_together_are_bounded_by_what_they_expand_to() {
    // Each manifest file: a ConfigMap whose one field copies 10 x 10 x 10 values.
    let object = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: NAME }\ndata: { a: b }\n\
                  x: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n\
                  y: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                  z: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n";
    let mut files = one(
        "version: 1\nstack: shop\nenvironments: { dev: { track: main } }\nresources:\n  app: { type: kubernetes.manifests, cluster: main, manifests: [\"k8s/*.yaml\"] }\n",
    );
    for i in 0..6 {
        files.0.insert(
            format!("k8s/{i}.yaml"),
            object.replace("NAME", &format!("m{i}")),
        );
    }
    let limits = LoadLimits {
        budget: slipway_core::yaml::Budget {
            nodes: 5_000,
            bytes: 1 << 20,
        },
        ..LoadLimits::default()
    };
    let loaded = load(&files, "slipway.yaml", &limits);
    let errors: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        errors.iter().any(|e| e.contains("together expand to more")),
        "{errors:?}"
    );
    // Three of them fit.
    files
        .0
        .retain(|path, _| !path.starts_with("k8s/") || path.as_str() < "k8s/3");
    let loaded = load(&files, "slipway.yaml", &limits);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
}

/// A stack of many resources naming an unknown one many times: each mention was compared
/// with every name and got a hint listing them all (gigabytes of hints, minutes of work, from
/// a file of a megabyte). The problems kept, the hints looked for and the names listed are
/// bounded; the first problems say what is wrong.
#[test]
fn many_unknown_names_make_a_bounded_report() {
    let mut yaml = String::from(
        "version: 1\nstack: shop\nenvironments: { dev: { track: main } }\nresources:\n",
    );
    for i in 0..2_000 {
        yaml.push_str(&format!("  r{i:05}: {{ type: job, command: [x] }}\n"));
    }
    let unknown: Vec<String> = (0..3_000).map(|i| format!("q{i}")).collect();
    yaml.push_str(&format!(
        "  last: {{ type: job, command: [x], depends_on: [{}] }}\n",
        unknown.join(", ")
    ));
    let loaded = load(&one(&yaml), "slipway.yaml", &LoadLimits::default());
    assert!(loaded.has_errors());
    assert!(
        loaded.diagnostics.len() <= 1_001,
        "{}",
        loaded.diagnostics.len()
    );
    let hints: usize = loaded
        .diagnostics
        .iter()
        .map(|d| d.hint.as_ref().map_or(0, String::len))
        .sum();
    assert!(hints < 200_000, "{hints} bytes of hints");
    let said: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        said.iter().any(|d| d.contains("unknown resource `q0`")),
        "the first is said"
    );
    assert!(
        said.iter()
            .any(|d| d.contains("more problems are not shown")),
        "and that there are more"
    );
}

/// A hint compares a word with names at the cost of both lengths: a word or a name of
/// megabytes (an alias of a long string makes one for free) is no typo, and is neither
/// compared nor listed.
#[test]
fn a_long_word_or_name_makes_no_hint_work() {
    let long = "x".repeat(100_000);
    let yaml = format!(
        "version: 1\nstack: shop\nenvironments: {{ dev: {{ track: main }} }}\nresources:\n  ? {long}\n  : {{ type: job, command: [x] }}\n  last: {{ type: job, command: [x], depends_on: [y{long}, q] }}\n"
    );
    let loaded = load(&one(&yaml), "slipway.yaml", &LoadLimits::default());
    assert!(loaded.has_errors());
    let hints: usize = loaded
        .diagnostics
        .iter()
        .map(|d| d.hint.as_ref().map_or(0, String::len))
        .sum();
    assert!(hints < 10_000, "{hints} bytes of hints");
}

/// A manifest's file name is where its objects come from, not a template: a file named
/// `${secrets.DB}.yaml` had the secret substituted into every message and plan naming it.
#[test]
fn a_manifest_s_file_name_is_never_rendered() {
    let mut files = one(
        "version: 1\nstack: shop\nvariables: { greeting: hello }\nenvironments: { dev: { track: main } }\nresources:\n  app: { type: kubernetes.manifests, cluster: main, manifests: [\"k8s/*.yaml\"] }\n",
    );
    files.0.insert(
        "k8s/${vars.greeting}.yaml".into(),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: x }\ndata: { a: b }\n".into(),
    );
    let loaded = load(&files, "slipway.yaml", &LoadLimits::default());
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let stack = loaded.stack.as_ref().expect("a stack");
    let desired = render_env(stack, "dev", "dev", EnvKind::Static, &"a".repeat(40));
    // (Rendered text keeps a literal `${` escaped until the engine's last pass.)
    let source = desired.resources["app"].config["manifests"][0]["source"]
        .as_str()
        .expect("its source");
    assert!(
        source.ends_with("{vars.greeting}.yaml:1:1") && !source.contains("hello"),
        "{source}"
    );
}

#[test]
fn preview_fields_are_read_with_their_defaults() {
    let loaded = load(
        &one(
            "version: 1\nstack: shop\nenvironments:\n  main: { track: main }\n  \
             lab: { track: lab, access: private, sleep_after: 10m }\n  \
             previews:\n    generate: { pull_requests: true }\n    idle_ttl: 24h\n    \
             sleep_after: 30m\n    max_environments: 10\n  \
             open:\n    generate: { branches: [\"demo/*\"] }\n    access: public\n\
             resources:\n  web: { type: process, command: [\"true\"] }\n",
        ),
        "slipway.yaml",
        &LoadLimits::default(),
    );
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    let stack = loaded.stack.expect("a stack");
    let envs = &stack.environments;
    let minutes = |m: u64| Some(std::time::Duration::from_secs(m * 60));
    assert_eq!(envs["previews"].idle_ttl, minutes(24 * 60));
    assert_eq!(envs["previews"].sleep_after, minutes(30));
    assert_eq!(envs["previews"].max_environments, Some(10));
    assert_eq!(envs["lab"].sleep_after, minutes(10));
    use slipway_core::stack::Access;
    use slipway_core::vocab::EnvKind::{Adhoc, Generated, Static};
    assert_eq!(
        envs["previews"].access(Generated),
        Access::Private,
        "private by default"
    );
    assert_eq!(envs["open"].access(Generated), Access::Public, "as written");
    assert_eq!(
        envs["main"].access(Static),
        Access::Public,
        "static: public by default"
    );
    assert_eq!(
        envs["main"].access(Adhoc),
        Access::Private,
        "an ad-hoc copy of a static one"
    );
    assert_eq!(envs["lab"].access(Static), Access::Private, "as written");
    assert_eq!(envs["main"].max_environments, None);
}
