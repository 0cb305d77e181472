//! PostgreSQL's execution statements: a batch of new executions is one
//! `UNNEST` insert (subject limits serialised by transaction-scoped advisory
//! locks), a batch is activated with one `UPDATE … WHERE id = ANY($1)`, and
//! a round of the group commit is one fenced `UPDATE … FROM UNNEST …
//! RETURNING id` followed by the dependent rows of the winners, each table
//! one `UNNEST` statement (DESIGN invariant 1: a fenced execution does not
//! take the others down).

use std::collections::HashMap;

use sojourn_runtime::ExecutionId;
use sqlx::Postgres;
use sqlx::postgres::PgConnection;
use sqlx::types::Json;

use super::rows::Rows;
use super::{EXECUTION_COLUMNS, ExecutionRow, ExecutionSql};
use crate::error::Error;
use crate::sql::conflict;
use crate::types::{Created, ExecutionRecord, InboxItem, NewExecution};
use crate::{PgStore, Result};

impl ExecutionSql for Postgres {
    async fn create_executions(store: &PgStore, batch: &[NewExecution]) -> Result<Vec<Created>> {
        let n = batch.len();
        let mut tx = store.pool.begin().await?;
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
            .map_err(|e| conflict(e, "id", "an execution id of this batch"))?
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

    async fn activate_many(
        store: &PgStore,
        ids: &[ExecutionId],
    ) -> Result<Vec<(ExecutionRecord, Vec<InboxItem>)>> {
        let keys: Vec<&str> = ids.iter().map(ExecutionId::as_str).collect();
        let records: Vec<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE executions SET lease_epoch = lease_epoch + 1 WHERE id = ANY($1) RETURNING {EXECUTION_COLUMNS}"
        )))
        .bind(&keys)
        .fetch_all(&store.pool)
        .await?;
        let inbox: Vec<(i64, String, Json<sojourn_runtime::Input>)> = sqlx::query_as(
            "SELECT id, execution_id, input FROM inbox WHERE execution_id = ANY($1) ORDER BY id",
        )
        .bind(&keys)
        .fetch_all(&store.pool)
        .await?;
        let mut by_exec: HashMap<String, Vec<InboxItem>> = HashMap::new();
        for (id, execution_id, input) in inbox {
            by_exec
                .entry(execution_id)
                .or_default()
                .push(InboxItem { id, input: input.0 });
        }
        Ok(records
            .into_iter()
            .map(|row| {
                let rec = ExecutionRecord::from(row);
                let items = by_exec.remove(rec.id.as_str()).unwrap_or_default();
                (rec, items)
            })
            .collect())
    }

    async fn commit_round(tx: &mut PgConnection, round: &[(usize, Rows)]) -> Result<Vec<usize>> {
        let winners = update_executions(tx, round).await?;
        let won: Vec<&Rows> = round
            .iter()
            .filter(|(_, r)| winners.contains(&r.execution.id))
            .map(|(_, r)| r)
            .collect();
        if !won.is_empty() {
            write_dependents(tx, &won).await?;
        }
        Ok(round
            .iter()
            .filter(|(_, r)| winners.contains(&r.execution.id))
            .map(|(i, _)| *i)
            .collect())
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
    tx: &mut PgConnection,
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
        .execute(&mut *tx)
        .await?;

    let (wf, subj): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT v.wf, v.subj,
                (SELECT count(*) FROM executions x WHERE x.workflow_id = v.wf AND x.subject = v.subj) AS n
         FROM UNNEST($1::text[], $2::text[]) AS v(wf, subj)",
    )
    .bind(&wf)
    .bind(&subj)
    .fetch_all(&mut *tx)
    .await?;
    let mut counts: HashMap<(String, String), i64> = rows
        .into_iter()
        .map(|(wf, subj, n)| ((wf, subj), n))
        .collect();

    let (kwf, kkey): (Vec<&str>, Vec<&str>) = batch
        .iter()
        .filter_map(|e| Some((e.workflow_id.as_str(), e.idempotency_key.as_deref()?)))
        .unzip();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT x.workflow_id, x.idempotency_key, x.id
         FROM executions x JOIN UNNEST($1::text[], $2::text[]) AS v(wf, key)
              ON x.workflow_id = v.wf AND x.idempotency_key = v.key",
    )
    .bind(&kwf)
    .bind(&kkey)
    .fetch_all(&mut *tx)
    .await?;
    let existing: HashMap<(String, String), String> = rows
        .into_iter()
        .map(|(wf, key, id)| ((wf, key), id))
        .collect();

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

/// The fenced snapshot update of one round; returns the ids that won.
async fn update_executions(tx: &mut PgConnection, round: &[(usize, Rows)]) -> Result<Vec<String>> {
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
    .fetch_all(&mut *tx)
    .await?;
    Ok(winners)
}

