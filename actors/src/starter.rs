//! Batched creation of executions: concurrent start requests share one
//! database transaction, so starting thousands of executions a second does
//! not cost a flush each.

use std::sync::Arc;

use sojourn_persistence::{Created, NewExecution, Store};

use crate::batch::Batcher;

pub(crate) type Starter = Batcher<NewExecution, Created>;

pub(crate) fn spawn<S: Store>(
    store: Arc<S>,
    max_batch: usize,
) -> (Starter, tokio::task::JoinHandle<()>) {
    Batcher::spawn("starter", max_batch, move |batch: Vec<NewExecution>| {
        let store = store.clone();
        async move {
            store
                .create_executions(batch)
                .await
                .map_err(|e| e.to_string())
        }
    })
}
