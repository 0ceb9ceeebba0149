//! Typed access to a document map that consumes what it reads.
//!
//! Vamp tracked which leaves of a document its readers consumed and rejected the rest with
//! `UnexpectedElement`. Here every read *removes* the entry from the (owned, mutable) tree; what
//! is left once an artifact is read is exactly the unconsumed part ([`leftovers`]).

use std::sync::OnceLock;

use regex::Regex;

use crate::error::{Notification, ReadError, ReadResult};
use crate::node::{Map, Node};

/// Joins a path and a key with `/`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}/{key}")
    }
}

pub(crate) fn err<T>(n: Notification, path: &str) -> ReadResult<T> {
    Err(ReadError::new(n, path))
}

fn unexpected_type(path: &str, expected: &str, actual: &Node) -> ReadError {
    ReadError::new(
        Notification::UnexpectedTypeError {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual: actual.type_name().to_owned(),
        },
        path,
    )
}

/// Removes `key`, returning its value unless it is absent or null.
pub(crate) fn take(m: &mut Map, key: &str) -> Option<Node> {
    match m.shift_remove(key) {
        None | Some(Node::Null) => None,
        Some(n) => Some(n),
    }
}

/// Removes the first present (non-null) key of `keys`, with the key found.
pub(crate) fn take_any<'k>(m: &mut Map, keys: &[&'k str]) -> Option<(&'k str, Node)> {
    for k in keys {
        match m.get(*k) {
            Some(Node::Null) => {
                m.shift_remove(*k);
            }
            Some(_) => return take(m, k).map(|n| (*k, n)),
            None => {}
        }
    }
    None
}

/// An optional string: any scalar is turned into text (as Vamp did).
pub(crate) fn string(m: &mut Map, key: &str, path: &str) -> ReadResult<Option<String>> {
    match take(m, key) {
        None => Ok(None),
        Some(n) => n
            .scalar_string()
            .map(Some)
            .ok_or_else(|| unexpected_type(&join(path, key), "String", &n)),
    }
}

/// A required string.
pub(crate) fn req_string(m: &mut Map, key: &str, path: &str) -> ReadResult<String> {
    string(m, key, path)?.ok_or_else(|| missing(&join(path, key)))
}

pub(crate) fn missing(path: &str) -> ReadError {
    ReadError::new(
        Notification::MissingPathValueError {
            path: path.to_owned(),
        },
        path,
    )
}

/// A node as text, or an `UnexpectedTypeError` at `path`.
pub(crate) fn node_string(n: &Node, path: &str) -> ReadResult<String> {
    n.scalar_string()
        .ok_or_else(|| unexpected_type(path, "String", n))
}

/// An optional integer (a string is not converted, as in Vamp).
pub(crate) fn int(m: &mut Map, key: &str, path: &str) -> ReadResult<Option<i64>> {
    match take(m, key) {
        None => Ok(None),
        Some(Node::Int(i)) => Ok(Some(i)),
        Some(n) => Err(unexpected_type(&join(path, key), "Int", &n)),
    }
}

/// A required integer.
pub(crate) fn req_int(m: &mut Map, key: &str, path: &str) -> ReadResult<i64> {
    int(m, key, path)?.ok_or_else(|| missing(&join(path, key)))
}

/// A required number (integers are converted).
pub(crate) fn req_double(m: &mut Map, key: &str, path: &str) -> ReadResult<f64> {
    match take(m, key) {
        None => Err(missing(&join(path, key))),
        Some(Node::Int(i)) => Ok(i as f64),
        Some(Node::Float(f)) => Ok(f),
        Some(n) => Err(unexpected_type(&join(path, key), "Double", &n)),
    }
}

/// An optional boolean.
pub(crate) fn boolean(m: &mut Map, key: &str, path: &str) -> ReadResult<Option<bool>> {
    match take(m, key) {
        None => Ok(None),
        Some(Node::Bool(b)) => Ok(Some(b)),
        Some(n) => Err(unexpected_type(&join(path, key), "Boolean", &n)),
    }
}

