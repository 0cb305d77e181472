//! The node commands: `dev` (embedded SQLite), `serve` (PostgreSQL),
//! `migrate`, and `run` (load a workflow and start executions from the
//! command line until the HTTP API lands).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use sojourn_actors::{Config, Engine, StartRequest};
use sojourn_api::{AppState, AuthMode};
use sojourn_persistence::prelude::*;
use sojourn_persistence::{PgStore, SqliteStore};
use sojourn_runtime::{ExecutionId, Status, Workflow};
use tracing::info;

use crate::Failure;

/// Where executions are stored: PostgreSQL by URL, else a SQLite file in a
/// data directory.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StoreArgs {
    /// PostgreSQL URL (production). Without it, the embedded SQLite store.
    #[arg(long, env = "SOJOURN_DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// The embedded store's directory.
    #[arg(long, default_value = "./sojourn-data")]
    pub(crate) data: PathBuf,
}

pub(crate) fn open_sqlite_path(data: &Path) -> Result<PathBuf, Failure> {
    std::fs::create_dir_all(data)
        .map_err(|e| Failure::Invalid(format!("--data {}: {e}", data.display())))?;
    Ok(data.join("sojourn.db"))
}

/// `sojourn dev`'s key for unsubscribe links: made once, kept in the data
/// directory (readable by its owner only), so links survive a restart.
pub(crate) fn dev_unsubscribe_key(data: &Path) -> Result<secrecy::SecretString, Failure> {
    let path = data.join("unsubscribe.key");
    match std::fs::read_to_string(&path) {
        Ok(k) if k.trim().len() >= 32 => return Ok(k.trim().to_owned().into()),
        _ => {}
    }
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(key.as_bytes())
    };
    write().map_err(|e| Failure::Invalid(format!("writing {}: {e}", path.display())))?;
    Ok(key.into())
}

pub(crate) fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".into());
    format!("{host}-{}", std::process::id())
}

/// Serves the HTTP API and runs the engine until SIGINT or SIGTERM, then
/// shuts down gracefully: stop taking requests, passivate every actor.
pub(crate) async fn serve_node<S: Store>(
    store: S,
    config: Config,
    cluster: Option<sojourn_actors::Cluster>,
    listen: &str,
    auth: AuthMode,
) -> Result<(), Failure> {
    let addr: SocketAddr = listen.parse().map_err(|_| {
        Failure::Invalid(format!(
            "--listen {listen:?}: not an address like 127.0.0.1:8080"
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot listen on {addr}: {e}")))?;
    let engine = std::sync::Arc::new(
        match cluster {
            Some(c) => Engine::start_in_cluster(store, config, c).await,
            None => Engine::start(store, config).await,
        }
        .context("starting the engine")?,
    );
    let api = sojourn_api::build(AppState::new(engine.clone(), auth));
    info!(%addr, routes = api.routes.len(), "listening");
    eprintln!("sojourn node on http://{addr} — Ctrl-C to stop");
    if auth == AuthMode::Optional {
        eprintln!("dev mode: requests without an API key act as an admin of namespace \"default\"");
    }
    let server = tokio::spawn(async move {
        axum::serve(listener, api.router)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    shutdown_signal().await;
    eprintln!("stopping: passivating executions…");
    engine.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// What `sojourn run` starts.
#[derive(Debug)]
pub(crate) struct RunPlan {
    pub(crate) workflow: Workflow,
    pub(crate) input: serde_json::Value,
    pub(crate) count: usize,
    pub(crate) key: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) timeout: Option<Duration>,
}

/// Deploys the workflow, starts the executions (idempotently when a key
/// prefix is given) and runs the node until all of them have finished.
/// Returns whether they all completed.
pub(crate) async fn run_executions<S: Store + Clone>(
    store: S,
    config: Config,
    plan: RunPlan,
) -> Result<bool, Failure> {
    // It starts what it was asked to and waits for it all: a start past
    // `max_resident_starts` waits for a place as long as it takes.
    let config = Config {
        start_wait: plan.timeout.unwrap_or(Duration::from_secs(24 * 3600)),
        ..config
    };
    let engine = Engine::start(store, config)
        .await
        .context("starting the engine")?;
    let result = run_inner(&engine, plan).await;
    engine.shutdown().await;
    result
}

async fn run_inner<S: Store>(engine: &Engine<S>, plan: RunPlan) -> Result<bool, Failure> {
    let (workflow_id, version) = engine
        .deploy(&plan.workflow)
        .await
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    eprintln!("workflow {workflow_id} version {version}");
    let mut ids: Vec<ExecutionId> = Vec::with_capacity(plan.count);
    for i in 0..plan.count {
        let created = engine
            .start_execution(StartRequest {
                workflow: workflow_id.clone(),
                version: Some(version),
                input: plan.input.clone(),
                subject: plan.subject.clone(),
                timezone: None,
                namespace: None,
                idempotency_key: plan.key.as_ref().map(|k| format!("{k}-{i}")),
            })
            .await
            .map_err(|e| match e {
                sojourn_actors::Error::Start(e) => Failure::Invalid(e.to_string()),
                other => Failure::Runtime(other.into()),
            })?;
        ids.push(created.id);
    }
    if plan.count == 1 {
        eprintln!("execution {}", ids[0]);
    } else {
        eprintln!("{} executions started", ids.len());
    }
    let deadline = plan.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut pending: Vec<ExecutionId> = ids.clone();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let mut still = Vec::with_capacity(pending.len());
        for id in pending {
            let done = engine
                .execution(&id)
                .await
                .context("reading an execution")?
                .is_some_and(|r| r.status.is_terminal());
            if !done {
                still.push(id);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() > d) {
            bail_runtime(format!(
                "{} execution(s) still running at the timeout",
                pending.len()
            ))?;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = &mut stop => {
                eprintln!("interrupted: {} execution(s) carry on at the next start of the node", pending.len());
                return Ok(false);
            }
        }
    }
    let mut all_completed = true;
    for id in &ids {
        let Some(rec) = engine.execution(id).await.context("reading an execution")? else {
            continue;
        };
        if rec.status != Status::Completed {
            all_completed = false;
        }
        if ids.len() == 1 {
            let journal = engine
                .store()
                .journal(id, 0, 10_000)
                .await
                .context("reading the journal")?;
            for row in journal {
                println!(
                    "{}  {}",
                    row.entry.at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    row.entry.event
                );
            }
        }
    }
    let summary = summarize(engine, &ids).await?;
    println!("{summary}");
    Ok(all_completed)
}

fn bail_runtime(message: String) -> Result<(), Failure> {
    Err(Failure::Runtime(anyhow::anyhow!(message)))
}

async fn summarize<S: Store>(engine: &Engine<S>, ids: &[ExecutionId]) -> Result<String, Failure> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for id in ids {
        if let Some(rec) = engine.execution(id).await.context("reading an execution")? {
            *counts.entry(rec.status.to_string()).or_default() += 1;
        }
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    Ok(format!("= {}", parts.join(", ")))
}

/// Opens the store the arguments name (and applies migrations).
pub(crate) enum AnyStore {
    Pg(PgStore),
    Sqlite(SqliteStore),
}

pub(crate) async fn open_store(args: &StoreArgs) -> Result<AnyStore, Failure> {
    match &args.database_url {
        Some(url) => Ok(AnyStore::Pg(
            PgStore::connect(url, None, 16)
                .await
                .context("connecting to PostgreSQL")?,
        )),
        None => {
            let path = open_sqlite_path(&args.data)?;
            Ok(AnyStore::Sqlite(
                SqliteStore::open(&path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?,
            ))
        }
    }
}