/// Journal, node executions, outbox, timers, subscriptions and inbox rows
/// of the transitions that passed the fence.
async fn write_dependents(tx: &mut PgConnection, won: &[&Rows]) -> Result<()> {
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
        .execute(&mut *tx)
        .await?;
    }

    // Node executions started, and the outbox rows that send them.
    let (mut ex, mut node, mut attempt, mut action, mut input, mut started) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut status, mut sends) = (vec![], vec![]);
    let (mut key, mut payload, mut owner, mut until, mut deliveries) =
        (vec![], vec![], vec![], vec![], vec![]);
    for r in won {
        for (s, o) in r.node_starts.iter().zip(&r.outbox) {
            ex.push(r.execution.id.as_str());
            node.push(s.node_id.as_str());
            attempt.push(s.attempt);
            action.push(s.action.as_str());
            input.push(s.input.as_str());
            started.push(r.now);
            status.push(s.status);
            sends.push(s.sends);
            key.push(o.idempotency_key.as_str());
            payload.push(o.payload.as_str());
            owner.push(o.claimed_by.as_deref());
            until.push(o.claimed_until);
            deliveries.push(o.deliveries);
        }
    }
    if !ex.is_empty() {
        sqlx::query(
            "INSERT INTO node_executions (execution_id, node_id, attempt, action, status, input, started_at, sends)
             SELECT e, n, a, act, st, i::jsonb, s, sn
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::timestamptz[],
                         $7::text[], $8::int[])
                  AS v(e, n, a, act, i, s, st, sn)
             ON CONFLICT DO NOTHING",
        )
        .bind(&ex)
        .bind(&node)
        .bind(&attempt)
        .bind(&action)
        .bind(&input)
        .bind(&started)
        .bind(&status)
        .bind(&sends)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (execution_id, node_id, attempt, idempotency_key, action, payload, created_at,
                                 claimed_by, claimed_until, deliveries)
             SELECT e, n, a, k, act, p::jsonb, c, o, u, d
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::text[], $9::timestamptz[], $10::int[])
                  AS v(e, n, a, k, act, p, c, o, u, d)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&ex)
        .bind(&node)
        .bind(&attempt)
        .bind(&key)
        .bind(&action)
        .bind(&payload)
        .bind(&started)
        .bind(&owner)
        .bind(&until)
        .bind(&deliveries)
        .execute(&mut *tx)
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
        .execute(&mut *tx)
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
        .execute(&mut *tx)
        .await?;
    }
    if !sub_ex.is_empty() {
        sqlx::query(
            "DELETE FROM subscriptions s USING UNNEST($1::text[], $2::text[]) AS v(e, s)
             WHERE s.execution_id = v.e AND s.subscription_id = v.s",
        )
        .bind(&sub_ex)
        .bind(&sub)
        .execute(&mut *tx)
        .await?;
    }

    // Timers and subscriptions set.
    let (mut ex, mut timer, mut due, mut owner, mut until) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut sub_ex, mut sub, mut event, mut key) = (vec![], vec![], vec![], vec![]);
    for r in won {
        for t in &r.timers_set {
            ex.push(r.execution.id.as_str());
            timer.push(t.timer_id.as_str());
            due.push(t.due_at);
            owner.push(t.claimed_by.as_deref());
            until.push(t.claimed_until);
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
            "INSERT INTO timers (execution_id, timer_id, due_at, claimed_by, claimed_until)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::timestamptz[])
             ON CONFLICT (execution_id, timer_id) DO UPDATE
                SET due_at = EXCLUDED.due_at, claimed_by = EXCLUDED.claimed_by,
                    claimed_until = EXCLUDED.claimed_until",
        )
        .bind(&ex)
        .bind(&timer)
        .bind(&due)
        .bind(&owner)
        .bind(&until)
        .execute(&mut *tx)
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
        .execute(&mut *tx)
        .await?;
    }
    if !finished.is_empty() {
        sqlx::query("DELETE FROM timers WHERE execution_id = ANY($1)")
            .bind(&finished)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM subscriptions WHERE execution_id = ANY($1)")
            .bind(&finished)
            .execute(&mut *tx)
            .await?;
    }

    let sent: Vec<&str> = won
        .iter()
        .filter_map(|r| r.consumed_outbox.as_deref())
        .collect();
    if !sent.is_empty() {
        sqlx::query("DELETE FROM outbox WHERE idempotency_key = ANY($1)")
            .bind(&sent)
            .execute(&mut *tx)
            .await?;
    }
    let consumed: Vec<i64> = won.iter().filter_map(|r| r.consumed_input).collect();
    if !consumed.is_empty() {
        sqlx::query("DELETE FROM inbox WHERE id = ANY($1)")
            .bind(&consumed)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
