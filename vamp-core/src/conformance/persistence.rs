//! Conformance suite for [`PersistenceStore`] implementations.
//!
//! Each function uses artifact names starting with `scope` and panics when the store breaks
//! the contract. **They write and delete artifacts; give each run a fresh scope.** Not
//! covered by semver.

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::BoxStream;
use serde_json::json;

use crate::error::Result;
use crate::kv::{PutMode, Version};
use crate::model::*;
use crate::persistence::*;
use crate::rt::timeout;

use super::kv::EVENT_TIMEOUT;

const K: ArtifactKind = ArtifactKind::Template;

fn name(scope: &str, n: &str) -> String {
    format!("{scope}-{n}")
}

async fn put(
    store: &DynPersistenceStore,
    n: &str,
    content: serde_json::Value,
    mode: PutMode,
) -> Result<Version> {
    store.put_json(K, n, content, mode).await
}

/// Create, read, update at a version, overwrite, delete.
pub async fn create_read_update_delete(store: &DynPersistenceStore, scope: &str) {
    let n = name(scope, "crud");
    assert_eq!(store.read(K, &n).await.expect("read missing"), None);
    let v1 = put(
        store,
        &n,
        json!({"name": n, "definition": {"a": 1}}),
        PutMode::Create,
    )
    .await
    .expect("create");
    let r = store
        .read(K, &n)
        .await
        .expect("read")
        .expect("exists after create");
    assert_eq!(
        (r.kind, r.name.as_str(), r.version, r.content.clone()),
        (
            K,
            n.as_str(),
            v1,
            Some(json!({"name": n, "definition": {"a": 1}}))
        )
    );
    let v2 = put(
        store,
        &n,
        json!({"name": n, "definition": {"a": 2}}),
        PutMode::Update(v1),
    )
    .await
    .expect("update at the current version");
    assert!(v2 > v1, "an update gets a greater version");
    let v3 = put(
        store,
        &n,
        json!({"name": n, "definition": {"a": 3}}),
        PutMode::Overwrite,
    )
    .await
    .expect("overwrite");
    assert!(v3 > v2);
    assert_eq!(
        store
            .read(K, &n)
            .await
            .expect("read")
            .expect("exists")
            .content,
        Some(json!({"name": n, "definition": {"a": 3}}))
    );
    assert!(
        store.remove::<Template>(&n, None).await.expect("delete"),
        "delete reports that it existed"
    );
    assert_eq!(store.read(K, &n).await.expect("read deleted"), None);
    assert!(
        !store
            .remove::<Template>(&n, None)
            .await
            .expect("deleting a missing artifact succeeds"),
        "and reports that it did not exist"
    );
}

/// Create conflicts with an existing artifact; update conflicts at a stale version; a
/// versioned delete conflicts at a stale version; failures change nothing.
pub async fn conflicts(store: &DynPersistenceStore, scope: &str) {
    let n = name(scope, "conflict");
    let v1 = put(store, &n, json!({"v": 1}), PutMode::Create)
        .await
        .expect("create");
    let e = put(store, &n, json!({"v": 2}), PutMode::Create)
        .await
        .expect_err("create over an existing artifact");
    assert!(e.is_conflict(), "expected AlreadyExists, got {e}");
    let v2 = put(store, &n, json!({"v": 2}), PutMode::Update(v1))
        .await
        .expect("update");
    let e = put(store, &n, json!({"v": 3}), PutMode::Update(v1))
        .await
        .expect_err("update at a stale version");
    assert!(e.is_conflict(), "expected Conflict, got {e}");
    let e = put(store, &name(scope, "never"), json!({}), PutMode::Update(v1))
        .await
        .expect_err("update of a missing artifact");
    assert!(e.is_conflict(), "expected Conflict, got {e}");
    let e = store
        .remove::<Template>(&n, Some(v1))
        .await
        .expect_err("delete at a stale version");
    assert!(e.is_conflict(), "expected Conflict, got {e}");
    let r = store
        .read(K, &n)
        .await
        .expect("read")
        .expect("still exists");
    assert_eq!(
        (r.version, r.content),
        (v2, Some(json!({"v": 2}))),
        "failed writes change nothing"
    );
    assert!(
        store
            .remove::<Template>(&n, Some(v2))
            .await
            .expect("delete at the current version")
    );
}

