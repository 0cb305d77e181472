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
//! Leases this node holds are kept in [`Held`]; the supervisor spawns an
//! actor only for an execution in it, and removes it when the actor is gone
//! (the lease is then released in the background).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use chrono::Utc;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use sojourn_cluster::{Cluster, Lease, Token};
use sojourn_persistence::Store;
use sojourn_runtime::{ExecutionId, Input, TimerId};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::execution::Delivery;
use crate::stats::Stats;
use crate::supervisor::SupervisorMsg;

/// How many times inputs that could not reach their execution are routed
/// again (a quarter of the lease TTL apart) before the recovery scan is left
/// to find them.
const MAX_REROUTES: u32 = 8;

/// The header carrying the cluster secret on internal requests.
pub const SECRET_HEADER: &str = "x-sojourn-cluster-secret";

/// The internal route a node forwards inputs to.
pub const DELIVER_PATH: &str = "/internal/v1/deliver";

/// An input forwarded to the node holding its execution (`input: None`:
/// read the inbox).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forwarded {
    pub execution_id: ExecutionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Input>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_timer: Option<TimerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<i64>,
    /// The node that forwarded it (it holds the timer's claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// One item to route: an input, or `None` to activate the execution (its
/// inbox holds inputs, or it was never started).
pub(crate) type Item = (ExecutionId, Option<Delivery>);

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

/// A peer, from membership.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) address: String,
    pub(crate) draining: bool,
}

