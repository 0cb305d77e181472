//! The conformance suite: every test runs against PostgreSQL (a fresh schema
//! each, on the server at `SOJOURN_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and against SQLite (a fresh
//! file each). Both stores must behave the same.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use sojourn_persistence::{
    AttemptBegin, AttemptRef, Claim, Commit, CommitResult, Created, Error, ExecutionQuery,
    FinishedAttempt, LeaseEpoch, NewApiKey, NewExecution, NewTrigger, NewWorkflow, PgStore, Pins,
    SqliteStore, Store, WorkflowQuery, WorkflowVersion, ids,
};
use sojourn_persistence::{
    CapRequest, CapScope, CapVerdict, DeliveryQuery, FrequencyCap, NewDelivery, OnCap,
    ProfilePatch, SegmentDef, Suppression,
};
use sojourn_runtime::triggers::{Move, TriggerConfig, TriggerKind, TriggerState};
use sojourn_runtime::{
    ActionOutcome, CompiledWorkflow, Effect, EventInput, ExecutionId, Input, Registry, Snapshot,
    Status, TimerId, Transition, Workflow,
};

// ---- fixtures ---------------------------------------------------------------

fn database_url() -> String {
    std::env::var("SOJOURN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// A PostgreSQL store in a schema of its own, dropped at the end.
struct PgDb {
    store: PgStore,
    schema: String,
}

async fn pg() -> PgDb {
    let admin = sqlx::PgPool::connect(&database_url())
        .await
        .expect("PostgreSQL answers at SOJOURN_TEST_DATABASE_URL (scripts/test.sh starts it)");
    CLEANED
        .get_or_init(|| async {
            // Schemas left behind by a run that panicked.
            let stale: Vec<String> = sqlx::query_scalar(
                "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'sojourn_test_%'",
            )
            .fetch_all(&admin)
            .await
            .expect("list schemas");
            for s in stale {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {s} CASCADE"
                )))
                .execute(&admin)
                .await;
            }
        })
        .await;
    let schema = format!("sojourn_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    let store = PgStore::connect(&database_url(), Some(&schema), 4)
        .await
        .expect("connect and migrate");
    PgDb { store, schema }
}

impl PgDb {
    async fn drop_schema(self) {
        self.store.pool().close().await;
        let admin = sqlx::PgPool::connect(&database_url())
            .await
            .expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&admin)
        .await
        .expect("drop schema");
    }
}

async fn sqlite() -> (SqliteStore, std::path::PathBuf) {
    let path =
        std::env::temp_dir().join(format!("sojourn-test-{}.db", uuid::Uuid::now_v7().simple()));
    let store = SqliteStore::open(&path).await.expect("open sqlite");
    (store, path)
}

fn remove_sqlite(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::pg().await;
                    super::$name(&db.store).await;
                    db.drop_schema().await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, path) = super::sqlite().await;
                    super::$name(&store).await;
                    store.pool().close().await;
                    super::remove_sqlite(&path);
                }
            )*
        }
    };
}

conformance!(
    the_journal_rolls_up_to_a_direct_count_killed_mid_run_or_not,
    deliveries_roll_up_per_channel_and_provider_as_their_status_moves,
    conversions_count_once_within_the_goal_window_with_the_holdout_apart,
    retention_deletes_only_old_counted_records_of_finished_executions,
    the_registry_versions_definitions_and_published_versions_pin_them,
    workflows_and_immutable_versions,
    json_numbers_at_the_edges_of_f64_read_back_as_written,
    executions_are_idempotent_per_key,
    a_journey_runs_to_the_end_through_the_store,
    stale_epochs_are_fenced_and_write_nothing,
    group_commit_isolates_fenced_executions,
    two_steps_of_one_execution_in_one_batch_apply_in_order,
    timers_are_claimed_once_and_reclaimed_after_expiry,
    subscriptions_follow_waits_and_vanish_when_finished,
    outbox_claims_expire_and_count_deliveries,
    the_inbox_is_consumed_by_the_commit_that_applies_it,
    attempts_are_recorded_before_sending_and_redeliveries_of_finished_ones_dropped,
    pending_executions_are_found_for_recovery_and_batches_create_idempotently,
    attempts_begin_and_finish_in_batches,
    workflows_are_listed_newest_first_edited_and_archived,
    versions_are_listed_oldest_first,
    executions_are_listed_newest_first_by_filter_and_cursor,
    api_keys_are_found_by_hash_until_revoked,
    trigger_paths_are_unique_among_live_triggers_of_a_namespace,
    trigger_states_move_only_from_the_states_allowed,
    a_due_schedule_is_claimed_by_one_node_until_it_fires_or_the_claim_lapses,
    dead_letters_are_kept_once_per_message_and_active_triggers_listed_by_kind,
    max_entries_limit_the_executions_of_a_subject,
    max_entries_hold_when_creators_race_for_the_last_entry,
    an_unchanged_document_is_published_once,
    a_commit_claims_its_actions_and_near_timers_for_its_node,
    deliveries_are_logged_once_per_attempt_and_provider_and_listed_by_filter,
    latest_versions_span_namespaces_and_leave_archived_workflows_out,
    profiles_merge_replace_list_and_erase,
    the_audience_of_a_batch_is_read_at_once_and_bounces_suppress,
    caps_count_each_send_once_and_never_let_two_writers_past,
    a_workflows_own_caps_decide_its_sends_and_keep_what_they_count,
    segments_backfill_then_follow_profile_writes_and_record_each_change,
);

// ---- helpers ------------------------------------------------------------------

fn t0() -> DateTime<Utc> {
    "2026-11-22T10:00:00Z".parse().expect("ts")
}

/// action → delay 1s → condition → action → exit, the reference journey,
/// plus a wait_for_event branch and an exit criterion.
fn reference_workflow() -> Workflow {
    Workflow::from_value(json!({
        "key": "reference",
        "settings": {"exit_criteria": [{"event": "unsubscribed"}]},
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "first", "type": "action", "config": {"action": "http.request",
                "inputs": {"url": "http://127.0.0.1:1/first", "body": {"$expr": "input"}}}},
            {"id": "nap", "type": "delay", "config": {"duration": "1s"}},
            {"id": "check", "type": "condition", "config": {"expression": "nodes.first.output.status == 200"}},
            {"id": "second", "type": "action", "config": {"action": "http.request",
                "inputs": {"url": "http://127.0.0.1:1/second"}}},
            {"id": "wait", "type": "wait_for_event", "config": {"event": "paid", "timeout": "1h"}},
            {"id": "done", "type": "exit", "config": {"outcome": "done"}},
            {"id": "other", "type": "exit", "config": {"outcome": "other"}},
        ],
        "edges": [
            {"from": "start", "to": "first"},
            {"from": "first", "to": "nap", "branch": "success"},
            {"from": "nap", "to": "check"},
            {"from": "check", "to": "second", "branch": "true"},
            {"from": "check", "to": "wait", "branch": "false"},
            {"from": "second", "to": "done", "branch": "success"},
            {"from": "wait", "to": "done", "branch": "event"},
            {"from": "wait", "to": "other", "branch": "timeout"},
        ]
    }))
    .expect("parses")
}

struct Fixture {
    wf: CompiledWorkflow,
    workflow_id: String,
    version: i32,
    namespace: String,
}

async fn fixture<S: Store>(store: &S) -> Fixture {
    fixture_keyed(store, "reference").await
}

/// The reference workflow, published under another key.
async fn fixture_keyed<S: Store>(store: &S, key: &str) -> Fixture {
    fixture_of(store, "default", key, reference_workflow()).await
}

/// `workflow`, published under `key` in `namespace`.
async fn fixture_of<S: Store>(
    store: &S,
    namespace: &str,
    key: &str,
    workflow: Workflow,
) -> Fixture {
    let rec = store
        .create_workflow(NewWorkflow {
            id: ids::new_workflow_id(),
            namespace: namespace.into(),
            key: key.into(),
            name: None,
            draft: serde_json::to_value(&workflow).expect("json"),
            now: t0(),
        })
        .await
        .expect("create workflow");
    let v = store
        .publish(&rec.id, &workflow, &Pins::new(), t0())
        .await
        .expect("publish");
    Fixture {
        wf: CompiledWorkflow::compile(&workflow, &Registry::builtin()).expect("compiles"),
        workflow_id: rec.id,
        version: v.version,
        namespace: namespace.into(),
    }
}

/// An execution handled by hand: the in-memory snapshot, its epoch.
struct Exec {
    id: ExecutionId,
    snap: Snapshot,
    epoch: LeaseEpoch,
}

async fn start<S: Store>(store: &S, f: &Fixture, subject: Option<&str>, key: Option<&str>) -> Exec {
    start_at(store, f, subject, key, t0()).await
}

/// [`start`], created at `at`.
async fn start_at<S: Store>(
    store: &S,
    f: &Fixture,
    subject: Option<&str>,
    key: Option<&str>,
    at: DateTime<Utc>,
) -> Exec {
    let id = ids::new_execution_id();
    let snap =
        f.wf.new_execution(
            id.clone(),
            json!({"n": 1}),
            subject.map(Into::into),
            None,
            at,
        )
        .expect("new execution");
    let created = store
        .create_execution(NewExecution {
            namespace: f.namespace.clone(),
            workflow_id: f.workflow_id.clone(),
            version: f.version,
            idempotency_key: key.map(Into::into),
            max_entries: None,
            snapshot: snap,
        })
        .await
        .expect("create execution");
    let rec = store
        .activate(created.id().expect("created"))
        .await
        .expect("activate")
        .expect("exists");
    Exec {
        id: rec.id,
        snap: rec.snapshot,
        epoch: rec.lease_epoch,
    }
}

/// Steps and commits; returns the transition and its result.
async fn step<S: Store>(
    store: &S,
    f: &Fixture,
    e: &mut Exec,
    input: Input,
    now: DateTime<Utc>,
) -> (Transition, CommitResult) {
    let fired = match &input {
        Input::TimerFired { timer } => Some(timer.clone()),
        _ => None,
    };
    let t = f.wf.step(&e.snap, input, now).expect("step");
    let results = store
        .commit(&[Commit {
            execution_id: &e.id,
            epoch: e.epoch,
            transition: &t,
            fired_timer: fired.as_ref(),
            consumed_input: None,
            claim: None,
            consumed_outbox: None,
        }])
        .await
        .expect("commit");
    if results[0] == CommitResult::Committed {
        e.snap = t.snapshot.clone();
    }
    (t, results[0])
}

fn dispatches(t: &Transition) -> Vec<(String, u32)> {
    t.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch(d) => Some((d.node.to_string(), d.attempt)),
            _ => None,
        })
        .collect()
}

fn success(node: &str, attempt: u32, output: Value) -> Input {
    Input::ActionResult {
        node: node.into(),
        attempt,
        outcome: ActionOutcome::Success { output },
    }
}

async fn counts<S: Store>(store: &S, e: &Exec) -> (usize, usize) {
    let journal = store
        .journal(&e.id, 0, 10_000)
        .await
        .expect("journal")
        .len();
    let nodes = store.node_executions(&e.id).await.expect("nodes").len();
    (journal, nodes)
}

// ---- tests ------------------------------------------------------------------

/// What the API accepts it can read back: PostgreSQL prints jsonb numbers
/// in full (`-1.7976931348623157e308` as 309 digits), which must parse to
/// the same value (the API fuzzer found a workflow that could not).
async fn json_numbers_at_the_edges_of_f64_read_back_as_written<S: Store>(store: &S) {
    let draft = json!({
        "max": -1.797_693_134_862_315_7e308,
        "big": 5.586_712_853_076_766e193,
        "tiny": -1.112_536_929_253_600_7e-308,
        "small": -5.593_264_858_599_193e-89,
        "huge_int": 8.760_507_567_994_012e23,
        "u64": u64::MAX,
        "i64": i64::MIN
    });
    let w = store
        .create_workflow(NewWorkflow {
            id: ids::new_workflow_id(),
            namespace: "edges".into(),
            key: "edges".into(),
            name: None,
            draft: draft.clone(),
            now: t0(),
        })
        .await
        .expect("create");
    assert_eq!(w.draft, draft);
    let back = store
        .get_workflow("edges", "edges")
        .await
        .expect("read back")
        .expect("found");
    assert_eq!(back.draft, draft);
}

async fn workflows_and_immutable_versions<S: Store>(store: &S) {
    let f = fixture(store).await;
    let dup = store
        .create_workflow(NewWorkflow {
            id: ids::new_workflow_id(),
            namespace: "default".into(),
            key: "reference".into(),
            name: None,
            draft: json!({}),
            now: t0(),
        })
        .await;
    assert!(
        matches!(dup, Err(Error::Conflict { field: "key", .. })),
        "{dup:?}"
    );
    // The same key in another namespace is another workflow.
    let other = store
        .create_workflow(NewWorkflow {
            id: ids::new_workflow_id(),
            namespace: "acme".into(),
            key: "reference".into(),
            name: Some("Acme's".into()),
            draft: json!({"x": 1}),
            now: t0(),
        })
        .await
        .expect("other namespace");
    let by_key = store
        .get_workflow("default", "reference")
        .await
        .expect("get")
        .expect("found");
    assert_eq!(by_key.id, f.workflow_id);
    assert_eq!(by_key.latest_version, Some(1));
    let by_id = store
        .get_workflow("acme", &other.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(by_id.name.as_deref(), Some("Acme's"));
    assert!(
        store
            .get_workflow("acme", &f.workflow_id)
            .await
            .expect("get")
            .is_none(),
        "namespaces are isolated"
    );

    let mut changed = reference_workflow();
    changed.name = Some("second version".into());
    let v2 = store
        .publish(
            &f.workflow_id,
            &changed,
            &Pins::new(),
            t0() + Duration::hours(1),
        )
        .await
        .expect("publish");
    assert_eq!(v2.version, 2);
    let v1 = store
        .get_version(&f.workflow_id, Some(1))
        .await
        .expect("get")
        .expect("v1");
    assert_eq!(
        v1.definition,
        reference_workflow(),
        "a published version never changes"
    );
    let latest = store
        .get_version(&f.workflow_id, None)
        .await
        .expect("get")
        .expect("latest");
    assert_eq!(latest.version, 2);
    assert_eq!(latest.definition.name.as_deref(), Some("second version"));
    assert!(matches!(
        store
            .publish("wf_missing", &changed, &Pins::new(), t0())
            .await,
        Err(Error::NotFound { .. })
    ));
}

async fn executions_are_idempotent_per_key<S: Store>(store: &S) {
    let f = fixture(store).await;
    let a = start(store, &f, Some("u1"), Some("order-42")).await;
    let snap =
        f.wf.new_execution(ids::new_execution_id(), json!({}), None, None, t0())
            .expect("new");
    let again = store
        .create_execution(NewExecution {
            namespace: "default".into(),
            workflow_id: f.workflow_id.clone(),
            version: f.version,
            idempotency_key: Some("order-42".into()),
            max_entries: None,
            snapshot: snap,
        })
        .await
        .expect("create");
    assert_eq!(again, Created::Existing(a.id.clone()));
    let rec = store
        .load_execution(&a.id)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(rec.status, Status::Pending);
    assert_eq!(rec.subject.as_deref(), Some("u1"));
    assert_eq!(rec.idempotency_key.as_deref(), Some("order-42"));
    // Created at epoch 1 (its creator's), activated once more by `start`.
    assert_eq!(rec.lease_epoch, LeaseEpoch(2));
    assert!(
        store
            .load_execution(&ExecutionId::new("exe_nope"))
            .await
            .expect("load")
            .is_none()
    );
}

async fn a_journey_runs_to_the_end_through_the_store<S: Store>(store: &S) {
    let f = fixture(store).await;
    let mut e = start(store, &f, Some("u1"), None).await;
    let (t, r) = step(store, &f, &mut e, Input::Start, t0()).await;
    assert_eq!(r, CommitResult::Committed);
    assert_eq!(dispatches(&t), [("first".to_owned(), 1)]);

    // The outbox holds the dispatch, with its key.
    let msgs = store
        .claim_outbox("node-a", t0(), t0() + Duration::seconds(30), 10)
        .await
        .expect("claim");
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].dispatch.idempotency_key,
        format!("{}/first/1", e.id)
    );
    assert_eq!(msgs[0].dispatch.inputs["body"], json!({"n": 1}));
    store.ack_outbox(&[msgs[0].id]).await.expect("ack");

    let (_, r) = step(
        store,
        &f,
        &mut e,
        success("first", 1, json!({"status": 200})),
        t0(),
    )
    .await;
    assert_eq!(r, CommitResult::Committed);
    assert_eq!(store.pending_timers().await.expect("timers"), 1);
    // Not due yet, then due.
    let early = store
        .claim_due_timers("node-a", t0(), t0(), t0() + Duration::seconds(30), 10)
        .await
        .expect("claim");
    assert!(early.is_empty());
    let due = store
        .claim_due_timers(
            "node-a",
            t0() + Duration::seconds(2),
            t0(),
            t0() + Duration::seconds(30),
            10,
        )
        .await
        .expect("claim");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].execution_id, e.id);
    assert_eq!(due[0].due_at, t0() + Duration::seconds(1));

    let (t, _) = step(
        store,
        &f,
        &mut e,
        Input::TimerFired {
            timer: due[0].timer_id.clone(),
        },
        due[0].due_at,
    )
    .await;
    assert_eq!(dispatches(&t), [("second".to_owned(), 1)]);
    assert_eq!(
        store.pending_timers().await.expect("timers"),
        0,
        "the fired timer is consumed"
    );
    let (_, r) = step(
        store,
        &f,
        &mut e,
        success("second", 1, json!({"ok": true})),
        due[0].due_at,
    )
    .await;
    assert_eq!(r, CommitResult::Committed);

    let rec = store
        .load_execution(&e.id)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(rec.status, Status::Completed);
    assert_eq!(rec.snapshot.outcome.as_deref(), Some("done"));
    assert_eq!(rec.snapshot, e.snap);

    // The journal shows every step, in order, and pages.
    let journal = store.journal(&e.id, 0, 1000).await.expect("journal");
    let kinds: Vec<String> = journal
        .iter()
        .map(|j| {
            serde_json::to_value(&j.entry.event).expect("json")["type"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    let entered: Vec<String> = journal
        .iter()
        .filter_map(|j| match &j.entry.event {
            sojourn_runtime::JournalEvent::NodeEntered { node, .. } => Some(node.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        entered,
        ["start", "first", "nap", "check", "second", "done"]
    );
    assert_eq!(kinds.iter().filter(|k| *k == "input_received").count(), 4);
    assert_eq!(kinds.last().map(String::as_str), Some("completed"));
    let page = store.journal(&e.id, journal[2].id, 2).await.expect("page");
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].id, journal[3].id);

    let nodes = store.node_executions(&e.id).await.expect("nodes");
    let summary: Vec<(&str, i32, &str)> = nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.attempt, n.status.as_str()))
        .collect();
    assert_eq!(
        summary,
        [("first", 1, "succeeded"), ("second", 1, "succeeded")]
    );
    assert_eq!(nodes[0].output, Some(json!({"status": 200})));
    assert!(nodes[0].finished_at.is_some());
}

