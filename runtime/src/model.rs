//! The workflow document: the JSON a visual builder edits.
//!
//! ```json
//! {
//!   "key": "welcome-series",
//!   "settings": { "timezone": "Europe/Paris" },
//!   "nodes": [
//!     { "id": "start", "type": "start" },
//!     { "id": "hello", "type": "action", "config": { "action": "email.send", "inputs": { … } } },
//!     { "id": "done",  "type": "exit" }
//!   ],
//!   "edges": [
//!     { "from": "start", "to": "hello" },
//!     { "from": "hello", "to": "done", "branch": "success" }
//!   ]
//! }
//! ```
//!
//! Every node has an `id`, a `type` and a typed `config` (one struct per node
//! type, in `crate::nodes`); `name` and `position` are for the builder.
//! String fields that hold durations, time zones, expressions and templates
//! stay strings here so that [`crate::validate`] can report every bad one by
//! node and field; [`crate::CompiledWorkflow`] holds their parsed forms.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::ids::NodeId;
use crate::nodes::{
    ActionConfig, ConditionConfig, DelayConfig, ExitConfig, FunctionConfig, SplitConfig,
    StartConfig, WaitForEventConfig,
};

/// A whole workflow document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// A stable, human-chosen key (`"welcome-series"`) that API calls and the
    /// CLI use to name the workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Journey-level settings: time zone, subject, exit criteria, quiet hours,
    /// entry limits.
    #[serde(default)]
    pub settings: Settings,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub edges: Vec<Edge>,
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: NodeId,
    /// A label for people; the id is what the engine uses.
    pub name: Option<String>,
    /// Where the builder draws it.
    pub position: Option<Position>,
    pub kind: NodeKind,
}

/// A node's type and its typed configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Start(StartConfig),
    Action(ActionConfig),
    Delay(DelayConfig),
    WaitForEvent(WaitForEventConfig),
    Condition(ConditionConfig),
    Split(SplitConfig),
    Function(FunctionConfig),
    Exit(ExitConfig),
}

/// The node types, as written in a document's `type` field.
pub const NODE_TYPES: [&str; 8] = [
    "start",
    "action",
    "delay",
    "wait_for_event",
    "condition",
    "split",
    "function",
    "exit",
];

impl NodeKind {
    /// The `type` string of this node.
    pub fn type_name(&self) -> &'static str {
        match self {
            NodeKind::Start(_) => "start",
            NodeKind::Action(_) => "action",
            NodeKind::Delay(_) => "delay",
            NodeKind::WaitForEvent(_) => "wait_for_event",
            NodeKind::Condition(_) => "condition",
            NodeKind::Split(_) => "split",
            NodeKind::Function(_) => "function",
            NodeKind::Exit(_) => "exit",
        }
    }

    /// Parses a node's config for the given `type`. `config` may be absent
    /// for node types whose fields are all optional.
    pub fn from_parts(type_name: &str, config: Option<Value>) -> Result<NodeKind, String> {
        fn parse<T: serde::de::DeserializeOwned>(config: Option<Value>) -> Result<T, String> {
            let value = config.unwrap_or_else(|| Value::Object(Default::default()));
            serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    format!("config: {}", e.inner())
                } else {
                    format!("config.{path}: {}", e.inner())
                }
            })
        }
        Ok(match type_name {
            "start" => NodeKind::Start(parse(config)?),
            "action" => NodeKind::Action(parse(config)?),
            "delay" => NodeKind::Delay(parse(config)?),
            "wait_for_event" => NodeKind::WaitForEvent(parse(config)?),
            "condition" => NodeKind::Condition(parse(config)?),
            "split" => NodeKind::Split(parse(config)?),
            "function" => NodeKind::Function(parse(config)?),
            "exit" => NodeKind::Exit(parse(config)?),
            other => {
                return Err(format!(
                    "type: unknown node type {other:?} (expected one of {})",
                    NODE_TYPES.join(", ")
                ));
            }
        })
    }

    fn config_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            NodeKind::Start(c) => serde_json::to_value(c),
            NodeKind::Action(c) => serde_json::to_value(c),
            NodeKind::Delay(c) => serde_json::to_value(c),
            NodeKind::WaitForEvent(c) => serde_json::to_value(c),
            NodeKind::Condition(c) => serde_json::to_value(c),
            NodeKind::Split(c) => serde_json::to_value(c),
            NodeKind::Function(c) => serde_json::to_value(c),
            NodeKind::Exit(c) => serde_json::to_value(c),
        }
    }
}

