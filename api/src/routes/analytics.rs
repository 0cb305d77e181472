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

/// The metrics the rollup counts: from the journal, conversions, then
/// deliveries.
pub(crate) const METRICS: [&str; 20] = [
    "entered",
    "branch",
    "action_failed",
    "skipped",
    "completed",
    "failed",
    "cancelled",
    "exited",
    "held_out",
    "converted",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "complained",
    "undelivered",
    "send_failed",
    "unsent",
    "unsubscribed",
];

/// The metrics counted from deliveries (per channel and provider).
const DELIVERY_METRICS: [&str; 10] = [
    "sent",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "complained",
    "undelivered",
    "send_failed",
    "unsent",
    "unsubscribed",
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
    /// Completed executions, those ended by an exit criterion included
    /// (not the holdout's).
    pub completed: i64,
    /// Entrants held out (`settings.holdout`): they ended at entry, with
    /// the outcome `holdout`, and are not among `entered` nor `completed`.
    pub held_out: i64,
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
    /// Its messages, by delivery metric (sent, delivered, opened, clicked,
    /// bounced, complained, undelivered, send_failed, unsent,
    /// unsubscribed).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub deliveries: BTreeMap<String, i64>,
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

/// The start node of a definition.
fn start_of(def: &sojourn_runtime::Workflow) -> Option<String> {
    def.nodes
        .iter()
        .find(|n| matches!(n.kind, NodeKind::Start(_)))
        .map(|n| n.id.to_string())
}

/// Adds the start node of every version the rows count that `starts` does
/// not have yet (each version read once): where executions entered.
async fn add_starts<S: Store>(
    store: &S,
    workflow_id: &str,
    rows: &[AnalyticsRow],
    starts: &mut HashMap<i32, String>,
) -> ApiResult<()> {
    let mut read = std::collections::HashSet::new();
    for r in rows {
        if !starts.contains_key(&r.version)
            && read.insert(r.version)
            && let Some(v) = store.get_version(workflow_id, Some(r.version)).await?
            && let Some(start) = start_of(&v.definition)
        {
            starts.insert(r.version, start);
        }
    }
    Ok(())
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
        order.extend(def.definition.nodes.iter().map(|n| n.id.to_string()));
        if let Some(start) = start_of(&def.definition) {
            starts.insert(v, start);
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
    add_starts(store, &wf.id, &rows, &mut starts).await?;
    let mut out = Funnel {
        workflow_id: wf.id.clone(),
        version: q.version,
        from: ymd(from),
        to: ymd(to),
        entered: 0,
        completed: 0,
        held_out: 0,
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
            "held_out" => out.held_out += r.value,
            "failed" => out.failed += r.value,
            "cancelled" => out.cancelled += r.value,
            "exited" => *out.exited.entry(r.branch).or_insert(0) += r.value,
            m if DELIVERY_METRICS.contains(&m) => {
                *node(&mut nodes, &r.node)
                    .deliveries
                    .entry(r.metric)
                    .or_insert(0) += r.value
            }
            _ => {}
        }
    }
    // The holdout's ends are not the journey's (an exit may still name its
    // outcome `holdout`: those stay).
    if out.held_out > 0 {
        out.completed -= out.held_out;
        let left = out
            .outcomes
            .get(sojourn_runtime::HOLDOUT_OUTCOME)
            .copied()
            .unwrap_or(0)
            - out.held_out;
        if left > 0 {
            out.outcomes
                .insert(sojourn_runtime::HOLDOUT_OUTCOME.to_owned(), left);
        } else {
            out.outcomes.remove(sojourn_runtime::HOLDOUT_OUTCOME);
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
    /// cancelled, exited or held_out (from the journal); converted (from
    /// conversions); sent, delivered, opened, clicked, bounced, complained,
    /// undelivered, send_failed, unsent or unsubscribed (from deliveries).
    #[schemars(extend("enum" = ["entered", "branch", "action_failed", "skipped", "completed", "failed", "cancelled", "exited", "held_out", "converted", "sent", "delivered", "opened", "clicked", "bounced", "complained", "undelivered", "send_failed", "unsent", "unsubscribed"]))]
    pub metric: String,
    /// Only this channel (delivery metrics).
    #[serde(default)]
    pub channel: Option<String>,
    /// Only this provider (delivery metrics).
    #[serde(default)]
    pub provider: Option<String>,
    /// Only this node (for entered, branch, action_failed, skipped, failed,
    /// converted (the branches taken) and the delivery metrics).
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
        && q.channel.as_deref().is_none_or(|c| c == r.channel)
        && q.provider.as_deref().is_none_or(|p| p == r.provider)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceQuery {
    /// Only this workflow (its key or id); all of the namespace when absent.
    #[serde(default)]
    pub workflow: Option<String>,
    /// The first day (`YYYY-MM-DD`, UTC), 29 days before `to` when absent.
    #[serde(default)]
    #[schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}$"))]
    pub from: Option<String>,
    /// The last day (`YYYY-MM-DD`, UTC), today when absent.
    #[serde(default)]
    #[schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}$"))]
    pub to: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailingQuery {
    /// Only this workflow (its key or id); all of the namespace when absent.
    #[serde(default)]
    pub workflow: Option<String>,
    /// The first day (`YYYY-MM-DD`, UTC), 29 days before `to` when absent.
    #[serde(default)]
    #[schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}$"))]
    pub from: Option<String>,
    /// The last day (`YYYY-MM-DD`, UTC), today when absent.
    #[serde(default)]
    #[schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}$"))]
    pub to: Option<String>,
    /// How many nodes, 20 when absent.
    #[serde(default)]
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

/// Delivery rates per channel and provider.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeliveryRates {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    pub from: String,
    pub to: String,
    /// One per channel, all its providers summed (`provider` absent).
    pub channels: Vec<Rates>,
    /// One per channel and provider.
    pub providers: Vec<Rates>,
}

/// Counts and rates of one channel (and provider). A rate is absent when
/// what it divides by is zero.
#[derive(Debug, Default, Clone, Serialize, JsonSchema)]
pub struct Rates {
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Accepted by the provider.
    pub sent: i64,
    pub delivered: i64,
    pub opened: i64,
    pub clicked: i64,
    pub bounced: i64,
    pub complained: i64,
    pub undelivered: i64,
    /// Sends that failed (the provider refused, timed out, …).
    pub send_failed: i64,
    /// Not sent on purpose, by reason (unsubscribed, suppressed,
    /// no_address, capped).
    pub unsent: BTreeMap<String, i64>,
    /// Recipients who unsubscribed through the message's link.
    pub unsubscribed: i64,
    /// delivered / sent.
    pub delivery_rate: Option<f64>,
    /// opened / delivered.
    pub open_rate: Option<f64>,
    /// clicked / delivered.
    pub click_rate: Option<f64>,
    /// (bounced + undelivered) / sent.
    pub bounce_rate: Option<f64>,
    /// send_failed / (sent + send_failed).
    pub failure_rate: Option<f64>,
    /// unsubscribed / sent (many providers report no delivery).
    pub unsubscribe_rate: Option<f64>,
}

impl Rates {
    fn add(&mut self, metric: &str, branch: &str, n: i64) {
        match metric {
            "sent" => self.sent += n,
            "delivered" => self.delivered += n,
            "opened" => self.opened += n,
            "clicked" => self.clicked += n,
            "bounced" => self.bounced += n,
            "complained" => self.complained += n,
            "undelivered" => self.undelivered += n,
            "send_failed" => self.send_failed += n,
            "unsent" => *self.unsent.entry(branch.to_owned()).or_insert(0) += n,
            "unsubscribed" => self.unsubscribed += n,
            _ => {}
        }
    }

    fn with_rates(mut self) -> Rates {
        let ratio = |a: i64, b: i64| (b > 0).then(|| a as f64 / b as f64);
        self.delivery_rate = ratio(self.delivered, self.sent);
        self.open_rate = ratio(self.opened, self.delivered);
        self.click_rate = ratio(self.clicked, self.delivered);
        self.bounce_rate = ratio(self.bounced + self.undelivered, self.sent);
        self.failure_rate = ratio(self.send_failed, self.sent + self.send_failed);
        self.unsubscribe_rate = ratio(self.unsubscribed, self.sent);
        self
    }
}

/// The workflow a namespace report is narrowed to, if any.
async fn narrowed<S: Store>(
    app: &AppState<S>,
    caller: &Caller,
    workflow: Option<&str>,
) -> ApiResult<Option<String>> {
    Ok(match workflow {
        Some(w) => Some(crate::routes::workflows::find(app, caller, w).await?.id),
        None => None,
    })
}

pub(crate) async fn deliveries<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<NamespaceQuery>,
) -> ApiResult<axum::Json<DeliveryRates>> {
    let (from, to) = range(
        q.from.as_deref(),
        q.to.as_deref(),
        None,
        Utc::now().date_naive(),
    )?;
    let workflow_id = narrowed(&app, &caller, q.workflow.as_deref()).await?;
    let rows = app
        .engine
        .store()
        .delivery_totals(
            &caller.namespace,
            workflow_id.as_deref(),
            &ymd(from),
            &ymd(to),
        )
        .await?;
    let mut channels: BTreeMap<String, Rates> = BTreeMap::new();
    let mut providers: BTreeMap<(String, String), Rates> = BTreeMap::new();
    for r in rows {
        channels
            .entry(r.channel.clone())
            .or_insert_with(|| Rates {
                channel: r.channel.clone(),
                ..Rates::default()
            })
            .add(&r.metric, &r.branch, r.value);
        providers
            .entry((r.channel.clone(), r.provider.clone()))
            .or_insert_with(|| Rates {
                channel: r.channel.clone(),
                provider: Some(r.provider.clone()),
                ..Rates::default()
            })
            .add(&r.metric, &r.branch, r.value);
    }
    Ok(axum::Json(DeliveryRates {
        workflow_id,
        from: ymd(from),
        to: ymd(to),
        channels: channels.into_values().map(Rates::with_rates).collect(),
        providers: providers.into_values().map(Rates::with_rates).collect(),
    }))
}

/// The nodes that failed most.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FailingNodes {
    pub from: String,
    pub to: String,
    /// Most failed executions first, then failed tries, failed sends,
    /// bounces.
    pub nodes: Vec<FailingNodeOut>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FailingNodeOut {
    pub workflow_id: String,
    /// The workflow's key.
    pub workflow: String,
    pub node: String,
    /// Executions that failed at this node.
    pub failed: i64,
    /// Failed tries of its action (retried or not).
    pub action_failed: i64,
    /// Its messages whose send failed.
    pub delivery_failed: i64,
    /// Its messages bounced or undelivered.
    pub bounced: i64,
}

pub(crate) async fn failing_nodes<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<FailingQuery>,
) -> ApiResult<axum::Json<FailingNodes>> {
    let (from, to) = range(
        q.from.as_deref(),
        q.to.as_deref(),
        None,
        Utc::now().date_naive(),
    )?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 200"));
    }
    let workflow_id = narrowed(&app, &caller, q.workflow.as_deref()).await?;
    let rows = app
        .engine
        .store()
        .failing_nodes(
            &caller.namespace,
            workflow_id.as_deref(),
            &ymd(from),
            &ymd(to),
            limit,
        )
        .await?;
    Ok(axum::Json(FailingNodes {
        from: ymd(from),
        to: ymd(to),
        nodes: rows
            .into_iter()
            .map(|n| FailingNodeOut {
                workflow_id: n.workflow_id,
                workflow: n.workflow,
                node: n.node,
                failed: n.failed,
                action_failed: n.action_failed,
                delivery_failed: n.delivery_failed,
                bounced: n.bounced,
            })
            .collect(),
    }))
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

/// A group's conversion: how many entered, how many converted, the rate
/// and its 95 % Wilson score interval.
#[derive(Debug, Default, Clone, Serialize, JsonSchema)]
pub struct Conversion {
    pub entered: i64,
    pub converted: i64,
    /// converted / entered (absent when none entered).
    pub rate: Option<f64>,
    /// The 95 % confidence interval of the rate (Wilson score).
    pub low: Option<f64>,
    pub high: Option<f64>,
}

impl Conversion {
    fn of(entered: i64, converted: i64) -> Conversion {
        let (low, high) = match wilson(converted, entered) {
            Some((l, h)) => (Some(l), Some(h)),
            None => (None, None),
        };
        Conversion {
            entered,
            converted,
            rate: (entered > 0).then(|| converted.min(entered) as f64 / entered as f64),
            low,
            high,
        }
    }
}

/// The 95 % Wilson score interval of `x` successes in `n` tries (`x` is
/// held to `n`: entries and conversions of a range may be of different
/// cohorts). Written out: it is one formula, and the statistics crates
/// that have it bring far more than it.
pub(crate) fn wilson(x: i64, n: i64) -> Option<(f64, f64)> {
    if n <= 0 {
        return None;
    }
    const Z: f64 = 1.959_963_984_540_054;
    let n = n as f64;
    let p = x.clamp(0, n as i64) as f64 / n;
    let z2 = Z * Z;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// A workflow's conversions over a range of days.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Conversions {
    pub workflow_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
    pub from: String,
    pub to: String,
    /// The goal of the version asked for (or the latest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<sojourn_runtime::Goal>,
    /// The holdout's share, in percent, of that version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout_percent: Option<f64>,
    /// Entrants who walked the journey.
    pub journey: Conversion,
    /// Entrants held out (absent without a holdout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout: Option<Conversion>,
    /// journey.rate − holdout.rate: what the journey adds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lift: Option<f64>,
    /// Per branch taken (a split's variants, a condition's branches):
    /// executions that took it, and those of them that converted after.
    pub branches: Vec<BranchConversion>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BranchConversion {
    pub node: String,
    pub branch: String,
    #[serde(flatten)]
    pub conversion: Conversion,
}

pub(crate) async fn conversions<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(workflow): Path<String>,
    Q(q): Q<FunnelQuery>,
) -> ApiResult<axum::Json<Conversions>> {
    let (from, to) = range(
        q.from.as_deref(),
        q.to.as_deref(),
        q.version,
        Utc::now().date_naive(),
    )?;
    let wf = crate::routes::workflows::find(&app, &caller, &workflow).await?;
    let store = app.engine.store();
    let (mut goal, mut holdout_percent) = (None, None);
    let mut starts = HashMap::new();
    if let Some(v) = q.version.or(wf.latest_version) {
        let def = store
            .get_version(&wf.id, Some(v))
            .await?
            .ok_or_else(|| ApiError::not_found("version", &v.to_string()))?;
        goal = def.definition.settings.goal.clone();
        holdout_percent = def.definition.settings.holdout.as_ref().map(|h| h.percent);
        if let Some(start) = start_of(&def.definition) {
            starts.insert(v, start);
        }
    }
    let rows = store
        .analytics_totals(&caller.namespace, &wf.id, q.version, &ymd(from), &ymd(to))
        .await?;
    add_starts(store, &wf.id, &rows, &mut starts).await?;
    let (mut entered, mut held_out, mut converted, mut converted_held_out) = (0, 0, 0, 0);
    let mut branches: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for r in rows {
        match (r.metric.as_str(), r.node.is_empty()) {
            ("entered", _) if starts.get(&r.version) == Some(&r.node) => entered += r.value,
            ("held_out", _) => held_out += r.value,
            ("converted", true) if r.branch == "holdout" => converted_held_out += r.value,
            ("converted", true) => converted += r.value,
            ("converted", false) => branches.entry((r.node, r.branch)).or_default().1 += r.value,
            ("branch", false) => branches.entry((r.node, r.branch)).or_default().0 += r.value,
            _ => {}
        }
    }
    let journey = Conversion::of(entered, converted);
    let holdout = (held_out > 0 || holdout_percent.is_some())
        .then(|| Conversion::of(held_out, converted_held_out));
    let lift = match (&holdout, journey.rate) {
        (Some(h), Some(j)) => h.rate.map(|h| j - h),
        _ => None,
    };
    Ok(axum::Json(Conversions {
        workflow_id: wf.id,
        version: q.version,
        from: ymd(from),
        to: ymd(to),
        goal,
        holdout_percent,
        journey,
        holdout,
        lift,
        branches: branches
            .into_iter()
            .map(|((node, branch), (n, x))| BranchConversion {
                node,
                branch,
                conversion: Conversion::of(n, x),
            })
            .collect(),
    }))
}

/// How long the namespace keeps the records of finished executions, in
/// days (absent or null: for good). Analytics rollups are always kept.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// The journal.
    #[serde(default)]
    #[schemars(range(min = 1, max = 3650))]
    pub journal_days: Option<i32>,
    /// Node executions (attempts with their inputs and outputs).
    #[serde(default)]
    #[schemars(range(min = 1, max = 3650))]
    pub node_executions_days: Option<i32>,
    /// The delivery log.
    #[serde(default)]
    #[schemars(range(min = 1, max = 3650))]
    pub deliveries_days: Option<i32>,
}

impl From<sojourn_persistence::RetentionPolicy> for Retention {
    fn from(p: sojourn_persistence::RetentionPolicy) -> Self {
        Retention {
            journal_days: p.journal_days,
            node_executions_days: p.node_executions_days,
            deliveries_days: p.deliveries_days,
        }
    }
}

pub(crate) async fn get_retention<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<axum::Json<Retention>> {
    let policy = app.engine.store().retention(&caller.namespace).await?;
    Ok(axum::Json(policy.map(Retention::from).unwrap_or_default()))
}

pub(crate) async fn put_retention<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    crate::extract::RawBody(body): crate::extract::RawBody,
) -> ApiResult<axum::Json<Retention>> {
    // A PUT replaces the whole policy: an empty body is refused rather
    // than read as "keep everything for good".
    if body.iter().all(crate::extract::json_whitespace) {
        return Err(ApiError::invalid(
            "body",
            "required: a JSON object (journal_days, node_executions_days, deliveries_days; null keeps for good)",
        ));
    }
    if body.iter().find(|b| !crate::extract::json_whitespace(b)) != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let req: Retention = crate::extract::parse_json(&body)?;
    for (field, days) in [
        ("journal_days", req.journal_days),
        ("node_executions_days", req.node_executions_days),
        ("deliveries_days", req.deliveries_days),
    ] {
        if days.is_some_and(|d| !(1..=3650).contains(&d)) {
            return Err(ApiError::invalid(
                field,
                "must be 1 to 3650 days, or null to keep",
            ));
        }
    }
    let policy = sojourn_persistence::RetentionPolicy {
        journal_days: req.journal_days,
        node_executions_days: req.node_executions_days,
        deliveries_days: req.deliveries_days,
    };
    app.engine
        .store()
        .set_retention(&caller.namespace, &policy, Utc::now())
        .await?;
    Ok(axum::Json(policy.into()))
}