async fn stale_epochs_are_fenced_and_write_nothing<S: Store>(store: &S) {
    let f = fixture(store).await;
    let mut stale = start(store, &f, None, None).await;
    // Another activation takes over.
    let fresh = store
        .activate(&stale.id)
        .await
        .expect("activate")
        .expect("exists");
    assert_eq!(fresh.lease_epoch, LeaseEpoch(stale.epoch.0 + 1));
    let before = store
        .load_execution(&stale.id)
        .await
        .expect("load")
        .expect("exists");
    let (_, r) = step(store, &f, &mut stale, Input::Start, t0()).await;
    assert_eq!(r, CommitResult::Fenced);
    let after = store
        .load_execution(&stale.id)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(after.snapshot, before.snapshot);
    assert_eq!(after.updated_at, before.updated_at);
    assert_eq!(counts(store, &stale).await, (0, 0));
    assert!(
        store
            .claim_outbox("n", t0(), t0() + Duration::seconds(5), 10)
            .await
            .expect("claim")
            .is_empty()
    );

    // The fresh epoch commits; replaying the same step again is refused
    // (its seq is not newer than the stored one).
    let mut e = Exec {
        id: fresh.id.clone(),
        snap: fresh.snapshot.clone(),
        epoch: fresh.lease_epoch,
    };
    let (t, r) = step(store, &f, &mut e, Input::Start, t0()).await;
    assert_eq!(r, CommitResult::Committed);
    let replay = store
        .commit(&[Commit {
            execution_id: &e.id,
            epoch: e.epoch,
            transition: &t,
            fired_timer: None,
            consumed_input: None,
            claim: None,
            consumed_outbox: None,
        }])
        .await
        .expect("commit");
    assert_eq!(replay, [CommitResult::Fenced]);
    assert_eq!(store.node_executions(&e.id).await.expect("nodes").len(), 1);
}

async fn group_commit_isolates_fenced_executions<S: Store>(store: &S) {
    let f = fixture(store).await;
    let mut execs = Vec::new();
    for _ in 0..20 {
        execs.push(start(store, &f, None, None).await);
    }
    // Execution 7 is taken over by another activation.
    store.activate(&execs[7].id).await.expect("activate");
    let transitions: Vec<Transition> = execs
        .iter()
        .map(|e| f.wf.step(&e.snap, Input::Start, t0()).expect("step"))
        .collect();
    let batch: Vec<Commit<'_>> = execs
        .iter()
        .zip(&transitions)
        .map(|(e, t)| Commit {
            execution_id: &e.id,
            epoch: e.epoch,
            transition: t,
            fired_timer: None,
            consumed_input: None,
            claim: None,
            consumed_outbox: None,
        })
        .collect();
    let results = store.commit(&batch).await.expect("commit");
    for (i, r) in results.iter().enumerate() {
        let expected = if i == 7 {
            CommitResult::Fenced
        } else {
            CommitResult::Committed
        };
        assert_eq!(*r, expected, "execution {i}");
    }
    let msgs = store
        .claim_outbox("n", t0(), t0() + Duration::seconds(5), 100)
        .await
        .expect("claim");
    assert_eq!(msgs.len(), 19);
    assert!(msgs.iter().all(|m| m.execution_id != execs[7].id));
    assert_eq!(counts(store, &execs[7]).await, (0, 0));
    let rec = store
        .load_execution(&execs[3].id)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(rec.status, Status::Running);
}

async fn two_steps_of_one_execution_in_one_batch_apply_in_order<S: Store>(store: &S) {
    let f = fixture(store).await;
    let e = start(store, &f, None, None).await;
    let t1 = f.wf.step(&e.snap, Input::Start, t0()).expect("step");
    let t2 =
        f.wf.step(
            &t1.snapshot,
            success("first", 1, json!({"status": 500})),
            t0(),
        )
        .expect("step");
    let results = store
        .commit(&[
            Commit {
                execution_id: &e.id,
                epoch: e.epoch,
                transition: &t1,
                fired_timer: None,
                consumed_input: None,
                claim: None,
                consumed_outbox: None,
            },
            Commit {
                execution_id: &e.id,
                epoch: e.epoch,
                transition: &t2,
                fired_timer: None,
                consumed_input: None,
                claim: None,
                consumed_outbox: None,
            },
        ])
        .await
        .expect("commit");
    assert_eq!(results, [CommitResult::Committed, CommitResult::Committed]);
    let rec = store
        .load_execution(&e.id)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(rec.snapshot, t2.snapshot);
    assert_eq!(rec.status, Status::Waiting);
    assert_eq!(store.pending_timers().await.expect("timers"), 1);
}

async fn timers_are_claimed_once_and_reclaimed_after_expiry<S: Store>(store: &S) {
    let f = fixture(store).await;
    let mut all = Vec::new();
    for _ in 0..10 {
        let mut e = start(store, &f, None, None).await;
        step(store, &f, &mut e, Input::Start, t0()).await;
        step(
            store,
            &f,
            &mut e,
            success("first", 1, json!({"status": 200})),
            t0(),
        )
        .await;
        all.push(e);
    }
    assert_eq!(store.pending_timers().await.expect("timers"), 10);
    let horizon = t0() + Duration::seconds(5);
    let lease = t0() + Duration::seconds(30);
    let (a, b) = tokio::join!(
        store.claim_due_timers("node-a", horizon, t0(), lease, 6),
        store.claim_due_timers("node-b", horizon, t0(), lease, 6),
    );
    let (a, b) = (a.expect("claim a"), b.expect("claim b"));
    assert_eq!(a.len() + b.len(), 10, "every timer claimed exactly once");
    let mut seen: Vec<&ExecutionId> = a.iter().chain(&b).map(|t| &t.execution_id).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 10);
    // Held claims are not handed out again…
    let none = store
        .claim_due_timers("node-c", horizon, t0() + Duration::seconds(10), lease, 100)
        .await
        .expect("claim");
    assert!(none.is_empty());
    // …until they expire (the holder died).
    let again = store
        .claim_due_timers(
            "node-c",
            horizon,
            lease + Duration::seconds(1),
            lease + Duration::seconds(60),
            100,
        )
        .await
        .expect("claim");
    assert_eq!(again.len(), 10);
    // A timer handed back by its holder (its execution's node was
    // unreachable) is claimable again from the given time; another node's
    // deferral changes nothing.
    let back: Vec<(ExecutionId, TimerId)> = again[..3]
        .iter()
        .map(|t| (t.execution_id.clone(), t.timer_id.clone()))
        .collect();
    let soon = lease + Duration::seconds(5);
    store
        .defer_timers("node-a", &back, t0())
        .await
        .expect("defer by a non-holder");
    store
        .defer_timers("node-c", &back, soon)
        .await
        .expect("defer");
    let early = store
        .claim_due_timers("node-d", horizon, lease + Duration::seconds(2), soon, 100)
        .await
        .expect("claim");
    assert!(early.is_empty(), "{early:?}");
    let later = store
        .claim_due_timers(
            "node-d",
            horizon,
            soon + Duration::seconds(1),
            soon + Duration::seconds(60),
            100,
        )
        .await
        .expect("claim");
    let mut got: Vec<&ExecutionId> = later.iter().map(|t| &t.execution_id).collect();
    got.sort();
    let mut want: Vec<&ExecutionId> = back.iter().map(|(e, _)| e).collect();
    want.sort();
    assert_eq!(got, want);
}

async fn subscriptions_follow_waits_and_vanish_when_finished<S: Store>(store: &S) {
    let f = fixture(store).await;
    let mut e = start(store, &f, Some("u7"), None).await;
    step(store, &f, &mut e, Input::Start, t0()).await;
    // status 500: the condition is false, the execution waits for "paid".
    step(
        store,
        &f,
        &mut e,
        success("first", 1, json!({"status": 500})),
        t0(),
    )
    .await;
    let timer = e
        .snap
        .wait
        .as_ref()
        .and_then(|w| w.timer().cloned())
        .expect("delay timer");
    step(
        store,
        &f,
        &mut e,
        Input::TimerFired { timer },
        t0() + Duration::seconds(1),
    )
    .await;
    assert_eq!(
        store
            .subscribers("default", "paid", "u7")
            .await
            .expect("subs"),
        [e.id.clone()]
    );
    assert_eq!(
        store
            .subscribers("default", "unsubscribed", "u7")
            .await
            .expect("subs"),
        [e.id.clone()]
    );
    assert!(
        store
            .subscribers("default", "paid", "u8")
            .await
            .expect("subs")
            .is_empty()
    );
    assert!(
        store
            .subscribers("acme", "paid", "u7")
            .await
            .expect("subs")
            .is_empty()
    );

    let paid = Input::Event(EventInput {
        name: "paid".into(),
        key: Some("u7".into()),
        payload: json!({}),
    });
    let (_, r) = step(store, &f, &mut e, paid, t0() + Duration::seconds(5)).await;
    assert_eq!(r, CommitResult::Committed);
    assert_eq!(e.snap.status, Status::Completed);
    assert!(
        store
            .subscribers("default", "paid", "u7")
            .await
            .expect("subs")
            .is_empty()
    );
    assert!(
        store
            .subscribers("default", "unsubscribed", "u7")
            .await
            .expect("subs")
            .is_empty()
    );
    assert_eq!(
        store.pending_timers().await.expect("timers"),
        0,
        "the wait's timeout timer is gone"
    );
}

async fn outbox_claims_expire_and_count_deliveries<S: Store>(store: &S) {
    let f = fixture(store).await;
    let mut e = start(store, &f, None, None).await;
    step(store, &f, &mut e, Input::Start, t0()).await;
    let first = store
        .claim_outbox("a", t0(), t0() + Duration::seconds(10), 10)
        .await
        .expect("claim");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].deliveries, 1);
    assert!(
        store
            .claim_outbox(
                "b",
                t0() + Duration::seconds(5),
                t0() + Duration::seconds(15),
                10
            )
            .await
            .expect("claim")
            .is_empty()
    );
    let again = store
        .claim_outbox(
            "b",
            t0() + Duration::seconds(11),
            t0() + Duration::seconds(20),
            10,
        )
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, first[0].id);
    assert_eq!(again[0].deliveries, 2);
    assert_eq!(
        again[0].dispatch, first[0].dispatch,
        "a redelivery carries the same key and inputs"
    );
    store.ack_outbox(&[again[0].id]).await.expect("ack");
    assert!(
        store
            .claim_outbox(
                "c",
                t0() + Duration::seconds(60),
                t0() + Duration::seconds(90),
                10
            )
            .await
            .expect("claim")
            .is_empty()
    );
}

async fn the_inbox_is_consumed_by_the_commit_that_applies_it<S: Store>(store: &S) {
    let f = fixture(store).await;
    let mut e = start(store, &f, None, None).await;
    step(store, &f, &mut e, Input::Start, t0()).await;
    let input = Input::Pause {
        reason: Some("ops".into()),
    };
    let id = store
        .enqueue_input(&e.id, &input, t0())
        .await
        .expect("enqueue");
    store
        .enqueue_input(&e.id, &Input::Resume, t0())
        .await
        .expect("enqueue");
    let pending = store.pending_inputs(&e.id).await.expect("pending");
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].id, id);
    assert_eq!(pending[0].input, input);
    let t =
        f.wf.step(&e.snap, pending[0].input.clone(), t0())
            .expect("step");
    let r = store
        .commit(&[Commit {
            execution_id: &e.id,
            epoch: e.epoch,
            transition: &t,
            fired_timer: None,
            consumed_input: Some(id),
            claim: None,
            consumed_outbox: None,
        }])
        .await
        .expect("commit");
    assert_eq!(r, [CommitResult::Committed]);
    let left = store.pending_inputs(&e.id).await.expect("pending");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].input, Input::Resume);
    // A refused input is discarded only by the epoch that holds the execution.
    let stale = LeaseEpoch(e.epoch.0 - 1);
    assert!(
        !store
            .discard_input(left[0].id, stale)
            .await
            .expect("discard")
    );
    assert_eq!(store.pending_inputs(&e.id).await.expect("pending").len(), 1);
    assert!(
        store
            .discard_input(left[0].id, e.epoch)
            .await
            .expect("discard")
    );
    assert!(
        store
            .pending_inputs(&e.id)
            .await
            .expect("pending")
            .is_empty()
    );
}

async fn attempts_are_recorded_before_sending_and_redeliveries_of_finished_ones_dropped<
    S: Store,
>(
    store: &S,
) {
    use sojourn_persistence::AttemptBegin;
    let f = fixture(store).await;
    let mut e = start(store, &f, None, None).await;
    step(store, &f, &mut e, Input::Start, t0()).await;
    assert_eq!(
        store.begin_attempt(&e.id, "first", 1).await.expect("begin"),
        AttemptBegin::Send { sends: 1 }
    );
    // A crash after the send: the redelivery sends again, and it is counted.
    assert_eq!(
        store.begin_attempt(&e.id, "first", 1).await.expect("begin"),
        AttemptBegin::Send { sends: 2 }
    );
    assert_eq!(
        store.begin_attempt(&e.id, "first", 9).await.expect("begin"),
        AttemptBegin::Unknown
    );
    let outcome = ActionOutcome::Success {
        output: json!({"status": 200}),
    };
    let inbox = store
        .finish_attempt(&e.id, "first", 1, &outcome, t0())
        .await
        .expect("finish");
    assert_eq!(
        store.begin_attempt(&e.id, "first", 1).await.expect("begin"),
        AttemptBegin::AlreadyDone
    );
    let nodes = store.node_executions(&e.id).await.expect("nodes");
    assert_eq!((nodes[0].status.as_str(), nodes[0].sends), ("succeeded", 2));
    assert_eq!(
        store
            .executions_with_inputs(t0() + Duration::seconds(1), 10)
            .await
            .expect("inputs"),
        [e.id.clone()]
    );
    // Inputs younger than the horizon are left to their delivery.
    assert!(
        store
            .executions_with_inputs(t0() - Duration::seconds(1), 10)
            .await
            .expect("inputs")
            .is_empty()
    );
    let pending = store.pending_inputs(&e.id).await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, inbox);
    assert!(matches!(
        &pending[0].input,
        Input::ActionResult { attempt: 1, .. }
    ));
    // Applying it consumes it; the node row keeps what the worker saw.
    let t =
        f.wf.step(&e.snap, pending[0].input.clone(), t0())
            .expect("step");
    store
        .commit(&[Commit {
            execution_id: &e.id,
            epoch: e.epoch,
            transition: &t,
            fired_timer: None,
            consumed_input: Some(inbox),
            claim: None,
            consumed_outbox: None,
        }])
        .await
        .expect("commit");
    assert!(
        store
            .executions_with_inputs(t0() + Duration::seconds(1), 10)
            .await
            .expect("inputs")
            .is_empty()
    );
    assert_eq!(
        store.node_executions(&e.id).await.expect("nodes")[0].output,
        Some(json!({"status": 200}))
    );
}

async fn pending_executions_are_found_for_recovery_and_batches_create_idempotently<S: Store>(
    store: &S,
) {
    let f = fixture(store).await;
    let new = |key: Option<&str>| NewExecution {
        namespace: "default".into(),
        workflow_id: f.workflow_id.clone(),
        version: f.version,
        idempotency_key: key.map(Into::into),
        max_entries: None,
        snapshot: f
            .wf
            .new_execution(ids::new_execution_id(), json!({}), None, None, t0())
            .expect("new"),
    };
    let batch = vec![new(Some("a")), new(None), new(Some("a")), new(Some("b"))];
    let first_id = batch[0].snapshot.execution_id.clone();
    let created = store.create_executions(&batch).await.expect("create");
    assert_eq!(created.len(), 4);
    assert_eq!(created[0], Created::New(first_id.clone()));
    assert!(matches!(created[1], Created::New(_)));
    assert_eq!(
        created[2],
        Created::Existing(first_id.clone()),
        "a key repeated within one batch"
    );
    assert!(matches!(created[3], Created::New(_)));
    let rec = store
        .load_execution(&first_id)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(
        (rec.status, rec.lease_epoch),
        (Status::Pending, LeaseEpoch(1))
    );
    // Not started yet: recovery finds them, oldest first, once old enough.
    assert!(
        store
            .pending_executions(t0(), 10)
            .await
            .expect("pending")
            .is_empty()
    );
    let pending = store
        .pending_executions(t0() + Duration::seconds(1), 10)
        .await
        .expect("pending");
    assert_eq!(pending.len(), 3);
    // Started: no longer pending.
    let mut e = Exec {
        id: first_id.clone(),
        snap: rec.snapshot,
        epoch: rec.lease_epoch,
    };
    let (_, r) = step(store, &f, &mut e, Input::Start, t0()).await;
    assert_eq!(
        r,
        CommitResult::Committed,
        "the creator's epoch commits without an activation"
    );
    let pending = store
        .pending_executions(t0() + Duration::seconds(1), 10)
        .await
        .expect("pending");
    assert_eq!(pending.len(), 2);
    assert!(!pending.contains(&first_id));
}

