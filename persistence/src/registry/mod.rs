//! The registry (`registry_entries`, `registry_versions`): a namespace's
//! own trigger and action definitions, each edit a new immutable version,
//! and which definitions (its own or built-in) it has disabled. Every
//! statement is the same on both databases; only the row lock of an edit
//! is PostgreSQL's alone ([`Sql::FOR_UPDATE`]).

use std::future::Future;

use chrono::{DateTime, Utc};
use sojourn_runtime::{Definition, Kind};
use sqlx::Executor;

use crate::Result;
use crate::error::Error;
use crate::sql::{Bind, Doc, Instant, Read, Sql, SqlStore, at, not_found};
use crate::types::{Pins, RegistryEntry, RegistryVersion};

/// Registry definitions and their versions.
pub trait RegistryStore: Send + Sync {
    /// Stores `definition` as the next version of `name` (1, 2, …), unless
    /// it equals the latest one, which is then returned with `false`. A
    /// deleted name comes back, its numbering going on, enabled or disabled
    /// as it was. A built-in or reserved name
    /// ([`sojourn_runtime::registry::is_reserved`]) is
    /// [`crate::Error::Invalid`].
    fn put_definition(
        &self,
        namespace: &str,
        name: &str,
        definition: &Definition,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(RegistryEntry, bool)>> + Send;

    /// A namespace's own definition at `version` (`None`: the latest),
    /// unless it was deleted.
    fn get_definition(
        &self,
        namespace: &str,
        name: &str,
        version: Option<i32>,
    ) -> impl Future<Output = Result<Option<RegistryEntry>>> + Send;

    /// A namespace's own definitions at their latest versions, by name.
    fn list_definitions(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<RegistryEntry>>> + Send;

    /// Every version of a definition, oldest first (empty if none).
    fn list_definition_versions(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Vec<RegistryVersion>>> + Send;

    /// Deletes a namespace's own definition: new workflows can no longer
    /// use it; its versions stay for the published versions that pin them.
    /// [`crate::Error::NotFound`] if there is no such definition.
    fn delete_definition(
        &self,
        namespace: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Enables or disables a definition, a deleted one included (published
    /// versions may still pin it). A built-in one (`builtin` is its kind)
    /// gets a row of its own the first time; [`crate::Error::NotFound`] for
    /// an own name that was never stored. Returns an own definition at its
    /// latest version, deleted or not.
    fn set_enabled(
        &self,
        namespace: &str,
        name: &str,
        builtin: Option<Kind>,
        enabled: bool,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<RegistryEntry>>> + Send;

    /// The disabled definitions, as `(namespace, name)`: of one namespace,
    /// or of all (`None`, what a relay checks sends against). Deleted ones
    /// count: what pins them stays held.
    fn disabled_definitions(
        &self,
        namespace: Option<&str>,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;

    /// An execution's namespace (what a relay's gate reads, rarely).
    fn execution_namespace(
        &self,
        execution_id: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;

    /// The definitions a published version of `workflow_id` pins, from its
    /// namespace, deleted ones included; a pin that is not stored is
    /// [`crate::Error::NotFound`].
    fn pinned_definitions(
        &self,
        workflow_id: &str,
        pins: &Pins,
    ) -> impl Future<Output = Result<Vec<(String, i32, Definition)>>> + Send;
}

const ENTRY: &str = "SELECT e.namespace, e.name, e.enabled, e.deleted_at IS NOT NULL AS deleted,
        v.version, e.latest_version,
        v.definition, e.created_at, e.updated_at
    FROM registry_entries e
    JOIN registry_versions v ON v.namespace = e.namespace AND v.name = e.name";

#[derive(sqlx::FromRow)]
struct DefinitionRow {
    #[sqlx(json)]
    definition: Definition,
}

impl<DB> RegistryStore for SqlStore<DB>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'a> Option<&'a str>: Bind<'a, DB>,
    for<'q> Option<i32>: Bind<'q, DB>,
    for<'q> i32: Bind<'q, DB>,
    for<'q> bool: Bind<'q, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> Doc: Bind<'q, DB>,
    RegistryEntry: Read<DB>,
    RegistryVersion: Read<DB>,
    DefinitionRow: Read<DB>,
    (i32, bool, bool): Read<DB>,
    (i32,): Read<DB>,
    (String,): Read<DB>,
    (String, String): Read<DB>,
{
    async fn put_definition(
        &self,
        namespace: &str,
        name: &str,
        definition: &Definition,
        now: DateTime<Utc>,
    ) -> Result<(RegistryEntry, bool)> {
        if sojourn_runtime::registry::is_reserved(name) {
            return Err(Error::Invalid(format!("{name} is a built-in name")));
        }
        let mut tx = self.pool.begin().await?;
        // The entry's row is the lock: two edits of one name take turns.
        let row: Option<(i32, bool, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT latest_version, deleted_at IS NOT NULL, builtin FROM registry_entries
             WHERE namespace = $1 AND name = $2{}",
            DB::FOR_UPDATE
        )))
        .bind(namespace)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((latest, deleted, builtin)) = row {
            if builtin {
                return Err(Error::Invalid(format!("{name} is a built-in definition")));
            }
            if !deleted {
                let current: Option<RegistryEntry> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{ENTRY} WHERE e.namespace = $1 AND e.name = $2 AND v.version = $3"
                )))
                .bind(namespace)
                .bind(name)
                .bind(latest)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(current) = current
                    && current.definition == *definition
                {
                    tx.commit().await?;
                    return Ok((current, false));
                }
            }
        }
        let (version,): (i32,) = sqlx::query_as(
            "INSERT INTO registry_entries
                 (namespace, name, kind, builtin, enabled, latest_version, created_at, updated_at)
             VALUES ($1, $2, $3, FALSE, TRUE, 1, $4, $4)
             ON CONFLICT (namespace, name) DO UPDATE
             SET latest_version = registry_entries.latest_version + 1,
                 kind = excluded.kind,
                 updated_at = excluded.updated_at,
                 deleted_at = NULL
             RETURNING latest_version",
        )
        .bind(namespace)
        .bind(name)
        .bind(definition.kind.as_str())
        .bind(at(now))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO registry_versions (namespace, name, version, definition, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(namespace)
        .bind(name)
        .bind(version)
        .bind(Doc::of("registry definition", definition)?)
        .bind(at(now))
        .execute(&mut *tx)
        .await?;
        let entry: RegistryEntry = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{ENTRY} WHERE e.namespace = $1 AND e.name = $2 AND v.version = $3"
        )))
        .bind(namespace)
        .bind(name)
        .bind(version)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((entry, true))
    }

    async fn get_definition(
        &self,
        namespace: &str,
        name: &str,
        version: Option<i32>,
    ) -> Result<Option<RegistryEntry>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{ENTRY} WHERE e.namespace = $1 AND e.name = $2 AND e.deleted_at IS NULL
               AND v.version = COALESCE($3, e.latest_version)"
        )))
        .bind(namespace)
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_definitions(&self, namespace: &str) -> Result<Vec<RegistryEntry>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{ENTRY} WHERE e.namespace = $1 AND e.deleted_at IS NULL
               AND v.version = e.latest_version
             ORDER BY e.name"
        )))
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn list_definition_versions(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<RegistryVersion>> {
        Ok(sqlx::query_as(
            "SELECT version, created_at FROM registry_versions
             WHERE namespace = $1 AND name = $2 ORDER BY version",
        )
        .bind(namespace)
        .bind(name)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn delete_definition(
        &self,
        namespace: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let done: Option<(String,)> = sqlx::query_as(
            "UPDATE registry_entries SET deleted_at = $3, updated_at = $3
             WHERE namespace = $1 AND name = $2 AND deleted_at IS NULL AND NOT builtin
             RETURNING name",
        )
        .bind(namespace)
        .bind(name)
        .bind(at(now))
        .fetch_optional(&self.pool)
        .await?;
        if done.is_none() {
            return Err(not_found("registry definition", name));
        }
        Ok(())
    }

    async fn set_enabled(
        &self,
        namespace: &str,
        name: &str,
        builtin: Option<Kind>,
        enabled: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<RegistryEntry>> {
        let done: Option<(String,)> = match builtin {
            Some(kind) => {
                sqlx::query_as(
                    "INSERT INTO registry_entries
                         (namespace, name, kind, builtin, enabled, latest_version, created_at, updated_at)
                     VALUES ($1, $2, $3, TRUE, $4, 0, $5, $5)
                     ON CONFLICT (namespace, name) DO UPDATE
                     SET enabled = excluded.enabled, updated_at = excluded.updated_at
                     RETURNING name",
                )
                .bind(namespace)
                .bind(name)
                .bind(kind.as_str())
                .bind(enabled)
                .bind(at(now))
                .fetch_optional(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(
                    "UPDATE registry_entries SET enabled = $3, updated_at = $4
                     WHERE namespace = $1 AND name = $2 AND NOT builtin
                     RETURNING name",
                )
                .bind(namespace)
                .bind(name)
                .bind(enabled)
                .bind(at(now))
                .fetch_optional(&self.pool)
                .await?
            }
        };
        if done.is_none() {
            return Err(not_found("registry definition", name));
        }
        if builtin.is_some() {
            return Ok(None);
        }
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{ENTRY} WHERE e.namespace = $1 AND e.name = $2 AND v.version = e.latest_version"
        )))
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn disabled_definitions(&self, namespace: Option<&str>) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT namespace, name FROM registry_entries
             WHERE NOT enabled AND ($1 IS NULL OR namespace = $1)
             ORDER BY namespace, name",
        )
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn execution_namespace(&self, execution_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT namespace FROM executions WHERE id = $1")
                .bind(execution_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(ns,)| ns))
    }

    async fn pinned_definitions(
        &self,
        workflow_id: &str,
        pins: &Pins,
    ) -> Result<Vec<(String, i32, Definition)>> {
        let mut out = Vec::with_capacity(pins.len());
        for (name, &version) in pins {
            let row: Option<DefinitionRow> = sqlx::query_as(
                "SELECT v.definition FROM registry_versions v
                 JOIN workflows w ON w.namespace = v.namespace
                 WHERE w.id = $1 AND v.name = $2 AND v.version = $3",
            )
            .bind(workflow_id)
            .bind(name.as_str())
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
            let row =
                row.ok_or_else(|| not_found("registry definition", &format!("{name} v{version}")))?;
            out.push((name.clone(), version, row.definition));
        }
        Ok(out)
    }
}
