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

/// Rolls up the journal, deliveries and conversions, a batch of each in
/// turn (none waits for another's backlog), until each is caught up (a
/// batch shorter than [`BATCH`]), another node holds it, the store fails,
/// or the node stops. Returns the rows counted. (On PostgreSQL a journal
/// run may only record a watermark for a later run to prove: a turn whose
/// first journal batch counted nothing tries once more.)
pub async fn catch_up<S: Store>(store: &S, shutdown: &CancellationToken) -> u64 {
    const SOURCES: [&str; 3] = ["journal", "deliveries", "conversions"];
    let mut counted = [0u64; 3];
    let mut done = [false; 3];
    let mut round = 0;
    while !shutdown.is_cancelled() && done.contains(&false) {
        round += 1;
        for (i, source) in SOURCES.iter().enumerate() {
            if done[i] || shutdown.is_cancelled() {
                continue;
            }
            let batch = match i {
                0 => store.rollup_journal(BATCH).await,
                1 => store.rollup_deliveries(BATCH).await,
                _ => store.rollup_conversions(BATCH).await,
            };
            match batch {
                Ok(Some(n)) => {
                    counted[i] += n;
                    let watermark_only = i == 0 && n == 0 && round == 1;
                    done[i] = n < u64::from(BATCH) && !watermark_only;
                }
                Ok(None) => done[i] = true,
                Err(e) => {
                    warn!(source, error = %e, "the analytics rollup failed; it goes on at the next turn");
                    done[i] = true;
                }
            }
        }
    }
    let [journal, deliveries, conversions] = counted;
    if journal + deliveries + conversions > 0 {
        debug!(journal, deliveries, conversions, "rolled up");
    }
    journal + deliveries + conversions
}
