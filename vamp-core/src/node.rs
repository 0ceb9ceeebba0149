//! The document tree the DSL reader works on, and the YAML/JSON loader that builds it.
//!
//! Vamp read its DSL with SnakeYAML (YAML 1.1 resolution) and then walked a generic tree.
//! [`Node`] is that tree: ordered maps with string keys, sequences and typed scalars.
//! [`load_yaml`] reproduces SnakeYAML's YAML 1.1 scalar resolution (`yes`/`no`/`on`/`off` are
//! booleans, `0x1F` and `1:20` are integers, unquoted ISO dates are timestamps) so that existing
//! Vamp documents mean the same thing here. Quoted scalars are always strings.
//!
//! Deliberate differences from SnakeYAML (see `COMPATIBILITY.md`):
//! * an unquoted timestamp keeps its source text ([`Node::Timestamp`]) instead of becoming a
//!   `java.util.Date` whose `toString` was locale- and zone-dependent;
//! * nesting deeper than [`MAX_DEPTH`] and alias expansion beyond [`MAX_NODES`] nodes or
//!   [`MAX_EXPANDED_BYTES`] bytes are rejected
//!   with a [`YamlError`] instead of exhausting the stack or memory.

use std::fmt;
use std::sync::OnceLock;

use indexmap::IndexMap;
use regex::Regex;
use saphyr_parser::{Event, Parser, ScalarStyle};

/// An ordered map with string keys, as every DSL map is.
pub type Map = IndexMap<String, Node>;

/// Maximum nesting depth of a loaded document.
pub const MAX_DEPTH: usize = 256;

/// Maximum number of bytes of text a document may expand to (aliases count every time they
/// are used): a large scalar repeated through aliases must not take gigabytes.
pub const MAX_EXPANDED_BYTES: usize = 64 << 20;

/// Maximum number of nodes a document may expand to (aliases count every time they are used).
pub const MAX_NODES: usize = 1_000_000;

/// A value in a DSL document.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Node {
    /// `~`, `null`, an empty value.
    #[default]
    Null,
    /// `true`/`false` (and YAML 1.1's `yes`/`no`/`on`/`off`).
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// An unquoted YAML timestamp (`2007-12-03T08:15:30Z`), kept as written.
    Timestamp(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A map with string keys, in document order.
    Map(Map),
}

