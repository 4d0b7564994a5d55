//! YAML text → a located tree, with the limits that make it safe on hostile input.
//!
//! The tree keeps every node's position so that later passes can say `file:line:col`. It
//! resolves plain scalars by the YAML 1.2 core schema, refuses duplicate keys, bounds nesting
//! depth and alias expansion (a "billion laughs" file is an error, not an out-of-memory), and
//! accepts exactly one document.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::diag::Pos;

/// A YAML value with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the value starts.
    pub pos: Pos,
    /// The value.
    pub value: Value,
    /// Whether it was written as a quoted scalar (its text starts one column after `pos`).
    pub quoted: bool,
}

impl Node {
    /// Where the scalar's text starts: after the opening quote of a quoted scalar.
    pub fn content_pos(&self) -> Pos {
        if self.quoted {
            Pos::new(self.pos.line, self.pos.col + 1)
        } else {
            self.pos
        }
    }
}

/// A YAML value. Mapping keys keep their nodes so that errors about a key point at the key.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A floating point number.
    Float(f64),
    /// Any other scalar, or a quoted one.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short name of the value's kind, for error messages ("a string", "a list").
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Bounds on what one file may contain.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest nesting of lists and mappings, counting what an alias copies.
    pub max_depth: usize,
    /// Most nodes in the tree, counting every node an alias copies.
    pub max_nodes: usize,
    /// Most bytes of scalar text in the tree, counting every scalar an alias copies: a
    /// string of a megabyte under a thousand aliases is a gigabyte.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_nodes: 1_000_000,
            max_bytes: 64 << 20,
        }
    }
}

/// What several files may expand to together (the files of one stack), aliases included:
/// each parse given it takes what its file expands to. Each file's own [`Limits`] still
/// bound it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Nodes left.
    pub nodes: usize,
    /// Bytes of scalar text left.
    pub bytes: usize,
}

impl Budget {
    /// What a stack's files (`slipway.yaml`, its includes, its manifests, its secrets file)
    /// may expand to together.
    pub const STACK: Budget = Budget {
        nodes: 4_000_000,
        bytes: 256 << 20,
    };
}

/// A problem in the YAML text itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

fn pos_of(span: &Span) -> Pos {
    // saphyr: lines are 1-based, columns 0-based.
    Pos::new(
        u32::try_from(span.start.line()).unwrap_or(u32::MAX),
        u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
    )
}

/// Parses one YAML document. Returns the tree when the text is well-formed, and every error
/// found (parsing stops at the first syntax error; duplicate keys are all reported).
pub fn parse(text: &str, limits: Limits) -> (Option<Node>, Vec<YamlError>) {
    let mut alone = Budget::STACK;
    parse_in(text, limits, &mut alone)
}

/// [`parse`], taking what the file expands to from `budget`.
pub fn parse_in(text: &str, limits: Limits, budget: &mut Budget) -> (Option<Node>, Vec<YamlError>) {
    let (mut roots, errors) = parse_stream(text, limits, budget, false);
    (roots.pop(), errors)
}

/// Parses a stream of YAML documents separated by `---`, as Kubernetes manifests are written.
/// Returns every non-empty document when the whole text is well-formed (anchors do not cross
/// documents; `limits` bound the stream as a whole), and every error found.
pub fn parse_documents(text: &str, limits: Limits) -> (Vec<Node>, Vec<YamlError>) {
    let mut alone = Budget::STACK;
    parse_documents_in(text, limits, &mut alone)
}

/// [`parse_documents`], taking what the stream expands to from `budget`.
pub fn parse_documents_in(
    text: &str,
    limits: Limits,
    budget: &mut Budget,
) -> (Vec<Node>, Vec<YamlError>) {
    parse_stream(text, limits, budget, true)
}

