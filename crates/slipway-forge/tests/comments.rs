//! What Slipway reads from comments (`/slipway …` commands) and what it writes (the plan
//! comment): table tests for the behaviour, property tests for the guarantees.

use proptest::prelude::*;
use slipway_core::EnvName;
use slipway_forge::{
    Command, CommitPrefix, DEFAULT_PLAN_MARKER, EnvPlan, GITHUB_COMMENT_LIMIT, PlanCommentOptions,
    USAGE, parse_command, render_plan_comment,
};

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn env_name() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

fn checked_env_name() -> impl Strategy<Value = EnvName> {
    env_name().prop_map(|s| EnvName::parse(&s).expect("the pattern makes DNS labels"))
}

fn env(name: &str) -> EnvName {
    EnvName::parse(name).expect("the test's environment names are DNS labels")
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        proptest::option::of(checked_env_name()).prop_map(|env| Command::Plan { env }),
        (checked_env_name(), proptest::option::of("[0-9a-f]{7,64}")).prop_map(|(env, c)| {
            Command::Apply {
                env,
                commit: c.as_deref().and_then(CommitPrefix::parse),
            }
        }),
        checked_env_name().prop_map(|env| Command::Unlock { env }),
        proptest::option::of("[0-9a-f]{7,64}").prop_map(|c| Command::Preview {
            commit: c.as_deref().and_then(CommitPrefix::parse)
        }),
        proptest::option::of("[0-9a-f]{7,64}").prop_map(|c| Command::ApprovePolicies {
            commit: c.as_deref().and_then(CommitPrefix::parse)
        }),
        Just(Command::Help),
    ]
}

