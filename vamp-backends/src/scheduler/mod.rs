//! Container scheduler selection.

#[cfg(feature = "scheduler-docker")]
pub mod docker;
#[cfg(feature = "scheduler-kubernetes")]
pub mod kubernetes;
#[cfg(feature = "scheduler-local")]
pub mod local;
#[cfg(feature = "scheduler-marathon")]
pub mod marathon;
#[cfg(any(feature = "scheduler-local", feature = "scheduler-docker"))]
mod ports;
#[cfg(any(feature = "scheduler-local", feature = "scheduler-docker"))]
mod probe;
#[cfg(any(
    feature = "scheduler-local",
    feature = "scheduler-docker",
    feature = "scheduler-marathon",
    feature = "scheduler-kubernetes"
))]
mod record;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vamp_core::Error;
use vamp_core::memory::InMemoryScheduler;
use vamp_core::scheduler::DynContainerScheduler;

use crate::url::BackendUrl;

/// The environment variable part of a port's name (`PORT_<NAME>`): upper-cased, every other
/// character than ASCII letters and digits `_`.
#[cfg(any(
    feature = "scheduler-local",
    feature = "scheduler-docker",
    feature = "scheduler-kubernetes"
))]
pub(crate) fn env_name(port: &str) -> String {
    port.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

use crate::{Secret, invalid};

/// An HTTP API endpoint (Kubernetes, Marathon, Docker over TCP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiConfig {
    /// The API's address; `None`: the backend's default (in-cluster, local socket).
    pub address: Option<String>,
    /// A namespace (Kubernetes) or group (Marathon).
    pub namespace: Option<String>,
    /// A bearer token.
    pub token: Option<Secret>,
    /// The network containers join when a breed names none (Docker: `bridge`, `host` or a
    /// network's name; `?network=`).
    #[serde(default)]
    pub network: Option<String>,
    /// HTTP basic credentials (Marathon): the URL's user and password.
    #[serde(default)]
    pub user: Option<String>,
    /// The password of `user`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Kubernetes: how gateways are exposed (`?service-type=NodePort|LoadBalancer`, Vamp's
    /// `service-type`; default `NodePort`).
    #[serde(default)]
    pub service_type: Option<String>,
    /// Kubernetes: whether gateways get Services (`?create-services=false` turns it off;
    /// Vamp's `create-services`, default on).
    #[serde(default)]
    pub create_services: Option<bool>,
    /// Kubernetes: how long a finished workflow run's Job stays, in seconds (`?run-ttl=`;
    /// default 300).
    #[serde(default)]
    pub run_ttl_s: Option<u64>,
}

/// Local processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LocalConfig {
    /// Working directory for the processes (default: a temporary directory).
    pub workdir: Option<String>,
    /// Instances outlive the scheduler, and a scheduler on the same directory adopts them
    /// (URL `?keep=true`; default false: dropping the scheduler stops them).
    #[serde(default)]
    pub keep: bool,
}

/// Which scheduler, with its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SchedulerBackendConfig {
    /// Simulated in memory.
    Memory,
    /// Local processes (feature `scheduler-local`).
    Local(LocalConfig),
    /// Docker (feature `scheduler-docker`).
    Docker(ApiConfig),
    /// Kubernetes (feature `scheduler-kubernetes`).
    Kubernetes(ApiConfig),
    /// Marathon / DC/OS (feature `scheduler-marathon`).
    Marathon(ApiConfig),
}

