//! SQL Server as a [`PersistenceStore`] (feature `persistence-mssql`), through tiberius.
//!
//! **Not tested against a SQL Server here**: SQL Server cannot run on this project's machines
//! (it is not in Debian, and Microsoft's registries are unreachable). The write planner it
//! shares with the PostgreSQL, MariaDB and SQLite stores is tested against those servers; the
//! statements below are checked by unit tests; the conformance suite runs against a real SQL
//! Server when `VAMP_TEST_MSSQL_URL` is set (`vamp-backends/tests/mssql.rs`).
//!
//! # Configuration
//!
//! `mssql://user:password@host:1433/database?table=vamp_artifacts&encrypt=on&trust_cert=false`
//! (also `sqlserver://`): `encrypt` is `on` (default: encrypt if the server can), `required`,
//! `off` (login only) or `not_supported`; `trust_cert=true` accepts any server certificate.
//!
//! # Schema and guarantees
//!
//! The same four tables as the [`sql`](super::sql) stores (`T`, `T_log`, `T_seq`,
//! `T_schema`), created on connect. Names are `VARBINARY(1020)` (UTF-8): byte-wise, case- and
//! trailing-space-sensitive, listed in the same order as the other stores (SQL Server's
//! character comparisons ignore trailing spaces under every collation). Every write batch is
//! one transaction that first locks the `T_seq` row, so versions commit in order; updates and
//! deletes are conditional on the version read. The change feed polls `T_log`.
//!
//! The store keeps one connection (tiberius has no pool), serialising its operations, and
//! reconnects after a failure.
//!
//! ```no_run
//! # async fn example() -> Result<(), vamp_core::Error> {
//! use vamp_backends::persistence::mssql::MssqlPersistence;
//! use vamp_core::model::ArtifactKind;
//! use vamp_core::persistence::{ListOptions, PersistenceStore};
//!
//! let store = MssqlPersistence::connect("mssql://vamp:secret@127.0.0.1:1433/vamp", "vamp_artifacts").await?;
//! let breeds = store.list(ArtifactKind::Breed, ListOptions::all()).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, ToSql};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use vamp_core::Error;
use vamp_core::kv::Version;
use vamp_core::model::ArtifactKind;
use vamp_core::persistence::{
    ArtifactRecord, ArtifactWrite, ChangeOptions, ListOptions, PersistenceCapabilities,
    PersistenceStore,
};

use super::feed::{FeedSource, change_feed};
use super::plan::{Action, Row as StoredRow, check_names, check_table, plan};
use crate::invalid;
use crate::url::BackendUrl;

/// The schema version this library writes; a database with a newer one is refused.
pub const SCHEMA_VERSION: i64 = 1;

type Conn = Client<Compat<TcpStream>>;

/// The T-SQL statements of a store with base table `t` (checked by [`check_table`]).
#[derive(Debug)]
struct Statements {
    schema: Vec<String>,
    schema_version: String,
    record_schema: String,
    lock: String,
    head: String,
    set_head: String,
    current: String,
    insert_log: String,
    insert: String,
    update: String,
    delete: String,
    read: String,
    list: String,
    history: String,
    feed: String,
}

