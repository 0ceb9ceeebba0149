//! Ownership of scheduler resources: a control plane acts only on what it created.

use std::fmt;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::error::{Error, Result};
use crate::scheduler::*;

/// A [`ContainerScheduler`] that marks everything it deploys or runs with its control plane's
/// identity (the label [`labels::OWNER`], carried as the platform's labels, annotations or
/// records) and acts only on services that carry it.
///
/// * `services`, `service` and `watch` show only its own services, so a reconciler on top
///   never sees, and so never removes, a service of another control plane or of none (one
///   created before owners were recorded, or by hand with Vamp's labels).
/// * `deploy`, `scale` and `undeploy` of a service that exists under another owner or none
///   fail with [`Error::NotOwned`] and change nothing.
/// * [`Owned::unowned`] lists those services for an operator, who can [`Owned::adopt`] one
///   (it gets this identity) or [`Owned::remove_unowned`] it.
///
/// ```
/// # futures_util::FutureExt::now_or_never(async {
/// use std::sync::Arc;
/// use vamp_core::layers::Owned;
/// use vamp_core::memory::InMemoryScheduler;
/// use vamp_core::model::Deployable;
/// use vamp_core::scheduler::{ContainerScheduler, DeployOptions, ServiceId, ServiceSpec};
///
/// let engine = Arc::new(InMemoryScheduler::new());
/// let first = Owned::new(Arc::clone(&engine), "control-plane-a");
/// let second = Owned::new(Arc::clone(&engine), "control-plane-b");
/// let id = ServiceId::new("sava", "sava", "sava:1.0");
/// let image = Deployable { deployable_type: None, definition: "sava:1.0".into() };
/// first.deploy(ServiceSpec::new(id.clone(), image.clone()), DeployOptions::default()).await.unwrap();
/// // The second control plane does not see it, cannot remove or replace it, and lists it.
/// assert!(second.services().await.unwrap().is_empty());
/// assert!(second.undeploy(&id).await.is_err());
/// assert!(second.deploy(ServiceSpec::new(id.clone(), image), DeployOptions::default()).await.is_err());
/// assert_eq!(second.unowned().await.unwrap()[0].spec.id, id);
/// assert_eq!(first.services().await.unwrap().len(), 1);
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Owned<T> {
    inner: T,
    owner: String,
}

/// The owner a service's labels name, if any.
pub fn owner_of(service: &DeployedService) -> Option<&str> {
    service.spec.labels.get(labels::OWNER).map(String::as_str)
}

impl<T> Owned<T> {
    /// Wraps `inner` for the control plane `owner` (see [`crate::ops::identity`]).
    pub fn new(inner: T, owner: impl Into<String>) -> Self {
        Self {
            inner,
            owner: owner.into(),
        }
    }

    /// This control plane's identity.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The wrapped scheduler.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    fn is_own(&self, service: &DeployedService) -> bool {
        owner_of(service) == Some(self.owner.as_str())
    }

    fn mark(&self, mut spec: ServiceSpec) -> ServiceSpec {
        spec.labels
            .insert(labels::OWNER.to_owned(), self.owner.clone());
        spec
    }
}

impl<T: ContainerScheduler> Owned<T> {
    fn not_owned(&self, service: &DeployedService) -> Error {
        Error::NotOwned {
            backend: self.inner.to_string(),
            service: service.spec.id.to_string(),
            owner: owner_of(service).map(str::to_owned),
            ours: self.owner.clone(),
        }
    }

    /// The service if it is this control plane's; `Ok(None)` if there is none;
    /// [`Error::NotOwned`] if it is another's or nobody's.
    async fn own(&self, id: &ServiceId) -> Result<Option<DeployedService>> {
        match self.inner.service(id).await? {
            Some(s) if self.is_own(&s) => Ok(Some(s)),
            Some(s) => Err(self.not_owned(&s)),
            None => Ok(None),
        }
    }

    /// The services of the scheduler's namespace that carry Vamp's labels but belong to
    /// another control plane or to none, sorted by id.
    ///
    /// # Errors
    /// The scheduler's errors.
    pub async fn unowned(&self) -> Result<Vec<DeployedService>> {
        let mut all = self.inner.services().await?;
        all.retain(|s| !self.is_own(s));
        Ok(all)
    }

