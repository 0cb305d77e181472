//! Channel workers: the relay publishes each channel message (`email.send`,
//! `sms.send`, `push.send`, `chat.send`) to its channel's topic
//! (`sojourn.actions.<channel>`, keyed by execution); the workers of that
//! channel, one consumer group across the cluster
//! (`sojourn.workers.<channel>`), send it with the channel's provider and
//! record the result the durable way (the attempt's result and an inbox
//! row for its execution, the outbox row removed), then hand it to the
//! execution. A message's offset is committed only after its result is
//! recorded: a worker that dies mid-send leaves the message to another,
//! which sends it again with the same idempotency key.
//!
//! The relay's outbox claim on a published message lasts until the result
//! is recorded (`outbox_claim_ttl`): a message lost on its way — which
//! Kafka's acknowledged writes do not do, and the in-process queue only
//! does when the process dies — is published again when the claim lapses.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sojourn_persistence::{AttemptBegin, AttemptRef, NewDelivery, OutboxMessage, Store};
use sojourn_runtime::{Dispatch, ExecutionId};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::audience;
use crate::bus::{Bus, BusMessage, From};
use crate::channels::{Channel, Delivery};
use crate::execution::LocalResult;
use crate::providers::{self, Providers};
use crate::router::Router;
use crate::stats::Stats;

/// What goes through a channel's topic: the attempt to send, as the relay
/// claimed it (secrets still by reference: they are resolved by the
/// worker, at send time).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelJob {
    pub execution_id: ExecutionId,
    pub dispatch: Dispatch,
}

/// Messages a worker takes at once; they are sent concurrently, up to
/// `per_channel` at a time, and their results recorded in one batch.
const BATCH: usize = 256;

