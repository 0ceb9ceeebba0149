//! Consul's KV store as a [`KeyValueStore`] (feature `kv-consul`).
//!
//! A thin client of Consul's HTTP API (`/v1/kv` and `/v1/txn`, plain HTTP: talk to the local
//! Consul agent, as Consul recommends). Consul's blocking queries say *that* a prefix changed,
//! and return only its latest state, so a watch built on them alone would skip values written
//! in quick succession. This store therefore keeps, under its root folder `R` (default
//! `vamp-kv`):
//!
//! | key | holds |
//! |---|---|
//! | `R/data/<key>` | each entry's value (the [`KeyPath`] without its leading `/`) |
//! | `R/log/<name>` | every change (key, operation, value), written in the same transaction |
//! | `R/rev` | set by every write, so its `ModifyIndex` is the latest write's index |
//! | `R/trimmed` | the highest index of the change records trimmed from the log |
//!
//! Every write is one `/v1/txn` transaction (entry, change record and `rev`, all or nothing),
//! so an entry's version is its Consul `ModifyIndex`, increasing across all keys.
//! Create-only writes are `cas` with index 0, compare-and-swap is `cas` with the expected
//! index, deletes are `delete-cas` with the index just read: Consul enforces all of them.
//!
//! A watch lists `R/log/` with blocking queries on `X-Consul-Index`, reads the change records
//! it has not seen, and delivers them in index order; after a reconnect it goes on from the last
//! index it delivered, so no change is lost while the log keeps it. Writers trim the log to the
//! newest [`LOG_KEEP`] records; a watch that falls further behind yields [`Error::WatchGap`]
//! and starts again from the current values.
//!
//! Limits: a transaction carries the value twice, base64-encoded, within Consul's default
//! `txn_max_req_len` of 512 KiB, so values are limited to [`VALUE_MAX_BYTES`]. TTLs and HTTPS
//! are not supported.
//!
//! Configuration through [`KvBackendConfig`](super::KvBackendConfig):
//! `consul://host:8500/prefix?token=…` or the fields of
//! [`ConsulKvConfig`](super::ConsulKvConfig): `address`, `prefix`, `token`.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use vamp_core::Error;
use vamp_core::kv::*;

use super::change_log::{log_record, parse_log_record};

/// The largest value this store writes: the value goes into a transaction twice
/// (entry and change record), base64-encoded, within Consul's default 512 KiB request limit.
pub const VALUE_MAX_BYTES: usize = 184 * 1024;

/// How many change records the log keeps.
pub const LOG_KEEP: usize = 1000;

/// Operations per transaction this client sends (Consul accepts 64, newer versions 128).
const TXN_OPS: usize = 64;

/// Options of [`ConsulKv::connect`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsulKvOptions {
    /// The agent's HTTP address, `http://host:port`.
    pub address: String,
    /// The folder the store keeps everything under (no leading or trailing `/`).
    pub root: String,
    /// An ACL token, sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// How long one blocking query waits (`wait=`; Consul adds up to 1/16 of jitter).
    pub block_wait: Duration,
    /// The time limit of every other request.
    pub request_timeout: Duration,
}

impl ConsulKvOptions {
    /// The options for the agent at `address`, root `vamp-kv`, no token.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            root: "vamp-kv".into(),
            token: None,
            block_wait: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Sets the root folder.
    #[must_use]
    pub fn with_root(mut self, root: impl Into<String>) -> Self {
        self.root = root.into();
        self
    }

    /// Sets the ACL token.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets how long one blocking query waits.
    #[must_use]
    pub fn with_block_wait(mut self, wait: Duration) -> Self {
        self.block_wait = wait;
        self
    }
}

impl fmt::Debug for ConsulKvOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulKvOptions")
            .field("address", &self.address)
            .field("root", &self.root)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("block_wait", &self.block_wait)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A [`KeyValueStore`] on Consul's KV store. Cloning shares the HTTP connection pool. While
/// Consul cannot be reached (or has no leader), operations fail with [`Error::Unavailable`].
///
/// ```no_run
/// # async fn example() -> Result<(), vamp_core::Error> {
/// use vamp_backends::kv::consul::{ConsulKv, ConsulKvOptions};
/// use vamp_core::kv::{keys, KeyValueStoreExt};
///
/// let kv = ConsulKv::connect(ConsulKvOptions::new("http://127.0.0.1:8500")).await?;
/// kv.put(&keys::haproxy_configuration("default", "1.7")?, "frontend ...".into()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConsulKv {
    inner: Arc<Inner>,
}

