//! The Redis key-value store against a real Redis (`VAMP_REDIS_URL`, set by scripts/test.sh,
//! which starts a private server). Required with CI=true or VAMP_TEST_INTEGRATION=1.
#![cfg(feature = "kv-redis")]

use std::sync::Arc;

mod fault_proxy;

use fault_proxy::FaultProxy;
use vamp_backends::kv::redis::RedisKv;
use vamp_core::kv::{DynKeyValueStore, KeyPath};

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("VAMP_TEST_INTEGRATION").is_ok_and(|v| !v.is_empty() && v != "0")
}

async fn redis() -> Option<RedisKv> {
    let Ok(url) = std::env::var("VAMP_REDIS_URL") else {
        assert!(
            !required(),
            "VAMP_REDIS_URL is required for integration tests (scripts/test.sh sets it)"
        );
        eprintln!("SKIPPED: set VAMP_REDIS_URL to run the Redis tests");
        return None;
    };
    Some(
        RedisKv::connect(&url, "vamp-test")
            .await
            .unwrap_or_else(|e| panic!("Redis at {url}: {e}")),
    )
}

/// The `host:port` of a `redis://host:port/db` URL (for the fault proxy to point at).
fn host_port(url: &str) -> String {
    url.trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

fn root(name: &str) -> KeyPath {
    KeyPath::parse(&format!("/redis-test/{}/{name}", std::process::id())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passes_the_kv_conformance_suite() {
    let Some(kv) = redis().await else { return };
    vamp_core::conformance::kv::run_all(&kv, &root("direct")).await;
    let dynamic: Arc<DynKeyValueStore> = Arc::new(kv);
    vamp_core::conformance::kv::run_all(&dynamic, &root("arc")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_the_url_selection() {
    let Ok(url) = std::env::var("VAMP_REDIS_URL") else {
        assert!(!required(), "VAMP_REDIS_URL is required");
        return;
    };
    let kv = vamp_backends::kv::KvBackendConfig::from_url(&format!(
        "{url}?prefix=/vamp/selection-{}",
        std::process::id()
    ))
    .unwrap()
    .build()
    .await
    .unwrap();
    vamp_core::conformance::kv::put_get_delete(&kv, &KeyPath::parse("/t").unwrap()).await;
    vamp_core::conformance::kv::watch_sees_put_and_delete(&kv, &KeyPath::parse("/t").unwrap())
        .await;
}

/// A Redis server of the test's own, so it can be stopped and started again.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl OwnRedis {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reconnects_and_the_watch_resumes() {
    use futures_util::StreamExt;
    use vamp_core::kv::{KeyValueStore, KeyValueStoreExt, WatchEvent, WatchOptions};
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !required(),
            "redis-server is required for the reconnect test"
        );
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("vamp-redis-reconnect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = OwnRedis::start(port, &dir);
    let kv = RedisKv::connect(&format!("redis://127.0.0.1:{}/0", server.port), "vamp")
        .await
        .unwrap();
    let key = KeyPath::parse("/reconnect/k").unwrap();
    let mut watch = kv.watch(
        &KeyPath::parse("/reconnect").unwrap(),
        WatchOptions::new().with_initial(true),
    );
    assert_eq!(watch.next().await.unwrap().unwrap(), WatchEvent::Synced);
    let v1 = kv.put(&key, "before".into()).await.unwrap();

    server.stop();
    let down = kv
        .put(&key, "while down".into())
        .await
        .expect_err("Redis is down");
    assert!(
        down.is_temporary(),
        "a down server is a temporary error: {down}"
    );

    let _server = OwnRedis::start(port, &dir);
    // The connection comes back by itself; the data survived (append-only file).
    let mut v2 = None;
    for _ in 0..100 {
        match kv.put(&key, "after".into()).await {
            Ok(v) => {
                v2 = Some(v);
                break;
            }
            Err(e) if e.is_temporary() => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let v2 = v2.expect("the store reconnects");
    assert!(v2 > v1);
    assert_eq!(kv.get_string(&key).await.unwrap().as_deref(), Some("after"));
    // The watch reports the outage and then resumes: both writes arrive, in order.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(std::time::Duration::from_secs(30), watch.next())
            .await
            .expect("the watch resumes")
        {
            Some(Ok(WatchEvent::Put { value, version, .. })) => seen.push((value, version)),
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(e)) => assert!(e.is_temporary(), "the outage is a temporary error: {e}"),
            None => panic!("the watch ended"),
        }
    }
    assert_eq!(
        seen,
        vec![
            (bytes::Bytes::from("before"), v1),
            (bytes::Bytes::from("after"), v2)
        ]
    );
}

/// A watch whose first read of the current values fails (the store's connection was cut after
/// the watch found its start position) still delivers the current values once Redis answers:
/// an agent that starts during a blip must not miss the configuration for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_first_read_fails_still_delivers_the_current_value() {
    use futures_util::StreamExt;
    use vamp_core::kv::{KeyValueStore, KeyValueStoreExt, WatchEvent, WatchOptions};
    let Ok(url) = std::env::var("VAMP_REDIS_URL") else {
        assert!(!required(), "VAMP_REDIS_URL is required");
        return;
    };
    let direct = RedisKv::connect(&url, "vamp-test").await.unwrap();
    let key = root("blip").child("configuration").unwrap();
    direct.put(&key, "current".into()).await.unwrap();
    let target = host_port(&url);
    let proxy = FaultProxy::start(target, Box::new(|| Box::pin(async {}))).await;
    let through = RedisKv::connect(&format!("redis://127.0.0.1:{}/0", proxy.port), "vamp-test")
        .await
        .unwrap();
    // The store's own connection breaks; the watch opens a new one and finds its start,
    // then reads the current values through the broken one and fails.
    vamp_core::conformance::kv::Faults::cut_after(&proxy, 0);
    let mut watch = through.watch(&root("blip"), WatchOptions::new().with_initial(true));
    let mut errors = 0;
    let value = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), watch.next())
            .await
            .expect("the watch answers")
        {
            Some(Ok(WatchEvent::Put { value, .. })) => break value,
            Some(Ok(WatchEvent::Synced)) => panic!("synced without the current value"),
            Some(Ok(other)) => panic!("{other:?}"),
            Some(Err(e)) => {
                assert!(e.is_temporary(), "{e:?}");
                errors += 1;
                assert!(errors < 100, "the watch never recovers");
            }
            None => panic!("the watch ended"),
        }
    };
    assert_eq!(value, bytes::Bytes::from("current"));
}

