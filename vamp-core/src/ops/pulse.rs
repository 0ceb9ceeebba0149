//! Metrics and health as Vamp computed them (`runtime.md` §5.4), published as events on a
//! schedule so that the API's `/metrics` and `/health` routes and the SLA loop read them.
//!
//! For every gateway (the deployments' and the stored ones) and each of its routes, over the
//! metrics window (default 30 s):
//!
//! * `rate` (requests per second, 2 decimals) and `responseTime` (average total time in ms,
//!   2 decimals; only with traffic): events of type `metrics` tagged
//!   `gateways:<g>`, `gateway`, `metrics:<name>` — per route `gateways:<g>`, `routes:<route>`,
//!   `route`, `metrics:<name>`;
//! * health over the health window (default 30 s): 0 when any request was answered with a
//!   5xx, else 1; events of type `health` tagged `gateways:<g>`, `gateway`, `health` (per
//!   route `gateways:<g>`, `routes:<route>`, `route`, `health`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::lookup::{LookupClass, lookup_name, route_lookup_name};
use crate::metrics::{DynEventStore, DynMetricsStore, RequestMetrics};
use crate::model::*;
use crate::node::Node;
use crate::ops::controller::{Clock, SystemClock};
use crate::persistence::DynPersistenceStore;

/// The events for one gateway or route: `tags` are its own tags (`gateways:<g>`, `gateway`
/// or `gateways:<g>`, `routes:<r>`, `route`).
pub fn events(
    tags: &[String],
    metrics: &RequestMetrics,
    health: &RequestMetrics,
    now_ms: i64,
) -> Vec<Event> {
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let event = |extra: &str, value: f64, kind: &str| {
        let mut t = tags.to_vec();
        t.push(extra.to_owned());
        Event::system(t, Node::Float(value), kind, now_ms)
    };
    let mut out = vec![event("metrics:rate", round(metrics.rate), "metrics")];
    if let Some(avg) = metrics
        .response_time_avg_ms
        .filter(|_| metrics.requests > 0)
    {
        out.push(event("metrics:responseTime", round(avg), "metrics"));
    }
    let healthy = if health.status.server_error > 0 {
        0.0
    } else {
        1.0
    };
    out.push(event("health", healthy, "health"));
    out
}

/// The loop that publishes the events. Runtime-agnostic.
pub struct PulseController {
    persistence: Arc<DynPersistenceStore>,
    /// Where a pass reads deployments and gateways from instead of the store, when set.
    catalog: Option<Arc<crate::ops::catalog::Catalog>>,
    metrics: Arc<DynMetricsStore>,
    events: Arc<DynEventStore>,
    clock: Arc<dyn Clock>,
    window: Duration,
    health_window: Duration,
}

impl fmt::Debug for PulseController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PulseController")
            .field("window", &self.window)
            .field("health_window", &self.health_window)
            .finish_non_exhaustive()
    }
}

impl PulseController {
    /// Publishes to `events` what `metrics` measured for the gateways in `persistence`.
    pub fn new(
        persistence: Arc<DynPersistenceStore>,
        metrics: Arc<DynMetricsStore>,
        events: Arc<DynEventStore>,
    ) -> Self {
        Self {
            persistence,
            catalog: None,
            metrics,
            events,
            clock: Arc::new(SystemClock),
            window: Duration::from_secs(30),
            health_window: Duration::from_secs(30),
        }
    }

