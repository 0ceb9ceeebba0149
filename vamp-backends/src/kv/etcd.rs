//! etcd (v3 API) as a [`KeyValueStore`] (feature `kv-etcd`).
//!
//! A key path is the etcd key itself (`/vamp/default/gateways/...`); a prefix given in the
//! configuration is added by the [`Namespaced`](vamp_core::layers::Namespaced) layer. An
//! entry's version is its etcd `mod_revision`, so versions are the cluster's revisions:
//! increasing across all keys.
//!
//! - Create-only and compare-and-swap are etcd transactions comparing `create_revision` and
//!   `mod_revision`, so they are atomic in etcd.
//! - A time to live is an etcd lease (whole seconds, rounded up) attached to the key.
//! - A watch remembers the revision after the last event it delivered. When the connection
//!   drops it yields one [`Error::Unavailable`] item and, on the next poll, watches again
//!   from that revision, so no event is lost while etcd keeps its history. If etcd compacted
//!   the revisions it needed, the watch yields [`Error::WatchGap`] and starts again from the
//!   current values (or the current revision), as the trait's contract says.
//! - Values are limited to 1 MiB here (etcd's default request limit is 1.5 MiB).
//!
//! Configuration through [`KvBackendConfig`](super::KvBackendConfig):
//! `etcd://host1:2379,host2:2379/prefix` (`etcd+https://` for TLS endpoints), or the fields of
//! [`EtcdKvConfig`](super::EtcdKvConfig): `endpoints`, `prefix`, `user`, `password`.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchStream,
};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use vamp_core::Error;
use vamp_core::kv::*;

/// The largest value this store writes.
pub const VALUE_MAX_BYTES: usize = 1 << 20;

/// A [`KeyValueStore`] on etcd. Cloning shares the connection (gRPC channel), which
/// reconnects by itself; while etcd is down, operations fail with [`Error::Unavailable`].
///
/// ```no_run
/// # async fn example() -> Result<(), vamp_core::Error> {
/// use vamp_backends::kv::etcd::EtcdKv;
/// use vamp_core::kv::{keys, KeyValueStoreExt};
///
/// let kv = EtcdKv::connect(&["http://127.0.0.1:2379"], None).await?;
/// kv.put(&keys::haproxy_configuration("default", "1.7")?, "frontend ...".into()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
    label: String,
}

fn map_err(label: &str, e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    let temporary = match &e {
        E::IoError(_) | E::TransportError(_) | E::WatchError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code() as i32,
            grpc_code::CANCELLED
                | grpc_code::UNKNOWN
                | grpc_code::DEADLINE_EXCEEDED
                | grpc_code::RESOURCE_EXHAUSTED
                | grpc_code::ABORTED
                | grpc_code::UNAVAILABLE
        ),
        _ => false,
    };
    if temporary {
        Error::Unavailable {
            backend: label.to_owned(),
            source: Box::new(e),
        }
    } else {
        Error::Backend {
            backend: label.to_owned(),
            source: Box::new(e),
        }
    }
}

/// The gRPC status codes that mean "try again" (numbers from the gRPC specification).
mod grpc_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const ABORTED: i32 = 10;
    pub const UNAVAILABLE: i32 = 14;
}

fn version(rev: i64) -> Version {
    Version(u64::try_from(rev).unwrap_or(0))
}

fn rev(v: Version) -> i64 {
    i64::try_from(v.0).unwrap_or(i64::MAX)
}

