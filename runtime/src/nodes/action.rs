//! `action`: send something through a registry action (`http.request`,
//! `email.send`, …) with templated inputs, a retry policy and a timeout.
//!
//! The node dispatches an [`Effect::Dispatch`](crate::Effect) and waits for
//! its result. A retryable failure is tried again after an exponential
//! backoff with a cap and deterministic jitter; when tries run out the
//! `failure` branch is taken, or, if the node has none, the execution is
//! **paused for an operator** (never silently failed). Messaging actions
//! reached inside the journey's quiet hours wait until the window ends.

use chrono::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::compile::{CompiledNode, Compiler};
use crate::hash::stable_hash;
use crate::ids::NodeId;
use crate::interpreter::{Flow, Machine};
use crate::io::{ActionOutcome, Dispatch, Effect};
use crate::journal::JournalEvent;
use crate::registry::HTTP_METHODS;
use crate::snapshot::{Pause, Status, Wait};
use crate::template::Templated;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// The registry action type, e.g. `"email.send"`.
    pub action: String,
    /// The action's inputs. Strings with `{{ … }}` are templates; an object
    /// `{"$expr": "…"}` is a CEL expression.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub inputs: Map<String, Value>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// How long one try may take, e.g. `"10s"`. Defaults to the action's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Whether to hold this action during quiet hours. Defaults to true for
    /// messages to people (email, SMS, push, chat), false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respect_quiet_hours: Option<bool>,
}

/// How failed tries are retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1 = no retry).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The wait before the second try.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: String,
    /// The longest wait between tries.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: String,
    /// Each wait is this many times the one before.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_initial_backoff() -> String {
    "1s".into()
}
fn default_max_backoff() -> String {
    "5m".into()
}
fn default_multiplier() -> f64 {
    2.0
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            multiplier: default_multiplier(),
        }
    }
}

/// The validated form of an action node.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) action: String,
    inputs: Templated,
    pub(crate) max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    timeout_ms: u64,
    pub(crate) respect_quiet_hours: bool,
    /// Sends to a person: frequency caps apply.
    messaging: bool,
    /// A custom action: how it is sent.
    via: Option<Via>,
    /// A custom action: its name and the registry version it was compiled
    /// against.
    pub(crate) pin: Option<(String, i32)>,
}

