//! End to end, as a user would: a real `sojourn dev` process driven by the
//! CLI client and plain HTTP, and a real `sojourn serve` on PostgreSQL that
//! refuses requests without an API key made by `sojourn keys create`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sojourn_testkit::{curl, database_url, free_port, wait_healthy};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sojourn-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A node process, stopped with SIGTERM when dropped.
struct Node {
    child: Child,
    url: String,
}

impl Node {
    fn spawn(args: &[&str], envs: &[(&str, &str)], url: String) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sojourn"));
        cmd.args(args)
            .env("SOJOURN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sojourn");
        let node = Node { child, url };
        node.wait_healthy();
        node
    }

    fn wait_healthy(&self) {
        wait_healthy(&self.url);
    }

    /// SIGTERM, and the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client command against a node.
fn cli(node: &Node, key: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sojourn"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SOJOURN_URL", &node.url)
        .env_remove("SOJOURN_API_KEY");
    if let Some(k) = key {
        cmd.env("SOJOURN_API_KEY", k);
    }
    cmd.output().expect("run sojourn")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_str(&ok(o)).expect("JSON output")
}

/// Polls `inspect --json` until the execution's status is one of `want`.
fn wait_status(node: &Node, key: Option<&str>, id: &str, want: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = json_of(&cli(node, key, &["inspect", id, "--json"]));
        let status = v["status"].as_str().unwrap_or("").to_owned();
        if want.contains(&status.as_str()) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{id} stuck in {status}, wanted {want:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const WAITER: &str = r#"{
  "key": "e2e-waiter",
  "name": "Waits for an order",
  "settings": {"subject": "input.user_id"},
  "nodes": [
    {"id": "start", "type": "start"},
    {"id": "wait", "type": "wait_for_event",
     "config": {"event": "order_placed", "timeout": "1d"}},
    {"id": "ordered", "type": "exit"},
    {"id": "gave_up", "type": "exit"}
  ],
  "edges": [
    {"from": "start", "to": "wait"},
    {"from": "wait", "to": "ordered", "branch": "event"},
    {"from": "wait", "to": "gave_up", "branch": "timeout"}
  ]
}"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn dev_node_driven_by_the_cli_and_curl() {
    let dir = temp_dir("dev");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.join("data").display().to_string();
    let node = Node::spawn(
        &["dev", "--listen", &listen, "--data", &data],
        &[],
        format!("http://{listen}"),
    );

    // Apply the README's example twice: created, then unchanged.
    let out = ok(&cli(
        &node,
        None,
        &["apply", "-f", "examples/first-journey.json"],
    ));
    assert!(out.contains("created; published version 1"), "{out}");
    let out = ok(&cli(
        &node,
        None,
        &["apply", "-f", "examples/first-journey.json"],
    ));
    assert!(out.contains("unchanged at version 1"), "{out}");

    // Start with the CLI, watch it finish with inspect.
    let id = ok(&cli(
        &node,
        None,
        &[
            "start",
            "first-journey",
            "--input",
            "examples/first-journey.input.json",
        ],
    ))
    .trim()
    .to_owned();
    assert!(id.starts_with("exe_"), "{id}");
    let done = wait_status(&node, None, &id, &["completed"]);
    assert_eq!(done["current_node"], "vip");
    assert_eq!(done["vars"]["score"], 70);
    let kinds: Vec<&str> = done["journal"]
        .as_array()
        .expect("journal")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(kinds.contains(&"timer_fired") || kinds.contains(&"input_received"));
    let human = ok(&cli(&node, None, &["inspect", &id]));
    assert!(human.contains("status     completed"), "{human}");
    assert!(human.contains("enter vip (exit)"), "{human}");

    // Start with curl, with an idempotency key: twice, one execution.
    let body = json!({"workflow": "first-journey", "input": {"user_id": "u-9", "plan": "free", "interests": []}}).to_string();
    let url = format!("{}/v1/executions", node.url);
    let (c1, b1) = curl(&[
        "-H",
        "Idempotency-Key: k-1",
        "-H",
        "content-type: application/json",
        "-d",
        &body,
        &url,
    ]);
    let (c2, b2) = curl(&[
        "-H",
        "Idempotency-Key: k-1",
        "-H",
        "content-type: application/json",
        "-d",
        &body,
        &url,
    ]);
    assert_eq!((c1, c2), (201, 200), "{b1} {b2}");
    let v1: Value = serde_json::from_str(&b1).expect("json");
    let v2: Value = serde_json::from_str(&b2).expect("json");
    assert_eq!(v1["id"], v2["id"]);
    assert_eq!(
        (v1["new"].as_bool(), v2["new"].as_bool()),
        (Some(true), Some(false))
    );

    // Bad input: a 4xx in our format, and the CLI exits 2.
    let (code, b) = curl(&["-d", "{\"workflow\": 5}", &url]);
    assert_eq!(code, 400, "{b}");
    let e: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(e["error"]["field"], "workflow");
    let o = cli(&node, None, &["start", "no-such-workflow"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    let o = cli(&node, None, &["inspect", "exe_nope"]);
    assert_eq!(o.status.code(), Some(2));

    // Events reach a waiting execution by its correlation key.
    let wf = write(&dir, "waiter.json", WAITER);
    ok(&cli(&node, None, &["apply", "-f", &wf]));
    let input = write(&dir, "in.json", r#"{"user_id": "ada"}"#);
    let waiting = ok(&cli(
        &node,
        None,
        &["start", "e2e-waiter", "--input", &input],
    ))
    .trim()
    .to_owned();
    wait_status(&node, None, &waiting, &["waiting"]);
    let out = ok(&cli(
        &node,
        None,
        &[
            "events",
            "send",
            "order_placed",
            "--key",
            "ada",
            "--payload",
            "{\"total\": 12}",
        ],
    ));
    assert!(out.contains("delivered to 1 execution(s)"), "{out}");
    let v = wait_status(&node, None, &waiting, &["completed"]);
    assert_eq!(v["current_node"], "ordered");

    // Pause, resume, cancel from the CLI; refusals exit 2.
    let other = ok(&cli(
        &node,
        None,
        &["start", "e2e-waiter", "--input", &input],
    ))
    .trim()
    .to_owned();
    wait_status(&node, None, &other, &["waiting"]);
    ok(&cli(
        &node,
        None,
        &["pause", &other, "--reason", "checking"],
    ));
    wait_status(&node, None, &other, &["paused"]);
    assert_eq!(cli(&node, None, &["pause", &other]).status.code(), Some(2));
    ok(&cli(&node, None, &["resume", &other]));
    wait_status(&node, None, &other, &["waiting"]);
    ok(&cli(&node, None, &["cancel", &other]));
    wait_status(&node, None, &other, &["cancelled"]);
    assert_eq!(cli(&node, None, &["retry", &other]).status.code(), Some(2));

    // Listing, filtered, as a table and as JSON.
    let table = ok(&cli(
        &node,
        None,
        &["executions", "ls", "--workflow", "e2e-waiter"],
    ));
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&waiting) && table.contains(&other),
        "{table}"
    );
    assert!(!table.contains(&id), "{table}");
    let listed = json_of(&cli(
        &node,
        None,
        &["executions", "ls", "--status", "cancelled", "--json"],
    ));
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(ids, vec![other.as_str()]);

    // Metrics count what happened.
    let (code, metrics) = curl(&[&format!("{}/metrics", node.url)]);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("sojourn_executions_started_total{workflow="),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "sojourn_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/executions\""
        ),
        "{metrics}"
    );

    assert!(node.terminate().success(), "dev exits 0 on SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

const QUICK: &str = r#"{
  "key": "e2e-quick",
  "nodes": [
    {"id": "start", "type": "start"},
    {"id": "done", "type": "exit", "config": {"outcome": "done"}}
  ],
  "edges": [{"from": "start", "to": "done"}]
}"#;

