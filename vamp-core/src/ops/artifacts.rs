//! Artifact writes with Vamp's rules (`model.md` §4.8, §6.1), planned without I/O so that a
//! REST layer is a thin mapping: what to store for a create or update, and whether a delete is
//! allowed.
//!
//! * A blueprint is stored with breed references; its inline breeds are stored as breeds of
//!   their own (Vamp's persistence did the same).
//! * A write of an artifact equal to the stored one is a no-op (nothing to store).
//! * Gateways: an internal (three-segment, `deployment/cluster/port`) gateway cannot be created
//!   through the API (`InternalGatewayCreateError`), its routes cannot be added or removed
//!   (`InternalGatewayUpdateError`), and it cannot be deleted while its deployment exists
//!   (`InternalGatewayRemoveError`); a gateway's port must not be another gateway's
//!   (`UnavailableGatewayPortError`).
//! * Deployments are not written through here: they are merged and sliced ([`super::deploy`]).
//!
//! `validate_only` is planning without storing: call these and do not write the result.
//!
//! ```
//! use vamp_core::dsl::{read_str, AnyArtifact};
//! use vamp_core::ops::artifacts::{plan_put, Stored};
//!
//! let doc = "name: sava\nclusters:\n  sava:\n    breed: {name: 'sava:1.0', deployable: sava}\n";
//! let blueprint = read_str(doc, Some(vamp_core::model::ArtifactKind::Blueprint)).unwrap().remove(0);
//! let writes = plan_put(blueprint, &Stored::default()).unwrap();
//! assert_eq!(writes.len(), 2, "the inline breed, then the blueprint with a reference");
//! let AnyArtifact::Blueprint(b) = &writes[1] else { unreachable!() };
//! assert!(b.clusters[0].services[0].breed.is_reference());
//! ```

use crate::dsl::AnyArtifact;
use crate::error::OperationError;
use crate::model::{Deployment, Gateway, GatewayPath, Ref};

/// What is stored that a write is checked against.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct Stored<'a> {
    /// The stored artifact of the same kind and name, if any.
    pub existing: Option<&'a AnyArtifact>,
    /// Every stored standalone gateway.
    pub gateways: &'a [Gateway],
    /// Every stored deployment (their gateways hold ports too).
    pub deployments: &'a [Deployment],
}

impl<'a> Stored<'a> {
    /// Checked against `existing`, `gateways` and `deployments`.
    pub fn new(
        existing: Option<&'a AnyArtifact>,
        gateways: &'a [Gateway],
        deployments: &'a [Deployment],
    ) -> Self {
        Self {
            existing,
            gateways,
            deployments,
        }
    }
}

fn segments(name: &str) -> usize {
    GatewayPath::new(name).segments.len()
}

/// The artifacts to store for a create or update of `artifact` (empty: nothing changes).
///
/// # Errors
/// The gateway rules above, with Vamp's names.
pub fn plan_put(
    artifact: AnyArtifact,
    stored: &Stored<'_>,
) -> Result<Vec<AnyArtifact>, OperationError> {
    let mut out = Vec::new();
    let artifact = match artifact {
        AnyArtifact::Blueprint(mut b) => {
            for c in &mut b.clusters {
                for s in &mut c.services {
                    if let Ref::Inline(breed) = &s.breed {
                        out.push(AnyArtifact::Breed(breed.clone()));
                        s.breed = Ref::Reference(breed.name.clone());
                    }
                }
            }
            AnyArtifact::Blueprint(b)
        }
        AnyArtifact::Gateway(g) => {
            check_gateway(&g, stored)?;
            AnyArtifact::Gateway(g)
        }
        other => other,
    };
    if stored.existing != Some(&artifact) {
        out.push(artifact);
    }
    Ok(out)
}

