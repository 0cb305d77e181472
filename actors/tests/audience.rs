//! Sends respect the recipient, checked by the workers at send time: the
//! address read from the profile when the message goes, the suppression
//! list, preferences per category (transactional messages ignore them, never
//! the suppression list), and frequency caps held across two workers
//! sending for one person at once — over Kafka on PostgreSQL, with a node's
//! workers and a worker alone (`sojourn worker`) in the same group.

use std::time::Duration;

use serde_json::{Value, json};
use sojourn_actors::{Config, Engine, StartRequest};
use sojourn_persistence::prelude::*;
use sojourn_persistence::{DeliveryQuery, FrequencyCap, OnCap, ProfilePatch, Suppression};
use sojourn_runtime::{ExecutionId, Status, Workflow};
use sojourn_testkit::{PrivateKafka, Sink, pg_store, wait_for};

fn journey(key: &str, nap: Option<&str>) -> Workflow {
    let mut nodes = vec![json!({"id": "start", "type": "start"})];
    let mut edges = Vec::new();
    let mut from = "start";
    if let Some(d) = nap {
        nodes.push(json!({"id": "nap", "type": "delay", "config": {"duration": d}}));
        edges.push(json!({"from": "start", "to": "nap"}));
        from = "nap";
    }
    nodes.extend([
        json!({"id": "mail", "type": "action", "config": {"action": "email.send", "inputs": {
            "to": "subject", "subject": "News", "text": "Hello", "category": "{{ input.category }}"}}}),
        json!({"id": "sent", "type": "exit", "config": {"outcome": "sent"}}),
        json!({"id": "skipped", "type": "exit", "config": {"outcome": "skipped"}}),
        json!({"id": "failed", "type": "exit", "config": {"outcome": "failed"}}),
    ]);
    edges.extend([
        json!({"from": from, "to": "mail"}),
        json!({"from": "mail", "to": "sent", "branch": "success"}),
        json!({"from": "mail", "to": "skipped", "branch": "skipped"}),
        json!({"from": "mail", "to": "failed", "branch": "failure"}),
    ]);
    Workflow::from_value(json!({"key": key, "nodes": nodes, "edges": edges})).expect("workflow")
}

fn sms_journey() -> Workflow {
    Workflow::from_value(json!({
        "key": "texts",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "text", "type": "action", "config": {"action": "sms.send", "inputs": {"to": "subject", "body": "Hi"}}},
            {"id": "sent", "type": "exit", "config": {"outcome": "sent"}},
        ],
        "edges": [{"from": "start", "to": "text"}, {"from": "text", "to": "sent", "branch": "success"}]
    }))
    .expect("workflow")
}

fn config(node: &str, sink: &Sink, kafka: &PrivateKafka) -> Config {
    Config {
        node_id: node.into(),
        egress: sojourn_actors::egress::EgressPolicy::allowing_loopback(),
        channel_webhook: Some(format!("{}/messages", sink.url())),
        kafka_brokers: vec![kafka.brokers()],
        outbox_poll: Duration::from_millis(100),
        recovery_poll: Duration::from_millis(200),
        timer_poll: Duration::from_millis(100),
        ..Config::default()
    }
}

async fn start<S: Store>(
    engine: &Engine<S>,
    workflow: &str,
    subject: &str,
    category: &str,
) -> ExecutionId {
    engine
        .start_execution(StartRequest {
            namespace: None,
            workflow: workflow.into(),
            version: None,
            input: json!({"category": category}),
            subject: Some(subject.into()),
            timezone: None,
            idempotency_key: None,
        })
        .await
        .expect("start")
        .id
}

fn email(address: &str) -> ProfilePatch {
    ProfilePatch {
        email: Some(Some(address.into())),
        ..ProfilePatch::default()
    }
}

/// Where the provider was asked to send (the webhook stand-in's bodies).
fn sent_to(sink: &Sink) -> Vec<String> {
    sink.seen()
        .iter()
        .map(|s| {
            let body: Value = serde_json::from_slice(&s.body).expect("json");
            body["inputs"]["to"].as_str().expect("to").to_owned()
        })
        .collect()
}