struct Inner {
    /// The session of each (lease, holder) this handle holds or held.
    sessions: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
    options: ConsulKvOptions,
    http: Client<HttpConnector, Full<Bytes>>,
    label: String,
    writes: AtomicU64,
}

/// One KV entry as Consul returns it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    key: String,
    #[serde(default)]
    value: Option<String>,
    modify_index: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Debug, Deserialize)]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: Option<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    op_index: usize,
    what: String,
}

/// A transaction's outcome: committed with its results, or rolled back with the failed ops.
enum Txn {
    Committed(Vec<Entry>),
    RolledBack(Vec<TxnError>),
}

/// Percent-encodes a Consul key for a URL path (bytes outside `[A-Za-z0-9-._~/]`).
fn encode_path(key: &str) -> String {
    crate::url::percent_encode(key, b"-._~/")
}

fn decode_value(entry: &Entry) -> Result<Vec<u8>, String> {
    match &entry.value {
        None => Ok(Vec::new()),
        Some(v) => BASE64
            .decode(v)
            .map_err(|e| format!("value of '{}' is not base64: {e}", entry.key)),
    }
}

/// The index `R/trimmed` holds (the highest index trimmed from the log; 0 if unreadable).
fn trimmed_index(entry: &Entry) -> u64 {
    let value = decode_value(entry).unwrap_or_default();
    String::from_utf8_lossy(&value).parse().unwrap_or(0)
}

/// A change record name: writer time (µs, hex) then 64 random bits, so names sort roughly by
/// age (which only decides what trimming removes first) and never collide.
fn record_name() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{micros:016x}-{random:016x}")
}

fn kv_op(verb: &str, key: &str) -> Json {
    json!({ "KV": { "Verb": verb, "Key": key } })
}

fn kv_write(verb: &str, key: &str, value: &[u8], index: Option<u64>) -> Json {
    let mut op = json!({ "Verb": verb, "Key": key, "Value": BASE64.encode(value) });
    if let Some(i) = index {
        op["Index"] = json!(i);
    }
    json!({ "KV": op })
}

impl ConsulKv {
    /// Connects to the Consul agent in `options` and checks that it answers.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an address that is not `http://host:port` or a bad root,
    /// [`Error::Unavailable`] when Consul cannot be reached.
    pub async fn connect(options: ConsulKvOptions) -> Result<Self, Error> {
        let address = options.address.trim_end_matches('/').to_owned();
        let Some(rest) = address.strip_prefix("http://") else {
            return Err(crate::invalid(
                "consul",
                format!(
                    "address '{address}' must be http://host:port (HTTPS is not supported: talk to the local Consul agent)"
                ),
            ));
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
            return Err(crate::invalid(
                "consul",
                format!("address '{address}' must be http://host:port"),
            ));
        }
        let root = options.root.trim_matches('/').to_owned();
        if root.is_empty() || KeyPath::parse(&root).is_err() {
            return Err(crate::invalid(
                "consul",
                format!(
                    "root folder '{}' must be a non-empty key path",
                    options.root
                ),
            ));
        }
        let label = format!("Consul({address}/{root})");
        let http = Client::builder(TokioExecutor::new()).build_http();
        let kv = Self {
            inner: Arc::new(Inner {
                options: ConsulKvOptions {
                    address,
                    root,
                    ..options
                },
                http,
                label,
                writes: AtomicU64::new(0),
                sessions: std::sync::Mutex::default(),
            }),
        };
        // Reachability (and the token's read permission) checked now, not at first use.
        kv.read_tree(&[kv.rev_key()]).await?;
        Ok(kv)
    }

