//! The gateway agent end to end: a real HAProxy, real HTTP backends on loopback, and the
//! configuration written to a key-value store — in memory, and the real etcd, Redis and
//! ZooKeeper that scripts/test.sh starts (`VAMP_ETCD_ENDPOINTS`, `VAMP_REDIS_URL`,
//! `VAMP_ZOOKEEPER_SERVERS`; required with CI=true or VAMP_TEST_INTEGRATION=1).
#![cfg(feature = "agent")]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::sync::watch;
use vamp_core::kv::{DynKeyValueStore, KeyPath, KeyValueStoreExt};
use vamp_core::memory::{InMemoryKv, InMemoryMetrics};
use vamp_core::metrics::{DynEventStore, DynMetricsStore, EventStore, MetricsStore};
use vamp_haproxy::agent::{AgentOptions, AgentStatus, GatewayAgent};
use vamp_haproxy::{RenderOptions, render};

/// A two-route gateway (`a`, `b`) on `port`, rendered for sockets in `dir`.
fn gateway_config(
    port: u16,
    dir: &std::path::Path,
    a: &HttpBackend,
    b: &HttpBackend,
    weights: (u8, u8),
    balance: &str,
) -> (String, String) {
    let (text, frontend, _) = gateway_config_with_routes(port, dir, a, b, weights, balance);
    (text, frontend)
}

/// Also returns, per backend name, the frontend of its route.
fn gateway_config_with_routes(
    port: u16,
    dir: &std::path::Path,
    a: &HttpBackend,
    b: &HttpBackend,
    weights: (u8, u8),
    balance: &str,
) -> (String, String, HashMap<String, String>) {
    let g = gateway(&format!(
        "name: agent/{port}\nport: {port}\nroutes:\n  a: {{weight: {}%, balance: {balance}}}\n  b: {{weight: {}%, balance: {balance}}}\n",
        weights.0, weights.1
    ));
    let g = with_targets(
        with_targets(g, 0, vec![a.target("a")]),
        1,
        vec![b.target("b")],
    );
    let opts = RenderOptions::default()
        .with_socket_dir(dir.to_str().unwrap())
        .with_bind_address("127.0.0.1");
    let config = render(&[g], &opts).unwrap();
    let frontend = config.gateway_frontends().next().unwrap().to_owned();
    let routes = [("a", a), ("b", b)]
        .into_iter()
        .map(|(name, backend)| {
            let address = format!("127.0.0.1:{}", backend.port);
            let route = config.route_frontend_of_server(&address).unwrap();
            (name.to_owned(), route.to_owned())
        })
        .collect();
    (config.render(), frontend, routes)
}

struct Running {
    status: watch::Receiver<AgentStatus>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(
        kv: Arc<DynKeyValueStore>,
        key: &KeyPath,
        dir: &std::path::Path,
        metrics: Arc<DynMetricsStore>,
        events: Arc<DynEventStore>,
        tune: impl FnOnce(AgentOptions) -> AgentOptions,
    ) -> Option<Self> {
        let bin = haproxy()?;
        let options = tune(
            AgentOptions::new(key.clone(), dir.join("agent"))
                .with_haproxy_bin(bin)
                .with_socket_dir(dir)
                .with_syslog("127.0.0.1:0".parse().unwrap())
                .with_health("127.0.0.1:0".parse().unwrap()),
        );
        let agent = GatewayAgent::new(kv, options)
            .with_metrics(metrics)
            .with_events(events);
        let status = agent.status();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            agent
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Some(Self {
            status,
            stop: Some(stop),
            task,
        })
    }

