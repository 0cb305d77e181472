//! PostgreSQL's outbox statements: claims skip the rows another node holds
//! locked (`FOR UPDATE SKIP LOCKED`); acks, attempt begins and results go
//! as arrays (`ANY`, `UNNEST`), one statement per batch.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sojourn_runtime::Input;
use sqlx::Postgres;

use super::OutboxSql;
use crate::error::Error;
use crate::executions::rows::{attempt_i32, outcome_columns};
use crate::types::{AttemptBegin, AttemptRef, FinishedAttempt, OutboxMessage};
use crate::{PgStore, Result};

impl OutboxSql for Postgres {
    async fn claim_outbox(
        store: &PgStore,
        owner: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>> {
        Ok(sqlx::query_as(
            "UPDATE outbox o SET claimed_by = $1, claimed_until = $3, deliveries = o.deliveries + 1
             FROM (SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until < $2
                   ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) c
             WHERE o.id = c.id
             RETURNING o.id, o.execution_id, o.payload, o.deliveries",
        )
        .bind(owner)
        .bind(now)
        .bind(claim_until)
        .bind(i64::from(limit))
        .fetch_all(&store.pool)
        .await?)
    }

    async fn ack_outbox(store: &PgStore, ids: &[i64]) -> Result<()> {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&store.pool)
            .await?;
        Ok(())
    }

    async fn begin_attempts(
        store: &PgStore,
        attempts: &[AttemptRef<'_>],
    ) -> Result<Vec<AttemptBegin>> {
        let ex: Vec<&str> = attempts.iter().map(|a| a.execution_id.as_str()).collect();
        let node: Vec<&str> = attempts.iter().map(|a| a.node).collect();
        let att = attempts
            .iter()
            .map(|a| attempt_i32(a.attempt))
            .collect::<Result<Vec<i32>>>()?;
        let rows: Vec<(String, String, i32, i32, bool)> = sqlx::query_as(
            "UPDATE node_executions n
             SET sends = n.sends + CASE WHEN n.finished_at IS NULL THEN 1 ELSE 0 END,
                 status = CASE WHEN n.finished_at IS NULL THEN 'sending' ELSE n.status END
             FROM UNNEST($1::text[], $2::text[], $3::int[]) AS v(e, node, a)
             WHERE n.execution_id = v.e AND n.node_id = v.node AND n.attempt = v.a
             RETURNING n.execution_id, n.node_id, n.attempt, n.sends, n.finished_at IS NOT NULL AS done",
        )
        .bind(&ex)
        .bind(&node)
        .bind(&att)
        .fetch_all(&store.pool)
        .await?;
        let found: HashMap<(String, String, i32), AttemptBegin> = rows
            .into_iter()
            .map(|(e, node, attempt, sends, done)| {
                let begin = if done {
                    AttemptBegin::AlreadyDone
                } else {
                    AttemptBegin::Send { sends }
                };
                ((e, node, attempt), begin)
            })
            .collect();
        Ok(attempts
            .iter()
            .zip(&att)
            .map(|(a, n)| {
                found
                    .get(&(a.execution_id.to_string(), a.node.to_owned(), *n))
                    .copied()
                    .unwrap_or(AttemptBegin::Unknown)
            })
            .collect())
    }

    async fn finish_attempts(
        store: &PgStore,
        done: &[FinishedAttempt<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>> {
        let (
            mut ex,
            mut node,
            mut att,
            mut status,
            mut output,
            mut error,
            mut inputs,
            mut at,
            mut outbox,
            mut keys,
        ) = (
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        );
        for d in done {
            let (s, o, e) = outcome_columns(d.outcome);
            ex.push(d.execution_id.as_str());
            node.push(d.node);
            att.push(attempt_i32(d.attempt)?);
            status.push(s);
            output.push(o);
            error.push(e);
            let input = Input::ActionResult {
                node: d.node.into(),
                attempt: d.attempt,
                outcome: d.outcome.clone(),
            };
            inputs.push(serde_json::to_value(&input).map_err(Error::corrupt("inbox input"))?);
            at.push(now);
            if let Some(id) = d.outbox_id {
                outbox.push(id);
            }
            if let Some(key) = d.outbox_key {
                keys.push(key);
            }
        }
        let mut tx = store.pool.begin().await?;
        sqlx::query(
            "UPDATE node_executions n SET status = v.status, output = v.output, error = v.error, finished_at = $7
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::jsonb[], $6::text[])
                  AS v(e, node, a, status, output, error)
             WHERE n.execution_id = v.e AND n.node_id = v.node AND n.attempt = v.a AND n.finished_at IS NULL",
        )
        .bind(&ex)
        .bind(&node)
        .bind(&att)
        .bind(&status)
        .bind(&output)
        .bind(&error)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // One row per attempt, matched back by (execution, node, attempt).
        let rows: Vec<(i64, String, String, i32)> = sqlx::query_as(
            "INSERT INTO inbox (execution_id, input, created_at)
             SELECT * FROM UNNEST($1::text[], $2::jsonb[], $3::timestamptz[])
             RETURNING id, execution_id, input->>'node' AS node, (input->>'attempt')::int AS attempt",
        )
        .bind(&ex)
        .bind(&inputs)
        .bind(&at)
        .fetch_all(&mut *tx)
        .await?;
        if !outbox.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(&outbox)
                .execute(&mut *tx)
                .await?;
        }
        if !keys.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE idempotency_key = ANY($1)")
                .bind(&keys)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let ids: HashMap<(String, String, i32), i64> = rows
            .into_iter()
            .map(|(id, e, node, attempt)| ((e, node, attempt), id))
            .collect();
        done.iter()
            .zip(&att)
            .map(|(d, n)| {
                ids.get(&(d.execution_id.to_string(), d.node.to_owned(), *n))
                    .copied()
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "no inbox row for {}/{}/{}",
                            d.execution_id, d.node, n
                        ))
                    })
            })
            .collect()
    }
}