/// Writing the stored content again changes nothing and returns the current version.
pub async fn equal_write_is_noop(store: &DynPersistenceStore, scope: &str) {
    let n = name(scope, "noop");
    let v1 = put(store, &n, json!({"same": true}), PutMode::Overwrite)
        .await
        .expect("put");
    let v2 = put(store, &n, json!({"same": true}), PutMode::Overwrite)
        .await
        .expect("put again");
    assert_eq!(v1, v2, "an equal write keeps the version");
    assert_eq!(
        put(store, &n, json!({"same": true}), PutMode::Update(v1))
            .await
            .expect("equal update"),
        v1
    );
    if store.capabilities().history {
        assert_eq!(
            store.history(K, &n).await.expect("history").len(),
            1,
            "an equal write adds no history"
        );
    }
    store.remove::<Template>(&n, None).await.expect("cleanup");
}

/// History keeps every version, oldest first, deletions without content.
pub async fn history_keeps_every_version(store: &DynPersistenceStore, scope: &str) {
    let n = name(scope, "history");
    let mut versions = Vec::new();
    for i in 0..5 {
        versions.push(
            put(store, &n, json!({"i": i}), PutMode::Overwrite)
                .await
                .expect("put"),
        );
    }
    store.remove::<Template>(&n, None).await.expect("delete");
    let recreated = put(store, &n, json!({"i": "again"}), PutMode::Create)
        .await
        .expect("create after delete");
    let h = store.history(K, &n).await.expect("history");
    assert_eq!(h.len(), 7, "5 writes, a deletion and a re-creation: {h:?}");
    for (i, r) in h.iter().take(5).enumerate() {
        assert_eq!(
            (r.version, r.content.clone()),
            (versions[i], Some(json!({"i": i}))),
            "history entry {i}"
        );
    }
    assert_eq!(
        h[5].content, None,
        "the deletion is a record without content"
    );
    assert!(h[5].version > versions[4]);
    assert_eq!(
        (h[6].version, h[6].content.clone()),
        (recreated, Some(json!({"i": "again"})))
    );
    assert!(
        h.windows(2).all(|w| w[0].version < w[1].version),
        "versions increase"
    );
    assert!(
        store
            .history(K, &name(scope, "never-existed"))
            .await
            .expect("history")
            .is_empty()
    );
    store.remove::<Template>(&n, None).await.expect("cleanup");
}

/// Lists are per kind, sorted by name, and paged.
pub async fn list_sorted_paged_and_kind_isolated(store: &DynPersistenceStore, scope: &str) {
    let names: Vec<String> = ["c", "a", "b", "e", "d"]
        .iter()
        .map(|n| name(scope, &format!("list-{n}")))
        .collect();
    for n in &names {
        put(store, n, json!({"n": n}), PutMode::Create)
            .await
            .expect("create");
    }
    store
        .put_json(
            ArtifactKind::Condition,
            &name(scope, "list-a"),
            json!({"other": "kind"}),
            PutMode::Create,
        )
        .await
        .expect("create in another kind");
    let mine = |records: Vec<ArtifactRecord>| -> Vec<String> {
        records
            .into_iter()
            .map(|r| r.name)
            .filter(|n| n.starts_with(&name(scope, "list-")))
            .collect()
    };
    let all = mine(store.list(K, ListOptions::all()).await.expect("list"));
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(all, sorted, "list is sorted by name and has only its kind");
    let full = store.list(K, ListOptions::all()).await.expect("list");
    let start = full
        .iter()
        .position(|r| r.name == sorted[0])
        .expect("first is listed");
    let page = store
        .list(K, ListOptions::page(start + 1, 2))
        .await
        .expect("page");
    assert_eq!(
        page.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        sorted[1..3].to_vec(),
        "offset and limit"
    );
    assert_eq!(
        mine(
            store
                .list(ArtifactKind::Condition, ListOptions::all())
                .await
                .expect("list")
        ),
        vec![name(scope, "list-a")]
    );
    for n in &names {
        store.remove::<Template>(n, None).await.expect("cleanup");
    }
    store
        .write(vec![ArtifactWrite::delete(
            ArtifactKind::Condition,
            name(scope, "list-a"),
            None,
        )])
        .await
        .expect("cleanup");
}