    fn root(&self) -> &str {
        &self.inner.options.root
    }
    fn data_key(&self, key: &KeyPath) -> String {
        format!("{}/data{}", self.root(), key.as_str())
    }
    /// The Consul prefix of the data keys at or below `prefix` (string-wise; callers filter
    /// segment-wise).
    fn data_prefix(&self, prefix: &KeyPath) -> String {
        if prefix.is_root() {
            format!("{}/data/", self.root())
        } else {
            self.data_key(prefix)
        }
    }
    fn key_of(&self, consul_key: &str) -> Option<KeyPath> {
        let rest = consul_key
            .strip_prefix(self.root())?
            .strip_prefix("/data")?;
        KeyPath::parse(rest).ok()
    }
    fn log_dir(&self) -> String {
        format!("{}/log/", self.root())
    }
    fn rev_key(&self) -> String {
        format!("{}/rev", self.root())
    }
    fn trimmed_key(&self) -> String {
        format!("{}/trimmed", self.root())
    }

    fn unavailable(&self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Unavailable {
            backend: self.inner.label.clone(),
            source: source.into(),
        }
    }
    fn backend_err(&self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Backend {
            backend: self.inner.label.clone(),
            source: source.into(),
        }
    }

    /// One HTTP request: status, `X-Consul-Index` (if any) and body.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Option<u64>, Bytes), Error> {
        let uri = format!("{}{path_and_query}", self.inner.options.address);
        let mut req = Request::builder().method(method).uri(&uri);
        if let Some(token) = &self.inner.options.token {
            req = req.header("X-Consul-Token", token);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.backend_err(e))?;
        let exchange = async {
            let resp = self.inner.http.request(req).await?;
            let status = resp.status();
            let index = resp
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, index, body))
        };
        match vamp_core::rt::timeout(timeout, exchange).await {
            None => Err(self.unavailable(format!("no answer within {timeout:?}"))),
            Some(Err(e)) => Err(self.unavailable(e)),
            Some(Ok((status, index, body))) => {
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    return Err(self.unavailable(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    )));
                }
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    return Err(Error::Invalid {
                        what: "value",
                        value: format!("request to {path_and_query}"),
                        reason: format!(
                            "Consul refused it as too large: {}",
                            String::from_utf8_lossy(&body).trim()
                        ),
                    });
                }
                Ok((status, index, body))
            }
        }
    }

    fn unexpected(&self, what: &str, status: StatusCode, body: &[u8]) -> Error {
        self.backend_err(format!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(body).trim()
        ))
    }

    /// Runs a transaction of at most [`TXN_OPS`] operations.
    async fn txn(&self, ops: &[Json]) -> Result<Txn, Error> {
        let body = serde_json::to_vec(ops).map_err(|e| self.backend_err(e))?;
        let timeout = self.inner.options.request_timeout;
        let (status, _, body) = self
            .call(Method::PUT, "/v1/txn", Some(body), timeout)
            .await?;
        let parsed = || -> Result<TxnResponse, Error> {
            serde_json::from_slice(&body)
                .map_err(|e| self.backend_err(format!("unreadable /v1/txn answer: {e}")))
        };
        match status {
            StatusCode::OK => Ok(Txn::Committed(
                parsed()?
                    .results
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| r.kv)
                    .collect(),
            )),
            StatusCode::CONFLICT => Ok(Txn::RolledBack(parsed()?.errors.unwrap_or_default())),
            other => Err(self.unexpected("transaction", other, &body)),
        }
    }

    /// Reads every entry under each of `prefixes` in one consistent read-only transaction.
    async fn read_tree(&self, prefixes: &[String]) -> Result<Vec<Entry>, Error> {
        let ops: Vec<Json> = prefixes.iter().map(|p| kv_op("get-tree", p)).collect();
        match self.txn(&ops).await? {
            Txn::Committed(entries) => Ok(entries),
            Txn::RolledBack(errors) => Err(self.backend_err(format!(
                "read-only transaction rolled back: {}",
                errors
                    .iter()
                    .map(|e| e.what.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))),
        }
    }

    /// The keys under a Consul prefix and the `X-Consul-Index`; with `index` > 0 a blocking
    /// query that returns when the answer changed or `block_wait` passed.
    async fn keys(&self, prefix: &str, index: u64) -> Result<(Vec<String>, u64), Error> {
        let (path, timeout) = if index > 0 {
            let wait = self.inner.options.block_wait;
            (
                format!(
                    "/v1/kv/{}?keys&index={index}&wait={}ms",
                    encode_path(prefix),
                    wait.as_millis()
                ),
                // Consul adds up to wait/16 of jitter.
                wait + wait / 16 + self.inner.options.request_timeout,
            )
        } else {
            (
                format!("/v1/kv/{}?keys", encode_path(prefix)),
                self.inner.options.request_timeout,
            )
        };
        let (status, new_index, body) = self.call(Method::GET, &path, None, timeout).await?;
        let keys = match status {
            StatusCode::OK => serde_json::from_slice(&body)
                .map_err(|e| self.backend_err(format!("unreadable key list: {e}")))?,
            StatusCode::NOT_FOUND => Vec::new(),
            other => return Err(self.unexpected("key list", other, &body)),
        };
        Ok((keys, new_index.unwrap_or(0)))
    }

    async fn keys_under(&self, prefix: &KeyPath) -> Result<Vec<KeyPath>, Error> {
        let (keys, _) = self.keys(&self.data_prefix(prefix), 0).await?;
        let mut out: Vec<KeyPath> = keys
            .iter()
            .filter_map(|k| self.key_of(k))
            .filter(|k| k.starts_with(prefix))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every few writes, trims the change log to the newest [`LOG_KEEP`] records.
    async fn after_write(&self) {
        if self.inner.writes.fetch_add(1, Ordering::Relaxed) % 100 == 99 {
            // Best effort: a failed trim is retried a hundred writes later.
            let _ = self.trim_log(LOG_KEEP).await;
        }
    }

    /// Deletes the oldest change records beyond the newest `keep`, raising `R/trimmed` to the
    /// highest index removed in the same transaction, so watches can tell what they missed.
    /// Writers do this every hundred writes with [`LOG_KEEP`].
    ///
    /// # Errors
    /// [`Error::Unavailable`] when Consul cannot be reached.
    pub async fn trim_log(&self, keep: usize) -> Result<(), Error> {
        let (mut names, _) = self.keys(&self.log_dir(), 0).await?;
        if names.len() <= keep {
            return Ok(());
        }
        names.sort();
        let excess = names.len() - keep;
        for chunk in names[..excess].chunks(TXN_OPS - 2) {
            'attempt: for _ in 0..5 {
                let mut prefixes = vec![self.trimmed_key()];
                prefixes.extend(chunk.iter().cloned());
                let entries = self.read_tree(&prefixes).await?;
                let mut trimmed = (0u64, 0u64); // (value, ModifyIndex) of R/trimmed
                let mut highest = 0u64;
                let mut present = Vec::new();
                for e in &entries {
                    if e.key == self.trimmed_key() {
                        trimmed = (trimmed_index(e), e.modify_index);
                    } else if chunk.contains(&e.key) {
                        highest = highest.max(e.modify_index);
                        present.push(e.key.clone());
                    }
                }
                if present.is_empty() {
                    break 'attempt;
                }
                let mut ops = vec![kv_write(
                    "cas",
                    &self.trimmed_key(),
                    trimmed.0.max(highest).to_string().as_bytes(),
                    Some(trimmed.1),
                )];
                ops.extend(present.iter().map(|k| kv_op("delete", k)));
                if let Txn::Committed(_) = self.txn(&ops).await? {
                    break 'attempt;
                }
            }
        }
        Ok(())
    }

    async fn write(
        &self,
        key: &KeyPath,
        data_op: Json,
        record: Vec<u8>,
    ) -> Result<Result<Version, TxnError>, Error> {
        self.write_guarded(key, data_op, record, None).await
    }

    /// [`ConsulKv::write`], in a transaction that also checks `guard` (another key's modify
    /// index, `check-index`): a guard that moved is a conflict naming the guard key.
    async fn write_guarded(
        &self,
        key: &KeyPath,
        data_op: Json,
        record: Vec<u8>,
        guard: Option<&(KeyPath, Version)>,
    ) -> Result<Result<Version, TxnError>, Error> {
        let data_key = self.data_key(key);
        let mut ops = vec![
            data_op,
            kv_write(
                "set",
                &format!("{}{}", self.log_dir(), record_name()),
                &record,
                None,
            ),
            kv_write("set", &self.rev_key(), b"", None),
        ];
        if let Some((g, v)) = guard {
            ops.push(json!({ "KV": {
                "Verb": "check-index",
                "Key": self.data_key(g),
                "Index": v.0,
            }}));
        }
        match self.txn(&ops).await? {
            Txn::Committed(results) => {
                let index = results
                    .iter()
                    .find(|e| e.key == data_key)
                    .or_else(|| results.iter().find(|e| e.key == self.rev_key()))
                    .map(|e| e.modify_index)
                    .ok_or_else(|| self.backend_err("the transaction returned no index"))?;
                self.after_write().await;
                Ok(Ok(Version(index)))
            }
            Txn::RolledBack(errors)
                if guard.is_some() && errors.iter().any(|e| e.op_index == 3) =>
            {
                let (g, v) = guard.expect("checked above");
                Err(Error::Conflict {
                    backend: self.inner.label.clone(),
                    key: g.to_string(),
                    expected: v.0,
                    found: self.get(g).await?.map(|x| x.version.0),
                })
            }
            Txn::RolledBack(mut errors) => match errors.iter().position(|e| e.op_index == 0) {
                Some(i) => Ok(Err(errors.swap_remove(i))),
                None => Err(self.backend_err(format!(
                    "transaction rolled back: {}",
                    errors
                        .iter()
                        .map(|e| e.what.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ))),
            },
        }
    }
}

impl fmt::Debug for ConsulKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulKv")
            .field("label", &self.inner.label)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ConsulKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.label)
    }
}

