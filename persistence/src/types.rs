//! The records the store reads and writes. Those read back from a table
//! derive `sqlx::FromRow`: one mapping for both databases, through the
//! column types of [`crate::sql`].

use crate::sql::{Instant, MaybeDoc, MaybeInstant, Scopes, StatusText};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sojourn_runtime::triggers::{ConfigError, TriggerConfig, TriggerKind, TriggerState};
use sojourn_runtime::{
    Dispatch, ExecutionId, Input, JournalEntry, Snapshot, Status, TimerId, Transition, Workflow,
};

/// The fencing token of an execution's lease: bumped on every activation;
/// every write of the actor carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseEpoch(pub i64);

impl From<i64> for LeaseEpoch {
    fn from(epoch: i64) -> Self {
        LeaseEpoch(epoch)
    }
}

/// A workflow and its draft.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct WorkflowRecord {
    pub id: String,
    pub namespace: String,
    pub key: String,
    pub name: Option<String>,
    #[sqlx(json)]
    pub draft: Value,
    pub latest_version: Option<i32>,
    #[sqlx(try_from = "Instant")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "Instant")]
    pub updated_at: DateTime<Utc>,
    #[sqlx(try_from = "MaybeInstant")]
    pub archived_at: Option<DateTime<Utc>>,
}

/// An immutable published version.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct WorkflowVersion {
    pub workflow_id: String,
    pub version: i32,
    #[sqlx(json)]
    pub definition: Workflow,
    #[sqlx(try_from = "Instant")]
    pub published_at: DateTime<Utc>,
    /// The registry versions of the custom actions it uses, as validated
    /// when published: it runs with those.
    #[sqlx(try_from = "MaybeDoc")]
    pub registry: Pins,
}

/// Custom action name → registry version.
pub type Pins = std::collections::BTreeMap<String, i32>;

impl TryFrom<MaybeDoc> for Pins {
    type Error = serde_json::Error;
    fn try_from(d: MaybeDoc) -> Result<Self, Self::Error> {
        match d.0 {
            None | Some(Value::Null) => Ok(Pins::new()),
            Some(v) => serde_json::from_value(v),
        }
    }
}

/// A registry definition at one of its versions, with its entry's state.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RegistryEntry {
    pub namespace: String,
    pub name: String,
    pub enabled: bool,
    /// Deleted: new versions can no longer use it (what pins it still runs
    /// with it, and stays held while it is disabled).
    pub deleted: bool,
    pub version: i32,
    /// The highest version.
    pub latest_version: i32,
    #[sqlx(json)]
    pub definition: sojourn_runtime::Definition,
    #[sqlx(try_from = "Instant")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "Instant")]
    pub updated_at: DateTime<Utc>,
}

/// One version of a registry definition.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RegistryVersion {
    pub version: i32,
    #[sqlx(try_from = "Instant")]
    pub created_at: DateTime<Utc>,
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
    /// The workflow's maximum entries per subject: when the snapshot has a
    /// subject and this many executions of the workflow already exist for
    /// it, the execution is not created ([`Created::LimitReached`]). An
    /// idempotency key used before still returns its execution.
    pub max_entries: Option<u32>,
    pub snapshot: Snapshot,
}

/// What [`crate::ExecutionStore::create_execution`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new execution.
    New(ExecutionId),
    /// The idempotency key was used before: this is that execution.
    Existing(ExecutionId),
    /// The subject already has the workflow's maximum number of entries;
    /// nothing was written.
    LimitReached { limit: u32 },
}

