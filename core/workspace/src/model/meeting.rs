//! The meeting document: one per occurrence of a series, or per one-off meeting.
//!
//! Layout (root keys; user-typed strings are Text so JS clients co-edit them; identifiers,
//! enums, URLs and dates are scalar strings; readers accept either form, and numbers in
//! any of automerge's numeric types, since JS writes whole numbers as ints):
//!
//! | key | value |
//! |---|---|
//! | `meetingKind` | `"occurrence"` \| `"peerAssist"` \| `"training"` \| `"other"` |
//! | `seriesUrl`, `originalDate` | occurrences only: the series' `automerge:` URL and the occurrence's original `YYYY-MM-DD` |
//! | `title` | Text (empty for an occurrence: show the series' title) |
//! | `startMs`, `endMs`, `zone` | the meeting's instants and IANA zone, absent until set |
//! | `agenda` | map ItemId → `{title: Text, raisedBy, timeBoxMinutes?, kind: "case"\|"training"\|"admin", format?: {template, step}, order: f64, notes: Text, createdMs}` |
//! | `attendance` | map MemberId → `"present"` \| `"apologies"` \| `"absent"` |
//! | `rsvp` | map MemberId → `"yes"` \| `"no"` \| `"maybe"` |
//! | `facilitator`, `recorder` | MemberId of this meeting's (rotating) roles, absent until chosen |
//! | `actions` | map ItemId → `{text: Text, owner, due?: "YYYY-MM-DD", status: "open"\|"done"\|"dropped", carriedFrom?: URL, carriedFromAction?: ItemId, order: f64, createdMs}` |
//! | `minutes` | Text with block markers and marks, see [`crate::model::minutes`] |
//! | `agreed` | `{heads: [hex change hash], by: MemberId, atMs}`, absent while the minutes are a draft |
//!
//! Every container is created in the document's first change ([`init`] or
//! [`occurrence_skeleton`]): two devices that each created a missing `agenda` map concurrently
//! would keep one map and lose the other's items. Agenda items and actions live in maps keyed
//! by id, so concurrent additions never collide, and carrying the same action twice writes
//! the same key.
//!
//! ## One meeting per occurrence, even offline
//! Two organisers who open the same occurrence while offline must end with one document.
//! The occurrence's document id is derived from the series and date (the series module), and
//! its first change is [`occurrence_skeleton`]: a fixed actor id derived from the same inputs,
//! commit time 0 and a fixed creation order, so both phones produce byte-identical changes
//! with the same hash. The host imports it with
//! [`Engine::import_document`](cairn_sync::engine::Engine::import_document); afterwards each
//! phone edits under its own actor, and the copies merge like any other edits.

use std::collections::BTreeMap;
use std::str::FromStr;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, Automerge, AutomergeError, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue,
    TextEncoding, Value, ROOT,
};
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::model::fields::named_enum;
use crate::model::minutes::{self, MinutesError, MinutesTemplate, RichText};
use crate::model::schema::{self, DocKind, SchemaError};
use cairn_sync::ids::{DocumentId, MemberId};

const MEETING_KIND: &str = "meetingKind";
const SERIES_URL: &str = "seriesUrl";
const ORIGINAL_DATE: &str = "originalDate";
const TITLE: &str = "title";
const START_MS: &str = "startMs";
const END_MS: &str = "endMs";
const ZONE: &str = "zone";
const AGENDA: &str = "agenda";
const ATTENDANCE: &str = "attendance";
const RSVP: &str = "rsvp";
const FACILITATOR: &str = "facilitator";
const RECORDER: &str = "recorder";
const ACTIONS: &str = "actions";
const AGREED: &str = "agreed";

/// Why a meeting operation failed.
#[derive(Debug, Error)]
pub enum MeetingError {
    /// The document is not a meeting document this code can read (or a field has a shape
    /// this code does not know).
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Automerge refused the change (usually a bug in the caller's object ids).
    #[error(transparent)]
    Automerge(#[from] AutomergeError),
    /// Reading or editing the minutes failed.
    #[error(transparent)]
    Minutes(#[from] MinutesError),
    /// No agenda item with this id (removed, or not synced yet).
    #[error("no agenda item {0}")]
    NoSuchAgendaItem(ItemId),
    /// No action item with this id (not synced yet).
    #[error("no action item {0}")]
    NoSuchAction(ItemId),
    /// Not an IANA zone name in the bundled time-zone database.
    #[error("unknown time zone")]
    UnknownZone,
    /// The meeting would end before it starts.
    #[error("the meeting ends before it starts")]
    EndBeforeStart,
    /// Agenda items and actions need visible text.
    #[error("the text cannot be empty")]
    EmptyText,
    /// Agreeing minutes needs the heads the group saw.
    #[error("no heads given")]
    NoHeads,
    /// Agreed heads must be changes this document has (the caller's heads are from elsewhere).
    #[error("{0} of the agreed heads are not in this document")]
    UnknownHeads(usize),
    /// The text index is outside the field (the editor's copy is stale).
    #[error("range {start}..{end} is outside the text (length {len})")]
    OutOfRange {
        /// Start of the requested range.
        start: usize,
        /// End of the requested range.
        end: usize,
        /// Current length in UTF-16 units.
        len: usize,
    },
}

/// The id of an agenda item or action item inside one meeting document.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ItemId(String);

impl ItemId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ItemId {
    fn from(s: &str) -> Self {
        ItemId(s.to_owned())
    }
}

impl std::fmt::Display for ItemId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

named_enum!(
    /// What a one-off meeting is.
    OneOffKind {
        /// A Peer Assist: a team learns from peers before a piece of work.
        PeerAssist => "peerAssist",
        /// A training session.
        Training => "training",
        /// Anything else.
        Other => "other",
    }
);

named_enum!(
    /// What an agenda item is about.
    AgendaKind {
        /// Case collaboration (de-identified).
        Case => "case",
        /// Training or learning.
        Training => "training",
        /// Running the group.
        Admin => "admin",
    }
);

named_enum!(
    /// A member's attendance at this meeting.
    Attendance {
        /// Was there.
        Present => "present",
        /// Sent apologies.
        Apologies => "apologies",
        /// Absent without apologies.
        Absent => "absent",
    }
);

named_enum!(
    /// A member's answer to the invitation.
    Rsvp {
        /// Coming.
        Yes => "yes",
        /// Not coming.
        No => "no",
        /// Not sure yet.
        Maybe => "maybe",
    }
);

named_enum!(
    /// Where an action item stands.
    ActionStatus {
        /// Still to do; carried into the next meeting's review.
        Open => "open",
        /// Done.
        Done => "done",
        /// No longer wanted.
        Dropped => "dropped",
    }
);

/// Whether this meeting is an occurrence of a series or a one-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeetingKind {
    /// One occurrence of a recurring series.
    Occurrence {
        /// The series document.
        series: DocumentId,
        /// The date the rule gave this occurrence (it keeps this identity when moved).
        original_date: Date,
    },
    /// A meeting of its own.
    OneOff(OneOffKind),
}

/// When a meeting takes place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Start, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// End, milliseconds since the Unix epoch.
    pub end_ms: i64,
    /// The IANA zone the meeting is planned in (members see it in their own).
    pub zone: String,
}

/// Which step of which template an agenda item came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatRef {
    /// The template's id (e.g. `troika-consulting`).
    pub template: String,
    /// The step's index in the template.
    pub step: u32,
}

