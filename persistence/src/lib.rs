//! # sojourn-persistence
//!
//! Every SQL statement of Sojourn lives here, behind one [`Store`] trait with
//! two implementations: [`PgStore`] (PostgreSQL, production) and
//! [`SqliteStore`] (one file, the embedded `sojourn dev` default). One
//! conformance suite (`tests/conformance.rs`) runs against both.
//!
//! The heart is [`Store::commit`]: a batch of transitions from the runtime
//! ([`sojourn_runtime::Transition`]) written in one database transaction —
//! snapshot, journal, node executions, outbox, timers and subscriptions
//! together or not at all (DESIGN invariant 2) — with every execution's
//! write fenced by its lease epoch (invariant 1). A fenced-out execution
//! does not take the others in the batch down: it is told, alone, that it
//! lost its lease.
//!
//! This crate knows nothing of actors or leases in Redis; it only stores
//! and fences.

mod error;
mod executions;
pub mod ids;
mod keys;
mod outbox;
mod postgres;
mod sql;
mod sqlite;
mod store;
mod timers;
mod triggers;
mod types;
mod workflows;

pub use error::Error;
pub use executions::ExecutionStore;
pub use keys::KeyStore;
pub use outbox::OutboxStore;
pub use postgres::PgStore;
pub use sql::SqlStore;
pub use sqlite::SqliteStore;
pub use store::Store;
pub use timers::TimerStore;
pub use triggers::TriggerStore;
pub use types::*;
pub use workflows::WorkflowStore;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every store trait, for code that calls a concrete store
/// (`use sojourn_persistence::prelude::*;`).
pub mod prelude {
    pub use crate::{
        ExecutionStore, KeyStore, OutboxStore, Store, TimerStore, TriggerStore, WorkflowStore,
    };
}
