//! The SQLite store: one file, the embedded default of `sojourn dev`.
//! Instants are stored as INTEGER milliseconds; JSON as TEXT. SQLite has a
//! single writer, so a batch is simply written row by row inside one
//! transaction; `BEGIN IMMEDIATE` semantics come from the pool's one writer.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sojourn_runtime::{ExecutionId, Input, TimerId, Workflow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// SQLite in one file.
pub type SqliteStore = SqlStore<Sqlite>;

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(v)
        .single()
        .ok_or_else(|| Error::Invalid(format!("timestamp {v} out of range")))
}

fn opt_ms(v: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    v.map(from_ms).transpose()
}

fn text<T: serde::Serialize>(what: &'static str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(Error::corrupt(what))
}

fn parse<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(Error::corrupt(what))
}

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<SqlStore<Sqlite>> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        Self::with_options(options).await
    }

    /// Opens a database from a `sqlite:` URL.
    pub async fn connect(url: &str) -> Result<SqlStore<Sqlite>> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        Self::with_options(options).await
    }

    async fn with_options(options: SqliteConnectOptions) -> Result<SqlStore<Sqlite>> {
        // One connection: SQLite has one writer anyway, and a single
        // connection keeps transactions from tripping over each other.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqlStore { pool })
    }
}

fn workflow_row(r: &SqliteRow) -> Result<WorkflowRecord> {
    Ok(WorkflowRecord {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        key: r.try_get("key")?,
        name: r.try_get("name")?,
        draft: parse("workflow draft", r.try_get::<&str, _>("draft")?)?,
        latest_version: r.try_get("latest_version")?,
        created_at: from_ms(r.try_get("created_at")?)?,
        updated_at: from_ms(r.try_get("updated_at")?)?,
        archived_at: opt_ms(r.try_get("archived_at")?)?,
    })
}

fn version_row(r: &SqliteRow) -> Result<WorkflowVersion> {
    Ok(WorkflowVersion {
        workflow_id: r.try_get("workflow_id")?,
        version: r.try_get("version")?,
        definition: parse("workflow definition", r.try_get::<&str, _>("definition")?)?,
        published_at: from_ms(r.try_get("published_at")?)?,
    })
}