/// A [`WriteOp::Check`] lets its batch apply only while the checked artifact is at the
/// expected version (or absent, as expected), writes nothing itself, and returns the version.
pub async fn checks_guard_their_batch(store: &DynPersistenceStore, scope: &str) {
    let (fence, a, b) = (
        name(scope, "check-fence"),
        name(scope, "check-a"),
        name(scope, "check-b"),
    );
    let v = store
        .write(vec![
            ArtifactWrite::check(K, &fence, None),
            ArtifactWrite::put(K, &fence, json!({"token": 1}), PutMode::Create),
        ])
        .await
        .expect("a check of an absent artifact passes");
    let v1 = v[1].expect("the fence's version");
    assert_eq!(v[0], None, "an absent artifact checks as none");
    let r = store
        .write(vec![
            ArtifactWrite::check(K, &fence, Some(v1)),
            ArtifactWrite::put(K, &a, json!({"a": 1}), PutMode::Overwrite),
        ])
        .await
        .expect("the check at the current version passes");
    assert_eq!(r[0], Some(v1));
    assert!(store.read(K, &a).await.expect("read").is_some());
    assert_eq!(
        store
            .read(K, &fence)
            .await
            .expect("read")
            .expect("fence")
            .version,
        v1,
        "a check writes nothing"
    );
    put(store, &fence, json!({"token": 2}), PutMode::Update(v1))
        .await
        .expect("the fence moves on");
    let e = store
        .write(vec![
            ArtifactWrite::put(K, &b, json!({"b": 1}), PutMode::Overwrite),
            ArtifactWrite::check(K, &fence, Some(v1)),
        ])
        .await
        .expect_err("a stale check fails the batch");
    assert!(e.is_conflict(), "{e}");
    assert_eq!(
        store.read(K, &b).await.expect("read"),
        None,
        "nothing of a batch with a failed check is applied"
    );
    let e = store
        .write(vec![ArtifactWrite::check(K, &b, Some(v1))])
        .await
        .expect_err("a check of an absent artifact at a version fails");
    assert!(e.is_conflict(), "{e}");
}

/// A batch applies all or nothing.
pub async fn batch_is_atomic(store: &DynPersistenceStore, scope: &str) {
    let (a, b, c) = (
        name(scope, "batch-a"),
        name(scope, "batch-b"),
        name(scope, "batch-c"),
    );
    let vb = put(store, &b, json!({"b": 0}), PutMode::Create)
        .await
        .expect("create b");
    let failing = vec![
        ArtifactWrite::put(K, &a, json!({"a": 1}), PutMode::Create),
        ArtifactWrite::put(K, &b, json!({"b": 1}), PutMode::Update(vb)),
        ArtifactWrite::put(
            K,
            &c,
            json!({"c": 1}),
            PutMode::Update(Version(vb.0 + 1_000_000)),
        ),
    ];
    let e = store
        .write(failing)
        .await
        .expect_err("the third write conflicts");
    assert!(e.is_conflict(), "{e}");
    assert_eq!(
        store.read(K, &a).await.expect("read"),
        None,
        "the first write of a failed batch is not applied"
    );
    assert_eq!(
        store.read(K, &b).await.expect("read").expect("b").version,
        vb,
        "the second neither"
    );
    let ok = vec![
        ArtifactWrite::put(K, &a, json!({"a": 1}), PutMode::Create),
        ArtifactWrite::put(K, &b, json!({"b": 1}), PutMode::Update(vb)),
        ArtifactWrite::delete(K, &c, None),
    ];
    let versions = store.write(ok).await.expect("a valid batch applies");
    assert_eq!(versions.len(), 3);
    assert!(
        versions[0].is_some() && versions[1].is_some() && versions[2].is_none(),
        "{versions:?}"
    );
    assert!(store.read(K, &a).await.expect("read").is_some());
    assert_eq!(
        store.read(K, &b).await.expect("read").expect("b").content,
        Some(json!({"b": 1}))
    );
    for n in [&a, &b] {
        store.remove::<Template>(n, None).await.expect("cleanup");
    }
}

