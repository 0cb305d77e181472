//! The actor layer's error type.

/// What went wrong while running executions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] sojourn_persistence::Error),
    #[error("workflow {0:?} not found")]
    WorkflowNotFound(String),
    #[error("workflow {0:?} is archived")]
    WorkflowArchived(String),
    #[error("workflow {workflow:?} version {version} is invalid: {message}")]
    InvalidWorkflow {
        workflow: String,
        version: i32,
        message: String,
    },
    #[error("invalid workflow: {0}")]
    Validation(String),
    #[error(transparent)]
    Start(#[from] sojourn_runtime::Error),
    #[error(
        "subject: this subject already has the workflow's maximum of {limit} entries (max_entries_per_subject)"
    )]
    LimitReached { limit: u32 },
    /// The database refused this execution's data (a NUL character, a
    /// subject too long to index).
    #[error("the database refused this execution's data: {0}")]
    Rejected(String),
    #[error("the workflow has no version {version}")]
    VersionNotFound { version: i32 },
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// `max_resident_starts` executions started here are in memory and
    /// none left within `start_wait`: retry later.
    #[error(
        "the node is at its limit of {limit} started executions in memory (max_resident_starts)"
    )]
    Overloaded { limit: usize },
    #[error("cluster: {0}")]
    Cluster(#[from] sojourn_cluster::Error),
    #[error("actor system: {0}")]
    Actor(String),
    /// The store did not answer or failed (not because of the request's
    /// data): retrying later may succeed.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}