impl Created {
    /// The execution, unless none was created.
    pub fn id(&self) -> Option<&ExecutionId> {
        match self {
            Created::New(id) | Created::Existing(id) => Some(id),
            Created::LimitReached { .. } => None,
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
    /// Work of this transition the committing node takes on itself in the
    /// same commit, instead of claiming it back from the tables afterwards.
    pub claim: Option<Claim<'a>>,
    /// The outbox row (by idempotency key) of an action whose result this
    /// transition applies straight from the sender, in memory: removed, as
    /// the result's own record would have removed it.
    pub consumed_outbox: Option<&'a str>,
}

/// What a node claims in the commit that creates it: the actions of the
/// transition (their outbox rows claimed, their attempts begun: the node
/// sends them from memory at once) and the timers it sets that fall due
/// soon (held in memory, fired by the node's timer service). A node that
/// dies leaves the claims to expire, and another node takes the work.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub owner: &'a str,
    /// The outbox rows' claim.
    pub outbox_until: DateTime<Utc>,
    /// Timers due before this are claimed, each until its due time plus
    /// `timer_ttl`.
    pub timers_before: DateTime<Utc>,
    pub timer_ttl: chrono::Duration,
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
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JournalRow {
    /// Position in the journal (for pagination).
    pub id: i64,
    #[sqlx(json)]
    pub entry: JournalEntry,
}

/// One attempt of one action node.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
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
    #[sqlx(json)]
    pub input: Value,
    #[sqlx(try_from = "MaybeDoc")]
    pub output: Option<Value>,
    pub error: Option<String>,
    #[sqlx(try_from = "Instant")]
    pub started_at: DateTime<Utc>,
    #[sqlx(try_from = "MaybeInstant")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// A timer claimed by a node, to fire when due.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DueTimer {
    #[sqlx(try_from = "String")]
    pub execution_id: ExecutionId,
    #[sqlx(try_from = "String")]
    pub timer_id: TimerId,
    #[sqlx(try_from = "Instant")]
    pub due_at: DateTime<Utc>,
}

/// An action to hand to a worker.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OutboxMessage {
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub execution_id: ExecutionId,
    /// The `payload` column.
    #[sqlx(json, rename = "payload")]
    pub dispatch: Dispatch,
    /// How many times it has been handed out (1 on the first claim).
    pub deliveries: i32,
}

/// What a worker may do with an outbox message ([`crate::OutboxStore::begin_attempt`]).
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
    /// Or the outbox row's idempotency key (an action handed to the sender
    /// in memory, whose row id was never read back).
    pub outbox_key: Option<&'a str>,
}

/// An input waiting in an execution's inbox.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct InboxItem {
    pub id: i64,
    #[sqlx(json)]
    pub input: Input,
}

// ---- listing --------------------------------------------------------------

/// Which workflows to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct WorkflowQuery {
    pub namespace: String,
    /// Archived workflows are left out unless asked for.
    pub include_archived: bool,
    /// Cursor: only workflows whose id sorts before this one (ids are time
    /// ordered, so "older than").
    pub before_id: Option<String>,
    pub limit: u32,
}

/// A published version without its document (for listings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct VersionSummary {
    pub version: i32,
    #[sqlx(try_from = "Instant")]
    pub published_at: DateTime<Utc>,
}

/// Which executions to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct ExecutionQuery {
    pub namespace: String,
    pub workflow_id: Option<String>,
    pub status: Option<Status>,
    /// The correlation key (the execution's subject).
    pub subject: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created strictly before.
    pub created_before: Option<DateTime<Utc>>,
    /// Cursor: only executions whose id sorts before this one.
    pub before_id: Option<String>,
    pub limit: u32,
}

/// An execution in a listing (no snapshot).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ExecutionSummary {
    #[sqlx(try_from = "String")]
    pub id: ExecutionId,
    pub workflow_id: String,
    pub version: i32,
    #[sqlx(try_from = "StatusText")]
    pub status: Status,
    pub subject: Option<String>,
    pub current_node: Option<String>,
    #[sqlx(try_from = "Instant")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "Instant")]
    pub updated_at: DateTime<Utc>,
    #[sqlx(try_from = "MaybeInstant")]
    pub finished_at: Option<DateTime<Utc>>,
}

// ---- API keys -------------------------------------------------------------

/// An API key to store. Only the hash of its secret is kept.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// `key_…`, public (shown in listings; not the secret).
    pub id: String,
    pub namespace: String,
    pub name: Option<String>,
    /// Lowercase hex SHA-256 of the secret.
    pub hash: String,
    /// `read`, `write`, `admin`.
    pub scopes: Vec<String>,
    pub now: DateTime<Utc>,
}

/// A stored API key (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: String,
    pub namespace: String,
    pub name: Option<String>,
    #[sqlx(try_from = "Scopes")]
    pub scopes: Vec<String>,
    #[sqlx(try_from = "Instant")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "MaybeInstant")]
    pub revoked_at: Option<DateTime<Utc>>,
}

