//! Templates: Jinja syntax through `minijinja`, with strict undefined
//! variables.
//!
//! minijinja was chosen because it is the maintained Rust implementation of
//! the template language most marketers already know (Jinja/Liquid-style
//! `{{ input.first_name }}`), has no runtime dependencies, can list a
//! template's free variables (so validation catches a misspelt root) and can
//! be made strict, so that a missing variable fails the node instead of
//! sending "Hello ," to a customer.
//!
//! Action inputs are JSON values in which:
//! - a string containing `{{` or `{%` is a template and renders to a string;
//! - an object `{"$expr": "<cel>"}` is a CEL expression and evaluates to any
//!   JSON value (to pass numbers, lists or whole objects through);
//! - everything else is a literal.

use std::sync::Arc;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{Map, Value};

use crate::expr::{Expr, ROOTS, Scope};

/// The compiled templates of one workflow.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    /// Templates are named by a counter: names built from field paths could
    /// collide (`{"a.b": …}` and `{"a": {"b": …}}`).
    count: usize,
    /// The names a template being added may refer to.
    roots: &'static [&'static str],
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Escaping is the author's choice (`|e`), not a side effect of a
        // field happening to be called `html`.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // Bound the work one render can do: a template is user input.
        env.set_recursion_limit(64);
        // `{{ secrets.NAME }}` renders a marker the worker resolves at send
        // time; every other value is written with marker characters
        // replaced (see `crate::secrets`).
        env.add_global(
            "secrets",
            minijinja::Value::from_object(crate::secrets::SecretsRoot),
        );
        // `{{ unsubscribe_url }}`: the recipient's signed link, put in by
        // the worker at send time.
        env.add_global("unsubscribe_url", crate::secrets::unsubscribe_url());
        env.set_formatter(crate::secrets::formatter);
        Templates {
            env,
            count: 0,
            roots: &ROOTS,
        }
    }

    /// Templates over other names than a workflow's (a registry
    /// definition's `run`, over `inputs`).
    pub fn with_roots(roots: &'static [&'static str]) -> Templates {
        Templates {
            roots,
            ..Templates::new()
        }
    }

    /// Sets the names templates added from now on may refer to; returns
    /// the ones before.
    pub(crate) fn set_roots(&mut self, roots: &'static [&'static str]) -> &'static [&'static str] {
        std::mem::replace(&mut self.roots, roots)
    }

    /// Compiles `source` under `name` and checks its free variables.
    pub fn add(&mut self, name: &str, source: &str) -> Result<(), String> {
        self.env
            .add_template_owned(name.to_owned(), source.to_owned())
            .map_err(|e| format!("invalid template {source:?}: {}", describe(&e)))?;
        let template = self
            .env
            .get_template(name)
            .map_err(|e| format!("invalid template {source:?}: {}", describe(&e)))?;
        let globals: Vec<String> = self.env.globals().map(|(k, _)| k.to_owned()).collect();
        let mut unknown: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !self.roots.contains(&v.as_str()) && !globals.contains(v))
            .collect();
        unknown.sort();
        if let Some(first) = unknown.first() {
            self.env.remove_template(name);
            return Err(format!(
                "template {source:?} refers to unknown variable {first:?} (known: {}, secrets)",
                self.roots.join(", ")
            ));
        }
        let mut bad_secret = None;
        for path in template.undeclared_variables(true) {
            if path == "secrets" {
                bad_secret = Some("secrets are referenced by name: {{ secrets.NAME }}".to_owned());
            } else if let Some(secret) = path.strip_prefix("secrets.") {
                let secret = secret.split('.').next().unwrap_or_default();
                if !crate::secrets::is_valid_name(secret) {
                    bad_secret = Some(format!(
                        "secret name {secret:?}: letters, digits and _ only, not starting with a digit"
                    ));
                }
            }
        }
        if let Some(e) = bad_secret {
            self.env.remove_template(name);
            return Err(format!("template {source:?}: {e}"));
        }
        Ok(())
    }

    /// Renders the template registered under `name`.
    pub fn render(&self, name: &str, context: &minijinja::Value) -> Result<String, String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| format!("template {name:?}: {}", describe(&e)))?;
        template
            .render(context)
            .map_err(|e| format!("template {:?}: {}", template.source(), describe(&e)))
    }
}

/// A minijinja error without its multi-line debug report.
fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    if let Some(detail) = e.detail()
        && !text.contains(detail)
    {
        text = format!("{text}: {detail}");
    }
    text
}

