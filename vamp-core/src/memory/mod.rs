//! In-memory implementations of every backend trait: the embedded defaults, always compiled,
//! correct under concurrent use, with change streams.

mod kv;
mod lease;
mod metrics;
mod persistence;
mod scheduler;

pub use crate::metrics::SUBSCRIBER_BUFFER;
pub use kv::{InMemoryKv, WATCH_BUFFER};
pub use lease::InMemoryLeases;
pub use metrics::{
    DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_EVENTS, DEFAULT_MAX_RECORDS, InMemoryMetrics, event_bytes,
};
pub use persistence::{InMemoryPersistence, MAX_HISTORY, MAX_LOG, MAX_REMOVED_HISTORIES};
pub use scheduler::{InMemoryScheduler, MAX_INSTANCES};
