//! Retention (`retention_policies`, `retention_cursors`): how long a
//! namespace keeps the journal, node executions and deliveries of finished
//! executions, and the sweep that deletes what is older, a small batch per
//! transaction. Analytics rollups are kept. The sweep goes through finished
//! executions in the order they finished; a journal row is deleted only
//! once the rollup has counted it, a delivery only once its status has
//! been counted: an execution with rows still to count holds its target's
//! cursor until they are.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Executor, QueryBuilder};

use crate::Result;
use crate::sql::{Bind, Instant, Read, Sql, SqlStore, at};

/// What a namespace keeps, in days (`None`: for good).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct RetentionPolicy {
    /// The journal of finished executions.
    pub journal_days: Option<i32>,
    /// Node executions (attempts, inputs, outputs) of finished executions.
    pub node_executions_days: Option<i32>,
    /// The delivery log of finished executions.
    pub deliveries_days: Option<i32>,
}

/// What one sweep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    pub namespace: String,
    /// `journal`, `node_executions` or `deliveries`.
    pub target: &'static str,
    /// Executions whose rows were looked at.
    pub executions: u64,
    /// Rows deleted.
    pub rows: u64,
}

/// The targets, their tables, and what must be true of a row before it
/// goes (it has been counted).
const TARGETS: [(&str, &str); 3] = [
    (
        "journal",
        "id <= (SELECT position FROM analytics_cursors WHERE source = 'journal')",
    ),
    ("node_executions", "1 = 1"),
    ("deliveries", "rolled = status"),
];

#[derive(Debug, sqlx::FromRow)]
#[doc(hidden)]
pub struct PolicyRow {
    namespace: String,
    journal_days: Option<i32>,
    node_executions_days: Option<i32>,
    deliveries_days: Option<i32>,
}

impl<DB> SqlStore<DB>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'q> Option<i32>: Bind<'q, DB>,
    for<'q> i64: Bind<'q, DB>,
    for<'q> Instant: Bind<'q, DB>,
    RetentionPolicy: Read<DB>,
    PolicyRow: Read<DB>,
    (i64,): Read<DB>,
    (String, Instant): Read<DB>,
    (Instant, String): Read<DB>,
    (String,): Read<DB>,
{
    pub(crate) async fn read_retention(&self, namespace: &str) -> Result<Option<RetentionPolicy>> {
        Ok(sqlx::query_as(
            "SELECT journal_days, node_executions_days, deliveries_days
             FROM retention_policies WHERE namespace = $1",
        )
        .bind(namespace)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(crate) async fn write_retention(
        &self,
        namespace: &str,
        policy: &RetentionPolicy,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO retention_policies
                 (namespace, journal_days, node_executions_days, deliveries_days, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (namespace) DO UPDATE SET journal_days = excluded.journal_days,
                 node_executions_days = excluded.node_executions_days,
                 deliveries_days = excluded.deliveries_days, updated_at = excluded.updated_at",
        )
        .bind(namespace)
        .bind(policy.journal_days)
        .bind(policy.node_executions_days)
        .bind(policy.deliveries_days)
        .bind(at(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One batch: the first namespace and target with finished executions
    /// past their retention, at most `batch` of them. `None`: another node
    /// is sweeping; `Some(None)`: nothing to sweep.
    pub(crate) async fn sweep(
        &self,
        batch: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<Option<Swept>>> {
        let mut tx = self.pool.begin().await?;
        if !super::claim::<DB>(&mut tx, "retention").await? {
            return Ok(None);
        }
        let policies: Vec<PolicyRow> = sqlx::query_as(
            "SELECT namespace, journal_days, node_executions_days, deliveries_days
             FROM retention_policies ORDER BY namespace",
        )
        .fetch_all(&mut *tx)
        .await?;
        for p in policies {
            let days = [p.journal_days, p.node_executions_days, p.deliveries_days];
            for ((target, counted), days) in TARGETS.iter().zip(days) {
                let Some(days) = days else { continue };
                let cutoff = now - chrono::Duration::days(i64::from(days.max(1)));
                let cursor: Option<(Instant, String)> = sqlx::query_as(
                    "SELECT finished_at, execution_id FROM retention_cursors
                     WHERE namespace = $1 AND target = $2",
                )
                .bind(p.namespace.as_str())
                .bind(*target)
                .fetch_optional(&mut *tx)
                .await?;
                let (from_at, from_id) =
                    cursor.unwrap_or((Instant(DateTime::<Utc>::UNIX_EPOCH), String::new()));
                // Share-locked until the batch commits: an operator's retry
                // of one of them (its row updated) waits for the sweep
                // rather than have its new records swept.
                let finished: Vec<(String, Instant)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT id, finished_at FROM executions
                     WHERE namespace = $1 AND finished_at IS NOT NULL AND finished_at < $2
                       AND (finished_at > $3 OR (finished_at = $3 AND id > $4))
                       AND status IN ('completed', 'failed', 'cancelled')
                     ORDER BY finished_at, id LIMIT $5{}",
                        DB::FOR_SHARE
                    )))
                    .bind(p.namespace.as_str())
                    .bind(at(cutoff))
                    .bind(from_at)
                    .bind(from_id.as_str())
                    .bind(i64::from(batch.max(1)))
                    .fetch_all(&mut *tx)
                    .await?;
                if finished.is_empty() {
                    continue;
                }
                let in_list = |q: &mut QueryBuilder<DB>| {
                    let mut list = q.separated(", ");
                    for (id, _) in &finished {
                        list.push_bind(id.as_str());
                    }
                    q.push(")");
                };
                let mut q = QueryBuilder::<DB>::new(format!(
                    "DELETE FROM {target} WHERE {counted} AND execution_id IN ("
                ));
                in_list(&mut q);
                q.push(" RETURNING CAST(1 AS BIGINT)");
                let deleted: Vec<(i64,)> = q.build_query_as().fetch_all(&mut *tx).await?;
                let rows = deleted.len() as u64;
                // What could not go yet (not counted): the cursor stops
                // before the first execution that still has some.
                let mut q = QueryBuilder::<DB>::new(format!(
                    "SELECT DISTINCT execution_id FROM {target} WHERE execution_id IN ("
                ));
                in_list(&mut q);
                let left: Vec<(String,)> = q.build_query_as().fetch_all(&mut *tx).await?;
                let done: Vec<&(String, Instant)> = finished
                    .iter()
                    .take_while(|(id, _)| !left.iter().any(|(l,)| l == id))
                    .collect();
                if let Some((id, finished_at)) = done.last() {
                    sqlx::query(
                        "INSERT INTO retention_cursors (namespace, target, finished_at, execution_id)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (namespace, target) DO UPDATE
                         SET finished_at = excluded.finished_at, execution_id = excluded.execution_id",
                    )
                    .bind(p.namespace.as_str())
                    .bind(*target)
                    .bind(*finished_at)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                if done.is_empty() && rows == 0 {
                    // Held by rows still to count: the next target.
                    continue;
                }
                tx.commit().await?;
                return Ok(Some(Some(Swept {
                    namespace: p.namespace,
                    target,
                    executions: done.len() as u64,
                    rows,
                })));
            }
        }
        tx.commit().await?;
        Ok(Some(None))
    }
}
