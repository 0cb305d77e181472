//! SQLite's execution statements: one writer, so a batch is written row by
//! row inside its one transaction, and a subject's limit is a count inside
//! that transaction.

use sojourn_runtime::ExecutionId;
use sqlx::Sqlite;
use sqlx::sqlite::SqliteConnection;

use super::ExecutionSql;
use super::rows::Rows;
use crate::sql::{Doc, at, conflict};
use crate::types::{Created, ExecutionRecord, InboxItem, NewExecution};
use crate::{ExecutionStore, OutboxStore, Result, SqliteStore};

impl ExecutionSql for Sqlite {
    async fn create_executions(
        store: &SqliteStore,
        batch: &[NewExecution],
    ) -> Result<Vec<Created>> {
        let mut tx = store.pool.begin().await?;
        let mut out = Vec::with_capacity(batch.len());
        for new in batch {
            let s = &new.snapshot;
            // One connection: counting inside the transaction is enough.
            if let (Some(limit), Some(subject)) = (new.max_entries, s.subject.as_deref()) {
                if new.idempotency_key.is_some() {
                    let existing: Option<String> = sqlx::query_scalar(
                        "SELECT id FROM executions WHERE workflow_id = $1 AND idempotency_key = $2",
                    )
                    .bind(&new.workflow_id)
                    .bind(&new.idempotency_key)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(existing) = existing {
                        out.push(Created::Existing(ExecutionId::new(existing)));
                        continue;
                    }
                }
                let count: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM executions WHERE workflow_id = $1 AND subject = $2",
                )
                .bind(&new.workflow_id)
                .bind(subject)
                .fetch_one(&mut *tx)
                .await?;
                if count >= i64::from(limit) {
                    out.push(Created::LimitReached { limit });
                    continue;
                }
            }
            let inserted: Option<String> = sqlx::query_scalar(
                "INSERT INTO executions (id, namespace, workflow_id, version, status, subject, idempotency_key,
                                         current_node, snapshot, snapshot_seq, lease_epoch, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 'pending', $5, $6, NULL, $7, 0, 1, $8, $8)
                 ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                 RETURNING id",
            )
            .bind(s.execution_id.as_str())
            .bind(&new.namespace)
            .bind(&new.workflow_id)
            .bind(new.version)
            .bind(&s.subject)
            .bind(&new.idempotency_key)
            .bind(Doc::of("snapshot", s)?)
            .bind(at(s.created_at))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| conflict(e, "id", s.execution_id.as_str()))?;
            if let Some(id) = inserted {
                out.push(Created::New(ExecutionId::new(id)));
                continue;
            }
            let existing: String = sqlx::query_scalar(
                "SELECT id FROM executions WHERE workflow_id = $1 AND idempotency_key = $2",
            )
            .bind(&new.workflow_id)
            .bind(&new.idempotency_key)
            .fetch_one(&mut *tx)
            .await?;
            out.push(Created::Existing(ExecutionId::new(existing)));
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn activate_many(
        store: &SqliteStore,
        ids: &[ExecutionId],
    ) -> Result<Vec<(ExecutionRecord, Vec<InboxItem>)>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(rec) = store.activate(id).await? {
                let items = store.pending_inputs(id).await?;
                out.push((rec, items));
            }
        }
        Ok(out)
    }

    async fn commit_round(
        tx: &mut SqliteConnection,
        round: &[(usize, Rows)],
    ) -> Result<Vec<usize>> {
        let mut committed = Vec::with_capacity(round.len());
        for (i, r) in round {
            if write_one(tx, r).await? {
                committed.push(*i);
            }
        }
        Ok(committed)
    }
}

