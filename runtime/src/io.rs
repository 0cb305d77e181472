//! What goes into a step ([`Input`]) and what comes out ([`Transition`]:
//! the new snapshot, journal entries and [`Effect`]s as data).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{NodeId, SubscriptionId, TimerId};
use crate::journal::JournalEntry;
use crate::snapshot::{Snapshot, Status};

/// One input to an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Input {
    /// Begin at the start node.
    Start,
    /// A worker reports on a dispatched action.
    ActionResult {
        node: NodeId,
        attempt: u32,
        outcome: ActionOutcome,
    },
    /// A durable timer came due.
    TimerFired {
        timer: TimerId,
    },
    /// An event for this execution (by subscription, by exit criteria, or sent
    /// to it directly).
    Event(EventInput),
    Pause {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Resume,
    Cancel {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An operator retries the node a paused or failed execution stopped at.
    Retry,
}

impl Input {
    /// A short name for logs and the journal.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Start => "start",
            Input::ActionResult { .. } => "action_result",
            Input::TimerFired { .. } => "timer_fired",
            Input::Event(_) => "event",
            Input::Pause { .. } => "pause",
            Input::Resume => "resume",
            Input::Cancel { .. } => "cancel",
            Input::Retry => "retry",
        }
    }
}

/// What happened to an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ActionOutcome {
    Success {
        #[serde(default)]
        output: Value,
    },
    Failure {
        error: String,
        /// Whether trying again may help (a 503, a timeout), as opposed to a
        /// 400 that will fail the same way every time.
        #[serde(default = "yes")]
        retryable: bool,
        /// What else the sender knows of the failure (its class, the
        /// provider, the provider's code): merged into the node's output on
        /// its `failure` branch. Null when there is nothing more.
        #[serde(default, skip_serializing_if = "Value::is_null")]
        output: Value,
        /// The earliest a retry may go, in milliseconds (a 429's
        /// `Retry-After`): the retry waits the longer of this and the
        /// node's backoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Not sent, on purpose, and not to be tried again: the recipient
    /// opted out, is suppressed or has no address, or a frequency cap is
    /// full. The node takes its `skipped` branch, else goes on as if sent.
    Skipped {
        reason: String,
        /// Why, for the node's output (`status`: unsubscribed, suppressed,
        /// no_address, capped; the channel, the cap).
        #[serde(default, skip_serializing_if = "Value::is_null")]
        output: Value,
    },
    /// Not sent, and the execution pauses until an operator retries it:
    /// the action is disabled in the registry. No try is spent.
    Held { reason: String },
    /// Not sent yet: a frequency cap allows it at `until`. The node sends
    /// again then (a durable timer), without spending one of its tries.
    Deferred {
        until: chrono::DateTime<chrono::Utc>,
        reason: String,
    },
}

impl ActionOutcome {
    /// A failure with nothing more to say than its message.
    pub fn failure(error: impl Into<String>, retryable: bool) -> ActionOutcome {
        ActionOutcome::Failure {
            error: error.into(),
            retryable,
            output: Value::Null,
            retry_after_ms: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// An event delivered to an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventInput {
    pub name: String,
    /// The correlation key it was sent with (usually a subject); `None` when
    /// sent to this execution directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub payload: Value,
}

/// An action to send, with everything a worker needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispatch {
    pub node: NodeId,
    /// The registry action type (`http.request`, `email.send`, …).
    pub action: String,
    pub attempt: u32,
    /// `execution/node/attempt`: the same on every redelivery of this attempt.
    pub idempotency_key: String,
    /// The rendered inputs.
    pub inputs: Value,
    pub timeout_ms: u64,
    /// The workflow's own frequency caps (messaging actions only).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::caps::shared"
    )]
    pub frequency_caps: Option<std::sync::Arc<crate::caps::WorkflowCaps>>,
    /// A custom action is sent as this built-in one (`http.request`,
    /// `kafka.publish`), `inputs` being that one's: its registry
    /// definition's `run`, rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl Dispatch {
    /// The action that sends it: the built-in one a custom action goes
    /// through, else its own.
    pub fn sent_as(&self) -> &str {
        self.via.as_deref().unwrap_or(&self.action)
    }
}

/// What the world must do after a transition commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    Dispatch(Dispatch),
    ScheduleTimer {
        timer: TimerId,
        at: DateTime<Utc>,
    },
    CancelTimer {
        timer: TimerId,
    },
    /// Deliver events with this name (and correlation key, if any).
    Subscribe {
        subscription: SubscriptionId,
        event: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    Unsubscribe {
        subscription: SubscriptionId,
    },
    Complete {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<String>,
    },
    Fail {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<NodeId>,
        error: String,
    },
    Pause {
        reason: String,
    },
    Cancel {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub snapshot: Snapshot,
    pub journal: Vec<JournalEntry>,
    pub effects: Vec<Effect>,
}

impl Transition {
    /// True when nothing is in flight and the actor may passivate.
    pub fn can_passivate(&self) -> bool {
        matches!(
            self.snapshot.status,
            Status::Waiting
                | Status::Paused
                | Status::Completed
                | Status::Failed
                | Status::Cancelled
        )
    }
}