struct WatchState {
    kv: ConsulKv,
    prefix: KeyPath,
    initial: bool,
    started: bool,
    /// The highest index delivered (or known to be covered by the initial snapshot).
    last: u64,
    /// The blocking-query index of the log listing.
    index: u64,
    /// Change records already read (or known to predate the start).
    seen: HashSet<String>,
    pending: VecDeque<Result<WatchEvent, Error>>,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<WatchEvent, Error>, Self)> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some((e, self));
            }
            if let Err(e) = self.fill().await {
                vamp_core::rt::sleep(Duration::from_millis(500)).await;
                return Some((Err(e), self));
            }
        }
    }

    /// A gap: reported, then the watch starts again from the current values (or position).
    fn gap(&mut self, trimmed: u64) {
        self.pending.push_back(Err(Error::WatchGap {
            backend: self.kv.inner.label.clone(),
            detail: format!(
                "the change log was trimmed up to index {trimmed}, past the last delivered index {}",
                self.last
            ),
        }));
        self.started = false;
    }

    async fn start(&mut self) -> Result<(), Error> {
        // The log first, then the snapshot: every record listed now is covered by the
        // snapshot; records written in between are read later and skipped by index.
        let (names, index) = self.kv.keys(&self.kv.log_dir(), 0).await?;
        let mut prefixes = vec![self.kv.rev_key()];
        if self.initial {
            prefixes.push(self.kv.data_prefix(&self.prefix));
        }
        let entries = self.kv.read_tree(&prefixes).await?;
        let rev = self.kv.rev_key();
        self.last = entries
            .iter()
            .find(|e| e.key == rev)
            .map_or(0, |e| e.modify_index);
        if self.initial {
            let mut current = Vec::new();
            for e in &entries {
                if let Some(key) = self
                    .kv
                    .key_of(&e.key)
                    .filter(|k| k.starts_with(&self.prefix))
                {
                    let value = decode_value(e).map_err(|m| self.kv.backend_err(m))?;
                    current.push((key, Bytes::from(value), Version(e.modify_index)));
                }
            }
            current.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, value, version) in current {
                self.pending.push_back(Ok(WatchEvent::Put {
                    key,
                    value,
                    version,
                }));
            }
            self.pending.push_back(Ok(WatchEvent::Synced));
        }
        self.seen = names.into_iter().collect();
        self.index = index.max(1);
        self.started = true;
        Ok(())
    }

    async fn fill(&mut self) -> Result<(), Error> {
        if !self.started {
            return self.start().await;
        }
        let before = self.index;
        let (names, index) = self.kv.keys(&self.kv.log_dir(), self.index).await?;
        // Consul's rules: an index that goes backwards resets to 0; never block on 0.
        self.index = if index < before { 1 } else { index.max(1) };
        let listed: HashSet<String> = names.into_iter().collect();
        let before_trim = self.seen.len();
        self.seen.retain(|n| listed.contains(n));
        let shrank = self.seen.len() < before_trim;
        let mut new: Vec<String> = listed
            .into_iter()
            .filter(|n| !self.seen.contains(n))
            .collect();
        if new.is_empty() {
            if shrank {
                // Records were trimmed: past this watch's position? (A log trimmed empty
                // shows no new record to read the mark with.)
                let trimmed = self
                    .kv
                    .read_tree(&[self.kv.trimmed_key()])
                    .await?
                    .iter()
                    .find(|e| e.key == self.kv.trimmed_key())
                    .map_or(0, trimmed_index);
                if trimmed > self.last {
                    self.gap(trimmed);
                }
                return Ok(());
            }
            if self.index <= before {
                // Woke without news (timeout or index reset): don't spin.
                vamp_core::rt::sleep(Duration::from_millis(50)).await;
            }
            return Ok(());
        }
        new.sort();
        let mut records = Vec::new();
        let mut trimmed = 0;
        for (i, chunk) in new.chunks(TXN_OPS - 1).enumerate() {
            let mut prefixes: Vec<String> = chunk.to_vec();
            if i == 0 {
                prefixes.push(self.kv.trimmed_key());
            }
            for e in self.kv.read_tree(&prefixes).await? {
                if e.key == self.kv.trimmed_key() {
                    trimmed = trimmed_index(&e);
                } else if chunk.contains(&e.key) {
                    records.push(e);
                }
            }
        }
        if trimmed > self.last {
            self.gap(trimmed);
            return Ok(());
        }
        records.sort_by_key(|e| e.modify_index);
        for e in records {
            self.seen.insert(e.key.clone());
            if e.modify_index <= self.last {
                continue;
            }
            self.last = e.modify_index;
            let data = decode_value(&e).map_err(|m| self.kv.backend_err(m))?;
            let Some((op, key, value)) = parse_log_record(&data) else {
                continue;
            };
            if !key.starts_with(&self.prefix) {
                continue;
            }
            let version = Version(e.modify_index);
            self.pending.push_back(Ok(if op == b'd' {
                WatchEvent::Delete { key, version }
            } else {
                WatchEvent::Put {
                    key,
                    value: Bytes::copy_from_slice(value),
                    version,
                }
            }));
        }
        // Records trimmed between the listing and the read are gone; forget them.
        for n in new {
            self.seen.insert(n);
        }
        Ok(())
    }
}

