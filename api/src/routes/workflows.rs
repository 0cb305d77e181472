//! Workflows: drafts, validation, immutable published versions, archive.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sojourn_persistence::{NewWorkflow, Store, VersionSummary, WorkflowQuery, WorkflowRecord, ids};
use sojourn_runtime::{CompiledWorkflow, Registry, ValidationError, Workflow};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path, Q, parse_path_number};
use crate::routes::{Page, limit_of, valid_key};
use crate::state::AppState;

/// A workflow to create.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkflow {
    /// Unique in the namespace; letters, digits, `-`, `_`, `.`.
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    /// The workflow document (nodes and edges): the draft.
    #[serde(deserialize_with = "crate::extract::json_object")]
    #[schemars(schema_with = "crate::docs::json_object")]
    pub definition: Value,
    /// Publish the draft as version 1 at once (it must be valid).
    #[serde(default)]
    pub publish: bool,
}

/// A new draft.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWorkflow {
    #[serde(deserialize_with = "crate::extract::json_object")]
    #[schemars(schema_with = "crate::docs::json_object")]
    pub definition: Value,
    #[serde(default)]
    pub name: Option<String>,
    /// Publish the new draft at once (it must be valid).
    #[serde(default)]
    pub publish: bool,
}

/// A workflow and its draft.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowOut {
    pub id: String,
    pub key: String,
    pub name: Option<String>,
    pub namespace: String,
    pub draft: Value,
    /// The highest published version, if any.
    pub latest_version: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    /// The version a `publish: true` request published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<VersionOut>,
}

impl From<WorkflowRecord> for WorkflowOut {
    fn from(r: WorkflowRecord) -> Self {
        WorkflowOut {
            id: r.id,
            key: r.key,
            name: r.name,
            namespace: r.namespace,
            draft: r.draft,
            latest_version: r.latest_version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            archived_at: r.archived_at,
            published: None,
        }
    }
}

/// A published version.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VersionOut {
    pub workflow_id: String,
    pub version: i32,
    pub published_at: DateTime<Utc>,
    /// `false`: the draft equals the latest version, which is returned
    /// instead of publishing a copy.
    pub new: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<Value>,
    /// The registry versions of the custom actions it uses: it runs with
    /// those, whatever is edited later.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub registry: std::collections::BTreeMap<String, i32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct VersionItem {
    pub version: i32,
    pub published_at: DateTime<Utc>,
}

impl From<VersionSummary> for VersionItem {
    fn from(v: VersionSummary) -> Self {
        VersionItem {
            version: v.version,
            published_at: v.published_at,
        }
    }
}

/// The result of validating a document.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ValidationOut {
    pub valid: bool,
    /// Every problem, each naming its node and field.
    pub errors: Vec<Problem>,
    /// A valid document as publishing would store it (defaults written
    /// out): what the console compares with the latest version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::docs::optional_json_object")]
    pub normalized: Option<Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<usize>,
    pub field: String,
    pub message: String,
}

impl From<ValidationError> for Problem {
    fn from(e: ValidationError) -> Self {
        Problem {
            node: e.node.map(|n| n.to_string()),
            edge: e.edge,
            field: e.field,
            message: e.message,
        }
    }
}

/// A document to validate instead of the stored draft.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    #[serde(default)]
    pub definition: Option<Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListWorkflows {
    /// Include archived workflows.
    #[serde(default)]
    pub include_archived: bool,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// 1 to 500 (default 50).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

/// Every problem with a document, or the workflow it describes (and its
/// compiled form, for a caller that runs it): the document itself, then
/// its channel actions against this node's providers (a channel with none,
/// a `provider` not configured).
pub(crate) fn check_definition(
    channels: &sojourn_actors::channels::Channels,
    registry: &Registry,
    definition: &Value,
) -> Result<(Workflow, CompiledWorkflow), Vec<ValidationError>> {
    let wf = Workflow::from_value(definition.clone())?;
    let compiled = CompiledWorkflow::compile(&wf, registry)?;
    let errors = channels.check_workflow(&wf);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((wf, compiled))
}

fn invalid_workflow(errors: Vec<ValidationError>) -> ApiError {
    let first = errors
        .first()
        .map(|e| {
            let field = match &e.node {
                Some(n) if e.field.is_empty() => format!("definition.nodes[{n}]"),
                Some(n) => format!("definition.nodes[{n}].{}", e.field),
                None if e.field.is_empty() => "definition".to_owned(),
                None => format!("definition.{}", e.field),
            };
            (field, e.message.clone())
        })
        .unwrap_or_else(|| ("definition".into(), "invalid".into()));
    let count = errors.len();
    let problems: Vec<Problem> = errors.into_iter().map(Problem::from).collect();
    ApiError {
        field: Some(first.0.clone()),
        details: serde_json::to_value(problems).ok(),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
            format!(
                "{}: {} ({count} problem(s) in all; see details)",
                first.0, first.1
            ),
        )
    }
}

