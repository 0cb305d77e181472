//! The supervisor: the one place that knows which executions have a live
//! actor on this node. Every input goes through it, so it can spawn an
//! actor on demand (rehydrating it from its snapshot), buffer inputs while
//! an actor passivates, and restart one that panicked.
//!
//! Passivation is a handshake: the actor says it is idle, the supervisor
//! marks it stopping and sends `Stop` *after* any input it already
//! forwarded (mailboxes are FIFO), buffers what arrives meanwhile, and
//! respawns the execution if anything was buffered once the actor is gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorRuntime, RpcReplyPort,
    SupervisionEvent,
};
use sojourn_persistence::Store;
use sojourn_runtime::ExecutionId;
use tracing::{error, warn};

use crate::engine::Context;
use crate::execution::{Delivery, ExecutionActor, ExecutionMsg, LocalResult, Preloaded};
use crate::stats::Stats;

#[derive(Debug)]
pub(crate) enum SupervisorMsg {
    /// An input for an execution.
    Deliver(ExecutionId, Delivery),
    /// An action's result from this node's sender, in memory: to the live
    /// actor, else recorded the durable way.
    Result(ExecutionId, Box<LocalResult>),
    /// Make sure the execution is active (it has inbox rows).
    Activate(ExecutionId),
    /// A new execution this node just created: start its actor from what
    /// the creator knows.
    Adopt(ExecutionId, Box<Preloaded>),
    /// The actor has nothing in flight and may passivate.
    /// (The actor's id: an idle report from an actor that has since been
    /// replaced must not stop its successor.)
    Idle(ExecutionId, ActorId),
    /// An actor failed to start (its store was unreachable, or it is gone).
    StartFailed(ExecutionId, ActorId, String),
    /// How many actors are live.
    Count(RpcReplyPort<usize>),
    /// Whether the execution has a live actor here.
    IsActive(ExecutionId, RpcReplyPort<bool>),
    /// Passivate everything; reply when no actor is left.
    Drain(RpcReplyPort<()>),
    /// Another node holds these executions now: stop their actors at once
    /// (no passivation: their writes would be fenced anyway).
    LeaseLost(Vec<ExecutionId>),
    /// The actor's write was fenced (another node took the execution); the
    /// inputs still in its mailbox come back as `Deliver`, after this.
    Fenced(ExecutionId, ActorId),
    /// An execution that kept failing has been marked failed (or the
    /// attempt gave up): its inputs may start an actor again.
    FailedMarked(ExecutionId),
}

enum Entry {
    Active(ActorRef<ExecutionMsg>),
    /// Passivating; inputs wait here until it is gone.
    Stopping {
        actor: ActorId,
        /// Inputs without a durable row (timer firings) to hand to the
        /// successor.
        buffer: Vec<Delivery>,
        /// Something arrived that the successor will read from the store
        /// (inbox rows): bring it back even if `buffer` is empty.
        wake: bool,
    },
}

pub(crate) struct Supervisor<S: Store> {
    pub(crate) ctx: Arc<Context<S>>,
}

pub(crate) struct SupervisorState {
    entries: HashMap<ExecutionId, Entry>,
    by_actor: HashMap<ActorId, ExecutionId>,
    /// Panics per execution, for backoff and giving up.
    panics: HashMap<ExecutionId, u32>,
    /// Executions being marked failed (off the mailbox): no actor is spawned
    /// for them meanwhile; their inputs wait in their rows.
    failing: std::collections::HashSet<ExecutionId>,
    draining: Vec<RpcReplyPort<()>>,
}

impl<S: Store> Supervisor<S> {
    fn spawn(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        id: &ExecutionId,
    ) -> Option<ActorRef<ExecutionMsg>> {
        self.spawn_with(myself, state, id, None)
    }

