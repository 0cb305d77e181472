//! Interpreter throughput: how fast `step` runs on a realistic journey.
//!
//! `cargo run --release -p sojourn-runtime --example bench_step [N]`
//!
//! Simulates N executions of `examples/welcome-series.json` (a day and a
//! half of journey time: 3 actions, 2 delays, quiet hours, a condition) and
//! prints steps/s, the mean time per step and per simulated journey.

use std::time::Instant;

use sojourn_runtime::simulate::{Limits, Script, simulate};
use sojourn_runtime::{CompiledWorkflow, ExecutionId, Registry, Workflow};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let text = std::fs::read_to_string(format!("{dir}/welcome-series.json")).expect("example");
    let input: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/welcome-series.input.json")).expect("input"),
    )
    .expect("input json");
    let workflow = Workflow::from_json(&text).expect("parses");

    let t = Instant::now();
    let compiles = 1_000;
    for _ in 0..compiles {
        CompiledWorkflow::compile(&workflow, &Registry::builtin()).expect("validates");
    }
    let compile_us = t.elapsed().as_secs_f64() * 1e6 / compiles as f64;

    let wf = CompiledWorkflow::compile(&workflow, &Registry::builtin()).expect("validates");
    let start = "2026-11-23T01:30:00Z".parse().expect("ts");
    let script = Script::default();
    let mut steps = 0usize;
    let t = Instant::now();
    for i in 0..n {
        let snap = wf
            .new_execution(
                ExecutionId::new(format!("exe_{i}")),
                input.clone(),
                None,
                None,
                start,
            )
            .expect("starts");
        let sim = simulate(&wf, snap, &script, Limits::default()).expect("simulates");
        steps += sim.snapshot.seq as usize;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("compile (validate + build) : {compile_us:.1} µs per workflow");
    println!(
        "journeys simulated          : {n} in {secs:.3} s ({:.0} journeys/s)",
        n as f64 / secs
    );
    println!(
        "steps                       : {steps} ({:.0} steps/s, {:.2} µs/step)",
        steps as f64 / secs,
        secs * 1e6 / steps as f64
    );
    println!(
        "per journey (1d 12h 30m)    : {:.1} µs",
        secs * 1e6 / n as f64
    );
}
