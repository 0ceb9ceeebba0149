//! A **double** of Consul's KV HTTP API, in process, for tests: Consul cannot run on this
//! project's machines. It is not Consul; it follows Consul's API documentation
//! (<https://developer.hashicorp.com/consul/api-docs/kv>, `/api-docs/txn`,
//! `/api-docs/features/blocking`) for what the `kv-consul` client uses and a little more:
//!
//! * `GET /v1/kv/<key>` with `?recurse`, `?keys` (and `separator`), `?raw`; `404` when nothing
//!   matches; base64 `Value` (`null` when empty); `X-Consul-Index` (never 0).
//! * Blocking queries: `?index=N&wait=D` waits until the query's index exceeds `N` (woken by
//!   changes to the keys the query reads) or `D` (default 5 min, at most 10 min, plus up to
//!   `D/16` of jitter) passes. A single key's index is the KV table's; a prefix's is the highest
//!   `ModifyIndex` of its entries and tombstones, else the table's.
//! * `PUT /v1/kv/<key>` (`?cas=`, `?flags=`) and `DELETE /v1/kv/<key>` (`?recurse`, `?cas=`)
//!   answering `true`/`false`.
//! * `PUT /v1/txn` with the KV verbs `set`, `cas`, `get`, `get-or-empty`, `get-tree`,
//!   `check-index`, `check-not-exists`, `delete`, `delete-tree`, `delete-cas`: all or nothing,
//!   one index per transaction, `409` with `Errors` (`OpIndex`, `What`) when rolled back,
//!   `Value: null` in results of writes, no results for deletes.
//! * Limits: values over 512 KiB, transaction bodies over 512 KiB (`txn_max_req_len`) and more
//!   than 128 operations answer `413`.
//! * ACLs: with a token set, requests without it (`X-Consul-Token` or `?token=`) get `403`.
//! * Sessions (`/api-docs/session`): `PUT /v1/session/create` (`TTL` from 10 s to 24 h, else
//!   `400`; `Behavior` `release` or `delete`), `PUT /v1/session/renew/<id>` (`404` for an
//!   invalid session), `PUT /v1/session/destroy/<id>`; a session not renewed within its TTL is
//!   invalidated (here exactly at the TTL; Consul may take up to twice as long), releasing or
//!   deleting the keys it holds. KV `PUT ?acquire=<id>` / `?release=<id>` answer
//!   `true`/`false`; an acquisition by a new session increments the key's `LockIndex`; entries
//!   carry `LockIndex` and `Session`. No lock-delay.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

const MAX_VALUE: usize = 512 * 1024;
const TXN_MAX_REQ_LEN: usize = 512 * 1024;
const TXN_MAX_OPS: usize = 128;

#[derive(Clone, Debug)]
struct Entry {
    value: Vec<u8>,
    flags: u64,
    create_index: u64,
    modify_index: u64,
    lock_index: u64,
    session: Option<String>,
}

#[derive(Clone, Debug)]
struct Session {
    ttl: Duration,
    deadline: tokio::time::Instant,
    delete: bool,
}

#[derive(Clone, Debug, Default)]
struct Store {
    /// The last raft index used.
    index: u64,
    entries: BTreeMap<String, Entry>,
    /// Deleted keys and the index of their deletion.
    graveyard: BTreeMap<String, u64>,
    /// Every changed key with its index, for waking blocking queries.
    changes: Vec<(u64, String)>,
    sessions: HashMap<String, Session>,
    next_session: u64,
}

impl Store {
    fn table_index(&self) -> u64 {
        self.index
    }

