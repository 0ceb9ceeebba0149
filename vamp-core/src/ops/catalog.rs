//! The stored artifacts as a server reads them: decoded once, indexed, and kept current from
//! the store's change feed, so that what a request reads does not grow with how many
//! artifacts there are.
//!
//! A [`Catalog`] is a [`PersistenceStore`] layer. Its writes go to the store and, once
//! applied, into its index at the versions the store gave them (a writer reads its own
//! writes at once); [`Catalog::follow`] loads the index and then applies every change the
//! store's feed yields (other writers: the reconcile loop, other replicas), skipping what is
//! not newer than what it holds. It indexes deployments (normalised, as
//! [`deploy::normalize`] leaves them), standalone gateways, and what a merge may reference
//! (breeds, scales, blueprints, workflow names), with the gateway ports in use and the
//! services and instances of all deployments counted as they change.
//!
//! What it serves is what the store held a moment ago: another writer's change appears once
//! the feed delivers it. A read that must be current (a deployment about to be merged into)
//! reads the store.
//!
//! ```
//! # futures_util::FutureExt::now_or_never(async {
//! use std::sync::Arc;
//! use vamp_core::memory::InMemoryPersistence;
//! use vamp_core::model::DefaultBreed;
//! use vamp_core::ops::catalog::Catalog;
//! use vamp_core::persistence::PersistenceExt;
//!
//! let store = Arc::new(InMemoryPersistence::new());
//! let catalog = Catalog::new(store.clone());
//! catalog.load().await.unwrap();
//! let breed: DefaultBreed = serde_json::from_str(r#"{"name": "sava:1.0.0", "deployable": "magneticio/sava:1.0.0"}"#).unwrap();
//! catalog.create(&breed).await.unwrap();
//! assert!(catalog.with_artifacts(|a| a.breeds.contains_key("sava:1.0.0")), "read at once");
//! # }).unwrap();
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use parking_lot::RwLock;

use crate::error::Result;
use crate::kv::{Version, Versioned};
use crate::model::*;
use crate::ops::deploy::{self, Artifacts};
use crate::persistence::*;

/// The kinds a catalog indexes, deployments first (see [`Catalog::load`]).
const INDEXED: [ArtifactKind; 6] = [
    ArtifactKind::Deployment,
    ArtifactKind::Gateway,
    ArtifactKind::Breed,
    ArtifactKind::Scale,
    ArtifactKind::Blueprint,
    ArtifactKind::Workflow,
];

/// The services and instances a deployment asks for (an instance for a service without a
/// scale): what the server's quotas count.
pub fn footprint(d: &Deployment) -> (usize, u64) {
    d.clusters
        .iter()
        .flat_map(|c| &c.services)
        .fold((0, 0), |(services, instances), s| {
            let n = s
                .scale
                .as_ref()
                .map_or(1, |sc| u64::try_from(sc.instances).unwrap_or(0));
            (services + 1, instances.saturating_add(n))
        })
}

/// The ports and names of a deployment's gateways (cluster gateways, then its own).
fn deployment_ports(d: &Deployment) -> impl Iterator<Item = (u16, &str)> {
    d.clusters
        .iter()
        .flat_map(|c| c.gateways.iter())
        .chain(d.gateways.iter())
        .filter_map(gateway_port)
}

fn gateway_port(g: &Gateway) -> Option<(u16, &str)> {
    u16::try_from(g.port.number)
        .ok()
        .filter(|p| *p > 0)
        .map(|p| (p, g.name.as_str()))
}

/// Every deployment, normalised: from `catalog` when there is one (loaded if it never was),
/// else listed and decoded from `store`. How a loop reads deployments with or without a
/// catalog.
///
/// # Errors
/// The store's errors; [`crate::Error::Invalid`] for a record that does not decode.
pub async fn deployments(
    catalog: Option<&Catalog>,
    store: &DynPersistenceStore,
) -> Result<Vec<Versioned<Arc<Deployment>>>> {
    if let Some(catalog) = catalog {
        catalog.ensure_loaded().await?;
        return Ok(catalog.deployments());
    }
    Ok(store
        .list_all::<Deployment>()
        .await?
        .into_iter()
        .map(|mut d| {
            deploy::normalize(&mut d.value);
            Versioned {
                value: Arc::new(d.value),
                version: d.version,
            }
        })
        .collect())
}

