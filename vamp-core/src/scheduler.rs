//! The container scheduler: runs deployment services as instances (containers, pods,
//! processes) and reports where they run.
//!
//! Vamp marks what it manages with labels ([`labels`]); [`ContainerScheduler::services`]
//! returns only those services. The in-memory implementation
//! ([`crate::memory::InMemoryScheduler`]) simulates instances with addresses, ports and health.

use std::collections::BTreeMap;
use std::fmt::{self, Debug, Display};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use indexmap::IndexMap;

use crate::error::{Error, Result};
use crate::model::{Argument, Deployable, HealthCheck, PortType};
use crate::node::Map;

/// Vamp's labels (label namespace `io.vamp`, `vamp.container-driver.label-namespace`).
pub mod labels {
    /// The deployment's name.
    pub const DEPLOYMENT: &str = "io.vamp.deployment";
    /// The cluster's name.
    pub const CLUSTER: &str = "io.vamp.cluster";
    /// The service (breed) name.
    pub const SERVICE: &str = "io.vamp.service";
    /// The identity of the control plane that created it ([`crate::layers::Owned`],
    /// [`crate::ops::identity`]).
    pub const OWNER: &str = "io.vamp.owner";
}

/// Which deployment service a scheduled service is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    /// The deployment.
    pub deployment: String,
    /// The cluster.
    pub cluster: String,
    /// The service (its breed's name).
    pub service: String,
}

impl ServiceId {
    /// A service id.
    pub fn new(
        deployment: impl Into<String>,
        cluster: impl Into<String>,
        service: impl Into<String>,
    ) -> Self {
        Self {
            deployment: deployment.into(),
            cluster: cluster.into(),
            service: service.into(),
        }
    }

    /// The labels that mark this service as Vamp's.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::DEPLOYMENT.to_owned(), self.deployment.clone()),
            (labels::CLUSTER.to_owned(), self.cluster.clone()),
            (labels::SERVICE.to_owned(), self.service.clone()),
        ])
    }

    /// Reads an id back from labels, if they are Vamp's.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self::new(
            labels.get(labels::DEPLOYMENT)?,
            labels.get(labels::CLUSTER)?,
            labels.get(labels::SERVICE)?,
        ))
    }

    /// The name of instance `n` of this service: `<deployment>-<cluster>-<service>-<n>`,
    /// with every character other than ASCII letters, digits and `-` replaced by `-`.
    ///
    /// ```
    /// use vamp_core::scheduler::ServiceId;
    /// assert_eq!(ServiceId::new("sava", "web", "sava:1.0.0").instance_name(3), "sava-web-sava-1-0-0-3");
    /// ```
    pub fn instance_name(&self, n: u64) -> String {
        format!("{}-{}-{}-{n}", self.deployment, self.cluster, self.service)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }

    fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("deployment", &self.deployment),
            ("cluster", &self.cluster),
            ("service", &self.service),
        ] {
            if v.is_empty() || v.chars().any(char::is_control) {
                return Err(Error::Invalid {
                    what: "service id",
                    value: v.clone(),
                    reason: format!("the {what} name must be non-empty without control characters"),
                });
            }
        }
        Ok(())
    }
}

impl Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.deployment, self.cluster, self.service)
    }
}

/// A port a service listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// The breed port's name.
    pub name: String,
    /// The port inside the container or process.
    pub container_port: u16,
    /// HTTP or TCP.
    pub port_type: PortType,
}

/// What to run for a deployment service.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ServiceSpec {
    /// Which service.
    pub id: ServiceId,
    /// The image or command.
    pub deployable: Deployable,
    /// How many instances.
    pub instances: u32,
    /// CPU shares per instance.
    pub cpu: f64,
    /// Memory per instance (MB).
    pub memory_mb: f64,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// Environment variables (name → value).
    pub environment: IndexMap<String, String>,
    /// Container arguments (`privileged` is the privileged flag).
    pub arguments: Vec<Argument>,
    /// Labels; the scheduler adds Vamp's ([`ServiceId::labels`]).
    pub labels: BTreeMap<String, String>,
    /// Health checks.
    pub health_checks: Vec<HealthCheck>,
    /// Network (e.g. `BRIDGE`, `HOST`).
    pub network: Option<String>,
    /// Scheduler-specific settings (`marathon`, `kubernetes`, `docker` maps).
    pub dialects: Map,
}

