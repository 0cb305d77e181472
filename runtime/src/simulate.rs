//! The simulator: runs a workflow through the interpreter on a virtual
//! clock. Delays of days take no time; actions are not sent, their results
//! come from a script or default to success. This is the builder's "preview
//! and test" button and `sojourn simulate`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::io::{ActionOutcome, Dispatch, Effect, EventInput, Input};
use crate::journal::{JournalEntry, JournalEvent};
use crate::snapshot::{Pause, Snapshot, Status};
use crate::{CompiledWorkflow, ExecutionId, NodeId, TimerId};

/// What happens around the execution: events that arrive, and how actions
/// turn out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Events, each at an offset from the start or at an absolute time.
    #[serde(default)]
    pub events: Vec<ScriptedEvent>,
    /// Per action node, the outcomes of its successive attempts; once they
    /// run out (or for nodes not listed) attempts succeed with `{}`.
    #[serde(default)]
    pub actions: BTreeMap<NodeId, Vec<ActionOutcome>>,
}

/// An event in a script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptedEvent {
    /// When, after the start: `"2h"`, `"3d"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// When, as an instant (instead of `after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    pub name: String,
    /// The correlation key; defaults to the execution's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub payload: Value,
}

impl Script {
    /// Parses a script: an object `{events, actions}` or just an array of
    /// events.
    pub fn from_json(text: &str) -> Result<Script, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let value = match value {
            Value::Array(events) => json!({ "events": events }),
            other => other,
        };
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            format!(
                "{}: {}",
                if path == "." { "script" } else { &path },
                e.inner()
            )
        })
    }
}

/// How a simulation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// Completed, failed or cancelled.
    Finished,
    /// An action failed for good with no failure branch.
    PausedForOperator,
    /// Waiting for an event that the script never sends, with no timeout.
    WaitingForever,
    /// More steps than the limit (a journey that loops through delays).
    StepLimit,
}

/// Limits that keep a simulation finite.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_steps: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_steps: 10_000 }
    }
}

/// The result of a simulation.
#[derive(Debug, Clone, Serialize)]
pub struct Simulation {
    pub started_at: DateTime<Utc>,
    pub stop: Stop,
    pub timeline: Vec<JournalEntry>,
    pub dispatches: Vec<Dispatch>,
    pub snapshot: Snapshot,
}

