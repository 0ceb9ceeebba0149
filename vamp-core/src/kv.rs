//! The key-value store: the only channel between the control plane and the gateway agents.
//!
//! The control plane writes each rendered HAProxy configuration under a key
//! ([`keys::haproxy_configuration`]); every gateway agent watches that key. [`KeyValueStore`] is
//! the small, object-safe trait every backend implements; [`KeyValueStoreExt`] adds the
//! conveniences. The in-memory implementation is [`crate::memory::InMemoryKv`].

use std::fmt::{self, Debug, Display};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};

use crate::error::{Error, Result};

/// An absolute, normalised key: `/` followed by segments separated by `/`.
///
/// Segments are non-empty, are not `.` or `..`, and contain no control characters; any other
/// Unicode (spaces included) is allowed. `/` alone is the root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyPath(String);

impl KeyPath {
    /// The root `/`.
    pub fn root() -> Self {
        Self("/".to_owned())
    }

    /// Parses a key; a missing leading `/` is added, a trailing `/` removed.
    ///
    /// # Errors
    /// [`Error::Invalid`] for empty, `.` or `..` segments, or control characters.
    ///
    /// ```
    /// use vamp_core::kv::KeyPath;
    /// assert_eq!(KeyPath::parse("vamp/default/gateways").unwrap().as_str(), "/vamp/default/gateways");
    /// assert!(KeyPath::parse("/a//b").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self> {
        let trimmed = s.strip_prefix('/').unwrap_or(s);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Ok(Self::root());
        }
        let mut key = Self::root();
        for segment in trimmed.split('/') {
            key = key.child(segment)?;
        }
        Ok(key)
    }

    /// This key with one more segment.
    ///
    /// # Errors
    /// [`Error::Invalid`] when `segment` is empty, `.`, `..`, or contains `/` or a control
    /// character.
    pub fn child(&self, segment: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::Invalid {
            what: "key segment",
            value: segment.chars().take(64).collect(),
            reason: reason.to_owned(),
        };
        if segment.is_empty() {
            return Err(invalid("empty segment"));
        }
        if segment == "." || segment == ".." {
            return Err(invalid("'.' and '..' are not segments"));
        }
        if segment.contains('/') {
            return Err(invalid("contains '/'"));
        }
        if segment.chars().any(char::is_control) {
            return Err(invalid("contains a control character"));
        }
        Ok(if self.0 == "/" {
            Self(format!("/{segment}"))
        } else {
            Self(format!("{}/{segment}", self.0))
        })
    }

    /// This key followed by every segment of `other` (`/a` + `/b/c` = `/a/b/c`).
    pub fn join(&self, other: &Self) -> Self {
        match (self.is_root(), other.is_root()) {
            (_, true) => self.clone(),
            (true, false) => other.clone(),
            (false, false) => Self(format!("{}{}", self.0, other.0)),
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// Whether `self` is `prefix` or lies below it, segment-wise (`/a/b` is under `/a` but
    /// `/a/bc` is not).
    pub fn starts_with(&self, prefix: &Self) -> bool {
        prefix.is_root()
            || self.0 == prefix.0
            || (self.0.starts_with(&prefix.0)
                && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }

    /// `self` relative to `prefix` (`/a/b/c` under `/a` is `/b/c`), if it lies below it.
    pub fn strip_prefix(&self, prefix: &Self) -> Option<Self> {
        if !self.starts_with(prefix) {
            return None;
        }
        if prefix.is_root() {
            return Some(self.clone());
        }
        let rest = &self.0[prefix.0.len()..];
        Some(if rest.is_empty() {
            Self::root()
        } else {
            Self(rest.to_owned())
        })
    }
}

impl Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Debug for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPath({:?})", self.0)
    }
}

impl std::str::FromStr for KeyPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// A version of an entry: increases with every write of the key. Compare-and-swap takes the
/// version that [`KeyValueStore::get`] or a put returned. Versions of different keys are not
/// comparable unless the backend says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u64);

