//! The client commands: `apply`, `start`, `executions ls`, `inspect`,
//! `events send`, `pause|resume|cancel|retry`. They talk to a node's HTTP
//! API at `SOJOURN_URL` with `SOJOURN_API_KEY`; human-readable output by
//! default, `--json` for scripts. An answer of 4xx exits 2 (the request was
//! wrong), anything else that fails exits 1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::Failure;

/// Where the server is and who we are.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Conn {
    /// The node's address.
    #[arg(long, env = "SOJOURN_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// An API key (not needed against `sojourn dev`).
    #[arg(long, env = "SOJOURN_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Print the server's JSON answer instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) struct Client {
    http: reqwest::Client,
    conn: Conn,
}

impl Client {
    pub(crate) fn new(conn: Conn) -> Result<Client, Failure> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Client { http, conn })
    }

    /// Sends a request; a non-2xx answer becomes a failure quoting the
    /// server's error. `Ok(None)` for a 404 when `allow_404`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        allow_404: bool,
    ) -> Result<Option<(StatusCode, Value)>, Failure> {
        self.call_within(method, path, body, headers, allow_404, None)
            .await
    }

    /// [`Client::call`] with its own timeout (a request that waits on the
    /// server).
    async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        allow_404: bool,
        timeout: Option<Duration>,
    ) -> Result<Option<(StatusCode, Value)>, Failure> {
        let url = format!("{}{}", self.conn.url.trim_end_matches('/'), path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        // An empty key (`SOJOURN_API_KEY=`) counts as no key.
        if let Some(key) = self
            .conn
            .api_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
        {
            req = req.bearer_auth(key);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            Failure::Runtime(anyhow::anyhow!(
                "cannot reach {} ({e}); is a node running? (sojourn dev, or set SOJOURN_URL)",
                self.conn.url
            ))
        })?;
        let status = resp.status();
        let text = resp.text().await.context("reading the answer")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status == StatusCode::NOT_FOUND && allow_404 {
            return Ok(None);
        }
        if status.is_success() {
            return Ok(Some((status, value)));
        }
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        let details = value
            .pointer("/error/details")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .map(|p| format!("\n  {}", problem_line(p)))
                    .collect::<String>()
            })
            .unwrap_or_default();
        let text = format!("{method} {path}: {status}: {message}{details}");
        if status.is_client_error() {
            Err(Failure::Invalid(text))
        } else {
            Err(Failure::Runtime(anyhow::anyhow!(text)))
        }
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self
            .call(Method::GET, path, None, &[], false)
            .await?
            .map(|(_, v)| v)
            .unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(StatusCode, Value), Failure> {
        self.call(Method::POST, path, Some(body), &[], false)
            .await?
            .ok_or_else(|| Failure::Invalid(format!("{path}: not found")))
    }

    fn print_json(&self, v: &Value) -> Result<bool, Failure> {
        if self.conn.json {
            println!("{}", serde_json::to_string_pretty(v).context("printing")?);
        }
        Ok(self.conn.json)
    }
}

fn problem_line(p: &Value) -> String {
    let node = p.get("node").and_then(Value::as_str);
    let field = p.get("field").and_then(Value::as_str).unwrap_or("");
    let message = p.get("message").and_then(Value::as_str).unwrap_or("");
    match node {
        Some(n) => format!("node {n}: {field}: {message}"),
        None => format!("{field}: {message}"),
    }
}

