//! The in-memory persistence store.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_channel::mpsc;
use futures_util::stream::{BoxStream, StreamExt};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::kv::{PutMode, Version};
use crate::model::ArtifactKind;
use crate::persistence::*;

type Key = (ArtifactKind, String);

#[derive(Debug, Default)]
struct State {
    current: BTreeMap<Key, ArtifactRecord>,
    history: HashMap<Key, Vec<ArtifactRecord>>,
    log: Vec<ArtifactRecord>,
    seq: u64,
    subscribers: Vec<mpsc::UnboundedSender<Result<ArtifactRecord>>>,
}

/// An in-memory [`PersistenceStore`]: the embedded default. Everything is lost when the
/// process ends. Cloning shares the store.
#[derive(Clone, Default)]
pub struct InMemoryPersistence {
    state: Arc<Mutex<State>>,
}

impl InMemoryPersistence {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for InMemoryPersistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryPersistence")
            .field("artifacts", &self.state.lock().current.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for InMemoryPersistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InMemoryPersistence")
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[async_trait]
impl PersistenceStore for InMemoryPersistence {
    async fn read(&self, kind: ArtifactKind, name: &str) -> Result<Option<ArtifactRecord>> {
        Ok(self
            .state
            .lock()
            .current
            .get(&(kind, name.to_owned()))
            .cloned())
    }

    async fn write(&self, writes: Vec<ArtifactWrite>) -> Result<Vec<Option<Version>>> {
        for w in &writes {
            validate_name(&w.name)?;
        }
        let backend = self.to_string();
        let mut s = self.state.lock();
        // Plan the whole batch against an overlay first: nothing applies unless everything does.
        let mut overlay: HashMap<Key, Option<ArtifactRecord>> = HashMap::new();
        let mut planned: Vec<Option<ArtifactRecord>> = Vec::new();
        let mut results = Vec::new();
        let mut seq = s.seq;
        let timestamp_ms = now_ms();
        for w in writes {
            let key = (w.kind, w.name.clone());
            let current = match overlay.get(&key) {
                Some(v) => v.clone(),
                None => s.current.get(&key).cloned(),
            };
            let label = format!("{}/{}", w.kind, w.name);
            match w.op {
                WriteOp::Put { content, mode } => {
                    match (mode, &current) {
                        (PutMode::Create, Some(_)) => {
                            return Err(Error::AlreadyExists {
                                backend,
                                key: label,
                            });
                        }
                        (PutMode::Update(expected), found)
                            if found.as_ref().map(|r| r.version) != Some(expected) =>
                        {
                            return Err(Error::Conflict {
                                backend,
                                key: label,
                                expected: expected.0,
                                found: found.as_ref().map(|r| r.version.0),
                            });
                        }
                        _ => {}
                    }
                    if let Some(cur) = current
                        .as_ref()
                        .filter(|c| c.content.as_ref() == Some(&content))
                    {
                        results.push(Some(cur.version));
                        planned.push(None);
                        continue;
                    }
                    seq += 1;
                    let record = ArtifactRecord {
                        kind: w.kind,
                        name: w.name,
                        version: Version(seq),
                        content: Some(content),
                        timestamp_ms,
                    };
                    overlay.insert(key, Some(record.clone()));
                    results.push(Some(record.version));
                    planned.push(Some(record));
                }
                WriteOp::Check { expected } => {
                    let found = current.as_ref().map(|r| r.version);
                    if found != expected {
                        return Err(Error::Conflict {
                            backend,
                            key: label,
                            expected: expected.map_or(0, |v| v.0),
                            found: found.map(|v| v.0),
                        });
                    }
                    results.push(found);
                    planned.push(None);
                }
                WriteOp::Delete { expected } => {
                    let found = current.as_ref().map(|r| r.version);
                    if let Some(expected) = expected
                        && found != Some(expected)
                    {
                        return Err(Error::Conflict {
                            backend,
                            key: label,
                            expected: expected.0,
                            found: found.map(|v| v.0),
                        });
                    }
                    if found.is_none() {
                        results.push(None);
                        planned.push(None);
                        continue;
                    }
                    seq += 1;
                    let record = ArtifactRecord {
                        kind: w.kind,
                        name: w.name,
                        version: Version(seq),
                        content: None,
                        timestamp_ms,
                    };
                    overlay.insert(key, None);
                    results.push(Some(record.version));
                    planned.push(Some(record));
                }
            }
        }
        s.seq = seq;
        for record in planned.into_iter().flatten() {
            let key = (record.kind, record.name.clone());
            if record.content.is_some() {
                s.current.insert(key.clone(), record.clone());
            } else {
                s.current.remove(&key);
            }
            s.history.entry(key).or_default().push(record.clone());
            s.log.push(record.clone());
            s.subscribers
                .retain(|tx| tx.unbounded_send(Ok(record.clone())).is_ok());
        }
        Ok(results)
    }

    async fn list(&self, kind: ArtifactKind, opts: ListOptions) -> Result<Vec<ArtifactRecord>> {
        let s = self.state.lock();
        let iter = s
            .current
            .range((kind, String::new())..)
            .take_while(|((k, _), _)| *k == kind)
            .map(|(_, r)| r.clone())
            .skip(opts.offset);
        Ok(match opts.limit {
            Some(n) => iter.take(n).collect(),
            None => iter.collect(),
        })
    }

    async fn history(&self, kind: ArtifactKind, name: &str) -> Result<Vec<ArtifactRecord>> {
        Ok(self
            .state
            .lock()
            .history
            .get(&(kind, name.to_owned()))
            .cloned()
            .unwrap_or_default())
    }

    fn changes(&self, opts: ChangeOptions) -> BoxStream<'static, Result<ArtifactRecord>> {
        let (tx, rx) = mpsc::unbounded();
        let mut s = self.state.lock();
        if let Some(since) = opts.since {
            for r in s.log.iter().filter(|r| r.version > since) {
                let _ = tx.unbounded_send(Ok(r.clone()));
            }
        }
        s.subscribers.push(tx);
        rx.boxed()
    }

    fn capabilities(&self) -> PersistenceCapabilities {
        PersistenceCapabilities {
            changes: true,
            changes_since: true,
            history: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::conformance::persistence as suite;

    #[tokio::test]
    async fn in_memory_passes_the_suite() {
        suite::run_all(&InMemoryPersistence::new(), "direct").await;
        let arc: Arc<DynPersistenceStore> = Arc::new(InMemoryPersistence::new());
        suite::run_all(&arc, "arc").await;
        let boxed: Box<DynPersistenceStore> = Box::new(InMemoryPersistence::new());
        suite::run_all(&boxed, "box").await;
    }

    #[tokio::test]
    async fn the_suite_runs_twice_on_one_store() {
        let store = InMemoryPersistence::new();
        suite::run_all(&store, "one").await;
        suite::run_all(&store, "two").await;
    }

    /// A store whose batches are not atomic: it applies operations one by one.
    #[derive(Debug, Default)]
    struct NotAtomic(InMemoryPersistence);

    impl fmt::Display for NotAtomic {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("NotAtomic")
        }
    }

    #[async_trait]
    impl PersistenceStore for NotAtomic {
        async fn read(&self, kind: ArtifactKind, name: &str) -> Result<Option<ArtifactRecord>> {
            self.0.read(kind, name).await
        }
        async fn write(&self, writes: Vec<ArtifactWrite>) -> Result<Vec<Option<Version>>> {
            let mut out = Vec::new();
            for w in writes {
                out.extend(self.0.write(vec![w]).await?);
            }
            Ok(out)
        }
        async fn list(&self, kind: ArtifactKind, opts: ListOptions) -> Result<Vec<ArtifactRecord>> {
            self.0.list(kind, opts).await
        }
        async fn history(&self, kind: ArtifactKind, name: &str) -> Result<Vec<ArtifactRecord>> {
            self.0.history(kind, name).await
        }
        fn changes(&self, opts: ChangeOptions) -> BoxStream<'static, Result<ArtifactRecord>> {
            self.0.changes(opts)
        }
        fn capabilities(&self) -> PersistenceCapabilities {
            self.0.capabilities()
        }
    }

    #[tokio::test]
    async fn the_suite_catches_a_non_atomic_batch() {
        let broken = NotAtomic::default();
        suite::create_read_update_delete(&broken, "ok").await;
        let result = std::panic::AssertUnwindSafe(suite::batch_is_atomic(&broken, "batch"))
            .catch_unwind()
            .await;
        assert!(result.is_err(), "a non-atomic batch must fail the suite");
    }

    #[test]
    fn real_threads_lose_no_update() {
        use crate::persistence::PersistenceExt;
        let store = InMemoryPersistence::new();
        let put = |s: &InMemoryPersistence, v: serde_json::Value, mode| {
            s.put_json(ArtifactKind::Template, "counter", v, mode)
                .now_or_never()
                .unwrap()
        };
        put(&store, serde_json::json!({"n": 0}), PutMode::Create).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        loop {
                            let r = store
                                .read(ArtifactKind::Template, "counter")
                                .now_or_never()
                                .unwrap()
                                .unwrap()
                                .unwrap();
                            let n = r.content.as_ref().unwrap()["n"].as_u64().unwrap();
                            match put(
                                &store,
                                serde_json::json!({"n": n + 1}),
                                PutMode::Update(r.version),
                            ) {
                                Ok(_) => break,
                                Err(e) if e.is_conflict() => continue,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let r = store
            .read(ArtifactKind::Template, "counter")
            .now_or_never()
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.content, Some(serde_json::json!({"n": 800})));
        assert_eq!(
            store
                .history(ArtifactKind::Template, "counter")
                .now_or_never()
                .unwrap()
                .unwrap()
                .len(),
            801
        );
    }
}
