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
pub mod ids;
mod postgres;
mod rows;
mod sqlite;
mod store;
mod types;

pub use error::Error;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use store::Store;
pub use types::*;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