fn seg(s: &str) -> String {
    // Ids and keys are path-safe by validation; encode anything else.
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Reads a JSON file (`-`: standard input).
pub(crate) fn read_json(path: &Path) -> Result<Value, Failure> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure::Invalid(format!("standard input: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::Invalid(format!("{}: {e}", path.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| Failure::Invalid(format!("{}: not valid JSON: {e}", path.display())))
}

/// `sojourn apply -f FILE`: creates the workflow (by its `key`) or updates
/// its draft, and publishes it unless it equals the latest version.
pub(crate) async fn apply(c: &Client, file: &Path, publish: bool) -> Result<(), Failure> {
    let definition = read_json(file)?;
    let key = definition
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Failure::Invalid(format!("{}: key: the workflow needs a key", file.display()))
        })?
        .to_owned();
    let name = definition.get("name").cloned().unwrap_or(Value::Null);
    let existing = c
        .call(
            Method::GET,
            &format!("/v1/workflows/{}", seg(&key)),
            None,
            &[],
            true,
        )
        .await?;
    let (status, out) = match existing {
        None => {
            c.post(
                "/v1/workflows",
                &json!({"key": key, "name": name, "definition": definition, "publish": publish}),
            )
            .await?
        }
        Some(_) => c
            .call(
                Method::PUT,
                &format!("/v1/workflows/{}", seg(&key)),
                Some(&json!({"definition": definition, "name": name, "publish": publish})),
                &[],
                false,
            )
            .await?
            .ok_or_else(|| Failure::Invalid(format!("workflow {key} vanished")))?,
    };
    if c.print_json(&out)? {
        return Ok(());
    }
    let id = out.get("id").and_then(Value::as_str).unwrap_or("?");
    let verb = if status == StatusCode::CREATED {
        "created"
    } else {
        "updated"
    };
    match out.get("published") {
        Some(p) => {
            let v = p.get("version").and_then(Value::as_i64).unwrap_or(0);
            let new = p.get("new").and_then(Value::as_bool).unwrap_or(false);
            let what = if new { "published" } else { "unchanged at" };
            println!("workflow {key} ({id}) {verb}; {what} version {v}");
        }
        None => println!("workflow {key} ({id}) {verb}; draft saved, not published"),
    }
    Ok(())
}

pub(crate) struct StartArgs {
    pub(crate) workflow: String,
    pub(crate) input: Option<PathBuf>,
    pub(crate) subject: Option<String>,
    pub(crate) version: Option<i32>,
    pub(crate) idempotency_key: Option<String>,
    /// Wait this long for the execution to finish (`?wait=`).
    pub(crate) wait: Option<String>,
}

/// The HTTP timeout of a request that waits `wait` on the server: the wait
/// (as the server reads it; the longest if it does not parse: the server
/// then refuses it at once) and a margin.
fn wait_timeout(wait: &str) -> Duration {
    let longest = sojourn_actors::MAX_WAIT;
    let wait = sojourn_runtime::time::parse_duration(wait)
        .ok()
        .and_then(|d| d.to_std().ok())
        .map_or(longest, |d| d.min(longest));
    wait + Duration::from_secs(15)
}

pub(crate) async fn start(c: &Client, a: StartArgs) -> Result<(), Failure> {
    let input = match &a.input {
        Some(p) => read_json(p)?,
        None => json!({}),
    };
    let mut body = json!({"workflow": a.workflow, "input": input});
    if let Some(s) = a.subject {
        body["subject"] = json!(s);
    }
    if let Some(v) = a.version {
        body["version"] = json!(v);
    }
    let headers: Vec<(&str, &str)> = a
        .idempotency_key
        .as_deref()
        .map(|k| vec![("Idempotency-Key", k)])
        .unwrap_or_default();
    let path = match &a.wait {
        Some(w) => format!("/v1/executions?wait={}", seg(w)),
        None => "/v1/executions".to_owned(),
    };
    let timeout = a.wait.as_deref().map(wait_timeout);
    let (status, out) = c
        .call_within(Method::POST, &path, Some(&body), &headers, false, timeout)
        .await?
        .ok_or_else(|| Failure::Invalid("not found".into()))?;
    if let Some(wait) = &a.wait {
        show_execution(c, &out).await?;
        return finished(&out, status, wait);
    }
    if c.print_json(&out)? {
        return Ok(());
    }
    let id = out.get("id").and_then(Value::as_str).unwrap_or("?");
    if out.get("new").and_then(Value::as_bool) == Some(false) {
        println!("{id} (already started under this idempotency key)");
    } else {
        println!("{id}");
    }
    Ok(())
}

pub(crate) struct ListArgs {
    pub(crate) workflow: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) limit: Option<u32>,
    pub(crate) cursor: Option<String>,
}

