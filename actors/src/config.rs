//! Tunables of the engine, with defaults that need no configuration.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::egress::EgressPolicy;

/// Named secrets that actions reference (`{{ secrets.NAME }}`), resolved by
/// the worker at send time. Never printed: `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct Secrets(Arc<BTreeMap<String, SecretString>>);

impl Secrets {
    pub fn new(map: BTreeMap<String, SecretString>) -> Secrets {
        Secrets(Arc::new(map))
    }

    /// The value of a secret, for the worker that sends with it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|s| s.expose_secret())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id (claims of timers and outbox rows carry it).
    pub node_id: String,
    /// The namespace of executions started without one (`run`, `bench`,
    /// dev-mode callers without a key).
    pub namespace: String,
    /// Most transitions written in one database transaction.
    pub max_commit_batch: usize,
    /// Timers due within this window are claimed ahead of time.
    pub timer_lookahead: Duration,
    /// How long a claimed timer stays ours before another node may take it.
    pub timer_claim_ttl: Duration,
    /// How often the timer service looks for due timers when not woken.
    pub timer_poll: Duration,
    /// Timers claimed per query.
    pub timer_batch: u32,
    /// How often the schedule runner looks for due schedules, and the
    /// event consumers for triggers activated, paused or stopped.
    pub schedule_poll: Duration,
    /// How often a node rolls the journal up into the analytics (one node
    /// at a time does).
    pub analytics_rollup: Duration,
    /// How often a node sweeps what the namespaces' retention lets go
    /// (one node at a time does).
    pub retention_sweep: Duration,
    /// Kafka brokers (`host:port`): event triggers with a topic consume
    /// from them. None: no event trigger consumes.
    pub kafka_brokers: Vec<String>,
    /// Partitions of the channel topics Sojourn creates (how many workers
    /// can share a channel).
    pub kafka_topic_partitions: i32,
    /// The channels whose messages this node's workers send (all four by
    /// default; none on a node that leaves sending to `sojourn worker`).
    pub worker_channels: Vec<String>,
    /// Shorthand for a provider named `webhook` that POSTs each message as
    /// JSON here, used by every channel that lists no provider.
    pub channel_webhook: Option<String>,
    /// Unsubscribe links, default categories.
    pub audience: crate::audience::AudienceConfig,
    /// The named providers (`marketing-smtp` → its configuration).
    pub providers: BTreeMap<String, crate::channels::ProviderConfig>,
    /// Per channel, the providers used when an action names none, in
    /// failover order.
    pub channels: BTreeMap<String, crate::channels::ChannelConfig>,
    /// How long a claimed schedule stays ours while it fires before another
    /// node may fire it (under the same idempotency keys).
    pub schedule_claim_ttl: Duration,
    /// At most this many timers fire per second (catch-up after downtime is
    /// spread out instead of flooding the node).
    pub timer_fire_rate: u32,
    /// How long a claimed outbox message stays ours. It must outlast the
    /// longest action timeout (1 h, the validation limit): a claim that
    /// expired while its send was still in flight would let the same attempt
    /// be sent a second time concurrently. A node that restarts under the
    /// same id releases its claims at once; reclaiming a dead node's claims
    /// early is the cluster's job (membership).
    pub outbox_claim_ttl: Duration,
    /// How often the outbox relay looks for work when not woken.
    pub outbox_poll: Duration,
    /// Actions being sent at once.
    pub max_in_flight_actions: usize,
    /// Executions started on this node that may be in memory at once (from
    /// their start until they finish or passivate). A start beyond it waits
    /// for one to leave, at most `start_wait`, then is refused as
    /// overloaded: the node takes work at the pace it finishes it, so its
    /// memory stays bounded and the timers of what it took fire on time.
    pub max_resident_starts: usize,
    /// An action's result goes to its live local actor in memory and is
    /// recorded by the transition that applies it (one transaction fewer per
    /// action; `results.rs`). Off, every result is recorded as a row first
    /// and applied from it (one transaction more per action).
    pub results_in_memory: bool,
    /// How long a start waits for a place among `max_resident_starts`
    /// (then HTTP 503 with `Retry-After`).
    pub start_wait: Duration,
    /// An active actor that has received nothing for this long passivates.
    pub idle_timeout: Duration,
    /// Restarts of a panicking execution before it is marked failed.
    pub max_restarts: u32,
    /// How often executions with waiting inputs are looked for (recovery).
    pub recovery_poll: Duration,
    /// How long an execution lease lasts without renewal (renewed every
    /// third of it). A dead node's executions resume elsewhere within
    /// about this long.
    pub lease_ttl: Duration,
    /// How often the node's heartbeat is written (it counts as dead
    /// `lease_ttl` after the last one).
    pub heartbeat_interval: Duration,
    /// Where other nodes reach this node's internal endpoint.
    pub advertise: String,
    /// Where `http.request` actions may go (the SSRF guard).
    pub egress: EgressPolicy,
    /// Most bytes of a response body an action reads; the rest is dropped
    /// and the output says `truncated: true`.
    pub max_response_bytes: usize,
    /// Secrets actions may reference.
    pub secrets: Secrets,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: "node-1".into(),
            namespace: "default".into(),
            max_commit_batch: 256,
            timer_lookahead: Duration::from_secs(2),
            timer_claim_ttl: Duration::from_secs(30),
            timer_poll: Duration::from_millis(500),
            timer_batch: 2_000,
            schedule_poll: Duration::from_secs(1),
            analytics_rollup: Duration::from_secs(10),
            retention_sweep: Duration::from_secs(60),
            kafka_brokers: Vec::new(),
            kafka_topic_partitions: 6,
            worker_channels: crate::providers::CHANNELS.map(String::from).to_vec(),
            channel_webhook: None,
            audience: Default::default(),
            // The embedded default: every channel is only logged.
            providers: BTreeMap::from([("log".to_owned(), crate::channels::ProviderConfig::log())]),
            channels: crate::providers::CHANNELS
                .iter()
                .map(|c| {
                    (
                        (*c).to_owned(),
                        crate::channels::ChannelConfig {
                            providers: vec!["log".into()],
                        },
                    )
                })
                .collect(),
            schedule_claim_ttl: Duration::from_secs(30),
            timer_fire_rate: 10_000,
            outbox_claim_ttl: Duration::from_secs(3_600 + 60),
            outbox_poll: Duration::from_millis(500),
            max_in_flight_actions: 256,
            max_resident_starts: 3_072,
            results_in_memory: true,
            start_wait: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_restarts: 5,
            recovery_poll: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            advertise: "http://127.0.0.1:8080".into(),
            egress: EgressPolicy::strict(),
            max_response_bytes: 1 << 20,
            secrets: Secrets::default(),
        }
    }
}

impl Config {
    /// The providers this configuration names, built: `channel_webhook`
    /// adds a `webhook` provider that every channel listing none uses.
    pub fn build_channels(
        &self,
        cluster: Option<Arc<sojourn_cluster::Cluster>>,
    ) -> Result<crate::channels::Channels, crate::channels::ConfigError> {
        let mut providers = self.providers.clone();
        let mut channels = self.channels.clone();
        if let Some(url) = &self.channel_webhook {
            providers.insert(
                "webhook".into(),
                crate::channels::ProviderConfig::webhook(url.clone()),
            );
            for c in crate::providers::CHANNELS {
                let entry = channels.entry(c.to_owned()).or_default();
                // The stand-in replaces the embedded default's log.
                if entry.providers.is_empty() || entry.providers == ["log"] {
                    entry.providers = vec!["webhook".into()];
                }
            }
        }
        crate::channels::Channels::build(
            &providers,
            &channels,
            &crate::channels::Context {
                secrets: self.secrets.clone(),
                cluster,
                egress: self.egress.clone(),
            },
        )
    }
}
