//! Schedule triggers fired by the nodes' schedule runners: each instant
//! starts one execution across the cluster, a node killed mid-fire leaves
//! exactly one, missed instants follow the misfire policy, and pausing stops
//! the schedule on every node.

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use serde_json::{Value, json};
use sojourn_actors::Cluster;
use sojourn_actors::schedules::fire_key;
use sojourn_actors::{Config, Engine, StartRequest};
use sojourn_persistence::{Store, TriggerRecord, TriggerStore};
use sojourn_runtime::Workflow;
use sojourn_runtime::triggers::{Move, TriggerKind};
use sojourn_testkit::{PrivateRedis, executions_of, new_trigger, pg_store, sqlite_store};

fn workflow() -> Workflow {
    Workflow::from_value(json!({
        "key": "nightly",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "done", "type": "exit", "config": {"outcome": "done"}},
        ],
        "edges": [{"from": "start", "to": "done"}]
    }))
    .expect("workflow")
}

fn config(node: &str) -> Config {
    Config {
        node_id: node.into(),
        schedule_poll: Duration::from_millis(100),
        recovery_poll: Duration::from_millis(300),
        ..Config::default()
    }
}

async fn node<S: Store + Clone>(store: &S, redis: &PrivateRedis, name: &str) -> Engine<S> {
    let cfg = config(name);
    let cluster = Cluster::redis(&redis.url(), name, cfg.lease_ttl).expect("cluster");
    Engine::start_in_cluster(store.clone(), cfg, cluster)
        .await
        .expect("engine")
}

async fn schedule<S: Store>(
    store: &S,
    workflow_id: &str,
    config: Value,
    at: DateTime<Utc>,
) -> TriggerRecord {
    new_trigger(store, workflow_id, TriggerKind::Schedule, config, at).await
}