    /// Waits until the status satisfies `f` (failing after 30 s with the status).
    async fn until(&mut self, what: &str, f: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        let mut status = self.status.clone();
        let result = tokio::time::timeout(Duration::from_secs(30), async {
            status.wait_for(|s| f(s)).await.map(|s| s.clone())
        })
        .await;
        match result {
            Ok(Ok(s)) => s,
            _ => panic!(
                "{what}: the agent did not get there: {:?}",
                *self.status.borrow()
            ),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

async fn split(port: u16, n: usize) -> HashMap<String, usize> {
    tokio::task::spawn_blocking(move || {
        let mut c = HashMap::new();
        for _ in 0..n {
            *c.entry(who(&get(port, "/", &[]))).or_default() += 1;
        }
        c
    })
    .await
    .unwrap()
}

/// Waits until HAProxy answers on `port` from backend `name` (the first configuration).
async fn until_served(port: u16, name: &str) {
    until_served_within(port, name, Duration::from_secs(30)).await;
}

/// The whole life of a gateway through one key-value store.
async fn end_to_end(kv: Arc<DynKeyValueStore>, key: KeyPath) {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics = Arc::new(InMemoryMetrics::new());
    let events = Arc::new(InMemoryMetrics::new());
    let Some(mut agent) = Running::start(
        Arc::clone(&kv),
        &key,
        dir.path(),
        Arc::clone(&metrics) as Arc<DynMetricsStore>,
        Arc::clone(&events) as Arc<DynEventStore>,
        |o| o,
    )
    .await
    else {
        return;
    };

    // 0. Before any configuration, the agent is not ready.
    let health = agent
        .until("health endpoint", |s| s.health.is_some())
        .await
        .health
        .unwrap();
    let code = tokio::task::spawn_blocking(move || get(health.port(), "/health", &[]).status)
        .await
        .unwrap();
    assert_eq!(code, 503, "not ready before a configuration");

    // 1. A gateway written to the store serves traffic.
    let (first, frontend) = gateway_config(port, dir.path(), &a, &b, (100, 0), "roundrobin");
    let v1 = kv.put(&key, first.into()).await.unwrap();
    let status = agent
        .until("first apply", |s| s.applied_version == Some(v1.0))
        .await;
    assert!(status.ready && status.counts.reload == 1, "{status:?}");
    until_served(port, "a").await;
    assert_eq!(split(port, 20).await.get("a"), Some(&20));
    // The health endpoint says so.
    let (code, body) = tokio::task::spawn_blocking(move || {
        let r = get(health.port(), "/health", &[]);
        (r.status, r.body)
    })
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["applied_version"], v1.0, "{body}");
    assert_eq!(body["updates"]["reload"], 1, "{body}");
    let workers = status.workers.clone();
    assert_eq!(workers.len(), 1, "{status:?}");

    // 2. A weight change goes through the runtime API: same worker, traffic follows.
    let (weights, _) = gateway_config(port, dir.path(), &a, &b, (0, 100), "roundrobin");
    let v2 = kv.put(&key, weights.into()).await.unwrap();
    let status = agent
        .until("weight change", |s| s.applied_version == Some(v2.0))
        .await;
    assert_eq!(status.counts.dynamic, 1, "{status:?}");
    assert_eq!(status.counts.reload, 1, "no reload for weights: {status:?}");
    assert_eq!(status.workers, workers, "the worker is unchanged");
    assert_eq!(split(port, 20).await.get("b"), Some(&20));

    // 3. A structural change reloads (a new worker) and keeps serving.
    let (structural, _) = gateway_config(port, dir.path(), &a, &b, (0, 100), "leastconn");
    let v3 = kv.put(&key, structural.into()).await.unwrap();
    let status = agent
        .until("structural change", |s| s.applied_version == Some(v3.0))
        .await;
    assert_eq!(status.counts.reload, 2, "{status:?}");
    assert_ne!(status.workers, workers, "a reload starts a new worker");
    assert_eq!(split(port, 20).await.get("b"), Some(&20));

    // 4. An invalid configuration is rejected; the old one keeps serving, the rejection is
    //    an event, and the next good value is applied.
    let v4 = kv
        .put(
            &key,
            "frontend broken\n  bind 127.0.0.1:1\n  no-such-directive here\n".into(),
        )
        .await
        .unwrap();
    let status = agent.until("rejection", |s| s.counts.rejected == 1).await;
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no-such-directive")),
        "HAProxy's message is reported: {status:?}"
    );
    assert_eq!(
        status.applied_version,
        Some(v3.0),
        "still the last good one"
    );
    assert_ne!(Some(v4.0), status.applied_version);
    assert_eq!(split(port, 20).await.get("b"), Some(&20));
    // Bytes that are not text are refused as well, never mangled into a configuration.
    kv.put(&key, vec![0x66, 0xff, 0xfe].into()).await.unwrap();
    let status = agent
        .until("a non-UTF-8 rejection", |s| s.counts.rejected == 2)
        .await;
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("UTF-8")),
        "{status:?}"
    );
    assert_eq!(status.applied_version, Some(v3.0));
    let rejected = events
        .query(
            &vamp_core::model::EventQuery {
                tags: vec!["gateway-agent:rejected".into()],
                event_type: None,
                timestamp: None,
                aggregator: None,
            },
            vamp_core::persistence::ListOptions::all(),
        )
        .await
        .unwrap();
    assert_eq!(rejected.len(), 2, "{rejected:?}");

    let (good, _, routes) =
        gateway_config_with_routes(port, dir.path(), &a, &b, (50, 50), "roundrobin");
    let v5 = kv.put(&key, good.into()).await.unwrap();
    let status = agent
        .until("recovery", |s| s.applied_version == Some(v5.0))
        .await;
    assert!(status.last_error.is_none(), "{status:?}");
    let c = split(port, 40).await;
    assert_eq!((c.get("a"), c.get("b")), (Some(&20), Some(&20)), "{c:?}");

    // 5. Killing HAProxy: the agent restarts it with the last good configuration.
    let pid = status.haproxy_pid.unwrap();
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s KILL {pid}"))
        .status()
        .unwrap();
    let status = agent
        .until("restart", |s| {
            s.starts == 2 && s.ready && s.haproxy_pid != Some(pid)
        })
        .await;
    assert_eq!(status.applied_version, Some(v5.0));
    until_served(port, "a").await;

    // 6. The request metrics from HAProxy's logs match what was sent: through the gateway's
    //    frontend, and per route. Once the earlier requests' lines have all arrived (the
    //    counts stop moving), 40 more requests count 40, split as the responses say.
    let metrics_of = |frontend: String| {
        let metrics = Arc::clone(&metrics);
        async move {
            metrics
                .request_metrics(&frontend, Duration::from_secs(600))
                .await
                .unwrap()
        }
    };
    let snapshot = || async {
        (
            metrics_of(frontend.clone()).await.requests,
            metrics_of(routes["a"].clone()).await.requests,
            metrics_of(routes["b"].clone()).await.requests,
        )
    };
    let mut before = snapshot().await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = snapshot().await;
        if now == before {
            break;
        }
        before = now;
    }
    let sent = split(port, 40).await;
    let expected = (
        before.0 + 40,
        before.1 + *sent.get("a").unwrap_or(&0) as u64,
        before.2 + *sent.get("b").unwrap_or(&0) as u64,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = snapshot().await;
        if now == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && now.0 <= expected.0,
            "request counts from the logs {now:?}, expected {expected:?} (sent {sent:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for f in [frontend.clone(), routes["a"].clone(), routes["b"].clone()] {
        let m = metrics_of(f.clone()).await;
        assert_eq!(
            m.status.success, m.requests,
            "every request was a 2xx on {f}: {m:?}"
        );
        assert_eq!(m.error_rate, 0.0, "{m:?}");
    }

    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_store_end_to_end() {
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    end_to_end(
        kv,
        KeyPath::parse("/vamp/default/gateways/haproxy/1.7/configuration").unwrap(),
    )
    .await;
}

