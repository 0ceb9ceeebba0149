//! The catalog: the stored artifacts decoded and indexed, kept current by its own writes and
//! by the store's change feed; its counts and gateway ports always those of what it holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::kv::Version;
use vamp_core::memory::InMemoryPersistence;
use vamp_core::model::*;
use vamp_core::ops::catalog::{Catalog, footprint};
use vamp_core::ops::deploy::{Artifacts, MergeOptions, merge};
use vamp_core::persistence::*;

fn blueprint(name: &str, instances: u32, port: Option<u16>) -> DefaultBlueprint {
    let gateways = port.map_or(String::new(), |p| format!("gateways:\n  {p}: web/web\n"));
    let yaml = format!(
        "name: {name}\n{gateways}clusters:\n  web:\n    breed: {{name: 'web:1.0', deployable: web, ports: {{web: 8080/http}}}}\n    scale: {{cpu: 0.1, memory: 32MB, instances: {instances}}}\n"
    );
    match read_str(&yaml, Some(ArtifactKind::Blueprint))
        .unwrap()
        .remove(0)
    {
        AnyArtifact::Blueprint(b) => b,
        other => panic!("{other:?}"),
    }
}

/// A deployment of `instances`, its cluster gateway on `internal`, and a deployment gateway on
/// `port` if given.
fn deployment(name: &str, instances: u32, internal: u16, port: Option<u16>) -> Deployment {
    let options = MergeOptions::new(0).with_port_range(internal, internal);
    merge(
        None,
        name,
        &blueprint(name, instances, port),
        &Artifacts::new(),
        &options,
    )
    .unwrap()
    .deployment
}

/// What a catalog must hold, computed from scratch from the store.
async fn expected(
    store: &InMemoryPersistence,
) -> (
    BTreeMap<String, Deployment>,
    (usize, u64),
    BTreeMap<u16, String>,
) {
    let mut deployments = BTreeMap::new();
    let (mut services, mut instances) = (0, 0);
    let mut ports = BTreeMap::new();
    for mut d in store.list_all::<Deployment>().await.unwrap() {
        vamp_core::ops::deploy::normalize(&mut d.value);
        let (s, i) = footprint(&d.value);
        services += s;
        instances += i;
        for g in vamp_core::ops::reconcile::gateways(std::slice::from_ref(&d.value)) {
            ports.insert(u16::try_from(g.port.number).unwrap(), g.name.clone());
        }
        deployments.insert(d.value.name.clone(), d.value);
    }
    for g in store.list_all::<Gateway>().await.unwrap() {
        ports.insert(u16::try_from(g.value.port.number).unwrap(), g.value.name);
    }
    (deployments, (services, instances), ports)
}

