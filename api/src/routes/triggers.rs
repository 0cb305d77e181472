//! Trigger instances (`api`, `schedule`, `event`) and their lifecycle:
//! init → active ⇄ paused → stopped → destroyed. An active `api` trigger
//! answers `POST /trigger/{path}` by starting its workflow with the request
//! body as input; an active schedule is fired by every node's schedule
//! runner (`sojourn_actors::schedules`). Kinds, configurations and moves are
//! the typed model of `sojourn_runtime::triggers`.

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
use sojourn_runtime::triggers::{
    ApiTrigger, ConfigError, Move, TriggerConfig, TriggerKind, TriggerState,
};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, IdempotencyKey, Path, Q, parse_json};
use crate::routes::executions::{StartExecution, start_in};
use crate::routes::valid_name;
use crate::state::AppState;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTrigger {
    pub kind: TriggerKind,
    /// For `api` triggers: the path under `/trigger/` that fires it
    /// (letters, digits, `-`, `_`, `.`, `/`), unique in the namespace.
    #[serde(default)]
    pub path: Option<String>,
    /// Kind-specific: `api` — `{"version"?}`; `schedule` — `{"cron",
    /// "timezone"?, "input"?, "misfire"? (once, all, skip), "grace_seconds"?}`;
    /// `event` — `{"event", "condition"?, "input"?, "topic"? (Kafka),
    /// "action"? (start, deliver), "key"?, "subject"?, "idempotency_key"?,
    /// "from"? (latest, earliest)}`; expressions are CEL over `event`.
    #[serde(default)]
    pub config: Option<Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TriggerOut {
    pub id: String,
    pub workflow_id: String,
    pub kind: TriggerKind,
    pub path: Option<String>,
    pub config: Value,
    pub state: TriggerState,
    /// A schedule's next five fire times, in UTC (computed on its time
    /// zone's wall clock, across daylight-saving changes); while it is not
    /// yet active or paused, the times it would fire at. Empty for other
    /// kinds and for a stopped or destroyed schedule.
    pub next_fires: Vec<DateTime<Utc>>,
    /// An active schedule's next fire as the cluster holds it.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// A schedule's latest fire.
    pub last_fired_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How many fire times a schedule trigger shows.
const NEXT_FIRES: usize = 5;

impl From<TriggerRecord> for TriggerOut {
    fn from(t: TriggerRecord) -> Self {
        // A row that no longer reads (edited by hand) shows no fire times
        // rather than failing the listing.
        let next_fires = match (t.state, t.typed_config()) {
            (TriggerState::Stopped | TriggerState::Destroyed, _) | (_, Err(_)) => Vec::new(),
            (_, Ok(config)) => config.upcoming(Utc::now(), NEXT_FIRES),
        };
        TriggerOut {
            next_fires,
            id: t.id,
            workflow_id: t.workflow_id,
            kind: t.kind,
            path: t.path,
            config: t.config,
            state: t.state,
            next_fire_at: t.next_fire_at,
            last_fired_at: t.last_fired_at,
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

/// Checks a trigger's path and config.
fn validate(kind: TriggerKind, path: &Option<String>, config: &Value) -> ApiResult<TriggerConfig> {
    match (kind, path) {
        (TriggerKind::Api, None) => {
            return Err(ApiError::invalid("path", "an api trigger needs a path"));
        }
        (TriggerKind::Api, Some(path)) => valid_name("path", path)?,
        (_, Some(_)) => return Err(ApiError::invalid("path", "only api triggers have a path")),
        (_, None) => {}
    }
    TriggerConfig::parse(kind, config).map_err(|e| {
        let field = if e.field.is_empty() {
            "config".to_owned()
        } else {
            format!("config.{}", e.field)
        };
        ApiError::invalid(&field, e.message)
    })
}

pub(crate) async fn create<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(workflow): Path<String>,
    Body(req): Body<CreateTrigger>,
) -> ApiResult<Response> {
    let config = req.config.unwrap_or_else(|| Value::Object(Map::new()));
    let config = validate(req.kind, &req.path, &config)?;
    let wf = crate::routes::workflows::find(&app, &caller, &workflow).await?;
    // A trigger kind the namespace disabled in its registry makes no new
    // instances (the ones made before stay, to be paused or stopped).
    let definition = format!("trigger.{}", req.kind.as_str());
    if app
        .engine
        .store()
        .disabled_definitions(Some(&caller.namespace))
        .await?
        .iter()
        .any(|(_, name)| *name == definition)
    {
        return Err(ApiError::conflict(
            Some("kind"),
            format!(
                "kind: {definition} is disabled in the registry; enable it to make such triggers"
            ),
        ));
    }
    if let TriggerConfig::Api(ApiTrigger { version: Some(v) }) = config
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
    mv: Move,
) -> ApiResult<axum::Json<TriggerOut>> {
    let store = app.engine.store();
    let t = store
        .get_trigger(&caller.namespace, id)
        .await?
        .ok_or_else(|| ApiError::not_found("trigger", id))?;
    let now = Utc::now();
    // A schedule becoming active fires from its next instant after now
    // (what it missed while paused is not made up).
    let next_fire_at = match t.typed_config() {
        Ok(config) => mv.next_fire(&config, now),
        Err(_) if mv.to() != TriggerState::Active => None,
        Err(e) => return Err(invalid_stored(&t.id, &e)),
    };
    let moved = store
        .set_trigger_state(&caller.namespace, id, mv, next_fire_at, now)
        .await
        .map_err(|e| match e {
            sojourn_persistence::Error::Invalid(m) => {
                let from: Vec<&str> = mv.from().iter().map(|s| s.as_str()).collect();
                ApiError::conflict(
                    Some("state"),
                    format!(
                        "state: {m}; it can become {} only from {}",
                        mv.to(),
                        from.join(" or ")
                    ),
                )
            }
            other => other.into(),
        })?
        .ok_or_else(|| ApiError::not_found("trigger", id))?;
    // A segment trigger made active reads the segment's changes from now
    // on (what happened while it was paused starts nothing).
    if mv.to() == TriggerState::Active
        && let Ok(sojourn_runtime::triggers::TriggerConfig::Segment(c)) = moved.typed_config()
    {
        store
            .open_segment_cursor(&moved.id, &moved.namespace, &c.segment, true)
            .await?;
    }
    app.triggers.forget();
    Ok(axum::Json(moved.into()))
}

/// A stored configuration that does not read back (edited by hand): refused,
/// never replaced by a default.
fn invalid_stored(id: &str, e: &ConfigError) -> ApiError {
    tracing::error!(trigger = %id, error = %e, "stored trigger configuration is invalid");
    ApiError {
        field: Some("config".into()),
        ..ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "invalid_trigger",
            format!(
                "config: trigger {id}'s stored configuration is invalid ({e}); destroy it and create it again"
            ),
        )
    }
}

pub(crate) async fn activate<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TriggerOut>> {
    move_to(&app, &caller, &id, Move::Activate).await
}

pub(crate) async fn pause<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TriggerOut>> {
    move_to(&app, &caller, &id, Move::Pause).await
}

pub(crate) async fn resume<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TriggerOut>> {
    move_to(&app, &caller, &id, Move::Resume).await
}

pub(crate) async fn stop<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TriggerOut>> {
    move_to(&app, &caller, &id, Move::Stop).await
}

pub(crate) async fn destroy<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TriggerOut>> {
    move_to(&app, &caller, &id, Move::Destroy).await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDeadLetters {
    /// How many (1 to 500; 100 by default).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

/// A message an event trigger could not use.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeadLetterOut {
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// The value as text (bytes that are not UTF-8 replaced), at most 16 KiB.
    pub payload: Option<String>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

pub(crate) async fn dead_letters<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Q(q): Q<ListDeadLetters>,
) -> ApiResult<axum::Json<Vec<DeadLetterOut>>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 500"));
    }
    let store = app.engine.store();
    store
        .get_trigger(&caller.namespace, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("trigger", &id))?;
    let rows = store.dead_letters(&caller.namespace, &id, limit).await?;
    Ok(axum::Json(
        rows.into_iter()
            .map(|d| DeadLetterOut {
                id: d.id,
                topic: d.topic,
                partition: d.partition,
                offset: d.offset,
                key: d.key,
                payload: d.payload,
                reason: d.reason,
                created_at: d.created_at,
            })
            .collect(),
    ))
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
    if t.state != TriggerState::Active {
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
    let version = match t.typed_config() {
        Ok(TriggerConfig::Api(c)) => c.version,
        Ok(other) => {
            let e = ConfigError {
                field: String::new(),
                message: format!("a {} configuration on an api trigger", other.kind()),
            };
            return Err(invalid_stored(&t.id, &e));
        }
        Err(e) => return Err(invalid_stored(&t.id, &e)),
    };
    start_in(
        &app,
        &caller,
        StartExecution {
            workflow: t.workflow_id.clone(),
            version,
            input: Some(input),
            subject: None,
            timezone: None,
        },
        key,
    )
    .await
}

/// How far an event trigger is behind on its Kafka topic.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LagOut {
    pub topic: String,
    /// Whether the node reads topics from Kafka (`sojourn dev` without
    /// brokers uses an in-process queue, which keeps no offsets: no
    /// figures then).
    pub kafka: bool,
    /// Whether the topic exists (a trigger may be made before its topic).
    pub topic_exists: bool,
    /// Per partition, in order.
    pub partitions: Vec<PartitionLagOut>,
    /// Messages not consumed yet, over the partitions whose lag is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PartitionLagOut {
    pub partition: i32,
    /// The trigger's committed offset (the next message it reads); absent
    /// before its first commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed: Option<i64>,
    /// The partition's end offset.
    pub end: i64,
    /// `end − committed`; absent before the trigger's first commit (where
    /// it starts reading depends on its `from`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}

pub(crate) async fn lag<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<LagOut>> {
    let record = app
        .engine
        .store()
        .get_trigger(&caller.namespace, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("trigger", &id))?;
    let topic = match (
        record.kind,
        record.config.get("topic").and_then(Value::as_str),
    ) {
        (TriggerKind::Event, Some(topic)) => topic.to_owned(),
        _ => {
            return Err(ApiError::conflict(
                Some("trigger"),
                format!("trigger: {id:?} is not an event trigger that reads a topic"),
            ));
        }
    };
    let partitions = match app.engine.trigger_lag(&record.id, &topic).await {
        Ok(ps) => ps,
        Err(sojourn_actors::bus::LagError::NoTopic) => {
            return Ok(axum::Json(LagOut {
                topic,
                kafka: true,
                topic_exists: false,
                partitions: Vec::new(),
                total: None,
            }));
        }
        Err(sojourn_actors::bus::LagError::Unavailable(detail)) => {
            // The detail (broker addresses) is for the log, as /readyz does.
            tracing::warn!(trigger = %record.id, %topic, error = %detail, "reading a trigger's lag");
            return Err(ApiError::unavailable("Kafka did not answer; try again"));
        }
    };
    Ok(axum::Json(match partitions {
        None => LagOut {
            topic,
            kafka: false,
            topic_exists: true,
            partitions: Vec::new(),
            total: None,
        },
        Some(ps) => LagOut {
            topic,
            kafka: true,
            topic_exists: true,
            total: ps.iter().filter_map(|p| p.lag).reduce(|a, b| a + b),
            partitions: ps
                .into_iter()
                .map(|p| PartitionLagOut {
                    partition: p.partition,
                    committed: p.committed,
                    end: p.end,
                    lag: p.lag,
                })
                .collect(),
        },
    }))
}