/// Every standalone gateway: from `catalog` when there is one, else from `store`.
///
/// # Errors
/// The store's errors; [`crate::Error::Invalid`] for a record that does not decode.
pub async fn gateways(
    catalog: Option<&Catalog>,
    store: &DynPersistenceStore,
) -> Result<Vec<Gateway>> {
    if let Some(catalog) = catalog {
        catalog.ensure_loaded().await?;
        return Ok(catalog
            .gateways()
            .into_iter()
            .map(|g| Arc::unwrap_or_clone(g.value))
            .collect());
    }
    Ok(store
        .list_all::<Gateway>()
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect())
}

/// One record, decoded for the index.
enum Entry {
    Deployment(Arc<Deployment>),
    Gateway(Arc<Gateway>),
    Breed(DefaultBreed),
    Scale(DefaultScale),
    Blueprint(DefaultBlueprint),
    Workflow,
}

fn decode(record: &ArtifactRecord) -> std::result::Result<Entry, String> {
    let content = record.content.clone().unwrap_or_default();
    fn read<T: Artifact>(c: serde_json::Value) -> std::result::Result<T, String> {
        serde_json::from_value(c).map_err(|e| e.to_string())
    }
    Ok(match record.kind {
        ArtifactKind::Deployment => {
            let mut d: Deployment = read(content)?;
            deploy::normalize(&mut d);
            Entry::Deployment(Arc::new(d))
        }
        ArtifactKind::Gateway => Entry::Gateway(Arc::new(read(content)?)),
        ArtifactKind::Breed => Entry::Breed(read(content)?),
        ArtifactKind::Scale => Entry::Scale(read(content)?),
        ArtifactKind::Blueprint => Entry::Blueprint(read(content)?),
        _ => {
            let _: Workflow = read(content)?;
            Entry::Workflow
        }
    })
}

/// A deployment as the catalog holds it, with its canonical JSON once asked for.
#[derive(Clone)]
struct Held {
    deployment: Versioned<Arc<Deployment>>,
    json: Arc<std::sync::OnceLock<Arc<str>>>,
}

impl Held {
    fn json(&self) -> Arc<str> {
        Arc::clone(self.json.get_or_init(|| {
            crate::dsl::deployment_to_node(&self.deployment.value)
                .to_json()
                .to_string()
                .into()
        }))
    }
}

#[derive(Default)]
struct State {
    loaded: bool,
    versions: HashMap<(ArtifactKind, String), Version>,
    deployments: BTreeMap<String, Held>,
    gateways: BTreeMap<String, Versioned<Arc<Gateway>>>,
    /// Breeds, scales, blueprints, workflow names, and every gateway's port.
    artifacts: Artifacts,
    /// Every gateway using each port (a port may be claimed twice in what is stored).
    port_users: BTreeMap<u16, BTreeMap<String, usize>>,
    services: usize,
    instances: u64,
    /// Records that do not decode, with the reason.
    problems: BTreeMap<(ArtifactKind, String), String>,
}

impl State {
    fn claim(&mut self, port: u16, name: &str) {
        *self
            .port_users
            .entry(port)
            .or_default()
            .entry(name.to_owned())
            .or_default() += 1;
        self.artifacts
            .gateway_ports
            .entry(port)
            .or_insert_with(|| name.to_owned());
    }

