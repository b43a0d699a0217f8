//! The Series document: a recurring meeting anchored in the organiser's time zone.
//!
//! A series is "the 4th Wednesday of the month, 18:00 Europe/London, 90 minutes": a civil
//! start (DTSTART) and an RFC 5545 rule ([`crate::calendar::rrule`]) in an IANA zone, plus
//! the exceptions organisers make (an occurrence moved to another time, or cancelled) and the
//! meeting document each occurrence has once someone opens it.
//!
//! Document shape (root map):
//!
//! | key | value |
//! |---|---|
//! | `schemaKind`, `schemaVersion` | `"series"`, 1 ([`super::schema`]) |
//! | `title` | Text (co-edited) |
//! | `zone` | IANA zone name, e.g. `"Europe/London"` |
//! | `start` | civil DTSTART in `zone`, `"2026-01-28T18:00:00"` |
//! | `durationMinutes` | uint |
//! | `rrule` | rule text without `RRULE:`, `"FREQ=MONTHLY;BYDAY=4WE"` |
//! | `sequence` | counter: ICS SEQUENCE, bumped by every schedule change |
//! | `moved` | map: original date `"2026-02-25"` → new civil start `"2026-02-26T19:00:00"` |
//! | `cancelled` | map: original date → `true` |
//! | `meetings` | map: original date → meeting document `automerge:` URL |
//!
//! Merging: exceptions are keyed by the occurrence's original date, so organisers who move or
//! cancel different occurrences while offline both keep their change. Two moves of the same
//! occurrence settle on one of them (Automerge's last-writer-wins for a map key, the same on
//! every device); a cancellation beats a concurrent move. `sequence` is a counter, so
//! concurrent bumps add up and it only ever grows, which is what calendar apps need.
//! A string field written as Text by a JS client is read the same as a scalar string.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, TextEncoding, Value, ROOT};
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::schema::{self, DocKind, SchemaError};
use crate::calendar::rrule::{self, ParseError, RRule, Recurrence, RecurrenceError};
use crate::calendar::{time_zone, UnknownZone};
use cairn_sync::ids::DocumentId;

const TITLE: &str = "title";
const ZONE: &str = "zone";
const START: &str = "start";
const DURATION: &str = "durationMinutes";
const RRULE: &str = "rrule";
const SEQUENCE: &str = "sequence";
const MOVED: &str = "moved";
const CANCELLED: &str = "cancelled";
const MEETINGS: &str = "meetings";

/// The longest meeting a series may describe: a week (a residential retreat), in minutes.
pub const MAX_DURATION_MINUTES: u32 = 7 * 24 * 60;

