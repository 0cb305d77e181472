//! Durable timers (`timers`) and the claims nodes hold on timers and
//! outbox rows: claiming due timers across nodes, deferring and releasing
//! claims. Claiming differs (PostgreSQL skips rows another node has
//! locked, `FOR UPDATE SKIP LOCKED`; SQLite has one writer) and so does a
//! batch of deferrals (one `UNNEST` statement in PostgreSQL): those are
//! [`TimerSql`], in `postgres.rs` and `sqlite.rs`. The rest is written once.

use std::future::Future;

use chrono::{DateTime, Utc};
use sojourn_runtime::{ExecutionId, TimerId};
use sqlx::Executor;

use crate::Result;
use crate::sql::{Bind, Read, Sql, SqlStore};
use crate::types::DueTimer;

mod postgres;
mod sqlite;

/// Timers and the claims on them.
pub trait TimerStore: Send + Sync {
    /// Claims up to `limit` timers due before `due_before` that nobody holds
    /// (or whose claim expired before `now`), for `owner` until
    /// `claim_until`, earliest first. Several nodes may call this at once:
    /// each timer goes to one of them.
    fn claim_due_timers(
        &self,
        owner: &str,
        due_before: DateTime<Utc>,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DueTimer>>> + Send;

    /// Hands claimed timers back: they may be claimed again (by any node)
    /// from `at`. For a firing that could not reach its execution's actor
    /// (its lease holder is unreachable), so it fires again shortly instead
    /// of when its claim would have expired. Only `owner`'s claims change.
    fn defer_timers(
        &self,
        owner: &str,
        timers: &[(ExecutionId, TimerId)],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Drops every claim (timers, outbox, schedules) held by `owner`: a node that
    /// restarts under the same id, or shuts down, hands its work back at once
    /// instead of after the claims expire.
    fn release_claims(&self, owner: &str) -> impl Future<Output = Result<()>> + Send;

    /// The nodes that hold claims (timers, outbox messages, schedules): the cluster
    /// hands back those of nodes that are not alive.
    fn claim_owners(&self) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// How many timers exist (for metrics and tests).
    fn pending_timers(&self) -> impl Future<Output = Result<i64>> + Send;
}

/// The timer statements that differ between the databases.
pub trait TimerSql: Sql {
    /// [`TimerStore::claim_due_timers`], in any order.
    fn claim_due_timers(
        store: &SqlStore<Self>,
        owner: &str,
        due_before: DateTime<Utc>,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DueTimer>>> + Send;

    /// [`TimerStore::defer_timers`] for a batch that is not empty.
    fn defer_timers(
        store: &SqlStore<Self>,
        owner: &str,
        timers: &[(ExecutionId, TimerId)],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<()>> + Send;
}

impl<DB> TimerStore for SqlStore<DB>
where
    DB: TimerSql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    (String,): Read<DB>,
    (i64,): Read<DB>,
{
    async fn claim_due_timers(
        &self,
        owner: &str,
        due_before: DateTime<Utc>,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueTimer>> {
        let mut timers =
            DB::claim_due_timers(self, owner, due_before, now, claim_until, limit).await?;
        timers.sort_by_key(|t| t.due_at);
        Ok(timers)
    }

    async fn defer_timers(
        &self,
        owner: &str,
        timers: &[(ExecutionId, TimerId)],
        at: DateTime<Utc>,
    ) -> Result<()> {
        if timers.is_empty() {
            return Ok(());
        }
        DB::defer_timers(self, owner, timers, at).await
    }

    async fn release_claims(&self, owner: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE timers SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE triggers SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_owners(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT claimed_by FROM timers WHERE claimed_by IS NOT NULL
             UNION SELECT claimed_by FROM outbox WHERE claimed_by IS NOT NULL
             UNION SELECT claimed_by FROM triggers WHERE claimed_by IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn pending_timers(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM timers")
            .fetch_one(&self.pool)
            .await?)
    }
}