impl Statements {
    fn new(t: &str) -> Self {
        let cols = "kind, name, version, content, timestamp_ms";
        Self {
            schema: vec![
                format!(
                    "IF OBJECT_ID(N'{t}_schema', N'U') IS NULL CREATE TABLE {t}_schema (version BIGINT PRIMARY KEY)"
                ),
                format!(
                    "IF OBJECT_ID(N'{t}_seq', N'U') IS NULL CREATE TABLE {t}_seq (id INT PRIMARY KEY, version BIGINT NOT NULL)"
                ),
                format!(
                    "IF NOT EXISTS (SELECT 1 FROM {t}_seq WHERE id = 1) INSERT INTO {t}_seq (id, version) VALUES (1, 0)"
                ),
                format!(
                    "IF OBJECT_ID(N'{t}_log', N'U') IS NULL CREATE TABLE {t}_log (version BIGINT PRIMARY KEY, \
                     kind VARCHAR(32) COLLATE Latin1_General_BIN2 NOT NULL, name VARBINARY(1020) NOT NULL, \
                     content NVARCHAR(MAX) NULL, timestamp_ms BIGINT NOT NULL)"
                ),
                format!(
                    "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'{t}_log_by_name' AND object_id = OBJECT_ID(N'{t}_log')) \
                     CREATE INDEX {t}_log_by_name ON {t}_log (kind, name, version)"
                ),
                format!(
                    "IF OBJECT_ID(N'{t}', N'U') IS NULL CREATE TABLE {t} (kind VARCHAR(32) COLLATE Latin1_General_BIN2 NOT NULL, \
                     name VARBINARY(1020) NOT NULL, version BIGINT NOT NULL, content NVARCHAR(MAX) NOT NULL, \
                     timestamp_ms BIGINT NOT NULL, PRIMARY KEY (kind, name))"
                ),
            ],
            schema_version: format!(
                "IF OBJECT_ID(N'{t}_schema', N'U') IS NULL SELECT CAST(NULL AS BIGINT) AS v ELSE SELECT MAX(version) AS v FROM {t}_schema"
            ),
            record_schema: format!(
                "IF NOT EXISTS (SELECT 1 FROM {t}_schema WHERE version = @P1) INSERT INTO {t}_schema (version) VALUES (@P1)"
            ),
            lock: format!("UPDATE {t}_seq SET version = version WHERE id = 1"),
            head: format!("SELECT version FROM {t}_seq WHERE id = 1"),
            set_head: format!("UPDATE {t}_seq SET version = @P1 WHERE id = 1"),
            current: format!("SELECT version, content FROM {t} WHERE kind = @P1 AND name = @P2"),
            insert_log: format!("INSERT INTO {t}_log ({cols}) VALUES (@P1, @P2, @P3, @P4, @P5)"),
            insert: format!("INSERT INTO {t} ({cols}) VALUES (@P1, @P2, @P3, @P4, @P5)"),
            update: format!(
                "UPDATE {t} SET version = @P1, content = @P2, timestamp_ms = @P3 WHERE kind = @P4 AND name = @P5 AND version = @P6"
            ),
            delete: format!("DELETE FROM {t} WHERE kind = @P1 AND name = @P2 AND version = @P3"),
            read: format!("SELECT {cols} FROM {t} WHERE kind = @P1 AND name = @P2"),
            list: format!(
                "SELECT {cols} FROM {t} WHERE kind = @P1 ORDER BY name OFFSET @P2 ROWS FETCH NEXT @P3 ROWS ONLY"
            ),
            history: format!(
                "SELECT {cols} FROM {t}_log WHERE kind = @P1 AND name = @P2 ORDER BY version"
            ),
            feed: format!(
                "SELECT TOP 500 {cols} FROM {t}_log WHERE version > @P1 ORDER BY version"
            ),
        }
    }
}

/// The connection settings of an `mssql://` URL.
fn config_of(url: &str) -> Result<Config, Error> {
    let u = BackendUrl::parse(url)?;
    if !matches!(u.scheme.as_str(), "mssql" | "sqlserver") {
        return Err(invalid(
            "mssql",
            format!("'{}' is not an mssql:// URL", u.scheme),
        ));
    }
    let mut config = Config::new();
    let host = u.hosts_with_port(1433).first().cloned().ok_or_else(|| {
        invalid(
            "mssql",
            "a host is required (mssql://user:pass@host:1433/db)",
        )
    })?;
    let (h, port) = host.rsplit_once(':').unwrap_or((host.as_str(), "1433"));
    config.host(h.trim_start_matches('[').trim_end_matches(']'));
    config.port(
        port.parse()
            .map_err(|_| invalid("mssql", format!("bad port '{port}'")))?,
    );
    let database = u.path.trim_start_matches('/');
    if !database.is_empty() {
        config.database(database);
    }
    match (&u.user, &u.password) {
        (Some(user), Some(password)) => {
            config.authentication(AuthMethod::sql_server(user, password));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(invalid("mssql", "user and password go together"));
        }
        (None, None) => {}
    }
    config.encryption(match u.query.get("encrypt").map(String::as_str) {
        None | Some("on" | "true") => EncryptionLevel::On,
        Some("required") => EncryptionLevel::Required,
        Some("off" | "false") => EncryptionLevel::Off,
        Some("not_supported") => EncryptionLevel::NotSupported,
        Some(other) => {
            return Err(invalid(
                "mssql",
                format!("encrypt='{other}' (on, required, off, not_supported)"),
            ));
        }
    });
    if u.query.get("trust_cert").is_some_and(|v| v == "true") {
        config.trust_cert();
    }
    config.application_name("vamp-rs");
    Ok(config)
}

