//! The registry: the trigger and action definitions workflows are built
//! from, as data.
//!
//! A [`Definition`] names a kind (action or trigger), says what it is for
//! the builder's palette (title, description, icon, category), gives the
//! JSON Schema of its inputs (and of its output), defaults for inputs left
//! out, and, for a custom action, how it runs ([`Run`]: an HTTP call
//! template, or a Kafka topic). The built-in actions and triggers are
//! definitions too ([`builtin_definitions`]); a namespace adds its own and
//! may disable any of them (the store keeps those).
//!
//! A [`Registry`] is what a workflow is compiled against: the action types
//! it may use, each with its validator. Unknown and disabled action types
//! are validation errors, never silently skipped, and so are inputs that do
//! not match the schema — except where a value is a template or an
//! expression, whose value is only known at send time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::template::{Templated, Templates, is_template};

/// What kind of channel an action sends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Http,
    Kafka,
    Email,
    Sms,
    Push,
    Chat,
    Custom,
}

impl Channel {
    /// Messages to a person: these wait out quiet hours by default.
    pub fn is_messaging(self) -> bool {
        matches!(
            self,
            Channel::Email | Channel::Sms | Channel::Push | Channel::Chat
        )
    }
}

/// A definition's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Action,
    Trigger,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Action => "action",
            Kind::Trigger => "trigger",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "action" => Some(Kind::Action),
            "trigger" => Some(Kind::Trigger),
            _ => None,
        }
    }
}

/// A trigger or action definition, as stored and as the API takes it (the
/// name is the entry's, not the document's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub kind: Kind,
    /// What the palette shows (at most 200 characters).
    #[serde(default)]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// An icon name for the builder (`mail`, `webhook`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// The palette group (`messaging`, `crm`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub category: String,
    /// The JSON Schema of the inputs (an action's `config.inputs`, a
    /// trigger's configuration): an object schema.
    #[serde(default = "object_schema")]
    pub inputs: Value,
    /// The JSON Schema of what the action outputs (`nodes.<id>.output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Inputs a node gets when it leaves them out.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub defaults: Map<String, Value>,
    /// How a custom action runs (required for one; built-ins have their
    /// own providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
    /// How long one try may take when a node does not say (`"30s"`; at
    /// most `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

fn object_schema() -> Value {
    json!({"type": "object"})
}

/// How a custom action runs. Its strings may be templates over `inputs`
/// (the node's rendered inputs) and `secrets` (`{{ secrets.CRM_TOKEN }}`,
/// resolved at send time, never stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Run {
    /// An HTTP call, sent like `http.request` (the egress policy, the
    /// `Idempotency-Key` header, the response as output). Without `body`,
    /// the inputs are the JSON body (except for GET and HEAD).
    Http {
        #[serde(default = "post")]
        method: String,
        url: String,
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        headers: Map<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<Value>,
    },
    /// A record published to a Kafka topic, like `kafka.publish`: the
    /// inputs are its value.
    Kafka {
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
}

fn post() -> String {
    "POST".into()
}

/// The names a custom action's `run` templates may refer to.
pub const RUN_ROOTS: [&str; 1] = ["inputs"];

/// HTTP methods an `http.request` may use.
pub const HTTP_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The longest a definition's name may be.
pub const MAX_NAME_LEN: usize = 100;

/// A definition's name: two or more dot-separated parts of lower-case
/// letters, digits and `_`, each starting with a letter (`crm.update_contact`).
pub fn is_valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.split('.').count() >= 2
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// First parts of names kept for built-in definitions, today's and
/// tomorrow's: a custom action can never shadow one.
pub const RESERVED_PREFIXES: [&str; 8] = [
    "http.", "kafka.", "email.", "sms.", "push.", "chat.", "trigger.", "sojourn.",
];

/// Whether a name is a built-in's, or kept for built-ins.
pub fn is_reserved(name: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
        || builtin_definitions().iter().any(|(n, _)| *n == name)
}

/// A problem with a definition: the field (`inputs`, `run.http.url`) and
/// what is wrong.
pub type Problem = (String, String);

