//! The pure interpreter: `step(snapshot, input, now) -> Transition`.
//!
//! A step applies one [`Input`] to a snapshot and walks the graph until the
//! execution has to wait (an action in flight, a delay, an event) or ends.
//! It never does I/O, never reads a clock and draws no randomness that is
//! not derived from the execution id: the same snapshot, input and `now`
//! always give the same transition, which is what makes replay, the
//! simulator and crash recovery possible. What should happen in the world
//! comes out as [`Effect`]s, to be acted on only after the transition has
//! been committed.

use chrono::{DateTime, Utc};

use crate::compile::{CompiledKind, CompiledNode, CompiledWorkflow};
use crate::error::Error;
use crate::ids::{NodeId, SubscriptionId, TimerId};
use crate::io::{Effect, EventInput, Input, Transition};
use crate::journal::{JournalEntry, JournalEvent};
use crate::nodes;
use crate::snapshot::{ExecutionError, Pause, Snapshot, Status, Wait};

/// At most this many nodes are entered in one step. Validation already
/// rejects loops that never wait; this is a second line of defence.
pub const MAX_NODES_PER_STEP: u32 = 1_000;

/// The outcome of an execution held out of its journey (`settings.holdout`).
pub const HOLDOUT_OUTCOME: &str = "holdout";

/// What a node tells the walker to do next.
#[derive(Debug)]
pub(crate) enum Flow<'w> {
    /// Leave by this branch (`None` for a node with a single exit).
    Next(Option<&'w str>),
    /// Stay: the execution now waits, is paused or has finished.
    Suspend,
}

/// The state of one step in progress.
#[derive(Debug)]
pub(crate) struct Machine<'w> {
    pub(crate) wf: &'w CompiledWorkflow,
    pub(crate) snap: Snapshot,
    pub(crate) now: DateTime<Utc>,
    journal: Vec<JournalEntry>,
    effects: Vec<Effect>,
    entered: u32,
}

impl CompiledWorkflow {
    /// Applies one input. On `Err` nothing changed: keep the old snapshot.
    pub fn step(
        &self,
        snapshot: &Snapshot,
        input: Input,
        now: DateTime<Utc>,
    ) -> Result<Transition, Error> {
        let snap = snapshot.clone().upgrade()?;
        check(&snap, &input)?;
        let mut m = Machine {
            wf: self,
            snap,
            now,
            journal: Vec::with_capacity(4),
            effects: Vec::with_capacity(2),
            entered: 0,
        };
        m.snap.seq += 1;
        m.snap.updated_at = now;
        m.journal(JournalEvent::InputReceived {
            input: input.clone(),
        });
        m.apply(input);
        Ok(Transition {
            snapshot: m.snap,
            journal: m.journal,
            effects: m.effects,
        })
    }
}

impl CompiledWorkflow {
    /// Fails an execution from outside the graph — its actor kept crashing
    /// and the supervisor gave up. Like any failure it drops the execution's
    /// wait, timers and subscriptions, and can be retried from its node.
    pub fn fail_from_outside(
        &self,
        snapshot: &Snapshot,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Transition, Error> {
        let snap = snapshot.clone().upgrade()?;
        if snap.status.is_terminal() {
            return Err(Error::Finished {
                status: snap.status.as_str(),
            });
        }
        let mut m = Machine {
            wf: self,
            snap,
            now,
            journal: Vec::with_capacity(1),
            effects: Vec::with_capacity(2),
            entered: 0,
        };
        m.snap.seq += 1;
        m.snap.updated_at = now;
        let node = m.snap.current.clone();
        m.fail(node, reason.to_owned());
        Ok(Transition {
            snapshot: m.snap,
            journal: m.journal,
            effects: m.effects,
        })
    }
}

/// Refuses inputs that make no sense for the execution's status, before
/// anything changes. [`CompiledWorkflow::step`] applies the same check; the
/// API calls it first so an operator's mistake (pausing a finished
/// execution) is answered at once instead of being queued and refused later.
pub fn check(snap: &Snapshot, input: &Input) -> Result<(), Error> {
    let status = snap.status;
    match input {
        Input::Start if status != Status::Pending => Err(Error::AlreadyStarted),
        Input::Start => Ok(()),
        Input::Cancel { .. } if status.is_terminal() => Err(Error::Finished {
            status: status.as_str(),
        }),
        Input::Cancel { .. } => Ok(()),
        _ if status == Status::Pending => Err(Error::NotStarted),
        Input::Pause { .. } | Input::Resume if status.is_terminal() => Err(Error::Finished {
            status: status.as_str(),
        }),
        Input::Pause { .. } if snap.pause.is_some() => Err(Error::AlreadyPaused),
        Input::Resume => match &snap.pause {
            None => Err(Error::NotPaused),
            Some(Pause::ActionFailed { node, .. }) => {
                Err(Error::PausedOnFailure { node: node.clone() })
            }
            Some(Pause::Operator { .. }) => Ok(()),
        },
        Input::Retry => match (&snap.pause, status, &snap.error) {
            (Some(Pause::ActionFailed { .. }), _, _) => Ok(()),
            (_, Status::Failed, Some(ExecutionError { node: Some(_), .. })) => Ok(()),
            _ => Err(Error::NotRetryable),
        },
        _ => Ok(()),
    }
}

impl<'w> Machine<'w> {
    pub(crate) fn journal(&mut self, event: JournalEvent) {
        self.journal.push(JournalEntry {
            seq: self.snap.seq,
            at: self.now,
            event,
        });
    }

