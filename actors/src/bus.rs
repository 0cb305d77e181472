//! The message bus between the outbox, the channel workers and the event
//! triggers: Kafka in a cluster (`kafka_brokers` set), an in-process queue
//! otherwise (`sojourn dev`, or `serve` without Kafka), behind one type so
//! that the same code runs over either.
//!
//! Kafka: an idempotent producer (acks from every in-sync replica,
//! librdkafka retrying until the broker answers), consumers in groups that
//! commit only the offsets [`Subscription::ack`] stored. In process: a topic
//! hands each message to every group subscribed at the time (within a
//! group, to one of its subscribers); nothing is kept, because what the
//! in-process queue carries is kept elsewhere (the outbox, until a result is
//! recorded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A message as received.
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Where a published message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub partition: i32,
    pub offset: i64,
}

/// The bus of a node (cheap to clone).
#[derive(Clone)]
pub struct Bus(Kind);

#[derive(Clone)]
enum Kind {
    Kafka(Arc<KafkaBus>),
    Memory(Arc<MemoryBus>),
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Kafka(k) => write!(f, "Bus::Kafka({})", k.brokers),
            Kind::Memory(_) => f.write_str("Bus::Memory"),
        }
    }
}

struct KafkaBus {
    brokers: String,
    client_id: String,
    /// Replaced when it turns fatal (an idempotent producer does after
    /// some errors, a long outage among them, and then refuses every send).
    producer: std::sync::RwLock<FutureProducer>,
}

fn new_producer(brokers: &str, client_id: &str) -> Result<FutureProducer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .create()
        .map_err(|e| format!("creating the Kafka producer: {e}"))
}

impl KafkaBus {
    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After a failed send: a producer in a fatal state is made anew (the
    /// next send goes through the new one).
    fn renew_if_fatal(&self, used: &FutureProducer) {
        let Some((code, reason)) = used.client().fatal_error() else {
            return;
        };
        let mut current = self.producer.write().unwrap_or_else(|p| p.into_inner());
        // Another sender may have renewed it already.
        if !std::ptr::eq(current.client().native_ptr(), used.client().native_ptr()) {
            return;
        }
        match new_producer(&self.brokers, &self.client_id) {
            Ok(fresh) => {
                tracing::warn!(
                    ?code,
                    reason,
                    "the Kafka producer failed for good; a new one takes over"
                );
                *current = fresh;
            }
            Err(e) => {
                tracing::error!(error = %e, "the Kafka producer failed for good and no new one could be made")
            }
        }
    }
}

/// How far a consumer group is behind on one partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// The group's committed offset (the next message it will read); none
    /// when it has committed nothing yet.
    pub committed: Option<i64>,
    /// The partition's end (the offset the next message will get).
    pub end: i64,
    /// Messages kept and not consumed yet (`end − committed`); unknown
    /// before the group's first commit (where it starts depends on the
    /// trigger's `from`).
    pub lag: Option<i64>,
}

/// Why a lag could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LagError {
    /// The topic does not exist (yet).
    NoTopic,
    /// Kafka did not answer in time, or failed (the detail is for the log).
    Unavailable(String),
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Earliest,
    Latest,
}

impl Bus {
    /// Kafka at `brokers` (`host:port`, …).
    pub fn kafka(brokers: &[String], node: &str) -> Result<Bus, String> {
        let brokers = brokers.join(",");
        let client_id = format!("sojourn-{node}");
        let producer = new_producer(&brokers, &client_id)?;
        Ok(Bus(Kind::Kafka(Arc::new(KafkaBus {
            brokers,
            client_id,
            producer: std::sync::RwLock::new(producer),
        }))))
    }

    /// The in-process queue.
    pub fn memory() -> Bus {
        Bus(Kind::Memory(Arc::new(MemoryBus::default())))
    }

    pub fn is_kafka(&self) -> bool {
        matches!(self.0, Kind::Kafka(_))
    }