/// An agenda item as read.
#[derive(Clone, Debug, PartialEq)]
pub struct AgendaItem {
    /// Its id.
    pub id: ItemId,
    /// Its title.
    pub title: String,
    /// Who raised it.
    pub raised_by: MemberId,
    /// Minutes set aside for it.
    pub time_box_minutes: Option<u32>,
    /// What it is about.
    pub kind: AgendaKind,
    /// The template step it came from.
    pub format: Option<FormatRef>,
    /// Sort key (ascending; ties broken by id).
    pub order: f64,
    /// Notes (e.g. a de-identified case).
    pub notes: String,
    /// When it was added (ms since the Unix epoch).
    pub created_ms: i64,
}

/// What to add to the agenda.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAgendaItem {
    /// Title.
    pub title: String,
    /// Who raises it.
    pub raised_by: MemberId,
    /// Minutes set aside for it.
    pub time_box_minutes: Option<u32>,
    /// What it is about.
    pub kind: AgendaKind,
    /// The template step it comes from.
    pub format: Option<FormatRef>,
    /// Initial notes.
    pub notes: String,
}

/// An action item as read.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionItem {
    /// Its id.
    pub id: ItemId,
    /// What is to be done.
    pub text: String,
    /// Who does it.
    pub owner: MemberId,
    /// By when.
    pub due: Option<Date>,
    /// Where it stands.
    pub status: ActionStatus,
    /// The meeting it was carried from.
    pub carried_from: Option<DocumentId>,
    /// Its id in that meeting.
    pub carried_from_action: Option<ItemId>,
    /// Sort key (ascending; ties broken by id).
    pub order: f64,
    /// When it was first written (ms since the Unix epoch).
    pub created_ms: i64,
}

/// The record that the group agreed the minutes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// The document heads the group agreed (the version they saw).
    pub heads: Vec<ChangeHash>,
    /// Who recorded the agreement.
    pub by: MemberId,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
}

/// Where the minutes stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinutesStatus {
    /// Not agreed yet.
    Draft,
    /// Agreed, and unchanged since.
    Agreed,
    /// Agreed, then edited: the agreed version is still the one at the agreed heads.
    ChangedSinceAgreed,
}

/// The structured part of a meeting (the minutes are read with [`minutes::read_minutes`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Meeting {
    /// Occurrence or one-off.
    pub kind: MeetingKind,
    /// Title (empty for an occurrence unless renamed: show the series' title).
    pub title: String,
    /// When, once set.
    pub schedule: Option<Schedule>,
    /// The agenda in order.
    pub agenda: Vec<AgendaItem>,
    /// Attendance per member.
    pub attendance: BTreeMap<MemberId, Attendance>,
    /// RSVP per member.
    pub rsvp: BTreeMap<MemberId, Rsvp>,
    /// This meeting's facilitator.
    pub facilitator: Option<MemberId>,
    /// This meeting's recorder (note-taker).
    pub recorder: Option<MemberId>,
    /// Action items in order.
    pub actions: Vec<ActionItem>,
    /// The agreement, once the minutes are agreed.
    pub agreement: Option<Agreement>,
}

/// A co-edited text field of a meeting, for [`splice_text`] and [`set_text`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextField {
    /// The meeting's title.
    Title,
    /// An agenda item's title.
    AgendaTitle(ItemId),
    /// An agenda item's notes.
    AgendaNotes(ItemId),
    /// An action item's text.
    ActionText(ItemId),
}

// ---------------------------------------------------------------------------------------
// Reading helpers: accept scalar strings and Text, any numeric type.

fn shape(field: &str) -> SchemaError {
    SchemaError::Shape(field.to_owned())
}

fn string(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<String>, SchemaError> {
    match doc.get(obj, key).map_err(|_| shape(key))? {
        None => Ok(None),
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(s) => Ok(Some(s.to_string())),
            ScalarValue::Null => Ok(None),
            _ => Err(shape(key)),
        },
        Some((Value::Object(ObjType::Text), id)) => {
            Ok(Some(doc.text(&id).map_err(|_| shape(key))?))
        }
        Some(_) => Err(shape(key)),
    }
}

