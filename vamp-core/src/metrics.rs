//! Events and request metrics.
//!
//! * [`EventStore`]: Vamp's pulse. Publish events (tags, value, type, timestamp), query them
//!   by tags, type and time range, aggregate a field (count, average, min, max, sum, and
//!   percentiles as an addition), and subscribe to new ones.
//! * [`MetricsStore`]: request records parsed from HAProxy's logs, and per-frontend request
//!   metrics over a sliding window: rate, error rate, status classes, response-time average
//!   and percentiles. A frontend is a gateway's or a route's lookup name, as HAProxy's `ft`.

use std::fmt::{self, Debug, Display};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::error::{Error, Result};
use crate::model::{AggregatorType, Event, EventQuery};
use crate::node::Node;
use crate::persistence::ListOptions;

/// An aggregation over a numeric field of the matching events.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Aggregation {
    /// Number of matching events.
    Count,
    /// Average.
    Average,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Sum.
    Sum,
    /// The p-th percentile (0–100, nearest rank).
    Percentile(f64),
}

impl From<AggregatorType> for Aggregation {
    fn from(a: AggregatorType) -> Self {
        match a {
            AggregatorType::Count => Self::Count,
            AggregatorType::Average => Self::Average,
            AggregatorType::Min => Self::Min,
            AggregatorType::Max => Self::Max,
            AggregatorType::Sum => Self::Sum,
        }
    }
}

impl Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count => f.write_str("count"),
            Self::Average => f.write_str("average"),
            Self::Min => f.write_str("min"),
            Self::Max => f.write_str("max"),
            Self::Sum => f.write_str("sum"),
            Self::Percentile(p) => write!(f, "p{p}"),
        }
    }
}

/// The result of an aggregation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AggregationResult {
    /// The value (`None` when no event had the field, except for `Count`).
    pub value: Option<f64>,
    /// How many events had a numeric value for the field.
    pub count: u64,
}

/// What an event store can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EventCapabilities {
    /// `aggregate` is supported.
    pub aggregate: bool,
    /// `Aggregation::Percentile` is supported.
    pub percentiles: bool,
    /// `subscribe` is supported.
    pub subscribe: bool,
}

/// Tags as Vamp expands them on publish: every `a:b` also adds `a`.
pub fn expand_tags(tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in tags {
        if !out.contains(t) {
            out.push(t.clone());
        }
        if let Some((head, _)) = t.split_once(':')
            && !head.is_empty()
            && !out.iter().any(|x| x == head)
        {
            out.push(head.to_owned());
        }
    }
    out
}

