//! Conformance suites for [`EventStore`] and [`MetricsStore`] implementations.
//!
//! Functions tag their events with `scope` (give each run a fresh one) and panic when the
//! store breaks the contract. Not covered by semver.

use std::time::Duration;

use futures_util::StreamExt;

use crate::metrics::*;
use crate::model::{Aggregator, Event, EventQuery, TimeRange};
use crate::node::Node;
use crate::persistence::ListOptions;
use crate::rt::timeout;
use crate::time::format_epoch_millis;

use super::kv::EVENT_TIMEOUT;

fn event(tags: &[&str], value: Node, event_type: &str, timestamp_ms: i64) -> Event {
    Event {
        id: None,
        version: None,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        value,
        timestamp: format_epoch_millis(timestamp_ms),
        event_type: event_type.to_owned(),
        digest: None,
    }
}

fn query(tags: &[&str]) -> EventQuery {
    EventQuery {
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        event_type: None,
        timestamp: None,
        aggregator: None,
    }
}

/// Publishing expands tags and assigns ids; queries match all tags and the type, newest
/// first, paged.
pub async fn publish_and_query(store: &DynEventStore, scope: &str, now_ms: i64) {
    let s = format!("scope:{scope}");
    let e1 = store
        .publish(event(
            &[&s, "gateways:sava", "metrics:rate"],
            Node::Int(1),
            "metrics",
            now_ms - 3000,
        ))
        .await
        .expect("publish");
    assert!(e1.id.is_some(), "publish assigns an id");
    for t in [
        "gateways:sava",
        "gateways",
        "metrics:rate",
        "metrics",
        "scope",
    ] {
        assert!(
            e1.tags.iter().any(|x| x == t),
            "tag {t} after expansion: {:?}",
            e1.tags
        );
    }
    store
        .publish(event(
            &[&s, "gateways:sava", "metrics:responseTime"],
            Node::Int(2),
            "metrics",
            now_ms - 2000,
        ))
        .await
        .expect("publish");
    store
        .publish(event(
            &[&s, "gateways:other", "metrics:rate"],
            Node::Int(3),
            "metrics",
            now_ms - 1000,
        ))
        .await
        .expect("publish");
    store
        .publish(event(
            &[&s, "gateways:sava"],
            Node::Str("deployed".into()),
            "event",
            now_ms,
        ))
        .await
        .expect("publish");

    let values =
        |events: Vec<Event>| -> Vec<Node> { events.into_iter().map(|e| e.value).collect() };
    let all = store
        .query(&query(&[&s]), ListOptions::all())
        .await
        .expect("query");
    assert_eq!(
        values(all),
        [
            Node::Str("deployed".into()),
            Node::Int(3),
            Node::Int(2),
            Node::Int(1)
        ],
        "newest first"
    );
    let sava = store
        .query(
            &query(&[&s, "gateways:sava", "metrics"]),
            ListOptions::all(),
        )
        .await
        .expect("query");
    assert_eq!(
        values(sava),
        [Node::Int(2), Node::Int(1)],
        "every tag must match (expanded tags included)"
    );
    let mut typed = query(&[&s]);
    typed.event_type = Some("event".into());
    assert_eq!(
        values(
            store
                .query(&typed, ListOptions::all())
                .await
                .expect("query")
        ),
        [Node::Str("deployed".into())],
        "type filter"
    );
    let page = store
        .query(&query(&[&s]), ListOptions::page(1, 2))
        .await
        .expect("page");
    assert_eq!(
        values(page),
        [Node::Int(3), Node::Int(2)],
        "offset and limit"
    );
    assert!(
        store
            .query(&query(&[&s, "no-such-tag"]), ListOptions::all())
            .await
            .expect("query")
            .is_empty()
    );
}

/// Time ranges with ISO timestamps and `now()` date math.
pub async fn time_ranges(store: &DynEventStore, scope: &str, now_ms: i64) {
    let s = format!("scope:{scope}");
    for (i, ago_s) in [600i64, 300, 60, 10].iter().enumerate() {
        store
            .publish(event(
                &[&s, "t"],
                Node::Int(i as i64),
                "metrics",
                now_ms - ago_s * 1000,
            ))
            .await
            .expect("publish");
    }
    let ranged = |lt: Option<&str>, lte: Option<&str>, gt: Option<&str>, gte: Option<&str>| {
        let mut q = query(&[&s, "t"]);
        q.timestamp = Some(TimeRange {
            lt: lt.map(str::to_owned),
            lte: lte.map(str::to_owned),
            gt: gt.map(str::to_owned),
            gte: gte.map(str::to_owned),
        });
        q
    };
    let values =
        |events: Vec<Event>| -> Vec<Node> { events.into_iter().map(|e| e.value).collect() };
    let recent = store
        .query(
            &ranged(None, None, Some("now() - 2m"), None),
            ListOptions::all(),
        )
        .await
        .expect("query");
    assert_eq!(
        values(recent),
        [Node::Int(3), Node::Int(2)],
        "gt now() - 2m"
    );
    let old = store
        .query(
            &ranged(Some("now-4m"), None, None, None),
            ListOptions::all(),
        )
        .await
        .expect("query");
    assert_eq!(values(old), [Node::Int(1), Node::Int(0)], "lt now-4m");
    let exact = format_epoch_millis(now_ms - 300_000);
    let at = store
        .query(
            &ranged(None, Some(&exact), None, Some(&exact)),
            ListOptions::all(),
        )
        .await
        .expect("query");
    assert_eq!(
        values(at),
        [Node::Int(1)],
        "gte and lte an ISO timestamp include it"
    );
    let bad = store
        .query(
            &ranged(Some("yesterday"), None, None, None),
            ListOptions::all(),
        )
        .await;
    assert!(bad.is_err(), "an unparsable time is an error");
}

