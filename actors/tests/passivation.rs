//! Passivation: executions asleep on a delay hold no actor and (almost) no
//! memory; when the delays end they all complete.
//!
//! The test process's resident memory is measured before and after putting
//! thousands of executions to sleep. Live actors would cost several KiB each
//! (state, snapshot, mailbox, task); the bound below allows about 1.6 KiB per
//! sleeping execution. `sojourn bench`-style figures for 100,000 are
//! in the issue notes.

use std::time::{Duration, Instant};

use serde_json::json;
use sojourn_actors::{Config, Engine, StartRequest};
use sojourn_persistence::PgStore;
use sojourn_persistence::prelude::*;
use sojourn_runtime::Workflow;

const ASLEEP: usize = 5_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn sleeper(delay: &str) -> Workflow {
    Workflow::from_value(json!({
        "key": "sleeper",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "calc", "type": "function", "config": {"assign": [{"var": "n", "expression": "input.n * 2"}]}},
            {"id": "nap", "type": "delay", "config": {"duration": delay}},
            {"id": "end", "type": "exit", "config": {"outcome": "woke"}},
        ],
        "edges": [
            {"from": "start", "to": "calc"},
            {"from": "calc", "to": "nap"},
            {"from": "nap", "to": "end"},
        ]
    }))
    .expect("workflow")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_executions_cost_no_actor_and_little_memory_then_all_wake() {
    let url = std::env::var("SOJOURN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let schema = format!("sojourn_test_{}", uuid::Uuid::now_v7().simple());
    let store = PgStore::connect_creating_schema(&url, &schema, 8)
        .await
        .expect("connect");
    let config = Config {
        timer_poll: Duration::from_millis(100),
        ..Config::default()
    };
    let engine = Engine::start(store.clone(), config).await.expect("engine");
    engine.deploy(&sleeper("25s")).await.expect("deploy");

    // Warm up (allocator pools, connections, compiled workflow), then measure.
    for i in 0..200 {
        engine
            .start_execution(StartRequest {
                workflow: "sleeper".into(),
                input: json!({"n": i}),
                ..Default::default()
            })
            .await
            .expect("start");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_kib();

    let started = Instant::now();
    let mut starters = Vec::new();
    for t in 0..8 {
        let engine = &engine;
        starters.push(async move {
            for i in (t..ASLEEP).step_by(8) {
                engine
                    .start_execution(StartRequest {
                        workflow: "sleeper".into(),
                        input: json!({"n": i}),
                        ..Default::default()
                    })
                    .await
                    .expect("start");
            }
        });
    }
    futures_join_all(starters).await;
    // Wait until every one of them sleeps and no actor is left.
    // (The 25 s delay outlasts the creation of all of them even in a debug
    // build, so none wakes before the last one sleeps.)
    let deadline = started + Duration::from_secs(22);
    while engine.active_actors().await > 0 {
        assert!(
            Instant::now() < deadline,
            "actors did not passivate: {} live",
            engine.active_actors().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asleep_for = started.elapsed();
    let after = rss_kib();
    let grown = after.saturating_sub(baseline);
    eprintln!(
        "{ASLEEP} executions asleep after {asleep_for:?}: RSS {baseline} KiB → {after} KiB (+{grown} KiB, {:.0} bytes each)",
        grown as f64 * 1024.0 / ASLEEP as f64
    );
    assert_eq!(engine.active_actors().await, 0);
    assert!(
        grown < 8 * 1024,
        "RSS grew by {grown} KiB for {ASLEEP} sleeping executions: they are not passivated"
    );
    assert!(store.pending_timers().await.expect("timers") >= ASLEEP as i64);

    // When the delays end, they all complete.
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.stats().snapshot().completed < (ASLEEP + 200) as u64 {
        assert!(
            Instant::now() < deadline,
            "only {} of {} completed",
            engine.stats().snapshot().completed,
            ASLEEP + 200
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.pending_timers().await.expect("timers"), 0);
    engine.shutdown().await;
    store.drop_schema(&schema).await.expect("drop schema");
}

/// Runs futures concurrently on this task (no extra dependency).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
