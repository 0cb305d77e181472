//! Segments (`segments`, `segment_members`, `segment_changes`,
//! `segment_cursors`): a CEL expression over profile attributes, or a
//! static list. Membership is kept up to date incrementally: a profile write
//! evaluates the namespace's segments against the profiles it wrote, in the
//! same transaction, so its cost grows with the number of segments, not of
//! profiles. A new or changed segment is backfilled in batches by whichever
//! node claims it. Every entry and exit is a `segment_changes` row, which the
//! segment triggers read after their cursor. Every statement is the same on
//! both databases.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sojourn_runtime::expr::Expr;
use sqlx::{Executor, QueryBuilder};

use crate::Result;
use crate::error::Error;
use crate::sql::{Bind, Instant, Read, Sql, SqlStore, at};

/// Most subjects of a static segment.
pub const MAX_STATIC: usize = 10_000;

/// A segment, with its size.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SegmentRecord {
    pub namespace: String,
    pub name: String,
    /// `None`: a static list.
    pub expression: Option<String>,
    pub version: i32,
    /// Where its backfill has reached (`None`: done).
    pub backfill_after: Option<String>,
    pub members: i64,
    #[sqlx(try_from = "Instant")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "Instant")]
    pub updated_at: DateTime<Utc>,
}

/// What a segment is made of.
#[derive(Debug, Clone, PartialEq)]
pub enum SegmentDef {
    /// Profiles whose attributes match (`attributes.plan == 'pro'`).
    Expression(String),
    /// These subjects.
    Static(Vec<String>),
}

/// One entry into or exit from a segment.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SegmentChange {
    pub id: i64,
    pub namespace: String,
    pub segment: String,
    pub subject: String,
    pub entered: bool,
    #[sqlx(try_from = "Instant")]
    pub at: DateTime<Utc>,
}

/// What one backfill batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct Backfilled {
    /// Profiles looked at.
    pub profiles: usize,
    /// Whether the backfill is over.
    pub done: bool,
}

/// A segment trigger's place in its segment's changes.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SegmentCursor {
    pub trigger_id: String,
    pub last_change: i64,
}

