//! Trigger instances (`triggers`): created in state `init`, moved between
//! states, and looked up by path for `api` triggers.

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::Result;
use crate::types::{NewTrigger, TriggerRecord};

/// Trigger instances.
pub trait TriggerStore: Send + Sync {
    /// Creates a trigger instance in state `init`. [`crate::Error::Conflict`]
    /// on `path` when another trigger of the namespace that is not destroyed
    /// has the same path.
    fn create_trigger(
        &self,
        trigger: NewTrigger,
    ) -> impl Future<Output = Result<TriggerRecord>> + Send;

    fn get_trigger(
        &self,
        namespace: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<TriggerRecord>>> + Send;

    /// Triggers of a namespace (of one workflow, when given), oldest first;
    /// destroyed ones are left out.
    fn list_triggers(
        &self,
        namespace: &str,
        workflow_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<TriggerRecord>>> + Send;

    /// Moves a trigger to state `to` if its state is one of `from`, in one
    /// statement (so two concurrent moves cannot both pass the check).
    /// `Ok(None)`: no such trigger in the namespace; `Err(Invalid)` with the
    /// current state named when the state is not among `from`.
    fn set_trigger_state(
        &self,
        namespace: &str,
        id: &str,
        from: &[&str],
        to: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<TriggerRecord>>> + Send;

    /// The `api` trigger (not destroyed) answering `path` in a namespace.
    fn api_trigger(
        &self,
        namespace: &str,
        path: &str,
    ) -> impl Future<Output = Result<Option<TriggerRecord>>> + Send;
}
