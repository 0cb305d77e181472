//! `sojourn bench`: the reference journey (`http.request` to a local sink →
//! delay 1 s → condition → `http.request` → exit) on a node run in-process,
//! with figures: executions/s started and completed, latency per journey
//! excluding its delay, timer lateness, transactions per journey, peak RSS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::routing::post;
use serde_json::json;
use sojourn_actors::{Config, Engine, StartRequest};
use sojourn_persistence::prelude::*;
use sojourn_persistence::{PgStore, SqliteStore};
use sojourn_runtime::{ExecutionId, Workflow};

use crate::Failure;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Journeys to run in the throughput phase.
    #[arg(long, default_value_t = 2000)]
    pub(crate) executions: usize,
    /// Concurrent starters in the throughput phase.
    #[arg(long, default_value_t = 50)]
    pub(crate) concurrency: usize,
    /// Journeys run one at a time first, for unloaded latency.
    #[arg(long, default_value_t = 50)]
    pub(crate) unloaded: usize,
    /// Then put this many executions to sleep on one delay, measure the
    /// node's memory while they sleep, and the lateness of their timers.
    #[arg(long, default_value_t = 0)]
    pub(crate) sleepers: usize,
    /// The sleepers' delay, in seconds (longer than it takes to start them).
    #[arg(long, default_value_t = 60)]
    pub(crate) sleep: u64,
    /// PostgreSQL URL: the bench runs in a schema of its own, dropped after.
    /// Without it, a SQLite file in a temporary directory.
    #[arg(long, env = "SOJOURN_DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// Instead: start executions over HTTP against a running node
    /// (`SOJOURN_URL`) and print starts/s and latency; with `--spawn`, run
    /// the reference journey end to end on a node of its own.
    #[arg(long)]
    pub(crate) http: bool,
    #[command(flatten)]
    pub(crate) http_args: crate::http_bench::HttpBenchArgs,
}

/// The reference journey's definition, its actions calling `base`.
pub(crate) fn reference_json(base: &str) -> serde_json::Value {
    json!({
        "key": "bench-reference",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "first", "type": "action", "config": {"action": "http.request",
                "inputs": {"url": format!("{base}/first"), "body": {"$expr": "input"}}}},
            {"id": "nap", "type": "delay", "config": {"duration": "1s"}},
            {"id": "check", "type": "condition", "config": {"expression": "nodes.first.output.status == 200"}},
            {"id": "second", "type": "action", "config": {"action": "http.request", "inputs": {"url": format!("{base}/second")}}},
            {"id": "done", "type": "exit"},
            {"id": "odd", "type": "exit"},
        ],
        "edges": [
            {"from": "start", "to": "first"},
            {"from": "first", "to": "nap", "branch": "success"},
            {"from": "nap", "to": "check"},
            {"from": "check", "to": "second", "branch": "true"},
            {"from": "check", "to": "odd", "branch": "false"},
            {"from": "second", "to": "done", "branch": "success"},
        ]
    })
}

fn reference(base: &str) -> Result<Workflow, Failure> {
    Workflow::from_value(reference_json(base))
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("reference workflow: {e:?}")))
}

