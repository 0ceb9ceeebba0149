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

use bytes::Bytes;
use vamp_core::dsl::{AnyArtifact, to_node};
use vamp_core::kv::{DynKeyValueStore, KeyValueStoreExt, keys};
use vamp_core::metrics::DynEventStore;
use vamp_core::model::{Deployment, Event, Gateway, Route};
use vamp_core::node::Node;
use vamp_core::ops::controller::{GatewayPass, GatewaySink};

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
        gateways.iter().map(|g| g.name.clone()).collect(),
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
    after: BTreeSet<String>,
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
    PushPlan {
        gateways: (current_gateways != Some(json.as_str())).then_some(json),
        configurations,
        deployed: after.difference(&before).cloned().collect(),
        undeployed: before.difference(&after).cloned().collect(),
    }
}

/// A gateway handed to a push: borrowed (copied when kept) or shared (kept as it is).
trait GatewayRef {
    fn gateway(&self) -> &Gateway;
    fn share(&self) -> Arc<Gateway>;
}

impl GatewayRef for Gateway {
    fn gateway(&self) -> &Gateway {
        self
    }
    fn share(&self) -> Arc<Gateway> {
        Arc::new(self.clone())
    }
}

impl GatewayRef for Arc<Gateway> {
    fn gateway(&self) -> &Gateway {
        self
    }
    fn share(&self) -> Arc<Gateway> {
        Arc::clone(self)
    }
}

/// What a driver keeps between pushes: each gateway as last pushed, its JSON, and per
/// marshaller an [`IncrementalRenderer`] holding its text, so a push renders and serialises
/// only the gateways that changed.
#[derive(Default)]
struct Kept {
    gateways: HashMap<String, (Arc<Gateway>, String)>,
    renderers: Vec<IncrementalRenderer>,
    /// The names of the last push, in its order.
    order: Vec<String>,
    /// What the store held after the last push that completed (`/gateways`, then each
    /// marshaller's configuration); cleared while a push is under way, so a push that
    /// failed half-way is never taken for done.
    written: Option<(Option<Bytes>, Vec<Option<Bytes>>)>,
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

    /// Whether pushing `gateways` would change nothing: none of them changed (`changed`
    /// names those that may have; the others are the kept ones), they are the kept ones in
    /// the kept order, and the store holds what the last push left there.
    fn unchanged<G: GatewayRef>(
        &self,
        gateways: &[G],
        changed: Option<&HashSet<&str>>,
        current: &(Option<Bytes>, Vec<Option<Bytes>>),
    ) -> bool {
        let Some(changed) = changed else {
            return false;
        };
        self.written.as_ref() == Some(current)
            && gateways.len() == self.order.len()
            && gateways.iter().zip(&self.order).all(|(g, kept)| {
                let name = g.gateway().name.as_str();
                name == kept && !changed.contains(name)
            })
    }

    /// Brings the kept state to `gateways` and returns the `/gateways` value and each
    /// marshaller's configuration. Gateways not in `changed` (when given) are taken to be the
    /// kept ones without comparing. On a render error the state stays consistent (what was
    /// applied is recorded) and the error is returned.
    fn update<G: GatewayRef>(
        &mut self,
        gateways: &[G],
        wanted: &HashSet<&str>,
        changed: Option<&HashSet<&str>>,
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
            let gateway = g.gateway();
            let may_differ = changed.is_none_or(|c| c.contains(gateway.name.as_str()));
            if self.gateways.get(&gateway.name).is_some_and(|(kept, _)| {
                !may_differ || std::ptr::eq(&**kept, gateway) || **kept == *gateway
            }) {
                continue;
            }
            // A gateway some renderers took and another refused: forget it everywhere, so the
            // next push renders it again.
            if let Err(e) = self
                .renderers
                .iter_mut()
                .try_for_each(|r| r.upsert(gateway))
            {
                for r in &mut self.renderers {
                    r.remove(&gateway.name);
                }
                self.gateways.remove(&gateway.name);
                return Err(e);
            }
            self.gateways
                .insert(gateway.name.clone(), (g.share(), gateway_json(gateway)));
        }
        let json = gateways_json(
            gateways
                .iter()
                .map(|g| self.gateways[&g.gateway().name].1.as_str()),
        );
        self.order = gateways.iter().map(|g| g.gateway().name.clone()).collect();
        // Each renderer keeps its text assembled and writes only the changed gateways in place.
        let texts = marshallers
            .iter()
            .zip(&mut self.renderers)
            .map(|(m, r)| (m.name.clone(), r.text().to_owned()))
            .collect();
        Ok((json, texts))
    }
}
/// What the driver, as the reconcile loop's [`GatewaySink`], keeps between passes: each
/// deployment as last given and its gateways with their targets, so a pass resolves and
/// compares only the deployments it changed.
#[derive(Default)]
struct Resolved {
    deployments: HashMap<String, (Arc<Deployment>, Vec<Arc<Gateway>>)>,
    /// The standalone gateways' names and ports as last given (a deployment gateway's route
    /// may name one): when they change, every deployment is resolved again.
    standalone_ports: Vec<(String, i64)>,
    /// The standalone gateways as last resolved: one resolved alike is not a change.
    standalone: HashMap<String, Arc<Gateway>>,
}

