//! ICS (RFC 5545) export of a meeting series and of single meetings.
//!
//! - UIDs are stable: `<document id>@cairn`, from the series document for a series and from
//!   the meeting document for a single meeting, so re-importing updates rather than duplicates.
//! - SEQUENCE is the series' counter (bumped by every move, cancellation and rule change), so a
//!   calendar app that imported an older export takes the newer one.
//! - DTSTAMP is passed in by the caller; nothing here reads a clock.
//! - A series is one VEVENT with `DTSTART;TZID=<IANA name>`, `RRULE` and one `EXDATE` per
//!   cancelled occurrence, plus one VEVENT with `RECURRENCE-ID` per moved occurrence.
//! - No VTIMEZONE is written: series carry the IANA name as TZID (Google, Apple and
//!   Outlook/Thunderbird resolve IANA TZIDs from their own databases), and single meetings are
//!   written in UTC, which every client reads. Strict RFC 5545 readers that insist on a
//!   VTIMEZONE for every TZID will not place a series correctly; single meetings are unaffected.
//! - Lines are folded at 75 octets (never inside a UTF-8 character), TEXT values escaped
//!   (`\\`, `\;`, `\,`, `\n`), line ends are CRLF.
//!
//! What leaves the app in an export is the member's choice: the title and, if the caller
//! passes one, the location (which is visible to members only inside Cairn).

use jiff::civil::DateTime;
use jiff::Timestamp;

use crate::calendar::rrule::{self, RRule, Until};
use crate::model::series::{occurrence_document_id, Occurrence, Series};
use cairn_sync::ids::DocumentId;

/// PRODID written in every export.
pub const PRODID: &str = "-//Cairn//Cairn Meetings//EN";

/// The UID of a document's calendar event: `<document id>@cairn`.
pub fn uid(document: &DocumentId) -> String {
    format!("{document}@cairn")
}

/// A single meeting (a one-off, or one occurrence exported on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeetingEvent {
    /// The meeting document (gives the UID).
    pub document: DocumentId,
    /// SUMMARY.
    pub title: String,
    /// DTSTART.
    pub start: Timestamp,
    /// DTEND.
    pub end: Timestamp,
    /// SEQUENCE: bump it when the meeting's time changes.
    pub sequence: u64,
    /// LOCATION (a link or an address), if the member chose to include it.
    pub location: Option<String>,
}

impl MeetingEvent {
    /// One occurrence of a series as a stand-alone event, with the occurrence's meeting
    /// document as its UID (recorded, or [`occurrence_document_id`]). A calendar that imported
    /// the whole series shows it as a separate event; export one or the other.
    pub fn from_occurrence(
        series_doc: &DocumentId,
        series: &Series,
        occurrence: &Occurrence,
    ) -> Self {
        MeetingEvent {
            document: occurrence
                .meeting
                .unwrap_or_else(|| occurrence_document_id(series_doc, occurrence.original_date)),
            title: series.title.clone(),
            start: occurrence.start,
            end: occurrence.end,
            sequence: series.sequence,
            location: None,
        }
    }
}

/// A whole series as a VCALENDAR.
pub fn series_calendar(
    series_doc: &DocumentId,
    series: &Series,
    dtstamp: Timestamp,
    location: Option<&str>,
) -> String {
    let mut ics = Ics::calendar();
    let zone = tzid(&series.zone_name);
    let common = |ics: &mut Ics| {
        ics.line(&format!("UID:{}", uid(series_doc)));
        ics.line(&format!("DTSTAMP:{}", utc(dtstamp)));
        ics.line(&format!("SEQUENCE:{}", series.sequence));
        ics.line(&format!("SUMMARY:{}", escape_text(&series.title)));
        if let Some(location) = location {
            ics.line(&format!("LOCATION:{}", escape_text(location)));
        }
    };
    let duration = format!("DURATION:PT{}M", series.duration_minutes);

    ics.line("BEGIN:VEVENT");
    common(&mut ics);
    ics.line(&format!("DTSTART;TZID={zone}:{}", local(series.start())));
    ics.line(&duration);
    ics.line(&format!("RRULE:{}", export_rule(series)));
    for date in series.effective_cancellations() {
        ics.line(&format!(
            "EXDATE;TZID={zone}:{}",
            local(series.recurrence.civil_start_on(date))
        ));
    }
    ics.line("END:VEVENT");

    for (date, new_start) in series.effective_moves() {
        ics.line("BEGIN:VEVENT");
        common(&mut ics);
        ics.line(&format!(
            "RECURRENCE-ID;TZID={zone}:{}",
            local(series.recurrence.civil_start_on(date))
        ));
        ics.line(&format!("DTSTART;TZID={zone}:{}", local(new_start)));
        ics.line(&duration);
        ics.line("END:VEVENT");
    }
    ics.finish()
}