impl EtcdKv {
    /// Connects to the etcd cluster at `endpoints` (`http://host:2379`; `https://` with TLS),
    /// with `user` and password when etcd has authentication enabled.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for no or bad endpoints, [`Error::Unavailable`] when etcd
    /// cannot be reached.
    pub async fn connect(
        endpoints: &[impl AsRef<str>],
        user: Option<(&str, &str)>,
    ) -> Result<Self, Error> {
        let endpoints: Vec<String> = endpoints.iter().map(|e| e.as_ref().to_owned()).collect();
        if endpoints.is_empty() {
            return Err(crate::invalid("etcd", "at least one endpoint is required"));
        }
        let label = format!("Etcd({})", endpoints.join(","));
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some((name, password)) = user {
            options = options.with_user(name, password);
        }
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|e| match e {
                etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
                    crate::invalid("etcd", e.to_string())
                }
                e => map_err(&label, e),
            })?;
        let kv = Self { client, label };
        // Connecting is lazy: ask for something so an unreachable cluster fails here.
        kv.current_revision().await?;
        Ok(kv)
    }

    /// The cluster's current revision.
    async fn current_revision(&self) -> Result<i64, Error> {
        let r = self
            .client
            .clone()
            .get("\0", Some(GetOptions::new().with_keys_only().with_limit(1)))
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    fn err(&self, e: etcd_client::Error) -> Error {
        map_err(&self.label, e)
    }

    async fn found(&self, key: &KeyPath) -> Result<Option<u64>, Error> {
        Ok(self.get(key).await?.map(|v| v.version.0))
    }

    async fn keys_under(&self, prefix: &KeyPath) -> Result<Vec<KeyPath>, Error> {
        let r = self
            .client
            .clone()
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(|e| self.err(e))?;
        let mut keys: Vec<KeyPath> = r
            .kvs()
            .iter()
            .filter_map(|kv| std::str::from_utf8(kv.key()).ok())
            .filter_map(|k| KeyPath::parse(k).ok())
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }
}

impl fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdKv")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for EtcdKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

struct WatchState {
    kv: EtcdKv,
    prefix: KeyPath,
    /// The revision to watch from; `None` until the first poll fixes it.
    next: Option<i64>,
    initial: bool,
    stream: Option<WatchStream>,
    pending: VecDeque<Result<WatchEvent, Error>>,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<WatchEvent, Error>, Self)> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some((e, self));
            }
            if let Err(e) = self.fill().await {
                // Drop the stream; the next poll watches again from `next`.
                self.stream = None;
                vamp_core::rt::sleep(Duration::from_millis(200)).await;
                return Some((Err(e), self));
            }
        }
    }

    async fn fill(&mut self) -> Result<(), Error> {
        if self.next.is_none() {
            if self.initial {
                let mut client = self.kv.client.clone();
                let r = client
                    .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
                    .await
                    .map_err(|e| self.kv.err(e))?;
                for kv in r.kvs() {
                    let Some(key) = std::str::from_utf8(kv.key())
                        .ok()
                        .and_then(|k| KeyPath::parse(k).ok())
                    else {
                        continue;
                    };
                    if key.starts_with(&self.prefix) {
                        self.pending.push_back(Ok(WatchEvent::Put {
                            key,
                            value: Bytes::copy_from_slice(kv.value()),
                            version: version(kv.mod_revision()),
                        }));
                    }
                }
                self.pending.push_back(Ok(WatchEvent::Synced));
                self.next = Some(r.header().map_or(0, |h| h.revision()) + 1);
                return Ok(());
            }
            self.next = Some(self.kv.current_revision().await? + 1);
        }
        let next = self.next.unwrap_or(1);
        if self.stream.is_none() {
            let options = etcd_client::WatchOptions::new()
                .with_prefix()
                .with_start_revision(next)
                .with_progress_notify();
            let stream = self
                .kv
                .client
                .clone()
                .watch(self.prefix.as_str(), Some(options))
                .await
                .map_err(|e| self.kv.err(e))?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("watching");
        let Some(response) = stream.message().await.map_err(|e| self.kv.err(e))? else {
            return Err(Error::Unavailable {
                backend: self.kv.label.clone(),
                source: "the watch stream ended".into(),
            });
        };
        if response.compact_revision() > 0 {
            // A gap: the watch starts again from the current values (or the current
            // revision), as the trait's contract says.
            let compacted = response.compact_revision();
            self.pending.push_back(Err(Error::WatchGap {
                backend: self.kv.label.clone(),
                detail: format!(
                    "etcd compacted its history past revision {next} (now from {compacted})"
                ),
            }));
            self.next = None;
            self.stream = None;
            return Ok(());
        }
        if response.canceled() {
            self.stream = None;
            return Err(Error::Unavailable {
                backend: self.kv.label.clone(),
                source: format!("etcd cancelled the watch: {}", response.cancel_reason()).into(),
            });
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            self.next = Some(kv.mod_revision() + 1);
            let Some(key) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| KeyPath::parse(k).ok())
            else {
                continue;
            };
            if !key.starts_with(&self.prefix) {
                continue;
            }
            let version = version(kv.mod_revision());
            self.pending.push_back(Ok(match event.event_type() {
                EventType::Put => WatchEvent::Put {
                    key,
                    value: Bytes::copy_from_slice(kv.value()),
                    version,
                },
                EventType::Delete => WatchEvent::Delete { key, version },
            }));
        }
        Ok(())
    }
}

