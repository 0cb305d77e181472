//! Test helpers: build small workflows and drive executions by hand.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::{
    ActionOutcome, CompiledWorkflow, Dispatch, Effect, Error, EventInput, ExecutionId, Input,
    JournalEntry, NodeId, Registry, Snapshot, TimerId, Workflow,
};

pub(crate) fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test timestamp")
        .with_timezone(&Utc)
}

/// `start` (with the given node JSON, id forced to "start") → each middle
/// node in turn → an exit node `end`, wiring every branch a node needs to
/// the next node.
pub(crate) fn linear(start: Value, middle: Vec<Value>) -> Value {
    let mut start = start;
    start["id"] = json!("start");
    let mut nodes = vec![start];
    nodes.extend(middle);
    nodes.push(json!({"id": "end", "type": "exit"}));
    let mut edges = Vec::new();
    for pair in nodes.windows(2) {
        let (from, to) = (&pair[0], &pair[1]);
        let cfg = &from["config"];
        let mut branches: Vec<Option<String>> = match from["type"].as_str() {
            Some("action") => vec![Some("success".into())],
            Some("condition") => vec![Some("true".into()), Some("false".into())],
            Some("wait_for_event") if cfg.get("timeout").is_some() => {
                vec![Some("event".into()), Some("timeout".into())]
            }
            Some("wait_for_event") => vec![Some("event".into())],
            Some("split") => {
                let mut b: Vec<Option<String>> = Vec::new();
                if let Some(rules) = cfg["rules"].as_array().filter(|r| !r.is_empty()) {
                    b.extend(rules.iter().map(|r| r["branch"].as_str().map(String::from)));
                    b.push(Some("default".into()));
                }
                if let Some(vs) = cfg["variants"].as_array() {
                    b.extend(vs.iter().map(|v| v["branch"].as_str().map(String::from)));
                }
                b
            }
            _ => vec![None],
        };
        branches.dedup();
        let mut seen = Vec::new();
        for b in branches {
            if seen.contains(&b) {
                continue;
            }
            seen.push(b.clone());
            let mut edge = json!({"from": from["id"], "to": to["id"]});
            if let Some(b) = b {
                edge["branch"] = json!(b);
            }
            edges.push(edge);
        }
    }
    json!({"nodes": nodes, "edges": edges})
}

fn parse(doc: &Value) -> Result<Workflow, Vec<crate::ValidationError>> {
    Workflow::from_value(doc.clone())
}

pub(crate) fn compile(doc: &Value) -> CompiledWorkflow {
    let wf = parse(doc).unwrap_or_else(|e| panic!("document does not parse: {e:#?}"));
    CompiledWorkflow::compile(&wf, &Registry::builtin())
        .unwrap_or_else(|e| panic!("workflow does not validate: {e:#?}"))
}

/// Every validation error as `node:field` (node empty for document-level).
pub(crate) fn errors_of(doc: &Value) -> Vec<String> {
    let errors = match parse(doc) {
        Ok(wf) => match CompiledWorkflow::compile(&wf, &Registry::builtin()) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        },
        Err(e) => e,
    };
    errors
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e.node.as_ref().map(NodeId::as_str).unwrap_or(""),
                e.field
            )
        })
        .collect()
}

/// Drives one execution by hand, keeping its timers.
#[derive(Debug)]
pub(crate) struct Harness<'w> {
    wf: &'w CompiledWorkflow,
    pub(crate) snapshot: Snapshot,
    pub(crate) now: DateTime<Utc>,
    pub(crate) effects: Vec<Effect>,
    pub(crate) journal: Vec<JournalEntry>,
    timers: BTreeMap<TimerId, DateTime<Utc>>,
}

impl<'w> Harness<'w> {
    pub(crate) fn new(
        wf: &'w CompiledWorkflow,
        id: &str,
        input: Value,
        subject: Option<&str>,
    ) -> Self {
        let now = utc("2026-01-01T12:00:00Z");
        Self::new_at(wf, id, input, subject, now)
    }

    fn new_at(
        wf: &'w CompiledWorkflow,
        id: &str,
        input: Value,
        subject: Option<&str>,
        now: DateTime<Utc>,
    ) -> Self {
        let snapshot = wf
            .new_execution(
                ExecutionId::new(id),
                input,
                subject.map(Into::into),
                None,
                now,
            )
            .expect("valid start");
        Harness {
            wf,
            snapshot,
            now,
            effects: Vec::new(),
            journal: Vec::new(),
            timers: BTreeMap::new(),
        }
    }

    pub(crate) fn start(wf: &'w CompiledWorkflow, input: Value) -> Self {
        let mut h = Self::new(wf, "exe_test", input, None);
        h.step(Input::Start);
        h
    }

    pub(crate) fn start_id(wf: &'w CompiledWorkflow, id: &str, input: Value) -> Self {
        let mut h = Self::new(wf, id, input, None);
        h.step(Input::Start);
        h
    }

    pub(crate) fn start_at(wf: &'w CompiledWorkflow, input: Value, at: DateTime<Utc>) -> Self {
        let mut h = Self::new_at(wf, "exe_test", input, None, at);
        h.step(Input::Start);
        h
    }

    pub(crate) fn start_with_subject(
        wf: &'w CompiledWorkflow,
        input: Value,
        subject: &str,
    ) -> Self {
        let mut h = Self::new(wf, "exe_test", input, Some(subject));
        h.step(Input::Start);
        h
    }

    pub(crate) fn try_step(&mut self, input: Input) -> Result<(), Error> {
        let t = self.wf.step(&self.snapshot, input, self.now)?;
        for e in &t.effects {
            match e {
                Effect::ScheduleTimer { timer, at } => {
                    self.timers.insert(timer.clone(), *at);
                }
                Effect::CancelTimer { timer } => {
                    self.timers.remove(timer);
                }
                _ => {}
            }
        }
        self.snapshot = t.snapshot;
        self.effects.extend(t.effects);
        self.journal.extend(t.journal);
        Ok(())
    }

    pub(crate) fn step(&mut self, input: Input) {
        self.try_step(input).expect("step accepted");
    }

    pub(crate) fn succeed(&mut self, node: &str, attempt: u32, output: Value) {
        self.step(Input::ActionResult {
            node: NodeId::from(node),
            attempt,
            outcome: ActionOutcome::Success { output },
        });
    }

    pub(crate) fn fail(&mut self, node: &str, attempt: u32, retryable: bool) {
        self.step(Input::ActionResult {
            node: NodeId::from(node),
            attempt,
            outcome: ActionOutcome::failure("HTTP 503", retryable),
        });
    }

    pub(crate) fn event(&mut self, name: &str, key: Option<&str>, payload: Value) {
        self.step(Input::Event(EventInput {
            name: name.into(),
            key: key.map(Into::into),
            payload,
        }));
    }

    pub(crate) fn last_dispatch(&self) -> Dispatch {
        self.effects
            .iter()
            .rev()
            .find_map(|e| match e {
                Effect::Dispatch(d) => Some(d.clone()),
                _ => None,
            })
            .expect("an action was dispatched")
    }

    pub(crate) fn pending_timers(&self) -> Vec<DateTime<Utc>> {
        let mut at: Vec<_> = self.timers.values().copied().collect();
        at.sort();
        at
    }

    /// Moves the clock to the earliest pending timer and fires it.
    pub(crate) fn fire_due_timer(&mut self) {
        let (timer, at) = self
            .timers
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(t, at)| (t.clone(), *at))
            .expect("a pending timer");
        self.timers.remove(&timer);
        self.now = self.now.max(at);
        self.step(Input::TimerFired { timer });
    }
}
