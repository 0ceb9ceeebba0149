//! The etcd key-value store against a real etcd (`VAMP_ETCD_ENDPOINTS`, comma-separated, set by
//! scripts/test.sh, which starts a private server), and a reconnect test that starts, stops and
//! restarts an etcd of its own (`etcd` on the PATH). Required with CI=true or
//! VAMP_TEST_INTEGRATION=1.
#![cfg(feature = "kv-etcd")]

use std::sync::Arc;
use std::time::Duration;

mod fault_proxy;

use fault_proxy::FaultProxy;
use futures_util::StreamExt;
use vamp_backends::kv::etcd::EtcdKv;
use vamp_core::kv::{
    DynKeyValueStore, KeyPath, KeyValueStore, KeyValueStoreExt, WatchEvent, WatchOptions,
};

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("VAMP_TEST_INTEGRATION").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn endpoints() -> Option<Vec<String>> {
    let Ok(endpoints) = std::env::var("VAMP_ETCD_ENDPOINTS") else {
        assert!(
            !required(),
            "VAMP_ETCD_ENDPOINTS is required for integration tests (scripts/test.sh sets it)"
        );
        eprintln!("SKIPPED: set VAMP_ETCD_ENDPOINTS to run the etcd tests");
        return None;
    };
    Some(endpoints.split(',').map(str::to_owned).collect())
}

fn root(name: &str) -> KeyPath {
    KeyPath::parse(&format!("/etcd-test/{}/{name}", std::process::id())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_kv_conformance_suite() {
    let Some(endpoints) = endpoints() else { return };
    let kv = EtcdKv::connect(&endpoints, None)
        .await
        .unwrap_or_else(|e| panic!("etcd at {endpoints:?}: {e}"));
    vamp_core::conformance::kv::run_all(&kv, &root("direct")).await;
    let dynamic: Arc<DynKeyValueStore> = Arc::new(kv);
    vamp_core::conformance::kv::run_all(&dynamic, &root("arc")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_through_the_url_selection_with_a_prefix() {
    let Some(endpoints) = endpoints() else { return };
    let hosts: Vec<&str> = endpoints
        .iter()
        .map(|e| e.trim_start_matches("http://"))
        .collect();
    let url = format!(
        "etcd://{}/vamp/selection-{}",
        hosts.join(","),
        std::process::id()
    );
    let kv = vamp_backends::kv::KvBackendConfig::from_url(&url)
        .unwrap()
        .build()
        .await
        .unwrap();
    let t = KeyPath::parse("/t").unwrap();
    vamp_core::conformance::kv::put_get_delete(&kv, &t).await;
    vamp_core::conformance::kv::watch_sees_put_and_delete(&kv, &t).await;
    // The prefix is really there in etcd.
    let raw = EtcdKv::connect(&endpoints, None).await.unwrap();
    let key = KeyPath::parse("/gateways").unwrap();
    kv.put(&key, "[]".into()).await.unwrap();
    let stored =
        KeyPath::parse(&format!("/vamp/selection-{}/gateways", std::process::id())).unwrap();
    assert_eq!(
        raw.get_string(&stored).await.unwrap().as_deref(),
        Some("[]")
    );
    raw.delete(&stored).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_cluster_is_a_temporary_error() {
    let port = free_port();
    let e = EtcdKv::connect(&[format!("http://127.0.0.1:{port}")], None)
        .await
        .expect_err("nothing listens there");
    assert!(e.is_temporary(), "{e:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An etcd of the test's own, so it can be stopped and started again (same data directory).
struct OwnEtcd {
    child: std::process::Child,
}

impl OwnEtcd {
    fn start(port: u16, peer: u16, dir: &std::path::Path) -> Self {
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let child = std::process::Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Operations fail with a temporary error while etcd is down; afterwards the same store works
/// again, and a watch opened before the outage resumes from the revision after its last event:
/// writes made by another client after the restart, before the watch reconnects, all arrive
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_reconnects_and_the_watch_resumes() {
    if std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!required(), "etcd is required for the reconnect test");
        eprintln!("SKIPPED: etcd is not on the PATH");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (port, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut server = OwnEtcd::start(port, peer, dir.path());
    let kv = EtcdKv::connect(&[&endpoint], None).await.unwrap();
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

    server.stop();
    let down = kv
        .put(&key, "while down".into())
        .await
        .expect_err("etcd is down");
    assert!(
        down.is_temporary(),
        "a down server is a temporary error: {down:?}"
    );
    // The watch notices the outage (a temporary error) while it is down.
    let outage = tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("the watch reports the outage")
        .unwrap()
        .expect_err("an error item");
    assert!(outage.is_temporary(), "{outage:?}");

    let _server = OwnEtcd::start(port, peer, dir.path());
    // Another client writes three times before the watch is polled again.
    let other = EtcdKv::connect(&[&endpoint], None).await.unwrap();
    let mut written = Vec::new();
    for value in ["a", "b", "c"] {
        written.push((
            bytes::Bytes::from(value),
            other.put(&key, value.into()).await.unwrap(),
        ));
    }
    // The first store reconnects by itself.
    let mut v = None;
    for _ in 0..100 {
        match kv.get_string(&key).await {
            Ok(got) => {
                v = got;
                break;
            }
            Err(e) if e.is_temporary() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(v.as_deref(), Some("c"), "the data survived the restart");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("the watch resumes")
        {
            Some(Ok(WatchEvent::Put { value, version, .. })) => seen.push((value, version)),
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(e)) => assert!(e.is_temporary(), "reconnecting is a temporary error: {e:?}"),
            None => panic!("the watch ended"),
        }
    }
    assert_eq!(seen, written, "every write, in order, none lost");
}

/// The KV conformance suite's fault functions: connections cut at many points of the initial
/// read and of a running watch, held off, and etcd's history compacted behind a watch. On an
/// etcd of the test's own: compaction is server-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watches_survive_injected_faults() {
    if std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!required(), "etcd is required for the fault test");
        eprintln!("SKIPPED: etcd is not on the PATH");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (port, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{port}");
    let _server = OwnEtcd::start(port, peer, dir.path());
    let direct = EtcdKv::connect(&[&endpoint], None).await.unwrap();
    let admin = etcd_client::Client::connect([&endpoint], None)
        .await
        .unwrap();
    let proxy = FaultProxy::start(
        format!("127.0.0.1:{port}"),
        Box::new(move || {
            let mut admin = admin.clone();
            Box::pin(async move {
                let revision = admin
                    .get("/", None)
                    .await
                    .unwrap()
                    .header()
                    .unwrap()
                    .revision();
                admin
                    .compact(
                        revision,
                        Some(etcd_client::CompactionOptions::new().with_physical()),
                    )
                    .await
                    .unwrap();
            })
        }),
    )
    .await;
    let faulty = EtcdKv::connect(&[format!("http://127.0.0.1:{}", proxy.port)], None)
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

/// The lease conformance suite on the real etcd, directly and through the fault proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_lease_conformance_suite_including_faults() {
    let Some(endpoints) = endpoints() else { return };
    let kv = EtcdKv::connect(&endpoints, None).await.unwrap();
    let prefix = format!("etcd-{}", std::process::id());
    vamp_core::conformance::lease::run_all(&kv, &prefix).await;
    let target = endpoints[0]
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = FaultProxy::start(target, Box::new(|| Box::pin(async {}))).await;
    let faulty = EtcdKv::connect(&[format!("http://127.0.0.1:{}", proxy.port)], None)
        .await
        .unwrap();
    vamp_core::conformance::lease::leases_survive_faults(&faulty, &kv, &prefix, &proxy).await;
}
