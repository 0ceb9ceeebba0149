//! # vamp-core
//!
//! The model and the DSL of [Vamp](https://github.com/magneticio/vamp), the canary-release and
//! A/B-testing control plane, as an embeddable library.
//!
//! * [`model`]: breeds, blueprints, deployments, gateways, routes, conditions, rewrites,
//!   scales, SLAs, escalations, workflows, templates and events, named as in Vamp.
//! * [`dsl`]: reads Vamp's YAML/JSON DSL with every shortcut form, validates it with Vamp's
//!   notifications ([`error::Notification`]), and writes the canonical form back.
//! * [`lookup`]: Vamp's SHA-1 lookup names, so HAProxy names match an existing installation.
//! * [`parser`]: value interpolation (`$db.host`), boolean expressions and route selectors.
//! * [`condition`]: the gateway route condition grammar (`user-agent = Chrome and has cookie x`).
//! * [`ops`]: the operations layer: blueprints merged into deployments, slices, scales,
//!   deploy-time resolution and the service status machine, as pure planners.
//! * [`kv`]: the key-value store trait and Vamp's key layout; [`memory`] holds the in-memory
//!   implementations; [`layers`] the namespacing and retry wrappers; `conformance` (feature
//!   `conformance`) the suites every backend runs.
//!
//! `vamp-core` does no I/O and depends on no async runtime.
//!
//! ```
//! use vamp_core::dsl::{read_str, AnyArtifact};
//!
//! let doc = "name: sava\nport: 8080/http\nroutes:\n  sava1: {weight: 90%}\n  sava2: {weight: 10%}\n";
//! let artifact = read_str(doc, Some(vamp_core::model::ArtifactKind::Gateway)).unwrap().remove(0);
//! let AnyArtifact::Gateway(gateway) = artifact else { unreachable!() };
//! assert_eq!(gateway.routes.len(), 2);
//! ```

pub mod condition;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod dsl;
pub mod error;
pub mod kv;
pub mod layers;
pub mod lease;
pub mod lookup;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod node;
pub mod ops;
pub mod parser;
pub mod persistence;
pub mod policy;
pub mod rt;
pub mod scheduler;
pub mod time;
pub mod units;

pub use error::{Error, Result};
