//! [`Meeting`]: one meeting's title, schedule, agenda, attendance, RSVPs, rotating roles
//! and action items, as owned records; and the [`Group`] methods that create and open
//! meetings.
//!
//! Every method reads or changes the meeting document through [`Cairn`]; the records are
//! copies (ids as strings, instants as ms, dates as `YYYY-MM-DD`). Item ids returned by
//! `add_*` are what the later edits take. The minutes on the same document are
//! [`Minutes`] ([`Meeting::minutes`]).

use std::sync::Arc;

use automerge::Automerge;
use cairn_sync::ids::{DocumentId, MemberId};
use cairn_sync::membership::{BoundKind, GroupId};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::app::handles::document_id;
use crate::app::{Cairn, CairnError, Group, Listener, Meeting, Minutes, Series, Subscription};
use crate::model::index::{self, IndexError, IndexKind};
use crate::model::meeting::{self as model, ItemId, MeetingError, TextField};
use crate::model::minutes::MinutesError;

// ---------------------------------------------------------------------------------------
// Records.

/// What a meeting is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MeetingKind {
    /// One occurrence of a recurring series ([`MeetingRecord::series_id`] says which).
    Occurrence,
    /// A Peer Assist: a team learns from peers before a piece of work.
    PeerAssist,
    /// A training session.
    Training,
    /// Any other one-off meeting.
    Other,
}

/// What an agenda item is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AgendaKind {
    /// Case collaboration (de-identified).
    Case,
    /// Training or learning.
    Training,
    /// Running the group.
    Admin,
}

/// A member's attendance at a meeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attendance {
    /// Was there.
    Present,
    /// Sent apologies.
    Apologies,
    /// Absent without apologies.
    Absent,
}

/// A member's answer to the invitation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rsvp {
    /// Coming.
    Yes,
    /// Not coming.
    No,
    /// Not sure yet.
    Maybe,
}

/// Where an action item stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActionStatus {
    /// Still to do; carried into the next meeting's review.
    Open,
    /// Done.
    Done,
    /// No longer wanted.
    Dropped,
}

/// Where a meeting's minutes stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MinutesStatus {
    /// Not agreed yet.
    Draft,
    /// Agreed, and unchanged since.
    Agreed,
    /// Agreed, then edited: the agreed version is still the one at the agreed heads.
    ChangedSinceAgreed,
}

/// A weekday.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Weekday {
    /// Monday.
    Monday,
    /// Tuesday.
    Tuesday,
    /// Wednesday.
    Wednesday,
    /// Thursday.
    Thursday,
    /// Friday.
    Friday,
    /// Saturday.
    Saturday,
    /// Sunday.
    Sunday,
}

/// An instant as a clock on the wall shows it in one zone, for display.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LocalTime {
    /// The date there, `YYYY-MM-DD`.
    pub date: String,
    /// The time there, `HH:MM` (24-hour).
    pub time: String,
    /// Its weekday.
    pub weekday: Weekday,
    /// The IANA zone it is shown in.
    pub zone: String,
    /// The zone's offset from UTC at that instant, in minutes (east positive).
    pub utc_offset_minutes: i32,
}

/// When a meeting takes place.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScheduleRecord {
    /// Start, ms since the Unix epoch.
    pub start_ms: i64,
    /// End, ms since the Unix epoch.
    pub end_ms: i64,
    /// The IANA zone the meeting is planned in.
    pub zone: String,
    /// The start in the device's zone now ([`Cairn::set_time_zone`]).
    pub local_start: LocalTime,
    /// The end in the device's zone now.
    pub local_end: LocalTime,
}

/// One agenda item.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgendaItemRecord {
    /// Its id inside the meeting (what the agenda methods take).
    pub id: String,
    /// Its title.
    pub title: String,
    /// The member who raised it.
    pub raised_by: String,
    /// Minutes set aside for it.
    pub time_box_minutes: Option<u32>,
    /// What it is about.
    pub kind: AgendaKind,
    /// The id of the meeting format (template) it came from, e.g. `troika-consulting`.
    pub template: Option<String>,
    /// The step of that template.
    pub template_step: Option<u32>,
    /// Notes (e.g. a de-identified case).
    pub notes: String,
    /// When it was added (ms since the Unix epoch).
    pub created_ms: i64,
}

/// What to add to the agenda.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NewAgendaItem {
    /// Title (not empty).
    pub title: String,
    /// Who raises it; `None`: this device's member.
    pub raised_by: Option<String>,
    /// Minutes set aside for it.
    pub time_box_minutes: Option<u32>,
    /// What it is about.
    pub kind: AgendaKind,
    /// Initial notes.
    pub notes: String,
}

/// One member's attendance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AttendanceRecord {
    /// The member.
    pub member_id: String,
    /// Present, apologies or absent.
    pub attendance: Attendance,
}

/// One member's RSVP.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RsvpRecord {
    /// The member.
    pub member_id: String,
    /// Their answer.
    pub rsvp: Rsvp,
}

/// One action item.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActionRecord {
    /// Its id inside the meeting (what the action methods take).
    pub id: String,
    /// What is to be done.
    pub text: String,
    /// The member who does it.
    pub owner: String,
    /// By when, `YYYY-MM-DD`.
    pub due: Option<String>,
    /// Where it stands.
    pub status: ActionStatus,
    /// The meeting it was carried from (its document id).
    pub carried_from_meeting_id: Option<String>,
    /// Its id in that meeting.
    pub carried_from_action_id: Option<String>,
    /// When it was first written (ms since the Unix epoch).
    pub created_ms: i64,
}

