//! Supervision: an execution whose transitions cannot be committed (here, a
//! store that refuses them) fails its actor; the supervisor restarts it from
//! its last committed snapshot with backoff and, when it keeps failing,
//! marks it failed with the reason recorded — while the rest of the node
//! carries on.

use sojourn_persistence::DeadLetter;
use sojourn_runtime::triggers::{Move, TriggerKind};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sojourn_actors::{Config, Engine, StartRequest};
use sojourn_persistence::{
    ApiKeyRecord, AttemptBegin, AttemptRef, Commit, CommitResult, Created, DeliveryQuery,
    DeliveryRecord, DeliveryStore, DueTimer, Error, ExecutionQuery, ExecutionRecord,
    ExecutionStore, ExecutionSummary, FinishedAttempt, InboxItem, JournalRow, KeyStore, NewApiKey,
    NewDelivery, NewExecution, NewTrigger, NewWorkflow, NodeExecutionRow, OutboxMessage,
    OutboxStore, SqliteStore, TimerStore, TriggerRecord, TriggerStore, VersionSummary,
    WorkflowQuery, WorkflowRecord, WorkflowStore, WorkflowVersion,
};
use sojourn_runtime::{ExecutionId, Input, Status, Workflow};

/// A real SQLite store that refuses to commit any batch holding a live
/// transition of an execution whose input says `"poison": true`.
#[derive(Clone)]
struct Flaky(SqliteStore);

fn poisoned(c: &Commit<'_>) -> bool {
    c.transition.snapshot.input.get("poison") == Some(&json!(true))
        && c.transition.snapshot.status != Status::Failed
}