/// A single meeting as a VCALENDAR, in UTC.
pub fn meeting_calendar(event: &MeetingEvent, dtstamp: Timestamp) -> String {
    let mut ics = Ics::calendar();
    ics.line("BEGIN:VEVENT");
    ics.line(&format!("UID:{}", uid(&event.document)));
    ics.line(&format!("DTSTAMP:{}", utc(dtstamp)));
    ics.line(&format!("SEQUENCE:{}", event.sequence));
    ics.line(&format!("SUMMARY:{}", escape_text(&event.title)));
    if let Some(location) = &event.location {
        ics.line(&format!("LOCATION:{}", escape_text(location)));
    }
    ics.line(&format!("DTSTART:{}", utc(event.start)));
    ics.line(&format!("DTEND:{}", utc(event.end)));
    ics.line("END:VEVENT");
    ics.finish()
}

/// The rule as written in the export: RFC 5545 wants UNTIL in UTC when DTSTART has a TZID,
/// so a date or local-time UNTIL is converted at the anchor zone.
fn export_rule(series: &Series) -> RRule {
    let rule = series.rule().clone();
    let end = match rule.until() {
        Some(Until::Date(d)) => d.to_datetime(jiff::civil::time(23, 59, 59, 0)),
        Some(Until::Local(dt)) => dt,
        Some(Until::Utc(_)) | None => return rule,
    };
    match rrule::to_zoned(end, series.zone()) {
        Some(z) => rule.with_until(Until::Utc(z.timestamp())),
        None => rule,
    }
}

struct Ics {
    out: String,
}

impl Ics {
    fn calendar() -> Self {
        let mut ics = Ics { out: String::new() };
        ics.line("BEGIN:VCALENDAR");
        ics.line("VERSION:2.0");
        ics.line(&format!("PRODID:{PRODID}"));
        ics.line("CALSCALE:GREGORIAN");
        ics.line("METHOD:PUBLISH");
        ics
    }

    /// Appends one content line, folded: at most 75 octets per physical line, continuation
    /// lines starting with a space (which counts towards their 75).
    fn line(&mut self, content: &str) {
        let mut rest = content;
        let mut limit = 75;
        loop {
            if rest.len() <= limit {
                self.out.push_str(rest);
                self.out.push_str("\r\n");
                return;
            }
            let mut cut = limit;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            self.out.push_str(&rest[..cut]);
            self.out.push_str("\r\n ");
            rest = &rest[cut..];
            limit = 74;
        }
    }

    fn finish(mut self) -> String {
        self.line("END:VCALENDAR");
        self.out
    }
}