/// The numeric value of `field` in an event: `value` is the event's value; `a.b` (or
/// `value.a.b`) reads into a map value; a string that holds a number counts as that number.
pub fn event_field(event: &Event, field: &str) -> Option<f64> {
    let path = field
        .strip_prefix("value")
        .map_or(field, |rest| rest.trim_start_matches('.'));
    let mut node = &event.value;
    for step in path.split('.').filter(|s| !s.is_empty()) {
        node = node.as_map()?.get(step)?;
    }
    match node {
        Node::Int(i) => Some(*i as f64),
        Node::Float(f) if f.is_finite() => Some(*f),
        Node::Str(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// Applies an aggregation to values (nearest-rank percentiles).
pub fn aggregate_values(
    aggregation: Aggregation,
    mut values: Vec<f64>,
    events: u64,
) -> AggregationResult {
    let count = values.len() as u64;
    let value = match aggregation {
        Aggregation::Count => Some(events as f64),
        _ if values.is_empty() => None,
        Aggregation::Average => Some(values.iter().sum::<f64>() / values.len() as f64),
        Aggregation::Min => values.iter().copied().reduce(f64::min),
        Aggregation::Max => values.iter().copied().reduce(f64::max),
        Aggregation::Sum => Some(values.iter().sum()),
        Aggregation::Percentile(p) => {
            values.sort_by(f64::total_cmp);
            let rank = ((p.clamp(0.0, 100.0) / 100.0) * values.len() as f64).ceil() as usize;
            Some(values[rank.clamp(1, values.len()) - 1])
        }
    };
    AggregationResult { value, count }
}

/// Parses a query time: an ISO-8601 offset date-time, or `now` / `now()` optionally followed
/// by `- N` or `+ N` with a unit `ms`, `s`, `m`, `h` or `d` (Elasticsearch-style date math:
/// `now() - 10m`, `now-1h`). Returns milliseconds since the Unix epoch.
///
/// # Errors
/// [`Error::Invalid`] for anything else.
pub fn parse_query_time(text: &str, now_ms: i64) -> Result<i64> {
    let invalid = || Error::Invalid {
        what: "time",
        value: text.to_owned(),
        reason: "expected an ISO-8601 date-time or now()[±N(ms|s|m|h|d)]".into(),
    };
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("now") {
        let rest = rest.strip_prefix("()").unwrap_or(rest).trim();
        if rest.is_empty() {
            return Ok(now_ms);
        }
        let (sign, amount) = match rest.as_bytes()[0] {
            b'-' => (-1, rest[1..].trim()),
            b'+' => (1, rest[1..].trim()),
            _ => return Err(invalid()),
        };
        let split = amount
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let n: i64 = amount[..split].parse().map_err(|_| invalid())?;
        let unit = match amount[split..].trim() {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(invalid()),
        };
        return n
            .checked_mul(unit)
            .and_then(|d| now_ms.checked_add(sign * d))
            .ok_or_else(invalid);
    }
    crate::time::parse_millis(t).ok_or_else(invalid)
}

/// A store of events (Vamp's pulse).
///
/// # Contract
/// * `publish` expands tags ([`expand_tags`]), keeps the event's timestamp and type, assigns
///   an id when the event has none, and returns the stored event.
/// * `query` returns the events carrying **all** the query's tags (and its type, if given)
///   within its time range, newest first, paged.
/// * `aggregate` applies an aggregation to a field of the matching events ([`event_field`]).
/// * `subscribe` yields every event published afterwards whose tags include the given tags.
///
/// # Errors
/// [`Error::Invalid`] for a query time that cannot be parsed; [`Error::NotSupported`] outside
/// the capabilities; [`Error::Unavailable`] (temporary).
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use vamp_core::dsl::{read_str, AnyArtifact};
/// use vamp_core::memory::InMemoryMetrics;
/// use vamp_core::metrics::{Aggregation, EventStore};
/// use vamp_core::model::ArtifactKind;
///
/// let store = InMemoryMetrics::new();
/// for v in [10, 20, 60] {
///     let AnyArtifact::Event(e) = read_str(&format!("tags: [gateways:sava, metrics:responseTime]\nvalue: {v}\ntype: metrics"), Some(ArtifactKind::Event)).unwrap().remove(0) else { unreachable!() };
///     store.publish(e).await.unwrap();
/// }
/// let AnyArtifact::EventQuery(q) = read_str("tags: [gateways:sava, metrics]", Some(ArtifactKind::EventQuery)).unwrap().remove(0) else { unreachable!() };
/// assert_eq!(store.aggregate(&q, Aggregation::Average, "value").await.unwrap().value, Some(30.0));
/// # }).unwrap();
/// ```
#[async_trait]
pub trait EventStore: Debug + Display + Send + Sync + 'static {
    /// Stores an event.
    async fn publish(&self, event: Event) -> Result<Event>;

    /// The matching events, newest first.
    async fn query(&self, query: &EventQuery, page: ListOptions) -> Result<Vec<Event>>;

    /// An aggregation of `field` over the matching events.
    async fn aggregate(
        &self,
        query: &EventQuery,
        aggregation: Aggregation,
        field: &str,
    ) -> Result<AggregationResult>;

    /// Events published from now on that carry all of `tags` (and `event_type`, if given).
    fn subscribe(
        &self,
        tags: Vec<String>,
        event_type: Option<String>,
    ) -> BoxStream<'static, Result<Event>>;

    /// What the store can do.
    fn capabilities(&self) -> EventCapabilities;

    /// How many subscriptions ([`EventStore::subscribe`]) are open. A subscription whose
    /// stream was dropped MUST NOT be counted (its resources are released at once).
    fn subscribers(&self) -> usize;
}

/// The event store behind a trait object.
pub type DynEventStore = dyn EventStore;

/// How many events a subscriber may have waiting before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 10_000;

struct Subscriber {
    id: u64,
    tags: Vec<String>,
    event_type: Option<String>,
    tx: futures_channel::mpsc::Sender<Result<Event>>,
}

/// The subscribers of a store that hands its events on in process ([`EventStore::subscribe`]):
/// each gets the events that carry all its tags (and its type, if given); one more than
/// [`SUBSCRIBER_BUFFER`] events behind, or gone, is dropped (its stream ends).
pub struct EventSubscribers {
    list: std::sync::Arc<parking_lot::Mutex<Vec<Subscriber>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Default for EventSubscribers {
    fn default() -> Self {
        Self {
            list: std::sync::Arc::default(),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// A subscription's stream: dropping it removes the subscriber at once (not at the next
/// matching event).
struct Subscription {
    id: u64,
    list: std::sync::Weak<parking_lot::Mutex<Vec<Subscriber>>>,
    rx: futures_channel::mpsc::Receiver<Result<Event>>,
}

impl futures_util::Stream for Subscription {
    type Item = Result<Event>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.rx).poll_next(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(list) = self.list.upgrade() {
            list.lock().retain(|s| s.id != self.id);
        }
    }
}

impl Debug for EventSubscribers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSubscribers")
            .field("subscribers", &self.list.lock().len())
            .finish()
    }
}

impl EventSubscribers {
    /// A new subscription.
    pub fn subscribe(
        &self,
        tags: Vec<String>,
        event_type: Option<String>,
    ) -> BoxStream<'static, Result<Event>> {
        use futures_util::StreamExt;
        let (tx, rx) = futures_channel::mpsc::channel(SUBSCRIBER_BUFFER);
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.list.lock().push(Subscriber {
            id,
            tags,
            event_type,
            tx,
        });
        Subscription {
            id,
            list: std::sync::Arc::downgrade(&self.list),
            rx,
        }
        .boxed()
    }

    /// Hands `event` (tags already expanded) to the subscribers it matches.
    pub fn notify(&self, event: &Event) {
        self.list.lock().retain_mut(|sub| {
            let matches = sub.tags.iter().all(|t| event.tags.contains(t))
                && sub
                    .event_type
                    .as_ref()
                    .is_none_or(|t| t == &event.event_type);
            // Full or gone: the subscriber is dropped (its stream ends).
            !matches || sub.tx.try_send(Ok(event.clone())).is_ok()
        });
    }

    /// How many subscribers there are.
    pub fn len(&self) -> usize {
        self.list.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The histogram of request total times (seconds) a gateway agent exports per frontend (label
/// `frontend`) from HAProxy's logs, for Prometheus.
pub const REQUEST_DURATION_HISTOGRAM: &str = "vamp_gateway_request_duration_seconds";

/// The buckets (seconds) of [`REQUEST_DURATION_HISTOGRAM`].
pub const REQUEST_DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One HTTP or TCP request, as HAProxy logged it for one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// When the request was accepted (milliseconds since the Unix epoch).
    pub timestamp_ms: i64,
    /// The frontend (`ft`): a gateway's or route's lookup name.
    pub frontend: String,
    /// The backend (`b`).
    pub backend: String,
    /// The server (`s`), if one was chosen.
    pub server: Option<String>,
    /// The HTTP status (`ST`); `None` for TCP.
    pub status: Option<u16>,
    /// Total time in milliseconds (`Tt`).
    pub total_time_ms: u64,
    /// Bytes read from the server (`B`).
    pub bytes_read: u64,
}

/// Request counts per status class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StatusClasses {
    /// 1xx.
    pub informational: u64,
    /// 2xx.
    pub success: u64,
    /// 3xx.
    pub redirection: u64,
    /// 4xx.
    pub client_error: u64,
    /// 5xx.
    pub server_error: u64,
    /// No HTTP status (TCP) or another code.
    pub other: u64,
}

impl StatusClasses {
    /// Counts one status.
    pub fn add(&mut self, status: Option<u16>) {
        match status {
            Some(100..=199) => self.informational += 1,
            Some(200..=299) => self.success += 1,
            Some(300..=399) => self.redirection += 1,
            Some(400..=499) => self.client_error += 1,
            Some(500..=599) => self.server_error += 1,
            _ => self.other += 1,
        }
    }
}

/// Request metrics of one frontend over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestMetrics {
    /// The window.
    pub window: Duration,
    /// Requests in the window.
    pub requests: u64,
    /// Requests per second over the window.
    pub rate: f64,
    /// Share of requests answered with 5xx (0 without requests).
    pub error_rate: f64,
    /// Counts per status class.
    pub status: StatusClasses,
    /// Average total time (ms).
    pub response_time_avg_ms: Option<f64>,
    /// Median total time (ms).
    pub response_time_p50_ms: Option<f64>,
    /// 95th percentile of the total time (ms).
    pub response_time_p95_ms: Option<f64>,
    /// 99th percentile of the total time (ms).
    pub response_time_p99_ms: Option<f64>,
}

impl RequestMetrics {
    /// The metrics from counts per status class and response-time figures (ms): requests,
    /// rate and error rate follow from them.
    pub fn from_counts(
        window: Duration,
        status: StatusClasses,
        response_time_avg_ms: Option<f64>,
        [p50, p95, p99]: [Option<f64>; 3],
    ) -> Self {
        let requests = status.informational
            + status.success
            + status.redirection
            + status.client_error
            + status.server_error
            + status.other;
        let secs = window.as_secs_f64();
        Self {
            window,
            requests,
            rate: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            error_rate: if requests > 0 {
                status.server_error as f64 / requests as f64
            } else {
                0.0
            },
            status,
            response_time_avg_ms,
            response_time_p50_ms: p50,
            response_time_p95_ms: p95,
            response_time_p99_ms: p99,
        }
    }

    /// Computes the metrics of `records` (already limited to the window).
    pub fn compute<'a>(
        window: Duration,
        records: impl IntoIterator<Item = &'a RequestRecord>,
    ) -> Self {
        let mut status = StatusClasses::default();
        let mut times = Vec::new();
        for r in records {
            status.add(r.status);
            times.push(r.total_time_ms as f64);
        }
        let requests = times.len() as u64;
        let pct = |p| aggregate_values(Aggregation::Percentile(p), times.clone(), requests).value;
        let avg = aggregate_values(Aggregation::Average, times.clone(), requests).value;
        Self::from_counts(window, status, avg, [pct(50.0), pct(95.0), pct(99.0)])
    }
}

/// What a metrics store can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsCapabilities {
    /// [`MetricsStore::record`] stores records (a store whose figures are scraped from
    /// HAProxy, such as Prometheus, takes none).
    pub record: bool,
    /// Response-time percentiles are exact nearest-rank values; otherwise they are the upper
    /// bound of the histogram bucket holding the rank.
    pub exact_percentiles: bool,
}

