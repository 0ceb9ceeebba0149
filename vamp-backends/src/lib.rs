//! # vamp-backends
//!
//! Real backends for `vamp-core`'s traits, each behind its own cargo feature, and the
//! selection code that builds any backend from a typed config or a URL:
//!
//! | concern | config | URL forms |
//! | --- | --- | --- |
//! | key-value store | [`kv::KvBackendConfig`] | `memory://`, `etcd://host:2379/prefix`, `consul://host:8500/prefix`, `zk://host:2181/prefix`, `redis://host:6379/0` |
//! | persistence | [`persistence::PersistenceBackendConfig`] | `memory://`, `postgres://…`, `mysql://…`, `sqlite://path`, `mssql://…` |
//! | scheduler | [`scheduler::SchedulerBackendConfig`] | `memory://`, `local://`, `docker://`, `kubernetes://`, `marathon://host:8080` |
//! | events and metrics | [`metrics::MetricsBackendConfig`] | `memory://`, `elasticsearch://host:9200` |
//!
//! Every URL form always parses, whatever the features; building a backend whose feature is
//! off returns [`vamp_core::Error::FeatureDisabled`] naming the feature to enable. The
//! in-memory backends are always available.
//!
//! ```
//! # futures_util::FutureExt::now_or_never(async {
//! use vamp_backends::kv::KvBackendConfig;
//! use vamp_core::kv::{KeyPath, KeyValueStoreExt};
//!
//! let kv = KvBackendConfig::from_url("memory:///vamp/default").unwrap().build().await.unwrap();
//! kv.put(&KeyPath::parse("/gateways").unwrap(), "[]".into()).await.unwrap();
//!
//! // Without its feature, a backend says which feature to enable.
//! if cfg!(not(feature = "kv-etcd")) {
//!     let err = KvBackendConfig::from_url("etcd://127.0.0.1:2379/vamp").unwrap().build().await.unwrap_err();
//!     assert_eq!(err.to_string(), "backend 'etcd' requires cargo feature 'kv-etcd' of vamp-backends");
//! }
//! # }).unwrap();
//! ```

pub mod kv;
pub mod metrics;
pub mod persistence;
pub mod scheduler;
pub mod url;

use std::fmt;

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

fn invalid(backend: &str, message: impl Into<String>) -> vamp_core::Error {
    vamp_core::Error::InvalidConfig {
        backend: backend.to_owned(),
        message: message.into(),
    }
}