    /// Reads deployments and gateways from `catalog` instead of listing and decoding the store
    /// every pass.
    #[must_use]
    pub fn with_catalog(mut self, catalog: Arc<crate::ops::catalog::Catalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Every gateway: the deployments' (cluster and deployment gateways), then the
    /// standalone ones.
    async fn gateways(&self) -> Result<Vec<Gateway>> {
        let catalog = self.catalog.as_deref();
        let deployments = crate::ops::catalog::deployments(catalog, &*self.persistence).await?;
        let mut gateways = crate::ops::reconcile::gateways(
            &deployments.into_iter().map(|d| d.value).collect::<Vec<_>>(),
        );
        gateways.extend(crate::ops::catalog::gateways(catalog, &*self.persistence).await?);
        Ok(gateways)
    }

    /// Uses `clock` for the events' time.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the metrics and health windows.
    #[must_use]
    pub fn with_windows(mut self, metrics: Duration, health: Duration) -> Self {
        self.window = metrics;
        self.health_window = health;
        self
    }

    /// One pass: the number of events published.
    ///
    /// # Errors
    /// The gateways could not be read, or a store failed.
    pub async fn tick(&self) -> Result<usize> {
        let now = self.clock.now_millis();
        let gateways = self.gateways().await?;
        let mut published = 0;
        for g in &gateways {
            let mut targets = vec![(
                lookup_name(LookupClass::Gateway, &g.name),
                vec![format!("gateways:{}", g.name), "gateway".to_owned()],
            )];
            for r in &g.routes {
                let path = r.path();
                targets.push((
                    route_lookup_name(&g.name, &path.segments),
                    vec![
                        format!("gateways:{}", g.name),
                        format!("routes:{}", path.normalized()),
                        "route".to_owned(),
                    ],
                ));
            }
            for (frontend, tags) in targets {
                let m = self.metrics.request_metrics(&frontend, self.window).await?;
                let h = if self.health_window == self.window {
                    m.clone()
                } else {
                    self.metrics
                        .request_metrics(&frontend, self.health_window)
                        .await?
                };
                for e in events(&tags, &m, &h, now) {
                    self.events.publish(e).await?;
                    published += 1;
                }
            }
        }
        Ok(published)
    }

    /// Runs passes every `period` until `shutdown` completes.
    pub async fn run(&self, period: Duration, shutdown: impl std::future::Future<Output = ()>) {
        crate::rt::every(period, shutdown, || async {
            let _ = self.tick().await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsl::{AnyArtifact, read_str};
    use crate::memory::{InMemoryMetrics, InMemoryPersistence};
    use crate::metrics::{EventStore, MetricsStore, RequestRecord};
    use crate::ops::controller::ManualClock;
    use crate::persistence::{ListOptions, PersistenceExt};

    const T0: i64 = 1_800_000_000_000;

    #[tokio::test]
    async fn rate_response_time_and_health_per_gateway_and_route() {
        let store = Arc::new(InMemoryPersistence::new());
        let clock = ManualClock::new(T0);
        let c = clock.clone();
        let metrics = Arc::new(InMemoryMetrics::with_clock(move || c.now()));
        let AnyArtifact::Gateway(g) = read_str(
            "name: sava\nport: 9050\nroutes:\n  sava:1.0: {weight: 50%}\n  sava:1.1: {weight: 50%}\n",
            Some(ArtifactKind::Gateway),
        )
        .unwrap()
        .remove(0) else {
            unreachable!()
        };
        store.create(&g).await.unwrap();
        let record = |frontend: String, status, ms| RequestRecord {
            timestamp_ms: T0 - 1000,
            frontend,
            backend: "b".into(),
            server: None,
            status: Some(status),
            total_time_ms: ms,
            bytes_read: 0,
        };
        let gw = lookup_name(LookupClass::Gateway, "sava");
        let v10 = route_lookup_name("sava", &["sava:1.0"]);
        let v11 = route_lookup_name("sava", &["sava:1.1"]);
        let mut records: Vec<RequestRecord> =
            (0..60).map(|_| record(gw.clone(), 200, 10)).collect();
        records.extend((0..30).map(|i| record(v10.clone(), 200, 10 + i % 2 * 10)));
        records.extend((0..29).map(|_| record(v11.clone(), 200, 30)));
        records.push(record(v11.clone(), 503, 30));
        metrics.record(records).await.unwrap();
        let pulse = PulseController::new(
            Arc::clone(&store) as _,
            Arc::clone(&metrics) as _,
            Arc::clone(&metrics) as _,
        )
        .with_clock(Arc::new(clock.clone()));
        assert_eq!(pulse.tick().await.unwrap(), 9);
        let latest = async |tags: &[&str], kind: &str| {
            let q = EventQuery {
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                event_type: Some(kind.into()),
                timestamp: None,
                aggregator: None,
            };
            metrics.query(&q, ListOptions::all()).await.unwrap()[0]
                .value
                .clone()
        };
        assert_eq!(
            latest(&["gateways:sava", "gateway", "metrics:rate"], "metrics").await,
            Node::Float(2.0)
        );
        assert_eq!(
            latest(
                &["gateways:sava", "gateway", "metrics:responseTime"],
                "metrics"
            )
            .await,
            Node::Float(10.0)
        );
        assert_eq!(
            latest(&["routes:sava:1.0", "metrics:responseTime"], "metrics").await,
            Node::Float(15.0)
        );
        assert_eq!(
            latest(&["gateways:sava", "gateway", "health"], "health").await,
            Node::Float(1.0)
        );
        assert_eq!(
            latest(&["routes:sava:1.0", "health"], "health").await,
            Node::Float(1.0)
        );
        assert_eq!(
            latest(&["routes:sava:1.1", "health"], "health").await,
            Node::Float(0.0),
            "one 5xx"
        );
    }
}