fn check_document(field: &str, v: &Value) -> ApiResult<()> {
    if !v.is_object() {
        return Err(ApiError::invalid(
            field,
            "must be a JSON object (a workflow document)",
        ));
    }
    Ok(())
}

pub(crate) async fn find<S: Store>(
    app: &AppState<S>,
    caller: &Caller,
    id_or_key: &str,
) -> ApiResult<WorkflowRecord> {
    app.engine
        .store()
        .get_workflow(&caller.namespace, id_or_key)
        .await?
        .ok_or_else(|| ApiError::not_found("workflow", id_or_key))
}

/// Publishes a document as the workflow's next version, unless it equals
/// the latest one.
async fn publish_document<S: Store>(
    app: &AppState<S>,
    record: &WorkflowRecord,
    definition: &Value,
) -> ApiResult<(VersionOut, bool)> {
    if record.archived_at.is_some() {
        return Err(ApiError::conflict(
            Some("workflow"),
            format!(
                "workflow: {:?} is archived; it cannot be published",
                record.key
            ),
        ));
    }
    let registry = app.engine.registry(&record.namespace).await?;
    let (mut wf, _) =
        check_definition(app.engine.channels(), &registry, definition).map_err(invalid_workflow)?;
    // The stored version carries the workflow's key.
    wf.key = Some(record.key.clone());
    let (v, new) = app
        .engine
        .publish(&record.id, &wf, &registry)
        .await
        .map_err(|e| match e {
            // Archived meanwhile.
            sojourn_actors::Error::Store(sojourn_persistence::Error::Invalid(m)) => {
                ApiError::conflict(Some("workflow"), format!("workflow: {m}"))
            }
            other => other.into(),
        })?;
    Ok((
        VersionOut {
            workflow_id: v.workflow_id,
            version: v.version,
            published_at: v.published_at,
            new,
            definition: None,
            registry: v.registry,
        },
        new,
    ))
}

pub(crate) async fn create<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateWorkflow>,
) -> ApiResult<Response> {
    valid_key("key", &req.key)?;
    check_document("definition", &req.definition)?;
    if req.publish {
        // Refuse an invalid document before anything is written.
        check_definition(
            app.engine.channels(),
            &app.engine.registry(&caller.namespace).await?,
            &req.definition,
        )
        .map_err(invalid_workflow)?;
    }
    let record = app
        .engine
        .store()
        .create_workflow(NewWorkflow {
            id: ids::new_workflow_id(),
            namespace: caller.namespace.clone(),
            key: req.key,
            name: req.name,
            draft: req.definition,
            now: Utc::now(),
        })
        .await?;
    let mut out = WorkflowOut::from(record.clone());
    if req.publish {
        let (v, _) = publish_document(&app, &record, &record.draft).await?;
        out.latest_version = Some(v.version);
        out.published = Some(v);
    }
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

pub(crate) async fn list<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<ListWorkflows>,
) -> ApiResult<axum::Json<Page<WorkflowOut>>> {
    let limit = limit_of(q.limit)?;
    let rows = app
        .engine
        .store()
        .list_workflows(&WorkflowQuery {
            namespace: caller.namespace.clone(),
            include_archived: q.include_archived,
            before_id: q.cursor,
            limit: limit + 1,
        })
        .await?;
    Ok(axum::Json(Page::of(
        rows,
        limit,
        |r| r.id.clone(),
        WorkflowOut::from,
    )))
}

pub(crate) async fn get<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<WorkflowOut>> {
    Ok(axum::Json(find(&app, &caller, &id).await?.into()))
}

pub(crate) async fn update<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(req): Body<UpdateWorkflow>,
) -> ApiResult<axum::Json<WorkflowOut>> {
    check_document("definition", &req.definition)?;
    if req.publish {
        check_definition(
            app.engine.channels(),
            &app.engine.registry(&caller.namespace).await?,
            &req.definition,
        )
        .map_err(invalid_workflow)?;
    }
    let record = find(&app, &caller, &id).await?;
    if record.archived_at.is_some() {
        return Err(ApiError::conflict(
            Some("workflow"),
            format!(
                "workflow: {:?} is archived; its draft cannot change",
                record.key
            ),
        ));
    }
    let record = app
        .engine
        .store()
        .update_draft(
            &caller.namespace,
            &record.id,
            &req.definition,
            req.name.as_deref(),
            Utc::now(),
        )
        .await?;
    let mut out = WorkflowOut::from(record.clone());
    if req.publish {
        let (v, _) = publish_document(&app, &record, &record.draft).await?;
        out.latest_version = Some(v.version);
        out.published = Some(v);
    }
    Ok(axum::Json(out))
}

