//! The engine: wires the store, the committer, the supervisor, the timer
//! service and the outbox relay, and offers what a node does — deploy a
//! workflow, start executions, deliver events, drain and stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;
use ractor::{Actor, ActorRef};
use serde_json::Value;
use sojourn_persistence::{
    Commit, CommitResult, Created, ExecutionRecord, LeaseEpoch, NewExecution, NewWorkflow, Store,
    ids,
};
use sojourn_runtime::{CompiledWorkflow, EventInput, ExecutionId, Input, Registry, Workflow};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::Error;
use crate::activator::Activator;
use crate::committer::Committer;
use crate::config::Config;
use crate::execution::{Delivery, Preloaded};
use crate::starter::Starter;
use crate::stats::Stats;
use crate::supervisor::{Supervisor, SupervisorMsg};
use crate::timers::TimerWake;
use crate::workflows::WorkflowCache;

/// What every actor of the node shares.
pub(crate) struct Context<S: Store> {
    pub(crate) store: Arc<S>,
    pub(crate) committer: Committer,
    pub(crate) starter: Starter,
    pub(crate) activator: Activator,
    pub(crate) workflows: WorkflowCache,
    pub(crate) stats: Arc<Stats>,
    pub(crate) timer_wake: Arc<TimerWake>,
    pub(crate) outbox_wake: Arc<Notify>,
    pub(crate) config: Config,
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
    supervisor: ActorRef<SupervisorMsg>,
    stop: Arc<AtomicBool>,
    /// Wakes the background loops when `stop` is set.
    stopped: Arc<Notify>,
    /// Background loops that stop when `stop` is set (taken by shutdown).
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
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
    /// Starts the node's services. Work left by an earlier run (due timers,
    /// unsent actions, undelivered inputs) is picked up at once.
    pub async fn start(store: S, config: Config) -> Result<Engine<S>, Error> {
        // Claims under this node's name belong to an earlier run of it.
        store.release_claims(&config.node_id).await?;
        let store = Arc::new(store);
        let stats = Arc::new(Stats::default());
        let (committer, commit_task) =
            crate::committer::spawn(store.clone(), stats.clone(), config.max_commit_batch);
        let (starter, start_task) = crate::starter::spawn(store.clone(), config.max_commit_batch);
        let (activator, activate_task) =
            crate::activator::spawn(store.clone(), config.max_commit_batch);
        let ctx = Arc::new(Context {
            store: store.clone(),
            committer,
            starter,
            activator,
            workflows: WorkflowCache::default(),
            stats: stats.clone(),
            timer_wake: Arc::new(TimerWake::new(&config)),
            outbox_wake: Arc::new(Notify::new()),
            config: config.clone(),
        });
        let (supervisor, _) = Actor::spawn(None, Supervisor { ctx: ctx.clone() }, ())
            .await
            .map_err(|e| Error::Actor(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let timers = tokio::spawn(crate::timers::run(
            store.clone(),
            config.clone(),
            ctx.timer_wake.clone(),
            supervisor.clone(),
            stats.clone(),
            stop.clone(),
        ));
        let outbox = tokio::spawn(crate::outbox::run(
            store.clone(),
            config.clone(),
            ctx.outbox_wake.clone(),
            supervisor.clone(),
            stats.clone(),
            stop.clone(),
        ));
        let stopped = Arc::new(Notify::new());
        let recovery = tokio::spawn(recover(
            store.clone(),
            supervisor.clone(),
            config.clone(),
            stop.clone(),
            stopped.clone(),
        ));
        info!(node = %config.node_id, "engine started");
        Ok(Engine {
            ctx,
            supervisor,
            stop,
            stopped,
            tasks: std::sync::Mutex::new(vec![timers, outbox, recovery]),
            _channel_tasks: vec![start_task, activate_task, commit_task],
        })
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.ctx.store
    }

    /// Live counters.
    pub fn stats(&self) -> &Stats {
        &self.ctx.stats
    }

    /// Creates the workflow (by its `key`) if it does not exist and publishes
    /// the document as its next version. Returns `(workflow id, version)`.
    pub async fn deploy(&self, workflow: &Workflow) -> Result<(String, i32), Error> {
        check(workflow)?;
        let key = workflow
            .key
            .clone()
            .ok_or_else(|| Error::Validation("key: a deployed workflow needs a key".into()))?;
        let store = &self.ctx.store;
        let ns = &self.ctx.config.namespace;
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
        if let Some(latest) = store.get_version(&record.id, None).await?
            && latest.definition == *workflow
        {
            return Ok((record.id, latest.version));
        }
        let v = store.publish(&record.id, workflow, now).await?;
        self.ctx.workflows.forget_keys();
        Ok((record.id, v.version))
    }

    /// Creates an execution and starts it. Until its first transition
    /// commits it stays `pending` in the store, which is how any node's
    /// recovery starts it if this node dies first.
    pub async fn start_execution(&self, req: StartRequest) -> Result<Started, Error> {
        if self.stop.load(Ordering::Relaxed) {
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
        let snapshot = wf.new_execution(
            ids::new_execution_id(),
            req.input,
            req.subject,
            req.timezone.as_deref(),
            Utc::now(),
        )?;
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
            .map_err(Error::Actor)?
            .map_err(Error::Rejected)?;
        match created {
            Created::New(id) => {
                self.ctx.stats.started_by_workflow.inc(&workflow_id);
                let _ = self.supervisor.cast(SupervisorMsg::Adopt(
                    id.clone(),
                    Box::new(Preloaded {
                        snapshot: preloaded,
                        epoch: LeaseEpoch(1),
                        wf,
                        workflow_id,
                    }),
                ));
                Ok(Started { id, new: true })
            }
            Created::Existing(id) => Ok(Started { id, new: false }),
            Created::LimitReached { limit } => Err(Error::LimitReached { limit }),
        }
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
        let ids = store.subscribers(namespace, name, key).await?;
        let input = Input::Event(EventInput {
            name: name.into(),
            key: Some(key.into()),
            payload,
        });
        for id in &ids {
            let inbox = store.enqueue_input(id, &input, Utc::now()).await?;
            let _ = self.supervisor.cast(SupervisorMsg::Deliver(
                id.clone(),
                Delivery {
                    input: input.clone(),
                    fired_timer: None,
                    inbox_id: Some(inbox),
                },
            ));
        }
        Ok(ids.len())
    }

    /// Sends an input (pause, resume, cancel, retry, a direct event) to one
    /// execution, durably.
    pub async fn send_input(&self, id: &ExecutionId, input: Input) -> Result<(), Error> {
        let inbox = self.ctx.store.enqueue_input(id, &input, Utc::now()).await?;
        let _ = self.supervisor.cast(SupervisorMsg::Deliver(
            id.clone(),
            Delivery {
                input,
                fired_timer: None,
                inbox_id: Some(inbox),
            },
        ));
        Ok(())
    }

    pub async fn execution(&self, id: &ExecutionId) -> Result<Option<ExecutionRecord>, Error> {
        Ok(self.ctx.store.load_execution(id).await?)
    }

    /// The node holding the execution's live actor, if this node does.
    /// (With one node that is the whole answer; the cluster layer asks the
    /// lease in Redis.)
    pub async fn lease_holder(&self, id: &ExecutionId) -> Option<&str> {
        let active =
            ractor::call!(self.supervisor, SupervisorMsg::IsActive, id.clone()).unwrap_or(false);
        active.then_some(self.ctx.config.node_id.as_str())
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.ctx.config.node_id
    }

    /// Publishes `workflow` as the next version of a stored workflow, after
    /// validating it. Starts by key see the new version at once on this
    /// node.
    pub async fn publish(
        &self,
        workflow_id: &str,
        workflow: &Workflow,
    ) -> Result<sojourn_persistence::WorkflowVersion, Error> {
        check(workflow)?;
        let v = self
            .ctx
            .store
            .publish(workflow_id, workflow, Utc::now())
            .await?;
        self.ctx.workflows.forget_keys();
        Ok(v)
    }

    /// Forgets cached workflow lookups (after an archive through this node).
    pub fn forget_workflow_keys(&self) {
        self.ctx.workflows.forget_keys();
    }

    /// Whether the engine is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// How many execution actors are live on this node.
    pub async fn active_actors(&self) -> usize {
        ractor::call!(self.supervisor, SupervisorMsg::Count).unwrap_or(0)
    }

    /// Graceful shutdown: stop taking work, let in-flight transitions
    /// commit, passivate every actor, stop the services.
    pub async fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stopped.notify_one();
        self.ctx.timer_wake.hint(Utc::now());
        self.ctx.outbox_wake.notify_one();
        if let Err(e) = ractor::call!(self.supervisor, SupervisorMsg::Drain) {
            warn!(error = %e, "draining the supervisor failed");
        }
        self.supervisor.stop(None);
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for task in tasks {
            let _ = task.await;
        }
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

/// Validates a document against the built-in registry.
fn check(workflow: &Workflow) -> Result<(), Error> {
    CompiledWorkflow::compile(workflow, &Registry::builtin())
        .map(drop)
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

/// Periodically activates executions whose inbox holds inputs (after a
/// crash, or inputs that raced a passivation).
async fn recover<S: Store>(
    store: Arc<S>,
    supervisor: ActorRef<SupervisorMsg>,
    config: Config,
    stop: Arc<AtomicBool>,
    stopped: Arc<Notify>,
) {
    while !stop.load(Ordering::Relaxed) {
        match store.executions_with_inputs(10_000).await {
            Ok(ids) => {
                for id in ids {
                    let _ = supervisor.cast(SupervisorMsg::Activate(id));
                }
            }
            Err(e) => warn!(error = %e, "looking for executions with inputs failed"),
        }
        // Created but never started (their creator died before the start
        // committed). Young ones are left to their creator.
        let before = Utc::now() - chrono::Duration::seconds(5);
        match store.pending_executions(before, 10_000).await {
            Ok(ids) => {
                for id in ids {
                    let _ = supervisor.cast(SupervisorMsg::Activate(id));
                }
            }
            Err(e) => warn!(error = %e, "looking for pending executions failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(config.recovery_poll) => {}
            _ = stopped.notified() => {}
        }
    }
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
        }])
        .await?;
    if results.first() == Some(&CommitResult::Committed) {
        Stats::add(&ctx.stats.failed, 1);
        ctx.stats.failed_by_workflow.inc(&record.workflow_id);
    } else {
        warn!(execution.id = %id, "marking the execution failed was fenced: another activation owns it");
    }
    Ok(())
}
