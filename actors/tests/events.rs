//! Event triggers on a real Kafka-protocol broker (tansu): messages start
//! executions once each, even when redelivered; a malformed message lands
//! in the dead letters and the next one is used; a waiting execution wakes
//! on its event; pausing stops consumption.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use sojourn_actors::{Config, Engine, StartRequest};
use sojourn_persistence::prelude::*;
use sojourn_persistence::{ExecutionQuery, PgStore};
use sojourn_runtime::triggers::{Move, TriggerKind};
use sojourn_runtime::{Status, Workflow};
use sojourn_testkit::{PrivateKafka, executions_of, new_trigger, pg_store, wait_for};

fn config(kafka: &PrivateKafka) -> Config {
    Config {
        node_id: "node-a".into(),
        schedule_poll: Duration::from_millis(100),
        kafka_brokers: vec![kafka.brokers()],
        ..Config::default()
    }
}

fn producer(kafka: &PrivateKafka) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

async fn produce(p: &FutureProducer, topic: &str, partition: i32, key: &str, value: &[u8]) {
    p.send(
        FutureRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(value),
        Duration::from_secs(10),
    )
    .await
    .expect("produce");
}

async fn event_trigger(store: &PgStore, workflow_id: &str, config: Value) -> String {
    let t = new_trigger(
        store,
        workflow_id,
        TriggerKind::Event,
        config,
        chrono::Utc::now(),
    )
    .await;
    store
        .set_trigger_state("default", &t.id, Move::Activate, None, chrono::Utc::now())
        .await
        .expect("activate")
        .expect("found");
    t.id
}

async fn subjects(store: &PgStore, workflow_id: &str) -> Vec<String> {
    let mut out: Vec<String> = executions_of(store, workflow_id)
        .await
        .into_iter()
        .filter_map(|e| e.subject)
        .collect();
    out.sort();
    out
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} within 30 s");
}

fn signup() -> Workflow {
    Workflow::from_value(json!({
        "key": "signup",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "done", "type": "exit", "config": {"outcome": "done"}},
        ],
        "edges": [{"from": "start", "to": "done"}]
    }))
    .expect("workflow")
}

