//! Redis as a [`KeyValueStore`] (feature `kv-redis`).
//!
//! Layout under a store name `S` (default `vamp`): `S:d:<key>` is a hash with the value (`d`)
//! and version (`v`); `S:rev` is the store-wide revision counter; `S:index` is a sorted set of
//! keys for prefix listing; `S:events` is a stream that every write appends to. Writes run as
//! Lua scripts, so create-only and compare-and-swap are atomic in Redis and every change lands
//! in the stream with its version. Watches read the stream from the last ID they saw, so they
//! resume after a reconnect without losing events that Redis still keeps (the stream is
//! trimmed to about 100,000 entries).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamReadOptions, StreamReadReply};
use vamp_core::Error;
use vamp_core::kv::*;

const PUT: &str = r"
if ARGV[5] ~= '' then
  local g = redis.call('HGET', KEYS[5], 'v')
  if g ~= ARGV[5] then return {-3, g or ''} end
end
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[3] == 'c' and cur then return {-1, cur} end
if ARGV[3] == 'u' and ((not cur) or cur ~= ARGV[4]) then return {-2, cur or ''} end
local v = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'd', ARGV[2], 'v', v)
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'k', ARGV[1], 'o', 'p', 'v', v, 'd', ARGV[2])
return {0, v}
";

const DELETE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'v')
if not cur then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local v = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'k', ARGV[1], 'o', 'd', 'v', v)
return v
";

/// A [`KeyValueStore`] on Redis. Cloning shares the connection, which reconnects by itself;
/// while Redis is down, operations fail with [`Error::Unavailable`] (temporary).
///
/// ```no_run
/// # async fn example() -> Result<(), vamp_core::Error> {
/// use vamp_backends::kv::redis::RedisKv;
/// use vamp_core::kv::{keys, KeyValueStoreExt};
///
/// let kv = RedisKv::connect("redis://127.0.0.1:6379/0", "vamp").await?;
/// kv.put(&keys::haproxy_configuration("default", "1.7")?, "frontend ...".into()).await?;
/// # Ok(()) }
/// ```
///
/// Through the selection: `KvBackendConfig::from_url("redis://:password@host:6379/0?prefix=/vamp")`.
#[derive(Clone)]
pub struct RedisKv {
    client: redis::Client,
    conn: ConnectionManager,
    name: String,
    label: String,
}

