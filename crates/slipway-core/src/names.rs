//! Safe names: DNS labels derived from arbitrary (attacker-controlled) text such as branch
//! names.

use sha2::{Digest, Sha256};

/// A DNS label (`[a-z0-9-]`, 1–63 characters) derived from `text` with `prefix`, e.g.
/// `slug("br-", "feature/Login")` = `br-feature-login`. Characters outside the alphabet become
/// `-`; runs of `-` collapse. When the text had to be changed or shortened, a short hash of
/// the original is appended, so two different texts never share a name.
pub fn slug(prefix: &str, text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let body = out.trim_matches('-');
    let exact = body == text;
    let hash = crate::render::hex(&Sha256::digest(text.as_bytes()));
    let room = 63usize.saturating_sub(prefix.len());
    let name = if exact && body.len() <= room && !body.is_empty() {
        format!("{prefix}{body}")
    } else {
        let keep = room.saturating_sub(9).min(body.len());
        let head = body[..keep].trim_end_matches('-');
        if head.is_empty() {
            format!("{prefix}{}", &hash[..8])
        } else {
            format!("{prefix}{head}-{}", &hash[..8])
        }
    };
    name.trim_matches('-').to_string()
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
        assert_ne!(
            slug("br-", "feature/login"),
            slug("br-", "feature-login"),
            "different branches never collide"
        );
    }
}
