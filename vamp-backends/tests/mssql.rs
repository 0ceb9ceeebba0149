//! SQL Server persistence against a real SQL Server, when `VAMP_TEST_MSSQL_URL` is set
//! (`mssql://user:password@host:1433/database?trust_cert=true`). SQL Server cannot run on
//! this project's machines (not in Debian; Microsoft's registries are unreachable), so this
//! test skips without the variable, saying so, even in CI.
#![cfg(feature = "persistence-mssql")]

use std::sync::Arc;

use vamp_backends::persistence::PersistenceBackendConfig;
use vamp_backends::persistence::mssql::MssqlPersistence;
use vamp_core::persistence::DynPersistenceStore;

fn url() -> Option<String> {
    let url = std::env::var("VAMP_TEST_MSSQL_URL").ok();
    if url.is_none() {
        eprintln!(
            "SKIPPED: no SQL Server can run here; set VAMP_TEST_MSSQL_URL=mssql://user:pass@host:1433/db to run the SQL Server tests"
        );
    }
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_server_passes_the_persistence_conformance_suite() {
    let Some(url) = url() else { return };
    let table = format!("vamp_test_{}", std::process::id());
    let store = MssqlPersistence::connect(&url, &table)
        .await
        .unwrap_or_else(|e| panic!("SQL Server at {url}: {e}"));
    let dynamic: Arc<DynPersistenceStore> = Arc::new(store.clone());
    vamp_core::conformance::persistence::run_all(&*dynamic, "direct").await;
    // A second connect finds the schema in place and the data intact.
    let again = MssqlPersistence::connect(&url, &table).await.unwrap();
    assert_eq!(
        again.current_version().await.unwrap(),
        store.current_version().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_server_through_the_url_selection() {
    let Some(url) = url() else { return };
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}table=vamp_sel_{}", std::process::id());
    let store = PersistenceBackendConfig::from_url(&url)
        .unwrap()
        .build()
        .await
        .unwrap();
    vamp_core::conformance::persistence::run_all(&*store, "selection").await;
}
