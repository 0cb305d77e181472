//! Waiting for an execution to finish (attach: `?wait=` on the API).
//!
//! A waiter registers in memory, per execution, only for executions someone
//! waits on; the place that commits a terminal status (`completed`,
//! `failed`, `cancelled`) calls [`Finished::notify`], which wakes them. No
//! task per waiter, no polling: a waiter is a oneshot in a map, and a
//! finish nobody waits for costs one atomic load (plus, in a cluster, one
//! id handed to the announcer).
//!
//! Across nodes (Redis), an execution may finish on another node than the
//! one its waiter asked: every node announces the ids that finish on it on
//! a Redis channel, in batches (the [`Announcer`], off the execution's
//! path), and every node listens (the [`Listener`]) and wakes its own
//! waiters. Announcements are fire-and-forget: one missed (Redis away
//! meanwhile) costs a waiter only time, never a wrong answer, since a
//! waiter reads the execution again when its time runs out; and after every
//! (re)subscription the listener wakes all local waiters to read again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sojourn_cluster::Cluster;
use sojourn_runtime::ExecutionId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Waiters of one execution: their wake-ups by waiter key (one removed in
/// O(1) when it times out, however many wait for the same execution).
type Waiting = HashMap<u64, oneshot::Sender<()>>;

/// The node's waiters, by execution.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    /// Waiters registered now. Zero: [`Finished::notify`] takes no lock.
    count: AtomicUsize,
    next_key: AtomicU64,
    waiters: Mutex<HashMap<ExecutionId, Waiting>>,
    /// In a shared cluster: finished ids for the [`Announcer`].
    announce: Option<mpsc::Sender<ExecutionId>>,
    /// The node is stopping: waiters answer at once.
    stopping: AtomicBool,
}

impl Finished {
    /// A registry that also announces finishes to other nodes through
    /// `announce` (drained by an [`Announcer`]).
    pub(crate) fn announcing(announce: mpsc::Sender<ExecutionId>) -> Finished {
        Finished {
            announce: Some(announce),
            ..Finished::default()
        }
    }

    /// The execution `id` has just committed a terminal status: wake its
    /// waiters here, and (in a cluster) tell the other nodes. Call it after
    /// the commit, so that a woken waiter reads the final state.
    pub(crate) fn notify(&self, id: &ExecutionId) {
        if let Some(tx) = &self.announce {
            // Full (Redis has been failing for a while): dropped; waiters
            // elsewhere answer at their deadline.
            let _ = tx.try_send(id.clone());
        }
        self.wake(id.as_str());
    }

    /// Wakes the waiters of `id` on this node only (an announcement from
    /// another node).
    pub(crate) fn wake(&self, id: &str) {
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let woken = match self.waiters.lock() {
            Ok(mut m) => m.remove(id),
            Err(_) => None,
        };
        if let Some(woken) = woken {
            self.count.fetch_sub(woken.len(), Ordering::SeqCst);
            for tx in woken.into_values() {
                let _ = tx.send(());
            }
        }
    }

    /// Wakes every waiter, to read its execution again (after a gap in the
    /// announcements, or when the node stops).
    pub(crate) fn wake_all(&self) {
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let all = match self.waiters.lock() {
            Ok(mut m) => std::mem::take(&mut *m),
            Err(_) => HashMap::new(),
        };
        for (_, waiting) in all {
            self.count.fetch_sub(waiting.len(), Ordering::SeqCst);
            for tx in waiting.into_values() {
                let _ = tx.send(());
            }
        }
    }

    /// The node is stopping: every waiter answers now, and new ones do not
    /// wait.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Registers a waiter for `id`. Register *before* reading the
    /// execution: a finish between the read and the wait then still wakes
    /// it. Dropping the waiter (a timeout) removes its registration.
    pub(crate) fn register(&self, id: &ExecutionId) -> Waiter<'_> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.waiters.lock() {
            m.entry(id.clone()).or_default().insert(key, tx);
            self.count.fetch_add(1, Ordering::SeqCst);
        }
        Waiter {
            registry: self,
            id: id.clone(),
            key,
            rx,
        }
    }

    /// Waiters registered now.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn forget(&self, id: &ExecutionId, key: u64) {
        if let Ok(mut m) = self.waiters.lock()
            && let Some(waiting) = m.get_mut(id.as_str())
        {
            if waiting.remove(&key).is_some() {
                self.count.fetch_sub(1, Ordering::SeqCst);
            }
            if waiting.is_empty() {
                m.remove(id.as_str());
            }
        }
    }
}

/// One registered wait; dropping it unregisters it.
#[derive(Debug)]
pub(crate) struct Waiter<'a> {
    registry: &'a Finished,
    id: ExecutionId,
    key: u64,
    rx: oneshot::Receiver<()>,
}

impl Waiter<'_> {
    /// Until the execution finishes (or every waiter is woken to read
    /// again).
    pub(crate) async fn woken(&mut self) {
        // A dropped sender (a poisoned map) also ends the wait: the caller
        // reads the execution again either way.
        let _ = (&mut self.rx).await;
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.registry.forget(&self.id, self.key);
    }
}

/// Ids announced in one message at most.
const ANNOUNCE_BATCH: usize = 1_000;

/// Finished ids waiting to be announced, at most (a few seconds of a busy
/// node's finishes).
pub(crate) const ANNOUNCE_QUEUE: usize = 100_000;

/// The least time between two announcements: under load ids gather for at
/// most this long (at most 500 PUBLISH a second); after a quiet spell the
/// first finish goes out at once.
const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(2);

