//! The in-memory container scheduler: simulates instances with addresses, ports and health.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_channel::mpsc;
use futures_util::stream::{BoxStream, StreamExt};
use indexmap::IndexMap;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::scheduler::*;

#[derive(Debug)]
struct State {
    services: BTreeMap<ServiceId, DeployedService>,
    next_port: u32,
    next_instance: u64,
    subscribers: Vec<mpsc::UnboundedSender<Result<SchedulerEvent>>>,
    host: String,
    /// One-shot runs, in order (the most recent 10,000).
    runs: std::collections::VecDeque<ServiceSpec>,
}

impl State {
    fn emit(&mut self, event: SchedulerEvent) {
        self.subscribers
            .retain(|tx| tx.unbounded_send(Ok(event.clone())).is_ok());
    }

    fn new_instance(&mut self, spec: &ServiceSpec) -> InstanceState {
        self.next_instance += 1;
        let ports: IndexMap<String, u16> = spec
            .ports
            .iter()
            .map(|p| {
                let port = 31_000 + (self.next_port % 30_000);
                self.next_port += 1;
                (p.name.clone(), port as u16)
            })
            .collect();
        let name = spec.id.instance_name(self.next_instance);
        InstanceState {
            name,
            host: self.host.clone(),
            ports,
            running: true,
            healthy: (!spec.health_checks.is_empty()).then_some(true),
        }
    }

    /// Adds or removes instances to match the spec; instances are replaced when `replace`.
    fn converge(&mut self, service: &mut DeployedService, replace: bool) {
        if replace {
            service.instances.clear();
        }
        service.instances.truncate(service.spec.instances as usize);
        while service.instances.len() < service.spec.instances as usize {
            let i = self.new_instance(&service.spec);
            service.instances.push(i);
        }
    }
}

/// An in-memory [`ContainerScheduler`]: the embedded default for tests and simulations.
///
/// Instances appear at once, on host `127.0.0.1`, each with a distinct port per spec port
/// (from 31000). Services with health checks start healthy; [`set_healthy`](Self::set_healthy)
/// and [`stop_instance`](Self::stop_instance) simulate failures. Cloning shares the state.
#[derive(Clone)]
pub struct InMemoryScheduler {
    state: Arc<Mutex<State>>,
}

impl Default for InMemoryScheduler {
    fn default() -> Self {
        Self::new()
    }
}

/// The most instances one service may have in an [`InMemoryScheduler`] (each is a record
/// in memory; a larger count is refused, not looped over).
pub const MAX_INSTANCES: u32 = 100_000;

fn check_instances(id: &ServiceId, instances: u32) -> Result<()> {
    if instances > MAX_INSTANCES {
        return Err(Error::Invalid {
            what: "instances",
            value: format!("{id}: {instances}"),
            reason: format!(
                "the in-memory scheduler runs at most {MAX_INSTANCES} instances of a service"
            ),
        });
    }
    Ok(())
}

impl InMemoryScheduler {
    /// A scheduler with no services.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                services: BTreeMap::new(),
                next_port: 0,
                next_instance: 0,
                subscribers: Vec::new(),
                host: "127.0.0.1".into(),
                runs: std::collections::VecDeque::new(),
            })),
        }
    }

    /// The one-shot runs so far ([`ContainerScheduler::run_once`]), oldest first (at most the
    /// last 10,000).
    pub fn started_runs(&self) -> Vec<ServiceSpec> {
        self.state.lock().runs.iter().cloned().collect()
    }

    /// Sets the health of instance `index` of a service.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the service or instance does not exist.
    pub fn set_healthy(&self, id: &ServiceId, index: usize, healthy: bool) -> Result<()> {
        self.change_instance(id, index, |i| i.healthy = Some(healthy))
    }

    /// Stops instance `index` of a service (it stays listed, not running and unhealthy).
    ///
    /// # Errors
    /// [`Error::NotFound`] when the service or instance does not exist.
    pub fn stop_instance(&self, id: &ServiceId, index: usize) -> Result<()> {
        self.change_instance(id, index, |i| {
            i.running = false;
            if i.healthy.is_some() {
                i.healthy = Some(false);
            }
        })
    }

    fn change_instance(
        &self,
        id: &ServiceId,
        index: usize,
        f: impl FnOnce(&mut InstanceState),
    ) -> Result<()> {
        let mut s = self.state.lock();
        let not_found = || Error::NotFound {
            backend: "InMemoryScheduler".into(),
            kind: "instance".into(),
            name: format!("{id}#{index}"),
        };
        let service = s.services.get_mut(id).ok_or_else(not_found)?;
        f(service.instances.get_mut(index).ok_or_else(not_found)?);
        let snapshot = service.clone();
        s.emit(SchedulerEvent::InstancesChanged(snapshot));
        Ok(())
    }
}

impl fmt::Debug for InMemoryScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryScheduler")
            .field("services", &self.state.lock().services.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for InMemoryScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InMemoryScheduler")
    }
}

#[async_trait]
impl ContainerScheduler for InMemoryScheduler {
    async fn deploy(&self, spec: ServiceSpec, opts: DeployOptions) -> Result<()> {
        let spec = spec.normalized()?;
        check_instances(&spec.id, spec.instances)?;
        let mut s = self.state.lock();
        match s.services.remove(&spec.id) {
            None => {
                let mut service = DeployedService {
                    spec,
                    instances: Vec::new(),
                };
                s.converge(&mut service, false);
                s.services.insert(service.spec.id.clone(), service.clone());
                s.emit(SchedulerEvent::Deployed(service));
            }
            Some(mut service) => {
                if service.spec == spec && !opts.force {
                    s.services.insert(spec.id.clone(), service);
                    return Ok(());
                }
                // Anything but the instance count changes the instances: replace them.
                let mut only_count = service.spec.clone();
                only_count.instances = spec.instances;
                let replace = only_count != spec || opts.force;
                service.spec = spec;
                s.converge(&mut service, replace);
                s.services.insert(service.spec.id.clone(), service.clone());
                s.emit(SchedulerEvent::Updated(service));
            }
        }
        Ok(())
    }

