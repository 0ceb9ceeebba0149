//! Conformance suite for [`KeyValueStore`] implementations.
//!
//! Each function checks one behaviour under `root` and panics with a message when the store
//! breaks the contract. **They write and delete keys under `root`; give each run a fresh
//! root.** Not covered by semver.
//!
//! ```
//! # futures_util::FutureExt::now_or_never(async {
//! use vamp_core::kv::KeyPath;
//! use vamp_core::memory::InMemoryKv;
//! vamp_core::conformance::kv::put_get_delete(&InMemoryKv::new(), &KeyPath::parse("/t").unwrap()).await;
//! # }).unwrap();
//! ```

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::future::join_all;
use futures_util::stream::BoxStream;

use crate::error::Result;
use crate::kv::*;
use crate::rt::timeout;

/// How long a watch event may take to arrive before the suite fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

fn key(root: &KeyPath, path: &str) -> KeyPath {
    root.join(&KeyPath::parse(path).expect("test key"))
}

async fn next_event(stream: &mut BoxStream<'static, Result<WatchEvent>>, what: &str) -> WatchEvent {
    match timeout(EVENT_TIMEOUT, stream.next()).await {
        None => panic!("no watch event within {EVENT_TIMEOUT:?} while waiting for {what}"),
        Some(None) => panic!("watch stream ended while waiting for {what}"),
        Some(Some(Err(e))) => panic!("watch stream failed while waiting for {what}: {e}"),
        Some(Some(Ok(e))) => e,
    }
}

/// Opens a watch with initial entries and waits until it is synced.
async fn synced_watch(
    store: &DynKeyValueStore,
    prefix: &KeyPath,
) -> BoxStream<'static, Result<WatchEvent>> {
    let mut w = store.watch(prefix, WatchOptions::new().with_initial(true));
    loop {
        if next_event(&mut w, "Synced").await == WatchEvent::Synced {
            return w;
        }
    }
}

/// Put, get, overwrite and delete one key.
pub async fn put_get_delete(store: &DynKeyValueStore, root: &KeyPath) {
    let k = key(root, "put_get_delete/a");
    assert_eq!(
        store.get(&k).await.expect("get missing"),
        None,
        "a missing key reads as None"
    );
    let v1 = store
        .put_opts(&k, Bytes::from_static(b"one"), PutOptions::new())
        .await
        .expect("put");
    let got = store
        .get(&k)
        .await
        .expect("get")
        .expect("the key exists after a put");
    assert_eq!(
        (got.value.as_ref(), got.version),
        (&b"one"[..], v1),
        "get returns the value and version of the put"
    );
    let v2 = store
        .put_opts(&k, Bytes::from_static(b"two"), PutOptions::new())
        .await
        .expect("overwrite");
    assert!(
        v2 > v1,
        "an overwrite gets a greater version ({v2} after {v1})"
    );
    assert_eq!(
        store
            .get(&k)
            .await
            .expect("get")
            .expect("exists")
            .value
            .as_ref(),
        b"two"
    );
    store.delete(&k).await.expect("delete");
    assert_eq!(
        store.get(&k).await.expect("get deleted"),
        None,
        "a deleted key reads as None"
    );
    store
        .delete(&k)
        .await
        .expect("deleting a missing key succeeds");
    let v3 = store
        .put_opts(&k, Bytes::from_static(b"three"), PutOptions::new())
        .await
        .expect("put after delete");
    assert!(v3 > v2, "a put after a delete gets a greater version");
    store.delete(&k).await.expect("cleanup");
}