async fn attempts_begin_and_finish_in_batches<S: Store>(store: &S) {
    use sojourn_persistence::{AttemptBegin, AttemptRef, FinishedAttempt};
    let f = fixture(store).await;
    let mut execs = Vec::new();
    for _ in 0..5 {
        let mut e = start(store, &f, None, None).await;
        step(store, &f, &mut e, Input::Start, t0()).await;
        execs.push(e);
    }
    let msgs = store
        .claim_outbox("w", t0(), t0() + Duration::seconds(30), 10)
        .await
        .expect("claim");
    assert_eq!(msgs.len(), 5);
    // One finished before: its redelivery is dropped.
    let done_early = ActionOutcome::Success {
        output: json!({"status": 200}),
    };
    store
        .finish_attempt(&execs[0].id, "first", 1, &done_early, t0())
        .await
        .expect("finish");
    let mut refs: Vec<AttemptRef<'_>> = msgs
        .iter()
        .map(|m| AttemptRef {
            execution_id: &m.execution_id,
            node: m.dispatch.node.as_str(),
            attempt: m.dispatch.attempt,
        })
        .collect();
    refs.push(AttemptRef {
        execution_id: &execs[1].id,
        node: "first",
        attempt: 7,
    });
    let begins = store.begin_attempts(&refs).await.expect("begin");
    for (r, b) in refs.iter().zip(&begins) {
        let expected = if r.attempt == 7 {
            AttemptBegin::Unknown
        } else if r.execution_id == &execs[0].id {
            AttemptBegin::AlreadyDone
        } else {
            AttemptBegin::Send { sends: 1 }
        };
        assert_eq!(*b, expected, "{}", r.execution_id);
    }
    let outcome = ActionOutcome::failure("HTTP 503", true);
    let done: Vec<FinishedAttempt<'_>> = msgs
        .iter()
        .filter(|m| m.execution_id != execs[0].id)
        .map(|m| FinishedAttempt {
            execution_id: &m.execution_id,
            node: m.dispatch.node.as_str(),
            attempt: m.dispatch.attempt,
            outcome: &outcome,
            outbox_id: Some(m.id),
            outbox_key: None,
        })
        .collect();
    let inbox = store.finish_attempts(&done, t0()).await.expect("finish");
    assert_eq!(inbox.len(), 4);
    for (d, id) in done.iter().zip(&inbox) {
        let pending = store.pending_inputs(d.execution_id).await.expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, *id, "inbox ids come back in order");
        let rows = store.node_executions(d.execution_id).await.expect("nodes");
        assert_eq!(
            (rows[0].status.as_str(), rows[0].error.as_deref()),
            ("failed", Some("HTTP 503"))
        );
    }
    // Their outbox rows are gone; the early one's is still there until acked.
    let left = store
        .claim_outbox(
            "w2",
            t0() + Duration::seconds(60),
            t0() + Duration::seconds(90),
            10,
        )
        .await
        .expect("claim");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].execution_id, execs[0].id);
}

// ---- listing, API keys, triggers, entry limits --------------------------------

/// Polls every future until all are done (many creators at once, without a
/// `futures` dependency).
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("polled to the end"))
        .collect()
}

async fn new_workflow<S: Store>(
    store: &S,
    namespace: &str,
    key: &str,
) -> sojourn_persistence::WorkflowRecord {
    store
        .create_workflow(NewWorkflow {
            id: ids::new_workflow_id(),
            namespace: namespace.into(),
            key: key.into(),
            name: Some(format!("{key} name")),
            draft: json!({"key": key}),
            now: t0(),
        })
        .await
        .expect("create workflow")
}

fn workflows_page(
    namespace: &str,
    archived: bool,
    before: Option<&str>,
    limit: u32,
) -> WorkflowQuery {
    WorkflowQuery {
        namespace: namespace.into(),
        include_archived: archived,
        before_id: before.map(Into::into),
        limit,
    }
}

fn ids_of(list: &[sojourn_persistence::WorkflowRecord]) -> Vec<&str> {
    list.iter().map(|w| w.id.as_str()).collect()
}