    pub(crate) fn effect(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    /// A timer id unique within the execution: node, purpose and step.
    pub(crate) fn timer_id(&self, node: &NodeId, purpose: &str) -> TimerId {
        TimerId::new(format!("{node}:{purpose}:{}", self.snap.seq))
    }

    pub(crate) fn schedule_timer(&mut self, timer: TimerId, at: DateTime<Utc>) {
        self.effect(Effect::ScheduleTimer { timer, at });
    }

    fn apply(&mut self, input: Input) {
        match input {
            Input::Start => {
                self.snap.started_at = Some(self.now);
                self.snap.status = Status::Running;
                let who = self
                    .snap
                    .subject
                    .as_deref()
                    .unwrap_or(self.snap.execution_id.as_str());
                if self.wf.held_out(who) {
                    // The holdout: counted, and ended at entry (no message,
                    // no call, no branch), to compare the others against.
                    self.journal(JournalEvent::HeldOut);
                    let outcome = Some(HOLDOUT_OUTCOME.to_owned());
                    self.snap.outcome = outcome.clone();
                    self.journal(JournalEvent::Completed {
                        outcome: outcome.clone(),
                    });
                    self.finish(Status::Completed);
                    self.effect(Effect::Complete { outcome });
                    return;
                }
                self.subscribe_exit_criteria();
                self.run(self.wf.start);
            }
            Input::Pause { reason } => {
                let text = reason
                    .clone()
                    .unwrap_or_else(|| "paused by an operator".into());
                self.snap.pause = Some(Pause::Operator { reason });
                self.snap.status = Status::Paused;
                self.journal(JournalEvent::Paused {
                    reason: text.clone(),
                });
                self.effect(Effect::Pause { reason: text });
            }
            Input::Resume => {
                self.snap.pause = None;
                self.snap.status = match self.snap.wait {
                    Some(Wait::Action { .. }) => Status::Running,
                    _ => Status::Waiting,
                };
                self.journal(JournalEvent::Resumed);
                let deferred = std::mem::take(&mut self.snap.deferred);
                let mut rest = deferred.into_iter();
                for input in rest.by_ref() {
                    self.journal(JournalEvent::InputReceived {
                        input: input.clone(),
                    });
                    self.apply(input);
                    if self.snap.status == Status::Paused || self.snap.status.is_terminal() {
                        break;
                    }
                }
                if self.snap.status == Status::Paused {
                    self.snap.deferred.extend(rest);
                }
            }
            Input::Cancel { reason } => {
                self.journal(JournalEvent::Cancelled {
                    reason: reason.clone(),
                });
                self.finish(Status::Cancelled);
                self.effect(Effect::Cancel { reason });
            }
            Input::Retry => self.retry(),
            Input::Event(event) => self.on_event(event),
            Input::TimerFired { timer } => self.on_timer(timer),
            Input::ActionResult {
                node,
                attempt,
                outcome,
            } => {
                if self.snap.status.is_terminal() {
                    return self.ignore("the execution has finished");
                }
                if self.deferred_while_paused(|| Input::ActionResult {
                    node: node.clone(),
                    attempt,
                    outcome: outcome.clone(),
                }) {
                    return;
                }
                let Some(Wait::Action {
                    node: waiting,
                    attempt: want,
                    try_number,
                }) = &self.snap.wait
                else {
                    return self.ignore(format!(
                        "no action is in flight (result for {node} attempt {attempt})"
                    ));
                };
                if *waiting != node || *want != attempt {
                    return self.ignore(format!(
                        "stale result for {node} attempt {attempt} (waiting for {waiting} attempt {want})"
                    ));
                }
                let try_number = *try_number;
                let Some((idx, compiled)) = self.node(&node) else {
                    return;
                };
                let CompiledKind::Action(c) = &compiled.kind else {
                    return self.fail(
                        Some(node),
                        "the snapshot waits for an action at a node that is not one".into(),
                    );
                };
                let flow =
                    nodes::action::on_result(self, compiled, c, attempt, try_number, outcome);
                self.resume_flow(idx, flow);
            }
        }
    }

    /// Defers the input if an operator paused the execution.
    fn deferred_while_paused(&mut self, input: impl FnOnce() -> Input) -> bool {
        if matches!(self.snap.pause, Some(Pause::Operator { .. })) {
            let input = input();
            self.journal(JournalEvent::InputDeferred {
                input_kind: input.kind().to_owned(),
            });
            self.snap.deferred.push(input);
            return true;
        }
        false
    }

    fn ignore(&mut self, reason: impl Into<String>) {
        self.journal(JournalEvent::InputIgnored {
            reason: reason.into(),
        });
    }

    /// Looks up a node the snapshot names; a node this version lacks fails
    /// the execution.
    fn node(&mut self, id: &NodeId) -> Option<(usize, &'w CompiledNode)> {
        match self.wf.node_index(id.as_str()) {
            Some(i) => Some((i, &self.wf.nodes[i])),
            None => {
                self.fail(Some(id.clone()), Error::UnknownNode(id.clone()).to_string());
                None
            }
        }
    }

    fn on_timer(&mut self, timer: TimerId) {
        if self.snap.status.is_terminal() {
            return self.ignore(format!("timer {timer} fired after the execution finished"));
        }
        if self.deferred_while_paused(|| Input::TimerFired {
            timer: timer.clone(),
        }) {
            return;
        }
        let Some(wait) = self.snap.wait.clone() else {
            return self.ignore(format!("timer {timer} fired but nothing waits for it"));
        };
        if wait.timer() != Some(&timer) {
            return self.ignore(format!("stale timer {timer}"));
        }
        let Some((idx, node)) = self.node(wait.node()) else {
            return;
        };
        let flow = match (&wait, &node.kind) {
            (Wait::Delay { .. }, CompiledKind::Delay(_)) => Ok(nodes::delay::on_timer(self, node)),
            (Wait::Event { .. }, CompiledKind::WaitForEvent(c)) => {
                Ok(nodes::wait_for_event::on_timeout(self, node, c))
            }
            (
                Wait::RetryBackoff { try_number, .. } | Wait::QuietHours { try_number, .. },
                CompiledKind::Action(c),
            ) => {
                self.snap.wait = None;
                nodes::action::attempt_or_hold(self, node, c, *try_number)
            }
            _ => Err(format!(
                "the snapshot's wait does not fit node {} ({})",
                node.id, node.type_name
            )),
        };
        self.resume_flow(idx, flow);
    }

    fn on_event(&mut self, event: EventInput) {
        if self.snap.status.is_terminal() {
            return self.ignore(format!(
                "event {:?} arrived after the execution finished",
                event.name
            ));
        }
        if self.exit_criteria_met(&event) {
            return;
        }
        if self.deferred_while_paused(|| Input::Event(event.clone())) {
            return;
        }
        let Some(Wait::Event { node, .. }) = &self.snap.wait else {
            return self.ignore(format!("event {:?}: nothing waits for it", event.name));
        };
        let node = node.clone();
        let Some((idx, compiled)) = self.node(&node) else {
            return;
        };
        let CompiledKind::WaitForEvent(c) = &compiled.kind else {
            return self.fail(
                Some(node),
                "the snapshot waits for an event at a node that is not a wait_for_event".into(),
            );
        };
        match nodes::wait_for_event::on_event(self, compiled, c, &event) {
            Ok(Some(flow)) => self.resume_flow(idx, Ok(flow)),
            Ok(None) => self.ignore(format!(
                "event {:?} does not match what {node} waits for",
                event.name
            )),
            Err(e) => self.fail(Some(node), e),
        }
    }

    /// Ends the execution if the event meets one of the journey's exit
    /// criteria (wherever the execution is, asleep or paused).
    fn exit_criteria_met(&mut self, event: &EventInput) -> bool {
        if let (Some(key), Some(subject)) = (&event.key, &self.snap.subject)
            && key != subject
        {
            return false;
        }
        let value =
            serde_json::json!({ "name": event.name, "key": event.key, "payload": event.payload });
        let mut met = None;
        for criterion in self
            .wf
            .settings
            .exit_criteria
            .iter()
            .filter(|c| c.event == event.name)
        {
            let holds = match &criterion.condition {
                None => Ok(true),
                Some(cond) => {
                    let mut scope = self.snap.scope(self.now);
                    scope.event = Some(&value);
                    cond.eval_bool(&scope)
                }
            };
            match holds {
                Ok(true) => {
                    met = Some(criterion.outcome.clone());
                    break;
                }
                Ok(false) => {}
                Err(e) => self.ignore(format!("exit criterion on {:?}: {e}", event.name)),
            }
        }
        let Some(outcome) = met else { return false };
        self.journal(JournalEvent::ExitCriteriaMet {
            event: event.name.clone(),
        });
        self.snap.pause = None;
        self.snap.outcome = Some(outcome.clone());
        self.journal(JournalEvent::Completed {
            outcome: Some(outcome.clone()),
        });
        self.finish(Status::Completed);
        self.effect(Effect::Complete {
            outcome: Some(outcome),
        });
        true
    }

    fn retry(&mut self) {
        let node = match (&self.snap.pause, &self.snap.error) {
            (Some(Pause::ActionFailed { node, .. }), _) => node.clone(),
            (
                _,
                Some(ExecutionError {
                    node: Some(node), ..
                }),
            ) => node.clone(),
            _ => return,
        };
        let was_finished = self.snap.status.is_terminal();
        // Inputs deferred before the failure belong to waits that no longer
        // exist: record and drop them rather than replay them out of order.
        for input in std::mem::take(&mut self.snap.deferred) {
            self.ignore(format!("deferred {} dropped by the retry", input.kind()));
        }
        self.snap.pause = None;
        self.snap.error = None;
        self.snap.finished_at = None;
        self.snap.outcome = None;
        self.snap.status = Status::Running;
        if was_finished {
            self.subscribe_exit_criteria();
        }
        self.journal(JournalEvent::Retried { node: node.clone() });
        if let Some((idx, _)) = self.node(&node) {
            self.run(idx);
        }
    }

    /// Continues after a node handled an input.
    fn resume_flow(&mut self, idx: usize, flow: Result<Flow<'w>, String>) {
        let node = &self.wf.nodes[idx];
        match flow {
            Ok(Flow::Next(branch)) => {
                if let Some(next) = self.follow(node, branch) {
                    self.run(next);
                }
            }
            Ok(Flow::Suspend) => {}
            Err(e) => self.fail(Some(node.id.clone()), e),
        }
    }

    /// Walks from node `idx` until the execution waits or ends.
    fn run(&mut self, mut idx: usize) {
        loop {
            self.entered += 1;
            let node = &self.wf.nodes[idx];
            if self.entered > MAX_NODES_PER_STEP {
                return self.fail(
                    Some(node.id.clone()),
                    format!("entered more than {MAX_NODES_PER_STEP} nodes in one step"),
                );
            }
            self.snap.current = Some(node.id.clone());
            self.journal(JournalEvent::NodeEntered {
                node: node.id.clone(),
                node_type: node.type_name.to_owned(),
            });
            let flow = match &node.kind {
                CompiledKind::Start => Ok(Flow::Next(None)),
                CompiledKind::Action(c) => nodes::action::enter(self, node, c),
                CompiledKind::Delay(c) => nodes::delay::enter(self, node, c),
                CompiledKind::WaitForEvent(c) => nodes::wait_for_event::enter(self, node, c),
                CompiledKind::Condition(c) => nodes::condition::enter(self, node, c),
                CompiledKind::Split(c) => nodes::split::enter(self, node, c),
                CompiledKind::Function(c) => nodes::function::enter(self, node, c),
                CompiledKind::Exit(outcome) => {
                    self.snap.outcome = outcome.clone();
                    self.journal(JournalEvent::Completed {
                        outcome: outcome.clone(),
                    });
                    self.finish(Status::Completed);
                    self.effect(Effect::Complete {
                        outcome: outcome.clone(),
                    });
                    Ok(Flow::Suspend)
                }
            };
            match flow {
                Ok(Flow::Next(branch)) => match self.follow(node, branch) {
                    Some(next) => idx = next,
                    None => return,
                },
                Ok(Flow::Suspend) => return,
                Err(e) => return self.fail(Some(node.id.clone()), e),
            }
        }
    }

    fn follow(&mut self, node: &'w CompiledNode, branch: Option<&str>) -> Option<usize> {
        match node.next(branch) {
            Some(next) => {
                self.journal(JournalEvent::BranchTaken {
                    node: node.id.clone(),
                    branch: branch.unwrap_or("next").to_owned(),
                    to: self.wf.nodes[next].id.clone(),
                });
                Some(next)
            }
            None => {
                self.fail(
                    Some(node.id.clone()),
                    format!("no edge for branch {:?}", branch.unwrap_or("next")),
                );
                None
            }
        }
    }

    fn fail(&mut self, node: Option<NodeId>, error: String) {
        self.journal(JournalEvent::Failed {
            node: node.clone(),
            error: error.clone(),
        });
        self.snap.error = Some(ExecutionError {
            node: node.clone(),
            message: error.clone(),
        });
        self.finish(Status::Failed);
        self.effect(Effect::Fail { node, error });
    }

    /// Ends the execution: drops its wait, its timers and its subscriptions.
    fn finish(&mut self, status: Status) {
        if let Some(wait) = self.snap.wait.take() {
            if let Some(timer) = wait.timer() {
                self.effect(Effect::CancelTimer {
                    timer: timer.clone(),
                });
            }
            if let Wait::Event { subscription, .. } = wait {
                self.effect(Effect::Unsubscribe { subscription });
            }
        }
        if self.snap.subject.is_some() {
            for subscription in exit_subscriptions(self.wf) {
                self.effect(Effect::Unsubscribe { subscription });
            }
        }
        self.snap.deferred.clear();
        self.snap.status = status;
        self.snap.finished_at = Some(self.now);
    }

    fn subscribe_exit_criteria(&mut self) {
        let Some(subject) = self.snap.subject.clone() else {
            return;
        };
        let mut seen: Vec<&str> = Vec::new();
        for criterion in &self.wf.settings.exit_criteria {
            if seen.contains(&criterion.event.as_str()) {
                continue;
            }
            seen.push(&criterion.event);
            self.effect(Effect::Subscribe {
                subscription: exit_subscription(&criterion.event),
                event: criterion.event.clone(),
                key: Some(subject.clone()),
            });
        }
    }
}

fn exit_subscription(event: &str) -> SubscriptionId {
    SubscriptionId::new(format!("exit:{event}"))
}

fn exit_subscriptions(wf: &CompiledWorkflow) -> Vec<SubscriptionId> {
    let mut ids: Vec<SubscriptionId> = wf
        .settings
        .exit_criteria
        .iter()
        .map(|c| exit_subscription(&c.event))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::nodes::testing::{Harness, compile};

    fn journey() -> serde_json::Value {
        json!({
            "settings": {"exit_criteria": [{"event": "unsubscribed"}]},
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "hello", "type": "action", "config": {"action": "http.request", "inputs": {"url": "http://x/"}}},
                {"id": "nap", "type": "delay", "config": {"duration": "1h"}},
                {"id": "end", "type": "exit", "config": {"outcome": "done"}},
            ],
            "edges": [
                {"from": "start", "to": "hello"},
                {"from": "hello", "to": "nap", "branch": "success"},
                {"from": "nap", "to": "end"},
            ]
        })
    }

