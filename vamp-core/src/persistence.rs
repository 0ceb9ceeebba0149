//! Artifact persistence: breeds, blueprints, deployments, gateways, ... stored by kind and
//! name, every write versioned, with history and a change feed.
//!
//! [`PersistenceStore`] works on canonical JSON ([`serde_json::Value`]) so that backends need
//! not know the model; [`PersistenceExt`] adds typed access for every [`Artifact`], which
//! serialises through the DSL (and so validates on the way in and out).

use std::fmt::{Debug, Display};

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::error::{Error, Result};
use crate::kv::{PutMode, Version, Versioned};
use crate::model::{Artifact, ArtifactKind};

/// One stored version of an artifact.
#[derive(Clone, Debug, PartialEq)]
pub struct ArtifactRecord {
    /// The kind.
    pub kind: ArtifactKind,
    /// The name.
    pub name: String,
    /// The version this record was written at.
    pub version: Version,
    /// The canonical JSON; `None` for a deletion (in history and change feeds).
    pub content: Option<serde_json::Value>,
    /// When it was written (milliseconds since the Unix epoch, the store's clock).
    pub timestamp_ms: i64,
}

/// One operation of a [`PersistenceStore::write`] batch.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum WriteOp {
    /// Store `content` (create, update at a version, or overwrite).
    Put {
        /// The canonical JSON.
        content: serde_json::Value,
        /// Create, update at a version, or overwrite.
        mode: PutMode,
    },
    /// Delete, optionally only at a version.
    Delete {
        /// Delete only if the artifact is at this version ([`Error::Conflict`] otherwise).
        expected: Option<Version>,
    },
    /// Write nothing, but only let the batch apply if the artifact is at `expected` (`None`:
    /// absent), [`Error::Conflict`] otherwise: how a leader's writes are fenced
    /// ([`crate::layers::Fenced`]). Its result is the artifact's version.
    Check {
        /// The version the artifact must be at.
        expected: Option<Version>,
    },
}

/// A write of one artifact.
#[derive(Clone, Debug, PartialEq)]
pub struct ArtifactWrite {
    /// The kind.
    pub kind: ArtifactKind,
    /// The name.
    pub name: String,
    /// What to do.
    pub op: WriteOp,
}

impl ArtifactWrite {
    /// Stores `content` under `kind`/`name` with `mode`.
    pub fn put(
        kind: ArtifactKind,
        name: impl Into<String>,
        content: serde_json::Value,
        mode: PutMode,
    ) -> Self {
        Self {
            kind,
            name: name.into(),
            op: WriteOp::Put { content, mode },
        }
    }

    /// Lets the batch apply only if `kind`/`name` is at `expected` (`None`: absent).
    pub fn check(kind: ArtifactKind, name: impl Into<String>, expected: Option<Version>) -> Self {
        Self {
            kind,
            name: name.into(),
            op: WriteOp::Check { expected },
        }
    }

    /// Deletes `kind`/`name`, optionally only at `expected`.
    pub fn delete(kind: ArtifactKind, name: impl Into<String>, expected: Option<Version>) -> Self {
        Self {
            kind,
            name: name.into(),
            op: WriteOp::Delete { expected },
        }
    }
}

/// A page of a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[derive(Default)]
pub struct ListOptions {
    /// Entries to skip.
    pub offset: usize,
    /// Entries to return at most (`None`: all).
    pub limit: Option<usize>,
}

impl ListOptions {
    /// Everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// One page.
    pub fn page(offset: usize, limit: usize) -> Self {
        Self {
            offset,
            limit: Some(limit),
        }
    }
}

/// Options of [`PersistenceStore::changes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeOptions {
    /// Start with the changes after this version (still kept by the store); `None`: only
    /// changes after the stream starts.
    pub since: Option<Version>,
}

impl ChangeOptions {
    /// Only new changes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replays changes after `version` first.
    #[must_use]
    pub fn since(mut self, version: Version) -> Self {
        self.since = Some(version);
        self
    }
}

/// What a persistence store can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PersistenceCapabilities {
    /// `changes` is supported.
    pub changes: bool,
    /// `changes` can replay from a version.
    pub changes_since: bool,
    /// `history` keeps every version.
    pub history: bool,
}

