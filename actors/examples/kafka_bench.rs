//! The Kafka benchmark of issue 11, against a private tansu broker and a
//! fresh PostgreSQL schema (both made here, removed after):
//!
//! 1. events consumed per second that start executions, on one node: N
//!    messages produced first, then an event trigger reads them from the
//!    start (`from: earliest`);
//! 2. latency from produce to the execution's first action (an
//!    `http.request` to a local sink), at a fixed rate;
//! 3. channel messages per second through one worker to the test provider
//!    (`email.send`, the webhook stand-in, to the local sink).
//!
//! `cargo run --release -p sojourn-actors --example kafka_bench --
//! [--events N] [--rate PER_S] [--seconds S] [--messages N]`

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use sojourn_actors::{Config, Engine, StartRequest};
use sojourn_persistence::PgStore;
use sojourn_persistence::prelude::*;
use sojourn_runtime::Workflow;
use sojourn_runtime::triggers::{Move, TriggerKind};
use sojourn_testkit::bench_arg as arg;
use sojourn_testkit::{PrivateKafka, Sink, pg_store};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn trigger(store: &PgStore, workflow_id: &str, config: serde_json::Value) {
    let t = sojourn_testkit::new_trigger(
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
        .expect("activate");
}

#[tokio::main]
async fn main() {
    let events = arg("--events", 20_000);
    let rate = arg("--rate", 200);
    let seconds = arg("--seconds", 5);
    let messages = arg("--messages", 5_000);

    let kafka = PrivateKafka::start();
    kafka.create_topic("bench.events", 4);
    kafka.create_topic("bench.latency", 4);
    for channel in ["email", "sms", "push", "chat"] {
        kafka.create_topic(&format!("sojourn.actions.{channel}"), 4);
    }
    let sink = Sink::start().await;
    let (store, fresh) = pg_store().await;
    let config = Config {
        kafka_brokers: vec![kafka.brokers()],
        egress: sojourn_actors::egress::EgressPolicy::allowing_loopback(),
        channel_webhook: Some(format!("{}/messages", sink.url())),
        schedule_poll: Duration::from_millis(100),
        ..Config::default()
    };
    let engine = Engine::start(store.clone(), config).await.expect("engine");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");

    // 1. Events that start executions.
    let signup = Workflow::from_value(json!({
        "key": "bench-signup",
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "done", "type": "exit", "config": {"outcome": "done"}}],
        "edges": [{"from": "start", "to": "done"}]
    }))
    .expect("workflow");
    let (signup_id, _) = engine.deploy(&signup).await.expect("deploy");
    let produced = Instant::now();
    let mut sends = Vec::with_capacity(events as usize);
    for i in 0..events {
        let value = json!({"user": format!("u-{i}")}).to_string();
        let key = format!("u-{i}");
        sends.push(async {
            let (key, value) = (key, value);
            producer
                .send(
                    FutureRecord::to("bench.events").key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
        if sends.len() == 1_000 {
            for s in sends.drain(..) {
                s.await.expect("produce");
            }
        }
    }
    for s in sends.drain(..) {
        s.await.expect("produce");
    }
    let produce_s = produced.elapsed().as_secs_f64();
    let before = engine.stats().snapshot().completed;
    let consumed = Instant::now();
    trigger(
        &store,
        &signup_id,
        json!({"event": "signup", "topic": "bench.events", "from": "earliest",
               "subject": "event.payload.user"}),
    )
    .await;
    while engine.stats().snapshot().completed - before < events {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(consumed.elapsed() < Duration::from_secs(600), "stalled");
    }
    let consume_s = consumed.elapsed().as_secs_f64();
    println!(
        "events: {events} produced in {produce_s:.2} s; consumed and started in {consume_s:.2} s \
         (from activation, incl. joining the group): {:.0} executions/s",
        events as f64 / consume_s
    );

    // 2. Produce → the execution's first action, at a fixed rate.
    let latency = Workflow::from_value(json!({
        "key": "bench-latency",
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "call", "type": "action", "config": {"action": "http.request",
                      "inputs": {"url": format!("{}/first", sink.url()), "body": {"$expr": "input.seq"}}}},
                  {"id": "done", "type": "exit"}],
        "edges": [{"from": "start", "to": "call"}, {"from": "call", "to": "done", "branch": "success"}]
    }))
    .expect("workflow");
    let (latency_id, _) = engine.deploy(&latency).await.expect("deploy");
    trigger(
        &store,
        &latency_id,
        json!({"event": "order", "topic": "bench.latency", "from": "earliest"}),
    )
    .await;
    // Let the trigger's consumer join its group before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = rate * seconds;
    let mut sent_at = Vec::with_capacity(n as usize);
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    for seq in 0..n {
        let due = start + gap * seq as u32;
        tokio::time::sleep_until(due.into()).await;
        let value = json!({"seq": seq}).to_string();
        sent_at.push(Instant::now());
        // Not awaited: the rate is the producer's, not the broker's acks.
        let record = FutureRecord::to("bench.latency")
            .key("k")
            .payload(&value)
            .partition((seq % 4) as i32);
        let delivery = producer.send_result(record).expect("queue");
        tokio::spawn(delivery);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = sink.seen().iter().filter(|s| s.path == "/first").count();
        if seen as u64 >= n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lat: Vec<Duration> = sink
        .seen()
        .iter()
        .filter(|s| s.path == "/first")
        .filter_map(|s| {
            let seq: usize = serde_json::from_slice::<u64>(&s.body).ok()? as usize;
            Some(s.at.saturating_duration_since(*sent_at.get(seq)?))
        })
        .collect();
    lat.sort();
    println!(
        "latency produce → first action at {rate}/s for {seconds} s: {} of {n} arrived; \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );

    // 3. Channel messages through one worker (email) to the test provider.
    let welcome = Workflow::from_value(json!({
        "key": "bench-welcome",
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "mail", "type": "action", "config": {"action": "email.send",
                      "inputs": {"to": "{{ input.to }}", "subject": "Hi", "text": "Hello"}}},
                  {"id": "done", "type": "exit"}],
        "edges": [{"from": "start", "to": "mail"}, {"from": "mail", "to": "done", "branch": "success"}]
    }))
    .expect("workflow");
    engine.deploy(&welcome).await.expect("deploy");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let engine = std::sync::Arc::new(engine);
    let per_task = messages / 32;
    for t in 0..32 {
        let engine = engine.clone();
        tasks.spawn(async move {
            for i in 0..per_task {
                engine
                    .start_execution(StartRequest {
                        namespace: None,
                        workflow: "bench-welcome".into(),
                        version: None,
                        input: json!({"to": format!("u{t}-{i}@example.com")}),
                        subject: None,
                        timezone: None,
                        idempotency_key: None,
                    })
                    .await
                    .expect("start");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let total = per_task * 32;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let seen = sink.seen().iter().filter(|s| s.path == "/messages").count() as u64;
        if seen >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrivals: Vec<Instant> = sink
        .seen()
        .iter()
        .filter(|s| s.path == "/messages")
        .map(|s| s.at)
        .collect();
    let first = arrivals.iter().min().copied().unwrap_or(started);
    let last = arrivals.iter().max().copied().unwrap_or(started);
    println!(
        "channel messages: {} of {total} sent by one worker; {:.0} messages/s at the provider \
         (first to last), {:.0}/s from the first start",
        arrivals.len(),
        arrivals.len() as f64 / last.duration_since(first).as_secs_f64().max(1e-9),
        arrivals.len() as f64 / last.duration_since(started).as_secs_f64().max(1e-9),
    );

    if let Ok(engine) = std::sync::Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
    fresh.cleanup(Some(&store)).await;
}
