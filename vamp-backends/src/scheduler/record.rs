//! What the schedulers that keep their state in the platform share: the spec as JSON (stored
//! in labels), its hash, and the watch fed by comparing what the platform reports with what
//! was seen before.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures_channel::mpsc;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};
use vamp_core::Error;
use vamp_core::model::{Argument, Deployable, HealthCheck, PortType};
use vamp_core::node::Node;
use vamp_core::scheduler::*;

fn health_json(h: &HealthCheck) -> Value {
    json!({
        "path": h.path, "port": h.port, "initial_delay": h.initial_delay, "timeout": h.timeout,
        "interval": h.interval, "failures": h.failures, "protocol": h.protocol,
    })
}

fn health_from_json(v: &Value) -> Option<HealthCheck> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let i = |k: &str| v.get(k).and_then(Value::as_i64);
    Some(HealthCheck {
        path: s("path")?,
        port: s("port")?,
        initial_delay: i("initial_delay")?,
        timeout: i("timeout")?,
        interval: i("interval")?,
        failures: i("failures")?,
        protocol: s("protocol")?,
    })
}

/// The spec as JSON, without the number of instances when `with_instances` is false (what
/// the spec hash covers: a scale keeps the containers).
pub(crate) fn spec_json(spec: &ServiceSpec, with_instances: bool) -> Value {
    let mut v = json!({
        "deployment": spec.id.deployment,
        "cluster": spec.id.cluster,
        "service": spec.id.service,
        "deployable": {"type": spec.deployable.deployable_type, "definition": spec.deployable.definition},
        "cpu": spec.cpu,
        "memory_mb": spec.memory_mb,
        "ports": spec.ports.iter().map(|p| json!({"name": p.name, "container_port": p.container_port, "type": p.port_type.to_string()})).collect::<Vec<_>>(),
        "environment": spec.environment,
        "arguments": spec.arguments.iter().map(|a| json!({"key": a.key, "value": a.value})).collect::<Vec<_>>(),
        "labels": spec.labels,
        "health_checks": spec.health_checks.iter().map(health_json).collect::<Vec<_>>(),
        "network": spec.network,
        "dialects": Node::Map(spec.dialects.clone()).to_json(),
    });
    if with_instances {
        v["instances"] = json!(spec.instances);
    }
    v
}

/// The spec as JSON for an annotation or label that nothing is rebuilt from (Kubernetes,
/// Marathon): without the number of instances, credentials in the environment as digests
/// ([`recorded_environment`]), so they are not copied into metadata.
#[cfg_attr(
    not(any(feature = "scheduler-kubernetes", feature = "scheduler-marathon")),
    allow(dead_code)
)]
pub(crate) fn metadata_json(spec: &ServiceSpec) -> Value {
    let mut v = spec_json(spec, false);
    v["environment"] = json!(recorded_environment(&spec.environment));
    v
}

pub(crate) fn spec_from_json(v: &Value) -> Option<ServiceSpec> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let id = ServiceId::new(s("deployment")?, s("cluster")?, s("service")?);
    let d = v.get("deployable")?;
    let deployable = Deployable {
        deployable_type: d.get("type").and_then(Value::as_str).map(str::to_owned),
        definition: d.get("definition")?.as_str()?.to_owned(),
    };
    let mut spec = ServiceSpec::new(id, deployable);
    spec.instances = u32::try_from(v.get("instances")?.as_u64()?).ok()?;
    spec.cpu = v.get("cpu")?.as_f64()?;
    spec.memory_mb = v.get("memory_mb")?.as_f64()?;
    for p in v.get("ports")?.as_array()? {
        spec.ports.push(PortSpec {
            name: p.get("name")?.as_str()?.to_owned(),
            container_port: u16::try_from(p.get("container_port")?.as_u64()?).ok()?,
            port_type: if p.get("type")?.as_str()? == "tcp" {
                PortType::Tcp
            } else {
                PortType::Http
            },
        });
    }
    for (k, val) in v.get("environment")?.as_object()? {
        spec.environment.insert(k.clone(), val.as_str()?.to_owned());
    }
    for a in v.get("arguments")?.as_array()? {
        spec.arguments.push(Argument {
            key: a.get("key")?.as_str()?.to_owned(),
            value: a.get("value")?.as_str()?.to_owned(),
        });
    }
    spec.labels = v
        .get("labels")?
        .as_object()?
        .iter()
        .map(|(k, val)| Some((k.clone(), val.as_str()?.to_owned())))
        .collect::<Option<_>>()?;
    for h in v.get("health_checks")?.as_array()? {
        spec.health_checks.push(health_from_json(h)?);
    }
    spec.network = v.get("network").and_then(Value::as_str).map(str::to_owned);
    if let Node::Map(m) = Node::from_json(v.get("dialects")?) {
        spec.dialects = m;
    }
    Some(spec)
}

