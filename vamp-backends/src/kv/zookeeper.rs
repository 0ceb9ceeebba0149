//! ZooKeeper as a [`KeyValueStore`] (feature `kv-zookeeper`).
//!
//! ZooKeeper watches say *that* a node changed, not what it changed to, so a watch built on
//! them alone would skip values written in quick succession. This store therefore keeps, under
//! its root node `R` (default `/vamp-kv`):
//!
//! | node | holds |
//! |---|---|
//! | `R/entries/<key>` | each entry's value, raw (the key percent-encoded into one node name) |
//! | `R/log/e-<sequence>` | every change in commit order (persistent sequential nodes) |
//! | `R/rev` | touched by every write, so its `mzxid` is the write's version |
//! | `R/trimmed` | the highest log sequence trimming may have removed |
//!
//! Every write is one ZooKeeper `multi` (entry, log node and `rev` together, all or nothing), so
//! an entry's version is the write's transaction id (`mzxid`): increasing across all keys.
//! Create-only writes rely on `NodeExists`; compare-and-swap checks the node's `mzxid` and then
//! writes with the node's data version, so a concurrent write makes it fail instead of being
//! lost. Watches read the log from the sequence after the last one they delivered, waking on a
//! children watch of `R/log`; after a reconnect (or a new session) they go on from there, so no
//! change is lost while the log keeps it. The log is trimmed to the newest [`LOG_KEEP`]
//! changes ([`ZookeeperKv::with_log_keep`]); trimming raises `R/trimmed` before it deletes, so a
//! watch that falls further behind yields [`Error::WatchGap`] and starts again from the
//! current values, also when the log was trimmed empty and nothing was written since.
//!
//! **Access.** No node this store creates is writable by the world. With credentials
//! ([`ZookeeperAccess::Digest`], `zk://user:password@host/prefix`) the session authenticates
//! with ZooKeeper's built-in `digest` scheme and creates every node with the ACL
//! `auth::cdrwa` (the same user) plus `world:anyone:r`, so agents can read without
//! credentials but only that user can write. Without credentials the store is read-only
//! ([`ZookeeperAccess::ReadOnly`]): writes fail with [`Error::InvalidConfig`] naming the fix,
//! and no node is created. World-writable nodes (Vamp's behaviour) need an explicit
//! [`ZookeeperAccess::Open`] (`?acl=open`). Nodes created earlier keep their ACLs.
//!
//! All nodes are persistent (nothing is lost with a session). Values are limited to 400 KiB:
//! a `multi` carries the value twice (entry and log) within ZooKeeper's default 1 MiB
//! `jute.maxbuffer`. TTLs are not supported.
//!
//! Configuration through [`KvBackendConfig`](super::KvBackendConfig):
//! `zk://[user:password@]host1:2181,host2:2181/prefix[?acl=open]` or the fields of
//! [`ZookeeperKvConfig`](super::ZookeeperKvConfig): `servers`, `prefix`, `user`, `password`,
//! `open_acl`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use vamp_core::Error;
use vamp_core::kv::*;
use zookeeper_client as zk;

use super::change_log::{log_record, parse_log_record};

/// The largest value this store writes.
pub const VALUE_MAX_BYTES: usize = 400 * 1024;

/// How many changes the log keeps.
pub const LOG_KEEP: i64 = 10_000;

/// A [`KeyValueStore`] on ZooKeeper. Cloning shares the session, which reconnects by itself;
/// an expired session is replaced by a new one. While ZooKeeper is unreachable, operations fail
/// with [`Error::Unavailable`].
///
/// ```no_run
/// # async fn example() -> Result<(), vamp_core::Error> {
/// use vamp_backends::kv::zookeeper::ZookeeperKv;
/// use vamp_core::kv::{keys, KeyValueStoreExt};
///
/// let kv = ZookeeperKv::connect("127.0.0.1:2181", "/vamp-kv").await?;
/// kv.put(&keys::haproxy_configuration("default", "1.7")?, "frontend ...".into()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ZookeeperKv {
    inner: Arc<Inner>,
}

struct Inner {
    servers: String,
    root: String,
    label: String,
    access: ZookeeperAccess,
    client: Mutex<Option<zk::Client>>,
    /// How many changes the log keeps.
    log_keep: AtomicI64,
    /// The log sequence this handle last trimmed at.
    last_trim: AtomicI64,
}

