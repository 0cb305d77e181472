//! The audience's costs, on a fresh PostgreSQL schema
//! (`SOJOURN_TEST_DATABASE_URL`, default the local server):
//!
//! 1. profile updates per second through the HTTP API (`POST
//!    /v1/profiles/{subject}`, merge), `--concurrency` clients for
//!    `--seconds`, with no segment and then with ten expression segments
//!    (each update re-evaluates them in its transaction);
//! 2. the backfill of a new segment over `--profiles` profiles (default
//!    1,000,000): time, and the process's peak RSS before and after;
//! 3. the added cost per send of the send-time checks: the audience of a
//!    batch of 256 channel messages read and decided as the worker does it,
//!    per message — literal addresses and no profile, then `to: "subject"`
//!    with profiles and preferences, then with a frequency cap reserved.
//!
//! `cargo run --release -p sojourn-api --example audience_bench -- [--profiles N]
//! [--seconds S] [--concurrency C]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sojourn_actors::audience::{Audience, AudienceConfig, Job, Plan, plan};
use sojourn_actors::channels::Channel;
use sojourn_actors::{Config, Engine, StartRequest};
use sojourn_api::{AppState, AuthMode};
use sojourn_persistence::prelude::*;
use sojourn_persistence::{FrequencyCap, OnCap, ProfilePatch, SegmentDef};
use sojourn_runtime::{Dispatch, NodeId, Workflow};
use sojourn_testkit::{bench_arg as arg, peak_rss_mib};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn updates_per_second(base: &str, concurrency: usize, seconds: u64, label: &str) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let started = Instant::now();
    let until = Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let http = http.clone();
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = w as u64;
            while started.elapsed() < until {
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/v1/profiles/bench-{}", n % 100_000))
                    .json(&json!({"attributes": {"plan": if n.is_multiple_of(3) { "pro" } else { "free" }, "n": n}, "email": format!("b{n}@example.com")}))
                    .send()
                    .await
                    .expect("request");
                assert!(r.status().is_success(), "{}", r.status());
                let _ = r.bytes().await;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                n += concurrency as u64;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    println!(
        "  {label}: {:.0} updates/s ({} in {secs:.1} s), p50 {:.2} ms, p99 {:.2} ms",
        lat.len() as f64 / secs,
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let profiles = arg("--profiles", 1_000_000);
    let seconds = arg("--seconds", 10);
    let concurrency = arg("--concurrency", 32) as usize;
    let (store, fresh) = sojourn_testkit::pg_store().await;
    let engine = Arc::new(
        Engine::start(
            store.clone(),
            Config {
                schedule_poll: Duration::from_millis(200),
                ..Config::default()
            },
        )
        .await
        .expect("engine"),
    );
    let api = sojourn_api::build(AppState::new(engine.clone(), AuthMode::Optional));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, api.router).await;
    });

    println!("1. profile updates through the API ({concurrency} clients, {seconds} s each):");
    updates_per_second(&base, concurrency, seconds, "no segment").await;
    for i in 0..10 {
        store
            .put_segment(
                "default",
                &format!("s{i}"),
                &SegmentDef::Expression(format!(
                    "attributes.plan == 'pro' && attributes.n % 10 == {i}"
                )),
                chrono::Utc::now(),
            )
            .await
            .expect("segment");
    }
    updates_per_second(&base, concurrency, seconds, "ten segments").await;
    // Their backfills (over phase 1's profiles) end before phase 2 begins:
    // the backfill timed below is one segment's alone.
    loop {
        let busy = store
            .list_segments("default")
            .await
            .expect("segments")
            .iter()
            .any(|s| s.backfill_after.is_some());
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!("2. a segment backfilled over {profiles} profiles:");
    let t = Instant::now();
    let mut written = 0u64;
    while written < profiles {
        let n = (profiles - written).min(1_000);
        let batch: Vec<(String, ProfilePatch)> = (written..written + n)
            .map(|i| {
                (
                    format!("p{i:08}"),
                    ProfilePatch {
                        attributes: Some(
                            json!({"plan": if i.is_multiple_of(4) { "pro" } else { "free" }, "orders": i % 50})
                                .as_object()
                                .expect("object")
                                .clone(),
                        ),
                        ..ProfilePatch::default()
                    },
                )
            })
            .collect();
        store
            .write_profiles("default", &batch, false, chrono::Utc::now())
            .await
            .expect("profiles");
        written += n;
    }
    println!(
        "  {profiles} profiles written by the store in batches of 1,000 (ten segments kept up to date): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Statistics for the planner, as autovacuum would make them a little
    // later (a fresh bulk load has none).
    sqlx::query("ANALYZE")
        .execute(store.pool())
        .await
        .expect("analyze");
    let rss_before = peak_rss_mib();
    let t = Instant::now();
    store
        .put_segment(
            "default",
            "big-spenders",
            &SegmentDef::Expression("attributes.plan == 'pro' && attributes.orders > 25".into()),
            chrono::Utc::now(),
        )
        .await
        .expect("segment");
    let members = loop {
        let s = store
            .get_segment("default", "big-spenders")
            .await
            .expect("get")
            .expect("segment");
        if s.backfill_after.is_none() {
            break s.members;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let secs = t.elapsed().as_secs_f64();
    println!(
        "  backfill: {secs:.1} s ({:.0} profiles/s), {members} members; peak RSS {rss_before:.0} MiB before, {:.0} MiB after",
        profiles as f64 / secs,
        peak_rss_mib()
    );

    println!("3. the send-time checks, per message (batches of 256):");
    let wf = Workflow::from_value(json!({
        "key": "hold",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "wait", "type": "wait_for_event", "config": {"event": "never"}},
            {"id": "end", "type": "exit"},
        ],
        "edges": [{"from": "start", "to": "wait"}, {"from": "wait", "to": "end", "branch": "event"}]
    }))
    .expect("workflow");
    engine.deploy(&wf).await.expect("deploy");
    let mut ids = Vec::new();
    for i in 0..256 {
        let subject = format!("p{i:08}");
        ids.push(
            engine
                .start_execution(StartRequest {
                    namespace: None,
                    workflow: "hold".into(),
                    version: None,
                    input: json!({}),
                    subject: Some(subject),
                    timezone: None,
                    idempotency_key: None,
                })
                .await
                .expect("start")
                .id,
        );
    }
    let emails: Vec<(String, ProfilePatch)> = (0..256)
        .map(|i| {
            (
                format!("p{i:08}"),
                ProfilePatch {
                    email: Some(Some(format!("p{i}@example.com"))),
                    ..ProfilePatch::default()
                },
            )
        })
        .collect();
    store
        .write_profiles("default", &emails, false, chrono::Utc::now())
        .await
        .expect("emails");
    let audience = Audience::new(AudienceConfig {
        unsubscribe_key: Some("k".repeat(40).into()),
        public_url: Some("https://s.example".into()),
        ..AudienceConfig::default()
    });
    let dispatches = |to_subject: bool| -> Vec<Dispatch> {
        (0..256)
            .map(|i| Dispatch {
                node: NodeId::new("mail"),
                action: "email.send".into(),
                attempt: 1,
                idempotency_key: format!("{}/mail/1", ids[i]),
                inputs: json!({
                    "to": if to_subject { "subject".to_owned() } else { format!("p{i}@example.com") },
                    "subject": "Hi", "text": "Hello", "category": "news"}),
                timeout_ms: 30_000,
                frequency_caps: None,
        via: None,
            })
            .collect()
    };
    let measure = |label: &'static str, ds: Vec<Dispatch>| {
        let store = store.clone();
        let ids = ids.clone();
        let audience = audience.clone();
        async move {
            let jobs: Vec<Job<'_>> = ids
                .iter()
                .zip(&ds)
                .map(|(id, d)| Job {
                    execution_id: id.as_str(),
                    dispatch: d,
                })
                .collect();
            let rounds = 40;
            let t = Instant::now();
            let mut sent = 0;
            for _ in 0..rounds {
                let plans = plan(&store, &audience, Channel::Email, &jobs, chrono::Utc::now())
                    .await
                    .expect("plan");
                sent += plans
                    .iter()
                    .filter(|p| matches!(p, Plan::Send { .. }))
                    .count();
            }
            let per = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds * 256);
            println!(
                "  {label}: {per:.1} µs per message ({sent} of {} may go)",
                rounds * 256
            );
        }
    };
    {
        // Of which the one read of the batch's audience.
        let refs: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
        let addresses: Vec<String> = (0..256).map(|i| format!("p{i}@example.com")).collect();
        let t = Instant::now();
        for _ in 0..40 {
            store
                .audience_of("email", &refs, &addresses)
                .await
                .expect("audience");
        }
        println!(
            "  (the batch's audience read alone: {:.1} µs per message)",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(40 * 256)
        );
    }
    measure("literal addresses, no cap", dispatches(false)).await;
    measure("to: subject, profiles and preferences", dispatches(true)).await;
    store
        .put_frequency_caps(
            "default",
            &[FrequencyCap {
                channel: "email".into(),
                category: "*".into(),
                max_sends: 1_000_000,
                window_seconds: 86_400,
                on_cap: OnCap::Skip,
            }],
        )
        .await
        .expect("caps");
    measure(
        "to: subject, with a frequency cap reserved",
        dispatches(true),
    )
    .await;

    engine.shutdown().await;
    fresh.cleanup(Some(&store)).await;
}
