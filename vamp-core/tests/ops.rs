//! The operations layer's planners against Vamp's rules (model.md §5): merge, slice, scale,
//! export and deploy-time resolution, with every error on the path, and properties (a merge
//! is idempotent; ports are unique and in range).

use proptest::prelude::*;
use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::model::*;
use vamp_core::ops::OperationError;
use vamp_core::ops::deploy::{
    Artifacts, MergeOptions, export_blueprint, merge, remove_undeployed, scale, slice,
};
use vamp_core::ops::resolve::{Lookups, service_environment};
use vamp_core::ops::status::{self, PhaseKind};
use vamp_core::units::{MegaByte, Percentage, Quantity};

const T0: i64 = 1_800_000_000_000;

fn blueprint(yaml: &str) -> DefaultBlueprint {
    match read_str(yaml, Some(ArtifactKind::Blueprint))
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .remove(0)
    {
        AnyArtifact::Blueprint(b) => b,
        other => panic!("{other:?}"),
    }
}

/// Two versions of sava in one cluster, 90/10 with a condition on 1.1, and a deployment
/// gateway on 9050.
const SAVA: &str = "name: sava
gateways:
  9050: sava/webport
clusters:
  sava:
    gateways:
      webport:
        routes:
          sava:1.0.0: {weight: 90%}
          sava:1.1.0: {weight: 10%, condition: user-agent = Chrome}
    services:
      - breed: {name: 'sava:1.0.0', deployable: sava1, ports: {webport: 8080/http}}
        scale: {cpu: 0.2, memory: 64MB, instances: 2}
      - breed: {name: 'sava:1.1.0', deployable: sava11, ports: {webport: 8080/http}}
";

fn opts() -> MergeOptions {
    MergeOptions::new(T0)
}

fn routes(g: &Gateway) -> Vec<(String, Option<u8>)> {
    g.routes
        .iter()
        .map(|r| {
            (
                r.path().source.clone(),
                r.definition().and_then(|d| d.weight.map(|w| w.0)),
            )
        })
        .collect()
}

#[test]
fn a_blueprint_becomes_a_deployment_with_its_gateways_and_traits() {
    let m = merge(None, "sava", &blueprint(SAVA), &Artifacts::new(), &opts()).unwrap();
    let d = &m.deployment;
    assert_eq!(m.new_breeds.len(), 2, "inline breeds are stored on deploy");
    assert_eq!(d.clusters.len(), 1);
    let c = &d.clusters[0];
    assert_eq!(c.services.len(), 2);
    for s in &c.services {
        assert_eq!(s.status.intention, Intention::Deployment);
        assert_eq!(status::kind(&s.status.phase), Some(PhaseKind::Initiated));
    }
    assert_eq!(c.services[0].scale.as_ref().unwrap().instances, 2);
    assert_eq!(
        c.services[1].scale.as_ref().unwrap().instances,
        1,
        "the default scale"
    );
    assert_eq!(c.gateways.len(), 1);
    let g = &c.gateways[0];
    assert_eq!(g.name, "sava/sava/webport");
    assert!(
        (24000..=29999).contains(&g.port.number),
        "{}",
        g.port.number
    );
    assert_eq!(
        routes(g),
        [
            ("sava/sava/sava:1.0.0/webport".to_owned(), Some(90)),
            ("sava/sava/sava:1.1.0/webport".to_owned(), Some(10)),
        ]
    );
    let Route::Default(r) = &g.routes[1] else {
        panic!()
    };
    assert!(r.condition.is_some(), "the blueprint's condition is kept");
    assert_eq!(d.gateways.len(), 1);
    assert_eq!(d.gateways[0].name, "sava/9050");
    assert_eq!(d.gateways[0].port.number, 9050);
    assert_eq!(
        routes(&d.gateways[0]),
        [("sava/sava/webport".to_owned(), Some(100))]
    );
    assert_eq!(d.hosts[0].name, "sava.hosts.host");
    assert_eq!(d.hosts[0].value.as_deref(), Some("127.0.0.1"));
    assert_eq!(d.ports[0].name, "sava.ports.webport");
    assert_eq!(d.ports[0].number, g.port.number);
}