pub(crate) fn compile(config: &ActionConfig, node: &NodeId, c: &mut Compiler<'_>) -> Compiled {
    let spec = c.registry.get(&config.action);
    if spec.is_none() {
        let message = if c.registry.is_disabled(&config.action) {
            format!(
                "action type {:?} is disabled in the registry (enable it, or use another)",
                config.action
            )
        } else {
            let known: Vec<&str> = c.registry.names().collect();
            format!(
                "unknown action type {:?} (known: {})",
                config.action,
                known.join(", ")
            )
        };
        c.error(node, "config.action", message);
    }
    // Inputs the node leaves out take the definition's defaults.
    let mut inputs = config.inputs.clone();
    if let Some(spec) = spec {
        for (k, v) in &spec.defaults {
            inputs.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let spec = spec.map(|s| {
        (
            s.name.clone(),
            s.channel,
            s.version,
            s.default_timeout_ms,
            s.run.clone(),
            if c.registry.lenient {
                Vec::new()
            } else {
                s.input_problems(&inputs)
            },
        )
    });
    let mut via = None;
    let mut pin = None;
    if let Some((name, _, version, _, run, problems)) = &spec {
        for (field, message) in problems {
            c.error(node, format!("config.inputs{field}"), message.clone());
        }
        if name == "http.request"
            && let Some(Value::String(method)) = inputs.get("method")
            && !crate::template::is_template(method)
            && !HTTP_METHODS.contains(&method.to_ascii_uppercase().as_str())
        {
            c.error(
                node,
                "config.inputs.method",
                format!(
                    "{method:?} is not an HTTP method ({})",
                    HTTP_METHODS.join(", ")
                ),
            );
        }
        if let Some(run) = run {
            if c.registry.is_disabled(run.via()) {
                c.error(
                    node,
                    "config.action",
                    format!(
                        "{name} is sent through {}, which is disabled in the registry",
                        run.via()
                    ),
                );
            }
            via = Some(c.run(node, run));
        }
        pin = version.map(|v| (name.clone(), v));
    }
    let inputs = c.templated(node, "config.inputs", &Value::Object(inputs));

    let retry = &config.retry;
    if !(1..=100).contains(&retry.max_attempts) {
        c.error(
            node,
            "config.retry.max_attempts",
            "must be between 1 and 100",
        );
    }
    if !(retry.multiplier.is_finite() && (1.0..=10.0).contains(&retry.multiplier)) {
        c.error(node, "config.retry.multiplier", "must be between 1 and 10");
    }
    let initial = c.duration(node, "config.retry.initial_backoff", &retry.initial_backoff);
    let max = c.duration(node, "config.retry.max_backoff", &retry.max_backoff);
    if let (Some(i), Some(m)) = (initial, max)
        && i > m
    {
        c.error(
            node,
            "config.retry.max_backoff",
            "must not be shorter than initial_backoff",
        );
    }
    let timeout_ms = match &config.timeout {
        Some(t) => match c.duration(node, "config.timeout", t) {
            Some(d) if d <= Duration::zero() => {
                c.error(node, "config.timeout", "must be longer than zero");
                0
            }
            Some(d) if d > Duration::hours(1) => {
                c.error(node, "config.timeout", "must be at most 1h");
                0
            }
            Some(d) => d.num_milliseconds().unsigned_abs(),
            None => 0,
        },
        None => spec.as_ref().map_or(30_000, |s| s.3),
    };
    let messaging = spec.as_ref().is_some_and(|s| s.1.is_messaging());
    Compiled {
        action: config.action.clone(),
        inputs,
        max_attempts: retry.max_attempts.max(1),
        initial_backoff: initial.unwrap_or(Duration::seconds(1)),
        max_backoff: max.unwrap_or(Duration::minutes(5)),
        multiplier: retry.multiplier,
        timeout_ms,
        respect_quiet_hours: config.respect_quiet_hours.unwrap_or(messaging),
        messaging,
        via,
        pin,
    }
}

/// How a custom action is sent: as `action`, with its definition's `run`
/// rendered over the node's inputs.
#[derive(Debug)]
pub(crate) struct Via {
    action: &'static str,
    template: Templated,
    /// Where the node's inputs go in the sent ones (`body`, `value`).
    inputs_into: Option<&'static str>,
}

impl Compiler<'_> {
    /// Compiles a custom action's `run` (checked when it was stored; what
    /// is wrong with it now is the node's `config.action`).
    fn run(&mut self, node: &NodeId, run: &crate::registry::Run) -> Via {
        let before = self.templates.set_roots(&crate::registry::RUN_ROOTS);
        let mut errors = Vec::new();
        let template = Templated::compile(
            &run.template(),
            "run",
            node.as_str(),
            &mut self.templates,
            &mut errors,
        );
        self.templates.set_roots(before);
        for (field, message) in errors {
            self.error(
                node,
                "config.action",
                format!("the action's {field}: {message}"),
            );
        }
        Via {
            action: run.via(),
            template,
            inputs_into: run.inputs_into(),
        }
    }
}

/// Entering the node starts a fresh series of tries.
pub(crate) fn enter<'w>(
    m: &mut Machine<'w>,
    node: &'w CompiledNode,
    c: &'w Compiled,
) -> Result<Flow<'w>, String> {
    attempt_or_hold(m, node, c, 1)
}

/// Sends try `try_number` now, or holds it until quiet hours end.
pub(crate) fn attempt_or_hold<'w>(
    m: &mut Machine<'w>,
    node: &'w CompiledNode,
    c: &'w Compiled,
    try_number: u32,
) -> Result<Flow<'w>, String> {
    if c.respect_quiet_hours
        && let Some(window) = m.wf.settings.quiet_hours
        && let Some(until) = window.end_if_inside(m.now, m.snap.timezone)
    {
        let timer = m.timer_id(&node.id, "quiet");
        m.schedule_timer(timer.clone(), until);
        m.journal(JournalEvent::QuietHoursDeferred {
            node: node.id.clone(),
            until,
        });
        m.snap.wait = Some(Wait::QuietHours {
            node: node.id.clone(),
            try_number,
            timer,
            until,
        });
        m.snap.status = Status::Waiting;
        return Ok(Flow::Suspend);
    }
    dispatch(m, node, c, try_number)
}

