//! Frequency caps: "at most N messages of a channel and category per window"
//! for each subject, across all journeys. A namespace sets its caps; a
//! workflow may override them for its own sends (`settings.frequency_caps`).
//! The worker enforces them at send time; this module owns their shape and
//! their checks, so the API and a workflow refuse the same things.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The category of messages a person asked for (a receipt, a password
/// reset): never capped, never held back by a marketing opt-out.
pub const TRANSACTIONAL: &str = "transactional";
/// The longest window a cap may have.
pub const MAX_WINDOW_SECONDS: u64 = 366 * 86_400;
/// The most caps a namespace or a workflow may set.
pub const MAX_CAPS: usize = 50;

/// What happens to a send a cap refuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnCap {
    /// Not sent: the node's `skipped` branch.
    #[default]
    Skip,
    /// Sent when the cap allows it (a durable timer).
    Defer,
}

impl OnCap {
    pub fn as_str(self) -> &'static str {
        match self {
            OnCap::Skip => "skip",
            OnCap::Defer => "defer",
        }
    }
}

/// A checked cap: at most `max_sends` messages of `channel` and `category`
/// per `window_seconds` for each subject; `*` matches any.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FrequencyCap {
    pub channel: String,
    pub category: String,
    pub max_sends: u32,
    pub window_seconds: u64,
    pub on_cap: OnCap,
}

impl FrequencyCap {
    /// Whether a send of `channel` and `category` counts against this cap.
    pub fn counts(&self, channel: &str, category: &str) -> bool {
        matches(&self.channel, &self.category, channel, category)
    }
}

/// Whether a cap of `cap_channel` and `cap_category` (`*`: any) counts a
/// send of `channel` and `category`.
pub fn matches(cap_channel: &str, cap_category: &str, channel: &str, category: &str) -> bool {
    (cap_channel == "*" || cap_channel == channel)
        && (cap_category == "*" || cap_category == category)
}

/// A cap as people write it (the API's body, a workflow's setting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapSpec {
    /// `email`, `sms`, `push`, `chat` or `*`.
    pub channel: String,
    /// A category (`marketing`, `newsletter`, …) or `*`. Transactional
    /// messages are never capped.
    pub category: String,
    /// 1 to 10,000.
    pub max_sends: u32,
    /// A duration, `1m` to `366d` (`7d`, `24h`).
    pub window: String,
    /// `skip` (default) or `defer`.
    #[serde(default)]
    pub on_cap: OnCap,
}

/// A workflow's caps (`settings.frequency_caps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapSettings {
    /// Whether the namespace's caps apply to this workflow's sends, except
    /// those `caps` replaces (default true). `false` with no `caps`
    /// exempts the workflow; its sends still count against other
    /// journeys' caps.
    #[serde(default = "yes")]
    pub inherit: bool,
    /// Caps for this workflow's sends. One replaces every namespace cap of
    /// the same channel and category.
    #[serde(default)]
    pub caps: Vec<CapSpec>,
}

fn yes() -> bool {
    true
}

/// A workflow's caps, checked: what a dispatch carries to the worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkflowCaps {
    pub inherit: bool,
    pub caps: Vec<FrequencyCap>,
}

impl WorkflowCaps {
    /// Checks a workflow's setting; `None` when it changes nothing (the
    /// namespace's caps, inherited, none of its own).
    pub fn of(setting: &CapSettings) -> Result<Option<WorkflowCaps>, (String, String)> {
        let caps = check_caps(&setting.caps)?;
        Ok(
            (!setting.inherit || !caps.is_empty()).then_some(WorkflowCaps {
                inherit: setting.inherit,
                caps,
            }),
        )
    }

