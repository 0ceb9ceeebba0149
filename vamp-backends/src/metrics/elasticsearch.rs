//! Elasticsearch as Vamp's pulse (the [`EventStore`]) and as the store of HAProxy's request
//! records (the [`MetricsStore`]), with the `elasticsearch` crate.
//!
//! # Indices, as Vamp laid them out (`runtime.md` §3.5, §5.1–§5.4)
//!
//! * **Events** go to `<index>-<type>-<yyyy-MM-dd>` (`index` defaults to `vamp-pulse`; the
//!   type lower-cased, characters an index name cannot hold replaced by `_`), dated by the
//!   event's own timestamp in UTC. The template `<index>-template` (pattern `<index>-*`) maps
//!   `tags`, `type`, `id` as keywords and `timestamp` as a date, keeps `value` unindexed, and
//!   puts the alias `<index>` on every such index. Vamp named the date with Java's `YYYY`
//!   (the week-based year), which put the last days of December into next year's index; the
//!   calendar year is used here.
//! * **Request records** go to `<logs>-<yyyy-MM-dd>` (`logs` defaults to `vamp-vga-default`,
//!   Vamp's `vamp-vga-<namespace>`), one document per request in the shape Filebeat wrote
//!   from HAProxy's JSON log (`ft`, `b`, `s`, `ST`, `Tt`, `B`, `t`, `@timestamp`, `type: log`),
//!   so stores a Filebeat fills and stores the gateway agent fills read the same. The
//!   template `<logs>-template` maps strings as keywords, as Filebeat's did.
//!
//! # Event documents
//!
//! Vamp's shape (§5.2): `{id, tags, value, type, timestamp, <type>: value, digest?}`, where
//! `value` is the value itself when it is a string and its JSON text otherwise, and `<type>`
//! carries the structured value (Vamp wrote `""` there for type `event`; the value is kept
//! here). Two additions: `id` (the document's `_id`, generated here so a retried publish cannot
//! store an event twice, and a sort key that breaks ties between equal timestamps), and
//! `numbers`, the numeric leaves of the value by path (`value`, `value/response/time`), the
//! fields aggregations run on. Vamp aggregated `<type>` fields, whose mapping is whatever the
//! first event of a day set, so a number after a map (or the reverse) was refused by
//! Elasticsearch; here the attachment is not indexed (`dynamic: false`) and `numbers.*` are
//! always doubles.
//!
//! # Queries
//!
//! Tag, type and time filters are one flat `bool.filter` list (Vamp nested the tag terms in an
//! array inside `must`, §5.3). Lists page with `search_after` on `(timestamp, id)`, so any
//! page of any size is read without Elasticsearch's 10,000-hit window. Percentiles are exact
//! nearest-rank values, as the in-memory store computes them (a count, then the k-th value by
//! a sorted search), up to 10,000 values; above that Elasticsearch's `percentiles`
//! aggregation (t-digest, approximate) answers. Count is exact (`track_total_hits`).
//!
//! # Writes
//!
//! Events are written with `refresh=wait_for`: a publish returns once a query sees the event.
//! Request records are written with `_bulk` and `create` under ids derived from the batch's
//! content, so a batch sent again after a failure (a timeout after Elasticsearch stored it, a
//! restart) stores nothing twice: the copies are refused as conflicts, which count as stored.
//! Items refused with 429 or a 5xx are sent again (three attempts); what is still refused
//! then makes [`MetricsStore::record`] fail with [`Error::Unavailable`] (send the batch again),
//! and items refused for good (a mapping error) with [`Error::Backend`] naming how many and
//! why, never silently. By default records are not refreshed on write (throughput: a reader
//! sees them after the index refresh, one second by default in Elasticsearch); the option
//! [`ElasticsearchOptions::refresh_records`] (`?refresh=wait_for`) waits.
//!
//! # Subscriptions
//!
//! Elasticsearch has no change feed: [`EventStore::subscribe`] sees the events published
//! through this store object (as Vamp's pulse actor did), not those others write to the index.
//!
//! # Connections
//!
//! Straight to the address: proxies named in the environment (`HTTP_PROXY` and the like) are
//! not used, so a variable set for other programs cannot reroute the records (and the
//! credentials) of an agent running as root.
//!
//! # What the `elasticsearch` crate does not do
//!
//! Nothing was needed outside it: requests go through its typed APIs, and its transport
//! sends `application/json`, which Elasticsearch 7–8 and OpenSearch accept. Its client's
//! `Debug` output would show credentials, so this store's does not include it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use elasticsearch::http::request::JsonBody;
use elasticsearch::http::response::Response;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::indices::IndicesPutIndexTemplateParts;
use elasticsearch::params::Refresh;
use elasticsearch::{BulkParts, CreateParts, Elasticsearch, SearchParts};
use futures_util::stream::BoxStream;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use vamp_core::error::{Error, Result};
use vamp_core::metrics::{
    Aggregation, AggregationResult, EventCapabilities, EventStore, EventSubscribers, MetricsStore,
    RequestMetrics, RequestRecord, StatusClasses, expand_tags, parse_query_time,
};
use vamp_core::model::{Event, EventQuery};
use vamp_core::node::Node;
use vamp_core::persistence::ListOptions;
use vamp_core::time::{format_epoch_millis, parse_millis};

use crate::Secret;