/// The record that the group agreed the minutes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgreementRecord {
    /// The document heads the group agreed (lowercase hex).
    pub heads: Vec<String>,
    /// The member who recorded the agreement.
    pub by: String,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
}

/// A meeting as read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MeetingRecord {
    /// The meeting's document id.
    pub id: String,
    /// Its group.
    pub group_id: String,
    /// Occurrence or one-off kind.
    pub kind: MeetingKind,
    /// For an occurrence: its series' document id.
    pub series_id: Option<String>,
    /// For an occurrence: the date the rule gave it, `YYYY-MM-DD` (kept when moved).
    pub original_date: Option<String>,
    /// Title (empty for an occurrence unless renamed: show the series' title).
    pub title: String,
    /// When, once set.
    pub schedule: Option<ScheduleRecord>,
    /// The agenda in order.
    pub agenda: Vec<AgendaItemRecord>,
    /// Attendance, by member id.
    pub attendance: Vec<AttendanceRecord>,
    /// RSVPs, by member id.
    pub rsvps: Vec<RsvpRecord>,
    /// This meeting's facilitator.
    pub facilitator: Option<String>,
    /// This meeting's recorder (note-taker).
    pub recorder: Option<String>,
    /// Action items in order (carried ones first).
    pub actions: Vec<ActionRecord>,
    /// Draft, agreed, or changed since agreed.
    pub minutes_status: MinutesStatus,
    /// The agreement, once the minutes are agreed.
    pub agreement: Option<AgreementRecord>,
    /// The document's heads this record was read at (lowercase hex).
    pub heads: Vec<String>,
}

/// A co-edited text field of a meeting, for [`Meeting::splice_text`] and [`Meeting::set_text`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MeetingTextField {
    /// The meeting's title.
    Title,
    /// An agenda item's title.
    AgendaTitle {
        /// The item.
        item_id: String,
    },
    /// An agenda item's notes.
    AgendaNotes {
        /// The item.
        item_id: String,
    },
    /// An action item's text.
    ActionText {
        /// The action.
        action_id: String,
    },
}

// ---------------------------------------------------------------------------------------
// Conversions.

macro_rules! same_enum {
    ($app:ident <=> $model:path { $($v:ident),+ }) => {
        impl From<$model> for $app {
            fn from(v: $model) -> Self {
                use $model as M;
                match v { $(M::$v => $app::$v),+ }
            }
        }
        impl From<$app> for $model {
            fn from(v: $app) -> Self {
                use $model as M;
                match v { $($app::$v => M::$v),+ }
            }
        }
    };
}

same_enum!(AgendaKind <=> model::AgendaKind { Case, Training, Admin });
same_enum!(Attendance <=> model::Attendance { Present, Apologies, Absent });
same_enum!(Rsvp <=> model::Rsvp { Yes, No, Maybe });
same_enum!(ActionStatus <=> model::ActionStatus { Open, Done, Dropped });
same_enum!(MinutesStatus <=> model::MinutesStatus { Draft, Agreed, ChangedSinceAgreed });
same_enum!(Weekday <=> jiff::civil::Weekday { Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday });

impl From<MeetingError> for CairnError {
    fn from(e: MeetingError) -> Self {
        match e {
            MeetingError::Schema(e) => e.into(),
            MeetingError::Automerge(e) => e.into(),
            MeetingError::Minutes(e) => e.into(),
            MeetingError::NoSuchAgendaItem(id) => {
                CairnError::not_found(format!("agenda item {id}"))
            }
            MeetingError::NoSuchAction(id) => CairnError::not_found(format!("action item {id}")),
            e @ (MeetingError::UnknownZone
            | MeetingError::EndBeforeStart
            | MeetingError::EmptyText
            | MeetingError::NoHeads
            | MeetingError::UnknownHeads(_)
            | MeetingError::OutOfRange { .. }) => CairnError::invalid(e.to_string()),
        }
    }
}

impl From<MinutesError> for CairnError {
    fn from(e: MinutesError) -> Self {
        match e {
            MinutesError::Schema(e) => e.into(),
            MinutesError::Automerge(e) => e.into(),
            // Not synced yet: the app cannot show it (like a document not here yet).
            e @ (MinutesError::MissingChanges(_) | MinutesError::NoMinutes) => {
                CairnError::not_found(e.to_string())
            }
            e @ MinutesError::Utf16Required => CairnError::generic(e),
            e @ (MinutesError::OutOfRange { .. }
            | MinutesError::NoParagraph { .. }
            | MinutesError::HeadingLevel(_)
            | MinutesError::EmptyLink) => CairnError::invalid(e.to_string()),
        }
    }
}

/// Index errors fold in here without a `From` impl: the group module may need its own.
pub(crate) fn index_error(e: IndexError) -> CairnError {
    match e {
        IndexError::Schema(e) => e.into(),
        IndexError::Automerge(e) => e.into(),
        IndexError::InvalidUrl => CairnError::invalid(e.to_string()),
        IndexError::NotIndexed => CairnError::not_found(e.to_string()),
    }
}

/// Parses a calendar date `YYYY-MM-DD`.
pub(crate) fn parse_date(text: &str) -> Result<Date, CairnError> {
    text.trim()
        .parse()
        .map_err(|_| CairnError::invalid("a date must be written YYYY-MM-DD"))
}