#[cfg(feature = "_kv-tests")]
fn required_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) => Some(v),
        Err(_) => {
            assert!(
                !integration_required(),
                "{name} is required for integration tests (scripts/test.sh sets it)"
            );
            eprintln!("SKIPPED: set {name} to run the agent against that store");
            None
        }
    }
}

#[cfg(feature = "_kv-tests")]
fn test_key(store: &str) -> KeyPath {
    KeyPath::parse(&format!(
        "/vamp-agent-test-{}-{store}/gateways/haproxy/1.7/configuration",
        std::process::id()
    ))
    .unwrap()
}

#[cfg(feature = "_kv-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_end_to_end() {
    let Some(endpoints) = required_env("VAMP_ETCD_ENDPOINTS") else {
        return;
    };
    let endpoints: Vec<String> = endpoints.split(',').map(str::to_owned).collect();
    let kv = vamp_backends::kv::etcd::EtcdKv::connect(&endpoints, None)
        .await
        .unwrap();
    end_to_end(Arc::new(kv), test_key("etcd")).await;
}

#[cfg(feature = "_kv-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_end_to_end() {
    let Some(url) = required_env("VAMP_REDIS_URL") else {
        return;
    };
    let kv = vamp_backends::kv::redis::RedisKv::connect(
        &url,
        &format!("vamp-agent-{}", std::process::id()),
    )
    .await
    .unwrap();
    end_to_end(Arc::new(kv), test_key("redis")).await;
}

/// A load process: requests on loopback, each on a new connection, until the stop file
/// appears; prints `{"ok": N, "failed": M, "errors": {...}}`.
const LOAD_CLIENT: &str = r#"
import json, os, socket, sys
port, stop = int(sys.argv[1]), sys.argv[2]
ok, failed, errors = 0, 0, {}
while not os.path.exists(stop):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        head = data.split(b"\r\n", 1)[0]
        if head.startswith(b"HTTP/1.1 200") and (data.endswith(b"a /\n") or data.endswith(b"b /\n")):
            ok += 1
        else:
            failed += 1
            key = repr(head[:80])
            errors[key] = errors.get(key, 0) + 1
    except Exception as e:
        failed += 1
        key = type(e).__name__ + ": " + str(e)
        errors[key] = errors.get(key, 0) + 1
print(json.dumps({"ok": ok, "failed": failed, "errors": errors}))
"#;