    /// The caps that decide this workflow's sends, given the namespace's.
    pub fn over(&self, namespace: &[FrequencyCap]) -> Vec<FrequencyCap> {
        let mut out: Vec<FrequencyCap> = if self.inherit {
            namespace
                .iter()
                .filter(|n| {
                    !self
                        .caps
                        .iter()
                        .any(|c| c.channel == n.channel && c.category == n.category)
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        out.extend(self.caps.iter().cloned());
        out
    }
}

/// Checks caps as people wrote them; an error names the field below the
/// list (`[2].window`) and says what is wrong.
pub fn check_caps(specs: &[CapSpec]) -> Result<Vec<FrequencyCap>, (String, String)> {
    if specs.len() > MAX_CAPS {
        return Err((String::new(), format!("at most {MAX_CAPS} caps")));
    }
    let mut caps: Vec<FrequencyCap> = Vec::with_capacity(specs.len());
    for (n, c) in specs.iter().enumerate() {
        let f = |x: &str| format!("[{n}].{x}");
        if c.channel != "*" && !matches!(c.channel.as_str(), "email" | "sms" | "push" | "chat") {
            return Err((
                f("channel"),
                format!(
                    "{:?} is not a channel (email, sms, push, chat or *)",
                    c.channel
                ),
            ));
        }
        if c.category != "*" && !is_category(&c.category) {
            return Err((
                f("category"),
                format!(
                    "{:?} is not a category (1 to 200 letters, digits, '-', '_', '.', or *)",
                    c.category
                ),
            ));
        }
        if c.category == TRANSACTIONAL {
            return Err((
                f("category"),
                "transactional messages are never capped".into(),
            ));
        }
        if !(1..=10_000).contains(&c.max_sends) {
            return Err((f("max_sends"), "must be 1 to 10000".into()));
        }
        let w = crate::time::parse_duration(&c.window).map_err(|e| (f("window"), e))?;
        let window_seconds = u64::try_from(w.num_seconds()).unwrap_or(0);
        if !(60..=MAX_WINDOW_SECONDS).contains(&window_seconds) {
            return Err((f("window"), "must be 1 minute to 366 days".into()));
        }
        if caps.iter().any(|x| {
            x.channel == c.channel && x.category == c.category && x.window_seconds == window_seconds
        }) {
            return Err((
                f("window"),
                "another cap has this channel, category and window".into(),
            ));
        }
        caps.push(FrequencyCap {
            channel: c.channel.clone(),
            category: c.category.clone(),
            max_sends: c.max_sends,
            window_seconds,
            on_cap: c.on_cap,
        });
    }
    Ok(caps)
}

/// A category's name: 1 to 200 letters, digits, `-`, `_`, `.`.
pub fn is_category(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 200
        && c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
}

/// A window in words (`7 days`, `hour`, `90 s`).
pub fn describe_window(s: u64) -> String {
    match s {
        86_400 => "day".into(),
        s if s.is_multiple_of(86_400) => format!("{} days", s / 86_400),
        3_600 => "hour".into(),
        s if s.is_multiple_of(3_600) => format!("{} hours", s / 3_600),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(channel: &str, category: &str, max: u32, window: &str) -> CapSpec {
        CapSpec {
            channel: channel.into(),
            category: category.into(),
            max_sends: max,
            window: window.into(),
            on_cap: OnCap::Skip,
        }
    }

    #[test]
    fn checks_name_the_field() {
        let bad = [
            (spec("fax", "*", 1, "1d"), "[0].channel"),
            (spec("email", "a b", 1, "1d"), "[0].category"),
            (spec("email", "transactional", 1, "1d"), "[0].category"),
            (spec("email", "*", 0, "1d"), "[0].max_sends"),
            (spec("email", "*", 1, "30s"), "[0].window"),
            (spec("email", "*", 1, "400d"), "[0].window"),
            (spec("email", "*", 1, "soon"), "[0].window"),
        ];
        for (s, field) in bad {
            let (f, msg) = check_caps(std::slice::from_ref(&s)).expect_err("refused");
            assert_eq!(f, field, "{s:?}: {msg}");
        }
        let twice = check_caps(&[spec("sms", "*", 1, "1d"), spec("sms", "*", 2, "24h")]);
        assert_eq!(twice.expect_err("same window").0, "[1].window");
        let ok = check_caps(&[spec("email", "marketing", 3, "7d")]).expect("valid");
        assert_eq!(ok[0].window_seconds, 7 * 86_400);
    }

    #[test]
    fn a_workflow_replaces_caps_of_its_channel_and_category() {
        let ns = check_caps(&[
            spec("email", "marketing", 3, "7d"),
            spec("email", "marketing", 1, "1d"),
            spec("sms", "*", 1, "1d"),
        ])
        .expect("valid");
        let own = check_caps(&[spec("email", "marketing", 5, "7d")]).expect("valid");
        let w = WorkflowCaps {
            inherit: true,
            caps: own.clone(),
        };
        let got = w.over(&ns);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.contains(&ns[2]));
        assert!(got.contains(&own[0]));
        let exempt = WorkflowCaps {
            inherit: false,
            caps: Vec::new(),
        };
        assert!(exempt.over(&ns).is_empty());
        let noop = CapSettings {
            inherit: true,
            caps: Vec::new(),
        };
        assert_eq!(WorkflowCaps::of(&noop), Ok(None));
    }
}

/// Serializes a shared value as the value itself: a dispatch's caps are one
/// `Arc` per published version in memory, plain JSON on the wire.
pub mod shared {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        v: &Option<Arc<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_deref().serialize(s)
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Arc<T>>, D::Error> {
        Ok(Option::<T>::deserialize(d)?.map(Arc::new))
    }
}
