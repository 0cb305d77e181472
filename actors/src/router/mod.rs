//! The router: every input for an execution goes through it to reach the
//! one live actor of that execution, cluster-wide.
//!
//! - This node holds the execution's lease: the input goes to the local
//!   supervisor at once (no round trip).
//! - Nobody does: this node takes the lease (Redis, a batch of executions
//!   per round trip), then the supervisor rehydrates the actor (which bumps
//!   the lease epoch in the database: lease first, then epoch).
//! - Another node does: the input is forwarded to it over its internal
//!   endpoint. A forward that fails falls back to durable delivery: inbox
//!   inputs are rows already and wait for the next activation; a timer
//!   firing is handed back (its claim shortened) and fires again shortly.
//!
//! One file per concern: the decision is here; [`leases`] keeps the leases
//! this node holds ([`Held`]; the supervisor spawns an actor only for an
//! execution in it) and gives them back in batches; [`forward`] talks to
//! the other nodes (peers, the cluster secret, forwarding and accepting);
//! [`fallback`] is durable delivery when an input cannot reach its actor
//! now. Background work (forwards, bounces, delayed re-routes) is bounded
//! ([`MAX_BACKGROUND`]): past the bound an input takes the durable path
//! instead of a task of its own.

mod fallback;
mod forward;
mod leases;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use ractor::ActorRef;
use sojourn_cluster::{Cluster, Lease, Token};
use sojourn_persistence::Store;
use sojourn_runtime::ExecutionId;
use tokio::sync::mpsc;
use tracing::warn;

use crate::execution::Delivery;
use crate::stats::Stats;
use crate::supervisor::SupervisorMsg;

pub(crate) use fallback::MAX_REROUTES;
pub(crate) use forward::Peer;
pub use forward::{DELIVER_PATH, Forwarded, SECRET_HEADER};
pub(crate) use leases::{Held, Release, run_releaser};

/// One item to route: an input, or `None` to activate the execution (its
/// inbox holds inputs, or it was never started).
pub(crate) type Item = (ExecutionId, Option<Delivery>);

pub(crate) struct Router<S: Store> {
    pub(crate) store: Arc<S>,
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) held: Arc<Held>,
    supervisor: OnceLock<ActorRef<SupervisorMsg>>,
    http: reqwest::Client,
    secret: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
    /// Node id → peer, from membership.
    peers: RwLock<HashMap<String, Peer>>,
    releases: mpsc::UnboundedSender<Release>,
    /// Draining or stopping: take no new leases.
    pub(crate) closed: AtomicBool,
    /// Action results being recorded the durable way in the background
    /// (`outbox::record_and_route`): a stopping node waits for them before
    /// it gives its outbox claims up.
    pub(crate) records: tokio_util::task::TaskTracker,
    stats: Arc<Stats>,
    /// How long a timer handed back waits before it is claimed again.
    retry_timer_after: Duration,
    /// This router, for the delayed retries of [`Router::fall_back`].
    me: OnceLock<std::sync::Weak<Router<S>>>,
    /// Bounds the work the router and the supervisor run in the background
    /// (forwards, bounces, delayed re-routes): at the bound, inputs take the
    /// durable path instead of a new task each.
    background: Arc<tokio::sync::Semaphore>,
}

/// At most this many forwards, bounces and delayed re-routes at once.
pub(crate) const MAX_BACKGROUND: usize = 128;

impl<S: Store> std::fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("node", &self.cluster.node_id())
            .finish_non_exhaustive()
    }
}

