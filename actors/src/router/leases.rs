//! The leases this node holds: taking them for new executions, the set the
//! supervisor checks before it spawns an actor ([`Held`]), and giving them
//! back in batches as actors stop ([`run_releaser`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sojourn_cluster::{Cluster, Lease, Token};
use sojourn_persistence::Store;
use sojourn_runtime::ExecutionId;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Router;

/// The executions whose leases this node holds, with their tokens.
#[derive(Debug, Default)]
pub(crate) struct Held {
    ids: Mutex<HashMap<ExecutionId, Token>>,
}

impl Held {
    pub(crate) fn contains(&self, id: &ExecutionId) -> bool {
        self.ids.lock().map(|s| s.contains_key(id)).unwrap_or(false)
    }

    pub(crate) fn insert(&self, id: ExecutionId, token: Token) {
        if let Ok(mut s) = self.ids.lock() {
            s.insert(id, token);
        }
    }

    /// Removes `id` only if it is held under `token` (not under a newer
    /// token taken since); whether it was.
    pub(crate) fn remove_if(&self, id: &ExecutionId, token: &Token) -> bool {
        let Ok(mut s) = self.ids.lock() else {
            return false;
        };
        if s.get(id) == Some(token) {
            s.remove(id);
            true
        } else {
            false
        }
    }

    pub(crate) fn remove(&self, id: &ExecutionId) -> Option<Token> {
        self.ids.lock().ok().and_then(|mut s| s.remove(id))
    }

    pub(crate) fn snapshot(&self) -> Vec<(ExecutionId, Token)> {
        self.ids
            .lock()
            .map(|s| s.iter().map(|(i, t)| (i.clone(), t.clone())).collect())
            .unwrap_or_default()
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub(crate) fn clear(&self) -> Vec<(ExecutionId, Token)> {
        self.ids
            .lock()
            .map(|mut s| s.drain().collect())
            .unwrap_or_default()
    }
}

impl<S: Store> Router<S> {
    /// The lease of `id` is gone from this node (its actor stopped):
    /// release it in the background.
    pub(crate) fn released(&self, id: &ExecutionId) {
        if let Some(token) = self.held.remove(id) {
            let _ = self.releases.send(Release::Lease(id.clone(), token));
        }
    }

    /// Releases leases already taken out of `held`.
    pub(crate) fn release_all(&self, leases: Vec<(ExecutionId, Token)>) {
        for (id, token) in leases {
            let _ = self.releases.send(Release::Lease(id, token));
        }
    }

    /// Waits until every lease released so far is given back.
    pub(crate) async fn flush_releases(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.releases.send(Release::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// Takes leases for new executions before they are created; returns
    /// which ones this node got.
    pub(crate) async fn acquire_new(&self, ids: &[ExecutionId]) -> Vec<bool> {
        if self.closed.load(Ordering::Relaxed) {
            return vec![false; ids.len()];
        }
        match self.cluster.acquire(ids).await {
            Ok(leases) => ids
                .iter()
                .zip(leases)
                .map(|(id, l)| match l {
                    Lease::Mine(token) => {
                        self.held.insert(id.clone(), token);
                        true
                    }
                    Lease::HeldBy(_) => false,
                })
                .collect(),
            Err(e) => {
                warn!(error = %e, "cannot take leases for new executions; they start when the cluster answers");
                vec![false; ids.len()]
            }
        }
    }
}

/// What the releaser is asked.
#[derive(Debug)]
pub(crate) enum Release {
    Lease(ExecutionId, Token),
    /// Answer once everything before this is released.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Releases leases in batches as their actors stop.
pub(crate) async fn run_releaser(cluster: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<Release>) {
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Release::Lease(id, token) => batch.push((id, token)),
                Release::Flush(tx) => flushes.push(tx),
            }
            if batch.len() < 1_000 {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty()
            && let Err(e) = cluster.release(&batch).await
        {
            debug!(error = %e, leases = batch.len(), "releasing leases failed; they expire");
        }
        batch.clear();
        for tx in flushes.drain(..) {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use sojourn_runtime::ExecutionId;

    use super::*;
    use crate::router::tests::router;

    #[tokio::test]
    async fn new_executions_take_leases_unless_the_node_is_closed() {
        let router = router().await;
        let (a, b) = (ExecutionId::new("exe_a"), ExecutionId::new("exe_b"));
        assert_eq!(router.acquire_new(std::slice::from_ref(&a)).await, [true]);
        assert!(router.held.contains(&a));
        router.closed.store(true, Ordering::Relaxed);
        assert_eq!(router.acquire_new(std::slice::from_ref(&b)).await, [false]);
        assert!(!router.held.contains(&b));
    }

    /// Against the Redis every test machine runs (scripts/test.sh), with
    /// ids of this test's own.
    #[tokio::test]
    async fn a_stopped_actor_gives_its_lease_back() {
        let url = "redis://127.0.0.1:6379";
        let ttl = std::time::Duration::from_secs(30);
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let node = format!("n1-{suffix}");
        let router =
            crate::router::tests::router_on(Cluster::redis(url, node.clone(), ttl).expect("redis"))
                .await;
        let other = Cluster::redis(url, format!("n2-{suffix}"), ttl).expect("redis");
        let a = ExecutionId::new(format!("exe_{suffix}"));
        assert_eq!(router.acquire_new(std::slice::from_ref(&a)).await, [true]);
        assert_eq!(
            router.cluster.holder(&a).await.expect("holder"),
            Some(node.clone())
        );
        assert!(matches!(
            other.acquire(std::slice::from_ref(&a)).await.expect("acquire")[..],
            [Lease::HeldBy(ref n)] if *n == node
        ));
        router.released(&a);
        router.flush_releases().await;
        assert!(!router.held.contains(&a));
        assert_eq!(router.cluster.holder(&a).await.expect("holder"), None);
        // Given back: another node takes it.
        let taken = other
            .acquire(std::slice::from_ref(&a))
            .await
            .expect("acquire");
        assert!(matches!(taken[..], [Lease::Mine(_)]), "{taken:?}");
        if let [Lease::Mine(token)] = &taken[..] {
            other
                .release(&[(a.clone(), token.clone())])
                .await
                .expect("release");
        }
    }

    #[test]
    fn held_leases_are_a_set_with_tokens() {
        let held = Held::default();
        let a = ExecutionId::new("exe_a");
        let token = "n1#1:1".to_owned();
        held.insert(a.clone(), token.clone());
        assert!(held.contains(&a));
        assert_eq!(held.snapshot(), vec![(a.clone(), token.clone())]);
        assert_eq!(held.remove(&a), Some(token));
        assert_eq!(held.remove(&a), None);
        held.insert(a.clone(), "n1#1:2".to_owned());
        assert_eq!(held.clear().len(), 1);
        assert_eq!(held.len(), 0);
    }
}
