//! Counters the engine keeps for metrics and the benchmark.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::metrics::{Exposition, Histogram, LATENCY_BUCKETS, LabeledCounter};

/// Live counters; cheap to update from any task.
#[derive(Debug)]
pub struct Stats {
    pub transactions: AtomicU64,
    pub transitions: AtomicU64,
    pub fenced: AtomicU64,
    pub activations: AtomicU64,
    /// Activations that loaded a snapshot (not new executions).
    pub rehydrations: AtomicU64,
    pub passivations: AtomicU64,
    pub restarts: AtomicU64,
    pub timers_fired: AtomicU64,
    pub actions_sent: AtomicU64,
    pub actions_repeated: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Leases taken for executions that were not this node's.
    pub leases_taken: AtomicU64,
    /// Leases lost to another node (their actors stopped).
    pub leases_lost: AtomicU64,
    /// Inputs forwarded to the node holding their execution.
    pub forwarded: AtomicU64,
    /// Executions started, completed, failed and cancelled, by workflow id.
    pub started_by_workflow: LabeledCounter,
    pub completed_by_workflow: LabeledCounter,
    pub failed_by_workflow: LabeledCounter,
    pub cancelled_by_workflow: LabeledCounter,
    /// From an input reaching its actor to its transition committed.
    pub transition_seconds: Histogram,
    /// Fired minus due.
    pub timer_lateness_seconds: Histogram,
    /// Keep every lateness sample (the benchmark's exact percentiles);
    /// off in a node, where the histogram is enough.
    keep_samples: AtomicBool,
    /// Timer lateness samples (fired minus due), in milliseconds; bounded.
    lateness_ms: Mutex<Vec<f64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            transactions: AtomicU64::default(),
            transitions: AtomicU64::default(),
            fenced: AtomicU64::default(),
            activations: AtomicU64::default(),
            rehydrations: AtomicU64::default(),
            passivations: AtomicU64::default(),
            restarts: AtomicU64::default(),
            timers_fired: AtomicU64::default(),
            actions_sent: AtomicU64::default(),
            actions_repeated: AtomicU64::default(),
            completed: AtomicU64::default(),
            failed: AtomicU64::default(),
            leases_taken: AtomicU64::default(),
            leases_lost: AtomicU64::default(),
            forwarded: AtomicU64::default(),
            started_by_workflow: LabeledCounter::default(),
            completed_by_workflow: LabeledCounter::default(),
            failed_by_workflow: LabeledCounter::default(),
            cancelled_by_workflow: LabeledCounter::default(),
            transition_seconds: Histogram::new(LATENCY_BUCKETS),
            timer_lateness_seconds: Histogram::new(LATENCY_BUCKETS),
            keep_samples: AtomicBool::new(false),
            lateness_ms: Mutex::default(),
        }
    }
}

const MAX_SAMPLES: usize = 1_000_000;

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Keep every timer lateness sample from now on (for
    /// [`Stats::lateness_samples`]).
    pub fn keep_lateness_samples(&self) {
        self.keep_samples.store(true, Ordering::Relaxed);
    }

    pub(crate) fn record_lateness(&self, ms: f64) {
        self.timer_lateness_seconds.observe(ms / 1000.0);
        if !self.keep_samples.load(Ordering::Relaxed) {
            return;
        }
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

    /// Writes the engine's series in Prometheus text format.
    pub fn encode(&self, e: &mut Exposition) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        e.labeled_counter(
            "sojourn_executions_started_total",
            "Executions started, by workflow id.",
            "workflow",
            &self.started_by_workflow,
        );
        e.labeled_counter(
            "sojourn_executions_completed_total",
            "Executions completed, by workflow id.",
            "workflow",
            &self.completed_by_workflow,
        );
        e.labeled_counter(
            "sojourn_executions_failed_total",
            "Executions failed, by workflow id.",
            "workflow",
            &self.failed_by_workflow,
        );
        e.labeled_counter(
            "sojourn_executions_cancelled_total",
            "Executions cancelled, by workflow id.",
            "workflow",
            &self.cancelled_by_workflow,
        );
        e.counter(
            "sojourn_activations_total",
            "Execution actors started (new executions and rehydrations).",
            get(&self.activations),
        );
        e.counter(
            "sojourn_rehydrations_total",
            "Execution actors rehydrated from a stored snapshot.",
            get(&self.rehydrations),
        );
        e.counter(
            "sojourn_passivations_total",
            "Execution actors passivated.",
            get(&self.passivations),
        );
        e.counter(
            "sojourn_actor_restarts_total",
            "Execution actors restarted after a panic or a failed commit.",
            get(&self.restarts),
        );
        e.counter(
            "sojourn_transitions_total",
            "Transitions committed.",
            get(&self.transitions),
        );
        e.counter(
            "sojourn_commit_transactions_total",
            "Group-commit transactions.",
            get(&self.transactions),
        );
        e.counter(
            "sojourn_fenced_writes_total",
            "Transitions refused because another activation holds the execution.",
            get(&self.fenced),
        );
        e.counter(
            "sojourn_timers_fired_total",
            "Durable timers fired.",
            get(&self.timers_fired),
        );
        e.counter(
            "sojourn_actions_sent_total",
            "Action attempts sent to providers.",
            get(&self.actions_sent),
        );
        e.counter(
            "sojourn_actions_repeated_total",
            "Action attempts sent again after a crash between send and record.",
            get(&self.actions_repeated),
        );
        e.counter(
            "sojourn_leases_taken_total",
            "Execution leases taken to rehydrate an execution here.",
            get(&self.leases_taken),
        );
        e.counter(
            "sojourn_leases_lost_total",
            "Execution leases lost to another node (their actors stopped at once).",
            get(&self.leases_lost),
        );
        e.counter(
            "sojourn_inputs_forwarded_total",
            "Inputs forwarded to the node holding their execution.",
            get(&self.forwarded),
        );
        e.histogram(
            "sojourn_transition_latency_seconds",
            "From an input reaching its execution actor to its transition committed.",
            &self.transition_seconds,
        );
        e.histogram(
            "sojourn_timer_lateness_seconds",
            "How late durable timers fired (fired minus due).",
            &self.timer_lateness_seconds,
        );
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
