//! The gateway driver: the control plane's side of the key-value store (runtime.md §2.2–2.3).
//! [`GatewayDriver::push`] writes the gateways and, for every marshaller, the rendered HAProxy
//! configuration that gateway agents apply, each only when it changed, and publishes Vamp's
//! events: `gateways:<name>` + `deployed`/`undeployed` against the previously pushed set, and
//! `marshaller:configuration`, `type:haproxy`, `name:<marshaller>` after a configuration
//! changed.
//!
//! | key (below `/vamp/<namespace>`) | value |
//! |---|---|
//! | `/gateways` | the pushed gateways as a JSON array (canonical form) |
//! | `/gateways/haproxy/<marshaller>/configuration` | the rendered configuration |
//!
//! Unlike Vamp, "changed" compares with what the store holds now, not with a cache of the
//! driver's own last write, so a value edited or lost in the store is written again on the next
//! push. Jtwig template overrides (`…/template`) are not supported: this renderer has no
//! template; a non-blank override is reported in [`PushReport::ignored_templates`].
//!
//! ```
//! # futures_util::FutureExt::now_or_never(async {
//! use std::sync::Arc;
//! use vamp_core::dsl::{read_str, AnyArtifact};
//! use vamp_core::kv::{keys, KeyValueStoreExt};
//! use vamp_core::memory::InMemoryKv;
//! use vamp_core::model::ArtifactKind;
//! use vamp_haproxy::driver::{GatewayDriver, Marshaller};
//!
//! let kv = Arc::new(InMemoryKv::new());
//! let driver = GatewayDriver::new(kv.clone(), "default", vec![Marshaller::new("1.7")]);
//! let AnyArtifact::Gateway(g) = read_str("name: sava\nport: 9050\nroutes:\n  sava:1.0: {weight: 100%}\n", Some(ArtifactKind::Gateway))
//!     .unwrap().remove(0) else { unreachable!() };
//! let report = driver.push(&[g.clone()]).await.unwrap();
//! assert!(report.gateways_written && report.configurations_written == ["1.7"]);
//! assert_eq!(report.deployed, ["sava"]);
//! let config = kv.get_string(&keys::haproxy_configuration("default", "1.7").unwrap()).await.unwrap().unwrap();
//! assert!(config.contains("bind 0.0.0.0:9050"));
//! // Nothing changed: nothing written.
//! assert_eq!(driver.push(&[g]).await.unwrap().configurations_written.len(), 0);
//! # }).unwrap();
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use vamp_core::dsl::{AnyArtifact, to_node};
use vamp_core::kv::{DynKeyValueStore, KeyValueStoreExt, keys};
use vamp_core::metrics::DynEventStore;
use vamp_core::model::{Event, Gateway};
use vamp_core::node::Node;

use crate::incremental::IncrementalRenderer;
use crate::{RenderOptions, render};

/// One marshaller: a name (the key segment, Vamp's `1.7`) and how to render.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Marshaller {
    /// The name (`vamp.gateway-driver.marshallers[].name`).
    pub name: String,
    /// How to render (socket directory, bind address, virtual hosts).
    pub options: RenderOptions,
}

impl Marshaller {
    /// A marshaller named `name` rendering with the default options.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            options: RenderOptions::default(),
        }
    }

    /// Sets the render options.
    #[must_use]
    pub fn with_options(mut self, options: RenderOptions) -> Self {
        self.options = options;
        self
    }
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushReport {
    /// `/gateways` was written.
    pub gateways_written: bool,
    /// The marshallers whose configuration was written.
    pub configurations_written: Vec<String>,
    /// Gateways new since the previous push.
    pub deployed: Vec<String>,
    /// Gateways gone since the previous push.
    pub undeployed: Vec<String>,
    /// Marshallers with a template override in the store, which this renderer ignores.
    pub ignored_templates: Vec<String>,
}

/// Why a push failed: a gateway that cannot be rendered (nothing is written then), or the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// A gateway cannot be rendered; nothing was written.
    #[error(transparent)]
    Render(#[from] crate::RenderError),
    /// The key-value store failed.
    #[error(transparent)]
    Store(#[from] vamp_core::Error),
}

/// What to write, computed from what the store holds (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushPlan {
    /// The `/gateways` value to write, if it changed.
    pub gateways: Option<String>,
    /// `(marshaller, configuration)` to write, for those that changed.
    pub configurations: Vec<(String, String)>,
    /// Gateways new since the previous push.
    pub deployed: Vec<String>,
    /// Gateways gone since the previous push.
    pub undeployed: Vec<String>,
}

