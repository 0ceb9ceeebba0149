//! serde for the artifacts, through the DSL: serialising writes the canonical form and
//! deserialising runs Vamp's reader, validation included.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::write;
use super::{AnyArtifact, read_node, to_node};
use crate::model::*;
use crate::node::Node;

macro_rules! dsl_serde {
    ($ty:ty, $kind:expr, $variant:ident, $write:path) => {
        impl Serialize for $ty {
            /// Writes the canonical DSL form (with `kind`).
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $write(self).serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            /// Reads the DSL, with every shortcut and Vamp's validation.
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let node = Node::deserialize(d)?;
                match read_node(node, Some($kind)).map_err(D::Error::custom)? {
                    AnyArtifact::$variant(x) => Ok(x),
                    other => Err(D::Error::custom(format!(
                        "expected {}, read {}",
                        $kind,
                        other.kind()
                    ))),
                }
            }
        }
    };
}

dsl_serde!(DefaultBreed, ArtifactKind::Breed, Breed, write::top_breed);
dsl_serde!(
    DefaultBlueprint,
    ArtifactKind::Blueprint,
    Blueprint,
    write::blueprint_node
);
dsl_serde!(
    Deployment,
    ArtifactKind::Deployment,
    Deployment,
    write::deployment_node
);
dsl_serde!(Gateway, ArtifactKind::Gateway, Gateway, write::gateway_node);
dsl_serde!(Route, ArtifactKind::Route, Route, write::route_node);
dsl_serde!(
    DefaultCondition,
    ArtifactKind::Condition,
    Condition,
    write::condition_node
);
dsl_serde!(
    PathRewrite,
    ArtifactKind::Rewrite,
    Rewrite,
    write::top_rewrite
);
dsl_serde!(Sla, ArtifactKind::Sla, Sla, write::top_sla);
dsl_serde!(
    Escalation,
    ArtifactKind::Escalation,
    Escalation,
    write::top_escalation
);
dsl_serde!(DefaultScale, ArtifactKind::Scale, Scale, write::top_scale);
dsl_serde!(
    Workflow,
    ArtifactKind::Workflow,
    Workflow,
    write::workflow_node
);
dsl_serde!(
    Template,
    ArtifactKind::Template,
    Template,
    write::template_node
);
dsl_serde!(
    CanaryPolicy,
    ArtifactKind::CanaryPolicy,
    CanaryPolicy,
    super::canary::canary_policy_node
);
dsl_serde!(Event, ArtifactKind::Event, Event, write::event_node);
dsl_serde!(
    EventQuery,
    ArtifactKind::EventQuery,
    EventQuery,
    write::event_query_node
);

impl Serialize for AnyArtifact {
    /// Writes the canonical DSL form (with `kind`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        to_node(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for AnyArtifact {
    /// Reads the DSL; the document must say its `kind`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_node(Node::deserialize(d)?, None).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_json_uses_the_dsl() {
        let g: Gateway = serde_json::from_str(
            r#"{"name": "sava", "port": 8080, "routes": {"a": {"weight": "100%"}}}"#,
        )
        .unwrap();
        assert_eq!(g.port.number, 8080);
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(json["kind"], "gateways");
        assert_eq!(json["routes"]["a"]["weight"], "100%");
        assert_eq!(serde_json::from_value::<Gateway>(json).unwrap(), g);

        let err = serde_json::from_str::<Gateway>(
            r#"{"name": "sava", "routes": {"a": {"weight": "60%"}}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("Total route weight must be either 0% or 100%"),
            "{err}"
        );

        let a: AnyArtifact = serde_json::from_str(
            r#"{"kind": "scales", "name": "small", "cpu": 0.5, "memory": "256MB"}"#,
        )
        .unwrap();
        assert_eq!(a.kind(), ArtifactKind::Scale);
        assert!(serde_json::from_str::<AnyArtifact>(r#"{"name": "small"}"#).is_err());
    }
}
