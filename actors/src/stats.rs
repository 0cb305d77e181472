//! Counters the engine keeps for metrics and the benchmark.
//!
//! Each field is a metric handle: updating one is an atomic add, with no
//! lock and no lookup; [`Stats::register`] puts clones of the handles (the
//! same series) in the API's registry.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;

use crate::metrics::{ByWorkflow, Histogram, LATENCY_BUCKETS, Registry};

/// Live counters; cheap to update from any task.
#[derive(Debug)]
pub struct Stats {
    pub transactions: Counter,
    pub transitions: Counter,
    pub fenced: Counter,
    pub activations: Counter,
    /// Activations that loaded a snapshot (not new executions).
    pub rehydrations: Counter,
    pub passivations: Counter,
    pub restarts: Counter,
    pub timers_fired: Counter,
    pub actions_sent: Counter,
    pub actions_repeated: Counter,
    /// Channel messages a worker of this node sent to a provider.
    pub channel_messages_sent: Counter,
    pub completed: Counter,
    pub failed: Counter,
    /// Leases taken for executions that were not this node's.
    pub leases_taken: Counter,
    /// Leases lost to another node (their actors stopped).
    pub leases_lost: Counter,
    /// Starts refused because the node was at `max_resident_starts`.
    pub starts_overloaded: Counter,
    /// Inputs forwarded to the node holding their execution.
    pub forwarded: Counter,
    /// Executions started, completed, failed and cancelled, by workflow id.
    pub started_by_workflow: ByWorkflow,
    pub completed_by_workflow: ByWorkflow,
    pub failed_by_workflow: ByWorkflow,
    pub cancelled_by_workflow: ByWorkflow,
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
            transactions: Counter::default(),
            transitions: Counter::default(),
            fenced: Counter::default(),
            activations: Counter::default(),
            rehydrations: Counter::default(),
            passivations: Counter::default(),
            restarts: Counter::default(),
            timers_fired: Counter::default(),
            actions_sent: Counter::default(),
            actions_repeated: Counter::default(),
            channel_messages_sent: Counter::default(),
            completed: Counter::default(),
            failed: Counter::default(),
            leases_taken: Counter::default(),
            leases_lost: Counter::default(),
            starts_overloaded: Counter::default(),
            forwarded: Counter::default(),
            started_by_workflow: ByWorkflow::default(),
            completed_by_workflow: ByWorkflow::default(),
            failed_by_workflow: ByWorkflow::default(),
            cancelled_by_workflow: ByWorkflow::default(),
            transition_seconds: Histogram::new(LATENCY_BUCKETS),
            timer_lateness_seconds: Histogram::new(LATENCY_BUCKETS),
            keep_samples: AtomicBool::new(false),
            lateness_ms: Mutex::default(),
        }
    }
}

const MAX_SAMPLES: usize = 1_000_000;

impl Stats {
    pub(crate) fn add(counter: &Counter, n: u64) {
        counter.inc_by(n);
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

    /// Registers the engine's series in `r`: counters under their name
    /// without `_total`, which the encoder appends (the exposed names are
    /// `sojourn_*_total`, as before).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "sojourn_executions_started",
            "Executions started, by workflow id",
            self.started_by_workflow.family(),
        );
        r.register(
            "sojourn_executions_completed",
            "Executions completed, by workflow id",
            self.completed_by_workflow.family(),
        );
        r.register(
            "sojourn_executions_failed",
            "Executions failed, by workflow id",
            self.failed_by_workflow.family(),
        );
        r.register(
            "sojourn_executions_cancelled",
            "Executions cancelled, by workflow id",
            self.cancelled_by_workflow.family(),
        );
        r.register(
            "sojourn_activations",
            "Execution actors started (new executions and rehydrations)",
            self.activations.clone(),
        );
        r.register(
            "sojourn_rehydrations",
            "Execution actors rehydrated from a stored snapshot",
            self.rehydrations.clone(),
        );
        r.register(
            "sojourn_passivations",
            "Execution actors passivated",
            self.passivations.clone(),
        );
        r.register(
            "sojourn_actor_restarts",
            "Execution actors restarted after a panic or a failed commit",
            self.restarts.clone(),
        );
        r.register(
            "sojourn_transitions",
            "Transitions committed",
            self.transitions.clone(),
        );
        r.register(
            "sojourn_commit_transactions",
            "Group-commit transactions",
            self.transactions.clone(),
        );
        r.register(
            "sojourn_fenced_writes",
            "Transitions refused because another activation holds the execution",
            self.fenced.clone(),
        );
        r.register(
            "sojourn_timers_fired",
            "Durable timers fired",
            self.timers_fired.clone(),
        );
        r.register(
            "sojourn_actions_sent",
            "Action attempts sent to providers",
            self.actions_sent.clone(),
        );
        r.register(
            "sojourn_channel_messages_sent",
            "Channel messages this node's workers sent to a provider",
            self.channel_messages_sent.clone(),
        );
        r.register(
            "sojourn_actions_repeated",
            "Action attempts sent again after a crash between send and record",
            self.actions_repeated.clone(),
        );
        r.register(
            "sojourn_leases_taken",
            "Execution leases taken to rehydrate an execution here",
            self.leases_taken.clone(),
        );
        r.register(
            "sojourn_leases_lost",
            "Execution leases lost to another node (their actors stopped at once)",
            self.leases_lost.clone(),
        );
        r.register(
            "sojourn_starts_overloaded",
            "Starts refused: max_resident_starts executions were in memory for start_wait",
            self.starts_overloaded.clone(),
        );
        r.register(
            "sojourn_inputs_forwarded",
            "Inputs forwarded to the node holding their execution",
            self.forwarded.clone(),
        );
        r.register(
            "sojourn_transition_latency_seconds",
            "From an input reaching its execution actor to its transition committed",
            self.transition_seconds.clone(),
        );
        r.register(
            "sojourn_timer_lateness_seconds",
            "How late durable timers fired (fired minus due)",
            self.timer_lateness_seconds.clone(),
        );
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &Counter| c.get();
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
            channel_messages_sent: get(&self.channel_messages_sent),
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
    pub channel_messages_sent: u64,
    pub completed: u64,
    pub failed: u64,
}
