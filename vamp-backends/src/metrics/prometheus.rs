//! Prometheus as the request-metrics store: a small `reqwest` client of Prometheus' HTTP query
//! API (`/api/v1/query`), reading what Prometheus scrapes from HAProxy's built-in exporter and
//! from the gateway agent's.
//!
//! # Where the figures come from
//!
//! * **Requests and status classes**: HAProxy's exporter (Debian's HAProxy is built with it;
//!   add `http-request use-service prometheus-exporter if { path /metrics }` to a frontend of
//!   the agent's base configuration), `haproxy_backend_http_responses_total{proxy, code}` of
//!   the backend named like the frontend (a route's lookup name), else
//!   `haproxy_frontend_http_responses_total` (a gateway's lookup name, whose backend is
//!   `o_<name>`). Not the route frontend's own counters: HAProxy counts its health checks of
//!   the route's socket there, as client errors.
//! * **Response times**: the gateway agent's exporter (`--metrics ADDR`), the histogram
//!   `vamp_gateway_request_duration_seconds{frontend}` it fills from HAProxy's logs, with the
//!   buckets of [`DURATION_BUCKETS`].
//!
//! # Exact counts
//!
//! Counts are not PromQL's `increase()`, which extrapolates to the window's edges and gives
//! fractions: the store reads the raw samples of the window (`metric[window]`) and adds up
//! their differences, a drop counting as a counter reset (an HAProxy reload). A count is
//! therefore exact for the requests between the window's first and last scrape; requests
//! after the last scrape appear at the next one.
//!
//! # Percentiles
//!
//! Nearest-rank over the histogram: the upper bound of the bucket holding the rank (so never
//! below the true value, and at most one bucket above it); the capabilities say percentiles
//! are not exact. The average is the histogram's sum over its count.
//!
//! # What Prometheus does not do
//!
//! It takes no records ([`MetricsStore::record`] is not supported: Prometheus scrapes) and
//! keeps no events (use Elasticsearch or the in-memory store for the pulse).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use vamp_core::error::{Error, Result};
use vamp_core::metrics::{
    MetricsCapabilities, MetricsStore, RequestMetrics, RequestRecord, StatusClasses,
};

use crate::Secret;

pub use vamp_core::metrics::{
    REQUEST_DURATION_BUCKETS as DURATION_BUCKETS, REQUEST_DURATION_HISTOGRAM as DURATION_HISTOGRAM,
};

/// The upper bound (ms) of the [`DURATION_BUCKETS`] bucket holding `ms` (`+Inf` above the
/// last).
pub fn bucket_upper_ms(ms: f64) -> f64 {
    DURATION_BUCKETS
        .iter()
        .map(|b| b * 1000.0)
        .find(|b| ms <= *b)
        .unwrap_or(f64::INFINITY)
}

/// Settings of a [`PrometheusStore`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrometheusOptions {
    /// `http://host:9090` (or `https://…`, a path prefix allowed).
    pub address: String,
    /// Basic authentication (a proxy in front of Prometheus).
    pub user: Option<String>,
    /// Its password.
    pub password: Option<Secret>,
    /// Each request's timeout (default 10 s).
    pub request_timeout: Duration,
}

impl fmt::Debug for PrometheusOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusOptions")
            .field("address", &crate::url::redact(&self.address))
            .field("user", &self.user)
            .field("password", &self.password)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl PrometheusOptions {
    /// Options for `address` with the defaults.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            user: None,
            password: None,
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Sets basic-authentication credentials.
    #[must_use]
    pub fn with_credentials(mut self, user: impl Into<String>, password: Secret) -> Self {
        self.user = Some(user.into());
        self.password = Some(password);
        self
    }
}

type Clock = std::sync::Arc<dyn Fn() -> i64 + Send + Sync>;

/// Prometheus as the request-metrics store.
#[derive(Clone)]
pub struct PrometheusStore {
    http: reqwest::Client,
    base: String,
    label: String,
    opts: PrometheusOptions,
    clock: Clock,
}

impl fmt::Debug for PrometheusStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusStore")
            .field("options", &self.opts)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PrometheusStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// A PromQL string literal of `s` (double-quoted, escaped).
