//! A provider's rate limit: sends per second with a burst.
//!
//! In a cluster (Redis) the limit is the cluster's, not each worker's: one
//! GCRA state per provider in Redis (`sojourn:rate:<provider>`), advanced
//! by a script on Redis's own clock, so every worker of every node shares
//! it and no clock skew between nodes matters. Alone, it is `governor`'s
//! in-process limiter. If Redis does not answer, the node falls back to its
//! own in-process limiter meanwhile (a cluster of N nodes may then send up
//! to N times the rate until Redis is back) rather than stop sending.

use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sojourn_cluster::Cluster;

#[derive(Debug)]
pub(crate) struct Rate {
    key: String,
    per_second: f64,
    burst: u32,
    local: DefaultDirectRateLimiter,
    cluster: Option<Arc<Cluster>>,
}

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
        }
    }

    /// Takes one send now, or says how long until one is free.
    pub(crate) async fn take(&self) -> Result<(), Duration> {
        if let Some(cluster) = &self.cluster {
            match cluster
                .take_rate(&self.key, self.per_second, self.burst)
                .await
            {
                Ok(wait) if wait.is_zero() => return Ok(()),
                Ok(wait) => return Err(wait),
                Err(e) => {
                    tracing::warn!(error = %e, limit = %self.key, "the shared rate limit is unreachable; limiting this node alone meanwhile");
                }
            }
        }
        match self.local.check() {
            Ok(()) => Ok(()),
            Err(not_until) => Err(not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))),
        }
    }

    /// Waits until one send is free, and takes it.
    pub(crate) async fn wait(&self) {
        loop {
            match self.take().await {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait.max(Duration::from_millis(1))).await,
            }
        }
    }
}
