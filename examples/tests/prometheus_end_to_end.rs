//! The Prometheus metrics store against a real Prometheus (Debian's, `VAMP_PROMETHEUS_BIN`,
//! which scripts/test.sh installs; required with CI=true or VAMP_TEST_INTEGRATION=1) scraping a
//! real HAProxy's built-in exporter and the gateway agent's: requests through two routes, some
//! failing, some slow; the figures read back through the store count exactly what the client
//! sent and saw, and the latencies are within the histogram's resolution.
#![cfg(feature = "prometheus")]

mod gateway_fixture;
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use gateway_fixture::{Fixture, traffic};
use support::{eventually, free_port, haproxy_or_skip, required};
use vamp_backends::metrics::prometheus::{PrometheusOptions, PrometheusStore, bucket_upper_ms};
use vamp_core::conformance::metrics::{SentRequest, metrics_of_traffic};
use vamp_core::metrics::{DynMetricsStore, MetricsStore, REQUEST_DURATION_HISTOGRAM};

struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What request `i` asks for: every fifth fails, every tenth waits 70 ms, the others 15 ms.
fn path(i: usize) -> String {
    let wait = if i % 10 == 3 { 70 } else { 15 };
    if i.is_multiple_of(5) {
        format!("/fail/sleep/{wait}")
    } else {
        format!("/sleep/{wait}")
    }
}

/// The bounds on request `i`'s total time: what the backend waits, plus 25 ms for HAProxy and
/// the loopback.
fn bounds(i: usize) -> std::ops::RangeInclusive<u64> {
    let wait = if i % 10 == 3 { 70 } else { 15 };
    wait..=wait + 25
}