/// Aggregations over `value` and over a field of map values.
pub async fn aggregations(store: &DynEventStore, scope: &str, now_ms: i64) {
    let s = format!("scope:{scope}");
    for v in [10, 20, 30, 40, 100] {
        let value = Node::Map(crate::node::Map::from_iter([(
            "response".to_owned(),
            Node::Map(crate::node::Map::from_iter([(
                "time".to_owned(),
                Node::Int(v),
            )])),
        )]));
        store
            .publish(event(&[&s, "agg:map"], value, "metrics", now_ms))
            .await
            .expect("publish");
        store
            .publish(event(&[&s, "agg:plain"], Node::Int(v), "metrics", now_ms))
            .await
            .expect("publish");
    }
    store
        .publish(event(
            &[&s, "agg:plain"],
            Node::Str("n/a".into()),
            "metrics",
            now_ms,
        ))
        .await
        .expect("publish");
    let caps = store.capabilities();
    let plain = query(&[&s, "agg:plain"]);
    let check = async |q: &EventQuery, a: Aggregation, field: &str, expected: Option<f64>| {
        let r = store
            .aggregate(q, a, field)
            .await
            .unwrap_or_else(|e| panic!("{a} of {field}: {e}"));
        assert_eq!(r.value, expected, "{a} of {field}");
    };
    check(&plain, Aggregation::Average, "value", Some(40.0)).await;
    check(&plain, Aggregation::Min, "value", Some(10.0)).await;
    check(&plain, Aggregation::Max, "value", Some(100.0)).await;
    check(&plain, Aggregation::Sum, "value", Some(200.0)).await;
    check(&plain, Aggregation::Count, "value", Some(6.0)).await;
    if caps.percentiles {
        check(&plain, Aggregation::Percentile(50.0), "value", Some(30.0)).await;
        check(&plain, Aggregation::Percentile(95.0), "value", Some(100.0)).await;
    }
    check(
        &query(&[&s, "agg:map"]),
        Aggregation::Average,
        "response.time",
        Some(40.0),
    )
    .await;
    check(
        &query(&[&s, "agg:none"]),
        Aggregation::Average,
        "value",
        None,
    )
    .await;
    let mut with_aggregator = plain.clone();
    with_aggregator.aggregator = Some(Aggregator {
        aggregator_type: crate::model::AggregatorType::Max,
        field: "value".into(),
    });
    let a = with_aggregator
        .aggregator
        .as_ref()
        .map(|a| Aggregation::from(a.aggregator_type))
        .expect("aggregator");
    check(&with_aggregator, a, "value", Some(100.0)).await;
}

/// Subscriptions receive new matching events only.
pub async fn subscriptions(store: &DynEventStore, scope: &str, now_ms: i64) {
    let s = format!("scope:{scope}");
    let mut sub = store.subscribe(vec![s.clone(), "sla".into()], Some("event".into()));
    store
        .publish(event(&[&s, "other"], Node::Int(1), "event", now_ms))
        .await
        .expect("publish");
    store
        .publish(event(
            &[&s, "sla:escalate"],
            Node::Int(2),
            "metrics",
            now_ms,
        ))
        .await
        .expect("publish");
    store
        .publish(event(
            &[&s, "sla:escalate", "deployment:sava"],
            Node::Int(3),
            "event",
            now_ms,
        ))
        .await
        .expect("publish");
    let got = match timeout(EVENT_TIMEOUT, sub.next()).await {
        Some(Some(Ok(e))) => e,
        other => panic!("no matching event within {EVENT_TIMEOUT:?}: {other:?}"),
    };
    assert_eq!(
        got.value,
        Node::Int(3),
        "only the event with every tag (expanded) and the type arrives"
    );
}