/// `PutMode::Create` writes only missing keys.
pub async fn create_only(store: &DynKeyValueStore, root: &KeyPath) {
    let k = key(root, "create_only/a");
    let v = store
        .put_opts(
            &k,
            Bytes::from_static(b"first"),
            PutOptions::new().with_mode(PutMode::Create),
        )
        .await
        .expect("create a missing key");
    let err = store
        .put_opts(
            &k,
            Bytes::from_static(b"second"),
            PutOptions::new().with_mode(PutMode::Create),
        )
        .await
        .expect_err("create over an existing key must fail");
    assert!(
        err.is_conflict(),
        "create over an existing key: expected AlreadyExists, got {err}"
    );
    let got = store.get(&k).await.expect("get").expect("exists");
    assert_eq!(
        (got.value.as_ref(), got.version),
        (&b"first"[..], v),
        "a failed create leaves the entry unchanged"
    );
    store.delete(&k).await.expect("cleanup");
}

/// `PutMode::Update` writes only at the expected version.
pub async fn compare_and_swap(store: &DynKeyValueStore, root: &KeyPath) {
    let k = key(root, "compare_and_swap/a");
    // Version 0 is no entry's version: an update at it is a conflict on every store, never
    // a create (Consul's CAS index 0 means "create if absent").
    let zero = store
        .put_opts(
            &k,
            Bytes::from_static(b"x"),
            PutOptions::new().with_mode(PutMode::Update(Version(0))),
        )
        .await;
    assert!(
        zero.as_ref().is_err_and(|e| e.is_conflict()),
        "an update at version 0 must conflict, got {zero:?}"
    );
    assert_eq!(
        store.get(&k).await.expect("get"),
        None,
        "an update at version 0 creates nothing"
    );
    let missing = store
        .put_opts(
            &k,
            Bytes::from_static(b"x"),
            PutOptions::new().with_mode(PutMode::Update(Version(1))),
        )
        .await;
    assert!(
        missing.as_ref().is_err_and(|e| e.is_conflict()),
        "update of a missing key must conflict, got {missing:?}"
    );
    assert_eq!(
        store.get(&k).await.expect("get"),
        None,
        "a failed update creates nothing"
    );
    let v1 = store
        .put_opts(&k, Bytes::from_static(b"v1"), PutOptions::new())
        .await
        .expect("put");
    let v2 = store
        .put_opts(
            &k,
            Bytes::from_static(b"v2"),
            PutOptions::new().with_mode(PutMode::Update(v1)),
        )
        .await
        .expect("update at the current version");
    assert!(v2 > v1);
    let stale = store
        .put_opts(
            &k,
            Bytes::from_static(b"stale"),
            PutOptions::new().with_mode(PutMode::Update(v1)),
        )
        .await;
    assert!(
        stale.as_ref().is_err_and(|e| e.is_conflict()),
        "update at a stale version must conflict, got {stale:?}"
    );
    assert_eq!(
        store
            .get(&k)
            .await
            .expect("get")
            .expect("exists")
            .value
            .as_ref(),
        b"v2",
        "a failed update leaves the value"
    );
    store.delete(&k).await.expect("cleanup");
}

