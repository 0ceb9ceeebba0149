//! The in-memory event and metrics store.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use parking_lot::Mutex;

use crate::error::Result;
use crate::metrics::*;
use crate::model::{Event, EventQuery};
use crate::node::Node;
use crate::persistence::ListOptions;

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

#[derive(Default)]
struct State {
    events: VecDeque<Event>,
    /// What [`event_bytes`] says the kept events take.
    event_bytes: usize,
    next_id: u64,
    subscribers: EventSubscribers,
    requests: VecDeque<RequestRecord>,
    dropped: u64,
}

/// An in-memory [`EventStore`] and [`MetricsStore`]: the embedded default, fed straight from
/// HAProxy's logs by the gateway agent.
///
/// Request records older than the retention (default one hour) are dropped as new ones
/// arrive, and so are the oldest beyond [`DEFAULT_MAX_RECORDS`] (or
/// [`InMemoryMetrics::with_max_records`]), counted by [`InMemoryMetrics::dropped_records`], so
/// memory stays bounded whatever the request rate (a record takes about 250 bytes). Events
/// are kept up to [`DEFAULT_MAX_EVENTS`] (or [`InMemoryMetrics::with_max_events`]), the oldest
/// going first; a subscriber more than [`SUBSCRIBER_BUFFER`] events behind is dropped (its
/// stream ends; a client subscribes again). The clock is injectable for tests. Cloning shares
/// the store.
#[derive(Clone)]
pub struct InMemoryMetrics {
    state: Arc<Mutex<State>>,
    clock: Clock,
    retention: Duration,
    max_records: usize,
    max_events: usize,
    max_event_bytes: usize,
}

/// The most events an [`InMemoryMetrics`] keeps by default.
pub const DEFAULT_MAX_EVENTS: usize = 100_000;

/// The most bytes of events an [`InMemoryMetrics`] keeps by default (64 MiB, as
/// [`event_bytes`] counts them).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 << 20;

/// About how many bytes an event takes in memory: its strings, its value's strings and keys,
/// and a fixed cost per node and per string.
pub fn event_bytes(e: &Event) -> usize {
    fn node(n: &Node) -> usize {
        32 + match n {
            Node::Str(s) => s.len(),
            Node::Seq(items) => items.iter().map(node).sum(),
            Node::Map(m) => m.iter().map(|(k, v)| 24 + k.len() + node(v)).sum(),
            _ => 0,
        }
    }
    let text = |s: &str| 24 + s.len();
    160 + e.tags.iter().map(|t| text(t)).sum::<usize>()
        + node(&e.value)
        + text(&e.timestamp)
        + text(&e.event_type)
        + e.id.as_deref().map_or(0, text)
        + e.version.as_deref().map_or(0, text)
        + e.digest.as_deref().map_or(0, text)
}

/// The most request records an [`InMemoryMetrics`] keeps by default (about 60 MiB).
pub const DEFAULT_MAX_RECORDS: usize = 250_000;

impl Default for InMemoryMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryMetrics {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(crate::time::now_millis)
    }

    /// An empty store on a given clock (milliseconds since the Unix epoch).
    pub fn with_clock(clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self {
            state: Arc::default(),
            clock: Arc::new(clock),
            retention: Duration::from_secs(3600),
            max_records: DEFAULT_MAX_RECORDS,
            max_events: DEFAULT_MAX_EVENTS,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }

    /// Sets how many bytes of events ([`event_bytes`]) are kept at most (the oldest go first;
    /// the newest event is always kept).
    #[must_use]
    pub fn with_max_event_bytes(mut self, max: usize) -> Self {
        self.max_event_bytes = max;
        self
    }

    /// Sets how many events are kept at most (the oldest go first).
    #[must_use]
    pub fn with_max_events(mut self, max: usize) -> Self {
        self.max_events = max.max(1);
        self
    }

    /// Sets how many request records are kept at most (the oldest go first).
    #[must_use]
    pub fn with_max_records(mut self, max: usize) -> Self {
        self.max_records = max;
        self
    }

    /// Request records dropped because the store was full (not those past the retention).
    pub fn dropped_records(&self) -> u64 {
        self.state.lock().dropped
    }

    /// Sets how long request records are kept.
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The events matching `query`, newest first, borrowed: a query copies only the page it
    /// returns.
    fn matching<'s>(&self, s: &'s State, query: &EventQuery) -> Result<Vec<&'s Event>> {
        let now = (self.clock)();
        let bound = |t: &Option<String>| t.as_deref().map(|t| parse_query_time(t, now)).transpose();
        let range = query.timestamp.clone().unwrap_or_default();
        let (lt, lte, gt, gte) = (
            bound(&range.lt)?,
            bound(&range.lte)?,
            bound(&range.gt)?,
            bound(&range.gte)?,
        );
        let mut out: Vec<&Event> = s
            .events
            .iter()
            .filter(|e| query.tags.iter().all(|t| e.tags.contains(t)))
            .filter(|e| query.event_type.as_ref().is_none_or(|t| &e.event_type == t))
            .filter(|e| {
                let Some(ts) = crate::time::parse_millis(&e.timestamp) else {
                    return false;
                };
                lt.is_none_or(|b| ts < b)
                    && lte.is_none_or(|b| ts <= b)
                    && gt.is_none_or(|b| ts > b)
                    && gte.is_none_or(|b| ts >= b)
            })
            .collect();
        // Newest first; equal timestamps in reverse publication order (the sort is stable).
        out.reverse();
        out.sort_by_cached_key(|e| std::cmp::Reverse(crate::time::parse_millis(&e.timestamp)));
        Ok(out)
    }
}