#[test]
fn merging_the_same_blueprint_twice_changes_nothing() {
    let bp = blueprint(SAVA);
    let first = merge(None, "sava", &bp, &Artifacts::new(), &opts()).unwrap();
    let later = MergeOptions::new(T0 + 60_000);
    let second = merge(
        Some(&first.deployment),
        "sava",
        &bp,
        &Artifacts::new(),
        &later,
    )
    .unwrap();
    assert_eq!(second.deployment, first.deployment);
    assert!(second.removed_gateways.is_empty());
}

#[test]
fn a_new_version_merged_in_starts_at_zero_weight_and_the_old_keeps_its_status() {
    let v1 = blueprint(
        "name: sava
clusters:
  sava:
    services:
      - breed: {name: 'sava:1.0.0', deployable: sava1, ports: {webport: 8080/http}}
",
    );
    let v2 = blueprint(
        "name: sava
clusters:
  sava:
    services:
      - breed: {name: 'sava:1.1.0', deployable: sava11, ports: {webport: 8080/http}}
",
    );
    let d1 = merge(None, "sava", &v1, &Artifacts::new(), &opts())
        .unwrap()
        .deployment;
    assert_eq!(routes(&d1.clusters[0].gateways[0])[0].1, Some(100));
    let d2 = merge(
        Some(&d1),
        "sava",
        &v2,
        &Artifacts::new(),
        &MergeOptions::new(T0 + 1),
    )
    .unwrap()
    .deployment;
    let c = &d2.clusters[0];
    assert_eq!(c.services.len(), 2);
    assert_eq!(c.services[0].status, d1.clusters[0].services[0].status);
    assert_eq!(
        routes(&c.gateways[0]),
        [
            ("sava/sava/sava:1.1.0/webport".to_owned(), Some(0)),
            ("sava/sava/sava:1.0.0/webport".to_owned(), Some(100)),
        ],
        "weightless routes first (Vamp's order)"
    );
    assert_eq!(
        c.gateways[0].port, d1.clusters[0].gateways[0].port,
        "the gateway keeps its port"
    );
}

#[test]
fn a_changed_scale_resets_the_service_to_initiated() {
    let d1 = merge(None, "sava", &blueprint(SAVA), &Artifacts::new(), &opts())
        .unwrap()
        .deployment;
    let scaled = SAVA.replace("instances: 2", "instances: 3");
    let d2 = merge(
        Some(&d1),
        "sava",
        &blueprint(&scaled),
        &Artifacts::new(),
        &MergeOptions::new(T0 + 5),
    )
    .unwrap()
    .deployment;
    let s = &d2.clusters[0].services[0];
    assert_eq!(s.scale.as_ref().unwrap().instances, 3);
    assert_eq!(status::phase_since(&s.status.phase), Some(T0 + 5));
    assert_eq!(
        d2.clusters[0].services[1].status, d1.clusters[0].services[1].status,
        "the unchanged service keeps its status"
    );
}

fn code(e: OperationError) -> &'static str {
    e.code()
}

fn depending(name: &str, on: &str) -> DefaultBreed {
    let mut b = DefaultBreed::new(name, "d");
    b.dependencies
        .insert("dep".into(), Ref::Reference(on.into()));
    b
}

