//! The name of an environment, checked once where it enters (a CLI argument, an API path or
//! body, a forge command, a store row) and carried as [`EnvName`] from there on.
//!
//! An environment name is a DNS label: 1–63 bytes of `[a-z0-9-]`, not starting or ending with
//! `-` ([`crate::stack::is_dns_label`], the rule the stack, the API, the CLI, the engine, the
//! controller and the forge's command parser each applied on their own before). That shape is
//! what makes a name safe as a path component (`locks/<name>.lock`, `envs/<name>/`), a URL
//! path segment, a subdomain of the preview router and part of a PostgreSQL identifier, so
//! code holding an `EnvName` does not check again.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::{slug, slug_hashed};
use crate::stack::is_dns_label;

/// What an environment name may be, for people: the hint every edge gives with a refusal.
pub const ENV_NAME_RULE: &str = "environment names are DNS labels: lowercase letters, digits \
                                 and `-`, at most 63 characters, not starting or ending with `-`";

/// An environment name: a DNS label. The only ways to make one check it ([`EnvName::parse`],
/// [`FromStr`], [`TryFrom<String>`], serde) or build it from parts that cannot fail the check
/// ([`EnvName::pull_request`], [`EnvName::branch`], [`EnvName::branch_hashed`]).
///
/// It serializes as the plain string, so every JSON shape that held a name as a string is
/// unchanged; deserializing refuses a string that is not a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct EnvName(String);

/// A text that is not an environment name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidEnvName {
    /// The text given.
    pub found: String,
}

impl InvalidEnvName {
    /// The text given, made safe to echo: control characters escaped, cut at 80 characters.
    pub fn printable(&self) -> String {
        let mut out: String = self
            .found
            .chars()
            .take(80)
            .flat_map(char::escape_debug)
            .collect();
        if self.found.chars().count() > 80 {
            out.push('…');
        }
        out
    }
}

impl fmt::Display for InvalidEnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a valid environment name: {ENV_NAME_RULE}",
            self.printable()
        )
    }
}

impl std::error::Error for InvalidEnvName {}

impl EnvName {
    /// Checks `text` and makes it a name.
    pub fn parse(text: &str) -> Result<EnvName, InvalidEnvName> {
        if is_dns_label(text) {
            Ok(EnvName(text.to_owned()))
        } else {
            Err(InvalidEnvName {
                found: text.to_owned(),
            })
        }
    }

    /// The environment of pull request `number`: `pr-42`. Forges number pull requests from
    /// 1 (`u64` in a webhook, `i64` in the store); any integer makes a DNS label of at most 43
    /// bytes (`pr--5` for a negative one, which no forge sends).
    pub fn pull_request(number: impl Into<i128>) -> EnvName {
        EnvName::from_slug(format!("pr-{}", number.into()))
    }

    /// The readable name of branch `branch`'s environment: `br-` and its slug
    /// (`feature/Login` → `br-feature-login`). Two branches can share it; see
    /// [`EnvName::branch_hashed`].
    pub fn branch(branch: &str) -> EnvName {
        EnvName::from_slug(slug("br-", branch))
    }

    /// The name of branch `branch`'s environment that ends in a hash of the branch name, so
    /// that two branches never share it.
    pub fn branch_hashed(branch: &str) -> EnvName {
        EnvName::from_slug(slug_hashed("br-", branch))
    }

