//! Stages writes over a persistence store, to commit them later as one batch.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::kv::{PutMode, Version};
use crate::model::ArtifactKind;
use crate::persistence::*;

/// Staged versions start here, above any a real store hands out in practice.
const FIRST_STAGED: u64 = u64::MAX / 2;

#[derive(Debug, Default)]
struct Stage {
    /// The staged record of each artifact written (content `None`: deleted), and the version
    /// the base store had when it was first touched (`None`: absent there).
    entries: BTreeMap<(ArtifactKind, String), (ArtifactRecord, Option<Version>)>,
    next: u64,
}

/// A [`PersistenceStore`] whose writes are kept aside (staged) instead of reaching `inner`:
/// reads see the staged writes over what `inner` holds, with the same rules (creates, versioned
/// updates and deletes are checked against that view). [`Staged::commit`] then applies the
/// net effect to `inner` as **one batch**, each write conditional on the version `inner` had
/// when it was first read here, so the whole is applied or nothing is, and a writer that
/// changed one of those artifacts meanwhile makes it fail. `history` and `changes` are
/// `inner`'s.
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use std::sync::Arc;
/// use vamp_core::layers::Staged;
/// use vamp_core::memory::InMemoryPersistence;
/// use vamp_core::model::DefaultBreed;
/// use vamp_core::persistence::PersistenceExt;
///
/// let store = Arc::new(InMemoryPersistence::new());
/// let staged = Staged::new(Arc::clone(&store));
/// let breed: DefaultBreed = serde_json::from_str(r#"{"name": "b", "deployable": "x"}"#).unwrap();
/// staged.create(&breed).await.unwrap();
/// assert!(staged.get::<DefaultBreed>("b").await.unwrap().is_some());
/// assert!(store.get::<DefaultBreed>("b").await.unwrap().is_none(), "not yet");
/// staged.commit().await.unwrap();
/// assert!(store.get::<DefaultBreed>("b").await.unwrap().is_some());
/// # }).unwrap();
/// ```
pub struct Staged<T> {
    inner: T,
    stage: Mutex<Stage>,
}

impl<T> Staged<T> {
    /// Stages writes over `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            stage: Mutex::new(Stage {
                entries: BTreeMap::new(),
                next: FIRST_STAGED,
            }),
        }
    }

    /// The writes staged so far, as the batch [`Staged::commit`] would apply.
    pub fn batch(&self) -> Vec<ArtifactWrite> {
        let stage = self.stage.lock();
        stage
            .entries
            .iter()
            .filter_map(|((kind, name), (record, base))| {
                let op = match (&record.content, base) {
                    (Some(content), Some(v)) => WriteOp::Put {
                        content: content.clone(),
                        mode: PutMode::Update(*v),
                    },
                    (Some(content), None) => WriteOp::Put {
                        content: content.clone(),
                        mode: PutMode::Create,
                    },
                    (None, Some(v)) => WriteOp::Delete { expected: Some(*v) },
                    // Created and deleted again: nothing to do.
                    (None, None) => return None,
                };
                Some(ArtifactWrite {
                    kind: *kind,
                    name: name.clone(),
                    op,
                })
            })
            .collect()
    }
}

impl<T: PersistenceStore> Staged<T> {
    /// Applies the staged writes to the inner store as one batch, and empties the stage.
    ///
    /// # Errors
    /// The inner store's: [`Error::Conflict`]/[`Error::AlreadyExists`] when an artifact
    /// changed there since it was read here (nothing is applied).
    pub async fn commit(&self) -> Result<Vec<Option<Version>>> {
        let batch = self.batch();
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let versions = self.inner.write(batch).await?;
        self.stage.lock().entries.clear();
        Ok(versions)
    }

    /// What `inner` has for an artifact not staged yet.
    async fn base(&self, kind: ArtifactKind, name: &str) -> Result<Option<ArtifactRecord>> {
        Ok(self
            .inner
            .read(kind, name)
            .await?
            .filter(|r| r.content.is_some()))
    }
}

impl<T: fmt::Display> fmt::Display for Staged<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Staged({})", self.inner)
    }
}