/// Who may write the nodes this store creates (see the module docs).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZookeeperAccess {
    /// No credentials: reads only; writes are refused before reaching ZooKeeper.
    ReadOnly,
    /// `digest` credentials: nodes are writable by this user only, readable by anyone.
    Digest {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// Nodes are created writable by anyone (`world:anyone:cdrwa`), as Vamp did. Unsafe
    /// wherever anything but trusted processes can reach ZooKeeper.
    Open,
}

impl ZookeeperAccess {
    /// `digest` credentials.
    pub fn digest(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self::Digest {
            user: user.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for ZookeeperAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadOnly => f.write_str("ReadOnly"),
            Self::Digest { user, .. } => f
                .debug_struct("Digest")
                .field("user", user)
                .field("password", &"***")
                .finish(),
            Self::Open => f.write_str("Open"),
        }
    }
}

/// The same authenticated user may do anything; anyone may read.
static AUTH_ALL_WORLD_READ: [zk::Acl; 2] = [
    zk::Acl::new_const(zk::Permission::ALL, "auth", ""),
    zk::Acl::new_const(zk::Permission::READ, "world", "anyone"),
];

fn map_err(label: &str, e: zk::Error) -> Error {
    use zk::Error as E;
    match e {
        E::ConnectionLoss
        | E::SessionExpired
        | E::ClientClosed
        | E::Timeout
        | E::NoHosts
        | E::Throttled
        | E::SessionMoved
        | E::NotReadOnly => Error::Unavailable {
            backend: label.to_owned(),
            source: Box::new(e),
        },
        // An I/O failure of the connection (reset, refused), which the client reports as a
        // custom error when it happens while the session authenticates.
        e if io_caused(&e) => Error::Unavailable {
            backend: label.to_owned(),
            source: Box::new(e),
        },
        e => Error::Backend {
            backend: label.to_owned(),
            source: Box::new(e),
        },
    }
}

fn io_caused(e: &zk::Error) -> bool {
    // `Error::Custom` does not expose its inner error as a source: start from it.
    io_in_chain(match e {
        zk::Error::Custom(c) => Some(c),
        other => std::error::Error::source(other),
    })
}

/// Whether an I/O error is `cause` or among its sources.
fn io_in_chain(mut cause: Option<&(dyn std::error::Error + 'static)>) -> bool {
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        // The client keeps its sources as `Arc<dyn Error>`: the `dyn Error` seen is the `Arc`
        // (a reset connection was reported as permanent when it came this way).
        if c.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
            .is_some_and(|inner| inner.is::<std::io::Error>())
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// One node name for a key: bytes outside `[A-Za-z0-9._~:-]` percent-encoded (so `/`, `%`
/// and every character ZooKeeper forbids in paths are safe).
fn encode(key: &KeyPath) -> String {
    crate::url::percent_encode(key.as_str(), b"._~:-")
}

fn decode(name: &str) -> Option<KeyPath> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    KeyPath::parse(&String::from_utf8(out).ok()?).ok()
}

fn parse_mark(data: &[u8]) -> i64 {
    std::str::from_utf8(data)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1)
}

fn sequence(name: &str) -> Option<i64> {
    name.strip_prefix("e-")?.parse().ok()
}

fn version(zxid: i64) -> Version {
    Version(u64::try_from(zxid).unwrap_or(0))
}

enum Write<'a> {
    Create(&'a [u8]),
    Set(&'a [u8], Option<i32>),
    Delete,
}

/// A put's guard ([`PutOptions::guard`]): the other key, the version it must be at, and its
/// node's data version when that was seen (checked again in the write's transaction).
struct Guard<'a> {
    key: &'a KeyPath,
    expected: Version,
    data_version: i32,
}

impl ZookeeperKv {
    /// Connects to `servers` (`host:port,host:port`) and keeps the store under the node `root`
    /// (created when missing).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad root, [`Error::Unavailable`] when ZooKeeper cannot
    /// be reached.
    pub async fn connect(servers: &str, root: &str) -> Result<Self, Error> {
        Self::connect_with(servers, root, ZookeeperAccess::ReadOnly).await
    }

