//! The segment runner: every node runs one. Each poll it
//!
//! - backfills the segments that need it (a new or changed expression),
//!   one claimed segment at a time, a batch of profiles per transaction,
//!   so a node that dies part way leaves the rest to the next claimer;
//! - reads, for each active `segment` trigger, the segment's entries (or
//!   exits) after the trigger's cursor, and starts the workflow for each
//!   subject under the key `segment:<trigger>:<change>` — once per entry,
//!   however often a change is read again — then moves the cursor on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use serde_json::{Map, Value, json};
use sojourn_persistence::{SegmentChange, Store, TriggerRecord};
use sojourn_runtime::triggers::{SegmentOn, SegmentTrigger, TriggerConfig, TriggerKind};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Config;
use crate::engine::{Launcher, StartRequest};
use crate::error::Error;
use crate::schedules::retryable;

/// Profiles per backfill transaction.
pub const BACKFILL_BATCH: u32 = 1_000;

/// Changes read per trigger per pass.
const CHANGES: u32 = 500;

pub(crate) struct SegmentRunner<S: Store> {
    pub store: Arc<S>,
    pub launcher: Launcher<S>,
    pub config: Config,
    /// Triggers whose cursor this node has opened.
    pub opened: Mutex<HashSet<String>>,
}

/// The idempotency key of the start for a change.
pub fn change_key(trigger_id: &str, change: i64) -> String {
    format!("segment:{trigger_id}:{change}")
}

fn start_input(config: &SegmentTrigger, trigger_id: &str, c: &SegmentChange) -> Value {
    let mut input = match &config.input {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    input.insert(
        "trigger".into(),
        json!({"id": trigger_id, "kind": "segment"}),
    );
    input.insert(
        "segment".into(),
        json!({"name": c.segment, "entered": c.entered, "change": c.id, "at": c.at}),
    );
    Value::Object(input)
}

impl<S: Store> SegmentRunner<S> {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.schedule_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.backfills(&shutdown).await {
                warn!(error = %e, "backfilling segments failed; trying again");
            }
            if let Err(e) = self.triggers(&shutdown).await {
                warn!(error = %e, "reading segment changes failed; trying again");
            }
        }
    }

    fn ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.schedule_claim_ttl)
            .unwrap_or(chrono::Duration::seconds(30))
    }

    async fn backfills(&self, shutdown: &CancellationToken) -> Result<(), Error> {
        let node = &self.config.node_id;
        let now = Utc::now();
        let claimed = self
            .store
            .claim_backfills(node, now, now + self.ttl(), 4)
            .await?;
        for (ns, name) in claimed {
            let span = info_span!("segment_backfill", namespace = %ns, segment = %name);
            async {
                let clock = Instant::now();
                let mut profiles = 0usize;
                while !shutdown.is_cancelled() {
                    let now = Utc::now();
                    match self
                        .store
                        .backfill_segment(&ns, &name, node, BACKFILL_BATCH, now, now + self.ttl())
                        .await?
                    {
                        Some(b) => {
                            profiles += b.profiles;
                            if b.done {
                                info!(
                                    profiles,
                                    seconds = clock.elapsed().as_secs_f64(),
                                    "segment backfilled"
                                );
                                break;
                            }
                        }
                        // Changed or taken meanwhile: its new claimer goes on.
                        None => break,
                    }
                }
                Ok::<(), Error>(())
            }
            .instrument(span)
            .await?;
        }
        Ok(())
    }

    async fn triggers(&self, shutdown: &CancellationToken) -> Result<(), Error> {
        let active = self.store.active_triggers(TriggerKind::Segment).await?;
        if active.is_empty() {
            return Ok(());
        }
        let mut configs: Vec<(TriggerRecord, SegmentTrigger)> = Vec::with_capacity(active.len());
        for t in active {
            match t.typed_config() {
                Ok(TriggerConfig::Segment(c)) => configs.push((t, c)),
                Ok(other) => {
                    warn!(trigger.id = %t.id, "a segment trigger with a {} configuration; passed over", other.kind())
                }
                Err(e) => {
                    warn!(trigger.id = %t.id, error = %e, "a segment trigger's stored configuration is invalid; passed over")
                }
            }
        }
        // A cursor opens where the segment is when this node first sees
        // the trigger active (the first node to do so wins).
        let to_open: Vec<(String, String, String)> = {
            let opened = self
                .opened
                .lock()
                .map_err(|_| Error::Unavailable("poisoned".into()))?;
            configs
                .iter()
                .filter(|(t, _)| !opened.contains(&t.id))
                .map(|(t, c)| (t.id.clone(), t.namespace.clone(), c.segment.clone()))
                .collect()
        };
        for (id, ns, segment) in to_open {
            self.store
                .open_segment_cursor(&id, &ns, &segment, false)
                .await?;
            if let Ok(mut opened) = self.opened.lock() {
                opened.insert(id);
            }
        }
        let ids: Vec<String> = configs.iter().map(|(t, _)| t.id.clone()).collect();
        let node = &self.config.node_id;
        let now = Utc::now();
        let cursors = self
            .store
            .claim_segment_cursors(&ids, node, now, now + self.ttl())
            .await?;
        for cursor in cursors {
            if shutdown.is_cancelled() {
                break;
            }
            let Some((t, c)) = configs.iter().find(|(t, _)| t.id == cursor.trigger_id) else {
                continue;
            };
            let span = info_span!("segment_trigger", trigger.id = %t.id, segment = %c.segment);
            self.follow(t, c, cursor.last_change)
                .instrument(span)
                .await?;
        }
        Ok(())
    }

    /// Starts the workflow for each change after `last`, then moves the
    /// cursor to the last one handled.
    async fn follow(&self, t: &TriggerRecord, c: &SegmentTrigger, last: i64) -> Result<(), Error> {
        let changes = self
            .store
            .segment_changes(&t.namespace, &c.segment, last, CHANGES)
            .await?;
        let mut reached = last;
        for change in &changes {
            let wanted = match c.on {
                SegmentOn::Enter => change.entered,
                SegmentOn::Leave => !change.entered,
            };
            if wanted {
                let req = StartRequest {
                    namespace: Some(t.namespace.clone()),
                    workflow: t.workflow_id.clone(),
                    version: None,
                    input: start_input(c, &t.id, change),
                    subject: Some(change.subject.clone()),
                    timezone: None,
                    idempotency_key: Some(change_key(&t.id, change.id)),
                };
                match self.launcher.start_execution(req).await {
                    Ok(started) => {
                        debug!(execution.id = %started.id, new = started.new, subject = %change.subject, "segment change started a journey");
                    }
                    // Tried again (same key) when the claim lapses.
                    Err(e) if retryable(&e) => {
                        warn!(error = %e, "a segment trigger's start failed; tried again");
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, subject = %change.subject, "a segment change cannot start the workflow; passed over");
                    }
                }
            }
            reached = change.id;
        }
        if reached > last {
            let until = Utc::now() + self.ttl();
            if !self
                .store
                .advance_segment_cursor(&t.id, &self.config.node_id, reached, until)
                .await?
            {
                debug!("the cursor was taken meanwhile");
            }
        }
        Ok(())
    }
}
