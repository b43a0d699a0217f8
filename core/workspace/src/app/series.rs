//! [`Series`]: a recurring meeting ("the 4th Wednesday of the month, 18:00 Europe/London")
//! and its occurrences, shown in the device's own zone; and the [`Group`] methods that
//! create and open series.
//!
//! Each occurrence has its own meeting document, whose id is derived from the series and
//! the occurrence's original date, so two organisers who open it offline get one meeting
//! ([`Series::occurrence_meeting`]). Occurrence meetings are reached through their series
//! (the series records them), not listed one by one in the group's index.

use std::sync::Arc;

use automerge::Automerge;
use cairn_sync::ids::DocumentId;
use cairn_sync::membership::{BoundKind, GroupId};
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::app::handles::document_id;
use crate::app::meeting::{
    group_index, heads_hex, list_in_index, local_time, parse_date, retitle_in_index, LocalTime,
    Weekday,
};
use crate::app::{Cairn, CairnError, Group, Listener, Meeting, Series, Subscription};
use crate::calendar::rrule::{self, RRule, Until};
use crate::model::index::IndexKind;
use crate::model::meeting as meeting_model;
use crate::model::series::{self as model, SeriesError};

// ---------------------------------------------------------------------------------------
// Records.

/// How often a series repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Frequency {
    /// Every `interval` weeks.
    Weekly,
    /// Every `interval` months.
    Monthly,
}

/// One weekday of a rule: "Wednesday", or in a monthly rule "the 4th Wednesday" (`nth`
/// 4) or "the last Thursday" (`nth` -1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleDay {
    /// The weekday.
    pub weekday: Weekday,
    /// Which one in the month (1..=5, or -1..=-5 from the end); `None`: every one.
    pub nth: Option<i8>,
}

/// When a rule stops (inclusive).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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

impl RecurrenceRule {
    /// Monthly on the `nth` `weekday` ("the 4th Wednesday": 4, Wednesday; "the last
    /// Thursday": -1, Thursday).
    pub fn monthly_nth(nth: i8, weekday: Weekday) -> RecurrenceRule {
        RecurrenceRule {
            frequency: Frequency::Monthly,
            interval: 1,
            by_day: vec![RuleDay {
                weekday,
                nth: Some(nth),
            }],
            count: None,
            until: None,
        }
    }

    /// Weekly on the start's weekday.
    pub fn weekly() -> RecurrenceRule {
        RecurrenceRule {
            frequency: Frequency::Weekly,
            interval: 1,
            by_day: Vec::new(),
            count: None,
            until: None,
        }
    }
}

/// What a new series starts with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MovedOccurrence {
    /// The date the rule gives it, `YYYY-MM-DD` (its identity).
    pub original_date: String,
    /// Where it was moved to, in the series' zone.
    pub new_start: LocalTime,
}

/// A series as read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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

// ---------------------------------------------------------------------------------------
// Conversions.

impl From<SeriesError> for CairnError {
    fn from(e: SeriesError) -> Self {
        match e {
            SeriesError::Schema(e) => e.into(),
            SeriesError::Automerge(e) => e.into(),
            SeriesError::NotAnOccurrence(date) => {
                CairnError::not_found(format!("an occurrence on {date}"))
            }
            e @ (SeriesError::Rule(_)
            | SeriesError::Recurrence(_)
            | SeriesError::Zone(_)
            | SeriesError::InvalidDuration(_)
            | SeriesError::OutOfRange) => CairnError::invalid(e.to_string()),
        }
    }
}

fn weekday_code(day: Weekday) -> &'static str {
    match day {
        Weekday::Monday => "MO",
        Weekday::Tuesday => "TU",
        Weekday::Wednesday => "WE",
        Weekday::Thursday => "TH",
        Weekday::Friday => "FR",
        Weekday::Saturday => "SA",
        Weekday::Sunday => "SU",
    }
}

