//! Every URL form of every concern parses to the expected config; building a compiled-out
//! backend names its feature; configs round-trip through serde; secrets stay out of Debug.

use vamp_backends::kv::*;
use vamp_backends::metrics::*;
use vamp_backends::persistence::*;
use vamp_backends::scheduler::*;
use vamp_core::Error;

#[test]
fn every_scheme_parses() {
    let kv = [
        ("memory://", "memory"),
        ("memory:///vamp/default", "memory"),
        ("etcd://127.0.0.1:2379/vamp", "etcd"),
        ("etcd://a,b:2380/vamp", "etcd"),
        ("etcd+https://a/vamp", "etcd"),
        ("consul://127.0.0.1:8500/vamp?token=t", "consul"),
        ("zk://z1:2181,z2:2181/vamp", "zookeeper"),
        ("zookeeper://z1/vamp", "zookeeper"),
        ("redis://:secret@127.0.0.1:6379/2?prefix=/vamp", "redis"),
    ];
    for (url, backend) in kv {
        assert_eq!(
            KvBackendConfig::from_url(url)
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .backend(),
            backend,
            "{url}"
        );
    }
    let persistence = [
        ("memory://", "memory"),
        ("postgres://vamp:pw@127.0.0.1:5432/vamp", "postgres"),
        ("postgresql://127.0.0.1/vamp", "postgres"),
        ("mysql://root@127.0.0.1:3306/vamp", "mysql"),
        ("mariadb://127.0.0.1/vamp", "mysql"),
        ("sqlite:///tmp/vamp.db", "sqlite"),
        ("sqlite://:memory:", "sqlite"),
        ("mssql://sa:pw@127.0.0.1:1433/vamp", "mssql"),
        ("sqlserver://127.0.0.1/vamp", "mssql"),
    ];
    for (url, backend) in persistence {
        assert_eq!(
            PersistenceBackendConfig::from_url(url)
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .backend(),
            backend,
            "{url}"
        );
    }
    let schedulers = [
        ("memory://", "memory"),
        ("local://", "local"),
        ("local:///var/lib/vamp", "local"),
        ("docker://", "docker"),
        ("docker:///var/run/docker.sock", "docker"),
        ("docker://127.0.0.1:2375", "docker"),
        ("kubernetes://", "kubernetes"),
        ("kubernetes://10.0.0.1:6443?namespace=vamp", "kubernetes"),
        ("marathon://127.0.0.1:8080?group=vamp", "marathon"),
    ];
    for (url, backend) in schedulers {
        assert_eq!(
            SchedulerBackendConfig::from_url(url)
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .backend(),
            backend,
            "{url}"
        );
    }
    for (url, backend) in [
        ("memory://", "memory"),
        (
            "elasticsearch://127.0.0.1:9200?index=vamp-pulse",
            "elasticsearch",
        ),
        ("es+https://u:p@es:9243", "elasticsearch"),
        ("prometheus://127.0.0.1:9090", "prometheus"),
    ] {
        assert_eq!(
            MetricsBackendConfig::from_url(url)
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .backend(),
            backend,
            "{url}"
        );
    }
}

#[test]
fn metrics_urls_carry_their_settings() {
    use vamp_backends::metrics::{ElasticsearchConfig, PrometheusConfig};
    let MetricsBackendConfig::Elasticsearch(ElasticsearchConfig {
        address,
        index,
        logs,
        refresh_records,
        user,
        ..
    }) = MetricsBackendConfig::from_url(
        "es+https://vamp:pw@es:9243?index=pulse&logs=vamp-vga-prod&refresh=wait_for",
    )
    .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (
            address.as_str(),
            index.as_str(),
            logs.as_str(),
            refresh_records,
            user.as_deref()
        ),
        (
            "https://es:9243",
            "pulse",
            "vamp-vga-prod",
            true,
            Some("vamp")
        )
    );
    let MetricsBackendConfig::Prometheus(PrometheusConfig { address, .. }) =
        MetricsBackendConfig::from_url("prometheus+https://u:p@prom:443/monitoring/").unwrap()
    else {
        panic!()
    };
    assert_eq!(address, "https://prom:443/monitoring");
    let c = MetricsBackendConfig::from_url("prometheus://u:s3cr3t@prom").unwrap();
    assert!(!format!("{c:?}").contains("s3cr3t"));
}