/// Publishes a channel message for the workers, retrying while the bus is
/// away (the relay's in-flight slot is held meanwhile, so a broker outage
/// backs the outbox up in the database rather than in memory). `false`
/// when the node stopped first: the outbox row keeps the message.
pub(crate) async fn publish_job(
    bus: &Bus,
    channel: &str,
    m: &OutboxMessage,
    stop: &CancellationToken,
) -> bool {
    let job = ChannelJob {
        execution_id: m.execution_id.clone(),
        dispatch: m.dispatch.clone(),
    };
    let payload = match serde_json::to_vec(&job) {
        Ok(p) => p,
        // A Dispatch is plain JSON.
        Err(e) => {
            warn!(error = %e, "a channel message did not serialize");
            return false;
        }
    };
    let topic = providers::channel_topic(channel);
    let headers = [("idempotency-key", m.dispatch.idempotency_key.as_bytes())];
    let mut backoff = Duration::from_millis(200);
    loop {
        let published = tokio::select! {
            _ = stop.cancelled() => return false,
            p = bus.publish(&topic, m.execution_id.as_str().as_bytes(), &payload, &headers) => p,
        };
        match published {
            Ok(_) => return true,
            Err(e) => {
                warn!(error = %e, topic, "publishing a channel message failed; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Creates the channels' topics when they do not exist (a broker may not
/// create them on first use, and would give them its default partition
/// count, which bounds how many workers share a channel). A failure is
/// logged: the broker may be away now, and the topics made by hand.
pub(crate) async fn ensure_channel_topics(bus: &Bus, partitions: i32) {
    let topics: Vec<String> = providers::CHANNELS
        .iter()
        .map(|c| providers::channel_topic(c))
        .collect();
    let made = tokio::time::timeout(
        Duration::from_secs(15),
        bus.ensure_topics(&topics, partitions),
    )
    .await;
    match made {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "the channel topics could not be made; create them by hand")
        }
        Err(_) => warn!("Kafka did not answer within 15 s; the channel topics were not made"),
    }
}

/// The workers of a node: one consumer per channel it serves.
pub(crate) struct ChannelWorkers<S: Store> {
    pub store: Arc<S>,
    /// In a node: results go straight to their executions. Alone
    /// (`sojourn worker`): none, the nodes' recovery delivers them.
    pub router: Option<Arc<Router<S>>>,
    pub bus: Bus,
    pub providers: Providers,
    pub channels: Vec<String>,
    pub stats: Arc<Stats>,
    /// Sends in flight per channel.
    pub per_channel: usize,
}

impl<S: Store> ChannelWorkers<S> {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut set = JoinSet::new();
        for channel in &self.channels {
            let worker = Worker {
                store: self.store.clone(),
                router: self.router.clone(),
                bus: self.bus.clone(),
                providers: self.providers.clone(),
                channel: channel.clone(),
                stats: self.stats.clone(),
                slots: Arc::new(Semaphore::new(self.per_channel.max(1))),
            };
            let span = info_span!("channel_worker", channel = %channel);
            set.spawn(worker.run(shutdown.clone()).instrument(span));
        }
        while set.join_next().await.is_some() {}
    }
}

struct Worker<S: Store> {
    store: Arc<S>,
    router: Option<Arc<Router<S>>>,
    bus: Bus,
    providers: Providers,
    channel: String,
    stats: Arc<Stats>,
    slots: Arc<Semaphore>,
}

impl<S: Store> Worker<S> {
    async fn run(self, stop: CancellationToken) {
        let topic = providers::channel_topic(&self.channel);
        let group = format!("sojourn.workers.{}", self.channel);
        let Some(mut sub) = self.bus.join(&group, &topic, From::Earliest, &stop).await else {
            return;
        };
        info!(topic, "sending");
        while let Some(batch) = sub.next_batch(BATCH, &stop).await {
            if !self.send_all(&batch, &stop).await {
                // Stopping before the results were recorded: nothing of
                // this batch is acknowledged; it is sent again elsewhere.
                break;
            }
            for m in &batch {
                sub.ack(m);
            }
        }
        sub.leave().await;
    }

    /// Sends a batch and records its results; `false` when stopped first.
    async fn send_all(&self, batch: &[BusMessage], stop: &CancellationToken) -> bool {
        let mut jobs: Vec<ChannelJob> = Vec::with_capacity(batch.len());
        for m in batch {
            match m
                .payload
                .as_deref()
                .map(serde_json::from_slice::<ChannelJob>)
            {
                Some(Ok(job)) => jobs.push(job),
                other => {
                    // Not a job (something else wrote to the topic): dropped.
                    warn!(offset = m.offset, error = ?other.map(|r| r.err()), "a channel message that is not a job; skipped");
                }
            }
        }
        // The same attempt twice in one batch (published again by a restarted
        // relay while the first copy was still unread): sent once.
        let mut seen = std::collections::HashSet::with_capacity(jobs.len());
        jobs.retain(|j| {
            seen.insert((
                j.execution_id.clone(),
                j.dispatch.node.clone(),
                j.dispatch.attempt,
            ))
        });
        if jobs.is_empty() {
            return true;
        }
        // Only attempts still open are sent: a message published again (a
        // restarted relay, a lapsed claim) or redelivered (a rebalance, a
        // crash before the commit) after its result was recorded is
        // dropped, and so is one no transition decided.
        let begins = {
            let refs: Vec<AttemptRef<'_>> = jobs
                .iter()
                .map(|j| AttemptRef {
                    execution_id: &j.execution_id,
                    node: j.dispatch.node.as_str(),
                    attempt: j.dispatch.attempt,
                })
                .collect();
            match until_stored(stop, "beginning channel attempts", || {
                self.store.begin_attempts(&refs)
            })
            .await
            {
                None => return false,
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    warn!(error = %e, "channel messages that do not name a real attempt; skipped");
                    return true;
                }
            }
        };
        let jobs: Vec<ChannelJob> = jobs
            .into_iter()
            .zip(begins)
            .filter_map(|(job, begin)| {
                if matches!(begin, AttemptBegin::Send { .. }) {
                    Some(job)
                } else {
                    debug!(execution.id = %job.execution_id, ?begin, "a channel message already sent or unknown; dropped");
                    None
                }
            })
            .collect();
        // The recipient's preferences, suppressions and caps, now (one read
        // for the batch; the caps reserved atomically).
        let plans = match Channel::parse(&self.channel) {
            Some(channel) if !jobs.is_empty() => {
                let refs: Vec<audience::Job<'_>> = jobs
                    .iter()
                    .map(|j| audience::Job {
                        execution_id: j.execution_id.as_str(),
                        dispatch: &j.dispatch,
                    })
                    .collect();
                match until_stored(stop, "reading the audience", || {
                    audience::plan(
                        &*self.store,
                        &self.providers.audience,
                        channel,
                        &refs,
                        chrono::Utc::now(),
                    )
                })
                .await
                {
                    None => return false,
                    Some(Ok(p)) => p,
                    Some(Err(e)) => {
                        // Not a database outage (that is waited out): a row
                        // that does not read. Nothing is sent; each message
                        // fails retryably (its node's policy tries again)
                        // and the worker goes on with the next batch.
                        warn!(error = %e, "the audience of a batch could not be read; not sent");
                        jobs.iter()
                            .map(|_| {
                                audience::Plan::Done(
                                    sojourn_runtime::ActionOutcome::failure(
                                        format!("the recipient's audience could not be read: {e}"),
                                        true,
                                    ),
                                    None,
                                )
                            })
                            .collect()
                    }
                }
            }
            _ => jobs.iter().map(|_| audience::Plan::unchanged()).collect(),
        };
        let mut set = JoinSet::new();
        let mut results: Vec<(ExecutionId, LocalResult)> = Vec::with_capacity(batch.len());
        let mut log: Vec<NewDelivery> = Vec::with_capacity(batch.len());
        let mut kept_back: Vec<(ChannelJob, sojourn_runtime::ActionOutcome, Vec<Delivery>)> =
            Vec::new();
        for (job, plan) in jobs.into_iter().zip(plans) {
            let (inputs, link, counted) = match plan {
                audience::Plan::Done(outcome, delivery) => {
                    kept_back.push((job, outcome, delivery.into_iter().collect()));
                    continue;
                }
                audience::Plan::Send {
                    inputs,
                    link,
                    counted,
                } => (inputs, link, counted),
            };
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return false;
            };
            let providers = self.providers.clone();
            let span = info_span!("send", execution.id = %job.execution_id, node = %job.dispatch.node, attempt = job.dispatch.attempt);
            set.spawn(
                async move {
                    let (outcome, deliveries) = providers::send(
                        &providers,
                        &job.dispatch,
                        inputs.as_ref(),
                        link.as_deref(),
                    )
                    .await;
                    drop(slot);
                    (job, outcome, deliveries, counted)
                }
                .instrument(span),
            );
        }
        // Cap reservations of sends that failed are given back (a retry
        // reserves again).
        let mut release: std::collections::HashMap<String, Vec<(String, String)>> =
            std::collections::HashMap::new();
        let mut done_all: Vec<(ChannelJob, sojourn_runtime::ActionOutcome, Vec<Delivery>)> =
            kept_back;
        while let Some(done) = set.join_next().await {
            let (job, outcome, deliveries, counted) = match done {
                Ok(d) => d,
                Err(e) => {
                    // A provider never panics by design; if one did, its
                    // message is sent again when the relay's claim lapses.
                    tracing::error!(error = %e, "a channel send panicked");
                    continue;
                }
            };
            Stats::add(&self.stats.channel_messages_sent, 1);
            if let (sojourn_runtime::ActionOutcome::Failure { .. }, Some((ns, subject, key))) =
                (&outcome, counted)
            {
                release.entry(ns).or_default().push((subject, key));
            }
            done_all.push((job, outcome, deliveries));
        }
        for (ns, sends) in &release {
            if let Err(e) = self.store.release_sends(ns, sends).await {
                warn!(error = %e, "counted sends that failed could not be given back; they count until their window ends");
            }
        }
        for (job, outcome, deliveries) in done_all {
            let d = &job.dispatch;
            log.extend(deliveries.into_iter().map(|x| NewDelivery {
                id: sojourn_persistence::ids::new_delivery_id(),
                execution_id: job.execution_id.clone(),
                node: d.node.as_str().to_owned(),
                attempt: d.attempt,
                idempotency_key: d.idempotency_key.clone(),
                channel: x.channel.as_str().to_owned(),
                provider: x.provider,
                recipient: x.recipient,
                status: x.status.to_owned(),
                provider_message_id: x.message_id,
                error_class: x.error_class.map(str::to_owned),
                error: x.error,
                created_at: x.started_at,
                duration_ms: i64::try_from(x.duration_ms).unwrap_or(i64::MAX),
            }));
            results.push((
                job.execution_id,
                LocalResult {
                    node: job.dispatch.node,
                    attempt: job.dispatch.attempt,
                    outcome,
                    key: job.dispatch.idempotency_key,
                },
            ));
        }
        if results.is_empty() {
            return true;
        }
        // The delivery log first: a crash between the two re-sends the
        // attempt, whose row is then updated, not doubled.
        if !log.is_empty() {
            match until_stored(stop, "recording deliveries", || {
                self.store.add_deliveries(&log)
            })
            .await
            {
                None => return false,
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    warn!(error = %e, deliveries = log.len(), "deliveries that cannot be recorded; dropped");
                }
            }
        }
        // The database away: tried again until it is back (the messages
        // stay unacknowledged meanwhile).
        match until_stored(stop, "recording channel results", || {
            crate::outbox::record_results(&*self.store, &results)
        })
        .await
        {
            None => false,
            Some(Ok(inbox)) => {
                if let Some(router) = &self.router {
                    crate::outbox::route_recorded(router, results, inbox).await;
                }
                true
            }
            Some(Err(e)) => {
                warn!(error = %e, results = results.len(), "channel results that cannot be recorded; dropped");
                true
            }
        }
    }
}