#[cfg_attr(not(feature = "scheduler-docker"), allow(dead_code))]
pub(crate) fn spec_hash(spec: &ServiceSpec) -> String {
    vamp_core::lookup::hex_sha1(&spec_json(spec, false).to_string(), "")[..12].to_owned()
}

/// Deep-merges `patch` into `base` (objects merged key by key, anything else replaced): how
/// Vamp merged a scheduler dialect into the request.
#[cfg_attr(
    not(any(
        feature = "scheduler-docker",
        feature = "scheduler-kubernetes",
        feature = "scheduler-marathon"
    )),
    allow(dead_code)
)]
pub(crate) fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The services last seen and the watchers to tell about changes.
#[derive(Default)]
#[cfg_attr(
    not(any(
        feature = "scheduler-docker",
        feature = "scheduler-kubernetes",
        feature = "scheduler-marathon"
    )),
    allow(dead_code)
)]
pub(crate) struct Watchers {
    known: Mutex<BTreeMap<ServiceId, DeployedService>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Result<SchedulerEvent, Error>>>>,
}

#[cfg_attr(
    not(any(
        feature = "scheduler-docker",
        feature = "scheduler-kubernetes",
        feature = "scheduler-marathon"
    )),
    allow(dead_code)
)]
impl Watchers {
    /// A new watch.
    pub(crate) fn subscribe(&self) -> BoxStream<'static, Result<SchedulerEvent, Error>> {
        let (tx, rx) = mpsc::unbounded();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx.boxed()
    }

    /// What was seen last.
    #[cfg_attr(not(feature = "scheduler-docker"), allow(dead_code))]
    pub(crate) fn known(&self) -> BTreeMap<ServiceId, DeployedService> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn send(&self, events: Vec<SchedulerEvent>) {
        if events.is_empty() {
            return;
        }
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            subscribers.retain(|tx| tx.unbounded_send(Ok(e.clone())).is_ok());
        }
    }

    /// Compares `now` with what was seen before and tells the watchers: `Deployed` for a new
    /// service, `Updated` for a changed spec (other than its instances), `InstancesChanged`
    /// for a scale or instances that changed, `Undeployed` for a service gone. Callers
    /// serialise calls (one read of the platform at a time), so events come in order.
    pub(crate) fn publish(&self, now: &BTreeMap<ServiceId, DeployedService>) {
        let mut events = Vec::new();
        {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            for (id, s) in now {
                match known.get(id) {
                    None => events.push(SchedulerEvent::Deployed(s.clone())),
                    Some(before) => {
                        let mut a = before.spec.clone();
                        a.instances = s.spec.instances;
                        if a != s.spec {
                            events.push(SchedulerEvent::Updated(s.clone()));
                        } else if before != s {
                            events.push(SchedulerEvent::InstancesChanged(s.clone()));
                        }
                    }
                }
            }
            for id in known.keys() {
                if !now.contains_key(id) {
                    events.push(SchedulerEvent::Undeployed(id.clone()));
                }
            }
            known.clone_from(now);
        }
        self.send(events);
    }

    /// Reports instance `name` as stopped (a platform's event said it died).
    #[cfg_attr(not(feature = "scheduler-docker"), allow(dead_code))]
    pub(crate) fn stopped(&self, name: &str) {
        let event = {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            known.values_mut().find_map(|service| {
                let instance = service
                    .instances
                    .iter_mut()
                    .find(|i| i.name == name && i.running)?;
                instance.running = false;
                if instance.healthy.is_some() {
                    instance.healthy = Some(false);
                }
                Some(SchedulerEvent::InstancesChanged(service.clone()))
            })
        };
        self.send(event.into_iter().collect());
    }
}