/// `d` with only its running instances (routes go to running instances only).
fn running_only(d: &Arc<Deployment>) -> std::borrow::Cow<'_, Deployment> {
    let all_running = d
        .clusters
        .iter()
        .flat_map(|c| &c.services)
        .all(|s| s.instances.iter().all(|i| i.deployed));
    if all_running {
        return std::borrow::Cow::Borrowed(&**d);
    }
    let mut d = (**d).clone();
    for s in d.clusters.iter_mut().flat_map(|c| &mut c.services) {
        s.instances.retain(|i| i.deployed);
    }
    std::borrow::Cow::Owned(d)
}

/// Targets follow the instances: drops what an earlier pass resolved.
fn clear_targets(g: &mut Gateway) {
    for r in &mut g.routes {
        if let Route::Default(d) = r
            && d.path.external().is_none()
        {
            d.targets.clear();
        }
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
    resolved: Arc<Mutex<Resolved>>,
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
            resolved: Arc::default(),
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
        self.push_with(gateways, None).await
    }

    /// [`GatewayDriver::push`], told which gateways may have changed since the last push
    /// (`changed`; the others are the kept ones): a push where none did, and the store holds
    /// what the last push left there, reads the store and writes nothing.
    async fn push_with<G: GatewayRef>(
        &self,
        gateways: &[G],
        changed: Option<&HashSet<&str>>,
    ) -> Result<PushReport, PushError> {
        let gateways_key = keys::gateways(&self.namespace)?;
        let current_gateways = self.kv.get(&gateways_key).await?.map(|v| v.value);
        let mut current = Vec::new();
        let mut ignored_templates = Vec::new();
        for m in &self.marshallers {
            let key = keys::haproxy_configuration(&self.namespace, &m.name)?;
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
        let found = (current_gateways, current);
        {
            let mut kept = self
                .kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if kept.unchanged(gateways, changed, &found) {
                return Ok(PushReport {
                    ignored_templates,
                    ..PushReport::default()
                });
            }
            kept.written = None;
        }
        // Borrowed from the value read (no copy of a value that may be tens of MiB), and only
        // once a push is needed.
        let current_json = found.0.as_deref().map(String::from_utf8_lossy);
        // Incrementally: only gateways changed since the last push are rendered (the result
        // is what `plan_push` renders in full; tested). Two gateways of one name (which the
        // model does not allow) take the full render, which keeps both.
        let names: HashSet<&str> = gateways.iter().map(|g| g.gateway().name.as_str()).collect();
        let plan = if names.len() == gateways.len() {
            let mut kept = self
                .kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = kept.names_in(current_json.as_deref());
            let (json, texts) = kept.update(gateways, &names, changed, &self.marshallers)?;
            drop(kept);
            plan_with(
                names.iter().map(|n| (*n).to_owned()).collect(),
                json,
                texts,
                current_json.as_deref(),
                before,
                &found.1,
            )
        } else {
            let all: Vec<Gateway> = gateways.iter().map(|g| g.gateway().clone()).collect();
            let current: Vec<Option<String>> = found
                .1
                .iter()
                .map(|c| c.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                .collect();
            plan_push(&all, &self.marshallers, current_json.as_deref(), &current)?
        };
        drop(current_json);
        let mut report = PushReport {
            ignored_templates,
            deployed: plan.deployed.clone(),
            undeployed: plan.undeployed.clone(),
            ..PushReport::default()
        };
        let (mut now_gateways, mut now_configurations) = found;
        if let Some(json) = plan.gateways {
            let json = Bytes::from(json);
            self.kv.put(&gateways_key, json.clone()).await?;
            now_gateways = Some(json);
            report.gateways_written = true;
        }
        for (name, text) in plan.configurations {
            let key = keys::haproxy_configuration(&self.namespace, &name)?;
            let text = Bytes::from(text);
            self.kv.put(&key, text.clone()).await?;
            if let Some(i) = self.marshallers.iter().position(|m| m.name == name) {
                now_configurations[i] = Some(text);
            }
            report.configurations_written.push(name);
        }
        if names.len() == gateways.len() {
            self.kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .written = Some((now_gateways, now_configurations));
        }
        if let Some(events) = &self.events {
            let by_name: HashMap<&str, &Gateway> = if report.deployed.is_empty() {
                HashMap::new()
            } else {
                gateways
                    .iter()
                    .map(|g| (g.gateway().name.as_str(), g.gateway()))
                    .collect()
            };
            let node = |name: &str| {
                by_name
                    .get(name)
                    .map(|g| to_node(&AnyArtifact::Gateway((*g).clone())))
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
                            node(name),
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

    /// The gateways of a pass with their targets, and the names of those that may differ
    /// from the last pass's: a deployment given as the same `Arc` as last time keeps its
    /// resolved gateways.
    fn resolve_pass(&self, pass: &GatewayPass) -> (Vec<Arc<Gateway>>, HashSet<String>) {
        let mut resolved = self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let standalone_ports: Vec<(String, i64)> = pass
            .standalone
            .iter()
            .map(|g| (g.name.clone(), g.port.number))
            .collect();
        if standalone_ports != resolved.standalone_ports {
            resolved.deployments.clear();
            resolved.standalone_ports = standalone_ports;
        }
        let given: HashSet<&str> = pass.deployments.iter().map(|d| d.name.as_str()).collect();
        resolved
            .deployments
            .retain(|name, _| given.contains(name.as_str()));
        let mut changed = HashSet::new();
        let mut all: Vec<Arc<Gateway>> =
            Vec::with_capacity(pass.deployments.len() + pass.standalone.len());
        for d in &pass.deployments {
            if let Some((last, gateways)) = resolved.deployments.get(&d.name)
                && Arc::ptr_eq(last, d)
            {
                all.extend(gateways.iter().map(Arc::clone));
                continue;
            }
            // A deployment's routes name its own gateways and services (`<deployment>/…`),
            // or a standalone gateway of such a name.
            let gateways = vamp_core::ops::reconcile::gateways(std::slice::from_ref(d));
            let ports: Vec<(String, i64)> = gateways
                .iter()
                .map(|g| (g.name.clone(), g.port.number))
                .collect();
            let running = running_only(d);
            let mut lookup = crate::targets::Lookup::default();
            for (name, port) in ports.iter().chain(&resolved.standalone_ports) {
                lookup.add_port(name, *port);
            }
            lookup.add_deployment(&running);
            let gateways: Vec<Arc<Gateway>> = gateways
                .into_iter()
                .map(|mut g| {
                    clear_targets(&mut g);
                    lookup.resolve(&mut g);
                    changed.insert(g.name.clone());
                    Arc::new(g)
                })
                .collect();
            all.extend(gateways.iter().map(Arc::clone));
            resolved
                .deployments
                .insert(d.name.clone(), (Arc::clone(d), gateways));
        }
        // Standalone gateways may name any gateway or service: resolved every pass.
        let mut last_standalone = std::mem::take(&mut resolved.standalone);
        if !pass.standalone.is_empty() {
            let running: Vec<std::borrow::Cow<'_, Deployment>> =
                pass.deployments.iter().map(running_only).collect();
            let mut standalone: Vec<Gateway> =
                pass.standalone.iter().map(|g| (**g).clone()).collect();
            let ports: Vec<(String, i64)> = standalone
                .iter()
                .map(|g| (g.name.clone(), g.port.number))
                .collect();
            let mut lookup = crate::targets::Lookup::default();
            for g in &all {
                lookup.add_port(&g.name, g.port.number);
            }
            for (name, port) in &ports {
                lookup.add_port(name, *port);
            }
            for d in &running {
                lookup.add_deployment(d);
            }
            for g in &mut standalone {
                clear_targets(g);
                lookup.resolve(g);
            }
            drop(lookup);
            for g in standalone {
                let g = match last_standalone.remove(&g.name) {
                    Some(last) if *last == g => last,
                    _ => {
                        changed.insert(g.name.clone());
                        Arc::new(g)
                    }
                };
                resolved.standalone.insert(g.name.clone(), Arc::clone(&g));
                all.push(g);
            }
        }
        (all, changed)
    }
}

/// The gateway side of the reconcile loop ([`vamp_core::ops::controller::Controller`]): each
/// pass's gateways get their targets from the deployments' running instances (Vamp routed to
/// every instance: a request sent to one that does not listen yet waits for HAProxy's
/// connect retry, a second) and are pushed. Only what the pass changed is resolved, compared
/// and rendered; a pass that changed nothing, with the store holding what the last one left
/// there, writes nothing.
#[async_trait::async_trait]
impl GatewaySink for GatewayDriver {
    async fn push(&self, pass: GatewayPass) -> vamp_core::Result<()> {
        let (gateways, changed) = self.resolve_pass(&pass);
        let changed: HashSet<&str> = changed.iter().map(String::as_str).collect();
        match self.push_with(&gateways, Some(&changed)).await {
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
