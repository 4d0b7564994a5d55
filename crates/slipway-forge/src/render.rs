//! The plan comment: one Markdown comment per pull request, with a table of environments and
//! each plan folded in `<details>`, cut to fit the forge's comment limit.
//!
//! Everything in it that came from the pull request (resource names, error messages, plan
//! text) is attacker-controlled, so every piece is escaped for the place it lands in: plan text
//! in a code fence longer than any backtick run in it, table cells with Markdown escapes,
//! `<summary>` with HTML escapes, and `@` followed by a zero-width space so that nobody can make
//! Slipway's account mention a team.

use std::fmt::Write as _;

/// GitHub's limit on a comment's body, in characters. The renderer counts bytes, which are
/// never fewer than characters (or UTF-16 code units), so a body within it in bytes is within
/// it for the forge too.
pub const GITHUB_COMMENT_LIMIT: usize = 65_536;

/// The marker of Slipway's plan comment.
pub const DEFAULT_PLAN_MARKER: &str = "<!-- slipway:plan -->";

/// The smallest limit [`render_plan_comment`] honours; a smaller one is raised to it.
const MIN_LEN: usize = 2048;

/// One environment's plan, as the caller summarises it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvPlan {
    /// The environment's name.
    pub env: String,
    /// One line, e.g. `2 to create, 1 to change, 0 to destroy`.
    pub summary_line: String,
    /// The full plan, shown folded (secrets already redacted by the caller).
    pub detail_text: String,
    /// Why planning failed, if it did.
    pub error: Option<String>,
    /// The environment's preview URL, if it has one (`http` or `https` only).
    pub preview_url: Option<String>,
    /// Why its preview waits, with its place in line, while it is queued (its family runs
    /// `max_environments` already): shown instead of the preview's link.
    pub queued: Option<String>,
    /// What the policies say of the plan, in one line, when they block it or an owner
    /// approved it (their messages are in `detail_text`): shown after the summary.
    pub policy: Option<String>,
}

/// How to render the plan comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCommentOptions {
    /// The hidden marker that identifies the comment for [`crate::Forge::upsert_comment`].
    pub marker: String,
    /// The commit the plans are for, shown in the heading.
    pub head_sha: Option<String>,
    /// The largest body to produce, in bytes (at least 2,048).
    pub max_len: usize,
}

impl Default for PlanCommentOptions {
    fn default() -> Self {
        PlanCommentOptions {
            marker: DEFAULT_PLAN_MARKER.to_owned(),
            head_sha: None,
            max_len: GITHUB_COMMENT_LIMIT,
        }
    }
}

