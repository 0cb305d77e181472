//! The `sojourn` binary's offline commands, run as a user would: exit codes
//! (0 ok, 1 runtime failure, 2 bad usage or invalid input) and output.

use std::path::PathBuf;
use std::process::{Command, Output};

fn sojourn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sojourn"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run sojourn")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn temp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sojourn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write temp file");
    path
}

#[test]
fn validate_accepts_the_examples() {
    for name in ["welcome-series", "abandoned-cart", "ab-test"] {
        let o = sojourn(&["validate", &format!("examples/{name}.json")]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(stdout(&o).contains(": ok"));
    }
}

#[test]
fn validate_prints_every_problem_one_a_line_and_exits_2() {
    let bad = temp_file(
        "bad.json",
        r#"{"nodes": [
            {"id": "start", "type": "start"},
            {"id": "wait", "type": "delay", "config": {"duration": "a fortnight-ish"}},
            {"id": "send", "type": "action", "config": {"action": "carrier.pigeon"}},
            {"id": "end", "type": "exit"}
        ], "edges": [
            {"from": "start", "to": "wait"},
            {"from": "wait", "to": "send"},
            {"from": "send", "to": "end", "branch": "success"},
            {"from": "send", "to": "nowhere", "branch": "failure"}
        ]}"#,
    );
    let o = sojourn(&["validate", bad.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(2));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains("node \"wait\": config.duration:"),
        "{out}"
    );
    assert!(
        lines[1].contains("node \"send\": config.action: unknown action type \"carrier.pigeon\""),
        "{out}"
    );
    assert!(
        lines[2].contains("edges[3].to: no node \"nowhere\""),
        "{out}"
    );

    let o = sojourn(&["validate", "--json", bad.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(2));
    let errors: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(errors[0]["node"], "wait");
    assert_eq!(errors[0]["field"], "config.duration");
}

#[test]
fn missing_files_and_bad_usage_exit_2() {
    assert_eq!(
        sojourn(&["validate", "no/such/file.json"]).status.code(),
        Some(2)
    );
    assert_eq!(sojourn(&["frobnicate"]).status.code(), Some(2));
    let o = sojourn(&[
        "simulate",
        "examples/welcome-series.json",
        "--input",
        "examples/welcome-series.input.json",
        "--timezone",
        "Atlantis/Capital",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("timezone"));
    let events = temp_file(
        "events.json",
        r#"{"events": [{"after": "soonish", "name": "x"}]}"#,
    );
    let o = sojourn(&[
        "simulate",
        "examples/abandoned-cart.json",
        "--input",
        "examples/abandoned-cart.input.json",
        "--events",
        events.to_str().expect("path"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("events[0].after"));
}

#[test]
fn simulate_prints_the_expected_timeline() {
    let o = sojourn(&[
        "simulate",
        "examples/welcome-series.json",
        "--input",
        "examples/welcome-series.input.json",
        "--start",
        "2026-11-23T01:30:00Z",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let expected =
        std::fs::read_to_string("examples/welcome-series.timeline.txt").expect("timeline");
    assert_eq!(stdout(&o), expected);

    let o = sojourn(&[
        "simulate",
        "examples/abandoned-cart.json",
        "--input",
        "examples/abandoned-cart.input.json",
        "--events",
        "examples/abandoned-cart.events.json",
        "--start",
        "2026-11-20T17:00:00Z",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let sim: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(sim["stop"], "finished");
    assert_eq!(sim["snapshot"]["outcome"], "recovered");
    assert_eq!(sim["dispatches"].as_array().map(Vec::len), Some(3));
}

#[test]
fn schema_is_json_schema_for_the_document() {
    let o = sojourn(&["schema"]);
    assert_eq!(o.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(schema["title"], "Sojourn workflow");
    assert!(schema["properties"]["nodes"].is_object());
}
