//! The HTTP API through its router, without a socket: every route's success
//! and error paths, namespaces, idempotency under concurrency, malformed
//! bodies on every write route, and the OpenAPI document against the real
//! route table. SQLite (a fresh file each) and PostgreSQL (a fresh schema
//! each, on `SOJOURN_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sojourn_actors::{Config, Engine};
use sojourn_api::{Api, AppState, AuthMode};
use sojourn_persistence::prelude::*;
use sojourn_persistence::{PgStore, SqliteStore};
use tower::ServiceExt;

// ---- fixtures ---------------------------------------------------------------

fn database_url() -> String {
    std::env::var("SOJOURN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

const PG_PREFIX: &str = "sojourn_apitest_";

fn config() -> Config {
    Config {
        timer_poll: Duration::from_millis(100),
        outbox_poll: Duration::from_millis(50),
        recovery_poll: Duration::from_millis(300),
        egress: sojourn_actors::egress::EgressPolicy::allowing_loopback(),
        analytics_rollup: Duration::from_millis(100),
        ..Config::default()
    }
}

/// An app over a running engine, with the database it lives in.
struct App<S: Store> {
    api: Api,
    engine: Arc<Engine<S>>,
    place: String,
}

async fn app_over<S: Store>(store: S, place: String) -> App<S> {
    app_with(store, place, config()).await
}

async fn app_with<S: Store>(store: S, place: String, config: Config) -> App<S> {
    let engine = Arc::new(Engine::start(store, config).await.expect("engine starts"));
    let api = sojourn_api::build(AppState::new(engine.clone(), AuthMode::Required));
    App { api, engine, place }
}

/// An app on a fresh SQLite file in the temp dir.
async fn sqlite_app() -> App<SqliteStore> {
    let path = std::env::temp_dir().join(format!(
        "sojourn-api-test-{}.db",
        uuid::Uuid::now_v7().simple()
    ));
    let store = SqliteStore::open(&path).await.expect("open sqlite");
    app_over(store, path.display().to_string()).await
}

/// An app on a fresh PostgreSQL schema. Schemas of this suite older than
/// ten minutes (left by a run that panicked) are dropped first.
async fn pg_app(max_connections: u32) -> App<PgStore> {
    let schema = format!("{PG_PREFIX}{}", uuid::Uuid::now_v7().simple());
    let store = PgStore::connect_creating_schema(&database_url(), &schema, max_connections)
        .await
        .expect("PostgreSQL answers at SOJOURN_TEST_DATABASE_URL");
    drop_stale_schemas(&store).await;
    app_over(store, schema).await
}

async fn drop_stale_schemas(store: &PgStore) {
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, 'sojourn_apitest_')",
    )
    .fetch_all(store.pool())
    .await
    .expect("list schemas");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for s in stale {
        // The schema's name carries a UUIDv7: its creation time.
        let Some(created) = s
            .strip_prefix(PG_PREFIX)
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .and_then(|id| id.get_timestamp())
            .map(|t| t.to_unix().0)
        else {
            continue;
        };
        if now.saturating_sub(created) > 600 {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {s} CASCADE"
            )))
            .execute(store.pool())
            .await;
        }
    }
}

impl App<SqliteStore> {
    async fn finish(self) {
        self.engine.shutdown().await;
        self.engine.store().pool().close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.place));
        }
    }
}

impl App<PgStore> {
    async fn finish(self) {
        self.engine.shutdown().await;
        let pool = self.engine.store().pool();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.place
        )))
        .execute(pool)
        .await
        .expect("drop schema");
        pool.close().await;
    }
}

/// An answer.
#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Bytes,
    json: Value,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    fn str(&self, pointer: &str) -> String {
        self.json
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{pointer} is a string in {:#}", self.json))
            .to_owned()
    }

    /// Asserts the status, then returns the body.
    #[track_caller]
    fn ok(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "answer: {}", self.text());
        &self.json
    }
}

/// Asserts our error format: `{"error": {"code", "message", "field"?,
/// "details"?}}` and nothing else.
#[track_caller]
fn assert_error_format(r: &Resp) {
    let obj = r
        .json
        .as_object()
        .unwrap_or_else(|| panic!("error body is an object: {}", r.text()));
    assert_eq!(obj.len(), 1, "only \"error\": {}", r.text());
    let e = obj
        .get("error")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("\"error\" is an object: {}", r.text()));
    for k in e.keys() {
        assert!(
            ["code", "message", "field", "details"].contains(&k.as_str()),
            "unexpected member {k} in {}",
            r.text()
        );
    }
    assert!(
        e.get("code")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty()),
        "code: {}",
        r.text()
    );
    assert!(
        e.get("message")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty()),
        "message: {}",
        r.text()
    );
    if let Some(f) = e.get("field") {
        assert!(f.is_string(), "field is a string: {}", r.text());
    }
    assert_eq!(
        r.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "errors are JSON: {}",
        r.text()
    );
}

/// Asserts an error answer: status, code and (when given) the field, which
/// the message must name.
#[track_caller]
fn assert_error(r: &Resp, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(r.status, status, "answer: {}", r.text());
    assert_error_format(r);
    assert_eq!(r.str("/error/code"), code, "answer: {}", r.text());
    let message = r.str("/error/message");
    if let Some(f) = field {
        assert_eq!(
            r.json.pointer("/error/field").and_then(Value::as_str),
            Some(f),
            "field: {}",
            r.text()
        );
        assert!(message.contains(f), "the message names {f}: {}", r.text());
    }
}

impl<S: Store> App<S> {
    async fn send(&self, req: Request<Body>) -> Resp {
        let res = self
            .api
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("the router answers");
        into_resp(res).await
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let body = match body {
            Some(v) => Body::from(v.to_string()),
            None => Body::empty(),
        };
        self.send(request(method, uri, key, &[], body)).await
    }

    async fn get(&self, uri: &str, key: &str) -> Resp {
        self.call(Method::GET, uri, Some(key), None).await
    }

    async fn post(&self, uri: &str, key: &str, body: Value) -> Resp {
        self.call(Method::POST, uri, Some(key), Some(body)).await
    }

    async fn post_empty(&self, uri: &str, key: &str) -> Resp {
        self.call(Method::POST, uri, Some(key), None).await
    }

    /// A key's secret.
    async fn key(&self, namespace: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        sojourn_api::create_key(self.engine.store(), namespace, Some("test".into()), &scopes)
            .await
            .expect("create key")
            .secret
            .expect("a new key has its secret")
    }

    /// Creates and publishes a workflow; returns its id.
    async fn workflow(&self, key: &str, wf_key: &str, definition: Value) -> String {
        let r = self
            .post(
                "/v1/workflows",
                key,
                json!({"key": wf_key, "definition": definition, "publish": true}),
            )
            .await;
        r.ok(StatusCode::CREATED);
        r.str("/id")
    }

    /// Starts an execution; returns its id.
    async fn start(&self, key: &str, workflow: &str, input: Value) -> String {
        let r = self
            .post(
                "/v1/executions",
                key,
                json!({"workflow": workflow, "input": input}),
            )
            .await;
        r.ok(StatusCode::CREATED);
        assert_eq!(r.json["new"], json!(true));
        r.str("/id")
    }

    /// Polls an execution until `pred` holds; returns it.
    async fn wait_until(
        &self,
        key: &str,
        id: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        for _ in 0..500 {
            let r = self.get(&format!("/v1/executions/{id}"), key).await;
            r.ok(StatusCode::OK);
            if pred(&r.json) {
                return r.json;
            }
            last = r.json;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("execution {id} never got {what}: {last:#}");
    }

    async fn wait_status(&self, key: &str, id: &str, status: &str) -> Value {
        self.wait_until(key, id, status, |e| e["status"] == json!(status))
            .await
    }

    /// Every item of a listing, following `next_cursor` with pages of `limit`.
    async fn all_pages(&self, key: &str, uri: &str, limit: u32) -> Vec<Value> {
        let sep = if uri.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let page_uri = match &cursor {
                Some(c) => format!("{uri}{sep}limit={limit}&cursor={c}"),
                None => format!("{uri}{sep}limit={limit}"),
            };
            let r = self.get(&page_uri, key).await;
            r.ok(StatusCode::OK);
            let page = r.json["items"].as_array().expect("items").clone();
            assert!(page.len() <= limit as usize, "a page holds at most limit");
            items.extend(page);
            match r.json.get("next_cursor") {
                Some(Value::String(c)) => cursor = Some(c.clone()),
                Some(Value::Number(n)) => cursor = Some(n.to_string()),
                None => return items,
                Some(other) => panic!("next_cursor: {other}"),
            }
        }
        panic!("pagination never ended");
    }
}

fn request(
    method: Method,
    uri: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Body,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        b = b.header(AUTHORIZATION, format!("Bearer {k}"));
    }
    for (h, v) in headers {
        b = b.header(*h, *v);
    }
    b.body(body).expect("request")
}

async fn into_resp(res: axum::response::Response) -> Resp {
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res
        .into_body()
        .collect()
        .await
        .expect("read the body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        bytes,
        json,
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

// ---- workflow documents -----------------------------------------------------

/// Waits for `go` keyed on the subject (`input.user_id`), then exits.
fn waiter() -> Value {
    json!({
        "settings": {"subject": "input.user_id"},
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "wait", "type": "wait_for_event", "config": {"event": "go"}},
            {"id": "done", "type": "exit", "config": {"outcome": "went"}}
        ],
        "edges": [
            {"from": "start", "to": "wait"},
            {"from": "wait", "to": "done", "branch": "event"}
        ]
    })
}

/// Runs straight to its end.
fn quick(outcome: &str) -> Value {
    json!({
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "done", "type": "exit", "config": {"outcome": outcome}}
        ],
        "edges": [{"from": "start", "to": "done"}]
    })
}

/// One HTTP action to a closed port, no retry and no failure branch: the
/// execution pauses on the failed action.
fn failing() -> Value {
    json!({
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "call", "type": "action", "config": {
                "action": "http.request",
                "inputs": {"url": "http://127.0.0.1:9/nothing-listens-here"},
                "retry": {"max_attempts": 1},
                "timeout": "2s"
            }},
            {"id": "done", "type": "exit"}
        ],
        "edges": [
            {"from": "start", "to": "call"},
            {"from": "call", "to": "done", "branch": "success"}
        ]
    })
}

/// Parses, but has several problems: an unknown action, a bad expression,
/// an edge to a node that does not exist, an unreachable node.
fn broken() -> Value {
    json!({
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "act", "type": "action", "config": {"action": "pigeon.send", "inputs": {}}},
            {"id": "cond", "type": "condition", "config": {"expression": "input.x +* 2"}},
            {"id": "end", "type": "exit"},
            {"id": "island", "type": "exit"}
        ],
        "edges": [
            {"from": "start", "to": "act"},
            {"from": "act", "to": "cond", "branch": "success"},
            {"from": "cond", "to": "end", "branch": "true"},
            {"from": "cond", "to": "ghost", "branch": "false"}
        ]
    })
}

// ---- 1. every endpoint ------------------------------------------------------

