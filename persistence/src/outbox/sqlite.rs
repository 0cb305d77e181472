//! SQLite's outbox statements: one writer, so a claim is a plain `UPDATE`
//! of the oldest rows, and a batch goes row by row in one transaction.

use chrono::{DateTime, Utc};
use sojourn_runtime::Input;
use sqlx::Sqlite;

use super::OutboxSql;
use crate::executions::rows::{attempt_i32, outcome_columns};
use crate::sql::{Doc, at};
use crate::types::{AttemptBegin, AttemptRef, FinishedAttempt, OutboxMessage};
use crate::{Result, SqliteStore};

impl OutboxSql for Sqlite {
    async fn claim_outbox(
        store: &SqliteStore,
        owner: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>> {
        Ok(sqlx::query_as(
            "UPDATE outbox SET claimed_by = $1, claimed_until = $3, deliveries = deliveries + 1
             WHERE id IN (SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until < $2
                          ORDER BY id LIMIT $4)
             RETURNING id, execution_id, payload, deliveries",
        )
        .bind(owner)
        .bind(at(now))
        .bind(at(claim_until))
        .bind(i64::from(limit))
        .fetch_all(&store.pool)
        .await?)
    }

    async fn ack_outbox(store: &SqliteStore, ids: &[i64]) -> Result<()> {
        let mut tx = store.pool.begin().await?;
        for id in ids {
            sqlx::query("DELETE FROM outbox WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn begin_attempts(
        store: &SqliteStore,
        attempts: &[AttemptRef<'_>],
    ) -> Result<Vec<AttemptBegin>> {
        let mut tx = store.pool.begin().await?;
        let mut out = Vec::with_capacity(attempts.len());
        for a in attempts {
            let row: Option<(i32, bool)> = sqlx::query_as(
                "UPDATE node_executions
                 SET sends = sends + CASE WHEN finished_at IS NULL THEN 1 ELSE 0 END,
                     status = CASE WHEN finished_at IS NULL THEN 'sending' ELSE status END
                 WHERE execution_id = $1 AND node_id = $2 AND attempt = $3
                 RETURNING sends, finished_at IS NOT NULL AS done",
            )
            .bind(a.execution_id.as_str())
            .bind(a.node)
            .bind(attempt_i32(a.attempt)?)
            .fetch_optional(&mut *tx)
            .await?;
            out.push(match row {
                None => AttemptBegin::Unknown,
                Some((_, true)) => AttemptBegin::AlreadyDone,
                Some((sends, false)) => AttemptBegin::Send { sends },
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn finish_attempts(
        store: &SqliteStore,
        done: &[FinishedAttempt<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>> {
        let mut tx = store.pool.begin().await?;
        let mut ids = Vec::with_capacity(done.len());
        for d in done {
            let (status, output, error) = outcome_columns(d.outcome);
            sqlx::query(
                "UPDATE node_executions SET status = $4, output = $5, error = $6, finished_at = $7
                 WHERE execution_id = $1 AND node_id = $2 AND attempt = $3 AND finished_at IS NULL",
            )
            .bind(d.execution_id.as_str())
            .bind(d.node)
            .bind(attempt_i32(d.attempt)?)
            .bind(status)
            .bind(output.map(|o| Doc::of("node output", &o)).transpose()?)
            .bind(error)
            .bind(at(now))
            .execute(&mut *tx)
            .await?;
            let input = Input::ActionResult {
                node: d.node.into(),
                attempt: d.attempt,
                outcome: d.outcome.clone(),
            };
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO inbox (execution_id, input, created_at) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(d.execution_id.as_str())
            .bind(Doc::of("inbox input", &input)?)
            .bind(at(now))
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM outbox WHERE id = $1 OR idempotency_key = $2")
                .bind(d.outbox_id)
                .bind(d.outbox_key)
                .execute(&mut *tx)
                .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }
}