impl Node {
    /// The type name used in error messages (`String`, `Int`, `Map`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "Null",
            Self::Bool(_) => "Boolean",
            Self::Int(_) => "Int",
            Self::Float(_) => "Double",
            Self::Str(_) => "String",
            Self::Timestamp(_) => "Timestamp",
            Self::Seq(_) => "List",
            Self::Map(_) => "Map",
        }
    }

    /// Whether this is a scalar (not a map or a sequence).
    pub fn is_scalar(&self) -> bool {
        !matches!(self, Self::Seq(_) | Self::Map(_))
    }

    /// The scalar as text, the way Vamp's reader turned any scalar into a string
    /// (`8080` → `"8080"`, `true` → `"true"`, `0.5` → `"0.5"`). `None` for null, maps and lists.
    pub fn scalar_string(&self) -> Option<String> {
        match self {
            Self::Str(s) | Self::Timestamp(s) => Some(s.clone()),
            Self::Bool(b) => Some(b.to_string()),
            Self::Int(i) => Some(i.to_string()),
            Self::Float(f) => Some(format_float(*f)),
            Self::Null | Self::Seq(_) | Self::Map(_) => None,
        }
    }

    /// The map, if this is one.
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Self::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The string, if this is a [`Node::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Converts to JSON (timestamps become strings).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::Int(i) => Value::from(*i),
            Self::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(format_float(*f))),
            Self::Str(s) | Self::Timestamp(s) => Value::String(s.clone()),
            Self::Seq(items) => Value::Array(items.iter().map(Self::to_json).collect()),
            Self::Map(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// Converts from JSON.
    pub fn from_json(value: &serde_json::Value) -> Self {
        use serde_json::Value;
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Self::Int(i),
                None => Self::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Self::Str(s.clone()),
            Value::Array(items) => Self::Seq(items.iter().map(Self::from_json).collect()),
            Value::Object(m) => Self::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), Self::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// A key string for this node when it is used as a map key, the way SnakeYAML + Java
    /// stringified keys: scalars by value, a sequence `[a, b]`, a map `{k=v}`.
    fn key_string(&self) -> String {
        match self {
            Self::Null => "null".to_owned(),
            Self::Seq(items) => {
                let inner: Vec<String> = items.iter().map(Self::key_string).collect();
                format!("[{}]", inner.join(", "))
            }
            Self::Map(m) => {
                let inner: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.key_string()))
                    .collect();
                format!("{{{}}}", inner.join(", "))
            }
            other => other.scalar_string().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Node {
    /// Writes the node as compact JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl serde::Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(|v| Self::from_json(&v))
    }
}

/// Formats a float the way Java's `Double.toString` does for ordinary values
/// (`1.0`, `0.5`, `1500.0`).
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 {
            "Infinity".to_owned()
        } else {
            "-Infinity".to_owned()
        }
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// A YAML syntax error, or a document that breaks a loader limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    /// What went wrong, with the line and column where known.
    pub message: String,
}

/// Loads every document of a YAML (or JSON) stream.
///
/// # Errors
/// A [`YamlError`] for a syntax error, a custom tag (`!foo`; Vamp rejected them with
/// `Can't construct a resource for !foo`), an undefined alias, nesting deeper than
/// [`MAX_DEPTH`] or more than [`MAX_NODES`] nodes.
///
/// ```
/// use vamp_core::node::{load_yaml, Node};
/// let docs = load_yaml("a: yes\nb: '8080'\n---\n- 1:20\n").unwrap();
/// assert_eq!(docs.len(), 2);
/// let a = docs[0].as_map().unwrap();
/// assert_eq!(a["a"], Node::Bool(true));
/// assert_eq!(a["b"], Node::Str("8080".into()));
/// assert_eq!(docs[1], Node::Seq(vec![Node::Int(80)]));
/// ```
pub fn load_yaml(text: &str) -> Result<Vec<Node>, YamlError> {
    let mut text = std::borrow::Cow::Borrowed(text);
    // SnakeYAML (like libyaml) accepts a flow collection's closing bracket at the indentation
    // of its key (`key: [\n  a\n]`); saphyr rejects it. Where that is the only problem, move
    // the bracket (whose position inside a flow collection means nothing) and parse again.
    for _ in 0..64 {
        let mut indent_line = None;
        match load_yaml_strict(&text, &mut indent_line) {
            Err(e) => match indent_line.and_then(|line| reindent_flow_closer(&text, line)) {
                Some(fixed) => text = std::borrow::Cow::Owned(fixed),
                None => return Err(e),
            },
            ok => return ok,
        }
    }
    load_yaml_strict(&text, &mut None)
}

/// Re-indents `line` (1-based) if it starts with a `]`/`}` closer, to the previous non-blank
/// line's indentation (at least one column deeper than now).
fn reindent_flow_closer(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let idx = line.checked_sub(1)?;
    let target = lines.get(idx)?;
    let trimmed = target.trim_start_matches(' ');
    let first = trimmed.chars().next()?;
    if first != ']' && first != '}' {
        return None;
    }
    let current = target.len() - trimmed.len();
    let prev = lines[..idx].iter().rev().find(|l| !l.trim().is_empty())?;
    let indent = (prev.len() - prev.trim_start_matches(' ').len()).max(current + 1);
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    out[idx] = format!("{}{}", " ".repeat(indent), trimmed);
    Some(out.join("\n"))
}

/// Loads without compatibility retries; an "invalid indentation" error carries its line.
fn load_yaml_strict(text: &str, indent_line: &mut Option<usize>) -> Result<Vec<Node>, YamlError> {
    enum Frame {
        Seq(Vec<Node>, usize),
        Map(Map, Option<Node>, usize),
    }
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: std::collections::HashMap<usize, (Node, usize, usize)> = Default::default();
    let mut nodes = 0usize;
    let mut bytes = 0usize;

    // Places a finished node into its parent (or finishes a document).
    fn place(stack: &mut [Frame], docs: &mut Vec<Node>, node: Node) {
        match stack.last_mut() {
            None => docs.push(node),
            Some(Frame::Seq(items, _)) => items.push(node),
            Some(Frame::Map(map, key, _)) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    let k = k.key_string();
                    // Duplicate keys: the last one wins, at the position of the first.
                    map.insert(k, node);
                }
            },
        }
    }
    fn size(node: &Node) -> usize {
        match node {
            Node::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
            Node::Map(m) => 1 + m.values().map(size).sum::<usize>(),
            _ => 1,
        }
    }
    /// The text a node holds (strings and keys; 8 for other scalars).
    fn text_of(node: &Node) -> usize {
        match node {
            Node::Seq(items) => items.iter().map(text_of).sum(),
            Node::Map(m) => m.iter().map(|(k, v)| k.len() + text_of(v)).sum(),
            Node::Str(s) => s.len(),
            _ => 8,
        }
    }
    fn check_tag(tag: &Option<std::borrow::Cow<'_, saphyr_parser::Tag>>) -> Result<(), YamlError> {
        if let Some(tag) = tag {
            let core = tag.handle == "tag:yaml.org,2002:" || tag.handle == "!!";
            if !core {
                return Err(YamlError {
                    message: format!(
                        "Can't construct a resource for {}{}; custom tags are not supported",
                        tag.handle, tag.suffix
                    ),
                });
            }
        }
        Ok(())
    }

    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| {
            if e.info() == "invalid indentation" {
                *indent_line = Some(e.marker().line());
            }
            let message = format!(
                "{} at line {} column {}",
                e.info(),
                e.marker().line(),
                e.marker().col() + 1
            );
            YamlError { message }
        })?;
        let at = |what: &str| YamlError {
            message: format!(
                "{what} at line {} column {}",
                span.start.line(),
                span.start.col() + 1
            ),
        };
        match event {
            Event::Scalar(value, style, anchor, tag) => {
                check_tag(&tag)?;
                let node = match (&tag, style) {
                    (Some(t), _) => core_tagged(&t.suffix, &value).ok_or_else(|| {
                        at(&format!("invalid value '{value}' for tag !!{}", t.suffix))
                    })?,
                    (None, ScalarStyle::Plain) => resolve_plain(&value),
                    (None, _) => Node::Str(value.into_owned()),
                };
                nodes += 1;
                let t = text_of(&node);
                bytes += t;
                if nodes > MAX_NODES || bytes > MAX_EXPANDED_BYTES {
                    return Err(at("document too large"));
                }
                if anchor > 0 {
                    anchors.insert(anchor, (node.clone(), 1, t));
                }
                place(&mut stack, &mut docs, node);
            }
            Event::SequenceStart(anchor, tag) => {
                check_tag(&tag)?;
                if stack.len() >= MAX_DEPTH {
                    return Err(at(&format!("nesting deeper than {MAX_DEPTH} levels")));
                }
                stack.push(Frame::Seq(Vec::new(), anchor));
            }
            Event::MappingStart(anchor, tag) => {
                check_tag(&tag)?;
                if stack.len() >= MAX_DEPTH {
                    return Err(at(&format!("nesting deeper than {MAX_DEPTH} levels")));
                }
                stack.push(Frame::Map(Map::new(), None, anchor));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq(items, a)) => (Node::Seq(items), a),
                    Some(Frame::Map(m, _, a)) => (Node::Map(m), a),
                    None => return Err(at("unbalanced collection end")),
                };
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(at("document too large"));
                }
                if anchor > 0 {
                    let n = size(&node);
                    anchors.insert(anchor, (node.clone(), n, text_of(&node)));
                }
                place(&mut stack, &mut docs, node);
            }
            Event::Alias(id) => {
                let (anchored, n, t) = anchors.get(&id).ok_or_else(|| at("undefined alias"))?;
                nodes += n;
                bytes = bytes.saturating_add(*t);
                if nodes > MAX_NODES || bytes > MAX_EXPANDED_BYTES {
                    return Err(at("document too large (alias expansion)"));
                }
                let node = anchored.clone();
                if stack.len() + depth(&node) > MAX_DEPTH {
                    return Err(at(&format!("nesting deeper than {MAX_DEPTH} levels")));
                }
                place(&mut stack, &mut docs, node);
            }
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd
            | Event::Nothing => {}
        }
    }
    Ok(docs)
}

