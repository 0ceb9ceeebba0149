//! Keeps every key of a store under a prefix.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::error::{Error, Result};
use crate::kv::*;

/// A [`KeyValueStore`] whose keys live under `prefix` in the inner store; callers see keys
/// relative to the prefix.
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use vamp_core::kv::{KeyPath, KeyValueStore, KeyValueStoreExt};
/// use vamp_core::layers::Namespaced;
/// use vamp_core::memory::InMemoryKv;
///
/// let inner = InMemoryKv::new();
/// let ns = Namespaced::new(inner.clone(), KeyPath::parse("/vamp/default").unwrap());
/// ns.put(&KeyPath::parse("/gateways").unwrap(), "[]".into()).await.unwrap();
/// assert!(inner.get(&KeyPath::parse("/vamp/default/gateways").unwrap()).await.unwrap().is_some());
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Namespaced<T> {
    inner: T,
    prefix: KeyPath,
}

impl<T> Namespaced<T> {
    /// Wraps `inner`, keeping keys under `prefix`.
    pub fn new(inner: T, prefix: KeyPath) -> Self {
        Self { inner, prefix }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The prefix.
    pub fn prefix(&self) -> &KeyPath {
        &self.prefix
    }
}

impl<T: fmt::Display> fmt::Display for Namespaced<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.inner, self.prefix)
    }
}

fn outside(prefix: &KeyPath, key: &KeyPath) -> Error {
    Error::Invalid {
        what: "key",
        value: key.to_string(),
        reason: format!("outside the namespace {prefix}"),
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: KeyValueStore> KeyValueStore for Namespaced<T> {
    async fn get(&self, key: &KeyPath) -> Result<Option<Versioned<Bytes>>> {
        self.inner.get(&self.prefix.join(key)).await
    }

    async fn put_opts(&self, key: &KeyPath, value: Bytes, mut opts: PutOptions) -> Result<Version> {
        if let Some((guard, _)) = &mut opts.guard {
            *guard = self.prefix.join(guard);
        }
        self.inner
            .put_opts(&self.prefix.join(key), value, opts)
            .await
    }

    async fn delete(&self, key: &KeyPath) -> Result<()> {
        self.inner.delete(&self.prefix.join(key)).await
    }

    fn list(&self, prefix: &KeyPath) -> BoxStream<'static, Result<KeyPath>> {
        let ns = self.prefix.clone();
        self.inner
            .list(&self.prefix.join(prefix))
            .map(move |r| r.and_then(|k| k.strip_prefix(&ns).ok_or_else(|| outside(&ns, &k))))
            .boxed()
    }

    fn watch(
        &self,
        prefix: &KeyPath,
        opts: WatchOptions,
    ) -> BoxStream<'static, Result<WatchEvent>> {
        let ns = self.prefix.clone();
        self.inner
            .watch(&self.prefix.join(prefix), opts)
            .map(move |r| {
                r.and_then(|e| match e {
                    WatchEvent::Put {
                        key,
                        value,
                        version,
                    } => {
                        let key = key.strip_prefix(&ns).ok_or_else(|| outside(&ns, &key))?;
                        Ok(WatchEvent::Put {
                            key,
                            value,
                            version,
                        })
                    }
                    WatchEvent::Delete { key, version } => {
                        let key = key.strip_prefix(&ns).ok_or_else(|| outside(&ns, &key))?;
                        Ok(WatchEvent::Delete { key, version })
                    }
                    other => Ok(other),
                })
            })
            .boxed()
    }

    fn capabilities(&self) -> KvCapabilities {
        self.inner.capabilities()
    }
}
