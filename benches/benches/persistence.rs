//! Artifact persistence throughput on real databases, next to a plain sqlx insert loop into
//! an equivalent table on the same server in the same run:
//!
//! - one artifact per write (`PersistenceStore::write` with one put; each a transaction)
//!   against one autocommitted `INSERT` per row;
//! - batches of 100 artifacts (one `write` each) against 100 `INSERT`s in one transaction;
//! - reading back 100,000 artifacts at start (a new store connects, migrates and lists them)
//!   against one `SELECT` of 100,000 rows.
//!
//! SQLite always (a file in a temporary directory, WAL), PostgreSQL when `VAMP_POSTGRES_URL`
//! names one, MariaDB/MySQL when `VAMP_MYSQL_URL` does (scripts/test.sh prints both when it
//! starts its private servers).
//!
//! `cargo bench -p vamp-benches --bench persistence --features sql` (prints a table)

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, AssertSqlSafe, Row};
use vamp_backends::persistence::sql::{SqlOptions, SqlPersistence};
use vamp_core::kv::PutMode;
use vamp_core::model::ArtifactKind;
use vamp_core::persistence::{ArtifactWrite, ListOptions, PersistenceStore};

const SINGLE: usize = 2_000;
const BATCH: usize = 100;
const BATCHES: usize = 40;
const READ_BACK: usize = 100_000;

/// A breed as Vamp's API stores it (about 400 bytes of JSON).
fn breed(i: usize) -> serde_json::Value {
    json!({
        "name": format!("sava-frontend-{i}"),
        "kind": "breeds",
        "deployable": {"type": "container/docker", "definition": format!("magneticio/sava-frontend:1.{i}.0")},
        "ports": {"webport": "8080/http"},
        "environment_variables": {"BACKEND_1": "http://$backend1.host:$backend1.ports.port/api/message"},
        "constants": {},
        "arguments": [],
        "dependencies": {"backend1": "sava-backend1:1.3.0"},
        "health_checks": [{"path": "/", "port": "webport", "initial_delay": "10s", "timeout": "5s", "interval": "10s", "failures": 10, "protocol": "HTTP"}]
    })
}

/// Rows per second.
fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// The plain loop's `INSERT` of row `i`.
fn row(sql: &str, i: usize) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .bind("breeds")
        .bind(format!("raw-{i}"))
        .bind(i as i64)
        .bind(breed(i).to_string())
        .bind(0_i64)
}

struct Raw {
    pool: AnyPool,
    table: String,
    postgres: bool,
}

impl Raw {
    async fn new(url: &str, table: String, postgres: bool) -> Raw {
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .unwrap();
        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
            .execute(&pool)
            .await
            .unwrap();
        // The store's current-row table: (kind, name) key, version, JSON text, timestamp.
        let (text, key) = if url.starts_with("mysql") {
            ("LONGTEXT", "VARBINARY(1020)")
        } else {
            ("TEXT", "VARCHAR(255)")
        };
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {table} (kind {key} NOT NULL, name {key} NOT NULL, version BIGINT NOT NULL, \
             content {text} NOT NULL, timestamp_ms BIGINT NOT NULL, PRIMARY KEY (kind, name))"
        )))
        .execute(&pool)
        .await
        .unwrap();
        Raw {
            pool,
            table,
            postgres,
        }
    }

    fn insert(&self) -> String {
        format!(
            "INSERT INTO {} (kind, name, version, content, timestamp_ms) VALUES {}",
            self.table,
            if self.postgres {
                "($1, $2, $3, $4, $5)"
            } else {
                "(?, ?, ?, ?, ?)"
            }
        )
    }

    /// One autocommitted INSERT per row.
    async fn single(&self, from: usize, n: usize) -> Duration {
        let sql = self.insert();
        let start = Instant::now();
        for i in from..from + n {
            row(&sql, i).execute(&self.pool).await.unwrap();
        }
        start.elapsed()
    }

    /// `batch` INSERTs per transaction.
    async fn batched(&self, from: usize, batches: usize, batch: usize) -> Duration {
        let sql = self.insert();
        let start = Instant::now();
        for b in 0..batches {
            let mut tx = self.pool.begin().await.unwrap();
            for i in 0..batch {
                row(&sql, from + b * batch + i)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
        start.elapsed()
    }

    /// Fills the table to `n` rows (not timed), then times one SELECT of them all.
    async fn read_back(&self, have: usize, n: usize) -> Duration {
        self.batched(have, (n - have).div_ceil(1000), 1000).await;
        let start = Instant::now();
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT kind, name, version, content, timestamp_ms FROM {}",
            self.table
        )))
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let elapsed = start.elapsed();
        assert!(rows.len() >= n, "{} rows", rows.len());
        let _: String = rows[0].try_get("content").unwrap();
        elapsed
    }

    async fn drop_table(&self) {
        sqlx::query(AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {}",
            self.table
        )))
        .execute(&self.pool)
        .await
        .unwrap();
    }
}

