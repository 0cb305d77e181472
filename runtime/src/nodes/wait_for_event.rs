//! `wait_for_event`: wait for a named event whose correlation key matches
//! (the subject by default) and whose condition holds; take `event` when it
//! comes, or `timeout` when the timeout passes first. The event becomes
//! `event.*` for the nodes after it.

use chrono::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::compile::{CompiledNode, Compiler};
use crate::expr::Expr;
use crate::ids::{NodeId, SubscriptionId};
use crate::interpreter::{Flow, Machine};
use crate::io::{Effect, EventInput};
use crate::journal::JournalEvent;
use crate::snapshot::{Status, Wait};
use crate::template::Templated;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForEventConfig {
    /// The event name, e.g. `"order_completed"`.
    pub event: String,
    /// A CEL condition over `event.payload` (and the other roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// How long to wait, e.g. `"2d"`; without it the node waits forever and
    /// has no `timeout` branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The correlation key events must carry; a template. Defaults to the
    /// execution's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) event: String,
    condition: Option<Expr>,
    pub(crate) timeout: Option<Duration>,
    /// Whether the document sets a timeout (even an invalid one): decides
    /// whether the node has a `timeout` branch.
    pub(crate) has_timeout: bool,
    key: Option<Templated>,
}

pub(crate) fn compile(
    config: &WaitForEventConfig,
    node: &NodeId,
    c: &mut Compiler<'_>,
) -> Compiled {
    if config.event.trim().is_empty() {
        c.error(node, "config.event", "must not be empty");
    }
    let condition = config
        .condition
        .as_deref()
        .and_then(|s| c.expr(node, "config.condition", s));
    let timeout = config.timeout.as_deref().and_then(|t| {
        let d = c.duration(node, "config.timeout", t)?;
        if d <= Duration::zero() {
            c.error(node, "config.timeout", "must be longer than zero");
            return None;
        }
        Some(d)
    });
    let key = config
        .key
        .as_ref()
        .map(|k| c.templated(node, "config.key", &Value::String(k.clone())));
    Compiled {
        event: config.event.clone(),
        condition,
        timeout,
        has_timeout: config.timeout.is_some(),
        key,
    }
}

pub(crate) fn enter<'w>(
    m: &mut Machine<'w>,
    node: &'w CompiledNode,
    c: &'w Compiled,
) -> Result<Flow<'w>, String> {
    let key = match &c.key {
        Some(t) => match t.render(&m.wf.templates, &m.snap.scope(m.now))? {
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        },
        None => m.snap.subject.clone(),
    };
    let subscription = SubscriptionId::new(format!("wait:{}:{}", node.id, m.snap.seq));
    m.effect(Effect::Subscribe {
        subscription: subscription.clone(),
        event: c.event.clone(),
        key: key.clone(),
    });
    let (timer, until) = match c.timeout {
        Some(d) => {
            let timer = m.timer_id(&node.id, "timeout");
            let until = m
                .now
                .checked_add_signed(d)
                .ok_or("the timeout ends beyond the last representable instant")?;
            m.schedule_timer(timer.clone(), until);
            (Some(timer), Some(until))
        }
        None => (None, None),
    };
    m.journal(JournalEvent::WaitingForEvent {
        node: node.id.clone(),
        event: c.event.clone(),
        key: key.clone(),
        until,
    });
    m.snap.wait = Some(Wait::Event {
        node: node.id.clone(),
        event: c.event.clone(),
        key,
        subscription,
        timer,
        until,
    });
    m.snap.status = Status::Waiting;
    Ok(Flow::Suspend)
}

/// An event arrived while this node waits. `Ok(None)` means it is not the
/// one (wrong name, key or condition) and the node keeps waiting.
pub(crate) fn on_event<'w>(
    m: &mut Machine<'w>,
    node: &'w CompiledNode,
    c: &'w Compiled,
    event: &EventInput,
) -> Result<Option<Flow<'w>>, String> {
    let Some(Wait::Event {
        key,
        subscription,
        timer,
        ..
    }) = &m.snap.wait
    else {
        return Ok(None);
    };
    if event.name != c.event {
        return Ok(None);
    }
    // An event sent to the execution directly carries no key and matches;
    // a keyed event matches only the key the node waits with (a node with
    // no key listens to direct delivery only, never to everyone's events).
    match (key, &event.key) {
        (Some(want), Some(got)) if want != got => return Ok(None),
        (None, Some(_)) => return Ok(None),
        _ => {}
    }
    let value = json!({ "name": event.name, "key": event.key, "payload": event.payload });
    if let Some(cond) = &c.condition {
        let mut scope = m.snap.scope(m.now);
        scope.event = Some(&value);
        // An event the condition cannot be evaluated on (a missing field)
        // does not match; it must not fail an execution that waits.
        if !cond.eval_bool(&scope).unwrap_or(false) {
            return Ok(None);
        }
    }
    let (subscription, timer) = (subscription.clone(), timer.clone());
    m.effect(Effect::Unsubscribe { subscription });
    if let Some(timer) = timer {
        m.effect(Effect::CancelTimer { timer });
    }
    m.snap.wait = None;
    m.snap.event = Some(value);
    m.journal(JournalEvent::EventMatched {
        node: node.id.clone(),
        event: c.event.clone(),
    });
    Ok(Some(Flow::Next(Some("event"))))
}

