//! `exit`: the end of a path, with an optional outcome label
//! (`"converted"`, `"unsubscribed"`) kept on the execution for analytics.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::compile::Compiler;
use crate::ids::NodeId;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

pub(crate) fn compile(config: &ExitConfig, node: &NodeId, c: &mut Compiler<'_>) -> Option<String> {
    if let Some(o) = &config.outcome
        && (o.trim().is_empty() || o.len() > 128)
    {
        c.error(node, "config.outcome", "must be 1 to 128 characters");
    }
    config.outcome.clone()
}
