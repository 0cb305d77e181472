//! The JSON Schema of the workflow document, for editors and the builder.

use serde_json::Value;

use crate::model::Workflow;

/// The JSON Schema (draft 2020-12) of a workflow document.
pub fn workflow_schema() -> Value {
    let mut schema = schemars::schema_for!(Workflow).to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".into(),
            Value::String("https://sojourn.dev/schema/workflow.json".into()),
        );
        obj.insert("title".into(), Value::String("Sojourn workflow".into()));
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_describes_every_node_type() {
        let schema = workflow_schema();
        let text = schema.to_string();
        for t in crate::model::NODE_TYPES {
            assert!(
                text.contains(&format!("\"const\":\"{t}\"")),
                "node type {t} missing from schema"
            );
        }
        for def in [
            "ActionConfig",
            "DelayConfig",
            "RetryPolicy",
            "Settings",
            "Edge",
        ] {
            assert!(
                schema["$defs"].get(def).is_some(),
                "{def} missing from $defs"
            );
        }
    }
}
