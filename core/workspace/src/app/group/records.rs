//! The records a group screen shows: profile, roster, index, and the group as one value.

use cairn_sync::membership::MemberStatus;

use crate::model::group::Role;

/// How the group meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeetingMode {
    /// By video call.
    Online,
    /// Face to face.
    InPerson,
    /// Both at once.
    Hybrid,
}

/// Where the group is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// Running.
    Active,
    /// Reaching its end date and deciding whether to carry on.
    Renewing,
    /// Finished, kept as an alumni group.
    Alumni,
    /// Finished.
    Closed,
}

/// Where the group meets (shown to members only: the relay shares the settings with
/// members alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeetingPlace {
    /// Online, in person or hybrid.
    pub mode: MeetingMode,
    /// The call link (online and hybrid).
    pub link: Option<String>,
    /// The address (in person and hybrid).
    pub address: Option<String>,
}

/// The configurable "need support now" link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrisisSupport {
    /// What the button says (empty: "Need support now").
    pub label: String,
    /// Where it leads (a helpline page, a `tel:` link).
    pub url: String,
}

/// Everything the group's settings document holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupProfile {
    /// The group's name (not empty).
    pub name: String,
    /// What the group is for.
    pub purpose: String,
    /// How and where it meets, once set. Once set it can be changed but not cleared.
    pub meeting_place: Option<MeetingPlace>,
    /// How many people the group is meant for.
    pub intended_size: Option<u32>,
    /// First day, `YYYY-MM-DD`.
    pub start_date: Option<String>,
    /// Last day, `YYYY-MM-DD` (not before the first).
    pub end_date: Option<String>,
    /// Active, renewing, alumni or closed.
    pub state: GroupState,
    /// The id of the pinned "start here" resource (see [`Resources`](crate::app::Resources)).
    pub start_here: Option<String>,
    /// The crisis-support link, if configured.
    pub crisis_support: Option<CrisisSupport>,
}

impl GroupProfile {
    /// A profile with a name and purpose and nothing else set (an active group).
    pub fn new(name: &str, purpose: &str) -> GroupProfile {
        GroupProfile {
            name: name.to_owned(),
            purpose: purpose.to_owned(),
            meeting_place: None,
            intended_size: None,
            start_date: None,
            end_date: None,
            state: GroupState::Active,
            start_here: None,
            crisis_support: None,
        }
    }
}

/// One member as the roster shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// The member's id (what posts and actions name).
    pub member_id: String,
    /// Their name in this group.
    pub pseudonym: String,
    /// Their role.
    pub role: Role,
    /// Active, suspended, left or removed.
    pub status: MemberStatus,
    /// The code-of-conduct version they accepted (0: none).
    pub accepted_version: u64,
    /// Whether they accepted the current code of conduct.
    pub accepted_current_code: bool,
    /// When they joined (ms since the Unix epoch).
    pub joined_ms: i64,
    /// When a guest's access ends (ms since the Unix epoch); `None` for members.
    pub expires_ms: Option<i64>,
}

/// The group's code of conduct.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeOfConduct {
    /// Grows with every change of the text.
    pub version: u64,
    /// The text (empty: the group asks nothing).
    pub text: String,
}

/// The roster: who is in the group, and the code of conduct they accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterRecord {
    /// Every listed member, by member id.
    pub members: Vec<MemberRecord>,
    /// The current code of conduct.
    pub code_of_conduct: CodeOfConduct,
}

/// What a post, action or agenda item shows as its author when the member is no longer on
/// the roster: they erased their account (the relay rebuilt the roster without them) or
/// the roster has not arrived yet. Their words stay; their name does not.
pub const FORMER_MEMBER: &str = "former member";

impl RosterRecord {
    /// The name to show for `member_id`: their pseudonym while the roster lists them,
    /// otherwise [`FORMER_MEMBER`].
    pub fn name_of(&self, member_id: &str) -> &str {
        self.members
            .iter()
            .find(|m| m.member_id == member_id)
            .map_or(FORMER_MEMBER, |m| m.pseudonym.as_str())
    }
}

/// What an indexed document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentKind {
    /// One meeting.
    Meeting,
    /// A recurring series.
    Series,
    /// A discussion thread.
    Thread,
    /// The resources list.
    Resources,
}

/// One entry of the group's index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The document's id.
    pub id: String,
    /// What it is.
    pub kind: DocumentKind,
    /// Its title, for lists.
    pub title: String,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: i64,
}

/// A group screen's whole value: profile, roster, index and this device's place in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    /// The group's id.
    pub id: String,
    /// This device's member id in the group.
    pub my_member_id: String,
    /// This device's member's role.
    pub my_role: Role,
    /// This device's member's status.
    pub my_status: MemberStatus,
    /// The profile; `None` while the group has no settings document (or it has not
    /// arrived yet).
    pub profile: Option<GroupProfile>,
    /// The roster; `None` while the relay has not written one.
    pub roster: Option<RosterRecord>,
    /// The group's documents, oldest first (empty while it has no index).
    pub index: Vec<IndexEntry>,
    /// The group has no settings or no index document yet: an organiser calls
    /// [`Group::set_up`](crate::app::Group::set_up).
    pub needs_set_up: bool,
}