/// Why a series operation failed.
#[derive(Debug, Error)]
pub enum SeriesError {
    /// Not a series document, or one written by a newer Cairn, or a field of the wrong shape.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The stored or given rule is not one Cairn can expand.
    #[error(transparent)]
    Rule(#[from] ParseError),
    /// The start is not an occurrence of the rule.
    #[error(transparent)]
    Recurrence(#[from] RecurrenceError),
    /// The zone is not in this build's time-zone database.
    #[error(transparent)]
    Zone(#[from] UnknownZone),
    /// The date is not an occurrence of the series (check the rule and the original date).
    #[error("{0} is not an occurrence of this series")]
    NotAnOccurrence(Date),
    /// The duration is 0 or longer than [`MAX_DURATION_MINUTES`].
    #[error("a meeting lasts 1..={max} minutes, not {0}", max = MAX_DURATION_MINUTES)]
    InvalidDuration(u32),
    /// A time outside the calendar's range (years -9999..=9999).
    #[error("the time is outside the supported calendar range")]
    OutOfRange,
    /// Automerge refused the change.
    #[error(transparent)]
    Automerge(#[from] AutomergeError),
}

/// What a new series starts with.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInit {
    /// The series title (shown for every occurrence).
    pub title: String,
    /// The organiser's IANA zone, e.g. `Europe/London`.
    pub zone: String,
    /// DTSTART: the first occurrence, civil time in `zone`. Must be an occurrence of `rule`.
    pub start: DateTime,
    /// How long each meeting lasts.
    pub duration_minutes: u32,
    /// The recurrence rule.
    pub rule: RRule,
}

/// A series as read from its document.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The title.
    pub title: String,
    /// The anchor zone's IANA name.
    pub zone_name: String,
    /// DTSTART, zone and rule.
    pub recurrence: Recurrence,
    /// How long each meeting lasts.
    pub duration_minutes: u32,
    /// ICS SEQUENCE: how many schedule changes the series has had.
    pub sequence: u64,
    /// Moved occurrences: original date → new civil start in the anchor zone.
    pub moved: BTreeMap<Date, DateTime>,
    /// Cancelled occurrences by original date.
    pub cancelled: BTreeSet<Date>,
    /// Meeting documents opened for occurrences, by original date.
    pub meetings: BTreeMap<Date, DocumentId>,
}

/// One meeting of a series.
#[derive(Debug, Clone, PartialEq)]
pub struct Occurrence {
    /// The date the rule gives it (its identity, also after a move).
    pub original_date: Date,
    /// When it starts.
    pub start: Timestamp,
    /// When it ends.
    pub end: Timestamp,
    /// The series' anchor zone.
    pub zone: TimeZone,
    /// Whether an organiser moved it away from the rule's time.
    pub moved: bool,
    /// Its meeting document, if one has been recorded with [`set_meeting`].
    pub meeting: Option<DocumentId>,
}

impl Occurrence {
    /// The start in the anchor zone ("18:00 Europe/London").
    pub fn local_start(&self) -> Zoned {
        self.start.to_zoned(self.zone.clone())
    }

    /// The start in another zone, e.g. a member's own.
    pub fn start_in(&self, zone: &TimeZone) -> Zoned {
        self.start.to_zoned(zone.clone())
    }
}

impl Series {
    /// The anchor zone.
    pub fn zone(&self) -> &TimeZone {
        self.recurrence.zone()
    }

    /// DTSTART.
    pub fn start(&self) -> DateTime {
        self.recurrence.start()
    }

    /// The rule.
    pub fn rule(&self) -> &RRule {
        self.recurrence.rule()
    }

    /// The occurrence whose original date is `date`, after any move; `None` if the rule has
    /// no occurrence that day or it was cancelled.
    pub fn occurrence(&self, date: Date) -> Option<Occurrence> {
        if self.cancelled.contains(&date) || !self.recurrence.contains(date) {
            return None;
        }
        self.build(date, None)
    }

    /// Moved occurrences whose original date is still produced by the rule (a rule change can
    /// leave older exceptions behind; they are kept in the document but ignored).
    pub fn effective_moves(&self) -> impl Iterator<Item = (Date, DateTime)> + '_ {
        self.moved
            .iter()
            .filter(|(d, _)| !self.cancelled.contains(d) && self.recurrence.contains(**d))
            .map(|(d, dt)| (*d, *dt))
    }

    /// Cancelled dates that are occurrences of the current rule.
    pub fn effective_cancellations(&self) -> impl Iterator<Item = Date> + '_ {
        self.cancelled
            .iter()
            .copied()
            .filter(|d| self.recurrence.contains(*d))
    }

    /// Builds the occurrence on `date` (not checked against the rule or cancellations);
    /// `original` is the rule's start for that date when the caller already has it.
    fn build(&self, date: Date, original: Option<Zoned>) -> Option<Occurrence> {
        let start = match (self.moved.get(&date), original) {
            (Some(civil), _) => rrule::to_zoned(*civil, self.zone())?,
            (None, Some(z)) => z,
            (None, None) => rrule::to_zoned(self.recurrence.civil_start_on(date), self.zone())?,
        };
        let start = start.timestamp();
        let end = start
            .checked_add(SignedDuration::from_mins(i64::from(self.duration_minutes)))
            .ok()?;
        Some(Occurrence {
            original_date: date,
            start,
            end,
            zone: self.zone().clone(),
            moved: self.moved.contains_key(&date),
            meeting: self.meetings.get(&date).copied(),
        })
    }
}

/// Creates a series in an empty document (stamps the schema).
pub fn new_series(tx: &mut impl Transactable, init: SeriesInit) -> Result<(), SeriesError> {
    let zone = time_zone(&init.zone)?;
    Recurrence::new(init.start, zone, init.rule.clone())?;
    check_duration(init.duration_minutes)?;
    schema::stamp(tx, DocKind::Series)?;
    let title = tx.put_object(ROOT, TITLE, ObjType::Text)?;
    tx.splice_text(&title, 0, 0, &init.title)?;
    tx.put(ROOT, ZONE, init.zone.as_str())?;
    tx.put(ROOT, START, init.start.to_string())?;
    tx.put(
        ROOT,
        DURATION,
        ScalarValue::Uint(u64::from(init.duration_minutes)),
    )?;
    tx.put(ROOT, RRULE, init.rule.to_string())?;
    tx.put(ROOT, SEQUENCE, ScalarValue::counter(0))?;
    for key in [MOVED, CANCELLED, MEETINGS] {
        tx.put_object(ROOT, key, ObjType::Map)?;
    }
    Ok(())
}