impl WorkflowStore for Flaky {
    async fn create_workflow(&self, new: NewWorkflow) -> Result<WorkflowRecord, Error> {
        self.0.create_workflow(new).await
    }
    async fn get_workflow(&self, ns: &str, id: &str) -> Result<Option<WorkflowRecord>, Error> {
        self.0.get_workflow(ns, id).await
    }
    async fn publish(
        &self,
        id: &str,
        wf: &Workflow,
        pins: &sojourn_persistence::Pins,
        now: DateTime<Utc>,
    ) -> Result<WorkflowVersion, Error> {
        self.0.publish(id, wf, pins, now).await
    }
    async fn publish_if_changed(
        &self,
        id: &str,
        wf: &Workflow,
        pins: &sojourn_persistence::Pins,
        now: DateTime<Utc>,
    ) -> Result<(WorkflowVersion, bool), Error> {
        self.0.publish_if_changed(id, wf, pins, now).await
    }
    async fn get_version(
        &self,
        id: &str,
        v: Option<i32>,
    ) -> Result<Option<WorkflowVersion>, Error> {
        self.0.get_version(id, v).await
    }
    async fn list_workflows(&self, q: &WorkflowQuery) -> Result<Vec<WorkflowRecord>, Error> {
        self.0.list_workflows(q).await
    }
    async fn latest_versions(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WorkflowVersion>, Error> {
        self.0.latest_versions(after, limit).await
    }
    async fn update_draft(
        &self,
        ns: &str,
        id: &str,
        draft: &serde_json::Value,
        name: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<WorkflowRecord, Error> {
        self.0.update_draft(ns, id, draft, name, now).await
    }
    async fn archive_workflow(
        &self,
        ns: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<WorkflowRecord, Error> {
        self.0.archive_workflow(ns, id, now).await
    }
    async fn list_versions(&self, id: &str) -> Result<Vec<VersionSummary>, Error> {
        self.0.list_versions(id).await
    }
}

impl ExecutionStore for Flaky {
    async fn list_executions(&self, q: &ExecutionQuery) -> Result<Vec<ExecutionSummary>, Error> {
        self.0.list_executions(q).await
    }
    async fn execution_counts(
        &self,
        namespace: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, i64)>, Error> {
        self.0.execution_counts(namespace, since).await
    }
    async fn create_executions(&self, batch: &[NewExecution]) -> Result<Vec<Created>, Error> {
        self.0.create_executions(batch).await
    }
    async fn pending_executions(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ExecutionId>, Error> {
        self.0.pending_executions(before, limit).await
    }
    async fn load_execution(&self, id: &ExecutionId) -> Result<Option<ExecutionRecord>, Error> {
        self.0.load_execution(id).await
    }
    async fn activate(&self, id: &ExecutionId) -> Result<Option<ExecutionRecord>, Error> {
        self.0.activate(id).await
    }
    async fn activate_many(
        &self,
        ids: &[ExecutionId],
    ) -> Result<Vec<(ExecutionRecord, Vec<InboxItem>)>, Error> {
        self.0.activate_many(ids).await
    }
    async fn commit(&self, batch: &[Commit<'_>]) -> Result<Vec<CommitResult>, Error> {
        if batch.iter().any(poisoned) {
            return Err(Error::Invalid("injected failure: the disk said no".into()));
        }
        self.0.commit(batch).await
    }
    async fn journal(
        &self,
        id: &ExecutionId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<JournalRow>, Error> {
        self.0.journal(id, after, limit).await
    }
    async fn node_executions(&self, id: &ExecutionId) -> Result<Vec<NodeExecutionRow>, Error> {
        self.0.node_executions(id).await
    }
    async fn subscribers(
        &self,
        ns: &str,
        event: &str,
        key: &str,
    ) -> Result<Vec<ExecutionId>, Error> {
        self.0.subscribers(ns, event, key).await
    }
}

impl TimerStore for Flaky {
    async fn claim_due_timers(
        &self,
        owner: &str,
        due_before: DateTime<Utc>,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueTimer>, Error> {
        self.0
            .claim_due_timers(owner, due_before, now, claim_until, limit)
            .await
    }
    async fn defer_timers(
        &self,
        owner: &str,
        timers: &[(ExecutionId, sojourn_runtime::TimerId)],
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        self.0.defer_timers(owner, timers, at).await
    }
    async fn release_claims(&self, owner: &str) -> Result<(), Error> {
        self.0.release_claims(owner).await
    }
    async fn claim_owners(&self) -> Result<Vec<String>, Error> {
        self.0.claim_owners().await
    }
    async fn pending_timers(&self) -> Result<i64, Error> {
        self.0.pending_timers().await
    }
}

impl OutboxStore for Flaky {
    async fn claim_outbox(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, Error> {
        self.0.claim_outbox(owner, now, claim_until, limit).await
    }
    async fn ack_outbox(&self, ids: &[i64]) -> Result<(), Error> {
        self.0.ack_outbox(ids).await
    }
    async fn begin_attempts(
        &self,
        attempts: &[AttemptRef<'_>],
    ) -> Result<Vec<AttemptBegin>, Error> {
        self.0.begin_attempts(attempts).await
    }
    async fn finish_attempts(
        &self,
        done: &[FinishedAttempt<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>, Error> {
        self.0.finish_attempts(done, now).await
    }
    async fn enqueue_input(
        &self,
        id: &ExecutionId,
        input: &Input,
        now: DateTime<Utc>,
    ) -> Result<i64, Error> {
        self.0.enqueue_input(id, input, now).await
    }
    async fn pending_inputs(&self, id: &ExecutionId) -> Result<Vec<InboxItem>, Error> {
        self.0.pending_inputs(id).await
    }
    async fn discard_input(
        &self,
        inbox_id: i64,
        epoch: sojourn_persistence::LeaseEpoch,
    ) -> Result<bool, Error> {
        self.0.discard_input(inbox_id, epoch).await
    }
    async fn executions_with_inputs(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ExecutionId>, Error> {
        self.0.executions_with_inputs(older_than, limit).await
    }
}

impl TriggerStore for Flaky {
    async fn create_trigger(&self, t: NewTrigger) -> Result<TriggerRecord, Error> {
        self.0.create_trigger(t).await
    }
    async fn get_trigger(&self, ns: &str, id: &str) -> Result<Option<TriggerRecord>, Error> {
        self.0.get_trigger(ns, id).await
    }
    async fn list_triggers(
        &self,
        ns: &str,
        workflow: Option<&str>,
    ) -> Result<Vec<TriggerRecord>, Error> {
        self.0.list_triggers(ns, workflow).await
    }
    async fn set_trigger_state(
        &self,
        ns: &str,
        id: &str,
        mv: Move,
        next: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<TriggerRecord>, Error> {
        self.0.set_trigger_state(ns, id, mv, next, now).await
    }
    async fn claim_due_schedules(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TriggerRecord>, Error> {
        self.0.claim_due_schedules(owner, now, until, limit).await
    }
    async fn advance_schedule(
        &self,
        id: &str,
        owner: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<bool, Error> {
        self.0.advance_schedule(id, owner, from, to).await
    }
    async fn active_triggers(&self, kind: TriggerKind) -> Result<Vec<TriggerRecord>, Error> {
        self.0.active_triggers(kind).await
    }
    async fn add_dead_letter(&self, l: &DeadLetter) -> Result<bool, Error> {
        self.0.add_dead_letter(l).await
    }
    async fn dead_letters(
        &self,
        ns: &str,
        trigger: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, Error> {
        self.0.dead_letters(ns, trigger, limit).await
    }
    async fn finish_schedule_fire(
        &self,
        id: &str,
        owner: &str,
        due: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        fired: Option<DateTime<Utc>>,
    ) -> Result<bool, Error> {
        self.0
            .finish_schedule_fire(id, owner, due, next, fired)
            .await
    }
    async fn api_trigger(&self, ns: &str, path: &str) -> Result<Option<TriggerRecord>, Error> {
        self.0.api_trigger(ns, path).await
    }
}

impl KeyStore for Flaky {
    async fn create_api_key(&self, key: NewApiKey) -> Result<ApiKeyRecord, Error> {
        self.0.create_api_key(key).await
    }
    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, Error> {
        self.0.api_key_by_hash(hash).await
    }
    async fn list_api_keys(&self, ns: &str) -> Result<Vec<ApiKeyRecord>, Error> {
        self.0.list_api_keys(ns).await
    }
    async fn revoke_api_key(
        &self,
        ns: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<ApiKeyRecord, Error> {
        self.0.revoke_api_key(ns, id, now).await
    }
}

impl sojourn_persistence::RegistryStore for Flaky {
    async fn put_definition(
        &self,
        ns: &str,
        name: &str,
        def: &sojourn_runtime::Definition,
        now: DateTime<Utc>,
    ) -> Result<(sojourn_persistence::RegistryEntry, bool), Error> {
        self.0.put_definition(ns, name, def, now).await
    }
    async fn get_definition(
        &self,
        ns: &str,
        name: &str,
        version: Option<i32>,
    ) -> Result<Option<sojourn_persistence::RegistryEntry>, Error> {
        self.0.get_definition(ns, name, version).await
    }
    async fn list_definitions(
        &self,
        ns: &str,
    ) -> Result<Vec<sojourn_persistence::RegistryEntry>, Error> {
        self.0.list_definitions(ns).await
    }
    async fn list_definition_versions(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Vec<sojourn_persistence::RegistryVersion>, Error> {
        self.0.list_definition_versions(ns, name).await
    }
    async fn delete_definition(
        &self,
        ns: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        self.0.delete_definition(ns, name, now).await
    }
    async fn set_enabled(
        &self,
        ns: &str,
        name: &str,
        builtin: Option<sojourn_runtime::Kind>,
        enabled: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<sojourn_persistence::RegistryEntry>, Error> {
        self.0.set_enabled(ns, name, builtin, enabled, now).await
    }
    async fn disabled_definitions(&self, ns: Option<&str>) -> Result<Vec<(String, String)>, Error> {
        self.0.disabled_definitions(ns).await
    }
    async fn execution_namespace(&self, id: &str) -> Result<Option<String>, Error> {
        self.0.execution_namespace(id).await
    }
    async fn pinned_definitions(
        &self,
        workflow_id: &str,
        pins: &sojourn_persistence::Pins,
    ) -> Result<Vec<(String, i32, sojourn_runtime::Definition)>, Error> {
        self.0.pinned_definitions(workflow_id, pins).await
    }
}

impl sojourn_persistence::AnalyticsStore for Flaky {
    async fn rollup_journal(&self, limit: u32) -> Result<Option<u64>, Error> {
        self.0.rollup_journal(limit).await
    }
    async fn record_conversions(
        &self,
        ns: &str,
        event: &str,
        key: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, Error> {
        self.0.record_conversions(ns, event, key, at).await
    }
    async fn rollup_conversions(&self, limit: u32) -> Result<Option<u64>, Error> {
        self.0.rollup_conversions(limit).await
    }
    async fn retention(
        &self,
        ns: &str,
    ) -> Result<Option<sojourn_persistence::RetentionPolicy>, Error> {
        self.0.retention(ns).await
    }
    async fn set_retention(
        &self,
        ns: &str,
        policy: &sojourn_persistence::RetentionPolicy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), Error> {
        self.0.set_retention(ns, policy, now).await
    }
    async fn sweep_retention(
        &self,
        batch: u32,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Option<sojourn_persistence::Swept>>, Error> {
        self.0.sweep_retention(batch, now).await
    }
    async fn rollup_deliveries(&self, limit: u32) -> Result<Option<u64>, Error> {
        self.0.rollup_deliveries(limit).await
    }
    async fn delivery_totals(
        &self,
        ns: &str,
        workflow_id: Option<&str>,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<sojourn_persistence::DeliveryTotal>, Error> {
        self.0
            .delivery_totals(ns, workflow_id, from_day, to_day)
            .await
    }
    async fn failing_nodes(
        &self,
        ns: &str,
        workflow_id: Option<&str>,
        from_day: &str,
        to_day: &str,
        limit: u32,
    ) -> Result<Vec<sojourn_persistence::FailingNode>, Error> {
        self.0
            .failing_nodes(ns, workflow_id, from_day, to_day, limit)
            .await
    }
    async fn analytics_counts(
        &self,
        ns: &str,
        workflow_id: &str,
        version: Option<i32>,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<sojourn_persistence::AnalyticsRow>, Error> {
        self.0
            .analytics_counts(ns, workflow_id, version, from_day, to_day)
            .await
    }
    async fn analytics_totals(
        &self,
        ns: &str,
        workflow_id: &str,
        version: Option<i32>,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<sojourn_persistence::AnalyticsRow>, Error> {
        self.0
            .analytics_totals(ns, workflow_id, version, from_day, to_day)
            .await
    }
    async fn current_positions(
        &self,
        ns: &str,
        workflow_id: &str,
        version: Option<i32>,
    ) -> Result<Vec<(Option<String>, String, i64)>, Error> {
        self.0.current_positions(ns, workflow_id, version).await
    }
}

impl DeliveryStore for Flaky {
    async fn add_deliveries(&self, batch: &[NewDelivery]) -> Result<(), Error> {
        self.0.add_deliveries(batch).await
    }
    async fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<DeliveryRecord>, Error> {
        self.0.list_deliveries(q).await
    }
    async fn apply_delivery_report(
        &self,
        provider: &str,
        scope: &str,
        receipt: &str,
        updates: &[(String, String)],
        at: DateTime<Utc>,
    ) -> Result<Option<u64>, Error> {
        self.0
            .apply_delivery_report(provider, scope, receipt, updates, at)
            .await
    }
    async fn mark_unsubscribed(
        &self,
        ns: &str,
        idempotency_key: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, Error> {
        self.0.mark_unsubscribed(ns, idempotency_key, at).await
    }
}

impl sojourn_persistence::AudienceStore for Flaky {
    async fn write_profiles(
        &self,
        ns: &str,
        patches: &[(String, sojourn_persistence::ProfilePatch)],
        replace: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<sojourn_persistence::ProfileRecord>, Error> {
        self.0.write_profiles(ns, patches, replace, now).await
    }
    async fn get_profile(
        &self,
        ns: &str,
        subject: &str,
    ) -> Result<Option<sojourn_persistence::ProfileRecord>, Error> {
        self.0.get_profile(ns, subject).await
    }
    async fn list_profiles(
        &self,
        ns: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<sojourn_persistence::ProfileRecord>, Error> {
        self.0.list_profiles(ns, after, limit).await
    }
    async fn erase_profile(
        &self,
        ns: &str,
        subject: &str,
    ) -> Result<sojourn_persistence::Erased, Error> {
        self.0.erase_profile(ns, subject).await
    }
    async fn add_suppressions(
        &self,
        rows: &[sojourn_persistence::Suppression],
    ) -> Result<(), Error> {
        self.0.add_suppressions(rows).await
    }
    async fn remove_suppression(
        &self,
        ns: &str,
        channel: &str,
        address: &str,
    ) -> Result<bool, Error> {
        self.0.remove_suppression(ns, channel, address).await
    }
    async fn resubscribe(&self, ns: &str, channel: &str, address: &str) -> Result<bool, Error> {
        self.0.resubscribe(ns, channel, address).await
    }
    async fn list_suppressions(
        &self,
        ns: &str,
        channel: Option<&str>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<sojourn_persistence::Suppression>, Error> {
        self.0.list_suppressions(ns, channel, after, limit).await
    }
    async fn put_frequency_caps(
        &self,
        ns: &str,
        caps: &[sojourn_persistence::FrequencyCap],
    ) -> Result<(), Error> {
        self.0.put_frequency_caps(ns, caps).await
    }
    async fn frequency_caps(
        &self,
        ns: &str,
    ) -> Result<Vec<sojourn_persistence::FrequencyCap>, Error> {
        self.0.frequency_caps(ns).await
    }
    async fn audience_of(
        &self,
        channel: &str,
        executions: &[&str],
        addresses: &[String],
    ) -> Result<sojourn_persistence::AudienceFacts, Error> {
        self.0.audience_of(channel, executions, addresses).await
    }
    async fn reserve_sends(
        &self,
        ns: &str,
        caps: &[sojourn_persistence::FrequencyCap],
        scopes: &[sojourn_persistence::CapScope],
        requests: &[sojourn_persistence::CapRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<sojourn_persistence::CapVerdict>, Error> {
        self.0.reserve_sends(ns, caps, scopes, requests, now).await
    }
    async fn release_sends(&self, ns: &str, sends: &[(String, String)]) -> Result<(), Error> {
        self.0.release_sends(ns, sends).await
    }
}

impl sojourn_persistence::SegmentStore for Flaky {
    async fn put_segment(
        &self,
        ns: &str,
        name: &str,
        def: &sojourn_persistence::SegmentDef,
        now: DateTime<Utc>,
    ) -> Result<sojourn_persistence::SegmentRecord, Error> {
        self.0.put_segment(ns, name, def, now).await
    }
    async fn get_segment(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<sojourn_persistence::SegmentRecord>, Error> {
        self.0.get_segment(ns, name).await
    }
    async fn list_segments(
        &self,
        ns: &str,
    ) -> Result<Vec<sojourn_persistence::SegmentRecord>, Error> {
        self.0.list_segments(ns).await
    }
    async fn delete_segment(&self, ns: &str, name: &str) -> Result<bool, Error> {
        self.0.delete_segment(ns, name).await
    }
    async fn segment_members(
        &self,
        ns: &str,
        name: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, Error> {
        self.0.segment_members(ns, name, after, limit).await
    }
    async fn segments_of(
        &self,
        ns: &str,
        subject: &str,
    ) -> Result<std::collections::BTreeSet<String>, Error> {
        self.0.segments_of(ns, subject).await
    }
    async fn segments_of_execution(
        &self,
        id: &str,
    ) -> Result<std::collections::BTreeSet<String>, Error> {
        self.0.segments_of_execution(id).await
    }
    async fn claim_backfills(
        &self,
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, Error> {
        self.0.claim_backfills(node, now, until, limit).await
    }
    async fn backfill_segment(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        batch: u32,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<sojourn_persistence::Backfilled>, Error> {
        self.0
            .backfill_segment(ns, name, node, batch, now, until)
            .await
    }
    async fn segment_changes(
        &self,
        ns: &str,
        segment: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<sojourn_persistence::SegmentChange>, Error> {
        self.0.segment_changes(ns, segment, after, limit).await
    }
    async fn open_segment_cursor(
        &self,
        trigger: &str,
        ns: &str,
        segment: &str,
        reset: bool,
    ) -> Result<(), Error> {
        self.0
            .open_segment_cursor(trigger, ns, segment, reset)
            .await
    }
    async fn claim_segment_cursors(
        &self,
        triggers: &[String],
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<sojourn_persistence::SegmentCursor>, Error> {
        self.0
            .claim_segment_cursors(triggers, node, now, until)
            .await
    }
    async fn advance_segment_cursor(
        &self,
        trigger: &str,
        node: &str,
        last: i64,
        until: DateTime<Utc>,
    ) -> Result<bool, Error> {
        self.0
            .advance_segment_cursor(trigger, node, last, until)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_execution_is_restarted_then_marked_failed_and_the_rest_carries_on() {
    let path = std::env::temp_dir().join(format!(
        "sojourn-supervision-{}.db",
        uuid::Uuid::now_v7().simple()
    ));
    let store = Flaky(SqliteStore::open(&path).await.expect("open"));
    let config = Config {
        timer_poll: Duration::from_millis(100),
        max_restarts: 3,
        egress: sojourn_actors::egress::EgressPolicy::allowing_loopback(),
        ..Config::default()
    };
    let engine = Engine::start(store.clone(), config).await.expect("engine");
    let workflow = Workflow::from_value(json!({
        "key": "nap",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "nap", "type": "delay", "config": {"duration": "1s"}},
            {"id": "end", "type": "exit"},
        ],
        "edges": [{"from": "start", "to": "nap"}, {"from": "nap", "to": "end"}]
    }))
    .expect("workflow");
    engine.deploy(&workflow).await.expect("deploy");
    let start = |input| StartRequest {
        workflow: "nap".into(),
        input,
        ..StartRequest::default()
    };
    let poison = engine
        .start_execution(start(json!({"poison": true})))
        .await
        .expect("start")
        .id;
    // Give the poisoned one a head start so healthy ones rarely share its batch.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut healthy = Vec::new();
    for i in 0..5 {
        healthy.push(
            engine
                .start_execution(start(json!({"n": i})))
                .await
                .expect("start")
                .id,
        );
    }

    let mut failed = None;
    for _ in 0..200 {
        let rec = engine
            .execution(&poison)
            .await
            .expect("load")
            .expect("exists");
        if rec.status == Status::Failed {
            failed = Some(rec);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = failed.expect("the poisoned execution is eventually marked failed");
    let error = failed.snapshot.error.expect("error recorded");
    assert!(error.message.contains("kept failing"), "{}", error.message);
    assert!(
        error.message.contains("the disk said no"),
        "{}",
        error.message
    );
    let stats = engine.stats().snapshot();
    assert!(
        stats.restarts >= 3,
        "restarted with backoff before giving up: {stats:?}"
    );

    // The healthy ones, restarted from their snapshots if they shared a
    // failing batch, all finish.
    for id in &healthy {
        let mut done = false;
        for _ in 0..100 {
            if engine
                .execution(id)
                .await
                .expect("load")
                .is_some_and(|r| r.status == Status::Completed)
            {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(done, "healthy execution {id} did not complete");
    }
    engine.shutdown().await;
    let _ = std::fs::remove_file(&path);
}
