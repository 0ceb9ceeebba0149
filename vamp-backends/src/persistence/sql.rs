//! PostgreSQL, MySQL/MariaDB and SQLite as a [`PersistenceStore`] (features
//! `persistence-postgres`, `persistence-mysql`, `persistence-sqlite`), through one sqlx code
//! path with a small dialect layer.
//!
//! # Configuration
//!
//! Through [`PersistenceBackendConfig`](super::PersistenceBackendConfig) (URL or serde): the
//! connection URL and `table` (URL query `?table=`, default `vamp_artifacts`). Directly:
//! [`SqlPersistence::connect`] with [`SqlOptions`] (table, pool size, acquire timeout, change
//! feed poll interval).
//!
//! # Schema
//!
//! With the table option `T` (default `vamp_artifacts`) the store owns four tables, created by
//! migrations shipped in this crate and applied on connect:
//!
//! | table | holds |
//! |---|---|
//! | `T` | the current record of every artifact: kind, name, version, JSON content, timestamp |
//! | `T_log` | every write in version order (a deletion has no content): history and change feed |
//! | `T_seq` | one row: the last version handed out |
//! | `T_schema` | the migrations applied |
//!
//! # Guarantees
//!
//! - A write batch is one transaction: it applies whole or not at all.
//! - Writers serialise on the `T_seq` row lock (taken first in every write transaction), so
//!   versions are committed in order and the change feed, which reads `T_log` by version,
//!   never skips a write that commits late.
//! - Optimistic concurrency is enforced by the database as well: an update is
//!   `UPDATE … WHERE version = <expected>` and a create relies on the primary key, so even a
//!   writer that bypassed the lock could not overwrite a newer version.
//! - The change feed polls `T_log` (every `poll_interval`); on PostgreSQL it also listens
//!   for a `NOTIFY` sent by each write, so changes arrive without waiting for the next poll.
//!   A feed without [`ChangeOptions::since`] starts at the version current when it is first
//!   polled (a stream does nothing until polled); for an exact starting point pass
//!   [`SqlPersistence::current_version`] as `since`.
//!
//! # Limits
//!
//! Artifact names are at most 255 characters (the key column is `VARCHAR(255)`). Names compare
//! byte-wise on every database (`COLLATE "C"` on PostgreSQL, `VARBINARY` keys on MySQL), so
//! `a`, `A` and `a ` are different artifacts and lists sort in the same order as the in-memory
//! store.
//!
//! ```no_run
//! # async fn example() -> Result<(), vamp_core::Error> {
//! use vamp_backends::persistence::sql::{SqlOptions, SqlPersistence};
//! use vamp_core::persistence::{ListOptions, PersistenceStore};
//! use vamp_core::model::ArtifactKind;
//!
//! let store = SqlPersistence::connect("postgres://vamp@127.0.0.1:5432/vamp", SqlOptions::default()).await?;
//! let breeds = store.list(ArtifactKind::Breed, ListOptions::all()).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Row, SqlSafeStr, SqlStr};
use vamp_core::Error;
use vamp_core::kv::Version;
use vamp_core::model::ArtifactKind;
use vamp_core::persistence::{
    ArtifactRecord, ArtifactWrite, ChangeOptions, ListOptions, PersistenceCapabilities,
    PersistenceStore,
};

use crate::invalid;

use super::feed::{FeedSource, change_feed};
pub use super::plan::MAX_NAME_CHARS;
use super::plan::{
    LogRow, MAX_ROWS, Row as StoredRow, check_names, check_table, chunks, copy_miss, plan,
};

/// A statement with its arguments, on the `Any` driver.
type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds log rows, in [`COLUMNS`] order.
fn bind_log<'q>(mut query: AnyQuery<'q>, chunk: &[LogRow], now: i64) -> AnyQuery<'q> {
    for l in chunk {
        query = query
            .bind(l.kind)
            .bind(l.name.as_str())
            .bind(l.version)
            .bind(l.content.as_deref())
            .bind(now);
    }
    query
}

/// The schema version this library writes; a database with a newer one is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// Options for [`SqlPersistence::connect`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlOptions {
    /// The base table name (`[A-Za-z_][A-Za-z0-9_]*`, at most 48 characters); default
    /// `vamp_artifacts`.
    pub table: String,
    /// The most pooled connections (SQLite in memory always uses one); default 8.
    pub max_connections: u32,
    /// How long to wait for a connection; default 10 s.
    pub acquire_timeout: Duration,
    /// How often the change feed polls when idle; default 200 ms (PostgreSQL is also woken by
    /// `NOTIFY`).
    pub poll_interval: Duration,
}

impl Default for SqlOptions {
    fn default() -> Self {
        Self {
            table: "vamp_artifacts".into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(200),
        }
    }
}

impl SqlOptions {
    /// Sets the base table name.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Sets the change feed's poll interval.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
}

/// Which SQL database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
    /// SQLite.
    Sqlite,
}