pub(crate) async fn validate<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(req): Body<ValidateRequest>,
) -> ApiResult<axum::Json<ValidationOut>> {
    let record = find(&app, &caller, &id).await?;
    let doc = req.definition.unwrap_or(record.draft);
    let (errors, normalized) = match check_definition(
        app.engine.channels(),
        &app.engine.registry(&caller.namespace).await?,
        &doc,
    ) {
        Ok((mut wf, _)) => {
            // As publishing would store it.
            wf.key = Some(record.key.clone());
            (Vec::new(), serde_json::to_value(&wf).ok())
        }
        Err(errors) => (errors, None),
    };
    Ok(axum::Json(ValidationOut {
        valid: errors.is_empty(),
        errors: errors.into_iter().map(Problem::from).collect(),
        normalized,
    }))
}

pub(crate) async fn publish<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let record = find(&app, &caller, &id).await?;
    let (v, new) = publish_document(&app, &record, &record.draft).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(v)).into_response())
}

pub(crate) async fn versions<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Vec<VersionItem>>> {
    let record = find(&app, &caller, &id).await?;
    let list = app.engine.store().list_versions(&record.id).await?;
    Ok(axum::Json(
        list.into_iter().map(VersionItem::from).collect(),
    ))
}

pub(crate) async fn version<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<axum::Json<VersionOut>> {
    let n: i32 = parse_path_number("version", &version)?;
    let record = find(&app, &caller, &id).await?;
    let v = app
        .engine
        .store()
        .get_version(&record.id, Some(n))
        .await?
        .ok_or_else(|| ApiError::not_found("version", &version))?;
    Ok(axum::Json(VersionOut {
        workflow_id: v.workflow_id,
        version: v.version,
        published_at: v.published_at,
        new: false,
        definition: serde_json::to_value(&v.definition).ok(),
        registry: v.registry,
    }))
}

pub(crate) async fn archive<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<WorkflowOut>> {
    let record = find(&app, &caller, &id).await?;
    let record = app
        .engine
        .store()
        .archive_workflow(&caller.namespace, &record.id, Utc::now())
        .await?;
    app.engine.forget_workflow_keys();
    Ok(axum::Json(record.into()))
}

/// A preview: the draft (or a given document) run on a virtual clock, with
/// nothing sent (the builder's "preview").
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    /// The document to run instead of the stored draft.
    #[serde(default)]
    #[schemars(schema_with = "crate::docs::optional_json_object")]
    pub definition: Option<Map<String, Value>>,
    /// The execution's input.
    #[serde(default)]
    pub input: Option<Value>,
    /// The subject (otherwise from `settings.subject`).
    #[serde(default)]
    pub subject: Option<String>,
    /// An IANA zone for the execution (otherwise the workflow's).
    #[serde(default)]
    #[schemars(schema_with = "crate::docs::optional_time_zone")]
    pub timezone: Option<String>,
    /// When the journey starts (default: now).
    #[serde(default)]
    pub start: Option<DateTime<Utc>>,
    /// Events that arrive: `[{"after": "2h", "name": "order_completed",
    /// "payload": {…}}]` (`after` from the start, or `at`; `key` defaults
    /// to the subject).
    #[serde(default)]
    pub events: Vec<sojourn_runtime::simulate::ScriptedEvent>,
    /// Per action node, the outcomes of its successive attempts, as in
    /// `sojourn simulate --events` (otherwise every attempt succeeds).
    #[serde(default)]
    #[schemars(schema_with = "crate::docs::optional_json_object")]
    pub actions: Option<Map<String, Value>>,
}

/// What a preview did.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SimulationOut {
    pub started_at: DateTime<Utc>,
    /// `finished`, `paused_for_operator`, `waiting_forever` or `step_limit`.
    pub stop: String,
    /// The execution's status at the end.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The node it ended on (or waits at).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_node: Option<String>,
    /// What happened, in order.
    pub steps: Vec<SimulatedStep>,
    /// The messages and calls it would have sent, with their rendered
    /// inputs.
    pub dispatches: Vec<SimulatedDispatch>,
}

/// One thing that happened in a preview.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SimulatedStep {
    pub at: DateTime<Utc>,
    /// Milliseconds of journey time since the start.
    pub offset_ms: i64,
    /// The node it happened at, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The journal entry's type (`node_entered`, `branch_taken`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The entry in words.
    pub text: String,
    /// The journal entry as stored.
    #[schemars(schema_with = "crate::docs::json_object")]
    pub entry: Value,
}

