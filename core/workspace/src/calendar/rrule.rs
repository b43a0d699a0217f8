//! RFC 5545 recurrence rules, for the rules Cairn's meeting series use, on jiff.
//!
//! Supported: `FREQ=WEEKLY` and `FREQ=MONTHLY` with `INTERVAL`, `COUNT` or `UNTIL`, `WKST`, and
//! `BYDAY` (for monthly rules with an optional ordinal: `4WE` is the 4th Wednesday, `-1TH` the
//! last Thursday, `WE` every Wednesday; a monthly rule without `BYDAY` repeats on DTSTART's day of
//! the month and skips months that lack it, as RFC 5545 says). Anything else is a [`ParseError`]
//! naming the part, so a rule is never silently expanded differently from how a calendar app
//! would expand it.
//!
//! Occurrences are civil date-times in the series' anchor zone ("18:00 Europe/London on the
//! 4th Wednesday"), turned into instants by jiff with its bundled time-zone database. A local
//! time that does not exist (spring forward) or exists twice (fall back) is resolved with
//! RFC 5545's and jiff's `compatible` rule: a time in a gap moves forward by the length of the
//! gap, a time in a fold takes the earlier of its two instants.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime, Weekday};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};
use thiserror::Error;

/// Why an RRULE text was rejected. Each variant names the rule part at fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The rule text is empty.
    #[error("the recurrence rule is empty")]
    Empty,
    /// A part is not `NAME=VALUE`.
    #[error("rule part `{0}` is not NAME=VALUE")]
    Malformed(String),
    /// A part appears twice.
    #[error("rule part {0} appears more than once")]
    Duplicate(String),
    /// `FREQ` is missing (RFC 5545 requires it).
    #[error("the rule has no FREQ")]
    MissingFrequency,
    /// A frequency other than WEEKLY or MONTHLY (e.g. DAILY, YEARLY).
    #[error("FREQ={0} is not supported; Cairn series repeat WEEKLY or MONTHLY")]
    UnsupportedFrequency(String),
    /// A rule part this implementation does not expand (e.g. BYMONTHDAY, BYSETPOS, BYHOUR).
    #[error("rule part {0} is not supported")]
    UnsupportedPart(String),
    /// A supported part with a value that is not valid for it.
    #[error("invalid value `{value}` for rule part {part}")]
    InvalidValue {
        /// The part (`INTERVAL`, `COUNT`, `UNTIL`, `BYDAY`, `WKST`).
        part: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A BYDAY ordinal (`2MO`) in a WEEKLY rule, which RFC 5545 forbids.
    #[error("BYDAY value `{0}` has an ordinal, which a WEEKLY rule cannot have")]
    OrdinalInWeekly(String),
    /// Both COUNT and UNTIL (RFC 5545: at most one of them).
    #[error("COUNT and UNTIL cannot both be given")]
    CountAndUntil,
}

/// Why a recurrence cannot be set up.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecurrenceError {
    /// DTSTART is not itself an occurrence of the rule. RFC 5545 leaves such a recurrence
    /// set undefined and calendar apps disagree on it, so Cairn refuses it.
    #[error("the series start {0} is not an occurrence of its rule")]
    StartNotInRule(Date),
}

/// How often the rule repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frequency {
    /// Every `INTERVAL` weeks.
    Weekly,
    /// Every `INTERVAL` months.
    Monthly,
}

/// One `BYDAY` entry: a weekday, with an ordinal within the month for monthly rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeekdayNum {
    /// `Some(4)` is the 4th such weekday of the month, `Some(-1)` the last; `None` every one.
    pub nth: Option<i8>,
    /// The weekday.
    pub weekday: Weekday,
}

impl WeekdayNum {
    /// Every `weekday` (in a weekly rule: that day of each week).
    pub fn every(weekday: Weekday) -> Self {
        WeekdayNum { nth: None, weekday }
    }

    /// The `nth` `weekday` of the month (1..=5, or -1..=-5 counting from the end).
    pub fn nth(nth: i8, weekday: Weekday) -> Self {
        WeekdayNum {
            nth: Some(nth),
            weekday,
        }
    }
}

