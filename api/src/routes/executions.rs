//! Executions: start (idempotent), inspect, list, journal, node
//! executions, direct events, and operator controls. A start and a read
//! may wait for the execution to finish (`?wait=30s`, attach).

use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sojourn_actors::{MAX_WAIT, StartRequest};
use sojourn_persistence::{ExecutionQuery, ExecutionRecord, ExecutionSummary, Store};
use sojourn_runtime::{EventInput, ExecutionId, Input, Status, check_input};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, IdempotencyKey, Path, Q};
use crate::routes::{Page, limit_of};
use crate::state::AppState;

/// An execution to start.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartExecution {
    /// The workflow's key or id.
    #[schemars(length(min = 1))]
    pub workflow: String,
    /// A published version; the latest when absent.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub version: Option<i32>,
    /// The execution's input (a JSON object); `{}` when absent.
    #[serde(default, deserialize_with = "crate::extract::optional_json_object")]
    #[schemars(schema_with = "crate::docs::optional_json_object")]
    pub input: Option<Value>,
    /// The subject (e.g. a user id); otherwise the workflow's `subject`
    /// expression decides.
    #[serde(default)]
    #[schemars(length(min = 1, max = 512))]
    pub subject: Option<String>,
    /// An IANA time zone for quiet hours and time-of-day delays.
    #[serde(default)]
    #[schemars(schema_with = "crate::docs::optional_time_zone")]
    pub timezone: Option<String>,
}

/// The execution started (201), or found under its idempotency key (200).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Started {
    pub id: String,
    /// `false`: this `Idempotency-Key` was used before; this is its
    /// execution.
    pub new: bool,
}

/// How long to wait for the execution to finish (`?wait=`).
#[derive(Debug, Deserialize, JsonSchema)]
pub struct WaitQuery {
    /// Answer when the execution has finished (completed, failed or
    /// cancelled: 200 with its state) or when this much time has passed (202
    /// with its state then): a whole number of `ms`, `s` or `m`, at most 60s
    /// (`500ms`, `30s`, `1m`). `0s` answers at once.
    #[serde(default)]
    #[schemars(regex(
        pattern = r"^((0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|60000)ms|(0|[1-9]|[1-5][0-9]|60)s|[01]m)$"
    ))]
    pub wait: Option<String>,
}

/// Parses `wait` (as its pattern in the OpenAPI document states it): a
/// whole number without leading zeros and a unit (`ms`, `s`, `m`), read by
/// the runtime's duration parser, at most [`MAX_WAIT`].
pub(crate) fn parse_wait(text: Option<&str>) -> ApiResult<Option<Duration>> {
    let Some(text) = text else {
        return Ok(None);
    };
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let shaped = !number.is_empty()
        && (number == "0" || !number.starts_with('0'))
        && matches!(unit, "ms" | "s" | "m");
    let not_a_duration = || {
        ApiError::invalid(
            "wait",
            format!("{text:?} is not a duration like 500ms, 30s or 1m"),
        )
    };
    let too_long = || {
        ApiError::invalid(
            "wait",
            format!(
                "{text} is longer than the longest wait, {}s",
                MAX_WAIT.as_secs()
            ),
        )
    };
    if !shaped {
        return Err(not_a_duration());
    }
    // Seven digits are more than 60 s in any unit.
    if number.len() > 6 {
        return Err(too_long());
    }
    let wait = sojourn_runtime::time::parse_duration(text)
        .ok()
        .and_then(|d| d.to_std().ok())
        .ok_or_else(not_a_duration)?;
    if wait > MAX_WAIT {
        return Err(too_long());
    }
    Ok(Some(wait))
}

/// What a start answers: without `wait`, the execution started (201) or
/// found under its idempotency key (200); with `wait`, its state (200
/// finished, 202 not yet), as `GET /v1/executions/{execution}` shows it.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StartAnswer {
    Started(Started),
    State(Box<ExecutionOut>),
}

/// An execution, in a listing.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExecutionItem {
    pub id: String,
    pub workflow_id: String,
    pub version: i32,
    pub status: String,
    pub subject: Option<String>,
    pub current_node: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<ExecutionSummary> for ExecutionItem {
    fn from(e: ExecutionSummary) -> Self {
        ExecutionItem {
            id: e.id.to_string(),
            workflow_id: e.workflow_id,
            version: e.version,
            status: e.status.as_str().to_owned(),
            subject: e.subject,
            current_node: e.current_node,
            created_at: e.created_at,
            updated_at: e.updated_at,
            finished_at: e.finished_at,
        }
    }
}

