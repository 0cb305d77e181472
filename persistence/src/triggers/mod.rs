//! Trigger instances (`triggers`): created in state `init`, moved through
//! their lifecycle ([`Move`]), looked up by path for `api` triggers, and
//! claimed by the schedule runner when a schedule is due. Every statement is
//! the same on both databases (a claim's row lock is [`Sql::SKIP_LOCKED`]).

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{Executor, QueryBuilder};

use crate::Result;
use crate::error::{Error, unique_violation_on};
use sojourn_runtime::triggers::{Move, TriggerKind, TriggerState};

use crate::sql::{Bind, Doc, Instant, Read, Sql, SqlStore, at, conflict, not_found};
use crate::types::{DeadLetter, NewTrigger, TriggerRecord};

/// Trigger instances.
pub trait TriggerStore: Send + Sync {
    /// Creates a trigger instance in state `init`. [`crate::Error::Conflict`]
    /// on `path` when another trigger of the namespace that is not destroyed
    /// has the same path.
    fn create_trigger(
        &self,
        trigger: NewTrigger,
    ) -> impl Future<Output = Result<TriggerRecord>> + Send;

    fn get_trigger(
        &self,
        namespace: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<TriggerRecord>>> + Send;

    /// Triggers of a namespace (of one workflow, when given), oldest first;
    /// destroyed ones are left out.
    fn list_triggers(
        &self,
        namespace: &str,
        workflow_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<TriggerRecord>>> + Send;

    /// Makes a lifecycle move if the trigger's state is one it starts from,
    /// in one statement (so two concurrent moves cannot both pass the
    /// check), and sets its next fire (see [`Move::next_fire`]); any claim
    /// on it is dropped. `Ok(None)`: no such trigger in the namespace;
    /// `Err(Invalid)` with the current state named when the move does not
    /// start from it.
    fn set_trigger_state(
        &self,
        namespace: &str,
        id: &str,
        mv: Move,
        next_fire_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<TriggerRecord>>> + Send;

    /// Claims up to `limit` active schedules whose next fire is due at
    /// `now` and that no node holds, for `owner` until `until`: one node
    /// fires a given instant at a time.
    fn claim_due_schedules(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<TriggerRecord>>> + Send;

    /// Moves a claimed schedule's next fire from `from` to `to` while
    /// `owner` fires the instants it missed one by one, keeping the claim:
    /// `false` when the claim was lost (paused, stopped, taken over), and
    /// the rest must not fire.
    fn advance_schedule(
        &self,
        id: &str,
        owner: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Records that `owner` fired a claimed schedule whose next fire was
    /// `due`: its next fire becomes `next` (none: it never fires again),
    /// its latest `fired` (when it fired any), and the claim is dropped.
    /// `false` when the claim was lost meanwhile (paused, stopped, or taken
    /// over after it lapsed): nothing changes.
    fn finish_schedule_fire(
        &self,
        id: &str,
        owner: &str,
        due: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        fired: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// The active triggers of a kind, in every namespace (what the runners
    /// of that kind serve).
    fn active_triggers(
        &self,
        kind: TriggerKind,
    ) -> impl Future<Output = Result<Vec<TriggerRecord>>> + Send;

    /// Keeps a message an event trigger could not use. A message kept
    /// before (redelivered) is not kept twice. Returns whether it was new.
    fn add_dead_letter(&self, letter: &DeadLetter) -> impl Future<Output = Result<bool>> + Send;

    /// A trigger's dead letters, newest first, up to `limit`.
    fn dead_letters(
        &self,
        namespace: &str,
        trigger_id: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

    /// The `api` trigger (not destroyed) answering `path` in a namespace.
    fn api_trigger(
        &self,
        namespace: &str,
        path: &str,
    ) -> impl Future<Output = Result<Option<TriggerRecord>>> + Send;
}

const COLUMNS: &str = "id, namespace, workflow_id, kind, path, config, state, next_fire_at, \
                       last_fired_at, created_at, updated_at";

/// A unique violation on a trigger: its path (when `path` is known, or
/// named by the constraint) or its id.
fn trigger_conflict(e: sqlx::Error, id: &str, path: Option<&str>) -> Error {
    if unique_violation_on(&e, "path") {
        conflict(e, "path", path.unwrap_or(id))
    } else {
        conflict(e, "id", id)
    }
}

impl<DB> TriggerStore for SqlStore<DB>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'a> Option<&'a str>: Bind<'a, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> Option<Instant>: Bind<'q, DB>,
    for<'q> Doc: Bind<'q, DB>,
    for<'q> i64: Bind<'q, DB>,
    TriggerRecord: Read<DB>,
    DeadLetter: Read<DB>,
    (String,): Read<DB>,
    for<'q> i32: Bind<'q, DB>,
{
    async fn create_trigger(&self, trigger: NewTrigger) -> Result<TriggerRecord> {
        // Only for a workflow of the same namespace.
        let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO triggers (id, namespace, workflow_id, kind, path, config, state, created_at, updated_at)
             SELECT $1, $2, w.id, $4, $5, $6, 'init', $7, $7 FROM workflows w
             WHERE w.namespace = $2 AND w.id = $3
             RETURNING {COLUMNS}"
        )))
        .bind(trigger.id.as_str())
        .bind(trigger.namespace.as_str())
        .bind(trigger.workflow_id.as_str())
        .bind(trigger.config.kind().as_str())
        .bind(trigger.path.as_deref())
        .bind(Doc::of("trigger config", &trigger.config.to_value())?)
        .bind(at(trigger.now))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| trigger_conflict(e, &trigger.id, trigger.path.as_deref()))?;
        row.ok_or_else(|| not_found("workflow", &trigger.workflow_id))
    }

    async fn get_trigger(&self, namespace: &str, id: &str) -> Result<Option<TriggerRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM triggers WHERE namespace = $1 AND id = $2"
        )))
        .bind(namespace)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_triggers(
        &self,
        namespace: &str,
        workflow_id: Option<&str>,
    ) -> Result<Vec<TriggerRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM triggers
             WHERE namespace = $1 AND ($2 IS NULL OR workflow_id = $2) AND state <> 'destroyed'
             ORDER BY created_at, id"
        )))
        .bind(namespace)
        .bind(workflow_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn set_trigger_state(
        &self,
        namespace: &str,
        id: &str,
        mv: Move,
        next_fire_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<TriggerRecord>> {
        let mut sql = QueryBuilder::<DB>::new("UPDATE triggers SET state = ");
        sql.push_bind(mv.to().as_str());
        sql.push(", updated_at = ").push_bind(at(now));
        sql.push(", next_fire_at = ")
            .push_bind(next_fire_at.map(at));
        sql.push(", claimed_by = NULL, claimed_until = NULL");
        sql.push(" WHERE namespace = ").push_bind(namespace);
        sql.push(" AND id = ").push_bind(id);
        sql.push(" AND state IN (");
        let mut states = sql.separated(", ");
        for state in mv.from() {
            states.push_bind(state.as_str());
        }
        sql.push(") RETURNING ").push(COLUMNS);
        // No move leaves `destroyed`, so none can take a path back.
        let row = sql
            .build_query_as::<TriggerRecord>()
            .fetch_optional(&self.pool)
            .await?;
        if row.is_some() {
            return Ok(row);
        }
        match self.get_trigger(namespace, id).await? {
            None => Ok(None),
            Some(t) => Err(Error::Invalid(format!("trigger {id} is {}", t.state))),
        }
    }

    async fn claim_due_schedules(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TriggerRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE triggers SET claimed_by = $1, claimed_until = $2
             WHERE id IN (SELECT id FROM triggers
                          WHERE next_fire_at <= $3 AND state = $4 AND kind = $5
                            AND (claimed_until IS NULL OR claimed_until < $3)
                          ORDER BY next_fire_at LIMIT $6{})
             RETURNING {COLUMNS}",
            DB::SKIP_LOCKED
        )))
        .bind(owner)
        .bind(at(until))
        .bind(at(now))
        .bind(TriggerState::Active.as_str())
        .bind(TriggerKind::Schedule.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn advance_schedule(
        &self,
        id: &str,
        owner: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<bool> {
        let done: Option<(String,)> = sqlx::query_as(
            "UPDATE triggers SET next_fire_at = $1
             WHERE id = $2 AND claimed_by = $3 AND next_fire_at = $4 AND state = $5
             RETURNING id",
        )
        .bind(at(to))
        .bind(id)
        .bind(owner)
        .bind(at(from))
        .bind(TriggerState::Active.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(done.is_some())
    }

    async fn finish_schedule_fire(
        &self,
        id: &str,
        owner: &str,
        due: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        fired: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let done: Option<(String,)> = sqlx::query_as(
            "UPDATE triggers SET next_fire_at = $1, last_fired_at = COALESCE($2, last_fired_at),
                                 claimed_by = NULL, claimed_until = NULL
             WHERE id = $3 AND claimed_by = $4 AND next_fire_at = $5 AND state = $6
             RETURNING id",
        )
        .bind(next.map(at))
        .bind(fired.map(at))
        .bind(id)
        .bind(owner)
        .bind(at(due))
        .bind(TriggerState::Active.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(done.is_some())
    }

    async fn active_triggers(&self, kind: TriggerKind) -> Result<Vec<TriggerRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM triggers WHERE kind = $1 AND state = $2 ORDER BY id"
        )))
        .bind(kind.as_str())
        .bind(TriggerState::Active.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    async fn add_dead_letter(&self, l: &DeadLetter) -> Result<bool> {
        let kept: Option<(String,)> = sqlx::query_as(
            "INSERT INTO dead_letters (id, namespace, trigger_id, topic, message_partition,
                                       message_offset, message_key, payload, reason, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (trigger_id, topic, message_partition, message_offset) DO NOTHING
             RETURNING id",
        )
        .bind(l.id.as_str())
        .bind(l.namespace.as_str())
        .bind(l.trigger_id.as_str())
        .bind(l.topic.as_str())
        .bind(l.partition)
        .bind(l.offset)
        .bind(l.key.as_deref())
        .bind(l.payload.as_deref())
        .bind(l.reason.as_str())
        .bind(at(l.created_at))
        .fetch_optional(&self.pool)
        .await?;
        Ok(kept.is_some())
    }

    async fn dead_letters(
        &self,
        namespace: &str,
        trigger_id: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        Ok(sqlx::query_as(
            "SELECT id, namespace, trigger_id, topic, message_partition, message_offset,
                    message_key, payload, reason, created_at
             FROM dead_letters WHERE namespace = $1 AND trigger_id = $2
             ORDER BY id DESC LIMIT $3",
        )
        .bind(namespace)
        .bind(trigger_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn api_trigger(&self, namespace: &str, path: &str) -> Result<Option<TriggerRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM triggers
             WHERE namespace = $1 AND path = $2 AND kind = 'api' AND state <> 'destroyed'"
        )))
        .bind(namespace)
        .bind(path)
        .fetch_optional(&self.pool)
        .await?)
    }
}