/// When a rule stops, as written in `UNTIL` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Until {
    /// `UNTIL=20261231T235959Z`: an instant (what RFC 5545 requires with a TZID'd DTSTART).
    Utc(Timestamp),
    /// `UNTIL=20261231`: through that date.
    Date(Date),
    /// `UNTIL=20261231T180000`: a civil time in the anchor zone.
    Local(DateTime),
}

/// A parsed recurrence rule (the text after `RRULE:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RRule {
    freq: Frequency,
    interval: u32,
    by_day: Vec<WeekdayNum>,
    count: Option<u32>,
    until: Option<Until>,
    week_start: Weekday,
}

impl RRule {
    /// `FREQ=MONTHLY;BYDAY=<nth><weekday>`, e.g. `monthly_nth(4, Wednesday)` or `monthly_nth(-1, Thursday)`.
    pub fn monthly_nth(nth: i8, weekday: Weekday) -> Result<Self, ParseError> {
        if !valid_ordinal(nth) {
            return Err(ParseError::InvalidValue {
                part: "BYDAY",
                value: nth.to_string(),
            });
        }
        Ok(RRule {
            by_day: vec![WeekdayNum::nth(nth, weekday)],
            ..RRule::new(Frequency::Monthly)
        })
    }

    /// `FREQ=WEEKLY` on the start date's weekday.
    pub fn weekly() -> Self {
        RRule::new(Frequency::Weekly)
    }

    fn new(freq: Frequency) -> Self {
        RRule {
            freq,
            interval: 1,
            by_day: Vec::new(),
            count: None,
            until: None,
            week_start: Weekday::Monday,
        }
    }

    /// The same rule ending after `count` occurrences (replaces any UNTIL).
    pub fn with_count(mut self, count: u32) -> Result<Self, ParseError> {
        if count == 0 {
            return Err(ParseError::InvalidValue {
                part: "COUNT",
                value: "0".into(),
            });
        }
        self.count = Some(count);
        self.until = None;
        Ok(self)
    }

    /// The same rule ending at `until`, inclusive (replaces any COUNT).
    pub fn with_until(mut self, until: Until) -> Self {
        self.until = Some(until);
        self.count = None;
        self
    }

    /// The same rule repeating every `interval` weeks or months.
    pub fn with_interval(mut self, interval: u32) -> Result<Self, ParseError> {
        if interval == 0 {
            return Err(ParseError::InvalidValue {
                part: "INTERVAL",
                value: "0".into(),
            });
        }
        self.interval = interval;
        Ok(self)
    }

    /// The same rule with these BYDAY entries (ordinals only in monthly rules).
    pub fn with_by_day(mut self, by_day: Vec<WeekdayNum>) -> Result<Self, ParseError> {
        for d in &by_day {
            match d.nth {
                Some(n) if self.freq == Frequency::Weekly => {
                    return Err(ParseError::OrdinalInWeekly(format_weekday_num(
                        &WeekdayNum::nth(n, d.weekday),
                    )))
                }
                Some(n) if !valid_ordinal(n) => {
                    return Err(ParseError::InvalidValue {
                        part: "BYDAY",
                        value: n.to_string(),
                    })
                }
                _ => {}
            }
        }
        self.by_day = by_day;
        Ok(self)
    }

    /// The frequency.
    pub fn frequency(&self) -> Frequency {
        self.freq
    }
    /// The interval (1 unless INTERVAL says otherwise).
    pub fn interval(&self) -> u32 {
        self.interval
    }
    /// The BYDAY entries (empty: the start date's weekday or day of month).
    pub fn by_day(&self) -> &[WeekdayNum] {
        &self.by_day
    }
    /// COUNT, if any.
    pub fn count(&self) -> Option<u32> {
        self.count
    }
    /// UNTIL, if any.
    pub fn until(&self) -> Option<Until> {
        self.until
    }
    /// WKST (Monday unless given); it only matters for weekly rules with INTERVAL > 1.
    pub fn week_start(&self) -> Weekday {
        self.week_start
    }

