//! Trigger kinds, their configuration and their lifecycle: one typed model
//! shared by the start node (what a journey declares), the store (what a
//! trigger instance holds) and the API (what an operator creates and moves).
//!
//! A trigger instance lives through `init → active ⇄ paused → stopped →
//! destroyed` ([`TriggerState`], [`Move`]); only an active one fires. Its
//! configuration is a [`TriggerConfig`] of its [`TriggerKind`], checked by
//! [`TriggerConfig::parse`] with the field at fault named.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::expr::Expr;
use crate::schedule::{CronSchedule, Misfire};

/// A name that is not one of a closed set (a kind, a state).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

/// A configuration problem, with the field at fault as a path relative to
/// the configuration (`cron`, `input`, `grace_seconds`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and displayed name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<$name, UnknownName> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { what: $what, name: s.to_owned() }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownName;
            fn try_from(s: String) -> Result<$name, UnknownName> {
                s.parse()
            }
        }
    };
}

named_enum! {
    /// What fires a trigger.
    TriggerKind, "trigger kind" {
        /// `POST /trigger/{path}`.
        Api => "api",
        /// A cron schedule in a time zone.
        Schedule => "schedule",
        /// An event.
        Event => "event",
        /// A subject entering (or leaving) a segment.
        Segment => "segment",
    }
}

named_enum! {
    /// Where a trigger instance is in its lifecycle.
    TriggerState, "trigger state" {
        /// Created, not firing yet.
        Init => "init",
        /// Firing.
        Active => "active",
        /// Not firing; can be resumed.
        Paused => "paused",
        /// Not firing, for good; can be destroyed.
        Stopped => "stopped",
        /// Gone from listings; its API path is free again.
        Destroyed => "destroyed",
    }
}

/// A lifecycle move an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Activate,
    Pause,
    Resume,
    Stop,
    Destroy,
}

impl Move {
    /// The states the move starts from.
    pub const fn from(self) -> &'static [TriggerState] {
        use TriggerState::*;
        match self {
            Move::Activate => &[Init],
            Move::Pause => &[Active],
            Move::Resume => &[Paused],
            Move::Stop => &[Init, Active, Paused],
            Move::Destroy => &[Stopped],
        }
    }

    /// The state it ends in.
    pub const fn to(self) -> TriggerState {
        match self {
            Move::Activate | Move::Resume => TriggerState::Active,
            Move::Pause => TriggerState::Paused,
            Move::Stop => TriggerState::Stopped,
            Move::Destroy => TriggerState::Destroyed,
        }
    }

    /// A schedule's next fire once the move is made at `now`: the first
    /// instant after `now` when the trigger ends up active (fires missed
    /// while it was paused are not made up), none otherwise.
    pub fn next_fire(self, config: &TriggerConfig, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.to() != TriggerState::Active {
            return None;
        }
        config.next_fire(now)
    }
}

/// An `api` trigger: `POST /trigger/{path}` starts the workflow with the
/// request body as input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTrigger {
    /// Pin a published version instead of the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
}

/// A `schedule` trigger: a cron schedule read on a time zone's wall clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTrigger {
    /// Five fields (minute hour day-of-month month day-of-week), or six or
    /// seven with seconds first (and a year last).
    pub cron: String,
    /// An IANA zone (`Europe/Paris`); UTC when absent. A time that does not
    /// exist on the spring-forward day fires once, an hour later; a repeated
    /// time in autumn fires at its first occurrence (at both when the minute
    /// or hour field starts with `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The execution's input (an object); `trigger` is added to it:
    /// `{"id", "kind": "schedule", "scheduled_at"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// What to do with fires missed while no node ran the schedule:
    /// `once` (the latest of them), `all` (up to 100, the latest), `skip`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub misfire: Misfire,
    /// A fire this late or less is on time, whatever the misfire policy
    /// (default 60, at most 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_seconds: Option<u32>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// How late a fire may be and still count as on time, by default.
pub const DEFAULT_GRACE_SECONDS: u32 = 60;
/// The most `grace_seconds` may be: beyond, late fires follow the misfire
/// policy.
pub const MAX_GRACE_SECONDS: u32 = 3_600;

impl ScheduleTrigger {
    /// The schedule (checked by [`TriggerConfig::parse`]).
    pub fn schedule(&self) -> Result<CronSchedule, ConfigError> {
        let tz = match &self.timezone {
            None => chrono_tz::UTC,
            Some(tz) => {
                crate::time::parse_timezone(tz).map_err(|e| ConfigError::new("timezone", e))?
            }
        };
        CronSchedule::parse(&self.cron, tz).map_err(|e| ConfigError::new("cron", e))
    }

