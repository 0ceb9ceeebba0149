//! Events shared between replicas through the key-value store they share.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::dsl::{AnyArtifact, read_node, to_node};
use crate::error::Result;
use crate::kv::{DynKeyValueStore, KeyPath, KeyValueStoreExt, WatchEvent, WatchOptions};
use crate::metrics::*;
use crate::model::{ArtifactKind, Event, EventQuery};
use crate::node::Node;
use crate::persistence::ListOptions;

/// How many keys the relay uses (a ring all replicas write to; delivery is by the watch, so
/// an overwritten slot loses nothing already seen).
pub const RELAY_SLOTS: u64 = 1024;
/// The largest event relayed (bytes of JSON); a larger one stays on its replica.
pub const MAX_RELAYED_BYTES: usize = 64 << 10;

/// An [`EventStore`] whose events reach every replica: each event published here is stored
/// in the local store and written to a ring of keys below `prefix` in the key-value store the
/// replicas share; [`SharedEvents::relay`] (run on every replica) watches that ring and hands
/// the other replicas' events to this one: stored in the local store when each replica has
/// its own (in memory), or only to this replica's subscribers when the store is shared
/// (Elasticsearch), so that event streams and event-scheduled workflows see every event.
///
/// Delivery is as reliable as the key-value store's watch: events written while a replica's
/// watch is down for longer than the store keeps its history are not relayed to it.
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use std::sync::Arc;
/// use futures_util::StreamExt;
/// use vamp_core::kv::KeyPath;
/// use vamp_core::layers::SharedEvents;
/// use vamp_core::memory::{InMemoryKv, InMemoryMetrics};
/// use vamp_core::metrics::EventStore;
/// use vamp_core::model::Event;
/// use vamp_core::node::Node;
///
/// let kv = Arc::new(InMemoryKv::new());
/// let prefix = KeyPath::parse("/vamp/default/events-relay").unwrap();
/// let replica = |id: &str| Arc::new(SharedEvents::new(Arc::new(InMemoryMetrics::new()), kv.clone(), prefix.clone(), id, true));
/// let (a, b) = (replica("a"), replica("b"));
/// let relay = b.relay();
/// let mut stream = b.subscribe(vec!["deploys".into()], None);
/// a.publish(Event::new(vec!["deploys".into()], Node::Str("sava".into()), "event")).await.unwrap();
/// // Run B's relay until the event arrives on its stream.
/// let got = futures_util::future::select(Box::pin(relay), stream.next()).await;
/// let futures_util::future::Either::Right((Some(Ok(e)), _)) = got else { panic!() };
/// assert_eq!(e.value, Node::Str("sava".into()));
/// # }).unwrap();
/// ```
pub struct SharedEvents {
    local: Arc<DynEventStore>,
    kv: Arc<DynKeyValueStore>,
    prefix: KeyPath,
    replica: String,
    store_relayed: bool,
    relayed: EventSubscribers,
    /// The next slot of the ring this replica writes (each replica starts where its id
    /// hashes to).
    seq: AtomicU64,
    failed: AtomicU64,
}

impl fmt::Debug for SharedEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedEvents")
            .field("local", &self.local.to_string())
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SharedEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.local.fmt(f)
    }
}

impl SharedEvents {
    /// Events of `local`, shared through `kv` below `prefix` as replica `replica`;
    /// `store_relayed`: whether other replicas' events are stored in `local` (each replica
    /// has its own store) or only handed to subscribers (the store is shared).
    pub fn new(
        local: Arc<DynEventStore>,
        kv: Arc<DynKeyValueStore>,
        prefix: KeyPath,
        replica: impl Into<String>,
        store_relayed: bool,
    ) -> Self {
        let replica = replica.into();
        let start = replica
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Self {
            local,
            kv,
            prefix,
            replica,
            store_relayed,
            relayed: EventSubscribers::default(),
            seq: AtomicU64::new(start),
            failed: AtomicU64::new(0),
        }
    }

    /// Events that could not be written to the key-value store (they stayed on this replica).
    pub fn relay_failures(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Hands the other replicas' events to this one until the watch ends; run it (again)
    /// for as long as the replica runs. The watch starts when this is called, before the
    /// future is first polled.
    pub fn relay(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        let watch = self.kv.watch(&self.prefix, WatchOptions::new());
        self.deliver(watch)
    }

    async fn deliver(&self, mut watch: BoxStream<'static, Result<WatchEvent>>) {
        while let Some(item) = watch.next().await {
            let Ok(WatchEvent::Put { value, .. }) = item else {
                // Deletions, the sync marker and temporary errors (the watch recovers).
                continue;
            };
            let Some(event) = self.decode(&value) else {
                continue;
            };
            if self.store_relayed {
                let _ = self.local.publish(event).await;
            } else {
                self.relayed.notify(&event);
            }
        }
    }

    /// Another replica's event from a relayed value; `None` for this replica's own, or for a
    /// value that is not one (too large, malformed).
    fn decode(&self, value: &[u8]) -> Option<Event> {
        if value.len() > MAX_RELAYED_BYTES {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(value).ok()?;
        if v.get("from")?.as_str()? == self.replica {
            return None;
        }
        match read_node(Node::from_json(v.get("event")?), Some(ArtifactKind::Event)).ok()? {
            AnyArtifact::Event(e) => Some(e),
            _ => None,
        }
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl EventStore for SharedEvents {
    async fn publish(&self, event: Event) -> Result<Event> {
        let stored = self.local.publish(event).await?;
        let body = serde_json::json!({
            "from": self.replica,
            "event": to_node(&AnyArtifact::Event(stored.clone())).to_json(),
        })
        .to_string();
        if body.len() <= MAX_RELAYED_BYTES {
            // One ring for all replicas.
            let slot = self.seq.fetch_add(1, Ordering::Relaxed) % RELAY_SLOTS;
            let key = self.prefix.join(&KeyPath::parse(&format!("/{slot}"))?);
            if self.kv.put(&key, body.into()).await.is_err() {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(stored)
    }

    async fn query(&self, query: &EventQuery, page: ListOptions) -> Result<Vec<Event>> {
        self.local.query(query, page).await
    }

    async fn aggregate(
        &self,
        query: &EventQuery,
        aggregation: Aggregation,
        field: &str,
    ) -> Result<AggregationResult> {
        self.local.aggregate(query, aggregation, field).await
    }

    fn subscribe(
        &self,
        tags: Vec<String>,
        event_type: Option<String>,
    ) -> BoxStream<'static, Result<Event>> {
        let local = self.local.subscribe(tags.clone(), event_type.clone());
        if self.store_relayed {
            local
        } else {
            futures_util::stream::select(local, self.relayed.subscribe(tags, event_type)).boxed()
        }
    }

    fn capabilities(&self) -> EventCapabilities {
        self.local.capabilities()
    }

    fn subscribers(&self) -> usize {
        self.local.subscribers()
    }
}