fn put(i: usize) -> ArtifactWrite {
    ArtifactWrite::put(
        ArtifactKind::Breed,
        format!("breed-{i}"),
        breed(i),
        PutMode::Overwrite,
    )
}

async fn drop_store_tables(url: &str, table: &str) {
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    for t in ["", "_log", "_seq", "_schema"] {
        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}{t}")))
            .execute(&pool)
            .await
            .unwrap();
    }
}

async fn measure(label: &str, url: &str) {
    let postgres = url.starts_with("postgres");
    let table = format!("bench_{}", std::process::id());
    drop_store_tables(url, &table).await;
    let options = SqlOptions::default().table(table.clone());
    let store = SqlPersistence::connect(url, options.clone()).await.unwrap();
    let raw = Raw::new(url, format!("{table}_raw"), postgres).await;

    // One artifact per write, against one autocommitted INSERT per row (interleaved halves,
    // so that neither side gets the quieter half of the run).
    let (mut ours, mut theirs) = (Duration::ZERO, Duration::ZERO);
    for half in 0..2 {
        let from = half * SINGLE / 2;
        theirs += raw.single(from, SINGLE / 2).await;
        let start = Instant::now();
        for i in from..from + SINGLE / 2 {
            store.write(vec![put(i)]).await.unwrap();
        }
        ours += start.elapsed();
    }
    let (single_ours, single_raw) = (rate(SINGLE, ours), rate(SINGLE, theirs));
    println!(
        "| {label} | one artifact per write | {single_ours:.0}/s | {single_raw:.0}/s (autocommitted INSERT per row) | {:.0}% |",
        100.0 * single_ours / single_raw
    );

    // Batches of 100.
    let from = SINGLE;
    let theirs = raw.batched(from, BATCHES, BATCH).await;
    let start = Instant::now();
    for b in 0..BATCHES {
        let writes = (0..BATCH).map(|i| put(from + b * BATCH + i)).collect();
        store.write(writes).await.unwrap();
    }
    let ours = start.elapsed();
    let n = BATCHES * BATCH;
    let (batch_ours, batch_raw) = (rate(n, ours), rate(n, theirs));
    println!(
        "| {label} | batches of {BATCH} | {batch_ours:.0}/s | {batch_raw:.0}/s ({BATCH} INSERTs per transaction) | {:.0}% |",
        100.0 * batch_ours / batch_raw
    );

    // Read back 100,000 at start.
    let have = SINGLE + n;
    for chunk in (have..READ_BACK).collect::<Vec<_>>().chunks(1000) {
        store
            .write(chunk.iter().map(|i| put(*i)).collect())
            .await
            .unwrap();
    }
    drop(store);
    let theirs = raw.read_back(have, READ_BACK).await;
    let start = Instant::now();
    let store = SqlPersistence::connect(url, options).await.unwrap();
    let all = store
        .list(ArtifactKind::Breed, ListOptions::all())
        .await
        .unwrap();
    let ours = start.elapsed();
    assert_eq!(all.len(), READ_BACK);
    println!(
        "| {label} | read back {READ_BACK} at start (connect, list) | {:.2} s | {:.2} s (one SELECT of the rows) | {:.0}% |",
        ours.as_secs_f64(),
        theirs.as_secs_f64(),
        100.0 * theirs.as_secs_f64() / ours.as_secs_f64()
    );
    drop(store);
    raw.drop_table().await;
    drop_store_tables(url, &table).await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: only measure for
    // `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    sqlx::any::install_default_drivers();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
    println!(
        "| database | workload | store | plain sqlx (same server, same run) | store / plain |\n| --- | --- | --- | --- | --- |"
    );
    if let Ok(url) = std::env::var("VAMP_POSTGRES_URL") {
        rt.block_on(measure("PostgreSQL", &url));
    } else {
        eprintln!("PostgreSQL skipped: set VAMP_POSTGRES_URL");
    }
    if let Ok(url) = std::env::var("VAMP_MYSQL_URL") {
        rt.block_on(measure("MariaDB", &url));
    } else {
        eprintln!("MariaDB skipped: set VAMP_MYSQL_URL");
    }
    rt.block_on(measure("SQLite (file, WAL)", &sqlite));
}
