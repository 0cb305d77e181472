//! The engine: wires the store, the committer, the supervisor, the timer
//! service and the outbox relay, and offers what a node does — deploy a
//! workflow, start executions, deliver events, drain and stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;
use ractor::{Actor, ActorRef};
use serde_json::Value;
use sojourn_cluster::{Cluster, NodeInfo};
use sojourn_persistence::{
    Commit, CommitResult, Created, ExecutionRecord, LeaseEpoch, NewExecution, NewWorkflow, Store,
    ids,
};
use sojourn_runtime::{CompiledWorkflow, EventInput, ExecutionId, Input, Registry, Workflow};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Error;
use crate::activator::Activator;
use crate::committer::Committer;
use crate::config::Config;
use crate::execution::{Delivery, Preloaded};
use crate::finished::Finished;
use crate::router::{Forwarded, Router};
use crate::starter::Starter;
use crate::stats::Stats;
use crate::supervisor::{Supervisor, SupervisorMsg};
use crate::timers::TimerWake;
use crate::workflows::WorkflowCache;

/// What every actor of the node shares.
pub(crate) struct Context<S: Store> {
    pub(crate) store: Arc<S>,
    pub(crate) router: Arc<Router<S>>,
    pub(crate) leaser: crate::batch::Batcher<ExecutionId, bool>,
    pub(crate) committer: Committer,
    pub(crate) starter: Starter,
    pub(crate) activator: Activator,
    pub(crate) workflows: WorkflowCache,
    /// Disabled actions, for the outbox relay.
    pub(crate) gate: Arc<crate::registry::Gate>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) timer_wake: Arc<TimerWake>,
    /// Kafka or the in-process queue: channel actions, `kafka.publish`,
    /// event triggers.
    pub(crate) bus: crate::bus::Bus,
    pub(crate) outbox_wake: Arc<Notify>,
    /// Actions claimed in their commit, to the local outbox relay.
    pub(crate) handoff: tokio::sync::mpsc::UnboundedSender<sojourn_persistence::OutboxMessage>,
    pub(crate) config: Config,
    /// The trace each execution's spans join (see `trace.rs`).
    pub(crate) traces: Arc<crate::trace::Traces>,
    /// Requests waiting for executions to finish (see `finished.rs`).
    pub(crate) finished: Arc<Finished>,
    /// One permit per started execution in memory (`max_resident_starts`).
    pub(crate) admission: Arc<tokio::sync::Semaphore>,
    /// Action results on their way to live local actors (see `results.rs`).
    pub(crate) unapplied: crate::results::Unapplied,
}

/// A request to start an execution.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// The tenant; the engine's configured namespace when `None`.
    pub namespace: Option<String>,
    /// The workflow's id or key.
    pub workflow: String,
    /// A version; the latest when `None`.
    pub version: Option<i32>,
    pub input: Value,
    pub subject: Option<String>,
    pub timezone: Option<String>,
    /// The same key returns the same execution.
    pub idempotency_key: Option<String>,
}

/// An execution that [`Engine::start_execution`] created, or found under
/// its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub id: ExecutionId,
    /// `false`: the idempotency key was used before; this is that execution.
    pub new: bool,
}

/// A running node.
pub struct Engine<S: Store> {
    ctx: Arc<Context<S>>,
    launcher: Launcher<S>,
    supervisor: ActorRef<SupervisorMsg>,
    /// Stops the background services (and refuses new starts) when
    /// cancelled.
    shutdown: CancellationToken,
    /// Draining: passivating and taking no new executions.
    draining: Arc<AtomicBool>,
    /// The heartbeat loop, stopped last.
    beat: std::sync::Mutex<Option<JoinHandle<()>>>,
    beat_shutdown: CancellationToken,
    /// Background services that stop with `shutdown` (taken by shutdown).
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// The announcer of finished executions (a cluster only), stopped after
    /// the actors so that their last finishes are announced.
    announcer: std::sync::Mutex<Option<JoinHandle<()>>>,
    announcer_stop: CancellationToken,
    /// The channels' providers.
    channels: Arc<crate::channels::Channels>,
    /// Unsubscribe links and categories.
    audience: crate::audience::Audience,
    /// Tasks that end when the last handle to their channel drops (with the
    /// engine): the starter and the committer.
    _channel_tasks: Vec<JoinHandle<()>>,
}

impl<S: Store> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.ctx.config.node_id)
            .finish()
    }
}

impl<S: Store> Engine<S> {
    /// Starts a node alone (in-process leases): `sojourn dev`, `run`,
    /// `bench`, or a single `serve` without Redis. Work left by an earlier
    /// run (due timers, unsent actions, undelivered inputs) is picked up at
    /// once.
    pub async fn start(store: S, config: Config) -> Result<Engine<S>, Error> {
        let cluster = Cluster::local(config.node_id.clone(), config.lease_ttl);
        Self::start_in_cluster(store, config, cluster).await
    }

