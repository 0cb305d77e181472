//! Durable delivery, for an input that cannot reach its actor now (the
//! holder is unreachable, Redis is away, the background is at its bound):
//! a timer firing goes back to the timer table to be claimed again soon;
//! inbox inputs and activations are rows already and are routed again a
//! little later, a few times, then left to the recovery scan.

use std::sync::atomic::Ordering;

use std::time::Duration;

use chrono::Utc;
use sojourn_persistence::Store;
use sojourn_runtime::{ExecutionId, TimerId};
use tracing::warn;

use super::{Item, Router};

/// How many times inputs that could not reach their execution are routed
/// again (a quarter of the lease TTL apart) before the recovery scan is left
/// to find them.
pub(crate) const MAX_REROUTES: u32 = 8;

impl<S: Store> Router<S> {
    /// Durable delivery: a timer firing goes back to the timer table, to be
    /// claimed again soon; inbox inputs and activations are rows already,
    /// and are routed again a little later (the holder's lease may be about
    /// to expire: it died) — a few times, then the recovery scan has them.
    pub(super) async fn fall_back(&self, items: Vec<Item>, owner: Option<&str>, attempt: u32) {
        let (timers, later) = split(items);
        if !later.is_empty()
            && attempt < MAX_REROUTES
            && let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade)
        {
            let wait = self.cluster.lease_ttl() / 4;
            let router = me.clone();
            // At the bound the recovery scan finds them (their rows wait).
            self.spawn_bounded(async move {
                tokio::time::sleep(wait).await;
                if !router.closed.load(Ordering::Relaxed) {
                    router.route_try(later, None, attempt + 1).await;
                }
            });
        }
        if timers.is_empty() {
            return;
        }
        let wait = timer_retry(attempt, self.cluster.lease_ttl(), self.retry_timer_after);
        let at =
            Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(1));
        let owner = owner.unwrap_or(self.cluster.node_id());
        if let Err(e) = self.store.defer_timers(owner, &timers, at).await {
            warn!(error = %e, "handing timers back failed; their claims expire");
        }
    }
}

/// Timer firings (handed back to the timer table) apart from the rest,
/// which become bare activations: their inputs are inbox rows already.
fn split(items: Vec<Item>) -> (Vec<(ExecutionId, TimerId)>, Vec<Item>) {
    let mut timers = Vec::new();
    let mut later = Vec::new();
    for (id, d) in items {
        match d.and_then(|d| d.fired_timer) {
            Some(t) => timers.push((id, t)),
            None => later.push((id, None)),
        }
    }
    (timers, later)
}

/// When a handed-back timer may be claimed again: soon, unless the
/// re-routes are used up (Redis is away), then after a lease TTL.
fn timer_retry(attempt: u32, lease_ttl: Duration, soon: Duration) -> Duration {
    if attempt >= MAX_REROUTES {
        lease_ttl
    } else {
        soon
    }
}

#[cfg(test)]
mod tests {
    use sojourn_runtime::{ActionOutcome, Input};

    use super::*;
    use crate::execution::Delivery;

    fn delivery(timer: Option<&str>) -> Option<Delivery> {
        Some(Delivery {
            input: Input::ActionResult {
                node: sojourn_runtime::NodeId::new("n"),
                attempt: 1,
                outcome: ActionOutcome::Success {
                    output: serde_json::Value::Null,
                },
            },
            fired_timer: timer.map(TimerId::new),
            inbox_id: Some(7),
        })
    }

    #[test]
    fn timers_go_back_to_their_table_and_the_rest_become_activations() {
        let a = ExecutionId::new("exe_a");
        let b = ExecutionId::new("exe_b");
        let c = ExecutionId::new("exe_c");
        let (timers, later) = split(vec![
            (a.clone(), delivery(Some("t1"))),
            (b.clone(), delivery(None)),
            (c.clone(), None),
        ]);
        assert_eq!(timers, vec![(a, TimerId::new("t1"))]);
        let later: Vec<(ExecutionId, bool)> =
            later.into_iter().map(|(id, d)| (id, d.is_some())).collect();
        // The inbox row holds b's input: it is read on activation.
        assert_eq!(later, vec![(b, false), (c, false)]);
    }

    #[test]
    fn timers_wait_longer_once_the_reroutes_are_used_up() {
        let ttl = Duration::from_secs(5);
        let soon = Duration::from_millis(500);
        assert_eq!(timer_retry(0, ttl, soon), soon);
        assert_eq!(timer_retry(MAX_REROUTES - 1, ttl, soon), soon);
        assert_eq!(timer_retry(MAX_REROUTES, ttl, soon), ttl);
    }
}
