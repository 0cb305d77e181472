//! Property tests: any valid generated workflow, driven by arbitrary inputs,
//! never panics, never loses its place, never reuses an idempotency key, is
//! deterministic, and round-trips its snapshot through serde. Acyclic ones
//! driven "naturally" (every action answered, every timer fired) always end.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};
use sojourn_runtime::{
    ActionOutcome, CompiledWorkflow, Effect, EventInput, ExecutionId, Input, NodeId, Registry,
    Snapshot, Status, TimerId, Transition, Wait, Workflow,
};

/// Draws numbers from a proptest-generated genome, deterministically.
struct Genes<'a> {
    genes: &'a [u32],
    at: usize,
}

impl Genes<'_> {
    fn next(&mut self, below: u32) -> u32 {
        let g = self
            .genes
            .get(self.at % self.genes.len().max(1))
            .copied()
            .unwrap_or(0);
        self.at += 1;
        if below == 0 {
            0
        } else {
            g.wrapping_add((self.at as u32).wrapping_mul(2_654_435_761)) % below
        }
    }
}

/// Builds a valid workflow: nodes n0..n{len-1} in a chain (the first branch
/// of each leads to the next, so all are reachable), other branches jump
/// forward at random, and with `loops` some jump back to an earlier delay or
/// wait node (a cycle that waits, which validation allows).
fn build(len: usize, genes: &[u32], loops: bool) -> Value {
    let mut g = Genes { genes, at: 0 };
    let mut nodes = vec![json!({"id": "start", "type": "start"})];
    let mut kinds = Vec::new();
    for i in 0..len {
        let id = format!("n{i}");
        let node: Value = match g.next(7) {
            0 => {
                let node = json!({"id": id, "type": "action", "config": {
                    "action": if g.next(2) == 0 { "http.request" } else { "email.send" },
                    "inputs": {"url": "http://sink/{{ execution.id }}", "to": "{{ subject }}", "subject": "s", "text": "{{ input.x }}"},
                    "retry": {"max_attempts": 1 + g.next(3), "initial_backoff": "1s", "max_backoff": "5s"}}});
                node
            }
            1 => {
                json!({"id": id, "type": "delay", "config": {"duration": format!("{}s", 1 + g.next(200_000))}})
            }
            2 => {
                let timeout = !loops || g.next(3) != 0;
                let mut config = json!({"event": format!("e{}", g.next(2)), "condition": "event.payload.x >= 0"});
                if timeout {
                    config["timeout"] = json!(format!("{}m", 1 + g.next(600)));
                }
                let node = json!({"id": id, "type": "wait_for_event", "config": config});
                node
            }
            3 => {
                json!({"id": id, "type": "condition", "config": {"expression": "input.x > 5 || size(vars) > 1"}})
            }
            4 => json!({"id": id, "type": "split", "config": {"variants": [
                    {"branch": "a", "percent": 25}, {"branch": "b", "percent": 75}]}}),
            5 => json!({"id": id, "type": "split", "config": {"rules": [
                    {"branch": "big", "expression": "input.x > 50"}]}}),
            _ => json!({"id": id, "type": "function", "config": {"assign": [
                    {"var": format!("v{i}"), "expression": "input.x + 1"}]}}),
        };
        kinds.push(node["type"].as_str().unwrap_or_default().to_owned());
        nodes.push(node);
    }
    nodes.push(json!({"id": "end", "type": "exit", "config": {"outcome": "done"}}));
    let mut edges = vec![json!({"from": "start", "to": "n0"})];
    for i in 0..len {
        let from = &nodes[i + 1];
        let branches: Vec<Option<&str>> = match from["type"].as_str() {
            Some("action") => {
                // Only some actions get a failure branch; the others pause.
                let mut b = vec![Some("success")];
                if g.next(2) == 0 {
                    b.push(Some("failure"));
                }
                b
            }
            Some("wait_for_event") if from["config"].get("timeout").is_some() => {
                vec![Some("event"), Some("timeout")]
            }
            Some("wait_for_event") => vec![Some("event")],
            Some("condition") => vec![Some("true"), Some("false")],
            Some("split") if from["config"].get("variants").is_some() => vec![Some("a"), Some("b")],
            Some("split") => vec![Some("big"), Some("default")],
            _ => vec![None],
        };
        for (k, b) in branches.into_iter().enumerate() {
            let to = if k == 0 {
                if i + 1 < len {
                    format!("n{}", i + 1)
                } else {
                    "end".to_owned()
                }
            } else {
                let waits: Vec<usize> = (0..=i)
                    .filter(|&j| kinds[j] == "delay" || kinds[j] == "wait_for_event")
                    .collect();
                if loops && !waits.is_empty() && g.next(3) == 0 {
                    format!("n{}", waits[g.next(waits.len() as u32) as usize])
                } else {
                    let j = i + 1 + g.next((len - i) as u32) as usize;
                    if j >= len {
                        "end".to_owned()
                    } else {
                        format!("n{j}")
                    }
                }
            };
            let mut edge = json!({"from": format!("n{i}"), "to": to});
            if let Some(b) = b {
                edge["branch"] = json!(b);
            }
            edges.push(edge);
        }
    }
    json!({"settings": {"exit_criteria": [{"event": "stop"}], "quiet_hours": {"start": "22:00", "end": "07:00"}},
           "nodes": nodes, "edges": edges})
}