impl Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A value with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its version.
    pub version: Version,
}

/// How a put treats an existing entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PutMode {
    /// Write whatever is there (the default).
    #[default]
    Overwrite,
    /// Write only if the key does not exist ([`Error::AlreadyExists`] otherwise).
    Create,
    /// Write only if the key exists at this version ([`Error::Conflict`] otherwise).
    Update(Version),
}

/// Options of [`KeyValueStore::put_opts`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutOptions {
    /// Create, update or overwrite.
    pub mode: PutMode,
    /// Let the entry expire (requires capability `ttl`).
    pub ttl: Option<Duration>,
    /// Write only if this other key is at this version, in the same atomic step
    /// ([`Error::Conflict`] naming the guard key otherwise; requires capability `guard`). A
    /// leader writes under its fence key this way, so that once another leader has rewritten
    /// the fence key, the old one's writes are refused ([`crate::layers::FencedKv`]).
    pub guard: Option<(KeyPath, Version)>,
}

impl PutOptions {
    /// Overwrite, no expiry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the mode.
    #[must_use]
    pub fn with_mode(mut self, mode: PutMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets a time to live.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Writes only if `key` is at `version`.
    #[must_use]
    pub fn with_guard(mut self, key: KeyPath, version: Version) -> Self {
        self.guard = Some((key, version));
        self
    }
}

/// Options of [`KeyValueStore::watch`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchOptions {
    /// Start with the current entries (as [`WatchEvent::Put`]) followed by [`WatchEvent::Synced`].
    pub initial: bool,
}

impl WatchOptions {
    /// Only changes, no initial entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts with the current entries and a [`WatchEvent::Synced`] marker.
    #[must_use]
    pub fn with_initial(mut self, initial: bool) -> Self {
        self.initial = initial;
        self
    }
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The key was written.
    Put {
        /// The key (absolute, as the store names it).
        key: KeyPath,
        /// The new value.
        value: Bytes,
        /// The entry's new version.
        version: Version,
    },
    /// The key was deleted.
    Delete {
        /// The key.
        key: KeyPath,
        /// The version of the deletion (greater than the deleted entry's).
        version: Version,
    },
    /// The initial entries have all been delivered; every later change will be.
    Synced,
}

/// What a key-value store can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct KvCapabilities {
    /// `watch` is supported.
    pub watch: bool,
    /// `PutMode::Create` and `PutMode::Update` are atomic.
    pub cas: bool,
    /// `PutOptions::ttl` is supported.
    pub ttl: bool,
    /// `list` is supported.
    pub list: bool,
    /// `PutOptions::guard` is supported (checked atomically with the write).
    pub guard: bool,
    /// The largest value the store accepts, if limited.
    pub value_max_bytes: Option<usize>,
}

impl KvCapabilities {
    /// Checks a put against these capabilities, as every store does before writing.
    ///
    /// # Errors
    /// [`Error::NotSupported`] for a TTL without capability `ttl`; [`Error::Invalid`] for a
    /// value longer than `value_max_bytes`.
    ///
    /// ```
    /// use vamp_core::kv::{KeyPath, KvCapabilities, PutOptions};
    /// let mut caps = KvCapabilities::all();
    /// caps.value_max_bytes = Some(4);
    /// let key = KeyPath::parse("/k").unwrap();
    /// assert!(caps.check_put("store", &key, 4, &PutOptions::new()).is_ok());
    /// assert!(caps.check_put("store", &key, 5, &PutOptions::new()).is_err());
    /// ```
    pub fn check_put(
        &self,
        backend: &str,
        key: &KeyPath,
        value_len: usize,
        opts: &PutOptions,
    ) -> Result<()> {
        if opts.ttl.is_some() && !self.ttl {
            return Err(Error::NotSupported {
                backend: backend.to_owned(),
                operation: "put with ttl",
            });
        }
        if opts.guard.is_some() && !self.guard {
            return Err(Error::NotSupported {
                backend: backend.to_owned(),
                operation: "put with a guard",
            });
        }
        if let Some(max) = self.value_max_bytes
            && value_len > max
        {
            return Err(Error::Invalid {
                what: "value",
                value: format!("{value_len} bytes at {key}"),
                reason: format!("{backend} takes values of at most {max} bytes"),
            });
        }
        Ok(())
    }

