//! The ZooKeeper key-value store against a real ZooKeeper (`VAMP_ZOOKEEPER_SERVERS`,
//! `host:port[,host:port]`, set by scripts/test.sh, which starts a private server), and a
//! reconnect test that starts, stops and restarts a ZooKeeper of its own (Debian's
//! `/usr/share/zookeeper/bin/zkServer.sh`, or `VAMP_ZOOKEEPER_BIN`). Required with CI=true or
//! VAMP_TEST_INTEGRATION=1.
#![cfg(feature = "kv-zookeeper")]

use std::sync::Arc;
use std::time::Duration;

mod fault_proxy;

use fault_proxy::FaultProxy;
use futures_util::StreamExt;
use vamp_backends::kv::zookeeper::{ZookeeperAccess, ZookeeperKv};
use vamp_core::kv::{
    DynKeyValueStore, KeyPath, KeyValueStore, KeyValueStoreExt, WatchEvent, WatchOptions,
};

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("VAMP_TEST_INTEGRATION").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn servers() -> Option<String> {
    let Ok(servers) = std::env::var("VAMP_ZOOKEEPER_SERVERS") else {
        assert!(
            !required(),
            "VAMP_ZOOKEEPER_SERVERS is required for integration tests (scripts/test.sh sets it)"
        );
        eprintln!("SKIPPED: set VAMP_ZOOKEEPER_SERVERS to run the ZooKeeper tests");
        return None;
    };
    Some(servers)
}

/// The tests' writer: nodes writable by this digest user only.
fn writer() -> ZookeeperAccess {
    ZookeeperAccess::digest("vamp-test", "not-a-real-secret")
}

