//! The SQL persistence stores against real databases: SQLite (a file in a temporary
//! directory, always), PostgreSQL (`VAMP_POSTGRES_URL`) and MariaDB/MySQL (`VAMP_MYSQL_URL`).
//! scripts/test.sh starts private PostgreSQL and MariaDB servers and sets those variables, and
//! `VAMP_POSTGRES_STOP` / `VAMP_POSTGRES_START` and `VAMP_MYSQL_STOP` / `VAMP_MYSQL_START`:
//! shell commands that stop and start the server process, for the no-data-loss tests. With CI=true or VAMP_TEST_INTEGRATION=1 a missing
//! variable is a failure, not a skip.
#![cfg(feature = "sql")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::json;
use vamp_backends::persistence::sql::{SqlOptions, SqlPersistence};
use vamp_core::Error;
use vamp_core::kv::{PutMode, Version};
use vamp_core::model::ArtifactKind;
use vamp_core::persistence::{
    ArtifactWrite, ChangeOptions, DynPersistenceStore, ListOptions, PersistenceStore,
};

const K: ArtifactKind = ArtifactKind::Breed;

/// The restart tests stop the shared PostgreSQL and MariaDB servers: they hold this lock
/// exclusively, every other test of this file holds it shared, so no test sees a server go
/// away under it.
mod fault_proxy;

static SERVERS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("VAMP_TEST_INTEGRATION").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A table of its own for every test, so tests (and runs) never see each other's rows.
fn table(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        test
    )
}

fn env_url(var: &str, feature_on: bool) -> Option<String> {
    if !feature_on {
        return None;
    }
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                !required(),
                "{var} is required for integration tests (scripts/test.sh sets it)"
            );
            eprintln!("SKIPPED: set {var} to run these tests");
            None
        }
    }
}

/// Every database this build can test, as (label, URL).
fn databases(dir: &std::path::Path) -> Vec<(&'static str, String)> {
    let mut dbs = Vec::new();
    if cfg!(feature = "persistence-sqlite") {
        dbs.push((
            "sqlite",
            format!("sqlite://{}", dir.join("vamp.db").display()),
        ));
    }
    if let Some(url) = env_url("VAMP_POSTGRES_URL", cfg!(feature = "persistence-postgres")) {
        dbs.push(("postgres", url));
    }
    if let Some(url) = env_url("VAMP_MYSQL_URL", cfg!(feature = "persistence-mysql")) {
        dbs.push(("mysql", url));
    }
    dbs
}