async fn workflows_are_listed_newest_first_edited_and_archived<S: Store>(store: &S) {
    let a = new_workflow(store, "default", "a").await;
    let b = new_workflow(store, "default", "b").await;
    let c = new_workflow(store, "default", "c").await;
    let other = new_workflow(store, "acme", "a").await;

    let all = store
        .list_workflows(&workflows_page("default", false, None, 10))
        .await
        .expect("list");
    assert_eq!(ids_of(&all), [c.id.as_str(), b.id.as_str(), a.id.as_str()]);
    assert_eq!(all[2], a, "listed as stored");
    let page = store
        .list_workflows(&workflows_page("default", false, None, 2))
        .await
        .expect("list");
    assert_eq!(ids_of(&page), [c.id.as_str(), b.id.as_str()]);
    let rest = store
        .list_workflows(&workflows_page("default", false, Some(&b.id), 2))
        .await
        .expect("list");
    assert_eq!(ids_of(&rest), [a.id.as_str()]);
    let acme = store
        .list_workflows(&workflows_page("acme", false, None, 10))
        .await
        .expect("list");
    assert_eq!(ids_of(&acme), [other.id.as_str()]);

    // Editing the draft (and the name, when given).
    let t1 = t0() + Duration::minutes(1);
    let edited = store
        .update_draft("default", &a.id, &json!({"v": 2}), Some("A"), t1)
        .await
        .expect("update");
    assert_eq!(
        (
            edited.draft.clone(),
            edited.name.as_deref(),
            edited.updated_at,
            edited.created_at
        ),
        (json!({"v": 2}), Some("A"), t1, t0())
    );
    let kept = store
        .update_draft("default", &a.id, &json!({"v": 3}), None, t1)
        .await
        .expect("update");
    assert_eq!(
        (kept.draft, kept.name.as_deref()),
        (json!({"v": 3}), Some("A"))
    );
    let read = store
        .get_workflow("default", &a.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(read.draft, json!({"v": 3}));
    let elsewhere = store
        .update_draft("acme", &a.id, &json!({}), None, t1)
        .await;
    assert!(
        matches!(&elsewhere, Err(Error::NotFound { what: "workflow", id }) if *id == a.id),
        "{elsewhere:?}"
    );
    assert_eq!(
        store
            .get_workflow("default", &a.id)
            .await
            .expect("get")
            .expect("found")
            .draft,
        json!({"v": 3}),
        "another namespace's edit changed nothing"
    );

    // Archiving: idempotent, keeps the first time.
    let archived = store
        .archive_workflow("default", &b.id, t1)
        .await
        .expect("archive");
    assert_eq!((archived.archived_at, archived.updated_at), (Some(t1), t1));
    let again = store
        .archive_workflow("default", &b.id, t1 + Duration::hours(1))
        .await
        .expect("archive again");
    assert_eq!((again.archived_at, again.updated_at), (Some(t1), t1));
    let refused = store
        .update_draft("default", &b.id, &json!({"v": 9}), None, t1)
        .await;
    assert!(
        matches!(&refused, Err(Error::Invalid(m)) if m.contains("archived")),
        "{refused:?}"
    );
    assert_eq!(
        store
            .get_workflow("default", &b.id)
            .await
            .expect("get")
            .expect("found")
            .draft,
        json!({"key": "b"})
    );
    assert!(matches!(
        store.archive_workflow("acme", &a.id, t1).await,
        Err(Error::NotFound {
            what: "workflow",
            ..
        })
    ));
    assert!(matches!(
        store.archive_workflow("default", "wf_missing", t1).await,
        Err(Error::NotFound {
            what: "workflow",
            ..
        })
    ));
    assert!(
        store
            .get_workflow("default", &a.id)
            .await
            .expect("get")
            .expect("found")
            .archived_at
            .is_none()
    );
    let live = store
        .list_workflows(&workflows_page("default", false, None, 10))
        .await
        .expect("list");
    assert_eq!(ids_of(&live), [c.id.as_str(), a.id.as_str()]);
    let with_archived = store
        .list_workflows(&workflows_page("default", true, None, 10))
        .await
        .expect("list");
    assert_eq!(
        ids_of(&with_archived),
        [c.id.as_str(), b.id.as_str(), a.id.as_str()]
    );
    let past_archived = store
        .list_workflows(&workflows_page("default", false, Some(&c.id), 1))
        .await
        .expect("list");
    assert_eq!(
        ids_of(&past_archived),
        [a.id.as_str()],
        "the cursor skips archived ones too"
    );
}

async fn versions_are_listed_oldest_first<S: Store>(store: &S) {
    let f = fixture(store).await;
    let empty = new_workflow(store, "default", "empty").await;
    for h in [1, 2] {
        store
            .publish(
                &f.workflow_id,
                &reference_workflow(),
                &Pins::new(),
                t0() + Duration::hours(h),
            )
            .await
            .expect("publish");
    }
    let versions = store.list_versions(&f.workflow_id).await.expect("list");
    let got: Vec<(i32, DateTime<Utc>)> = versions
        .iter()
        .map(|v| (v.version, v.published_at))
        .collect();
    assert_eq!(
        got,
        [
            (1, t0()),
            (2, t0() + Duration::hours(1)),
            (3, t0() + Duration::hours(2))
        ]
    );
    assert!(
        store
            .list_versions(&empty.id)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .list_versions("wf_missing")
            .await
            .expect("list")
            .is_empty()
    );
}

fn executions_query(namespace: &str) -> ExecutionQuery {
    ExecutionQuery {
        namespace: namespace.into(),
        limit: 100,
        ..ExecutionQuery::default()
    }
}

async fn listed<S: Store>(store: &S, query: ExecutionQuery) -> Vec<ExecutionId> {
    store
        .list_executions(&query)
        .await
        .expect("list executions")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

async fn executions_are_listed_newest_first_by_filter_and_cursor<S: Store>(store: &S) {
    let f = fixture(store).await;
    let g = fixture_keyed(store, "second").await;
    let h = Duration::hours(1);
    // e1 pending; e2 running; e3 cancelled; e4 another workflow, pending.
    let e1 = start_at(store, &f, Some("u1"), None, t0()).await;
    let mut e2 = start_at(store, &f, Some("u2"), None, t0() + h).await;
    step(store, &f, &mut e2, Input::Start, t0() + h).await;
    let mut e3 = start_at(store, &f, Some("u1"), None, t0() + h * 2).await;
    step(store, &f, &mut e3, Input::Start, t0() + h * 2).await;
    let (_, r) = step(
        store,
        &f,
        &mut e3,
        Input::Cancel { reason: None },
        t0() + h * 2,
    )
    .await;
    assert_eq!(r, CommitResult::Committed);
    let e4 = start_at(store, &g, Some("u1"), None, t0() + h * 3).await;
    // The same workflow, another namespace.
    let foreign = ids::new_execution_id();
    store
        .create_execution(NewExecution {
            namespace: "acme".into(),
            workflow_id: f.workflow_id.clone(),
            version: f.version,
            idempotency_key: None,
            max_entries: None,
            snapshot: f
                .wf
                .new_execution(foreign.clone(), json!({}), Some("u1".into()), None, t0())
                .expect("new"),
        })
        .await
        .expect("create");
    let (i1, i2, i3, i4) = (e1.id.clone(), e2.id.clone(), e3.id.clone(), e4.id.clone());

    let all = store
        .list_executions(&executions_query("default"))
        .await
        .expect("list");
    let got: Vec<&ExecutionId> = all.iter().map(|e| &e.id).collect();
    assert_eq!(got, [&i4, &i3, &i2, &i1], "newest first, one namespace");
    let running = &all[2];
    assert_eq!(
        (
            running.workflow_id.as_str(),
            running.version,
            running.status,
            running.subject.as_deref(),
            running.current_node.as_deref(),
            running.created_at,
            running.finished_at
        ),
        (
            f.workflow_id.as_str(),
            f.version,
            Status::Running,
            Some("u2"),
            Some("first"),
            t0() + h,
            None
        )
    );
    assert_eq!(running.updated_at, t0() + h);
    let cancelled = &all[1];
    assert_eq!(cancelled.status, Status::Cancelled);
    assert_eq!(cancelled.finished_at, Some(t0() + h * 2));
    assert_eq!(
        (all[3].status, all[3].current_node.as_deref()),
        (Status::Pending, None)
    );

    let q = || executions_query("default");
    assert_eq!(
        listed(
            store,
            ExecutionQuery {
                workflow_id: Some(f.workflow_id.clone()),
                ..q()
            }
        )
        .await,
        [i3.clone(), i2.clone(), i1.clone()]
    );
    assert_eq!(
        listed(
            store,
            ExecutionQuery {
                workflow_id: Some(g.workflow_id.clone()),
                ..q()
            }
        )
        .await,
        std::slice::from_ref(&i4)
    );
    assert_eq!(
        listed(
            store,
            ExecutionQuery {
                status: Some(Status::Pending),
                ..q()
            }
        )
        .await,
        [i4.clone(), i1.clone()]
    );
    assert_eq!(
        listed(
            store,
            ExecutionQuery {
                status: Some(Status::Cancelled),
                ..q()
            }
        )
        .await,
        std::slice::from_ref(&i3)
    );
    assert!(
        listed(
            store,
            ExecutionQuery {
                status: Some(Status::Completed),
                ..q()
            }
        )
        .await
        .is_empty()
    );
    assert_eq!(
        listed(
            store,
            ExecutionQuery {
                subject: Some("u1".into()),
                ..q()
            }
        )
        .await,
        [i4.clone(), i3.clone(), i1.clone()]
    );
    assert!(
        listed(
            store,
            ExecutionQuery {
                subject: Some("u9".into()),
                ..q()
            }
        )
        .await
        .is_empty()
    );
    assert_eq!(
        listed(
            store,
            ExecutionQuery {
                created_after: Some(t0() + h),
                ..q()
            }
        )
        .await,
        [i4.clone(), i3.clone(), i2.clone()],
        "created_after includes its instant"
    );
    assert_eq!(
        listed(
            store,
            ExecutionQuery {
                created_before: Some(t0() + h * 2),
                ..q()
            }
        )
        .await,
        [i2.clone(), i1.clone()],
        "created_before excludes its instant"
    );
    assert_eq!(
        listed(
            store,
            ExecutionQuery {
                created_after: Some(t0() + h),
                created_before: Some(t0() + h * 3),
                ..q()
            }
        )
        .await,
        [i3.clone(), i2.clone()]
    );
    // Pages.
    assert_eq!(
        listed(store, ExecutionQuery { limit: 2, ..q() }).await,
        [i4.clone(), i3.clone()]
    );
    assert_eq!(
        listed(
            store,
            ExecutionQuery {
                limit: 2,
                before_id: Some(i3.to_string()),
                ..q()
            }
        )
        .await,
        [i2.clone(), i1.clone()]
    );
    assert!(
        listed(
            store,
            ExecutionQuery {
                limit: 2,
                before_id: Some(i1.to_string()),
                ..q()
            }
        )
        .await
        .is_empty()
    );
    assert_eq!(
        listed(
            store,
            ExecutionQuery {
                subject: Some("u1".into()),
                before_id: Some(i4.to_string()),
                limit: 1,
                ..q()
            }
        )
        .await,
        std::slice::from_ref(&i3),
        "filters and cursor together"
    );
    assert_eq!(listed(store, executions_query("acme")).await, [foreign]);
    assert!(listed(store, executions_query("nobody")).await.is_empty());
}

fn api_key(id: &str, namespace: &str, hash: &str, scopes: &[&str], at: DateTime<Utc>) -> NewApiKey {
    NewApiKey {
        id: id.into(),
        namespace: namespace.into(),
        name: Some(format!("{id} name")),
        hash: hash.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        now: at,
    }
}

async fn api_keys_are_found_by_hash_until_revoked<S: Store>(store: &S) {
    let t1 = t0() + Duration::minutes(1);
    let k1 = store
        .create_api_key(api_key("key_1", "default", "h1", &["read", "write"], t0()))
        .await
        .expect("create");
    assert_eq!(
        (
            k1.id.as_str(),
            k1.namespace.as_str(),
            k1.name.as_deref(),
            k1.created_at,
            k1.revoked_at
        ),
        ("key_1", "default", Some("key_1 name"), t0(), None)
    );
    assert_eq!(k1.scopes, ["read", "write"]);
    let k2 = store
        .create_api_key(NewApiKey {
            name: None,
            ..api_key("key_2", "default", "h2", &["admin"], t1)
        })
        .await
        .expect("create");
    let k3 = store
        .create_api_key(api_key("key_3", "acme", "h3", &[], t0()))
        .await
        .expect("create");
    assert!(k3.scopes.is_empty());

    assert_eq!(
        store.api_key_by_hash("h1").await.expect("by hash"),
        Some(k1.clone())
    );
    assert_eq!(
        store.api_key_by_hash("h3").await.expect("by hash"),
        Some(k3.clone())
    );
    assert_eq!(store.api_key_by_hash("nope").await.expect("by hash"), None);
    assert_eq!(
        store.list_api_keys("default").await.expect("list"),
        [k1.clone(), k2.clone()]
    );
    assert_eq!(
        store.list_api_keys("acme").await.expect("list"),
        std::slice::from_ref(&k3)
    );

    let dup_hash = store
        .create_api_key(api_key("key_4", "acme", "h1", &["read"], t1))
        .await;
    assert!(
        matches!(&dup_hash, Err(Error::Conflict { field: "hash", .. })),
        "{dup_hash:?}"
    );
    let dup_id = store
        .create_api_key(api_key("key_1", "default", "h9", &["read"], t1))
        .await;
    assert!(
        matches!(&dup_id, Err(Error::Conflict { field: "id", .. })),
        "{dup_id:?}"
    );
    assert_eq!(store.api_key_by_hash("h9").await.expect("by hash"), None);

    // Revoking: only within the key's namespace, idempotent.
    let wrong = store.revoke_api_key("acme", "key_1", t1).await;
    assert!(
        matches!(&wrong, Err(Error::NotFound { what: "api key", id }) if id == "key_1"),
        "{wrong:?}"
    );
    assert!(
        store
            .api_key_by_hash("h1")
            .await
            .expect("by hash")
            .is_some()
    );
    let revoked = store
        .revoke_api_key("default", "key_1", t1)
        .await
        .expect("revoke");
    assert_eq!(revoked.revoked_at, Some(t1));
    let again = store
        .revoke_api_key("default", "key_1", t1 + Duration::hours(1))
        .await
        .expect("revoke again");
    assert_eq!(again.revoked_at, Some(t1), "the first revocation stands");
    assert_eq!(store.api_key_by_hash("h1").await.expect("by hash"), None);
    assert_eq!(
        store.api_key_by_hash("h2").await.expect("by hash"),
        Some(k2.clone())
    );
    let keys = store.list_api_keys("default").await.expect("list");
    assert_eq!(keys.len(), 2, "revoked keys stay listed");
    assert_eq!(keys[0].revoked_at, Some(t1));
    assert!(matches!(
        store.revoke_api_key("default", "key_missing", t1).await,
        Err(Error::NotFound { .. })
    ));
}

fn trigger(
    namespace: &str,
    workflow_id: &str,
    kind: TriggerKind,
    path: Option<&str>,
    at: DateTime<Utc>,
) -> NewTrigger {
    let config = match kind {
        TriggerKind::Api => json!({"version": 1}),
        TriggerKind::Schedule => json!({"cron": "0 9 * * *", "timezone": "Europe/Paris"}),
        TriggerKind::Event => json!({"event": "paid"}),
        TriggerKind::Segment => json!({"segment": "vip"}),
    };
    NewTrigger {
        id: format!("trg_{}", uuid::Uuid::now_v7().simple()),
        namespace: namespace.into(),
        workflow_id: workflow_id.into(),
        path: path.map(Into::into),
        config: TriggerConfig::parse(kind, &config).expect("config"),
        now: at,
    }
}

async fn trigger_paths_are_unique_among_live_triggers_of_a_namespace<S: Store>(store: &S) {
    let f = fixture(store).await;
    let acme = new_workflow(store, "acme", "hooks").await;
    let api = TriggerKind::Api;
    let t1 = store
        .create_trigger(trigger(
            "default",
            &f.workflow_id,
            api,
            Some("signup"),
            t0(),
        ))
        .await
        .expect("create");
    assert_eq!(
        (
            t1.state,
            t1.kind,
            t1.path.as_deref(),
            t1.next_fire_at,
            t1.created_at,
            t1.updated_at
        ),
        (TriggerState::Init, api, Some("signup"), None, t0(), t0())
    );
    assert_eq!(t1.config, json!({"version": 1}));
    assert_eq!(
        t1.typed_config(),
        Ok(TriggerConfig::Api(sojourn_runtime::triggers::ApiTrigger {
            version: Some(1)
        }))
    );
    let dup = store
        .create_trigger(trigger(
            "default",
            &f.workflow_id,
            api,
            Some("signup"),
            t0(),
        ))
        .await;
    assert!(
        matches!(&dup, Err(Error::Conflict { field: "path", value }) if value == "signup"),
        "{dup:?}"
    );
    let elsewhere = store
        .create_trigger(trigger("acme", &acme.id, api, Some("signup"), t0()))
        .await
        .expect("the same path in another namespace");
    // Triggers without a path never conflict.
    let s1 = store
        .create_trigger(trigger(
            "default",
            &f.workflow_id,
            TriggerKind::Schedule,
            None,
            t0(),
        ))
        .await
        .expect("create");
    let s2 = store
        .create_trigger(trigger(
            "default",
            &f.workflow_id,
            TriggerKind::Event,
            None,
            t0(),
        ))
        .await
        .expect("create");
    let mut same_id = trigger("default", &f.workflow_id, api, Some("other"), t0());
    same_id.id = t1.id.clone();
    assert!(matches!(
        store.create_trigger(same_id).await,
        Err(Error::Conflict { field: "id", .. })
    ));
    let foreign_workflow = store
        .create_trigger(trigger("default", &acme.id, api, Some("x"), t0()))
        .await;
    assert!(
        matches!(
            &foreign_workflow,
            Err(Error::NotFound {
                what: "workflow",
                ..
            })
        ),
        "{foreign_workflow:?}"
    );

    assert_eq!(
        store.api_trigger("default", "signup").await.expect("api"),
        Some(t1.clone())
    );
    assert_eq!(
        store.api_trigger("acme", "signup").await.expect("api"),
        Some(elsewhere.clone())
    );
    assert_eq!(
        store.api_trigger("default", "nope").await.expect("api"),
        None
    );
    assert_eq!(
        store.get_trigger("default", &t1.id).await.expect("get"),
        Some(t1.clone())
    );
    assert_eq!(store.get_trigger("acme", &t1.id).await.expect("get"), None);
    let ids = |list: Vec<sojourn_persistence::TriggerRecord>| -> Vec<String> {
        list.into_iter().map(|t| t.id).collect()
    };
    assert_eq!(
        ids(store.list_triggers("default", None).await.expect("list")),
        [t1.id.clone(), s1.id.clone(), s2.id.clone()]
    );
    assert!(
        store
            .list_triggers("default", Some(&acme.id))
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        ids(store
            .list_triggers("acme", Some(&acme.id))
            .await
            .expect("list")),
        std::slice::from_ref(&elsewhere.id)
    );

    // Destroyed: out of listings and path lookups, its path free again.
    let t2 = t0() + Duration::minutes(5);
    for mv in [Move::Stop, Move::Destroy] {
        store
            .set_trigger_state("default", &t1.id, mv, None, t2)
            .await
            .expect("move")
            .expect("found");
    }
    assert_eq!(
        ids(store
            .list_triggers("default", Some(&f.workflow_id))
            .await
            .expect("list")),
        [s1.id.clone(), s2.id.clone()]
    );
    assert_eq!(
        store.api_trigger("default", "signup").await.expect("api"),
        None
    );
    let gone = store
        .get_trigger("default", &t1.id)
        .await
        .expect("get")
        .expect("a destroyed trigger can still be read");
    assert_eq!((gone.state, gone.updated_at), (TriggerState::Destroyed, t2));
    let successor = store
        .create_trigger(trigger("default", &f.workflow_id, api, Some("signup"), t2))
        .await
        .expect("the path is free once the first is destroyed");
    assert_eq!(
        store.api_trigger("default", "signup").await.expect("api"),
        Some(successor.clone())
    );
}

async fn trigger_states_move_only_from_the_states_allowed<S: Store>(store: &S) {
    let f = fixture(store).await;
    let t = store
        .create_trigger(trigger(
            "default",
            &f.workflow_id,
            TriggerKind::Schedule,
            None,
            t0(),
        ))
        .await
        .expect("create");
    let t1 = t0() + Duration::minutes(1);
    let next = t0() + Duration::hours(3);
    let active = store
        .set_trigger_state("default", &t.id, Move::Activate, Some(next), t1)
        .await
        .expect("activate")
        .expect("found");
    assert_eq!(
        (
            active.state,
            active.next_fire_at,
            active.updated_at,
            active.created_at
        ),
        (TriggerState::Active, Some(next), t1, t0())
    );
    let refused = store
        .set_trigger_state("default", &t.id, Move::Activate, Some(next), t1)
        .await;
    assert!(
        matches!(&refused, Err(Error::Invalid(m)) if m.contains(&t.id) && m.ends_with("is active")),
        "{refused:?}"
    );
    assert_eq!(
        store
            .set_trigger_state("acme", &t.id, Move::Pause, None, t1)
            .await
            .expect("other namespace"),
        None
    );
    assert_eq!(
        store
            .set_trigger_state("default", "trg_missing", Move::Pause, None, t1)
            .await
            .expect("missing"),
        None
    );
    let paused = store
        .set_trigger_state("default", &t.id, Move::Pause, None, t1)
        .await
        .expect("pause")
        .expect("found");
    assert_eq!(
        (paused.state, paused.next_fire_at),
        (TriggerState::Paused, None)
    );
    let destroy = store
        .set_trigger_state("default", &t.id, Move::Destroy, None, t1)
        .await;
    assert!(
        matches!(&destroy, Err(Error::Invalid(m)) if m.ends_with("is paused")),
        "{destroy:?}"
    );
    // Two operators resume at once: one wins, one is told.
    let (a, b) = tokio::join!(
        store.set_trigger_state("default", &t.id, Move::Resume, Some(next), t1),
        store.set_trigger_state("default", &t.id, Move::Resume, Some(next), t1),
    );
    let won: Vec<TriggerState> = [&a, &b]
        .iter()
        .filter_map(|r| r.as_ref().ok().and_then(|t| t.as_ref()).map(|t| t.state))
        .collect();
    assert_eq!(won.len(), 1, "{a:?} {b:?}");
    let lost = if a.is_ok() { &b } else { &a };
    assert!(
        matches!(lost, Err(Error::Invalid(m)) if m.ends_with(&format!("is {}", won[0]))),
        "{lost:?}"
    );
    assert_eq!(
        store
            .get_trigger("default", &t.id)
            .await
            .expect("get")
            .map(|t| t.state),
        Some(won[0])
    );
}

async fn a_due_schedule_is_claimed_by_one_node_until_it_fires_or_the_claim_lapses<S: Store>(
    store: &S,
) {
    let f = fixture(store).await;
    let new = |kind| trigger("default", &f.workflow_id, kind, None, t0());
    let s = store
        .create_trigger(new(TriggerKind::Schedule))
        .await
        .expect("create");
    // Neither an inactive schedule nor another kind is ever claimed.
    let idle = store
        .create_trigger(new(TriggerKind::Schedule))
        .await
        .expect("create");
    let event = store
        .create_trigger(new(TriggerKind::Event))
        .await
        .expect("create");
    let due = t0() + Duration::minutes(10);
    store
        .set_trigger_state("default", &event.id, Move::Activate, Some(due), t0())
        .await
        .expect("activate")
        .expect("found");
    store
        .set_trigger_state("default", &s.id, Move::Activate, Some(due), t0())
        .await
        .expect("activate")
        .expect("found");
    let claim = |owner: &'static str, now: DateTime<Utc>| {
        store.claim_due_schedules(owner, now, now + Duration::seconds(30), 10)
    };
    let ids = |v: Vec<sojourn_persistence::TriggerRecord>| -> Vec<String> {
        v.into_iter().map(|t| t.id).collect()
    };
    assert!(
        claim("a", due - Duration::seconds(1))
            .await
            .expect("claim")
            .is_empty()
    );
    let claimed = claim("a", due).await.expect("claim");
    assert_eq!(
        ids(claimed.clone()),
        vec![s.id.clone()],
        "{idle:?} {event:?}"
    );
    assert_eq!(claimed[0].next_fire_at, Some(due));
    // Held: nobody else gets it until the claim lapses.
    assert!(
        claim("b", due + Duration::seconds(29))
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(
        store
            .claim_owners()
            .await
            .expect("owners")
            .contains(&"a".to_owned())
    );
    let next = due + Duration::days(1);
    assert!(
        !store
            .finish_schedule_fire(&s.id, "b", due, Some(next), Some(due))
            .await
            .expect("finish"),
        "only the holder finishes"
    );
    assert!(
        store
            .finish_schedule_fire(&s.id, "a", due, Some(next), Some(due))
            .await
            .expect("finish")
    );
    let fired = store
        .get_trigger("default", &s.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(
        (fired.next_fire_at, fired.last_fired_at),
        (Some(next), Some(due))
    );
    // Finished once: a second finish of the same instant changes nothing.
    assert!(
        !store
            .finish_schedule_fire(&s.id, "a", due, Some(next), Some(due))
            .await
            .expect("finish")
    );

    // A claim that lapses (its node died mid-fire) passes to another node,
    // and the first can no longer finish.
    assert_eq!(
        ids(claim("a", next).await.expect("claim")),
        vec![s.id.clone()]
    );
    let later = next + Duration::seconds(31);
    assert_eq!(
        ids(claim("b", later).await.expect("claim")),
        vec![s.id.clone()]
    );
    assert!(
        !store
            .finish_schedule_fire(&s.id, "a", next, None, Some(next))
            .await
            .expect("finish")
    );
    // A node that restarts hands its claims back at once.
    store.release_claims("b").await.expect("release");
    assert_eq!(
        ids(claim("c", later).await.expect("claim")),
        vec![s.id.clone()]
    );

    // Pausing drops the claim and the next fire: the holder's finish is
    // refused and nothing is due any more.
    store
        .set_trigger_state("default", &s.id, Move::Pause, None, later)
        .await
        .expect("pause")
        .expect("found");
    assert!(
        !store
            .finish_schedule_fire(&s.id, "c", next, Some(next + Duration::days(1)), None)
            .await
            .expect("finish")
    );
    let far = later + Duration::days(30);
    assert!(claim("d", far).await.expect("claim").is_empty());
    let paused = store
        .get_trigger("default", &s.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(
        (paused.next_fire_at, paused.last_fired_at),
        (None, Some(due))
    );
}

async fn dead_letters_are_kept_once_per_message_and_active_triggers_listed_by_kind<S: Store>(
    store: &S,
) {
    let f = fixture(store).await;
    let t = store
        .create_trigger(trigger(
            "default",
            &f.workflow_id,
            TriggerKind::Event,
            None,
            t0(),
        ))
        .await
        .expect("create");
    store
        .create_trigger(trigger(
            "default",
            &f.workflow_id,
            TriggerKind::Event,
            None,
            t0(),
        ))
        .await
        .expect("create");
    assert!(
        store
            .active_triggers(TriggerKind::Event)
            .await
            .expect("active")
            .is_empty()
    );
    store
        .set_trigger_state("default", &t.id, Move::Activate, None, t0())
        .await
        .expect("activate")
        .expect("found");
    let active = store
        .active_triggers(TriggerKind::Event)
        .await
        .expect("active");
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].id, t.id);
    assert!(
        store
            .active_triggers(TriggerKind::Schedule)
            .await
            .expect("active")
            .is_empty()
    );
    let letter = |offset: i64| sojourn_persistence::DeadLetter {
        id: format!("dlq_{}", uuid::Uuid::now_v7().simple()),
        namespace: "default".into(),
        trigger_id: t.id.clone(),
        topic: "orders".into(),
        partition: 2,
        offset,
        key: Some("u-1".into()),
        payload: Some("{not json".into()),
        reason: "the value is not JSON".into(),
        created_at: t0(),
    };
    let first = letter(41);
    assert!(store.add_dead_letter(&first).await.expect("add"));
    // The same message again (redelivered): kept once.
    assert!(!store.add_dead_letter(&letter(41)).await.expect("add"));
    let second = letter(42);
    assert!(store.add_dead_letter(&second).await.expect("add"));
    assert_eq!(
        store
            .dead_letters("default", &t.id, 10)
            .await
            .expect("list"),
        vec![second.clone(), first]
    );
    assert_eq!(
        store.dead_letters("default", &t.id, 1).await.expect("list"),
        vec![second]
    );
    assert!(
        store
            .dead_letters("acme", &t.id, 10)
            .await
            .expect("list")
            .is_empty()
    );
}

fn limited(
    f: &Fixture,
    subject: Option<&str>,
    key: Option<&str>,
    max_entries: Option<u32>,
) -> NewExecution {
    NewExecution {
        namespace: "default".into(),
        workflow_id: f.workflow_id.clone(),
        version: f.version,
        idempotency_key: key.map(Into::into),
        max_entries,
        snapshot: f
            .wf
            .new_execution(
                ids::new_execution_id(),
                json!({}),
                subject.map(Into::into),
                None,
                t0(),
            )
            .expect("new"),
    }
}

async fn entries<S: Store>(store: &S, f: &Fixture, subject: &str) -> usize {
    store
        .list_executions(&ExecutionQuery {
            workflow_id: Some(f.workflow_id.clone()),
            subject: Some(subject.into()),
            ..executions_query("default")
        })
        .await
        .expect("list")
        .len()
}

async fn max_entries_limit_the_executions_of_a_subject<S: Store>(store: &S) {
    let f = fixture(store).await;
    let g = fixture_keyed(store, "second").await;
    let first = limited(&f, Some("u1"), Some("k1"), Some(2));
    let first_id = first.snapshot.execution_id.clone();
    assert_eq!(
        store.create_execution(first).await.expect("create"),
        Created::New(first_id.clone())
    );
    assert!(matches!(
        store
            .create_execution(limited(&f, Some("u1"), None, Some(2)))
            .await
            .expect("create"),
        Created::New(_)
    ));
    let refused = limited(&f, Some("u1"), Some("k2"), Some(2));
    let refused_id = refused.snapshot.execution_id.clone();
    assert_eq!(
        store.create_execution(refused).await.expect("create"),
        Created::LimitReached { limit: 2 }
    );
    assert!(
        store
            .load_execution(&refused_id)
            .await
            .expect("load")
            .is_none(),
        "nothing written"
    );
    assert_eq!(entries(store, &f, "u1").await, 2);
    // A key used before still answers with its execution.
    assert_eq!(
        store
            .create_execution(limited(&f, Some("u1"), Some("k1"), Some(2)))
            .await
            .expect("create"),
        Created::Existing(first_id.clone())
    );
    // The refused one did not use its key up.
    assert!(matches!(
        store
            .create_execution(limited(&f, Some("u1"), Some("k2"), Some(3)))
            .await
            .expect("create"),
        Created::New(_)
    ));
    assert_eq!(entries(store, &f, "u1").await, 3);
    // Other subjects, other workflows, no subject: not limited by u1's count.
    for e in [
        limited(&f, Some("u2"), None, Some(1)),
        limited(&g, Some("u1"), None, Some(1)),
        limited(&f, None, None, Some(1)),
        limited(&f, None, None, Some(1)),
    ] {
        assert!(matches!(
            store.create_execution(e).await.expect("create"),
            Created::New(_)
        ));
    }
    assert_eq!(
        store
            .create_execution(limited(&g, Some("u1"), None, Some(1)))
            .await
            .expect("create"),
        Created::LimitReached { limit: 1 }
    );

    // Within one batch: earlier admissions count, results keep their order.
    let batch = vec![
        limited(&f, Some("u3"), None, Some(2)),
        limited(&f, Some("u3"), None, Some(2)),
        limited(&f, Some("u3"), None, Some(2)),
        limited(&f, Some("u3"), None, None),
        limited(&f, Some("u3"), Some("k3"), Some(3)),
        limited(&f, Some("u4"), Some("k4"), Some(1)),
        limited(&f, Some("u4"), Some("k4"), Some(1)),
        limited(&f, Some("u1"), Some("k1"), Some(1)),
        limited(&f, None, None, None),
    ];
    let ids: Vec<ExecutionId> = batch
        .iter()
        .map(|e| e.snapshot.execution_id.clone())
        .collect();
    let created = store.create_executions(&batch).await.expect("create batch");
    assert_eq!(
        created,
        [
            Created::New(ids[0].clone()),
            Created::New(ids[1].clone()),
            Created::LimitReached { limit: 2 },
            Created::New(ids[3].clone()),
            Created::LimitReached { limit: 3 },
            Created::New(ids[5].clone()),
            Created::Existing(ids[5].clone()),
            Created::Existing(first_id.clone()),
            Created::New(ids[8].clone()),
        ]
    );
    assert_eq!(entries(store, &f, "u3").await, 3);
    assert_eq!(entries(store, &f, "u4").await, 1);
    assert!(store.load_execution(&ids[2]).await.expect("load").is_none());
    assert!(store.load_execution(&ids[4]).await.expect("load").is_none());
    assert!(store.load_execution(&ids[6]).await.expect("load").is_none());
}

async fn max_entries_hold_when_creators_race_for_the_last_entry<S: Store>(store: &S) {
    let f = fixture(store).await;
    for round in 0..3 {
        let subject = format!("racer-{round}");
        let creators: Vec<_> = (0..20)
            .map(|_| store.create_execution(limited(&f, Some(&subject), None, Some(3))))
            .collect();
        let results = join_all(creators).await;
        let new = results
            .iter()
            .filter(|r| matches!(r, Ok(Created::New(_))))
            .count();
        let refused = results
            .iter()
            .filter(|r| matches!(r, Ok(Created::LimitReached { limit: 3 })))
            .count();
        assert_eq!((new, refused), (3, 17), "{results:?}");
        assert_eq!(entries(store, &f, &subject).await, 3);
    }
    // Batches racing each other, over overlapping subjects in opposite
    // orders (locks are taken in one order: no deadlock).
    let inputs: Vec<Vec<NewExecution>> = (0..6)
        .map(|i| {
            let order = if i % 2 == 0 { ["x", "y"] } else { ["y", "x"] };
            order
                .iter()
                .map(|s| limited(&f, Some(s), None, Some(2)))
                .collect()
        })
        .collect();
    let batches: Vec<_> = inputs.iter().map(|b| store.create_executions(b)).collect();
    for r in join_all(batches).await {
        r.expect("no deadlock");
    }
    assert_eq!(entries(store, &f, "x").await, 2);
    assert_eq!(entries(store, &f, "y").await, 2);
}

async fn an_unchanged_document_is_published_once<S: Store>(store: &S) {
    let f = fixture(store).await;
    let same = reference_workflow();
    let (v, new) = store
        .publish_if_changed(&f.workflow_id, &same, &Pins::new(), t0())
        .await
        .expect("publish");
    assert_eq!(
        (v.version, new),
        (1, false),
        "equal to the latest: nothing new"
    );
    let mut changed = reference_workflow();
    changed.name = Some("changed".into());
    // Publishes racing with one new document make one version.
    let no_pins = Pins::new();
    let racers: Vec<_> = (0..8)
        .map(|_| store.publish_if_changed(&f.workflow_id, &changed, &no_pins, t0()))
        .collect();
    let results: Vec<(WorkflowVersion, bool)> = join_all(racers)
        .await
        .into_iter()
        .map(|r| r.expect("publish"))
        .collect();
    assert_eq!(results.iter().filter(|(_, new)| *new).count(), 1);
    assert!(results.iter().all(|(v, _)| v.version == 2));
    assert_eq!(
        store
            .get_version(&f.workflow_id, None)
            .await
            .expect("latest")
            .map(|v| v.version),
        Some(2)
    );
    assert!(matches!(
        store
            .publish_if_changed("wf_missing", &changed, &Pins::new(), t0())
            .await,
        Err(Error::NotFound { .. })
    ));
    store
        .archive_workflow("default", &f.workflow_id, t0())
        .await
        .expect("archive");
    let mut third = reference_workflow();
    third.name = Some("third".into());
    assert!(matches!(
        store
            .publish_if_changed(&f.workflow_id, &third, &Pins::new(), t0())
            .await,
        Err(Error::Invalid(_))
    ));
}

/// A node that sends its own actions and fires its own near timers claims
/// them in the commit that decides them: nobody else claims them while the
/// claims last, the attempt counts as begun once, and another node takes
/// the work only when the claims expire (the node died).
async fn a_commit_claims_its_actions_and_near_timers_for_its_node<S: Store>(store: &S) {
    let f = fixture(store).await;
    let mut e = start(store, &f, None, None).await;
    let claim = Claim {
        owner: "n1",
        outbox_until: t0() + Duration::seconds(60),
        timers_before: t0() + Duration::seconds(2),
        timer_ttl: Duration::seconds(30),
    };
    let commit = |e: &Exec, t: &Transition| {
        let (id, epoch) = (e.id.clone(), e.epoch);
        let t = t.clone();
        async move {
            store
                .commit(&[Commit {
                    execution_id: &id,
                    epoch,
                    transition: &t,
                    fired_timer: None,
                    consumed_input: None,
                    claim: Some(claim),
                    consumed_outbox: None,
                }])
                .await
                .expect("commit")
        }
    };
    let t1 = f.wf.step(&e.snap, Input::Start, t0()).expect("step");
    assert_eq!(commit(&e, &t1).await, [CommitResult::Committed]);
    e.snap = t1.snapshot.clone();
    let nodes = store.node_executions(&e.id).await.expect("nodes");
    assert_eq!(
        (nodes[0].status.as_str(), nodes[0].sends),
        ("sending", 1),
        "the attempt is begun in the commit"
    );
    assert!(
        store
            .claim_outbox(
                "n2",
                t0() + Duration::seconds(59),
                t0() + Duration::seconds(120),
                10
            )
            .await
            .expect("claim")
            .is_empty(),
        "claimed by n1 until its claim expires"
    );
    let late = store
        .claim_outbox(
            "n2",
            t0() + Duration::seconds(61),
            t0() + Duration::seconds(120),
            10,
        )
        .await
        .expect("claim");
    assert_eq!(late.len(), 1, "then another node takes it");
    assert_eq!(late[0].deliveries, 2, "handed out once before");
    let begun = store
        .begin_attempts(&[AttemptRef {
            execution_id: &e.id,
            node: "first",
            attempt: 1,
        }])
        .await
        .expect("begin");
    assert_eq!(
        begun,
        [AttemptBegin::Send { sends: 2 }],
        "a possible repeat"
    );
    // Its result deletes the row by key (an action sent from memory has no
    // row id).
    let outcome = ActionOutcome::Success {
        output: json!({"status": 200}),
    };
    store
        .finish_attempts(
            &[FinishedAttempt {
                execution_id: &e.id,
                node: "first",
                attempt: 1,
                outcome: &outcome,
                outbox_id: None,
                outbox_key: Some(late[0].dispatch.idempotency_key.as_str()),
            }],
            t0(),
        )
        .await
        .expect("finish");
    assert!(
        store
            .claim_outbox(
                "n3",
                t0() + Duration::seconds(3_600),
                t0() + Duration::seconds(3_700),
                10
            )
            .await
            .expect("claim")
            .is_empty(),
        "the outbox row is gone"
    );
    // The 1 s delay falls due before the horizon: claimed by n1 until due
    // plus its TTL.
    let t2 =
        f.wf.step(&e.snap, success("first", 1, json!({"status": 200})), t0())
            .expect("step");
    assert_eq!(commit(&e, &t2).await, [CommitResult::Committed]);
    let due = t0() + Duration::seconds(1);
    assert!(
        store
            .claim_due_timers("n2", due, due, due + Duration::seconds(30), 10)
            .await
            .expect("claim")
            .is_empty(),
        "the near timer is n1's"
    );
    let late = store
        .claim_due_timers(
            "n2",
            due + Duration::seconds(32),
            due + Duration::seconds(32),
            due + Duration::seconds(60),
            10,
        )
        .await
        .expect("claim");
    assert_eq!(late.len(), 1, "until its claim expires");
}

fn delivery(
    e: &ExecutionId,
    node: &str,
    provider: &str,
    status: &str,
    at: DateTime<Utc>,
) -> NewDelivery {
    NewDelivery {
        id: ids::new_delivery_id(),
        execution_id: e.clone(),
        node: node.into(),
        attempt: 1,
        idempotency_key: format!("{e}/{node}/1"),
        channel: "email".into(),
        provider: provider.into(),
        recipient: "ann@example.com".into(),
        status: status.into(),
        provider_message_id: (status != "failed").then(|| format!("msg-{node}-{provider}")),
        error_class: (status == "failed").then(|| "unavailable".into()),
        error: (status == "failed").then(|| "HTTP 503".into()),
        created_at: at,
        duration_ms: 12,
    }
}

async fn deliveries_are_logged_once_per_attempt_and_provider_and_listed_by_filter<S: Store>(
    store: &S,
) {
    let f = fixture(store).await;
    let a = start(store, &f, Some("ann"), None).await;
    let b = start(store, &f, Some("bob"), None).await;
    let t1 = t0() + chrono::Duration::seconds(1);
    store
        .add_deliveries(&[
            delivery(&a.id, "first", "sg", "failed", t0()),
            delivery(&a.id, "first", "mg", "queued", t0()),
            delivery(&b.id, "first", "sg", "sent", t1),
            // An execution that does not exist: left out.
            delivery(&ExecutionId::from("exe_nope"), "first", "sg", "sent", t1),
        ])
        .await
        .expect("add");
    // The same attempt and provider again (a re-send after a crash): updated.
    let mut again = delivery(&a.id, "first", "mg", "sent", t0());
    again.provider_message_id = Some("msg-again".into());
    store.add_deliveries(&[again]).await.expect("add again");
    let q = |f: &dyn Fn(&mut DeliveryQuery)| {
        let mut q = DeliveryQuery {
            namespace: "default".into(),
            limit: 10,
            ..DeliveryQuery::default()
        };
        f(&mut q);
        q
    };
    let all = store.list_deliveries(&q(&|_| {})).await.expect("list");
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert!(
        all.iter()
            .all(|d| d.workflow_id == f.workflow_id && d.namespace == "default")
    );
    let of_a = store
        .list_deliveries(&q(&|q| q.execution_id = Some(a.id.to_string())))
        .await
        .expect("list");
    let mut seen: Vec<(String, String, Option<String>)> = of_a
        .iter()
        .map(|d| {
            (
                d.provider.clone(),
                d.status.clone(),
                d.provider_message_id.clone(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("mg".into(), "sent".into(), Some("msg-again".into())),
            ("sg".into(), "failed".into(), None)
        ]
    );
    // A person's messages: their executions' deliveries.
    let of_bob = store
        .list_deliveries(&q(&|q| q.subject = Some("bob".into())))
        .await
        .expect("list");
    assert_eq!(
        of_bob
            .iter()
            .map(|d| d.execution_id.as_str())
            .collect::<Vec<_>>(),
        [b.id.as_str()]
    );
    let of_nobody = store
        .list_deliveries(&q(&|q| q.subject = Some("carl".into())))
        .await
        .expect("list");
    assert!(of_nobody.is_empty());
    let elsewhere = store
        .list_deliveries(&DeliveryQuery {
            namespace: "other".into(),
            subject: Some("bob".into()),
            limit: 10,
            ..DeliveryQuery::default()
        })
        .await
        .expect("list");
    assert!(elsewhere.is_empty(), "another namespace's subject");
    let failed = store
        .list_deliveries(&q(&|q| q.status = Some("failed".into())))
        .await
        .expect("list");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error_class.as_deref(), Some("unavailable"));
    let by_provider = store
        .list_deliveries(&q(&|q| {
            q.provider = Some("sg".into());
            q.created_after = Some(t1);
        }))
        .await
        .expect("list");
    assert_eq!(by_provider.len(), 1);
    assert_eq!(by_provider[0].execution_id, b.id.to_string());
    let page = store
        .list_deliveries(&q(&|q| {
            q.limit = 2;
        }))
        .await
        .expect("list");
    let rest = store
        .list_deliveries(&q(&|q| q.before_id = Some(page[1].id.clone())))
        .await
        .expect("list");
    assert_eq!(page.len() + rest.len(), 3);
    let other_ns = store
        .list_deliveries(&q(&|q| q.namespace = "other".into()))
        .await
        .expect("list");
    assert!(other_ns.is_empty());
    // A provider's status report moves its delivery, once.
    let report = [("msg-first-sg".to_owned(), "delivered".to_owned())];
    assert_eq!(
        store
            .apply_delivery_report("sg", "sg", "r1", &report, t1)
            .await
            .expect("report"),
        Some(1)
    );
    assert_eq!(
        store
            .apply_delivery_report(
                "sg",
                "sg",
                "r1",
                &[("msg-first-sg".into(), "clicked".into())],
                t1
            )
            .await
            .expect("replay"),
        None,
        "a replay changes nothing"
    );
    // Never back down: a late `sent` leaves `delivered`; `opened` moves on.
    store
        .apply_delivery_report(
            "sg",
            "sg",
            "r2",
            &[
                ("msg-first-sg".into(), "sent".into()),
                ("msg-unknown".into(), "delivered".into()),
            ],
            t1,
        )
        .await
        .expect("report");
    let status_of_b = || async {
        store
            .list_deliveries(&q(&|q| q.execution_id = Some(b.id.to_string())))
            .await
            .expect("list")[0]
            .status
            .clone()
    };
    assert_eq!(status_of_b().await, "delivered");
    store
        .apply_delivery_report(
            "sg",
            "sg",
            "r3",
            &[("msg-first-sg".into(), "opened".into())],
            t1,
        )
        .await
        .expect("report");
    assert_eq!(status_of_b().await, "opened");
    // A re-send after a crash writes its row again: it does not move the
    // status back down.
    store
        .add_deliveries(&[delivery(&b.id, "first", "sg", "sent", t1)])
        .await
        .expect("again");
    assert_eq!(status_of_b().await, "opened");
    // A failed send is replaced when the re-send goes; a send that went is
    // not replaced when a re-send fails.
    store
        .add_deliveries(&[delivery(&a.id, "first", "sg", "sent", t1)])
        .await
        .expect("re-sent");
    store
        .add_deliveries(&[delivery(&b.id, "first", "sg", "failed", t1)])
        .await
        .expect("re-send failed");
    let rows = store
        .list_deliveries(&q(&|q| q.provider = Some("sg".into())))
        .await
        .expect("list");
    let of = |id: &ExecutionId| {
        rows.iter()
            .find(|d| d.execution_id == id.to_string())
            .map(|d| (d.status.clone(), d.provider_message_id.clone()))
    };
    assert_eq!(
        of(&a.id),
        Some(("sent".into(), Some("msg-first-sg".into())))
    );
    assert_eq!(
        of(&b.id),
        Some(("opened".into(), Some("msg-first-sg".into())))
    );
    // A large batch (past SQLite's 500 terms), with the same attempt and
    // provider twice (PostgreSQL's upsert takes a row once a statement).
    let many: Vec<NewDelivery> = (0..600)
        .map(|n| delivery(&a.id, &format!("bulk{}", n % 550), "sg", "sent", t1))
        .collect();
    store.add_deliveries(&many).await.expect("a large batch");
    let bulk = store
        .list_deliveries(&q(&|q| {
            q.execution_id = Some(a.id.to_string());
            q.limit = 1000;
        }))
        .await
        .expect("list");
    assert_eq!(bulk.len(), 2 + 550);
    // The same receipt from another provider is another report.
    assert_eq!(
        store
            .apply_delivery_report("mg", "mg", "r1", &[], t1)
            .await
            .expect("report"),
        Some(0)
    );
}

async fn latest_versions_span_namespaces_and_leave_archived_workflows_out<S: Store>(store: &S) {
    let a = fixture_keyed(store, "lv-a").await;
    let b = fixture_keyed(store, "lv-b").await;
    store
        .publish(&b.workflow_id, &reference_workflow(), &Pins::new(), t0())
        .await
        .expect("v2");
    store
        .archive_workflow("default", &a.workflow_id, t0())
        .await
        .expect("archive");
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .latest_versions(after.as_deref(), 1)
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        after = Some(last.workflow_id.clone());
        all.extend(page);
    }
    let ours: Vec<(String, i32)> = all
        .iter()
        .filter(|v| v.workflow_id == a.workflow_id || v.workflow_id == b.workflow_id)
        .map(|v| (v.workflow_id.clone(), v.version))
        .collect();
    assert_eq!(ours, [(b.workflow_id.clone(), 2)]);
}

// ---- the audience ---------------------------------------------------------

fn patch(v: Value) -> ProfilePatch {
    let mut p = ProfilePatch::default();
    if let Some(a) = v.get("attributes").and_then(Value::as_object) {
        p.attributes = Some(a.clone());
    }
    if let Some(e) = v.get("email") {
        p.email = Some(e.as_str().map(str::to_owned));
    }
    if let Some(c) = v.get("categories").and_then(Value::as_object) {
        p.categories = c
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bool().expect("bool")))
            .collect();
    }
    p
}