impl<T: fmt::Debug> fmt::Debug for Staged<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Staged")
            .field("inner", &self.inner)
            .field("staged", &self.stage.lock().entries.len())
            .finish()
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: PersistenceStore> PersistenceStore for Staged<T> {
    async fn read(&self, kind: ArtifactKind, name: &str) -> Result<Option<ArtifactRecord>> {
        if let Some((record, _)) = self.stage.lock().entries.get(&(kind, name.to_owned())) {
            return Ok(record.content.is_some().then(|| record.clone()));
        }
        self.base(kind, name).await
    }

    async fn write(&self, writes: Vec<ArtifactWrite>) -> Result<Vec<Option<Version>>> {
        // The current view of every artifact the batch names, read before the stage is
        // locked (the base read is async).
        let mut current: BTreeMap<
            (ArtifactKind, String),
            (Option<ArtifactRecord>, Option<Version>),
        > = BTreeMap::new();
        for w in &writes {
            crate::persistence::validate_name(&w.name)?;
            let key = (w.kind, w.name.clone());
            if current.contains_key(&key) {
                continue;
            }
            let staged = self.stage.lock().entries.get(&key).cloned();
            let entry = match staged {
                Some((record, base)) => (record.content.is_some().then_some(record), base),
                None => {
                    let base = self.base(w.kind, &w.name).await?;
                    let version = base.as_ref().map(|r| r.version);
                    (base, version)
                }
            };
            current.insert(key, entry);
        }
        let mut stage = self.stage.lock();
        // Checked on a copy, then staged: the batch is all or nothing.
        let mut next = stage.next;
        let mut results = Vec::with_capacity(writes.len());
        let mut changed: BTreeMap<(ArtifactKind, String), (ArtifactRecord, Option<Version>)> =
            BTreeMap::new();
        let label = || self.to_string();
        for w in writes {
            let key = (w.kind, w.name.clone());
            let (now, base) = current.get(&key).cloned().unwrap_or((None, None));
            let found = now.as_ref().map(|r| r.version);
            let conflict = |expected: Version| Error::Conflict {
                backend: label(),
                key: format!("{}/{}", w.kind.as_str(), w.name),
                expected: expected.0,
                found: found.map(|v| v.0),
            };
            let content = match w.op {
                WriteOp::Put { content, mode } => {
                    match mode {
                        PutMode::Create if now.is_some() => {
                            return Err(Error::AlreadyExists {
                                backend: label(),
                                key: format!("{}/{}", w.kind.as_str(), w.name),
                            });
                        }
                        PutMode::Update(v) if found != Some(v) => return Err(conflict(v)),
                        _ => {}
                    }
                    // Equal content is no write (the store's contract).
                    if let Some(r) = &now
                        && r.content.as_ref() == Some(&content)
                    {
                        results.push(Some(r.version));
                        continue;
                    }
                    Some(content)
                }
                WriteOp::Check { expected } => {
                    if found != expected {
                        return Err(conflict(expected.unwrap_or(Version(0))));
                    }
                    results.push(found);
                    continue;
                }
                WriteOp::Delete { expected } => {
                    if let Some(v) = expected
                        && found != Some(v)
                    {
                        return Err(conflict(v));
                    }
                    if now.is_none() {
                        results.push(None);
                        continue;
                    }
                    None
                }
            };
            next += 1;
            let record = ArtifactRecord {
                kind: w.kind,
                name: w.name.clone(),
                version: Version(next),
                content,
                timestamp_ms: crate::time::now_millis(),
            };
            results.push(Some(Version(next)));
            current.insert(
                key.clone(),
                (record.content.is_some().then(|| record.clone()), base),
            );
            changed.insert(key, (record, base));
        }
        stage.entries.extend(changed);
        stage.next = next;
        Ok(results)
    }

    async fn list(&self, kind: ArtifactKind, opts: ListOptions) -> Result<Vec<ArtifactRecord>> {
        let mut all: BTreeMap<String, ArtifactRecord> = self
            .inner
            .list(kind, ListOptions::all())
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        for ((k, name), (record, _)) in &self.stage.lock().entries {
            if *k != kind {
                continue;
            }
            if record.content.is_some() {
                all.insert(name.clone(), record.clone());
            } else {
                all.remove(name);
            }
        }
        let it = all.into_values().skip(opts.offset);
        Ok(match opts.limit {
            Some(n) => it.take(n).collect(),
            None => it.collect(),
        })
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

    /// Unknown: staged versions are not the store's.
    async fn head(&self) -> Result<Option<Version>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::persistence as suite;
    use crate::memory::InMemoryPersistence;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_staged_store_keeps_the_store_contract_and_commits_all_or_nothing() {
        let base = Arc::new(InMemoryPersistence::new());
        let staged = Staged::new(Arc::clone(&base));
        suite::create_read_update_delete(&staged, "s1").await;
        suite::conflicts(&staged, "s2").await;
        // An equal write is no write (the suite's own check reads history, which is the
        // inner store's here).
        let w = || {
            ArtifactWrite::put(
                ArtifactKind::Template,
                "s3-equal",
                serde_json::json!({"name": "s3-equal"}),
                crate::kv::PutMode::Overwrite,
            )
        };
        let v1 = staged.write(vec![w()]).await.unwrap();
        assert_eq!(staged.write(vec![w()]).await.unwrap(), v1);
        suite::list_sorted_paged_and_kind_isolated(&staged, "s4").await;
        suite::batch_is_atomic(&staged, "s5").await;
        suite::invalid_names(&staged, "s6").await;
        suite::typed_round_trip(&staged, "s7").await;
        // Nothing reached the base store yet; the commit brings the staged end state.
        let kinds = ArtifactKind::ALL;
        let mut before = 0;
        for k in kinds {
            before += base.list(k, ListOptions::all()).await.unwrap().len();
        }
        assert_eq!(before, 0);
        let mut staged_view = Vec::new();
        for k in kinds {
            staged_view.extend(
                staged
                    .list(k, ListOptions::all())
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.kind, r.name, r.content)),
            );
        }
        staged.commit().await.unwrap();
        let mut committed = Vec::new();
        for k in kinds {
            committed.extend(
                base.list(k, ListOptions::all())
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.kind, r.name, r.content)),
            );
        }
        assert_eq!(committed, staged_view);
        assert!(staged.batch().is_empty());
    }

    #[tokio::test]
    async fn a_commit_fails_whole_when_the_store_changed_meanwhile() {
        use crate::kv::PutMode;
        let base = Arc::new(InMemoryPersistence::new());
        let put = |name: &str, v: i64| {
            ArtifactWrite::put(
                ArtifactKind::Template,
                name,
                serde_json::json!({"name": name, "v": v}),
                PutMode::Overwrite,
            )
        };
        base.write(vec![put("a", 1)]).await.unwrap();
        let staged = Staged::new(Arc::clone(&base));
        staged.write(vec![put("a", 2), put("b", 1)]).await.unwrap();
        // Someone else writes "a" before the commit.
        base.write(vec![put("a", 3)]).await.unwrap();
        let e = staged.commit().await.unwrap_err();
        assert!(e.is_conflict(), "{e}");
        let a = base
            .read(ArtifactKind::Template, "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.content.unwrap()["v"], 3);
        assert!(
            base.read(ArtifactKind::Template, "b")
                .await
                .unwrap()
                .is_none(),
            "nothing of the batch"
        );
    }
}
