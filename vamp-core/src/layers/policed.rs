//! Refuses what the operator's policy refuses at the scheduler itself.

use std::fmt;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::scheduler::*;

/// A [`ContainerScheduler`] that refuses to deploy or run a spec its [`Policy`] refuses
/// (`Error::Invalid` naming the breed, field and rule), whatever stored it: artifacts stored
/// before the policy was tightened, or a caller that skipped the API's check.
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use vamp_core::layers::Policed;
/// use vamp_core::memory::InMemoryScheduler;
/// use vamp_core::model::{Argument, Deployable};
/// use vamp_core::policy::Policy;
/// use vamp_core::scheduler::{ContainerScheduler, DeployOptions, ServiceId, ServiceSpec};
///
/// let scheduler = Policed::new(InMemoryScheduler::new(), Policy::default());
/// let image = Deployable { deployable_type: None, definition: "sava:1.0".into() };
/// let mut spec = ServiceSpec::new(ServiceId::new("d", "c", "sava"), image);
/// spec.arguments.push(Argument { key: "cap-add".into(), value: "SYS_ADMIN".into() });
/// let e = scheduler.deploy(spec, DeployOptions::default()).await.unwrap_err();
/// assert!(e.to_string().contains("capabilities"), "{e}");
/// assert!(scheduler.services().await.unwrap().is_empty());
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Policed<T> {
    inner: T,
    policy: Policy,
}

impl<T> Policed<T> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: T, policy: Policy) -> Self {
        Self { inner, policy }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn check(&self, spec: &ServiceSpec) -> Result<()> {
        self.policy.check(spec).map_err(|v| Error::Invalid {
            what: "deployable",
            value: v.breed.clone(),
            reason: v.to_string(),
        })
    }
}

impl<T: fmt::Display> fmt::Display for Policed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: ContainerScheduler> ContainerScheduler for Policed<T> {
    async fn deploy(&self, spec: ServiceSpec, opts: DeployOptions) -> Result<()> {
        self.check(&spec)?;
        self.inner.deploy(spec, opts).await
    }

    async fn undeploy(&self, id: &ServiceId) -> Result<bool> {
        self.inner.undeploy(id).await
    }

    async fn scale(&self, id: &ServiceId, instances: u32) -> Result<()> {
        self.inner.scale(id, instances).await
    }

    async fn service(&self, id: &ServiceId) -> Result<Option<DeployedService>> {
        self.inner.service(id).await
    }

    async fn services(&self) -> Result<Vec<DeployedService>> {
        self.inner.services().await
    }

    fn watch(&self) -> BoxStream<'static, Result<SchedulerEvent>> {
        self.inner.watch()
    }

    fn capabilities(&self) -> SchedulerCapabilities {
        self.inner.capabilities()
    }

    async fn run_once(&self, spec: ServiceSpec) -> Result<()> {
        self.check(&spec)?;
        self.inner.run_once(spec).await
    }

    async fn runs(&self, id: &ServiceId) -> Result<Vec<RunInfo>> {
        self.inner.runs(id).await
    }

    async fn stop_run(&self, id: &ServiceId, name: &str) -> Result<bool> {
        self.inner.stop_run(id, name).await
    }
}