impl Default for MetricsCapabilities {
    fn default() -> Self {
        Self {
            record: true,
            exact_percentiles: true,
        }
    }
}

/// A store of request records with sliding-window request metrics.
///
/// # Contract
/// `request_metrics(frontend, window)` counts the records of `frontend` with
/// `now - window < timestamp <= now` by the store's clock.
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use std::time::Duration;
/// use vamp_core::memory::InMemoryMetrics;
/// use vamp_core::metrics::{MetricsStore, RequestRecord};
///
/// let store = InMemoryMetrics::with_clock(|| 1_000_000);
/// let record = |status, ms| RequestRecord { timestamp_ms: 999_000, frontend: "g".into(), backend: "b".into(), server: None, status: Some(status), total_time_ms: ms, bytes_read: 0 };
/// store.record(vec![record(200, 10), record(200, 30), record(503, 50), record(200, 10)]).await.unwrap();
/// let m = store.request_metrics("g", Duration::from_secs(10)).await.unwrap();
/// assert_eq!((m.requests, m.error_rate, m.response_time_avg_ms), (4, 0.25, Some(25.0)));
/// # }).unwrap();
/// ```
#[async_trait]
pub trait MetricsStore: Debug + Display + Send + Sync + 'static {
    /// Stores request records.
    async fn record(&self, records: Vec<RequestRecord>) -> Result<()>;

    /// The metrics of `frontend` over the last `window`.
    async fn request_metrics(&self, frontend: &str, window: Duration) -> Result<RequestMetrics>;

    /// The total times (ms) of `frontend`'s requests over the last `window`, for tests on
    /// their distribution (the canary gates). Stores that keep no request records return
    /// [`Error::NotSupported`] (the default).
    async fn response_times(&self, frontend: &str, window: Duration) -> Result<Vec<u64>> {
        let _ = (frontend, window);
        Err(Error::NotSupported {
            backend: self.to_string(),
            operation: "response_times",
        })
    }

    /// What the store can do (by default: it records, and its percentiles are exact). Named
    /// apart from [`EventStore::capabilities`], as one type often implements both.
    fn metrics_capabilities(&self) -> MetricsCapabilities {
        MetricsCapabilities::default()
    }
}

