//! Connection strings fit for messages and logs: a PostgreSQL URL or key-value string with
//! its password hidden, wherever it was written.

/// The texts to hide for the secret `value`: the value (4 characters or more: shorter ones
/// would shred ordinary words), and for a value of several lines (a PEM key, a JSON
/// credential) each of its lines that could be a secret on its own too, since logs are written
/// and read a line at a time, where the whole may never appear in one piece. A line counts
/// trimmed, and only with at least [`LINE_MIN`] letters or digits, so that an indent or a `},`
/// of a JSON secret hides nothing else. (A line that is not secret by itself, such as
/// `-----BEGIN PRIVATE KEY-----`, is hidden as well.)
pub fn hidden_texts(value: &str) -> Vec<&str> {
    let mut texts = Vec::new();
    if value.chars().count() >= 4 {
        texts.push(value);
    }
    if value.contains('\n') {
        texts.extend(value.lines().map(str::trim).filter(|line| {
            line.chars().filter(|c| c.is_alphanumeric()).count() >= LINE_MIN && *line != value
        }));
    }
    texts.dedup();
    texts
}

/// The fewest letters and digits a line of a secret of several lines needs to be hidden on
/// its own (see [`hidden_texts`]).
pub const LINE_MIN: usize = 8;

/// A connection string with its password hidden, fit for messages and logs.
///
/// A URL keeps its shape with `***` for the password (in the user info and in a `password=`
/// query parameter); a key-value string gets `password=***`. Whatever cannot be parsed is
/// shown only as much as is certain not to be a password.
pub fn redact_url(url: &str) -> String {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            return format!("{scheme}{}", redact_url_rest(rest));
        }
    }
    redact_key_values(url)
}

fn redact_url_rest(rest: &str) -> String {
    // The user info ends at the last `@` before the path or query; a password holding an
    // unencoded `/`, `?` or `@` still ends up hidden, because everything from the first `:` of
    // the user info to that `@` goes.
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => ("", rest),
    };
    let userinfo = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    // `?password=...&...` after the host.
    let after = match after.split_once('?') {
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => param.to_owned(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => after.to_owned(),
    };
    format!("{userinfo}{after}")
}

/// `key=value key='quoted value'` with the value of `password` replaced.
fn redact_key_values(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = find_password_key(rest) {
        out.push_str(&rest[..start]);
        let after_key = &rest[start..];
        let eq = after_key
            .find('=')
            .expect("find_password_key stops at an `=`");
        out.push_str(&after_key[..=eq]);
        let value = after_key[eq + 1..].trim_start();
        out.push_str("***");
        rest = match value.strip_prefix('\'') {
            Some(quoted) => {
                // Up to the closing quote that is not backslash-escaped.
                let mut end = quoted.len();
                let mut escaped = false;
                for (i, c) in quoted.char_indices() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '\'' => {
                            end = i + 1;
                            break;
                        }
                        _ => {}
                    }
                }
                &quoted[end..]
            }
            None => &value[value.find(char::is_whitespace).unwrap_or(value.len())..],
        };
    }
    out.push_str(rest);
    out
}

/// The byte offset of a `password` key (followed by `=`) at a word start in `text`.
fn find_password_key(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let start = from + found;
        let at_word_start = start == 0 || lower.as_bytes()[start - 1].is_ascii_whitespace();
        let after = lower[start + "password".len()..].trim_start();
        if at_word_start && after.starts_with('=') {
            return Some(start);
        }
        from = start + "password".len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_of_several_lines_is_hidden_line_by_line_too() {
        let pem =
            "-----BEGIN PRIVATE KEY-----\r\nMIIEvQIBADANBgkq\r\nabc\r\n-----END PRIVATE KEY-----";
        assert_eq!(
            hidden_texts(pem),
            [
                pem,
                "-----BEGIN PRIVATE KEY-----",
                "MIIEvQIBADANBgkq",
                "-----END PRIVATE KEY-----"
            ],
            "each line with 8 letters or digits, trimmed"
        );
        let json = "{\n    \"type\": \"x\",\n    \"private_key\": \"k3y-m4teri4l\"\n    \n  },\n}";
        assert_eq!(
            hidden_texts(json),
            [json, "\"private_key\": \"k3y-m4teri4l\""],
            "no indent, brace or short line of it"
        );
        assert_eq!(hidden_texts("hunter2-long"), ["hunter2-long"]);
        assert!(hidden_texts("abc").is_empty(), "too short to hide");
    }

    #[test]
    fn passwords_never_show_in_redacted_urls() {
        let cases = [
            (
                "postgres://admin:hunter2@db.example:5432/postgres",
                "postgres://admin:***@db.example:5432/postgres",
            ),
            (
                "postgresql://admin:p%40ss@10.0.0.1/postgres?sslmode=disable",
                "postgresql://admin:***@10.0.0.1/postgres?sslmode=disable",
            ),
            (
                "postgres://admin:we@ird/pa?ss@host/db",
                "postgres://admin:***@host/db",
            ),
            (
                "postgres://host/db?user=admin&password=hunter2&sslmode=disable",
                "postgres://host/db?user=admin&password=***&sslmode=disable",
            ),
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            (
                "host=db user=admin password=hunter2 dbname=postgres",
                "host=db user=admin password=*** dbname=postgres",
            ),
            (
                "host=db password = 'hun ter\\'2' dbname=postgres",
                "host=db password =*** dbname=postgres",
            ),
        ];
        for (url, want) in cases {
            let shown = redact_url(url);
            assert_eq!(shown, want, "redacted form of {url}");
            for secret in ["hunter2", "p%40ss", "we@ird", "pa?ss", "hun ter"] {
                assert!(!shown.contains(secret), "{shown} hides the password");
            }
        }
    }
}