fn db_error(label: &str, e: tiberius::error::Error) -> Error {
    use tiberius::error::Error as E;
    // Deadlock victim, lock timeout, connection-level failures: a retry may succeed.
    let temporary = match &e {
        E::Io { .. } | E::Tls(_) | E::Protocol(_) | E::Routing { .. } => true,
        E::Server(t) => matches!(t.code(), 1205 | 1222 | 40197 | 40501 | 40613 | 49918),
        _ => false,
    };
    let source = Box::new(e);
    if temporary {
        Error::Unavailable {
            backend: label.to_owned(),
            source,
        }
    } else {
        Error::Backend {
            backend: label.to_owned(),
            source,
        }
    }
}

/// A [`PersistenceStore`] on SQL Server. Cloning shares the connection.
#[derive(Clone)]
pub struct MssqlPersistence {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    label: String,
    statements: Statements,
    conn: Mutex<Option<Conn>>,
    poll_interval: Duration,
}

impl MssqlPersistence {
    /// Connects to the SQL Server at `url` and applies the schema migrations, keeping the
    /// artifacts in the tables named after `table`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad URL or table, [`Error::Unavailable`] when the server
    /// cannot be reached, [`Error::Backend`] when the schema is newer than this library or a
    /// migration fails.
    pub async fn connect(url: &str, table: &str) -> Result<Self, Error> {
        check_table(table)?;
        let config = config_of(url)?;
        let label = format!("SqlServer({}, table {table})", config.get_addr());
        let store = Self {
            inner: Arc::new(Inner {
                config,
                label,
                statements: Statements::new(table),
                conn: Mutex::new(None),
                poll_interval: Duration::from_millis(200),
            }),
        };
        store.migrate().await?;
        Ok(store)
    }

    fn err(&self, e: tiberius::error::Error) -> Error {
        db_error(&self.inner.label, e)
    }

