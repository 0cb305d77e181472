//! The PostgreSQL store (production): connecting, schemas, migrations. Its
//! statements live with their area (`executions/postgres.rs` and the like
//! where they differ from SQLite's, the area's `mod.rs` where they do not).

use std::str::FromStr;

use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::Result;
use crate::error::Error;
use crate::sql::SqlStore;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// PostgreSQL behind a connection pool.
pub type PgStore = SqlStore<Postgres>;

/// How long a statement waits for a connection before it fails.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl SqlStore<Postgres> {
    /// Connects (`postgres://user@host:port/db`), optionally inside a schema
    /// (tests use one schema each), and applies pending migrations.
    pub async fn connect(url: &str, schema: Option<&str>, max_connections: u32) -> Result<PgStore> {
        let mut options = PgConnectOptions::from_str(url)?;
        if let Some(schema) = schema {
            options = options.options([("search_path", schema)]);
        }
        // A database that does not answer fails a request within a few
        // seconds (a 503 the client may retry) instead of holding it for
        // sqlx's default 30 s.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        let store = SqlStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Creates `schema` (if needed) and connects inside it: how tests and
    /// benchmarks get a database of their own on a shared server.
    pub async fn connect_creating_schema(
        url: &str,
        schema: &str,
        max_connections: u32,
    ) -> Result<PgStore> {
        check_schema_name(schema)?;
        let admin = PgPoolOptions::new().max_connections(1).connect(url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .execute(&admin)
        .await?;
        admin.close().await;
        Self::connect(url, Some(schema), max_connections).await
    }

    /// Drops a schema made by [`PgStore::connect_creating_schema`] and closes
    /// this store's pool.
    pub async fn drop_schema(&self, schema: &str) -> Result<()> {
        check_schema_name(schema)?;
        let mut conn = self.pool.acquire().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&mut *conn)
        .await?;
        drop(conn);
        self.pool.close().await;
        Ok(())
    }

    /// Transactions committed in this database so far, as PostgreSQL's
    /// statistics say (published within about a second): what benchmarks
    /// count per journey.
    pub async fn committed_transactions(&self) -> Result<i64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// Applies pending migrations (idempotent).
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}

/// A schema name is spliced into DDL: letters, digits and `_` only.
fn check_schema_name(schema: &str) -> Result<()> {
    if schema.is_empty()
        || !schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Error::Invalid(format!(
            "schema name {schema:?}: letters, digits and _ only"
        )));
    }
    Ok(())
}
