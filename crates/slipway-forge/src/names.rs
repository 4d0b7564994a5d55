//! What Slipway accepts from a forge as an object id, a ref or branch name, a login or a
//! repository path, and how such a name goes into an API URL.
//!
//! Webhook payloads are signed by the forge, but their strings were typed by whoever opened the
//! pull request. A branch named `--upload-pack=evil` is a legal name on some forges and an
//! option to `git`; a sha that is not hex is a bug or an attack. These checks run on every
//! payload and API answer, so that the rest of Slipway can pass the values on without second
//! thoughts.

/// A git object id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub(crate) fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The object id that stands for "no object" in a push (ref created or deleted).
pub(crate) fn is_null_object_id(s: &str) -> bool {
    is_object_id(s) && s.bytes().all(|b| b == b'0')
}

/// A ref or branch name as `git check-ref-format` would take it, minus the rarer rules: not
/// empty, at most 1024 bytes, no control characters, spaces or `~^:?*[\`, no `..` or `@{`, no
/// component starting with `.` or `-`, not ending in `/`, `.` or `.lock`.
pub(crate) fn is_ref_name(s: &str) -> bool {
    if s.is_empty() || s.len() > 1024 || s.ends_with('/') || s.ends_with('.') {
        return false;
    }
    if s.ends_with(".lock") || s.contains("..") || s.contains("@{") || s == "@" {
        return false;
    }
    if s.chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return false;
    }
    s.split('/')
        .all(|part| !part.is_empty() && !part.starts_with('.') && !part.starts_with('-'))
}

/// A forge login: 1 to 255 characters, none of them control or whitespace characters, not
/// starting with `-`. (GitHub logins are `[A-Za-z0-9-]` plus a `[bot]` suffix; GitLab's allow
/// `.` and `_`; this accepts all of those and refuses what could break a log line or a path.)
pub(crate) fn is_login(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('-')
        && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Whether `login` is an automation account that acts for whoever set it off, not a person:
/// a GitHub App (`NAME[bot]`, GitHub Actions' `github-actions[bot]` included), GitLab's
/// project and group access-token users (`project_ID_bot_…`, `group_ID_bot_…`), Gitea
/// Actions' `gitea-actions`. A push by one tells nothing of the person behind it.
pub fn is_bot(login: &str) -> bool {
    let lower = login.to_ascii_lowercase();
    let token_user = |kind: &str| {
        lower
            .strip_prefix(kind)
            .and_then(|rest| rest.split_once("_bot"))
            .is_some_and(|(id, _)| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
    };
    lower.ends_with("[bot]")
        || lower == "gitea-actions"
        || token_user("project_")
        || token_user("group_")
}

/// A repository path: `owner/name` (GitLab: `group/subgroup/project`), each part of
/// `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub(crate) fn is_repository_path(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() >= 2
        && s.len() <= 512
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && !p.starts_with('-')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        })
}

/// Percent-encodes `s` as one URL path segment: everything but RFC 3986's unreserved
/// characters, so that a `/`, `?` or `#` in a login can never change which endpoint is called.
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `s` without control characters, cut to at most `max` characters (with `…` when cut): for
/// text from a forge that ends up in an error message or a log line.
pub(crate) fn short_text(s: &str, max: usize) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.chars().count() <= max {
        cleaned.to_owned()
    } else {
        let mut cut: String = cleaned.chars().take(max).collect();
        cut.push('…');
        cut
    }
}

/// All digits: a numeric id (GitLab's project id in place of its path).
pub(crate) fn is_numeric_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_are_told_from_people() {
        for bot in [
            "github-actions[bot]",
            "dependabot[bot]",
            "Renovate[BOT]",
            "project_42_bot_3f1a",
            "group_7_bot",
            "gitea-actions",
        ] {
            assert!(is_bot(bot), "{bot}");
        }
        for person in [
            "alice",
            "bot",
            "robotnik",
            "project_bot",
            "project_x_bot",
            "group__bot1",
        ] {
            assert!(!is_bot(person), "{person}");
        }
    }

    #[test]
    fn object_ids_are_40_or_64_hex_digits() {
        assert!(is_object_id(&"a".repeat(40)));
        assert!(is_object_id(&"0".repeat(64)));
        assert!(!is_object_id(&"a".repeat(39)));
        assert!(!is_object_id(&format!("-{}", "a".repeat(39))));
        assert!(!is_object_id(&"g".repeat(40)));
        assert!(is_null_object_id(&"0".repeat(40)));
        assert!(!is_null_object_id(&"1".repeat(40)));
    }

    #[test]
    fn ref_names_refuse_what_git_would_and_option_lookalikes() {
        for good in [
            "main",
            "refs/heads/feature/login",
            "refs/tags/v1.0.0",
            "a-b_c.d",
        ] {
            assert!(is_ref_name(good), "{good} is a valid ref name");
        }
        for bad in [
            "",
            "-x",
            "refs/heads/--upload-pack=evil",
            "a..b",
            "a b",
            "a\nb",
            "a~1",
            "a^",
            "a:b",
            "a/",
            "a.lock",
            ".hidden",
            "a//b",
            "x@{1}",
            "@",
        ] {
            assert!(!is_ref_name(bad), "{bad:?} is refused as a ref name");
        }
    }

    #[test]
    fn path_segments_cannot_escape_their_segment() {
        assert_eq!(path_segment("octo-cat_1.x~"), "octo-cat_1.x~");
        assert_eq!(path_segment("a/b?c#d e"), "a%2Fb%3Fc%23d%20e");
        assert_eq!(path_segment("../x"), "..%2Fx");
    }

    #[test]
    fn repository_paths() {
        assert!(is_repository_path("acme/shop"));
        assert!(is_repository_path("group/sub.group/my_project"));
        assert!(!is_repository_path("shop"));
        assert!(!is_repository_path("acme/../shop"));
        assert!(!is_repository_path("acme/shop?x"));
        assert!(!is_repository_path("acme//shop"));
    }

    #[test]
    fn short_text_cuts_and_cleans() {
        assert_eq!(short_text("a\nb", 10), "a b");
        assert_eq!(short_text("abcdef", 3), "abc…");
    }
}