#[test]
fn every_error_on_the_merge_path_keeps_vamp_s_name() {
    let none = Artifacts::new();
    let cases: Vec<(&str, String, Artifacts, MergeOptions)> = vec![
        (
            "ArtifactNotFound",
            "name: x\nclusters:\n  c:\n    breed: missing\n".into(),
            none.clone(),
            opts(),
        ),
        (
            "UnresolvedVariableValueError",
            "name: x\nclusters:\n  c:\n    breed: {name: b, deployable: d, environment_variables: {PORT: ~}}\n".into(),
            none.clone(),
            opts(),
        ),
        (
            // The reader cannot see into a stored breed: the merge checks.
            "UnresolvedEnvironmentVariableError",
            "name: x\nclusters:\n  c:\n    breed: stored\n".into(),
            Artifacts::new().with_breed(DefaultBreed::new("stored", "d")),
            opts(),
        ),
        (
            // Stored breeds: the reader cannot check their dependencies.
            "UnresolvedDependencyError",
            "name: x\nclusters:\n  c:\n    breed: b\n".into(),
            Artifacts::new().with_breed(depending("b", "mysql")),
            opts(),
        ),
        (
            "RecursiveDependenciesError",
            "name: x\nclusters:\n  a:\n    breed: a1\n  b:\n    breed: b1\n".into(),
            Artifacts::new()
                .with_breed(depending("a1", "b1"))
                .with_breed(depending("b1", "a1")),
            opts(),
        ),

        (
            "UnavailableGatewayPortError",
            "name: x\ngateways:\n  9050: c/web\nclusters:\n  c:\n    breed: {name: a, deployable: d, ports: {web: 80}}\n".into(),
            {
                let mut other = Gateway::new(Port::new("9050", Some("9050".into())).unwrap());
                other.name = "other/9050".into();
                Artifacts::new().with_gateways([&other])
            },
            opts(),
        ),
        (
            "NoAvailablePortError",
            "name: x\nclusters:\n  c:\n    breed: {name: a, deployable: d, ports: {web: 80, admin: 81}}\n".into(),
            none.clone(),
            opts().with_port_range(25000, 25000),
        ),
        (
            "DeploymentWorkflowNameCollision",
            "name: x\nclusters:\n  c:\n    breed: {name: a, deployable: d}\n".into(),
            {
                let mut a = Artifacts::new();
                a.workflows.insert("x".into());
                a
            },
            opts(),
        ),
    ];
    for (expected, yaml, artifacts, o) in cases {
        let mut bp = blueprint(&yaml);
        if expected == "UnresolvedEnvironmentVariableError" {
            // Written past the reader, which refuses it when it can see the breed.
            bp.environment_variables.push(EnvironmentVariable::new(
                "c.environment_variables.NOPE",
                Some("1".into()),
            ));
        }
        let e = merge(None, "x", &bp, &artifacts, &o).unwrap_err();
        assert_eq!(code(e.clone()), expected, "{e}\n{yaml}");
        assert!(!e.to_string().is_empty());
    }
    // A breed already active in another cluster of the deployment.
    let d = merge(
        None,
        "x",
        &blueprint("name: x\nclusters:\n  a:\n    breed: {name: b, deployable: d}\n"),
        &none,
        &opts(),
    )
    .unwrap()
    .deployment;
    let e = merge(
        Some(&d),
        "x",
        &blueprint("name: x\nclusters:\n  c:\n    breed: {name: b, deployable: d}\n"),
        &none,
        &opts(),
    )
    .unwrap_err();
    assert_eq!(e.code(), "NonUniqueBreedReferenceError", "{e}");
    // A merged route weight that, with the kept ones, totals neither 0% nor 100%.
    let web = "name: x\nclusters:\n  c:\n    breed: {name: a, deployable: d, ports: {web: 80}}\n";
    let d = merge(None, "x", &blueprint(web), &none, &opts())
        .unwrap()
        .deployment;
    let e = merge(
        Some(&d),
        "x",
        &blueprint("name: x\nclusters:\n  c:\n    gateways:\n      web:\n        routes:\n          b: {weight: 100%}\n    services:\n      - breed: {name: b, deployable: d, ports: {web: 80}}\n"),
        &none,
        &opts(),
    )
    .unwrap_err();
    assert_eq!(e.code(), "UnsupportedRouteWeight", "{e}");
}

#[test]
fn references_are_expanded_from_the_stored_artifacts() {
    let breed = DefaultBreed::new("sava:1.0.0", "sava1");
    let scale = DefaultScale {
        name: "small".into(),
        metadata: Default::default(),
        cpu: Quantity(0.5),
        memory: MegaByte(128.0),
        instances: 3,
    };
    let artifacts = Artifacts::new()
        .with_breed(breed.clone())
        .with_scale(scale.clone());
    let bp = blueprint(
        "name: x\nclusters:\n  c:\n    services:\n      - breed: sava:1.0.0\n        scale: small\n",
    );
    let m = merge(None, "x", &bp, &artifacts, &opts()).unwrap();
    assert!(
        m.new_breeds.is_empty(),
        "a stored breed is not stored again"
    );
    let s = &m.deployment.clusters[0].services[0];
    assert_eq!(s.breed, breed);
    assert_eq!(s.scale.as_ref(), Some(&scale));
}

