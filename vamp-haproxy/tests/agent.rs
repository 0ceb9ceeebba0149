//! The gateway agent end to end: a real HAProxy, real HTTP backends on loopback, and the
//! configuration written to a key-value store — in memory, and the real etcd and Redis that
//! scripts/test.sh starts (`VAMP_ETCD_ENDPOINTS`, `VAMP_REDIS_URL`; required with CI=true or
//! VAMP_TEST_INTEGRATION=1).
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
    let frontend = config
        .frontends
        .iter()
        .find(|f| f.bind.is_some())
        .unwrap()
        .lookup
        .clone();
    (config.render(), frontend)
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
    ) -> Option<Self> {
        let bin = haproxy()?;
        let options = AgentOptions::new(key.clone(), dir.join("agent"))
            .with_haproxy_bin(bin)
            .with_syslog("127.0.0.1:0".parse().unwrap())
            .with_health("127.0.0.1:0".parse().unwrap());
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
    let name = name.to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = name.clone();
        // A panicking request (refused, reset) is "not yet".
        let ok = tokio::task::spawn_blocking(move || who(&get(port, "/", &[])) == n)
            .await
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HAProxy never served {name} on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    )
    .await
    else {
        return;
    };

    // 1. A gateway written to the store serves traffic.
    let (first, frontend) = gateway_config(port, dir.path(), &a, &b, (100, 0), "roundrobin");
    let v1 = kv.put(&key, first.into()).await.unwrap();
    let status = agent
        .until("first apply", |s| s.applied_version == Some(v1.0))
        .await;
    assert!(status.ready && status.counts.reload == 1, "{status:?}");
    until_served(port, "a").await;
    assert_eq!(split(port, 20).await.get("a"), Some(&20));
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
    assert_eq!(rejected.len(), 1, "{rejected:?}");

    let (good, _) = gateway_config(port, dir.path(), &a, &b, (50, 50), "roundrobin");
    let v5 = kv.put(&key, good.into()).await.unwrap();
    let status = agent
        .until("recovery", |s| s.applied_version == Some(v5.0))
        .await;
    assert!(status.last_error.is_none(), "{status:?}");
    let c = split(port, 40).await;
    assert_eq!((c.get("a"), c.get("b")), (Some(&20), Some(&20)), "{c:?}");

    // 5. Killing HAProxy: the agent restarts it with the last good configuration.
    let pid = status.haproxy_pid.unwrap();
    std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let status = agent
        .until("restart", |s| {
            s.starts == 2 && s.ready && s.haproxy_pid != Some(pid)
        })
        .await;
    assert_eq!(status.applied_version, Some(v5.0));
    until_served(port, "a").await;

    // 6. The request metrics from HAProxy's logs match what was sent through the gateway's
    //    frontend: once the earlier requests' lines have all arrived, 30 more count 30.
    let mut before = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = metrics
            .request_metrics(&frontend, Duration::from_secs(600))
            .await
            .unwrap()
            .requests;
        if now == before {
            break;
        }
        before = now;
    }
    let sent = split(port, 30).await.values().sum::<usize>() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics
            .request_metrics(&frontend, Duration::from_secs(600))
            .await
            .unwrap();
        if m.requests >= before + sent {
            assert_eq!(m.requests, before + sent, "no request counted twice: {m:?}");
            assert_eq!(m.status.success, m.requests, "all 2xx: {m:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "logs missing: {m:?}, sent {sent} after {before}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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

fn test_key(store: &str) -> KeyPath {
    KeyPath::parse(&format!(
        "/vamp-agent-test-{}-{store}/gateways/haproxy/1.7/configuration",
        std::process::id()
    ))
    .unwrap()
}

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
