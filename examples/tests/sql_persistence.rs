//! `vamp serve` on the relational databases of the seed: MariaDB selected by Vamp's own
//! variables (the JDBC URL, user and password), PostgreSQL by URL; what one server stored, the
//! next one started on the same database serves. Required with CI=true or
//! VAMP_TEST_INTEGRATION=1 (the test command starts both and sets VAMP_MYSQL_URL and
//! VAMP_POSTGRES_URL); SQL Server when VAMP_TEST_MSSQL_URL gives one.
#![cfg(all(feature = "postgres", feature = "mysql", feature = "mssql"))]

mod support;

use reqwest::{Client, StatusCode};
use vamp_examples::serve::{ServeConfig, Server, start};

async fn serve(dir: &std::path::Path, config: impl FnOnce(&mut ServeConfig)) -> Server {
    let mut c = support::memory_config(dir);
    // Stored in the database under test, not in memory.
    c.in_memory = false;
    c.period_ms = 1000;
    config(&mut c);
    start(c).await.expect("the server starts")
}

/// Stores a breed through `first`, then reads it through a server started after it stopped.
async fn stored_across_servers(dir: &std::path::Path, config: impl Fn(&mut ServeConfig)) {
    let client = Client::new();
    let name = format!("sql-{}", std::process::id());
    let first = serve(&dir.join("a"), &config).await;
    let r = client
        .post(format!("http://{}/api/v1/breeds", first.addr))
        .header("Accept", "application/json")
        .header("Content-Type", "application/x-yaml")
        .body(format!("name: {name}\ndeployable: magneticio/sava:1.0.0\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    first.stop().await;
    let second = serve(&dir.join("b"), &config).await;
    let got = support::get_json(
        &client,
        &format!("http://{}/api/v1/breeds/{name}", second.addr),
    )
    .await;
    assert_eq!(got["name"], name.as_str(), "{got}");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vamp_serve_on_mariadb_by_vamp_s_variables() {
    let Ok(url) = std::env::var("VAMP_MYSQL_URL") else {
        assert!(!support::required(), "VAMP_MYSQL_URL is required");
        eprintln!("SKIPPED: set VAMP_MYSQL_URL");
        return;
    };
    // mysql://user[:password]@host:port/db as Vamp's JDBC URL, user and password.
    let rest = url.trim_start_matches("mysql://");
    let (userinfo, hostpath) = rest.split_once('@').expect("a user in VAMP_MYSQL_URL");
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let jdbc = format!("jdbc:mysql://{hostpath}");
    let table = format!("vars_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    stored_across_servers(dir.path(), |c| {
        let vars = [
            ("VAMP_PERSISTENCE_DATABASE_TYPE", "mysql".to_owned()),
            (
                "VAMP_PERSISTENCE_DATABASE_SQL_URL",
                format!("{jdbc}?table={table}"),
            ),
            ("VAMP_PERSISTENCE_DATABASE_SQL_USER", user.to_owned()),
            (
                "VAMP_PERSISTENCE_DATABASE_SQL_PASSWORD",
                password.to_owned(),
            ),
        ];
        let taken = std::mem::replace(c, ServeConfig::new(""));
        *c = taken.with_env(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()));
        assert!(
            c.persistence
                .as_deref()
                .is_some_and(|p| p.starts_with("mysql://")),
            "{c:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vamp_serve_on_postgresql_by_url() {
    let Ok(url) = std::env::var("VAMP_POSTGRES_URL") else {
        assert!(!support::required(), "VAMP_POSTGRES_URL is required");
        eprintln!("SKIPPED: set VAMP_POSTGRES_URL");
        return;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}table=url_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    stored_across_servers(dir.path(), |c| c.persistence = Some(url.clone())).await;
}

/// SQL Server cannot run on these machines: this runs when `VAMP_TEST_MSSQL_URL`
/// (`mssql://user:password@host:1433/db`) names one, by this project's URL and by Vamp's
/// JDBC variables, and says it is skipped otherwise (also in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vamp_serve_on_sql_server_when_one_is_given() {
    let Ok(url) = std::env::var("VAMP_TEST_MSSQL_URL") else {
        eprintln!("SKIPPED: set VAMP_TEST_MSSQL_URL=mssql://user:password@host:1433/db");
        return;
    };
    let run = std::process::id();
    let rest = url
        .trim_start_matches("mssql://")
        .trim_start_matches("sqlserver://");
    let (userinfo, hostpath) = rest.split_once('@').expect("a user in VAMP_TEST_MSSQL_URL");
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (host, db) = hostpath.split_once('/').unwrap_or((hostpath, "master"));
    let sep = if url.contains('?') { '&' } else { '?' };
    let by_url = format!("{url}{sep}table=url_{run}");
    let dir = tempfile::tempdir().unwrap();
    stored_across_servers(&dir.path().join("url"), |c| {
        c.persistence = Some(by_url.clone());
    })
    .await;
    let jdbc = format!(
        "jdbc:sqlserver://{host};databaseName={}",
        db.split('?').next().unwrap_or(db)
    );
    stored_across_servers(&dir.path().join("vars"), |c| {
        let vars = [
            ("VAMP_PERSISTENCE_DATABASE_TYPE", "sqlserver".to_owned()),
            ("VAMP_PERSISTENCE_DATABASE_SQL_URL", jdbc.clone()),
            ("VAMP_PERSISTENCE_DATABASE_SQL_USER", user.to_owned()),
            (
                "VAMP_PERSISTENCE_DATABASE_SQL_PASSWORD",
                password.to_owned(),
            ),
        ];
        let taken = std::mem::replace(c, ServeConfig::new(""));
        *c = taken.with_env(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()));
        assert!(
            c.persistence
                .as_deref()
                .is_some_and(|p| p.starts_with("sqlserver://")),
            "{c:?}"
        );
    })
    .await;
}
