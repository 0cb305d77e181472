//! `function`: compute variables. Each assignment is a CEL expression whose
//! result is stored as `vars.<var>`; later assignments see earlier ones.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Map;

use crate::compile::{CompiledNode, Compiler};
use crate::expr::Expr;
use crate::ids::NodeId;
use crate::interpreter::{Flow, Machine};
use crate::journal::JournalEvent;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Assignments, applied in order.
    pub assign: Vec<Assignment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The variable name (`[A-Za-z_][A-Za-z0-9_]*`), read back as `vars.<var>`.
    pub var: String,
    pub expression: String,
}

pub(crate) fn compile(
    config: &FunctionConfig,
    node: &NodeId,
    c: &mut Compiler<'_>,
) -> Vec<(String, Option<Expr>)> {
    if config.assign.is_empty() {
        c.error(node, "config.assign", "must assign at least one variable");
    }
    config
        .assign
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let ok = a
                .var
                .chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
                && a.var
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                && a.var.len() <= 64;
            if !ok {
                c.error(
                    node,
                    format!("config.assign[{i}].var"),
                    format!("{:?} is not a variable name (letters, digits, _)", a.var),
                );
            }
            let expr = c.expr(
                node,
                &format!("config.assign[{i}].expression"),
                &a.expression,
            );
            (a.var.clone(), expr)
        })
        .collect()
}

pub(crate) fn enter<'w>(
    m: &mut Machine<'w>,
    node: &'w CompiledNode,
    assignments: &'w [(String, Option<Expr>)],
) -> Result<Flow<'w>, String> {
    // Evaluate into a copy: a failing assignment leaves `vars` untouched,
    // so a retry starts from the same values.
    let mut vars = m.snap.vars.clone();
    let mut assigned = Map::new();
    for (var, expr) in assignments {
        let expr = expr.as_ref().ok_or("an assignment did not compile")?;
        let mut scope = m.snap.scope(m.now);
        scope.vars = &vars;
        let value = expr.eval(&scope).map_err(|e| format!("vars.{var}: {e}"))?;
        vars.insert(var.clone(), value.clone());
        assigned.insert(var.clone(), value);
    }
    m.snap.vars = vars;
    m.journal(JournalEvent::VariablesAssigned {
        node: node.id.clone(),
        vars: assigned,
    });
    Ok(Flow::Next(None))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::nodes::testing::{Harness, compile, errors_of, linear};

    #[test]
    fn assigns_in_order_and_later_assignments_see_earlier_ones() {
        let wf = compile(&linear(
            json!({"type": "start"}),
            vec![
                json!({"id": "calc", "type": "function", "config": {"assign": [
                    {"var": "subtotal", "expression": "input.a + input.b"},
                    {"var": "vip", "expression": "vars.subtotal > 100"},
                ]}}),
            ],
        ));
        let h = Harness::start(&wf, json!({"a": 80, "b": 40}));
        assert_eq!(h.snapshot.status, crate::Status::Completed);
        assert_eq!(h.snapshot.vars["subtotal"], json!(120));
        assert_eq!(h.snapshot.vars["vip"], json!(true));
        // A failing assignment fails the execution at the node, naming the variable.
        let h = Harness::start(&wf, json!({"a": "x", "b": 1}));
        assert_eq!(h.snapshot.status, crate::Status::Failed);
        let err = h.snapshot.error.clone().expect("error");
        assert_eq!(err.node.as_ref().map(|n| n.as_str()), Some("calc"));
        assert!(err.message.contains("vars.subtotal"), "{}", err.message);
    }

    #[test]
    fn a_failing_assignment_leaves_vars_untouched_for_the_retry() {
        let wf = compile(&linear(
            json!({"type": "start"}),
            vec![
                json!({"id": "calc", "type": "function", "config": {"assign": [
                    {"var": "n", "expression": "size(vars) + 1"},
                    {"var": "x", "expression": "input.missing.y"},
                ]}}),
            ],
        ));
        let mut h = Harness::start(&wf, json!({}));
        assert_eq!(h.snapshot.status, crate::Status::Failed);
        assert!(h.snapshot.vars.is_empty());
        h.step(crate::Input::Retry);
        assert!(h.snapshot.vars.is_empty());
    }

    #[test]
    fn validation_names_bad_variables_and_expressions() {
        let wf = linear(
            json!({"type": "start"}),
            vec![
                json!({"id": "f", "type": "function", "config": {"assign": [
                    {"var": "1st", "expression": "1"},
                    {"var": "ok", "expression": "vars."},
                ]}}),
                json!({"id": "g", "type": "function", "config": {"assign": []}}),
            ],
        );
        assert_eq!(
            errors_of(&wf),
            [
                "f:config.assign[0].var",
                "f:config.assign[1].expression",
                "g:config.assign"
            ]
        );
    }
}