/// Batches larger than one statement (1,234 artifacts, a few of them 1.5 MB) apply whole and
/// in order: versions handed out one after another, an artifact written several times in one
/// batch ends with its last write, and a failing last write leaves everything as it was.
pub async fn large_batches(store: &DynPersistenceStore, scope: &str) {
    const N: usize = 1234;
    let big = "x".repeat(1_500_000);
    let content = |i: usize, round: u32| {
        if i % 300 == 7 {
            json!({"i": i, "round": round, "big": big})
        } else {
            json!({"i": i, "round": round})
        }
    };
    let names: Vec<String> = (0..N)
        .map(|i| name(scope, &format!("large-{i:04}")))
        .collect();
    let creates = names
        .iter()
        .enumerate()
        .map(|(i, n)| ArtifactWrite::put(K, n, content(i, 0), PutMode::Create))
        .collect();
    let versions = store
        .write(creates)
        .await
        .expect("a large batch of creates");
    let versions: Vec<u64> = versions
        .iter()
        .map(|v| v.expect("a created artifact has a version").0)
        .collect();
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "versions of one batch are handed out one after another"
    );
    // Per artifact: 0 updated at its version, 1 deleted, 2 deleted and created again, then
    // updated; and a name the batch creates, updates and deletes.
    let mut mixed = Vec::new();
    let transient = name(scope, "large-transient");
    mixed.push(ArtifactWrite::put(
        K,
        &transient,
        json!({}),
        PutMode::Create,
    ));
    for (i, n) in names.iter().enumerate() {
        let v = Version(versions[i]);
        match i % 3 {
            0 => mixed.push(ArtifactWrite::put(K, n, content(i, 1), PutMode::Update(v))),
            1 => mixed.push(ArtifactWrite::delete(K, n, Some(v))),
            _ => {
                mixed.push(ArtifactWrite::delete(K, n, Some(v)));
                mixed.push(ArtifactWrite::put(K, n, content(i, 2), PutMode::Create));
                mixed.push(ArtifactWrite::put(K, n, content(i, 3), PutMode::Overwrite));
            }
        }
    }
    mixed.push(ArtifactWrite::put(
        K,
        &transient,
        json!({"t": 1}),
        PutMode::Overwrite,
    ));
    mixed.push(ArtifactWrite::delete(K, &transient, None));
    let results = store.write(mixed).await.expect("a large mixed batch");
    let last = results
        .iter()
        .flatten()
        .map(|v| v.0)
        .max()
        .expect("versions");
    assert_eq!(
        store.read(K, &transient).await.expect("read"),
        None,
        "an artifact created and deleted in one batch is absent"
    );
    let listed = store.list(K, ListOptions::all()).await.expect("list");
    let listed: std::collections::HashMap<&str, &ArtifactRecord> = listed
        .iter()
        .filter(|r| r.name.starts_with(&name(scope, "large-")))
        .map(|r| (r.name.as_str(), r))
        .collect();
    for (i, n) in names.iter().enumerate() {
        let want = match i % 3 {
            0 => Some(content(i, 1)),
            1 => None,
            _ => Some(content(i, 3)),
        };
        assert_eq!(
            listed.get(n.as_str()).and_then(|r| r.content.clone()),
            want,
            "artifact {i} after the mixed batch"
        );
    }
    if store.capabilities().history {
        let history = store.history(K, &names[2]).await.expect("history");
        let contents: Vec<_> = history.iter().map(|r| r.content.clone()).collect();
        assert_eq!(
            contents,
            [
                Some(content(2, 0)),
                None,
                Some(content(2, 2)),
                Some(content(2, 3))
            ],
            "the history keeps every write of a batch, in order"
        );
    }
    // A batch whose last write conflicts changes nothing, however large.
    let mut failing: Vec<ArtifactWrite> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 1)
        .map(|(i, n)| ArtifactWrite::put(K, n, content(i, 9), PutMode::Overwrite))
        .collect();
    failing.push(ArtifactWrite::put(
        K,
        &names[1],
        json!({}),
        PutMode::Update(Version(last + 1_000)),
    ));
    let e = store
        .write(failing)
        .await
        .expect_err("the last write conflicts");
    assert!(e.is_conflict(), "{e}");
    let after = store.list(K, ListOptions::all()).await.expect("list");
    for r in after
        .iter()
        .filter(|r| r.name.starts_with(&name(scope, "large-")))
    {
        let rec = listed[r.name.as_str()];
        assert_eq!(
            (r.version, &r.content),
            (rec.version, &rec.content),
            "{} is unchanged by a failed batch",
            r.name
        );
    }
    let cleanup = names
        .iter()
        .map(|n| ArtifactWrite::delete(K, n, None))
        .collect();
    store.write(cleanup).await.expect("cleanup");
}

