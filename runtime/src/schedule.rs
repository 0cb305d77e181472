//! Cron schedules in a time zone: the instants they fire at, across
//! daylight-saving changes, and which of them to fire after downtime.
//!
//! Like the rest of the runtime, nothing here reads a clock.
//!
//! ## Daylight saving
//!
//! An expression is read on the zone's wall clock. Each wall-clock time it
//! names becomes an instant by the rule `time.rs` uses for times of day:
//! - a time that the spring change skips fires at the instant it would have
//!   had under the old offset: a daily `30 2 * * *` in America/New_York fires
//!   at 03:30 on that day instead of not at all. An hourly schedule's 02:00
//!   becomes the same instant as its 03:00, and fires once;
//! - a time that the autumn change repeats fires at its first occurrence
//!   (a daily `30 1 * * *` fires once), unless its minute or hour field
//!   starts with `*` (`*`, `*/15`): then it fires at both occurrences, so a
//!   schedule that runs every so many minutes or hours keeps its pace
//!   through the repeated hour. This is Vixie cron's rule for wildcard jobs.
//!
//! The `cron` crate on its own skips a time in the gap and fires a repeated
//! time twice whatever the schedule, so it is used here only to list
//! wall-clock times.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    schedule: cron::Schedule,
    tz: Tz,
    /// The minute or hour field starts with `*`: a repeated time fires
    /// at both occurrences.
    wildcard: bool,
}

impl CronSchedule {
    /// Parses `cron` (see [`crate::time::parse_cron`]) for the zone `tz`.
    pub fn parse(cron: &str, tz: Tz) -> Result<CronSchedule, String> {
        let schedule = crate::time::parse_cron(cron)?;
        // Five fields start with the minute; six or seven with the second.
        let fields: Vec<&str> = cron.split_whitespace().collect();
        let skip = usize::from(fields.len() > 5);
        let wildcard = fields.iter().skip(skip).take(2).any(|f| f.starts_with('*'));
        Ok(CronSchedule {
            schedule,
            tz,
            wildcard,
        })
    }

    /// The zone its wall clock is read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The instants it fires at, strictly after `after`, in order.
    pub fn fires_after(&self, after: DateTime<Utc>) -> Fires<'_> {
        // The earliest wall-clock time that can map after `after`: read at
        // the smaller of the offsets now and a little later (the second
        // occurrence of a repeated time lies after `after` while its
        // wall-clock time may lie before `after`'s).
        let offset = |t: DateTime<Utc>| {
            i64::from(
                self.tz
                    .offset_from_utc_datetime(&t.naive_utc())
                    .fix()
                    .local_minus_utc(),
            )
        };
        let least = offset(after).min(offset(after + Duration::hours(3)));
        let wall = after.naive_utc() + Duration::seconds(least - 1);
        Fires {
            schedule: self,
            wall: self.schedule.after(&Utc.from_utc_datetime(&wall)),
            pending: BinaryHeap::new(),
            frontier: None,
            last: after,
            exhausted: false,
        }
    }

    /// The next `n` instants after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.fires_after(after).take(n).collect()
    }

    /// The instants a wall-clock time fires at (its first, and the second
    /// occurrence of a repeated time for a wildcard schedule), and a bound
    /// no later wall-clock time maps before.
    fn instants(
        &self,
        wall: NaiveDateTime,
    ) -> (DateTime<Utc>, Option<DateTime<Utc>>, DateTime<Utc>) {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => {
                let t = t.with_timezone(&Utc);
                (t, None, t)
            }
            LocalResult::Ambiguous(first, second) => {
                let first = first.with_timezone(&Utc);
                (
                    first,
                    self.wildcard.then(|| second.with_timezone(&Utc)),
                    first,
                )
            }
            LocalResult::None => {
                // Moved forward by the gap; a real time just after the gap
                // can come before it (a 30-minute gap and `*/20`), so the
                // bound is this time read at the offset after the gap.
                let moved = crate::time::local_instant(wall.date(), wall.time(), self.tz);
                let after_gap = self
                    .tz
                    .offset_from_utc_datetime(&(wall + Duration::days(1)))
                    .fix()
                    .local_minus_utc();
                let bound =
                    Utc.from_utc_datetime(&(wall - Duration::seconds(i64::from(after_gap))));
                (moved, None, bound.min(moved))
            }
        }
    }

    /// What a schedule whose next fire was due at `due` fires at `now`:
    /// fires within `grace` of `now` are on time and always fire (the
    /// latest [`MAX_CATCH_UP`] of them); older ones were missed (the
    /// cluster was down) and fire as `policy` says. Only the last
    /// [`MAX_LOOKBACK`] before the grace is walked: a schedule further
    /// behind counts what lies before as one skipped fire at least.
    pub fn catch_up(
        &self,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
        grace: Duration,
        policy: Misfire,
    ) -> CatchUp {
        let mut missed: Vec<DateTime<Utc>> = Vec::new();
        let mut missed_count = 0usize;
        let mut on_time: Vec<DateTime<Utc>> = Vec::new();
        let mut on_time_count = 0usize;
        let mut next = None;
        let horizon = now - grace - MAX_LOOKBACK;
        let instants: Box<dyn Iterator<Item = DateTime<Utc>> + '_> = if due < horizon {
            missed_count += 1;
            Box::new(self.fires_after(horizon))
        } else {
            Box::new(std::iter::once(due).chain(self.fires_after(due)))
        };
        for t in instants {
            if t > now {
                next = Some(t);
                break;
            }
            if now - t <= grace {
                on_time.push(t);
                on_time_count += 1;
                if on_time.len() > 2 * MAX_CATCH_UP {
                    on_time.drain(..MAX_CATCH_UP);
                }
            } else {
                missed.push(t);
                missed_count += 1;
                // Only the most recent ones can be fired.
                if missed.len() > 2 * MAX_CATCH_UP {
                    missed.drain(..MAX_CATCH_UP);
                }
            }
        }
        let on_time = on_time.split_off(on_time.len().saturating_sub(MAX_CATCH_UP));
        let keep = match policy {
            Misfire::Once => 1,
            Misfire::All => MAX_CATCH_UP,
            Misfire::Skip => 0,
        }
        .min(MAX_CATCH_UP - on_time.len());
        let mut fire: Vec<DateTime<Utc>> = missed.split_off(missed.len().saturating_sub(keep));
        let skipped = missed_count - fire.len() + (on_time_count - on_time.len());
        fire.extend(on_time);
        CatchUp {
            fire,
            skipped,
            next,
        }
    }
}

