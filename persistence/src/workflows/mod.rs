//! Workflows and their published versions (`workflows`,
//! `workflow_versions`): drafts, publishing (versions are immutable once
//! written), listing and archiving.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sojourn_runtime::Workflow;

use crate::Result;
use crate::types::{NewWorkflow, VersionSummary, WorkflowQuery, WorkflowRecord, WorkflowVersion};

/// Workflows and their versions.
pub trait WorkflowStore: Send + Sync {
    /// Creates a workflow; a taken `(namespace, key)` is a
    /// [`crate::Error::Conflict`] on `key`.
    fn create_workflow(
        &self,
        new: NewWorkflow,
    ) -> impl Future<Output = Result<WorkflowRecord>> + Send;

    /// A workflow by id or by key, within a namespace.
    fn get_workflow(
        &self,
        namespace: &str,
        id_or_key: &str,
    ) -> impl Future<Output = Result<Option<WorkflowRecord>>> + Send;

    /// Publishes `definition` as the next version (1, 2, …), atomically.
    fn publish(
        &self,
        workflow_id: &str,
        definition: &Workflow,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<WorkflowVersion>> + Send;

    /// Publishes `definition` unless it equals the latest version, which is
    /// then returned with `false`; one transaction holding the workflow row,
    /// so concurrent publishes of one document make one version. An archived
    /// workflow is [`crate::Error::Invalid`].
    fn publish_if_changed(
        &self,
        workflow_id: &str,
        definition: &Workflow,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(WorkflowVersion, bool)>> + Send;

    /// A published version (`None`: the latest).
    fn get_version(
        &self,
        workflow_id: &str,
        version: Option<i32>,
    ) -> impl Future<Output = Result<Option<WorkflowVersion>>> + Send;

    /// Workflows of a namespace, newest first (see [`WorkflowQuery`]).
    fn list_workflows(
        &self,
        query: &WorkflowQuery,
    ) -> impl Future<Output = Result<Vec<WorkflowRecord>>> + Send;

    /// Replaces the draft (and the name, when given) of a workflow that is
    /// not archived. [`crate::Error::NotFound`] if there is no such workflow
    /// in the namespace, [`crate::Error::Invalid`] if it is archived.
    fn update_draft(
        &self,
        namespace: &str,
        workflow_id: &str,
        draft: &Value,
        name: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<WorkflowRecord>> + Send;

    /// Archives a workflow (idempotent: archiving twice keeps the first
    /// time). Its versions and executions stay. [`crate::Error::NotFound`]
    /// if there is no such workflow in the namespace.
    fn archive_workflow(
        &self,
        namespace: &str,
        workflow_id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<WorkflowRecord>> + Send;

    /// Every published version of a workflow, oldest first.
    fn list_versions(
        &self,
        workflow_id: &str,
    ) -> impl Future<Output = Result<Vec<VersionSummary>>> + Send;
}