impl Definition {
    /// Every problem of a custom definition named `name`.
    pub fn problems(&self, name: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| problems.push((field.to_owned(), message));
        if !is_valid_name(name) {
            problem(
                "name",
                format!(
                    "{name:?}: two or more dot-separated parts of lower-case letters, digits and _ (crm.update_contact), at most {MAX_NAME_LEN} characters"
                ),
            );
        }
        if is_reserved(name) {
            problem(
                "name",
                format!(
                    "{name:?}: names starting with {} are the built-ins'",
                    RESERVED_PREFIXES.join(", ")
                ),
            );
        }
        for (field, text, max) in [
            ("title", self.title.as_str(), 200),
            ("description", self.description.as_str(), 4000),
            ("category", self.category.as_str(), 100),
            ("icon", self.icon.as_deref().unwrap_or(""), 200),
        ] {
            if text.chars().count() > max {
                problem(field, format!("at most {max} characters"));
            }
        }
        match schema_validator(&self.inputs) {
            Err(e) => problem("inputs", e),
            Ok(v) => {
                if self.inputs.get("type").and_then(Value::as_str) != Some("object") {
                    problem(
                        "inputs",
                        "must be an object schema (\"type\": \"object\")".into(),
                    );
                } else {
                    // Defaults are checked as values of their properties: a
                    // missing required input is not a default's problem.
                    for (path, message) in check_defaults(&v, &self.defaults) {
                        problem(&format!("defaults{path}"), message);
                    }
                }
            }
        }
        if let Some(output) = &self.output
            && let Err(e) = schema_validator(output)
        {
            problem("output", e);
        }
        if let Some(t) = &self.timeout {
            match crate::time::parse_duration(t) {
                Err(e) => problem("timeout", e),
                Ok(d) if d <= chrono::Duration::zero() || d > chrono::Duration::hours(1) => {
                    problem("timeout", "must be longer than zero and at most 1h".into())
                }
                Ok(_) => {}
            }
        }
        match (self.kind, &self.run) {
            (Kind::Action, None) => problem(
                "run",
                "a custom action needs a way to run: {\"http\": {…}} or {\"kafka\": {…}}".into(),
            ),
            (Kind::Trigger, Some(_)) => problem("run", "only actions run".into()),
            (Kind::Action, Some(run)) => {
                for (field, message) in run.problems() {
                    problem(&field, message);
                }
            }
            (Kind::Trigger, None) => {}
        }
        problems
    }
}

