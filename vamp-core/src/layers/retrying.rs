//! Retries temporary errors with exponential backoff.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::error::{Error, Result};
use crate::kv::*;
use crate::rt::sleep;

/// Exponential backoff.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// The first delay (default 100 ms).
    pub init_backoff: Duration,
    /// The largest delay (default 15 s).
    pub max_backoff: Duration,
    /// The growth factor (default 2).
    pub base: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        }
    }
}

/// How [`Retrying`] retries.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Retries after the first attempt (default 10).
    pub max_retries: u32,
    /// No retry starts after this long since the first attempt (default 3 minutes).
    pub retry_timeout: Duration,
    /// The delays between attempts.
    pub backoff: Backoff,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            backoff: Backoff::default(),
        }
    }
}

impl RetryConfig {
    /// Sets the number of retries.
    #[must_use]
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the deadline.
    #[must_use]
    pub fn with_retry_timeout(mut self, d: Duration) -> Self {
        self.retry_timeout = d;
        self
    }

    /// Sets the backoff.
    #[must_use]
    pub fn with_backoff(mut self, init: Duration, max: Duration, base: f64) -> Self {
        self.backoff = Backoff {
            init_backoff: init,
            max_backoff: max,
            base,
        };
        self
    }

    /// Runs `op`, retrying while it fails with a temporary error. When it gives up after a
    /// retry, the error is [`Error::RetriesExhausted`] with the last error as its source.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T>> + Send,
    {
        let start = Instant::now();
        let mut delay = self.backoff.init_backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if !e.is_temporary() => return Err(e),
                Err(e) => {
                    let out_of_time = start.elapsed() + delay > self.retry_timeout;
                    if attempts > self.max_retries || out_of_time {
                        return Err(if attempts == 1 {
                            e
                        } else {
                            Error::RetriesExhausted {
                                attempts,
                                source: Box::new(e),
                            }
                        });
                    }
                    sleep(delay).await;
                    delay = delay
                        .mul_f64(self.backoff.base)
                        .min(self.backoff.max_backoff);
                }
            }
        }
    }
}

/// A store that retries operations failing with a temporary error ([`Error::is_temporary`]).
///
/// Streams (`list`, `watch`) are passed through: a backend resumes its own watches. A retried
/// write may already have been applied by the failed attempt (a create may then report
/// `AlreadyExists`); use versions to tell.
#[derive(Debug, Clone)]
pub struct Retrying<T> {
    inner: T,
    config: RetryConfig,
}

impl<T> Retrying<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, config: RetryConfig) -> Self {
        Self { inner, config }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<T: fmt::Display> fmt::Display for Retrying<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retrying({})", self.inner)
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: KeyValueStore> KeyValueStore for Retrying<T> {
    async fn get(&self, key: &KeyPath) -> Result<Option<Versioned<Bytes>>> {
        self.config.run(|| self.inner.get(key)).await
    }

    async fn put_opts(&self, key: &KeyPath, value: Bytes, opts: PutOptions) -> Result<Version> {
        self.config
            .run(|| self.inner.put_opts(key, value.clone(), opts.clone()))
            .await
    }

    async fn delete(&self, key: &KeyPath) -> Result<()> {
        self.config.run(|| self.inner.delete(key)).await
    }

    fn list(&self, prefix: &KeyPath) -> BoxStream<'static, Result<KeyPath>> {
        self.inner.list(prefix)
    }

    fn watch(
        &self,
        prefix: &KeyPath,
        opts: WatchOptions,
    ) -> BoxStream<'static, Result<WatchEvent>> {
        self.inner.watch(prefix, opts)
    }

    fn capabilities(&self) -> KvCapabilities {
        self.inner.capabilities()
    }
}