    fn release(&mut self, port: u16, name: &str) {
        let Some(users) = self.port_users.get_mut(&port) else {
            return;
        };
        if let Some(n) = users.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                users.remove(name);
            }
        }
        let still = self
            .artifacts
            .gateway_ports
            .get(&port)
            .is_some_and(|owner| users.contains_key(owner));
        match users.keys().next().cloned() {
            None => {
                self.port_users.remove(&port);
                self.artifacts.gateway_ports.remove(&port);
            }
            Some(first) if !still => {
                self.artifacts.gateway_ports.insert(port, first);
            }
            Some(_) => {}
        }
    }

    /// Takes `kind`/`name` out of the index.
    fn take_out(&mut self, kind: ArtifactKind, name: &str) {
        match kind {
            ArtifactKind::Deployment => {
                if let Some(old) = self.deployments.remove(name) {
                    let old = old.deployment;
                    let (s, i) = footprint(&old.value);
                    self.services -= s;
                    self.instances = self.instances.saturating_sub(i);
                    for (port, g) in deployment_ports(&old.value).collect::<Vec<_>>() {
                        let g = g.to_owned();
                        self.release(port, &g);
                    }
                }
            }
            ArtifactKind::Gateway => {
                if let Some(old) = self.gateways.remove(name)
                    && let Some((port, g)) = gateway_port(&old.value)
                {
                    let g = g.to_owned();
                    self.release(port, &g);
                }
            }
            ArtifactKind::Breed => {
                self.artifacts.breeds.remove(name);
            }
            ArtifactKind::Scale => {
                self.artifacts.scales.remove(name);
            }
            ArtifactKind::Blueprint => {
                self.artifacts.blueprints.remove(name);
            }
            _ => {
                self.artifacts.workflows.remove(name);
            }
        }
    }

    fn put_in(&mut self, name: &str, version: Version, entry: Entry) {
        match entry {
            Entry::Deployment(d) => {
                let (s, i) = footprint(&d);
                self.services += s;
                self.instances = self.instances.saturating_add(i);
                for (port, g) in deployment_ports(&d).collect::<Vec<_>>() {
                    let g = g.to_owned();
                    self.claim(port, &g);
                }
                self.deployments.insert(
                    name.to_owned(),
                    Held {
                        deployment: Versioned { value: d, version },
                        json: Arc::default(),
                    },
                );
            }
            Entry::Gateway(g) => {
                if let Some((port, n)) = gateway_port(&g) {
                    let n = n.to_owned();
                    self.claim(port, &n);
                }
                self.gateways
                    .insert(name.to_owned(), Versioned { value: g, version });
            }
            Entry::Breed(b) => {
                self.artifacts.breeds.insert(name.to_owned(), b);
            }
            Entry::Scale(s) => {
                self.artifacts.scales.insert(name.to_owned(), s);
            }
            Entry::Blueprint(b) => {
                self.artifacts.blueprints.insert(name.to_owned(), b);
            }
            Entry::Workflow => {
                self.artifacts.workflows.insert(name.to_owned());
            }
        }
    }

    /// Applies one record, decoded (`None`: a deletion) or not decodable (`Err`), unless what
    /// the index holds is as new.
    fn apply(
        &mut self,
        kind: ArtifactKind,
        name: &str,
        version: Version,
        entry: Option<std::result::Result<Entry, String>>,
    ) {
        let key = (kind, name.to_owned());
        if self.versions.get(&key).is_some_and(|v| *v >= version) {
            return;
        }
        self.take_out(kind, name);
        self.problems.remove(&key);
        match entry {
            None => {
                self.versions.remove(&key);
            }
            Some(Ok(entry)) => {
                self.put_in(name, version, entry);
                self.versions.insert(key, version);
            }
            Some(Err(reason)) => {
                self.versions.insert(key.clone(), version);
                self.problems.insert(key, reason);
            }
        }
    }
}

