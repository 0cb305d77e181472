//! `sojourn bench --http --spawn dev|serve`: the reference journey end to
//! end, as a service sees it. The bench spawns a node (this binary, or
//! `--node-bin` to compare builds in one run) on a fresh store, runs the
//! sink its two actions call, starts journeys over HTTP from this process
//! and reads when each finished from the node's own timestamps.
//!
//! Figures: journeys/s and latency (finished_at − created_at − the 1 s
//! delay) loaded (`--concurrency` starts in flight) and unloaded (one at a
//! time, each started with `?wait=`), the node's timer lateness, PostgreSQL
//! transactions per journey, CPU per journey of the node and PostgreSQL
//! together, and the node's peak RSS.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sojourn_persistence::PgStore;

use crate::Failure;
use crate::bench::{BenchArgs, percentile, proc_status_mib, reference_json, sink};
use crate::http_bench::series;

/// What `--spawn` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Spawn {
    /// `sojourn dev` on a fresh SQLite directory.
    Dev,
    /// `sojourn serve` on a fresh PostgreSQL schema (and Redis unless
    /// `--no-redis`).
    Serve,
}

const WORKFLOW: &str = "bench-reference";
/// Linux's `USER_HZ`: the unit of the CPU times in `/proc/PID/stat`.
const CLOCK_TICKS: f64 = 100.0;
/// A PostgreSQL backend publishes its transaction counts at the latest
/// 10 s after it went idle (PostgreSQL 15): counts are read this long after
/// a phase ends.
const PG_STATS_DELAY: Duration = Duration::from_secs(11);
/// How often the bench reads the node's metrics while waiting for the
/// journeys to finish (each read is a query of the node's store).
const COMPLETION_POLL: Duration = Duration::from_millis(500);

/// A spawned node, killed when dropped.
struct Node {
    child: Child,
    base: String,
    key: Option<String>,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn free_port() -> Result<u16, Failure> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("free port")?.port())
}

/// The URL of `schema` inside the database at `url`.
fn schema_url(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

fn node_command(bin: &Path, log: &Path) -> Result<Command, Failure> {
    let mut cmd = Command::new(bin);
    // The node reads SOJOURN_* settings: it gets only those given here,
    // and the engine's tunables (`SOJOURN_ENGINE__*`), to compare them.
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("SOJOURN_") && !name.starts_with("SOJOURN_ENGINE__") {
            cmd.env_remove(k);
        }
    }
    let file = std::fs::File::create(log).context("the node's log file")?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .env("SOJOURN_LOG", "warn");
    Ok(cmd)
}

/// A fresh schema for `serve`, and the bench's own connection to it.
struct Schema {
    pg: PgStore,
    name: String,
    /// The node's database URL (inside the schema).
    url: String,
}