/// `sojourn start --wait`: the final state printed as `inspect` prints it,
/// and an exit code that says how it ended (0 completed; 1 failed,
/// cancelled or not finished in time; 2 a bad request). A node that stops
/// answers its waiting requests at once.
#[test]
fn start_and_wait_from_the_cli() {
    let dir = temp_dir("wait");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.join("data").display().to_string();
    let node = Node::spawn(
        &["dev", "--listen", &listen, "--data", &data],
        &[],
        format!("http://{listen}"),
    );
    ok(&cli(
        &node,
        None,
        &["apply", "-f", &write(&dir, "quick.json", QUICK)],
    ));
    ok(&cli(
        &node,
        None,
        &["apply", "-f", &write(&dir, "waiter.json", WAITER)],
    ));
    let input = write(&dir, "in.json", r#"{"user_id": "ada"}"#);

    // Completed: exit 0, printed like inspect (state and journal).
    let out = ok(&cli(&node, None, &["start", "e2e-quick", "--wait", "30s"]));
    assert!(out.contains("status     completed"), "{out}");
    assert!(out.contains("journal"), "{out}");
    // A bare --wait waits as long as the server allows.
    let out = ok(&cli(&node, None, &["start", "e2e-quick", "--wait"]));
    assert!(out.contains("status     completed"), "{out}");
    let v = json_of(&cli(
        &node,
        None,
        &["start", "e2e-quick", "--wait", "5s", "--json"],
    ));
    assert_eq!(v["status"], "completed", "{v}");
    assert!(v["journal"].is_array(), "{v}");

    // Not finished when the wait runs out: its state, and exit 1.
    let o = cli(
        &node,
        None,
        &["start", "e2e-waiter", "--input", &input, "--wait", "500ms"],
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("status     waiting"), "{out}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("had not finished after 500ms"),
        "{o:?}"
    );

    // Cancelled (a replay under its idempotency key waits for it): exit 1.
    let args = [
        "start",
        "e2e-waiter",
        "--input",
        &input,
        "--idempotency-key",
        "w-1",
    ];
    let id = ok(&cli(&node, None, &args)).trim().to_owned();
    wait_status(&node, None, &id, &["waiting"]);
    ok(&cli(&node, None, &["cancel", &id]));
    wait_status(&node, None, &id, &["cancelled"]);
    let o = cli(&node, None, &[&args[..], &["--wait", "5s"]].concat());
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&id), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("it is cancelled"),
        "{o:?}"
    );

    // A wait the server refuses: exit 2, naming the parameter.
    for bad in ["10m", "soon"] {
        let o = cli(&node, None, &["start", "e2e-quick", "--wait", bad]);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("wait:"),
            "{o:?}"
        );
    }

    // Plain HTTP: 200 finished, 202 not yet.
    let url = format!("{}/v1/executions?wait=10s", node.url);
    let (code, body) = curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"workflow": "e2e-quick"}"#,
        &url,
    ]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&[&format!("{}/v1/executions/{id}?wait=0s", node.url)]);
    assert_eq!(code, 200, "{body}");

    // A request waiting when the node stops gets its answer at once: the
    // node stops long before the minute the request would wait.
    let mut waiting = std::process::Command::new(env!("CARGO_BIN_EXE_sojourn"))
        .args(["start", "e2e-waiter", "--input", &input, "--wait", "60s"])
        .env("SOJOURN_URL", &node.url)
        .env_remove("SOJOURN_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sojourn start");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = curl(&[&format!("{}/metrics", node.url)]);
        if metrics.lines().any(|l| l == "sojourn_waiters 1") {
            break;
        }
        assert!(Instant::now() < deadline, "the waiter never registered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopping = Instant::now();
    assert!(node.terminate().success(), "dev exits 0 on SIGTERM");
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "a waiting request did not hold the node up"
    );
    let status = waiting.wait().expect("sojourn start ends");
    assert_eq!(status.code(), Some(1), "not finished: exit 1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_postgres_needs_an_api_key() {
    let schema = format!("sojourn_e2e_{}", std::process::id());
    let store = sojourn_persistence::PgStore::connect_creating_schema(&database_url(), &schema, 2)
        .await
        .expect("PostgreSQL answers (scripts/test.sh starts it)");
    let sep = if database_url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}options=-c%20search_path%3D{schema}", database_url());

    // The first key is made offline, straight in the database.
    let keys = Command::new(env!("CARGO_BIN_EXE_sojourn"))
        .args([
            "keys",
            "create",
            "--namespace",
            "default",
            "--scopes",
            "admin",
            "--database-url",
            &url,
        ])
        .output()
        .expect("keys create");
    let secret = ok(&keys).trim().to_owned();
    assert!(secret.starts_with("sjk_"), "{secret}");
    let bad = Command::new(env!("CARGO_BIN_EXE_sojourn"))
        .args(["keys", "create", "--scopes", "root", "--database-url", &url])
        .output()
        .expect("keys create");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("scopes"));

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let node = Node::spawn(
        &["serve", "--listen", &listen],
        &[("SOJOURN_DATABASE_URL", &url), ("SOJOURN_NODE_ID", "e2e-1")],
        format!("http://{listen}"),
    );
    let (code, body) = curl(&[&format!("{}/readyz", node.url)]);
    assert_eq!(code, 200, "{body}");

    // Without a key: 401 for the API, the CLI exits 2 and says why.
    let (code, body) = curl(&[&format!("{}/v1/workflows", node.url)]);
    assert_eq!(code, 401, "{body}");
    let o = cli(&node, None, &["apply", "-f", "examples/first-journey.json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("API key"));

    // With it: the whole journey.
    let k = Some(secret.as_str());
    ok(&cli(
        &node,
        k,
        &["apply", "-f", "examples/first-journey.json"],
    ));
    let id = ok(&cli(
        &node,
        k,
        &[
            "start",
            "first-journey",
            "--input",
            "examples/first-journey.input.json",
        ],
    ))
    .trim()
    .to_owned();
    let done = wait_status(&node, k, &id, &["completed"]);
    assert_eq!(
        done["workflow_id"].as_str().map(|w| w.starts_with("wf_")),
        Some(true)
    );
    let (code, body) = curl(&[
        "-H",
        &format!("Authorization: Bearer {secret}"),
        &format!("{}/openapi.json", node.url),
    ]);
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&body).expect("openapi json");
    assert!(doc["paths"]["/v1/executions"]["post"].is_object());

    assert!(node.terminate().success(), "serve exits 0 on SIGTERM");
    store.drop_schema(&schema).await.expect("drop schema");
}

