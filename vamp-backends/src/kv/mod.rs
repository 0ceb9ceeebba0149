//! Key-value store selection, and the key-value backends.

#[cfg(any(feature = "kv-zookeeper", feature = "kv-consul"))]
mod change_log;
#[cfg(feature = "kv-consul")]
pub mod consul;
#[cfg(feature = "kv-etcd")]
pub mod etcd;
#[cfg(feature = "kv-redis")]
pub mod redis;
#[cfg(feature = "kv-zookeeper")]
pub mod zookeeper;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vamp_core::Error;
use vamp_core::kv::{DynKeyValueStore, KeyPath};
use vamp_core::layers::Namespaced;
use vamp_core::memory::InMemoryKv;

use crate::url::BackendUrl;
use crate::{Secret, invalid};

/// etcd (v3 API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdKvConfig {
    /// Endpoints (default `["http://127.0.0.1:2379"]`).
    pub endpoints: Vec<String>,
    /// Key prefix (default `/`).
    pub prefix: String,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub password: Option<Secret>,
}

impl Default for EtcdKvConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/".into(),
            user: None,
            password: None,
        }
    }
}

/// Consul's KV HTTP API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConsulKvConfig {
    /// Address (default `http://127.0.0.1:8500`).
    pub address: String,
    /// Key prefix (default `/`).
    pub prefix: String,
    /// ACL token.
    pub token: Option<Secret>,
}

impl Default for ConsulKvConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8500".into(),
            prefix: "/".into(),
            token: None,
        }
    }
}

/// ZooKeeper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ZookeeperKvConfig {
    /// Servers, `host:port` (default `["127.0.0.1:2181"]`).
    pub servers: Vec<String>,
    /// Node prefix (default `/`).
    pub prefix: String,
    /// The `digest` user; with `password`, nodes are writable by this user only (default none:
    /// read-only).
    pub user: Option<String>,
    /// The `digest` password.
    pub password: Option<Secret>,
    /// Create world-writable nodes, as Vamp did (default `false`; `?acl=open`).
    pub open_acl: bool,
}

impl Default for ZookeeperKvConfig {
    fn default() -> Self {
        Self {
            servers: vec!["127.0.0.1:2181".into()],
            prefix: "/".into(),
            user: None,
            password: None,
            open_acl: false,
        }
    }
}

/// Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisKvConfig {
    /// `host:port` (default `127.0.0.1:6379`).
    pub address: String,
    /// Database number (default 0).
    pub database: u32,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Key prefix (default `/`).
    pub prefix: String,
}

impl Default for RedisKvConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:6379".into(),
            database: 0,
            user: None,
            password: None,
            prefix: "/".into(),
        }
    }
}

/// Which key-value store, with its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KvBackendConfig {
    /// In memory, optionally under a prefix.
    Memory {
        /// Key prefix (default `/`).
        #[serde(default = "root")]
        prefix: String,
    },
    /// etcd (feature `kv-etcd`).
    Etcd(EtcdKvConfig),
    /// Consul (feature `kv-consul`).
    Consul(ConsulKvConfig),
    /// ZooKeeper (feature `kv-zookeeper`).
    Zookeeper(ZookeeperKvConfig),
    /// Redis (feature `kv-redis`).
    Redis(RedisKvConfig),
}

/// `kv`, below `prefix` unless that is the root.
fn prefixed(
    kv: impl vamp_core::kv::KeyValueStore,
    prefix: &str,
) -> Result<Arc<DynKeyValueStore>, Error> {
    let prefix = KeyPath::parse(prefix)?;
    Ok(if prefix.is_root() {
        Arc::new(kv)
    } else {
        Arc::new(Namespaced::new(kv, prefix))
    })
}

fn root() -> String {
    "/".into()
}

fn prefix_of(u: &BackendUrl) -> String {
    if u.path.is_empty() {
        "/".into()
    } else {
        u.path.clone()
    }
}

