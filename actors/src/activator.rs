//! Batched activation: executions woken together (a wave of timers coming
//! due, a recovery scan) bump their lease epochs and read their inboxes in
//! one round trip per batch instead of two each.

use std::collections::HashMap;
use std::sync::Arc;

use sojourn_persistence::{ExecutionRecord, InboxItem, Store};
use sojourn_runtime::ExecutionId;

use crate::batch::Batcher;

/// The execution and its waiting inputs; `None` if it does not exist.
pub(crate) type Activated = Option<(ExecutionRecord, Vec<InboxItem>)>;

pub(crate) type Activator = Batcher<ExecutionId, Activated>;

pub(crate) fn spawn<S: Store>(
    store: Arc<S>,
    max_batch: usize,
) -> (Activator, tokio::task::JoinHandle<()>) {
    Batcher::spawn("activator", max_batch, move |ids: Vec<ExecutionId>| {
        let store = store.clone();
        async move {
            let records = store.activate_many(&ids).await.map_err(|e| e.to_string())?;
            let mut found: HashMap<ExecutionId, (ExecutionRecord, Vec<InboxItem>)> = records
                .into_iter()
                .map(|(r, i)| (r.id.clone(), (r, i)))
                .collect();
            Ok(ids.iter().map(|id| found.remove(id)).collect())
        }
    })
}
