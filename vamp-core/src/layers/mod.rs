//! Wrappers that implement the same trait as what they wrap.
//!
//! * [`Namespaced`]: keeps every key under a prefix (object_store's `PrefixStore`).
//! * [`Retrying`]: retries temporary errors with exponential backoff and a deadline.
//! * [`Policed`]: refuses to deploy what the operator's [`Policy`](crate::policy::Policy) refuses.

mod namespaced;
mod policed;
mod retrying;

pub use namespaced::Namespaced;
pub use policed::Policed;
pub use retrying::{Backoff, RetryConfig, Retrying};