// ---- trigger instances ----------------------------------------------------

/// A trigger instance to create (state `init`).
#[derive(Debug, Clone)]
pub struct NewTrigger {
    /// `trg_…`
    pub id: String,
    pub namespace: String,
    pub workflow_id: String,
    /// For `api` triggers: the path under `/trigger/`, unique in the
    /// namespace among triggers not destroyed ([`crate::Error::Conflict`] on
    /// `path`).
    pub path: Option<String>,
    /// Its kind is the configuration's.
    pub config: TriggerConfig,
    pub now: DateTime<Utc>,
}

/// A stored trigger instance. Its configuration is stored as its kind's
/// [`TriggerConfig`] wrote it; [`TriggerRecord::typed_config`] reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TriggerRecord {
    pub id: String,
    pub namespace: String,
    pub workflow_id: String,
    #[sqlx(try_from = "String")]
    pub kind: TriggerKind,
    pub path: Option<String>,
    #[sqlx(json)]
    pub config: Value,
    #[sqlx(try_from = "String")]
    pub state: TriggerState,
    /// An active schedule's next fire.
    #[sqlx(try_from = "MaybeInstant")]
    pub next_fire_at: Option<DateTime<Utc>>,
    /// A schedule's latest fire.
    #[sqlx(try_from = "MaybeInstant")]
    pub last_fired_at: Option<DateTime<Utc>>,
    #[sqlx(try_from = "Instant")]
    pub created_at: DateTime<Utc>,
    /// When it last changed state.
    #[sqlx(try_from = "Instant")]
    pub updated_at: DateTime<Utc>,
}

/// A message an event trigger could not use, and why.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    /// `dlq_…`
    pub id: String,
    pub namespace: String,
    pub trigger_id: String,
    pub topic: String,
    #[sqlx(rename = "message_partition")]
    pub partition: i32,
    #[sqlx(rename = "message_offset")]
    pub offset: i64,
    #[sqlx(rename = "message_key")]
    pub key: Option<String>,
    /// The value as text (bytes that are not UTF-8 replaced), capped.
    pub payload: Option<String>,
    pub reason: String,
    #[sqlx(try_from = "Instant")]
    pub created_at: DateTime<Utc>,
}

impl TriggerRecord {
    /// The configuration, typed. Only a row edited by hand fails to read.
    pub fn typed_config(&self) -> Result<TriggerConfig, ConfigError> {
        TriggerConfig::parse(self.kind, &self.config)
    }
}

/// A send attempt to one provider, for the delivery log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// `dlv_…` ([`crate::ids::new_delivery_id`]).
    pub id: String,
    pub execution_id: ExecutionId,
    pub node: String,
    pub attempt: u32,
    pub idempotency_key: String,
    pub channel: String,
    pub provider: String,
    pub recipient: String,
    /// `queued`, `sent` or `failed`.
    pub status: String,
    pub provider_message_id: Option<String>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub duration_ms: i64,
}

/// A row of the delivery log.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub id: String,
    pub namespace: String,
    pub workflow_id: String,
    pub execution_id: String,
    pub node: String,
    pub attempt: i32,
    pub idempotency_key: String,
    pub channel: String,
    pub provider: String,
    pub recipient: String,
    pub status: String,
    pub provider_message_id: Option<String>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    #[sqlx(try_from = "Instant")]
    pub created_at: DateTime<Utc>,
    pub duration_ms: i64,
    #[sqlx(try_from = "Instant")]
    pub updated_at: DateTime<Utc>,
}

/// Which deliveries to list: a namespace's, narrowed by each filter given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryQuery {
    pub namespace: String,
    pub execution_id: Option<String>,
    /// Only deliveries of this subject's executions (a person's messages).
    pub subject: Option<String>,
    pub workflow_id: Option<String>,
    pub channel: Option<String>,
    pub provider: Option<String>,
    pub status: Option<String>,
    /// Sent at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Sent strictly before.
    pub created_before: Option<DateTime<Utc>>,
    /// Cursor: only deliveries whose id sorts before this one.
    pub before_id: Option<String>,
    pub limit: u32,
}
