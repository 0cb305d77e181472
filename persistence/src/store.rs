//! The whole store: every area's trait at once, for the layers above that
//! want all of it (`S: Store`). Each area ([`crate::WorkflowStore`],
//! [`crate::ExecutionStore`], [`crate::TimerStore`], [`crate::OutboxStore`],
//! [`crate::TriggerStore`], [`crate::KeyStore`]) is its own trait in its own
//! module; a type that implements them all is a `Store`.

use std::future::Future;

use crate::Result;
use crate::{
    AnalyticsStore, AudienceStore, DeliveryStore, ExecutionStore, KeyStore, OutboxStore,
    RegistryStore, SegmentStore, TimerStore, TriggerStore, WorkflowStore,
};

/// One store: PostgreSQL or SQLite, the same behaviour (the conformance
/// suite holds both to it).
pub trait Store:
    WorkflowStore
    + ExecutionStore
    + TimerStore
    + OutboxStore
    + TriggerStore
    + KeyStore
    + DeliveryStore
    + AudienceStore
    + SegmentStore
    + RegistryStore
    + AnalyticsStore
    + 'static
{
    /// Whether the database answers (readiness): one indexed lookup.
    fn ping(&self) -> impl Future<Output = Result<()>> + Send {
        async move { self.get_workflow("", "").await.map(|_| ()) }
    }
}

impl<S> Store for S where
    S: WorkflowStore
        + ExecutionStore
        + TimerStore
        + OutboxStore
        + TriggerStore
        + KeyStore
        + DeliveryStore
        + AudienceStore
        + SegmentStore
        + RegistryStore
        + AnalyticsStore
        + 'static
{
}
