//! Analytics (`analytics_daily`, `analytics_cursors`): counts rolled up
//! from what the engine already writes (the journal, the delivery log,
//! conversions recorded when a goal's event arrives), never by a second
//! write on an execution's path.
//!
//! The rollup reads the journal past its cursor, a batch at a time, and in
//! one transaction adds the batch's counts to `analytics_daily` and moves
//! the cursor: a rollup killed mid-batch rolls back and is done again, and
//! one that is done is never counted twice. The cursor's row is also the
//! claim: a node rolls up while it holds the row's lock, and the others
//! pass (`SKIP LOCKED`; SQLite has one writer).
//!
//! PostgreSQL hands out journal ids before commit, so a row may become
//! visible after a row with a higher id. The rollup counts an id only once
//! every transaction that could still write a lower one has ended: each run
//! reads the highest id it sees first, then takes an xid of its own
//! (necessarily higher than the xid of any transaction holding an id up to
//! that one: a commit has its xid before it takes a journal id, since it
//! writes its executions' rows first); a later run that finds the oldest
//! running transaction past that xid may count up to that id. (Not the
//! snapshot's xmax: that is one past the newest *finished* xid, and a
//! running transaction may be above it.) No clock is read, so a slow commit
//! or a node's clock cannot lose a row; a transaction left open anywhere on
//! the server only delays the rollup. SQLite's one writer commits in id
//! order: what it sees is settled. Journal ids come from a sequence with
//! the default cache of 1, so they are handed out in order.

use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{Executor, QueryBuilder};

use crate::Result;
use crate::sql::{Bind, Doc, Instant, Read, Sql, SqlStore, at};

mod retention;
use retention::PolicyRow;
pub use retention::{RetentionPolicy, Swept};

/// The journal kinds the rollup counts, and the metric each becomes.
const COUNTED: [(&str, &str); 9] = [
    ("node_entered", "entered"),
    ("held_out", "held_out"),
    ("branch_taken", "branch"),
    ("action_failed", "action_failed"),
    ("action_skipped", "skipped"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("cancelled", "cancelled"),
    ("exit_criteria_met", "exited"),
];

/// The rows of one workflow over a range of days, of one version or all
/// (binds: namespace, workflow, first day, last day, version).
const IN_RANGE: &str = "FROM analytics_daily
     WHERE namespace = $1 AND workflow_id = $2 AND day >= $3 AND day <= $4
       AND ($5 IS NULL OR version = $5)";

/// `'node_entered', 'branch_taken', …`: the counted kinds, for SQL.
static COUNTED_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    COUNTED
        .iter()
        .map(|(k, _)| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(", ")
});

/// The counted journal rows of an id range (binds: after, up to), with the
/// node and branch each counts under, as [`rollup_key`] maps them.
struct FactsSql {
    postgres: std::sync::OnceLock<String>,
    sqlite: std::sync::OnceLock<String>,
}

impl FactsSql {
    fn get<DB: Sql>(&'static self) -> &'static str {
        let cell = match DB::SNAPSHOT_HORIZON {
            Some(_) => &self.postgres,
            None => &self.sqlite,
        };
        cell.get_or_init(|| {
            let text = |field: &str| format!("COALESCE({}, '')", DB::json_text("j.entry", field));
            format!(
                "SELECT j.kind,
                        CASE WHEN j.kind IN ('completed', 'exit_criteria_met', 'cancelled', 'held_out')
                             THEN '' ELSE {node} END AS node,
                        CASE j.kind WHEN 'branch_taken' THEN {branch}
                                    WHEN 'completed' THEN {outcome}
                                    WHEN 'exit_criteria_met' THEN {event}
                                    ELSE '' END AS branch,
                        j.at, e.namespace, e.workflow_id, e.version
                 FROM journal j JOIN executions e ON e.id = j.execution_id
                 WHERE j.id > $1 AND j.id <= $2 AND j.kind IN ({kinds})",
                node = text("node"),
                branch = text("branch"),
                outcome = text("outcome"),
                event = text("event"),
                kinds = COUNTED_SQL.as_str(),
            )
        })
    }
}

static FACTS: FactsSql = FactsSql {
    postgres: std::sync::OnceLock::new(),
    sqlite: std::sync::OnceLock::new(),
};

/// A journal count by reference: namespace, workflow, hour since the epoch,
/// version, node, branch, metric.
type Tally<'a> = (&'a str, &'a str, i64, i32, &'a str, &'a str, &'static str);

/// Rows of `analytics_daily` written per statement.
const UPSERT_CHUNK: usize = 500;