fn parse_stream(
    text: &str,
    limits: Limits,
    budget: &mut Budget,
    multi: bool,
) -> (Vec<Node>, Vec<YamlError>) {
    let mut builder = Builder {
        limits,
        left: *budget,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        bytes: 0,
        root: None,
        roots: Vec::new(),
        errors: Vec::new(),
        documents: 0,
        multi,
    };
    let parsed = builder.build(text);
    budget.nodes = budget.nodes.saturating_sub(builder.nodes);
    budget.bytes = budget.bytes.saturating_sub(builder.bytes);
    match parsed {
        Ok(()) => (builder.roots, builder.errors),
        Err(()) => (Vec::new(), builder.errors),
    }
}

impl Builder {
    /// Builds the trees of `text`; `Err` when it stopped at a fatal error (in `errors`).
    fn build(&mut self, text: &str) -> Result<(), ()> {
        for event in Parser::new_from_str(text) {
            match event {
                Ok((event, span)) => {
                    if let Err(fatal) = self.on_event(event, &span) {
                        self.errors.push(fatal);
                        return Err(());
                    }
                }
                Err(e) => {
                    let m = e.marker();
                    self.errors.push(YamlError {
                        pos: Pos::new(
                            u32::try_from(m.line()).unwrap_or(u32::MAX),
                            u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
                        ),
                        message: format!("invalid YAML: {}", e.info()),
                        hint: Some("check the indentation and quoting around this position".into()),
                    });
                    return Err(());
                }
            }
        }
        self.end_document();
        if !self.errors.is_empty() {
            self.roots.clear();
        }
        Ok(())
    }
}

struct Builder {
    limits: Limits,
    /// What is left of the budget the parse was given, when it began.
    left: Budget,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    /// Nodes and bytes of scalar text made so far, aliases' copies included.
    nodes: usize,
    bytes: usize,
    root: Option<Node>,
    roots: Vec<Node>,
    errors: Vec<YamlError>,
    documents: usize,
    /// Several documents are allowed (a manifest stream), not only one (`slipway.yaml`).
    multi: bool,
}

impl Builder {
    fn on_event(&mut self, event: Event<'_>, span: &Span) -> Result<(), YamlError> {
        let pos = pos_of(span);
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 && !self.multi {
                    return Err(YamlError {
                        pos,
                        message: "more than one YAML document in one file".into(),
                        hint: Some("remove the `---` separator, or move the second document to its own file and `include:` it".into()),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                if let Some(tag) = tag
                    && !tag.is_yaml_core_schema()
                {
                    return Err(YamlError {
                        pos,
                        message: format!("unsupported YAML tag `{}{}`", tag.handle, tag.suffix),
                        hint: Some("remove the tag; slipway.yaml uses plain YAML values".into()),
                    });
                }
                self.count(0, text.len(), pos)?;
                let value = if style == ScalarStyle::Plain {
                    resolve_plain(&text, pos)?
                } else {
                    Value::Str(text.into_owned())
                };
                let quoted = matches!(style, ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted);
                self.push(Node { pos, value, quoted }, anchor)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.enter(pos)?;
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.enter(pos)?;
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { pos, anchor, items }) = self.stack.pop() {
                    self.push(
                        Node {
                            pos,
                            value: Value::Seq(items),
                            quoted: false,
                        },
                        anchor,
                    )?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) = self.stack.pop()
                {
                    self.check_duplicates(&entries);
                    self.push(
                        Node {
                            pos,
                            value: Value::Map(entries),
                            quoted: false,
                        },
                        anchor,
                    )?;
                }
            }
            Event::Alias(id) => {
                let Some(anchored) = self.anchors.get(&id) else {
                    return Err(YamlError {
                        pos,
                        message: "alias to an unknown anchor".into(),
                        hint: None,
                    });
                };
                // Measured before it is copied: the copy is what a bomb makes.
                let size = measure(anchored);
                if self.stack.len().saturating_add(size.height) > self.limits.max_depth {
                    return Err(self.too_deep(pos, true));
                }
                let node = anchored.clone();
                self.count(size.nodes, size.bytes, pos)?;
                self.attach(node)?;
            }
            Event::DocumentEnd => self.end_document(),
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// Keeps the document just read, if it had a value; anchors end with their document.
    fn end_document(&mut self) {
        match self.root.take() {
            // An empty document between two `---` of a manifest stream.
            Some(Node {
                value: Value::Null, ..
            }) if self.multi => {}
            Some(root) => self.roots.push(root),
            None => {}
        }
        self.anchors.clear();
    }

    /// `aliased`: the depth is reached by what an alias copies.
    fn too_deep(&self, pos: Pos, aliased: bool) -> YamlError {
        YamlError {
            pos,
            message: format!(
                "nesting deeper than {} levels{}",
                self.limits.max_depth,
                if aliased { " (aliases included)" } else { "" }
            ),
            hint: Some("flatten the structure".into()),
        }
    }

    fn enter(&mut self, pos: Pos) -> Result<(), YamlError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(self.too_deep(pos, false));
        }
        Ok(())
    }

