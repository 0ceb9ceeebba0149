//! The in-memory key-value store.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::stream::{self, BoxStream, StreamExt};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::kv::*;

/// How many events a watcher may have waiting before it is dropped with a gap.
pub const WATCH_BUFFER: usize = 65_536;

#[derive(Debug)]
struct Watcher {
    prefix: KeyPath,
    tx: mpsc::Sender<WatchEvent>,
    /// Set when the watcher fell [`WATCH_BUFFER`] events behind and was dropped.
    overflowed: Arc<AtomicBool>,
}

#[derive(Debug)]
struct State {
    entries: BTreeMap<KeyPath, Versioned<Bytes>>,
    revision: u64,
    watchers: Vec<Watcher>,
    watch_buffer: usize,
}

impl Default for State {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            revision: 0,
            watchers: Vec::new(),
            watch_buffer: WATCH_BUFFER,
        }
    }
}

impl State {
    fn notify(&mut self, key: &KeyPath, event: &WatchEvent) {
        self.watchers.retain_mut(|w| {
            if !key.starts_with(&w.prefix) {
                return true;
            }
            match w.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(e) => {
                    // Full: the watcher fell too far behind; it reports a gap and starts
                    // again. Disconnected: the stream was dropped.
                    if e.is_full() {
                        w.overflowed.store(true, Ordering::SeqCst);
                    }
                    false
                }
            }
        });
    }

    /// Registers a watcher, queueing the current entries first when `initial`.
    fn subscribe(
        &mut self,
        prefix: &KeyPath,
        initial: bool,
    ) -> (mpsc::Receiver<WatchEvent>, Arc<AtomicBool>) {
        let current: Vec<WatchEvent> = if initial {
            self.entries
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(key, v)| WatchEvent::Put {
                    key: key.clone(),
                    value: v.value.clone(),
                    version: v.version,
                })
                .chain(std::iter::once(WatchEvent::Synced))
                .collect()
        } else {
            Vec::new()
        };
        // Room for the current entries as well as the buffer of changes.
        let (mut tx, rx) = mpsc::channel(self.watch_buffer.saturating_add(current.len()));
        for event in current {
            tx.try_send(event)
                .expect("the channel has room for the current entries");
        }
        let overflowed = Arc::new(AtomicBool::new(false));
        self.watchers.push(Watcher {
            prefix: prefix.clone(),
            tx,
            overflowed: Arc::clone(&overflowed),
        });
        (rx, overflowed)
    }
}

/// An in-memory [`KeyValueStore`]: the embedded default.
///
/// Every write takes the next value of one store-wide revision counter as its version, so
/// versions are comparable across keys. Watches are fed under the same lock as the write, so
/// they see every change in order. Cloning shares the store.
#[derive(Clone, Default)]
pub struct InMemoryKv {
    state: Arc<Mutex<State>>,
}

impl InMemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose watchers may fall `events` changes behind before they are
    /// dropped with [`Error::WatchGap`] (and start again from the current entries); the
    /// default is [`WATCH_BUFFER`]. Memory per watcher stays bounded.
    pub fn with_watch_buffer(events: usize) -> Self {
        let kv = Self::default();
        kv.state.lock().watch_buffer = events.max(1);
        kv
    }
}

impl fmt::Debug for InMemoryKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryKv")
            .field("entries", &self.state.lock().entries.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for InMemoryKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InMemoryKv")
    }
}

#[async_trait]
impl KeyValueStore for InMemoryKv {
    async fn get(&self, key: &KeyPath) -> Result<Option<Versioned<Bytes>>> {
        Ok(self.state.lock().entries.get(key).cloned())
    }

    async fn put_opts(&self, key: &KeyPath, value: Bytes, opts: PutOptions) -> Result<Version> {
        self.capabilities()
            .check_put(&self.to_string(), key, value.len(), &opts)?;
        let mut s = self.state.lock();
        if let Some((guard, expected)) = &opts.guard {
            let found = s.entries.get(guard).map(|v| v.version);
            if found != Some(*expected) {
                return Err(Error::Conflict {
                    backend: self.to_string(),
                    key: guard.to_string(),
                    expected: expected.0,
                    found: found.map(|v| v.0),
                });
            }
        }
        let current = s.entries.get(key).map(|v| v.version);
        match (opts.mode, current) {
            (PutMode::Create, Some(_)) => {
                return Err(Error::AlreadyExists {
                    backend: self.to_string(),
                    key: key.to_string(),
                });
            }
            (PutMode::Update(expected), found) if found != Some(expected) => {
                return Err(Error::Conflict {
                    backend: self.to_string(),
                    key: key.to_string(),
                    expected: expected.0,
                    found: found.map(|v| v.0),
                });
            }
            _ => {}
        }
        s.revision += 1;
        let version = Version(s.revision);
        s.entries.insert(
            key.clone(),
            Versioned {
                value: value.clone(),
                version,
            },
        );
        s.notify(
            key,
            &WatchEvent::Put {
                key: key.clone(),
                value,
                version,
            },
        );
        Ok(version)
    }

