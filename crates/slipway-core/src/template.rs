//! `${...}` references inside string values: parsing, and substituting what is known.
//!
//! `$${` writes a literal `${`. A `$` not followed by `{` is literal. Rendering substitutes
//! the references it can resolve (variables, the environment) and leaves the others
//! (resource outputs, ports, secrets) in place, re-escaped, for the engine to resolve at apply
//! time; so a rendered string is still a template, and resolution is the same code twice.

use std::fmt;

/// One reference, by what it points at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reference {
    /// `${vars.NAME}`
    Var(String),
    /// `${env.ATTR}`: `name`, `stack` or `kind` of the environment.
    Env(String),
    /// `${resources.NAME.OUTPUT...}`: an output of another resource (`url`, `ports.http`).
    Resource {
        /// The resource.
        name: String,
        /// The output's path, at least one part.
        output: Vec<String>,
    },
    /// `${ports.NAME}`: one of the resource's own allocated ports.
    Port(String),
    /// `${secrets.NAME}`
    Secret(String),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Var(n) => write!(f, "${{vars.{n}}}"),
            Reference::Env(n) => write!(f, "${{env.{n}}}"),
            Reference::Resource { name, output } => {
                write!(f, "${{resources.{name}.{}}}", output.join("."))
            }
            Reference::Port(n) => write!(f, "${{ports.{n}}}"),
            Reference::Secret(n) => write!(f, "${{secrets.{n}}}"),
        }
    }
}

/// A piece of a template string.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// Literal text (escapes already undone).
    Text(String),
    /// A reference, with its byte offset in the string.
    Ref(Reference, usize),
}

/// A malformed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Byte offset of the `${` in the string.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// Splits a string into literal text and references.
pub fn parse(s: &str) -> Result<Vec<Segment>, TemplateError> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    let mut offset = 0;
    while let Some(i) = rest.find('$') {
        text.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            text.push_str("${");
            rest = tail;
            offset += i + 3;
        } else if after.starts_with("${") {
            let start = offset + i;
            let Some(end) = after.find('}') else {
                return Err(TemplateError {
                    offset: start,
                    message: "unterminated `${`".into(),
                    hint: Some(
                        "close the reference with `}`, or write `$${` for a literal `${`".into(),
                    ),
                });
            };
            let reference = parse_reference(&after[2..end], start)?;
            if !text.is_empty() {
                out.push(Segment::Text(std::mem::take(&mut text)));
            }
            out.push(Segment::Ref(reference, start));
            rest = &after[end + 1..];
            offset = start + end + 1;
        } else {
            text.push('$');
            rest = &after[1..];
            offset += i + 1;
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Segment::Text(text));
    }
    Ok(out)
}

fn parse_reference(inner: &str, offset: usize) -> Result<Reference, TemplateError> {
    let err = |message: String, hint: Option<&str>| TemplateError {
        offset,
        message,
        hint: hint.map(str::to_string),
    };
    let parts: Vec<&str> = inner.trim().split('.').collect();
    if parts.iter().any(|p| {
        p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }) {
        return Err(err(
            format!("malformed reference `${{{inner}}}`"),
            Some("references look like `${vars.name}`, `${resources.db.url}` or `${ports.http}`"),
        ));
    }
    let one = |kind: fn(String) -> Reference| {
        if parts.len() == 2 {
            Ok(kind(parts[1].to_string()))
        } else {
            Err(err(
                format!(
                    "`${{{inner}}}` should have exactly two parts, like `${{{}.name}}`",
                    parts[0]
                ),
                None,
            ))
        }
    };
    match parts[0] {
        "vars" => one(Reference::Var),
        "env" => one(Reference::Env),
        "ports" => one(Reference::Port),
        "secrets" => one(Reference::Secret),
        "resources" => {
            if parts.len() < 3 {
                return Err(err(
                    format!("`${{{inner}}}` does not name an output"),
                    Some("write `${resources.NAME.OUTPUT}`, e.g. `${resources.db.url}`"),
                ));
            }
            Ok(Reference::Resource {
                name: parts[1].to_string(),
                output: parts[2..].iter().map(|s| s.to_string()).collect(),
            })
        }
        other => {
            let hint =
                crate::diag::did_you_mean(other, ["vars", "env", "resources", "ports", "secrets"])
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| {
                        "references start with vars, env, resources, ports or secrets".into()
                    });
            Err(TemplateError {
                offset,
                message: format!("unknown reference `${{{inner}}}`"),
                hint: Some(hint),
            })
        }
    }
}

/// Escapes literal text so that [`parse`] reads it back unchanged.
pub fn escape(text: &str) -> String {
    text.replace("${", "$${")
}

/// Substitutes the references that `resolve` knows, keeping the others as references.
/// The result is again a template, which reads back as exactly that literal text and those
/// kept references: the literal text between two kept references (text and values together)
/// is escaped as one piece, since pieces escaped one by one can join into a reference (a
/// value `$` before the text `{secrets.S}` would make `${secrets.S}`, which nobody wrote).
pub fn substitute(
    segments: &[Segment],
    mut resolve: impl FnMut(&Reference) -> Option<String>,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut literal = String::new();
    for segment in segments {
        match segment {
            Segment::Text(t) => literal.push_str(t),
            Segment::Ref(r, _) => match resolve(r) {
                Some(value) => literal.push_str(&value),
                None => {
                    push_escaped(&mut out, &literal);
                    literal.clear();
                    write!(out, "{r}").expect("writing to a String cannot fail");
                }
            },
        }
    }
    push_escaped(&mut out, &literal);
    out
}

