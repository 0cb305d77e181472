//! A node is safe to expose, seen from outside: a real `sojourn dev`
//! process with a secret in its environment and debug logging runs a
//! journey that uses the secret against a local receiver; afterwards
//! neither its log, nor its data directory, nor any API answer holds the
//! secret. `sojourn serve` never prints the password of its Redis URL, and
//! `sojourn config` redacts every secret. An empty `SOJOURN_API_KEY` counts
//! as unset.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sojourn_testkit::{Reply, Sink, curl, free_port, temp_dir, wait_healthy};

const TOKEN: &str = "tok-e2e-5b1d0c-hunter2";
const REDIS_PASSWORD: &str = "redis-pw-7c2e9f";

fn sojourn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sojourn"))
}

/// Every file below `dir`, searched for `needle` (bytes).
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_receiver_and_nothing_else() {
    let sink = Sink::start().await;
    sink.reply(Reply::EchoHeaders);
    let dir = temp_dir("security");
    let data = dir.join("data");
    let log = dir.join("node.log");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut node = sojourn()
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(&data)
        .env("SOJOURN_LOG", "debug")
        .env("SOJOURN_SECRET_CRM_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn sojourn dev");
    wait_healthy(&url);

    let workflow = json!({
        "key": "crm-sync",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "push", "type": "action", "config": {"action": "http.request",
                "inputs": {
                    "url": format!("{}/contacts", sink.url()),
                    "headers": {"Authorization": "Bearer {{ secrets.CRM_TOKEN }}"},
                    "body": {"email": "{{ input.email }}"}
                }}},
            {"id": "done", "type": "exit"}
        ],
        "edges": [
            {"from": "start", "to": "push"},
            {"from": "push", "to": "done", "branch": "success"}
        ]
    });
    let (status, body) = curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        &json!({"key": "crm-sync", "definition": workflow, "publish": true}).to_string(),
        &format!("{url}/v1/workflows"),
    ]);
    assert_eq!(status, 201, "{body}");
    let (status, body) = curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"workflow": "crm-sync", "input": {"email": "ada@example.com"}}"#,
        &format!("{url}/v1/executions"),
    ]);
    assert!(status == 201 || status == 200, "{body}");
    let id = serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = curl(&[&format!("{url}/v1/executions/{id}")]);
        if body.contains("\"completed\"") {
            break;
        }
        assert!(Instant::now() < deadline, "never completed: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = sink.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), format!("Bearer {TOKEN}"));

    // Every answer about the execution.
    for path in [
        format!("/v1/executions/{id}"),
        format!("/v1/executions/{id}/journal"),
        format!("/v1/executions/{id}/nodes"),
        "/v1/workflows/crm-sync".to_owned(),
        "/metrics".to_owned(),
    ] {
        let (status, body) = curl(&[&format!("{url}{path}")]);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(TOKEN), "{path} answers the secret: {body}");
    }
    let (_, nodes) = curl(&[&format!("{url}/v1/executions/{id}/nodes")]);
    assert!(nodes.contains("[redacted]"), "{nodes}");
    let inspect = sojourn()
        .args(["inspect", &id, "--json"])
        .env("SOJOURN_URL", &url)
        .output()
        .expect("inspect");
    assert!(inspect.status.success());
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains(TOKEN));

    // An empty key is no key: dev mode lets the request through.
    let ls = sojourn()
        .args(["executions", "ls"])
        .env("SOJOURN_URL", &url)
        .env("SOJOURN_API_KEY", "")
        .output()
        .expect("executions ls");
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(String::from_utf8_lossy(&ls.stdout).contains(&id));

    let _ = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status();
    let status = node.wait().expect("wait");
    assert!(status.success(), "{status:?}");

    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.lines().count() > 5,
        "debug logging was on and wrote: {text}"
    );
    assert!(!text.contains(TOKEN), "the log holds the secret");
    assert_eq!(files_holding(&data, TOKEN), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_and_config_never_print_a_password() {
    let dir = temp_dir("redis-url");
    let redis_url = format!("redis://sojourn:{REDIS_PASSWORD}@127.0.0.1:6379");
    let config = sojourn()
        .arg("config")
        .env("SOJOURN_REDIS_URL", &redis_url)
        .env("SOJOURN_SECRET_ANY", TOKEN)
        .output()
        .expect("config");
    assert!(config.status.success());
    let printed = String::from_utf8_lossy(&config.stdout);
    assert!(
        printed.contains("redis_url = \"redis://sojourn:***@127.0.0.1:6379\""),
        "{printed}"
    );
    assert!(
        printed.contains("secrets.ANY = \"[redacted]\""),
        "{printed}"
    );
    assert!(!printed.contains(REDIS_PASSWORD) && !printed.contains(TOKEN));

    // A node whose Redis refuses the password: it says so, without it.
    let port = free_port();
    let log = dir.join("serve.log");
    let mut node = sojourn()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("SOJOURN_DATABASE_URL", sojourn_testkit::database_url())
        .env("SOJOURN_REDIS_URL", &redis_url)
        .env("SOJOURN_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn sojourn serve");
    std::thread::sleep(Duration::from_secs(3));
    let _ = node.kill();
    let _ = node.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text.is_empty(), "the node logged nothing");
    assert!(!text.contains(REDIS_PASSWORD), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_settings_are_refused_with_the_key_and_its_source() {
    let out = sojourn()
        .arg("config")
        .env("SOJOURN_ENGINE__TIMER_BATCH", "many")
        .output()
        .expect("config");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("engine.timer_batch") && err.contains("SOJOURN_ENGINE__TIMER_BATCH"),
        "{err}"
    );
    let dir = temp_dir("settings");
    let file = dir.join("node.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1\"\n[http]\nalow = []\n").expect("write");
    let out = sojourn()
        .arg("config")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("config");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.alow") && err.contains("unknown") && err.contains("node.toml"),
        "{err}"
    );
    // A flag beats the environment, which beats the file.
    std::fs::write(&file, "listen = \"127.0.0.1:1\"\nlease_ttl_ms = 700\n").expect("write");
    let out = sojourn()
        .args(["config", "--listen", "127.0.0.1:3"])
        .arg("--config")
        .arg(&file)
        .env("SOJOURN_LISTEN", "127.0.0.1:2")
        .env("SOJOURN_LEASE_TTL_MS", "900")
        .output()
        .expect("config");
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        printed
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("listen").contains("127.0.0.1:3") && line("listen").contains("flag"));
    assert!(
        line("lease_ttl_ms").contains("900")
            && line("lease_ttl_ms").contains("SOJOURN_LEASE_TTL_MS")
    );
    assert!(
        line("engine.timer_batch").contains("# default"),
        "{printed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
