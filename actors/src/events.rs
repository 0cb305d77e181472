//! Event triggers on Kafka: every node consumes the topic of every active
//! event trigger, in that trigger's own consumer group
//! (`sojourn.trigger.<id>`), so the topic's partitions are shared among the
//! nodes and rebalanced as nodes join and leave.
//!
//! Each message becomes an event (`{name, key, payload, headers, topic,
//! partition, offset}`); the trigger's condition picks the ones it wants,
//! then it starts the workflow (idempotency key from the trigger and the
//! message's topic, partition and offset, or a configured expression) or
//! delivers the event to the executions waiting for it. A message's offset
//! is stored for commit only once its effect is durable, so a crash
//! redelivers it and the same key finds the execution already started:
//! at-least-once delivery, one execution per message. A message that can
//! never be used (its value is not JSON, an expression fails on it, the
//! start is refused for good) is kept in `dead_letters` with the reason and
//! its partition moves on.
//!
//! Pausing or stopping a trigger stops its consumer on every node within a
//! poll (a second by default); its group keeps its offsets, so a resumed
//! trigger carries on from where it stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value, json};
use sojourn_persistence::{DeadLetter, Store, TriggerRecord};
use sojourn_runtime::expr::{EventContext, Expr};
use sojourn_runtime::triggers::{EventAction, EventTrigger, StartFrom, TriggerConfig, TriggerKind};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::bus::{Bus, BusMessage, From};
use crate::config::Config;
use crate::engine::{Launcher, StartRequest};
use crate::error::Error;

/// Messages handled at once by one consumer (they are started together:
/// the starts share the node's batched inserts).
const BATCH: usize = 256;
/// The most of a value kept in a dead letter.
const DEAD_PAYLOAD_MAX: usize = 16 * 1024;

/// Runs one consumer per active event trigger with a topic.
pub(crate) struct EventConsumers<S: Store> {
    pub store: Arc<S>,
    pub launcher: Launcher<S>,
    pub config: Config,
    pub bus: Bus,
}

struct Running {
    config: Value,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl<S: Store> EventConsumers<S> {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut running: HashMap<String, Running> = HashMap::new();
        // Stored configurations that did not read, said once each.
        let mut broken: HashMap<String, Value> = HashMap::new();
        let mut tick = tokio::time::interval(self.config.schedule_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let active = match self.store.active_triggers(TriggerKind::Event).await {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "listing active event triggers failed; trying again");
                    continue;
                }
            };
            let mut wanted: HashMap<String, TriggerRecord> = active
                .into_iter()
                .filter(|t| t.config.get("topic").is_some_and(Value::is_string))
                .map(|t| (t.id.clone(), t))
                .collect();
            // Stopped, paused, or changed: its consumer leaves (all at once,
            // so that one slow to leave does not hold the others). One whose
            // task ended is started again below.
            let gone: Vec<String> = running
                .iter()
                .filter(|(id, r)| {
                    r.task.is_finished() || wanted.get(*id).is_none_or(|t| t.config != r.config)
                })
                .map(|(id, _)| id.clone())
                .collect();
            let mut leaving = Vec::with_capacity(gone.len());
            for id in gone {
                if let Some(r) = running.remove(&id) {
                    r.stop.cancel();
                    leaving.push((id, r.task));
                }
            }
            for (id, task) in leaving {
                match task.await {
                    Ok(()) => debug!(trigger.id = %id, "event trigger consumer left"),
                    Err(e) => {
                        error!(trigger.id = %id, error = %e, "an event trigger consumer panicked; it is started again")
                    }
                }
            }
            for (id, t) in wanted.drain() {
                if running.contains_key(&id) {
                    continue;
                }
                if broken.get(&id) == Some(&t.config) {
                    continue;
                }
                let compiled = match Compiled::new(&t) {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        error!(trigger.id = %id, error = %e, "an event trigger's stored configuration is invalid; it is not consumed");
                        broken.insert(id, t.config);
                        continue;
                    }
                };
                let stop = shutdown.child_token();
                let consumer = TriggerConsumer {
                    store: self.store.clone(),
                    launcher: self.launcher.clone(),
                    bus: self.bus.clone(),
                    trigger: compiled,
                };
                let span = info_span!("event_trigger", trigger.id = %id);
                let task = tokio::spawn(consumer.run(stop.clone()).instrument(span));
                running.insert(
                    id,
                    Running {
                        config: t.config,
                        stop,
                        task,
                    },
                );
            }
        }
        for r in running.values() {
            r.stop.cancel();
        }
        for (_, r) in running.drain() {
            let _ = r.task.await;
        }
    }
}

