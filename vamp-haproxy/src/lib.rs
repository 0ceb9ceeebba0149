//! # vamp-haproxy
//!
//! Renders Vamp gateways to HAProxy configuration: a pure library (gateways in, text out, no
//! I/O), deterministic, injection-proof, and name-compatible with Vamp (lookup names, `o_` and
//! `im_` prefixes, ACL names), targeting HAProxy 2.6+.
//!
//! * [`render`] / [`convert_in_order`]: gateways to the typed model [`HaProxyConfig`], which
//!   renders with [`HaProxyConfig::render`].
//! * [`acl`]: route conditions to ACLs, minimised correctly.
//! * [`log`]: Vamp's JSON log lines back into request records.
//!
//! Deliberate differences from Vamp's output are listed in `COMPATIBILITY.md`.

pub mod acl;
#[cfg(feature = "agent")]
pub mod agent;
pub mod config;
pub mod convert;
pub mod driver;
pub mod error;
pub mod fetches;
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
