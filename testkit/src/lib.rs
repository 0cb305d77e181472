//! # sojourn-testkit
//!
//! The harness the test files share, so that each test says what it checks
//! and not how to stand up a server (development only; never a dependency
//! of a shipped crate):
//! - [`Sink`]: a local HTTP server that records every request and answers
//!   as told (success, failures first, a large body, a redirect, an echo of
//!   the request's headers), on any loopback address.
//! - [`pg_store`] / [`sqlite_store`]: a fresh store per test (a new
//!   PostgreSQL schema, a new SQLite file), with [`Fresh::cleanup`].
//! - [`wait_for`]: polls an engine until an execution reaches a status.
//! - [`PrivateRedis`]: a `redis-server` of the test's own, to flush, kill
//!   and restart.
//! - [`fakes`]: the providers' APIs (SendGrid, Mailgun, Twilio, Vonage,
//!   Slack, Discord, Teams), checking their wire format; [`smtp`]: an SMTP
//!   sink.
//! - [`free_port`], [`temp_dir`], [`database_url`], [`curl`],
//!   [`wait_healthy`].

pub mod fakes;
pub mod smtp;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sojourn_actors::Engine;
use sojourn_persistence::{
    ExecutionQuery, ExecutionRecord, ExecutionSummary, NewTrigger, PgStore, SqliteStore, Store,
    TriggerRecord,
};
use sojourn_runtime::triggers::{TriggerConfig, TriggerKind};
use sojourn_runtime::{ExecutionId, Status};

/// One request a [`Sink`] received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    /// The attempt's `Idempotency-Key`, or "".
    pub fn key(&self) -> &str {
        self.header("idempotency-key")
    }

    /// A header's value, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How a [`Sink`] answers.
#[derive(Debug, Clone, Default)]
pub enum Reply {
    /// 200 with `{"ok": true}`.
    #[default]
    Ok,
    /// 200 with a body of this many bytes of `x`.
    Large(usize),
    /// 302 to this URL.
    Redirect(String),
    /// 200 with the request's headers as a JSON object.
    EchoHeaders,
}

#[derive(Debug, Default)]
struct Inner {
    seen: Vec<Seen>,
    fail_first: u32,
    reply: Reply,
    /// How long each answer waits (to keep sends in flight).
    delay: Duration,
}

/// A local HTTP server that records every request.
#[derive(Debug, Clone)]
pub struct Sink {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

impl Sink {
    /// A sink on 127.0.0.1.
    pub async fn start() -> Sink {
        Sink::start_on([127, 0, 0, 1].into()).await
    }