/// The wire shape of a node: `{id, type, config, name?, position?}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: NodeId,
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position: Option<Position>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<Value>,
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let config = self
            .kind
            .config_value()
            .map_err(serde::ser::Error::custom)?;
        RawNode {
            id: self.id.clone(),
            type_name: self.kind.type_name().to_owned(),
            name: self.name.clone(),
            position: self.position,
            config: Some(config),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawNode::deserialize(deserializer)?;
        let kind = NodeKind::from_parts(&raw.type_name, raw.config)
            .map_err(|e| D::Error::custom(format!("node {:?}: {e}", raw.id.as_str())))?;
        Ok(Node {
            id: raw.id,
            name: raw.name,
            position: raw.position,
            kind,
        })
    }
}

impl JsonSchema for Node {
    fn schema_name() -> Cow<'static, str> {
        "Node".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let variant = |type_name: &str, config: Schema, required: bool| {
            let required_fields = if required {
                serde_json::json!(["id", "type", "config"])
            } else {
                serde_json::json!(["id", "type"])
            };
            serde_json::json!({
                "type": "object",
                "properties": {
                    "id": { "type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$" },
                    "type": { "const": type_name },
                    "name": { "type": "string" },
                    "position": generator_position(),
                    "config": config,
                },
                "required": required_fields,
                "additionalProperties": false,
            })
        };
        let variants = vec![
            variant("start", generator.subschema_for::<StartConfig>(), false),
            variant("action", generator.subschema_for::<ActionConfig>(), true),
            variant("delay", generator.subschema_for::<DelayConfig>(), true),
            variant(
                "wait_for_event",
                generator.subschema_for::<WaitForEventConfig>(),
                true,
            ),
            variant(
                "condition",
                generator.subschema_for::<ConditionConfig>(),
                true,
            ),
            variant("split", generator.subschema_for::<SplitConfig>(), true),
            variant(
                "function",
                generator.subschema_for::<FunctionConfig>(),
                true,
            ),
            variant("exit", generator.subschema_for::<ExitConfig>(), false),
        ];
        json_schema!({
            "description": "A node: its id, its type and the typed config of that type.",
            "oneOf": variants,
        })
    }
}

fn generator_position() -> Value {
    serde_json::json!({
        "type": "object",
        "properties": { "x": { "type": "number" }, "y": { "type": "number" } },
        "required": ["x", "y"],
    })
}

/// Where the builder draws a node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Position {
    pub x: f64,
    pub y: f64,
}

/// A directed edge. `branch` names which exit of `from` it leaves by
/// (`success`/`failure` for actions, `true`/`false` for conditions, …); nodes
/// with a single exit take no branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    pub from: NodeId,
    pub to: NodeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

/// Journey-level settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The default IANA time zone of executions that start without one.
    /// Quiet hours and `time_of_day` delays without their own zone use the
    /// execution's zone. Defaults to UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// A CEL expression that computes the subject key from the input when a
    /// start request does not give one, e.g. `input.user_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Events that end an execution wherever it is, sleeping ones included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_criteria: Vec<ExitCriterion>,
    /// A daily window in which messaging actions are not sent: an action
    /// reached inside it waits until the window ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// How many executions one subject may ever start (enforced when an
    /// execution is started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries_per_subject: Option<u32>,
    /// Frequency caps for this workflow's messages, over or instead of the
    /// namespace's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_caps: Option<crate::caps::CapSettings>,
    /// A conversion goal: an event for the execution's subject within a
    /// window after it entered. Reports count conversions per branch and
    /// against the holdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<Goal>,
    /// A share of entrants held out: they end at entry (outcome
    /// `holdout`), receiving nothing, to measure what the journey changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<Holdout>,
}

/// A conversion goal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    /// The event that counts as converting (sent with the subject as its
    /// key), e.g. `"order_placed"`.
    pub event: String,
    /// How long after entering it counts, e.g. `"7d"` (at most 365 days).
    pub within: String,
}

/// The holdout group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Holdout {
    /// The share of entrants held out, in percent (above 0, below 100).
    /// Chosen by a stable hash of the workflow's key and the subject (the
    /// execution's id without one): the same person is always in or out.
    pub percent: f64,
}