#[async_trait]
impl KeyValueStore for ConsulKv {
    async fn get(&self, key: &KeyPath) -> Result<Option<Versioned<Bytes>>, Error> {
        let path = format!("/v1/kv/{}", encode_path(&self.data_key(key)));
        let timeout = self.inner.options.request_timeout;
        let (status, _, body) = self.call(Method::GET, &path, None, timeout).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => {
                let entries: Vec<Entry> = serde_json::from_slice(&body)
                    .map_err(|e| self.backend_err(format!("unreadable entry: {e}")))?;
                let Some(e) = entries.into_iter().next() else {
                    return Ok(None);
                };
                let value = decode_value(&e).map_err(|m| self.backend_err(m))?;
                Ok(Some(Versioned {
                    value: Bytes::from(value),
                    version: Version(e.modify_index),
                }))
            }
            other => Err(self.unexpected("get", other, &body)),
        }
    }

    async fn put_opts(
        &self,
        key: &KeyPath,
        value: Bytes,
        opts: PutOptions,
    ) -> Result<Version, Error> {
        self.capabilities()
            .check_put(&self.inner.label, key, value.len(), &opts)?;
        let data_key = self.data_key(key);
        // Version 0 is no entry's version (Consul's CAS at index 0 would create the entry).
        if let PutMode::Update(Version(0)) = opts.mode {
            let found = self.get(key).await?.map(|v| v.version.0);
            return Err(Error::Conflict {
                backend: self.inner.label.clone(),
                key: key.to_string(),
                expected: 0,
                found,
            });
        }
        let (data_op, expected) = match opts.mode {
            PutMode::Create => (kv_write("cas", &data_key, &value, Some(0)), None),
            PutMode::Update(v) => (kv_write("cas", &data_key, &value, Some(v.0)), Some(v)),
            _ => (kv_write("set", &data_key, &value, None), None),
        };
        match self
            .write_guarded(
                key,
                data_op,
                log_record(b'p', key, &value),
                opts.guard.as_ref(),
            )
            .await?
        {
            Ok(v) => Ok(v),
            Err(failed) => match (opts.mode, expected) {
                (PutMode::Create, _) => Err(Error::AlreadyExists {
                    backend: self.inner.label.clone(),
                    key: key.to_string(),
                }),
                (_, Some(expected)) => Err(Error::Conflict {
                    backend: self.inner.label.clone(),
                    key: key.to_string(),
                    expected: expected.0,
                    found: self.get(key).await?.map(|v| v.version.0),
                }),
                _ => Err(self.backend_err(failed.what)),
            },
        }
    }

    async fn delete(&self, key: &KeyPath) -> Result<(), Error> {
        // delete-cas on the index just read: the change record describes exactly the entry
        // removed, and deleting a missing key writes nothing.
        for _ in 0..10 {
            let Some(current) = self.get(key).await? else {
                return Ok(());
            };
            let op = json!({ "KV": {
                "Verb": "delete-cas",
                "Key": self.data_key(key),
                "Index": current.version.0,
            }});
            if self
                .write(key, op, log_record(b'd', key, &[]))
                .await?
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(self.unavailable(format!(
            "'{key}' kept changing while being deleted; try again"
        )))
    }

    fn list(&self, prefix: &KeyPath) -> BoxStream<'static, Result<KeyPath, Error>> {
        let kv = self.clone();
        let prefix = prefix.clone();
        listing_stream(async move { kv.keys_under(&prefix).await })
    }

    fn watch(
        &self,
        prefix: &KeyPath,
        opts: WatchOptions,
    ) -> BoxStream<'static, Result<WatchEvent, Error>> {
        let state = WatchState {
            kv: self.clone(),
            prefix: prefix.clone(),
            initial: opts.initial,
            started: false,
            last: 0,
            index: 0,
            seen: HashSet::new(),
            pending: VecDeque::new(),
        };
        stream::unfold(state, WatchState::next).boxed()
    }

    fn capabilities(&self) -> KvCapabilities {
        let mut caps = KvCapabilities::all();
        caps.ttl = false;
        caps.value_max_bytes = Some(VALUE_MAX_BYTES);
        caps
    }
}

