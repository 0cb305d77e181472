//! The rows one transition writes, derived once (pure) and then written by
//! either backend. Keeping this in one place is what makes the two stores
//! write the same thing. (Also the attempt columns the outbox area writes.)

use chrono::{DateTime, Utc};
use serde_json::Value;
use sojourn_runtime::{ActionOutcome, Effect, Input, JournalEvent, Status, Transition};

use crate::Result;
use crate::error::Error;
use crate::types::Commit;

#[derive(Debug)]
pub(crate) struct ExecutionUpdate {
    pub(crate) id: String,
    pub(crate) epoch: i64,
    pub(crate) status: &'static str,
    pub(crate) current_node: Option<String>,
    /// The snapshot as JSON text (serialized once, straight from the type).
    pub(crate) snapshot: String,
    pub(crate) seq: i64,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub(crate) struct JournalInsert {
    pub(crate) seq: i64,
    pub(crate) at: DateTime<Utc>,
    pub(crate) kind: &'static str,
    pub(crate) entry: String,
}

#[derive(Debug)]
pub(crate) struct NodeStart {
    pub(crate) node_id: String,
    pub(crate) attempt: i32,
    pub(crate) action: String,
    pub(crate) input: String,
    /// `dispatched`; `sending` (one send begun) when the committing node
    /// claimed it.
    pub(crate) status: &'static str,
    pub(crate) sends: i32,
}

#[derive(Debug)]
pub(crate) struct NodeResult {
    pub(crate) node_id: String,
    pub(crate) attempt: i32,
    pub(crate) status: &'static str,
    pub(crate) output: Option<Value>,
    pub(crate) error: Option<String>,
}

#[derive(Debug)]
pub(crate) struct OutboxInsert {
    pub(crate) node_id: String,
    pub(crate) attempt: i32,
    pub(crate) idempotency_key: String,
    pub(crate) action: String,
    pub(crate) payload: String,
    /// Claimed by the committing node (`Claim`), and handed out once.
    pub(crate) claimed_by: Option<String>,
    pub(crate) claimed_until: Option<DateTime<Utc>>,
    pub(crate) deliveries: i32,
}

#[derive(Debug)]
pub(crate) struct TimerInsert {
    pub(crate) timer_id: String,
    pub(crate) due_at: DateTime<Utc>,
    pub(crate) claimed_by: Option<String>,
    pub(crate) claimed_until: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub(crate) struct SubscriptionInsert {
    pub(crate) subscription_id: String,
    pub(crate) event: String,
    pub(crate) key: Option<String>,
}

/// Everything one commit writes.
#[derive(Debug)]
pub struct Rows {
    pub(crate) execution: ExecutionUpdate,
    pub(crate) now: DateTime<Utc>,
    pub(crate) journal: Vec<JournalInsert>,
    pub(crate) node_starts: Vec<NodeStart>,
    pub(crate) node_results: Vec<NodeResult>,
    pub(crate) outbox: Vec<OutboxInsert>,
    pub(crate) timers_set: Vec<TimerInsert>,
    /// Cancelled timers and the one that fired.
    pub(crate) timers_dropped: Vec<String>,
    pub(crate) subscribe: Vec<SubscriptionInsert>,
    pub(crate) unsubscribe: Vec<String>,
    pub(crate) consumed_input: Option<i64>,
    pub(crate) consumed_outbox: Option<String>,
    /// When the execution finished: every timer and subscription it still
    /// has goes.
    pub(crate) finished: bool,
}

fn json<T: serde::Serialize>(what: &'static str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(Error::corrupt(what))
}

impl Rows {
    pub(crate) fn of(commit: &Commit<'_>) -> Result<Rows> {
        let t: &Transition = commit.transition;
        let s = &t.snapshot;
        if s.execution_id != *commit.execution_id {
            return Err(Error::Invalid(format!(
                "commit for {} carries the snapshot of {}",
                commit.execution_id, s.execution_id
            )));
        }
        let now = s.updated_at;
        let mut rows = Rows {
            execution: ExecutionUpdate {
                id: s.execution_id.to_string(),
                epoch: commit.epoch.0,
                status: s.status.as_str(),
                current_node: s.current.as_ref().map(ToString::to_string),
                snapshot: json("snapshot", s)?,
                seq: i64::try_from(s.seq)
                    .map_err(|_| Error::Invalid("snapshot seq overflows".into()))?,
                updated_at: now,
                finished_at: s.finished_at,
            },
            now,
            journal: Vec::with_capacity(t.journal.len()),
            node_starts: Vec::new(),
            node_results: Vec::new(),
            outbox: Vec::new(),
            timers_set: Vec::new(),
            timers_dropped: commit
                .fired_timer
                .map(|t| vec![t.to_string()])
                .unwrap_or_default(),
            subscribe: Vec::new(),
            unsubscribe: Vec::new(),
            consumed_input: commit.consumed_input,
            consumed_outbox: commit.consumed_outbox.map(str::to_owned),
            finished: s.status.is_terminal(),
        };
        for entry in &t.journal {
            let value = json("journal entry", entry)?;
            let kind = entry.event.kind();
            if let JournalEvent::InputReceived {
                input:
                    Input::ActionResult {
                        node,
                        attempt,
                        outcome,
                    },
            } = &entry.event
            {
                let (status, output, error) = outcome_columns(outcome);
                rows.node_results.push(NodeResult {
                    node_id: node.to_string(),
                    attempt: attempt_i32(*attempt)?,
                    status,
                    output,
                    error,
                });
            }
            rows.journal.push(JournalInsert {
                seq: i64::try_from(entry.seq).unwrap_or(i64::MAX),
                at: entry.at,
                kind,
                entry: value,
            });
        }
        for effect in &t.effects {
            match effect {
                Effect::Dispatch(d) => {
                    let claimed = commit.claim.map(|c| (c.owner.to_owned(), c.outbox_until));
                    let (status, sends) = if claimed.is_some() {
                        ("sending", 1)
                    } else {
                        ("dispatched", 0)
                    };
                    rows.node_starts.push(NodeStart {
                        status,
                        sends,
                        node_id: d.node.to_string(),
                        attempt: attempt_i32(d.attempt)?,
                        action: d.action.clone(),
                        input: json(
                            "node input",
                            &sojourn_runtime::secrets::redact_for_storage(&d.inputs),
                        )?,
                    });
                    rows.outbox.push(OutboxInsert {
                        node_id: d.node.to_string(),
                        attempt: attempt_i32(d.attempt)?,
                        idempotency_key: d.idempotency_key.clone(),
                        action: d.action.clone(),
                        payload: json("dispatch", d)?,
                        deliveries: i32::from(claimed.is_some()),
                        claimed_until: claimed.as_ref().map(|c| c.1),
                        claimed_by: claimed.map(|c| c.0),
                    });
                }
                Effect::ScheduleTimer { timer, at } => {
                    let claimed = commit
                        .claim
                        .filter(|c| *at < c.timers_before)
                        .map(|c| (c.owner.to_owned(), *at + c.timer_ttl));
                    rows.timers_set.push(TimerInsert {
                        timer_id: timer.to_string(),
                        due_at: *at,
                        claimed_until: claimed.as_ref().map(|c| c.1),
                        claimed_by: claimed.map(|c| c.0),
                    })
                }
                Effect::CancelTimer { timer } => rows.timers_dropped.push(timer.to_string()),
                Effect::Subscribe {
                    subscription,
                    event,
                    key,
                } => rows.subscribe.push(SubscriptionInsert {
                    subscription_id: subscription.to_string(),
                    event: event.clone(),
                    key: key.clone(),
                }),
                Effect::Unsubscribe { subscription } => {
                    rows.unsubscribe.push(subscription.to_string())
                }
                Effect::Complete { .. }
                | Effect::Fail { .. }
                | Effect::Pause { .. }
                | Effect::Cancel { .. } => {}
            }
        }
        // A status of `Status::Pending` is never committed by a step.
        debug_assert!(s.status != Status::Pending);
        Ok(rows)
    }
}

/// `(status, output, error)` columns of an attempt's outcome.
pub(crate) fn outcome_columns(
    outcome: &ActionOutcome,
) -> (&'static str, Option<Value>, Option<String>) {
    match outcome {
        ActionOutcome::Success { output } => ("succeeded", Some(output.clone()), None),
        ActionOutcome::Failure { error, .. } => ("failed", None, Some(error.clone())),
        ActionOutcome::Skipped { reason, output } => {
            ("skipped", Some(output.clone()), Some(reason.clone()))
        }
        ActionOutcome::Held { reason } => ("held", None, Some(reason.clone())),
        ActionOutcome::Deferred { until, reason } => (
            "deferred",
            Some(serde_json::json!({ "until": until })),
            Some(reason.clone()),
        ),
    }
}

pub(crate) fn attempt_i32(attempt: u32) -> Result<i32> {
    i32::try_from(attempt).map_err(|_| Error::Invalid(format!("attempt {attempt} overflows")))
}

/// Splits a batch into rounds in which each execution appears once, keeping
/// each execution's transitions in order. (Two transitions of one execution
/// in one `UPDATE … FROM UNNEST` would race each other.)
pub(crate) fn rounds(rows: Vec<(usize, Rows)>) -> Vec<Vec<(usize, Rows)>> {
    let mut rounds: Vec<Vec<(usize, Rows)>> = Vec::new();
    let mut depth: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, r) in rows {
        let d = depth.entry(r.execution.id.clone()).or_insert(0);
        if rounds.len() <= *d {
            rounds.push(Vec::new());
        }
        rounds[*d].push((i, r));
        *d += 1;
    }
    rounds
}
