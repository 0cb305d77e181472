//! Workflows and their published versions (`workflows`,
//! `workflow_versions`): drafts, publishing (versions are immutable once
//! written), listing and archiving. Every statement is the same on both
//! databases; only the row lock of a publish is PostgreSQL's alone
//! ([`Sql::FOR_UPDATE`]).

use std::future::Future;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sojourn_runtime::Workflow;
use sqlx::Executor;

use crate::Result;
use crate::error::Error;
use crate::sql::{Bind, Doc, Instant, Read, Sql, SqlStore, at, conflict, not_found};
use crate::types::{
    NewWorkflow, Pins, VersionSummary, WorkflowQuery, WorkflowRecord, WorkflowVersion,
};

/// Workflows and their versions.
pub trait WorkflowStore: Send + Sync {
    /// Creates a workflow; a taken `(namespace, key)` is a
    /// [`crate::Error::Conflict`] on `key`.
    fn create_workflow(
        &self,
        new: NewWorkflow,
    ) -> impl Future<Output = Result<WorkflowRecord>> + Send;

    /// A workflow by id or by key, within a namespace.
    fn get_workflow(
        &self,
        namespace: &str,
        id_or_key: &str,
    ) -> impl Future<Output = Result<Option<WorkflowRecord>>> + Send;