/// `PutOptions::guard`: a write applies only while the guard key is at the version given,
/// checked in the same atomic step, in every mode; a refused write names the guard key and
/// changes nothing.
pub async fn guarded_put(store: &DynKeyValueStore, root: &KeyPath) {
    let fence = key(root, "guarded_put/fence");
    let k = key(root, "guarded_put/a");
    let missing = store
        .put_opts(
            &k,
            Bytes::from_static(b"x"),
            PutOptions::new().with_guard(fence.clone(), Version(1)),
        )
        .await;
    assert!(
        missing.as_ref().is_err_and(|e| e.is_conflict()),
        "a guard on a missing key must conflict, got {missing:?}"
    );
    assert_eq!(
        store.get(&k).await.expect("get"),
        None,
        "a refused write creates nothing"
    );
    let f1 = store
        .put_opts(&fence, Bytes::from_static(b"1"), PutOptions::new())
        .await
        .expect("put the guard key");
    let v1 = store
        .put_opts(
            &k,
            Bytes::from_static(b"v1"),
            PutOptions::new()
                .with_mode(PutMode::Create)
                .with_guard(fence.clone(), f1),
        )
        .await
        .expect("a create under the guard's version");
    let v2 = store
        .put_opts(
            &k,
            Bytes::from_static(b"v2"),
            PutOptions::new().with_guard(fence.clone(), f1),
        )
        .await
        .expect("an overwrite under the guard's version");
    assert!(v2 > v1);
    // The guard key moves (another leader took the fence): writes under the old version fail.
    let f2 = store
        .put_opts(&fence, Bytes::from_static(b"2"), PutOptions::new())
        .await
        .expect("move the guard key");
    for opts in [
        PutOptions::new().with_guard(fence.clone(), f1),
        PutOptions::new()
            .with_mode(PutMode::Update(v2))
            .with_guard(fence.clone(), f1),
    ] {
        match store.put_opts(&k, Bytes::from_static(b"stale"), opts).await {
            Err(crate::Error::Conflict { key, .. }) => assert!(
                key.trim_end_matches('/').ends_with("guarded_put/fence"),
                "the conflict names the guard key, not {key}"
            ),
            other => panic!("a write under a moved guard must conflict, got {other:?}"),
        }
    }
    assert_eq!(
        store
            .get(&k)
            .await
            .expect("get")
            .expect("exists")
            .value
            .as_ref(),
        b"v2",
        "a refused write leaves the value"
    );
    store
        .put_opts(
            &k,
            Bytes::from_static(b"v3"),
            PutOptions::new()
                .with_mode(PutMode::Update(v2))
                .with_guard(fence.clone(), f2),
        )
        .await
        .expect("an update under the guard's new version");
    store.delete(&k).await.expect("cleanup");
    store.delete(&fence).await.expect("cleanup");
}

/// `list` yields the keys at or below a prefix, segment-wise, sorted.
pub async fn list_prefix_isolation(store: &DynKeyValueStore, root: &KeyPath) {
    let base = key(root, "list");
    let names = ["a", "a/b", "a/b/c", "ab", "b"];
    for n in names {
        store
            .put_opts(&key(&base, n), Bytes::from(n.to_owned()), PutOptions::new())
            .await
            .expect("put");
    }
    let listed: Vec<KeyPath> = store
        .list(&key(&base, "a"))
        .map(|r| r.expect("list item"))
        .collect()
        .await;
    let expected: Vec<KeyPath> = ["a", "a/b", "a/b/c"]
        .iter()
        .map(|n| key(&base, n))
        .collect();
    assert_eq!(
        listed, expected,
        "list(/a) must include /a and below, not /ab"
    );
    let all: Vec<KeyPath> = store
        .list(&base)
        .map(|r| r.expect("list item"))
        .collect()
        .await;
    assert_eq!(
        all.len(),
        names.len(),
        "list(base) yields every key: {all:?}"
    );
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "list is sorted");
    store.delete(&key(&base, "a/b")).await.expect("delete");
    let listed: Vec<KeyPath> = store
        .list(&key(&base, "a"))
        .map(|r| r.expect("list item"))
        .collect()
        .await;
    assert_eq!(
        listed,
        vec![key(&base, "a"), key(&base, "a/b/c")],
        "a deleted key is not listed, its children are"
    );
    for n in names {
        store.delete(&key(&base, n)).await.expect("cleanup");
    }
}

/// Values up to 1 MiB (or the store's limit) with every byte value survive.
pub async fn large_values(store: &DynKeyValueStore, root: &KeyPath) {
    let size = store
        .capabilities()
        .value_max_bytes
        .map_or(1 << 20, |m| m.min(1 << 20));
    let value: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
    let k = key(root, "large/value");
    store
        .put_opts(&k, Bytes::from(value.clone()), PutOptions::new())
        .await
        .expect("put a large value");
    let got = store.get(&k).await.expect("get").expect("exists");
    assert!(
        got.value.as_ref() == value.as_slice(),
        "a {size}-byte value must come back unchanged"
    );
    store
        .put_opts(&k, Bytes::new(), PutOptions::new())
        .await
        .expect("put an empty value");
    assert_eq!(
        store
            .get(&k)
            .await
            .expect("get")
            .expect("an empty value is still an entry")
            .value
            .len(),
        0
    );
    store.delete(&k).await.expect("cleanup");
}