/// An event trigger, its expressions compiled.
struct Compiled {
    id: String,
    namespace: String,
    workflow_id: String,
    topic: String,
    config: EventTrigger,
    condition: Option<Expr>,
    key: Option<Expr>,
    subject: Option<Expr>,
    idempotency_key: Option<Expr>,
    profile: Option<Expr>,
}

impl Compiled {
    fn new(t: &TriggerRecord) -> Result<Compiled, String> {
        let TriggerConfig::Event(config) = t.typed_config().map_err(|e| e.to_string())? else {
            return Err("not an event trigger".into());
        };
        let topic = config.topic.clone().ok_or("no topic")?;
        let compile = |e: &Option<String>| e.as_deref().map(Expr::compile).transpose();
        Ok(Compiled {
            id: t.id.clone(),
            namespace: t.namespace.clone(),
            workflow_id: t.workflow_id.clone(),
            topic,
            condition: compile(&config.condition)?,
            key: compile(&config.key)?,
            subject: compile(&config.subject)?,
            idempotency_key: compile(&config.idempotency_key)?,
            profile: compile(&config.profile)?,
            config,
        })
    }
}

/// What became of a message.
#[derive(Debug)]
enum Outcome {
    /// Its effect is durable (or the condition passed it over).
    Done,
    /// It can never be used: kept as a dead letter.
    Dead(String),
    /// It may be used later (the store or the node is busy or away).
    Retry(Error),
}

struct TriggerConsumer<S: Store> {
    store: Arc<S>,
    launcher: Launcher<S>,
    bus: Bus,
    trigger: Arc<Compiled>,
}

