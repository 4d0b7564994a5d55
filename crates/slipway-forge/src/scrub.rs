//! What the server must not tell the world: its repository's URL (with or without
//! credentials) and local paths, its home directory. A git error ("fatal: '/srv/git/shop.git'
//! does not appear to be a git repository") or a plan error quoting a file under the home
//! would otherwise end up in a public pull request's comment or commit status. The adapters
//! run every text they send through one [`Scrubber`] (`Api::send`), so that no call site,
//! present or future, can leak them.

use crate::render::{escape_html, escape_markdown};

/// The shortest private text that is scrubbed: shorter ones (`/`, `.`) would mangle every
/// message and reveal nothing.
const MIN_TEXT: usize = 4;
/// The shortest beginning of a private text that is scrubbed where a message was cut short
/// (`/srv/git/sh…`).
const MIN_CUT: usize = 6;

/// Replaces private texts by neutral stand-ins.
///
/// # Guarantees
/// - Every occurrence of a private text that ends at a path boundary (not followed by a
///   letter, digit, `_` or `-`) is replaced, in its raw form and as
///   [`crate::render_plan_comment`] escapes it (Markdown, HTML).
/// - A beginning of at least 6 characters of a private text, where a message was cut (before
///   `…`, or at the very end), is replaced too.
/// - A URL is also scrubbed without its credentials, and a `file://` URL as its path.
///
/// # Caveats
/// Only the texts it was given: a path built some other way (a symlink's target it was not
/// told about, an encoding it does not know) passes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrubber {
    /// `(needle, stand-in)`, longest needle first.
    rules: Vec<(String, String)>,
}

impl Scrubber {
    /// A scrubber of `texts`: `(private text, stand-in)`.
    pub(crate) fn new(texts: &[(String, String)]) -> Scrubber {
        let mut rules: Vec<(String, String)> = Vec::new();
        for (text, stand_in) in texts {
            for form in forms(text) {
                if form.chars().count() < MIN_TEXT {
                    continue;
                }
                for variant in [escape_markdown(&form), escape_html(&form), form] {
                    if !rules.iter().any(|(n, _)| *n == variant) {
                        rules.push((variant, stand_in.clone()));
                    }
                }
            }
        }
        rules.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Scrubber { rules }
    }

