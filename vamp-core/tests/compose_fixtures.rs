//! Conformance: reader-fixtures.md §9 ComposeBlueprintReaderSpec (fixtures in `compose/`).

use vamp_core::dsl::{load_documents, read_compose_ports, read_docker_compose};
use vamp_core::model::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reader/compose");

fn text(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

fn inline(c: &Cluster) -> &DefaultBreed {
    assert_eq!(c.services.len(), 1, "{}: one service", c.name);
    c.services[0].breed.inline().unwrap()
}

fn env(vars: &[EnvironmentVariable]) -> Vec<(&str, &str)> {
    vars.iter()
        .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
        .collect()
}

#[test]
fn compose1_sock_shop() {
    let result = read_docker_compose(&text("compose1.yml"), "TestName").unwrap();
    let bp = &result.blueprint;
    assert_eq!(bp.name, "TestName");
    let mut names: Vec<&str> = bp.clusters.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    let mut expected = [
        "catalogue-db",
        "cart",
        "rabbitmq",
        "user-sim",
        "user-db",
        "payment",
        "cart-db",
        "catalogue",
        "orders",
        "orders-db",
        "user",
        "front-end",
        "shipping",
    ];
    expected.sort_unstable();
    assert_eq!(names, expected);
    assert!(
        bp.gateways.is_empty() && bp.environment_variables.is_empty() && bp.dialects.is_empty()
    );
    let cluster = |n: &str| bp.clusters.iter().find(|c| c.name == n).unwrap();
    for c in &bp.clusters {
        let b = inline(c);
        assert_eq!(b.name, format!("{}:1.0.0", c.name));
        assert_eq!(
            b.deployable.deployable_type.as_deref(),
            Some("container/docker")
        );
        assert!(c.gateways.is_empty() && c.health_checks.is_none() && c.sla.is_none());
    }
    let db = inline(cluster("catalogue-db"));
    assert_eq!(db.deployable.definition, "weaveworksdemos/catalogue-db");
    assert_eq!(
        env(&db.environment_variables),
        [
            ("reschedule", "on-node-failure"),
            ("MYSQL_ROOT_PASSWORD", "${MYSQL_ROOT_PASSWORD}"),
            ("MYSQL_ALLOW_EMPTY_PASSWORD", "true"),
            ("MYSQL_DATABASE", "socksdb")
        ]
    );
    let sim = cluster("user-sim");
    assert!(inline(sim).environment_variables.is_empty());
    assert_eq!(
        sim.services[0].dialects["docker"].as_str(),
        Some("-d 60 -r 200 -c 2 -h front-end")
    );
    let user_db = inline(cluster("user-db"));
    assert_eq!(
        user_db.ports,
        vec![Port::new("port_27017", Some("27017".into())).unwrap()]
    );
    let user = inline(cluster("user"));
    assert_eq!(
        env(&user.environment_variables),
        [
            ("MONGO_HOST", "$user-db.host:$user-db.ports.port_27017"),
            ("reschedule", "on-node-failure")
        ]
    );
    assert_eq!(
        user.dependencies["user-db"],
        Ref::Reference("user-db:1.0.0".into())
    );
    let front = inline(cluster("front-end"));
    assert_eq!(
        front.ports,
        vec![Port::new("port_8079", Some("8079".into())).unwrap()]
    );
    assert_eq!(front.ports[0].port_type, PortType::Http);
    assert_eq!(
        inline(cluster("rabbitmq")).deployable.definition,
        "rabbitmq:3"
    );
}

#[test]
fn compose2_ports() {
    let doc = load_documents(&text("compose2.yml")).unwrap().remove(0);
    let ports = read_compose_ports(&doc.as_map().unwrap()["ports"], "ports").unwrap();
    let got: Vec<(&str, i64, PortType)> = ports
        .iter()
        .map(|p| (p.name.as_str(), p.number, p.port_type))
        .collect();
    use PortType::*;
    assert_eq!(
        got,
        [
            ("port_3000", 3000, Http),
            ("port_3000", 3000, Http),
            ("port_8000", 8000, Http),
            ("port_8080", 8080, Http),
            ("port_22", 22, Http),
            ("port_8001", 8001, Http),
            ("port_5000", 5000, Http),
            ("port_6060", 6060, Tcp)
        ]
    );
}

#[test]
fn compose3_wordpress() {
    let result = read_docker_compose(&text("compose3.yml"), "TestName").unwrap();
    let names: Vec<&str> = result
        .blueprint
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["db", "wordpress"]);
    let db = inline(&result.blueprint.clusters[0]);
    assert_eq!(db.deployable.definition, "mysql:5.7");
    assert_eq!(
        db.ports,
        vec![Port::new("port_3306", Some("3306".into())).unwrap()]
    );
    assert_eq!(
        env(&db.environment_variables),
        [
            ("MYSQL_ROOT_PASSWORD", "wordpress"),
            ("MYSQL_DATABASE", "wordpress"),
            ("MYSQL_USER", "wordpress"),
            ("MYSQL_PASSWORD", "wordpress")
        ]
    );
    let wp = inline(&result.blueprint.clusters[1]);
    assert_eq!(wp.deployable.definition, "wordpress:latest");
    assert_eq!(
        wp.ports,
        vec![Port::new("port_80", Some("80".into())).unwrap()]
    );
    assert_eq!(
        env(&wp.environment_variables),
        [
            ("WORDPRESS_DB_HOST", "$db.host:$db.ports.port_3306"),
            ("WORDPRESS_DB_PASSWORD", "wordpress")
        ]
    );
    assert_eq!(wp.dependencies.len(), 1);
    assert_eq!(wp.dependencies["db"], Ref::Reference("db:1.0.0".into()));
    // volumes and restart are reported, not silently dropped.
    assert_eq!(
        result.ignored,
        [
            "Did not include unsupported field: 'volumes'",
            "Did not include unsupported field: 'services/db/volumes'",
            "Did not include unsupported field: 'services/db/restart'",
            "Did not include unsupported field: 'services/wordpress/restart'"
        ]
    );
}

#[test]
fn compose4_udp_is_unsupported() {
    let doc = load_documents(&text("compose4.yml")).unwrap().remove(0);
    let err = read_compose_ports(&doc.as_map().unwrap()["ports"], "ports").unwrap_err();
    assert_eq!(err.code(), "UnsupportedProtocolError");
    assert_eq!(
        *err.notification,
        vamp_core::error::Notification::UnsupportedProtocolError {
            protocol: "udp".into()
        }
    );
}