fn compile(doc: &Value) -> CompiledWorkflow {
    let wf = Workflow::from_value(doc.clone()).unwrap_or_else(|e| panic!("parse: {e:#?}\n{doc:#}"));
    CompiledWorkflow::compile(&wf, &Registry::builtin())
        .unwrap_or_else(|e| panic!("validate: {e:#?}\n{doc:#}"))
}

/// Drives one execution, checking invariants after every step.
struct Driver<'w> {
    wf: &'w CompiledWorkflow,
    snap: Snapshot,
    now: DateTime<Utc>,
    timers: BTreeMap<TimerId, DateTime<Utc>>,
    in_flight: Vec<(NodeId, u32)>,
    keys: HashSet<String>,
    transitions: Vec<Transition>,
}

impl<'w> Driver<'w> {
    fn new(wf: &'w CompiledWorkflow, x: i64) -> Self {
        let now: DateTime<Utc> = "2026-03-08T06:00:00Z".parse().expect("ts");
        let snap = wf
            .new_execution(
                ExecutionId::new("exe_p"),
                json!({"x": x}),
                Some("u1".into()),
                Some("America/New_York"),
                now,
            )
            .expect("starts");
        Driver {
            wf,
            snap,
            now,
            timers: BTreeMap::new(),
            in_flight: Vec::new(),
            keys: HashSet::new(),
            transitions: Vec::new(),
        }
    }

    fn apply(&mut self, input: Input) {
        let before = self.snap.clone();
        match self.wf.step(&self.snap, input, self.now) {
            Err(_) => assert_eq!(self.snap, before, "a refused input changed the snapshot"),
            Ok(t) => {
                assert_eq!(t.snapshot.seq, before.seq + 1);
                for e in &t.effects {
                    match e {
                        Effect::Dispatch(d) => {
                            assert!(
                                self.keys.insert(d.idempotency_key.clone()),
                                "key {} reused",
                                d.idempotency_key
                            );
                            assert_eq!(
                                d.idempotency_key,
                                format!("exe_p/{}/{}", d.node, d.attempt)
                            );
                            self.in_flight.push((d.node.clone(), d.attempt));
                        }
                        Effect::ScheduleTimer { timer, at } => {
                            assert!(*at > self.now, "timer {timer} scheduled in the past");
                            assert!(
                                self.timers.insert(timer.clone(), *at).is_none(),
                                "timer id {timer} reused"
                            );
                        }
                        Effect::CancelTimer { timer } => {
                            self.timers.remove(timer);
                        }
                        _ => {}
                    }
                }
                for entry in &t.journal {
                    let back: sojourn_runtime::JournalEntry =
                        serde_json::from_value(serde_json::to_value(entry).expect("ser"))
                            .expect("journal entry round-trips");
                    assert_eq!(&back, entry);
                    let tag = serde_json::to_value(&entry.event).expect("ser")["type"]
                        .as_str()
                        .map(str::to_owned);
                    assert_eq!(
                        tag.as_deref(),
                        Some(entry.event.kind()),
                        "kind() matches the serde tag"
                    );
                }
                self.snap = t.snapshot.clone();
                self.check();
                self.transitions.push(t);
            }
        }
    }