async fn spawn_node(
    spawn: Spawn,
    bin: &Path,
    dir: &Path,
    args: &BenchArgs,
    schema: Option<&Schema>,
) -> Result<Node, Failure> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let log = dir.join("node.log");
    let mut cmd = node_command(bin, &log)?;
    let key = match schema {
        None => {
            cmd.args(["dev", "--listen", &listen, "--data"])
                .arg(dir.join("data"));
            None
        }
        Some(schema) => {
            // The URL (and any password in it) by environment, not argv.
            let out = node_command(bin, &dir.join("keys.log"))?
                .args([
                    "keys",
                    "create",
                    "--namespace",
                    "bench",
                    "--scopes",
                    "admin",
                ])
                .env("SOJOURN_DATABASE_URL", &schema.url)
                .stdout(Stdio::piped())
                .output()
                .context("creating an API key")?;
            if !out.status.success() {
                return Err(Failure::Runtime(anyhow!(
                    "`{} keys create` failed: {}",
                    bin.display(),
                    std::fs::read_to_string(dir.join("keys.log")).unwrap_or_default()
                )));
            }
            cmd.args(["serve", "--listen", &listen])
                .env("SOJOURN_DATABASE_URL", &schema.url)
                .env("SOJOURN_NODE_ID", format!("bench-{}", std::process::id()))
                .env("SOJOURN_HTTP__ALLOW", "127.0.0.1");
            if !args.http_args.no_redis {
                cmd.env("SOJOURN_REDIS_URL", &args.http_args.redis_url);
            }
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
    };
    debug_assert_eq!(spawn == Spawn::Serve, key.is_some());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let node = Node {
        child,
        base: format!("http://{listen}"),
        key,
        log,
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", node.base)).send().await
            && r.status().is_success()
        {
            return Ok(node);
        }
        if Instant::now() > deadline {
            return Err(Failure::Runtime(anyhow!(
                "the node never became ready; its log:\n{}",
                node.log_tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU seconds used so far by one process.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name (in parentheses): utime and stime are the
    // 12th and 13th fields.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / CLOCK_TICKS
}

/// CPU seconds used so far by every PostgreSQL process on this machine.
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("postgres"))
        })
        .map(cpu_seconds)
        .sum()
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn json(&self, r: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        let resp = r.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, v))
    }

    async fn start(&self, n: u64, wait: bool) -> Result<(u16, Value), String> {
        let path = if wait {
            "/v1/executions?wait=30s"
        } else {
            "/v1/executions"
        };
        self.json(
            self.req(reqwest::Method::POST, path)
                .json(&json!({"workflow": WORKFLOW, "input": {"n": n}})),
        )
        .await
    }

    /// Starts one journey and waits for its end: with `?wait=` when the
    /// node has it, else (an older build) by reading it every 2 ms.
    async fn start_and_wait(&self, n: u64, attach: &mut bool) -> Result<Value, String> {
        let (status, v) = self.start(n, *attach).await?;
        match status {
            200 if *attach => return Ok(v),
            // A build without `?wait=` ignores it.
            201 => *attach = false,
            _ => return Err(format!("HTTP {status}: {v}")),
        }
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, v) = self
                .json(self.req(reqwest::Method::GET, &format!("/v1/executions/{id}")))
                .await?;
            if matches!(
                v["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(format!("{id} not finished after 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn metrics(&self) -> Result<String, String> {
        self.req(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())
    }
}

/// A journey's latency excluding its 1 s delay, in ms, and its times.
struct Timing {
    created: DateTime<Utc>,
    finished: DateTime<Utc>,
}

impl Timing {
    /// From a listing's item (`finished_at`) or an execution's whole
    /// state (which has none: a finished one was last updated when it
    /// finished).
    fn of(v: &Value) -> Option<(Timing, bool)> {
        let t = |k: &str| v[k].as_str()?.parse::<DateTime<Utc>>().ok();
        Some((
            Timing {
                created: t("created_at")?,
                finished: t("finished_at").or_else(|| t("updated_at"))?,
            },
            v["status"] == "completed",
        ))
    }

    fn ms(&self) -> f64 {
        (self.finished - self.created)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1e3
            - 1000.0
    }
}

fn line(label: &str, ms: &mut [f64]) {
    ms.sort_by(f64::total_cmp);
    println!(
        "  {label}: p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(ms, 0.50),
        percentile(ms, 0.95),
        percentile(ms, 0.99),
        percentile(ms, 1.0)
    );
}

/// The timer lateness histogram's count, count within 1 s, and the
/// bucket bounds holding its p50 and p99 (in ms).
fn lateness(metrics: &str) -> (f64, f64, f64, f64) {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("sojourn_timer_lateness_seconds_bucket{")?;
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = rest.rsplit(' ').next()?.trim().parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let within = buckets.iter().find(|b| b.0 >= 1.0).map_or(0.0, |b| b.1);
    let at = |q: f64| {
        buckets
            .iter()
            .find(|b| b.1 >= q * total)
            .map_or(f64::NAN, |b| b.0 * 1e3)
    };
    (total, within, at(0.5), at(0.99))
}

/// Pages through the node's executions of the benchmark's workflow and
/// returns the timings of those in `ids`, and how many of them failed.
async fn timings(client: &Client, ids: &HashSet<String>) -> Result<(Vec<Timing>, usize), Failure> {
    let mut out = Vec::with_capacity(ids.len());
    let mut failed = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/executions?workflow={WORKFLOW}&limit=500");
        if let Some(c) = &cursor {
            path.push_str("&cursor=");
            path.push_str(c);
        }
        let (status, page) = client
            .json(client.req(reqwest::Method::GET, &path))
            .await
            .map_err(|e| Failure::Runtime(anyhow!("listing executions: {e}")))?;
        if status != 200 {
            return Err(Failure::Runtime(anyhow!(
                "listing executions: HTTP {status}: {page}"
            )));
        }
        for item in page["items"].as_array().into_iter().flatten() {
            if !item["id"].as_str().is_some_and(|id| ids.contains(id)) {
                continue;
            }
            match Timing::of(item) {
                Some((t, true)) => out.push(t),
                _ => failed += 1,
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok((out, failed)),
        }
    }
}

async fn committed(pg: Option<&PgStore>) -> Option<i64> {
    pg?.committed_transactions().await.ok()
}

/// Runs the reference journey end to end against a spawned node.
pub(crate) async fn run(args: &BenchArgs, spawn: Spawn) -> Result<(), Failure> {
    let bin = match &args.http_args.node_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding this binary")?,
    };
    let dir = std::env::temp_dir().join(format!("sojourn-bench-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("temp dir")?;
    let schema = match spawn {
        Spawn::Dev => None,
        Spawn::Serve => {
            let admin = args
                .database_url
                .clone()
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let name = format!("sojourn_bench_{}", std::process::id());
            match PgStore::connect_creating_schema(&admin, &name, 2).await {
                Ok(pg) => Some(Schema {
                    pg,
                    url: schema_url(&admin, &name),
                    name,
                }),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(Failure::Runtime(
                        anyhow!(e).context("connecting to PostgreSQL"),
                    ));
                }
            }
        }
    };
    // Listening from here on, so a signal never takes the default action
    // (which would leave the node, the schema and the directory behind).
    let interrupted = interrupted()?;
    // The node is killed when `work` ends or is dropped (Ctrl-C, SIGTERM);
    // the schema and the directory go after it in every case.
    let work = async {
        let node = spawn_node(spawn, &bin, &dir, args, schema.as_ref()).await?;
        let result = drive(&node, schema.as_ref().map(|s| &s.pg), args, spawn).await;
        if result.is_err() {
            eprintln!("the node's log ends:\n{}", node.log_tail());
        }
        result
    };
    let result = tokio::select! {
        r = work => r,
        () = interrupted => Err(Failure::Runtime(anyhow!("interrupted"))),
    };
    if let Some(schema) = schema {
        let _ = schema.pg.drop_schema(&schema.name).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Ctrl-C or SIGTERM, listened for from the call on.
fn interrupted() -> Result<impl std::future::Future<Output = ()>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

async fn drive(
    node: &Node,
    pg: Option<&PgStore>,
    args: &BenchArgs,
    spawn: Spawn,
) -> Result<(), Failure> {
    let (sink_base, hits) = sink().await?;
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency.max(64))
            .timeout(Duration::from_secs(60))
            .build()
            .context("HTTP client")?,
        base: node.base.clone(),
        key: node.key.clone(),
    });
    let (status, v) = client
        .json(
            client
                .req(reqwest::Method::POST, "/v1/workflows")
                .json(&json!({
                    "key": WORKFLOW, "definition": reference_json(&sink_base), "publish": true
                })),
        )
        .await
        .map_err(|e| Failure::Runtime(anyhow!("deploying the reference journey: {e}")))?;
    if status != 201 {
        return Err(Failure::Runtime(anyhow!(
            "deploying the reference journey: HTTP {status}: {v}"
        )));
    }
    let workflow_id = v["id"].as_str().unwrap_or_default().to_owned();
    let what = match spawn {
        Spawn::Dev => "sojourn dev (SQLite)".to_owned(),
        Spawn::Serve if args.http_args.no_redis => "sojourn serve (PostgreSQL, no Redis)".into(),
        Spawn::Serve => "sojourn serve (PostgreSQL and Redis)".into(),
    };
    println!(
        "sojourn bench --http — reference journey end to end on {what}, node {}",
        bin_label(args)
    );
    // Warm up: connections from the node to the sink and the store.
    let mut attach = true;
    for n in 0..3 {
        client
            .start_and_wait(n, &mut attach)
            .await
            .map_err(|e| Failure::Runtime(anyhow!("warm-up journey: {e}")))?;
    }
    let mut journeys = 3u64;

    // Loaded: `executions` journeys, `concurrency` starts in flight.
    let n = args.executions as u64;
    // PostgreSQL's CPU (every postgres process of the machine: the
    // backends, the WAL writer) counts only when the node uses it.
    let pg_cpu = || {
        if pg.is_some() {
            postgres_cpu_seconds()
        } else {
            0.0
        }
    };
    let xact_before = committed(pg).await;
    let cpu_before = (cpu_seconds(node.pid()), pg_cpu());
    let cpu_bench_before = cpu_seconds(std::process::id());
    let started_at = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut starters = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, next) = (client.clone(), next.clone());
        starters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut ms = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok((ids, ms));
                }
                let t0 = Instant::now();
                match client.start(1000 + i, false).await {
                    Ok((201, v)) => {
                        ms.push(t0.elapsed().as_secs_f64() * 1e3);
                        ids.push(v["id"].as_str().unwrap_or_default().to_owned());
                    }
                    Ok((status, v)) => return Err(format!("HTTP {status}: {v}")),
                    Err(e) => return Err(e),
                }
            }
        }));
    }
    let mut ids = HashSet::with_capacity(args.executions);
    let mut start_ms = Vec::with_capacity(args.executions);
    for s in starters {
        let (i, ms) = s
            .await
            .context("joining a starter")?
            .map_err(|e| Failure::Runtime(anyhow!("starting a journey: {e}")))?;
        ids.extend(i);
        start_ms.extend(ms);
    }
    journeys += n;
    let start_secs = started_at.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let text = client
            .metrics()
            .await
            .map_err(|e| Failure::Runtime(anyhow!("reading /metrics: {e}")))?;
        let done = series(&text, "sojourn_executions_completed_total", &workflow_id)
            + series(&text, "sojourn_executions_failed_total", &workflow_id);
        if done >= journeys as f64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(Failure::Runtime(anyhow!(
                "{done} of {journeys} journeys finished after 900 s"
            )));
        }
        tokio::time::sleep(COMPLETION_POLL).await;
    }
    let cpu = (cpu_seconds(node.pid()) - cpu_before.0) + (pg_cpu() - cpu_before.1);
    let cpu_node = cpu_seconds(node.pid()) - cpu_before.0;
    // The load generator and the sink share the machine: their share says
    // how much of it the node had.
    let cpu_bench = cpu_seconds(std::process::id()) - cpu_bench_before;
    let rss_loaded = proc_status_mib(&node.pid().to_string(), "VmHWM");
    // Read before the counts settle: the listing's few queries (one per 500
    // journeys) count in the loaded phase, not in the idle window after it.
    let (loaded, failed) = timings(&client, &ids).await?;
    if pg.is_some() {
        tokio::time::sleep(PG_STATS_DELAY).await;
    }
    let xact_loaded = committed(pg).await;
    let first = loaded.iter().map(|t| t.created).min();
    let first_finished = loaded.iter().map(|t| t.finished).min();
    let last = loaded.iter().map(|t| t.finished).max();
    let span = match (first, last) {
        (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1e3,
        _ => f64::NAN,
    };
    println!(
        "loaded: {} journeys, {} starts in flight",
        args.executions, args.concurrency
    );
    println!(
        "  started   {:.0} journeys/s ({start_secs:.2} s to start all)",
        n as f64 / start_secs
    );
    println!(
        "  completed {:.0} journeys/s (first created to last finished {span:.2} s, incl. the 1 s delay); {} completed, {failed} failed",
        loaded.len() as f64 / span,
        loaded.len()
    );
    // Past the first second nothing can finish (every journey sleeps 1 s):
    // the rate at which they finish once they do is the node's steady pace.
    if let (Some(a), Some(b)) = (first_finished, last)
        && b > a
    {
        let finishing = (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
        println!(
            "  finishing {:.0} journeys/s (first to last finished {finishing:.2} s)",
            loaded.len().saturating_sub(1) as f64 / finishing
        );
    }
    line("start request", &mut start_ms);
    let mut loaded_ms: Vec<f64> = loaded.iter().map(Timing::ms).collect();
    line("latency excl. the delay", &mut loaded_ms);
    let p99 = percentile(&loaded_ms, 0.99);
    let slowest = percentile(&loaded_ms, 1.0);
    println!(
        "  slowest journey {slowest:.1} ms, {:.1} × p99: {}",
        slowest / p99,
        if slowest <= 2.0 * p99 {
            "no stall"
        } else {
            "STALLED"
        }
    );
    println!(
        "  CPU per journey {:.2} ms (node {:.2} ms, PostgreSQL {:.2} ms); the bench's client and sink {:.2} ms more",
        cpu * 1e3 / n as f64,
        cpu_node * 1e3 / n as f64,
        (cpu - cpu_node) * 1e3 / n as f64,
        cpu_bench * 1e3 / n as f64
    );
    if let (Some(a), Some(b)) = (xact_before, xact_loaded) {
        println!(
            "  PostgreSQL transactions per journey {:.2} ({} in all, background included)",
            (b - a) as f64 / n as f64,
            b - a
        );
    }
    println!("  node peak RSS {rss_loaded:.1} MiB");

    // Unloaded: one journey at a time.
    // The idle node's own transactions (polls), to take out of them.
    let (idle_rate, xact_before) = match pg {
        Some(_) => {
            tokio::time::sleep(PG_STATS_DELAY).await;
            let b = committed(pg).await;
            let rate = xact_loaded
                .zip(b)
                .map(|(a, b)| (b - a) as f64 / PG_STATS_DELAY.as_secs_f64());
            (rate, b)
        }
        None => (None, None),
    };
    let unloaded_at = Instant::now();
    let mut unloaded_ms = Vec::with_capacity(args.unloaded);
    let mut round_ms = Vec::with_capacity(args.unloaded);
    for i in 0..args.unloaded as u64 {
        let t0 = Instant::now();
        let v = client
            .start_and_wait(1_000_000 + i, &mut attach)
            .await
            .map_err(|e| Failure::Runtime(anyhow!("unloaded journey: {e}")))?;
        round_ms.push(t0.elapsed().as_secs_f64() * 1e3 - 1000.0);
        match Timing::of(&v) {
            Some((t, true)) => unloaded_ms.push(t.ms()),
            _ => return Err(Failure::Runtime(anyhow!("unloaded journey ended: {v}"))),
        }
    }
    journeys += args.unloaded as u64;
    let unloaded_secs = unloaded_at.elapsed().as_secs_f64();
    if pg.is_some() {
        tokio::time::sleep(PG_STATS_DELAY).await;
    }
    let xact_unloaded = committed(pg).await;
    println!(
        "unloaded: {} journeys one at a time{}",
        args.unloaded,
        if attach {
            ", each started with ?wait="
        } else {
            " (the node has no ?wait=: read every 2 ms)"
        }
    );
    line("latency excl. the delay", &mut unloaded_ms);
    line("start to answer, minus 1 s", &mut round_ms);
    if let (Some(a), Some(b), Some(idle)) = (xact_before, xact_unloaded, idle_rate) {
        let secs = unloaded_secs + PG_STATS_DELAY.as_secs_f64();
        println!(
            "  PostgreSQL transactions per journey {:.2} (idle node's {idle:.1}/s taken out)",
            ((b - a) as f64 - idle * secs) / args.unloaded.max(1) as f64
        );
    }
    let text = client
        .metrics()
        .await
        .map_err(|e| Failure::Runtime(anyhow!("reading /metrics: {e}")))?;
    let (timers, within, p50, p99) = lateness(&text);
    println!(
        "timers: {timers:.0} fired for {journeys} journeys; lateness p50 ≤ {p50} ms, p99 ≤ {p99} ms; {:.0} more than 1 s late",
        timers - within
    );
    let sent = hits.load(Ordering::Relaxed);
    println!(
        "sink received {sent} requests for {journeys} journeys ({} expected); node peak RSS {:.1} MiB",
        journeys * 2,
        proc_status_mib(&node.pid().to_string(), "VmHWM")
    );
    Ok(())
}

fn bin_label(args: &BenchArgs) -> String {
    match &args.http_args.node_bin {
        Some(b) => b.display().to_string(),
        None => "this binary".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lateness_histogram_is_read_from_the_exposition() {
        let text = "\
# TYPE sojourn_timer_lateness_seconds histogram
sojourn_timer_lateness_seconds_bucket{le=\"0.005\"} 50
sojourn_timer_lateness_seconds_bucket{le=\"0.01\"} 98
sojourn_timer_lateness_seconds_bucket{le=\"1.0\"} 99
sojourn_timer_lateness_seconds_bucket{le=\"+Inf\"} 100
sojourn_timer_lateness_seconds_count 100
";
        let (total, within, p50, p99) = lateness(text);
        assert_eq!(total, 100.0);
        assert_eq!(within, 99.0);
        assert_eq!(p50, 5.0);
        assert_eq!(p99, 1000.0);
    }

    #[test]
    fn a_schema_goes_into_the_url_as_its_search_path() {
        assert_eq!(
            schema_url("postgres://p@h/db", "s_1"),
            "postgres://p@h/db?options=-c%20search_path%3Ds_1"
        );
        assert_eq!(
            schema_url("postgres://p@h/db?sslmode=disable", "s_1"),
            "postgres://p@h/db?sslmode=disable&options=-c%20search_path%3Ds_1"
        );
    }

    #[test]
    fn this_process_cpu_time_reads_from_proc() {
        let before = cpu_seconds(std::process::id());
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_seconds(std::process::id()) > before);
    }
}