impl ServiceSpec {
    /// One instance of `deployable` with Vamp's defaults (1 CPU, 1000 MB), no ports.
    pub fn new(id: ServiceId, deployable: Deployable) -> Self {
        let labels = id.labels();
        Self {
            id,
            deployable,
            instances: 1,
            cpu: 1.0,
            memory_mb: 1000.0,
            ports: Vec::new(),
            environment: IndexMap::new(),
            arguments: Vec::new(),
            labels,
            health_checks: Vec::new(),
            network: None,
            dialects: Map::new(),
        }
    }

    /// Sets the number of instances.
    #[must_use]
    pub fn with_instances(mut self, n: u32) -> Self {
        self.instances = n;
        self
    }

    /// Adds a port.
    #[must_use]
    pub fn with_port(
        mut self,
        name: impl Into<String>,
        container_port: u16,
        port_type: PortType,
    ) -> Self {
        self.ports.push(PortSpec {
            name: name.into(),
            container_port,
            port_type,
        });
        self
    }

    /// Sets an environment variable.
    #[must_use]
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.environment.insert(name.into(), value.into());
        self
    }

    /// Checks the spec and adds Vamp's labels.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an invalid id, duplicate port names, or non-positive resources.
    pub fn normalized(mut self) -> Result<Self> {
        self.id.validate()?;
        let mut names = std::collections::HashSet::new();
        for p in &self.ports {
            if !names.insert(p.name.as_str()) {
                return Err(Error::Invalid {
                    what: "port",
                    value: p.name.clone(),
                    reason: "duplicate port name".into(),
                });
            }
        }
        if !(self.cpu.is_finite()
            && self.cpu > 0.0
            && self.memory_mb.is_finite()
            && self.memory_mb > 0.0)
        {
            return Err(Error::Invalid {
                what: "resources",
                value: format!("cpu {} memory {}MB", self.cpu, self.memory_mb),
                reason: "must be positive".into(),
            });
        }
        for h in &self.health_checks {
            self.health_check_port(h)?;
        }
        self.labels.extend(self.id.labels());
        Ok(self)
    }

    /// The port a health check names, with its index among the service's ports.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`health check`) when it names no port of the service;
    /// [`ServiceSpec::normalized`] refuses such a spec.
    pub fn health_check_port(&self, check: &HealthCheck) -> Result<(usize, &PortSpec)> {
        self.ports
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == check.port)
            .ok_or_else(|| Error::Invalid {
                what: "health check",
                value: format!("{}: port {:?}", self.id, check.port),
                reason: "names no port of the service".into(),
            })
    }
}

/// A running (or starting) instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceState {
    /// The instance's name (unique within the scheduler).
    pub name: String,
    /// The host it is reachable on.
    pub host: String,
    /// Reachable port per port name.
    pub ports: IndexMap<String, u16>,
    /// Whether it runs.
    pub running: bool,
    /// The health-check verdict (`None` without health checks).
    pub healthy: Option<bool>,
}

/// A service as the scheduler runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeployedService {
    /// The spec it runs (with Vamp's labels).
    pub spec: ServiceSpec,
    /// Its instances.
    pub instances: Vec<InstanceState>,
}

/// A change seen by [`ContainerScheduler::watch`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SchedulerEvent {
    /// A new service.
    Deployed(DeployedService),
    /// A service's spec changed.
    Updated(DeployedService),
    /// A service's instances changed (scaled, started, stopped, health).
    InstancesChanged(DeployedService),
    /// A service was removed.
    Undeployed(ServiceId),
}

/// Options of [`ContainerScheduler::deploy`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeployOptions {
    /// Replace instances even when the spec is unchanged.
    pub force: bool,
    /// Give up waiting for the scheduler after this long.
    pub timeout: Option<Duration>,
}

/// Names of environment variables that hold credentials (matched as parts of the upper-cased
/// name).
pub const CREDENTIAL_NAMES: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "CREDENTIAL",
    "PRIVATE_KEY",
    "API_KEY",
    "ACCESS_KEY",
];

