//! Fencing: a leader's writes apply only while it is the leader.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::kv::{PutMode, Version};
use crate::model::ArtifactKind;
use crate::persistence::*;

/// The record ([`ArtifactKind::ControlPlane`]) that names the current leader's fencing token.
pub const FENCE_RECORD: &str = "fence";

/// What a leader holds: its fencing token and the version of the fence record it wrote when it
/// took over. Shared between the [`crate::ops::leader::Elector`] that sets and clears it and the
/// [`Fenced`] stores that check it.
#[derive(Debug, Default)]
pub struct Fence {
    held: Mutex<Option<(u64, Version)>>,
}

impl Fence {
    /// No leadership held.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token and fence version held, if any.
    pub fn held(&self) -> Option<(u64, Version)> {
        *self.held.lock()
    }

    /// Clears the leadership (the lease was lost or given up).
    pub fn clear(&self) {
        *self.held.lock() = None;
    }

    /// Takes the fence for `token`: writes `{token, holder}` to the fence record unless it
    /// already names this or a greater token, and holds the version written.
    ///
    /// # Errors
    /// [`Error::Fenced`] when the stored token is greater or equal (a later leader wrote
    /// it); the store's errors.
    pub async fn take<P: PersistenceStore + ?Sized>(
        &self,
        store: &P,
        token: u64,
        holder: &str,
    ) -> Result<Version> {
        if let Some((t, v)) = self.held()
            && t == token
        {
            return Ok(v);
        }
        let current = store.read(ArtifactKind::ControlPlane, FENCE_RECORD).await?;
        let stored_token = current
            .as_ref()
            .and_then(|r| r.content.as_ref())
            .and_then(|c| c.get("token"))
            .and_then(serde_json::Value::as_u64);
        if let Some(t) = stored_token
            && t >= token
        {
            self.clear();
            return Err(Error::Fenced {
                reason: format!("the fence names token {t}, not older than this leader's {token}"),
            });
        }
        let mode = current
            .as_ref()
            .map_or(PutMode::Create, |r| PutMode::Update(r.version));
        let content = serde_json::json!({ "token": token, "holder": holder });
        let version = store
            .write(vec![ArtifactWrite::put(
                ArtifactKind::ControlPlane,
                FENCE_RECORD,
                content,
                mode,
            )])
            .await?
            .pop()
            .flatten()
            .ok_or_else(|| Error::Fenced {
                reason: "the fence record was not written".into(),
            })?;
        *self.held.lock() = Some((token, version));
        Ok(version)
    }
}

/// A [`PersistenceStore`] whose writes apply only while its replica is the leader: each batch
/// carries a [`WriteOp::Check`] of the fence record at the version this leader wrote when it
/// took over, so a leader that lost its lease (paused past its ttl, partitioned) cannot write
/// once another took over: the store refuses the whole batch. Without leadership, writes are
/// refused before they are sent ([`Error::Fenced`]). Reads pass through.
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use std::sync::Arc;
/// use vamp_core::layers::{Fence, Fenced};
/// use vamp_core::memory::InMemoryPersistence;
/// use vamp_core::model::ArtifactKind;
/// use vamp_core::persistence::{ArtifactWrite, PersistenceStore};
/// use vamp_core::kv::PutMode;
///
/// let store = InMemoryPersistence::new();
/// let (old, new) = (Arc::new(Fence::new()), Arc::new(Fence::new()));
/// let old_leader = Fenced::new(store.clone(), Arc::clone(&old));
/// let w = |n: &str| vec![ArtifactWrite::put(ArtifactKind::Breed, n, serde_json::json!({"name": n}), PutMode::Overwrite)];
/// assert!(old_leader.write(w("a")).await.is_err(), "no leadership, no write");
/// old.take(&store, 1, "replica-a").await.unwrap();
/// old_leader.write(w("a")).await.unwrap();
/// // Another replica takes over with a greater token: the old leader's writes are refused.
/// new.take(&store, 2, "replica-b").await.unwrap();
/// assert!(old_leader.write(w("b")).await.is_err());
/// assert!(store.read(ArtifactKind::Breed, "b").await.unwrap().is_none());
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Fenced<P> {
    inner: P,
    fence: Arc<Fence>,
}

impl<P> Fenced<P> {
    /// Wraps `inner`, writing under `fence`.
    pub fn new(inner: P, fence: Arc<Fence>) -> Self {
        Self { inner, fence }
    }
}

impl<P: fmt::Display> fmt::Display for Fenced<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<P: PersistenceStore> PersistenceStore for Fenced<P> {
    async fn read(&self, kind: ArtifactKind, name: &str) -> Result<Option<ArtifactRecord>> {
        self.inner.read(kind, name).await
    }

    async fn write(&self, mut writes: Vec<ArtifactWrite>) -> Result<Vec<Option<Version>>> {
        let Some((token, version)) = self.fence.held() else {
            return Err(Error::Fenced {
                reason: "this replica does not hold the leader lease".into(),
            });
        };
        writes.push(ArtifactWrite::check(
            ArtifactKind::ControlPlane,
            FENCE_RECORD,
            Some(version),
        ));
        match self.inner.write(writes).await {
            Ok(mut results) => {
                results.pop();
                Ok(results)
            }
            Err(e) if e.is_conflict() => {
                // Either an artifact of the batch or the fence moved: tell which.
                let fence = self
                    .inner
                    .read(ArtifactKind::ControlPlane, FENCE_RECORD)
                    .await?;
                if fence.map(|r| r.version) == Some(version) {
                    Err(e)
                } else {
                    self.fence.clear();
                    Err(Error::Fenced {
                        reason: format!(
                            "another replica took the leader lease over from token {token}"
                        ),
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn list(&self, kind: ArtifactKind, opts: ListOptions) -> Result<Vec<ArtifactRecord>> {
        self.inner.list(kind, opts).await
    }

    async fn history(&self, kind: ArtifactKind, name: &str) -> Result<Vec<ArtifactRecord>> {
        self.inner.history(kind, name).await
    }

    fn changes(&self, opts: ChangeOptions) -> BoxStream<'static, Result<ArtifactRecord>> {
        self.inner.changes(opts)
    }

    fn capabilities(&self) -> PersistenceCapabilities {
        self.inner.capabilities()
    }

    async fn head(&self) -> Result<Option<Version>> {
        self.inner.head().await
    }
}