    /// The execution knows where it is and what it waits for.
    fn check(&self) {
        let s = &self.snap;
        let round: Snapshot =
            serde_json::from_value(serde_json::to_value(s).expect("ser")).expect("de");
        assert_eq!(&round, s, "snapshot does not round-trip through serde");
        let type_of = |n: &NodeId| self.wf.node_by_id(n.as_str()).map(|n| n.type_name());
        if s.status.is_terminal() {
            assert!(
                s.wait.is_none() && s.finished_at.is_some() && s.deferred.is_empty(),
                "{s:#?}"
            );
            return;
        }
        match (&s.status, &s.wait) {
            (Status::Running, Some(Wait::Action { node, .. })) => {
                assert_eq!(type_of(node), Some("action"))
            }
            (Status::Waiting, Some(w)) => {
                let expected = match w {
                    Wait::Delay { .. } => "delay",
                    Wait::Event { .. } => "wait_for_event",
                    Wait::RetryBackoff { .. } | Wait::QuietHours { .. } => "action",
                    Wait::Action { .. } => panic!("waiting status with an action in flight"),
                };
                assert_eq!(type_of(w.node()), Some(expected));
                if let Some(timer) = w.timer() {
                    assert!(
                        self.timers.contains_key(timer),
                        "waits on timer {timer} that is not pending"
                    );
                }
            }
            (Status::Paused, _) => assert!(s.pause.is_some()),
            other => panic!("lost its place: {other:?}\n{s:#?}"),
        }
    }

    fn fire_earliest(&mut self) -> bool {
        let Some((timer, at)) = self
            .timers
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(t, a)| (t.clone(), *a))
        else {
            return false;
        };
        self.timers.remove(&timer);
        self.now = self.now.max(at);
        self.apply(Input::TimerFired { timer });
        true
    }
}

fn op_input(d: &mut Driver<'_>, op: u8, n: u32) -> Option<Input> {
    Some(match op % 12 {
        0 | 1 => {
            let (node, attempt) = d.in_flight.pop()?;
            Input::ActionResult {
                node,
                attempt,
                outcome: ActionOutcome::Success {
                    output: json!({"n": n}),
                },
            }
        }
        2 => {
            let (node, attempt) = d.in_flight.pop()?;
            Input::ActionResult {
                node,
                attempt,
                outcome: ActionOutcome::failure("boom", n.is_multiple_of(2)),
            }
        }
        3 | 4 => {
            d.fire_earliest();
            return None;
        }
        5 => Input::TimerFired {
            timer: TimerId::new(format!("bogus:{n}")),
        },
        6 | 7 => Input::Event(EventInput {
            name: format!("e{}", n % 2),
            key: match n % 3 {
                0 => Some("u1".into()),
                1 => Some("u2".into()),
                _ => None,
            },
            payload: json!({"x": (n % 20) as i64 - 5}),
        }),
        8 => Input::Pause { reason: None },
        9 => Input::Resume,
        10 => match n % 8 {
            0 => Input::Cancel { reason: None },
            1 => Input::Event(EventInput {
                name: "stop".into(),
                key: Some("u1".into()),
                payload: json!({}),
            }),
            _ => Input::Retry,
        },
        _ => Input::ActionResult {
            node: NodeId::new(format!("n{}", n % 8)),
            attempt: n % 4,
            outcome: ActionOutcome::Success {
                output: json!(null),
            },
        },
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_inputs_never_break_an_execution(
        len in 1usize..10,
        genes in prop::collection::vec(any::<u32>(), 1..64),
        loops in any::<bool>(),
        x in -10i64..100,
        ops in prop::collection::vec((any::<u8>(), any::<u32>()), 0..80),
    ) {
        let doc = build(len, &genes, loops);
        let wf = compile(&doc);
        let run = |ops: &[(u8, u32)]| {
            let mut d = Driver::new(&wf, x);
            d.apply(Input::Start);
            for &(op, n) in ops {
                d.now += Duration::seconds(i64::from(n % 7_200));
                if let Some(input) = op_input(&mut d, op, n) {
                    d.apply(input);
                }
            }
            (d.snap, d.transitions)
        };
        let (a, ta) = run(&ops);
        let (b, tb) = run(&ops);
        prop_assert_eq!(a, b, "not deterministic");
        prop_assert_eq!(ta, tb);
    }

    #[test]
    fn acyclic_journeys_driven_naturally_always_end(
        len in 1usize..12,
        genes in prop::collection::vec(any::<u32>(), 1..64),
        x in -10i64..100,
    ) {
        let wf = compile(&build(len, &genes, false));
        let mut d = Driver::new(&wf, x);
        d.apply(Input::Start);
        for _ in 0..200 {
            if d.snap.status.is_terminal() {
                break;
            }
            if let Some((node, attempt)) = d.in_flight.pop() {
                d.apply(Input::ActionResult { node, attempt, outcome: ActionOutcome::Success { output: json!({}) } });
            } else if !d.fire_earliest() {
                break;
            }
        }
        prop_assert!(d.snap.status.is_terminal(), "did not end: {:#?}", d.snap);
    }
}
