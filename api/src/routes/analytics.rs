//! Analytics of a workflow, read from the rollups (`analytics_daily`, filled
//! by the rollup job from the journal): its funnel (entries per node,
//! branches taken, where executions are now), daily series in a time zone,
//! and a CSV export streamed a day at a time.

use std::collections::{BTreeMap, HashMap};

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{Days, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use futures_util::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sojourn_persistence::{AnalyticsRow, Store, WorkflowRecord};
use sojourn_runtime::model::NodeKind;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Q};
use crate::state::AppState;

/// The longest range a report covers.
const MAX_DAYS: u64 = 366;

/// The metrics the rollup counts.
pub(crate) const METRICS: [&str; 8] = [
    "entered",
    "branch",
    "action_failed",
    "skipped",
    "completed",
    "failed",
    "cancelled",
    "exited",
];

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FunnelQuery {
    /// One published version (all when absent).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub version: Option<i32>,
    /// The first day (`YYYY-MM-DD`, UTC), 29 days before `to` when absent.
    #[serde(default)]
    #[schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}$"))]
    pub from: Option<String>,
    /// The last day (`YYYY-MM-DD`, UTC), today when absent.
    #[serde(default)]
    #[schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}$"))]
    pub to: Option<String>,
}

/// A workflow's funnel over a range of days.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Funnel {
    pub workflow_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
    pub from: String,
    pub to: String,
    /// Executions that entered (their start node), and how they ended,
    /// counted per event: an execution retried after failing may count as
    /// failed and as completed.
    pub entered: i64,
    /// Completed executions, those ended by an exit criterion included.
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Ended by an exit criterion, by event (these are among `completed`,
    /// under their outcome).
    pub exited: BTreeMap<String, i64>,
    /// Completed executions by outcome (`""`: none).
    pub outcomes: BTreeMap<String, i64>,
    /// Each node, in the workflow's order (the version's, or the latest).
    pub nodes: Vec<FunnelNode>,
}

#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct FunnelNode {
    pub node: String,
    /// Times an execution entered it.
    pub entered: i64,
    /// Times each branch was taken from it.
    pub branches: BTreeMap<String, i64>,
    /// Failed tries of its action.
    pub action_failed: i64,
    /// Messages it did not send on purpose (opted out, capped, …).
    pub skipped: i64,
    /// Unfinished executions there now, by status.
    pub now: BTreeMap<String, i64>,
}

/// A node's entry of the funnel, made when first met.
fn node<'n>(nodes: &'n mut BTreeMap<String, FunnelNode>, id: &str) -> &'n mut FunnelNode {
    nodes.entry(id.to_owned()).or_insert_with(|| FunnelNode {
        node: id.to_owned(),
        ..FunnelNode::default()
    })
}

/// Reads and checks a range: `(from, to)`, both included.
fn range(
    from: Option<&str>,
    to: Option<&str>,
    version: Option<i32>,
    today: NaiveDate,
) -> ApiResult<(NaiveDate, NaiveDate)> {
    if version.is_some_and(|v| v < 1) {
        return Err(ApiError::invalid("version", "must be 1 or more"));
    }
    let day = |field: &str, text: &str| {
        let shaped = text.len() == 10
            && text.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        shaped
            .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
            .flatten()
            .ok_or_else(|| ApiError::invalid(field, format!("{text:?} is not a day (YYYY-MM-DD)")))
    };
    let to = match to {
        Some(t) => day("to", t)?,
        None => today,
    };
    let from = match from {
        Some(f) => day("from", f)?,
        None => to.checked_sub_days(Days::new(29)).unwrap_or(to),
    };
    if from > to {
        return Err(ApiError::invalid("from", "must not be after to"));
    }
    if (to - from).num_days() as u64 >= MAX_DAYS {
        return Err(ApiError::invalid(
            "from",
            format!("a report covers at most {MAX_DAYS} days"),
        ));
    }
    Ok((from, to))
}