/// Keys with Unicode, spaces and punctuation work and are listed back exactly.
pub async fn unusual_keys(store: &DynKeyValueStore, root: &KeyPath) {
    let base = key(root, "unusual");
    let names = [
        "sava:1.0.0",
        "with space",
        "ünïcødé/日本",
        "a@b%c#d?e&f=g",
        "deep/1/2/3/4/5/6/7/8",
        "[external/1/2]",
        "dots.in.name",
        "-dash",
        "_under",
    ];
    for n in names {
        let k = key(&base, n);
        store
            .put_opts(&k, Bytes::from(n.to_owned()), PutOptions::new())
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
        let got = store
            .get(&k)
            .await
            .unwrap_or_else(|e| panic!("get {k}: {e}"))
            .unwrap_or_else(|| panic!("{k} exists"));
        assert_eq!(got.value.as_ref(), n.as_bytes(), "value of {k}");
    }
    let listed: Vec<KeyPath> = store
        .list(&base)
        .map(|r| r.expect("list item"))
        .collect()
        .await;
    let mut expected: Vec<KeyPath> = names.iter().map(|n| key(&base, n)).collect();
    expected.sort();
    assert_eq!(listed, expected, "unusual keys are listed back exactly");
    for n in names {
        store.delete(&key(&base, n)).await.expect("cleanup");
    }
}

/// A watch with initial entries sees the current entries, `Synced`, then puts and deletes in
/// order with the versions the writes returned.
pub async fn watch_sees_put_and_delete(store: &DynKeyValueStore, root: &KeyPath) {
    let base = key(root, "watch");
    let existing = key(&base, "existing");
    let v0 = store
        .put_opts(&existing, Bytes::from_static(b"old"), PutOptions::new())
        .await
        .expect("put");
    let mut w = store.watch(&base, WatchOptions::new().with_initial(true));
    assert_eq!(
        next_event(&mut w, "the initial entry").await,
        WatchEvent::Put {
            key: existing.clone(),
            value: Bytes::from_static(b"old"),
            version: v0
        },
        "the initial entries come first"
    );
    assert_eq!(next_event(&mut w, "Synced").await, WatchEvent::Synced);
    let k = key(&base, "k");
    let v1 = store
        .put_opts(&k, Bytes::from_static(b"1"), PutOptions::new())
        .await
        .expect("put");
    let v2 = store
        .put_opts(&k, Bytes::from_static(b"2"), PutOptions::new())
        .await
        .expect("put");
    store.delete(&k).await.expect("delete");
    assert_eq!(
        next_event(&mut w, "the first put").await,
        WatchEvent::Put {
            key: k.clone(),
            value: Bytes::from_static(b"1"),
            version: v1
        }
    );
    assert_eq!(
        next_event(&mut w, "the second put").await,
        WatchEvent::Put {
            key: k.clone(),
            value: Bytes::from_static(b"2"),
            version: v2
        }
    );
    match next_event(&mut w, "the delete").await {
        WatchEvent::Delete { key: dk, version } => {
            assert_eq!(dk, k);
            assert!(
                version > v2,
                "a delete's version ({version}) is greater than the last put's ({v2})"
            );
        }
        other => panic!("expected the delete, got {other:?}"),
    }
    store.delete(&existing).await.expect("cleanup");
}

/// 100 quick writes of one key arrive as 100 events in version order.
pub async fn watch_no_lost_or_reordered_events(store: &DynKeyValueStore, root: &KeyPath) {
    let base = key(root, "watch_order");
    let k = key(&base, "k");
    let mut w = synced_watch(store, &base).await;
    let mut versions = Vec::new();
    for i in 0..100u32 {
        versions.push(
            store
                .put_opts(&k, Bytes::from(i.to_string()), PutOptions::new())
                .await
                .expect("put"),
        );
    }
    for (i, v) in versions.iter().enumerate() {
        let expected = WatchEvent::Put {
            key: k.clone(),
            value: Bytes::from(i.to_string()),
            version: *v,
        };
        assert_eq!(
            next_event(&mut w, &format!("put #{i}")).await,
            expected,
            "event #{i} must be the #{i} write"
        );
    }
    store.delete(&k).await.expect("cleanup");
}

