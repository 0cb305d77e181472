//! The cluster, as operators run it: several `sojourn serve` processes on
//! loopback ports sharing one PostgreSQL schema and one Redis (a private
//! `redis-server` per test, so a test may flush and restart it), journeys
//! with delays and HTTP actions to a local sink, and nodes killed, paused,
//! restarted and drained while load runs. Every execution completes; the
//! sink receives every idempotency key, and a key arrives twice only where
//! the store recorded a re-send (a crash or a lost lease between a send and
//! the record of its result).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sojourn_persistence::prelude::*;
use sojourn_persistence::{ExecutionQuery, PgStore};
use sojourn_runtime::{ExecutionId, Status};
use sojourn_testkit::{PrivateRedis, Sink, database_url, free_port};

const LEASE_TTL_MS: u64 = 2_000;

/// One cluster at a time: each test runs several node processes, and the
/// machine has two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One `sojourn serve` process.
struct Node {
    id: String,
    port: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_sojourn"))
            .args(["serve", "--config", &self.config.display().to_string()])
            .env_remove("SOJOURN_DATABASE_URL")
            .env_remove("SOJOURN_REDIS_URL")
            .env_remove("SOJOURN_NODE_ID")
            .env_remove("SOJOURN_LISTEN")
            .env("SOJOURN_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn sojourn serve {}: {e}", self.id));
        self.child = Some(child);
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    fn kill9(&mut self) {
        self.signal("-KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    fn terminate(&mut self) -> bool {
        self.signal("-TERM");
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Nodes, their database schema and Redis.
struct Cluster {
    nodes: Mutex<Vec<Node>>,
    urls: Vec<String>,
    redis: Mutex<PrivateRedis>,
    store: PgStore,
    schema: String,
    key: String,
    http: reqwest::Client,
    dir: PathBuf,
}

impl Cluster {
    async fn start(name: &str, n: usize) -> Cluster {
        let schema = format!("sojourn_cluster_{name}_{}", std::process::id());
        let store = PgStore::connect_creating_schema(&database_url(), &schema, 4)
            .await
            .expect("PostgreSQL answers (scripts/test.sh starts it)");
        let sep = if database_url().contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}options=-c%20search_path%3D{schema}", database_url());
        let redis = PrivateRedis::start();
        let redis_url = redis.url();
        let dir =
            std::env::temp_dir().join(format!("sojourn-cluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let keys = Command::new(env!("CARGO_BIN_EXE_sojourn"))
            .args([
                "keys",
                "create",
                "--scopes",
                "admin",
                "--database-url",
                &url,
            ])
            .output()
            .expect("keys create");
        assert!(
            keys.status.success(),
            "{}",
            String::from_utf8_lossy(&keys.stderr)
        );
        let key = String::from_utf8_lossy(&keys.stdout).trim().to_owned();
        let mut nodes = Vec::new();
        for i in 0..n {
            let port = free_port();
            let id = format!("n{i}");
            let config = dir.join(format!("{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    "database_url = {url:?}\nredis_url = {redis_url:?}\nnode_id = {id:?}\nlisten = \"127.0.0.1:{port}\"\nlease_ttl_ms = {LEASE_TTL_MS}\n[http]\nallow = [\"127.0.0.0/8\"]\n"
                ),
            )
            .expect("config");
            let mut node = Node {
                id,
                port,
                config,
                child: None,
            };
            node.start();
            nodes.push(node);
        }
        let urls = nodes.iter().map(Node::url).collect();
        let c = Cluster {
            nodes: Mutex::new(nodes),
            urls,
            redis: Mutex::new(redis),
            store,
            schema,
            key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            dir,
        };
        for i in 0..n {
            c.wait_ready(i).await;
        }
        c
    }

    fn len(&self) -> usize {
        self.urls.len()
    }

    fn with_node<R>(&self, i: usize, f: impl FnOnce(&mut Node) -> R) -> R {
        let mut nodes = self.nodes.lock().expect("nodes");
        f(&mut nodes[i])
    }

    async fn wait_ready(&self, i: usize) {
        let url = format!("{}/readyz", self.urls[i]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {i} never became ready");
    }

    async fn post(
        &self,
        node: usize,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.urls[node]))
            .bearer_auth(&self.key)
            .json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    async fn get(&self, node: usize, path: &str) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}{path}", self.urls[node]))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        r.json::<Value>().await.map_err(|e| e.to_string())
    }

    /// Runs a client command against node 0; its standard output.
    fn cli(&self, args: &[&str]) -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_sojourn"))
            .args(args)
            .env("SOJOURN_URL", &self.urls[0])
            .env("SOJOURN_API_KEY", &self.key)
            .output()
            .expect("run sojourn");
        assert!(
            o.status.success(),
            "sojourn {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    async fn apply(&self, workflow: Value) {
        let (status, body) = self
            .post(
                0,
                "/v1/workflows",
                json!({"key": workflow["key"], "definition": workflow, "publish": true}),
                &[],
            )
            .await
            .expect("apply");
        assert_eq!(status, 201, "{body}");
    }

    /// Starts execution `i` (idempotently), on whichever node answers.
    async fn start_one(&self, workflow: &str, i: usize, prefer: usize) {
        let key = format!("load-{i}");
        for attempt in 0..100 {
            let node = (prefer + attempt) % self.len();
            match self
                .post(
                    node,
                    "/v1/executions",
                    json!({"workflow": workflow, "input": {"n": i}}),
                    &[("Idempotency-Key", &key)],
                )
                .await
            {
                Ok((200 | 201, _)) => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("could not start execution {i}");
    }

    async fn completed(&self) -> usize {
        self.with_status(Status::Completed).await.len()
    }

    async fn with_status(&self, status: Status) -> Vec<ExecutionId> {
        self.store
            .list_executions(&ExecutionQuery {
                namespace: "default".into(),
                status: Some(status),
                limit: 100_000,
                ..ExecutionQuery::default()
            })
            .await
            .expect("list")
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    async fn wait_all_completed(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let done = self.completed().await;
            if done == n {
                return;
            }
            if Instant::now() > deadline {
                let all = self
                    .store
                    .list_executions(&ExecutionQuery {
                        namespace: "default".into(),
                        limit: 100_000,
                        ..ExecutionQuery::default()
                    })
                    .await
                    .expect("list");
                let mut by: BTreeMap<String, usize> = BTreeMap::new();
                for e in &all {
                    *by.entry(e.status.as_str().to_owned()).or_default() += 1;
                }
                panic!("{done}/{n} completed at the deadline; by status: {by:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every key at least once; a repeat only where a re-send was recorded.
    async fn check_sink(&self, sink: &Sink, executions: usize, steps: &[&str]) -> usize {
        let keys: Vec<(String, Instant)> = sink
            .seen()
            .into_iter()
            .map(|s| (s.key().to_owned(), s.at))
            .collect();
        let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
        for (k, _) in &keys {
            *per_key.entry(k.clone()).or_default() += 1;
        }
        let exes: BTreeSet<String> = per_key
            .keys()
            .filter_map(|k| k.split('/').next().map(str::to_owned))
            .collect();
        assert_eq!(exes.len(), executions, "every execution sent its actions");
        for exe in &exes {
            for step in steps {
                assert!(
                    per_key.contains_key(&format!("{exe}/{step}/1")),
                    "{exe} never sent {step}"
                );
            }
        }
        assert_eq!(
            per_key.len(),
            executions * steps.len(),
            "one key per action"
        );
        let mut repeats = 0;
        for (key, n) in per_key.iter().filter(|(_, n)| **n > 1) {
            repeats += n - 1;
            let mut parts = key.split('/');
            let (exe, node) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let rows = self
                .store
                .node_executions(&ExecutionId::new(exe.to_owned()))
                .await
                .expect("nodes");
            let sends = rows
                .iter()
                .find(|r| r.node_id == node)
                .map_or(0, |r| r.sends);
            assert!(
                sends as usize >= *n,
                "{key} arrived {n} times but only {sends} send(s) were recorded"
            );
        }
        repeats
    }

    async fn finish(self) {
        for n in self.nodes.lock().expect("nodes").iter_mut() {
            n.kill9();
        }
        self.redis.lock().expect("redis").kill();
        let _ = self.store.drop_schema(&self.schema).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn journey(base: &str) -> Value {
    let retry = json!({"max_attempts": 20, "initial_backoff": "200ms", "max_backoff": "1s"});
    json!({
        "key": "cluster-journey",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "a", "type": "action", "config": {"action": "http.request",
                "inputs": {"url": format!("{base}/a")}, "retry": retry}},
            {"id": "nap", "type": "delay", "config": {"duration": "1s"}},
            {"id": "b", "type": "action", "config": {"action": "http.request",
                "inputs": {"url": format!("{base}/b")}, "retry": retry}},
            {"id": "done", "type": "exit", "config": {"outcome": "done"}}
        ],
        "edges": [
            {"from": "start", "to": "a"},
            {"from": "a", "to": "nap", "branch": "success"},
            {"from": "nap", "to": "b"},
            {"from": "b", "to": "done", "branch": "success"}
        ]
    })
}

/// Starts `n` executions over the nodes, `per_second` at most.
fn load(c: &Arc<Cluster>, n: usize, per_second: usize) -> tokio::task::JoinHandle<()> {
    let c = c.clone();
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        let started = Instant::now();
        for i in 0..n {
            let due = started + Duration::from_secs_f64(i as f64 / per_second as f64);
            tokio::time::sleep_until(due.into()).await;
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.start_one("cluster-journey", i, i).await;
            }));
        }
        for t in tasks {
            t.await.expect("start task");
        }
    })
}

/// A small deterministic generator (the seed is printed to reproduce a run).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}

async fn metric(c: &Cluster, node: usize, name: &str) -> f64 {
    let r = c
        .http
        .get(format!("{}/metrics", c.urls[node]))
        .bearer_auth(&c.key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("node {node} answers /metrics: {e}"));
    assert!(
        r.status().is_success(),
        "/metrics of node {node}: {}",
        r.status()
    );
    let text = r.text().await.expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_kill_9_of_one_node_at_a_time_under_load() {
    let _serial = SERIAL.lock().await;
    const N: usize = 2_000;
    let sink = Sink::start().await;
    let base = sink.url();
    let c = Arc::new(Cluster::start("kill", 3).await);
    c.apply(journey(&base)).await;
    let s = seed();
    eprintln!("kill test seed {s}");
    let mut rng = Lcg(s);
    let loader = load(&c, N, 200);
    let mut failover = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1_000 + rng.below(1_000))).await;
        let victim = rng.below(c.len() as u64) as usize;
        // What the victim holds when it dies: executions mid-journey.
        let killed_at = Instant::now();
        c.with_node(victim, Node::kill9);
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.with_node(victim, Node::start);
        c.wait_ready(victim).await;
        failover.push((victim, killed_at));
    }
    loader.await.expect("loader");
    c.wait_all_completed(N, Duration::from_secs(120)).await;
    let repeats = c.check_sink(&sink, N, &["a", "b"]).await;
    // Inputs did cross nodes (a result recorded by one node's worker for an
    // execution another node holds).
    let mut forwarded = 0.0;
    for i in 0..c.len() {
        forwarded += metric(&c, i, "sojourn_inputs_forwarded_total").await;
    }
    assert!(forwarded > 0.0, "no input was forwarded between nodes");
    eprintln!(
        "{N} executions completed through {} kill -9s; {forwarded} inputs forwarded; {repeats} repeated sends (each recorded)",
        failover.len()
    );
    let c = Arc::into_inner(c).expect("the loader is done");
    c.finish().await;
}

