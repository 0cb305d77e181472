//! Durable timers (`timers`) and the claims nodes hold on timers and
//! outbox rows: claiming due timers across nodes, deferring and releasing
//! claims.

use std::future::Future;

use chrono::{DateTime, Utc};
use sojourn_runtime::{ExecutionId, TimerId};

use crate::Result;
use crate::types::DueTimer;

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

    /// Drops every claim (timers and outbox) held by `owner`: a node that
    /// restarts under the same id, or shuts down, hands its work back at once
    /// instead of after the claims expire.
    fn release_claims(&self, owner: &str) -> impl Future<Output = Result<()>> + Send;

    /// The nodes that hold claims (timers or outbox messages): the cluster
    /// hands back those of nodes that are not alive.
    fn claim_owners(&self) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// How many timers exist (for metrics and tests).
    fn pending_timers(&self) -> impl Future<Output = Result<i64>> + Send;
}