/// One execution, whole.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExecutionOut {
    pub id: String,
    pub workflow_id: String,
    /// The version the execution is pinned to.
    pub version: i32,
    pub status: String,
    pub subject: Option<String>,
    pub current_node: Option<String>,
    pub timezone: String,
    pub input: Value,
    /// Variables assigned by function nodes.
    pub vars: Map<String, Value>,
    /// Per node: its output or error.
    pub nodes: Value,
    /// What it waits for (a timer, an event, an action's result).
    pub wait: Option<Value>,
    pub pause: Option<Value>,
    pub error: Option<Value>,
    pub outcome: Option<String>,
    /// The node holding its live actor; absent when it is passivated.
    pub lease_holder: Option<String>,
    pub lease_epoch: i64,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListExecutions {
    /// A workflow key or id.
    #[serde(default)]
    pub workflow: Option<String>,
    /// pending, running, waiting, paused, completed, failed, cancelled.
    #[serde(default)]
    #[schemars(extend("enum" = ["pending", "running", "waiting", "paused", "completed", "failed", "cancelled"]))]
    pub status: Option<String>,
    /// The correlation key (the execution's subject).
    #[serde(default)]
    pub subject: Option<String>,
    /// Created at or after (RFC 3339).
    #[serde(default)]
    pub created_after: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    #[serde(default)]
    pub created_before: Option<DateTime<Utc>>,
    #[serde(default)]
    pub cursor: Option<String>,
    /// 1 to 500 (default 50).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JournalQuery {
    /// The `next_cursor` of the previous page (a journal position).
    #[serde(default)]
    pub cursor: Option<i64>,
    /// 1 to 500 (default 50).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

/// A journal entry: an input or a transition.
#[derive(Debug, Serialize, JsonSchema)]
pub struct JournalItem {
    /// Position in the journal (cursor for the next page).
    pub position: i64,
    /// The snapshot sequence of the step that wrote it.
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// The entry's type (`input_received`, `node_entered`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// One line, for humans.
    pub text: String,
    /// The whole entry.
    pub entry: Value,
}

/// A page of the journal, oldest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct JournalPage {
    pub items: Vec<JournalItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}

/// One attempt of one action node.
#[derive(Debug, Serialize, JsonSchema)]
pub struct NodeExecutionOut {
    pub node_id: String,
    pub attempt: i32,
    pub action: String,
    pub status: String,
    /// How many times a worker began sending it (more than 1: a send may
    /// have been repeated after a crash, with the same idempotency key).
    /// A channel message (`email.send`, `sms.send`, `push.send`,
    /// `chat.send`) counts its publish to the channel's workers too: 2 is
    /// one send, more may be a repeat.
    pub sends: i32,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An event sent to one execution.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectEvent {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default)]
    pub payload: Option<Value>,
}

/// An optional reason (pause, cancel).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    #[serde(default)]
    pub reason: Option<String>,
}

/// The input was accepted and will be applied in order.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Accepted {
    pub id: String,
    pub accepted: bool,
    /// The input's kind (`pause`, `event`, …).
    pub input: String,
}

pub(crate) fn parse_status(text: &str) -> ApiResult<Status> {
    serde_json::from_value(Value::String(text.to_owned())).map_err(|_| {
        ApiError::invalid(
            "status",
            format!(
                "{text:?} is not a status (pending, running, waiting, paused, completed, failed, cancelled)"
            ),
        )
    })
}

pub(crate) async fn start<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<WaitQuery>,
    IdempotencyKey(key): IdempotencyKey,
    Body(req): Body<StartExecution>,
) -> ApiResult<Response> {
    let began = Instant::now();
    let Some(wait) = parse_wait(q.wait.as_deref())? else {
        return start_in(&app, &caller, req, key).await;
    };
    // A replay under the same key waits the same way.
    let started = start_execution(&app, &caller, req, key).await?;
    let left = wait.saturating_sub(began.elapsed());
    let record = app
        .engine
        .wait_finished(&started.id, left)
        .await?
        .ok_or_else(|| ApiError::not_found("execution", started.id.as_str()))?;
    Ok(state_answer(&app, record).await)
}

/// 200 with a finished execution's state, 202 with an unfinished one's.
async fn state_answer<S: Store>(app: &AppState<S>, record: ExecutionRecord) -> Response {
    let status = if record.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let out = execution_out(app, record).await;
    (status, axum::Json(StartAnswer::State(Box::new(out)))).into_response()
}

/// The longest subject (correlation key) accepted, in characters (at most
/// 2 KiB of UTF-8: well under what a database index takes). Characters,
/// not bytes, so that the OpenAPI document can state it (`maxLength`).
const MAX_SUBJECT_CHARS: usize = 512;