    /// The service `id` if it is unowned (another control plane's or nobody's); `Ok(None)`
    /// if there is none.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a service of this control plane; the scheduler's errors.
    pub async fn unowned_service(&self, id: &ServiceId) -> Result<Option<DeployedService>> {
        match self.inner.service(id).await? {
            Some(s) if self.is_own(&s) => Err(Error::Invalid {
                what: "service",
                value: id.to_string(),
                reason: "it belongs to this control plane: undeploy its deployment instead".into(),
            }),
            other => Ok(other),
        }
    }

    /// Takes over an unowned service: it is deployed again with this identity (and from then
    /// on reconciled like the others: removed if no stored deployment wants it). Returns
    /// whether it changed (`false`: it was already this control plane's).
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such service; the scheduler's errors.
    pub async fn adopt(&self, id: &ServiceId) -> Result<bool> {
        let service = self
            .inner
            .service(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                backend: self.inner.to_string(),
                kind: "service".into(),
                name: id.to_string(),
            })?;
        if self.is_own(&service) {
            return Ok(false);
        }
        let spec = self.mark(service.spec);
        self.inner.deploy(spec, DeployOptions::default()).await?;
        Ok(true)
    }

    /// Removes an unowned service; returns whether it existed.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a service of this control plane (remove its deployment
    /// instead); the scheduler's errors.
    pub async fn remove_unowned(&self, id: &ServiceId) -> Result<bool> {
        match self.unowned_service(id).await? {
            None => Ok(false),
            Some(_) => self.inner.undeploy(id).await,
        }
    }
}

impl<T: fmt::Display> fmt::Display for Owned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: ContainerScheduler> ContainerScheduler for Owned<T> {
    async fn deploy(&self, spec: ServiceSpec, opts: DeployOptions) -> Result<()> {
        self.own(&spec.id).await?;
        self.inner.deploy(self.mark(spec), opts).await
    }

    async fn undeploy(&self, id: &ServiceId) -> Result<bool> {
        // With no service left, the inner undeploy still stops the runs of `id`.
        self.own(id).await?;
        self.inner.undeploy(id).await
    }

    async fn scale(&self, id: &ServiceId, instances: u32) -> Result<()> {
        if self.own(id).await?.is_none() {
            return Err(Error::NotFound {
                backend: self.inner.to_string(),
                kind: "service".into(),
                name: id.to_string(),
            });
        }
        self.inner.scale(id, instances).await
    }

    async fn service(&self, id: &ServiceId) -> Result<Option<DeployedService>> {
        Ok(self.inner.service(id).await?.filter(|s| self.is_own(s)))
    }

    async fn services(&self) -> Result<Vec<DeployedService>> {
        let mut all = self.inner.services().await?;
        all.retain(|s| self.is_own(s));
        Ok(all)
    }

    /// Changes of its own services; an `Undeployed` event (which names no owner) passes
    /// whoever owned the service.
    fn watch(&self) -> BoxStream<'static, Result<SchedulerEvent>> {
        let owner = self.owner.clone();
        self.inner
            .watch()
            .filter(move |e| {
                let keep = match e {
                    Ok(
                        SchedulerEvent::Deployed(s)
                        | SchedulerEvent::Updated(s)
                        | SchedulerEvent::InstancesChanged(s),
                    ) => owner_of(s) == Some(owner.as_str()),
                    _ => true,
                };
                std::future::ready(keep)
            })
            .boxed()
    }

    fn capabilities(&self) -> SchedulerCapabilities {
        self.inner.capabilities()
    }

    async fn run_once(&self, spec: ServiceSpec) -> Result<()> {
        self.inner.run_once(self.mark(spec)).await
    }

    async fn runs(&self, id: &ServiceId) -> Result<Vec<RunInfo>> {
        self.inner.runs(id).await
    }

    async fn stop_run(&self, id: &ServiceId, name: &str) -> Result<bool> {
        self.inner.stop_run(id, name).await
    }
}
