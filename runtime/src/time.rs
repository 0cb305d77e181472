//! Durations, local times of day and time zones.
//!
//! The interpreter never reads a clock: every function here takes the
//! current instant as an argument.
//!
//! ## Daylight-saving rule
//!
//! A local time of day is turned into an instant with the *compatible*
//! disambiguation (the rule of RFC 5545 and of JavaScript's Temporal):
//! - a time that does not exist on that day (02:30 on the spring change in
//!   America/New_York) is moved forward by the length of the gap: it fires at
//!   03:30 local, the instant 02:30 would have been under the old offset;
//! - a time that happens twice (01:30 on the autumn change) fires at its
//!   first occurrence, the one before the clocks go back.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Parses a human duration: `"90s"`, `"15m"`, `"1h 30m"`, `"7d"`, `"2weeks"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let std = humantime::parse_duration(text).map_err(|e| format!("{e} in {text:?}"))?;
    let d = Duration::from_std(std).map_err(|_| format!("duration {text:?} is too long"))?;
    if d > max_duration() {
        return Err(format!(
            "duration {text:?} is longer than the maximum of 10 years"
        ));
    }
    Ok(d)
}

/// The longest duration a workflow may ask for (delays, timeouts, backoffs).
pub fn max_duration() -> Duration {
    Duration::days(3653)
}

/// Parses `"HH:MM"` or `"HH:MM:SS"` (24-hour clock).
pub fn parse_time_of_day(text: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(text, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(text, "%H:%M:%S"))
        .map_err(|_| format!("{text:?} is not a time of day (expected HH:MM, 24-hour)"))
}

/// Parses an IANA time zone name such as `"America/New_York"`.
pub fn parse_timezone(text: &str) -> Result<Tz, String> {
    text.parse::<Tz>()
        .map_err(|_| format!("{text:?} is not an IANA time zone (e.g. \"Europe/Paris\")"))
}

/// Parses a cron expression: the classic five fields (`"0 9 * * MON-FRI"`),
/// or six/seven with seconds and years first as the `cron` crate reads them.
pub fn parse_cron(text: &str) -> Result<cron::Schedule, String> {
    let fields = text.split_whitespace().count();
    let full = match fields {
        5 => {
            let parts: Vec<&str> = text.split_whitespace().collect();
            let weekday = classic_weekdays(parts[4])?;
            format!(
                "0 {} {} {} {} {weekday}",
                parts[0], parts[1], parts[2], parts[3]
            )
        }
        6 | 7 => text.to_owned(),
        n => {
            return Err(format!(
                "{text:?} has {n} fields; a cron expression has 5 (min hour day month weekday)"
            ));
        }
    };
    full.parse::<cron::Schedule>()
        .map_err(|e| format!("{text:?} is not a valid cron expression: {e}"))
}

/// Rewrites a classic crontab weekday field (0 or 7 = Sunday … 6 =
/// Saturday) with day names, which the `cron` crate reads unambiguously (its
/// own numbers start at 1 = Sunday).
fn classic_weekdays(field: &str) -> Result<String, String> {
    const NAMES: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];
    let name = |s: &str| -> Result<Option<&'static str>, String> {
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
            let n: usize = s.parse().map_err(|_| format!("bad weekday {s:?}"))?;
            return NAMES
                .get(n)
                .copied()
                .map(Some)
                .ok_or_else(|| format!("weekday {n} is out of range (0-7)"));
        }
        Ok(None)
    };
    let mut out = Vec::new();
    for part in field.split(',') {
        let (base, step) = match part.split_once('/') {
            Some((b, s)) => (b, Some(s)),
            None => (part, None),
        };
        let base = match base.split_once('-') {
            Some((a, b)) => {
                let (na, nb) = (name(a)?, name(b)?);
                match (na, nb) {
                    // `5-7` ends on Sunday: Friday to Saturday, and Sunday.
                    (Some(x), Some("SUN")) if b == "7" && x != "SUN" && step.is_none() => {
                        out.push("SUN".to_owned());
                        format!("{x}-SAT")
                    }
                    _ => format!("{}-{}", na.unwrap_or(a), nb.unwrap_or(b)),
                }
            }
            None => name(base)?.map_or_else(|| base.to_owned(), str::to_owned),
        };
        out.push(match step {
            Some(s) => format!("{base}/{s}"),
            None => base,
        });
    }
    Ok(out.join(","))
}

/// The instant at which the wall clock in `tz` reads `time` on `date`, with
/// the compatible rule described in the module docs.
pub fn local_instant(date: NaiveDate, time: NaiveTime, tz: Tz) -> DateTime<Utc> {
    let naive = NaiveDateTime::new(date, time);
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: use the offset in force before it. A day earlier is
            // safely before the transition (zones never change twice a day).
            let before = naive - Duration::days(1);
            let offset = tz.offset_from_utc_datetime(&before);
            let fixed = chrono::Offset::fix(&offset);
            let utc = naive - Duration::seconds(i64::from(fixed.local_minus_utc()));
            Utc.from_utc_datetime(&utc)
        }
    }
}

