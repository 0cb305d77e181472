//! The node's life in the cluster, in two loops:
//!
//! - **heartbeat** (every `heartbeat_interval`): registers the node with its
//!   address and actor count; learns the other nodes' addresses (for
//!   forwarding); when a node's heartbeat has expired, hands its claimed
//!   timers and outbox messages back at once so the survivors fire and send
//!   them (instead of waiting for the claims to expire); and starts a drain
//!   when an operator asked for one (`sojourn cluster drain NODE`).
//! - **lease renewal** (every third of the lease TTL): extends the leases
//!   of the live actors in batches. A lease another node holds now (Redis
//!   lost it, or this node was paused past its TTL) stops its actor at
//!   once; if renewals fail for a whole TTL (Redis unreachable), every
//!   local actor stops, since another node may take their executions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sojourn_cluster::NodeInfo;
use sojourn_persistence::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::router::Router;
use crate::stats::Stats;
use crate::supervisor::SupervisorMsg;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the heartbeat loop needs beside the router.
pub(crate) struct Beat {
    pub(crate) address: String,
    pub(crate) interval: Duration,
    pub(crate) started_ms: u64,
    /// Set when an operator's drain request arrives; the engine drains.
    pub(crate) drain: Arc<Notify>,
    pub(crate) draining: Arc<AtomicBool>,
}

/// The heartbeat loop of a node; it stops last at shutdown (with its own
/// token), so a node finishing its sends never looks dead.
pub(crate) struct Heartbeat<S: Store> {
    pub(crate) router: Arc<Router<S>>,
    pub(crate) beat: Beat,
}

impl<S: Store> Heartbeat<S> {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        heartbeat(self.router, self.beat, shutdown).await;
    }
}

/// The lease renewal loop of a node.
pub(crate) struct LeaseRenewal<S: Store> {
    pub(crate) router: Arc<Router<S>>,
    pub(crate) stats: Arc<Stats>,
}

impl<S: Store> LeaseRenewal<S> {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        renew_leases(self.router, self.stats, shutdown).await;
    }
}