/// Segments and their members.
pub trait SegmentStore: Send + Sync {
    /// Creates or replaces a segment (its version goes up). An expression
    /// is backfilled from the start; a static list replaces the members at
    /// once. The expression must compile ([`Error::Invalid`]).
    fn put_segment(
        &self,
        namespace: &str,
        name: &str,
        def: &SegmentDef,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<SegmentRecord>> + Send;

    fn get_segment(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<SegmentRecord>>> + Send;

    /// A namespace's segments by name, with their sizes.
    fn list_segments(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<SegmentRecord>>> + Send;

    /// Deletes a segment and its members; whether it was there.
    fn delete_segment(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// A segment's members by subject, after `after`.
    fn segment_members(
        &self,
        namespace: &str,
        name: &str,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// The segments a subject is in.
    fn segments_of(
        &self,
        namespace: &str,
        subject: &str,
    ) -> impl Future<Output = Result<BTreeSet<String>>> + Send;

    /// The segments an execution's subject is in (none without a subject):
    /// what `in_segment` reads, just before a step.
    fn segments_of_execution(
        &self,
        execution_id: &str,
    ) -> impl Future<Output = Result<BTreeSet<String>>> + Send;

    /// Segments waiting for a backfill that no node holds now, claimed for
    /// `node` until `until` (at most `limit`).
    fn claim_backfills(
        &self,
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;

    /// Backfills the next `batch` profiles of a segment `node` holds, in one
    /// transaction (the profiles locked meanwhile, so a write racing it is
    /// not undone), and extends the claim. `None`: no longer ours.
    fn backfill_segment(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        batch: u32,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<Backfilled>>> + Send;

    /// A segment's changes after `after`, oldest first.
    fn segment_changes(
        &self,
        namespace: &str,
        segment: &str,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SegmentChange>>> + Send;

    /// Opens a trigger's cursor at the segment's last change (what happened
    /// before it is not its business). With `reset` (the trigger was just
    /// activated or resumed) an open cursor moves there too; else it stays.
    fn open_segment_cursor(
        &self,
        trigger_id: &str,
        namespace: &str,
        segment: &str,
        reset: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Claims cursors of these triggers no node holds now.
    fn claim_segment_cursors(
        &self,
        trigger_ids: &[String],
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<SegmentCursor>>> + Send;

    /// Moves a cursor `node` holds; `false`: no longer ours.
    fn advance_segment_cursor(
        &self,
        trigger_id: &str,
        node: &str,
        last_change: i64,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool>> + Send;
}

const COLUMNS: &str = "s.namespace, s.name, s.expression, s.version, s.backfill_after, \
     (SELECT COUNT(*) FROM segment_members m WHERE m.namespace = s.namespace AND m.segment = s.name) AS members, \
     s.created_at, s.updated_at";

/// Rows per statement.
const CHUNK: usize = 500;

/// Compiled segment expressions, by namespace, name and version (a profile
/// write evaluates them all; compiling each time would cost more than
/// evaluating).
/// (namespace, segment) → its compiled expression.
type ExprCache = HashMap<(String, String), Arc<Expr>>;

static COMPILED: LazyLock<Mutex<ExprCache>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The compiled expression of a segment, cached by its namespace and name
/// and checked against its source (a segment deleted and made again starts
/// at version 1 again; its source is what tells).
fn compiled(namespace: &str, name: &str, source: &str) -> Option<Arc<Expr>> {
    let key = (namespace.to_owned(), name.to_owned());
    if let Ok(cache) = COMPILED.lock()
        && let Some(e) = cache.get(&key)
        && e.source() == source
    {
        return Some(e.clone());
    }
    let expr = Arc::new(Expr::compile_segment(source).ok()?);
    if let Ok(mut cache) = COMPILED.lock() {
        cache.insert(key, expr.clone());
    }
    Some(expr)
}

/// The namespace's expression segments, share-locked until the
/// transaction ends: a profile write reads them first (before it locks its
/// profiles), so a segment changed or backfilled meanwhile waits for it,
/// and it for them — never a write judged by an expression already replaced.
pub(crate) async fn expression_segments<DB>(
    tx: &mut DB::Connection,
    namespace: &str,
) -> Result<Vec<(String, Option<String>, i32)>>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    (String, Option<String>, i32): Read<DB>,
{
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT name, expression, version FROM segments
         WHERE namespace = $1 AND expression IS NOT NULL ORDER BY name{}",
        DB::FOR_SHARE
    )))
    .bind(namespace)
    .fetch_all(&mut *tx)
    .await?)
}

/// Whether a profile matches (an expression that fails on it, say on a
/// missing attribute, does not).
fn matches(expr: &Expr, subject: &str, attributes: &Map<String, Value>) -> bool {
    expr.eval_segment(subject, attributes).unwrap_or(false)
}

/// Brings the memberships of `profiles` in the namespace's expression
/// segments up to date, recording each entry and exit: what a profile
/// write runs in its own transaction.
pub(crate) async fn refresh_memberships<DB>(
    tx: &mut DB::Connection,
    namespace: &str,
    segments: &[(String, Option<String>, i32)],
    profiles: &[(&str, &Map<String, Value>)],
    now: DateTime<Utc>,
) -> Result<()>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> bool: Bind<'q, DB>,
    (String, String): Read<DB>,
{
    if profiles.is_empty() || segments.is_empty() {
        return Ok(());
    }
    let exprs: Vec<(&str, Arc<Expr>)> = segments
        .iter()
        .filter_map(|(name, source, _)| {
            let source = source.as_deref()?;
            compiled(namespace, name, source).map(|e| (name.as_str(), e))
        })
        .collect();
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for (subject, attributes) in profiles {
        for (name, expr) in &exprs {
            if matches(expr, subject, attributes) {
                wanted.insert(((*name).to_owned(), (*subject).to_owned()));
            }
        }
    }
    let mut have: BTreeSet<(String, String)> = BTreeSet::new();
    for chunk in profiles.chunks(CHUNK) {
        let mut q = QueryBuilder::<DB>::new(
            "SELECT segment, subject FROM segment_members WHERE namespace = ",
        );
        q.push_bind(namespace).push(" AND subject IN (");
        let mut sep = q.separated(", ");
        for (s, _) in chunk {
            sep.push_bind(*s);
        }
        q.push(")");
        let rows: Vec<(String, String)> = q
            .build_query_as()
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?;
        have.extend(
            rows.into_iter()
                .filter(|(seg, _)| exprs.iter().any(|(n, _)| *n == seg.as_str())),
        );
    }
    apply_changes::<DB>(tx, namespace, &wanted, &have, now).await
}

/// Adds the members in `wanted` not in `have` and removes those in `have`
/// not in `wanted` ((segment, subject) pairs), one change row each.
async fn apply_changes<DB>(
    tx: &mut DB::Connection,
    namespace: &str,
    wanted: &BTreeSet<(String, String)>,
    have: &BTreeSet<(String, String)>,
    now: DateTime<Utc>,
) -> Result<()>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> bool: Bind<'q, DB>,
{
    let entered: Vec<&(String, String)> = wanted.difference(have).collect();
    let left: Vec<&(String, String)> = have.difference(wanted).collect();
    for chunk in entered.chunks(CHUNK) {
        let mut q = QueryBuilder::<DB>::new(
            "INSERT INTO segment_members (namespace, segment, subject, entered_at) ",
        );
        q.push_values(chunk, |mut b, (seg, subject)| {
            b.push_bind(namespace)
                .push_bind(seg.as_str())
                .push_bind(subject.as_str())
                .push_bind(at(now));
        });
        q.push(" ON CONFLICT (namespace, segment, subject) DO NOTHING");
        q.build().persistent(false).execute(&mut *tx).await?;
    }
    let mut by_segment: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (seg, subject) in &left {
        by_segment
            .entry(seg.as_str())
            .or_default()
            .push(subject.as_str());
    }
    for (seg, subjects) in by_segment {
        for chunk in subjects.chunks(CHUNK) {
            let mut q = QueryBuilder::<DB>::new("DELETE FROM segment_members WHERE namespace = ");
            q.push_bind(namespace)
                .push(" AND segment = ")
                .push_bind(seg)
                .push(" AND subject IN (");
            let mut sep = q.separated(", ");
            for s in chunk {
                sep.push_bind(*s);
            }
            q.push(")");
            q.build().persistent(false).execute(&mut *tx).await?;
        }
    }
    let changes: Vec<(&(String, String), bool)> = entered
        .iter()
        .map(|c| (*c, true))
        .chain(left.iter().map(|c| (*c, false)))
        .collect();
    for chunk in changes.chunks(CHUNK) {
        let mut q = QueryBuilder::<DB>::new(
            "INSERT INTO segment_changes (namespace, segment, subject, entered, at) ",
        );
        q.push_values(chunk, |mut b, ((seg, subject), entered)| {
            b.push_bind(namespace)
                .push_bind(seg.as_str())
                .push_bind(subject.as_str())
                .push_bind(*entered)
                .push_bind(at(now));
        });
        q.build().persistent(false).execute(&mut *tx).await?;
    }
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
#[doc(hidden)]
pub struct BackfillRow {
    expression: Option<String>,
    backfill_after: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
#[doc(hidden)]
pub struct ProfileAttributes {
    subject: String,
    #[sqlx(json)]
    attributes: Map<String, Value>,
}

impl<DB> SegmentStore for SqlStore<DB>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'a> Option<&'a str>: Bind<'a, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> i64: Bind<'q, DB>,
    for<'q> i32: Bind<'q, DB>,
    for<'q> bool: Bind<'q, DB>,
    SegmentRecord: Read<DB>,
    SegmentChange: Read<DB>,
    SegmentCursor: Read<DB>,
    BackfillRow: Read<DB>,
    ProfileAttributes: Read<DB>,
    (String,): Read<DB>,
    (String, String): Read<DB>,
    (String, Option<String>, i32): Read<DB>,
    (i64,): Read<DB>,
    (Option<i64>,): Read<DB>,
{
    async fn put_segment(
        &self,
        namespace: &str,
        name: &str,
        def: &SegmentDef,
        now: DateTime<Utc>,
    ) -> Result<SegmentRecord> {
        let expression = match def {
            SegmentDef::Expression(e) => {
                Expr::compile_segment(e).map_err(Error::Invalid)?;
                Some(e.as_str())
            }
            SegmentDef::Static(list) if list.len() > MAX_STATIC => {
                return Err(Error::Invalid(format!(
                    "a static segment has at most {MAX_STATIC} subjects"
                )));
            }
            SegmentDef::Static(_) => None,
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO segments (namespace, name, expression, version, backfill_after, created_at, updated_at)
             VALUES ($1, $2, $3, 1, $4, $5, $5)
             ON CONFLICT (namespace, name) DO UPDATE SET
                 expression = excluded.expression, version = segments.version + 1,
                 backfill_after = excluded.backfill_after, claimed_by = NULL,
                 claimed_until = NULL, updated_at = excluded.updated_at",
        )
        .bind(namespace)
        .bind(name)
        .bind(expression)
        .bind(expression.map(|_| ""))
        .bind(at(now))
        .execute(&mut *tx)
        .await?;
        if let SegmentDef::Static(list) = def {
            let wanted: BTreeSet<(String, String)> =
                list.iter().map(|s| (name.to_owned(), s.clone())).collect();
            let have: Vec<(String, String)> = sqlx::query_as(
                "SELECT segment, subject FROM segment_members WHERE namespace = $1 AND segment = $2",
            )
            .bind(namespace)
            .bind(name)
            .fetch_all(&mut *tx)
            .await?;
            let have: BTreeSet<(String, String)> = have.into_iter().collect();
            apply_changes::<DB>(&mut tx, namespace, &wanted, &have, now).await?;
        }
        tx.commit().await?;
        self.get_segment(namespace, name)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "segment",
                id: name.to_owned(),
            })
    }

    async fn get_segment(&self, namespace: &str, name: &str) -> Result<Option<SegmentRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM segments s WHERE s.namespace = $1 AND s.name = $2"
        )))
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_segments(&self, namespace: &str) -> Result<Vec<SegmentRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM segments s WHERE s.namespace = $1 ORDER BY s.name"
        )))
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn delete_segment(&self, namespace: &str, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let gone: Option<(String,)> = sqlx::query_as(
            "DELETE FROM segments WHERE namespace = $1 AND name = $2 RETURNING name",
        )
        .bind(namespace)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM segment_members WHERE namespace = $1 AND segment = $2")
            .bind(namespace)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone.is_some())
    }