impl<S: Store> TriggerConsumer<S> {
    async fn run(self, stop: CancellationToken) {
        let from = match self.trigger.config.from {
            StartFrom::Latest => From::Latest,
            StartFrom::Earliest => From::Earliest,
        };
        let group = group_of(&self.trigger.id);
        let Some(mut consumer) = self
            .bus
            .join(&group, &self.trigger.topic, from, &stop)
            .await
        else {
            return;
        };
        info!(topic = %self.trigger.topic, "consuming");
        // Dead letters go to a topic too (`<topic>.dlq`), for consumers
        // that want them; made here when missing.
        let dlq = dead_letter_topic(&self.trigger.topic);
        if let Ok(Err(e)) = tokio::time::timeout(
            Duration::from_secs(10),
            self.bus.ensure_topics(std::slice::from_ref(&dlq), 1),
        )
        .await
        {
            debug!(error = %e, topic = dlq, "the dead-letter topic could not be made");
        }
        'consume: while let Some(batch) = consumer.next_batch(BATCH, &stop).await {
            let batch: Vec<Arc<BusMessage>> = batch.into_iter().map(Arc::new).collect();
            let mut pending: Vec<usize> = (0..batch.len()).collect();
            let mut backoff = Duration::from_millis(100);
            while !pending.is_empty() {
                let mut set = JoinSet::new();
                let mut tasks = HashMap::with_capacity(pending.len());
                // Starts are idempotent and order-free: each message is its
                // own task. Profile updates and deliveries are not: a
                // partition's messages (a key's, in order) go one after the
                // other, and a partition stops at its first message to retry.
                let ordered = !matches!(self.trigger.config.action, EventAction::Start);
                let lanes: Vec<Vec<usize>> = if ordered {
                    let mut by_partition: std::collections::BTreeMap<i32, Vec<usize>> =
                        Default::default();
                    for &i in &pending {
                        by_partition.entry(batch[i].partition).or_default().push(i);
                    }
                    by_partition.into_values().collect()
                } else {
                    pending.iter().map(|&i| vec![i]).collect()
                };
                for lane in lanes {
                    let this = self.clone_parts();
                    let msgs: Vec<(usize, Arc<BusMessage>)> =
                        lane.iter().map(|&i| (i, batch[i].clone())).collect();
                    let task = set.spawn(async move {
                        let mut out = Vec::with_capacity(msgs.len());
                        let mut blocked = false;
                        for (i, msg) in msgs {
                            if blocked {
                                // After one to retry: not tried, retried with it.
                                out.push((i, None));
                                continue;
                            }
                            let outcome = this.handle(&msg).await;
                            blocked = matches!(outcome, Outcome::Retry(_));
                            out.push((i, Some(outcome)));
                        }
                        out
                    });
                    tasks.insert(task.id(), lane);
                }
                let mut retry = Vec::new();
                let mut outcomes = Vec::with_capacity(pending.len());
                while let Some(joined) = set.join_next_with_id().await {
                    match joined {
                        Ok((_, done)) => outcomes.extend(done),
                        // A handler that panicked: its messages can never be
                        // used; they must not be acknowledged as handled.
                        Err(e) => {
                            if let Some(lane) = tasks.get(&e.id()) {
                                let reason = format!("handling it panicked: {e}");
                                outcomes.extend(
                                    lane.iter()
                                        .map(|&i| (i, Some(Outcome::Dead(reason.clone())))),
                                );
                            }
                        }
                    }
                }
                for (i, outcome) in outcomes {
                    let Some(outcome) = outcome else {
                        retry.push(i);
                        continue;
                    };
                    match outcome {
                        Outcome::Done => {}
                        Outcome::Dead(reason) => match self.dead_letter(&batch[i], &reason).await {
                            Ok(()) => self.publish_dead_letter(&dlq, &batch[i], &reason).await,
                            Err(Error::Store(sojourn_persistence::Error::Database(e))) => {
                                warn!(error = %e, "keeping a dead letter failed; trying again");
                                retry.push(i);
                            }
                            // Anything else would fail again: the message is
                            // passed (logged above) rather than block its
                            // partition.
                            Err(e) => error!(error = %e, "a dead letter could not be kept"),
                        },
                        Outcome::Retry(e) => {
                            debug!(error = %e, "an event's effect failed; trying again");
                            retry.push(i);
                        }
                    }
                }
                if retry.is_empty() {
                    break;
                }
                warn!(
                    messages = retry.len(),
                    "events could not be handled yet; trying again"
                );
                retry.sort_unstable();
                pending = retry;
                tokio::select! {
                    // Nothing of this batch is committed: all of it comes
                    // back to whichever node consumes next.
                    _ = stop.cancelled() => break 'consume,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            for m in &batch {
                consumer.ack(m);
            }
        }
        consumer.leave().await;
    }

    fn clone_parts(&self) -> Handler<S> {
        Handler {
            launcher: self.launcher.clone(),
            trigger: self.trigger.clone(),
        }
    }

    /// Publishes a dead letter on the dead-letter topic, as it came, with
    /// `sojourn-reason`, `sojourn-trigger` and where it came from as
    /// headers. Best effort, bounded: the table has it already, and the
    /// partition must move on.
    async fn publish_dead_letter(&self, dlq: &str, m: &BusMessage, reason: &str) {
        let (partition, offset) = (m.partition.to_string(), m.offset.to_string());
        let headers: [(&str, &[u8]); 5] = [
            ("sojourn-reason", reason.as_bytes()),
            ("sojourn-trigger", self.trigger.id.as_bytes()),
            ("sojourn-topic", m.topic.as_bytes()),
            ("sojourn-partition", partition.as_bytes()),
            ("sojourn-offset", offset.as_bytes()),
        ];
        let published = tokio::time::timeout(
            Duration::from_secs(5),
            self.bus.publish(
                dlq,
                m.key.as_deref().unwrap_or_default(),
                m.payload.as_deref().unwrap_or_default(),
                &headers,
            ),
        )
        .await;
        match published {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(error = %e, topic = dlq, "publishing a dead letter failed"),
            Err(_) => debug!(topic = dlq, "publishing a dead letter timed out"),
        }
    }