/// Rewinds the trigger's consumer group to the start of both partitions,
/// as if the node had died before committing anything.
fn rewind(kafka: &PrivateKafka, trigger: &str, topic: &str) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", format!("sojourn.trigger.{trigger}"))
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(topic, p, Offset::Offset(0))
            .expect("offset");
    }
    c.commit(&tpl, CommitMode::Sync).expect("commit");
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    for e in committed.elements() {
        assert_eq!(e.offset(), Offset::Offset(0), "rewound");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_start_one_execution_each_even_redelivered_and_bad_ones_become_dead_letters() {
    let kafka = PrivateKafka::start();
    kafka.create_topic("signups", 2);
    let (store, fresh) = pg_store().await;
    let engine = Engine::start(store.clone(), config(&kafka))
        .await
        .expect("engine");
    let (wf, _) = engine.deploy(&signup()).await.expect("deploy");
    let trigger = event_trigger(
        &store,
        &wf,
        json!({"event": "signup", "topic": "signups", "from": "earliest",
               "subject": "event.payload.user",
               "condition": "event.payload.plan != 'spam'",
               "input": {"source": "kafka"}}),
    )
    .await;
    let p = producer(&kafka);
    for i in 0..10 {
        let value = json!({"user": format!("u-{i:02}"), "plan": "pro"}).to_string();
        produce(&p, "signups", i % 2, &format!("u-{i:02}"), value.as_bytes()).await;
    }
    // Passed over by the condition; not JSON; a subject that is a list.
    produce(
        &p,
        "signups",
        0,
        "x",
        br#"{"user": "spammer", "plan": "spam"}"#,
    )
    .await;
    produce(&p, "signups", 0, "x", b"{not json").await;
    produce(&p, "signups", 1, "x", br#"{"user": ["a"], "plan": "pro"}"#).await;
    // Binary (a schema registry's framing): NUL bytes, which PostgreSQL
    // keeps in no TEXT column, in the value and in the key.
    produce(&p, "signups", 1, "\0k", b"\0\0\0\0\x07avro").await;
    // The partitions carry on past them.
    for i in 10..20 {
        let value = json!({"user": format!("u-{i:02}"), "plan": "pro"}).to_string();
        produce(&p, "signups", i % 2, &format!("u-{i:02}"), value.as_bytes()).await;
    }
    let expected: Vec<String> = (0..20).map(|i| format!("u-{i:02}")).collect();
    wait_until("twenty executions", || async {
        subjects(&store, &wf).await.len() >= 20
    })
    .await;
    assert_eq!(subjects(&store, &wf).await, expected);
    let dead = store
        .dead_letters("default", &trigger, 10)
        .await
        .expect("dead letters");
    let mut reasons: Vec<(i32, String)> = dead
        .iter()
        .map(|d| (d.partition, d.reason.clone()))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{dead:?}");
    assert_eq!(reasons[0].0, 0);
    assert!(reasons[0].1.contains("not JSON"), "{reasons:?}");
    assert_eq!(reasons[1].0, 1);
    assert_eq!(reasons[2].0, 1);
    assert!(
        reasons[1..].iter().any(|r| r.1.contains("subject")),
        "{reasons:?}"
    );
    let binary = dead
        .iter()
        .find(|d| d.payload.as_deref().is_some_and(|p| p.ends_with("avro")))
        .expect("the binary message is kept");
    assert!(binary.reason.contains("not JSON"), "{binary:?}");
    assert_eq!(binary.key.as_deref(), Some("\u{fffd}k"));
    assert!(
        binary
            .payload
            .as_deref()
            .is_some_and(|p| p.starts_with('\u{fffd}'))
    );
    assert_eq!(dead[0].topic, "signups");
    // And on the dead-letter topic, as they came, with the reason.
    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    dlq.subscribe(&["signups.dlq"]).expect("subscribe");
    let mut reasons_on_topic = Vec::new();
    while reasons_on_topic.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(30), dlq.recv())
            .await
            .expect("three dead letters on signups.dlq")
            .expect("message");
        let reason = m
            .headers()
            .and_then(|hs| hs.iter().find(|h| h.key == "sojourn-reason"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("a reason header");
        reasons_on_topic.push(reason);
    }
    assert!(reasons_on_topic.iter().any(|r| r.contains("not JSON")));
    drop(dlq);
    // Its lag: none once the commits land (every message was used or
    // dead-lettered); a group that never read the topic lags by all 24.
    wait_until("the trigger's lag to reach zero", || async {
        engine
            .trigger_lag(&trigger, "signups")
            .await
            .expect("lag")
            .expect("Kafka")
            .iter()
            .all(|p| p.lag == Some(0) && p.committed == Some(p.end))
    })
    .await;
    let lag = engine
        .trigger_lag(&trigger, "signups")
        .await
        .expect("lag")
        .expect("Kafka");
    assert_eq!(
        lag.iter().map(|p| (p.partition, p.end)).collect::<Vec<_>>(),
        [(0, 12), (1, 12)]
    );
    let never = engine
        .trigger_lag("trg_never_ran", "signups")
        .await
        .expect("lag")
        .expect("Kafka");
    // Nothing committed: where it would start depends on `from`, so no
    // figure, only the ends.
    assert!(
        never
            .iter()
            .all(|p| p.committed.is_none() && p.lag.is_none()),
        "{never:?}"
    );
    assert_eq!(never.iter().map(|p| p.end).sum::<i64>(), 24);
    // A topic that does not exist is said so, not a failure.
    assert_eq!(
        engine.trigger_lag(&trigger, "no-such-topic").await,
        Err(sojourn_actors::bus::LagError::NoTopic)
    );
    // The input: the payload, the trigger's input, and the event.
    let one = store
        .list_executions(&ExecutionQuery {
            namespace: "default".into(),
            workflow_id: Some(wf.clone()),
            status: None,
            subject: Some("u-03".into()),
            created_after: None,
            created_before: None,
            before_id: None,
            limit: 1,
        })
        .await
        .expect("list");
    let rec = engine
        .execution(&one[0].id)
        .await
        .expect("load")
        .expect("found");
    let input = &rec.snapshot.input;
    assert_eq!(input["user"], json!("u-03"));
    assert_eq!(input["source"], json!("kafka"));
    assert_eq!(input["event"]["topic"], json!("signups"));
    assert_eq!(input["event"]["partition"], json!(1));
    assert_eq!(input["event"]["key"], json!("u-03"));

    // Everything is delivered again (the group rewound, as after a crash
    // before a commit): nothing starts twice, nothing is kept twice.
    engine.shutdown().await;
    rewind(&kafka, &trigger, "signups");
    let engine = Engine::start(store.clone(), config(&kafka))
        .await
        .expect("engine");
    // One more on each partition: once they are in, the replay is done.
    for i in 20..22 {
        let value = json!({"user": format!("u-{i:02}"), "plan": "pro"}).to_string();
        produce(&p, "signups", i % 2, &format!("u-{i:02}"), value.as_bytes()).await;
    }
    wait_until("the two new executions", || async {
        subjects(&store, &wf).await.len() >= 22
    })
    .await;
    let expected: Vec<String> = (0..22).map(|i| format!("u-{i:02}")).collect();
    assert_eq!(subjects(&store, &wf).await, expected);
    assert_eq!(
        store
            .dead_letters("default", &trigger, 10)
            .await
            .expect("dead letters")
            .len(),
        3
    );

    // Paused: its messages wait in the topic, and are used once resumed.
    store
        .set_trigger_state("default", &trigger, Move::Pause, None, chrono::Utc::now())
        .await
        .expect("pause")
        .expect("found");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    produce(
        &p,
        "signups",
        0,
        "u-22",
        br#"{"user": "u-22", "plan": "pro"}"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        subjects(&store, &wf).await.len(),
        22,
        "a paused trigger consumed"
    );
    store
        .set_trigger_state("default", &trigger, Move::Resume, None, chrono::Utc::now())
        .await
        .expect("resume")
        .expect("found");
    wait_until("the message sent while paused", || async {
        subjects(&store, &wf).await.len() == 23
    })
    .await;

    engine.shutdown().await;
    fresh.cleanup(Some(&store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_execution_wakes_on_its_kafka_event() {
    let kafka = PrivateKafka::start();
    kafka.create_topic("payments", 2);
    let (store, fresh) = pg_store().await;
    let engine = Engine::start(store.clone(), config(&kafka))
        .await
        .expect("engine");
    let wf = Workflow::from_value(json!({
        "key": "checkout",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "wait", "type": "wait_for_event", "config": {
                "event": "paid", "key": "{{ input.order }}", "timeout": "1h"}},
            {"id": "paid", "type": "exit", "config": {"outcome": "paid"}},
            {"id": "late", "type": "exit", "config": {"outcome": "late"}},
        ],
        "edges": [
            {"from": "start", "to": "wait"},
            {"from": "wait", "to": "paid", "branch": "event"},
            {"from": "wait", "to": "late", "branch": "timeout"},
        ]
    }))
    .expect("workflow");
    let (wf_id, _) = engine.deploy(&wf).await.expect("deploy");
    let trigger = event_trigger(
        &store,
        &wf_id,
        json!({"event": "paid", "topic": "payments", "from": "earliest",
               "action": "deliver", "key": "event.payload.order"}),
    )
    .await;
    let started = engine
        .start_execution(StartRequest {
            namespace: None,
            workflow: wf_id.clone(),
            version: None,
            input: json!({"order": "o-1"}),
            subject: None,
            timezone: None,
            idempotency_key: None,
        })
        .await
        .expect("start");
    wait_for(&engine, &started.id, Status::Waiting).await;
    let p = producer(&kafka);
    produce(
        &p,
        "payments",
        1,
        "o-1",
        br#"{"order": "o-1", "total": 12}"#,
    )
    .await;
    let done = wait_for(&engine, &started.id, Status::Completed).await;
    assert_eq!(done.snapshot.outcome.as_deref(), Some("paid"), "{trigger}");
    engine.shutdown().await;
    fresh.cleanup(Some(&store)).await;
}

/// `kafka.publish` on Kafka: the record carries the attempt's key as a
/// header, and a broker outage spends none of the action's retries — the
/// journey waits and publishes once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publish_carries_its_key_and_waits_out_a_broker_outage() {
    let mut kafka = PrivateKafka::start();
    kafka.create_topic("orders", 1);
    let (store, fresh) = pg_store().await;
    let engine = Engine::start(store.clone(), config(&kafka))
        .await
        .expect("engine");
    let wf = Workflow::from_value(json!({
        "key": "publisher",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "pub", "type": "action", "config": {"action": "kafka.publish",
                "retry": {"max_attempts": 1},
                "inputs": {"topic": "orders", "key": "{{ input.user }}",
                    "value": {"user": "{{ input.user }}"}, "headers": {"source": "test"}}}},
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
    engine.deploy(&wf).await.expect("deploy");
    let start = |user: &str| {
        engine.start_execution(StartRequest {
            namespace: None,
            workflow: "publisher".into(),
            version: None,
            input: json!({"user": user}),
            subject: None,
            timezone: None,
            idempotency_key: None,
        })
    };
    let first = start("u-1").await.expect("start");
    let rec = wait_for(&engine, &first.id, Status::Completed).await;
    assert_eq!(rec.snapshot.outcome.as_deref(), Some("published"));

    kafka.kill();
    let second = start("u-2").await.expect("start");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = engine
        .execution(&second.id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(waiting.status, Status::Running, "it waits for the broker");
    kafka.restart();
    let rec = wait_for(&engine, &second.id, Status::Completed).await;
    assert_eq!(
        rec.snapshot.outcome.as_deref(),
        Some("published"),
        "one attempt, not spent by the outage"
    );

    // Both records, each with its attempt's key and the workflow's header.
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", "orders-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&["orders"]).expect("subscribe");
    let mut keys = Vec::new();
    while keys.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .expect("two records")
            .expect("record");
        let header = |name: &str| {
            m.headers()
                .and_then(|hs| hs.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("source").as_deref(), Some("test"));
        keys.push(header("idempotency-key").expect("idempotency-key"));
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with(first.id.as_str())),
        "{keys:?}"
    );
    drop(c);
    engine.shutdown().await;
    fresh.cleanup(Some(&store)).await;
}

/// Two nodes share an event trigger's topic: its partitions are split
/// between them (each starts some, none twice), pausing stops both, and
/// when one leaves the other takes its partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_topic_stop_together_when_paused_and_rebalance_when_one_leaves() {
    let kafka = PrivateKafka::start();
    kafka.create_topic("clicks", 4);
    let redis = sojourn_testkit::PrivateRedis::start();
    let (store, fresh) = pg_store().await;
    let node = |name: &str| {
        let cfg = Config {
            node_id: name.into(),
            ..config(&kafka)
        };
        let cluster =
            sojourn_actors::Cluster::redis(&redis.url(), name, cfg.lease_ttl).expect("cluster");
        Engine::start_in_cluster(store.clone(), cfg, cluster)
    };
    let a = node("node-a").await.expect("engine");
    let b = node("node-b").await.expect("engine");
    let (wf, _) = a.deploy(&signup()).await.expect("deploy");
    let trigger = event_trigger(
        &store,
        &wf,
        json!({"event": "click", "topic": "clicks", "from": "earliest",
               "subject": "event.payload.user"}),
    )
    .await;
    // Both join the trigger's group and the partitions are split.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let p = producer(&kafka);
    let send = |from: usize, to: usize| {
        let p = p.clone();
        async move {
            for i in from..to {
                let value = json!({"user": format!("u-{i:02}")}).to_string();
                produce(&p, "clicks", (i % 4) as i32, "k", value.as_bytes()).await;
            }
        }
    };
    let all = |n: usize| -> Vec<String> { (0..n).map(|i| format!("u-{i:02}")).collect() };
    send(0, 40).await;
    wait_until("forty executions", || async {
        subjects(&store, &wf).await.len() >= 40
    })
    .await;
    assert_eq!(subjects(&store, &wf).await, all(40));
    let (by_a, by_b) = (
        a.stats().started_by_workflow.get(&wf),
        b.stats().started_by_workflow.get(&wf),
    );
    assert_eq!(by_a + by_b, 40);
    assert!(by_a > 0 && by_b > 0, "both consume: {by_a} + {by_b}");

    // Paused: neither node consumes; resumed, what came meanwhile is used.
    store
        .set_trigger_state("default", &trigger, Move::Pause, None, chrono::Utc::now())
        .await
        .expect("pause")
        .expect("found");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    send(40, 44).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        subjects(&store, &wf).await.len(),
        40,
        "a paused trigger consumed"
    );
    store
        .set_trigger_state("default", &trigger, Move::Resume, None, chrono::Utc::now())
        .await
        .expect("resume")
        .expect("found");
    wait_until("the four sent while paused", || async {
        subjects(&store, &wf).await.len() >= 44
    })
    .await;

    // Node b leaves: node a takes every partition.
    b.shutdown().await;
    let a_before = a.stats().started_by_workflow.get(&wf);
    send(44, 64).await;
    wait_until("the twenty sent after node b left", || async {
        subjects(&store, &wf).await.len() >= 64
    })
    .await;
    assert_eq!(subjects(&store, &wf).await, all(64));
    assert_eq!(a.stats().started_by_workflow.get(&wf) - a_before, 20);
    a.shutdown().await;
    fresh.cleanup(Some(&store)).await;
}

/// Profile updates from a topic: an event trigger with `action: profile`
/// merges each message's payload into its subject's profile; a payload
/// that is not a profile update is a dead letter naming its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_updates_come_from_a_topic_and_bad_ones_are_dead_letters() {
    use sojourn_persistence::AudienceStore;
    let kafka = PrivateKafka::start();
    kafka.create_topic("users", 2);
    let (store, fresh) = pg_store().await;
    let engine = Engine::start(store.clone(), config(&kafka))
        .await
        .expect("engine");
    let (wf_id, _) = engine.deploy(&signup()).await.expect("deploy");
    let trigger = event_trigger(
        &store,
        &wf_id,
        json!({"event": "user.updated", "topic": "users", "from": "earliest",
               "action": "profile", "subject": "event.payload.id", "profile": "event.payload.traits"}),
    )
    .await;
    let p = producer(&kafka);
    produce(
        &p,
        "users",
        0,
        "u1",
        br#"{"id": "u1", "traits": {"email": "u1@example.com", "attributes": {"plan": "pro"}}}"#,
    )
    .await;
    produce(
        &p,
        "users",
        0,
        "u1",
        br#"{"id": "u1", "traits": {"attributes": {"age": 40}}}"#,
    )
    .await;
    produce(
        &p,
        "users",
        1,
        "u2",
        br#"{"id": "u2", "traits": {"phone": "0612"}}"#,
    )
    .await;
    let clock = std::time::Instant::now();
    wait_until("the profile", || async {
        store
            .get_profile("default", "u1")
            .await
            .expect("get")
            .is_some_and(|p| p.attributes.get("age") == Some(&json!(40)))
    })
    .await;
    eprintln!("profile after {:?}", clock.elapsed());
    let u1 = store
        .get_profile("default", "u1")
        .await
        .expect("get")
        .expect("u1");
    assert_eq!(u1.addresses.email.as_deref(), Some("u1@example.com"));
    assert_eq!(u1.attributes.get("plan"), Some(&json!("pro")));
    wait_until("the dead letter", || async {
        !store
            .dead_letters("default", &trigger, 10)
            .await
            .expect("dead letters")
            .is_empty()
    })
    .await;
    let dead = store
        .dead_letters("default", &trigger, 10)
        .await
        .expect("dead letters");
    assert!(
        dead[0].reason.contains("profile.phone"),
        "{:?}",
        dead[0].reason
    );
    assert!(
        store
            .get_profile("default", "u2")
            .await
            .expect("get")
            .is_none()
    );
    // A subject's updates apply in their order: 30 in a row, in one
    // partition (a batch), the last one wins and the first one's email stays.
    produce(
        &p,
        "users",
        0,
        "u3",
        br#"{"id": "u3", "traits": {"email": "u3@example.com"}}"#,
    )
    .await;
    // Sent together (not each awaited), so they reach the trigger as one
    // batch.
    let values: Vec<String> = (0..30)
        .map(|n| json!({"id": "u3", "traits": {"attributes": {"n": n}}}).to_string())
        .collect();
    let sends: Vec<_> = values
        .iter()
        .map(|v| {
            p.send_result(
                FutureRecord::to("users")
                    .partition(0)
                    .key("u3")
                    .payload(v.as_bytes()),
            )
            .expect("queued")
        })
        .collect();
    for s in sends {
        s.await.expect("delivered").expect("produced");
    }
    wait_until("the last update", || async {
        store
            .get_profile("default", "u3")
            .await
            .expect("get")
            .is_some_and(|p| p.attributes.get("n") == Some(&json!(29)))
    })
    .await;
    // Give a late, reordered write the time to land, then look again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let u3 = store
        .get_profile("default", "u3")
        .await
        .expect("get")
        .expect("u3");
    assert_eq!(u3.attributes.get("n"), Some(&json!(29)));
    assert_eq!(u3.addresses.email.as_deref(), Some("u3@example.com"));
    // Nothing was started.
    assert!(executions_of(&store, &wf_id).await.is_empty());
    engine.shutdown().await;
    fresh.cleanup(Some(&store)).await;
}
