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

/// Rolls up the journal, then deliveries and conversions, batch after
/// batch until caught up (a batch shorter than [`BATCH`]), another node
/// holds the source, the store fails, or the node stops. Returns the rows
/// counted. (On PostgreSQL a journal run may only record a watermark for a
/// later run to prove: a turn that counted nothing tries once more.)
pub async fn catch_up<S: Store>(store: &S, shutdown: &CancellationToken) -> u64 {
    let journal = drain("journal", 2, shutdown, || store.rollup_journal(BATCH)).await;
    let deliveries = drain("deliveries", 1, shutdown, || store.rollup_deliveries(BATCH)).await;
    let conversions = drain("conversions", 1, shutdown, || {
        store.rollup_conversions(BATCH)
    })
    .await;
    if journal + deliveries + conversions > 0 {
        debug!(journal, deliveries, conversions, "rolled up");
    }
    journal + deliveries + conversions
}

/// Runs one source's batches until a short one (after at least `tries`
/// batches when none counted anything).
async fn drain<F, Fut>(source: &str, tries: u32, shutdown: &CancellationToken, mut batch: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<u64>, sojourn_persistence::Error>>,
{
    let mut total = 0;
    let mut ran = 0;
    while !shutdown.is_cancelled() {
        match batch().await {
            Ok(Some(n)) => {
                total += n;
                ran += 1;
                if n >= u64::from(BATCH) {
                    continue;
                }
                if n > 0 || ran >= tries {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                warn!(source, error = %e, "the analytics rollup failed; it goes on at the next turn");
                break;
            }
        }
    }
    total
}