async fn profiles_merge_replace_list_and_erase<S: Store>(store: &S) {
    let w = store
        .write_profiles(
            "default",
            &[
                (
                    "ann".into(),
                    patch(json!({"attributes": {"plan": "pro", "age": 30}, "email": "ann@x.org"})),
                ),
                // The same subject twice in one batch: both, in order.
                (
                    "ann".into(),
                    patch(json!({"attributes": {"age": null, "vip": true}})),
                ),
                ("bob".into(), patch(json!({"email": "bob@x.org"}))),
            ],
            false,
            t0(),
        )
        .await
        .expect("write");
    assert_eq!(w.len(), 3);
    let ann = store
        .get_profile("default", "ann")
        .await
        .expect("get")
        .expect("ann");
    assert_eq!(
        Value::Object(ann.attributes.clone()),
        json!({"plan": "pro", "vip": true})
    );
    assert_eq!(ann.addresses.email.as_deref(), Some("ann@x.org"));
    assert_eq!(ann.created_at, t0());
    // Merge later: created_at stays, the rest merges.
    let t1 = t0() + Duration::seconds(5);
    store
        .write_profiles(
            "default",
            &[("ann".into(), patch(json!({"categories": {"news": false}})))],
            false,
            t1,
        )
        .await
        .expect("merge");
    let ann = store
        .get_profile("default", "ann")
        .await
        .expect("get")
        .expect("ann");
    assert_eq!((ann.created_at, ann.updated_at), (t0(), t1));
    assert_eq!(ann.addresses.email.as_deref(), Some("ann@x.org"));
    assert_eq!(ann.preferences.categories.get("news"), Some(&false));
    // Replace: what is not given goes.
    store
        .write_profiles(
            "default",
            &[("ann".into(), patch(json!({"attributes": {"plan": "free"}})))],
            true,
            t1,
        )
        .await
        .expect("replace");
    let ann = store
        .get_profile("default", "ann")
        .await
        .expect("get")
        .expect("ann");
    assert_eq!(
        Value::Object(ann.attributes.clone()),
        json!({"plan": "free"})
    );
    assert_eq!(ann.addresses.email, None);
    assert!(ann.preferences.categories.is_empty());
    // Another namespace sees none of it.
    assert!(
        store
            .get_profile("other", "ann")
            .await
            .expect("get")
            .is_none()
    );
    let page = store.list_profiles("default", None, 1).await.expect("list");
    assert_eq!(
        page.iter().map(|p| p.subject.as_str()).collect::<Vec<_>>(),
        ["ann"]
    );
    let rest = store
        .list_profiles("default", Some("ann"), 10)
        .await
        .expect("list");
    assert_eq!(
        rest.iter().map(|p| p.subject.as_str()).collect::<Vec<_>>(),
        ["bob"]
    );

    // Erasure: the profile goes, deliveries lose their recipient, running
    // executions are named for cancelling.
    let f = fixture(store).await;
    let running = start(store, &f, Some("bob"), None).await;
    let other = start(store, &f, Some("ann"), None).await;
    store
        .add_deliveries(&[
            delivery(&running.id, "first", "sg", "sent", t0()),
            delivery(&other.id, "first", "sg", "sent", t0()),
        ])
        .await
        .expect("deliveries");
    let erased = store.erase_profile("default", "bob").await.expect("erase");
    assert!(erased.profile);
    assert_eq!(erased.running, vec![running.id.to_string()]);
    assert!(
        store
            .get_profile("default", "bob")
            .await
            .expect("get")
            .is_none()
    );
    let logged = store
        .list_deliveries(&DeliveryQuery {
            namespace: "default".into(),
            limit: 10,
            ..DeliveryQuery::default()
        })
        .await
        .expect("list");
    let by_exec = |id: &ExecutionId| {
        logged
            .iter()
            .find(|d| d.execution_id == id.to_string())
            .expect("row")
            .recipient
            .clone()
    };
    assert_eq!(by_exec(&running.id), "[erased]");
    assert_eq!(by_exec(&other.id), "ann@example.com");
    let again = store
        .erase_profile("default", "bob")
        .await
        .expect("erase again");
    assert!(!again.profile);
}