impl Run {
    /// The built-in action this one is sent as.
    pub fn via(&self) -> &'static str {
        match self {
            Run::Http { .. } => "http.request",
            Run::Kafka { .. } => "kafka.publish",
        }
    }

    /// The templated inputs of [`Run::via`], before the node's own inputs
    /// are added as the body or value.
    pub(crate) fn template(&self) -> Value {
        match self {
            Run::Http {
                method,
                url,
                headers,
                body,
            } => {
                let mut t = json!({"method": method, "url": url});
                if !headers.is_empty() {
                    t["headers"] = Value::Object(headers.clone());
                }
                if let Some(body) = body {
                    t["body"] = body.clone();
                }
                t
            }
            Run::Kafka { topic, key } => {
                let mut t = json!({"topic": topic});
                if let Some(key) = key {
                    t["key"] = Value::String(key.clone());
                }
                t
            }
        }
    }

    /// Where the node's rendered inputs go, unless `run` says otherwise.
    pub(crate) fn inputs_into(&self) -> Option<&'static str> {
        match self {
            Run::Http { method, body, .. } => {
                let m = method.to_ascii_uppercase();
                (body.is_none() && m != "GET" && m != "HEAD").then_some("body")
            }
            Run::Kafka { .. } => Some("value"),
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let prefix = match self {
            Run::Http {
                method,
                url,
                headers,
                ..
            } => {
                if !is_template(method)
                    && !HTTP_METHODS.contains(&method.to_ascii_uppercase().as_str())
                {
                    problems.push((
                        "run.http.method".into(),
                        format!(
                            "{method:?} is not an HTTP method ({})",
                            HTTP_METHODS.join(", ")
                        ),
                    ));
                }
                if url.trim().is_empty() {
                    problems.push(("run.http.url".into(), "must not be empty".into()));
                } else if !has_literal_origin(url) {
                    problems.push((
                        "run.http.url".into(),
                        format!("{url:?}: must start with http:// or https:// and a host, then /, before any template (the host is the definition's, never an input's)"),
                    ));
                }
                for (k, v) in headers {
                    let field = format!("run.http.headers.{k}");
                    if !is_header_name(k) {
                        problems.push((field, "is not a header name".into()));
                    } else if !v.is_string() {
                        problems.push((field, "must be a string".into()));
                    } else if crate::secrets::is_sensitive_header(k)
                        && !v
                            .as_str()
                            .is_some_and(|s| s.contains("{{") && s.contains("secrets."))
                    {
                        problems.push((
                            field,
                            "a credential is referenced by name ({{ secrets.NAME }}), never written into a definition".into(),
                        ));
                    }
                }
                "run.http"
            }
            Run::Kafka { topic, .. } => {
                if topic.trim().is_empty() {
                    problems.push(("run.kafka.topic".into(), "must not be empty".into()));
                } else if topic.starts_with("sojourn.") || topic.starts_with("__") {
                    problems.push((
                        "run.kafka.topic".into(),
                        format!("{topic:?}: topics sojourn.* and __* are the system's"),
                    ));
                }
                "run.kafka"
            }
        };
        let template = self.template();
        if has_expr(&template) {
            problems.push((
                prefix.into(),
                "a definition's templates are {{ … }} over inputs; $expr is for workflows".into(),
            ));
            return problems;
        }
        let mut templates = Templates::with_roots(&RUN_ROOTS);
        let mut errors = Vec::new();
        Templated::compile(&template, prefix, "run", &mut templates, &mut errors);
        problems.extend(errors);
        problems
    }
}

/// An HTTP header name: one or more of RFC 9110's token characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether a URL template's scheme, host and the `/` after it are literal
/// text, before any template.
fn has_literal_origin(url: &str) -> bool {
    // Up to the first brace: `{{ }}`, `{% %}` and `{# #}` all start so.
    let literal = match url.find('{') {
        Some(i) => &url[..i],
        None => url,
    };
    let Some(rest) = literal
        .strip_prefix("https://")
        .or_else(|| literal.strip_prefix("http://"))
    else {
        return false;
    };
    match rest.find('/') {
        Some(slash) => slash > 0,
        // No template at all: a URL without a path is fine.
        None => !rest.is_empty() && literal.len() == url.len(),
    }
}

/// Whether a value holds a `{"$expr": …}` anywhere.
fn has_expr(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("$expr") || m.values().any(has_expr),
        Value::Array(a) => a.iter().any(has_expr),
        _ => false,
    }
}

/// A JSON Schema's validator, or what is wrong with the schema.
fn schema_validator(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() {
        return Err("must be a JSON Schema object".into());
    }
    jsonschema::options()
        .should_validate_formats(false)
        .build(schema)
        .map_err(|e| format!("not a valid JSON Schema: {e}"))
}

/// The problems of defaults against an input schema, as (path below
/// `defaults`, message): a missing required input is not a default's
/// problem, and a template is only known at send time.
fn check_defaults(
    v: &jsonschema::Validator,
    defaults: &Map<String, Value>,
) -> Vec<(String, String)> {
    let value = Value::Object(defaults.clone());
    v.iter_errors(&value)
        .filter(|e| !matches!(e.kind(), ValidationErrorKind::Required { .. }))
        // An alternative of required inputs (`one of text, html`) is the
        // node's to satisfy, not the defaults'.
        .filter(|e| !only_required(e))
        .filter(|e| !excused(&value, e))
        .map(|e| (dotted(e.instance_path()), e.to_string()))
        .collect()
}