    async fn delete(&self, key: &KeyPath) -> Result<()> {
        let mut s = self.state.lock();
        if s.entries.remove(key).is_some() {
            s.revision += 1;
            let version = Version(s.revision);
            s.notify(
                key,
                &WatchEvent::Delete {
                    key: key.clone(),
                    version,
                },
            );
        }
        Ok(())
    }

    fn list(&self, prefix: &KeyPath) -> BoxStream<'static, Result<KeyPath>> {
        let keys: Vec<Result<KeyPath>> = self
            .state
            .lock()
            .entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .map(Ok)
            .collect();
        stream::iter(keys).boxed()
    }

    fn watch(
        &self,
        prefix: &KeyPath,
        opts: WatchOptions,
    ) -> BoxStream<'static, Result<WatchEvent>> {
        let (rx, overflowed) = self.state.lock().subscribe(prefix, opts.initial);
        let state = Arc::clone(&self.state);
        let prefix = prefix.clone();
        stream::unfold(
            (rx, overflowed, state, prefix),
            move |(mut rx, mut overflowed, state, prefix)| async move {
                if let Some(event) = rx.next().await {
                    return Some((Ok(event), (rx, overflowed, state, prefix)));
                }
                if !overflowed.load(Ordering::SeqCst) {
                    return None;
                }
                // Every queued change was delivered; the ones after were not: a gap, then
                // the current entries again (or the current position).
                let gap = Error::WatchGap {
                    backend: "InMemoryKv".into(),
                    detail: "the watcher fell too many changes behind".into(),
                };
                (rx, overflowed) = state.lock().subscribe(&prefix, opts.initial);
                Some((Err(gap), (rx, overflowed, state, prefix)))
            },
        )
        .boxed()
    }

    fn capabilities(&self) -> KvCapabilities {
        KvCapabilities {
            watch: true,
            cas: true,
            ttl: false,
            list: true,
            guard: true,
            value_max_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::FutureExt;

    use super::*;
    use crate::conformance::kv as suite;
    use crate::kv::KeyValueStoreExt;
    use crate::layers::{Namespaced, RetryConfig, Retrying};

    fn root(name: &str) -> KeyPath {
        KeyPath::parse(&format!("/conformance/{name}")).unwrap()
    }

    /// A watcher that is not read falls behind by a bounded number of changes only: then it
    /// is dropped, and its stream delivers what was queued, a gap, the current entries, and
    /// goes on (the queue grew without bound before).
    #[tokio::test]
    async fn a_watcher_that_falls_behind_gets_a_gap_then_the_current_entries() {
        let kv = InMemoryKv::with_watch_buffer(4);
        let k = KeyPath::parse("/w/k").unwrap();
        kv.put(&k, "0".into()).await.unwrap();
        let mut w = kv.watch(
            &KeyPath::parse("/w").unwrap(),
            WatchOptions::new().with_initial(true),
        );
        let mut versions = Vec::new();
        for i in 1..=50u32 {
            versions.push(kv.put(&k, i.to_string().into()).await.unwrap());
        }
        let mut items = Vec::new();
        while let Some(Some(item)) = w.next().now_or_never() {
            items.push(item);
        }
        assert_eq!(
            kv.state.lock().watchers.len(),
            1,
            "one watcher, resubscribed"
        );
        let gap = items
            .iter()
            .position(|i| i.as_ref().is_err_and(Error::is_gap))
            .expect("a gap");
        assert!(gap < 10, "few changes were queued before the gap: {gap}");
        // Before the gap: the initial entry, Synced, and the first changes in order.
        for (n, item) in items[2..gap].iter().enumerate() {
            assert_eq!(
                item.as_ref().unwrap(),
                &WatchEvent::Put {
                    key: k.clone(),
                    value: Bytes::from((n + 1).to_string()),
                    version: versions[n]
                }
            );
        }
        // After it: the current entry, Synced, nothing else.
        let after: Vec<_> = items[gap + 1..]
            .iter()
            .map(|i| i.as_ref().unwrap().clone())
            .collect();
        assert_eq!(
            after,
            vec![
                WatchEvent::Put {
                    key: k.clone(),
                    value: Bytes::from_static(b"50"),
                    version: versions[49]
                },
                WatchEvent::Synced
            ]
        );
        let v = kv.put(&k, "51".into()).await.unwrap();
        assert_eq!(
            w.next().now_or_never().unwrap().unwrap().unwrap(),
            WatchEvent::Put {
                key: k,
                value: Bytes::from_static(b"51"),
                version: v
            }
        );
    }

    #[tokio::test]
    async fn in_memory_passes_the_suite() {
        suite::run_all(&InMemoryKv::new(), &root("direct")).await;
    }

    #[tokio::test]
    async fn through_arc_and_box_dyn() {
        let arc: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
        suite::run_all(&arc, &root("arc")).await;
        suite::run_all(arc.as_ref(), &root("arc-ref")).await;
        let boxed: Box<DynKeyValueStore> = Box::new(InMemoryKv::new());
        suite::run_all(&boxed, &root("box")).await;
    }

    #[tokio::test]
    async fn through_the_layers() {
        let inner = InMemoryKv::new();
        let ns = Namespaced::new(inner.clone(), KeyPath::parse("/vamp/ns one").unwrap());
        suite::run_all(&ns, &root("namespaced")).await;
        assert!(
            inner.list_all(&KeyPath::root()).await.unwrap().is_empty(),
            "the suite cleans up"
        );
        suite::run_all(
            &Retrying::new(InMemoryKv::new(), RetryConfig::default()),
            &root("retrying"),
        )
        .await;
    }

    #[test]
    fn real_threads_lose_no_update() {
        let kv = InMemoryKv::new();
        let k = KeyPath::parse("/counter").unwrap();
        kv.put(&k, "0".into()).now_or_never().unwrap().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (kv, k) = (kv.clone(), k.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        loop {
                            let cur = kv.get(&k).now_or_never().unwrap().unwrap().unwrap();
                            let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                            match kv
                                .compare_and_swap(&k, (n + 1).to_string().into(), cur.version)
                                .now_or_never()
                                .unwrap()
                            {
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
        assert_eq!(
            kv.get_string(&k)
                .now_or_never()
                .unwrap()
                .unwrap()
                .as_deref(),
            Some("1600")
        );
    }

    /// A store that loses the second watch event of every watch.
    #[derive(Debug, Default)]
    struct DropsSecondWatchEvent(InMemoryKv);

    impl fmt::Display for DropsSecondWatchEvent {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("DropsSecondWatchEvent")
        }
    }

    #[async_trait]
    impl KeyValueStore for DropsSecondWatchEvent {
        async fn get(&self, key: &KeyPath) -> Result<Option<Versioned<Bytes>>> {
            self.0.get(key).await
        }
        async fn put_opts(&self, key: &KeyPath, value: Bytes, opts: PutOptions) -> Result<Version> {
            self.0.put_opts(key, value, opts).await
        }
        async fn delete(&self, key: &KeyPath) -> Result<()> {
            self.0.delete(key).await
        }
        fn list(&self, prefix: &KeyPath) -> BoxStream<'static, Result<KeyPath>> {
            self.0.list(prefix)
        }
        fn watch(
            &self,
            prefix: &KeyPath,
            opts: WatchOptions,
        ) -> BoxStream<'static, Result<WatchEvent>> {
            let seen = AtomicUsize::new(0);
            self.0
                .watch(prefix, opts)
                .filter(move |e| {
                    let changes =
                        matches!(e, Ok(WatchEvent::Put { .. } | WatchEvent::Delete { .. }));
                    let n = if changes {
                        seen.fetch_add(1, Ordering::SeqCst) + 1
                    } else {
                        0
                    };
                    std::future::ready(n != 2)
                })
                .boxed()
        }
        fn capabilities(&self) -> KvCapabilities {
            self.0.capabilities()
        }
    }

    #[tokio::test]
    async fn the_suite_catches_a_lost_watch_event() {
        let broken = DropsSecondWatchEvent::default();
        // The non-watch behaviours still pass...
        suite::put_get_delete(&broken, &root("broken")).await;
        // ...but the watch checks fail.
        let result = std::panic::AssertUnwindSafe(suite::watch_no_lost_or_reordered_events(
            &broken,
            &root("broken"),
        ))
        .catch_unwind()
        .await;
        assert!(
            result.is_err(),
            "a store that drops an event must fail the suite"
        );
        let result = std::panic::AssertUnwindSafe(suite::watch_sees_put_and_delete(
            &broken,
            &root("broken2"),
        ))
        .catch_unwind()
        .await;
        assert!(
            result.is_err(),
            "a store that drops an event must fail the suite"
        );
    }

    /// Fails with `Unavailable` for the first `failures` calls, then works.
    #[derive(Debug, Default)]
    struct Flaky {
        inner: InMemoryKv,
        failures: AtomicUsize,
        calls: AtomicUsize,
        permanent: bool,
    }

    impl fmt::Display for Flaky {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Flaky")
        }
    }

    impl Flaky {
        fn fail(&self) -> Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.failures.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            self.failures.fetch_sub(1, Ordering::SeqCst);
            if self.permanent {
                Err(Error::InvalidConfig {
                    backend: "flaky".into(),
                    message: "bad".into(),
                })
            } else {
                Err(Error::Unavailable {
                    backend: "flaky".into(),
                    source: "connection refused".into(),
                })
            }
        }
    }

    #[async_trait]
    impl KeyValueStore for Flaky {
        async fn get(&self, key: &KeyPath) -> Result<Option<Versioned<Bytes>>> {
            self.fail()?;
            self.inner.get(key).await
        }
        async fn put_opts(&self, key: &KeyPath, value: Bytes, opts: PutOptions) -> Result<Version> {
            self.fail()?;
            self.inner.put_opts(key, value, opts).await
        }
        async fn delete(&self, key: &KeyPath) -> Result<()> {
            self.fail()?;
            self.inner.delete(key).await
        }
        fn list(&self, prefix: &KeyPath) -> BoxStream<'static, Result<KeyPath>> {
            self.inner.list(prefix)
        }
        fn watch(
            &self,
            prefix: &KeyPath,
            opts: WatchOptions,
        ) -> BoxStream<'static, Result<WatchEvent>> {
            self.inner.watch(prefix, opts)
        }
        fn capabilities(&self) -> KvCapabilities {
            self.inner.capabilities()
        }
    }

    fn fast() -> RetryConfig {
        RetryConfig::default().with_max_retries(5).with_backoff(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(4),
            2.0,
        )
    }

    #[tokio::test]
    async fn retrying_retries_only_temporary_errors() {
        let k = KeyPath::parse("/k").unwrap();
        let flaky = Retrying::new(
            Flaky {
                failures: AtomicUsize::new(3),
                ..Default::default()
            },
            fast(),
        );
        flaky
            .put(&k, "v".into())
            .await
            .expect("succeeds after 3 temporary failures");
        assert_eq!(flaky.inner().calls.load(Ordering::SeqCst), 4);

        let permanent = Retrying::new(
            Flaky {
                failures: AtomicUsize::new(3),
                permanent: true,
                ..Default::default()
            },
            fast(),
        );
        assert!(
            matches!(permanent.get(&k).await, Err(Error::InvalidConfig { .. })),
            "a permanent error is not retried"
        );
        assert_eq!(permanent.inner().calls.load(Ordering::SeqCst), 1);

        let down = Retrying::new(
            Flaky {
                failures: AtomicUsize::new(100),
                ..Default::default()
            },
            fast(),
        );
        match down.get(&k).await {
            Err(Error::RetriesExhausted { attempts, source }) => {
                assert_eq!(attempts, 6, "1 attempt + 5 retries");
                assert!(source.is_temporary());
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
        let deadline = Retrying::new(
            Flaky {
                failures: AtomicUsize::new(100),
                ..Default::default()
            },
            fast()
                .with_max_retries(1000)
                .with_retry_timeout(std::time::Duration::from_millis(50)),
        );
        assert!(
            matches!(deadline.get(&k).await, Err(Error::RetriesExhausted { .. })),
            "the deadline ends the retries"
        );
        assert!(deadline.inner().calls.load(Ordering::SeqCst) < 1000);
    }
}