/// How far back of its grace [`CronSchedule::catch_up`] looks for missed
/// fires.
pub const MAX_LOOKBACK: Duration = Duration::days(1);

/// The most missed fires [`Misfire::All`] makes up (the most recent ones).
pub const MAX_CATCH_UP: usize = 100;

/// What a schedule does with the fires it missed while no node ran it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// The most recent missed fire, once.
    #[default]
    Once,
    /// Every missed fire, up to [`MAX_CATCH_UP`] (the most recent).
    All,
    /// None of them.
    Skip,
}

/// The outcome of [`CronSchedule::catch_up`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// The instants to fire now, in order.
    pub fire: Vec<DateTime<Utc>>,
    /// How many missed fires are not fired.
    pub skipped: usize,
    /// The next instant after now, if the schedule fires again.
    pub next: Option<DateTime<Utc>>,
}

/// The instants of a [`CronSchedule`], in order (see
/// [`CronSchedule::fires_after`]).
pub struct Fires<'a> {
    schedule: &'a CronSchedule,
    /// Wall-clock times, read as UTC (which has no gaps or repeats).
    wall: cron::ScheduleIterator<'a, Utc>,
    /// Instants computed but not yet given out.
    pending: BinaryHeap<Reverse<DateTime<Utc>>>,
    /// A bound from the latest wall-clock time taken: no later wall-clock
    /// time maps before it.
    frontier: Option<DateTime<Utc>>,
    /// The last instant given out (or the start): each is strictly later.
    last: DateTime<Utc>,
    exhausted: bool,
}

