//! Secrets kept in the repository, encrypted: the `secrets:` entry of `slipway.yaml` (who can
//! decrypt) and the secrets file (`slipway.secrets.yaml` beside it, written by
//! `slipway secret set`) holding one age-encrypted value per name, with optional overrides per
//! environment or family.
//!
//! This module only reads and writes the file's structure; it never sees a plaintext. The
//! engine decrypts the values a desired state references, just before a provider needs them.
//!
//! ```yaml
//! # slipway.secrets.yaml
//! version: 1
//! secrets:
//!   api_key:
//!     value: |
//!       -----BEGIN AGE ENCRYPTED FILE-----
//!       ...
//!       -----END AGE ENCRYPTED FILE-----
//!     environments:
//!       prod: |
//!         -----BEGIN AGE ENCRYPTED FILE-----
//!         ...
//! ```

use std::collections::BTreeMap;

use crate::diag::{Diagnostic, Location, Pos, did_you_mean};
use crate::yaml::{self, Node, Value};

/// The secrets file's name, in the folder of `slipway.yaml`, unless `secrets.file` says
/// otherwise.
pub const DEFAULT_FILE: &str = "slipway.secrets.yaml";

const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
const ARMOR_END: &str = "-----END AGE ENCRYPTED FILE-----";

/// Everything the repository says about secrets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Secrets {
    /// age recipients (`age1...`) that `slipway secret set` encrypts to: the public keys of the
    /// engines that deploy this stack (and of people who may read the values).
    pub recipients: Vec<String>,
    /// The secrets file, repository-relative.
    pub file: String,
    /// Whether the file was found at this commit.
    pub file_found: bool,
    /// Encrypted values by secret name.
    pub entries: BTreeMap<String, SecretEntry>,
}

/// One secret: its default value and per-environment overrides, all ASCII-armored age.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SecretEntry {
    /// Where it is defined.
    pub location: Option<Location>,
    /// The value for environments without an override.
    pub value: Option<String>,
    /// Overrides by environment name or by family (`environments:` entry) name.
    pub environments: BTreeMap<String, String>,
}

impl Secrets {
    /// The ciphertext that environment `env`, following the `environments:` entry
    /// `definition`, uses for `name`: its own override, else its family's, else the default.
    pub fn ciphertext_for(&self, name: &str, env: &str, definition: &str) -> Option<&str> {
        let entry = self.entries.get(name)?;
        entry
            .environments
            .get(env)
            .or_else(|| entry.environments.get(definition))
            .or(entry.value.as_ref())
            .map(String::as_str)
    }
}

/// Whether `s` is a valid secret name: 1–128 of `[A-Za-z0-9_-]`, the characters a
/// `${secrets.NAME}` reference accepts.
pub fn is_secret_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `s` looks like an age recipient (`age1` and bech32 characters).
pub fn is_recipient(s: &str) -> bool {
    s.len() > 10
        && s.starts_with("age1")
        && s[4..]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Parses a secrets file. Returns what could be read and every problem, located in `path`.
pub fn parse_file(
    path: &str,
    text: &str,
    limits: yaml::Limits,
) -> (BTreeMap<String, SecretEntry>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut entries = BTreeMap::new();
    let (root, errors) = yaml::parse(text, limits);
    for e in errors {
        let mut d = Diagnostic::error(path, e.pos, e.message);
        d.hint = e.hint;
        diags.push(d);
    }
    let Some(root) = root else {
        return (entries, diags);
    };
    let rewrite =
        "`slipway secret set NAME` writes this file; restore it from Git if it was edited by hand";
    let Value::Map(top) = &root.value else {
        push(
            &mut diags,
            path,
            root.pos,
            format!("`{path}` must be a mapping"),
            rewrite,
        );
        return (entries, diags);
    };
    let mut version_seen = false;
    for (key, value) in top {
        match &key.value {
            Value::Str(k) if k == "version" => {
                version_seen = true;
                if value.value != Value::Int(1) {
                    push(
                        &mut diags,
                        path,
                        value.pos,
                        "unsupported secrets file version".into(),
                        "this slipway understands `version: 1`",
                    );
                }
            }
            Value::Str(k) if k == "secrets" => {
                let items: &[(Node, Node)] = match &value.value {
                    Value::Map(items) => items,
                    Value::Null => &[],
                    _ => {
                        push(
                            &mut diags,
                            path,
                            value.pos,
                            "`secrets` must be a mapping of names".into(),
                            rewrite,
                        );
                        continue;
                    }
                };
                for (name_node, entry_node) in items {
                    let Value::Str(name) = &name_node.value else {
                        push(
                            &mut diags,
                            path,
                            name_node.pos,
                            "a secret name must be a string".into(),
                            rewrite,
                        );
                        continue;
                    };
                    if !is_secret_name(name) {
                        push(
                            &mut diags,
                            path,
                            name_node.pos,
                            format!("secret name `{name}` is not valid"),
                            "use letters, digits, `_` and `-`, at most 128 characters",
                        );
                        continue;
                    }
                    let entry = parse_entry(path, name, entry_node, &mut diags);
                    entries.insert(
                        name.clone(),
                        SecretEntry {
                            location: Some(Location {
                                file: path.to_string(),
                                pos: name_node.pos,
                            }),
                            ..entry
                        },
                    );
                }
            }
            Value::Str(k) => {
                let hint = match did_you_mean(k, ["version", "secrets"]) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "the fields of a secrets file are: version, secrets".into(),
                };
                diags.push(
                    Diagnostic::error(
                        path,
                        key.pos,
                        format!("unknown field `{k}` in the secrets file"),
                    )
                    .with_hint(&hint),
                );
            }
            _ => diags.push(
                Diagnostic::error(path, key.pos, "a key must be a string").with_hint(rewrite),
            ),
        }
    }
    if !version_seen {
        diags.push(
            Diagnostic::error(path, root.pos, "missing `version`")
                .with_hint("add `version: 1` at the top"),
        );
    }
    (entries, diags)
}

