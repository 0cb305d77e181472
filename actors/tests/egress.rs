//! A node is safe to expose to workflow authors: `http.request` never
//! reaches an internal address unless the operator allows it (checked on
//! the resolved address and on every redirect), response bodies are capped,
//! and secrets are resolved at send time only — never stored.
//!
//! Real actors, a real SQLite store, real local HTTP servers.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};
use sojourn_actors::egress::EgressPolicy;
use sojourn_actors::{Config, Engine, Secrets, StartRequest};
use sojourn_persistence::SqliteStore;
use sojourn_persistence::prelude::*;
use sojourn_runtime::{ExecutionId, Status, Workflow};
use sojourn_testkit::{Fresh, Reply, Sink, sqlite_store, wait_for};

/// One `http.request` to `input.url`, with the given headers; no failure
/// branch, so a failed send pauses the execution for an operator.
fn caller(headers: Value) -> Workflow {
    Workflow::from_value(json!({
        "key": "caller",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "call", "type": "action", "config": {"action": "http.request",
                "inputs": {"url": "{{ input.url }}", "headers": headers},
                "retry": {"max_attempts": 2, "initial_backoff": "50ms", "max_backoff": "50ms"}}},
            {"id": "done", "type": "exit"},
        ],
        "edges": [
            {"from": "start", "to": "call"},
            {"from": "call", "to": "done", "branch": "success"},
        ]
    }))
    .expect("workflow")
}

fn config(egress: EgressPolicy) -> Config {
    Config {
        timer_poll: Duration::from_millis(50),
        outbox_poll: Duration::from_millis(50),
        recovery_poll: Duration::from_millis(500),
        egress,
        ..Config::default()
    }
}

async fn engine(config: Config, workflow: &Workflow) -> (Engine<SqliteStore>, Fresh) {
    let (store, fresh) = sqlite_store().await;
    let engine = Engine::start(store, config).await.expect("engine");
    engine.deploy(workflow).await.expect("deploy");
    (engine, fresh)
}

async fn start(engine: &Engine<SqliteStore>, url: &str) -> ExecutionId {
    engine
        .start_execution(StartRequest {
            workflow: "caller".into(),
            version: None,
            input: json!({ "url": url }),
            subject: None,
            timezone: None,
            namespace: None,
            idempotency_key: None,
        })
        .await
        .expect("start")
        .id
}