    async fn segment_members(
        &self,
        namespace: &str,
        name: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT subject FROM segment_members WHERE namespace = $1 AND segment = $2
             AND subject > $3 ORDER BY subject LIMIT $4",
        )
        .bind(namespace)
        .bind(name)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }

    async fn segments_of(&self, namespace: &str, subject: &str) -> Result<BTreeSet<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT segment FROM segment_members WHERE namespace = $1 AND subject = $2",
        )
        .bind(namespace)
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }

    async fn segments_of_execution(&self, execution_id: &str) -> Result<BTreeSet<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT m.segment FROM executions e
             JOIN segment_members m ON m.namespace = e.namespace AND m.subject = e.subject
             WHERE e.id = $1",
        )
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }

    async fn claim_backfills(
        &self,
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(String, String)>> {
        let mut tx = self.pool.begin().await?;
        let due: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT namespace, name FROM segments
             WHERE backfill_after IS NOT NULL AND (claimed_until IS NULL OR claimed_until < $1)
             ORDER BY updated_at LIMIT $2{}",
            DB::SKIP_LOCKED
        )))
        .bind(at(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        for (ns, name) in &due {
            sqlx::query(
                "UPDATE segments SET claimed_by = $1, claimed_until = $2
                 WHERE namespace = $3 AND name = $4",
            )
            .bind(node)
            .bind(at(until))
            .bind(ns.as_str())
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(due)
    }

    async fn backfill_segment(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        batch: u32,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<Backfilled>> {
        let mut tx = self.pool.begin().await?;
        let row: Option<BackfillRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT expression, backfill_after FROM segments
             WHERE namespace = $1 AND name = $2 AND claimed_by = $3{}",
            DB::FOR_UPDATE
        )))
        .bind(namespace)
        .bind(name)
        .bind(node)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(BackfillRow {
            expression: Some(source),
            backfill_after: Some(after),
        }) = row
        else {
            return Ok(None);
        };
        let Some(expr) = compiled(namespace, name, &source) else {
            return Err(Error::Invalid(format!(
                "segment {name}: its expression does not compile"
            )));
        };
        let profiles: Vec<ProfileAttributes> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT subject, attributes FROM profiles WHERE namespace = $1 AND subject > $2
             ORDER BY subject LIMIT $3{}",
            DB::FOR_UPDATE
        )))
        .bind(namespace)
        .bind(after.as_str())
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await?;
        let last = profiles.last().map(|p| p.subject.clone());
        let wanted: BTreeSet<(String, String)> = profiles
            .iter()
            .filter(|p| matches(&expr, &p.subject, &p.attributes))
            .map(|p| (name.to_owned(), p.subject.clone()))
            .collect();
        let mut have: BTreeSet<(String, String)> = BTreeSet::new();
        if let Some(last) = &last {
            // Members in this batch's range of subjects (a subject with no
            // profile any more leaves too).
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT segment, subject FROM segment_members
                 WHERE namespace = $1 AND segment = $2 AND subject > $3 AND subject <= $4",
            )
            .bind(namespace)
            .bind(name)
            .bind(after.as_str())
            .bind(last.as_str())
            .fetch_all(&mut *tx)
            .await?;
            have.extend(rows);
        }
        apply_changes::<DB>(&mut tx, namespace, &wanted, &have, now).await?;
        let done = profiles.len() < batch as usize;
        if done {
            // Members past the last profile (profiles erased since).
            sqlx::query(
                "DELETE FROM segment_members WHERE namespace = $1 AND segment = $2 AND subject > $3",
            )
            .bind(namespace)
            .bind(name)
            .bind(last.as_deref().unwrap_or(after.as_str()))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE segments SET backfill_after = $1, claimed_until = $2,
                 claimed_by = CASE WHEN $1 IS NULL THEN NULL ELSE claimed_by END
             WHERE namespace = $3 AND name = $4",
        )
        .bind(if done { None } else { last.as_deref() })
        .bind(at(until))
        .bind(namespace)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Backfilled {
            profiles: profiles.len(),
            done,
        }))
    }

    async fn segment_changes(
        &self,
        namespace: &str,
        segment: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<SegmentChange>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, namespace, segment, subject, entered, at FROM segment_changes
             WHERE namespace = $1 AND segment = $2 AND id > $3{} ORDER BY id LIMIT $4",
            DB::SETTLED_CHANGES
        )))
        .bind(namespace)
        .bind(segment)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn open_segment_cursor(
        &self,
        trigger_id: &str,
        namespace: &str,
        segment: &str,
        reset: bool,
    ) -> Result<()> {
        let (last,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(id) FROM segment_changes WHERE namespace = $1 AND segment = $2",
        )
        .bind(namespace)
        .bind(segment)
        .fetch_one(&self.pool)
        .await?;
        sqlx::query(if reset {
            "INSERT INTO segment_cursors (trigger_id, last_change) VALUES ($1, $2)
             ON CONFLICT (trigger_id) DO UPDATE SET last_change = excluded.last_change"
        } else {
            "INSERT INTO segment_cursors (trigger_id, last_change) VALUES ($1, $2)
             ON CONFLICT (trigger_id) DO NOTHING"
        })
        .bind(trigger_id)
        .bind(last.unwrap_or(0))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_segment_cursors(
        &self,
        trigger_ids: &[String],
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<SegmentCursor>> {
        if trigger_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<DB>::new("UPDATE segment_cursors SET claimed_by = ");
        q.push_bind(node)
            .push(", claimed_until = ")
            .push_bind(at(until))
            .push(" WHERE (claimed_until IS NULL OR claimed_until < ")
            .push_bind(at(now))
            .push(" OR claimed_by = ")
            .push_bind(node)
            .push(") AND trigger_id IN (");
        let mut sep = q.separated(", ");
        for id in trigger_ids {
            sep.push_bind(id.as_str());
        }
        q.push(") RETURNING trigger_id, last_change");
        Ok(q.build_query_as()
            .persistent(false)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn advance_segment_cursor(
        &self,
        trigger_id: &str,
        node: &str,
        last_change: i64,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let moved: Option<(i64,)> = sqlx::query_as(
            "UPDATE segment_cursors SET last_change = $1, claimed_until = $2
             WHERE trigger_id = $3 AND claimed_by = $4 RETURNING last_change",
        )
        .bind(last_change)
        .bind(at(until))
        .bind(trigger_id)
        .bind(node)
        .fetch_optional(&self.pool)
        .await?;
        Ok(moved.is_some())
    }
}
