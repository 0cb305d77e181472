//! `sojourn`: the binary. Offline commands for now — `schema`, `validate`,
//! `simulate` — on top of the runtime crate; the server commands (`dev`,
//! `serve`, …) arrive with the durable core.
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

/// A failure with the exit code it deserves.
#[derive(Debug)]
enum Failure {
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SOJOURN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
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