    #[test]
    fn start_twice_and_inputs_before_start_are_refused_without_change() {
        let wf = compile(&journey());
        let mut h = Harness::new(&wf, "exe_test", json!({}), None);
        assert_eq!(h.try_step(Input::Resume), Err(Error::NotStarted));
        assert_eq!(h.snapshot.seq, 0);
        h.step(Input::Start);
        assert_eq!(h.try_step(Input::Start), Err(Error::AlreadyStarted));
        assert_eq!(h.try_step(Input::Resume), Err(Error::NotPaused));
        assert_eq!(h.try_step(Input::Retry), Err(Error::NotRetryable));
    }

    #[test]
    fn the_holdout_ends_at_entry_and_the_others_walk_the_journey() {
        let mut doc = journey();
        doc["key"] = json!("welcome");
        doc["settings"]["holdout"] = json!({"percent": 50});
        let wf = compile(&doc);
        let (mut held, mut walked) = (0, 0);
        for i in 0..40 {
            let subject = format!("u{i}");
            let h = Harness::start_with_subject(&wf, json!({}), &subject);
            let kinds: Vec<&str> = h.journal.iter().map(|j| j.event.kind()).collect();
            if wf.held_out(&subject) {
                held += 1;
                assert_eq!(h.snapshot.status, Status::Completed);
                assert_eq!(h.snapshot.outcome.as_deref(), Some(HOLDOUT_OUTCOME));
                assert_eq!(kinds, ["input_received", "held_out", "completed"]);
                // Nothing sent, nothing subscribed, nothing waited for.
                assert!(
                    h.effects
                        .iter()
                        .all(|e| matches!(e, Effect::Complete { .. } | Effect::Unsubscribe { .. })),
                    "{:?}",
                    h.effects
                );
            } else {
                walked += 1;
                assert_eq!(h.snapshot.status, Status::Running);
                assert!(!kinds.contains(&"held_out"));
                assert_eq!(h.last_dispatch().node.as_str(), "hello");
            }
        }
        assert!(held > 5 && walked > 5, "{held} held out, {walked} walked");
    }