/// The names in a `/gateways` value (an array of objects with `name`); the rest of each
/// gateway is skipped without being built (the value holds every gateway).
fn names(gateways_json: Option<&str>) -> BTreeSet<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        name: Option<serde_json::Value>,
    }
    gateways_json
        .and_then(|j| serde_json::from_str::<Vec<Named>>(j).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| match g.name {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        })
        .collect()
}

/// Plans a push of `gateways` given the store's current `/gateways` value and current
/// configuration per marshaller (same order as `marshallers`).
///
/// # Errors
/// [`crate::RenderError`] when a gateway cannot be rendered.
pub fn plan_push(
    gateways: &[Gateway],
    marshallers: &[Marshaller],
    current_gateways: Option<&str>,
    current_configurations: &[Option<String>],
) -> Result<PushPlan, crate::RenderError> {
    let json = gateways_json(gateways.iter().map(gateway_json));
    let mut texts = Vec::new();
    for m in marshallers {
        texts.push((m.name.clone(), render(gateways, &m.options)?.render()));
    }
    Ok(plan_with(
        gateways,
        json,
        texts,
        current_gateways,
        names(current_gateways),
        current_configurations,
    ))
}

/// One gateway as the `/gateways` value holds it (compact canonical JSON).
fn gateway_json(g: &Gateway) -> String {
    to_node(&AnyArtifact::Gateway(g.clone()))
        .to_json()
        .to_string()
}

/// The `/gateways` value: the gateways' JSON in an array, as `serde_json` writes it.
fn gateways_json<S: AsRef<str>>(pieces: impl Iterator<Item = S>) -> String {
    let mut out = String::from("[");
    for (i, p) in pieces.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(p.as_ref());
    }
    out.push(']');
    out
}

/// The plan, from the rendered texts.
fn plan_with<C: AsRef<[u8]>>(
    gateways: &[Gateway],
    json: String,
    texts: Vec<(String, String)>,
    current_gateways: Option<&str>,
    before: BTreeSet<String>,
    current_configurations: &[Option<C>],
) -> PushPlan {
    let mut configurations = Vec::new();
    for (i, (name, text)) in texts.into_iter().enumerate() {
        let current = current_configurations
            .get(i)
            .and_then(Option::as_ref)
            .map(AsRef::as_ref);
        if current != Some(text.as_bytes()) {
            configurations.push((name, text));
        }
    }
    let after: BTreeSet<String> = gateways.iter().map(|g| g.name.clone()).collect();
    PushPlan {
        gateways: (current_gateways != Some(json.as_str())).then_some(json),
        configurations,
        deployed: after.difference(&before).cloned().collect(),
        undeployed: before.difference(&after).cloned().collect(),
    }
}

/// What a driver keeps between pushes: each gateway as last pushed, its JSON, and per
/// marshaller an [`IncrementalRenderer`] holding its text, so a push renders and serialises
/// only the gateways that changed.
#[derive(Default)]
struct Kept {
    gateways: HashMap<String, (Gateway, String)>,
    renderers: Vec<IncrementalRenderer>,
    /// The names of the last push, in its order.
    order: Vec<String>,
}

impl Kept {
    /// The names in the store's `/gateways` value: when it is what the last push wrote
    /// (compared piece by piece, without parsing), the kept names; otherwise parsed.
    fn names_in(&self, current: Option<&str>) -> BTreeSet<String> {
        let Some(mut rest) = current.and_then(|c| c.strip_prefix('[')) else {
            return names(current);
        };
        for (i, name) in self.order.iter().enumerate() {
            let Some((_, piece)) = self.gateways.get(name) else {
                return names(current);
            };
            if i > 0 {
                match rest.strip_prefix(',') {
                    Some(r) => rest = r,
                    None => return names(current),
                }
            }
            match rest.strip_prefix(piece.as_str()) {
                Some(r) => rest = r,
                None => return names(current),
            }
        }
        if rest == "]" {
            self.order.iter().cloned().collect()
        } else {
            names(current)
        }
    }

