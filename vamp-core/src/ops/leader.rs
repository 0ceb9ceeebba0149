//! Leader election among the replicas of a control plane.
//!
//! Every replica serves the API; one, the leader, runs the loops (reconcile, gateways,
//! canaries, SLAs, workflows, pulse). Each replica's [`Elector`] tries to acquire or renew one
//! lease of a [`crate::lease::LeaseStore`] every few seconds (a quarter of its ttl). The one that holds it
//! writes its fencing token to the fence record ([`Fence::take`]) and counts itself leader
//! until three quarters of the ttl after its last successful renewal began, measured on its
//! own monotonic clock: it stops acting before the lease can pass to another replica. Its loops
//! write through [`crate::layers::Fenced`], so a leader that was paused or cut off past that
//! point cannot write once another took over.
//!
//! ```
//! # futures_util::FutureExt::now_or_never(async {
//! use std::sync::Arc;
//! use vamp_core::memory::{InMemoryLeases, InMemoryPersistence};
//! use vamp_core::ops::leader::{ElectionOptions, Elector};
//!
//! let (leases, store) = (Arc::new(InMemoryLeases::new()), Arc::new(InMemoryPersistence::new()));
//! let a = Elector::new(leases.clone(), store.clone(), ElectionOptions::new("vamp", "replica-a"));
//! let b = Elector::new(leases, store, ElectionOptions::new("vamp", "replica-b"));
//! assert!(a.tick().await.unwrap().leader);
//! let seen = b.tick().await.unwrap();
//! assert!(!seen.leader && b.fence().held().is_none());
//! assert_eq!(seen.leader_id.as_deref(), Some("replica-a"));
//! # }).unwrap();
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::Result;
use crate::layers::Fence;
use crate::lease::DynLeaseStore;
use crate::persistence::DynPersistenceStore;

/// How a replica takes part in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElectionOptions {
    /// The lease's name (one per control plane, e.g. `vamp-<namespace>`).
    pub lease: String,
    /// This replica's id (unique among the replicas).
    pub holder: String,
    /// The lease's time to live (default 15 s): a dead leader is replaced within it.
    pub ttl: Duration,
}

impl ElectionOptions {
    /// Options with the default ttl.
    pub fn new(lease: impl Into<String>, holder: impl Into<String>) -> Self {
        Self {
            lease: lease.into(),
            holder: holder.into(),
            ttl: Duration::from_secs(15),
        }
    }

    /// Sets the ttl.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often to renew: a quarter of the ttl.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 4
    }
}

/// What a replica knows of the election.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leadership {
    /// Whether this replica is the leader now.
    pub leader: bool,
    /// Its fencing token while it is.
    pub token: Option<u64>,
    /// The leader as last seen (`None`: no leader).
    pub leader_id: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// Until when this replica may act as the leader.
    valid_until: Option<Instant>,
    token: Option<u64>,
    leader_id: Option<String>,
    changes: u64,
}

/// One replica's part in the election (see the module).
#[derive(Debug)]
pub struct Elector {
    leases: Arc<DynLeaseStore>,
    persistence: Arc<DynPersistenceStore>,
    fence: Arc<Fence>,
    options: ElectionOptions,
    state: Mutex<State>,
}

impl Elector {
    /// An elector on `leases`, fencing in `persistence`.
    pub fn new(
        leases: Arc<DynLeaseStore>,
        persistence: Arc<DynPersistenceStore>,
        options: ElectionOptions,
    ) -> Self {
        Self {
            leases,
            persistence,
            fence: Arc::new(Fence::new()),
            options,
            state: Mutex::default(),
        }
    }

    /// The options.
    pub fn options(&self) -> &ElectionOptions {
        &self.options
    }

    /// The fence this replica's leader writes go through ([`crate::layers::Fenced`]).
    pub fn fence(&self) -> Arc<Fence> {
        Arc::clone(&self.fence)
    }

    /// Whether this replica may act as the leader now.
    pub fn is_leader(&self) -> bool {
        let s = self.state.lock();
        s.valid_until.is_some_and(|t| Instant::now() < t) && self.fence.held().is_some()
    }

    /// How many times leadership came to or left this replica.
    pub fn changes(&self) -> u64 {
        self.state.lock().changes
    }

    /// What this replica knows now.
    pub fn leadership(&self) -> Leadership {
        let leader = self.is_leader();
        let s = self.state.lock();
        Leadership {
            leader,
            token: s.token.filter(|_| leader),
            leader_id: if leader {
                Some(self.options.holder.clone())
            } else {
                s.leader_id.clone()
            },
        }
    }

    fn step_down(&self, leader_id: Option<String>) {
        self.fence.clear();
        let mut s = self.state.lock();
        if s.valid_until.take().is_some() {
            s.changes += 1;
        }
        s.token = None;
        s.leader_id = leader_id;
    }

    /// One round: acquire or renew the lease; on acquiring it, take the fence. Call every
    /// [`ElectionOptions::renew_every`].
    ///
    /// # Errors
    /// The lease store's or persistence's errors; leadership then lasts only until its
    /// validity runs out.
    pub async fn tick(&self) -> Result<Leadership> {
        let started = Instant::now();
        let o = &self.options;
        match self.leases.try_acquire(&o.lease, &o.holder, o.ttl).await {
            Ok(Some(grant)) => {
                if let Err(e) = self
                    .fence
                    .take(&*self.persistence, grant.token, &o.holder)
                    .await
                {
                    let never_held = self.state.lock().token != Some(grant.token);
                    self.step_down(None);
                    if never_held && matches!(e, crate::Error::Fenced { .. }) {
                        // A lease of this holder that this process never held: left by an
                        // earlier process of the same replica id (restarted before the lease
                        // expired) and renewed with its token, which the fence already names.
                        // Given up, so that the next round acquires it anew with a greater
                        // token instead of renewing a leadership that can never write.
                        let _ = self.leases.release(&o.lease, &o.holder, grant.token).await;
                    }
                    return Err(e);
                }
                let mut s = self.state.lock();
                if s.valid_until.is_none() {
                    s.changes += 1;
                }
                s.valid_until = Some(started + o.ttl * 3 / 4);
                s.token = Some(grant.token);
                s.leader_id = Some(o.holder.clone());
            }
            Ok(None) => {
                let holder = self.leases.observe(&o.lease).await.ok().flatten();
                self.step_down(holder.map(|h| h.holder));
            }
            Err(e) => {
                if !self.is_leader() {
                    self.step_down(None);
                }
                return Err(e);
            }
        }
        Ok(self.leadership())
    }

    /// Gives the lease up (on shutdown), so another replica takes over at once.
    ///
    /// # Errors
    /// The lease store's errors.
    pub async fn resign(&self) -> Result<()> {
        let token = self.state.lock().token;
        self.step_down(None);
        if let Some(token) = token {
            self.leases
                .release(&self.options.lease, &self.options.holder, token)
                .await?;
        }
        Ok(())
    }
}
