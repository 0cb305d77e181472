//! Trigger instances (`triggers`): created in state `init`, moved between
//! states, and looked up by path for `api` triggers. Every statement is the
//! same on both databases.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{Executor, QueryBuilder};

use crate::Result;
use crate::error::{Error, unique_violation_on};
use crate::sql::{Bind, Doc, Instant, Read, Sql, SqlStore, at, conflict, not_found};
use crate::types::{NewTrigger, TriggerRecord};

/// Trigger instances.
pub trait TriggerStore: Send + Sync {
    /// Creates a trigger instance in state `init`. [`crate::Error::Conflict`]
    /// on `path` when another trigger of the namespace that is not destroyed
    /// has the same path.
    fn create_trigger(
        &self,
        trigger: NewTrigger,
    ) -> impl Future<Output = Result<TriggerRecord>> + Send;

    fn get_trigger(
        &self,
        namespace: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<TriggerRecord>>> + Send;

    /// Triggers of a namespace (of one workflow, when given), oldest first;
    /// destroyed ones are left out.
    fn list_triggers(
        &self,
        namespace: &str,
        workflow_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<TriggerRecord>>> + Send;

    /// Moves a trigger to state `to` if its state is one of `from`, in one
    /// statement (so two concurrent moves cannot both pass the check).
    /// `Ok(None)`: no such trigger in the namespace; `Err(Invalid)` with the
    /// current state named when the state is not among `from`.
    fn set_trigger_state(
        &self,
        namespace: &str,
        id: &str,
        from: &[&str],
        to: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<TriggerRecord>>> + Send;

    /// The `api` trigger (not destroyed) answering `path` in a namespace.
    fn api_trigger(
        &self,
        namespace: &str,
        path: &str,
    ) -> impl Future<Output = Result<Option<TriggerRecord>>> + Send;
}

const COLUMNS: &str =
    "id, namespace, workflow_id, kind, path, config, state, created_at, updated_at";

/// A unique violation on a trigger: its path (when `path` is known, or
/// named by the constraint) or its id.
fn trigger_conflict(e: sqlx::Error, id: &str, path: Option<&str>) -> Error {
    if unique_violation_on(&e, "path") {
        conflict(e, "path", path.unwrap_or(id))
    } else {
        conflict(e, "id", id)
    }
}

impl<DB> TriggerStore for SqlStore<DB>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'a> Option<&'a str>: Bind<'a, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> Doc: Bind<'q, DB>,
    TriggerRecord: Read<DB>,
{
    async fn create_trigger(&self, trigger: NewTrigger) -> Result<TriggerRecord> {
        // Only for a workflow of the same namespace.
        let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO triggers (id, namespace, workflow_id, kind, path, config, state, created_at, updated_at)
             SELECT $1, $2, w.id, $4, $5, $6, 'init', $7, $7 FROM workflows w
             WHERE w.namespace = $2 AND w.id = $3
             RETURNING {COLUMNS}"
        )))
        .bind(trigger.id.as_str())
        .bind(trigger.namespace.as_str())
        .bind(trigger.workflow_id.as_str())
        .bind(trigger.kind.as_str())
        .bind(trigger.path.as_deref())
        .bind(Doc::of("trigger config", &trigger.config)?)
        .bind(at(trigger.now))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| trigger_conflict(e, &trigger.id, trigger.path.as_deref()))?;
        row.ok_or_else(|| not_found("workflow", &trigger.workflow_id))
    }

    async fn get_trigger(&self, namespace: &str, id: &str) -> Result<Option<TriggerRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM triggers WHERE namespace = $1 AND id = $2"
        )))
        .bind(namespace)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_triggers(
        &self,
        namespace: &str,
        workflow_id: Option<&str>,
    ) -> Result<Vec<TriggerRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM triggers
             WHERE namespace = $1 AND ($2 IS NULL OR workflow_id = $2) AND state <> 'destroyed'
             ORDER BY created_at, id"
        )))
        .bind(namespace)
        .bind(workflow_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn set_trigger_state(
        &self,
        namespace: &str,
        id: &str,
        from: &[&str],
        to: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<TriggerRecord>> {
        let mut sql = QueryBuilder::<DB>::new("UPDATE triggers SET state = ");
        sql.push_bind(to).push(", updated_at = ").push_bind(at(now));
        sql.push(" WHERE namespace = ").push_bind(namespace);
        sql.push(" AND id = ").push_bind(id);
        // `IN (NULL)` matches nothing: no state is allowed.
        sql.push(" AND state IN (");
        if from.is_empty() {
            sql.push("NULL");
        }
        let mut states = sql.separated(", ");
        for state in from {
            states.push_bind(*state);
        }
        sql.push(") RETURNING ").push(COLUMNS);
        let row = sql
            .build_query_as::<TriggerRecord>()
            .fetch_optional(&self.pool)
            .await;
        let row = match row {
            Ok(row) => row,
            // Back from `destroyed` onto a path another trigger took since.
            Err(e) if unique_violation_on(&e, "path") => {
                let path = self.get_trigger(namespace, id).await?.and_then(|t| t.path);
                return Err(trigger_conflict(e, id, path.as_deref()));
            }
            Err(e) => return Err(e.into()),
        };
        if row.is_some() {
            return Ok(row);
        }
        match self.get_trigger(namespace, id).await? {
            None => Ok(None),
            Some(t) => Err(Error::Invalid(format!("trigger {id} is {}", t.state))),
        }
    }

    async fn api_trigger(&self, namespace: &str, path: &str) -> Result<Option<TriggerRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM triggers
             WHERE namespace = $1 AND path = $2 AND kind = 'api' AND state <> 'destroyed'"
        )))
        .bind(namespace)
        .bind(path)
        .fetch_optional(&self.pool)
        .await?)
    }
}