/// Writes one transition if it passes the fence; returns whether it did.
async fn write_one(tx: &mut SqliteConnection, r: &Rows) -> Result<bool> {
    let e = &r.execution;
    let id = e.id.as_str();
    let updated = sqlx::query(
        "UPDATE executions SET status = $3, current_node = $4, snapshot = $5, snapshot_seq = $6,
                updated_at = $7, finished_at = $8
         WHERE id = $1 AND lease_epoch = $2 AND snapshot_seq < $6",
    )
    .bind(id)
    .bind(e.epoch)
    .bind(e.status)
    .bind(&e.current_node)
    .bind(e.snapshot.as_str())
    .bind(e.seq)
    .bind(at(e.updated_at))
    .bind(e.finished_at.map(at))
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        return Ok(false);
    }
    for j in &r.journal {
        sqlx::query(
            "INSERT INTO journal (execution_id, seq, at, kind, entry) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(j.seq)
        .bind(at(j.at))
        .bind(j.kind)
        .bind(j.entry.as_str())
        .execute(&mut *tx)
        .await?;
    }
    for (s, o) in r.node_starts.iter().zip(&r.outbox) {
        sqlx::query(
            "INSERT INTO node_executions (execution_id, node_id, attempt, action, status, input, started_at, sends)
             VALUES ($1, $2, $3, $4, $7, $5, $6, $8) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&s.node_id)
        .bind(s.attempt)
        .bind(&s.action)
        .bind(s.input.as_str())
        .bind(at(r.now))
        .bind(s.status)
        .bind(s.sends)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (execution_id, node_id, attempt, idempotency_key, action, payload, created_at,
                                 claimed_by, claimed_until, deliveries)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(id)
        .bind(&o.node_id)
        .bind(o.attempt)
        .bind(&o.idempotency_key)
        .bind(&o.action)
        .bind(o.payload.as_str())
        .bind(at(r.now))
        .bind(o.claimed_by.as_deref())
        .bind(o.claimed_until.map(at))
        .bind(o.deliveries)
        .execute(&mut *tx)
        .await?;
    }
    for res in &r.node_results {
        sqlx::query(
            "UPDATE node_executions SET status = $4, output = $5, error = $6, finished_at = $7
             WHERE execution_id = $1 AND node_id = $2 AND attempt = $3 AND finished_at IS NULL",
        )
        .bind(id)
        .bind(&res.node_id)
        .bind(res.attempt)
        .bind(res.status)
        .bind(
            res.output
                .as_ref()
                .map(|o| Doc::of("node output", o))
                .transpose()?,
        )
        .bind(&res.error)
        .bind(at(r.now))
        .execute(&mut *tx)
        .await?;
    }
    for t in &r.timers_dropped {
        sqlx::query("DELETE FROM timers WHERE execution_id = $1 AND timer_id = $2")
            .bind(id)
            .bind(t)
            .execute(&mut *tx)
            .await?;
    }
    for s in &r.unsubscribe {
        sqlx::query("DELETE FROM subscriptions WHERE execution_id = $1 AND subscription_id = $2")
            .bind(id)
            .bind(s)
            .execute(&mut *tx)
            .await?;
    }
    for t in &r.timers_set {
        sqlx::query(
            "INSERT INTO timers (execution_id, timer_id, due_at, claimed_by, claimed_until)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (execution_id, timer_id) DO UPDATE
                SET due_at = excluded.due_at, claimed_by = excluded.claimed_by,
                    claimed_until = excluded.claimed_until",
        )
        .bind(id)
        .bind(&t.timer_id)
        .bind(at(t.due_at))
        .bind(t.claimed_by.as_deref())
        .bind(t.claimed_until.map(at))
        .execute(&mut *tx)
        .await?;
    }
    for s in &r.subscribe {
        sqlx::query(
            "INSERT INTO subscriptions (execution_id, subscription_id, namespace, event, key)
             SELECT $1, $2, namespace, $3, $4 FROM executions WHERE id = $1
             ON CONFLICT (execution_id, subscription_id) DO NOTHING",
        )
        .bind(id)
        .bind(&s.subscription_id)
        .bind(&s.event)
        .bind(&s.key)
        .execute(&mut *tx)
        .await?;
    }
    if r.finished {
        sqlx::query("DELETE FROM timers WHERE execution_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM subscriptions WHERE execution_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(key) = &r.consumed_outbox {
        sqlx::query("DELETE FROM outbox WHERE idempotency_key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(input) = r.consumed_input {
        sqlx::query("DELETE FROM inbox WHERE id = $1")
            .bind(input)
            .execute(&mut *tx)
            .await?;
    }
    Ok(true)
}
