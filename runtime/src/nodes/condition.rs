//! `condition`: a CEL expression; `true` and `false` branches.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::compile::{CompiledNode, Compiler};
use crate::expr::Expr;
use crate::ids::NodeId;
use crate::interpreter::{Flow, Machine};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    /// A CEL expression that must evaluate to true or false.
    pub expression: String,
}

pub(crate) fn compile(
    config: &ConditionConfig,
    node: &NodeId,
    c: &mut Compiler<'_>,
) -> Option<Expr> {
    c.expr(node, "config.expression", &config.expression)
}

pub(crate) fn enter<'w>(
    m: &mut Machine<'w>,
    _node: &'w CompiledNode,
    expr: &'w Option<Expr>,
) -> Result<Flow<'w>, String> {
    let expr = expr.as_ref().ok_or("the expression did not compile")?;
    let truth = expr.eval_bool(&m.snap.scope(m.now))?;
    Ok(Flow::Next(Some(if truth { "true" } else { "false" })))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::Status;
    use crate::nodes::testing::{Harness, compile, errors_of};

    fn doc(expression: &str) -> Value {
        json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "vip", "type": "condition", "config": {"expression": expression}},
                {"id": "yes", "type": "exit", "config": {"outcome": "yes"}},
                {"id": "no", "type": "exit", "config": {"outcome": "no"}},
            ],
            "edges": [
                {"from": "start", "to": "vip"},
                {"from": "vip", "to": "yes", "branch": "true"},
                {"from": "vip", "to": "no", "branch": "false"},
            ]
        })
    }

    #[test]
    fn takes_the_branch_the_expression_chooses() {
        let wf = compile(&doc("input.total > 100"));
        let h = Harness::start(&wf, json!({"total": 150}));
        assert_eq!(h.snapshot.outcome.as_deref(), Some("yes"));
        let h = Harness::start(&wf, json!({"total": 50}));
        assert_eq!(h.snapshot.outcome.as_deref(), Some("no"));
    }

    #[test]
    fn a_non_boolean_or_failing_expression_fails_the_execution_at_the_node() {
        let wf = compile(&doc("input.total"));
        let h = Harness::start(&wf, json!({"total": 150}));
        assert_eq!(h.snapshot.status, Status::Failed);
        let err = h.snapshot.error.clone().expect("error");
        assert_eq!(err.node.as_ref().map(|n| n.as_str()), Some("vip"));
        assert!(err.message.contains("true or false"), "{}", err.message);
        let wf = compile(&doc("input.missing > 1"));
        let h = Harness::start(&wf, json!({}));
        assert_eq!(h.snapshot.status, Status::Failed);
    }

    #[test]
    fn validation_rejects_bad_expressions_and_missing_branches() {
        assert_eq!(errors_of(&doc("input.total >")), ["vip:config.expression"]);
        let mut d = doc("true");
        d["edges"].as_array_mut().expect("edges").pop();
        assert_eq!(errors_of(&d), ["vip:edges", "no:"]);
    }
}