/// `sojourn deliveries ls`: the filters given, as the API's query.
pub(crate) async fn list_deliveries(
    c: &Client,
    filters: Vec<(&str, Option<String>)>,
) -> Result<(), Failure> {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in filters {
        if let Some(v) = v {
            q.append_pair(k, &v);
        }
    }
    let out = c.get(&format!("/v1/deliveries?{}", q.finish())).await?;
    if c.print_json(&out)? {
        return Ok(());
    }
    let items = out
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            [
                "created_at",
                "channel",
                "provider",
                "recipient",
                "status",
                "error_class",
                "execution_id",
                "node",
                "provider_message_id",
            ]
            .iter()
            .map(|k| cell(d.get(*k)))
            .collect()
        })
        .collect();
    print_table(
        &[
            "SENT",
            "CHANNEL",
            "PROVIDER",
            "TO",
            "STATUS",
            "ERROR",
            "EXECUTION",
            "NODE",
            "MESSAGE ID",
        ],
        &rows,
    );
    if let Some(next) = out.get("next_cursor").and_then(Value::as_str) {
        println!("(more: --cursor {next})");
    }
    Ok(())
}

pub(crate) async fn list_executions(c: &Client, a: ListArgs) -> Result<(), Failure> {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("workflow", a.workflow),
        ("status", a.status),
        ("subject", a.subject),
        ("limit", a.limit.map(|l| l.to_string())),
        ("cursor", a.cursor),
    ] {
        if let Some(v) = v {
            q.append_pair(k, &v);
        }
    }
    let out = c.get(&format!("/v1/executions?{}", q.finish())).await?;
    if c.print_json(&out)? {
        return Ok(());
    }
    let items = out
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            [
                "id",
                "status",
                "current_node",
                "subject",
                "workflow_id",
                "version",
                "created_at",
            ]
            .iter()
            .map(|k| cell(e.get(*k)))
            .collect()
        })
        .collect();
    print_table(
        &[
            "ID", "STATUS", "NODE", "SUBJECT", "WORKFLOW", "VERSION", "CREATED",
        ],
        &rows,
    );
    if let Some(next) = out.get("next_cursor").and_then(Value::as_str) {
        println!("(more: --cursor {next})");
    }
    Ok(())
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// The exit of `start --wait`: success when the execution completed; a
/// runtime failure (exit 1, as `sojourn run` when an execution does not
/// complete) when it failed, was cancelled or had not finished in time (the
/// server answered 202).
fn finished(exe: &Value, status: StatusCode, wait: &str) -> Result<(), Failure> {
    let id = cell(exe.get("id"));
    let state = cell(exe.get("status"));
    if status == StatusCode::ACCEPTED {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "execution {id} had not finished after {wait} (it is {state}; it carries on)"
        )));
    }
    match state.as_str() {
        "completed" => Ok(()),
        _ => Err(Failure::Runtime(anyhow::anyhow!(
            "execution {id} did not complete: it is {state}"
        ))),
    }
}

/// `sojourn inspect EXECUTION`: state, variables, lease holder and the
/// journal as a timeline.
pub(crate) async fn inspect(c: &Client, id: &str) -> Result<(), Failure> {
    let exe = c.get(&format!("/v1/executions/{}", seg(id))).await?;
    show_execution(c, &exe).await
}

