//! Batched creation of executions: concurrent start requests share one
//! database transaction, so starting thousands of executions a second does
//! not cost a flush each. A batch the database refuses because of one
//! request's data is retried one by one, so a bad request fails alone.

use std::sync::Arc;

use sojourn_persistence::{Created, NewExecution, Store};

use crate::batch::Batcher;

/// Each request's fate: created, or refused for its own data (the message).
pub(crate) type Starter = Batcher<NewExecution, Result<Created, String>>;

pub(crate) fn spawn<S: Store>(
    store: Arc<S>,
    max_batch: usize,
) -> (Starter, tokio::task::JoinHandle<()>) {
    Batcher::spawn("starter", max_batch, move |batch: Vec<NewExecution>| {
        let store = store.clone();
        async move {
            match store.create_executions(&batch).await {
                Ok(created) => Ok(created.into_iter().map(Ok).collect()),
                Err(e) if e.is_data_error() => {
                    let mut out = Vec::with_capacity(batch.len());
                    for one in &batch {
                        match store.create_executions(std::slice::from_ref(one)).await {
                            Ok(mut c) => out.push(c.pop().ok_or("no answer".to_owned())),
                            Err(e) if e.is_data_error() => out.push(Err(e.to_string())),
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    Ok(out)
                }
                Err(e) => Err(e.to_string()),
            }
        }
    })
}