fn store_root(name: &str) -> String {
    format!("/vamp-test-{}-{name}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_passes_the_kv_conformance_suite() {
    let Some(servers) = servers() else { return };
    let kv = ZookeeperKv::connect_with(&servers, &store_root("conformance"), writer())
        .await
        .unwrap_or_else(|e| panic!("ZooKeeper at {servers}: {e}"));
    let root = KeyPath::parse("/direct").unwrap();
    vamp_core::conformance::kv::run_all(&kv, &root).await;
    let dynamic: Arc<DynKeyValueStore> = Arc::new(kv);
    vamp_core::conformance::kv::run_all(&dynamic, &KeyPath::parse("/arc").unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_through_the_url_selection_with_a_prefix() {
    let Some(servers) = servers() else { return };
    // Credentials in the URL: without them the store is read-only.
    let url = format!(
        "zk://vamp-test:not-a-real-secret@{servers}/vamp/selection-{}",
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
}

/// Two store handles (two sessions) write the same key concurrently with compare-and-swap:
/// ZooKeeper's multi with the node's data version refuses the loser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_compare_and_swap_lose_no_update() {
    let Some(servers) = servers() else { return };
    let root = store_root("two-sessions");
    let a = ZookeeperKv::connect_with(&servers, &root, writer())
        .await
        .unwrap();
    let b = ZookeeperKv::connect_with(&servers, &root, writer())
        .await
        .unwrap();
    let key = KeyPath::parse("/counter").unwrap();
    a.put(&key, "0".into()).await.unwrap();
    let writer = |kv: ZookeeperKv, key: KeyPath| {
        tokio::spawn(async move {
            for _ in 0..20 {
                loop {
                    let cur = kv.get(&key).await.unwrap().unwrap();
                    let n: u32 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                    match kv
                        .compare_and_swap(&key, (n + 1).to_string().into(), cur.version)
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        })
    };
    let tasks: Vec<_> = (0..4)
        .map(|i| writer(if i % 2 == 0 { a.clone() } else { b.clone() }, key.clone()))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.get_string(&key).await.unwrap().as_deref(), Some("80"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn zk_server_script() -> String {
    std::env::var("VAMP_ZOOKEEPER_BIN")
        .unwrap_or_else(|_| "/usr/share/zookeeper/bin/zkServer.sh".to_owned())
}

/// A ZooKeeper of the test's own, so it can be stopped and started again (same data directory).
struct OwnZookeeper {
    child: std::process::Child,
}

impl OwnZookeeper {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        let cfg = dir.join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=ruok\nmaxSessionTimeout=20000\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(zk_server_script())
            .arg("start-foreground")
            .arg(&cfg)
            .env("ZOOCFGDIR", dir)
            .env("ZOO_LOG_DIR", dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("zkServer.sh");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "ZooKeeper did not start"
            );
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                // A server still starting may accept and not answer: never block on it.
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                let mut reply = String::new();
                if s.write_all(b"ruok").is_ok()
                    && s.read_to_string(&mut reply).is_ok()
                    && reply == "imok"
                {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server and waits until its port refuses connections.
    fn stop_and_wait(&mut self, port: u16) {
        self.stop();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "ZooKeeper still answers on {port} after being stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OwnZookeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Operations fail with a temporary error while ZooKeeper is down; afterwards the same store
/// works again, and a watch opened before the outage resumes from the log: writes made by
/// another session after the restart, before the watch is polled again, all arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_reconnects_and_the_watch_resumes() {
    // A hang is a failure, not a stuck CI run.
    tokio::time::timeout(Duration::from_secs(180), reconnects_and_the_watch_resumes())
        .await
        .expect("the reconnect test finished within 180 s");
}

async fn reconnects_and_the_watch_resumes() {
    if !std::path::Path::new(&zk_server_script()).exists() {
        assert!(
            !required(),
            "ZooKeeper ({}) is required for the reconnect test",
            zk_server_script()
        );
        eprintln!("SKIPPED: no ZooKeeper at {}", zk_server_script());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let servers = format!("127.0.0.1:{port}");
    let mut server = OwnZookeeper::start(port, dir.path());
    let kv = ZookeeperKv::connect_with(&servers, "/vamp-kv", writer())
        .await
        .unwrap();
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

    server.stop_and_wait(port);
    let down = kv
        .put(&key, "while down".into())
        .await
        .expect_err("ZooKeeper is down");
    assert!(
        down.is_temporary(),
        "a down server is a temporary error: {down:?}"
    );

    let _server = OwnZookeeper::start(port, dir.path());
    let other = ZookeeperKv::connect_with(&servers, "/vamp-kv", writer())
        .await
        .unwrap();
    let mut written = Vec::new();
    for value in ["a", "b", "c"] {
        written.push((
            bytes::Bytes::from(value),
            other.put(&key, value.into()).await.unwrap(),
        ));
    }
    // The first store reconnects by itself (same session, or a new one).
    let mut v = None;
    for _ in 0..200 {
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
    assert!(kv.get(&key).await.unwrap().unwrap().version > v1);
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

/// Nodes this store creates are never world-writable: with credentials only that user may
/// write (anyone may read); without credentials the store refuses to write at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_never_world_writable() {
    let Some(servers) = servers() else { return };
    let root = store_root("acl");
    let kv = ZookeeperKv::connect_with(&servers, &root, writer())
        .await
        .unwrap();
    let key = KeyPath::parse("/gateways/haproxy/1.7/configuration").unwrap();
    kv.put(&key, "frontend f\n".into()).await.unwrap();

    // A session without credentials (anyone who can reach ZooKeeper) reads but cannot write.
    let anonymous = zookeeper_client::Client::connector()
        .connect(&servers)
        .await
        .unwrap();
    let (children, _) = anonymous
        .get_children(&format!("{root}/entries"))
        .await
        .unwrap();
    assert_eq!(children.len(), 1);
    for node in [
        format!("{root}/entries/{}", children[0]),
        format!("{root}/rev"),
        root.clone(),
    ] {
        let (acls, _) = anonymous.get_acl(&node).await.unwrap();
        assert!(
            acls.iter()
                .all(|a| a.scheme() != "world"
                    || a.permission() == zookeeper_client::Permission::READ),
            "{node}: {acls:?}"
        );
        let (data, _) = anonymous.get_data(&node).await.unwrap();
        assert_eq!(
            anonymous.set_data(&node, b"pwned", None).await.unwrap_err(),
            zookeeper_client::Error::NoAuth,
            "{node} is writable without credentials"
        );
        assert_eq!(anonymous.get_data(&node).await.unwrap().0, data);
    }
    assert_eq!(
        anonymous
            .create(
                &format!("{root}/entries/planted"),
                b"x",
                &zookeeper_client::CreateMode::Persistent
                    .with_acls(zookeeper_client::Acls::anyone_all())
            )
            .await
            .unwrap_err(),
        zookeeper_client::Error::NoAuth
    );

    // Without credentials the store reads, and refuses to write (creating no node).
    let reader = ZookeeperKv::connect(&servers, &root).await.unwrap();
    assert_eq!(
        reader.get_string(&key).await.unwrap().as_deref(),
        Some("frontend f\n")
    );
    let refused = reader.put(&key, "x".into()).await.unwrap_err();
    assert!(refused.to_string().contains("read-only"), "{refused}");
    let fresh = store_root("acl-fresh");
    let _ = ZookeeperKv::connect(&servers, &fresh).await.unwrap();
    assert!(anonymous.check_stat(&fresh).await.unwrap().is_none());
}

/// The KV conformance suite's fault functions: connections cut at many points of the initial
/// read and of a running watch, held off, and the change log trimmed behind a watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_watches_survive_injected_faults() {
    let Some(servers) = servers() else { return };
    let root = store_root("faults");
    let direct = ZookeeperKv::connect_with(&servers, &root, writer())
        .await
        .unwrap();
    let trimmer = direct.clone();
    let target = servers.split(',').next().unwrap().to_owned();
    let proxy = FaultProxy::start(
        target,
        Box::new(move || {
            let trimmer = trimmer.clone();
            Box::pin(async move { trimmer.trim_log(0).await.unwrap() })
        }),
    )
    .await;
    let faulty = ZookeeperKv::connect_with(&format!("127.0.0.1:{}", proxy.port), &root, writer())
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

/// Trimming the log is no gap for a watch that keeps up: the trim mark stays below what the
/// watch has read, so it sees every change once, with no gap reported and nothing read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_the_log_is_no_gap_for_a_watch_that_keeps_up() {
    let Some(servers) = servers() else { return };
    let kv = ZookeeperKv::connect_with(&servers, &store_root("trim-no-gap"), writer())
        .await
        .unwrap()
        .with_log_keep(20);
    let key = KeyPath::parse("/t/k").unwrap();
    let mut watch = kv.watch(
        &KeyPath::parse("/t").unwrap(),
        WatchOptions::new().with_initial(true),
    );
    assert_eq!(watch.next().await.unwrap().unwrap(), WatchEvent::Synced);
    for i in 0..150u32 {
        let v = kv.put(&key, i.to_string().into()).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the change arrives")
        {
            Some(Ok(WatchEvent::Put { value, version, .. })) => {
                assert_eq!((value, version), (bytes::Bytes::from(i.to_string()), v));
            }
            other => panic!("change #{i}: {other:?}"),
        }
    }
    // The log really was trimmed meanwhile.
    let client = zookeeper_client::Client::connect(&servers).await.unwrap();
    let left = client
        .list_children(&format!("{}/log", store_root("trim-no-gap")))
        .await
        .unwrap();
    assert!(left.len() < 60, "{} log nodes left", left.len());
}

/// The lease conformance suite on the real ZooKeeper, directly and through the fault proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_passes_the_lease_conformance_suite_including_faults() {
    let Some(servers) = servers() else { return };
    let root = store_root("leases");
    let direct = ZookeeperKv::connect_with(&servers, &root, writer())
        .await
        .unwrap();
    vamp_core::conformance::lease::run_all(&direct, "zk").await;
    let target = servers.split(',').next().unwrap().to_owned();
    let proxy = FaultProxy::start(target, Box::new(|| Box::pin(async {}))).await;
    let faulty = ZookeeperKv::connect_with(&format!("127.0.0.1:{}", proxy.port), &root, writer())
        .await
        .unwrap();
    vamp_core::conformance::lease::leases_survive_faults(&faulty, &direct, "zk", &proxy).await;
}
