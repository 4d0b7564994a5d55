//! Safe names: DNS labels derived from arbitrary (attacker-controlled) text such as branch
//! names.

use sha2::{Digest, Sha256};

/// A DNS label (`[a-z0-9-]`, 1–63 characters) derived from `text` with `prefix`, e.g.
/// `slug("br-", "feature/Login")` = `br-feature-login`. Characters outside the alphabet become
/// `-`; runs of `-` collapse. A text that leaves nothing usable, or too much, is cut and gets
/// a short hash of the original. Two texts can share a slug (`feature/x`, `feature-x`): callers
/// that need unique names resolve that with [`slug_hashed`].
pub fn slug(prefix: &str, text: &str) -> String {
    let body = simplify(text);
    let room = 63usize.saturating_sub(prefix.len());
    if !body.is_empty() && body.len() <= room {
        format!("{prefix}{body}")
    } else {
        slug_hashed(prefix, text)
    }
}

/// Like [`slug`], but always ends in a short hash of `text`, so different texts never share
/// a name.
pub fn slug_hashed(prefix: &str, text: &str) -> String {
    let body = simplify(text);
    let hash = crate::render::hex(&Sha256::digest(text.as_bytes()));
    let room = 63usize.saturating_sub(prefix.len());
    let keep = room.saturating_sub(9).min(body.len());
    let head = body[..keep].trim_end_matches('-');
    let name = if head.is_empty() {
        format!("{prefix}{}", &hash[..8])
    } else {
        format!("{prefix}{head}-{}", &hash[..8])
    };
    name.trim_matches('-').to_string()
}

fn simplify(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// Whether `text` matches the glob `pattern`: `*` matches any run of characters (slashes
/// included, so `feature/*` matches `feature/a/b`), `?` one character; everything else is
/// literal. Linear in the sizes (no backtracking blow-up on hostile patterns).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::is_dns_label;

    #[test]
    fn hostile_branch_names_become_dns_labels() {
        for text in [
            "feature/login",
            "$(touch /tmp/pwned)",
            "ünïcødé",
            &"a".repeat(200),
            "-",
            "",
            "UPPER",
            "a..b",
        ] {
            let name = slug("br-", text);
            assert!(
                is_dns_label(&name),
                "{text:?} gave {name:?}, not a DNS label"
            );
        }
        assert_eq!(
            slug("br-", "login"),
            "br-login",
            "clean names are kept as they are"
        );
        assert_eq!(
            slug("br-", "feature/login"),
            "br-feature-login",
            "readable names for ordinary branches"
        );
        assert_ne!(
            slug_hashed("br-", "feature/login"),
            slug_hashed("br-", "feature-login"),
            "hashed names never collide"
        );
        for text in ["$(touch /tmp/pwned)", &"a".repeat(200), "", "ü"] {
            assert!(is_dns_label(&slug_hashed("br-", text)), "{text:?}");
        }
    }

    #[test]
    fn globs_match_branch_names() {
        assert!(glob_match("feature/*", "feature/login"));
        assert!(glob_match("feature/*", "feature/a/b"));
        assert!(!glob_match("feature/*", "main"));
        assert!(glob_match("release-?", "release-1"));
        assert!(glob_match("*", ""));
        assert!(
            !glob_match("a*b*c*d*e*f*g*h*x", &"a".repeat(5000)),
            "hostile patterns stay fast"
        );
    }
}