/// One instant query's result, as `(labels, [timestamp, value])` pairs.
async fn instant(
    client: &reqwest::Client,
    base: &str,
    query: &str,
) -> Vec<(serde_json::Value, f64, f64)> {
    let Ok(r) = client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
    else {
        return Vec::new();
    };
    let body: serde_json::Value =
        serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default();
    body.pointer("/data/result")
        .and_then(|r| r.as_array())
        .map(|series| {
            series
                .iter()
                .filter_map(|s| {
                    let v = s.get("value")?;
                    Some((
                        s.get("metric").cloned().unwrap_or_default(),
                        v.get(0)?.as_f64()?,
                        v.get(1)?.as_str()?.parse().ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_back_what_haproxy_served() {
    let Ok(bin) = std::env::var("VAMP_PROMETHEUS_BIN") else {
        assert!(
            !required(),
            "VAMP_PROMETHEUS_BIN is required (scripts/test.sh installs Prometheus)"
        );
        eprintln!("SKIPPED: set VAMP_PROMETHEUS_BIN to run the Prometheus test");
        return;
    };
    if !haproxy_or_skip() {
        return;
    }
    // The agent's exporter (this process's metrics recorder) with the request-time histogram.
    let agent_port = free_port();
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], agent_port))
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(REQUEST_DURATION_HISTOGRAM.into()),
            &vamp_core::metrics::REQUEST_DURATION_BUCKETS,
        )
        .unwrap()
        .install()
        .expect("the agent's exporter");
    // HAProxy's exporter, from the base configuration the operator gives the agent.
    let haproxy_port = free_port();
    let base = format!(
        "{}\nfrontend prometheus\n  bind 127.0.0.1:{haproxy_port}\n  http-request use-service prometheus-exporter if {{ path /metrics }}\n",
        vamp_haproxy::BASE_CONFIG
    );
    let fixture = Fixture::start(Some(base), None).await;

    let dir = tempfile::tempdir().unwrap();
    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: haproxy\n    static_configs: [{{targets: ['127.0.0.1:{haproxy_port}']}}]\n  - job_name: agent\n    static_configs: [{{targets: ['127.0.0.1:{agent_port}']}}]\n"
        ),
    )
    .unwrap();
    let child = Command::new(&bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    let _prometheus = Prometheus { child, _dir: dir };
    let base_url = format!("http://127.0.0.1:{prom_port}");
    let now = Arc::new(AtomicI64::new(0));
    let clock = Arc::clone(&now);
    let store = eventually("Prometheus answers", Duration::from_secs(30), async || {
        let clock = Arc::clone(&clock);
        PrometheusStore::connect_with_clock(PrometheusOptions::new(&base_url), move || {
            clock.load(Ordering::SeqCst)
        })
        .await
        .ok()
    })
    .await;
    let store: Arc<DynMetricsStore> = Arc::new(store);
    assert!(
        !store.metrics_capabilities().record && !store.metrics_capabilities().exact_percentiles
    );
    let client = reqwest::Client::new();
    let fe = |route: &str| fixture.frontends[route].clone();

    // Warm-up: the agent's histogram series exist once a request was logged; the window
    // measured later starts after the scrape that saw the warm-up.
    let warm = traffic(fixture.port, 6, |_| "/".into()).await;
    assert_eq!(warm.len(), 2, "both routes served: {warm:?}");
    // The series the store reads for a route (its backend's responses, the agent's
    // histogram), and a query's latest value and the time of the sample it comes from.
    let series = |route: &str| {
        [
            format!(
                "haproxy_backend_http_responses_total{{proxy=\"{}\"}}",
                fe(route)
            ),
            format!(
                "{REQUEST_DURATION_HISTOGRAM}_count{{frontend=\"{}\"}}",
                fe(route)
            ),
        ]
    };
    // `timestamp()` of a selector is its sample's scrape time (of an aggregation it would be
    // the evaluation time).
    let latest = async |selector: &str| -> Option<(f64, f64)> {
        let value = instant(&client, &base_url, &format!("sum({selector})"))
            .await
            .first()?
            .2;
        let at = instant(&client, &base_url, &format!("min(timestamp({selector}))"))
            .await
            .first()?
            .2;
        Some((value, at))
    };
    let scraped = async |what: &str, query: &str, at_least: f64, after: f64| -> f64 {
        eventually(
            &format!("{what}: {query}"),
            Duration::from_secs(30),
            async || {
                latest(query)
                    .await
                    .filter(|(v, t)| *v >= at_least && *t > after)
                    .map(|(_, t)| t)
            },
        )
        .await
    };
    let mut seen_at = 0.0f64;
    for (route, requests) in &warm {
        for query in series(route) {
            let t = scraped(
                "Prometheus scraped the warm-up",
                &query,
                requests.len() as f64,
                0.0,
            )
            .await;
            seen_at = seen_at.max(t);
        }
    }
    // A scrape of every series more than a second after that one: the window's baseline.
    for (route, requests) in &warm {
        for query in series(route) {
            scraped(
                "a scrape after the warm-up",
                &query,
                requests.len() as f64,
                seen_at + 1.0,
            )
            .await;
        }
    }

    let measured = traffic(fixture.port, 120, path).await;
    assert_eq!(measured.len(), 2, "both routes served: {measured:?}");
    // A scrape that saw every request.
    for (route, requests) in &measured {
        let n = (requests.len() + warm[route].len()) as f64;
        for query in series(route) {
            scraped("Prometheus scraped the traffic", &query, n, seen_at).await;
        }
    }
    let end_ms = vamp_core::time::now_millis();
    now.store(end_ms, Ordering::SeqCst);
    // The window starts after the scrape that saw the warm-up (whole seconds).
    let window = Duration::from_secs((end_ms as f64 / 1000.0 - seen_at).floor() as u64);
    for (route, requests) in &measured {
        let sent: Vec<SentRequest> = requests
            .iter()
            .map(|(i, status)| SentRequest {
                status: Some(*status),
                time_ms: bounds(*i),
            })
            .collect();
        assert!(
            sent.iter().any(|r| r.status == Some(500)),
            "{route}: some failed"
        );
        metrics_of_traffic(&*store, &fe(route), window, &sent, bucket_upper_ms).await;
    }
    fixture.stop().await;
}