#[test]
fn slicing_checks_the_remaining_weights_and_everything_removed_deletes_the_deployment() {
    let d = merge(None, "sava", &blueprint(SAVA), &Artifacts::new(), &opts())
        .unwrap()
        .deployment;
    let v1 = blueprint("name: sava\nclusters:\n  sava:\n    breed: sava:1.0.0\n");
    let e = slice(&d, &v1, T0 + 1).unwrap_err();
    assert_eq!(e.code(), "InvalidRouteWeight", "{e}");
    // Move all traffic to 1.1 first, then slice 1.0 out.
    let moved = SAVA
        .replace("weight: 90%", "weight: 0%")
        .replace("weight: 10%", "weight: 100%");
    let d = merge(
        Some(&d),
        "sava",
        &blueprint(&moved),
        &Artifacts::new(),
        &opts(),
    )
    .unwrap()
    .deployment;
    let sliced = slice(&d, &v1, T0 + 2).unwrap();
    let c = &sliced.clusters[0];
    assert_eq!(c.services[0].status.intention, Intention::Undeployment);
    assert_eq!(c.services[1].status.intention, Intention::Deployment);
    assert_eq!(
        routes(&c.gateways[0]),
        [("sava/sava/sava:1.1.0/webport".to_owned(), Some(100))]
    );
    // Everything: all services undeploying, the gateways gone; undeployed → no deployment.
    let all =
        blueprint("name: sava\nclusters:\n  sava:\n    services: ['sava:1.0.0', 'sava:1.1.0']\n");
    let mut gone = slice(&sliced, &all, T0 + 3).unwrap();
    assert!(gone.clusters[0].gateways.is_empty());
    assert!(remove_undeployed(&gone).is_some(), "not undeployed yet");
    for s in &mut gone.clusters[0].services {
        assert_eq!(s.status.intention, Intention::Undeployment);
        s.status = status::moved(&s.status, PhaseKind::Done, T0 + 4);
    }
    assert_eq!(remove_undeployed(&gone), None);
}

#[test]
fn scaling_a_service_resets_it_and_unknown_ones_are_not_found() {
    let d = merge(None, "sava", &blueprint(SAVA), &Artifacts::new(), &opts())
        .unwrap()
        .deployment;
    let mut done = d.clone();
    for s in &mut done.clusters[0].services {
        s.status = status::moved(&s.status, PhaseKind::Done, T0 + 1);
    }
    let new = DefaultScale {
        name: String::new(),
        metadata: Default::default(),
        cpu: Quantity(0.2),
        memory: MegaByte(64.0),
        instances: 5,
    };
    let scaled = scale(&done, "sava", "sava:1.0.0", new.clone(), T0 + 2).unwrap();
    let s = &scaled.clusters[0].services[0];
    assert_eq!(s.scale.as_ref().unwrap().instances, 5);
    assert_eq!(status::kind(&s.status.phase), Some(PhaseKind::Initiated));
    assert!(status::is_deployed(&scaled.clusters[0].services[1].status));
    assert_eq!(
        scale(&done, "sava", "nope", new.clone(), T0)
            .unwrap_err()
            .code(),
        "ArtifactNotFound"
    );
    assert_eq!(
        scale(&done, "nope", "sava:1.0.0", new, T0)
            .unwrap_err()
            .code(),
        "ArtifactNotFound"
    );
}

#[test]
fn an_exported_blueprint_merges_back_into_the_same_clusters() {
    let d = merge(None, "sava", &blueprint(SAVA), &Artifacts::new(), &opts())
        .unwrap()
        .deployment;
    let exported = export_blueprint(&d);
    assert!(
        exported.gateways.is_empty(),
        "deployment gateways are left out"
    );
    let again = merge(None, "sava", &exported, &Artifacts::new(), &opts())
        .unwrap()
        .deployment;
    assert_eq!(again.clusters, d.clusters);
    // And as YAML, read back.
    let yaml = vamp_core::dsl::to_yaml(&AnyArtifact::Blueprint(exported.clone()));
    assert_eq!(blueprint(&yaml), exported, "{yaml}");
}