fn required_string(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<String, SchemaError> {
    string(doc, obj, key)?.ok_or_else(|| shape(key))
}

fn number(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<f64>, SchemaError> {
    match doc.get(obj, key).map_err(|_| shape(key))? {
        None => Ok(None),
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Int(i) => Ok(Some(*i as f64)),
            ScalarValue::Uint(u) => Ok(Some(*u as f64)),
            ScalarValue::F64(f) => Ok(Some(*f)),
            ScalarValue::Timestamp(t) => Ok(Some(*t as f64)),
            ScalarValue::Null => Ok(None),
            _ => Err(shape(key)),
        },
        Some(_) => Err(shape(key)),
    }
}

fn int(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<i64>, SchemaError> {
    Ok(number(doc, obj, key)?.map(|f| f as i64))
}

fn object(
    doc: &impl ReadDoc,
    obj: &ObjId,
    key: &str,
    typ: ObjType,
) -> Result<Option<ObjId>, SchemaError> {
    match doc.get(obj, key).map_err(|_| shape(key))? {
        None => Ok(None),
        Some((Value::Object(t), id)) if t == typ => Ok(Some(id)),
        Some(_) => Err(shape(key)),
    }
}

fn container(doc: &impl ReadDoc, key: &str) -> Result<ObjId, SchemaError> {
    object(doc, &ROOT, key, ObjType::Map)?.ok_or_else(|| shape(key))
}

fn date(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<Date>, SchemaError> {
    string(doc, obj, key)?
        .map(|s| Date::from_str(&s).map_err(|_| shape(key)))
        .transpose()
}

fn check(doc: &impl ReadDoc) -> Result<(), SchemaError> {
    schema::check(doc, DocKind::Meeting).map(|_| ())
}

// ---------------------------------------------------------------------------------------
// Creating the document.

/// Writes the first change of a meeting. Its content and creation order are frozen for
/// schema version 1: [`occurrence_skeleton`] must produce the same bytes on every device.
fn write_skeleton(tx: &mut impl Transactable, kind: &MeetingKind) -> Result<(), AutomergeError> {
    schema::stamp(tx, DocKind::Meeting)?;
    match kind {
        MeetingKind::Occurrence {
            series,
            original_date,
        } => {
            tx.put(ROOT, MEETING_KIND, "occurrence")?;
            tx.put(ROOT, SERIES_URL, series.url())?;
            tx.put(ROOT, ORIGINAL_DATE, original_date.to_string())?;
        }
        MeetingKind::OneOff(kind) => tx.put(ROOT, MEETING_KIND, kind.name())?,
    }
    tx.put_object(ROOT, TITLE, ObjType::Text)?;
    for key in [AGENDA, ATTENDANCE, RSVP, ACTIONS] {
        tx.put_object(ROOT, key, ObjType::Map)?;
    }
    let minutes = minutes::create(tx)?;
    minutes::write_template(tx, &minutes, &MinutesTemplate::standard())?;
    Ok(())
}

/// Initialises a new one-off meeting (a Peer Assist, a training session…): schema stamp,
/// every container, the standard minutes template, and `title`.
pub fn init(tx: &mut impl Transactable, kind: OneOffKind, title: &str) -> Result<(), MeetingError> {
    write_skeleton(tx, &MeetingKind::OneOff(kind))?;
    set_text(tx, TextField::Title, title)?;
    Ok(())
}

/// The actor that writes every copy of an occurrence's first change.
fn skeleton_actor(series: &DocumentId, original_date: Date) -> ActorId {
    let mut hash = Sha256::new();
    hash.update(b"cairn meeting occurrence skeleton v1\n");
    hash.update(series.url().as_bytes());
    hash.update(b"\n");
    hash.update(original_date.to_string().as_bytes());
    let digest = hash.finalize();
    let mut actor = [0u8; 16];
    actor.copy_from_slice(&digest[..16]);
    ActorId::from(actor)
}

/// The first change of the occurrence of `series` originally on `original_date`, as bytes
/// for [`Engine::import_document`](cairn_sync::engine::Engine::import_document). Every device
/// computes the identical change (fixed actor, time 0, fixed layout), so two organisers
/// opening the occurrence offline end up with one document. The title stays empty (show
/// the series' title); set the schedule afterwards with [`set_schedule`].
///
/// The layout is frozen for this schema version: a change to it needs a new actor prefix,
/// or two app versions would write different changes under one actor and sequence number.
pub fn occurrence_skeleton(series: &DocumentId, original_date: Date) -> Vec<u8> {
    let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
    doc.set_actor(skeleton_actor(series, original_date));
    let mut tx = doc.transaction();
    write_skeleton(
        &mut tx,
        &MeetingKind::Occurrence {
            series: *series,
            original_date,
        },
    )
    .expect("writing into a fresh in-memory document cannot fail");
    tx.commit_with(CommitOptions::default().with_time(0));
    doc.get_last_local_change()
        .expect("the skeleton change was just committed")
        .raw_bytes()
        .to_vec()
}

// ---------------------------------------------------------------------------------------
// Kind, title, schedule.

/// Whether the meeting is an occurrence (of which series and date) or a one-off.
pub fn kind(doc: &impl ReadDoc) -> Result<MeetingKind, MeetingError> {
    check(doc)?;
    let name = required_string(doc, &ROOT, MEETING_KIND)?;
    if name == "occurrence" {
        let url = required_string(doc, &ROOT, SERIES_URL)?;
        let series = DocumentId::parse_url(&url).map_err(|_| shape(SERIES_URL))?;
        let original_date = date(doc, &ROOT, ORIGINAL_DATE)?.ok_or_else(|| shape(ORIGINAL_DATE))?;
        return Ok(MeetingKind::Occurrence {
            series,
            original_date,
        });
    }
    Ok(MeetingKind::OneOff(
        OneOffKind::from_name(&name).ok_or_else(|| shape(MEETING_KIND))?,
    ))
}

/// Sets when the meeting takes place. `zone` must be an IANA name.
pub fn set_schedule(tx: &mut impl Transactable, schedule: &Schedule) -> Result<(), MeetingError> {
    check(tx)?;
    if jiff::tz::TimeZone::get(&schedule.zone).is_err() {
        return Err(MeetingError::UnknownZone);
    }
    if schedule.end_ms < schedule.start_ms {
        return Err(MeetingError::EndBeforeStart);
    }
    tx.put(ROOT, START_MS, schedule.start_ms)?;
    tx.put(ROOT, END_MS, schedule.end_ms)?;
    tx.put(ROOT, ZONE, schedule.zone.as_str())?;
    Ok(())
}

/// When the meeting takes place, if set.
pub fn schedule(doc: &impl ReadDoc) -> Result<Option<Schedule>, MeetingError> {
    check(doc)?;
    let (Some(start_ms), Some(end_ms), Some(zone)) = (
        int(doc, &ROOT, START_MS)?,
        int(doc, &ROOT, END_MS)?,
        string(doc, &ROOT, ZONE)?,
    ) else {
        return Ok(None);
    };
    Ok(Some(Schedule {
        start_ms,
        end_ms,
        zone,
    }))
}

fn text_obj(doc: &impl ReadDoc, field: &TextField) -> Result<ObjId, MeetingError> {
    let (parent, key) = match field {
        TextField::Title => (ROOT, TITLE),
        TextField::AgendaTitle(id) => (agenda_item_obj(doc, id)?, "title"),
        TextField::AgendaNotes(id) => (agenda_item_obj(doc, id)?, "notes"),
        TextField::ActionText(id) => (action_obj(doc, id)?, "text"),
    };
    Ok(object(doc, &parent, key, ObjType::Text)?.ok_or_else(|| shape(key))?)
}

/// Edits a co-edited field as the user typed: at `index` (UTF-16 units) delete `delete`
/// units and insert `insert`. This merges best with concurrent edits.
pub fn splice_text(
    tx: &mut impl Transactable,
    field: TextField,
    index: usize,
    delete: usize,
    insert: &str,
) -> Result<(), MeetingError> {
    check(tx)?;
    let obj = text_obj(tx, &field)?;
    let len = tx.length(&obj);
    let end = index.saturating_add(delete);
    if end > len {
        return Err(MeetingError::OutOfRange {
            start: index,
            end,
            len,
        });
    }
    tx.splice_text(&obj, index, delete as isize, insert)?;
    Ok(())
}

/// Replaces a field's whole text, writing only the difference (for forms that hand over
/// the new value rather than keystrokes).
pub fn set_text(
    tx: &mut impl Transactable,
    field: TextField,
    text: &str,
) -> Result<(), MeetingError> {
    check(tx)?;
    let obj = text_obj(tx, &field)?;
    tx.update_text(&obj, text)?;
    Ok(())
}

/// The meeting's title (empty for an occurrence that was not renamed).
pub fn title(doc: &impl ReadDoc) -> Result<String, MeetingError> {
    check(doc)?;
    Ok(string(doc, &ROOT, TITLE)?.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------
// Agenda.

/// An id for a new item: a hash of what makes this addition unique (the document state it
/// is based on, how far into the transaction, when, who and what), so model functions need
/// no randomness. Two additions collide only if they are the same addition.
fn new_item_id(
    tx: &impl Transactable,
    scope: &str,
    now_ms: i64,
    who: &MemberId,
    text: &str,
) -> ItemId {
    let mut hash = Sha256::new();
    hash.update(scope.as_bytes());
    for head in tx.base_heads() {
        hash.update(head.0);
    }
    hash.update((tx.pending_ops() as u64).to_le_bytes());
    hash.update(now_ms.to_le_bytes());
    hash.update(who.as_str().as_bytes());
    hash.update(b"\0");
    hash.update(text.as_bytes());
    ItemId(hex::encode(&hash.finalize()[..8]))
}

fn next_order(doc: &impl ReadDoc, map: &ObjId) -> Result<f64, SchemaError> {
    let mut max = 0.0f64;
    for key in doc.keys(map).collect::<Vec<_>>() {
        if let Some(item) = object(doc, map, &key, ObjType::Map)? {
            max = max.max(number(doc, &item, "order")?.unwrap_or(0.0));
        }
    }
    Ok(max + 1.0)
}

fn agenda_item_obj(doc: &impl ReadDoc, id: &ItemId) -> Result<ObjId, MeetingError> {
    let agenda = container(doc, AGENDA)?;
    object(doc, &agenda, id.as_str(), ObjType::Map)?
        .ok_or_else(|| MeetingError::NoSuchAgendaItem(id.clone()))
}

/// Adds an agenda item at the end; returns its id.
pub fn add_agenda_item(
    tx: &mut impl Transactable,
    item: &NewAgendaItem,
    now_ms: i64,
) -> Result<ItemId, MeetingError> {
    check(tx)?;
    let id = new_item_id(tx, AGENDA, now_ms, &item.raised_by, &item.title);
    let agenda = container(tx, AGENDA)?;
    let order = next_order(tx, &agenda)?;
    put_agenda_item(tx, &id, item, order, now_ms)?;
    Ok(id)
}

/// Writes an agenda item under `id` unless one exists (so deterministic ids make repeated
/// additions no-ops). Returns whether it was written.
pub(crate) fn put_agenda_item(
    tx: &mut impl Transactable,
    id: &ItemId,
    item: &NewAgendaItem,
    order: f64,
    now_ms: i64,
) -> Result<bool, MeetingError> {
    if item.title.trim().is_empty() {
        return Err(MeetingError::EmptyText);
    }
    let agenda = container(tx, AGENDA)?;
    if tx.get(&agenda, id.as_str())?.is_some() {
        return Ok(false);
    }
    let obj = tx.put_object(&agenda, id.as_str(), ObjType::Map)?;
    let title = tx.put_object(&obj, "title", ObjType::Text)?;
    tx.splice_text(&title, 0, 0, &item.title)?;
    tx.put(&obj, "raisedBy", item.raised_by.as_str())?;
    if let Some(minutes) = item.time_box_minutes {
        tx.put(&obj, "timeBoxMinutes", minutes as i64)?;
    }
    tx.put(&obj, "kind", item.kind.name())?;
    if let Some(format) = &item.format {
        let f = tx.put_object(&obj, "format", ObjType::Map)?;
        tx.put(&f, "template", format.template.as_str())?;
        tx.put(&f, "step", format.step as i64)?;
    }
    tx.put(&obj, "order", order)?;
    let notes = tx.put_object(&obj, "notes", ObjType::Text)?;
    tx.splice_text(&notes, 0, 0, &item.notes)?;
    tx.put(&obj, "createdMs", now_ms)?;
    Ok(true)
}

/// The next free agenda position (for callers adding several items in sequence).
pub(crate) fn next_agenda_order(doc: &impl ReadDoc) -> Result<f64, MeetingError> {
    let agenda = container(doc, AGENDA)?;
    Ok(next_order(doc, &agenda)?)
}

/// Changes an item's time box (`None`: no time box).
pub fn set_time_box(
    tx: &mut impl Transactable,
    id: &ItemId,
    minutes: Option<u32>,
) -> Result<(), MeetingError> {
    check(tx)?;
    let obj = agenda_item_obj(tx, id)?;
    match minutes {
        Some(m) => tx.put(&obj, "timeBoxMinutes", m as i64)?,
        None => tx.delete(&obj, "timeBoxMinutes")?,
    }
    Ok(())
}

/// Changes what an item is about.
pub fn set_agenda_kind(
    tx: &mut impl Transactable,
    id: &ItemId,
    kind: AgendaKind,
) -> Result<(), MeetingError> {
    check(tx)?;
    let obj = agenda_item_obj(tx, id)?;
    tx.put(&obj, "kind", kind.name())?;
    Ok(())
}

/// Moves an item before `before` (or to the end with `None`). Only the moved item's
/// `order` changes, so concurrent moves of different items both take effect.
pub fn move_agenda_item(
    tx: &mut impl Transactable,
    id: &ItemId,
    before: Option<&ItemId>,
) -> Result<(), MeetingError> {
    check(tx)?;
    let obj = agenda_item_obj(tx, id)?;
    let items = agenda_items(tx)?;
    let order = match before {
        None => {
            items
                .iter()
                .filter(|i| &i.id != id)
                .map(|i| i.order)
                .fold(0.0, f64::max)
                + 1.0
        }
        Some(before) => {
            let others: Vec<&AgendaItem> = items.iter().filter(|i| &i.id != id).collect();
            let pos = others
                .iter()
                .position(|i| &i.id == before)
                .ok_or_else(|| MeetingError::NoSuchAgendaItem(before.clone()))?;
            let after = others[pos].order;
            let prev = if pos == 0 {
                after - 1.0
            } else {
                others[pos - 1].order
            };
            (prev + after) / 2.0
        }
    };
    tx.put(&obj, "order", order)?;
    Ok(())
}

/// Removes an item from the agenda.
pub fn remove_agenda_item(tx: &mut impl Transactable, id: &ItemId) -> Result<(), MeetingError> {
    check(tx)?;
    agenda_item_obj(tx, id)?;
    let agenda = container(tx, AGENDA)?;
    tx.delete(&agenda, id.as_str())?;
    Ok(())
}

fn read_agenda_item(doc: &impl ReadDoc, id: &str, obj: &ObjId) -> Result<AgendaItem, SchemaError> {
    let format = match object(doc, obj, "format", ObjType::Map)? {
        Some(f) => Some(FormatRef {
            template: required_string(doc, &f, "template")?,
            step: int(doc, &f, "step")?.ok_or_else(|| shape("step"))? as u32,
        }),
        None => None,
    };
    Ok(AgendaItem {
        id: ItemId(id.to_owned()),
        title: required_string(doc, obj, "title")?,
        raised_by: MemberId::from(required_string(doc, obj, "raisedBy")?),
        time_box_minutes: int(doc, obj, "timeBoxMinutes")?
            .map(|m| m.clamp(0, u32::MAX as i64) as u32),
        kind: AgendaKind::from_name(&required_string(doc, obj, "kind")?)
            .ok_or_else(|| shape("kind"))?,
        format,
        order: number(doc, obj, "order")?.unwrap_or(0.0),
        notes: string(doc, obj, "notes")?.unwrap_or_default(),
        created_ms: int(doc, obj, "createdMs")?.unwrap_or(0),
    })
}

/// The agenda in order.
pub fn agenda_items(doc: &impl ReadDoc) -> Result<Vec<AgendaItem>, MeetingError> {
    check(doc)?;
    let agenda = container(doc, AGENDA)?;
    let mut items = Vec::new();
    for key in doc.keys(&agenda).collect::<Vec<_>>() {
        if let Some(obj) = object(doc, &agenda, &key, ObjType::Map)? {
            items.push(read_agenda_item(doc, &key, &obj)?);
        }
    }
    items.sort_by(|a, b| a.order.total_cmp(&b.order).then_with(|| a.id.cmp(&b.id)));
    Ok(items)
}

// ---------------------------------------------------------------------------------------
// Attendance, RSVP, roles.

fn set_member_value(
    tx: &mut impl Transactable,
    key: &str,
    member: &MemberId,
    value: Option<&str>,
) -> Result<(), MeetingError> {
    check(tx)?;
    let map = container(tx, key)?;
    match value {
        Some(v) => tx.put(&map, member.as_str(), v)?,
        None => tx.delete(&map, member.as_str())?,
    }
    Ok(())
}

fn member_values<T>(
    doc: &impl ReadDoc,
    key: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<BTreeMap<MemberId, T>, MeetingError> {
    check(doc)?;
    let map = container(doc, key)?;
    let mut out = BTreeMap::new();
    for member in doc.keys(&map).collect::<Vec<_>>() {
        if let Some(value) = string(doc, &map, &member)? {
            out.insert(
                MemberId::from(member),
                parse(&value).ok_or_else(|| shape(key))?,
            );
        }
    }
    Ok(out)
}

/// Records a member's attendance (`None` clears it).
pub fn set_attendance(
    tx: &mut impl Transactable,
    member: &MemberId,
    attendance: Option<Attendance>,
) -> Result<(), MeetingError> {
    set_member_value(tx, ATTENDANCE, member, attendance.map(Attendance::name))
}

/// Attendance per member.
pub fn attendance(doc: &impl ReadDoc) -> Result<BTreeMap<MemberId, Attendance>, MeetingError> {
    member_values(doc, ATTENDANCE, Attendance::from_name)
}

/// Records a member's RSVP (`None` clears it).
pub fn set_rsvp(
    tx: &mut impl Transactable,
    member: &MemberId,
    rsvp: Option<Rsvp>,
) -> Result<(), MeetingError> {
    set_member_value(tx, RSVP, member, rsvp.map(Rsvp::name))
}

/// RSVP per member.
pub fn rsvps(doc: &impl ReadDoc) -> Result<BTreeMap<MemberId, Rsvp>, MeetingError> {
    member_values(doc, RSVP, Rsvp::from_name)
}

fn set_role(
    tx: &mut impl Transactable,
    key: &str,
    member: Option<&MemberId>,
) -> Result<(), MeetingError> {
    check(tx)?;
    match member {
        Some(m) => tx.put(ROOT, key, m.as_str())?,
        None => tx.delete(ROOT, key)?,
    }
    Ok(())
}

/// Chooses this meeting's facilitator (rotating per meeting; `None` clears).
pub fn set_facilitator(
    tx: &mut impl Transactable,
    member: Option<&MemberId>,
) -> Result<(), MeetingError> {
    set_role(tx, FACILITATOR, member)
}

/// Chooses this meeting's recorder, who takes the minutes (`None` clears).
pub fn set_recorder(
    tx: &mut impl Transactable,
    member: Option<&MemberId>,
) -> Result<(), MeetingError> {
    set_role(tx, RECORDER, member)
}

// ---------------------------------------------------------------------------------------
// Action items.

fn action_obj(doc: &impl ReadDoc, id: &ItemId) -> Result<ObjId, MeetingError> {
    let actions = container(doc, ACTIONS)?;
    object(doc, &actions, id.as_str(), ObjType::Map)?
        .ok_or_else(|| MeetingError::NoSuchAction(id.clone()))
}

/// Adds an open action item; returns its id.
pub fn add_action(
    tx: &mut impl Transactable,
    text: &str,
    owner: &MemberId,
    due: Option<Date>,
    now_ms: i64,
) -> Result<ItemId, MeetingError> {
    check(tx)?;
    if text.trim().is_empty() {
        return Err(MeetingError::EmptyText);
    }
    let id = new_item_id(tx, ACTIONS, now_ms, owner, text);
    let actions = container(tx, ACTIONS)?;
    let order = next_order(tx, &actions)?;
    let obj = tx.put_object(&actions, id.as_str(), ObjType::Map)?;
    write_action(
        tx,
        &obj,
        text,
        owner,
        due,
        ActionStatus::Open,
        order,
        now_ms,
    )?;
    Ok(id)
}

#[allow(clippy::too_many_arguments)] // reason: one flat record, written in one place
fn write_action(
    tx: &mut impl Transactable,
    obj: &ObjId,
    text: &str,
    owner: &MemberId,
    due: Option<Date>,
    status: ActionStatus,
    order: f64,
    created_ms: i64,
) -> Result<(), AutomergeError> {
    let t = tx.put_object(obj, "text", ObjType::Text)?;
    tx.splice_text(&t, 0, 0, text)?;
    tx.put(obj, "owner", owner.as_str())?;
    if let Some(due) = due {
        tx.put(obj, "due", due.to_string())?;
    }
    tx.put(obj, "status", status.name())?;
    tx.put(obj, "order", order)?;
    tx.put(obj, "createdMs", created_ms)?;
    Ok(())
}

/// Sets an action's status.
pub fn set_action_status(
    tx: &mut impl Transactable,
    id: &ItemId,
    status: ActionStatus,
) -> Result<(), MeetingError> {
    check(tx)?;
    let obj = action_obj(tx, id)?;
    tx.put(&obj, "status", status.name())?;
    Ok(())
}

/// Hands an action to another member.
pub fn set_action_owner(
    tx: &mut impl Transactable,
    id: &ItemId,
    owner: &MemberId,
) -> Result<(), MeetingError> {
    check(tx)?;
    let obj = action_obj(tx, id)?;
    tx.put(&obj, "owner", owner.as_str())?;
    Ok(())
}

/// Sets or clears an action's due date.
pub fn set_action_due(
    tx: &mut impl Transactable,
    id: &ItemId,
    due: Option<Date>,
) -> Result<(), MeetingError> {
    check(tx)?;
    let obj = action_obj(tx, id)?;
    match due {
        Some(d) => tx.put(&obj, "due", d.to_string())?,
        None => tx.delete(&obj, "due")?,
    }
    Ok(())
}

fn read_action(doc: &impl ReadDoc, id: &str, obj: &ObjId) -> Result<ActionItem, SchemaError> {
    let carried_from = string(doc, obj, "carriedFrom")?
        .map(|url| DocumentId::parse_url(&url).map_err(|_| shape("carriedFrom")))
        .transpose()?;
    Ok(ActionItem {
        id: ItemId(id.to_owned()),
        text: required_string(doc, obj, "text")?,
        owner: MemberId::from(required_string(doc, obj, "owner")?),
        due: date(doc, obj, "due")?,
        status: ActionStatus::from_name(&required_string(doc, obj, "status")?)
            .ok_or_else(|| shape("status"))?,
        carried_from,
        carried_from_action: string(doc, obj, "carriedFromAction")?.map(ItemId),
        order: number(doc, obj, "order")?.unwrap_or(0.0),
        created_ms: int(doc, obj, "createdMs")?.unwrap_or(0),
    })
}

/// The action items in order (carried ones keep their original order, so they come first).
pub fn actions(doc: &impl ReadDoc) -> Result<Vec<ActionItem>, MeetingError> {
    check(doc)?;
    let map = container(doc, ACTIONS)?;
    let mut items = Vec::new();
    for key in doc.keys(&map).collect::<Vec<_>>() {
        if let Some(obj) = object(doc, &map, &key, ObjType::Map)? {
            items.push(read_action(doc, &key, &obj)?);
        }
    }
    items.sort_by(|a, b| a.order.total_cmp(&b.order).then_with(|| a.id.cmp(&b.id)));
    Ok(items)
}

/// The id an action carried from meeting `prev` gets in the next meeting: derived from the
/// original, so carrying twice, or on two devices at once, writes the same key.
fn carried_id(prev: &DocumentId, action: &ItemId) -> ItemId {
    let mut hash = Sha256::new();
    hash.update(b"carried\n");
    hash.update(prev.url().as_bytes());
    hash.update(b"\n");
    hash.update(action.as_str().as_bytes());
    ItemId(format!("c-{}", hex::encode(&hash.finalize()[..8])))
}

/// Copies the open actions of the previous meeting (`prev_doc`, whose id is `prev`) into the
/// next meeting for its review, each marked with where it came from. Idempotent: actions
/// already carried are left as they are (even if since marked done). Returns the ids of the
/// actions carried now.
pub fn carry_open_actions(
    prev_doc: &impl ReadDoc,
    prev: &DocumentId,
    next_tx: &mut impl Transactable,
) -> Result<Vec<ItemId>, MeetingError> {
    check(next_tx)?;
    let open: Vec<ActionItem> = actions(prev_doc)?
        .into_iter()
        .filter(|a| a.status == ActionStatus::Open)
        .collect();
    let map = container(next_tx, ACTIONS)?;
    let mut carried = Vec::new();
    for action in open {
        let id = carried_id(prev, &action.id);
        if next_tx.get(&map, id.as_str())?.is_some() {
            continue;
        }
        let obj = next_tx.put_object(&map, id.as_str(), ObjType::Map)?;
        write_action(
            next_tx,
            &obj,
            &action.text,
            &action.owner,
            action.due,
            ActionStatus::Open,
            action.order,
            action.created_ms,
        )?;
        next_tx.put(&obj, "carriedFrom", prev.url())?;
        next_tx.put(&obj, "carriedFromAction", action.id.as_str())?;
        carried.push(id);
    }
    Ok(carried)
}

// ---------------------------------------------------------------------------------------
// Draft → agreed.

/// Records that the group agreed the minutes as they were at `heads` (normally the heads of
/// the copy on the screen when the group said yes). Later edits do not change the agreed
/// version; agreeing again replaces the record.
pub fn agree_minutes(
    tx: &mut impl Transactable,
    heads: &[ChangeHash],
    by: &MemberId,
    at_ms: i64,
) -> Result<(), MeetingError> {
    check(tx)?;
    if heads.is_empty() {
        return Err(MeetingError::NoHeads);
    }
    let missing = tx.get_missing_deps(heads);
    if !missing.is_empty() {
        return Err(MeetingError::UnknownHeads(missing.len()));
    }
    let agreed = tx.put_object(ROOT, AGREED, ObjType::Map)?;
    let list = tx.put_object(&agreed, "heads", ObjType::List)?;
    for (i, head) in heads.iter().enumerate() {
        tx.insert(&list, i, head.to_string())?;
    }
    tx.put(&agreed, "by", by.as_str())?;
    tx.put(&agreed, "atMs", at_ms)?;
    Ok(())
}

/// The agreement record, if the minutes have been agreed.
pub fn agreement(doc: &impl ReadDoc) -> Result<Option<Agreement>, MeetingError> {
    check(doc)?;
    let Some(agreed) = object(doc, &ROOT, AGREED, ObjType::Map)? else {
        return Ok(None);
    };
    let list = object(doc, &agreed, "heads", ObjType::List)?.ok_or_else(|| shape("heads"))?;
    let mut heads = Vec::new();
    for i in 0..doc.length(&list) {
        let hex = match doc.get(&list, i)? {
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Str(s) => s.to_string(),
                _ => return Err(shape("heads").into()),
            },
            Some((Value::Object(ObjType::Text), id)) => doc.text(&id)?,
            _ => return Err(shape("heads").into()),
        };
        heads.push(ChangeHash::from_str(&hex).map_err(|_| shape("heads"))?);
    }
    Ok(Some(Agreement {
        heads,
        by: MemberId::from(required_string(doc, &agreed, "by")?),
        at_ms: int(doc, &agreed, "atMs")?.unwrap_or(0),
    }))
}

/// The agreed minutes, read as of the agreed heads (so later edits do not change them);
/// `None` while the minutes are a draft. Fails with [`MinutesError::MissingChanges`] if this
/// device has the agreement but not yet every change it covers.
pub fn agreed_minutes_text(doc: &impl ReadDoc) -> Result<Option<RichText>, MeetingError> {
    let Some(agreement) = agreement(doc)? else {
        return Ok(None);
    };
    Ok(Some(minutes::read_minutes_at(doc, &agreement.heads)?))
}

/// Draft, agreed, or changed since agreed.
pub fn minutes_status(doc: &impl ReadDoc) -> Result<MinutesStatus, MeetingError> {
    let Some(agreed) = agreed_minutes_text(doc)? else {
        return Ok(MinutesStatus::Draft);
    };
    Ok(if agreed == minutes::read_minutes(doc)? {
        MinutesStatus::Agreed
    } else {
        MinutesStatus::ChangedSinceAgreed
    })
}

// ---------------------------------------------------------------------------------------
// Everything at once.

/// Reads the structured part of the meeting.
pub fn read_meeting(doc: &impl ReadDoc) -> Result<Meeting, MeetingError> {
    Ok(Meeting {
        kind: kind(doc)?,
        title: title(doc)?,
        schedule: schedule(doc)?,
        agenda: agenda_items(doc)?,
        attendance: attendance(doc)?,
        rsvp: rsvps(doc)?,
        facilitator: string(doc, &ROOT, FACILITATOR)?.map(MemberId::from),
        recorder: string(doc, &ROOT, RECORDER)?.map(MemberId::from),
        actions: actions(doc)?,
        agreement: agreement(doc)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::minutes::{read_minutes, BlockKind};
    use automerge::transaction::Transaction;

    fn member(name: &str) -> MemberId {
        MemberId::from(name)
    }

    fn series() -> DocumentId {
        DocumentId::from_bytes([7; 16])
    }

    fn june() -> Date {
        jiff::civil::date(2025, 6, 25)
    }

    fn edit<R>(doc: &mut Automerge, f: impl FnOnce(&mut Transaction<'_>) -> R) -> R {
        let mut tx = doc.transaction();
        let r = f(&mut tx);
        tx.commit();
        r
    }

    /// A phone that imported the occurrence skeleton (what `Engine::import_document` does).
    fn phone(actor: u8, skeleton: &[u8]) -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        doc.set_actor(ActorId::from([actor; 16]));
        doc.load_incremental(skeleton).unwrap();
        doc
    }

    fn one_off() -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        doc.set_actor(ActorId::from([1; 16]));
        edit(&mut doc, |tx| {
            init(tx, OneOffKind::PeerAssist, "Peer Assist: housing").unwrap()
        });
        doc
    }

    fn item(title: &str, who: &str, kind: AgendaKind) -> NewAgendaItem {
        NewAgendaItem {
            title: title.into(),
            raised_by: member(who),
            time_box_minutes: Some(15),
            kind,
            format: None,
            notes: String::new(),
        }
    }

    #[test]
    fn the_skeleton_is_identical_on_every_device() {
        let a = occurrence_skeleton(&series(), june());
        let b = occurrence_skeleton(&series(), june());
        assert_eq!(a, b);
        assert_ne!(
            a,
            occurrence_skeleton(&series(), jiff::civil::date(2025, 7, 23))
        );
        assert_ne!(
            a,
            occurrence_skeleton(&DocumentId::from_bytes([8; 16]), june())
        );
        let doc = phone(1, &a);
        assert_eq!(
            kind(&doc).unwrap(),
            MeetingKind::Occurrence {
                series: series(),
                original_date: june()
            }
        );
        assert_eq!(
            doc.get_heads(),
            phone(2, &b).get_heads(),
            "the same first change hash"
        );
        let minutes = read_minutes(&doc).unwrap().paragraphs();
        assert_eq!(minutes[0].kind, BlockKind::Heading(2));
        assert_eq!(minutes[0].text(), "Attendees");
    }

    #[test]
    fn the_skeleton_change_is_pinned() {
        // Golden: a different first change under the same actor and sequence number would
        // make phones running different app versions refuse each other's copies. If this
        // fails, the skeleton's layout changed: bump the actor prefix in `skeleton_actor`.
        let doc = phone(1, &occurrence_skeleton(&series(), june()));
        let heads: Vec<String> = doc.get_heads().iter().map(ToString::to_string).collect();
        assert_eq!(heads, vec![GOLDEN_SKELETON_HASH.to_owned()]);
    }

    const GOLDEN_SKELETON_HASH: &str =
        "7b3fe5eb0b0d2abec48e0943185ec5f2de044de1eba898461080e382f4308db8";

    #[test]
    fn the_engine_imports_the_skeleton_under_the_occurrence_id() {
        use cairn_sync::engine::{Engine, EngineConfig, Role};
        use cairn_sync::ids::PeerId;
        use cairn_sync::time::Timestamp;
        let id = DocumentId::from_bytes([9; 16]);
        let skeleton = occurrence_skeleton(&series(), june());
        let mut heads = Vec::new();
        for seed in [1, 2] {
            let mut engine =
                Engine::new(EngineConfig::new(Role::Client, PeerId::from("phone"), seed));
            heads.push(
                engine
                    .import_document(Timestamp::from_millis(0), id, &skeleton)
                    .unwrap(),
            );
            let doc = engine.document(&id).unwrap();
            assert_eq!(
                kind(doc).unwrap(),
                MeetingKind::Occurrence {
                    series: series(),
                    original_date: june()
                }
            );
            assert!(
                read_minutes(doc).is_ok(),
                "the engine's documents use UTF-16 indexes"
            );
        }
        assert_eq!(heads[0], heads[1]);
    }

    #[test]
    fn two_organisers_opening_the_same_occurrence_offline_end_with_one_meeting() {
        let skeleton = occurrence_skeleton(&series(), june());
        let mut ana = phone(2, &skeleton);
        let mut ben = phone(3, &skeleton);

        let a_item = edit(&mut ana, |tx| {
            set_schedule(
                tx,
                &Schedule {
                    start_ms: 1_750_870_800_000,
                    end_ms: 1_750_876_200_000,
                    zone: "Europe/London".into(),
                },
            )
            .unwrap();
            set_facilitator(tx, Some(&member("ana"))).unwrap();
            add_agenda_item(
                tx,
                &item(
                    "Supporting someone with thoughts of suicide",
                    "ana",
                    AgendaKind::Training,
                ),
                100,
            )
            .unwrap()
        });
        let b_item = edit(&mut ben, |tx| {
            set_recorder(tx, Some(&member("ben"))).unwrap();
            add_agenda_item(
                tx,
                &item("Renewing the circle", "ben", AgendaKind::Admin),
                100,
            )
            .unwrap()
        });
        // Each types minutes under "Attendees" (paragraph 1 of the skeleton's template).
        for (doc, words) in [(&mut ana, "Ana, Chi"), (&mut ben, "Ben, Dee")] {
            let at = read_minutes(doc).unwrap().paragraphs()[1].start;
            edit(doc, |tx| minutes::insert_text(tx, at, words).unwrap());
        }

        ana.merge(&mut ben).unwrap();
        ben.merge(&mut ana).unwrap();
        let meeting = read_meeting(&ana).unwrap();
        assert_eq!(meeting, read_meeting(&ben).unwrap());
        let ids: Vec<_> = meeting.agenda.iter().map(|i| i.id.clone()).collect();
        assert_eq!(ids.len(), 2, "one agenda holding both items");
        assert!(ids.contains(&a_item) && ids.contains(&b_item));
        assert_eq!(meeting.facilitator, Some(member("ana")));
        assert_eq!(meeting.recorder, Some(member("ben")));
        assert_eq!(meeting.schedule.unwrap().zone, "Europe/London");
        let minutes = read_minutes(&ana).unwrap();
        assert_eq!(minutes, read_minutes(&ben).unwrap());
        let attendees = minutes.paragraphs()[1].text();
        assert!(
            attendees.contains("Ana, Chi") && attendees.contains("Ben, Dee"),
            "{attendees}"
        );
        assert_eq!(minutes.paragraphs().len(), 10, "one copy of the template");
    }

    #[test]
    fn agenda_items_keep_their_fields_and_order() {
        let mut doc = one_off();
        let (first, second) = edit(&mut doc, |tx| {
            let first = add_agenda_item(
                tx,
                &item("Case: a member's housing", "ana", AgendaKind::Case),
                5,
            )
            .unwrap();
            let second = add_agenda_item(
                tx,
                &item("Case: a member's housing", "ana", AgendaKind::Case),
                5,
            )
            .unwrap();
            (first, second)
        });
        assert_ne!(first, second, "two additions in one change get two ids");
        edit(&mut doc, |tx| {
            move_agenda_item(tx, &second, Some(&first)).unwrap();
            set_time_box(tx, &first, None).unwrap();
            set_agenda_kind(tx, &first, AgendaKind::Training).unwrap();
            splice_text(tx, TextField::AgendaTitle(first.clone()), 0, 4, "Topic").unwrap();
        });
        let items = agenda_items(&doc).unwrap();
        assert_eq!(items[0].id, second);
        assert_eq!(items[1].title, "Topic: a member's housing");
        assert_eq!(items[1].time_box_minutes, None);
        assert_eq!(items[1].kind, AgendaKind::Training);
        assert_eq!(items[0].time_box_minutes, Some(15));
        assert_eq!(items[0].raised_by, member("ana"));
        edit(&mut doc, |tx| remove_agenda_item(tx, &second).unwrap());
        assert_eq!(agenda_items(&doc).unwrap().len(), 1);
        assert!(matches!(
            edit(&mut doc, |tx| set_time_box(tx, &second, Some(3))),
            Err(MeetingError::NoSuchAgendaItem(_))
        ));
        assert_eq!(title(&doc).unwrap(), "Peer Assist: housing");
        assert_eq!(
            kind(&doc).unwrap(),
            MeetingKind::OneOff(OneOffKind::PeerAssist)
        );
    }

    #[test]
    fn attendance_and_rsvp_are_per_member() {
        let mut doc = one_off();
        let mut other = doc.fork().with_actor(ActorId::from([9; 16]));
        edit(&mut doc, |tx| {
            set_rsvp(tx, &member("ana"), Some(Rsvp::Yes)).unwrap();
            set_attendance(tx, &member("ana"), Some(Attendance::Present)).unwrap();
        });
        edit(&mut other, |tx| {
            set_rsvp(tx, &member("ben"), Some(Rsvp::No)).unwrap();
            set_attendance(tx, &member("ben"), Some(Attendance::Apologies)).unwrap();
        });
        doc.merge(&mut other).unwrap();
        let meeting = read_meeting(&doc).unwrap();
        assert_eq!(meeting.rsvp[&member("ana")], Rsvp::Yes);
        assert_eq!(meeting.rsvp[&member("ben")], Rsvp::No);
        assert_eq!(meeting.attendance[&member("ben")], Attendance::Apologies);
        edit(&mut doc, |tx| set_rsvp(tx, &member("ana"), None).unwrap());
        assert!(!rsvps(&doc).unwrap().contains_key(&member("ana")));
    }

    #[test]
    fn open_actions_are_carried_once_even_from_two_devices() {
        let prev_id = DocumentId::from_bytes([5; 16]);
        let mut prev = one_off();
        let due = jiff::civil::date(2025, 7, 1);
        let (open, done) = edit(&mut prev, |tx| {
            let open = add_action(
                tx,
                "Share the wellness strategies reading",
                &member("chi"),
                Some(due),
                10,
            )
            .unwrap();
            let done = add_action(tx, "Book the room", &member("ana"), None, 10).unwrap();
            set_action_status(tx, &done, ActionStatus::Done).unwrap();
            (open, done)
        });
        let skeleton = occurrence_skeleton(&series(), june());
        let mut ana = phone(2, &skeleton);
        let mut ben = phone(3, &skeleton);
        // Both organisers carry the actions offline; Ana even runs it twice.
        let carried = edit(&mut ana, |tx| {
            carry_open_actions(&prev, &prev_id, tx).unwrap()
        });
        assert_eq!(carried.len(), 1);
        assert!(edit(&mut ana, |tx| carry_open_actions(&prev, &prev_id, tx)
            .unwrap())
        .is_empty());
        edit(&mut ben, |tx| {
            carry_open_actions(&prev, &prev_id, tx).unwrap()
        });
        ana.merge(&mut ben).unwrap();

        let next = actions(&ana).unwrap();
        assert_eq!(next.len(), 1, "carried once");
        let action = &next[0];
        assert_eq!(action.text, "Share the wellness strategies reading");
        assert_eq!(action.owner, member("chi"));
        assert_eq!(action.due, Some(due));
        assert_eq!(action.status, ActionStatus::Open);
        assert_eq!(action.carried_from, Some(prev_id));
        assert_eq!(action.carried_from_action, Some(open));
        assert_ne!(action.carried_from_action, Some(done));

        // Marked done in the new meeting, it stays done when carried again.
        let id = action.id.clone();
        edit(&mut ana, |tx| {
            set_action_status(tx, &id, ActionStatus::Done).unwrap()
        });
        edit(&mut ana, |tx| {
            carry_open_actions(&prev, &prev_id, tx).unwrap()
        });
        assert_eq!(actions(&ana).unwrap()[0].status, ActionStatus::Done);
        // New actions in the next meeting come after the carried ones.
        edit(&mut ana, |tx| {
            add_action(tx, "Draft the renewal", &member("ben"), None, 20).unwrap()
        });
        assert_eq!(actions(&ana).unwrap()[1].text, "Draft the renewal");
    }

    #[test]
    fn agreed_minutes_stay_as_agreed_while_the_draft_changes() {
        let mut doc = one_off();
        let at = read_minutes(&doc).unwrap().paragraphs()[5].start;
        edit(&mut doc, |tx| {
            minutes::insert_text(tx, at, "Meet monthly").unwrap()
        });
        assert_eq!(minutes_status(&doc).unwrap(), MinutesStatus::Draft);
        let seen = doc.get_heads();
        edit(&mut doc, |tx| {
            agree_minutes(tx, &seen, &member("ana"), 1_000).unwrap()
        });
        assert_eq!(minutes_status(&doc).unwrap(), MinutesStatus::Agreed);

        // Someone corrects the draft afterwards, on another phone.
        let mut other = doc.fork().with_actor(ActorId::from([4; 16]));
        edit(&mut other, |tx| {
            minutes::insert_text(tx, at + "Meet monthly".len(), " online").unwrap()
        });
        doc.merge(&mut other).unwrap();
        assert_eq!(
            minutes_status(&doc).unwrap(),
            MinutesStatus::ChangedSinceAgreed
        );
        let agreed = agreed_minutes_text(&doc).unwrap().unwrap();
        assert_eq!(agreed.paragraphs()[5].text(), "Meet monthly");
        assert_eq!(
            read_minutes(&doc).unwrap().paragraphs()[5].text(),
            "Meet monthly online"
        );
        let record = agreement(&doc).unwrap().unwrap();
        assert_eq!(
            record,
            Agreement {
                heads: seen,
                by: member("ana"),
                at_ms: 1_000
            }
        );

        let stranger = [ChangeHash([3; 32])];
        assert!(matches!(
            edit(&mut doc, |tx| agree_minutes(
                tx,
                &stranger,
                &member("ana"),
                2
            )),
            Err(MeetingError::UnknownHeads(1))
        ));
    }

    #[test]
    fn invalid_input_is_refused() {
        let mut doc = one_off();
        let bad_zone = Schedule {
            start_ms: 0,
            end_ms: 1,
            zone: "Mars/Olympus".into(),
        };
        assert!(matches!(
            edit(&mut doc, |tx| set_schedule(tx, &bad_zone)),
            Err(MeetingError::UnknownZone)
        ));
        let backwards = Schedule {
            start_ms: 10,
            end_ms: 1,
            zone: "UTC".into(),
        };
        assert!(matches!(
            edit(&mut doc, |tx| set_schedule(tx, &backwards)),
            Err(MeetingError::EndBeforeStart)
        ));
        assert!(matches!(
            edit(&mut doc, |tx| add_action(tx, "  ", &member("a"), None, 0)),
            Err(MeetingError::EmptyText)
        ));
        assert!(matches!(
            edit(&mut doc, |tx| splice_text(tx, TextField::Title, 99, 0, "x")),
            Err(MeetingError::OutOfRange { .. })
        ));
        let mut thread = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        edit(&mut thread, |tx| {
            schema::stamp(tx, DocKind::Thread).unwrap()
        });
        assert!(matches!(
            read_meeting(&thread),
            Err(MeetingError::Schema(SchemaError::WrongKind { .. }))
        ));
    }
}
