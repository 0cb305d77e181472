//! Group commit: transitions from many execution actors are written in one
//! database transaction. Each stays fenced by its own epoch; each actor
//! learns its own fate and acts on its effects only after that.

use std::sync::Arc;

use sojourn_persistence::{Commit, CommitResult, LeaseEpoch, Store};
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
}

/// Commits transitions in batches; gives each request back with its fate.
pub(crate) type Committer = Batcher<Request, (Request, CommitResult)>;

pub(crate) fn spawn<S: Store>(
    store: Arc<S>,
    stats: Arc<Stats>,
    max_batch: usize,
) -> (Committer, tokio::task::JoinHandle<()>) {
    Batcher::spawn("group commit", max_batch, move |batch: Vec<Request>| {
        let (store, stats) = (store.clone(), stats.clone());
        async move {
            let commits: Vec<Commit<'_>> = batch
                .iter()
                .map(|r| Commit {
                    execution_id: &r.execution_id,
                    epoch: r.epoch,
                    transition: &r.transition,
                    fired_timer: r.fired_timer.as_ref(),
                    consumed_input: r.consumed_input,
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