pub(crate) fn on_timeout<'w>(
    m: &mut Machine<'w>,
    node: &'w CompiledNode,
    c: &'w Compiled,
) -> Flow<'w> {
    if let Some(Wait::Event { subscription, .. }) = m.snap.wait.take() {
        m.effect(Effect::Unsubscribe { subscription });
    }
    m.journal(JournalEvent::EventTimedOut {
        node: node.id.clone(),
        event: c.event.clone(),
    });
    Flow::Next(Some("timeout"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Input;
    use crate::nodes::testing::{Harness, compile, errors_of};

    fn cart() -> Value {
        json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "wait", "type": "wait_for_event", "config": {
                    "event": "order_completed", "condition": "event.payload.total >= 10", "timeout": "1d"}},
                {"id": "bought", "type": "exit", "config": {"outcome": "bought"}},
                {"id": "gave_up", "type": "exit", "config": {"outcome": "gave_up"}},
            ],
            "edges": [
                {"from": "start", "to": "wait"},
                {"from": "wait", "to": "bought", "branch": "event"},
                {"from": "wait", "to": "gave_up", "branch": "timeout"},
            ]
        })
    }

    fn event(name: &str, key: Option<&str>, payload: Value) -> Input {
        Input::Event(EventInput {
            name: name.into(),
            key: key.map(Into::into),
            payload,
        })
    }

    #[test]
    fn a_matching_event_takes_the_event_branch_and_cleans_up() {
        let wf = compile(&cart());
        let mut h = Harness::start_with_subject(&wf, json!({}), "user-1");
        assert!(h.effects.iter().any(|e| matches!(e, Effect::Subscribe { event, key: Some(k), .. } if event == "order_completed" && k == "user-1")));
        // Wrong name, wrong key, failed condition: still waiting.
        h.step(event("page_viewed", Some("user-1"), json!({})));
        h.step(event(
            "order_completed",
            Some("user-2"),
            json!({"total": 50}),
        ));
        h.step(event(
            "order_completed",
            Some("user-1"),
            json!({"total": 5}),
        ));
        assert_eq!(h.snapshot.status, Status::Waiting);
        h.effects.clear();
        h.step(event(
            "order_completed",
            Some("user-1"),
            json!({"total": 50}),
        ));
        assert_eq!(h.snapshot.outcome.as_deref(), Some("bought"));
        assert_eq!(
            h.snapshot
                .event
                .as_ref()
                .map(|e| e["payload"]["total"].clone()),
            Some(json!(50))
        );
        assert!(
            h.effects
                .iter()
                .any(|e| matches!(e, Effect::Unsubscribe { .. }))
        );
        assert!(
            h.effects
                .iter()
                .any(|e| matches!(e, Effect::CancelTimer { .. }))
        );
    }

    #[test]
    fn without_a_key_only_direct_events_match_and_bad_payloads_do_not_fail() {
        let wf = compile(&cart());
        // No subject, no key: someone else's keyed event must not match.
        let mut h = Harness::start(&wf, json!({}));
        h.step(event(
            "order_completed",
            Some("user-9"),
            json!({"total": 50}),
        ));
        assert_eq!(h.snapshot.status, Status::Waiting);
        // A payload the condition cannot evaluate is a non-match.
        h.step(event("order_completed", None, json!({})));
        assert_eq!(h.snapshot.status, Status::Waiting);
        // Delivered directly (no key): matches.
        h.step(event("order_completed", None, json!({"total": 50})));
        assert_eq!(h.snapshot.outcome.as_deref(), Some("bought"));
    }

    #[test]
    fn the_timeout_takes_the_timeout_branch_and_late_events_are_ignored() {
        let wf = compile(&cart());
        let mut h = Harness::start_with_subject(&wf, json!({}), "user-1");
        h.fire_due_timer();
        assert_eq!(h.snapshot.outcome.as_deref(), Some("gave_up"));
        h.step(event(
            "order_completed",
            Some("user-1"),
            json!({"total": 50}),
        ));
        assert_eq!(h.snapshot.outcome.as_deref(), Some("gave_up"));
    }

    #[test]
    fn validation_requires_the_timeout_branch_only_with_a_timeout() {
        let mut doc = cart();
        doc["edges"].as_array_mut().expect("edges").pop();
        assert_eq!(errors_of(&doc), ["wait:edges", "gave_up:"]);
        let mut doc = cart();
        doc["nodes"][1]["config"] = json!({"event": "order_completed"});
        assert_eq!(errors_of(&doc), [":edges[2].branch", "gave_up:"]);
        let mut doc = cart();
        doc["nodes"][1]["config"] =
            json!({"event": " ", "timeout": "-", "condition": "event.payload. >"});
        assert_eq!(
            errors_of(&doc),
            [
                "wait:config.event",
                "wait:config.condition",
                "wait:config.timeout"
            ]
        );
    }
}