    /// Parses `FREQ=MONTHLY;BYDAY=4WE` (an `RRULE:` prefix is accepted; names are case-insensitive).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let text = text.trim();
        let text = strip_prefix_ignore_case(text, "RRULE:").unwrap_or(text);
        if text.is_empty() {
            return Err(ParseError::Empty);
        }
        let mut freq = None;
        let mut interval = None;
        let mut by_day: Option<Vec<(Option<i8>, Weekday, String)>> = None;
        let mut count = None;
        let mut until = None;
        let mut week_start = None;
        for part in text.split(';').filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| ParseError::Malformed(part.to_owned()))?;
            let name = name.trim().to_ascii_uppercase();
            let value = value.trim();
            let dup = || ParseError::Duplicate(name.clone());
            match name.as_str() {
                "FREQ" => {
                    let f = match value.to_ascii_uppercase().as_str() {
                        "WEEKLY" => Frequency::Weekly,
                        "MONTHLY" => Frequency::Monthly,
                        _ => return Err(ParseError::UnsupportedFrequency(value.to_owned())),
                    };
                    if freq.replace(f).is_some() {
                        return Err(dup());
                    }
                }
                "INTERVAL" => {
                    let n = parse_positive(value, "INTERVAL")?;
                    if interval.replace(n).is_some() {
                        return Err(dup());
                    }
                }
                "COUNT" => {
                    let n = parse_positive(value, "COUNT")?;
                    if count.replace(n).is_some() {
                        return Err(dup());
                    }
                }
                "UNTIL" => {
                    let u = parse_until(value)?;
                    if until.replace(u).is_some() {
                        return Err(dup());
                    }
                }
                "WKST" => {
                    let wd = parse_weekday(value).ok_or_else(|| ParseError::InvalidValue {
                        part: "WKST",
                        value: value.to_owned(),
                    })?;
                    if week_start.replace(wd).is_some() {
                        return Err(dup());
                    }
                }
                "BYDAY" => {
                    let days = value
                        .split(',')
                        .map(|v| {
                            parse_weekday_num(v.trim()).map(|(n, wd)| (n, wd, v.trim().to_owned()))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if by_day.replace(days).is_some() {
                        return Err(dup());
                    }
                }
                _ => return Err(ParseError::UnsupportedPart(name)),
            }
        }
        let freq = freq.ok_or(ParseError::MissingFrequency)?;
        if count.is_some() && until.is_some() {
            return Err(ParseError::CountAndUntil);
        }
        let by_day = by_day.unwrap_or_default();
        if freq == Frequency::Weekly {
            if let Some((_, _, text)) = by_day.iter().find(|(n, _, _)| n.is_some()) {
                return Err(ParseError::OrdinalInWeekly(text.clone()));
            }
        }
        Ok(RRule {
            freq,
            interval: interval.unwrap_or(1),
            by_day: by_day
                .into_iter()
                .map(|(nth, weekday, _)| WeekdayNum { nth, weekday })
                .collect(),
            count,
            until,
            week_start: week_start.unwrap_or(Weekday::Monday),
        })
    }

    /// The dates this rule produces from `start` on, in order, before COUNT and UNTIL are
    /// applied (those need the time and zone, see [`Recurrence`]). Includes `start` when the
    /// rule produces it.
    fn candidate_dates(&self, start: Date) -> CandidateDates<'_> {
        let period_anchor = match self.freq {
            Frequency::Weekly => {
                let back = (start.weekday().to_monday_zero_offset()
                    - self.week_start.to_monday_zero_offset())
                .rem_euclid(7);
                start.checked_sub(Span::new().days(back)).unwrap_or(start)
            }
            Frequency::Monthly => start.first_of_month(),
        };
        CandidateDates {
            rule: self,
            start,
            period_anchor,
            period: 0,
            empty_periods: 0,
            buffer: VecDeque::new(),
            done: false,
        }
    }
}

impl FromStr for RRule {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RRule::parse(s)
    }
}