/// Changes the stream trimmed before a watch read them are reported as a gap (the other
/// stores do the same), not skipped; a watch with initial values then reads them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_trimmed_before_a_watch_read_them_are_a_gap() {
    use futures_util::StreamExt;
    use vamp_core::kv::{KeyValueStore, KeyValueStoreExt, WatchEvent, WatchOptions};
    let Ok(url) = std::env::var("VAMP_REDIS_URL") else {
        assert!(!required(), "VAMP_REDIS_URL is required");
        return;
    };
    let name = format!("vamp-gap-{}", std::process::id());
    let kv = RedisKv::connect(&url, &name).await.unwrap();
    let key = root("gap").child("k").unwrap();
    kv.put(&key, "v0".into()).await.unwrap();
    let mut watch = kv.watch(&root("gap"), WatchOptions::new().with_initial(true));
    assert!(matches!(
        watch.next().await,
        Some(Ok(WatchEvent::Put { .. }))
    ));
    assert_eq!(watch.next().await.unwrap().unwrap(), WatchEvent::Synced);
    // Five changes the watch does not read yet, then the stream keeps only the last two.
    for i in 1..=5 {
        kv.put(&key, format!("v{i}").into()).await.unwrap();
    }
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("XTRIM")
        .arg(format!("{name}:events"))
        .arg("MAXLEN")
        .arg(2)
        .query_async(&mut conn)
        .await
        .unwrap();
    match tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
        .await
        .unwrap()
    {
        Some(Err(e)) => {
            assert!(e.is_gap(), "a gap is Error::WatchGap: {e:?}");
            assert!(e.to_string().contains("trimmed"), "{e}");
        }
        other => panic!("the gap must be reported, got {other:?}"),
    }
    // Then the current value again.
    match tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
        .await
        .unwrap()
    {
        Some(Ok(WatchEvent::Put { value, .. })) => assert_eq!(value, bytes::Bytes::from("v5")),
        other => panic!("{other:?}"),
    }
}

