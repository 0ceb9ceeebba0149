//! The in-memory persistence store.

use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// How many versions of each artifact the in-memory store keeps for
/// [`PersistenceStore::history`] (the latest ones).
pub const MAX_HISTORY: usize = 16;
/// How many writes the in-memory store keeps for [`PersistenceStore::changes`] from a
/// version (the latest ones; a feed from before them starts with [`Error::WatchGap`]).
pub const MAX_LOG: usize = 10_000;
/// How many removed artifacts keep their history (the most recently removed).
pub const MAX_REMOVED_HISTORIES: usize = 1_000;

/// One stored version, its content kept as compact JSON text: a tenth of the memory of the
/// parsed value, which a read rebuilds.
#[derive(Debug)]
struct Stored {
    kind: ArtifactKind,
    name: String,
    version: Version,
    content: Option<Box<str>>,
    timestamp_ms: i64,
}

impl Stored {
    fn of(r: &ArtifactRecord) -> Self {
        Self {
            kind: r.kind,
            name: r.name.clone(),
            version: r.version,
            content: r.content.as_ref().map(|c| c.to_string().into_boxed_str()),
            timestamp_ms: r.timestamp_ms,
        }
    }

    fn content(&self) -> Option<serde_json::Value> {
        // Our own serialisation of a JSON value: it always parses.
        self.content
            .as_deref()
            .map(|t| serde_json::from_str(t).unwrap_or(serde_json::Value::Null))
    }

    fn record(&self) -> ArtifactRecord {
        ArtifactRecord {
            kind: self.kind,
            name: self.name.clone(),
            version: self.version,
            content: self.content(),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The current version of each artifact, shared with its history and the log.
    current: BTreeMap<Key, Arc<Stored>>,
    /// The latest versions of each artifact.
    history: HashMap<Key, VecDeque<Arc<Stored>>>,
    /// The artifacts removed, oldest first: their histories go when there are too many.
    removed: VecDeque<Key>,
    log: VecDeque<Arc<Stored>>,
    seq: u64,
    subscribers: Vec<mpsc::UnboundedSender<Result<ArtifactRecord>>>,
}

/// An in-memory [`PersistenceStore`]: the embedded default. Everything is lost when the
/// process ends. Cloning shares the store.
///
/// Its memory is bounded by what is stored now: history keeps the latest [`MAX_HISTORY`]
/// versions of each artifact (and of the [`MAX_REMOVED_HISTORIES`] artifacts removed last),
/// the change feed replays the latest [`MAX_LOG`] writes.
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

impl State {
    fn record(&mut self, record: Arc<Stored>) {
        let key = (record.kind, record.name.clone());
        let removed = record.content.is_none();
        let history = self.history.entry(key.clone()).or_default();
        history.push_back(Arc::clone(&record));
        if history.len() > MAX_HISTORY {
            history.pop_front();
        }
        if removed {
            self.removed.push_back(key);
            while self.removed.len() > MAX_REMOVED_HISTORIES {
                if let Some(old) = self.removed.pop_front()
                    && !self.current.contains_key(&old)
                    && !self.removed.contains(&old)
                {
                    self.history.remove(&old);
                }
            }
        }
        self.log.push_back(record);
        if self.log.len() > MAX_LOG {
            self.log.pop_front();
        }
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
            .map(|r| r.record()))
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
                None => s.current.get(&key).map(|r| r.record()),
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
            let stored = Arc::new(Stored::of(&record));
            if record.content.is_some() {
                s.current.insert(key.clone(), Arc::clone(&stored));
            } else {
                s.current.remove(&key);
            }
            s.subscribers
                .retain(|tx| tx.unbounded_send(Ok(record.clone())).is_ok());
            s.record(stored);
        }
        Ok(results)
    }

    async fn list(&self, kind: ArtifactKind, opts: ListOptions) -> Result<Vec<ArtifactRecord>> {
        let s = self.state.lock();
        let iter = s
            .current
            .range((kind, String::new())..)
            .take_while(|((k, _), _)| *k == kind)
            .skip(opts.offset)
            .map(|(_, r)| r.record());
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
            .map(|h| h.iter().map(|r| r.record()).collect())
            .unwrap_or_default())
    }

    fn changes(&self, opts: ChangeOptions) -> BoxStream<'static, Result<ArtifactRecord>> {
        let (tx, rx) = mpsc::unbounded();
        let mut s = self.state.lock();
        if let Some(since) = opts.since {
            // Writes after `since` that the log no longer holds: say so first.
            if let Some(oldest) = s.log.front()
                && oldest.version.0 > since.0.saturating_add(1)
                && s.seq > MAX_LOG as u64
            {
                let _ = tx.unbounded_send(Err(Error::WatchGap {
                    backend: "InMemoryPersistence".into(),
                    detail: format!(
                        "the writes from version {} to {} are no longer kept",
                        since.0 + 1,
                        oldest.version.0 - 1
                    ),
                }));
            }
            for r in s.log.iter().filter(|r| r.version > since) {
                let _ = tx.unbounded_send(Ok(r.record()));
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

    async fn head(&self) -> Result<Option<Version>> {
        Ok(Some(Version(self.state.lock().seq)))
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
        async fn head(&self) -> Result<Option<Version>> {
            self.0.head().await
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
        // Every update is a version: the latest MAX_HISTORY of them are 785..=800.
        let h = store
            .history(ArtifactKind::Template, "counter")
            .now_or_never()
            .unwrap()
            .unwrap();
        let ns: Vec<u64> = h
            .iter()
            .map(|r| r.content.as_ref().unwrap()["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, (801 - MAX_HISTORY as u64..=800).collect::<Vec<_>>());
    }

    /// Memory follows what is stored now, not how many writes there were: history keeps the
    /// latest versions, removed artifacts' histories go, and a change feed from a version
    /// the log no longer holds starts with a gap.
    #[tokio::test]
    async fn history_and_log_are_bounded() {
        let store = InMemoryPersistence::new();
        let put = |name: String, i: usize| {
            store.write(vec![ArtifactWrite::put(
                ArtifactKind::Template,
                name,
                serde_json::json!({"i": i}),
                PutMode::Overwrite,
            )])
        };
        let first = put("a".into(), 0).await.unwrap()[0].unwrap();
        for i in 1..MAX_LOG + 10 {
            put("a".into(), i).await.unwrap();
        }
        assert_eq!(
            store
                .history(ArtifactKind::Template, "a")
                .await
                .unwrap()
                .len(),
            MAX_HISTORY
        );
        let mut feed = store.changes(ChangeOptions::new().since(first));
        assert!(feed.next().await.unwrap().unwrap_err().is_gap());
        let next = feed.next().await.unwrap().unwrap();
        assert_eq!(next.content, Some(serde_json::json!({"i": 10})));
        for i in 0..MAX_REMOVED_HISTORIES + 5 {
            let name = format!("removed-{i}");
            put(name.clone(), 0).await.unwrap();
            store
                .write(vec![ArtifactWrite::delete(
                    ArtifactKind::Template,
                    &name,
                    None,
                )])
                .await
                .unwrap();
        }
        let s = store.state.lock();
        assert_eq!(
            s.history.len(),
            1 + MAX_REMOVED_HISTORIES,
            "a and the last removed"
        );
        assert_eq!(s.log.len(), MAX_LOG);
        assert!(
            !s.history
                .contains_key(&(ArtifactKind::Template, "removed-0".to_owned()))
        );
    }
}