    /// Starts a node of a cluster: leases and membership in `cluster`.
    pub async fn start_in_cluster(
        store: S,
        config: Config,
        cluster: Cluster,
    ) -> Result<Engine<S>, Error> {
        // Kafka when brokers are configured, else the in-process queue, on
        // which this node's workers are the only ones: all channels.
        if config.kafka_brokers.is_empty()
            && let Some(missing) = crate::providers::CHANNELS
                .iter()
                .find(|c| !config.worker_channels.iter().any(|w| w == *c))
        {
            return Err(Error::Validation(format!(
                "engine.worker_channels: without Kafka this node's workers send every channel; {missing} is missing"
            )));
        }
        // Claims under this node's name belong to an earlier run of it.
        store.release_claims(&config.node_id).await?;
        let store = Arc::new(store);
        let bus = if config.kafka_brokers.is_empty() {
            crate::bus::Bus::memory()
        } else {
            crate::bus::Bus::kafka(&config.kafka_brokers, &config.node_id)
                .map_err(Error::Unavailable)?
        };
        if bus.is_kafka() {
            crate::workers::ensure_channel_topics(&bus, config.kafka_topic_partitions).await;
        }
        let stats = Arc::new(Stats::default());
        let cluster = Arc::new(cluster);
        let channels = Arc::new(
            config
                .build_channels(Some(cluster.clone()))
                .map_err(|e| Error::Validation(e.to_string()))?,
        );
        let missing = unserved_workflows(&*store, &channels).await?;
        if !missing.is_empty() {
            return Err(Error::Validation(format!(
                "published workflows send through providers this node does not have (configure them under [providers] and [channels]):\n  {}",
                missing.join("\n  ")
            )));
        }
        let (router, releases) = Router::new(store.clone(), cluster.clone(), stats.clone());
        let router = Arc::new(router);
        router.set_self();
        let release_task = tokio::spawn(crate::router::run_releaser(cluster.clone(), releases));
        let (leaser, lease_task) = {
            let router = router.clone();
            crate::batch::Batcher::spawn(
                "leaser",
                config.max_commit_batch,
                move |ids: Vec<ExecutionId>| {
                    let router = router.clone();
                    async move { Ok(router.acquire_new(&ids).await) }
                },
            )
        };
        let to_chrono = |d: std::time::Duration, or: i64| {
            chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(or))
        };
        let (committer, commit_task) = crate::committer::spawn(
            store.clone(),
            stats.clone(),
            config.max_commit_batch,
            crate::committer::Claims {
                owner: config.node_id.clone(),
                outbox_ttl: to_chrono(config.outbox_claim_ttl, 3_660),
                timer_ttl: to_chrono(config.timer_claim_ttl, 30),
            },
        );
        let (handoff, handed) = tokio::sync::mpsc::unbounded_channel();
        let (starter, start_task) = crate::starter::spawn(store.clone(), config.max_commit_batch);
        let (activator, activate_task) =
            crate::activator::spawn(store.clone(), config.max_commit_batch);
        // In a cluster, finishes are announced to the other nodes' waiters.
        let announcer_stop = CancellationToken::new();
        let (finished, announcer) = if cluster.is_shared() {
            let (tx, rx) = tokio::sync::mpsc::channel(crate::finished::ANNOUNCE_QUEUE);
            let announcer = crate::finished::Announcer {
                cluster: cluster.clone(),
                ids: rx,
            };
            (
                Arc::new(Finished::announcing(tx)),
                Some(tokio::spawn(announcer.run(announcer_stop.clone()))),
            )
        } else {
            (Arc::new(Finished::default()), None)
        };
        let ctx = Arc::new(Context {
            store: store.clone(),
            router: router.clone(),
            leaser,
            committer,
            starter,
            activator,
            workflows: WorkflowCache::default(),
            gate: Arc::default(),
            stats: stats.clone(),
            timer_wake: Arc::new(TimerWake::new(&config)),
            bus: bus.clone(),
            outbox_wake: Arc::new(Notify::new()),
            handoff,
            config: config.clone(),
            traces: Arc::default(),
            finished: finished.clone(),
            unapplied: crate::results::Unapplied::default(),
            admission: Arc::new(tokio::sync::Semaphore::new(
                config
                    .max_resident_starts
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
        });
        let (supervisor, _) = Actor::spawn(None, Supervisor { ctx: ctx.clone() }, ())
            .await
            .map_err(|e| Error::Actor(e.to_string()))?;
        router.set_supervisor(supervisor.clone());
        // Each background loop is a service with `run(self, shutdown)`.
        let shutdown = CancellationToken::new();
        let launcher = Launcher {
            ctx: ctx.clone(),
            supervisor: supervisor.clone(),
            shutdown: shutdown.clone(),
        };
        let events = tokio::spawn(
            crate::events::EventConsumers {
                store: store.clone(),
                launcher: launcher.clone(),
                config: config.clone(),
                bus: bus.clone(),
            }
            .run(shutdown.clone()),
        );
        let workers = tokio::spawn(
            crate::workers::ChannelWorkers {
                store: store.clone(),
                router: Some(router.clone()),
                bus: bus.clone(),
                providers: crate::providers::Providers::new(
                    &config,
                    bus.clone(),
                    channels.clone(),
                    shutdown.clone(),
                ),
                channels: config.worker_channels.clone(),
                stats: stats.clone(),
                per_channel: config.max_in_flight_actions,
            }
            .run(shutdown.clone()),
        );
        let schedules = tokio::spawn(
            crate::schedules::ScheduleRunner {
                store: store.clone(),
                launcher: launcher.clone(),
                config: config.clone(),
            }
            .run(shutdown.clone()),
        );
        let segments = tokio::spawn(
            crate::segments::SegmentRunner {
                store: store.clone(),
                launcher: launcher.clone(),
                config: config.clone(),
                opened: std::sync::Mutex::new(std::collections::HashSet::new()),
            }
            .run(shutdown.clone()),
        );
        let rollup = tokio::spawn(
            crate::analytics::RollupJob {
                store: store.clone(),
                every: config.analytics_rollup,
            }
            .run(shutdown.clone()),
        );
        let sweeper = tokio::spawn(
            crate::retention::Sweeper {
                store: store.clone(),
                every: config.retention_sweep,
            }
            .run(shutdown.clone()),
        );
        let timers = tokio::spawn(
            crate::timers::TimerService {
                store: store.clone(),
                config: config.clone(),
                wake: ctx.timer_wake.clone(),
                router: router.clone(),
                stats: stats.clone(),
            }
            .run(shutdown.clone()),
        );
        let outbox = tokio::spawn(
            crate::outbox::OutboxRelay {
                store: store.clone(),
                config: config.clone(),
                wake: ctx.outbox_wake.clone(),
                handed,
                router: router.clone(),
                stats: stats.clone(),
                traces: ctx.traces.clone(),
                providers: crate::providers::Providers::new(
                    &config,
                    bus.clone(),
                    channels.clone(),
                    shutdown.clone(),
                ),
                gate: ctx.gate.clone(),
            }
            .run(shutdown.clone()),
        );
        let recovery = tokio::spawn(
            crate::recovery::Recovery {
                store: store.clone(),
                router: router.clone(),
                config: config.clone(),
            }
            .run(shutdown.clone()),
        );
        let listener = tokio::spawn(
            crate::finished::Listener {
                cluster: cluster.clone(),
                finished,
            }
            .run(shutdown.clone()),
        );
        let drain = Arc::new(Notify::new());
        let draining = Arc::new(AtomicBool::new(false));
        // The heartbeat outlives the other loops at shutdown: a node that
        // still finishes its sends must not look dead (the others would send
        // them again).
        let beat_shutdown = CancellationToken::new();
        let heartbeat = tokio::spawn(
            crate::membership::Heartbeat {
                router: router.clone(),
                beat: crate::membership::Beat {
                    address: config.advertise.clone(),
                    interval: config.heartbeat_interval,
                    started_ms: Utc::now().timestamp_millis().max(0) as u64,
                    drain: drain.clone(),
                    draining: draining.clone(),
                },
            }
            .run(beat_shutdown.clone()),
        );
        let renewal = tokio::spawn(
            crate::membership::LeaseRenewal {
                router: router.clone(),
                stats: stats.clone(),
            }
            .run(shutdown.clone()),
        );
        // An operator's drain request (seen by the heartbeat) drains here.
        let drainer = {
            let (drain, draining, router, supervisor) = (
                drain.clone(),
                draining.clone(),
                router.clone(),
                supervisor.clone(),
            );
            tokio::spawn(async move {
                drain.notified().await;
                draining.store(true, Ordering::Relaxed);
                drain_node(&router, &supervisor).await;
            })
        };
        info!(node = %config.node_id, shared = cluster.is_shared(), "engine started");
        Ok(Engine {
            ctx,
            launcher,
            supervisor,
            shutdown,
            draining,
            tasks: std::sync::Mutex::new(vec![
                timers, outbox, recovery, renewal, listener, schedules, segments, events, workers,
                rollup, sweeper,
            ]),
            announcer: std::sync::Mutex::new(announcer),
            announcer_stop,
            channels,
            audience: crate::audience::Audience::new(config.audience.clone()),
            beat: std::sync::Mutex::new(Some(heartbeat)),
            beat_shutdown,
            _channel_tasks: vec![
                start_task,
                activate_task,
                commit_task,
                release_task,
                lease_task,
                drainer,
            ],
        })
    }

    /// How far event trigger `trigger`'s consumer group is behind on
    /// `topic`, per partition: `None` on the in-process queue.
    pub async fn trigger_lag(
        &self,
        trigger: &str,
        topic: &str,
    ) -> Result<Option<Vec<crate::bus::PartitionLag>>, crate::bus::LagError> {
        let group = crate::events::group_of(trigger);
        self.ctx
            .bus
            .lag(&group, topic, std::time::Duration::from_secs(5))
            .await
    }

    /// Whether Kafka answers (readiness): `None` on the in-process queue.
    pub async fn kafka_ready(&self) -> Option<Result<(), String>> {
        let bus = &self.ctx.bus;
        if !bus.is_kafka() {
            return None;
        }
        Some(bus.ping(std::time::Duration::from_secs(2)).await)
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.ctx.store
    }

    /// Live counters.
    pub fn stats(&self) -> &Stats {
        &self.ctx.stats
    }

    /// The channels' providers (their metrics, and checking a workflow's
    /// channel actions against them).
    pub fn channels(&self) -> &crate::channels::Channels {
        &self.channels
    }

    /// Unsubscribe links (signing and reading them).
    pub fn audience(&self) -> &crate::audience::Audience {
        &self.audience
    }

    /// Creates the workflow (by its `key`) if it does not exist and publishes
    /// the document as its next version. Returns `(workflow id, version)`.
    pub async fn deploy(&self, workflow: &Workflow) -> Result<(String, i32), Error> {
        let store = &self.ctx.store;
        let ns = &self.ctx.config.namespace;
        let pins = check(
            workflow,
            &crate::registry::namespace_registry(&**store, ns).await?,
        )?;
        let key = workflow
            .key
            .clone()
            .ok_or_else(|| Error::Validation("key: a deployed workflow needs a key".into()))?;
        let now = Utc::now();
        let record = match store.get_workflow(ns, &key).await? {
            Some(r) => r,
            None => {
                let draft =
                    serde_json::to_value(workflow).map_err(|e| Error::Validation(e.to_string()))?;
                match store
                    .create_workflow(NewWorkflow {
                        id: ids::new_workflow_id(),
                        namespace: ns.clone(),
                        key: key.clone(),
                        name: workflow.name.clone(),
                        draft,
                        now,
                    })
                    .await
                {
                    Ok(r) => r,
                    Err(sojourn_persistence::Error::Conflict { .. }) => store
                        .get_workflow(ns, &key)
                        .await?
                        .ok_or_else(|| Error::WorkflowNotFound(key.clone()))?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        // Deploying the same document again publishes nothing new.
        let (v, new) = store
            .publish_if_changed(&record.id, workflow, &pins, now)
            .await?;
        if new {
            self.ctx.workflows.forget_keys();
        }
        Ok((record.id, v.version))
    }

    /// Creates an execution and starts it. Until its first transition
    /// commits it stays `pending` in the store, which is how any node's
    /// recovery starts it if this node dies first.
    pub async fn start_execution(&self, req: StartRequest) -> Result<Started, Error> {
        self.launcher.start_execution(req).await
    }

    /// Delivers an event to every execution subscribed to it with this key
    /// (waiting nodes and exit criteria), sleeping ones included: each gets
    /// it durably in its inbox and is activated. Returns how many.
    pub async fn send_event(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        payload: Value,
    ) -> Result<usize, Error> {
        self.launcher
            .send_event(namespace, name, key, payload)
            .await
    }

    /// Sends an input (pause, resume, cancel, retry, a direct event) to one
    /// execution, durably.
    pub async fn send_input(&self, id: &ExecutionId, input: Input) -> Result<(), Error> {
        let inbox = self.ctx.store.enqueue_input(id, &input, Utc::now()).await?;
        let item = (
            id.clone(),
            Some(Delivery {
                input,
                fired_timer: None,
                inbox_id: Some(inbox),
            }),
        );
        self.ctx.router.route(vec![item]).await;
        Ok(())
    }

    /// Inputs another node forwarded to this one (it holds their leases, or
    /// takes them now).
    pub async fn accept_forwarded(&self, items: Vec<Forwarded>) {
        self.ctx.router.accept(items).await;
    }

    /// The secret nodes present to each other's internal endpoint (cached
    /// a few seconds; `fresh` reads it again).
    pub async fn cluster_secret(&self, fresh: bool) -> Result<String, Error> {
        Ok(self.ctx.router.secret(fresh).await?)
    }

    /// The live nodes of the cluster.
    pub async fn members(&self) -> Result<Vec<NodeInfo>, Error> {
        let (live, _) = self.ctx.router.cluster.members().await?;
        Ok(live)
    }

    /// Asks a node (this one or another) to drain.
    pub async fn request_drain(&self, node: &str) -> Result<(), Error> {
        Ok(self.ctx.router.cluster.request_drain(node).await?)
    }

    /// Whether the cluster store (Redis) answers.
    pub async fn cluster_ready(&self) -> Result<(), Error> {
        Ok(self.ctx.router.cluster.ping().await?)
    }

    /// Whether the node shares a cluster (Redis) with others.
    pub fn is_clustered(&self) -> bool {
        self.ctx.router.cluster.is_shared()
    }

    /// Whether this node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub async fn execution(&self, id: &ExecutionId) -> Result<Option<ExecutionRecord>, Error> {
        Ok(self.ctx.store.load_execution(id).await?)
    }

    /// Waits until the execution has finished (completed, failed or
    /// cancelled) or `timeout` (at most [`MAX_WAIT`]) has passed, and
    /// returns it as it is then; `None` if it does not exist. Woken by the
    /// finish itself, on this node or (in a cluster) another: no polling.
    /// When the node stops, it answers at once.
    pub async fn wait_finished(
        &self,
        id: &ExecutionId,
        timeout: std::time::Duration,
    ) -> Result<Option<ExecutionRecord>, Error> {
        if timeout.is_zero() {
            return Ok(self.ctx.store.load_execution(id).await?);
        }
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        let finished = &self.ctx.finished;
        loop {
            // Registered before the read: a finish in between still wakes it.
            let mut waiter = finished.register(id);
            let record = self.ctx.store.load_execution(id).await?;
            let done = record.as_ref().is_none_or(|r| r.status.is_terminal());
            if done || finished.is_stopping() || tokio::time::Instant::now() >= deadline {
                return Ok(record);
            }
            if tokio::time::timeout_at(deadline, waiter.woken())
                .await
                .is_err()
            {
                // Time is up: as it is now (a finish whose announcement was
                // lost is seen here).
                return Ok(self.ctx.store.load_execution(id).await?);
            }
            // Woken: finished, or asked to read again.
        }
    }

    /// Requests waiting on this node for executions to finish.
    pub fn waiters(&self) -> usize {
        self.ctx.finished.len()
    }

    /// The node holding the execution's live actor, if any (the lease in
    /// Redis; alone, whether this node has it active).
    pub async fn lease_holder(&self, id: &ExecutionId) -> Option<String> {
        let cluster = &self.ctx.router.cluster;
        if cluster.is_shared() {
            return cluster.holder(id).await.ok().flatten();
        }
        let active = ractor::call_t!(
            self.supervisor,
            SupervisorMsg::IsActive,
            SUPERVISOR_QUERY_MS,
            id.clone()
        )
        .unwrap_or(false);
        active.then(|| self.ctx.config.node_id.clone())
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.ctx.config.node_id
    }

    /// Publishes `workflow` as the next version of a stored workflow, after
    /// validating it against `registry` (its namespace's; the custom actions it
    /// uses are pinned at their versions there). Starts by key see the new version at once on this
    /// node. Returns the version and whether it is new: a document equal to the
    /// latest version publishes nothing (atomically, so concurrent publishes
    /// of one document make one version).
    pub async fn publish(
        &self,
        workflow_id: &str,
        workflow: &Workflow,
        registry: &Registry,
    ) -> Result<(sojourn_persistence::WorkflowVersion, bool), Error> {
        let pins = check(workflow, registry)?;
        let (v, new) = self
            .ctx
            .store
            .publish_if_changed(workflow_id, workflow, &pins, Utc::now())
            .await?;
        if new {
            self.ctx.workflows.forget_keys();
        }
        Ok((v, new))
    }

    /// What a namespace's new versions are validated against: the built-in
    /// actions and its own, less what it disabled.
    pub async fn registry(&self, namespace: &str) -> Result<Registry, Error> {
        crate::registry::namespace_registry(&*self.ctx.store, namespace).await
    }

    /// Reads the disabled actions again now (after a change through this
    /// node; other nodes see it within [`crate::registry::GATE_REFRESH`]).
    pub async fn registry_changed(&self) {
        self.ctx.gate.refresh(&*self.ctx.store).await;
    }

    /// Forgets cached workflow lookups (after an archive through this node).
    pub fn forget_workflow_keys(&self) {
        self.ctx.workflows.forget_keys();
    }

    /// Whether the engine is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// How many execution actors are live on this node.
    pub async fn active_actors(&self) -> usize {
        ractor::call_t!(self.supervisor, SupervisorMsg::Count, SUPERVISOR_QUERY_MS).unwrap_or(0)
    }

    /// Graceful shutdown: stop taking work, let in-flight transitions
    /// commit, passivate every actor, stop the services.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        // Starts waiting for a place give up now.
        self.ctx.admission.close();
        // Requests waiting for executions answer now, with what there is.
        self.ctx.finished.stop();
        self.ctx.router.closed.store(true, Ordering::Relaxed);
        self.ctx.timer_wake.hint(Utc::now());
        self.ctx.outbox_wake.notify_one();
        if let Err(e) = ractor::call_t!(self.supervisor, SupervisorMsg::Drain, SUPERVISOR_DRAIN_MS)
        {
            // Actors still running past the drain are stopped now: each
            // stop still reaches the supervisor, which records the results
            // left waiting for it.
            warn!(error = %e, "draining the supervisor failed or timed out; stopping its actors");
            self.supervisor
                .stop_children_and_wait(None, Some(CHILDREN_AT_STOP))
                .await;
        }
        // The supervisor handles what is already in its mailbox (an action
        // result handed over just before the node closed is recorded, not
        // dropped) and refuses the rest: whoever is refused records inline.
        if let Err(e) = self.supervisor.drain_and_wait(Some(CHILDREN_AT_STOP)).await {
            warn!(error = %e, "the supervisor did not stop in time; stopping it");
            self.supervisor.stop(None);
        }
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for task in tasks {
            let _ = task.await;
        }
        // Results the supervisor handed to be recorded in the background are
        // recorded before the claims go.
        self.ctx.router.records.close();
        if tokio::time::timeout(RECORDS_AT_STOP, self.ctx.router.records.wait())
            .await
            .is_err()
        {
            warn!("recording action results outlasted the stop; they are sent again");
        }
        // The relay has stopped (it records what it finishes inline once the
        // node is closed): results that no actor applied before it stopped
        // become rows (an inbox input each) that the next activation applies.
        let left = self.ctx.unapplied.take_all();
        if !left.is_empty()
            && let Err(e) = crate::outbox::record_results(&*self.ctx.store, &left).await
        {
            warn!(error = %e, results = left.len(), "recording action results at shutdown failed; they are sent again");
        }
        // The actors are stopped: announce their last finishes, briefly.
        self.announcer_stop.cancel();
        let announcer = self.announcer.lock().ok().and_then(|mut a| a.take());
        if let Some(announcer) = announcer {
            let _ = tokio::time::timeout(ANNOUNCE_AT_STOP, announcer).await;
        }
        // Give the leases back, and leave the cluster at once.
        self.ctx.router.release_all(self.ctx.router.held.clear());
        self.ctx.router.flush_releases().await;
        self.beat_shutdown.cancel();
        let beat = self.beat.lock().ok().and_then(|mut b| b.take());
        if let Some(beat) = beat {
            let _ = beat.await;
        }
        let _ = self.ctx.router.cluster.leave().await;
        // Hand back timers and actions claimed but not done.
        if let Err(e) = self
            .ctx
            .store
            .release_claims(&self.ctx.config.node_id)
            .await
        {
            warn!(error = %e, "releasing claims failed; they will expire");
        }
        info!("engine stopped");
    }
}

/// The longest [`Engine::wait_finished`] waits: the bound of the API's
/// `?wait=` (a request holds a connection meanwhile, and proxies commonly
/// cut idle requests at about a minute).
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long recording the last action results may hold up a stop (their
/// retries back off for about 6 s).
const RECORDS_AT_STOP: std::time::Duration = std::time::Duration::from_secs(10);

/// How long stopping the actors left after a drain, and then the supervisor
/// itself, may each hold up a stop.
const CHILDREN_AT_STOP: std::time::Duration = std::time::Duration::from_secs(10);

/// How long announcing the last finished executions may hold up a stop.
const ANNOUNCE_AT_STOP: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a question to the supervisor (is an execution active here, how
/// many actors) may wait behind its mailbox: an API read never hangs on a
/// busy supervisor; past it the answer is "not here" / 0.
const SUPERVISOR_QUERY_MS: u64 = 2_000;

/// How long passivating every actor may take at shutdown or on a drain
/// before the node stops anyway (their snapshots are committed; a
/// transition still in flight is simply replayed from its inputs).
const SUPERVISOR_DRAIN_MS: u64 = 60_000;

/// Starts executions on this node: the engine's `start_execution`, and the
/// trigger runners' (which run before the engine is handed out).
pub(crate) struct Launcher<S: Store> {
    ctx: Arc<Context<S>>,
    supervisor: ActorRef<SupervisorMsg>,
    shutdown: CancellationToken,
}

impl<S: Store> Clone for Launcher<S> {
    fn clone(&self) -> Self {
        Launcher {
            ctx: self.ctx.clone(),
            supervisor: self.supervisor.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

impl<S: Store> Launcher<S> {
    /// The store (profile updates from event triggers).
    pub(crate) fn store(&self) -> &S {
        &self.ctx.store
    }

    /// Delivers an event to every execution subscribed to it with this key
    /// (waiting nodes and exit criteria), sleeping ones included: each gets
    /// it durably in its inbox and is activated. Returns how many.
    pub async fn send_event(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        payload: Value,
    ) -> Result<usize, Error> {
        let store = &self.ctx.store;
        // The event's time: what a conversion credits was done before it.
        let arrived = Utc::now();
        let ids = store.subscribers(namespace, name, key).await?;
        let input = Input::Event(EventInput {
            name: name.into(),
            key: Some(key.into()),
            payload,
        });
        let mut items = Vec::with_capacity(ids.len());
        for id in &ids {
            let inbox = store.enqueue_input(id, &input, Utc::now()).await?;
            items.push((
                id.clone(),
                Some(Delivery {
                    input: input.clone(),
                    fired_timer: None,
                    inbox_id: Some(inbox),
                }),
            ));
        }
        self.ctx.router.route(items).await;
        // The executions whose goal this is convert (finished ones too).
        // Analytics never hold an event back: a failure is logged.
        if let Err(e) = store
            .record_conversions(namespace, name, key, arrived)
            .await
        {
            warn!(error = %e, event = name, "conversions of an event were not recorded");
        }
        Ok(ids.len())
    }

    /// A place for one more started execution in memory: at once when
    /// there is one, else the first to free up within `start_wait`.
    async fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        use tokio::sync::TryAcquireError;
        let slots = &self.ctx.admission;
        match slots.clone().try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(TryAcquireError::Closed) => return Err(Error::ShuttingDown),
            Err(TryAcquireError::NoPermits) => {}
        }
        let wait = self.ctx.config.start_wait;
        match tokio::time::timeout(wait, slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => {
                Stats::add(&self.ctx.stats.starts_overloaded, 1);
                Err(Error::Overloaded {
                    limit: self.ctx.config.max_resident_starts,
                })
            }
        }
    }

    /// Creates an execution and starts it. Until its first transition
    /// commits it stays `pending` in the store, which is how any node's
    /// recovery starts it if this node dies first.
    pub async fn start_execution(&self, req: StartRequest) -> Result<Started, Error> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let store = &self.ctx.store;
        let ns = req.namespace.as_ref().unwrap_or(&self.ctx.config.namespace);
        let (workflow_id, latest) = self
            .ctx
            .workflows
            .resolve(&**store, ns, &req.workflow)
            .await?;
        let version = req.version.unwrap_or(latest);
        let wf = match self
            .ctx
            .workflows
            .get(&**store, &workflow_id, version)
            .await
        {
            Err(Error::WorkflowNotFound(_)) if req.version.is_some() => {
                return Err(Error::VersionNotFound { version });
            }
            other => other?,
        };
        let mut snapshot = wf.new_execution(
            ids::new_execution_id(),
            req.input,
            req.subject,
            req.timezone.as_deref(),
            Utc::now(),
        )?;
        // The recipient's time zone, when the start names none, the workflow
        // fixes none, and it reads local time (one indexed lookup).
        if req.timezone.is_none()
            && wf.zone_from_profile()
            && let Some(subject) = &snapshot.subject
            && let Some(tz) = store
                .get_profile(ns, subject)
                .await?
                .and_then(|p| p.timezone)
                .and_then(|tz| sojourn_runtime::time::parse_timezone(&tz).ok())
        {
            snapshot.timezone = tz;
        }
        // A bad request is refused before it waits for a place.
        let admitted = self.admit().await?;
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        // Lease first (then the row, at epoch 1): nobody else can activate
        // it meanwhile. Without the lease (Redis down, draining) it is still
        // created, and started by whichever node recovers it.
        let id = snapshot.execution_id.clone();
        let leased = self.ctx.leaser.call(id.clone()).await.unwrap_or(false);
        // Whatever happens below but a new execution, the lease goes back.
        let mut lease_guard = LeaseGuard {
            router: &self.ctx.router,
            id: leased.then(|| id.clone()),
        };
        let preloaded = snapshot.clone();
        let workflow_id: std::sync::Arc<str> = workflow_id.into();
        let created = self
            .ctx
            .starter
            .call(NewExecution {
                namespace: ns.clone(),
                workflow_id: workflow_id.to_string(),
                version,
                idempotency_key: req.idempotency_key,
                max_entries: wf.max_entries_per_subject(),
                snapshot,
            })
            .await
            .map_err(Error::Unavailable)?
            .map_err(Error::Rejected)?;
        if let Created::New(id) = &created {
            // Its spans join the trace of the request that started it.
            self.ctx.traces.remember(id, &tracing::Span::current());
        }
        match created {
            Created::New(id) if !leased => {
                // No lease here (draining, or Redis away): a node that takes
                // work starts it (the router finds one, or retries).
                self.ctx.stats.started_by_workflow.inc(&workflow_id);
                self.ctx.router.route(vec![(id.clone(), None)]).await;
                Ok(Started { id, new: true })
            }
            Created::New(id) => {
                lease_guard.id = None;
                self.ctx.stats.started_by_workflow.inc(&workflow_id);
                if leased {
                    let _ = self.supervisor.cast(SupervisorMsg::Adopt(
                        id.clone(),
                        Box::new(Preloaded {
                            snapshot: preloaded,
                            epoch: LeaseEpoch(1),
                            wf,
                            workflow_id,
                            admitted: Some(admitted),
                        }),
                    ));
                }
                Ok(Started { id, new: true })
            }
            Created::Existing(id) => Ok(Started { id, new: false }),
            Created::LimitReached { limit } => Err(Error::LimitReached { limit }),
        }
    }
}

/// Releases the lease taken for a new execution unless the execution was
/// created (an idempotent repeat, a limit, an error).
struct LeaseGuard<'a, S: Store> {
    router: &'a Router<S>,
    id: Option<ExecutionId>,
}

impl<S: Store> Drop for LeaseGuard<'_, S> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.router.released(&id);
        }
    }
}