/// Hitless: while a second process sends requests without pause, 50 structural changes
/// (each a reload) and 200 weight changes (each through the runtime API) fail no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_and_weight_changes_under_load_fail_no_request() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let key = KeyPath::parse("/vamp/load/gateways/haproxy/1.7/configuration").unwrap();
    let Some(mut agent) = Running::start(
        Arc::clone(&kv),
        &key,
        dir.path(),
        Arc::new(InMemoryMetrics::new()),
        Arc::new(InMemoryMetrics::new()),
        |o| o.with_debounce(Duration::from_millis(5)),
    )
    .await
    else {
        return;
    };
    let (first, _) = gateway_config(port, dir.path(), &a, &b, (50, 50), "roundrobin");
    let v = kv.put(&key, first.into()).await.unwrap();
    agent
        .until("first apply", |s| s.applied_version == Some(v.0))
        .await;
    until_served(port, "a").await;

    let stop = dir.path().join("stop-load");
    let load = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(LOAD_CLIENT)
        .arg(port.to_string())
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the load process");
    tokio::time::sleep(Duration::from_millis(300)).await;

    for i in 0..50 {
        let balance = if i % 2 == 0 {
            "leastconn"
        } else {
            "roundrobin"
        };
        let (config, _) = gateway_config(port, dir.path(), &a, &b, (50, 50), balance);
        let v = kv.put(&key, config.into()).await.unwrap();
        agent
            .until("a structural change", |s| s.applied_version == Some(v.0))
            .await;
    }
    for i in 0..200 {
        let weights = if i % 2 == 0 { (70, 30) } else { (30, 70) };
        let (config, _) = gateway_config(port, dir.path(), &a, &b, weights, "roundrobin");
        let v = kv.put(&key, config.into()).await.unwrap();
        agent
            .until("a weight change", |s| s.applied_version == Some(v.0))
            .await;
    }
    let status = agent.status.borrow().clone();
    std::fs::write(&stop, "").unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), load.wait_with_output())
        .await
        .expect("the load process stops")
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    eprintln!("load during 50 reloads and 200 weight changes: {report}");
    assert_eq!(status.counts.reload, 51, "{status:?}");
    assert_eq!(status.counts.dynamic, 200, "{status:?}");
    assert_eq!(status.counts.rejected, 0, "{status:?}");
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["failed"].as_u64(),
        Some(0),
        "no failed request: {report}"
    );
    agent.stop().await;
}

#[cfg(feature = "_kv-tests")]
/// An etcd of the test's own (Debian's `etcd`), so it can be stopped and started again on the
/// same data directory.
struct OwnEtcd {
    child: std::process::Child,
}

#[cfg(feature = "_kv-tests")]
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