/// An `anyOf`/`oneOf` whose every branch failed only on required keys.
fn only_required(e: &jsonschema::ValidationError<'_>) -> bool {
    match e.kind() {
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            context.iter().all(|branch| {
                branch
                    .iter()
                    .all(|e| matches!(e.kind(), ValidationErrorKind::Required { .. }))
            })
        }
        _ => false,
    }
}

/// A JSON pointer as the fields of our error messages: `.a.b[2]`.
fn dotted(path: &jsonschema::paths::Location) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            LocationSegment::Property(p) => {
                out.push('.');
                out.push_str(&p);
            }
            LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// One action type, ready to check a node's inputs against.
#[derive(Debug)]
pub struct ActionSpec {
    pub name: String,
    pub channel: Channel,
    /// The registry version (custom actions; built-ins have none).
    pub version: Option<i32>,
    /// The timeout a node gets when it does not set one, in milliseconds.
    pub default_timeout_ms: u64,
    /// Inputs a node gets when it leaves them out.
    pub defaults: Map<String, Value>,
    /// How a custom action runs.
    pub run: Option<Run>,
    validator: jsonschema::Validator,
}

impl ActionSpec {
    fn new(
        name: &str,
        channel: Channel,
        version: Option<i32>,
        def: &Definition,
    ) -> Result<ActionSpec, String> {
        let default_timeout_ms = match &def.timeout {
            Some(t) => crate::time::parse_duration(t)?
                .num_milliseconds()
                .unsigned_abs(),
            None => 30_000,
        };
        Ok(ActionSpec {
            name: name.to_owned(),
            channel,
            version,
            default_timeout_ms,
            defaults: def.defaults.clone(),
            run: def.run.clone(),
            validator: schema_validator(&def.inputs)?,
        })
    }

    /// The problems of a node's inputs (defaults already added), as
    /// (field below `config.inputs`, message). A value that is a template
    /// or an expression is only known when sent: what it breaks is not
    /// counted, and neither is an alternative (`anyOf`) that one of them
    /// could satisfy.
    pub fn input_problems(&self, inputs: &Map<String, Value>) -> Vec<(String, String)> {
        let instance = Value::Object(inputs.clone());
        self.validator
            .iter_errors(&instance)
            .filter(|e| !excused(&instance, e))
            .map(|e| self.describe(&e))
            .collect()
    }

    fn describe(&self, e: &jsonschema::ValidationError<'_>) -> (String, String) {
        let at = dotted(e.instance_path());
        match e.kind() {
            ValidationErrorKind::Required { property } => {
                let p = property.as_str().unwrap_or_default();
                (
                    format!("{at}.{p}"),
                    format!("{} needs input {p:?}", self.name),
                )
            }
            ValidationErrorKind::AnyOf { context }
            | ValidationErrorKind::OneOfNotValid { context }
                if only_required(e) =>
            {
                let names: Vec<String> = context
                    .iter()
                    .flatten()
                    .filter_map(|e| match e.kind() {
                        ValidationErrorKind::Required { property } => {
                            property.as_str().map(str::to_owned)
                        }
                        _ => None,
                    })
                    .collect();
                (
                    at,
                    format!("{} needs one of {}", self.name, names.join(", ")),
                )
            }
            _ => (at, e.to_string()),
        }
    }
}