    /// Publishes a message; returns once the broker has it (Kafka) or it is
    /// queued (in process). A broker that is away is waited for as long as
    /// librdkafka's delivery timeout (five minutes), then an error.
    pub async fn publish(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<Published, String> {
        match &self.0 {
            Kind::Kafka(k) => {
                let mut hs = OwnedHeaders::new_with_capacity(headers.len());
                for (name, value) in headers {
                    hs = hs.insert(Header {
                        key: name,
                        value: Some(*value),
                    });
                }
                let record = FutureRecord::to(topic)
                    .key(key)
                    .payload(payload)
                    .headers(hs);
                let producer = k.producer();
                let sent = producer.send(record, Timeout::Never).await;
                match sent {
                    Ok(d) => Ok(Published {
                        partition: d.partition,
                        offset: d.offset,
                    }),
                    Err((e, _)) => {
                        k.renew_if_fatal(&producer);
                        Err(format!("publishing to {topic}: {e}"))
                    }
                }
            }
            Kind::Memory(m) => m.publish(BusMessage {
                topic: topic.to_owned(),
                partition: 0,
                offset: 0,
                key: Some(key.to_vec()),
                payload: Some(payload.to_vec()),
                headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Some(v.to_vec())))
                    .collect(),
            }),
        }
    }

    /// Joins consumer group `group` on `topic`, trying again every second
    /// until it can; `None` once `stop` is cancelled.
    pub async fn join(
        &self,
        group: &str,
        topic: &str,
        from: From,
        stop: &CancellationToken,
    ) -> Option<Subscription> {
        loop {
            match self.subscribe(group, topic, from) {
                Ok(s) => return Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, group, "joining a consumer group failed; trying again");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Joins consumer group `group` on `topic`.
    pub fn subscribe(&self, group: &str, topic: &str, from: From) -> Result<Subscription, String> {
        match &self.0 {
            Kind::Kafka(k) => {
                let reset = match from {
                    From::Earliest => "earliest",
                    From::Latest => "latest",
                };
                let consumer: StreamConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &k.brokers)
                    .set("group.id", group)
                    .set("client.id", &k.client_id)
                    .set("enable.auto.commit", "true")
                    .set("auto.commit.interval.ms", "1000")
                    // Only what was acknowledged is committed.
                    .set("enable.auto.offset.store", "false")
                    .set("auto.offset.reset", reset)
                    .set("session.timeout.ms", "10000")
                    .set("enable.partition.eof", "false")
                    // A fetch with nothing to read waits this long at the
                    // broker: what a quiet topic adds to a message's latency
                    // (librdkafka's default is 500 ms).
                    .set("fetch.wait.max.ms", "50")
                    .create()
                    .map_err(|e| format!("creating a Kafka consumer: {e}"))?;
                consumer
                    .subscribe(&[topic])
                    .map_err(|e| format!("subscribing to {topic}: {e}"))?;
                Ok(Subscription(Member::Kafka(consumer)))
            }
            Kind::Memory(m) => Ok(Subscription(Member::Memory(m.subscribe(group, topic)))),
        }
    }

    /// Creates the topics that do not exist yet, with `partitions` each and
    /// the brokers' default replication factor; the in-process queue needs
    /// none. An error names what failed (the caller decides whether it
    /// matters).
    pub async fn ensure_topics(&self, topics: &[String], partitions: i32) -> Result<(), String> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::types::RDKafkaErrorCode;
        let Kind::Kafka(k) = &self.0 else {
            return Ok(());
        };
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &k.brokers)
            .set("client.id", &k.client_id)
            .create()
            .map_err(|e| format!("creating a Kafka admin client: {e}"))?;
        let create = |rf: i32| -> Vec<NewTopic<'_>> {
            topics
                .iter()
                .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(rf)))
                .collect()
        };
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        // -1: the brokers' `default.replication.factor`; a broker too old
        // for that (or tansu) is asked for 1.
        let mut failed = Vec::new();
        for rf in [-1, 1] {
            let results = admin
                .create_topics(&create(rf), &opts)
                .await
                .map_err(|e| format!("creating topics: {e}"))?;
            failed = results
                .into_iter()
                .filter_map(|r| match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                    Err((topic, code)) => Some(format!("{topic}: {code:?}")),
                })
                .collect();
            if failed.is_empty() {
                return Ok(());
            }
        }
        Err(format!("creating topics: {}", failed.join(", ")))
    }

    /// How far consumer group `group` is behind on `topic`, per partition
    /// (`None` on the in-process queue, which keeps no offsets). Reads the
    /// group's committed offsets and the partitions' ends; joins nothing.
    ///
    /// Everything shares one deadline of `timeout`; at most two run at once
    /// on a node (each holds a client and a blocking thread for that long):
    /// a third is told Kafka is busy.
    pub async fn lag(
        &self,
        group: &str,
        topic: &str,
        timeout: Duration,
    ) -> Result<Option<Vec<PartitionLag>>, LagError> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        use rdkafka::{Offset, TopicPartitionList};
        static LAGS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let Kind::Kafka(k) = &self.0 else {
            return Ok(None);
        };
        let permit = LAGS
            .try_acquire()
            .map_err(|_| LagError::Unavailable("two lag reads already running".into()))?;
        let (k, group, topic) = (k.clone(), group.to_owned(), topic.to_owned());
        let deadline = std::time::Instant::now() + timeout;
        let left = move || deadline.saturating_duration_since(std::time::Instant::now());
        let read = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let unavailable =
                |what: &str, e: KafkaError| LagError::Unavailable(format!("{what}: {e}"));
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &k.brokers)
                .set("group.id", &group)
                .set("client.id", &k.client_id)
                .set("enable.auto.commit", "false")
                .create()
                .map_err(|e| unavailable("creating a consumer", e))?;
            let md = consumer
                .fetch_metadata(Some(&topic), left())
                .map_err(|e| unavailable("metadata", e))?;
            let t = md
                .topics()
                .first()
                .ok_or_else(|| LagError::Unavailable(format!("{topic}: no metadata")))?;
            match t.error().map(RDKafkaErrorCode::from) {
                None => {}
                Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Err(LagError::NoTopic),
                Some(e) => return Err(LagError::Unavailable(format!("{topic}: {e:?}"))),
            }
            let mut asked = TopicPartitionList::new();
            for p in t.partitions() {
                asked.add_partition(&topic, p.id());
            }
            let committed = consumer
                .committed_offsets(asked, left())
                .map_err(|e| unavailable("committed offsets", e))?;
            let mut out = Vec::with_capacity(t.partitions().len());
            for p in t.partitions() {
                let (low, end) = consumer
                    .fetch_watermarks(&topic, p.id(), left())
                    .map_err(|e| unavailable(&format!("{topic}[{}]", p.id()), e))?;
                let done =
                    committed
                        .find_partition(&topic, p.id())
                        .and_then(|e| match e.offset() {
                            Offset::Offset(n) => Some(n),
                            _ => None,
                        });
                out.push(PartitionLag {
                    partition: p.id(),
                    committed: done,
                    end,
                    // Messages below `low` are gone: they are not behind.
                    lag: done.map(|c| (end - c.max(low)).max(0)),
                });
            }
            out.sort_by_key(|p| p.partition);
            Ok(Some(out))
        });
        match tokio::time::timeout(timeout + Duration::from_secs(1), read).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(join)) => Err(LagError::Unavailable(join.to_string())),
            Err(_) => Err(LagError::Unavailable("no answer in time".into())),
        }
    }

    /// Whether the brokers answer (readiness): one topic's metadata within
    /// `timeout` (keep it under a probe's timeout). Always for the
    /// in-process queue.
    pub async fn ping(&self, timeout: Duration) -> Result<(), String> {
        match &self.0 {
            Kind::Kafka(k) => {
                let k = k.clone();
                tokio::task::spawn_blocking(move || {
                    let producer = k.producer();
                    if let Some((code, reason)) = producer.client().fatal_error() {
                        return Err(format!("Kafka producer: {code:?}: {reason}"));
                    }
                    let md = producer
                        .client()
                        .fetch_metadata(Some("sojourn.actions.email"), timeout)
                        .map_err(|e| format!("Kafka at {}: {e}", k.brokers))?;
                    // A topic's own error comes in its metadata, not as the
                    // call's.
                    match md.topics().first().and_then(|t| t.error()) {
                        None => Ok(()),
                        Some(e) => Err(format!(
                            "Kafka at {}: sojourn.actions.email: {e:?}",
                            k.brokers
                        )),
                    }
                })
                .await
                .map_err(|e| e.to_string())?
            }
            Kind::Memory(_) => Ok(()),
        }
    }
}