    #[test]
    fn inputs_while_paused_are_deferred_and_replayed_on_resume() {
        let wf = compile(&journey());
        let mut h = Harness::start(&wf, json!({}));
        h.step(Input::Pause {
            reason: Some("investigating".into()),
        });
        assert_eq!(h.snapshot.status, Status::Paused);
        assert_eq!(
            h.try_step(Input::Pause { reason: None }),
            Err(Error::AlreadyPaused)
        );
        h.succeed("hello", 1, json!({}));
        assert_eq!(h.snapshot.deferred.len(), 1);
        assert_eq!(h.snapshot.status, Status::Paused);
        h.step(Input::Resume);
        assert_eq!(h.snapshot.status, Status::Waiting);
        assert!(h.snapshot.deferred.is_empty());
        assert!(matches!(h.snapshot.wait, Some(Wait::Delay { .. })));
        // A timer firing while paused waits for resume too.
        h.step(Input::Pause { reason: None });
        h.fire_due_timer();
        assert_eq!(h.snapshot.status, Status::Paused);
        h.step(Input::Resume);
        assert_eq!(h.snapshot.status, Status::Completed);
    }

    #[test]
    fn cancel_drops_timers_and_subscriptions_and_later_inputs_are_ignored() {
        let wf = compile(&journey());
        let mut h = Harness::start_with_subject(&wf, json!({}), "u1");
        h.succeed("hello", 1, json!({}));
        let timer = h
            .snapshot
            .wait
            .as_ref()
            .and_then(|w| w.timer().cloned())
            .expect("delay timer");
        h.effects.clear();
        h.step(Input::Cancel {
            reason: Some("user asked".into()),
        });
        assert_eq!(h.snapshot.status, Status::Cancelled);
        assert!(
            h.effects
                .iter()
                .any(|e| matches!(e, Effect::CancelTimer { .. }))
        );
        assert!(h.effects.iter().any(|e| matches!(e, Effect::Unsubscribe { subscription } if subscription.as_str() == "exit:unsubscribed")));
        assert!(matches!(
            h.try_step(Input::Cancel { reason: None }),
            Err(Error::Finished { .. })
        ));
        h.step(Input::TimerFired { timer });
        assert_eq!(h.snapshot.status, Status::Cancelled);
        assert_eq!(h.snapshot.wait, None);
        assert!(matches!(
            h.journal.last().map(|j| &j.event),
            Some(JournalEvent::InputIgnored { .. })
        ));
    }