/// True when a string is a template rather than a literal.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// A JSON value whose leaves may be templates or expressions.
#[derive(Debug, Clone)]
pub enum Templated {
    Literal(Value),
    /// The name of a template in [`Templates`].
    Template(Arc<str>),
    Expr(Expr),
    Array(Vec<Templated>),
    Object(Vec<(String, Templated)>),
}

impl Templated {
    /// Compiles every template and expression in `value`. Errors carry the
    /// path below `field` (`config.inputs.body`).
    pub fn compile(
        value: &Value,
        field: &str,
        name_prefix: &str,
        templates: &mut Templates,
        errors: &mut Vec<(String, String)>,
    ) -> Templated {
        match value {
            Value::String(s) if is_template(s) => {
                templates.count += 1;
                let name = format!("{name_prefix}#{}", templates.count);
                match templates.add(&name, s) {
                    Ok(()) => Templated::Template(name.into()),
                    Err(e) => {
                        errors.push((field.to_owned(), e));
                        Templated::Literal(Value::Null)
                    }
                }
            }
            Value::Object(map) if map.len() == 1 && map.contains_key("$expr") => {
                match map.get("$expr").and_then(Value::as_str).map(Expr::compile) {
                    Some(Ok(e)) => Templated::Expr(e),
                    Some(Err(e)) => {
                        errors.push((format!("{field}.$expr"), e));
                        Templated::Literal(Value::Null)
                    }
                    None => {
                        errors.push((format!("{field}.$expr"), "must be a string".into()));
                        Templated::Literal(Value::Null)
                    }
                }
            }
            Value::Array(items) => Templated::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        Templated::compile(
                            v,
                            &format!("{field}[{i}]"),
                            name_prefix,
                            templates,
                            errors,
                        )
                    })
                    .collect(),
            ),
            Value::Object(map) => Templated::Object(
                map.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            Templated::compile(
                                v,
                                &format!("{field}.{k}"),
                                name_prefix,
                                templates,
                                errors,
                            ),
                        )
                    })
                    .collect(),
            ),
            other => Templated::Literal(other.clone()),
        }
    }

    /// True when rendering needs no context (no template or expression).
    pub fn is_literal(&self) -> bool {
        match self {
            Templated::Literal(_) => true,
            Templated::Template(_) | Templated::Expr(_) => false,
            Templated::Array(items) => items.iter().all(Templated::is_literal),
            Templated::Object(fields) => fields.iter().all(|(_, v)| v.is_literal()),
        }
    }

    /// The literal value, if this is one.
    pub fn as_literal(&self) -> Option<&Value> {
        match self {
            Templated::Literal(v) => Some(v),
            _ => None,
        }
    }

    /// Renders to plain JSON.
    pub fn render(&self, templates: &Templates, scope: &Scope<'_>) -> Result<Value, String> {
        let mut ctx = RenderContext {
            scope,
            jinja: None,
            cel: None,
        };
        self.render_with(templates, &mut ctx)
    }

    /// Renders templates over a plain context (a registry definition's
    /// `run` over `{inputs}`); there are no expressions in those.
    pub fn render_in(
        &self,
        templates: &Templates,
        context: &minijinja::Value,
    ) -> Result<Value, String> {
        Ok(match self {
            Templated::Literal(v) => v.clone(),
            Templated::Template(name) => Value::String(templates.render(name, context)?),
            Templated::Expr(_) => {
                return Err("an expression where only templates are allowed".into());
            }
            Templated::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| v.render_in(templates, context))
                    .collect::<Result<_, _>>()?,
            ),
            Templated::Object(fields) => {
                let mut map = Map::with_capacity(fields.len());
                for (k, v) in fields {
                    map.insert(k.clone(), v.render_in(templates, context)?);
                }
                Value::Object(map)
            }
        })
    }

    fn render_with(
        &self,
        templates: &Templates,
        ctx: &mut RenderContext<'_, '_>,
    ) -> Result<Value, String> {
        Ok(match self {
            Templated::Literal(v) => v.clone(),
            Templated::Template(name) => {
                let jinja = ctx.jinja.get_or_insert_with(|| {
                    minijinja::Value::from(minijinja::value::Serde(ctx.scope))
                });
                Value::String(templates.render(name, jinja)?)
            }
            Templated::Expr(e) => {
                if ctx.cel.is_none() {
                    ctx.cel = Some(ctx.scope.cel_context()?);
                }
                // Data, never a secret reference (see `crate::secrets`).
                let mut value = match &ctx.cel {
                    Some(cel) => e.eval_in(cel)?,
                    None => Value::Null,
                };
                crate::secrets::defuse(&mut value);
                value
            }
            Templated::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| v.render_with(templates, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            Templated::Object(fields) => {
                let mut map = Map::with_capacity(fields.len());
                for (k, v) in fields {
                    map.insert(k.clone(), v.render_with(templates, ctx)?);
                }
                Value::Object(map)
            }
        })
    }
}