/// How long the cluster secret is trusted before it is read again (a
/// Redis flush makes a new one).
const SECRET_TTL: Duration = Duration::from_secs(5);

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
    stats: Arc<Stats>,
    /// How long a timer handed back waits before it is claimed again.
    retry_timer_after: Duration,
    /// This router, for the delayed retries of [`Router::fall_back`].
    me: OnceLock<std::sync::Weak<Router<S>>>,
}

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
                stats,
                retry_timer_after: Duration::from_millis(500),
                me: OnceLock::new(),
            },
            rx,
        )
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

    /// The cluster secret, read again every few seconds (or at once with
    /// `fresh`: a peer refused the one we had).
    pub(crate) async fn secret(&self, fresh: bool) -> Result<String, sojourn_cluster::Error> {
        let mut cached = self.secret.lock().await;
        if !fresh
            && let Some((s, at)) = cached.as_ref()
            && at.elapsed() < SECRET_TTL
        {
            return Ok(s.clone());
        }
        let s = self.cluster.secret().await?;
        *cached = Some((s.clone(), std::time::Instant::now()));
        Ok(s)
    }

    pub(crate) fn set_peers(&self, nodes: impl IntoIterator<Item = (String, Peer)>) {
        if let Ok(mut m) = self.peers.write() {
            m.clear();
            m.extend(nodes);
        }
    }

    /// A live node that takes work, other than this one.
    fn some_peer(&self) -> Option<String> {
        let m = self.peers.read().ok()?;
        m.iter()
            .filter(|(id, p)| !p.draining && id.as_str() != self.cluster.node_id())
            .map(|(id, _)| id.clone())
            .min()
    }

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
                    self.forward_later(node, items, attempt);
                }
            }
        })
    }

    async fn forward_or_fall_back(&self, items: Vec<Item>, from: Option<String>, attempt: u32) {
        if from.is_some() {
            self.fall_back(items, from.as_deref(), attempt).await;
            return;
        }
        let ids: Vec<ExecutionId> = items.iter().map(|(id, _)| id.clone()).collect();
        let holders = match self.cluster.holders(&ids).await {
            Ok(h) => h,
            Err(e) => {
                debug!(error = %e, "looking up lease holders failed");
                vec![None; ids.len()]
            }
        };
        let mut by_node: HashMap<String, Vec<Item>> = HashMap::new();
        let mut none = Vec::new();
        for (item, holder) in items.into_iter().zip(holders) {
            match holder {
                Some(h) if h != self.cluster.node_id() => by_node.entry(h).or_default().push(item),
                _ => none.push(item),
            }
        }
        // Nobody holds these: a node that takes work does (this one is
        // draining).
        match self.some_peer() {
            Some(peer) if !none.is_empty() => by_node.entry(peer).or_default().extend(none),
            _ => self.fall_back(none, None, attempt).await,
        }
        for (node, items) in by_node {
            self.forward_later(node, items, attempt);
        }
    }

    /// Forwards in the background: a slow or paused peer must not hold up
    /// the timer service or the outbox.
    fn forward_later(&self, node: String, items: Vec<Item>, attempt: u32) {
        match self.me.get().and_then(std::sync::Weak::upgrade) {
            Some(me) => {
                tokio::spawn(async move { me.forward(&node, items, attempt).await });
            }
            None => debug!("router gone: inputs wait durably"),
        }
    }

    /// Sends items to the node holding them; on failure, durable delivery.
    async fn forward(&self, node: &str, items: Vec<Item>, attempt: u32) {
        let address = self
            .peers
            .read()
            .ok()
            .and_then(|m| m.get(node).map(|p| p.address.clone()));
        let Some(address) = address else {
            debug!(node, "no address for the lease holder: inputs wait durably");
            self.fall_back(items, None, attempt).await;
            return;
        };
        let secret = match self.secret(false).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "no cluster secret: inputs wait durably");
                self.fall_back(items, None, attempt).await;
                return;
            }
        };
        let body: Vec<Forwarded> = items
            .iter()
            .map(|(id, d)| Forwarded {
                execution_id: id.clone(),
                input: d.as_ref().map(|d| d.input.clone()),
                fired_timer: d.as_ref().and_then(|d| d.fired_timer.clone()),
                inbox_id: d.as_ref().and_then(|d| d.inbox_id),
                from: Some(self.cluster.node_id().to_owned()),
            })
            .collect();
        let sent = self
            .http
            .post(format!("{}{DELIVER_PATH}", address.trim_end_matches('/')))
            .header(SECRET_HEADER, secret)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                Stats::add(&self.stats.forwarded, items.len() as u64);
            }
            Ok(r) => {
                if r.status() == reqwest::StatusCode::UNAUTHORIZED {
                    // The secret changed (Redis was flushed): read it again.
                    let _ = self.secret(true).await;
                }
                warn!(node, status = %r.status(), "forwarding inputs refused: they wait durably");
                self.fall_back(items, None, attempt).await;
            }
            Err(e) => {
                warn!(node, error = %e, "forwarding inputs failed: they wait durably");
                self.fall_back(items, None, attempt).await;
            }
        }
    }

    /// Durable delivery: a timer firing goes back to the timer table, to be
    /// claimed again soon; inbox inputs and activations are rows already,
    /// and are routed again a little later (the holder's lease may be about
    /// to expire: it died) — a few times, then the recovery scan has them.
    async fn fall_back(&self, items: Vec<Item>, owner: Option<&str>, attempt: u32) {
        let mut timers: Vec<(ExecutionId, TimerId)> = Vec::new();
        let mut later: Vec<Item> = Vec::new();
        for (id, d) in items {
            match d.and_then(|d| d.fired_timer) {
                Some(t) => timers.push((id, t)),
                None => later.push((id, None)),
            }
        }
        if !later.is_empty()
            && attempt < MAX_REROUTES
            && let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade)
        {
            let wait = self.cluster.lease_ttl() / 4;
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if !me.closed.load(Ordering::Relaxed) {
                    me.route_try(later, None, attempt + 1).await;
                }
            });
        }
        if timers.is_empty() {
            return;
        }
        // Redis away (attempt at the limit): hand them back for longer.
        let wait = if attempt >= MAX_REROUTES {
            self.cluster.lease_ttl()
        } else {
            self.retry_timer_after
        };
        let at =
            Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(1));
        let owner = owner.unwrap_or(self.cluster.node_id());
        if let Err(e) = self.store.defer_timers(owner, &timers, at).await {
            warn!(error = %e, "handing timers back failed; their claims expire");
        }
    }

    /// Accepts inputs another node forwarded here.
    pub(crate) async fn accept(&self, items: Vec<Forwarded>) {
        let from = items
            .iter()
            .find_map(|f| f.from.clone())
            .unwrap_or_else(|| "unknown".to_owned());
        let items: Vec<Item> = items
            .into_iter()
            .map(|f| {
                let d = f.input.map(|input| Delivery {
                    input,
                    fired_timer: f.fired_timer,
                    inbox_id: f.inbox_id,
                });
                (f.execution_id, d)
            })
            .collect();
        self.route_try(items, Some(from), 0).await;
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