    /// Everything supported, no size limit.
    pub fn all() -> Self {
        Self {
            watch: true,
            cas: true,
            ttl: true,
            list: true,
            guard: true,
            value_max_bytes: None,
        }
    }
}

/// A key-value store.
///
/// # Contract
/// * Keys are [`KeyPath`]s; a store MAY keep them under its own prefix, but keys it returns are
///   the ones the caller used.
/// * Every successful write returns the entry's new [`Version`]; `get` returns the version of
///   the last write it sees. `PutMode::Create`/`Update` MUST be atomic when `cas` is reported.
/// * `list(prefix)` yields the keys at or below `prefix` (segment-wise), sorted.
/// * `watch(prefix, …)` yields the changes of keys at or below `prefix`. For any one key,
///   events arrive in version order and none is lost or repeated while the stream lives. With
///   [`WatchOptions::initial`] the stream starts with the current entries and then
///   [`WatchEvent::Synced`]; every change that completes after `Synced` is delivered.
/// * While the server cannot be reached a watch yields [`Error::Unavailable`] items
///   (temporary) and then resumes where it was: nothing lost, nothing repeated. A failure
///   before the initial entries are all read makes it read them all again; `Synced` comes only
///   after a complete read, and no entry is delivered twice.
/// * When the store can no longer deliver every change since the last event (its history was
///   compacted or trimmed meanwhile), the watch yields one [`Error::WatchGap`] and then, if it
///   was opened with `initial`, the current entries and `Synced` again (the consumer replaces
///   its view); otherwise it goes on from the store's current position.
/// * The suite in `vamp_core::conformance::kv` (feature `conformance`) holds every store to
///   this, with faults injected through its `Faults` trait.
/// * Cloning a store handle (where implemented) shares the store.
///
/// # Errors
/// [`Error::AlreadyExists`] and [`Error::Conflict`] for failed create/update puts;
/// [`Error::NotSupported`] for an operation outside the capabilities; [`Error::Unavailable`]
/// (temporary) when the server cannot be reached; [`Error::Invalid`] for values over the limit.
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use vamp_core::kv::{KeyPath, KeyValueStore, KeyValueStoreExt};
/// use vamp_core::memory::InMemoryKv;
///
/// let kv = InMemoryKv::new();
/// let key = KeyPath::parse("/vamp/default/gateways/haproxy/1.7/configuration").unwrap();
/// let v1 = kv.put(&key, "frontend a".into()).await.unwrap();
/// let v2 = kv.compare_and_swap(&key, "frontend b".into(), v1).await.unwrap();
/// assert!(v2 > v1);
/// assert!(kv.compare_and_swap(&key, "stale".into(), v1).await.unwrap_err().is_conflict());
/// assert_eq!(kv.get_string(&key).await.unwrap().as_deref(), Some("frontend b"));
/// # }).unwrap();
/// ```
#[async_trait]
pub trait KeyValueStore: Debug + Display + Send + Sync + 'static {
    /// The value and version at `key`, if any.
    async fn get(&self, key: &KeyPath) -> Result<Option<Versioned<Bytes>>>;

    /// Writes `value` at `key`.
    async fn put_opts(&self, key: &KeyPath, value: Bytes, opts: PutOptions) -> Result<Version>;

    /// Deletes `key` (not the keys below it); deleting a missing key succeeds.
    async fn delete(&self, key: &KeyPath) -> Result<()>;

    /// The keys at or below `prefix`, sorted.
    fn list(&self, prefix: &KeyPath) -> BoxStream<'static, Result<KeyPath>>;

    /// The changes at or below `prefix`.
    fn watch(&self, prefix: &KeyPath, opts: WatchOptions)
    -> BoxStream<'static, Result<WatchEvent>>;

    /// What the store can do.
    fn capabilities(&self) -> KvCapabilities;
}