fn dispatch<'w>(
    m: &mut Machine<'w>,
    node: &'w CompiledNode,
    c: &'w Compiled,
    try_number: u32,
) -> Result<Flow<'w>, String> {
    let inputs = c.inputs.render(&m.wf.templates, &m.snap.scope(m.now))?;
    // A custom action: its definition's `run`, rendered over the inputs
    // before anything is recorded (a render that fails sends nothing).
    let run = match &c.via {
        None => None,
        Some(via) => {
            let context = minijinja::context! {
                inputs => minijinja::Value::from(minijinja::value::Serde(&inputs))
            };
            Some((via, via.template.render_in(&m.wf.templates, &context)?))
        }
    };
    let counter = m.snap.attempts.entry(node.id.clone()).or_insert(0);
    *counter += 1;
    let attempt = *counter;
    let idempotency_key = format!("{}/{}/{}", m.snap.execution_id, node.id, attempt);
    m.journal(JournalEvent::ActionDispatched {
        node: node.id.clone(),
        action: c.action.clone(),
        attempt,
        idempotency_key: idempotency_key.clone(),
        inputs: crate::secrets::redact_for_storage(&inputs).into_owned(),
    });
    // The node's inputs go in as the run's body or value, unless it says
    // otherwise.
    let inputs = match run {
        None => inputs,
        Some((via, mut sent)) => {
            if let (Some(key), Value::Object(map)) = (via.inputs_into, &mut sent) {
                map.insert(key.to_owned(), inputs);
            }
            sent
        }
    };
    m.effect(Effect::Dispatch(Dispatch {
        node: node.id.clone(),
        action: c.action.clone(),
        attempt,
        idempotency_key,
        inputs,
        timeout_ms: c.timeout_ms,
        frequency_caps: if c.messaging {
            m.wf.settings.frequency_caps.clone()
        } else {
            None
        },
        via: c.via.as_ref().map(|v| v.action.to_owned()),
    }));
    m.snap.wait = Some(Wait::Action {
        node: node.id.clone(),
        attempt,
        try_number,
    });
    m.snap.status = Status::Running;
    Ok(Flow::Suspend)
}