/// A watch sees its prefix only (segment-wise).
pub async fn watch_prefix_isolation(store: &DynKeyValueStore, root: &KeyPath) {
    let base = key(root, "watch_prefix");
    let mut w = synced_watch(store, &key(&base, "a")).await;
    store
        .put_opts(
            &key(&base, "ab"),
            Bytes::from_static(b"no"),
            PutOptions::new(),
        )
        .await
        .expect("put");
    store
        .put_opts(
            &key(&base, "b/a"),
            Bytes::from_static(b"no"),
            PutOptions::new(),
        )
        .await
        .expect("put");
    let v = store
        .put_opts(
            &key(&base, "a/x"),
            Bytes::from_static(b"yes"),
            PutOptions::new(),
        )
        .await
        .expect("put");
    assert_eq!(
        next_event(&mut w, "the put below the prefix").await,
        WatchEvent::Put {
            key: key(&base, "a/x"),
            value: Bytes::from_static(b"yes"),
            version: v
        },
        "keys outside the prefix (/ab, /b/a) must not be seen"
    );
    for n in ["ab", "b/a", "a/x"] {
        store.delete(&key(&base, n)).await.expect("cleanup");
    }
}

/// 8 concurrent writers increment one counter 10 times each with compare-and-swap; no
/// increment is lost.
pub async fn concurrent_writers_no_lost_update(store: &DynKeyValueStore, root: &KeyPath) {
    const WRITERS: usize = 8;
    const INCREMENTS: usize = 10;
    let k = key(root, "concurrent/counter");
    store
        .put_opts(&k, Bytes::from_static(b"0"), PutOptions::new())
        .await
        .expect("put");
    let writer = |_| async {
        for _ in 0..INCREMENTS {
            loop {
                let current = store.get(&k).await.expect("get").expect("counter exists");
                let n: usize = std::str::from_utf8(&current.value)
                    .expect("utf8")
                    .parse()
                    .expect("number");
                match store
                    .put_opts(
                        &k,
                        Bytes::from((n + 1).to_string()),
                        PutOptions::new().with_mode(PutMode::Update(current.version)),
                    )
                    .await
                {
                    Ok(_) => break,
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => panic!("increment failed: {e}"),
                }
            }
        }
    };
    join_all((0..WRITERS).map(writer)).await;
    let value = store.get(&k).await.expect("get").expect("exists").value;
    assert_eq!(
        std::str::from_utf8(&value).expect("utf8"),
        (WRITERS * INCREMENTS).to_string(),
        "every increment must survive"
    );
    store.delete(&k).await.expect("cleanup");
}

/// 8 concurrent creates of one key: exactly one wins.
pub async fn concurrent_creates(store: &DynKeyValueStore, root: &KeyPath) {
    let k = key(root, "concurrent/create");
    let results = join_all((0..8u8).map(|i| {
        store.put_opts(
            &k,
            Bytes::from(vec![i]),
            PutOptions::new().with_mode(PutMode::Create),
        )
    }))
    .await;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one create wins: {results:?}");
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| r.as_ref().is_err_and(|e| e.is_conflict())),
        "losers get AlreadyExists"
    );
    let value = store.get(&k).await.expect("get").expect("exists").value;
    assert_eq!(
        value.as_ref(),
        [winners[0] as u8],
        "the winner's value is stored"
    );
    store.delete(&k).await.expect("cleanup");
}

