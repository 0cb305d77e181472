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
use sojourn_runtime::caps::{CapSettings, CapSpec};
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
                ("gus".into(), email("gus@x.org")),
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

    // A workflow's own caps: one exempt from the namespace's sends to ann
    // anyway; one with a tighter cap holds gus to one a day, while the
    // namespace's journeys still have their three.
    let mut exempt = journey("exempt", None);
    exempt.settings.frequency_caps = Some(CapSettings {
        inherit: false,
        caps: Vec::new(),
    });
    engine.deploy(&exempt).await.expect("deploy");
    let vip = start(&engine, "exempt", "ann", "promo").await;
    assert_eq!(outcome(&engine, &vip).await.0, "sent");
    let mut tight = journey("tight", None);
    tight.settings.frequency_caps = Some(CapSettings {
        inherit: true,
        caps: vec![CapSpec {
            channel: "email".into(),
            category: "*".into(),
            max_sends: 1,
            window: "1d".into(),
            on_cap: OnCap::Skip,
        }],
    });
    engine.deploy(&tight).await.expect("deploy");
    let gus_first = start(&engine, "tight", "gus", "promo").await;
    assert_eq!(outcome(&engine, &gus_first).await.0, "sent");
    let gus_again = start(&engine, "tight", "gus", "promo").await;
    let (o, node) = outcome(&engine, &gus_again).await;
    assert_eq!(o, "skipped", "{node}");
    assert!(
        node["skipped"]
            .as_str()
            .is_some_and(|s| s.contains("at most 1 email messages per day")),
        "{node}"
    );
    let gus_news = start(&engine, "news", "gus", "promo").await;
    assert_eq!(outcome(&engine, &gus_news).await.0, "sent");

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
    assert_eq!(to.iter().filter(|t| *t == "ann@x.org").count(), 5, "{to:?}");
    assert_eq!(to.iter().filter(|t| *t == "gus@x.org").count(), 2, "{to:?}");
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
    assert_eq!(count("capped"), 8);
    assert_eq!(count("unsubscribed"), 1);
    assert_eq!(count("suppressed"), 1);
    assert_eq!(count("no_address"), 1);
    assert!(count("deferred") >= 1);
    assert!(
        log.iter().filter(|d| d.status == "capped").all(
            |d| d.provider == "-" && ["ann@x.org", "gus@x.org"].contains(&d.recipient.as_str())
        )
    );

    stop.cancel();
    engine.shutdown().await;
    alone.await.expect("worker stops");
}

fn local_config() -> Config {
    Config {
        egress: sojourn_actors::egress::EgressPolicy::allowing_loopback(),
        schedule_poll: Duration::from_millis(100),
        timer_poll: Duration::from_millis(100),
        outbox_poll: Duration::from_millis(100),
        ..Config::default()
    }
}