impl SchedulerBackendConfig {
    /// Parses a URL: `memory://`, `local:///workdir`, `docker://` (local socket),
    /// `docker:///path/to/docker.sock`, `docker://host:2375` (`?namespace=`, `?network=host`), `kubernetes://` (in-cluster) or
    /// `kubernetes://host:6443?namespace=vamp` (`&service-type=`, `&create-services=`,
    /// `&run-ttl=SECONDS`), `marathon://host:8080?group=vamp`,
    /// `marathon://user:password@host:8080`, `dcos://cluster.example.com/service/marathon?tls=true&token=…`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unknown scheme or a malformed URL.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let u = BackendUrl::parse(url)?;
        let tls = u
            .query
            .get("tls")
            .is_some_and(|v| matches!(v.as_str(), "true" | "1" | "yes"));
        // `kubernetes://host:8001?tls=false`: a plain-HTTP API server (`kubectl proxy`, a double).
        let tls_off = u
            .query
            .get("tls")
            .is_some_and(|v| matches!(v.as_str(), "false" | "0" | "no"));
        let api = |default_port: u16, https: bool, with_path: bool| {
            let address = u.hosts_with_port(default_port).first().map(|h| {
                format!(
                    "{}://{h}{}",
                    if https || tls { "https" } else { "http" },
                    if with_path { u.path.as_str() } else { "" }
                )
            });
            let address =
                address.or_else(|| (!u.path.is_empty()).then(|| format!("unix://{}", u.path)));
            ApiConfig {
                address,
                namespace: u
                    .query
                    .get("namespace")
                    .or_else(|| u.query.get("group"))
                    .cloned(),
                token: u.query.get("token").cloned().map(Secret),
                network: u.query.get("network").cloned(),
                user: u.user.clone(),
                password: u.password.clone().map(Secret),
                service_type: u.query.get("service-type").cloned(),
                create_services: u
                    .query
                    .get("create-services")
                    .map(|v| !matches!(v.as_str(), "false" | "0" | "no")),
                run_ttl_s: None,
            }
        };
        let run_ttl_s = u
            .query
            .get("run-ttl")
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    invalid(
                        "scheduler",
                        format!("run-ttl '{v}' is not a number of seconds"),
                    )
                })
            })
            .transpose()?;
        Ok(match u.scheme.as_str() {
            "memory" | "mem" => Self::Memory,
            "local" => Self::Local(LocalConfig {
                workdir: (!u.path.is_empty()).then(|| u.path.clone()),
                keep: u.query.get("keep").is_some_and(|v| v == "true"),
            }),
            "docker" => Self::Docker(api(2375, false, false)),
            "kubernetes" | "k8s" => Self::Kubernetes(ApiConfig {
                run_ttl_s,
                ..api(6443, !tls_off, false)
            }),
            "marathon" | "dcos" => Self::Marathon(api(8080, false, true)),
            other => {
                return Err(invalid(
                    "scheduler",
                    format!(
                        "unknown scheduler scheme '{other}' (memory, local, docker, kubernetes, marathon)"
                    ),
                ));
            }
        })
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Local(_) => "local",
            Self::Docker(_) => "docker",
            Self::Kubernetes(_) => "kubernetes",
            Self::Marathon(_) => "marathon",
        }
    }

    /// Builds the scheduler.
    ///
    /// # Errors
    /// [`Error::FeatureDisabled`] for a backend compiled out; connection errors.
    pub async fn build(self) -> Result<Arc<DynContainerScheduler>, Error> {
        match self {
            Self::Memory => Ok(Arc::new(InMemoryScheduler::new())),
            #[cfg(feature = "scheduler-local")]
            Self::Local(c) => {
                let workdir = c.workdir.map_or_else(
                    || std::env::temp_dir().join(format!("vamp-local-{}", std::process::id())),
                    std::path::PathBuf::from,
                );
                // Stopping what an earlier scheduler left there waits for processes: not on
                // the async runtime.
                let keep = c.keep;
                let scheduler = tokio::task::spawn_blocking(move || {
                    if keep {
                        local::LocalScheduler::adopting(workdir)
                    } else {
                        local::LocalScheduler::new(workdir)
                    }
                })
                .await
                .map_err(|e| Error::Backend {
                    backend: "local".into(),
                    source: Box::new(e),
                })??;
                Ok(Arc::new(scheduler))
            }
            #[cfg(not(feature = "scheduler-local"))]
            Self::Local(_) => Err(Error::FeatureDisabled {
                backend: "local",
                feature: "scheduler-local",
            }),
            #[cfg(feature = "scheduler-docker")]
            Self::Docker(c) => {
                if c.token.is_some() {
                    return Err(invalid(
                        "docker",
                        "a Docker engine takes no token (use a unix socket or a TLS proxy)",
                    ));
                }
                let mut opts = docker::DockerOptions {
                    address: c.address,
                    ..Default::default()
                };
                if let Some(ns) = c.namespace {
                    opts.namespace = ns;
                }
                if let Some(network) = c.network {
                    opts.network = network;
                }
                Ok(Arc::new(docker::DockerScheduler::connect(opts).await?))
            }
            #[cfg(not(feature = "scheduler-docker"))]
            Self::Docker(_) => Err(Error::FeatureDisabled {
                backend: "docker",
                feature: "scheduler-docker",
            }),
            #[cfg(feature = "scheduler-kubernetes")]
            Self::Kubernetes(c) => Ok(Arc::new(connect_kubernetes(c).await?)),
            #[cfg(not(feature = "scheduler-kubernetes"))]
            Self::Kubernetes(_) => Err(Error::FeatureDisabled {
                backend: "kubernetes",
                feature: "scheduler-kubernetes",
            }),
            #[cfg(feature = "scheduler-marathon")]
            Self::Marathon(c) => {
                let address = c.address.filter(|a| a.starts_with("http")).ok_or_else(|| {
                    invalid(
                        "marathon",
                        "Marathon's address is missing: marathon://host:8080",
                    )
                })?;
                let mut opts = marathon::MarathonOptions::new(address);
                if let Some(group) = c.namespace {
                    opts.group = group;
                }
                opts.token = c.token;
                opts.basic = c.user.map(|u| (u, c.password.unwrap_or_default()));
                Ok(Arc::new(marathon::MarathonScheduler::connect(opts).await?))
            }
            #[cfg(not(feature = "scheduler-marathon"))]
            Self::Marathon(_) => Err(Error::FeatureDisabled {
                backend: "marathon",
                feature: "scheduler-marathon",
            }),
        }
    }
}