/// Stored artifacts, decoded and indexed, kept current by its own writes and the store's
/// change feed (see the [module](self)).
pub struct Catalog {
    inner: Arc<DynPersistenceStore>,
    state: RwLock<State>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.read();
        f.debug_struct("Catalog")
            .field("inner", &self.inner.to_string())
            .field("loaded", &s.loaded)
            .field("deployments", &s.deployments.len())
            .field("gateways", &s.gateways.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl Catalog {
    /// An empty catalog over `inner` ([`Catalog::load`] or [`Catalog::follow`] fill it).
    pub fn new(inner: Arc<DynPersistenceStore>) -> Self {
        Self {
            inner,
            state: RwLock::new(State::default()),
        }
    }

    /// The store underneath.
    pub fn inner(&self) -> &Arc<DynPersistenceStore> {
        &self.inner
    }

    /// Whether the index has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.state.read().loaded
    }

    /// Lists every indexed kind into the index (decoding only what changed since it was
    /// last held) and returns the version to follow the change feed from: no write after it
    /// was missed by the listing. What the index holds that the listing no longer has, at a
    /// version older than that, is dropped.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn load(&self) -> Result<Version> {
        let head = self.inner.head().await?;
        let mut listed = Vec::with_capacity(INDEXED.len());
        for kind in INDEXED {
            listed.push((kind, self.inner.list(kind, ListOptions::all()).await?));
        }
        // Without the store's head: the newest record of the first listing is older than
        // any write the later listings could have missed.
        let since = head.unwrap_or_else(|| {
            listed[0]
                .1
                .iter()
                .map(|r| r.version)
                .max()
                .unwrap_or(Version(0))
        });
        // Decode outside the lock what the index does not hold at that version.
        let mut decoded = Vec::new();
        {
            let s = self.state.read();
            for (_, records) in &listed {
                for r in records {
                    let held = s.versions.get(&(r.kind, r.name.clone()));
                    if held != Some(&r.version) && r.content.is_some() {
                        decoded.push((r.kind, r.name.clone(), r.version, decode(r)));
                    }
                }
            }
        }
        let mut s = self.state.write();
        for (kind, name, version, entry) in decoded {
            s.apply(kind, &name, version, Some(entry));
        }
        let present: std::collections::HashSet<(ArtifactKind, &str)> = listed
            .iter()
            .flat_map(|(_, records)| records.iter().map(|r| (r.kind, r.name.as_str())))
            .collect();
        let gone: Vec<(ArtifactKind, String)> = s
            .versions
            .iter()
            .filter(|((k, n), v)| **v <= since && !present.contains(&(*k, n.as_str())))
            .map(|(k, _)| k.clone())
            .collect();
        for (kind, name) in gone {
            s.take_out(kind, &name);
            s.problems.remove(&(kind, name.clone()));
            s.versions.remove(&(kind, name));
        }
        s.loaded = true;
        Ok(since)
    }

    /// Loads the index if it never was.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn ensure_loaded(&self) -> Result<()> {
        if !self.is_loaded() {
            self.load().await?;
        }
        Ok(())
    }

    /// Loads the index, then applies the store's change feed from there for as long as it
    /// yields changes. Run it as a supervised loop: it returns the feed's first error (a gap
    /// in a feed that fell behind, a store that went away), and the next run loads again.
    ///
    /// # Errors
    /// The store's and the feed's errors.
    pub async fn follow(&self) -> Result<()> {
        let since = self.load().await?;
        let mut feed = self.inner.changes(ChangeOptions::new().since(since));
        while let Some(change) = feed.next().await {
            self.apply(&change?);
        }
        Ok(())
    }

    /// Applies one record of the store (a change, or a write's result) to the index, unless
    /// the index holds that artifact at this version or a newer one.
    pub fn apply(&self, record: &ArtifactRecord) {
        if !INDEXED.contains(&record.kind) {
            return;
        }
        let key = (record.kind, record.name.clone());
        if self
            .state
            .read()
            .versions
            .get(&key)
            .is_some_and(|v| *v >= record.version)
        {
            return;
        }
        let entry = record.content.is_some().then(|| decode(record));
        self.state
            .write()
            .apply(record.kind, &record.name, record.version, entry);
    }

    /// A deployment, normalised, if it is indexed.
    pub fn deployment(&self, name: &str) -> Option<Versioned<Arc<Deployment>>> {
        self.state
            .read()
            .deployments
            .get(name)
            .map(|h| h.deployment.clone())
    }

    /// A deployment's canonical JSON (the DSL's, as `dsl::to_node(..).to_json()` writes it)
    /// and version, written once per version and then shared.
    pub fn deployment_json(&self, name: &str) -> Option<(Version, Arc<str>)> {
        let held = self.state.read().deployments.get(name).cloned()?;
        Some((held.deployment.version, held.json()))
    }

    /// How many deployments there are, and the canonical JSON of those of the page
    /// `offset`, `limit`, in name order.
    pub fn deployments_json_page(&self, offset: usize, limit: usize) -> (usize, Vec<Arc<str>>) {
        let (total, page): (usize, Vec<Held>) = {
            let s = self.state.read();
            let page = s
                .deployments
                .values()
                .skip(offset)
                .take(limit)
                .cloned()
                .collect();
            (s.deployments.len(), page)
        };
        (total, page.iter().map(Held::json).collect())
    }

    /// How many deployments it holds.
    pub fn deployment_count(&self) -> usize {
        self.state.read().deployments.len()
    }

    /// How many deployments there are, and those of the page `offset`, `limit`, in name order.
    pub fn deployments_page(
        &self,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<Versioned<Arc<Deployment>>>) {
        let s = self.state.read();
        let page = s
            .deployments
            .values()
            .skip(offset)
            .take(limit)
            .map(|h| h.deployment.clone())
            .collect();
        (s.deployments.len(), page)
    }

    /// Every deployment, normalised, in name order (shared, not copied).
    pub fn deployments(&self) -> Vec<Versioned<Arc<Deployment>>> {
        self.state
            .read()
            .deployments
            .values()
            .map(|h| h.deployment.clone())
            .collect()
    }

    /// Every standalone gateway, in name order.
    pub fn gateways(&self) -> Vec<Versioned<Arc<Gateway>>> {
        self.state.read().gateways.values().cloned().collect()
    }

    /// Runs `f` over what a merge may reference: breeds, scales, blueprints, workflow names,
    /// and the port of every gateway (standalone and of every deployment, including the one
    /// being merged into: a merge keeps its own gateways' ports).
    pub fn with_artifacts<R>(&self, f: impl FnOnce(&Artifacts) -> R) -> R {
        f(&self.state.read().artifacts)
    }

    /// The services and instances of all deployments together.
    pub fn footprint(&self) -> (usize, u64) {
        let s = self.state.read();
        (s.services, s.instances)
    }

    /// Records that do not decode, as `kind/name: reason`.
    pub fn problems(&self) -> Vec<String> {
        self.state
            .read()
            .problems
            .iter()
            .map(|((k, n), reason)| format!("{}/{n}: {reason}", k.as_str()))
            .collect()
    }
}

