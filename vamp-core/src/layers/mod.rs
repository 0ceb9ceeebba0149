//! Wrappers that implement the same trait as what they wrap.
//!
//! * [`Namespaced`]: keeps every key under a prefix (object_store's `PrefixStore`).
//! * [`Retrying`]: retries temporary errors with exponential backoff and a deadline.
//! * [`Policed`]: refuses to deploy what the operator's [`Policy`](crate::policy::Policy) refuses.
//! * [`Fenced`]: a leader's persistence writes, refused once another replica took over.
//! * [`FencedKv`]: the same for a leader's key-value writes (the gateway driver's).
//! * [`Owned`]: acts only on the scheduler services its control plane created.
//! * [`SharedEvents`]: events that reach every replica, through the key-value store.
//! * [`Staged`]: keeps writes aside and commits them to a persistence store as one batch.

mod fenced;
mod namespaced;
mod owned;
mod policed;
mod retrying;
mod shared_events;
mod staged;

pub use fenced::{FENCE_RECORD, Fence, Fenced, FencedKv};
pub use namespaced::Namespaced;
pub use owned::{Owned, owner_of};
pub use policed::Policed;
pub use retrying::{Backoff, RetryConfig, Retrying};
pub use shared_events::{MAX_RELAYED_BYTES, RELAY_SLOTS, SharedEvents};
pub use staged::Staged;
