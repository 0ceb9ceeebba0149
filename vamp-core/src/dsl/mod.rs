//! Vamp's DSL: read YAML/JSON documents into artifacts, with every shortcut form and Vamp's
//! validation.
//!
//! * [`read_str`] reads every document of a stream (lists are flattened) into [`Artifact`]s.
//! * [`read_node`] reads one already-loaded document.
//! * [`read_import`] reads the `import:` form used with templates.
//!
//! Keys that no reader consumes are errors (`UnexpectedElement`), as in Vamp.
//!
//! ```
//! use vamp_core::dsl::read_str;
//! use vamp_core::model::ArtifactKind;
//!
//! let err = read_str("name: sava\nport: 8080/tcp\nsticky: route\nroutes: {a: {weight: 100%}}\n",
//!                    Some(ArtifactKind::Gateway)).unwrap_err();
//! assert_eq!(err.code(), "StickyPortTypeError");
//! assert_eq!(err.to_string(),
//!     "gateways 'sava', at 'sticky': Sticky sessions are not allowed for TCP port: '8080/tcp'.");
//! ```

mod canary;
mod compose;
mod read;
mod serde_impl;
mod source;
mod validate;
mod write;

pub use compose::{ComposeBlueprint, read_compose_ports, read_docker_compose};
pub use write::{deployment_to_node, node_to_yaml, to_json, to_node, to_yaml};

use crate::error::{Notification, ReadError, ReadResult};
use crate::model::*;
use crate::node::{Map, Node, load_yaml};

/// An artifact of any kind.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum AnyArtifact {
    /// A breed.
    Breed(DefaultBreed),
    /// A blueprint.
    Blueprint(DefaultBlueprint),
    /// A deployment (in Vamp's export form).
    Deployment(Deployment),
    /// A gateway.
    Gateway(Gateway),
    /// A route.
    Route(Route),
    /// A condition.
    Condition(DefaultCondition),
    /// A rewrite.
    Rewrite(PathRewrite),
    /// An SLA.
    Sla(Sla),
    /// An escalation.
    Escalation(Escalation),
    /// A scale.
    Scale(DefaultScale),
    /// A workflow.
    Workflow(Workflow),
    /// A template.
    Template(Template),
    /// A canary policy (an extension of Vamp's DSL).
    CanaryPolicy(CanaryPolicy),
    /// An event.
    Event(Event),
    /// An event query.
    EventQuery(EventQuery),
}

impl AnyArtifact {
    /// The artifact's kind.
    pub fn kind(&self) -> ArtifactKind {
        match self {
            Self::Breed(_) => ArtifactKind::Breed,
            Self::Blueprint(_) => ArtifactKind::Blueprint,
            Self::Deployment(_) => ArtifactKind::Deployment,
            Self::Gateway(_) => ArtifactKind::Gateway,
            Self::Route(_) => ArtifactKind::Route,
            Self::Condition(_) => ArtifactKind::Condition,
            Self::Rewrite(_) => ArtifactKind::Rewrite,
            Self::Sla(_) => ArtifactKind::Sla,
            Self::Escalation(_) => ArtifactKind::Escalation,
            Self::Scale(_) => ArtifactKind::Scale,
            Self::Workflow(_) => ArtifactKind::Workflow,
            Self::Template(_) => ArtifactKind::Template,
            Self::CanaryPolicy(_) => ArtifactKind::CanaryPolicy,
            Self::Event(_) => ArtifactKind::Event,
            Self::EventQuery(_) => ArtifactKind::EventQuery,
        }
    }

    /// The artifact's name ("" for events and queries).
    pub fn name(&self) -> &str {
        match self {
            Self::Breed(b) => &b.name,
            Self::Blueprint(b) => &b.name,
            Self::Deployment(d) => &d.name,
            Self::Gateway(g) => &g.name,
            Self::Route(Route::Default(r)) => &r.name,
            Self::Route(Route::Reference { name, .. }) => name,
            Self::Condition(c) => &c.name,
            Self::Rewrite(r) => &r.name,
            Self::Sla(s) => s.name(),
            Self::Escalation(e) => match e {
                Escalation::Reference(n) => n,
                Escalation::ToAll { name, .. }
                | Escalation::ToOne { name, .. }
                | Escalation::ScaleInstances { name, .. }
                | Escalation::ScaleCpu { name, .. }
                | Escalation::ScaleMemory { name, .. }
                | Escalation::Generic { name, .. } => name,
            },
            Self::Scale(s) => &s.name,
            Self::Workflow(w) => &w.name,
            Self::Template(t) => &t.name,
            Self::CanaryPolicy(c) => &c.name,
            Self::Event(_) | Self::EventQuery(_) => "",
        }
    }
}