/// Runs every function the store's capabilities allow.
pub async fn run_all(store: &DynKeyValueStore, root: &KeyPath) {
    let caps = store.capabilities();
    put_get_delete(store, root).await;
    large_values(store, root).await;
    unusual_keys(store, root).await;
    if caps.list {
        list_prefix_isolation(store, root).await;
    }
    if caps.cas {
        create_only(store, root).await;
        compare_and_swap(store, root).await;
        concurrent_writers_no_lost_update(store, root).await;
        concurrent_creates(store, root).await;
    }
    if caps.guard {
        guarded_put(store, root).await;
    }
    if caps.watch {
        watch_sees_put_and_delete(store, root).await;
        watch_no_lost_or_reordered_events(store, root).await;
        watch_prefix_isolation(store, root).await;
    }
}

/// Fault injection for the `*_faults` functions: the store handle under test (`faulty`) talks
/// to its server through something these methods control (a TCP proxy in this project's
/// tests), while a second handle (`direct`) writes without faults.
pub trait Faults: Send + Sync {
    /// Cuts every connection of the faulty handle as soon as `bytes` more bytes have come from
    /// the server on any of them (0: at once). Connections opened afterwards are not affected.
    /// Replaces an earlier arming.
    fn cut_after(&self, bytes: u64);
    /// Cancels [`Faults::cut_after`].
    fn disarm(&self);
    /// Cuts every connection and refuses new ones until [`Faults::release`].
    fn hold(&self);
    /// Lets connections through again.
    fn release(&self);
    /// Makes the server forget the history of every change made so far (compaction, trimming
    /// of the change log); the entries themselves stay.
    fn forget_history(&self) -> BoxFuture<'_, ()>;
}

/// The byte budgets after which the fault functions cut connections: at once, inside the
/// first answer, and at points further into the traffic.
const CUT_BUDGETS: [u64; 9] = [0, 1, 17, 60, 150, 400, 900, 1600, 2600];

/// How many temporary errors a watch may yield while it recovers from one fault.
const MAX_TEMPORARY_ERRORS: usize = 200;

/// The next item that is not a temporary error (those must stay few).
async fn next_after_temporary_errors(
    stream: &mut BoxStream<'static, Result<WatchEvent>>,
    what: &str,
) -> Result<WatchEvent> {
    for _ in 0..MAX_TEMPORARY_ERRORS {
        match timeout(EVENT_TIMEOUT, stream.next()).await {
            None => panic!("no watch event within {EVENT_TIMEOUT:?} while waiting for {what}"),
            Some(None) => panic!("watch stream ended while waiting for {what}"),
            Some(Some(Err(e))) if e.is_temporary() => {}
            Some(Some(item)) => return item,
        }
    }
    panic!("more than {MAX_TEMPORARY_ERRORS} temporary errors while waiting for {what}")
}

/// Reads a watch's initial entries up to `Synced`: each entry once, only temporary errors.
async fn initial_entries(
    stream: &mut BoxStream<'static, Result<WatchEvent>>,
    what: &str,
) -> std::collections::BTreeMap<KeyPath, (Bytes, Version)> {
    let mut seen = std::collections::BTreeMap::new();
    loop {
        match next_after_temporary_errors(stream, what).await {
            Ok(WatchEvent::Put {
                key,
                value,
                version,
            }) => {
                let again = seen.insert(key.clone(), (value, version));
                assert!(
                    again.is_none(),
                    "{what}: '{key}' was delivered twice before Synced"
                );
            }
            Ok(WatchEvent::Synced) => return seen,
            Ok(other) => panic!("{what}: {other:?} before Synced"),
            Err(e) => panic!("{what}: only temporary errors may interrupt a watch, got {e:?}"),
        }
    }
}

/// A change the fault functions make and expect a watch to deliver.
enum Change {
    Put(KeyPath, Bytes, Version),
    Delete(KeyPath, Version),
}

impl Change {
    async fn put(direct: &DynKeyValueStore, key: &KeyPath, value: &str) -> Self {
        let value = Bytes::from(value.to_owned());
        let v = direct
            .put_opts(key, value.clone(), PutOptions::new())
            .await
            .expect("direct put");
        Self::Put(key.clone(), value, v)
    }