/// A member id as the app gives it.
pub(crate) fn member_id(text: &str) -> Result<MemberId, CairnError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CairnError::invalid("a member id cannot be empty"));
    }
    Ok(MemberId::from(text))
}

/// The IANA name of a zone (`UTC` for a zone without one).
pub(crate) fn zone_name(zone: &TimeZone) -> String {
    zone.iana_name().unwrap_or("UTC").to_owned()
}

/// `ms` as the wall clock shows it in `zone`.
pub(crate) fn local_time(ms: i64, zone: &TimeZone) -> LocalTime {
    let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    let zoned = ts.to_zoned(zone.clone());
    LocalTime {
        date: zoned.date().to_string(),
        time: format!("{:02}:{:02}", zoned.hour(), zoned.minute()),
        weekday: zoned.weekday().into(),
        zone: zone_name(zone),
        utc_offset_minutes: zoned.offset().seconds() / 60,
    }
}

/// The heads of `doc` as lowercase hex.
pub(crate) fn heads_hex(doc: &Automerge) -> Vec<String> {
    doc.get_heads().iter().map(ToString::to_string).collect()
}

fn agreement_record(a: model::Agreement) -> AgreementRecord {
    AgreementRecord {
        heads: a.heads.iter().map(ToString::to_string).collect(),
        by: a.by.to_string(),
        at_ms: a.at_ms,
    }
}

/// Reads the whole meeting record, times shown in `device_zone`.
pub(crate) fn meeting_record(
    doc: &Automerge,
    id: &DocumentId,
    group: &GroupId,
    device_zone: &TimeZone,
) -> Result<MeetingRecord, CairnError> {
    let m = model::read_meeting(doc)?;
    let (kind, series_id, original_date) = match m.kind {
        model::MeetingKind::Occurrence {
            series,
            original_date,
        } => (
            MeetingKind::Occurrence,
            Some(series.to_string()),
            Some(original_date.to_string()),
        ),
        model::MeetingKind::OneOff(k) => (one_off_kind(k), None, None),
    };
    Ok(MeetingRecord {
        id: id.to_string(),
        group_id: group.to_string(),
        kind,
        series_id,
        original_date,
        title: m.title,
        schedule: m.schedule.map(|s| ScheduleRecord {
            local_start: local_time(s.start_ms, device_zone),
            local_end: local_time(s.end_ms, device_zone),
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            zone: s.zone,
        }),
        agenda: m
            .agenda
            .into_iter()
            .map(|i| AgendaItemRecord {
                id: i.id.to_string(),
                title: i.title,
                raised_by: i.raised_by.to_string(),
                time_box_minutes: i.time_box_minutes,
                kind: i.kind.into(),
                template: i.format.as_ref().map(|f| f.template.clone()),
                template_step: i.format.map(|f| f.step),
                notes: i.notes,
                created_ms: i.created_ms,
            })
            .collect(),
        attendance: m
            .attendance
            .into_iter()
            .map(|(member, a)| AttendanceRecord {
                member_id: member.to_string(),
                attendance: a.into(),
            })
            .collect(),
        rsvps: m
            .rsvp
            .into_iter()
            .map(|(member, r)| RsvpRecord {
                member_id: member.to_string(),
                rsvp: r.into(),
            })
            .collect(),
        facilitator: m.facilitator.map(|f| f.to_string()),
        recorder: m.recorder.map(|r| r.to_string()),
        actions: m
            .actions
            .into_iter()
            .map(|a| ActionRecord {
                id: a.id.to_string(),
                text: a.text,
                owner: a.owner.to_string(),
                due: a.due.map(|d| d.to_string()),
                status: a.status.into(),
                carried_from_meeting_id: a.carried_from.map(|d| d.to_string()),
                carried_from_action_id: a.carried_from_action.map(|i| i.to_string()),
                created_ms: a.created_ms,
            })
            .collect(),
        minutes_status: model::minutes_status(doc)?.into(),
        agreement: m.agreement.map(agreement_record),
        heads: heads_hex(doc),
    })
}

fn one_off_kind(k: model::OneOffKind) -> MeetingKind {
    match k {
        model::OneOffKind::PeerAssist => MeetingKind::PeerAssist,
        model::OneOffKind::Training => MeetingKind::Training,
        model::OneOffKind::Other => MeetingKind::Other,
    }
}

fn text_field(field: MeetingTextField) -> TextField {
    match field {
        MeetingTextField::Title => TextField::Title,
        MeetingTextField::AgendaTitle { item_id } => {
            TextField::AgendaTitle(ItemId::from(item_id.as_str()))
        }
        MeetingTextField::AgendaNotes { item_id } => {
            TextField::AgendaNotes(ItemId::from(item_id.as_str()))
        }
        MeetingTextField::ActionText { action_id } => {
            TextField::ActionText(ItemId::from(action_id.as_str()))
        }
    }
}

/// The group's index document (where new meetings and series are listed), as the relay
/// last said.
pub(crate) async fn group_index(cairn: &Cairn, group: &GroupId) -> Result<DocumentId, CairnError> {
    cairn
        .group_info(group)
        .await?
        .documents
        .index
        .ok_or_else(|| CairnError::not_found(format!("the index of group {group}")))
}

/// Lists `doc` in the group's index document.
pub(crate) async fn list_in_index(
    cairn: &Cairn,
    index_doc: DocumentId,
    doc: DocumentId,
    kind: IndexKind,
    title: String,
) -> Result<(), CairnError> {
    let now = cairn.now_ms();
    cairn
        .change_doc(index_doc, move |tx| {
            index::index_document(tx, &doc.url(), kind, &title, now).map_err(index_error)?;
            Ok(())
        })
        .await
}