    async fn open(&self) -> Result<Conn, Error> {
        let mut config = self.inner.config.clone();
        for _ in 0..2 {
            let tcp = TcpStream::connect(config.get_addr())
                .await
                .map_err(|e| self.err(e.into()))?;
            let _ = tcp.set_nodelay(true);
            match Client::connect(config.clone(), tcp.compat_write()).await {
                Ok(c) => return Ok(c),
                // Azure SQL redirects to the node that serves the database.
                Err(tiberius::error::Error::Routing { host, port }) => {
                    config.host(host);
                    config.port(port);
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        Err(Error::Unavailable {
            backend: self.inner.label.clone(),
            source: "redirected more than once".into(),
        })
    }

    /// Runs `f` on the connection (opened if needed); a failure drops the connection so the
    /// next call opens a fresh one.
    async fn with_conn<T>(
        &self,
        f: impl for<'c> FnOnce(
            &'c mut Conn,
        ) -> futures_util::future::BoxFuture<'c, Result<T, (Error, bool)>>,
    ) -> Result<T, Error> {
        let mut guard = self.inner.conn.lock().await;
        // The connection is taken out while in use and put back only when `f` finishes: if
        // the caller's future is dropped half-way (a cancelled write, between BEGIN and
        // COMMIT, or in the middle of a response), the connection goes with it and the server
        // rolls back; the next call opens a fresh one.
        let mut conn = match guard.take() {
            Some(c) => c,
            None => self.open().await?,
        };
        match f(&mut conn).await {
            Ok(v) => {
                *guard = Some(conn);
                Ok(v)
            }
            Err((e, broken)) => {
                if !(broken || e.is_temporary()) {
                    *guard = Some(conn);
                }
                Err(e)
            }
        }
    }

    async fn migrate(&self) -> Result<(), Error> {
        let label = self.inner.label.clone();
        let store = self.clone();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let s = &store.inner.statements;
                let e = |e| (db_error(&label, e), false);
                let found: Option<i64> = conn
                    .query(s.schema_version.as_str(), &[])
                    .await
                    .map_err(e)?
                    .into_row()
                    .await
                    .map_err(e)?
                    .and_then(|r| r.try_get::<i64, _>("v").ok().flatten());
                if let Some(found) = found {
                    if found > SCHEMA_VERSION {
                        return Err((
                            Error::Backend {
                                backend: label.clone(),
                                source: format!(
                                    "the database schema is version {found}, newer than this library's {SCHEMA_VERSION}; upgrade vamp-backends"
                                )
                                .into(),
                            },
                            false,
                        ));
                    }
                    if found == SCHEMA_VERSION {
                        return Ok(());
                    }
                }
                for stmt in &s.schema {
                    conn.execute(stmt.as_str(), &[]).await.map_err(e)?;
                }
                conn.execute(s.record_schema.as_str(), &[&SCHEMA_VERSION])
                    .await
                    .map_err(e)?;
                Ok(())
            })
        })
        .await
    }

    fn record(&self, row: &tiberius::Row) -> Result<ArtifactRecord, Error> {
        let bad = |what: &'static str, reason: String| Error::Invalid {
            what,
            value: String::new(),
            reason,
        };
        let kind: &str = row
            .try_get("kind")
            .map_err(|e| self.err(e))?
            .ok_or_else(|| bad("stored kind", "NULL".into()))?;
        let name: &[u8] = row
            .try_get("name")
            .map_err(|e| self.err(e))?
            .ok_or_else(|| bad("stored name", "NULL".into()))?;
        let content: Option<&str> = row.try_get("content").map_err(|e| self.err(e))?;
        Ok(ArtifactRecord {
            kind: ArtifactKind::parse(kind)
                .ok_or_else(|| bad("stored kind", format!("unknown kind '{kind}'")))?,
            name: String::from_utf8(name.to_vec())
                .map_err(|_| bad("stored name", "not UTF-8".into()))?,
            version: Version(
                row.try_get::<i64, _>("version")
                    .map_err(|e| self.err(e))?
                    .unwrap_or(0) as u64,
            ),
            content: content
                .map(|c| {
                    serde_json::from_str(c).map_err(|e| Error::Invalid {
                        what: "stored artifact",
                        value: c.chars().take(64).collect(),
                        reason: e.to_string(),
                    })
                })
                .transpose()?,
            timestamp_ms: row
                .try_get::<i64, _>("timestamp_ms")
                .map_err(|e| self.err(e))?
                .unwrap_or(0),
        })
    }

    /// Runs a query returning artifact rows.
    async fn records(
        &self,
        statement: fn(&Statements) -> &String,
        params: Vec<Param>,
    ) -> Result<Vec<ArtifactRecord>, Error> {
        let store = self.clone();
        let label = self.inner.label.clone();
        let rows = self
            .with_conn(move |conn| {
                Box::pin(async move {
                    let refs: Vec<&dyn ToSql> = params.iter().map(Param::as_sql).collect();
                    let e = |e| (db_error(&label, e), false);
                    conn.query(statement(&store.inner.statements).as_str(), &refs)
                        .await
                        .map_err(e)?
                        .into_first_result()
                        .await
                        .map_err(e)
                })
            })
            .await?;
        rows.iter().map(|r| self.record(r)).collect()
    }

    /// The newest version handed out (0 for an empty store).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn current_version(&self) -> Result<Version, Error> {
        let store = self.clone();
        let label = self.inner.label.clone();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let e = |e| (db_error(&label, e), false);
                let row = conn
                    .query(store.inner.statements.head.as_str(), &[])
                    .await
                    .map_err(e)?
                    .into_row()
                    .await
                    .map_err(e)?;
                Ok(Version(
                    row.and_then(|r| r.try_get::<i64, _>("version").ok().flatten())
                        .unwrap_or(0) as u64,
                ))
            })
        })
        .await
    }
}

/// An owned query parameter.
#[derive(Debug)]
enum Param {
    Text(String),
    Bytes(Vec<u8>),
    Int(i64),
    NullText,
}

impl Param {
    fn as_sql(&self) -> &dyn ToSql {
        const NULL: Option<&str> = None;
        match self {
            Self::Text(s) => s,
            Self::Bytes(b) => b,
            Self::Int(i) => i,
            Self::NullText => &NULL,
        }
    }
}

async fn exec(conn: &mut Conn, sql: &str, params: &[Param]) -> tiberius::Result<u64> {
    let refs: Vec<&dyn ToSql> = params.iter().map(Param::as_sql).collect();
    Ok(conn.execute(sql, &refs).await?.rows_affected().iter().sum())
}