    #[test]
    fn exit_criteria_end_a_sleeping_or_paused_execution() {
        let wf = compile(&journey());
        let mut h = Harness::start_with_subject(&wf, json!({}), "u1");
        assert!(h.effects.iter().any(|e| matches!(e, Effect::Subscribe { event, key: Some(k), .. } if event == "unsubscribed" && k == "u1")));
        h.succeed("hello", 1, json!({}));
        assert_eq!(h.snapshot.status, Status::Waiting);
        h.step(Input::Pause { reason: None });
        // Another subject's event does nothing.
        h.event("unsubscribed", Some("u2"), json!({}));
        assert_eq!(h.snapshot.status, Status::Paused);
        h.event("unsubscribed", Some("u1"), json!({}));
        assert_eq!(h.snapshot.status, Status::Completed);
        assert_eq!(h.snapshot.outcome.as_deref(), Some("exited:unsubscribed"));
        assert!(
            h.effects
                .iter()
                .any(|e| matches!(e, Effect::CancelTimer { .. }))
        );
    }

    #[test]
    fn a_failed_execution_can_be_retried_from_its_node() {
        let doc = json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "check", "type": "condition", "config": {"expression": "input.n > 1"}},
                {"id": "a", "type": "exit"},
                {"id": "b", "type": "exit"},
            ],
            "edges": [
                {"from": "start", "to": "check"},
                {"from": "check", "to": "a", "branch": "true"},
                {"from": "check", "to": "b", "branch": "false"},
            ]
        });
        let wf = compile(&doc);
        let mut h = Harness::start(&wf, json!({}));
        assert_eq!(h.snapshot.status, Status::Failed);
        assert!(
            h.effects
                .iter()
                .any(|e| matches!(e, Effect::Fail { node: Some(n), .. } if n.as_str() == "check"))
        );
        // Same data, same failure; but retry is accepted and re-runs the node.
        h.step(Input::Retry);
        assert_eq!(h.snapshot.status, Status::Failed);
        assert!(h.journal.iter().any(
            |j| matches!(&j.event, JournalEvent::Retried { node } if node.as_str() == "check")
        ));
    }

    #[test]
    fn the_journal_records_every_step_in_order() {
        let wf = compile(&journey());
        let mut h = Harness::start(&wf, json!({}));
        h.succeed("hello", 1, json!({"status": 200}));
        h.fire_due_timer();
        let kinds: Vec<String> = h
            .journal
            .iter()
            .map(|e| {
                serde_json::to_value(&e.event).expect("json")["type"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "input_received",
                "node_entered",
                "branch_taken",
                "node_entered",
                "action_dispatched",
                "input_received",
                "action_succeeded",
                "branch_taken",
                "node_entered",
                "delay_started",
                "input_received",
                "delay_elapsed",
                "branch_taken",
                "node_entered",
                "completed",
            ]
        );
        // Every entry survives a trip through JSON (the journal table).
        for entry in &h.journal {
            let back: JournalEntry =
                serde_json::from_value(serde_json::to_value(entry).expect("ser")).expect("de");
            assert_eq!(&back, entry);
        }
        let seqs: Vec<u64> = h.journal.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(h.snapshot.seq, 3);
    }

    #[test]
    fn failing_from_outside_drops_the_wait_and_can_be_retried() {
        let wf = compile(&journey());
        let mut h = Harness::start_with_subject(&wf, json!({}), "u1");
        h.succeed("hello", 1, json!({}));
        let t = wf
            .fail_from_outside(&h.snapshot, "the actor kept failing", h.now)
            .expect("fails");
        assert_eq!(t.snapshot.status, Status::Failed);
        assert_eq!(t.snapshot.seq, h.snapshot.seq + 1);
        assert!(
            t.effects
                .iter()
                .any(|e| matches!(e, Effect::CancelTimer { .. }))
        );
        assert!(
            t.effects
                .iter()
                .any(|e| matches!(e, Effect::Fail { node: Some(n), .. } if n.as_str() == "nap"))
        );
        assert!(matches!(
            wf.fail_from_outside(&t.snapshot, "again", h.now),
            Err(Error::Finished { .. })
        ));
        h.snapshot = t.snapshot;
        h.step(Input::Retry);
        assert_eq!(h.snapshot.status, Status::Waiting);
    }

    #[test]
    fn a_snapshot_from_a_newer_format_is_refused() {
        let wf = compile(&journey());
        let mut h = Harness::start(&wf, json!({}));
        h.snapshot.format = 99;
        assert!(matches!(
            h.try_step(Input::Resume),
            Err(Error::SnapshotFormat { found: 99, .. })
        ));
    }
}
