//! Group commit: transitions from many execution actors are written in one
//! database transaction. Each stays fenced by its own epoch; each actor
//! learns its own fate and acts on its effects only after that.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sojourn_persistence::{Claim, Commit, CommitResult, LeaseEpoch, Store};
use sojourn_runtime::{ExecutionId, TimerId, Transition};

use crate::batch::Batcher;
use crate::stats::Stats;

/// One transition waiting to be committed.
pub(crate) struct Request {
    pub(crate) execution_id: ExecutionId,
    pub(crate) epoch: LeaseEpoch,
    pub(crate) transition: Transition,
    pub(crate) fired_timer: Option<TimerId>,
    pub(crate) consumed_input: Option<i64>,
    /// This node takes the transition's work on itself in the commit: its
    /// actions (sent from memory) and its timers due before this instant
    /// (held by the timer service). `None`: left in the tables for whoever
    /// claims them.
    pub(crate) claim_timers_before: Option<DateTime<Utc>>,
    /// The outbox row (its key) of an action result applied from memory.
    pub(crate) consumed_outbox: Option<String>,
}

/// How long the claims taken in a commit last.
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    pub(crate) owner: String,
    pub(crate) outbox_ttl: chrono::Duration,
    pub(crate) timer_ttl: chrono::Duration,
}

/// Commits transitions in batches; gives each request back with its fate.
pub(crate) type Committer = Batcher<Request, (Request, CommitResult)>;

pub(crate) fn spawn<S: Store>(
    store: Arc<S>,
    stats: Arc<Stats>,
    max_batch: usize,
    claims: Claims,
) -> (Committer, tokio::task::JoinHandle<()>) {
    let claims = std::sync::Arc::new(claims);
    Batcher::spawn("group commit", max_batch, move |batch: Vec<Request>| {
        let (store, stats, claims) = (store.clone(), stats.clone(), claims.clone());
        async move {
            let outbox_until = Utc::now() + claims.outbox_ttl;
            let commits: Vec<Commit<'_>> = batch
                .iter()
                .map(|r| Commit {
                    execution_id: &r.execution_id,
                    epoch: r.epoch,
                    transition: &r.transition,
                    fired_timer: r.fired_timer.as_ref(),
                    consumed_input: r.consumed_input,
                    claim: r.claim_timers_before.map(|timers_before| Claim {
                        owner: &claims.owner,
                        outbox_until,
                        timers_before,
                        timer_ttl: claims.timer_ttl,
                    }),
                    consumed_outbox: r.consumed_outbox.as_deref(),
                })
                .collect();
            let results = store.commit(&commits).await.map_err(|e| e.to_string());
            drop(commits);
            Stats::add(&stats.transactions, 1);
            Stats::add(&stats.transitions, batch.len() as u64);
            let results = results?;
            Stats::add(
                &stats.fenced,
                results
                    .iter()
                    .filter(|r| **r == CommitResult::Fenced)
                    .count() as u64,
            );
            Ok(batch.into_iter().zip(results).collect())
        }
    })
}