impl fmt::Debug for InMemoryMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.lock();
        f.debug_struct("InMemoryMetrics")
            .field("events", &s.events.len())
            .field("requests", &s.requests.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for InMemoryMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InMemoryMetrics")
    }
}

#[async_trait]
impl EventStore for InMemoryMetrics {
    async fn publish(&self, mut event: Event) -> Result<Event> {
        event.tags = expand_tags(&event.tags);
        let mut s = self.state.lock();
        if event.id.is_none() {
            s.next_id += 1;
            event.id = Some(format!("{:016x}", s.next_id));
        }
        s.event_bytes += event_bytes(&event);
        s.events.push_back(event.clone());
        while s.events.len() > self.max_events
            || (s.event_bytes > self.max_event_bytes && s.events.len() > 1)
        {
            if let Some(old) = s.events.pop_front() {
                s.event_bytes = s.event_bytes.saturating_sub(event_bytes(&old));
            }
        }
        s.subscribers.notify(&event);
        Ok(event)
    }

    async fn query(&self, query: &EventQuery, page: ListOptions) -> Result<Vec<Event>> {
        let s = self.state.lock();
        let all = self.matching(&s, query)?;
        let it = all.into_iter().skip(page.offset).cloned();
        Ok(match page.limit {
            Some(n) => it.take(n).collect(),
            None => it.collect(),
        })
    }

    async fn aggregate(
        &self,
        query: &EventQuery,
        aggregation: Aggregation,
        field: &str,
    ) -> Result<AggregationResult> {
        let s = self.state.lock();
        let events = self.matching(&s, query)?;
        let values = events
            .iter()
            .filter_map(|e| event_field(e, field))
            .collect();
        Ok(aggregate_values(aggregation, values, events.len() as u64))
    }

    fn subscribe(
        &self,
        tags: Vec<String>,
        event_type: Option<String>,
    ) -> BoxStream<'static, Result<Event>> {
        self.state.lock().subscribers.subscribe(tags, event_type)
    }

    fn capabilities(&self) -> EventCapabilities {
        EventCapabilities {
            aggregate: true,
            percentiles: true,
            subscribe: true,
        }
    }

    fn subscribers(&self) -> usize {
        self.state.lock().subscribers.len()
    }
}

#[async_trait]
impl MetricsStore for InMemoryMetrics {
    async fn record(&self, records: Vec<RequestRecord>) -> Result<()> {
        let cutoff = (self.clock)() - self.retention.as_millis() as i64;
        let mut s = self.state.lock();
        s.requests
            .extend(records.into_iter().filter(|r| r.timestamp_ms > cutoff));
        while s.requests.front().is_some_and(|r| r.timestamp_ms <= cutoff) {
            s.requests.pop_front();
        }
        let over = s.requests.len().saturating_sub(self.max_records);
        if over > 0 {
            s.requests.drain(..over);
            s.dropped += over as u64;
        }
        Ok(())
    }