fn held(
    catalog: &Catalog,
) -> (
    BTreeMap<String, Deployment>,
    (usize, u64),
    BTreeMap<u16, String>,
) {
    let deployments = catalog
        .deployments()
        .into_iter()
        .map(|d| (d.value.name.clone(), (*d.value).clone()))
        .collect();
    (
        deployments,
        catalog.footprint(),
        catalog.with_artifacts(|a| a.gateway_ports.clone()),
    )
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn its_own_writes_are_read_at_once_and_removals_free_ports_and_counts() {
    let store = Arc::new(InMemoryPersistence::new());
    let catalog = Catalog::new(Arc::clone(&store) as Arc<DynPersistenceStore>);
    catalog.load().await.unwrap();
    assert_eq!(catalog.footprint(), (0, 0));

    let a = deployment("a", 3, 24000, Some(9050));
    let v = catalog.create(&a).await.unwrap();
    let got = catalog.deployment("a").expect("indexed at once");
    assert_eq!(got.version, v);
    assert_eq!(catalog.footprint(), (1, 3));
    let ports = catalog.with_artifacts(|x| x.gateway_ports.clone());
    assert_eq!(ports.get(&24000).map(String::as_str), Some("a/web/web"));
    assert_eq!(ports.get(&9050).map(String::as_str), Some("a/9050"));

    // Its JSON is the DSL's canonical JSON of what it holds, page or single.
    let (jv, json) = catalog.deployment_json("a").unwrap();
    let canonical = vamp_core::dsl::to_node(&AnyArtifact::Deployment((*got.value).clone()))
        .to_json()
        .to_string();
    assert_eq!((jv, &*json), (v, canonical.as_str()));
    assert_eq!(
        catalog.deployments_json_page(0, 30),
        (1, vec![Arc::clone(&json)])
    );
    assert_eq!(catalog.deployments_json_page(1, 30), (1, vec![]));

    let breed: DefaultBreed =
        serde_json::from_str(r#"{"name": "b:1", "deployable": "b:1"}"#).unwrap();
    catalog.create(&breed).await.unwrap();
    assert!(catalog.with_artifacts(|x| x.breeds.contains_key("b:1")));

    assert!(catalog.remove::<Deployment>("a", Some(v)).await.unwrap());
    assert!(catalog.deployment("a").is_none());
    assert_eq!(catalog.footprint(), (0, 0));
    assert!(
        catalog.with_artifacts(|x| x.gateway_ports.is_empty()),
        "the ports of a removed deployment are free"
    );
    assert_eq!(held(&catalog), expected(&store).await);
}

#[tokio::test]
async fn another_writer_s_changes_arrive_through_the_feed() {
    let store = Arc::new(InMemoryPersistence::new());
    store
        .create(&deployment("before", 1, 24000, None))
        .await
        .unwrap();
    let catalog = Arc::new(Catalog::new(Arc::clone(&store) as Arc<DynPersistenceStore>));
    let follower = tokio::spawn({
        let catalog = Arc::clone(&catalog);
        async move { catalog.follow().await }
    });
    wait_for("the load", || catalog.deployment("before").is_some()).await;
    // Written to the store directly, as the reconcile loop or another replica does.
    let v = store
        .create(&deployment("after", 2, 24001, None))
        .await
        .unwrap();
    wait_for("the new deployment", || {
        catalog.deployment("after").is_some_and(|d| d.version == v)
    })
    .await;
    store.remove::<Deployment>("before", None).await.unwrap();
    wait_for("the removal", || catalog.deployment("before").is_none()).await;
    assert_eq!(held(&catalog), expected(&store).await);
    assert_eq!(catalog.footprint(), (1, 2));
    follower.abort();
}

#[tokio::test]
async fn a_load_drops_what_was_removed_unseen_and_keeps_newer_writes() {
    let store = Arc::new(InMemoryPersistence::new());
    let catalog = Catalog::new(Arc::clone(&store) as Arc<DynPersistenceStore>);
    for (i, name) in ["x", "y", "z"].into_iter().enumerate() {
        catalog
            .create(&deployment(name, 1, 24000 + i as u16, None))
            .await
            .unwrap();
    }
    catalog.load().await.unwrap();
    // Not followed: these happen behind the catalog's back.
    store.remove::<Deployment>("y", None).await.unwrap();
    let mut z = store.get::<Deployment>("z").await.unwrap().unwrap();
    z.value.clusters[0].services[0]
        .scale
        .as_mut()
        .unwrap()
        .instances = 5;
    store.update(&z.value, z.version).await.unwrap();
    assert!(catalog.deployment("y").is_some(), "stale until loaded");
    let since = catalog.load().await.unwrap();
    assert!(since >= Version(5));
    assert!(catalog.deployment("y").is_none());
    assert_eq!(catalog.footprint(), (2, 6));
    assert_eq!(held(&catalog), expected(&store).await);
}

#[tokio::test]
async fn an_older_record_never_replaces_a_newer_one_and_bad_records_are_named() {
    let store = Arc::new(InMemoryPersistence::new());
    let catalog = Catalog::new(Arc::clone(&store) as Arc<DynPersistenceStore>);
    catalog.load().await.unwrap();
    let v1 = catalog
        .create(&deployment("d", 1, 24000, None))
        .await
        .unwrap();
    let mut d = catalog.deployment("d").unwrap().value.as_ref().clone();
    d.clusters[0].services[0].scale.as_mut().unwrap().instances = 4;
    let v2 = catalog.update(&d, v1).await.unwrap();
    // The feed delivers the first version late: it is older than what is held.
    let first = store.history(ArtifactKind::Deployment, "d").await.unwrap()[0].clone();
    assert_eq!(first.version, v1);
    catalog.apply(&first);
    assert_eq!(catalog.deployment("d").unwrap().version, v2);
    assert_eq!(catalog.footprint(), (1, 4));

    // A record that does not decode is not served, and is named.
    let bad = ArtifactRecord {
        kind: ArtifactKind::Deployment,
        name: "d".into(),
        version: Version(v2.0 + 1),
        content: Some(serde_json::json!({"name": "d", "clusters": 7})),
        timestamp_ms: 0,
    };
    catalog.apply(&bad);
    assert!(catalog.deployment("d").is_none());
    assert_eq!(catalog.footprint(), (0, 0));
    let problems = catalog.problems();
    assert!(
        problems.len() == 1 && problems[0].starts_with("deployments/d: "),
        "{problems:?}"
    );
}

/// Pseudo-random writes, some through the catalog, some straight to the store, with the
/// feed followed: the catalog ends as a fresh computation from the store says.
#[tokio::test]
async fn after_any_sequence_of_writes_it_holds_what_is_stored() {
    let store = Arc::new(InMemoryPersistence::new());
    let catalog = Arc::new(Catalog::new(Arc::clone(&store) as Arc<DynPersistenceStore>));
    let follower = tokio::spawn({
        let catalog = Arc::clone(&catalog);
        async move { catalog.follow().await }
    });
    wait_for("the load", || catalog.is_loaded()).await;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for step in 0..400 {
        let name = format!("d{}", next(12));
        let direct = next(2) == 0;
        let writer: &DynPersistenceStore = if direct { &*store } else { &*catalog };
        match next(4) {
            0 => {
                let _ = writer.remove::<Deployment>(&name, None).await.unwrap();
            }
            1 => {
                let g = Gateway::new(Port::new("", Some((9000 + next(5)).to_string())).unwrap());
                let mut g = g;
                g.name = format!("g{}", next(3));
                let _ = writer.upsert(&g).await;
            }
            _ => {
                let port = u16::try_from(24000 + next(40)).unwrap();
                let outer = (next(3) == 0).then(|| u16::try_from(9100 + next(4)).unwrap());
                let d = deployment(&name, u32::try_from(next(5)).unwrap() + 1, port, outer);
                writer.upsert(&d).await.unwrap();
            }
        }
        if step % 50 == 49 {
            let want = expected(&store).await;
            wait_for("the catalog to catch up", || {
                let (d, f, _) = held(&catalog);
                (d, f) == (want.0.clone(), want.1)
            })
            .await;
        }
    }
    let want = expected(&store).await;
    wait_for("the catalog to catch up", || held(&catalog).0 == want.0).await;
    let (d, f, ports) = held(&catalog);
    assert_eq!((d, f), (want.0, want.1));
    // Every port in use is claimed (by one of its users when two claim it).
    let in_use: Vec<u16> = want.2.keys().copied().collect();
    assert_eq!(ports.keys().copied().collect::<Vec<_>>(), in_use);
    follower.abort();
}
