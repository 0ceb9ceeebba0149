//! Leader election and fencing among replicas, on the in-memory lease store with an injected
//! clock: a leader paused past its lease cannot write once another replica took over.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vamp_core::Error;
use vamp_core::kv::PutMode;
use vamp_core::layers::Fenced;
use vamp_core::memory::{InMemoryLeases, InMemoryPersistence};
use vamp_core::model::ArtifactKind;
use vamp_core::ops::controller::ManualClock;
use vamp_core::ops::leader::{ElectionOptions, Elector};
use vamp_core::persistence::{ArtifactWrite, PersistenceStore};

fn write(name: &str) -> Vec<ArtifactWrite> {
    vec![ArtifactWrite::put(
        ArtifactKind::Breed,
        name,
        json!({ "name": name, "deployable": "x" }),
        PutMode::Overwrite,
    )]
}

#[tokio::test]
async fn a_paused_leader_cannot_write_after_another_took_over() {
    let clock = ManualClock::new(1_000_000);
    let leases = Arc::new(InMemoryLeases::with_clock(Arc::new(clock.clone())));
    let store = Arc::new(InMemoryPersistence::new());
    let ttl = Duration::from_secs(10);
    let elector = |id: &str| {
        Elector::new(
            Arc::clone(&leases) as Arc<_>,
            Arc::clone(&store) as Arc<_>,
            ElectionOptions::new("vamp-default", id).with_ttl(ttl),
        )
    };
    let (a, b) = (elector("replica-a"), elector("replica-b"));
    let a_writes = Fenced::new(Arc::clone(&store), a.fence());
    let b_writes = Fenced::new(Arc::clone(&store), b.fence());

    let la = a.tick().await.unwrap();
    assert!(la.leader);
    assert!(!b.tick().await.unwrap().leader);
    assert!(
        matches!(
            b_writes.write(write("by-b")).await,
            Err(Error::Fenced { .. })
        ),
        "a follower's loops cannot write"
    );
    a_writes.write(write("by-a")).await.unwrap();

    // A pauses (no renewal) past its lease; B takes over. A's own clock has not moved: it
    // still believes it leads, and its next write is what fencing must stop.
    clock.advance(ttl + Duration::from_millis(1));
    let lb = b.tick().await.unwrap();
    assert!(lb.leader);
    assert!(lb.token > la.token, "{lb:?} after {la:?}");
    assert!(a.is_leader(), "the paused leader has not noticed");
    let refused = a_writes.write(write("late")).await;
    assert!(matches!(refused, Err(Error::Fenced { .. })), "{refused:?}");
    assert!(
        store
            .read(ArtifactKind::Breed, "late")
            .await
            .unwrap()
            .is_none(),
        "nothing of the late write is stored"
    );
    assert!(
        !a.is_leader(),
        "a refused write ends the old leader's leadership"
    );
    b_writes.write(write("by-new-leader")).await.unwrap();

    // Back, A finds B leading; when B resigns, A takes over with a greater token.
    let seen = a.tick().await.unwrap();
    assert_eq!(
        (seen.leader, seen.leader_id.as_deref()),
        (false, Some("replica-b"))
    );
    b.resign().await.unwrap();
    let again = a.tick().await.unwrap();
    assert!(again.leader && again.token > lb.token, "{again:?}");
    a_writes.write(write("by-a-again")).await.unwrap();
    assert!(matches!(
        b_writes.write(write("by-b")).await,
        Err(Error::Fenced { .. })
    ));
}

/// A stale acquisition (a token not newer than the fence's) does not take the fence.
#[tokio::test]
async fn the_fence_never_goes_back_to_an_older_token() {
    let store = InMemoryPersistence::new();
    let new = vamp_core::layers::Fence::new();
    new.take(&store, 7, "replica-b").await.unwrap();
    let old = vamp_core::layers::Fence::new();
    let e = old.take(&store, 6, "replica-a").await.unwrap_err();
    assert!(matches!(e, Error::Fenced { .. }), "{e}");
    assert!(old.held().is_none());
}

