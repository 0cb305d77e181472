//! `sojourn bench --http`: starts executions over HTTP against a running
//! node (`SOJOURN_URL`, `SOJOURN_API_KEY`) and prints figures.
//!
//! - closed loop (default): `--concurrency` clients start executions back
//!   to back for `--duration` seconds: the most starts per second;
//! - open loop (`--rate N`): one start every 1/N s whatever the answers do,
//!   latency measured from when each request was due (no coordinated
//!   omission): the latency at a given load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::Failure;
use crate::bench::percentile;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HttpBenchArgs {
    /// The node's address; several, comma-separated, spread the load over
    /// the nodes of a cluster.
    #[arg(long, env = "SOJOURN_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    #[arg(long, env = "SOJOURN_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
    /// Open loop at this many starts per second (else closed loop).
    #[arg(long)]
    pub(crate) rate: Option<u32>,
    /// Run the reference journey end to end instead: spawn a node (`dev`
    /// on a fresh SQLite directory, `serve` on a fresh PostgreSQL schema),
    /// start `--executions` journeys over HTTP, `--concurrency` in flight,
    /// then `--unloaded` one at a time, and print latency, throughput,
    /// timer lateness, transactions and CPU per journey, and peak RSS.
    #[arg(long, value_enum, requires = "http")]
    pub(crate) spawn: Option<crate::journey_bench::Spawn>,
    /// With `--spawn`: the node's binary (default: this one), to compare
    /// two builds in one run.
    #[arg(long, requires = "spawn")]
    pub(crate) node_bin: Option<std::path::PathBuf>,
    /// With `--spawn serve`: the Redis the node leases through.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis_url: String,
    /// With `--spawn serve`: no Redis (the node runs alone).
    #[arg(long, requires = "spawn")]
    pub(crate) no_redis: bool,
}

const WORKFLOW: &str = "bench-http-start";

fn workflow() -> Value {
    json!({
        "key": WORKFLOW,
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "score", "type": "function", "config": {"assign": [{"var": "n", "expression": "input.n * 2"}]}},
            {"id": "done", "type": "exit"}
        ],
        "edges": [
            {"from": "start", "to": "score"},
            {"from": "score", "to": "done"}
        ]
    })
}

struct Target {
    http: reqwest::Client,
    /// `/v1/executions` of each node.
    urls: Vec<String>,
    key: Option<String>,
}

impl Target {
    async fn start(&self, n: u64) -> Result<(), String> {
        let url = &self.urls[(n % self.urls.len() as u64) as usize];
        let mut req = self
            .http
            .post(url)
            .json(&json!({"workflow": WORKFLOW, "input": {"n": n}}));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.bytes().await;
        if status.as_u16() == 201 {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

pub(crate) async fn run(args: HttpBenchArgs, concurrency: usize) -> Result<(), Failure> {
    let bases: Vec<String> = args
        .url
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let base = bases
        .first()
        .cloned()
        .ok_or_else(|| Failure::Invalid("--url: give at least one address".into()))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(64))
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")?;
    // Deploy the benchmark's workflow.
    let mut apply = http.post(format!("{base}/v1/workflows")).json(&json!({
        "key": WORKFLOW, "definition": workflow(), "publish": true
    }));
    if let Some(k) = &args.api_key {
        apply = apply.bearer_auth(k);
    }
    let resp = apply
        .send()
        .await
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot reach {base}: {e}")))?;
    let status = resp.status().as_u16();
    if status != 201 && status != 409 {
        let text = resp.text().await.unwrap_or_default();
        return Err(Failure::Runtime(anyhow::anyhow!(
            "deploying {WORKFLOW}: HTTP {status}: {text}"
        )));
    }
    let target = Arc::new(Target {
        http,
        urls: bases.iter().map(|b| format!("{b}/v1/executions")).collect(),
        key: args.api_key.clone(),
    });
    // Warm up connections.
    for i in 0..concurrency.min(64) as u64 {
        let _ = target.start(i).await;
    }
    let duration = Duration::from_secs(args.duration.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    match args.rate {
        None => {
            for w in 0..concurrency.max(1) {
                let t = target.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = Vec::new();
                    let mut n = w as u64;
                    while started.elapsed() < duration {
                        let t0 = Instant::now();
                        match t.start(n).await {
                            Ok(()) => lat.push(t0.elapsed().as_secs_f64() * 1e3),
                            Err(e) => errors.push(e),
                        }
                        n += concurrency.max(1) as u64;
                    }
                    (lat, errors)
                }));
            }
        }
        Some(rate) => {
            let rate = rate.max(1);
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
            let total = (f64::from(rate) * duration.as_secs_f64()) as u64;
            for i in 0..total {
                let due = started + interval.mul_f64(i as f64);
                tokio::time::sleep_until(due.into()).await;
                let t = target.clone();
                tasks.push(tokio::spawn(async move {
                    let r = t.start(i).await;
                    let ms = due.elapsed().as_secs_f64() * 1e3;
                    match r {
                        Ok(()) => (vec![ms], Vec::new()),
                        Err(e) => (Vec::new(), vec![e]),
                    }
                }));
            }
        }
    }
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (l, e) = t.await.context("joining a load task")?;
        lat.extend(l);
        errors.extend(e);
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let mode = match args.rate {
        Some(r) => format!("open loop at {r}/s"),
        None => format!("closed loop, {concurrency} concurrent"),
    };
    println!(
        "HTTP starts against {} ({mode}, {:.1} s):",
        bases.join(", "),
        elapsed
    );
    println!(
        "  {} started, {} errors: {:.0} starts/s",
        lat.len(),
        errors.len(),
        lat.len() as f64 / elapsed
    );
    println!(
        "  latency p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    if let Some(e) = errors.first() {
        println!("  first error: {e}");
    }
    report_completion(&target, &bases).await;
    Ok(())
}

/// Waits (up to 60 s) until the nodes' metrics count as many executions of
/// the benchmark's workflow completed as started, and says so.
async fn report_completion(target: &Target, bases: &[String]) {
    let Ok(id) = workflow_id(target, &bases[0]).await else {
        println!("  (cannot read the workflow: completion not checked)");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut started = 0.0;
        let mut completed = 0.0;
        for base in bases {
            let mut req = target.http.get(format!("{base}/metrics"));
            if let Some(k) = &target.key {
                req = req.bearer_auth(k);
            }
            let Ok(text) = async { req.send().await?.error_for_status()?.text().await }.await
            else {
                println!("  (cannot read {base}/metrics: completion not checked)");
                return;
            };
            started += series(&text, "sojourn_executions_started_total", &id);
            completed += series(&text, "sojourn_executions_completed_total", &id);
        }
        if completed >= started {
            println!("  all {started:.0} started executions completed");
            return;
        }
        if Instant::now() > deadline {
            println!("  {completed:.0} of {started:.0} started executions completed after 60 s");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn workflow_id(target: &Target, base: &str) -> Result<String, reqwest::Error> {
    let mut req = target.http.get(format!("{base}/v1/workflows/{WORKFLOW}"));
    if let Some(k) = &target.key {
        req = req.bearer_auth(k);
    }
    let v: Value = req.send().await?.error_for_status()?.json().await?;
    Ok(v.get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned())
}

/// The value of a counter's series for one workflow.
pub(crate) fn series(text: &str, name: &str, workflow: &str) -> f64 {
    let prefix = format!("{name}{{workflow=\"{workflow}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}