async fn the_audience_of_a_batch_is_read_at_once_and_bounces_suppress<S: Store>(store: &S) {
    let f = fixture(store).await;
    let a = start(store, &f, Some("ann"), None).await;
    let b = start(store, &f, None, None).await;
    store
        .write_profiles(
            "default",
            &[("ann".into(), patch(json!({"email": "Ann@X.org"})))],
            false,
            t0(),
        )
        .await
        .expect("write");
    store
        .add_suppressions(&[Suppression {
            namespace: "default".into(),
            channel: "email".into(),
            address: "ann@x.org".into(),
            reason: "manual".into(),
            detail: None,
            created_at: t0(),
        }])
        .await
        .expect("suppress");
    store
        .put_frequency_caps(
            "default",
            &[FrequencyCap {
                channel: "email".into(),
                category: "*".into(),
                max_sends: 3,
                window_seconds: 86_400,
                on_cap: OnCap::Skip,
            }],
        )
        .await
        .expect("caps");
    let facts = store
        .audience_of(
            "email",
            &[a.id.as_str(), b.id.as_str()],
            &["zed@x.org".into()],
        )
        .await
        .expect("facts");
    assert_eq!(
        facts.executions[a.id.as_str()],
        ("default".to_owned(), Some("ann".to_owned()))
    );
    assert_eq!(
        facts.executions[b.id.as_str()],
        ("default".to_owned(), None)
    );
    assert!(
        facts
            .profiles
            .contains_key(&("default".to_owned(), "ann".to_owned()))
    );
    // The profile's address was checked too, normalized.
    assert!(
        facts
            .suppressed
            .contains_key(&("default".to_owned(), "ann@x.org".to_owned()))
    );
    assert!(
        !facts
            .suppressed
            .contains_key(&("default".to_owned(), "zed@x.org".to_owned()))
    );
    assert_eq!(facts.caps["default"].len(), 1);
    // Listing and removing.
    let list = store
        .list_suppressions("default", Some("email"), None, 10)
        .await
        .expect("list");
    assert_eq!(list.len(), 1);
    assert!(
        store
            .remove_suppression("default", "email", "ann@x.org")
            .await
            .expect("rm")
    );
    assert!(
        !store
            .remove_suppression("default", "email", "ann@x.org")
            .await
            .expect("rm again")
    );

    // A hard bounce reported for a delivery puts its address on the list;
    // a delivery, not a bounce, does not.
    let mut d = delivery(&b.id, "first", "sg", "sent", t0());
    d.recipient = "Zed <Zed@X.org>".into();
    let mut e = delivery(&a.id, "first", "sg", "sent", t0());
    e.recipient = "ann@x.org".into();
    store.add_deliveries(&[d, e]).await.expect("deliveries");
    let moved = store
        .apply_delivery_report(
            "sg",
            "sg",
            "r1",
            &[("msg-first-sg".into(), "bounced".into())],
            t0(),
        )
        .await
        .expect("report");
    assert_eq!(moved, Some(2));
    let list = store
        .list_suppressions("default", None, None, 10)
        .await
        .expect("list");
    let mut got: Vec<(&str, &str)> = list
        .iter()
        .map(|s| (s.address.as_str(), s.reason.as_str()))
        .collect();
    got.sort();
    assert_eq!(got, [("ann@x.org", "bounced"), ("zed@x.org", "bounced")]);
    // Paging by channel and address.
    let first = store
        .list_suppressions("default", None, None, 1)
        .await
        .expect("page");
    let rest = store
        .list_suppressions(
            "default",
            None,
            Some((&first[0].channel, &first[0].address)),
            10,
        )
        .await
        .expect("page");
    assert_eq!(first.len() + rest.len(), 2);
}

async fn caps_count_each_send_once_and_never_let_two_writers_past<S: Store>(store: &S) {
    let caps = [FrequencyCap {
        channel: "email".into(),
        category: "*".into(),
        max_sends: 2,
        window_seconds: 3_600,
        on_cap: OnCap::Defer,
    }];
    let req = |key: &str, category: &str| CapRequest {
        subject: "ann".into(),
        key: key.into(),
        channel: "email".into(),
        category: category.into(),
        caps: None,
    };
    // Eight writers at once for one subject: two pass.
    let tries: Vec<_> = (0..8)
        .map(|n| {
            let r = [req(&format!("exe_{n}/mail"), "marketing")];
            let caps = &caps;
            async move {
                store
                    .reserve_sends("default", caps, &[], &r, t0())
                    .await
                    .expect("reserve")
            }
        })
        .collect();
    let verdicts: Vec<CapVerdict> = join_all(tries).await.into_iter().flatten().collect();
    let allowed = verdicts
        .iter()
        .filter(|v| **v == CapVerdict::Allowed)
        .count();
    assert_eq!(allowed, 2, "{verdicts:?}");
    for v in &verdicts {
        if let CapVerdict::Capped { until, on_cap, .. } = v {
            assert_eq!(*until, t0() + Duration::hours(1));
            assert_eq!(*on_cap, OnCap::Defer);
        }
    }
    // A retry of a node already counted replaces its entry (it passes).
    let allowed_key = (0..8)
        .map(|n| format!("exe_{n}/mail"))
        .find(|k| {
            let i: usize = k[4..5].parse().expect("n");
            verdicts[i] == CapVerdict::Allowed
        })
        .expect("one allowed");
    let again = store
        .reserve_sends(
            "default",
            &caps,
            &[],
            &[req(&allowed_key, "marketing")],
            t0(),
        )
        .await
        .expect("again");
    assert_eq!(again, [CapVerdict::Allowed]);
    // Given back: a place frees.
    store
        .release_sends("default", &[("ann".into(), allowed_key)])
        .await
        .expect("release");
    let next = store
        .reserve_sends(
            "default",
            &caps,
            &[],
            &[
                req("exe_x/mail", "marketing"),
                req("exe_y/mail", "marketing"),
            ],
            t0(),
        )
        .await
        .expect("next");
    assert_eq!(next[0], CapVerdict::Allowed);
    assert!(matches!(next[1], CapVerdict::Capped { .. }));
    // The window passes.
    let later = store
        .reserve_sends(
            "default",
            &caps,
            &[],
            &[req("exe_z/mail", "marketing")],
            t0() + Duration::hours(2),
        )
        .await
        .expect("later");
    assert_eq!(later, [CapVerdict::Allowed]);
}

async fn a_workflows_own_caps_decide_its_sends_and_keep_what_they_count<S: Store>(store: &S) {
    // The namespace caps marketing email only: one an hour.
    let hourly = [FrequencyCap {
        channel: "email".into(),
        category: "marketing".into(),
        max_sends: 1,
        window_seconds: 3_600,
        on_cap: OnCap::Skip,
    }];
    // A workflow of its own: three emails of any category a week, deferred.
    let weekly: Arc<[FrequencyCap]> = Arc::from(vec![FrequencyCap {
        channel: "email".into(),
        category: "*".into(),
        max_sends: 3,
        window_seconds: 7 * 86_400,
        on_cap: OnCap::Defer,
    }]);
    let exempt: Arc<[FrequencyCap]> = Arc::from(Vec::new());
    let req = |key: &str, category: &str, caps: Option<&Arc<[FrequencyCap]>>| CapRequest {
        subject: "bea".into(),
        key: key.into(),
        channel: "email".into(),
        category: category.into(),
        caps: caps.cloned(),
    };
    // Publishing the workflow makes its namespace count and keep a week of
    // every journey's emails.
    let f = fixture_keyed(store, "capped").await;
    let mut own = reference_workflow();
    own.settings.frequency_caps = Some(sojourn_runtime::caps::CapSettings {
        inherit: false,
        caps: vec![sojourn_runtime::caps::CapSpec {
            channel: "email".into(),
            category: "*".into(),
            max_sends: 3,
            window: "7d".into(),
            on_cap: OnCap::Defer,
        }],
    });
    store
        .publish(&f.workflow_id, &own, &Pins::new(), t0())
        .await
        .expect("publish");
    store
        .put_frequency_caps("default", &hourly)
        .await
        .expect("caps");
    let bea = start(store, &f, Some("bea"), None).await;
    let facts = store
        .audience_of("email", &[bea.id.as_str()], &[])
        .await
        .expect("facts");
    assert_eq!(facts.caps["default"], hourly);
    let scopes = facts.scopes["default"].clone();
    assert_eq!(
        scopes,
        [CapScope {
            channel: "email".into(),
            category: "*".into(),
            window_seconds: 7 * 86_400,
        }]
    );
    let at = |h: i64| t0() + Duration::hours(h);
    let (hourly, scopes) = (&hourly, &scopes);
    let reserve = |r: CapRequest, h: i64| async move {
        store
            .reserve_sends("default", hourly, scopes, &[r], at(h))
            .await
            .expect("reserve")
            .remove(0)
    };
    // A newsletter no namespace cap counts: counted for the weekly cap.
    assert_eq!(
        reserve(req("a/mail/1", "news", None), 0).await,
        CapVerdict::Allowed
    );
    // Exempt from the namespace's caps (a workflow with none of its own):
    // passes the hourly cap, and still counts.
    assert_eq!(
        reserve(req("b/mail/1", "marketing", Some(&exempt)), 0).await,
        CapVerdict::Allowed
    );
    assert!(matches!(
        reserve(req("c/mail/1", "marketing", None), 0).await,
        CapVerdict::Capped { .. }
    ));
    // Two hours on, the namespace's cap allows one more; its batch keeps
    // the sends the weekly cap still counts.
    assert_eq!(
        reserve(req("d/mail/1", "marketing", None), 2).await,
        CapVerdict::Allowed
    );
    match reserve(req("e/mail/1", "news", Some(&weekly)), 3).await {
        CapVerdict::Capped { until, on_cap, cap } => {
            assert_eq!(on_cap, OnCap::Defer);
            // Three sends in the week (the newsletter no namespace cap
            // counts, the exempt one, the one at hour 2, all kept): the
            // place frees when the oldest leaves the window.
            assert_eq!(until, at(0) + Duration::days(7), "{cap}");
            assert_eq!(cap, "at most 3 email messages per 7 days");
        }
        other => panic!("{other:?}"),
    }
    // A week on, the first two have left the window.
    assert_eq!(
        reserve(req("f/mail/1", "news", Some(&weekly)), 7 * 24 + 1).await,
        CapVerdict::Allowed
    );
}

async fn segments_backfill_then_follow_profile_writes_and_record_each_change<S: Store>(store: &S) {
    let plan = |p: &str| ProfilePatch {
        attributes: Some(json!({"plan": p}).as_object().expect("object").clone()),
        ..ProfilePatch::default()
    };
    // Profiles first: the segment made later is backfilled.
    let first: Vec<(String, ProfilePatch)> = ["a", "b", "c", "d", "e"]
        .iter()
        .zip(["pro", "free", "pro", "pro", "free"])
        .map(|(s, p)| ((*s).to_owned(), plan(p)))
        .collect();
    store
        .write_profiles("default", &first, false, t0())
        .await
        .expect("write");
    let bad = store
        .put_segment(
            "default",
            "vip",
            &SegmentDef::Expression("input.plan == 'pro'".into()),
            t0(),
        )
        .await;
    assert!(matches!(bad, Err(Error::Invalid(_))), "{bad:?}");
    let seg = store
        .put_segment(
            "default",
            "vip",
            &SegmentDef::Expression("attributes.plan == 'pro'".into()),
            t0(),
        )
        .await
        .expect("segment");
    assert_eq!(
        (seg.version, seg.members, seg.backfill_after.as_deref()),
        (1, 0, Some(""))
    );
    let later = t0() + Duration::seconds(30);
    let claimed = store
        .claim_backfills("n1", t0(), later, 10)
        .await
        .expect("claim");
    assert_eq!(claimed, [("default".to_owned(), "vip".to_owned())]);
    // Another node finds nothing to claim meanwhile.
    assert!(
        store
            .claim_backfills("n2", t0(), later, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(
        store
            .backfill_segment("default", "vip", "n2", 2, t0(), later)
            .await
            .expect("not ours"),
        None
    );
    let mut rounds = 0;
    loop {
        rounds += 1;
        let b = store
            .backfill_segment("default", "vip", "n1", 2, t0(), later)
            .await
            .expect("backfill")
            .expect("ours");
        if b.done {
            break;
        }
    }
    assert_eq!(rounds, 3, "five profiles, two at a time");
    let seg = store
        .get_segment("default", "vip")
        .await
        .expect("get")
        .expect("vip");
    assert_eq!((seg.members, seg.backfill_after), (3, None));
    assert_eq!(
        store
            .segment_members("default", "vip", None, 10)
            .await
            .expect("members"),
        ["a", "c", "d"]
    );

    // A trigger opened now sees only what happens from now on.
    store
        .open_segment_cursor("trg_1", "default", "vip", true)
        .await
        .expect("cursor");
    // Incremental: a leaves, b enters, in the write's own transaction.
    store
        .write_profiles(
            "default",
            &[("a".into(), plan("free")), ("b".into(), plan("pro"))],
            false,
            later,
        )
        .await
        .expect("write");
    assert!(
        store
            .segments_of("default", "a")
            .await
            .expect("of")
            .is_empty()
    );
    assert!(
        store
            .segments_of("default", "b")
            .await
            .expect("of")
            .contains("vip")
    );
    let cursors = store
        .claim_segment_cursors(
            &["trg_1".to_owned()],
            "n1",
            later,
            later + Duration::seconds(30),
        )
        .await
        .expect("cursors");
    assert_eq!(cursors.len(), 1);
    // Changes are read once every older transaction has ended (on
    // PostgreSQL, the other tests' included): they appear within moments.
    let mut changes = Vec::new();
    for _ in 0..200 {
        changes = store
            .segment_changes("default", "vip", cursors[0].last_change, 10)
            .await
            .expect("changes");
        if changes.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let seen: Vec<(&str, bool)> = changes
        .iter()
        .map(|c| (c.subject.as_str(), c.entered))
        .collect();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.contains(&("a", false)) && seen.contains(&("b", true)),
        "{seen:?}"
    );
    assert!(
        store
            .claim_segment_cursors(
                &["trg_1".to_owned()],
                "n2",
                later,
                later + Duration::seconds(30)
            )
            .await
            .expect("cursors")
            .is_empty(),
        "held by n1"
    );
    assert!(
        store
            .advance_segment_cursor("trg_1", "n1", changes[1].id, later)
            .await
            .expect("advance")
    );
    assert!(
        !store
            .advance_segment_cursor("trg_1", "n2", changes[1].id, later)
            .await
            .expect("not ours")
    );
    assert!(
        store
            .segment_changes("default", "vip", changes[1].id, 10)
            .await
            .expect("changes")
            .is_empty()
    );

    // in_segment reads through the execution's subject.
    let f = fixture(store).await;
    let e = start(store, &f, Some("b"), None).await;
    assert!(
        store
            .segments_of_execution(e.id.as_str())
            .await
            .expect("of")
            .contains("vip")
    );
    let none = start(store, &f, None, None).await;
    assert!(
        store
            .segments_of_execution(none.id.as_str())
            .await
            .expect("of")
            .is_empty()
    );

    // A static list: members replaced by the diff.
    store
        .put_segment(
            "default",
            "beta",
            &SegmentDef::Static(vec!["x".into(), "y".into()]),
            later,
        )
        .await
        .expect("static");
    let beta = store
        .put_segment(
            "default",
            "beta",
            &SegmentDef::Static(vec!["y".into(), "z".into()]),
            later,
        )
        .await
        .expect("static again");
    assert_eq!((beta.version, beta.members), (2, 2));
    assert_eq!(
        store
            .segment_members("default", "beta", None, 10)
            .await
            .expect("members"),
        ["y", "z"]
    );
    let names: Vec<String> = store
        .list_segments("default")
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["beta", "vip"]);

    // Erasure takes the subject out of every segment.
    store.erase_profile("default", "b").await.expect("erase");
    assert!(
        store
            .segments_of("default", "b")
            .await
            .expect("of")
            .is_empty()
    );
    assert!(
        store
            .delete_segment("default", "beta")
            .await
            .expect("delete")
    );
    assert!(
        store
            .get_segment("default", "beta")
            .await
            .expect("get")
            .is_none()
    );
}

async fn the_registry_versions_definitions_and_published_versions_pin_them<S: Store>(store: &S) {
    use sojourn_runtime::{Definition, Kind};
    let def = |topic: &str| -> Definition {
        serde_json::from_value(json!({
            "kind": "action", "title": "Sync", "run": {"kafka": {"topic": topic}},
        }))
        .expect("definition")
    };
    let (v1, new) = store
        .put_definition("default", "crm.sync", &def("a"), t0())
        .await
        .expect("put");
    assert!(new);
    assert_eq!((v1.version, v1.latest_version, v1.enabled), (1, 1, true));
    let (same, new) = store
        .put_definition("default", "crm.sync", &def("a"), t0())
        .await
        .expect("put");
    assert!(!new, "an unchanged definition makes no version");
    assert_eq!(same.version, 1);
    let (v2, new) = store
        .put_definition("default", "crm.sync", &def("b"), t0() + Duration::hours(1))
        .await
        .expect("put");
    assert!(new);
    assert_eq!(v2.version, 2);
    assert_eq!(v2.definition, def("b"));
    assert_eq!(v2.created_at, t0(), "the entry keeps its creation time");

    let got = |ns: &'static str, v: Option<i32>| store.get_definition(ns, "crm.sync", v);
    assert_eq!(
        got("default", None).await.expect("get").map(|e| e.version),
        Some(2)
    );
    assert_eq!(
        got("default", Some(1))
            .await
            .expect("get")
            .map(|e| e.definition),
        Some(def("a"))
    );
    assert!(got("default", Some(3)).await.expect("get").is_none());
    assert!(
        got("other", None).await.expect("get").is_none(),
        "namespaces are apart"
    );
    let listed = store.list_definitions("default").await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|e| (e.name.as_str(), e.version))
            .collect::<Vec<_>>(),
        [("crm.sync", 2)]
    );
    let versions = store
        .list_definition_versions("default", "crm.sync")
        .await
        .expect("versions");
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );

    // Disabling, an own definition and a built-in one.
    store
        .set_enabled("default", "crm.sync", None, false, t0())
        .await
        .expect("disable");
    store
        .set_enabled("default", "email.send", Some(Kind::Action), false, t0())
        .await
        .expect("disable a built-in");
    store
        .set_enabled("other", "sms.send", Some(Kind::Action), false, t0())
        .await
        .expect("disable elsewhere");
    assert!(matches!(
        store
            .set_enabled("default", "crm.nope", None, false, t0())
            .await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        store
            .disabled_definitions(Some("default"))
            .await
            .expect("disabled"),
        [
            ("default".to_owned(), "crm.sync".to_owned()),
            ("default".to_owned(), "email.send".to_owned())
        ]
    );
    assert_eq!(
        store
            .disabled_definitions(None)
            .await
            .expect("disabled")
            .len(),
        3
    );
    assert!(
        !got("default", None)
            .await
            .expect("get")
            .expect("entry")
            .enabled
    );
    for name in ["email.send", "sms.send", "email.digest"] {
        assert!(
            matches!(
                store.put_definition("default", name, &def("x"), t0()).await,
                Err(Error::Invalid(_))
            ),
            "{name}: a built-in or reserved name is not stored as an own definition"
        );
    }
    store
        .set_enabled("default", "email.send", Some(Kind::Action), true, t0())
        .await
        .expect("enable a built-in");
    assert_eq!(
        store
            .disabled_definitions(Some("default"))
            .await
            .expect("disabled")
            .len(),
        1
    );
    assert!(
        store.list_definitions("default").await.expect("list").len() == 1,
        "a built-in's row is not an own definition"
    );

    // A published version pins what it was validated against.
    let f = fixture_keyed(store, "pinned").await;
    let pins: Pins = [("crm.sync".to_owned(), 1)].into_iter().collect();
    let (p, new) = store
        .publish_if_changed(&f.workflow_id, &reference_workflow(), &pins, t0())
        .await
        .expect("publish");
    assert!(new, "the same document with other pins is a new version");
    assert_eq!(p.registry, pins);
    let read = store
        .get_version(&f.workflow_id, Some(p.version))
        .await
        .expect("read")
        .expect("version");
    assert_eq!(read.registry, pins);
    let (_, new) = store
        .publish_if_changed(&f.workflow_id, &reference_workflow(), &pins, t0())
        .await
        .expect("publish");
    assert!(!new);
    let before = store
        .get_version(&f.workflow_id, Some(f.version))
        .await
        .expect("read")
        .expect("version");
    assert!(before.registry.is_empty());

    // Deleting keeps what pins it.
    store
        .delete_definition("default", "crm.sync", t0())
        .await
        .expect("delete");
    assert!(got("default", None).await.expect("get").is_none());
    assert!(
        store
            .list_definitions("default")
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store
            .disabled_definitions(Some("default"))
            .await
            .expect("disabled"),
        [("default".to_owned(), "crm.sync".to_owned())],
        "a deleted definition stays disabled: what pins it stays held"
    );
    let entry = store
        .set_enabled("default", "crm.sync", None, true, t0())
        .await
        .expect("a deleted definition can be enabled")
        .expect("an own definition is answered");
    assert_eq!(
        (entry.version, entry.enabled, entry.deleted),
        (2, true, true)
    );
    store
        .set_enabled("default", "crm.sync", None, false, t0())
        .await
        .expect("and disabled again");
    assert!(matches!(
        store.delete_definition("default", "crm.sync", t0()).await,
        Err(Error::NotFound { .. })
    ));
    let pinned = store
        .pinned_definitions(&f.workflow_id, &pins)
        .await
        .expect("pinned");
    assert_eq!(pinned, [("crm.sync".to_owned(), 1, def("a"))]);
    let missing: Pins = [("crm.sync".to_owned(), 9)].into_iter().collect();
    assert!(matches!(
        store.pinned_definitions(&f.workflow_id, &missing).await,
        Err(Error::NotFound { .. })
    ));
    // Stored again, it goes on from its last version, still disabled.
    let (v3, _) = store
        .put_definition("default", "crm.sync", &def("a"), t0())
        .await
        .expect("put again");
    assert_eq!((v3.version, v3.enabled), (3, false));
    assert_eq!(
        store.execution_namespace("exe_nope").await.expect("read"),
        None
    );
}

