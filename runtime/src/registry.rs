//! The action registry: which action types exist, which inputs each needs,
//! and whether it is a message to a person (and so respects quiet hours).
//!
//! Unknown action types are a validation error, never silently skipped.

use std::collections::BTreeMap;

use serde::Serialize;

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

/// One action type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionSpec {
    pub name: String,
    pub channel: Channel,
    pub description: String,
    /// Inputs that must be present (each may be a template).
    pub required: Vec<String>,
    /// Groups of inputs of which at least one must be present
    /// (`email.send` needs `text` or `html`).
    pub one_of: Vec<Vec<String>>,
    /// The timeout a node gets when it does not set one, in milliseconds.
    pub default_timeout_ms: u64,
}

impl ActionSpec {
    fn builtin(
        name: &str,
        channel: Channel,
        description: &str,
        required: &[&str],
        one_of: &[&[&str]],
    ) -> ActionSpec {
        ActionSpec {
            name: name.to_owned(),
            channel,
            description: description.to_owned(),
            required: required.iter().map(|s| (*s).to_owned()).collect(),
            one_of: one_of
                .iter()
                .map(|g| g.iter().map(|s| (*s).to_owned()).collect())
                .collect(),
            default_timeout_ms: 30_000,
        }
    }

    /// A custom action type, e.g. `"crm.update_contact"`.
    pub fn custom(name: impl Into<String>, required: &[&str]) -> ActionSpec {
        ActionSpec {
            name: name.into(),
            channel: Channel::Custom,
            description: String::new(),
            required: required.iter().map(|s| (*s).to_owned()).collect(),
            one_of: Vec::new(),
            default_timeout_ms: 30_000,
        }
    }
}

/// The set of known action types.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Registry {
    actions: BTreeMap<String, ActionSpec>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

/// HTTP methods an `http.request` may use.
pub const HTTP_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl Registry {
    /// The built-in channels.
    pub fn builtin() -> Registry {
        let mut r = Registry {
            actions: BTreeMap::new(),
        };
        for spec in [
            ActionSpec::builtin(
                "http.request",
                Channel::Http,
                "An HTTP call: method, url, headers, JSON body. Sent with an Idempotency-Key header.",
                &["url"],
                &[],
            ),
            ActionSpec::builtin(
                "kafka.publish",
                Channel::Kafka,
                "Publish a record to a Kafka topic: topic, key, value, headers.",
                &["topic", "value"],
                &[],
            ),
            ActionSpec::builtin(
                "email.send",
                Channel::Email,
                "An email: to (an address or a list), subject, text and/or html; optional from, reply_to, attachments (by URL: url, filename, content_type), headers, provider (a configured provider's name, or a list in failover order).",
                &["to", "subject"],
                &[&["text", "html"]],
            ),
            ActionSpec::builtin(
                "sms.send",
                Channel::Sms,
                "A text message: to (E.164), body; optional from, provider.",
                &["to", "body"],
                &[],
            ),
            ActionSpec::builtin(
                "push.send",
                Channel::Push,
                "A push notification: to (a device token; or token) or subscription (a browser's PushSubscription), with title, body and/or data; optional badge, sound, provider.",
                &[],
                &[&["to", "token", "subscription"], &["title", "body", "data"]],
            ),
            ActionSpec::builtin(
                "chat.send",
                Channel::Chat,
                "A chat message (Slack, Discord, Teams): text, blocks (Slack), embeds (Discord) or card (a Teams Adaptive Card); channel for a Slack bot; optional provider.",
                &[],
                &[&["text", "blocks", "embeds", "card"]],
            ),
        ] {
            r.register(spec);
        }
        r
    }

    /// Adds or replaces an action type.
    pub fn register(&mut self, spec: ActionSpec) {
        self.actions.insert(spec.name.clone(), spec);
    }

    pub fn get(&self, name: &str) -> Option<&ActionSpec> {
        self.actions.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.actions.keys().map(String::as_str)
    }
}
