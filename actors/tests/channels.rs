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
    // The node creates the channel topics (tansu makes none on first use).
    let mut kafka = PrivateKafka::start();
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

    // Away again, and the node stops meanwhile: it stops promptly (the
    // publishes waiting for the broker give up), the messages stay in the
    // outbox, and the next node sends them once the broker is back.
    kafka.kill();
    let last = start_many(&engine, 20, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::time::timeout(Duration::from_secs(90), engine.shutdown())
        .await
        .expect("a node stops while Kafka is away");
    kafka.restart();
    let engine = Engine::start(store.clone(), config(&sink, Some(&kafka)))
        .await
        .expect("engine");
    ids.extend(last);
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

/// `kafka.publish` in `sojourn dev`: the record goes through the in-process
/// queue to the event trigger that reads its topic; a topic nothing reads,
/// or one of Sojourn's own, fails without retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publish_reaches_an_event_trigger_in_process() {
    use sojourn_persistence::TriggerStore;
    use sojourn_runtime::triggers::{Move, TriggerKind};
    let sink = Sink::start().await;
    let (store, fresh) = sqlite_store().await;
    let engine = Engine::start(
        store.clone(),
        Config {
            schedule_poll: Duration::from_millis(50),
            ..config(&sink, None)
        },
    )
    .await
    .expect("engine");
    let publisher = Workflow::from_value(json!({
        "key": "publisher",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "pub", "type": "action", "config": {"action": "kafka.publish", "inputs": {
                "topic": "{{ input.topic }}", "key": "{{ input.user }}",
                "value": {"user": "{{ input.user }}", "total": 12}}}},
            {"id": "done", "type": "exit", "config": {"outcome": "published"}},
            {"id": "failed", "type": "exit", "config": {"outcome": "failed"}},
        ],
        "edges": [
            {"from": "start", "to": "pub"},
            {"from": "pub", "to": "done", "branch": "success"},
            {"from": "pub", "to": "failed", "branch": "failure"},
        ]
    }))
    .expect("workflow");
    engine.deploy(&publisher).await.expect("deploy");
    let (listener, _) = engine.deploy(&welcome()).await.expect("deploy");
    let t = sojourn_testkit::new_trigger(
        &store,
        &listener,
        TriggerKind::Event,
        json!({"event": "order", "topic": "orders", "subject": "event.payload.user",
                "input": {"email": "x@example.com", "name": "X"}}),
        chrono::Utc::now(),
    )
    .await;
    store
        .set_trigger_state("default", &t.id, Move::Activate, None, chrono::Utc::now())
        .await
        .expect("activate")
        .expect("found");
    // The trigger's consumer joins within a poll.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = |topic: &str| {
        engine.start_execution(StartRequest {
            namespace: None,
            workflow: "publisher".into(),
            version: None,
            input: json!({"topic": topic, "user": "u-9"}),
            subject: None,
            timezone: None,
            idempotency_key: None,
        })
    };
    let published = start("orders").await.expect("start");
    let rec = wait_for(&engine, &published.id, Status::Completed).await;
    assert_eq!(rec.snapshot.outcome.as_deref(), Some("published"));
    // The listener started for u-9 and sent its welcome email.
    let mut sent = Vec::new();
    for _ in 0..100 {
        sent = sink.seen();
        if !sent.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sent.len(), 1, "{sent:?}");
    // A topic nothing reads in this process; and one of Sojourn's own.
    for topic in ["nobody-reads", "sojourn.actions.email"] {
        let lost = start(topic).await.expect("start");
        let rec = wait_for(&engine, &lost.id, Status::Completed).await;
        assert_eq!(rec.snapshot.outcome.as_deref(), Some("failed"), "{topic}");
    }
    assert_eq!(sink.seen().len(), 1, "no forged channel message was sent");
    engine.shutdown().await;
    fresh.cleanup(None).await;
}