pub(crate) async fn start_in<S: Store>(
    app: &AppState<S>,
    caller: &Caller,
    req: StartExecution,
    idempotency_key: Option<String>,
) -> ApiResult<Response> {
    let started = start_execution(app, caller, req, idempotency_key).await?;
    let status = if started.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(StartAnswer::Started(Started {
            id: started.id.to_string(),
            new: started.new,
        })),
    )
        .into_response())
}

/// Checks the request and starts the execution (or finds it under its
/// idempotency key).
async fn start_execution<S: Store>(
    app: &AppState<S>,
    caller: &Caller,
    req: StartExecution,
    idempotency_key: Option<String>,
) -> ApiResult<sojourn_actors::Started> {
    if req.workflow.is_empty() {
        return Err(ApiError::invalid("workflow", "must not be empty"));
    }
    let input = match req.input {
        None => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(ApiError::invalid("input", "must be a JSON object")),
    };
    if let Some(v) = req.version
        && v < 1
    {
        return Err(ApiError::invalid("version", "must be 1 or more"));
    }
    if let Some(s) = &req.subject
        && (s.is_empty() || s.chars().count() > MAX_SUBJECT_CHARS)
    {
        return Err(ApiError::invalid(
            "subject",
            format!("must be 1 to {MAX_SUBJECT_CHARS} characters"),
        ));
    }
    Ok(app
        .engine
        .start_execution(StartRequest {
            namespace: Some(caller.namespace.clone()),
            workflow: req.workflow,
            version: req.version,
            input,
            subject: req.subject,
            timezone: req.timezone,
            idempotency_key,
        })
        .await?)
}

/// The execution, if it belongs to the caller's namespace.
async fn find<S: Store>(
    app: &AppState<S>,
    caller: &Caller,
    id: &str,
) -> ApiResult<ExecutionRecord> {
    let record = app
        .engine
        .store()
        .load_execution(&ExecutionId::new(id.to_owned()))
        .await?;
    match record {
        Some(r) if r.namespace == caller.namespace => Ok(r),
        _ => Err(ApiError::not_found("execution", id)),
    }
}

pub(crate) async fn get<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Q(q): Q<WaitQuery>,
) -> ApiResult<Response> {
    let began = Instant::now();
    let wait = parse_wait(q.wait.as_deref())?;
    let r = find(&app, &caller, &id).await?;
    let Some(wait) = wait else {
        return Ok(axum::Json(execution_out(&app, r).await).into_response());
    };
    if r.status.is_terminal() {
        return Ok(state_answer(&app, r).await);
    }
    let record = app
        .engine
        .wait_finished(&r.id, wait.saturating_sub(began.elapsed()))
        .await?
        .ok_or_else(|| ApiError::not_found("execution", &id))?;
    Ok(state_answer(&app, record).await)
}

/// An execution's state, as the API shows it.
async fn execution_out<S: Store>(app: &AppState<S>, r: ExecutionRecord) -> ExecutionOut {
    let holder = app.engine.lease_holder(&r.id).await;
    let s = r.snapshot;
    ExecutionOut {
        id: r.id.to_string(),
        workflow_id: r.workflow_id,
        version: r.version,
        status: r.status.as_str().to_owned(),
        subject: r.subject,
        current_node: s.current.as_ref().map(ToString::to_string),
        timezone: s.timezone.name().to_owned(),
        input: s.input,
        vars: s.vars,
        nodes: serde_json::to_value(&s.nodes).unwrap_or(Value::Null),
        wait: s.wait.as_ref().and_then(|w| serde_json::to_value(w).ok()),
        pause: s.pause.as_ref().and_then(|p| serde_json::to_value(p).ok()),
        error: s.error.as_ref().and_then(|e| serde_json::to_value(e).ok()),
        outcome: s.outcome,
        lease_holder: holder,
        lease_epoch: r.lease_epoch.0,
        idempotency_key: r.idempotency_key,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

pub(crate) async fn list<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<ListExecutions>,
) -> ApiResult<axum::Json<Page<ExecutionItem>>> {
    let limit = limit_of(q.limit)?;
    let status = q.status.as_deref().map(parse_status).transpose()?;
    let workflow_id = match q.workflow {
        Some(w) => Some(
            crate::routes::workflows::find(&app, &caller, &w)
                .await
                .map_err(|e| {
                    if e.status == StatusCode::NOT_FOUND {
                        ApiError {
                            field: Some("workflow".into()),
                            ..e
                        }
                    } else {
                        e
                    }
                })?
                .id,
        ),
        None => None,
    };
    let rows = app
        .engine
        .store()
        .list_executions(&ExecutionQuery {
            namespace: caller.namespace.clone(),
            workflow_id,
            status,
            subject: q.subject,
            created_after: q.created_after,
            created_before: q.created_before,
            before_id: q.cursor,
            limit: limit + 1,
        })
        .await?;
    Ok(axum::Json(Page::of(
        rows,
        limit,
        |r| r.id.to_string(),
        ExecutionItem::from,
    )))
}

pub(crate) async fn journal<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Q(q): Q<JournalQuery>,
) -> ApiResult<axum::Json<JournalPage>> {
    let limit = limit_of(q.limit)?;
    let r = find(&app, &caller, &id).await?;
    let mut rows = app
        .engine
        .store()
        .journal(&r.id, q.cursor.unwrap_or(0), limit + 1)
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(|row| JournalItem {
            position: row.id,
            seq: row.entry.seq,
            at: row.entry.at,
            kind: row.entry.event.kind().to_owned(),
            text: row.entry.event.to_string(),
            entry: serde_json::to_value(&row.entry).unwrap_or(Value::Null),
        })
        .collect();
    Ok(axum::Json(JournalPage { items, next_cursor }))
}