    fn spawn_with(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        id: &ExecutionId,
        preloaded: Option<Preloaded>,
    ) -> Option<ActorRef<ExecutionMsg>> {
        let actor = ExecutionActor {
            ctx: self.ctx.clone(),
        };
        match ActorRuntime::spawn_linked_instant(
            None,
            actor,
            (id.clone(), myself.clone(), preloaded),
            myself.get_cell(),
        ) {
            Ok((actor, started)) => {
                let actor_id = actor.get_id();
                state.by_actor.insert(actor_id, id.clone());
                state
                    .entries
                    .insert(id.clone(), Entry::Active(actor.clone()));
                // A failed start produces no supervision event: watch it.
                let sup = myself.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let failed = match started.await {
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(e) = failed {
                        let _ = sup.cast(SupervisorMsg::StartFailed(id, actor_id, e));
                    }
                });
                Some(actor)
            }
            Err(e) => {
                error!(execution.id = %id, error = %e, "cannot spawn an execution actor");
                None
            }
        }
    }

    fn deliver(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        id: ExecutionId,
        d: Option<Delivery>,
    ) {
        if state.failing.contains(&id) {
            // Being marked failed: an actor now would race that commit. A
            // timer firing stays claimed (the failure drops the timers); the
            // rest are inbox rows.
            return;
        }
        match state.entries.get_mut(&id) {
            Some(Entry::Active(actor)) => {
                if let Some(d) = d {
                    let _ = actor.cast(ExecutionMsg::Deliver(d));
                }
            }
            Some(Entry::Stopping { buffer, wake, .. }) => match d {
                Some(d) if d.inbox_id.is_none() => buffer.push(d),
                _ => *wake = true,
            },
            None if !self.ours(&id) => {
                // Not ours (the lease was released or lost meanwhile, or this
                // node drains): the router takes it again, or forwards it.
                self.bounce(vec![(id, d)]);
            }
            None => {
                // A new actor reads its inbox in order in `pre_start`; only
                // inputs without a durable row are handed to it.
                if let Some(actor) = self.spawn(myself, state, &id)
                    && let Some(d) = d
                    && d.inbox_id.is_none()
                {
                    let _ = actor.cast(ExecutionMsg::Deliver(d));
                }
            }
        }
    }

    /// Removes the entry of `id` if it belongs to `actor` (and not to a
    /// successor); returns it.
    fn take_entry(state: &mut SupervisorState, id: &ExecutionId, actor: &ActorId) -> Option<Entry> {
        let owned = match state.entries.get(id) {
            Some(Entry::Active(a)) => a.get_id() == *actor,
            Some(Entry::Stopping { actor: a, .. }) => a == actor,
            None => false,
        };
        if owned {
            state.entries.remove(id)
        } else {
            None
        }
    }

    /// Records the durable way the results that were left waiting for an
    /// execution's actor, which has stopped, and routes them as inputs.
    fn flush(&self, id: &ExecutionId) {
        let left = self.ctx.unapplied.take(id);
        if !left.is_empty() {
            crate::outbox::record_and_route(
                self.ctx.store.clone(),
                self.ctx.router.clone(),
                left.into_iter().map(|r| (id.clone(), r)).collect(),
            );
        }
    }

    fn forget(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        actor: &ActorId,
    ) {
        let Some(id) = state.by_actor.remove(actor) else {
            return;
        };
        self.flush(&id);
        // A clean stop: whatever failures it had are behind it.
        state.panics.remove(&id);
        match Self::take_entry(state, &id, actor) {
            Some(Entry::Stopping { buffer, wake, .. })
                if (wake || !buffer.is_empty()) && state.draining.is_empty() =>
            {
                // Inputs arrived while it passivated: bring it back (if the
                // lease is still ours; else the router takes them on).
                if !self.ours(&id) {
                    let mut items: Vec<crate::router::Item> =
                        buffer.into_iter().map(|d| (id.clone(), Some(d))).collect();
                    if wake {
                        items.push((id.clone(), None));
                    }
                    self.bounce(items);
                } else if let Some(actor) = self.spawn(myself, state, &id) {
                    for d in buffer {
                        let _ = actor.cast(ExecutionMsg::Deliver(d));
                    }
                } else {
                    self.ctx.router.released(&id);
                }
            }
            Some(Entry::Stopping { buffer, .. }) => {
                self.ctx.router.released(&id);
                // Draining: inputs without a durable row (timer firings)
                // go back to the timer table via the router.
                if !buffer.is_empty() {
                    self.bounce(buffer.into_iter().map(|d| (id.clone(), Some(d))).collect());
                }
            }
            Some(Entry::Active(_)) => self.ctx.router.released(&id),
            None => {}
        }
        self.check_drained(state);
    }

    /// Whether this node may run an actor for `id`: it holds the lease and
    /// is not draining. A lease held while draining is given back.
    fn ours(&self, id: &ExecutionId) -> bool {
        let router = &self.ctx.router;
        if !router.held.contains(id) {
            return false;
        }
        if router.closed.load(std::sync::atomic::Ordering::Relaxed) {
            router.released(id);
            return false;
        }
        true
    }

    /// Hands items back to the router (from a task: the router may wait on
    /// Redis or another node).
    /// Within the router's background bound; past it the inputs wait in
    /// their rows (a timer until its claim expires, the rest for the
    /// recovery scan).
    fn bounce(&self, items: Vec<crate::router::Item>) {
        let router = self.ctx.router.clone();
        let n = items.len();
        if !self
            .ctx
            .router
            .spawn_bounded(async move { router.route(items).await })
        {
            warn!(
                items = n,
                "background work at its bound: bounced inputs wait durably"
            );
        }
    }

    /// Stops the actor of an execution whose lease this node lost (`from`:
    /// only if it is still that actor). Not `ActorRef::stop`, which drops
    /// the mailbox: a timer firing in it has no row to be found again and
    /// would wait for its claim to expire. `Stop` goes after whatever the
    /// actor was already given; those inputs are applied (a commit the new
    /// holder has fenced hands its input back through `Fenced`), and inputs
    /// that arrive meanwhile wait in the entry and go back to the router
    /// once the actor is gone. Whether an actor was stopped.
    fn stop_lost(state: &mut SupervisorState, id: &ExecutionId, from: Option<ActorId>) -> bool {
        let Some(entry) = state.entries.get_mut(id) else {
            return false;
        };
        let actor = match entry {
            Entry::Active(actor) if from.is_none_or(|f| f == actor.get_id()) => actor,
            // Already stopping (its buffer goes back to the router), or a
            // report from an actor since replaced.
            _ => return false,
        };
        let _ = actor.cast(ExecutionMsg::Stop);
        *entry = Entry::Stopping {
            actor: actor.get_id(),
            buffer: Vec::new(),
            wake: true,
        };
        true
    }

    fn check_drained(&self, state: &mut SupervisorState) {
        if state.entries.is_empty() {
            for reply in state.draining.drain(..) {
                let _ = reply.send(());
            }
        }
    }
}