/// [`escape`] of `text`, appended to `out`.
fn push_escaped(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        out.push_str("$${");
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
}

/// Resolves every reference; the first one `resolve` does not know is returned as the error.
pub fn resolve(
    segments: &[Segment],
    mut resolve: impl FnMut(&Reference) -> Option<String>,
) -> Result<String, Reference> {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Text(t) => out.push_str(t),
            Segment::Ref(r, _) => out.push_str(&resolve(r).ok_or_else(|| r.clone())?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Appending an escaped text is escaping it, and a text without `$` renders as it is
        /// (render skips parsing those).
        #[test]
        fn escaping_in_place_is_escaping(text in "[a-z$\\{}]{0,16}|\\PC{0,16}") {
            let mut out = String::from("x");
            push_escaped(&mut out, &text);
            proptest::prop_assert_eq!(out, format!("x{}", escape(&text)));
            if !text.contains('$') {
                let segments = parse(&text).expect("no reference to parse");
                proptest::prop_assert_eq!(substitute(&segments, |_| None), text);
            }
        }
    }

    proptest::proptest! {
        /// What a substitution gives reads back as the values put in and the references kept,
        /// never as a reference made of a value and the text beside it.
        #[test]
        fn a_substitution_reads_back_as_what_was_put_in(
            before in "[a-z$\\{}]{0,6}",
            first in "[a-z$\\{}.]{0,6}",
            between in "[a-z$\\{}.]{0,12}",
            second in "[a-z$\\{}.]{0,6}",
        ) {
            // Literal text as a template writes it, around two variables and a secret kept (a
            // template cannot write a `$` right before a reference).
            proptest::prop_assume!(!before.ends_with('$') && !between.ends_with('$'));
            let template = format!(
                "{}${{vars.a}}{}${{vars.b}}${{secrets.s}}",
                escape(&before),
                escape(&between)
            );
            let segments = parse(&template).expect("an escaped text parses");
            let values = |r: &Reference| match r {
                Reference::Var(name) if name == "a" => Some(first.clone()),
                Reference::Var(name) if name == "b" => Some(second.clone()),
                _ => None,
            };
            let again = parse(&substitute(&segments, values)).expect("it parses again");
            let kept: Vec<&Reference> = again
                .iter()
                .filter_map(|s| match s {
                    Segment::Ref(r, _) => Some(r),
                    Segment::Text(_) => None,
                })
                .collect();
            // A literal `$` right before a kept reference cannot be written in a template:
            // such a value turns the reference into text (it is never resolved), and makes
            // none.
            let secret = Reference::Secret("s".into());
            let literal = format!("{before}{first}{between}{second}");
            if literal.ends_with('$') {
                proptest::prop_assert!(kept.is_empty(), "{:?}", again);
            } else {
                proptest::prop_assert_eq!(kept, vec![&secret]);
                let text = resolve(&again, |_| Some(String::new())).expect("resolves");
                proptest::prop_assert_eq!(text, literal);
            }
        }
    }

    #[test]
    fn a_value_and_the_text_beside_it_make_no_reference() {
        let segments = parse("${vars.d}{secrets.S} $${vars.d}").expect("parses");
        let out = substitute(&segments, |_| Some("$".into()));
        let again = parse(&out).expect("parses again");
        assert!(
            again.iter().all(|s| matches!(s, Segment::Text(_))),
            "no reference: {again:?}"
        );
        assert_eq!(
            resolve(&again, |_| None).expect("nothing to resolve"),
            "${secrets.S} ${vars.d}"
        );
    }

    #[test]
    fn references_and_escapes() {
        let segs = parse("a ${vars.x} $${lit} $5 ${resources.db.ports.http}").expect("parses");
        assert_eq!(
            segs,
            vec![
                Segment::Text("a ".into()),
                Segment::Ref(Reference::Var("x".into()), 2),
                Segment::Text(" ${lit} $5 ".into()),
                Segment::Ref(
                    Reference::Resource {
                        name: "db".into(),
                        output: vec!["ports".into(), "http".into()]
                    },
                    23
                ),
            ]
        );
    }

    #[test]
    fn substitution_keeps_unknown_references_and_escapes() {
        let segs = parse("$${x} ${vars.a} ${ports.http}").expect("parses");
        let out = substitute(&segs, |r| {
            matches!(r, Reference::Var(_)).then(|| "${y}".to_string())
        });
        assert_eq!(
            out, "$${x} $${y} ${ports.http}",
            "the result is still a template"
        );
        let again = parse(&out).expect("parses again");
        let done = resolve(&again, |_| Some("8080".into())).expect("resolves");
        assert_eq!(done, "${x} ${y} 8080");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(parse("${vars.x").is_err());
        assert!(parse("${vars}").is_err());
        assert!(
            parse("${var.x}")
                .unwrap_err()
                .hint
                .unwrap()
                .contains("vars")
        );
        assert!(parse("${resources.db}").is_err());
        assert!(parse("${vars.a b}").is_err());
    }
}