/// Escapes a TEXT value (RFC 5545 §3.3.11); line breaks become `\n`, other control
/// characters (not allowed in TEXT) are dropped.
fn escape_text(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push('\t'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A TZID parameter value, quoted if it holds a character that would end the parameter.
fn tzid(name: &str) -> String {
    if name.contains([':', ';', ',']) {
        format!("\"{}\"", name.replace('"', ""))
    } else {
        name.to_owned()
    }
}

fn utc(ts: Timestamp) -> String {
    ts.strftime("%Y%m%dT%H%M%SZ").to_string()
}

fn local(dt: DateTime) -> String {
    dt.strftime("%Y%m%dT%H%M%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::series::{
        cancel_occurrence, move_occurrence, new_series, read_series, SeriesInit,
    };
    use automerge::{Automerge, TextEncoding};
    use icalendar::parser::{read_calendar, unfold, Component};
    use jiff::civil::date;

    const TRICKY: &str =
        "Circle; peers, supervisors\nand guests \\ all welcome — ünïcödé 🌱🌱🌱🌱🌱🌱🌱🌱🌱🌱";

    fn series_id() -> DocumentId {
        "488sijVLJ6Grs5PnrczSYBwfNg25".parse().unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn series(
        title: &str,
        rule: &str,
        changes: impl FnOnce(&mut automerge::transaction::Transaction<'_>),
    ) -> Series {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        let mut tx = doc.transaction();
        new_series(
            &mut tx,
            SeriesInit {
                title: title.into(),
                zone: "Europe/London".into(),
                start: date(2026, 1, 28).at(18, 0, 0, 0),
                duration_minutes: 90,
                rule: RRule::parse(rule).unwrap(),
            },
        )
        .unwrap();
        changes(&mut tx);
        tx.commit();
        read_series(&doc).unwrap()
    }

    fn prop<'a>(c: &'a Component<'a>, name: &str) -> &'a str {
        c.find_prop(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .val
            .as_str()
    }

    fn param<'a>(c: &'a Component<'a>, name: &str, key: &str) -> &'a str {
        let p = c.find_prop(name).unwrap();
        p.params
            .iter()
            .find(|p| p.key == key)
            .and_then(|p| p.val.as_ref())
            .unwrap()
            .as_str()
    }

    fn all_props<'a>(c: &'a Component<'a>, name: &str) -> Vec<&'a str> {
        c.properties
            .iter()
            .filter(|p| p.name == name)
            .map(|p| p.val.as_str())
            .collect()
    }

    fn assert_folded(ics: &str) {
        assert!(ics.ends_with("\r\n"));
        for line in ics.split("\r\n") {
            assert!(line.len() <= 75, "line longer than 75 octets: {line:?}");
        }
    }

    #[test]
    fn a_series_with_exceptions_parses_back() {
        let s = series(TRICKY, "FREQ=MONTHLY;BYDAY=4WE", |tx| {
            move_occurrence(tx, date(2026, 2, 25), date(2026, 2, 26).at(19, 30, 0, 0)).unwrap();
            cancel_occurrence(tx, date(2026, 3, 25)).unwrap();
            cancel_occurrence(tx, date(2026, 5, 27)).unwrap();
        });
        let ics = series_calendar(
            &series_id(),
            &s,
            ts("2026-01-10T12:00:00Z"),
            Some("Room 2, Hope St; Leeds"),
        );
        assert_folded(&ics);
        let unfolded = unfold(&ics);
        let cal = read_calendar(&unfolded).unwrap();
        assert_eq!(cal.components.len(), 2);
        let (master, moved) = (&cal.components[0], &cal.components[1]);
        assert_eq!(master.name, "VEVENT");
        for event in [master, moved] {
            assert_eq!(prop(event, "UID"), "488sijVLJ6Grs5PnrczSYBwfNg25@cairn");
            assert_eq!(prop(event, "SEQUENCE"), "3");
            assert_eq!(prop(event, "DTSTAMP"), "20260110T120000Z");
            assert_eq!(
                prop(event, "SUMMARY"),
                TRICKY,
                "commas, semicolons, newlines survive"
            );
            assert_eq!(prop(event, "LOCATION"), "Room 2, Hope St; Leeds");
            assert_eq!(prop(event, "DURATION"), "PT90M");
        }
        assert_eq!(prop(master, "DTSTART"), "20260128T180000");
        assert_eq!(param(master, "DTSTART", "TZID"), "Europe/London");
        assert_eq!(RRule::parse(prop(master, "RRULE")).unwrap(), *s.rule());
        assert_eq!(
            all_props(master, "EXDATE"),
            ["20260325T180000", "20260527T180000"]
        );
        assert_eq!(param(master, "EXDATE", "TZID"), "Europe/London");
        assert_eq!(prop(moved, "RECURRENCE-ID"), "20260225T180000");
        assert_eq!(param(moved, "RECURRENCE-ID", "TZID"), "Europe/London");
        assert_eq!(prop(moved, "DTSTART"), "20260226T193000");
        assert!(moved.find_prop("RRULE").is_none());
    }

    #[test]
    fn export_is_stable_and_sequence_grows_with_changes() {
        let before = series("Circle", "FREQ=MONTHLY;BYDAY=4WE", |_| {});
        let after = series("Circle", "FREQ=MONTHLY;BYDAY=4WE", |tx| {
            cancel_occurrence(tx, date(2026, 3, 25)).unwrap();
        });
        let stamp = ts("2026-01-10T12:00:00Z");
        assert_eq!(
            series_calendar(&series_id(), &before, stamp, None),
            series_calendar(&series_id(), &before, stamp, None)
        );
        let a = series_calendar(&series_id(), &before, stamp, None);
        let b = series_calendar(&series_id(), &after, stamp, None);
        let (a, b) = (unfold(&a), unfold(&b));
        let (a, b) = (read_calendar(&a).unwrap(), read_calendar(&b).unwrap());
        assert_eq!(prop(&a.components[0], "UID"), prop(&b.components[0], "UID"));
        assert_eq!(
            (
                prop(&a.components[0], "SEQUENCE"),
                prop(&b.components[0], "SEQUENCE")
            ),
            ("0", "1")
        );
        assert!(a.components[0].find_prop("EXDATE").is_none());
    }

    #[test]
    fn weekly_count_and_until_rules_export_in_rfc_form() {
        let s = series("Working Out Loud", "FREQ=WEEKLY;COUNT=12", |_| {});
        let ics = series_calendar(&series_id(), &s, ts("2026-01-10T12:00:00Z"), None);
        let unfolded = unfold(&ics);
        let cal = read_calendar(&unfolded).unwrap();
        assert_eq!(prop(&cal.components[0], "RRULE"), "FREQ=WEEKLY;COUNT=12");
        // A date UNTIL becomes the end of that day in the anchor zone, in UTC (BST here).
        let s = series("Circle", "FREQ=MONTHLY;BYDAY=4WE;UNTIL=20260630", |_| {});
        let ics = series_calendar(&series_id(), &s, ts("2026-01-10T12:00:00Z"), None);
        let unfolded = unfold(&ics);
        let cal = read_calendar(&unfolded).unwrap();
        assert_eq!(
            prop(&cal.components[0], "RRULE"),
            "FREQ=MONTHLY;BYDAY=4WE;UNTIL=20260630T225959Z"
        );
    }

    #[test]
    fn a_single_meeting_parses_back_in_utc() {
        let s = series(TRICKY, "FREQ=MONTHLY;BYDAY=4WE", |tx| {
            move_occurrence(tx, date(2026, 4, 22), date(2026, 4, 23).at(18, 0, 0, 0)).unwrap();
        });
        let occurrence = s.occurrence(date(2026, 4, 22)).unwrap();
        let event = MeetingEvent::from_occurrence(&series_id(), &s, &occurrence);
        let ics = meeting_calendar(&event, ts("2026-04-01T08:00:00Z"));
        assert_folded(&ics);
        let unfolded = unfold(&ics);
        let cal = read_calendar(&unfolded).unwrap();
        let e = &cal.components[0];
        let meeting = occurrence_document_id(&series_id(), date(2026, 4, 22));
        assert_eq!(prop(e, "UID"), format!("{meeting}@cairn"));
        assert_eq!(prop(e, "SEQUENCE"), "1");
        assert_eq!(prop(e, "SUMMARY"), TRICKY);
        assert_eq!(prop(e, "DTSTART"), "20260423T170000Z", "18:00 BST");
        assert_eq!(prop(e, "DTEND"), "20260423T183000Z");
        assert!(e.find_prop("LOCATION").is_none());

        let one_off = MeetingEvent {
            document: meeting,
            title: "Peer Assist".into(),
            start: ts("2026-06-03T09:00:00Z"),
            end: ts("2026-06-03T10:15:00Z"),
            sequence: 0,
            location: Some("https://meet.example/abc?x=1;y=2".into()),
        };
        let ics = meeting_calendar(&one_off, ts("2026-04-01T08:00:00Z"));
        let unfolded = unfold(&ics);
        let cal = read_calendar(&unfolded).unwrap();
        assert_eq!(
            prop(&cal.components[0], "LOCATION"),
            "https://meet.example/abc?x=1;y=2"
        );
    }

    #[test]
    fn folding_never_splits_a_character() {
        let mut ics = Ics { out: String::new() };
        let long = format!("SUMMARY:{}", "é🌱".repeat(40));
        ics.line(&long);
        assert_folded(&ics.out);
        assert_eq!(unfold(&ics.out).trim_end(), long);
        // Exactly 75 octets is not folded.
        let mut ics = Ics { out: String::new() };
        let exact = format!("SUMMARY:{}", "a".repeat(67));
        ics.line(&exact);
        assert_eq!(ics.out, format!("{exact}\r\n"));
    }

    #[test]
    fn text_escaping() {
        assert_eq!(
            escape_text("a,b;c\\d\r\ne\rf\u{7}g"),
            "a\\,b\\;c\\\\d\\ne\\nfg"
        );
    }
}