fn execution_row(r: &SqliteRow) -> Result<ExecutionRecord> {
    let snapshot: sojourn_runtime::Snapshot = parse("snapshot", r.try_get::<&str, _>("snapshot")?)?;
    Ok(ExecutionRecord {
        id: ExecutionId::new(r.try_get::<String, _>("id")?),
        namespace: r.try_get("namespace")?,
        workflow_id: r.try_get("workflow_id")?,
        version: r.try_get("version")?,
        status: snapshot.status,
        subject: r.try_get("subject")?,
        idempotency_key: r.try_get("idempotency_key")?,
        lease_epoch: LeaseEpoch(r.try_get("lease_epoch")?),
        created_at: from_ms(r.try_get("created_at")?)?,
        updated_at: from_ms(r.try_get("updated_at")?)?,
        snapshot,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

const WORKFLOW_COLUMNS: &str =
    "id, namespace, key, name, draft, latest_version, created_at, updated_at, archived_at";

const API_KEY_COLUMNS: &str = "id, namespace, name, scopes, created_at, revoked_at";

fn api_key_row(r: &SqliteRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        name: r.try_get("name")?,
        scopes: parse("api key scopes", r.try_get::<&str, _>("scopes")?)?,
        created_at: from_ms(r.try_get("created_at")?)?,
        revoked_at: opt_ms(r.try_get("revoked_at")?)?,
    })
}

const TRIGGER_COLUMNS: &str =
    "id, namespace, workflow_id, kind, path, config, state, created_at, updated_at";

fn trigger_row(r: &SqliteRow) -> Result<TriggerRecord> {
    Ok(TriggerRecord {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        workflow_id: r.try_get("workflow_id")?,
        kind: r.try_get("kind")?,
        path: r.try_get("path")?,
        config: parse("trigger config", r.try_get::<&str, _>("config")?)?,
        state: r.try_get("state")?,
        created_at: from_ms(r.try_get("created_at")?)?,
        updated_at: from_ms(r.try_get("updated_at")?)?,
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

const EXECUTION_COLUMNS: &str = "id, namespace, workflow_id, version, subject, idempotency_key, snapshot, lease_epoch, created_at, updated_at";

impl ExecutionStore for SqliteStore {
    async fn list_executions(&self, query: &ExecutionQuery) -> Result<Vec<ExecutionSummary>> {
        let mut sql = sqlx::QueryBuilder::<Sqlite>::new(
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
            sql.push(" AND created_at >= ").push_bind(ms(after));
        }
        if let Some(before) = query.created_before {
            sql.push(" AND created_at < ").push_bind(ms(before));
        }
        if let Some(before) = &query.before_id {
            sql.push(" AND id < ").push_bind(before.clone());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
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
                    created_at: from_ms(r.try_get("created_at")?)?,
                    updated_at: from_ms(r.try_get("updated_at")?)?,
                    finished_at: opt_ms(r.try_get("finished_at")?)?,
                })
            })
            .collect()
    }

    async fn create_executions(&self, batch: &[NewExecution]) -> Result<Vec<Created>> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(batch.len());
        for new in batch {
            let s = &new.snapshot;
            // One connection: counting inside the transaction is enough.
            if let (Some(limit), Some(subject)) = (new.max_entries, s.subject.as_deref()) {
                if new.idempotency_key.is_some() {
                    let existing: Option<String> = sqlx::query_scalar(
                        "SELECT id FROM executions WHERE workflow_id = ?1 AND idempotency_key = ?2",
                    )
                    .bind(&new.workflow_id)
                    .bind(&new.idempotency_key)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(existing) = existing {
                        out.push(Created::Existing(ExecutionId::new(existing)));
                        continue;
                    }
                }
                let count: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM executions WHERE workflow_id = ?1 AND subject = ?2",
                )
                .bind(&new.workflow_id)
                .bind(subject)
                .fetch_one(&mut *tx)
                .await?;
                if count >= i64::from(limit) {
                    out.push(Created::LimitReached { limit });
                    continue;
                }
            }
            let inserted: Option<String> = sqlx::query_scalar(
                "INSERT INTO executions (id, namespace, workflow_id, version, status, subject, idempotency_key,
                                         current_node, snapshot, snapshot_seq, lease_epoch, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, NULL, ?7, 0, 1, ?8, ?8)
                 ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                 RETURNING id",
            )
            .bind(s.execution_id.as_str())
            .bind(&new.namespace)
            .bind(&new.workflow_id)
            .bind(new.version)
            .bind(&s.subject)
            .bind(&new.idempotency_key)
            .bind(text("snapshot", s)?)
            .bind(ms(s.created_at))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::Conflict { field: "id", value: s.execution_id.to_string() }
                } else {
                    e.into()
                }
            })?;
            if let Some(id) = inserted {
                out.push(Created::New(ExecutionId::new(id)));
                continue;
            }
            let existing: String = sqlx::query_scalar(
                "SELECT id FROM executions WHERE workflow_id = ?1 AND idempotency_key = ?2",
            )
            .bind(&new.workflow_id)
            .bind(&new.idempotency_key)
            .fetch_one(&mut *tx)
            .await?;
            out.push(Created::Existing(ExecutionId::new(existing)));
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
            "SELECT id FROM executions WHERE status = 'pending' AND created_at < ?1 ORDER BY created_at LIMIT ?2",
        )
        .bind(ms(before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(ExecutionId::new).collect())
    }

    async fn load_execution(&self, id: &ExecutionId) -> Result<Option<ExecutionRecord>> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(execution_row).transpose()
    }

    async fn activate(&self, id: &ExecutionId) -> Result<Option<ExecutionRecord>> {
        let sql = format!(
            "UPDATE executions SET lease_epoch = lease_epoch + 1 WHERE id = ?1 RETURNING {EXECUTION_COLUMNS}"
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
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(rec) = self.activate(id).await? {
                let items = self.pending_inputs(id).await?;
                out.push((rec, items));
            }
        }
        Ok(out)
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
            for (i, r) in &round {
                if write_one(&mut tx, r).await? {
                    results[*i] = CommitResult::Committed;
                }
            }
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn journal(&self, id: &ExecutionId, after: i64, limit: u32) -> Result<Vec<JournalRow>> {
        let rows = sqlx::query("SELECT id, entry FROM journal WHERE execution_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3")
            .bind(id.as_str())
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(JournalRow {
                    id: r.try_get("id")?,
                    entry: parse("journal entry", r.try_get::<&str, _>("entry")?)?,
                })
            })
            .collect()
    }

    async fn node_executions(&self, id: &ExecutionId) -> Result<Vec<NodeExecutionRow>> {
        let rows = sqlx::query(
            "SELECT node_id, attempt, action, status, sends, input, output, error, started_at, finished_at
             FROM node_executions WHERE execution_id = ?1 ORDER BY started_at, node_id, attempt",
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
                    input: parse("node input", r.try_get::<&str, _>("input")?)?,
                    output: r
                        .try_get::<Option<&str>, _>("output")?
                        .map(|s| parse::<Value>("node output", s))
                        .transpose()?,
                    error: r.try_get("error")?,
                    started_at: from_ms(r.try_get("started_at")?)?,
                    finished_at: opt_ms(r.try_get("finished_at")?)?,
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
            "SELECT DISTINCT execution_id FROM subscriptions WHERE namespace = ?1 AND event = ?2 AND key = ?3
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

impl TimerStore for SqliteStore {
    async fn claim_due_timers(
        &self,
        owner: &str,
        due_before: DateTime<Utc>,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueTimer>> {
        let rows = sqlx::query(
            "UPDATE timers SET claimed_by = ?1, claimed_until = ?4
             WHERE rowid IN (SELECT rowid FROM timers
                             WHERE due_at <= ?2 AND (claimed_until IS NULL OR claimed_until < ?3)
                             ORDER BY due_at LIMIT ?5)
             RETURNING execution_id, timer_id, due_at",
        )
        .bind(owner)
        .bind(ms(due_before))
        .bind(ms(now))
        .bind(ms(claim_until))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut timers = rows
            .iter()
            .map(|r| {
                Ok(DueTimer {
                    execution_id: ExecutionId::new(r.try_get::<String, _>("execution_id")?),
                    timer_id: TimerId::new(r.try_get::<String, _>("timer_id")?),
                    due_at: from_ms(r.try_get("due_at")?)?,
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
        let mut tx = self.pool.begin().await?;
        for (e, t) in timers {
            sqlx::query(
                "UPDATE timers SET claimed_until = ?2
                 WHERE execution_id = ?3 AND timer_id = ?4 AND claimed_by = ?1",
            )
            .bind(owner)
            .bind(ms(at))
            .bind(e.as_str())
            .bind(t.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_claims(&self, owner: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE timers SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ?1",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ?1",
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

impl OutboxStore for SqliteStore {
    async fn claim_outbox(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(
            "UPDATE outbox SET claimed_by = ?1, claimed_until = ?3, deliveries = deliveries + 1
             WHERE id IN (SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until < ?2
                          ORDER BY id LIMIT ?4)
             RETURNING id, execution_id, payload, deliveries",
        )
        .bind(owner)
        .bind(ms(now))
        .bind(ms(claim_until))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut messages = rows
            .iter()
            .map(|r| {
                Ok(OutboxMessage {
                    id: r.try_get("id")?,
                    execution_id: ExecutionId::new(r.try_get::<String, _>("execution_id")?),
                    dispatch: parse("outbox payload", r.try_get::<&str, _>("payload")?)?,
                    deliveries: r.try_get("deliveries")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        messages.sort_by_key(|m| m.id);
        Ok(messages)
    }

    async fn ack_outbox(&self, ids: &[i64]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("DELETE FROM outbox WHERE id = ?1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn begin_attempts(&self, attempts: &[AttemptRef<'_>]) -> Result<Vec<AttemptBegin>> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(attempts.len());
        for a in attempts {
            let row = sqlx::query(
                "UPDATE node_executions
                 SET sends = sends + CASE WHEN finished_at IS NULL THEN 1 ELSE 0 END,
                     status = CASE WHEN finished_at IS NULL THEN 'sending' ELSE status END
                 WHERE execution_id = ?1 AND node_id = ?2 AND attempt = ?3
                 RETURNING sends, finished_at IS NOT NULL AS done",
            )
            .bind(a.execution_id.as_str())
            .bind(a.node)
            .bind(attempt_i32(a.attempt)?)
            .fetch_optional(&mut *tx)
            .await?;
            out.push(match row {
                None => AttemptBegin::Unknown,
                Some(r) if r.try_get::<bool, _>("done")? => AttemptBegin::AlreadyDone,
                Some(r) => AttemptBegin::Send {
                    sends: r.try_get("sends")?,
                },
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn finish_attempts(
        &self,
        done: &[FinishedAttempt<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>> {
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(done.len());
        for d in done {
            let (status, output, error) = outcome_columns(d.outcome);
            sqlx::query(
                "UPDATE node_executions SET status = ?4, output = ?5, error = ?6, finished_at = ?7
                 WHERE execution_id = ?1 AND node_id = ?2 AND attempt = ?3 AND finished_at IS NULL",
            )
            .bind(d.execution_id.as_str())
            .bind(d.node)
            .bind(attempt_i32(d.attempt)?)
            .bind(status)
            .bind(output.map(|o| text("node output", &o)).transpose()?)
            .bind(error)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
            let input = Input::ActionResult {
                node: d.node.into(),
                attempt: d.attempt,
                outcome: d.outcome.clone(),
            };
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO inbox (execution_id, input, created_at) VALUES (?1, ?2, ?3) RETURNING id",
            )
            .bind(d.execution_id.as_str())
            .bind(text("inbox input", &input)?)
            .bind(ms(now))
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM outbox WHERE id = ?1")
                .bind(d.outbox_id)
                .execute(&mut *tx)
                .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn enqueue_input(
        &self,
        id: &ExecutionId,
        input: &Input,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO inbox (execution_id, input, created_at) VALUES (?1, ?2, ?3) RETURNING id",
        )
        .bind(id.as_str())
        .bind(text("inbox input", input)?)
        .bind(ms(now))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn pending_inputs(&self, id: &ExecutionId) -> Result<Vec<InboxItem>> {
        let rows = sqlx::query("SELECT id, input FROM inbox WHERE execution_id = ?1 ORDER BY id")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(InboxItem {
                    id: r.try_get("id")?,
                    input: parse("inbox input", r.try_get::<&str, _>("input")?)?,
                })
            })
            .collect()
    }

    async fn discard_input(&self, inbox_id: i64, epoch: LeaseEpoch) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM inbox WHERE id = ?1 AND EXISTS (
                 SELECT 1 FROM executions e WHERE e.id = inbox.execution_id AND e.lease_epoch = ?2)",
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
            "SELECT execution_id FROM inbox WHERE created_at < ?1
             GROUP BY execution_id ORDER BY min(id) LIMIT ?2",
        )
        .bind(ms(older_than))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(ExecutionId::new).collect())
    }
}

/// Writes one transition if it passes the fence; returns whether it did.
async fn write_one(tx: &mut Transaction<'_, Sqlite>, r: &Rows) -> Result<bool> {
    let e = &r.execution;
    let id = e.id.as_str();
    let updated = sqlx::query(
        "UPDATE executions SET status = ?3, current_node = ?4, snapshot = ?5, snapshot_seq = ?6,
                updated_at = ?7, finished_at = ?8
         WHERE id = ?1 AND lease_epoch = ?2 AND snapshot_seq < ?6",
    )
    .bind(id)
    .bind(e.epoch)
    .bind(e.status)
    .bind(&e.current_node)
    .bind(e.snapshot.as_str())
    .bind(e.seq)
    .bind(ms(e.updated_at))
    .bind(e.finished_at.map(ms))
    .execute(&mut **tx)
    .await?;
    if updated.rows_affected() != 1 {
        return Ok(false);
    }
    for j in &r.journal {
        sqlx::query(
            "INSERT INTO journal (execution_id, seq, at, kind, entry) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(id)
        .bind(j.seq)
        .bind(ms(j.at))
        .bind(j.kind)
        .bind(j.entry.as_str())
        .execute(&mut **tx)
        .await?;
    }
    for (s, o) in r.node_starts.iter().zip(&r.outbox) {
        sqlx::query(
            "INSERT INTO node_executions (execution_id, node_id, attempt, action, status, input, started_at)
             VALUES (?1, ?2, ?3, ?4, 'dispatched', ?5, ?6) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&s.node_id)
        .bind(s.attempt)
        .bind(&s.action)
        .bind(s.input.as_str())
        .bind(ms(r.now))
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (execution_id, node_id, attempt, idempotency_key, action, payload, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(id)
        .bind(&o.node_id)
        .bind(o.attempt)
        .bind(&o.idempotency_key)
        .bind(&o.action)
        .bind(o.payload.as_str())
        .bind(ms(r.now))
        .execute(&mut **tx)
        .await?;
    }
    for res in &r.node_results {
        sqlx::query(
            "UPDATE node_executions SET status = ?4, output = ?5, error = ?6, finished_at = ?7
             WHERE execution_id = ?1 AND node_id = ?2 AND attempt = ?3 AND finished_at IS NULL",
        )
        .bind(id)
        .bind(&res.node_id)
        .bind(res.attempt)
        .bind(res.status)
        .bind(
            res.output
                .as_ref()
                .map(|o| text("node output", o))
                .transpose()?,
        )
        .bind(&res.error)
        .bind(ms(r.now))
        .execute(&mut **tx)
        .await?;
    }
    for t in &r.timers_dropped {
        sqlx::query("DELETE FROM timers WHERE execution_id = ?1 AND timer_id = ?2")
            .bind(id)
            .bind(t)
            .execute(&mut **tx)
            .await?;
    }
    for s in &r.unsubscribe {
        sqlx::query("DELETE FROM subscriptions WHERE execution_id = ?1 AND subscription_id = ?2")
            .bind(id)
            .bind(s)
            .execute(&mut **tx)
            .await?;
    }
    for (t, at) in &r.timers_set {
        sqlx::query(
            "INSERT INTO timers (execution_id, timer_id, due_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (execution_id, timer_id) DO UPDATE
                SET due_at = excluded.due_at, claimed_by = NULL, claimed_until = NULL",
        )
        .bind(id)
        .bind(t)
        .bind(ms(*at))
        .execute(&mut **tx)
        .await?;
    }
    for s in &r.subscribe {
        sqlx::query(
            "INSERT INTO subscriptions (execution_id, subscription_id, namespace, event, key)
             SELECT ?1, ?2, namespace, ?3, ?4 FROM executions WHERE id = ?1
             ON CONFLICT (execution_id, subscription_id) DO NOTHING",
        )
        .bind(id)
        .bind(&s.subscription_id)
        .bind(&s.event)
        .bind(&s.key)
        .execute(&mut **tx)
        .await?;
    }
    if r.finished {
        sqlx::query("DELETE FROM timers WHERE execution_id = ?1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM subscriptions WHERE execution_id = ?1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    if let Some(input) = r.consumed_input {
        sqlx::query("DELETE FROM inbox WHERE id = ?1")
            .bind(input)
            .execute(&mut **tx)
            .await?;
    }
    Ok(true)
}