#[async_trait]
impl KeyValueStore for EtcdKv {
    async fn get(&self, key: &KeyPath) -> Result<Option<Versioned<Bytes>>, Error> {
        let r = self
            .client
            .clone()
            .get(key.as_str(), None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.kvs().first().map(|kv| Versioned {
            value: Bytes::copy_from_slice(kv.value()),
            version: version(kv.mod_revision()),
        }))
    }

    async fn put_opts(
        &self,
        key: &KeyPath,
        value: Bytes,
        opts: PutOptions,
    ) -> Result<Version, Error> {
        self.capabilities()
            .check_put(&self.label, key, value.len(), &opts)?;
        let mut client = self.client.clone();
        let mut put = etcd_client::PutOptions::new();
        if let Some(ttl) = opts.ttl {
            let seconds = i64::try_from(ttl.as_millis().div_ceil(1000))
                .unwrap_or(i64::MAX)
                .max(1);
            let lease = client
                .lease_grant(seconds, None)
                .await
                .map_err(|e| self.err(e))?;
            put = put.with_lease(lease.id());
        }
        let k = key.as_str();
        let mut compare = match opts.mode {
            PutMode::Create => vec![Compare::create_revision(k, CompareOp::Equal, 0)],
            PutMode::Update(expected) => vec![
                Compare::create_revision(k, CompareOp::Greater, 0),
                Compare::mod_revision(k, CompareOp::Equal, rev(expected)),
            ],
            _ if opts.guard.is_none() => {
                let r = client
                    .put(k, value.to_vec(), Some(put))
                    .await
                    .map_err(|e| self.err(e))?;
                return Ok(version(r.header().map_or(0, |h| h.revision())));
            }
            _ => Vec::new(),
        };
        // The guard: the other key exists at the version given, in the same transaction.
        if let Some((guard, expected)) = &opts.guard {
            compare.push(Compare::create_revision(
                guard.as_str(),
                CompareOp::Greater,
                0,
            ));
            compare.push(Compare::mod_revision(
                guard.as_str(),
                CompareOp::Equal,
                rev(*expected),
            ));
        }
        let mut otherwise = vec![TxnOp::get(k, None)];
        if let Some((guard, _)) = &opts.guard {
            otherwise.push(TxnOp::get(guard.as_str(), None));
        }
        let txn = Txn::new()
            .when(compare)
            .and_then(vec![TxnOp::put(k, value.to_vec(), Some(put))])
            .or_else(otherwise);
        let r = client.txn(txn).await.map_err(|e| self.err(e))?;
        if r.succeeded() {
            return Ok(version(r.header().map_or(0, |h| h.revision())));
        }
        let mut gets = r.op_responses().into_iter().filter_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| version(kv.mod_revision()).0)),
            _ => None,
        });
        let found = gets.next();
        if let Some((guard, expected)) = &opts.guard {
            let at = gets.next().flatten();
            if at != Some(expected.0) {
                return Err(Error::Conflict {
                    backend: self.label.clone(),
                    key: guard.to_string(),
                    expected: expected.0,
                    found: at,
                });
            }
        }
        let found = match found {
            Some(f) => f,
            None => self.found(key).await?,
        };
        Err(match opts.mode {
            PutMode::Create => Error::AlreadyExists {
                backend: self.label.clone(),
                key: key.to_string(),
            },
            PutMode::Update(expected) => Error::Conflict {
                backend: self.label.clone(),
                key: key.to_string(),
                expected: expected.0,
                found,
            },
            // Only the guard can fail an overwrite, and it was checked above: it moved
            // between the transaction and its answer.
            _ => Error::Conflict {
                backend: self.label.clone(),
                key: opts
                    .guard
                    .as_ref()
                    .map_or_else(|| key.to_string(), |(g, _)| g.to_string()),
                expected: opts.guard.as_ref().map_or(0, |(_, v)| v.0),
                found: None,
            },
        })
    }

    async fn delete(&self, key: &KeyPath) -> Result<(), Error> {
        self.client
            .clone()
            .delete(key.as_str(), None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
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
            next: None,
            initial: opts.initial,
            stream: None,
            pending: VecDeque::new(),
        };
        stream::unfold(state, WatchState::next).boxed()
    }

    fn capabilities(&self) -> KvCapabilities {
        let mut caps = KvCapabilities::all();
        caps.value_max_bytes = Some(VALUE_MAX_BYTES);
        caps
    }
}