async fn next_change(
    stream: &mut BoxStream<'static, Result<ArtifactRecord>>,
    what: &str,
) -> ArtifactRecord {
    match timeout(EVENT_TIMEOUT, stream.next()).await {
        None => panic!("no change within {EVENT_TIMEOUT:?} while waiting for {what}"),
        Some(None) => panic!("change stream ended while waiting for {what}"),
        Some(Some(Err(e))) => panic!("change stream failed while waiting for {what}: {e}"),
        Some(Some(Ok(r))) => r,
    }
}

/// The change feed yields every applied write in order and replays from a version.
pub async fn change_feed_in_order(store: &DynPersistenceStore, scope: &str) {
    let n = name(scope, "feed");
    let v0 = put(
        store,
        &name(scope, "feed-marker"),
        json!({"m": 1}),
        PutMode::Overwrite,
    )
    .await
    .expect("marker");
    let mut feed = store.changes(ChangeOptions::new().since(v0));
    let v1 = put(store, &n, json!({"x": 1}), PutMode::Create)
        .await
        .expect("create");
    let v2 = put(store, &n, json!({"x": 2}), PutMode::Update(v1))
        .await
        .expect("update");
    put(store, &n, json!({"x": 2}), PutMode::Overwrite)
        .await
        .expect("equal write");
    store
        .remove::<Template>(&n, Some(v2))
        .await
        .expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = next_change(&mut feed, "the writes").await;
        if r.name == n {
            seen.push(r);
        }
    }
    assert_eq!(
        (seen[0].version, seen[0].content.clone()),
        (v1, Some(json!({"x": 1})))
    );
    assert_eq!(
        (seen[1].version, seen[1].content.clone()),
        (v2, Some(json!({"x": 2})))
    );
    assert_eq!(
        seen[2].content, None,
        "the deletion comes as a record without content (the equal write is not a change)"
    );
    let mut replay = store.changes(ChangeOptions::new().since(v1));
    let first = loop {
        let r = next_change(&mut replay, "the replay").await;
        if r.name == n {
            break r;
        }
    };
    assert_eq!(
        first.version, v2,
        "since(v1) replays from the write after v1"
    );
    store
        .remove::<Template>(&name(scope, "feed-marker"), None)
        .await
        .expect("cleanup");
}

