//! Events and metrics store selection, and the stores behind features.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vamp_core::Error;
use vamp_core::memory::InMemoryMetrics;
use vamp_core::metrics::{DynEventStore, DynMetricsStore};

use crate::url::BackendUrl;
use crate::{Secret, invalid};

#[cfg(feature = "metrics-elasticsearch")]
pub mod elasticsearch;
#[cfg(feature = "metrics-prometheus")]
pub mod prometheus;

/// Prometheus (request metrics only: it keeps no events).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PrometheusConfig {
    /// The address (default `http://127.0.0.1:9090`).
    pub address: String,
    /// User name (basic authentication).
    pub user: Option<String>,
    /// Password.
    pub password: Option<Secret>,
}

/// Elasticsearch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ElasticsearchConfig {
    /// The address (default `http://127.0.0.1:9200`).
    pub address: String,
    /// The pulse index base name (default `vamp-pulse`).
    pub index: String,
    /// The request-log index base name (default `vamp-vga-default`).
    #[serde(default = "default_logs")]
    pub logs: String,
    /// Wait for a refresh after writing request records (`?refresh=wait_for`).
    #[serde(default)]
    pub refresh_records: bool,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub password: Option<Secret>,
}

/// This project's URL for an Elasticsearch address as Vamp's settings give it
/// (`http://host:9200`, `https://user:pass@host`): `elasticsearch://host:9200`,
/// `elasticsearch+https://user:pass@host`.
///
/// ```
/// use vamp_backends::metrics::elasticsearch_url;
/// assert_eq!(elasticsearch_url("http://es:9200/"), "elasticsearch://es:9200");
/// assert_eq!(elasticsearch_url("https://u:p@es"), "elasticsearch+https://u:p@es");
/// ```
pub fn elasticsearch_url(address: &str) -> String {
    match address.strip_prefix("https://") {
        Some(rest) => format!("elasticsearch+https://{}", rest.trim_end_matches('/')),
        None => format!(
            "elasticsearch://{}",
            address.trim_start_matches("http://").trim_end_matches('/')
        ),
    }
}

fn default_logs() -> String {
    "vamp-vga-default".into()
}

/// Which events and metrics store, with its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum MetricsBackendConfig {
    /// In memory, fed by the gateway agent from HAProxy's logs.
    Memory,
    /// Elasticsearch (feature `metrics-elasticsearch`).
    Elasticsearch(ElasticsearchConfig),
    /// Prometheus for request metrics, events in memory (feature `metrics-prometheus`).
    Prometheus(PrometheusConfig),
}

/// The built stores: one object may serve both.
#[derive(Clone, Debug)]
pub struct MetricsBackends {
    /// Events.
    pub events: Arc<DynEventStore>,
    /// Request metrics.
    pub requests: Arc<DynMetricsStore>,
}

impl MetricsBackendConfig {
    /// Parses a URL: `memory://`,
    /// `elasticsearch://[user:pass@]host:9200?index=vamp-pulse&logs=vamp-vga-default`
    /// (also `es://`, `elasticsearch+https://`; `&refresh=wait_for` makes request records
    /// visible to searches before a write returns), `prometheus://host:9090[/prefix]`
    /// (`prometheus+https://`; request metrics only, events then stay in memory).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unknown scheme or a malformed URL.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let u = BackendUrl::parse(url)?;
        Ok(match u.scheme.as_str() {
            "memory" | "mem" => Self::Memory,
            "elasticsearch" | "es" | "elasticsearch+https" | "es+https" => {
                let tls = if u.scheme.ends_with("+https") {
                    "https"
                } else {
                    "http"
                };
                Self::Elasticsearch(ElasticsearchConfig {
                    address: u.hosts_with_port(9200).first().map_or_else(
                        || "http://127.0.0.1:9200".to_owned(),
                        |h| format!("{tls}://{h}"),
                    ),
                    index: u
                        .query
                        .get("index")
                        .cloned()
                        .unwrap_or_else(|| "vamp-pulse".into()),
                    logs: u.query.get("logs").cloned().unwrap_or_else(default_logs),
                    refresh_records: match u.query.get("refresh").map(String::as_str) {
                        None | Some("false") => false,
                        Some("wait_for" | "true") => true,
                        Some(other) => {
                            return Err(invalid(
                                "elasticsearch",
                                format!("refresh={other}: expected wait_for or false"),
                            ));
                        }
                    },
                    user: u.user.clone(),
                    password: u.password.clone().map(Secret),
                })
            }
            "prometheus" | "prometheus+https" => {
                let tls = if u.scheme.ends_with("+https") {
                    "https"
                } else {
                    "http"
                };
                let path = u.path.trim_end_matches('/');
                Self::Prometheus(PrometheusConfig {
                    address: u.hosts_with_port(9090).first().map_or_else(
                        || "http://127.0.0.1:9090".to_owned(),
                        |h| format!("{tls}://{h}{path}"),
                    ),
                    user: u.user.clone(),
                    password: u.password.clone().map(Secret),
                })
            }
            other => {
                return Err(invalid(
                    "metrics",
                    format!("unknown metrics scheme '{other}' (memory, elasticsearch, prometheus)"),
                ));
            }
        })
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Elasticsearch(_) => "elasticsearch",
            Self::Prometheus(_) => "prometheus",
        }
    }

    /// Builds the stores.
    ///
    /// # Errors
    /// [`Error::FeatureDisabled`] for a backend compiled out; connection errors.
    pub async fn build(self) -> Result<MetricsBackends, Error> {
        match self {
            Self::Memory => {
                let store = Arc::new(InMemoryMetrics::new());
                Ok(MetricsBackends {
                    events: Arc::clone(&store) as Arc<DynEventStore>,
                    requests: store,
                })
            }
            #[cfg(feature = "metrics-elasticsearch")]
            Self::Elasticsearch(c) => {
                let mut opts = elasticsearch::ElasticsearchOptions::new(c.address)
                    .with_index(c.index)
                    .with_logs(c.logs)
                    .with_refresh_records(c.refresh_records);
                if let (Some(user), Some(password)) = (c.user, c.password) {
                    opts = opts.with_credentials(user, password);
                }
                let store = Arc::new(elasticsearch::ElasticsearchStore::connect(opts).await?);
                Ok(MetricsBackends {
                    events: Arc::clone(&store) as Arc<DynEventStore>,
                    requests: store,
                })
            }
            #[cfg(not(feature = "metrics-elasticsearch"))]
            Self::Elasticsearch(_) => Err(Error::FeatureDisabled {
                backend: "elasticsearch",
                feature: "metrics-elasticsearch",
            }),
            #[cfg(feature = "metrics-prometheus")]
            Self::Prometheus(c) => {
                let mut opts = prometheus::PrometheusOptions::new(c.address);
                if let (Some(user), Some(password)) = (c.user, c.password) {
                    opts = opts.with_credentials(user, password);
                }
                let store = prometheus::PrometheusStore::connect(opts).await?;
                Ok(MetricsBackends {
                    events: Arc::new(InMemoryMetrics::new()),
                    requests: Arc::new(store),
                })
            }
            #[cfg(not(feature = "metrics-prometheus"))]
            Self::Prometheus(_) => Err(Error::FeatureDisabled {
                backend: "prometheus",
                feature: "metrics-prometheus",
            }),
        }
    }
}
