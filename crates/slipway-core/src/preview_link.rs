//! The text of a signed link to a preview URL: `<env>.<stack>.<created_at>.<expires_at>~<tag>`
//! (SPEC §3, `slipway env link`). Signing and checking the tag is the controller's (it holds
//! the key); this is the format alone, pure, so that it is fuzzed on its own
//! (`fuzz/fuzz_targets/preview_link.rs`).
//!
//! The environment and the stack are DNS labels and the times decimal milliseconds, so the
//! dots are unambiguous; the tag is unpadded base64url. Nothing here is secret but the tag.

use crate::EnvName;

/// The longest text that can be a link: two labels of 63, two times of 19 digits, the
/// separators and a 43-character tag. Anything longer is refused before it is split.
pub const MAX_LEN: usize = 63 + 63 + 19 + 19 + 4 + 43;

/// What a link names, before its tag is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkText<'a> {
    /// What the tag signs: everything before `~`.
    pub payload: &'a str,
    /// The environment it opens.
    pub env: EnvName,
    /// Its stack.
    pub stack: &'a str,
    /// When the environment was recorded (unix milliseconds): a later one of the same name is
    /// another environment.
    pub created_at: i64,
    /// Until when it holds (unix milliseconds).
    pub expires_at: i64,
    /// The tag, as written (base64url).
    pub tag: &'a str,
}

/// What the tag of a link for `env` of `stack`, recorded at `created_at`, holding until
/// `expires_at`, signs.
pub fn payload(env: &EnvName, stack: &str, created_at: i64, expires_at: i64) -> String {
    format!("{env}.{stack}.{created_at}.{expires_at}")
}

/// The parts of `text` when it has a link's shape: a checked environment name and stack, two
/// non-negative decimal times and a base64url tag of 43 characters. Anything else is `None`.
pub fn parse(text: &str) -> Option<LinkText<'_>> {
    if text.len() > MAX_LEN {
        return None;
    }
    let (payload, tag) = text.split_once('~')?;
    if tag.len() != 43
        || !tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let mut parts = payload.split('.');
    let env = EnvName::parse(parts.next()?).ok()?;
    let stack = parts.next().filter(|s| crate::stack::is_dns_label(s))?;
    let created_at = number(parts.next()?)?;
    let expires_at = number(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some(LinkText {
        payload,
        env,
        stack,
        created_at,
        expires_at,
        tag,
    })
}

/// A non-negative decimal number without sign, spaces or leading zeros (so that one number
/// has one spelling, and the text a tag signs is the text that parses).
fn number(text: &str) -> Option<i64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "FfZCCSMr2eNG3E8HizJFZMcy0z67oDvcGVZh3lo7HlQ";

    #[test]
    fn a_link_round_trips_and_nothing_else_parses() {
        let env = EnvName::parse("pr-1").expect("a name");
        let text = format!("{}~{TAG}", payload(&env, "shop", 1000, 2000));
        let parsed = parse(&text).expect("a link's shape");
        assert_eq!(
            (
                parsed.env.as_str(),
                parsed.stack,
                parsed.created_at,
                parsed.expires_at
            ),
            ("pr-1", "shop", 1000, 2000)
        );
        assert_eq!(parsed.payload, "pr-1.shop.1000.2000");
        for bad in [
            String::new(),
            "~".into(),
            format!("pr-1.shop.1000~{TAG}"),
            format!("pr-1.shop.1000.2000.3000~{TAG}"),
            format!("pr-1.shop.-1.2000~{TAG}"),
            format!("pr-1.shop.1000.+2000~{TAG}"),
            format!("pr-1.shop.01000.2000~{TAG}"),
            format!("pr-1.shop.1000.99999999999999999999~{TAG}"),
            format!("PR-1.shop.1000.2000~{TAG}"),
            format!("pr-1.sh_op.1000.2000~{TAG}"),
            "pr-1.shop.1000.2000~short".into(),
            format!("pr-1.shop.1000.2000~{}", TAG.replace('F', "+")),
            "pr-1.shop.1000.2000".into(),
            "a".repeat(10_000),
        ] {
            assert!(parse(&bad).is_none(), "{bad:?} is no link");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_only_as_itself(text in "\\PC{0,200}|[a-z0-9.~_-]{0,200}") {
            if let Some(link) = parse(&text) {
                proptest::prop_assert!(text.len() <= MAX_LEN);
                let spelled = payload(&link.env, link.stack, link.created_at, link.expires_at);
                proptest::prop_assert_eq!(&spelled, link.payload);
                proptest::prop_assert_eq!(format!("{}~{}", link.payload, link.tag), text);
            }
        }

        #[test]
        fn every_link_made_parses_back(
            env in "[a-z][a-z0-9-]{0,20}[a-z0-9]",
            created in 0i64..=i64::MAX,
            expires in 0i64..=i64::MAX,
        ) {
            let env = EnvName::parse(&env).expect("a DNS label");
            let text = format!("{}~{TAG}", payload(&env, "shop", created, expires));
            let link = parse(&text).expect("a link made parses");
            proptest::prop_assert_eq!((link.created_at, link.expires_at), (created, expires));
        }
    }
}