/// The store behind a trait object.
pub type DynKeyValueStore = dyn KeyValueStore;

macro_rules! forward_kv {
    ($ty:ty) => {
        #[async_trait]
        impl<T: KeyValueStore + ?Sized> KeyValueStore for $ty {
            async fn get(&self, key: &KeyPath) -> Result<Option<Versioned<Bytes>>> {
                (**self).get(key).await
            }
            async fn put_opts(
                &self,
                key: &KeyPath,
                value: Bytes,
                opts: PutOptions,
            ) -> Result<Version> {
                (**self).put_opts(key, value, opts).await
            }
            async fn delete(&self, key: &KeyPath) -> Result<()> {
                (**self).delete(key).await
            }
            fn list(&self, prefix: &KeyPath) -> BoxStream<'static, Result<KeyPath>> {
                (**self).list(prefix)
            }
            fn watch(
                &self,
                prefix: &KeyPath,
                opts: WatchOptions,
            ) -> BoxStream<'static, Result<WatchEvent>> {
                (**self).watch(prefix, opts)
            }
            fn capabilities(&self) -> KvCapabilities {
                (**self).capabilities()
            }
        }
    };
}

forward_kv!(std::sync::Arc<T>);
forward_kv!(Box<T>);

/// Conveniences over [`KeyValueStore`]; implemented for every store. MUST NOT be implemented
/// manually.
#[async_trait]
pub trait KeyValueStoreExt: KeyValueStore {
    /// Writes, whatever is there.
    async fn put(&self, key: &KeyPath, value: Bytes) -> Result<Version> {
        self.put_opts(key, value, PutOptions::new()).await
    }

    /// Writes only if `key` does not exist.
    async fn put_if_absent(&self, key: &KeyPath, value: Bytes) -> Result<Version> {
        self.put_opts(key, value, PutOptions::new().with_mode(PutMode::Create))
            .await
    }

    /// Writes only if `key` is at `version`.
    async fn compare_and_swap(
        &self,
        key: &KeyPath,
        value: Bytes,
        version: Version,
    ) -> Result<Version> {
        self.put_opts(
            key,
            value,
            PutOptions::new().with_mode(PutMode::Update(version)),
        )
        .await
    }

    /// The value as UTF-8 text.
    async fn get_string(&self, key: &KeyPath) -> Result<Option<String>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(v) => String::from_utf8(v.value.to_vec())
                .map(Some)
                .map_err(|e| Error::Invalid {
                    what: "value",
                    value: key.to_string(),
                    reason: format!("not UTF-8: {e}"),
                }),
        }
    }

    /// Every key at or below `prefix`.
    async fn list_all(&self, prefix: &KeyPath) -> Result<Vec<KeyPath>> {
        self.list(prefix).try_collect().await
    }
}

impl<T: KeyValueStore + ?Sized> KeyValueStoreExt for T {}