/// Analytics rollups and what reports read.
pub trait AnalyticsStore: Send + Sync {
    /// Rolls up at most `limit` settled journal rows past the cursor, in one
    /// transaction. `None`: another node holds the cursor now. `Some(n)`:
    /// the cursor moved past `n` rows (0: nothing settled to count).
    fn rollup_journal(&self, limit: u32) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Counts at most `limit` deliveries whose status moved, or whose
    /// recipient unsubscribed through them, since they were last counted
    /// (sent, delivered, opened, …, unsubscribed per channel and provider;
    /// each metric once per delivery), in one transaction. `None`: another node is at it now.
    /// `Some(n)`: `n` deliveries counted.
    fn rollup_deliveries(&self, limit: u32) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Records the conversions an event makes: every execution of a
    /// workflow whose version has this event as its goal, with the event's
    /// key as its subject, that entered at most the goal's window before
    /// `at` and has not converted yet, with the branches it had taken by
    /// `at` (not those the event itself may have led to). Returns how many converted (none,
    /// in one indexed read, when no goal of the namespace names the event).
    fn record_conversions(
        &self,
        namespace: &str,
        event: &str,
        key: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Counts at most `limit` conversions not counted yet, in one
    /// transaction (`None`: another node is at it now).
    fn rollup_conversions(&self, limit: u32) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// A namespace's retention (`None`: everything is kept).
    fn retention(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Option<RetentionPolicy>>> + Send;

    /// Sets a namespace's retention.
    fn set_retention(
        &self,
        namespace: &str,
        policy: &RetentionPolicy,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes one batch of what retention lets go: the rows of at most
    /// `batch` finished executions, of the first namespace and target
    /// with some, in one transaction. `None`: another node is sweeping;
    /// `Some(None)`: nothing to sweep now.
    fn sweep_retention(
        &self,
        batch: u32,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<Option<Swept>>>> + Send;

    /// Delivery counts of a namespace (of one workflow, or all) over UTC
    /// days `from_day` to `to_day`, per channel, provider and metric.
    fn delivery_totals(
        &self,
        namespace: &str,
        workflow_id: Option<&str>,
        from_day: &str,
        to_day: &str,
    ) -> impl Future<Output = Result<Vec<DeliveryTotal>>> + Send;

    /// The nodes of a namespace (of one workflow, or all) that failed most
    /// over UTC days `from_day` to `to_day`: executions failed there first,
    /// then failed tries, then failed and bounced deliveries.
    fn failing_nodes(
        &self,
        namespace: &str,
        workflow_id: Option<&str>,
        from_day: &str,
        to_day: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<FailingNode>>> + Send;

    /// The rolled-up counts of one workflow, UTC days `from_day` to
    /// `to_day` (`YYYY-MM-DD`, both included), of one version or all.
    fn analytics_counts(
        &self,
        namespace: &str,
        workflow_id: &str,
        version: Option<i32>,
        from_day: &str,
        to_day: &str,
    ) -> impl Future<Output = Result<Vec<AnalyticsRow>>> + Send;

    /// The same counts summed over the range (`day` empty, `hour` 0): what
    /// a funnel reads.
    fn analytics_totals(
        &self,
        namespace: &str,
        workflow_id: &str,
        version: Option<i32>,
        from_day: &str,
        to_day: &str,
    ) -> impl Future<Output = Result<Vec<AnalyticsRow>>> + Send;

    /// Where a workflow's unfinished executions are now: (node, status,
    /// how many), of one version or all.
    fn current_positions(
        &self,
        namespace: &str,
        workflow_id: &str,
        version: Option<i32>,
    ) -> impl Future<Output = Result<Vec<(Option<String>, String, i64)>>> + Send;
}

/// One row of `analytics_daily`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AnalyticsRow {
    pub day: String,
    pub hour: i32,
    pub version: i32,
    pub node: String,
    pub branch: String,
    pub channel: String,
    pub provider: String,
    pub metric: String,
    pub value: i64,
}

/// The highest journal id this transaction sees (0: none).
async fn newest_id<DB>(tx: &mut DB::Connection) -> Result<i64>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    (Option<i64>,): Read<DB>,
{
    let (newest,): (Option<i64>,) = sqlx::query_as("SELECT MAX(id) FROM journal")
        .fetch_one(&mut *tx)
        .await?;
    Ok(newest.unwrap_or(0))
}

/// The cursor's row.
#[derive(sqlx::FromRow)]
struct Cursor {
    position: i64,
    safe_upto: i64,
    pending_upto: Option<i64>,
    pending_xid: Option<i64>,
}

/// A counted journal row, with its execution's workflow, and the node and
/// branch it counts under (read out of the entry by the database, as
/// [`rollup_key`] does).
#[derive(sqlx::FromRow)]
struct Fact {
    kind: String,
    node: String,
    branch: String,
    #[sqlx(try_from = "Instant")]
    at: DateTime<Utc>,
    namespace: String,
    workflow_id: String,
    version: i32,
}

/// What one count is kept under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RollupKey {
    pub namespace: String,
    pub workflow_id: String,
    pub day: String,
    pub hour: i32,
    pub version: i32,
    pub node: String,
    pub branch: String,
    pub channel: String,
    pub provider: String,
    pub metric: &'static str,
}

/// The count a journal entry adds, if it adds one: the key it is kept
/// under. Public for the tests that check the rollup against a direct
/// count.
pub fn rollup_key(
    namespace: &str,
    workflow_id: &str,
    version: i32,
    kind: &str,
    entry: &Value,
    at: DateTime<Utc>,
) -> Option<RollupKey> {
    let metric = COUNTED.iter().find(|(k, _)| *k == kind)?.1;
    let text = |field: &str| {
        entry
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (node, branch) = match kind {
        "branch_taken" => (text("node"), text("branch")),
        "completed" => (String::new(), text("outcome")),
        "exit_criteria_met" => (String::new(), text("event")),
        "cancelled" | "held_out" => (String::new(), String::new()),
        _ => (text("node"), String::new()),
    };
    let (day, hour) = day_hour(at);
    Some(RollupKey {
        namespace: namespace.to_owned(),
        workflow_id: workflow_id.to_owned(),
        day,
        hour,
        version,
        node,
        branch,
        channel: String::new(),
        provider: String::new(),
        metric,
    })
}

/// `YYYY-MM-DD` and hour of an instant, UTC.
fn day_hour(at: DateTime<Utc>) -> (String, i32) {
    (
        format!("{:04}-{:02}-{:02}", at.year(), at.month(), at.day()),
        at.hour() as i32,
    )
}

/// What a delivery in `status` counts, as (metric, branch): a message that
/// was opened was sent and delivered too. A message not sent on purpose is
/// `unsent`, with the reason as its branch; one deferred by a cap counts
/// nothing yet (it is sent later, or not).
pub fn delivery_metrics(status: &str) -> &'static [(&'static str, &'static str)] {
    match status {
        "queued" | "sent" => &[("sent", "")],
        "delivered" => &[("sent", ""), ("delivered", "")],
        "opened" => &[("sent", ""), ("delivered", ""), ("opened", "")],
        "clicked" => &[
            ("sent", ""),
            ("delivered", ""),
            ("opened", ""),
            ("clicked", ""),
        ],
        "bounced" => &[("sent", ""), ("bounced", "")],
        "complained" => &[("sent", ""), ("delivered", ""), ("complained", "")],
        "undelivered" => &[("sent", ""), ("undelivered", "")],
        "failed" => &[("send_failed", "")],
        "unsubscribed" => &[("unsent", "unsubscribed")],
        "suppressed" => &[("unsent", "suppressed")],
        "no_address" => &[("unsent", "no_address")],
        "capped" => &[("unsent", "capped")],
        _ => &[],
    }
}

/// What a delivery now in `status` adds, given what was counted of it
/// before (`counted`: `sent,delivered,unsent:capped`, as kept on its row),
/// and what is counted of it after. Each metric counts at most once per
/// delivery, whatever order its statuses came in (a re-send after a failed
/// send counts `send_failed` and then `sent`).
pub fn delivery_delta(
    counted: Option<&str>,
    status: &str,
    unsubscribed: bool,
) -> (Vec<(&'static str, &'static str)>, String) {
    let token = |(m, b): &(&str, &str)| match b.is_empty() {
        true => (*m).to_owned(),
        false => format!("{m}:{b}"),
    };
    let mut have: Vec<String> = counted
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let mut new = Vec::new();
    let link: &[(&str, &str)] = match unsubscribed {
        true => &[("unsubscribed", "")],
        false => &[],
    };
    for m in delivery_metrics(status).iter().chain(link) {
        let t = token(m);
        if !have.contains(&t) {
            have.push(t);
            new.push(*m);
        }
    }
    have.sort_unstable();
    (new, have.join(","))
}

/// A delivery still to count (`rolled` is not its status).
#[derive(sqlx::FromRow)]
struct DeliveryFact {
    id: String,
    namespace: String,
    workflow_id: String,
    execution_id: String,
    node: String,
    channel: String,
    provider: String,
    status: String,
    counted: Option<String>,
    /// 1: the recipient unsubscribed through it.
    unsubscribed: i64,
    #[sqlx(try_from = "Instant")]
    updated_at: DateTime<Utc>,
}

/// An execution converting now.
struct Conversion {
    execution_id: String,
    workflow_id: String,
    version: i32,
    entered_at: DateTime<Utc>,
    holdout: bool,
    path: Vec<(String, String)>,
}

/// A conversion still to count.
#[derive(sqlx::FromRow)]
struct ConversionFact {
    execution_id: String,
    namespace: String,
    workflow_id: String,
    version: i32,
    holdout: bool,
    #[sqlx(json)]
    path: Vec<(String, String)>,
    #[sqlx(try_from = "Instant")]
    converted_at: DateTime<Utc>,
}

/// Delivery counts of a namespace summed per channel, provider and metric
/// (`branch`: the reason of an `unsent` one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DeliveryTotal {
    pub channel: String,
    pub provider: String,
    pub metric: String,
    pub branch: String,
    pub value: i64,
}

/// How often a node failed, summed over a range: executions that failed
/// there (`failed`), failed tries (`action_failed`), sends that failed
/// (`delivery_failed`), messages bounced or undelivered (`bounced`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct FailingNode {
    pub workflow_id: String,
    pub workflow: String,
    pub node: String,
    pub failed: i64,
    pub action_failed: i64,
    pub delivery_failed: i64,
    pub bounced: i64,
}

/// Takes the claim of one rollup source for this transaction: `false` when
/// another node holds it. (The row is made again if someone deleted it,
/// rather than stopping the job for good.)
async fn claim<DB>(tx: &mut DB::Connection, source: &str) -> Result<bool>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'q> Instant: Bind<'q, DB>,
    (i64,): Read<DB>,
{
    sqlx::query(
        "INSERT INTO analytics_cursors (source, position, safe_upto, updated_at)
         VALUES ($1, 0, 0, $2) ON CONFLICT (source) DO NOTHING",
    )
    .bind(source)
    .bind(at(Utc::now()))
    .execute(&mut *tx)
    .await?;
    let held: Option<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT position FROM analytics_cursors WHERE source = $1{}",
        DB::SKIP_LOCKED
    )))
    .bind(source)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(held.is_some())
}

