//! Lists: read page by page from the configured API, never by following a `Link` header's
//! URLs (they could point anywhere, and the token would follow).

use serde::de::DeserializeOwned;

use crate::error::ForgeError;
use crate::http::{Api, Method, Paging};

/// One page of a list, whether the forge says there is another, and the number of its last
/// page when the forge says (`Link: <…page=N…>; rel="last"`).
struct Page<T> {
    items: Vec<T>,
    link_next: Option<bool>,
    last: Option<u32>,
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
            let Page {
                items, link_next, ..
            } = self.get_page::<T>(&url)?;
            let short = items.len() < per_page;
            all.extend(items);
            let more = link_next.unwrap_or(!short);
            if !more {
                break;
            }
        }
        Ok(all)
    }

    /// The newest items of a list the forge gives oldest first, where a later item overrides
    /// an earlier one (reviews: a reviewer's latest verdict counts): all of them when the list
    /// has at most `max_pages` pages; else its last `max_pages` pages, found from the `Link`
    /// header's `rel="last"` or the `X-Total-Count` header (or, without either, by reading on
    /// and keeping the last pages read).
    /// A list padded past the cap so loses its oldest items, never its newest.
    ///
    /// # Errors
    /// [`ForgeError::Decode`] when the list goes on past `2 × max_pages` pages after the
    /// first one this reads (it grows faster than it is read).
    pub(crate) fn get_newest<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ForgeError> {
        let per_page_param = self.profile.page_size_param;
        let per_page = self.profile.page_size;
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = |page: u32| format!("{path}{sep}{per_page_param}={per_page}&page={page}");
        let first = self.get_page::<T>(&url(1))?;
        let start = match first.last {
            Some(last) if last > self.max_pages => last - self.max_pages + 1,
            _ => 1,
        };
        let mut window: std::collections::VecDeque<Vec<T>> = std::collections::VecDeque::new();
        let mut page = start;
        let mut current = if start == 1 {
            first
        } else {
            self.get_page::<T>(&url(start))?
        };
        loop {
            let short = current.items.len() < per_page;
            // The `Link` header says, else the count (up to the last page), else a short page.
            let more = match (current.link_next, current.last) {
                (Some(next), _) => next,
                (None, Some(last)) => page < last,
                (None, None) => !short,
            };
            window.push_back(current.items);
            if window.len() > self.max_pages as usize {
                window.pop_front();
            }
            if !more {
                break;
            }
            if page - start + 1 >= 2 * self.max_pages {
                return Err(ForgeError::unexpected_answer(
                    path.to_owned(),
                    format!(
                        "the list goes on past page {page}; it is read up to {} pages",
                        2 * self.max_pages
                    ),
                ));
            }
            page += 1;
            current = self.get_page::<T>(&url(page))?;
        }
        Ok(window.into_iter().flatten().collect())
    }

    fn get_page<T: DeserializeOwned>(&self, path: &str) -> Result<Page<T>, ForgeError> {
        let (Paging { link, total }, body) = self.call(Method::Get, path, None)?;
        let items: Vec<T> = self.decode(Method::Get, path, &body)?;
        let link_next = link.as_deref().map(has_next_link);
        // The last page as the `Link` header names it, or else as the total count implies
        // (Gitea lists reviews with `X-Total-Count` and no `Link`).
        let per_page = self.profile.page_size as u64;
        let last = link.as_deref().and_then(last_page).or_else(|| {
            total
                .map(|total| total.div_ceil(per_page).max(1))
                .and_then(|pages| u32::try_from(pages).ok())
        });
        Ok(Page {
            items,
            link_next,
            last,
        })
    }
}

/// The `page` number of an RFC 8288 `Link` header's `rel="last"` link, read from its URL's
/// query (the URL itself is never followed).
fn last_page(link: &str) -> Option<u32> {
    let url = link_of(link, "last")?
        .strip_prefix('<')?
        .strip_suffix('>')?;
    let query = url.split_once('?')?.1.split('#').next()?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("page="))
        .and_then(|n| n.parse().ok())
}

/// The target (`<…>` included) of an RFC 8288 `Link` header's link of relation `rel`.
fn link_of<'a>(link: &'a str, rel: &str) -> Option<&'a str> {
    link.split(',').find_map(|part| {
        let mut pieces = part.split(';');
        let target = pieces.next()?.trim();
        pieces
            .any(|param| {
                param
                    .trim()
                    .strip_prefix("rel=")
                    .is_some_and(|v| v.trim_matches('"').split_whitespace().any(|r| r == rel))
            })
            .then_some(target)
    })
}

/// Whether an RFC 8288 `Link` header has a `rel="next"` link.
fn has_next_link(link: &str) -> bool {
    link_of(link, "next").is_some()
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

    #[test]
    fn the_last_page_is_read_from_the_link_not_from_per_page() {
        let github = r#"<https://api.github.com/repositories/1/pulls/3/reviews?per_page=100&page=2>; rel="next", <https://api.github.com/repositories/1/pulls/3/reviews?per_page=100&page=25>; rel="last""#;
        assert_eq!(last_page(github), Some(25));
        let gitea = r#"<https://gitea.example/api/v1/repos/a/b/pulls/3/reviews?limit=50&page=2>; rel="next",<https://gitea.example/api/v1/repos/a/b/pulls/3/reviews?page=40&limit=50>; rel="last""#;
        assert_eq!(last_page(gitea), Some(40));
        for no_last in [
            "",
            r#"<https://x/?page=2>; rel="next""#,
            r#"<https://x/?per_page=7>; rel="last""#,
            r#"<https://x/?page=two>; rel="last""#,
            r#"https://x/?page=9; rel="last""#,
        ] {
            assert_eq!(last_page(no_last), None, "{no_last}");
        }
    }
}