    /// Connects like [`ZookeeperKv::connect`], with `access` deciding who may write the nodes
    /// this store creates (with [`ZookeeperAccess::ReadOnly`], missing root nodes are not
    /// created and writes are refused).
    ///
    /// # Errors
    /// As [`ZookeeperKv::connect`]; a digest user containing `:` is [`Error::InvalidConfig`].
    pub async fn connect_with(
        servers: &str,
        root: &str,
        access: ZookeeperAccess,
    ) -> Result<Self, Error> {
        if let ZookeeperAccess::Digest { user, .. } = &access
            && (user.is_empty() || user.contains(':'))
        {
            return Err(crate::invalid(
                "zookeeper",
                "a digest user must be non-empty and without ':'",
            ));
        }
        let root_path = KeyPath::parse(root)?;
        if root_path.is_root() {
            return Err(crate::invalid("zookeeper", "the root node must not be '/'"));
        }
        let kv = Self {
            inner: Arc::new(Inner {
                servers: servers.to_owned(),
                root: root_path.as_str().to_owned(),
                label: format!("ZooKeeper({servers}{})", root_path.as_str()),
                access,
                client: Mutex::new(None),
                log_keep: AtomicI64::new(LOG_KEEP),
                last_trim: AtomicI64::new(0),
            }),
        };
        let client = kv.client().await?;
        let Some(acls) = kv.acls() else {
            return Ok(kv);
        };
        let dir = zk::CreateMode::Persistent.with_acls(acls);
        for node in [
            kv.inner.root.clone(),
            format!("{}/entries", kv.inner.root),
            format!("{}/log", kv.inner.root),
            format!("{}/rev", kv.inner.root),
            format!("{}/trimmed", kv.inner.root),
        ] {
            match client.mkdir(&node, &dir).await {
                Ok(()) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(kv.err(e)),
            }
        }
        Ok(kv)
    }

    /// Keeps the newest `keep` changes in the log instead of [`LOG_KEEP`] (for every clone of
    /// this handle). A watch further behind than that reads the current values again.
    #[must_use]
    pub fn with_log_keep(self, keep: usize) -> Self {
        self.inner
            .log_keep
            .store(i64::try_from(keep).unwrap_or(i64::MAX), Ordering::Relaxed);
        self
    }

    /// Trims the change log to its newest `keep` changes now (writers also trim, every tenth
    /// of the configured keep). Watches behind the trimmed changes report a gap.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when ZooKeeper cannot be reached; [`Error::InvalidConfig`] for a
    /// read-only store.
    pub async fn trim_log(&self, keep: usize) -> Result<(), Error> {
        if self.acls().is_none() {
            return Err(crate::invalid(
                "zookeeper",
                "this store has no credentials and is read-only",
            ));
        }
        let client = self.client().await?;
        let names = client
            .list_children(&format!("{}/log", self.inner.root))
            .await
            .map_err(|e| self.err(e))?;
        let Some(newest) = names.iter().filter_map(|n| sequence(n)).max() else {
            return Ok(());
        };
        self.trim(&client, newest, i64::try_from(keep).unwrap_or(i64::MAX))
            .await
    }

    /// The current session, connecting (again) when there is none or it has expired.
    async fn client(&self) -> Result<zk::Client, Error> {
        if let Some(c) = self.inner.client.lock().expect("lock").as_ref()
            && !c.state().is_terminated()
        {
            return Ok(c.clone());
        }
        let mut connector = zk::Client::connector();
        connector = connector
            .with_session_timeout(Duration::from_secs(10))
            .with_connection_timeout(Duration::from_secs(5));
        if let ZookeeperAccess::Digest { user, password } = &self.inner.access {
            connector = connector.with_auth("digest", format!("{user}:{password}").as_bytes());
        }
        let client = connector
            .connect(&self.inner.servers)
            .await
            .map_err(|e| self.err(e))?;
        *self.inner.client.lock().expect("lock") = Some(client.clone());
        Ok(client)
    }

    fn err(&self, e: zk::Error) -> Error {
        map_err(&self.inner.label, e)
    }