    /// How late a fire may be and still count as on time.
    pub fn grace(&self) -> Duration {
        Duration::seconds(i64::from(
            self.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS),
        ))
    }

    /// Every problem of the configuration.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = crate::time::parse_cron(&self.cron) {
            problems.push(ConfigError::new("cron", e));
        }
        if let Some(tz) = &self.timezone
            && let Err(e) = crate::time::parse_timezone(tz)
        {
            problems.push(ConfigError::new("timezone", e));
        }
        if self.grace_seconds.is_some_and(|g| g > MAX_GRACE_SECONDS) {
            problems.push(ConfigError::new(
                "grace_seconds",
                format!("must be at most {MAX_GRACE_SECONDS}"),
            ));
        }
        problems.extend(input_problem(&self.input));
        problems
    }
}

/// An `event` trigger: an event whose condition holds starts the workflow
/// (or, with `action: deliver`, is delivered to the executions waiting for
/// it). With a `topic`, every node consumes that Kafka topic for it, in the
/// trigger's own consumer group.
///
/// Expressions see `event`: `{name, key, payload, headers, topic,
/// partition, offset}` — `payload` is the message's JSON value, `key` its
/// key as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    /// The event's name.
    pub event: String,
    /// A CEL condition over `event` (`event.payload.total > 100`); an
    /// event for which it is false is passed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Input added to the event's payload (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The Kafka topic to consume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// `start` (default): start the workflow; `deliver`: deliver the event
    /// to executions waiting for it (wait nodes and exit criteria) under
    /// the correlation `key`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub action: EventAction,
    /// CEL: the correlation key (`event.payload.order_id`); the message
    /// key when absent. `deliver` needs one or the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// CEL: the subject of a started execution (`event.payload.user_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// CEL: what makes two messages the same start
    /// (`event.payload.event_id`); by default the message's topic,
    /// partition and offset, so a redelivered message starts nothing new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// With `action: profile`, CEL: the profile update in the event
    /// (`event.payload.traits`); the payload itself when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Where a new trigger starts reading its topic: `latest` (default:
    /// only what is produced from now on) or `earliest`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub from: StartFrom,
}

/// What an event trigger does with a matching event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    #[default]
    Start,
    Deliver,
    /// Update the `subject`'s profile with the payload (the body of
    /// `POST /v1/profiles/{subject}`: attributes, email, phone, push, chat,
    /// timezone, locale, preferences); the workflow is not started.
    Profile,
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    #[default]
    Latest,
    Earliest,
}

impl EventTrigger {
    /// Every problem of the configuration.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if self.event.trim().is_empty() {
            problems.push(ConfigError::new("event", "must not be empty"));
        }
        for (field, expr) in [
            ("condition", &self.condition),
            ("key", &self.key),
            ("subject", &self.subject),
            ("idempotency_key", &self.idempotency_key),
            ("profile", &self.profile),
        ] {
            if let Some(source) = expr {
                if let Err(e) = Expr::compile(source) {
                    problems.push(ConfigError::new(field, e));
                } else if source.contains("in_segment") {
                    problems.push(ConfigError::new(
                        field,
                        "in_segment() is not available in a trigger's expressions (ask it in a condition node)",
                    ));
                }
            }
        }
        if let Some(topic) = &self.topic
            && let Err(e) = check_user_topic(topic)
        {
            problems.push(ConfigError::new("topic", e));
        }
        problems.extend(input_problem(&self.input));
        if self.profile.is_some() && self.action != EventAction::Profile {
            problems.push(ConfigError::new(
                "profile",
                "only applies with action: profile",
            ));
        }
        if self.action == EventAction::Profile && self.subject.is_none() {
            problems.push(ConfigError::new(
                "subject",
                "a profile update needs the subject's expression (event.payload.user_id)",
            ));
        }
        problems
    }
}

/// The prefix of Sojourn's own topics (`sojourn.actions.email`, …): a
/// workflow neither publishes to nor triggers on them.
pub const RESERVED_TOPIC_PREFIX: &str = "sojourn.";

/// A topic a workflow may name: [`check_topic`], and not one of Sojourn's
/// own ([`RESERVED_TOPIC_PREFIX`]).
pub fn check_user_topic(topic: &str) -> Result<(), String> {
    check_topic(topic)?;
    if topic.starts_with(RESERVED_TOPIC_PREFIX) {
        return Err(format!(
            "{topic:?}: topics starting {RESERVED_TOPIC_PREFIX:?} are Sojourn's own"
        ));
    }
    Ok(())
}