/// Renames `doc`'s entry in the group's index, if the index is known and lists it: a
/// stale list title is not worth failing a rename the member made.
pub(crate) async fn retitle_in_index(
    cairn: &Cairn,
    group: &GroupId,
    doc: DocumentId,
    title: String,
) {
    let Ok(index_doc) = group_index(cairn, group).await else {
        return;
    };
    let result = cairn
        .change_doc(index_doc, move |tx| {
            index::set_document_title(tx, &doc.url(), &title).map_err(index_error)
        })
        .await;
    if let Err(e) = result {
        tracing::debug!(doc = %doc, error = %e, "index title not updated");
    }
}

// ---------------------------------------------------------------------------------------
// Group: creating and opening meetings.

impl Group {
    /// Creates a one-off meeting (a Peer Assist, a training session…) with the standard
    /// minutes template, and lists it in the group's index. `kind` cannot be
    /// [`MeetingKind::Occurrence`]: occurrences are opened from their series
    /// ([`Series::occurrence_meeting`]). Fails with [`CairnError::NotFound`] before
    /// creating anything if the group's index is not known yet (the relay has not been
    /// reached since joining).
    pub async fn create_meeting(
        &self,
        title: String,
        kind: MeetingKind,
    ) -> Result<Meeting, CairnError> {
        let index_doc = group_index(&self.cairn, &self.group).await?;
        create_meeting_in(&self.cairn, &self.group, index_doc, title, kind).await
    }

    /// The meeting with this document id (not loaded until used).
    pub fn meeting(&self, meeting_id: &str) -> Result<Meeting, CairnError> {
        Ok(Meeting::new(
            self.cairn.clone(),
            self.group.clone(),
            document_id(meeting_id)?,
        ))
    }

    /// The minutes of the meeting with this document id.
    pub fn minutes(&self, meeting_id: &str) -> Result<Minutes, CairnError> {
        Ok(Minutes::new(
            self.cairn.clone(),
            self.group.clone(),
            document_id(meeting_id)?,
        ))
    }
}

/// Creates a one-off meeting of `group` and lists it in `index_doc`.
pub(crate) async fn create_meeting_in(
    cairn: &Cairn,
    group: &GroupId,
    index_doc: DocumentId,
    title: String,
    kind: MeetingKind,
) -> Result<Meeting, CairnError> {
    let kind = match kind {
        MeetingKind::Occurrence => {
            return Err(CairnError::invalid(
                "an occurrence is opened from its series, not created",
            ))
        }
        MeetingKind::PeerAssist => model::OneOffKind::PeerAssist,
        MeetingKind::Training => model::OneOffKind::Training,
        MeetingKind::Other => model::OneOffKind::Other,
    };
    if title.trim().is_empty() {
        return Err(CairnError::invalid("a meeting needs a title"));
    }
    let init_title = title.clone();
    let (doc, ()) = cairn
        .create_doc(group, BoundKind::Meeting, move |tx| {
            Ok(model::init(tx, kind, &init_title)?)
        })
        .await?;
    list_in_index(cairn, index_doc, doc, IndexKind::Meeting, title).await?;
    Ok(Meeting::new(cairn.clone(), group.clone(), doc))
}

// ---------------------------------------------------------------------------------------
// Meeting.

