//! Expressions: CEL (the Common Expression Language of Kubernetes, Envoy and
//! Firebase rules) through the `cel` crate.
//!
//! CEL was chosen over a home-made language or an embedded scripting engine
//! because it is small, side-effect free, always terminates, has a written
//! spec that users can read, and its Rust implementation is maintained. An
//! expression sees the roots in [`ROOTS`]; any other free identifier is a
//! validation error, so a typo (`inptu.plan`) is caught when the workflow is
//! saved, not when an execution reaches the node days later.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr as Ast, IdedExpr};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ids::{ExecutionId, NodeId};

/// The names an expression or a template can refer to.
pub const ROOTS: [&str; 7] = [
    "input",
    "vars",
    "subject",
    "event",
    "nodes",
    "execution",
    "now",
];

static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A parsed CEL expression.
#[derive(Debug, Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<cel::Program>,
}

impl Expr {
    /// Parses `source` and checks that it only refers to [`ROOTS`].
    pub fn compile(source: &str) -> Result<Expr, String> {
        Self::compile_with(source, &ROOTS)
    }

    fn compile_with(source: &str, roots: &[&str]) -> Result<Expr, String> {
        if source.trim().is_empty() {
            return Err("empty expression".into());
        }
        let program = ENV.compile(source).map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            format!(
                "invalid expression {source:?}: {}",
                first.trim_start_matches("ERROR: <input>:")
            )
        })?;
        let mut free = BTreeSet::new();
        free_variables(program.expression(), &mut Vec::new(), &mut free);
        if let Some(unknown) = free.iter().find(|v| !roots.contains(&v.as_str())) {
            return Err(format!(
                "expression {source:?} refers to unknown variable {unknown:?} (known: {})",
                roots.join(", ")
            ));
        }
        Ok(Expr {
            source: source.into(),
            program: Arc::new(program),
        })
    }

    /// The text the expression was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to a JSON value.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Value, String> {
        let context = scope.cel_context()?;
        self.eval_in(&context)
    }

    /// Evaluates to a boolean; any other type is an error.
    pub fn eval_bool(&self, scope: &Scope<'_>) -> Result<bool, String> {
        let context = scope.cel_context()?;
        self.eval_bool_in(&context)
    }

    /// Evaluates over an event alone (a trigger's condition or key).
    pub fn eval_event(&self, event: &EventContext) -> Result<Value, String> {
        self.eval_in(&event.0)
    }

    /// [`Expr::eval_event`] to a boolean; any other type is an error.
    pub fn eval_event_bool(&self, event: &EventContext) -> Result<bool, String> {
        self.eval_bool_in(&event.0)
    }

    pub(crate) fn eval_in(&self, context: &cel::Context<'_, '_>) -> Result<Value, String> {
        let value = self.run(context)?;
        value
            .json()
            .map_err(|e| format!("expression {:?}: result is not JSON: {e:?}", &*self.source))
    }

    pub(crate) fn eval_bool_in(&self, context: &cel::Context<'_, '_>) -> Result<bool, String> {
        match self.run(context)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(format!(
                "expression {:?} must be true or false, got {}",
                &*self.source,
                other.type_of()
            )),
        }
    }

    fn run(&self, context: &cel::Context<'_, '_>) -> Result<cel::Value, String> {
        self.program
            .execute(context)
            .map_err(|e| format!("expression {:?}: {e}", &*self.source))
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// Collects identifiers that are not bound by an enclosing comprehension
/// (the variables of `all`, `exists`, `map`, `filter`).
fn free_variables(expr: &IdedExpr, bound: &mut Vec<String>, out: &mut BTreeSet<String>) {
    match &expr.expr {
        Ast::Unspecified | Ast::Literal(_) => {}
        Ast::Ident(name) => {
            if !name.starts_with('@') && !bound.iter().any(|b| b == name) {
                out.insert(name.clone());
            }
        }
        Ast::Call(call) => {
            if let Some(target) = &call.target {
                free_variables(target, bound, out);
            }
            for arg in &call.args {
                free_variables(arg, bound, out);
            }
        }
        Ast::Select(select) => free_variables(&select.operand, bound, out),
        Ast::List(list) => {
            for e in &list.elements {
                free_variables(e, bound, out);
            }
        }
        Ast::Map(map) => map.entries.iter().for_each(|e| entry(e, bound, out)),
        Ast::Struct(s) => s.entries.iter().for_each(|e| entry(e, bound, out)),
        Ast::Comprehension(c) => {
            free_variables(&c.iter_range, bound, out);
            free_variables(&c.accu_init, bound, out);
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(c.accu_var.clone());
            free_variables(&c.loop_cond, bound, out);
            free_variables(&c.loop_step, bound, out);
            free_variables(&c.result, bound, out);
            bound.truncate(depth);
        }
    }

    fn entry(
        e: &cel::common::ast::IdedEntryExpr,
        bound: &mut Vec<String>,
        out: &mut BTreeSet<String>,
    ) {
        match &e.expr {
            EntryExpr::StructField(field) => free_variables(&field.value, bound, out),
            EntryExpr::MapEntry(m) => {
                free_variables(&m.key, bound, out);
                free_variables(&m.value, bound, out);
            }
        }
    }
}

/// What an expression or template can see, borrowed from a snapshot.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scope<'a> {
    /// The execution's input.
    pub input: &'a Value,
    /// Variables assigned by `function` nodes.
    pub vars: &'a Map<String, Value>,
    /// The subject key (a user id, an order id), if any.
    pub subject: Option<&'a str>,
    /// The event being handled or last received: `{name, key, payload}`.
    pub event: Option<&'a Value>,
    /// What earlier nodes produced: `nodes.<id>.output`, `nodes.<id>.error`.
    pub nodes: &'a BTreeMap<NodeId, Value>,
    /// The subject's segments, read just before the step (for
    /// `in_segment('vip')`); `None` when the workflow asks for none.
    #[serde(skip)]
    pub segments: Option<&'a BTreeSet<String>>,
    /// `{id, started_at}` of the execution.
    pub execution: ExecutionInfo<'a>,
    /// The step's `now` (never the wall clock).
    pub now: DateTime<Utc>,
}

