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

/// A [`KeyValueStore`](crate::kv::KeyValueStore) whose writes apply only while its replica is
/// the leader, as [`Fenced`] does for persistence: when it takes over
/// ([`FencedKv::claim`], or at its first write under a leadership, the token its [`Fence`]
/// holds), it writes the token to a fence key (unless the key names a greater token:
/// [`Error::Fenced`]), and every write then carries a guard on the fence key
/// at the version it wrote ([`PutOptions::guard`](crate::kv::PutOptions::guard)), so once
/// another leader has rewritten the fence key, the old leader's writes are refused by the
/// store itself, in the same atomic step. Without leadership, writes are refused before they
/// are sent. Deletes are checked against the leadership held, not guarded. Reads and watches
/// pass through. The store must support guards (capability `guard`).
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use std::sync::Arc;
/// use vamp_core::kv::{KeyPath, KeyValueStore, KeyValueStoreExt};
/// use vamp_core::layers::{Fence, FencedKv};
/// use vamp_core::memory::{InMemoryKv, InMemoryPersistence};
///
/// let (store, kv) = (InMemoryPersistence::new(), Arc::new(InMemoryKv::new()));
/// let fence_key = KeyPath::parse("/vamp/default/fence").unwrap();
/// let (old, new) = (Arc::new(Fence::new()), Arc::new(Fence::new()));
/// let old_leader = FencedKv::new(Arc::clone(&kv), Arc::clone(&old), fence_key.clone(), "a");
/// let new_leader = FencedKv::new(Arc::clone(&kv), Arc::clone(&new), fence_key, "b");
/// let key = KeyPath::parse("/vamp/default/gateways").unwrap();
/// assert!(old_leader.put(&key, "[]".into()).await.is_err(), "no leadership, no write");
/// old.take(&store, 1, "a").await.unwrap();
/// old_leader.put(&key, "[1]".into()).await.unwrap();
/// // Another replica takes over with a greater token and writes: the old one is refused.
/// new.take(&store, 2, "b").await.unwrap();
/// new_leader.put(&key, "[2]".into()).await.unwrap();
/// assert!(old_leader.put(&key, "[stale]".into()).await.is_err());
/// assert_eq!(kv.get_string(&key).await.unwrap().as_deref(), Some("[2]"));
/// # }).unwrap();
/// ```
pub struct FencedKv<K> {
    inner: K,
    fence: Arc<Fence>,
    key: crate::kv::KeyPath,
    holder: String,
    /// The token whose fence key this replica wrote, and the version it wrote.
    taken: Mutex<Option<(u64, Version)>>,
}

impl<K> FencedKv<K> {
    /// Wraps `inner`, writing under the token `fence` holds and the fence key `key`
    /// ([`crate::kv::keys::fence`]) as `holder`.
    pub fn new(
        inner: K,
        fence: Arc<Fence>,
        key: crate::kv::KeyPath,
        holder: impl Into<String>,
    ) -> Self {
        Self {
            inner,
            fence,
            key,
            holder: holder.into(),
            taken: Mutex::new(None),
        }
    }
}

impl<K> fmt::Debug for FencedKv<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FencedKv")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl<K: fmt::Display> fmt::Display for FencedKv<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<K: crate::kv::KeyValueStore> FencedKv<K> {
    /// Writes this leadership's token to the fence key now, if it has not yet (otherwise the
    /// first write does): a leader calls it as it takes over, so that from then on the old
    /// leader's writes are refused, even before the new one writes anything. Returns the
    /// fence key's version.
    ///
    /// # Errors
    /// [`Error::Fenced`] without leadership, or when the fence key names a newer token; the
    /// store's errors.
    pub async fn claim(&self) -> Result<Version> {
        let token = self.token()?;
        self.take(token).await
    }

    /// The leadership's token, refused when none is held.
    fn token(&self) -> Result<u64> {
        self.fence
            .held()
            .map(|(t, _)| t)
            .ok_or_else(|| Error::Fenced {
                reason: "this replica does not hold the leader lease".into(),
            })
    }

    /// The fence key's version for `token`: written now (unless it names a greater token),
    /// or as written earlier under the same token.
    async fn take(&self, token: u64) -> Result<Version> {
        if let Some((t, v)) = *self.taken.lock()
            && t == token
        {
            return Ok(v);
        }
        for _ in 0..8 {
            let current = self.inner.get(&self.key).await?;
            let stored = current.as_ref().and_then(|c| {
                serde_json::from_slice::<serde_json::Value>(&c.value)
                    .ok()?
                    .get("token")?
                    .as_u64()
            });
            match (stored, &current) {
                (Some(t), _) if t > token => {
                    return Err(Error::Fenced {
                        reason: format!(
                            "the key-value fence names token {t}, newer than this leader's {token}"
                        ),
                    });
                }
                (Some(t), Some(c)) if t == token => {
                    *self.taken.lock() = Some((token, c.version));
                    return Ok(c.version);
                }
                _ => {}
            }
            let mode = current
                .as_ref()
                .map_or(PutMode::Create, |c| PutMode::Update(c.version));
            let value = serde_json::json!({ "token": token, "holder": self.holder }).to_string();
            match self
                .inner
                .put_opts(
                    &self.key,
                    value.into(),
                    crate::kv::PutOptions::new().with_mode(mode),
                )
                .await
            {
                Ok(version) => {
                    *self.taken.lock() = Some((token, version));
                    return Ok(version);
                }
                // Another replica wrote it meanwhile: read it again.
                Err(e) if e.is_conflict() || matches!(e, Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Error::Fenced {
            reason: "the key-value fence kept changing".into(),
        })
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<K: crate::kv::KeyValueStore> crate::kv::KeyValueStore for FencedKv<K> {
    async fn get(
        &self,
        key: &crate::kv::KeyPath,
    ) -> Result<Option<crate::kv::Versioned<bytes::Bytes>>> {
        self.inner.get(key).await
    }

    async fn put_opts(
        &self,
        key: &crate::kv::KeyPath,
        value: bytes::Bytes,
        opts: crate::kv::PutOptions,
    ) -> Result<Version> {
        if opts.guard.is_some() {
            return Err(Error::NotSupported {
                backend: self.to_string(),
                operation: "a guarded put through a fenced store (it guards every put itself)",
            });
        }
        let token = self.token()?;
        let version = self.take(token).await?;
        match self
            .inner
            .put_opts(key, value, opts.with_guard(self.key.clone(), version))
            .await
        {
            Err(e) if e.is_conflict() => {
                // The entry or the fence moved: tell which.
                let fence = self.inner.get(&self.key).await?;
                if fence.map(|f| f.version) == Some(version) {
                    Err(e)
                } else {
                    *self.taken.lock() = None;
                    Err(Error::Fenced {
                        reason: format!(
                            "another replica took the leader lease over from token {token}"
                        ),
                    })
                }
            }
            other => other,
        }
    }

    async fn delete(&self, key: &crate::kv::KeyPath) -> Result<()> {
        self.token()?;
        self.inner.delete(key).await
    }

    fn list(&self, prefix: &crate::kv::KeyPath) -> BoxStream<'static, Result<crate::kv::KeyPath>> {
        self.inner.list(prefix)
    }

    fn watch(
        &self,
        prefix: &crate::kv::KeyPath,
        opts: crate::kv::WatchOptions,
    ) -> BoxStream<'static, Result<crate::kv::WatchEvent>> {
        self.inner.watch(prefix, opts)
    }

    fn capabilities(&self) -> crate::kv::KvCapabilities {
        crate::kv::KvCapabilities {
            guard: false,
            ..self.inner.capabilities()
        }
    }
}