/// The metrics store behind a trait object.
pub type DynMetricsStore = dyn MetricsStore;

macro_rules! forward_stores {
    ($ty:ty) => {
        #[async_trait]
        impl<T: EventStore + ?Sized> EventStore for $ty {
            async fn publish(&self, event: Event) -> Result<Event> {
                (**self).publish(event).await
            }
            async fn query(&self, query: &EventQuery, page: ListOptions) -> Result<Vec<Event>> {
                (**self).query(query, page).await
            }
            async fn aggregate(
                &self,
                query: &EventQuery,
                aggregation: Aggregation,
                field: &str,
            ) -> Result<AggregationResult> {
                (**self).aggregate(query, aggregation, field).await
            }
            fn subscribe(
                &self,
                tags: Vec<String>,
                event_type: Option<String>,
            ) -> BoxStream<'static, Result<Event>> {
                (**self).subscribe(tags, event_type)
            }
            fn capabilities(&self) -> EventCapabilities {
                (**self).capabilities()
            }
            fn subscribers(&self) -> usize {
                (**self).subscribers()
            }
        }
    };
}

forward_stores!(std::sync::Arc<T>);
forward_stores!(Box<T>);

macro_rules! forward_metrics {
    ($ty:ty) => {
        #[async_trait]
        impl<T: MetricsStore + ?Sized> MetricsStore for $ty {
            async fn record(&self, records: Vec<RequestRecord>) -> Result<()> {
                (**self).record(records).await
            }
            async fn request_metrics(
                &self,
                frontend: &str,
                window: Duration,
            ) -> Result<RequestMetrics> {
                (**self).request_metrics(frontend, window).await
            }
            async fn response_times(&self, frontend: &str, window: Duration) -> Result<Vec<u64>> {
                (**self).response_times(frontend, window).await
            }
            fn metrics_capabilities(&self) -> MetricsCapabilities {
                (**self).metrics_capabilities()
            }
        }
    };
}

