//! Executions and their transitions (`executions`, `journal`,
//! `node_executions`, `subscriptions`): creating executions (idempotently,
//! within a subject's limit), activating them (the lease epoch) and the
//! group commit of their transitions, fenced by that epoch.
//!
//! What differs between the databases is [`ExecutionSql`]: creating a batch
//! (PostgreSQL: one `UNNEST` insert, advisory locks for subject limits),
//! activating a batch, and writing one round of a group commit (PostgreSQL:
//! one fenced `UPDATE … FROM UNNEST … RETURNING id`, then the dependent rows
//! of the winners as arrays; SQLite: row by row). The commit's shape (the
//! rows of each transition, rounds, one transaction) and every other
//! statement are written once, here.

use std::future::Future;

use chrono::{DateTime, Utc};
use sojourn_runtime::{ExecutionId, Snapshot};
use sqlx::{Executor, QueryBuilder};

use crate::Result;
use crate::sql::{Bind, Instant, Read, Sql, SqlStore, at};
use crate::types::{
    Commit, CommitResult, Created, ExecutionQuery, ExecutionRecord, ExecutionSummary, InboxItem,
    JournalRow, LeaseEpoch, NewExecution, NodeExecutionRow,
};

mod postgres;
pub(crate) mod rows;
mod sqlite;

use rows::{Rows, rounds};

/// Executions, their journal, node executions and event subscriptions.
pub trait ExecutionStore: Send + Sync {
    /// Executions of a namespace, newest first, filtered (see
    /// [`ExecutionQuery`]).
    fn list_executions(
        &self,
        query: &ExecutionQuery,
    ) -> impl Future<Output = Result<Vec<ExecutionSummary>>> + Send;