/// A Kafka topic name: 1 to 249 of letters, digits, `.`, `_` and `-`, not
/// `.` or `..`.
pub fn check_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{topic:?} is not a Kafka topic name (1 to 249 letters, digits, . _ -)"
        ))
    }
}

fn input_problem(input: &Option<Value>) -> Option<ConfigError> {
    match input {
        None | Some(Value::Object(_)) => None,
        Some(_) => Some(ConfigError::new("input", "must be a JSON object")),
    }
}

/// A `segment` trigger: a subject entering (or, with `on: leave`,
/// leaving) the segment starts the workflow for that subject, once per
/// entry (the entry's id is the start's idempotency key). Only what happens
/// after the trigger is activated starts anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentTrigger {
    /// The segment's name.
    pub segment: String,
    /// `enter` (default) or `leave`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub on: SegmentOn,
    /// Input of each start (an object); `segment` is added:
    /// `{"name", "entered", "change"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

/// Which change of membership starts the workflow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SegmentOn {
    #[default]
    Enter,
    Leave,
}

impl SegmentTrigger {
    /// Every problem of the configuration.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let s = &self.segment;
        if s.is_empty()
            || s.len() > 200
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            problems.push(ConfigError::new(
                "segment",
                "must be a segment name (1 to 200 letters, digits, '-', '_', '.')",
            ));
        }
        problems.extend(input_problem(&self.input));
        problems
    }
}

/// A trigger instance's configuration, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerConfig {
    Api(ApiTrigger),
    Schedule(ScheduleTrigger),
    Event(EventTrigger),
    Segment(SegmentTrigger),
}