    async fn dead_letter(&self, m: &BusMessage, reason: &str) -> Result<(), Error> {
        warn!(
            topic = m.topic,
            partition = m.partition,
            offset = m.offset,
            reason,
            "a message could not be used; kept as a dead letter"
        );
        // Text a database keeps: no NUL (PostgreSQL refuses it in TEXT).
        let text = |b: &[u8]| String::from_utf8_lossy(b).replace('\0', "\u{fffd}");
        let payload = m
            .payload
            .as_deref()
            .map(|p| text(&p[..p.len().min(DEAD_PAYLOAD_MAX)]));
        self.store
            .add_dead_letter(&DeadLetter {
                id: sojourn_persistence::ids::new_dead_letter_id(),
                namespace: self.trigger.namespace.clone(),
                trigger_id: self.trigger.id.clone(),
                topic: m.topic.clone(),
                partition: m.partition,
                offset: m.offset,
                key: m.key.as_deref().map(text),
                payload,
                reason: reason.replace('\0', "\u{fffd}"),
                created_at: Utc::now(),
            })
            .await?;
        Ok(())
    }
}

/// Where a topic's dead letters are published: `<topic>.dlq`.
fn dead_letter_topic(topic: &str) -> String {
    // Kafka topic names are at most 249 characters.
    let base = &topic[..topic.len().min(245)];
    format!("{base}.dlq")
}

/// What handles one message (owned by its task).
struct Handler<S: Store> {
    launcher: Launcher<S>,
    trigger: Arc<Compiled>,
}

/// A message as an event: `{name, key, payload, headers, topic,
/// partition, offset}`. `Err` when its value is not JSON.
fn event_of(name: &str, m: &BusMessage) -> Result<Value, String> {
    let payload: Value = match m.payload.as_deref() {
        None => Value::Null,
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|e| format!("the message's value is not JSON: {e}"))?,
    };
    let mut headers = Map::new();
    for (name, value) in &m.headers {
        let value = value
            .as_deref()
            .map(|v| Value::String(String::from_utf8_lossy(v).into_owned()))
            .unwrap_or(Value::Null);
        headers.insert(name.clone(), value);
    }
    let key = m
        .key
        .as_deref()
        .map(|k| Value::String(String::from_utf8_lossy(k).into_owned()))
        .unwrap_or(Value::Null);
    let mut event = json!({
        "name": name,
        "key": key,
        "payload": payload,
        "headers": headers,
        "topic": m.topic,
        "partition": m.partition,
        "offset": m.offset,
    });
    // PostgreSQL's jsonb refuses NUL: a binary key or header, or a "\u0000"
    // in the value, must not make every start of the message fail.
    crate::providers::strip_nul(&mut event);
    Ok(event)
}

/// An expression's result as a key: a string, or a number or boolean as
/// text; anything else is refused.
fn as_key(field: &str, v: Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(format!(
            "{field} must give a string, got {}",
            match other {
                Value::Array(_) => "a list",
                _ => "an object",
            }
        )),
    }
}