impl KvBackendConfig {
    /// Parses a URL: `memory:///prefix`, `etcd://h1:2379,h2:2379/prefix`,
    /// `consul://host:8500/prefix?token=…`, `zk://h1:2181,h2:2181/prefix`,
    /// `redis://[user:pass@]host:6379/<db>?prefix=/vamp`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unknown scheme or a malformed URL.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let u = BackendUrl::parse(url)?;
        Ok(match u.scheme.as_str() {
            "memory" | "mem" => Self::Memory {
                prefix: prefix_of(&u),
            },
            "etcd" | "etcd+http" | "etcd+https" => {
                let tls = if u.scheme == "etcd+https" {
                    "https"
                } else {
                    "http"
                };
                let endpoints = if u.hosts.is_empty() {
                    EtcdKvConfig::default().endpoints
                } else {
                    u.hosts_with_port(2379)
                        .into_iter()
                        .map(|h| format!("{tls}://{h}"))
                        .collect()
                };
                Self::Etcd(EtcdKvConfig {
                    endpoints,
                    prefix: prefix_of(&u),
                    user: u.user.clone(),
                    password: u.password.clone().map(Secret),
                })
            }
            "consul" | "consul+http" | "consul+https" => {
                let tls = if u.scheme == "consul+https" {
                    "https"
                } else {
                    "http"
                };
                let address = match u.hosts_with_port(8500).first() {
                    Some(h) => format!("{tls}://{h}"),
                    None => ConsulKvConfig::default().address,
                };
                Self::Consul(ConsulKvConfig {
                    address,
                    prefix: prefix_of(&u),
                    token: u.query.get("token").cloned().map(Secret),
                })
            }
            "zk" | "zookeeper" => {
                let servers = if u.hosts.is_empty() {
                    ZookeeperKvConfig::default().servers
                } else {
                    u.hosts_with_port(2181)
                };
                let open_acl = match u.query.get("acl").map(String::as_str) {
                    None => false,
                    Some("open") => true,
                    Some(other) => {
                        return Err(invalid(
                            "zookeeper",
                            format!("acl={other}: the only value is 'open'"),
                        ));
                    }
                };
                Self::Zookeeper(ZookeeperKvConfig {
                    servers,
                    prefix: prefix_of(&u),
                    user: u.user.clone(),
                    password: u.password.clone().map(Secret),
                    open_acl,
                })
            }
            "redis" => {
                let database = match u.path.trim_start_matches('/') {
                    "" => 0,
                    db => db.parse().map_err(|_| {
                        invalid("redis", format!("'{db}' is not a database number"))
                    })?,
                };
                Self::Redis(RedisKvConfig {
                    address: u
                        .hosts_with_port(6379)
                        .first()
                        .cloned()
                        .unwrap_or_else(|| RedisKvConfig::default().address),
                    database,
                    user: u.user.clone(),
                    password: u.password.clone().map(Secret),
                    prefix: u.query.get("prefix").cloned().unwrap_or_else(root),
                })
            }
            other => {
                return Err(invalid(
                    "kv",
                    format!(
                        "unknown key-value store scheme '{other}' (memory, etcd, consul, zk, redis)"
                    ),
                ));
            }
        })
    }

    /// The backend's name (`memory`, `etcd`, ...).
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory { .. } => "memory",
            Self::Etcd(_) => "etcd",
            Self::Consul(_) => "consul",
            Self::Zookeeper(_) => "zookeeper",
            Self::Redis(_) => "redis",
        }
    }

    /// Builds the store.
    ///
    /// # Errors
    /// [`Error::FeatureDisabled`] for a backend compiled out; [`Error::InvalidConfig`] for
    /// invalid settings; the backend's connection errors.
    pub async fn build(self) -> Result<Arc<DynKeyValueStore>, Error> {
        match self {
            Self::Memory { prefix } => prefixed(InMemoryKv::new(), &prefix),
            #[cfg(feature = "kv-etcd")]
            Self::Etcd(c) => prefixed(connect_etcd(&c).await?, &c.prefix),
            #[cfg(not(feature = "kv-etcd"))]
            Self::Etcd(_) => Err(Error::FeatureDisabled {
                backend: "etcd",
                feature: "kv-etcd",
            }),
            #[cfg(feature = "kv-consul")]
            Self::Consul(c) => prefixed(connect_consul(&c).await?, &c.prefix),
            #[cfg(not(feature = "kv-consul"))]
            Self::Consul(_) => Err(Error::FeatureDisabled {
                backend: "consul",
                feature: "kv-consul",
            }),
            #[cfg(feature = "kv-zookeeper")]
            Self::Zookeeper(c) => prefixed(connect_zookeeper(&c).await?, &c.prefix),
            #[cfg(not(feature = "kv-zookeeper"))]
            Self::Zookeeper(_) => Err(Error::FeatureDisabled {
                backend: "zookeeper",
                feature: "kv-zookeeper",
            }),
            #[cfg(feature = "kv-redis")]
            Self::Redis(c) => prefixed(connect_redis(&c).await?, &c.prefix),
            #[cfg(not(feature = "kv-redis"))]
            Self::Redis(_) => Err(Error::FeatureDisabled {
                backend: "redis",
                feature: "kv-redis",
            }),
        }
    }
}

