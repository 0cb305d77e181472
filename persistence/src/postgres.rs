//! The PostgreSQL store (production). Group commit writes a whole batch of
//! transitions with a handful of `UNNEST` statements in one transaction.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sojourn_runtime::{ExecutionId, Input, TimerId, Workflow};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, Row, Transaction};

use crate::Result;
use crate::error::{Error, unique_violation_on};
use crate::rows::{Rows, attempt_i32, outcome_columns, rounds};
use crate::sql::SqlStore;
use crate::store::from_json;
use crate::types::{
    ApiKeyRecord, AttemptBegin, AttemptRef, Commit, CommitResult, Created, DueTimer,
    ExecutionQuery, ExecutionRecord, ExecutionSummary, FinishedAttempt, InboxItem, JournalRow,
    LeaseEpoch, NewApiKey, NewExecution, NewTrigger, NewWorkflow, NodeExecutionRow, OutboxMessage,
    TriggerRecord, VersionSummary, WorkflowQuery, WorkflowRecord, WorkflowVersion,
};
use crate::{ExecutionStore, KeyStore, OutboxStore, TimerStore, TriggerStore, WorkflowStore};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// PostgreSQL behind a connection pool.
pub type PgStore = SqlStore<Postgres>;

impl SqlStore<Postgres> {
    /// Connects (`postgres://user@host:port/db`), optionally inside a schema
    /// (tests use one schema each), and applies pending migrations.
    pub async fn connect(
        url: &str,
        schema: Option<&str>,
        max_connections: u32,
    ) -> Result<SqlStore<Postgres>> {
        let mut options = PgConnectOptions::from_str(url)?;
        if let Some(schema) = schema {
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        let store = SqlStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Creates `schema` (if needed) and connects inside it: how tests and
    /// benchmarks get a database of their own on a shared server.
    pub async fn connect_creating_schema(
        url: &str,
        schema: &str,
        max_connections: u32,
    ) -> Result<SqlStore<Postgres>> {
        if !schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || schema.is_empty()
        {
            return Err(Error::Invalid(format!(
                "schema name {schema:?}: letters, digits and _ only"
            )));
        }
        let admin = PgPoolOptions::new().max_connections(1).connect(url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .execute(&admin)
        .await?;
        admin.close().await;
        Self::connect(url, Some(schema), max_connections).await
    }

    /// Drops a schema made by [`PgStore::connect_creating_schema`] and closes
    /// this store's pool.
    pub async fn drop_schema(&self, schema: &str) -> Result<()> {
        if !schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || schema.is_empty()
        {
            return Err(Error::Invalid(format!(
                "schema name {schema:?}: letters, digits and _ only"
            )));
        }
        let mut conn = self.pool.acquire().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&mut *conn)
        .await?;
        drop(conn);
        self.pool.close().await;
        Ok(())
    }

    /// Applies pending migrations (idempotent).
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}

fn workflow_row(r: &PgRow) -> Result<WorkflowRecord> {
    Ok(WorkflowRecord {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        key: r.try_get("key")?,
        name: r.try_get("name")?,
        draft: r.try_get::<Json<Value>, _>("draft")?.0,
        latest_version: r.try_get("latest_version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        archived_at: r.try_get("archived_at")?,
    })
}

fn version_row(r: &PgRow) -> Result<WorkflowVersion> {
    Ok(WorkflowVersion {
        workflow_id: r.try_get("workflow_id")?,
        version: r.try_get("version")?,
        definition: from_json(
            "workflow definition",
            r.try_get::<Json<Value>, _>("definition")?.0,
        )?,
        published_at: r.try_get("published_at")?,
    })
}

fn execution_row(r: &PgRow) -> Result<ExecutionRecord> {
    let snapshot: sojourn_runtime::Snapshot =
        from_json("snapshot", r.try_get::<Json<Value>, _>("snapshot")?.0)?;
    Ok(ExecutionRecord {
        id: ExecutionId::new(r.try_get::<String, _>("id")?),
        namespace: r.try_get("namespace")?,
        workflow_id: r.try_get("workflow_id")?,
        version: r.try_get("version")?,
        status: snapshot.status,
        subject: r.try_get("subject")?,
        idempotency_key: r.try_get("idempotency_key")?,
        lease_epoch: LeaseEpoch(r.try_get("lease_epoch")?),
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        snapshot,
    })
}

const EXECUTION_COLUMNS: &str = "id, namespace, workflow_id, version, subject, idempotency_key, snapshot, lease_epoch, created_at, updated_at";

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

const WORKFLOW_COLUMNS: &str =
    "id, namespace, key, name, draft, latest_version, created_at, updated_at, archived_at";

fn summary_row(r: &PgRow) -> Result<ExecutionSummary> {
    Ok(ExecutionSummary {
        id: ExecutionId::new(r.try_get::<String, _>("id")?),
        workflow_id: r.try_get("workflow_id")?,
        version: r.try_get("version")?,
        status: from_json(
            "execution status",
            Value::String(r.try_get::<String, _>("status")?),
        )?,
        subject: r.try_get("subject")?,
        current_node: r.try_get("current_node")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

const API_KEY_COLUMNS: &str = "id, namespace, name, scopes, created_at, revoked_at";

fn api_key_row(r: &PgRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        name: r.try_get("name")?,
        scopes: r.try_get("scopes")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

const TRIGGER_COLUMNS: &str =
    "id, namespace, workflow_id, kind, path, config, state, created_at, updated_at";

fn trigger_row(r: &PgRow) -> Result<TriggerRecord> {
    Ok(TriggerRecord {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        workflow_id: r.try_get("workflow_id")?,
        kind: r.try_get("kind")?,
        path: r.try_get("path")?,
        config: r.try_get::<Json<Value>, _>("config")?.0,
        state: r.try_get("state")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// A unique violation on a trigger: its path (when `path` is known, or
/// named by the constraint) or its id.
fn trigger_conflict(e: sqlx::Error, id: &str, path: Option<&str>) -> Error {
    if unique_violation_on(&e, "path") {
        Error::Conflict {
            field: "path",
            value: path.unwrap_or(id).to_owned(),
        }
    } else if is_unique_violation(&e) {
        Error::Conflict {
            field: "id",
            value: id.to_owned(),
        }
    } else {
        e.into()
    }
}

/// The advisory lock guarding the entries of one subject in one workflow
/// (FNV-1a, 64 bits: stable across processes and releases).
fn subject_lock_key(workflow_id: &str, subject: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in workflow_id
        .bytes()
        .chain(std::iter::once(0x1f))
        .chain(subject.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

/// The subject limit of an execution to create, if it has one.
fn subject_limit(e: &NewExecution) -> Option<(u32, &str)> {
    Some((e.max_entries?, e.snapshot.subject.as_deref()?))
}

/// Decides, before inserting, which executions of a batch with subject
/// limits are not created: `Some(Existing)` for an idempotency key used
/// before, `Some(LimitReached)` for a subject that has its maximum (stored
/// plus admitted earlier in the batch). `None`: insert it. Locks every
/// limited `(workflow, subject)` in key order first, so two transactions
/// racing for the last entry are serialised (no deadlock: same order).
async fn admit_limited(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[NewExecution],
) -> Result<Vec<Option<Created>>> {
    use std::collections::{HashMap, HashSet};
    let mut pairs: Vec<(&str, &str)> = batch
        .iter()
        .filter_map(|e| subject_limit(e).map(|(_, s)| (e.workflow_id.as_str(), s)))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut locks: Vec<i64> = pairs.iter().map(|(w, s)| subject_lock_key(w, s)).collect();
    locks.sort_unstable();
    locks.dedup();
    // Taken one after the other in array order (a plain function scan).
    sqlx::query("SELECT pg_advisory_xact_lock(k) FROM UNNEST($1::bigint[]) AS k")
        .bind(&locks)
        .execute(&mut **tx)
        .await?;

    let (wf, subj): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
    let rows = sqlx::query(
        "SELECT v.wf, v.subj,
                (SELECT count(*) FROM executions x WHERE x.workflow_id = v.wf AND x.subject = v.subj) AS n
         FROM UNNEST($1::text[], $2::text[]) AS v(wf, subj)",
    )
    .bind(&wf)
    .bind(&subj)
    .fetch_all(&mut **tx)
    .await?;
    let mut counts: HashMap<(String, String), i64> = HashMap::with_capacity(rows.len());
    for r in &rows {
        counts.insert((r.try_get("wf")?, r.try_get("subj")?), r.try_get("n")?);
    }

    let (kwf, kkey): (Vec<&str>, Vec<&str>) = batch
        .iter()
        .filter_map(|e| Some((e.workflow_id.as_str(), e.idempotency_key.as_deref()?)))
        .unzip();
    let rows = sqlx::query(
        "SELECT x.workflow_id, x.idempotency_key, x.id
         FROM executions x JOIN UNNEST($1::text[], $2::text[]) AS v(wf, key)
              ON x.workflow_id = v.wf AND x.idempotency_key = v.key",
    )
    .bind(&kwf)
    .bind(&kkey)
    .fetch_all(&mut **tx)
    .await?;
    let mut existing: HashMap<(String, String), String> = HashMap::with_capacity(rows.len());
    for r in &rows {
        existing.insert(
            (r.try_get("workflow_id")?, r.try_get("idempotency_key")?),
            r.try_get("id")?,
        );
    }

    let mut taken: HashSet<(&str, &str)> = HashSet::new();
    let mut decided = Vec::with_capacity(batch.len());
    for e in batch {
        let wf = e.workflow_id.as_str();
        if let Some(key) = e.idempotency_key.as_deref() {
            if let Some(id) = existing.get(&(wf.to_owned(), key.to_owned())) {
                decided.push(Some(Created::Existing(ExecutionId::new(id.clone()))));
                continue;
            }
            if taken.contains(&(wf, key)) {
                // The first of this batch with the key: found after the insert.
                decided.push(None);
                continue;
            }
        }
        // Every admitted execution of a limited subject counts, limited or not.
        let subject = e.snapshot.subject.as_deref();
        if let Some(count) = subject.and_then(|s| counts.get_mut(&(wf.to_owned(), s.to_owned()))) {
            if let Some(limit) = e.max_entries
                && *count >= i64::from(limit)
            {
                decided.push(Some(Created::LimitReached { limit }));
                continue;
            }
            *count += 1;
        }
        if let Some(key) = e.idempotency_key.as_deref() {
            taken.insert((wf, key));
        }
        decided.push(None);
    }
    Ok(decided)
}

impl ExecutionStore for PgStore {
    async fn list_executions(&self, query: &ExecutionQuery) -> Result<Vec<ExecutionSummary>> {
        // Only the filters asked for, so the planner sees which indexes fit.
        let mut sql = sqlx::QueryBuilder::<Postgres>::new(
            "SELECT id, workflow_id, version, status, subject, current_node, created_at, updated_at,
                    finished_at
             FROM executions WHERE namespace = ",
        );
        sql.push_bind(query.namespace.clone());
        if let Some(wf) = &query.workflow_id {
            sql.push(" AND workflow_id = ").push_bind(wf.clone());
        }
        if let Some(status) = query.status {
            sql.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(subject) = &query.subject {
            sql.push(" AND subject = ").push_bind(subject.clone());
        }
        if let Some(after) = query.created_after {
            sql.push(" AND created_at >= ").push_bind(after);
        }
        if let Some(before) = query.created_before {
            sql.push(" AND created_at < ").push_bind(before);
        }
        if let Some(before) = &query.before_id {
            sql.push(" AND id < ").push_bind(before.clone());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter().map(summary_row).collect()
    }

    async fn create_executions(&self, batch: &[NewExecution]) -> Result<Vec<Created>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let n = batch.len();
        let mut tx = self.pool.begin().await?;
        // Only a batch with subject limits pays for locks and counts.
        let decided = if batch.iter().any(|e| subject_limit(e).is_some()) {
            admit_limited(&mut tx, batch).await?
        } else {
            vec![None; n]
        };
        let (mut ids, mut ns, mut wf, mut ver, mut subj, mut keys, mut snaps, mut created) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (e, _) in batch.iter().zip(&decided).filter(|(_, d)| d.is_none()) {
            let s = &e.snapshot;
            ids.push(s.execution_id.as_str());
            ns.push(e.namespace.as_str());
            wf.push(e.workflow_id.as_str());
            ver.push(e.version);
            subj.push(s.subject.as_deref());
            keys.push(e.idempotency_key.as_deref());
            snaps.push(serde_json::to_value(s).map_err(Error::corrupt("snapshot"))?);
            created.push(s.created_at);
        }
        let inserted: Vec<String> = if ids.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "INSERT INTO executions (id, namespace, workflow_id, version, status, subject, idempotency_key,
                                         snapshot, snapshot_seq, lease_epoch, created_at, updated_at)
                 SELECT v.id, v.ns, v.wf, v.ver, 'pending', v.subj, v.key, v.snap, 0, 1, v.created, v.created
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::jsonb[],
                             $8::timestamptz[]) AS v(id, ns, wf, ver, subj, key, snap, created)
                 ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                 RETURNING id",
            )
            .bind(&ids)
            .bind(&ns)
            .bind(&wf)
            .bind(&ver)
            .bind(&subj)
            .bind(&keys)
            .bind(&snaps)
            .bind(&created)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::Conflict { field: "id", value: "an execution id of this batch".into() }
                } else {
                    e.into()
                }
            })?
        };
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        let mut out = Vec::with_capacity(n);
        for (e, decided) in batch.iter().zip(decided) {
            if let Some(decided) = decided {
                out.push(decided);
                continue;
            }
            let id = e.snapshot.execution_id.as_str();
            if inserted.contains(id) {
                out.push(Created::New(e.snapshot.execution_id.clone()));
                continue;
            }
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT id FROM executions WHERE workflow_id = $1 AND idempotency_key = $2",
            )
            .bind(&e.workflow_id)
            .bind(&e.idempotency_key)
            .fetch_optional(&mut *tx)
            .await?;
            match existing {
                Some(existing) => out.push(Created::Existing(ExecutionId::new(existing))),
                None => {
                    return Err(Error::Conflict {
                        field: "id",
                        value: id.to_owned(),
                    });
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn pending_executions(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ExecutionId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM executions WHERE status = 'pending' AND created_at < $1 ORDER BY created_at LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(ExecutionId::new).collect())
    }

    async fn load_execution(&self, id: &ExecutionId) -> Result<Option<ExecutionRecord>> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(execution_row).transpose()
    }

    async fn activate(&self, id: &ExecutionId) -> Result<Option<ExecutionRecord>> {
        let sql = format!(
            "UPDATE executions SET lease_epoch = lease_epoch + 1 WHERE id = $1 RETURNING {EXECUTION_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(execution_row).transpose()
    }

    async fn activate_many(
        &self,
        ids: &[ExecutionId],
    ) -> Result<Vec<(ExecutionRecord, Vec<InboxItem>)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = ids.iter().map(ExecutionId::as_str).collect();
        let sql = format!(
            "UPDATE executions SET lease_epoch = lease_epoch + 1 WHERE id = ANY($1) RETURNING {EXECUTION_COLUMNS}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&keys)
            .fetch_all(&self.pool)
            .await?;
        let records = rows.iter().map(execution_row).collect::<Result<Vec<_>>>()?;
        let inbox = sqlx::query(
            "SELECT id, execution_id, input FROM inbox WHERE execution_id = ANY($1) ORDER BY id",
        )
        .bind(&keys)
        .fetch_all(&self.pool)
        .await?;
        let mut by_exec: std::collections::HashMap<String, Vec<InboxItem>> =
            std::collections::HashMap::new();
        for r in &inbox {
            by_exec
                .entry(r.try_get("execution_id")?)
                .or_default()
                .push(InboxItem {
                    id: r.try_get("id")?,
                    input: from_json("inbox input", r.try_get::<Json<Value>, _>("input")?.0)?,
                });
        }
        Ok(records
            .into_iter()
            .map(|rec| {
                let items = by_exec.remove(rec.id.as_str()).unwrap_or_default();
                (rec, items)
            })
            .collect())
    }

    async fn commit(&self, batch: &[Commit<'_>]) -> Result<Vec<CommitResult>> {
        let mut results = vec![CommitResult::Fenced; batch.len()];
        if batch.is_empty() {
            return Ok(results);
        }
        let rows = batch
            .iter()
            .enumerate()
            .map(|(i, c)| Rows::of(c).map(|r| (i, r)))
            .collect::<Result<Vec<_>>>()?;
        let mut tx = self.pool.begin().await?;
        for round in rounds(rows) {
            let winners = update_executions(&mut tx, &round).await?;
            let won: Vec<&Rows> = round
                .iter()
                .filter(|(_, r)| winners.contains(&r.execution.id))
                .map(|(_, r)| r)
                .collect();
            for (i, r) in &round {
                if winners.contains(&r.execution.id) {
                    results[*i] = CommitResult::Committed;
                }
            }
            if !won.is_empty() {
                write_dependents(&mut tx, &won).await?;
            }
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn journal(&self, id: &ExecutionId, after: i64, limit: u32) -> Result<Vec<JournalRow>> {
        let rows = sqlx::query(
            "SELECT id, entry FROM journal WHERE execution_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(id.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JournalRow {
                    id: r.try_get("id")?,
                    entry: from_json("journal entry", r.try_get::<Json<Value>, _>("entry")?.0)?,
                })
            })
            .collect()
    }

    async fn node_executions(&self, id: &ExecutionId) -> Result<Vec<NodeExecutionRow>> {
        let rows = sqlx::query(
            "SELECT node_id, attempt, action, status, sends, input, output, error, started_at, finished_at
             FROM node_executions WHERE execution_id = $1 ORDER BY started_at, node_id, attempt",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeExecutionRow {
                    node_id: r.try_get("node_id")?,
                    attempt: r.try_get("attempt")?,
                    action: r.try_get("action")?,
                    status: r.try_get("status")?,
                    sends: r.try_get("sends")?,
                    input: r.try_get::<Json<Value>, _>("input")?.0,
                    output: r.try_get::<Option<Json<Value>>, _>("output")?.map(|j| j.0),
                    error: r.try_get("error")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                })
            })
            .collect()
    }

    async fn subscribers(
        &self,
        namespace: &str,
        event: &str,
        key: &str,
    ) -> Result<Vec<ExecutionId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT execution_id FROM subscriptions WHERE namespace = $1 AND event = $2 AND key = $3
             ORDER BY execution_id",
        )
        .bind(namespace)
        .bind(event)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(ExecutionId::new).collect())
    }
}

impl TimerStore for PgStore {
    async fn claim_due_timers(
        &self,
        owner: &str,
        due_before: DateTime<Utc>,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueTimer>> {
        let rows = sqlx::query(
            "UPDATE timers t SET claimed_by = $1, claimed_until = $4
             FROM (SELECT execution_id, timer_id FROM timers
                   WHERE due_at <= $2 AND (claimed_until IS NULL OR claimed_until < $3)
                   ORDER BY due_at LIMIT $5 FOR UPDATE SKIP LOCKED) due
             WHERE t.execution_id = due.execution_id AND t.timer_id = due.timer_id
             RETURNING t.execution_id, t.timer_id, t.due_at",
        )
        .bind(owner)
        .bind(due_before)
        .bind(now)
        .bind(claim_until)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut timers = rows
            .iter()
            .map(|r| {
                Ok(DueTimer {
                    execution_id: ExecutionId::new(r.try_get::<String, _>("execution_id")?),
                    timer_id: TimerId::new(r.try_get::<String, _>("timer_id")?),
                    due_at: r.try_get("due_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        timers.sort_by_key(|t| t.due_at);
        Ok(timers)
    }

    async fn defer_timers(
        &self,
        owner: &str,
        timers: &[(ExecutionId, TimerId)],
        at: DateTime<Utc>,
    ) -> Result<()> {
        if timers.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = timers.iter().map(|(e, _)| e.as_str()).collect();
        let tids: Vec<&str> = timers.iter().map(|(_, t)| t.as_str()).collect();
        sqlx::query(
            "UPDATE timers t SET claimed_until = $2
             FROM UNNEST($3::text[], $4::text[]) AS v(execution_id, timer_id)
             WHERE t.execution_id = v.execution_id AND t.timer_id = v.timer_id
               AND t.claimed_by = $1",
        )
        .bind(owner)
        .bind(at)
        .bind(&ids)
        .bind(&tids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_claims(&self, owner: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE timers SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_owners(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT claimed_by FROM timers WHERE claimed_by IS NOT NULL
             UNION SELECT claimed_by FROM outbox WHERE claimed_by IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn pending_timers(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM timers")
            .fetch_one(&self.pool)
            .await?)
    }
}

impl OutboxStore for PgStore {
    async fn claim_outbox(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(
            "UPDATE outbox o SET claimed_by = $1, claimed_until = $3, deliveries = o.deliveries + 1
             FROM (SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until < $2
                   ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) c
             WHERE o.id = c.id
             RETURNING o.id, o.execution_id, o.payload, o.deliveries",
        )
        .bind(owner)
        .bind(now)
        .bind(claim_until)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut messages = rows
            .iter()
            .map(|r| {
                Ok(OutboxMessage {
                    id: r.try_get("id")?,
                    execution_id: ExecutionId::new(r.try_get::<String, _>("execution_id")?),
                    dispatch: from_json(
                        "outbox payload",
                        r.try_get::<Json<Value>, _>("payload")?.0,
                    )?,
                    deliveries: r.try_get("deliveries")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        messages.sort_by_key(|m| m.id);
        Ok(messages)
    }

    async fn ack_outbox(&self, ids: &[i64]) -> Result<()> {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn begin_attempts(&self, attempts: &[AttemptRef<'_>]) -> Result<Vec<AttemptBegin>> {
        if attempts.is_empty() {
            return Ok(Vec::new());
        }
        let ex: Vec<&str> = attempts.iter().map(|a| a.execution_id.as_str()).collect();
        let node: Vec<&str> = attempts.iter().map(|a| a.node).collect();
        let att = attempts
            .iter()
            .map(|a| attempt_i32(a.attempt))
            .collect::<Result<Vec<i32>>>()?;
        let rows = sqlx::query(
            "UPDATE node_executions n
             SET sends = n.sends + CASE WHEN n.finished_at IS NULL THEN 1 ELSE 0 END,
                 status = CASE WHEN n.finished_at IS NULL THEN 'sending' ELSE n.status END
             FROM UNNEST($1::text[], $2::text[], $3::int[]) AS v(e, node, a)
             WHERE n.execution_id = v.e AND n.node_id = v.node AND n.attempt = v.a
             RETURNING n.execution_id, n.node_id, n.attempt, n.sends, n.finished_at IS NOT NULL AS done",
        )
        .bind(&ex)
        .bind(&node)
        .bind(&att)
        .fetch_all(&self.pool)
        .await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let key: (String, String, i32) = (
                r.try_get("execution_id")?,
                r.try_get("node_id")?,
                r.try_get("attempt")?,
            );
            let begin = if r.try_get::<bool, _>("done")? {
                AttemptBegin::AlreadyDone
            } else {
                AttemptBegin::Send {
                    sends: r.try_get("sends")?,
                }
            };
            found.insert(key, begin);
        }
        Ok(attempts
            .iter()
            .zip(&att)
            .map(|(a, n)| {
                found
                    .get(&(a.execution_id.to_string(), a.node.to_owned(), *n))
                    .copied()
                    .unwrap_or(AttemptBegin::Unknown)
            })
            .collect())
    }

    async fn finish_attempts(
        &self,
        done: &[FinishedAttempt<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let (
            mut ex,
            mut node,
            mut att,
            mut status,
            mut output,
            mut error,
            mut inputs,
            mut at,
            mut outbox,
        ) = (
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        );
        for d in done {
            let (s, o, e) = outcome_columns(d.outcome);
            ex.push(d.execution_id.as_str());
            node.push(d.node);
            att.push(attempt_i32(d.attempt)?);
            status.push(s);
            output.push(o);
            error.push(e);
            let input = Input::ActionResult {
                node: d.node.into(),
                attempt: d.attempt,
                outcome: d.outcome.clone(),
            };
            inputs.push(serde_json::to_value(&input).map_err(Error::corrupt("inbox input"))?);
            at.push(now);
            outbox.push(d.outbox_id);
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE node_executions n SET status = v.status, output = v.output, error = v.error, finished_at = $7
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::jsonb[], $6::text[])
                  AS v(e, node, a, status, output, error)
             WHERE n.execution_id = v.e AND n.node_id = v.node AND n.attempt = v.a AND n.finished_at IS NULL",
        )
        .bind(&ex)
        .bind(&node)
        .bind(&att)
        .bind(&status)
        .bind(&output)
        .bind(&error)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // One row per attempt, matched back by (execution, node, attempt).
        let rows = sqlx::query(
            "INSERT INTO inbox (execution_id, input, created_at)
             SELECT * FROM UNNEST($1::text[], $2::jsonb[], $3::timestamptz[])
             RETURNING id, execution_id, input->>'node' AS node, (input->>'attempt')::int AS attempt",
        )
        .bind(&ex)
        .bind(&inputs)
        .bind(&at)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&outbox)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut ids = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let key: (String, String, i32) = (
                r.try_get("execution_id")?,
                r.try_get("node")?,
                r.try_get("attempt")?,
            );
            ids.insert(key, r.try_get::<i64, _>("id")?);
        }
        done.iter()
            .zip(&att)
            .map(|(d, n)| {
                ids.get(&(d.execution_id.to_string(), d.node.to_owned(), *n))
                    .copied()
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "no inbox row for {}/{}/{}",
                            d.execution_id, d.node, n
                        ))
                    })
            })
            .collect()
    }

    async fn enqueue_input(
        &self,
        id: &ExecutionId,
        input: &Input,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO inbox (execution_id, input, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(id.as_str())
        .bind(Json(input))
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn pending_inputs(&self, id: &ExecutionId) -> Result<Vec<InboxItem>> {
        let rows = sqlx::query("SELECT id, input FROM inbox WHERE execution_id = $1 ORDER BY id")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(InboxItem {
                    id: r.try_get("id")?,
                    input: from_json("inbox input", r.try_get::<Json<Value>, _>("input")?.0)?,
                })
            })
            .collect()
    }

    async fn discard_input(&self, inbox_id: i64, epoch: LeaseEpoch) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM inbox WHERE id = $1 AND EXISTS (
                 SELECT 1 FROM executions e WHERE e.id = inbox.execution_id AND e.lease_epoch = $2)",
        )
        .bind(inbox_id)
        .bind(epoch.0)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn executions_with_inputs(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ExecutionId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT execution_id FROM inbox WHERE created_at < $1
             GROUP BY execution_id ORDER BY min(id) LIMIT $2",
        )
        .bind(older_than)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(ExecutionId::new).collect())
    }
}

/// The fenced snapshot update of one round; returns the ids that won.
async fn update_executions(
    tx: &mut Transaction<'_, Postgres>,
    round: &[(usize, Rows)],
) -> Result<Vec<String>> {
    let n = round.len();
    let (
        mut ids,
        mut epochs,
        mut statuses,
        mut nodes,
        mut snaps,
        mut seqs,
        mut updated,
        mut finished,
    ) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (_, r) in round {
        let e = &r.execution;
        ids.push(e.id.as_str());
        epochs.push(e.epoch);
        statuses.push(e.status);
        nodes.push(e.current_node.as_deref());
        snaps.push(e.snapshot.as_str());
        seqs.push(e.seq);
        updated.push(e.updated_at);
        finished.push(e.finished_at);
    }
    let winners: Vec<String> = sqlx::query_scalar(
        "UPDATE executions e SET status = v.status, current_node = v.node, snapshot = v.snap::jsonb,
                snapshot_seq = v.seq, updated_at = v.updated, finished_at = v.finished
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                     $7::timestamptz[], $8::timestamptz[])
              AS v(id, epoch, status, node, snap, seq, updated, finished)
         WHERE e.id = v.id AND e.lease_epoch = v.epoch AND e.snapshot_seq < v.seq
         RETURNING e.id",
    )
    .bind(&ids)
    .bind(&epochs)
    .bind(&statuses)
    .bind(&nodes)
    .bind(&snaps)
    .bind(&seqs)
    .bind(&updated)
    .bind(&finished)
    .fetch_all(&mut **tx)
    .await?;
    Ok(winners)
}

/// Journal, node executions, outbox, timers, subscriptions and inbox rows
/// of the transitions that passed the fence.
async fn write_dependents(tx: &mut Transaction<'_, Postgres>, won: &[&Rows]) -> Result<()> {
    // Journal.
    let (mut ex, mut seq, mut at, mut kind, mut entry) = (vec![], vec![], vec![], vec![], vec![]);
    for r in won {
        for j in &r.journal {
            ex.push(r.execution.id.as_str());
            seq.push(j.seq);
            at.push(j.at);
            kind.push(j.kind);
            entry.push(j.entry.as_str());
        }
    }
    if !ex.is_empty() {
        sqlx::query(
            "INSERT INTO journal (execution_id, seq, at, kind, entry)
             SELECT e, s, a, k, v::jsonb
             FROM UNNEST($1::text[], $2::bigint[], $3::timestamptz[], $4::text[], $5::text[]) AS x(e, s, a, k, v)",
        )
        .bind(&ex)
        .bind(&seq)
        .bind(&at)
        .bind(&kind)
        .bind(&entry)
        .execute(&mut **tx)
        .await?;
    }

    // Node executions started, and the outbox rows that send them.
    let (mut ex, mut node, mut attempt, mut action, mut input, mut started) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut key, mut payload) = (vec![], vec![]);
    for r in won {
        for (s, o) in r.node_starts.iter().zip(&r.outbox) {
            ex.push(r.execution.id.as_str());
            node.push(s.node_id.as_str());
            attempt.push(s.attempt);
            action.push(s.action.as_str());
            input.push(s.input.as_str());
            started.push(r.now);
            key.push(o.idempotency_key.as_str());
            payload.push(o.payload.as_str());
        }
    }
    if !ex.is_empty() {
        sqlx::query(
            "INSERT INTO node_executions (execution_id, node_id, attempt, action, status, input, started_at)
             SELECT e, n, a, act, 'dispatched', i::jsonb, s
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::timestamptz[])
                  AS v(e, n, a, act, i, s)
             ON CONFLICT DO NOTHING",
        )
        .bind(&ex)
        .bind(&node)
        .bind(&attempt)
        .bind(&action)
        .bind(&input)
        .bind(&started)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (execution_id, node_id, attempt, idempotency_key, action, payload, created_at)
             SELECT e, n, a, k, act, p::jsonb, c
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[]) AS v(e, n, a, k, act, p, c)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&ex)
        .bind(&node)
        .bind(&attempt)
        .bind(&key)
        .bind(&action)
        .bind(&payload)
        .bind(&started)
        .execute(&mut **tx)
        .await?;
    }

    // Node executions finished.
    let (mut ex, mut node, mut attempt, mut status, mut output, mut error, mut at) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for r in won {
        for res in &r.node_results {
            ex.push(r.execution.id.as_str());
            node.push(res.node_id.as_str());
            attempt.push(res.attempt);
            status.push(res.status);
            output.push(res.output.as_ref());
            error.push(res.error.as_deref());
            at.push(r.now);
        }
    }
    if !ex.is_empty() {
        sqlx::query(
            "UPDATE node_executions n SET status = v.status, output = v.output, error = v.error, finished_at = v.at
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::jsonb[], $6::text[], $7::timestamptz[])
                  AS v(e, n, a, status, output, error, at)
             WHERE n.execution_id = v.e AND n.node_id = v.n AND n.attempt = v.a AND n.finished_at IS NULL",
        )
        .bind(&ex)
        .bind(&node)
        .bind(&attempt)
        .bind(&status)
        .bind(&output)
        .bind(&error)
        .bind(&at)
        .execute(&mut **tx)
        .await?;
    }

    // Timers and subscriptions dropped (a finished execution drops all).
    let (mut ex, mut timer) = (vec![], vec![]);
    let (mut sub_ex, mut sub) = (vec![], vec![]);
    let mut finished = vec![];
    for r in won {
        if r.finished {
            finished.push(r.execution.id.as_str());
        }
        for t in &r.timers_dropped {
            ex.push(r.execution.id.as_str());
            timer.push(t.as_str());
        }
        for s in &r.unsubscribe {
            sub_ex.push(r.execution.id.as_str());
            sub.push(s.as_str());
        }
    }
    if !ex.is_empty() {
        sqlx::query(
            "DELETE FROM timers t USING UNNEST($1::text[], $2::text[]) AS v(e, t)
             WHERE t.execution_id = v.e AND t.timer_id = v.t",
        )
        .bind(&ex)
        .bind(&timer)
        .execute(&mut **tx)
        .await?;
    }
    if !sub_ex.is_empty() {
        sqlx::query(
            "DELETE FROM subscriptions s USING UNNEST($1::text[], $2::text[]) AS v(e, s)
             WHERE s.execution_id = v.e AND s.subscription_id = v.s",
        )
        .bind(&sub_ex)
        .bind(&sub)
        .execute(&mut **tx)
        .await?;
    }

    // Timers and subscriptions set.
    let (mut ex, mut timer, mut due) = (vec![], vec![], vec![]);
    let (mut sub_ex, mut sub, mut event, mut key) = (vec![], vec![], vec![], vec![]);
    for r in won {
        for (t, at) in &r.timers_set {
            ex.push(r.execution.id.as_str());
            timer.push(t.as_str());
            due.push(*at);
        }
        for s in &r.subscribe {
            sub_ex.push(r.execution.id.as_str());
            sub.push(s.subscription_id.as_str());
            event.push(s.event.as_str());
            key.push(s.key.as_deref());
        }
    }
    if !ex.is_empty() {
        sqlx::query(
            "INSERT INTO timers (execution_id, timer_id, due_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[])
             ON CONFLICT (execution_id, timer_id) DO UPDATE
                SET due_at = EXCLUDED.due_at, claimed_by = NULL, claimed_until = NULL",
        )
        .bind(&ex)
        .bind(&timer)
        .bind(&due)
        .execute(&mut **tx)
        .await?;
    }
    if !sub_ex.is_empty() {
        sqlx::query(
            "INSERT INTO subscriptions (execution_id, subscription_id, namespace, event, key)
             SELECT v.e, v.s, x.namespace, v.ev, v.k
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS v(e, s, ev, k)
             JOIN executions x ON x.id = v.e
             ON CONFLICT (execution_id, subscription_id) DO NOTHING",
        )
        .bind(&sub_ex)
        .bind(&sub)
        .bind(&event)
        .bind(&key)
        .execute(&mut **tx)
        .await?;
    }
    if !finished.is_empty() {
        sqlx::query("DELETE FROM timers WHERE execution_id = ANY($1)")
            .bind(&finished)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM subscriptions WHERE execution_id = ANY($1)")
            .bind(&finished)
            .execute(&mut **tx)
            .await?;
    }

    let consumed: Vec<i64> = won.iter().filter_map(|r| r.consumed_input).collect();
    if !consumed.is_empty() {
        sqlx::query("DELETE FROM inbox WHERE id = ANY($1)")
            .bind(&consumed)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
