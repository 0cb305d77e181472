//! `delay`: sleep for a duration, until an absolute timestamp, or until the
//! next local time of day in a time zone (daylight-saving rule in
//! [`crate::time`]). The execution holds no memory while it sleeps: only a
//! durable timer remains.

use chrono::{DateTime, Duration, NaiveTime, Utc};
use chrono_tz::Tz;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compile::{CompiledNode, Compiler};
use crate::ids::NodeId;
use crate::interpreter::{Flow, Machine};
use crate::journal::JournalEvent;
use crate::snapshot::{Status, Wait};
use crate::template::Templated;

/// Exactly one of `duration`, `until` and `time_of_day`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DelayConfig {
    /// How long to sleep: `"30m"`, `"1d 12h"`, `"7d"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// An RFC 3339 timestamp, or a template that renders to one
    /// (`"{{ input.appointment_at }}"`). A time already past does not wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The next time the local clock reads this, `"HH:MM"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_of_day: Option<String>,
    /// The zone of `time_of_day`; defaults to the execution's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

#[derive(Debug)]
pub(crate) enum Compiled {
    For(Duration),
    Until(Templated),
    TimeOfDay { time: NaiveTime, tz: Option<Tz> },
}

pub(crate) fn compile(config: &DelayConfig, node: &NodeId, c: &mut Compiler<'_>) -> Compiled {
    let given = [
        config.duration.is_some(),
        config.until.is_some(),
        config.time_of_day.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        c.error(
            node,
            "config",
            "set exactly one of duration, until, time_of_day",
        );
    }
    if config.timezone.is_some() && config.time_of_day.is_none() {
        c.error(node, "config.timezone", "only applies with time_of_day");
    }
    if let Some(d) = &config.duration {
        return match c.duration(node, "config.duration", d) {
            Some(d) if d < Duration::zero() => {
                c.error(node, "config.duration", "must not be negative");
                Compiled::For(Duration::zero())
            }
            Some(d) => Compiled::For(d),
            None => Compiled::For(Duration::zero()),
        };
    }
    if let Some(until) = &config.until {
        if !crate::template::is_template(until) && DateTime::parse_from_rfc3339(until).is_err() {
            c.error(
                node,
                "config.until",
                format!("{until:?} is not an RFC 3339 timestamp (e.g. 2026-12-01T09:00:00Z)"),
            );
        }
        return Compiled::Until(c.templated(node, "config.until", &Value::String(until.clone())));
    }
    if let Some(t) = &config.time_of_day {
        let time = match crate::time::parse_time_of_day(t) {
            Ok(time) => time,
            Err(e) => {
                c.error(node, "config.time_of_day", e);
                NaiveTime::MIN
            }
        };
        let tz = config
            .timezone
            .as_deref()
            .and_then(|tz| c.timezone(node, "config.timezone", tz));
        return Compiled::TimeOfDay { time, tz };
    }
    Compiled::For(Duration::zero())
}

pub(crate) fn enter<'w>(
    m: &mut Machine<'w>,
    node: &'w CompiledNode,
    c: &'w Compiled,
) -> Result<Flow<'w>, String> {
    let until = match c {
        Compiled::For(d) => m
            .now
            .checked_add_signed(*d)
            .ok_or("the delay ends beyond the last representable instant")?,
        Compiled::Until(t) => {
            let rendered = t.render(&m.wf.templates, &m.snap.scope(m.now))?;
            let text = rendered.as_str().unwrap_or_default();
            DateTime::parse_from_rfc3339(text.trim())
                .map_err(|_| format!("until: {rendered} is not an RFC 3339 timestamp"))?
                .with_timezone(&Utc)
        }
        Compiled::TimeOfDay { time, tz } => {
            crate::time::next_local_time(m.now, *time, tz.unwrap_or(m.snap.timezone))
        }
    };
    if until <= m.now {
        m.journal(JournalEvent::DelayElapsed {
            node: node.id.clone(),
        });
        return Ok(Flow::Next(None));
    }
    let timer = m.timer_id(&node.id, "delay");
    m.schedule_timer(timer.clone(), until);
    m.journal(JournalEvent::DelayStarted {
        node: node.id.clone(),
        until,
    });
    m.snap.wait = Some(Wait::Delay {
        node: node.id.clone(),
        timer,
        until,
    });
    m.snap.status = Status::Waiting;
    Ok(Flow::Suspend)
}