/// Every execution the schedule started: (idempotency key, the instant in
/// its input), by instant.
async fn fires<S: Store>(engine: &Engine<S>, workflow_id: &str) -> Vec<(String, String)> {
    let list = executions_of(engine.store(), workflow_id).await;
    let mut out = Vec::new();
    for e in list {
        let rec = engine.execution(&e.id).await.expect("load").expect("found");
        let at = rec.snapshot.input["trigger"]["scheduled_at"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        out.push((rec.idempotency_key.unwrap_or_default(), at));
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

fn key_and_instant(trigger: &str, at: DateTime<Utc>) -> (String, String) {
    (
        fire_key(trigger, at),
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// A node claimed a schedule ten minutes behind and died after starting its
/// first missed instant; another node then makes up every missed instant
/// (`misfire: all`), each exactly once, the dead node's included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_makes_up_missed_instants_once_each_after_another_died_mid_fire() {
    let (store, fresh) = pg_store().await;
    let redis = PrivateRedis::start();
    // Node a deploys and starts the dead node's execution; its runner looks
    // once at start (nothing is due) and not again during the test, so the
    // dead node's claim is not raced.
    let a = {
        let cfg = Config {
            schedule_poll: Duration::from_secs(600),
            ..config("node-a")
        };
        let cluster = Cluster::redis(&redis.url(), "node-a", cfg.lease_ttl).expect("cluster");
        Engine::start_in_cluster(store.clone(), cfg, cluster)
            .await
            .expect("engine")
    };
    let (wf, _) = a.deploy(&workflow()).await.expect("deploy");
    let now = Utc::now();
    let due = (now - chrono::Duration::minutes(10))
        .duration_trunc(chrono::Duration::minutes(1))
        .expect("trunc");
    let t = schedule(
        &store,
        &wf,
        json!({"cron": "* * * * *", "misfire": "all", "input": {"batch": 7}}),
        due - chrono::Duration::minutes(1),
    )
    .await;
    store
        .set_trigger_state(
            "default",
            &t.id,
            Move::Activate,
            Some(due),
            due - chrono::Duration::seconds(30),
        )
        .await
        .expect("activate")
        .expect("found");
    // The node that dies: it holds the claim and started the first instant.
    let held = store
        .claim_due_schedules("node-dead", now, now + chrono::Duration::seconds(2), 10)
        .await
        .expect("claim");
    assert_eq!(held.len(), 1);
    let first = a
        .start_execution(StartRequest {
            namespace: None,
            workflow: wf.clone(),
            version: None,
            input: json!({"batch": 7, "trigger": {"id": t.id, "kind": "schedule",
                "scheduled_at": key_and_instant(&t.id, due).1}}),
            subject: None,
            timezone: None,
            idempotency_key: Some(fire_key(&t.id, due)),
        })
        .await
        .expect("start");
    let b = node(&store, &redis, "node-b").await;

    let mut fired = None;
    for _ in 0..150 {
        let rec = store
            .get_trigger("default", &t.id)
            .await
            .expect("get")
            .expect("found");
        if rec.last_fired_at.is_some() {
            fired = Some(rec);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rec = fired.expect("the schedule fired within 15 s");
    let last = rec.last_fired_at.expect("fired");
    assert!(last >= now - chrono::Duration::minutes(1), "{rec:?}");
    assert_eq!(rec.next_fire_at, Some(last + chrono::Duration::minutes(1)));
    // Every minute from the first missed one to the latest fired (which a
    // minute turning meanwhile may have moved past `last`).
    let listed = fires(&a, &wf).await;
    let latest: DateTime<Utc> = listed.last().expect("fired").1.parse().expect("instant");
    assert!(latest >= last, "{latest} {last}");
    let mut expected = Vec::new();
    let mut at = due;
    while at <= latest {
        expected.push(key_and_instant(&t.id, at));
        at += chrono::Duration::minutes(1);
    }
    assert!(expected.len() >= 10, "{expected:?}");
    assert_eq!(listed, expected);
    // The dead node's execution is the one for its instant.
    let again = b
        .start_execution(StartRequest {
            namespace: None,
            workflow: wf.clone(),
            version: None,
            input: json!({}),
            subject: None,
            timezone: None,
            idempotency_key: Some(fire_key(&t.id, due)),
        })
        .await
        .expect("start");
    assert_eq!((&again.id, again.new), (&first.id, false));
    // The input is the trigger's, with the instant.
    let one = a.execution(&first.id).await.expect("load").expect("found");
    assert_eq!(one.snapshot.input["batch"], json!(7));

    a.shutdown().await;
    b.shutdown().await;
    fresh.cleanup(Some(&store)).await;
}

/// A schedule every second: its instants run once each, with no gap, then
/// pausing stops it on every node, and resuming fires from after the resume
/// (nothing made up).
async fn fires_every_second_then_stops_when_paused<S: Store + Clone>(nodes: &[Engine<S>]) {
    let store = nodes[0].store();
    let (wf, _) = nodes[0].deploy(&workflow()).await.expect("deploy");
    let now = Utc::now();
    let t = schedule(store, &wf, json!({"cron": "* * * * * *"}), now).await;
    let config = t.typed_config().expect("config");
    store
        .set_trigger_state(
            "default",
            &t.id,
            Move::Activate,
            Move::Activate.next_fire(&config, now),
            now,
        )
        .await
        .expect("activate")
        .expect("found");
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let paused_at = Utc::now();
    store
        .set_trigger_state("default", &t.id, Move::Pause, None, paused_at)
        .await
        .expect("pause")
        .expect("found");
    // A fire already under way when the pause landed may still finish.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let before = fires(&nodes[0], &wf).await;
    assert!(before.len() >= 2, "{before:?}");
    // Consecutive seconds: none missed, none twice.
    let first: DateTime<Utc> = before[0].1.parse().expect("instant");
    let expected: Vec<(String, String)> = (0..before.len())
        .map(|i| key_and_instant(&t.id, first + chrono::Duration::seconds(i as i64)))
        .collect();
    assert_eq!(before, expected);
    let last: DateTime<Utc> = before[before.len() - 1].1.parse().expect("instant");
    assert!(
        last <= paused_at + chrono::Duration::seconds(1),
        "{last} {paused_at}"
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        fires(&nodes[0], &wf).await,
        before,
        "a paused schedule fired"
    );

    let resumed_at = Utc::now();
    store
        .set_trigger_state(
            "default",
            &t.id,
            Move::Resume,
            Move::Resume.next_fire(&config, resumed_at),
            resumed_at,
        )
        .await
        .expect("resume")
        .expect("found");
    let mut after = before.clone();
    for _ in 0..50 {
        after = fires(&nodes[0], &wf).await;
        if after.len() > before.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(after.len() > before.len(), "resumed, it fires again");
    let resumed: DateTime<Utc> = after[before.len()].1.parse().expect("instant");
    assert!(
        resumed > resumed_at,
        "the seconds it was paused are not made up: {resumed} {resumed_at}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_fire_a_schedule_once_per_instant_and_both_stop_when_paused() {
    let (store, fresh) = pg_store().await;
    let redis = PrivateRedis::start();
    let nodes = [
        node(&store, &redis, "node-a").await,
        node(&store, &redis, "node-b").await,
    ];
    fires_every_second_then_stops_when_paused(&nodes).await;
    for n in &nodes {
        n.shutdown().await;
    }
    fresh.cleanup(Some(&store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_fires_a_schedule_once_per_instant_and_stops_when_paused() {
    let (store, fresh) = sqlite_store().await;
    let engine = Engine::start(store, config("dev")).await.expect("engine");
    let nodes = [engine];
    fires_every_second_then_stops_when_paused(&nodes).await;
    nodes[0].shutdown().await;
    fresh.cleanup(None).await;
}
