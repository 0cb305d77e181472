//! PostgreSQL's timer statements: claims skip the rows another node holds
//! locked (`FOR UPDATE SKIP LOCKED`), deferrals go as one `UNNEST` batch.

use chrono::{DateTime, Utc};
use sojourn_runtime::{ExecutionId, TimerId};
use sqlx::Postgres;

use super::TimerSql;
use crate::types::DueTimer;
use crate::{PgStore, Result};

impl TimerSql for Postgres {
    async fn claim_due_timers(
        store: &PgStore,
        owner: &str,
        due_before: DateTime<Utc>,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueTimer>> {
        Ok(sqlx::query_as(
            "UPDATE timers t SET claimed_by = $1, claimed_until = $4
             FROM (SELECT execution_id, timer_id FROM timers
                   WHERE due_at <= $2 AND (claimed_until IS NULL OR claimed_until < $3)
                   ORDER BY due_at LIMIT $5 FOR UPDATE SKIP LOCKED) due
             WHERE t.execution_id = due.execution_id AND t.timer_id = due.timer_id
             RETURNING t.execution_id, t.timer_id, t.due_at",
        )
        .bind(owner)
        .bind(due_before)
        .bind(now)
        .bind(claim_until)
        .bind(i64::from(limit))
        .fetch_all(&store.pool)
        .await?)
    }

    async fn defer_timers(
        store: &PgStore,
        owner: &str,
        timers: &[(ExecutionId, TimerId)],
        at: DateTime<Utc>,
    ) -> Result<()> {
        let ids: Vec<&str> = timers.iter().map(|(e, _)| e.as_str()).collect();
        let tids: Vec<&str> = timers.iter().map(|(_, t)| t.as_str()).collect();
        sqlx::query(
            "UPDATE timers t SET claimed_until = $2
             FROM UNNEST($3::text[], $4::text[]) AS v(execution_id, timer_id)
             WHERE t.execution_id = v.execution_id AND t.timer_id = v.timer_id
               AND t.claimed_by = $1",
        )
        .bind(owner)
        .bind(at)
        .bind(&ids)
        .bind(&tids)
        .execute(&store.pool)
        .await?;
        Ok(())
    }
}