/// Reads a series document.
pub fn read_series(doc: &impl ReadDoc) -> Result<Series, SeriesError> {
    schema::check(doc, DocKind::Series)?;
    let title = read_str(doc, &ROOT, TITLE)?.unwrap_or_default();
    let zone_name = read_str(doc, &ROOT, ZONE)?.ok_or_else(|| shape(ZONE))?;
    let zone = time_zone(&zone_name)?;
    let start = parse_civil(
        &read_str(doc, &ROOT, START)?.ok_or_else(|| shape(START))?,
        START,
    )?;
    let rule = RRule::parse(&read_str(doc, &ROOT, RRULE)?.ok_or_else(|| shape(RRULE))?)?;
    let duration_minutes = match doc.get(ROOT, DURATION)? {
        Some((Value::Scalar(s), _)) => s
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .ok_or_else(|| shape(DURATION))?,
        _ => return Err(shape(DURATION)),
    };
    let sequence = match doc.get(ROOT, SEQUENCE)? {
        Some((Value::Scalar(s), _)) => s
            .as_i64()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| shape(SEQUENCE))?,
        None => 0,
        Some(_) => return Err(shape(SEQUENCE)),
    };
    let mut moved = BTreeMap::new();
    for (date, value) in read_string_map(doc, MOVED)? {
        moved.insert(parse_date(&date, MOVED)?, parse_civil(&value, MOVED)?);
    }
    let mut cancelled = BTreeSet::new();
    if let Some(map) = map_id(doc, CANCELLED)? {
        for key in doc.keys(&map) {
            if let Some((Value::Scalar(s), _)) = doc.get(&map, key.as_str())? {
                if matches!(s.as_ref(), ScalarValue::Boolean(true)) {
                    cancelled.insert(parse_date(&key, CANCELLED)?);
                }
            }
        }
    }
    let mut meetings = BTreeMap::new();
    for (date, url) in read_string_map(doc, MEETINGS)? {
        let id = DocumentId::parse_url(&url).map_err(|_| shape(MEETINGS))?;
        meetings.insert(parse_date(&date, MEETINGS)?, id);
    }
    Ok(Series {
        title,
        zone_name,
        recurrence: Recurrence::new(start, zone, rule)?,
        duration_minutes,
        sequence,
        moved,
        cancelled,
        meetings,
    })
}

/// Replaces the title, editing only the changed span so concurrent edits elsewhere survive.
pub fn set_title(tx: &mut impl Transactable, title: &str) -> Result<(), SeriesError> {
    schema::check(&*tx, DocKind::Series)?;
    let text = match tx.get(ROOT, TITLE)? {
        Some((Value::Object(ObjType::Text), id)) => id,
        _ => tx.put_object(ROOT, TITLE, ObjType::Text)?,
    };
    let old = tx.text(&text)?;
    splice_diff(tx, &text, &old, title)
}

/// Moves the occurrence on `original_date` to `new_start` (civil time in the anchor zone).
/// Moving it back to the rule's time clears the move; moving a cancelled one restores it.
pub fn move_occurrence(
    tx: &mut impl Transactable,
    original_date: Date,
    new_start: DateTime,
) -> Result<(), SeriesError> {
    let series = read_series(&*tx)?;
    if !series.recurrence.contains(original_date) {
        return Err(SeriesError::NotAnOccurrence(original_date));
    }
    rrule::to_zoned(new_start, series.zone()).ok_or(SeriesError::OutOfRange)?;
    let back_to_rule = new_start == series.recurrence.civil_start_on(original_date);
    let key = original_date.to_string();
    let mut changed = false;
    if series.cancelled.contains(&original_date) {
        let cancelled = ensure_map(tx, CANCELLED)?;
        tx.delete(&cancelled, key.as_str())?;
        changed = true;
    }
    let moved = ensure_map(tx, MOVED)?;
    match series.moved.get(&original_date) {
        Some(_) if back_to_rule => {
            tx.delete(&moved, key.as_str())?;
            changed = true;
        }
        Some(current) if *current == new_start => {}
        None if back_to_rule => {}
        _ => {
            tx.put(&moved, key.as_str(), new_start.to_string())?;
            changed = true;
        }
    }
    if changed {
        bump_sequence(tx)?;
    }
    Ok(())
}

/// Cancels the occurrence on `original_date` (idempotent).
pub fn cancel_occurrence(
    tx: &mut impl Transactable,
    original_date: Date,
) -> Result<(), SeriesError> {
    let series = read_series(&*tx)?;
    if !series.recurrence.contains(original_date) {
        return Err(SeriesError::NotAnOccurrence(original_date));
    }
    if series.cancelled.contains(&original_date) {
        return Ok(());
    }
    let cancelled = ensure_map(tx, CANCELLED)?;
    tx.put(&cancelled, original_date.to_string(), true)?;
    bump_sequence(tx)
}

