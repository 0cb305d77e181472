//! The analytics rollup over a large journal, on a fresh PostgreSQL schema
//! (`SOJOURN_TEST_DATABASE_URL`, default the local server): `--executions`
//! executions (default 1,000,000), each with `--nodes` node entries
//! (default 5: 5,000,000 node executions) and its end, loaded with SQL, then
//! rolled up by the job's own loop (`sojourn_actors::analytics::catch_up`)
//! from an empty cursor. Prints the load time, the rollup time and rate, the
//! process's peak RSS, and checks the rolled-up total against the rows.
//!
//! Then `--deliveries` deliveries (default: one per execution) rolled up the
//! same way and checked against a direct count, and `--sweep-batches`
//! batches of the retention sweeper (default 300) timed.
//!
//! `cargo run --release -p sojourn-api --example rollup_bench -- [--executions N] [--nodes K] [--deliveries D] [--sweep-batches B]`

use std::time::Instant;

use chrono::Utc;
use serde_json::json;
use sojourn_persistence::prelude::*;
use sojourn_persistence::{NewWorkflow, Pins};
use sojourn_runtime::Workflow;
use sojourn_testkit::{bench_arg as arg, peak_rss_mib};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let executions = arg("--executions", 1_000_000) as i64;
    let nodes = arg("--nodes", 5) as i64;
    let (store, fresh) = sojourn_testkit::pg_store().await;
    let pool = store.pool();
    let workflow: Workflow = serde_json::from_value(json!({
        "nodes": [{"id": "start", "type": "start"}, {"id": "done", "type": "exit"}],
        "edges": [{"from": "start", "to": "done"}]
    }))
    .expect("workflow");
    let now = Utc::now();
    let wf = store
        .create_workflow(NewWorkflow {
            id: "wf_bench".into(),
            namespace: "default".into(),
            key: "bench".into(),
            name: None,
            draft: json!({}),
            now,
        })
        .await
        .expect("workflow");
    store
        .publish(&wf.id, &workflow, &Pins::new(), now)
        .await
        .expect("publish");

    // The load: executions spread over the last two days, each with its
    // node entries and its end (one in ten failed), in id order by time.
    let t = Instant::now();
    sqlx::query(
        "INSERT INTO executions (id, namespace, workflow_id, version, status, snapshot, snapshot_seq, created_at, updated_at)
         SELECT 'exe_' || lpad(g::text, 9, '0'), 'default', 'wf_bench', 1,
                CASE WHEN g % 10 = 0 THEN 'failed' ELSE 'completed' END, '{}'::jsonb, 1,
                now() - interval '2 days' + g * interval '150 ms', now()
         FROM generate_series(1, $1) g",
    )
    .bind(executions)
    .execute(pool)
    .await
    .expect("executions");
    sqlx::query(
        "INSERT INTO journal (execution_id, seq, at, kind, entry)
         SELECT 'exe_' || lpad(g::text, 9, '0'), n, t,
                CASE WHEN n <= $2 THEN 'node_entered'
                     WHEN g % 10 = 0 THEN 'failed' ELSE 'completed' END,
                CASE WHEN n <= $2 THEN jsonb_build_object('type', 'node_entered', 'seq', n, 'node', 'n' || n, 'node_type', 'action')
                     WHEN g % 10 = 0 THEN jsonb_build_object('type', 'failed', 'seq', n, 'node', 'n' || $2, 'error', 'boom')
                     ELSE jsonb_build_object('type', 'completed', 'seq', n, 'outcome', 'ok') END
         FROM generate_series(1, $1) g, generate_series(1, $2 + 1) n,
              LATERAL (SELECT now() - interval '2 days' + g * interval '150 ms' + n * interval '1 ms' AS t) x
         ORDER BY g, n",
    )
    .bind(executions)
    .bind(nodes)
    .execute(pool)
    .await
    .expect("journal");
    sqlx::query("ANALYZE journal")
        .execute(pool)
        .await
        .expect("analyze");
    sqlx::query("ANALYZE executions")
        .execute(pool)
        .await
        .expect("analyze");
    let rows = executions * (nodes + 1);
    println!(
        "loaded {executions} executions, {} node executions and {executions} ends ({rows} journal rows) in {:.1} s",
        executions * nodes,
        t.elapsed().as_secs_f64()
    );

    let rss_before = peak_rss_mib();
    let t = Instant::now();
    let counted = sojourn_actors::analytics::catch_up(&store, &CancellationToken::new()).await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "rolled up {counted} journal rows in {secs:.1} s ({:.0} rows/s, {} per transaction); peak RSS {:.0} MiB before, {:.0} MiB after",
        counted as f64 / secs,
        sojourn_actors::analytics::BATCH,
        rss_before,
        peak_rss_mib()
    );
    let (total, keys): (i64, i64) =
        sqlx::query_as("SELECT COALESCE(SUM(value), 0)::bigint, COUNT(*) FROM analytics_daily")
            .fetch_one(pool)
            .await
            .expect("total");
    println!("analytics_daily: {keys} rows, total {total}");
    assert_eq!(total, rows, "the rollup counts every counted row once");
    let t = Instant::now();
    let again = sojourn_actors::analytics::catch_up(&store, &CancellationToken::new()).await;
    println!(
        "a turn with nothing new: {again} rows in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // Deliveries: one per execution (a tenth failed, the others sent, then
    // delivered, opened, clicked or bounced), rolled up by the same job.
    let deliveries = arg("--deliveries", executions as u64) as i64;
    let t = Instant::now();
    sqlx::query(
        "INSERT INTO deliveries (id, namespace, workflow_id, execution_id, node, attempt, idempotency_key,
                                 channel, provider, recipient, status, created_at, duration_ms, updated_at)
         SELECT 'dlv_' || lpad(g::text, 9, '0'), 'default', 'wf_bench', 'exe_' || lpad(g::text, 9, '0'),
                'n1', 1, 'exe_' || g || '/n1/1', CASE WHEN g % 3 = 0 THEN 'sms' ELSE 'email' END,
                CASE WHEN g % 2 = 0 THEN 'sendgrid' ELSE 'smtp' END, 'someone@example.com',
                (ARRAY['failed', 'sent', 'delivered', 'delivered', 'opened', 'opened', 'clicked', 'bounced', 'delivered', 'sent'])[g % 10 + 1],
                now() - interval '2 days' + g * interval '150 ms', 40,
                now() - interval '2 days' + g * interval '150 ms' + interval '1 s'
         FROM generate_series(1, $1) g",
    )
    .bind(deliveries)
    .execute(pool)
    .await
    .expect("deliveries");
    sqlx::query("ANALYZE deliveries")
        .execute(pool)
        .await
        .expect("analyze");
    println!(
        "loaded {deliveries} deliveries in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let before: (i64,) =
        sqlx::query_as("SELECT COALESCE(SUM(value), 0)::bigint FROM analytics_daily")
            .fetch_one(pool)
            .await
            .expect("total");
    let t = Instant::now();
    let counted = sojourn_actors::analytics::catch_up(&store, &CancellationToken::new()).await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "rolled up {counted} deliveries in {secs:.1} s ({:.0} deliveries/s); peak RSS {:.0} MiB",
        counted as f64 / secs,
        peak_rss_mib()
    );
    assert_eq!(counted, deliveries as u64, "each delivery counted once");
    let after: (i64,) =
        sqlx::query_as("SELECT COALESCE(SUM(value), 0)::bigint FROM analytics_daily")
            .fetch_one(pool)
            .await
            .expect("total");
    // What each status adds, counted directly.
    let (direct,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(SUM(CASE status WHEN 'failed' THEN 1 WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2
                                WHEN 'opened' THEN 3 WHEN 'clicked' THEN 4 WHEN 'bounced' THEN 2 END), 0)::bigint
         FROM deliveries",
    )
    .fetch_one(pool)
    .await
    .expect("direct");
    assert_eq!(
        after.0 - before.0,
        direct,
        "the delivery counts equal a direct count"
    );

    // Retention: the journal, node executions and deliveries of finished
    // executions, `--sweep-batches` batches of the sweeper (100 executions
    // each) timed.
    let batches = arg("--sweep-batches", 300) as u32;
    sqlx::query("UPDATE executions SET finished_at = created_at + interval '1 s'")
        .execute(pool)
        .await
        .expect("finish");
    sqlx::query("ANALYZE executions")
        .execute(pool)
        .await
        .expect("analyze");
    let policy = sojourn_persistence::RetentionPolicy {
        journal_days: Some(1),
        node_executions_days: Some(1),
        deliveries_days: Some(1),
    };
    store
        .set_retention("default", &policy, Utc::now())
        .await
        .expect("retention");
    let later = Utc::now() + chrono::Duration::days(3);
    let t = Instant::now();
    let (mut swept, mut rows, mut slowest) = (0u32, 0u64, 0f64);
    while swept < batches {
        let b = Instant::now();
        match store
            .sweep_retention(sojourn_actors::retention::BATCH, later)
            .await
        {
            Ok(Some(Some(s))) => rows += s.rows,
            other => panic!("the sweep stopped early: {other:?}"),
        }
        slowest = slowest.max(b.elapsed().as_secs_f64());
        swept += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "retention: {swept} batches of {} finished executions deleted {rows} rows in {secs:.1} s \
         ({:.0} rows/s, {:.1} ms a batch on average, {:.1} ms the slowest)",
        sojourn_actors::retention::BATCH,
        rows as f64 / secs,
        secs * 1e3 / f64::from(swept),
        slowest * 1e3
    );
    fresh.cleanup(Some(&store)).await;
}