/// Whether an error is about a value only known at send time.
fn excused(instance: &Value, e: &jsonschema::ValidationError<'_>) -> bool {
    let mut v = instance;
    for segment in e.instance_path().iter() {
        if is_deferred(v) {
            return true;
        }
        v = match (segment, v) {
            (LocationSegment::Property(p), Value::Object(m)) => match m.get(p.as_ref()) {
                Some(v) => v,
                None => return false,
            },
            (LocationSegment::Index(i), Value::Array(a)) => match a.get(i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    if is_deferred(v) {
        return true;
    }
    match e.kind() {
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            context
                .iter()
                .any(|branch| branch.iter().all(|b| excused(instance, b)))
        }
        _ => false,
    }
}

/// A template or an expression.
fn is_deferred(v: &Value) -> bool {
    match v {
        Value::String(s) => is_template(s),
        Value::Object(m) => m.len() == 1 && m.contains_key("$expr"),
        _ => false,
    }
}

/// The action types a workflow may use: the built-ins and a namespace's
/// own, each with its validator. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    actions: BTreeMap<String, Arc<ActionSpec>>,
    /// Disabled in this namespace: refused with that reason.
    disabled: BTreeSet<String>,
    /// Inputs are not checked against the schemas: a version published
    /// before is compiled to run, not judged again (a schema may have
    /// grown stricter since).
    pub(crate) lenient: bool,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

static BUILTIN: LazyLock<Registry> = LazyLock::new(|| {
    let mut actions = BTreeMap::new();
    for (name, def) in builtin_definitions() {
        if def.kind != Kind::Action {
            continue;
        }
        let channel = match *name {
            "http.request" => Channel::Http,
            "kafka.publish" => Channel::Kafka,
            "email.send" => Channel::Email,
            "sms.send" => Channel::Sms,
            "push.send" => Channel::Push,
            _ => Channel::Chat,
        };
        // The built-ins' schemas are ours and valid (a unit test builds them).
        if let Ok(spec) = ActionSpec::new(name, channel, None, def) {
            actions.insert((*name).to_owned(), Arc::new(spec));
        }
    }
    Registry {
        actions,
        disabled: BTreeSet::new(),
        lenient: false,
    }
});

impl Registry {
    /// The built-in actions.
    pub fn builtin() -> Registry {
        BUILTIN.clone()
    }

    /// The same action types, for compiling a version that was validated
    /// when it was published: its inputs are not checked again.
    pub fn to_run(mut self) -> Registry {
        self.lenient = true;
        self
    }

    /// Adds a custom action at `version`. The definition was checked when
    /// it was stored; what is wrong with it now is the error.
    pub fn add(&mut self, name: &str, version: i32, def: &Definition) -> Result<(), String> {
        if def.kind != Kind::Action || def.run.is_none() {
            return Err(format!("{name} is not a custom action"));
        }
        if is_reserved(name) {
            return Err(format!("{name} is a built-in name"));
        }
        let spec = ActionSpec::new(name, Channel::Custom, Some(version), def)
            .map_err(|e| format!("{name} v{version}: {e}"))?;
        self.disabled.remove(name);
        self.actions.insert(name.to_owned(), Arc::new(spec));
        Ok(())
    }

    /// Disables an action type: a workflow using it is refused.
    pub fn disable(&mut self, name: &str) {
        self.actions.remove(name);
        self.disabled.insert(name.to_owned());
    }

    pub fn get(&self, name: &str) -> Option<&ActionSpec> {
        self.actions.get(name).map(Arc::as_ref)
    }

    pub fn is_disabled(&self, name: &str) -> bool {
        self.disabled.contains(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.actions.keys().map(String::as_str)
    }
}

/// The built-in definitions, actions then triggers.
pub fn builtin_definitions() -> &'static [(&'static str, Definition)] {
    static DEFS: LazyLock<Vec<(&'static str, Definition)>> = LazyLock::new(builtins);
    &DEFS
}

fn action(title: &str, icon: &str, category: &str, description: &str, inputs: Value) -> Definition {
    Definition {
        kind: Kind::Action,
        title: title.into(),
        description: description.into(),
        icon: Some(icon.into()),
        category: category.into(),
        inputs,
        output: None,
        defaults: Map::new(),
        run: None,
        timeout: None,
    }
}

fn trigger(title: &str, icon: &str, description: &str, inputs: Value) -> Definition {
    Definition {
        kind: Kind::Trigger,
        title: title.into(),
        description: description.into(),
        icon: Some(icon.into()),
        category: "triggers".into(),
        inputs,
        output: None,
        defaults: Map::new(),
        run: None,
        timeout: None,
    }
}

fn builtins() -> Vec<(&'static str, Definition)> {
    let text = json!({"type": "string"});
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    // `http.request` leaves out header values that are not strings.
    let any_headers = json!({"type": "object", "description": "Header name to value (a string)"});
    let provider = json!({"description": "A configured provider's name, or a list in failover order",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]});
    let category = json!({"type": "string", "description": "The message category (marketing, transactional, or a topic); preferences and caps read it"});
    let required_any = |names: &[&str]| json!({"anyOf": names.iter().map(|n| json!({"required": [n]})).collect::<Vec<_>>()});
    let mut http = action(
        "HTTP request",
        "webhook",
        "integrations",
        "An HTTP call: method, url, headers, JSON body. Sent with an Idempotency-Key header.",
        json!({"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "description": "http:// or https://"},
            "method": {"type": "string", "default": "POST", "description": "GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS"},
            "headers": any_headers,
            "body": {"description": "Any JSON, sent as JSON"},
        }}),
    );
    http.output = Some(json!({"type": "object", "properties": {
        "status": {"type": "integer"}, "body": {}, "truncated": {"type": "boolean"}}}));
    let kafka = action(
        "Publish to Kafka",
        "kafka",
        "integrations",
        "Publish a record to a Kafka topic: topic, key, value, headers.",
        json!({"type": "object", "required": ["topic", "value"], "properties": {
            "topic": text, "key": {"description": "A string (other values are sent as their JSON text)"},
            "value": {"description": "Any JSON"}, "headers": strings,
        }}),
    );
    let email = action(
        "Send email",
        "mail",
        "messaging",
        "An email: to (an address or a list), subject, text and/or html; optional from, reply_to, attachments (by URL: url, filename, content_type), headers, provider (a configured provider's name, or a list in failover order).",
        json!({"type": "object", "required": ["to", "subject"], "allOf": [required_any(&["text", "html"])],
        "properties": {
            "to": {"description": "An address, a list of addresses, or \"subject\" (the profile's)",
                "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "subject": text, "text": text, "html": text, "from": text, "reply_to": text,
            "attachments": {"type": "array", "items": {"type": "object", "required": ["url"],
                "properties": {"url": text, "filename": text, "content_type": text}}},
            "headers": strings, "provider": provider, "category": category,
        }}),
    );
    let sms = action(
        "Send SMS",
        "sms",
        "messaging",
        "A text message: to (E.164), body; optional from, provider.",
        json!({"type": "object", "required": ["to", "body"], "properties": {
            "to": {"type": "string", "description": "E.164 (+33612345678), or \"subject\""},
            "body": text, "from": text, "provider": provider, "category": category,
        }}),
    );
    let push = action(
        "Send push",
        "bell",
        "messaging",
        "A push notification: to (a device token; or token) or subscription (a browser's PushSubscription), with title, body and/or data; optional badge, sound, provider.",
        json!({"type": "object",
        "allOf": [required_any(&["to", "token", "subscription"]), required_any(&["title", "body", "data"])],
        "properties": {
            "to": text, "token": text, "subscription": {"type": "object"},
            "title": text, "body": text, "data": {"type": "object"},
            "badge": {"type": "integer", "minimum": 0}, "sound": text, "provider": provider, "category": category,
        }}),
    );
    let chat = action(
        "Send chat message",
        "chat",
        "messaging",
        "A chat message (Slack, Discord, Teams): text, blocks (Slack), embeds (Discord) or card (a Teams Adaptive Card); channel for a Slack bot; optional provider.",
        json!({"type": "object", "allOf": [required_any(&["text", "blocks", "embeds", "card"])],
        "properties": {
            "text": text, "blocks": {"type": "array"}, "embeds": {"type": "array"},
            "card": {"type": "object"}, "channel": text, "provider": provider, "category": category,
        }}),
    );
    let schema = |s: schemars::Schema| s.to_value();
    vec![
        ("http.request", http),
        ("kafka.publish", kafka),
        ("email.send", email),
        ("sms.send", sms),
        ("push.send", push),
        ("chat.send", chat),
        (
            "trigger.api",
            trigger(
                "API call",
                "api",
                "POST /v1/triggers/{id}/fire, or POST /v1/executions: the request body is the input.",
                schema(schemars::schema_for!(crate::triggers::ApiTrigger)),
            ),
        ),
        (
            "trigger.schedule",
            trigger(
                "Schedule",
                "clock",
                "A cron schedule read on a time zone's wall clock.",
                schema(schemars::schema_for!(crate::triggers::ScheduleTrigger)),
            ),
        ),
        (
            "trigger.event",
            trigger(
                "Kafka event",
                "event",
                "Each message of a Kafka topic starts (or is sent to, or updates a profile for) an execution.",
                schema(schemars::schema_for!(crate::triggers::EventTrigger)),
            ),
        ),
        (
            "trigger.segment",
            trigger(
                "Segment entry",
                "users",
                "A profile entering (or leaving) a segment starts an execution for it.",
                schema(schemars::schema_for!(crate::triggers::SegmentTrigger)),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(run: Value, inputs: Value) -> Definition {
        serde_json::from_value(json!({
            "kind": "action", "title": "Update contact", "inputs": inputs, "run": run,
        }))
        .expect("parses")
    }

    #[test]
    fn every_builtin_compiles() {
        let r = Registry::builtin();
        for (name, def) in builtin_definitions() {
            if def.kind == Kind::Action {
                assert!(r.get(name).is_some(), "{name}");
            } else {
                assert!(schema_validator(&def.inputs).is_ok(), "{name}");
            }
        }
        assert_eq!(r.names().count(), 6);
    }

    #[test]
    fn builtin_messages_name_the_input() {
        let r = Registry::builtin();
        let email = r.get("email.send").expect("email");
        let inputs = json!({"to": "x"});
        let problems = email.input_problems(inputs.as_object().expect("object"));
        assert_eq!(
            problems,
            [
                (
                    ".subject".to_owned(),
                    "email.send needs input \"subject\"".to_owned()
                ),
                (
                    "".to_owned(),
                    "email.send needs one of text, html".to_owned()
                ),
            ]
        );
        // Templates and expressions are only known at send time.
        let inputs = json!({"to": {"$expr": "input.to"}, "subject": "{{ input.s }}", "html": "<p>",
            "attachments": "{{ input.files }}", "headers": {"X-A": "{{ input.a }}"}});
        assert!(
            email
                .input_problems(inputs.as_object().expect("object"))
                .is_empty()
        );
        let inputs = json!({"to": 42, "subject": "s", "text": "t", "attachments": "a.pdf", "headers": {"X-A": 1}});
        let fields: Vec<String> = email
            .input_problems(inputs.as_object().expect("object"))
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, [".attachments", ".headers.X-A", ".to"]);
    }

    #[test]
    fn custom_definitions_are_checked_field_by_field() {
        let ok = custom(
            json!({"http": {"url": "https://crm.example.com/contacts/{{ inputs.id }}", "method": "PATCH",
                "headers": {"Authorization": "Bearer {{ secrets.CRM_TOKEN }}"}}}),
            json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}),
        );
        assert!(
            ok.problems("crm.update_contact").is_empty(),
            "{:?}",
            ok.problems("crm.update_contact")
        );

        let fields = |d: &Definition, name: &str| -> Vec<String> {
            d.problems(name).into_iter().map(|(f, _)| f).collect()
        };
        assert_eq!(fields(&ok, "email.send"), ["name"]);
        assert_eq!(fields(&ok, "Crm"), ["name"]);
        let bad = custom(
            json!({"http": {"url": "{{ input.id }}", "method": "FETCH", "headers": {"X": 1}}}),
            json!({"type": "array"}),
        );
        assert_eq!(
            fields(&bad, "crm.x"),
            // The URL's host is the definition's: a template cannot be all of it.
            [
                "inputs",
                "run.http.method",
                "run.http.url",
                "run.http.headers.X",
                "run.http.url"
            ]
        );
        let bad = custom(
            json!({"kafka": {"topic": " "}}),
            json!({"type": "object", "properties": {"n": {"type": "nope"}}}),
        );
        assert_eq!(fields(&bad, "crm.x"), ["inputs", "run.kafka.topic"]);
        let mut bad = custom(
            json!({"http": {"url": "https://x/", "body": {"n": {"$expr": "inputs.id"}}}}),
            json!({"type": "object"}),
        );
        assert_eq!(fields(&bad, "crm.x"), ["run.http"]);
        bad.run = None;
        bad.timeout = Some("2h".into());
        bad.defaults.insert("n".into(), json!(1));
        bad.inputs = json!({"type": "object", "properties": {"n": {"type": "string"}}});
        assert_eq!(fields(&bad, "crm.x"), ["defaults.n", "timeout", "run"]);
    }

    #[test]
    fn names_urls_headers_and_topics_that_could_do_harm_are_refused() {
        let http = |url: &str, headers: Value| {
            custom(
                json!({"http": {"url": url, "headers": headers}}),
                json!({"type": "object"}),
            )
        };
        let fields = |d: &Definition, name: &str| -> Vec<String> {
            d.problems(name).into_iter().map(|(f, _)| f).collect()
        };
        let ok = http("https://crm.example.com/v1/{{ inputs.id }}", json!({}));
        assert!(fields(&ok, "crm.sync").is_empty());
        assert!(fields(&http("https://crm.example.com", json!({})), "crm.sync").is_empty());
        // Names kept for built-ins, today's and tomorrow's.
        for name in ["email.send", "email.digest", "trigger.webhook", "http.get"] {
            assert_eq!(fields(&ok, name), ["name"], "{name}");
        }
        // The host is never an input's.
        for url in [
            "https://{{ inputs.host }}/x",
            "https://crm.example.com{{ inputs.path }}",
            "https://{#/#}{{ inputs.host }}/x",
            "https://crm.example.com?x={{ inputs.x }}",
            "http://",
            "{{ inputs.url }}",
        ] {
            assert_eq!(
                fields(&http(url, json!({})), "crm.sync"),
                ["run.http.url"],
                "{url}"
            );
        }
        // A credential is a reference, never a value in the definition.
        let literal = http(
            "https://crm.example.com/",
            json!({"Authorization": "Bearer abc123"}),
        );
        assert_eq!(
            fields(&literal, "crm.sync"),
            ["run.http.headers.Authorization"]
        );
        for name in ["X Y", "X(1)", "a/b", ""] {
            let bad_name = http("https://crm.example.com/", json!({name: "1"}));
            assert_eq!(
                fields(&bad_name, "crm.sync"),
                [format!("run.http.headers.{name}")],
                "{name:?}"
            );
        }
        let spelled = http(
            "https://crm.example.com/",
            json!({"Authorization": "secrets.CRM"}),
        );
        assert_eq!(
            fields(&spelled, "crm.sync"),
            ["run.http.headers.Authorization"]
        );
        let system = custom(
            json!({"kafka": {"topic": "sojourn.actions.email"}}),
            json!({"type": "object"}),
        );
        assert_eq!(fields(&system, "crm.sync"), ["run.kafka.topic"]);
        let mut r = Registry::builtin();
        assert!(
            r.add("email.digest", 1, &ok).is_err(),
            "a reserved name never shadows"
        );
        // Defaults: a template is only known when sent.
        let mut d = custom(
            json!({"kafka": {"topic": "crm"}}),
            json!({"type": "object", "properties": {"tier": {"type": "integer"}}}),
        );
        d.defaults.insert("tier".into(), json!("{{ input.tier }}"));
        assert!(fields(&d, "crm.sync").is_empty());
    }

    #[test]
    fn a_namespace_registry_adds_and_disables() {
        let mut r = Registry::builtin();
        let def = custom(
            json!({"kafka": {"topic": "crm"}}),
            json!({"type": "object"}),
        );
        r.add("crm.sync", 3, &def).expect("adds");
        assert_eq!(r.get("crm.sync").and_then(|s| s.version), Some(3));
        assert_eq!(r.get("crm.sync").map(|s| s.channel), Some(Channel::Custom));
        r.disable("email.send");
        assert!(r.get("email.send").is_none());
        assert!(r.is_disabled("email.send"));
        assert!(
            Registry::builtin().get("email.send").is_some(),
            "the built-ins are untouched"
        );
    }
}