impl KvBackendConfig {
    /// The lease store on this key-value store, for the election of replicas
    /// ([`vamp_core::lease`]): in memory (one process), etcd, Redis, ZooKeeper or Consul. The leases do not
    /// live under the configured prefix: their names carry what separates control planes.
    ///
    /// # Errors
    /// [`Error::FeatureDisabled`], [`Error::InvalidConfig`] and connection errors as
    /// [`KvBackendConfig::build`].
    pub async fn build_leases(self) -> Result<Arc<vamp_core::lease::DynLeaseStore>, Error> {
        match self {
            Self::Memory { .. } => Ok(Arc::new(vamp_core::memory::InMemoryLeases::new())),
            #[cfg(feature = "kv-etcd")]
            Self::Etcd(c) => Ok(Arc::new(connect_etcd(&c).await?)),
            #[cfg(feature = "kv-redis")]
            Self::Redis(c) => Ok(Arc::new(connect_redis(&c).await?)),
            #[cfg(not(feature = "kv-etcd"))]
            Self::Etcd(_) => Err(Error::FeatureDisabled {
                backend: "etcd",
                feature: "kv-etcd",
            }),
            #[cfg(not(feature = "kv-redis"))]
            Self::Redis(_) => Err(Error::FeatureDisabled {
                backend: "redis",
                feature: "kv-redis",
            }),
            #[cfg(feature = "kv-zookeeper")]
            Self::Zookeeper(c) => Ok(Arc::new(connect_zookeeper(&c).await?)),
            #[cfg(not(feature = "kv-zookeeper"))]
            Self::Zookeeper(_) => Err(Error::FeatureDisabled {
                backend: "zookeeper",
                feature: "kv-zookeeper",
            }),
            #[cfg(feature = "kv-consul")]
            Self::Consul(c) => Ok(Arc::new(connect_consul(&c).await?)),
            #[cfg(not(feature = "kv-consul"))]
            Self::Consul(_) => Err(Error::FeatureDisabled {
                backend: "consul",
                feature: "kv-consul",
            }),
        }
    }
}

#[cfg(feature = "kv-etcd")]
async fn connect_etcd(c: &EtcdKvConfig) -> Result<etcd::EtcdKv, Error> {
    let user = match (&c.user, &c.password) {
        (Some(u), Some(p)) => Some((u.as_str(), p.0.as_str())),
        (None, None) => None,
        _ => return Err(invalid("etcd", "user and password go together")),
    };
    etcd::EtcdKv::connect(&c.endpoints, user).await
}

#[cfg(feature = "kv-redis")]
async fn connect_redis(c: &RedisKvConfig) -> Result<redis::RedisKv, Error> {
    // Encoded: a password with `/`, `?`, `#` or `@` must stay the password.
    let enc = crate::url::encode_component;
    let auth = match (&c.user, &c.password) {
        (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(&p.0)),
        (None, Some(p)) => format!(":{}@", enc(&p.0)),
        (Some(u), None) => format!("{}@", enc(u)),
        (None, None) => String::new(),
    };
    redis::RedisKv::connect(
        &format!("redis://{auth}{}/{}", c.address, c.database),
        "vamp",
    )
    .await
}

#[cfg(feature = "kv-zookeeper")]
async fn connect_zookeeper(c: &ZookeeperKvConfig) -> Result<zookeeper::ZookeeperKv, Error> {
    let access = match (&c.user, &c.password, c.open_acl) {
        (Some(user), Some(password), false) => {
            zookeeper::ZookeeperAccess::digest(user, &password.0)
        }
        (None, None, true) => zookeeper::ZookeeperAccess::Open,
        (None, None, false) => zookeeper::ZookeeperAccess::ReadOnly,
        (_, _, true) => {
            return Err(invalid(
                "zookeeper",
                "acl=open and credentials exclude each other",
            ));
        }
        _ => return Err(invalid("zookeeper", "user and password go together")),
    };
    zookeeper::ZookeeperKv::connect_with(&c.servers.join(","), "/vamp-kv", access).await
}

#[cfg(feature = "kv-consul")]
async fn connect_consul(c: &ConsulKvConfig) -> Result<consul::ConsulKv, Error> {
    let mut options = consul::ConsulKvOptions::new(c.address.clone());
    options.token = c.token.as_ref().map(|t| t.0.clone());
    consul::ConsulKv::connect(options).await
}