/// Undoes any move or cancellation of the occurrence on `original_date`.
pub fn restore_occurrence(
    tx: &mut impl Transactable,
    original_date: Date,
) -> Result<(), SeriesError> {
    let series = read_series(&*tx)?;
    let key = original_date.to_string();
    let mut changed = false;
    for (map, present) in [
        (CANCELLED, series.cancelled.contains(&original_date)),
        (MOVED, series.moved.contains_key(&original_date)),
    ] {
        if present {
            let map = ensure_map(tx, map)?;
            tx.delete(&map, key.as_str())?;
            changed = true;
        }
    }
    if changed {
        bump_sequence(tx)?;
    }
    Ok(())
}

/// Replaces the recurrence rule (DTSTART must be an occurrence of the new rule). Exceptions
/// for dates the new rule no longer produces stay in the document but stop applying.
pub fn set_rule(tx: &mut impl Transactable, rule: &RRule) -> Result<(), SeriesError> {
    let series = read_series(&*tx)?;
    Recurrence::new(series.start(), series.zone().clone(), rule.clone())?;
    if series.rule() != rule {
        tx.put(ROOT, RRULE, rule.to_string())?;
        bump_sequence(tx)?;
    }
    Ok(())
}

/// Changes how long every meeting of the series lasts.
pub fn set_duration(tx: &mut impl Transactable, minutes: u32) -> Result<(), SeriesError> {
    check_duration(minutes)?;
    let series = read_series(&*tx)?;
    if series.duration_minutes != minutes {
        tx.put(ROOT, DURATION, ScalarValue::Uint(u64::from(minutes)))?;
        bump_sequence(tx)?;
    }
    Ok(())
}

/// Records the meeting document of the occurrence on `original_date` (usually
/// [`occurrence_document_id`], so concurrent recordings agree).
pub fn set_meeting(
    tx: &mut impl Transactable,
    original_date: Date,
    meeting: &DocumentId,
) -> Result<(), SeriesError> {
    let series = read_series(&*tx)?;
    if !series.recurrence.contains(original_date) {
        return Err(SeriesError::NotAnOccurrence(original_date));
    }
    if series.meetings.get(&original_date) != Some(meeting) {
        let meetings = ensure_map(tx, MEETINGS)?;
        tx.put(&meetings, original_date.to_string(), meeting.url())?;
    }
    Ok(())
}