/// The first instant strictly after `after` at which the wall clock in `tz`
/// reads `time`.
pub fn next_local_time(after: DateTime<Utc>, time: NaiveTime, tz: Tz) -> DateTime<Utc> {
    let mut date = after.with_timezone(&tz).date_naive();
    // Today, tomorrow or (around a gap that swallows the time) the day after.
    for _ in 0..4 {
        let candidate = local_instant(date, time, tz);
        if candidate > after {
            return candidate;
        }
        date = date.succ_opt().unwrap_or(date);
    }
    local_instant(date, time, tz)
}

/// A daily window of local time, `[start, end)`, that may wrap midnight
/// (`22:00`–`08:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyWindow {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl DailyWindow {
    /// If `now` falls inside the window in `tz`, the instant the window ends.
    pub fn end_if_inside(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&tz).time();
        let inside = if self.start < self.end {
            self.start <= local && local < self.end
        } else {
            local >= self.start || local < self.end
        };
        if !inside {
            return None;
        }
        // The earliest end still ahead. On the autumn change the end time
        // happens twice; if `now` is in the repeated hour, the second
        // occurrence is the one ahead (not tomorrow's).
        let today = now.with_timezone(&tz).date_naive();
        let mut best: Option<DateTime<Utc>> = None;
        for date in [today, today.succ_opt().unwrap_or(today)] {
            let naive = NaiveDateTime::new(date, self.end);
            let candidates = match tz.from_local_datetime(&naive) {
                LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
                LocalResult::Ambiguous(a, b) => vec![a.with_timezone(&Utc), b.with_timezone(&Utc)],
                LocalResult::None => vec![local_instant(date, self.end, tz)],
            };
            for c in candidates.into_iter().filter(|c| *c > now) {
                best = Some(best.map_or(c, |b| b.min(c)));
            }
        }
        Some(best.unwrap_or_else(|| next_local_time(now, self.end, tz)))
    }
}

