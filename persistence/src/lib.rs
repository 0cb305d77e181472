//! # sojourn-persistence
//!
//! Every SQL statement of Sojourn lives here, behind one trait per area of
//! the schema, gathered in [`Store`], with two implementations: [`PgStore`]
//! (PostgreSQL, production) and [`SqliteStore`] (one file, the embedded
//! `sojourn dev` default). One conformance suite (`tests/conformance.rs`)
//! runs every behaviour against both.
//!
//! The heart is [`ExecutionStore::commit`]: a batch of transitions from the
//! runtime ([`sojourn_runtime::Transition`]) written in one database
//! transaction — snapshot, journal, node executions, outbox, timers and
//! subscriptions together or not at all (DESIGN invariant 2) — with every
//! execution's write fenced by its lease epoch (invariant 1). A fenced-out
//! execution does not take the others in the batch down: it is told, alone,
//! that it lost its lease.
//!
//! This crate knows nothing of actors or leases in Redis; it only stores
//! and fences.
//!
//! ## Layout: one module per area, both databases side by side
//!
//! | module | trait | tables |
//! |---|---|---|
//! | `workflows/` | [`WorkflowStore`] | `workflows`, `workflow_versions` |
//! | `executions/` | [`ExecutionStore`] | `executions`, `journal`, `node_executions`, `subscriptions` |
//! | `timers/` | [`TimerStore`] | `timers` (and the claims on `outbox` rows) |
//! | `outbox/` | [`OutboxStore`] | `outbox`, `inbox`, attempts in `node_executions` |
//! | `triggers/` | [`TriggerStore`] | `triggers` |
//! | `keys/` | [`KeyStore`] | `api_keys` |
//! | `registry/` | [`RegistryStore`] | `registry_entries`, `registry_versions` |
//! | `analytics/` | [`AnalyticsStore`] | `analytics_daily`, `analytics_cursors`, `workflow_goals`, `conversions`, `retention_policies`, `retention_cursors` |
//!
//! An area's `mod.rs` holds its trait and implements it once for every
//! [`SqlStore<DB>`] (`PgStore` is `SqlStore<Postgres>`, `SqliteStore` is
//! `SqlStore<Sqlite>`): one SQL text, `$1…` binds on both databases, rows
//! read by `#[derive(sqlx::FromRow)]` through the column types of `sql.rs`
//! (instants, JSON documents and arrays are stored differently by the two
//! schemas). Where the dialects part ways for speed or correctness —
//! `UNNEST` batches and advisory locks in the group commit, `FOR UPDATE
//! SKIP LOCKED` claims — the area declares a small trait (e.g.
//! `ExecutionSql`) implemented for `Postgres` in its `postgres.rs` and for
//! `Sqlite` in its `sqlite.rs`. The top-level `postgres.rs` and `sqlite.rs`
//! only connect and migrate.
//!
//! ## What a new table costs
//!
//! 1. A migration in each of `migrations/postgres/` and `migrations/sqlite/`
//!    (append-only: a new numbered file, never an edit).
//! 2. Its records in `types.rs`, deriving `sqlx::FromRow` (a column stored
//!    differently by the two schemas reads through a type of `sql.rs`:
//!    `#[sqlx(try_from = "Instant")]`, `#[sqlx(json)]`, …).
//! 3. A new area `src/<area>/mod.rs`: its trait and one
//!    `impl<DB> …Store for SqlStore<DB>` whose `where` clause lists what its
//!    statements bind and read; re-export the trait here and add it to
//!    [`Store`] (its supertraits and blanket impl) and [`prelude`].
//!    `<area>/postgres.rs` and `<area>/sqlite.rs` only if a statement must
//!    differ.
//! 4. Its behaviours in `tests/conformance.rs`, which runs each on both
//!    databases. (A test double that wraps a store, like the supervision
//!    test's, implements the new trait too.)
//!
//! A table that joins an existing area (the way `inbox` sits with the
//! outbox) is steps 1, 2 and 4 and methods in that area's module.

mod analytics;
mod audience;
mod deliveries;
mod error;
mod executions;
pub mod ids;
mod keys;
mod outbox;
mod postgres;
mod registry;
mod segments;
mod sql;
mod sqlite;
mod store;
mod timers;
mod triggers;
mod types;
mod workflows;

pub use analytics::{
    AnalyticsRow, AnalyticsStore, DeliveryTotal, FailingNode, RetentionPolicy, RollupKey, Swept,
    delivery_delta, delivery_metrics, rollup_key,
};
pub use audience::{
    Addresses, AudienceFacts, AudienceStore, CapRequest, CapScope, CapVerdict, Erased,
    FrequencyCap, OnCap, Preferences, Profile, ProfilePatch, ProfileRecord, Suppression,
    addresses_of, normalize_address,
};
pub use deliveries::DeliveryStore;
pub use error::Error;
pub use executions::ExecutionStore;
pub use keys::KeyStore;
pub use outbox::OutboxStore;
pub use postgres::PgStore;
pub use registry::RegistryStore;
/// Most subjects of a static segment.
pub fn segments_max_static() -> usize {
    segments::MAX_STATIC
}
pub use segments::{
    Backfilled, SegmentChange, SegmentCursor, SegmentDef, SegmentRecord, SegmentStore,
};
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
        AnalyticsStore, AudienceStore, DeliveryStore, ExecutionStore, KeyStore, OutboxStore,
        RegistryStore, SegmentStore, Store, TimerStore, TriggerStore, WorkflowStore,
    };
}
