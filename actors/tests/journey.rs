//! End-to-end on one node, against both stores: a journey with action →
//! delay → condition → action runs to the end through real actors, a real
//! HTTP sink and a real database; it passivates while it sleeps and
//! survives a restart of the engine in the middle.

use std::time::Duration;

use serde_json::json;
use sojourn_actors::{Config, Engine, StartRequest};
use sojourn_persistence::prelude::*;
use sojourn_runtime::{ExecutionId, Status, Workflow};
use sojourn_testkit::{Sink, pg_store, sqlite_store, wait_for};

fn journey(base: &str) -> Workflow {
    Workflow::from_value(json!({
        "key": "reference",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "first", "type": "action", "config": {"action": "http.request",
                "inputs": {"url": format!("{base}/first"), "body": {"$expr": "input"}},
                "retry": {"max_attempts": 3, "initial_backoff": "100ms", "max_backoff": "200ms"}}},
            {"id": "nap", "type": "delay", "config": {"duration": "1s"}},
            {"id": "check", "type": "condition", "config": {"expression": "nodes.first.output.status == 200"}},
            {"id": "second", "type": "action", "config": {"action": "http.request",
                "inputs": {"url": format!("{base}/second")}}},
            {"id": "done", "type": "exit", "config": {"outcome": "done"}},
            {"id": "odd", "type": "exit", "config": {"outcome": "odd"}},
        ],
        "edges": [
            {"from": "start", "to": "first"},
            {"from": "first", "to": "nap", "branch": "success"},
            {"from": "nap", "to": "check"},
            {"from": "check", "to": "second", "branch": "true"},
            {"from": "check", "to": "odd", "branch": "false"},
            {"from": "second", "to": "done", "branch": "success"},
        ]
    }))
    .expect("workflow")
}

fn config() -> Config {
    Config {
        timer_poll: Duration::from_millis(100),
        outbox_poll: Duration::from_millis(100),
        recovery_poll: Duration::from_millis(500),
        egress: sojourn_actors::egress::EgressPolicy::allowing_loopback(),
        ..Config::default()
    }
}

