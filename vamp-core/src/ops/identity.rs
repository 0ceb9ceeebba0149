//! The control plane's identity: created once, kept in its persistence, carried by every
//! scheduler resource it creates ([`crate::layers::Owned`]).
//!
//! Replicas that share a persistence store share the identity; a control plane started on an
//! empty store (a new data directory, `--in-memory`, a wrong database URL) gets a new one, and
//! so touches nothing an earlier one created.
//!
//! ```
//! # futures_util::FutureExt::now_or_never(async {
//! use vamp_core::memory::InMemoryPersistence;
//! use vamp_core::ops::identity;
//!
//! let store = InMemoryPersistence::new();
//! let first = identity::establish(&store, "0123456789abcdef").await.unwrap();
//! // A later start (or another replica) proposes another, and is given the stored one.
//! let again = identity::establish(&store, "fedcba9876543210").await.unwrap();
//! assert_eq!((first.as_str(), again.as_str()), ("0123456789abcdef", "0123456789abcdef"));
//! assert!(identity::establish(&InMemoryPersistence::new(), "not an id!").await.is_err());
//! # }).unwrap();
//! ```

use crate::error::{Error, Result};
use crate::kv::PutMode;
use crate::model::ArtifactKind;
use crate::persistence::{PersistenceExt, PersistenceStore};

/// The record's name under [`ArtifactKind::ControlPlane`].
pub const RECORD: &str = "identity";

/// Whether `id` can be an identity: 8 to 63 ASCII letters, digits, `-` or `_` (what a
/// Kubernetes label value, a Docker label and a Marathon label all take).
pub fn is_valid(id: &str) -> bool {
    (8..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn invalid(id: &str, reason: &str) -> Error {
    Error::Invalid {
        what: "control-plane identity",
        value: id.chars().take(80).collect(),
        reason: reason.into(),
    }
}

fn stored(content: Option<&serde_json::Value>) -> Result<Option<String>> {
    let Some(content) = content else {
        return Ok(None);
    };
    let id = content
        .get("identity")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| invalid(&content.to_string(), "the stored record has no identity"))?;
    if !is_valid(id) {
        return Err(invalid(id, "the stored identity is malformed"));
    }
    Ok(Some(id.to_owned()))
}

/// The stored identity, if the store has one.
///
/// # Errors
/// The store's errors; [`Error::Invalid`] for a malformed stored record.
pub async fn read<P: PersistenceStore + ?Sized>(store: &P) -> Result<Option<String>> {
    let record = store.read(ArtifactKind::ControlPlane, RECORD).await?;
    stored(record.as_ref().and_then(|r| r.content.as_ref()))
}

/// The stored identity, or `candidate` stored as it when there is none (created, so two
/// replicas starting at once agree on the first one written).
///
/// # Errors
/// [`Error::Invalid`] for a malformed candidate or stored record; the store's errors.
pub async fn establish<P: PersistenceStore + ?Sized>(store: &P, candidate: &str) -> Result<String> {
    if !is_valid(candidate) {
        return Err(invalid(
            candidate,
            "must be 8 to 63 ASCII letters, digits, '-' or '_'",
        ));
    }
    if let Some(id) = read(store).await? {
        return Ok(id);
    }
    let content = serde_json::json!({ "identity": candidate });
    match store
        .put_json(ArtifactKind::ControlPlane, RECORD, content, PutMode::Create)
        .await
    {
        Ok(_) => Ok(candidate.to_owned()),
        Err(Error::AlreadyExists { .. }) => read(store).await?.ok_or_else(|| {
            invalid(
                candidate,
                "the identity record was created and then removed",
            )
        }),
        Err(e) => Err(e),
    }
}