/// The `execution` root.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ExecutionInfo<'a> {
    pub id: &'a ExecutionId,
    pub started_at: Option<DateTime<Utc>>,
}

/// The CEL context of an event alone, for a trigger's expressions: `event`
/// and `now` are set, `input`, `vars` and `nodes` are empty, `subject` and
/// `execution` null. Built once per event for all of a trigger's
/// expressions.
pub struct EventContext(cel::Context<'static, 'static>);

impl std::fmt::Debug for EventContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventContext")
    }
}

impl EventContext {
    pub fn new(event: &Value, now: DateTime<Utc>) -> EventContext {
        let mut ctx = cel::Context::with_env(ENV.clone());
        let empty: HashMap<String, cel::Value> = HashMap::new();
        ctx.add_variable_from_value("input", empty.clone());
        ctx.add_variable_from_value("vars", empty.clone());
        ctx.add_variable_from_value("nodes", empty);
        ctx.add_variable_from_value("subject", cel::Value::Null);
        ctx.add_variable_from_value("execution", cel::Value::Null);
        ctx.add_variable_from_value("event", to_cel(event));
        ctx.add_variable_from_value("now", cel::Value::Timestamp(now.fixed_offset()));
        EventContext(ctx)
    }
}

impl Scope<'_> {
    /// Builds the CEL context for this scope (one per node visit).
    pub(crate) fn cel_context(&self) -> Result<cel::Context<'static, 'static>, String> {
        let mut ctx = cel::Context::with_env(ENV.clone());
        ctx.add_variable_from_value("input", to_cel(self.input));
        ctx.add_variable_from_value("vars", map_to_cel(self.vars));
        ctx.add_variable_from_value(
            "subject",
            self.subject.map_or(cel::Value::Null, cel::Value::from),
        );
        ctx.add_variable_from_value("event", self.event.map_or(cel::Value::Null, to_cel));
        let nodes: HashMap<String, cel::Value> = self
            .nodes
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), to_cel(v)))
            .collect();
        ctx.add_variable_from_value("nodes", nodes);
        let mut execution = HashMap::with_capacity(2);
        execution.insert(
            "id".to_owned(),
            cel::Value::from(self.execution.id.as_str()),
        );
        execution.insert(
            "started_at".to_owned(),
            self.execution.started_at.map_or(cel::Value::Null, |t| {
                cel::Value::Timestamp(t.fixed_offset())
            }),
        );
        ctx.add_variable_from_value("execution", execution);
        ctx.add_variable_from_value("now", cel::Value::Timestamp(self.now.fixed_offset()));
        if let Some(segments) = self.segments {
            let segments: Arc<BTreeSet<String>> = Arc::new(segments.clone());
            ctx.add_function("in_segment", move |name: Arc<String>| {
                segments.contains(name.as_str())
            })
            .map_err(|e| format!("in_segment: {e:?}"))?;
        } else {
            ctx.add_function("in_segment", |_: Arc<String>| false)
                .map_err(|e| format!("in_segment: {e:?}"))?;
        }
        Ok(ctx)
    }
}