/// The stream of a listing that is computed at once (what most backends do for
/// [`KeyValueStore::list`]): the keys in order, or the one error.
pub fn listing_stream<F>(keys: F) -> BoxStream<'static, Result<KeyPath>>
where
    F: std::future::Future<Output = Result<Vec<KeyPath>>> + Send + 'static,
{
    futures_util::stream::once(keys)
        .flat_map(|r| match r {
            Ok(keys) => futures_util::stream::iter(keys.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => futures_util::stream::iter(vec![Err(e)]),
        })
        .boxed()
}

/// A stream that yields one error (for operations a store cannot start).
pub fn error_stream<T: Send + 'static>(e: Error) -> BoxStream<'static, Result<T>> {
    futures_util::stream::once(async move { Err(e) }).boxed()
}

/// Vamp's key layout (runtime.md §2.2), below `/vamp/<namespace>`.
pub mod keys {
    use super::KeyPath;
    use crate::error::Result;

    /// `/vamp/<namespace>`: the base path (`vamp.persistence.key-value-store.base-path`).
    pub fn base(namespace: &str) -> Result<KeyPath> {
        KeyPath::root().child("vamp")?.child(namespace)
    }

    /// `/vamp/<ns>/fence`: the current leader's fencing token in the key-value store
    /// (`{"token": …, "holder": …}`), under whose version the leader writes
    /// ([`crate::layers::FencedKv`]).
    pub fn fence(namespace: &str) -> Result<KeyPath> {
        base(namespace)?.child("fence")
    }

    /// `/vamp/<ns>/gateways`: the JSON list of gateways as last pushed.
    pub fn gateways(namespace: &str) -> Result<KeyPath> {
        base(namespace)?.child("gateways")
    }

    /// `/vamp/<ns>/gateways/haproxy/<name>/configuration`: the rendered HAProxy configuration
    /// that gateway agents apply (`<name>` is the marshaller name, e.g. `1.7`).
    pub fn haproxy_configuration(namespace: &str, name: &str) -> Result<KeyPath> {
        gateways(namespace)?
            .child("haproxy")?
            .child(name)?
            .child("configuration")
    }

    /// `/vamp/<ns>/gateways/haproxy/<name>/template`: a template override.
    pub fn haproxy_template(namespace: &str, name: &str) -> Result<KeyPath> {
        gateways(namespace)?
            .child("haproxy")?
            .child(name)?
            .child("template")
    }

    /// `/vamp/<ns>/workflows/<workflow>`: a workflow's script.
    pub fn workflow(namespace: &str, workflow: &str) -> Result<KeyPath> {
        base(namespace)?.child("workflows")?.child(workflow)
    }

    /// `/vamp/<ns>/configuration/applied`: the dynamic configuration.
    pub fn configuration_applied(namespace: &str) -> Result<KeyPath> {
        base(namespace)?.child("configuration")?.child("applied")
    }

    /// Vamp's etcd quirk: values lived one level deeper, under a `value` child
    /// (`…/configuration/value`). Use this key to interoperate with Vamp's etcd layout.
    pub fn etcd_value(key: &KeyPath) -> Result<KeyPath> {
        key.child("value")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn layout() {
            assert_eq!(
                haproxy_configuration("default", "1.7").unwrap().as_str(),
                "/vamp/default/gateways/haproxy/1.7/configuration"
            );
            assert_eq!(
                etcd_value(&haproxy_configuration("default", "1.7").unwrap())
                    .unwrap()
                    .as_str(),
                "/vamp/default/gateways/haproxy/1.7/configuration/value"
            );
            assert_eq!(
                workflow("vamp", "health").unwrap().as_str(),
                "/vamp/vamp/workflows/health"
            );
            assert_eq!(
                configuration_applied("default").unwrap().as_str(),
                "/vamp/default/configuration/applied"
            );
            assert!(haproxy_configuration("a/b", "1.7").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths() {
        let k = KeyPath::parse("/a/b c/ü").unwrap();
        assert_eq!(k.segments().collect::<Vec<_>>(), ["a", "b c", "ü"]);
        assert!(k.starts_with(&KeyPath::parse("/a").unwrap()));
        assert!(
            !KeyPath::parse("/ab")
                .unwrap()
                .starts_with(&KeyPath::parse("/a").unwrap())
        );
        assert!(k.starts_with(&KeyPath::root()));
        assert_eq!(
            k.strip_prefix(&KeyPath::parse("/a").unwrap())
                .unwrap()
                .as_str(),
            "/b c/ü"
        );
        assert_eq!(
            KeyPath::parse("/x").unwrap().join(&k).as_str(),
            "/x/a/b c/ü"
        );
        for bad in ["/a//b", "/a/./b", "/../x", "/a\n"] {
            assert!(KeyPath::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(KeyPath::parse("").unwrap(), KeyPath::root());
    }
}