/// Drains the node: takes no new leases, passivates every actor (their
/// leases are released as they stop); the node keeps serving its API and
/// forwards inputs to the nodes that hold their executions.
async fn drain_node<S: Store>(router: &Router<S>, supervisor: &ActorRef<SupervisorMsg>) {
    router.closed.store(true, Ordering::Relaxed);
    if let Err(e) = ractor::call_t!(supervisor, SupervisorMsg::Drain, SUPERVISOR_DRAIN_MS) {
        warn!(error = %e, "draining the supervisor failed or timed out");
    }
    // Leases taken as the drain began, with no actor: give them back.
    router.release_all(router.held.clear());
    router.flush_releases().await;
    info!("drained: every execution passivated, leases released");
}

/// Validates a document against a namespace's registry; returns the
/// registry versions it uses.
fn check(workflow: &Workflow, registry: &Registry) -> Result<sojourn_persistence::Pins, Error> {
    CompiledWorkflow::compile(workflow, registry)
        .map(|wf| wf.pins())
        .map_err(|errors| {
            Error::Validation(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
}

/// Marks an execution failed (its actor kept failing): a fenced commit of
/// the runtime's `fail_from_outside` transition.
pub(crate) async fn mark_failed<S: Store>(
    ctx: &Context<S>,
    id: &ExecutionId,
    message: &str,
) -> Result<(), Error> {
    let Some(record) = ctx.store.activate(id).await? else {
        return Ok(());
    };
    if record.snapshot.status.is_terminal() {
        return Ok(());
    }
    let wf = ctx
        .workflows
        .get(&*ctx.store, &record.workflow_id, record.version)
        .await?;
    let transition = wf.fail_from_outside(&record.snapshot, message, Utc::now())?;
    let results = ctx
        .store
        .commit(&[Commit {
            execution_id: id,
            epoch: record.lease_epoch,
            transition: &transition,
            fired_timer: None,
            consumed_input: None,
            claim: None,
            consumed_outbox: None,
        }])
        .await?;
    if results.first() == Some(&CommitResult::Committed) {
        ctx.finished.notify(id);
        Stats::add(&ctx.stats.failed, 1);
        ctx.stats
            .failed_by_workflow
            .inc(&record.workflow_id.as_str().into());
    } else {
        warn!(execution.id = %id, "marking the execution failed was fenced: another activation owns it");
    }
    Ok(())
}

/// Each channel action of a published workflow (its latest version) that
/// this node's providers cannot send: `workflow vN, node: problem`.
async fn unserved_workflows<S: Store>(
    store: &S,
    channels: &crate::channels::Channels,
) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.latest_versions(after.as_deref(), 500).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.workflow_id.clone());
        for v in &page {
            for e in channels.check_workflow(&v.definition) {
                let node = e.node.as_ref().map(|n| n.as_str()).unwrap_or("-");
                problems.push(format!(
                    "{} v{}, node {node}, {}: {}",
                    v.workflow_id, v.version, e.field, e.message
                ));
            }
        }
        if page.len() < 500 {
            break;
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use sojourn_persistence::{SqliteStore, TimerStore};
    use sojourn_runtime::Status;

    use super::*;

    /// An engine on `dir` with one place for started executions, and a
    /// workflow `key` that sleeps `nap` (resident: the node holds the timer).
    async fn one_place(
        dir: &std::path::Path,
        start_wait: Duration,
        key: &str,
        nap: &str,
    ) -> Engine<SqliteStore> {
        let store = SqliteStore::open(&dir.join("t.db")).await.expect("store");
        let config = Config {
            max_resident_starts: 1,
            start_wait,
            ..Config::default()
        };
        let engine = Engine::start(store, config).await.expect("engine");
        let wf = Workflow::from_value(json!({
            "key": key,
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "nap", "type": "delay", "config": {"duration": nap}},
                {"id": "done", "type": "exit"}
            ],
            "edges": [{"from": "start", "to": "nap"}, {"from": "nap", "to": "done"}]
        }))
        .expect("workflow");
        engine.deploy(&wf).await.expect("deploy");
        engine
    }

    /// At `max_resident_starts`, a start waits until a started execution
    /// leaves memory (here: finishes), and one that waits longer than
    /// `start_wait` is refused as overloaded, creating nothing.
    #[tokio::test]
    async fn a_start_past_the_resident_limit_waits_for_a_place_then_is_refused() {
        let dir =
            std::env::temp_dir().join(format!("sojourn-engine-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let engine = one_place(&dir, Duration::from_secs(30), "short", "300ms").await;
        let start = |n: u32| StartRequest {
            workflow: "short".into(),
            input: json!({"n": n}),
            ..StartRequest::default()
        };
        let first = engine.start_execution(start(1)).await.expect("first").id;
        let second = engine.start_execution(start(2)).await.expect("second").id;
        // The second got its place only once the first had left memory.
        let first_now = engine
            .execution(&first)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(first_now.snapshot.status, Status::Completed);
        assert_ne!(first, second);
        engine.shutdown().await;

        // Nothing leaves within `start_wait`: refused, nothing created.
        let engine = one_place(&dir, Duration::from_millis(200), "long", "1s").await;
        let held = engine
            .start_execution(StartRequest {
                workflow: "long".into(),
                ..start(3)
            })
            .await
            .expect("third");
        let refused = engine
            .start_execution(StartRequest {
                workflow: "long".into(),
                idempotency_key: Some("refused".into()),
                ..start(4)
            })
            .await
            .expect_err("over the limit");
        assert!(
            matches!(refused, Error::Overloaded { limit: 1 }),
            "{refused:?}"
        );
        assert_eq!(engine.stats().starts_overloaded.get(), 1);
        // Once the held one finishes, the same request goes through, as new.
        for _ in 0..500 {
            let e = engine
                .execution(&held.id)
                .await
                .expect("read")
                .expect("exists");
            if e.snapshot.status == Status::Completed && engine.active_actors().await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let later = engine
            .start_execution(StartRequest {
                workflow: "long".into(),
                idempotency_key: Some("refused".into()),
                ..start(4)
            })
            .await
            .expect("after the held one finished");
        assert!(later.new, "the refused start created nothing");
        engine.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An input already in an actor's mailbox when its lease is reported
    /// lost is applied (or handed on), never dropped with the mailbox: a
    /// timer firing has no row to be found by again, and would wait until
    /// its claim expired (here an hour: the timer is not due before).
    #[tokio::test]
    async fn an_input_in_the_mailbox_of_an_actor_whose_lease_is_lost_is_not_dropped() {
        let dir =
            std::env::temp_dir().join(format!("sojourn-engine-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let store = SqliteStore::open(&dir.join("t.db")).await.expect("store");
        let engine = Engine::start(store, Config::default())
            .await
            .expect("engine");
        let wf = Workflow::from_value(json!({
            "key": "nap",
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "nap", "type": "delay", "config": {"duration": "1h"}},
                {"id": "done", "type": "exit"}
            ],
            "edges": [{"from": "start", "to": "nap"}, {"from": "nap", "to": "done"}]
        }))
        .expect("workflow");
        engine.deploy(&wf).await.expect("deploy");
        let id = engine
            .start_execution(StartRequest {
                workflow: "nap".into(),
                input: json!({}),
                ..StartRequest::default()
            })
            .await
            .expect("start")
            .id;
        // Asleep on its delay, its actor gone.
        for _ in 0..500 {
            let waiting = engine.execution(&id).await.expect("read").expect("exists");
            if waiting.snapshot.status == Status::Waiting && engine.active_actors().await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(engine.active_actors().await, 0, "the sleeper passivated");
        // Its timer, claimed as the timer service would (an hour early).
        let now = Utc::now();
        let timers = engine
            .store()
            .claim_due_timers(
                engine.node_id(),
                now + chrono::Duration::hours(2),
                now,
                now + chrono::Duration::hours(2),
                10,
            )
            .await
            .expect("claim");
        let timer = timers
            .into_iter()
            .find(|t| t.execution_id == id)
            .expect("its timer")
            .timer_id;
        // Activated (and idle), then given the firing and reported lost at
        // once: both reach its mailbox before it runs again.
        let router = &engine.ctx.router;
        router.route(vec![(id.clone(), None)]).await;
        while engine.active_actors().await == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let firing = Delivery {
            input: Input::TimerFired {
                timer: timer.clone(),
            },
            fired_timer: Some(timer),
            inbox_id: None,
        };
        engine
            .supervisor
            .cast(SupervisorMsg::Deliver(id.clone(), firing))
            .expect("deliver");
        router.held.remove(&id);
        router.lease_lost(vec![id.clone()]);
        let mut status = Status::Waiting;
        for _ in 0..500 {
            status = engine
                .execution(&id)
                .await
                .expect("read")
                .expect("exists")
                .snapshot
                .status;
            if status.is_terminal() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(status, Status::Completed, "the firing was applied");
        engine.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
