//! `split`: ordered rules with a `default` branch, or random percentages for
//! A/B tests. The random choice is a hash of the execution id and node id,
//! so the same execution always takes the same branch, on every replay and
//! every machine.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::compile::{CompiledNode, Compiler};
use crate::expr::Expr;
use crate::hash::stable_hash;
use crate::ids::NodeId;
use crate::interpreter::{Flow, Machine};

/// Exactly one of `rules` and `variants`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Tried in order; the first whose expression is true wins, else `default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<SplitRule>,
    /// Random split; percentages add up to 100 (two decimals at most).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<SplitVariant>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitRule {
    pub branch: String,
    pub expression: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitVariant {
    pub branch: String,
    pub percent: f64,
}

/// The branch taken when no rule matches.
pub const DEFAULT_BRANCH: &str = "default";

const BASIS_POINTS: u64 = 10_000;

#[derive(Debug)]
pub(crate) enum Compiled {
    Rules(Vec<(String, Option<Expr>)>),
    /// Branches with their cumulative upper bound in basis points.
    Random(Vec<(String, u64)>),
}

impl Compiled {
    pub(crate) fn branches(&self) -> Vec<String> {
        match self {
            Compiled::Rules(rules) => rules
                .iter()
                .map(|(b, _)| b.clone())
                .chain(std::iter::once(DEFAULT_BRANCH.to_owned()))
                .collect(),
            Compiled::Random(variants) => variants.iter().map(|(b, _)| b.clone()).collect(),
        }
    }
}

pub(crate) fn compile(config: &SplitConfig, node: &NodeId, c: &mut Compiler<'_>) -> Compiled {
    match (config.rules.is_empty(), config.variants.is_empty()) {
        (false, false) | (true, true) => {
            c.error(node, "config", "set exactly one of rules, variants");
        }
        _ => {}
    }
    let mut seen: Vec<String> = Vec::new();
    let mut check_branch = |c: &mut Compiler<'_>, field: String, branch: &str| {
        if branch.trim().is_empty() {
            c.error(node, field, "must not be empty");
        } else if seen.iter().any(|s| s == branch) {
            c.error(node, field, format!("branch {branch:?} appears twice"));
        } else {
            seen.push(branch.to_owned());
        }
    };
    if !config.rules.is_empty() {
        let mut rules = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            if rule.branch == DEFAULT_BRANCH {
                c.error(
                    node,
                    format!("config.rules[{i}].branch"),
                    "\"default\" is the branch taken when no rule matches; name the rule differently",
                );
            } else {
                check_branch(c, format!("config.rules[{i}].branch"), &rule.branch);
            }
            let expr = c.expr(
                node,
                &format!("config.rules[{i}].expression"),
                &rule.expression,
            );
            rules.push((rule.branch.clone(), expr));
        }
        return Compiled::Rules(rules);
    }
    let mut cumulative = 0u64;
    let mut variants = Vec::new();
    for (i, v) in config.variants.iter().enumerate() {
        check_branch(c, format!("config.variants[{i}].branch"), &v.branch);
        let bp = v.percent * 100.0;
        if !(v.percent.is_finite() && v.percent > 0.0 && v.percent <= 100.0) {
            c.error(
                node,
                format!("config.variants[{i}].percent"),
                "must be more than 0 and at most 100",
            );
        } else if (bp - bp.round()).abs() > 1e-6 {
            c.error(
                node,
                format!("config.variants[{i}].percent"),
                "at most two decimals",
            );
        } else {
            cumulative += bp.round() as u64;
        }
        variants.push((v.branch.clone(), cumulative));
    }
    if !config.variants.is_empty() && cumulative != BASIS_POINTS && c.errors_at(node) == 0 {
        c.error(
            node,
            "config.variants",
            format!(
                "percentages add up to {}, not 100",
                cumulative as f64 / 100.0
            ),
        );
    }
    Compiled::Random(variants)
}

