//! Counters the engine keeps for metrics and the benchmark.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters; cheap to update from any task.
#[derive(Debug, Default)]
pub struct Stats {
    pub transactions: AtomicU64,
    pub transitions: AtomicU64,
    pub fenced: AtomicU64,
    pub activations: AtomicU64,
    pub passivations: AtomicU64,
    pub restarts: AtomicU64,
    pub timers_fired: AtomicU64,
    pub actions_sent: AtomicU64,
    pub actions_repeated: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Timer lateness samples (fired minus due), in milliseconds; bounded.
    lateness_ms: Mutex<Vec<f64>>,
}

const MAX_SAMPLES: usize = 1_000_000;

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_lateness(&self, ms: f64) {
        if let Ok(mut v) = self.lateness_ms.lock()
            && v.len() < MAX_SAMPLES
        {
            v.push(ms);
        }
    }

    /// The lateness samples so far.
    pub fn lateness_samples(&self) -> Vec<f64> {
        self.lateness_ms
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            transactions: get(&self.transactions),
            transitions: get(&self.transitions),
            fenced: get(&self.fenced),
            activations: get(&self.activations),
            passivations: get(&self.passivations),
            restarts: get(&self.restarts),
            timers_fired: get(&self.timers_fired),
            actions_sent: get(&self.actions_sent),
            actions_repeated: get(&self.actions_repeated),
            completed: get(&self.completed),
            failed: get(&self.failed),
        }
    }
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub transactions: u64,
    pub transitions: u64,
    pub fenced: u64,
    pub activations: u64,
    pub passivations: u64,
    pub restarts: u64,
    pub timers_fired: u64,
    pub actions_sent: u64,
    pub actions_repeated: u64,
    pub completed: u64,
    pub failed: u64,
}
