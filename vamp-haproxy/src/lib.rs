//! # vamp-haproxy
//!
//! Renders Vamp gateways to HAProxy configuration: a pure generator (gateways in, text out, no
//! I/O), deterministic, injection-proof, and name-compatible with Vamp (lookup names, `o_` and
//! `im_` prefixes, ACL names), targeting HAProxy 2.6+; and both ends of the key-value store
//! between the control plane and HAProxy.
//!
//! * [`render`] / [`convert_in_order`]: gateways to the typed model [`HaProxyConfig`], which
//!   renders with [`HaProxyConfig::render`].
//! * [`acl`]: route conditions to ACLs, minimised correctly.
//! * [`log`]: Vamp's JSON log lines back into request records.
//! * [`lex`] and [`allow`]: HAProxy's line lexer, and the allow-list of what the gateway agent
//!   accepts from the key-value store (exactly what the generator writes).
//! * [`update`]: whether a new configuration needs nothing, runtime weight changes or a reload.
//! * [`driver`]: the control plane's side, writing gateways and configurations to the store.
//! * `agent` (feature `agent`): the gateway agent beside each HAProxy, applying them.
//!
//! Deliberate differences from Vamp's output are listed in `COMPATIBILITY.md`.

pub mod acl;
#[cfg(feature = "agent")]
pub mod agent;
pub mod allow;
pub mod config;
pub mod convert;
pub mod driver;
pub mod error;
pub mod fetches;
pub mod incremental;
pub mod lex;
pub mod log;
pub mod targets;
pub mod update;

pub use config::{BASE_CONFIG, HaProxyConfig};
pub use convert::{RenderOptions, convert_in_order, render, with_defaults};
pub use error::RenderError;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
