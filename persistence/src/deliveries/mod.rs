//! The delivery log (`deliveries`): one row per send attempt of a channel
//! message to one provider, written by the channel workers in batches, and
//! listed with filters and cursor paging. Every statement is the same on
//! both databases.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{Executor, QueryBuilder};

use crate::Result;
use crate::audience::{Suppression, normalize_address};
use crate::sql::{Bind, Instant, Read, Sql, SqlStore, at};
use crate::types::{DeliveryQuery, DeliveryRecord, NewDelivery};

/// The delivery log.
pub trait DeliveryStore: Send + Sync {
    /// Records deliveries, each under its execution's namespace and
    /// workflow (one statement). The same attempt and provider again (a
    /// re-send after a crash) updates its row. Deliveries of an execution
    /// that does not exist are left out.
    fn add_deliveries(&self, batch: &[NewDelivery]) -> impl Future<Output = Result<()>> + Send;

    /// Deliveries of a namespace, newest first, filtered.
    fn list_deliveries(
        &self,
        query: &DeliveryQuery,
    ) -> impl Future<Output = Result<Vec<DeliveryRecord>>> + Send;

    /// Marks the message (by its idempotency key) the recipient
    /// unsubscribed through, for the analytics, once: its newest delivery
    /// that went (a message failed over to a second provider is one
    /// message). Returns how many were marked (0 or 1).
    fn mark_unsubscribed(
        &self,
        namespace: &str,
        idempotency_key: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Applies a provider's verified status report, once: its receipt is
    /// recorded (under `scope`: the provider, or the key that signed it)
    /// and each delivery the provider knows by a message id moves
    /// to its status, in one transaction. A status never moves back down
    /// (queued < sent < delivered < opened < clicked < the final ones:
    /// bounced, complained, undelivered, failed), and a final one stays.
    /// `None` when the receipt was seen before (a replay: nothing
    /// changes); else how many deliveries moved.
    fn apply_delivery_report(
        &self,
        provider: &str,
        scope: &str,
        receipt: &str,
        updates: &[(String, String)],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<u64>>> + Send;
}

/// A status's rank, in SQL: a report may only move a delivery up.
fn rank(column: &str) -> String {
    format!(
        "(CASE {column} WHEN 'queued' THEN 0 WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 \
         WHEN 'opened' THEN 3 WHEN 'clicked' THEN 4 ELSE 5 END)"
    )
}

/// Deliveries written per statement.
const CHUNK: usize = 200;

const COLUMNS: &str = "id, namespace, workflow_id, execution_id, node, attempt, idempotency_key, \
                       channel, provider, recipient, status, provider_message_id, error_class, \
                       error, created_at, duration_ms, updated_at";

impl<DB> DeliveryStore for SqlStore<DB>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'a> Option<&'a str>: Bind<'a, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> i64: Bind<'q, DB>,
    for<'q> i32: Bind<'q, DB>,
    DeliveryRecord: Read<DB>,
    (String,): Read<DB>,
    (String, String, String): Read<DB>,
{
    async fn add_deliveries(&self, batch: &[NewDelivery]) -> Result<()> {
        // One row per attempt and provider (the last written wins): an
        // upsert may touch a row only once per statement.
        let mut seen = std::collections::HashSet::with_capacity(batch.len());
        let mut rows: Vec<&NewDelivery> = batch
            .iter()
            .rev()
            .filter(|d| seen.insert((d.idempotency_key.as_str(), d.provider.as_str())))
            .collect();
        rows.reverse();
        // SQLite takes at most 500 terms in a compound SELECT: statements
        // of CHUNK rows.
        for chunk in rows.chunks(CHUNK) {
            self.insert_deliveries(chunk).await?;
        }
        Ok(())
    }

    async fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<DeliveryRecord>> {
        self.select_deliveries(q).await
    }

    async fn mark_unsubscribed(
        &self,
        namespace: &str,
        idempotency_key: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        // `rolled` back to NULL: the rollup counts the unsubscribe.
        let marked: Vec<(String,)> = sqlx::query_as(
            "UPDATE deliveries SET unsubscribed_at = $3, updated_at = $3, rolled = NULL
             WHERE id = (SELECT MAX(id) FROM deliveries
                         WHERE namespace = $1 AND idempotency_key = $2 AND error_class IS NULL
                           AND provider <> '-')
               AND unsubscribed_at IS NULL
             RETURNING id",
        )
        .bind(namespace)
        .bind(idempotency_key)
        .bind(at(now))
        .fetch_all(&self.pool)
        .await?;
        Ok(marked.len() as u64)
    }

    async fn apply_delivery_report(
        &self,
        provider: &str,
        scope: &str,
        receipt: &str,
        updates: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<Option<u64>> {
        self.apply_report(provider, scope, receipt, updates, now)
            .await
    }
}

impl<DB> SqlStore<DB>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'a> Option<&'a str>: Bind<'a, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> i64: Bind<'q, DB>,
    for<'q> i32: Bind<'q, DB>,
    DeliveryRecord: Read<DB>,
    (String,): Read<DB>,
    (String, String, String): Read<DB>,
{
    /// One statement: INSERT … SELECT from each delivery's execution row
    /// (its namespace and workflow come from the database). A row already
    /// there (a re-send after a crash) is updated if it was a failed send,
    /// or if this one went and ranks at least as high (a provider's report
    /// may have moved it further meanwhile); a failure never replaces a
    /// send that went.
    async fn insert_deliveries(&self, batch: &[&NewDelivery]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut sql = QueryBuilder::<DB>::new("INSERT INTO deliveries (");
        sql.push(COLUMNS).push(") ");
        for (n, d) in batch.iter().enumerate() {
            if n > 0 {
                sql.push(" UNION ALL ");
            }
            sql.push("SELECT ")
                .push_bind(d.id.as_str())
                .push(", e.namespace, e.workflow_id, e.id, ")
                .push_bind(d.node.as_str())
                .push(", ")
                .push_bind(i32::try_from(d.attempt).unwrap_or(i32::MAX))
                .push(", ")
                .push_bind(d.idempotency_key.as_str())
                .push(", ")
                .push_bind(d.channel.as_str())
                .push(", ")
                .push_bind(d.provider.as_str())
                .push(", ")
                .push_bind(d.recipient.as_str())
                .push(", ")
                .push_bind(d.status.as_str())
                .push(", ")
                .push_bind(d.provider_message_id.as_deref())
                .push(", ")
                .push_bind(d.error_class.as_deref())
                .push(", ")
                .push_bind(d.error.as_deref())
                .push(", ")
                .push_bind(at(d.created_at))
                .push(", ")
                .push_bind(d.duration_ms)
                .push(", ")
                .push_bind(at(d.created_at))
                .push(" FROM executions e WHERE e.id = ")
                .push_bind(d.execution_id.as_str());
        }
        sql.push(
            " ON CONFLICT (idempotency_key, provider) DO UPDATE SET
                 status = excluded.status,
                 provider_message_id = excluded.provider_message_id,
                 error_class = excluded.error_class,
                 error = excluded.error,
                 duration_ms = excluded.duration_ms,
                 updated_at = excluded.updated_at
             WHERE deliveries.error_class IS NOT NULL OR (excluded.error_class IS NULL AND ",
        );
        // A failed send is replaced by anything; a send that went is never
        // replaced by a failure, nor moved down.
        sql.push(rank("deliveries.status"))
            .push(" <= ")
            .push(rank("excluded.status"))
            .push(")");
        sql.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn select_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<DeliveryRecord>> {
        let mut sql = QueryBuilder::<DB>::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM deliveries WHERE namespace = ");
        sql.push_bind(q.namespace.as_str());
        if let Some(v) = &q.execution_id {
            sql.push(" AND execution_id = ").push_bind(v.as_str());
        }
        if let Some(v) = &q.subject {
            // The subject's executions (`executions_by_namespace_subject`),
            // then theirs (`deliveries_by_execution`).
            sql.push(" AND execution_id IN (SELECT id FROM executions WHERE namespace = ")
                .push_bind(q.namespace.as_str())
                .push(" AND subject = ")
                .push_bind(v.as_str())
                .push(")");
        }
        if let Some(v) = &q.workflow_id {
            sql.push(" AND workflow_id = ").push_bind(v.as_str());
        }
        if let Some(v) = &q.channel {
            sql.push(" AND channel = ").push_bind(v.as_str());
        }
        if let Some(v) = &q.provider {
            sql.push(" AND provider = ").push_bind(v.as_str());
        }
        if let Some(v) = &q.status {
            sql.push(" AND status = ").push_bind(v.as_str());
        }
        if let Some(v) = q.created_after {
            sql.push(" AND created_at >= ").push_bind(at(v));
        }
        if let Some(v) = q.created_before {
            sql.push(" AND created_at < ").push_bind(at(v));
        }
        if let Some(v) = &q.before_id {
            sql.push(" AND id < ").push_bind(v.as_str());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(q.limit));
        Ok(sql.build_query_as().fetch_all(&self.pool).await?)
    }

    async fn apply_report(
        &self,
        provider: &str,
        scope: &str,
        receipt: &str,
        updates: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        // Receipts are needed as long as a report may still come (a day
        // after it was signed, REPORT_WINDOW in the providers): older ones
        // go (an indexed range, usually empty).
        sqlx::query("DELETE FROM webhook_receipts WHERE received_at < $1")
            .bind(at(now - chrono::Duration::days(2)))
            .execute(&mut *tx)
            .await?;
        let fresh: Option<(String,)> = sqlx::query_as(
            "INSERT INTO webhook_receipts (provider, receipt, received_at) VALUES ($1, $2, $3)
             ON CONFLICT (provider, receipt) DO NOTHING RETURNING receipt",
        )
        .bind(scope)
        .bind(receipt)
        .bind(at(now))
        .fetch_optional(&mut *tx)
        .await?;
        if fresh.is_none() {
            return Ok(None);
        }
        let mut moved = 0u64;
        let sql = format!(
            "UPDATE deliveries SET status = $1, updated_at = $2
             WHERE provider = $3 AND provider_message_id = $4 AND {} <= {} AND {} < 5
             RETURNING namespace, channel, recipient",
            rank("status"),
            rank("$1"),
            rank("status")
        );
        let mut suppress: Vec<Suppression> = Vec::new();
        for (message_id, status) in updates {
            let rows: Vec<(String, String, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(status.as_str())
                    .bind(at(now))
                    .bind(provider)
                    .bind(message_id.as_str())
                    .fetch_all(&mut *tx)
                    .await?;
            moved += rows.len() as u64;
            // A hard bounce or a complaint puts the address on the
            // suppression list (a message to several addresses does not:
            // the report does not say which one bounced).
            if matches!(status.as_str(), "bounced" | "complained") {
                suppress.extend(rows.into_iter().filter(|(_, _, r)| !r.contains(',')).map(
                    |(namespace, channel, recipient)| Suppression {
                        address: normalize_address(&channel, &recipient),
                        namespace,
                        channel,
                        reason: status.clone(),
                        detail: Some(format!("reported by {provider} for {message_id}")),
                        created_at: now,
                    },
                ));
            }
        }
        crate::audience::insert_suppressions::<DB>(&mut tx, &suppress).await?;
        tx.commit().await?;
        Ok(Some(moved))
    }
}
