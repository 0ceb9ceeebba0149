//! The gateway agent's measurements through the `metrics` facade: one test in its own binary,
//! because it installs the global recorder.
#![cfg(feature = "agent")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::*;
use vamp_core::kv::{DynKeyValueStore, KeyPath, KeyValueStoreExt};
use vamp_core::memory::InMemoryKv;
use vamp_haproxy::agent::{AgentOptions, AgentStatus, GatewayAgent};

fn config(port: u16, backend: u16, weight: u8) -> String {
    format!(
        "frontend f\n  bind 127.0.0.1:{port}\n  mode http\n  default_backend b\n\nbackend b\n  mode http\n  server s1 127.0.0.1:{backend} weight {weight}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_counted_and_steps_timed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this binary");
    let Some(bin) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let key = KeyPath::parse("/vamp/metrics/gateways/haproxy/1.7/configuration").unwrap();
    let agent = GatewayAgent::new(
        Arc::clone(&kv),
        AgentOptions::new(key.clone(), dir.path().join("agent"))
            .with_haproxy_bin(bin)
            .with_socket_dir(dir.path()),
    );
    let mut status = agent.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let (port, backend) = (free_port(), free_port());
    let mut wait = async |what: &str, f: &dyn Fn(&AgentStatus) -> bool| {
        tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| f(s)))
            .await
            .unwrap_or_else(|_| panic!("{what}"))
            .unwrap();
    };
    kv.put(&key, config(port, backend, 10).into())
        .await
        .unwrap();
    wait("reload", &|s| s.counts.reload == 1).await;
    kv.put(&key, config(port, backend, 20).into())
        .await
        .unwrap();
    wait("dynamic", &|s| s.counts.dynamic == 1).await;
    kv.put(&key, config(port, backend, 20).into())
        .await
        .unwrap();
    wait("noop", &|s| s.counts.noop == 1).await;
    // Passes the allow-list, fails `haproxy -c` (two backends of one name).
    kv.put(
        &key,
        "backend broken\n  mode http\nbackend broken\n  mode http\n".into(),
    )
    .await
    .unwrap();
    wait("rejected", &|s| s.counts.rejected == 1).await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    let mut counters = std::collections::HashMap::new();
    let mut histograms = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let label = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect::<Vec<_>>()
            .join(",");
        let name = format!("{}{{{label}}}", key.name());
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(v) => {
                histograms.insert(name, v.len());
            }
            DebugValue::Gauge(_) => {}
        }
    }
    for outcome in ["reload", "dynamic", "noop", "rejected"] {
        assert_eq!(
            counters.get(&format!(
                "vamp_gateway_agent_updates_total{{outcome={outcome}}}"
            )),
            Some(&1),
            "{counters:?}"
        );
    }
    for (step, at_least) in [
        ("render", 4),
        ("validate", 1),
        ("reload", 1),
        ("dynamic", 1),
    ] {
        let n = histograms
            .get(&format!("vamp_gateway_agent_step_seconds{{step={step}}}"))
            .copied()
            .unwrap_or(0);
        assert!(n >= at_least, "{step}: {n} timings in {histograms:?}");
    }
}