/// Request metrics over a sliding window by the store's clock (`now_ms`).
pub async fn request_metrics(store: &DynMetricsStore, scope: &str, now_ms: i64) {
    let frontend = format!("{scope}-gateway");
    let record = |ago_ms: i64, status: Option<u16>, ms: u64| RequestRecord {
        timestamp_ms: now_ms - ago_ms,
        frontend: frontend.clone(),
        backend: "o_backend".into(),
        server: Some("s1".into()),
        status,
        total_time_ms: ms,
        bytes_read: 100,
    };
    let mut records: Vec<RequestRecord> = (1..=100)
        .map(|i| record(i * 100, Some(if i % 10 == 0 { 503 } else { 200 }), i as u64))
        .collect();
    records.push(record(120_000, Some(500), 9999)); // outside a 60 s window
    records.push(RequestRecord {
        frontend: format!("{scope}-other"),
        ..record(1000, Some(500), 1)
    });
    store.record(records).await.expect("record");
    let m = store
        .request_metrics(&frontend, Duration::from_secs(60))
        .await
        .expect("metrics");
    assert_eq!(
        m.requests, 100,
        "only this frontend's records in the window"
    );
    assert_eq!(m.status.success, 90);
    assert_eq!(m.status.server_error, 10);
    assert!(
        (m.error_rate - 0.1).abs() < 1e-9,
        "error rate {}",
        m.error_rate
    );
    assert!((m.rate - 100.0 / 60.0).abs() < 1e-9, "rate {}", m.rate);
    assert_eq!(m.response_time_avg_ms, Some(50.5));
    assert_eq!(
        (
            m.response_time_p50_ms,
            m.response_time_p95_ms,
            m.response_time_p99_ms
        ),
        (Some(50.0), Some(95.0), Some(99.0))
    );
    let wide = store
        .request_metrics(&frontend, Duration::from_secs(600))
        .await
        .expect("metrics");
    assert_eq!(
        wide.requests, 101,
        "a wider window includes the older record"
    );
    let none = store
        .request_metrics(&format!("{scope}-silent"), Duration::from_secs(60))
        .await
        .expect("metrics");
    assert_eq!(
        (none.requests, none.error_rate, none.response_time_avg_ms),
        (0, 0.0, None)
    );
}

/// One request a test sent through HAProxy: the status it got (`None` for TCP) and bounds on
/// its total time in milliseconds (what the backend waited, and that plus the slack the test
/// allows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentRequest {
    /// The status the client saw.
    pub status: Option<u16>,
    /// The least and the most its total time can have been (ms).
    pub time_ms: std::ops::RangeInclusive<u64>,
}

/// The metrics of real traffic: `frontend`'s figures over `window` count exactly the requests
/// of `sent`, by status class, and the response times agree with the bounds: the average
/// within the bounds' average; each percentile (p50, p95, p99) at least the lower bound of the
/// nearest-rank request and, for exact stores, at most its upper bound, for stores with
/// histogram percentiles at most `bucket_upper` of that upper bound (the bucket it falls in).
pub async fn metrics_of_traffic(
    store: &DynMetricsStore,
    frontend: &str,
    window: Duration,
    sent: &[SentRequest],
    bucket_upper: impl Fn(f64) -> f64,
) {
    let m = store
        .request_metrics(frontend, window)
        .await
        .expect("metrics");
    let mut status = StatusClasses::default();
    for r in sent {
        status.add(r.status);
    }
    assert_eq!(m.status, status, "status classes of {frontend}");
    assert_eq!(m.requests, sent.len() as u64, "requests of {frontend}");
    if sent.is_empty() {
        return;
    }
    let n = sent.len() as f64;
    let low = sent.iter().map(|r| *r.time_ms.start() as f64).sum::<f64>() / n;
    let high = sent.iter().map(|r| *r.time_ms.end() as f64).sum::<f64>() / n;
    let avg = m.response_time_avg_ms.expect("an average");
    assert!(
        (low..=high).contains(&avg),
        "average {avg} ms of {frontend} outside {low}..={high}"
    );
    let mut by_low: Vec<u64> = sent.iter().map(|r| *r.time_ms.start()).collect();
    let mut by_high: Vec<u64> = sent.iter().map(|r| *r.time_ms.end()).collect();
    by_low.sort_unstable();
    by_high.sort_unstable();
    let exact = store.metrics_capabilities().exact_percentiles;
    for (p, got) in [
        (50.0, m.response_time_p50_ms),
        (95.0, m.response_time_p95_ms),
        (99.0, m.response_time_p99_ms),
    ] {
        let rank = ((p / 100.0) * n).ceil().clamp(1.0, n) as usize - 1;
        let got = got.unwrap_or_else(|| panic!("p{p} of {frontend}"));
        let (lo, hi) = (by_low[rank] as f64, by_high[rank] as f64);
        let hi = if exact { hi } else { bucket_upper(hi) };
        assert!(
            lo <= got && got <= hi,
            "p{p} {got} ms of {frontend} outside {lo}..={hi}"
        );
    }
}

/// Runs every event-store function the capabilities allow, with `now_ms` the store's clock.
pub async fn run_all_events(store: &DynEventStore, scope: &str, now_ms: i64) {
    publish_and_query(store, &format!("{scope}-q"), now_ms).await;
    time_ranges(store, &format!("{scope}-t"), now_ms).await;
    if store.capabilities().aggregate {
        aggregations(store, &format!("{scope}-a"), now_ms).await;
    }
    if store.capabilities().subscribe {
        subscriptions(store, &format!("{scope}-s"), now_ms).await;
    }
}