    async fn request_metrics(&self, frontend: &str, window: Duration) -> Result<RequestMetrics> {
        let now = (self.clock)();
        let from = now - window.as_millis() as i64;
        let s = self.state.lock();
        let in_window = s
            .requests
            .iter()
            .filter(|r| r.frontend == frontend && r.timestamp_ms > from && r.timestamp_ms <= now);
        Ok(RequestMetrics::compute(window, in_window))
    }

    async fn response_times(&self, frontend: &str, window: Duration) -> Result<Vec<u64>> {
        let now = (self.clock)();
        let from = now - window.as_millis() as i64;
        let s = self.state.lock();
        Ok(s.requests
            .iter()
            .filter(|r| r.frontend == frontend && r.timestamp_ms > from && r.timestamp_ms <= now)
            .map(|r| r.total_time_ms)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::metrics as suite;
    use futures_util::StreamExt;

    const NOW: i64 = 1_800_000_000_000;

    #[tokio::test]
    async fn a_dropped_subscription_is_gone_at_once() {
        let store = InMemoryMetrics::with_clock(|| NOW);
        // Subscriptions whose tags never match any event, opened and closed in rounds.
        for round in 0..3 {
            let streams: Vec<_> = (0..1000)
                .map(|i| store.subscribe(vec![format!("never-{round}-{i}")], None))
                .collect();
            assert_eq!(store.subscribers(), 1000);
            drop(streams);
            assert_eq!(store.subscribers(), 0, "round {round}");
        }
        // A live one still gets its events.
        let mut live = store.subscribe(vec!["t".into()], None);
        store
            .publish(Event::new(vec!["t".into()], Node::Null, "event"))
            .await
            .unwrap();
        assert!(live.next().await.unwrap().is_ok());
        assert_eq!(store.subscribers(), 1);
    }

    fn every() -> EventQuery {
        EventQuery {
            tags: Vec::new(),
            event_type: None,
            timestamp: None,
            aggregator: None,
        }
    }

    #[tokio::test]
    async fn events_are_bounded_in_bytes_the_oldest_going_first() {
        let big = || Event::new(vec!["big".into()], Node::Str("x".repeat(10_000)), "event");
        let one = event_bytes(&big());
        let store = InMemoryMetrics::with_clock(|| NOW).with_max_event_bytes(one * 5 + one / 2);
        for _ in 0..50 {
            store.publish(big()).await.unwrap();
        }
        let kept = store.query(&every(), ListOptions::default()).await.unwrap();
        assert_eq!(kept.len(), 5);
        assert!(
            kept.iter()
                .all(|e| e.id.as_deref() > Some("000000000000002d")),
            "the newest kept"
        );
        // One event larger than the bound is still kept (alone).
        let tiny = InMemoryMetrics::with_clock(|| NOW).with_max_event_bytes(10);
        tiny.publish(big()).await.unwrap();
        tiny.publish(big()).await.unwrap();
        let kept = tiny.query(&every(), ListOptions::default()).await.unwrap();
        assert_eq!(kept.len(), 1);
    }

    /// Events are bounded: the oldest go beyond the maximum, and a subscriber that does not
    /// read is dropped once its buffer is full (the store kept everything before).
    #[tokio::test]
    async fn events_and_subscribers_are_bounded() {
        use futures_util::FutureExt;
        let store = InMemoryMetrics::with_clock(|| NOW).with_max_events(10);
        let mut slow = store.subscribe(vec!["t".into()], None);
        let event = |i: i64| {
            let mut e = Event::new(vec!["t".into()], crate::node::Node::Int(i), "event");
            e.timestamp = crate::time::format_epoch_millis(NOW - 1000 + i);
            e
        };
        for i in 0..(SUBSCRIBER_BUFFER as i64 + 50) {
            store.publish(event(i)).await.unwrap();
        }
        let q = EventQuery {
            tags: vec!["t".into()],
            event_type: None,
            timestamp: None,
            aggregator: None,
        };
        let kept = store.query(&q, ListOptions::all()).await.unwrap();
        assert_eq!(kept.len(), 10);
        assert_eq!(
            kept[0].value,
            crate::node::Node::Int(SUBSCRIBER_BUFFER as i64 + 49),
            "the newest are kept"
        );
        assert!(
            store.state.lock().subscribers.is_empty(),
            "the slow subscriber was dropped"
        );
        let mut delivered = 0;
        while let Some(Some(_)) = slow.next().now_or_never() {
            delivered += 1;
        }
        assert!(delivered <= SUBSCRIBER_BUFFER + 1, "{delivered}");
        assert!(
            matches!(slow.next().now_or_never(), Some(None)),
            "its stream ended"
        );
    }

    #[tokio::test]
    async fn in_memory_passes_the_suites() {
        let store = InMemoryMetrics::with_clock(|| NOW);
        suite::run_all_events(&store, "direct", NOW).await;
        suite::request_metrics(&store, "direct", NOW).await;
        let arc: Arc<DynEventStore> = Arc::new(InMemoryMetrics::with_clock(|| NOW));
        suite::run_all_events(&arc, "arc", NOW).await;
        let boxed: Box<DynMetricsStore> = Box::new(InMemoryMetrics::with_clock(|| NOW));
        suite::request_metrics(&boxed, "box", NOW).await;
        // On the system clock too.
        let real = InMemoryMetrics::new();
        suite::run_all_events(&real, "real", crate::time::now_millis()).await;
    }

    #[tokio::test]
    async fn old_records_are_dropped_after_the_retention() {
        let store = InMemoryMetrics::with_clock(|| NOW).with_retention(Duration::from_secs(60));
        let r = |ago: i64| RequestRecord {
            timestamp_ms: NOW - ago,
            frontend: "f".into(),
            backend: "b".into(),
            server: None,
            status: Some(200),
            total_time_ms: 1,
            bytes_read: 0,
        };
        store
            .record(vec![r(120_000), r(30_000), r(1_000)])
            .await
            .unwrap();
        assert_eq!(store.state.lock().requests.len(), 2);
        assert_eq!(
            store
                .request_metrics("f", Duration::from_secs(3600))
                .await
                .unwrap()
                .requests,
            2
        );
    }

    #[tokio::test]
    async fn request_records_are_bounded_and_the_oldest_go_first() {
        let store = InMemoryMetrics::with_clock(|| NOW).with_max_records(10);
        let record = |i: i64| RequestRecord {
            timestamp_ms: NOW - 1000 + i,
            frontend: "f".into(),
            backend: "b".into(),
            server: None,
            status: Some(if i < 15 { 500 } else { 200 }),
            total_time_ms: 1,
            bytes_read: 0,
        };
        for chunk in (0..25).collect::<Vec<i64>>().chunks(7) {
            store
                .record(chunk.iter().map(|&i| record(i)).collect())
                .await
                .unwrap();
        }
        assert_eq!(store.state.lock().requests.len(), 10);
        assert_eq!(store.dropped_records(), 15);
        let m = store
            .request_metrics("f", Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(
            (m.requests, m.status.server_error),
            (10, 0),
            "the newest are kept"
        );
    }

    /// A store that ignores the type filter.
    #[derive(Debug)]
    struct IgnoresType(InMemoryMetrics);

    impl fmt::Display for IgnoresType {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("IgnoresType")
        }
    }

    #[async_trait]
    impl EventStore for IgnoresType {
        async fn publish(&self, event: Event) -> Result<Event> {
            self.0.publish(event).await
        }
        async fn query(&self, query: &EventQuery, page: ListOptions) -> Result<Vec<Event>> {
            let mut q = query.clone();
            q.event_type = None;
            self.0.query(&q, page).await
        }
        async fn aggregate(
            &self,
            query: &EventQuery,
            aggregation: Aggregation,
            field: &str,
        ) -> Result<AggregationResult> {
            self.0.aggregate(query, aggregation, field).await
        }
        fn subscribe(
            &self,
            tags: Vec<String>,
            event_type: Option<String>,
        ) -> BoxStream<'static, Result<Event>> {
            self.0.subscribe(tags, event_type)
        }
        fn capabilities(&self) -> EventCapabilities {
            self.0.capabilities()
        }
        fn subscribers(&self) -> usize {
            self.0.subscribers()
        }
    }

    #[tokio::test]
    async fn the_suite_catches_an_ignored_type_filter() {
        use futures_util::FutureExt;
        let broken = IgnoresType(InMemoryMetrics::with_clock(|| NOW));
        let result = std::panic::AssertUnwindSafe(suite::publish_and_query(&broken, "broken", NOW))
            .catch_unwind()
            .await;
        assert!(result.is_err());
    }
}
