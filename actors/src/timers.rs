//! The timer service: durable timers are rows; this service claims the ones
//! due soon (a little ahead of time, `FOR UPDATE SKIP LOCKED` on
//! PostgreSQL), holds them in memory until due and fires them into the
//! supervisor. After downtime the backlog fires in due order at a bounded
//! rate. A claim that is never fired (this node died) expires and another
//! node takes the timer: timers outlive any process.
//!
//! The shape is mini-redis's purge task: sleep until the next deadline or a
//! wake-up, whichever comes first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sojourn_persistence::Store;
use sojourn_runtime::{ExecutionId, Input, TimerId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Config;
use crate::execution::Delivery;
use crate::router::Router;
use crate::stats::Stats;

/// A timer held in memory until due: (due, execution, timer).
type Held = (DateTime<Utc>, ExecutionId, TimerId);

/// A held timer in the service's heap, and whether a claim query found it.
type HeldTimer = (DateTime<Utc>, ExecutionId, TimerId, bool);

/// Wakes the timer service when a timer is set that falls due soon, and
/// hands it the timers this node claimed in the commit that set them.
#[derive(Debug)]
pub(crate) struct TimerWake {
    notify: Notify,
    lookahead: chrono::Duration,
    handed: std::sync::Mutex<Vec<Held>>,
    /// A timer nobody claimed falls due soon: claim at once.
    hinted: std::sync::atomic::AtomicBool,
}

impl TimerWake {
    pub(crate) fn new(config: &Config) -> TimerWake {
        TimerWake {
            notify: Notify::new(),
            lookahead: chrono::Duration::from_std(config.timer_lookahead)
                .unwrap_or(chrono::Duration::seconds(2)),
            handed: std::sync::Mutex::new(Vec::new()),
            hinted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Timers set from now on that fall due before the returned instant
    /// are claimed in their commit and handed over with [`TimerWake::hold`].
    pub(crate) fn horizon(&self) -> DateTime<Utc> {
        Utc::now() + self.lookahead
    }

    /// A timer this node claimed in its commit: held in memory until due,
    /// with no claim query.
    pub(crate) fn hold(&self, at: DateTime<Utc>, execution: ExecutionId, timer: TimerId) {
        if let Ok(mut h) = self.handed.lock() {
            h.push((at, execution, timer));
        }
        self.notify.notify_one();
    }

    fn take_handed(&self) -> Vec<Held> {
        self.handed
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default()
    }

    /// A timer was committed for `at`.
    pub(crate) fn hint(&self, at: DateTime<Utc>) {
        if at - Utc::now() <= self.lookahead {
            self.hinted.store(true, Ordering::Relaxed);
            self.notify.notify_one();
        }
    }
}

/// The timer service of a node. Its handle is the [`TimerWake`] the
/// engine keeps (a transition that sets a timer due soon wakes it).
pub(crate) struct TimerService<S: Store> {
    pub(crate) store: Arc<S>,
    pub(crate) config: Config,
    pub(crate) wake: Arc<TimerWake>,
    pub(crate) router: Arc<Router<S>>,
    pub(crate) stats: Arc<Stats>,
}

impl<S: Store> TimerService<S> {
    /// Claims and fires timers until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let TimerService {
            store,
            config,
            wake,
            router,
            stats,
        } = self;
        run(store, config, wake, router, stats, shutdown).await;
    }
}

/// How close to a timer's due time the service stops trusting tokio's
/// millisecond timer and sleeps precisely.
const PRECISE: Duration = Duration::from_millis(2);

/// Up to how many timers in hand the service fires them precisely.
const PRECISE_MAX_HELD: usize = 256;

async fn run<S: Store>(
    store: Arc<S>,
    config: Config,
    wake: Arc<TimerWake>,
    router: Arc<Router<S>>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let to_chrono =
        |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(1));
    let lookahead = to_chrono(config.timer_lookahead);
    let claim_ttl = to_chrono(config.timer_claim_ttl);
    // Due, execution, timer, and whether a claim query found it (those
    // count against `timer_batch`; the ones handed over in memory do not).
    let mut held: BinaryHeap<Reverse<HeldTimer>> = BinaryHeap::new();
    let mut polled = 0usize;
    // Fire budget: at most `rate` per second, refilled continuously.
    let rate = f64::from(config.timer_fire_rate.max(1));
    let mut budget = rate;
    let mut last_refill = std::time::Instant::now();
    let mut last_claim: Option<std::time::Instant> = None;
    while !shutdown.is_cancelled() {
        held.extend(
            wake.take_handed()
                .into_iter()
                .map(|(due, e, t)| Reverse((due, e, t, false))),
        );
        let now = Utc::now();
        // Claim more only when the held backlog is small: a node back from a
        // day of downtime takes the backlog a batch at a time.
        // A draining node claims nothing new.
        // Only on a hint or a poll: timers handed over in memory need no
        // query.
        // Timers handed over in memory do not count against the batch: a
        // node busy with its own near timers still claims the others.
        let hinted = wake.hinted.load(Ordering::Relaxed);
        if (hinted || last_claim.is_none_or(|t| t.elapsed() >= config.timer_poll))
            && polled < config.timer_batch as usize
            && !router.closed.load(Ordering::Relaxed)
        {
            wake.hinted.store(false, Ordering::Relaxed);
            last_claim = Some(std::time::Instant::now());
            match store
                .claim_due_timers(
                    &config.node_id,
                    now + lookahead,
                    now,
                    now + claim_ttl,
                    config.timer_batch,
                )
                .await
            {
                Ok(timers) => {
                    polled += timers.len();
                    for t in timers {
                        held.push(Reverse((t.due_at, t.execution_id, t.timer_id, true)));
                    }
                }
                Err(e) => warn!(error = %e, "claiming timers failed; retrying"),
            }
        }
        let elapsed = last_refill.elapsed().as_secs_f64();
        last_refill = std::time::Instant::now();
        budget = (budget + elapsed * rate).min(rate);
        let now = Utc::now();
        let mut due_now = Vec::new();
        while budget >= 1.0 {
            let Some(Reverse((due, _, _, _))) = held.peek() else {
                break;
            };
            if *due > now {
                break;
            }
            let Some(Reverse((due, execution, timer, was_polled))) = held.pop() else {
                break;
            };
            if was_polled {
                polled = polled.saturating_sub(1);
            }
            budget -= 1.0;
            stats.record_lateness((now - due).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            Stats::add(&stats.timers_fired, 1);
            let delivery = Delivery {
                input: Input::TimerFired {
                    timer: timer.clone(),
                },
                fired_timer: Some(timer),
                inbox_id: None,
            };
            due_now.push((execution, Some(delivery)));
        }
        router.route(due_now).await;
        // Sleep until the next held timer, the next poll, or a wake-up.
        // What is left of the poll interval since the last claim (all of
        // it when the claim was skipped: draining, or a full batch in hand).
        let poll = last_claim
            .and_then(|t| config.timer_poll.checked_sub(t.elapsed()))
            .filter(|d| !d.is_zero())
            .unwrap_or(config.timer_poll);
        let next_timer = held
            .peek()
            .map(|Reverse((due, _, _, _))| (*due - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .filter(|d| *d < poll);
        let until_next = next_timer.unwrap_or(poll);
        let until_next = if budget < 1.0 {
            until_next.max(Duration::from_secs_f64(1.0 / rate))
        } else {
            until_next
        };
        // Precisely only on a node with few timers in hand: a busy one fires
        // many per millisecond anyway, and would pay a blocking-thread hop
        // per wake-up.
        let precise = next_timer.is_some() && budget >= 1.0 && held.len() <= PRECISE_MAX_HELD;
        if precise && !until_next.is_zero() && until_next <= PRECISE {
            // tokio's timer wheel ticks in whole milliseconds and rounds a
            // deadline up, so a timer would fire up to ~2 ms late: the last
            // stretch before one falls due is slept on a blocking thread,
            // to within tens of microseconds.
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(until_next)).await;
        } else if !until_next.is_zero() {
            // Woken up to `PRECISE` before a timer (not late), for the
            // stretch above; the poll is not brought forward.
            let until_next = if precise {
                until_next
                    .checked_sub(PRECISE)
                    .filter(|d| !d.is_zero())
                    .unwrap_or(until_next)
            } else {
                until_next
            };
            tokio::select! {
                _ = tokio::time::sleep(until_next) => {}
                _ = wake.notify.notified() => {}
                _ = shutdown.cancelled() => {}
            }
        } else {
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The services stop when their token is cancelled, even while asleep
    /// (a cancelled token is seen by a loop that starts waiting later, which
    /// a `Notify` is not).
    #[tokio::test]
    async fn the_timer_service_stops_on_shutdown() {
        let router = crate::router::tests::router().await;
        // An hour between polls: only the shutdown can end it in time.
        let service = || {
            let config = Config {
                timer_poll: Duration::from_secs(3600),
                ..Config::default()
            };
            TimerService {
                store: router.store.clone(),
                wake: Arc::new(TimerWake::new(&config)),
                config,
                router: router.clone(),
                stats: Arc::new(Stats::default()),
            }
        };
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), service().run(shutdown))
            .await
            .expect("a service told to stop before it starts stops at once");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service().run(shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("a sleeping service wakes for its shutdown")
            .expect("no panic");
    }
}