/// Adds counts to `analytics_daily`, in a consistent order (two writers
/// adding to the same rows lock them in the same order).
async fn add_counts<DB>(tx: &mut DB::Connection, counts: HashMap<RollupKey, i64>) -> Result<()>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'q> i32: Bind<'q, DB>,
    for<'q> i64: Bind<'q, DB>,
{
    let mut counts: Vec<(RollupKey, i64)> = counts.into_iter().collect();
    counts.sort_by(|(a, _), (b, _)| {
        (
            &a.namespace,
            &a.workflow_id,
            &a.day,
            a.hour,
            a.version,
            &a.node,
        )
            .cmp(&(
                &b.namespace,
                &b.workflow_id,
                &b.day,
                b.hour,
                b.version,
                &b.node,
            ))
            .then_with(|| {
                (&a.branch, &a.channel, &a.provider, a.metric).cmp(&(
                    &b.branch,
                    &b.channel,
                    &b.provider,
                    b.metric,
                ))
            })
    });
    for chunk in counts.chunks(UPSERT_CHUNK) {
        let mut q = QueryBuilder::<DB>::new(
            "INSERT INTO analytics_daily (namespace, workflow_id, day, hour, version, node, \
             branch, channel, provider, metric, value) ",
        );
        q.push_values(chunk, |mut b, (k, n)| {
            b.push_bind(k.namespace.as_str())
                .push_bind(k.workflow_id.as_str())
                .push_bind(k.day.as_str())
                .push_bind(k.hour)
                .push_bind(k.version)
                .push_bind(k.node.as_str())
                .push_bind(k.branch.as_str())
                .push_bind(k.channel.as_str())
                .push_bind(k.provider.as_str())
                .push_bind(k.metric)
                .push_bind(*n);
        });
        q.push(
            " ON CONFLICT (namespace, workflow_id, day, hour, version, node, branch, channel, \
             provider, metric) DO UPDATE SET value = analytics_daily.value + excluded.value",
        );
        q.build().persistent(false).execute(&mut *tx).await?;
    }
    Ok(())
}

