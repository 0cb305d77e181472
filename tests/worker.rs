//! `sojourn worker` as a process of its own: a `serve` node that sends no
//! channel message itself (`engine.worker_channels = []`) publishes its
//! journeys' emails on Kafka (a private tansu), and a separate worker
//! process receives them, sends them to the stand-in provider (a local
//! sink), and records each result, which takes the journey on. SIGTERM
//! stops the worker cleanly.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sojourn_persistence::PgStore;
use sojourn_testkit::{PrivateKafka, Sink, database_url, free_port};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], log: &std::path::Path) -> Proc {
    let log = std::fs::File::create(log).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_sojourn"))
        .args(args)
        .env_remove("SOJOURN_DATABASE_URL")
        .env_remove("SOJOURN_REDIS_URL")
        .env_remove("SOJOURN_KAFKA_BROKERS")
        .env_remove("SOJOURN_NODE_ID")
        .env_remove("SOJOURN_LISTEN")
        .env("SOJOURN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sojourn");
    Proc(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_worker_process_sends_the_channel_messages_of_a_node() {
    let kafka = PrivateKafka::start();
    let sink = Sink::start().await;
    let schema = format!("sojourn_worker_{}", std::process::id());
    let store = PgStore::connect_creating_schema(&database_url(), &schema, 2)
        .await
        .expect("PostgreSQL answers (scripts/test.sh starts it)");
    let sep = if database_url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}options=-c%20search_path%3D{schema}", database_url());
    let dir = sojourn_testkit::temp_dir("worker");
    let port = free_port();
    let common = format!(
        "database_url = {url:?}\n[kafka]\nbrokers = [{:?}]\n[http]\nallow = [\"127.0.0.0/8\"]\n",
        kafka.brokers()
    );
    let node_config = dir.join("node.toml");
    std::fs::write(
        &node_config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nnode_id = \"n1\"\n{common}[engine]\nworker_channels = []\nchannel_webhook = \"{}/from-the-node\"\n",
            sink.url()
        ),
    )
    .expect("config");
    let worker_config = dir.join("worker.toml");
    std::fs::write(
        &worker_config,
        format!(
            "node_id = \"w1\"\n{common}[engine]\nchannel_webhook = \"{}/messages\"\n",
            sink.url()
        ),
    )
    .expect("config");
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
    let _node = spawn(
        &["serve", "--config", &node_config.display().to_string()],
        &dir.join("node.log"),
    );
    let mut worker = spawn(
        &[
            "worker",
            "--channels",
            "email",
            "--config",
            &worker_config.display().to_string(),
        ],
        &dir.join("worker.log"),
    );
    let logs = || {
        format!(
            "node: {}\nworker: {}",
            std::fs::read_to_string(dir.join("node.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default()
        )
    };
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "the node did not get ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http
        .post(format!("{base}/v1/workflows"))
        .bearer_auth(&key)
        .json(&json!({"key": "welcome", "publish": true, "definition": {
            "key": "welcome",
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "mail", "type": "action", "config": {"action": "email.send", "inputs": {
                    "to": "{{ input.email }}", "subject": "Welcome", "text": "Hi"}}},
                {"id": "done", "type": "exit", "config": {"outcome": "sent"}}
            ],
            "edges": [{"from": "start", "to": "mail"}, {"from": "mail", "to": "done", "branch": "success"}]
        }}))
        .send()
        .await
        .expect("create workflow");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        let r: Value = http
            .post(format!("{base}/v1/executions"))
            .bearer_auth(&key)
            .json(&json!({"workflow": "welcome", "input": {"email": format!("u{i}@example.com")}}))
            .send()
            .await
            .expect("start")
            .json()
            .await
            .expect("json");
        ids.push(r["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let e: Value = http
                .get(format!("{base}/v1/executions/{id}"))
                .bearer_auth(&key)
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            if e["status"] == json!("completed") {
                assert_eq!(e["outcome"], json!("sent"), "{e}");
                break;
            }
            assert!(Instant::now() < deadline, "not completed: {e}\n{}", logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let seen = sink.seen();
    assert_eq!(seen.len(), 5, "sent once each");
    assert!(
        seen.iter().all(|s| s.path == "/messages"),
        "only the worker process sends"
    );

    // SIGTERM: the worker finishes what it has and exits 0.
    let _ = Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = worker.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not stop: {}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}: {}", logs());
    drop(_node);
    let _ = store.drop_schema(&schema).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two `sojourn worker` processes send one provider's messages (each its
/// own process, its own Redis connection): together they keep to the
/// provider's rate limit, and both send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_share_a_providers_rate_limit() {
    let kafka = PrivateKafka::start();
    kafka.create_topic("sojourn.actions.email", 4);
    let sink = Sink::start().await;
    let schema = format!("sojourn_worker_rate_{}", std::process::id());
    let store = PgStore::connect_creating_schema(&database_url(), &schema, 2)
        .await
        .expect("PostgreSQL answers (scripts/test.sh starts it)");
    let sep = if database_url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}options=-c%20search_path%3D{schema}", database_url());
    let dir = sojourn_testkit::temp_dir("worker-rate");
    let port = free_port();
    let provider = format!("limited-{}", std::process::id());
    let common = format!(
        "database_url = {url:?}\nredis_url = \"redis://127.0.0.1:6379\"\n[kafka]\nbrokers = [{:?}]\n[http]\nallow = [\"127.0.0.0/8\"]\n",
        kafka.brokers()
    );
    let node_config = dir.join("node.toml");
    std::fs::write(
        &node_config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nnode_id = \"n1\"\n{common}[engine]\nworker_channels = []\n\
             [providers.{provider}]\nkind = \"webhook\"\nurl = \"{}/from-the-node\"\n[channels.email]\nproviders = [\"{provider}\"]\n",
            sink.url()
        ),
    )
    .expect("config");
    let worker_config = |n: u32| {
        let path = dir.join(format!("worker{n}.toml"));
        std::fs::write(
            &path,
            format!(
                "node_id = \"w{n}\"\n{common}[providers.{provider}]\nkind = \"webhook\"\nurl = \"{}/w{n}\"\n\
                 limits = {{ per_second = 10, burst = 1 }}\n[channels.email]\nproviders = [\"{provider}\"]\n",
                sink.url()
            ),
        )
        .expect("config");
        path
    };
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
    let _node = spawn(
        &["serve", "--config", &node_config.display().to_string()],
        &dir.join("node.log"),
    );
    let _w1 = spawn(
        &[
            "worker",
            "--channels",
            "email",
            "--config",
            &worker_config(1).display().to_string(),
        ],
        &dir.join("w1.log"),
    );
    let _w2 = spawn(
        &[
            "worker",
            "--channels",
            "email",
            "--config",
            &worker_config(2).display().to_string(),
        ],
        &dir.join("w2.log"),
    );
    let logs = || {
        ["node", "w1", "w2"]
            .map(|n| {
                format!(
                    "{n}: {}",
                    std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default()
                )
            })
            .join("\n")
    };
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "the node did not get ready: {}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http
        .post(format!("{base}/v1/workflows"))
        .bearer_auth(&key)
        .json(&json!({"key": "burst", "publish": true, "definition": {
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "mail", "type": "action", "config": {"action": "email.send", "inputs": {
                    "to": "{{ input.email }}", "subject": "Hi", "text": "Hi"}}},
                {"id": "done", "type": "exit"}
            ],
            "edges": [{"from": "start", "to": "mail"}, {"from": "mail", "to": "done", "branch": "success"}]
        }}))
        .send()
        .await
        .expect("create workflow");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    // Both workers must have joined before the burst (their partitions).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let total = 50;
    for i in 0..total {
        let r = http
            .post(format!("{base}/v1/executions"))
            .bearer_auth(&key)
            .json(&json!({"workflow": "burst", "input": {"email": format!("u{i}@example.com")}}))
            .send()
            .await
            .expect("start");
        assert!(r.status().is_success());
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while sink.count() < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} sent\n{}",
            sink.count(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = sink.seen();
    let by = |p: &str| seen.iter().filter(|s| s.path == p).count();
    assert!(
        by("/w1") > 0 && by("/w2") > 0,
        "both workers sent: w1 {} w2 {}",
        by("/w1"),
        by("/w2")
    );
    // 10/s with a burst of 1: any window of T seconds holds at most
    // 10·T + 1 sends (+1 for the clocks of the sink and of Redis).
    let mut at: Vec<Instant> = seen.iter().map(|s| s.at).collect();
    at.sort();
    for (i, start) in at.iter().enumerate() {
        let within = at[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(2))
            .count();
        assert!(
            within <= 22,
            "{within} sends within 2 s of one another: the limit is 10/s\n{}",
            logs()
        );
    }
    let span = at[at.len() - 1].duration_since(at[0]).as_secs_f64();
    assert!(
        span >= (total as f64 - 2.0) / 10.0,
        "{total} sends in {span:.1} s: faster than 10/s"
    );
    drop(_node);
    let _ = store.drop_schema(&schema).await;
    let _ = std::fs::remove_dir_all(&dir);
}
