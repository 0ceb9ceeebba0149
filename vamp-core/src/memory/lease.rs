//! Leases in memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::error::Result;
use crate::lease::{LeaseGrant, LeaseHolder, LeaseStore, check};
use crate::ops::controller::{Clock, SystemClock};

#[derive(Debug)]
struct Held {
    holder: String,
    token: u64,
    /// Milliseconds since the Unix epoch (the store's clock); `i64::MIN` once released.
    expires_ms: i64,
}

/// Leases in one process (the replicas of a test, or a single server that needs no
/// election). Cloning shares the leases. A lease's first token is the clock's time in
/// milliseconds, so that a later process's tokens exceed an earlier one's (a fence record in
/// persistent storage outlives the process). Time is the given [`Clock`] (the system clock by
/// default), so a test can expire a lease without waiting.
#[derive(Clone)]
pub struct InMemoryLeases {
    leases: Arc<Mutex<HashMap<String, Held>>>,
    clock: Arc<dyn Clock>,
}

impl Default for InMemoryLeases {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for InMemoryLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryLeases").finish_non_exhaustive()
    }
}

impl fmt::Display for InMemoryLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("memory")
    }
}

impl InMemoryLeases {
    /// Empty, on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// Empty, on `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            leases: Arc::default(),
            clock,
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl LeaseStore for InMemoryLeases {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseGrant>> {
        check(name, holder, ttl)?;
        let now = self.clock.now_millis();
        let expires_ms = now.saturating_add(millis(ttl));
        let mut leases = self.leases.lock();
        let token = match leases.get_mut(name) {
            Some(h) if h.expires_ms > now && h.holder != holder => return Ok(None),
            Some(h) if h.expires_ms > now => {
                h.expires_ms = expires_ms;
                h.token
            }
            Some(h) => {
                h.token = h.token.saturating_add(1);
                h.holder = holder.to_owned();
                h.expires_ms = expires_ms;
                h.token
            }
            None => {
                // The first token is the clock's time: a process started later (on the same
                // fence record in a persistent store) starts above every token of an earlier
                // one, whose tokens grew by one per acquisition.
                let token = u64::try_from(now).unwrap_or(0).max(1);
                leases.insert(
                    name.to_owned(),
                    Held {
                        holder: holder.to_owned(),
                        token,
                        expires_ms,
                    },
                );
                token
            }
        };
        Ok(Some(LeaseGrant::new(name, holder, token, ttl)))
    }

    async fn observe(&self, name: &str) -> Result<Option<LeaseHolder>> {
        let now = self.clock.now_millis();
        Ok(self
            .leases
            .lock()
            .get(name)
            .filter(|h| h.expires_ms > now)
            .map(|h| LeaseHolder {
                holder: h.holder.clone(),
                token: h.token,
            }))
    }

    async fn release(&self, name: &str, holder: &str, token: u64) -> Result<bool> {
        let now = self.clock.now_millis();
        let mut leases = self.leases.lock();
        match leases.get_mut(name) {
            Some(h) if h.holder == holder && h.token == token && h.expires_ms > now => {
                h.expires_ms = i64::MIN;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::lease as suite;
    use crate::ops::controller::ManualClock;

    #[tokio::test]
    async fn conformance() {
        suite::run_all(&InMemoryLeases::new(), "memory").await;
    }

    /// On an injected clock a lease expires exactly at its ttl, without waiting.
    #[tokio::test]
    async fn a_lease_expires_at_its_ttl_on_the_store_clock() {
        let clock = ManualClock::new(1_000_000);
        let leases = InMemoryLeases::with_clock(Arc::new(clock.clone()));
        let ttl = Duration::from_secs(10);
        let a = leases.try_acquire("l", "a", ttl).await.unwrap().unwrap();
        clock.advance(Duration::from_millis(9_999));
        assert!(leases.try_acquire("l", "b", ttl).await.unwrap().is_none());
        clock.advance(Duration::from_millis(1));
        let b = leases.try_acquire("l", "b", ttl).await.unwrap().unwrap();
        assert_eq!(b.token, a.token + 1);
    }
}
