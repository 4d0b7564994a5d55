//! The names of the databases and roles Slipway creates: deterministic, valid PostgreSQL
//! identifiers whatever the environment and resource are called.

use sha2::{Digest, Sha256};

/// PostgreSQL's longest identifier, in bytes (`NAMEDATALEN - 1`): a longer name is silently
/// truncated by the server, which would make two of our names collide.
pub const MAX_NAME_BYTES: usize = 63;

/// `sw_` + `_` between the parts + `_` + 8 hex digits.
const FIXED_BYTES: usize = 3 + 1 + 1 + 8;

/// The PostgreSQL objects of one resource of one environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Names {
    /// The database of a `postgres.database` resource.
    pub database: String,
    /// Its owner role; for a `postgres.role` resource, the role.
    pub role: String,
}

/// The names for `resource` of `environment` in the Slipway home identified by `instance_id`.
///
/// # Guarantees
/// - The name is `sw_<env>_<resource>_<hash>`, where `<hash>` is 8 hex digits of
///   SHA-256(`instance_id` NUL `environment` NUL `resource`) and the readable parts are the
///   inputs lowercased, every run of characters outside `[a-z0-9]` turned into one `_`, and
///   shortened so that the whole name has at most [`MAX_NAME_BYTES`] bytes. Any input is
///   accepted; the result only ever holds `[a-z0-9_]` and starts with a letter.
/// - The same inputs always give the same name, so that an interrupted create can be found and
///   removed. Two Slipway homes (different `instance_id`s) sharing a server, or two resources
///   whose readable parts slug alike, differ by the hash.
/// - The database of a `postgres.database` resource and its owner role share the name.
pub fn names(instance_id: &str, environment: &str, resource: &str) -> Names {
    let mut hasher = Sha256::new();
    for (i, part) in [instance_id, environment, resource].into_iter().enumerate() {
        if i > 0 {
            hasher.update([0u8]);
        }
        hasher.update(part.as_bytes());
    }
    let hash: String = hasher.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (env, res) = fit(
        slug(environment),
        slug(resource),
        MAX_NAME_BYTES - FIXED_BYTES,
    );
    let name = format!("sw_{env}_{res}_{hash}");
    debug_assert!(name.len() <= MAX_NAME_BYTES, "{name} is too long");
    Names {
        database: name.clone(),
        role: name,
    }
}

/// The start every name [`names`] makes in `environment` has, whatever the resource: `sw_`
/// and the environment's readable part, of which a name keeps at least half its budget (one
/// byte less when that cut ends on a `_`, which goes). Names of other environments may start
/// alike (`qa` and `qa2`): it narrows a search, and the marker decides.
pub(crate) fn environment_prefix(environment: &str) -> String {
    let env = slug(environment);
    let keep = env.len().min((MAX_NAME_BYTES - FIXED_BYTES) / 2 - 1);
    format!("sw_{}", &env[..keep])
}

/// `text` lowercased, with every run of other characters than `[a-z0-9]` made one `_`, without
/// a leading or trailing `_`; `x` if nothing is left.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    finish(out)
}

fn finish(mut slug: String) -> String {
    while slug.ends_with('_') {
        slug.pop();
    }
    if slug.is_empty() {
        slug.push('x');
    }
    slug
}

/// Shortens the two slugs to `budget` bytes in all: a short one keeps all of itself and leaves
/// the rest to the other.
fn fit(env: String, res: String, budget: usize) -> (String, String) {
    if env.len() + res.len() <= budget {
        return (env, res);
    }
    let half = budget / 2;
    let env_len = env.len().min(half.max(budget.saturating_sub(res.len())));
    let res_len = res.len().min(budget - env_len);
    // Slugs are ASCII, so any byte index is a character boundary.
    (
        finish(env[..env_len].to_owned()),
        finish(res[..res_len].to_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn readable_names_keep_the_environment_and_resource() {
        let n = names("home-1", "pr-42", "db");
        assert!(
            n.database.starts_with("sw_pr_42_db_"),
            "the name shows env and resource: {}",
            n.database
        );
        assert_eq!(
            n.database.len(),
            "sw_pr_42_db_".len() + 8,
            "8 hex digits end it"
        );
        assert_eq!(
            n.database, n.role,
            "a database and its owner share the name"
        );
    }

    #[test]
    fn hostile_inputs_give_short_plain_names() {
        let long = "a".repeat(200);
        let inputs = [
            ("qa", "'; drop database postgres; --"),
            ("\"", "\""),
            ("", ""),
            ("数据库", "Ünïcödé"),
            (long.as_str(), long.as_str()),
            (long.as_str(), "db"),
            ("qa", long.as_str()),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (env, res) in inputs {
            let name = names("i", env, res).database;
            assert!(name.len() <= MAX_NAME_BYTES, "{name} fits NAMEDATALEN");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name} is plain"
            );
            assert!(seen.insert(name.clone()), "{name} is distinct");
        }
        assert!(
            names("i", "qa", &long).database.contains("_qa_"),
            "a short environment is kept whole when the resource is long"
        );
    }

    #[test]
    fn the_instance_changes_the_name() {
        assert_ne!(
            names("home-a", "qa", "db"),
            names("home-b", "qa", "db"),
            "two homes sharing a server get different names"
        );
        assert_ne!(
            names("i", "a_b", "c"),
            names("i", "a", "b_c"),
            "the hash separates inputs whose readable parts coincide"
        );
    }

    #[test]
    fn an_environment_cut_after_its_prefix_keeps_it() {
        // 24 letters, then a `_` where the cut falls (and goes), beside a long resource.
        let env = format!("{}-bcdefghijklmnopqrstuvwxyz", "a".repeat(24));
        let name = names("0123456789abcdef", &env, &"r".repeat(40));
        assert_eq!(environment_prefix(&env), format!("sw_{}", "a".repeat(24)));
        assert!(
            name.database.starts_with(&environment_prefix(&env)),
            "{}",
            name.database
        );
    }

    proptest! {
        #[test]
        fn any_input_gives_a_valid_deterministic_name(
            id in ".{0,40}", env in ".{0,120}", res in ".{0,120}",
        ) {
            let name = names(&id, &env, &res);
            prop_assert!(name.database.len() <= MAX_NAME_BYTES, "{} fits", name.database);
            prop_assert!(name.database.starts_with("sw_"), "{} starts with sw_", name.database);
            prop_assert!(
                name.database
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{} is plain", name.database
            );
            prop_assert_eq!(&name, &names(&id, &env, &res), "names are deterministic");
            let prefix = environment_prefix(&env);
            prop_assert!(
                name.database.starts_with(&prefix),
                "{} starts with its environment's prefix {prefix}", name.database
            );
        }

        /// Long environment names of the kind that are cut, with resource names long enough
        /// to cut them (the case `environment_prefix` is about).
        #[test]
        fn every_name_starts_with_its_environments_prefix(
            env in "[a-z0-9][a-z0-9_-]{18,62}", res in "[a-z0-9_-]{0,80}",
        ) {
            let name = names("0123456789abcdef", &env, &res);
            let prefix = environment_prefix(&env);
            prop_assert!(name.database.starts_with(&prefix), "{} / {prefix}", name.database);
        }

        #[test]
        fn distinct_inputs_give_distinct_names(
            env_a in ".{0,80}", res_a in ".{0,80}", env_b in ".{0,80}", res_b in ".{0,80}",
        ) {
            prop_assume!((&env_a, &res_a) != (&env_b, &res_b));
            prop_assert_ne!(names("i", &env_a, &res_a), names("i", &env_b, &res_b));
        }
    }
}