/// Builds the RRULE text and lets the calendar module's parser judge it, so a rule from
/// the app is held to exactly the rules a stored one is.
fn to_rrule(rule: &RecurrenceRule) -> Result<RRule, CairnError> {
    let mut text = String::from(match rule.frequency {
        Frequency::Weekly => "FREQ=WEEKLY",
        Frequency::Monthly => "FREQ=MONTHLY",
    });
    if rule.interval != 1 {
        text.push_str(&format!(";INTERVAL={}", rule.interval));
    }
    if !rule.by_day.is_empty() {
        let days: Vec<String> = rule
            .by_day
            .iter()
            .map(|d| match d.nth {
                Some(n) => format!("{n}{}", weekday_code(d.weekday)),
                None => weekday_code(d.weekday).to_owned(),
            })
            .collect();
        text.push_str(&format!(";BYDAY={}", days.join(",")));
    }
    if let Some(count) = rule.count {
        text.push_str(&format!(";COUNT={count}"));
    }
    match &rule.until {
        Some(RuleUntil::Date { date }) => {
            text.push_str(&format!(";UNTIL={}", parse_date(date)?.strftime("%Y%m%d")))
        }
        Some(RuleUntil::Instant { ms }) => {
            let ts = Timestamp::from_millisecond(*ms)
                .map_err(|_| CairnError::invalid("the rule's end is out of range"))?;
            text.push_str(&format!(";UNTIL={}", ts.strftime("%Y%m%dT%H%M%SZ")))
        }
        None => {}
    }
    RRule::parse(&text).map_err(|e| CairnError::invalid(e.to_string()))
}

fn rule_record(rule: &RRule, zone: &TimeZone) -> RecurrenceRule {
    RecurrenceRule {
        frequency: match rule.frequency() {
            rrule::Frequency::Weekly => Frequency::Weekly,
            rrule::Frequency::Monthly => Frequency::Monthly,
        },
        interval: rule.interval(),
        by_day: rule
            .by_day()
            .iter()
            .map(|d| RuleDay {
                weekday: d.weekday.into(),
                nth: d.nth,
            })
            .collect(),
        count: rule.count(),
        until: rule.until().map(|u| match u {
            Until::Date(d) => RuleUntil::Date {
                date: d.to_string(),
            },
            Until::Utc(ts) => RuleUntil::Instant {
                ms: ts.as_millisecond(),
            },
            // A civil end in the anchor zone: the instant it names there.
            Until::Local(dt) => RuleUntil::Instant {
                ms: rrule::to_zoned(dt, zone)
                    .map(|z| z.timestamp().as_millisecond())
                    .unwrap_or(i64::MAX),
            },
        }),
    }
}

fn civil_record(dt: DateTime, zone: &TimeZone) -> LocalTime {
    let ms = rrule::to_zoned(dt, zone)
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or_default();
    local_time(ms, zone)
}

fn series_record(
    doc: &Automerge,
    id: &DocumentId,
    group: &GroupId,
) -> Result<SeriesRecord, CairnError> {
    let s = model::read_series(doc)?;
    let start = s.start();
    Ok(SeriesRecord {
        id: id.to_string(),
        group_id: group.to_string(),
        title: s.title.clone(),
        zone: s.zone_name.clone(),
        start_date: start.date().to_string(),
        start_time: format!("{:02}:{:02}", start.hour(), start.minute()),
        duration_minutes: s.duration_minutes,
        rule: rule_record(s.rule(), s.zone()),
        rule_text: s.rule().to_string(),
        sequence: s.sequence,
        moved: s
            .effective_moves()
            .map(|(date, to)| MovedOccurrence {
                original_date: date.to_string(),
                new_start: civil_record(to, s.zone()),
            })
            .collect(),
        cancelled: s.effective_cancellations().map(|d| d.to_string()).collect(),
        heads: heads_hex(doc),
    })
}