/// Prints an execution's state (as the API answered it) and its journal.
async fn show_execution(c: &Client, exe: &Value) -> Result<(), Failure> {
    let id = exe.get("id").and_then(Value::as_str).unwrap_or_default();
    let mut journal: Vec<Value> = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let path = match cursor {
            Some(p) => format!("/v1/executions/{}/journal?limit=500&cursor={p}", seg(id)),
            None => format!("/v1/executions/{}/journal?limit=500", seg(id)),
        };
        let page = c.get(&path).await?;
        if let Some(items) = page.get("items").and_then(Value::as_array) {
            journal.extend(items.iter().cloned());
        }
        match page.get("next_cursor").and_then(Value::as_i64) {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    if c.conn.json {
        let mut out = exe.clone();
        out["journal"] = Value::Array(journal);
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("printing")?
        );
        return Ok(());
    }
    println!("execution  {}", cell(exe.get("id")));
    println!(
        "workflow   {} (version {})",
        cell(exe.get("workflow_id")),
        cell(exe.get("version"))
    );
    println!("status     {}", cell(exe.get("status")));
    println!("node       {}", cell(exe.get("current_node")));
    println!("subject    {}", cell(exe.get("subject")));
    println!(
        "lease      {}",
        match exe.get("lease_holder").and_then(Value::as_str) {
            Some(h) => format!("held by {h} (epoch {})", cell(exe.get("lease_epoch"))),
            None => format!("passivated (epoch {})", cell(exe.get("lease_epoch"))),
        }
    );
    for (label, key) in [("waiting", "wait"), ("paused", "pause"), ("error", "error")] {
        if let Some(v) = exe.get(key).filter(|v| !v.is_null()) {
            println!("{label:<10} {v}");
        }
    }
    println!("input      {}", cell(exe.get("input")));
    println!("vars       {}", cell(exe.get("vars")));
    println!("journal");
    for e in &journal {
        let at = e.get("at").and_then(Value::as_str).unwrap_or("");
        let at = chrono::DateTime::parse_from_rfc3339(at)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_else(|_| at.to_owned());
        println!("  {at}  {}", cell(e.get("text")));
    }
    Ok(())
}

pub(crate) async fn send_event(
    c: &Client,
    name: &str,
    key: &str,
    payload: Option<&str>,
) -> Result<(), Failure> {
    let payload = match payload {
        None => Value::Null,
        Some(p) if p.starts_with('@') => read_json(Path::new(&p[1..]))?,
        Some(p) => serde_json::from_str(p)
            .map_err(|e| Failure::Invalid(format!("--payload: not valid JSON: {e}")))?,
    };
    let (_, out) = c
        .post(
            "/v1/events",
            &json!({"name": name, "key": key, "payload": payload}),
        )
        .await?;
    if c.print_json(&out)? {
        return Ok(());
    }
    println!(
        "event {name} for {key}: delivered to {} execution(s)",
        cell(out.get("delivered"))
    );
    Ok(())
}

/// `pause`, `resume`, `cancel`, `retry`.
pub(crate) async fn control(
    c: &Client,
    action: &str,
    id: &str,
    reason: Option<String>,
) -> Result<(), Failure> {
    let body = match reason {
        Some(r) => json!({"reason": r}),
        None => json!({}),
    };
    let (_, out) = c
        .post(&format!("/v1/executions/{}/{action}", seg(id)), &body)
        .await?;
    if c.print_json(&out)? {
        return Ok(());
    }
    println!("{id}: {action} accepted");
    Ok(())
}

/// `sojourn cluster status`.
pub(crate) async fn cluster_status(c: &Client) -> Result<(), Failure> {
    let out = c.get("/cluster").await?;
    if c.print_json(&out)? {
        return Ok(());
    }
    let now = chrono::Utc::now().timestamp_millis();
    let nodes = out
        .get("nodes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let seen = n.get("last_seen_ms").and_then(Value::as_i64).unwrap_or(0);
            vec![
                cell(n.get("id")),
                cell(n.get("address")),
                cell(n.get("actors")),
                format!("{:.1}s ago", (now - seen).max(0) as f64 / 1000.0),
                if n.get("draining").and_then(Value::as_bool) == Some(true) {
                    "draining".into()
                } else {
                    "active".into()
                },
            ]
        })
        .collect();
    print_table(&["NODE", "ADDRESS", "ACTORS", "LAST SEEN", "STATE"], &rows);
    if out.get("shared").and_then(Value::as_bool) == Some(false) {
        println!("(one node, in-process leases: no Redis configured)");
    }
    Ok(())
}

/// `sojourn cluster drain NODE`.
pub(crate) async fn cluster_drain(c: &Client, node: &str, force: bool) -> Result<(), Failure> {
    let force = if force { "?force=true" } else { "" };
    let (_, out) = c
        .post(
            &format!("/cluster/nodes/{}/drain{force}", seg(node)),
            &json!({}),
        )
        .await?;
    if c.print_json(&out)? {
        return Ok(());
    }
    println!("{node}: drain requested (it passivates its executions; the others take over)");
    Ok(())
}

