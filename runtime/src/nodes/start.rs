//! `start`: the entry of a journey. The execution's input becomes `input.*`.
//! Its config declares how the journey may be triggered (API path, cron
//! schedule, event); the triggers themselves run elsewhere.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::compile::Compiler;
use crate::ids::NodeId;
use crate::triggers::{EventTrigger, ScheduleTrigger, SegmentTrigger};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartConfig {
    /// Ways this journey can be entered besides a direct start call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
}

/// A declared trigger: the kinds and configurations of trigger instances
/// ([`crate::triggers`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// `POST /trigger/{path}` starts the journey with the request body as input.
    Api {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    /// A cron schedule in a time zone.
    Schedule(ScheduleTrigger),
    /// An event (from the API or Kafka) whose condition holds.
    Event(EventTrigger),
    /// A subject entering (or leaving) a segment.
    Segment(SegmentTrigger),
}

pub(crate) fn compile(config: &StartConfig, node: &NodeId, c: &mut Compiler<'_>) {
    for (i, trigger) in config.triggers.iter().enumerate() {
        let field = |f: &str| format!("config.triggers[{i}].{f}");
        let problems = match trigger {
            Trigger::Api { path: Some(path) } => {
                let ok = !path.is_empty()
                    && path
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(&b));
                if !ok {
                    c.error(
                        node,
                        field("path"),
                        format!("{path:?} is not a valid path (letters, digits, / _ - .)"),
                    );
                }
                continue;
            }
            Trigger::Api { path: None } => continue,
            Trigger::Schedule(s) => s.problems(),
            Trigger::Event(e) => e.problems(),
            Trigger::Segment(s) => s.problems(),
        };
        for p in problems {
            c.error(node, field(&p.field), p.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::nodes::testing::{errors_of, linear};

    #[test]
    fn bad_triggers_are_named() {
        let wf = linear(
            json!({"type": "start", "config": {"triggers": [
                {"kind": "schedule", "cron": "61 * * * *", "timezone": "Nowhere/City"},
                {"kind": "event", "event": "", "condition": "event.payload.x >"},
                {"kind": "api", "path": "has space"},
                {"kind": "schedule", "cron": "0 9 * * MON", "timezone": "Europe/Paris"},
            ]}}),
            vec![],
        );
        let fields = errors_of(&wf);
        assert_eq!(
            fields,
            [
                "start:config.triggers[0].cron",
                "start:config.triggers[0].timezone",
                "start:config.triggers[1].event",
                "start:config.triggers[1].condition",
                "start:config.triggers[2].path",
            ]
        );
    }
}
