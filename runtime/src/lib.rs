//! # sojourn-runtime
//!
//! The workflow model and the pure interpreter of Sojourn. Nothing here does
//! I/O, reads a clock or draws randomness it is not handed: the durable
//! layers above (persistence, actors) call [`CompiledWorkflow::step`] and
//! act on the [`Effect`]s it returns after they have committed them.
//!
//! A tour, in the order things happen:
//! - [`model`]: the JSON workflow document ([`Workflow`], [`Node`], [`Edge`],
//!   [`Settings`]); one config type per node type in [`nodes`].
//! - [`Workflow::from_json`] parses it, reporting bad nodes by id and field;
//!   [`CompiledWorkflow::compile`] (or [`validate`]) checks it: graph shape,
//!   cycles that never wait, unknown actions ([`Registry`]), expressions
//!   ([`expr`], CEL), templates ([`template`], minijinja), durations, time
//!   zones and cron strings ([`time`]).
//! - [`CompiledWorkflow::new_execution`] makes a [`Snapshot`];
//!   [`CompiledWorkflow::step`] applies an [`Input`] and returns a
//!   [`Transition`]: the new snapshot, [`JournalEntry`]s and [`Effect`]s.
//! - [`simulate`] runs a workflow on a virtual clock: the preview button.
//! - [`schema`] is the JSON Schema of the document.
//! - [`caps`]: frequency caps, their checks (the API's and a workflow's)
//!   and how a workflow's own caps replace its namespace's.

pub mod caps;
pub mod compile;
pub mod error;
pub mod expr;
pub mod hash;
pub mod ids;
mod interpreter;
pub mod io;
pub mod journal;
pub mod json;
pub mod model;
pub mod nodes;
pub mod registry;
pub mod schedule;
pub mod schema;
pub mod secrets;
pub mod simulate;
pub mod snapshot;
pub mod template;
pub mod time;
pub mod triggers;

pub use compile::{CompiledWorkflow, validate};
pub use error::{Error, ValidationError};
pub use ids::{ExecutionId, NodeId, SubscriptionId, TimerId};
pub use interpreter::{HOLDOUT_OUTCOME, MAX_NODES_PER_STEP, check as check_input};
pub use io::{ActionOutcome, Dispatch, Effect, EventInput, Input, Transition};
pub use journal::{JournalEntry, JournalEvent};
pub use model::{
    Edge, ExitCriterion, Goal, Holdout, Node, NodeKind, QuietHours, Settings, Workflow,
};
pub use registry::{ActionSpec, Channel, Definition, Kind, Registry, Run};
pub use snapshot::{ExecutionError, Pause, SNAPSHOT_FORMAT, Snapshot, Status, Wait};