/// `sojourn profiles import FILE`: CSV (a header row with `subject`; the
/// columns email, phone, chat, timezone and locale are addresses and
/// settings, any other column an attribute, `attributes.` optional) or JSON
/// lines (each the body of `POST /v1/profiles/{subject}` with its
/// `subject`). Sent `batch` at a time to `/v1/profiles:batch`, read as it
/// goes (memory stays flat), with a progress bar. The first refused batch
/// stops the import, naming the file's line and field; what was sent
/// before it stays.
pub(crate) async fn import_profiles(
    c: &Client,
    path: &std::path::Path,
    replace: bool,
    batch: usize,
) -> Result<(), Failure> {
    let batch = batch.clamp(1, 1000);
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::Invalid(format!("{}: {e}", path.display())))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let csv = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {msg} ({elapsed}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if c.conn.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let reader = bar.wrap_read(file);
    let mut rows: Box<dyn Iterator<Item = Result<(usize, Value), Failure>>> = if csv {
        Box::new(csv_rows(reader)?)
    } else {
        Box::new(json_lines(reader))
    };
    let mut written = 0usize;
    loop {
        let mut profiles = Vec::with_capacity(batch);
        let mut lines = Vec::with_capacity(batch);
        for row in rows.by_ref().take(batch) {
            let (line, value) = row?;
            lines.push(line);
            profiles.push(value);
        }
        if profiles.is_empty() {
            break;
        }
        let body = serde_json::json!({"profiles": profiles, "replace": replace});
        match c.post("/v1/profiles:batch", &body).await {
            Ok((_, out)) => {
                written += out.get("written").and_then(Value::as_u64).unwrap_or(0) as usize;
                bar.set_message(format!("{written} profiles"));
            }
            Err(Failure::Invalid(text)) => {
                bar.abandon();
                // `profiles[3].email: …` → the file's line.
                let line = text
                    .split("profiles[")
                    .nth(1)
                    .and_then(|rest| rest.split(']').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| lines.get(n));
                let at = match line {
                    Some(l) => format!("{}:{l}: ", path.display()),
                    None => format!("{}: ", path.display()),
                };
                return Err(Failure::Invalid(format!(
                    "{at}{text}\n{written} profiles were written before it"
                )));
            }
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        }
    }
    bar.finish_with_message(format!("{written} profiles"));
    if c.conn.json {
        println!("{}", serde_json::json!({"written": written}));
    } else {
        eprintln!("imported {written} profiles from {}", path.display());
    }
    Ok(())
}

/// JSON lines: (line number, object), blank lines skipped.
fn json_lines(r: impl std::io::Read) -> impl Iterator<Item = Result<(usize, Value), Failure>> {
    use std::io::BufRead;
    std::io::BufReader::new(r)
        .lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(Failure::Invalid(format!("line {}: {e}", n + 1)))),
            };
            if line.trim().is_empty() {
                return None;
            }
            Some(match serde_json::from_str::<Value>(&line) {
                Ok(v @ Value::Object(_)) => Ok((n + 1, v)),
                Ok(_) => Err(Failure::Invalid(format!(
                    "line {}: not a JSON object",
                    n + 1
                ))),
                Err(e) => Err(Failure::Invalid(format!("line {}: not JSON: {e}", n + 1))),
            })
        })
}

/// CSV rows as profile updates: (line number, object).
fn csv_rows(
    r: impl std::io::Read,
) -> Result<impl Iterator<Item = Result<(usize, Value), Failure>>, Failure> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(r);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| Failure::Invalid(format!("the header row: {e}")))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').trim().to_owned())
        .collect();
    if !headers.iter().any(|h| h == "subject") {
        return Err(Failure::Invalid(
            "the header row has no \"subject\" column".into(),
        ));
    }
    Ok(reader.into_records().map(move |rec| {
        let rec = rec.map_err(|e| Failure::Invalid(format!("{e}")))?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let mut out = serde_json::Map::new();
        let mut attributes = serde_json::Map::new();
        for (h, v) in headers.iter().zip(rec.iter()) {
            if v.is_empty() {
                continue;
            }
            match h.as_str() {
                "subject" | "email" | "phone" | "chat" | "timezone" | "locale" => {
                    out.insert(h.clone(), Value::String(v.to_owned()));
                }
                other => {
                    let name = other.strip_prefix("attributes.").unwrap_or(other);
                    attributes.insert(name.to_owned(), csv_value(v));
                }
            }
        }
        if !attributes.is_empty() {
            out.insert("attributes".into(), Value::Object(attributes));
        }
        Ok((line, Value::Object(out)))
    }))
}

