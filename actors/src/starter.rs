//! Batched creation of executions: concurrent start requests share one
//! database transaction (like the committer's group commit), so starting
//! thousands of executions a second does not cost a flush each.

use std::sync::Arc;

use sojourn_persistence::{Created, NewExecution, Store};
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<Created, String>>;

#[derive(Debug, Clone)]
pub(crate) struct Starter {
    tx: mpsc::Sender<(NewExecution, Reply)>,
}

impl Starter {
    pub(crate) fn spawn<S: Store>(
        store: Arc<S>,
        max_batch: usize,
    ) -> (Starter, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<(NewExecution, Reply)>(max_batch * 4);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            let mut replies = Vec::with_capacity(max_batch);
            while let Some((first, reply)) = rx.recv().await {
                batch.push(first);
                replies.push(reply);
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok((n, r)) => {
                            batch.push(n);
                            replies.push(r);
                        }
                        Err(_) => break,
                    }
                }
                match store.create_executions(std::mem::take(&mut batch)).await {
                    Ok(created) => {
                        for (c, r) in created.into_iter().zip(replies.drain(..)) {
                            let _ = r.send(Ok(c));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for r in replies.drain(..) {
                            let _ = r.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
        (Starter { tx }, task)
    }

    pub(crate) async fn create(&self, new: NewExecution) -> Result<Created, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((new, reply))
            .await
            .map_err(|_| "the starter has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the starter dropped the request".to_owned())?
    }
}
