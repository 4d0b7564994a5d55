//! Lists: read page by page from the configured API, never by following a `Link` header's
//! URLs (they could point anywhere, and the token would follow).

use serde::de::DeserializeOwned;

use crate::error::ForgeError;
use crate::http::{Api, Method};

/// One page of a list, and whether the forge says there is another.
struct Page<T> {
    items: Vec<T>,
    link_next: Option<bool>,
}

impl Api {
    /// Every item of a paginated list: `page=1,2,…` with the profile's page size
    /// (`per_page=100`, Gitea's `limit=50`), until the forge's `Link` header has no
    /// `rel="next"` (or, without a `Link` header, a page comes back short), for at most
    /// `max_pages` pages.
    pub(crate) fn get_all<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ForgeError> {
        let per_page_param = self.profile.page_size_param;
        let per_page = self.profile.page_size;
        let mut all = Vec::new();
        let sep = if path.contains('?') { '&' } else { '?' };
        for page in 1..=self.max_pages {
            let url = format!("{path}{sep}{per_page_param}={per_page}&page={page}");
            let Page { items, link_next } = self.get_page::<T>(&url)?;
            let short = items.len() < per_page;
            all.extend(items);
            let more = link_next.unwrap_or(!short);
            if !more {
                break;
            }
        }
        Ok(all)
    }

    fn get_page<T: DeserializeOwned>(&self, path: &str) -> Result<Page<T>, ForgeError> {
        let (link, body) = self.call(Method::Get, path, None)?;
        let items: Vec<T> = self.decode(Method::Get, path, &body)?;
        let link_next = link.map(|l| has_next_link(&l));
        Ok(Page { items, link_next })
    }
}

/// Whether an RFC 8288 `Link` header has a `rel="next"` link.
fn has_next_link(link: &str) -> bool {
    link.split(',').any(|part| {
        part.split(';').skip(1).any(|param| {
            let param = param.trim();
            param
                .strip_prefix("rel=")
                .map(|v| v.trim_matches('"').split_whitespace().any(|r| r == "next"))
                .unwrap_or(false)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_are_found_in_github_and_gitlab_link_headers() {
        let github = r#"<https://api.github.com/repositories/1/pulls?page=2>; rel="next", <https://api.github.com/repositories/1/pulls?page=5>; rel="last""#;
        assert!(has_next_link(github));
        let last = r#"<https://api.github.com/repositories/1/pulls?page=1>; rel="first", <https://api.github.com/repositories/1/pulls?page=4>; rel="prev""#;
        assert!(!has_next_link(last));
        assert!(!has_next_link(""));
    }
}