/// The meeting document id of the occurrence on `original_date`, the same on every device:
/// the first 16 bytes of SHA-256(series id's 16 bytes ‖ the date as ASCII `YYYY-MM-DD`),
/// shaped as a UUID v4. Two organisers who open the same occurrence offline create the same
/// document (the meeting module makes its first change deterministic too).
pub fn occurrence_document_id(series_doc: &DocumentId, original_date: Date) -> DocumentId {
    let mut hash = Sha256::new();
    hash.update(series_doc.as_bytes());
    hash.update(original_date.to_string().as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    DocumentId::from_bytes(bytes)
}

/// The occurrences that overlap `[from, to)` (start before `to`, end after `from`), in order of
/// start, moved ones where they were moved to, cancelled ones left out.
pub fn occurrences_between(series: &Series, from: Timestamp, to: Timestamp) -> Vec<Occurrence> {
    let mut out = Vec::new();
    for (date, zoned) in series.recurrence.iter() {
        if zoned.timestamp() >= to {
            break;
        }
        if series.moved.contains_key(&date) || series.cancelled.contains(&date) {
            continue;
        }
        out.extend(series.build(date, Some(zoned)).filter(|o| o.end > from));
    }
    for (date, _) in series.effective_moves() {
        out.extend(
            series
                .build(date, None)
                .filter(|o| o.start < to && o.end > from),
        );
    }
    out.sort_by_key(|o| (o.start, o.original_date));
    out
}

/// The next `n` occurrences that have not ended by `after` (one in progress counts), each
/// with its start in `member_zone`, in order of start.
pub fn next_occurrences(
    series: &Series,
    after: Timestamp,
    n: usize,
    member_zone: &TimeZone,
) -> Vec<(Occurrence, Zoned)> {
    if n == 0 {
        return Vec::new();
    }
    // The first n unmoved occurrences plus every moved one contain the first n overall.
    let mut out: Vec<Occurrence> = series
        .recurrence
        .iter()
        .filter(|(date, _)| !series.moved.contains_key(date) && !series.cancelled.contains(date))
        .filter_map(|(date, zoned)| series.build(date, Some(zoned)))
        .filter(|o| o.end > after)
        .take(n)
        .collect();
    out.extend(
        series
            .effective_moves()
            .filter_map(|(date, _)| series.build(date, None))
            .filter(|o| o.end > after),
    );
    out.sort_by_key(|o| (o.start, o.original_date));
    out.truncate(n);
    out.into_iter()
        .map(|o| {
            let local = o.start_in(member_zone);
            (o, local)
        })
        .collect()
}

fn check_duration(minutes: u32) -> Result<(), SeriesError> {
    if minutes == 0 || minutes > MAX_DURATION_MINUTES {
        return Err(SeriesError::InvalidDuration(minutes));
    }
    Ok(())
}

fn bump_sequence(tx: &mut impl Transactable) -> Result<(), SeriesError> {
    match tx.get(ROOT, SEQUENCE)? {
        Some((Value::Scalar(s), _)) if s.is_counter() => tx.increment(ROOT, SEQUENCE, 1)?,
        // Missing or not a counter (foreign writer): start a counter above what is there.
        other => {
            let current = match other {
                Some((Value::Scalar(s), _)) => s.as_i64().unwrap_or(0),
                _ => 0,
            };
            tx.put(ROOT, SEQUENCE, ScalarValue::counter(current + 1))?
        }
    }
    Ok(())
}

fn shape(key: &str) -> SeriesError {
    SeriesError::Schema(SchemaError::Shape(key.to_owned()))
}

fn parse_civil(text: &str, key: &str) -> Result<DateTime, SeriesError> {
    text.parse().map_err(|_| shape(key))
}

fn parse_date(text: &str, key: &str) -> Result<Date, SeriesError> {
    text.parse().map_err(|_| shape(key))
}

/// A string stored either as a scalar or as Text (what JS automerge 3 writes for strings).
fn read_str(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<String>, SeriesError> {
    match doc.get(obj, key)? {
        None => Ok(None),
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(s) => Ok(Some(s.to_string())),
            _ => Err(shape(key)),
        },
        Some((Value::Object(ObjType::Text), id)) => Ok(Some(doc.text(&id)?)),
        Some(_) => Err(shape(key)),
    }
}

fn map_id(doc: &impl ReadDoc, key: &str) -> Result<Option<ObjId>, SeriesError> {
    match doc.get(ROOT, key)? {
        None => Ok(None),
        Some((Value::Object(ObjType::Map), id)) => Ok(Some(id)),
        Some(_) => Err(shape(key)),
    }
}

fn read_string_map(doc: &impl ReadDoc, key: &str) -> Result<Vec<(String, String)>, SeriesError> {
    let Some(map) = map_id(doc, key)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for k in doc.keys(&map) {
        let value = read_str(doc, &map, &k)?.ok_or_else(|| shape(key))?;
        out.push((k, value));
    }
    Ok(out)
}

/// The map at `key`, created if a foreign writer left it out (`new_series` always makes it).
fn ensure_map(tx: &mut impl Transactable, key: &str) -> Result<ObjId, SeriesError> {
    match map_id(&*tx, key)? {
        Some(id) => Ok(id),
        None => Ok(tx.put_object(ROOT, key, ObjType::Map)?),
    }
}

/// Turns `old` into `new` by one splice over the changed middle, counted in the document's
/// text encoding, so a concurrent edit outside that span is kept.
fn splice_diff(
    tx: &mut impl Transactable,
    text: &ObjId,
    old: &str,
    new: &str,
) -> Result<(), SeriesError> {
    if old == new {
        return Ok(());
    }
    let width = |s: &str| match tx.text_encoding() {
        TextEncoding::Utf16CodeUnit => Some(s.encode_utf16().count()),
        TextEncoding::Utf8CodeUnit => Some(s.len()),
        TextEncoding::UnicodeCodePoint => Some(s.chars().count()),
        _ => None,
    };
    let prefix: usize = old
        .chars()
        .zip(new.chars())
        .take_while(|(a, b)| a == b)
        .map(|(c, _)| c.len_utf8())
        .sum();
    let (old_rest, new_rest) = (&old[prefix..], &new[prefix..]);
    let suffix: usize = old_rest
        .chars()
        .rev()
        .zip(new_rest.chars().rev())
        .take_while(|(a, b)| a == b)
        .map(|(c, _)| c.len_utf8())
        .sum();
    let removed = &old_rest[..old_rest.len() - suffix];
    let inserted = &new_rest[..new_rest.len() - suffix];
    match (width(&old[..prefix]), width(removed)) {
        (Some(pos), Some(del)) => tx.splice_text(text, pos, del as isize, inserted)?,
        // Grapheme-counted documents: replace the whole title rather than guess the widths.
        _ => {
            let len = tx.length(text);
            tx.splice_text(text, 0, len as isize, new)?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{Automerge, TextEncoding};
    use jiff::civil::date;

    fn new_doc() -> Automerge {
        Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit)
    }

    fn fourth_wednesday() -> SeriesInit {
        SeriesInit {
            title: "Peer supporters' circle".into(),
            zone: "Europe/London".into(),
            start: date(2026, 1, 28).at(18, 0, 0, 0),
            duration_minutes: 90,
            rule: RRule::parse("FREQ=MONTHLY;BYDAY=4WE").unwrap(),
        }
    }

    fn series_doc(init: SeriesInit) -> Automerge {
        let mut doc = new_doc();
        let mut tx = doc.transaction();
        new_series(&mut tx, init).unwrap();
        tx.commit();
        doc
    }

    fn change(
        doc: &mut Automerge,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), SeriesError>,
    ) {
        let mut tx = doc.transaction();
        f(&mut tx).unwrap();
        tx.commit();
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn dates(occs: &[Occurrence]) -> Vec<Date> {
        occs.iter().map(|o| o.original_date).collect()
    }

    #[test]
    fn a_new_series_reads_back() {
        let doc = series_doc(fourth_wednesday());
        let s = read_series(&doc).unwrap();
        assert_eq!(s.title, "Peer supporters' circle");
        assert_eq!(s.zone_name, "Europe/London");
        assert_eq!(s.start(), date(2026, 1, 28).at(18, 0, 0, 0));
        assert_eq!(s.rule().to_string(), "FREQ=MONTHLY;BYDAY=4WE");
        assert_eq!(s.duration_minutes, 90);
        assert_eq!(s.sequence, 0);
        assert!(s.moved.is_empty() && s.cancelled.is_empty() && s.meetings.is_empty());
    }

    #[test]
    fn invalid_series_are_refused_at_creation() {
        let mut doc = new_doc();
        let mut tx = doc.transaction();
        let bad_zone = SeriesInit {
            zone: "Europe/Atlantis".into(),
            ..fourth_wednesday()
        };
        assert!(matches!(
            new_series(&mut tx, bad_zone),
            Err(SeriesError::Zone(_))
        ));
        let off_rule = SeriesInit {
            start: date(2026, 1, 21).at(18, 0, 0, 0),
            ..fourth_wednesday()
        };
        assert!(matches!(
            new_series(&mut tx, off_rule),
            Err(SeriesError::Recurrence(_))
        ));
        let no_time = SeriesInit {
            duration_minutes: 0,
            ..fourth_wednesday()
        };
        assert!(matches!(
            new_series(&mut tx, no_time),
            Err(SeriesError::InvalidDuration(0))
        ));
    }

    #[test]
    fn a_newer_schema_is_a_typed_error() {
        let mut doc = series_doc(fourth_wednesday());
        let mut tx = doc.transaction();
        tx.put(ROOT, schema::VERSION_KEY, ScalarValue::Uint(2))
            .unwrap();
        tx.commit();
        assert!(matches!(
            read_series(&doc),
            Err(SeriesError::Schema(SchemaError::TooNew {
                kind: "series",
                found: 2,
                supported: 1
            }))
        ));
        let mut tx = doc.transaction();
        assert!(matches!(
            cancel_occurrence(&mut tx, date(2026, 2, 25)),
            Err(SeriesError::Schema(SchemaError::TooNew { .. }))
        ));
    }

    #[test]
    fn a_year_of_fourth_wednesdays() {
        let s = read_series(&series_doc(fourth_wednesday())).unwrap();
        let year = occurrences_between(&s, ts("2026-01-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"));
        assert_eq!(year.len(), 12);
        assert!(year
            .iter()
            .all(|o| o.original_date.weekday() == jiff::civil::Weekday::Wednesday));
        assert!(
            year.iter()
                .all(|o| o.local_start().hour() == 18
                    && o.end.duration_since(o.start).as_mins() == 90)
        );
        assert_eq!(year[9].original_date, date(2026, 10, 28));
    }

    #[test]
    fn moved_and_cancelled_occurrences_show_in_the_calendar() {
        let mut doc = series_doc(fourth_wednesday());
        change(&mut doc, |tx| {
            move_occurrence(tx, date(2026, 2, 25), date(2026, 2, 26).at(19, 0, 0, 0))
        });
        change(&mut doc, |tx| cancel_occurrence(tx, date(2026, 3, 25)));
        // Moved out of the window: the April meeting moves to May 1st.
        change(&mut doc, |tx| {
            move_occurrence(tx, date(2026, 4, 22), date(2026, 5, 1).at(18, 0, 0, 0))
        });
        let s = read_series(&doc).unwrap();
        assert_eq!(s.sequence, 3);
        let spring =
            occurrences_between(&s, ts("2026-02-01T00:00:00Z"), ts("2026-05-01T00:00:00Z"));
        assert_eq!(dates(&spring), [date(2026, 2, 25)]);
        assert!(spring[0].moved);
        assert_eq!(spring[0].start, ts("2026-02-26T19:00:00Z"));
        let may = occurrences_between(&s, ts("2026-05-01T00:00:00Z"), ts("2026-06-01T00:00:00Z"));
        assert_eq!(dates(&may), [date(2026, 4, 22), date(2026, 5, 27)]);
        assert_eq!(s.occurrence(date(2026, 3, 25)), None);

        // Restoring brings the cancelled one back at the rule's time.
        change(&mut doc, |tx| restore_occurrence(tx, date(2026, 3, 25)));
        let s = read_series(&doc).unwrap();
        assert_eq!(
            s.occurrence(date(2026, 3, 25)).unwrap().start,
            ts("2026-03-25T18:00:00Z")
        );
        assert_eq!(s.sequence, 4);
    }

    #[test]
    fn exceptions_must_name_an_occurrence() {
        let mut doc = series_doc(fourth_wednesday());
        let mut tx = doc.transaction();
        assert!(matches!(
            cancel_occurrence(&mut tx, date(2026, 2, 18)),
            Err(SeriesError::NotAnOccurrence(d)) if d == date(2026, 2, 18)
        ));
        assert!(matches!(
            move_occurrence(
                &mut tx,
                date(2025, 12, 24),
                date(2026, 1, 2).at(18, 0, 0, 0)
            ),
            Err(SeriesError::NotAnOccurrence(_))
        ));
    }

    #[test]
    fn repeated_changes_do_not_bump_the_sequence() {
        let mut doc = series_doc(fourth_wednesday());
        change(&mut doc, |tx| cancel_occurrence(tx, date(2026, 3, 25)));
        change(&mut doc, |tx| cancel_occurrence(tx, date(2026, 3, 25)));
        change(&mut doc, |tx| {
            move_occurrence(tx, date(2026, 4, 22), date(2026, 4, 22).at(18, 0, 0, 0))
        });
        change(&mut doc, |tx| {
            set_rule(tx, &RRule::parse("FREQ=MONTHLY;BYDAY=4WE").unwrap())
        });
        assert_eq!(read_series(&doc).unwrap().sequence, 1);
    }

    #[test]
    fn next_meetings_in_a_members_own_zone() {
        let s = read_series(&series_doc(fourth_wednesday())).unwrap();
        let ny = TimeZone::get("America/New_York").unwrap();
        let next = next_occurrences(&s, ts("2026-03-01T00:00:00Z"), 3, &ny);
        let shown: Vec<(Date, i8)> = next.iter().map(|(_, z)| (z.date(), z.hour())).collect();
        // 25 March: London is still on GMT but New York has moved, so 14:00 there.
        assert_eq!(
            shown,
            [
                (date(2026, 3, 25), 14),
                (date(2026, 4, 22), 13),
                (date(2026, 5, 27), 13)
            ]
        );
        let sydney = TimeZone::get("Australia/Sydney").unwrap();
        let (_, z) = &next_occurrences(&s, ts("2026-03-01T00:00:00Z"), 1, &sydney)[0];
        assert_eq!(
            (z.date(), z.hour()),
            (date(2026, 3, 26), 5),
            "the next morning in Sydney"
        );
    }

    #[test]
    fn a_meeting_in_progress_is_still_next_and_moves_are_ordered() {
        let mut doc = series_doc(fourth_wednesday());
        // February moves after March's meeting would be odd, but the order follows the start.
        change(&mut doc, |tx| {
            move_occurrence(tx, date(2026, 2, 25), date(2026, 3, 26).at(18, 0, 0, 0))
        });
        let s = read_series(&doc).unwrap();
        let utc = TimeZone::UTC;
        let next = next_occurrences(&s, ts("2026-02-01T00:00:00Z"), 3, &utc);
        let order: Vec<Date> = next.iter().map(|(o, _)| o.original_date).collect();
        assert_eq!(
            order,
            [date(2026, 3, 25), date(2026, 2, 25), date(2026, 4, 22)]
        );
        let during = next_occurrences(&s, ts("2026-03-25T18:30:00Z"), 1, &utc);
        assert_eq!(during[0].0.original_date, date(2026, 3, 25));
    }

    #[test]
    fn weekly_twelve_and_last_thursday_series() {
        let weekly = SeriesInit {
            start: date(2026, 9, 7).at(19, 0, 0, 0),
            rule: RRule::parse("FREQ=WEEKLY;COUNT=12").unwrap(),
            ..fourth_wednesday()
        };
        let s = read_series(&series_doc(weekly)).unwrap();
        let all = next_occurrences(&s, ts("2026-01-01T00:00:00Z"), 50, &TimeZone::UTC);
        assert_eq!(all.len(), 12);
        let last = SeriesInit {
            start: date(2026, 1, 29).at(10, 0, 0, 0),
            rule: RRule::parse("FREQ=MONTHLY;BYDAY=-1TH").unwrap(),
            ..fourth_wednesday()
        };
        let s = read_series(&series_doc(last)).unwrap();
        let spring =
            occurrences_between(&s, ts("2026-03-01T00:00:00Z"), ts("2026-06-01T00:00:00Z"));
        assert_eq!(
            dates(&spring),
            [date(2026, 3, 26), date(2026, 4, 30), date(2026, 5, 28)]
        );
    }

    #[test]
    fn organisers_editing_offline_both_keep_their_changes() {
        let mut ana = series_doc(fourth_wednesday());
        let mut ben = ana.fork();
        change(&mut ana, |tx| {
            move_occurrence(tx, date(2026, 2, 25), date(2026, 2, 26).at(18, 0, 0, 0))
        });
        change(&mut ben, |tx| cancel_occurrence(tx, date(2026, 3, 25)));
        // Both touch April: Ana moves it, Ben cancels it. The cancellation wins everywhere.
        change(&mut ana, |tx| {
            move_occurrence(tx, date(2026, 4, 22), date(2026, 4, 23).at(18, 0, 0, 0))
        });
        change(&mut ben, |tx| cancel_occurrence(tx, date(2026, 4, 22)));
        ana.merge(&mut ben).unwrap();
        ben.merge(&mut ana).unwrap();
        let (a, b) = (read_series(&ana).unwrap(), read_series(&ben).unwrap());
        assert_eq!(a, b);
        assert_eq!(
            a.sequence, 4,
            "concurrent bumps add up, so SEQUENCE only grows"
        );
        let spring =
            occurrences_between(&a, ts("2026-02-01T00:00:00Z"), ts("2026-05-01T00:00:00Z"));
        assert_eq!(dates(&spring), [date(2026, 2, 25)]);
        assert!(spring[0].moved);
    }

    #[test]
    fn concurrent_title_edits_merge() {
        let mut ana = series_doc(fourth_wednesday());
        let mut ben = ana.fork();
        change(&mut ana, |tx| {
            set_title(tx, "Peer supporters' monthly circle")
        });
        change(&mut ben, |tx| set_title(tx, "Peer supporters' circle 🌱"));
        ana.merge(&mut ben).unwrap();
        assert_eq!(
            read_series(&ana).unwrap().title,
            "Peer supporters' monthly circle 🌱"
        );
    }

    #[test]
    fn occurrence_ids_are_deterministic_and_recorded() {
        let series_id: DocumentId = "488sijVLJ6Grs5PnrczSYBwfNg25".parse().unwrap();
        let a = occurrence_document_id(&series_id, date(2026, 2, 25));
        assert_eq!(a, occurrence_document_id(&series_id, date(2026, 2, 25)));
        assert_ne!(a, occurrence_document_id(&series_id, date(2026, 3, 25)));
        assert_eq!(a.as_bytes()[6] >> 4, 4, "UUID v4 shape");
        assert_eq!(a.as_bytes()[8] >> 6, 0b10, "RFC 4122 variant");
        // Golden value: other implementations (JS) must derive the same id.
        assert_eq!(hex::encode(a.as_bytes()), GOLDEN_OCCURRENCE_ID);

        let mut ana = series_doc(fourth_wednesday());
        let mut ben = ana.fork();
        change(&mut ana, |tx| set_meeting(tx, date(2026, 2, 25), &a));
        change(&mut ben, |tx| set_meeting(tx, date(2026, 2, 25), &a));
        ana.merge(&mut ben).unwrap();
        let s = read_series(&ana).unwrap();
        assert_eq!(s.occurrence(date(2026, 2, 25)).unwrap().meeting, Some(a));
    }

    // Computed independently: sha256(id bytes + b"2026-02-25")[..16] with the v4 bits set.
    const GOLDEN_OCCURRENCE_ID: &str = "05b0351884d940db9b1c02350a19890e";

    #[test]
    fn strings_written_as_text_by_js_clients_are_read() {
        let mut doc = series_doc(fourth_wednesday());
        let mut tx = doc.transaction();
        let zone = tx.put_object(ROOT, ZONE, ObjType::Text).unwrap();
        tx.splice_text(&zone, 0, 0, "America/New_York").unwrap();
        tx.commit();
        assert_eq!(read_series(&doc).unwrap().zone_name, "America/New_York");
    }
}