/// Contexts built at most once per render, and only if needed.
struct RenderContext<'s, 'a> {
    scope: &'s Scope<'a>,
    jinja: Option<minijinja::Value>,
    cel: Option<cel::Context<'static, 'static>>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;
    use crate::expr::ExecutionInfo;
    use crate::ids::ExecutionId;

    fn render(value: Value, input: Value) -> Result<Value, String> {
        let mut templates = Templates::new();
        let mut errors = Vec::new();
        let t = Templated::compile(&value, "inputs", "n", &mut templates, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let vars = Map::new();
        let nodes = BTreeMap::new();
        let id = ExecutionId::new("exe_9");
        let scope = Scope {
            input: &input,
            vars: &vars,
            subject: None,
            event: None,
            nodes: &nodes,
            segments: None,
            execution: ExecutionInfo {
                id: &id,
                started_at: None,
            },
            now: DateTime::<Utc>::UNIX_EPOCH,
        };
        t.render(&templates, &scope)
    }

    #[test]
    fn renders_templates_expressions_and_literals() {
        let out = render(
            json!({
                "subject": "Hi {{ input.name }}",
                "count": 3,
                "items": {"$expr": "input.cart"},
                "nested": ["{{ execution.id }}", true],
            }),
            json!({"name": "Ada", "cart": [{"sku": "a"}]}),
        )
        .expect("renders");
        assert_eq!(
            out,
            json!({
                "subject": "Hi Ada",
                "count": 3,
                "items": [{"sku": "a"}],
                "nested": ["exe_9", true],
            })
        );
    }

    #[test]
    fn keys_that_look_like_paths_do_not_collide() {
        let out = render(
            json!({"a": {"b": "{{ input.x }}"}, "a.b": "{{ input.y }}"}),
            json!({"x": "ex", "y": "why"}),
        )
        .expect("renders");
        assert_eq!(out, json!({"a": {"b": "ex"}, "a.b": "why"}));
    }

    #[test]
    fn undefined_variables_fail_instead_of_rendering_empty() {
        let err = render(json!("Hello {{ input.first_name }}"), json!({})).expect_err("strict");
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn compile_reports_syntax_and_unknown_roots_with_their_path() {
        let mut templates = Templates::new();
        let mut errors = Vec::new();
        Templated::compile(
            &json!({"a": "{{ input.x ", "b": ["ok", "{{ user.name }}"], "c": {"$expr": "1 +"}}),
            "config.inputs",
            "n",
            &mut templates,
            &mut errors,
        );
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "config.inputs.a",
                "config.inputs.b[1]",
                "config.inputs.c.$expr"
            ]
        );
        assert!(
            errors[1].1.contains("unknown variable \"user\""),
            "{errors:?}"
        );
    }

    #[test]
    fn secrets_render_as_markers_and_data_cannot_forge_one() {
        use crate::secrets::{CLOSE, OPEN, marker};
        let forged = format!("{OPEN}TOKEN{CLOSE}");
        let out = render(
            json!({
                "auth": "Bearer {{ secrets.TOKEN }}",
                "echo": "{{ input.evil }}",
                "whole": "{{ input }}",
                "filtered": "{{ secrets.TOKEN | upper }}",
                "passed": {"$expr": "input"},
            }),
            json!({"evil": forged, forged.clone(): 1}),
        )
        .expect("renders");
        let passed = out["passed"].to_string();
        assert!(
            !passed.contains(OPEN) && !passed.contains(CLOSE),
            "{passed:?}"
        );
        assert_eq!(out["auth"], format!("Bearer {}", marker("TOKEN")));
        let echoed = out["echo"].as_str().expect("string");
        assert!(
            !echoed.contains(OPEN) && !echoed.contains(CLOSE),
            "{echoed:?}"
        );
        let whole = out["whole"].as_str().expect("string");
        assert!(!whole.contains(OPEN), "{whole:?}");
        let filtered = out["filtered"].as_str().expect("string");
        assert!(!filtered.contains(OPEN), "{filtered:?}");
    }

    #[test]
    fn secrets_must_be_named_properly() {
        for bad in ["{{ secrets }}", "{{ secrets['a-b'] }}"] {
            let mut templates = Templates::new();
            let mut errors = Vec::new();
            Templated::compile(&json!(bad), "inputs", "n", &mut templates, &mut errors);
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
        }
    }
}