    /// The ACLs of created nodes; `None` when this store may not write.
    fn acls(&self) -> Option<zk::Acls<'static>> {
        match self.inner.access {
            ZookeeperAccess::ReadOnly => None,
            ZookeeperAccess::Digest { .. } => Some(zk::Acls::new(&AUTH_ALL_WORLD_READ)),
            ZookeeperAccess::Open => Some(zk::Acls::anyone_all()),
        }
    }

    fn entry(&self, key: &KeyPath) -> String {
        format!("{}/entries/{}", self.inner.root, encode(key))
    }

    /// One write: the entry change, a log record and a touch of `rev`, in one `multi`.
    /// Returns the new version, or the ZooKeeper error of the entry operation.
    async fn commit(
        &self,
        key: &KeyPath,
        write: Write<'_>,
    ) -> Result<Result<Version, zk::Error>, Error> {
        self.commit_guarded(key, write, None).await
    }

    /// The guard of `opts`, if any, with its node's data version: a conflict naming the guard
    /// key when it is not at the version given.
    async fn guard<'a>(&self, opts: &'a PutOptions) -> Result<Option<Guard<'a>>, Error> {
        let Some((key, expected)) = &opts.guard else {
            return Ok(None);
        };
        let client = self.client().await?;
        match client
            .check_stat(&self.entry(key))
            .await
            .map_err(|e| self.err(e))?
        {
            Some(stat) if version(stat.mzxid) == *expected => Ok(Some(Guard {
                key,
                expected: *expected,
                data_version: stat.version,
            })),
            other => Err(Error::Conflict {
                backend: self.inner.label.clone(),
                key: key.to_string(),
                expected: expected.0,
                found: other.map(|s| version(s.mzxid).0),
            }),
        }
    }

    /// [`ZookeeperKv::commit`] with the guard checked in the same transaction; a transaction
    /// that failed because the guard moved is a conflict naming the guard key.
    async fn commit_checked(
        &self,
        key: &KeyPath,
        write: Write<'_>,
        guard: Option<&Guard<'_>>,
    ) -> Result<Result<Version, zk::Error>, Error> {
        let result = self.commit_guarded(key, write, guard).await?;
        if let (Err(_), Some(g)) = (&result, guard) {
            let found = self.get(g.key).await?.map(|v| v.version);
            if found != Some(g.expected) {
                return Err(Error::Conflict {
                    backend: self.inner.label.clone(),
                    key: g.key.to_string(),
                    expected: g.expected.0,
                    found: found.map(|v| v.0),
                });
            }
        }
        Ok(result)
    }

    async fn commit_guarded(
        &self,
        key: &KeyPath,
        write: Write<'_>,
        guard: Option<&Guard<'_>>,
    ) -> Result<Result<Version, zk::Error>, Error> {
        let Some(acls) = self.acls() else {
            return Err(crate::invalid(
                "zookeeper",
                "this store has no credentials and is read-only: give zk://user:password@… (nodes writable by that user only) or, to create world-writable nodes as Vamp did, ?acl=open",
            ));
        };
        let client = self.client().await?;
        let path = self.entry(key);
        let mut multi = client.new_multi_writer();
        if let Some(g) = guard {
            multi
                .add_check_version(&self.entry(g.key), g.data_version)
                .map_err(|e| self.err(e))?;
        }
        let file = zk::CreateMode::Persistent.with_acls(acls);
        let log = zk::CreateMode::PersistentSequential.with_acls(acls);
        let record = match write {
            Write::Create(value) => {
                multi
                    .add_create(&path, value, &file)
                    .map_err(|e| self.err(e))?;
                log_record(b'p', key, value)
            }
            Write::Set(value, expected) => {
                multi
                    .add_set_data(&path, value, expected)
                    .map_err(|e| self.err(e))?;
                log_record(b'p', key, value)
            }
            Write::Delete => {
                multi.add_delete(&path, None).map_err(|e| self.err(e))?;
                log_record(b'd', key, &[])
            }
        };
        multi
            .add_create(&format!("{}/log/e-", self.inner.root), &record, &log)
            .map_err(|e| self.err(e))?;
        multi
            .add_set_data(&format!("{}/rev", self.inner.root), &[], None)
            .map_err(|e| self.err(e))?;
        match multi.commit().await {
            Ok(results) => {
                let mut v = None;
                let mut seq = None;
                for r in results {
                    match r {
                        zk::MultiWriteResult::SetData { stat } => v = Some(version(stat.mzxid)),
                        zk::MultiWriteResult::Create { path, .. } => {
                            if let Some(s) = path.rsplit('/').next().and_then(sequence) {
                                seq = Some(s);
                            }
                        }
                        _ => {}
                    }
                }
                if let Some(s) = seq {
                    let keep = self.inner.log_keep.load(Ordering::Relaxed);
                    let last = self.inner.last_trim.load(Ordering::Relaxed);
                    if s - last >= (keep / 10).max(1)
                        && self
                            .inner
                            .last_trim
                            .compare_exchange(last, s, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        // Best effort: a failed trim is tried again later.
                        let _ = self.trim(&client, s, keep).await;
                    }
                }
                v.map(Ok).ok_or_else(|| Error::Backend {
                    backend: self.inner.label.clone(),
                    source: "ZooKeeper's multi returned no stat".into(),
                })
            }
            Err(zk::MultiWriteError::OperationFailed { index: 0, source }) => Ok(Err(source)),
            Err(
                zk::MultiWriteError::OperationFailed { source, .. }
                | zk::MultiWriteError::RequestFailed { source },
            ) => Err(self.err(source)),
        }
    }

    /// Deletes the log nodes before the newest `keep` (up to sequence `newest`), raising
    /// `R/trimmed` to the highest sequence it may delete first, so a watch never misses a
    /// deleted change without seeing the mark.
    async fn trim(&self, client: &zk::Client, newest: i64, keep: i64) -> Result<(), Error> {
        let bound = newest.saturating_sub(keep);
        if bound <= 0 {
            return Ok(());
        }
        let mark = format!("{}/trimmed", self.inner.root);
        let mut raised = false;
        for _ in 0..10 {
            let (data, stat) = match client.get_data(&mark).await {
                Ok(d) => d,
                // A root made before this node existed.
                Err(zk::Error::NoNode) => {
                    let acls = self.acls().expect("checked by the caller");
                    let mode = zk::CreateMode::Persistent.with_acls(acls);
                    match client.create(&mark, b"-1", &mode).await {
                        Ok(_) | Err(zk::Error::NodeExists) => continue,
                        Err(e) => return Err(self.err(e)),
                    }
                }
                Err(e) => return Err(self.err(e)),
            };
            if parse_mark(&data) >= bound - 1 {
                raised = true;
                break;
            }
            match client
                .set_data(
                    &mark,
                    (bound - 1).to_string().as_bytes(),
                    Some(stat.version),
                )
                .await
            {
                Ok(_) => {
                    raised = true;
                    break;
                }
                Err(zk::Error::BadVersion) => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        if !raised {
            return Err(Error::Unavailable {
                backend: self.inner.label.clone(),
                source: "could not raise the trim mark (concurrent trims)".into(),
            });
        }
        let dir = format!("{}/log", self.inner.root);
        let names = client.list_children(&dir).await.map_err(|e| self.err(e))?;
        for name in names {
            if sequence(&name).is_some_and(|s| s < bound) {
                match client.delete(&format!("{dir}/{name}"), None).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(self.err(e)),
                }
            }
        }
        Ok(())
    }

    /// The trim mark: the highest log sequence trimming may have removed (-1: none).
    async fn trim_mark(&self, client: &zk::Client) -> Result<i64, Error> {
        match client
            .get_data(&format!("{}/trimmed", self.inner.root))
            .await
        {
            Ok((data, _)) => Ok(parse_mark(&data)),
            Err(zk::Error::NoNode) => Ok(-1),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn keys_under(&self, prefix: &KeyPath) -> Result<Vec<KeyPath>, Error> {
        let client = self.client().await?;
        let names = client
            .list_children(&format!("{}/entries", self.inner.root))
            .await
            .map_err(|e| self.err(e))?;
        let mut keys: Vec<KeyPath> = names
            .iter()
            .filter_map(|n| decode(n))
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// The log's sequences, sorted, and a watcher that fires when a change is added.
    async fn log_and_watch(&self) -> Result<(Vec<i64>, zk::OneshotWatcher), Error> {
        let client = self.client().await?;
        let (names, _, watcher) = client
            .get_and_watch_children(&format!("{}/log", self.inner.root))
            .await
            .map_err(|e| self.err(e))?;
        let mut seqs: Vec<i64> = names.iter().filter_map(|n| sequence(n)).collect();
        seqs.sort_unstable();
        Ok((seqs, watcher))
    }
}

impl fmt::Debug for ZookeeperKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZookeeperKv")
            .field("label", &self.inner.label)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ZookeeperKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.label)
    }
}

