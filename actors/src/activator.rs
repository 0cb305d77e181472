//! Batched activation: executions woken together (a wave of timers coming
//! due, a recovery scan) bump their lease epochs and read their inboxes in
//! one round trip per batch instead of two each.

use std::sync::Arc;

use sojourn_persistence::{ExecutionRecord, InboxItem, Store};
use sojourn_runtime::ExecutionId;
use tokio::sync::{mpsc, oneshot};

pub(crate) type Activated = Option<(ExecutionRecord, Vec<InboxItem>)>;
type Reply = oneshot::Sender<Result<Activated, String>>;

#[derive(Debug, Clone)]
pub(crate) struct Activator {
    tx: mpsc::Sender<(ExecutionId, Reply)>,
}

impl Activator {
    pub(crate) fn spawn<S: Store>(
        store: Arc<S>,
        max_batch: usize,
    ) -> (Activator, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<(ExecutionId, Reply)>(max_batch * 4);
        let task = tokio::spawn(async move {
            let mut ids = Vec::with_capacity(max_batch);
            let mut replies = Vec::with_capacity(max_batch);
            while let Some((id, reply)) = rx.recv().await {
                ids.push(id);
                replies.push(reply);
                while ids.len() < max_batch {
                    match rx.try_recv() {
                        Ok((id, r)) => {
                            ids.push(id);
                            replies.push(r);
                        }
                        Err(_) => break,
                    }
                }
                match store.activate_many(&ids).await {
                    Ok(records) => {
                        let mut found: std::collections::HashMap<
                            ExecutionId,
                            (ExecutionRecord, Vec<InboxItem>),
                        > = records
                            .into_iter()
                            .map(|(r, i)| (r.id.clone(), (r, i)))
                            .collect();
                        for (id, reply) in ids.drain(..).zip(replies.drain(..)) {
                            let _ = reply.send(Ok(found.remove(&id)));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        ids.clear();
                        for reply in replies.drain(..) {
                            let _ = reply.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
        (Activator { tx }, task)
    }

    pub(crate) async fn activate(&self, id: ExecutionId) -> Result<Activated, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((id, reply))
            .await
            .map_err(|_| "the activator has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the activator dropped the request".to_owned())?
    }
}