/// Loads the documents of a YAML/JSON stream; a document that is a list contributes its items.
///
/// # Errors
/// `YamlParsingError` for a syntax error or a custom tag.
pub fn load_documents(text: &str) -> ReadResult<Vec<Node>> {
    let docs = load_yaml(text)
        .map_err(|e| ReadError::new(Notification::YamlParsingError { message: e.message }, ""))?;
    Ok(docs
        .into_iter()
        .flat_map(|d| match d {
            Node::Seq(items) => items,
            Node::Null => Vec::new(),
            other => vec![other],
        })
        .collect())
}

/// Reads every document of `text`. The reader is chosen by `kind`, or else by each document's
/// `kind:` key.
///
/// # Errors
/// The first document's [`ReadError`], with Vamp's notification.
pub fn read_str(text: &str, kind: Option<ArtifactKind>) -> ReadResult<Vec<AnyArtifact>> {
    load_documents(text)?
        .into_iter()
        .map(|d| read_node(d, kind))
        .collect()
}

/// The kind a document declares with `kind:` (singular or plural), if any.
pub fn document_kind(node: &Node) -> Option<ArtifactKind> {
    node.as_map()?
        .get("kind")?
        .scalar_string()
        .and_then(|k| ArtifactKind::parse(&k))
}

/// Reads one document as `kind` (or the kind it declares).
///
/// # Errors
/// A [`ReadError`] with Vamp's notification, the artifact and the path in the document.
pub fn read_node(node: Node, kind: Option<ArtifactKind>) -> ReadResult<AnyArtifact> {
    let declared = node
        .as_map()
        .and_then(|m| m.get("kind"))
        .and_then(Node::scalar_string);
    let kind = match (kind, &declared) {
        (Some(k), _) => k,
        (None, Some(d)) => ArtifactKind::parse(d).ok_or_else(|| {
            ReadError::new(
                Notification::UnexpectedArtifact {
                    artifact: d.clone(),
                },
                "kind",
            )
        })?,
        (None, None) => {
            return Err(ReadError::new(
                Notification::UnexpectedArtifact {
                    artifact: "(no kind given)".into(),
                },
                "kind",
            ));
        }
    };
    let Node::Map(mut m) = node else {
        return Err(ReadError::new(
            Notification::UnexpectedTypeError {
                path: "/".into(),
                expected: "Map".into(),
                actual: node.type_name().into(),
            },
            "",
        )
        .in_artifact(kind, None));
    };
    let name = m.get("name").and_then(Node::scalar_string);
    let result = read_map(&mut m, kind).and_then(|a| {
        m.shift_remove("kind");
        m.shift_remove("metadata");
        m.shift_remove("lookup_name");
        source::check_consumed(m)?;
        Ok(a)
    });
    result.map_err(|e| e.in_artifact(kind, name.as_deref()))
}