/// The result of the try the execution is waiting for.
pub(crate) fn on_result<'w>(
    m: &mut Machine<'w>,
    node: &'w CompiledNode,
    c: &'w Compiled,
    attempt: u32,
    try_number: u32,
    outcome: ActionOutcome,
) -> Result<Flow<'w>, String> {
    m.snap.wait = None;
    match outcome {
        ActionOutcome::Success { output } => {
            m.journal(JournalEvent::ActionSucceeded {
                node: node.id.clone(),
                attempt,
            });
            m.snap.nodes.insert(
                node.id.clone(),
                json!({ "output": output, "attempt": attempt }),
            );
            Ok(Flow::Next(Some("success")))
        }
        ActionOutcome::Skipped { reason, output } => {
            m.journal(JournalEvent::ActionSkipped {
                node: node.id.clone(),
                attempt,
                reason: reason.clone(),
            });
            let mut recorded = json!({ "skipped": reason, "attempt": attempt });
            if let (Value::Object(more), Some(into)) = (output, recorded.as_object_mut()) {
                for (k, v) in more {
                    into.entry(k).or_insert(v);
                }
            }
            m.snap.nodes.insert(node.id.clone(), recorded);
            if node.has_branch("skipped") {
                return Ok(Flow::Next(Some("skipped")));
            }
            Ok(Flow::Next(Some("success")))
        }
        ActionOutcome::Held { reason } => {
            m.journal(JournalEvent::ActionHeld {
                node: node.id.clone(),
                attempt,
                reason: reason.clone(),
            });
            // A retry by an operator (once the action is enabled again)
            // sends it anew; the failure branch is not for this.
            m.snap.pause = Some(Pause::ActionFailed {
                node: node.id.clone(),
                error: reason.clone(),
            });
            m.snap.status = Status::Paused;
            let reason = format!("node {}: {reason}", node.id);
            m.journal(JournalEvent::Paused {
                reason: reason.clone(),
            });
            m.effect(Effect::Pause { reason });
            Ok(Flow::Suspend)
        }
        ActionOutcome::Deferred { until, reason } => {
            m.journal(JournalEvent::ActionDeferred {
                node: node.id.clone(),
                attempt,
                until,
                reason,
            });
            // Never before now (a clock behind the worker's), never more
            // than a year on.
            let at = until.max(m.now).min(m.now + Duration::days(366));
            let timer = m.timer_id(&node.id, "retry");
            m.schedule_timer(timer.clone(), at);
            // The same try again: a deferral spends none of the node's.
            m.snap.wait = Some(Wait::RetryBackoff {
                node: node.id.clone(),
                try_number,
                timer,
                until: at,
            });
            m.snap.status = Status::Waiting;
            Ok(Flow::Suspend)
        }
        ActionOutcome::Failure {
            error,
            retryable,
            output,
            retry_after_ms,
        } => {
            m.journal(JournalEvent::ActionFailed {
                node: node.id.clone(),
                attempt,
                error: error.clone(),
                retryable,
            });
            if retryable && try_number < c.max_attempts {
                let wait = backoff(
                    c,
                    m.snap.execution_id.as_str(),
                    &node.id,
                    attempt,
                    try_number,
                );
                // A provider's `Retry-After` (at most a day) beats a
                // shorter backoff: sooner would only be refused again.
                let asked = retry_after_ms
                    .map(|ms| Duration::milliseconds(ms.min(MAX_RETRY_AFTER_MS) as i64))
                    .unwrap_or_else(Duration::zero);
                let wait = wait.max(asked);
                let at = m
                    .now
                    .checked_add_signed(wait)
                    .ok_or("the retry falls beyond the last representable instant")?;
                let timer = m.timer_id(&node.id, "retry");
                m.schedule_timer(timer.clone(), at);
                m.journal(JournalEvent::RetryScheduled {
                    node: node.id.clone(),
                    try_number: try_number + 1,
                    due: at,
                });
                m.snap.wait = Some(Wait::RetryBackoff {
                    node: node.id.clone(),
                    try_number: try_number + 1,
                    timer,
                    until: at,
                });
                m.snap.status = Status::Waiting;
                return Ok(Flow::Suspend);
            }
            let mut recorded = json!({ "error": error, "attempt": attempt });
            if let (Value::Object(more), Some(into)) = (output, recorded.as_object_mut()) {
                for (k, v) in more {
                    into.entry(k).or_insert(v);
                }
            }
            m.snap.nodes.insert(node.id.clone(), recorded);
            if node.has_branch("failure") {
                return Ok(Flow::Next(Some("failure")));
            }
            let reason = format!("action {} at node {} failed: {error}", c.action, node.id);
            m.snap.pause = Some(Pause::ActionFailed {
                node: node.id.clone(),
                error,
            });
            m.snap.status = Status::Paused;
            m.journal(JournalEvent::Paused {
                reason: reason.clone(),
            });
            m.effect(Effect::Pause { reason });
            Ok(Flow::Suspend)
        }
    }
}

/// The longest `Retry-After` a retry waits for (a day).
const MAX_RETRY_AFTER_MS: u64 = 86_400_000;

