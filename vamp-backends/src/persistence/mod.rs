//! Persistence selection.

#[cfg(any(feature = "sql", feature = "persistence-mssql"))]
mod feed;
#[cfg(feature = "persistence-mssql")]
pub mod mssql;
#[cfg(any(feature = "sql", feature = "persistence-mssql"))]
mod plan;
#[cfg(feature = "sql")]
pub mod sql;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vamp_core::Error;
use vamp_core::memory::InMemoryPersistence;
use vamp_core::persistence::DynPersistenceStore;

use crate::url::BackendUrl;
use crate::{Secret, invalid};

/// A SQL database reached by URL (the password is kept out of `Debug`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SqlConfig {
    /// The connection URL (`postgres://user:pass@host:5432/db`).
    pub url: Secret,
    /// The base table name (default `vamp_artifacts`); see [`sql`](self) for the tables it names.
    #[serde(default = "table")]
    pub table: String,
}

fn table() -> String {
    "vamp_artifacts".into()
}

/// SQLite.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The database file, or `:memory:`.
    pub path: String,
    /// The base table name (default `vamp_artifacts`); see [`sql`](self) for the tables it names.
    #[serde(default = "table")]
    pub table: String,
}

/// Which persistence store, with its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PersistenceBackendConfig {
    /// In memory (lost on restart).
    Memory,
    /// PostgreSQL (feature `persistence-postgres`).
    Postgres(SqlConfig),
    /// MySQL or MariaDB (feature `persistence-mysql`).
    Mysql(SqlConfig),
    /// SQLite (feature `persistence-sqlite`).
    Sqlite(SqliteConfig),
    /// SQL Server (feature `persistence-mssql`).
    Mssql(SqlConfig),
}

impl PersistenceBackendConfig {
    /// Parses a URL: `memory://`, `postgres://…` / `postgresql://…`, `mysql://…` /
    /// `mariadb://…`, `sqlite:///path/to/file.db` / `sqlite://:memory:`, `mssql://…` /
    /// `sqlserver://…`. A `table=` query parameter sets the table.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unknown scheme or a malformed URL.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let u = BackendUrl::parse(url)?;
        let table = u.query.get("table").cloned().unwrap_or_else(table);
        let sql = |scheme: &str| {
            let rest = url.split_once("://").map_or("", |(_, r)| r);
            SqlConfig {
                url: Secret(format!("{scheme}://{rest}")),
                table: table.clone(),
            }
        };
        Ok(match u.scheme.as_str() {
            "memory" | "mem" | "in-memory" => Self::Memory,
            "postgres" | "postgresql" => Self::Postgres(sql("postgres")),
            "mysql" | "mariadb" => Self::Mysql(sql("mysql")),
            "mssql" | "sqlserver" => Self::Mssql(sql("mssql")),
            "sqlite" => {
                let path = url
                    .split_once("://")
                    .map_or("", |(_, r)| r)
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if path.is_empty() {
                    return Err(invalid(
                        "sqlite",
                        "a path is required (sqlite:///path/to/file.db or sqlite://:memory:)",
                    ));
                }
                Self::Sqlite(SqliteConfig { path, table })
            }
            other => {
                return Err(invalid(
                    "persistence",
                    format!(
                        "unknown persistence scheme '{other}' (memory, postgres, mysql, sqlite, mssql)"
                    ),
                ));
            }
        })
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Postgres(_) => "postgres",
            Self::Mysql(_) => "mysql",
            Self::Sqlite(_) => "sqlite",
            Self::Mssql(_) => "mssql",
        }
    }

    /// Builds the store.
    ///
    /// # Errors
    /// [`Error::FeatureDisabled`] for a backend compiled out; connection errors.
    pub async fn build(self) -> Result<Arc<DynPersistenceStore>, Error> {
        match self {
            Self::Memory => Ok(Arc::new(InMemoryPersistence::new())),
            Self::Postgres(c) | Self::Mysql(c) => sql_store(&c.url.0, &c.table).await,
            Self::Sqlite(c) => {
                let url = if c.path == ":memory:" {
                    "sqlite::memory:".to_owned()
                } else {
                    format!("sqlite://{}", c.path)
                };
                sql_store(&url, &c.table).await
            }
            #[cfg(feature = "persistence-mssql")]
            Self::Mssql(c) => Ok(Arc::new(
                mssql::MssqlPersistence::connect(&c.url.0, &c.table).await?,
            )),
            #[cfg(not(feature = "persistence-mssql"))]
            Self::Mssql(_) => Err(Error::FeatureDisabled {
                backend: "mssql",
                feature: "persistence-mssql",
            }),
        }
    }
}

impl PersistenceBackendConfig {
    /// The lease store in this database, for the election of replicas
    /// ([`vamp_core::lease`]): in memory (one process), or a leases table beside the
    /// artifacts on PostgreSQL, MySQL/MariaDB or SQLite.
    ///
    /// # Errors
    /// [`Error::NotSupported`] on SQL Server (no leases there yet); the errors of
    /// [`PersistenceBackendConfig::build`].
    pub async fn build_leases(self) -> Result<Arc<vamp_core::lease::DynLeaseStore>, Error> {
        match self {
            Self::Memory => Ok(Arc::new(vamp_core::memory::InMemoryLeases::new())),
            Self::Postgres(c) | Self::Mysql(c) => sql_leases(&c.url.0, &c.table).await,
            Self::Sqlite(c) => sql_leases(&format!("sqlite://{}", c.path), &c.table).await,
            Self::Mssql(_) => Err(Error::NotSupported {
                backend: "mssql".into(),
                operation: "leases (use PostgreSQL, MySQL, etcd or Redis for the election)",
            }),
        }
    }
}

#[cfg(feature = "sql")]
async fn sql_leases(url: &str, table: &str) -> Result<Arc<vamp_core::lease::DynLeaseStore>, Error> {
    let options = sql::SqlOptions::default().table(table);
    Ok(Arc::new(sql::SqlPersistence::connect(url, options).await?))
}

#[cfg(not(feature = "sql"))]
async fn sql_leases(url: &str, table: &str) -> Result<Arc<vamp_core::lease::DynLeaseStore>, Error> {
    sql_store(url, table)
        .await
        .map(|_| unreachable!("without SQL features no store is built"))
}

#[cfg(feature = "sql")]
async fn sql_store(url: &str, table: &str) -> Result<Arc<DynPersistenceStore>, Error> {
    let options = sql::SqlOptions::default().table(table);
    Ok(Arc::new(sql::SqlPersistence::connect(url, options).await?))
}

#[cfg(not(feature = "sql"))]
async fn sql_store(url: &str, _table: &str) -> Result<Arc<DynPersistenceStore>, Error> {
    let (backend, feature) = match url.split(':').next().unwrap_or_default() {
        "postgres" | "postgresql" => ("postgres", "persistence-postgres"),
        "sqlite" => ("sqlite", "persistence-sqlite"),
        _ => ("mysql", "persistence-mysql"),
    };
    Err(Error::FeatureDisabled { backend, feature })
}