fn check_gateway(g: &Gateway, stored: &Stored<'_>) -> Result<(), OperationError> {
    let existing = match stored.existing {
        Some(AnyArtifact::Gateway(e)) => Some(e),
        _ => None,
    };
    if segments(&g.name) == 3 {
        let Some(existing) = existing else {
            return Err(OperationError::InternalGatewayCreateError {
                name: g.name.clone(),
            });
        };
        let paths = |g: &Gateway| {
            let mut p: Vec<String> = g.routes.iter().map(|r| r.path().normalized()).collect();
            p.sort();
            p
        };
        if paths(existing) != paths(g) {
            return Err(OperationError::InternalGatewayUpdateError {
                name: g.name.clone(),
            });
        }
    }
    if g.port.number > 0 {
        let others = stored
            .gateways
            .iter()
            .chain(stored.deployments.iter().flat_map(|d| {
                d.gateways
                    .iter()
                    .chain(d.clusters.iter().flat_map(|c| c.gateways.iter()))
            }))
            .filter(|o| o.name != g.name);
        if let Some(owner) = others.into_iter().find(|o| o.port.number == g.port.number) {
            return Err(OperationError::UnavailableGatewayPortError {
                port: g
                    .port
                    .value
                    .clone()
                    .unwrap_or_else(|| g.port.number.to_string()),
                gateway: owner.name.clone(),
            });
        }
    }
    Ok(())
}

/// Whether the gateway `name` may be deleted.
///
/// # Errors
/// [`OperationError::InternalGatewayRemoveError`] for an internal gateway whose deployment
/// (its first name segment) exists.
pub fn check_gateway_delete(name: &str, stored: &Stored<'_>) -> Result<(), OperationError> {
    let path = GatewayPath::new(name);
    if path.segments.len() == 3
        && stored
            .deployments
            .iter()
            .any(|d| d.name == path.segments[0])
    {
        return Err(OperationError::InternalGatewayRemoveError { name: name.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsl::read_str;
    use crate::model::ArtifactKind;

    fn gateway(yaml: &str) -> Gateway {
        match read_str(yaml, Some(ArtifactKind::Gateway))
            .unwrap()
            .remove(0)
        {
            AnyArtifact::Gateway(g) => g,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gateway_rules_keep_vamp_s_names() {
        let internal = gateway(
            "name: shop/web/port\nport: 9000\nroutes:\n  shop/web/a/port: {weight: 100%}\n",
        );
        let e = plan_put(AnyArtifact::Gateway(internal.clone()), &Stored::default()).unwrap_err();
        assert_eq!(e.code(), "InternalGatewayCreateError");
        let existing = AnyArtifact::Gateway(internal.clone());
        let mut changed = internal.clone();
        changed.routes.push(crate::model::Route::Default(
            crate::model::DefaultRoute::new("shop/web/b/port"),
        ));
        let stored = Stored::new(Some(&existing), &[], &[]);
        let e = plan_put(AnyArtifact::Gateway(changed), &stored).unwrap_err();
        assert_eq!(e.code(), "InternalGatewayUpdateError");
        assert!(
            plan_put(AnyArtifact::Gateway(internal.clone()), &stored)
                .unwrap()
                .is_empty(),
            "an equal write is a no-op"
        );
        let other =
            gateway("name: other\nport: 9050\nroutes:\n  '[10.0.0.1:80]': {weight: 100%}\n");
        let mine = gateway("name: mine\nport: 9050\nroutes:\n  '[10.0.0.2:80]': {weight: 100%}\n");
        let gateways = [other];
        let e = plan_put(
            AnyArtifact::Gateway(mine),
            &Stored::new(None, &gateways, &[]),
        )
        .unwrap_err();
        assert_eq!(e.code(), "UnavailableGatewayPortError");
        let deployment = crate::ops::deploy::empty("shop");
        let deployments = [deployment];
        assert_eq!(
            check_gateway_delete("shop/web/port", &Stored::new(None, &[], &deployments))
                .unwrap_err()
                .code(),
            "InternalGatewayRemoveError"
        );
        assert!(check_gateway_delete("shop/web/port", &Stored::default()).is_ok());
        assert!(check_gateway_delete("other", &Stored::new(None, &[], &deployments)).is_ok());
    }
}