    /// Brings the kept state to `gateways` and returns the `/gateways` value and each
    /// marshaller's configuration. On a render error the state stays consistent (what was
    /// applied is recorded) and the error is returned.
    fn update(
        &mut self,
        gateways: &[Gateway],
        wanted: &HashSet<&str>,
        marshallers: &[Marshaller],
    ) -> Result<(String, Vec<(String, String)>), crate::RenderError> {
        if self.renderers.len() != marshallers.len() {
            self.gateways.clear();
            self.renderers = marshallers
                .iter()
                .map(|m| IncrementalRenderer::new(m.options.clone()))
                .collect::<Result<_, _>>()?;
        }
        let gone: Vec<String> = self
            .gateways
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            for r in &mut self.renderers {
                r.remove(&name);
            }
            self.gateways.remove(&name);
        }
        for g in gateways {
            if self
                .gateways
                .get(&g.name)
                .is_some_and(|(kept, _)| kept == g)
            {
                continue;
            }
            // A gateway some renderers took and another refused: forget it everywhere, so the
            // next push renders it again.
            if let Err(e) = self.renderers.iter_mut().try_for_each(|r| r.upsert(g)) {
                for r in &mut self.renderers {
                    r.remove(&g.name);
                }
                self.gateways.remove(&g.name);
                return Err(e);
            }
            self.gateways
                .insert(g.name.clone(), (g.clone(), gateway_json(g)));
        }
        let json = gateways_json(gateways.iter().map(|g| self.gateways[&g.name].1.as_str()));
        self.order = gateways.iter().map(|g| g.name.clone()).collect();
        // Each renderer keeps its text assembled and writes only the changed gateways in place.
        let texts = marshallers
            .iter()
            .zip(&mut self.renderers)
            .map(|(m, r)| (m.name.clone(), r.text().to_owned()))
            .collect();
        Ok((json, texts))
    }
}

/// Writes gateways and their HAProxy configurations to the key-value store.
#[derive(Clone)]
pub struct GatewayDriver {
    kv: Arc<DynKeyValueStore>,
    events: Option<Arc<DynEventStore>>,
    namespace: String,
    marshallers: Vec<Marshaller>,
    kept: Arc<Mutex<Kept>>,
}

impl std::fmt::Debug for GatewayDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayDriver")
            .field("kv", &self.kv.to_string())
            .field("namespace", &self.namespace)
            .field("marshallers", &self.marshallers)
            .finish_non_exhaustive()
    }
}

impl GatewayDriver {
    /// A driver writing below `/vamp/<namespace>` with these marshallers.
    pub fn new(
        kv: Arc<DynKeyValueStore>,
        namespace: impl Into<String>,
        marshallers: Vec<Marshaller>,
    ) -> Self {
        Self {
            kv,
            events: None,
            namespace: namespace.into(),
            marshallers,
            kept: Arc::default(),
        }
    }

    /// Publishes Vamp's gateway and marshaller events here.
    #[must_use]
    pub fn with_events(mut self, events: Arc<DynEventStore>) -> Self {
        self.events = Some(events);
        self
    }