    async fn undeploy(&self, id: &ServiceId) -> Result<bool> {
        let mut s = self.state.lock();
        let existed = s.services.remove(id).is_some();
        if existed {
            s.emit(SchedulerEvent::Undeployed(id.clone()));
        }
        Ok(existed)
    }

    async fn scale(&self, id: &ServiceId, instances: u32) -> Result<()> {
        check_instances(id, instances)?;
        let mut s = self.state.lock();
        let mut service = s.services.remove(id).ok_or_else(|| Error::NotFound {
            backend: self.to_string(),
            kind: "service".into(),
            name: id.to_string(),
        })?;
        let changed = service.spec.instances != instances;
        service.spec.instances = instances;
        s.converge(&mut service, false);
        s.services.insert(id.clone(), service.clone());
        if changed {
            s.emit(SchedulerEvent::InstancesChanged(service));
        }
        Ok(())
    }

    async fn service(&self, id: &ServiceId) -> Result<Option<DeployedService>> {
        Ok(self.state.lock().services.get(id).cloned())
    }

    async fn services(&self) -> Result<Vec<DeployedService>> {
        Ok(self.state.lock().services.values().cloned().collect())
    }

    fn watch(&self) -> BoxStream<'static, Result<SchedulerEvent>> {
        let (tx, rx) = mpsc::unbounded();
        self.state.lock().subscribers.push(tx);
        rx.boxed()
    }

    async fn run_once(&self, spec: ServiceSpec) -> Result<()> {
        let spec = spec.normalized()?;
        let mut s = self.state.lock();
        s.runs.push_back(spec);
        while s.runs.len() > 10_000 {
            s.runs.pop_front();
        }
        Ok(())
    }

    fn capabilities(&self) -> SchedulerCapabilities {
        SchedulerCapabilities {
            scale: true,
            health_checks: true,
            instance_ports: true,
            rolling_update: false,
            watch: true,
            reachable_instances: false,
            adopts_services: false,
            deployable_types: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::conformance::scheduler as suite;
    use crate::model::{Deployable, HealthCheck, PortType};

    fn image() -> Deployable {
        Deployable {
            deployable_type: None,
            definition: "magneticio/sava:1.0.0".into(),
        }
    }

    #[tokio::test]
    async fn an_instance_count_past_the_limit_is_refused_not_looped_over() {
        let s = InMemoryScheduler::new();
        let id = ServiceId::new("d", "c", "s");
        let image = crate::model::Deployable {
            deployable_type: None,
            definition: "x".into(),
        };
        let e = s
            .deploy(
                ServiceSpec::new(id.clone(), image.clone()).with_instances(u32::MAX),
                DeployOptions::default(),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        assert!(s.services().await.unwrap().is_empty());
        s.deploy(
            ServiceSpec::new(id.clone(), image),
            DeployOptions::default(),
        )
        .await
        .unwrap();
        assert!(s.scale(&id, u32::MAX).await.is_err());
        assert_eq!(s.service(&id).await.unwrap().unwrap().instances.len(), 1);
    }

    #[tokio::test]
    async fn in_memory_passes_the_suite() {
        suite::run_all(&InMemoryScheduler::new(), "direct", &image()).await;
        let arc: Arc<DynContainerScheduler> = Arc::new(InMemoryScheduler::new());
        suite::run_all(&arc, "arc", &image()).await;
        let boxed: Box<DynContainerScheduler> = Box::<InMemoryScheduler>::default();
        suite::run_all(&boxed, "box", &image()).await;
    }

    #[tokio::test]
    async fn simulated_health_and_failures() {
        let s = InMemoryScheduler::new();
        let id = ServiceId::new("d", "c", "s");
        let mut spec = ServiceSpec::new(id.clone(), image())
            .with_instances(2)
            .with_port("web", 8080, PortType::Http);
        spec.health_checks.push(HealthCheck {
            path: "/".into(),
            port: "web".into(),
            initial_delay: 0,
            timeout: 1,
            interval: 1,
            failures: 1,
            protocol: "HTTP".into(),
        });
        s.deploy(spec.clone(), DeployOptions::default())
            .await
            .unwrap();
        let mut w = s.watch();
        s.set_healthy(&id, 1, false).unwrap();
        let svc = s.service(&id).await.unwrap().unwrap();
        assert_eq!(
            svc.instances.iter().map(|i| i.healthy).collect::<Vec<_>>(),
            [Some(true), Some(false)]
        );
        assert!(matches!(
            w.next().now_or_never(),
            Some(Some(Ok(SchedulerEvent::InstancesChanged(_))))
        ));
        s.stop_instance(&id, 0).unwrap();
        assert!(!s.service(&id).await.unwrap().unwrap().instances[0].running);
        assert!(s.set_healthy(&id, 5, true).is_err());
        // Redeploying the same spec changes nothing; force replaces the instances.
        let before = s.service(&id).await.unwrap().unwrap().instances;
        s.deploy(spec.clone(), DeployOptions::default())
            .await
            .unwrap();
        assert_eq!(s.service(&id).await.unwrap().unwrap().instances, before);
        s.deploy(
            spec,
            DeployOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let after = s.service(&id).await.unwrap().unwrap().instances;
        assert!(
            after
                .iter()
                .all(|i| i.running && !before.iter().any(|b| b.name == i.name)),
            "force replaces every instance"
        );
    }
}
