//! Conformance suites: one public async function per behaviour, for every implementation of a
//! backend trait (ours and third parties'). Functions panic when a behaviour is broken.
//!
//! Behind the `conformance` feature. Not covered by semver.

pub mod kv;
pub mod lease;
pub mod metrics;
pub mod persistence;
pub mod scheduler;
