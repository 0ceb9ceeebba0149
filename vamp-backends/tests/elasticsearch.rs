//! The Elasticsearch events and metrics store against a server speaking Elasticsearch's HTTP
//! API: `VAMP_ELASTICSEARCH_URL` (scripts/test.sh starts `osmem-server`, an in-memory
//! stand-in from PyPI, since no Elasticsearch can be installed on this project's machines),
//! required with CI=true or VAMP_TEST_INTEGRATION=1; and a real Elasticsearch when
//! `VAMP_TEST_ELASTICSEARCH_URL` is set (`#[ignore]`d otherwise).
#![cfg(feature = "metrics-elasticsearch")]

use std::sync::Arc;
use std::time::Duration;

mod fault_proxy;

use fault_proxy::FaultProxy;
use vamp_backends::metrics::MetricsBackendConfig;
use vamp_backends::metrics::elasticsearch::{ElasticsearchOptions, ElasticsearchStore};
use vamp_core::conformance::kv::Faults;
use vamp_core::metrics::{DynEventStore, DynMetricsStore, MetricsStore, RequestRecord};

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("VAMP_TEST_INTEGRATION").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn address() -> Option<String> {
    match std::env::var("VAMP_ELASTICSEARCH_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                !required(),
                "VAMP_ELASTICSEARCH_URL is required for integration tests (scripts/test.sh starts osmem-server)"
            );
            eprintln!("SKIPPED: set VAMP_ELASTICSEARCH_URL to run the Elasticsearch tests");
            None
        }
    }
}

/// Index names of their own for each test (the server is shared).
fn options(address: &str, test: &str) -> ElasticsearchOptions {
    let run = format!("{}-{test}", std::process::id());
    ElasticsearchOptions::new(address)
        .with_index(format!("vamp-pulse-t{run}"))
        .with_logs(format!("vamp-vga-t{run}"))
        .with_refresh_records(true)
}

async fn conformance(address: &str, test: &str) {
    let now = vamp_core::time::now_millis();
    let store = ElasticsearchStore::connect_with_clock(options(address, test), move || now)
        .await
        .unwrap_or_else(|e| panic!("Elasticsearch at {address}: {e}"));
    let events: Arc<DynEventStore> = Arc::new(store.clone());
    vamp_core::conformance::metrics::run_all_events(&*events, test, now).await;
    let metrics: Arc<DynMetricsStore> = Arc::new(store);
    vamp_core::conformance::metrics::request_metrics(&*metrics, test, now).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_passes_the_events_and_metrics_conformance_suites() {
    let Some(address) = address() else { return };
    conformance(&address, "conformance").await;
}

/// A real Elasticsearch (7 or 8): `VAMP_TEST_ELASTICSEARCH_URL=http://host:9200`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Elasticsearch: VAMP_TEST_ELASTICSEARCH_URL"]
async fn a_real_elasticsearch_passes_the_conformance_suites() {
    let address = std::env::var("VAMP_TEST_ELASTICSEARCH_URL")
        .expect("VAMP_TEST_ELASTICSEARCH_URL=http://host:9200");
    conformance(&address, "real").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_selects_the_store_and_credentials_stay_out_of_errors() {
    let Some(address) = address() else { return };
    let hostport = address.trim_start_matches("http://").trim_end_matches('/');
    let run = std::process::id();
    let built = MetricsBackendConfig::from_url(&format!(
        "elasticsearch://{hostport}?index=vamp-pulse-url{run}&logs=vamp-vga-url{run}&refresh=wait_for"
    ))
    .unwrap()
    .build()
    .await
    .expect("build");
    assert!(built.events.to_string().contains("ElasticsearchStore"));
    let m = built
        .requests
        .request_metrics("nobody", Duration::from_secs(60))
        .await
        .expect("metrics of a frontend without records");
    assert_eq!(m.requests, 0);

    // Nothing listens here: the error names the server, never the password.
    let err = MetricsBackendConfig::from_url("elasticsearch://vamp:s3cr3t-pw@127.0.0.1:1?index=x")
        .unwrap()
        .build()
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.is_temporary(), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("s3cr3t-pw"), "{shown}");
    let config = MetricsBackendConfig::from_url("es://vamp:s3cr3t-pw@h:9200").unwrap();
    assert!(!format!("{config:?}").contains("s3cr3t-pw"));
    for bad in ["es://h?refresh=sometimes", "es://h?index=Vamp%2A"] {
        let err = match MetricsBackendConfig::from_url(bad) {
            Err(e) => e,
            Ok(c) => c.build().await.expect_err(bad),
        };
        assert!(
            matches!(err, vamp_core::Error::InvalidConfig { .. }),
            "{bad}: {err}"
        );
    }
}

fn records(frontend: &str, n: usize, now: i64) -> Vec<RequestRecord> {
    (0..n)
        .map(|i| RequestRecord {
            timestamp_ms: now - 1000 - i as i64,
            frontend: frontend.to_owned(),
            backend: "b".into(),
            server: Some("s".into()),
            status: Some(if i % 7 == 0 { 503 } else { 200 }),
            total_time_ms: (i % 50) as u64,
            bytes_read: 10,
        })
        .collect()
}

/// An answer lost after Elasticsearch stored the batch: the batch sent again stores nothing
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_after_a_lost_answer_is_not_stored_twice() {
    let Some(address) = address() else { return };
    let target = address.trim_start_matches("http://").trim_end_matches('/');
    let proxy = FaultProxy::start(
        target.to_owned(),
        Box::new(|| Box::pin(async {}) as futures_util::future::BoxFuture<'static, ()>),
    )
    .await;
    let now = vamp_core::time::now_millis();
    let opts = options(&format!("http://127.0.0.1:{}", proxy.port), "resend")
        .with_request_timeout(Duration::from_secs(5));
    let store = ElasticsearchStore::connect_with_clock(opts, move || now)
        .await
        .expect("connect through the proxy");
    let batch = records("resent", 300, now);
    // The server's answer is cut after a few bytes: the request arrived, the answer did not.
    proxy.cut_after(16);
    let first = store.record(batch.clone()).await;
    assert!(
        first.as_ref().is_err_and(vamp_core::Error::is_temporary),
        "a lost answer is a temporary failure: {first:?}"
    );
    proxy.disarm();
    store
        .record(batch.clone())
        .await
        .expect("the same batch again");
    let m = store
        .request_metrics("resent", Duration::from_secs(60))
        .await
        .expect("metrics");
    assert_eq!(m.requests, 300, "every record once");
    assert_eq!(m.status.server_error, 300_u64.div_ceil(7));
    // A different batch with equal records is stored (ids come from the batch, not the record).
    store
        .record(batch[..10].to_vec())
        .await
        .expect("another batch");
    let m = store
        .request_metrics("resent", Duration::from_secs(60))
        .await
        .expect("metrics");
    assert_eq!(m.requests, 310);
}

/// The times returned for a window are every request's, across pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_times_are_read_across_pages() {
    let Some(address) = address() else { return };
    let now = vamp_core::time::now_millis();
    let store = ElasticsearchStore::connect_with_clock(options(&address, "times"), move || now)
        .await
        .expect("connect");
    let batch = records("paged", 2500, now);
    for chunk in batch.chunks(500) {
        store.record(chunk.to_vec()).await.expect("record");
    }
    let mut times = store
        .response_times("paged", Duration::from_secs(60))
        .await
        .expect("times");
    times.sort_unstable();
    let mut expected: Vec<u64> = batch.iter().map(|r| r.total_time_ms).collect();
    expected.sort_unstable();
    assert_eq!(times, expected, "all 2,500 times, equal ones included");
}