/// `metadata`: a map (kept whole), else `UnsupportedMetadata`.
pub(crate) fn metadata(m: &mut Map, path: &str) -> ReadResult<Map> {
    match take(m, "metadata") {
        None => Ok(Map::new()),
        Some(Node::Map(inner)) => Ok(inner),
        Some(_) => err(Notification::UnsupportedMetadata, &join(path, "metadata")),
    }
}

/// `dialects` or `dialect`: a free map.
pub(crate) fn dialects(m: &mut Map, path: &str) -> ReadResult<Map> {
    match take_any(m, &["dialects", "dialect"]) {
        None => Ok(Map::new()),
        Some((_, Node::Map(inner))) => Ok(inner),
        Some((k, n)) => Err(unexpected_type(&join(path, k), "Map", &n)),
    }
}

/// Consumes `kind` and `lookup_name`, checking that `kind` (singular or plural) matches.
pub(crate) fn kind_check(m: &mut Map, expected: &str, path: &str) -> ReadResult<()> {
    m.shift_remove("lookup_name");
    if let Some(k) = string(m, "kind", path)? {
        let plural = if k.ends_with('s') {
            k.clone()
        } else {
            format!("{k}s")
        };
        if plural != expected {
            return err(
                Notification::InconsistentArtifactKind {
                    given: k,
                    found: expected.to_owned(),
                },
                &join(path, "kind"),
            );
        }
    }
    Ok(())
}

/// `validateName`: no whitespace, `/`, `[` or `]`, not empty.
pub(crate) fn validate_name(name: &str, path: &str) -> ReadResult<()> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"^[^\s/\[\]]+$").expect("static regex"));
    if re.is_match(name) {
        Ok(())
    } else {
        err(
            Notification::IllegalName {
                name: name.to_owned(),
            },
            path,
        )
    }
}

/// `validateStrictName`: additionally no `.`.
pub(crate) fn validate_strict_name(name: &str, path: &str) -> ReadResult<()> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"^[^\s/\[\].]+$").expect("static regex"));
    if re.is_match(name) {
        Ok(())
    } else {
        err(
            Notification::IllegalStrictName {
                name: name.to_owned(),
            },
            path,
        )
    }
}

/// Prunes what was consumed: empty maps and sequences disappear; what remains was not read.
pub(crate) fn leftovers(node: Node) -> Option<Node> {
    match node {
        Node::Map(m) => {
            let kept: Map = m
                .into_iter()
                .filter_map(|(k, v)| leftovers(v).map(|v| (k, v)))
                .collect();
            (!kept.is_empty()).then_some(Node::Map(kept))
        }
        Node::Seq(items) => {
            let kept: Vec<Node> = items.into_iter().filter_map(leftovers).collect();
            (!kept.is_empty()).then_some(Node::Seq(kept))
        }
        other => Some(other),
    }
}

/// `UnexpectedElement` for whatever is left of `rest`.
pub(crate) fn check_consumed(rest: Map) -> ReadResult<()> {
    match leftovers(Node::Map(rest)) {
        None => Ok(()),
        Some(element) => {
            let message = element.to_string();
            let path = first_path(&element);
            err(Notification::UnexpectedElement { element, message }, &path)
        }
    }
}

fn first_path(node: &Node) -> String {
    let mut path = String::new();
    let mut cur = node;
    loop {
        match cur {
            Node::Map(m) => match m.iter().next() {
                Some((k, v)) => {
                    path = join(&path, k);
                    cur = v;
                }
                None => return path,
            },
            Node::Seq(items) => match items.first() {
                Some(v) => cur = v,
                None => return path,
            },
            _ => return path,
        }
    }
}