/// Whether an environment variable holds a credential: by its name ([`CREDENTIAL_NAMES`]),
/// or a URL value with a password (`scheme://user:password@host`).
pub fn is_credential(name: &str, value: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    CREDENTIAL_NAMES.iter().any(|n| upper.contains(n))
        || value
            .split_once("://")
            .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
            .and_then(|authority| authority.rsplit_once('@'))
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// The environment as a scheduler records it in its platform's metadata (labels, annotations,
/// records): each credential ([`is_credential`]) replaced by `sha1:<digest>` of its value, so
/// that a changed secret is still a changed spec but the value is not written there.
/// Idempotent: a recorded environment records as itself.
///
/// ```
/// use indexmap::IndexMap;
/// use vamp_core::scheduler::recorded_environment;
/// let env: IndexMap<String, String> = [
///     ("DB_PASSWORD", "hunter2"),
///     ("STORE", "redis://u:pw@h:6379"),
///     ("STORE_PLAIN", "redis://h:6379"),
///     ("MODE", "fast"),
/// ]
/// .into_iter()
/// .map(|(k, v)| (k.to_owned(), v.to_owned()))
/// .collect();
/// let r = recorded_environment(&env);
/// assert!(r["DB_PASSWORD"].starts_with("sha1:") && r["STORE"].starts_with("sha1:"));
/// assert_eq!((r["STORE_PLAIN"].as_str(), r["MODE"].as_str()), ("redis://h:6379", "fast"));
/// assert_eq!(recorded_environment(&r), r);
/// ```
pub fn recorded_environment(env: &IndexMap<String, String>) -> IndexMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let recorded = if v.starts_with("sha1:") || !is_credential(k, v) {
                v.clone()
            } else {
                format!("sha1:{}", crate::lookup::hex_sha1(v, ""))
            };
            (k.clone(), recorded)
        })
        .collect()
}

/// A one-shot run ([`ContainerScheduler::run_once`]) still alive.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunInfo {
    /// The run's name (a process's or container's), for [`ContainerScheduler::stop_run`].
    pub name: String,
    /// When it started (milliseconds since the Unix epoch).
    pub started_ms: i64,
}

impl RunInfo {
    /// A run named `name` started at `started_ms`.
    pub fn new(name: impl Into<String>, started_ms: i64) -> Self {
        Self {
            name: name.into(),
            started_ms,
        }
    }
}

/// What a scheduler can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SchedulerCapabilities {
    /// `scale` is supported.
    pub scale: bool,
    /// Health checks are run and reported.
    pub health_checks: bool,
    /// Instances report reachable ports.
    pub instance_ports: bool,
    /// Updates replace instances gradually.
    pub rolling_update: bool,
    /// `watch` is supported.
    pub watch: bool,
    /// Instances are real: each answers on its host and ports, and is really gone after a
    /// scale-down or an undeploy (the conformance suite connects to them).
    pub reachable_instances: bool,
    /// A new scheduler on the same backend finds the services an earlier one deployed (the
    /// state lives in the backend, not in the scheduler object).
    pub adopts_services: bool,
    /// The deployable types it runs (`None`: any). A control plane refuses a breed whose
    /// deployable it cannot run before anything is stored.
    pub deployable_types: Option<&'static [&'static str]>,
}