async fn connect(url: &str, table: &str) -> SqlPersistence {
    SqlPersistence::connect(
        url,
        SqlOptions::default()
            .table(table)
            .poll_interval(Duration::from_millis(20)),
    )
    .await
    .unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn drop_tables(url: &str, table: &str) {
    sqlx::any::install_default_drivers();
    let url = url.replacen("mariadb:", "mysql:", 1);
    if let Ok(pool) = sqlx::AnyPool::connect(&url).await {
        for t in [
            format!("{table}_log"),
            format!("{table}_seq"),
            format!("{table}_schema"),
            format!("{table}_leases"),
            table.to_owned(),
        ] {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                .execute(&pool)
                .await;
        }
        pool.close().await;
    }
}

fn put(name: &str, content: serde_json::Value, mode: PutMode) -> ArtifactWrite {
    ArtifactWrite::put(K, name, content, mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_stores_pass_the_persistence_conformance_suite() {
    let _servers = SERVERS.read().await;
    let dir = tempfile::tempdir().unwrap();
    let dbs = databases(dir.path());
    for (label, url) in &dbs {
        let t = table("conformance");
        let store = connect(url, &t).await;
        eprintln!("conformance: {label} ({store})");
        let dynamic: Arc<DynPersistenceStore> = Arc::new(store.clone());
        vamp_core::conformance::persistence::run_all(&*dynamic, "direct").await;
        drop_tables(url, &t).await;
    }
    assert!(!dbs.is_empty() || !cfg!(feature = "persistence-sqlite"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory_passes_the_conformance_suite() {
    if !cfg!(feature = "persistence-sqlite") {
        return;
    }
    let store = connect("sqlite::memory:", "vamp_artifacts").await;
    vamp_core::conformance::persistence::run_all(&store, "memory").await;
}

/// Two store instances (two pools, as two control-plane replicas would have) increment one
/// counter with optimistic concurrency: no increment is lost, and the history holds exactly
/// one version per increment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_concurrent_writers_lose_no_update() {
    let _servers = SERVERS.read().await;
    let dir = tempfile::tempdir().unwrap();
    for (label, url) in databases(dir.path()) {
        let t = table("two_writers");
        let a = connect(&url, &t).await;
        let b = connect(&url, &t).await;
        a.write(vec![put("counter", json!({"count": 0}), PutMode::Create)])
            .await
            .unwrap();
        let conflicts = Arc::new(AtomicUsize::new(0));
        let writer = |store: SqlPersistence| {
            let conflicts = Arc::clone(&conflicts);
            tokio::spawn(async move {
                for _ in 0..15 {
                    loop {
                        let r = store.read(K, "counter").await.unwrap().unwrap();
                        let count = r
                            .content
                            .as_ref()
                            .and_then(|c| c["count"].as_u64())
                            .unwrap();
                        match store
                            .write(vec![put(
                                "counter",
                                json!({"count": count + 1}),
                                PutMode::Update(r.version),
                            )])
                            .await
                        {
                            Ok(_) => break,
                            Err(e) if e.is_conflict() => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("{store}: {e}"),
                        }
                    }
                }
            })
        };
        for r in
            join_all((0..8).map(|i| writer(if i % 2 == 0 { a.clone() } else { b.clone() }))).await
        {
            r.unwrap();
        }
        let r = b.read(K, "counter").await.unwrap().unwrap();
        assert_eq!(
            r.content,
            Some(json!({"count": 120})),
            "{label}: every increment survives"
        );
        let history = a.history(K, "counter").await.unwrap();
        assert_eq!(history.len(), 121, "{label}: one version per increment");
        assert!(
            history.windows(2).all(|w| w[0].version < w[1].version),
            "{label}: versions increase"
        );
        eprintln!(
            "{label}: 120 increments from two instances, {} conflicts retried",
            conflicts.load(Ordering::Relaxed)
        );
        drop_tables(&url, &t).await;
    }
}

/// A change feed opened on one instance sees writes made through another, in version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_feed_sees_another_instances_writes() {
    let _servers = SERVERS.read().await;
    let dir = tempfile::tempdir().unwrap();
    for (label, url) in databases(dir.path()) {
        let t = table("feed");
        let a = connect(&url, &t).await;
        let b = connect(&url, &t).await;
        b.write(vec![put("before", json!({}), PutMode::Create)])
            .await
            .unwrap();
        let mut feed = a.changes(ChangeOptions::new().since(a.current_version().await.unwrap()));
        for i in 0..5 {
            b.write(vec![put(
                &format!("f{i}"),
                json!({"i": i}),
                PutMode::Overwrite,
            )])
            .await
            .unwrap();
        }
        for i in 0..5 {
            let r = tokio::time::timeout(Duration::from_secs(10), feed.next())
                .await
                .expect("change in time")
                .unwrap()
                .unwrap();
            assert_eq!(r.name, format!("f{i}"), "{label}");
        }
        drop_tables(&url, &t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_keep_case_and_sort_bytewise_and_long_names_are_refused() {
    let _servers = SERVERS.read().await;
    let dir = tempfile::tempdir().unwrap();
    for (label, url) in databases(dir.path()) {
        let t = table("names");
        let s = connect(&url, &t).await;
        for n in ["b", "B", "a", "A", "é", "z "] {
            s.write(vec![put(n, json!({ "n": n }), PutMode::Create)])
                .await
                .unwrap_or_else(|e| panic!("{label} {n:?}: {e}"));
        }
        // "z" differs from "z " (MySQL's PAD SPACE collations would call them equal).
        s.write(vec![put("z", json!({}), PutMode::Create)])
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let names: Vec<String> = s
            .list(K, ListOptions::all())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        let mut expected: Vec<String> = ["b", "B", "a", "A", "é", "z ", "z"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        expected.sort();
        assert_eq!(names, expected, "{label}: byte order, case kept");
        let long = "x".repeat(256);
        let e = s
            .write(vec![put(&long, json!({}), PutMode::Overwrite)])
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{label}: {e}");
        s.write(vec![put(&"y".repeat(255), json!({}), PutMode::Overwrite)])
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        drop_tables(&url, &t).await;
    }
}

#[tokio::test]
async fn a_schema_newer_than_the_library_is_refused() {
    let _servers = SERVERS.read().await;
    if !cfg!(feature = "persistence-sqlite") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("v.db").display());
    let s = connect(&url, "vamp_artifacts").await;
    s.write(vec![put("kept", json!({"v": 1}), PutMode::Create)])
        .await
        .unwrap();
    drop(s);
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO vamp_artifacts_schema (version) VALUES (99)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let e = SqlPersistence::connect(&url, SqlOptions::default())
        .await
        .unwrap_err();
    let message = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(message.contains("schema is version 99, newer"), "{message}");
    // Reconnecting with a current schema keeps the data (migrations are idempotent).
    let dir2 = tempfile::tempdir().unwrap();
    let url2 = format!("sqlite://{}", dir2.path().join("w.db").display());
    let s = connect(&url2, "vamp_artifacts").await;
    s.write(vec![put("kept", json!({"v": 1}), PutMode::Create)])
        .await
        .unwrap();
    drop(s);
    let s = connect(&url2, "vamp_artifacts").await;
    assert_eq!(
        s.read(K, "kept").await.unwrap().unwrap().content,
        Some(json!({"v": 1}))
    );
}

#[tokio::test]
async fn hostile_table_names_are_refused_before_any_sql() {
    let _servers = SERVERS.read().await;
    for t in ["x; DROP TABLE y", "a-b", "", "1x", "x\"y"] {
        let e = SqlPersistence::connect("sqlite::memory:", SqlOptions::default().table(t))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidConfig { .. } | Error::FeatureDisabled { .. }
            ),
            "{t:?}: {e}"
        );
    }
}

/// Something that identifies the running server process: PostgreSQL's postmaster start
/// time; on MySQL a global variable that `mark` sets to a marker value and that a restart
/// resets to its default.
async fn server_identity(url: &str, mark: bool) -> String {
    sqlx::any::install_default_drivers();
    let url = url.replacen("mariadb:", "mysql:", 1);
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let q = if url.starts_with("postgres") {
        "SELECT CAST(pg_postmaster_start_time() AS TEXT) AS v"
    } else {
        if mark {
            sqlx::query("SET GLOBAL max_connect_errors = 987654")
                .execute(&pool)
                .await
                .unwrap();
        }
        "SELECT CAST(@@GLOBAL.max_connect_errors AS CHAR) AS v"
    };
    let row = sqlx::query(q).fetch_one(&pool).await.unwrap();
    pool.close().await;
    sqlx::Row::try_get::<String, _>(&row, "v").unwrap()
}

async fn run(var: &str) {
    let cmd = std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set"));
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "{var} ({cmd}) failed: {status}");
}

/// Writes, drops the store, stops the database server process, checks that a store kept
/// across the outage fails with a temporary error, starts the server, reconnects, and finds
/// every acknowledged write with its history; the kept store recovers without being rebuilt.
async fn survives_a_server_restart(label: &str, url_var: &str, var_prefix: &str, feature_on: bool) {
    let _servers = SERVERS.write().await;
    let Some(url) = env_url(url_var, feature_on) else {
        return;
    };
    let (stop, start) = (format!("{var_prefix}_STOP"), format!("{var_prefix}_START"));
    if std::env::var(&stop).is_err() || std::env::var(&start).is_err() {
        assert!(
            !required(),
            "{stop} and {start} are required for integration tests (scripts/test.sh sets them)"
        );
        eprintln!("SKIPPED: set {stop} and {start} to run the {label} restart test");
        return;
    }
    let t = table("restart");
    let s = connect(&url, &t).await;
    let mut options = SqlOptions::default().table(&t);
    options.acquire_timeout = Duration::from_secs(2);
    let kept = SqlPersistence::connect(&url, options).await.unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let name = format!("r{i}");
        let mut versions = vec![
            s.write(vec![put(
                &name,
                json!({"i": i, "step": 0}),
                PutMode::Create,
            )])
            .await
            .unwrap()[0]
                .unwrap(),
        ];
        for step in 1..3 {
            versions.push(
                s.write(vec![put(
                    &name,
                    json!({"i": i, "step": step}),
                    PutMode::Update(*versions.last().unwrap()),
                )])
                .await
                .unwrap()[0]
                    .unwrap(),
            );
        }
        acknowledged.push((name, versions));
    }
    // A batch: all or nothing, acknowledged together.
    s.write(vec![
        put("batch-a", json!({}), PutMode::Create),
        put("batch-b", json!({}), PutMode::Create),
    ])
    .await
    .unwrap();
    drop(s);

    let before = server_identity(&url, true).await;
    run(&stop).await;
    let e = kept.read(K, "r0").await.expect_err("the server is down");
    assert!(
        e.is_temporary(),
        "{label}: an outage must be a temporary error: {e:?}"
    );
    let e = kept
        .write(vec![put("during", json!({}), PutMode::Create)])
        .await
        .expect_err("the server is down");
    assert!(
        e.is_temporary(),
        "{label}: an outage must be a temporary error: {e:?}"
    );
    run(&start).await;

    let s = connect(&url, &t).await;
    let after = server_identity(&url, false).await;
    assert_ne!(
        before, after,
        "{label}: the server process must have been restarted"
    );
    for (name, versions) in &acknowledged {
        let r = s
            .read(K, name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{label}: {name} lost"));
        assert_eq!(r.version, *versions.last().unwrap(), "{label}: {name}");
        assert_eq!(r.content.as_ref().unwrap()["step"], 2, "{label}: {name}");
        let history: Vec<Version> = s
            .history(K, name)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(&history, versions, "{label}: {name}'s history");
    }
    assert!(
        s.read(K, "batch-a").await.unwrap().is_some()
            && s.read(K, "batch-b").await.unwrap().is_some()
    );
    assert!(
        s.read(K, "during").await.unwrap().is_none(),
        "{label}: a write that failed must not appear"
    );

    // The store that lived through the restart: its pooled connections died with the server.
    // Any error it still reports is temporary, and it recovers without being rebuilt.
    let mut recovered = false;
    let mut errors = 0;
    for _ in 0..50 {
        match kept.read(K, "r0").await {
            Ok(Some(r)) => {
                assert_eq!(r.content.unwrap()["step"], 2);
                recovered = true;
                break;
            }
            Ok(None) => panic!("{label}: r0 lost"),
            Err(e) => {
                assert!(
                    e.is_temporary(),
                    "{label}: an error across a restart must be temporary: {e:?}"
                );
                errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(recovered, "{label}: the old store never recovered");
    eprintln!(
        "{label}: restarted; every acknowledged write and its history found; the old store recovered after {errors} temporary errors"
    );
    kept.write(vec![put("after", json!({}), PutMode::Create)])
        .await
        .unwrap();
    drop_tables(&url, &t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_loses_nothing_across_a_server_restart() {
    survives_a_server_restart(
        "postgres",
        "VAMP_POSTGRES_URL",
        "VAMP_POSTGRES",
        cfg!(feature = "persistence-postgres"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_loses_nothing_across_a_server_restart() {
    survives_a_server_restart(
        "mysql",
        "VAMP_MYSQL_URL",
        "VAMP_MYSQL",
        cfg!(feature = "persistence-mysql"),
    )
    .await;
}

/// Writes dropped at random points (a request timing out, a client going away) under
/// concurrency: every batch is whole or absent, every acknowledged write is there, and the
/// pool keeps working. Before writes were cancel-safe, a dropped write returned its connection
/// mid-transaction and the next user's COMMIT committed half of the dropped batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_writes_leave_no_half_written_batch() {
    let _servers = SERVERS.read().await;
    let dir = tempfile::tempdir().unwrap();
    for (label, url) in databases(dir.path()) {
        let t = table("cancel");
        let store = connect(&url, &t).await;
        let report =
            vamp_core::conformance::persistence::cancelled_writes_leave_no_half_written_batch(
                &store, "c",
            )
            .await;
        eprintln!("{label}: {report:?}");
        assert!(
            report.acknowledged > 0 && report.acknowledged < report.batches,
            "{label}: the deadlines must cancel some writes and let others finish: {report:?}"
        );
        drop(store);
        drop_tables(&url, &t).await;
    }
}

/// The lease conformance suite on every database (leases for replicas without another
/// store), and on PostgreSQL through the tests' fault proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_stores_pass_the_lease_conformance_suite() {
    let _servers = SERVERS.read().await;
    let dir = tempfile::tempdir().unwrap();
    for (label, url) in databases(dir.path()) {
        let t = table("leases");
        let store = connect(&url, &t).await;
        eprintln!("lease conformance: {label}");
        vamp_core::conformance::lease::run_all(&store, label).await;
        if label == "postgres" {
            let target = url
                .split('@')
                .next_back()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned();
            let proxy =
                fault_proxy::FaultProxy::start(target.clone(), Box::new(|| Box::pin(async {})))
                    .await;
            let mut options = SqlOptions::default().table(&t);
            options.acquire_timeout = Duration::from_secs(2);
            let faulty = SqlPersistence::connect(
                &url.replacen(&target, &format!("127.0.0.1:{}", proxy.port), 1),
                options,
            )
            .await
            .unwrap();
            vamp_core::conformance::lease::leases_survive_faults(&faulty, &store, "faults", &proxy)
                .await;
        }
        drop_tables(&url, &t).await;
    }
}