/// Formats a duration the way people read one: `1d 2h 3m 4s`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.num_seconds();
    if secs == 0 {
        let ms = d.num_milliseconds();
        return if ms == 0 {
            "0s".into()
        } else {
            format!("{ms}ms")
        };
    }
    let sign = if secs < 0 { "-" } else { "" };
    secs = secs.abs();
    let (d, rest) = (secs / 86_400, secs % 86_400);
    let (h, rest) = (rest / 3600, rest % 3600);
    let (m, s) = (rest / 60, rest % 60);
    let mut out = String::from(sign);
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            if out.len() > sign.len() {
                out.push(' ');
            }
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    fn t(s: &str) -> NaiveTime {
        parse_time_of_day(s).expect("test time")
    }

    const NY: Tz = chrono_tz::America::New_York;

    #[test]
    fn durations_parse_and_reject() {
        assert_eq!(parse_duration("90s"), Ok(Duration::seconds(90)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::minutes(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::days(7)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("100000000y").is_err());
        assert!(parse_duration("3650d").is_ok());
    }

    #[test]
    fn times_zones_and_crons_parse_and_reject() {
        assert!(parse_time_of_day("09:00").is_ok());
        assert!(parse_time_of_day("23:59:59").is_ok());
        assert!(parse_time_of_day("24:00").is_err());
        assert!(parse_time_of_day("9am").is_err());
        assert_eq!(parse_timezone("America/New_York"), Ok(NY));
        assert!(parse_timezone("Mars/Olympus_Mons").is_err());
        assert!(parse_cron("0 9 * * MON-FRI").is_ok());
        assert!(parse_cron("*/5 * * * * *").is_ok());
        assert!(parse_cron("0 9 * *").is_err());
        assert!(parse_cron("0 25 * * *").is_err());
        // Classic weekday numbers: 0 and 7 are Sunday, 1-5 Monday to Friday.
        let next = |expr: &str, after: &str| {
            parse_cron(expr)
                .expect("cron")
                .after(&utc(after))
                .next()
                .expect("next")
                .format("%a %H:%M")
                .to_string()
        };
        let sunday_noon = "2026-11-22T12:00:00Z";
        assert_eq!(next("0 9 * * 1-5", sunday_noon), "Mon 09:00");
        assert_eq!(next("0 13 * * 0", sunday_noon), "Sun 13:00");
        assert_eq!(next("0 13 * * 7", sunday_noon), "Sun 13:00");
        assert_eq!(next("0 9 * * 6", sunday_noon), "Sat 09:00");
        assert_eq!(next("0 9 * * 5-7", sunday_noon), "Fri 09:00");
        assert_eq!(next("0 13 * * 5-7", sunday_noon), "Sun 13:00");
        assert_eq!(next("0 9 * * MON", sunday_noon), "Mon 09:00");
        assert!(parse_cron("0 9 * * 8").is_err());
    }

    #[test]
    fn next_local_time_is_today_or_tomorrow() {
        // 2026-06-01 12:00 UTC is 08:00 EDT: 09:00 is later the same day.
        let now = utc("2026-06-01T12:00:00Z");
        assert_eq!(
            next_local_time(now, t("09:00"), NY),
            utc("2026-06-01T13:00:00Z")
        );
        // At 10:00 EDT, 09:00 is tomorrow.
        let now = utc("2026-06-01T14:00:00Z");
        assert_eq!(
            next_local_time(now, t("09:00"), NY),
            utc("2026-06-02T13:00:00Z")
        );
        // Exactly at 09:00: strictly after, so tomorrow.
        let now = utc("2026-06-01T13:00:00Z");
        assert_eq!(
            next_local_time(now, t("09:00"), NY),
            utc("2026-06-02T13:00:00Z")
        );
    }

    #[test]
    fn across_the_spring_change_the_offset_moves() {
        // 2026-03-08: New York goes from EST (-5) to EDT (-4) at 02:00.
        // 09:00 on the 7th is 14:00 UTC, on the 8th it is 13:00 UTC.
        let now = utc("2026-03-07T15:00:00Z");
        assert_eq!(
            next_local_time(now, t("09:00"), NY),
            utc("2026-03-08T13:00:00Z")
        );
    }

    #[test]
    fn a_time_in_the_spring_gap_moves_forward_by_the_gap() {
        // 02:30 does not exist on 2026-03-08 in New York: it fires at 03:30
        // EDT, which is 07:30 UTC (02:30 under the old -5 offset).
        let now = utc("2026-03-08T05:00:00Z"); // 00:00 EST
        let fired = next_local_time(now, t("02:30"), NY);
        assert_eq!(fired, utc("2026-03-08T07:30:00Z"));
        assert_eq!(
            fired.with_timezone(&NY).format("%H:%M").to_string(),
            "03:30"
        );
    }

    #[test]
    fn an_ambiguous_autumn_time_fires_at_its_first_occurrence() {
        // 2026-11-01: 01:30 happens twice in New York, first in EDT (05:30 UTC)
        // then in EST (06:30 UTC). We pick the first.
        let now = utc("2026-11-01T04:00:00Z"); // 00:00 EDT
        assert_eq!(
            next_local_time(now, t("01:30"), NY),
            utc("2026-11-01T05:30:00Z")
        );
        // Once the first has passed, the next one is the following day, not
        // the second occurrence an hour later.
        let now = utc("2026-11-01T05:45:00Z");
        assert_eq!(
            next_local_time(now, t("01:30"), NY),
            utc("2026-11-02T06:30:00Z")
        );
    }

    #[test]
    fn quiet_hours_windows_wrap_midnight() {
        let w = DailyWindow {
            start: t("21:00"),
            end: t("08:00"),
        };
        let paris = chrono_tz::Europe::Paris;
        // 23:00 Paris (CEST, +2) on 2026-06-01 → ends 08:00 on the 2nd.
        assert_eq!(
            w.end_if_inside(utc("2026-06-01T21:00:00Z"), paris),
            Some(utc("2026-06-02T06:00:00Z"))
        );
        // 03:00 local → ends 08:00 the same day.
        assert_eq!(
            w.end_if_inside(utc("2026-06-02T01:00:00Z"), paris),
            Some(utc("2026-06-02T06:00:00Z"))
        );
        // 12:00 local → not inside.
        assert_eq!(w.end_if_inside(utc("2026-06-02T10:00:00Z"), paris), None);
        // A window that does not wrap.
        let lunch = DailyWindow {
            start: t("12:00"),
            end: t("13:00"),
        };
        assert_eq!(
            lunch.end_if_inside(utc("2026-06-02T10:30:00Z"), paris),
            Some(utc("2026-06-02T11:00:00Z"))
        );
        assert_eq!(
            lunch.end_if_inside(utc("2026-06-02T11:00:00Z"), paris),
            None
        );
        // Autumn change in New York: 01:15 EST is the second pass through
        // the repeated hour; a window ending 01:30 ends 15 minutes later, not
        // a day later.
        let late = DailyWindow {
            start: t("22:00"),
            end: t("01:30"),
        };
        assert_eq!(
            late.end_if_inside(utc("2026-11-01T06:15:00Z"), NY),
            Some(utc("2026-11-01T06:30:00Z"))
        );
    }

    #[test]
    fn durations_format_for_people() {
        assert_eq!(format_duration(Duration::seconds(0)), "0s");
        assert_eq!(format_duration(Duration::milliseconds(250)), "250ms");
        assert_eq!(format_duration(Duration::seconds(3661)), "1h 1m 1s");
        assert_eq!(format_duration(Duration::days(7)), "7d");
    }
}