/// Lines that look like commands: `/slipway` followed by words from a vocabulary with verbs,
/// environment-like names, shell metacharacters and odd whitespace.
fn command_like() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("plan".to_owned()),
        Just("apply".to_owned()),
        Just("unlock".to_owned()),
        Just("preview".to_owned()),
        Just("help".to_owned()),
        env_name(),
        "[;&|$`()<>*?!~'\"\\\\ -]{1,4}",
        "\\PC{1,8}",
    ];
    (
        proptest::collection::vec(word, 0..5),
        "[ \t\u{a0}\u{2028}]{1,2}",
        "(\n.{0,20})?",
    )
        .prop_map(|(words, sep, rest)| format!("/slipway{sep}{}{rest}", words.join(&sep)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parsing_never_panics_and_what_is_accepted_round_trips(text in prop_oneof![any::<String>(), command_like()]) {
        if let Ok(Some(cmd)) = parse_command(&text) {
            prop_assert_eq!(parse_command(&cmd.to_string()), Ok(Some(cmd.clone())));
            match &cmd {
                Command::Plan { env: Some(env) } | Command::Apply { env, .. } | Command::Unlock { env } => {
                    prop_assert!(is_dns_label(env), "accepted env {:?} is a DNS label", env);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn every_valid_command_parses_back(cmd in command()) {
        prop_assert_eq!(parse_command(&cmd.to_string()), Ok(Some(cmd.clone())));
        let with_text = format!("\n  {cmd}  \nbecause the plan looked right");
        prop_assert_eq!(parse_command(&with_text), Ok(Some(cmd)));
    }

    #[test]
    fn rendered_comments_fit_and_keep_their_structure(
        plans in proptest::collection::vec(env_plan(), 0..6),
        max_len in 2048usize..80_000,
    ) {
        let options = PlanCommentOptions { max_len, ..PlanCommentOptions::default() };
        let body = render_plan_comment(&plans, &options);
        prop_assert!(body.len() <= max_len, "{} > {}", body.len(), max_len);
        prop_assert!(body.starts_with(DEFAULT_PLAN_MARKER));
        check_structure(&body).map_err(TestCaseError::fail)?;
    }
}

fn env_plan() -> impl Strategy<Value = EnvPlan> {
    let text = prop_oneof![
        "\\PC{0,40}",
        "[`~<>|@&\\\\\n-]{0,30}",
        ("[a-z +~-]{0,60}\n", 0usize..3000).prop_map(|(line, n)| line.repeat(n)),
    ];
    (
        env_name(),
        "\\PC{0,80}",
        text,
        proptest::option::of("\\PC{0,100}"),
        proptest::option::of(prop_oneof![
            Just("http://pr-42.shop.localhost:7300/".to_owned()),
            "\\PC{0,30}",
        ]),
    )
        .prop_map(
            |(env, summary_line, detail_text, error, preview_url)| EnvPlan {
                env,
                summary_line,
                detail_text,
                error,
                preview_url,
                queued: None,
                policy: None,
            },
        )
}

/// Checks that every `<details>` section holds exactly one fenced block that is closed by the
/// same fence, and that nothing in it can close the fence or the section early.
fn check_structure(body: &str) -> Result<(), String> {
    let lines: Vec<&str> = body.lines().collect();
    let mut i = 0;
    let mut sections = 0;
    while i < lines.len() {
        if lines[i] == "<details>" {
            sections += 1;
            let open = lines
                .iter()
                .skip(i)
                .position(|l| l.starts_with("```"))
                .map(|p| p + i)
                .ok_or("a section without a fence")?;
            let fence: String = lines[open].chars().take_while(|&c| c == '`').collect();
            // CommonMark: a closing fence is a line of at least as many backticks, alone.
            let close = lines
                .iter()
                .skip(open + 1)
                .position(|l| {
                    let t = l.trim_end();
                    t.len() >= fence.len() && t.chars().all(|c| c == '`')
                })
                .map(|p| p + open + 1)
                .ok_or("an unclosed fence")?;
            if lines[close].trim_end() != fence {
                return Err(format!("the fence {fence} is closed by {}", lines[close]));
            }
            let end = lines
                .iter()
                .skip(close)
                .position(|l| *l == "</details>")
                .ok_or("an unclosed <details>")?;
            if end != 2 {
                return Err("text between the fence and </details>".into());
            }
            i = close + end + 1;
        } else {
            if lines[i].contains("</details>") {
                return Err(format!("a stray </details> on line {i}: {}", lines[i]));
            }
            i += 1;
        }
    }
    let opened = body.matches("<details>").count();
    if opened != sections {
        return Err(format!("{opened} <details> but {sections} sections"));
    }
    Ok(())
}

#[test]
fn commands_from_the_table() {
    let table: &[(&str, Result<Option<Command>, &str>)] = &[
        ("/slipway plan", Ok(Some(Command::Plan { env: None }))),
        (
            "/slipway plan pr-42",
            Ok(Some(Command::Plan {
                env: Some(env("pr-42")),
            })),
        ),
        (
            "/slipway apply prod",
            Ok(Some(Command::Apply {
                env: env("prod"),
                commit: None,
            })),
        ),
        (
            "/slipway apply prod 0123456789abcdef0123456789abcdef01234567",
            Ok(Some(Command::Apply {
                env: env("prod"),
                commit: CommitPrefix::parse("0123456789abcdef0123456789abcdef01234567"),
            })),
        ),
        (
            "/slipway apply prod 0123456 now",
            Err("Sorry, `/slipway apply` does not take `0123456 now`."),
        ),
        (
            "/slipway unlock prod",
            Ok(Some(Command::Unlock { env: env("prod") })),
        ),
        (
            "/slipway preview",
            Ok(Some(Command::Preview { commit: None })),
        ),
        (
            "/slipway approve-policies",
            Ok(Some(Command::ApprovePolicies { commit: None })),
        ),
        (
            "/slipway approve-policies prod",
            Err(
                "Sorry, `prod` is not a commit: name the head commit you reviewed by its whole id \
                 (40 or 64 hex digits).",
            ),
        ),
        (
            "/slipway preview abc1234 prod",
            Err("Sorry, `/slipway preview` does not take `prod`."),
        ),
        ("/slipway help", Ok(Some(Command::Help))),
        ("Looks good to me!", Ok(None)),
        (
            "/slipway apply prod; rm -rf /",
            Err("Sorry, `/slipway apply` does not take `rm -rf /`."),
        ),
        (
            "/slipway apply $(touch /tmp/pwned)",
            Err("Sorry, `/slipway apply` does not take `/tmp/pwned)`."),
        ),
        (
            "/slipway apply prod extra",
            Err("Sorry, `/slipway apply` does not take `extra`."),
        ),
        (
            "/slipway apply",
            Err(
                "Sorry, `/slipway apply` needs the environment's name, e.g. `/slipway apply staging`.",
            ),
        ),
        (
            "/slipway apply PROD",
            Err("Sorry, `PROD` is not an environment name."),
        ),
        (
            "/slipway deploy prod",
            Err("Sorry, `deploy` is not a Slipway command."),
        ),
        ("/slipway", Err("Sorry, `/slipway` needs a command.")),
    ];
    for (text, expected) in table {
        let got = parse_command(text);
        match expected {
            Ok(cmd) => assert_eq!(got.as_ref().ok(), Some(cmd), "{text:?}"),
            Err(problem) => {
                let err = got.expect_err(text);
                assert_eq!(err.problem(), *problem, "{text:?}");
                assert_eq!(
                    err.to_string(),
                    format!("{problem}\n\n{USAGE}"),
                    "{text:?}: the reply ends with the usage"
                );
            }
        }
    }
}

#[test]
fn the_plan_comment_reads_well() {
    let plans = vec![
        EnvPlan {
            env: "prod".into(),
            summary_line: "1 to create, 1 to change, 0 to destroy".into(),
            detail_text: "+ service.web (create)\n~ config.app (change)".into(),
            error: None,
            preview_url: None,
            queued: None,
            policy: None,
        },
        EnvPlan {
            env: "pr-42".into(),
            summary_line: "1 to create".into(),
            detail_text: "+ service.web (create)".into(),
            error: None,
            preview_url: Some("http://pr-42.shop.localhost:7300/".into()),
            queued: None,
            policy: None,
        },
        EnvPlan {
            env: "qa".into(),
            summary_line: String::new(),
            detail_text: String::new(),
            error: Some("render failed: slipway.yaml:12: unknown field `prot`".into()),
            preview_url: None,
            queued: None,
            policy: None,
        },
    ];
    let options = PlanCommentOptions {
        head_sha: Some("1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d".into()),
        ..PlanCommentOptions::default()
    };
    let expected = r#"<!-- slipway:plan -->
### Slipway plan for `1a2b3c4d5e6f`

3 environments, 1 failed.

| Environment | Plan | Preview |
| --- | --- | --- |
| `prod` | 1 to create, 1 to change, 0 to destroy |  |
| `pr-42` | 1 to create | [open](http://pr-42.shop.localhost:7300/) |
| `qa` | ❌ render failed: slipway.yaml:12: unknown field \`prot\` |  |

<details>
<summary><code>prod</code>: 1 to create, 1 to change, 0 to destroy</summary>

```text
+ service.web (create)
~ config.app (change)
```

</details>

<details>
<summary><code>pr-42</code>: 1 to create</summary>

```text
+ service.web (create)
```

</details>

<details>
<summary><code>qa</code>: failed</summary>

```text
Error: render failed: slipway.yaml:12: unknown field `prot`
```

</details>

"#;
    assert_eq!(render_plan_comment(&plans, &options), expected);
    assert_eq!(
        render_plan_comment(&[], &PlanCommentOptions::default()),
        "<!-- slipway:plan -->\n### Slipway plan\n\n0 environments.\n\nThis pull request changes no environment.\n"
    );
}

#[test]
fn hostile_plan_text_cannot_break_out() {
    let plans = vec![EnvPlan {
        env: "prod".into(),
        summary_line: "| pwned | <img src=x onerror=alert(1)> @acme/admins".into(),
        detail_text: "````\n</details>\n# Approved by @acme/admins\n```````".into(),
        error: None,
        preview_url: Some("javascript:alert(1)".into()),
        queued: None,
        policy: None,
    }];
    let body = render_plan_comment(&plans, &PlanCommentOptions::default());
    check_structure(&body).expect("the structure holds");
    assert!(
        body.contains("\n````````text\n"),
        "the fence is longer than the longest backtick run:\n{body}"
    );
    assert!(
        body.contains(r"\| pwned \| \<img src=x onerror=alert\(1\)\> @"),
        "{body}"
    );
    assert!(
        !body.contains("@acme") || body.matches("@\u{200B}acme").count() == 2,
        "mentions are defused outside the fence"
    );
    assert!(!body.contains("javascript:"), "only http(s) links");
}

#[test]
fn long_plans_are_cut_to_the_limit_and_say_so() {
    let big = "~ resource.change (update) with a long line of detail\n".repeat(2000);
    let plans: Vec<EnvPlan> = ["prod", "staging", "qa", "pr-1", "pr-2"]
        .iter()
        .map(|env| EnvPlan {
            env: (*env).into(),
            summary_line: "2000 to change".into(),
            detail_text: big.clone(),
            error: None,
            preview_url: None,
            queued: None,
            policy: None,
        })
        .chain(std::iter::once(EnvPlan {
            env: "small".into(),
            summary_line: "1 to create".into(),
            detail_text: "+ service.tiny (create)".into(),
            error: None,
            preview_url: None,
            queued: None,
            policy: None,
        }))
        .collect();
    let body = render_plan_comment(&plans, &PlanCommentOptions::default());
    assert!(body.len() <= GITHUB_COMMENT_LIMIT, "{} bytes", body.len());
    assert!(
        body.len() > GITHUB_COMMENT_LIMIT - 4000,
        "the room is used: {} bytes",
        body.len()
    );
    check_structure(&body).expect("the structure holds");
    for env in ["prod", "staging", "qa", "pr-1", "pr-2", "small"] {
        assert!(body.contains(&format!("| `{env}` |")), "{env} has its row");
        assert!(
            body.contains(&format!("<summary><code>{env}</code>")),
            "{env} has its details"
        );
    }
    assert!(
        body.contains("+ service.tiny (create)\n"),
        "a short plan is shown whole"
    );
    assert!(body.contains("more lines not shown)"), "a cut plan says so");
    assert!(
        body.contains("This comment was cut") && body.contains("5 plans shortened"),
        "{}",
        &body[body.len() - 400..]
    );
}

#[test]
fn very_many_environments_still_fit() {
    let plans: Vec<EnvPlan> = (0..3000)
        .map(|i| EnvPlan {
            env: format!("pr-{i}"),
            summary_line: "1 to create, 2 to change, 3 to destroy".into(),
            detail_text: "+ a\n~ b\n- c".into(),
            error: None,
            preview_url: Some(format!("http://pr-{i}.shop.localhost:7300/")),
            queued: None,
            policy: None,
        })
        .collect();
    let body = render_plan_comment(&plans, &PlanCommentOptions::default());
    assert!(body.len() <= GITHUB_COMMENT_LIMIT);
    check_structure(&body).expect("the structure holds");
    assert!(
        body.contains("more environments not shown"),
        "the table says rows were left out"
    );
    assert!(
        body.contains("environments not listed"),
        "the note says so too"
    );
}

#[test]
fn a_queued_preview_shows_its_place_instead_of_its_link() {
    let plans = vec![EnvPlan {
        env: "pr-7".into(),
        summary_line: "1 to create, 0 to update, 0 to replace, 0 to delete".into(),
        detail_text: "+ web (process)\n".into(),
        error: None,
        preview_url: Some("http://pr-7.shop.localhost:7300/".into()),
        queued: Some("preview queued: 2nd in line | @acme/admins".into()),
        policy: None,
    }];
    let body = render_plan_comment(&plans, &PlanCommentOptions::default());
    check_structure(&body).expect("the structure holds");
    assert!(
        body.contains("preview queued: 2nd in line \\| @\u{200B}acme"),
        "the place is in the row, escaped:\n{body}"
    );
    assert!(
        !body.contains("[open]("),
        "no link to a preview that does not run yet:\n{body}"
    );
}

#[test]
fn a_policy_line_is_one_escaped_line_in_the_row_and_cannot_break_the_table() {
    // A policy's message is written by whoever wrote the policy and quotes names from the
    // stack: a pipe, a newline and a mention must not break the row or ping anyone.
    let plans = vec![EnvPlan {
        env: "prod".into(),
        summary_line: "0 to create, 0 to update, 0 to replace, 1 to delete".into(),
        detail_text: "- db (postgres.database)\n".into(),
        error: None,
        preview_url: None,
        queued: None,
        policy: Some("⛔ blocked by policy no-deletes | ask @acme/owners\n| forged | row |".into()),
    }];
    let body = render_plan_comment(&plans, &PlanCommentOptions::default());
    check_structure(&body).expect("the structure holds");
    let row = body
        .lines()
        .find(|l| l.contains("blocked by policy"))
        .expect("the policy line is in a row");
    assert!(
        row.contains("1 to delete<br>⛔ blocked by policy no-deletes \\| ask @\u{200B}acme"),
        "after the summary, escaped:\n{body}"
    );
    assert!(
        !body.lines().any(|l| l.starts_with("| forged")),
        "the newline did not start a row of its own:\n{body}"
    );
}