/// Two clusters, one depending on the other through `$backend.host` and
/// `$backend.ports.port`, and a constant.
#[test]
fn dependencies_resolve_to_the_backend_s_gateway() {
    let bp = blueprint(
        "name: shop
clusters:
  frontend:
    breed:
      name: frontend:1.0
      deployable: front
      ports: {web: 8080/http}
      environment_variables:
        BACKEND: http://$backend.host:$backend.ports.api/v1
        VERSION: $backend.constants.version
        LOCAL: $PORT_NAME
      constants: {PORT_NAME: web}
      dependencies: {backend: 'backend:1.0'}
  backend:
    breed:
      name: backend:1.0
      deployable: back
      ports: {api: 9090/http}
      constants: {version: '1.0'}
",
    );
    let d = merge(None, "shop", &bp, &Artifacts::new(), &opts())
        .unwrap()
        .deployment;
    let frontend = d.clusters.iter().find(|c| c.name == "frontend").unwrap();
    let service = &frontend.services[0];
    assert_eq!(
        service.dependencies.get("backend").map(String::as_str),
        Some("backend")
    );
    let backend_port = d
        .ports
        .iter()
        .find(|p| p.name == "backend.ports.api")
        .unwrap()
        .number;
    let env = service_environment(&d, "frontend", service, &Lookups::default()).unwrap();
    let value = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.interpolated.clone())
    };
    assert_eq!(
        value("BACKEND"),
        Some(format!("http://127.0.0.1:{backend_port}/v1"))
    );
    assert_eq!(
        value("VERSION").as_deref(),
        Some("1.0"),
        "constants resolve (Vamp gave \"\")"
    );
    assert_eq!(value("LOCAL").as_deref(), Some("web"));
}

#[test]
fn env_lookups_are_only_what_the_caller_allows() {
    let bp = blueprint(
        "name: x\nclusters:\n  c:\n    breed:\n      name: b\n      deployable: d\n      environment_variables:\n        HOME_DIR: $env://HOME\n        NS: $config://vamp.namespace\n",
    );
    let d = merge(None, "x", &bp, &Artifacts::new(), &opts())
        .unwrap()
        .deployment;
    let s = &d.clusters[0].services[0];
    let env = service_environment(&d, "c", s, &Lookups::default()).unwrap();
    assert!(
        env.iter().all(|e| e.interpolated.as_deref() == Some("")),
        "{env:?}"
    );
    let config = |path: &str| (path == "vamp.namespace").then(|| "default".to_owned());
    let env = service_environment(
        &d,
        "c",
        s,
        &Lookups {
            config: Some(&config),
            env: None,
        },
    )
    .unwrap();
    assert_eq!(
        env.iter()
            .find(|e| e.name == "NS")
            .unwrap()
            .interpolated
            .as_deref(),
        Some("default")
    );
}

// === properties ===

fn random_blueprint() -> impl Strategy<Value = String> {
    let service = (0..4u8, prop::collection::btree_set(0..3u8, 1..3), 1..4u8);
    let cluster = prop::collection::vec(service, 1..4);
    prop::collection::vec(cluster, 1..4).prop_map(|clusters| {
        let mut y = String::from("name: p\nclusters:\n");
        let mut used = std::collections::BTreeSet::new();
        for (ci, services) in clusters.iter().enumerate() {
            y.push_str(&format!("  c{ci}:\n    services:\n"));
            for (b, ports, n) in services {
                let breed = format!("b{ci}{b}");
                if !used.insert(breed.clone()) {
                    continue;
                }
                let ports: Vec<String> = ports.iter().map(|p| format!("p{p}: {}", 8000 + u32::from(*p))).collect();
                y.push_str(&format!(
                    "      - breed: {{name: {breed}, deployable: d, ports: {{{}}}}}\n        scale: {{cpu: 0.1, memory: 16MB, instances: {n}}}\n",
                    ports.join(", ")
                ));
            }
        }
        y
    })
}