    fn too_many(&self, pos: Pos) -> YamlError {
        YamlError {
            pos,
            message: format!(
                "the document expands to more than {} values (aliases included)",
                self.limits.max_nodes
            ),
            hint: Some(
                "this looks like an alias bomb; write the values out or split the file".into(),
            ),
        }
    }

    /// Counts `nodes` more nodes and `bytes` more bytes of scalar text against the file's
    /// limits and the budget.
    fn count(&mut self, nodes: usize, bytes: usize, pos: Pos) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(nodes);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.nodes > self.limits.max_nodes {
            return Err(self.too_many(pos));
        }
        if self.bytes > self.limits.max_bytes {
            return Err(YamlError {
                pos,
                message: format!(
                    "the document expands to more than {} MiB of text (aliases included)",
                    self.limits.max_bytes >> 20
                ),
                hint: Some(
                    "this looks like an alias bomb; write the values out or split the file".into(),
                ),
            });
        }
        if self.nodes > self.left.nodes || self.bytes > self.left.bytes {
            return Err(YamlError {
                pos,
                message: format!(
                    "the stack's files together expand to more than {} values or {} MiB of \
                     text (aliases included)",
                    Budget::STACK.nodes,
                    Budget::STACK.bytes >> 20
                ),
                hint: Some("make the stack smaller: fewer or smaller files".into()),
            });
        }
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), YamlError> {
        self.count(1, 0, node.pos)?;
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.attach(node)
    }

    fn attach(&mut self, node: Node) -> Result<(), YamlError> {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    if let Value::Str(k) = &node.value
                        && k == "<<"
                    {
                        return Err(YamlError {
                            pos: node.pos,
                            message: "YAML merge keys (`<<`) are not supported".into(),
                            hint: Some(
                                "write the fields out, or share them with `include:`".into(),
                            ),
                        });
                    }
                    *key = Some(node);
                }
                Some(k) => entries.push((k, node)),
            },
        }
        Ok(())
    }

    fn check_duplicates(&mut self, entries: &[(Node, Node)]) {
        let mut seen: HashMap<String, Pos> = HashMap::new();
        for (key, _) in entries {
            // A file of a megabyte can repeat a key a hundred thousand times: the first
            // thousand problems say enough.
            if self.errors.len() >= 1_000 {
                return;
            }
            let name = scalar_text(&key.value);
            if let Some(first) = seen.get(&name) {
                self.errors.push(YamlError {
                    pos: key.pos,
                    message: format!(
                        "duplicate key `{name}` (first defined at line {})",
                        first.line
                    ),
                    hint: Some("remove one of them; YAML keeps only one value per key".into()),
                });
            } else {
                seen.insert(name, key.pos);
            }
        }
    }
}

/// What a tree holds: its nodes, its bytes of scalar text and its height (0 for a scalar).
#[derive(Default)]
struct Size {
    nodes: usize,
    bytes: usize,
    height: usize,
}

