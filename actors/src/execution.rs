//! The execution actor: one per active execution.
//!
//! Its loop: an input arrives → `step` (pure) → commit the transition
//! (group commit, fenced by the lease epoch) → only then act on the effects
//! (wake the outbox relay for dispatches, the timer service for timers).
//! It never awaits a provider. When it waits with nothing in flight (a
//! delay, an event, a pause, the end) it asks the supervisor to passivate
//! it; a fenced write stops it at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sojourn_persistence::{CommitResult, LeaseEpoch, OutboxMessage, Store};
use sojourn_runtime::{CompiledWorkflow, Effect, ExecutionId, Input, Snapshot, Status, TimerId};
use tracing::{Instrument, debug, info_span, warn};

use crate::engine::Context;
use crate::stats::Stats;
use crate::supervisor::SupervisorMsg;

/// How long past its timer's due time a resident actor waits for it before
/// passivating.
const RESIDENT_GRACE: Duration = Duration::from_secs(2);

/// An input on its way to an execution, with where it came from (so the
/// commit that applies it can consume its durable row).
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) input: Input,
    pub(crate) fired_timer: Option<TimerId>,
    pub(crate) inbox_id: Option<i64>,
}

/// What the creator of a new execution already knows, so its actor starts
/// without reading it back.
#[derive(Debug)]
pub(crate) struct Preloaded {
    pub(crate) snapshot: Snapshot,
    pub(crate) epoch: LeaseEpoch,
    pub(crate) wf: Arc<CompiledWorkflow>,
    pub(crate) workflow_id: Arc<str>,
    /// Its place among the node's started executions in memory, given back
    /// when the actor stops.
    pub(crate) admitted: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// An action's result straight from this node's sender, with no row of its
/// own yet: the transition that applies it also removes its outbox row. It
/// waits in [`crate::results::Unapplied`] until that commit; if the actor
/// stops first, the supervisor records it the durable way
/// ([`crate::outbox::record_results`]).
#[derive(Debug, Clone)]
pub(crate) struct LocalResult {
    pub(crate) node: sojourn_runtime::NodeId,
    pub(crate) attempt: u32,
    pub(crate) outcome: sojourn_runtime::ActionOutcome,
    /// The outbox row's idempotency key.
    pub(crate) key: String,
}

impl LocalResult {
    /// As an input (from its inbox row `inbox_id` once recorded), and its
    /// outbox row's key.
    pub(crate) fn into_delivery(self, inbox_id: Option<i64>) -> (Delivery, String) {
        let d = Delivery {
            input: Input::ActionResult {
                node: self.node,
                attempt: self.attempt,
                outcome: self.outcome,
            },
            fired_timer: None,
            inbox_id,
        };
        (d, self.key)
    }
}

/// The execution actor's messages.
#[derive(Debug)]
pub(crate) enum ExecutionMsg {
    Deliver(Delivery),
    /// Action results wait for it in [`crate::results::Unapplied`].
    Results,
    /// Read the inbox (inputs recorded while the message may have been lost).
    DrainInbox,
    /// No input since `seq`: passivate if still so.
    IdleCheck(u64),
    /// Passivate now (sent by the supervisor, after any earlier input).
    Stop,
}

pub(crate) struct ExecutionActor<S: Store> {
    pub(crate) ctx: Arc<Context<S>>,
}

pub(crate) struct ExecutionState {
    id: ExecutionId,
    snapshot: Snapshot,
    epoch: LeaseEpoch,
    wf: Arc<CompiledWorkflow>,
    /// For metrics by workflow.
    workflow_id: Arc<str>,
    applied_inbox: HashSet<i64>,
    supervisor: ActorRef<SupervisorMsg>,
    span: tracing::Span,
    /// Set once the actor asked to passivate; further idle requests are moot.
    asked_to_passivate: bool,
    /// It waits for a timer this node holds that falls due at this instant
    /// (within seconds): it stays resident for it instead of passivating
    /// and coming back from the store a moment later.
    resident_until: Option<chrono::DateTime<Utc>>,
    /// A write was fenced: another node holds the execution. Inputs still
    /// in the mailbox go back to the supervisor (and on to the holder)
    /// until the `Stop` that follows them.
    lost: bool,
    /// The pending idle check: one at a time, cancelled when the actor
    /// stops (its timer task holds the actor's cell: left to run, it kept
    /// every stopped actor's mailboxes in memory for `idle_timeout`).
    idle_check: Option<PendingIdleCheck>,
    /// A started execution's place in memory (`max_resident_starts`),
    /// given back when the actor stops.
    _admitted: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The timer task of an idle check, aborted when dropped (also when the
/// actor fails, which skips `post_stop`).
#[derive(Debug)]
struct PendingIdleCheck {
    seq: u64,
    task: ractor::concurrency::JoinHandle<Result<(), ractor::MessagingErr<ExecutionMsg>>>,
}

impl Drop for PendingIdleCheck {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: Store> Actor for ExecutionActor<S> {
    type Msg = ExecutionMsg;
    type State = ExecutionState;
    type Arguments = (ExecutionId, ActorRef<SupervisorMsg>, Option<Preloaded>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (id, supervisor, preloaded): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let span = info_span!("execution", execution.id = %id);
        let ctx = &self.ctx;
        // A child of the request that started it, or of its last activation
        // here; its actions become children of this activation.
        ctx.traces.adopt(&id, &span);
        ctx.traces.remember(&id, &span);
        Stats::add(&ctx.stats.activations, 1);
        if let Some(p) = preloaded {
            // A new execution: its creator holds epoch 1; start it.
            let _ = myself.cast(ExecutionMsg::Deliver(Delivery {
                input: Input::Start,
                fired_timer: None,
                inbox_id: None,
            }));
            return Ok(ExecutionState {
                id,
                snapshot: p.snapshot,
                epoch: p.epoch,
                wf: p.wf,
                workflow_id: p.workflow_id,
                applied_inbox: HashSet::new(),
                supervisor,
                span,
                asked_to_passivate: false,
                resident_until: None,
                lost: false,
                idle_check: None,
                _admitted: p.admitted,
            });
        }
        Stats::add(&ctx.stats.rehydrations, 1);
        // Boxed, like every database call of this actor: an awaited future
        // lives inside the actor's task for as long as the actor does, so a
        // large one would cost every resident execution its size.
        let (record, inbox) =
            Box::pin(async { ctx.activator.call(id.clone()).await }.instrument(span.clone()))
                .await?
                .ok_or_else(|| format!("execution {id} does not exist"))?;
        let wf = Box::pin(
            ctx.workflows
                .get(&*ctx.store, &record.workflow_id, record.version),
        )
        .await?;
        // Created but never started (its creator died): start it now.
        if record.snapshot.status == Status::Pending {
            let _ = myself.cast(ExecutionMsg::Deliver(Delivery {
                input: Input::Start,
                fired_timer: None,
                inbox_id: None,
            }));
        }
        // Whatever was recorded for it while it slept.
        for item in inbox {
            let _ = myself.cast(ExecutionMsg::Deliver(Delivery {
                input: item.input,
                fired_timer: None,
                inbox_id: Some(item.id),
            }));
        }
        Ok(ExecutionState {
            id,
            snapshot: record.snapshot,
            epoch: record.lease_epoch,
            wf,
            workflow_id: record.workflow_id.into(),
            applied_inbox: HashSet::new(),
            supervisor,
            span,
            asked_to_passivate: false,
            resident_until: None,
            lost: false,
            idle_check: None,
            _admitted: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        async {
            if state.lost {
                match message {
                    ExecutionMsg::Deliver(d) => {
                        let _ = state
                            .supervisor
                            .cast(SupervisorMsg::Deliver(state.id.clone(), d));
                    }
                    ExecutionMsg::DrainInbox => {
                        let _ = state
                            .supervisor
                            .cast(SupervisorMsg::Activate(state.id.clone()));
                    }
                    // Left where they are: the supervisor records them the
                    // durable way once this actor has stopped.
                    ExecutionMsg::Results | ExecutionMsg::IdleCheck(_) => {}
                    ExecutionMsg::Stop => myself.stop(Some("fenced".into())),
                }
                return Ok(());
            }
            match message {
                ExecutionMsg::Deliver(d) => {
                    if !Box::pin(self.apply(&myself, state, d, None)).await? {
                        return Ok(());
                    }
                }
                ExecutionMsg::Results => {
                    // Each stays in the registry until the commit that
                    // applies it (or records it) has succeeded.
                    for r in self.ctx.unapplied.peek(&state.id) {
                        let (d, key) = r.into_delivery(None);
                        if !Box::pin(self.apply(&myself, state, d, Some(key))).await? {
                            return Ok(());
                        }
                    }
                }
                ExecutionMsg::DrainInbox => {
                    for item in Box::pin(self.ctx.store.pending_inputs(&state.id)).await? {
                        let d = Delivery {
                            input: item.input,
                            fired_timer: None,
                            inbox_id: Some(item.id),
                        };
                        if !Box::pin(self.apply(&myself, state, d, None)).await? {
                            return Ok(());
                        }
                    }
                }
                ExecutionMsg::IdleCheck(seq) => {
                    if seq == state.snapshot.seq && !state.asked_to_passivate {
                        debug!("idle: passivating");
                        state.asked_to_passivate = true;
                        let _ = state
                            .supervisor
                            .cast(SupervisorMsg::Idle(state.id.clone(), myself.get_id()));
                    }
                    return Ok(());
                }
                ExecutionMsg::Stop => {
                    Stats::add(&self.ctx.stats.passivations, 1);
                    myself.stop(None);
                    return Ok(());
                }
            }
            self.after_input(&myself, state);
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.idle_check = None;
        if state.snapshot.status.is_terminal() && !state.span.is_disabled() {
            self.ctx.traces.forget(&state.id);
        }
        Ok(())
    }
}

impl<S: Store> ExecutionActor<S> {
    /// Steps, commits and acts. `Ok(false)`: the actor lost its lease and
    /// is stopping.
    async fn apply(
        &self,
        myself: &ActorRef<ExecutionMsg>,
        state: &mut ExecutionState,
        d: Delivery,
        // The outbox row of an action result delivered from memory.
        sent: Option<String>,
    ) -> Result<bool, ActorProcessingErr> {
        if let Some(inbox) = d.inbox_id
            && !state.applied_inbox.insert(inbox)
        {
            return Ok(true);
        }
        // An input that reaches a not-yet-started execution (it overtook the
        // start in the mailbox) is applied after the start, not refused.
        if state.snapshot.status == Status::Pending && !matches!(d.input, Input::Start) {
            let start = Delivery {
                input: Input::Start,
                fired_timer: None,
                inbox_id: None,
            };
            if !Box::pin(self.apply(myself, state, start, None)).await? {
                Self::hand_back(state, d.fired_timer);
                return Ok(false);
            }
        }
        let received = std::time::Instant::now();
        // `in_segment(…)` reads the subject's segments as they are now (one
        // indexed read, only for workflows that ask).
        if state.wf.reads_segments() && state.snapshot.subject.is_some() {
            state.snapshot.segments = Some(std::sync::Arc::new(
                self.ctx
                    .store
                    .segments_of_execution(state.id.as_str())
                    .await?,
            ));
        }
        let now = Utc::now();
        let kind = d.input.kind();
        let transition = match state.wf.step(&state.snapshot, d.input, now) {
            Ok(t) => t,
            Err(e) if sent.is_some() => {
                // A result from memory the interpreter cannot apply: this
                // actor fails and its supervisor records the result the
                // durable way (where a refusal is discarded), then restarts
                // it from its snapshot.
                return Err(format!("an action result from memory was refused: {e}").into());
            }
            Err(e) => {
                // Refused (e.g. a duplicate start): nothing changes; a
                // durable copy is discarded so it is not retried forever.
                debug!(input = kind, error = %e, "input refused");
                if let Some(inbox) = d.inbox_id {
                    self.ctx.store.discard_input(inbox, state.epoch).await?;
                }
                return Ok(true);
            }
        };
        // This node sends the actions and fires the near timers it decides,
        // unless it is handing its work to others.
        let claim = if self.ctx.router.closed.load(Ordering::Relaxed) {
            None
        } else {
            Some(self.ctx.timer_wake.horizon())
        };
        let request = crate::committer::Request {
            execution_id: state.id.clone(),
            epoch: state.epoch,
            transition,
            fired_timer: d.fired_timer,
            consumed_input: d.inbox_id,
            claim_timers_before: claim,
            consumed_outbox: sent,
        };
        match self.ctx.committer.call(request).await {
            Ok((r, CommitResult::Committed)) => {
                if let Some(key) = &r.consumed_outbox {
                    self.ctx.unapplied.remove(&state.id, key);
                }
                let t = r.transition;
                let stats = &self.ctx.stats;
                stats
                    .transition_seconds
                    .observe(received.elapsed().as_secs_f64());
                let mut wake_outbox = false;
                let mut finished = false;
                state.resident_until = None;
                for effect in t.effects {
                    match effect {
                        Effect::Dispatch(dispatch) if claim.is_some() => {
                            let _ = self.ctx.handoff.send(OutboxMessage {
                                id: 0,
                                execution_id: state.id.clone(),
                                dispatch,
                                deliveries: 1,
                            });
                        }
                        Effect::Dispatch(_) => wake_outbox = true,
                        Effect::ScheduleTimer { at, timer } => match claim {
                            Some(before) if at < before => {
                                // Due soon and held here: stay resident
                                // until it fires.
                                state.resident_until = Some(at);
                                self.ctx.timer_wake.hold(at, state.id.clone(), timer);
                            }
                            _ => self.ctx.timer_wake.hint(at),
                        },
                        Effect::Complete { .. } => {
                            Stats::add(&stats.completed, 1);
                            stats.completed_by_workflow.inc(&state.workflow_id);
                            finished = true;
                        }
                        Effect::Cancel { .. } => {
                            Stats::add(&stats.completed, 1);
                            stats.cancelled_by_workflow.inc(&state.workflow_id);
                            finished = true;
                        }
                        Effect::Fail { .. } => {
                            Stats::add(&stats.failed, 1);
                            stats.failed_by_workflow.inc(&state.workflow_id);
                            finished = true;
                        }
                        _ => {}
                    }
                }
                if finished {
                    self.ctx.finished.notify(&state.id);
                }
                if wake_outbox {
                    self.ctx.outbox_wake.notify_one();
                }
                state.snapshot = t.snapshot;
                state.asked_to_passivate = false;
                Ok(true)
            }
            Ok((r, CommitResult::Fenced)) => {
                warn!("lease lost (fenced write): stopping");
                // Not `stop()`, which would drop the mailbox: the supervisor
                // sends `Stop` after the inputs already here, which go back
                // to it (this one first) and on to the holder.
                state.lost = true;
                let _ = state
                    .supervisor
                    .cast(SupervisorMsg::Fenced(state.id.clone(), myself.get_id()));
                // A result from memory stays in the registry: the
                // supervisor records it once this actor has stopped.
                Self::hand_back(state, r.fired_timer);
                Ok(false)
            }
            Err(e) => Err(format!("commit failed: {e}").into()),
        }
    }

    /// Gives an input this actor could not apply (its write was fenced)
    /// back to the supervisor, after the `Fenced` report: a timer firing as
    /// itself (it has no row to be found by), anything else as an activation
    /// (its row waits in the inbox, or the execution is pending).
    fn hand_back(state: &ExecutionState, fired_timer: Option<TimerId>) {
        let id = state.id.clone();
        let msg = match fired_timer {
            Some(timer) => SupervisorMsg::Deliver(
                id,
                Delivery {
                    input: Input::TimerFired {
                        timer: timer.clone(),
                    },
                    fired_timer: Some(timer),
                    inbox_id: None,
                },
            ),
            None => SupervisorMsg::Activate(id),
        };
        let _ = state.supervisor.cast(msg);
    }

    /// After an input: passivate if nothing is in flight, else arm the idle
    /// timeout.
    fn after_input(&self, myself: &ActorRef<ExecutionMsg>, state: &mut ExecutionState) {
        let s = state.snapshot.status;
        let quiet = matches!(s, Status::Waiting | Status::Paused) || s.is_terminal();
        if s == Status::Waiting
            && !state.asked_to_passivate
            && let Some(at) = state.resident_until
        {
            // Passivate only if the timer has not come a while after it was
            // due (it went elsewhere: it fires through the store then).
            let wait = (at - Utc::now()).to_std().unwrap_or_default() + RESIDENT_GRACE;
            Self::check_idle_after(myself, state, wait);
        } else if quiet && !state.asked_to_passivate {
            state.asked_to_passivate = true;
            let _ = state
                .supervisor
                .cast(SupervisorMsg::Idle(state.id.clone(), myself.get_id()));
        } else if !quiet {
            Self::check_idle_after(myself, state, self.ctx.config.idle_timeout);
        }
    }

    /// Arms the idle check, replacing a pending one for an earlier step (one
    /// for this step keeps its time: an input that changed nothing does not
    /// put passivation off).
    fn check_idle_after(
        myself: &ActorRef<ExecutionMsg>,
        state: &mut ExecutionState,
        after: Duration,
    ) {
        let seq = state.snapshot.seq;
        if state
            .idle_check
            .as_ref()
            .is_some_and(|c| c.seq == seq && !c.task.is_finished())
        {
            return;
        }
        let task = myself.send_after(after, move || ExecutionMsg::IdleCheck(seq));
        state.idle_check = Some(PendingIdleCheck { seq, task });
    }
}