/// The failover figure: a node holding executions in flight (their actions
/// are slow) is killed; the time until the last of them has moved on,
/// elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_executions_resume_elsewhere() {
    let _serial = SERIAL.lock().await;
    const N: usize = 60;
    let sink = Sink::start().await;
    let base = sink.url();
    let c = Cluster::start("failover", 2).await;
    c.apply(journey(&base)).await;
    // Answers take 3 s: n0's actors wait for their first action's result.
    sink.delay(Duration::from_millis(3_000));
    for i in 0..N {
        c.start_one("cluster-journey", i, 0).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = metric(&c, 0, "sojourn_active_actors").await;
    assert!(held > 0.0, "n0 holds actors before it dies");
    let killed = Instant::now();
    c.with_node(0, Node::kill9);
    sink.delay(Duration::from_millis(0));
    // Every execution applies its first action's result on n1 (it leaves
    // `running` for the delay): it runs again, elsewhere.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stuck =
            c.with_status(Status::Running).await.len() + c.with_status(Status::Pending).await.len();
        if stuck == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stuck}/{N} still waiting for their action"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed.elapsed();
    eprintln!(
        "failover: the last of {N} executions of a node killed with kill -9 ran again elsewhere {:.2} s after the kill (lease TTL {:.1} s)",
        took.as_secs_f64(),
        LEASE_TTL_MS as f64 / 1000.0
    );
    c.wait_all_completed(N, Duration::from_secs(60)).await;
    c.check_sink(&sink, N, &["a", "b"]).await;
    c.finish().await;
}

