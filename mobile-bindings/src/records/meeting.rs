//! A meeting's records and enums.

use cairn_core::app::meeting::{
    ActionRecord, ActionStatus, AgendaItemRecord, AgendaKind, AgreementRecord, Attendance,
    AttendanceRecord, LocalTime, MeetingKind, MeetingRecord, MeetingTextField, MinutesStatus,
    NewAgendaItem, Rsvp, RsvpRecord, ScheduleRecord, Weekday,
};

/// What a meeting is.
#[uniffi::remote(Enum)]
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
#[uniffi::remote(Enum)]
pub enum AgendaKind {
    /// Case collaboration (de-identified).
    Case,
    /// Training or learning.
    Training,
    /// Running the group.
    Admin,
}

/// A member's attendance at a meeting.
#[uniffi::remote(Enum)]
pub enum Attendance {
    /// Was there.
    Present,
    /// Sent apologies.
    Apologies,
    /// Absent without apologies.
    Absent,
}

/// A member's answer to the invitation.
#[uniffi::remote(Enum)]
pub enum Rsvp {
    /// Coming.
    Yes,
    /// Not coming.
    No,
    /// Not sure yet.
    Maybe,
}

/// Where an action item stands.
#[uniffi::remote(Enum)]
pub enum ActionStatus {
    /// Still to do; carried into the next meeting's review.
    Open,
    /// Done.
    Done,
    /// No longer wanted.
    Dropped,
}

/// Where a meeting's minutes stand.
#[uniffi::remote(Enum)]
pub enum MinutesStatus {
    /// Not agreed yet.
    Draft,
    /// Agreed, and unchanged since.
    Agreed,
    /// Agreed, then edited: the agreed version is still the one at the agreed heads.
    ChangedSinceAgreed,
}

/// A weekday.
#[uniffi::remote(Enum)]
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
#[uniffi::remote(Record)]
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
#[uniffi::remote(Record)]
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
#[uniffi::remote(Record)]
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
#[uniffi::remote(Record)]
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
#[uniffi::remote(Record)]
pub struct AttendanceRecord {
    /// The member.
    pub member_id: String,
    /// Present, apologies or absent.
    pub attendance: Attendance,
}

/// One member's RSVP.
#[uniffi::remote(Record)]
pub struct RsvpRecord {
    /// The member.
    pub member_id: String,
    /// Their answer.
    pub rsvp: Rsvp,
}

/// One action item.
#[uniffi::remote(Record)]
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
#[uniffi::remote(Record)]
pub struct AgreementRecord {
    /// The document heads the group agreed (lowercase hex).
    pub heads: Vec<String>,
    /// The member who recorded the agreement.
    pub by: String,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
}

/// A meeting as read.
#[uniffi::remote(Record)]
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
#[uniffi::remote(Enum)]
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