    /// The gateways of the last push, as the store holds them (canonical JSON), if any.
    ///
    /// # Errors
    /// [`PushError::Store`] when the store fails.
    pub async fn pull(&self) -> Result<Option<serde_json::Value>, PushError> {
        let raw = self
            .kv
            .get_string(&keys::gateways(&self.namespace)?)
            .await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Pushes `gateways`: renders every marshaller's configuration first (a gateway that
    /// cannot be rendered fails the push before anything is written), then writes what
    /// changed, then publishes the events.
    ///
    /// # Errors
    /// [`PushError::Render`] (nothing written) or [`PushError::Store`].
    pub async fn push(&self, gateways: &[Gateway]) -> Result<PushReport, PushError> {
        let gateways_key = keys::gateways(&self.namespace)?;
        let current_gateways = self.kv.get_string(&gateways_key).await?;
        let mut current = Vec::new();
        let mut ignored_templates = Vec::new();
        for m in &self.marshallers {
            let key = keys::haproxy_configuration(&self.namespace, &m.name)?;
            // Compared as bytes: no copy of a configuration that may be tens of MiB.
            current.push(self.kv.get(&key).await?.map(|v| v.value));
            let template = keys::haproxy_template(&self.namespace, &m.name)?;
            if self
                .kv
                .get_string(&template)
                .await?
                .is_some_and(|t| !t.trim().is_empty())
            {
                ignored_templates.push(m.name.clone());
            }
        }
        // Incrementally: only gateways changed since the last push are rendered (the result
        // is what `plan_push` renders in full; tested). Two gateways of one name (which the
        // model does not allow) take the full render, which keeps both.
        let names: HashSet<&str> = gateways.iter().map(|g| g.name.as_str()).collect();
        let plan = if names.len() == gateways.len() {
            let mut kept = self
                .kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = kept.names_in(current_gateways.as_deref());
            let (json, texts) = kept.update(gateways, &names, &self.marshallers)?;
            drop(kept);
            plan_with(
                gateways,
                json,
                texts,
                current_gateways.as_deref(),
                before,
                &current,
            )
        } else {
            let current: Vec<Option<String>> = current
                .into_iter()
                .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .collect();
            plan_push(
                gateways,
                &self.marshallers,
                current_gateways.as_deref(),
                &current,
            )?
        };
        let mut report = PushReport {
            ignored_templates,
            deployed: plan.deployed.clone(),
            undeployed: plan.undeployed.clone(),
            ..PushReport::default()
        };
        if let Some(json) = plan.gateways {
            self.kv.put(&gateways_key, json.into()).await?;
            report.gateways_written = true;
        }
        for (name, text) in plan.configurations {
            let key = keys::haproxy_configuration(&self.namespace, &name)?;
            self.kv.put(&key, text.into()).await?;
            report.configurations_written.push(name);
        }
        if let Some(events) = &self.events {
            let by_name = |name: &str| {
                gateways
                    .iter()
                    .find(|g| g.name == name)
                    .map(|g| to_node(&AnyArtifact::Gateway(g.clone())))
                    .unwrap_or(Node::Null)
            };
            for (names, what) in [
                (&report.deployed, "deployed"),
                (&report.undeployed, "undeployed"),
            ] {
                for name in names {
                    events
                        .publish(Event::new(
                            vec![format!("gateways:{name}"), what.to_owned()],
                            by_name(name),
                            "event",
                        ))
                        .await?;
                }
            }
            for name in &report.configurations_written {
                events
                    .publish(Event::new(
                        vec![
                            "marshaller:configuration".into(),
                            "type:haproxy".into(),
                            format!("name:{name}"),
                        ],
                        Node::Null,
                        "event",
                    ))
                    .await?;
            }
        }
        Ok(report)
    }
}

/// The gateway side of the reconcile loop ([`vamp_core::ops::controller::Controller`]): each
/// pass's gateways get their targets from the deployments' instances (as Vamp's synchroniser
/// did) and are pushed. The gateways pushed are exactly those given: a standalone gateway
/// must be among them to stay.
#[async_trait::async_trait]
impl vamp_core::ops::controller::GatewaySink for GatewayDriver {
    async fn push(
        &self,
        mut gateways: Vec<Gateway>,
        deployments: Vec<std::sync::Arc<vamp_core::model::Deployment>>,
    ) -> vamp_core::Result<()> {
        // Targets follow the instances: drop what an earlier pass resolved.
        for g in &mut gateways {
            for r in &mut g.routes {
                if let vamp_core::model::Route::Default(d) = r
                    && d.path.external().is_none()
                {
                    d.targets.clear();
                }
            }
        }
        // Routes go to running instances only (Vamp routed to every instance): a request
        // sent to one that does not listen yet waits for HAProxy's connect retry, a second.
        let running: Vec<std::sync::Arc<vamp_core::model::Deployment>> = deployments
            .iter()
            .map(|d| {
                let all_running = d
                    .clusters
                    .iter()
                    .flat_map(|c| &c.services)
                    .all(|s| s.instances.iter().all(|i| i.deployed));
                if all_running {
                    return std::sync::Arc::clone(d);
                }
                let mut d = (**d).clone();
                for s in d.clusters.iter_mut().flat_map(|c| &mut c.services) {
                    s.instances.retain(|i| i.deployed);
                }
                std::sync::Arc::new(d)
            })
            .collect();
        crate::targets::resolve_targets(&mut gateways, &running);
        match GatewayDriver::push(self, &gateways).await {
            Ok(_) => Ok(()),
            Err(PushError::Store(e)) => Err(e),
            Err(e) => Err(vamp_core::Error::Backend {
                backend: "gateway driver".into(),
                source: Box::new(e),
            }),
        }
    }
}

/// No free gateway port is left in the range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no free gateway port in {start}-{end} for gateway '{gateway}'")]
pub struct NoAvailablePort {
    /// The gateway that needed one.
    pub gateway: String,
    /// The range's first port.
    pub start: u16,
    /// The range's last port.
    pub end: u16,
}

/// Gateway port assignment (model.md §4.9, `vamp.operation.gateway.port-range`, default
/// `40000-45000`): a gateway without a port number gets the next port of the range, counting on
/// from the last one handed out and skipping ports any gateway uses; the value becomes
/// `<n>/<http|tcp>`. Unlike Vamp, which failed once its counter passed the end of the range
/// even when earlier ports had been freed, the counter wraps around and fails only when every
/// port of the range is in use.
///
/// ```
/// use vamp_core::model::{Gateway, Port};
/// use vamp_haproxy::driver::PortAllocator;
///
/// let mut ports = PortAllocator::new(40000..=40002);
/// let mut gateways = vec![
///     Gateway::new(Port::new("", Some("40000".into())).unwrap()),
///     Gateway::new(Port::new("", Some("0/tcp".into())).unwrap()),
/// ];
/// gateways[1].name = "db".into();
/// assert_eq!(ports.assign(&mut gateways).unwrap(), ["db"]);
/// assert_eq!(gateways[1].port.number, 40001);
/// assert_eq!(gateways[1].port.value.as_deref(), Some("40001/tcp"));
/// ```
#[derive(Clone, Debug)]
pub struct PortAllocator {
    start: u16,
    end: u16,
    last: Option<u16>,
}

impl PortAllocator {
    /// An allocator for `range` (inclusive).
    pub fn new(range: std::ops::RangeInclusive<u16>) -> Self {
        let (start, end) = (*range.start(), *range.end());
        Self {
            start: start.min(end),
            end: start.max(end),
            last: None,
        }
    }

