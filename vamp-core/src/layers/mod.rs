//! Wrappers that implement the same trait as what they wrap.
//!
//! * [`Namespaced`]: keeps every key under a prefix (object_store's `PrefixStore`).
//! * [`Retrying`]: retries temporary errors with exponential backoff and a deadline.
//! * [`Policed`]: refuses to deploy what the operator's [`Policy`](crate::policy::Policy) refuses.
//! * [`Staged`]: keeps writes aside and commits them to a persistence store as one batch.

mod namespaced;
mod policed;
mod retrying;
mod staged;

pub use namespaced::Namespaced;
pub use policed::Policed;
pub use retrying::{Backoff, RetryConfig, Retrying};
pub use staged::Staged;
