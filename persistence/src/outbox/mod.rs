//! The way out and the way back in: the outbox (`outbox`), the action
//! attempts a worker records around a send (`node_executions`), and the
//! inbox of inputs waiting for an execution (`inbox`).

use std::future::Future;

use chrono::{DateTime, Utc};
use sojourn_runtime::{ActionOutcome, ExecutionId, Input};

use crate::Result;
use crate::types::{
    AttemptBegin, AttemptRef, FinishedAttempt, InboxItem, LeaseEpoch, OutboxMessage,
};

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