fn depth(node: &Node) -> usize {
    match node {
        Node::Seq(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Node::Map(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn core_tagged(suffix: &str, value: &str) -> Option<Node> {
    Some(match suffix {
        "str" => Node::Str(value.to_owned()),
        "null" => Node::Null,
        "bool" => match resolve_plain(value) {
            b @ Node::Bool(_) => b,
            _ => return None,
        },
        "int" => match resolve_plain(value) {
            i @ Node::Int(_) => i,
            _ => return None,
        },
        "float" => match resolve_plain(value) {
            Node::Float(f) => Node::Float(f),
            Node::Int(i) => Node::Float(i as f64),
            _ => return None,
        },
        "timestamp" => Node::Timestamp(value.to_owned()),
        _ => resolve_plain(value),
    })
}

struct Resolvers {
    boolean: Regex,
    int: Regex,
    float: Regex,
    timestamp: Regex,
}

fn resolvers() -> &'static Resolvers {
    static R: OnceLock<Resolvers> = OnceLock::new();
    R.get_or_init(|| Resolvers {
        // SnakeYAML's Resolver (YAML 1.1 without y/n).
        boolean: Regex::new(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$").expect("static regex"),
        int: Regex::new(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$").expect("static regex"),
        float: Regex::new(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*(?:[eE][-+]?[0-9]+)|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$").expect("static regex"),
        timestamp: Regex::new(r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$").expect("static regex"),
    })
}

/// Resolves a plain (unquoted) scalar with YAML 1.1 rules, as SnakeYAML did.
pub fn resolve_plain(value: &str) -> Node {
    let r = resolvers();
    match value {
        "" | "~" | "null" | "Null" | "NULL" => return Node::Null,
        _ => {}
    }
    if r.boolean.is_match(value) {
        let lower = value.to_ascii_lowercase();
        return Node::Bool(matches!(lower.as_str(), "yes" | "true" | "on"));
    }
    if r.int.is_match(value) {
        if let Some(i) = parse_yaml11_int(value) {
            return Node::Int(i);
        }
        // Out of i64 range: Java would have used a BigInteger; keep the text.
        return Node::Str(value.to_owned());
    }
    if r.float.is_match(value)
        && let Some(f) = parse_yaml11_float(value)
    {
        return Node::Float(f);
    }
    if r.timestamp.is_match(value) {
        return Node::Timestamp(value.to_owned());
    }
    Node::Str(value.to_owned())
}

fn parse_yaml11_int(value: &str) -> Option<i64> {
    let clean: String = value.chars().filter(|c| *c != '_').collect();
    let (neg, body) = match clean.as_bytes().first() {
        Some(b'-') => (true, &clean[1..]),
        Some(b'+') => (false, &clean[1..]),
        _ => (false, clean.as_str()),
    };
    let magnitude: i128 = if let Some(bin) = body.strip_prefix("0b") {
        i128::from_str_radix(bin, 2).ok()?
    } else if let Some(hex) = body.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()?
    } else if body.contains(':') {
        body.split(':').try_fold(0i128, |acc, part| {
            acc.checked_mul(60)?.checked_add(part.parse::<i128>().ok()?)
        })?
    } else if body.len() > 1 && body.starts_with('0') {
        i128::from_str_radix(&body[1..], 8).ok()?
    } else {
        body.parse::<i128>().ok()?
    };
    let v = if neg { -magnitude } else { magnitude };
    i64::try_from(v).ok()
}

fn parse_yaml11_float(value: &str) -> Option<f64> {
    let clean: String = value.chars().filter(|c| *c != '_').collect();
    match clean.as_str() {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    if clean.contains(':') {
        let (neg, body) = match clean.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, clean.trim_start_matches('+')),
        };
        let mut acc = 0f64;
        for part in body.split(':') {
            acc = acc * 60.0 + part.parse::<f64>().ok()?;
        }
        return Some(if neg { -acc } else { acc });
    }
    clean.parse::<f64>().ok()
}

/// Loads a JSON text into nodes (one document; a top-level array is one document).
///
/// # Errors
/// A [`YamlError`] with serde_json's message when the text is not JSON.
pub fn load_json(text: &str) -> Result<Vec<Node>, YamlError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| YamlError {
        message: e.to_string(),
    })?;
    Ok(vec![Node::from_json(&value)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        load_yaml(text).unwrap().remove(0)
    }

    #[test]
    fn yaml11_scalars() {
        let m = one(
            "a: yes\nb: Off\nc: 0x1F\nd: 017\ne: 1:20\nf: 1.5\ng: .5\nh: ~\ni: 2007-12-03T08:15:30Z\nj: 'yes'\nk: 1_000\nl: y\nm: 64.MB\nn: 1e3\n",
        );
        let m = m.as_map().unwrap();
        assert_eq!(m["a"], Node::Bool(true));
        assert_eq!(m["b"], Node::Bool(false));
        assert_eq!(m["c"], Node::Int(31));
        assert_eq!(m["d"], Node::Int(15));
        assert_eq!(m["e"], Node::Int(80));
        assert_eq!(m["f"], Node::Float(1.5));
        assert_eq!(m["g"], Node::Float(0.5));
        assert_eq!(m["h"], Node::Null);
        assert_eq!(m["i"], Node::Timestamp("2007-12-03T08:15:30Z".into()));
        assert_eq!(m["j"], Node::Str("yes".into()));
        assert_eq!(m["k"], Node::Int(1000));
        assert_eq!(m["l"], Node::Str("y".into()));
        assert_eq!(m["m"], Node::Str("64.MB".into()));
        assert_eq!(m["n"], Node::Float(1000.0));
    }

    #[test]
    fn keys_are_stringified_and_duplicates_last_win() {
        let m = one("8080: a\n[external/1/2]: b\nport: 1\nport: 2\n");
        let keys: Vec<&String> = m.as_map().unwrap().keys().collect();
        assert_eq!(keys, ["8080", "[external/1/2]", "port"]);
        assert_eq!(m.as_map().unwrap()["port"], Node::Int(2));
    }

    #[test]
    fn custom_tags_are_rejected() {
        let err = load_yaml("name: !ios\n").unwrap_err();
        assert!(
            err.message
                .starts_with("Can't construct a resource for !ios"),
            "{err}"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = "[".repeat(100_000);
        assert!(load_yaml(&text).is_err());
        let text = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        let err = load_yaml(&text).unwrap_err();
        assert!(
            err.message.contains("nesting") || err.message.contains("recursion"),
            "{err}"
        );
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for c in 'b'..='j' {
            text.push_str(&format!(
                "{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = c;
        }
        assert!(load_yaml(&text).unwrap_err().message.contains("too large"));
    }

    #[test]
    fn flow_closer_at_key_indentation_is_accepted() {
        let m = one("a: [\n  x,\n  y\n]\nb: 1\n");
        let m = m.as_map().unwrap();
        assert_eq!(
            m["a"],
            Node::Seq(vec![Node::Str("x".into()), Node::Str("y".into())])
        );
        assert_eq!(m["b"], Node::Int(1));
        assert!(load_yaml("a: [x\n b: ]]]\n").is_err());
    }

    #[test]
    fn json_is_yaml() {
        let m = one(r#"{"a": [1, 2.5, "x", null, true]}"#);
        assert_eq!(
            m.as_map().unwrap()["a"],
            Node::Seq(vec![
                Node::Int(1),
                Node::Float(2.5),
                Node::Str("x".into()),
                Node::Null,
                Node::Bool(true)
            ])
        );
    }
}