#[async_trait]
impl PersistenceStore for Catalog {
    async fn read(&self, kind: ArtifactKind, name: &str) -> Result<Option<ArtifactRecord>> {
        self.inner.read(kind, name).await
    }

    async fn write(&self, writes: Vec<ArtifactWrite>) -> Result<Vec<Option<Version>>> {
        let written: Vec<Option<(ArtifactKind, String, Option<serde_json::Value>)>> = writes
            .iter()
            .map(|w| {
                if !INDEXED.contains(&w.kind) {
                    return None;
                }
                match &w.op {
                    WriteOp::Put { content, .. } => {
                        Some((w.kind, w.name.clone(), Some(content.clone())))
                    }
                    WriteOp::Delete { .. } => Some((w.kind, w.name.clone(), None)),
                    _ => None,
                }
            })
            .collect();
        let versions = self.inner.write(writes).await?;
        for (w, v) in written.into_iter().zip(&versions) {
            if let (Some((kind, name, content)), Some(version)) = (w, v) {
                self.apply(&ArtifactRecord {
                    kind,
                    name,
                    version: *version,
                    content,
                    timestamp_ms: 0,
                });
            }
        }
        Ok(versions)
    }

    async fn list(&self, kind: ArtifactKind, opts: ListOptions) -> Result<Vec<ArtifactRecord>> {
        self.inner.list(kind, opts).await
    }

    async fn history(&self, kind: ArtifactKind, name: &str) -> Result<Vec<ArtifactRecord>> {
        self.inner.history(kind, name).await
    }

    fn changes(&self, opts: ChangeOptions) -> BoxStream<'static, Result<ArtifactRecord>> {
        self.inner.changes(opts)
    }

    fn capabilities(&self) -> PersistenceCapabilities {
        self.inner.capabilities()
    }

    async fn head(&self) -> Result<Option<Version>> {
        self.inner.head().await
    }
}

impl From<Arc<DynPersistenceStore>> for Catalog {
    fn from(inner: Arc<DynPersistenceStore>) -> Self {
        Self::new(inner)
    }
}
