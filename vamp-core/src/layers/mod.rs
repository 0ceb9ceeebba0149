//! Wrappers that implement the same trait as what they wrap.
//!
//! * [`Namespaced`]: keeps every key under a prefix (object_store's `PrefixStore`).
//! * [`Retrying`]: retries temporary errors with exponential backoff and a deadline.

mod namespaced;
mod retrying;

pub use namespaced::Namespaced;
pub use retrying::{Backoff, RetryConfig, Retrying};