/// The most values an exact (nearest-rank) percentile is computed over; above it,
/// Elasticsearch's approximate `percentiles` aggregation answers.
pub const EXACT_PERCENTILE_LIMIT: u64 = 10_000;

/// The most request times [`MetricsStore::response_times`] returns (8 MB).
pub const MAX_RESPONSE_TIMES: usize = 1_000_000;

/// How many documents one page of a search reads.
const PAGE: usize = 1_000;

/// Numeric leaves of one value indexed for aggregations, at most.
const MAX_NUMBERS: usize = 256;

/// Settings of an [`ElasticsearchStore`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElasticsearchOptions {
    /// `http://host:9200` or `https://…`.
    pub address: String,
    /// The pulse (events) index base name (default `vamp-pulse`).
    pub index: String,
    /// The request-log index base name (default `vamp-vga-default`).
    pub logs: String,
    /// Basic authentication.
    pub user: Option<String>,
    /// Its password.
    pub password: Option<Secret>,
    /// Each request's timeout (default 10 s).
    pub request_timeout: Duration,
    /// Wait for a refresh after writing request records (default off).
    pub refresh_records: bool,
}

impl fmt::Debug for ElasticsearchOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElasticsearchOptions")
            .field("address", &crate::url::redact(&self.address))
            .field("index", &self.index)
            .field("logs", &self.logs)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("request_timeout", &self.request_timeout)
            .field("refresh_records", &self.refresh_records)
            .finish()
    }
}

impl ElasticsearchOptions {
    /// Options for `address` with the defaults.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            index: "vamp-pulse".into(),
            logs: "vamp-vga-default".into(),
            user: None,
            password: None,
            request_timeout: Duration::from_secs(10),
            refresh_records: false,
        }
    }

    /// Sets the pulse index base name.
    #[must_use]
    pub fn with_index(mut self, index: impl Into<String>) -> Self {
        self.index = index.into();
        self
    }

    /// Sets the request-log index base name.
    #[must_use]
    pub fn with_logs(mut self, logs: impl Into<String>) -> Self {
        self.logs = logs.into();
        self
    }

    /// Sets basic-authentication credentials.
    #[must_use]
    pub fn with_credentials(mut self, user: impl Into<String>, password: Secret) -> Self {
        self.user = Some(user.into());
        self.password = Some(password);
        self
    }

    /// Sets the request timeout.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Waits for a refresh after writing request records.
    #[must_use]
    pub fn with_refresh_records(mut self, refresh: bool) -> Self {
        self.refresh_records = refresh;
        self
    }
}

/// Whether `name` may start an index name: lower-case letters, digits, `-` and `_`, not
/// starting with `-` or `_`, at most 100 bytes (dates and types are appended).
fn valid_base(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['-', '_'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// An event type as part of an index name.
fn type_segment(event_type: &str) -> String {
    let mut s: String = event_type
        .chars()
        .take(64)
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s.push_str("event");
    }
    s
}

/// The UTC calendar date (`yyyy-MM-dd`) of `ms`.
fn date_of(ms: i64) -> String {
    format_epoch_millis(ms)[..10].to_owned()
}

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

struct Inner {
    client: Elasticsearch,
    label: String,
    opts: ElasticsearchOptions,
    clock: Clock,
    templates: AtomicBool,
    seq: AtomicU64,
    instance: u64,
    subscribers: EventSubscribers,
}

/// Elasticsearch as the events and request-metrics store. Cloning shares the connection.
///
/// ```no_run
/// # async fn f() -> vamp_core::Result<()> {
/// use vamp_backends::metrics::elasticsearch::{ElasticsearchOptions, ElasticsearchStore};
/// let store = ElasticsearchStore::connect(ElasticsearchOptions::new("http://127.0.0.1:9200")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ElasticsearchStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for ElasticsearchStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElasticsearchStore")
            .field("options", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ElasticsearchStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.label)
    }
}

/// What a `_bulk` answer says about its items.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Positions stored (created, or already there: a 409 on `create`).
    pub stored: Vec<usize>,
    /// Positions refused for now (429, 5xx): worth sending again.
    pub retry: Vec<usize>,
    /// Positions refused for good, with the reason.
    pub refused: Vec<(usize, String)>,
}

/// Reads a `_bulk` answer of `items` operations (Elasticsearch 7–8 and OpenSearch shapes).
///
/// # Errors
/// [`Error::Backend`] when the answer is not a bulk answer for that many items.
pub fn bulk_outcome(body: &Value, items: usize, label: &str) -> Result<BulkOutcome> {
    let list = body
        .get("items")
        .and_then(Value::as_array)
        .filter(|l| l.len() == items)
        .ok_or_else(|| Error::Backend {
            backend: label.to_owned(),
            source: format!("a _bulk answer without {items} items: {}", excerpt(body)).into(),
        })?;
    let mut out = BulkOutcome::default();
    for (i, item) in list.iter().enumerate() {
        let op = item
            .as_object()
            .and_then(|o| o.values().next())
            .cloned()
            .unwrap_or(Value::Null);
        let status = op.get("status").and_then(Value::as_u64).unwrap_or(0);
        match status {
            200..=299 | 409 => out.stored.push(i),
            429 | 500..=599 => out.retry.push(i),
            _ => out
                .refused
                .push((i, error_reason(op.get("error").unwrap_or(&op)))),
        }
    }
    Ok(out)
}

