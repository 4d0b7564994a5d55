//! A policy file's header: its package, and its OPA `# METADATA` annotation's `title` and
//! `custom.enforcement`.
//!
//! ```rego
//! # METADATA
//! # title: No deletes in protected environments
//! # custom:
//! #   enforcement: soft
//! package slipway
//! ```
//!
//! Only the annotation block right above `package` counts (OPA's package scope); the flow
//! form `# custom: { enforcement: soft }` is read too. A level that is not one of the three
//! is an error, so that a typo never lowers a policy to advisory.

use serde::{Deserialize, Serialize};

/// How a policy's denial is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Shown, never blocks.
    Advisory,
    /// Blocks unless an owner approves the policies for that head commit.
    Soft,
    /// Blocks.
    Hard,
}

impl Enforcement {
    /// The word, as written in the annotation and the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Advisory => "advisory",
            Enforcement::Soft => "soft",
            Enforcement::Hard => "hard",
        }
    }
}

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    /// `slipway` for a policy, the dotted package otherwise.
    pub package: String,
    pub title: Option<String>,
    pub enforcement: Enforcement,
}

/// Reads `text`'s header; an error says what is wrong and on which line.
pub(crate) fn read(text: &str) -> Result<Meta, String> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(at) = lines
        .iter()
        .position(|l| l.trim_start().starts_with("package ") || l.trim() == "package")
    else {
        return Err("no `package` line: a policy starts with `package slipway`".into());
    };
    let package = lines[at]
        .trim()
        .trim_start_matches("package")
        .trim()
        .to_string();
    if package.is_empty() {
        return Err(format!("{}: `package` names no package", at + 1));
    }
    // The comment block right above the package line.
    let start = lines[..at]
        .iter()
        .rposition(|l| !l.trim_start().starts_with('#'))
        .map_or(0, |i| i + 1);
    let block = &lines[start..at];
    let Some(m) = block.iter().position(|l| comment(l).trim() == "METADATA") else {
        return Ok(Meta {
            package,
            title: None,
            enforcement: Enforcement::Hard,
        });
    };
    let mut title = None;
    let mut enforcement = None;
    let mut in_custom = false;
    for (i, line) in block.iter().enumerate().skip(m + 1) {
        let body = comment(line);
        let indented = body.starts_with(' ') || body.starts_with('\t');
        let Some((key, value)) = body.trim().split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let number = start + i + 1;
        if !indented {
            in_custom = key == "custom";
            if key == "title" {
                title = Some(unquote(value).to_string());
            }
            if key == "custom" && value.starts_with('{') {
                let inner = value.trim_start_matches('{').trim_end_matches('}');
                for pair in inner.split(',') {
                    if let Some((k, v)) = pair.split_once(':')
                        && k.trim() == "enforcement"
                    {
                        enforcement = Some(level(unquote(v.trim()), number)?);
                    }
                }
            }
        } else if in_custom && key == "enforcement" {
            enforcement = Some(level(unquote(value), number)?);
        }
    }
    Ok(Meta {
        package,
        title,
        enforcement: enforcement.unwrap_or(Enforcement::Hard),
    })
}

/// A comment line's text after `#` and one space.
fn comment(line: &str) -> &str {
    let body = line.trim_start().trim_start_matches('#');
    body.strip_prefix(' ').unwrap_or(body)
}

fn unquote(s: &str) -> &str {
    s.trim_matches(|c| c == '"' || c == '\'')
}

fn level(word: &str, line: usize) -> Result<Enforcement, String> {
    match word {
        "advisory" => Ok(Enforcement::Advisory),
        "soft" => Ok(Enforcement::Soft),
        "hard" => Ok(Enforcement::Hard),
        other => Err(format!(
            "{line}: enforcement `{other}` is not one of advisory, soft, hard"
        )),
    }
}