impl Meeting {
    /// Applies `f` to the meeting document; its error means nothing was changed.
    async fn change<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<R, MeetingError>
            + Send
            + 'static,
    ) -> Result<R, CairnError> {
        self.cairn
            .change_doc(self.doc, move |tx| f(tx).map_err(CairnError::from))
            .await
    }

    /// The meeting as it is on this device now.
    pub async fn read(&self) -> Result<MeetingRecord, CairnError> {
        let (id, group, zone) = (self.doc, self.group.clone(), self.cairn.zone());
        self.cairn
            .read_doc(self.doc, move |doc| meeting_record(doc, &id, &group, &zone))
            .await
    }

    /// The meeting now, then after every change to it (from this device or synced), until
    /// the subscription is cancelled or dropped. Times are shown in the device's zone at
    /// the time of each delivery.
    pub fn subscribe(&self, listener: Arc<dyn Listener<MeetingRecord>>) -> Subscription {
        let (id, group, cairn) = (self.doc, self.group.clone(), self.cairn.clone());
        self.cairn.subscribe_doc(
            self.doc,
            move |doc| meeting_record(doc, &id, &group, &cairn.zone()),
            listener,
        )
    }

    /// The minutes of this meeting.
    pub fn minutes(&self) -> Minutes {
        Minutes::new(self.cairn.clone(), self.group.clone(), self.doc)
    }

    /// The series this meeting is an occurrence of (`None` for a one-off).
    pub async fn series(&self) -> Result<Option<Series>, CairnError> {
        let kind = self
            .cairn
            .read_doc(self.doc, |doc| Ok(model::kind(doc)?))
            .await?;
        Ok(match kind {
            model::MeetingKind::Occurrence { series, .. } => {
                Some(Series::new(self.cairn.clone(), self.group.clone(), series))
            }
            model::MeetingKind::OneOff(_) => None,
        })
    }

    /// Renames the meeting (and its entry in the group's index, when known).
    pub async fn set_title(&self, title: String) -> Result<(), CairnError> {
        self.set_text(MeetingTextField::Title, title.clone())
            .await?;
        retitle_in_index(&self.cairn, &self.group, self.doc, title).await;
        Ok(())
    }

    /// Replaces a text field's whole value, writing only the difference (for forms).
    pub async fn set_text(&self, field: MeetingTextField, text: String) -> Result<(), CairnError> {
        let field = text_field(field);
        self.change(move |tx| model::set_text(tx, field, &text))
            .await
    }

    /// Edits a text field as the user typed: at `index` (UTF-16 units) deletes `delete`
    /// units and inserts `insert`. This merges best with concurrent edits.
    pub async fn splice_text(
        &self,
        field: MeetingTextField,
        index: u32,
        delete: u32,
        insert: String,
    ) -> Result<(), CairnError> {
        let field = text_field(field);
        self.change(move |tx| {
            model::splice_text(tx, field, index as usize, delete as usize, &insert)
        })
        .await
    }

    /// Sets when the meeting takes place (`zone`: the IANA zone it is planned in).
    pub async fn set_schedule(
        &self,
        start_ms: i64,
        end_ms: i64,
        zone: String,
    ) -> Result<(), CairnError> {
        let schedule = model::Schedule {
            start_ms,
            end_ms,
            zone,
        };
        self.change(move |tx| model::set_schedule(tx, &schedule))
            .await
    }

    /// Adds an item at the end of the agenda; returns its id.
    pub async fn add_agenda_item(&self, item: NewAgendaItem) -> Result<String, CairnError> {
        let raised_by = match &item.raised_by {
            Some(m) => member_id(m)?,
            None => self.cairn.member_id(&self.group)?,
        };
        let now = self.cairn.now_ms();
        let item = model::NewAgendaItem {
            title: item.title,
            raised_by,
            time_box_minutes: item.time_box_minutes,
            kind: item.kind.into(),
            format: None,
            notes: item.notes,
        };
        let id = self
            .change(move |tx| model::add_agenda_item(tx, &item, now))
            .await?;
        Ok(id.to_string())
    }

    /// Changes an agenda item's title.
    pub async fn set_agenda_title(&self, item_id: String, title: String) -> Result<(), CairnError> {
        self.set_text(MeetingTextField::AgendaTitle { item_id }, title)
            .await
    }

    /// Changes an agenda item's notes.
    pub async fn set_agenda_notes(&self, item_id: String, notes: String) -> Result<(), CairnError> {
        self.set_text(MeetingTextField::AgendaNotes { item_id }, notes)
            .await
    }

    /// Changes an agenda item's time box (`None`: none).
    pub async fn set_time_box(
        &self,
        item_id: String,
        minutes: Option<u32>,
    ) -> Result<(), CairnError> {
        self.change(move |tx| model::set_time_box(tx, &ItemId::from(item_id.as_str()), minutes))
            .await
    }

    /// Changes what an agenda item is about.
    pub async fn set_agenda_kind(
        &self,
        item_id: String,
        kind: AgendaKind,
    ) -> Result<(), CairnError> {
        self.change(move |tx| {
            model::set_agenda_kind(tx, &ItemId::from(item_id.as_str()), kind.into())
        })
        .await
    }

    /// Moves an agenda item before `before_id`, or to the end with `None`.
    pub async fn move_agenda_item(
        &self,
        item_id: String,
        before_id: Option<String>,
    ) -> Result<(), CairnError> {
        self.change(move |tx| {
            let before = before_id.as_deref().map(ItemId::from);
            model::move_agenda_item(tx, &ItemId::from(item_id.as_str()), before.as_ref())
        })
        .await
    }

    /// Removes an agenda item.
    pub async fn remove_agenda_item(&self, item_id: String) -> Result<(), CairnError> {
        self.change(move |tx| model::remove_agenda_item(tx, &ItemId::from(item_id.as_str())))
            .await
    }

    /// Records a member's attendance (`None` clears it).
    pub async fn set_attendance(
        &self,
        member: String,
        attendance: Option<Attendance>,
    ) -> Result<(), CairnError> {
        let member = member_id(&member)?;
        self.change(move |tx| model::set_attendance(tx, &member, attendance.map(Into::into)))
            .await
    }

    /// Records this device's member's answer to the invitation (`None` clears it).
    pub async fn set_rsvp(&self, rsvp: Option<Rsvp>) -> Result<(), CairnError> {
        let me = self.cairn.member_id(&self.group)?;
        self.set_rsvp_of(me, rsvp).await
    }

    pub(crate) async fn set_rsvp_of(
        &self,
        member: MemberId,
        rsvp: Option<Rsvp>,
    ) -> Result<(), CairnError> {
        self.change(move |tx| model::set_rsvp(tx, &member, rsvp.map(Into::into)))
            .await
    }

    /// Chooses this meeting's facilitator (`None` clears).
    pub async fn set_facilitator(&self, member: Option<String>) -> Result<(), CairnError> {
        let member = member.as_deref().map(member_id).transpose()?;
        self.change(move |tx| model::set_facilitator(tx, member.as_ref()))
            .await
    }

    /// Chooses this meeting's recorder, who takes the minutes (`None` clears).
    pub async fn set_recorder(&self, member: Option<String>) -> Result<(), CairnError> {
        let member = member.as_deref().map(member_id).transpose()?;
        self.change(move |tx| model::set_recorder(tx, member.as_ref()))
            .await
    }

    /// Adds an open action item for `owner`, due by `due` (`YYYY-MM-DD`); returns its id.
    pub async fn add_action(
        &self,
        text: String,
        owner: String,
        due: Option<String>,
    ) -> Result<String, CairnError> {
        let owner = member_id(&owner)?;
        let due = due.as_deref().map(parse_date).transpose()?;
        let now = self.cairn.now_ms();
        let id = self
            .change(move |tx| model::add_action(tx, &text, &owner, due, now))
            .await?;
        Ok(id.to_string())
    }

    /// Changes what an action says.
    pub async fn set_action_text(&self, action_id: String, text: String) -> Result<(), CairnError> {
        self.set_text(MeetingTextField::ActionText { action_id }, text)
            .await
    }

    /// Sets an action's status.
    pub async fn set_action_status(
        &self,
        action_id: String,
        status: ActionStatus,
    ) -> Result<(), CairnError> {
        self.change(move |tx| {
            model::set_action_status(tx, &ItemId::from(action_id.as_str()), status.into())
        })
        .await
    }

    /// Hands an action to another member.
    pub async fn set_action_owner(
        &self,
        action_id: String,
        owner: String,
    ) -> Result<(), CairnError> {
        let owner = member_id(&owner)?;
        self.change(move |tx| {
            model::set_action_owner(tx, &ItemId::from(action_id.as_str()), &owner)
        })
        .await
    }

    /// Sets (`YYYY-MM-DD`) or clears an action's due date.
    pub async fn set_action_due(
        &self,
        action_id: String,
        due: Option<String>,
    ) -> Result<(), CairnError> {
        let due = due.as_deref().map(parse_date).transpose()?;
        self.change(move |tx| model::set_action_due(tx, &ItemId::from(action_id.as_str()), due))
            .await
    }

    /// Copies the open actions of an earlier meeting into this one for its review, each
    /// marked with where it came from. Idempotent (also across devices): an action carried
    /// before is left as it is, even if since marked done. Returns the ids of the actions
    /// carried now.
    pub async fn carry_open_actions(
        &self,
        from_meeting_id: String,
    ) -> Result<Vec<String>, CairnError> {
        let prev = document_id(&from_meeting_id)?;
        if prev == self.doc {
            return Err(CairnError::invalid(
                "a meeting cannot carry its own actions",
            ));
        }
        // A copy of the earlier meeting: small, and the change closure needs it whole.
        let prev_doc = self.cairn.read_doc(prev, |doc| Ok(doc.clone())).await?;
        let carried = self
            .change(move |tx| model::carry_open_actions(&prev_doc, &prev, tx))
            .await?;
        Ok(carried.iter().map(ToString::to_string).collect())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A `Cairn` on a temporary directory with no relay, and documents created on it.

    use std::future::Future;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// The member id of [`Device::start_enrolled`].
    pub(crate) const MEMBER: &str = "aaaaaaaaaaaaaaaa";

    /// How long a test waits for a subscription delivery before failing: 10 s.
    pub(crate) const WAIT: Duration = Duration::from_secs(10);

    pub(crate) struct Device {
        pub(crate) cairn: Cairn,
        rt: tokio::runtime::Runtime,
        _dir: tempfile::TempDir,
    }

    impl Device {
        pub(crate) fn start() -> Device {
            Device::start_with(vec![])
        }

        /// A device enrolled as member [`MEMBER`] on a relay that is not running (a
        /// closed loopback port): it knows its member id but stays offline.
        pub(crate) fn start_enrolled() -> Device {
            let token = format!("cairn1_{MEMBER}_{}_{}", "b".repeat(16), "c".repeat(64));
            Device::start_with(vec![crate::app::RelayConfig {
                url: "ws://127.0.0.1:9/".into(),
                credential: Some(token),
            }])
        }

        fn start_with(relays: Vec<crate::app::RelayConfig>) -> Device {
            let dir = tempfile::tempdir().unwrap();
            let cairn = Cairn::start(crate::app::CairnConfig {
                data_dir: dir.path().to_string_lossy().into_owned(),
                relays,
                journal_key: vec![7; 32],
                time_zone: "Europe/London".into(),
                device_name: Some("ana-phone".into()),
            })
            .unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            Device {
                cairn,
                rt,
                _dir: dir,
            }
        }

        pub(crate) fn run<T>(&self, fut: impl Future<Output = T>) -> T {
            self.rt.block_on(fut)
        }

        pub(crate) fn group(&self) -> GroupId {
            GroupId::from("g")
        }

        /// A group index document, created on this device.
        pub(crate) fn index(&self) -> DocumentId {
            self.run(
                self.cairn
                    .create_doc(&self.group(), BoundKind::Index, |tx| {
                        index::init(tx).map_err(index_error)
                    }),
            )
            .unwrap()
            .0
        }

        /// A one-off meeting, listed in a fresh index.
        pub(crate) fn meeting(&self, title: &str) -> Meeting {
            let index_doc = self.index();
            self.run(create_meeting_in(
                &self.cairn,
                &self.group(),
                index_doc,
                title.into(),
                MeetingKind::Training,
            ))
            .unwrap()
        }
    }

    /// A listener that forwards every value to a channel.
    pub(crate) fn channel<T: Send + 'static>() -> (Arc<dyn Listener<T>>, mpsc::Receiver<T>) {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let listener = move |value: T| {
            let _ = tx.lock().unwrap().send(value);
        };
        (Arc::new(listener), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{channel, Device, MEMBER, WAIT};
    use super::*;

    fn agenda_item(title: &str) -> NewAgendaItem {
        NewAgendaItem {
            title: title.into(),
            raised_by: Some("ana".into()),
            time_box_minutes: Some(15),
            kind: AgendaKind::Training,
            notes: String::new(),
        }
    }

    #[test]
    fn a_created_meeting_is_listed_in_the_index_and_reads_back() {
        let device = Device::start();
        let index_doc = device.index();
        let meeting = device
            .run(create_meeting_in(
                &device.cairn,
                &device.group(),
                index_doc,
                "Peer Assist: housing".into(),
                MeetingKind::PeerAssist,
            ))
            .unwrap();
        let listed = device
            .run(
                device
                    .cairn
                    .read_doc(index_doc, |doc| index::documents(doc).map_err(index_error)),
            )
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].url, format!("automerge:{}", meeting.id()));
        assert_eq!(listed[0].title, "Peer Assist: housing");
        let record = device.run(meeting.read()).unwrap();
        assert_eq!(record.id, meeting.id());
        assert_eq!(record.group_id, "g");
        assert_eq!(record.kind, MeetingKind::PeerAssist);
        assert_eq!(record.title, "Peer Assist: housing");
        assert_eq!(record.minutes_status, MinutesStatus::Draft);
        assert!(!record.heads.is_empty());
        assert!(matches!(
            device.run(create_meeting_in(
                &device.cairn,
                &device.group(),
                index_doc,
                "x".into(),
                MeetingKind::Occurrence
            )),
            Err(CairnError::Invalid { .. })
        ));
    }

    #[test]
    fn agenda_ids_returned_by_add_work_for_later_edits() {
        let device = Device::start();
        let meeting = device.meeting("Training: wellness strategies");
        let first = device
            .run(meeting.add_agenda_item(agenda_item("Check-in")))
            .unwrap();
        let second = device
            .run(meeting.add_agenda_item(agenda_item("Avoiding peer drift")))
            .unwrap();
        assert_ne!(first, second);
        device.run(async {
            meeting
                .move_agenda_item(second.clone(), Some(first.clone()))
                .await
                .unwrap();
            meeting.set_time_box(first.clone(), None).await.unwrap();
            meeting
                .set_agenda_kind(first.clone(), AgendaKind::Admin)
                .await
                .unwrap();
            meeting
                .set_agenda_title(first.clone(), "Check-in round".into())
                .await
                .unwrap();
            meeting
                .splice_text(
                    MeetingTextField::AgendaNotes {
                        item_id: second.clone(),
                    },
                    0,
                    0,
                    "Bring examples".into(),
                )
                .await
                .unwrap();
        });
        let record = device.run(meeting.read()).unwrap();
        let ids: Vec<&str> = record.agenda.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, vec![second.as_str(), first.as_str()]);
        assert_eq!(record.agenda[1].title, "Check-in round");
        assert_eq!(record.agenda[1].time_box_minutes, None);
        assert_eq!(record.agenda[1].kind, AgendaKind::Admin);
        assert_eq!(record.agenda[0].notes, "Bring examples");
        assert_eq!(record.agenda[0].raised_by, "ana");

        device
            .run(meeting.remove_agenda_item(first.clone()))
            .unwrap();
        assert!(matches!(
            device.run(meeting.set_time_box(first.clone(), Some(5))),
            Err(CairnError::NotFound { .. })
        ));
        assert!(matches!(
            device.run(meeting.add_agenda_item(agenda_item("  "))),
            Err(CairnError::Invalid { .. })
        ));
        assert_eq!(device.run(meeting.read()).unwrap().agenda.len(), 1);
    }

    #[test]
    fn actions_attendance_roles_and_schedule() {
        let device = Device::start();
        let meeting = device.meeting("Monthly circle");
        let action = device
            .run(meeting.add_action(
                "Share the reading".into(),
                "chi".into(),
                Some("2026-02-01".into()),
            ))
            .unwrap();
        device.run(async {
            meeting
                .set_action_status(action.clone(), ActionStatus::Done)
                .await
                .unwrap();
            meeting
                .set_action_owner(action.clone(), "dee".into())
                .await
                .unwrap();
            meeting.set_action_due(action.clone(), None).await.unwrap();
            meeting
                .set_attendance("ben".into(), Some(Attendance::Apologies))
                .await
                .unwrap();
            meeting
                .set_rsvp_of(MemberId::from("ana"), Some(Rsvp::Yes))
                .await
                .unwrap();
            meeting.set_facilitator(Some("ana".into())).await.unwrap();
            meeting.set_recorder(Some("ben".into())).await.unwrap();
            // 18:00–19:30 in London on 28 January 2026.
            meeting
                .set_schedule(1_769_623_200_000, 1_769_628_600_000, "Europe/London".into())
                .await
                .unwrap();
        });
        let record = device.run(meeting.read()).unwrap();
        let a = &record.actions[0];
        assert_eq!((a.id.as_str(), a.owner.as_str()), (action.as_str(), "dee"));
        assert_eq!((a.status, a.due.clone()), (ActionStatus::Done, None));
        assert_eq!(
            record.attendance,
            vec![AttendanceRecord {
                member_id: "ben".into(),
                attendance: Attendance::Apologies
            }]
        );
        assert_eq!(
            record.rsvps,
            vec![RsvpRecord {
                member_id: "ana".into(),
                rsvp: Rsvp::Yes
            }]
        );
        assert_eq!(record.facilitator.as_deref(), Some("ana"));
        assert_eq!(record.recorder.as_deref(), Some("ben"));
        let schedule = record.schedule.unwrap();
        assert_eq!(schedule.local_start.time, "18:00");
        assert_eq!(schedule.local_start.date, "2026-01-28");
        assert_eq!(schedule.local_start.weekday, Weekday::Wednesday);
        assert_eq!(schedule.local_end.time, "19:30");

        for bad in [
            device.run(meeting.set_action_status("nope".into(), ActionStatus::Open)),
            device.run(meeting.set_action_text("nope".into(), "x".into())),
        ] {
            assert!(matches!(bad, Err(CairnError::NotFound { .. })));
        }
        assert!(matches!(
            device.run(meeting.add_action("x".into(), "ana".into(), Some("1 Feb".into()))),
            Err(CairnError::Invalid { .. })
        ));
        assert!(matches!(
            device.run(meeting.set_schedule(0, 1, "Mars/Olympus".into())),
            Err(CairnError::Invalid { .. })
        ));
        // No relay credential: the device does not know its member id in the group.
        assert!(matches!(
            device.run(meeting.set_rsvp(Some(Rsvp::No))),
            Err(CairnError::NotFound { .. })
        ));
    }

    #[test]
    fn rsvp_and_agenda_items_default_to_this_devices_member() {
        let device = Device::start_enrolled();
        let meeting = device.meeting("Circle");
        device.run(meeting.set_rsvp(Some(Rsvp::Maybe))).unwrap();
        let item = NewAgendaItem {
            raised_by: None,
            ..agenda_item("Renewing the circle")
        };
        device.run(meeting.add_agenda_item(item)).unwrap();
        let record = device.run(meeting.read()).unwrap();
        assert_eq!(
            record.rsvps,
            vec![RsvpRecord {
                member_id: MEMBER.into(),
                rsvp: Rsvp::Maybe
            }]
        );
        assert_eq!(record.agenda[0].raised_by, MEMBER);
        let agreed = device.run(meeting.minutes().agree()).unwrap();
        assert_eq!(agreed.by, MEMBER);
        assert_eq!(agreed.heads, record.heads);
    }

    #[test]
    fn open_actions_are_carried_into_the_next_meeting_once() {
        let device = Device::start();
        let june = device.meeting("June");
        let july = device.meeting("July");
        let (open, done) = device.run(async {
            let open = june
                .add_action("Book the room".into(), "ana".into(), None)
                .await
                .unwrap();
            let done = june
                .add_action("Send the notes".into(), "ben".into(), None)
                .await
                .unwrap();
            june.set_action_status(done.clone(), ActionStatus::Done)
                .await
                .unwrap();
            (open, done)
        });
        let carried = device.run(july.carry_open_actions(june.id())).unwrap();
        assert_eq!(carried.len(), 1);
        assert!(device
            .run(july.carry_open_actions(june.id()))
            .unwrap()
            .is_empty());
        let actions = device.run(july.read()).unwrap().actions;
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].id, carried[0]);
        assert_eq!(actions[0].text, "Book the room");
        assert_eq!(actions[0].carried_from_meeting_id, Some(june.id()));
        assert_eq!(actions[0].carried_from_action_id, Some(open));
        assert_ne!(actions[0].carried_from_action_id, Some(done));
        assert!(matches!(
            device.run(july.carry_open_actions(july.id())),
            Err(CairnError::Invalid { .. })
        ));
    }

    #[test]
    fn a_subscription_gets_the_record_then_each_change_then_nothing_after_cancel() {
        let device = Device::start();
        let meeting = device.meeting("Circle");
        let (listener, rx) = channel();
        let subscription = meeting.subscribe(listener);
        let first: MeetingRecord = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(first.title, "Circle");
        assert!(first.agenda.is_empty());

        let id = device
            .run(meeting.add_agenda_item(agenda_item("Check-in")))
            .unwrap();
        let next = loop {
            let r = rx.recv_timeout(WAIT).unwrap();
            if !r.agenda.is_empty() {
                break r;
            }
        };
        assert_eq!(next.agenda[0].id, id);
        assert_ne!(next.heads, first.heads);

        subscription.cancel();
        while rx.try_recv().is_ok() {}
        device.run(meeting.set_title("Renamed".into())).unwrap();
        // A second subscriber sees the rename, so it was published; the cancelled one
        // received nothing.
        let (witness, seen) = channel();
        let _live = meeting.subscribe(witness);
        loop {
            let r: MeetingRecord = seen.recv_timeout(WAIT).unwrap();
            if r.title == "Renamed" {
                break;
            }
        }
        assert!(rx.try_recv().is_err(), "no delivery after cancel");
    }

    #[test]
    fn an_unknown_meeting_is_not_found_and_a_bad_id_is_invalid() {
        let device = Device::start();
        let group = device.cairn.group("g");
        assert!(matches!(
            group.meeting("not an id"),
            Err(CairnError::Invalid { .. })
        ));
        // A thread is not a meeting.
        let thread = device
            .run(
                device
                    .cairn
                    .create_doc(&device.group(), BoundKind::Thread, |tx| {
                        crate::model::schema::stamp(tx, crate::model::schema::DocKind::Thread)?;
                        Ok(())
                    }),
            )
            .unwrap()
            .0;
        let meeting = group.meeting(&thread.to_string()).unwrap();
        assert!(matches!(
            device.run(meeting.read()),
            Err(CairnError::NotFound { .. })
        ));
    }
}
