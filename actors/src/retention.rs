//! The retention sweeper: every node runs it, the claim lets one at a time
//! sweep (`AnalyticsStore::sweep_retention`). Each batch is a short
//! transaction of its own, with a pause between batches, so the sweep never
//! holds locks the executions' commits wait for, nor a transaction open
//! long enough to hold back the analytics rollup.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sojourn_persistence::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Finished executions per batch.
pub const BATCH: u32 = 100;
/// Batches per turn at most (the rest waits for the next turn).
const BATCHES_PER_TURN: u32 = 200;
/// The pause between two batches.
const PAUSE: Duration = Duration::from_millis(20);

pub(crate) struct Sweeper<S: Store> {
    pub(crate) store: Arc<S>,
    /// How often (`retention_sweep`).
    pub(crate) every: Duration,
}

impl<S: Store> Sweeper<S> {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.cancelled() => return,
            }
            sweep(&*self.store, &shutdown).await;
        }
    }
}

/// Sweeps batch after batch until nothing is left, another node sweeps,
/// the store fails, the turn's batches are spent or the node stops.
/// Returns the rows deleted.
pub async fn sweep<S: Store>(store: &S, shutdown: &CancellationToken) -> u64 {
    let mut rows = 0;
    for _ in 0..BATCHES_PER_TURN {
        if shutdown.is_cancelled() {
            break;
        }
        match store.sweep_retention(BATCH, Utc::now()).await {
            Ok(Some(Some(s))) => {
                rows += s.rows;
                tracing::debug!(namespace = %s.namespace, target = s.target, executions = s.executions, rows = s.rows, "retention swept");
            }
            Ok(_) => break,
            Err(e) => {
                warn!(error = %e, "the retention sweep failed; it goes on at the next turn");
                break;
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
    if rows > 0 {
        info!(
            rows,
            "retention: deleted the old records of finished executions"
        );
    }
    rows
}
