//! Trigger instances (`api`, `schedule`, `event`) and their lifecycle:
//! init → active ⇄ paused → stopped → destroyed. An active `api` trigger
//! answers `POST /trigger/{path}` by starting its workflow with the request
//! body as input. (Schedule and event triggers fire in their own issue;
//! here they are created, validated and moved through the lifecycle.)

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sojourn_persistence::{NewTrigger, Store, TriggerRecord};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, IdempotencyKey, Path, Q, parse_json};
use crate::routes::executions::{StartExecution, start_in};
use crate::routes::valid_name;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    Api,
    Schedule,
    Event,
}

impl TriggerKind {
    fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Api => "api",
            TriggerKind::Schedule => "schedule",
            TriggerKind::Event => "event",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTrigger {
    pub kind: TriggerKind,
    /// For `api` triggers: the path under `/trigger/` that fires it
    /// (letters, digits, `-`, `_`, `.`, `/`), unique in the namespace.
    #[serde(default)]
    pub path: Option<String>,
    /// Kind-specific: `api` — `{"version"?}`; `schedule` — `{"cron",
    /// "timezone"?, "input"?}`; `event` — `{"event", "input"?}`.
    #[serde(default)]
    pub config: Option<Value>,
}

/// `api` trigger configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiConfig {
    /// Pin a version instead of the latest.
    #[serde(default)]
    version: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleConfig {
    cron: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventConfig {
    event: String,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TriggerOut {
    pub id: String,
    pub workflow_id: String,
    pub kind: String,
    pub path: Option<String>,
    pub config: Value,
    /// init, active, paused, stopped, destroyed.
    pub state: String,
    /// A schedule's next five fire times, in UTC (computed on its time
    /// zone's wall clock, across daylight-saving changes); while it is not
    /// yet active or paused, the times it would fire at. Empty for other
    /// kinds and for a stopped or destroyed schedule.
    pub next_fires: Vec<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How many fire times a schedule trigger shows.
const NEXT_FIRES: usize = 5;

/// A schedule trigger's next fire times after `now`.
fn next_fires(t: &TriggerRecord, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    if t.kind != TriggerKind::Schedule.as_str()
        || matches!(t.state.as_str(), "stopped" | "destroyed")
    {
        return Vec::new();
    }
    // Stored only after `validate` accepted it; a row that no longer reads
    // (edited by hand) shows none rather than failing the listing.
    let Ok(c) = serde_json::from_value::<ScheduleConfig>(t.config.clone()) else {
        return Vec::new();
    };
    let tz = match c
        .timezone
        .as_deref()
        .map(sojourn_runtime::time::parse_timezone)
    {
        None => chrono_tz::UTC,
        Some(Ok(tz)) => tz,
        Some(Err(_)) => return Vec::new(),
    };
    sojourn_runtime::schedule::CronSchedule::parse(&c.cron, tz)
        .map(|s| s.upcoming(now, NEXT_FIRES))
        .unwrap_or_default()
}

impl From<TriggerRecord> for TriggerOut {
    fn from(t: TriggerRecord) -> Self {
        let next_fires = next_fires(&t, Utc::now());
        TriggerOut {
            next_fires,
            id: t.id,
            workflow_id: t.workflow_id,
            kind: t.kind,
            path: t.path,
            config: t.config,
            state: t.state,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTriggers {
    /// A workflow key or id.
    #[serde(default)]
    pub workflow: Option<String>,
}

/// Parses a kind's config, naming the field at fault as `config.…`.
fn parse_config<T: serde::de::DeserializeOwned>(config: &Value) -> ApiResult<T> {
    let text = config.to_string();
    parse_json::<T>(text.as_bytes()).map_err(|mut e| {
        let field = match e.field.as_deref() {
            Some("body") | None => "config".to_owned(),
            Some(f) => format!("config.{f}"),
        };
        e.message = e
            .message
            .replacen(e.field.as_deref().unwrap_or("body"), &field, 1);
        e.field = Some(field);
        e
    })
}

fn check_input_object(field: &str, v: &Option<Value>) -> ApiResult<()> {
    match v {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(ApiError::invalid(field, "must be a JSON object")),
    }
}

/// Checks a trigger's path and config; returns an api trigger's pinned
/// version.
fn validate(kind: TriggerKind, path: &Option<String>, config: &Value) -> ApiResult<Option<i32>> {
    if !config.is_object() {
        return Err(ApiError::invalid("config", "must be a JSON object"));
    }
    match kind {
        TriggerKind::Api => {
            let path = path
                .as_deref()
                .ok_or_else(|| ApiError::invalid("path", "an api trigger needs a path"))?;
            valid_name("path", path)?;
            let c: ApiConfig = parse_config(config)?;
            if c.version.is_some_and(|v| v < 1) {
                return Err(ApiError::invalid("config.version", "must be 1 or more"));
            }
            return Ok(c.version);
        }
        TriggerKind::Schedule | TriggerKind::Event if path.is_some() => {
            return Err(ApiError::invalid("path", "only api triggers have a path"));
        }
        TriggerKind::Schedule => {
            let c: ScheduleConfig = parse_config(config)?;
            sojourn_runtime::time::parse_cron(&c.cron)
                .map_err(|e| ApiError::invalid("config.cron", e))?;
            if let Some(tz) = &c.timezone {
                sojourn_runtime::time::parse_timezone(tz)
                    .map_err(|e| ApiError::invalid("config.timezone", e))?;
            }
            check_input_object("config.input", &c.input)?;
        }
        TriggerKind::Event => {
            let c: EventConfig = parse_config(config)?;
            if c.event.is_empty() {
                return Err(ApiError::invalid("config.event", "must not be empty"));
            }
            check_input_object("config.input", &c.input)?;
        }
    }
    Ok(None)
}

pub(crate) async fn create<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(workflow): Path<String>,
    Body(req): Body<CreateTrigger>,
) -> ApiResult<Response> {
    let config = req.config.unwrap_or_else(|| Value::Object(Map::new()));
    let pinned = validate(req.kind, &req.path, &config)?;
    let wf = crate::routes::workflows::find(&app, &caller, &workflow).await?;
    if let Some(v) = pinned
        && app
            .engine
            .store()
            .get_version(&wf.id, Some(v))
            .await?
            .is_none()
    {
        return Err(ApiError::invalid(
            "config.version",
            format!("the workflow has no published version {v}"),
        ));
    }
    let record = app
        .engine
        .store()
        .create_trigger(NewTrigger {
            id: new_trigger_id()?,
            namespace: caller.namespace.clone(),
            workflow_id: wf.id,
            kind: req.kind.as_str().to_owned(),
            path: req.path,
            config,
            now: Utc::now(),
        })
        .await?;
    app.triggers.forget();
    Ok((StatusCode::CREATED, axum::Json(TriggerOut::from(record))).into_response())
}

fn new_trigger_id() -> ApiResult<String> {
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes).map_err(ApiError::internal)?;
    Ok(format!("trg_{}", hex::encode(bytes)))
}

pub(crate) async fn list<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<ListTriggers>,
) -> ApiResult<axum::Json<Vec<TriggerOut>>> {
    let workflow_id = match q.workflow {
        Some(w) => Some(crate::routes::workflows::find(&app, &caller, &w).await?.id),
        None => None,
    };
    let rows = app
        .engine
        .store()
        .list_triggers(&caller.namespace, workflow_id.as_deref())
        .await?;
    Ok(axum::Json(rows.into_iter().map(TriggerOut::from).collect()))
}

pub(crate) async fn get<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TriggerOut>> {
    let t = app
        .engine
        .store()
        .get_trigger(&caller.namespace, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("trigger", &id))?;
    Ok(axum::Json(t.into()))
}

async fn move_to<S: Store>(
    app: &AppState<S>,
    caller: &Caller,
    id: &str,
    from: &[&str],
    to: &str,
) -> ApiResult<axum::Json<TriggerOut>> {
    let moved = app
        .engine
        .store()
        .set_trigger_state(&caller.namespace, id, from, to, Utc::now())
        .await
        .map_err(|e| match e {
            sojourn_persistence::Error::Invalid(m) => ApiError::conflict(
                Some("state"),
                format!(
                    "state: {m}; it can become {to} only from {}",
                    from.join(" or ")
                ),
            ),
            other => other.into(),
        })?
        .ok_or_else(|| ApiError::not_found("trigger", id))?;
    app.triggers.forget();
    Ok(axum::Json(moved.into()))
}

pub(crate) async fn activate<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TriggerOut>> {
    move_to(&app, &caller, &id, &["init"], "active").await
}

pub(crate) async fn pause<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TriggerOut>> {
    move_to(&app, &caller, &id, &["active"], "paused").await
}

pub(crate) async fn resume<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TriggerOut>> {
    move_to(&app, &caller, &id, &["paused"], "active").await
}

pub(crate) async fn stop<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TriggerOut>> {
    move_to(&app, &caller, &id, &["init", "active", "paused"], "stopped").await
}

pub(crate) async fn destroy<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TriggerOut>> {
    move_to(&app, &caller, &id, &["stopped"], "destroyed").await
}

/// `POST /trigger/{path}`: fires an active `api` trigger.
pub(crate) async fn fire<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let body = body.map_err(crate::extract::body_rejection)?;
    let input: Value = parse_json(&body)?;
    if !input.is_object() {
        return Err(ApiError::invalid(
            "body",
            "must be a JSON object (the execution's input)",
        ));
    }
    let t = app
        .triggers
        .get(app.engine.store(), &caller.namespace, &path)
        .await?
        .ok_or_else(|| ApiError::not_found("trigger path", &path))?;
    if t.state != "active" {
        return Err(ApiError::conflict(
            Some("state"),
            format!(
                "state: trigger {} is {}; only an active trigger fires",
                t.id, t.state
            ),
        ));
    }
    // A stored configuration that does not read back is refused, never
    // replaced by a default (which would fire the latest version).
    let config: ApiConfig = serde_json::from_value(t.config.clone()).map_err(|e| {
        tracing::error!(trigger = %t.id, error = %e, "stored trigger configuration is invalid");
        ApiError {
            field: Some("config".into()),
            ..ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "invalid_trigger",
                format!(
                    "config: trigger {}'s stored configuration is invalid ({e}); destroy it and create it again",
                    t.id
                ),
            )
        }
    })?;
    start_in(
        &app,
        &caller,
        StartExecution {
            workflow: t.workflow_id.clone(),
            version: config.version,
            input: Some(input),
            subject: None,
            timezone: None,
        },
        key,
    )
    .await
}