    fn prefix_index(&self, prefix: &str) -> u64 {
        let entries = self
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.modify_index)
            .max()
            .unwrap_or(0);
        let graves = self
            .graveyard
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(0);
        match entries.max(graves) {
            0 => self.table_index(),
            i => i,
        }
    }

    fn under(&self, prefix: &str) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    fn set(&mut self, key: &str, value: Vec<u8>, flags: u64, index: u64) {
        let old = self.entries.get(key);
        let create_index = old.map_or(index, |e| e.create_index);
        let (lock_index, session) = old.map_or((0, None), |e| (e.lock_index, e.session.clone()));
        self.entries.insert(
            key.to_owned(),
            Entry {
                value,
                flags,
                create_index,
                modify_index: index,
                lock_index,
                session,
            },
        );
        self.graveyard.remove(key);
        self.changes.push((index, key.to_owned()));
    }

    /// Invalidates `id`: the keys it holds are released (or deleted, by its behavior).
    /// Returns whether anything changed.
    fn invalidate(&mut self, id: &str) -> bool {
        let Some(session) = self.sessions.remove(id) else {
            return false;
        };
        let held: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            self.index += 1;
            let index = self.index;
            if session.delete {
                self.remove(&key, index);
            } else if let Some(e) = self.entries.get_mut(&key) {
                e.session = None;
                e.modify_index = index;
                self.changes.push((index, key));
            }
        }
        true
    }

    /// Invalidates the sessions whose TTL passed.
    fn expire(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut changed = false;
        for id in expired {
            changed |= self.invalidate(&id);
        }
        changed
    }

    fn remove(&mut self, key: &str, index: u64) -> bool {
        if self.entries.remove(key).is_some() {
            self.graveyard.insert(key.to_owned(), index);
            self.changes.push((index, key.to_owned()));
            true
        } else {
            false
        }
    }
}

fn entry_json(key: &str, e: &Entry, with_value: bool) -> Json {
    let value = if with_value && !e.value.is_empty() {
        Json::String(BASE64.encode(&e.value))
    } else {
        Json::Null
    };
    let mut out = json!({
        "LockIndex": e.lock_index,
        "Key": key,
        "Flags": e.flags,
        "Value": value,
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if let Some(session) = &e.session {
        out["Session"] = json!(session);
    }
    out
}

struct Shared {
    store: Mutex<Store>,
    /// The store's index after each change.
    changed: watch::Sender<u64>,
    token: Option<String>,
}

/// A running double; dropping it stops the server (and every open connection).
pub struct ConsulDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<Server>,
}

/// The serving task and the signal that stops it.
struct Server {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    fn spawn(listener: TcpListener, shared: Arc<Shared>) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        Self {
            task: tokio::spawn(serve(listener, shared, stopped)),
            stop,
        }
    }
}

impl ConsulDouble {
    /// Starts a double on a free loopback port.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a double that requires the ACL token `token`.
    pub async fn start_with(token: Option<&str>) -> Self {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed: watch::channel(0).0,
            token: token.map(str::to_owned),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Some(Server::spawn(listener, Arc::clone(&shared)));
        Self {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and returns once every connection is closed (the listener and every
    /// connection task are gone: no request is answered after this returns), keeping the
    /// data, like a Consul agent going away.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.stop.send(());
            let _ = server.task.await;
        }
    }

    /// Serves again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.server = Some(Server::spawn(listener, Arc::clone(&self.shared)));
    }

    /// Every key in the double (to check layouts).
    pub fn keys(&self) -> Vec<String> {
        self.shared
            .store
            .lock()
            .unwrap()
            .entries
            .keys()
            .cloned()
            .collect()
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.task.abort();
        }
    }
}

async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    // Connections live in this set: a stop aborts them all and waits until they are gone.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => {
                drop(listener);
                connections.shutdown().await;
                return;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(_) => continue,
        };
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn respond(
    status: StatusCode,
    index: Option<u64>,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(status)
        .header("Content-Type", "application/json");
    if let Some(i) = index {
        r = r
            .header("X-Consul-Index", i.max(1).to_string())
            .header("X-Consul-KnownLeader", "true")
            .header("X-Consul-LastContact", "0");
    }
    r.body(Full::new(body.into())).unwrap()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Go duration strings as Consul reads `wait`: `10s`, `500ms`, `5m`.
fn parse_wait(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return None,
    })
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), percent_decode(v).unwrap_or_default())
        })
        .collect();
    if let Some(required) = &shared.token {
        let given = req
            .headers()
            .get("X-Consul-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| query.get("token").cloned());
        if given.as_deref() != Some(required) {
            return respond(StatusCode::FORBIDDEN, None, "Permission denied");
        }
    }
    let method = req.method().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return respond(StatusCode::BAD_REQUEST, None, "unreadable body"),
    };
    {
        let mut store = shared.store.lock().unwrap();
        if store.expire() {
            commit(shared, &store);
        }
    }
    if let Some(rest) = path.strip_prefix("/v1/session/") {
        if method != Method::PUT {
            return respond(StatusCode::METHOD_NOT_ALLOWED, None, "");
        }
        return session(shared, rest, &body);
    }
    if path == "/v1/txn" {
        if method != Method::PUT {
            return respond(StatusCode::METHOD_NOT_ALLOWED, None, "");
        }
        return txn(shared, &body);
    }
    let Some(raw_key) = path.strip_prefix("/v1/kv/") else {
        return respond(StatusCode::NOT_FOUND, None, "");
    };
    let Some(key) = percent_decode(raw_key) else {
        return respond(StatusCode::BAD_REQUEST, None, "bad key encoding");
    };
    match method {
        Method::GET => get(shared, &key, &query).await,
        Method::PUT => put(shared, &key, &query, &body),
        Method::DELETE => delete(shared, &key, &query),
        _ => respond(StatusCode::METHOD_NOT_ALLOWED, None, ""),
    }
}

