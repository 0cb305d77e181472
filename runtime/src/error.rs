//! The runtime's errors: validation problems (many at once, each naming its
//! node and field) and the reasons a step can refuse an input.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

/// One problem in a workflow document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationError {
    /// The node at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// The index of the edge at fault in `edges`, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<usize>,
    /// The field at fault, as a path: `config.retry.max_attempts`,
    /// `settings.timezone`, `edges[3].to`. Empty for the whole document.
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub(crate) fn document(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            node: None,
            edge: None,
            field: field.into(),
            message: message.into(),
        }
    }

    /// An error in a node. `index` is used to name nodes that have no id.
    pub(crate) fn node(
        index: usize,
        id: Option<&NodeId>,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        let field = match id {
            Some(_) => field.to_owned(),
            None if field.is_empty() => format!("nodes[{index}]"),
            None => format!("nodes[{index}].{field}"),
        };
        ValidationError {
            node: id.cloned(),
            edge: None,
            field,
            message: message.into(),
        }
    }

    pub fn at_node(id: &NodeId, field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            node: Some(id.clone()),
            edge: None,
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn at_edge(index: usize, field: &str, message: impl Into<String>) -> Self {
        ValidationError {
            node: None,
            edge: Some(index),
            field: format!("edges[{index}].{field}"),
            message: message.into(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(node) = &self.node {
            write!(f, "node {:?}: ", node.as_str())?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ValidationError {}

/// Why [`crate::CompiledWorkflow::step`] refused an input. A refused input
/// changes nothing: the caller keeps its snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the execution has already started")]
    AlreadyStarted,
    #[error("the execution has not started yet")]
    NotStarted,
    #[error("the execution has already finished ({status})")]
    Finished { status: &'static str },
    #[error("the execution is already paused")]
    AlreadyPaused,
    #[error("the execution is not paused")]
    NotPaused,
    #[error("the execution is paused because node {node:?} failed: retry it instead of resuming")]
    PausedOnFailure { node: NodeId },
    #[error("only a paused or failed execution at a node can be retried")]
    NotRetryable,
    #[error("snapshot format {found} is not supported (this build reads up to {supported})")]
    SnapshotFormat { found: u32, supported: u32 },
    #[error("the snapshot names node {0:?}, which this workflow version does not have")]
    UnknownNode(NodeId),
    #[error("invalid start: {field}: {message}")]
    InvalidStart {
        field: &'static str,
        message: String,
    },
}