/// The reason in an Elasticsearch error body (`{"error":{"type","reason",…}}`, or a string).
pub fn error_reason(body: &Value) -> String {
    let e = body.get("error").unwrap_or(body);
    match e {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let kind = o.get("type").and_then(Value::as_str).unwrap_or("error");
            let reason = o.get("reason").and_then(Value::as_str).unwrap_or("");
            let cause = o
                .get("caused_by")
                .map(|c| format!(" (caused by {})", error_reason(c)))
                .unwrap_or_default();
            format!("{kind}: {reason}{cause}")
        }
        other => excerpt(other),
    }
}

/// The total hits of a search answer: `{"value": n, "relation": "eq"}` (7+) or `n` (6).
///
/// # Errors
/// [`Error::Backend`] when the total is missing or only a lower bound.
pub fn total_hits(body: &Value, label: &str) -> Result<u64> {
    let total = body.pointer("/hits/total");
    let exact = match total {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::Object(o)) => {
            if o.get("relation").and_then(Value::as_str).unwrap_or("eq") == "eq" {
                o.get("value").and_then(Value::as_u64)
            } else {
                None
            }
        }
        _ => None,
    };
    exact.ok_or_else(|| Error::Backend {
        backend: label.to_owned(),
        source: format!("no exact hit count in {}", excerpt(body)).into(),
    })
}

