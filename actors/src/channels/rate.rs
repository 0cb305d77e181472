//! A provider's rate limit: sends per second with a burst.
//!
//! In a cluster (Redis) the limit is the cluster's, not each worker's: one
//! GCRA state per provider in Redis (`sojourn:rate:<provider>`), advanced
//! by a script on Redis's own clock, so every worker of every node shares
//! it and no clock skew between nodes matters. Alone, it is `governor`'s
//! in-process limiter. If Redis does not answer, the node falls back to its
//! own in-process limiter for the next 10 seconds (a cluster of N nodes may
//! then send up to N times the rate until Redis is back) rather than stop
//! sending, or wait on Redis for every send.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sojourn_cluster::Cluster;

#[derive(Debug)]
pub(crate) struct Rate {
    key: String,
    per_second: f64,
    burst: u32,
    local: DefaultDirectRateLimiter,
    cluster: Option<Arc<Cluster>>,
    /// Until when (ms since `epoch`) Redis is not asked, after it failed.
    shared_off_until: AtomicU64,
    epoch: Instant,
}

/// How long the shared limit is left alone after Redis failed.
const SHARED_PAUSE: Duration = Duration::from_secs(10);

impl Rate {
    pub(crate) fn new(
        provider: &str,
        per_second: f64,
        burst: u32,
        cluster: Option<Arc<Cluster>>,
    ) -> Rate {
        let period = Duration::from_secs_f64(1.0 / per_second.max(1e-6));
        let burst_nz = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MIN))
            .allow_burst(burst_nz);
        Rate {
            key: format!("rate:{provider}"),
            per_second,
            burst: burst.max(1),
            local: RateLimiter::direct(quota),
            cluster: cluster.filter(|c| c.is_shared()),
            shared_off_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The cluster to ask, unless Redis failed a moment ago.
    fn shared(&self) -> Option<&Cluster> {
        let cluster = self.cluster.as_deref()?;
        let now = self.epoch.elapsed().as_millis() as u64;
        (now >= self.shared_off_until.load(Ordering::Relaxed)).then_some(cluster)
    }

    /// Redis failed: this node limits alone for a while (said once).
    fn shared_failed(&self, e: &sojourn_cluster::Error) {
        let until = (self.epoch.elapsed() + SHARED_PAUSE).as_millis() as u64;
        self.shared_off_until.store(until, Ordering::Relaxed);
        tracing::warn!(error = %e, limit = %self.key, "the shared rate limit is unreachable; this node limits alone for 10 s");
    }

    /// Takes one send now, or says how long until one is free (nothing
    /// taken): whether to move on to the next provider.
    pub(crate) async fn take(&self) -> Result<(), Duration> {
        if let Some(cluster) = self.shared() {
            match cluster
                .take_rate(&self.key, self.per_second, self.burst, false)
                .await
            {
                Ok(wait) if wait.is_zero() => return Ok(()),
                Ok(wait) => return Err(wait),
                Err(e) => self.shared_failed(&e),
            }
        }
        match self.local.check() {
            Ok(()) => Ok(()),
            Err(not_until) => Err(not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))),
        }
    }

    /// Waits for a send of its own: the next free one is reserved (in
    /// Redis, or in the local limiter) and waited for, so concurrent
    /// waiters queue rather than race for each slot.
    pub(crate) async fn wait(&self) {
        if let Some(cluster) = self.shared() {
            match cluster
                .take_rate(&self.key, self.per_second, self.burst, true)
                .await
            {
                Ok(wait) => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    return;
                }
                Err(e) => self.shared_failed(&e),
            }
        }
        self.local.until_ready().await;
    }
}
