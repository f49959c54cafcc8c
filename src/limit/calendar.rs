//! Calendar periods for window limits: days from local midnight, weeks from Monday 00:00
//! and months from the 1st, 00:00, in a policy's time zone.
//!
//! A period is numbered by its place in the local calendar (days, weeks or months since
//! 1970), so consecutive periods have consecutive ids and every node derives the same id,
//! and so the same Redis key, from the same instant. Its bounds are the instants of the
//! local midnights that begin it and the next one: a day is 23 or 25 hours long across a
//! DST change, February is 28 or 29 days.

use super::algorithm::Span;
use crate::config::CalendarUnit;
use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;
use parking_lot::RwLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    pub unit: CalendarUnit,
    pub tz: Tz,
}

/// 1969-12-29, the Monday that week 0 starts on (1970-01-01 was a Thursday).
fn monday_zero() -> NaiveDate {
    NaiveDate::from_ymd_opt(1969, 12, 29).unwrap_or_default()
}

fn epoch_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

impl Calendar {
    /// The longest a period of this unit can last (a DST change adds an hour).
    pub fn max_len_ms(&self) -> u64 {
        const HOUR: u64 = 3_600_000;
        match self.unit {
            CalendarUnit::Day => 25 * HOUR,
            CalendarUnit::Week => 7 * 24 * HOUR + HOUR,
            CalendarUnit::Month => 31 * 24 * HOUR + HOUR,
        }
    }

    /// The part of Redis key names that tells this calendar's periods apart from other
    /// calendars' and from epoch windows: unit and time zone.
    pub fn label(&self) -> String {
        let unit = match self.unit {
            CalendarUnit::Day => "d",
            CalendarUnit::Week => "w",
            CalendarUnit::Month => "mo",
        };
        format!("c{unit}@{}", self.tz.name())
    }

    /// The period holding `now_ms`. Past the calendar's range (year 262143) it falls back
    /// to epoch windows of the unit's longest length rather than fail.
    pub fn span_at(&self, now_ms: u64) -> Span {
        self.exact_span_at(now_ms)
            .unwrap_or_else(|| Span::epoch(now_ms, self.max_len_ms()))
    }

    fn exact_span_at(&self, now_ms: u64) -> Option<Span> {
        let now = i64::try_from(now_ms).ok()?;
        let local = DateTime::from_timestamp_millis(now)?
            .with_timezone(&self.tz)
            .date_naive();
        let mut index = self.index_of(local);
        // The local date of an instant is usually its period's, but a clock set back
        // across midnight shows yesterday's date for an hour of the new day (and set
        // forward, the reverse), and a skipped day leaves an empty period: step to the
        // period whose bounds hold the instant.
        for _ in 0..4 {
            let start = self.start_of(index)?;
            let end = self.start_of(index + 1)?;
            if now < start {
                index -= 1;
            } else if now >= end {
                index += 1;
            } else {
                return Some(Span {
                    id: u64::try_from(index).ok()?,
                    start_ms: u64::try_from(start).ok()?,
                    end_ms: u64::try_from(end).ok()?,
                });
            }
        }
        None
    }

    fn index_of(&self, date: NaiveDate) -> i64 {
        match self.unit {
            CalendarUnit::Day => (date - epoch_date()).num_days(),
            CalendarUnit::Week => (date - monday_zero()).num_days().div_euclid(7),
            CalendarUnit::Month => (date.year() as i64 - 1970) * 12 + date.month0() as i64,
        }
    }

    fn first_day(&self, index: i64) -> Option<NaiveDate> {
        match self.unit {
            CalendarUnit::Day => {
                epoch_date().checked_add_signed(chrono::Duration::try_days(index)?)
            }
            CalendarUnit::Week => {
                monday_zero().checked_add_signed(chrono::Duration::try_days(index.checked_mul(7)?)?)
            }
            CalendarUnit::Month => {
                let year = i32::try_from(1970 + index.div_euclid(12)).ok()?;
                NaiveDate::from_ymd_opt(year, index.rem_euclid(12) as u32 + 1, 1)
            }
        }
    }