    /// `after`: the version of the entry's last put (a delete's version is greater).
    async fn delete(direct: &DynKeyValueStore, key: &KeyPath, after: Version) -> Self {
        direct.delete(key).await.expect("direct delete");
        Self::Delete(key.clone(), after)
    }

    fn check(&self, got: &WatchEvent, what: &str) {
        match (self, got) {
            (Self::Put(k, value, v), WatchEvent::Put { .. }) => assert_eq!(
                got,
                &WatchEvent::Put {
                    key: k.clone(),
                    value: value.clone(),
                    version: *v
                },
                "{what}"
            ),
            (Self::Delete(k, after), WatchEvent::Delete { key, version }) => {
                assert_eq!(key, k, "{what}");
                assert!(
                    version > after,
                    "{what}: a delete's version follows the put's"
                );
            }
            (Self::Put(k, ..) | Self::Delete(k, _), other) => {
                panic!("{what}: expected the change of '{k}', got {other:?}")
            }
        }
    }
}

async fn expect_changes(
    w: &mut BoxStream<'static, Result<WatchEvent>>,
    changes: Vec<Change>,
    what: &str,
) {
    for (i, change) in changes.iter().enumerate() {
        let what = format!("{what}, change #{i}");
        match next_after_temporary_errors(w, &what).await {
            Ok(e) => change.check(&e, &what),
            Err(e) => panic!("{what}: only temporary errors, got {e:?}"),
        }
    }
}

/// A watch's initial read, cut at many points (before it starts, inside the answers, between
/// keys), still delivers every current entry exactly once and then `Synced`, with only
/// temporary errors in between: an agent starting during a blip gets the whole configuration.
pub async fn watch_initial_read_survives_faults(
    faulty: &DynKeyValueStore,
    direct: &DynKeyValueStore,
    root: &KeyPath,
    faults: &dyn Faults,
) {
    let base = key(root, "faults_initial");
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..6u8 {
        let k = key(&base, &format!("k{i}"));
        let value = Bytes::from(vec![b'a' + i; 300]);
        let v = direct
            .put_opts(&k, value.clone(), PutOptions::new())
            .await
            .expect("direct put");
        expected.insert(k, (value, v));
    }
    for budget in CUT_BUDGETS {
        faults.cut_after(budget);
        let mut w = faulty.watch(&base, WatchOptions::new().with_initial(true));
        let what = format!("the initial entries, connections cut after {budget} bytes");
        let seen = initial_entries(&mut w, &what).await;
        faults.disarm();
        assert_eq!(seen, expected, "{what}: exactly the current entries");
    }
    for k in expected.keys() {
        direct.delete(k).await.expect("cleanup");
    }
}

/// A running watch whose connections are cut (at many points of the traffic, and held off the
/// server for a while) delivers every change in order, none lost and none repeated.
pub async fn watch_resumes_after_faults(
    faulty: &DynKeyValueStore,
    direct: &DynKeyValueStore,
    root: &KeyPath,
    faults: &dyn Faults,
) {
    let base = key(root, "faults_resume");
    let mut w = faulty.watch(&base, WatchOptions::new().with_initial(true));
    let initial = initial_entries(&mut w, "the initial entries").await;
    assert!(
        initial.is_empty(),
        "a fresh root has no entries: {initial:?}"
    );
    let (a, b) = (key(&base, "a"), key(&base, "b"));
    for budget in CUT_BUDGETS {
        faults.cut_after(budget);
        let pa = Change::put(direct, &a, &format!("a after {budget}")).await;
        let pb = Change::put(direct, &b, &format!("b after {budget}")).await;
        let Change::Put(_, _, va) = pa else {
            unreachable!()
        };
        let da = Change::delete(direct, &a, va).await;
        expect_changes(
            &mut w,
            vec![pa, pb, da],
            &format!("connections cut after {budget} bytes"),
        )
        .await;
        faults.disarm();
    }
    faults.hold();
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(Change::put(direct, &a, &format!("held {i}")).await);
    }
    faults.release();
    expect_changes(
        &mut w,
        held,
        "changes made while the watch was held off the server",
    )
    .await;
    let last = Change::put(direct, &b, "last").await;
    expect_changes(
        &mut w,
        vec![last],
        "the next change, nothing repeated before it",
    )
    .await;
    for k in [&a, &b] {
        direct.delete(k).await.expect("cleanup");
    }
}