/// A CSV cell as JSON: a number or a boolean when it reads back as the
/// same text (`007`, a 20-digit id or `1e3` stay text), else text.
fn csv_value(v: &str) -> Value {
    match v {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = v.parse::<i64>()
        && i.to_string() == v
    {
        return Value::from(i);
    }
    if let Ok(f) = v.parse::<f64>()
        && f.is_finite()
        && f.to_string() == v
    {
        return Value::from(f);
    }
    Value::String(v.to_owned())
}

/// One line per definition: name, kind, version, state, title.
fn registry_line(d: &Value) -> String {
    let name = d["name"].as_str().unwrap_or("");
    let kind = d["definition"]["kind"].as_str().unwrap_or("");
    let version = match d["version"].as_i64() {
        Some(v) => format!("v{v}"),
        None => "built-in".into(),
    };
    let state = if d["enabled"].as_bool() == Some(false) {
        "disabled"
    } else {
        "enabled"
    };
    let title = d["definition"]["title"].as_str().unwrap_or("");
    format!("{name:<28} {kind:<8} {version:<9} {state:<9} {title}")
}

/// `sojourn registry ls [--kind K]`.
pub(crate) async fn registry_list(c: &Client, kind: Option<String>) -> Result<(), Failure> {
    let path = match &kind {
        Some(k) => format!("/v1/registry?kind={}", seg(k)),
        None => "/v1/registry".to_owned(),
    };
    let v = c.get(&path).await?;
    if c.print_json(&v)? {
        return Ok(());
    }
    println!(
        "{:<28} {:<8} {:<9} {:<9} TITLE",
        "NAME", "KIND", "VERSION", "STATE"
    );
    for d in v.as_array().into_iter().flatten() {
        println!("{}", registry_line(d));
    }
    Ok(())
}

/// `sojourn registry get NAME [--version N]`.
pub(crate) async fn registry_get(
    c: &Client,
    name: &str,
    version: Option<i32>,
) -> Result<(), Failure> {
    let path = match version {
        Some(v) => format!("/v1/registry/{}?version={v}", seg(name)),
        None => format!("/v1/registry/{}", seg(name)),
    };
    let v = c.get(&path).await?;
    if c.print_json(&v)? {
        return Ok(());
    }
    println!("{}", registry_line(&v));
    if let Some(versions) = v["versions"].as_array() {
        let list: Vec<String> = versions
            .iter()
            .filter_map(|x| x["version"].as_i64().map(|n| format!("v{n}")))
            .collect();
        println!("versions   {}", list.join(", "));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&v["definition"]).context("printing")?
    );
    Ok(())
}

/// `sojourn registry apply NAME -f FILE`.
pub(crate) async fn registry_apply(c: &Client, name: &str, file: &Path) -> Result<(), Failure> {
    let def = read_json(file)?;
    let (_, v) = c
        .call(
            Method::PUT,
            &format!("/v1/registry/{}", seg(name)),
            Some(&def),
            &[],
            false,
        )
        .await?
        .ok_or_else(|| Failure::Invalid(format!("{name}: not found")))?;
    if c.print_json(&v)? {
        return Ok(());
    }
    let version = v["version"].as_i64().unwrap_or(0);
    if v["new"].as_bool() == Some(true) {
        println!("{name}: version {version}");
    } else {
        println!("{name}: unchanged (version {version})");
    }
    Ok(())
}