async fn the_journal_rolls_up_to_a_direct_count_killed_mid_run_or_not<S: Store>(store: &S) {
    use sojourn_persistence::{RollupKey, rollup_key};
    use sojourn_runtime::{JournalEntry, JournalEvent, NodeId};
    use std::collections::HashMap;

    let a = fixture_keyed(store, "rollup-a").await;
    let b = fixture_keyed(store, "rollup-b").await;
    // A fixed-seed xorshift: the same data on both databases, every run.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rand = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let nodes = ["start", "welcome", "check", "nudge"];
    let branches = ["true", "false", "variant_b"];
    let mut expected: HashMap<RollupKey, i64> = HashMap::new();
    // Commits one execution's start with a generated journal (what the
    // store is given is what it counts; entries at `base` plus up to 3
    // days).
    let mut commit_generated =
        async |f: &Fixture,
               entries: usize,
               base: DateTime<Utc>,
               expected: &mut HashMap<RollupKey, i64>| {
            let mut e = start(store, f, None, None).await;
            let mut t = f.wf.step(&e.snap, Input::Start, t0()).expect("step");
            t.journal.clear();
            for i in 0..entries {
                let node = NodeId::from(nodes[rand(4) as usize]);
                let event = match rand(10) {
                    0..=2 => JournalEvent::NodeEntered {
                        node,
                        node_type: "action".into(),
                    },
                    3 | 4 => JournalEvent::BranchTaken {
                        node,
                        branch: branches[rand(3) as usize].into(),
                        to: NodeId::from("next"),
                    },
                    5 => JournalEvent::ActionFailed {
                        node,
                        attempt: 1,
                        error: "503".into(),
                        retryable: true,
                    },
                    6 => JournalEvent::ActionSkipped {
                        node,
                        attempt: 1,
                        reason: "capped".into(),
                    },
                    7 => match rand(4) {
                        0 => JournalEvent::Completed {
                            outcome: Some("bought".into()),
                        },
                        1 => JournalEvent::Completed { outcome: None },
                        2 => JournalEvent::Failed {
                            node: Some(node),
                            error: "boom".into(),
                        },
                        _ => JournalEvent::Cancelled { reason: None },
                    },
                    8 => JournalEvent::ExitCriteriaMet {
                        event: "unsubscribed".into(),
                    },
                    // Not counted.
                    _ => JournalEvent::DelayElapsed { node },
                };
                let at =
                    base + Duration::hours(rand(72) as i64) + Duration::seconds(rand(3600) as i64);
                let entry = JournalEntry {
                    seq: i as u64 + 1,
                    at,
                    event,
                };
                let doc = serde_json::to_value(&entry).expect("json");
                // The direct count, written out apart from the store's
                // mapping (`rollup_key`).
                let direct = |metric: &'static str, node: &str, branch: &str| RollupKey {
                    namespace: "default".into(),
                    workflow_id: f.workflow_id.clone(),
                    day: at.format("%Y-%m-%d").to_string(),
                    hour: at.format("%H").to_string().parse().unwrap_or(-1),
                    version: f.version,
                    node: node.into(),
                    branch: branch.into(),
                    channel: String::new(),
                    provider: String::new(),
                    metric,
                };
                let key = match &entry.event {
                    JournalEvent::NodeEntered { node, .. } => {
                        Some(direct("entered", node.as_str(), ""))
                    }
                    JournalEvent::BranchTaken { node, branch, .. } => {
                        Some(direct("branch", node.as_str(), branch))
                    }
                    JournalEvent::ActionFailed { node, .. } => {
                        Some(direct("action_failed", node.as_str(), ""))
                    }
                    JournalEvent::ActionSkipped { node, .. } => {
                        Some(direct("skipped", node.as_str(), ""))
                    }
                    JournalEvent::Completed { outcome } => {
                        Some(direct("completed", "", outcome.as_deref().unwrap_or("")))
                    }
                    JournalEvent::Failed { node, .. } => Some(direct(
                        "failed",
                        node.as_ref().map(NodeId::as_str).unwrap_or(""),
                        "",
                    )),
                    JournalEvent::Cancelled { .. } => Some(direct("cancelled", "", "")),
                    JournalEvent::ExitCriteriaMet { event } => Some(direct("exited", "", event)),
                    _ => None,
                };
                assert_eq!(
                    rollup_key(
                        "default",
                        &f.workflow_id,
                        f.version,
                        entry.event.kind(),
                        &doc,
                        at
                    ),
                    key,
                    "the store's mapping of {doc}"
                );
                if let Some(key) = key {
                    *expected.entry(key).or_insert(0) += 1;
                }
                t.journal.push(entry);
            }
            let results = store
                .commit(&[Commit {
                    execution_id: &e.id,
                    epoch: e.epoch,
                    transition: &t,
                    fired_timer: None,
                    consumed_input: None,
                    claim: None,
                    consumed_outbox: None,
                }])
                .await
                .expect("commit");
            assert_eq!(results[0], CommitResult::Committed);
            e.snap = t.snapshot;
        };
    for i in 0..18 {
        let f = if i % 3 == 0 { &b } else { &a };
        commit_generated(f, 1 + (i * 7) % 25, t0(), &mut expected).await;
    }
    let counted = async |store: &S| -> HashMap<RollupKey, i64> {
        let mut out = HashMap::new();
        for f in [&a, &b] {
            for r in store
                .analytics_counts("default", &f.workflow_id, None, "2000-01-01", "2999-12-31")
                .await
                .expect("counts")
            {
                assert_eq!((r.channel.as_str(), r.provider.as_str()), ("", ""));
                let metric = [
                    "entered",
                    "branch",
                    "action_failed",
                    "skipped",
                    "completed",
                    "failed",
                    "cancelled",
                    "exited",
                ]
                .into_iter()
                .find(|m| *m == r.metric)
                .expect("a known metric");
                out.insert(
                    RollupKey {
                        namespace: "default".into(),
                        workflow_id: f.workflow_id.clone(),
                        day: r.day,
                        hour: r.hour,
                        version: r.version,
                        node: r.node,
                        branch: r.branch,
                        channel: r.channel,
                        provider: r.provider,
                        metric,
                    },
                    r.value,
                );
            }
        }
        out
    };
    // Killed mid-batch, again and again (a dropped future rolls its
    // transaction back), after 1 to 40 polls, in batches of 7 rows; then to
    // the end.
    let mut cut = 0;
    for polls in 1..=40 {
        if cut_after(store.rollup_journal(7), polls).await {
            cut += 1;
        }
    }
    assert!(cut > 0, "some rollups were cut short");
    // Then to the end (a rollup cut short after its commit went out has
    // counted its batch: the cursor says how far).
    assert!(!expected.is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while counted(store).await != expected && std::time::Instant::now() < deadline {
        if store.rollup_journal(7).await.expect("rollup") != Some(7) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        counted(store).await,
        expected,
        "the rollup equals a direct count"
    );
    // Idempotent: done again, nothing changes.
    assert_eq!(roll_until(store, 1000, 0).await, 0);
    assert_eq!(counted(store).await, expected);
    // More rows later: only they are added.
    commit_generated(&a, 20, t0() + Duration::days(30), &mut expected).await;
    assert_eq!(roll_until(store, 1000, 20).await, 20);
    assert_eq!(counted(store).await, expected);

    // Where the unfinished executions are now.
    let positions = store
        .current_positions("default", &a.workflow_id, None)
        .await
        .expect("positions");
    let total: i64 = positions.iter().map(|(_, _, n)| n).sum();
    assert_eq!(total, 13, "{positions:?}");
}

/// Rolls up until `want` rows were counted (30 s at most: on PostgreSQL a
/// watermark waits for every transaction of the server, other tests'
/// included), then a few turns more; returns the rows counted.
async fn roll_until<S: Store>(store: &S, limit: u32, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut total = 0;
    while total < want && std::time::Instant::now() < deadline {
        match store.rollup_journal(limit).await.expect("rollup") {
            Some(n) if n > 0 => total += n,
            // Nothing settled yet, or the cursor still held by a rollup
            // cut short whose rollback is on its way.
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    for _ in 0..3 {
        total += store
            .rollup_journal(limit)
            .await
            .expect("rollup")
            .unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    total
}

/// Polls a rollup `polls` times, letting other tasks run between, then
/// drops it if it has not finished: true if it was cut short.
async fn cut_after<F: std::future::Future>(fut: F, polls: usize) -> bool {
    let mut fut = std::pin::pin!(fut);
    for _ in 0..polls {
        let done =
            std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx).is_ready()))
                .await;
        if done {
            return false;
        }
        tokio::task::yield_now().await;
    }
    true
}

/// PostgreSQL hands out journal ids before commit: a row of a transaction
/// still open when rows with higher ids commit is counted once it commits,
/// and the rows after it wait for it; nothing is lost.
#[tokio::test]
async fn a_journal_row_committed_after_higher_ids_is_counted_on_postgres() {
    use sojourn_persistence::AnalyticsStore;
    let db = pg().await;
    let store = &db.store;
    let f = fixture(store).await;
    let e = start(store, &f, None, None).await;
    let row = |node: &str| json!({"seq": 1, "at": t0(), "type": "node_entered", "node": node, "node_type": "action"});
    let entered = async |store: &PgStore| -> i64 {
        store
            .analytics_counts("default", &f.workflow_id, None, "2000-01-01", "2999-12-31")
            .await
            .expect("counts")
            .iter()
            .filter(|r| r.metric == "entered")
            .map(|r| r.value)
            .sum()
    };
    // An open transaction takes a journal id (after writing, as a commit
    // does, its execution's row first).
    let mut open = store.pool().begin().await.expect("begin");
    sqlx::query("UPDATE executions SET updated_at = updated_at WHERE id = $1")
        .bind(e.id.as_str())
        .execute(&mut *open)
        .await
        .expect("update");
    sqlx::query("INSERT INTO journal (execution_id, seq, at, kind, entry) VALUES ($1, 1, $2, 'node_entered', $3)")
        .bind(e.id.as_str())
        .bind(t0())
        .bind(row("early"))
        .execute(&mut *open)
        .await
        .expect("insert");
    // A higher id commits meanwhile.
    sqlx::query("INSERT INTO journal (execution_id, seq, at, kind, entry) VALUES ($1, 2, $2, 'node_entered', $3)")
        .bind(e.id.as_str())
        .bind(t0())
        .bind(row("late"))
        .execute(store.pool())
        .await
        .expect("insert");
    for _ in 0..5 {
        assert_eq!(store.rollup_journal(100).await.expect("rollup"), Some(0));
    }
    assert_eq!(
        entered(store).await,
        0,
        "nothing is counted past an open transaction"
    );
    open.commit().await.expect("commit");
    assert_eq!(roll_until(store, 100, 2).await, 2);
    assert_eq!(entered(store).await, 2, "both rows, once each");
    db.drop_schema().await;
}

/// The interleaving a snapshot's xmax would get wrong: a commit that took
/// its transaction id *after* another one that finished, and a journal id
/// *before* it. Nothing is counted past its row while it is open.
#[tokio::test]
async fn a_journal_row_of_a_younger_open_transaction_is_waited_for_on_postgres() {
    use sojourn_persistence::AnalyticsStore;
    let db = pg().await;
    let store = &db.store;
    let f = fixture(store).await;
    let e = start(store, &f, None, None).await;
    let row = |node: &str| json!({"seq": 1, "at": t0(), "type": "node_entered", "node": node, "node_type": "action"});
    let touch = "UPDATE executions SET updated_at = updated_at WHERE id = $1";
    let insert = "INSERT INTO journal (execution_id, seq, at, kind, entry) VALUES ($1, 1, $2, 'node_entered', $3)";
    // N takes the older transaction id, T the younger one.
    let mut n = store.pool().begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *n)
        .await
        .expect("xid");
    let mut t = store.pool().begin().await.expect("begin");
    sqlx::query(touch)
        .bind(e.id.as_str())
        .execute(&mut *t)
        .await
        .expect("update");
    // T takes the lower journal id and stays open; N takes a higher one
    // and commits.
    sqlx::query(insert)
        .bind(e.id.as_str())
        .bind(t0())
        .bind(row("t"))
        .execute(&mut *t)
        .await
        .expect("insert");
    sqlx::query(insert)
        .bind(e.id.as_str())
        .bind(t0())
        .bind(row("n"))
        .execute(&mut *n)
        .await
        .expect("insert");
    n.commit().await.expect("commit");
    for _ in 0..5 {
        assert_eq!(
            store.rollup_journal(100).await.expect("rollup"),
            Some(0),
            "nothing is counted past the open transaction's row"
        );
    }
    t.commit().await.expect("commit");
    assert_eq!(roll_until(store, 100, 2).await, 2);
    db.drop_schema().await;
}

// ---- analytics: deliveries, conversions, retention -------------------------------