/// Applies a batch inside the open transaction.
async fn apply(
    conn: &mut Conn,
    s: &Statements,
    label: &str,
    writes: Vec<ArtifactWrite>,
) -> Result<Vec<Option<Version>>, (Error, bool)> {
    let e = |e| (db_error(label, e), false);
    // The row lock on T_seq serialises writers for the rest of the transaction.
    exec(conn, &s.lock, &[]).await.map_err(e)?;
    let head = conn
        .query(s.head.as_str(), &[])
        .await
        .map_err(e)?
        .into_row()
        .await
        .map_err(e)?
        .and_then(|r| r.try_get::<i64, _>("version").ok().flatten())
        .unwrap_or(0);
    let mut current = HashMap::new();
    for w in &writes {
        if current.contains_key(&(w.kind, w.name.clone())) {
            continue;
        }
        let name = w.name.as_bytes().to_vec();
        let row = conn
            .query(s.current.as_str(), &[&w.kind.as_str(), &name])
            .await
            .map_err(e)?
            .into_row()
            .await
            .map_err(e)?;
        let row: Option<StoredRow> = match row {
            None => None,
            Some(r) => Some((
                r.try_get::<i64, _>("version").map_err(e)?.unwrap_or(0),
                r.try_get::<&str, _>("content")
                    .map_err(e)?
                    .unwrap_or_default()
                    .to_owned(),
            )),
        };
        current.insert((w.kind, w.name.clone()), row);
    }
    let plan = plan(label, head, current, writes).map_err(|e| (e, false))?;
    let now = vamp_core::time::now_millis();
    for action in plan.actions {
        let (sql, params, miss) = match action {
            Action::Log {
                version,
                kind,
                name,
                content,
            } => {
                let content = content.map_or(Param::NullText, Param::Text);
                let params = [
                    Param::Text(kind.to_owned()),
                    Param::Bytes(name.into_bytes()),
                    Param::Int(version),
                    content,
                    Param::Int(now),
                ];
                exec(conn, &s.insert_log, &params).await.map_err(e)?;
                continue;
            }
            Action::Insert {
                version,
                kind,
                name,
                content,
                miss,
            } => (
                &s.insert,
                vec![
                    Param::Text(kind.to_owned()),
                    Param::Bytes(name.into_bytes()),
                    Param::Int(version),
                    Param::Text(content),
                    Param::Int(now),
                ],
                miss,
            ),
            Action::Update {
                version,
                kind,
                name,
                content,
                expected,
                miss,
            } => (
                &s.update,
                vec![
                    Param::Int(version),
                    Param::Text(content),
                    Param::Int(now),
                    Param::Text(kind.to_owned()),
                    Param::Bytes(name.into_bytes()),
                    Param::Int(expected),
                ],
                miss,
            ),
            Action::Delete {
                kind,
                name,
                expected,
                miss,
            } => (
                &s.delete,
                vec![
                    Param::Text(kind.to_owned()),
                    Param::Bytes(name.into_bytes()),
                    Param::Int(expected),
                ],
                miss,
            ),
        };
        let affected = match exec(conn, sql, &params).await {
            Ok(n) => n,
            // 2627/2601: a duplicate key, i.e. a concurrent create.
            Err(err) if matches!(err.code(), Some(2627 | 2601)) => 0,
            Err(err) => return Err(e(err)),
        };
        if affected != 1 {
            return Err((miss, false));
        }
    }
    if plan.head != head {
        exec(conn, &s.set_head, &[Param::Int(plan.head)])
            .await
            .map_err(e)?;
    }
    Ok(plan.results)
}

impl fmt::Debug for MssqlPersistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MssqlPersistence")
            .field("label", &self.inner.label)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for MssqlPersistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.label)
    }
}

/// The change feed's view of the store (polling).
struct MssqlFeed(MssqlPersistence);

#[async_trait]
impl FeedSource for MssqlFeed {
    async fn head(&mut self) -> Result<i64, Error> {
        Ok(self.0.current_version().await?.0 as i64)
    }
    async fn page(&mut self, after: i64) -> Result<Vec<ArtifactRecord>, Error> {
        self.0.records(|s| &s.feed, vec![Param::Int(after)]).await
    }
    async fn idle(&mut self) {
        vamp_core::rt::sleep(self.0.inner.poll_interval).await;
    }
}