/// A member of a consumer group.
pub struct Subscription(Member);

enum Member {
    Kafka(StreamConsumer),
    Memory(MemorySubscription),
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.0 {
            Member::Kafka(_) => "Subscription::Kafka",
            Member::Memory(_) => "Subscription::Memory",
        })
    }
}

impl Subscription {
    /// The next message (cancel-safe).
    pub async fn recv(&mut self) -> Result<BusMessage, String> {
        match &mut self.0 {
            Member::Kafka(c) => {
                let m = c.recv().await.map_err(|e| e.to_string())?;
                Ok(BusMessage {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            Member::Memory(s) => {
                s.rx.lock()
                    .await
                    .recv()
                    .await
                    .ok_or_else(|| "the queue closed".into())
            }
        }
    }

    /// A message that is already here, if any.
    async fn try_recv(&mut self) -> Option<BusMessage> {
        match tokio::time::timeout(Duration::ZERO, self.recv()).await {
            Ok(Ok(m)) => Some(m),
            _ => None,
        }
    }

    /// The next batch: waits for a message, then takes whatever else is
    /// already here, up to `max`. A failed receive is logged and tried
    /// again after 500 ms. `None` once `stop` is cancelled.
    pub async fn next_batch(
        &mut self,
        max: usize,
        stop: &CancellationToken,
    ) -> Option<Vec<BusMessage>> {
        let first = loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return None,
                m = self.recv() => m,
            };
            match received {
                Ok(m) => break m,
                Err(e) => {
                    tracing::warn!(error = %e, "receiving from the bus failed");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        };
        let mut batch = Vec::with_capacity(max.min(64));
        batch.push(first);
        while batch.len() < max {
            match self.try_recv().await {
                Some(m) => batch.push(m),
                None => break,
            }
        }
        Some(batch)
    }

    /// Marks a message handled: its offset is committed with the next
    /// commit. Only once its effect is durable.
    pub fn ack(&self, m: &BusMessage) {
        if let Member::Kafka(c) = &self.0
            && let Err(e) = c.store_offset(&m.topic, m.partition, m.offset)
        {
            // The partition went to another member meanwhile: it gets the
            // message again.
            tracing::debug!(error = %e, "storing an offset failed");
        }
    }

    /// Commits what was acknowledged and leaves the group (both block: off
    /// the runtime's threads).
    pub async fn leave(self) {
        if let Member::Kafka(c) = self.0 {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = c.commit_consumer_state(CommitMode::Sync) {
                    tracing::debug!(error = %e, "committing offsets at stop failed");
                }
                c.unsubscribe();
            })
            .await;
        }
    }
}

/// The in-process queue: per topic, per group, a channel.
#[derive(Default)]
struct MemoryBus {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    topics: HashMap<String, HashMap<String, MemoryGroup>>,
    /// The last offset given: microseconds since the epoch, made to grow,
    /// so that offsets stay unique across restarts of the process (event
    /// triggers key their starts by offset).
    last_offset: i64,
}

fn empty() -> BusMessage {
    BusMessage {
        topic: String::new(),
        partition: 0,
        offset: 0,
        key: None,
        payload: None,
        headers: Vec::new(),
    }
}

/// A group keeps what is published while it has no member (a paused
/// trigger's consumer comes back to it), as a Kafka group keeps its offset.
struct MemoryGroup {
    tx: mpsc::UnboundedSender<BusMessage>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<BusMessage>>>,
}

/// A member of an in-process group: members share the group's receiver.
struct MemorySubscription {
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<BusMessage>>>,
}

impl MemoryBus {
    /// Hands the message to every group of its topic; an error when there
    /// is none (nobody would ever read it: nothing is kept in process).
    fn publish(&self, mut m: BusMessage) -> Result<Published, String> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let groups = match state.topics.get(&m.topic) {
            Some(g) if !g.is_empty() => g.len(),
            _ => {
                return Err(format!(
                    "nothing consumes {} in this process (no Kafka configured)",
                    m.topic
                ));
            }
        };
        let offset = (state.last_offset + 1).max(chrono::Utc::now().timestamp_micros());
        state.last_offset = offset;
        m.offset = offset;
        if let Some(all) = state.topics.get(&m.topic) {
            let mut left = groups;
            for g in all.values() {
                left -= 1;
                // The receiver lives as long as the group; the last takes
                // the message itself.
                let _ = if left == 0 {
                    g.tx.send(std::mem::replace(&mut m, empty()))
                } else {
                    g.tx.send(m.clone())
                };
            }
        }
        Ok(Published {
            partition: 0,
            offset,
        })
    }

    fn subscribe(&self, group: &str, topic: &str) -> MemorySubscription {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let g = state
            .topics
            .entry(topic.to_owned())
            .or_default()
            .entry(group.to_owned())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                MemoryGroup {
                    tx,
                    rx: Arc::new(tokio::sync::Mutex::new(rx)),
                }
            });
        MemorySubscription { rx: g.rx.clone() }
    }
}