impl Dialect {
    /// The dialect of a connection URL (`postgres://`, `postgresql://`, `mysql://`,
    /// `mariadb://`, `sqlite:`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for another scheme.
    pub fn of_url(url: &str) -> Result<Self, Error> {
        let scheme = url
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::Mysql),
            "sqlite" => Ok(Self::Sqlite),
            other => Err(invalid(
                "sql",
                format!("unknown SQL scheme '{other}' (postgres, mysql, mariadb, sqlite)"),
            )),
        }
    }

    fn feature(self) -> (&'static str, &'static str, bool) {
        match self {
            Self::Postgres => (
                "postgres",
                "persistence-postgres",
                cfg!(feature = "persistence-postgres"),
            ),
            Self::Mysql => (
                "mysql",
                "persistence-mysql",
                cfg!(feature = "persistence-mysql"),
            ),
            Self::Sqlite => (
                "sqlite",
                "persistence-sqlite",
                cfg!(feature = "persistence-sqlite"),
            ),
        }
    }

    /// Rewrites `?` placeholders as `$1, $2, …` for PostgreSQL.
    fn sql(self, q: &str) -> String {
        if self != Self::Postgres {
            return q.to_owned();
        }
        let mut out = String::with_capacity(q.len() + 8);
        let mut n = 0;
        for c in q.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Migration 1: the tables.
    fn schema(self, t: &str) -> Vec<String> {
        match self {
            Self::Postgres => vec![
                format!("CREATE TABLE IF NOT EXISTS {t}_schema (version BIGINT PRIMARY KEY)"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_seq (id INT PRIMARY KEY, version BIGINT NOT NULL)"
                ),
                format!("INSERT INTO {t}_seq (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_log (version BIGINT PRIMARY KEY, kind VARCHAR(32) COLLATE \"C\" NOT NULL, \
                     name VARCHAR(255) COLLATE \"C\" NOT NULL, content TEXT, timestamp_ms BIGINT NOT NULL)"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS {t}_log_by_name ON {t}_log (kind, name, version)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (kind VARCHAR(32) COLLATE \"C\" NOT NULL, name VARCHAR(255) COLLATE \"C\" NOT NULL, \
                     version BIGINT NOT NULL, content TEXT NOT NULL, timestamp_ms BIGINT NOT NULL, PRIMARY KEY (kind, name))"
                ),
            ],
            // Keys are VARBINARY: byte-wise, case- and trailing-space-sensitive on MySQL and
            // MariaDB alike (their `_bin` collations are PAD SPACE: 'z' = 'z ').
            Self::Mysql => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_schema (version BIGINT PRIMARY KEY) ENGINE=InnoDB"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_seq (id INT PRIMARY KEY, version BIGINT NOT NULL) ENGINE=InnoDB"
                ),
                format!("INSERT IGNORE INTO {t}_seq (id, version) VALUES (1, 0)"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_log (version BIGINT PRIMARY KEY, kind VARBINARY(32) NOT NULL, name VARBINARY(1020) NOT NULL, \
                     content LONGTEXT, timestamp_ms BIGINT NOT NULL, \
                     INDEX {t}_log_by_name (kind, name, version)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (kind VARBINARY(32) NOT NULL, name VARBINARY(1020) NOT NULL, version BIGINT NOT NULL, \
                     content LONGTEXT NOT NULL, timestamp_ms BIGINT NOT NULL, \
                     PRIMARY KEY (kind, name)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                ),
            ],
            Self::Sqlite => vec![
                format!("CREATE TABLE IF NOT EXISTS {t}_schema (version INTEGER PRIMARY KEY)"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_seq (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)"
                ),
                format!("INSERT OR IGNORE INTO {t}_seq (id, version) VALUES (1, 0)"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_log (version INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, \
                     content TEXT, timestamp_ms INTEGER NOT NULL)"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS {t}_log_by_name ON {t}_log (kind, name, version)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, \
                     content TEXT NOT NULL, timestamp_ms INTEGER NOT NULL, PRIMARY KEY (kind, name))"
                ),
            ],
        }
    }

    fn record_schema(self, t: &str) -> String {
        match self {
            Self::Postgres => {
                format!("INSERT INTO {t}_schema (version) VALUES ($1) ON CONFLICT DO NOTHING")
            }
            Self::Mysql => format!("INSERT IGNORE INTO {t}_schema (version) VALUES (?)"),
            Self::Sqlite => format!("INSERT OR IGNORE INTO {t}_schema (version) VALUES (?)"),
        }
    }
}

/// A statement built from a checked table name ([`check_table`]) and constant text.
fn q(sql: String) -> SqlStr {
    AssertSqlSafe(std::sync::Arc::<str>::from(sql)).into_sql_str()
}

/// The statements, built once per store, and the batched ones, built per batch size.
#[derive(Debug)]
struct Statements {
    dialect: Dialect,
    table: String,
    log_table: String,
    /// Begins the write transaction, locks the version row and reads it: several statements
    /// in one message (no parameters), so one round trip.
    begin_lock: SqlStr,
    head: SqlStr,
    read: SqlStr,
    list: SqlStr,
    history: SqlStr,
    feed: SqlStr,
}

const COLUMNS: &str = "kind, name, version, content, timestamp_ms";

impl Statements {
    fn new(d: Dialect, t: &str) -> Self {
        let cols = COLUMNS;
        // MySQL has no LIMIT ALL / -1: "all" binds the largest BIGINT, which works everywhere.
        let limit = "LIMIT ? OFFSET ?";
        let begin_lock = match d {
            Dialect::Postgres => format!(
                "BEGIN; UPDATE {t}_seq SET version = version WHERE id = 1 RETURNING version"
            ),
            // MariaDB has no UPDATE … RETURNING.
            Dialect::Mysql => format!(
                "BEGIN; UPDATE {t}_seq SET version = version WHERE id = 1; \
                 SELECT version FROM {t}_seq WHERE id = 1"
            ),
            // SQLite: take the write lock at BEGIN so two writers never both hold read locks
            // and then fail to upgrade.
            Dialect::Sqlite => format!(
                "BEGIN IMMEDIATE; UPDATE {t}_seq SET version = version WHERE id = 1 RETURNING version"
            ),
        };
        Self {
            dialect: d,
            table: t.to_owned(),
            log_table: format!("{t}_log"),
            begin_lock: q(begin_lock),
            head: q(d.sql(&format!("SELECT version FROM {t}_seq WHERE id = 1"))),
            read: q(d.sql(&format!(
                "SELECT {cols} FROM {t} WHERE kind = ? AND name = ?"
            ))),
            list: q(d.sql(&format!(
                "SELECT {cols} FROM {t} WHERE kind = ? ORDER BY name {limit}"
            ))),
            history: q(d.sql(&format!(
                "SELECT {cols} FROM {t}_log WHERE kind = ? AND name = ? ORDER BY version"
            ))),
            feed: q(d.sql(&format!(
                "SELECT {cols} FROM {t}_log WHERE version > ? ORDER BY version LIMIT 500"
            ))),
        }
    }

    /// The right side of a row-value `IN` over `n` tuples of `width` placeholders, in the form
    /// each database searches its primary key with: `((?, ?), …)` on MySQL, `(VALUES (?, ?), …)`
    /// on PostgreSQL, and on SQLite a `SELECT` from the `VALUES` (given the `VALUES` directly,
    /// SQLite 3.40, as a system library may be, scans the whole table; the bundled one does not).
    fn row_values(&self, n: usize, width: usize) -> String {
        let list = self.tuples(n, width);
        match self.dialect {
            Dialect::Mysql => format!("({list})"),
            Dialect::Postgres => format!("(VALUES {list})"),
            Dialect::Sqlite => {
                let columns: Vec<String> = (1..=width).map(|i| format!("column{i}")).collect();
                format!("(SELECT {} FROM (VALUES {list}))", columns.join(", "))
            }
        }
    }

    /// `n` tuples of `width` placeholders: `(?, ?), (?, ?)`.
    fn tuples(&self, n: usize, width: usize) -> String {
        let one = format!("({})", vec!["?"; width].join(", "));
        vec![one; n].join(", ")
    }

    /// The version and content of `n` artifacts, bound as `kind, name` pairs.
    fn current_many(&self, n: usize) -> String {
        let t = &self.table;
        format!(
            "SELECT kind, name, version, content FROM {t} WHERE (kind, name) IN {}",
            self.row_values(n, 2)
        )
    }

    /// Deletes `n` current rows, bound as `kind, name, version` triples.
    fn delete_many(&self, n: usize) -> String {
        let t = &self.table;
        format!(
            "DELETE FROM {t} WHERE (kind, name, version) IN {}",
            self.row_values(n, 3)
        )
    }

    /// Inserts `n` rows into `table`; `skip_existing` leaves a row whose key exists alone
    /// instead of failing (PostgreSQL and SQLite; MySQL reports the duplicate key).
    fn insert_many(&self, table: &str, n: usize, skip_existing: bool) -> String {
        let mut sql = format!(
            "INSERT INTO {table} ({COLUMNS}) VALUES {}",
            self.tuples(n, 5)
        );
        if skip_existing && self.dialect != Dialect::Mysql {
            sql.push_str(" ON CONFLICT DO NOTHING");
        }
        sql
    }

    /// `main` (a batched statement with `?` placeholders) as the database takes it; on
    /// PostgreSQL with `log` rows appended to the log by the same statement.
    fn statement(&self, log: Option<usize>, main: &str) -> SqlStr {
        match log {
            Some(n) => q(self.dialect.sql(&format!(
                "WITH l AS ({}) {main}",
                self.insert_many(&self.log_table, n, false)
            ))),
            None => q(self.dialect.sql(main)),
        }
    }

    /// Sets the version row to `head` (an integer the store computed, not input), on
    /// PostgreSQL notifies the change feeds, and commits: one message, so one round trip.
    fn set_head_commit(&self, head: Option<i64>) -> SqlStr {
        let t = &self.table;
        q(match (head, self.dialect) {
            (None, _) => "COMMIT".to_owned(),
            (Some(v), Dialect::Postgres) => format!(
                "UPDATE {t}_seq SET version = {v} WHERE id = 1; SELECT pg_notify('{t}_changes', ''); COMMIT"
            ),
            (Some(v), _) => format!("UPDATE {t}_seq SET version = {v} WHERE id = 1; COMMIT"),
        })
    }
}

/// A pooled connection inside a write's transaction. Dropped while the transaction is open
/// (the write's future was cancelled between `BEGIN` and the answer to `COMMIT` or
/// `ROLLBACK`), the connection is closed instead of returned to the pool: the server rolls
/// the transaction back, and no later user of the pool commits the cancelled write's half.
struct Transaction {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    open: bool,
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.open
            && let Some(conn) = self.conn.take()
        {
            drop(conn.detach());
        }
    }
}

