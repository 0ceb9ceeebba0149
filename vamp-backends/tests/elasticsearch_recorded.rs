//! The Elasticsearch store against answers recorded from Elasticsearch 8 where the stand-in
//! the test command runs (`osmem-server`, which speaks OpenSearch) differs or cannot be made
//! to fail: bulk item errors (429, 409, a mapping error), a 429 on a whole request, a hit count
//! that is only a lower bound, and a 401 of Elasticsearch's security layer. A replay server
//! (a double, on real HTTP) answers each request with the next recorded answer and keeps what
//! it was sent.
#![cfg(feature = "metrics-elasticsearch")]

#[allow(dead_code)]
mod http_double;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use vamp_backends::Secret;
use vamp_backends::metrics::elasticsearch::{
    ElasticsearchOptions, ElasticsearchStore, bulk_outcome, total_hits,
};
use vamp_core::metrics::{MetricsStore, RequestRecord};

#[derive(Clone, Debug)]
struct Sent {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
}

#[derive(Default)]
struct Script {
    answers: VecDeque<(&'static str, u16, Value)>,
    sent: Vec<Sent>,
}

/// Answers requests in order from `answers` (`(path prefix, status, body)`); a request that
/// does not match the next answer gets a 599 the store reports.
async fn replay(answers: Vec<(&'static str, u16, Value)>) -> (String, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(Script {
        answers: answers.into(),
        sent: Vec::new(),
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = Arc::clone(&script);
    tokio::spawn(http_double::serve(
        listener,
        move |req: Request<Incoming>| {
            let s = Arc::clone(&s);
            async move {
                let method = req.method().to_string();
                let path = req.uri().to_string();
                let authorization = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut s = s.lock().unwrap();
                s.sent.push(Sent {
                    method,
                    path: path.clone(),
                    authorization,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let (status, answer) = match s.answers.front() {
                    Some((prefix, _, _)) if path.starts_with(prefix) => {
                        let (_, status, body) = s.answers.pop_front().unwrap();
                        (status, body)
                    }
                    other => (
                        599,
                        json!({ "error": format!("unexpected {path}, expected {other:?}") }),
                    ),
                };
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer.to_string())))
                    .unwrap()
            }
        },
    ));
    (format!("http://{addr}"), script)
}

fn acknowledged() -> Value {
    json!({ "acknowledged": true })
}

/// The two index templates the store installs on connect.
fn templates() -> Vec<(&'static str, u16, Value)> {
    vec![
        ("/_index_template/", 200, acknowledged()),
        ("/_index_template/", 200, acknowledged()),
    ]
}

fn records(n: usize) -> Vec<RequestRecord> {
    (0..n)
        .map(|i| RequestRecord {
            timestamp_ms: 1_795_946_400_000 + i as i64,
            frontend: "f".into(),
            backend: "b".into(),
            server: Some("s".into()),
            status: Some(200),
            total_time_ms: 5,
            bytes_read: 1,
        })
        .collect()
}

/// A `create` item as Elasticsearch 8 answers it.
fn created(id: &str) -> Value {
    json!({ "create": { "_index": "vamp-vga-default-2026-11-29", "_id": id, "_version": 1,
        "result": "created", "_shards": { "total": 2, "successful": 1, "failed": 0 },
        "_seq_no": 0, "_primary_term": 1, "status": 201 } })
}

fn rejected() -> Value {
    json!({ "create": { "_index": "vamp-vga-default-2026-11-29", "_id": "x", "status": 429,
        "error": { "type": "es_rejected_execution_exception",
            "reason": "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=107374183, max_coordinating_and_primary_bytes=107374182]" } } })
}

fn conflict() -> Value {
    json!({ "create": { "_index": "vamp-vga-default-2026-11-29", "_id": "x", "status": 409,
        "error": { "type": "version_conflict_engine_exception",
            "reason": "[x]: version conflict, document already exists (current version [1])",
            "index_uuid": "aqH2V0rGT0W1hEFCLaHp2w", "shard": "0", "index": "vamp-vga-default-2026-11-29" } } })
}

fn mapping_error() -> Value {
    json!({ "create": { "_index": "vamp-vga-default-2026-11-29", "_id": "x", "status": 400,
        "error": { "type": "document_parsing_exception",
            "reason": "[1:92] failed to parse field [Tt] of type [long] in document with id 'x'. Preview of field's value: 'abc'",
            "caused_by": { "type": "illegal_argument_exception", "reason": "For input string: \"abc\"" } } } })
}

fn bulk(items: Vec<Value>) -> Value {
    json!({ "errors": true, "took": 3, "items": items })
}

/// The `_id`s of the `create` lines of a bulk body.
fn ids_of(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            v.pointer("/create/_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

async fn connect(address: &str) -> ElasticsearchStore {
    ElasticsearchStore::connect(
        ElasticsearchOptions::new(address).with_request_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("connect")
}

#[tokio::test]
async fn items_refused_with_429_are_sent_again_alone_and_conflicts_count_as_stored() {
    let mut answers = templates();
    answers.push((
        "/_bulk",
        200,
        bulk(vec![created("a"), rejected(), conflict()]),
    ));
    answers.push(("/_bulk", 200, bulk(vec![created("b")])));
    let (address, script) = replay(answers).await;
    let store = connect(&address).await;
    store
        .record(records(3))
        .await
        .expect("stored after one retry");
    let s = script.lock().unwrap();
    let bulks: Vec<&Sent> = s
        .sent
        .iter()
        .filter(|r| r.path.starts_with("/_bulk"))
        .collect();
    assert_eq!(bulks.len(), 2);
    let first = ids_of(&bulks[0].body);
    assert_eq!(first.len(), 3);
    assert_eq!(
        ids_of(&bulks[1].body),
        [first[1].clone()],
        "only the rejected item is sent again, under the same id"
    );
    assert_eq!(bulks[0].method, "POST");
}

#[tokio::test]
async fn a_record_refused_for_good_is_reported_not_dropped() {
    let mut answers = templates();
    answers.push((
        "/_bulk",
        200,
        bulk(vec![created("a"), mapping_error(), created("c")]),
    ));
    let (address, _script) = replay(answers).await;
    let store = connect(&address).await;
    let err = store.record(records(3)).await.expect_err("a mapping error");
    assert!(
        !err.is_temporary(),
        "sending it again would not help: {err}"
    );
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(
        text.contains("1 of 3 request records refused")
            && text.contains("document_parsing_exception"),
        "{text}"
    );
}

#[tokio::test]
async fn a_429_on_the_whole_bulk_is_temporary() {
    let mut answers = templates();
    let too_many = json!({ "error": { "root_cause": [{ "type": "es_rejected_execution_exception",
        "reason": "rejected execution of org.elasticsearch.transport.TransportService$4@1c3e7f4 on EsThreadPoolExecutor[name = node-1/write, queue capacity = 10000]" }],
        "type": "es_rejected_execution_exception",
        "reason": "rejected execution of org.elasticsearch.transport.TransportService$4@1c3e7f4 on EsThreadPoolExecutor[name = node-1/write, queue capacity = 10000]" },
        "status": 429 });
    answers.push(("/_bulk", 429, too_many));
    // The templates are installed again after an outage.
    answers.extend(templates());
    answers.push((
        "/_bulk",
        200,
        json!({ "errors": false, "took": 1, "items": [created("a")] }),
    ));
    let (address, script) = replay(answers).await;
    let store = connect(&address).await;
    let err = store.record(records(1)).await.expect_err("429");
    assert!(err.is_temporary(), "{err}");
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(text.contains("es_rejected_execution_exception"), "{text}");
    store.record(records(1)).await.expect("sent again");
    assert!(
        script.lock().unwrap().answers.is_empty(),
        "every recorded answer was used"
    );
}

#[tokio::test]
async fn a_hit_count_that_is_a_lower_bound_is_an_error_not_a_figure() {
    let mut answers = templates();
    answers.push((
        "/vamp-vga-default-*/_search",
        200,
        json!({ "took": 12, "timed_out": false,
            "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 },
            "hits": { "total": { "value": 10000, "relation": "gte" }, "max_score": null, "hits": [] } }),
    ));
    let (address, script) = replay(answers).await;
    let store = connect(&address).await;
    let err = store
        .request_metrics("f", Duration::from_secs(60))
        .await
        .expect_err("only a lower bound");
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(text.contains("no exact hit count"), "{text}");
    let s = script.lock().unwrap();
    let search: Value = serde_json::from_str(&s.sent.last().unwrap().body).unwrap();
    assert_eq!(
        search["track_total_hits"],
        json!(true),
        "the store asks for exact counts"
    );
}

#[tokio::test]
async fn refused_credentials_are_named_and_the_password_is_not() {
    let answers = vec![(
        "/_index_template/",
        401,
        json!({ "error": { "root_cause": [{ "type": "security_exception",
            "reason": "unable to authenticate user [vamp] for REST request [/_index_template/vamp-pulse-template]",
            "header": { "WWW-Authenticate": ["Basic realm=\"security\" charset=\"UTF-8\"", "ApiKey"] } }],
            "type": "security_exception",
            "reason": "unable to authenticate user [vamp] for REST request [/_index_template/vamp-pulse-template]",
            "header": { "WWW-Authenticate": ["Basic realm=\"security\" charset=\"UTF-8\"", "ApiKey"] } },
            "status": 401 }),
    )];
    let (address, script) = replay(answers).await;
    let opts =
        ElasticsearchOptions::new(address).with_credentials("vamp", Secret("s3cr3t-pw".into()));
    assert!(!format!("{opts:?}").contains("s3cr3t-pw"));
    let err = ElasticsearchStore::connect(opts).await.expect_err("401");
    let text = format!("{err} {err:?}");
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(!text.contains("s3cr3t-pw"), "{text}");
    let s = script.lock().unwrap();
    assert_eq!(
        s.sent[0].authorization.as_deref(),
        Some("Basic dmFtcDpzM2NyM3QtcHc="),
        "basic authentication with the configured user"
    );
}

#[test]
fn answers_of_elasticsearch_6_to_8_and_opensearch_are_read() {
    assert_eq!(
        total_hits(&json!({ "hits": { "total": 7 } }), "es").unwrap(),
        7
    );
    assert_eq!(
        total_hits(
            &json!({ "hits": { "total": { "value": 7, "relation": "eq" } } }),
            "es"
        )
        .unwrap(),
        7
    );
    assert!(total_hits(&json!({ "hits": {} }), "es").is_err());
    let outcome = bulk_outcome(
        &bulk(vec![created("a"), rejected(), conflict(), mapping_error()]),
        4,
        "es",
    )
    .unwrap();
    assert_eq!(outcome.stored, [0, 2]);
    assert_eq!(outcome.retry, [1]);
    assert_eq!(outcome.refused.len(), 1);
    assert!(
        outcome.refused[0]
            .1
            .contains("caused by illegal_argument_exception")
    );
    assert!(
        bulk_outcome(&bulk(vec![created("a")]), 2, "es").is_err(),
        "an answer for fewer items"
    );
}
