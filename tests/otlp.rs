//! Trace export: a `sojourn dev` node with `tracing.otlp_endpoint` set
//! sends its spans over OTLP/HTTP (protobuf) to a local fake collector; the
//! request that starts an execution, the execution's activation and its
//! action send arrive in one trace, carrying the execution id.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};

/// What the fake collector received: content types and bodies.
type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

async fn collect(State(got): State<Received>, headers: HeaderMap, body: Bytes) -> &'static str {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    got.lock().expect("lock").push((ct, body));
    ""
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The node, killed if the test fails before it is stopped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_one_execution_reach_the_collector_in_one_trace() {
    // The fake collector, and an endpoint for the workflow's action.
    let got: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = listener.local_addr().expect("addr");
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .route("/hook", post(|| async { axum::Json(json!({"ok": true})) }))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("sojourn-otlp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let child = Command::new(env!("CARGO_BIN_EXE_sojourn"))
        .args(["dev", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(&dir)
        .env("SOJOURN_LOG", "warn")
        .env(
            "SOJOURN_TRACING__OTLP_ENDPOINT",
            format!("http://{collector}"),
        )
        .env("SOJOURN_TRACING__SERVICE_NAME", "sojourn-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sojourn dev");
    let mut node = Node(child);

    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "sojourn dev never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A journey with an action: start, one HTTP send, exit.
    let workflow = json!({
        "key": "traced",
        "name": "Traced",
        "nodes": [
            { "id": "start", "type": "start" },
            { "id": "hook", "type": "action", "config": { "action": "http.request", "inputs": {
                "method": "POST",
                "url": format!("http://{collector}/hook"),
                "body": { "hello": "trace" } } } },
            { "id": "done", "type": "exit", "config": { "outcome": "sent" } },
            { "id": "failed", "type": "exit", "config": { "outcome": "not sent" } }
        ],
        "edges": [
            { "from": "start", "to": "hook" },
            { "from": "hook", "to": "done", "branch": "success" },
            { "from": "hook", "to": "failed", "branch": "failure" }
        ]
    });
    let file = dir.join("traced.json");
    std::fs::write(&file, workflow.to_string()).expect("write workflow");
    let applied = Command::new(env!("CARGO_BIN_EXE_sojourn"))
        .args(["apply", "-f"])
        .arg(&file)
        .env("SOJOURN_URL", &url)
        .env_remove("SOJOURN_API_KEY")
        .output()
        .expect("sojourn apply");
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let started: Value = http
        .post(format!("{url}/v1/executions"))
        .json(&json!({"workflow": "traced", "input": {}}))
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("start answer");
    let id = started["id"].as_str().expect("execution id").to_owned();
    loop {
        let v: Value = http
            .get(format!("{url}/v1/executions/{id}"))
            .send()
            .await
            .expect("inspect")
            .json()
            .await
            .expect("inspect answer");
        if v["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "{id} did not complete: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM: the node stops its actors and flushes the exporter.
    let _ = Command::new("kill")
        .args(["-TERM", &node.0.id().to_string()])
        .status();
    let stopped = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = node.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < stopped, "dev did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "dev exits 0 on SIGTERM: {status}");

    // What arrived: protobuf requests, decoded.
    let received = got.lock().expect("lock").clone();
    assert!(!received.is_empty(), "no export reached the collector");
    let mut spans: Vec<Span> = Vec::new();
    for (ct, body) in &received {
        assert_eq!(ct, "application/x-protobuf");
        let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("an OTLP request");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone());
            assert_eq!(service, Some(AnyValue::StringValue("sojourn-test".into())));
            spans.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let ours = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && attr(s, "execution.id").as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no {name} span for {id} among {names:?}"))
    };
    let execution = ours("execution");
    let action = ours("action");
    assert_eq!(attr(action, "node").as_deref(), Some("hook"));
    let request = spans
        .iter()
        .find(|s| s.name == "POST /v1/executions")
        .unwrap_or_else(|| panic!("no request span among {names:?}"));
    assert_eq!(
        attr(request, "http.route").as_deref(),
        Some("/v1/executions")
    );
    assert_eq!(
        attr(request, "http.response.status_code").as_deref(),
        Some("201")
    );
    // One trace: request → execution → action.
    assert_eq!(
        execution.trace_id, request.trace_id,
        "execution joins the request's trace"
    );
    assert_eq!(execution.parent_span_id, request.span_id);
    assert_eq!(action.trace_id, request.trace_id, "action joins the trace");
    assert_eq!(action.parent_span_id, execution.span_id);
    // And nothing else of this execution went elsewhere.
    let traces: HashMap<&[u8], usize> = spans
        .iter()
        .filter(|s| attr(s, "execution.id").as_deref() == Some(id.as_str()))
        .fold(HashMap::new(), |mut m, s| {
            *m.entry(s.trace_id.as_slice()).or_default() += 1;
            m
        });
    assert_eq!(traces.len(), 1, "{traces:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