/// A [`PersistenceStore`] on PostgreSQL, MySQL/MariaDB or SQLite. Cloning shares the pool.
#[derive(Clone)]
pub struct SqlPersistence {
    pool: AnyPool,
    dialect: Dialect,
    table: String,
    label: String,
    statements: std::sync::Arc<Statements>,
    poll_interval: Duration,
    /// Whether the leases table is known to exist.
    leases_created: std::sync::Arc<std::sync::atomic::AtomicBool>,
    #[cfg_attr(not(feature = "persistence-postgres"), allow(dead_code))]
    url: crate::Secret,
}

fn db_error(label: &str, e: sqlx::Error) -> Error {
    let temporary = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            let message = d.message();
            // PostgreSQL: serialization failure, deadlock, admin shutdown, cannot connect now;
            // MySQL: deadlock, lock wait timeout; SQLite: busy, locked.
            matches!(
                code.as_ref(),
                "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "1213" | "1205" | "5" | "6"
            ) || message.contains("database is locked")
                || message.contains("Deadlock")
        }
        _ => false,
    };
    if temporary {
        Error::Unavailable {
            backend: label.to_owned(),
            source: Box::new(e),
        }
    } else {
        Error::Backend {
            backend: label.to_owned(),
            source: Box::new(e),
        }
    }
}

