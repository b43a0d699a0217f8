//! Recurring meetings: rules and occurrences.

use cairn_core::app::meeting::{LocalTime, Weekday};
use cairn_core::app::series::{
    Frequency, MovedOccurrence, NewSeries, OccurrenceRecord, RecurrenceRule, RuleDay, RuleUntil,
    SeriesRecord,
};

/// How often a series repeats.
#[uniffi::remote(Enum)]
pub enum Frequency {
    /// Every `interval` weeks.
    Weekly,
    /// Every `interval` months.
    Monthly,
}

/// One weekday of a rule: "Wednesday", or in a monthly rule "the 4th Wednesday" (`nth`
/// 4) or "the last Thursday" (`nth` -1).
#[uniffi::remote(Record)]
pub struct RuleDay {
    /// The weekday.
    pub weekday: Weekday,
    /// Which one in the month (1..=5, or -1..=-5 from the end); `None`: every one.
    pub nth: Option<i8>,
}

/// When a rule stops (inclusive).
#[uniffi::remote(Enum)]
pub enum RuleUntil {
    /// Through this date, `YYYY-MM-DD`.
    Date {
        /// The last date.
        date: String,
    },
    /// Up to this instant (ms since the Unix epoch).
    Instant {
        /// The last instant.
        ms: i64,
    },
}

/// A recurrence rule (RFC 5545 RRULE) as fields.
#[uniffi::remote(Record)]
pub struct RecurrenceRule {
    /// Weekly or monthly.
    pub frequency: Frequency,
    /// Every how many weeks or months (1: every one).
    pub interval: u32,
    /// The days (empty: the start's weekday, or in a monthly rule its day of the month).
    pub by_day: Vec<RuleDay>,
    /// Stops after this many occurrences.
    pub count: Option<u32>,
    /// Stops after this date or instant (not with `count`).
    pub until: Option<RuleUntil>,
}

/// What a new series starts with.
#[uniffi::remote(Record)]
pub struct NewSeries {
    /// The title, shown for every occurrence.
    pub title: String,
    /// The organiser's IANA zone, which the times are in (`Europe/London`).
    pub zone: String,
    /// The first meeting's date, `YYYY-MM-DD` (an occurrence of `rule`).
    pub start_date: String,
    /// Its start time in `zone`, `HH:MM`.
    pub start_time: String,
    /// How long each meeting lasts.
    pub duration_minutes: u32,
    /// How it repeats.
    pub rule: RecurrenceRule,
}

/// An occurrence moved away from the rule's time.
#[uniffi::remote(Record)]
pub struct MovedOccurrence {
    /// The date the rule gives it, `YYYY-MM-DD` (its identity).
    pub original_date: String,
    /// Where it was moved to, in the series' zone.
    pub new_start: LocalTime,
}

/// A series as read.
#[uniffi::remote(Record)]
pub struct SeriesRecord {
    /// The series' document id.
    pub id: String,
    /// Its group.
    pub group_id: String,
    /// The title.
    pub title: String,
    /// The IANA zone the series is anchored in.
    pub zone: String,
    /// The first meeting's date, `YYYY-MM-DD`, in `zone`.
    pub start_date: String,
    /// The meetings' start time, `HH:MM`, in `zone`.
    pub start_time: String,
    /// How long each meeting lasts.
    pub duration_minutes: u32,
    /// How it repeats.
    pub rule: RecurrenceRule,
    /// The rule as RFC 5545 text (`FREQ=MONTHLY;BYDAY=4WE`).
    pub rule_text: String,
    /// How many schedule changes the series has had (ICS SEQUENCE).
    pub sequence: u64,
    /// Occurrences moved from the rule's time (that the current rule still produces).
    pub moved: Vec<MovedOccurrence>,
    /// Original dates of cancelled occurrences (that the current rule still produces).
    pub cancelled: Vec<String>,
    /// The document's heads this record was read at (lowercase hex).
    pub heads: Vec<String>,
}

/// One meeting of a series.
#[uniffi::remote(Record)]
pub struct OccurrenceRecord {
    /// The date the rule gives it, `YYYY-MM-DD`: its identity, also after a move (what
    /// the occurrence methods take).
    pub original_date: String,
    /// Start, ms since the Unix epoch.
    pub start_ms: i64,
    /// End, ms since the Unix epoch.
    pub end_ms: i64,
    /// The series' IANA zone.
    pub zone: String,
    /// The start in the series' zone.
    pub anchor_start: LocalTime,
    /// The start in the device's zone now ([`Cairn::set_time_zone`]).
    pub local_start: LocalTime,
    /// The end in the device's zone now.
    pub local_end: LocalTime,
    /// An organiser moved it from the rule's time.
    pub moved: bool,
    /// An organiser cancelled it.
    pub cancelled: bool,
    /// The id of its meeting document (the same on every device, whether opened or not).
    pub meeting_id: String,
    /// Someone has opened its meeting ([`Series::occurrence_meeting`]).
    pub meeting_opened: bool,
}