    /// Parses Vamp's `port-range` setting (`40000-45000`).
    ///
    /// # Errors
    /// [`vamp_core::Error::InvalidConfig`] for anything but `<first>-<last>` ports.
    pub fn parse(range: &str) -> Result<Self, vamp_core::Error> {
        let invalid = || vamp_core::Error::InvalidConfig {
            backend: "gateway port range".into(),
            message: format!("'{range}' is not <first>-<last> (e.g. 40000-45000)"),
        };
        let (a, b) = range.trim().split_once('-').ok_or_else(invalid)?;
        let (a, b): (u16, u16) = (
            a.trim().parse().map_err(|_| invalid())?,
            b.trim().parse().map_err(|_| invalid())?,
        );
        if a == 0 || a > b {
            return Err(invalid());
        }
        Ok(Self::new(a..=b))
    }

    /// Gives every gateway without a port number (0) a free port; returns their names.
    ///
    /// # Errors
    /// [`NoAvailablePort`] when the range is full (gateways assigned before keep their port).
    pub fn assign(&mut self, gateways: &mut [Gateway]) -> Result<Vec<String>, NoAvailablePort> {
        let mut used: BTreeSet<i64> = gateways
            .iter()
            .map(|g| g.port.number)
            .filter(|n| *n > 0)
            .collect();
        let size = u32::from(self.end - self.start) + 1;
        let mut assigned = Vec::new();
        for g in gateways.iter_mut().filter(|g| g.port.number <= 0) {
            let mut found = None;
            let mut candidate = self.last.map_or(self.start, |l| l.wrapping_add(1));
            for _ in 0..size {
                if candidate < self.start || candidate > self.end {
                    candidate = self.start;
                }
                if !used.contains(&i64::from(candidate)) {
                    found = Some(candidate);
                    break;
                }
                candidate = candidate.wrapping_add(1);
            }
            let Some(port) = found else {
                return Err(NoAvailablePort {
                    gateway: g.name.clone(),
                    start: self.start,
                    end: self.end,
                });
            };
            self.last = Some(port);
            used.insert(i64::from(port));
            g.port.number = i64::from(port);
            g.port.value = Some(format!("{port}/{}", g.port.port_type));
            assigned.push(g.name.clone());
        }
        Ok(assigned)
    }
}