pub fn promql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// How much a counter grew over its samples (`[[t, "v"], …]`), a drop counting as a reset.
pub fn counter_increase(samples: &[Value]) -> f64 {
    let values: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.get(1)?.as_str()?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .collect();
    values
        .windows(2)
        .map(|w| if w[1] >= w[0] { w[1] - w[0] } else { w[1] })
        .sum()
}

impl PrometheusStore {
    /// Connects (checking that Prometheus answers `/api/v1/status/buildinfo`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad address; [`Error::Unavailable`] when Prometheus
    /// cannot be reached; [`Error::Backend`] when it refuses the credentials.
    pub async fn connect(opts: PrometheusOptions) -> Result<Self> {
        Self::connect_with_clock(opts, vamp_core::time::now_millis).await
    }

    /// [`PrometheusStore::connect`] with a clock (milliseconds since the Unix epoch): the end
    /// of every window.
    ///
    /// # Errors
    /// As [`PrometheusStore::connect`].
    pub async fn connect_with_clock(
        opts: PrometheusOptions,
        clock: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> Result<Self> {
        let base = opts.address.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.contains('@') {
            return Err(crate::invalid(
                "prometheus",
                "the address is http(s)://host:port[/prefix], credentials given apart",
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .build()
            .map_err(|e| crate::invalid("prometheus", e.to_string()))?;
        let label = format!("PrometheusStore({})", crate::url::redact(&base));
        let store = Self {
            http,
            base,
            label,
            opts,
            clock: std::sync::Arc::new(clock),
        };
        store.get("/api/v1/status/buildinfo", &[]).await?;
        Ok(store)
    }

    fn unavailable(&self, e: impl Into<vamp_core::error::BoxError>) -> Error {
        Error::Unavailable {
            backend: self.label.clone(),
            source: e.into(),
        }
    }

    /// A GET of the API; the `data` of a successful answer.
    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        let mut request = self.http.get(format!("{}{path}", self.base)).query(query);
        if let (Some(user), Some(password)) = (&self.opts.user, &self.opts.password) {
            request = request.basic_auth(user, Some(&password.0));
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.unavailable(e.without_url()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.unavailable(e.without_url()))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let error = || {
            format!(
                "{}: {}",
                body.get("errorType")
                    .and_then(Value::as_str)
                    .unwrap_or("error"),
                body.get("error").and_then(Value::as_str).unwrap_or("")
            )
        };
        match status.as_u16() {
            200 if body.get("status").and_then(Value::as_str) == Some("success") => {
                Ok(body.get("data").cloned().unwrap_or(Value::Null))
            }
            401 | 403 => Err(Error::Backend {
                backend: self.label.clone(),
                source: format!(
                    "Prometheus refused the credentials (HTTP {})",
                    status.as_u16()
                )
                .into(),
            }),
            400 | 422 => Err(Error::Invalid {
                what: "query",
                value: path.to_owned(),
                reason: format!("Prometheus refused it: {}", error()),
            }),
            503 | 429 | 500..=599 => {
                Err(self.unavailable(format!("HTTP {}: {}", status.as_u16(), error())))
            }
            _ => Err(Error::Backend {
                backend: self.label.clone(),
                source: format!("HTTP {}: {}", status.as_u16(), error()).into(),
            }),
        }
    }

    /// The raw samples of a range selector over `window` ending now: one entry per series,
    /// its labels and its samples.
    async fn samples(&self, selector: &str, window: Duration) -> Result<Vec<(Value, Vec<Value>)>> {
        let secs = window.as_secs().max(1);
        let now = (self.clock)() as f64 / 1000.0;
        let data = self
            .get(
                "/api/v1/query",
                &[
                    ("query", format!("{selector}[{secs}s]")),
                    ("time", format!("{now:.3}")),
                ],
            )
            .await?;
        if data.get("resultType").and_then(Value::as_str) != Some("matrix") {
            return Err(Error::Backend {
                backend: self.label.clone(),
                source: format!("a range query answered {}", data).into(),
            });
        }
        Ok(data
            .get("result")
            .and_then(Value::as_array)
            .map(|series| {
                series
                    .iter()
                    .map(|s| {
                        (
                            s.get("metric").cloned().unwrap_or(Value::Null),
                            s.get("values")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[async_trait]
impl MetricsStore for PrometheusStore {
    async fn record(&self, records: Vec<RequestRecord>) -> Result<()> {
        let _ = records;
        Err(Error::NotSupported {
            backend: self.label.clone(),
            operation: "record (Prometheus scrapes HAProxy's and the agent's exporters)",
        })
    }

    async fn request_metrics(&self, frontend: &str, window: Duration) -> Result<RequestMetrics> {
        let fe = promql_string(frontend);
        let mut status = StatusClasses::default();
        // A route's backend has the route frontend's name: its counters hold the responses to
        // the route's requests, while the frontend's also count HAProxy's own health checks of
        // the route's socket (connections without a request, as 4xx). A gateway's frontend
        // (whose backend is `o_<name>`) has no such probes.
        let mut responses = self
            .samples(
                &format!("haproxy_backend_http_responses_total{{proxy={fe}}}"),
                window,
            )
            .await?;
        if responses.is_empty() {
            responses = self
                .samples(
                    &format!("haproxy_frontend_http_responses_total{{proxy={fe}}}"),
                    window,
                )
                .await?;
        }
        for (labels, samples) in responses {
            let n = counter_increase(&samples).round() as u64;
            match labels.get("code").and_then(Value::as_str) {
                Some("1xx") => status.informational += n,
                Some("2xx") => status.success += n,
                Some("3xx") => status.redirection += n,
                Some("4xx") => status.client_error += n,
                Some("5xx") => status.server_error += n,
                _ => status.other += n,
            }
        }
        // The agent's histogram: buckets by `le`, sum and count.
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for (labels, samples) in self
            .samples(
                &format!("{DURATION_HISTOGRAM}_bucket{{frontend={fe}}}"),
                window,
            )
            .await?
        {
            let le = labels.get("le").and_then(Value::as_str).and_then(|l| {
                if l == "+Inf" {
                    Some(f64::INFINITY)
                } else {
                    l.parse().ok()
                }
            });
            if let Some(le) = le {
                buckets.push((le, counter_increase(&samples)));
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = async |name: &str| -> Result<f64> {
            let series = self
                .samples(
                    &format!("{DURATION_HISTOGRAM}_{name}{{frontend={fe}}}"),
                    window,
                )
                .await?;
            Ok(series.iter().map(|(_, s)| counter_increase(s)).sum())
        };
        let (sum, count) = (total("sum").await?, total("count").await?);
        let avg = (count > 0.0).then(|| sum / count * 1000.0);
        let pct = |p: f64| -> Option<f64> {
            let n = buckets.last()?.1;
            if n <= 0.0 {
                return None;
            }
            let rank = ((p / 100.0) * n).ceil().max(1.0);
            buckets
                .iter()
                .find(|(_, cumulative)| *cumulative >= rank)
                .map(|(le, _)| le * 1000.0)
        };
        Ok(RequestMetrics::from_counts(
            window,
            status,
            avg,
            [pct(50.0), pct(95.0), pct(99.0)],
        ))
    }

    fn metrics_capabilities(&self) -> MetricsCapabilities {
        let mut c = MetricsCapabilities::default();
        c.record = false;
        c.exact_percentiles = false;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_values_are_quoted_and_escaped() {
        assert_eq!(promql_string("abc"), "\"abc\"");
        assert_eq!(
            promql_string("a\"}) or vector(1) #\\\n"),
            "\"a\\\"}) or vector(1) #\\\\\\n\""
        );
    }

    #[test]
    fn counters_add_up_across_resets() {
        let s = |v: &[&str]| -> Vec<Value> {
            v.iter().enumerate().map(|(i, x)| json!([i, x])).collect()
        };
        assert_eq!(counter_increase(&s(&["0", "5", "12"])), 12.0);
        assert_eq!(
            counter_increase(&s(&["10", "15", "3", "7"])),
            5.0 + 3.0 + 4.0
        );
        assert_eq!(counter_increase(&s(&["4"])), 0.0);
        assert_eq!(counter_increase(&s(&["1", "NaN", "2"])), 1.0);
    }

    #[test]
    fn buckets() {
        assert_eq!(bucket_upper_ms(15.0), 25.0);
        assert_eq!(bucket_upper_ms(25.0), 25.0);
        assert_eq!(bucket_upper_ms(70.0), 100.0);
        assert_eq!(bucket_upper_ms(40_000.0), f64::INFINITY);
    }
}