pub(crate) fn on_timer<'w>(m: &mut Machine<'w>, node: &'w CompiledNode) -> Flow<'w> {
    m.snap.wait = None;
    m.journal(JournalEvent::DelayElapsed {
        node: node.id.clone(),
    });
    Flow::Next(None)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::nodes::testing::{Harness, compile, errors_of, linear, utc};

    fn delay(config: Value) -> Value {
        json!({"id": "wait", "type": "delay", "config": config})
    }

    fn sleeps_until(config: Value, input: Value, start: &str) -> DateTime<Utc> {
        let wf = compile(&linear(json!({"type": "start"}), vec![delay(config)]));
        let h = Harness::start_at(&wf, input, utc(start));
        match h.snapshot.wait {
            Some(Wait::Delay { until, .. }) => until,
            other => panic!("expected a delay, got {other:?}"),
        }
    }

    #[test]
    fn sleeps_for_a_duration_then_continues() {
        let wf = compile(&linear(
            json!({"type": "start"}),
            vec![delay(json!({"duration": "2d 3h"}))],
        ));
        let mut h = Harness::start_at(&wf, json!({}), utc("2026-01-01T00:00:00Z"));
        assert_eq!(h.snapshot.status, Status::Waiting);
        assert_eq!(h.pending_timers(), [utc("2026-01-03T03:00:00Z")]);
        h.fire_due_timer();
        assert_eq!(h.snapshot.status, Status::Completed);
    }

    #[test]
    fn sleeps_until_a_templated_timestamp_and_skips_past_ones() {
        assert_eq!(
            sleeps_until(
                json!({"until": "{{ input.at }}"}),
                json!({"at": "2026-02-01T10:00:00+01:00"}),
                "2026-01-01T00:00:00Z"
            ),
            utc("2026-02-01T09:00:00Z")
        );
        let wf = compile(&linear(
            json!({"type": "start"}),
            vec![delay(json!({"until": "2020-01-01T00:00:00Z"}))],
        ));
        let h = Harness::start_at(&wf, json!({}), utc("2026-01-01T00:00:00Z"));
        assert_eq!(h.snapshot.status, Status::Completed);
        // A bad rendered timestamp fails the execution at the node.
        let wf = compile(&linear(
            json!({"type": "start"}),
            vec![delay(json!({"until": "{{ input.at }}"}))],
        ));
        let h = Harness::start_at(&wf, json!({"at": "tomorrow"}), utc("2026-01-01T00:00:00Z"));
        assert_eq!(h.snapshot.status, Status::Failed);
        assert_eq!(
            h.snapshot.error.as_ref().and_then(|e| e.node.clone()),
            Some(NodeId::from("wait"))
        );
    }

    #[test]
    fn time_of_day_uses_the_node_zone_or_the_execution_zone() {
        assert_eq!(
            sleeps_until(
                json!({"time_of_day": "09:00", "timezone": "America/New_York"}),
                json!({}),
                "2026-03-07T15:00:00Z"
            ),
            utc("2026-03-08T13:00:00Z")
        );
        // The spring gap: 02:30 does not exist, fires at 03:30 EDT.
        assert_eq!(
            sleeps_until(
                json!({"time_of_day": "02:30", "timezone": "America/New_York"}),
                json!({}),
                "2026-03-08T05:00:00Z"
            ),
            utc("2026-03-08T07:30:00Z")
        );
        // Without a zone: the execution's, here the UTC default.
        assert_eq!(
            sleeps_until(
                json!({"time_of_day": "09:00"}),
                json!({}),
                "2026-03-08T10:00:00Z"
            ),
            utc("2026-03-09T09:00:00Z")
        );
    }

    #[test]
    fn validation_names_bad_fields() {
        let wf = linear(
            json!({"type": "start"}),
            vec![
                json!({"id": "a", "type": "delay", "config": {}}),
                json!({"id": "b", "type": "delay", "config": {"duration": "1d", "until": "2026-01-01T00:00:00Z"}}),
                json!({"id": "c", "type": "delay", "config": {"duration": "a while"}}),
                json!({"id": "d", "type": "delay", "config": {"time_of_day": "25:00", "timezone": "Moon/Base"}}),
                json!({"id": "e", "type": "delay", "config": {"until": "next tuesday"}}),
                json!({"id": "f", "type": "delay", "config": {"duration": "1h", "timezone": "UTC"}}),
            ],
        );
        assert_eq!(
            errors_of(&wf),
            [
                "a:config",
                "b:config",
                "c:config.duration",
                "d:config.time_of_day",
                "d:config.timezone",
                "e:config.until",
                "f:config.timezone",
            ]
        );
        // A misspelt field is a parse error, reported before anything else.
        let wf = linear(
            json!({"type": "start"}),
            vec![json!({"id": "g", "type": "delay", "config": {"duraton": "1h"}})],
        );
        assert_eq!(errors_of(&wf), ["g:config.duraton"]);
    }
}
