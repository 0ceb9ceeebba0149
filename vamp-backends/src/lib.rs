//! Real backends for `vamp-core`'s traits, each behind its own cargo feature.
//!
//! This crate is a placeholder until the backend traits land in `vamp-core`; it builds with no
//! features and pulls in no backend SDK.
