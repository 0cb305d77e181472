//! Executions and their transitions (`executions`, `journal`,
//! `node_executions`, `subscriptions`): creating executions (idempotently,
//! within a subject's limit), activating them (the lease epoch) and the
//! group commit of their transitions, fenced by that epoch.

use std::future::Future;

use chrono::{DateTime, Utc};
use sojourn_runtime::ExecutionId;

use crate::Result;
use crate::types::{
    Commit, CommitResult, Created, ExecutionQuery, ExecutionRecord, ExecutionSummary, InboxItem,
    JournalRow, NewExecution, NodeExecutionRow,
};

/// Executions, their journal, node executions and event subscriptions.
pub trait ExecutionStore: Send + Sync {
    /// Executions of a namespace, newest first, filtered (see
    /// [`ExecutionQuery`]).
    fn list_executions(
        &self,
        query: &ExecutionQuery,
    ) -> impl Future<Output = Result<Vec<ExecutionSummary>>> + Send;

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