/// A watch whose store forgot changes it had not read (history compacted or trimmed while it
/// was held off the server) says so with one [`Error::WatchGap`](crate::Error::WatchGap), never
/// delivering a later change as if nothing was missed, then reads the current entries again,
/// `Synced`, and goes on with the next change.
pub async fn watch_reports_a_gap_then_the_current_entries(
    faulty: &DynKeyValueStore,
    direct: &DynKeyValueStore,
    root: &KeyPath,
    faults: &dyn Faults,
) {
    let base = key(root, "faults_gap");
    let (x, y, z) = (key(&base, "x"), key(&base, "y"), key(&base, "z"));
    Change::put(direct, &x, "x1").await;
    Change::put(direct, &y, "y1").await;
    let mut w = faulty.watch(&base, WatchOptions::new().with_initial(true));
    assert_eq!(
        initial_entries(&mut w, "the initial entries").await.len(),
        2
    );
    faults.hold();
    let Change::Put(_, _, vx) = Change::put(direct, &x, "x2").await else {
        unreachable!()
    };
    direct.delete(&y).await.expect("direct delete");
    let Change::Put(_, _, vz) = Change::put(direct, &z, "z1").await else {
        unreachable!()
    };
    faults.forget_history().await;
    faults.release();
    match next_after_temporary_errors(&mut w, "the gap").await {
        Err(e) if e.is_gap() => {}
        Err(e) => panic!("a gap is reported as Error::WatchGap, got {e:?}"),
        Ok(e) => panic!(
            "the store forgot the changes the watch missed, yet it delivered {e:?} without reporting a gap"
        ),
    }
    let current = initial_entries(&mut w, "the current entries after the gap").await;
    let expected: std::collections::BTreeMap<_, _> = [
        (x.clone(), (Bytes::from_static(b"x2"), vx)),
        (z.clone(), (Bytes::from_static(b"z1"), vz)),
    ]
    .into();
    assert_eq!(
        current, expected,
        "after a gap, exactly the current entries"
    );
    let next = Change::put(direct, &y, "y2").await;
    match next_after_temporary_errors(&mut w, "the change after the gap").await {
        Ok(e) => next.check(&e, "the change after the gap"),
        Err(e) => panic!("the change after the gap: {e}"),
    }
    for k in [&x, &y, &z] {
        direct.delete(k).await.expect("cleanup");
    }
}

/// A watch with nothing to report stays quiet for three seconds: no error from its own
/// timeouts (a blocking read must not outlast the client's response timeout).
pub async fn watch_stays_quiet_when_idle(store: &DynKeyValueStore, root: &KeyPath) {
    let base = key(root, "idle");
    let mut w = synced_watch(store, &base).await;
    if let Some(item) = timeout(Duration::from_secs(3), w.next()).await {
        panic!("an idle watch yielded {item:?}");
    }
}

/// Runs the fault functions (and [`watch_stays_quiet_when_idle`]).
pub async fn run_faults(
    faulty: &DynKeyValueStore,
    direct: &DynKeyValueStore,
    root: &KeyPath,
    faults: &dyn Faults,
) {
    watch_stays_quiet_when_idle(faulty, root).await;
    watch_initial_read_survives_faults(faulty, direct, root, faults).await;
    watch_resumes_after_faults(faulty, direct, root, faults).await;
    watch_reports_a_gap_then_the_current_entries(faulty, direct, root, faults).await;
}