async fn heartbeat<S: Store>(router: Arc<Router<S>>, beat: Beat, shutdown: CancellationToken) {
    let cluster = router.cluster.clone();
    // A restarted node takes work again.
    let _ = cluster.clear_drain().await;
    // Beat often enough that one late beat does not get a live node declared
    // dead (the others would re-send its actions in flight).
    let ttl = cluster.lease_ttl();
    let interval = beat.interval.min(ttl / 4);
    let mut backoff = interval;
    let mut last_sweep = Instant::now();
    let mut suspects = std::collections::HashSet::new();
    while !shutdown.is_cancelled() {
        let info = NodeInfo {
            id: cluster.node_id().to_owned(),
            address: beat.address.clone(),
            actors: router.held.len() as u64,
            last_seen_ms: now_ms(),
            started_ms: beat.started_ms,
            draining: beat.draining.load(Ordering::Relaxed),
        };
        let result = async {
            cluster.heartbeat(&info, ttl).await?;
            let (live, mut dead) = cluster.members().await?;
            // Claims of nodes that are not alive (also those Redis forgot in
            // a flush or restart), every few seconds.
            if last_sweep.elapsed() >= ttl * 2 {
                last_sweep = Instant::now();
                match router.store.claim_owners().await {
                    Ok(owners) => {
                        // Absent from two sweeps in a row (a live node that
                        // Redis forgot re-registers within a heartbeat).
                        let absent: std::collections::HashSet<String> = owners
                            .into_iter()
                            .filter(|o| o != cluster.node_id() && !live.iter().any(|n| &n.id == o))
                            .collect();
                        dead.extend(absent.intersection(&suspects).cloned());
                        suspects = absent;
                    }
                    Err(e) => warn!(error = %e, "listing claim owners failed"),
                }
                dead.sort();
                dead.dedup();
            }
            router.set_peers(live.into_iter().map(|n| {
                (
                    n.id,
                    crate::router::Peer {
                        address: n.address,
                        draining: n.draining,
                    },
                )
            }));
            for node in dead {
                warn!(node = %node, "node is not alive: handing its timers and actions to the others");
                if let Err(e) = router.store.release_claims(&node).await {
                    warn!(node = %node, error = %e, "releasing a dead node's claims failed; they expire");
                }
            }
            if !beat.draining.load(Ordering::Relaxed) && cluster.drain_requested().await? {
                info!("drain requested: passivating every execution");
                beat.drain.notify_one();
            }
            Ok::<(), sojourn_cluster::Error>(())
        }
        .await;
        match result {
            Ok(()) => backoff = interval,
            Err(e) => {
                warn!(error = %e, "cluster heartbeat failed; retrying");
                backoff = (backoff * 2).min(ttl / 2).max(interval);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

async fn renew_leases<S: Store>(
    router: Arc<Router<S>>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let cluster = router.cluster.clone();
    let ttl = cluster.lease_ttl();
    let every = ttl / 3;
    let mut last_ok = Instant::now();
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => break,
        }
        let leases = router.held.snapshot();
        if leases.is_empty() {
            last_ok = Instant::now();
            continue;
        }
        match cluster.renew(&leases).await {
            Ok(lost) => {
                last_ok = Instant::now();
                renewed(&router, &stats, leases, lost);
            }
            Err(e) => {
                // Stop before the TTL runs out: by then another node may
                // take these executions.
                if last_ok.elapsed() + every >= ttl {
                    warn!(error = %e, actors = leases.len(), "cannot renew leases for a whole TTL: stopping every actor");
                    let all = router.held.clear().into_iter().map(|(id, _)| id).collect();
                    lost_all(&router, &stats, all);
                } else {
                    warn!(error = %e, "renewing leases failed; retrying");
                }
            }
        }
    }
}

/// Acts on a renewal's answer. A lease reported lost counts only if this
/// node still holds it *under the token that was renewed*: between the
/// snapshot and the answer an actor may have passivated (its lease released,
/// so Redis no longer holds that token) and a new input taken the lease again
/// under a new token. That lease is this node's, and its live actor must not
/// be stopped.
fn renewed<S: Store>(
    router: &Router<S>,
    stats: &Stats,
    renewed: Vec<(sojourn_runtime::ExecutionId, sojourn_cluster::Token)>,
    lost: Vec<sojourn_runtime::ExecutionId>,
) {
    if lost.is_empty() {
        return;
    }
    let lost: std::collections::HashSet<sojourn_runtime::ExecutionId> = lost.into_iter().collect();
    let really: Vec<sojourn_runtime::ExecutionId> = renewed
        .into_iter()
        .filter(|(id, token)| lost.contains(id) && router.held.remove_if(id, token))
        .map(|(id, _)| id)
        .collect();
    if really.is_empty() {
        return;
    }
    warn!(
        leases = really.len(),
        "leases taken by another node: stopping their actors"
    );
    Stats::add(&stats.leases_lost, really.len() as u64);
    router.lease_lost(really);
}

fn lost_all<S: Store>(router: &Router<S>, stats: &Stats, ids: Vec<sojourn_runtime::ExecutionId>) {
    Stats::add(&stats.leases_lost, ids.len() as u64);
    for id in &ids {
        router.held.remove(id);
    }
    router.lease_lost(ids);
}

impl<S: Store> Router<S> {
    /// Stops the actors of executions whose leases this node lost.
    pub(crate) fn lease_lost(&self, ids: Vec<sojourn_runtime::ExecutionId>) {
        if let Some(sup) = self.supervisor_ref() {
            let _ = sup.cast(SupervisorMsg::LeaseLost(ids));
        }
    }
}

#[cfg(test)]
mod tests {
    use sojourn_cluster::Cluster;
    use sojourn_runtime::ExecutionId;

    use super::*;

    /// On a one-node cluster (Redis), a lease this node released and took
    /// again between a renewal's snapshot and its answer is not lost: the
    /// renewal names it (its old token is gone), but the node holds it under
    /// a new token and its actor keeps running.
    #[tokio::test]
    async fn a_node_never_reports_its_own_retaken_leases_as_lost() {
        let url = "redis://127.0.0.1:6379";
        let ttl = Duration::from_secs(30);
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let router = crate::router::tests::router_on(
            Cluster::redis(url, format!("n1-{suffix}"), ttl).expect("redis"),
        )
        .await;
        let stats = Stats::default();
        let (a, b) = (
            ExecutionId::new(format!("exe_a_{suffix}")),
            ExecutionId::new(format!("exe_b_{suffix}")),
        );
        assert_eq!(
            router.acquire_new(&[a.clone(), b.clone()]).await,
            [true, true]
        );
        // The renewal's snapshot...
        let snapshot = router.held.snapshot();
        // ...then `a` passivates (released, given back in Redis) and an input
        // takes it again; `b` passivates and stays asleep.
        router.released(&a);
        router.released(&b);
        router.flush_releases().await;
        router.route(vec![(a.clone(), None)]).await;
        assert!(router.held.contains(&a));
        let lost = router.cluster.renew(&snapshot).await.expect("renew");
        assert_eq!(lost.len(), 2, "both old tokens are gone from Redis");
        renewed(&router, &stats, snapshot, lost);
        assert_eq!(
            stats.leases_lost.get(),
            0,
            "neither lease was taken by another node"
        );
        assert!(router.held.contains(&a), "the retaken lease is still held");
        // The retaken lease renews under its new token.
        let held = router.held.snapshot();
        assert!(router.cluster.renew(&held).await.expect("renew").is_empty());
        router.release_all(router.held.clear());
        router.flush_releases().await;
    }
}
