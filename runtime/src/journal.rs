//! Journal entries: the append-only record of every input and everything it
//! caused, for debugging (`sojourn inspect`), the simulator's timeline and
//! replay.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::NodeId;
use crate::io::Input;

/// One journal row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The snapshot `seq` of the step that wrote it.
    pub seq: u64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: JournalEvent,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JournalEvent {
    InputReceived {
        input: Input,
    },
    /// An input that no longer applies (a stale timer, a duplicate result).
    InputIgnored {
        reason: String,
    },
    /// An input kept for later because the execution is paused.
    InputDeferred {
        input_kind: String,
    },
    NodeEntered {
        node: NodeId,
        node_type: String,
    },
    BranchTaken {
        node: NodeId,
        branch: String,
        to: NodeId,
    },
    VariablesAssigned {
        node: NodeId,
        vars: Map<String, Value>,
    },
    ActionDispatched {
        node: NodeId,
        action: String,
        attempt: u32,
        idempotency_key: String,
        inputs: Value,
    },
    ActionSucceeded {
        node: NodeId,
        attempt: u32,
    },
    ActionFailed {
        node: NodeId,
        attempt: u32,
        error: String,
        retryable: bool,
    },
    /// (`due`, not `at`: the entry's own `at` is flattened beside it.)
    RetryScheduled {
        node: NodeId,
        try_number: u32,
        due: DateTime<Utc>,
    },
    QuietHoursDeferred {
        node: NodeId,
        until: DateTime<Utc>,
    },
    /// Not sent, on purpose: the recipient opted out, is suppressed, has no
    /// address, or a frequency cap is full.
    ActionSkipped {
        node: NodeId,
        attempt: u32,
        reason: String,
    },
    /// Not sent: the action is disabled in the registry; the execution
    /// pauses until an operator retries it.
    ActionHeld {
        node: NodeId,
        attempt: u32,
        reason: String,
    },
    /// Held until a frequency cap allows it.
    ActionDeferred {
        node: NodeId,
        attempt: u32,
        until: DateTime<Utc>,
        reason: String,
    },
    DelayStarted {
        node: NodeId,
        until: DateTime<Utc>,
    },
    DelayElapsed {
        node: NodeId,
    },
    WaitingForEvent {
        node: NodeId,
        event: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<DateTime<Utc>>,
    },
    EventMatched {
        node: NodeId,
        event: String,
    },
    EventTimedOut {
        node: NodeId,
        event: String,
    },
    ExitCriteriaMet {
        event: String,
    },
    /// In the workflow's holdout: the execution ends at entry, with the
    /// outcome `holdout`.
    HeldOut,
    Paused {
        reason: String,
    },
    Resumed,
    Retried {
        node: NodeId,
    },
    Completed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<String>,
    },
    Failed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<NodeId>,
        error: String,
    },
    Cancelled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl JournalEvent {
    /// The `type` tag this event serializes with (the journal's `kind`
    /// column), without serializing it.
    pub fn kind(&self) -> &'static str {
        match self {
            JournalEvent::InputReceived { .. } => "input_received",
            JournalEvent::InputIgnored { .. } => "input_ignored",
            JournalEvent::InputDeferred { .. } => "input_deferred",
            JournalEvent::NodeEntered { .. } => "node_entered",
            JournalEvent::BranchTaken { .. } => "branch_taken",
            JournalEvent::VariablesAssigned { .. } => "variables_assigned",
            JournalEvent::ActionDispatched { .. } => "action_dispatched",
            JournalEvent::ActionSucceeded { .. } => "action_succeeded",
            JournalEvent::ActionFailed { .. } => "action_failed",
            JournalEvent::RetryScheduled { .. } => "retry_scheduled",
            JournalEvent::QuietHoursDeferred { .. } => "quiet_hours_deferred",
            JournalEvent::ActionSkipped { .. } => "action_skipped",
            JournalEvent::ActionHeld { .. } => "action_held",
            JournalEvent::ActionDeferred { .. } => "action_deferred",
            JournalEvent::DelayStarted { .. } => "delay_started",
            JournalEvent::DelayElapsed { .. } => "delay_elapsed",
            JournalEvent::WaitingForEvent { .. } => "waiting_for_event",
            JournalEvent::EventMatched { .. } => "event_matched",
            JournalEvent::EventTimedOut { .. } => "event_timed_out",
            JournalEvent::ExitCriteriaMet { .. } => "exit_criteria_met",
            JournalEvent::HeldOut => "held_out",
            JournalEvent::Paused { .. } => "paused",
            JournalEvent::Resumed => "resumed",
            JournalEvent::Retried { .. } => "retried",
            JournalEvent::Completed { .. } => "completed",
            JournalEvent::Failed { .. } => "failed",
            JournalEvent::Cancelled { .. } => "cancelled",
        }
    }
}