fn occurrence_record(
    series_id: &DocumentId,
    series: &model::Series,
    o: &model::Occurrence,
    device_zone: &TimeZone,
) -> OccurrenceRecord {
    let meeting = o
        .meeting
        .unwrap_or_else(|| model::occurrence_document_id(series_id, o.original_date));
    OccurrenceRecord {
        original_date: o.original_date.to_string(),
        start_ms: o.start.as_millisecond(),
        end_ms: o.end.as_millisecond(),
        zone: series.zone_name.clone(),
        anchor_start: local_time(o.start.as_millisecond(), &o.zone),
        local_start: local_time(o.start.as_millisecond(), device_zone),
        local_end: local_time(o.end.as_millisecond(), device_zone),
        moved: o.moved,
        cancelled: series.cancelled.contains(&o.original_date),
        meeting_id: meeting.to_string(),
        meeting_opened: o.meeting.is_some(),
    }
}

/// The series as the expansion should see it: with `include_cancelled`, cancellations
/// are lifted so cancelled occurrences appear (flagged from the real series).
fn expansion_view(series: &model::Series, include_cancelled: bool) -> model::Series {
    let mut view = series.clone();
    if include_cancelled {
        view.cancelled.clear();
    }
    view
}

fn parse_time(text: &str) -> Result<Time, CairnError> {
    text.trim()
        .parse()
        .map_err(|_| CairnError::invalid("a time must be written HH:MM"))
}

fn timestamp(ms: i64) -> Result<Timestamp, CairnError> {
    Timestamp::from_millisecond(ms).map_err(|_| CairnError::invalid("the time is out of range"))
}

/// Creates `bytes` as document `doc` of `group` (bound as `kind`, registered before it
/// exists so the relay serves it from its first sync), or merges them into the copy on
/// this device. Offline, the registration waits on the device and is retried.
async fn import_in_group(
    cairn: &Cairn,
    group: &GroupId,
    kind: BoundKind,
    doc: DocumentId,
    bytes: Vec<u8>,
) -> Result<(), CairnError> {
    let client = cairn.inner.client.clone();
    let relay = cairn.group_relay(group).await?;
    let group = group.clone();
    cairn
        .run(async move {
            // On the group's relay: a member of groups on two relays registers each
            // document with its own.
            match relay {
                Some(relay) => relay.register(doc, &group, kind).await?,
                None => client.register(doc, &group, kind).await?,
            };
            client.import(doc, bytes).await?;
            Ok(())
        })
        .await
}

// ---------------------------------------------------------------------------------------
// Group: creating and opening series.

impl Group {
    /// Creates a recurring series and lists it in the group's index. Fails with
    /// [`CairnError::NotFound`] before creating anything if the group's index is not known
    /// yet, and with [`CairnError::Invalid`] if the zone is unknown, the start is not an
    /// occurrence of the rule or the duration is 0 or over a week.
    pub async fn create_series(&self, series: NewSeries) -> Result<Series, CairnError> {
        let index_doc = group_index(&self.cairn, &self.group).await?;
        create_series_in(&self.cairn, &self.group, index_doc, series).await
    }

    /// The series with this document id (not loaded until used).
    pub fn series(&self, series_id: &str) -> Result<Series, CairnError> {
        Ok(Series::new(
            self.cairn.clone(),
            self.group.clone(),
            document_id(series_id)?,
        ))
    }
}

/// Creates a series of `group` and lists it in `index_doc`.
pub(crate) async fn create_series_in(
    cairn: &Cairn,
    group: &GroupId,
    index_doc: DocumentId,
    series: NewSeries,
) -> Result<Series, CairnError> {
    if series.title.trim().is_empty() {
        return Err(CairnError::invalid("a series needs a title"));
    }
    let init = model::SeriesInit {
        title: series.title.clone(),
        zone: series.zone,
        start: parse_date(&series.start_date)?.to_datetime(parse_time(&series.start_time)?),
        duration_minutes: series.duration_minutes,
        rule: to_rrule(&series.rule)?,
    };
    let (doc, ()) = cairn
        .create_doc(group, BoundKind::Series, move |tx| {
            Ok(model::new_series(tx, init)?)
        })
        .await?;
    list_in_index(cairn, index_doc, doc, IndexKind::Series, series.title).await?;
    Ok(Series::new(cairn.clone(), group.clone(), doc))
}

// ---------------------------------------------------------------------------------------
// Series.

