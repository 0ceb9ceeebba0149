//! Leases: how replicas of a control plane elect the one that runs the loops.
//!
//! A [`LeaseStore`] keeps named leases, each held by at most one holder at a time until it
//! expires. Every acquisition gives a **fencing token** greater than every token given before
//! for that lease (on any replica); a renewal keeps it. A leader writes with its token
//! ([`crate::layers::Fenced`]), so a leader that lost its lease (paused, partitioned) cannot
//! write after another took over. Implementations: in memory ([`crate::memory::InMemoryLeases`])
//! and, in `vamp-backends`, etcd, Redis and the SQL databases; the conformance suite is
//! [`crate::conformance::lease`].
//!
//! ```
//! # futures_util::FutureExt::now_or_never(async {
//! use std::time::Duration;
//! use vamp_core::lease::LeaseStore;
//! use vamp_core::memory::InMemoryLeases;
//!
//! let leases = InMemoryLeases::new();
//! let ttl = Duration::from_secs(10);
//! let a = leases.try_acquire("leader", "replica-a", ttl).await.unwrap().expect("free");
//! assert!(leases.try_acquire("leader", "replica-b", ttl).await.unwrap().is_none());
//! // A renewal keeps the token; after a release another holder gets a greater one.
//! assert_eq!(leases.try_acquire("leader", "replica-a", ttl).await.unwrap().unwrap().token, a.token);
//! assert!(leases.release("leader", "replica-a", a.token).await.unwrap());
//! let b = leases.try_acquire("leader", "replica-b", ttl).await.unwrap().unwrap();
//! assert!(b.token > a.token);
//! assert_eq!(leases.observe("leader").await.unwrap().unwrap().holder, "replica-b");
//! # }).unwrap();
//! ```

use std::fmt::{Debug, Display};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};

/// A lease held: by whom, with which fencing token, for how long from the acquisition or
/// renewal that returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease's name.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// The fencing token: greater than every token given for this lease before.
    pub token: u64,
    /// How long it is held without a renewal.
    pub ttl: Duration,
}

impl LeaseGrant {
    /// `holder`'s grant of lease `name` with `token`, for `ttl`.
    pub fn new(name: &str, holder: &str, token: u64, ttl: Duration) -> Self {
        Self {
            name: name.to_owned(),
            holder: holder.to_owned(),
            token,
            ttl,
        }
    }
}

/// Who holds a lease now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The holder.
    pub holder: String,
    /// Its fencing token.
    pub token: u64,
}

/// Whether `s` can name a lease or a holder: 1 to 128 ASCII letters, digits, `.`, `_` or `-`,
/// and not `.` or `..` (a path component in some stores).
pub fn is_valid_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a lease name, holder and time to live: [`Error::Invalid`] naming what is wrong.
///
/// # Errors
/// A name or holder that [`is_valid_name`] refuses; a ttl under 100 ms or over one day.
pub fn check(name: &str, holder: &str, ttl: Duration) -> Result<()> {
    for (what, v) in [("lease name", name), ("lease holder", holder)] {
        if !is_valid_name(v) {
            return Err(Error::Invalid {
                what,
                value: v.chars().take(80).collect(),
                reason: "must be 1 to 128 ASCII letters, digits, '.', '_' or '-'".into(),
            });
        }
    }
    if ttl < Duration::from_millis(100) || ttl > Duration::from_secs(86_400) {
        return Err(Error::Invalid {
            what: "lease ttl",
            value: format!("{ttl:?}"),
            reason: "must be between 100 ms and one day".into(),
        });
    }
    Ok(())
}

/// Named leases with fencing tokens.
///
/// # Contract
/// * `try_acquire(name, holder, ttl)` returns `Some` when `holder` holds the lease after the
///   call: it was free or expired (a new token, greater than every earlier one of `name`), or
///   `holder` held it already (renewed for `ttl` from now, the same token). It returns `None`
///   while another holder's lease has not expired.
/// * A lease not renewed within its ttl expires: another holder can then acquire it.
/// * `observe` returns the holder of an unexpired lease; `release` frees the lease if
///   `holder` holds it with `token`, and returns whether it did.
/// * Time is the store's own (the server's clock where there is one), never the caller's.
#[async_trait]
pub trait LeaseStore: Debug + Display + Send + Sync + 'static {
    /// Acquires or renews `name` for `holder`.
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseGrant>>;

    /// The current holder of `name`, if held.
    async fn observe(&self, name: &str) -> Result<Option<LeaseHolder>>;

    /// Frees `name` if `holder` holds it with `token`.
    async fn release(&self, name: &str, holder: &str, token: u64) -> Result<bool>;
}

/// The lease store behind a trait object.
pub type DynLeaseStore = dyn LeaseStore;

macro_rules! forward_leases {
    ($ty:ty) => {
        #[async_trait]
        impl<T: LeaseStore + ?Sized> LeaseStore for $ty {
            async fn try_acquire(
                &self,
                name: &str,
                holder: &str,
                ttl: Duration,
            ) -> Result<Option<LeaseGrant>> {
                (**self).try_acquire(name, holder, ttl).await
            }
            async fn observe(&self, name: &str) -> Result<Option<LeaseHolder>> {
                (**self).observe(name).await
            }
            async fn release(&self, name: &str, holder: &str, token: u64) -> Result<bool> {
                (**self).release(name, holder, token).await
            }
        }
    };
}

forward_leases!(std::sync::Arc<T>);
forward_leases!(Box<T>);