    /// Publishes `definition` as the next version (1, 2, …), atomically,
    /// pinning the registry versions it was validated against.
    fn publish(
        &self,
        workflow_id: &str,
        definition: &Workflow,
        pins: &Pins,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<WorkflowVersion>> + Send;

    /// Publishes `definition` unless it equals the latest version (the
    /// document and its pins), which is
    /// then returned with `false`; one transaction holding the workflow row,
    /// so concurrent publishes of one document make one version. An archived
    /// workflow is [`crate::Error::Invalid`].
    fn publish_if_changed(
        &self,
        workflow_id: &str,
        definition: &Workflow,
        pins: &Pins,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(WorkflowVersion, bool)>> + Send;

    /// A published version (`None`: the latest).
    fn get_version(
        &self,
        workflow_id: &str,
        version: Option<i32>,
    ) -> impl Future<Output = Result<Option<WorkflowVersion>>> + Send;

    /// Workflows of a namespace, newest first (see [`WorkflowQuery`]).
    fn list_workflows(
        &self,
        query: &WorkflowQuery,
    ) -> impl Future<Output = Result<Vec<WorkflowRecord>>> + Send;

    /// The latest published version of every workflow that is not
    /// archived, in every namespace, by workflow id, `limit` at a time after
    /// `after_id` (what a node checks its configuration against at start).
    fn latest_versions(
        &self,
        after_id: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<WorkflowVersion>>> + Send;

    /// Replaces the draft (and the name, when given) of a workflow that is
    /// not archived. [`crate::Error::NotFound`] if there is no such workflow
    /// in the namespace, [`crate::Error::Invalid`] if it is archived.
    fn update_draft(
        &self,
        namespace: &str,
        workflow_id: &str,
        draft: &Value,
        name: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<WorkflowRecord>> + Send;

    /// Archives a workflow (idempotent: archiving twice keeps the first
    /// time). Its versions and executions stay. [`crate::Error::NotFound`]
    /// if there is no such workflow in the namespace.
    fn archive_workflow(
        &self,
        namespace: &str,
        workflow_id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<WorkflowRecord>> + Send;

    /// Every published version of a workflow, oldest first.
    fn list_versions(
        &self,
        workflow_id: &str,
    ) -> impl Future<Output = Result<Vec<VersionSummary>>> + Send;
}

const COLUMNS: &str =
    "id, namespace, key, name, draft, latest_version, created_at, updated_at, archived_at";

const VERSION_COLUMNS: &str = "workflow_id, version, definition, published_at, registry";

impl<DB> WorkflowStore for SqlStore<DB>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'a> Option<&'a str>: Bind<'a, DB>,
    for<'q> Option<i32>: Bind<'q, DB>,
    for<'q> i32: Bind<'q, DB>,
    for<'q> i64: Bind<'q, DB>,
    for<'q> bool: Bind<'q, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> Doc: Bind<'q, DB>,
    for<'q> Option<Doc>: Bind<'q, DB>,
    WorkflowRecord: Read<DB>,
    WorkflowVersion: Read<DB>,
    VersionSummary: Read<DB>,
    (Option<i32>, bool): Read<DB>,
    (bool,): Read<DB>,
    (i32,): Read<DB>,
{
    async fn create_workflow(&self, new: NewWorkflow) -> Result<WorkflowRecord> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO workflows (id, namespace, key, name, draft, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             RETURNING {COLUMNS}"
        )))
        .bind(new.id.as_str())
        .bind(new.namespace.as_str())
        .bind(new.key.as_str())
        .bind(new.name.as_deref())
        .bind(Doc::of("workflow draft", &new.draft)?)
        .bind(at(new.now))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict(e, "key", &new.key))
    }

    async fn get_workflow(
        &self,
        namespace: &str,
        id_or_key: &str,
    ) -> Result<Option<WorkflowRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM workflows WHERE namespace = $1 AND (id = $2 OR key = $2)
             ORDER BY (id = $2) DESC LIMIT 1"
        )))
        .bind(namespace)
        .bind(id_or_key)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn publish(
        &self,
        workflow_id: &str,
        definition: &Workflow,
        pins: &Pins,
        now: DateTime<Utc>,
    ) -> Result<WorkflowVersion> {
        let mut tx = self.pool.begin().await?;
        let v = next_version(&mut tx, workflow_id, definition, pins, now).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn publish_if_changed(
        &self,
        workflow_id: &str,
        definition: &Workflow,
        pins: &Pins,
        now: DateTime<Utc>,
    ) -> Result<(WorkflowVersion, bool)> {
        let mut tx = self.pool.begin().await?;
        // The workflow row is the lock: concurrent publishes of one
        // workflow take turns, so a document is published once.
        let row: Option<(Option<i32>, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT latest_version, archived_at IS NOT NULL AS archived FROM workflows
             WHERE id = $1{}",
            DB::FOR_UPDATE
        )))
        .bind(workflow_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((latest, archived)) = row else {
            return Err(not_found("workflow", workflow_id));
        };
        if archived {
            return Err(Error::Invalid(format!(
                "workflow {workflow_id} is archived: it cannot be published"
            )));
        }
        if let Some(latest) = latest {
            let v: WorkflowVersion = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {VERSION_COLUMNS} FROM workflow_versions
                 WHERE workflow_id = $1 AND version = $2"
            )))
            .bind(workflow_id)
            .bind(latest)
            .fetch_one(&mut *tx)
            .await?;
            if v.definition == *definition && v.registry == *pins {
                tx.commit().await?;
                return Ok((v, false));
            }
        }
        let v = next_version(&mut tx, workflow_id, definition, pins, now).await?;
        tx.commit().await?;
        Ok((v, true))
    }

    async fn get_version(
        &self,
        workflow_id: &str,
        version: Option<i32>,
    ) -> Result<Option<WorkflowVersion>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM workflow_versions
             WHERE workflow_id = $1 AND ($2 IS NULL OR version = $2)
             ORDER BY version DESC LIMIT 1"
        )))
        .bind(workflow_id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_workflows(&self, query: &WorkflowQuery) -> Result<Vec<WorkflowRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM workflows
             WHERE namespace = $1 AND ($2 OR archived_at IS NULL) AND ($3 IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4"
        )))
        .bind(query.namespace.as_str())
        .bind(query.include_archived)
        .bind(query.before_id.as_deref())
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn latest_versions(
        &self,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WorkflowVersion>> {
        let columns = VERSION_COLUMNS
            .split(',')
            .map(|c| format!("v.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM workflows w
             JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = w.latest_version
             WHERE w.archived_at IS NULL AND ($1 IS NULL OR w.id > $1)
             ORDER BY w.id LIMIT $2"
        )))
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn update_draft(
        &self,
        namespace: &str,
        workflow_id: &str,
        draft: &Value,
        name: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<WorkflowRecord> {
        let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE workflows SET draft = $3, name = COALESCE($4, name), updated_at = $5
             WHERE namespace = $1 AND id = $2 AND archived_at IS NULL
             RETURNING {COLUMNS}"
        )))
        .bind(namespace)
        .bind(workflow_id)
        .bind(Doc::of("workflow draft", draft)?)
        .bind(name)
        .bind(at(now))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(row);
        }
        let archived: Option<bool> = sqlx::query_scalar(
            "SELECT archived_at IS NOT NULL FROM workflows WHERE namespace = $1 AND id = $2",
        )
        .bind(namespace)
        .bind(workflow_id)
        .fetch_optional(&self.pool)
        .await?;
        Err(match archived {
            Some(_) => Error::Invalid(format!("workflow {workflow_id} is archived")),
            None => not_found("workflow", workflow_id),
        })
    }

    async fn archive_workflow(
        &self,
        namespace: &str,
        workflow_id: &str,
        now: DateTime<Utc>,
    ) -> Result<WorkflowRecord> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE workflows SET archived_at = COALESCE(archived_at, $3),
                    updated_at = CASE WHEN archived_at IS NULL THEN $3 ELSE updated_at END
             WHERE namespace = $1 AND id = $2
             RETURNING {COLUMNS}"
        )))
        .bind(namespace)
        .bind(workflow_id)
        .bind(at(now))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found("workflow", workflow_id))
    }

    async fn list_versions(&self, workflow_id: &str) -> Result<Vec<VersionSummary>> {
        Ok(sqlx::query_as(
            "SELECT version, published_at FROM workflow_versions WHERE workflow_id = $1 ORDER BY version",
        )
        .bind(workflow_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Publishes `definition` as the workflow's next version, in `tx`.
async fn next_version<DB>(
    tx: &mut DB::Connection,
    workflow_id: &str,
    definition: &Workflow,
    pins: &Pins,
    now: DateTime<Utc>,
) -> Result<WorkflowVersion>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'q> i32: Bind<'q, DB>,
    for<'q> i64: Bind<'q, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> Doc: Bind<'q, DB>,
    for<'q> Option<Doc>: Bind<'q, DB>,
    for<'q> Option<i32>: Bind<'q, DB>,
    WorkflowVersion: Read<DB>,
    (i32,): Read<DB>,
{
    let version: Option<i32> = sqlx::query_scalar(
        "UPDATE workflows SET latest_version = COALESCE(latest_version, 0) + 1, updated_at = $2
         WHERE id = $1 RETURNING latest_version",
    )
    .bind(workflow_id)
    .bind(at(now))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(version) = version else {
        return Err(not_found("workflow", workflow_id));
    };
    // The sends the workflow's own caps count are counted and kept in its
    // namespace from now on, whichever journey makes them. (The `WHERE` of
    // the `SELECT` also keeps SQLite from reading `ON` as a join's.)
    for cap in definition.own_caps() {
        sqlx::query(
            "INSERT INTO cap_scopes (namespace, channel, category, window_seconds)
             SELECT namespace, $2, $3, $4 FROM workflows WHERE id = $1
             ON CONFLICT (namespace, channel, category) DO UPDATE
             SET window_seconds = excluded.window_seconds
             WHERE cap_scopes.window_seconds < excluded.window_seconds",
        )
        .bind(workflow_id)
        .bind(cap.channel.as_str())
        .bind(cap.category.as_str())
        .bind(i64::try_from(cap.window_seconds).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    }
    // The version's conversion goal, for the events that arrive (a goal
    // whose window does not read was refused before publishing).
    if let Some(goal) = &definition.settings.goal
        && let Ok(within) = sojourn_runtime::time::parse_duration(&goal.within)
    {
        let below = definition.settings.holdout.as_ref().and_then(|h| h.below());
        sqlx::query(
            "INSERT INTO workflow_goals (workflow_id, version, namespace, event, within_seconds,
                                         workflow_key, holdout_below)
             SELECT id, $2, namespace, $3, $4, $5, $6 FROM workflows WHERE id = $1",
        )
        .bind(workflow_id)
        .bind(version)
        .bind(goal.event.as_str())
        .bind(within.num_seconds())
        // The key the interpreter hashes with (`CompiledWorkflow::held_out`).
        .bind(definition.key.as_deref().unwrap_or_default())
        .bind(below.and_then(|b| i32::try_from(b).ok()))
        .execute(&mut *tx)
        .await?;
    }
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO workflow_versions (workflow_id, version, definition, published_at, registry)
         VALUES ($1, $2, $3, $4, $5) RETURNING {VERSION_COLUMNS}"
    )))
    .bind(workflow_id)
    .bind(version)
    .bind(Doc::of("workflow definition", definition)?)
    .bind(at(now))
    .bind(match pins.is_empty() {
        true => None,
        false => Some(Doc::of("registry pins", pins)?),
    })
    .fetch_one(&mut *tx)
    .await?)
}