/// Leases on etcd: the key `vamp-lease/<name>`, holding the holder's id, attached to an etcd
/// lease of the ttl (whole seconds, rounded up; etcd's own minimum applies). The key is
/// created in a transaction only if absent, etcd deletes it when its lease expires, and the
/// fencing token is the key's `create_revision`, which grows with every creation. A renewal
/// is a keep-alive of the etcd lease (time is etcd's).
#[async_trait]
impl vamp_core::lease::LeaseStore for EtcdKv {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<vamp_core::lease::LeaseGrant>, Error> {
        vamp_core::lease::check(name, holder, ttl)?;
        let key = lease_key(name);
        let mut c = self.client.clone();
        let grant = |token: i64| {
            vamp_core::lease::LeaseGrant::new(name, holder, u64::try_from(token).unwrap_or(0), ttl)
        };
        let current = c.get(key.as_str(), None).await.map_err(|e| self.err(e))?;
        if let Some(kv) = current.kvs().first() {
            if kv.value() != holder.as_bytes() {
                return Ok(None);
            }
            let (mut keeper, mut answers) = c
                .lease_keep_alive(kv.lease())
                .await
                .map_err(|e| self.err(e))?;
            keeper.keep_alive().await.map_err(|e| self.err(e))?;
            let alive = answers
                .message()
                .await
                .map_err(|e| self.err(e))?
                .is_some_and(|a| a.ttl() > 0);
            if alive {
                return Ok(Some(grant(kv.create_revision())));
            }
            // Expired between the read and the keep-alive: acquire it again below.
        }
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
        let lease = c
            .lease_grant(seconds, None)
            .await
            .map_err(|e| self.err(e))?
            .id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                holder,
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )]);
        let r = c.txn(txn).await.map_err(|e| self.err(e))?;
        if r.succeeded() {
            Ok(Some(grant(r.header().map_or(0, |h| h.revision()))))
        } else {
            let _ = c.lease_revoke(lease).await;
            Ok(None)
        }
    }

    async fn observe(&self, name: &str) -> Result<Option<vamp_core::lease::LeaseHolder>, Error> {
        let r = self
            .client
            .clone()
            .get(lease_key(name), None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.kvs().first().map(|kv| vamp_core::lease::LeaseHolder {
            holder: String::from_utf8_lossy(kv.value()).into_owned(),
            token: u64::try_from(kv.create_revision()).unwrap_or(0),
        }))
    }

    async fn release(&self, name: &str, holder: &str, token: u64) -> Result<bool, Error> {
        let key = lease_key(name);
        let mut c = self.client.clone();
        let current = c.get(key.as_str(), None).await.map_err(|e| self.err(e))?;
        let Some(kv) = current.kvs().first() else {
            return Ok(false);
        };
        let lease = kv.lease();
        let txn = Txn::new()
            .when([
                Compare::value(key.as_str(), CompareOp::Equal, holder),
                Compare::create_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    i64::try_from(token).unwrap_or(-1),
                ),
            ])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let r = c.txn(txn).await.map_err(|e| self.err(e))?;
        if r.succeeded() && lease != 0 {
            let _ = c.lease_revoke(lease).await;
        }
        Ok(r.succeeded())
    }
}

fn lease_key(name: &str) -> String {
    format!("vamp-lease/{name}")
}