struct WatchState {
    kv: ZookeeperKv,
    prefix: KeyPath,
    /// The last log sequence delivered; `None` until the first poll fixes the start.
    last: Option<i64>,
    initial: bool,
    pending: VecDeque<Result<WatchEvent, Error>>,
    snapshot: HashMap<KeyPath, Version>,
}

impl WatchState {
    /// A gap: reported, then the watch starts again from the current values (or position).
    fn gap(&mut self, detail: String) {
        self.last = None;
        self.pending.push_back(Err(Error::WatchGap {
            backend: self.kv.inner.label.clone(),
            detail,
        }));
    }

    async fn next(mut self) -> Option<(Result<WatchEvent, Error>, Self)> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some((e, self));
            }
            if let Err(e) = self.fill().await {
                vamp_core::rt::sleep(Duration::from_millis(200)).await;
                return Some((Err(e), self));
            }
        }
    }

    async fn fill(&mut self) -> Result<(), Error> {
        let (seqs, watcher) = self.kv.log_and_watch().await?;
        let client = self.kv.client().await?;
        // After the listing: a change deleted by a trim that began before it is covered by
        // the mark read now.
        let mark = self.kv.trim_mark(&client).await?;
        let Some(last) = self.last else {
            // The start position is kept only once the current values are read too: a
            // failure in between reads both again (an agent starting during a blip must not
            // miss the configuration for good). A log trimmed empty still has its mark.
            let start = seqs.last().copied().unwrap_or(-1).max(mark);
            if self.initial {
                let mut events = Vec::new();
                let mut snapshot = HashMap::new();
                for key in self.kv.keys_under(&self.prefix).await? {
                    if let Some(v) = self.kv.get(&key).await? {
                        snapshot.insert(key.clone(), v.version);
                        events.push(Ok(WatchEvent::Put {
                            key,
                            value: v.value,
                            version: v.version,
                        }));
                    }
                }
                self.snapshot = snapshot;
                self.pending.extend(events);
                self.pending.push_back(Ok(WatchEvent::Synced));
            }
            self.last = Some(start);
            return Ok(());
        };
        if mark > last {
            self.gap(format!(
                "the change log was trimmed up to sequence {mark}, past this watch's position {last}"
            ));
            return Ok(());
        }
        let new: Vec<i64> = seqs.into_iter().filter(|s| *s > last).collect();
        if new.is_empty() {
            // Wait for the next change (or look again after a while: a watcher can be lost
            // with a connection).
            let changed = std::pin::pin!(watcher.changed());
            let timeout = std::pin::pin!(vamp_core::rt::sleep(Duration::from_secs(5)));
            futures_util::future::select(changed, timeout).await;
            return Ok(());
        }
        for s in new {
            let path = format!("{}/log/e-{s:010}", self.kv.inner.root);
            let (data, stat) = match client.get_data(&path).await {
                Ok(d) => d,
                // Trimmed since the listing: this change is lost to the watch.
                Err(zk::Error::NoNode) => {
                    self.gap(format!(
                        "the change log was trimmed past sequence {s} while this watch read it"
                    ));
                    return Ok(());
                }
                Err(e) => return Err(self.kv.err(e)),
            };
            self.last = Some(s);
            let Some((op, key, value)) = parse_log_record(&data) else {
                continue;
            };
            let v = version(stat.czxid);
            if !key.starts_with(&self.prefix) || self.snapshot.get(&key).is_some_and(|s| *s >= v) {
                continue;
            }
            self.pending.push_back(Ok(if op == b'd' {
                WatchEvent::Delete { key, version: v }
            } else {
                WatchEvent::Put {
                    key,
                    value: Bytes::copy_from_slice(value),
                    version: v,
                }
            }));
        }
        Ok(())
    }
}