impl std::fmt::Debug for Fires<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fires")
            .field("last", &self.last)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Iterator for Fires<'_> {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<DateTime<Utc>> {
        loop {
            if let Some(Reverse(m)) = self.pending.peek().copied()
                && (self.exhausted || self.frontier.is_some_and(|f| m <= f))
            {
                self.pending.pop();
                // A duplicate (a gap's time and the time after the gap)
                // or not after the start.
                if m > self.last {
                    self.last = m;
                    return Some(m);
                }
                continue;
            }
            if self.exhausted {
                return None;
            }
            match self.wall.next() {
                None => self.exhausted = true,
                Some(w) => {
                    let (first, second, bound) = self.schedule.instants(w.naive_utc());
                    self.frontier = Some(bound);
                    self.pending.push(Reverse(first));
                    if let Some(s) = second {
                        self.pending.push(Reverse(s));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NY: Tz = chrono_tz::America::New_York;
    const PARIS: Tz = chrono_tz::Europe::Paris;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn fires(cron: &str, tz: Tz, after: &str, n: usize) -> Vec<String> {
        CronSchedule::parse(cron, tz)
            .expect("cron")
            .upcoming(utc(after), n)
            .iter()
            .map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string())
            .collect()
    }

    #[test]
    fn a_daily_time_in_the_spring_gap_fires_an_hour_later_that_day() {
        // 2026-03-08: New York skips 02:00–03:00 local.
        assert_eq!(
            fires("30 2 * * *", NY, "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T07:30Z", // 02:30 EST
                "2026-03-08T07:30Z", // 03:30 EDT, the instant of 02:30 EST
                "2026-03-09T06:30Z", // 02:30 EDT
            ]
        );
        // Paris skips 02:00–03:00 on 2026-03-29.
        assert_eq!(
            fires("30 2 * * *", PARIS, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:30Z", "2026-03-30T00:30Z"]
        );
    }

    #[test]
    fn an_hourly_schedule_fires_every_real_hour_through_both_changes() {
        // Spring: 02:00 does not exist; 01:00 EST is followed by 03:00 EDT,
        // one hour later, fired once.
        assert_eq!(
            fires("0 * * * *", NY, "2026-03-08T05:30:00Z", 4),
            [
                "2026-03-08T06:00Z",
                "2026-03-08T07:00Z",
                "2026-03-08T08:00Z",
                "2026-03-08T09:00Z"
            ]
        );
        // Autumn, 2026-11-01: 01:00 happens twice (EDT, then EST).
        assert_eq!(
            fires("0 * * * *", NY, "2026-11-01T03:30:00Z", 4),
            [
                "2026-11-01T04:00Z", // 00:00 EDT
                "2026-11-01T05:00Z", // 01:00 EDT
                "2026-11-01T06:00Z", // 01:00 EST
                "2026-11-01T07:00Z", // 02:00 EST
            ]
        );
    }

    #[test]
    fn a_daily_time_that_happens_twice_fires_once_at_its_first_occurrence() {
        assert_eq!(
            fires("30 1 * * *", NY, "2026-10-31T12:00:00Z", 3),
            [
                "2026-11-01T05:30Z", // 01:30 EDT; not again at 01:30 EST
                "2026-11-02T06:30Z",
                "2026-11-03T06:30Z",
            ]
        );
    }

    #[test]
    fn a_quarter_hourly_schedule_stays_in_order_through_the_repeated_hour() {
        let got = CronSchedule::parse("*/15 * * * *", NY)
            .expect("cron")
            .upcoming(utc("2026-11-01T04:50:00Z"), 12);
        assert_eq!(got.first(), Some(&utc("2026-11-01T05:00:00Z")));
        for pair in got.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::minutes(15), "{got:?}");
        }
    }

    #[test]
    fn starting_inside_the_repeated_hour_gives_only_later_instants() {
        // 05:40Z is 01:40 EDT: the 01:45 EDT, then the repeated hour in EST.
        assert_eq!(
            fires("*/15 * * * *", NY, "2026-11-01T05:40:00Z", 3),
            [
                "2026-11-01T05:45Z",
                "2026-11-01T06:00Z",
                "2026-11-01T06:15Z"
            ]
        );
    }

    #[test]
    fn the_next_five_of_a_weekly_schedule_in_its_zone() {
        assert_eq!(
            fires("0 9 * * MON", PARIS, "2026-03-20T00:00:00Z", 3),
            [
                "2026-03-23T08:00Z", // CET
                "2026-03-30T07:00Z", // CEST, after the change
                "2026-04-06T07:00Z",
            ]
        );
        let s = CronSchedule::parse("0 9 * * 1-5", NY).expect("cron");
        assert_eq!(s.upcoming(utc("2026-06-01T00:00:00Z"), 5).len(), 5);
    }

    #[test]
    fn a_real_time_just_after_an_uneven_gap_is_not_lost() {
        // Lord Howe skips 02:00–02:30 (+10:30 → +11) on 2026-10-04:
        // 02:00 and 02:20 move forward by half an hour; 02:40 is real.
        assert_eq!(
            fires(
                "*/20 * * * *",
                chrono_tz::Australia::Lord_Howe,
                "2026-10-03T15:10:00Z",
                4
            ),
            [
                "2026-10-03T15:30Z", // 02:00 → 02:30 LHDT
                "2026-10-03T15:40Z", // 02:40 LHDT
                "2026-10-03T15:50Z", // 02:20 → 02:50 LHDT
                "2026-10-03T16:00Z", // 03:00 LHDT
            ]
        );
    }

    #[test]
    fn a_wildcard_minute_or_hour_keeps_its_pace_through_the_repeat() {
        // Paris repeats 02:00–03:00 on 2026-10-25 (CEST, then CET).
        assert_eq!(
            fires("0 */2 * * *", PARIS, "2026-10-24T23:30:00Z", 3),
            [
                "2026-10-25T00:00Z",
                "2026-10-25T01:00Z",
                "2026-10-25T03:00Z"
            ]
        );
        // A fixed hour with a wildcard minute repeats too (Vixie's rule).
        let got = CronSchedule::parse("*/30 1 * * *", NY)
            .expect("cron")
            .upcoming(utc("2026-11-01T04:50:00Z"), 4);
        assert_eq!(
            got,
            [
                utc("2026-11-01T05:00:00Z"),
                utc("2026-11-01T05:30:00Z"),
                utc("2026-11-01T06:00:00Z"),
                utc("2026-11-01T06:30:00Z"),
            ]
        );
    }

    #[test]
    fn a_schedule_that_never_fires_again_ends() {
        // Seconds, minutes, hours, day, month, weekday, year.
        let s = CronSchedule::parse("0 0 12 1 1 * 2020", NY).expect("cron");
        assert!(s.upcoming(utc("2026-01-01T00:00:00Z"), 3).is_empty());
    }

    #[test]
    fn missed_fires_follow_the_misfire_policy_and_on_time_ones_always_fire() {
        let s = CronSchedule::parse("0 * * * *", chrono_tz::UTC).expect("cron");
        let due = utc("2026-05-01T00:00:00Z");
        // Down from midnight until 05:00:20: 00:00–04:00 missed, 05:00 on time.
        let now = utc("2026-05-01T05:00:20Z");
        let grace = Duration::seconds(60);
        let once = s.catch_up(due, now, grace, Misfire::Once);
        assert_eq!(
            once.fire,
            [utc("2026-05-01T04:00:00Z"), utc("2026-05-01T05:00:00Z")]
        );
        assert_eq!(once.skipped, 4);
        assert_eq!(once.next, Some(utc("2026-05-01T06:00:00Z")));
        let all = s.catch_up(due, now, grace, Misfire::All);
        assert_eq!(all.fire.len(), 6);
        assert_eq!(all.skipped, 0);
        let skip = s.catch_up(due, now, grace, Misfire::Skip);
        assert_eq!(skip.fire, [utc("2026-05-01T05:00:00Z")]);
        assert_eq!(skip.skipped, 5);
        // Nothing missed: the due fire only.
        let fine = s.catch_up(due, utc("2026-05-01T00:00:01Z"), grace, Misfire::Skip);
        assert_eq!(fine.fire, [due]);
        assert_eq!(fine.skipped, 0);
    }

    #[test]
    fn all_makes_up_at_most_the_most_recent_hundred() {
        let s = CronSchedule::parse("* * * * *", chrono_tz::UTC).expect("cron");
        let due = utc("2026-05-01T00:00:00Z");
        // A day down: 1,440 minutes missed.
        let now = utc("2026-05-02T00:00:30Z");
        let c = s.catch_up(due, now, Duration::seconds(1), Misfire::All);
        assert_eq!(c.fire.len(), MAX_CATCH_UP);
        assert_eq!(c.skipped, 1_441 - MAX_CATCH_UP);
        let once = s.catch_up(due, now, Duration::seconds(1), Misfire::Once);
        assert_eq!(once.skipped, 1_440);
        assert_eq!(c.fire.last(), Some(&utc("2026-05-02T00:00:00Z")));
        assert!(c.fire.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(c.next, Some(utc("2026-05-02T00:01:00Z")));
    }

    #[test]
    fn a_schedule_far_behind_walks_one_day_and_on_time_fires_are_bounded() {
        // Every second, a month behind: only the last day is walked.
        let s = CronSchedule::parse("* * * * * *", chrono_tz::UTC).expect("cron");
        let due = utc("2026-04-01T00:00:00Z");
        let now = utc("2026-05-01T00:00:00Z");
        let once = s.catch_up(due, now, Duration::seconds(3_600), Misfire::Once);
        assert_eq!(once.fire.len(), MAX_CATCH_UP, "on time: the latest hundred");
        assert_eq!(once.fire.last(), Some(&now));
        assert_eq!(once.fire.first(), Some(&(now - Duration::seconds(99))));
        // Missed: a day of seconds and the month before it, as one; and
        // the on-time ones beyond the hundred.
        assert_eq!(once.skipped, 86_399 + 1 + (3_601 - MAX_CATCH_UP));
        assert_eq!(once.next, Some(now + Duration::seconds(1)));
        let skip = s.catch_up(due, now, Duration::seconds(0), Misfire::Skip);
        assert_eq!(skip.fire, [now]);
    }

    #[test]
    fn the_misfire_policy_reads_as_snake_case() {
        let p: Misfire = serde_json::from_str("\"all\"").expect("policy");
        assert_eq!(p, Misfire::All);
        assert_eq!(Misfire::default(), Misfire::Once);
        assert!(serde_json::from_str::<Misfire>("\"sometimes\"").is_err());
    }
}
