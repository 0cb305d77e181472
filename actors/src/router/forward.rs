//! Talking to the other nodes: who they are ([`Peer`], from membership),
//! the cluster secret that authenticates internal requests, forwarding
//! inputs to the node that holds their execution, and accepting the inputs
//! other nodes forward here.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sojourn_persistence::Store;
use sojourn_runtime::{ExecutionId, Input, TimerId};
use tracing::{debug, warn};

use super::{Item, Router};
use crate::execution::Delivery;
use crate::stats::Stats;

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

/// A peer, from membership.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) address: String,
    pub(crate) draining: bool,
}

/// How long the cluster secret is trusted before it is read again (a
/// Redis flush makes a new one).
const SECRET_TTL: Duration = Duration::from_secs(5);

/// The shortest time between two reads of the secret from Redis.
const SECRET_REFRESH: Duration = Duration::from_secs(1);

impl<S: Store> Router<S> {
    /// The cluster secret, read again every few seconds (or at once with
    /// `fresh`: a peer refused the one we had).
    pub(crate) async fn secret(&self, fresh: bool) -> Result<String, sojourn_cluster::Error> {
        let mut cached = self.secret.lock().await;
        // A fresh read at most once a second: callers without the secret
        // (the internal endpoint is reachable) must not drive Redis.
        if let Some((s, at)) = cached.as_ref()
            && (at.elapsed() < SECRET_REFRESH || (!fresh && at.elapsed() < SECRET_TTL))
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
    pub(super) fn some_peer(&self) -> Option<String> {
        let m = self.peers.read().ok()?;
        m.iter()
            .filter(|(id, p)| !p.draining && id.as_str() != self.cluster.node_id())
            .map(|(id, _)| id.clone())
            .min()
    }

    pub(super) async fn forward_or_fall_back(
        &self,
        items: Vec<Item>,
        from: Option<String>,
        attempt: u32,
    ) {
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
            self.forward_later(node, items, attempt).await;
        }
    }

    /// Forwards in the background: a slow or paused peer must not hold up
    /// the timer service or the outbox.
    /// At the background bound, the inputs fall back at once (timers are
    /// handed back, the rest re-routed later).
    pub(super) async fn forward_later(&self, node: String, items: Vec<Item>, attempt: u32) {
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            debug!("router gone: inputs wait durably");
            return;
        };
        match self.background_slot() {
            Some(slot) => {
                tokio::spawn(async move {
                    me.forward(&node, items, attempt).await;
                    drop(slot);
                });
            }
            None => {
                warn!(
                    items = items.len(),
                    "background work at its bound: inputs take the durable path"
                );
                self.fall_back(items, None, attempt).await;
            }
        }
    }

    /// Sends items to the node holding them; on failure, durable delivery.
    pub(super) async fn forward(&self, node: &str, items: Vec<Item>, attempt: u32) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::tests::router;

    #[tokio::test]
    async fn inputs_for_nobody_go_to_a_peer_that_takes_work() {
        let router = router().await;
        let peer = |draining| Peer {
            address: "http://127.0.0.1:9".into(),
            draining,
        };
        router.set_peers([
            ("n1".to_owned(), peer(false)),
            ("n3".to_owned(), peer(false)),
            ("n0".to_owned(), peer(true)),
            ("n2".to_owned(), peer(false)),
        ]);
        // Not itself, not a draining node; the same choice every time.
        assert_eq!(router.some_peer().as_deref(), Some("n2"));
        router.set_peers([("n1".to_owned(), peer(false))]);
        assert_eq!(router.some_peer(), None);
    }

    #[tokio::test]
    async fn the_cluster_secret_is_cached_until_refused() {
        let router = router().await;
        let first = router.secret(false).await.expect("secret");
        assert!(!first.is_empty());
        assert_eq!(router.secret(false).await.expect("secret"), first);
        assert_eq!(router.secret(true).await.expect("secret"), first);
    }

    #[test]
    fn forwarded_inputs_read_back_as_sent() {
        let f = Forwarded {
            execution_id: ExecutionId::new("exe_a"),
            input: None,
            fired_timer: Some(TimerId::new("t1")),
            inbox_id: Some(3),
            from: Some("n2".into()),
        };
        let text = serde_json::to_string(&f).expect("json");
        assert_eq!(serde_json::from_str::<Forwarded>(&text).expect("back"), f);
        let bare: Forwarded =
            serde_json::from_str(r#"{"execution_id": "exe_b"}"#).expect("minimal");
        assert_eq!(bare.input, None);
    }
}