/// A store for artifacts.
///
/// # Contract
/// * Artifacts are keyed by kind and name; names are non-empty and have no control
///   characters (gateway names contain `/`).
/// * Every applied write gets a version greater than every earlier version in the store.
///   Writing content equal to the stored content is a no-op that returns the current version.
/// * [`write`](Self::write) applies a batch atomically: either every operation applies or
///   none does (the first failure is returned). The result has one entry per operation: the
///   new version, or `None` for deleting a missing artifact.
/// * `PutMode::Create`/`Update` and versioned deletes are enforced by the store itself, never
///   by a read-then-write race.
/// * [`history`](Self::history) lists every version of an artifact, oldest first, deletions
///   as records without content.
/// * [`changes`](Self::changes) yields every applied write in version order.
///
/// # Errors
/// [`Error::AlreadyExists`], [`Error::Conflict`] for failed creates, updates and versioned
/// deletes; [`Error::Invalid`] for a bad name; [`Error::Unavailable`] when the database is
/// unreachable (temporary).
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use vamp_core::dsl::read_str;
/// use vamp_core::memory::InMemoryPersistence;
/// use vamp_core::model::DefaultBreed;
/// use vamp_core::persistence::PersistenceExt;
///
/// let store = InMemoryPersistence::new();
/// let breed: DefaultBreed = serde_json::from_str(r#"{"name": "sava:1.0.0", "deployable": "magneticio/sava:1.0.0"}"#).unwrap();
/// let v1 = store.create(&breed).await.unwrap();
/// let stored = store.get::<DefaultBreed>("sava:1.0.0").await.unwrap().unwrap();
/// assert_eq!((stored.value, stored.version), (breed.clone(), v1));
/// assert!(store.create(&breed).await.unwrap_err().is_conflict());
/// # }).unwrap();
/// ```
#[async_trait]
pub trait PersistenceStore: Debug + Display + Send + Sync + 'static {
    /// The current record of `kind`/`name`, if it exists.
    async fn read(&self, kind: ArtifactKind, name: &str) -> Result<Option<ArtifactRecord>>;

    /// Applies a batch of writes atomically.
    async fn write(&self, writes: Vec<ArtifactWrite>) -> Result<Vec<Option<Version>>>;

    /// The current records of `kind`, sorted by name.
    async fn list(&self, kind: ArtifactKind, opts: ListOptions) -> Result<Vec<ArtifactRecord>>;

    /// Every version of `kind`/`name`, oldest first (empty if it never existed).
    async fn history(&self, kind: ArtifactKind, name: &str) -> Result<Vec<ArtifactRecord>>;

    /// The applied writes, in version order.
    fn changes(&self, opts: ChangeOptions) -> BoxStream<'static, Result<ArtifactRecord>>;

    /// What the store can do.
    fn capabilities(&self) -> PersistenceCapabilities;

    /// The version of the latest applied write (`Version(0)` for a store never written), if
    /// the store can tell: a reader that lists and then follows [`changes`](Self::changes)
    /// from it misses no write. The default, `None`, is a store that cannot.
    async fn head(&self) -> Result<Option<Version>> {
        Ok(None)
    }
}

/// The store behind a trait object.
pub type DynPersistenceStore = dyn PersistenceStore;

macro_rules! forward_persistence {
    ($ty:ty) => {
        #[async_trait]
        impl<T: PersistenceStore + ?Sized> PersistenceStore for $ty {
            async fn read(&self, kind: ArtifactKind, name: &str) -> Result<Option<ArtifactRecord>> {
                (**self).read(kind, name).await
            }
            async fn write(&self, writes: Vec<ArtifactWrite>) -> Result<Vec<Option<Version>>> {
                (**self).write(writes).await
            }
            async fn list(
                &self,
                kind: ArtifactKind,
                opts: ListOptions,
            ) -> Result<Vec<ArtifactRecord>> {
                (**self).list(kind, opts).await
            }
            async fn history(&self, kind: ArtifactKind, name: &str) -> Result<Vec<ArtifactRecord>> {
                (**self).history(kind, name).await
            }
            fn changes(&self, opts: ChangeOptions) -> BoxStream<'static, Result<ArtifactRecord>> {
                (**self).changes(opts)
            }
            fn capabilities(&self) -> PersistenceCapabilities {
                (**self).capabilities()
            }
            async fn head(&self) -> Result<Option<Version>> {
                (**self).head().await
            }
        }
    };
}

forward_persistence!(std::sync::Arc<T>);
forward_persistence!(Box<T>);

/// Checks an artifact name for storage.
///
/// # Errors
/// [`Error::Invalid`] for an empty name or one with control characters.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(Error::Invalid {
            what: "artifact name",
            value: name.chars().take(64).collect(),
            reason: "must be non-empty without control characters".into(),
        });
    }
    Ok(())
}

fn decode<T: Artifact>(record: ArtifactRecord) -> Result<Option<Versioned<T>>> {
    match record.content {
        None => Ok(None),
        Some(content) => {
            let value = serde_json::from_value::<T>(content).map_err(|e| Error::Invalid {
                what: "stored artifact",
                value: format!("{}/{}", record.kind, record.name),
                reason: e.to_string(),
            })?;
            Ok(Some(Versioned {
                value,
                version: record.version,
            }))
        }
    }
}

fn encode<T: Artifact>(artifact: &T) -> Result<serde_json::Value> {
    serde_json::to_value(artifact).map_err(|e| Error::Invalid {
        what: "artifact",
        value: artifact.name().to_owned(),
        reason: e.to_string(),
    })
}

