//! # sojourn-actors
//!
//! The live half of Sojourn: one supervised ractor actor per *active*
//! execution, and the services around them.
//!
//! - [`Engine`]: wires everything and is what the binary (and tests) use:
//!   deploy a workflow, start executions, send events, shut down.
//! - `execution`: the execution actor. Its loop: receive an input →
//!   [`sojourn_runtime::CompiledWorkflow::step`] → commit the transition →
//!   only then act on its effects. It never awaits a provider.
//! - `supervisor`: spawns, routes to, passivates and restarts execution
//!   actors; a panicking execution is restarted from its last snapshot with
//!   backoff and, if it keeps panicking, marked failed.
//! - `committer`: group commit — transitions of many executions share one
//!   database transaction, each fenced by its own lease epoch.
//! - `timers`: claims durable timers a little ahead of their due time and
//!   fires them, with bounded, rate-limited catch-up.
//! - `outbox`: hands committed actions to workers (`providers`), which
//!   record each attempt before sending and its result after.
//!
//! Every input reaches an execution durably: timers are rows, action
//! results and events go through the execution's inbox, so a message lost
//! with a stopping actor is found again on its next activation.

mod activator;
pub mod analytics;
pub mod audience;
mod batch;
pub mod bus;
pub mod channels;
mod committer;
mod config;
pub mod egress;
mod engine;
mod error;
mod events;
mod execution;
mod finished;
mod membership;
pub mod metrics;
mod outbox;
pub mod providers;
mod recovery;
pub mod registry;
mod results;
pub mod retention;
mod router;
pub mod schedules;
pub mod segments;
mod starter;
mod stats;
mod supervisor;
mod timers;
mod trace;
pub mod workers;
mod workflows;

pub use config::{Config, Secrets};
pub use engine::{Engine, MAX_WAIT, StartRequest, Started};
pub use error::Error;
pub use router::{DELIVER_PATH, Forwarded, SECRET_HEADER};
pub use sojourn_cluster::{Cluster, NodeInfo};
pub use stats::{Stats, StatsSnapshot};