fn excerpt(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The numeric leaves of an event value, by path: the value itself is `value`, a leaf under a
/// map `value/a/b`. Strings that hold a number count (as [`vamp_core::metrics::event_field`]).
fn numbers_of(value: &Node) -> serde_json::Map<String, Value> {
    fn walk(
        node: &Node,
        path: &mut String,
        depth: usize,
        out: &mut serde_json::Map<String, Value>,
    ) {
        if out.len() >= MAX_NUMBERS {
            return;
        }
        let number = match node {
            Node::Int(i) => Some(*i as f64),
            Node::Float(f) if f.is_finite() => Some(*f),
            Node::Str(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
            Node::Map(m) if depth < 8 => {
                for (k, v) in m.iter() {
                    // A key with '.' cannot be named by a field path; with '/' it would be
                    // ambiguous.
                    if k.is_empty() || k.contains(['.', '/']) {
                        continue;
                    }
                    let len = path.len();
                    path.push('/');
                    path.push_str(k);
                    walk(v, path, depth + 1, out);
                    path.truncate(len);
                }
                None
            }
            _ => None,
        };
        if let Some(n) = number {
            out.insert(path.clone(), json!(n));
        }
    }
    let mut out = serde_json::Map::new();
    walk(value, &mut "value".to_owned(), 0, &mut out);
    out
}

/// The `numbers.*` field of an aggregation field (`value`, `a.b`, `value.a.b`).
fn number_field(field: &str) -> String {
    let path = field
        .strip_prefix("value")
        .map_or(field, |rest| rest.trim_start_matches('.'));
    let mut key = "numbers.value".to_owned();
    for step in path.split('.').filter(|s| !s.is_empty()) {
        key.push('/');
        key.push_str(step);
    }
    key
}

/// Core fields of an event document (an attachment named like one is left out).
const CORE_FIELDS: [&str; 8] = [
    "id",
    "tags",
    "value",
    "type",
    "timestamp",
    "digest",
    "version",
    "numbers",
];

/// The document Vamp stored for an event (plus `id` and `numbers`).
fn event_document(e: &Event) -> Value {
    let mut doc = serde_json::Map::new();
    doc.insert("id".into(), json!(e.id));
    doc.insert("tags".into(), json!(e.tags));
    doc.insert(
        "value".into(),
        match &e.value {
            Node::Str(s) => json!(s),
            Node::Null => json!(""),
            other => json!(other.to_json().to_string()),
        },
    );
    doc.insert("type".into(), json!(e.event_type));
    doc.insert("timestamp".into(), json!(e.timestamp));
    if !CORE_FIELDS.contains(&e.event_type.as_str()) {
        doc.insert(e.event_type.clone(), e.value.to_json());
    }
    if let Some(d) = &e.digest {
        doc.insert("digest".into(), json!(d));
    }
    if let Some(v) = &e.version {
        doc.insert("version".into(), json!(v));
    }
    doc.insert("numbers".into(), Value::Object(numbers_of(&e.value)));
    Value::Object(doc)
}

/// An event from a stored document (Vamp's or this store's).
fn event_of(hit: &Value) -> Option<Event> {
    let src = hit.get("_source")?;
    let event_type = src
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("event")
        .to_owned();
    let value = match src.get(&event_type) {
        // Vamp wrote "" there for type `event`; the value is then in `value`.
        Some(v)
            if !(CORE_FIELDS.contains(&event_type.as_str())
                || (event_type == "event" && v.as_str() == Some(""))) =>
        {
            Node::from_json(v)
        }
        _ => match src.get("value") {
            Some(Value::String(s)) => Node::Str(s.clone()),
            Some(v) => Node::from_json(v),
            None => Node::Null,
        },
    };
    let id = src
        .get("id")
        .and_then(Value::as_str)
        .or_else(|| hit.get("_id").and_then(Value::as_str))
        .map(str::to_owned);
    Some(Event {
        id,
        version: src
            .get("version")
            .and_then(Value::as_str)
            .map(str::to_owned),
        tags: src
            .get("tags")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        value,
        timestamp: src.get("timestamp").and_then(Value::as_str)?.to_owned(),
        event_type,
        digest: src.get("digest").and_then(Value::as_str).map(str::to_owned),
    })
}

/// HAProxy's `%t` accept date (`dd/MMM/yyyy:HH:mm:ss.SSS`, UTC here).
fn haproxy_date(ms: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let iso = format_epoch_millis(ms);
    let month = iso[5..7].parse::<usize>().unwrap_or(1).clamp(1, 12);
    format!(
        "{}/{}/{}:{}",
        &iso[8..10],
        MONTHS[month - 1],
        &iso[..4],
        &iso[11..23]
    )
}

/// The document Filebeat wrote for one HAProxy log line, from a record.
fn record_document(r: &RequestRecord, id: &str) -> Value {
    let mut doc = json!({
        "@timestamp": format_epoch_millis(r.timestamp_ms),
        "t": haproxy_date(r.timestamp_ms),
        "ft": r.frontend,
        "b": r.backend,
        "Tt": r.total_time_ms,
        "B": r.bytes_read,
        "type": "log",
        "vamp_id": id,
    });
    if let Some(s) = &r.server {
        doc["s"] = json!(s);
    }
    if let Some(st) = r.status {
        doc["ST"] = json!(st);
    }
    doc
}

/// Ids for a batch of record documents: the batch's SHA-1 and the position, so the same batch
/// sent twice gets the same ids.
fn batch_ids(docs: &[Value]) -> Vec<String> {
    let mut h = Sha1::new();
    for d in docs {
        h.update(d.to_string().as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    let hex = vamp_core::lookup::hex(&digest);
    (0..docs.len()).map(|i| format!("{hex}-{i}")).collect()
}

impl ElasticsearchStore {
    /// Connects (checking that Elasticsearch answers) and installs the index templates.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad address or index name; [`Error::Unavailable`] when
    /// Elasticsearch cannot be reached; [`Error::Backend`] when it refuses the credentials or
    /// the templates.
    pub async fn connect(opts: ElasticsearchOptions) -> Result<Self> {
        Self::connect_with_clock(opts, vamp_core::time::now_millis).await
    }

    /// [`ElasticsearchStore::connect`] with a clock (milliseconds since the Unix epoch) for the
    /// windows of request metrics and `now()` in queries.
    ///
    /// # Errors
    /// As [`ElasticsearchStore::connect`].
    pub async fn connect_with_clock(
        opts: ElasticsearchOptions,
        clock: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> Result<Self> {
        let bad = |m: String| crate::invalid("elasticsearch", m);
        let url = elasticsearch::http::Url::parse(&opts.address)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.password().is_none())
            .ok_or_else(|| {
                bad("the address is http(s)://host:port, credentials given apart".into())
            })?;
        for (what, name) in [("index", &opts.index), ("logs", &opts.logs)] {
            if !valid_base(name) {
                return Err(bad(format!(
                    "{what} {name:?}: lower-case letters, digits, '-' and '_', not first, at most 100"
                )));
            }
        }
        let mut transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(opts.request_timeout)
            .disable_proxy();
        if let (Some(user), Some(password)) = (&opts.user, &opts.password) {
            transport = transport.auth(elasticsearch::auth::Credentials::Basic(
                user.clone(),
                password.0.clone(),
            ));
        }
        let transport = transport.build().map_err(|e| bad(e.to_string()))?;
        let label = format!(
            "ElasticsearchStore({}, index {}, logs {})",
            crate::url::redact(&opts.address),
            opts.index,
            opts.logs
        );
        let instance = {
            let mut h = Sha1::new();
            h.update(format!(
                "{:?}{}",
                std::time::SystemTime::now(),
                std::process::id()
            ));
            let d = h.finalize();
            u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
        };
        let store = Self {
            inner: Arc::new(Inner {
                client: Elasticsearch::new(transport),
                label,
                opts,
                clock: Arc::new(clock),
                templates: AtomicBool::new(false),
                seq: AtomicU64::new(0),
                instance,
                subscribers: EventSubscribers::default(),
            }),
        };
        store.ensure_templates().await?;
        Ok(store)
    }

    fn label(&self) -> &str {
        &self.inner.label
    }

    fn unavailable(&self, e: impl Into<vamp_core::error::BoxError>) -> Error {
        // A server that comes back may have lost its templates (a restart of a node without
        // them, a stand-in that keeps nothing): install them again before the next write.
        self.inner.templates.store(false, Ordering::Relaxed);
        Error::Unavailable {
            backend: self.inner.label.clone(),
            source: e.into(),
        }
    }

    /// The JSON of an answer, or the error it stands for.
    async fn answer(
        &self,
        what: &str,
        sent: std::result::Result<Response, elasticsearch::Error>,
    ) -> Result<Value> {
        let response = sent.map_err(|e| self.unavailable(format!("{what}: {e}")))?;
        let status = response.status_code();
        let body: Value = response
            .json()
            .await
            .map_err(|e| self.unavailable(format!("{what}: {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        let reason = error_reason(&body);
        Err(match status.as_u16() {
            429 | 500..=599 => self.unavailable(format!("{what}: HTTP {status}: {reason}")),
            401 | 403 => Error::Backend {
                backend: self.inner.label.clone(),
                source: format!(
                    "{what}: Elasticsearch refused the credentials (HTTP {}): {reason}",
                    status.as_u16()
                )
                .into(),
            },
            400 => Error::Invalid {
                what: "query",
                value: what.to_owned(),
                reason: format!("Elasticsearch refused it: {reason}"),
            },
            _ => Error::Backend {
                backend: self.inner.label.clone(),
                source: format!("{what}: HTTP {}: {reason}", status.as_u16()).into(),
            },
        })
    }

    /// Installs the two index templates (idempotent) unless done since the last outage.
    async fn ensure_templates(&self) -> Result<()> {
        if self.inner.templates.load(Ordering::Relaxed) {
            return Ok(());
        }
        let o = &self.inner.opts;
        let pulse = json!({
            "index_patterns": [format!("{}-*", o.index)],
            "priority": 200,
            "template": {
                "aliases": { o.index.clone(): {} },
                "mappings": {
                    "dynamic": false,
                    "dynamic_templates": [
                        { "numbers": { "path_match": "numbers.*", "mapping": { "type": "double" } } }
                    ],
                    "properties": {
                        "id": { "type": "keyword" },
                        "tags": { "type": "keyword" },
                        "type": { "type": "keyword" },
                        "timestamp": { "type": "date", "format": "date_optional_time||epoch_millis" },
                        "value": { "type": "text", "index": false },
                        "digest": { "type": "keyword" },
                        "version": { "type": "keyword" },
                        "numbers": { "type": "object", "dynamic": true }
                    }
                }
            }
        });
        let logs = json!({
            "index_patterns": [format!("{}-*", o.logs)],
            "priority": 201,
            "template": {
                "mappings": {
                    "dynamic_templates": [
                        { "strings": { "match_mapping_type": "string",
                                       "mapping": { "type": "keyword", "ignore_above": 1024 } } }
                    ],
                    "properties": {
                        "@timestamp": { "type": "date" },
                        "ft": { "type": "keyword" },
                        "b": { "type": "keyword" },
                        "s": { "type": "keyword" },
                        "ST": { "type": "integer" },
                        "Tt": { "type": "long" },
                        "B": { "type": "long" },
                        "type": { "type": "keyword" },
                        "vamp_id": { "type": "keyword" }
                    }
                }
            }
        });
        for (name, body) in [
            (format!("{}-template", o.index), pulse),
            (format!("{}-template", o.logs), logs),
        ] {
            let sent = self
                .inner
                .client
                .indices()
                .put_index_template(IndicesPutIndexTemplateParts::Name(&name))
                .body(body)
                .send()
                .await;
            self.answer(&format!("index template {name}"), sent).await?;
        }
        self.inner.templates.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// A new event id: time-ordered within this store object.
    fn next_id(&self) -> String {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:012x}{:08x}{:016x}",
            (self.inner.clock)().max(0),
            seq & 0xffff_ffff,
            self.inner.instance
        )
    }

    /// The `bool.filter` list of an event query.
    fn event_filters(&self, query: &EventQuery) -> Result<Vec<Value>> {
        let mut filters: Vec<Value> = query
            .tags
            .iter()
            .map(|t| json!({ "term": { "tags": t } }))
            .collect();
        if let Some(t) = &query.event_type {
            filters.push(json!({ "term": { "type": t } }));
        }
        if let Some(range) = &query.timestamp {
            let now = (self.inner.clock)();
            let mut r = serde_json::Map::new();
            for (op, bound) in [
                ("lt", &range.lt),
                ("lte", &range.lte),
                ("gt", &range.gt),
                ("gte", &range.gte),
            ] {
                if let Some(b) = bound {
                    r.insert(op.into(), json!(parse_query_time(b, now)?));
                }
            }
            if !r.is_empty() {
                r.insert("format".into(), json!("epoch_millis"));
                filters.push(json!({ "range": { "timestamp": r } }));
            }
        }
        Ok(filters)
    }

    async fn search(&self, index: &str, body: Value) -> Result<Value> {
        let sent = self
            .inner
            .client
            .search(SearchParts::Index(&[index]))
            .allow_no_indices(true)
            .ignore_unavailable(true)
            .body(body)
            .send()
            .await;
        self.answer(&format!("search {index}"), sent).await
    }

    /// One page of a `search_after` walk: `body` (with a unique sort) continued after
    /// `after`, which moves to the page's last hit; the page's hits.
    async fn page(
        &self,
        index: &str,
        mut body: Value,
        after: &mut Option<Value>,
    ) -> Result<Vec<Value>> {
        if let Some(a) = after.take() {
            body["search_after"] = a;
        }
        let mut answer = self.search(index, body).await?;
        let hits = match answer.pointer_mut("/hits/hits").map(Value::take) {
            Some(Value::Array(hits)) => hits,
            _ => Vec::new(),
        };
        *after = hits.last().and_then(|h| h.get("sort")).cloned();
        Ok(hits)
    }

    /// The `k`-th smallest (1-based) value of `field` among the documents matching `query`.
    async fn kth_value(
        &self,
        index: &str,
        query: &Value,
        field: &str,
        k: u64,
    ) -> Result<Option<f64>> {
        let body = json!({
            "query": query,
            "from": k.saturating_sub(1),
            "size": 1,
            "sort": [{ field: { "order": "asc" } }],
            "_source": false,
            "track_total_hits": false,
        });
        let answer = self.search(index, body).await?;
        Ok(answer
            .pointer("/hits/hits/0/sort/0")
            .and_then(Value::as_f64))
    }

    /// The nearest-rank `p`-th percentile of `field` over `n` values matching `query`.
    async fn percentile(
        &self,
        index: &str,
        query: &Value,
        field: &str,
        n: u64,
        p: f64,
    ) -> Result<Option<f64>> {
        if n == 0 {
            return Ok(None);
        }
        if n <= EXACT_PERCENTILE_LIMIT {
            let k = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as u64;
            return self.kth_value(index, query, field, k.clamp(1, n)).await;
        }
        let body = json!({
            "query": query,
            "size": 0,
            "aggs": { "p": { "percentiles": { "field": field, "percents": [p] } } }
        });
        let answer = self.search(index, body).await?;
        Ok(answer
            .pointer("/aggregations/p/values")
            .and_then(Value::as_object)
            .and_then(|v| v.values().next())
            .and_then(Value::as_f64))
    }
}

#[async_trait]
impl EventStore for ElasticsearchStore {
    async fn publish(&self, mut event: Event) -> Result<Event> {
        let Some(ts) = parse_millis(&event.timestamp) else {
            return Err(Error::Invalid {
                what: "event timestamp",
                value: event.timestamp.clone(),
                reason: "expected an ISO-8601 date-time with an offset".into(),
            });
        };
        event.tags = expand_tags(&event.tags);
        let id = event.id.clone().unwrap_or_else(|| self.next_id());
        event.id = Some(id.clone());
        self.ensure_templates().await?;
        let index = format!(
            "{}-{}-{}",
            self.inner.opts.index,
            type_segment(&event.event_type),
            date_of(ts)
        );
        let sent = self
            .inner
            .client
            .create(CreateParts::IndexId(&index, &id))
            .refresh(Refresh::WaitFor)
            .body(event_document(&event))
            .send()
            .await;
        match self.answer(&format!("publish to {index}"), sent).await {
            Ok(_) => {}
            // Sent again after a lost answer: it is stored.
            Err(Error::Backend { source, .. }) if source.to_string().contains("HTTP 409") => {}
            Err(e) => return Err(e),
        }
        self.inner.subscribers.notify(&event);
        Ok(event)
    }

    async fn query(&self, query: &EventQuery, page: ListOptions) -> Result<Vec<Event>> {
        let filters = self.event_filters(query)?;
        let index = format!("{}-*", self.inner.opts.index);
        let mut out = Vec::new();
        let mut skip = page.offset;
        let mut after: Option<Value> = None;
        loop {
            let size = page
                .limit
                .map_or(PAGE, |l| (skip + (l - out.len())).min(PAGE));
            if size == 0 {
                break;
            }
            let body = json!({
                "query": { "bool": { "filter": filters } },
                "size": size,
                "sort": [{ "timestamp": { "order": "desc" } }, { "id": { "order": "desc" } }],
                "track_total_hits": false,
            });
            let hits = self.page(&index, body, &mut after).await?;
            for hit in &hits {
                if skip > 0 {
                    skip -= 1;
                } else if let Some(e) = event_of(hit) {
                    out.push(e);
                }
            }
            if hits.len() < size || after.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn aggregate(
        &self,
        query: &EventQuery,
        aggregation: Aggregation,
        field: &str,
    ) -> Result<AggregationResult> {
        let filters = self.event_filters(query)?;
        let index = format!("{}-*", self.inner.opts.index);
        let q = json!({ "bool": { "filter": filters } });
        let f = number_field(field);
        let counted = async |extra: Option<(&str, Value)>| -> Result<(Value, u64)> {
            let mut aggs = json!({ "n": { "value_count": { "field": f } } });
            if let Some((name, a)) = extra {
                aggs[name] = a;
            }
            let body = json!({ "query": q, "size": 0, "track_total_hits": true, "aggs": aggs });
            let answer = self.search(&index, body).await?;
            let n = answer
                .pointer("/aggregations/n/value")
                .and_then(Value::as_f64)
                .unwrap_or(0.0) as u64;
            Ok((answer, n))
        };
        let metric = |name: &str| json!({ name: { "field": f } });
        let (value, count) = match aggregation {
            Aggregation::Count => {
                let (answer, n) = counted(None).await?;
                let events = total_hits(&answer, self.label())?;
                (Some(events as f64), n)
            }
            Aggregation::Average | Aggregation::Min | Aggregation::Max | Aggregation::Sum => {
                let name = match aggregation {
                    Aggregation::Average => "avg",
                    Aggregation::Min => "min",
                    Aggregation::Max => "max",
                    _ => "sum",
                };
                let (answer, n) = counted(Some(("v", metric(name)))).await?;
                let v = answer
                    .pointer("/aggregations/v/value")
                    .and_then(Value::as_f64);
                (if n == 0 { None } else { v }, n)
            }
            Aggregation::Percentile(p) => {
                let (_, n) = counted(None).await?;
                let with_field = json!({ "bool": { "filter": [q, { "exists": { "field": f } }] } });
                (self.percentile(&index, &with_field, &f, n, p).await?, n)
            }
            _ => {
                return Err(Error::NotSupported {
                    backend: self.label().to_owned(),
                    operation: "aggregation",
                });
            }
        };
        Ok(AggregationResult { value, count })
    }

    fn subscribe(
        &self,
        tags: Vec<String>,
        event_type: Option<String>,
    ) -> BoxStream<'static, Result<Event>> {
        self.inner.subscribers.subscribe(tags, event_type)
    }

    fn capabilities(&self) -> EventCapabilities {
        let mut c = EventCapabilities::default();
        c.aggregate = true;
        c.percentiles = true;
        c.subscribe = true;
        c
    }

    fn subscribers(&self) -> usize {
        self.inner.subscribers.len()
    }
}

impl ElasticsearchStore {
    /// The query of one frontend's records over `window` ending now.
    fn window_query(&self, frontend: &str, window: Duration) -> Value {
        let now = (self.inner.clock)();
        let from = now.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
        json!({ "bool": { "filter": [
            { "term": { "ft": frontend } },
            { "range": { "@timestamp": { "gt": from, "lte": now, "format": "epoch_millis" } } }
        ] } })
    }

    async fn bulk_once(&self, lines: Vec<JsonBody<Value>>) -> Result<Value> {
        let mut request = self.inner.client.bulk(BulkParts::None).body(lines);
        if self.inner.opts.refresh_records {
            request = request.refresh(Refresh::WaitFor);
        }
        let sent = request.send().await;
        self.answer("bulk of request records", sent).await
    }
}

#[async_trait]
impl MetricsStore for ElasticsearchStore {
    async fn record(&self, records: Vec<RequestRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.ensure_templates().await?;
        let mut docs: Vec<Value> = records.iter().map(|r| record_document(r, "")).collect();
        let ids = batch_ids(&docs);
        for (d, id) in docs.iter_mut().zip(&ids) {
            d["vamp_id"] = json!(id);
        }
        let indices: Vec<String> = records
            .iter()
            .map(|r| format!("{}-{}", self.inner.opts.logs, date_of(r.timestamp_ms)))
            .collect();
        let mut pending: Vec<usize> = (0..docs.len()).collect();
        let mut refused: Vec<(usize, String)> = Vec::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
            }
            let mut lines = Vec::with_capacity(pending.len() * 2);
            for &i in &pending {
                lines.push(JsonBody::new(
                    json!({ "create": { "_index": indices[i], "_id": ids[i] } }),
                ));
                lines.push(JsonBody::new(docs[i].clone()));
            }
            let answer = self.bulk_once(lines).await?;
            let outcome = bulk_outcome(&answer, pending.len(), self.label())?;
            refused.extend(
                outcome
                    .refused
                    .into_iter()
                    .map(|(i, why)| (pending[i], why)),
            );
            pending = outcome.retry.into_iter().map(|i| pending[i]).collect();
            if pending.is_empty() {
                break;
            }
        }
        if !refused.is_empty() {
            return Err(Error::Backend {
                backend: self.label().to_owned(),
                source: format!(
                    "{} of {} request records refused; the first: {}",
                    refused.len(),
                    records.len(),
                    refused[0].1
                )
                .into(),
            });
        }
        if !pending.is_empty() {
            return Err(self.unavailable(format!(
                "{} of {} request records still refused after 3 attempts (429 or 5xx); send the batch again",
                pending.len(),
                records.len()
            )));
        }
        Ok(())
    }

    async fn request_metrics(&self, frontend: &str, window: Duration) -> Result<RequestMetrics> {
        let index = format!("{}-*", self.inner.opts.logs);
        let q = self.window_query(frontend, window);
        let body = json!({
            "query": q,
            "size": 0,
            "track_total_hits": true,
            "aggs": {
                "avg": { "avg": { "field": "Tt" } },
                "times": { "value_count": { "field": "Tt" } },
                "status": { "range": { "field": "ST", "ranges": [
                    { "key": "1", "from": 100, "to": 200 },
                    { "key": "2", "from": 200, "to": 300 },
                    { "key": "3", "from": 300, "to": 400 },
                    { "key": "4", "from": 400, "to": 500 },
                    { "key": "5", "from": 500, "to": 600 }
                ] } }
            }
        });
        let answer = self.search(&index, body).await?;
        let requests = total_hits(&answer, self.label())?;
        let mut status = StatusClasses::default();
        if let Some(buckets) = answer
            .pointer("/aggregations/status/buckets")
            .and_then(Value::as_array)
        {
            for b in buckets {
                let n = b.get("doc_count").and_then(Value::as_u64).unwrap_or(0);
                match b.get("key").and_then(Value::as_str) {
                    Some("1") => status.informational = n,
                    Some("2") => status.success = n,
                    Some("3") => status.redirection = n,
                    Some("4") => status.client_error = n,
                    Some("5") => status.server_error = n,
                    _ => {}
                }
            }
        }
        status.other = requests.saturating_sub(
            status.informational
                + status.success
                + status.redirection
                + status.client_error
                + status.server_error,
        );
        let times = answer
            .pointer("/aggregations/times/value")
            .and_then(Value::as_f64)
            .unwrap_or(0.0) as u64;
        let avg = answer
            .pointer("/aggregations/avg/value")
            .and_then(Value::as_f64)
            .filter(|_| times > 0);
        let mut pct = [None; 3];
        for (slot, p) in pct.iter_mut().zip([50.0, 95.0, 99.0]) {
            *slot = self.percentile(&index, &q, "Tt", times, p).await?;
        }
        Ok(RequestMetrics::from_counts(window, status, avg, pct))
    }

    async fn response_times(&self, frontend: &str, window: Duration) -> Result<Vec<u64>> {
        let index = format!("{}-*", self.inner.opts.logs);
        let q = self.window_query(frontend, window);
        let mut out = Vec::new();
        let mut after: Option<Value> = None;
        loop {
            let body = json!({
                "query": q,
                "size": PAGE,
                "sort": [{ "Tt": { "order": "asc" } }, { "vamp_id": { "order": "asc", "missing": "_last" } }],
                "_source": false,
                "track_total_hits": false,
            });
            let hits = self.page(&index, body, &mut after).await?;
            for h in &hits {
                if let Some(t) = h.pointer("/sort/0").and_then(Value::as_f64) {
                    out.push(t.max(0.0) as u64);
                }
            }
            if out.len() > MAX_RESPONSE_TIMES {
                return Err(Error::Invalid {
                    what: "window",
                    value: format!("{}s", window.as_secs()),
                    reason: format!(
                        "more than {MAX_RESPONSE_TIMES} requests of {frontend} in it; ask for a shorter window"
                    ),
                });
            }
            if hits.len() < PAGE || after.is_none() {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_use_the_calendar_year() {
        // 2024-12-30 is in ISO week 1 of 2025: Java's YYYY named it 2025.
        let ms = parse_millis("2024-12-30T12:00:00Z").unwrap();
        assert_eq!(date_of(ms), "2024-12-30");
        assert_eq!(type_segment("Metrics"), "metrics");
        assert_eq!(type_segment("a b/c*"), "a_b_c_");
        assert_eq!(type_segment(""), "event");
        assert!(valid_base("vamp-pulse"));
        for bad in [
            "",
            "-x",
            "_x",
            "Vamp",
            "a*b",
            "a,b",
            "a/b",
            &"x".repeat(101),
        ] {
            assert!(!valid_base(bad), "{bad}");
        }
    }

    #[test]
    fn haproxy_accept_dates() {
        let ms = parse_millis("2026-11-29T07:05:09.123Z").unwrap();
        assert_eq!(haproxy_date(ms), "29/Nov/2026:07:05:09.123");
    }

    #[test]
    fn numbers_are_indexed_by_path() {
        let v =
            Node::from_json(&json!({"response": {"time": 10, "code": "200"}, "a.b": 1, "s": "x"}));
        let n = numbers_of(&v);
        assert_eq!(n.get("value/response/time"), Some(&json!(10.0)));
        assert_eq!(n.get("value/response/code"), Some(&json!(200.0)));
        assert_eq!(n.len(), 2, "{n:?}");
        assert_eq!(numbers_of(&Node::Int(3)).get("value"), Some(&json!(3.0)));
        assert!(numbers_of(&Node::Str("n/a".into())).is_empty());
        assert_eq!(number_field("value"), "numbers.value");
        assert_eq!(number_field("response.time"), "numbers.value/response/time");
        assert_eq!(
            number_field("value.response.time"),
            "numbers.value/response/time"
        );
    }

    #[test]
    fn event_documents_keep_vamps_shape() {
        let mut e = Event::new(
            vec!["gateways:sava".into(), "gateways".into()],
            Node::from_json(&json!({"x": 1})),
            "metrics",
        );
        e.id = Some("abc".into());
        e.timestamp = "2026-11-29T10:00:00.000Z".into();
        let doc = event_document(&e);
        assert_eq!(doc["value"], json!("{\"x\":1}"));
        assert_eq!(doc["metrics"], json!({"x": 1}));
        assert_eq!(doc["type"], json!("metrics"));
        let back = event_of(&json!({ "_id": "zz", "_source": doc })).unwrap();
        assert_eq!(back, e);
        // A document Vamp wrote (no id field, a string value).
        let vamp = json!({"_id": "AV1", "_source": {"tags": ["a"], "value": "deployed", "type": "event", "timestamp": "2026-11-29T10:00:00Z", "event": ""}});
        let e = event_of(&vamp).unwrap();
        assert_eq!(
            (e.id.as_deref(), e.value),
            (Some("AV1"), Node::Str("deployed".into()))
        );
    }

    #[test]
    fn batch_ids_are_stable_and_distinct() {
        let r = |ms| RequestRecord {
            timestamp_ms: ms,
            frontend: "f".into(),
            backend: "b".into(),
            server: None,
            status: Some(200),
            total_time_ms: 1,
            bytes_read: 0,
        };
        let docs: Vec<Value> = [r(1), r(1), r(2)]
            .iter()
            .map(|x| record_document(x, ""))
            .collect();
        let a = batch_ids(&docs);
        assert_eq!(a, batch_ids(&docs), "the same batch gets the same ids");
        assert_eq!(a.len(), 3);
        assert_ne!(
            a[0], a[1],
            "equal records in one batch are distinct documents"
        );
        assert_ne!(a, batch_ids(&docs[..2]), "another batch, other ids");
    }
}
