//! The recovery loop: every `recovery_poll`, activates executions whose
//! inbox holds inputs (after a crash, or inputs that raced a passivation or
//! could not be routed) and executions created but never started (their
//! creator died before the start committed). A draining node leaves this
//! to the others.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::Utc;
use sojourn_persistence::Store;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Config;
use crate::router::Router;

/// The recovery loop of a node.
pub(crate) struct Recovery<S: Store> {
    pub(crate) store: Arc<S>,
    pub(crate) router: Arc<Router<S>>,
    pub(crate) config: Config,
}

impl<S: Store> Recovery<S> {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        recover(self.store, self.router, self.config, shutdown).await;
    }
}

/// Periodically activates executions whose inbox holds inputs (after a
/// crash, or inputs that raced a passivation).
async fn recover<S: Store>(
    store: Arc<S>,
    router: Arc<Router<S>>,
    config: Config,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if router.closed.load(Ordering::Relaxed) {
            // Draining: the other nodes recover.
            tokio::select! {
                _ = tokio::time::sleep(config.recovery_poll) => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        // Inputs a few seconds old: younger ones are on their way.
        let older_than = Utc::now() - chrono::Duration::seconds(3);
        match store.executions_with_inputs(older_than, 10_000).await {
            Ok(ids) => {
                let items = ids.into_iter().map(|id| (id, None)).collect();
                router.route(items).await;
            }
            Err(e) => warn!(error = %e, "looking for executions with inputs failed"),
        }
        // Created but never started (their creator died before the start
        // committed). Young ones are left to their creator.
        let before = Utc::now() - chrono::Duration::seconds(5);
        match store.pending_executions(before, 10_000).await {
            Ok(ids) => {
                let items = ids.into_iter().map(|id| (id, None)).collect();
                router.route(items).await;
            }
            Err(e) => warn!(error = %e, "looking for pending executions failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(config.recovery_poll) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}