fn read_map(m: &mut Map, kind: ArtifactKind) -> ReadResult<AnyArtifact> {
    Ok(match kind {
        ArtifactKind::Breed => AnyArtifact::Breed(read::breed(m, "")?),
        ArtifactKind::Blueprint => AnyArtifact::Blueprint(read::blueprint(m, "")?),
        ArtifactKind::Gateway => AnyArtifact::Gateway(read::gateway(m, "")?),
        ArtifactKind::Route => AnyArtifact::Route(read::route(m, "")?),
        ArtifactKind::Condition => AnyArtifact::Condition(read::condition(m, "")?),
        ArtifactKind::Rewrite => AnyArtifact::Rewrite(read::rewrite(m, "")?),
        ArtifactKind::Sla => AnyArtifact::Sla(read::sla(m, "")?),
        ArtifactKind::Escalation => AnyArtifact::Escalation(read::escalation_artifact(m, "")?),
        ArtifactKind::Scale => AnyArtifact::Scale(read::scale(m, "")?),
        ArtifactKind::Workflow => AnyArtifact::Workflow(read::workflow(m, "")?),
        ArtifactKind::Template => AnyArtifact::Template(read::template(m, "")?),
        ArtifactKind::CanaryPolicy => AnyArtifact::CanaryPolicy(canary::canary_policy(m, "")?),
        ArtifactKind::Event => AnyArtifact::Event(read::event(m, "")?),
        ArtifactKind::EventQuery => AnyArtifact::EventQuery(read::event_query(m, "")?),
        ArtifactKind::Deployment => AnyArtifact::Deployment(read::deployment(m, "")?),
        ArtifactKind::ControlPlane => {
            return Err(ReadError::new(
                Notification::UnexpectedArtifact {
                    artifact: kind.as_str().into(),
                },
                "kind",
            ));
        }
    })
}

/// Reads the `import:` form of a document: what it imports and the rest of it.
///
/// # Errors
/// `EmptyImportError` for `import: ""`, `ImportDefinitionError` for an entry that is not a
/// `name` or `kind/name` string.
pub fn read_import(node: Node) -> ReadResult<Import> {
    match node {
        Node::Map(m) => read::import(m, ""),
        other => Err(ReadError::new(
            Notification::UnexpectedTypeError {
                path: "/".into(),
                expected: "Map".into(),
                actual: other.type_name().into(),
            },
            "",
        )),
    }
}

/// Reads the value at a `/`-separated path of a document, the way Vamp's generic reader did.
///
/// # Errors
/// `UnexpectedInnerElementError` when the path runs through a value that is not a map (naming
/// the step that was not a map and what was found there).
///
/// ```
/// use vamp_core::dsl::{load_documents, lookup};
/// let doc = load_documents("root:\n  nested: value\n").unwrap().remove(0);
/// assert_eq!(lookup(&doc, "root/nested").unwrap().and_then(|n| n.as_str()), Some("value"));
/// assert_eq!(lookup(&doc, "root/nested/next").unwrap_err().code(), "UnexpectedInnerElementError");
/// ```
pub fn lookup<'n>(doc: &'n Node, path: &str) -> ReadResult<Option<&'n Node>> {
    let mut cur = doc;
    let mut previous = "";
    for step in path.split('/').filter(|s| !s.is_empty()) {
        match cur {
            Node::Map(m) => match m.get(step) {
                Some(next) => cur = next,
                None => return Ok(None),
            },
            other => {
                return Err(ReadError::new(
                    Notification::UnexpectedInnerElementError {
                        path: previous.to_owned(),
                        found: other.type_name().to_owned(),
                    },
                    path,
                ));
            }
        }
        previous = step;
    }
    Ok(Some(cur))
}

/// The integer at `path` (a string is not converted, as in Vamp).
///
/// # Errors
/// `UnexpectedTypeError` for another type; `UnexpectedInnerElementError` as [`lookup`].
pub fn lookup_int(doc: &Node, path: &str) -> ReadResult<Option<i64>> {
    match lookup(doc, path)? {
        None | Some(Node::Null) => Ok(None),
        Some(Node::Int(i)) => Ok(Some(*i)),
        Some(other) => Err(ReadError::new(
            Notification::UnexpectedTypeError {
                path: path.to_owned(),
                expected: "Int".into(),
                actual: other.type_name().into(),
            },
            path,
        )),
    }
}

/// The text at `path` (any scalar is turned into text, as in Vamp).
///
/// # Errors
/// `UnexpectedTypeError` for a map or a list; `UnexpectedInnerElementError` as [`lookup`].
pub fn lookup_string(doc: &Node, path: &str) -> ReadResult<Option<String>> {
    match lookup(doc, path)? {
        None | Some(Node::Null) => Ok(None),
        Some(n) => n.scalar_string().map(Some).ok_or_else(|| {
            ReadError::new(
                Notification::UnexpectedTypeError {
                    path: path.to_owned(),
                    expected: "String".into(),
                    actual: n.type_name().into(),
                },
                path,
            )
        }),
    }
}