/// The error of the execution's one attempt.
async fn attempt_error(engine: &Engine<SqliteStore>, id: &ExecutionId) -> String {
    let nodes = engine.store().node_executions(id).await.expect("nodes");
    assert_eq!(nodes.len(), 1, "one attempt, not retried: {nodes:#?}");
    nodes[0].error.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_destinations_are_refused_and_nothing_is_sent() {
    let loopback = Sink::start().await;
    // 127.0.0.2 stands for a trusted internal service the operator allows.
    let trusted_ip: IpAddr = [127, 0, 0, 2].into();
    let trusted = Sink::start_on(trusted_ip).await;
    let redirector = Sink::start_on(trusted_ip).await;
    redirector.reply(Reply::Redirect(format!("{}/stolen", loopback.url())));
    let policy = EgressPolicy::parse(["127.0.0.2"]).expect("policy");
    let (engine, fresh) = engine(config(policy), &caller(json!({}))).await;

    let refused = [
        (format!("{}/keys", loopback.url()), "loopback"),
        (
            format!("http://localhost:{}/keys", loopback.addr().port()),
            "loopback",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "link-local",
        ),
        ("http://[::ffff:127.0.0.1]:9/".to_owned(), "loopback"),
        ("http://10.0.0.1/".to_owned(), "private"),
        (format!("{}/hop", redirector.url()), "loopback"),
    ];
    for (url, reason) in &refused {
        let id = start(&engine, url).await;
        wait_for(&engine, &id, Status::Paused).await;
        let error = attempt_error(&engine, &id).await;
        assert!(
            error.contains("refused") && error.contains(reason),
            "{url}: {error}"
        );
    }
    assert_eq!(loopback.count(), 0, "a refused destination was sent to");
    assert_eq!(redirector.count(), 1, "the allowed hop was sent once");

    // What the operator allows is reached.
    let id = start(&engine, &format!("{}/ok", trusted.url())).await;
    wait_for(&engine, &id, Status::Completed).await;
    assert_eq!(trusted.count(), 1);
    engine.shutdown().await;
    fresh.cleanup(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_are_capped() {
    let sink = Sink::start().await;
    sink.reply(Reply::Large(3 << 20));
    let config = Config {
        max_response_bytes: 1000,
        ..config(EgressPolicy::allowing_loopback())
    };
    let (engine, fresh) = engine(config, &caller(json!({}))).await;
    let id = start(&engine, &format!("{}/big", sink.url())).await;
    wait_for(&engine, &id, Status::Completed).await;
    let nodes = engine.store().node_executions(&id).await.expect("nodes");
    let output = nodes[0].output.clone().expect("output");
    assert_eq!(output["truncated"], true, "{output}");
    assert_eq!(output["body"].as_str().map(str::len), Some(1000));
    engine.shutdown().await;
    fresh.cleanup(None).await;
}

const TOKEN: &str = "tok-9f3c1e7a-hunter2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_resolved_at_send_time_and_never_stored() {
    let sink = Sink::start().await;
    // The receiver echoes the headers it got: the answer holds the token.
    sink.reply(Reply::EchoHeaders);
    let mut secrets = std::collections::BTreeMap::new();
    secrets.insert("CRM_TOKEN".to_owned(), TOKEN.to_owned().into());
    let config = Config {
        secrets: Secrets::new(secrets),
        ..config(EgressPolicy::allowing_loopback())
    };
    let workflow = caller(json!({
        "Authorization": "Bearer {{ secrets.CRM_TOKEN }}",
        "X-Plain": "literal-{{ input.url | length }}",
    }));
    let (engine, fresh) = engine(config, &workflow).await;
    let id = start(&engine, &format!("{}/crm", sink.url())).await;
    wait_for(&engine, &id, Status::Completed).await;

    let seen = sink.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), format!("Bearer {TOKEN}"));

    // What people see: the header redacted, the echo scrubbed.
    let nodes = engine.store().node_executions(&id).await.expect("nodes");
    let stored = serde_json::to_string(&nodes).expect("json");
    assert!(!stored.contains(TOKEN), "{stored}");
    assert_eq!(nodes[0].input["headers"]["Authorization"], "[redacted]");
    let echoed = &nodes[0].output.as_ref().expect("output")["body"]["authorization"];
    assert_eq!(echoed, "Bearer [redacted]");
    let journal = engine.store().journal(&id, 0, 100).await.expect("journal");
    let entries: Vec<_> = journal.iter().map(|row| &row.entry).collect();
    let journal = serde_json::to_string(&entries).expect("json");
    assert!(!journal.contains(TOKEN), "{journal}");
    assert!(journal.contains("[redacted]"), "{journal}");

    // And nowhere in the database files.
    engine.shutdown().await;
    let Fresh::Sqlite { path } = &fresh else {
        unreachable!("a SQLite store")
    };
    for suffix in ["", "-wal"] {
        let file = format!("{}{suffix}", path.display());
        if let Ok(bytes) = std::fs::read(&file) {
            assert!(
                !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                "{file} holds the secret"
            );
        }
    }
    fresh.cleanup(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_secret_fails_without_sending() {
    let sink = Sink::start().await;
    let (engine, fresh) = engine(
        config(EgressPolicy::allowing_loopback()),
        &caller(json!({"Authorization": "Bearer {{ secrets.MISSING }}"})),
    )
    .await;
    let id = start(&engine, &format!("{}/crm", sink.url())).await;
    wait_for(&engine, &id, Status::Paused).await;
    let error = attempt_error(&engine, &id).await;
    assert!(error.contains("\"MISSING\" is not configured"), "{error}");
    assert_eq!(sink.count(), 0);
    engine.shutdown().await;
    fresh.cleanup(None).await;
}
