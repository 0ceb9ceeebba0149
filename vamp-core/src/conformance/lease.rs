//! Conformance suite for [`LeaseStore`] implementations.
//!
//! Each function checks one behaviour on leases named after `prefix` (ASCII letters, digits,
//! `.`, `_` or `-`) and panics with a message when the store breaks the contract. Give each
//! run a fresh prefix. Not covered by semver.
//!
//! ```
//! # futures_util::FutureExt::now_or_never(async {
//! use vamp_core::memory::InMemoryLeases;
//! vamp_core::conformance::lease::exclusive_and_renewable(&InMemoryLeases::new(), "t1").await;
//! # }).unwrap();
//! ```

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::lease::*;

/// The ttl of the leases that must not expire during a check.
pub const LONG_TTL: Duration = Duration::from_secs(60);
/// How long a lease of [`SHORT_TTL`] may take to become free again before the suite fails.
pub const EXPIRY_LIMIT: Duration = Duration::from_secs(30);
/// The ttl of the leases a check lets expire.
pub const SHORT_TTL: Duration = Duration::from_millis(1500);

async fn acquire(
    store: &DynLeaseStore,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Option<LeaseGrant> {
    store
        .try_acquire(name, holder, ttl)
        .await
        .unwrap_or_else(|e| panic!("try_acquire({name}, {holder}): {e}"))
}

/// `holder`'s grant of `name` once the lease held now has expired, waiting at most
/// [`EXPIRY_LIMIT`] (`what` says which lease, in the failure).
async fn acquire_after_expiry(
    store: &DynLeaseStore,
    name: &str,
    holder: &str,
    what: &str,
) -> LeaseGrant {
    let deadline = Instant::now() + EXPIRY_LIMIT;
    loop {
        if let Some(g) = acquire(store, name, holder, LONG_TTL).await {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "{what} still held after {EXPIRY_LIMIT:?}"
        );
        crate::rt::sleep(Duration::from_millis(100)).await;
    }
}

/// One holder at a time; the holder renews with the same token; `observe` names it.
pub async fn exclusive_and_renewable(store: &DynLeaseStore, prefix: &str) {
    let name = format!("{prefix}-exclusive");
    let a = acquire(store, &name, "holder-a", LONG_TTL)
        .await
        .expect("a free lease is acquired");
    assert_eq!(
        (a.name.as_str(), a.holder.as_str()),
        (name.as_str(), "holder-a")
    );
    assert!(
        acquire(store, &name, "holder-b", LONG_TTL).await.is_none(),
        "a held lease is refused to another holder"
    );
    let renewed = acquire(store, &name, "holder-a", LONG_TTL)
        .await
        .expect("the holder renews");
    assert_eq!(renewed.token, a.token, "a renewal keeps the token");
    let seen = store.observe(&name).await.expect("observe");
    assert_eq!(
        seen,
        Some(LeaseHolder {
            holder: "holder-a".into(),
            token: a.token
        })
    );
    assert!(
        store
            .release(&name, "holder-a", a.token)
            .await
            .expect("release")
    );
}

/// Every acquisition gets a greater token; a release by another holder or with another token
/// frees nothing.
pub async fn tokens_grow_and_release_checks_the_holder(store: &DynLeaseStore, prefix: &str) {
    let name = format!("{prefix}-tokens");
    let mut last = 0;
    for holder in ["holder-a", "holder-b", "holder-a", "holder-c"] {
        let g = acquire(store, &name, holder, LONG_TTL)
            .await
            .unwrap_or_else(|| panic!("{holder} acquires the released lease"));
        assert!(g.token > last, "token {} after {last}", g.token);
        assert!(
            !store
                .release(&name, "someone-else", g.token)
                .await
                .expect("release"),
            "another holder cannot release it"
        );
        assert!(
            !store
                .release(&name, holder, g.token + 1)
                .await
                .expect("release"),
            "another token cannot release it"
        );
        assert!(store.observe(&name).await.expect("observe").is_some());
        assert!(
            store
                .release(&name, holder, g.token)
                .await
                .expect("release")
        );
        assert_eq!(
            store.observe(&name).await.expect("observe"),
            None,
            "released"
        );
        last = g.token;
    }
}

/// A lease not renewed expires: another holder acquires it with a greater token, and the old
/// holder's renewal and release fail.
pub async fn an_unrenewed_lease_expires(store: &DynLeaseStore, prefix: &str) {
    let name = format!("{prefix}-expiry");
    let a = acquire(store, &name, "holder-a", SHORT_TTL)
        .await
        .expect("a free lease is acquired");
    let b = acquire_after_expiry(
        store,
        &name,
        "holder-b",
        &format!("a lease of {SHORT_TTL:?}"),
    )
    .await;
    assert!(b.token > a.token, "token {} after {}", b.token, a.token);
    assert!(
        acquire(store, &name, "holder-a", LONG_TTL).await.is_none(),
        "the expired holder cannot renew"
    );
    assert!(
        !store
            .release(&name, "holder-a", a.token)
            .await
            .expect("release")
    );
    assert_eq!(
        store
            .observe(&name)
            .await
            .expect("observe")
            .map(|h| h.holder),
        Some("holder-b".into())
    );
    assert!(
        store
            .release(&name, "holder-b", b.token)
            .await
            .expect("release")
    );
}

/// Holders racing for a free lease: exactly one gets it.
pub async fn racing_holders_one_wins(store: &DynLeaseStore, prefix: &str) {
    let name = format!("{prefix}-race");
    let holders: Vec<String> = (0..8).map(|i| format!("holder-{i}")).collect();
    let results = join_all(
        holders
            .iter()
            .map(|h| store.try_acquire(&name, h, LONG_TTL)),
    )
    .await;
    let winners: Vec<LeaseGrant> = results
        .into_iter()
        .filter_map(|r| r.expect("try_acquire"))
        .collect();
    assert_eq!(winners.len(), 1, "one winner: {winners:?}");
    let w = &winners[0];
    assert_eq!(
        store
            .observe(&name)
            .await
            .expect("observe")
            .map(|h| h.holder),
        Some(w.holder.clone())
    );
    assert!(
        store
            .release(&name, &w.holder, w.token)
            .await
            .expect("release")
    );
}

/// Names, holders and ttls out of range are [`crate::Error::Invalid`], not a panic or a
/// stored lease.
pub async fn invalid_arguments_are_refused(store: &DynLeaseStore, prefix: &str) {
    let name = format!("{prefix}-invalid");
    for (n, h, ttl) in [
        ("", "holder", LONG_TTL),
        ("a/b", "holder", LONG_TTL),
        (name.as_str(), "", LONG_TTL),
        (name.as_str(), "a b", LONG_TTL),
        (name.as_str(), "holder", Duration::ZERO),
    ] {
        let r = store.try_acquire(n, h, ttl).await;
        assert!(
            matches!(r, Err(crate::Error::Invalid { .. })),
            "({n:?}, {h:?}, {ttl:?}): {r:?}"
        );
    }
    assert_eq!(store.observe(&name).await.expect("observe"), None);
}

/// Through a handle whose connections fail (`faulty`, with `faults` to inject them; `direct`
/// reaches the same store cleanly): a call cut at any point is an error or a true answer,
/// never a grant the store does not hold; a leader cut off cannot renew, and its lease passes
/// to another holder with a greater token once it expires; the cut-off holder, back, finds
/// it taken.
pub async fn leases_survive_faults(
    faulty: &DynLeaseStore,
    direct: &DynLeaseStore,
    prefix: &str,
    faults: &dyn crate::conformance::kv::Faults,
) {
    let name = format!("{prefix}-faults");
    for budget in [0u64, 1, 17, 60, 150, 400, 900] {
        faults.cut_after(budget);
        let r = faulty.try_acquire(&name, "holder-a", LONG_TTL).await;
        faults.disarm();
        let seen = direct.observe(&name).await.expect("observe");
        match r {
            Ok(Some(g)) => assert_eq!(
                seen,
                Some(LeaseHolder {
                    holder: "holder-a".into(),
                    token: g.token
                }),
                "a grant answered through a cut at {budget} bytes is held"
            ),
            Ok(None) => panic!("nobody else holds {name}, yet holder-a was refused"),
            Err(e) => assert!(
                seen.as_ref().is_none_or(|h| h.holder == "holder-a"),
                "a failed acquisition ({e}) made {seen:?} the holder"
            ),
        }
        if let Some(h) = seen {
            assert!(
                direct
                    .release(&name, &h.holder, h.token)
                    .await
                    .expect("release")
            );
        }
    }
    // The leader is cut off: it cannot renew; the lease expires and passes on.
    let a = loop {
        match faulty.try_acquire(&name, "holder-a", SHORT_TTL).await {
            Ok(Some(a)) => break a,
            Ok(None) => panic!("nobody else holds {name}"),
            Err(_) => crate::rt::sleep(Duration::from_millis(100)).await,
        }
    };
    faults.hold();
    assert!(
        faulty
            .try_acquire(&name, "holder-a", SHORT_TTL)
            .await
            .is_err(),
        "a renewal through a held connection fails"
    );
    let b = acquire_after_expiry(direct, &name, "holder-b", "the cut-off lease").await;
    assert!(b.token > a.token);
    faults.release();
    let deadline = Instant::now() + EXPIRY_LIMIT;
    loop {
        match faulty.try_acquire(&name, "holder-a", LONG_TTL).await {
            Ok(r) => {
                assert!(r.is_none(), "the old holder, back, finds the lease taken");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never reconnected: {e}"),
        }
        crate::rt::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        direct
            .release(&name, "holder-b", b.token)
            .await
            .expect("release")
    );
}

/// Every check, one after the other.
pub async fn run_all(store: &DynLeaseStore, prefix: &str) {
    exclusive_and_renewable(store, prefix).await;
    tokens_grow_and_release_checks_the_holder(store, prefix).await;
    an_unrenewed_lease_expires(store, prefix).await;
    racing_holders_one_wins(store, prefix).await;
    invalid_arguments_are_refused(store, prefix).await;
}
