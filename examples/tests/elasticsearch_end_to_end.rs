//! The gateway agent shipping HAProxy's request records to Elasticsearch's HTTP API
//! (`osmem-server`, the stand-in scripts/test.sh installs: `VAMP_OSMEM_SERVER` is its binary;
//! required with CI=true or VAMP_TEST_INTEGRATION=1), end to end: requests through a real
//! HAProxy to two routes, every third to a failing path; the per-route counts read back from
//! the store equal what the client sent and saw; the store is stopped for a while and started
//! again (an in-memory server: it comes back empty), and every request of the outage and
//! after it is stored once.
#![cfg(feature = "elasticsearch")]

mod gateway_fixture;
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gateway_fixture::{Fixture, Seen, traffic};
use support::{eventually, free_port, haproxy_or_skip, required};
use vamp_backends::metrics::elasticsearch::{ElasticsearchOptions, ElasticsearchStore};
use vamp_core::conformance::metrics::{SentRequest, metrics_of_traffic};
use vamp_core::metrics::{DynMetricsStore, MetricsStore};

/// An osmem-server on `port`, stopped on drop.
struct Stand {
    child: Child,
}

impl Stand {
    fn start(bin: &str, port: u16) -> Self {
        let child = Command::new(bin)
            .args(["-addr", &format!("127.0.0.1:{port}"), "-no-stdin-watch"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("osmem-server starts");
        Self { child }
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path(i: usize) -> String {
    if i.is_multiple_of(3) {
        "/fail".into()
    } else {
        "/".into()
    }
}

fn add(a: &mut Seen, b: &Seen) {
    for (k, v) in b {
        a.entry(k.clone()).or_default().extend(v.iter().copied());
    }
}

/// What a route's records must say: each request's status; its time is not checked here.
fn sent(requests: &[(usize, u16)]) -> Vec<SentRequest> {
    requests
        .iter()
        .map(|(_, status)| SentRequest {
            status: Some(*status),
            time_ms: 0..=u64::MAX / 4,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_ships_every_request_to_elasticsearch_once_through_an_outage() {
    let Ok(bin) = std::env::var("VAMP_OSMEM_SERVER") else {
        assert!(
            !required(),
            "VAMP_OSMEM_SERVER is required (scripts/test.sh installs osmem-server)"
        );
        eprintln!("SKIPPED: set VAMP_OSMEM_SERVER to osmem-server's binary");
        return;
    };
    if !haproxy_or_skip() {
        return;
    }
    let es_port = free_port();
    let stand = Stand::start(&bin, es_port);
    let opts = ElasticsearchOptions::new(format!("http://127.0.0.1:{es_port}"))
        .with_logs("vamp-vga-e2e")
        .with_index("vamp-pulse-e2e")
        .with_request_timeout(Duration::from_secs(2));
    let store = eventually(
        "osmem-server answers",
        Duration::from_secs(20),
        async || ElasticsearchStore::connect(opts.clone()).await.ok(),
    )
    .await;
    let store: Arc<DynMetricsStore> = Arc::new(store);
    let fixture = Fixture::start(None, Some(Arc::clone(&store))).await;

    // Every record the client caused reaches the store (the agent's count: two per request,
    // logged by the gateway's frontend and by its route's), then the store's figures for the
    // gateway and per route equal the client's.
    let check = async |expected: &Seen, stored: u64, what: &str| {
        fixture
            .until(what, |s| s.logs.stored >= stored && s.logs.pending == 0)
            .await;
        let mut all: Vec<(usize, u16)> = expected.values().flatten().copied().collect();
        all.sort_unstable();
        let gateway = (fixture.gateway_frontend.clone(), all);
        let routes = expected
            .iter()
            .map(|(route, requests)| (fixture.frontends[route].clone(), requests.clone()));
        for (frontend, requests) in routes.chain([gateway]) {
            // Records become visible at the index's refresh.
            eventually(what, Duration::from_secs(20), async || {
                let m = store
                    .request_metrics(&frontend, Duration::from_secs(600))
                    .await
                    .ok()?;
                (m.requests >= requests.len() as u64).then_some(())
            })
            .await;
            metrics_of_traffic(
                &*store,
                &frontend,
                Duration::from_secs(600),
                &sent(&requests),
                |ms| ms,
            )
            .await;
        }
    };

    let first = traffic(fixture.port, 60, path).await;
    assert_eq!(first.len(), 2, "both routes served: {first:?}");
    assert!(
        first.values().flatten().any(|(_, s)| *s == 500),
        "the failing path failed"
    );
    check(&first, 120, "before the outage").await;

    // The store goes away; requests go on, and their records wait in the agent.
    drop(stand);
    let during = traffic(fixture.port, 90, path).await;
    let waiting = fixture
        .until("records wait while the store is away", |s| {
            s.logs.received >= 300 && s.logs.pending > 0
        })
        .await;
    assert_eq!(waiting.logs.dropped, 0);

    // It comes back (empty: the stand-in keeps nothing); the waiting records are sent again.
    let _stand = Stand::start(&bin, es_port);
    let after = traffic(fixture.port, 30, path).await;
    let mut expected = during.clone();
    add(&mut expected, &after);
    check(&expected, 360, "after the outage").await;
    let logs = fixture.status.borrow().logs;
    assert_eq!(
        (logs.received, logs.stored, logs.dropped, logs.refused),
        (360, 360, 0, 0),
        "the agent's own count: {logs:?}"
    );
    fixture.stop().await;
}