/// Runs a read; with `?index=` blocks until the result's index exceeds it or `wait` passes.
async fn get(shared: &Shared, key: &str, query: &HashMap<String, String>) -> Response<Full<Bytes>> {
    let recurse = query.contains_key("recurse");
    let keys = query.contains_key("keys");
    let min_index: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let wait = query
        .get("wait")
        .and_then(|w| parse_wait(w))
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(600));
    let jitter = wait / 16 * u32::from(rand_byte()) / 255;
    let deadline = tokio::time::Instant::now() + wait + jitter;
    let prefix_query = recurse || keys;
    let mut changed = shared.changed.subscribe();
    loop {
        let seen = *changed.borrow_and_update();
        let answer = {
            let store = shared.store.lock().unwrap();
            read(&store, key, query, prefix_query)
        };
        if min_index == 0 || answer.0 > min_index {
            return finish(answer);
        }
        // Wait for a change to a key this query reads.
        loop {
            let timed_out = tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err();
            if timed_out {
                let store = shared.store.lock().unwrap();
                return finish(read(&store, key, query, prefix_query));
            }
            let store = shared.store.lock().unwrap();
            let relevant = store
                .changes
                .iter()
                .rev()
                .take_while(|(i, _)| *i > seen)
                .any(|(_, k)| {
                    if prefix_query {
                        k.starts_with(key)
                    } else {
                        k == key
                    }
                });
            if relevant {
                break;
            }
        }
    }
}

type Answer = (u64, StatusCode, Bytes);

fn finish((index, status, body): Answer) -> Response<Full<Bytes>> {
    respond(status, Some(index), body)
}

fn read(store: &Store, key: &str, query: &HashMap<String, String>, prefix_query: bool) -> Answer {
    if query.contains_key("keys") {
        let index = store.prefix_index(key);
        let separator = query.get("separator").filter(|s| !s.is_empty());
        let mut out: Vec<String> = Vec::new();
        for (k, _) in store.under(key) {
            let listed = match separator {
                Some(sep) => match k[key.len()..].find(sep.as_str()) {
                    Some(at) => k[..key.len() + at + sep.len()].to_owned(),
                    None => k.clone(),
                },
                None => k.clone(),
            };
            if out.last() != Some(&listed) {
                out.push(listed);
            }
        }
        if out.is_empty() {
            return (index, StatusCode::NOT_FOUND, Bytes::new());
        }
        return (
            index,
            StatusCode::OK,
            Bytes::from(serde_json::to_vec(&out).unwrap()),
        );
    }
    if prefix_query {
        let index = store.prefix_index(key);
        let out: Vec<Json> = store
            .under(key)
            .map(|(k, e)| entry_json(k, e, true))
            .collect();
        if out.is_empty() {
            return (index, StatusCode::NOT_FOUND, Bytes::new());
        }
        return (
            index,
            StatusCode::OK,
            Bytes::from(serde_json::to_vec(&out).unwrap()),
        );
    }
    let index = store.table_index();
    match store.entries.get(key) {
        None => (index, StatusCode::NOT_FOUND, Bytes::new()),
        Some(e) if query.contains_key("raw") => {
            (index, StatusCode::OK, Bytes::from(e.value.clone()))
        }
        Some(e) => (
            index,
            StatusCode::OK,
            Bytes::from(serde_json::to_vec(&[entry_json(key, e, true)]).unwrap()),
        ),
    }
}

fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as u8
}

fn commit(shared: &Shared, store: &Store) {
    let _ = shared.changed.send(store.index);
}