/// start → call (http.request) → done, with `settings`.
fn short_workflow(key: &str, settings: Value) -> Workflow {
    Workflow::from_value(json!({
        "key": key,
        "settings": settings,
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "call", "type": "action", "config": {"action": "http.request",
                "inputs": {"url": "http://127.0.0.1:1/x"}}},
            {"id": "done", "type": "exit", "config": {"outcome": "done"}},
        ],
        "edges": [
            {"from": "start", "to": "call"},
            {"from": "call", "to": "done", "branch": "success"},
        ]
    }))
    .expect("parses")
}

/// Starts an execution of `f` for `subject` at `at` and, unless it is held
/// out, runs it to its end (`call` succeeds) at `end`.
async fn run_short<S: Store>(
    store: &S,
    f: &Fixture,
    subject: Option<&str>,
    at: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Exec {
    let mut e = start_at(store, f, subject, None, at).await;
    step(store, f, &mut e, Input::Start, at).await;
    if e.snap.status == Status::Running {
        let done = Input::ActionResult {
            node: "call".into(),
            attempt: 1,
            outcome: ActionOutcome::Success {
                output: json!({"status": 200}),
            },
        };
        step(store, f, &mut e, done, end).await;
    }
    e
}

/// Every counted delivery row of a namespace: (channel, provider, metric,
/// branch) → value.
async fn delivery_counts<S: Store>(
    store: &S,
    workflow: Option<&str>,
) -> std::collections::BTreeMap<(String, String, String, String), i64> {
    store
        .delivery_totals("default", workflow, "2026-11-01", "2026-12-31")
        .await
        .expect("totals")
        .into_iter()
        .map(|t| ((t.channel, t.provider, t.metric, t.branch), t.value))
        .collect()
}

/// Rolls deliveries up until a batch is empty (30 s at most).
async fn roll_deliveries<S: Store>(store: &S, limit: u32) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut total = 0;
    while std::time::Instant::now() < deadline {
        match store.rollup_deliveries(limit).await.expect("rollup") {
            Some(0) => break,
            Some(n) => total += n,
            // Held by a rollup cut short whose rollback is on its way.
            None => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    total
}

async fn deliveries_roll_up_per_channel_and_provider_as_their_status_moves<S: Store>(store: &S) {
    let f = fixture(store).await;
    let a = start(store, &f, None, None).await;
    let b = start(store, &f, None, None).await;
    let t1 = t0() + Duration::hours(1);
    let mut suppressed = delivery(&a.id, "second", "-", "suppressed", t0());
    suppressed.idempotency_key = format!("{}/second/1", a.id);
    store
        .add_deliveries(&[
            delivery(&a.id, "first", "sg", "sent", t0()),
            delivery(&b.id, "first", "smtp", "failed", t0()),
            suppressed,
            delivery(&b.id, "second", "sg", "deferred", t0()),
        ])
        .await
        .expect("add");
    // Idempotent, and never more than asked for a batch.
    assert_eq!(store.rollup_deliveries(2).await.expect("rollup"), Some(2));
    assert_eq!(roll_deliveries(store, 100).await, 2);
    assert_eq!(store.rollup_deliveries(100).await.expect("rollup"), Some(0));
    let key = |c: &str, p: &str, m: &str, b: &str| (c.into(), p.into(), m.into(), b.into());
    let mut want = std::collections::BTreeMap::from([
        (key("email", "sg", "sent", ""), 1),
        (key("email", "smtp", "send_failed", ""), 1),
        (key("email", "-", "unsent", "suppressed"), 1),
    ]);
    assert_eq!(delivery_counts(store, None).await, want);
    // A report moves a delivery on: what the move adds is counted once.
    let opened = [("msg-first-sg".to_owned(), "opened".to_owned())];
    store
        .apply_delivery_report("sg", "sg", "r1", &opened, t1)
        .await
        .expect("report");
    // A cut rollup counts nothing; the next counts it once.
    let mut cut = 0;
    for polls in 1..200 {
        if !cut_after(store.rollup_deliveries(100), polls).await {
            break;
        }
        cut += 1;
    }
    roll_deliveries(store, 100).await;
    assert!(cut > 0, "no rollup was cut short");
    want.insert(key("email", "sg", "delivered", ""), 1);
    want.insert(key("email", "sg", "opened", ""), 1);
    assert_eq!(delivery_counts(store, None).await, want);
    // Clicked next (opened and delivered are not counted again); the
    // failed send is sent again after a crash and goes.
    let clicked = [("msg-first-sg".to_owned(), "clicked".to_owned())];
    store
        .apply_delivery_report("sg", "sg", "r2", &clicked, t1)
        .await
        .expect("report");
    store
        .add_deliveries(&[delivery(&b.id, "first", "smtp", "sent", t1)])
        .await
        .expect("re-send");
    assert_eq!(roll_deliveries(store, 100).await, 2);
    want.insert(key("email", "sg", "clicked", ""), 1);
    want.insert(key("email", "smtp", "sent", ""), 1);
    assert_eq!(delivery_counts(store, None).await, want);
    // A final status stays: a bounce then a complaint moves it once.
    for (receipt, status) in [("r3", "bounced"), ("r4", "complained"), ("r5", "bounced")] {
        let report = [("msg-first-sg".to_owned(), status.to_owned())];
        let moved = store
            .apply_delivery_report("sg", "sg", receipt, &report, t1)
            .await
            .expect("report");
        assert_eq!(moved, Some(u64::from(receipt == "r3")), "{receipt}");
        roll_deliveries(store, 100).await;
    }
    want.insert(key("email", "sg", "bounced", ""), 1);
    assert_eq!(delivery_counts(store, None).await, want);
    // The recipient unsubscribes through the message's link: counted once.
    let message = format!("{}/first/1", a.id);
    let mark = async || {
        store
            .mark_unsubscribed("default", &message, t1)
            .await
            .expect("mark")
    };
    assert_eq!(mark().await, 1);
    assert_eq!(mark().await, 0);
    assert_eq!(
        store
            .mark_unsubscribed("other", &message, t1)
            .await
            .expect("mark"),
        0
    );
    assert_eq!(roll_deliveries(store, 100).await, 1);
    want.insert(key("email", "sg", "unsubscribed", ""), 1);
    assert_eq!(delivery_counts(store, None).await, want);
    assert_eq!(delivery_counts(store, Some(&f.workflow_id)).await, want);
    assert!(delivery_counts(store, Some("wf_none")).await.is_empty());
    // The counts are kept per node and day too: the failing node first.
    let failing = store
        .failing_nodes("default", None, "2026-11-01", "2026-12-31", 10)
        .await
        .expect("failing");
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(
        (failing[0].node.as_str(), failing[0].workflow.as_str()),
        ("first", "reference")
    );
    assert_eq!(
        (
            failing[0].failed,
            failing[0].action_failed,
            failing[0].delivery_failed
        ),
        (0, 0, 1)
    );
    let rows = store
        .analytics_counts("default", &f.workflow_id, None, "2026-11-22", "2026-11-22")
        .await
        .expect("counts");
    let opened_row = rows
        .iter()
        .find(|r| r.metric == "opened")
        .expect("opened row");
    assert_eq!(
        (
            opened_row.hour,
            opened_row.node.as_str(),
            opened_row.version
        ),
        (11, "first", f.version)
    );
    // Nothing in another namespace.
    assert!(
        store
            .delivery_totals("other", None, "2026-11-01", "2026-12-31")
            .await
            .expect("totals")
            .is_empty()
    );
}

async fn conversions_count_once_within_the_goal_window_with_the_holdout_apart<S: Store>(store: &S) {
    let settings = json!({
        "goal": {"event": "purchase", "within": "2d"},
        "holdout": {"percent": 30},
    });
    let f = fixture_of(store, "default", "shop", short_workflow("shop", settings)).await;
    let subjects: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
    let mut held = Vec::new();
    for s in &subjects {
        let e = run_short(store, &f, Some(s), t0(), t0() + Duration::minutes(1)).await;
        // The holdout ends at entry; the others walk the journey.
        let held_out = f.wf.held_out(s);
        assert_eq!(e.snap.status, Status::Completed);
        let outcome = e.snap.outcome.as_deref();
        assert_eq!(outcome, Some(if held_out { "holdout" } else { "done" }));
        if held_out {
            held.push(s.clone());
        }
    }
    // 30 % of 40, give or take, the same each time.
    assert!((6..=20).contains(&held.len()), "{held:?}");
    assert_eq!(
        held,
        subjects
            .iter()
            .filter(|s| f.wf.held_out(s))
            .cloned()
            .collect::<Vec<_>>()
    );
    let treated: Vec<&String> = subjects.iter().filter(|s| !held.contains(s)).collect();
    let convert = |key: &str, at: DateTime<Utc>| {
        let key = key.to_owned();
        async move {
            store
                .record_conversions("default", "purchase", &key, at)
                .await
                .expect("record")
        }
    };
    let t1 = t0() + Duration::hours(5);
    // Within the window, once per execution.
    assert_eq!(convert(treated[0], t1).await, 1);
    assert_eq!(convert(treated[0], t1).await, 0);
    assert_eq!(convert(treated[1], t1).await, 1);
    assert_eq!(convert(&held[0], t1).await, 1);
    // After the window, before entry, another event, another namespace,
    // a subject with no execution: nothing.
    assert_eq!(convert(treated[2], t0() + Duration::days(3)).await, 0);
    assert_eq!(convert(treated[3], t0() - Duration::hours(1)).await, 0);
    assert_eq!(
        store
            .record_conversions("default", "signup", treated[4], t1)
            .await
            .expect("record"),
        0
    );
    assert_eq!(
        store
            .record_conversions("other", "purchase", treated[4], t1)
            .await
            .expect("record"),
        0
    );
    assert_eq!(convert("nobody", t1).await, 0);
    // Rolled up once: per group, and per branch taken before converting.
    let mut rolled = 0;
    for _ in 0..100 {
        match store.rollup_conversions(2).await.expect("rollup") {
            Some(0) => break,
            Some(n) => rolled += n,
            None => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    assert_eq!(rolled, 3);
    assert_eq!(store.rollup_conversions(10).await.expect("rollup"), Some(0));
    let totals = store
        .analytics_totals("default", &f.workflow_id, None, "2026-11-01", "2026-11-30")
        .await
        .expect("totals");
    let value = |metric: &str, node: &str, branch: &str| {
        totals
            .iter()
            .filter(|r| r.metric == metric && r.node == node && r.branch == branch)
            .map(|r| r.value)
            .sum::<i64>()
    };
    assert_eq!(value("converted", "", ""), 2);
    assert_eq!(value("converted", "", "holdout"), 1);
    assert_eq!(value("converted", "call", "success"), 2);
    // Not rolled up yet: the journal's own counts (the rollup job does).
    assert_eq!(value("held_out", "", ""), 0);
    roll_until(store, 5000, 1).await;
    let totals = store
        .analytics_totals("default", &f.workflow_id, None, "2026-11-01", "2026-11-30")
        .await
        .expect("totals");
    let held_out: i64 = totals
        .iter()
        .filter(|r| r.metric == "held_out")
        .map(|r| r.value)
        .sum();
    assert_eq!(held_out, held.len() as i64);
}

async fn retention_deletes_only_old_counted_records_of_finished_executions<S: Store>(store: &S) {
    let f = fixture_of(
        store,
        "default",
        "short",
        short_workflow("short", json!({})),
    )
    .await;
    let g = fixture_of(store, "other", "short", short_workflow("short", json!({}))).await;
    let now = t0() + Duration::days(40);
    // Old and finished (its records go), old and unfinished, recently
    // finished, and old and finished in a namespace without retention.
    let old = run_short(store, &f, None, t0(), t0() + Duration::minutes(1)).await;
    let mut open = start_at(store, &f, None, None, t0()).await;
    step(store, &f, &mut open, Input::Start, t0()).await;
    let recent = run_short(store, &f, None, t0(), now - Duration::days(5)).await;
    let elsewhere = run_short(store, &g, None, t0(), t0() + Duration::minutes(1)).await;
    for e in [&old, &recent, &elsewhere] {
        store
            .add_deliveries(&[delivery(&e.id, "call", "sg", "sent", t0())])
            .await
            .expect("add");
    }
    let policy = sojourn_persistence::RetentionPolicy {
        journal_days: Some(30),
        node_executions_days: Some(30),
        deliveries_days: Some(30),
    };
    assert_eq!(store.retention("default").await.expect("read"), None);
    store
        .set_retention("default", &policy, t0())
        .await
        .expect("set");
    assert_eq!(
        store.retention("default").await.expect("read"),
        Some(policy.clone())
    );
    let sweep_all = async || {
        let mut rows = 0;
        for _ in 0..50 {
            match store.sweep_retention(1, now).await.expect("sweep") {
                Some(Some(s)) => rows += s.rows,
                Some(None) => break,
                None => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        rows
    };
    let journal = async |e: &Exec| store.journal(&e.id, 0, 1000).await.expect("journal").len();
    let nodes = async |e: &Exec| store.node_executions(&e.id).await.expect("nodes").len();
    let deliveries = async |e: &Exec| {
        let q = DeliveryQuery {
            namespace: if e.id == elsewhere.id {
                "other"
            } else {
                "default"
            }
            .into(),
            execution_id: Some(e.id.to_string()),
            subject: None,
            workflow_id: None,
            channel: None,
            provider: None,
            status: None,
            created_after: None,
            created_before: None,
            before_id: None,
            limit: 10,
        };
        store.list_deliveries(&q).await.expect("deliveries").len()
    };
    let before = [
        journal(&old).await,
        journal(&open).await,
        journal(&recent).await,
        journal(&elsewhere).await,
    ];
    assert!(before.iter().all(|n| *n > 0), "{before:?}");
    assert_eq!(nodes(&old).await, 1);
    // Nothing counted yet: only node executions go.
    assert_eq!(sweep_all().await, 1);
    assert_eq!(nodes(&old).await, 0);
    assert_eq!(journal(&old).await, before[0]);
    assert_eq!(deliveries(&old).await, 1);
    // Counted: the old finished execution's journal and delivery go too.
    roll_until(store, 5000, 1).await;
    roll_deliveries(store, 100).await;
    let counted = store
        .analytics_totals("default", &f.workflow_id, None, "2026-11-01", "2026-12-31")
        .await
        .expect("totals");
    assert_eq!(sweep_all().await, before[0] as u64 + 1);
    assert_eq!(journal(&old).await, 0);
    assert_eq!(deliveries(&old).await, 0);
    // The rest is kept: unfinished, recent, another namespace; and the
    // analytics.
    assert_eq!(journal(&open).await, before[1]);
    assert_eq!(nodes(&open).await, 1);
    assert_eq!(journal(&recent).await, before[2]);
    assert_eq!((nodes(&recent).await, deliveries(&recent).await), (1, 1));
    assert_eq!(journal(&elsewhere).await, before[3]);
    assert_eq!(
        (nodes(&elsewhere).await, deliveries(&elsewhere).await),
        (1, 1)
    );
    assert_eq!(
        store
            .analytics_totals("default", &f.workflow_id, None, "2026-11-01", "2026-12-31")
            .await
            .expect("totals"),
        counted
    );
    // Swept is swept: nothing more to do.
    assert_eq!(sweep_all().await, 0);
}

/// Journal entries the engine does not write (a number, null, an object
/// where a string goes; fields missing) are counted as `rollup_key` maps
/// them: under '' — on both databases, and without stopping the rollup.
async fn odd_entries_roll_up_as_the_mapping_says<S: Store>(
    store: &S,
    insert: impl AsyncFn(&str, i64, &str, Value),
) {
    let f = fixture(store).await;
    let e = start(store, &f, None, None).await;
    let entries = [
        ("completed", json!({"type": "completed", "outcome": 5})),
        ("completed", json!({"type": "completed", "outcome": null})),
        (
            "completed",
            json!({"type": "completed", "outcome": {"a": 1}}),
        ),
        (
            "branch_taken",
            json!({"type": "branch_taken", "node": 7, "branch": true}),
        ),
        (
            "node_entered",
            json!({"type": "node_entered", "node": "n\"1é"}),
        ),
        ("failed", json!({"type": "failed", "error": "x"})),
    ];
    for (seq, (kind, entry)) in entries.iter().enumerate() {
        insert(e.id.as_str(), seq as i64 + 1, kind, entry.clone()).await;
    }
    assert_eq!(
        roll_until(store, 100, entries.len() as u64).await,
        entries.len() as u64
    );
    let mut got: Vec<(String, String, String, i64)> = store
        .analytics_totals("default", &f.workflow_id, None, "2000-01-01", "2999-12-31")
        .await
        .expect("totals")
        .into_iter()
        .map(|r| (r.metric, r.node, r.branch, r.value))
        .collect();
    got.sort();
    let mut want: Vec<(String, String, String, i64)> = Vec::new();
    for (kind, entry) in &entries {
        let k = sojourn_persistence::rollup_key(
            "default",
            &f.workflow_id,
            f.version,
            kind,
            entry,
            t0(),
        )
        .expect("counted");
        match want.iter_mut().find(|w| {
            (w.0.as_str(), w.1.as_str(), w.2.as_str()) == (k.metric, &*k.node, &*k.branch)
        }) {
            Some(w) => w.3 += 1,
            None => want.push((k.metric.to_owned(), k.node, k.branch, 1)),
        }
    }
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn odd_journal_entries_roll_up_as_the_mapping_says_on_postgres() {
    let db = pg().await;
    let pool = db.store.pool().clone();
    odd_entries_roll_up_as_the_mapping_says(&db.store, async |id: &str, seq: i64, kind: &str, entry: Value| {
        sqlx::query("INSERT INTO journal (execution_id, seq, at, kind, entry) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(seq)
            .bind(t0())
            .bind(kind)
            .bind(entry)
            .execute(&pool)
            .await
            .expect("insert");
    })
    .await;
    db.drop_schema().await;
}

#[tokio::test]
async fn odd_journal_entries_roll_up_as_the_mapping_says_on_sqlite() {
    let (store, path) = sqlite().await;
    let pool = store.pool().clone();
    odd_entries_roll_up_as_the_mapping_says(&store, async |id: &str, seq: i64, kind: &str, entry: Value| {
        sqlx::query("INSERT INTO journal (execution_id, seq, at, kind, entry) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(seq)
            .bind(t0().timestamp_millis())
            .bind(kind)
            .bind(entry.to_string())
            .execute(&pool)
            .await
            .expect("insert");
    })
    .await;
    store.pool().close().await;
    remove_sqlite(&path);
}