/// The map under `key`, left in place so that its unconsumed entries stay in the tree.
/// Absent or null → `None` (a null entry is removed).
pub(crate) fn descend<'m>(
    m: &'m mut Map,
    key: &str,
    path: &str,
) -> ReadResult<Option<&'m mut Map>> {
    if matches!(m.get(key), Some(Node::Null)) {
        m.shift_remove(key);
        return Ok(None);
    }
    match m.get_mut(key) {
        None => Ok(None),
        Some(Node::Map(inner)) => Ok(Some(inner)),
        Some(n) => Err(unexpected_type(&join(path, key), "Map", n)),
    }
}

#[cfg(test)]
mod tests {
    //! reader-fixtures.md §11 (YamlSourceReaderTest): what reading consumes.
    use super::*;
    use crate::node::load_yaml;

    fn tree(text: &str) -> Map {
        match load_yaml(text).unwrap().remove(0) {
            Node::Map(m) => m,
            other => panic!("{other:?}"),
        }
    }

    fn left(m: Map) -> Node {
        leftovers(Node::Map(m)).unwrap_or(Node::Map(Map::new()))
    }

    const DOC: &str = "{a: b, c: {d: e, f: g}, h: i, j: {k: l, m: n}, o: [p, q], s: [t, v]}";

    // Rule 1: reading a, c/d and the scalar list o consumes exactly those.
    #[test]
    fn reading_scalars_and_scalar_lists_consumes_them() {
        let mut m = tree(DOC);
        assert_eq!(string(&mut m, "a", "").unwrap().as_deref(), Some("b"));
        let c = descend(&mut m, "c", "").unwrap().unwrap();
        assert_eq!(string(c, "d", "c").unwrap().as_deref(), Some("e"));
        assert!(take(&mut m, "o").is_some());
        assert_eq!(
            left(m),
            Node::Map(tree("{c: {f: g}, h: i, j: {k: l, m: n}, s: [t, v]}"))
        );
    }

    // Rules 3-6: reading a map wholesale (metadata, dialects) consumes all of it, nested too.
    #[test]
    fn reading_a_free_map_consumes_it_recursively() {
        let mut m = tree("{metadata: {k: l, o: {p: q}}, dialects: {x: {y: z}}, h: i}");
        assert_eq!(metadata(&mut m, "").unwrap().len(), 2);
        assert_eq!(dialects(&mut m, "").unwrap().len(), 1);
        assert_eq!(left(m), Node::Map(tree("{h: i}")));
    }

    // Rule 7: a list of maps is not consumed by being looked at; its elements are checked.
    // Rule 9: reading breed/ref in the first element leaves that element's other keys.
    #[test]
    fn list_elements_are_consumed_key_by_key() {
        let mut m = tree("{services: [{breed: {ref: x}, scale: {cpu: '0.2'}}]}");
        assert_eq!(left(m.clone()), Node::Map(m.clone()));
        let Some(Node::Seq(items)) = m.get_mut("services") else {
            panic!()
        };
        let Node::Map(first) = &mut items[0] else {
            panic!()
        };
        let breed = descend(first, "breed", "services/0").unwrap().unwrap();
        assert_eq!(string(breed, "ref", "").unwrap().as_deref(), Some("x"));
        assert_eq!(
            left(m),
            Node::Map(tree("{services: [{scale: {cpu: '0.2'}}]}"))
        );
    }

    // A null key that nobody reads is still reported.
    #[test]
    fn unread_null_is_reported() {
        let m = tree("{a: ~, b: {}}");
        assert_eq!(left(m), Node::Map(tree("{a: ~}")));
    }

    #[test]
    fn unexpected_element_names_the_first_leftover_path() {
        let err = check_consumed(tree("{clusters: {sava: {services: [{scala: {cpu: 1}}]}}}"))
            .unwrap_err();
        assert_eq!(err.code(), "UnexpectedElement");
        assert_eq!(err.path, "clusters/sava/services/scala/cpu");
    }
}
