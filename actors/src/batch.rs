//! One batching loop for every place where many actors share a round trip:
//! requests queue on a channel, the task takes whatever is waiting (up to
//! `max_batch`), runs one store call for all of them and answers each — the
//! way a database groups the flushes of its own log.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Reply<R> = oneshot::Sender<Result<R, String>>;

/// A handle to a batching task: `call` queues one request and waits for its
/// answer.
#[derive(Debug)]
pub(crate) struct Batcher<T, R> {
    tx: mpsc::Sender<(T, Reply<R>)>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Spawns the task. `run` gets a batch and returns one answer per
    /// request, in order; an error answers every request of the batch.
    pub(crate) fn spawn<F, Fut>(
        name: &'static str,
        max_batch: usize,
        run: F,
    ) -> (Batcher<T, R>, tokio::task::JoinHandle<()>)
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, String>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<(T, Reply<R>)>(max_batch * 4);
        let task = tokio::spawn(async move {
            let mut items = Vec::with_capacity(max_batch);
            let mut replies = Vec::with_capacity(max_batch);
            while let Some((item, reply)) = rx.recv().await {
                items.push(item);
                replies.push(reply);
                while items.len() < max_batch {
                    match rx.try_recv() {
                        Ok((item, reply)) => {
                            items.push(item);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                match run(std::mem::take(&mut items)).await {
                    Ok(answers) => {
                        let mut answers = answers.into_iter();
                        for reply in replies.drain(..) {
                            let answer = answers
                                .next()
                                .ok_or_else(|| format!("the {name} gave no answer"));
                            let _ = reply.send(answer);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, batch = replies.len(), "{name} failed");
                        for reply in replies.drain(..) {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        (Batcher { tx }, task)
    }

    /// Queues one request and waits for its answer.
    pub(crate) async fn call(&self, item: T) -> Result<R, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| "the batcher has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the batcher dropped the request".to_owned())?
    }
}