/// One KV entry with its lock, as a lease reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LockEntry {
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    lock_index: u64,
    #[serde(default)]
    session: Option<String>,
}

/// Consul's shortest session TTL.
const MIN_SESSION_TTL: Duration = Duration::from_secs(10);

impl ConsulKv {
    fn lease_key(&self, name: &str) -> String {
        format!("{}/leases/{name}", self.root())
    }

    /// The lease's entry: its holder (the value), lock index and session.
    async fn lease_entry(
        &self,
        name: &str,
    ) -> Result<Option<(String, u64, Option<String>)>, Error> {
        let timeout = self.inner.options.request_timeout;
        let (status, _, body) = self
            .call(
                Method::GET,
                &format!("/v1/kv/{}", encode_path(&self.lease_key(name))),
                None,
                timeout,
            )
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => {
                let entries: Vec<LockEntry> = serde_json::from_slice(&body)
                    .map_err(|e| self.backend_err(format!("unreadable lease entry: {e}")))?;
                Ok(entries.into_iter().next().map(|e| {
                    let holder = e
                        .value
                        .and_then(|v| BASE64.decode(v).ok())
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_default();
                    (holder, e.lock_index, e.session)
                }))
            }
            other => Err(self.unexpected("lease read", other, &body)),
        }
    }

    async fn session_call(
        &self,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let timeout = self.inner.options.request_timeout;
        let (status, _, body) = self.call(Method::PUT, path, body, timeout).await?;
        Ok((status, body))
    }

    fn session_of(&self, name: &str, holder: &str) -> Option<String> {
        self.inner
            .sessions
            .lock()
            .expect("lock")
            .get(&(name.to_owned(), holder.to_owned()))
            .cloned()
    }

    fn forget_session(&self, name: &str, holder: &str) {
        self.inner
            .sessions
            .lock()
            .expect("lock")
            .remove(&(name.to_owned(), holder.to_owned()));
    }
}