#[cfg(feature = "_kv-tests")]
impl Drop for OwnEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// etcd goes away for 10 s: HAProxy serves every request meanwhile, and an update written
/// after etcd is back is applied.
#[cfg(feature = "_kv-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kv_outage_keeps_haproxy_serving_and_the_next_update_applies() {
    if std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !integration_required(),
            "etcd is required for the outage test"
        );
        eprintln!("SKIPPED: no etcd binary");
        return;
    }
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let dir = tempfile::tempdir().unwrap();
    let (etcd_port, peer_port) = (free_port(), free_port());
    let mut etcd = OwnEtcd::start(etcd_port, peer_port, &dir.path().join("etcd"));
    let endpoints = vec![format!("http://127.0.0.1:{etcd_port}")];
    let kv: Arc<DynKeyValueStore> = Arc::new(
        vamp_backends::kv::etcd::EtcdKv::connect(&endpoints, None)
            .await
            .unwrap(),
    );
    let key = test_key("outage");
    let port = free_port();
    let Some(mut agent) = Running::start(
        Arc::clone(&kv),
        &key,
        dir.path(),
        Arc::new(InMemoryMetrics::new()),
        Arc::new(InMemoryMetrics::new()),
        |o| o,
    )
    .await
    else {
        return;
    };
    let (first, _) = gateway_config(port, dir.path(), &a, &b, (100, 0), "roundrobin");
    let v1 = kv.put(&key, first.into()).await.unwrap();
    agent
        .until("first apply", |s| s.applied_version == Some(v1.0))
        .await;
    until_served(port, "a").await;

    etcd.stop();
    let (served, failed) = tokio::task::spawn_blocking(move || {
        let (mut served, mut failed) = (0, 0);
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < end {
            match std::panic::catch_unwind(|| who(&get(port, "/", &[]))) {
                Ok(name) if name == "a" => served += 1,
                _ => failed += 1,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (served, failed)
    })
    .await
    .unwrap();
    assert!(
        served > 0 && failed == 0,
        "served {served}, failed {failed} while etcd was down"
    );
    assert_eq!(agent.status.borrow().applied_version, Some(v1.0));

    let _etcd = OwnEtcd::start(etcd_port, peer_port, &dir.path().join("etcd"));
    let mut written = None;
    for _ in 0..100 {
        let (update, _) = gateway_config(port, dir.path(), &a, &b, (0, 100), "roundrobin");
        match kv.put(&key, update.into()).await {
            Ok(v) => {
                written = Some(v);
                break;
            }
            Err(e) if e.is_temporary() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let v2 = written.expect("etcd is back");
    let status = agent
        .until("the update after the outage", |s| {
            s.applied_version == Some(v2.0)
        })
        .await;
    assert_eq!(status.counts.dynamic, 1, "{status:?}");
    assert_eq!(split(port, 10).await.get("b"), Some(&10));
    agent.stop().await;
}

/// The work directory ends up in HAProxy's configuration: a path HAProxy would split or read
/// as a comment is refused before anything starts.
#[tokio::test]
async fn a_work_directory_that_would_break_the_configuration_is_refused() {
    for dir in [
        "/tmp/vamp agent",
        "/tmp/vamp#agent",
        "/tmp/vamp\nagent",
        "/tmp/$HOME",
    ] {
        let agent = GatewayAgent::new(
            Arc::new(InMemoryKv::new()),
            AgentOptions::new(KeyPath::parse("/k").unwrap(), dir),
        );
        match agent.run(async {}).await {
            Err(vamp_haproxy::agent::AgentError::Io { message, .. }) => {
                assert!(message.contains("work directory"), "{message}");
            }
            other => panic!("{dir:?}: {other:?}"),
        }
        assert!(
            !std::path::Path::new(dir).exists(),
            "{dir:?} was not created"
        );
    }
}

#[cfg(feature = "_kv-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_end_to_end() {
    let Some(servers) = required_env("VAMP_ZOOKEEPER_SERVERS") else {
        return;
    };
    let kv = vamp_backends::kv::zookeeper::ZookeeperKv::connect_with(
        &servers,
        &format!("/vamp-agent-test-{}", std::process::id()),
        vamp_backends::kv::zookeeper::ZookeeperAccess::digest("vamp-test", "not-a-real-secret"),
    )
    .await
    .unwrap();
    end_to_end(Arc::new(kv), test_key("zookeeper")).await;
}

/// A configuration that passes `haproxy -c` but cannot start (an address this host does not
/// have): the reload fails, the agent says so, the previous worker keeps serving, and the
/// file on disk is the running configuration again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_that_fails_keeps_the_running_configuration() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let key = KeyPath::parse("/vamp/failing/gateways/haproxy/1.7/configuration").unwrap();
    let Some(mut agent) = Running::start(
        Arc::clone(&kv),
        &key,
        dir.path(),
        Arc::new(InMemoryMetrics::new()),
        Arc::new(InMemoryMetrics::new()),
        |o| o,
    )
    .await
    else {
        return;
    };
    let (first, _) = gateway_config(port, dir.path(), &a, &b, (100, 0), "roundrobin");
    let v1 = kv.put(&key, first.clone().into()).await.unwrap();
    let status = agent
        .until("first apply", |s| s.applied_version == Some(v1.0))
        .await;
    until_served(port, "a").await;
    let config_file = dir.path().join("agent").join("haproxy.cfg");
    let running = std::fs::read_to_string(&config_file).unwrap();

    // Another gateway on an address this host does not have (TEST-NET-1): `haproxy -c` passes
    // (it binds nothing), the reload cannot bind. (A port another process holds is not this
    // case any more: the agent leaves such a gateway out, see agent_hardening.rs.)
    let other_port = free_port();
    let (second, _) = gateway_config(other_port, dir.path(), &a, &b, (0, 100), "roundrobin");
    let second = second.replace(
        &format!("bind 127.0.0.1:{other_port}"),
        &format!("bind 192.0.2.1:{other_port}"),
    );
    let v2 = kv
        .put(&key, format!("{first}\n{second}").into())
        .await
        .unwrap();
    let after = agent
        .until("failed reload", |s| s.counts.rejected == 1)
        .await;
    assert_eq!(after.applied_version, Some(v1.0), "{after:?}");
    assert_ne!(after.applied_version, Some(v2.0));
    assert!(
        after
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("reload")),
        "{after:?}"
    );
    assert_eq!(after.workers, status.workers, "the previous worker serves");
    assert_eq!(split(port, 10).await.get("a"), Some(&10));
    assert_eq!(std::fs::read_to_string(&config_file).unwrap(), running);

    // HAProxy's master is still usable: the next structural change reloads.
    let (third, _) = gateway_config(port, dir.path(), &a, &b, (0, 100), "leastconn");
    let v3 = kv.put(&key, third.into()).await.unwrap();
    let status = agent
        .until("reload after the failure", |s| {
            s.applied_version == Some(v3.0)
        })
        .await;
    assert_eq!(status.counts.reload, 2, "{status:?}");
    assert!(status.last_error.is_none(), "{status:?}");
    assert_eq!(split(port, 10).await.get("b"), Some(&10));
    agent.stop().await;
}