/// Formats the rule as RFC 5545 text without the `RRULE:` prefix, parts in a fixed order:
/// FREQ, INTERVAL (if not 1), BYDAY, COUNT or UNTIL, WKST (if not Monday).
impl fmt::Display for RRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.freq {
            Frequency::Weekly => "FREQ=WEEKLY",
            Frequency::Monthly => "FREQ=MONTHLY",
        })?;
        if self.interval != 1 {
            write!(f, ";INTERVAL={}", self.interval)?;
        }
        if !self.by_day.is_empty() {
            let days: Vec<String> = self.by_day.iter().map(format_weekday_num).collect();
            write!(f, ";BYDAY={}", days.join(","))?;
        }
        if let Some(count) = self.count {
            write!(f, ";COUNT={count}")?;
        }
        match self.until {
            Some(Until::Utc(ts)) => write!(f, ";UNTIL={}", ts.strftime("%Y%m%dT%H%M%SZ"))?,
            Some(Until::Date(d)) => write!(f, ";UNTIL={}", d.strftime("%Y%m%d"))?,
            Some(Until::Local(dt)) => write!(f, ";UNTIL={}", dt.strftime("%Y%m%dT%H%M%S"))?,
            None => {}
        }
        if self.week_start != Weekday::Monday {
            write!(f, ";WKST={}", weekday_code(self.week_start))?;
        }
        Ok(())
    }
}

/// After this many consecutive periods without a date the rule can never produce one again:
/// weekdays repeat every 400 Gregorian years (4800 months, 20871 weeks).
const MAX_EMPTY_PERIODS: u32 = 20_871;

struct CandidateDates<'a> {
    rule: &'a RRule,
    start: Date,
    period_anchor: Date,
    period: i64,
    empty_periods: u32,
    buffer: VecDeque<Date>,
    done: bool,
}

impl CandidateDates<'_> {
    /// The dates of period `self.period`, sorted; `None` when the calendar runs out (year 9999).
    fn period_dates(&self) -> Option<Vec<Date>> {
        let rule = self.rule;
        let step = self.period.checked_mul(i64::from(rule.interval))?;
        let mut dates = Vec::new();
        match rule.freq {
            Frequency::Weekly => {
                let week = self
                    .period_anchor
                    .checked_add(Span::new().try_weeks(step).ok()?)
                    .ok()?;
                let wkst = rule.week_start.to_monday_zero_offset();
                let mut push = |wd: Weekday| {
                    let off = (wd.to_monday_zero_offset() - wkst).rem_euclid(7);
                    if let Ok(d) = week.checked_add(Span::new().days(off)) {
                        dates.push(d);
                    }
                };
                if rule.by_day.is_empty() {
                    push(self.start.weekday());
                } else {
                    rule.by_day.iter().for_each(|d| push(d.weekday));
                }
            }
            Frequency::Monthly => {
                let month = self
                    .period_anchor
                    .checked_add(Span::new().try_months(step).ok()?)
                    .ok()?;
                if rule.by_day.is_empty() {
                    if let Ok(d) = Date::new(month.year(), month.month(), self.start.day()) {
                        dates.push(d);
                    }
                }
                for d in &rule.by_day {
                    match d.nth {
                        Some(n) => {
                            if let Ok(date) = month.nth_weekday_of_month(n, d.weekday) {
                                dates.push(date);
                            }
                        }
                        None => {
                            for n in 1..=5 {
                                if let Ok(date) = month.nth_weekday_of_month(n, d.weekday) {
                                    dates.push(date);
                                }
                            }
                        }
                    }
                }
            }
        }
        dates.sort();
        dates.dedup();
        Some(dates)
    }
}

impl Iterator for CandidateDates<'_> {
    type Item = Date;

    fn next(&mut self) -> Option<Date> {
        while self.buffer.is_empty() {
            if self.done || self.empty_periods >= MAX_EMPTY_PERIODS {
                return None;
            }
            match self.period_dates() {
                Some(dates) => {
                    let before = self.buffer.len();
                    self.buffer
                        .extend(dates.into_iter().filter(|d| *d >= self.start));
                    if self.buffer.len() == before {
                        self.empty_periods += 1;
                    } else {
                        self.empty_periods = 0;
                    }
                    self.period += 1;
                }
                None => self.done = true,
            }
        }
        self.buffer.pop_front()
    }
}

/// A rule anchored at a civil start in a time zone: the recurrence set of a series.
#[derive(Debug, Clone, PartialEq)]
pub struct Recurrence {
    start: DateTime,
    zone: TimeZone,
    rule: RRule,
}

impl Recurrence {
    /// Anchors `rule` at `start` (DTSTART) in `zone`. `start` must be an occurrence of the rule.
    pub fn new(start: DateTime, zone: TimeZone, rule: RRule) -> Result<Self, RecurrenceError> {
        let first = rule.candidate_dates(start.date()).next();
        if first != Some(start.date()) {
            return Err(RecurrenceError::StartNotInRule(start.date()));
        }
        Ok(Recurrence { start, zone, rule })
    }