    /// The instant (Unix ms) period `index` begins: the first day's local midnight.
    fn start_of(&self, index: i64) -> Option<i64> {
        local_midnight(self.tz, self.first_day(index)?)
    }
}

/// The first instant of a local date. A midnight that happens twice (a clock set back at
/// 01:00 to 00:00) begins the day at its earlier occurrence; one that never happens (a
/// clock set forward at 00:00, as Cuba, Chile or Lebanon do) begins it at the first
/// instant after the gap.
fn local_midnight(tz: Tz, date: NaiveDate) -> Option<i64> {
    let midnight = date.and_hms_opt(0, 0, 0)?;
    match tz.from_local_datetime(&midnight) {
        LocalResult::Single(t) => Some(t.timestamp_millis()),
        LocalResult::Ambiguous(a, b) => Some(a.timestamp_millis().min(b.timestamp_millis())),
        LocalResult::None => after_gap(tz, midnight).map(|s| s * 1000),
    }
}

/// The first instant (Unix seconds) whose local time is at or past `local`, which falls in
/// a gap. Read with the offset from before the gap, `local` names an instant after the
/// transition but at most one gap's length (under a day) after it; the transition is the
/// earliest instant from there back whose local time is not before `local`.
fn after_gap(tz: Tz, local: NaiveDateTime) -> Option<i64> {
    let day = chrono::Duration::try_days(1)?;
    let before = tz
        .offset_from_utc_datetime(&local.checked_sub_signed(day)?)
        .fix()
        .local_minus_utc() as i64;
    let late = local.and_utc().timestamp() - before;
    let local_at =
        |t: i64| DateTime::from_timestamp(t, 0).map(|u| u.with_timezone(&tz).naive_local());
    let (mut lo, mut hi) = (late - 86_400, late);
    // Invariant: local(lo) < local ≤ local(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_at(mid)? >= local {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// A calendar with its current period cached, so that deciding a request costs one
/// uncontended read lock and two comparisons; the time zone math runs once per period.
pub struct Periods {
    pub calendar: Calendar,
    current: RwLock<Span>,
}

impl Periods {
    pub fn new(calendar: Calendar) -> Self {
        Periods {
            calendar,
            current: RwLock::new(Span {
                id: 0,
                start_ms: 0,
                end_ms: 0,
            }),
        }
    }

    #[inline]
    pub fn at(&self, now_ms: u64) -> Span {
        let span = *self.current.read();
        if span.start_ms <= now_ms && now_ms < span.end_ms {
            return span;
        }
        self.refresh(now_ms)
    }

    #[cold]
    fn refresh(&self, now_ms: u64) -> Span {
        let span = self.calendar.span_at(now_ms);
        let mut current = self.current.write();
        // A thread whose clock read is older must not move the cache back.
        if span.start_ms > current.start_ms {
            *current = span;
        }
        span
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDateTime;

    fn cal(unit: CalendarUnit, tz: &str) -> Calendar {
        Calendar {
            unit,
            tz: tz.parse().unwrap(),
        }
    }

    /// Unix ms of a UTC time written `2026-03-29 01:00`.
    fn utc(text: &str) -> u64 {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp_millis() as u64
    }

    const H: u64 = 3_600_000;
    const D: u64 = 24 * H;

    #[test]
    fn utc_days_are_epoch_days() {
        let c = cal(CalendarUnit::Day, "UTC");
        for now in [0, 1, D - 1, D, 20_000 * D + 12_345, utc("2026-12-02 13:55")] {
            assert_eq!(c.span_at(now), Span::epoch(now, D), "{now}");
        }
    }

    #[test]
    fn months_follow_their_lengths_and_leap_years() {
        let c = cal(CalendarUnit::Month, "UTC");
        let feb_2027 = c.span_at(utc("2027-02-14 12:00"));
        assert_eq!(
            (feb_2027.start_ms, feb_2027.end_ms),
            (utc("2027-02-01 00:00"), utc("2027-03-01 00:00"))
        );
        assert_eq!(feb_2027.len_ms(), 28 * D);
        let feb_2028 = c.span_at(utc("2028-02-29 23:59"));
        assert_eq!(feb_2028.len_ms(), 29 * D, "2028 is a leap year");
        assert_eq!(feb_2028.end_ms, utc("2028-03-01 00:00"));
        assert_eq!(
            c.span_at(utc("2100-02-10 00:00")).len_ms(),
            28 * D,
            "2100 is not"
        );
        assert_eq!(
            c.span_at(utc("2000-02-10 00:00")).len_ms(),
            29 * D,
            "2000 is"
        );
        for (at, days) in [
            ("2026-01-31 23:59", 31),
            ("2026-04-01 00:00", 30),
            ("2026-12-31 23:59", 31),
        ] {
            assert_eq!(c.span_at(utc(at)).len_ms(), days * D, "{at}");
        }
        // Consecutive months have consecutive ids, across a year's end too.
        let dec = c.span_at(utc("2026-12-31 23:59"));
        let jan = c.span_at(utc("2027-01-01 00:00"));
        assert_eq!((jan.id, jan.start_ms), (dec.id + 1, dec.end_ms));
        assert_eq!(jan.id, (2027 - 1970) * 12);
        // The last millisecond of a month is still in it.
        assert_eq!(c.span_at(dec.end_ms - 1), dec);
    }

    #[test]
    fn weeks_start_on_monday() {
        let c = cal(CalendarUnit::Week, "UTC");
        // 2026-12-02 is a Wednesday.
        let w = c.span_at(utc("2026-12-02 13:55"));
        assert_eq!(
            (w.start_ms, w.end_ms),
            (utc("2026-11-30 00:00"), utc("2026-12-07 00:00"))
        );
        let sunday = c.span_at(utc("2026-12-06 23:59"));
        let monday = c.span_at(utc("2026-12-07 00:00"));
        assert_eq!(sunday, w);
        assert_eq!(monday.id, w.id + 1);
        // A week that spans the new year is one week.
        let ny = c.span_at(utc("2027-01-01 12:00"));
        assert_eq!(ny.start_ms, utc("2026-12-28 00:00"));
        assert_eq!(ny.len_ms(), 7 * D);
        // Week 0 began before the epoch, where no u64 clock reaches: no panic either.
        assert!(c.span_at(0).end_ms > 0);
    }

    #[test]
    fn days_in_a_time_zone_follow_dst_both_ways() {
        let berlin = cal(CalendarUnit::Day, "Europe/Berlin");
        // 2026-03-29: clocks go from 02:00 CET to 03:00 CEST; the day has 23 hours.
        let spring = berlin.span_at(utc("2026-03-29 12:00"));
        assert_eq!(spring.start_ms, utc("2026-03-28 23:00"));
        assert_eq!(spring.end_ms, utc("2026-03-29 22:00"));
        assert_eq!(spring.len_ms(), 23 * H);
        // 2026-10-25: back from 03:00 CEST to 02:00 CET; 25 hours.
        let autumn = berlin.span_at(utc("2026-10-25 12:00"));
        assert_eq!(autumn.start_ms, utc("2026-10-24 22:00"));
        assert_eq!(autumn.len_ms(), 25 * H);
        // The repeated hour (00:00–01:00 UTC both times 02:xx local) is one day's.
        assert_eq!(berlin.span_at(utc("2026-10-25 00:30")), autumn);
        assert_eq!(berlin.span_at(utc("2026-10-25 01:30")), autumn);
        let ny = cal(CalendarUnit::Day, "America/New_York");
        // 2026-03-08 02:00 EST → 03:00 EDT; 2026-11-01 02:00 EDT → 01:00 EST.
        assert_eq!(ny.span_at(utc("2026-03-08 12:00")).len_ms(), 23 * H);
        assert_eq!(
            ny.span_at(utc("2026-03-08 12:00")).start_ms,
            utc("2026-03-08 05:00")
        );
        assert_eq!(ny.span_at(utc("2026-11-01 12:00")).len_ms(), 25 * H);
        assert_eq!(
            ny.span_at(utc("2026-11-01 12:00")).end_ms,
            utc("2026-11-02 05:00")
        );
        // Just before and at local midnight.
        let before = ny.span_at(utc("2026-12-03 04:59"));
        let after = ny.span_at(utc("2026-12-03 05:00"));
        assert_eq!(
            (before.end_ms, after.id),
            (utc("2026-12-03 05:00"), before.id + 1)
        );
    }

    #[test]
    fn months_and_weeks_in_a_time_zone() {
        let tokyo = cal(CalendarUnit::Month, "Asia/Tokyo");
        let m = tokyo.span_at(utc("2026-12-02 13:55"));
        assert_eq!(
            (m.start_ms, m.end_ms),
            (utc("2026-11-30 15:00"), utc("2026-12-31 15:00"))
        );
        // Already January in Tokyo.
        assert_eq!(tokyo.span_at(utc("2026-12-31 15:00")).id, m.id + 1);
        let berlin = cal(CalendarUnit::Month, "Europe/Berlin");
        // March 2026 loses an hour to DST, October gains one.
        assert_eq!(berlin.span_at(utc("2026-03-15 00:00")).len_ms(), 31 * D - H);
        assert_eq!(berlin.span_at(utc("2026-10-15 00:00")).len_ms(), 31 * D + H);
        let week = cal(CalendarUnit::Week, "America/New_York");
        let w = week.span_at(utc("2026-11-04 12:00"));
        assert_eq!(w.start_ms, utc("2026-11-02 05:00"), "Monday 00:00 EST");
        let dst_week = week.span_at(utc("2026-10-28 12:00"));
        assert_eq!(dst_week.len_ms(), 7 * D + H, "the week of the change back");
        assert_eq!(dst_week.end_ms, w.start_ms);
    }

    #[test]
    fn midnights_that_happen_twice_or_never() {
        // Cuba sets clocks forward at 00:00 (2026-03-08): that day starts at 01:00 CDT.
        let havana = cal(CalendarUnit::Day, "America/Havana");
        let d = havana.span_at(utc("2026-03-08 12:00"));
        assert_eq!(d.start_ms, utc("2026-03-08 05:00"));
        assert_eq!(d.len_ms(), 23 * H);
        // ... and back at 01:00 to 00:00 (2026-11-01): its midnight comes twice.
        let d = havana.span_at(utc("2026-11-01 12:00"));
        assert_eq!(
            d.start_ms,
            utc("2026-11-01 04:00"),
            "the first 00:00, still CDT"
        );
        assert_eq!(d.len_ms(), 25 * H);
        // Samoa skipped 2011-12-30 altogether: that day is empty, and its neighbours meet.
        let apia = cal(CalendarUnit::Day, "Pacific/Apia");
        let before = apia.span_at(utc("2011-12-30 09:59"));
        let after = apia.span_at(utc("2011-12-30 10:00"));
        assert_eq!(before.end_ms, after.start_ms);
        assert_eq!(after.id, before.id + 2);
        // Every instant of a DST year lands in the period whose bounds hold it.
        for tz in [
            "Europe/Berlin",
            "America/Havana",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
        ] {
            for unit in [CalendarUnit::Day, CalendarUnit::Week, CalendarUnit::Month] {
                let c = cal(unit, tz);
                let mut now = utc("2026-01-01 00:00");
                while now < utc("2027-01-01 00:00") {
                    let s = c.span_at(now);
                    assert!(s.start_ms <= now && now < s.end_ms, "{tz} {unit:?} {now}");
                    assert_eq!(c.span_at(s.end_ms).start_ms, s.end_ms);
                    now += 7 * H + 13 * 60_000;
                }
            }
        }
    }

    #[test]
    fn the_cache_follows_the_clock() {
        let p = Periods::new(cal(CalendarUnit::Day, "Asia/Tokyo"));
        let a = p.at(utc("2026-12-02 14:59"));
        let b = p.at(utc("2026-12-02 15:00"));
        assert_eq!(b.id, a.id + 1);
        // An older reading still gets its own period, and leaves the cache alone.
        assert_eq!(p.at(utc("2026-12-02 14:00")), a);
        assert_eq!(p.at(utc("2026-12-02 16:00")), b);
    }

    #[test]
    fn the_far_future_does_not_panic() {
        let c = cal(CalendarUnit::Month, "Europe/Berlin");
        let s = c.span_at(u64::MAX - 1);
        assert!(s.start_ms < u64::MAX);
    }
}
