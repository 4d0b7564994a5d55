//! Secrets: decrypting the repository's age-encrypted values for an apply, encrypting new ones
//! (`slipway secret set`), and redacting every known secret value from what the engine says.
//!
//! Plaintexts live only in memory, in [`SecretValue`]s (whose `Debug` is redacted), in the
//! resolved configurations handed to providers, and in the store's sealed columns.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::RwLock;

use age::secrecy::ExposeSecret;

use crate::config::SecretsConfig;

/// A decrypted secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// The plaintext, for the resolver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// Where the engine's identity comes from, for messages.
fn identity_source(config: &SecretsConfig, home: &Path) -> String {
    if let Some(var) = &config.identity_env {
        format!("${var}")
    } else {
        default_identity_path(config, home).display().to_string()
    }
}

/// The identity file the engine reads: `[secrets] identity_file`, or `<home>/age.key`.
pub fn default_identity_path(config: &SecretsConfig, home: &Path) -> PathBuf {
    config
        .identity_file
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join("age.key"))
}

/// Reads the engine's age identities. Errors say where they were looked for and how to make
/// one.
pub fn load_identities(
    config: &SecretsConfig,
    home: &Path,
) -> Result<Vec<age::x25519::Identity>, String> {
    let text = if let Some(var) = &config.identity_env {
        std::env::var(var).map_err(|_| {
            format!("no age identity: [secrets] identity_env names ${var}, which is not set")
        })?
    } else {
        let path = default_identity_path(config, home);
        std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "no age identity at {}: run `slipway secret keygen` to make one (and add its \
                     recipient to `secrets.recipients` in slipway.yaml), or set [secrets] \
                     identity_file in the engine configuration",
                    path.display()
                )
            } else {
                format!("cannot read the age identity {}: {e}", path.display())
            }
        })?
    };
    let identities: Vec<age::x25519::Identity> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .map(|l| {
            age::x25519::Identity::from_str(l).map_err(|e| {
                format!(
                    "the age identity in {} is not valid: {e}",
                    identity_source(config, home)
                )
            })
        })
        .collect::<Result<_, _>>()?;
    if identities.is_empty() {
        return Err(format!(
            "{} holds no AGE-SECRET-KEY line",
            identity_source(config, home)
        ));
    }
    Ok(identities)
}

/// Decrypts the armored `ciphertext` of secret `name`. The error names the secret, never a
/// value.
pub fn decrypt(
    name: &str,
    ciphertext: &str,
    identities: &[age::x25519::Identity],
) -> Result<SecretValue, String> {
    let decryptor =
        age::Decryptor::new_buffered(age::armor::ArmoredReader::new(ciphertext.as_bytes()))
            .map_err(|e| format!("secret `{name}` is not a valid age ciphertext: {e}"))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => format!(
                "secret `{name}` cannot be decrypted with this engine's age identity: it was not \
                 encrypted to it; add the engine's recipient to `secrets.recipients` in \
                 slipway.yaml and set the secret again"
            ),
            other => format!("secret `{name}` cannot be decrypted: {other}"),
        })?;
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut plain)
        .map_err(|e| format!("secret `{name}` cannot be decrypted: {e}"))?;
    String::from_utf8(plain)
        .map(SecretValue)
        .map_err(|_| format!("secret `{name}` is not UTF-8 text"))
}

/// Encrypts `plaintext` to every recipient, ASCII-armored.
pub fn encrypt(plaintext: &[u8], recipients: &[String]) -> Result<String, String> {
    let parsed: Vec<age::x25519::Recipient> = recipients
        .iter()
        .map(|r| {
            age::x25519::Recipient::from_str(r)
                .map_err(|e| format!("`{r}` is not an age recipient: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if parsed.is_empty() {
        return Err(
            "slipway.yaml lists no `secrets.recipients`: add the engine's recipient \
                    (`slipway secret keygen` prints it) before setting secrets"
                .into(),
        );
    }
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| format!("cannot encrypt: {e}"))?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    let mut writer = encryptor
        .wrap_output(armor)
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    writer
        .write_all(plaintext)
        .and_then(|()| writer.finish().and_then(|armor| armor.finish()))
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    String::from_utf8(out).map_err(|_| "age armor is always ASCII".to_string())
}

/// Makes a new identity at `path` (mode 0600, never overwriting) and returns its recipient.
pub fn keygen(path: &Path) -> Result<String, String> {
    let identity = age::x25519::Identity::generate();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "{} already exists; `slipway secret recipient` prints its recipient",
                    path.display()
                )
            } else {
                format!("cannot create {}: {e}", path.display())
            }
        })?;
    let recipient = identity.to_public().to_string();
    writeln!(
        file,
        "# Slipway's age identity. Recipient: {recipient}\n{}",
        identity.to_string().expose_secret()
    )
    .and_then(|()| file.sync_all())
    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(recipient)
}