#[async_trait]
impl PersistenceStore for MssqlPersistence {
    async fn read(&self, kind: ArtifactKind, name: &str) -> Result<Option<ArtifactRecord>, Error> {
        let params = vec![
            Param::Text(kind.as_str().to_owned()),
            Param::Bytes(name.as_bytes().to_vec()),
        ];
        Ok(self.records(|s| &s.read, params).await?.into_iter().next())
    }

    async fn write(&self, writes: Vec<ArtifactWrite>) -> Result<Vec<Option<Version>>, Error> {
        check_names(&writes)?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.clone();
        let label = self.inner.label.clone();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let s = &store.inner.statements;
                conn.execute("BEGIN TRANSACTION", &[])
                    .await
                    .map_err(|e| (db_error(&label, e), true))?;
                match apply(conn, s, &label, writes).await {
                    Ok(v) => match conn.execute("COMMIT TRANSACTION", &[]).await {
                        Ok(_) => Ok(v),
                        Err(e) => Err((db_error(&label, e), true)),
                    },
                    Err((err, _)) => {
                        // A connection that cannot roll back is dropped (the server then
                        // rolls the transaction back itself).
                        let rolled_back = conn
                            .execute("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION", &[])
                            .await
                            .is_ok();
                        Err((err, !rolled_back))
                    }
                }
            })
        })
        .await
    }

    async fn list(
        &self,
        kind: ArtifactKind,
        opts: ListOptions,
    ) -> Result<Vec<ArtifactRecord>, Error> {
        let limit = opts
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let params = vec![
            Param::Text(kind.as_str().to_owned()),
            Param::Int(i64::try_from(opts.offset).unwrap_or(i64::MAX)),
            Param::Int(limit),
        ];
        self.records(|s| &s.list, params).await
    }

    async fn history(&self, kind: ArtifactKind, name: &str) -> Result<Vec<ArtifactRecord>, Error> {
        let params = vec![
            Param::Text(kind.as_str().to_owned()),
            Param::Bytes(name.as_bytes().to_vec()),
        ];
        self.records(|s| &s.history, params).await
    }

    fn changes(&self, opts: ChangeOptions) -> BoxStream<'static, Result<ArtifactRecord, Error>> {
        change_feed(MssqlFeed(self.clone()), opts.since)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_use_numbered_parameters_and_the_checked_table_only() {
        let s = Statements::new("vamp_artifacts");
        let all: Vec<&String> = s
            .schema
            .iter()
            .chain([
                &s.schema_version,
                &s.record_schema,
                &s.lock,
                &s.head,
                &s.set_head,
                &s.current,
                &s.insert_log,
                &s.insert,
                &s.update,
                &s.delete,
                &s.read,
                &s.list,
                &s.history,
                &s.feed,
            ])
            .collect();
        for stmt in all {
            assert!(!stmt.contains('?'), "T-SQL takes @Pn, not ?: {stmt}");
            assert!(!stmt.contains("{t}"), "{stmt}");
            // Parameters are numbered from 1 without gaps.
            let max = (1..=9)
                .filter(|n| stmt.contains(&format!("@P{n}")))
                .max()
                .unwrap_or(0);
            for n in 1..=max {
                assert!(stmt.contains(&format!("@P{n}")), "@P{n} missing in {stmt}");
            }
        }
        // Names are binary: byte-wise and trailing-space-sensitive.
        assert!(
            s.schema
                .iter()
                .any(|q| q.contains("name VARBINARY(1020) NOT NULL"))
        );
        assert!(
            s.list
                .contains("ORDER BY name OFFSET @P2 ROWS FETCH NEXT @P3 ROWS ONLY")
        );
    }

    #[test]
    fn urls_become_configs() {
        let c = config_of("mssql://sa:p%40ss@db.example:1444/vamp?encrypt=required").unwrap();
        assert_eq!(c.get_addr(), "db.example:1444");
        let c = config_of("sqlserver://sa:x@db").unwrap();
        assert_eq!(c.get_addr(), "db:1433");
        for bad in [
            "mssql://sa@db/vamp",
            "mssql://db/vamp?encrypt=maybe",
            "postgres://db/vamp",
        ] {
            assert!(
                matches!(config_of(bad), Err(Error::InvalidConfig { .. })),
                "{bad}"
            );
        }
    }
}