/// The KV conformance suite's fault functions: connections cut at many points of the initial
/// read and of a running watch, held off, and the change stream trimmed behind a watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_watches_survive_injected_faults() {
    let Ok(url) = std::env::var("VAMP_REDIS_URL") else {
        assert!(!required(), "VAMP_REDIS_URL is required");
        return;
    };
    let name = format!("vamp-faults-{}", std::process::id());
    let direct = RedisKv::connect(&url, &name).await.unwrap();
    let target = host_port(&url);
    let client = redis::Client::open(url.as_str()).unwrap();
    let stream = format!("{name}:events");
    let proxy = FaultProxy::start(
        target,
        Box::new(move || {
            let (client, stream) = (client.clone(), stream.clone());
            Box::pin(async move {
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let _: i64 = redis::cmd("XTRIM")
                    .arg(&stream)
                    .arg("MAXLEN")
                    .arg(0)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            })
        }),
    )
    .await;
    let faulty = RedisKv::connect(&format!("redis://127.0.0.1:{}/0", proxy.port), &name)
        .await
        .unwrap();
    vamp_core::conformance::kv::run_faults(&faulty, &direct, &root("faults"), &proxy).await;
}

/// A watch on a half-open connection (Redis stops answering, nothing is closed) reports a
/// temporary error once its read times out, instead of blocking for ever, and resumes with
/// the change made meanwhile once Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_half_open_connection_times_out_and_resumes() {
    use futures_util::StreamExt;
    use vamp_core::kv::{KeyValueStore, KeyValueStoreExt, WatchEvent, WatchOptions};
    let Ok(url) = std::env::var("VAMP_REDIS_URL") else {
        assert!(!required(), "VAMP_REDIS_URL is required");
        return;
    };
    let name = format!("vamp-stall-{}", std::process::id());
    let direct = RedisKv::connect(&url, &name).await.unwrap();
    let target = host_port(&url);
    let proxy = FaultProxy::start(target, Box::new(|| Box::pin(async {}))).await;
    let through = RedisKv::connect(&format!("redis://127.0.0.1:{}/0", proxy.port), &name)
        .await
        .unwrap();
    let key = root("stall").child("k").unwrap();
    let mut watch = through.watch(&root("stall"), WatchOptions::new().with_initial(true));
    assert_eq!(watch.next().await.unwrap().unwrap(), WatchEvent::Synced);
    proxy.stall();
    let v = direct.put(&key, "meanwhile".into()).await.unwrap();
    match tokio::time::timeout(std::time::Duration::from_secs(30), watch.next())
        .await
        .expect("the stalled read times out instead of blocking for ever")
    {
        Some(Err(e)) => assert!(e.is_temporary(), "{e:?}"),
        other => panic!("a temporary error, got {other:?}"),
    }
    proxy.unstall();
    let value = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(30), watch.next())
            .await
            .expect("the watch resumes")
        {
            Some(Ok(WatchEvent::Put { value, version, .. })) => {
                assert_eq!(version, v);
                break value;
            }
            Some(Err(e)) => assert!(e.is_temporary(), "{e:?}"),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(value, bytes::Bytes::from("meanwhile"));
}

/// A watch with nothing to report stays quiet: its blocking stream read (1 s on the server)
/// must not run into the client's response timeout (500 ms by default in redis 1.x, which
/// made an idle watch fail twice a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_stays_quiet() {
    use futures_util::StreamExt;
    use vamp_core::kv::{KeyValueStore, WatchEvent, WatchOptions};
    let Some(kv) = redis().await else { return };
    let mut watch = kv.watch(&root("idle"), WatchOptions::new().with_initial(true));
    assert_eq!(watch.next().await.unwrap().unwrap(), WatchEvent::Synced);
    // Three blocking reads' worth of silence: no item at all.
    let quiet = tokio::time::timeout(std::time::Duration::from_secs(3), watch.next()).await;
    assert!(quiet.is_err(), "an idle watch yielded {:?}", quiet.unwrap());
}

/// The lease conformance suite on the real Redis, directly and through the fault proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passes_the_lease_conformance_suite_including_faults() {
    let Some(kv) = redis().await else { return };
    let prefix = format!("redis-{}", std::process::id());
    vamp_core::conformance::lease::run_all(&kv, &prefix).await;
    let url = std::env::var("VAMP_REDIS_URL").unwrap();
    let proxy = FaultProxy::start(host_port(&url), Box::new(|| Box::pin(async {}))).await;
    let name = format!("vamp-test-{}", std::process::id());
    let direct = RedisKv::connect(&url, &name).await.unwrap();
    let faulty = RedisKv::connect(&format!("redis://127.0.0.1:{}/0", proxy.port), &name)
        .await
        .unwrap();
    vamp_core::conformance::lease::leases_survive_faults(&faulty, &direct, &prefix, &proxy).await;
}