/// The recipient of the first identity in the engine's identity source.
pub fn recipient(config: &SecretsConfig, home: &Path) -> Result<String, String> {
    let identities = load_identities(config, home)?;
    Ok(identities[0].to_public().to_string())
}

/// Replaces every known secret value in text with `<redacted>`. Values shorter than 4
/// characters are not redacted (they would shred ordinary words); such secrets are refused
/// nowhere, but they are not secrets worth the name.
#[derive(Default)]
pub struct Redactor {
    values: RwLock<Vec<String>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor")
    }
}

/// What replaces a secret value.
pub const REDACTED: &str = "<redacted>";

impl Redactor {
    /// Adds a value to hide (and each line of one of several lines: see
    /// [`slipway_core::redact::hidden_texts`]).
    pub fn add(&self, value: &str) {
        let texts = slipway_core::redact::hidden_texts(value);
        if texts.is_empty() {
            return;
        }
        let mut values = self.values.write().unwrap_or_else(|e| e.into_inner());
        for text in texts {
            if !values.iter().any(|v| v == text) {
                values.push(text.to_string());
            }
        }
        // Longest first, so that a secret containing another is hidden whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// Adds the values of the outputs named secret.
    pub fn add_outputs(&self, outputs: &serde_json::Value, secret: &[String]) {
        for name in secret {
            match outputs.get(name) {
                Some(serde_json::Value::String(s)) => self.add(s),
                Some(other) if !other.is_null() => self.add(&other.to_string()),
                _ => {}
            }
        }
    }

    /// `text` with every known value replaced.
    pub fn redact(&self, text: &str) -> String {
        let values = self.values.read().unwrap_or_else(|e| e.into_inner());
        let mut out = text.to_string();
        for v in values.iter() {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), REDACTED);
            }
        }
        out
    }

    /// Whether any value is known.
    pub fn is_empty(&self) -> bool {
        self.values
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

/// What opens a bound plaintext: `slipway-secret-v1`, the secret's name, the environment or
/// family it was set for (`*` for the default), each on its own line, then the value.
const BOUND: &str = "slipway-secret-v1\n";

/// The plaintext `slipway secret set` encrypts: `value` bound to secret `name` and to the
/// environment or family `scope` (`None`: the default, for every environment). age
/// authenticates what it encrypts, so the binding cannot be altered without the engine's
/// identity: a ciphertext copied into another secret, or from prod's override into a
/// branch's secrets file, does not decrypt for anything else.
pub fn bind(name: &str, scope: Option<&str>, value: &[u8]) -> Vec<u8> {
    let mut out = format!("{BOUND}{name}\n{}\n", scope.unwrap_or("*")).into_bytes();
    out.extend_from_slice(value);
    out
}

/// Which environment a secret is decrypted for: its name and the `environments:` entry it
/// follows (itself, or its family).
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The environment's name.
    pub environment: &'a str,
    /// Its definition: itself for a static environment, its family otherwise.
    pub definition: &'a str,
}

/// The value of secret `name` from its decrypted `plain` text, checked against its binding.
/// A plaintext without one (set before bindings existed) is taken as it is.
fn unbind(name: &str, plain: SecretValue, scope: Scope<'_>) -> Result<SecretValue, String> {
    let Some(rest) = plain.0.strip_prefix(BOUND) else {
        return Ok(plain);
    };
    let mut parts = rest.splitn(3, '\n');
    let (Some(bound_name), Some(bound_scope), Some(value)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "secret `{name}` has a malformed binding; set it again"
        ));
    };
    if bound_name != name {
        return Err(format!(
            "secret `{name}`'s ciphertext was set for the secret `{bound_name}`, not for it: \
             ciphertexts are not copied between secrets; set it with `slipway secret set {name}`"
        ));
    }
    if bound_scope != "*" && bound_scope != scope.environment && bound_scope != scope.definition {
        return Err(format!(
            "secret `{name}`'s ciphertext was set for `{bound_scope}` only, not for \
             environment `{}` (of `{}`): an override is never copied to another environment; \
             set one for it with `slipway secret set {name} --env {}`",
            scope.environment, scope.definition, scope.definition
        ));
    }
    Ok(SecretValue(value.to_string()))
}