/// What a segment's expression can see.
pub const SEGMENT_ROOTS: [&str; 2] = ["attributes", "subject"];

impl Expr {
    /// Parses a segment's expression: it sees a profile's `attributes` and
    /// its `subject`, nothing that changes without the profile changing.
    pub fn compile_segment(source: &str) -> Result<Expr, String> {
        Self::compile_with(source, &SEGMENT_ROOTS)
    }

    /// Whether a profile is in the segment (an error: not a boolean).
    pub fn eval_segment(
        &self,
        subject: &str,
        attributes: &Map<String, Value>,
    ) -> Result<bool, String> {
        let mut ctx = cel::Context::with_env(ENV.clone());
        ctx.add_variable_from_value("attributes", map_to_cel(attributes));
        ctx.add_variable_from_value("subject", cel::Value::from(subject));
        self.eval_bool_in(&ctx)
    }
}

/// JSON to CEL. Integers become CEL `int` when they fit (so `input.n * 2`
/// works: CEL does not mix `int` and `uint` in arithmetic), `uint` only
/// beyond `i64::MAX`.
pub(crate) fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => cel::Value::Int(i),
            (None, Some(u), _) => cel::Value::UInt(u),
            (_, _, Some(f)) => cel::Value::Float(f),
            _ => cel::Value::Null,
        },
        Value::String(s) => cel::Value::from(s.as_str()),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => map_to_cel(map),
    }
}

fn map_to_cel(map: &Map<String, Value>) -> cel::Value {
    let m: HashMap<String, cel::Value> = map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
    cel::Value::from(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_scope<R>(input: Value, vars: Value, f: impl FnOnce(&Scope<'_>) -> R) -> R {
        let vars = match vars {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let nodes = BTreeMap::new();
        let id = ExecutionId::new("exe_1");
        let scope = Scope {
            input: &input,
            vars: &vars,
            subject: Some("user-1"),
            event: None,
            nodes: &nodes,
            segments: None,
            execution: ExecutionInfo {
                id: &id,
                started_at: None,
            },
            now: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .expect("ts")
                .with_timezone(&Utc),
        };
        f(&scope)
    }

    #[test]
    fn evaluates_over_the_roots() {
        let e = Expr::compile("input.total > 100 && vars.tier == 'gold'").expect("compiles");
        assert_eq!(
            with_scope(json!({"total": 150}), json!({"tier": "gold"}), |s| e
                .eval_bool(s)),
            Ok(true)
        );
        let e = Expr::compile("input.items.map(i, i.price * 2)").expect("compiles");
        assert_eq!(
            with_scope(
                json!({"items": [{"price": 1}, {"price": 3}]}),
                json!({}),
                |s| e.eval(s)
            ),
            Ok(json!([2, 6]))
        );
        let e = Expr::compile("subject + ':' + execution.id").expect("compiles");
        assert_eq!(
            with_scope(json!({}), json!({}), |s| e.eval(s)),
            Ok(json!("user-1:exe_1"))
        );
        let e = Expr::compile("now > timestamp('2025-01-01T00:00:00Z')").expect("compiles");
        assert_eq!(
            with_scope(json!({}), json!({}), |s| e.eval_bool(s)),
            Ok(true)
        );
    }

    #[test]
    fn rejects_bad_syntax_and_unknown_roots() {
        let err = Expr::compile("input.total >").expect_err("syntax");
        assert!(err.contains("invalid expression"), "{err}");
        let err = Expr::compile("inptu.total > 1").expect_err("unknown root");
        assert!(err.contains("unknown variable \"inptu\""), "{err}");
        assert!(Expr::compile("  ").is_err());
        // Comprehension variables are bound, not free.
        assert!(Expr::compile("input.items.exists(x, x.sku == 'a')").is_ok());
        assert!(Expr::compile("input.items.exists(x, y.sku == 'a')").is_err());
    }

    #[test]
    fn runtime_errors_are_errors_not_panics() {
        let e = Expr::compile("input.missing.deeper == 1").expect("compiles");
        assert!(with_scope(json!({}), json!({}), |s| e.eval(s)).is_err());
        let e = Expr::compile("input.n").expect("compiles");
        let err = with_scope(json!({"n": 3}), json!({}), |s| e.eval_bool(s)).expect_err("not bool");
        assert!(err.contains("must be true or false"), "{err}");
        let e = Expr::compile("1 / input.zero").expect("compiles");
        assert!(with_scope(json!({"zero": 0}), json!({}), |s| e.eval(s)).is_err());
    }
}