/// Renders the plan comment for `plans`.
///
/// # Guarantees
/// - The result starts with `options.marker` and is at most `options.max_len` bytes.
/// - Every environment has a row in the table as long as the rows fit at all; when plans are
///   cut or left out, the comment says so and how to see them in full.
/// - Nothing from `plans` can end a code fence, a `<details>` block or a table cell early, nor
///   mention a user or team.
pub fn render_plan_comment(plans: &[EnvPlan], options: &PlanCommentOptions) -> String {
    let max_len = options.max_len.max(MIN_LEN);
    let mut head = String::new();
    head.push_str(&options.marker);
    head.push_str("\n### Slipway plan");
    if let Some(sha) = &options.head_sha {
        let short: String = sha.chars().take(12).collect();
        let _ = write!(head, " for {}", inline_code(&short));
    }
    head.push_str("\n\n");
    let failed = plans.iter().filter(|p| p.error.is_some()).count();
    let _ = write!(
        head,
        "{} environment{}",
        plans.len(),
        if plans.len() == 1 { "" } else { "s" }
    );
    if failed > 0 {
        let _ = write!(head, ", {failed} failed");
    }
    head.push_str(".\n\n");
    if plans.is_empty() {
        head.push_str("This pull request changes no environment.\n");
        return head;
    }

    // Room kept for the note that says what was cut.
    const NOTE_ROOM: usize = 400;
    let budget = max_len - NOTE_ROOM;

    let mut table = String::from("| Environment | Plan | Preview |\n| --- | --- | --- |\n");
    let mut rows_left_out = 0;
    for (i, plan) in plans.iter().enumerate() {
        let row = table_row(plan);
        if head.len() + table.len() + row.len() + 100 > budget {
            rows_left_out = plans.len() - i;
            break;
        }
        table.push_str(&row);
    }
    if rows_left_out > 0 {
        let _ = writeln!(
            table,
            "| … | {rows_left_out} more environment{} not shown | |",
            if rows_left_out == 1 { "" } else { "s" }
        );
    }
    table.push('\n');

    // Share what is left between the plans' details: the short ones whole, the long ones an
    // equal share each of the rest.
    let shown = plans.len() - rows_left_out;
    let mut room = budget.saturating_sub(head.len() + table.len());
    let full: Vec<String> = plans[..shown].iter().map(|p| details(p, None)).collect();
    let mut order: Vec<usize> = (0..shown).collect();
    order.sort_by_key(|&i| full[i].len());
    let mut sections: Vec<Option<String>> = vec![None; shown];
    let mut cut = 0;
    let mut omitted = 0;
    for (n, &i) in order.iter().enumerate() {
        let share = room / (shown - n);
        let section = if full[i].len() <= share {
            Some(full[i].clone())
        } else {
            cut += 1;
            let overhead = details(&plans[i], Some(0)).len();
            (share > overhead + 200)
                .then(|| details(&plans[i], Some(share - overhead)))
                .filter(|s| s.len() <= share)
        };
        if section.is_none() {
            omitted += 1;
        }
        room -= section.as_ref().map_or(0, String::len);
        sections[i] = section;
    }

    let mut out = head;
    out.push_str(&table);
    for section in sections.into_iter().flatten() {
        out.push_str(&section);
    }
    if cut > 0 || rows_left_out > 0 {
        let _ = write!(
            out,
            "\n> [!NOTE]\n> This comment was cut to stay under the forge's comment size limit \
             ({} plan{} shortened, {} left out{}). Run `slipway plan --env ENV` on this \
             branch for the full plan.\n",
            cut - omitted,
            if cut - omitted == 1 { "" } else { "s" },
            omitted,
            if rows_left_out > 0 {
                format!(", {rows_left_out} environments not listed")
            } else {
                String::new()
            },
        );
    }
    debug_assert!(out.len() <= max_len, "{} > {max_len}", out.len());
    if out.len() > max_len {
        // Cannot happen by the accounting above; cut rather than be refused by the forge.
        let mut end = max_len;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

fn table_row(plan: &EnvPlan) -> String {
    let mut status = match &plan.error {
        Some(error) => format!("❌ {}", escape_markdown(&one_line(error, 200))),
        None => escape_markdown(&one_line(&plan.summary_line, 200)),
    };
    if let Some(policy) = &plan.policy {
        status.push_str("<br>");
        status.push_str(&escape_markdown(&one_line(policy, 200)));
    }
    let preview = match &plan.queued {
        Some(why) => format!("⏳ {}", escape_markdown(&one_line(why, 200))),
        None => plan
            .preview_url
            .as_deref()
            .and_then(safe_url)
            .map(|url| format!("[open]({url})"))
            .unwrap_or_default(),
    };
    format!(
        "| {} | {} | {} |\n",
        inline_code(&one_line(&plan.env, 80)).replace('|', "\\|"),
        status,
        preview
    )
}

/// The `<details>` section for one plan; `limit` caps the plan text's bytes (`None`: whole).
fn details(plan: &EnvPlan, limit: Option<usize>) -> String {
    let mut text = String::new();
    if let Some(error) = &plan.error {
        text.push_str("Error: ");
        text.push_str(error);
        if !plan.detail_text.is_empty() {
            text.push_str("\n\n");
        }
    }
    text.push_str(&plan.detail_text);
    let text = clean_block(&text);
    let text = match limit {
        Some(limit) if text.len() > limit => {
            let mut end = limit;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            // Cut at a line's end when there is one in the last quarter.
            if let Some(nl) = text[..end].rfind('\n').filter(|&nl| nl >= end * 3 / 4) {
                end = nl;
            }
            let hidden = text[end..].lines().count();
            format!("{}\n… ({hidden} more lines not shown)", &text[..end])
        }
        _ => text,
    };
    let summary = if plan.error.is_some() {
        "failed".to_owned()
    } else {
        one_line(&plan.summary_line, 200)
    };
    let fence = "`".repeat(longest_backtick_run(&text).max(2) + 1);
    format!(
        "<details>\n<summary><code>{}</code>: {}</summary>\n\n{fence}text\n{text}\n{fence}\n\n</details>\n\n",
        escape_html(&one_line(&plan.env, 80)),
        escape_html(&summary),
    )
}

/// `s` as one line: control characters and line breaks become spaces, cut to `max`
/// characters.
fn one_line(s: &str, max: usize) -> String {
    crate::names::short_text(s, max)
}

/// The most of a text [`literal_block`] keeps, in characters.
const LITERAL_MAX: usize = 4000;

/// Text Slipway did not write (an error that quotes the repository, a job's output) as a
/// Markdown code block, to follow a sentence of Slipway's own: whatever it holds, nothing in
/// it is a mention, a link, an image, HTML or a heading, it cannot end its block early (no
/// two backticks in a row are left in it), and it carries no comment marker
/// ([`without_markers`]). Control characters go, and it is cut to 4,000 characters.
pub fn literal_block(s: &str) -> String {
    let mut text = without_markers(&clean_block(s));
    // No two backticks in a row, and no line that starts with `/`: the fence is then always
    // three backticks, and nothing in the block looks like the end of a code block or a
    // quick action (`/approve`) to a reader that scans the raw text (older GitLab does).
    while text.contains("``") {
        text = text.replace("``", "`\u{200B}`");
    }
    let text: Vec<String> = text
        .lines()
        .map(|line| match line.strip_prefix('/') {
            Some(rest) => format!("\u{200B}/{rest}"),
            None => line.to_owned(),
        })
        .collect();
    let mut text = text.join("\n");
    if text.chars().count() > LITERAL_MAX {
        text = text.chars().take(LITERAL_MAX).collect();
        text.push_str("\n… (cut)");
    }
    format!("\n\n```text\n{}\n```\n\n", text.trim_end())
}

/// `s` with a zero-width space in each `<!--`, so that no reply carrying a user's text passes
/// for the plan comment, which its hidden marker names.
pub(crate) fn without_markers(s: &str) -> String {
    s.replace("<!--", "<\u{200B}!--")
}

/// Plan text for a code block: no control characters but newlines and tabs (a NUL or an escape
/// sequence has nothing to do in a comment), `\r\n` as `\n`.
fn clean_block(s: &str) -> String {
    s.replace("\r\n", "\n")
        .chars()
        .filter(|&c| c == '\n' || c == '\t' || !c.is_control())
        .collect()
}

fn longest_backtick_run(s: &str) -> usize {
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest
}

/// `s` as a Markdown code span, whatever backticks it holds (its line breaks become spaces).
/// Nothing inside a code span is a mention, a link or HTML.
pub(crate) fn inline_code(s: &str) -> String {
    let s = one_line(s, usize::MAX);
    if s.is_empty() {
        return "` `".to_owned();
    }
    let fence = "`".repeat(longest_backtick_run(&s) + 1);
    if s.starts_with('`') || s.ends_with('`') {
        format!("{fence} {s} {fence}")
    } else {
        format!("{fence}{s}{fence}")
    }
}

/// `s` as literal text in a Markdown table cell.
pub(crate) fn escape_markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '{' | '}' | '[' | ']' | '<' | '>' | '(' | ')' | '#' | '!'
            | '|' | '~' | '&' => {
                out.push('\\');
                out.push(c);
            }
            '@' => out.push_str("@\u{200B}"),
            _ => out.push(c),
        }
    }
    unlinked(&out)
}