/// Leases on Consul: a session per (lease, holder) with the lease's TTL (at least Consul's
/// 10 s; Consul may take up to twice the TTL to invalidate it), `Behavior: release` and no
/// lock-delay, and the key `<root>/leases/<name>` acquired with it (`?acquire=`). A renewal
/// renews the session; a release destroys the session that holds the key. The fencing token
/// is the key's `LockIndex`, which Consul increments with every acquisition by a new session.
#[async_trait]
impl vamp_core::lease::LeaseStore for ConsulKv {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<vamp_core::lease::LeaseGrant>, Error> {
        vamp_core::lease::check(name, holder, ttl)?;
        let grant = |token: u64| vamp_core::lease::LeaseGrant::new(name, holder, token, ttl);
        let key = encode_path(&self.lease_key(name));
        if let Some(session) = self.session_of(name, holder) {
            let (status, _) = self
                .session_call(&format!("/v1/session/renew/{session}"), None)
                .await?;
            if status == StatusCode::OK {
                if let Some((h, token, Some(s))) = self.lease_entry(name).await?
                    && s == session
                    && h == holder
                {
                    return Ok(Some(grant(token)));
                }
                // Renewed but not holding (released behind its back): try to acquire below.
            } else {
                self.forget_session(name, holder);
            }
        }
        let session = match self.session_of(name, holder) {
            Some(s) => s,
            None => {
                let seconds = ttl.max(MIN_SESSION_TTL).as_secs_f64().ceil();
                let spec = json!({
                    "Name": format!("vamp-lease-{name}"),
                    "TTL": format!("{seconds}s"),
                    "Behavior": "release",
                    "LockDelay": "0s",
                });
                let (status, body) = self
                    .session_call("/v1/session/create", Some(spec.to_string().into_bytes()))
                    .await?;
                if status != StatusCode::OK {
                    return Err(self.unexpected("session create", status, &body));
                }
                let id: Json = serde_json::from_slice(&body)
                    .map_err(|e| self.backend_err(format!("unreadable session: {e}")))?;
                let id = id["ID"]
                    .as_str()
                    .ok_or_else(|| self.backend_err("a session without an ID"))?
                    .to_owned();
                self.inner
                    .sessions
                    .lock()
                    .expect("lock")
                    .insert((name.to_owned(), holder.to_owned()), id.clone());
                id
            }
        };
        let (status, body) = self
            .session_call(
                &format!("/v1/kv/{key}?acquire={session}"),
                Some(holder.as_bytes().to_vec()),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(self.unexpected("lease acquire", status, &body));
        }
        if body.as_ref() != b"true" {
            return Ok(None);
        }
        match self.lease_entry(name).await? {
            Some((h, token, Some(s))) if s == session && h == holder => Ok(Some(grant(token))),
            _ => Ok(None),
        }
    }