pub(crate) async fn nodes<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Vec<NodeExecutionOut>>> {
    let r = find(&app, &caller, &id).await?;
    let rows = app.engine.store().node_executions(&r.id).await?;
    Ok(axum::Json(
        rows.into_iter()
            .map(|n| NodeExecutionOut {
                node_id: n.node_id,
                attempt: n.attempt,
                action: n.action,
                status: n.status,
                sends: n.sends,
                input: n.input,
                output: n.output,
                error: n.error,
                started_at: n.started_at,
                finished_at: n.finished_at,
            })
            .collect(),
    ))
}

/// Checks the input against the execution's state (a 409 now rather than
/// a refusal later) and delivers it durably.
async fn send<S: Store>(
    app: &AppState<S>,
    caller: &Caller,
    id: &str,
    input: Input,
) -> ApiResult<Response> {
    let r = find(app, caller, id).await?;
    // A pending execution starts before anything else reaches it.
    if r.snapshot.status != Status::Pending
        && let Err(e) = check_input(&r.snapshot, &input)
    {
        return Err(ApiError::conflict(None, format!("{e}")));
    }
    let kind = input.kind().to_owned();
    app.engine.send_input(&r.id, input).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Accepted {
            id: r.id.to_string(),
            accepted: true,
            input: kind,
        }),
    )
        .into_response())
}

pub(crate) async fn event<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(req): Body<DirectEvent>,
) -> ApiResult<Response> {
    if req.name.is_empty() {
        return Err(ApiError::invalid("name", "must not be empty"));
    }
    let input = Input::Event(EventInput {
        name: req.name,
        key: None,
        payload: req.payload.unwrap_or(Value::Null),
    });
    send(&app, &caller, &id, input).await
}

pub(crate) async fn pause<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(req): Body<Reason>,
) -> ApiResult<Response> {
    send(&app, &caller, &id, Input::Pause { reason: req.reason }).await
}

pub(crate) async fn resume<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    send(&app, &caller, &id, Input::Resume).await
}

pub(crate) async fn cancel<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(req): Body<Reason>,
) -> ApiResult<Response> {
    send(&app, &caller, &id, Input::Cancel { reason: req.reason }).await
}

pub(crate) async fn retry<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    send(&app, &caller, &id, Input::Retry).await
}

/// Which finished executions to count.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CountsQuery {
    /// Count executions that finished at or after this instant (RFC 3339;
    /// default: 24 hours ago). The console passes the viewer's midnight.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
}

/// How many executions are in each status: every unfinished one, and those
/// that finished since `since`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CountsOut {
    pub since: DateTime<Utc>,
    pub pending: i64,
    /// Work in flight (an action dispatched).
    pub running: i64,
    /// Asleep on a delay or an event (passivated: no memory held).
    pub waiting: i64,
    pub paused: i64,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
}

pub(crate) async fn counts<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<CountsQuery>,
) -> ApiResult<axum::Json<CountsOut>> {
    let since = q
        .since
        .unwrap_or_else(|| Utc::now() - chrono::Duration::hours(24));
    let rows = app
        .engine
        .store()
        .execution_counts(&caller.namespace, since)
        .await?;
    let mut out = CountsOut {
        since,
        pending: 0,
        running: 0,
        waiting: 0,
        paused: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
    };
    for (status, n) in rows {
        let slot = match status.as_str() {
            "pending" => &mut out.pending,
            "running" => &mut out.running,
            "waiting" => &mut out.waiting,
            "paused" => &mut out.paused,
            "completed" => &mut out.completed,
            "failed" => &mut out.failed,
            "cancelled" => &mut out.cancelled,
            _ => continue,
        };
        *slot += n;
    }
    Ok(axum::Json(out))
}