impl Series {
    async fn change(
        &self,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), SeriesError>
            + Send
            + 'static,
    ) -> Result<(), CairnError> {
        self.cairn
            .change_doc(self.doc, move |tx| f(tx).map_err(CairnError::from))
            .await
    }

    async fn model(&self) -> Result<model::Series, CairnError> {
        self.cairn
            .read_doc(self.doc, |doc| Ok(model::read_series(doc)?))
            .await
    }

    /// The series as it is on this device now.
    pub async fn read(&self) -> Result<SeriesRecord, CairnError> {
        let (id, group) = (self.doc, self.group.clone());
        self.cairn
            .read_doc(self.doc, move |doc| series_record(doc, &id, &group))
            .await
    }

    /// The series now, then after every change to it, until cancelled or dropped.
    pub fn subscribe(&self, listener: Arc<dyn Listener<SeriesRecord>>) -> Subscription {
        let (id, group) = (self.doc, self.group.clone());
        self.cairn.subscribe_doc(
            self.doc,
            move |doc| series_record(doc, &id, &group),
            listener,
        )
    }

    /// The next `count` occurrences that have not ended yet (one in progress counts), in
    /// order of start, times also shown in the device's zone. With `include_cancelled`,
    /// cancelled ones are listed (and counted) too, flagged `cancelled`.
    pub async fn next_occurrences(
        &self,
        count: u32,
        include_cancelled: bool,
    ) -> Result<Vec<OccurrenceRecord>, CairnError> {
        self.next_occurrences_after(self.cairn.now_ms(), count, include_cancelled)
            .await
    }

    pub(crate) async fn next_occurrences_after(
        &self,
        after_ms: i64,
        count: u32,
        include_cancelled: bool,
    ) -> Result<Vec<OccurrenceRecord>, CairnError> {
        let series = self.model().await?;
        let zone = self.cairn.zone();
        let view = expansion_view(&series, include_cancelled);
        Ok(
            model::next_occurrences(&view, timestamp(after_ms)?, count as usize, &zone)
                .iter()
                .map(|(o, _)| occurrence_record(&self.doc, &series, o, &zone))
                .collect(),
        )
    }

    /// The occurrences overlapping `from_ms..to_ms` (a calendar's month), in order of start.
    pub async fn occurrences_between(
        &self,
        from_ms: i64,
        to_ms: i64,
        include_cancelled: bool,
    ) -> Result<Vec<OccurrenceRecord>, CairnError> {
        let series = self.model().await?;
        let zone = self.cairn.zone();
        let view = expansion_view(&series, include_cancelled);
        Ok(
            model::occurrences_between(&view, timestamp(from_ms)?, timestamp(to_ms)?)
                .iter()
                .map(|o| occurrence_record(&self.doc, &series, o, &zone))
                .collect(),
        )
    }

    /// The occurrence whose original date is `date` (`YYYY-MM-DD`), cancelled or not;
    /// [`CairnError::NotFound`] if the rule has no occurrence that day.
    pub async fn occurrence(&self, date: String) -> Result<OccurrenceRecord, CairnError> {
        let date = parse_date(&date)?;
        let series = self.model().await?;
        let o = expansion_view(&series, true)
            .occurrence(date)
            .ok_or(SeriesError::NotAnOccurrence(date))?;
        Ok(occurrence_record(
            &self.doc,
            &series,
            &o,
            &self.cairn.zone(),
        ))
    }

    /// Renames the series (and its entry in the group's index, when known).
    pub async fn set_title(&self, title: String) -> Result<(), CairnError> {
        if title.trim().is_empty() {
            return Err(CairnError::invalid("a series needs a title"));
        }
        let new = title.clone();
        self.change(move |tx| model::set_title(tx, &new)).await?;
        retitle_in_index(&self.cairn, &self.group, self.doc, title).await;
        Ok(())
    }

    /// Replaces the rule (the first meeting must be an occurrence of the new one).
    /// Moves and cancellations of dates the new rule no longer produces stop applying.
    pub async fn set_rule(&self, rule: RecurrenceRule) -> Result<(), CairnError> {
        let rule = to_rrule(&rule)?;
        self.change(move |tx| model::set_rule(tx, &rule)).await
    }

    /// Changes how long every meeting lasts.
    pub async fn set_duration(&self, minutes: u32) -> Result<(), CairnError> {
        self.change(move |tx| model::set_duration(tx, minutes))
            .await
    }

    /// Moves the occurrence originally on `original_date` to start at `new_start_ms`
    /// (kept as the wall-clock time in the series' zone). Moving it back to the rule's
    /// time clears the move; moving a cancelled one restores it. Its meeting, if opened,
    /// is rescheduled too.
    pub async fn move_occurrence(
        &self,
        original_date: String,
        new_start_ms: i64,
    ) -> Result<(), CairnError> {
        let date = parse_date(&original_date)?;
        let start = timestamp(new_start_ms)?;
        self.change(move |tx| {
            let series = model::read_series(&*tx)?;
            let civil = start.to_zoned(series.zone().clone()).datetime();
            model::move_occurrence(tx, date, civil)
        })
        .await?;
        self.reschedule_meeting(date).await
    }

    /// Cancels the occurrence originally on `original_date` (idempotent).
    pub async fn cancel_occurrence(&self, original_date: String) -> Result<(), CairnError> {
        let date = parse_date(&original_date)?;
        self.change(move |tx| model::cancel_occurrence(tx, date))
            .await
    }

    /// Undoes any move or cancellation of the occurrence originally on `original_date`.
    pub async fn restore_occurrence(&self, original_date: String) -> Result<(), CairnError> {
        let date = parse_date(&original_date)?;
        self.change(move |tx| model::restore_occurrence(tx, date))
            .await?;
        self.reschedule_meeting(date).await
    }

    /// Brings an opened occurrence meeting's schedule in line with the series.
    async fn reschedule_meeting(&self, date: Date) -> Result<(), CairnError> {
        let series = self.model().await?;
        let (Some(meeting), Some(o)) = (series.meetings.get(&date), series.occurrence(date)) else {
            return Ok(());
        };
        let schedule = meeting_model::Schedule {
            start_ms: o.start.as_millisecond(),
            end_ms: o.end.as_millisecond(),
            zone: series.zone_name.clone(),
        };
        self.cairn
            .change_doc(*meeting, move |tx| {
                Ok(meeting_model::set_schedule(tx, &schedule)?)
            })
            .await
    }

    /// The meeting of the occurrence originally on `original_date` (`YYYY-MM-DD`): the
    /// same document on every device, created here if nobody has opened it yet (also
    /// offline: two organisers opening it apart end with one meeting), scheduled at the
    /// occurrence's time, and recorded in the series.
    pub async fn occurrence_meeting(&self, original_date: String) -> Result<Meeting, CairnError> {
        let date = parse_date(&original_date)?;
        let series = self.model().await?;
        if !series.recurrence.contains(date) {
            return Err(SeriesError::NotAnOccurrence(date).into());
        }
        if let Some(meeting) = series.meetings.get(&date) {
            return Ok(Meeting::new(
                self.cairn.clone(),
                self.group.clone(),
                *meeting,
            ));
        }
        let meeting = model::occurrence_document_id(&self.doc, date);
        let skeleton = meeting_model::occurrence_skeleton(&self.doc, date);
        import_in_group(
            &self.cairn,
            &self.group,
            BoundKind::Meeting,
            meeting,
            skeleton,
        )
        .await?;
        if let Some(o) = expansion_view(&series, true).occurrence(date) {
            let schedule = meeting_model::Schedule {
                start_ms: o.start.as_millisecond(),
                end_ms: o.end.as_millisecond(),
                zone: series.zone_name.clone(),
            };
            self.cairn
                .change_doc(meeting, move |tx| {
                    if meeting_model::schedule(&*tx)?.is_none() {
                        meeting_model::set_schedule(tx, &schedule)?;
                    }
                    Ok(())
                })
                .await?;
        }
        self.change(move |tx| model::set_meeting(tx, date, &meeting))
            .await?;
        Ok(Meeting::new(
            self.cairn.clone(),
            self.group.clone(),
            meeting,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::meeting::test_support::{channel, Device, WAIT};
    use crate::app::meeting::MeetingKind;

    fn circle() -> NewSeries {
        NewSeries {
            title: "Peer supporters' circle".into(),
            zone: "Europe/London".into(),
            // The 4th Wednesday of January 2030.
            start_date: "2030-01-23".into(),
            start_time: "18:00".into(),
            duration_minutes: 90,
            rule: RecurrenceRule::monthly_nth(4, Weekday::Wednesday),
        }
    }

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn series(device: &Device) -> Series {
        let index_doc = device.index();
        device
            .run(create_series_in(
                &device.cairn,
                &device.group(),
                index_doc,
                circle(),
            ))
            .unwrap()
    }

    #[test]
    fn a_series_reads_back_its_rule() {
        let device = Device::start();
        let series = series(&device);
        let record = device.run(series.read()).unwrap();
        assert_eq!(record.title, "Peer supporters' circle");
        assert_eq!(
            (record.start_date.as_str(), record.start_time.as_str()),
            ("2030-01-23", "18:00")
        );
        assert_eq!(
            record.rule,
            RecurrenceRule::monthly_nth(4, Weekday::Wednesday)
        );
        assert_eq!(record.rule_text, "FREQ=MONTHLY;BYDAY=4WE");
        assert_eq!(record.duration_minutes, 90);

        let bad = NewSeries {
            start_date: "2030-01-22".into(),
            ..circle()
        };
        let index_doc = device.index();
        assert!(matches!(
            device.run(create_series_in(
                &device.cairn,
                &device.group(),
                index_doc,
                bad
            )),
            Err(CairnError::Invalid { .. })
        ));
        let last_thursday = RecurrenceRule {
            count: Some(3),
            ..RecurrenceRule::monthly_nth(-1, Weekday::Thursday)
        };
        assert!(
            matches!(
                device.run(series.set_rule(last_thursday)),
                Err(CairnError::Invalid { .. })
            ),
            "the start is not a last Thursday"
        );
        let three = RecurrenceRule {
            count: Some(3),
            ..RecurrenceRule::monthly_nth(4, Weekday::Wednesday)
        };
        device.run(series.set_rule(three.clone())).unwrap();
        let record = device.run(series.read()).unwrap();
        assert_eq!(record.rule, three);
        assert_eq!(record.sequence, 1);
        let all = device
            .run(series.next_occurrences_after(ms("2030-01-01T00:00Z"), 10, false))
            .unwrap();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn occurrences_are_shown_in_the_device_zone_which_can_change() {
        let device = Device::start();
        let series = series(&device);
        let after = ms("2030-01-01T00:00Z");
        let london = device
            .run(series.next_occurrences_after(after, 2, false))
            .unwrap();
        let dates: Vec<&str> = london.iter().map(|o| o.original_date.as_str()).collect();
        assert_eq!(dates, vec!["2030-01-23", "2030-02-27"]);
        let first = &london[0];
        assert_eq!(first.start_ms, ms("2030-01-23T18:00Z"));
        assert_eq!(first.end_ms, ms("2030-01-23T19:30Z"));
        assert_eq!(first.local_start.time, "18:00");
        assert_eq!(first.local_start.zone, "Europe/London");
        assert_eq!(first.anchor_start.time, "18:00");

        device.cairn.set_time_zone("America/New_York").unwrap();
        let new_york = device
            .run(series.next_occurrences_after(after, 2, false))
            .unwrap();
        assert_eq!(new_york[0].start_ms, first.start_ms, "the same instant");
        assert_eq!(new_york[0].local_start.time, "13:00");
        assert_eq!(new_york[0].local_start.zone, "America/New_York");
        assert_eq!(new_york[0].local_start.utc_offset_minutes, -300);
        assert_eq!(new_york[0].anchor_start, first.anchor_start);
        assert_eq!(new_york[0].zone, "Europe/London");
    }

    #[test]
    fn one_occurrence_is_moved_cancelled_and_restored() {
        let device = Device::start();
        let series = series(&device);
        let after = ms("2030-01-01T00:00Z");
        device.run(async {
            series
                .move_occurrence("2030-02-27".into(), ms("2030-02-28T19:00Z"))
                .await
                .unwrap();
            series.cancel_occurrence("2030-03-27".into()).await.unwrap();
        });
        let next = device
            .run(series.next_occurrences_after(after, 3, false))
            .unwrap();
        let dates: Vec<&str> = next.iter().map(|o| o.original_date.as_str()).collect();
        assert_eq!(dates, vec!["2030-01-23", "2030-02-27", "2030-04-24"]);
        assert!(next[1].moved);
        assert_eq!(next[1].local_start.date, "2030-02-28");
        assert_eq!(next[1].local_start.time, "19:00");
        let with_cancelled = device
            .run(series.next_occurrences_after(after, 3, true))
            .unwrap();
        assert!(with_cancelled[2].cancelled);
        assert_eq!(with_cancelled[2].original_date, "2030-03-27");
        let record = device.run(series.read()).unwrap();
        assert_eq!(record.cancelled, vec!["2030-03-27".to_owned()]);
        assert_eq!(record.moved[0].new_start.date, "2030-02-28");

        device
            .run(series.restore_occurrence("2030-03-27".into()))
            .unwrap();
        let occurrence = device.run(series.occurrence("2030-03-27".into())).unwrap();
        assert!(!occurrence.cancelled);
        for date in ["2030-03-26", "2030-03-28"] {
            assert!(matches!(
                device.run(series.cancel_occurrence(date.into())),
                Err(CairnError::NotFound { .. })
            ));
        }
        assert!(matches!(
            device.run(series.cancel_occurrence("March".into())),
            Err(CairnError::Invalid { .. })
        ));
    }

    #[test]
    fn an_occurrence_has_one_meeting_scheduled_at_its_time() {
        let device = Device::start();
        let series = series(&device);
        let expected = device.run(series.occurrence("2030-02-27".into())).unwrap();
        assert!(!expected.meeting_opened);
        let meeting = device
            .run(series.occurrence_meeting("2030-02-27".into()))
            .unwrap();
        assert_eq!(meeting.id(), expected.meeting_id);
        let again = device
            .run(series.occurrence_meeting("2030-02-27".into()))
            .unwrap();
        assert_eq!(again.id(), meeting.id());
        let record = device.run(meeting.read()).unwrap();
        assert_eq!(record.kind, MeetingKind::Occurrence);
        assert_eq!(record.series_id, Some(series.id()));
        assert_eq!(record.original_date.as_deref(), Some("2030-02-27"));
        let schedule = record.schedule.unwrap();
        assert_eq!(schedule.start_ms, expected.start_ms);
        assert!(
            device
                .run(series.occurrence("2030-02-27".into()))
                .unwrap()
                .meeting_opened
        );
        assert!(device.run(meeting.series()).unwrap().is_some());

        // Moving the occurrence reschedules its meeting.
        device
            .run(series.move_occurrence("2030-02-27".into(), ms("2030-02-28T19:00Z")))
            .unwrap();
        let moved = device.run(meeting.read()).unwrap().schedule.unwrap();
        assert_eq!(moved.start_ms, ms("2030-02-28T19:00Z"));
        assert!(matches!(
            device.run(series.occurrence_meeting("2030-02-26".into())),
            Err(CairnError::NotFound { .. })
        ));
    }

    #[test]
    fn a_series_subscription_sees_a_rename() {
        let device = Device::start();
        let series = series(&device);
        let (listener, rx) = channel();
        let _sub = series.subscribe(listener);
        let first: SeriesRecord = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(first.title, "Peer supporters' circle");
        device.run(series.set_title("Circle".into())).unwrap();
        loop {
            let r: SeriesRecord = rx.recv_timeout(WAIT).unwrap();
            if r.title == "Circle" {
                break;
            }
        }
    }
}