    /// DTSTART.
    pub fn start(&self) -> DateTime {
        self.start
    }
    /// The anchor zone.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }
    /// The rule.
    pub fn rule(&self) -> &RRule {
        &self.rule
    }

    /// The civil start of the occurrence on `date` (whether or not the rule produces `date`).
    pub fn civil_start_on(&self, date: Date) -> DateTime {
        date.to_datetime(self.start.time())
    }

    /// Every occurrence in order, as (original date, start in the anchor zone). Unbounded
    /// rules go on until the calendar ends; bound the iteration yourself.
    pub fn iter(&self) -> Occurrences<'_> {
        Occurrences {
            recurrence: self,
            dates: self.rule.candidate_dates(self.start.date()),
            emitted: 0,
        }
    }

    /// Whether the rule produces an occurrence on `date`.
    pub fn contains(&self, date: Date) -> bool {
        self.iter()
            .map(|(d, _)| d)
            .take_while(|d| *d <= date)
            .any(|d| d == date)
    }
}

/// Iterator over a [`Recurrence`]'s occurrences; see [`Recurrence::iter`].
#[derive(Debug)]
pub struct Occurrences<'a> {
    recurrence: &'a Recurrence,
    dates: CandidateDates<'a>,
    emitted: u32,
}

impl fmt::Debug for CandidateDates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CandidateDates")
            .field("period", &self.period)
            .finish()
    }
}

impl Iterator for Occurrences<'_> {
    type Item = (Date, Zoned);

    fn next(&mut self) -> Option<(Date, Zoned)> {
        let r = self.recurrence;
        if r.rule.count.is_some_and(|c| self.emitted >= c) {
            return None;
        }
        let date = self.dates.next()?;
        let civil = r.civil_start_on(date);
        let zoned = to_zoned(civil, &r.zone)?;
        let within = match r.rule.until {
            None => true,
            Some(Until::Utc(ts)) => zoned.timestamp() <= ts,
            Some(Until::Date(d)) => date <= d,
            Some(Until::Local(dt)) => civil <= dt,
        };
        if !within {
            return None;
        }
        self.emitted += 1;
        Some((date, zoned))
    }
}

/// A civil date-time in `zone` as an instant, with the `compatible` rule for gaps and folds
/// (see the module doc). `None` only outside jiff's supported range (years -9999..=9999).
pub fn to_zoned(civil: DateTime, zone: &TimeZone) -> Option<Zoned> {
    zone.to_ambiguous_zoned(civil).compatible().ok()
}

fn valid_ordinal(n: i8) -> bool {
    (1..=5).contains(&n) || (-5..=-1).contains(&n)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn parse_positive(value: &str, part: &'static str) -> Result<u32, ParseError> {
    match value.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ParseError::InvalidValue {
            part,
            value: value.to_owned(),
        }),
    }
}

fn parse_until(value: &str) -> Result<Until, ParseError> {
    let bad = || ParseError::InvalidValue {
        part: "UNTIL",
        value: value.to_owned(),
    };
    if let Some(utc) = value.strip_suffix('Z').or_else(|| value.strip_suffix('z')) {
        let dt = DateTime::strptime("%Y%m%dT%H%M%S", utc).map_err(|_| bad())?;
        let ts = dt.to_zoned(TimeZone::UTC).map_err(|_| bad())?.timestamp();
        Ok(Until::Utc(ts))
    } else if value.len() == 8 {
        Ok(Until::Date(
            Date::strptime("%Y%m%d", value).map_err(|_| bad())?,
        ))
    } else {
        Ok(Until::Local(
            DateTime::strptime("%Y%m%dT%H%M%S", value).map_err(|_| bad())?,
        ))
    }
}

fn parse_weekday(code: &str) -> Option<Weekday> {
    Some(match code.to_ascii_uppercase().as_str() {
        "MO" => Weekday::Monday,
        "TU" => Weekday::Tuesday,
        "WE" => Weekday::Wednesday,
        "TH" => Weekday::Thursday,
        "FR" => Weekday::Friday,
        "SA" => Weekday::Saturday,
        "SU" => Weekday::Sunday,
        _ => return None,
    })
}