#[tokio::test]
async fn socket_and_config_paths_are_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let options = AgentOptions::new(KeyPath::parse("/k").unwrap(), dir.path()).with_sockets(
        dir.path().join("master.sock"),
        dir.path().join("stats sock"),
    );
    match GatewayAgent::new(Arc::new(InMemoryKv::new()), options)
        .run(async {})
        .await
    {
        Err(vamp_haproxy::agent::AgentError::Io { message, .. }) => {
            assert!(message.contains("stats socket"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// HAProxy's configuration file and sockets can live where the host wants them (like the VGA's
/// `/usr/local/vamp/haproxy.cfg`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_configuration_and_sockets_go_where_they_are_told() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let port = free_port();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let key = KeyPath::parse("/vamp/paths/gateways/haproxy/1.7/configuration").unwrap();
    let (etc2, run2) = (etc.clone(), run.clone());
    let Some(mut agent) = Running::start(
        Arc::clone(&kv),
        &key,
        dir.path(),
        Arc::new(InMemoryMetrics::new()),
        Arc::new(InMemoryMetrics::new()),
        move |o| {
            o.with_config_path(etc2.join("haproxy.cfg"))
                .with_sockets(run2.join("m.sock"), run2.join("s.sock"))
        },
    )
    .await
    else {
        return;
    };
    let (config, _) = gateway_config(port, dir.path(), &a, &b, (100, 0), "roundrobin");
    let v = kv.put(&key, config.clone().into()).await.unwrap();
    agent
        .until("applied", |s| s.applied_version == Some(v.0))
        .await;
    until_served(port, "a").await;
    let written = std::fs::read_to_string(etc.join("haproxy.cfg")).unwrap();
    assert!(
        written.ends_with(&format!("{config}\n")),
        "the value is in the file"
    );
    assert!(written.contains(&format!("stats socket {}", run.join("s.sock").display())));
    assert!(run.join("m.sock").exists() && run.join("s.sock").exists());
    assert!(!dir.path().join("agent").join("haproxy.cfg").exists());
    agent.stop().await;
}

/// A backend that holds its answer to the first request until released.
struct HeldBackend {
    port: u16,
    arrived: std::sync::mpsc::Receiver<()>,
    release: std::sync::mpsc::Sender<()>,
}

impl HeldBackend {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (arrived_tx, arrived) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let released = std::sync::Mutex::new(released);
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
                // HAProxy's health checks connect and close without a request.
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if got.is_empty() {
                    continue;
                }
                let _ = arrived_tx.send(());
                let _ = released
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(60));
                let body = "held\n";
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        Self {
            port,
            arrived,
            release,
        }
    }
}

/// Stops an agent (drain `drain`) while a request is in flight; whether that request got its
/// answer.
async fn in_flight_request_survives_stop(drain: Duration) -> Option<bool> {
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let key = KeyPath::parse("/vamp/drain/haproxy").unwrap();
    let held = HeldBackend::start();
    let port = free_port();
    let g = gateway(&format!(
        "name: drain/{port}\nport: {port}\nroutes:\n  held: {{weight: 100%}}\n"
    ));
    let g = with_targets(g, 0, vec![target("held", None, i64::from(held.port))]);
    let opts = RenderOptions::default()
        .with_socket_dir(dir.path().to_str().unwrap())
        .with_bind_address("127.0.0.1");
    kv.put(&key, render(&[g], &opts).unwrap().render().into())
        .await
        .unwrap();
    let metrics: Arc<DynMetricsStore> = Arc::new(InMemoryMetrics::new());
    let events: Arc<DynEventStore> = Arc::new(InMemoryMetrics::new());
    let mut agent = Running::start(kv, &key, dir.path(), metrics, events, |o| {
        o.with_drain(drain)
    })
    .await?;
    agent
        .until("serving", |s| s.ready && s.applied_version.is_some())
        .await;
    // A request reaches the backend and waits there.
    let client = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        Some(out)
    });
    held.arrived
        .recv_timeout(Duration::from_secs(30))
        .expect("the request reached the backend");
    // Stop the agent; with a drain, the listener closes first while the request stays open.
    let stop = tokio::spawn(agent.stop());
    if !drain.is_zero() {
        support_wait_refused(port).await;
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(20), stop).await;
        let _ = held.release.send(());
        let out = tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        return Some(out.is_some_and(|o| o.starts_with("HTTP/1.1 200")));
    }
    let _ = held.release.send(());
    let out = tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), stop)
        .await
        .expect("the agent stops once the request is done")
        .unwrap();
    Some(out.is_some_and(|o| o.starts_with("HTTP/1.1 200") && o.ends_with("held\n")))
}