/// `create`, `renew/<id>`, `destroy/<id>`.
fn session(shared: &Shared, rest: &str, body: &Bytes) -> Response<Full<Bytes>> {
    let mut store = shared.store.lock().unwrap();
    if rest == "create" {
        let spec: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
        let ttl = spec["TTL"].as_str().and_then(parse_wait);
        let Some(ttl) =
            ttl.filter(|t| *t >= Duration::from_secs(10) && *t <= Duration::from_secs(86_400))
        else {
            return respond(
                StatusCode::BAD_REQUEST,
                None,
                "Request decode failed: Invalid Session TTL, must be between 10s and 24h0m0s",
            );
        };
        store.next_session += 1;
        let id = format!("00000000-0000-0000-0000-{:012x}", store.next_session);
        store.sessions.insert(
            id.clone(),
            Session {
                ttl,
                deadline: tokio::time::Instant::now() + ttl,
                delete: spec["Behavior"].as_str() == Some("delete"),
            },
        );
        return respond(StatusCode::OK, None, json!({ "ID": id }).to_string());
    }
    if let Some(id) = rest.strip_prefix("renew/") {
        return match store.sessions.get_mut(id) {
            Some(s) => {
                s.deadline = tokio::time::Instant::now() + s.ttl;
                let ttl = format!("{}s", s.ttl.as_secs());
                respond(
                    StatusCode::OK,
                    None,
                    json!([{ "ID": id, "TTL": ttl }]).to_string(),
                )
            }
            None => respond(
                StatusCode::NOT_FOUND,
                None,
                format!("Session id '{id}' not found"),
            ),
        };
    }
    if let Some(id) = rest.strip_prefix("destroy/") {
        if store.invalidate(id) {
            commit(shared, &store);
        }
        return respond(StatusCode::OK, None, "true");
    }
    respond(StatusCode::NOT_FOUND, None, "")
}

fn put(
    shared: &Shared,
    key: &str,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    if body.len() > MAX_VALUE {
        return respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!("Value exceeds {MAX_VALUE} byte limit"),
        );
    }
    let flags = query.get("flags").and_then(|f| f.parse().ok()).unwrap_or(0);
    let mut store = shared.store.lock().unwrap();
    if let Some(cas) = query.get("cas") {
        let Ok(cas) = cas.parse::<u64>() else {
            return respond(StatusCode::BAD_REQUEST, None, "invalid cas index");
        };
        let current = store.entries.get(key).map(|e| e.modify_index);
        let ok = match (cas, current) {
            (0, None) => true,
            (0, Some(_)) => false,
            (i, Some(m)) => i == m,
            (_, None) => false,
        };
        if !ok {
            return respond(StatusCode::OK, None, "false");
        }
    }
    let lock = query
        .get("acquire")
        .map(|id| (id.clone(), true))
        .or_else(|| query.get("release").map(|id| (id.clone(), false)));
    if let Some((id, acquire)) = &lock {
        if !store.sessions.contains_key(id) {
            return respond(StatusCode::INTERNAL_SERVER_ERROR, None, "invalid session");
        }
        let holder = store.entries.get(key).and_then(|e| e.session.clone());
        let ok = if *acquire {
            holder.as_ref().is_none_or(|h| h == id)
        } else {
            holder.as_ref() == Some(id)
        };
        if !ok {
            return respond(StatusCode::OK, None, "false");
        }
    }
    let index = store.index + 1;
    store.index = index;
    store.set(key, body.to_vec(), flags, index);
    if let Some((id, acquire)) = lock
        && let Some(e) = store.entries.get_mut(key)
    {
        if acquire {
            if e.session.as_deref() != Some(&id) {
                e.lock_index += 1;
            }
            e.session = Some(id);
        } else {
            e.session = None;
        }
    }
    commit(shared, &store);
    respond(StatusCode::OK, None, "true")
}

fn delete(shared: &Shared, key: &str, query: &HashMap<String, String>) -> Response<Full<Bytes>> {
    let mut store = shared.store.lock().unwrap();
    let index = store.index + 1;
    if query.contains_key("recurse") {
        let keys: Vec<String> = store.under(key).map(|(k, _)| k.clone()).collect();
        store.index = index;
        for k in keys {
            store.remove(&k, index);
        }
        commit(shared, &store);
        return respond(StatusCode::OK, None, "true");
    }
    if let Some(cas) = query.get("cas") {
        let Ok(cas) = cas.parse::<u64>() else {
            return respond(StatusCode::BAD_REQUEST, None, "invalid cas index");
        };
        if store.entries.get(key).map(|e| e.modify_index) != Some(cas) {
            return respond(StatusCode::OK, None, "false");
        }
    }
    store.index = index;
    store.remove(key, index);
    commit(shared, &store);
    respond(StatusCode::OK, None, "true")
}