/// `sojourn registry enable|disable NAME`.
pub(crate) async fn registry_switch(c: &Client, name: &str, action: &str) -> Result<(), Failure> {
    let (_, v) = c
        .post(
            &format!("/v1/registry/{}/{action}", seg(name)),
            &Value::Null,
        )
        .await?;
    if !c.print_json(&v)? {
        println!("{}", registry_line(&v));
    }
    Ok(())
}

/// `sojourn registry rm NAME`.
pub(crate) async fn registry_delete(c: &Client, name: &str) -> Result<(), Failure> {
    let (_, v) = c
        .call(
            Method::DELETE,
            &format!("/v1/registry/{}", seg(name)),
            None,
            &[],
            false,
        )
        .await?
        .ok_or_else(|| Failure::Invalid(format!("{name}: not found")))?;
    if !c.print_json(&v)? {
        println!("{name}: deleted");
    }
    Ok(())
}

/// `sojourn analytics export WORKFLOW [--from D] [--to D] [--version N]
/// [-o FILE]`: the rolled-up counts as CSV, copied as they arrive (never
/// held whole in memory).
pub(crate) async fn export_analytics(
    c: &Client,
    workflow: &str,
    query: Vec<(&str, Option<String>)>,
    out: Option<&Path>,
) -> Result<(), Failure> {
    use std::io::Write;
    let mut url = format!(
        "{}/v1/analytics/workflows/{}/export",
        c.conn.url.trim_end_matches('/'),
        seg(workflow)
    );
    let pairs: Vec<String> = query
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", seg(&v))))
        .collect();
    if !pairs.is_empty() {
        url = format!("{url}?{}", pairs.join("&"));
    }
    // A long export may take longer than the client's usual timeout.
    let mut req = c
        .http
        .get(&url)
        .timeout(std::time::Duration::from_secs(3600));
    if let Some(key) = c.conn.api_key.as_deref().filter(|k| !k.trim().is_empty()) {
        req = req.bearer_auth(key);
    }
    let mut resp = req.send().await.map_err(|e| {
        Failure::Runtime(anyhow::anyhow!(
            "cannot reach {} ({e}); is a node running? (sojourn dev, or set SOJOURN_URL)",
            c.conn.url
        ))
    })?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        let text = format!("GET {url}: {status}: {message}");
        return Err(if status.is_client_error() {
            Failure::Invalid(text)
        } else {
            Failure::Runtime(anyhow::anyhow!(text))
        });
    }
    // To a regular file: written beside it first (a name of this process's
    // own), synced and renamed when complete, so a cut answer never leaves a
    // file that looks whole. A device or a pipe (`-o /dev/stdout`) is
    // written as it is.
    let part = out
        .filter(|p| std::fs::metadata(p).map_or(true, |m| m.is_file()))
        .map(|p| {
            let mut name = p.as_os_str().to_owned();
            name.push(format!(".{}.part", std::process::id()));
            std::path::PathBuf::from(name)
        });
    let target = part.as_deref().or(out);
    let file = match target {
        Some(path) => Some(
            std::fs::File::create(path)
                .map_err(|e| Failure::Invalid(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    let mut sink: Box<dyn Write> = match &file {
        Some(f) => Box::new(std::io::BufWriter::new(f)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let copied: Result<(), Failure> = async {
        while let Some(chunk) = resp.chunk().await.context("reading the export")? {
            sink.write_all(&chunk).context("writing the export")?;
        }
        sink.flush().context("writing the export")?;
        Ok(())
    }
    .await;
    drop(sink);
    let copied = match (copied, &file, &part) {
        (Ok(()), Some(f), Some(_)) => f
            .sync_all()
            .context("writing the export")
            .map_err(Failure::from),
        (other, _, _) => other,
    };
    match (copied, part, out) {
        (Err(e), Some(part), _) => {
            let _ = std::fs::remove_file(part);
            Err(e)
        }
        (Err(e), None, _) => Err(e),
        (Ok(()), Some(part), Some(out)) => std::fs::rename(&part, out).map_err(|e| {
            let _ = std::fs::remove_file(&part);
            Failure::Runtime(anyhow::anyhow!("{}: {e}", out.display()))
        }),
        (Ok(()), _, _) => Ok(()),
    }
}