/// Waits (bounded) until nothing accepts connections on `port`.
async fn support_wait_refused(port: u16) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_stop_lets_the_request_in_flight_finish_and_a_hard_one_does_not() {
    let Some(drained) = in_flight_request_survives_stop(Duration::from_secs(10)).await else {
        // No HAProxy here (haproxy() panics when one is required).
        return;
    };
    assert!(
        drained,
        "with a drain, the request in flight gets its answer"
    );
    let hard = in_flight_request_survives_stop(Duration::ZERO)
        .await
        .unwrap();
    assert!(!hard, "without one, HAProxy is stopped under the request");
}

/// Two agents on one machine (two control planes) given the same gateway port: HAProxy binds
/// with SO_REUSEPORT, so without care both would listen there and share each other's traffic.
/// The second leaves that gateway out, says so, and applies the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_another_agent_s_haproxy_serves_is_left_out_not_shared() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let (shared, own) = (free_port(), free_port());
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = KeyPath::parse("/vamp/shared/haproxy").unwrap();
    let render_for = |dir: &std::path::Path, gateways: &[(u16, &HttpBackend, &str)]| {
        let gs: Vec<_> = gateways
            .iter()
            .map(|(port, backend, name)| {
                let g = gateway(&format!(
                    "name: {name}/{port}\nport: {port}\nroutes:\n  r: {{weight: 100%}}\n"
                ));
                with_targets(g, 0, vec![backend.target("r")])
            })
            .collect();
        let opts = RenderOptions::default()
            .with_socket_dir(dir.to_str().unwrap())
            .with_bind_address("127.0.0.1");
        render(&gs, &opts).unwrap().render()
    };
    let kv1: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    kv1.put(
        &key,
        render_for(dir1.path(), &[(shared, &a, "first")]).into(),
    )
    .await
    .unwrap();
    let metrics = || -> Arc<DynMetricsStore> { Arc::new(InMemoryMetrics::new()) };
    let events = || -> Arc<DynEventStore> { Arc::new(InMemoryMetrics::new()) };
    let Some(mut first) = Running::start(kv1, &key, dir1.path(), metrics(), events(), |o| o).await
    else {
        return;
    };
    first
        .until("serving", |s| s.ready && s.applied_version.is_some())
        .await;
    until_served(shared, "a").await;

    let kv2: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    kv2.put(
        &key,
        render_for(
            dir2.path(),
            &[(shared, &b, "second"), (own, &b, "second-own")],
        )
        .into(),
    )
    .await
    .unwrap();
    let mut second = Running::start(kv2, &key, dir2.path(), metrics(), events(), |o| o)
        .await
        .unwrap();
    let status = second
        .until("the shared port left out", |s| {
            s.applied_version.is_some() && !s.unavailable.is_empty()
        })
        .await;
    assert_eq!(status.unavailable.len(), 1, "{:?}", status.unavailable);
    assert!(
        status.unavailable[0].contains(&format!("127.0.0.1:{shared}")),
        "{:?}",
        status.unavailable
    );
    until_served(own, "b").await;
    let counts = split(shared, 50).await;
    assert_eq!(
        counts.get("a").copied(),
        Some(50),
        "the first agent's gateway keeps its port alone: {counts:?}"
    );
    // The first agent's own reloads still count its listeners as its own.
    first
        .until("still serving", |s| s.unavailable.is_empty())
        .await;
    second.stop().await;
    first.stop().await;
}

/// A value after a quiet period is applied at once; a burst that follows within the
/// coalescing window is applied once, at the window's end, with its latest value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_change_is_applied_at_once_and_a_burst_after_it_once() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPath::parse("/vamp/burst/haproxy").unwrap();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let config = |w: (u8, u8)| gateway_config(port, dir.path(), &a, &b, w, "roundrobin").0;
    kv.put(&key, config((100, 0)).into()).await.unwrap();
    let metrics: Arc<DynMetricsStore> = Arc::new(InMemoryMetrics::new());
    let events: Arc<DynEventStore> = Arc::new(InMemoryMetrics::new());
    // A long window, so that the burst below surely falls inside it.
    let Some(mut agent) = Running::start(Arc::clone(&kv), &key, dir.path(), metrics, events, |o| {
        o.with_debounce(Duration::from_secs(3))
    })
    .await
    else {
        return;
    };
    // The first value is applied (the benchmark agent_latency measures how soon).
    let first = agent
        .until("the first value applied", |s| s.applied_version.is_some())
        .await;
    let applied_before = first.counts.noop + first.counts.dynamic + first.counts.reload;
    // A burst of ten values right after: the last one wins, applied once.
    let mut last = 0;
    for i in 1..=10u8 {
        last = kv
            .put(&key, config((100 - i * 5, i * 5)).into())
            .await
            .unwrap()
            .0;
    }
    let done = agent
        .until("the burst's last value applied", |s| {
            s.applied_version == Some(last)
        })
        .await;
    let applied = done.counts.noop + done.counts.dynamic + done.counts.reload - applied_before;
    assert_eq!(applied, 1, "the burst is one update: {:?}", done.counts);
    agent.stop().await;
}