/// Split brain: a node holding actors is paused (SIGSTOP) past its lease
/// TTL, another takes its executions over, then it resumes (SIGCONT): its
/// stale writes are fenced, its actors stop, and nothing is lost or doubled
/// beyond the recorded re-sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_that_lost_its_leases_is_fenced_when_it_resumes() {
    let _serial = SERIAL.lock().await;
    const N: usize = 60;
    let sink = Sink::start().await;
    let base = sink.url();
    let c = Cluster::start("split", 2).await;
    c.apply(journey(&base)).await;
    sink.delay(Duration::from_millis(1_500));
    for i in 0..N {
        c.start_one("cluster-journey", i, 0).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(metric(&c, 0, "sojourn_active_actors").await > 0.0);
    c.with_node(0, |n| n.signal("-STOP"));
    tokio::time::sleep(Duration::from_millis(LEASE_TTL_MS * 3)).await;
    sink.delay(Duration::from_millis(0));
    // n1 takes over while n0 sleeps.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.completed().await < N {
        assert!(Instant::now() < deadline, "n1 did not take over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent_before = sink.count();
    c.with_node(0, |n| n.signal("-CONT"));
    // n0 wakes with actors it no longer owns: they stop, fenced or told.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lost = metric(&c, 0, "sojourn_leases_lost_total").await;
        let fenced = metric(&c, 0, "sojourn_fenced_writes_total").await;
        if lost + fenced > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n0 never noticed it lost its leases"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(LEASE_TTL_MS)).await;
    assert_eq!(metric(&c, 0, "sojourn_active_actors").await, 0.0);
    // Still exactly N completed, each once.
    assert_eq!(c.completed().await, N);
    for id in c.with_status(Status::Completed).await {
        let journal = c.store.journal(&id, 0, 10_000).await.expect("journal");
        let ends = journal
            .iter()
            .filter(|r| r.entry.event.kind() == "completed")
            .count();
        assert_eq!(ends, 1, "{id} completed {ends} times");
    }
    // Everything was complete before n0 woke, so any request now would be
    // an action n0 dispatched after losing its leases: there is none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = sink.count() - sent_before;
    assert_eq!(after, 0, "n0 dispatched actions after it lost their leases");
    let repeats = c.check_sink(&sink, N, &["a", "b"]).await;
    eprintln!(
        "split brain: {after} requests after SIGCONT, {repeats} repeated sends (each recorded)"
    );
    c.finish().await;
}

/// Redis is flushed, then restarted empty, while journeys run: work stops
/// being activated while it is gone, resumes when it is back, and fencing
/// keeps every execution single.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flush_and_restart_under_load_lose_and_double_nothing() {
    let _serial = SERIAL.lock().await;
    const N: usize = 300;
    let sink = Sink::start().await;
    let base = sink.url();
    let c = Arc::new(Cluster::start("redis", 2).await);
    c.apply(journey(&base)).await;
    let loader = load(&c, N, 100);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    c.redis.lock().expect("redis").flushall();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    c.redis.lock().expect("redis").kill();
    // Readiness says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.http.get(format!("{}/readyz", c.urls[1])).send().await;
        if r.is_ok_and(|r| r.status().as_u16() == 503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never reported Redis down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    c.redis.lock().expect("redis").restart();
    loader.await.expect("loader");
    c.wait_all_completed(N, Duration::from_secs(120)).await;
    let repeats = c.check_sink(&sink, N, &["a", "b"]).await;
    // No process died: losing Redis delays work but repeats no send.
    assert_eq!(repeats, 0, "sends repeated although no node died");
    eprintln!("{N} executions completed through a FLUSHALL and a Redis restart");
    let c = Arc::into_inner(c).expect("the loader is done");
    c.finish().await;
}

/// A rolling restart (SIGTERM, which drains, then start again) of every
/// node while journeys run loses nothing; `cluster drain` empties a node
/// that keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_and_drain_under_load_lose_nothing() {
    let _serial = SERIAL.lock().await;
    const N: usize = 400;
    let sink = Sink::start().await;
    let base = sink.url();
    let c = Arc::new(Cluster::start("rolling", 3).await);
    c.apply(journey(&base)).await;
    let status = c.get(0, "/cluster").await.expect("cluster");
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    let table = c.cli(&["cluster", "status"]);
    for id in ["n0", "n1", "n2"] {
        assert!(table.contains(id), "{table}");
    }
    let loader = load(&c, N, 80);
    for i in 0..c.len() {
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            c.with_node(i, Node::terminate),
            "node {i} exits 0 on SIGTERM"
        );
        c.with_node(i, Node::start);
        c.wait_ready(i).await;
    }
    // Drain n2 with the CLI: it passivates and holds nothing.
    let out = c.cli(&["cluster", "drain", "n2"]);
    assert!(out.contains("drain requested"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.get(0, "/cluster").await.expect("cluster");
        let n2 = s["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["id"] == "n2").cloned())
            .unwrap_or(Value::Null);
        if n2["draining"] == true && n2["actors"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "n2 never drained: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loader.await.expect("loader");
    // More load after the drain, over every node, n2 included: n2 starts
    // nothing itself and takes no lease.
    let taken = metric(&c, 2, "sojourn_leases_taken_total").await;
    let mut more = Vec::new();
    for i in N..N + 60 {
        let c = c.clone();
        more.push(tokio::spawn(async move {
            c.start_one("cluster-journey", i, i).await;
        }));
    }
    for t in more {
        t.await.expect("start");
    }
    c.wait_all_completed(N + 60, Duration::from_secs(120)).await;
    assert_eq!(
        metric(&c, 2, "sojourn_active_actors").await,
        0.0,
        "a drained node holds nothing"
    );
    assert_eq!(
        metric(&c, 2, "sojourn_leases_taken_total").await,
        taken,
        "a drained node takes no lease"
    );
    let repeats = c.check_sink(&sink, N + 60, &["a", "b"]).await;
    eprintln!(
        "{N} executions completed through a rolling restart and a drain, and 60 more after it; {repeats} repeated sends (each recorded)"
    );
    let c = Arc::into_inner(c).expect("the loader is done");
    c.finish().await;
}

/// Attach across nodes: a request waiting on n0 (drained, so it runs
/// nothing) for an execution that finishes on n1 is woken by n1's
/// announcement, long before its wait runs out; and again after Redis
/// restarts (the nodes subscribe again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_one_node_is_woken_by_a_finish_on_another() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start("wait", 2).await;
    c.apply(json!({
        "key": "cluster-wait",
        "settings": {"subject": "input.user_id"},
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "wait", "type": "wait_for_event", "config": {"event": "go"}},
            {"id": "done", "type": "exit"}
        ],
        "edges": [
            {"from": "start", "to": "wait"},
            {"from": "wait", "to": "done", "branch": "event"}
        ]
    }))
    .await;
    let (status, body) = c
        .post(1, "/cluster/nodes/n0/drain", json!({}), &[])
        .await
        .expect("drain");
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.get(1, "/cluster").await.expect("cluster");
        let drained = s["nodes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["id"] == "n0" && n["draining"] == true));
        if drained {
            break;
        }
        assert!(Instant::now() < deadline, "n0 never drained: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Longer than the waits, so that a wait that runs out still answers.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    const WAIT_S: u64 = 30;
    for (round, user) in ["before", "after"].iter().enumerate() {
        if round == 1 {
            // Redis restarts, empty: both nodes subscribe again.
            {
                let mut redis = c.redis.lock().expect("redis");
                redis.kill();
                redis.restart();
            }
            c.wait_ready(1).await;
            // n0 is not ready (it is drained): until Redis answers it.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let r = c.http.get(format!("{}/readyz", c.urls[0])).send().await;
                let body = match r {
                    Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                let redis_ok = body["checks"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|ch| ch["name"] == "redis" && ch["ok"] == true));
                if redis_ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "n0 never reached Redis again: {body}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let (status, body) = c
            .post(
                1,
                "/v1/executions",
                json!({"workflow": "cluster-wait", "input": {"user_id": user}}),
                &[],
            )
            .await
            .expect("start");
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().expect("id").to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let e = c.get(1, &format!("/v1/executions/{id}")).await;
            if e.as_ref().is_ok_and(|e| e["status"] == "waiting") {
                break;
            }
            assert!(Instant::now() < deadline, "{id} never waited: {e:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let url = format!("{}/v1/executions/{id}?wait={WAIT_S}s", c.urls[0]);
        let before = Instant::now();
        let waiting = {
            let req = http.get(url).bearer_auth(&c.key);
            tokio::spawn(async move { req.send().await })
        };
        // The waiter is registered on n0 before the event is sent.
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&c, 0, "sojourn_waiters").await < 1.0 {
            assert!(Instant::now() < deadline, "the waiter never registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, body) = c
            .post(1, "/v1/events", json!({"name": "go", "key": user}), &[])
            .await
            .expect("event");
        assert_eq!(status, 202, "{body}");
        let r = waiting.await.expect("task").expect("the wait answers");
        let took = before.elapsed();
        assert_eq!(r.status().as_u16(), 200, "finished within the wait");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["status"], "completed", "{v}");
        assert!(
            took < Duration::from_secs(WAIT_S / 2),
            "round {round}: woken by the finish on n1, not by the end of the wait ({took:?})"
        );
        eprintln!("round {round}: the waiter on n0 answered {took:?} after it began");
        assert_eq!(metric(&c, 0, "sojourn_waiters").await, 0.0);
    }
    // Everything ran on n1; n0 only waited.
    assert_eq!(
        metric(&c, 0, "sojourn_executions_completed_total").await,
        0.0
    );
    assert_eq!(
        metric(&c, 1, "sojourn_executions_completed_total").await,
        2.0
    );
    c.finish().await;
}
