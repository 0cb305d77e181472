//! Group commit: transitions from many execution actors are gathered and
//! written in one database transaction, the way a database groups the
//! flushes of its own log. Each transition stays fenced by its own epoch;
//! each actor learns its own fate and acts on its effects only after that.

use std::sync::Arc;

use sojourn_persistence::{Commit, CommitResult, LeaseEpoch, Store};
use sojourn_runtime::{ExecutionId, TimerId, Transition};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::stats::Stats;

/// One transition waiting to be committed.
pub(crate) struct Request {
    pub(crate) execution_id: ExecutionId,
    pub(crate) epoch: LeaseEpoch,
    pub(crate) transition: Transition,
    pub(crate) fired_timer: Option<TimerId>,
    pub(crate) consumed_input: Option<i64>,
    /// Gets the transition back with its fate.
    pub(crate) reply: oneshot::Sender<(Transition, Result<CommitResult, String>)>,
}

/// A cheap handle to the committer task.
#[derive(Debug, Clone)]
pub(crate) struct Committer {
    tx: mpsc::Sender<Request>,
}

impl Committer {
    pub(crate) fn spawn<S: Store>(
        store: Arc<S>,
        stats: Arc<Stats>,
        max_batch: usize,
    ) -> (Committer, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Request>(max_batch * 4);
        let task = tokio::spawn(async move {
            let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
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
                let result = store.commit(&commits).await;
                drop(commits);
                Stats::add(&stats.transactions, 1);
                Stats::add(&stats.transitions, batch.len() as u64);
                match result {
                    Ok(results) => {
                        for (r, res) in batch.drain(..).zip(results) {
                            if res == CommitResult::Fenced {
                                Stats::add(&stats.fenced, 1);
                            }
                            let _ = r.reply.send((r.transition, Ok(res)));
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, batch = batch.len(), "group commit failed");
                        let message = e.to_string();
                        for r in batch.drain(..) {
                            let _ = r.reply.send((r.transition, Err(message.clone())));
                        }
                    }
                }
            }
        });
        (Committer { tx }, task)
    }

    /// Queues a transition and waits for its fate.
    pub(crate) async fn commit(
        &self,
        execution_id: ExecutionId,
        epoch: LeaseEpoch,
        transition: Transition,
        fired_timer: Option<TimerId>,
        consumed_input: Option<i64>,
    ) -> (Option<Transition>, Result<CommitResult, String>) {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            execution_id,
            epoch,
            transition,
            fired_timer,
            consumed_input,
            reply,
        };
        if self.tx.send(request).await.is_err() {
            return (None, Err("the committer has stopped".into()));
        }
        match rx.await {
            Ok((t, r)) => (Some(t), r),
            Err(_) => (None, Err("the committer dropped the request".into())),
        }
    }
}