fn push(diags: &mut Vec<Diagnostic>, path: &str, pos: Pos, message: String, hint: &str) {
    diags.push(Diagnostic::error(path, pos, message).with_hint(hint));
}

fn parse_entry(path: &str, name: &str, node: &Node, diags: &mut Vec<Diagnostic>) -> SecretEntry {
    let mut entry = SecretEntry::default();
    let Value::Map(fields) = &node.value else {
        diags.push(
            Diagnostic::error(
                path,
                node.pos,
                format!("secret `{name}` must be a mapping with `value` and/or `environments`"),
            )
            .with_hint("`slipway secret set NAME` writes entries in this form"),
        );
        return entry;
    };
    for (k, v) in fields {
        match &k.value {
            Value::Str(f) if f == "value" => {
                entry.value = armored(path, &format!("secret `{name}`"), v, diags);
            }
            Value::Str(f) if f == "environments" => {
                let Value::Map(envs) = &v.value else {
                    diags.push(
                        Diagnostic::error(
                            path,
                            v.pos,
                            format!("`environments` of secret `{name}` must be a mapping"),
                        )
                        .with_hint("map environment or family names to encrypted values"),
                    );
                    continue;
                };
                for (env, value) in envs {
                    let Value::Str(env) = &env.value else {
                        diags.push(Diagnostic::error(
                            path,
                            env.pos,
                            "an environment name must be a string",
                        ));
                        continue;
                    };
                    if let Some(c) =
                        armored(path, &format!("secret `{name}` for `{env}`"), value, diags)
                    {
                        entry.environments.insert(env.clone(), c);
                    }
                }
            }
            Value::Str(f) => diags.push(
                Diagnostic::error(
                    path,
                    k.pos,
                    format!("unknown field `{f}` in secret `{name}`"),
                )
                .with_hint("the fields of a secret are: value, environments"),
            ),
            _ => diags.push(Diagnostic::error(path, k.pos, "a key must be a string")),
        }
    }
    if entry.value.is_none() && entry.environments.is_empty() {
        diags.push(
            Diagnostic::error(path, node.pos, format!("secret `{name}` has no value"))
                .with_hint("set one with `slipway secret set NAME`"),
        );
    }
    entry
}

fn armored(path: &str, what: &str, node: &Node, diags: &mut Vec<Diagnostic>) -> Option<String> {
    match &node.value {
        Value::Str(s)
            if s.trim_start().starts_with(ARMOR_BEGIN) && s.trim_end().ends_with(ARMOR_END) =>
        {
            Some(s.trim().to_string() + "\n")
        }
        _ => {
            diags.push(
                Diagnostic::error(path, node.pos, format!("{what} is not an age-encrypted value"))
                    .with_hint("values are ASCII-armored age ciphertexts written by `slipway secret set`; never put a plaintext here"),
            );
            None
        }
    }
}

