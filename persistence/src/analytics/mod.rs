//! Analytics (`analytics_daily`, `analytics_cursors`): counts rolled up
//! from what the engine already writes, never by a second write on an
//! execution's path.
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
use crate::sql::{Bind, Instant, Read, Sql, SqlStore, at};

/// The journal kinds the rollup counts, and the metric each becomes.
const COUNTED: [(&str, &str); 8] = [
    ("node_entered", "entered"),
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

/// Rows of `analytics_daily` written per statement.
const UPSERT_CHUNK: usize = 500;

/// Analytics rollups and what reports read.
pub trait AnalyticsStore: Send + Sync {
    /// Rolls up at most `limit` settled journal rows past the cursor, in one
    /// transaction. `None`: another node holds the cursor now. `Some(n)`:
    /// the cursor moved past `n` rows (0: nothing settled to count).
    fn rollup_journal(&self, limit: u32) -> impl Future<Output = Result<Option<u64>>> + Send;

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

/// A counted journal row, with its execution's workflow.
#[derive(sqlx::FromRow)]
struct Fact {
    kind: String,
    #[sqlx(json)]
    entry: Value,
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
        "cancelled" => (String::new(), String::new()),
        _ => (text("node"), String::new()),
    };
    Some(RollupKey {
        namespace: namespace.to_owned(),
        workflow_id: workflow_id.to_owned(),
        day: format!("{:04}-{:02}-{:02}", at.year(), at.month(), at.day()),
        hour: at.hour() as i32,
        version,
        node,
        branch,
        metric,
    })
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
    (Option<String>, String, i64): Read<DB>,
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
            let kinds = COUNTED_SQL.as_str();
            let facts: Vec<Fact> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT j.kind, j.entry, j.at, e.namespace, e.workflow_id, e.version
                 FROM journal j JOIN executions e ON e.id = j.execution_id
                 WHERE j.id > $1 AND j.id <= $2 AND j.kind IN ({kinds})"
            )))
            .bind(from)
            .bind(upto)
            .fetch_all(&mut *tx)
            .await?;
            let mut counts: HashMap<RollupKey, i64> = HashMap::new();
            for f in &facts {
                if let Some(key) = rollup_key(
                    &f.namespace,
                    &f.workflow_id,
                    f.version,
                    &f.kind,
                    &f.entry,
                    f.at,
                ) {
                    *counts.entry(key).or_insert(0) += 1;
                }
            }
            let counts: Vec<(RollupKey, i64)> = counts.into_iter().collect();
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
                        .push_bind("")
                        .push_bind("")
                        .push_bind(k.metric)
                        .push_bind(*n);
                });
                q.push(
                    " ON CONFLICT (namespace, workflow_id, day, hour, version, node, branch, channel, \
                     provider, metric) DO UPDATE SET value = analytics_daily.value + excluded.value",
                );
                q.build().persistent(false).execute(&mut *tx).await?;
            }
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