/// A store call, tried again with backoff (to 5 s) while the database is
/// away; `None` when the node stops first. Any other error is the answer.
async fn until_stored<T, F, Fut>(
    stop: &CancellationToken,
    what: &str,
    mut call: F,
) -> Option<Result<T, sojourn_persistence::Error>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sojourn_persistence::Error>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match call().await {
            Err(sojourn_persistence::Error::Database(e)) => {
                debug!(error = %e, "{what} failed; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            done => return Some(done),
        }
    }
}

/// Channel workers alone (`sojourn worker --channels …`), for operators who
/// scale sending apart from the nodes: they consume the channels' topics
/// on Kafka and record each result the durable way; the nodes' recovery
/// hands it to its execution (within `recovery_poll`). With `cluster`
/// (Redis), the providers' rate limits are shared with the nodes. Runs until
/// `shutdown`; the sends in flight are finished and recorded first.
pub async fn run_alone<S: Store>(
    store: S,
    config: &crate::Config,
    cluster: Option<Arc<sojourn_cluster::Cluster>>,
    shutdown: CancellationToken,
) -> Result<(), crate::Error> {
    if config.kafka_brokers.is_empty() {
        return Err(crate::Error::Validation(
            "kafka.brokers: workers apart from the nodes need Kafka".into(),
        ));
    }
    if let Some(bad) = config
        .worker_channels
        .iter()
        .find(|c| !providers::CHANNELS.contains(&c.as_str()))
    {
        return Err(crate::Error::Validation(format!(
            "channels: {bad:?} is not a channel ({})",
            providers::CHANNELS.join(", ")
        )));
    }
    let channels = Arc::new(
        config
            .build_channels(cluster)
            .map_err(|e| crate::Error::Validation(e.to_string()))?,
    );
    let bus =
        Bus::kafka(&config.kafka_brokers, &config.node_id).map_err(crate::Error::Unavailable)?;
    ensure_channel_topics(&bus, config.kafka_topic_partitions).await;
    // Brokers that never answer are a configuration error; a topic just
    // made may take a moment to have its leaders.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = bus.ping(Duration::from_secs(5)).await {
        if std::time::Instant::now() > deadline {
            return Err(crate::Error::Unavailable(e));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ChannelWorkers {
        store: Arc::new(store),
        router: None,
        bus: bus.clone(),
        providers: Providers::new(config, bus, channels, shutdown.clone()),
        channels: config.worker_channels.clone(),
        stats: Arc::new(Stats::default()),
        per_channel: config.max_in_flight_actions,
    }
    .run(shutdown)
    .await;
    Ok(())
}