#[test]
fn urls_carry_their_settings() {
    let KvBackendConfig::Etcd(etcd) =
        KvBackendConfig::from_url("etcd://a,b:2380/vamp/default").unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (etcd.endpoints.clone(), etcd.prefix.as_str()),
        (
            vec!["http://a:2379".to_owned(), "http://b:2380".to_owned()],
            "/vamp/default"
        )
    );
    let KvBackendConfig::Redis(redis) =
        KvBackendConfig::from_url("redis://:secret@h:6380/2?prefix=/vamp").unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (
            redis.address.as_str(),
            redis.database,
            redis.prefix.as_str()
        ),
        ("h:6380", 2, "/vamp")
    );
    assert_eq!(
        redis.password.as_ref().map(|s| s.0.as_str()),
        Some("secret")
    );
    assert!(
        !format!("{redis:?}").contains("secret"),
        "passwords stay out of Debug"
    );
    let PersistenceBackendConfig::Postgres(pg) =
        PersistenceBackendConfig::from_url("postgresql://vamp:pw@db/vamp?table=art").unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (pg.url.0.as_str(), pg.table.as_str()),
        ("postgres://vamp:pw@db/vamp?table=art", "art")
    );
    assert!(!format!("{pg:?}").contains("pw"));
    let SchedulerBackendConfig::Kubernetes(k) =
        SchedulerBackendConfig::from_url("kubernetes://10.0.0.1?namespace=vamp").unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (k.address.as_deref(), k.namespace.as_deref()),
        (Some("https://10.0.0.1:6443"), Some("vamp"))
    );
    assert_eq!(k.run_ttl_s, None);
    let SchedulerBackendConfig::Kubernetes(k) =
        SchedulerBackendConfig::from_url("kubernetes://?namespace=vamp&run-ttl=30").unwrap()
    else {
        panic!()
    };
    assert_eq!((k.address, k.run_ttl_s), (None, Some(30)));
    let bad = SchedulerBackendConfig::from_url("kubernetes://?run-ttl=soon").unwrap_err();
    assert!(bad.to_string().contains("run-ttl 'soon'"), "{bad}");
    let SchedulerBackendConfig::Docker(d) =
        SchedulerBackendConfig::from_url("docker:///run/docker.sock").unwrap()
    else {
        panic!()
    };
    assert_eq!(d.address.as_deref(), Some("unix:///run/docker.sock"));
}

#[test]
fn bad_urls_are_config_errors() {
    for url in ["etcd-without-scheme", "ftp://x", "redis://h/notanumber"] {
        assert!(
            matches!(
                KvBackendConfig::from_url(url),
                Err(Error::InvalidConfig { .. })
            ),
            "{url}"
        );
    }
    assert!(matches!(
        PersistenceBackendConfig::from_url("sqlite://"),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        SchedulerBackendConfig::from_url("nomad://x"),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        MetricsBackendConfig::from_url("influx://x"),
        Err(Error::InvalidConfig { .. })
    ));
}

