//! Crash test: a real `sojourn` process with a few hundred executions in
//! flight and asleep is killed with SIGKILL at random moments and started
//! again. Every execution finishes; the local HTTP sink receives every
//! action's idempotency key at least once, and after deduplication by key
//! exactly once; every repeat is one the store recorded as a re-send (a
//! kill between a send and the record of its result).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sojourn_persistence::SqliteStore;
use sojourn_persistence::prelude::*;
use sojourn_runtime::ExecutionId;
use sojourn_testkit::Sink;

const EXECUTIONS: usize = 300;

fn workflow(base: &str) -> String {
    serde_json::json!({
        "key": "crash",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "first", "type": "action", "config": {"action": "http.request", "inputs": {"url": format!("{base}/first")}}},
            {"id": "nap", "type": "delay", "config": {"duration": "1s"}},
            {"id": "check", "type": "condition", "config": {"expression": "nodes.first.output.status == 200"}},
            {"id": "second", "type": "action", "config": {"action": "http.request", "inputs": {"url": format!("{base}/second")}}},
            {"id": "done", "type": "exit", "config": {"outcome": "done"}},
            {"id": "odd", "type": "exit"},
        ],
        "edges": [
            {"from": "start", "to": "first"},
            {"from": "first", "to": "nap", "branch": "success"},
            {"from": "nap", "to": "check"},
            {"from": "check", "to": "second", "branch": "true"},
            {"from": "check", "to": "odd", "branch": "false"},
            {"from": "second", "to": "done", "branch": "success"},
        ]
    })
    .to_string()
}

/// A small deterministic generator (the seed is printed to reproduce a run).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// With action results handed to their actors in memory (the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    kill_9_at_random_moments(true).await;
}

/// With every action result recorded as a row before it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_with_results_as_rows_loses_and_doubles_nothing() {
    kill_9_at_random_moments(false).await;
}

async fn kill_9_at_random_moments(results_in_memory: bool) {
    let sink = Sink::start().await;
    let base = sink.url();
    let in_memory = if results_in_memory { "true" } else { "false" };

    let dir =
        std::env::temp_dir().join(format!("sojourn-crash-{}-{in_memory}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let wf_path = dir.join("crash.json");
    std::fs::write(&wf_path, workflow(&base)).expect("write workflow");
    let data = dir.join("data");
    let count = EXECUTIONS.to_string();
    let args: Vec<String> = vec![
        "run".into(),
        wf_path.display().to_string(),
        "--count".into(),
        count,
        "--key".into(),
        "crash".into(),
        "--timeout".into(),
        "120".into(),
        "--data".into(),
        data.display().to_string(),
    ];

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    eprintln!("crash test seed {seed} (results in memory: {in_memory})");
    let mut rng = Lcg(seed);
    let mut kills = 0;
    for round in 0..4 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sojourn"))
            .args(&args)
            .env("SOJOURN_LOG", "error")
            .env("SOJOURN_ENGINE__RESULTS_IN_MEMORY", in_memory)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sojourn");
        // The first kill lands before the journeys' 1 s delay can be over
        // (so every run kills at least once); later ones anywhere in a
        // restarted node's recovery and work.
        let wait = if round == 0 {
            100 + rng.below(800)
        } else {
            100 + rng.below(1_400)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        match child.try_wait().expect("wait") {
            None => {
                child.kill().expect("kill -9");
                kills += 1;
            }
            // The first kill comes before the journeys can be done: a node
            // gone by then failed on its own.
            Some(status) if round == 0 => {
                panic!("the node exited on its own before its first kill: {status}")
            }
            Some(_) => {}
        }
        let _ = child.wait();
    }
    // Start it once more and let it finish everything.
    let started = Instant::now();
    let final_args = args.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sojourn"))
            .args(&final_args)
            .env("SOJOURN_LOG", "error")
            .env("SOJOURN_ENGINE__RESULTS_IN_MEMORY", in_memory)
            .output()
            .expect("run sojourn")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "final run failed after {kills} kills: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("= {EXECUTIONS} completed")),
        "{stdout}"
    );
    eprintln!("{kills} kills; final run took {:?}", started.elapsed());

    // Every key at least once; repeats only where the store recorded a re-send.
    let keys = sink.keys();
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for k in &keys {
        *per_key.entry(k.clone()).or_default() += 1;
    }
    let executions: BTreeSet<String> = per_key
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_owned))
        .collect();
    assert_eq!(
        executions.len(),
        EXECUTIONS,
        "every execution sent its actions"
    );
    for exe in &executions {
        for node in ["first", "second"] {
            assert!(
                per_key.contains_key(&format!("{exe}/{node}/1")),
                "{exe} never sent {node}"
            );
        }
    }
    assert_eq!(
        per_key.len(),
        EXECUTIONS * 2,
        "after deduplication by key, exactly one effect each"
    );
    let store = SqliteStore::open(&data.join("sojourn.db"))
        .await
        .expect("open store");
    let mut repeats = 0;
    for (key, n) in per_key.iter().filter(|(_, n)| **n > 1) {
        repeats += n - 1;
        let mut parts = key.split('/');
        let (exe, node) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let rows = store
            .node_executions(&ExecutionId::new(exe))
            .await
            .expect("nodes");
        let sends = rows
            .iter()
            .find(|r| r.node_id == node)
            .map_or(0, |r| r.sends);
        assert!(
            sends as usize >= *n,
            "{key} arrived {n} times but only {sends} send(s) were recorded"
        );
    }
    eprintln!(
        "{} requests, {} keys, {repeats} repeats (each a recorded re-send)",
        keys.len(),
        per_key.len()
    );
    store.pool().close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