fn ymd(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// The node ids of a workflow's version, in its order, and its start node.
async fn layout<S: Store>(
    app: &AppState<S>,
    wf: &WorkflowRecord,
    version: Option<i32>,
) -> ApiResult<(Vec<String>, HashMap<i32, String>)> {
    let mut order = Vec::new();
    let mut starts = HashMap::new();
    let wanted = version.or(wf.latest_version);
    if let Some(v) = wanted {
        let def = app
            .engine
            .store()
            .get_version(&wf.id, Some(v))
            .await?
            .ok_or_else(|| ApiError::not_found("version", &v.to_string()))?;
        for n in &def.definition.nodes {
            order.push(n.id.to_string());
            if matches!(n.kind, NodeKind::Start(_)) {
                starts.insert(v, n.id.to_string());
            }
        }
    }
    Ok((order, starts))
}

pub(crate) async fn funnel<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(workflow): Path<String>,
    Q(q): Q<FunnelQuery>,
) -> ApiResult<axum::Json<Funnel>> {
    let (from, to) = range(
        q.from.as_deref(),
        q.to.as_deref(),
        q.version,
        Utc::now().date_naive(),
    )?;
    let wf = crate::routes::workflows::find(&app, &caller, &workflow).await?;
    let (order, mut starts) = layout(&app, &wf, q.version).await?;
    let store = app.engine.store();
    let rows = store
        .analytics_totals(&caller.namespace, &wf.id, q.version, &ymd(from), &ymd(to))
        .await?;
    // The start node of every version counted (each version read once).
    let mut read = std::collections::HashSet::new();
    for r in &rows {
        if !starts.contains_key(&r.version)
            && read.insert(r.version)
            && let Some(v) = store.get_version(&wf.id, Some(r.version)).await?
            && let Some(n) = v
                .definition
                .nodes
                .iter()
                .find(|n| matches!(n.kind, NodeKind::Start(_)))
        {
            starts.insert(r.version, n.id.to_string());
        }
    }
    let mut out = Funnel {
        workflow_id: wf.id.clone(),
        version: q.version,
        from: ymd(from),
        to: ymd(to),
        entered: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
        exited: BTreeMap::new(),
        outcomes: BTreeMap::new(),
        nodes: Vec::new(),
    };
    let mut nodes: BTreeMap<String, FunnelNode> = BTreeMap::new();
    for r in rows {
        match r.metric.as_str() {
            "entered" => {
                if starts.get(&r.version) == Some(&r.node) {
                    out.entered += r.value;
                }
                node(&mut nodes, &r.node).entered += r.value;
            }
            "branch" => {
                *node(&mut nodes, &r.node)
                    .branches
                    .entry(r.branch)
                    .or_insert(0) += r.value
            }
            "action_failed" => node(&mut nodes, &r.node).action_failed += r.value,
            "skipped" => node(&mut nodes, &r.node).skipped += r.value,
            "completed" => {
                out.completed += r.value;
                *out.outcomes.entry(r.branch).or_insert(0) += r.value;
            }
            "failed" => out.failed += r.value,
            "cancelled" => out.cancelled += r.value,
            "exited" => *out.exited.entry(r.branch).or_insert(0) += r.value,
            _ => {}
        }
    }
    for (current, status, n) in store
        .current_positions(&caller.namespace, &wf.id, q.version)
        .await?
    {
        if let Some(id) = current {
            *node(&mut nodes, &id).now.entry(status).or_insert(0) += n;
        }
    }
    // The workflow's order first, then nodes of other versions.
    for id in &order {
        if let Some(n) = nodes.remove(id) {
            out.nodes.push(n);
        } else {
            out.nodes.push(FunnelNode {
                node: id.clone(),
                ..FunnelNode::default()
            });
        }
    }
    out.nodes.extend(nodes.into_values());
    Ok(axum::Json(out))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// entered, branch, action_failed, skipped, completed, failed,
    /// cancelled or exited.
    #[schemars(extend("enum" = ["entered", "branch", "action_failed", "skipped", "completed", "failed", "cancelled", "exited"]))]
    pub metric: String,
    /// Only this node (for entered, branch, action_failed, skipped, failed).
    #[serde(default)]
    pub node: Option<String>,
    /// Only this branch, outcome or exit event.
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub version: Option<i32>,
    /// The first day in `timezone` (`YYYY-MM-DD`), 29 days before `to` when
    /// absent.
    #[serde(default)]
    #[schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}$"))]
    pub from: Option<String>,
    /// The last day in `timezone`, today when absent.
    #[serde(default)]
    #[schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}$"))]
    pub to: Option<String>,
    /// An IANA zone (`Europe/Paris`): days are its days. UTC when absent.
    #[serde(default)]
    pub timezone: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Series {
    pub metric: String,
    pub timezone: String,
    /// Every day of the range, zeros included.
    pub days: Vec<Point>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Point {
    pub day: String,
    pub value: i64,
}

pub(crate) async fn series<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(workflow): Path<String>,
    Q(q): Q<SeriesQuery>,
) -> ApiResult<axum::Json<Series>> {
    if !METRICS.contains(&q.metric.as_str()) {
        return Err(ApiError::invalid(
            "metric",
            format!("{:?} is not one of {}", q.metric, METRICS.join(", ")),
        ));
    }
    let tz: Tz = match &q.timezone {
        Some(t) => sojourn_runtime::time::parse_timezone(t)
            .map_err(|e| ApiError::invalid("timezone", e))?,
        None => chrono_tz::UTC,
    };
    let today = Utc::now().with_timezone(&tz).date_naive();
    let (from, to) = range(q.from.as_deref(), q.to.as_deref(), q.version, today)?;
    let wf = crate::routes::workflows::find(&app, &caller, &workflow).await?;
    // A local day spans at most the UTC days either side of it.
    let utc_from = from.checked_sub_days(Days::new(1)).unwrap_or(from);
    let utc_to = to.checked_add_days(Days::new(1)).unwrap_or(to);
    let rows = app
        .engine
        .store()
        .analytics_counts(
            &caller.namespace,
            &wf.id,
            q.version,
            &ymd(utc_from),
            &ymd(utc_to),
        )
        .await?;
    let mut days: BTreeMap<NaiveDate, i64> = BTreeMap::new();
    let mut d = from;
    while d <= to {
        days.insert(d, 0);
        let Some(next) = d.checked_add_days(Days::new(1)) else {
            break;
        };
        d = next;
    }
    for r in rows.iter().filter(|r| wanted(r, &q)) {
        let Some(local) = local_day(r, &tz) else {
            continue;
        };
        if let Some(v) = days.get_mut(&local) {
            *v += r.value;
        }
    }
    Ok(axum::Json(Series {
        metric: q.metric,
        timezone: tz.name().to_owned(),
        days: days
            .into_iter()
            .map(|(d, value)| Point { day: ymd(d), value })
            .collect(),
    }))
}

fn wanted(r: &AnalyticsRow, q: &SeriesQuery) -> bool {
    r.metric == q.metric
        && q.node.as_deref().is_none_or(|n| n == r.node)
        && q.branch.as_deref().is_none_or(|b| b == r.branch)
}

/// The day in `tz` of a rolled-up UTC hour.
fn local_day(r: &AnalyticsRow, tz: &Tz) -> Option<NaiveDate> {
    let day = NaiveDate::parse_from_str(&r.day, "%Y-%m-%d").ok()?;
    let hour = day.and_hms_opt(u32::try_from(r.hour).ok()?, 0, 0)?;
    Some(Utc.from_utc_datetime(&hour).with_timezone(tz).date_naive())
}

/// The CSV export: one line per rolled-up row, a day at a time.
pub(crate) async fn export<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(workflow): Path<String>,
    Q(q): Q<FunnelQuery>,
) -> ApiResult<Response> {
    let (from, to) = range(
        q.from.as_deref(),
        q.to.as_deref(),
        q.version,
        Utc::now().date_naive(),
    )?;
    let wf = crate::routes::workflows::find(&app, &caller, &workflow).await?;
    let header_line = "day,hour,workflow_id,version,node,branch,channel,provider,metric,value\n";
    let state = (
        app,
        caller.namespace.clone(),
        wf.id,
        q.version,
        Some(from),
        to,
    );
    let days = futures_util::stream::unfold(state, |(app, ns, wf, version, day, to)| async move {
        let d = day?;
        let next = d.checked_add_days(Days::new(1)).filter(|n| *n <= to);
        let rows = app
            .engine
            .store()
            .analytics_counts(&ns, &wf, version, &ymd(d), &ymd(d))
            .await;
        let chunk: Result<Vec<u8>, std::io::Error> = match rows {
            Ok(rows) => Ok(csv_lines(&wf, &rows)),
            Err(e) => {
                // The answer is cut short: the client sees a broken body.
                tracing::warn!(error = %e, workflow = %wf, day = %d, "the analytics export failed");
                Err(std::io::Error::other(e.to_string()))
            }
        };
        Some((chunk, (app, ns, wf, version, next, to)))
    });
    let body =
        futures_util::stream::once(async move { Ok(header_line.as_bytes().to_vec()) }).chain(days);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"analytics.csv\"",
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// A text cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, a
/// tab or a carriage return first) gets a `'` before it (OWASP's advice):
/// branch labels, outcomes and event names are written by workflow authors.
fn cell(text: &str) -> std::borrow::Cow<'_, str> {
    match text.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{text}").into(),
        _ => text.into(),
    }
}

/// Rows as CSV lines (fields quoted when they need it).
fn csv_lines(workflow_id: &str, rows: &[AnalyticsRow]) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::with_capacity(rows.len() * 64));
    for r in rows {
        let _ = w.write_record([
            r.day.as_str(),
            &r.hour.to_string(),
            workflow_id,
            &r.version.to_string(),
            &cell(&r.node),
            &cell(&r.branch),
            &cell(&r.channel),
            &cell(&r.provider),
            &r.metric,
            &r.value.to_string(),
        ]);
    }
    w.into_inner().unwrap_or_default()
}