fn weekday_code(wd: Weekday) -> &'static str {
    match wd {
        Weekday::Monday => "MO",
        Weekday::Tuesday => "TU",
        Weekday::Wednesday => "WE",
        Weekday::Thursday => "TH",
        Weekday::Friday => "FR",
        Weekday::Saturday => "SA",
        Weekday::Sunday => "SU",
    }
}

fn parse_weekday_num(value: &str) -> Result<(Option<i8>, Weekday), ParseError> {
    let bad = || ParseError::InvalidValue {
        part: "BYDAY",
        value: value.to_owned(),
    };
    if value.len() < 2 || !value.is_ascii() {
        return Err(bad());
    }
    let (num, code) = value.split_at(value.len() - 2);
    let weekday = parse_weekday(code).ok_or_else(bad)?;
    if num.is_empty() {
        return Ok((None, weekday));
    }
    let digits = num.strip_prefix('+').unwrap_or(num);
    let n: i8 = digits.parse().map_err(|_| bad())?;
    if !valid_ordinal(n) {
        // RFC 5545 allows up to ±53 for yearly rules; in a month only ±1..5 can exist.
        return Err(bad());
    }
    Ok((Some(n), weekday))
}

fn format_weekday_num(d: &WeekdayNum) -> String {
    match d.nth {
        Some(n) => format!("{n}{}", weekday_code(d.weekday)),
        None => weekday_code(d.weekday).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{date, time};

    fn london() -> TimeZone {
        TimeZone::get("Europe/London").unwrap()
    }

    fn dates(r: &Recurrence, n: usize) -> Vec<Date> {
        r.iter().take(n).map(|(d, _)| d).collect()
    }

    #[test]
    fn the_rules_cairn_uses_parse_and_format_back() {
        for text in [
            "FREQ=MONTHLY;BYDAY=4WE",
            "FREQ=MONTHLY;BYDAY=-1TH",
            "FREQ=WEEKLY;COUNT=12",
            "FREQ=WEEKLY;INTERVAL=2;BYDAY=TU,TH;UNTIL=20261231T235959Z",
            "FREQ=MONTHLY;BYDAY=1MO;UNTIL=20270601",
            "FREQ=WEEKLY;BYDAY=SU;WKST=SU",
        ] {
            let rule = RRule::parse(text).unwrap();
            assert_eq!(rule.to_string(), text);
            assert_eq!(RRule::parse(&rule.to_string()).unwrap(), rule);
        }
        let rule: RRule = "rrule:freq=monthly;byday=+4we".parse().unwrap();
        assert_eq!(rule, RRule::monthly_nth(4, Weekday::Wednesday).unwrap());
    }

    #[test]
    fn unsupported_rules_say_which_part() {
        assert_eq!(
            RRule::parse("FREQ=DAILY"),
            Err(ParseError::UnsupportedFrequency("DAILY".into()))
        );
        assert_eq!(
            RRule::parse("FREQ=MONTHLY;BYMONTHDAY=15"),
            Err(ParseError::UnsupportedPart("BYMONTHDAY".into()))
        );
        assert_eq!(
            RRule::parse("FREQ=MONTHLY;BYDAY=WE;BYSETPOS=4"),
            Err(ParseError::UnsupportedPart("BYSETPOS".into()))
        );
        assert_eq!(
            RRule::parse("FREQ=MONTHLY;BYDAY=6WE"),
            Err(ParseError::InvalidValue {
                part: "BYDAY",
                value: "6WE".into()
            })
        );
        assert_eq!(
            RRule::parse("FREQ=WEEKLY;BYDAY=2MO"),
            Err(ParseError::OrdinalInWeekly("2MO".into()))
        );
        assert_eq!(
            RRule::parse("FREQ=WEEKLY;COUNT=0"),
            Err(ParseError::InvalidValue {
                part: "COUNT",
                value: "0".into()
            })
        );
        assert_eq!(
            RRule::parse("FREQ=WEEKLY;COUNT=2;UNTIL=20260101"),
            Err(ParseError::CountAndUntil)
        );
        assert_eq!(RRule::parse("BYDAY=WE"), Err(ParseError::MissingFrequency));
        assert_eq!(
            RRule::parse("FREQ=WEEKLY;FREQ=WEEKLY"),
            Err(ParseError::Duplicate("FREQ".into()))
        );
        assert_eq!(
            RRule::parse("FREQ"),
            Err(ParseError::Malformed("FREQ".into()))
        );
        assert_eq!(RRule::parse("  "), Err(ParseError::Empty));
        assert_eq!(
            RRule::parse("FREQ=WEEKLY;UNTIL=2026-01-01"),
            Err(ParseError::InvalidValue {
                part: "UNTIL",
                value: "2026-01-01".into()
            })
        );
    }

    #[test]
    fn fourth_wednesday_over_a_year() {
        let rule = RRule::parse("FREQ=MONTHLY;BYDAY=4WE").unwrap();
        let r = Recurrence::new(date(2026, 1, 28).at(18, 0, 0, 0), london(), rule).unwrap();
        let expected = [
            date(2026, 1, 28),
            date(2026, 2, 25),
            date(2026, 3, 25),
            date(2026, 4, 22),
            date(2026, 5, 27),
            date(2026, 6, 24),
            date(2026, 7, 22),
            date(2026, 8, 26),
            date(2026, 9, 23),
            date(2026, 10, 28),
            date(2026, 11, 25),
            date(2026, 12, 23),
        ];
        assert_eq!(dates(&r, 12), expected);
        for (d, z) in r.iter().take(12) {
            assert_eq!(d.weekday(), Weekday::Wednesday);
            assert_eq!(
                (z.date(), z.time()),
                (d, time(18, 0, 0, 0)),
                "18:00 London all year"
            );
        }
    }

    #[test]
    fn last_thursday_of_the_month() {
        let rule = RRule::parse("FREQ=MONTHLY;BYDAY=-1TH").unwrap();
        let r = Recurrence::new(date(2026, 1, 29).at(10, 30, 0, 0), london(), rule).unwrap();
        assert_eq!(
            dates(&r, 6),
            [
                date(2026, 1, 29),
                date(2026, 2, 26),
                date(2026, 3, 26),
                date(2026, 4, 30),
                date(2026, 5, 28),
                date(2026, 6, 25),
            ]
        );
    }

    #[test]
    fn weekly_count_twelve_ends_after_twelve() {
        let rule = RRule::parse("FREQ=WEEKLY;COUNT=12").unwrap();
        let r = Recurrence::new(date(2026, 9, 7).at(19, 0, 0, 0), london(), rule).unwrap();
        let all = dates(&r, 100);
        assert_eq!(all.len(), 12);
        assert_eq!(all[0], date(2026, 9, 7));
        assert_eq!(all[11], date(2026, 11, 23));
        assert!(all.iter().all(|d| d.weekday() == Weekday::Monday));
    }

    #[test]
    fn interval_and_until_are_honoured() {
        let rule =
            RRule::parse("FREQ=WEEKLY;INTERVAL=2;BYDAY=TU,TH;UNTIL=20260301T000000Z").unwrap();
        let r = Recurrence::new(date(2026, 2, 3).at(9, 0, 0, 0), london(), rule).unwrap();
        assert_eq!(
            dates(&r, 100),
            [
                date(2026, 2, 3),
                date(2026, 2, 5),
                date(2026, 2, 17),
                date(2026, 2, 19)
            ]
        );
        // UNTIL is inclusive: an occurrence exactly at UNTIL counts.
        let rule = RRule::parse("FREQ=MONTHLY;BYDAY=4WE;UNTIL=20260325T180000Z").unwrap();
        let r = Recurrence::new(date(2026, 1, 28).at(18, 0, 0, 0), london(), rule).unwrap();
        assert_eq!(
            dates(&r, 100),
            [date(2026, 1, 28), date(2026, 2, 25), date(2026, 3, 25)]
        );
    }

    #[test]
    fn fifth_weekday_skips_months_without_one_and_monthly_day_skips_short_months() {
        let rule = RRule::parse("FREQ=MONTHLY;BYDAY=5FR").unwrap();
        let r = Recurrence::new(date(2026, 1, 30).at(12, 0, 0, 0), london(), rule).unwrap();
        assert_eq!(
            dates(&r, 3),
            [date(2026, 1, 30), date(2026, 5, 29), date(2026, 7, 31)]
        );
        let rule = RRule::parse("FREQ=MONTHLY").unwrap();
        let r = Recurrence::new(date(2026, 1, 31).at(12, 0, 0, 0), london(), rule).unwrap();
        assert_eq!(
            dates(&r, 3),
            [date(2026, 1, 31), date(2026, 3, 31), date(2026, 5, 31)]
        );
    }

    #[test]
    fn a_start_outside_the_rule_is_refused() {
        let rule = RRule::parse("FREQ=MONTHLY;BYDAY=4WE").unwrap();
        assert_eq!(
            Recurrence::new(date(2026, 1, 21).at(18, 0, 0, 0), london(), rule),
            Err(RecurrenceError::StartNotInRule(date(2026, 1, 21)))
        );
    }

    #[test]
    fn eighteen_hundred_london_in_new_york_across_both_dst_changes() {
        // The US changes on 8 March and 1 November 2026, the UK on 29 March and 25 October:
        // in the weeks between, 18:00 London is 14:00 in New York instead of 13:00.
        let rule = RRule::parse("FREQ=MONTHLY;BYDAY=4WE").unwrap();
        let r = Recurrence::new(date(2026, 2, 25).at(18, 0, 0, 0), london(), rule).unwrap();
        let ny = TimeZone::get("America/New_York").unwrap();
        let in_ny: Vec<(Date, i8)> = r
            .iter()
            .take(10)
            .map(|(d, z)| (d, z.with_time_zone(ny.clone()).hour()))
            .collect();
        assert_eq!(
            in_ny,
            [
                (date(2026, 2, 25), 13),
                (date(2026, 3, 25), 14),
                (date(2026, 4, 22), 13),
                (date(2026, 5, 27), 13),
                (date(2026, 6, 24), 13),
                (date(2026, 7, 22), 13),
                (date(2026, 8, 26), 13),
                (date(2026, 9, 23), 13),
                (date(2026, 10, 28), 14),
                (date(2026, 11, 25), 13),
            ]
        );
        for (_, z) in r.iter().take(10) {
            assert_eq!(z.hour(), 18, "the series stays at 18:00 in its anchor zone");
        }
    }

    #[test]
    fn weekly_series_straddling_the_clock_changes() {
        let rule = RRule::parse("FREQ=WEEKLY;BYDAY=WE").unwrap();
        let r = Recurrence::new(date(2026, 3, 4).at(18, 0, 0, 0), london(), rule).unwrap();
        let ny = TimeZone::get("America/New_York").unwrap();
        let hours: Vec<i8> = r
            .iter()
            .take(5)
            .map(|(_, z)| z.with_time_zone(ny.clone()).hour())
            .collect();
        // 4 March: both on winter time; 11, 18, 25 March: only the US has moved; 1 April: both.
        assert_eq!(hours, [13, 14, 14, 14, 13]);
    }

    #[test]
    fn non_existent_and_ambiguous_local_times_resolve_compatibly() {
        // 01:30 on 29 March 2026 does not exist in London (01:00 GMT jumps to 02:00 BST):
        // compatible moves it forward by the gap, to 02:30 BST = 01:30 UTC.
        let rule = RRule::parse("FREQ=WEEKLY;BYDAY=SU").unwrap();
        let r = Recurrence::new(date(2026, 3, 22).at(1, 30, 0, 0), london(), rule).unwrap();
        let got: Vec<(Date, String)> = r
            .iter()
            .take(2)
            .map(|(d, z)| (d, z.timestamp().to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (date(2026, 3, 22), "2026-03-22T01:30:00Z".to_owned()),
                (date(2026, 3, 29), "2026-03-29T01:30:00Z".to_owned()),
            ]
        );
        // 01:30 on 25 October 2026 happens twice: compatible takes the earlier (BST) one.
        let r = Recurrence::new(
            date(2026, 10, 18).at(1, 30, 0, 0),
            london(),
            RRule::weekly(),
        )
        .unwrap();
        let (d, z) = r.iter().nth(1).unwrap();
        assert_eq!(d, date(2026, 10, 25));
        assert_eq!(z.timestamp().to_string(), "2026-10-25T00:30:00Z");
        assert_eq!(z.offset().seconds(), 3600);
    }
}