async fn outcome<S: Store>(engine: &Engine<S>, id: &ExecutionId) -> (String, Value) {
    let rec = wait_for(engine, id, Status::Completed).await;
    (
        rec.snapshot.outcome.clone().unwrap_or_default(),
        rec.snapshot
            .nodes
            .get("mail")
            .cloned()
            .unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_suppressions_and_caps_hold_at_send_time_across_two_workers() {
    let kafka = PrivateKafka::start();
    let sink = Sink::start().await;
    let (store, _fresh) = pg_store().await;
    // A worker alone, beside the node's own: one group, two members.
    let stop = tokio_util::sync::CancellationToken::new();
    let alone = {
        let store = store.clone();
        let config = config("worker", &sink, &kafka);
        let stop = stop.clone();
        tokio::spawn(async move {
            sojourn_actors::workers::run_alone(store, &config, None, stop)
                .await
                .expect("worker")
        })
    };
    let engine = Engine::start(store.clone(), config("node", &sink, &kafka))
        .await
        .expect("engine");
    engine.deploy(&journey("news", None)).await.expect("deploy");
    engine
        .deploy(&journey("later", Some("2s")))
        .await
        .expect("deploy");
    engine.deploy(&sms_journey()).await.expect("deploy");
    let now = chrono::Utc::now();
    let mut bob = email("bob@x.org");
    bob.categories.insert("digest".into(), false);
    store
        .write_profiles(
            "default",
            &[
                ("ann".into(), email("ann@x.org")),
                ("bob".into(), bob),
                ("cy".into(), email("Cy <CY@x.org>")),
                ("eve".into(), email("old@x.org")),
                (
                    "fay".into(),
                    ProfilePatch {
                        phone: Some(Some("+33612345678".into())),
                        ..ProfilePatch::default()
                    },
                ),
            ],
            false,
            now,
        )
        .await
        .expect("profiles");
    store
        .add_suppressions(&[Suppression {
            namespace: "default".into(),
            channel: "email".into(),
            address: "cy@x.org".into(),
            reason: "complained".into(),
            detail: None,
            created_at: now,
        }])
        .await
        .expect("suppress");
    store
        .put_frequency_caps(
            "default",
            &[
                FrequencyCap {
                    channel: "email".into(),
                    category: "*".into(),
                    max_sends: 3,
                    window_seconds: 86_400,
                    on_cap: OnCap::Skip,
                },
                FrequencyCap {
                    channel: "sms".into(),
                    category: "*".into(),
                    max_sends: 1,
                    window_seconds: 3,
                    on_cap: OnCap::Defer,
                },
            ],
        )
        .await
        .expect("caps");

    // Ten marketing emails for one person at once, sent by two workers:
    // three go, seven take the skipped branch.
    let mut ann = Vec::new();
    for _ in 0..10 {
        ann.push(start(&engine, "news", "ann", "promo").await);
    }
    let mut outcomes = Vec::new();
    for id in &ann {
        outcomes.push(outcome(&engine, id).await);
    }
    let sent = outcomes.iter().filter(|(o, _)| o == "sent").count();
    assert_eq!(sent, 3, "{outcomes:?}");
    for (o, node) in &outcomes {
        if o == "skipped" {
            assert_eq!(node["status"], "capped", "{node}");
            assert!(
                node["skipped"]
                    .as_str()
                    .is_some_and(|s| s.contains("at most 3")),
                "{node}"
            );
        }
    }
    // Transactional messages are never capped.
    let receipt = start(&engine, "news", "ann", "transactional").await;
    assert_eq!(outcome(&engine, &receipt).await.0, "sent");

    // Preferences: bob turned "digest" off; a transactional message still goes.
    let digest = start(&engine, "news", "bob", "digest").await;
    let (o, node) = outcome(&engine, &digest).await;
    assert_eq!(
        (o.as_str(), &node["status"]),
        ("skipped", &json!("unsubscribed"))
    );
    let other = start(&engine, "news", "bob", "promo").await;
    assert_eq!(outcome(&engine, &other).await.0, "sent");
    // Suppressed: not even transactional.
    let cy = start(&engine, "news", "cy", "transactional").await;
    let (o, node) = outcome(&engine, &cy).await;
    assert_eq!(
        (o.as_str(), &node["status"]),
        ("skipped", &json!("suppressed"))
    );
    // No profile, no address.
    let dee = start(&engine, "news", "dee", "promo").await;
    let (o, node) = outcome(&engine, &dee).await;
    assert_eq!(
        (o.as_str(), &node["status"]),
        ("skipped", &json!("no_address"))
    );

    // The address is read when the message goes, not when the journey began.
    let eve = start(&engine, "later", "eve", "promo").await;
    store
        .write_profiles(
            "default",
            &[("eve".into(), email("new@x.org"))],
            false,
            chrono::Utc::now(),
        )
        .await
        .expect("moved");
    assert_eq!(outcome(&engine, &eve).await.0, "sent");

    let to = sent_to(&sink);
    assert_eq!(to.iter().filter(|t| *t == "ann@x.org").count(), 4, "{to:?}");
    assert_eq!(to.iter().filter(|t| *t == "bob@x.org").count(), 1, "{to:?}");
    assert!(
        !to.iter().any(|t| t.contains("cy") || t == "old@x.org"),
        "{to:?}"
    );
    assert!(to.contains(&"new@x.org".to_owned()), "{to:?}");

    // A capped SMS waits for the cap (a durable timer), then goes.
    let first = start(&engine, "texts", "fay", "promo").await;
    let second = start(&engine, "texts", "fay", "promo").await;
    wait_for(&engine, &first, Status::Completed).await;
    wait_for(&engine, &second, Status::Completed).await;
    let texts: Vec<std::time::Instant> = sink
        .seen()
        .iter()
        .filter(|s| serde_json::from_slice::<Value>(&s.body).expect("json")["channel"] == "sms")
        .map(|s| s.at)
        .collect();
    assert_eq!(texts.len(), 2);
    let apart = texts[1].duration_since(texts[0]);
    assert!(apart >= Duration::from_millis(2_500), "{apart:?}");

    // The delivery log says why each was not sent.
    let log = store
        .list_deliveries(&DeliveryQuery {
            namespace: "default".into(),
            limit: 100,
            ..DeliveryQuery::default()
        })
        .await
        .expect("deliveries");
    let count = |status: &str| log.iter().filter(|d| d.status == status).count();
    assert_eq!(count("capped"), 7);
    assert_eq!(count("unsubscribed"), 1);
    assert_eq!(count("suppressed"), 1);
    assert_eq!(count("no_address"), 1);
    assert!(count("deferred") >= 1);
    assert!(
        log.iter()
            .filter(|d| d.status == "capped")
            .all(|d| d.provider == "-" && d.recipient == "ann@x.org")
    );

    stop.cancel();
    engine.shutdown().await;
    alone.await.expect("worker stops");
}
