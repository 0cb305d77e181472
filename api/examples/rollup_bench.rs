//! The analytics rollup over a large journal, on a fresh PostgreSQL schema
//! (`SOJOURN_TEST_DATABASE_URL`, default the local server): `--executions`
//! executions (default 1,000,000), each with `--nodes` node entries
//! (default 5: 5,000,000 node executions) and its end, loaded with SQL, then
//! rolled up by the job's own loop (`sojourn_actors::analytics::catch_up`)
//! from an empty cursor. Prints the load time, the rollup time and rate, the
//! process's peak RSS, and checks the rolled-up total against the rows.
//!
//! `cargo run --release -p sojourn-api --example rollup_bench -- [--executions N] [--nodes K]`

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
    fresh.cleanup(Some(&store)).await;
}