impl<S: Store> Actor for Supervisor<S> {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            entries: HashMap::new(),
            by_actor: HashMap::new(),
            panics: HashMap::new(),
            failing: std::collections::HashSet::new(),
            draining: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Deliver(id, d) => {
                if state.draining.is_empty() {
                    self.deliver(&myself, state, id, Some(d));
                } else {
                    // Draining: the router hands it to a node that takes
                    // work (or back to its durable row).
                    self.bounce(vec![(id, Some(d))]);
                }
            }
            SupervisorMsg::Result(id, r) => match state.entries.get(&id) {
                Some(Entry::Active(actor))
                    if state.draining.is_empty() && !state.failing.contains(&id) =>
                {
                    // It waits in the registry until the commit that
                    // applies it; if the actor stops first, `flush` records
                    // it (this supervisor sees every actor stop).
                    self.ctx.unapplied.put(&id, *r);
                    if actor.cast(ExecutionMsg::Results).is_err() {
                        self.flush(&id);
                    }
                }
                // No live actor to give it to: it becomes a row first.
                _ => crate::outbox::record_and_route(
                    self.ctx.store.clone(),
                    self.ctx.router.clone(),
                    vec![(id, *r)],
                ),
            },
            SupervisorMsg::FailedMarked(id) => {
                state.failing.remove(&id);
                self.ctx.router.released(&id);
            }
            SupervisorMsg::Activate(id) => {
                if state.draining.is_empty() {
                    match state.entries.get(&id) {
                        Some(Entry::Active(actor)) => {
                            let _ = actor.cast(ExecutionMsg::DrainInbox);
                        }
                        _ => self.deliver(&myself, state, id, None),
                    }
                }
            }
            SupervisorMsg::Adopt(id, preloaded) => {
                if !state.draining.is_empty() || !self.ours(&id) {
                    // Draining: a node that takes work starts it.
                    self.bounce(vec![(id, None)]);
                } else if state.entries.contains_key(&id) {
                    // Already active somehow: let it read the store.
                    self.deliver(&myself, state, id, None);
                } else {
                    self.spawn_with(&myself, state, &id, Some(*preloaded));
                }
            }
            SupervisorMsg::Idle(id, from) => {
                if let Some(entry) = state.entries.get_mut(&id)
                    && let Entry::Active(actor) = entry
                    && actor.get_id() == from
                {
                    let _ = actor.cast(ExecutionMsg::Stop);
                    *entry = Entry::Stopping {
                        actor: from,
                        buffer: Vec::new(),
                        wake: false,
                    };
                }
            }
            SupervisorMsg::StartFailed(id, actor, e) => {
                warn!(execution.id = %id, error = %e, "execution actor failed to start");
                // Only its own: a successor's results are not taken.
                if state.by_actor.remove(&actor).is_some() {
                    self.flush(&id);
                }
                // Whatever state it was in. Its inputs are durable (inbox,
                // timer claims, the pending scan) and bring it back later;
                // respawning at once would spin while the store is down.
                if Self::take_entry(state, &id, &actor).is_some() {
                    self.ctx.router.released(&id);
                }
                self.check_drained(state);
            }
            SupervisorMsg::LeaseLost(ids) => {
                for id in ids {
                    Self::stop_lost(state, &id, None);
                }
            }
            SupervisorMsg::Fenced(id, from) => {
                // Its write was fenced: another node holds the execution.
                // Give the lease up here so its inputs are routed there
                // (also when the actor was already passivating: its
                // successor must not start here and fence the holder).
                let its_own = match state.entries.get(&id) {
                    Some(Entry::Active(a)) => a.get_id() == from,
                    Some(Entry::Stopping { actor, .. }) => *actor == from,
                    None => false,
                };
                Self::stop_lost(state, &id, Some(from));
                if its_own {
                    self.ctx.router.released(&id);
                }
            }
            SupervisorMsg::Count(reply) => {
                let _ = reply.send(state.entries.len());
            }
            SupervisorMsg::IsActive(id, reply) => {
                let active = matches!(state.entries.get(&id), Some(Entry::Active(_)));
                let _ = reply.send(active);
            }
            SupervisorMsg::Drain(reply) => {
                state.draining.push(reply);
                for entry in state.entries.values_mut() {
                    if let Entry::Active(actor) = entry {
                        let _ = actor.cast(ExecutionMsg::Stop);
                        let id = actor.get_id();
                        *entry = Entry::Stopping {
                            actor: id,
                            buffer: Vec::new(),
                            wake: false,
                        };
                    }
                }
                self.check_drained(state);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A supervisor that stopped when a child stops (ractor's default)
        // would take every execution down with one passivation.
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                self.forget(&myself, state, &cell.get_id())
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                self.on_panic(&myself, state, &cell, err.to_string()).await
            }
            _ => {}
        }
        Ok(())
    }
}