/// Two agents on one host applying the same value, each binding the gateways on an address of
/// its own and keeping its sockets in a directory of its own (`with_bind_address`,
/// `with_rendered_socket_dir`): both apply all of it, nothing left out, each serves on its
/// address, and one stopped leaves the other serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_sharing_a_host_serve_on_their_own_addresses() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let port = free_port();
    let key = KeyPath::parse("/vamp/host/haproxy").unwrap();
    // As a control plane renders it for its agents: all addresses, Vamp's socket directory.
    let g = gateway(&format!(
        "name: host/{port}\nport: {port}\nroutes:\n  a: {{weight: 50%}}\n  b: {{weight: 50%}}\n"
    ));
    let g = with_targets(
        with_targets(g, 0, vec![a.target("a")]),
        1,
        vec![b.target("b")],
    );
    // A second gateway in front of the first, as a deployment's gateway is in front of its
    // cluster's: a hop to 127.0.0.1, this same HAProxy.
    let front = free_port();
    let f = gateway(&format!(
        "name: host/{front}\nport: {front}\nroutes:\n  '[127.0.0.1:{port}]': {{weight: 100%}}\n"
    ));
    let f = with_targets(
        f,
        0,
        vec![target("hop", Some("127.0.0.1"), i64::from(port))],
    );
    let value = render(
        &[g, f],
        &RenderOptions::default().with_socket_dir("/usr/local/vamp"),
    )
    .unwrap()
    .render();
    assert!(value.contains(&format!("bind 0.0.0.0:{port}")), "{value}");
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    kv.put(&key, value.into()).await.unwrap();
    let metrics = || -> Arc<DynMetricsStore> { Arc::new(InMemoryMetrics::new()) };
    let events = || -> Arc<DynEventStore> { Arc::new(InMemoryMetrics::new()) };
    let mut agents = Vec::new();
    let mut dirs = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let dir = tempfile::tempdir().unwrap();
        let address: std::net::IpAddr = ip.parse().unwrap();
        let Some(mut agent) = Running::start(
            Arc::clone(&kv),
            &key,
            dir.path(),
            metrics(),
            events(),
            |o| {
                o.with_bind_address(address)
                    .with_rendered_socket_dir("/usr/local/vamp")
                    // The first one's HAProxy outlives it (as when an agent is killed).
                    .with_keep_haproxy(ip == "127.0.0.2")
            },
        )
        .await
        else {
            return;
        };
        let status = agent
            .until("applied", |s| s.ready && s.applied_version.is_some())
            .await;
        assert!(status.unavailable.is_empty(), "{:?}", status.unavailable);
        agents.push(agent);
        dirs.push(dir);
    }
    let served = |ip: &'static str, port: u16| {
        tokio::task::spawn_blocking(move || {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..20 {
                let mut s = std::net::TcpStream::connect((ip, port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                std::io::Write::write_all(
                    &mut s,
                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
                let mut text = String::new();
                std::io::Read::read_to_string(&mut s, &mut text).unwrap();
                let body = text.split_once("\r\n\r\n").map_or("", |x| x.1);
                seen.insert(body.split_whitespace().next().unwrap_or("").to_owned());
            }
            seen
        })
    };
    for ip in ["127.0.0.2", "127.0.0.3"] {
        for p in [port, front] {
            let seen = served(ip, p).await.unwrap();
            assert_eq!(
                seen,
                ["a", "b"].iter().map(|s| (*s).to_owned()).collect(),
                "{ip}:{p}"
            );
        }
    }
    // Each HAProxy has its own sockets.
    for d in &dirs {
        assert!(
            std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "sock")),
            "sockets in {}",
            d.path().display()
        );
    }
    // An agent restarted (its HAProxy left serving) adopts its HAProxy and keeps every
    // gateway: the other agent's listeners on the same ports are not in its way.
    agents.remove(0).stop().await;
    let seen = served("127.0.0.2", front).await.unwrap();
    assert_eq!(
        seen.len(),
        2,
        "the first agent's HAProxy serves on: {seen:?}"
    );
    let mut again = Running::start(
        Arc::clone(&kv),
        &key,
        dirs[0].path(),
        metrics(),
        events(),
        |o| {
            o.with_bind_address("127.0.0.2".parse().unwrap())
                .with_rendered_socket_dir("/usr/local/vamp")
        },
    )
    .await
    .unwrap();
    let status = again
        .until("adopted and applied", |s| {
            s.adopted && s.applied_version.is_some()
        })
        .await;
    assert!(status.unavailable.is_empty(), "{:?}", status.unavailable);
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let seen = served(ip, front).await.unwrap();
        assert_eq!(seen.len(), 2, "{ip}: {seen:?}");
    }
    again.stop().await;
    agents.remove(0).stop().await;
}
