//! Repository specs: what `--repo` may name, and where a remote is mirrored. Pure functions.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::GitError;
use crate::error::printable;

/// What a spec names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Location {
    /// A path on this machine: a work tree (or a directory inside one) or a bare repository.
    Local(PathBuf),
    /// A remote to mirror.
    Remote(RemoteUrl),
}

/// A remote URL accepted by [`parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RemoteUrl {
    /// The URL as given, credentials included: what the mirror's name is made from.
    pub(crate) spec: String,
    /// The URL git is given: an https URL's credentials taken out (they go in
    /// [`RemoteUrl::header`]), so that they are in no process's arguments (which anyone on
    /// the machine may read in `/proc`, environments' code included) nor in the mirror's
    /// configuration (whose URL git hands its remote helper as an argument).
    pub(crate) url: String,
    /// The URL for messages and directory names: credentials replaced by `***`.
    pub(crate) redacted: String,
    /// For an https URL with credentials: the `Authorization` header they make, which git is
    /// given through its environment (`http.extraHeader`).
    pub(crate) header: Option<String>,
}

/// `url` without an https URL's user-info, and the `Authorization: Basic` header it made.
fn without_credentials(url: &str) -> (String, Option<String>) {
    use base64::Engine as _;
    let Some(scheme_end) = url.find("://") else {
        return (url.to_owned(), None);
    };
    if !url[..scheme_end].eq_ignore_ascii_case("https") {
        return (url.to_owned(), None);
    }
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |slash| authority_start + slash);
    let Some(at) = url[authority_start..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let userinfo = percent_decoded(&url[authority_start..authority_start + at]);
    // A token given as the user name alone is sent with an empty password, as git sends it.
    let mut pair = userinfo;
    if !pair.contains(&b':') {
        pair.push(b':');
    }
    let header = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&pair)
    );
    let clean = format!(
        "{}{}",
        &url[..authority_start],
        &url[authority_start + at + 1..]
    );
    (clean, Some(header))
}

/// `text` with its `%XX` escapes undone (a malformed one is kept as it is).
fn percent_decoded(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

const SCHEMES: &[&str] = &["file", "https", "ssh"];

/// Classifies a spec the way git would, refusing what could run code or inject options.
pub(crate) fn parse(spec: &str) -> Result<Location, GitError> {
    let refuse = |reason: String| GitError::UnsupportedSpec {
        spec: printable(&redact(spec)),
        reason,
    };
    if spec.is_empty() {
        return Err(refuse("it is empty".to_owned()));
    }
    if spec.starts_with('-') {
        return Err(refuse(
            "it starts with `-` and git would read it as an option; write `./` before a path"
                .to_owned(),
        ));
    }
    if spec.chars().any(char::is_control) {
        return Err(refuse("it contains control characters".to_owned()));
    }
    let scheme_len = spec
        .char_indices()
        .take_while(|(index, c)| {
            c.is_ascii_alphabetic() || (*index > 0 && (c.is_ascii_digit() || "+.-".contains(*c)))
        })
        .count();
    let (scheme, rest) = spec.split_at(scheme_len);
    if scheme_len > 0 && rest.starts_with("::") {
        return Err(refuse(format!(
            "the transport `{scheme}::` is not allowed; use a path, file://, https:// or ssh://"
        )));
    }
    if scheme_len > 0
        && let Some(after) = rest.strip_prefix("://")
    {
        let scheme = scheme.to_ascii_lowercase();
        if !SCHEMES.contains(&scheme.as_str()) {
            return Err(refuse(format!(
                "the scheme `{scheme}://` is not allowed; use file://, https:// or ssh://"
            )));
        }
        let authority = after.split('/').next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.starts_with('-') {
            return Err(refuse(
                "its host starts with `-` and ssh would read it as an option".to_owned(),
            ));
        }
        if scheme != "file" && host.is_empty() {
            return Err(refuse("it has no host".to_owned()));
        }
        let (url, header) = without_credentials(spec);
        return Ok(Location::Remote(RemoteUrl {
            spec: spec.to_owned(),
            url,
            redacted: redact(spec),
            header,
        }));
    }
    // Git's rule for scp-like `[user@]host:path`: a colon before any slash.
    if let Some(colon) = spec.find(':')
        && !spec[..colon].contains('/')
    {
        let (authority, path) = (&spec[..colon], &spec[colon + 1..]);
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || host.starts_with('-') || authority.starts_with('-') {
            return Err(refuse(
                "its host is empty or starts with `-`; write `./` before a local path with a colon"
                    .to_owned(),
            ));
        }
        if path.starts_with('-') {
            return Err(refuse(
                "its path starts with `-` and the remote git would read it as an option".to_owned(),
            ));
        }
        return Ok(Location::Remote(RemoteUrl {
            spec: spec.to_owned(),
            url: spec.to_owned(),
            redacted: spec.to_owned(),
            header: None,
        }));
    }
    Ok(Location::Local(PathBuf::from(spec)))
}

/// The URL with credentials hidden: the whole user-info of an https URL (tokens are often
/// passed as the user name), the password of any other.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |slash| authority_start + slash);
    let Some(at) = url[authority_start..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &url[authority_start..authority_start + at];
    let hidden = if url[..scheme_end].eq_ignore_ascii_case("https") {
        "***".to_owned()
    } else {
        match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***"),
            None => userinfo.to_owned(),
        }
    };
    format!(
        "{}{hidden}{}",
        &url[..authority_start],
        &url[authority_start + at..]
    )
}