impl<S: Store> Router<S> {
    /// The router and the receiver of leases to release (drained by
    /// [`run_releaser`]).
    pub(crate) fn new(
        store: Arc<S>,
        cluster: Arc<Cluster>,
        stats: Arc<Stats>,
    ) -> (Router<S>, mpsc::UnboundedReceiver<Release>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_millis(500))
            .build()
            .unwrap_or_default();
        (
            Router {
                store,
                cluster,
                held: Arc::new(Held::default()),
                supervisor: OnceLock::new(),
                http,
                secret: tokio::sync::Mutex::new(None),
                peers: RwLock::default(),
                releases: tx,
                closed: AtomicBool::new(false),
                records: tokio_util::task::TaskTracker::new(),
                stats,
                retry_timer_after: Duration::from_millis(500),
                me: OnceLock::new(),
                background: Arc::new(tokio::sync::Semaphore::new(MAX_BACKGROUND)),
            },
            rx,
        )
    }

    /// Runs `work` in the background, within [`MAX_BACKGROUND`]. `false`
    /// (nothing runs) at the bound: the caller's inputs are rows, and take
    /// the durable path (claim expiry, the recovery scan).
    pub(crate) fn spawn_bounded<F>(&self, work: F) -> bool
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match self.background_slot() {
            Some(slot) => {
                tokio::spawn(async move {
                    work.await;
                    drop(slot);
                });
                true
            }
            None => false,
        }
    }

    /// A place in the background bound, if there is one.
    fn background_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.background.clone().try_acquire_owned().ok()
    }

    /// Lets the router schedule its own retries.
    pub(crate) fn set_self(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    pub(crate) fn set_supervisor(&self, supervisor: ActorRef<SupervisorMsg>) {
        let _ = self.supervisor.set(supervisor);
    }

    pub(crate) fn supervisor_ref(&self) -> Option<&ActorRef<SupervisorMsg>> {
        self.supervisor.get()
    }

    /// Hands items to the local supervisor (the lease is held).
    fn local(&self, items: Vec<Item>) {
        let Some(sup) = self.supervisor_ref() else {
            return;
        };
        for (id, d) in items {
            let _ = match d {
                Some(d) => sup.cast(SupervisorMsg::Deliver(id, d)),
                None => sup.cast(SupervisorMsg::Activate(id)),
            };
        }
    }

    /// Routes a batch of items.
    pub(crate) async fn route(&self, items: Vec<Item>) {
        self.route_try(items, None, 0).await;
    }

    /// Boxed (and `Send`), so a delayed retry can call it again.
    /// `from`: the node that forwarded these items (they are not forwarded
    /// again, and their timers' claims are that node's).
    fn route_try(
        &self,
        items: Vec<Item>,
        from: Option<String>,
        attempt: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if items.is_empty() {
                return;
            }
            let (local, rest): (Vec<Item>, Vec<Item>) = items
                .into_iter()
                .partition(|(id, _)| self.held.contains(id));
            self.local(local);
            if rest.is_empty() {
                return;
            }
            if self.closed.load(Ordering::Relaxed) {
                // Draining: leave them to the nodes that take work.
                self.forward_or_fall_back(rest, from, attempt).await;
                return;
            }
            let ids: Vec<ExecutionId> = rest.iter().map(|(id, _)| id.clone()).collect();
            let leases = match self.cluster.acquire(&ids).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, items = rest.len(), "cannot take leases: inputs wait durably");
                    // Redis is away: no quick retry.
                    self.fall_back(rest, from.as_deref(), MAX_REROUTES).await;
                    return;
                }
            };
            // Closed while the leases were taken (a drain began): give them
            // back and hand the items on.
            if self.closed.load(Ordering::Relaxed) {
                let taken: Vec<(ExecutionId, Token)> = ids
                    .iter()
                    .zip(&leases)
                    .filter_map(|(id, l)| match l {
                        Lease::Mine(t) => Some((id.clone(), t.clone())),
                        Lease::HeldBy(_) => None,
                    })
                    .collect();
                self.release_all(taken);
                self.forward_or_fall_back(rest, from, attempt).await;
                return;
            }
            let mut mine = Vec::new();
            let mut elsewhere: HashMap<String, Vec<Item>> = HashMap::new();
            for ((id, d), lease) in rest.into_iter().zip(leases) {
                match lease {
                    Lease::Mine(token) => {
                        self.held.insert(id.clone(), token);
                        Stats::add(&self.stats.leases_taken, 1);
                        mine.push((id, d));
                    }
                    Lease::HeldBy(node) => elsewhere.entry(node).or_default().push((id, d)),
                }
            }
            self.local(mine);
            for (node, items) in elsewhere {
                if from.is_some() || node == self.cluster.node_id() {
                    // It bounced (the holder thinks it does not hold it), or
                    // the holder is this node's previous process: keep it
                    // durable; that lease is renewed or expires soon.
                    self.fall_back(items, from.as_deref(), attempt).await;
                } else {
                    self.forward_later(node, items, attempt).await;
                }
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use sojourn_persistence::SqliteStore;

    use super::*;

    /// A router over a fresh SQLite file and an in-process cluster, with
    /// its releaser running.
    pub(crate) async fn router() -> Arc<Router<SqliteStore>> {
        router_on(Cluster::local("n1", Duration::from_secs(5))).await
    }

    /// [`router`] on a given cluster backend.
    pub(crate) async fn router_on(cluster: Cluster) -> Arc<Router<SqliteStore>> {
        let path = std::env::temp_dir().join(format!(
            "sojourn-router-{}.db",
            uuid::Uuid::now_v7().simple()
        ));
        let store = Arc::new(SqliteStore::open(&path).await.expect("store"));
        let cluster = Arc::new(cluster);
        let (router, releases) = Router::new(store, cluster.clone(), Arc::new(Stats::default()));
        let router = Arc::new(router);
        router.set_self();
        tokio::spawn(run_releaser(cluster, releases));
        router
    }

    #[tokio::test]
    async fn background_work_is_bounded() {
        let router = router().await;
        let (open, gate) = tokio::sync::watch::channel(false);
        for _ in 0..MAX_BACKGROUND {
            let mut gate = gate.clone();
            assert!(router.spawn_bounded(async move {
                let _ = gate.wait_for(|open| *open).await;
            }));
        }
        assert!(
            !router.spawn_bounded(async {}),
            "past the bound nothing more runs"
        );
        let _ = open.send(true);
        let mut again = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if router.spawn_bounded(async {}) {
                again = true;
                break;
            }
        }
        assert!(again, "finished work frees its place");
    }

    #[tokio::test]
    async fn an_input_for_a_free_execution_takes_its_lease() {
        let router = router().await;
        let id = ExecutionId::new("exe_free");
        // No supervisor yet: the lease is taken, the input waits in its row.
        router.route(vec![(id.clone(), None)]).await;
        assert!(router.held.contains(&id));
        // Taken once: a second input finds it held and goes local.
        router.route(vec![(id.clone(), None)]).await;
        assert_eq!(router.held.len(), 1);
    }
}