#[tokio::test]
async fn compiled_out_backends_name_their_feature() {
    // With every feature on, every case below is compiled out.
    #[allow(unused_mut)]
    let mut cases: Vec<(Result<(), Error>, &str, &str)> = Vec::new();
    // An implemented backend only when its feature is off (it would connect otherwise).
    macro_rules! case {
        ($config:ident, $url:literal, $backend:literal, $feature:literal) => {
            #[cfg(not(feature = $feature))]
            cases.push((
                $config::from_url($url).unwrap().build().await.map(drop),
                $backend,
                $feature,
            ));
        };
    }
    case!(KvBackendConfig, "etcd://h/p", "etcd", "kv-etcd");
    case!(KvBackendConfig, "consul://h/p", "consul", "kv-consul");
    case!(KvBackendConfig, "zk://h/p", "zookeeper", "kv-zookeeper");
    case!(KvBackendConfig, "redis://h", "redis", "kv-redis");
    case!(
        PersistenceBackendConfig,
        "postgres://h/db",
        "postgres",
        "persistence-postgres"
    );
    case!(
        PersistenceBackendConfig,
        "mysql://h/db",
        "mysql",
        "persistence-mysql"
    );
    case!(
        PersistenceBackendConfig,
        "sqlite:///tmp/x.db",
        "sqlite",
        "persistence-sqlite"
    );
    case!(
        PersistenceBackendConfig,
        "mssql://h/db",
        "mssql",
        "persistence-mssql"
    );
    case!(
        SchedulerBackendConfig,
        "local://",
        "local",
        "scheduler-local"
    );
    case!(
        SchedulerBackendConfig,
        "docker://",
        "docker",
        "scheduler-docker"
    );
    case!(
        SchedulerBackendConfig,
        "kubernetes://",
        "kubernetes",
        "scheduler-kubernetes"
    );
    case!(
        SchedulerBackendConfig,
        "marathon://h",
        "marathon",
        "scheduler-marathon"
    );
    case!(
        MetricsBackendConfig,
        "es://h",
        "elasticsearch",
        "metrics-elasticsearch"
    );
    case!(
        MetricsBackendConfig,
        "prometheus://h",
        "prometheus",
        "metrics-prometheus"
    );
    for (result, backend, feature) in cases {
        match result {
            Err(Error::FeatureDisabled {
                backend: b,
                feature: f,
            }) => assert_eq!((b, f), (backend, feature)),
            other => panic!("{backend}: expected FeatureDisabled, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn memory_backends_build_and_work() {
    use vamp_core::kv::{KeyPath, KeyValueStoreExt};
    let kv = KvBackendConfig::from_url("memory:///vamp/default")
        .unwrap()
        .build()
        .await
        .unwrap();
    kv.put(&KeyPath::parse("/gateways").unwrap(), "[]".into())
        .await
        .unwrap();
    assert_eq!(
        kv.get_string(&KeyPath::parse("/gateways").unwrap())
            .await
            .unwrap()
            .as_deref(),
        Some("[]")
    );
    vamp_core::conformance::kv::run_all(&kv, &KeyPath::parse("/selection").unwrap()).await;
    let p = PersistenceBackendConfig::from_url("memory://")
        .unwrap()
        .build()
        .await
        .unwrap();
    vamp_core::conformance::persistence::run_all(&p, "selection").await;
    let s = SchedulerBackendConfig::from_url("memory://")
        .unwrap()
        .build()
        .await
        .unwrap();
    let image = vamp_core::model::Deployable {
        deployable_type: None,
        definition: "busybox".into(),
    };
    vamp_core::conformance::scheduler::run_all(&s, "selection", &image).await;
    let m = MetricsBackendConfig::from_url("memory://")
        .unwrap()
        .build()
        .await
        .unwrap();
    vamp_core::conformance::metrics::run_all_events(
        &m.events,
        "selection",
        vamp_core::time::now_millis(),
    )
    .await;
}

#[test]
fn configs_round_trip_through_serde() {
    let configs = [
        serde_json::to_value(KvBackendConfig::from_url("etcd://a:1/p").unwrap()).unwrap(),
        serde_json::to_value(KvBackendConfig::from_url("memory://").unwrap()).unwrap(),
    ];
    assert_eq!(configs[0]["type"], "etcd");
    assert_eq!(
        configs[1],
        serde_json::json!({"type": "memory", "prefix": "/"})
    );
    let back: KvBackendConfig = serde_json::from_value(configs[0].clone()).unwrap();
    assert_eq!(back, KvBackendConfig::from_url("etcd://a:1/p").unwrap());
    let from_file: KvBackendConfig =
        serde_json::from_str(r#"{"type": "zookeeper", "servers": ["z:2181"]}"#).unwrap();
    assert_eq!(from_file.backend(), "zookeeper");
    let p: PersistenceBackendConfig =
        serde_json::from_str(r#"{"type": "postgres", "url": "postgres://h/db"}"#).unwrap();
    assert_eq!(p.backend(), "postgres");
    assert!(
        serde_json::from_str::<KvBackendConfig>(r#"{"type": "etcd", "endpoint": "typo"}"#).is_err(),
        "unknown keys are errors"
    );
}

/// ZooKeeper: credentials in the URL give digest access, `?acl=open` asks for Vamp's open
/// ACLs explicitly, and the password stays out of `Debug`.
#[test]
fn zookeeper_access_comes_from_the_url() {
    let KvBackendConfig::Zookeeper(c) =
        KvBackendConfig::from_url("zk://vamp:s3cret@z1:2181,z2/vamp").unwrap()
    else {
        panic!()
    };
    assert_eq!(c.user.as_deref(), Some("vamp"));
    assert_eq!(c.password.as_ref().map(|p| p.0.as_str()), Some("s3cret"));
    assert!(!c.open_acl);
    assert!(!format!("{c:?}").contains("s3cret"));
    let KvBackendConfig::Zookeeper(open) =
        KvBackendConfig::from_url("zk://z1/vamp?acl=open").unwrap()
    else {
        panic!()
    };
    assert!(open.open_acl && open.user.is_none());
    let KvBackendConfig::Zookeeper(default) = KvBackendConfig::from_url("zk://z1/vamp").unwrap()
    else {
        panic!()
    };
    assert!(
        !default.open_acl && default.user.is_none(),
        "read-only by default"
    );
    assert!(KvBackendConfig::from_url("zk://z1/vamp?acl=world").is_err());
}