fn redact(url: &str) -> String {
    // scheme://user:password@host/db -> scheme://user@host/db
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) => {
                    format!("{}@{host}", user.split(':').next().unwrap_or_default())
                }
                None => authority.to_owned(),
            };
            let path = path.split('?').next().unwrap_or_default();
            format!("{scheme}://{authority}/{path}")
        }
        None => url.split('?').next().unwrap_or_default().to_owned(),
    }
}

impl SqlPersistence {
    /// Connects to the database at `url` and applies the schema migrations.
    ///
    /// URLs: `postgres://user:password@host:5432/db`, `mysql://user:password@host:3306/db`
    /// (also `mariadb://`), `sqlite:///path/to/file.db` (created if missing) or `sqlite::memory:`.
    ///
    /// sqlx's `Any` drivers are installed with [`sqlx::any::install_default_drivers`]; an
    /// application that installs its own driver list first must include the ones it uses here.
    ///
    /// # Errors
    /// [`Error::FeatureDisabled`] when the database's feature is compiled out,
    /// [`Error::InvalidConfig`] for a bad URL or table, [`Error::Unavailable`] when the server
    /// cannot be reached, [`Error::Backend`] when the schema is newer than this library or a
    /// migration fails.
    pub async fn connect(url: &str, options: SqlOptions) -> Result<Self, Error> {
        let dialect = Dialect::of_url(url)?;
        let (backend, feature, enabled) = dialect.feature();
        if !enabled {
            return Err(Error::FeatureDisabled { backend, feature });
        }
        check_table(&options.table)?;
        sqlx::any::install_default_drivers();
        let mut url = url.to_owned();
        if let Some(rest) = url.strip_prefix("mariadb:") {
            url = format!("mysql:{rest}");
        }
        let memory = dialect == Dialect::Sqlite && url.contains(":memory:");
        if dialect == Dialect::Sqlite && !memory && !url.contains("mode=") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let label = format!("Sql({}, table {})", redact(&url), options.table);
        let pool = AnyPoolOptions::new()
            // Every connection to `sqlite::memory:` would be its own database.
            .max_connections(if memory {
                1
            } else {
                options.max_connections.max(1)
            })
            .acquire_timeout(options.acquire_timeout)
            .connect(&url)
            .await
            .map_err(|e| db_error(&label, e))?;
        let store = Self {
            pool,
            dialect,
            statements: std::sync::Arc::new(Statements::new(dialect, &options.table)),
            table: options.table,
            label,
            poll_interval: options.poll_interval,
            leases_created: std::sync::Arc::default(),
            url: crate::Secret(url),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The database this store talks to.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn migrate(&self) -> Result<(), Error> {
        if self.dialect == Dialect::Sqlite {
            // WAL lets readers run beside the writer; it is a property of the file.
            let _ = sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&self.pool)
                .await;
        }
        // Two stores connecting at once may race on CREATE … IF NOT EXISTS (PostgreSQL can
        // report a duplicate type); every statement is idempotent, so try again.
        let mut attempt = 0;
        loop {
            match self.migrate_once().await {
                Ok(()) => return Ok(()),
                Err((e, retry)) if retry && attempt < 3 => {
                    attempt += 1;
                    vamp_core::rt::sleep(Duration::from_millis(50 * attempt)).await;
                    if attempt == 3 {
                        return Err(e);
                    }
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// One attempt; the flag says whether trying again could help.
    async fn migrate_once(&self) -> Result<(), (Error, bool)> {
        let t = &self.table;
        let found: Option<i64> = match sqlx::query(AssertSqlSafe(format!(
            "SELECT MAX(version) AS v FROM {t}_schema"
        )))
        .fetch_one(&self.pool)
        .await
        {
            Ok(row) => row.try_get::<Option<i64>, _>("v").ok().flatten(),
            Err(_) => None,
        };
        if let Some(found) = found {
            if found > SCHEMA_VERSION {
                let source = format!(
                    "the database schema is version {found}, newer than this library's {SCHEMA_VERSION}; upgrade vamp-backends"
                );
                return Err((
                    Error::Backend {
                        backend: self.label.clone(),
                        source: source.into(),
                    },
                    false,
                ));
            }
            if found == SCHEMA_VERSION {
                return Ok(());
            }
        }
        for stmt in self.dialect.schema(t) {
            sqlx::query(AssertSqlSafe(stmt))
                .execute(&self.pool)
                .await
                .map_err(|e| (db_error(&self.label, e), true))?;
        }
        sqlx::query(AssertSqlSafe(self.dialect.record_schema(t)))
            .bind(SCHEMA_VERSION)
            .execute(&self.pool)
            .await
            .map_err(|e| (db_error(&self.label, e), true))?;
        Ok(())
    }

    fn err(&self, e: sqlx::Error) -> Error {
        db_error(&self.label, e)
    }

    /// A text column, which MySQL's `VARBINARY` keys return as bytes (read so first there,
    /// not after a failed attempt that allocates an error per row).
    fn text(&self, row: &AnyRow, column: &str) -> Result<String, Error> {
        let utf8 = |bytes: Vec<u8>| {
            String::from_utf8(bytes).map_err(|e| Error::Invalid {
                what: "stored name",
                value: String::from_utf8_lossy(e.as_bytes())
                    .chars()
                    .take(64)
                    .collect(),
                reason: "not UTF-8".into(),
            })
        };
        if self.dialect == Dialect::Mysql
            && let Ok(bytes) = row.try_get::<Vec<u8>, _>(column)
        {
            return utf8(bytes);
        }
        match row.try_get::<String, _>(column) {
            Ok(s) => Ok(s),
            Err(e) => match row.try_get::<Vec<u8>, _>(column) {
                Ok(bytes) => utf8(bytes),
                Err(_) => Err(self.err(e)),
            },
        }
    }

    fn record(&self, row: &AnyRow) -> Result<ArtifactRecord, Error> {
        let content: Option<String> = row.try_get("content").map_err(|e| self.err(e))?;
        let content = content
            .map(|c| {
                serde_json::from_str(&c).map_err(|e| Error::Invalid {
                    what: "stored artifact",
                    value: c.chars().take(64).collect(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let kind = self.text(row, "kind")?;
        Ok(ArtifactRecord {
            kind: ArtifactKind::parse(&kind).ok_or_else(|| Error::Invalid {
                what: "stored kind",
                value: kind.clone(),
                reason: "unknown kind".into(),
            })?,
            name: self.text(row, "name")?,
            version: Version(row.try_get::<i64, _>("version").map_err(|e| self.err(e))? as u64),
            content,
            timestamp_ms: row
                .try_get::<i64, _>("timestamp_ms")
                .map_err(|e| self.err(e))?,
        })
    }

    /// Plans `writes` in the transaction `write` began, with the version row locked at
    /// `head`, and runs the plan; returns the results and the new head.
    async fn apply(
        &self,
        conn: &mut AnyConnection,
        head: i64,
        writes: Vec<ArtifactWrite>,
    ) -> Result<(Vec<Option<Version>>, i64), Error> {
        let s = &self.statements;
        let mut keys: Vec<(&'static str, &str)> = Vec::with_capacity(writes.len());
        let mut seen = std::collections::HashSet::with_capacity(writes.len());
        for w in &writes {
            if seen.insert((w.kind, w.name.as_str())) {
                keys.push((w.kind.as_str(), &w.name));
            }
        }
        let mut found = self.current_rows(conn, &keys).await?;
        let mut current: HashMap<(ArtifactKind, String), Option<StoredRow>> =
            HashMap::with_capacity(keys.len());
        for w in &writes {
            current
                .entry((w.kind, w.name.clone()))
                .or_insert_with(|| found.remove(&(w.kind.as_str(), w.name.clone())));
        }
        let mut plan = plan(&self.label, head, current, writes)?;
        let new_head = plan.head;
        let results = std::mem::take(&mut plan.results);
        let net = plan.net();
        let now = vamp_core::time::now_millis();
        let log_chunks = chunks(&net.logs, |l| l.content.as_ref().map_or(0, String::len));
        // PostgreSQL appends a log of one statement's size with the first row statement.
        let mut log_with_rows = (self.dialect == Dialect::Postgres
            && log_chunks.len() == 1
            && !(net.removals.is_empty() && net.rows.is_empty()))
        .then(|| log_chunks[0]);
        if log_with_rows.is_none() {
            for chunk in &log_chunks {
                let sql = s.statement(None, &s.insert_many(&s.log_table, chunk.len(), false));
                bind_log(sqlx::query(sql), chunk, now)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| self.err(e))?;
            }
        }
        for chunk in chunks(&net.removals, |_| 0) {
            let log = log_with_rows.take();
            let sql = s.statement(log.map(<[_]>::len), &s.delete_many(chunk.len()));
            let mut query = bind_log(sqlx::query(sql), log.unwrap_or_default(), now);
            for r in chunk {
                query = query.bind(r.kind).bind(r.name.as_str()).bind(r.expected);
            }
            let affected = query
                .execute(&mut *conn)
                .await
                .map_err(|e| self.err(e))?
                .rows_affected();
            if affected != chunk.len() as u64 {
                // Only a writer that bypassed the T_seq lock can get here.
                let rows = chunk
                    .iter()
                    .map(|r| (r.kind, &*r.name, r.expected, &r.miss));
                return Err(self.culprit(conn, rows, false).await);
            }
        }
        for chunk in chunks(&net.rows, |r| r.content.len()) {
            let log = log_with_rows.take();
            let sql = s.statement(
                log.map(<[_]>::len),
                &s.insert_many(&s.table, chunk.len(), true),
            );
            let mut query = bind_log(sqlx::query(sql), log.unwrap_or_default(), now);
            for r in chunk {
                query = query
                    .bind(r.kind)
                    .bind(r.name.as_str())
                    .bind(r.version)
                    .bind(r.content.as_str())
                    .bind(now);
            }
            let affected = match query.execute(&mut *conn).await {
                Ok(r) => r.rows_affected(),
                // MySQL: the statement was rolled back, the transaction goes on.
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => 0,
                Err(e) => return Err(self.err(e)),
            };
            if affected != chunk.len() as u64 {
                let rows = chunk.iter().map(|r| (r.kind, &*r.name, r.version, &r.miss));
                return Err(self.culprit(conn, rows, true).await);
            }
        }
        Ok((results, new_head))
    }

    /// The stored version and content of `keys`, in as few statements as their number allows.
    async fn current_rows(
        &self,
        conn: &mut AnyConnection,
        keys: &[(&'static str, &str)],
    ) -> Result<HashMap<(&'static str, String), StoredRow>, Error> {
        let s = &self.statements;
        let mut found = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_ROWS) {
            let mut query = sqlx::query(s.statement(None, &s.current_many(chunk.len())));
            for (kind, name) in chunk {
                query = query.bind(*kind).bind(*name);
            }
            let rows = query.fetch_all(&mut *conn).await.map_err(|e| self.err(e))?;
            for row in &rows {
                let kind = self.text(row, "kind")?;
                let Some(kind) = chunk.iter().map(|k| k.0).find(|k| *k == kind) else {
                    continue;
                };
                found.insert(
                    (kind, self.text(row, "name")?),
                    (
                        row.try_get("version").map_err(|e| self.err(e))?,
                        row.try_get("content").map_err(|e| self.err(e))?,
                    ),
                );
            }
        }
        Ok(found)
    }

    /// The error of the first row operation that missed, after a statement affected fewer rows
    /// than it named: a row found at another version than `version` (the one the statement
    /// wrote, or the one a removal expected), or, with `absent_missed`, a row not found. (After
    /// a removal, a row not found may be one the statement removed.)
    async fn culprit<'a>(
        &self,
        conn: &mut AnyConnection,
        rows: impl Iterator<Item = (&'static str, &'a str, i64, &'a Error)>,
        absent_missed: bool,
    ) -> Error {
        let rows: Vec<_> = rows.collect();
        let keys: Vec<(&'static str, &str)> = rows.iter().map(|r| (r.0, r.1)).collect();
        let found = match self.current_rows(conn, &keys).await {
            Ok(found) => found,
            Err(e) => return e,
        };
        let missed = rows.iter().find(|(kind, name, version, _)| {
            match found.get(&(*kind, (*name).to_owned())) {
                Some(row) => row.0 != *version,
                None => absent_missed,
            }
        });
        match missed {
            Some((_, _, _, miss)) => copy_miss(miss),
            None => Error::Backend {
                backend: self.label.clone(),
                source: "an artifact row was removed behind the store's version lock".into(),
            },
        }
    }

    /// The newest version handed out (0 for an empty store): pass it to
    /// [`ChangeOptions::since`] to start a change feed exactly here.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the database cannot be reached.
    pub async fn current_version(&self) -> Result<Version, Error> {
        Ok(Version(self.head().await? as u64))
    }

    async fn head(&self) -> Result<i64, Error> {
        sqlx::query(self.statements.head.clone())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?
            .try_get("version")
            .map_err(|e| self.err(e))
    }

    async fn feed_page(&self, after: i64) -> Result<Vec<ArtifactRecord>, Error> {
        let rows = sqlx::query(self.statements.feed.clone())
            .bind(after)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.record(r)).collect()
    }
}

impl fmt::Debug for SqlPersistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlPersistence")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SqlPersistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Waits for the next change notification, or `fallback`, whichever comes first.
#[cfg(feature = "persistence-postgres")]
struct Wakeup {
    listener: Option<sqlx::postgres::PgListener>,
}

#[cfg(feature = "persistence-postgres")]
impl Wakeup {
    async fn wait(&mut self, store: &SqlPersistence) {
        if store.dialect != Dialect::Postgres {
            vamp_core::rt::sleep(store.poll_interval).await;
            return;
        }
        if self.listener.is_none()
            && let Ok(mut l) = sqlx::postgres::PgListener::connect(&store.url.0).await
            && l.listen(&format!("{}_changes", store.table)).await.is_ok()
        {
            self.listener = Some(l);
            // A change may have committed before LISTEN took effect: poll once more.
            return;
        }
        let Some(listener) = self.listener.as_mut() else {
            vamp_core::rt::sleep(store.poll_interval).await;
            return;
        };
        let broken = {
            let recv = std::pin::pin!(listener.try_recv());
            // With a listener the poll is only a safety net.
            let timeout = std::pin::pin!(vamp_core::rt::sleep(store.poll_interval * 10));
            match futures_util::future::select(recv, timeout).await {
                futures_util::future::Either::Left((Ok(Some(_)), _)) => false,
                futures_util::future::Either::Left(_) => true,
                futures_util::future::Either::Right(_) => false,
            }
        };
        if broken {
            // The connection dropped: poll, and listen again on the next wait.
            self.listener = None;
        }
    }
}

#[cfg(not(feature = "persistence-postgres"))]
struct Wakeup;

#[cfg(not(feature = "persistence-postgres"))]
impl Wakeup {
    async fn wait(&mut self, store: &SqlPersistence) {
        vamp_core::rt::sleep(store.poll_interval).await;
    }
}

/// The change feed's view of the store.
struct SqlFeed {
    store: SqlPersistence,
    wakeup: Wakeup,
}

#[async_trait]
impl FeedSource for SqlFeed {
    async fn head(&mut self) -> Result<i64, Error> {
        self.store.head().await
    }
    async fn page(&mut self, after: i64) -> Result<Vec<ArtifactRecord>, Error> {
        self.store.feed_page(after).await
    }
    async fn idle(&mut self) {
        self.wakeup.wait(&self.store).await;
    }
}

#[async_trait]
impl PersistenceStore for SqlPersistence {
    async fn read(&self, kind: ArtifactKind, name: &str) -> Result<Option<ArtifactRecord>, Error> {
        let row = sqlx::query(self.statements.read.clone())
            .bind(kind.as_str())
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.as_ref().map(|r| self.record(r)).transpose()
    }

    async fn write(&self, writes: Vec<ArtifactWrite>) -> Result<Vec<Option<Version>>, Error> {
        check_names(&writes)?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut guard = Transaction {
            conn: Some(self.pool.acquire().await.map_err(|e| self.err(e))?),
            open: false,
        };
        let conn = guard.conn.as_mut().expect("held until dropped");
        // From BEGIN's request until COMMIT or ROLLBACK answers, a dropped future (a cancelled
        // write) must not hand the connection back to the pool with a transaction open: the
        // server may have started it even if the answer to BEGIN was never read.
        guard.open = true;
        let s = &self.statements;
        // The row lock on T_seq serialises writers for the rest of the transaction.
        let locked = sqlx::raw_sql(s.begin_lock.clone())
            .fetch_all(&mut **conn)
            .await
            .map_err(|e| self.err(e))
            .and_then(|rows| match rows.last() {
                Some(row) => row.try_get::<i64, _>("version").map_err(|e| self.err(e)),
                None => Err(Error::Backend {
                    backend: self.label.clone(),
                    source: "the version row is missing".into(),
                }),
            });
        let applied = match locked {
            Ok(head) => self
                .apply(conn, head, writes)
                .await
                .map(|(results, new_head)| (results, (new_head != head).then_some(new_head))),
            Err(e) => Err(e),
        };
        let result = match applied {
            Ok((results, new_head)) => {
                let commit = s.set_head_commit(new_head);
                sqlx::raw_sql(commit)
                    .execute(&mut **conn)
                    .await
                    .map(|_| results)
                    .map_err(|e| self.err(e))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(v) => {
                guard.open = false;
                Ok(v)
            }
            Err(e) => {
                if sqlx::raw_sql("ROLLBACK").execute(&mut **conn).await.is_ok() {
                    guard.open = false;
                }
                Err(e)
            }
        }
    }

    async fn list(
        &self,
        kind: ArtifactKind,
        opts: ListOptions,
    ) -> Result<Vec<ArtifactRecord>, Error> {
        let limit = opts
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let offset = i64::try_from(opts.offset).unwrap_or(i64::MAX);
        let rows = sqlx::query(self.statements.list.clone())
            .bind(kind.as_str())
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.record(r)).collect()
    }

    async fn history(&self, kind: ArtifactKind, name: &str) -> Result<Vec<ArtifactRecord>, Error> {
        let rows = sqlx::query(self.statements.history.clone())
            .bind(kind.as_str())
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.record(r)).collect()
    }

    fn changes(&self, opts: ChangeOptions) -> BoxStream<'static, Result<ArtifactRecord, Error>> {
        #[cfg(feature = "persistence-postgres")]
        let wakeup = Wakeup { listener: None };
        #[cfg(not(feature = "persistence-postgres"))]
        let wakeup = Wakeup;
        change_feed(
            SqlFeed {
                store: self.clone(),
                wakeup,
            },
            opts.since,
        )
    }

    fn capabilities(&self) -> PersistenceCapabilities {
        let mut caps = PersistenceCapabilities::default();
        caps.changes = true;
        caps.changes_since = true;
        caps.history = true;
        caps
    }

    async fn head(&self) -> Result<Option<Version>, Error> {
        self.current_version().await.map(Some)
    }
}

impl Dialect {
    /// The database's clock in milliseconds since the Unix epoch, as an SQL expression.
    fn now_ms(self) -> &'static str {
        match self {
            Self::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            Self::Mysql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
            Self::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        }
    }

    fn leases_table(self, t: &str) -> String {
        let key = match self {
            Self::Mysql => "VARBINARY(128)",
            _ => "VARCHAR(128)",
        };
        let engine = if self == Self::Mysql {
            " ENGINE=InnoDB"
        } else {
            ""
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {t}_leases (name {key} NOT NULL PRIMARY KEY, holder {key} NOT NULL, \
             token BIGINT NOT NULL, expires_ms BIGINT NOT NULL){engine}"
        )
    }

    fn insert_ignore(self) -> &'static str {
        match self {
            Self::Postgres | Self::Sqlite => "INSERT INTO",
            Self::Mysql => "INSERT IGNORE INTO",
        }
    }

    fn on_conflict_nothing(self) -> &'static str {
        match self {
            Self::Postgres | Self::Sqlite => " ON CONFLICT DO NOTHING",
            Self::Mysql => "",
        }
    }
}

impl SqlPersistence {
    /// Creates the leases table the first time leases are used.
    async fn leases_ready(&self) -> Result<(), Error> {
        if self
            .leases_created
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        sqlx::query(AssertSqlSafe(self.dialect.leases_table(&self.table)))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        self.leases_created
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The lease's holder and token while it is held, by the database's clock.
    async fn lease_row(&self, name: &str) -> Result<Option<vamp_core::lease::LeaseHolder>, Error> {
        let (t, d) = (&self.table, self.dialect);
        let row = sqlx::query(AssertSqlSafe(d.sql(&format!(
            "SELECT holder, token FROM {t}_leases WHERE name = ? AND expires_ms > {}",
            d.now_ms()
        ))))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        row.map(|r| {
            Ok(vamp_core::lease::LeaseHolder {
                holder: self.text(&r, "holder")?,
                token: u64::try_from(r.try_get::<i64, _>("token").map_err(|e| self.err(e))?)
                    .unwrap_or(0),
            })
        })
        .transpose()
    }
}

/// Leases in the persistence database (`<table>_leases`): one row per lease, its expiry in
/// the database's own clock. A free lease is inserted with token 1; an expired one is taken
/// by an `UPDATE` whose condition (held by the caller, or expired) the database checks
/// atomically, the token growing by one; a renewal keeps it. Replicas on PostgreSQL, MySQL or
/// SQLite need no other store to elect a leader.
#[async_trait]
impl vamp_core::lease::LeaseStore for SqlPersistence {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<vamp_core::lease::LeaseGrant>, Error> {
        vamp_core::lease::check(name, holder, ttl)?;
        self.leases_ready().await?;
        let (t, d) = (&self.table, self.dialect);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let now = d.now_ms();
        sqlx::query(AssertSqlSafe(d.sql(&format!(
            "{} {t}_leases (name, holder, token, expires_ms) VALUES (?, ?, 1, {now} + ?){}",
            d.insert_ignore(),
            d.on_conflict_nothing()
        ))))
        .bind(name)
        .bind(holder)
        .bind(ttl_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        // The token first: MySQL evaluates the assignments in order, on updated values.
        sqlx::query(AssertSqlSafe(d.sql(&format!(
            "UPDATE {t}_leases SET \
             token = CASE WHEN holder = ? AND expires_ms > {now} THEN token ELSE token + 1 END, \
             holder = ?, expires_ms = {now} + ? \
             WHERE name = ? AND (holder = ? OR expires_ms <= {now})"
        ))))
        .bind(holder)
        .bind(holder)
        .bind(ttl_ms)
        .bind(name)
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(self
            .lease_row(name)
            .await?
            .filter(|h| h.holder == holder)
            .map(|h| vamp_core::lease::LeaseGrant::new(name, holder, h.token, ttl)))
    }

    async fn observe(&self, name: &str) -> Result<Option<vamp_core::lease::LeaseHolder>, Error> {
        self.leases_ready().await?;
        self.lease_row(name).await
    }

    async fn release(&self, name: &str, holder: &str, token: u64) -> Result<bool, Error> {
        self.leases_ready().await?;
        let (t, d) = (&self.table, self.dialect);
        let done = sqlx::query(AssertSqlSafe(d.sql(&format!(
            "UPDATE {t}_leases SET expires_ms = 0 WHERE name = ? AND holder = ? AND token = ? AND expires_ms > {}",
            d.now_ms()
        ))))
        .bind(name)
        .bind(holder)
        .bind(i64::try_from(token).unwrap_or(-1))
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?
        .rows_affected();
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batched statements search the primary key, never scan the table (SQLite 3.40 scans
    /// it for a row-value `IN` over a bare `VALUES`).
    #[cfg(feature = "persistence-sqlite")]
    #[tokio::test(flavor = "current_thread")]
    async fn sqlite_batched_statements_search_the_primary_key() {
        let store = SqlPersistence::connect("sqlite::memory:", SqlOptions::default())
            .await
            .unwrap();
        let s = &store.statements;
        for sql in [s.current_many(3), s.delete_many(3)] {
            let explain = format!("EXPLAIN QUERY PLAN {}", sql.as_str());
            let mut query = sqlx::query(AssertSqlSafe(explain));
            for _ in 0..sql.matches('?').count() {
                query = query.bind("x");
            }
            let rows = query.fetch_all(&store.pool).await.unwrap();
            let details: Vec<String> = rows
                .iter()
                .map(|r| r.try_get::<String, _>("detail").unwrap())
                .collect();
            let table = &store.table;
            assert!(
                details
                    .iter()
                    .any(|d| d.starts_with(&format!("SEARCH {table} USING INDEX"))),
                "{sql:?}: {details:?}"
            );
            assert!(
                !details.iter().any(|d| d == &format!("SCAN {table}")),
                "{sql:?}: {details:?}"
            );
        }
    }

    #[test]
    fn postgres_placeholders_are_numbered() {
        assert_eq!(
            Dialect::Postgres.sql("a = ? AND b = ?"),
            "a = $1 AND b = $2"
        );
        assert_eq!(Dialect::Mysql.sql("a = ? AND b = ?"), "a = ? AND b = ?");
    }

    #[test]
    fn table_names_are_checked() {
        assert!(check_table("vamp_artifacts").is_ok());
        for bad in ["", "1abc", "a-b", "a;DROP TABLE x", "a b", &"x".repeat(49)] {
            assert!(check_table(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?sslmode=disable"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(
            redact("mysql://root@127.0.0.1:3306/test"),
            "mysql://root@127.0.0.1:3306/test"
        );
        assert!(!redact("mysql://u:p%40ss@h/db").contains("p%40ss"));
    }

    #[test]
    fn dialects_come_from_the_scheme() {
        assert_eq!(
            Dialect::of_url("postgresql://h/db").unwrap(),
            Dialect::Postgres
        );
        assert_eq!(Dialect::of_url("mariadb://h/db").unwrap(), Dialect::Mysql);
        assert_eq!(Dialect::of_url("sqlite::memory:").unwrap(), Dialect::Sqlite);
        assert!(Dialect::of_url("oracle://h").is_err());
    }
}