/// One journey, one message on every channel, each through its real
/// provider's API (local fakes): through Kafka to the channel workers and
/// back. A refused SMS takes the node's failure branch at once, with its
/// class in the output; every send is in the delivery log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journey_sends_on_every_channel_through_kafka_and_the_real_providers() {
    use sojourn_testkit::fakes::{self, Fake};
    let kafka = PrivateKafka::start();
    let sendgrid = Fake::sendgrid("SG.key").await;
    let twilio = Fake::twilio("AC0123456789abcdef0123456789abcdef:tw-token").await;
    let fcm = Fake::fcm().await;
    let slack = Fake::slack("xoxb-bot").await;
    let providers = serde_json::from_value(json!({
        "mail": {"kind": "sendgrid", "api_key": "SG.key", "from": "news@shop.test", "base_url": sendgrid.url()},
        "sms": {"kind": "twilio", "account_sid": "AC0123456789abcdef0123456789abcdef", "auth_token": "tw-token",
                "from": "+15005550006", "base_url": twilio.url()},
        "push": {"kind": "fcm", "service_account": fakes::fcm_service_account(&fcm.url()).to_string(), "base_url": fcm.url()},
        "chat": {"kind": "slack", "bot_token": "xoxb-bot", "base_url": slack.url()},
    }))
    .expect("providers");
    let channels = serde_json::from_value(json!({
        "email": {"providers": ["mail"]}, "sms": {"providers": ["sms"]},
        "push": {"providers": ["push"]}, "chat": {"providers": ["chat"]},
    }))
    .expect("channels");
    let (store, fresh) = pg_store().await;
    let engine = Engine::start(
        store.clone(),
        Config {
            egress: sojourn_actors::egress::EgressPolicy::allowing_loopback(),
            kafka_brokers: vec![kafka.brokers()],
            outbox_poll: Duration::from_millis(100),
            providers,
            channels,
            ..Config::default()
        },
    )
    .await
    .expect("engine");
    let journey = Workflow::from_value(json!({
        "key": "everywhere",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "mail", "type": "action", "config": {"action": "email.send", "inputs": {
                "to": "{{ input.email }}", "subject": "Hi {{ input.name }}", "text": "Hello", "html": "<p>Hello</p>"}}},
            {"id": "text", "type": "action", "config": {"action": "sms.send", "inputs": {
                "to": "{{ input.phone }}", "body": "Hi {{ input.name }}"}}},
            {"id": "push", "type": "action", "config": {"action": "push.send", "inputs": {
                "to": "{{ input.device }}", "title": "Hi", "body": "Hello {{ input.name }}"}}},
            {"id": "chat", "type": "action", "config": {"action": "chat.send", "inputs": {
                "channel": "#signups", "text": "{{ input.name }} signed up"}}},
            {"id": "done", "type": "exit", "config": {"outcome": "sent"}},
        ],
        "edges": [
            {"from": "start", "to": "mail"},
            {"from": "mail", "to": "text", "branch": "success"},
            {"from": "text", "to": "push", "branch": "success"},
            {"from": "text", "to": "push", "branch": "failure"},
            {"from": "push", "to": "chat", "branch": "success"},
            {"from": "chat", "to": "done", "branch": "success"},
        ]
    }))
    .expect("workflow");
    engine.deploy(&journey).await.expect("deploy");
    let mut ids = Vec::new();
    for (name, phone) in [("Ann", "+33612345678"), ("Bob", "+15005550001")] {
        let started = engine
            .start_execution(StartRequest {
                namespace: None,
                workflow: "everywhere".into(),
                version: None,
                input: json!({"email": format!("{}@example.com", name.to_lowercase()), "name": name,
                              "phone": phone, "device": format!("device-{name}")}),
                subject: None,
                timezone: None,
                idempotency_key: None,
            })
            .await
            .expect("start");
        ids.push(started.id);
    }
    for id in &ids {
        let rec = wait_for(&engine, id, Status::Completed).await;
        assert_eq!(rec.snapshot.outcome.as_deref(), Some("sent"));
    }
    let ann = engine
        .execution(&ids[0])
        .await
        .expect("load")
        .expect("found");
    let out =
        |node: &str| ann.snapshot.nodes[&sojourn_runtime::NodeId::from(node)]["output"].clone();
    assert_eq!(out("mail")["provider"], "mail");
    assert!(
        out("text")["message_id"]
            .as_str()
            .is_some_and(|m| m.starts_with("SM"))
    );
    assert!(
        out("push")["message_id"]
            .as_str()
            .is_some_and(|m| m.starts_with("projects/"))
    );
    assert_eq!(out("chat")["status"], "sent");
    // Bob's number is not one: the failure branch, at once, the class recorded.
    let bob = engine
        .execution(&ids[1])
        .await
        .expect("load")
        .expect("found");
    let text = &bob.snapshot.nodes[&sojourn_runtime::NodeId::from("text")];
    assert_eq!(text["class"], "invalid_recipient", "{text}");
    assert_eq!(text["attempt"], 1, "a permanent refusal is not retried");
    assert_eq!(sendgrid.accepted().len(), 2);
    assert_eq!(twilio.accepted().len(), 1);
    assert_eq!(
        fcm.accepted()
            .iter()
            .filter(|r| r.path.ends_with(":send"))
            .count(),
        2
    );
    assert_eq!(slack.accepted().len(), 2);
    use sojourn_persistence::DeliveryStore;
    let log = store
        .list_deliveries(&sojourn_persistence::DeliveryQuery {
            namespace: "default".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("deliveries");
    assert_eq!(log.len(), 8, "{log:#?}");
    let failed: Vec<_> = log.iter().filter(|d| d.status == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error_class.as_deref(), Some("invalid_recipient"));
    assert_eq!(failed[0].recipient, "+15005550001");
    engine.shutdown().await;
    fresh.cleanup(Some(&store)).await;
}