impl Size {
    fn add(&mut self, part: &Size) {
        self.nodes = self.nodes.saturating_add(part.nodes);
        self.bytes = self.bytes.saturating_add(part.bytes);
        self.height = self.height.max(part.height + 1);
    }
}

/// The [`Size`] of `node` (its recursion is as deep as the tree, which the parse bounds).
fn measure(node: &Node) -> Size {
    let mut size = Size {
        nodes: 1,
        ..Size::default()
    };
    match &node.value {
        Value::Seq(items) => items.iter().for_each(|item| size.add(&measure(item))),
        Value::Map(entries) => {
            for (key, value) in entries {
                size.add(&measure(key));
                size.add(&measure(value));
            }
        }
        Value::Str(text) => size.bytes = text.len(),
        Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {
            size.bytes = scalar_text(&node.value).len();
        }
    }
    size
}

/// The text of a scalar as a mapping key would be compared.
pub fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => s.clone(),
        Value::Seq(_) => "[list]".into(),
        Value::Map(_) => "{mapping}".into(),
    }
}

/// Resolves a plain scalar by the YAML 1.2 core schema.
fn resolve_plain(text: &str, pos: Pos) -> Result<Value, YamlError> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Ok(Value::Float(f64::INFINITY));
        }
        "-.inf" | "-.Inf" | "-.INF" => return Ok(Value::Float(f64::NEG_INFINITY)),
        ".nan" | ".NaN" | ".NAN" => return Ok(Value::Float(f64::NAN)),
        _ => {}
    }
    let out_of_range = || YamlError {
        pos,
        message: format!("integer `{text}` does not fit in 64 bits"),
        hint: Some("quote it if it is meant as a string".into()),
    };
    let bytes = text.as_bytes();
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| out_of_range());
    }
    if let Some(hex) = text.strip_prefix("0x")
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return i64::from_str_radix(hex, 16)
            .map(Value::Int)
            .map_err(|_| out_of_range());
    }
    if let Some(oct) = text.strip_prefix("0o")
        && !oct.is_empty()
        && oct.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return i64::from_str_radix(oct, 8)
            .map(Value::Int)
            .map_err(|_| out_of_range());
    }
    if looks_like_float(bytes)
        && let Ok(f) = text.parse::<f64>()
    {
        return Ok(Value::Float(f));
    }
    Ok(Value::Str(text.to_string()))
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn looks_like_float(b: &[u8]) -> bool {
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Node {
        let (node, errors) = parse(text, Limits::default());
        assert!(errors.is_empty(), "unexpected errors: {errors:?}");
        node.expect("a document")
    }

    #[test]
    fn a_manifest_stream_gives_each_document_with_its_line() {
        let text = "---\nkind: A\n---\n# only a comment\n---\nkind: B\nx: &a 1\n...\n---\ny: *a\n";
        let (docs, errors) = parse_documents(text, Limits::default());
        assert_eq!(
            errors.len(),
            1,
            "an anchor does not reach the next document: {errors:?}"
        );
        assert!(docs.is_empty(), "nothing of a broken stream is kept");
        let (docs, errors) = parse_documents("kind: A\n---\n---\nkind: B\n", Limits::default());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(docs.len(), 2, "empty documents are skipped");
        assert_eq!(docs[0].pos.line, 1);
        assert_eq!(docs[1].pos.line, 4);
        let (one, errors) = parse("kind: A\n---\nkind: B\n", Limits::default());
        assert!(one.is_none());
        assert!(errors[0].message.contains("more than one YAML document"));
    }

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        let node = ok("a: 1\nb: true\nc: ~\nd: 1.5\ne: '1'\nf: 0x1f\ng: hello\nh: 1e3\n");
        let Value::Map(entries) = node.value else {
            panic!("a mapping")
        };
        let values: Vec<&Value> = entries.iter().map(|(_, v)| &v.value).collect();
        assert_eq!(values[0], &Value::Int(1));
        assert_eq!(values[1], &Value::Bool(true));
        assert_eq!(values[2], &Value::Null);
        assert_eq!(values[3], &Value::Float(1.5));
        assert_eq!(
            values[4],
            &Value::Str("1".into()),
            "quoted scalars stay strings"
        );
        assert_eq!(values[5], &Value::Int(31));
        assert_eq!(values[6], &Value::Str("hello".into()));
        assert_eq!(values[7], &Value::Float(1000.0));
    }

    #[test]
    fn positions_are_one_based() {
        let node = ok("a:\n  b: c\n");
        let Value::Map(entries) = node.value else {
            panic!("a mapping")
        };
        let Value::Map(inner) = &entries[0].1.value else {
            panic!("a mapping")
        };
        assert_eq!(
            inner[0].0.pos,
            Pos::new(2, 3),
            "the key `b` is at line 2 column 3"
        );
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let (_, errors) = parse("a: 1\nb: 2\na: 3\n", Limits::default());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].pos, Pos::new(3, 1));
        assert!(errors[0].message.contains("duplicate key `a`"));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..9 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            text.push_str(&format!("l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let (node, errors) = parse(&text, Limits::default());
        assert!(node.is_none());
        assert!(
            errors[0].message.contains("expands to more than"),
            "{errors:?}"
        );
    }

    /// Few nodes, each a copy of one long string: counted by their bytes, before they are
    /// copied (this asked for a gigabyte, and a few megabytes of text for a terabyte).
    #[test]
    fn a_long_string_under_many_aliases_is_refused() {
        let text = format!(
            "a: &a \"{}\"\nb: [{}]\n",
            "x".repeat(65_536),
            "*a,".repeat(16_384)
        );
        let (node, errors) = parse(&text, Limits::default());
        assert!(node.is_none());
        assert!(errors[0].message.contains("MiB of text"), "{errors:?}");
    }

    /// An alias copies a tree as deep as its anchor's: nested under more levels, it is
    /// deeper than any one of the file's lists (a chain of them made thousands of levels,
    /// which every recursive walk of the tree would overflow its stack on).
    #[test]
    fn nesting_made_by_aliases_is_refused() {
        let mut text = String::from("a0: &a0 [x]\n");
        for i in 1..40 {
            let open = "[".repeat(60);
            let close = "]".repeat(60);
            text.push_str(&format!("a{i}: &a{i} {open}*a{}{close}\n", i - 1));
        }
        let (node, errors) = parse(&text, Limits::default());
        assert!(node.is_none());
        assert!(errors[0].message.contains("nesting deeper"), "{errors:?}");
        // Within the bound, an alias nests as its anchor does.
        let (node, errors) = parse("a: &a [[x]]\nb: [*a]\n", Limits::default());
        assert!(node.is_some() && errors.is_empty(), "{errors:?}");
    }

    /// Files parsed with one budget take from it: the stack's files together are bounded,
    /// not each alone.
    #[test]
    fn one_budget_bounds_several_files() {
        let file = format!("a: [{}]\n", "x, ".repeat(600));
        let mut budget = Budget {
            nodes: 1_000,
            bytes: 1 << 20,
        };
        let (first, errors) = parse_in(&file, Limits::default(), &mut budget);
        assert!(first.is_some() && errors.is_empty(), "{errors:?}");
        assert!(budget.nodes < 400, "{budget:?}");
        let (second, errors) = parse_in(&file, Limits::default(), &mut budget);
        assert!(second.is_none());
        assert!(errors[0].message.contains("together"), "{errors:?}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(200) + &"]".repeat(200);
        let (_, errors) = parse(&text, Limits::default());
        assert!(errors[0].message.contains("nesting deeper"), "{errors:?}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let (_, errors) = parse("a: [1, 2\nb: 3\n", Limits::default());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.starts_with("invalid YAML"));
    }
}