pub(crate) async fn run(args: BenchArgs) -> Result<(), Failure> {
    if let Some(spawn) = args.http_args.spawn {
        return crate::journey_bench::run(&args, spawn).await;
    }
    if args.http {
        return crate::http_bench::run(args.http_args, args.concurrency).await;
    }
    let (base, hits) = sink().await?;
    let workflow = reference(&base)?;
    match &args.database_url {
        Some(url) => {
            let schema = format!("sojourn_bench_{}", std::process::id());
            let store = PgStore::connect_creating_schema(url, &schema, 16)
                .await
                .context("connecting to PostgreSQL")?;
            let result = bench(store.clone(), &workflow, &args, &hits, "PostgreSQL").await;
            let _ = store.drop_schema(&schema).await;
            result
        }
        None => {
            let dir = std::env::temp_dir().join(format!("sojourn-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir).context("temp dir")?;
            let store = SqliteStore::open(&dir.join("bench.db"))
                .await
                .context("opening SQLite")?;
            let result = bench(store, &workflow, &args, &hits, "SQLite").await;
            let _ = std::fs::remove_dir_all(&dir);
            result
        }
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn sleeper(seconds: u64) -> Result<Workflow, Failure> {
    Workflow::from_value(json!({
        "key": "bench-sleeper",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "nap", "type": "delay", "config": {"duration": format!("{seconds}s")}},
            {"id": "done", "type": "exit"},
        ],
        "edges": [{"from": "start", "to": "nap"}, {"from": "nap", "to": "done"}]
    }))
    .map_err(|e| Failure::Runtime(anyhow::anyhow!("sleeper workflow: {e:?}")))
}

/// A `/proc/self/status` figure (`VmRSS`, `VmHWM`) in MiB.
/// The sink the reference journey's actions call: counts what it receives.
pub(crate) async fn sink() -> Result<(String, Arc<AtomicU64>), Failure> {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/{*path}",
        post(move || {
            let c = counter.clone();
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                "{\"ok\":true}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the sink")?;
    let base = format!("http://{}", listener.local_addr().context("sink address")?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, hits))
}

/// A field of `/proc/<pid>/status` (`pid` a number or `self`), in MiB.
pub(crate) fn proc_status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| {
                    l.strip_prefix(field)
                        .is_some_and(|rest| rest.starts_with(':'))
                })
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn rss_mib() -> f64 {
    proc_status_mib("self", "VmRSS")
}

fn peak_rss_mib() -> f64 {
    proc_status_mib("self", "VmHWM")
}

/// N executions asleep at once: memory while they sleep, timer lateness
/// when they wake.
async fn sleepers<S: Store>(
    engine: &Arc<Engine<S>>,
    n: usize,
    seconds: u64,
    concurrency: usize,
) -> Result<(), Failure> {
    engine
        .deploy(&sleeper(seconds)?)
        .await
        .context("deploying the sleeper")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_rss = rss_mib();
    let before = engine.stats().snapshot();
    let lateness_before = engine.stats().lateness_samples().len();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut starters = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (engine, next) = (engine.clone(), next.clone());
        starters.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n as u64 {
                    break;
                }
                let req = StartRequest {
                    workflow: "bench-sleeper".into(),
                    input: json!({"n": i}),
                    ..StartRequest::default()
                };
                if let Err(e) = engine.start_execution(req).await {
                    return Err(e.to_string());
                }
            }
            Ok(())
        }));
    }
    for s in starters {
        s.await
            .map_err(|e| Failure::Runtime(e.into()))?
            .map_err(|e| Failure::Runtime(anyhow::anyhow!(e)))?;
    }
    let start_secs = started.elapsed().as_secs_f64();
    while engine.active_actors().await > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asleep_rss = rss_mib();
    println!(
        "sleepers: {n} executions on a {seconds} s delay, started in {start_secs:.1} s ({:.0}/s)",
        n as f64 / start_secs
    );
    println!(
        "  RSS with all {n} asleep (0 actors live): {asleep_rss:.1} MiB, {:+.1} MiB over the {before_rss:.1} MiB before",
        asleep_rss - before_rss
    );
    wait_completed(
        engine,
        before.completed + n as u64,
        Duration::from_secs(seconds + 600),
    )
    .await?;
    let mut lateness: Vec<f64> = engine.stats().lateness_samples().split_off(lateness_before);
    lateness.sort_by(f64::total_cmp);
    println!(
        "  {} timers due within {start_secs:.0} s: lateness p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        lateness.len(),
        percentile(&lateness, 0.50),
        percentile(&lateness, 0.99),
        lateness.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

async fn wait_completed<S: Store>(
    engine: &Engine<S>,
    target: u64,
    limit: Duration,
) -> Result<(), Failure> {
    let start = Instant::now();
    while engine.stats().snapshot().completed < target {
        if start.elapsed() > limit {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "only {} of {target} journeys completed within {limit:?}",
                engine.stats().snapshot().completed
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Latency per journey excluding its 1 s delay, in ms, from the stored
/// snapshots' own timestamps.
async fn latencies<S: Store>(engine: &Engine<S>, ids: &[ExecutionId]) -> Result<Vec<f64>, Failure> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(rec) = engine.execution(id).await.context("reading an execution")?
            && let Some(finished) = rec.snapshot.finished_at
        {
            let ms = (finished - rec.snapshot.created_at)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1000.0
                - 1000.0;
            out.push(ms);
        }
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

async fn bench<S: Store + Clone>(
    store: S,
    workflow: &Workflow,
    args: &BenchArgs,
    hits: &AtomicU64,
    backend: &str,
) -> Result<(), Failure> {
    let config = Config {
        node_id: format!("bench-{}", std::process::id()),
        timer_poll: Duration::from_millis(100),
        outbox_poll: Duration::from_millis(100),
        egress: sojourn_actors::egress::EgressPolicy::allowing_loopback(),
        // The starters wait for a place as long as it takes.
        start_wait: Duration::from_secs(24 * 3600),
        ..Config::default()
    };
    let engine = Arc::new(
        Engine::start(store, config)
            .await
            .context("starting the engine")?,
    );
    engine.stats().keep_lateness_samples();
    engine
        .deploy(workflow)
        .await
        .context("deploying the reference journey")?;
    let request = |i: usize| StartRequest {
        workflow: "bench-reference".into(),
        input: json!({"n": i}),
        ..StartRequest::default()
    };
    let idle_rss = peak_rss_mib();
    println!("sojourn bench — reference journey on {backend}, one node in-process");

    // Unloaded: one journey at a time.
    let mut unloaded_ids = Vec::new();
    for i in 0..args.unloaded {
        let before = engine.stats().snapshot().completed;
        let id = engine
            .start_execution(request(i))
            .await
            .context("start")?
            .id;
        wait_completed(&engine, before + 1, Duration::from_secs(30)).await?;
        unloaded_ids.push(id);
    }
    let unloaded = latencies(&engine, &unloaded_ids).await?;
    if !unloaded.is_empty() {
        println!(
            "unloaded latency (excl. the 1 s delay), {} journeys: p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms",
            unloaded.len(),
            percentile(&unloaded, 0.50),
            percentile(&unloaded, 0.95),
            percentile(&unloaded, 0.99)
        );
    }

    // Throughput: N journeys started by `concurrency` starters.
    let before = engine.stats().snapshot();
    let base_completed = before.completed;
    let started_at = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut starters = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (engine, next) = (engine.clone(), next.clone());
        let n = args.executions as u64;
        starters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let req = StartRequest {
                    workflow: "bench-reference".into(),
                    input: json!({"n": i}),
                    ..StartRequest::default()
                };
                match engine.start_execution(req).await {
                    Ok(c) => ids.push(c.id),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(ids)
        }));
    }
    let mut ids = Vec::with_capacity(args.executions);
    for s in starters {
        ids.extend(
            s.await
                .map_err(|e| Failure::Runtime(e.into()))?
                .map_err(|e| Failure::Runtime(anyhow::anyhow!(e)))?,
        );
    }
    let start_secs = started_at.elapsed().as_secs_f64();
    wait_completed(
        &engine,
        base_completed + args.executions as u64,
        Duration::from_secs(600),
    )
    .await?;
    let total_secs = started_at.elapsed().as_secs_f64();
    let after = engine.stats().snapshot();
    let loaded = latencies(&engine, &ids).await?;
    let mut lateness = engine.stats().lateness_samples();
    lateness.sort_by(f64::total_cmp);
    let n = args.executions as f64;
    println!(
        "throughput, {} journeys, {} concurrent starters:",
        args.executions, args.concurrency
    );
    println!(
        "  started   {:.0} executions/s ({start_secs:.2} s to start all)",
        n / start_secs
    );
    println!(
        "  completed {:.0} journeys/s (first start to last completion {total_secs:.2} s, incl. the 1 s delay)",
        n / total_secs
    );
    println!(
        "  latency excl. delay: p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms",
        percentile(&loaded, 0.50),
        percentile(&loaded, 0.95),
        percentile(&loaded, 0.99)
    );
    println!(
        "  timer lateness (fired − due), {} timers: p50 {:.1} ms  p99 {:.1} ms",
        lateness.len(),
        percentile(&lateness, 0.50),
        percentile(&lateness, 0.99)
    );
    println!(
        "  transactions per journey {:.2} (group commits {} for {} transitions; {:.1} transitions per transaction)",
        (after.transactions - before.transactions) as f64 / n,
        after.transactions - before.transactions,
        after.transitions - before.transitions,
        (after.transitions - before.transitions) as f64
            / (after.transactions - before.transactions).max(1) as f64
    );
    println!(
        "  sink received {} requests; repeated sends {}",
        hits.load(Ordering::Relaxed),
        after.actions_repeated
    );
    println!(
        "  peak RSS {:.1} MiB (at start {:.1} MiB)",
        peak_rss_mib(),
        idle_rss
    );
    if args.sleepers > 0 {
        sleepers(&engine, args.sleepers, args.sleep, args.concurrency).await?;
    }
    match Arc::try_unwrap(engine) {
        Ok(engine) => engine.shutdown().await,
        Err(_) => eprintln!("engine still shared; not shutting down cleanly"),
    }
    Ok(())
}
