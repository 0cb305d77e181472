//! The outbox relay: hands committed actions to workers. A worker records
//! the attempt before it sends (a redelivery of an attempt that already has
//! its result is dropped), sends, records the result and queues it for the
//! execution in one transaction, then acknowledges the outbox row. Only a
//! crash between the send and that record repeats a send, with the same key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;
use ractor::ActorRef;
use sojourn_persistence::{AttemptBegin, OutboxMessage, Store};
use sojourn_runtime::Input;
use tokio::sync::{Notify, Semaphore};
use tracing::{Instrument, info_span, warn};

use crate::config::Config;
use crate::execution::Delivery;
use crate::providers::{self, HttpProvider};
use crate::stats::Stats;
use crate::supervisor::SupervisorMsg;

pub(crate) async fn run<S: Store>(
    store: Arc<S>,
    config: Config,
    wake: Arc<Notify>,
    supervisor: ActorRef<SupervisorMsg>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) {
    let http = HttpProvider::new();
    let slots = Arc::new(Semaphore::new(config.max_in_flight_actions));
    let ttl = chrono::Duration::from_std(config.outbox_claim_ttl)
        .unwrap_or(chrono::Duration::seconds(60));
    while !stop.load(Ordering::Relaxed) {
        let free = slots.available_permits().min(256) as u32;
        let mut claimed = 0;
        if free > 0 {
            let now = Utc::now();
            match store
                .claim_outbox(&config.node_id, now, now + ttl, free)
                .await
            {
                Ok(messages) => {
                    claimed = messages.len();
                    for m in messages {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            return;
                        };
                        let (store, http, sup, stats) = (
                            store.clone(),
                            http.clone(),
                            supervisor.clone(),
                            stats.clone(),
                        );
                        let span = info_span!("action", execution.id = %m.execution_id, node = %m.dispatch.node, attempt = m.dispatch.attempt);
                        tokio::spawn(
                            async move {
                                if let Err(e) = work(&*store, &http, &sup, &stats, m).await {
                                    warn!(error = %e, "action worker failed; the outbox will redeliver");
                                }
                                drop(permit);
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(e) => warn!(error = %e, "claiming the outbox failed; retrying"),
            }
        }
        if claimed == 0 || free == 0 {
            tokio::select! {
                _ = tokio::time::sleep(config.outbox_poll) => {}
                _ = wake.notified() => {}
            }
        }
    }
}

async fn work<S: Store>(
    store: &S,
    http: &HttpProvider,
    supervisor: &ActorRef<SupervisorMsg>,
    stats: &Stats,
    m: OutboxMessage,
) -> Result<(), sojourn_persistence::Error> {
    let d = &m.dispatch;
    match store
        .begin_attempt(&m.execution_id, d.node.as_str(), d.attempt)
        .await?
    {
        AttemptBegin::AlreadyDone | AttemptBegin::Unknown => {
            store.ack_outbox(&[m.id]).await?;
            return Ok(());
        }
        AttemptBegin::Send { sends } => {
            if sends > 1 {
                Stats::add(&stats.actions_repeated, 1);
            }
        }
    }
    let outcome = providers::send(http, d).await;
    Stats::add(&stats.actions_sent, 1);
    let inbox = store
        .finish_attempt(
            &m.execution_id,
            d.node.as_str(),
            d.attempt,
            &outcome,
            Utc::now(),
        )
        .await?;
    let delivery = Delivery {
        input: Input::ActionResult {
            node: d.node.clone(),
            attempt: d.attempt,
            outcome,
        },
        fired_timer: None,
        inbox_id: Some(inbox),
    };
    let _ = supervisor.cast(SupervisorMsg::Deliver(m.execution_id.clone(), delivery));
    store.ack_outbox(&[m.id]).await?;
    Ok(())
}