impl<S: Store> Handler<S> {
    async fn handle(&self, m: &BusMessage) -> Outcome {
        let t = &self.trigger;
        let event = match event_of(&t.config.event, m) {
            Ok(e) => e,
            Err(reason) => return Outcome::Dead(reason),
        };
        // CEL contexts are not Send: everything read from the event is
        // computed before the first await.
        let read = (|| -> Result<Option<Read>, String> {
            let ctx = EventContext::new(&event, Utc::now());
            if let Some(cond) = &t.condition
                && !cond.eval_event_bool(&ctx)?
            {
                return Ok(None);
            }
            let eval = |field: &str, e: &Option<Expr>| -> Result<Option<String>, String> {
                match e {
                    None => Ok(None),
                    Some(e) => as_key(field, e.eval_event(&ctx)?),
                }
            };
            Ok(Some(Read {
                key: eval("key", &t.key)?,
                subject: eval("subject", &t.subject)?,
                idempotency: eval("idempotency_key", &t.idempotency_key)?,
                profile: match &t.profile {
                    Some(e) => Some(e.eval_event(&ctx)?),
                    None => None,
                },
            }))
        })();
        let read = match read {
            Ok(Some(r)) => r,
            Ok(None) => return Outcome::Done,
            Err(reason) => return Outcome::Dead(reason),
        };
        match t.config.action {
            EventAction::Start => self.start(m, event, read).await,
            EventAction::Deliver => {
                let key = match read.key.or_else(|| event["key"].as_str().map(str::to_owned)) {
                    Some(k) => k,
                    None => return Outcome::Dead("no correlation key: the trigger has no key expression and the message no key".into()),
                };
                let payload = event["payload"].clone();
                match self
                    .launcher
                    .send_event(&t.namespace, &t.config.event, &key, payload)
                    .await
                {
                    Ok(n) => {
                        debug!(delivered = n, key, "event delivered");
                        Outcome::Done
                    }
                    Err(e) => Outcome::Retry(e),
                }
            }
            EventAction::Profile => self.update_profile(event, read).await,
        }
    }

    /// Updates the subject's profile with the payload; a payload that is
    /// not a profile update is a dead letter naming its field.
    async fn update_profile(&self, mut event: Value, read: Read) -> Outcome {
        let Some(subject) = read.subject else {
            return Outcome::Dead("the subject expression gave nothing".into());
        };
        if !crate::audience::is_subject(&subject) {
            return Outcome::Dead(
                "subject: must be 1 to 200 characters, none a control character".into(),
            );
        }
        let (what, value) = match read.profile {
            Some(v) => ("profile", v),
            None => ("payload", event["payload"].take()),
        };
        let update: crate::audience::ProfileIn = match serde_json::from_value(value) {
            Ok(u) => u,
            Err(e) => return Outcome::Dead(format!("{what}: not a profile update: {e}")),
        };
        let patch = match update.patch(&format!("{what}.")) {
            Ok(p) => p,
            Err(e) => return Outcome::Dead(e.to_string()),
        };
        match self
            .launcher
            .store()
            .write_profiles(
                &self.trigger.namespace,
                &[(subject, patch)],
                false,
                Utc::now(),
            )
            .await
        {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Retry(Error::Store(e)),
        }
    }

    async fn start(&self, m: &BusMessage, mut event: Value, read: Read) -> Outcome {
        let t = &self.trigger;
        let idempotency = match read.idempotency {
            Some(k) => format!("event:{}:{k}", t.id),
            None => format!("event:{}:{}:{}:{}", t.id, m.topic, m.partition, m.offset),
        };
        let mut input = match &t.config.input {
            Some(Value::Object(o)) => o.clone(),
            _ => Map::new(),
        };
        // The payload's fields, then the trigger's input, then `event`.
        if let Value::Object(payload) = event["payload"].take() {
            for (k, v) in payload {
                input.entry(k).or_insert(v);
            }
        }
        input.insert("event".into(), event);
        let req = StartRequest {
            namespace: Some(t.namespace.clone()),
            workflow: t.workflow_id.clone(),
            version: None,
            input: Value::Object(input),
            subject: read.subject,
            timezone: None,
            idempotency_key: Some(idempotency),
        };
        match self.launcher.start_execution(req).await {
            Ok(started) => {
                debug!(execution.id = %started.id, new = started.new, "event started an execution");
                Outcome::Done
            }
            Err(e) if crate::schedules::retryable(&e) => Outcome::Retry(e),
            Err(e) => Outcome::Dead(format!("the start was refused: {e}")),
        }
    }
}

/// What a trigger's expressions read from one event.
struct Read {
    key: Option<String>,
    subject: Option<String>,
    idempotency: Option<String>,
    /// The profile expression's value (`action: profile`).
    profile: Option<Value>,
}

/// The consumer group of an event trigger: every node's consumer of it
/// joins this one, so the topic's partitions are shared among them.
pub(crate) fn group_of(trigger: &str) -> String {
    format!("sojourn.trigger.{trigger}")
}
