//! The execution snapshot: everything needed to carry an execution on, on
//! any node, after any crash. It is plain serde data, versioned by `format`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::expr::{ExecutionInfo, Scope};
use crate::ids::{ExecutionId, NodeId, SubscriptionId, TimerId};
use crate::io::Input;

/// The snapshot format this build writes. Bump it (and teach
/// [`Snapshot::upgrade`] the old one) whenever a change is not backward
/// compatible.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// An execution's whole state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Which snapshot format this is ([`SNAPSHOT_FORMAT`]).
    pub format: u32,
    /// The subject's segments, read by the actor just before each step of
    /// a workflow that asks `in_segment(…)`; never stored.
    #[serde(skip)]
    pub segments: Option<std::sync::Arc<std::collections::BTreeSet<String>>>,
    pub execution_id: ExecutionId,
    pub status: Status,
    /// How many inputs have been applied; each step adds one.
    pub seq: u64,
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The execution's time zone (quiet hours, time-of-day delays).
    pub timezone: Tz,
    /// Variables assigned by `function` nodes.
    #[serde(default)]
    pub vars: Map<String, Value>,
    /// Per node: `{"output": …}` or `{"error": …}`, with `attempt`.
    #[serde(default)]
    pub nodes: BTreeMap<NodeId, Value>,
    /// The last event received by a `wait_for_event` node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
    /// The node the execution is at (or ended at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<NodeId>,
    /// What the execution waits for; `None` when not waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
    /// How many times each action node has been dispatched in this execution.
    /// The count is the `attempt` of the idempotency key, so a journey that
    /// loops back through a node never reuses a key.
    #[serde(default)]
    pub attempts: BTreeMap<NodeId, u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// Inputs that arrived while paused, applied in order on resume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<Input>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecutionError>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// Where an execution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, `start` not applied yet.
    Pending,
    /// Waiting for an action it dispatched: work is in flight.
    Running,
    /// Asleep on a timer or an event with nothing in flight: its actor may
    /// passivate.
    Waiting,
    /// Stopped for an operator (by request, or because an action failed for
    /// good with no failure branch). Timers and events are kept for resume.
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Waiting => "waiting",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a non-terminal execution is waiting for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Wait {
    /// The result of a dispatched action.
    Action {
        node: NodeId,
        /// The attempt in the idempotency key.
        attempt: u32,
        /// Which try of the current visit (1 ..= max_attempts).
        try_number: u32,
    },
    /// The backoff before the next try of an action.
    RetryBackoff {
        node: NodeId,
        try_number: u32,
        timer: TimerId,
        until: DateTime<Utc>,
    },
    /// An action reached inside quiet hours waits for the window to end.
    QuietHours {
        node: NodeId,
        try_number: u32,
        timer: TimerId,
        until: DateTime<Utc>,
    },
    /// A delay node.
    Delay {
        node: NodeId,
        timer: TimerId,
        until: DateTime<Utc>,
    },
    /// A wait-for-event node.
    Event {
        node: NodeId,
        event: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        subscription: SubscriptionId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timer: Option<TimerId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<DateTime<Utc>>,
    },
}

impl Wait {
    pub fn node(&self) -> &NodeId {
        match self {
            Wait::Action { node, .. }
            | Wait::RetryBackoff { node, .. }
            | Wait::QuietHours { node, .. }
            | Wait::Delay { node, .. }
            | Wait::Event { node, .. } => node,
        }
    }

    /// The timer this wait ends on, if any.
    pub fn timer(&self) -> Option<&TimerId> {
        match self {
            Wait::Action { .. } => None,
            Wait::RetryBackoff { timer, .. }
            | Wait::QuietHours { timer, .. }
            | Wait::Delay { timer, .. } => Some(timer),
            Wait::Event { timer, .. } => timer.as_ref(),
        }
    }

    /// When the wait ends on its own, if it does.
    pub fn until(&self) -> Option<DateTime<Utc>> {
        match self {
            Wait::Action { .. } => None,
            Wait::RetryBackoff { until, .. }
            | Wait::QuietHours { until, .. }
            | Wait::Delay { until, .. } => Some(*until),
            Wait::Event { until, .. } => *until,
        }
    }
}

/// Why an execution is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pause {
    /// An operator asked for it.
    Operator {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An action failed for good and its node has no `failure` branch.
    ActionFailed { node: NodeId, error: String },
}

/// Why an execution failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    pub message: String,
}

impl Snapshot {
    /// A new, not yet started execution. `subject` and `timezone` have
    /// already been resolved (see [`crate::CompiledWorkflow::new_execution`]).
    pub fn new(
        execution_id: ExecutionId,
        input: Value,
        subject: Option<String>,
        timezone: Tz,
        now: DateTime<Utc>,
    ) -> Snapshot {
        Snapshot {
            segments: None,
            format: SNAPSHOT_FORMAT,
            execution_id,
            status: Status::Pending,
            seq: 0,
            input,
            subject,
            timezone,
            vars: Map::new(),
            nodes: BTreeMap::new(),
            event: None,
            current: None,
            wait: None,
            attempts: BTreeMap::new(),
            pause: None,
            deferred: Vec::new(),
            outcome: None,
            error: None,
            created_at: now,
            started_at: None,
            updated_at: now,
            finished_at: None,
        }
    }

    /// What expressions and templates see.
    pub fn scope(&self, now: DateTime<Utc>) -> Scope<'_> {
        Scope {
            input: &self.input,
            vars: &self.vars,
            subject: self.subject.as_deref(),
            event: self.event.as_ref(),
            nodes: &self.nodes,
            segments: self.segments.as_deref(),
            execution: ExecutionInfo {
                id: &self.execution_id,
                started_at: self.started_at,
            },
            now,
        }
    }

    /// Brings an older snapshot format up to [`SNAPSHOT_FORMAT`].
    pub fn upgrade(self) -> Result<Snapshot, crate::Error> {
        match self.format {
            SNAPSHOT_FORMAT => Ok(self),
            found => Err(crate::Error::SnapshotFormat {
                found,
                supported: SNAPSHOT_FORMAT,
            }),
        }
    }
}