/// The directory name of a remote's mirror: a readable slug of the redacted URL, then a hash
/// of the full URL so that different URLs (or credentials) never share a mirror.
pub(crate) fn mirror_name(remote: &RemoteUrl) -> String {
    const SLUG_MAX: usize = 60;
    let without_scheme = remote
        .redacted
        .split_once("://")
        .map_or(remote.redacted.as_str(), |(_, rest)| rest);
    let without_user = without_scheme
        .split_once('@')
        .filter(|(user, _)| !user.contains('/'))
        .map_or(without_scheme, |(_, rest)| rest);
    let mut slug = String::new();
    for c in without_user.trim_end_matches(".git").chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= SLUG_MAX {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    let digest = Sha256::digest(remote.spec.as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if slug.is_empty() {
        format!("{hash}.git")
    } else {
        format!("{slug}-{hash}.git")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(spec: &str) -> RemoteUrl {
        match parse(spec) {
            Ok(Location::Remote(remote)) => remote,
            other => panic!("`{spec}` should be a remote, got {other:?}"),
        }
    }

    #[test]
    fn paths_and_allowed_urls_are_classified_like_git_does() {
        assert_eq!(
            parse("/srv/git/shop.git").ok(),
            Some(Location::Local("/srv/git/shop.git".into())),
            "an absolute path is local"
        );
        assert_eq!(
            parse("./a:b").ok(),
            Some(Location::Local("./a:b".into())),
            "a slash before the colon makes it a path"
        );
        assert_eq!(
            remote("file:///srv/git/shop.git").url,
            "file:///srv/git/shop.git"
        );
        assert_eq!(
            remote("HTTPS://github.com/acme/shop").url,
            "HTTPS://github.com/acme/shop"
        );
        assert_eq!(
            remote("ssh://git@host/acme/shop.git").redacted,
            "ssh://git@host/acme/shop.git"
        );
        assert_eq!(
            remote("git@github.com:acme/shop.git").url,
            "git@github.com:acme/shop.git"
        );
    }

    #[test]
    fn dangerous_specs_are_refused() {
        for spec in [
            "",
            "-uploadpack=touch /tmp/pwned",
            "--upload-pack=x",
            "ext::sh -c touch% /tmp/pwned",
            "fd::17",
            "git://host/repo",
            "http://host/repo",
            "ssh://-oProxyCommand=touch%20x/repo",
            "-oProxyCommand=x:repo",
            "host:-repo",
            "path\nwith newline",
            "https:///no-host",
        ] {
            assert!(
                matches!(parse(spec), Err(GitError::UnsupportedSpec { .. })),
                "`{}` must be refused, got {:?}",
                spec.escape_debug(),
                parse(spec)
            );
        }
    }

    #[test]
    fn an_https_urls_credentials_become_a_header_and_leave_the_url() {
        use base64::Engine as _;
        let basic = |pair: &str| {
            Some(format!(
                "Authorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
        };
        let r = remote("https://x-token:s3cr%40t@github.com/acme/shop.git");
        assert_eq!(r.url, "https://github.com/acme/shop.git");
        assert_eq!(r.header, basic("x-token:s3cr@t"));
        let r = remote("https://ghp_TOKEN@github.com/acme/shop.git");
        assert_eq!(r.url, "https://github.com/acme/shop.git");
        assert_eq!(
            r.header,
            basic("ghp_TOKEN:"),
            "a token as the user, no password"
        );
        for plain in [
            "https://github.com/acme/shop.git",
            "ssh://git@host/acme/shop.git",
            "git@host:acme/shop.git",
        ] {
            let r = remote(plain);
            assert_eq!((r.url.as_str(), r.header), (plain, None));
        }
        assert_ne!(
            mirror_name(&remote("https://a@h/r.git")),
            mirror_name(&remote("https://b@h/r.git")),
            "each credential keeps a mirror of its own, as before"
        );
    }

    #[test]
    fn credentials_never_appear_in_redacted_urls_or_mirror_names() {
        let remote = remote("https://x-token:ghp_secret@github.com/acme/shop.git");
        assert_eq!(remote.redacted, "https://***@github.com/acme/shop.git");
        let name = mirror_name(&remote);
        assert!(
            !name.contains("secret"),
            "mirror name {name} leaks a credential"
        );
        assert!(
            name.starts_with("github-com-acme-shop-"),
            "readable slug, got {name}"
        );
        assert_eq!(
            redact("ssh://git:pw@host/x"),
            "ssh://git:***@host/x",
            "an ssh password is hidden, the user kept"
        );
        assert_ne!(
            mirror_name(&remote),
            mirror_name(&super::tests::remote("https://github.com/acme/shop.git")),
            "different URLs never share a mirror"
        );
    }

    #[test]
    fn mirror_names_are_safe_directory_names() {
        let name = mirror_name(&remote("file:///../../etc/passwd"));
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "only letters, digits, dashes and a dot: {name}"
        );
        assert!(name.ends_with(".git") && !name.starts_with('.'), "{name}");
    }
}