proptest! {
    #[test]
    fn merges_are_idempotent_and_ports_unique_and_in_range(a in random_blueprint(), b in random_blueprint()) {
        let o = opts();
        let first = merge(None, "p", &blueprint(&a), &Artifacts::new(), &o).unwrap().deployment;
        let again = merge(Some(&first), "p", &blueprint(&a), &Artifacts::new(), &MergeOptions::new(T0 + 9)).unwrap().deployment;
        prop_assert_eq!(&again, &first);
        // A second blueprint merged on top: every gateway port unique and in range, and every
        // route weight total 0 or 100.
        if let Ok(m) = merge(Some(&first), "p", &blueprint(&b), &Artifacts::new(), &o) {
            let mut seen = std::collections::BTreeSet::new();
            for g in m.deployment.clusters.iter().flat_map(|c| &c.gateways) {
                prop_assert!((24000..=29999).contains(&g.port.number));
                prop_assert!(seen.insert(g.port.number), "port {} twice", g.port.number);
                let total: u32 = g.routes.iter().filter_map(|r| r.definition()?.weight).map(|w| u32::from(w.0)).sum();
                prop_assert!(total == 0 || total == 100, "{}: {}", g.name, total);
            }
            let again = merge(Some(&m.deployment), "p", &blueprint(&b), &Artifacts::new(), &o).unwrap().deployment;
            prop_assert_eq!(again, m.deployment);
        }
    }
}

#[test]
fn weights_are_filled_as_vamp_did() {
    let mut rs: Vec<Route> = (0..3)
        .map(|i| Route::Default(DefaultRoute::new(format!("r{i}"))))
        .collect();
    assert_eq!(vamp_core::ops::deploy::fill_weights(&mut rs), 100);
    let w: Vec<u8> = rs
        .iter()
        .map(|r| r.definition().unwrap().weight.unwrap().0)
        .collect();
    assert_eq!(w, [33, 33, 34]);
    let _ = Percentage(0);
}

#[test]
fn a_deployment_survives_the_store_s_serialisation() {
    let d = merge(None, "sava", &blueprint(SAVA), &Artifacts::new(), &opts())
        .unwrap()
        .deployment;
    let json = serde_json::to_value(&d).unwrap();
    let mut back: Deployment = serde_json::from_value(json.clone()).unwrap();
    vamp_core::ops::deploy::normalize(&mut back);
    assert_eq!(
        back.clusters[0].gateways, d.clusters[0].gateways,
        "{json:#}"
    );
    assert_eq!(back, d);
    let mut again = back.clone();
    vamp_core::ops::deploy::normalize(&mut again);
    assert_eq!(again, back, "idempotent");
}

#[test]
fn virtual_hosts_are_generated_when_asked() {
    let bp = blueprint(SAVA);
    let plain = merge(None, "sava", &bp, &Artifacts::new(), &opts())
        .unwrap()
        .deployment;
    assert!(
        plain.clusters[0].gateways[0].virtual_hosts.is_empty(),
        "off by default"
    );
    let d = merge(
        None,
        "sava",
        &bp,
        &Artifacts::new(),
        &opts().with_virtual_hosts(true),
    )
    .unwrap()
    .deployment;
    assert_eq!(
        d.clusters[0].gateways[0].virtual_hosts,
        ["webport.sava.sava.vamp"]
    );
    assert_eq!(d.gateways[0].virtual_hosts, ["9050.sava.vamp"]);
    let again = merge(
        Some(&d),
        "sava",
        &bp,
        &Artifacts::new(),
        &opts().with_virtual_hosts(true),
    )
    .unwrap()
    .deployment;
    assert_eq!(again, d, "not added twice");
}

#[test]
fn a_cluster_sla_is_set_and_removed() {
    let d = merge(None, "sava", &blueprint(SAVA), &Artifacts::new(), &opts())
        .unwrap()
        .deployment;
    let sla = match read_str(
        "name: fast\ntype: response_time_sliding_window\nthreshold: {upper: 100, lower: 10}\nwindow: {interval: 60, cooldown: 60}\n",
        Some(ArtifactKind::Sla),
    )
    .unwrap()
    .remove(0)
    {
        AnyArtifact::Sla(s) => s,
        other => panic!("{other:?}"),
    };
    let with = vamp_core::ops::deploy::set_sla(&d, "sava", Some(sla.clone())).unwrap();
    assert_eq!(with.clusters[0].sla, Some(sla));
    let without = vamp_core::ops::deploy::set_sla(&with, "sava", None).unwrap();
    assert_eq!(without.clusters[0].sla, None);
    assert_eq!(
        vamp_core::ops::deploy::set_sla(&d, "nope", None)
            .unwrap_err()
            .code(),
        "ArtifactNotFound"
    );
}
