//! The conformance suite: every test runs against PostgreSQL (a fresh schema
//! each, on the server at `SOJOURN_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and against SQLite (a fresh
//! file each). Both stores must behave the same.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use sojourn_persistence::{
    Commit, CommitResult, Created, Error, LeaseEpoch, NewExecution, NewWorkflow, PgStore,
    SqliteStore, Store, ids,
};
use sojourn_runtime::{
    ActionOutcome, CompiledWorkflow, Effect, EventInput, ExecutionId, Input, Registry, Snapshot,
    Status, Transition, Workflow,
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
    workflows_and_immutable_versions,
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
}

async fn fixture<S: Store>(store: &S) -> Fixture {
    let workflow = reference_workflow();
    let rec = store
        .create_workflow(NewWorkflow {
            id: ids::new_workflow_id(),
            namespace: "default".into(),
            key: "reference".into(),
            name: None,
            draft: serde_json::to_value(&workflow).expect("json"),
            now: t0(),
        })
        .await
        .expect("create workflow");
    let v = store
        .publish(&rec.id, &workflow, t0())
        .await
        .expect("publish");
    Fixture {
        wf: CompiledWorkflow::compile(&workflow, &Registry::builtin()).expect("compiles"),
        workflow_id: rec.id,
        version: v.version,
    }
}

/// An execution handled by hand: the in-memory snapshot, its epoch.
struct Exec {
    id: ExecutionId,
    snap: Snapshot,
    epoch: LeaseEpoch,
}

async fn start<S: Store>(store: &S, f: &Fixture, subject: Option<&str>, key: Option<&str>) -> Exec {
    let id = ids::new_execution_id();
    let snap =
        f.wf.new_execution(
            id.clone(),
            json!({"n": 1}),
            subject.map(Into::into),
            None,
            t0(),
        )
        .expect("new execution");
    let created = store
        .create_execution(NewExecution {
            namespace: "default".into(),
            workflow_id: f.workflow_id.clone(),
            version: f.version,
            idempotency_key: key.map(Into::into),
            snapshot: snap,
        })
        .await
        .expect("create execution");
    let rec = store
        .activate(created.id())
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
        .publish(&f.workflow_id, &changed, t0() + Duration::hours(1))
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
        store.publish("wf_missing", &changed, t0()).await,
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
            },
            Commit {
                execution_id: &e.id,
                epoch: e.epoch,
                transition: &t2,
                fired_timer: None,
                consumed_input: None,
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
        store.executions_with_inputs(10).await.expect("inputs"),
        [e.id.clone()]
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
        }])
        .await
        .expect("commit");
    assert!(
        store
            .executions_with_inputs(10)
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
        snapshot: f
            .wf
            .new_execution(ids::new_execution_id(), json!({}), None, None, t0())
            .expect("new"),
    };
    let batch = vec![new(Some("a")), new(None), new(Some("a")), new(Some("b"))];
    let first_id = batch[0].snapshot.execution_id.clone();
    let created = store.create_executions(batch).await.expect("create");
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
    let outcome = ActionOutcome::Failure {
        error: "HTTP 503".into(),
        retryable: true,
    };
    let done: Vec<FinishedAttempt<'_>> = msgs
        .iter()
        .filter(|m| m.execution_id != execs[0].id)
        .map(|m| FinishedAttempt {
            execution_id: &m.execution_id,
            node: m.dispatch.node.as_str(),
            attempt: m.dispatch.attempt,
            outcome: &outcome,
            outbox_id: Some(m.id),
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
