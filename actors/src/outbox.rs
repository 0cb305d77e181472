//! The outbox relay: hands committed actions to workers. For each batch of
//! claimed messages it records the attempts *before* sending (one
//! statement; a redelivery of an attempt that already has its result is
//! dropped), sends them concurrently, and a finisher records the results,
//! queues each for its execution and deletes the outbox rows — one
//! transaction per batch of results. Only a crash between a send and that
//! record repeats a send, with the same idempotency key.

use std::sync::Arc;

use chrono::Utc;
use sojourn_persistence::{AttemptBegin, AttemptRef, FinishedAttempt, OutboxMessage, Store};
use sojourn_runtime::{ActionOutcome, ExecutionId, Input};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::config::Config;
use crate::execution::{Delivery, LocalResult};
use crate::providers::{self, Providers};
use crate::registry::Gate;
use crate::router::Router;
use crate::stats::Stats;
use crate::supervisor::SupervisorMsg;
use crate::trace::Traces;

/// Actions handed over in memory that the relay sends before it looks at
/// the table again.
const MAX_HANDED_PER_TURN: usize = 256;

/// A sent attempt on its way to the finisher; holds its in-flight slot.
struct Sent {
    message: OutboxMessage,
    outcome: ActionOutcome,
    _slot: OwnedSemaphorePermit,
}

/// The outbox relay of a node. Its handle is the `Notify` the engine keeps
/// (a committed transition with actions wakes it).
pub(crate) struct OutboxRelay<S: Store> {
    pub(crate) store: Arc<S>,
    pub(crate) config: Config,
    pub(crate) wake: Arc<Notify>,
    /// Actions this node claimed in the commit that decided them (their
    /// attempts begun there too), handed over in memory: sent at once,
    /// with no claim and no begin query.
    pub(crate) handed: mpsc::UnboundedReceiver<OutboxMessage>,
    pub(crate) router: Arc<Router<S>>,
    pub(crate) stats: Arc<Stats>,
    /// Joins each send to its execution's trace.
    pub(crate) traces: Arc<Traces>,
    pub(crate) providers: Providers,
    /// Holds sends of actions disabled in their namespace.
    pub(crate) gate: Arc<Gate>,
}