fn map_err(label: &str, e: redis::RedisError) -> Error {
    // A reply cut off by a dropped connection is a parse error ("unexpected end of input");
    // the client's own advice for those is to reconnect, so they are temporary too.
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::Parse
    {
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

impl RedisKv {
    /// Connects to `url` (`redis://[user:pass@]host:port/db`), keeping its data under the store
    /// name `name` (`vamp` by default in [`crate::kv::KvBackendConfig`]).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad URL, [`Error::Unavailable`] when Redis cannot be reached.
    pub async fn connect(url: &str, name: &str) -> Result<Self, Error> {
        let label = format!("Redis({})", url.rsplit('@').next().unwrap_or(url));
        let client = redis::Client::open(url).map_err(|e| Error::InvalidConfig {
            backend: "redis".into(),
            message: e.to_string(),
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| map_err(&label, e))?;
        Ok(Self {
            client,
            conn,
            name: name.to_owned(),
            label,
        })
    }

    fn data_key(&self, key: &KeyPath) -> String {
        format!("{}:d:{}", self.name, key.as_str())
    }
    fn rev_key(&self) -> String {
        format!("{}:rev", self.name)
    }
    fn index_key(&self) -> String {
        format!("{}:index", self.name)
    }
    fn stream_key(&self) -> String {
        format!("{}:events", self.name)
    }

    async fn keys_under(&self, prefix: &KeyPath) -> Result<Vec<KeyPath>, Error> {
        let mut conn = self.conn.clone();
        let (min, max) = if prefix.is_root() {
            ("-".to_owned(), "+".to_owned())
        } else {
            (
                format!("[{}", prefix.as_str()),
                format!("[{}/\u{10FFFF}", prefix.as_str()),
            )
        };
        let members: Vec<String> = conn
            .zrangebylex(self.index_key(), min, max)
            .await
            .map_err(|e| map_err(&self.label, e))?;
        Ok(members
            .iter()
            .filter_map(|m| KeyPath::parse(m).ok())
            .filter(|k| k.starts_with(prefix))
            .collect())
    }
}

impl fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKv")
            .field("store", &self.name)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for RedisKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

struct WatchState {
    kv: RedisKv,
    conn: Option<MultiplexedConnection>,
    prefix: KeyPath,
    last_id: Option<String>,
    initial: bool,
    pending: VecDeque<WatchEvent>,
    snapshot: HashMap<KeyPath, Version>,
    /// Failures in a row: the next reconnect waits (100 ms doubling to 5 s).
    failures: u32,
    /// The version of the last change read: every write increments the store's revision and
    /// appends one entry, so an entry whose version skips one means the stream trimmed
    /// changes the watch has not read (a gap).
    last_v: Option<u64>,
}

/// How long a blocking stream read may take before the connection counts as dead (the read
/// blocks for 1 s on the server; a half-open connection would never answer). The client's
/// default response timeout (500 ms in redis 1.x) is shorter than the block: an idle watch
/// would fail every half second.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long any other command may take (Vamp's `persistence.response-timeout`, 5 s).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a watch waits before reconnecting after `failures` failed attempts in a row:
/// none before the first, then 200 ms doubling to 5 s (it spun while Redis was down).
fn reconnect_delay(failures: u32) -> Option<Duration> {
    (failures > 0).then(|| {
        Duration::from_millis(100)
            .saturating_mul(1 << failures.min(6))
            .min(Duration::from_secs(5))
    })
}

/// The version an entry of the change stream carries.
fn entry_version(entry: &redis::streams::StreamId) -> Option<u64> {
    entry
        .map
        .get("v")
        .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
        .and_then(|v| String::from_utf8_lossy(&v).parse::<u64>().ok())
}

impl WatchState {
    /// A gap: the watch starts again from the current values (or the current position).
    fn gap(&mut self, detail: String) -> Error {
        self.last_id = None;
        self.last_v = None;
        self.pending.clear();
        Error::WatchGap {
            backend: self.kv.label.clone(),
            detail,
        }
    }

    async fn next(mut self) -> Option<(Result<WatchEvent, Error>, Self)> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some((Ok(e), self));
            }
            if self.conn.is_none()
                && let Some(backoff) = reconnect_delay(self.failures)
            {
                vamp_core::rt::sleep(backoff).await;
            }
            match self.fill().await {
                Ok(()) => self.failures = 0,
                Err(e) => {
                    // Drop the connection; the next poll reconnects and resumes from last_id
                    // (or, after a gap, from a new snapshot).
                    self.conn = None;
                    self.failures = self.failures.saturating_add(1);
                    return Some((Err(e), self));
                }
            }
        }
    }

    async fn fill(&mut self) -> Result<(), Error> {
        let label = self.kv.label.clone();
        let stream = self.kv.stream_key();
        let rev = self.kv.rev_key();
        if self.conn.is_none() {
            let mut conn = self
                .kv
                .client
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new()
                        .set_response_timeout(Some(READ_TIMEOUT))
                        .set_connection_timeout(Some(CONNECT_TIMEOUT)),
                )
                .await
                .map_err(|e| map_err(&label, e))?;
            if let Some(last_v) = self.last_v {
                // Resuming: the changes after the last one read must still be in the stream.
                // The oldest entry and the revision are read atomically: an oldest entry
                // past the next change, or an empty stream behind the revision, is a gap.
                let (oldest, current): (redis::streams::StreamRangeReply, Option<u64>) =
                    redis::pipe()
                        .atomic()
                        .xrange_count(&stream, "-", "+", 1)
                        .get(&rev)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| map_err(&label, e))?;
                let forgotten = match oldest.ids.first() {
                    Some(entry) => entry_version(entry).is_some_and(|v| v > last_v + 1),
                    None => current.unwrap_or(0) > last_v,
                };
                if forgotten {
                    self.conn = Some(conn);
                    return Err(self.gap(format!(
                        "the change stream was trimmed past this watch's position (change {})",
                        last_v + 1
                    )));
                }
            }
            self.conn = Some(conn);
        }
        if self.last_id.is_none() {
            // Where the stream ends now, and the revision (the version of the last change),
            // read atomically: every later change will be read, and its version follows.
            // The position is kept only once the current values are read too: a failure in
            // between reads both again (an agent starting during a blip must not miss the
            // configuration).
            let conn = self.conn.as_mut().expect("connected");
            let (last, current): (redis::streams::StreamRangeReply, Option<u64>) = redis::pipe()
                .atomic()
                .xrevrange_count(&stream, "+", "-", 1)
                .get(&rev)
                .query_async(conn)
                .await
                .map_err(|e| map_err(&label, e))?;
            let start = last
                .ids
                .first()
                .map_or_else(|| "0-0".to_owned(), |i| i.id.clone());
            let start_v = current.unwrap_or(0);
            if self.initial {
                let mut events = Vec::new();
                let mut snapshot = HashMap::new();
                for key in self.kv.keys_under(&self.prefix).await? {
                    if let Some(v) = self.kv.get(&key).await? {
                        snapshot.insert(key.clone(), v.version);
                        events.push(WatchEvent::Put {
                            key,
                            value: v.value,
                            version: v.version,
                        });
                    }
                }
                self.snapshot = snapshot;
                self.pending.extend(events);
                self.pending.push_back(WatchEvent::Synced);
            }
            self.last_id = Some(start);
            self.last_v = Some(start_v);
            return Ok(());
        }
        let conn = self.conn.as_mut().expect("connected");
        let opts = StreamReadOptions::default().block(1000).count(500);
        let id = self.last_id.clone().unwrap_or_else(|| "0-0".into());
        let reply: Option<StreamReadReply> =
            vamp_core::rt::timeout(READ_TIMEOUT, conn.xread_options(&[&stream], &[&id], &opts))
                .await
                .ok_or_else(|| Error::Unavailable {
                    backend: label.clone(),
                    source: format!("no answer to a stream read within {READ_TIMEOUT:?}").into(),
                })?
                .map_err(|e| map_err(&label, e))?;

        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                self.last_id = Some(entry.id.clone());
                let field = |f: &str| {
                    entry
                        .map
                        .get(f)
                        .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
                };
                let (Some(k), Some(op), Some(v)) = (field("k"), field("o"), field("v")) else {
                    continue;
                };
                let (Ok(k), Ok(v)) = (
                    KeyPath::parse(&String::from_utf8_lossy(&k)),
                    String::from_utf8_lossy(&v).parse::<u64>(),
                ) else {
                    continue;
                };
                if let Some(last) = self.last_v
                    && v > last + 1
                {
                    // Changes last+1 .. v-1 were trimmed before this watch read them: say so
                    // (a watch with initial values reads them again) instead of skipping.
                    return Err(self.gap(format!(
                        "the change stream was trimmed past this watch's position (changes {} to {} are gone)",
                        last + 1,
                        v - 1
                    )));
                }
                self.last_v = Some(v);
                if !k.starts_with(&self.prefix) || self.snapshot.get(&k).is_some_and(|s| s.0 >= v) {
                    continue;
                }
                let version = Version(v);
                self.pending.push_back(if op == b"d" {
                    WatchEvent::Delete { key: k, version }
                } else {
                    WatchEvent::Put {
                        key: k,
                        value: Bytes::from(field("d").unwrap_or_default()),
                        version,
                    }
                });
            }
        }
        Ok(())
    }
}

