//! `sojourn`: the binary. Node commands (`dev`, `serve`, `migrate`, `run`,
//! `bench`) wire the persistence and actor crates; offline commands
//! (`schema`, `validate`, `simulate`) use the runtime alone.
//!
//! Exit codes (the interface contract): 0 success, 1 runtime failure,
//! 2 bad usage or invalid input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use sojourn_runtime::simulate::{Limits, Script, new_simulated_execution, simulate};
use sojourn_runtime::{CompiledWorkflow, Registry, Workflow};

mod bench;
mod client;
mod http_bench;
mod journey_bench;
mod node;
mod settings;
mod telemetry;

/// mimalloc rather than glibc's malloc: under load a third of the node's CPU
/// went to glibc's allocator and its arena locks (perf, `sojourn bench`), and
/// glibc keeps freed memory that a burst of activations used. Built without
/// transparent huge pages (`no_thp`): mimalloc v3 asks the kernel for them on
/// its arenas, which cost ~50 MiB of peak RSS at 2,000 journeys in flight
/// (`sojourn bench --http --spawn serve`: 139–169 MiB with, 96 without).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "sojourn",
    version,
    about = "A durable, actor-based execution runtime for long-running journeys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node on the embedded SQLite store (no other service needed).
    Dev {
        /// Where the API listens (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// Where the embedded store lives.
        #[arg(long, default_value = "./sojourn-data")]
        data: PathBuf,
        /// A TOML settings file (see `sojourn config`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a cluster node on PostgreSQL.
    Serve {
        /// Where the API listens (beats SOJOURN_LISTEN and the file).
        #[arg(long)]
        listen: Option<String>,
        /// A TOML settings file (see `sojourn config`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run channel workers alone: they send the channel messages
    /// (email, sms, push, chat) published on Kafka, for operators who scale
    /// sending apart from the nodes. Needs SOJOURN_DATABASE_URL and
    /// SOJOURN_KAFKA_BROKERS.
    Worker {
        /// The channels to send, comma-separated (default: all four).
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
        /// A TOML settings file (see `sojourn config`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the effective settings of `serve` (or `dev`), each with where
    /// it came from; secrets redacted.
    Config {
        /// A TOML settings file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The settings of `sojourn dev` instead.
        #[arg(long)]
        dev: bool,
        /// As `sojourn serve --listen`.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        store: node::StoreArgs,
    },
    /// Load a workflow, start executions of it, and run a node until they
    /// have all finished (prints the journal of a single execution).
    Run {
        /// The workflow JSON file (it needs a `key`).
        file: PathBuf,
        /// The input (a JSON object); defaults to `{}`.
        #[arg(long)]
        input: Option<PathBuf>,
        /// How many executions to start.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Idempotency key prefix: execution i gets `KEY-i`, so running the
        /// same command again resumes instead of starting new ones.
        #[arg(long)]
        key: Option<String>,
        /// The subject of the executions.
        #[arg(long)]
        subject: Option<String>,
        /// Give up (exit 1) after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        #[command(flatten)]
        store: node::StoreArgs,
    },
    /// Benchmark the reference journey on an in-process node.
    Bench(bench::BenchArgs),
    /// Create or update a workflow from a file and publish it (client).
    Apply {
        /// The workflow JSON file (it needs a `key`).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Save the draft without publishing it.
        #[arg(long)]
        no_publish: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Start an execution of a workflow (client).
    Start {
        /// The workflow's key or id.
        workflow: String,
        /// The input: a JSON file, or - for standard input.
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long)]
        subject: Option<String>,
        /// A published version (default: the latest).
        #[arg(long)]
        version: Option<i32>,
        /// The same key returns the same execution instead of a second one.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait for the execution to finish (at most DURATION: `500ms`,
        /// `30s`, `1m`; alone, the longest the server allows, 60s) and print
        /// it as `inspect` does. Exits 0 when it completed, 1 when it failed,
        /// was cancelled or had not finished in time.
        #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "60s")]
        wait: Option<String>,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// List executions (client).
    Executions {
        #[command(subcommand)]
        command: ExecutionsCommand,
    },
    /// The delivery log: each send of a channel message to a provider
    /// (client).
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Analytics of a workflow (client).
    Analytics {
        #[command(subcommand)]
        command: AnalyticsCommand,
    },
    /// The registry's trigger and action definitions (client).
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// The audience's profiles (client).
    Profiles {
        #[command(subcommand)]
        command: ProfilesCommand,
    },
    /// Show an execution: status, node, variables, lease holder, journal
    /// (client).
    Inspect {
        execution: String,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Send events (client).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Pause an execution (client).
    Pause {
        execution: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Resume a paused execution (client).
    Resume {
        execution: String,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Cancel an execution (client).
    Cancel {
        execution: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Retry a paused or failed execution from the node that failed (client).
    Retry {
        execution: String,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// The cluster: live nodes, drain a node (client).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Manage API keys, directly in the database (works before any key
    /// exists).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print the JSON Schema of a workflow document.
    Schema,
    /// Check a workflow document; print every problem, one a line.
    Validate {
        /// The workflow JSON file.
        file: PathBuf,
        /// Print the problems as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Run a workflow on a virtual clock and print its timeline.
    Simulate(SimulateArgs),
}

#[derive(Debug, Subcommand)]
enum ExecutionsCommand {
    /// List executions, newest first.
    #[command(alias = "list")]
    Ls {
        /// A workflow key or id.
        #[arg(long)]
        workflow: Option<String>,
        /// pending, running, waiting, paused, completed, failed, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// The correlation key (subject).
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// The cursor printed after the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        conn: client::Conn,
    },
}

#[derive(Debug, Subcommand)]
enum ProfilesCommand {
    /// Import profiles from a CSV file (a `subject` column; email, phone,
    /// chat, timezone, locale; any other column an attribute) or JSON lines
    /// (each a profile with its `subject`), with a progress bar.
    Import {
        file: PathBuf,
        /// Replace each profile rather than merge into it.
        #[arg(long)]
        replace: bool,
        /// Profiles per request (1 to 1000).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[command(flatten)]
        conn: client::Conn,
    },
}

#[derive(Debug, Subcommand)]
enum DeliveriesCommand {
    /// List deliveries, newest first (recipients masked).
    #[command(alias = "list")]
    Ls {
        /// Only this execution's.
        #[arg(long)]
        execution: Option<String>,
        /// A workflow key or id.
        #[arg(long)]
        workflow: Option<String>,
        /// email, sms, push or chat.
        #[arg(long)]
        channel: Option<String>,
        /// A provider's configured name.
        #[arg(long)]
        provider: Option<String>,
        /// queued, sent, failed, delivered, bounced, complained, opened,
        /// clicked, undelivered.
        #[arg(long)]
        status: Option<String>,
        /// Sent at or after (RFC 3339).
        #[arg(long)]
        after: Option<String>,
        /// Sent before (RFC 3339).
        #[arg(long)]
        before: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// The cursor printed after the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        conn: client::Conn,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Send an event to every execution waiting for it with this key.
    Send {
        /// The event's name.
        name: String,
        /// The correlation key (e.g. a user id).
        #[arg(long)]
        key: String,
        /// The payload: JSON text, or @FILE.
        #[arg(long)]
        payload: Option<String>,
        #[command(flatten)]
        conn: client::Conn,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The live nodes, the actors each holds, and when each was last seen.
    Status {
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Ask a node to passivate its executions and release their leases.
    Drain {
        node: String,
        /// Drain it even if it is the last node that takes work.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
}

#[derive(Debug, Subcommand)]
enum AnalyticsCommand {
    /// The rolled-up counts as CSV (day, hour in UTC, workflow, version,
    /// node, branch, channel, provider, metric, value), to standard output
    /// or a file.
    Export {
        /// The workflow's key or id.
        workflow: String,
        /// The first day (YYYY-MM-DD, UTC); 29 days before --to by default.
        #[arg(long)]
        from: Option<String>,
        /// The last day (YYYY-MM-DD, UTC); today by default.
        #[arg(long)]
        to: Option<String>,
        /// One published version (all by default).
        #[arg(long)]
        version: Option<i32>,
        /// Write to this file instead of standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        #[command(flatten)]
        conn: client::Conn,
    },
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// List the definitions, built-in ones first.
    Ls {
        /// Only `action` or `trigger` definitions.
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Show a definition (a version: `--version N`), with its versions.
    Get {
        name: String,
        #[arg(long)]
        version: Option<i32>,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Create or edit a definition from a JSON file (`-`: standard input);
    /// an edit makes a new version.
    Apply {
        name: String,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Enable a definition.
    Enable {
        name: String,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Disable a definition: new versions that use it are refused, and
    /// executions that reach it pause until it is enabled and retried.
    Disable {
        name: String,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Delete a definition (published versions keep the one they pinned).
    Rm {
        name: String,
        #[command(flatten)]
        conn: client::Conn,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create an API key and print its secret (shown once).
    Create {
        /// The namespace (tenant) the key belongs to.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Comma-separated: read, write, admin.
        #[arg(long, default_value = "write")]
        scopes: String,
        #[arg(long)]
        name: Option<String>,
        /// Print the key as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: node::StoreArgs,
    },
}

/// A failure with the exit code it deserves.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad usage or invalid input: exit 2.
    Invalid(String),
    /// Anything else: exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `dev` and `serve` set up logging (and tracing) once their settings
    // are read.
    if !matches!(
        cli.command,
        Command::Dev { .. } | Command::Serve { .. } | Command::Worker { .. }
    ) {
        telemetry::logging();
    }
    let result = match cli.command {
        Command::Dev {
            listen,
            data,
            config,
        } => block_on(dev(listen, data, config)),
        Command::Serve { listen, config } => block_on(serve(listen, config)),
        Command::Worker { channels, config } => block_on(worker(channels, config)),
        Command::Config {
            config,
            dev,
            listen,
        } => print_settings(config, dev, listen),
        Command::Migrate { store } => block_on(migrate(store)),
        Command::Run {
            file,
            input,
            count,
            key,
            subject,
            timeout,
            store,
        } => block_on(run(file, input, count, key, subject, timeout, store)),
        Command::Bench(args) => block_on(bench::run(args)),
        Command::Apply {
            file,
            no_publish,
            conn,
        } => with_client(conn, |c| async move {
            client::apply(&c, &file, !no_publish).await
        }),
        Command::Start {
            workflow,
            input,
            subject,
            version,
            idempotency_key,
            wait,
            conn,
        } => with_client(conn, |c| async move {
            client::start(
                &c,
                client::StartArgs {
                    workflow,
                    input,
                    subject,
                    version,
                    idempotency_key,
                    wait,
                },
            )
            .await
        }),
        Command::Executions {
            command:
                ExecutionsCommand::Ls {
                    workflow,
                    status,
                    subject,
                    limit,
                    cursor,
                    conn,
                },
        } => with_client(conn, |c| async move {
            client::list_executions(
                &c,
                client::ListArgs {
                    workflow,
                    status,
                    subject,
                    limit,
                    cursor,
                },
            )
            .await
        }),
        Command::Deliveries {
            command:
                DeliveriesCommand::Ls {
                    execution,
                    workflow,
                    channel,
                    provider,
                    status,
                    after,
                    before,
                    limit,
                    cursor,
                    conn,
                },
        } => with_client(conn, |c| async move {
            client::list_deliveries(
                &c,
                vec![
                    ("execution", execution),
                    ("workflow", workflow),
                    ("channel", channel),
                    ("provider", provider),
                    ("status", status),
                    ("after", after),
                    ("before", before),
                    ("limit", limit.map(|l| l.to_string())),
                    ("cursor", cursor),
                ],
            )
            .await
        }),
        Command::Analytics {
            command:
                AnalyticsCommand::Export {
                    workflow,
                    from,
                    to,
                    version,
                    output,
                    conn,
                },
        } => with_client(conn, |c| async move {
            client::export_analytics(
                &c,
                &workflow,
                vec![
                    ("from", from),
                    ("to", to),
                    ("version", version.map(|v| v.to_string())),
                ],
                output.as_deref(),
            )
            .await
        }),
        Command::Registry { command } => match command {
            RegistryCommand::Ls { kind, conn } => {
                with_client(
                    conn,
                    |c| async move { client::registry_list(&c, kind).await },
                )
            }
            RegistryCommand::Get {
                name,
                version,
                conn,
            } => with_client(conn, |c| async move {
                client::registry_get(&c, &name, version).await
            }),
            RegistryCommand::Apply { name, file, conn } => with_client(conn, |c| async move {
                client::registry_apply(&c, &name, &file).await
            }),
            RegistryCommand::Enable { name, conn } => with_client(conn, |c| async move {
                client::registry_switch(&c, &name, "enable").await
            }),
            RegistryCommand::Disable { name, conn } => with_client(conn, |c| async move {
                client::registry_switch(&c, &name, "disable").await
            }),
            RegistryCommand::Rm { name, conn } => {
                with_client(
                    conn,
                    |c| async move { client::registry_delete(&c, &name).await },
                )
            }
        },
        Command::Profiles {
            command:
                ProfilesCommand::Import {
                    file,
                    replace,
                    batch,
                    conn,
                },
        } => with_client(conn, |c| async move {
            client::import_profiles(&c, &file, replace, batch).await
        }),
        Command::Inspect { execution, conn } => {
            with_client(
                conn,
                |c| async move { client::inspect(&c, &execution).await },
            )
        }
        Command::Events {
            command:
                EventsCommand::Send {
                    name,
                    key,
                    payload,
                    conn,
                },
        } => with_client(conn, |c| async move {
            client::send_event(&c, &name, &key, payload.as_deref()).await
        }),
        Command::Pause {
            execution,
            reason,
            conn,
        } => with_client(conn, |c| async move {
            client::control(&c, "pause", &execution, reason).await
        }),
        Command::Resume { execution, conn } => with_client(conn, |c| async move {
            client::control(&c, "resume", &execution, None).await
        }),
        Command::Cancel {
            execution,
            reason,
            conn,
        } => with_client(conn, |c| async move {
            client::control(&c, "cancel", &execution, reason).await
        }),
        Command::Retry { execution, conn } => with_client(conn, |c| async move {
            client::control(&c, "retry", &execution, None).await
        }),
        Command::Cluster {
            command: ClusterCommand::Status { conn },
        } => with_client(conn, |c| async move { client::cluster_status(&c).await }),
        Command::Cluster {
            command: ClusterCommand::Drain { node, force, conn },
        } => with_client(conn, |c| async move {
            client::cluster_drain(&c, &node, force).await
        }),
        Command::Keys {
            command:
                KeysCommand::Create {
                    namespace,
                    scopes,
                    name,
                    json,
                    store,
                },
        } => block_on(create_key(namespace, scopes, name, json, store)),
        Command::Schema => schema(),
        Command::Validate { file, json } => validate(&file, json),
        Command::Simulate(args) => run_simulation(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(message)) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn with_client<F, Fut>(conn: client::Conn, f: F) -> Result<(), Failure>
where
    F: FnOnce(client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let c = client::Client::new(conn)?;
    block_on(f(c))
}

async fn create_key(
    namespace: String,
    scopes: String,
    name: Option<String>,
    json: bool,
    store: node::StoreArgs,
) -> Result<(), Failure> {
    let scopes: Vec<String> = scopes
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if namespace.is_empty() {
        return Err(Failure::Invalid("--namespace must not be empty".into()));
    }
    let made = match node::open_store(&store).await? {
        node::AnyStore::Pg(s) => sojourn_api::create_key(&s, &namespace, name, &scopes).await,
        node::AnyStore::Sqlite(s) => sojourn_api::create_key(&s, &namespace, name, &scopes).await,
    };
    let key = made.map_err(|e| {
        if e.status.is_client_error() {
            Failure::Invalid(format!("--{}", e.message))
        } else {
            Failure::Runtime(anyhow::anyhow!(e.message))
        }
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&key).context("printing")?
        );
    } else {
        println!("{}", key.secret.as_deref().unwrap_or(""));
        eprintln!(
            "key {} in namespace {} with scopes {} (the secret above is shown once)",
            key.id,
            key.namespace,
            key.scopes.join(",")
        );
    }
    Ok(())
}

fn block_on<F: std::future::Future<Output = Result<(), Failure>>>(f: F) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(f)
}

fn print_settings(file: Option<PathBuf>, dev: bool, listen: Option<String>) -> Result<(), Failure> {
    let mode = if dev {
        settings::Mode::Dev
    } else {
        settings::Mode::Serve
    };
    let loaded = settings::load(mode, file.as_deref(), &settings::Flags { listen })?;
    print!("{}", loaded.render()?);
    Ok(())
}

async fn dev(listen: Option<String>, data: PathBuf, file: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = settings::load(
        settings::Mode::Dev,
        file.as_deref(),
        &settings::Flags { listen },
    )?;
    let s = loaded.settings;
    let telemetry = telemetry::init(&s.tracing)?;
    let path = node::open_sqlite_path(&data)?;
    let store = sojourn_persistence::SqliteStore::open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    eprintln!("embedded store: {}", path.display());
    let mut config = s.engine_config("dev".into(), format!("http://{}", s.listen));
    if config.audience.unsubscribe_key.is_none() {
        config.audience.unsubscribe_key = Some(node::dev_unsubscribe_key(&data)?);
    }
    let served = node::serve_node(
        store,
        config,
        None,
        &s.listen,
        sojourn_api::AuthMode::Optional,
    )
    .await;
    telemetry.shutdown().await;
    served
}

/// What a process of a cluster (`serve`, `worker`) starts from: its
/// settings, its tracing, and the PostgreSQL URL it requires.
fn cluster_process(
    file: Option<PathBuf>,
    listen: Option<String>,
) -> Result<
    (
        settings::Settings,
        telemetry::Telemetry,
        settings::SecretUrl,
    ),
    Failure,
> {
    let loaded = settings::load(
        settings::Mode::Serve,
        file.as_deref(),
        &settings::Flags { listen },
    )?;
    let s = loaded.settings;
    let telemetry = telemetry::init(&s.tracing)?;
    let url = s.database_url.clone().ok_or_else(|| {
        Failure::Invalid("SOJOURN_DATABASE_URL (or database_url in --config) is required".into())
    })?;
    Ok((s, telemetry, url))
}

async fn serve(listen: Option<String>, file: Option<PathBuf>) -> Result<(), Failure> {
    let (s, telemetry, url) = cluster_process(file, listen)?;
    let node_id = s.node_id.clone().unwrap_or_else(node::default_node_id);
    if s.kafka.brokers.is_empty() {
        eprintln!(
            "note: no Kafka (kafka.brokers, SOJOURN_KAFKA_BROKERS): channel messages, kafka.publish and event triggers go through an in-process queue on this node alone"
        );
    }
    let advertise = s
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", s.listen));
    if advertise.contains("0.0.0.0") || advertise.contains("[::]") {
        eprintln!(
            "note: other nodes reach this one at {advertise}; set SOJOURN_ADVERTISE_URL to an address they can use"
        );
    }
    let mut config = s.engine_config(node_id.clone(), advertise);
    config.kafka_brokers = s.kafka.brokers.clone();
    config.kafka_topic_partitions = s.kafka.topic_partitions;
    let cluster = match &s.redis_url {
        Some(u) => Some(
            sojourn_actors::Cluster::redis(u.expose(), node_id, config.lease_ttl)
                .map_err(|e| Failure::Invalid(format!("setting \"redis_url\" ({u}): {e}")))?,
        ),
        None => {
            eprintln!(
                "note: no SOJOURN_REDIS_URL: this node runs alone (in-process leases); run only one"
            );
            None
        }
    };
    let store = sojourn_persistence::PgStore::connect(url.expose(), None, s.database_pool_size)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    let served = node::serve_node(
        store,
        config,
        cluster,
        &s.listen,
        sojourn_api::AuthMode::Required,
    )
    .await;
    telemetry.shutdown().await;
    served
}

async fn worker(channels: Vec<String>, file: Option<PathBuf>) -> Result<(), Failure> {
    let (s, telemetry, url) = cluster_process(file, None)?;
    if s.kafka.brokers.is_empty() {
        return Err(Failure::Invalid(
            "SOJOURN_KAFKA_BROKERS (or kafka.brokers in --config) is required: workers apart from the nodes take their messages from Kafka".into(),
        ));
    }
    let node_id = s.node_id.clone().unwrap_or_else(node::default_node_id);
    let mut config = s.engine_config(node_id, String::new());
    config.kafka_brokers = s.kafka.brokers.clone();
    config.kafka_topic_partitions = s.kafka.topic_partitions;
    if !channels.is_empty() {
        config.worker_channels = channels;
    }
    let store = sojourn_persistence::PgStore::connect(url.expose(), None, s.database_pool_size)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        node::shutdown_signal().await;
        eprintln!("stopping: finishing the sends in flight…");
        stop.cancel();
    });
    eprintln!(
        "sojourn worker: sending {} from Kafka at {}",
        config.worker_channels.join(", "),
        config.kafka_brokers.join(",")
    );
    // With Redis, the providers' rate limits are the cluster's.
    let cluster = match &s.redis_url {
        Some(u) => Some(std::sync::Arc::new(
            sojourn_actors::Cluster::redis(u.expose(), config.node_id.clone(), config.lease_ttl)
                .map_err(|e| Failure::Invalid(format!("setting \"redis_url\" ({u}): {e}")))?,
        )),
        None => None,
    };
    let ran = sojourn_actors::workers::run_alone(store, &config, cluster, shutdown)
        .await
        .map_err(|e| match e {
            sojourn_actors::Error::Validation(m) => Failure::Invalid(m),
            other => Failure::Runtime(anyhow::anyhow!(other)),
        });
    telemetry.shutdown().await;
    ran
}

async fn migrate(args: node::StoreArgs) -> Result<(), Failure> {
    match node::open_store(&args).await? {
        node::AnyStore::Pg(_) => eprintln!("PostgreSQL: migrations applied"),
        node::AnyStore::Sqlite(_) => eprintln!(
            "{}: migrations applied",
            args.data.join("sojourn.db").display()
        ),
    }
    Ok(())
}

async fn run(
    file: PathBuf,
    input: Option<PathBuf>,
    count: usize,
    key: Option<String>,
    subject: Option<String>,
    timeout: Option<u64>,
    store: node::StoreArgs,
) -> Result<(), Failure> {
    let text = read(&file)?;
    let workflow = Workflow::from_json(&text).map_err(|errors| {
        Failure::Invalid(
            errors
                .iter()
                .map(|e| format!("{}: {e}", file.display()))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let input = match &input {
        Some(path) => serde_json::from_str(&read(path)?)
            .map_err(|e| Failure::Invalid(format!("{}: not valid JSON: {e}", path.display())))?,
        None => serde_json::json!({}),
    };
    if count == 0 {
        return Err(Failure::Invalid("--count must be at least 1".into()));
    }
    let plan = node::RunPlan {
        workflow,
        input,
        count,
        key,
        subject,
        timeout: timeout.map(std::time::Duration::from_secs),
    };
    // A local tool run by the operator on their own workflow: the engine
    // settings of `sojourn dev` (loopback destinations allowed), with the
    // `SOJOURN_ENGINE__*` variables applied.
    let loaded = settings::load(settings::Mode::Dev, None, &settings::Flags::default())?;
    let config = loaded.settings.engine_config("run".into(), String::new());
    let all_completed = match node::open_store(&store).await? {
        node::AnyStore::Pg(s) => node::run_executions(s, config, plan).await?,
        node::AnyStore::Sqlite(s) => node::run_executions(s, config, plan).await?,
    };
    if all_completed {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "not every execution completed"
        )))
    }
}

fn schema() -> Result<(), Failure> {
    let schema = sojourn_runtime::schema::workflow_schema();
    println!(
        "{}",
        serde_json::to_string_pretty(&schema).context("printing the schema")?
    );
    Ok(())
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::Invalid(format!("{}: {e}", path.display())))
}

/// Parses and compiles a workflow file, or says every problem.
fn load_workflow(path: &Path) -> Result<CompiledWorkflow, Vec<String>> {
    let text = read(path).map_err(|e| match e {
        Failure::Invalid(m) => vec![m],
        Failure::Runtime(e) => vec![e.to_string()],
    })?;
    let describe = |errors: Vec<sojourn_runtime::ValidationError>| {
        errors
            .iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect::<Vec<_>>()
    };
    let workflow = Workflow::from_json(&text).map_err(describe)?;
    CompiledWorkflow::compile(&workflow, &Registry::builtin()).map_err(describe)
}

fn validate(path: &Path, json: bool) -> Result<(), Failure> {
    let errors = match std::fs::read_to_string(path) {
        Err(e) => return Err(Failure::Invalid(format!("{}: {e}", path.display()))),
        Ok(text) => match Workflow::from_json(&text) {
            Err(errors) => errors,
            Ok(wf) => match CompiledWorkflow::compile(&wf, &Registry::builtin()) {
                Ok(_) => Vec::new(),
                Err(errors) => errors,
            },
        },
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&errors).context("printing errors")?
        );
    } else if errors.is_empty() {
        println!("{}: ok", path.display());
    } else {
        for e in &errors {
            println!("{}: {e}", path.display());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::Invalid(format!(
            "{}: {} problem(s)",
            path.display(),
            errors.len()
        )))
    }
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// The workflow JSON file.
    file: PathBuf,
    /// The execution's input (a JSON object); defaults to `{}`.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Events and action outcomes: `{"events": [...], "actions": {...}}`.
    #[arg(long)]
    events: Option<PathBuf>,
    /// When the virtual clock starts (RFC 3339); defaults to now.
    #[arg(long)]
    start: Option<DateTime<Utc>>,
    /// The execution's subject key (defaults to the workflow's
    /// `settings.subject` expression).
    #[arg(long)]
    subject: Option<String>,
    /// The execution's IANA time zone (defaults to the workflow's).
    #[arg(long)]
    timezone: Option<String>,
    /// Print the whole simulation as JSON.
    #[arg(long)]
    json: bool,
}

fn run_simulation(args: SimulateArgs) -> Result<(), Failure> {
    let wf = load_workflow(&args.file).map_err(|e| Failure::Invalid(e.join("\n")))?;
    let input = match &args.input {
        Some(path) => serde_json::from_str(&read(path)?)
            .map_err(|e| Failure::Invalid(format!("{}: not valid JSON: {e}", path.display())))?,
        None => serde_json::Value::Null,
    };
    let script = match &args.events {
        Some(path) => Script::from_json(&read(path)?)
            .map_err(|e| Failure::Invalid(format!("{}: {e}", path.display())))?,
        None => Script::default(),
    };
    let start = args.start.unwrap_or_else(Utc::now);
    let snapshot =
        new_simulated_execution(&wf, input, args.subject, args.timezone.as_deref(), start)
            .map_err(|e| Failure::Invalid(e.to_string()))?;
    let sim = simulate(&wf, snapshot, &script, Limits::default()).map_err(|e| {
        Failure::Invalid(match &args.events {
            Some(path) => format!("{}: {e}", path.display()),
            None => e,
        })
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&sim).context("printing the simulation")?
        );
    } else {
        print!("{}", sim.render_text());
    }
    Ok(())
}