    /// A sink on this address (any of 127.0.0.0/8 works on Linux).
    pub async fn start_on(ip: IpAddr) -> Sink {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .expect("bind the sink");
        let addr = listener.local_addr().expect("sink address");
        let app = Router::new().fallback(record).with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Sink { inner, addr }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer 503 to the next `n` requests.
    pub fn fail_first(&self, n: u32) {
        self.lock().fail_first = n;
    }

    pub fn reply(&self, reply: Reply) {
        self.lock().reply = reply;
    }

    /// Every answer waits this long from now on.
    pub fn delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// The idempotency keys received, in order.
    pub fn keys(&self) -> Vec<String> {
        self.lock()
            .seen
            .iter()
            .map(|s| s.key().to_owned())
            .collect()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    pub fn count(&self) -> usize {
        self.lock().seen.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn record(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = inner.lock().map(|i| i.delay).unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
    inner.seen.push(Seen {
        at: Instant::now(),
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers: headers.clone(),
        body,
    });
    if inner.fail_first > 0 {
        inner.fail_first -= 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    }
    match &inner.reply {
        Reply::Ok => (StatusCode::OK, json!({"ok": true}).to_string()).into_response(),
        Reply::Large(n) => (StatusCode::OK, "x".repeat(*n)).into_response(),
        Reply::Redirect(to) => {
            (StatusCode::FOUND, [(header::LOCATION, to.clone())], "").into_response()
        }
        Reply::EchoHeaders => {
            let map: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Value::String(v.to_str().unwrap_or("").to_owned()),
                    )
                })
                .collect();
            (StatusCode::OK, Value::Object(map).to_string()).into_response()
        }
    }
}

/// A store made for one test, and how to throw it away.
#[derive(Debug)]
pub enum Fresh {
    Pg { schema: String },
    Sqlite { path: PathBuf },
}

impl Fresh {
    /// Drops the schema or deletes the file.
    pub async fn cleanup(self, pg: Option<&PgStore>) {
        match self {
            Fresh::Pg { schema } => {
                if let Some(store) = pg {
                    let _ = store.drop_schema(&schema).await;
                }
            }
            Fresh::Sqlite { path } => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
        }
    }
}

/// The PostgreSQL the tests use (`SOJOURN_TEST_DATABASE_URL`, or the local
/// one with trust auth).
pub fn database_url() -> String {
    std::env::var("SOJOURN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A PostgreSQL store in a schema of its own.
pub async fn pg_store() -> (PgStore, Fresh) {
    let schema = format!("sojourn_test_{}", uuid::Uuid::now_v7().simple());
    let store = PgStore::connect_creating_schema(&database_url(), &schema, 8)
        .await
        .expect("connect to PostgreSQL");
    (store, Fresh::Pg { schema })
}

/// A SQLite store in a file of its own.
pub async fn sqlite_store() -> (SqliteStore, Fresh) {
    let path =
        std::env::temp_dir().join(format!("sojourn-test-{}.db", uuid::Uuid::now_v7().simple()));
    let store = SqliteStore::open(&path).await.expect("open SQLite");
    (store, Fresh::Sqlite { path })
}

/// Creates a trigger instance (state `init`) of the default namespace.
pub async fn new_trigger<S: Store>(
    store: &S,
    workflow_id: &str,
    kind: TriggerKind,
    config: Value,
    now: chrono::DateTime<chrono::Utc>,
) -> TriggerRecord {
    store
        .create_trigger(NewTrigger {
            id: format!("trg_{}", uuid::Uuid::now_v7().simple()),
            namespace: "default".into(),
            workflow_id: workflow_id.into(),
            path: None,
            config: TriggerConfig::parse(kind, &config).expect("trigger config"),
            now,
        })
        .await
        .expect("create trigger")
}

/// The executions of a workflow of the default namespace (1,000 at most),
/// newest first.
pub async fn executions_of<S: Store>(store: &S, workflow_id: &str) -> Vec<ExecutionSummary> {
    store
        .list_executions(&ExecutionQuery {
            namespace: "default".into(),
            workflow_id: Some(workflow_id.into()),
            status: None,
            subject: None,
            created_after: None,
            created_before: None,
            before_id: None,
            limit: 1_000,
        })
        .await
        .expect("list executions")
}

/// Polls until the execution has `status` (15 s at most).
pub async fn wait_for<S: Store>(
    engine: &Engine<S>,
    id: &ExecutionId,
    status: Status,
) -> ExecutionRecord {
    for _ in 0..300 {
        if let Some(rec) = engine.execution(id).await.expect("load")
            && rec.status == status
        {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec = engine.execution(id).await.expect("load");
    panic!("execution {id} did not reach {status}: {rec:#?}");
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An empty directory of the test's own.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sojourn-{name}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A `redis-server` of the test's own on a free port (no persistence), so a
/// test may flush, kill and restart it. Killed when dropped.
#[derive(Debug)]
pub struct PrivateRedis {
    child: Option<Child>,
    port: u16,
}

impl PrivateRedis {
    /// Starts one on a free port.
    pub fn start() -> PrivateRedis {
        PrivateRedis::start_on(free_port())
    }

    /// Starts one on `port`.
    pub fn start_on(port: u16) -> PrivateRedis {
        let mut redis = PrivateRedis { child: None, port };
        redis.restart();
        redis
    }

    /// Starts it again (empty) after [`PrivateRedis::kill`].
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a `redis-cli` command against it (it must succeed).
    pub fn cli(&self, args: &[&str]) {
        let ok = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli")
            .success();
        assert!(ok, "redis-cli {args:?}");
    }

    pub fn flushall(&self) {
        self.cli(&["FLUSHALL"]);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The tansu binary (the Kafka-protocol broker the tests use):
/// `SOJOURN_TEST_TANSU`, else `tansu` on the PATH, else cargo's bin folder
/// (scripts/test.sh installs it there).
fn tansu() -> PathBuf {
    if let Ok(path) = std::env::var("SOJOURN_TEST_TANSU") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        let home = std::env::var("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
            });
        home.join("bin").join("tansu")
    })
}

/// A Kafka-protocol broker (tansu) of the test's own, on a free port with
/// its own SQLite file, so a test may kill and restart it; what it stored
/// survives a restart. Killed and its folder removed when dropped.
#[derive(Debug)]
pub struct PrivateKafka {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl PrivateKafka {
    pub fn start() -> PrivateKafka {
        let mut kafka = PrivateKafka {
            child: None,
            port: free_port(),
            dir: temp_dir("kafka"),
        };
        kafka.restart();
        kafka
    }

    /// Starts it again after [`PrivateKafka::kill`], on the same port and file.
    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("tansu.log")).expect("log file");
        let child = Command::new(tansu())
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "tansu did not start on port {}: {}",
            self.port,
            std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
        );
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `host:port`, for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic through the broker's admin API.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(tansu())
            .args(["topic", "create", name])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string()])
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "creating topic {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `curl -s` with `args`: the status and the body.
pub fn curl(args: &[&str]) -> (u16, String) {
    let mut all = vec!["-s", "-o", "-", "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let out = Command::new("curl").args(&all).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Waits until `{url}/healthz` answers 200 (30 s at most).
pub fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if curl(&[&format!("{url}/healthz")]).0 == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} never became healthy");
}

/// A benchmark's `--name N` argument, or `default`; anything but a number
/// stops the benchmark, naming the flag.
pub fn bench_arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
        })
        .unwrap_or(default)
}

/// This process's peak resident memory (`VmHWM`), in MiB (0 where
/// `/proc` has none).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