#[async_trait]
impl KeyValueStore for RedisKv {
    async fn get(&self, key: &KeyPath) -> Result<Option<Versioned<Bytes>>, Error> {
        let mut conn = self.conn.clone();
        let (value, version): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.data_key(key))
            .arg("d")
            .arg("v")
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err(&self.label, e))?;
        Ok(match (value, version) {
            (Some(value), Some(v)) => Some(Versioned {
                value: Bytes::from(value),
                version: Version(v),
            }),
            _ => None,
        })
    }

    async fn put_opts(
        &self,
        key: &KeyPath,
        value: Bytes,
        opts: PutOptions,
    ) -> Result<Version, Error> {
        self.capabilities()
            .check_put(&self.label, key, value.len(), &opts)?;
        let (mode, expected) = match opts.mode {
            PutMode::Create => ("c", 0),
            PutMode::Update(v) => ("u", v.0),
            _ => ("o", 0),
        };
        let mut conn = self.conn.clone();
        let (status, v): (i64, String) = redis::Script::new(PUT)
            .key(self.data_key(key))
            .key(self.rev_key())
            .key(self.index_key())
            .key(self.stream_key())
            // The guard's entry (the key itself when there is none: never read then).
            .key(
                opts.guard
                    .as_ref()
                    .map_or_else(|| self.data_key(key), |(g, _)| self.data_key(g)),
            )
            .arg(key.as_str())
            .arg(value.as_ref())
            .arg(mode)
            .arg(expected.to_string())
            .arg(
                opts.guard
                    .as_ref()
                    .map_or_else(String::new, |(_, v)| v.0.to_string()),
            )
            .invoke_async(&mut conn)
            .await
            .map_err(|e| map_err(&self.label, e))?;
        match status {
            0 => Ok(Version(v.parse().unwrap_or(0))),
            -3 => {
                let (guard, expected) = opts
                    .guard
                    .as_ref()
                    .map_or_else(|| (key.to_string(), 0), |(g, v)| (g.to_string(), v.0));
                Err(Error::Conflict {
                    backend: self.label.clone(),
                    key: guard,
                    expected,
                    found: v.parse().ok(),
                })
            }
            -1 => Err(Error::AlreadyExists {
                backend: self.label.clone(),
                key: key.to_string(),
            }),
            _ => Err(Error::Conflict {
                backend: self.label.clone(),
                key: key.to_string(),
                expected,
                found: v.parse().ok(),
            }),
        }
    }

    async fn delete(&self, key: &KeyPath) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(DELETE)
            .key(self.data_key(key))
            .key(self.rev_key())
            .key(self.index_key())
            .key(self.stream_key())
            .arg(key.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| map_err(&self.label, e))?;
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
            conn: None,
            prefix: prefix.clone(),
            last_id: None,
            initial: opts.initial,
            pending: VecDeque::new(),
            snapshot: HashMap::new(),
            failures: 0,
            last_v: None,
        };
        stream::unfold(state, WatchState::next).boxed()
    }

    fn capabilities(&self) -> KvCapabilities {
        let mut caps = KvCapabilities::all();
        caps.ttl = false;
        caps.value_max_bytes = Some(512 * 1024 * 1024);
        caps
    }
}