/// Writes a secrets file: sorted, one armored block per value, so that two people setting
/// different secrets produce changes Git merges cleanly.
pub fn write_file(entries: &BTreeMap<String, SecretEntry>) -> String {
    let mut out = String::from(
        "# Written by `slipway secret set`: values are age-encrypted to the recipients in\n\
         # slipway.yaml (`secrets.recipients`). Commit this file; never edit it by hand.\n\
         version: 1\nsecrets:\n",
    );
    if entries.is_empty() {
        out.truncate(out.len() - 1);
        out.push_str(" {}\n");
        return out;
    }
    let block = |out: &mut String, indent: &str, text: &str| {
        out.push_str("|\n");
        for line in text.trim_end().lines() {
            out.push_str(indent);
            out.push_str(line);
            out.push('\n');
        }
    };
    for (name, entry) in entries {
        out.push_str(&format!("  {name}:\n"));
        if let Some(value) = &entry.value {
            out.push_str("    value: ");
            block(&mut out, "      ", value);
        }
        if !entry.environments.is_empty() {
            out.push_str("    environments:\n");
            for (env, value) in &entry.environments {
                out.push_str(&format!("      {}: ", quote_key(env)));
                block(&mut out, "        ", value);
            }
        }
    }
    out
}

fn quote_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !key.starts_with('-')
    {
        key.to_string()
    } else {
        serde_json::to_string(key).expect("a string is always serializable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armor(tag: &str) -> String {
        format!("{ARMOR_BEGIN}\n{tag}\n{ARMOR_END}\n")
    }

    #[test]
    fn written_files_read_back() {
        let mut entries = BTreeMap::new();
        entries.insert(
            "api_key".to_string(),
            SecretEntry {
                location: None,
                value: Some(armor("YWJj")),
                environments: [("prod".to_string(), armor("ZGVm"))].into(),
            },
        );
        entries.insert(
            "only-prod".to_string(),
            SecretEntry {
                location: None,
                value: None,
                environments: [("prod".to_string(), armor("Z2hp"))].into(),
            },
        );
        let text = write_file(&entries);
        let (read, diags) = parse_file("s.yaml", &text, yaml::Limits::default());
        assert!(diags.is_empty(), "{diags:?}\n{text}");
        let secrets = Secrets {
            entries: read,
            ..Secrets::default()
        };
        assert_eq!(
            secrets.ciphertext_for("api_key", "qa", "qa"),
            Some(armor("YWJj").as_str())
        );
        assert_eq!(
            secrets.ciphertext_for("api_key", "prod", "prod"),
            Some(armor("ZGVm").as_str())
        );
        assert_eq!(
            secrets.ciphertext_for("only-prod", "pr-1", "previews"),
            None
        );
        assert_eq!(
            secrets.ciphertext_for("only-prod", "prod", "prod"),
            Some(armor("Z2hp").as_str())
        );
        assert_eq!(
            write_file(&secrets.entries),
            text,
            "writing is deterministic"
        );
        let empty = write_file(&BTreeMap::new());
        assert!(
            parse_file("s.yaml", &empty, yaml::Limits::default())
                .1
                .is_empty(),
            "{empty}"
        );
    }

    #[test]
    fn plaintext_and_junk_are_refused_with_a_location() {
        let text =
            "version: 1\nsecrets:\n  db: { value: hunter2 }\n  bad name: { value: x }\n  k: 3\n";
        let (entries, diags) = parse_file("s.yaml", text, yaml::Limits::default());
        assert!(entries.get("db").is_some_and(|e| e.value.is_none()));
        let messages: Vec<String> = diags
            .iter()
            .map(|d| {
                format!(
                    "{}:{} {}",
                    d.location.pos.line, d.location.pos.col, d.message
                )
            })
            .collect();
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("3:") && m.contains("not an age-encrypted value")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("`bad name` is not valid")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("secret `k` must be a mapping")),
            "{messages:?}"
        );
        assert!(
            !messages.iter().any(|m| m.contains("hunter2")),
            "never echo a would-be plaintext: {messages:?}"
        );
    }

    #[test]
    fn recipients_and_names() {
        assert!(is_recipient(
            "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
        ));
        assert!(!is_recipient("ssh-ed25519 AAAA"));
        assert!(!is_recipient("age1UPPER"));
        assert!(is_secret_name("db_password"));
        assert!(!is_secret_name("a b"));
        assert!(!is_secret_name(""));
    }
}