    async fn observe(&self, name: &str) -> Result<Option<vamp_core::lease::LeaseHolder>, Error> {
        Ok(match self.lease_entry(name).await? {
            Some((holder, token, Some(_))) => Some(vamp_core::lease::LeaseHolder { holder, token }),
            _ => None,
        })
    }

    async fn release(&self, name: &str, holder: &str, token: u64) -> Result<bool, Error> {
        // The session holding it is destroyed, whichever handle made it: its lock is released.
        let session = match self.lease_entry(name).await? {
            Some((h, t, Some(s))) if h == holder && t == token => s,
            _ => return Ok(false),
        };
        let (status, body) = self
            .session_call(&format!("/v1/session/destroy/{session}"), None)
            .await?;
        if status != StatusCode::OK {
            return Err(self.unexpected("session destroy", status, &body));
        }
        self.forget_session(name, holder);
        Ok(body.as_ref() == b"true")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_percent_encoded_but_keep_slashes() {
        assert_eq!(
            encode_path("vamp-kv/data/a b/ü?#%"),
            "vamp-kv/data/a%20b/%C3%BC%3F%23%25"
        );
        assert_eq!(encode_path("a/b.c_d~e-f"), "a/b.c_d~e-f");
    }

    #[test]
    fn record_names_sort_by_time_and_do_not_collide() {
        let a = record_name();
        std::thread::sleep(Duration::from_millis(2));
        let b = record_name();
        assert!(a < b, "{a} < {b}");
        assert_eq!(a.len(), 33);
        let names: HashSet<String> = (0..1000).map(|_| record_name()).collect();
        assert_eq!(names.len(), 1000);
    }

    #[test]
    fn options_hide_the_token() {
        let o = ConsulKvOptions::new("http://h:8500").with_token("secret");
        assert!(!format!("{o:?}").contains("secret"));
    }
}