/// `s` with what the forges would make a link of (`scheme://`, `www.`) broken by a zero-width
/// space: a branch's words in a cell of Slipway's comment (a key of its stack quoted in an
/// error) would otherwise be a link there, in Slipway's voice.
fn unlinked(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("://") {
            out.push_str(":\u{200B}//");
            rest = &rest[3..];
        } else if rest
            .get(..4)
            .is_some_and(|w| w.eq_ignore_ascii_case("www."))
        {
            out.push_str(&rest[..3]);
            out.push_str("\u{200B}.");
            rest = &rest[4..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// `s` as literal text inside HTML (`<summary>`).
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '@' => out.push_str("@\u{200B}"),
            _ => out.push(c),
        }
    }
    unlinked(&out)
}

/// `url` if it is a plain `http(s)` URL that cannot break out of a Markdown link.
fn safe_url(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let ok = !rest.is_empty()
        && url.len() <= 2000
        && !url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "()<>[]|\"'`\\".contains(c));
    ok.then_some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_block_keeps_any_text_inert_and_whole() {
        let hostile = "unknown field `x`\n```\n/approve\n  /merge\n@org/team **Applied** <img src=x> \
                       <!-- slipway:plan -->\u{1b}[31m\n````";
        let block = literal_block(hostile);
        let inner = block
            .strip_prefix("\n\n```text\n")
            .and_then(|b| b.strip_suffix("\n```\n\n"))
            .unwrap_or_else(|| panic!("fenced by three backticks: {block:?}"));
        assert!(
            !inner.contains("``"),
            "nothing in it can end the block: {block:?}"
        );
        assert!(
            inner.lines().all(|l| !l.starts_with('/')),
            "no line reads as a quick action: {block:?}"
        );
        assert!(!block.contains("<!--"), "no comment marker: {block:?}");
        assert!(
            !block.contains('\u{1b}'),
            "no control characters: {block:?}"
        );
        assert!(
            block.contains("@org/team **Applied** <img src=x>"),
            "the words stay: {block:?}"
        );
        let long = literal_block(&"a".repeat(10_000));
        assert!(
            long.len() < 4_100 && long.contains("… (cut)"),
            "cut: {}",
            long.len()
        );
    }

    #[test]
    fn code_spans_hold_any_backticks() {
        assert_eq!(inline_code("prod"), "`prod`");
        assert_eq!(inline_code("a`b"), "``a`b``");
        assert_eq!(inline_code("`x`"), "`` `x` ``");
        assert_eq!(inline_code("a\nb"), "`a b`");
    }

    #[test]
    fn urls_that_could_break_a_link_are_not_linked() {
        assert_eq!(
            safe_url("http://pr-42.shop.localhost:7300/"),
            Some("http://pr-42.shop.localhost:7300/")
        );
        assert_eq!(safe_url("javascript:alert(1)"), None);
        assert_eq!(safe_url("https://x/)[y](https://evil"), None);
        assert_eq!(safe_url("https://"), None);
    }

    #[test]
    fn escapes_neutralise_markup_and_mentions() {
        assert_eq!(
            escape_markdown("a|b <img> @team"),
            "a\\|b \\<img\\> @\u{200B}team"
        );
        assert_eq!(escape_html("</summary>@x"), "&lt;/summary&gt;@\u{200B}x");
        // Nothing a forge would link: a scheme, `www.` in any case.
        for escaped in [
            escape_markdown("see https://evil.example/x and WWW.evil.example, é://"),
            escape_html("https://evil.example/x www.evil.example"),
        ] {
            assert!(
                !escaped.contains("://") && !escaped.to_ascii_lowercase().contains("www."),
                "{escaped}"
            );
            assert!(escaped.replace('\u{200B}', "").contains("evil.example"));
        }
    }
}