/// Typed access for every [`Artifact`]; implemented for every store. MUST NOT be implemented
/// manually.
#[async_trait]
pub trait PersistenceExt: PersistenceStore {
    /// Writes one artifact's JSON.
    async fn put_json(
        &self,
        kind: ArtifactKind,
        name: &str,
        content: serde_json::Value,
        mode: PutMode,
    ) -> Result<Version> {
        let mut v = self
            .write(vec![ArtifactWrite::put(kind, name, content, mode)])
            .await?;
        v.pop().flatten().ok_or_else(|| Error::Backend {
            backend: self.to_string(),
            source: "a put returned no version".into(),
        })
    }

    /// The artifact `name` of type `T`, with its version.
    async fn get<T: Artifact>(&self, name: &str) -> Result<Option<Versioned<T>>> {
        match self.read(T::KIND, name).await? {
            None => Ok(None),
            Some(r) => decode(r),
        }
    }

    /// Stores a new artifact ([`Error::AlreadyExists`] if one with its name exists).
    async fn create<T: Artifact>(&self, artifact: &T) -> Result<Version> {
        self.put_json(T::KIND, artifact.name(), encode(artifact)?, PutMode::Create)
            .await
    }

    /// Replaces the artifact stored at `expected` ([`Error::Conflict`] otherwise).
    async fn update<T: Artifact>(&self, artifact: &T, expected: Version) -> Result<Version> {
        self.put_json(
            T::KIND,
            artifact.name(),
            encode(artifact)?,
            PutMode::Update(expected),
        )
        .await
    }

    /// Stores the artifact, whatever is there.
    async fn upsert<T: Artifact>(&self, artifact: &T) -> Result<Version> {
        self.put_json(
            T::KIND,
            artifact.name(),
            encode(artifact)?,
            PutMode::Overwrite,
        )
        .await
    }

    /// Deletes artifact `name` of type `T`; returns whether it existed.
    async fn remove<T: Artifact>(&self, name: &str, expected: Option<Version>) -> Result<bool> {
        let mut v = self
            .write(vec![ArtifactWrite::delete(T::KIND, name, expected)])
            .await?;
        Ok(v.pop().flatten().is_some())
    }

    /// Every stored artifact of type `T`, sorted by name.
    async fn list_all<T: Artifact>(&self) -> Result<Vec<Versioned<T>>> {
        let mut out = Vec::new();
        for r in self.list(T::KIND, ListOptions::all()).await? {
            out.extend(decode(r)?);
        }
        Ok(out)
    }
}

impl<T: PersistenceStore + ?Sized> PersistenceExt for T {}

/// The artifacts of one kind as last decoded, by name and version: [`DecodeCache::list_all`]
/// lists the stored records and decodes only those written since the last call (decoding
/// through the DSL costs far more than listing). One cache per store: versions identify
/// records within a store only.
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use vamp_core::memory::InMemoryPersistence;
/// use vamp_core::model::DefaultBreed;
/// use vamp_core::persistence::{DecodeCache, PersistenceExt};
///
/// let store = InMemoryPersistence::new();
/// let cache = DecodeCache::<DefaultBreed>::new();
/// let breed: DefaultBreed = serde_json::from_str(r#"{"name": "a", "deployable": "a:1"}"#).unwrap();
/// store.create(&breed).await.unwrap();
/// assert_eq!(cache.list_all(&store).await.unwrap(), store.list_all::<DefaultBreed>().await.unwrap());
/// assert_eq!(cache.len(), 1);
/// store.remove::<DefaultBreed>("a", None).await.unwrap();
/// assert!(cache.list_all(&store).await.unwrap().is_empty());
/// assert_eq!(cache.len(), 0, "what is no longer stored is dropped");
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct DecodeCache<T> {
    entries: parking_lot::Mutex<std::collections::HashMap<String, Versioned<T>>>,
}

impl<T> Default for DecodeCache<T> {
    fn default() -> Self {
        Self {
            entries: parking_lot::Mutex::default(),
        }
    }
}

impl<T: Artifact> DecodeCache<T> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many artifacts it holds.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every stored artifact of type `T`, sorted by name, as
    /// [`PersistenceExt::list_all`] returns them.
    ///
    /// # Errors
    /// The store's errors; [`Error::Invalid`] for a record that does not decode.
    pub async fn list_all<P: PersistenceStore + ?Sized>(
        &self,
        store: &P,
    ) -> Result<Vec<Versioned<T>>> {
        let records = store.list(T::KIND, ListOptions::all()).await?;
        let mut fresh = std::collections::HashMap::with_capacity(records.len());
        let mut out = Vec::with_capacity(records.len());
        let mut entries = std::mem::take(&mut *self.entries.lock());
        for r in records {
            let known = entries
                .remove(&r.name)
                .filter(|v| v.version == r.version && r.content.is_some());
            let name = r.name.clone();
            let Some(v) = (match known {
                Some(v) => Some(v),
                None => decode::<T>(r)?,
            }) else {
                continue;
            };
            out.push(v.clone());
            fresh.insert(name, v);
        }
        *self.entries.lock() = fresh;
        Ok(out)
    }
}