/// Runs `snapshot` (a new, pending execution) to its end on a virtual clock
/// that starts at `snapshot.created_at`.
pub fn simulate(
    wf: &CompiledWorkflow,
    snapshot: Snapshot,
    script: &Script,
    limits: Limits,
) -> Result<Simulation, String> {
    let started_at = snapshot.created_at;
    let mut queue: BinaryHeap<Reverse<(DateTime<Utc>, u64)>> = BinaryHeap::new();
    let mut inputs: BTreeMap<u64, Input> = BTreeMap::new();
    let mut order = 0u64;
    let mut push = |queue: &mut BinaryHeap<_>, inputs: &mut BTreeMap<u64, Input>, at, input| {
        order += 1;
        queue.push(Reverse((at, order)));
        inputs.insert(order, input);
    };
    push(&mut queue, &mut inputs, started_at, Input::Start);
    for (i, e) in script.events.iter().enumerate() {
        let at = match (&e.after, e.at) {
            (Some(after), None) => {
                let d = crate::time::parse_duration(after)
                    .map_err(|err| format!("events[{i}].after: {err}"))?;
                started_at
                    .checked_add_signed(d)
                    .ok_or_else(|| format!("events[{i}].after: too far in the future"))?
            }
            (None, Some(at)) => at,
            _ => return Err(format!("events[{i}]: set exactly one of after, at")),
        };
        if e.name.is_empty() {
            return Err(format!("events[{i}].name: must not be empty"));
        }
        let key = e.key.clone().or_else(|| snapshot.subject.clone());
        push(
            &mut queue,
            &mut inputs,
            at,
            Input::Event(EventInput {
                name: e.name.clone(),
                key,
                payload: e.payload.clone(),
            }),
        );
    }
    for node in script.actions.keys() {
        if wf
            .node_by_id(node.as_str())
            .is_none_or(|n| n.type_name() != "action")
        {
            return Err(format!(
                "actions.{node}: no action node {node:?} in this workflow"
            ));
        }
    }

    let mut outcomes: BTreeMap<&NodeId, VecDeque<&ActionOutcome>> = script
        .actions
        .iter()
        .map(|(k, v)| (k, v.iter().collect()))
        .collect();
    let mut live_timers: HashSet<TimerId> = HashSet::new();
    let mut snap = snapshot;
    let mut timeline = Vec::new();
    let mut dispatches = Vec::new();
    let mut steps = 0usize;
    let stop = loop {
        let Some(Reverse((at, id))) = queue.pop() else {
            break if snap.status.is_terminal() {
                Stop::Finished
            } else {
                Stop::WaitingForever
            };
        };
        let Some(input) = inputs.remove(&id) else {
            continue;
        };
        if let Input::TimerFired { timer } = &input
            && !live_timers.remove(timer)
        {
            continue;
        }
        steps += 1;
        if steps > limits.max_steps {
            break Stop::StepLimit;
        }
        let t = wf.step(&snap, input, at).map_err(|e| e.to_string())?;
        for effect in &t.effects {
            match effect {
                Effect::Dispatch(d) => {
                    let outcome = outcomes
                        .get_mut(&d.node)
                        .and_then(VecDeque::pop_front)
                        .cloned()
                        .unwrap_or(ActionOutcome::Success { output: json!({}) });
                    dispatches.push(d.clone());
                    push(
                        &mut queue,
                        &mut inputs,
                        at,
                        Input::ActionResult {
                            node: d.node.clone(),
                            attempt: d.attempt,
                            outcome,
                        },
                    );
                }
                Effect::ScheduleTimer { timer, at } => {
                    live_timers.insert(timer.clone());
                    push(
                        &mut queue,
                        &mut inputs,
                        *at,
                        Input::TimerFired {
                            timer: timer.clone(),
                        },
                    );
                }
                Effect::CancelTimer { timer } => {
                    live_timers.remove(timer);
                }
                _ => {}
            }
        }
        snap = t.snapshot;
        timeline.extend(t.journal);
        if snap.status.is_terminal() {
            break Stop::Finished;
        }
        if matches!(snap.pause, Some(Pause::ActionFailed { .. })) {
            break Stop::PausedForOperator;
        }
    };
    Ok(Simulation {
        started_at,
        stop,
        timeline,
        dispatches,
        snapshot: snap,
    })
}

/// Convenience: a new execution with id `exe_simulated` started at `start`.
pub fn new_simulated_execution(
    wf: &CompiledWorkflow,
    input: Value,
    subject: Option<String>,
    timezone: Option<&str>,
    start: DateTime<Utc>,
) -> Result<Snapshot, crate::Error> {
    wf.new_execution(
        ExecutionId::new("exe_simulated"),
        input,
        subject,
        timezone,
        start,
    )
}

impl Simulation {
    /// The timeline as text, one line per thing that happened: offset from
    /// the start, the local time in the execution's zone, and what happened.
    /// Bookkeeping entries (inputs received, single-exit edges) are left out.
    pub fn render_text(&self) -> String {
        let tz = self.snapshot.timezone;
        let mut out = String::new();
        for entry in &self.timeline {
            let show = match &entry.event {
                JournalEvent::InputReceived { input } => matches!(input, Input::Event(_)),
                JournalEvent::BranchTaken { branch, .. } => branch != "next",
                JournalEvent::ActionSucceeded { .. } => false,
                _ => true,
            };
            if !show {
                continue;
            }
            let offset = crate::time::format_duration(entry.at - self.started_at);
            let local = entry.at.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z");
            let _ = writeln!(out, "+{offset:<10} {local:<22} {}", entry.event);
        }
        let end = match self.stop {
            Stop::Finished => match self.snapshot.status {
                Status::Completed => match &self.snapshot.outcome {
                    Some(o) => format!("completed ({o})"),
                    None => "completed".to_owned(),
                },
                other => other.to_string(),
            },
            Stop::PausedForOperator => "paused for an operator".to_owned(),
            Stop::WaitingForever => "still waiting: nothing in the script wakes it".to_owned(),
            Stop::StepLimit => "stopped: step limit reached".to_owned(),
        };
        let last = self.timeline.last().map_or(self.started_at, |e| e.at);
        let _ = writeln!(
            out,
            "= {end} after {} of journey time, {} action(s) sent",
            crate::time::format_duration(last - self.started_at),
            self.dispatches.len()
        );
        out
    }
}