    /// Whether there is nothing to scrub.
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// `text` with every private text replaced by its stand-in.
    pub(crate) fn scrub(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_owned();
        }
        let mut out = text.to_owned();
        for (needle, stand_in) in &self.rules {
            if out.contains(needle.as_str()) {
                out = replace_bounded(&out, needle, stand_in);
            }
        }
        for (needle, stand_in) in &self.rules {
            out = replace_cut(&out, needle, stand_in);
        }
        out
    }

    /// Every string in `value` scrubbed.
    pub(crate) fn scrub_json(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        if self.is_empty() {
            return value.clone();
        }
        match value {
            Value::String(s) => Value::String(self.scrub(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.scrub_json(v)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.scrub_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// The forms a private text appears in: itself without a trailing `/`; a URL also without its
/// credentials; a `file://` URL also as its path.
fn forms(text: &str) -> Vec<String> {
    let text = text.trim();
    let trimmed = if text.len() > 1 {
        text.trim_end_matches('/')
    } else {
        text
    };
    let mut out = vec![trimmed.to_owned()];
    if let Some((scheme, rest)) = trimmed.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            out.push(format!("{scheme}://{}", &rest[at + 1..]));
        }
        if scheme.eq_ignore_ascii_case("file") {
            // file:///srv/x and file://localhost/srv/x are the path /srv/x.
            let path = &rest[authority_end..];
            if !path.is_empty() {
                out.push(path.to_owned());
            }
        }
    }
    out
}

/// Whether `c` continues a path component, so that the text before it was not a whole one.
fn continues_name(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

fn replace_bounded(text: &str, needle: &str, stand_in: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(needle) {
        let after = &rest[i + needle.len()..];
        out.push_str(&rest[..i]);
        if after.chars().next().is_some_and(continues_name) {
            out.push_str(needle);
        } else {
            out.push_str(stand_in);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Replaces a beginning of `needle` (at least [`MIN_CUT`] characters, starting a word) that
/// ends where the text was cut: before a `…`, or at the end of `text`.
fn replace_cut(text: &str, needle: &str, stand_in: &str) -> String {
    let mut cuts: Vec<usize> = text.match_indices('…').map(|(i, _)| i).collect();
    cuts.push(text.len());
    let mut out = text.to_owned();
    // From the last cut backwards, so that earlier offsets stay valid.
    for &cut in cuts.iter().rev() {
        let before = &out[..cut];
        let ends: Vec<usize> = needle
            .char_indices()
            .map(|(i, _)| i)
            .skip(1)
            .chain(std::iter::once(needle.len()))
            .filter(|&k| needle[..k].chars().count() >= MIN_CUT)
            .collect();
        let found = ends.into_iter().rev().find(|&k| {
            before.ends_with(&needle[..k])
                && !before[..cut - k]
                    .chars()
                    .next_back()
                    .is_some_and(continues_name)
        });
        if let Some(k) = found {
            out.replace_range(cut - k..cut, stand_in);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubber() -> Scrubber {
        Scrubber::new(&[
            ("file:///srv/git/shop_app.git".into(), "[repository]".into()),
            ("/var/lib/slipway/".into(), "[home]".into()),
            (
                "https://bot:s3cr3t@git.example.com/acme/shop.git".into(),
                "[repository]".into(),
            ),
            ("/".into(), "[root]".into()),
        ])
    }

    #[test]
    fn repository_urls_paths_and_the_home_are_replaced() {
        let s = scrubber();
        assert_eq!(
            s.scrub("fatal: '/srv/git/shop_app.git' does not appear to be a git repository"),
            "fatal: '[repository]' does not appear to be a git repository"
        );
        assert_eq!(
            s.scrub("git fetch file:///srv/git/shop_app.git failed"),
            "git fetch [repository] failed"
        );
        assert_eq!(
            s.scrub("cannot read /var/lib/slipway/repos/ab12/HEAD: denied"),
            "cannot read [home]/repos/ab12/HEAD: denied"
        );
        assert_eq!(
            s.scrub("from https://git.example.com/acme/shop.git and https://bot:s3cr3t@git.example.com/acme/shop.git"),
            "from [repository] and [repository]"
        );
    }

    #[test]
    fn only_whole_names_are_replaced_and_short_texts_are_left_alone() {
        let s = scrubber();
        assert_eq!(
            s.scrub("/var/lib/slipway-old/x and /srv/git/shop_app.gitx"),
            "/var/lib/slipway-old/x and /srv/git/shop_app.gitx"
        );
        assert_eq!(s.scrub("a/b/c"), "a/b/c", "`/` is too short to scrub");
    }

    #[test]
    fn escaped_and_cut_forms_are_replaced() {
        let s = scrubber();
        assert_eq!(
            s.scrub(r"\| error: /srv/git/shop\_app.git is gone \|"),
            r"\| error: [repository] is gone \|"
        );
        assert_eq!(
            s.scrub("cannot fetch '/srv/git/sho…"),
            "cannot fetch '[repository]…"
        );
        assert_eq!(
            s.scrub("cannot fetch from /var/lib/sl"),
            "cannot fetch from [home]"
        );
        assert_eq!(
            s.scrub("ends in /var/"),
            "ends in /var/",
            "5 characters are not enough"
        );
    }

    #[test]
    fn json_strings_are_scrubbed_everywhere() {
        let v =
            serde_json::json!({"body": "at /var/lib/slipway/x", "n": 1, "l": ["/var/lib/slipway"]});
        assert_eq!(
            scrubber().scrub_json(&v),
            serde_json::json!({"body": "at [home]/x", "n": 1, "l": ["[home]"]})
        );
    }
}
