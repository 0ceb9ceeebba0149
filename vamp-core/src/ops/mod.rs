//! The operations layer: blueprints become deployments (Vamp's `DeploymentActor` and
//! synchronisation), as pure planners over the model.
//!
//! * [`deploy`]: create and merge a blueprint into a deployment, slice services out of it,
//!   scale a service, export a deployment as a blueprint. Pure functions: the current
//!   deployment, the blueprint and a snapshot of the stored artifacts in, the new deployment
//!   out, or an [`OperationError`] with Vamp's notification name.
//! * [`resolve`]: environment variables, constants, ports and dependencies resolved at deploy
//!   time (`$db.host`, `$db.ports.port`, `${db.constants.x}`).
//! * [`artifacts`]: writes of the other artifacts with Vamp's rules (inline breeds stored on
//!   their own, internal gateways protected, gateway ports unique, equal writes no-ops).
//! * [`catalog`]: the stored artifacts decoded and indexed for a server's reads, kept current
//!   by its writes and the store's change feed.
//! * [`reconcile`] and [`controller`]: the reconcile loop's planner and the loop itself, with
//!   an injectable clock (the deterministic harness).
//! * [`identity`]: the control plane's identity, kept in its persistence, which every scheduler
//!   resource it creates carries ([`crate::layers::Owned`]).
//! * [`leader`]: leader election among replicas, on a [`crate::lease::LeaseStore`], with
//!   fencing.
//! * [`status`]: the service status machine (Initiated → Updating → Done, per intention, and
//!   Failed past a timeout).
//!
//! Nothing here does I/O or reads a clock: time is an argument (milliseconds since the Unix
//! epoch), so a test can say "deploy, tick, assert" without sleeping.
//!
//! ```
//! use vamp_core::dsl::{read_str, AnyArtifact};
//! use vamp_core::model::ArtifactKind;
//! use vamp_core::ops::deploy::{merge, Artifacts, MergeOptions};
//!
//! let doc = "name: sava\nclusters:\n  sava:\n    breed:\n      name: sava:1.0.0\n      deployable: sava\n      ports: {webport: 8080/http}\n";
//! let AnyArtifact::Blueprint(bp) = read_str(doc, Some(ArtifactKind::Blueprint)).unwrap().remove(0) else { unreachable!() };
//! let merged = merge(None, "sava", &bp, &Artifacts::default(), &MergeOptions::new(0)).unwrap();
//! let cluster = &merged.deployment.clusters[0];
//! assert_eq!(cluster.gateways[0].name, "sava/sava/webport");
//! assert!(cluster.gateways[0].port.number > 0, "a port from the gateway port range");
//! ```

pub mod artifacts;
pub mod canary;
pub mod catalog;
pub mod controller;
pub mod deploy;
pub mod identity;
pub mod leader;
pub mod pulse;
pub mod reconcile;
pub mod resolve;
pub mod sla;
pub mod status;
pub mod workflow;

pub use crate::error::OperationError;