/// The gateway side's key-value writes are fenced too: once a new leader has claimed the
/// fence key (as it takes over), a paused old leader that still believes it leads has its
/// writes refused by the store, and the value stays the new leader's.
#[tokio::test]
async fn a_paused_leaders_key_value_writes_are_refused() {
    use vamp_core::kv::{KeyPath, KeyValueStore, KeyValueStoreExt, keys};
    use vamp_core::layers::FencedKv;
    use vamp_core::memory::InMemoryKv;
    let clock = ManualClock::new(1_000_000);
    let leases = Arc::new(InMemoryLeases::with_clock(Arc::new(clock.clone())));
    let store = Arc::new(InMemoryPersistence::new());
    let kv = Arc::new(InMemoryKv::new());
    let ttl = Duration::from_secs(10);
    let elector = |id: &str| {
        Elector::new(
            Arc::clone(&leases) as Arc<_>,
            Arc::clone(&store) as Arc<_>,
            ElectionOptions::new("vamp-default", id).with_ttl(ttl),
        )
    };
    let (a, b) = (elector("replica-a"), elector("replica-b"));
    let fence_key = keys::fence("default").unwrap();
    let a_kv = FencedKv::new(Arc::clone(&kv), a.fence(), fence_key.clone(), "replica-a");
    let b_kv = FencedKv::new(Arc::clone(&kv), b.fence(), fence_key.clone(), "replica-b");
    let key = KeyPath::parse("/vamp/default/gateways").unwrap();

    assert!(a.tick().await.unwrap().leader);
    assert!(!b.tick().await.unwrap().leader);
    assert!(matches!(
        b_kv.put(&key, "[b]".into()).await,
        Err(Error::Fenced { .. })
    ));
    a_kv.put(&key, "[a]".into()).await.unwrap();

    // A pauses past its lease; B takes over and claims the fence key before writing.
    clock.advance(ttl + Duration::from_millis(1));
    let lb = b.tick().await.unwrap();
    assert!(
        lb.leader && a.is_leader(),
        "B leads; paused A has not noticed"
    );
    b_kv.claim().await.unwrap();
    let refused = a_kv.put(&key, "[late a]".into()).await;
    assert!(matches!(refused, Err(Error::Fenced { .. })), "{refused:?}");
    assert_eq!(kv.get_string(&key).await.unwrap().as_deref(), Some("[a]"));
    b_kv.put(&key, "[b]".into()).await.unwrap();
    let fence: serde_json::Value =
        serde_json::from_slice(&kv.get(&fence_key).await.unwrap().unwrap().value).unwrap();
    assert_eq!(fence, json!({"token": lb.token, "holder": "replica-b"}));
    // A stale leader cannot take the fence key back with its older token.
    assert!(matches!(a_kv.claim().await, Err(Error::Fenced { .. })));
    assert_eq!(kv.get_string(&key).await.unwrap().as_deref(), Some("[b]"));
}

/// A replica restarted before its lease expired, with the same replica id (a container
/// restarted in its pod): the lease store renews the lease for that holder with its earlier
/// token, which the fence already names. The new process gives that lease up and takes it
/// anew with a greater token, instead of holding a leadership that can never write (and that
/// no other replica can take).
#[tokio::test]
async fn a_replica_restarted_under_its_own_lease_leads_again_with_a_new_token() {
    let clock = ManualClock::new(1_000_000);
    let leases = Arc::new(InMemoryLeases::with_clock(Arc::new(clock.clone())));
    let store = Arc::new(InMemoryPersistence::new());
    let ttl = Duration::from_secs(10);
    let elector = || {
        Elector::new(
            Arc::clone(&leases) as Arc<_>,
            Arc::clone(&store) as Arc<_>,
            ElectionOptions::new("vamp-default", "replica-a").with_ttl(ttl),
        )
    };
    let first = elector();
    let before = first.tick().await.unwrap();
    assert!(before.leader);
    // Killed: no resignation; restarted at once, within the lease.
    drop(first);
    let again = elector();
    let writes = Fenced::new(Arc::clone(&store), again.fence());
    let mut rounds = 0;
    let now = loop {
        rounds += 1;
        assert!(rounds <= 3, "the restarted replica never leads");
        if let Ok(l) = again.tick().await
            && l.leader
        {
            break l;
        }
    };
    assert!(now.token > before.token, "{now:?} after {before:?}");
    writes.write(write("after-restart")).await.unwrap();
}
