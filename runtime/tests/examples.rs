//! The shipped examples validate and simulate to their expected timelines
//! (`examples/<name>.timeline.txt`). Set `UPDATE_EXAMPLES=1` to rewrite the
//! timelines after an intended change, then review the diff.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sojourn_runtime::simulate::{
    Limits, Script, Simulation, Stop, new_simulated_execution, simulate,
};
use sojourn_runtime::{CompiledWorkflow, Effect, Registry, Status, Workflow};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(examples_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn run(name: &str, events: Option<&str>, start: &str) -> (CompiledWorkflow, Simulation) {
    let workflow = Workflow::from_json(&read(&format!("{name}.json"))).expect("parses");
    let wf = CompiledWorkflow::compile(&workflow, &Registry::builtin()).expect("validates");
    let input: Value = serde_json::from_str(&read(&format!("{name}.input.json"))).expect("input");
    let script = events.map_or_else(Script::default, |f| {
        Script::from_json(&read(f)).expect("script")
    });
    let start: DateTime<Utc> = start.parse().expect("start");
    let snapshot = new_simulated_execution(&wf, input, None, None, start).expect("starts");
    let sim = simulate(&wf, snapshot, &script, Limits::default()).expect("simulates");
    (wf, sim)
}

fn check_timeline(name: &str, sim: &Simulation) {
    let path = examples_dir().join(format!("{name}.timeline.txt"));
    let text = sim.render_text();
    if std::env::var_os("UPDATE_EXAMPLES").is_some() {
        std::fs::write(&path, &text).expect("write timeline");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        text, expected,
        "timeline of {name} changed (UPDATE_EXAMPLES=1 rewrites it)"
    );
}

#[test]
fn welcome_series_holds_the_sms_for_quiet_hours_and_nudges_at_nine() {
    let (_, sim) = run("welcome-series", None, "2026-11-23T01:30:00Z");
    check_timeline("welcome-series", &sim);
    assert_eq!(sim.stop, Stop::Finished);
    assert_eq!(sim.snapshot.outcome.as_deref(), Some("nudged"));
    assert_eq!(sim.snapshot.subject.as_deref(), Some("u-42"));
    let sends: Vec<(&str, String)> = sim
        .dispatches
        .iter()
        .map(|d| (d.action.as_str(), d.inputs.to_string()))
        .collect();
    assert_eq!(sends.len(), 3);
    assert_eq!(sends[0].0, "email.send");
    assert!(sends[0].1.contains("Welcome aboard, Ada!"));
    // The SMS came due at 21:30 local, inside quiet hours: it went at 08:00.
    let sms_at = sim
        .timeline
        .iter()
        .find(|e| matches!(&e.event, sojourn_runtime::JournalEvent::ActionDispatched { action, .. } if action == "sms.send"))
        .map(|e| e.at)
        .expect("sms sent");
    assert_eq!(
        sms_at,
        "2026-11-24T13:00:00Z".parse::<DateTime<Utc>>().expect("ts")
    );
}

#[test]
fn welcome_series_ends_at_once_on_unsubscribe_while_asleep() {
    let workflow = Workflow::from_json(&read("welcome-series.json")).expect("parses");
    let wf = CompiledWorkflow::compile(&workflow, &Registry::builtin()).expect("validates");
    let input: Value = serde_json::from_str(&read("welcome-series.input.json")).expect("input");
    let script = Script::from_json(r#"[{"after": "3h", "name": "unsubscribed"}]"#).expect("script");
    let snapshot = new_simulated_execution(
        &wf,
        input,
        None,
        None,
        "2026-11-23T01:30:00Z".parse().expect("ts"),
    )
    .expect("starts");
    let sim = simulate(&wf, snapshot, &script, Limits::default()).expect("simulates");
    assert_eq!(sim.snapshot.status, Status::Completed);
    assert_eq!(sim.snapshot.outcome.as_deref(), Some("unsubscribed"));
    assert_eq!(sim.dispatches.len(), 1, "only the welcome email went out");
}

#[test]
fn abandoned_cart_ignores_other_carts_reminds_and_recovers() {
    let (_, sim) = run(
        "abandoned-cart",
        Some("abandoned-cart.events.json"),
        "2026-11-20T17:00:00Z",
    );
    check_timeline("abandoned-cart", &sim);
    assert_eq!(sim.snapshot.outcome.as_deref(), Some("recovered"));
    assert_eq!(sim.snapshot.vars["code"], "CART15-cart-991");
    let keys: Vec<&str> = sim
        .dispatches
        .iter()
        .map(|d| d.idempotency_key.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "exe_simulated/reminder/1",
            "exe_simulated/notify_crm/1",
            "exe_simulated/notify_crm/2"
        ]
    );
    assert_eq!(sim.dispatches[1].inputs["body"]["total"], 110.08);
}

#[test]
fn abandoned_cart_without_an_order_is_lost_after_the_second_wait() {
    let (_, sim) = run("abandoned-cart", None, "2026-11-20T17:00:00Z");
    assert_eq!(sim.snapshot.outcome.as_deref(), Some("lost"));
    let last = sim.timeline.last().map(|e| e.at).expect("timeline");
    assert_eq!(last - sim.started_at, chrono::Duration::hours(28));
}

#[test]
fn ab_test_assigns_a_variant_deterministically_and_reports_it() {
    let (wf, sim) = run("ab-test", None, "2026-11-23T09:00:00Z");
    check_timeline("ab-test", &sim);
    let variant = sim.snapshot.vars["variant"]
        .as_str()
        .expect("variant")
        .to_owned();
    let report = sim.dispatches.last().expect("report");
    assert_eq!(report.action, "http.request");
    assert_eq!(report.inputs["body"]["variant"], variant.as_str());
    // Across many executions, both variants are used about half the time.
    let input: Value = serde_json::from_str(&read("ab-test.input.json")).expect("input");
    let mut a = 0;
    for i in 0..2000 {
        let snap = wf
            .new_execution(
                sojourn_runtime::ExecutionId::new(format!("exe_{i}")),
                input.clone(),
                None,
                None,
                sim.started_at,
            )
            .expect("starts");
        let t = wf
            .step(&snap, sojourn_runtime::Input::Start, sim.started_at)
            .expect("steps");
        let Some(Effect::Dispatch(d)) = t.effects.iter().find(|e| matches!(e, Effect::Dispatch(_)))
        else {
            panic!("no dispatch")
        };
        if d.node.as_str() == "email_a" {
            a += 1;
        }
    }
    assert!((900..1100).contains(&a), "{a} of 2000 took variant a");
}