pub(crate) fn enter<'w>(
    m: &mut Machine<'w>,
    node: &'w CompiledNode,
    c: &'w Compiled,
) -> Result<Flow<'w>, String> {
    match c {
        Compiled::Rules(rules) => {
            let ctx = m.snap.scope(m.now).cel_context()?;
            for (branch, expr) in rules {
                let expr = expr.as_ref().ok_or("a rule did not compile")?;
                if expr.eval_bool_in(&ctx)? {
                    return Ok(Flow::Next(Some(branch)));
                }
            }
            Ok(Flow::Next(Some(DEFAULT_BRANCH)))
        }
        Compiled::Random(variants) => {
            let bucket = bucket(m.snap.execution_id.as_str(), node.id.as_str());
            let chosen = variants
                .iter()
                .find(|(_, upper)| bucket < *upper)
                .or(variants.last())
                .ok_or("a random split needs variants")?;
            Ok(Flow::Next(Some(&chosen.0)))
        }
    }
}

/// The execution's bucket in `0..10_000` for this node.
pub(crate) fn bucket(execution: &str, node: &str) -> u64 {
    stable_hash(&[execution.as_bytes(), node.as_bytes()]) % BASIS_POINTS
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::nodes::testing::{Harness, compile, errors_of, linear};

    fn ab(variants: Value) -> Value {
        json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "ab", "type": "split", "config": {"variants": variants}},
                {"id": "a", "type": "exit", "config": {"outcome": "a"}},
                {"id": "b", "type": "exit", "config": {"outcome": "b"}},
            ],
            "edges": [
                {"from": "start", "to": "ab"},
                {"from": "ab", "to": "a", "branch": "a"},
                {"from": "ab", "to": "b", "branch": "b"},
            ]
        })
    }

    #[test]
    fn rules_pick_the_first_match_or_default() {
        let doc = json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "tier", "type": "split", "config": {"rules": [
                    {"branch": "whale", "expression": "input.spend > 1000"},
                    {"branch": "regular", "expression": "input.spend > 10"},
                ]}},
                {"id": "w", "type": "exit", "config": {"outcome": "whale"}},
                {"id": "r", "type": "exit", "config": {"outcome": "regular"}},
                {"id": "d", "type": "exit", "config": {"outcome": "default"}},
            ],
            "edges": [
                {"from": "start", "to": "tier"},
                {"from": "tier", "to": "w", "branch": "whale"},
                {"from": "tier", "to": "r", "branch": "regular"},
                {"from": "tier", "to": "d", "branch": "default"},
            ]
        });
        let wf = compile(&doc);
        for (spend, outcome) in [(5000, "whale"), (50, "regular"), (1, "default")] {
            let h = Harness::start(&wf, json!({"spend": spend}));
            assert_eq!(
                h.snapshot.outcome.as_deref(),
                Some(outcome),
                "spend {spend}"
            );
        }
    }

    #[test]
    fn random_split_is_deterministic_and_close_to_its_percentages() {
        let wf = compile(&ab(
            json!([{"branch": "a", "percent": 30}, {"branch": "b", "percent": 70}]),
        ));
        let mut a = 0;
        for i in 0..4000 {
            let id = format!("exe_{i}");
            let first = Harness::start_id(&wf, &id, json!({})).snapshot.outcome;
            let again = Harness::start_id(&wf, &id, json!({})).snapshot.outcome;
            assert_eq!(first, again, "same execution, same branch");
            if first.as_deref() == Some("a") {
                a += 1;
            }
        }
        // 30% of 4000 = 1200; allow a generous band.
        assert!((1050..1350).contains(&a), "{a} of 4000 took branch a");
    }

    #[test]
    fn validation_checks_percentages_and_branches() {
        assert_eq!(
            errors_of(&ab(
                json!([{"branch": "a", "percent": 30}, {"branch": "b", "percent": 60}])
            )),
            ["ab:config.variants"]
        );
        assert_eq!(
            errors_of(&ab(
                json!([{"branch": "a", "percent": 30.555}, {"branch": "b", "percent": 69.445}])
            )),
            [
                "ab:config.variants[0].percent",
                "ab:config.variants[1].percent"
            ]
        );
        let wf = linear(
            json!({"type": "start"}),
            vec![json!({"id": "s", "type": "split", "config": {"rules": [
                {"branch": "default", "expression": "true"},
                {"branch": "x", "expression": "true"},
                {"branch": "x", "expression": "1 +"},
            ]}})],
        );
        assert_eq!(
            errors_of(&wf),
            [
                "s:config.rules[0].branch",
                "s:config.rules[2].branch",
                "s:config.rules[2].expression"
            ]
        );
        assert_eq!(
            errors_of(&linear(
                json!({"type": "start"}),
                vec![json!({"id": "s", "type": "split", "config": {}})]
            )),
            ["s:config", "end:"]
        );
    }
}