impl SchedulerBackendConfig {
    /// The lease store of this scheduler's platform, for the election of replicas
    /// ([`vamp_core::lease`]): `coordination.k8s.io` Leases on Kubernetes.
    ///
    /// # Errors
    /// [`Error::NotSupported`] on the other schedulers (elect on the key-value store or the
    /// database); the errors of [`SchedulerBackendConfig::build`].
    pub async fn build_leases(self) -> Result<Arc<vamp_core::lease::DynLeaseStore>, Error> {
        match self {
            #[cfg(feature = "scheduler-kubernetes")]
            Self::Kubernetes(c) => Ok(Arc::new(connect_kubernetes(c).await?)),
            other => Err(Error::NotSupported {
                backend: other.backend().into(),
                operation: "leases (elect on Kubernetes, the key-value store or the database)",
            }),
        }
    }
}

impl SchedulerBackendConfig {
    /// The platform's own gateway side, beside the gateway driver: on Kubernetes, a Service
    /// per gateway (Vamp's `create-services`, on unless `?create-services=false`), of
    /// `?service-type=` (`NodePort` by default), labelled with the control plane `owner`.
    /// `None` on the other schedulers.
    ///
    /// # Errors
    /// A bad service type; the errors of [`SchedulerBackendConfig::build`].
    pub async fn build_gateway_services(
        self,
        owner: &str,
    ) -> Result<Option<Arc<dyn vamp_core::ops::controller::GatewaySink>>, Error> {
        match self {
            #[cfg(feature = "scheduler-kubernetes")]
            Self::Kubernetes(c) if c.create_services != Some(false) => {
                let service_type = c
                    .service_type
                    .as_deref()
                    .map(kubernetes::GatewayServiceType::parse)
                    .transpose()?
                    .unwrap_or_default();
                let namespace = c.namespace.clone();
                let client = kubernetes_client(c).await?;
                let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
                Ok(Some(Arc::new(
                    kubernetes::GatewayServices::new(client, namespace, service_type)
                        .with_owner(owner),
                )))
            }
            _ => {
                let _ = owner;
                Ok(None)
            }
        }
    }
}

#[cfg(feature = "scheduler-kubernetes")]
async fn connect_kubernetes(c: ApiConfig) -> Result<kubernetes::KubernetesScheduler, Error> {
    let namespace = c.namespace.clone();
    let run_ttl_s = c.run_ttl_s;
    let client = kubernetes_client(c).await?;
    // Without `?namespace=`: the pod's own namespace in a cluster, the kubeconfig context's
    // outside one ("default" for an address given in the URL).
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    let mut options = kubernetes::KubernetesOptions::new(namespace);
    if let Some(ttl) = run_ttl_s {
        options = options.with_run_ttl(std::time::Duration::from_secs(ttl));
    }
    kubernetes::KubernetesScheduler::connect(client, options).await
}

/// A client of the API server `c` names (in-cluster or kubeconfig credentials without an
/// address).
#[cfg(feature = "scheduler-kubernetes")]
async fn kubernetes_client(c: ApiConfig) -> Result<kube::Client, Error> {
    let unavailable = |e: String| Error::Unavailable {
        backend: "kubernetes".into(),
        source: e.into(),
    };
    kubernetes::install_tls_provider();
    let client = match c.address {
        None => kube::Client::try_default()
            .await
            .map_err(|e| unavailable(format!("no in-cluster or kubeconfig credentials: {e}")))?,
        Some(address) => {
            let url = address
                .parse()
                .map_err(|_| invalid("kubernetes", "the API server's address is not a URL"))?;
            let mut config = kube::Config::new(url);
            if let Some(token) = c.token {
                config.auth_info.token = Some(token.0.into());
            }
            kube::Client::try_from(config).map_err(|e| unavailable(e.to_string()))?
        }
    };
    Ok(client)
}