/// A store that tells its head tells the version of its latest write, and a change feed from
/// it starts with the next write.
pub async fn head_is_the_latest_write(store: &DynPersistenceStore, scope: &str) {
    let n = name(scope, "head");
    let v1 = put(store, &n, json!({"h": 1}), PutMode::Overwrite)
        .await
        .expect("write");
    let Some(head) = store.head().await.expect("head") else {
        store.remove::<Template>(&n, None).await.expect("cleanup");
        return;
    };
    // Other writers of the same store (other suites' scopes) may have written since.
    assert!(
        head >= v1,
        "head {head:?} is older than the write at {v1:?}"
    );
    if store.capabilities().changes_since {
        let mut feed = store.changes(ChangeOptions::new().since(head));
        let v2 = put(store, &n, json!({"h": 2}), PutMode::Update(v1))
            .await
            .expect("update");
        let r = loop {
            let r = next_change(&mut feed, "the write after the head").await;
            if r.name == n {
                break r;
            }
        };
        assert_eq!(r.version, v2, "the feed from the head starts after it");
        assert!(store.head().await.expect("head").expect("head") >= v2);
    }
    store.remove::<Template>(&n, None).await.expect("cleanup");
}

/// 8 concurrent writers increment a counter with versioned updates; nothing is lost.
pub async fn concurrent_writers_no_lost_update(store: &DynPersistenceStore, scope: &str) {
    let n = name(scope, "counter");
    put(store, &n, json!({"count": 0}), PutMode::Create)
        .await
        .expect("create");
    let writer = |_| async {
        for _ in 0..10 {
            loop {
                let r = store.read(K, &n).await.expect("read").expect("exists");
                let count = r
                    .content
                    .as_ref()
                    .and_then(|c| c["count"].as_u64())
                    .expect("count");
                match put(
                    store,
                    &n,
                    json!({"count": count + 1}),
                    PutMode::Update(r.version),
                )
                .await
                {
                    Ok(_) => break,
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => panic!("update failed: {e}"),
                }
            }
        }
    };
    join_all((0..8).map(writer)).await;
    let r = store.read(K, &n).await.expect("read").expect("exists");
    assert_eq!(
        r.content,
        Some(json!({"count": 80})),
        "every increment survives"
    );
    store.remove::<Template>(&n, None).await.expect("cleanup");
}

/// Names the store must refuse.
pub async fn invalid_names(store: &DynPersistenceStore, _scope: &str) {
    for bad in ["", "a\nb", "tab\there"] {
        let e = store
            .put_json(K, bad, json!({}), PutMode::Overwrite)
            .await
            .expect_err("an invalid name");
        assert!(
            matches!(e, crate::error::Error::Invalid { .. }),
            "{bad:?}: {e}"
        );
    }
}

const BLUEPRINT: &str = "name: NAME\nclusters:\n  sava:\n    gateways:\n      webport:\n        routes:\n          sava:1.0.0: {weight: 90%}\n          sava:1.1.0: {weight: 10%, condition: user-agent = Chrome}\n    services:\n    - breed: {name: sava:1.0.0, deployable: magneticio/sava:1.0.0, ports: {webport: 8080/http}}\n      scale: {cpu: 0.2, memory: 64MB, instances: 2}\n    - breed: {name: sava:1.1.0, deployable: magneticio/sava:1.1.0, ports: {webport: 8080/http}}\ngateways:\n  9050: sava/webport\n";