async fn workflows<S: Store>(app: &App<S>) {
    let k = app.key("wf", &["admin"]).await;

    // Create without publishing: a draft only.
    let r = app
        .post(
            "/v1/workflows",
            &k,
            json!({"key": "w1", "name": "First", "definition": waiter()}),
        )
        .await;
    let w1 = r.ok(StatusCode::CREATED).clone();
    assert_eq!(w1["key"], json!("w1"));
    assert_eq!(w1["name"], json!("First"));
    assert_eq!(w1["namespace"], json!("wf"));
    assert_eq!(w1["draft"], waiter());
    assert_eq!(w1["latest_version"], Value::Null);
    assert_eq!(w1["archived_at"], Value::Null);
    assert!(w1.get("published").is_none(), "{w1}");
    let w1_id = w1["id"].as_str().expect("id").to_owned();
    assert!(w1_id.starts_with("wf_"), "{w1_id}");

    // A draft alone starts nothing.
    let r = app
        .post("/v1/executions", &k, json!({"workflow": "w1"}))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", Some("workflow"));

    // Duplicate key.
    let r = app
        .post(
            "/v1/workflows",
            &k,
            json!({"key": "w1", "definition": quick("x")}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("key"));
    // Invalid keys.
    for bad in ["bad key", "a/b", "", "é"] {
        let r = app
            .post(
                "/v1/workflows",
                &k,
                json!({"key": bad, "definition": quick("x")}),
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("key"));
    }
    let r = app
        .post("/v1/workflows", &k, json!({"key": "w9", "definition": [1]}))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("definition"),
    );
    let r = app
        .post("/v1/workflows", &k, json!({"definition": quick("x")}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", None);
    assert!(r.str("/error/message").contains("key"), "{}", r.text());

    // Create and publish at once.
    let r = app
        .post(
            "/v1/workflows",
            &k,
            json!({"key": "w2", "definition": quick("two"), "publish": true}),
        )
        .await;
    let w2 = r.ok(StatusCode::CREATED).clone();
    assert_eq!(w2["latest_version"], json!(1));
    assert_eq!(w2["published"]["version"], json!(1));
    assert_eq!(w2["published"]["new"], json!(true));
    assert_eq!(w2["published"]["workflow_id"], w2["id"]);
    let w2_id = w2["id"].as_str().expect("id").to_owned();

    // Create and publish an invalid document: refused, nothing written.
    let r = app
        .post(
            "/v1/workflows",
            &k,
            json!({"key": "w3", "definition": broken(), "publish": true}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_workflow",
        None,
    );
    assert!(
        r.str("/error/field").starts_with("definition"),
        "{}",
        r.text()
    );
    let r = app.get("/v1/workflows/w3", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    assert!(r.str("/error/message").contains("w3"), "{}", r.text());

    // Listing with cursor pagination, newest first.
    for i in 4..=8 {
        let r = app
            .post(
                "/v1/workflows",
                &k,
                json!({"key": format!("w{i}"), "definition": quick("x")}),
            )
            .await;
        r.ok(StatusCode::CREATED);
    }
    let full = app.get("/v1/workflows?limit=500", &k).await;
    let full = full.ok(StatusCode::OK)["items"]
        .as_array()
        .expect("items")
        .clone();
    let keys: Vec<&str> = full
        .iter()
        .map(|w| w["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["w8", "w7", "w6", "w5", "w4", "w2", "w1"]);
    let r = app.get("/v1/workflows?limit=2", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["items"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(r.json["next_cursor"].is_string(), "{}", r.text());
    let paged = app.all_pages(&k, "/v1/workflows", 2).await;
    assert_eq!(ids(&paged), ids(&full), "pages cover the listing once");
    let last = app.get("/v1/workflows?limit=7", &k).await;
    assert!(
        last.ok(StatusCode::OK).get("next_cursor").is_none(),
        "no cursor on the last page: {}",
        last.text()
    );
    for bad in [
        "limit=0",
        "limit=501",
        "limit=x",
        "include_archived=maybe",
        "bogus=1",
    ] {
        let r = app.get(&format!("/v1/workflows?{bad}"), &k).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        assert_error_format(&r);
        let field = r.str("/error/field");
        assert!(
            r.str("/error/message").starts_with(&format!("{field}:")),
            "{}",
            r.text()
        );
    }
    let r = app.get("/v1/workflows?limit=0", &k).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("limit"),
    );

    // Get by key and by id.
    let by_key = app.get("/v1/workflows/w1", &k).await;
    let by_id = app.get(&format!("/v1/workflows/{w1_id}"), &k).await;
    assert_eq!(by_key.ok(StatusCode::OK), by_id.ok(StatusCode::OK));
    assert_eq!(by_key.json["id"], json!(w1_id));

    // Update the draft: any document may be a draft.
    let r = app
        .call(
            Method::PUT,
            "/v1/workflows/w1",
            Some(&k),
            Some(json!({"definition": broken(), "name": "Broken"})),
        )
        .await;
    let updated = r.ok(StatusCode::OK);
    assert_eq!(updated["draft"], broken());
    assert_eq!(updated["name"], json!("Broken"));
    let r = app
        .call(
            Method::PUT,
            "/v1/workflows/nope",
            Some(&k),
            Some(json!({"definition": quick("x")})),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = app
        .call(
            Method::PUT,
            "/v1/workflows/w1",
            Some(&k),
            Some(json!({"definition": "text"})),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("definition"),
    );

    // Validate reports every problem.
    let r = app.post("/v1/workflows/w1/validate", &k, json!({})).await;
    let v = r.ok(StatusCode::OK).clone();
    assert_eq!(v["valid"], json!(false));
    let errors = v["errors"].as_array().expect("errors").clone();
    let text = serde_json::to_string(&errors).expect("json");
    for must in ["pigeon.send", "ghost", "island", "cond"] {
        assert!(text.contains(must), "a problem names {must}: {text:#}");
    }
    let found: BTreeSet<(String, String)> = errors
        .iter()
        .map(|e| {
            let at = match (&e["node"], &e["edge"]) {
                (Value::String(n), _) => n.clone(),
                (_, Value::Number(i)) => format!("edge {i}"),
                _ => String::new(),
            };
            (at, e["field"].as_str().unwrap_or("?").to_owned())
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("act", "config.action"),
        ("cond", "config.expression"),
        ("edge 3", "edges[3].to"),
        ("cond", "edges"),
        ("island", ""),
    ]
    .into_iter()
    .map(|(a, f)| (a.to_owned(), f.to_owned()))
    .collect();
    assert_eq!(found, expected, "every problem: {text}");
    assert_eq!(errors.len(), 5, "{text}");
    for e in &errors {
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert!(e["field"].is_string(), "{e}");
    }
    let r = app
        .post(
            "/v1/workflows/w1/validate",
            &k,
            json!({"definition": waiter()}),
        )
        .await;
    let v = r.ok(StatusCode::OK);
    assert_eq!((&v["valid"], &v["errors"]), (&json!(true), &json!([])));
    assert_eq!(v["normalized"]["key"], json!("w1"), "as it would be stored");
    let r = app.post_empty("/v1/workflows/nope/validate", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // Publishing an invalid draft: 422 with every problem.
    let r = app.post_empty("/v1/workflows/w1/publish", &k).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_workflow",
        Some("definition.nodes[act].config.action"),
    );
    assert_eq!(
        r.json["error"]["details"],
        Value::Array(errors.clone()),
        "the same problems as validate: {}",
        r.text()
    );
    assert!(
        r.str("/error/message").contains("5 problem"),
        "{}",
        r.text()
    );
    let r = app.get("/v1/workflows/w1/versions", &k).await;
    assert_eq!(r.ok(StatusCode::OK), &json!([]));

    // Publish a valid draft, then the same draft again.
    let r = app
        .call(
            Method::PUT,
            "/v1/workflows/w1",
            Some(&k),
            Some(json!({"definition": waiter()})),
        )
        .await;
    r.ok(StatusCode::OK);
    let r = app.post_empty("/v1/workflows/w1/publish", &k).await;
    let p1 = r.ok(StatusCode::CREATED).clone();
    assert_eq!(p1["version"], json!(1));
    assert_eq!(p1["new"], json!(true));
    assert_eq!(p1["workflow_id"], json!(w1_id));
    let r = app.post_empty("/v1/workflows/w1/publish", &k).await;
    let again = r.ok(StatusCode::OK);
    assert_eq!(again["version"], json!(1));
    assert_eq!(again["new"], json!(false));
    assert_eq!(again["published_at"], p1["published_at"]);

    // A changed draft published with the update.
    let mut changed = waiter();
    changed["nodes"][2]["config"]["outcome"] = json!("gone");
    let r = app
        .call(
            Method::PUT,
            &format!("/v1/workflows/{w1_id}"),
            Some(&k),
            Some(json!({"definition": changed, "publish": true})),
        )
        .await;
    let u = r.ok(StatusCode::OK);
    assert_eq!(u["latest_version"], json!(2));
    assert_eq!(u["published"]["version"], json!(2));
    assert_eq!(u["published"]["new"], json!(true));

    // Versions.
    let r = app.get("/v1/workflows/w1/versions", &k).await;
    let versions = r.ok(StatusCode::OK).as_array().expect("array").clone();
    let numbers: Vec<&Value> = versions.iter().map(|v| &v["version"]).collect();
    assert_eq!(numbers, [&json!(1), &json!(2)]);
    let r = app.get("/v1/workflows/w1/versions/1", &k).await;
    let v1 = r.ok(StatusCode::OK);
    assert_eq!(v1["version"], json!(1));
    assert_eq!(v1["workflow_id"], json!(w1_id));
    assert_eq!(
        v1["definition"]["nodes"][2]["config"]["outcome"],
        json!("went")
    );
    assert_eq!(v1["definition"]["key"], json!("w1"));
    let r = app.get("/v1/workflows/w1/versions/2", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["definition"]["nodes"][2]["config"]["outcome"],
        json!("gone")
    );
    let r = app.get("/v1/workflows/w1/versions/abc", &k).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("version"),
    );
    assert!(r.str("/error/message").contains("abc"), "{}", r.text());
    let r = app.get("/v1/workflows/w1/versions/99", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = app.get("/v1/workflows/nope/versions", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // Archive: hidden from listings by default, starts nothing.
    let r = app.post_empty("/v1/workflows/w2/archive", &k).await;
    assert!(
        r.ok(StatusCode::OK)["archived_at"].is_string(),
        "{}",
        r.text()
    );
    let r = app.get("/v1/workflows?limit=500", &k).await;
    let listed: Vec<String> = ids(r.ok(StatusCode::OK)["items"].as_array().expect("items"));
    assert!(!listed.contains(&w2_id), "archived is hidden");
    let r = app
        .get("/v1/workflows?limit=500&include_archived=true", &k)
        .await;
    let listed: Vec<String> = ids(r.ok(StatusCode::OK)["items"].as_array().expect("items"));
    assert!(listed.contains(&w2_id), "include_archived shows it");
    assert_eq!(listed.len(), 7);
    let r = app
        .post("/v1/executions", &k, json!({"workflow": "w2"}))
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("workflow"));
    let r = app
        .post("/v1/executions", &k, json!({"workflow": w2_id}))
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("workflow"));
    let r = app.post_empty("/v1/workflows/w2/publish", &k).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("workflow"));
    let r = app.post_empty("/v1/workflows/nope/archive", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    // Publishing an update of an archived workflow is refused, and the
    // draft stays as it was.
    let before = app
        .get("/v1/workflows/w2", &k)
        .await
        .ok(StatusCode::OK)
        .clone();
    let r = app
        .call(
            Method::PUT,
            "/v1/workflows/w2",
            Some(&k),
            Some(json!({"definition": quick("changed"), "publish": true})),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("workflow"));
    let after = app.get("/v1/workflows/w2", &k).await;
    assert_eq!(after.ok(StatusCode::OK), &before, "nothing was written");
    let r = app.get("/v1/workflows/w2/versions", &k).await;
    assert_eq!(r.ok(StatusCode::OK).as_array().map(Vec::len), Some(1));
    let r = app
        .call(
            Method::PUT,
            "/v1/workflows/w2",
            Some(&k),
            Some(json!({"definition": quick("changed")})),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("workflow"));
    let after = app.get("/v1/workflows/w2", &k).await;
    assert_eq!(after.ok(StatusCode::OK), &before, "nothing was written");
}

#[tokio::test]
async fn workflows_on_sqlite() {
    let app = sqlite_app().await;
    workflows(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn workflows_on_postgres() {
    let app = pg_app(4).await;
    workflows(&app).await;
    app.finish().await;
}

async fn executions<S: Store>(app: &App<S>) {
    let k = app.key("ex", &["write"]).await;
    let wait_id = app.workflow(&k, "wait", waiter()).await;
    let quick_id = app.workflow(&k, "quick", quick("fast")).await;

    // Start, and start again under one idempotency key.
    let first = app.start(&k, "wait", json!({"user_id": "u1"})).await;
    assert!(first.starts_with("exe_"), "{first}");
    let idem = |key: &'static str, body: Value| {
        request(
            Method::POST,
            "/v1/executions",
            Some(&k),
            &[("Idempotency-Key", key)],
            Body::from(body.to_string()),
        )
    };
    let body = json!({"workflow": "wait", "input": {"user_id": "u2"}});
    let r = app.send(idem("signup-u2", body.clone())).await;
    let created = r.ok(StatusCode::CREATED).clone();
    assert_eq!(created["new"], json!(true));
    let r = app.send(idem("signup-u2", body.clone())).await;
    let same = r.ok(StatusCode::OK);
    assert_eq!(same["new"], json!(false));
    assert_eq!(same["id"], created["id"]);
    let u2 = created["id"].as_str().expect("id").to_owned();

    // Start errors.
    let r = app
        .post("/v1/executions", &k, json!({"workflow": "nope"}))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", Some("workflow"));
    assert!(r.str("/error/message").contains("nope"), "{}", r.text());
    for input in [json!([1]), json!("x"), json!(3)] {
        let r = app
            .post(
                "/v1/executions",
                &k,
                json!({"workflow": "wait", "input": input}),
            )
            .await;
        assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("input"),
        );
    }
    let r = app
        .post(
            "/v1/executions",
            &k,
            json!({"workflow": "wait", "version": 99}),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", Some("version"));
    let r = app
        .post(
            "/v1/executions",
            &k,
            json!({"workflow": "wait", "version": 0}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("version"),
    );
    let r = app
        .post("/v1/executions", &k, json!({"workflow": ""}))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("workflow"),
    );
    let r = app
        .post(
            "/v1/executions",
            &k,
            json!({"workflow": "wait", "timezone": "Mars/Olympus"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_error_format(&r);
    assert!(r.str("/error/message").contains("timezone"), "{}", r.text());
    let r = app
        .send(request(
            Method::POST,
            "/v1/executions",
            Some(&k),
            &[("Idempotency-Key", "")],
            Body::from(json!({"workflow": "wait"}).to_string()),
        ))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("Idempotency-Key"),
    );
    // The triggers' keys are theirs: a caller's key cannot take (and so
    // suppress) a schedule's fire.
    for key in [
        "schedule:trg_1:2026-01-01T09:00:00.000Z",
        "event:trg_1:orders:0:7",
    ] {
        let r = app
            .send(request(
                Method::POST,
                "/v1/executions",
                Some(&k),
                &[("Idempotency-Key", key)],
                Body::from(json!({"workflow": "wait"}).to_string()),
            ))
            .await;
        assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("Idempotency-Key"),
        );
    }

    // Get: it waits at its event node.
    let e = app.wait_status(&k, &first, "waiting").await;
    assert_eq!(e["id"], json!(first));
    assert_eq!(e["workflow_id"], json!(wait_id));
    assert_eq!(e["version"], json!(1));
    assert_eq!(e["current_node"], json!("wait"));
    assert_eq!(e["subject"], json!("u1"));
    assert_eq!(e["input"], json!({"user_id": "u1"}));
    assert!(e["vars"].is_object(), "{e}");
    let obj = e.as_object().expect("object");
    assert!(obj.contains_key("lease_holder"), "{e}");
    assert!(
        e["lease_holder"].is_null() || e["lease_holder"] == json!("node-1"),
        "{e}"
    );
    assert_eq!(e["timezone"], json!("UTC"));
    assert!(e["wait"].is_object(), "{e}");
    let r = app.get("/v1/executions/exe_nope", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    assert!(r.str("/error/message").contains("exe_nope"), "{}", r.text());
    let u2_exec = app.wait_status(&k, &u2, "waiting").await;
    assert_eq!(u2_exec["idempotency_key"], json!("signup-u2"));

    // Listing with filters and cursor pagination.
    let mut quicks = Vec::new();
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        quicks.push(app.start(&k, "quick", json!({"n": i})).await);
    }
    for q in &quicks {
        app.wait_status(&k, q, "completed").await;
    }
    let all = app.all_pages(&k, "/v1/executions", 500).await;
    assert_eq!(all.len(), 5, "{all:#?}");
    let paged = app.all_pages(&k, "/v1/executions", 2).await;
    assert_eq!(ids(&paged), ids(&all), "pages cover the listing once");
    let mut sorted = ids(&all);
    sorted.sort();
    sorted.reverse();
    assert_eq!(ids(&all), sorted, "newest first");

    let by_wf = app
        .all_pages(&k, "/v1/executions?workflow=quick", 500)
        .await;
    let mut want = quicks.clone();
    want.reverse();
    assert_eq!(ids(&by_wf), want);
    let by_wf_id = app
        .all_pages(&k, &format!("/v1/executions?workflow={quick_id}"), 2)
        .await;
    assert_eq!(ids(&by_wf_id), want);
    let waiting = app
        .all_pages(&k, "/v1/executions?status=waiting", 500)
        .await;
    assert_eq!(waiting.len(), 2, "{waiting:#?}");
    assert!(waiting.iter().all(|e| e["status"] == json!("waiting")));
    let completed = app
        .all_pages(&k, "/v1/executions?status=completed&workflow=quick", 500)
        .await;
    assert_eq!(completed.len(), 3);
    let u1 = app.all_pages(&k, "/v1/executions?subject=u1", 500).await;
    assert_eq!(ids(&u1), [first.as_str()]);
    let none = app
        .all_pages(&k, "/v1/executions?subject=u1&status=completed", 500)
        .await;
    assert!(none.is_empty());
    let second_quick = by_wf
        .iter()
        .find(|e| e["id"] == json!(quicks[1]))
        .expect("listed");
    let after = second_quick["created_at"].as_str().expect("created_at");
    assert!(after.ends_with('Z'), "{after}");
    let recent = app
        .all_pages(&k, &format!("/v1/executions?created_after={after}"), 500)
        .await;
    assert_eq!(ids(&recent), [quicks[2].clone(), quicks[1].clone()]);
    let r = app
        .get("/v1/executions?created_after=2999-01-01T00:00:00Z", &k)
        .await;
    assert_eq!(r.ok(StatusCode::OK)["items"], json!([]));
    let r = app.get("/v1/executions?status=bogus", &k).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("status"),
    );
    let r = app.get("/v1/executions?workflow=nope", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", Some("workflow"));
    let r = app.get("/v1/executions?created_after=yesterday", &k).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("created_after"),
    );

    // Journal, in pages.
    let r = app
        .get(&format!("/v1/executions/{first}/journal?limit=500"), &k)
        .await;
    let journal = r.ok(StatusCode::OK).clone();
    assert!(journal.get("next_cursor").is_none(), "{journal}");
    let entries = journal["items"].as_array().expect("items").clone();
    assert!(entries.len() >= 3, "{journal:#}");
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert!(kinds.contains(&"node_entered"), "{kinds:?}");
    let mut paged = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let uri = match cursor {
            Some(c) => format!("/v1/executions/{first}/journal?limit=1&cursor={c}"),
            None => format!("/v1/executions/{first}/journal?limit=1"),
        };
        let r = app.get(&uri, &k).await;
        let page = r.ok(StatusCode::OK).clone();
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 1);
        paged.extend(items.iter().cloned());
        match page.get("next_cursor") {
            Some(c) => cursor = Some(c.as_i64().expect("a position")),
            None => break,
        }
        assert!(paged.len() <= entries.len(), "pagination ends");
    }
    assert_eq!(paged, entries, "pages cover the journal once, in order");
    let positions: Vec<i64> = entries
        .iter()
        .map(|e| e["position"].as_i64().expect("position"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let r = app
        .get(&format!("/v1/executions/{first}/journal?cursor=x"), &k)
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("cursor"),
    );
    let r = app.get("/v1/executions/exe_nope/journal", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // Nodes: none for a journey without actions.
    let r = app.get(&format!("/v1/executions/{first}/nodes"), &k).await;
    assert_eq!(r.ok(StatusCode::OK), &json!([]));
    let r = app.get("/v1/executions/exe_nope/nodes", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // A direct event moves it on.
    let r = app
        .post(
            &format!("/v1/executions/{first}/events"),
            &k,
            json!({"name": ""}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("name"));
    let r = app
        .post(
            &format!("/v1/executions/{first}/events"),
            &k,
            json!({"name": "go", "payload": {"why": "test"}}),
        )
        .await;
    assert_eq!(
        r.ok(StatusCode::ACCEPTED),
        &json!({"id": first, "accepted": true, "input": "event"})
    );
    let done = app.wait_status(&k, &first, "completed").await;
    assert_eq!(done["outcome"], json!("went"));
    let r = app
        .post("/v1/executions/exe_nope/events", &k, json!({"name": "go"}))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // Pause, pause again, resume, cancel.
    let r = app
        .post(
            &format!("/v1/executions/{u2}/pause"),
            &k,
            json!({"reason": "look"}),
        )
        .await;
    assert_eq!(r.ok(StatusCode::ACCEPTED)["input"], json!("pause"));
    let paused = app.wait_status(&k, &u2, "paused").await;
    assert!(paused["pause"].is_object(), "{paused}");
    let r = app
        .post_empty(&format!("/v1/executions/{u2}/pause"), &k)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", None);
    let r = app
        .post_empty(&format!("/v1/executions/{u2}/retry"), &k)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", None);
    let r = app
        .post_empty(&format!("/v1/executions/{u2}/resume"), &k)
        .await;
    assert_eq!(r.ok(StatusCode::ACCEPTED)["input"], json!("resume"));
    app.wait_status(&k, &u2, "waiting").await;
    let r = app
        .post_empty(&format!("/v1/executions/{u2}/resume"), &k)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", None);
    let r = app
        .post_empty(&format!("/v1/executions/{u2}/retry"), &k)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", None);
    let r = app
        .post(
            &format!("/v1/executions/{u2}/cancel"),
            &k,
            json!({"reason": "done"}),
        )
        .await;
    assert_eq!(r.ok(StatusCode::ACCEPTED)["input"], json!("cancel"));
    app.wait_status(&k, &u2, "cancelled").await;
    for op in ["cancel", "pause", "resume", "retry"] {
        let r = app
            .post_empty(&format!("/v1/executions/{u2}/{op}"), &k)
            .await;
        assert_error(&r, StatusCode::CONFLICT, "conflict", None);
        let r = app
            .post_empty(&format!("/v1/executions/exe_nope/{op}"), &k)
            .await;
        assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    }
    let r = app
        .post(
            &format!("/v1/executions/{u2}/cancel"),
            &k,
            json!({"reason": 5}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("reason"),
    );

    // The first journey of the examples: its function node's variables.
    let doc: Value =
        serde_json::from_str(include_str!("../../examples/first-journey.json")).expect("example");
    let input: Value =
        serde_json::from_str(include_str!("../../examples/first-journey.input.json"))
            .expect("example input");
    app.workflow(&k, "first-journey", doc).await;
    let fj = app.start(&k, "first-journey", input.clone()).await;
    let e = app
        .wait_until(&k, &fj, "asleep at nap", |e| {
            e["current_node"] == json!("nap")
        })
        .await;
    assert_eq!(e["status"], json!("waiting"));
    assert_eq!(e["vars"], json!({"score": 70}));
    assert_eq!(e["subject"], input["user_id"]);
    assert_eq!(e["wait"]["kind"], json!("delay"), "{e}");

    // A failed action: its node execution is listed, and retry is accepted.
    app.workflow(&k, "failing", failing()).await;
    let f = app.start(&k, "failing", json!({})).await;
    let paused = app
        .wait_until(&k, &f, "paused on its failed action", |e| {
            e["status"] == json!("paused") && e["pause"].is_object()
        })
        .await;
    assert_eq!(paused["current_node"], json!("call"));
    let r = app.get(&format!("/v1/executions/{f}/nodes"), &k).await;
    let nodes = r.ok(StatusCode::OK).as_array().expect("array").clone();
    assert_eq!(nodes.len(), 1, "{nodes:#?}");
    assert_eq!(nodes[0]["node_id"], json!("call"));
    assert_eq!(nodes[0]["action"], json!("http.request"));
    assert_eq!(nodes[0]["attempt"], json!(1));
    assert_eq!(nodes[0]["status"], json!("failed"));
    let r = app
        .post_empty(&format!("/v1/executions/{f}/resume"), &k)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", None);
    let r = app
        .post_empty(&format!("/v1/executions/{f}/retry"), &k)
        .await;
    assert_eq!(r.ok(StatusCode::ACCEPTED)["input"], json!("retry"));
    for _ in 0..250 {
        let r = app.get(&format!("/v1/executions/{f}/nodes"), &k).await;
        if r.ok(StatusCode::OK).as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = app.get(&format!("/v1/executions/{f}/nodes"), &k).await;
    assert_eq!(
        r.ok(StatusCode::OK).as_array().map(Vec::len),
        Some(2),
        "the retry sent a second attempt: {}",
        r.text()
    );
}

#[tokio::test]
async fn executions_on_sqlite() {
    let app = sqlite_app().await;
    executions(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn executions_on_postgres() {
    let app = pg_app(4).await;
    executions(&app).await;
    app.finish().await;
}

// ---- waiting for a result (?wait=) ------------------------------------------

/// Sleeps an hour, then exits.
fn sleeper() -> Value {
    json!({
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "nap", "type": "delay", "config": {"duration": "1h"}},
            {"id": "done", "type": "exit"}
        ],
        "edges": [{"from": "start", "to": "nap"}, {"from": "nap", "to": "done"}]
    })
}

/// Sends `req` through a clone of the router, on a task of its own.
fn spawn_request<S: Store>(app: &App<S>, req: Request<Body>) -> tokio::task::JoinHandle<Resp> {
    let router = app.api.router.clone();
    tokio::spawn(
        async move { into_resp(router.oneshot(req).await.expect("the router answers")).await },
    )
}

impl<S: Store> App<S> {
    /// Until `n` requests wait on this node for executions to finish.
    async fn until_waiters(&self, n: usize) {
        for _ in 0..3000 {
            if self.engine.waiters() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} waiters, not {n}", self.engine.waiters());
    }
}

async fn waits<S: Store>(app: &App<S>) {
    let k = app.key("wt", &["write"]).await;
    app.workflow(&k, "quick", quick("fast")).await;
    app.workflow(&k, "wait", waiter()).await;
    app.workflow(&k, "nap", sleeper()).await;
    let start = |wf: &str, user: &str| json!({"workflow": wf, "input": {"user_id": user}});

    // A start that finishes within the wait: 200 with its final state, the
    // body of GET /v1/executions/{id}.
    let r = app
        .post("/v1/executions?wait=30s", &k, start("quick", "a"))
        .await;
    let done = r.ok(StatusCode::OK).clone();
    assert_eq!(done["status"], json!("completed"), "{done}");
    assert_eq!(done["outcome"], json!("fast"), "{done}");
    assert!(done.get("new").is_none(), "the state, not Started: {done}");
    let id = r.str("/id");
    let g = app.get(&format!("/v1/executions/{id}"), &k).await;
    let mut read = g.ok(StatusCode::OK).clone();
    let mut answered = done.clone();
    for v in [&mut read, &mut answered] {
        v.as_object_mut().map(|o| o.remove("lease_holder"));
    }
    assert_eq!(answered, read, "the same body as a read");

    // Idempotent replays wait the same way; without wait they answer as
    // before (200, Started).
    let key = [("Idempotency-Key", "wait-1")];
    let body = || Body::from(start("quick", "b").to_string());
    let first = app
        .send(request(
            Method::POST,
            "/v1/executions?wait=30s",
            Some(&k),
            &key,
            body(),
        ))
        .await;
    first.ok(StatusCode::OK);
    assert_eq!(first.json["status"], json!("completed"));
    let again = app
        .send(request(
            Method::POST,
            "/v1/executions?wait=30s",
            Some(&k),
            &key,
            body(),
        ))
        .await;
    again.ok(StatusCode::OK);
    assert_eq!(again.str("/id"), first.str("/id"));
    assert_eq!(again.json["status"], json!("completed"));
    let plain = app
        .send(request(
            Method::POST,
            "/v1/executions",
            Some(&k),
            &key,
            body(),
        ))
        .await;
    plain.ok(StatusCode::OK);
    assert_eq!(plain.json, json!({"id": first.str("/id"), "new": false}));
    let fresh = app.post("/v1/executions", &k, start("quick", "c")).await;
    fresh.ok(StatusCode::CREATED);
    assert_eq!(fresh.json["new"], json!(true));

    // One that sleeps longer than the wait: 202 with its current state, once
    // the wait has run out.
    let before = std::time::Instant::now();
    let r = app
        .post("/v1/executions?wait=1s", &k, start("nap", "d"))
        .await;
    let elapsed = before.elapsed();
    r.ok(StatusCode::ACCEPTED);
    assert_eq!(r.json["status"], json!("waiting"), "{}", r.text());
    assert_eq!(r.json["wait"]["kind"], json!("delay"), "{}", r.text());
    assert!(
        elapsed >= Duration::from_secs(1),
        "waited the wait: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "answered at the deadline: {elapsed:?}"
    );
    let napping = r.str("/id");
    assert_eq!(
        app.engine.waiters(),
        0,
        "a timed-out wait leaves no registration"
    );
    // A replay of a start under a used key waits for that execution too.
    let key = [("Idempotency-Key", "wait-2")];
    let body = || Body::from(start("nap", "e").to_string());
    let first = app
        .send(request(
            Method::POST,
            "/v1/executions?wait=0s",
            Some(&k),
            &key,
            body(),
        ))
        .await;
    first.ok(StatusCode::ACCEPTED);
    let again = app
        .send(request(
            Method::POST,
            "/v1/executions?wait=200ms",
            Some(&k),
            &key,
            body(),
        ))
        .await;
    again.ok(StatusCode::ACCEPTED);
    assert_eq!(again.str("/id"), first.str("/id"));

    // GET: at once when finished, at once with wait=0s, at the deadline when
    // it does not finish.
    let r = app.get(&format!("/v1/executions/{id}?wait=60s"), &k).await;
    r.ok(StatusCode::OK);
    assert_eq!(r.json["status"], json!("completed"));
    let r = app
        .get(&format!("/v1/executions/{napping}?wait=0s"), &k)
        .await;
    r.ok(StatusCode::ACCEPTED);
    assert_eq!(r.json["status"], json!("waiting"));
    let r = app
        .get(&format!("/v1/executions/{napping}?wait=300ms"), &k)
        .await;
    r.ok(StatusCode::ACCEPTED);
    let r = app.get(&format!("/v1/executions/{napping}"), &k).await;
    r.ok(StatusCode::OK);
    let r = app.get("/v1/executions/exe_nothing?wait=1s", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // Woken by the finish, not by the deadline: the waiter registers, then
    // the event arrives, then it answers 200 with the final state.
    let waiting = app.start(&k, "wait", json!({"user_id": "f"})).await;
    app.wait_status(&k, &waiting, "waiting").await;
    let before = std::time::Instant::now();
    let get = spawn_request(
        app,
        request(
            Method::GET,
            &format!("/v1/executions/{waiting}?wait=60s"),
            Some(&k),
            &[],
            Body::empty(),
        ),
    );
    app.until_waiters(1).await;
    app.post("/v1/events", &k, json!({"name": "go", "key": "f"}))
        .await
        .ok(StatusCode::ACCEPTED);
    let r = get.await.expect("the request");
    r.ok(StatusCode::OK);
    assert_eq!(r.json["status"], json!("completed"), "{}", r.text());
    assert_eq!(r.json["outcome"], json!("went"));
    assert!(
        before.elapsed() < Duration::from_secs(30),
        "woken by the finish, well before the 60 s wait"
    );
    // A start that waits, finished by an event while it waits.
    let post = spawn_request(
        app,
        request(
            Method::POST,
            "/v1/executions?wait=60s",
            Some(&k),
            &[],
            Body::from(start("wait", "g").to_string()),
        ),
    );
    app.until_waiters(1).await;
    // (Once it waits for the event: before, the event would reach nobody.)
    for _ in 0..500 {
        let r = app.get("/v1/executions?subject=g", &k).await;
        if r.ok(StatusCode::OK)["items"][0]["status"] == json!("waiting") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.post("/v1/events", &k, json!({"name": "go", "key": "g"}))
        .await
        .ok(StatusCode::ACCEPTED);
    let r = post.await.expect("the request");
    r.ok(StatusCode::OK);
    assert_eq!(r.json["status"], json!("completed"), "{}", r.text());
    // A cancel finishes it too.
    let cancelled = app.start(&k, "nap", json!({"user_id": "h"})).await;
    let get = spawn_request(
        app,
        request(
            Method::GET,
            &format!("/v1/executions/{cancelled}?wait=60s"),
            Some(&k),
            &[],
            Body::empty(),
        ),
    );
    app.until_waiters(1).await;
    app.post(&format!("/v1/executions/{cancelled}/cancel"), &k, json!({}))
        .await
        .ok(StatusCode::ACCEPTED);
    let r = get.await.expect("the request");
    r.ok(StatusCode::OK);
    assert_eq!(r.json["status"], json!("cancelled"), "{}", r.text());

    // Many waiters at once: each registered, none left when they end (some
    // woken by their finish, the others at their deadline).
    let mut execs = Vec::new();
    for i in 0..10 {
        execs.push(
            app.start(&k, "wait", json!({"user_id": format!("m{i}")}))
                .await,
        );
    }
    for e in &execs {
        app.wait_status(&k, e, "waiting").await;
    }
    let get_waiting = |e: &str, wait: &str| {
        request(
            Method::GET,
            &format!("/v1/executions/{e}?wait={wait}"),
            Some(&k),
            &[],
            Body::empty(),
        )
    };
    let gets: Vec<_> = (0..300)
        .map(|i| spawn_request(app, get_waiting(&execs[i % execs.len()], "60s")))
        .collect();
    app.until_waiters(300).await;
    for i in 0..execs.len() {
        app.post(
            "/v1/events",
            &k,
            json!({"name": "go", "key": format!("m{i}")}),
        )
        .await
        .ok(StatusCode::ACCEPTED);
    }
    for g in gets {
        let r = g.await.expect("the request");
        r.ok(StatusCode::OK);
        assert_eq!(r.json["status"], json!("completed"));
    }
    assert_eq!(
        app.engine.waiters(),
        0,
        "the registry is empty after the waits"
    );
    let gets: Vec<_> = (0..100)
        .map(|_| spawn_request(app, get_waiting(&napping, "1s")))
        .collect();
    for g in gets {
        g.await.expect("the request").ok(StatusCode::ACCEPTED);
    }
    assert_eq!(
        app.engine.waiters(),
        0,
        "timed-out waits leave nothing behind"
    );

    // A bad wait is a 400 naming `wait`, and starts nothing.
    let before = app.all_pages(&k, "/v1/executions", 500).await.len();
    for bad in [
        "abc",
        "10m",
        "61s",
        "60001ms",
        "2m",
        "",
        "1.5s",
        "030s",
        "1h",
        "30",
        "-1s",
        "1%20s",
        "99999999999999999999s",
    ] {
        let r = app
            .post(
                &format!("/v1/executions?wait={bad}"),
                &k,
                start("quick", "z"),
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("wait"));
        let r = app
            .get(&format!("/v1/executions/{id}?wait={bad}"), &k)
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("wait"));
    }
    let r = app
        .post("/v1/executions?wait=10m", &k, start("quick", "z"))
        .await;
    assert!(r.str("/error/message").contains("60s"), "{}", r.text());
    assert_eq!(app.all_pages(&k, "/v1/executions", 500).await.len(), before);
    // Every shape the document allows is taken.
    for good in [
        "0s", "0ms", "0m", "1m", "60s", "60000ms", "59999ms", "9s", "10s",
    ] {
        let r = app
            .get(&format!("/v1/executions/{id}?wait={good}"), &k)
            .await;
        r.ok(StatusCode::OK);
    }
    assert_eq!(app.engine.waiters(), 0);
}

#[tokio::test]
async fn waiting_for_a_result_on_sqlite() {
    let app = sqlite_app().await;
    waits(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn waiting_for_a_result_on_postgres() {
    let app = pg_app(8).await;
    waits(&app).await;
    app.finish().await;
}

async fn events<S: Store>(app: &App<S>) {
    let k = app.key("ev", &["write"]).await;
    app.workflow(&k, "wait", waiter()).await;
    let a = app.start(&k, "wait", json!({"user_id": "ada"})).await;
    let b = app.start(&k, "wait", json!({"user_id": "bob"})).await;
    app.wait_status(&k, &a, "waiting").await;
    app.wait_status(&k, &b, "waiting").await;

    let r = app
        .post("/v1/events", &k, json!({"name": "other", "key": "ada"}))
        .await;
    assert_eq!(r.ok(StatusCode::ACCEPTED), &json!({"delivered": 0}));
    let r = app
        .post(
            "/v1/events",
            &k,
            json!({"name": "go", "key": "ada", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(r.ok(StatusCode::ACCEPTED), &json!({"delivered": 1}));
    let done = app.wait_status(&k, &a, "completed").await;
    assert_eq!(done["outcome"], json!("went"));
    let r = app.get(&format!("/v1/executions/{b}"), &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["status"],
        json!("waiting"),
        "only ada's moved"
    );
    let r = app
        .post("/v1/events", &k, json!({"name": "go", "key": "ada"}))
        .await;
    assert_eq!(
        r.ok(StatusCode::ACCEPTED),
        &json!({"delivered": 0}),
        "ada is done"
    );

    let r = app
        .post("/v1/events", &k, json!({"name": "", "key": "ada"}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("name"));
    let r = app
        .post("/v1/events", &k, json!({"name": "go", "key": ""}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("key"));
    let r = app.post("/v1/events", &k, json!({"name": "go"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", None);
    assert!(r.str("/error/message").contains("key"), "{}", r.text());
    let r = app
        .post("/v1/events", &k, json!({"name": "go", "key": 7}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("key"));
}

#[tokio::test]
async fn events_on_sqlite() {
    let app = sqlite_app().await;
    events(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn events_on_postgres() {
    let app = pg_app(4).await;
    events(&app).await;
    app.finish().await;
}

async fn triggers<S: Store>(app: &App<S>) {
    let k = app.key("tr", &["write"]).await;
    let wf = app.workflow(&k, "quick", quick("fired")).await;

    // Creation and its refusals.
    let r = app
        .post(
            "/v1/workflows/quick/triggers",
            &k,
            json!({"kind": "api", "path": "hooks/quick"}),
        )
        .await;
    let t = r.ok(StatusCode::CREATED).clone();
    assert_eq!(t["state"], json!("init"));
    assert_eq!(t["kind"], json!("api"));
    assert_eq!(t["path"], json!("hooks/quick"));
    assert_eq!(t["next_fires"], json!([]));
    assert_eq!(t["workflow_id"], json!(wf));
    assert_eq!(t["config"], json!({}));
    let id = t["id"].as_str().expect("id").to_owned();
    let refusals = [
        (json!({"kind": "api"}), "path"),
        (json!({"kind": "api", "path": "/lead"}), "path"),
        (json!({"kind": "api", "path": "sp ace"}), "path"),
        (
            json!({"kind": "api", "path": "x", "config": {"version": 0}}),
            "config.version",
        ),
        (json!({"kind": "api", "path": "x", "config": []}), "config"),
        (
            json!({"kind": "schedule", "config": {"cron": "every tuesday"}}),
            "config.cron",
        ),
        (
            json!({"kind": "schedule", "config": {"cron": "61 * * * *"}}),
            "config.cron",
        ),
        (
            json!({"kind": "schedule", "config": {"cron": "0 9 * * *", "timezone": "Mars/Base"}}),
            "config.timezone",
        ),
        (
            json!({"kind": "schedule", "config": {"cron": "0 9 * * *", "input": 3}}),
            "config.input",
        ),
        (
            json!({"kind": "schedule", "config": {"cron": "0 9 * * *"}, "path": "x"}),
            "path",
        ),
        (
            json!({"kind": "schedule", "config": {"cron": 5}}),
            "config.cron",
        ),
        (
            json!({"kind": "event", "config": {"event": ""}}),
            "config.event",
        ),
        (json!({"kind": "teleport"}), "kind"),
    ];
    for (body, field) in refusals {
        let r = app
            .post("/v1/workflows/quick/triggers", &k, body.clone())
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some(field));
    }
    let r = app
        .post(
            "/v1/workflows/quick/triggers",
            &k,
            json!({"kind": "api", "path": "hooks/quick"}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("path"));
    let r = app
        .post(
            "/v1/workflows/nope/triggers",
            &k,
            json!({"kind": "api", "path": "z"}),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = app
        .post(
            "/v1/workflows/quick/triggers",
            &k,
            json!({"kind": "schedule", "config": {"cron": "0 9 * * 1-5", "timezone": "Europe/Paris"}}),
        )
        .await;
    let sched = r.ok(StatusCode::CREATED).clone();
    assert_eq!(sched["kind"], json!("schedule"));
    assert_eq!(sched["path"], Value::Null);
    // Its next five fire times: weekdays at 09:00 in Paris, in order.
    let fires: Vec<chrono::DateTime<chrono::Utc>> =
        serde_json::from_value(sched["next_fires"].clone()).expect("next_fires");
    assert_eq!(fires.len(), 5, "{sched}");
    assert!(fires.windows(2).all(|w| w[0] < w[1]), "{fires:?}");
    assert!(fires[0] > chrono::Utc::now());
    for f in &fires {
        let local = f.with_timezone(&chrono_tz::Europe::Paris);
        assert_eq!(local.format("%H:%M").to_string(), "09:00", "{f}");
        assert!(!matches!(
            chrono::Datelike::weekday(&local),
            chrono::Weekday::Sat | chrono::Weekday::Sun
        ));
    }
    // Not firing until active: then its durable next fire is the first of
    // them; paused, none.
    assert_eq!(sched["next_fire_at"], Value::Null);
    let sid = sched["id"].as_str().expect("id").to_owned();
    let r = app
        .post(&format!("/v1/triggers/{sid}/activate"), &k, json!({}))
        .await;
    let active = r.ok(StatusCode::OK).clone();
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(active["next_fire_at"].clone()).expect("next_fire_at");
    assert_eq!(next, fires[0], "{active}");
    let r = app
        .post(&format!("/v1/triggers/{sid}/pause"), &k, json!({}))
        .await;
    assert_eq!(r.ok(StatusCode::OK)["next_fire_at"], Value::Null);
    // A bad schedule names its field; nothing is created.
    for (config, field) in [
        (json!({"timezone": "UTC"}), "config.cron"),
        (
            json!({"cron": "0 9 * * *", "grace_seconds": 999999}),
            "config.grace_seconds",
        ),
        (
            json!({"cron": "0 9 * * *", "misfire": "twice"}),
            "config.misfire",
        ),
    ] {
        let r = app
            .post(
                "/v1/workflows/quick/triggers",
                &k,
                json!({"kind": "schedule", "config": config}),
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some(field));
    }
    let r = app
        .post(
            "/v1/workflows/quick/triggers",
            &k,
            json!({"kind": "event", "config": {"event": "signed_up", "topic": "bad topic"}}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("config.topic"),
    );
    let r = app
        .post(
            "/v1/workflows/quick/triggers",
            &k,
            json!({"kind": "event", "config": {"event": "signed_up"}}),
        )
        .await;
    let event_id = r.ok(StatusCode::CREATED)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // An event trigger's dead letters (none yet); a bad limit is named.
    let r = app
        .get(&format!("/v1/triggers/{event_id}/dead-letters"), &k)
        .await;
    assert_eq!(r.ok(StatusCode::OK), &json!([]));
    let r = app
        .get(&format!("/v1/triggers/{event_id}/dead-letters?limit=0"), &k)
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("limit"),
    );
    let r = app.get("/v1/triggers/trg_nope/dead-letters", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    let r = app.get("/v1/triggers", &k).await;
    assert_eq!(r.ok(StatusCode::OK).as_array().map(Vec::len), Some(3));
    let r = app.get("/v1/triggers?workflow=quick", &k).await;
    assert_eq!(r.ok(StatusCode::OK).as_array().map(Vec::len), Some(3));
    let r = app.get("/v1/triggers?workflow=nope", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = app.get(&format!("/v1/triggers/{id}"), &k).await;
    assert_eq!(r.ok(StatusCode::OK)["id"], json!(id));
    let r = app.get("/v1/triggers/trg_nope", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // Firing: only while active.
    let fire = |body: Value| {
        request(
            Method::POST,
            "/trigger/hooks/quick",
            Some(&k),
            &[],
            Body::from(body.to_string()),
        )
    };
    let r = app.send(fire(json!({"a": 1}))).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("state"));
    assert!(r.str("/error/message").contains("init"), "{}", r.text());

    let mv = |op: &str| format!("/v1/triggers/{id}/{op}");
    let refused = |r: &Resp, current: &str| {
        assert_error(r, StatusCode::CONFLICT, "conflict", Some("state"));
        assert!(
            r.str("/error/message").contains(current),
            "names the current state {current}: {}",
            r.text()
        );
    };
    refused(&app.post_empty(&mv("pause"), &k).await, "init");
    refused(&app.post_empty(&mv("resume"), &k).await, "init");
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/triggers/{id}"),
            Some(&k),
            None,
        )
        .await;
    refused(&r, "init");

    let r = app.post_empty(&mv("activate"), &k).await;
    assert_eq!(r.ok(StatusCode::OK)["state"], json!("active"));
    refused(&app.post_empty(&mv("activate"), &k).await, "active");
    refused(&app.post_empty(&mv("resume"), &k).await, "active");
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/triggers/{id}"),
            Some(&k),
            None,
        )
        .await;
    refused(&r, "active");

    let r = app.send(fire(json!({"a": 1}))).await;
    let started = r.ok(StatusCode::CREATED).clone();
    assert_eq!(started["new"], json!(true));
    let exec = started["id"].as_str().expect("id").to_owned();
    let e = app.wait_status(&k, &exec, "completed").await;
    assert_eq!(e["workflow_id"], json!(wf));
    assert_eq!(e["input"], json!({"a": 1}));
    assert_eq!(e["outcome"], json!("fired"));
    let r = app
        .send(request(
            Method::POST,
            "/trigger/hooks/quick",
            Some(&k),
            &[],
            Body::empty(),
        ))
        .await;
    r.ok(StatusCode::CREATED);
    let r = app.send(fire(json!([1]))).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("body"));
    let r = app
        .send(request(
            Method::POST,
            "/trigger/hooks/nope",
            Some(&k),
            &[],
            Body::from("{}"),
        ))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    assert!(
        r.str("/error/message").contains("hooks/nope"),
        "{}",
        r.text()
    );

    let r = app.post_empty(&mv("pause"), &k).await;
    assert_eq!(r.ok(StatusCode::OK)["state"], json!("paused"));
    refused(&app.post_empty(&mv("pause"), &k).await, "paused");
    refused(&app.post_empty(&mv("activate"), &k).await, "paused");
    let r = app.send(fire(json!({"a": 2}))).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("state"));
    assert!(r.str("/error/message").contains("paused"), "{}", r.text());

    let r = app.post_empty(&mv("resume"), &k).await;
    assert_eq!(r.ok(StatusCode::OK)["state"], json!("active"));
    let r = app.send(fire(json!({"a": 3}))).await;
    r.ok(StatusCode::CREATED);

    let r = app.post_empty(&mv("stop"), &k).await;
    assert_eq!(r.ok(StatusCode::OK)["state"], json!("stopped"));
    refused(&app.post_empty(&mv("stop"), &k).await, "stopped");
    refused(&app.post_empty(&mv("resume"), &k).await, "stopped");
    refused(&app.post_empty(&mv("activate"), &k).await, "stopped");
    let r = app.send(fire(json!({"a": 4}))).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("state"));

    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/triggers/{id}"),
            Some(&k),
            None,
        )
        .await;
    assert_eq!(r.ok(StatusCode::OK)["state"], json!("destroyed"));
    let r = app.send(fire(json!({"a": 5}))).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = app.get("/v1/triggers", &k).await;
    let live = ids(r.ok(StatusCode::OK).as_array().expect("array"));
    assert!(!live.contains(&id), "destroyed triggers are not listed");
    assert_eq!(live.len(), 2);
    for op in ["activate", "pause", "resume", "stop"] {
        let r = app
            .post_empty(&format!("/v1/triggers/trg_nope/{op}"), &k)
            .await;
        assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    }
    let r = app
        .call(Method::DELETE, "/v1/triggers/trg_nope", Some(&k), None)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // Idempotent fires, and a pinned version.
    let r = app
        .post(
            "/v1/workflows/quick/triggers",
            &k,
            json!({"kind": "api", "path": "pinned", "config": {"version": 1}}),
        )
        .await;
    let pinned = r.ok(StatusCode::CREATED)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.post_empty(&format!("/v1/triggers/{pinned}/activate"), &k)
        .await
        .ok(StatusCode::OK);
    app.call(
        Method::PUT,
        "/v1/workflows/quick",
        Some(&k),
        Some(json!({"definition": quick("second"), "publish": true})),
    )
    .await
    .ok(StatusCode::OK);
    let fire_once = || {
        request(
            Method::POST,
            "/trigger/pinned",
            Some(&k),
            &[("Idempotency-Key", "once")],
            Body::from("{}"),
        )
    };
    let r = app.send(fire_once()).await;
    let pinned_exec = r.ok(StatusCode::CREATED)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = app.send(fire_once()).await;
    assert_eq!(r.ok(StatusCode::OK)["id"], json!(pinned_exec));
    assert_eq!(r.json["new"], json!(false));
    let e = app.wait_status(&k, &pinned_exec, "completed").await;
    assert_eq!(e["version"], json!(1), "the trigger's pinned version");
    assert_eq!(e["outcome"], json!("fired"));

    // Its path is free again once destroyed.
    let r = app
        .post(
            "/v1/workflows/quick/triggers",
            &k,
            json!({"kind": "api", "path": "hooks/quick"}),
        )
        .await;
    r.ok(StatusCode::CREATED);

    // Four fires started four executions of the workflow.
    let r = app.get("/v1/executions?workflow=quick", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["items"].as_array().map(Vec::len),
        Some(4)
    );
}

#[tokio::test]
async fn triggers_on_sqlite() {
    let app = sqlite_app().await;
    triggers(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn triggers_on_postgres() {
    let app = pg_app(4).await;
    triggers(&app).await;
    app.finish().await;
}

// ---- the registry -------------------------------------------------------------

/// A config whose secrets hold the CRM's token.
fn crm_config(token: &str) -> Config {
    let secrets = [(
        "CRM_TOKEN".to_owned(),
        secrecy::SecretString::from(token.to_owned()),
    )]
    .into_iter()
    .collect();
    Config {
        secrets: sojourn_actors::Secrets::new(secrets),
        ..config()
    }
}

/// start → one `crm.update_contact` with these inputs → exit.
fn crm_journey(inputs: Value) -> Value {
    json!({
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "crm", "type": "action", "config": {
                "action": "crm.update_contact", "inputs": inputs, "retry": {"max_attempts": 1}}},
            {"id": "done", "type": "exit", "config": {"outcome": "synced"}}
        ],
        "edges": [
            {"from": "start", "to": "crm"},
            {"from": "crm", "to": "done", "branch": "success"}
        ]
    })
}

async fn registry<S: Store>(app: &App<S>, crm: &sojourn_testkit::fakes::Fake) {
    let k = app.key("reg", &["write"]).await;
    let put = |name: &str, body: Value| {
        let uri = format!("/v1/registry/{name}");
        let k = k.clone();
        async move { app.call(Method::PUT, &uri, Some(&k), Some(body)).await }
    };

    // The built-ins are there, with their schemas, triggers included.
    let r = app.get("/v1/registry", &k).await;
    let all = r.ok(StatusCode::OK).as_array().expect("list").clone();
    let email = all
        .iter()
        .find(|d| d["name"] == "email.send")
        .expect("email.send is listed");
    assert_eq!(email["builtin"], json!(true));
    assert_eq!(email["enabled"], json!(true));
    assert_eq!(
        email["definition"]["inputs"]["required"],
        json!(["to", "subject"])
    );
    let r = app.get("/v1/registry?kind=trigger", &k).await;
    let triggers = r.ok(StatusCode::OK).as_array().expect("list").clone();
    assert_eq!(
        triggers
            .iter()
            .map(|d| d["name"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        [
            "trigger.api",
            "trigger.schedule",
            "trigger.event",
            "trigger.segment"
        ]
    );
    assert!(triggers[1]["definition"]["inputs"]["properties"]["cron"].is_object());

    // A bad definition is refused field by field, and nothing is stored.
    let r = put(
        "crm.update_contact",
        json!({"kind": "action", "inputs": {"type": "object", "properties": {"id": {"type": "nope"}}},
            "run": {"http": {"url": "ftp://crm.example.com/"}}}),
    )
    .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("inputs"),
    );
    assert_eq!(r.json["error"]["details"].as_array().map(Vec::len), Some(2));
    assert_eq!(r.json["error"]["details"][1]["field"], "run.http.url");
    let r = app.get("/v1/registry/crm.update_contact", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = put("Crm", json!({"kind": "action"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("name"));
    let r = put(
        "email.send",
        json!({"kind": "action", "run": {"kafka": {"topic": "t"}}}),
    )
    .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("name"));
    let r = put(
        "email.digest",
        json!({"kind": "action", "run": {"kafka": {"topic": "t"}}}),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("name"));

    // Created, unchanged, edited.
    let v1 = json!({
        "kind": "action", "title": "Update a contact", "category": "crm", "icon": "users",
        "inputs": {"type": "object", "required": ["id", "plan"], "properties": {
            "id": {"type": "string"}, "plan": {"enum": ["free", "pro"]}}},
        "run": {"http": {"method": "PATCH", "url": format!("{}/contacts/{{{{ inputs.id }}}}", crm.url()),
            "headers": {"Authorization": "Bearer {{ secrets.CRM_TOKEN }}"}}},
    });
    let r = put("crm.update_contact", v1.clone()).await;
    let created = r.ok(StatusCode::CREATED);
    assert_eq!(
        (created["version"].clone(), created["new"].clone()),
        (json!(1), json!(true))
    );
    let r = put("crm.update_contact", v1.clone()).await;
    assert_eq!(
        r.ok(StatusCode::OK)["new"],
        json!(false),
        "unchanged: no version"
    );

    // Workflows are validated against it: the node and the field are named.
    let r = app
        .post(
            "/v1/workflows",
            &k,
            json!({"key": "crm-bad", "definition": crm_journey(json!({"id": 7, "plan": "gold"})), "publish": true}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_workflow",
        Some("definition.nodes[crm].config.inputs.id"),
    );
    assert_eq!(r.json["error"]["details"].as_array().map(Vec::len), Some(2));
    let r = app.get("/v1/workflows/crm-bad", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // Published, it pins version 1, and runs as that version says.
    let journey = crm_journey(json!({"id": "{{ input.user }}", "plan": "pro"}));
    app.workflow(&k, "crm", journey.clone()).await;
    let r = app.get("/v1/workflows/crm/versions/1", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["registry"],
        json!({"crm.update_contact": 1})
    );
    let e = app.start(&k, "crm", json!({"user": "u-1"})).await;
    let done = app.wait_status(&k, &e, "completed").await;
    assert_eq!(done["outcome"], "synced");
    let sent = crm.accepted();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].method.as_str(), sent[0].path.as_str()),
        ("PATCH", "/contacts/u-1")
    );
    assert_eq!(sent[0].body, json!({"id": "u-1", "plan": "pro"}));
    assert_eq!(sent[0].header("idempotency-key"), format!("{e}/crm/1"));
    // The secret went to the CRM, and nowhere the API shows.
    assert_eq!(sent[0].header("authorization"), "Bearer crm-secret");
    for path in ["", "/journal", "/nodes"] {
        let r = app.get(&format!("/v1/executions/{e}{path}"), &k).await;
        assert!(
            !r.ok(StatusCode::OK).to_string().contains("crm-secret"),
            "{path}"
        );
    }

    // Version 2 changes how it runs; the published version keeps version 1.
    let mut v2 = v1.clone();
    v2["run"]["http"]["method"] = json!("PUT");
    v2["run"]["http"]["body"] = json!({"contact": "{{ inputs.id }}", "tier": "{{ inputs.plan }}"});
    let r = put("crm.update_contact", v2).await;
    assert_eq!(r.ok(StatusCode::OK)["version"], json!(2));
    let r = app.get("/v1/registry/crm.update_contact", &k).await;
    let got = r.ok(StatusCode::OK);
    assert_eq!(got["versions"].as_array().map(Vec::len), Some(2));
    let r = app
        .get("/v1/registry/crm.update_contact?version=1", &k)
        .await;
    assert_eq!(
        r.ok(StatusCode::OK)["definition"]["run"]["http"]["method"],
        "PATCH"
    );
    let e = app.start(&k, "crm", json!({"user": "u-2"})).await;
    app.wait_status(&k, &e, "completed").await;
    assert_eq!(crm.accepted()[1].method, "PATCH", "the pinned version runs");
    // Publishing the same document again pins version 2: a new version.
    let r = app
        .call(
            Method::PUT,
            "/v1/workflows/crm",
            Some(&k),
            Some(json!({"definition": journey, "publish": true})),
        )
        .await;
    assert_eq!(
        r.ok(StatusCode::OK)["published"]["registry"],
        json!({"crm.update_contact": 2})
    );
    let e = app.start(&k, "crm", json!({"user": "u-3"})).await;
    app.wait_status(&k, &e, "completed").await;
    let third = &crm.accepted()[2];
    assert_eq!(third.method, "PUT");
    assert_eq!(third.body, json!({"contact": "u-3", "tier": "pro"}));

    // Disabled: new versions are refused, and an execution that reaches it
    // pauses with the reason, sending nothing, until enabled and retried.
    let r = app
        .post_empty("/v1/registry/crm.update_contact/disable", &k)
        .await;
    assert_eq!(r.ok(StatusCode::OK)["enabled"], json!(false));
    let r = app
        .post(
            "/v1/workflows",
            &k,
            json!({"key": "crm-new", "definition": crm_journey(json!({"id": "a", "plan": "pro"})), "publish": true}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_workflow",
        Some("definition.nodes[crm].config.action"),
    );
    assert!(r.str("/error/message").contains("disabled"), "{}", r.text());
    let e = app.start(&k, "crm", json!({"user": "u-4"})).await;
    let paused = app.wait_status(&k, &e, "paused").await;
    assert!(
        paused["pause"]["error"]
            .as_str()
            .is_some_and(|m| m.contains("disabled in the registry")),
        "{paused:#}"
    );
    assert_eq!(crm.accepted().len(), 3, "nothing was sent");
    let r = app
        .post_empty("/v1/registry/crm.update_contact/enable", &k)
        .await;
    assert_eq!(r.ok(StatusCode::OK)["enabled"], json!(true));
    app.post_empty(&format!("/v1/executions/{e}/retry"), &k)
        .await
        .ok(StatusCode::ACCEPTED);
    app.wait_status(&k, &e, "completed").await;
    assert_eq!(crm.accepted().len(), 4);

    // A built-in can be disabled (and is listed so); not edited or deleted.
    let r = app.post_empty("/v1/registry/email.send/disable", &k).await;
    assert_eq!(r.ok(StatusCode::OK)["builtin"], json!(true));
    let r = app.get("/v1/registry?kind=action", &k).await;
    let email = r
        .ok(StatusCode::OK)
        .as_array()
        .expect("list")
        .iter()
        .find(|d| d["name"] == "email.send")
        .cloned();
    assert_eq!(email.map(|e| e["enabled"].clone()), Some(json!(false)));
    let r = app
        .call(Method::DELETE, "/v1/registry/email.send", Some(&k), None)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("name"));

    // Disabling the built-in a custom action is sent through holds both,
    // in this namespace only.
    let other = app.key("reg-other", &["write"]).await;
    let hook = |user: &str| {
        json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "call", "type": "action", "config": {"action": "http.request", "inputs": {
                    "url": format!("{}/hooks/{user}", crm.url()),
                    "headers": {"Authorization": "Bearer {{ secrets.CRM_TOKEN }}"},
                    "body": {"user": user}}}},
                {"id": "done", "type": "exit"}
            ],
            "edges": [{"from": "start", "to": "call"}, {"from": "call", "to": "done", "branch": "success"}]
        })
    };
    app.workflow(&k, "hook", hook("mine")).await;
    app.workflow(&other, "hook", hook("theirs")).await;
    let r = app
        .post_empty("/v1/registry/http.request/disable", &k)
        .await;
    assert_eq!(r.ok(StatusCode::OK)["enabled"], json!(false));
    let before = crm.accepted().len();
    let mine = app.start(&k, "hook", json!({})).await;
    let crm_held = app.start(&k, "crm", json!({"user": "u-6"})).await;
    let theirs = app.start(&other, "hook", json!({})).await;
    app.wait_status(&other, &theirs, "completed").await;
    for e in [&mine, &crm_held] {
        let paused = app.wait_status(&k, e, "paused").await;
        assert!(
            paused["pause"]["error"]
                .as_str()
                .is_some_and(|m| m.contains("action http.request is disabled")),
            "{paused:#}"
        );
    }
    assert_eq!(
        crm.accepted().len(),
        before + 1,
        "only the other namespace's call"
    );
    assert_eq!(crm.accepted()[before].path, "/hooks/theirs");
    let r = app
        .post(
            "/v1/workflows",
            &k,
            json!({"key": "crm-via", "definition": crm_journey(json!({"id": "a", "plan": "pro"})), "publish": true}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_workflow",
        Some("definition.nodes[crm].config.action"),
    );
    assert!(
        r.str("/error/message")
            .contains("sent through http.request"),
        "{}",
        r.text()
    );
    app.post_empty("/v1/registry/http.request/enable", &k)
        .await
        .ok(StatusCode::OK);
    for e in [&mine, &crm_held] {
        app.post_empty(&format!("/v1/executions/{e}/retry"), &k)
            .await
            .ok(StatusCode::ACCEPTED);
        app.wait_status(&k, e, "completed").await;
    }
    assert_eq!(crm.accepted().len(), before + 3);

    // A disabled trigger kind makes no new trigger instances.
    app.post_empty("/v1/registry/trigger.schedule/disable", &k)
        .await
        .ok(StatusCode::OK);
    let r = app
        .post(
            "/v1/workflows/crm/triggers",
            &k,
            json!({"kind": "schedule", "config": {"cron": "0 9 * * *"}}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("kind"));
    let r = app
        .post(
            "/v1/workflows/hook/triggers",
            &other,
            json!({"kind": "schedule", "config": {"cron": "0 9 * * *"}}),
        )
        .await;
    r.ok(StatusCode::CREATED);

    // Another namespace sees none of it.
    let r = app.get("/v1/registry/crm.update_contact", &other).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = app.get("/v1/registry?kind=action", &other).await;
    assert!(
        r.ok(StatusCode::OK)
            .as_array()
            .expect("list")
            .iter()
            .all(|d| d["enabled"] == json!(true))
    );

    // Deleted: gone from the registry; the published version still runs.
    let r = app
        .call(
            Method::DELETE,
            "/v1/registry/crm.update_contact",
            Some(&k),
            None,
        )
        .await;
    assert_eq!(r.ok(StatusCode::OK)["deleted"], json!(true));
    let r = app.get("/v1/registry/crm.update_contact", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let e = app.start(&k, "crm", json!({"user": "u-5"})).await;
    app.wait_status(&k, &e, "completed").await;
    assert_eq!(crm.accepted().len(), 8);
    // Deleted, it can still be disabled: what pins it is held.
    let r = app
        .post_empty("/v1/registry/crm.update_contact/disable", &k)
        .await;
    let off = r.ok(StatusCode::OK);
    assert_eq!(
        (off["enabled"].clone(), off["deleted"].clone()),
        (json!(false), json!(true))
    );
    let e = app.start(&k, "crm", json!({"user": "u-7"})).await;
    app.wait_status(&k, &e, "paused").await;
    app.post_empty("/v1/registry/crm.update_contact/enable", &k)
        .await
        .ok(StatusCode::OK);
    app.post_empty(&format!("/v1/executions/{e}/retry"), &k)
        .await
        .ok(StatusCode::ACCEPTED);
    app.wait_status(&k, &e, "completed").await;
    assert_eq!(crm.accepted().len(), 9);
    assert!(crm.refused().is_empty(), "{:?}", crm.refused());
}

// ---- analytics ----------------------------------------------------------------

async fn analytics<S: Store>(app: &App<S>) {
    let k = app.key("stats", &["write"]).await;
    let branching = json!({
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "check", "type": "condition", "config": {"expression": "input.vip"}},
            {"id": "vip", "type": "exit", "config": {"outcome": "vip"}},
            {"id": "plain", "type": "exit", "config": {"outcome": "plain"}}
        ],
        "edges": [
            {"from": "start", "to": "check"},
            {"from": "check", "to": "vip", "branch": "true"},
            {"from": "check", "to": "plain", "branch": "false"}
        ]
    });
    app.workflow(&k, "split", branching).await;
    for vip in [true, true, false, true, false] {
        let e = app.start(&k, "split", json!({"vip": vip})).await;
        app.wait_status(&k, &e, "completed").await;
    }
    // The rollup job counts them within its period.
    let mut funnel = Value::Null;
    for _ in 0..600 {
        let r = app.get("/v1/analytics/workflows/split/funnel", &k).await;
        funnel = r.ok(StatusCode::OK).clone();
        if funnel["completed"] == json!(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(funnel["entered"], json!(5), "{funnel:#}");
    assert_eq!(funnel["completed"], json!(5), "{funnel:#}");
    assert_eq!(funnel["outcomes"], json!({"vip": 3, "plain": 2}));
    let nodes = funnel["nodes"].as_array().expect("nodes");
    assert_eq!(
        nodes
            .iter()
            .map(|n| n["node"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["start", "check", "vip", "plain"],
        "in the workflow's order"
    );
    assert_eq!(nodes[1]["entered"], json!(5));
    assert_eq!(nodes[1]["branches"], json!({"true": 3, "false": 2}));
    assert_eq!(
        (nodes[2]["entered"].clone(), nodes[3]["entered"].clone()),
        (json!(3), json!(2))
    );

    // A daily series, in a time zone: every day of the range, zeros included.
    let today = chrono::Utc::now().date_naive();
    let from = (today - chrono::Days::new(2))
        .format("%Y-%m-%d")
        .to_string();
    let to = (today + chrono::Days::new(2))
        .format("%Y-%m-%d")
        .to_string();
    for tz in ["UTC", "Pacific/Kiritimati", "America/Adak"] {
        let r = app
            .get(
                &format!("/v1/analytics/workflows/split/series?metric=completed&from={from}&to={to}&timezone={tz}"),
                &k,
            )
            .await;
        let s = r.ok(StatusCode::OK);
        let days = s["days"].as_array().expect("days");
        assert_eq!(days.len(), 5, "{s:#}");
        let total: i64 = days.iter().map(|d| d["value"].as_i64().unwrap_or(0)).sum();
        assert_eq!(total, 5, "{tz}: {s:#}");
        assert_eq!(s["timezone"], tz);
    }
    let r = app
        .get(
            &format!(
                "/v1/analytics/workflows/split/series?metric=entered&node=check&from={from}&to={to}"
            ),
            &k,
        )
        .await;
    let total: i64 = r.ok(StatusCode::OK)["days"]
        .as_array()
        .expect("days")
        .iter()
        .map(|d| d["value"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(total, 5);

    // Bad input names its field.
    for (uri, field) in [
        (
            "/v1/analytics/workflows/split/series?metric=clicks",
            "metric",
        ),
        (
            "/v1/analytics/workflows/split/series?metric=entered&timezone=Mars/Olympus",
            "timezone",
        ),
        (
            "/v1/analytics/workflows/split/funnel?from=2026-02-30",
            "from",
        ),
        (
            "/v1/analytics/workflows/split/funnel?from=2026-03-02&to=2026-03-01",
            "from",
        ),
        (
            "/v1/analytics/workflows/split/funnel?from=2020-01-01&to=2026-01-01",
            "from",
        ),
        ("/v1/analytics/workflows/split/funnel?from=2026-1-1", "from"),
        (
            "/v1/analytics/workflows/split/series?metric=entered&version=0",
            "version",
        ),
        ("/v1/analytics/workflows/split/export?version=-1", "version"),
    ] {
        let r = app.get(uri, &k).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some(field));
    }
    let other = app.key("stats-other", &["read"]).await;
    let r = app
        .get("/v1/analytics/workflows/split/funnel", &other)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // The export: CSV, a header and one line per rolled-up row.
    let r = app
        .get(
            &format!("/v1/analytics/workflows/split/export?from={from}&to={to}"),
            &k,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("text/csv; charset=utf-8")
    );
    let text = r.text();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("day,hour,workflow_id,version,node,branch,channel,provider,metric,value")
    );
    let completed: i64 = lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.get(8) == Some(&"completed")).then(|| f[9].parse::<i64>().unwrap_or(0))
        })
        .sum();
    assert_eq!(completed, 5, "{text}");

    // The node that fails most: an execution whose condition cannot be
    // judged fails there.
    let e = app.start(&k, "split", json!({})).await;
    app.wait_status(&k, &e, "failed").await;
    let mut failing = Value::Null;
    for _ in 0..600 {
        let r = app
            .get("/v1/analytics/failing-nodes?workflow=split", &k)
            .await;
        failing = r.ok(StatusCode::OK).clone();
        if failing["nodes"][0]["failed"] == json!(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failing["nodes"][0]["node"], json!("check"), "{failing:#}");
    assert_eq!(
        failing["nodes"][0]["workflow"],
        json!("split"),
        "{failing:#}"
    );
    // No message was sent: no delivery rates, and nothing is made up.
    let r = app.get("/v1/analytics/deliveries", &k).await;
    let d = r.ok(StatusCode::OK);
    assert_eq!(
        (d["channels"].clone(), d["providers"].clone()),
        (json!([]), json!([]))
    );

    // A goal, a holdout and an A/B split: conversions per group and
    // variant.
    let goals = json!({
        "settings": {
            "subject": "input.user_id",
            "goal": {"event": "purchase", "within": "7d"},
            "holdout": {"percent": 30}
        },
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "ab", "type": "split", "config": {"variants": [
                {"branch": "a", "percent": 50}, {"branch": "b", "percent": 50}]}},
            {"id": "va", "type": "exit", "config": {"outcome": "a"}},
            {"id": "vb", "type": "exit", "config": {"outcome": "b"}}
        ],
        "edges": [
            {"from": "start", "to": "ab"},
            {"from": "ab", "to": "va", "branch": "a"},
            {"from": "ab", "to": "vb", "branch": "b"}
        ]
    });
    let mut keyed = goals.clone();
    keyed["key"] = json!("goals");
    let compiled = sojourn_runtime::CompiledWorkflow::compile(
        &sojourn_runtime::Workflow::from_value(keyed).expect("parses"),
        &sojourn_runtime::Registry::builtin(),
    )
    .expect("compiles");
    app.workflow(&k, "goals", goals).await;
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    for u in &users {
        let e = app.start(&k, "goals", json!({"user_id": u})).await;
        app.wait_status(&k, &e, "completed").await;
    }
    let held = users.iter().filter(|u| compiled.held_out(u)).count() as i64;
    let converters: Vec<&String> = users.iter().step_by(3).collect();
    let held_converters = converters.iter().filter(|u| compiled.held_out(u)).count() as i64;
    for u in &converters {
        let r = app
            .post("/v1/events", &k, json!({"name": "purchase", "key": u}))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    // Again: an execution converts once.
    app.post(
        "/v1/events",
        &k,
        json!({"name": "purchase", "key": converters[0]}),
    )
    .await;
    let mut c = Value::Null;
    for _ in 0..600 {
        let r = app
            .get("/v1/analytics/workflows/goals/conversions", &k)
            .await;
        c = r.ok(StatusCode::OK).clone();
        let total = c["journey"]["converted"].as_i64().unwrap_or(0)
            + c["holdout"]["converted"].as_i64().unwrap_or(0);
        let entered = c["journey"]["entered"].as_i64().unwrap_or(0)
            + c["holdout"]["entered"].as_i64().unwrap_or(0);
        if total == converters.len() as i64 && entered == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        c["goal"],
        json!({"event": "purchase", "within": "7d"}),
        "{c:#}"
    );
    assert_eq!(c["holdout_percent"], json!(30.0), "{c:#}");
    assert_eq!(c["holdout"]["entered"], json!(held), "{c:#}");
    assert_eq!(c["journey"]["entered"], json!(20 - held), "{c:#}");
    assert_eq!(c["holdout"]["converted"], json!(held_converters), "{c:#}");
    assert_eq!(
        c["journey"]["converted"],
        json!(converters.len() as i64 - held_converters),
        "{c:#}"
    );
    for group in [&c["journey"], &c["holdout"]] {
        let (low, high) = (group["low"].as_f64(), group["high"].as_f64());
        if let (Some(rate), Some(low), Some(high)) = (group["rate"].as_f64(), low, high) {
            assert!(low <= rate && rate <= high && high <= 1.0, "{group}");
        }
    }
    // The variants share the journey's entrants and its converters.
    let branches = c["branches"].as_array().expect("branches");
    let sum = |field: &str| {
        branches
            .iter()
            .filter(|b| b["node"] == json!("ab"))
            .map(|b| b[field].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    assert_eq!(sum("entered"), 20 - held, "{c:#}");
    assert_eq!(
        sum("converted"),
        converters.len() as i64 - held_converters,
        "{c:#}"
    );

    // The funnel keeps the holdout apart from the journey's ends.
    let r = app.get("/v1/analytics/workflows/goals/funnel", &k).await;
    let f = r.ok(StatusCode::OK);
    assert_eq!(
        (
            f["entered"].clone(),
            f["completed"].clone(),
            f["held_out"].clone()
        ),
        (json!(20 - held), json!(20 - held), json!(held)),
        "{f:#}"
    );
    assert!(f["outcomes"].get("holdout").is_none(), "{f:#}");

    // Retention: an admin's to set, checked field by field.
    let r = app
        .call(
            Method::PUT,
            "/v1/retention",
            Some(&k),
            Some(json!({"journal_days": 30})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let admin = app.key("stats", &["admin"]).await;
    for (body, field) in [
        (json!({"journal_days": 0}), "journal_days"),
        (json!({"deliveries_days": 5000}), "deliveries_days"),
        (json!({"journal_days": "30"}), "journal_days"),
        (json!([30]), "body"),
    ] {
        let r = app
            .call(Method::PUT, "/v1/retention", Some(&admin), Some(body))
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some(field));
    }
    let r = app
        .call(Method::PUT, "/v1/retention", Some(&admin), None)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("body"));
    let r = app.get("/v1/retention", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK).clone(),
        json!({"journal_days": null, "node_executions_days": null, "deliveries_days": null})
    );
    let r = app
        .call(
            Method::PUT,
            "/v1/retention",
            Some(&admin),
            Some(json!({"journal_days": 30, "deliveries_days": 90})),
        )
        .await;
    r.ok(StatusCode::OK);
    let r = app.get("/v1/retention", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK).clone(),
        json!({"journal_days": 30, "node_executions_days": null, "deliveries_days": 90})
    );
    for (uri, field) in [
        ("/v1/analytics/failing-nodes?limit=0", "limit"),
        ("/v1/analytics/deliveries?limit=5", "limit"),
        ("/v1/analytics/deliveries?to=2026-13-01", "to"),
        (
            "/v1/analytics/workflows/goals/conversions?version=0",
            "version",
        ),
    ] {
        let r = app.get(uri, &k).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some(field));
    }
    let r = app.get("/v1/analytics/deliveries?workflow=nope", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
}

#[tokio::test]
async fn analytics_on_sqlite() {
    let app = sqlite_app().await;
    analytics(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn analytics_on_postgres() {
    let app = pg_app(8).await;
    analytics(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn the_registry_on_sqlite() {
    let crm = sojourn_testkit::fakes::Fake::json_api("crm-secret").await;
    let path = std::env::temp_dir().join(format!(
        "sojourn-api-test-{}.db",
        uuid::Uuid::now_v7().simple()
    ));
    let store = SqliteStore::open(&path).await.expect("open sqlite");
    let app = app_with(store, path.display().to_string(), crm_config("crm-secret")).await;
    registry(&app, &crm).await;
    app.finish().await;
}

#[tokio::test]
async fn the_registry_on_postgres() {
    let crm = sojourn_testkit::fakes::Fake::json_api("crm-secret").await;
    let schema = format!("{PG_PREFIX}{}", uuid::Uuid::now_v7().simple());
    let store = PgStore::connect_creating_schema(&database_url(), &schema, 8)
        .await
        .expect("PostgreSQL answers");
    let app = app_with(store, schema, crm_config("crm-secret")).await;
    registry(&app, &crm).await;
    app.finish().await;
}

#[tokio::test]
async fn keys_scopes_health_and_metrics() {
    let app = sqlite_app().await;
    let admin = app.key("k", &["admin"]).await;
    assert!(admin.starts_with("sjk_"), "{admin}");

    // Health needs no key.
    for path in ["/healthz", "/readyz"] {
        let r = app.call(Method::GET, path, None, None).await;
        let h = r.ok(StatusCode::OK);
        assert_eq!(h["node"], json!("node-1"));
    }
    let r = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.json["status"], json!("ready"));

    // No key, a wrong key, a malformed header.
    for uri in ["/v1/workflows", "/metrics", "/openapi.json", "/v1/keys"] {
        let r = app.call(Method::GET, uri, None, None).await;
        assert_error(
            &r,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            Some("Authorization"),
        );
        let r = app.call(Method::GET, uri, Some("sjk_wrong"), None).await;
        assert_error(
            &r,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            Some("Authorization"),
        );
    }
    let r = app
        .send(request(
            Method::GET,
            "/v1/workflows",
            None,
            &[("authorization", &format!("Basic {admin}"))],
            Body::empty(),
        ))
        .await;
    assert_error(
        &r,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        Some("Authorization"),
    );
    let r = app
        .send(request(
            Method::GET,
            "/v1/workflows",
            None,
            &[("x-api-key", &admin)],
            Body::empty(),
        ))
        .await;
    r.ok(StatusCode::OK);
    let r = app
        .call(
            Method::POST,
            "/v1/workflows",
            None,
            Some(json!({"key": "x", "definition": quick("x")})),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        Some("Authorization"),
    );

    // The admin creates keys through the API.
    let r = app
        .post(
            "/v1/keys",
            &admin,
            json!({"name": "writer", "scopes": ["write"]}),
        )
        .await;
    let writer = r.ok(StatusCode::CREATED).clone();
    assert_eq!(writer["namespace"], json!("k"));
    assert_eq!(writer["scopes"], json!(["write"]));
    assert_eq!(writer["revoked_at"], Value::Null);
    let write = writer["secret"].as_str().expect("secret").to_owned();
    assert!(write.starts_with("sjk_"));
    let r = app
        .post(
            "/v1/keys",
            &admin,
            json!({"name": "reader", "scopes": ["read", "read"]}),
        )
        .await;
    let reader = r.ok(StatusCode::CREATED).clone();
    assert_eq!(reader["scopes"], json!(["read"]));
    let read = reader["secret"].as_str().expect("secret").to_owned();
    let r = app
        .post("/v1/keys", &admin, json!({"scopes": ["root"]}))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("scopes[0]"),
    );
    let r = app.post("/v1/keys", &admin, json!({"scopes": []})).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("scopes"),
    );
    let r = app
        .post("/v1/keys", &admin, json!({"scopes": "admin"}))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("scopes"),
    );

    let r = app.get("/v1/keys", &admin).await;
    let listed = r.ok(StatusCode::OK).as_array().expect("array").clone();
    assert_eq!(listed.len(), 3);
    assert!(
        listed.iter().all(|k| k.get("secret").is_none()),
        "secrets are shown once"
    );
    let listed_ids = ids(&listed);
    assert!(listed_ids.contains(&writer["id"].as_str().expect("id").to_owned()));

    // Scopes.
    for (key, uri) in [(&write, "/v1/keys"), (&read, "/v1/keys")] {
        let r = app.get(uri, key).await;
        assert_error(&r, StatusCode::FORBIDDEN, "forbidden", None);
        assert!(r.str("/error/message").contains("admin"), "{}", r.text());
    }
    let r = app
        .post("/v1/keys", &write, json!({"scopes": ["read"]}))
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", None);
    let r = app
        .post(
            "/v1/workflows",
            &read,
            json!({"key": "r", "definition": quick("x")}),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", None);
    assert!(r.str("/error/message").contains("write"), "{}", r.text());
    let r = app.get("/v1/workflows", &read).await;
    assert_eq!(r.ok(StatusCode::OK)["items"], json!([]));
    let wf = app.workflow(&write, "quick", quick("x")).await;
    let r = app
        .post("/v1/executions", &read, json!({"workflow": "quick"}))
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", None);

    // Metrics: a key is needed, the started execution is counted.
    app.start(&write, "quick", json!({})).await;
    let r = app.get("/metrics", &read).await;
    r.ok(StatusCode::OK);
    assert!(
        r.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    let text = r.text();
    assert!(
        text.contains(&format!(
            "sojourn_executions_started_total{{workflow=\"{wf}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("# TYPE sojourn_executions_started_total counter"),
        "{text}"
    );
    assert!(
        text.contains("sojourn_http_request_duration_seconds"),
        "{text}"
    );

    // Revocation: the key was used (and cached); it stops at once.
    let r = app.get("/v1/workflows", &write).await;
    r.ok(StatusCode::OK);
    let writer_id = writer["id"].as_str().expect("id").to_owned();
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/keys/{writer_id}"),
            Some(&admin),
            None,
        )
        .await;
    let revoked = r.ok(StatusCode::OK);
    assert_eq!(revoked["id"], json!(writer_id));
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let r = app.get("/v1/workflows", &write).await;
    assert_error(
        &r,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        Some("Authorization"),
    );
    let r = app.get("/v1/keys", &admin).await;
    let listed = r.ok(StatusCode::OK).as_array().expect("array").clone();
    let entry = listed
        .iter()
        .find(|k| k["id"] == json!(writer_id))
        .expect("revoked keys are listed");
    assert!(entry["revoked_at"].is_string());
    let r = app
        .call(Method::DELETE, "/v1/keys/key_nope", Some(&admin), None)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    // The reader is untouched.
    app.get("/v1/workflows", &read).await.ok(StatusCode::OK);

    // Path parameters that are not UTF-8 once percent-decoded.
    for (method, uri, field) in [
        (Method::GET, "/v1/workflows/%FF", "workflow"),
        (Method::GET, "/v1/workflows/quick/versions/%FF", "version"),
        (Method::GET, "/v1/executions/%C3%28/journal", "execution"),
        (Method::GET, "/v1/triggers/%FF", "trigger"),
        (Method::DELETE, "/v1/keys/%FF", "key"),
        (Method::POST, "/trigger/ok/%FF", "path"),
    ] {
        let r = app.call(method, uri, Some(&admin), None).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some(field));
    }

    // Unknown routes and methods answer in our format too.
    let r = app.get("/v1/nothing", &admin).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    assert!(
        r.str("/error/message").starts_with("no route"),
        "{}",
        r.text()
    );
    let r = app
        .call(Method::PATCH, "/v1/workflows", Some(&admin), None)
        .await;
    assert_error(
        &r,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );

    // A node shutting down is not ready and starts nothing.
    app.engine.shutdown().await;
    let r = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.json["status"], json!("not ready"));
    app.call(Method::GET, "/healthz", None, None)
        .await
        .ok(StatusCode::OK);
    let r = app
        .post("/v1/executions", &admin, json!({"workflow": "quick"}))
        .await;
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "unavailable", None);

    app.finish().await;
}

// ---- 2. max entries per subject ---------------------------------------------

async fn max_entries<S: Store>(app: &App<S>) {
    let k = app.key("me", &["write"]).await;
    let mut doc = waiter();
    doc["settings"]["max_entries_per_subject"] = json!(1);
    app.workflow(&k, "once", doc).await;
    let first = app.start(&k, "once", json!({"user_id": "u1"})).await;
    let r = app
        .post(
            "/v1/executions",
            &k,
            json!({"workflow": "once", "input": {"user_id": "u1"}}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("subject"));
    let r = app
        .post(
            "/v1/executions",
            &k,
            json!({"workflow": "once", "input": {"user_id": "u9"}, "subject": "u1"}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("subject"));
    app.start(&k, "once", json!({"user_id": "u2"})).await;
    // A retried request (same Idempotency-Key) is answered with its
    // execution, not refused by the limit it filled itself.
    let idem = || {
        request(
            Method::POST,
            "/v1/executions",
            Some(&k),
            &[("Idempotency-Key", "u3-signup")],
            Body::from(json!({"workflow": "once", "input": {"user_id": "u3"}}).to_string()),
        )
    };
    let r = app.send(idem()).await;
    let u3 = r.ok(StatusCode::CREATED)["id"].clone();
    let r = app.send(idem()).await;
    assert_eq!(r.ok(StatusCode::OK)["id"], u3, "{}", r.text());
    assert_eq!(r.json["new"], json!(false));
    // Still refused after the first one finished: "ever".
    app.wait_status(&k, &first, "waiting").await;
    app.post(&format!("/v1/executions/{first}/cancel"), &k, json!({}))
        .await
        .ok(StatusCode::ACCEPTED);
    app.wait_status(&k, &first, "cancelled").await;
    let r = app
        .post(
            "/v1/executions",
            &k,
            json!({"workflow": "once", "input": {"user_id": "u1"}}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("subject"));
    let r = app.get("/v1/executions?subject=u1", &k).await;
    assert_eq!(
        ids(r.ok(StatusCode::OK)["items"].as_array().expect("items")),
        [first]
    );
    let r = app.get("/v1/executions", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["items"].as_array().map(Vec::len),
        Some(3)
    );
}

#[tokio::test]
async fn max_entries_per_subject_on_sqlite() {
    let app = sqlite_app().await;
    max_entries(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn max_entries_per_subject_on_postgres() {
    let app = pg_app(4).await;
    max_entries(&app).await;
    app.finish().await;
}

/// A start whose data PostgreSQL refuses (a subject too long to index,
/// computed from the input) fails alone with a 400, while starts sharing its
/// batch succeed; NUL characters are refused before they reach the
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_the_database_refuses_fails_only_its_own_start_on_postgres() {
    let app = pg_app(8).await;
    let k = app.key("bad-data", &["write"]).await;
    app.workflow(&k, "wait", waiter()).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let router = app.api.router.clone();
        // Incompressible, so too long for a B-tree index entry.
        let user = if i == 7 {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            (0..10_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect::<String>()
        } else {
            format!("u{i}")
        };
        let req = request(
            Method::POST,
            "/v1/executions",
            Some(&k),
            &[],
            Body::from(json!({"workflow": "wait", "input": {"user_id": user}}).to_string()),
        );
        tasks.push(tokio::spawn(async move {
            let res = router.oneshot(req).await.expect("answer");
            (i, into_resp(res).await)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.expect("join");
        if i == 7 {
            assert_error(
                &r,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some("input"),
            );
        } else {
            r.ok(StatusCode::CREATED);
        }
    }
    let listed = app.all_pages(&k, "/v1/executions", 100).await;
    assert_eq!(listed.len(), 39);
    let r = app
        .post(
            "/v1/executions",
            &k,
            json!({"workflow": "wait", "input": {"user_id": "a\u{0}b"}}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("body"));
    let r = app.get("/v1/workflows/%00", &k).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", Some("path"));
    let r = app.get("/v1/executions?subject=%00", &k).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("query"),
    );
    assert_eq!(app.all_pages(&k, "/v1/executions", 100).await.len(), 39);
    app.finish().await;
}

// ---- 3. idempotency under concurrency ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_many_concurrent_starts_on_postgres() {
    let app = pg_app(8).await;
    let k = app.key("idem", &["write"]).await;
    app.workflow(&k, "wait", waiter()).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let router = app.api.router.clone();
        let req = request(
            Method::POST,
            "/v1/executions",
            Some(&k),
            &[("Idempotency-Key", "checkout-42")],
            Body::from(
                json!({"workflow": "wait", "input": {"user_id": format!("u{i}")}}).to_string(),
            ),
        );
        tasks.push(tokio::spawn(async move {
            let res = router.oneshot(req).await.expect("the router answers");
            into_resp(res).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    let created: Vec<&Resp> = answers
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 1, "exactly one 201");
    assert_eq!(created[0].json["new"], json!(true));
    let id = created[0].json["id"].clone();
    for r in &answers {
        if r.status != StatusCode::CREATED {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(r.json["new"], json!(false));
        }
        assert_eq!(r.json["id"], id, "every answer names the same execution");
    }
    let r = app.get("/v1/executions?limit=500", &k).await;
    let items = r.ok(StatusCode::OK)["items"]
        .as_array()
        .expect("items")
        .clone();
    assert_eq!(items.len(), 1, "one execution exists: {items:#?}");
    assert_eq!(items[0]["id"], id);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(app.engine.store().pool())
        .await
        .expect("count");
    assert_eq!(count, 1);

    // Concurrent first entries of one subject into a journey that allows
    // one: exactly one gets in.
    let mut doc = waiter();
    doc["settings"]["max_entries_per_subject"] = json!(1);
    app.workflow(&k, "once", doc).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let router = app.api.router.clone();
        let key = format!("entry-{i}");
        let req = request(
            Method::POST,
            "/v1/executions",
            Some(&k),
            &[("Idempotency-Key", &key)],
            Body::from(json!({"workflow": "once", "input": {"user_id": "solo"}}).to_string()),
        );
        tasks.push(tokio::spawn(async move {
            let res = router.oneshot(req).await.expect("the router answers");
            into_resp(res).await
        }));
    }
    let mut created = 0;
    for t in tasks {
        let r = t.await.expect("task");
        if r.status == StatusCode::CREATED {
            created += 1;
        } else {
            assert_error(&r, StatusCode::CONFLICT, "conflict", Some("subject"));
        }
    }
    assert_eq!(created, 1, "one entry for the subject");
    let r = app.get("/v1/executions?subject=solo", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["items"].as_array().map(Vec::len),
        Some(1)
    );
    app.finish().await;
}

// ---- 4. namespaces ----------------------------------------------------------

#[tokio::test]
async fn namespaces_are_isolated_on_postgres() {
    let app = pg_app(4).await;
    let a = app.key("a", &["admin"]).await;
    let b = app.key("b", &["admin"]).await;
    let wf = app.workflow(&a, "wait", waiter()).await;
    let exec = app.start(&a, "wait", json!({"user_id": "ada"})).await;
    app.wait_status(&a, &exec, "waiting").await;
    let r = app
        .post(
            "/v1/workflows/wait/triggers",
            &a,
            json!({"kind": "api", "path": "hook"}),
        )
        .await;
    let trigger = r.ok(StatusCode::CREATED)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.post_empty(&format!("/v1/triggers/{trigger}/activate"), &a)
        .await
        .ok(StatusCode::OK);
    let r = app.get("/v1/keys", &a).await;
    let a_key_id = r.ok(StatusCode::OK)[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // b sees none of it: 404, never 403.
    let reads = [
        "/v1/workflows/wait".to_owned(),
        format!("/v1/workflows/{wf}"),
        format!("/v1/workflows/{wf}/versions"),
        format!("/v1/workflows/{wf}/versions/1"),
        format!("/v1/executions/{exec}"),
        format!("/v1/executions/{exec}/journal"),
        format!("/v1/executions/{exec}/nodes"),
        format!("/v1/triggers/{trigger}"),
        format!("/v1/triggers?workflow={wf}"),
        format!("/v1/executions?workflow={wf}"),
    ];
    for uri in &reads {
        let r = app.get(uri, &b).await;
        assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
        assert!(!r.str("/error/message").starts_with("no route"), "{uri}");
    }
    let writes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::PUT,
            format!("/v1/workflows/{wf}"),
            Some(json!({"definition": quick("b")})),
        ),
        (
            Method::POST,
            format!("/v1/workflows/{wf}/validate"),
            Some(json!({})),
        ),
        (Method::POST, format!("/v1/workflows/{wf}/publish"), None),
        (Method::POST, format!("/v1/workflows/{wf}/archive"), None),
        (
            Method::POST,
            format!("/v1/workflows/{wf}/triggers"),
            Some(json!({"kind": "api", "path": "b"})),
        ),
        (
            Method::POST,
            format!("/v1/executions/{exec}/events"),
            Some(json!({"name": "go"})),
        ),
        (Method::POST, format!("/v1/executions/{exec}/pause"), None),
        (Method::POST, format!("/v1/executions/{exec}/resume"), None),
        (Method::POST, format!("/v1/executions/{exec}/cancel"), None),
        (Method::POST, format!("/v1/executions/{exec}/retry"), None),
        (Method::POST, format!("/v1/triggers/{trigger}/pause"), None),
        (Method::POST, format!("/v1/triggers/{trigger}/stop"), None),
        (Method::DELETE, format!("/v1/triggers/{trigger}"), None),
        (Method::DELETE, format!("/v1/keys/{a_key_id}"), None),
        (Method::POST, "/trigger/hook".to_owned(), Some(json!({}))),
    ];
    for (method, uri, body) in writes {
        let r = app.call(method.clone(), &uri, Some(&b), body).await;
        assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
        assert!(
            !r.str("/error/message").starts_with("no route"),
            "{method} {uri}"
        );
    }
    for w in ["wait", wf.as_str()] {
        let r = app.post("/v1/executions", &b, json!({"workflow": w})).await;
        assert_error(&r, StatusCode::NOT_FOUND, "not_found", Some("workflow"));
    }
    // Listings show only b's own.
    let b_wf = app.workflow(&b, "wait", waiter()).await;
    assert_ne!(
        b_wf, wf,
        "the same key in another namespace is another workflow"
    );
    let r = app.get("/v1/workflows?include_archived=true", &b).await;
    assert_eq!(
        ids(r.ok(StatusCode::OK)["items"].as_array().expect("items")),
        [b_wf.as_str()]
    );
    let r = app.get("/v1/executions", &b).await;
    assert_eq!(r.ok(StatusCode::OK)["items"], json!([]));
    let r = app.get("/v1/triggers", &b).await;
    assert_eq!(r.ok(StatusCode::OK), &json!([]));
    let r = app.get("/v1/keys", &b).await;
    let b_keys = r.ok(StatusCode::OK).as_array().expect("array").clone();
    assert_eq!(b_keys.len(), 1);
    assert_eq!(b_keys[0]["namespace"], json!("b"));
    // A key is made in its creator's namespace; naming another is refused.
    let r = app
        .post(
            "/v1/keys",
            &b,
            json!({"scopes": ["admin"], "namespace": "a"}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", None);
    assert!(
        r.str("/error/message").contains("namespace"),
        "{}",
        r.text()
    );
    let r = app.get("/v1/keys", &a).await;
    assert_eq!(r.ok(StatusCode::OK).as_array().map(Vec::len), Some(1));

    // One idempotency key in two namespaces: two executions.
    let idem = |key: &str| {
        request(
            Method::POST,
            "/v1/executions",
            Some(key),
            &[("Idempotency-Key", "shared")],
            Body::from(json!({"workflow": "wait", "input": {"user_id": "zed"}}).to_string()),
        )
    };
    let in_a = app.send(idem(&a)).await;
    let in_a = in_a.ok(StatusCode::CREATED)["id"].clone();
    let in_b = app.send(idem(&b)).await;
    assert_eq!(in_b.ok(StatusCode::CREATED)["new"], json!(true));
    assert_ne!(in_b.json["id"], in_a, "b never gets a's execution");
    let again = app.send(idem(&b)).await;
    assert_eq!(again.ok(StatusCode::OK)["id"], in_b.json["id"]);

    // An event in b does not reach a's waiting execution, even with b's own
    // execution waiting on the same key.
    let journal = format!("/v1/executions/{exec}/journal?limit=500");
    let a_journal = app.get(&journal, &a).await.ok(StatusCode::OK).clone();
    let b_exec = app.start(&b, "wait", json!({"user_id": "ada"})).await;
    app.wait_status(&b, &b_exec, "waiting").await;
    let r = app
        .post("/v1/events", &b, json!({"name": "go", "key": "ada"}))
        .await;
    assert_eq!(r.ok(StatusCode::ACCEPTED), &json!({"delivered": 1}));
    app.wait_status(&b, &b_exec, "completed").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = app.get(&format!("/v1/executions/{exec}"), &a).await;
    assert_eq!(
        r.ok(StatusCode::OK)["status"],
        json!("waiting"),
        "a's execution still waits"
    );
    let r = app.get(&journal, &a).await;
    assert_eq!(r.ok(StatusCode::OK), &a_journal, "a's journal is untouched");

    // a's things are intact, and a's event reaches it.
    let r = app.get(&format!("/v1/triggers/{trigger}"), &a).await;
    assert_eq!(r.ok(StatusCode::OK)["state"], json!("active"));
    let r = app.get("/v1/workflows/wait", &a).await;
    assert_eq!(r.ok(StatusCode::OK)["archived_at"], Value::Null);
    assert_eq!(r.json["latest_version"], json!(1));
    assert_eq!(r.json["draft"], waiter());
    let r = app.get("/v1/keys", &a).await;
    assert_eq!(r.ok(StatusCode::OK)[0]["revoked_at"], Value::Null);
    let r = app
        .post("/v1/events", &a, json!({"name": "go", "key": "ada"}))
        .await;
    assert_eq!(r.ok(StatusCode::ACCEPTED), &json!({"delivered": 1}));
    app.wait_status(&a, &exec, "completed").await;
    app.finish().await;
}

// ---- 5. malformed bodies on every write route -------------------------------

/// Everything a namespace holds, through the list endpoints.
async fn everything<S: Store>(app: &App<S>, key: &str, exec: &str) -> Value {
    let mut out = serde_json::Map::new();
    for uri in [
        "/v1/workflows?include_archived=true&limit=500",
        "/v1/executions?limit=500",
        "/v1/triggers",
        "/v1/keys",
        "/v1/workflows/wait/versions",
    ] {
        let r = app.get(uri, key).await;
        out.insert(uri.to_owned(), r.ok(StatusCode::OK).clone());
    }
    let r = app.get(&format!("/v1/executions/{exec}"), key).await;
    let mut e = r.ok(StatusCode::OK).clone();
    // Whether an actor is live right now is not state.
    e["lease_holder"] = Value::Null;
    out.insert("execution".into(), e);
    let r = app
        .get(&format!("/v1/executions/{exec}/journal?limit=500"), key)
        .await;
    out.insert("journal".into(), r.ok(StatusCode::OK).clone());
    Value::Object(out)
}

/// A body whose every typed property has the wrong type, from the request
/// schema in the OpenAPI document.
fn wrong_types(doc: &Value, schema: &Value) -> (Value, Vec<String>) {
    let schema = resolve(doc, schema);
    let mut body = serde_json::Map::new();
    let mut fields = Vec::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let prop = resolve(doc, prop);
            let types: Vec<&str> = match prop.get("type") {
                Some(Value::String(t)) => vec![t.as_str()],
                Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
                _ if prop.get("enum").is_some() => vec!["string"],
                _ => vec![],
            };
            let wrong = if types.is_empty() {
                continue;
            } else if types.contains(&"string") {
                json!({"not": "a string"})
            } else if types.contains(&"boolean") {
                json!("yes")
            } else if types.contains(&"integer") || types.contains(&"number") {
                json!("one")
            } else if types.contains(&"array") {
                json!("not an array")
            } else {
                json!(12)
            };
            body.insert(name.clone(), wrong);
            fields.push(name.clone());
        }
    }
    (Value::Object(body), fields)
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.trim_start_matches('#');
            doc.pointer(pointer).unwrap_or(schema)
        }
        None => schema,
    }
}

fn fill(path: &str, params: &BTreeMap<&str, String>) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => params
                    .get(name.trim_start_matches('*'))
                    .cloned()
                    .unwrap_or_else(|| "garbage".to_owned()),
                None => seg.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn malformed_bodies_are_refused_and_write_nothing() {
    let app = sqlite_app().await;
    let k = app.key("fz", &["admin"]).await;
    let wf = app.workflow(&k, "wait", waiter()).await;
    let exec = app.start(&k, "wait", json!({"user_id": "ada"})).await;
    app.wait_status(&k, &exec, "waiting").await;
    let r = app
        .post(
            "/v1/workflows/wait/triggers",
            &k,
            json!({"kind": "api", "path": "hook"}),
        )
        .await;
    let trigger = r.ok(StatusCode::CREATED)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.post_empty(&format!("/v1/triggers/{trigger}/activate"), &k)
        .await
        .ok(StatusCode::OK);
    let before = everything(&app, &k, &exec).await;

    let real: BTreeMap<&str, String> = [
        ("workflow", wf.clone()),
        ("execution", exec.clone()),
        ("trigger", trigger.clone()),
        ("path", "hook".to_owned()),
        ("version", "1".to_owned()),
        ("key", "key_garbage".to_owned()),
        ("node", "node_garbage".to_owned()),
        ("provider", "log".to_owned()),
        ("subject", "ann".to_owned()),
        ("token", "garbage.token".to_owned()),
        ("name", "vip".to_owned()),
    ]
    .into_iter()
    .collect();
    let garbage: BTreeMap<&str, String> = BTreeMap::new();
    let not_utf8: BTreeMap<&str, String> = real.keys().map(|k| (*k, "%FF".to_owned())).collect();

    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"this is not JSON".to_vec()),
        (
            "truncated",
            br#"{"key": "x", "definition": {"nodes": [{"id": "#.to_vec(),
        ),
        ("array", b"[1, 2, 3]".to_vec()),
        ("number", b"42".to_vec()),
        ("string", br#""text""#.to_vec()),
        ("null", b"null".to_vec()),
        ("nested arrays", nested.clone().into_bytes()),
        (
            "nested in a field",
            format!(r#"{{"definition": {nested}, "input": {nested}, "payload": {nested}}}"#)
                .into_bytes(),
        ),
        (
            "invalid UTF-8",
            b"{\"name\": \"\xff\xfe\xfd\", \"key\": \"\xc3\x28\"}".to_vec(),
        ),
        ("invalid UTF-8 bare", b"\xff\xfe{}".to_vec()),
        // Not JSON's whitespace (an empty body is), though ASCII's.
        ("form feed", b"\x0c".to_vec()),
        ("trailing garbage", b"{} {}".to_vec()),
    ];
    let big = format!(r#"{{"name": "{}"}}"#, "a".repeat(2 * 1024 * 1024)).into_bytes();

    let doc = app.api.openapi.clone();
    let mut checked = 0;
    for (method, path) in &app.api.routes {
        if *method != Method::POST && *method != Method::PUT {
            continue;
        }
        let doc_path = path.replace("{*", "{");
        let op = &doc["paths"][&doc_path][method.as_str().to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} is documented");
        let schema = op.pointer("/requestBody/content/application~1json/schema");
        let takes_body = schema.is_some();
        let cluster_only = op["security"] == json!([{"clusterSecret": []}]);
        // Routes that read no body are tried on ids that do not exist (on
        // real ones they would do their work); the others on both.
        let targets: Vec<String> = if takes_body {
            vec![fill(path, &real), fill(path, &garbage)]
        } else {
            vec![fill(path, &garbage)]
        };
        let mut bodies: Vec<(String, Vec<u8>, Option<Vec<String>>)> = malformed
            .iter()
            .map(|(name, b)| ((*name).to_owned(), b.clone(), None))
            .collect();
        // A free-form object (a trigger's input) takes any member of any
        // type: only the malformed bodies apply.
        let free_form = schema.is_some_and(|s| resolve(&doc, s).get("properties").is_none());
        if let Some(schema) = schema.filter(|_| !free_form) {
            let (wrong, fields) = wrong_types(&doc, schema);
            // (A validate body's only field, the document, takes any JSON.)
            assert!(
                !fields.is_empty() || path.ends_with("/validate"),
                "{method} {path}: a body has typed fields"
            );
            for f in &fields {
                let mut one = serde_json::Map::new();
                one.insert(f.clone(), wrong[f].clone());
                bodies.push((
                    format!("wrong type of {f}"),
                    Value::Object(one).to_string().into_bytes(),
                    Some(vec![f.clone()]),
                ));
            }
            if !fields.is_empty() {
                bodies.push((
                    "wrong types".into(),
                    wrong.to_string().into_bytes(),
                    Some(fields),
                ));
            }
            bodies.push((
                "unknown field".into(),
                br#"{"zz_unknown_field": 1}"#.to_vec(),
                Some(vec!["zz_unknown_field".to_owned()]),
            ));
        }
        // Path parameters that are not UTF-8 once decoded.
        let params: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|p| p.trim_start_matches('*'))
            .collect();
        if !params.is_empty() {
            let uri = fill(path, &not_utf8);
            for body in [&b"{}"[..], &b"not JSON"[..]] {
                let r = app
                    .send(request(
                        method.clone(),
                        &uri,
                        Some(&k),
                        &[],
                        Body::from(body),
                    ))
                    .await;
                let what = format!("{method} {uri}: {}", r.text());
                assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}");
                assert_error_format(&r);
                let field = r.str("/error/field");
                assert!(params.contains(&field.as_str()), "{what}");
                assert!(
                    r.str("/error/message").starts_with(&format!("{field}:")),
                    "{what}"
                );
            }
        }
        for uri in &targets {
            for (name, body, fields) in &bodies {
                let r = app
                    .send(request(
                        method.clone(),
                        uri,
                        Some(&k),
                        &[],
                        Body::from(body.clone()),
                    ))
                    .await;
                let what = format!("{method} {uri} with {name}: {}", r.text());
                assert!(r.status.is_client_error(), "{what}");
                assert_error_format(&r);
                if cluster_only {
                    // The cluster secret is checked before the body is read.
                    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
                } else if takes_body {
                    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}");
                    assert_eq!(r.str("/error/code"), "invalid_request", "{what}");
                    let field = r.str("/error/field");
                    let message = r.str("/error/message");
                    assert!(message.starts_with(&format!("{field}:")), "{what}");
                    if let Some(fields) = fields {
                        assert!(
                            fields.iter().any(|f| message.contains(f.as_str())),
                            "the message names one of {fields:?}: {what}"
                        );
                    }
                }
                checked += 1;
            }
            let r = app
                .send(request(
                    method.clone(),
                    uri,
                    Some(&k),
                    &[],
                    Body::from(big.clone()),
                ))
                .await;
            let what = format!("{method} {uri} with 2 MiB: {}", r.text());
            assert!(r.status.is_client_error(), "{what}");
            assert_error_format(&r);
            if cluster_only {
                assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
            } else if takes_body {
                assert_error(
                    &r,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    Some("body"),
                );
            }
        }
    }
    assert!(checked > 300, "{checked} requests");

    let after = everything(&app, &k, &exec).await;
    assert_eq!(before, after, "nothing was written");
    app.finish().await;
}

// ---- 6. the OpenAPI document ------------------------------------------------

fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(s) = v.as_str() {
                        out.push(s);
                    }
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_matches_the_routes() {
    let app = sqlite_app().await;
    let k = app.key("doc", &["admin"]).await;
    let r = app.get("/openapi.json", &k).await;
    assert_eq!(r.ok(StatusCode::OK), &app.api.openapi, "served as built");
    let doc = &app.api.openapi;
    assert_eq!(doc["openapi"], json!("3.0.3"));
    let paths = doc["paths"].as_object().expect("paths");

    // Every route is documented with its method.
    let routed: BTreeSet<(String, String)> = app
        .api
        .routes
        .iter()
        .map(|(m, p)| (m.as_str().to_ascii_lowercase(), p.replace("{*", "{")))
        .collect();
    assert_eq!(routed.len(), app.api.routes.len(), "no route twice");
    for (m, p) in &routed {
        let op = &doc["paths"][p][m];
        assert!(op.is_object(), "{m} {p} is documented");
        assert!(op["responses"]["default"].is_object(), "{m} {p}");
        assert!(op["operationId"].is_string(), "{m} {p}");
    }

    // Every documented operation is routed, and its path parameters are
    // declared.
    let mut documented = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in paths {
        let template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in item.as_object().expect("path item") {
            documented.insert((method.clone(), path.clone()));
            assert!(
                operation_ids.insert(op["operationId"].as_str().expect("id").to_owned()),
                "operationIds are unique: {method} {path}"
            );
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .filter(|p| p["in"] == json!("path"))
                .map(|p| p["name"].as_str().expect("name"))
                .collect();
            assert_eq!(declared, template, "{method} {path}: path parameters");
            let uri = path
                .split('/')
                .map(|s| if s.starts_with('{') { "dummy" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
            let body = (m == Method::POST || m == Method::PUT).then(|| json!({}));
            let r = app.call(m, &uri, Some(&k), body).await;
            let what = format!("{method} {uri}: {}", r.text());
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
            assert!(!r.status.is_server_error(), "{what}");
            if r.status == StatusCode::NOT_FOUND {
                assert_error_format(&r);
                assert!(!r.str("/error/message").starts_with("no route"), "{what}");
            }
        }
    }
    assert_eq!(documented, routed, "documented = routed");

    // Every $ref resolves to a schema in components/schemas.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let mut all = Vec::new();
    refs(doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r} points into components/schemas"));
        assert!(schemas.contains_key(name), "{r} resolves");
    }

    // The document describes our error format.
    let error = resolve(
        doc,
        &doc["paths"]["/v1/workflows"]["post"]["responses"]["default"]["content"]["application/json"]
            ["schema"],
    );
    assert!(error["properties"]["error"].is_object(), "{error}");
    let r = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_error(
        &r,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        Some("Authorization"),
    );
    app.finish().await;
}

// ---- outages and corrupt rows ------------------------------------------------

/// A TCP proxy in front of PostgreSQL; cutting it is a database outage
/// (every connection dropped, new ones refused).
struct Proxy {
    addr: std::net::SocketAddr,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().expect("lock").push(conn);
            }
        });
        tasks.lock().expect("lock").push(accept);
        Proxy { addr, tasks }
    }

    fn cut(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_with_retry_after_on_postgres() {
    use std::str::FromStr;
    let url = database_url();
    let options = sqlx::postgres::PgConnectOptions::from_str(&url).expect("database URL");
    let target = format!("{}:{}", options.get_host(), options.get_port());
    assert!(
        url.contains(&target),
        "SOJOURN_TEST_DATABASE_URL must name host:port explicitly for this test: {url}"
    );
    let proxy = Proxy::start(target.clone()).await;
    let proxied = url.replacen(&target, &proxy.addr.to_string(), 1);
    let schema = format!("{PG_PREFIX}{}", uuid::Uuid::now_v7().simple());
    let store = PgStore::connect_creating_schema(&proxied, &schema, 4)
        .await
        .expect("PostgreSQL through the proxy");
    let app = app_over(store, schema.clone()).await;
    let k = app.key("outage", &["write"]).await;
    app.workflow(&k, "quick", quick("done")).await;
    app.start(&k, "quick", json!({})).await;

    proxy.cut();
    let started = std::time::Instant::now();
    for (method, uri, body) in [
        (
            Method::POST,
            "/v1/executions",
            Some(json!({"workflow": "quick", "input": {}})),
        ),
        (Method::GET, "/v1/workflows", None),
    ] {
        let r = app.call(method.clone(), uri, Some(&k), body).await;
        assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "unavailable", None);
        assert_eq!(
            r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1"),
            "{method} {uri}: {}",
            r.text()
        );
        assert!(
            !r.text().contains(&proxy.addr.to_string()),
            "no connection detail leaks: {}",
            r.text()
        );
    }
    // Fast enough that a client's retry is worth it (bounded by the pool's
    // acquire timeout, not the default 30 s).
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    let r = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());

    // No graceful shutdown: it would wait out the outage. The test's
    // runtime ends the engine's tasks when the test returns.
    drop(app);
    let direct = PgStore::connect(&url, None, 1).await.expect("connect");
    direct.drop_schema(&schema).await.expect("drop schema");
}

#[tokio::test]
async fn a_trigger_whose_stored_config_does_not_parse_never_fires_on_postgres() {
    let app = pg_app(4).await;
    let k = app.key("corrupt", &["write"]).await;
    app.workflow(&k, "quick", quick("fired")).await;
    let r = app
        .post(
            "/v1/workflows/quick/triggers",
            &k,
            json!({"kind": "api", "path": "hooks/corrupt"}),
        )
        .await;
    let id = r.ok(StatusCode::CREATED)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.post_empty(&format!("/v1/triggers/{id}/activate"), &k)
        .await
        .ok(StatusCode::OK);
    sqlx::query("UPDATE triggers SET config = '{\"version\": \"latest\"}'::jsonb WHERE id = $1")
        .bind(&id)
        .execute(app.engine.store().pool())
        .await
        .expect("corrupt the row");
    let r = app
        .send(request(
            Method::POST,
            "/trigger/hooks/corrupt",
            Some(&k),
            &[],
            Body::from("{}"),
        ))
        .await;
    assert_error(&r, StatusCode::CONFLICT, "invalid_trigger", Some("config"));
    let r = app.get("/v1/executions", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["items"].as_array().map(Vec::len),
        Some(0),
        "{}",
        r.text()
    );
    app.finish().await;
}

#[tokio::test]
async fn draining_the_last_node_that_takes_work_needs_force() {
    let app = sqlite_app().await;
    let k = app.key("ops", &["admin"]).await;
    let node = app.engine.node_id().to_owned();
    let r = app
        .post_empty(&format!("/cluster/nodes/{node}/drain"), &k)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("node"));
    assert!(
        r.str("/error/message").contains("force=true"),
        "{}",
        r.text()
    );
    // Nothing changed: the node still takes work.
    let r = app.get("/readyz", &k).await;
    r.ok(StatusCode::OK);
    let r = app
        .post_empty(&format!("/cluster/nodes/{node}/drain?force=true"), &k)
        .await;
    r.ok(StatusCode::ACCEPTED);
    let mut drained = false;
    for _ in 0..100 {
        if app.get("/readyz", &k).await.status == StatusCode::SERVICE_UNAVAILABLE {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(drained, "a forced drain drains");
    app.finish().await;
}

#[tokio::test]
async fn deliveries_are_listed_masked_and_workflows_name_only_configured_providers() {
    let app = sqlite_app().await;
    let k = app.key("mail", &["admin"]).await;
    // The embedded default: one `log` provider for every channel.
    let r = app.get("/v1/providers", &k).await;
    let providers = r.ok(StatusCode::OK).clone();
    assert_eq!(providers[0]["name"], "log", "{providers}");
    assert_eq!(providers[0]["kind"], "log");
    assert_eq!(
        providers[0]["default_for"].as_array().map(Vec::len),
        Some(4)
    );
    let mailer = |provider: Value| {
        json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "mail", "type": "action", "config": {"action": "email.send", "inputs": {
                    "to": "{{ input.email }}", "subject": "Hi", "text": "Hello", "provider": provider}}},
                {"id": "text", "type": "action", "config": {"action": "sms.send", "inputs": {
                    "to": "+33612345678", "body": "Hello"}}},
                {"id": "end", "type": "exit"},
            ],
            "edges": [
                {"from": "start", "to": "mail"},
                {"from": "mail", "to": "text", "branch": "success"},
                {"from": "text", "to": "end", "branch": "success"},
            ]
        })
    };
    // A provider no node has: refused at its node and field, nothing written.
    let r = app
        .post(
            "/v1/workflows",
            &k,
            json!({"key": "mailer", "definition": mailer(json!("marketing-smtp")), "publish": true}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_workflow",
        Some("definition.nodes[mail].config.inputs.provider"),
    );
    assert!(r.text().contains("marketing-smtp"), "{}", r.text());
    let r = app.get("/v1/workflows", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["items"].as_array().map(Vec::len),
        Some(0)
    );

    app.workflow(&k, "mailer", mailer(json!("log"))).await;
    let r = app
        .post(
            "/v1/executions?wait=10s",
            &k,
            json!({"workflow": "mailer", "input": {"email": "ann@example.com"}}),
        )
        .await;
    let execution = r.ok(StatusCode::OK)["id"].as_str().expect("id").to_owned();
    assert_eq!(r.json["status"], "completed", "{}", r.text());
    let r = app
        .get(&format!("/v1/deliveries?execution={execution}"), &k)
        .await;
    let items = r.ok(StatusCode::OK)["items"]
        .as_array()
        .expect("items")
        .clone();
    assert_eq!(items.len(), 2, "{}", r.text());
    let email = items
        .iter()
        .find(|d| d["channel"] == "email")
        .expect("the email");
    assert_eq!(email["recipient"], "a***@example.com", "masked");
    assert_eq!(email["provider"], "log");
    assert_eq!(email["status"], "sent");
    assert_eq!(email["node"], "mail");
    assert_eq!(email["idempotency_key"], format!("{execution}/mail/1"));
    let sms = items
        .iter()
        .find(|d| d["channel"] == "sms")
        .expect("the sms");
    assert_eq!(sms["recipient"], "+336******78");
    assert!(!r.text().contains("ann@example.com"));
    let r = app
        .get("/v1/deliveries?channel=sms&workflow=mailer", &k)
        .await;
    assert_eq!(
        r.ok(StatusCode::OK)["items"].as_array().map(Vec::len),
        Some(1)
    );
    let r = app.get("/v1/deliveries?channel=fax", &k).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("channel"),
    );
    let r = app.get("/v1/deliveries?status=lost", &k).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("status"),
    );
    let r = app.get("/v1/deliveries?limit=1", &k).await;
    let page = r.ok(StatusCode::OK);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    let next = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let r = app
        .get(&format!("/v1/deliveries?limit=1&cursor={next}"), &k)
        .await;
    assert_eq!(
        r.ok(StatusCode::OK)["items"].as_array().map(Vec::len),
        Some(1)
    );
    // Another namespace sees none of them.
    let other = app.key("other", &["admin"]).await;
    let r = app.get("/v1/deliveries", &other).await;
    assert_eq!(
        r.ok(StatusCode::OK)["items"].as_array().map(Vec::len),
        Some(0)
    );
    app.finish().await;
}

#[tokio::test]
async fn a_signed_status_report_moves_a_delivery_once_and_a_forged_one_changes_nothing() {
    let mailgun = sojourn_testkit::fakes::Fake::mailgun("mg-key").await;
    let providers = serde_json::from_value(json!({
        "mg": {"kind": "mailgun", "domain": "mg.shop.test", "api_key": "mg-key", "from": "news@shop.test",
               "base_url": mailgun.url(), "webhook_signing_key": "mg-signing"}
    }))
    .expect("providers");
    let channels =
        serde_json::from_value(json!({"email": {"providers": ["mg"]}})).expect("channels");
    let path = std::env::temp_dir().join(format!(
        "sojourn-api-test-{}.db",
        uuid::Uuid::now_v7().simple()
    ));
    let store = SqliteStore::open(&path).await.expect("open sqlite");
    let engine = Arc::new(
        Engine::start(
            store,
            Config {
                providers,
                channels,
                ..config()
            },
        )
        .await
        .expect("engine starts"),
    );
    let api = sojourn_api::build(AppState::new(engine.clone(), AuthMode::Required));
    let app = App {
        api,
        engine,
        place: path.display().to_string(),
    };
    let k = app.key("mail", &["admin"]).await;
    app.workflow(
        &k,
        "mailer",
        json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "mail", "type": "action", "config": {"action": "email.send", "inputs": {
                    "to": "ann@example.com", "subject": "Hi", "text": "Hello"}}},
                {"id": "end", "type": "exit"},
            ],
            "edges": [
                {"from": "start", "to": "mail"},
                {"from": "mail", "to": "end", "branch": "success"},
            ]
        }),
    )
    .await;
    let r = app
        .post("/v1/executions?wait=10s", &k, json!({"workflow": "mailer"}))
        .await;
    assert_eq!(r.ok(StatusCode::OK)["status"], "completed", "{}", r.text());
    let message_id = r.json["nodes"]["mail"]["output"]["message_id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(message_id.ends_with("@mg.shop.test>"), "{}", r.text());
    let report = |token: &str, key: &str, event: &str| {
        sojourn_testkit::fakes::mailgun_report(
            key,
            token,
            event,
            message_id.trim_matches(['<', '>']),
        )
    };
    let post = |body: Value| {
        request(
            Method::POST,
            "/v1/webhooks/mg",
            None,
            &[],
            Body::from(body.to_string()),
        )
    };
    let status = || async {
        let r = app.get("/v1/deliveries?provider=mg", &k).await;
        r.ok(StatusCode::OK)["items"][0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(status().await, "queued");
    // Forged: refused, nothing moves.
    let r = app
        .send(post(report("t-1", "not-the-key", "delivered")))
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_signature", None);
    assert_eq!(status().await, "queued");
    // Signed: the delivery moves, no API key needed.
    let signed = report("t-2", "mg-signing", "delivered");
    let r = app.send(post(signed.clone())).await;
    assert_eq!(r.ok(StatusCode::OK)["updated"], 1);
    assert_eq!(status().await, "delivered");
    // Replayed: refused.
    let r = app.send(post(signed)).await;
    assert_error(&r, StatusCode::CONFLICT, "replayed", None);
    let r = app.send(post(report("t-3", "mg-signing", "opened"))).await;
    assert_eq!(r.ok(StatusCode::OK)["updated"], 1);
    assert_eq!(status().await, "opened");
    let r = app
        .send(request(
            Method::POST,
            "/v1/webhooks/nobody",
            None,
            &[],
            Body::from("{}"),
        ))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", Some("provider"));
    app.finish().await;
}

#[tokio::test]
async fn profiles_suppressions_caps_and_unsubscribe_links() {
    let smtp = sojourn_testkit::smtp::SmtpSink::start().await;
    let providers = serde_json::from_value(json!({
        "mail": {"kind": "smtp", "host": "127.0.0.1", "port": smtp.port(), "tls": "none", "from": "news@shop.test"}
    }))
    .expect("providers");
    let channels =
        serde_json::from_value(json!({"email": {"providers": ["mail"]}})).expect("channels");
    let path = std::env::temp_dir().join(format!(
        "sojourn-api-test-{}.db",
        uuid::Uuid::now_v7().simple()
    ));
    let store = SqliteStore::open(&path).await.expect("open sqlite");
    let engine = Arc::new(
        Engine::start(
            store,
            Config {
                providers,
                channels,
                audience: sojourn_actors::audience::AudienceConfig {
                    unsubscribe_key: Some("k".repeat(40).into()),
                    public_url: Some("https://sojourn.example".into()),
                    ..Default::default()
                },
                ..config()
            },
        )
        .await
        .expect("engine starts"),
    );
    let api = sojourn_api::build(AppState::new(engine.clone(), AuthMode::Required));
    let app = App {
        api,
        engine,
        place: path.display().to_string(),
    };
    let k = app.key("shop", &["admin"]).await;

    // Profiles: merged, read, replaced; bad fields named, nothing written.
    let r = app
        .post(
            "/v1/profiles/ann",
            &k,
            json!({"email": "Ann@Example.com", "attributes": {"plan": "pro"}, "timezone": "Europe/Paris"}),
        )
        .await;
    assert_eq!(
        r.ok(StatusCode::OK)["addresses"]["email"],
        "Ann@Example.com"
    );
    let r = app
        .post("/v1/profiles/ann", &k, json!({"attributes": {"age": 31}}))
        .await;
    assert_eq!(
        r.ok(StatusCode::OK)["attributes"],
        json!({"plan": "pro", "age": 31})
    );
    let r = app
        .post("/v1/profiles/ann", &k, json!({"email": "not an address"}))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("email"),
    );
    let r = app
        .post("/v1/profiles/ann", &k, json!({"timezone": "Mars/Olympus"}))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("timezone"),
    );
    let r = app
        .post(
            "/v1/profiles:batch",
            &k,
            json!({"profiles": [{"subject": "bob", "email": "bob@example.com"}, {"subject": "cy", "phone": "0612"}]}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("profiles[1].phone"),
    );
    let r = app.get("/v1/profiles/bob", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = app
        .post(
            "/v1/profiles:batch",
            &k,
            json!({"profiles": [{"subject": "bob", "email": "bob@example.com"}, {"subject": "cy", "phone": "+33612345678"}]}),
        )
        .await;
    assert_eq!(r.ok(StatusCode::OK)["written"], 2);
    let r = app.get("/v1/profiles?limit=2", &k).await;
    let page = r.ok(StatusCode::OK);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["next_cursor"], "bob");
    // Another namespace sees none of them.
    let other = app.key("other", &["admin"]).await;
    let r = app.get("/v1/profiles/ann", &other).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // Suppressions and caps.
    let r = app
        .post(
            "/v1/suppressions",
            &k,
            json!({"channel": "fax", "address": "x"}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("channel"),
    );
    let r = app
        .post(
            "/v1/suppressions",
            &k,
            json!({"channel": "email", "address": "Cy <CY@example.com>"}),
        )
        .await;
    assert_eq!(r.ok(StatusCode::CREATED)["address"], "cy@example.com");
    let r = app.get("/v1/suppressions?channel=email", &k).await;
    assert_eq!(r.ok(StatusCode::OK)["items"][0]["reason"], "manual");
    let r = app
        .call(
            Method::DELETE,
            "/v1/suppressions?channel=email&address=cy@example.com",
            Some(&k),
            None,
        )
        .await;
    assert_eq!(r.ok(StatusCode::OK)["removed"], "cy@example.com");
    let r = app
        .call(Method::PUT, "/v1/frequency-caps", Some(&k), Some(json!({"caps": [{"channel": "email", "category": "*", "max_sends": 3, "window": "soon"}]})))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("caps[0].window"),
    );
    let r = app
        .call(Method::PUT, "/v1/frequency-caps", Some(&k), Some(json!({"caps": [{"channel": "email", "category": "*", "max_sends": 3, "window": "7d"}, {"channel": "sms", "category": "transactional", "max_sends": 1, "window": "1d"}]})))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("caps[1].category"),
    );
    let r = app.get("/v1/frequency-caps", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["caps"],
        json!([]),
        "a refused list changes nothing"
    );
    let r = app
        .call(Method::PUT, "/v1/frequency-caps", Some(&k), Some(json!({"caps": [{"channel": "email", "category": "*", "max_sends": 3, "window": "7d"}]})))
        .await;
    assert_eq!(r.ok(StatusCode::OK)["caps"][0]["window"], "7d");

    // A marketing email to the subject: the address from the profile, the
    // link in the body and in List-Unsubscribe, one-click.
    app.workflow(
        &k,
        "news",
        json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "mail", "type": "action", "config": {"action": "email.send", "inputs": {
                    "to": "subject", "subject": "News", "text": "Read on. Unsubscribe: {{ unsubscribe_url }}", "category": "news"}}},
                {"id": "end", "type": "exit", "config": {"outcome": "done"}},
            ],
            "edges": [{"from": "start", "to": "mail"}, {"from": "mail", "to": "end", "branch": "success"}]
        }),
    )
    .await;
    let start = |subject: &'static str| {
        let app = &app;
        let k = &k;
        async move {
            let r = app
                .post(
                    "/v1/executions",
                    k,
                    json!({"workflow": "news", "input": {}, "subject": subject}),
                )
                .await;
            r.ok(StatusCode::CREATED);
            let id = r.str("/id");
            app.wait_status(k, &id, "completed").await
        }
    };
    let done = start("ann").await;
    assert_eq!(
        done["nodes"]["mail"]["output"]["provider"], "mail",
        "{done}"
    );
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, ["Ann@Example.com"]);
    let data = mails[0].data.replace("\r\n ", " ");
    let header = data
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe: "))
        .expect("List-Unsubscribe");
    assert!(
        data.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{data}"
    );
    let link = header
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned();
    assert!(
        link.starts_with("https://sojourn.example/v1/unsubscribe/"),
        "{link}"
    );
    assert!(data.contains(&link), "the body has the link too: {data}");
    let token = link.rsplit('/').next().expect("token").to_owned();

    // Reading the page changes nothing (no API key needed).
    let r = app
        .call(Method::GET, &format!("/v1/unsubscribe/{token}"), None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("Unsubscribe from"));
    let r = app.get("/v1/profiles/ann", &k).await;
    assert_eq!(r.ok(StatusCode::OK)["preferences"]["categories"], json!({}));
    // A tampered link is refused; another recipient's changes only theirs.
    let mut tampered = token.clone();
    let flip = if tampered.starts_with('e') { "f" } else { "e" };
    tampered.replace_range(0..1, flip);
    let r = app
        .call(
            Method::POST,
            &format!("/v1/unsubscribe/{tampered}"),
            None,
            None,
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "invalid_link", None);
    let bobs = app
        .engine
        .audience()
        .sign(&sojourn_actors::audience::Unsubscribe {
            namespace: "shop".into(),
            subject: Some("bob".into()),
            channel: "email".into(),
            category: "news".into(),
            address: "bob@example.com".into(),
            expires: None,
            message: None,
        })
        .expect("signed");
    let form = |token: String, body: &'static str| {
        let app = &app;
        async move {
            app.send(
                Request::builder()
                    .method(Method::POST)
                    .uri(format!("/v1/unsubscribe/{token}"))
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(body))
                    .expect("request"),
            )
            .await
        }
    };
    let one_click = |token: String| form(token, "List-Unsubscribe=One-Click");
    assert_eq!(one_click(bobs).await.status, StatusCode::OK);
    let r = app.get("/v1/profiles/bob", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["preferences"]["categories"],
        json!({"news": false})
    );
    let r = app.get("/v1/profiles/ann", &k).await;
    assert_eq!(r.ok(StatusCode::OK)["preferences"]["categories"], json!({}));
    // Ann's own one-click: her next "news" email is not sent.
    assert_eq!(one_click(token.clone()).await.status, StatusCode::OK);
    let r = app.get("/v1/profiles/ann", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["preferences"]["categories"],
        json!({"news": false})
    );
    let done = start("ann").await;
    assert_eq!(done["nodes"]["mail"]["status"], "unsubscribed", "{done}");
    assert_eq!(smtp.mails().len(), 1, "not sent");
    let r = app.get("/v1/deliveries?status=unsubscribed", &k).await;
    assert_eq!(
        r.ok(StatusCode::OK)["items"][0]["recipient"],
        "a***@example.com"
    );
    // The analytics: the first sent and unsubscribed from through its link,
    // the second not sent (she had unsubscribed).
    let mut rates = Value::Null;
    for _ in 0..600 {
        let r = app.get("/v1/analytics/deliveries?workflow=news", &k).await;
        rates = r.ok(StatusCode::OK).clone();
        if rates["channels"][0]["unsubscribed"] == json!(1)
            && rates["channels"][0]["unsent"]["unsubscribed"] == json!(1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mail = &rates["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .find(|p| p["provider"] == json!("mail"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            mail["sent"].clone(),
            mail["unsubscribed"].clone(),
            mail["unsubscribe_rate"].clone()
        ),
        (json!(1), json!(1), json!(1.0)),
        "one sent, one unsubscribed from: {rates:#}"
    );
    assert_eq!(
        mail["delivery_rate"],
        json!(0.0),
        "nothing reported delivered"
    );
    assert_eq!(
        rates["channels"][0]["unsent"],
        json!({"unsubscribed": 1}),
        "{rates:#}"
    );

    // Her page shows her preferences; saving it changes them ("news" back
    // on, SMS off).
    let r = app
        .call(Method::GET, &format!("/v1/unsubscribe/{token}"), None, None)
        .await;
    let page = r.text();
    assert!(
        page.contains(r#"name="category" value="news">"#),
        "news is off: {page}"
    );
    assert!(
        page.contains(r#"name="channel" value="sms" checked>"#),
        "{page}"
    );
    let r = form(
        token.clone(),
        "scope=preferences&receive=marketing&channel=email&channel=push&channel=chat&category=news&category=marketing",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = app.get("/v1/profiles/ann", &k).await;
    let prefs = r.ok(StatusCode::OK)["preferences"].clone();
    assert_eq!(prefs["opted_out"], false, "{prefs}");
    assert_eq!(
        prefs["categories"],
        json!({"marketing": true, "news": true})
    );
    assert_eq!(
        prefs["channels"],
        json!({"chat": true, "email": true, "push": true, "sms": false})
    );
    let r = form(token.clone(), "scope=everything").await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("scope"),
    );
    let r = form(token.clone(), "scope=resubscribe").await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("scope"),
    );
    // A link to an address the profile no longer has (forwarded, recycled)
    // can opt out, never back in.
    let stale = app
        .engine
        .audience()
        .sign(&sojourn_actors::audience::Unsubscribe {
            namespace: "shop".into(),
            subject: Some("ann".into()),
            channel: "email".into(),
            category: "news".into(),
            address: "ann@old.example".into(),
            expires: None,
            message: None,
        })
        .expect("signed");
    let r = form(
        stale.clone(),
        "scope=preferences&channel=email&channel=push&channel=chat&category=marketing",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = form(stale, "scope=preferences&receive=marketing&channel=email&channel=sms&channel=push&channel=chat&category=news&category=marketing").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = app.get("/v1/profiles/ann", &k).await;
    let prefs = r.ok(StatusCode::OK)["preferences"].clone();
    assert_eq!(prefs["opted_out"], true, "opting out went through: {prefs}");
    assert_eq!(prefs["categories"]["news"], false, "{prefs}");
    assert_eq!(prefs["channels"]["email"], true, "{prefs}");
    // An address alone: a link's opt-out can be undone, a bounce cannot.
    let zed = |address: &str| {
        app.engine
            .audience()
            .sign(&sojourn_actors::audience::Unsubscribe {
                namespace: "shop".into(),
                subject: None,
                channel: "email".into(),
                category: "news".into(),
                address: address.into(),
                expires: None,
                message: None,
            })
            .expect("signed")
    };
    assert_eq!(
        form(zed("zed@example.com"), "scope=all").await.status,
        StatusCode::OK
    );
    let r = app.get("/v1/suppressions?channel=email", &k).await;
    assert!(
        r.ok(StatusCode::OK)["items"]
            .to_string()
            .contains("zed@example.com")
    );
    assert_eq!(
        form(zed("zed@example.com"), "scope=resubscribe")
            .await
            .status,
        StatusCode::OK
    );
    let r = app.get("/v1/suppressions?channel=email", &k).await;
    assert!(
        !r.ok(StatusCode::OK)["items"]
            .to_string()
            .contains("zed@example.com")
    );
    let r = app
        .call(
            Method::POST,
            "/v1/suppressions",
            Some(&k),
            Some(json!({"channel": "email", "address": "yan@example.com"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        form(zed("yan@example.com"), "scope=resubscribe")
            .await
            .status,
        StatusCode::OK
    );
    let r = app.get("/v1/suppressions?channel=email", &k).await;
    assert!(
        r.ok(StatusCode::OK)["items"]
            .to_string()
            .contains("yan@example.com"),
        "an operator's entry stays"
    );
    // An operator's entry made after a link's opt-out replaces it, so the
    // link cannot undo it.
    assert_eq!(
        form(zed("xi@example.com"), "scope=all").await.status,
        StatusCode::OK
    );
    let r = app
        .call(
            Method::POST,
            "/v1/suppressions",
            Some(&k),
            Some(json!({"channel": "email", "address": "xi@example.com"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = form(zed("xi@example.com"), "scope=resubscribe").await;
    assert!(r.text().contains("no unsubscribe of yours"), "{}", r.text());
    let r = app.get("/v1/suppressions?channel=email", &k).await;
    let items = r.ok(StatusCode::OK)["items"].clone();
    let xi = items
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["address"] == "xi@example.com")
        .cloned()
        .expect("xi stays");
    assert_eq!(xi["reason"], "manual", "{xi}");

    // Erasure.
    let r = app
        .call(Method::DELETE, "/v1/profiles/ann", Some(&k), None)
        .await;
    assert_eq!(r.ok(StatusCode::OK)["erased"], true);
    let r = app.get("/v1/profiles/ann", &k).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    app.finish().await;
}

// ---- the console's API ------------------------------------------------------

async fn console_api<S: Store>(app: &App<S>) {
    let k = app.key("console", &["write"]).await;
    let reader = app.key("console", &["read"]).await;
    let doc = json!({
        "settings": {"subject": "input.user"},
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "nap", "type": "delay", "config": {"duration": "2d"}},
            {"id": "wait", "type": "wait_for_event", "config": {"event": "paid", "timeout": "1d"}},
            {"id": "mail", "type": "action", "config": {"action": "email.send", "inputs": {
                "to": "{{ input.email }}", "subject": "Hi {{ input.name }}", "text": "Thanks for {{ event.payload.total }}"}}},
            {"id": "end", "type": "exit", "config": {"outcome": "paid"}},
            {"id": "lost", "type": "exit", "config": {"outcome": "lost"}},
        ],
        "edges": [
            {"from": "start", "to": "nap"},
            {"from": "nap", "to": "wait"},
            {"from": "wait", "to": "mail", "branch": "event"},
            {"from": "wait", "to": "lost", "branch": "timeout"},
            {"from": "mail", "to": "end", "branch": "success"},
        ]
    });
    // A draft only: a preview needs no published version.
    let r = app
        .post(
            "/v1/workflows",
            &k,
            json!({"key": "preview", "definition": doc}),
        )
        .await;
    r.ok(StatusCode::CREATED);

    // The draft, with an event 2 days 3 hours in: days of journey time, no
    // time spent, the message rendered, nothing sent.
    let r = app
        .post(
            "/v1/workflows/preview/simulate",
            &reader,
            json!({
                "input": {"user": "u-1", "email": "ada@example.com", "name": "Ada"},
                "start": "2026-03-01T09:00:00Z",
                "events": [{"after": "51h", "name": "paid", "payload": {"total": 12}}],
            }),
        )
        .await;
    let sim = r.ok(StatusCode::OK);
    assert_eq!(sim["stop"], json!("finished"), "{sim:#}");
    assert_eq!(sim["status"], json!("completed"), "{sim:#}");
    assert_eq!(sim["outcome"], json!("paid"), "{sim:#}");
    let steps = sim["steps"].as_array().expect("steps");
    let entered: Vec<&str> = steps
        .iter()
        .filter(|s| s["type"] == json!("node_entered"))
        .filter_map(|s| s["node"].as_str())
        .collect();
    assert_eq!(entered, ["start", "nap", "wait", "mail", "end"], "{sim:#}");
    let mail = steps
        .iter()
        .find(|s| s["type"] == json!("node_entered") && s["node"] == json!("mail"))
        .expect("mail entered");
    assert_eq!(mail["offset_ms"], json!(51 * 3_600_000), "{mail:#}");
    assert!(
        mail["text"].as_str().is_some_and(|t| t.contains("mail")),
        "{mail:#}"
    );
    let dispatches = sim["dispatches"].as_array().expect("dispatches");
    assert_eq!(dispatches.len(), 1, "{sim:#}");
    assert_eq!(dispatches[0]["node"], json!("mail"));
    assert_eq!(dispatches[0]["inputs"]["subject"], json!("Hi Ada"));
    assert_eq!(dispatches[0]["inputs"]["text"], json!("Thanks for 12"));
    // Nothing ran for real.
    let r = app.get("/v1/executions?workflow=preview", &reader).await;
    assert_eq!(r.ok(StatusCode::OK)["items"], json!([]));
    let r = app.get("/v1/deliveries?workflow=preview", &reader).await;
    assert_eq!(r.ok(StatusCode::OK)["items"], json!([]));

    // Without the event: the timeout branch, 3 days in.
    let r = app
        .post(
            "/v1/workflows/preview/simulate",
            &reader,
            json!({"input": {"user": "u-1", "email": "a@example.com", "name": "A"}}),
        )
        .await;
    let sim = r.ok(StatusCode::OK);
    assert_eq!(sim["outcome"], json!("lost"), "{sim:#}");
    assert_eq!(sim["dispatches"], json!([]));

    // A document given instead of the draft; its problems, each named.
    let mut broken = doc.clone();
    broken["nodes"][3]["config"]["inputs"] = json!({"subject": "Hi"});
    let r = app
        .post(
            "/v1/workflows/preview/simulate",
            &reader,
            json!({"definition": broken, "input": {}}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_workflow",
        None,
    );
    let details = r.json["error"]["details"].as_array().expect("details");
    assert!(
        details
            .iter()
            .any(|d| d["node"] == json!("mail") && d["field"] == json!("config.inputs.to")),
        "{details:#?}"
    );
    // Validation answers the document as publishing would store it.
    let r = app
        .post(
            "/v1/workflows/preview/validate",
            &reader,
            json!({"definition": doc}),
        )
        .await;
    let v = r.ok(StatusCode::OK);
    assert_eq!(v["valid"], json!(true), "{v:#}");
    assert_eq!(v["normalized"]["key"], json!("preview"), "{v:#}");
    assert_eq!(
        v["normalized"]["nodes"][3]["config"]["action"],
        json!("email.send")
    );
    let r = app
        .post(
            "/v1/workflows/preview/validate",
            &reader,
            json!({"definition": broken}),
        )
        .await;
    assert!(
        r.ok(StatusCode::OK).get("normalized").is_none(),
        "{}",
        r.text()
    );
    // What the console compares with the latest version is what publishing
    // stores: saved and published in one request, then read back.
    let normalized = v["normalized"].clone();
    let r = app
        .call(
            Method::PUT,
            "/v1/workflows/preview",
            Some(&k),
            Some(json!({"definition": doc, "publish": true})),
        )
        .await;
    let w = r.ok(StatusCode::OK);
    assert_eq!(w["published"]["version"], json!(1), "{w:#}");
    let r = app.get("/v1/workflows/preview/versions/1", &reader).await;
    assert_eq!(r.ok(StatusCode::OK)["definition"], normalized);
    // A bad script or start names its field.
    let r = app
        .post(
            "/v1/workflows/preview/simulate",
            &reader,
            json!({"input": {"user": "u"}, "timezone": "Mars/Olympus"}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("timezone"),
    );
    let r = app
        .post(
            "/v1/workflows/preview/simulate",
            &reader,
            json!({"input": {"user": "u"}, "events": [{"after": "soon", "name": "paid"}]}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("events[0].after"),
    );
    let r = app
        .post(
            "/v1/workflows/preview/simulate",
            &reader,
            json!({"input": {}, "actions": {"nope": [{"ok": {}}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_error_format(&r);
    assert!(r.text().contains("nope"), "{}", r.text());
    let r = app
        .post(
            "/v1/workflows/preview/simulate",
            &reader,
            json!({"inputs": {}}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "unknown field: {}",
        r.text()
    );
    let r = app
        .post("/v1/workflows/nope/simulate", &reader, json!({}))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    // Another namespace does not see it.
    let other = app.key("elsewhere", &["read"]).await;
    let r = app
        .post("/v1/workflows/preview/simulate", &other, json!({}))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // A trigger's lag: figures only from Kafka (this engine has none); a
    // trigger that reads no topic has none to give.
    let r = app
        .post(
            "/v1/workflows/preview/triggers",
            &k,
            json!({"kind": "event", "config": {"event": "paid", "topic": "payments"}}),
        )
        .await;
    let event_trigger = r.ok(StatusCode::CREATED)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = app
        .get(&format!("/v1/triggers/{event_trigger}/lag"), &reader)
        .await;
    assert_eq!(
        r.ok(StatusCode::OK),
        &json!({"topic": "payments", "kafka": false, "topic_exists": true, "partitions": []})
    );
    let r = app
        .post(
            "/v1/workflows/preview/triggers",
            &k,
            json!({"kind": "api", "path": "previewed"}),
        )
        .await;
    let api_trigger = r.ok(StatusCode::CREATED)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = app
        .get(&format!("/v1/triggers/{api_trigger}/lag"), &reader)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("trigger"));
    let r = app.get("/v1/triggers/trg_nope/lag", &reader).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = app
        .get(&format!("/v1/triggers/{event_trigger}/lag"), &other)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // The workflow schema the builder's forms come from.
    let r = app.get("/v1/schema/workflow", &reader).await;
    let schema = r.ok(StatusCode::OK);
    for def in [
        "ActionConfig",
        "DelayConfig",
        "WaitForEventConfig",
        "SplitConfig",
    ] {
        assert!(schema["$defs"][def].is_object(), "$defs.{def}");
    }

    // Executions by status: unfinished ones always, finished ones since.
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    app.workflow(
        &k,
        "counted",
        json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "hold", "type": "wait_for_event", "config": {"event": "go"}},
                {"id": "end", "type": "exit"},
            ],
            "edges": [
                {"from": "start", "to": "hold"},
                {"from": "hold", "to": "end", "branch": "event"},
            ]
        }),
    )
    .await;
    let waiting = app.start(&k, "counted", json!({})).await;
    let done = app.start(&k, "counted", json!({})).await;
    let cancelled = app.start(&k, "counted", json!({})).await;
    for id in [&waiting, &done, &cancelled] {
        app.wait_status(&k, id, "waiting").await;
    }
    let r = app
        .post(
            &format!("/v1/executions/{done}/events"),
            &k,
            json!({"name": "go"}),
        )
        .await;
    r.ok(StatusCode::ACCEPTED);
    app.wait_status(&k, &done, "completed").await;
    let r = app
        .post(&format!("/v1/executions/{cancelled}/cancel"), &k, json!({}))
        .await;
    r.ok(StatusCode::ACCEPTED);
    app.wait_status(&k, &cancelled, "cancelled").await;
    let since = before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let r = app
        .get(
            &format!(
                "/v1/analytics/executions?since={}",
                since.replace('+', "%2B")
            ),
            &reader,
        )
        .await;
    let c = r.ok(StatusCode::OK);
    assert_eq!(
        (
            c["waiting"].clone(),
            c["completed"].clone(),
            c["cancelled"].clone(),
            c["failed"].clone()
        ),
        (json!(1), json!(1), json!(1), json!(0)),
        "{c:#}"
    );
    // Finished before `since`: not counted; the waiting one still is.
    let later = (chrono::Utc::now() + chrono::Duration::seconds(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let r = app
        .get(&format!("/v1/analytics/executions?since={later}"), &reader)
        .await;
    let c = r.ok(StatusCode::OK);
    assert_eq!(
        (
            c["waiting"].clone(),
            c["completed"].clone(),
            c["cancelled"].clone()
        ),
        (json!(1), json!(0), json!(0)),
        "{c:#}"
    );
    // Another namespace counts nothing of these.
    let r = app.get("/v1/analytics/executions", &other).await;
    let c = r.ok(StatusCode::OK);
    assert_eq!(
        (c["waiting"].clone(), c["completed"].clone()),
        (json!(0), json!(0))
    );
    let r = app
        .get("/v1/analytics/executions?since=yesterday", &reader)
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("since"),
    );
}

#[tokio::test]
async fn console_api_on_sqlite() {
    let app = sqlite_app().await;
    console_api(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn console_api_on_postgres() {
    let app = pg_app(4).await;
    console_api(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn the_console_is_served_at_the_root_and_routes_in_the_browser() {
    let app = sqlite_app().await;
    // No key: the console's files hold no data (its API calls need one).
    let page = app.call(Method::GET, "/", None, None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let html = page.text();
    assert!(html.contains("<div id=\"root\">"), "{html}");
    let header = |r: &Resp, h: &str| {
        r.headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header(&page, "content-type").starts_with("text/html"));
    assert_eq!(header(&page, "cache-control"), "no-cache");
    assert!(header(&page, "content-security-policy").contains("default-src 'self'"));
    // A page of the console is the same document (it routes in the browser).
    for path in [
        "/workflows/welcome",
        "/workflows/welcome.v2",
        "/analytics/welcome.v2",
        "/executions/exe_1",
        "/nodes",
        "/index.html",
    ] {
        let r = app.call(Method::GET, path, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.text(), html, "{path}");
    }
    // Its scripts, cached for good (their names change with their content).
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("index.html loads a script");
    assert!(script.starts_with("/assets/"), "{script}");
    let r = app.call(Method::GET, script, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        header(&r, "content-type").contains("javascript"),
        "{:?}",
        r.headers
    );
    assert!(header(&r, "cache-control").contains("immutable"));
    let etag = header(&r, "etag");
    let again = app
        .send(
            Request::builder()
                .uri(script)
                .header("if-none-match", &etag)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    // A missing file, an unknown API route and a write are the API's 404s,
    // never the page.
    for (method, path) in [
        (Method::GET, "/assets/missing.js"),
        (Method::GET, "/v1/nothing-here"),
        (Method::GET, "/cluster/nothing"),
        (Method::GET, "/readyz/"),
        (Method::GET, "/health"),
        (Method::GET, "/workflowsx"),
        (Method::POST, "/workflows"),
    ] {
        let r = app.call(method.clone(), path, None, None).await;
        assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    }
    // Every page the console routes to is the page on a reload or a link
    // (its routes, read from its source).
    let app_tsx = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../console/src/App.tsx"),
    )
    .expect("console/src/App.tsx");
    let routes: Vec<&str> = app_tsx
        .split("<Route path=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|p| p.starts_with('/'))
        .collect();
    assert!(routes.len() >= 8, "{routes:?}");
    for route in routes {
        let path = route.replace(":id", "some.key");
        let r = app.call(Method::GET, &path, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        assert_eq!(r.text(), html, "{path}");
    }
    // The API's own routes keep their answers.
    let r = app.call(Method::GET, "/v1/workflows", None, None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized", None);
    let r = app.call(Method::GET, "/cluster", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    app.finish().await;
}

/// The console's TypeScript types are generated from `console/openapi.json`
/// (`npm run api-types`): that copy must be the API's document.
/// `SOJOURN_UPDATE_OPENAPI=1 cargo test -p sojourn-api --test router
/// the_consoles_copy` rewrites it.
#[tokio::test]
async fn the_consoles_copy_of_the_openapi_document_is_current() {
    let app = sqlite_app().await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../console/openapi.json");
    let current = serde_json::to_string_pretty(&app.api.openapi).expect("json") + "\n";
    if std::env::var_os("SOJOURN_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &current).expect("write console/openapi.json");
    }
    let copy = std::fs::read_to_string(&path).unwrap_or_default();
    app.finish().await;
    assert!(
        copy == current,
        "console/openapi.json is not the API's document: run \
         SOJOURN_UPDATE_OPENAPI=1 cargo test -p sojourn-api --test router the_consoles_copy, \
         then `npm run api-types` in console/"
    );
}