/// The wait before try `try_number + 1`, after try `try_number` failed:
/// `initial * multiplier^(try_number-1)`, capped at `max`, with "equal
/// jitter" (half fixed, half derived from the execution, node and attempt,
/// so a replay computes the same instant).
pub(crate) fn backoff(
    c: &Compiled,
    execution: &str,
    node: &NodeId,
    attempt: u32,
    try_number: u32,
) -> Duration {
    let initial = c.initial_backoff.num_milliseconds().max(0) as f64;
    let cap = c.max_backoff.num_milliseconds().max(0) as f64;
    let exp = i32::try_from(try_number.saturating_sub(1)).unwrap_or(i32::MAX);
    let base = (initial * c.multiplier.powi(exp)).min(cap).max(0.0) as i64;
    let half = base / 2;
    let jitter = if half > 0 {
        let h = stable_hash(&[
            execution.as_bytes(),
            node.as_str().as_bytes(),
            &attempt.to_le_bytes(),
        ]);
        (h % (half as u64 + 1)) as i64
    } else {
        0
    };
    Duration::milliseconds(base - half + jitter)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::CompiledWorkflow;
    use crate::nodes::testing::{Harness, compile, errors_of, linear, utc};
    use crate::{Input, Status};

    fn email(retry: Value) -> Value {
        json!({"id": "mail", "type": "action", "config": {
            "action": "email.send",
            "inputs": {"to": "{{ input.email }}", "subject": "Hi {{ input.name }}", "text": "Welcome"},
            "retry": retry,
        }})
    }

    #[test]
    fn dispatches_rendered_inputs_with_a_stable_key() {
        let wf = compile(&linear(json!({"type": "start"}), vec![email(json!({}))]));
        let mut h = Harness::start(&wf, json!({"email": "ada@example.com", "name": "Ada"}));
        let d = h.last_dispatch();
        assert_eq!(d.idempotency_key, "exe_test/mail/1");
        assert_eq!(d.inputs["to"], "ada@example.com");
        assert_eq!(d.inputs["subject"], "Hi Ada");
        assert_eq!(d.timeout_ms, 30_000);
        assert_eq!(h.snapshot.status, Status::Running);
        h.succeed("mail", 1, json!({"message_id": "m1"}));
        assert_eq!(h.snapshot.status, Status::Completed);
        assert_eq!(
            h.snapshot.nodes[&NodeId::from("mail")]["output"]["message_id"],
            "m1"
        );
    }

    #[test]
    fn retries_with_capped_deterministic_backoff_then_pauses_for_an_operator() {
        let wf = compile(&linear(
            json!({"type": "start"}),
            vec![email(
                json!({"max_attempts": 3, "initial_backoff": "10s", "max_backoff": "15s"}),
            )],
        ));
        let mut h = Harness::start(&wf, json!({"email": "a@b.c", "name": "A"}));
        h.fail("mail", 1, true);
        let first = h.snapshot.wait.clone().expect("waits for retry");
        let Wait::RetryBackoff {
            until,
            try_number: 2,
            ..
        } = first
        else {
            panic!("expected a retry wait, got {first:?}")
        };
        let wait = until - h.now;
        assert!(
            wait >= Duration::seconds(5) && wait <= Duration::seconds(10),
            "{wait}"
        );
        h.fire_due_timer();
        assert_eq!(h.last_dispatch().idempotency_key, "exe_test/mail/2");
        h.fail("mail", 2, true);
        let Some(Wait::RetryBackoff { until, .. }) = h.snapshot.wait.clone() else {
            panic!("expected a second retry")
        };
        // 10s * 2 = 20s, capped at 15s, with equal jitter: 7.5s ..= 15s.
        let wait = until - h.now;
        assert!(
            wait >= Duration::milliseconds(7_500) && wait <= Duration::seconds(15),
            "{wait}"
        );
        h.fire_due_timer();
        h.fail("mail", 3, true);
        assert_eq!(h.snapshot.status, Status::Paused);
        assert!(matches!(h.snapshot.pause, Some(Pause::ActionFailed { .. })));
        assert!(h.effects.iter().any(|e| matches!(e, Effect::Pause { .. })));

        // Resume is refused; retry starts a new series with a new key.
        assert!(h.try_step(Input::Resume).is_err());
        h.step(Input::Retry);
        assert_eq!(h.snapshot.status, Status::Running);
        assert_eq!(h.last_dispatch().idempotency_key, "exe_test/mail/4");
        h.succeed("mail", 4, json!({}));
        assert_eq!(h.snapshot.status, Status::Completed);
    }

    #[test]
    fn backoff_is_the_same_on_replay() {
        let wf = compile(&linear(json!({"type": "start"}), vec![email(json!({}))]));
        let a = Harness::start(&wf, json!({"email": "a", "name": "b"}));
        let crate::compile::CompiledKind::Action(c) = &wf.node_by_id("mail").expect("node").kind
        else {
            panic!("not an action")
        };
        let node = NodeId::from("mail");
        let x = backoff(c, "exe_1", &node, 1, 1);
        assert_eq!(x, backoff(c, "exe_1", &node, 1, 1));
        assert!(x >= Duration::milliseconds(500) && x <= Duration::seconds(1));
        drop(a);
    }

    #[test]
    fn non_retryable_failure_takes_the_failure_branch() {
        let doc = json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "call", "type": "action", "config": {"action": "http.request", "inputs": {"url": "http://x/"}}},
                {"id": "ok", "type": "exit", "config": {"outcome": "ok"}},
                {"id": "ko", "type": "exit", "config": {"outcome": "ko"}},
            ],
            "edges": [
                {"from": "start", "to": "call"},
                {"from": "call", "to": "ok", "branch": "success"},
                {"from": "call", "to": "ko", "branch": "failure"},
            ]
        });
        let wf = compile(&doc);
        let mut h = Harness::start(&wf, json!({}));
        h.fail("call", 1, false);
        assert_eq!(h.snapshot.status, Status::Completed);
        assert_eq!(h.snapshot.outcome.as_deref(), Some("ko"));
        assert!(h.snapshot.nodes[&NodeId::from("call")]["error"].is_string());
    }

    #[test]
    fn retry_after_is_honoured_and_the_failure_details_are_the_output() {
        let wf = compile(&linear(json!({"type": "start"}), vec![email(json!({}))]));
        let mut h = Harness::start(&wf, json!({"email": "a", "name": "b"}));
        let now = h.now;
        h.step(Input::ActionResult {
            node: NodeId::from("mail"),
            attempt: 1,
            outcome: ActionOutcome::Failure {
                error: "HTTP 429".into(),
                retryable: true,
                output: Value::Null,
                retry_after_ms: Some(120_000),
            },
        });
        let Some(Wait::RetryBackoff { until, .. }) = h.snapshot.wait.clone() else {
            panic!("{:?}", h.snapshot.wait)
        };
        // The node's own backoff is about a second; the provider asked two minutes.
        assert_eq!(until - now, Duration::minutes(2));

        let doc = json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "call", "type": "action", "config": {"action": "http.request", "inputs": {"url": "http://x/"}}},
                {"id": "ok", "type": "exit", "config": {"outcome": "ok"}},
                {"id": "ko", "type": "exit", "config": {"outcome": "ko"}},
            ],
            "edges": [
                {"from": "start", "to": "call"},
                {"from": "call", "to": "ok", "branch": "success"},
                {"from": "call", "to": "ko", "branch": "failure"},
            ]
        });
        let wf = compile(&doc);
        let mut h = Harness::start(&wf, json!({}));
        h.step(Input::ActionResult {
            node: NodeId::from("call"),
            attempt: 1,
            outcome: ActionOutcome::Failure {
                error: "invalid address".into(),
                retryable: false,
                output: json!({"class": "invalid_recipient", "error": "not this", "provider": "smtp"}),
                retry_after_ms: None,
            },
        });
        let out = &h.snapshot.nodes[&NodeId::from("call")];
        assert_eq!(out["class"], "invalid_recipient");
        assert_eq!(out["provider"], "smtp");
        assert_eq!(
            out["error"], "invalid address",
            "the error is the outcome's own"
        );
    }

    #[test]
    fn stale_and_duplicate_results_are_ignored() {
        let wf = compile(&linear(json!({"type": "start"}), vec![email(json!({}))]));
        let mut h = Harness::start(&wf, json!({"email": "a", "name": "b"}));
        h.step(Input::ActionResult {
            node: NodeId::from("mail"),
            attempt: 7,
            outcome: ActionOutcome::Success { output: json!({}) },
        });
        assert_eq!(h.snapshot.status, Status::Running);
        h.succeed("mail", 1, json!({}));
        let before = h.snapshot.clone();
        h.succeed("mail", 1, json!({}));
        assert_eq!(h.snapshot.status, before.status);
        assert_eq!(h.snapshot.outcome, before.outcome);
    }

    #[test]
    fn quiet_hours_hold_messages_but_not_http_calls() {
        let doc = json!({
            "settings": {"timezone": "Europe/Paris", "quiet_hours": {"start": "21:00", "end": "08:00"}},
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "hook", "type": "action", "config": {"action": "http.request", "inputs": {"url": "http://x/"}}},
                {"id": "mail", "type": "action", "config": {"action": "sms.send", "inputs": {"to": "+33600000000", "body": "hi"}}},
                {"id": "end", "type": "exit"},
            ],
            "edges": [
                {"from": "start", "to": "hook"},
                {"from": "hook", "to": "mail", "branch": "success"},
                {"from": "mail", "to": "end", "branch": "success"},
            ]
        });
        let wf = compile(&doc);
        // 23:00 in Paris (CEST).
        let mut h = Harness::start_at(&wf, json!({}), utc("2026-06-01T21:00:00Z"));
        assert_eq!(h.last_dispatch().node.as_str(), "hook");
        h.succeed("hook", 1, json!({}));
        let Some(Wait::QuietHours { until, .. }) = h.snapshot.wait.clone() else {
            panic!("expected quiet hours, got {:?}", h.snapshot.wait)
        };
        assert_eq!(until, utc("2026-06-02T06:00:00Z"));
        h.fire_due_timer();
        assert_eq!(h.last_dispatch().node.as_str(), "mail");
        assert_eq!(h.now, utc("2026-06-02T06:00:00Z"));
    }

    fn crm_registry(enabled: bool) -> crate::Registry {
        let def: crate::Definition = serde_json::from_value(json!({
            "kind": "action",
            "title": "Update a CRM contact",
            "inputs": {"type": "object", "required": ["id", "plan"],
                "properties": {"id": {"type": "string"}, "plan": {"enum": ["free", "pro"]}, "tier": {"type": "integer"}}},
            "defaults": {"tier": 1},
            "timeout": "5s",
            "run": {"http": {"method": "PATCH", "url": "https://crm.example.com/contacts/{{ inputs.id }}",
                "headers": {"Authorization": "Bearer {{ secrets.CRM_TOKEN }}"}}},
        }))
        .expect("definition");
        assert!(def.problems("crm.update_contact").is_empty());
        let mut r = crate::Registry::builtin();
        r.add("crm.update_contact", 4, &def).expect("adds");
        if !enabled {
            r.disable("crm.update_contact");
        }
        r
    }

    fn crm_workflow(inputs: Value) -> crate::Workflow {
        crate::Workflow::from_value(linear(
            json!({"type": "start"}),
            vec![json!({"id": "crm", "type": "action", "config": {"action": "crm.update_contact", "inputs": inputs}})],
        ))
        .expect("parses")
    }

    #[test]
    fn a_custom_action_is_sent_as_its_definition_says_and_pins_its_version() {
        let wf = crm_workflow(json!({"id": "{{ input.user }}", "plan": "pro"}));
        let wf = CompiledWorkflow::compile(&wf, &crm_registry(true)).expect("compiles");
        assert_eq!(
            wf.pins(),
            [("crm.update_contact".to_owned(), 4)].into_iter().collect()
        );
        let mut h = Harness::start(&wf, json!({"user": "u/1"}));
        let d = h.last_dispatch();
        assert_eq!(d.action, "crm.update_contact");
        assert_eq!(d.via.as_deref(), Some("http.request"));
        assert_eq!(d.sent_as(), "http.request");
        assert_eq!(d.timeout_ms, 5_000);
        assert_eq!(d.inputs["method"], "PATCH");
        assert_eq!(d.inputs["url"], "https://crm.example.com/contacts/u/1");
        // The secret is a reference, resolved by the sender.
        assert_eq!(
            d.inputs["headers"]["Authorization"],
            format!("Bearer {}", crate::secrets::marker("CRM_TOKEN"))
        );
        // No body in the definition: the inputs, defaults included, are it.
        assert_eq!(
            d.inputs["body"],
            json!({"id": "u/1", "plan": "pro", "tier": 1})
        );
        h.succeed("crm", 1, json!({"status": 200}));
        assert_eq!(h.snapshot.status, Status::Completed);
    }

    #[test]
    fn a_custom_actions_inputs_are_checked_against_its_schema() {
        let errors = |inputs: Value, enabled: bool| -> Vec<String> {
            match CompiledWorkflow::compile(&crm_workflow(inputs), &crm_registry(enabled)) {
                Ok(_) => Vec::new(),
                Err(e) => e
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect(),
            }
        };
        assert_eq!(
            errors(json!({"id": 7, "plan": "gold"}), true),
            [
                "config.inputs.id: 7 is not of type \"string\"",
                "config.inputs.plan: \"gold\" is not one of \"free\" or \"pro\"",
            ]
        );
        assert_eq!(
            errors(json!({"plan": "{{ input.plan }}"}), true),
            ["config.inputs.id: crm.update_contact needs input \"id\""]
        );
        assert!(
            errors(
                json!({"id": {"$expr": "input.id"}, "plan": "{{ input.plan }}"}),
                true
            )
            .is_empty()
        );
        let disabled = errors(json!({"id": "a", "plan": "pro"}), false);
        assert_eq!(disabled.len(), 1);
        assert!(
            disabled[0]
                .starts_with("config.action: action type \"crm.update_contact\" is disabled"),
            "{disabled:?}"
        );
    }

    #[test]
    fn a_version_is_run_as_published_and_a_custom_action_needs_its_carrier() {
        // Inputs a newer schema would refuse still compile to run.
        let wf = crm_workflow(json!({"id": 7, "plan": "gold"}));
        assert!(CompiledWorkflow::compile(&wf, &crm_registry(true)).is_err());
        assert!(CompiledWorkflow::compile(&wf, &crm_registry(true).to_run()).is_ok());
        // Disabling http.request disables what is sent through it.
        let mut r = crm_registry(true);
        r.disable("http.request");
        let Err(errors) =
            CompiledWorkflow::compile(&crm_workflow(json!({"id": "a", "plan": "pro"})), &r)
        else {
            panic!("compiled with its carrier disabled")
        };
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.contains("sent through http.request"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn a_held_action_pauses_the_execution_until_it_is_retried() {
        let wf = CompiledWorkflow::compile(
            &crm_workflow(json!({"id": "a", "plan": "pro"})),
            &crm_registry(true),
        )
        .expect("compiles");
        let mut h = Harness::start(&wf, json!({}));
        h.step(Input::ActionResult {
            node: NodeId::from("crm"),
            attempt: 1,
            outcome: ActionOutcome::Held {
                reason: "action crm.update_contact is disabled".into(),
            },
        });
        assert_eq!(h.snapshot.status, Status::Paused);
        assert!(
            matches!(&h.snapshot.pause, Some(Pause::ActionFailed { error, .. }) if error.contains("disabled"))
        );
        h.step(Input::Retry);
        assert_eq!(h.last_dispatch().attempt, 2);
        h.succeed("crm", 2, json!({}));
        assert_eq!(h.snapshot.status, Status::Completed);
    }

    #[test]
    fn validation_names_bad_fields() {
        let wf = linear(
            json!({"type": "start"}),
            vec![
                json!({"id": "a", "type": "action", "config": {"action": "fax.send"}}),
                json!({"id": "b", "type": "action", "config": {"action": "email.send", "inputs": {"to": "x"},
                    "retry": {"max_attempts": 0, "initial_backoff": "1h", "max_backoff": "1m", "multiplier": 0.5},
                    "timeout": "forever"}}),
                json!({"id": "c", "type": "action", "config": {"action": "http.request",
                    "inputs": {"url": "{{ input.url }}", "method": "FETCH", "body": {"$expr": "inptu.x"}}}}),
            ],
        );
        assert_eq!(
            errors_of(&wf),
            [
                "a:config.action",
                "b:config.inputs.subject",
                "b:config.inputs",
                "b:config.retry.max_attempts",
                "b:config.retry.multiplier",
                "b:config.retry.max_backoff",
                "b:config.timeout",
                "c:config.inputs.method",
                "c:config.inputs.body.$expr",
            ]
        );
    }
}