impl<S: Store> Supervisor<S> {
    /// A panicking execution restarts from its last committed snapshot with
    /// exponential backoff; one that keeps panicking is marked failed.
    async fn on_panic(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        cell: &ActorCell,
        err: String,
    ) {
        let Some(id) = state.by_actor.remove(&cell.get_id()) else {
            return;
        };
        self.flush(&id);
        Self::take_entry(state, &id, &cell.get_id());
        let count = state.panics.entry(id.clone()).or_insert(0);
        *count += 1;
        let count = *count;
        if count > self.ctx.config.max_restarts {
            error!(execution.id = %id, panics = count, error = %err, "execution keeps failing: marking it failed");
            state.panics.remove(&id);
            // Off the mailbox: a database round trip (or an outage) must not
            // hold up every other execution's inputs. Until it is done no
            // actor is spawned for this execution (`failing`), and the
            // lease is held, so no other node starts one either.
            state.failing.insert(id.clone());
            let ctx = self.ctx.clone();
            let supervisor = myself.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::engine::mark_failed(
                    &ctx,
                    &id,
                    &format!("the execution actor kept failing: {err}"),
                )
                .await
                {
                    error!(execution.id = %id, error = %e, "could not mark the execution failed");
                }
                if supervisor
                    .cast(SupervisorMsg::FailedMarked(id.clone()))
                    .is_err()
                {
                    ctx.router.released(&id);
                }
            });
        } else {
            Stats::add(&self.ctx.stats.restarts, 1);
            let backoff = Duration::from_millis(100 * (1 << count.min(6)));
            warn!(execution.id = %id, panics = count, error = %err, ?backoff, "execution actor failed: restarting from its snapshot");
            myself.send_after(backoff, move || SupervisorMsg::Activate(id));
        }
        self.check_drained(state);
    }
}