impl Holdout {
    /// Entrants whose holdout bucket (of 10,000) is below this are held
    /// out; `None` when the percent, to two decimals, is not above 0 and
    /// below 100.
    pub fn below(&self) -> Option<u64> {
        let below = (self.percent * 100.0).round();
        (self.percent.is_finite() && (1.0..10_000.0).contains(&below)).then_some(below as u64)
    }
}

/// An event that ends the journey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitCriterion {
    /// The event name, e.g. `"unsubscribed"`.
    pub event: String,
    /// An optional CEL condition over `event` (and `input`, `vars`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// The outcome recorded on the execution; defaults to `exited:<event>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// A daily quiet window, in the execution's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Start of the window, `HH:MM`.
    pub start: String,
    /// End of the window, `HH:MM`; may be earlier than `start` to wrap midnight.
    pub end: String,
}

impl Workflow {
    /// The workflow's own frequency caps, checked (none if they do not
    /// check: then it does not validate either).
    pub fn own_caps(&self) -> Vec<crate::caps::FrequencyCap> {
        self.settings
            .frequency_caps
            .as_ref()
            .and_then(|f| crate::caps::check_caps(&f.caps).ok())
            .unwrap_or_default()
    }

    /// Parses a workflow document. Structural problems (unknown node type,
    /// missing or misspelt field) come back as validation errors naming the
    /// node and the field.
    pub fn from_json(text: &str) -> Result<Workflow, Vec<crate::ValidationError>> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            vec![crate::ValidationError::document(
                "",
                format!("not valid JSON: {e}"),
            )]
        })?;
        Self::from_value(value)
    }

    /// Like [`Workflow::from_json`], from an already parsed value.
    pub fn from_value(mut value: Value) -> Result<Workflow, Vec<crate::ValidationError>> {
        use crate::ValidationError;
        let mut errors = Vec::new();
        // Nodes are parsed one by one so that every bad node is reported with
        // its id, not only the first.
        let nodes = match value.get_mut("nodes").map(Value::take) {
            Some(Value::Array(raw)) => {
                let mut nodes = Vec::with_capacity(raw.len());
                for (i, raw_node) in raw.into_iter().enumerate() {
                    let id = raw_node.get("id").and_then(Value::as_str).map(NodeId::from);
                    match serde_path_to_error::deserialize::<_, RawNode>(raw_node) {
                        Ok(raw) => match NodeKind::from_parts(&raw.type_name, raw.config) {
                            Ok(kind) => nodes.push(Node {
                                id: raw.id,
                                name: raw.name,
                                position: raw.position,
                                kind,
                            }),
                            Err(message) => {
                                let (field, message) = split_field(&message);
                                errors.push(ValidationError::node(i, id.as_ref(), field, message));
                            }
                        },
                        Err(e) => {
                            let path = e.path().to_string();
                            let field = if path == "." { String::new() } else { path };
                            errors.push(ValidationError::node(
                                i,
                                id.as_ref(),
                                &field,
                                e.inner().to_string(),
                            ));
                        }
                    }
                }
                nodes
            }
            Some(_) => {
                errors.push(ValidationError::document("nodes", "must be an array"));
                Vec::new()
            }
            None => {
                errors.push(ValidationError::document("nodes", "missing field"));
                Vec::new()
            }
        };
        if let Some(obj) = value.as_object_mut() {
            obj.insert("nodes".into(), Value::Array(Vec::new()));
        }
        let shell: Result<Workflow, _> = serde_path_to_error::deserialize(value);
        match shell {
            Ok(mut workflow) if errors.is_empty() => {
                workflow.nodes = nodes;
                Ok(workflow)
            }
            Ok(_) => Err(errors),
            Err(e) => {
                let path = e.path().to_string();
                errors.push(ValidationError::document(
                    if path == "." { "" } else { &path },
                    e.inner().to_string(),
                ));
                Err(errors)
            }
        }
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id.as_str() == id)
    }
}

/// Splits `"config.timeout: bad"` into `("config.timeout", "bad")`.
fn split_field(message: &str) -> (&str, String) {
    match message.split_once(": ") {
        Some((field, rest)) if !field.contains(' ') => (field, rest.to_owned()),
        _ => ("", message.to_owned()),
    }
}