impl<DB> AnalyticsStore for SqlStore<DB>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'q> Option<i32>: Bind<'q, DB>,
    for<'q> i32: Bind<'q, DB>,
    for<'q> i64: Bind<'q, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> Option<i64>: Bind<'q, DB>,
    Fact: Read<DB>,
    Cursor: Read<DB>,
    AnalyticsRow: Read<DB>,
    (i64,): Read<DB>,
    (Option<i64>,): Read<DB>,
    (i64, i64): Read<DB>,
    (String, i32): Read<DB>,
    (Option<String>, String, i64): Read<DB>,
    for<'a> Option<&'a str>: Bind<'a, DB>,
    DeliveryFact: Read<DB>,
    ConversionFact: Read<DB>,
    for<'q> bool: Bind<'q, DB>,
    for<'q> Doc: Bind<'q, DB>,
    (String, i32, i64, String, Option<i32>): Read<DB>,
    (String, i32, Instant): Read<DB>,
    (String, sqlx::types::Json<Value>): Read<DB>,
    DeliveryTotal: Read<DB>,
    FailingNode: Read<DB>,
    RetentionPolicy: Read<DB>,
    PolicyRow: Read<DB>,
    (String, Instant): Read<DB>,
    (Instant, String): Read<DB>,
    (String,): Read<DB>,
{
    async fn rollup_journal(&self, limit: u32) -> Result<Option<u64>> {
        let limit = limit.max(1);
        let mut tx = self.pool.begin().await?;
        // PostgreSQL: the newest visible id is read first, before this
        // transaction writes or locks anything, so before it has an xid of
        // its own (see the watermark below).
        let newest_first = match DB::SNAPSHOT_HORIZON {
            Some(_) => Some(newest_id(&mut tx).await?),
            None => None,
        };
        // The row exists from the migration on; made again if someone
        // deleted it, rather than stopping the job for good.
        sqlx::query(
            "INSERT INTO analytics_cursors (source, position, safe_upto, updated_at)
             VALUES ('journal', 0, 0, $1) ON CONFLICT (source) DO NOTHING",
        )
        .bind(at(Utc::now()))
        .execute(&mut *tx)
        .await?;
        let cursor: Option<Cursor> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT position, safe_upto, pending_upto, pending_xid FROM analytics_cursors
             WHERE source = 'journal'{}",
            DB::SKIP_LOCKED
        )))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut c) = cursor else {
            return Ok(None);
        };
        match (DB::SNAPSHOT_HORIZON, newest_first) {
            (Some(horizon), Some(newest)) => {
                // `own`: this transaction's xid, handed out after `newest`
                // was read. A transaction that holds an id up to `newest`
                // took it before that read, and had its xid before its id
                // (a commit writes its executions' rows first), so its xid
                // is lower than `own`. Once the oldest running transaction
                // is past `own`, every id up to `newest` is settled.
                let (xmin, own): (i64, i64) = sqlx::query_as(horizon).fetch_one(&mut *tx).await?;
                let proven = match (c.pending_upto, c.pending_xid) {
                    // A bound from another cluster's xids (a restored
                    // dump): dropped, and a new one recorded.
                    (Some(_), Some(bound)) if bound > own => true,
                    (Some(upto), Some(bound)) if xmin >= bound => {
                        c.safe_upto = c.safe_upto.max(upto);
                        true
                    }
                    (Some(_), Some(_)) => false,
                    _ => true,
                };
                // A new watermark to prove, once the last one is.
                if proven && newest > c.safe_upto {
                    c.pending_upto = Some(newest);
                    c.pending_xid = Some(own);
                } else if proven {
                    c.pending_upto = None;
                    c.pending_xid = None;
                }
            }
            // One writer, committing in id order: what is seen is settled.
            _ => c.safe_upto = newest_id(&mut tx).await?,
        }
        let ids: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM journal WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3",
        )
        .bind(c.position)
        .bind(c.safe_upto)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let from = c.position;
        // Everything up to `safe_upto` is visible: a short batch ends there.
        let upto = match ids.last() {
            Some(&(last,)) if ids.len() as u64 >= u64::from(limit) => last,
            _ => c.safe_upto.max(from),
        };
        let taken = ids.len() as u64;
        if upto > from {
            let facts: Vec<Fact> = sqlx::query_as(sqlx::AssertSqlSafe(FACTS.get::<DB>()))
                .bind(from)
                .bind(upto)
                .fetch_all(&mut *tx)
                .await?;
            // Counted by reference first (no allocation a row), then made
            // keys of once each.
            let mut tally: HashMap<Tally<'_>, i64> = HashMap::new();
            for f in &facts {
                let Some(&(_, metric)) = COUNTED.iter().find(|(k, _)| *k == f.kind) else {
                    continue;
                };
                let hour = f.at.timestamp().div_euclid(3600);
                let key = (
                    f.namespace.as_str(),
                    f.workflow_id.as_str(),
                    hour,
                    f.version,
                    f.node.as_str(),
                    f.branch.as_str(),
                    metric,
                );
                *tally.entry(key).or_insert(0) += 1;
            }
            let mut counts: HashMap<RollupKey, i64> = HashMap::with_capacity(tally.len());
            for ((namespace, workflow_id, hour, version, node, branch, metric), n) in tally {
                let at = DateTime::<Utc>::from_timestamp(hour * 3600, 0).unwrap_or_default();
                let (day, hour) = day_hour(at);
                let key = RollupKey {
                    namespace: namespace.to_owned(),
                    workflow_id: workflow_id.to_owned(),
                    day,
                    hour,
                    version,
                    node: node.to_owned(),
                    branch: branch.to_owned(),
                    channel: String::new(),
                    provider: String::new(),
                    metric,
                };
                *counts.entry(key).or_insert(0) += n;
            }
            add_counts::<DB>(&mut tx, counts).await?;
        }
        sqlx::query(
            "UPDATE analytics_cursors
             SET position = $1, safe_upto = $2, pending_upto = $3, pending_xid = $4, updated_at = $5
             WHERE source = 'journal'",
        )
        .bind(upto)
        .bind(c.safe_upto)
        .bind(c.pending_upto)
        .bind(c.pending_xid)
        .bind(at(Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(taken))
    }

    async fn rollup_deliveries(&self, limit: u32) -> Result<Option<u64>> {
        let limit = limit.max(1);
        let mut tx = self.pool.begin().await?;
        if !claim::<DB>(&mut tx, "deliveries").await? {
            return Ok(None);
        }
        // Rows a provider's report is moving now are passed over (PostgreSQL
        // locks the ones read until the commit, so the status counted is
        // the status marked).
        let facts: Vec<DeliveryFact> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, namespace, workflow_id, execution_id, node, channel, provider, status,
                    counted, CAST(CASE WHEN unsubscribed_at IS NULL THEN 0 ELSE 1 END AS BIGINT)
                        AS unsubscribed, updated_at
             FROM deliveries WHERE rolled IS NULL OR rolled <> status
             ORDER BY id LIMIT $1{}",
            DB::SKIP_LOCKED
        )))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if facts.is_empty() {
            // Ended now, not when dropped: the claim is free at once.
            tx.commit().await?;
            return Ok(Some(0));
        }
        // The executions' versions (not joined above: the lock is the
        // deliveries' alone).
        let mut versions: HashMap<String, i32> = HashMap::with_capacity(facts.len());
        let mut ids: Vec<&str> = facts.iter().map(|f| f.execution_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(UPSERT_CHUNK) {
            let mut q = QueryBuilder::<DB>::new("SELECT id, version FROM executions WHERE id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            q.push(")");
            let rows: Vec<(String, i32)> = q.build_query_as().fetch_all(&mut *tx).await?;
            versions.extend(rows);
        }
        let mut counts: HashMap<RollupKey, i64> = HashMap::new();
        // The rows to mark, by what is counted of them after.
        let mut marks: HashMap<String, Vec<&str>> = HashMap::new();
        for f in &facts {
            let (day, hour) = day_hour(f.updated_at);
            let version = versions.get(f.execution_id.as_str()).copied().unwrap_or(0);
            let (new, after) = delivery_delta(f.counted.as_deref(), &f.status, f.unsubscribed == 1);
            marks.entry(after).or_default().push(f.id.as_str());
            for (metric, branch) in new {
                let key = RollupKey {
                    namespace: f.namespace.clone(),
                    workflow_id: f.workflow_id.clone(),
                    day: day.clone(),
                    hour,
                    version,
                    node: f.node.clone(),
                    branch: branch.to_owned(),
                    channel: f.channel.clone(),
                    provider: f.provider.clone(),
                    metric,
                };
                *counts.entry(key).or_insert(0) += 1;
            }
        }
        add_counts::<DB>(&mut tx, counts).await?;
        for (after, ids) in &marks {
            for chunk in ids.chunks(UPSERT_CHUNK) {
                let mut q =
                    QueryBuilder::<DB>::new("UPDATE deliveries SET rolled = status, counted = ");
                q.push_bind(after.as_str()).push(" WHERE id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(")");
                q.build().persistent(false).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(Some(facts.len() as u64))
    }

    async fn record_conversions(
        &self,
        namespace: &str,
        event: &str,
        key: &str,
        at_time: DateTime<Utc>,
    ) -> Result<u64> {
        let goals: Vec<(String, i32, i64, String, Option<i32>)> = sqlx::query_as(
            "SELECT workflow_id, version, within_seconds, workflow_key, holdout_below
             FROM workflow_goals WHERE namespace = $1 AND event = $2",
        )
        .bind(namespace)
        .bind(event)
        .fetch_all(&self.pool)
        .await?;
        if goals.is_empty() {
            return Ok(0);
        }
        // Per version: its window, and whether the subject is held out.
        let mut versions: HashMap<(String, i32), (i64, bool)> = HashMap::new();
        let mut longest: HashMap<String, i64> = HashMap::new();
        for (w, v, secs, workflow_key, below) in goals {
            let l = longest.entry(w.clone()).or_insert(0);
            *l = (*l).max(secs);
            let held_out = below.is_some_and(|b| {
                sojourn_runtime::hash::holdout_bucket(&workflow_key, key)
                    < u64::try_from(b).unwrap_or(0)
            });
            versions.insert((w, v), (secs, held_out));
        }
        let mut converted: Vec<Conversion> = Vec::new();
        for (workflow_id, secs) in &longest {
            let since = at_time - chrono::Duration::seconds(*secs);
            let found: Vec<(String, i32, Instant)> = sqlx::query_as(
                "SELECT e.id, e.version, e.created_at FROM executions e
                 WHERE e.workflow_id = $1 AND e.subject = $2 AND e.namespace = $3
                   AND e.created_at >= $4 AND e.created_at <= $5
                   AND NOT EXISTS (SELECT 1 FROM conversions c WHERE c.execution_id = e.id)",
            )
            .bind(workflow_id.as_str())
            .bind(key)
            .bind(namespace)
            .bind(at(since))
            .bind(at(at_time))
            .fetch_all(&self.pool)
            .await?;
            for (id, version, Instant(entered_at)) in found {
                // Each version's own window.
                let Some(&(secs, holdout)) = versions.get(&(workflow_id.clone(), version)) else {
                    continue;
                };
                if entered_at < at_time - chrono::Duration::seconds(secs) {
                    continue;
                }
                converted.push(Conversion {
                    execution_id: id,
                    workflow_id: workflow_id.clone(),
                    version,
                    entered_at,
                    holdout,
                    path: Vec::new(),
                });
            }
        }
        if converted.is_empty() {
            return Ok(0);
        }
        // The branches each had taken by now (the holdout takes none).
        for chunk in converted.chunks_mut(UPSERT_CHUNK) {
            let mut q = QueryBuilder::<DB>::new(
                "SELECT execution_id, entry FROM journal WHERE kind = 'branch_taken' AND at <= ",
            );
            q.push_bind(at(at_time)).push(" AND execution_id IN (");
            let mut list = q.separated(", ");
            for c in chunk.iter() {
                list.push_bind(c.execution_id.as_str());
            }
            q.push(") ORDER BY id");
            let rows: Vec<(String, sqlx::types::Json<Value>)> =
                q.build_query_as().fetch_all(&self.pool).await?;
            for (id, entry) in rows {
                let Some(c) = chunk.iter_mut().find(|c| c.execution_id == id) else {
                    continue;
                };
                let text = |f: &str| entry.get(f).and_then(Value::as_str).map(str::to_owned);
                if let (Some(node), Some(branch)) = (text("node"), text("branch")) {
                    c.path.push((node, branch));
                }
            }
        }
        let mut q = QueryBuilder::<DB>::new(
            "INSERT INTO conversions (execution_id, namespace, workflow_id, version, event, \
             holdout, path, entered_at, converted_at) ",
        );
        let mut docs = Vec::with_capacity(converted.len());
        for c in &converted {
            docs.push(Doc::of("conversion path", &c.path)?);
        }
        q.push_values(converted.iter().zip(docs), |mut b, (c, path)| {
            b.push_bind(c.execution_id.as_str())
                .push_bind(namespace)
                .push_bind(c.workflow_id.as_str())
                .push_bind(c.version)
                .push_bind(event)
                .push_bind(c.holdout)
                .push_bind(path)
                .push_bind(at(c.entered_at))
                .push_bind(at(at_time));
        });
        q.push(" ON CONFLICT (execution_id) DO NOTHING RETURNING execution_id");
        let done: Vec<(String,)> = q
            .build_query_as()
            .persistent(false)
            .fetch_all(&self.pool)
            .await?;
        Ok(done.len() as u64)
    }

    async fn rollup_conversions(&self, limit: u32) -> Result<Option<u64>> {
        let limit = limit.max(1);
        let mut tx = self.pool.begin().await?;
        if !claim::<DB>(&mut tx, "conversions").await? {
            return Ok(None);
        }
        let rows: Vec<ConversionFact> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT execution_id, namespace, workflow_id, version, holdout, path, converted_at
             FROM conversions WHERE NOT rolled ORDER BY execution_id LIMIT $1{}",
            DB::SKIP_LOCKED
        )))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            // Ended now, not when dropped: the claim is free at once.
            tx.commit().await?;
            return Ok(Some(0));
        }
        let mut counts: HashMap<RollupKey, i64> = HashMap::new();
        for r in &rows {
            let (day, hour) = day_hour(r.converted_at);
            let mut add = |node: &str, branch: &str| {
                let key = RollupKey {
                    namespace: r.namespace.clone(),
                    workflow_id: r.workflow_id.clone(),
                    day: day.clone(),
                    hour,
                    version: r.version,
                    node: node.to_owned(),
                    branch: branch.to_owned(),
                    channel: String::new(),
                    provider: String::new(),
                    metric: "converted",
                };
                *counts.entry(key).or_insert(0) += 1;
            };
            add("", if r.holdout { "holdout" } else { "" });
            // Each branch once, however often it was taken.
            let mut seen = std::collections::HashSet::new();
            for (node, branch) in r.path.iter() {
                if seen.insert((node, branch)) {
                    add(node, branch);
                }
            }
        }
        add_counts::<DB>(&mut tx, counts).await?;
        for chunk in rows.chunks(UPSERT_CHUNK) {
            let mut q = QueryBuilder::<DB>::new(
                "UPDATE conversions SET rolled = TRUE WHERE execution_id IN (",
            );
            let mut list = q.separated(", ");
            for r in chunk {
                list.push_bind(r.execution_id.as_str());
            }
            q.push(")");
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Some(rows.len() as u64))
    }

    async fn retention(&self, namespace: &str) -> Result<Option<RetentionPolicy>> {
        self.read_retention(namespace).await
    }

    async fn set_retention(
        &self,
        namespace: &str,
        policy: &RetentionPolicy,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.write_retention(namespace, policy, now).await
    }

    async fn sweep_retention(
        &self,
        batch: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<Option<Swept>>> {
        self.sweep(batch, now).await
    }

    async fn delivery_totals(
        &self,
        namespace: &str,
        workflow_id: Option<&str>,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<DeliveryTotal>> {
        Ok(sqlx::query_as(
            "SELECT channel, provider, metric, branch, CAST(SUM(value) AS BIGINT) AS value
             FROM analytics_daily
             WHERE namespace = $1 AND ($2 IS NULL OR workflow_id = $2)
               AND day >= $3 AND day <= $4 AND channel <> ''
             GROUP BY channel, provider, metric, branch
             ORDER BY channel, provider, metric, branch",
        )
        .bind(namespace)
        .bind(workflow_id)
        .bind(from_day)
        .bind(to_day)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn failing_nodes(
        &self,
        namespace: &str,
        workflow_id: Option<&str>,
        from_day: &str,
        to_day: &str,
        limit: u32,
    ) -> Result<Vec<FailingNode>> {
        Ok(sqlx::query_as(
            "SELECT a.workflow_id, COALESCE(MAX(w.key), a.workflow_id) AS workflow, a.node,
                    CAST(SUM(CASE WHEN a.metric = 'failed' AND a.channel = '' THEN a.value ELSE 0 END)
                        AS BIGINT) AS failed,
                    CAST(SUM(CASE WHEN a.metric = 'action_failed' THEN a.value ELSE 0 END) AS BIGINT)
                        AS action_failed,
                    CAST(SUM(CASE WHEN a.metric = 'send_failed' THEN a.value ELSE 0 END) AS BIGINT)
                        AS delivery_failed,
                    CAST(SUM(CASE WHEN a.metric IN ('bounced', 'undelivered') THEN a.value ELSE 0 END)
                        AS BIGINT) AS bounced
             FROM analytics_daily a LEFT JOIN workflows w ON w.id = a.workflow_id
             WHERE a.namespace = $1 AND ($2 IS NULL OR a.workflow_id = $2)
               AND a.day >= $3 AND a.day <= $4 AND a.node <> ''
               AND a.metric IN ('failed', 'action_failed', 'send_failed', 'bounced', 'undelivered')
             GROUP BY a.workflow_id, a.node
             ORDER BY failed DESC, action_failed DESC, delivery_failed DESC, bounced DESC,
                      a.workflow_id, a.node
             LIMIT $5",
        )
        .bind(namespace)
        .bind(workflow_id)
        .bind(from_day)
        .bind(to_day)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn analytics_counts(
        &self,
        namespace: &str,
        workflow_id: &str,
        version: Option<i32>,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<AnalyticsRow>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT day, hour, version, node, branch, channel, provider, metric, value
             {IN_RANGE} ORDER BY day, hour, version, node, branch, metric"
        )))
        .bind(namespace)
        .bind(workflow_id)
        .bind(from_day)
        .bind(to_day)
        .bind(version)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn analytics_totals(
        &self,
        namespace: &str,
        workflow_id: &str,
        version: Option<i32>,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<AnalyticsRow>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT '' AS day, 0 AS hour, version, node, branch, channel, provider, metric,
                    CAST(SUM(value) AS BIGINT) AS value
             {IN_RANGE}
             GROUP BY version, node, branch, channel, provider, metric
             ORDER BY version, node, branch, metric"
        )))
        .bind(namespace)
        .bind(workflow_id)
        .bind(from_day)
        .bind(to_day)
        .bind(version)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn current_positions(
        &self,
        namespace: &str,
        workflow_id: &str,
        version: Option<i32>,
    ) -> Result<Vec<(Option<String>, String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT current_node, status, COUNT(*) FROM executions
             WHERE namespace = $1 AND workflow_id = $2 AND ($3 IS NULL OR version = $3)
               AND status IN ('pending', 'running', 'waiting', 'paused')
             GROUP BY current_node, status ORDER BY current_node, status",
        )
        .bind(namespace)
        .bind(workflow_id)
        .bind(version)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::delivery_delta;

    #[test]
    fn each_delivery_metric_counts_once_whatever_order_the_statuses_come_in() {
        let (new, after) = delivery_delta(None, "sent", false);
        assert_eq!((new, after.as_str()), (vec![("sent", "")], "sent"));
        let (new, after) = delivery_delta(Some("sent"), "clicked", false);
        assert_eq!(new, [("delivered", ""), ("opened", ""), ("clicked", "")]);
        assert_eq!(after, "clicked,delivered,opened,sent");
        // Back and forth counts nothing again.
        let (new, _) = delivery_delta(Some(&after), "delivered", false);
        assert!(new.is_empty());
        // A failed send sent again: both count, once.
        let (new, after) = delivery_delta(Some("send_failed"), "sent", false);
        assert_eq!(
            (new, after.as_str()),
            (vec![("sent", "")], "send_failed,sent")
        );
        let (new, after) = delivery_delta(Some(&after), "failed", false);
        assert!(new.is_empty(), "{after}");
        // Not sent on purpose: the reason is the branch.
        let (new, after) = delivery_delta(None, "capped", false);
        assert_eq!(
            (new, after.as_str()),
            (vec![("unsent", "capped")], "unsent:capped")
        );
        // Unsubscribed through its link: once, with what the status adds.
        let (new, after) = delivery_delta(Some("delivered,sent"), "opened", true);
        assert_eq!(new, [("opened", ""), ("unsubscribed", "")]);
        let (new, _) = delivery_delta(Some(&after), "clicked", true);
        assert_eq!(new, [("clicked", "")]);
        // Deferred counts nothing yet; unknown statuses nothing at all.
        assert_eq!(
            delivery_delta(None, "deferred", false),
            (vec![], String::new())
        );
        assert_eq!(
            delivery_delta(None, "mystery", false),
            (vec![], String::new())
        );
    }
}
