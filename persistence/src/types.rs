//! The records the store reads and writes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sojourn_runtime::{
    Dispatch, ExecutionId, Input, JournalEntry, Snapshot, Status, TimerId, Transition, Workflow,
};

/// The fencing token of an execution's lease: bumped on every activation;
/// every write of the actor carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseEpoch(pub i64);

/// A workflow and its draft.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowRecord {
    pub id: String,
    pub namespace: String,
    pub key: String,
    pub name: Option<String>,
    pub draft: Value,
    pub latest_version: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
}

/// An immutable published version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowVersion {
    pub workflow_id: String,
    pub version: i32,
    pub definition: Workflow,
    pub published_at: DateTime<Utc>,
}

/// A workflow to create.
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    pub id: String,
    pub namespace: String,
    pub key: String,
    pub name: Option<String>,
    pub draft: Value,
    pub now: DateTime<Utc>,
}

/// An execution to create (its snapshot is the runtime's pending one).
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub namespace: String,
    pub workflow_id: String,
    pub version: i32,
    /// The caller's `Idempotency-Key`: the same key returns the same
    /// execution, never a second one.
    pub idempotency_key: Option<String>,
    pub snapshot: Snapshot,
}

/// What [`crate::Store::create_execution`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new execution.
    New(ExecutionId),
    /// The idempotency key was used before: this is that execution.
    Existing(ExecutionId),
}

impl Created {
    pub fn id(&self) -> &ExecutionId {
        match self {
            Created::New(id) | Created::Existing(id) => id,
        }
    }
}

/// An execution as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRecord {
    pub id: ExecutionId,
    pub namespace: String,
    pub workflow_id: String,
    pub version: i32,
    pub status: Status,
    pub subject: Option<String>,
    pub idempotency_key: Option<String>,
    pub snapshot: Snapshot,
    pub lease_epoch: LeaseEpoch,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One transition to commit.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    pub execution_id: &'a ExecutionId,
    /// The epoch the actor activated with.
    pub epoch: LeaseEpoch,
    pub transition: &'a Transition,
    /// The timer whose firing this transition applied (its row is removed).
    pub fired_timer: Option<&'a TimerId>,
    /// The inbox row this transition consumed (removed).
    pub consumed_input: Option<i64>,
}

/// The fate of one commit in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitResult {
    Committed,
    /// The epoch no longer matches: another activation owns the execution.
    /// Nothing of this transition was written; the actor must stop.
    Fenced,
}

/// A stored journal entry.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalRow {
    /// Position in the journal (for pagination).
    pub id: i64,
    pub entry: JournalEntry,
}

/// One attempt of one action node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeExecutionRow {
    pub node_id: String,
    pub attempt: i32,
    pub action: String,
    /// `dispatched`, `sending`, `succeeded` or `failed`.
    pub status: String,
    /// How many times a worker began sending this attempt; more than one
    /// means a send may have been repeated (a crash between a send and the
    /// record of its result).
    pub sends: i32,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A timer claimed by a node, to fire when due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    pub execution_id: ExecutionId,
    pub timer_id: TimerId,
    pub due_at: DateTime<Utc>,
}

/// An action to hand to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub id: i64,
    pub execution_id: ExecutionId,
    pub dispatch: Dispatch,
    /// How many times it has been handed out (1 on the first claim).
    pub deliveries: i32,
}

/// What a worker may do with an outbox message ([`crate::Store::begin_attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptBegin {
    /// Send it; `sends` counts this one (1 on the first).
    Send { sends: i32 },
    /// Its result is already recorded: drop the redelivery.
    AlreadyDone,
    /// No such attempt (its transition never committed): drop it.
    Unknown,
}

/// One attempt of one action node.
#[derive(Debug, Clone, Copy)]
pub struct AttemptRef<'a> {
    pub execution_id: &'a ExecutionId,
    pub node: &'a str,
    pub attempt: u32,
}

/// An attempt whose result is known, with the outbox row that carried it.
#[derive(Debug, Clone, Copy)]
pub struct FinishedAttempt<'a> {
    pub execution_id: &'a ExecutionId,
    pub node: &'a str,
    pub attempt: u32,
    pub outcome: &'a sojourn_runtime::ActionOutcome,
    /// The outbox row to delete with it, if it came from one.
    pub outbox_id: Option<i64>,
}

/// An input waiting in an execution's inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxItem {
    pub id: i64,
    pub input: Input,
}