impl<S: Store> OutboxRelay<S> {
    /// Claims, sends and records actions until `shutdown`; results of sends
    /// in flight are still recorded.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let OutboxRelay {
            store,
            config,
            wake,
            handed,
            router,
            stats,
            traces,
            providers,
            gate,
        } = self;
        run(
            store, config, wake, handed, router, stats, traces, providers, gate, shutdown,
        )
        .await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn run<S: Store>(
    store: Arc<S>,
    config: Config,
    wake: Arc<Notify>,
    mut handed: mpsc::UnboundedReceiver<OutboxMessage>,
    router: Arc<Router<S>>,
    stats: Arc<Stats>,
    traces: Arc<Traces>,
    http: Providers,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_in_flight_actions));
    let (done_tx, done_rx) = mpsc::channel::<Sent>(config.max_in_flight_actions * 2);
    let finisher = tokio::spawn(finish(
        store.clone(),
        done_rx,
        router.clone(),
        config.max_commit_batch,
        config.results_in_memory,
    ));
    let ttl = chrono::Duration::from_std(config.outbox_claim_ttl)
        .unwrap_or(chrono::Duration::seconds(60));
    let mut last_claim: Option<std::time::Instant> = None;
    let mut woken = true;
    // What is disabled is known before anything is sent.
    gate.refresh(&*store).await;
    while !shutdown.is_cancelled() {
        gate.refresh_if_stale(&store);
        // Handed over in memory: sent first, each as a slot frees; at most a
        // batch per turn, so the table's poll still gets its turn.
        for _ in 0..MAX_HANDED_PER_TURN {
            let Ok(m) = handed.try_recv() else {
                break;
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            send_or_hold(&store, &gate, &http, slot, &done_tx, &stats, &traces, m);
        }
        let free = slots.available_permits().min(512) as u32;
        let mut claimed = 0;
        // The table only when woken (an action this node did not claim was
        // committed) or on the poll: the rest come in memory.
        let due = woken || last_claim.is_none_or(|t| t.elapsed() >= config.outbox_poll);
        if free > 0 && due {
            woken = false;
            last_claim = Some(std::time::Instant::now());
            let now = Utc::now();
            match store
                .claim_outbox(&config.node_id, now, now + ttl, free)
                .await
            {
                Ok(messages) => {
                    claimed = messages.len();
                    if let Err(e) = dispatch(
                        &store, &http, &gate, &slots, &done_tx, &stats, &traces, messages,
                    )
                    .await
                    {
                        warn!(error = %e, "recording attempts failed; the outbox will redeliver");
                    }
                }
                Err(e) => warn!(error = %e, "claiming the outbox failed; retrying"),
            }
        }
        if claimed == 0 || free == 0 {
            tokio::select! {
                _ = tokio::time::sleep(config.outbox_poll) => {}
                _ = wake.notified() => woken = true,
                m = handed.recv() => {
                    if let Some(m) = m
                        && let Ok(slot) = slots.clone().acquire_owned().await
                    {
                        send_or_hold(&store, &gate, &http, slot, &done_tx, &stats, &traces, m);
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        } else {
            woken = true;
        }
    }
    drop(done_tx);
    let _ = finisher.await;
}

/// Records a batch of attempts, then sends the ones to send.
#[allow(clippy::too_many_arguments)]
async fn dispatch<S: Store>(
    store: &Arc<S>,
    http: &Providers,
    gate: &Arc<Gate>,
    slots: &Arc<Semaphore>,
    done: &mpsc::Sender<Sent>,
    stats: &Arc<Stats>,
    traces: &Arc<Traces>,
    messages: Vec<OutboxMessage>,
) -> Result<(), sojourn_persistence::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let refs: Vec<AttemptRef<'_>> = messages
        .iter()
        .map(|m| AttemptRef {
            execution_id: &m.execution_id,
            node: m.dispatch.node.as_str(),
            attempt: m.dispatch.attempt,
        })
        .collect();
    let begins = store.begin_attempts(&refs).await?;
    drop(refs);
    let mut drop_ids = Vec::new();
    for (m, begin) in messages.into_iter().zip(begins) {
        match begin {
            AttemptBegin::AlreadyDone | AttemptBegin::Unknown => drop_ids.push(m.id),
            AttemptBegin::Send { sends } => {
                if sends > 1 {
                    Stats::add(&stats.actions_repeated, 1);
                }
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                send_or_hold(store, gate, http, slot, done, stats, traces, m);
            }
        }
    }
    if !drop_ids.is_empty() {
        store.ack_outbox(&drop_ids).await?;
    }
    Ok(())
}

/// Sends one attempt, unless its action is disabled in its namespace: then
/// the finisher gets [`ActionOutcome::Held`], nothing sent. Only a message
/// whose action is disabled somewhere waits on a read (in its own task).
#[allow(clippy::too_many_arguments)]
fn send_or_hold<S: Store>(
    store: &Arc<S>,
    gate: &Arc<Gate>,
    http: &Providers,
    slot: OwnedSemaphorePermit,
    done: &mpsc::Sender<Sent>,
    stats: &Arc<Stats>,
    traces: &Arc<Traces>,
    m: OutboxMessage,
) {
    if !gate.may_hold(&m) {
        return send(http, slot, done, stats, traces, m);
    }
    let (store, gate, http, done, stats, traces) = (
        store.clone(),
        gate.clone(),
        http.clone(),
        done.clone(),
        stats.clone(),
        traces.clone(),
    );
    let span = info_span!("hold", execution.id = %m.execution_id, node = %m.dispatch.node, attempt = m.dispatch.attempt);
    tokio::spawn(
        async move {
            match gate.held(&*store, &m).await {
                None => send(&http, slot, &done, &stats, &traces, m),
                Some(outcome) => {
                    let _ = done
                        .send(Sent {
                            message: m,
                            outcome,
                            _slot: slot,
                        })
                        .await;
                }
            }
        }
        .instrument(span),
    );
}

/// Sends one attempt (already recorded as begun) in a task of its own,
/// holding its slot; the finisher gets the outcome.
fn send(
    http: &Providers,
    slot: OwnedSemaphorePermit,
    done: &mpsc::Sender<Sent>,
    stats: &Arc<Stats>,
    traces: &Traces,
    m: OutboxMessage,
) {
    let span = info_span!("action", execution.id = %m.execution_id, node = %m.dispatch.node, attempt = m.dispatch.attempt);
    // A child of its execution's activation (when on this node).
    traces.adopt(&m.execution_id, &span);
    // A channel message goes to its channel's workers; its result comes
    // back from them, and its outbox row stays until then. (No handle on
    // the finisher: a publish waiting out a broker outage must not hold
    // the relay's stop.)
    if let Some(channel) = providers::message_channel(&m.dispatch.action) {
        let (http, stats) = (http.clone(), stats.clone());
        tokio::spawn(
            async move {
                if crate::workers::publish_job(http.bus(), channel, &m, http.stop()).await {
                    Stats::add(&stats.actions_sent, 1);
                }
                drop(slot);
            }
            .instrument(span),
        );
        return;
    }
    let (http, done, stats) = (http.clone(), done.clone(), stats.clone());
    tokio::spawn(
        async move {
            let (outcome, _) = providers::send(&http, &m.dispatch, None, None).await;
            Stats::add(&stats.actions_sent, 1);
            let _ = done
                .send(Sent {
                    message: m,
                    outcome,
                    _slot: slot,
                })
                .await;
        }
        .instrument(span),
    );
}

/// Records results of actions sent from memory the durable way (attempt
/// result, inbox row, outbox row removed by key), for inputs that could not
/// be applied by a live actor. Returns their inbox rows, in order.
pub(crate) async fn record_results<S: Store>(
    store: &S,
    results: &[(ExecutionId, LocalResult)],
) -> Result<Vec<i64>, sojourn_persistence::Error> {
    let done: Vec<FinishedAttempt<'_>> = results
        .iter()
        .map(|(id, r)| FinishedAttempt {
            execution_id: id,
            node: r.node.as_str(),
            attempt: r.attempt,
            outcome: &r.outcome,
            outbox_id: None,
            outbox_key: Some(&r.key),
        })
        .collect();
    store.finish_attempts(&done, Utc::now()).await
}

/// Hands results recorded by [`record_results`] (their inbox rows, in
/// order) to their executions.
pub(crate) async fn route_recorded<S: Store>(
    router: &Router<S>,
    results: Vec<(ExecutionId, LocalResult)>,
    inbox: Vec<i64>,
) {
    let routed = results
        .into_iter()
        .zip(inbox)
        .map(|((id, r), inbox)| (id, Some(r.into_delivery(Some(inbox)).0)))
        .collect();
    router.route(routed).await;
}

/// The longest pause between two tries of recording results.
const RECORD_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// [`record_results`] in the background, then routes them as inbox inputs.
/// Retried until it is recorded while the node runs; one that a stopping
/// node could not record is sent again once its outbox claim expires.
pub(crate) fn record_and_route<S: Store>(
    store: Arc<S>,
    router: Arc<Router<S>>,
    results: Vec<(ExecutionId, LocalResult)>,
) {
    let records = router.records.clone();
    records.spawn(async move {
        let mut backoff = std::time::Duration::from_millis(100);
        let mut recorded = record_results(&*store, &results).await;
        let mut tries = 1;
        // While the node runs (draining included) a database error is
        // retried until the database is back: giving up would leave the
        // execution waiting for its action's claim to expire. A stopping
        // node, or an error a retry cannot fix, gives up after ~6 s.
        while let Err(e) = &recorded
            && (tries < 7
                || (matches!(e, sojourn_persistence::Error::Database(_))
                    && !router.records.is_closed()))
        {
            tokio::time::sleep(backoff).await;
            // Jittered, so that tasks waiting out one outage do not all
            // come back in the same instant.
            backoff = (backoff * 2).min(RECORD_BACKOFF_MAX).mul_f64(0.75 + fastrand::f64() / 2.0);
            tries += 1;
            if tries == 7
                && let Err(e) = &recorded
            {
                warn!(error = %e, results = results.len(), "recording action results keeps failing; still trying");
            }
            recorded = record_results(&*store, &results).await;
        }
        match recorded {
            Ok(inbox) => route_recorded(&router, results, inbox).await,
            Err(e) => {
                warn!(error = %e, results = results.len(), "recording action results failed; they are sent again when their claims expire");
            }
        }
    });
}

/// Records results in batches and hands each to its execution.
async fn finish<S: Store>(
    store: Arc<S>,
    mut rx: mpsc::Receiver<Sent>,
    router: Arc<Router<S>>,
    max_batch: usize,
    in_memory: bool,
) {
    let mut batch: Vec<Sent> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        // An execution whose lease this node holds has (or is about to have)
        // its actor here: its result goes in memory and is recorded by the
        // transition that applies it (the supervisor records it the durable
        // way if the actor is gone by then). The rest are recorded here.
        // Not once the node is closed (stopping, draining): then every
        // result is recorded here, inline, before the relay stops.
        if in_memory
            && !router.closed.load(std::sync::atomic::Ordering::Relaxed)
            && let Some(sup) = router.supervisor_ref()
        {
            batch.retain_mut(|s| {
                let id = &s.message.execution_id;
                if !router.held.contains(id) {
                    return true;
                }
                let d = &mut s.message.dispatch;
                let r = LocalResult {
                    node: d.node.clone(),
                    attempt: d.attempt,
                    outcome: std::mem::replace(
                        &mut s.outcome,
                        ActionOutcome::Success {
                            output: serde_json::Value::Null,
                        },
                    ),
                    key: std::mem::take(&mut d.idempotency_key),
                };
                match sup.cast(SupervisorMsg::Result(id.clone(), Box::new(r))) {
                    Ok(()) => {}
                    // The supervisor is gone (the node stops): recorded the
                    // durable way, as the rest.
                    Err(ractor::MessagingErr::SendErr(SupervisorMsg::Result(id, r))) => {
                        record_and_route(store.clone(), router.clone(), vec![(id, *r)]);
                    }
                    Err(e) => warn!(error = %e, "an action result could not reach the supervisor"),
                }
                false
            });
            if batch.is_empty() {
                continue;
            }
        }
        let done: Vec<FinishedAttempt<'_>> = batch
            .iter()
            .map(|s| FinishedAttempt {
                execution_id: &s.message.execution_id,
                node: s.message.dispatch.node.as_str(),
                attempt: s.message.dispatch.attempt,
                outcome: &s.outcome,
                // By key: an action handed over in memory has no row id.
                outbox_id: None,
                outbox_key: Some(s.message.dispatch.idempotency_key.as_str()),
            })
            .collect();
        // Results are worth retrying: giving up means re-sending every action
        // of the batch once its claim expires.
        let mut result = store.finish_attempts(&done, Utc::now()).await;
        let mut backoff = std::time::Duration::from_millis(100);
        for _ in 0..6 {
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            result = store.finish_attempts(&done, Utc::now()).await;
        }
        drop(done);
        match result {
            Ok(inbox_ids) => {
                let mut items = Vec::with_capacity(batch.len());
                for (s, inbox) in batch.drain(..).zip(inbox_ids) {
                    let d = &s.message.dispatch;
                    let delivery = Delivery {
                        input: Input::ActionResult {
                            node: d.node.clone(),
                            attempt: d.attempt,
                            outcome: s.outcome,
                        },
                        fired_timer: None,
                        inbox_id: Some(inbox),
                    };
                    items.push((s.message.execution_id, Some(delivery)));
                }
                router.route(items).await;
            }
            Err(e) => {
                // The outbox rows stay: their claims expire and they are
                // delivered again (counted as re-sends).
                warn!(error = %e, results = batch.len(), "recording action results failed");
                batch.clear();
            }
        }
    }
}