/// `sojourn profiles import`: CSV and JSON lines through a dev node, a bad
/// row named by its line and field (exit 2), and the unsubscribe key
/// `sojourn dev` made kept in its data directory.
#[test]
fn profiles_are_imported_from_csv_and_json_lines() {
    let dir = temp_dir("import");
    let port = free_port();
    let data = dir.join("data");
    let node = Node::spawn(
        &[
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
            &data.display().to_string(),
        ],
        &[],
        format!("http://127.0.0.1:{port}"),
    );
    let mut csv = String::from("subject,email,plan,orders,attributes.vip\n");
    for i in 0..2_500 {
        csv.push_str(&format!("u{i},u{i}@example.com,pro,{i},{}\n", i % 2 == 0));
    }
    let file = write(&dir, "people.csv", &csv);
    let out = cli(
        &node,
        None,
        &["profiles", "import", &file, "--batch", "1000", "--json"],
    );
    assert_eq!(json_of(&out)["written"], 2_500);
    let (code, got) = curl(&[&format!("{}/v1/profiles/u7", node.url)]);
    assert_eq!(code, 200, "{got}");
    let p: Value = serde_json::from_str(&got).expect("json");
    assert_eq!(p["addresses"]["email"], "u7@example.com");
    assert_eq!(
        p["attributes"],
        json!({"plan": "pro", "orders": 7, "vip": false})
    );

    // JSON lines, one bad: named by its line, and nothing of its batch written.
    let lines = "{\"subject\": \"j1\", \"phone\": \"+33612345678\"}\n\n{\"subject\": \"j2\", \"phone\": \"0612\"}\n";
    let file = write(&dir, "people.jsonl", lines);
    let out = cli(&node, None, &["profiles", "import", &file]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("people.jsonl:3") && err.contains("profiles[1].phone"),
        "{err}"
    );
    let (code, _) = curl(&[&format!("{}/v1/profiles/j1", node.url)]);
    assert_eq!(code, 404);
    assert!(data.join("unsubscribe.key").exists());
    node.terminate();
}