fn attrs(v: Value) -> ProfilePatch {
    ProfilePatch {
        attributes: Some(v.as_object().expect("object").clone()),
        ..ProfilePatch::default()
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..150 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_backfilled_followed_asked_and_start_journeys_once_per_entry() {
    let (store, _fresh) = sojourn_testkit::sqlite_store().await;
    let engine = Engine::start(store.clone(), local_config())
        .await
        .expect("engine");
    let t0 = chrono::Utc::now();
    // Profiles before the segment: it is backfilled.
    let many: Vec<(String, ProfilePatch)> = (0..2_500u32)
        .map(|i| {
            (
                format!("u{i:05}"),
                attrs(json!({"plan": if i.is_multiple_of(5) { "pro" } else { "free" }})),
            )
        })
        .collect();
    store
        .write_profiles("default", &many, false, t0)
        .await
        .expect("profiles");
    store
        .put_segment(
            "default",
            "vip",
            &sojourn_persistence::SegmentDef::Expression("attributes.plan == 'pro'".into()),
            t0,
        )
        .await
        .expect("segment");
    eventually("the backfill", || async {
        let s = store
            .get_segment("default", "vip")
            .await
            .expect("get")
            .expect("vip");
        s.backfill_after.is_none() && s.members == 500
    })
    .await;

    // A condition asks in_segment when it runs (after a nap during which
    // the profile changes).
    let (id, _) = engine
        .deploy(&Workflow::from_value(json!({
            "key": "ask",
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "nap", "type": "delay", "config": {"duration": "1s"}},
                {"id": "vip", "type": "condition", "config": {"expression": "in_segment('vip')"}},
                {"id": "yes", "type": "exit", "config": {"outcome": "vip"}},
                {"id": "no", "type": "exit", "config": {"outcome": "not"}},
            ],
            "edges": [
                {"from": "start", "to": "nap"}, {"from": "nap", "to": "vip"},
                {"from": "vip", "to": "yes", "branch": "true"}, {"from": "vip", "to": "no", "branch": "false"},
            ]
        }))
        .expect("workflow"))
        .await
        .expect("deploy");
    let _ = id;
    let ask = |subject: &'static str| {
        let engine = &engine;
        async move {
            engine
                .start_execution(StartRequest {
                    namespace: None,
                    workflow: "ask".into(),
                    version: None,
                    input: json!({}),
                    subject: Some(subject.into()),
                    timezone: None,
                    idempotency_key: None,
                })
                .await
                .expect("start")
                .id
        }
    };
    let was_free = ask("u00001").await;
    let stays_pro = ask("u00005").await;
    store
        .write_profiles(
            "default",
            &[("u00001".into(), attrs(json!({"plan": "pro"})))],
            false,
            chrono::Utc::now(),
        )
        .await
        .expect("upgrade");
    let outcome_of = |id: ExecutionId| {
        let engine = &engine;
        async move {
            wait_for(engine, &id, Status::Completed)
                .await
                .snapshot
                .outcome
                .unwrap_or_default()
        }
    };
    assert_eq!(outcome_of(was_free).await, "vip", "read when the node ran");
    assert_eq!(outcome_of(stays_pro).await, "vip");
    assert_eq!(outcome_of(ask("u00002").await).await, "not");

    // A segment trigger: each entry starts the workflow once.
    let (welcome, _) = engine
        .deploy(
            &Workflow::from_value(json!({
                "key": "welcome-vip",
                "nodes": [
                    {"id": "start", "type": "start"},
                    {"id": "end", "type": "exit", "config": {"outcome": "welcomed"}},
                ],
                "edges": [{"from": "start", "to": "end"}]
            }))
            .expect("workflow"),
        )
        .await
        .expect("deploy");
    let t = sojourn_testkit::new_trigger(
        &store,
        &welcome,
        sojourn_runtime::triggers::TriggerKind::Segment,
        json!({"segment": "vip", "input": {"source": "segment"}}),
        chrono::Utc::now(),
    )
    .await;
    store
        .set_trigger_state(
            "default",
            &t.id,
            sojourn_runtime::triggers::Move::Activate,
            None,
            chrono::Utc::now(),
        )
        .await
        .expect("activate");
    // Let a pass open its cursor (entries before it start nothing).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let write = |subject: &'static str, plan: &'static str| {
        let store = &store;
        async move {
            store
                .write_profiles(
                    "default",
                    &[(subject.into(), attrs(json!({"plan": plan})))],
                    false,
                    chrono::Utc::now(),
                )
                .await
                .expect("write");
        }
    };
    write("u00002", "pro").await; // enters
    write("u00002", "pro").await; // no change
    write("u00003", "free").await; // no change
    let started = || {
        let store = &store;
        let welcome = welcome.clone();
        async move { sojourn_testkit::executions_of(store, &welcome).await }
    };
    eventually("the entry's journey", || async {
        started().await.len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = started().await;
    assert_eq!(first.len(), 1, "once per entry");
    assert_eq!(first[0].subject.as_deref(), Some("u00002"));
    // Leaves, then enters again: a second entry, a second journey.
    write("u00002", "free").await;
    write("u00002", "pro").await;
    eventually("the second entry's journey", || async {
        started().await.len() == 2
    })
    .await;
    let rec = engine
        .execution(&first[0].id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(rec.snapshot.input["source"], "segment");
    assert_eq!(rec.snapshot.input["segment"]["entered"], true);

    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipients_time_zone_moves_a_time_of_day_delay() {
    let (store, _fresh) = sojourn_testkit::sqlite_store().await;
    let engine = Engine::start(store.clone(), local_config())
        .await
        .expect("engine");
    let tz = |z: &str| ProfilePatch {
        timezone: Some(Some(z.into())),
        ..ProfilePatch::default()
    };
    store
        .write_profiles(
            "default",
            &[
                ("kiwi".into(), tz("Pacific/Auckland")),
                ("parisian".into(), tz("Europe/Paris")),
            ],
            false,
            chrono::Utc::now(),
        )
        .await
        .expect("profiles");
    let morning = |key: &str, fixed: Option<&str>| {
        let mut wf = json!({
            "key": key,
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "nine", "type": "delay", "config": {"time_of_day": "09:00"}},
                {"id": "end", "type": "exit"},
            ],
            "edges": [{"from": "start", "to": "nine"}, {"from": "nine", "to": "end"}]
        });
        if let Some(z) = fixed {
            wf["settings"] = json!({"timezone": z});
        }
        Workflow::from_value(wf).expect("workflow")
    };
    engine
        .deploy(&morning("morning", None))
        .await
        .expect("deploy");
    engine
        .deploy(&morning("fixed", Some("America/New_York")))
        .await
        .expect("deploy");
    let start = |workflow: &'static str, subject: &'static str| {
        let engine = &engine;
        async move {
            let id = engine
                .start_execution(StartRequest {
                    namespace: None,
                    workflow: workflow.into(),
                    version: None,
                    input: json!({}),
                    subject: Some(subject.into()),
                    timezone: None,
                    idempotency_key: None,
                })
                .await
                .expect("start")
                .id;
            let rec = wait_for(engine, &id, Status::Waiting).await;
            let until = rec
                .snapshot
                .wait
                .as_ref()
                .and_then(|w| w.until())
                .expect("a timer");
            (rec.snapshot.timezone.to_string(), until)
        }
    };
    let (zone, until) = start("morning", "kiwi").await;
    assert_eq!(zone, "Pacific/Auckland");
    let local = until.with_timezone(&chrono_tz::Pacific::Auckland);
    assert_eq!(local.format("%H:%M").to_string(), "09:00");
    let (zone, until) = start("morning", "parisian").await;
    assert_eq!(zone, "Europe/Paris");
    assert_eq!(
        until
            .with_timezone(&chrono_tz::Europe::Paris)
            .format("%H:%M")
            .to_string(),
        "09:00"
    );
    // No profile: the workflow's zone (UTC here).
    let (zone, _) = start("morning", "nobody").await;
    assert_eq!(zone, "UTC");
    // A workflow that fixes its zone keeps it.
    let (zone, _) = start("fixed", "kiwi").await;
    assert_eq!(zone, "America/New_York");
    engine.shutdown().await;
}