async fn wait_for_node<S: Store>(
    engine: &Engine<S>,
    id: &ExecutionId,
    node: &str,
) -> sojourn_persistence::ExecutionRecord {
    for _ in 0..300 {
        if let Some(rec) = engine.execution(id).await.expect("load")
            && rec.snapshot.current.as_ref().map(|n| n.as_str()) == Some(node)
        {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("execution {id} never reached node {node}");
}

fn results_as_rows() -> Config {
    Config {
        results_in_memory: false,
        ..config()
    }
}

async fn runs_to_the_end_and_passivates<S: Store + Clone>(store: S, config: Config) {
    let sink = Sink::start().await;
    let base = sink.url();
    sink.fail_first(1);
    let engine = Engine::start(store.clone(), config).await.expect("engine");
    let (wf_id, version) = engine.deploy(&journey(&base)).await.expect("deploy");
    assert_eq!(version, 1);
    let created = engine
        .start_execution(StartRequest {
            workflow: "reference".into(),
            input: json!({"user": "ada"}),
            idempotency_key: Some("signup-1".into()),
            ..StartRequest::default()
        })
        .await
        .expect("start");
    let id = created.id;
    // The same idempotency key gives the same execution.
    let again = engine
        .start_execution(StartRequest {
            workflow: wf_id,
            idempotency_key: Some("signup-1".into()),
            ..StartRequest::default()
        })
        .await
        .expect("start");
    assert_eq!(again.id, id);

    // Asleep on the delay: no actor holds it.
    let rec = wait_for_node(&engine, &id, "nap").await;
    assert_eq!(rec.status, Status::Waiting);
    for _ in 0..100 {
        if engine.active_actors().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        engine.active_actors().await,
        0,
        "a sleeping execution holds no actor"
    );

    let rec = wait_for(&engine, &id, Status::Completed).await;
    assert_eq!(rec.snapshot.outcome.as_deref(), Some("done"));
    let seen: Vec<(String, String)> = sink
        .seen()
        .iter()
        .map(|s| (s.path.clone(), s.key().to_owned()))
        .collect();
    let expected = [
        ("/first".to_owned(), format!("{id}/first/1")),
        ("/first".to_owned(), format!("{id}/first/2")),
        ("/second".to_owned(), format!("{id}/second/1")),
    ];
    assert_eq!(seen, expected, "each attempt carries its own stable key");

    // The journal shows every step.
    let journal = engine.store().journal(&id, 0, 1000).await.expect("journal");
    let entered: Vec<String> = journal
        .iter()
        .filter_map(|j| match &j.entry.event {
            sojourn_runtime::JournalEvent::NodeEntered { node, .. } => Some(node.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        entered,
        ["start", "first", "nap", "check", "second", "done"]
    );
    let nodes = engine.store().node_executions(&id).await.expect("nodes");
    let summary: Vec<(&str, i32, &str, i32)> = nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.attempt, n.status.as_str(), n.sends))
        .collect();
    assert_eq!(
        summary,
        [
            ("first", 1, "failed", 1),
            ("first", 2, "succeeded", 1),
            ("second", 1, "succeeded", 1)
        ]
    );
    let stats = engine.stats().snapshot();
    assert!(
        stats.transactions >= 1 && stats.transitions >= 6,
        "{stats:?}"
    );
    engine.shutdown().await;
}

async fn survives_a_restart_in_the_middle<S: Store + Clone>(store: S, config: fn() -> Config) {
    let sink = Sink::start().await;
    let mut wf = journey(&sink.url());
    // A longer nap, so the engine stops while the execution sleeps.
    if let Some(node) = wf.nodes.iter_mut().find(|n| n.id.as_str() == "nap") {
        node.kind = sojourn_runtime::NodeKind::Delay(sojourn_runtime::nodes::DelayConfig {
            duration: Some("2s".into()),
            ..Default::default()
        });
    }
    let engine = Engine::start(store.clone(), config())
        .await
        .expect("engine");
    engine.deploy(&wf).await.expect("deploy");
    let id = engine
        .start_execution(StartRequest {
            workflow: "reference".into(),
            ..StartRequest::default()
        })
        .await
        .expect("start")
        .id;
    wait_for_node(&engine, &id, "nap").await;
    engine.shutdown().await;
    assert_eq!(sink.count(), 1);

    // A new engine on the same database carries on from the snapshot.
    let engine = Engine::start(store, config()).await.expect("engine");
    let rec = wait_for(&engine, &id, Status::Completed).await;
    assert_eq!(rec.snapshot.outcome.as_deref(), Some("done"));
    assert_eq!(
        sink.keys(),
        [format!("{id}/first/1"), format!("{id}/second/1")]
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_journey_runs_to_the_end_and_passivates() {
    let (store, fresh) = pg_store().await;
    runs_to_the_end_and_passivates(store.clone(), config()).await;
    fresh.cleanup(Some(&store)).await;
}

/// The same journey with every action result recorded as a row before it
/// is applied (`results_in_memory` off): the same journal, nothing sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_journey_with_results_as_rows_runs_to_the_end() {
    let (store, fresh) = pg_store().await;
    runs_to_the_end_and_passivates(store.clone(), results_as_rows()).await;
    fresh.cleanup(Some(&store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_journey_with_results_as_rows_runs_to_the_end() {
    let (store, fresh) = sqlite_store().await;
    runs_to_the_end_and_passivates(store, results_as_rows()).await;
    fresh.cleanup(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_journey_runs_to_the_end_and_passivates() {
    let (store, fresh) = sqlite_store().await;
    runs_to_the_end_and_passivates(store, config()).await;
    fresh.cleanup(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_journey_survives_a_restart() {
    let (store, fresh) = pg_store().await;
    survives_a_restart_in_the_middle(store.clone(), config).await;
    fresh.cleanup(Some(&store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_journey_with_results_as_rows_survives_a_restart() {
    let (store, fresh) = pg_store().await;
    survives_a_restart_in_the_middle(store.clone(), results_as_rows).await;
    fresh.cleanup(Some(&store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_journey_survives_a_restart() {
    let (store, fresh) = sqlite_store().await;
    survives_a_restart_in_the_middle(store, config).await;
    fresh.cleanup(None).await;
}

/// A node stops while many actions are in flight and their results arrive
/// during the stop: each is recorded once (by its actor, by the supervisor
/// or inline by the relay), and after a restart every execution finishes
/// with every action sent exactly once.
async fn stops_with_results_in_flight<S: Store + Clone>(store: S) {
    const N: usize = 40;
    let sink = Sink::start().await;
    sink.delay(Duration::from_millis(120));
    let engine = Engine::start(store.clone(), config())
        .await
        .expect("engine");
    engine.deploy(&journey(&sink.url())).await.expect("deploy");
    let mut ids = Vec::with_capacity(N);
    for _ in 0..N {
        let id = engine
            .start_execution(StartRequest {
                workflow: "reference".into(),
                ..StartRequest::default()
            })
            .await
            .expect("start")
            .id;
        ids.push(id);
        // Spread out, so results keep arriving through the stop.
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    engine.shutdown().await;
    sink.delay(Duration::ZERO);

    let engine = Engine::start(store, config()).await.expect("engine");
    for id in &ids {
        let rec = wait_for(&engine, id, Status::Completed).await;
        assert_eq!(rec.snapshot.outcome.as_deref(), Some("done"));
    }
    engine.shutdown().await;
    let mut keys = sink.keys();
    keys.sort();
    let sent = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), N * 2, "every action was sent");
    assert_eq!(sent, N * 2, "no action was sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stop_with_results_in_flight_sends_nothing_twice() {
    let (store, fresh) = pg_store().await;
    stops_with_results_in_flight(store.clone()).await;
    fresh.cleanup(Some(&store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stop_with_results_in_flight_sends_nothing_twice() {
    let (store, fresh) = sqlite_store().await;
    stops_with_results_in_flight(store).await;
    fresh.cleanup(None).await;
}
