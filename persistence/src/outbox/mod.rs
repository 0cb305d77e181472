//! The way out and the way back in: the outbox (`outbox`), the action
//! attempts a worker records around a send (`node_executions`), and the
//! inbox of inputs waiting for an execution (`inbox`). Claims and the
//! batch statements differ (PostgreSQL: `FOR UPDATE SKIP LOCKED`, arrays
//! and `UNNEST`; SQLite: row by row in one transaction): those are
//! [`OutboxSql`], in `postgres.rs` and `sqlite.rs`. The inbox is written
//! once.

use std::future::Future;

use chrono::{DateTime, Utc};
use sojourn_runtime::{ActionOutcome, ExecutionId, Input};

use sqlx::Executor;

use crate::Result;
use crate::sql::{Bind, Doc, Instant, Read, Sql, SqlStore, at};
use crate::types::{
    AttemptBegin, AttemptRef, FinishedAttempt, InboxItem, LeaseEpoch, OutboxMessage,
};

mod postgres;
mod sqlite;

/// Outbox, action attempts and inbox.
pub trait OutboxStore: Send + Sync {
    /// Claims up to `limit` outbox messages nobody holds (or whose claim
    /// expired before `now`), oldest first.
    fn claim_outbox(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<OutboxMessage>>> + Send;

    /// Removes delivered messages.
    fn ack_outbox(&self, ids: &[i64]) -> impl Future<Output = Result<()>> + Send;

    /// Records that a worker is about to send an attempt (before it sends).
    fn begin_attempt(
        &self,
        id: &ExecutionId,
        node: &str,
        attempt: u32,
    ) -> impl Future<Output = Result<AttemptBegin>> + Send {
        async move {
            let begins = self
                .begin_attempts(&[AttemptRef {
                    execution_id: id,
                    node,
                    attempt,
                }])
                .await?;
            Ok(begins.into_iter().next().unwrap_or(AttemptBegin::Unknown))
        }
    }

    /// Records an attempt's result and queues it for the execution, in one
    /// transaction. Returns the inbox row.
    fn finish_attempt(
        &self,
        id: &ExecutionId,
        node: &str,
        attempt: u32,
        outcome: &ActionOutcome,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<i64>> + Send {
        async move {
            let done = [FinishedAttempt {
                execution_id: id,
                node,
                attempt,
                outcome,
                outbox_id: None,
                outbox_key: None,
            }];
            let ids = self.finish_attempts(&done, now).await?;
            ids.into_iter()
                .next()
                .ok_or_else(|| crate::Error::Invalid("finish_attempts returned nothing".into()))
        }
    }

    /// [`OutboxStore::begin_attempt`] for a batch, in one statement; results in
    /// order.
    fn begin_attempts(
        &self,
        attempts: &[AttemptRef<'_>],
    ) -> impl Future<Output = Result<Vec<AttemptBegin>>> + Send;

    /// Records the results of a batch of attempts, queues each for its
    /// execution and deletes their outbox rows, in one transaction. Returns
    /// the inbox rows, in order.
    fn finish_attempts(
        &self,
        done: &[FinishedAttempt<'_>],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;

    /// Records an input for an execution, to be applied on its next
    /// activation (durable delivery).
    fn enqueue_input(
        &self,
        id: &ExecutionId,
        input: &Input,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// The execution's waiting inputs, oldest first.
    fn pending_inputs(
        &self,
        id: &ExecutionId,
    ) -> impl Future<Output = Result<Vec<InboxItem>>> + Send;

    /// Removes an inbox row whose input the execution refused — only while
    /// `epoch` still holds the execution (a stale actor must not delete an
    /// input its successor needs). Returns whether it was removed.
    fn discard_input(
        &self,
        inbox_id: i64,
        epoch: LeaseEpoch,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Executions that have inputs waiting since before `older_than`
    /// (recovery after a restart, or of an input that could not be routed).
    fn executions_with_inputs(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ExecutionId>>> + Send;
}

/// The outbox and attempt statements that differ between the databases.
/// Batches handed to them are not empty.
pub trait OutboxSql: Sql {
    /// [`OutboxStore::claim_outbox`], in any order.
    fn claim_outbox(
        store: &SqlStore<Self>,
        owner: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<OutboxMessage>>> + Send;

    fn ack_outbox(store: &SqlStore<Self>, ids: &[i64]) -> impl Future<Output = Result<()>> + Send;

    fn begin_attempts(
        store: &SqlStore<Self>,
        attempts: &[AttemptRef<'_>],
    ) -> impl Future<Output = Result<Vec<AttemptBegin>>> + Send;

    fn finish_attempts(
        store: &SqlStore<Self>,
        done: &[FinishedAttempt<'_>],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;
}

impl<DB> OutboxStore for SqlStore<DB>
where
    DB: OutboxSql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'q> i64: Bind<'q, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> Doc: Bind<'q, DB>,
    InboxItem: Read<DB>,
    (String,): Read<DB>,
    (i64,): Read<DB>,
{
    async fn claim_outbox(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>> {
        let mut messages = DB::claim_outbox(self, owner, now, claim_until, limit).await?;
        messages.sort_by_key(|m| m.id);
        Ok(messages)
    }

    async fn ack_outbox(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        DB::ack_outbox(self, ids).await
    }

    async fn begin_attempts(&self, attempts: &[AttemptRef<'_>]) -> Result<Vec<AttemptBegin>> {
        if attempts.is_empty() {
            return Ok(Vec::new());
        }
        DB::begin_attempts(self, attempts).await
    }

    async fn finish_attempts(
        &self,
        done: &[FinishedAttempt<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        DB::finish_attempts(self, done, now).await
    }

    async fn enqueue_input(
        &self,
        id: &ExecutionId,
        input: &Input,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO inbox (execution_id, input, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(id.as_str())
        .bind(Doc::of("inbox input", input)?)
        .bind(at(now))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn pending_inputs(&self, id: &ExecutionId) -> Result<Vec<InboxItem>> {
        Ok(
            sqlx::query_as("SELECT id, input FROM inbox WHERE execution_id = $1 ORDER BY id")
                .bind(id.as_str())
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn discard_input(&self, inbox_id: i64, epoch: LeaseEpoch) -> Result<bool> {
        let removed: Option<i64> = sqlx::query_scalar(
            "DELETE FROM inbox WHERE id = $1 AND EXISTS (
                 SELECT 1 FROM executions e WHERE e.id = inbox.execution_id AND e.lease_epoch = $2)
             RETURNING id",
        )
        .bind(inbox_id)
        .bind(epoch.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(removed.is_some())
    }

    async fn executions_with_inputs(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ExecutionId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT execution_id FROM inbox WHERE created_at < $1
             GROUP BY execution_id ORDER BY min(id) LIMIT $2",
        )
        .bind(at(older_than))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(ExecutionId::new).collect())
    }
}
