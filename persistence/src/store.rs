//! The `Store` interface: everything the layers above ask of the database.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sojourn_runtime::{ActionOutcome, ExecutionId, Input, TimerId, Workflow};

use crate::Result;
use crate::types::{
    ApiKeyRecord, AttemptBegin, AttemptRef, Commit, CommitResult, Created, DueTimer,
    ExecutionQuery, ExecutionRecord, ExecutionSummary, FinishedAttempt, InboxItem, JournalRow,
    LeaseEpoch, NewApiKey, NewExecution, NewTrigger, NewWorkflow, NodeExecutionRow, OutboxMessage,
    TriggerRecord, VersionSummary, WorkflowQuery, WorkflowRecord, WorkflowVersion,
};

/// One store: PostgreSQL or SQLite, the same behaviour (the conformance
/// suite holds both to it).
pub trait Store: Send + Sync + 'static {
    // ---- workflows -------------------------------------------------------

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

    /// Publishes `definition` as the next version (1, 2, …), atomically.
    fn publish(
        &self,
        workflow_id: &str,
        definition: &Workflow,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<WorkflowVersion>> + Send;

    /// Publishes `definition` unless it equals the latest version, which is
    /// then returned with `false`; one transaction holding the workflow row,
    /// so concurrent publishes of one document make one version. An archived
    /// workflow is [`crate::Error::Invalid`].
    fn publish_if_changed(
        &self,
        workflow_id: &str,
        definition: &Workflow,
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

    // ---- executions ------------------------------------------------------

    /// Executions of a namespace, newest first, filtered (see
    /// [`ExecutionQuery`]).
    fn list_executions(
        &self,
        query: &ExecutionQuery,
    ) -> impl Future<Output = Result<Vec<ExecutionSummary>>> + Send;

    /// Creates an execution, or returns the one created before with the same
    /// idempotency key. A new execution starts at lease epoch 1: its
    /// creator holds the first activation and may start it without
    /// [`Store::activate`]. Until its first transition commits it stays
    /// `pending`, which is how recovery finds it after a crash.
    fn create_execution(&self, new: NewExecution) -> impl Future<Output = Result<Created>> + Send {
        async move {
            let mut created = self.create_executions(std::slice::from_ref(&new)).await?;
            created
                .pop()
                .ok_or_else(|| crate::Error::Invalid("create_executions returned nothing".into()))
        }
    }

    /// [`Store::create_execution`] for many, in one transaction; results in
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

    /// [`Store::activate`] for many at once (one statement), with their
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

    // ---- timers ----------------------------------------------------------

    /// Claims up to `limit` timers due before `due_before` that nobody holds
    /// (or whose claim expired before `now`), for `owner` until
    /// `claim_until`, earliest first. Several nodes may call this at once:
    /// each timer goes to one of them.
    fn claim_due_timers(
        &self,
        owner: &str,
        due_before: DateTime<Utc>,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DueTimer>>> + Send;

    /// Drops every claim (timers and outbox) held by `owner`: a node that
    /// restarts under the same id, or shuts down, hands its work back at once
    /// instead of after the claims expire.
    fn release_claims(&self, owner: &str) -> impl Future<Output = Result<()>> + Send;

    /// Hands claimed timers back: they may be claimed again (by any node)
    /// from `at`. For a firing that could not reach its execution's actor
    /// (its lease holder is unreachable), so it fires again shortly instead
    /// of when its claim would have expired. Only `owner`'s claims change.
    fn defer_timers(
        &self,
        owner: &str,
        timers: &[(ExecutionId, TimerId)],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The nodes that hold claims (timers or outbox messages): the cluster
    /// hands back those of nodes that are not alive.
    fn claim_owners(&self) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// How many timers exist (for metrics and tests).
    fn pending_timers(&self) -> impl Future<Output = Result<i64>> + Send;

    // ---- API keys --------------------------------------------------------

    /// Stores a new API key. [`crate::Error::Conflict`] on `id` or `hash`.
    fn create_api_key(&self, key: NewApiKey) -> impl Future<Output = Result<ApiKeyRecord>> + Send;

    /// The key whose secret hashes to `hash`, unless revoked.
    fn api_key_by_hash(
        &self,
        hash: &str,
    ) -> impl Future<Output = Result<Option<ApiKeyRecord>>> + Send;

    /// The keys of a namespace (revoked ones included), oldest first.
    fn list_api_keys(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<ApiKeyRecord>>> + Send;

    /// Revokes a key; [`crate::Error::NotFound`] if the namespace has no such
    /// key. Revoking twice keeps the first time.
    fn revoke_api_key(
        &self,
        namespace: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<ApiKeyRecord>> + Send;

    // ---- trigger instances -----------------------------------------------

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

    // ---- events ----------------------------------------------------------

    /// Executions subscribed to `event` with this correlation key.
    fn subscribers(
        &self,
        namespace: &str,
        event: &str,
        key: &str,
    ) -> impl Future<Output = Result<Vec<ExecutionId>>> + Send;

    // ---- outbox ----------------------------------------------------------

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

    // ---- action attempts --------------------------------------------------

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

    /// [`Store::begin_attempt`] for a batch, in one statement; results in
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

    // ---- inbox -----------------------------------------------------------

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

    /// Whether the database answers (readiness): one indexed lookup.
    fn ping(&self) -> impl Future<Output = Result<()>> + Send {
        async move { self.get_workflow("", "").await.map(|_| ()) }
    }

    /// Executions that have inputs waiting since before `older_than`
    /// (recovery after a restart, or of an input that could not be routed).
    fn executions_with_inputs(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ExecutionId>>> + Send;
}

/// Parses a stored JSON column.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &'static str, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(crate::Error::corrupt(what))
}