/// Typed artifacts (blueprint, breed, gateway, scale, SLA, workflow) round-trip through the
/// store, names with `/` and `:` included.
pub async fn typed_round_trip(store: &DynPersistenceStore, scope: &str) {
    let bp: DefaultBlueprint = crate::dsl::read_str(
        &BLUEPRINT.replace("NAME", &name(scope, "bp")),
        Some(ArtifactKind::Blueprint),
    )
    .ok()
    .and_then(|mut v| match v.remove(0) {
        crate::dsl::AnyArtifact::Blueprint(b) => Some(b),
        _ => None,
    })
    .expect("the test blueprint is valid");
    let v = store.create(&bp).await.expect("create blueprint");
    let got = store
        .get::<DefaultBlueprint>(&bp.name)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (got.value, got.version),
        (bp.clone(), v),
        "a blueprint comes back equal"
    );

    let gateway: Gateway = serde_json::from_value(json!({"name": format!("{scope}/sava/webport"), "port": "8080/http", "sticky": "route", "routes": {"sava/sava/sava:1.0.0/webport": {"weight": "100%"}}})).expect("gateway");
    store.create(&gateway).await.expect("create gateway");
    assert_eq!(
        store
            .get::<Gateway>(&gateway.name)
            .await
            .expect("get")
            .expect("exists")
            .value,
        gateway
    );

    let scale: DefaultScale = serde_json::from_value(
        json!({"name": name(scope, "small"), "cpu": 0.5, "memory": "128Mi"}),
    )
    .expect("scale");
    let sla: Sla = serde_json::from_value(json!({"name": name(scope, "rt"), "type": "response_time_sliding_window", "threshold": {"upper": 1000, "lower": 100}, "window": {"interval": 60, "cooldown": 60}, "escalations": [{"type": "scale_instances", "minimum": 1, "maximum": 4, "scale_by": 1}]})).expect("sla");
    let workflow: Workflow = serde_json::from_value(json!({"name": name(scope, "wf"), "breed": "metrics", "schedule": {"time": {"period": "PT1M", "repeat": 3}}})).expect("workflow");
    store.create(&scale).await.expect("create scale");
    store.create(&sla).await.expect("create sla");
    store.create(&workflow).await.expect("create workflow");
    assert_eq!(
        store
            .get::<DefaultScale>(&scale.name)
            .await
            .expect("get")
            .expect("exists")
            .value,
        scale
    );
    assert_eq!(
        store
            .get::<Sla>(sla.name())
            .await
            .expect("get")
            .expect("exists")
            .value,
        sla
    );
    assert_eq!(
        store
            .get::<Workflow>(&workflow.name)
            .await
            .expect("get")
            .expect("exists")
            .value,
        workflow
    );
    let all: Vec<String> = store
        .list_all::<DefaultScale>()
        .await
        .expect("list")
        .into_iter()
        .map(|v| v.value.name)
        .collect();
    assert!(all.contains(&scale.name));

    store
        .remove::<DefaultBlueprint>(&bp.name, Some(v))
        .await
        .expect("cleanup");
    store
        .remove::<Gateway>(&gateway.name, None)
        .await
        .expect("cleanup");
    store
        .remove::<DefaultScale>(&scale.name, None)
        .await
        .expect("cleanup");
    store
        .remove::<Sla>(sla.name(), None)
        .await
        .expect("cleanup");
    store
        .remove::<Workflow>(&workflow.name, None)
        .await
        .expect("cleanup");
}

/// What [`cancelled_writes_leave_no_half_written_batch`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelReport {
    /// Batches whose write returned before its deadline.
    pub acknowledged: usize,
    /// Batches found stored afterwards (acknowledged ones and cancelled ones that finished).
    pub stored: usize,
    /// Batches written in all.
    pub batches: usize,
}

