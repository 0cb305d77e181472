//! Channel messages leave through the bus to the channel workers, which
//! send them with the channel's provider (here the `webhook` stand-in, to a
//! local sink) and report each result to its execution: over Kafka (a
//! private tansu broker, restarted mid-run without losing a message) and
//! over the in-process queue of `sojourn dev`.

use std::time::Duration;

use serde_json::json;
use sojourn_actors::{Config, Engine, StartRequest};
use sojourn_persistence::Store;
use sojourn_runtime::{ExecutionId, Status, Workflow};
use sojourn_testkit::{PrivateKafka, Sink, pg_store, sqlite_store, wait_for};

fn welcome() -> Workflow {
    Workflow::from_value(json!({
        "key": "welcome",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "mail", "type": "action", "config": {"action": "email.send", "inputs": {
                "to": "{{ input.email }}", "subject": "Welcome", "text": "Hello {{ input.name }}"}}},
            {"id": "done", "type": "exit", "config": {"outcome": "sent"}},
        ],
        "edges": [{"from": "start", "to": "mail"}, {"from": "mail", "to": "done", "branch": "success"}]
    }))
    .expect("workflow")
}

fn config(sink: &Sink, kafka: Option<&PrivateKafka>) -> Config {
    Config {
        egress: sojourn_actors::egress::EgressPolicy::allowing_loopback(),
        channel_webhook: Some(format!("{}/messages", sink.url())),
        kafka_brokers: kafka.map(|k| vec![k.brokers()]).unwrap_or_default(),
        outbox_poll: Duration::from_millis(100),
        ..Config::default()
    }
}

async fn start_many<S: Store>(engine: &Engine<S>, from: usize, n: usize) -> Vec<ExecutionId> {
    let mut ids = Vec::new();
    for i in from..from + n {
        let started = engine
            .start_execution(StartRequest {
                namespace: None,
                workflow: "welcome".into(),
                version: None,
                input: json!({"email": format!("u{i}@example.com"), "name": format!("U{i}")}),
                subject: None,
                timezone: None,
                idempotency_key: None,
            })
            .await
            .expect("start");
        ids.push(started.id);
    }
    ids
}

/// Each message reached the provider once, with its attempt's key, and
/// its execution took the success branch.
async fn all_sent_once<S: Store>(engine: &Engine<S>, sink: &Sink, ids: &[ExecutionId]) {
    for id in ids {
        let rec = wait_for(engine, id, Status::Completed).await;
        assert_eq!(rec.snapshot.outcome.as_deref(), Some("sent"));
    }
    let seen = sink.seen();
    assert_eq!(seen.len(), ids.len(), "one provider call per message");
    let mut keys: Vec<&str> = seen.iter().map(|s| s.key()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), ids.len(), "each with its own key");
    for s in &seen {
        assert_eq!(s.path, "/messages");
        let body: serde_json::Value = serde_json::from_slice(&s.body).expect("json");
        assert_eq!(body["channel"], json!("email"));
        assert_eq!(body["inputs"]["subject"], json!("Welcome"));
        let to = body["inputs"]["to"].as_str().expect("to");
        let n = to.trim_start_matches('u').trim_end_matches("@example.com");
        assert_eq!(body["inputs"]["text"], json!(format!("Hello U{n}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_messages_go_through_kafka_to_the_workers_and_survive_a_broker_restart() {
    let mut kafka = PrivateKafka::start();
    for channel in ["email", "sms", "push", "chat"] {
        kafka.create_topic(&format!("sojourn.actions.{channel}"), 2);
    }
    let sink = Sink::start().await;
    let (store, fresh) = pg_store().await;
    let engine = Engine::start(store.clone(), config(&sink, Some(&kafka)))
        .await
        .expect("engine");
    engine.deploy(&welcome()).await.expect("deploy");
    let mut ids = start_many(&engine, 0, 10).await;
    all_sent_once(&engine, &sink, &ids).await;
    assert_eq!(engine.stats().snapshot().channel_messages_sent, 10);
    assert_eq!(engine.kafka_ready().await, Some(Ok(())));

    // The broker goes away: the journeys start, their messages wait, and
    // once it is back every one is sent, once.
    kafka.kill();
    let more = start_many(&engine, 10, 10).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        matches!(engine.kafka_ready().await, Some(Err(_))),
        "readiness says Kafka is away"
    );
    for id in &more {
        let rec = engine.execution(id).await.expect("load").expect("found");
        assert_ne!(rec.status, Status::Completed, "sent with no broker");
    }
    kafka.restart();
    ids.extend(more);
    all_sent_once(&engine, &sink, &ids).await;

    engine.shutdown().await;
    fresh.cleanup(Some(&store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_messages_go_through_the_in_process_queue_in_dev() {
    let sink = Sink::start().await;
    let (store, fresh) = sqlite_store().await;
    let engine = Engine::start(store, config(&sink, None))
        .await
        .expect("engine");
    engine.deploy(&welcome()).await.expect("deploy");
    let ids = start_many(&engine, 0, 10).await;
    all_sent_once(&engine, &sink, &ids).await;
    assert_eq!(engine.kafka_ready().await, None);
    engine.shutdown().await;
    fresh.cleanup(None).await;
}