/// Decrypts every secret in `ciphertexts` (name → armored value) for the environment
/// `scope`, refusing a ciphertext bound to another secret or environment.
pub fn decrypt_all(
    ciphertexts: &BTreeMap<String, String>,
    config: &SecretsConfig,
    home: &Path,
    scope: Scope<'_>,
) -> Result<BTreeMap<String, SecretValue>, String> {
    if ciphertexts.is_empty() {
        return Ok(BTreeMap::new());
    }
    let identities = load_identities(config, home).map_err(|e| {
        let names: Vec<&str> = ciphertexts.keys().map(String::as_str).collect();
        format!("cannot decrypt secret(s) {}: {e}", names.join(", "))
    })?;
    ciphertexts
        .iter()
        .map(|(name, c)| {
            let plain = decrypt(name, c, &identities)?;
            Ok((name.clone(), unbind(name, plain, scope)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_keygen_decrypt_and_the_errors_name_the_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("age.key");
        let recipient = keygen(&key).expect("keygen");
        assert!(recipient.starts_with("age1"));
        assert!(keygen(&key).unwrap_err().contains("already exists"));
        let config = SecretsConfig::default();
        assert_eq!(
            self::recipient(&config, dir.path()).expect("recipient"),
            recipient
        );
        let armored = encrypt(b"s3cr3t-value", std::slice::from_ref(&recipient)).expect("encrypt");
        assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        assert!(!armored.contains("s3cr3t"));
        let ids = load_identities(&config, dir.path()).expect("identities");
        let value = decrypt("api_key", &armored, &ids).expect("decrypt");
        assert_eq!(value.expose(), "s3cr3t-value");
        assert_eq!(format!("{value:?}"), "SecretValue(<redacted>)");

        // Encrypted to someone else: a clear error naming the secret, no value.
        let other = keygen(&dir.path().join("other.key")).expect("keygen");
        let foreign = encrypt(b"s3cr3t-value", &[other]).expect("encrypt");
        let e = decrypt("api_key", &foreign, &ids).unwrap_err();
        assert!(
            e.contains("secret `api_key`") && e.contains("recipients"),
            "{e}"
        );
        let e = decrypt(
            "api_key",
            "-----BEGIN AGE ENCRYPTED FILE-----\ngarbage\n-----END AGE ENCRYPTED FILE-----\n",
            &ids,
        )
        .unwrap_err();
        assert!(e.contains("secret `api_key`"), "{e}");
        // No identity at all.
        let empty = tempfile::tempdir().expect("tempdir");
        let dev = Scope {
            environment: "dev",
            definition: "dev",
        };
        let e = decrypt_all(
            &[("db".to_string(), armored)].into(),
            &config,
            empty.path(),
            dev,
        )
        .unwrap_err();
        assert!(
            e.contains("secret(s) db") && e.contains("slipway secret keygen"),
            "{e}"
        );
        assert!(encrypt(b"x", &[]).unwrap_err().contains("recipients"));
    }

    #[test]
    fn a_bound_ciphertext_decrypts_only_for_its_secret_and_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recipient = keygen(&dir.path().join("age.key")).expect("keygen");
        let config = SecretsConfig::default();
        let seal = |name: &str, scope: Option<&str>| {
            encrypt(
                &bind(name, scope, b"v\nalue"),
                std::slice::from_ref(&recipient),
            )
            .expect("encrypt")
        };
        let open = |name: &str, ciphertext: String, environment: &str, definition: &str| {
            decrypt_all(
                &[(name.to_string(), ciphertext)].into(),
                &config,
                dir.path(),
                Scope {
                    environment,
                    definition,
                },
            )
            .map(|m| m[name].expose().to_string())
        };
        // The default: every environment; an override: its environment or family only.
        assert_eq!(
            open("t", seal("t", None), "br-x", "previews").as_deref(),
            Ok("v\nalue")
        );
        assert_eq!(
            open("t", seal("t", Some("prod")), "prod", "prod").as_deref(),
            Ok("v\nalue")
        );
        assert_eq!(
            open("t", seal("t", Some("previews")), "br-x", "previews").as_deref(),
            Ok("v\nalue")
        );
        // prod's override copied to a preview (as its default, say): refused.
        let e = open("t", seal("t", Some("prod")), "br-x", "previews").unwrap_err();
        assert!(
            e.contains("set for `prod` only") && !e.contains("alue"),
            "{e}"
        );
        // Another secret's ciphertext under this name: refused.
        let e = open("t", seal("db_password", None), "dev", "dev").unwrap_err();
        assert!(e.contains("`db_password`"), "{e}");
        // A ciphertext from before bindings: taken as it is.
        let legacy = encrypt(b"old", std::slice::from_ref(&recipient)).expect("encrypt");
        assert_eq!(open("t", legacy, "dev", "dev").as_deref(), Ok("old"));
    }

    /// A secret of several lines printed a line at a time (as logs are read) is hidden.
    #[test]
    fn the_redactor_hides_each_line_of_a_secret_of_several_lines() {
        let r = Redactor::default();
        r.add("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0BAQEF\n-----END PRIVATE KEY-----\n");
        assert_eq!(r.redact("key line: hkiG9w0BAQEF"), "key line: <redacted>");
        assert_eq!(
            r.redact("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0BAQEF\n-----END PRIVATE KEY-----\n"),
            "<redacted>",
            "whole, it goes whole"
        );
    }

    #[test]
    fn the_redactor_hides_longest_values_first() {
        let r = Redactor::default();
        r.add("abc");
        r.add("password123");
        r.add("password123-extended");
        assert_eq!(
            r.redact("a abc password123-extended and password123"),
            "a abc <redacted> and <redacted>"
        );
    }
}