    fn from_slug(name: String) -> EnvName {
        debug_assert!(is_dns_label(&name), "a slug is a DNS label: {name:?}");
        EnvName(name)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for EnvName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for EnvName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A name is one safe path component (no `/`, no `..`, never empty): `envs/<name>/` and
/// `locks/<name>.lock` stay inside their directory.
impl AsRef<std::path::Path> for EnvName {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl Borrow<str> for EnvName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl FromStr for EnvName {
    type Err = InvalidEnvName;

    fn from_str(text: &str) -> Result<EnvName, InvalidEnvName> {
        EnvName::parse(text)
    }
}

impl TryFrom<String> for EnvName {
    type Error = InvalidEnvName;

    fn try_from(text: String) -> Result<EnvName, InvalidEnvName> {
        if is_dns_label(&text) {
            Ok(EnvName(text))
        } else {
            Err(InvalidEnvName { found: text })
        }
    }
}

impl TryFrom<&str> for EnvName {
    type Error = InvalidEnvName;

    fn try_from(text: &str) -> Result<EnvName, InvalidEnvName> {
        EnvName::parse(text)
    }
}

impl From<EnvName> for String {
    fn from(name: EnvName) -> String {
        name.0
    }
}

impl PartialEq<str> for EnvName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for EnvName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for EnvName {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<EnvName> for str {
    fn eq(&self, other: &EnvName) -> bool {
        self == other.0
    }
}

impl PartialEq<EnvName> for &str {
    fn eq(&self, other: &EnvName) -> bool {
        *self == other.0
    }
}

impl PartialEq<EnvName> for String {
    fn eq(&self, other: &EnvName) -> bool {
        *self == other.0
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for EnvName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EnvironmentName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Exactly what `is_dns_label` accepts (a test checks the two agree).
        schemars::json_schema!({
            "type": "string",
            "description": "A DNS label: lowercase letters, digits and `-`, at most 63 characters.",
            "pattern": PATTERN,
            "maxLength": 63
        })
    }
}

/// [`is_dns_label`] as a regular expression, for the API's document.
#[cfg(any(feature = "schema", test))]
const PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dns_labels_are_names() {
        for good in [
            "prod",
            "pr-42",
            "br-feature-login",
            "a",
            "0",
            "a-b",
            &"a".repeat(63),
        ] {
            let name = EnvName::parse(good).expect("a DNS label is an environment name");
            assert_eq!(name.as_str(), good, "a name is kept as given");
            assert_eq!(name.to_string(), good, "a name displays as given");
        }
    }

    #[test]
    fn hostile_text_is_refused() {
        for bad in [
            "",
            "-prod",
            "prod-",
            "Prod",
            "PROD",
            "../x",
            "..",
            "a/b",
            "a.b",
            "a_b",
            "a b",
            "a\0b",
            "a\nb",
            "prød",
            "ünïcødé",
            "pr-42\u{200b}",
            &"a".repeat(64),
            &"a".repeat(1000),
        ] {
            let err = EnvName::parse(bad).expect_err("only a DNS label is a name");
            assert_eq!(err.found, bad, "the refusal keeps the text given");
            assert!(
                err.to_string().contains("is not a valid environment name"),
                "the refusal says what is wrong: {err}"
            );
        }
    }

    #[test]
    fn refusals_echo_text_safely() {
        let err = EnvName::parse("a\u{7}b\nc").unwrap_err();
        assert!(
            !err.to_string().chars().any(char::is_control),
            "a refusal carries no control character: {err:?}"
        );
        let long = EnvName::parse(&"x".repeat(500)).unwrap_err().to_string();
        assert!(long.len() < 300, "a refusal quotes at most 80 characters");
    }

    #[test]
    fn serde_is_the_plain_string_and_refuses_bad_names() {
        let name = EnvName::parse("pr-7").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), r#""pr-7""#);
        let back: EnvName = serde_json::from_str(r#""pr-7""#).unwrap();
        assert_eq!(back, name, "a name survives a JSON round trip");
        for bad in [r#""../x""#, r#""PROD""#, r#""""#, "42", "null"] {
            assert!(
                serde_json::from_str::<EnvName>(bad).is_err(),
                "{bad} is refused as a name"
            );
        }
        let err = serde_json::from_str::<EnvName>(r#""a/b""#).unwrap_err();
        assert!(
            err.to_string().contains("is not a valid environment name"),
            "serde's refusal names the problem: {err}"
        );
    }

    #[test]
    fn generated_names() {
        assert_eq!(EnvName::pull_request(42), "pr-42");
        assert_eq!(EnvName::pull_request(7_i64), "pr-7");
        for number in [i128::from(u64::MAX), i128::from(i64::MIN), 0] {
            let name = EnvName::pull_request(number);
            assert!(EnvName::parse(&name).is_ok(), "{name} is a name");
        }
        assert_eq!(EnvName::branch("feature/Login"), "br-feature-login");
        assert_eq!(EnvName::branch("login"), "br-login");
        assert_ne!(
            EnvName::branch_hashed("feature/x"),
            EnvName::branch_hashed("feature-x"),
            "hashed branch names never collide"
        );
        for branch in [
            "$(touch /tmp/pwned)",
            "",
            "ü",
            "-",
            "../../etc",
            &"a".repeat(300),
        ] {
            for name in [EnvName::branch(branch), EnvName::branch_hashed(branch)] {
                assert!(
                    EnvName::parse(&name).is_ok(),
                    "{branch:?} gave {name:?}, which is a name"
                );
            }
        }
    }

    #[test]
    fn the_schema_pattern_is_the_rule() {
        // A tiny matcher for exactly PATTERN, so that the document and the code cannot drift.
        fn matches_pattern(s: &str) -> bool {
            assert_eq!(PATTERN, "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$");
            let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            let b = s.as_bytes();
            match b.len() {
                0 => false,
                1 => ok(b[0]),
                n => {
                    n <= 63
                        && ok(b[0])
                        && ok(b[n - 1])
                        && b[1..n - 1].iter().all(|&c| ok(c) || c == b'-')
                }
            }
        }
        for s in [
            "a",
            "a-",
            "-a",
            "a-b",
            "A",
            "",
            &"b".repeat(63),
            &"b".repeat(64),
        ] {
            assert_eq!(matches_pattern(s), is_dns_label(s), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused(text in any::<String>()) {
            match EnvName::parse(&text) {
                Ok(name) => {
                    prop_assert_eq!(name.as_str(), text.as_str());
                    let shown = format!("{name}");
                    prop_assert_eq!(EnvName::parse(&shown), Ok(name.clone()));
                }
                Err(err) => prop_assert_eq!(err.found, text),
            }
        }

        #[test]
        fn label_like_text_round_trips(text in "[a-z0-9-]{0,70}") {
            if let Ok(name) = EnvName::parse(&text) {
                let shown = format!("{name}");
                prop_assert_eq!(EnvName::parse(&shown), Ok(name.clone()));
                let json = serde_json::to_string(&name).unwrap();
                prop_assert_eq!(serde_json::from_str::<EnvName>(&json).unwrap(), name);
            } else {
                prop_assert!(!is_dns_label(&text));
            }
        }

        #[test]
        fn pull_request_names_are_always_names(number in any::<i64>()) {
            prop_assert!(EnvName::parse(&EnvName::pull_request(number)).is_ok());
        }

        #[test]
        fn branch_names_are_always_names(branch in any::<String>()) {
            prop_assert!(EnvName::parse(&EnvName::branch(&branch)).is_ok());
            prop_assert!(EnvName::parse(&EnvName::branch_hashed(&branch)).is_ok());
        }
    }
}