/// Eight concurrent writers write 200 two-artifact batches, each dropped at a pseudo-random
/// deadline of 0 to 40 ms (a request timing out, a client going away). Afterwards every batch
/// is whole or absent, every acknowledged one is there, and 16 concurrent writes succeed (the
/// pool handed back no connection in the middle of a transaction). Whether the deadlines
/// cancel some writes depends on the store's speed: the report says, and a caller testing a
/// networked store should check that some were cancelled and some were not.
pub async fn cancelled_writes_leave_no_half_written_batch(
    store: &DynPersistenceStore,
    scope: &str,
) -> CancelReport {
    const WORKERS: u64 = 8;
    const PER_WORKER: u64 = 25;
    // Deadlines must cut some writes and spare others whatever the machine's speed: they
    // range up to 40 ms, or further where an uncontended write already takes long (a loaded
    // CI machine), up to twice what the workers' writes take one after another.
    let mut slowest = std::time::Duration::ZERO;
    for k in 0..5 {
        let started = std::time::Instant::now();
        store
            .write(vec![ArtifactWrite::put(
                K,
                name(scope, &format!("cancel-calibrate{k}")),
                json!({}),
                PutMode::Create,
            )])
            .await
            .expect("an uncancelled write");
        slowest = slowest.max(started.elapsed());
    }
    let range_us = (slowest.as_micros() as u64)
        .saturating_mul(2 * WORKERS)
        .max(40_000);
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let workers = (0..WORKERS).map(|worker| {
        let acknowledged = &acknowledged;
        async move {
            // A fixed pseudo-random sequence of deadlines in the range.
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ worker;
            for i in (worker * PER_WORKER)..(worker * PER_WORKER + PER_WORKER) {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let deadline = std::time::Duration::from_micros((seed >> 33) % range_us);
                let batch = vec![
                    ArtifactWrite::put(
                        K,
                        name(scope, &format!("cancel-a{i}")),
                        json!({"i": i}),
                        PutMode::Create,
                    ),
                    ArtifactWrite::put(
                        K,
                        name(scope, &format!("cancel-b{i}")),
                        json!({"i": i}),
                        PutMode::Create,
                    ),
                ];
                if let Some(Ok(_)) = timeout(deadline, store.write(batch)).await {
                    acknowledged.lock().expect("lock").push(i);
                }
            }
        }
    });
    join_all(workers).await;
    let acked = acknowledged.into_inner().expect("lock");
    let mut stored = 0;
    for i in 0..WORKERS * PER_WORKER {
        let a = store
            .read(K, &name(scope, &format!("cancel-a{i}")))
            .await
            .expect("read a");
        let b = store
            .read(K, &name(scope, &format!("cancel-b{i}")))
            .await
            .expect("read b");
        assert_eq!(a.is_some(), b.is_some(), "batch {i} is half written");
        if acked.contains(&i) {
            assert!(a.is_some(), "acknowledged batch {i} is missing");
        }
        stored += usize::from(a.is_some());
    }
    let after = (0..16).map(|i| {
        store.write(vec![ArtifactWrite::put(
            K,
            name(scope, &format!("cancel-after{i}")),
            json!({}),
            PutMode::Create,
        )])
    });
    for r in join_all(after).await {
        if let Err(e) = r {
            panic!(
                "a write after the cancellations failed: {e}: {:?}",
                std::error::Error::source(&e)
            );
        }
    }
    CancelReport {
        acknowledged: acked.len(),
        stored,
        batches: (WORKERS * PER_WORKER) as usize,
    }
}

/// Runs every function the store's capabilities allow.
pub async fn run_all(store: &DynPersistenceStore, scope: &str) {
    let caps = store.capabilities();
    create_read_update_delete(store, scope).await;
    conflicts(store, scope).await;
    equal_write_is_noop(store, scope).await;
    list_sorted_paged_and_kind_isolated(store, scope).await;
    batch_is_atomic(store, scope).await;
    checks_guard_their_batch(store, scope).await;
    large_batches(store, scope).await;
    concurrent_writers_no_lost_update(store, scope).await;
    invalid_names(store, scope).await;
    typed_round_trip(store, scope).await;
    if caps.history {
        history_keeps_every_version(store, scope).await;
    }
    if caps.changes && caps.changes_since {
        change_feed_in_order(store, scope).await;
    }
    head_is_the_latest_write(store, scope).await;
}
