//! The analytics rollup job: every node runs it, the cursor's row lock lets
//! one at a time roll up (`AnalyticsStore::rollup_journal`). It reads what
//! the engine already wrote, a batch per transaction, off every
//! execution's path.

use std::sync::Arc;
use std::time::Duration;

use sojourn_persistence::Store;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Journal rows per transaction.
pub const BATCH: u32 = 5_000;

pub(crate) struct RollupJob<S: Store> {
    pub(crate) store: Arc<S>,
    /// How often (`analytics_rollup`).
    pub(crate) every: Duration,
}

impl<S: Store> RollupJob<S> {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.cancelled() => return,
            }
            catch_up(&*self.store, &shutdown).await;
        }
    }
}

/// Rolls up batch after batch until caught up (a batch shorter than
/// [`BATCH`]), another node holds the cursor, the store fails, or the node
/// stops. Returns the rows counted. (On PostgreSQL a run may only record a
/// watermark for a later run to prove: a turn that counted nothing tries
/// once more.)
pub async fn catch_up<S: Store>(store: &S, shutdown: &CancellationToken) -> u64 {
    let mut total = 0;
    let mut tries = 0;
    while !shutdown.is_cancelled() {
        match store.rollup_journal(BATCH).await {
            Ok(Some(n)) => {
                total += n;
                tries += 1;
                if n >= u64::from(BATCH) {
                    continue;
                }
                if n > 0 || tries > 1 {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                warn!(error = %e, "the analytics rollup failed; it goes on at the next turn");
                break;
            }
        }
    }
    if total > 0 {
        debug!(rows = total, "journal rows rolled up");
    }
    total
}