/// A message or call a preview would have sent.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SimulatedDispatch {
    pub node: String,
    pub action: String,
    pub attempt: u32,
    /// The rendered inputs (secrets stay `{{ secrets.NAME }}`).
    #[schemars(schema_with = "crate::docs::json_object")]
    pub inputs: Value,
}

/// A preview's budget: steps (a journey's whole walk, its loops included)
/// and time; and how many previews run at once on a node (each holds a
/// blocking thread: the rest are refused with 429 rather than queued).
const PREVIEW_MAX_STEPS: usize = 2_000;
const PREVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
static PREVIEWS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// `events[0].after`, `actions.send`: a field path, not a sentence.
fn is_field_path(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']'))
}

pub(crate) async fn simulate<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(req): Body<SimulateRequest>,
) -> ApiResult<axum::Json<SimulationOut>> {
    use sojourn_runtime::simulate::{Limits, Script, new_simulated_execution};

    let record = find(&app, &caller, &id).await?;
    let doc = req.definition.map(Value::Object).unwrap_or(record.draft);
    check_document("definition", &doc)?;
    let registry = app.engine.registry(&caller.namespace).await?;
    let (_, compiled) =
        check_definition(app.engine.channels(), &registry, &doc).map_err(invalid_workflow)?;
    // The events come typed; the actions' outcomes are read as the CLI's
    // script reads them (errors named `actions.<node>…`).
    let mut script: Script = serde_path_to_error::deserialize(
        serde_json::json!({ "actions": req.actions.unwrap_or_default() }),
    )
    .map_err(|e| ApiError::invalid(&e.path().to_string(), e.inner()))?;
    script.events = req.events;
    let start = req.start.unwrap_or_else(Utc::now);
    let snapshot = new_simulated_execution(
        &compiled,
        req.input.unwrap_or(Value::Null),
        req.subject,
        req.timezone.as_deref(),
        start,
    )
    .map_err(|e| match e {
        sojourn_runtime::Error::InvalidStart { field, message } => {
            ApiError::invalid(field, message)
        }
        other => ApiError::invalid("input", other.to_string()),
    })?;
    // Off the async workers, and bounded: a journey that loops through
    // delays stops at the step limit, and a preview that takes too long is
    // answered 400 (its thread finishes the steps it has left, holding its
    // place among the previews until then).
    let permit = PREVIEWS.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "previews: this node is running as many as it runs at once; try again in a moment",
        )
    })?;
    let run = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let limits = Limits {
            max_steps: PREVIEW_MAX_STEPS,
        };
        sojourn_runtime::simulate::simulate(&compiled, snapshot, &script, limits)
    });
    let sim = match tokio::time::timeout(PREVIEW_TIMEOUT, run).await {
        Ok(Ok(Ok(sim))) => sim,
        // The script's errors start with the field they are about
        // (`events[0].after: …`); a step's (a failure the journey cannot
        // take) is about the document.
        Ok(Ok(Err(e))) => {
            return Err(match e.split_once(": ") {
                Some((field, message)) if is_field_path(field) => ApiError::invalid(field, message),
                _ => ApiError::invalid("definition", e),
            });
        }
        Ok(Err(join)) => return Err(ApiError::internal(format!("a preview's thread: {join}"))),
        Err(_) => {
            return Err(ApiError::invalid(
                "definition",
                format!(
                    "the preview took longer than {} s; shorten the journey or its loops",
                    PREVIEW_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    let steps = sim
        .timeline
        .iter()
        .map(|entry| {
            let value = serde_json::to_value(entry).unwrap_or(Value::Null);
            SimulatedStep {
                at: entry.at,
                offset_ms: (entry.at - sim.started_at).num_milliseconds(),
                node: value.get("node").and_then(Value::as_str).map(str::to_owned),
                kind: value
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                text: entry.event.to_string(),
                entry: value,
            }
        })
        .collect();
    let stop = serde_json::to_value(sim.stop)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(axum::Json(SimulationOut {
        started_at: sim.started_at,
        stop,
        status: sim.snapshot.status.to_string(),
        outcome: sim.snapshot.outcome.clone(),
        current_node: sim.snapshot.current.as_ref().map(|n| n.to_string()),
        steps,
        dispatches: sim
            .dispatches
            .into_iter()
            .map(|d| SimulatedDispatch {
                node: d.node.to_string(),
                action: d.action,
                attempt: d.attempt,
                inputs: d.inputs,
            })
            .collect(),
    }))
}

pub(crate) async fn schema<S: Store>(State(_app): State<AppState<S>>) -> axum::Json<Value> {
    axum::Json(sojourn_runtime::schema::workflow_schema())
}