forward_metrics!(std::sync::Arc<T>);
forward_metrics!(Box<T>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_expansion() {
        let tags: Vec<String> = ["gateways:sava", "metrics:rate", "gateways:x", "plain"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            expand_tags(&tags),
            [
                "gateways:sava",
                "gateways",
                "metrics:rate",
                "metrics",
                "gateways:x",
                "plain"
            ]
        );
    }

    #[test]
    fn aggregations() {
        let v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(
            aggregate_values(Aggregation::Average, v.clone(), 5).value,
            Some(3.0)
        );
        assert_eq!(
            aggregate_values(Aggregation::Min, v.clone(), 5).value,
            Some(1.0)
        );
        assert_eq!(
            aggregate_values(Aggregation::Max, v.clone(), 5).value,
            Some(5.0)
        );
        assert_eq!(
            aggregate_values(Aggregation::Sum, v.clone(), 5).value,
            Some(15.0)
        );
        assert_eq!(
            aggregate_values(Aggregation::Count, v.clone(), 7).value,
            Some(7.0)
        );
        assert_eq!(
            aggregate_values(Aggregation::Percentile(50.0), v.clone(), 5).value,
            Some(3.0)
        );
        assert_eq!(
            aggregate_values(Aggregation::Percentile(100.0), v.clone(), 5).value,
            Some(5.0)
        );
        assert_eq!(
            aggregate_values(Aggregation::Percentile(0.0), v, 5).value,
            Some(1.0)
        );
        assert_eq!(
            aggregate_values(Aggregation::Average, vec![], 0).value,
            None
        );
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            aggregate_values(Aggregation::Percentile(95.0), hundred.clone(), 100).value,
            Some(95.0)
        );
        assert_eq!(
            aggregate_values(Aggregation::Percentile(99.0), hundred, 100).value,
            Some(99.0)
        );
    }

    #[test]
    fn query_times() {
        let now = 1_000_000_000;
        assert_eq!(parse_query_time("now", now).unwrap(), now);
        assert_eq!(parse_query_time("now() - 10m", now).unwrap(), now - 600_000);
        assert_eq!(parse_query_time("now-1h", now).unwrap(), now - 3_600_000);
        assert_eq!(parse_query_time("now + 5s", now).unwrap(), now + 5000);
        assert_eq!(
            parse_query_time("2015-06-05T15:12:38.000Z", now).unwrap(),
            1_433_517_158_000
        );
        assert_eq!(
            parse_query_time("2015-06-05T17:12:38+02:00", now).unwrap(),
            1_433_517_158_000
        );
        for bad in [
            "later",
            "now - 10",
            "now * 2",
            "now - 10y",
            "2015-13-01T00:00:00Z",
        ] {
            assert!(parse_query_time(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_metrics() {
        let r = |status: Option<u16>, ms| RequestRecord {
            timestamp_ms: 0,
            frontend: "f".into(),
            backend: "b".into(),
            server: None,
            status,
            total_time_ms: ms,
            bytes_read: 0,
        };
        let records = [
            r(Some(200), 10),
            r(Some(302), 20),
            r(Some(404), 30),
            r(Some(503), 40),
            r(None, 50),
        ];
        let m = RequestMetrics::compute(Duration::from_secs(10), &records);
        assert_eq!(m.requests, 5);
        assert_eq!(m.rate, 0.5);
        assert_eq!(m.error_rate, 0.2);
        assert_eq!(
            m.status,
            StatusClasses {
                informational: 0,
                success: 1,
                redirection: 1,
                client_error: 1,
                server_error: 1,
                other: 1
            }
        );
        assert_eq!(
            (
                m.response_time_avg_ms,
                m.response_time_p50_ms,
                m.response_time_p99_ms
            ),
            (Some(30.0), Some(30.0), Some(50.0))
        );
    }
}