/// A container scheduler (Kubernetes, Marathon, Docker, local processes, in-memory).
///
/// # Contract
/// * `deploy` creates the service or updates it to the new spec (Vamp's labels are added);
///   deploying an unchanged spec is a no-op unless `force`.
/// * The scheduler converges asynchronously: after `deploy`/`scale`, `service` eventually
///   reports `spec.instances` instances, each with a port for every spec port.
/// * `services` lists only the services carrying Vamp's labels, sorted by id.
/// * `watch` yields the changes of managed services, in order per service.
///
/// # Errors
/// [`Error::NotFound`] to scale a missing service; [`Error::Invalid`] for an invalid spec;
/// [`Error::Unavailable`] (temporary) when the scheduler cannot be reached.
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use vamp_core::memory::InMemoryScheduler;
/// use vamp_core::model::{Deployable, PortType};
/// use vamp_core::scheduler::*;
///
/// let scheduler = InMemoryScheduler::new();
/// let id = ServiceId::new("sava", "sava", "sava:1.0.0");
/// let deployable = Deployable { deployable_type: None, definition: "magneticio/sava:1.0.0".into() };
/// let spec = ServiceSpec::new(id.clone(), deployable).with_instances(3).with_port("webport", 8080, PortType::Http);
/// scheduler.deploy(spec, DeployOptions::default()).await.unwrap();
/// let service = scheduler.service(&id).await.unwrap().unwrap();
/// assert_eq!(service.instances.len(), 3);
/// assert!(service.instances.iter().all(|i| i.ports.contains_key("webport")));
/// # }).unwrap();
/// ```
#[async_trait]
pub trait ContainerScheduler: Debug + Display + Send + Sync + 'static {
    /// Creates or updates a service.
    async fn deploy(&self, spec: ServiceSpec, opts: DeployOptions) -> Result<()>;

    /// Removes a service, and stops the one-shot runs of `id` still alive; returns whether
    /// the service existed.
    async fn undeploy(&self, id: &ServiceId) -> Result<bool>;

    /// Changes the number of instances.
    async fn scale(&self, id: &ServiceId, instances: u32) -> Result<()>;

    /// The service, if deployed.
    async fn service(&self, id: &ServiceId) -> Result<Option<DeployedService>>;

    /// Every managed service, sorted by id.
    async fn services(&self) -> Result<Vec<DeployedService>>;

    /// Changes of managed services.
    fn watch(&self) -> BoxStream<'static, Result<SchedulerEvent>>;

    /// What the scheduler can do.
    fn capabilities(&self) -> SchedulerCapabilities;

    /// Runs `spec` once (one instance, not restarted when it exits): a workflow execution.
    /// Schedulers without one-shot runs return [`Error::NotSupported`] (the default).
    async fn run_once(&self, spec: ServiceSpec) -> Result<()> {
        let _ = spec;
        Err(crate::error::Error::NotSupported {
            backend: self.to_string(),
            operation: "run_once",
        })
    }

    /// The one-shot runs of `id` still alive. A scheduler without one-shot runs has none
    /// (the default).
    async fn runs(&self, id: &ServiceId) -> Result<Vec<RunInfo>> {
        let _ = id;
        Ok(Vec::new())
    }

    /// Stops (kills) the run `name` of `id`; returns whether it was alive. A scheduler
    /// without one-shot runs has none to stop (the default: `false`).
    async fn stop_run(&self, id: &ServiceId, name: &str) -> Result<bool> {
        let _ = (id, name);
        Ok(false)
    }
}

/// The scheduler behind a trait object.
pub type DynContainerScheduler = dyn ContainerScheduler;

macro_rules! forward_scheduler {
    ($ty:ty) => {
        #[async_trait]
        impl<T: ContainerScheduler + ?Sized> ContainerScheduler for $ty {
            async fn deploy(&self, spec: ServiceSpec, opts: DeployOptions) -> Result<()> {
                (**self).deploy(spec, opts).await
            }
            async fn undeploy(&self, id: &ServiceId) -> Result<bool> {
                (**self).undeploy(id).await
            }
            async fn scale(&self, id: &ServiceId, instances: u32) -> Result<()> {
                (**self).scale(id, instances).await
            }
            async fn service(&self, id: &ServiceId) -> Result<Option<DeployedService>> {
                (**self).service(id).await
            }
            async fn services(&self) -> Result<Vec<DeployedService>> {
                (**self).services().await
            }
            fn watch(&self) -> BoxStream<'static, Result<SchedulerEvent>> {
                (**self).watch()
            }
            fn capabilities(&self) -> SchedulerCapabilities {
                (**self).capabilities()
            }
            async fn run_once(&self, spec: ServiceSpec) -> Result<()> {
                (**self).run_once(spec).await
            }
            async fn runs(&self, id: &ServiceId) -> Result<Vec<RunInfo>> {
                (**self).runs(id).await
            }
            async fn stop_run(&self, id: &ServiceId, name: &str) -> Result<bool> {
                (**self).stop_run(id, name).await
            }
        }
    };
}

forward_scheduler!(std::sync::Arc<T>);
forward_scheduler!(Box<T>);