    /// How many executions of a namespace are in each status: every
    /// unfinished one, and the finished ones that finished at or after
    /// `finished_since` (the console's "today"). `(status, count)`.
    fn execution_counts(
        &self,
        namespace: &str,
        finished_since: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;

    /// Creates an execution, or returns the one created before with the same
    /// idempotency key. A new execution starts at lease epoch 1: its
    /// creator holds the first activation and may start it without
    /// [`ExecutionStore::activate`]. Until its first transition commits it stays
    /// `pending`, which is how recovery finds it after a crash.
    fn create_execution(&self, new: NewExecution) -> impl Future<Output = Result<Created>> + Send {
        async move {
            let mut created = self.create_executions(std::slice::from_ref(&new)).await?;
            created
                .pop()
                .ok_or_else(|| crate::Error::Invalid("create_executions returned nothing".into()))
        }
    }

    /// [`ExecutionStore::create_execution`] for many, in one transaction; results in
    /// order.
    fn create_executions(
        &self,
        batch: &[NewExecution],
    ) -> impl Future<Output = Result<Vec<Created>>> + Send;

    /// Executions still `pending` that were created before `before`.
    fn pending_executions(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ExecutionId>>> + Send;

    fn load_execution(
        &self,
        id: &ExecutionId,
    ) -> impl Future<Output = Result<Option<ExecutionRecord>>> + Send;

    /// Bumps the execution's lease epoch (after the lease was taken in the
    /// cluster layer) and returns it with the execution. `None`: no such
    /// execution.
    fn activate(
        &self,
        id: &ExecutionId,
    ) -> impl Future<Output = Result<Option<ExecutionRecord>>> + Send;

    /// [`ExecutionStore::activate`] for many at once (one statement), with their
    /// waiting inbox inputs: what a node needs to rehydrate a batch of
    /// executions whose timers came due. Missing ids are left out.
    fn activate_many(
        &self,
        ids: &[ExecutionId],
    ) -> impl Future<Output = Result<Vec<(ExecutionRecord, Vec<InboxItem>)>>> + Send;

    /// Commits a batch of transitions in one database transaction. Each is
    /// fenced by its epoch; a fenced one writes nothing and is reported as
    /// [`CommitResult::Fenced`] without failing the others. Results are in
    /// the batch's order.
    fn commit(
        &self,
        batch: &[Commit<'_>],
    ) -> impl Future<Output = Result<Vec<CommitResult>>> + Send;

    /// Journal entries after position `after` (0 for the start), oldest
    /// first.
    fn journal(
        &self,
        id: &ExecutionId,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<JournalRow>>> + Send;

    /// Every action attempt of an execution, in order.
    fn node_executions(
        &self,
        id: &ExecutionId,
    ) -> impl Future<Output = Result<Vec<NodeExecutionRow>>> + Send;

    /// Executions subscribed to `event` with this correlation key.
    fn subscribers(
        &self,
        namespace: &str,
        event: &str,
        key: &str,
    ) -> impl Future<Output = Result<Vec<ExecutionId>>> + Send;
}

/// The execution statements that differ between the databases.
pub trait ExecutionSql: Sql {
    /// [`ExecutionStore::create_executions`] for a batch that is not empty.
    fn create_executions(
        store: &SqlStore<Self>,
        batch: &[NewExecution],
    ) -> impl Future<Output = Result<Vec<Created>>> + Send;

    /// [`ExecutionStore::activate_many`] for a batch that is not empty.
    fn activate_many(
        store: &SqlStore<Self>,
        ids: &[ExecutionId],
    ) -> impl Future<Output = Result<Vec<(ExecutionRecord, Vec<InboxItem>)>>> + Send;

    /// Writes one round of a group commit (each execution at most once) in
    /// `tx`, each transition fenced by its epoch; returns the batch
    /// positions of those that passed the fence.
    fn commit_round(
        tx: &mut Self::Connection,
        round: &[(usize, Rows)],
    ) -> impl Future<Output = Result<Vec<usize>>> + Send;
}

/// An execution as stored; [`ExecutionRecord`] with its status taken from
/// the snapshot.
#[derive(sqlx::FromRow)]
pub(crate) struct ExecutionRow {
    id: String,
    namespace: String,
    workflow_id: String,
    version: i32,
    subject: Option<String>,
    idempotency_key: Option<String>,
    #[sqlx(json)]
    snapshot: Snapshot,
    lease_epoch: i64,
    #[sqlx(try_from = "Instant")]
    created_at: DateTime<Utc>,
    #[sqlx(try_from = "Instant")]
    updated_at: DateTime<Utc>,
}

pub(crate) const EXECUTION_COLUMNS: &str = "id, namespace, workflow_id, version, subject, idempotency_key, snapshot, lease_epoch, created_at, updated_at";

impl From<ExecutionRow> for ExecutionRecord {
    fn from(r: ExecutionRow) -> Self {
        ExecutionRecord {
            id: ExecutionId::new(r.id),
            namespace: r.namespace,
            workflow_id: r.workflow_id,
            version: r.version,
            status: r.snapshot.status,
            subject: r.subject,
            idempotency_key: r.idempotency_key,
            snapshot: r.snapshot,
            lease_epoch: LeaseEpoch(r.lease_epoch),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl<DB> ExecutionStore for SqlStore<DB>
where
    DB: ExecutionSql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'q> i64: Bind<'q, DB>,
    for<'q> Instant: Bind<'q, DB>,
    ExecutionRow: Read<DB>,
    ExecutionSummary: Read<DB>,
    JournalRow: Read<DB>,
    NodeExecutionRow: Read<DB>,
    (String,): Read<DB>,
    (String, i64): Read<DB>,
{
    async fn list_executions(&self, query: &ExecutionQuery) -> Result<Vec<ExecutionSummary>> {
        // Only the filters asked for, so the planner sees which indexes fit.
        let mut sql = QueryBuilder::<DB>::new(
            "SELECT id, workflow_id, version, status, subject, current_node, created_at, updated_at,
                    finished_at
             FROM executions WHERE namespace = ",
        );
        sql.push_bind(query.namespace.as_str());
        if let Some(wf) = &query.workflow_id {
            sql.push(" AND workflow_id = ").push_bind(wf.as_str());
        }
        if let Some(status) = query.status {
            sql.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(subject) = &query.subject {
            sql.push(" AND subject = ").push_bind(subject.as_str());
        }
        if let Some(after) = query.created_after {
            sql.push(" AND created_at >= ").push_bind(at(after));
        }
        if let Some(before) = query.created_before {
            sql.push(" AND created_at < ").push_bind(at(before));
        }
        if let Some(before) = &query.before_id {
            sql.push(" AND id < ").push_bind(before.as_str());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        Ok(sql.build_query_as().fetch_all(&self.pool).await?)
    }

    async fn execution_counts(
        &self,
        namespace: &str,
        finished_since: DateTime<Utc>,
    ) -> Result<Vec<(String, i64)>> {
        // The unfinished ones: an index-only read of `executions_live`
        // (migration 0014); the finished ones: the range of
        // `executions_finished` since then.
        Ok(sqlx::query_as(
            "SELECT status, COUNT(*) FROM executions
             WHERE namespace = $1 AND finished_at IS NULL
               AND status IN ('pending', 'running', 'waiting', 'paused')
             GROUP BY status
             UNION ALL
             SELECT status, COUNT(*) FROM executions
             WHERE namespace = $1 AND finished_at IS NOT NULL AND finished_at >= $2
             GROUP BY status",
        )
        .bind(namespace)
        .bind(at(finished_since))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn create_executions(&self, batch: &[NewExecution]) -> Result<Vec<Created>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        DB::create_executions(self, batch).await
    }

    async fn pending_executions(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ExecutionId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM executions WHERE status = 'pending' AND created_at < $1 ORDER BY created_at LIMIT $2",
        )
        .bind(at(before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(ExecutionId::new).collect())
    }

    async fn load_execution(&self, id: &ExecutionId) -> Result<Option<ExecutionRecord>> {
        let row: Option<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Into::into))
    }

    async fn activate(&self, id: &ExecutionId) -> Result<Option<ExecutionRecord>> {
        let row: Option<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE executions SET lease_epoch = lease_epoch + 1 WHERE id = $1 RETURNING {EXECUTION_COLUMNS}"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Into::into))
    }

    async fn activate_many(
        &self,
        ids: &[ExecutionId],
    ) -> Result<Vec<(ExecutionRecord, Vec<InboxItem>)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        DB::activate_many(self, ids).await
    }

    async fn commit(&self, batch: &[Commit<'_>]) -> Result<Vec<CommitResult>> {
        let mut results = vec![CommitResult::Fenced; batch.len()];
        if batch.is_empty() {
            return Ok(results);
        }
        let rows = batch
            .iter()
            .enumerate()
            .map(|(i, c)| Rows::of(c).map(|r| (i, r)))
            .collect::<Result<Vec<_>>>()?;
        let mut tx = self.pool.begin().await?;
        for round in rounds(rows) {
            for i in DB::commit_round(&mut tx, &round).await? {
                results[i] = CommitResult::Committed;
            }
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn journal(&self, id: &ExecutionId, after: i64, limit: u32) -> Result<Vec<JournalRow>> {
        Ok(sqlx::query_as(
            "SELECT id, entry FROM journal WHERE execution_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(id.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn node_executions(&self, id: &ExecutionId) -> Result<Vec<NodeExecutionRow>> {
        Ok(sqlx::query_as(
            "SELECT node_id, attempt, action, status, sends, input, output, error, started_at, finished_at
             FROM node_executions WHERE execution_id = $1 ORDER BY started_at, node_id, attempt",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    async fn subscribers(
        &self,
        namespace: &str,
        event: &str,
        key: &str,
    ) -> Result<Vec<ExecutionId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT execution_id FROM subscriptions WHERE namespace = $1 AND event = $2 AND key = $3
             ORDER BY execution_id",
        )
        .bind(namespace)
        .bind(event)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(ExecutionId::new).collect())
    }
}