impl fmt::Display for JournalEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ts = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
        match self {
            JournalEvent::InputReceived { input } => match input {
                Input::Event(e) => write!(f, "input: event {:?}", e.name),
                Input::TimerFired { timer } => write!(f, "input: timer {timer} fired"),
                Input::ActionResult { node, attempt, .. } => {
                    write!(f, "input: result of {node} attempt {attempt}")
                }
                other => write!(f, "input: {}", other.kind()),
            },
            JournalEvent::InputIgnored { reason } => write!(f, "ignored: {reason}"),
            JournalEvent::InputDeferred { input_kind } => {
                write!(f, "deferred {input_kind} until resumed")
            }
            JournalEvent::NodeEntered { node, node_type } => {
                write!(f, "enter {node} ({node_type})")
            }
            JournalEvent::BranchTaken { node, branch, to } => {
                write!(f, "{node} → {to} via {branch:?}")
            }
            JournalEvent::VariablesAssigned { node, vars } => {
                write!(f, "{node} set {}", Value::Object(vars.clone()))
            }
            JournalEvent::ActionDispatched {
                node,
                action,
                attempt,
                idempotency_key,
                inputs,
            } => write!(
                f,
                "send {action} from {node} (attempt {attempt}, key {idempotency_key}): {inputs}"
            ),
            JournalEvent::ActionSucceeded { node, attempt } => {
                write!(f, "{node} attempt {attempt} succeeded")
            }
            JournalEvent::ActionFailed {
                node,
                attempt,
                error,
                retryable,
            } => write!(
                f,
                "{node} attempt {attempt} failed{}: {error}",
                if *retryable { "" } else { " (not retryable)" }
            ),
            JournalEvent::RetryScheduled {
                node,
                try_number,
                due,
            } => {
                write!(f, "{node} try {try_number} at {}", ts(due))
            }
            JournalEvent::QuietHoursDeferred { node, until } => {
                write!(f, "{node} held for quiet hours until {}", ts(until))
            }
            JournalEvent::ActionSkipped {
                node,
                attempt,
                reason,
            } => write!(f, "{node} attempt {attempt} not sent: {reason}"),
            JournalEvent::ActionHeld {
                node,
                attempt,
                reason,
            } => write!(f, "{node} attempt {attempt} not sent: {reason}"),
            JournalEvent::ActionDeferred {
                node,
                attempt,
                until,
                reason,
            } => write!(
                f,
                "{node} attempt {attempt} held until {}: {reason}",
                ts(until)
            ),
            JournalEvent::DelayStarted { node, until } => {
                write!(f, "{node} sleeps until {}", ts(until))
            }
            JournalEvent::DelayElapsed { node } => write!(f, "{node} woke up"),
            JournalEvent::WaitingForEvent {
                node,
                event,
                key,
                until,
            } => {
                write!(f, "{node} waits for {event:?}")?;
                if let Some(key) = key {
                    write!(f, " with key {key:?}")?;
                }
                if let Some(until) = until {
                    write!(f, " until {}", ts(until))?;
                }
                Ok(())
            }
            JournalEvent::EventMatched { node, event } => write!(f, "{node} received {event:?}"),
            JournalEvent::EventTimedOut { node, event } => {
                write!(f, "{node} timed out waiting for {event:?}")
            }
            JournalEvent::ExitCriteriaMet { event } => {
                write!(f, "exit criteria met by event {event:?}")
            }
            JournalEvent::HeldOut => f.write_str("in the holdout: ends at entry"),
            JournalEvent::Paused { reason } => write!(f, "paused: {reason}"),
            JournalEvent::Resumed => f.write_str("resumed"),
            JournalEvent::Retried { node } => write!(f, "operator retried {node}"),
            JournalEvent::Completed { outcome } => match outcome {
                Some(o) => write!(f, "completed: {o}"),
                None => f.write_str("completed"),
            },
            JournalEvent::Failed { node, error } => match node {
                Some(n) => write!(f, "failed at {n}: {error}"),
                None => write!(f, "failed: {error}"),
            },
            JournalEvent::Cancelled { reason } => match reason {
                Some(r) => write!(f, "cancelled: {r}"),
                None => f.write_str("cancelled"),
            },
        }
    }
}
