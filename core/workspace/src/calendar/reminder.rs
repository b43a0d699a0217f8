//! What to remind a member about before a meeting, and when.
//!
//! The core computes the moment and the kinds of reminder; the app schedules a local
//! notification for it and fills in the text on the device when it fires (the agenda from the
//! meeting document, the "for next meeting" readings from the resources document). A
//! [`Reminder`] carries ids and times only, never content, so it can be handed to any OS
//! scheduler or push service without leaking what a group talks about.

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};

use crate::model::series::{next_occurrences, occurrence_document_id, Occurrence, Series};
use cairn_sync::ids::DocumentId;

/// How long before a meeting its reminder fires by default: one week (an exact 168 hours, so
/// across a clock change it fires an hour earlier or later on the wall clock).
pub const DEFAULT_LEAD: SignedDuration = SignedDuration::from_hours(7 * 24);

/// What a reminder is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReminderKind {
    /// The agenda is open: add items before the meeting.
    AgendaOpen,
    /// Readings marked "for next meeting" (the app shows them if the resource list has any).
    ReadingsForNextMeeting,
}

/// One reminder to schedule as a local notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reminder {
    /// When to notify.
    pub at: Timestamp,
    /// The occurrence's original date (its identity within the series).
    pub occurrence_date: Date,
    /// When the meeting starts.
    pub meeting_starts: Timestamp,
    /// The meeting document, when known (see [`occurrence_document_id`]).
    pub meeting: Option<DocumentId>,
    /// What to remind about, in a fixed order.
    pub kinds: Vec<ReminderKind>,
}

/// The reminder `lead` before `occurrence` (use [`DEFAULT_LEAD`] for a week).
pub fn reminders_for(occurrence: &Occurrence, lead: SignedDuration) -> Reminder {
    Reminder {
        at: occurrence.start.checked_sub(lead).unwrap_or(Timestamp::MIN),
        occurrence_date: occurrence.original_date,
        meeting_starts: occurrence.start,
        meeting: occurrence.meeting,
        kinds: vec![
            ReminderKind::AgendaOpen,
            ReminderKind::ReadingsForNextMeeting,
        ],
    }
}

/// The reminders still to fire (`at` after `now`) for the next `n` meetings of a series that
/// start after `now`, with each meeting document id filled in (recorded, or derived with
/// [`occurrence_document_id`]). An app calls this on launch and whenever the series changes,
/// and replaces what it had scheduled: a moved meeting moves its reminder, a cancelled one
/// drops it.
pub fn upcoming_reminders(
    series_doc: &DocumentId,
    series: &Series,
    now: Timestamp,
    lead: SignedDuration,
    n: usize,
) -> Vec<Reminder> {
    next_occurrences(series, now, n, series.zone())
        .into_iter()
        .map(|(occurrence, _)| occurrence)
        .filter(|o| o.start > now)
        .map(|o| {
            let mut reminder = reminders_for(&o, lead);
            reminder
                .meeting
                .get_or_insert_with(|| occurrence_document_id(series_doc, o.original_date));
            reminder
        })
        .filter(|r| r.at > now)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::rrule::RRule;
    use crate::model::series::{
        cancel_occurrence, move_occurrence, new_series, read_series, SeriesInit,
    };
    use automerge::{Automerge, TextEncoding};
    use jiff::civil::date;

    fn series() -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        let mut tx = doc.transaction();
        new_series(
            &mut tx,
            SeriesInit {
                title: "Circle".into(),
                zone: "Europe/London".into(),
                start: date(2026, 1, 28).at(18, 0, 0, 0),
                duration_minutes: 90,
                rule: RRule::parse("FREQ=MONTHLY;BYDAY=4WE").unwrap(),
            },
        )
        .unwrap();
        tx.commit();
        doc
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_week_before_with_agenda_and_readings() {
        let s = read_series(&series()).unwrap();
        let occurrence = s.occurrence(date(2026, 2, 25)).unwrap();
        let r = reminders_for(&occurrence, DEFAULT_LEAD);
        assert_eq!(r.at, ts("2026-02-18T18:00:00Z"));
        assert_eq!(r.meeting_starts, ts("2026-02-25T18:00:00Z"));
        assert_eq!(
            r.kinds,
            [
                ReminderKind::AgendaOpen,
                ReminderKind::ReadingsForNextMeeting
            ]
        );
        // An exact week: the UK clocks go back on 25 October, between the reminder and the
        // meeting, so a reminder for 18:00 GMT fires at 19:00 BST.
        let october = s.occurrence(date(2026, 10, 28)).unwrap();
        let r = reminders_for(&october, DEFAULT_LEAD);
        assert_eq!(r.at.to_zoned(s.zone().clone()).hour(), 19);
        let march = s.occurrence(date(2026, 3, 25)).unwrap();
        let r = reminders_for(&march, SignedDuration::from_hours(24));
        assert_eq!(r.at, ts("2026-03-24T18:00:00Z"));
    }

    #[test]
    fn upcoming_reminders_follow_moves_and_cancellations() {
        let mut doc = series();
        let mut tx = doc.transaction();
        cancel_occurrence(&mut tx, date(2026, 3, 25)).unwrap();
        move_occurrence(
            &mut tx,
            date(2026, 4, 22),
            date(2026, 4, 29).at(18, 0, 0, 0),
        )
        .unwrap();
        tx.commit();
        let s = read_series(&doc).unwrap();
        let series_id: DocumentId = "488sijVLJ6Grs5PnrczSYBwfNg25".parse().unwrap();
        // On 20 February the February reminder (18th) has already fired.
        let due = upcoming_reminders(&series_id, &s, ts("2026-02-20T09:00:00Z"), DEFAULT_LEAD, 3);
        let when: Vec<(Date, Timestamp)> = due.iter().map(|r| (r.occurrence_date, r.at)).collect();
        assert_eq!(
            when,
            [
                (date(2026, 4, 22), ts("2026-04-22T17:00:00Z")),
                (date(2026, 5, 27), ts("2026-05-20T17:00:00Z"))
            ]
        );
        assert_eq!(
            due[0].meeting,
            Some(occurrence_document_id(&series_id, date(2026, 4, 22)))
        );
    }
}