#[async_trait]
impl KeyValueStore for ZookeeperKv {
    async fn get(&self, key: &KeyPath) -> Result<Option<Versioned<Bytes>>, Error> {
        let client = self.client().await?;
        match client.get_data(&self.entry(key)).await {
            Ok((data, stat)) => Ok(Some(Versioned {
                value: Bytes::from(data),
                version: version(stat.mzxid),
            })),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(self.err(e)),
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
        let label = || self.inner.label.clone();
        let guard = self.guard(&opts).await?;
        let guard = guard.as_ref();
        match opts.mode {
            PutMode::Create => match self
                .commit_checked(key, Write::Create(&value), guard)
                .await?
            {
                Ok(v) => Ok(v),
                Err(zk::Error::NodeExists) => Err(Error::AlreadyExists {
                    backend: label(),
                    key: key.to_string(),
                }),
                Err(e) => Err(self.err(e)),
            },
            PutMode::Update(expected) => {
                let client = self.client().await?;
                let stat = match client
                    .check_stat(&self.entry(key))
                    .await
                    .map_err(|e| self.err(e))?
                {
                    Some(stat) if version(stat.mzxid) == expected => stat,
                    other => {
                        return Err(Error::Conflict {
                            backend: label(),
                            key: key.to_string(),
                            expected: expected.0,
                            found: other.map(|s| version(s.mzxid).0),
                        });
                    }
                };
                match self
                    .commit_checked(key, Write::Set(&value, Some(stat.version)), guard)
                    .await?
                {
                    Ok(v) => Ok(v),
                    Err(zk::Error::BadVersion | zk::Error::NoNode) => {
                        let found = self.get(key).await?.map(|v| v.version.0);
                        Err(Error::Conflict {
                            backend: label(),
                            key: key.to_string(),
                            expected: expected.0,
                            found,
                        })
                    }
                    Err(e) => Err(self.err(e)),
                }
            }
            _ => {
                // Overwrite: set if it exists, create if not; a concurrent create or delete
                // between the two just means trying the other.
                for _ in 0..10 {
                    match self
                        .commit_checked(key, Write::Set(&value, None), guard)
                        .await?
                    {
                        Ok(v) => return Ok(v),
                        Err(zk::Error::NoNode) => {}
                        Err(e) => return Err(self.err(e)),
                    }
                    match self
                        .commit_checked(key, Write::Create(&value), guard)
                        .await?
                    {
                        Ok(v) => return Ok(v),
                        Err(zk::Error::NodeExists) => {}
                        Err(e) => return Err(self.err(e)),
                    }
                }
                Err(Error::Unavailable {
                    backend: label(),
                    source: "the key kept being created and deleted concurrently".into(),
                })
            }
        }
    }

    async fn delete(&self, key: &KeyPath) -> Result<(), Error> {
        match self.commit(key, Write::Delete).await? {
            Ok(_) | Err(zk::Error::NoNode) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
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
            last: None,
            initial: opts.initial,
            pending: VecDeque::new(),
            snapshot: HashMap::new(),
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

impl ZookeeperKv {
    /// The server's clock (milliseconds since the Unix epoch): the modification time of a
    /// node touched now.
    async fn server_now(&self, client: &zk::Client, acls: zk::Acls<'static>) -> Result<i64, Error> {
        let clock = format!("{}/lease-clock", self.inner.root);
        loop {
            match client.set_data(&clock, b"", None).await {
                Ok(stat) => return Ok(stat.mtime),
                Err(zk::Error::NoNode) => {
                    let mode = zk::CreateMode::Persistent.with_acls(acls);
                    match client.create(&clock, b"", &mode).await {
                        Ok(_) | Err(zk::Error::NodeExists) => {}
                        Err(e) => return Err(self.err(e)),
                    }
                }
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    fn lease_node(&self, name: &str) -> String {
        format!("{}/leases/{name}", self.inner.root)
    }

    /// The client, the ACLs and the server's time, for a lease operation (which writes).
    async fn lease_session(&self) -> Result<(zk::Client, zk::Acls<'static>, i64), Error> {
        let Some(acls) = self.acls() else {
            return Err(crate::invalid(
                "zookeeper",
                "leases need a writable store: give zk://user:password@… or ?acl=open",
            ));
        };
        let client = self.client().await?;
        let mode = zk::CreateMode::Persistent.with_acls(acls);
        match client
            .mkdir(&format!("{}/leases", self.inner.root), &mode)
            .await
        {
            Ok(()) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(self.err(e)),
        }
        let now = self.server_now(&client, acls).await?;
        Ok((client, acls, now))
    }

    /// The lease's holder, token (the node's creation zxid), version, and whether it is live
    /// at `now` (its last write plus its ttl, in the server's time).
    async fn lease_state(
        &self,
        client: &zk::Client,
        name: &str,
        now: i64,
    ) -> Result<Option<(String, u64, i32, bool)>, Error> {
        match client.get_data(&self.lease_node(name)).await {
            Ok((data, stat)) => {
                let text = String::from_utf8_lossy(&data);
                let (holder, ttl) = text.split_once(' ').unwrap_or((&text, "0"));
                let ttl: i64 = ttl.parse().unwrap_or(0);
                Ok(Some((
                    holder.to_owned(),
                    u64::try_from(stat.czxid).unwrap_or(0),
                    stat.version,
                    stat.mtime.saturating_add(ttl) > now,
                )))
            }
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }
}

/// Leases on ZooKeeper: a node per lease under `<root>/leases` holding the holder and the
/// ttl, live until its last write (the server's `mtime`) plus the ttl, in the server's time
/// (read by touching a clock node). A renewal writes the node again at the version read; a
/// free or expired lease is taken by deleting it at that version and creating it again, so
/// the fencing token, the node's creation zxid, grows with every acquisition.
#[async_trait]
impl vamp_core::lease::LeaseStore for ZookeeperKv {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<vamp_core::lease::LeaseGrant>, Error> {
        vamp_core::lease::check(name, holder, ttl)?;
        let (client, acls, now) = self.lease_session().await?;
        let node = self.lease_node(name);
        let data = format!("{holder} {}", ttl.as_millis());
        let grant = |token: u64| vamp_core::lease::LeaseGrant::new(name, holder, token, ttl);
        match self.lease_state(&client, name, now).await? {
            Some((h, _, _, true)) if h != holder => return Ok(None),
            Some((_, token, version, true)) => {
                return match client.set_data(&node, data.as_bytes(), Some(version)).await {
                    Ok(_) => Ok(Some(grant(token))),
                    Err(zk::Error::BadVersion | zk::Error::NoNode) => Ok(None),
                    Err(e) => Err(self.err(e)),
                };
            }
            Some((_, _, version, false)) => match client.delete(&node, Some(version)).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(zk::Error::BadVersion) => return Ok(None),
                Err(e) => return Err(self.err(e)),
            },
            None => {}
        }
        let mode = zk::CreateMode::Persistent.with_acls(acls);
        match client.create(&node, data.as_bytes(), &mode).await {
            Ok((stat, _)) => Ok(Some(grant(u64::try_from(stat.czxid).unwrap_or(0)))),
            Err(zk::Error::NodeExists) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn observe(&self, name: &str) -> Result<Option<vamp_core::lease::LeaseHolder>, Error> {
        let (client, _, now) = self.lease_session().await?;
        Ok(self
            .lease_state(&client, name, now)
            .await?
            .filter(|s| s.3)
            .map(|(holder, token, _, _)| vamp_core::lease::LeaseHolder { holder, token }))
    }

    async fn release(&self, name: &str, holder: &str, token: u64) -> Result<bool, Error> {
        let (client, _, now) = self.lease_session().await?;
        match self.lease_state(&client, name, now).await? {
            Some((h, t, version, true)) if h == holder && t == token => {
                match client.delete(&self.lease_node(name), Some(version)).await {
                    Ok(()) => Ok(true),
                    Err(zk::Error::BadVersion | zk::Error::NoNode) => Ok(false),
                    Err(e) => Err(self.err(e)),
                }
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    /// An error keeping its source as the ZooKeeper client's `CustomError` does.
    #[derive(Debug)]
    struct Wrapped {
        source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
    }

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.source
                .as_ref()
                .map(|s| s as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn a_reset_connection_behind_an_arc_is_an_io_failure() {
        let reset = Wrapped {
            source: Some(std::sync::Arc::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            ))),
        };
        assert!(super::io_in_chain(Some(&reset)));
        let other = Wrapped {
            source: Some(std::sync::Arc::new(std::fmt::Error)),
        };
        assert!(!super::io_in_chain(Some(&other)));
        assert!(!super::io_in_chain(Some(&Wrapped { source: None })));
    }

    use super::*;

    #[test]
    fn keys_encode_to_one_node_name_and_back() {
        for k in [
            "/a",
            "/vamp/default/gateways/haproxy/1.7/configuration",
            "/ü/%2F/x y",
            "/a/b.c_d~e:f-g",
        ] {
            let key = KeyPath::parse(k).unwrap();
            let name = encode(&key);
            assert!(!name.contains('/') && name.is_ascii(), "{name}");
            assert_eq!(decode(&name), Some(key), "{k}");
        }
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
    }
}