impl TriggerConfig {
    /// Reads and checks the configuration of a `kind` trigger; the error
    /// names the field at fault (relative to the configuration).
    pub fn parse(kind: TriggerKind, config: &Value) -> Result<TriggerConfig, ConfigError> {
        if !config.is_object() {
            return Err(ConfigError::new("", "must be a JSON object"));
        }
        let parsed = match kind {
            TriggerKind::Api => TriggerConfig::Api(read(config)?),
            TriggerKind::Schedule => TriggerConfig::Schedule(read(config)?),
            TriggerKind::Event => TriggerConfig::Event(read(config)?),
            TriggerKind::Segment => TriggerConfig::Segment(read(config)?),
        };
        match parsed.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(parsed),
        }
    }

    /// Every problem of the configuration.
    pub fn problems(&self) -> Vec<ConfigError> {
        match self {
            TriggerConfig::Api(c) => match c.version {
                Some(v) if v < 1 => vec![ConfigError::new("version", "must be 1 or more")],
                _ => Vec::new(),
            },
            TriggerConfig::Schedule(c) => c.problems(),
            TriggerConfig::Event(c) => c.problems(),
            TriggerConfig::Segment(c) => c.problems(),
        }
    }

    pub fn kind(&self) -> TriggerKind {
        match self {
            TriggerConfig::Api(_) => TriggerKind::Api,
            TriggerConfig::Schedule(_) => TriggerKind::Schedule,
            TriggerConfig::Event(_) => TriggerKind::Event,
            TriggerConfig::Segment(_) => TriggerKind::Segment,
        }
    }

    /// The configuration as stored and shown (without its kind).
    pub fn to_value(&self) -> Value {
        let value = match self {
            TriggerConfig::Api(c) => serde_json::to_value(c),
            TriggerConfig::Schedule(c) => serde_json::to_value(c),
            TriggerConfig::Event(c) => serde_json::to_value(c),
            TriggerConfig::Segment(c) => serde_json::to_value(c),
        };
        // Plain structs of strings, numbers and JSON values.
        value.unwrap_or(Value::Null)
    }

    /// A schedule's first fire after `after`; none for other kinds.
    pub fn next_fire(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.upcoming(after, 1).into_iter().next()
    }

    /// A schedule's next `n` fires after `after`; none for other kinds.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        match self {
            TriggerConfig::Schedule(c) => c
                .schedule()
                .map(|s| s.upcoming(after, n))
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// Reads a configuration struct, naming the field at fault.
fn read<T: serde::de::DeserializeOwned>(config: &Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(config).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // A missing field is reported at its parent: name the field itself.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_owned());
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name,
            (".", None) => String::new(),
            (_, Some(name)) => format!("{path}.{name}"),
            (_, None) => path,
        };
        ConfigError::new(field, message)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kinds_and_states_read_back_by_name() {
        for k in TriggerKind::ALL {
            assert_eq!(k.as_str().parse::<TriggerKind>(), Ok(*k));
        }
        for s in TriggerState::ALL {
            assert_eq!(s.as_str().parse::<TriggerState>(), Ok(*s));
        }
        assert_eq!(
            "cron"
                .parse::<TriggerKind>()
                .expect_err("refused")
                .to_string(),
            "unknown trigger kind \"cron\""
        );
    }

    #[test]
    fn moves_follow_the_lifecycle() {
        assert_eq!(Move::Activate.from(), [TriggerState::Init]);
        assert_eq!(Move::Resume.to(), TriggerState::Active);
        assert!(!Move::Destroy.from().contains(&TriggerState::Active));
        let daily = TriggerConfig::parse(
            TriggerKind::Schedule,
            &json!({"cron": "30 2 * * *", "timezone": "America/New_York"}),
        )
        .expect("valid");
        let now: DateTime<Utc> = "2026-03-07T12:00:00Z".parse().expect("valid");
        // The spring-forward day: 02:30 does not exist; it fires at 03:30
        // EDT, 07:30 UTC.
        assert_eq!(
            Move::Resume.next_fire(&daily, now),
            Some("2026-03-08T07:30:00Z".parse().expect("valid"))
        );
        assert_eq!(Move::Pause.next_fire(&daily, now), None);
        let api = TriggerConfig::parse(TriggerKind::Api, &json!({})).expect("valid");
        assert_eq!(Move::Activate.next_fire(&api, now), None);
    }

    #[test]
    fn bad_configurations_name_their_field() {
        let cases = [
            (TriggerKind::Api, json!({"version": 0}), "version"),
            (TriggerKind::Api, json!({"path": "x"}), "path"),
            (TriggerKind::Schedule, json!({"cron": "61 * * * *"}), "cron"),
            (
                TriggerKind::Schedule,
                json!({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}),
                "timezone",
            ),
            (
                TriggerKind::Schedule,
                json!({"cron": "0 9 * * *", "misfire": "twice"}),
                "misfire",
            ),
            (
                TriggerKind::Schedule,
                json!({"cron": "0 9 * * *", "input": [1]}),
                "input",
            ),
            (
                TriggerKind::Schedule,
                json!({"cron": "0 9 * * *", "grace_seconds": -1}),
                "grace_seconds",
            ),
            (TriggerKind::Event, json!({"event": " "}), "event"),
            (
                TriggerKind::Event,
                json!({"event": "paid", "condition": "event.x >"}),
                "condition",
            ),
            (TriggerKind::Event, json!([]), ""),
            (TriggerKind::Schedule, json!({"timezone": "UTC"}), "cron"),
            (
                TriggerKind::Schedule,
                json!({"cron": "0 9 * * *", "grace_seconds": 3601}),
                "grace_seconds",
            ),
            (
                TriggerKind::Event,
                json!({"event": "paid", "topic": "orders/eu"}),
                "topic",
            ),
            (
                TriggerKind::Event,
                json!({"event": "paid", "subject": "event.payload."}),
                "subject",
            ),
            (
                TriggerKind::Event,
                json!({"event": "paid", "topic": "sojourn.actions.email"}),
                "topic",
            ),
            (
                TriggerKind::Event,
                json!({"event": "paid", "action": "forward"}),
                "action",
            ),
        ];
        for (kind, config, field) in cases {
            let e = TriggerConfig::parse(kind, &config).expect_err("refused");
            assert_eq!(e.field, field, "{kind} {config}: {e}");
        }
    }

    #[test]
    fn a_configuration_reads_back_as_written() {
        let config = json!({"cron": "*/15 * * * *", "timezone": "Europe/Paris",
            "input": {"batch": true}, "misfire": "all", "grace_seconds": 5});
        let parsed = TriggerConfig::parse(TriggerKind::Schedule, &config).expect("valid");
        assert_eq!(parsed.to_value(), config);
        let TriggerConfig::Schedule(s) = &parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(s.misfire, Misfire::All);
        assert_eq!(s.grace(), Duration::seconds(5));
        // Defaults are left out.
        let plain = json!({"cron": "0 9 * * *"});
        let parsed = TriggerConfig::parse(TriggerKind::Schedule, &plain).expect("valid");
        assert_eq!(parsed.to_value(), plain);
    }
}
