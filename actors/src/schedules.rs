//! The schedule runner: every node runs one. Each poll it claims the active
//! schedules that are due (one node holds a schedule while it fires it),
//! starts the workflow once per instant to fire — with the instant in the
//! input and an idempotency key made of the trigger and the instant — and
//! moves the schedule's durable next fire on.
//!
//! A node killed mid-fire leaves its claim to lapse; the next node fires
//! the same instants again under the same keys, which find the executions
//! already started: each instant starts one execution in all. Fires missed
//! while no node ran the schedule follow its misfire policy
//! ([`sojourn_runtime::schedule::CronSchedule::catch_up`]); nothing earlier
//! than the moment the trigger became active fires.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use sojourn_persistence::{Store, TriggerRecord};
use sojourn_runtime::triggers::{ScheduleTrigger, TriggerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::Config;
use crate::engine::{Launcher, StartRequest};
use crate::error::Error;

/// Schedules claimed per query.
const BATCH: u32 = 64;

pub(crate) struct ScheduleRunner<S: Store> {
    pub store: Arc<S>,
    pub launcher: Launcher<S>,
    pub config: Config,
}

/// The idempotency key of a schedule's fire at `instant`.
pub fn fire_key(trigger_id: &str, instant: DateTime<Utc>) -> String {
    format!(
        "schedule:{trigger_id}:{}",
        instant.to_rfc3339_opts(SecondsFormat::Millis, true)
    )
}

/// The input of a fire: the trigger's input with `trigger` set to
/// `{"id", "kind": "schedule", "scheduled_at"}`.
fn fire_input(config: &ScheduleTrigger, trigger_id: &str, instant: DateTime<Utc>) -> Value {
    let mut input = match &config.input {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    input.insert(
        "trigger".into(),
        json!({
            "id": trigger_id,
            "kind": "schedule",
            "scheduled_at": instant.to_rfc3339_opts(SecondsFormat::Millis, true),
        }),
    );
    Value::Object(input)
}

/// Whether a start that failed may succeed later (the database, the
/// cluster or the node is away or busy), or never will (the workflow is
/// gone, the input refused, a limit reached).
pub(crate) fn retryable(e: &Error) -> bool {
    matches!(
        e,
        Error::Store(sojourn_persistence::Error::Database(_))
            | Error::ShuttingDown
            | Error::Overloaded { .. }
            | Error::Unavailable(_)
            | Error::Cluster(_)
            | Error::Actor(_)
    )
}

impl<S: Store> ScheduleRunner<S> {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.schedule_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.pass(&shutdown).await {
                warn!(error = %e, "claiming due schedules failed; trying again");
            }
        }
    }

    /// Fires every schedule due now, a batch at a time.
    async fn pass(&self, shutdown: &CancellationToken) -> Result<(), Error> {
        let ttl = chrono::Duration::from_std(self.config.schedule_claim_ttl)
            .unwrap_or(chrono::Duration::seconds(30));
        while !shutdown.is_cancelled() {
            let now = Utc::now();
            let due = self
                .store
                .claim_due_schedules(&self.config.node_id, now, now + ttl, BATCH)
                .await?;
            let full = due.len() == BATCH as usize;
            for t in due {
                let span = info_span!("schedule", trigger.id = %t.id, workflow.id = %t.workflow_id);
                self.fire(t, now).instrument(span).await;
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Fires one claimed schedule and moves its next fire on; on a failure
    /// that may pass, leaves the claim to lapse so that it is fired again.
    async fn fire(&self, t: TriggerRecord, now: DateTime<Utc>) {
        let Some(stored_due) = t.next_fire_at else {
            return;
        };
        // A stored configuration that no longer reads (edited by hand):
        // it stops firing rather than guess.
        let read = match t.typed_config() {
            Ok(TriggerConfig::Schedule(c)) => {
                c.schedule().map(|s| (c, s)).map_err(|e| e.to_string())
            }
            Ok(other) => Err(format!("a {} configuration", other.kind())),
            Err(e) => Err(e.to_string()),
        };
        let (config, schedule) = match read {
            Ok(read) => read,
            Err(e) => {
                error!(error = %e, "a schedule trigger's stored configuration is invalid; it no longer fires");
                self.finish(&t, stored_due, None, None).await;
                return;
            }
        };
        // Nothing earlier than the moment it became active fires.
        let due = if stored_due <= t.updated_at {
            match schedule.fires_after(t.updated_at).next() {
                Some(first) if first > now => {
                    self.finish(&t, stored_due, Some(first), None).await;
                    return;
                }
                Some(first) => first,
                None => {
                    self.finish(&t, stored_due, None, None).await;
                    return;
                }
            }
        } else {
            stored_due
        };
        let catch_up = schedule.catch_up(due, now, config.grace(), config.misfire);
        if catch_up.skipped > 0 {
            info!(
                skipped = catch_up.skipped,
                policy = ?config.misfire,
                "missed fires not made up"
            );
        }
        let mut fired = None;
        // The durable next fire follows the instants as they fire (after
        // the first): a pause stops the rest, and a node that dies part way
        // leaves the next node to carry on from where it was.
        let mut held = stored_due;
        for (i, &instant) in catch_up.fire.iter().enumerate() {
            if i > 0 && instant != held {
                match self
                    .store
                    .advance_schedule(&t.id, &self.config.node_id, held, instant)
                    .await
                {
                    Ok(true) => held = instant,
                    Ok(false) => {
                        debug!("the schedule changed while it fired; the rest is not fired");
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, "moving a schedule on failed; it is fired again (same keys) when the claim lapses");
                        return;
                    }
                }
            }
            let req = StartRequest {
                namespace: Some(t.namespace.clone()),
                workflow: t.workflow_id.clone(),
                version: None,
                input: fire_input(&config, &t.id, instant),
                subject: None,
                timezone: None,
                idempotency_key: Some(fire_key(&t.id, instant)),
            };
            match self.launcher.start_execution(req).await {
                Ok(started) => {
                    fired = Some(instant);
                    debug!(execution.id = %started.id, new = started.new, %instant, "schedule fired");
                }
                Err(e) if retryable(&e) => {
                    warn!(error = %e, %instant, "a schedule's fire failed; it is fired again when the claim lapses");
                    return;
                }
                Err(e) => {
                    error!(error = %e, %instant, "a schedule's fire was refused; the instant is passed");
                }
            }
        }
        self.finish(&t, held, catch_up.next, fired).await;
    }

    async fn finish(
        &self,
        t: &TriggerRecord,
        due: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        fired: Option<DateTime<Utc>>,
    ) {
        match self
            .store
            .finish_schedule_fire(&t.id, &self.config.node_id, due, next, fired)
            .await
        {
            Ok(true) => {}
            // Paused or stopped meanwhile, or the claim lapsed and another
            // node took it: theirs to move on.
            Ok(false) => debug!("the schedule changed while it fired"),
            Err(e) => {
                warn!(error = %e, "recording a schedule's fire failed; it is fired again (same keys) when the claim lapses")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fire_is_keyed_by_trigger_and_instant_and_carries_the_instant() {
        let at: DateTime<Utc> = "2026-03-08T07:30:00Z".parse().expect("valid");
        assert_eq!(
            fire_key("trg_1", at),
            "schedule:trg_1:2026-03-08T07:30:00.000Z"
        );
        let config = ScheduleTrigger {
            cron: "30 2 * * *".into(),
            timezone: None,
            input: Some(json!({"batch": "daily", "trigger": "theirs"})),
            misfire: Default::default(),
            grace_seconds: None,
        };
        assert_eq!(
            fire_input(&config, "trg_1", at),
            json!({"batch": "daily", "trigger": {"id": "trg_1", "kind": "schedule",
                "scheduled_at": "2026-03-08T07:30:00.000Z"}})
        );
    }
}