/// Acquires or renews a lease: `KEYS[1]` the lease (`"<token> <holder>"`, expiring),
/// `KEYS[2]` its token counter; `ARGV` the holder and the ttl in ms. The token, or -1 while
/// another holds it.
const LEASE_ACQUIRE: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local sep = string.find(v, ' ', 1, true)
  if string.sub(v, sep + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(v, 1, sep - 1))
  end
  return -1
end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], t .. ' ' .. ARGV[1], 'PX', ARGV[2])
return t
";

/// Releases a lease if it holds `ARGV[1]` (`"<token> <holder>"`): 1 if it did.
const LEASE_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

impl RedisKv {
    fn lease_key(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.name)
    }
    fn lease_token_key(&self, name: &str) -> String {
        format!("{}:lease-token:{name}", self.name)
    }
}

/// Leases on Redis: `SET NX PX` in a script with a token counter that only grows (`INCR`),
/// both in Redis's time. A renewal by the holder extends the expiry and keeps the token.
#[async_trait]
impl vamp_core::lease::LeaseStore for RedisKv {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<vamp_core::lease::LeaseGrant>, Error> {
        vamp_core::lease::check(name, holder, ttl)?;
        let mut conn = self.conn.clone();
        let token: i64 = redis::Script::new(LEASE_ACQUIRE)
            .key(self.lease_key(name))
            .key(self.lease_token_key(name))
            .arg(holder)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| map_err(&self.label, e))?;
        Ok(u64::try_from(token)
            .ok()
            .map(|token| vamp_core::lease::LeaseGrant::new(name, holder, token, ttl)))
    }

    async fn observe(&self, name: &str) -> Result<Option<vamp_core::lease::LeaseHolder>, Error> {
        let mut conn = self.conn.clone();
        let v: Option<String> = conn
            .get(self.lease_key(name))
            .await
            .map_err(|e| map_err(&self.label, e))?;
        Ok(v.and_then(|v| {
            let (token, holder) = v.split_once(' ')?;
            Some(vamp_core::lease::LeaseHolder {
                holder: holder.to_owned(),
                token: token.parse().ok()?,
            })
        }))
    }

    async fn release(&self, name: &str, holder: &str, token: u64) -> Result<bool, Error> {
        let mut conn = self.conn.clone();
        let done: i64 = redis::Script::new(LEASE_RELEASE)
            .key(self.lease_key(name))
            .arg(format!("{token} {holder}"))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| map_err(&self.label, e))?;
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_doubling_up_to_five_seconds() {
        assert_eq!(reconnect_delay(0), None, "the first attempt at once");
        let delays: Vec<u128> = (1..=8)
            .map(|f| reconnect_delay(f).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(reconnect_delay(u32::MAX), Some(Duration::from_secs(5)));
    }
}