/// Announces the executions that finished on this node to the others, in
/// batches: while one PUBLISH is in flight (or for [`ANNOUNCE_INTERVAL`])
/// the next batch gathers. A failed PUBLISH is dropped with a warning: its
/// waiters elsewhere answer at their deadline, correctly.
pub(crate) struct Announcer {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) ids: mpsc::Receiver<ExecutionId>,
}

impl Announcer {
    /// Runs until `stop`; then announces what is already queued and ends.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(ANNOUNCE_BATCH);
        let mut failing = false;
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            if let Some(next) = last.map(|l| l + ANNOUNCE_INTERVAL)
                && next > tokio::time::Instant::now()
            {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = stop.cancelled() => {}
                }
            }
            tokio::select! {
                n = self.ids.recv_many(&mut batch, ANNOUNCE_BATCH) => {
                    if n == 0 {
                        return;
                    }
                }
                () = stop.cancelled() => {
                    // What finished before the stop is still announced.
                    while let Ok(id) = self.ids.try_recv() {
                        batch.push(id);
                    }
                    for chunk in batch.chunks(ANNOUNCE_BATCH) {
                        if self.cluster.publish_finished(chunk).await.is_err() {
                            break;
                        }
                    }
                    return;
                }
            }
            last = Some(tokio::time::Instant::now());
            match self.cluster.publish_finished(&batch).await {
                Ok(()) if failing => {
                    failing = false;
                    info!("announcing finished executions to the cluster again");
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cannot announce finished executions to the cluster; waiters on other nodes answer at their deadline");
                    }
                    failing = true;
                }
            }
            batch.clear();
        }
    }
}

/// Listens to the executions other nodes announce as finished and wakes
/// the waiters here; subscribes again after Redis restarts or the
/// connection drops (with a warning), waking every local waiter to read its
/// execution again, since announcements made meanwhile are lost.
pub(crate) struct Listener {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) finished: Arc<Finished>,
}

/// From one failed subscription to the next attempt, at most.
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);

impl Listener {
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut lost = false;
        loop {
            let subscribed = tokio::select! {
                s = self.cluster.subscribe_finished() => s,
                () = stop.cancelled() => return,
            };
            match subscribed {
                Ok(None) => return,
                Ok(Some(mut feed)) => {
                    if lost {
                        info!("listening to finished executions again");
                    }
                    backoff = Duration::from_millis(100);
                    // Whatever was announced before this subscription is
                    // not heard: waiters read their execution again.
                    self.finished.wake_all();
                    loop {
                        let next = tokio::select! {
                            n = feed.next() => n,
                            () = stop.cancelled() => return,
                        };
                        match next {
                            Ok(announced) => {
                                // Nobody waits here: not even parsed.
                                if self.finished.len() > 0 {
                                    for id in announced.ids() {
                                        self.finished.wake(id.as_str());
                                    }
                                }
                            }
                            Err(e) => {
                                warn!(error = %e, "lost the subscription to finished executions; subscribing again");
                                lost = true;
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    if !lost {
                        warn!(error = %e, "cannot subscribe to finished executions; retrying");
                    }
                    lost = true;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ExecutionId {
        ExecutionId::new(s.to_owned())
    }

    #[tokio::test]
    async fn a_finish_wakes_its_waiters_and_only_them() {
        let f = Finished::default();
        let mut a1 = f.register(&id("a"));
        let mut a2 = f.register(&id("a"));
        let mut b = f.register(&id("b"));
        assert_eq!(f.len(), 3);
        f.notify(&id("a"));
        assert_eq!(f.len(), 1);
        a1.woken().await;
        a2.woken().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(20), b.woken())
                .await
                .is_err(),
            "b still waits"
        );
        drop((a1, a2));
        assert_eq!(f.len(), 1);
        drop(b);
        assert_eq!(f.len(), 0, "a dropped waiter unregisters");
        assert!(f.waiters.lock().map(|m| m.is_empty()).unwrap_or(false));
    }

    #[test]
    fn many_waiters_cost_a_map_entry_each_and_leave_nothing_behind() {
        let f = Finished::default();
        let one: Vec<_> = (0..10_000).map(|_| f.register(&id("same"))).collect();
        let many: Vec<_> = (0..10_000)
            .map(|i| f.register(&id(&format!("e{i}"))))
            .collect();
        assert_eq!(f.len(), 20_000);
        // Timed out, in any order.
        drop(many);
        drop(one);
        assert_eq!(f.len(), 0);
        assert!(f.waiters.lock().map(|m| m.is_empty()).unwrap_or(false));
    }

    #[tokio::test]
    async fn a_finish_before_the_wait_begins_is_not_missed() {
        let f = Finished::default();
        // Registered, then (before awaiting) the execution finishes.
        let mut w = f.register(&id("a"));
        f.notify(&id("a"));
        tokio::time::timeout(Duration::from_secs(5), w.woken())
            .await
            .expect("woken");
    }

    #[tokio::test]
    async fn stop_wakes_everyone_and_announces_go_to_the_channel() {
        let (tx, mut rx) = mpsc::channel(8);
        let f = Finished::announcing(tx);
        let mut a = f.register(&id("a"));
        let mut b = f.register(&id("b"));
        f.stop();
        a.woken().await;
        b.woken().await;
        assert!(f.is_stopping());
        assert_eq!(f.len(), 0);
        f.notify(&id("c"));
        assert_eq!(rx.recv().await, Some(id("c")));
    }
}
