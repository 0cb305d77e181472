//! SQLite's timer statements: one writer, so a claim is a plain `UPDATE`
//! of the earliest rows, and deferrals go one by one in a transaction.

use chrono::{DateTime, Utc};
use sojourn_runtime::{ExecutionId, TimerId};
use sqlx::Sqlite;

use super::TimerSql;
use crate::sql::at;
use crate::types::DueTimer;
use crate::{Result, SqliteStore};

impl TimerSql for Sqlite {
    async fn claim_due_timers(
        store: &SqliteStore,
        owner: &str,
        due_before: DateTime<Utc>,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueTimer>> {
        Ok(sqlx::query_as(
            "UPDATE timers SET claimed_by = $1, claimed_until = $4
             WHERE rowid IN (SELECT rowid FROM timers
                             WHERE due_at <= $2 AND (claimed_until IS NULL OR claimed_until < $3)
                             ORDER BY due_at LIMIT $5)
             RETURNING execution_id, timer_id, due_at",
        )
        .bind(owner)
        .bind(at(due_before))
        .bind(at(now))
        .bind(at(claim_until))
        .bind(i64::from(limit))
        .fetch_all(&store.pool)
        .await?)
    }

    async fn defer_timers(
        store: &SqliteStore,
        owner: &str,
        timers: &[(ExecutionId, TimerId)],
        deferred_to: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = store.pool.begin().await?;
        for (e, t) in timers {
            sqlx::query(
                "UPDATE timers SET claimed_until = $2
                 WHERE execution_id = $3 AND timer_id = $4 AND claimed_by = $1",
            )
            .bind(owner)
            .bind(at(deferred_to))
            .bind(e.as_str())
            .bind(t.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
