//! The Consul key-value store. Consul cannot run on this project's machines, so the suite runs
//! against an in-process **double** of Consul's KV HTTP API (`consul_double`, built from
//! Consul's API documentation); these are double tests, not integration tests. Against a real
//! Consul agent, set `VAMP_TEST_CONSUL_ADDR=http://host:8500` (and `VAMP_TEST_CONSUL_TOKEN`
//! when ACLs are on) and run the ignored `real_consul_passes_the_kv_conformance_suite` with
//! `--ignored`; scripts/test.sh does when the variable is set.
#![cfg(feature = "kv-consul")]

mod consul_double;
mod fault_proxy;

use std::sync::Arc;
use std::time::Duration;

use consul_double::ConsulDouble;
use fault_proxy::FaultProxy;
use futures_util::StreamExt;
use vamp_backends::kv::consul::{ConsulKv, ConsulKvOptions, LOG_KEEP, VALUE_MAX_BYTES};
use vamp_core::kv::{
    DynKeyValueStore, KeyPath, KeyValueStore, KeyValueStoreExt, PutOptions, WatchEvent,
    WatchOptions,
};

fn options(double: &ConsulDouble) -> ConsulKvOptions {
    ConsulKvOptions::new(double.address()).with_block_wait(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_double_passes_the_kv_conformance_suite() {
    let double = ConsulDouble::start().await;
    let kv = ConsulKv::connect(options(&double)).await.unwrap();
    vamp_core::conformance::kv::run_all(&kv, &KeyPath::parse("/direct").unwrap()).await;
    let dynamic: Arc<DynKeyValueStore> = Arc::new(kv);
    vamp_core::conformance::kv::run_all(&dynamic, &KeyPath::parse("/arc").unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "no Consul can run here: set VAMP_TEST_CONSUL_ADDR and run with --ignored (scripts/test.sh does)"]
async fn real_consul_passes_the_kv_conformance_suite() {
    let address = std::env::var("VAMP_TEST_CONSUL_ADDR")
        .expect("VAMP_TEST_CONSUL_ADDR=http://host:8500 names the Consul agent to test against");
    let mut options = ConsulKvOptions::new(address.clone())
        .with_root(format!("vamp-test-{}", std::process::id()));
    if let Ok(token) = std::env::var("VAMP_TEST_CONSUL_TOKEN") {
        options = options.with_token(token);
    }
    let kv = ConsulKv::connect(options.clone())
        .await
        .unwrap_or_else(|e| panic!("Consul at {address}: {e}"));
    vamp_core::conformance::kv::run_all(&kv, &KeyPath::parse("/direct").unwrap()).await;
    // The fault functions, through a proxy in front of the agent.
    let trimmer = kv.clone();
    let target = address
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = FaultProxy::start(
        target,
        Box::new(move || {
            let trimmer = trimmer.clone();
            Box::pin(async move { trimmer.trim_log(0).await.unwrap() })
        }),
    )
    .await;
    let mut through = options;
    through.address = format!("http://127.0.0.1:{}", proxy.port);
    let faulty = ConsulKv::connect(through).await.unwrap();
    vamp_core::conformance::kv::run_faults(
        &faulty,
        &kv,
        &KeyPath::parse("/faults").unwrap(),
        &proxy,
    )
    .await;
}

/// The documented layout: entries under `R/data`, a change record per write under `R/log`,
/// `R/rev` touched by every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_and_change_records_live_where_the_docs_say() {
    let double = ConsulDouble::start().await;
    let kv = ConsulKv::connect(options(&double).with_root("vamp/kv"))
        .await
        .unwrap();
    let key = KeyPath::parse("/vamp/default/gateways/haproxy/1.7/configuration").unwrap();
    kv.put(&key, "frontend a".into()).await.unwrap();
    kv.put(&key, "frontend b".into()).await.unwrap();
    let keys = double.keys();
    assert!(
        keys.contains(&"vamp/kv/data/vamp/default/gateways/haproxy/1.7/configuration".to_owned()),
        "{keys:?}"
    );
    assert!(keys.contains(&"vamp/kv/rev".to_owned()), "{keys:?}");
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("vamp/kv/log/"))
            .count(),
        2,
        "one change record per write: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_url_selection_with_a_prefix_and_a_token() {
    let double = ConsulDouble::start_with(Some("s3cret")).await;
    let url = format!(
        "consul://{}/vamp/selection?token=s3cret",
        double.address().trim_start_matches("http://")
    );
    let kv = vamp_backends::kv::KvBackendConfig::from_url(&url)
        .unwrap()
        .build()
        .await
        .unwrap();
    vamp_core::conformance::kv::put_get_delete(&kv, &KeyPath::parse("/t").unwrap()).await;
    kv.put(&KeyPath::parse("/x").unwrap(), "1".into())
        .await
        .unwrap();
    assert!(
        double
            .keys()
            .contains(&"vamp-kv/data/vamp/selection/x".to_owned()),
        "the URL's path is the key prefix: {:?}",
        double.keys()
    );

    // Without the token Consul answers 403: a configuration error, not a temporary one.
    let err = ConsulKv::connect(ConsulKvOptions::new(double.address()))
        .await
        .unwrap_err();
    assert!(!err.is_temporary(), "{err:?}");
    assert!(
        format!("{err:?}").contains("403"),
        "the error says what Consul answered: {err:?}"
    );
}

#[tokio::test]
async fn bad_addresses_are_configuration_errors() {
    for address in ["https://h:8500", "h:8500", "http://", "http://h:8500/x"] {
        let err = ConsulKv::connect(ConsulKvOptions::new(address))
            .await
            .unwrap_err();
        assert!(
            matches!(err, vamp_core::Error::InvalidConfig { .. }),
            "{address}: {err:?}"
        );
    }
    // Nothing listens on port 1: temporary.
    let err = ConsulKv::connect(ConsulKvOptions::new("http://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_the_limit_are_refused_and_nothing_is_written() {
    let double = ConsulDouble::start().await;
    let kv = ConsulKv::connect(options(&double)).await.unwrap();
    let key = KeyPath::parse("/big").unwrap();
    kv.put(&key, "small".into()).await.unwrap();
    let err = kv
        .put(&key, vec![7u8; VALUE_MAX_BYTES + 1].into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, vamp_core::Error::Invalid { what: "value", .. }),
        "{err:?}"
    );
    assert_eq!(kv.get_string(&key).await.unwrap().as_deref(), Some("small"));
    // The largest value fits in Consul's default transaction limit.
    kv.put(&key, vec![0xffu8; VALUE_MAX_BYTES].into())
        .await
        .unwrap();
    assert_eq!(
        kv.get(&key).await.unwrap().unwrap().value.len(),
        VALUE_MAX_BYTES
    );
}

/// Two store handles (two processes, in effect) incrementing one counter with
/// compare-and-swap: Consul's `cas` makes every lost race a conflict, never a lost update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_compare_and_swap_lose_no_update() {
    let double = ConsulDouble::start().await;
    let a = ConsulKv::connect(options(&double)).await.unwrap();
    let b = ConsulKv::connect(options(&double)).await.unwrap();
    let key = KeyPath::parse("/counter").unwrap();
    a.put(&key, "0".into()).await.unwrap();
    let increment = |kv: ConsulKv, key: KeyPath| async move {
        for _ in 0..40 {
            loop {
                let cur = kv.get(&key).await.unwrap().unwrap();
                let n: u32 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                match kv
                    .compare_and_swap(&key, (n + 1).to_string().into(), cur.version)
                    .await
                {
                    Ok(_) => break,
                    Err(e) if e.is_conflict() => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
    };
    tokio::join!(
        increment(a.clone(), key.clone()),
        increment(b.clone(), key.clone())
    );
    assert_eq!(a.get_string(&key).await.unwrap().as_deref(), Some("80"));
}

/// Writers trim the change log to the newest records; a watch that fell behind the trimmed
/// part says so with an error item instead of silently skipping changes, and a watch that kept
/// up sees every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_trimmed_and_a_watch_left_behind_says_so() {
    let double = ConsulDouble::start().await;
    let kv = ConsulKv::connect(options(&double)).await.unwrap();
    let prefix = KeyPath::parse("/trim").unwrap();
    let key = KeyPath::parse("/trim/k").unwrap();
    let mut behind = kv.watch(&prefix, WatchOptions::new().with_initial(true));
    assert_eq!(behind.next().await.unwrap().unwrap(), WatchEvent::Synced);
    let mut current = kv.watch(&prefix, WatchOptions::new().with_initial(true));
    assert_eq!(current.next().await.unwrap().unwrap(), WatchEvent::Synced);

    let writes = LOG_KEEP + 300;
    let mut seen = 0;
    for i in 0..writes {
        kv.put_opts(&key, i.to_string().into(), PutOptions::new())
            .await
            .unwrap();
        // Keep `current` up to date as the writes go.
        if i % 100 == 99 {
            while seen <= i {
                match current.next().await.unwrap().unwrap() {
                    WatchEvent::Put { value, .. } => {
                        assert_eq!(value, seen.to_string().as_bytes());
                        seen += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }
    let records = double
        .keys()
        .iter()
        .filter(|k| k.starts_with("vamp-kv/log/"))
        .count();
    assert!(
        records <= LOG_KEEP + 100,
        "the log is trimmed: {records} records"
    );
    match tokio::time::timeout(Duration::from_secs(10), behind.next())
        .await
        .unwrap()
    {
        Some(Err(e)) => {
            assert!(!e.is_temporary(), "a gap is not temporary: {e:?}");
            assert!(format!("{e:?}").contains("trimmed"), "{e:?}");
        }
        other => panic!("a watch left behind must report the gap, got {other:?}"),
    }
}

/// Operations fail with a temporary error while Consul is away; afterwards the same store
/// works again, and a watch opened before resumes: writes made by another client after the
/// restart all arrive, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reconnects_and_the_watch_resumes() {
    let mut double = ConsulDouble::start().await;
    let kv = ConsulKv::connect(options(&double)).await.unwrap();
    let key = KeyPath::parse("/reconnect/k").unwrap();
    let mut watch = kv.watch(
        &KeyPath::parse("/reconnect").unwrap(),
        WatchOptions::new().with_initial(true),
    );
    assert_eq!(watch.next().await.unwrap().unwrap(), WatchEvent::Synced);
    let v1 = kv.put(&key, "before".into()).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
    {
        Some(Ok(WatchEvent::Put { version, .. })) => assert_eq!(version, v1),
        other => panic!("{other:?}"),
    }

    double.stop().await;
    let down = kv
        .put(&key, "while down".into())
        .await
        .expect_err("Consul is away");
    assert!(down.is_temporary(), "{down:?}");
    // The watch notices too (a temporary error item), and keeps going.
    match tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
    {
        Some(Err(e)) => assert!(e.is_temporary(), "{e:?}"),
        other => panic!("expected a temporary error while Consul is away, got {other:?}"),
    }

    double.restart().await;
    let other = ConsulKv::connect(options(&double)).await.unwrap();
    let mut written = Vec::new();
    for value in ["a", "b", "c"] {
        written.push((
            bytes::Bytes::from(value),
            other.put(&key, value.into()).await.unwrap(),
        ));
    }
    assert_eq!(kv.get_string(&key).await.unwrap().as_deref(), Some("c"));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("the watch resumes")
        {
            Some(Ok(WatchEvent::Put { value, version, .. })) => seen.push((value, version)),
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(e)) => assert!(e.is_temporary(), "{e:?}"),
            None => panic!("the watch ended"),
        }
    }
    assert_eq!(seen, written, "every write, in order, none lost");
}

/// The KV conformance suite's fault functions, through a proxy in front of the double:
/// connections cut at many points of the initial read and of a running watch, held off, and
/// the change log trimmed behind a watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_watches_survive_injected_faults() {
    let double = ConsulDouble::start().await;
    let direct = ConsulKv::connect(options(&double)).await.unwrap();
    let trimmer = direct.clone();
    let target = double
        .address()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = FaultProxy::start(
        target,
        Box::new(move || {
            let trimmer = trimmer.clone();
            Box::pin(async move { trimmer.trim_log(0).await.unwrap() })
        }),
    )
    .await;
    let faulty = ConsulKv::connect(
        ConsulKvOptions::new(format!("http://127.0.0.1:{}", proxy.port))
            .with_block_wait(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    vamp_core::conformance::kv::run_faults(
        &faulty,
        &direct,
        &KeyPath::parse("/faults").unwrap(),
        &proxy,
    )
    .await;
}

/// The lease conformance suite on the Consul double's sessions, directly and through the
/// fault proxy (the expiry checks wait for Consul's shortest session TTL, 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_double_passes_the_lease_conformance_suite_including_faults() {
    let double = ConsulDouble::start().await;
    let kv = ConsulKv::connect(options(&double)).await.unwrap();
    vamp_core::conformance::lease::run_all(&kv, "consul").await;
    let target = double.address().trim_start_matches("http://").to_owned();
    let proxy = FaultProxy::start(target, Box::new(|| Box::pin(async {}))).await;
    let mut through = options(&double);
    through.address = format!("http://127.0.0.1:{}", proxy.port);
    let faulty = ConsulKv::connect(through).await.unwrap();
    vamp_core::conformance::lease::leases_survive_faults(&faulty, &kv, "consul", &proxy).await;
}

/// The same on a real Consul agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "no Consul can run here: set VAMP_TEST_CONSUL_ADDR and run with --ignored (scripts/test.sh does)"]
async fn real_consul_passes_the_lease_conformance_suite() {
    let address = std::env::var("VAMP_TEST_CONSUL_ADDR")
        .expect("VAMP_TEST_CONSUL_ADDR=http://host:8500 names the Consul agent to test against");
    let mut options = ConsulKvOptions::new(address.clone())
        .with_root(format!("vamp-test-leases-{}", std::process::id()));
    if let Ok(token) = std::env::var("VAMP_TEST_CONSUL_TOKEN") {
        options = options.with_token(token);
    }
    let kv = ConsulKv::connect(options)
        .await
        .unwrap_or_else(|e| panic!("Consul at {address}: {e}"));
    vamp_core::conformance::lease::run_all(&kv, "consul").await;
}