fn txn(shared: &Shared, body: &Bytes) -> Response<Full<Bytes>> {
    if body.len() > TXN_MAX_REQ_LEN {
        return respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!(
                "Request body({} bytes) too large, max size: {TXN_MAX_REQ_LEN} bytes.",
                body.len()
            ),
        );
    }
    let Ok(ops) = serde_json::from_slice::<Vec<Json>>(body) else {
        return respond(StatusCode::BAD_REQUEST, None, "Failed to parse body");
    };
    if ops.len() > TXN_MAX_OPS {
        return respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!(
                "Transaction contains too many operations ({} > {TXN_MAX_OPS})",
                ops.len()
            ),
        );
    }
    let mut store = shared.store.lock().unwrap();
    let mut next = store.clone();
    let index = store.index + 1;
    let mut wrote = false;
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let Some(kv) = op.get("KV") else {
            return respond(
                StatusCode::BAD_REQUEST,
                None,
                "only KV operations are doubled",
            );
        };
        let verb = kv["Verb"].as_str().unwrap_or("");
        let key = kv["Key"].as_str().unwrap_or("").to_owned();
        let op_index = kv["Index"].as_u64().unwrap_or(0);
        let flags = kv["Flags"].as_u64().unwrap_or(0);
        let value = match kv["Value"].as_str() {
            None => Vec::new(),
            Some(v) => match BASE64.decode(v) {
                Ok(v) => v,
                Err(_) => return respond(StatusCode::BAD_REQUEST, None, "Value is not base64"),
            },
        };
        if value.len() > MAX_VALUE {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                format!(
                    "Value for key {key:?} is too large ({} > {MAX_VALUE} bytes)",
                    value.len()
                ),
            );
        }
        let current = next.entries.get(&key).map(|e| e.modify_index);
        let mut fail = |what: String| errors.push(json!({ "OpIndex": i, "What": what }));
        match verb {
            "set" => {
                next.set(&key, value, flags, index);
                wrote = true;
                results.push(entry_json(&key, &next.entries[&key], false));
            }
            "cas" => {
                let ok = match (op_index, current) {
                    (0, None) => true,
                    (i, Some(m)) => i == m,
                    _ => false,
                };
                if ok {
                    next.set(&key, value, flags, index);
                    wrote = true;
                    results.push(entry_json(&key, &next.entries[&key], false));
                } else {
                    fail(format!("failed to set key {key:?}, index is stale"));
                }
            }
            "get" => match next.entries.get(&key) {
                Some(e) => results.push(entry_json(&key, e, true)),
                None => fail(format!("key {key:?} doesn't exist")),
            },
            "get-or-empty" => {
                if let Some(e) = next.entries.get(&key) {
                    results.push(entry_json(&key, e, true));
                }
            }
            "get-tree" => {
                results.extend(next.under(&key).map(|(k, e)| entry_json(k, e, true)));
            }
            "check-index" => {
                if current != Some(op_index) {
                    fail(format!(
                        "current modify index {} != {op_index}",
                        current.unwrap_or(0)
                    ));
                }
            }
            "check-not-exists" => {
                if current.is_some() {
                    fail(format!("key {key:?} exists"));
                }
            }
            "delete" => {
                wrote |= next.remove(&key, index);
            }
            "delete-tree" => {
                let keys: Vec<String> = next.under(&key).map(|(k, _)| k.clone()).collect();
                for k in keys {
                    wrote |= next.remove(&k, index);
                }
            }
            "delete-cas" => {
                if current == Some(op_index) {
                    next.remove(&key, index);
                    wrote = true;
                } else {
                    fail(format!("failed to delete key {key:?}, index is stale"));
                }
            }
            other => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    None,
                    format!("Unknown KV verb {other:?}"),
                );
            }
        }
    }
    if !errors.is_empty() {
        let body = json!({ "Results": null, "Errors": errors });
        return respond(
            StatusCode::CONFLICT,
            None,
            serde_json::to_vec(&body).unwrap(),
        );
    }
    if wrote {
        next.index = index;
        *store = next;
        commit(shared, &store);
    }
    let body = json!({ "Results": results.into_iter().map(|r| json!({ "KV": r })).collect::<Vec<_>>(), "Errors": null });
    respond(StatusCode::OK, None, serde_json::to_vec(&body).unwrap())
}
