//! The group document: who the group is, how it meets, its code of conduct, the index of
//! its other documents and a display copy of its membership.
//!
//! Layout (root keys; user-typed strings are Text so JS clients co-edit them, identifiers,
//! enums, URLs and dates are scalar strings; readers accept either form):
//!
//! | key | value |
//! |---|---|
//! | `name`, `purpose` | Text |
//! | `howWeMeet` | map `{mode: "online"\|"inPerson"\|"hybrid", link?: str, address?: Text}` |
//! | `intendedSize` | uint, absent when not set |
//! | `timeFrame` | map `{startDate?: "YYYY-MM-DD", endDate?: …, state: "active"\|"renewing"\|"alumni"\|"closed"}` |
//! | `codeOfConduct` | Text |
//! | `codeOfConductVersion` | counter, incremented on every change of the text |
//! | `acceptances` | map MemberId → uint (the version the member accepted; written by the relay) |
//! | `startHere` | str: id of the pinned resource in the group's resources document |
//! | `crisisSupport` | map `{label: Text, url: str}` |
//! | `documents` | map `automerge:` URL → `{kind, title: Text, createdMs}` |
//! | `members` | map MemberId → `{pseudonym: Text, role, joinedMs, left: bool, leftMs?}` |
//!
//! Every container is created by [`init`], in the first change: two devices that each
//! created a missing `members` map concurrently would end with one of the two maps and
//! lose the other's entries.
//!
//! The link or address of a meeting place is for members only: this document is shared
//! with the group's members and nobody else, which the relay enforces.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use jiff::civil::Date;
use thiserror::Error;

use crate::ids::{DocumentId, MemberId};
use crate::model::fields;
use crate::model::schema::{self, DocKind, SchemaError};

/// The label shown for the crisis-support link when the group has not chosen one.
pub const DEFAULT_CRISIS_LABEL: &str = "Need support now";

/// Why a group operation failed.
#[derive(Debug, Error)]
pub enum GroupError {
    /// The document is not a group document this code can read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Automerge refused the change (usually a bug in the caller's object ids).
    #[error(transparent)]
    Automerge(#[from] AutomergeError),
    /// The member has no entry in the membership view; add them first.
    #[error("no such member in this group")]
    NotAMember,
    /// A pseudonym must have at least one visible character.
    #[error("a pseudonym cannot be empty")]
    EmptyPseudonym,
    /// The end date of the time frame lies before its start date.
    #[error("the group's end date is before its start date")]
    EndBeforeStart,
    /// Not an `automerge:` URL with a valid document id (a typo or a truncated link).
    #[error("not a valid automerge: document URL")]
    InvalidUrl,
    /// The document is not in the group's index.
    #[error("the document is not in the group's index")]
    NotIndexed,
}

/// A member's role in the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Runs the group: settings, membership, code of conduct.
    Organiser,
    /// Holds the space; receives reports and may remove content.
    Facilitator,
    /// Takes notes (the standing recorder; meetings may rotate it).
    Recorder,
    /// A participant.
    Member,
    /// A guest who may read but not write.
    Observer,
    /// A former member of a closed or renewed group, kept read-only.
    Alumnus,
}

impl Role {
    /// Every role, in order of responsibility.
    pub const ALL: [Role; 6] = [
        Role::Organiser,
        Role::Facilitator,
        Role::Recorder,
        Role::Member,
        Role::Observer,
        Role::Alumnus,
    ];

    /// The name stored in the document.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Organiser => "organiser",
            Role::Facilitator => "facilitator",
            Role::Recorder => "recorder",
            Role::Member => "member",
            Role::Observer => "observer",
            Role::Alumnus => "alumnus",
        }
    }

    /// Parses a stored name.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether this role may add to the group's documents (observers and alumni only read).
    pub const fn can_write(self) -> bool {
        !matches!(self, Role::Observer | Role::Alumnus)
    }

    /// Whether this role acts as a facilitator: receives reports, is reached by
    /// `@facilitators`, may remove content. Organisers are included because they run the
    /// group and must be able to act when no facilitator is present.
    pub const fn is_facilitator(self) -> bool {
        matches!(self, Role::Organiser | Role::Facilitator)
    }
}

/// Whether `role` may write (observers and alumni are read-only). See [`Role::can_write`].
pub fn can_write(role: Role) -> bool {
    role.can_write()
}

/// Whether `role` acts as a facilitator. See [`Role::is_facilitator`].
pub fn is_facilitator(role: Role) -> bool {
    role.is_facilitator()
}

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

impl MeetingMode {
    const fn name(self) -> &'static str {
        match self {
            MeetingMode::Online => "online",
            MeetingMode::InPerson => "inPerson",
            MeetingMode::Hybrid => "hybrid",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            MeetingMode::Online,
            MeetingMode::InPerson,
            MeetingMode::Hybrid,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

/// Where the group meets. Members only: the relay shares the group document with members alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeetingPlace {
    /// Online, in person or hybrid.
    pub mode: MeetingMode,
    /// The call link (online and hybrid).
    pub link: Option<String>,
    /// The address (in person and hybrid).
    pub address: Option<String>,
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

impl GroupState {
    const fn name(self) -> &'static str {
        match self {
            GroupState::Active => "active",
            GroupState::Renewing => "renewing",
            GroupState::Alumni => "alumni",
            GroupState::Closed => "closed",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            GroupState::Active,
            GroupState::Renewing,
            GroupState::Alumni,
            GroupState::Closed,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// The period a group runs for (12 weeks to two years is typical) and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeFrame {
    /// First day.
    pub start: Option<Date>,
    /// Last day.
    pub end: Option<Date>,
    /// Active, renewing, alumni or closed.
    pub state: GroupState,
}

/// The configurable "need support now" link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrisisSupport {
    /// What the button says (see [`DEFAULT_CRISIS_LABEL`]).
    pub label: String,
    /// Where it leads (a helpline page, a `tel:` link).
    pub url: String,
}

/// The group's profile: everything but the index and the membership view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupProfile {
    /// The group's name.
    pub name: String,
    /// What the group is for.
    pub purpose: String,
    /// How it meets, once set.
    pub how_we_meet: Option<MeetingPlace>,
    /// How many people the group is meant for.
    pub intended_size: Option<u32>,
    /// When it runs and its state.
    pub time_frame: TimeFrame,
    /// The code of conduct / confidentiality agreement.
    pub code_of_conduct: String,
    /// Its version; members re-accept when it grows.
    pub code_of_conduct_version: u64,
    /// The id of the pinned "start here" resource in the group's resources document.
    pub start_here: Option<String>,
    /// The crisis-support link, if configured.
    pub crisis_support: Option<CrisisSupport>,
}

/// What an indexed document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexKind {
    /// One meeting.
    Meeting,
    /// A recurring series.
    Series,
    /// A discussion thread.
    Thread,
    /// The resources list.
    Resources,
    /// Reports to the facilitators.
    Reports,
}

impl IndexKind {
    const fn name(self) -> &'static str {
        match self {
            IndexKind::Meeting => "meeting",
            IndexKind::Series => "series",
            IndexKind::Thread => "thread",
            IndexKind::Resources => "resources",
            IndexKind::Reports => "reports",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            IndexKind::Meeting,
            IndexKind::Series,
            IndexKind::Thread,
            IndexKind::Resources,
            IndexKind::Reports,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// One entry of the group's document index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The document's `automerge:` URL.
    pub url: String,
    /// What it is.
    pub kind: IndexKind,
    /// Its title, for lists.
    pub title: String,
    /// When it was created.
    pub created_ms: i64,
}

/// A member as the group displays them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberEntry {
    /// The member.
    pub id: MemberId,
    /// Their name in this group.
    pub pseudonym: String,
    /// Their role.
    pub role: Role,
    /// When they joined.
    pub joined_ms: i64,
    /// Whether they have left (or were removed).
    pub left: bool,
    /// When they left.
    pub left_ms: Option<i64>,
}

impl MemberEntry {
    /// Whether this member may write now: still a member and in a writing role.
    pub fn can_write(&self) -> bool {
        !self.left && self.role.can_write()
    }
}

const NAME: &str = "name";
const PURPOSE: &str = "purpose";
const HOW: &str = "howWeMeet";
const SIZE: &str = "intendedSize";
const TIME_FRAME: &str = "timeFrame";
const COC: &str = "codeOfConduct";
const COC_VERSION: &str = "codeOfConductVersion";
const ACCEPTANCES: &str = "acceptances";
const START_HERE: &str = "startHere";
const CRISIS: &str = "crisisSupport";
const DOCUMENTS: &str = "documents";
const MEMBERS: &str = "members";

/// Creates a group document: stamps the schema and creates every container. The code of
/// conduct starts at version 1. Add the organiser with [`add_member`] in the same change.
pub fn init(
    tx: &mut impl Transactable,
    name: &str,
    purpose: &str,
    code_of_conduct: &str,
) -> Result<(), GroupError> {
    schema::stamp(tx, DocKind::Group)?;
    fields::put_text(tx, &ROOT, NAME, name)?;
    fields::put_text(tx, &ROOT, PURPOSE, purpose)?;
    let frame = tx.put_object(ROOT, TIME_FRAME, ObjType::Map)?;
    tx.put(&frame, "state", GroupState::Active.name())?;
    fields::put_text(tx, &ROOT, COC, code_of_conduct)?;
    tx.put(ROOT, COC_VERSION, ScalarValue::counter(1))?;
    for key in [HOW, CRISIS, ACCEPTANCES, DOCUMENTS, MEMBERS] {
        tx.put_object(ROOT, key, ObjType::Map)?;
    }
    Ok(())
}

/// Reads the group's profile.
pub fn profile(doc: &impl ReadDoc) -> Result<GroupProfile, GroupError> {
    schema::check(doc, DocKind::Group)?;
    let how_we_meet = match fields::object(doc, &ROOT, HOW)? {
        Some(how) => match fields::string(doc, &how, "mode")? {
            Some(mode) => Some(MeetingPlace {
                mode: MeetingMode::from_name(&mode)
                    .ok_or_else(|| SchemaError::Shape(HOW.into()))?,
                link: fields::string(doc, &how, "link")?,
                address: fields::string(doc, &how, "address")?,
            }),
            None => None,
        },
        None => None,
    };
    let intended_size = fields::int(doc, &ROOT, SIZE)?
        .map(|n| u32::try_from(n).map_err(|_| SchemaError::Shape(SIZE.into())))
        .transpose()?;
    let time_frame = match fields::object(doc, &ROOT, TIME_FRAME)? {
        Some(frame) => {
            let state = fields::string(doc, &frame, "state")?;
            TimeFrame {
                start: date(doc, &frame, "startDate")?,
                end: date(doc, &frame, "endDate")?,
                state: match state {
                    None => GroupState::Active,
                    Some(s) => GroupState::from_name(&s)
                        .ok_or_else(|| SchemaError::Shape(TIME_FRAME.into()))?,
                },
            }
        }
        None => TimeFrame {
            start: None,
            end: None,
            state: GroupState::Active,
        },
    };
    let crisis_support = match fields::object(doc, &ROOT, CRISIS)? {
        Some(c) => fields::string(doc, &c, "url")?.map(|url| CrisisSupport {
            label: fields::string(doc, &c, "label")
                .ok()
                .flatten()
                .filter(|l| !l.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_CRISIS_LABEL.to_owned()),
            url,
        }),
        None => None,
    };
    Ok(GroupProfile {
        name: fields::string(doc, &ROOT, NAME)?.unwrap_or_default(),
        purpose: fields::string(doc, &ROOT, PURPOSE)?.unwrap_or_default(),
        how_we_meet,
        intended_size,
        time_frame,
        code_of_conduct: fields::string(doc, &ROOT, COC)?.unwrap_or_default(),
        code_of_conduct_version: coc_version(doc)?,
        start_here: fields::string(doc, &ROOT, START_HERE)?,
        crisis_support,
    })
}

fn date(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<Date>, SchemaError> {
    fields::string(doc, obj, key)?
        .map(|s| {
            s.parse::<Date>()
                .map_err(|_| SchemaError::Shape(key.into()))
        })
        .transpose()
}

/// Renames the group (a minimal splice, so a concurrent edit elsewhere in the name survives).
pub fn set_name(tx: &mut impl Transactable, name: &str) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    fields::set_text::<GroupError>(tx, &ROOT, NAME, name)
}

/// Rewrites the group's purpose.
pub fn set_purpose(tx: &mut impl Transactable, purpose: &str) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    fields::set_text::<GroupError>(tx, &ROOT, PURPOSE, purpose)
}

/// Sets how and where the group meets.
pub fn set_meeting_place(
    tx: &mut impl Transactable,
    place: &MeetingPlace,
) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    let how = fields::map_in::<GroupError>(tx, &ROOT, HOW)?;
    tx.put(&how, "mode", place.mode.name())?;
    match &place.link {
        Some(link) => tx.put(&how, "link", link.as_str())?,
        None => tx.delete(&how, "link")?,
    }
    match &place.address {
        Some(address) => fields::set_text::<GroupError>(tx, &how, "address", address)?,
        None => tx.delete(&how, "address")?,
    }
    Ok(())
}

/// Sets or clears the intended group size.
pub fn set_intended_size(tx: &mut impl Transactable, size: Option<u32>) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    match size {
        Some(n) => tx.put(ROOT, SIZE, ScalarValue::Uint(u64::from(n)))?,
        None => tx.delete(ROOT, SIZE)?,
    }
    Ok(())
}

/// Sets the start and end dates (either may be open).
pub fn set_dates(
    tx: &mut impl Transactable,
    start: Option<Date>,
    end: Option<Date>,
) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            return Err(GroupError::EndBeforeStart);
        }
    }
    let frame = fields::map_in::<GroupError>(tx, &ROOT, TIME_FRAME)?;
    for (key, value) in [("startDate", start), ("endDate", end)] {
        match value {
            Some(d) => tx.put(&frame, key, d.to_string())?,
            None => tx.delete(&frame, key)?,
        }
    }
    Ok(())
}

/// Moves the group to another state (renewing, alumni, closed, or back to active).
pub fn set_state(tx: &mut impl Transactable, state: GroupState) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    let frame = fields::map_in::<GroupError>(tx, &ROOT, TIME_FRAME)?;
    tx.put(&frame, "state", state.name())?;
    Ok(())
}

/// Pins a resource (its id in the group's resources document) as "start here", or unpins.
pub fn set_start_here(
    tx: &mut impl Transactable,
    resource_id: Option<&str>,
) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    match resource_id {
        Some(id) => tx.put(ROOT, START_HERE, id)?,
        None => tx.delete(ROOT, START_HERE)?,
    }
    Ok(())
}

/// Configures or clears the "need support now" link.
pub fn set_crisis_support(
    tx: &mut impl Transactable,
    support: Option<&CrisisSupport>,
) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    match support {
        Some(s) => {
            let c = fields::map_in::<GroupError>(tx, &ROOT, CRISIS)?;
            fields::set_text::<GroupError>(tx, &c, "label", &s.label)?;
            tx.put(&c, "url", s.url.as_str())?;
        }
        None => {
            // Keep the (emptied) map rather than deleting it, so a later setting on two
            // devices at once writes into one shared map instead of two conflicting ones.
            let c = fields::map_in::<GroupError>(tx, &ROOT, CRISIS)?;
            tx.delete(&c, "url")?;
            tx.delete(&c, "label")?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- code of conduct

fn coc_version(doc: &impl ReadDoc) -> Result<u64, SchemaError> {
    Ok(fields::int(doc, &ROOT, COC_VERSION)?.unwrap_or(0).max(0) as u64)
}

/// The current code-of-conduct text and version.
pub fn code_of_conduct(doc: &impl ReadDoc) -> Result<(String, u64), GroupError> {
    schema::check(doc, DocKind::Group)?;
    Ok((
        fields::string(doc, &ROOT, COC)?.unwrap_or_default(),
        coc_version(doc)?,
    ))
}

/// Changes the code of conduct and bumps its version, so every member re-accepts; returns
/// the new version. An unchanged text keeps the version.
///
/// The version is an Automerge counter: two organisers who change the text concurrently
/// each add one, so the merged text gets a version neither of them showed anyone and
/// members who accepted either half re-accept the whole.
pub fn update_code_of_conduct(tx: &mut impl Transactable, text: &str) -> Result<u64, GroupError> {
    schema::check(tx, DocKind::Group)?;
    let current = fields::string(tx, &ROOT, COC)?.unwrap_or_default();
    if current == text {
        return Ok(coc_version(tx)?);
    }
    fields::set_text::<GroupError>(tx, &ROOT, COC, text)?;
    match tx.get(ROOT, COC_VERSION)? {
        Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Counter(_)) => {
            tx.increment(ROOT, COC_VERSION, 1)?;
        }
        _ => {
            // Missing or written as a plain number by foreign code: restart as a counter
            // above the old value so no member's acceptance carries over.
            let next = coc_version(tx)? as i64 + 1;
            tx.put(ROOT, COC_VERSION, ScalarValue::counter(next))?;
        }
    }
    Ok(coc_version(tx)?)
}

/// Mirrors the relay's record that `member` accepted `version`. A lower version than
/// already recorded is ignored: acceptances never go backwards.
pub fn record_acceptance(
    tx: &mut impl Transactable,
    member: &MemberId,
    version: u64,
) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    let acceptances = fields::map_in::<GroupError>(tx, &ROOT, ACCEPTANCES)?;
    if accepted(tx, &acceptances, member)?.is_some_and(|v| v >= version) {
        return Ok(());
    }
    tx.put(&acceptances, member.as_str(), ScalarValue::Uint(version))?;
    Ok(())
}

fn accepted(
    doc: &impl ReadDoc,
    acceptances: &ObjId,
    member: &MemberId,
) -> Result<Option<u64>, SchemaError> {
    // Two relays (or a relay and a restore) may write concurrently: the highest wins.
    let all = doc
        .get_all(acceptances, member.as_str())
        .map_err(|_| SchemaError::Shape(ACCEPTANCES.into()))?;
    Ok(all
        .iter()
        .filter_map(|(v, _)| match v {
            Value::Scalar(s) => s.as_i64(),
            _ => None,
        })
        .map(|v| v.max(0) as u64)
        .max())
}

/// The code-of-conduct version `member` accepted, if any.
pub fn accepted_version(doc: &impl ReadDoc, member: &MemberId) -> Result<Option<u64>, GroupError> {
    schema::check(doc, DocKind::Group)?;
    match fields::object(doc, &ROOT, ACCEPTANCES)? {
        Some(a) => Ok(accepted(doc, &a, member)?),
        None => Ok(None),
    }
}

/// Every recorded acceptance.
pub fn acceptances(doc: &impl ReadDoc) -> Result<BTreeMap<MemberId, u64>, GroupError> {
    schema::check(doc, DocKind::Group)?;
    let mut out = BTreeMap::new();
    if let Some(a) = fields::object(doc, &ROOT, ACCEPTANCES)? {
        for key in doc.keys(&a) {
            let member = MemberId::from(key);
            if let Some(v) = accepted(doc, &a, &member)? {
                out.insert(member, v);
            }
        }
    }
    Ok(out)
}

/// Whether `member` must (re-)accept the code of conduct before seeing content: they
/// accepted an older version than the current one, or none. A group without a code of
/// conduct text asks nothing.
pub fn needs_acceptance(doc: &impl ReadDoc, member: &MemberId) -> Result<bool, GroupError> {
    let (text, version) = code_of_conduct(doc)?;
    if text.trim().is_empty() {
        return Ok(false);
    }
    Ok(accepted_version(doc, member)?.unwrap_or(0) < version)
}

// ---------------------------------------------------------------- document index

fn canonical_url(url: &str) -> Result<String, GroupError> {
    DocumentId::parse_url(url)
        .map(|id| id.url())
        .map_err(|_| GroupError::InvalidUrl)
}

/// Adds (or re-describes) a document in the group's index; returns its canonical URL.
pub fn index_document(
    tx: &mut impl Transactable,
    url: &str,
    kind: IndexKind,
    title: &str,
    created_ms: i64,
) -> Result<String, GroupError> {
    schema::check(tx, DocKind::Group)?;
    let url = canonical_url(url)?;
    let documents = fields::map_in::<GroupError>(tx, &ROOT, DOCUMENTS)?;
    let entry = fields::map_in::<GroupError>(tx, &documents, &url)?;
    tx.put(&entry, "kind", kind.name())?;
    fields::set_text::<GroupError>(tx, &entry, "title", title)?;
    tx.put(&entry, "createdMs", created_ms)?;
    Ok(url)
}

/// Changes an indexed document's title.
pub fn set_document_title(
    tx: &mut impl Transactable,
    url: &str,
    title: &str,
) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    let url = canonical_url(url)?;
    let entry = fields::object(tx, &ROOT, DOCUMENTS)?
        .map(|d| fields::object(tx, &d, &url))
        .transpose()?
        .flatten()
        .ok_or(GroupError::NotIndexed)?;
    fields::set_text::<GroupError>(tx, &entry, "title", title)
}

/// Removes a document from the index (the document itself is not touched).
pub fn unindex_document(tx: &mut impl Transactable, url: &str) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    let url = canonical_url(url)?;
    let documents = fields::object(tx, &ROOT, DOCUMENTS)?.ok_or(GroupError::NotIndexed)?;
    if tx.get(&documents, url.as_str())?.is_none() {
        return Err(GroupError::NotIndexed);
    }
    tx.delete(&documents, url.as_str())?;
    Ok(())
}

/// The group's documents, oldest first.
pub fn documents(doc: &impl ReadDoc) -> Result<Vec<IndexEntry>, GroupError> {
    schema::check(doc, DocKind::Group)?;
    let mut out = Vec::new();
    let Some(documents) = fields::object(doc, &ROOT, DOCUMENTS)? else {
        return Ok(out);
    };
    for url in doc.keys(&documents) {
        let entry = fields::object(doc, &documents, &url)?
            .ok_or_else(|| SchemaError::Shape(DOCUMENTS.into()))?;
        let kind = fields::string(doc, &entry, "kind")?
            .and_then(|k| IndexKind::from_name(&k))
            .ok_or_else(|| SchemaError::Shape(DOCUMENTS.into()))?;
        out.push(IndexEntry {
            title: fields::string(doc, &entry, "title")?.unwrap_or_default(),
            created_ms: fields::int(doc, &entry, "createdMs")?.unwrap_or(0),
            kind,
            url,
        });
    }
    out.sort_by(|a, b| (a.created_ms, &a.url).cmp(&(b.created_ms, &b.url)));
    Ok(out)
}

/// The group's documents of one kind, oldest first.
pub fn documents_of_kind(
    doc: &impl ReadDoc,
    kind: IndexKind,
) -> Result<Vec<IndexEntry>, GroupError> {
    let mut all = documents(doc)?;
    all.retain(|e| e.kind == kind);
    Ok(all)
}

// ---------------------------------------------------------------- membership view

fn member_obj(doc: &impl ReadDoc, member: &MemberId) -> Result<Option<ObjId>, SchemaError> {
    match fields::object(doc, &ROOT, MEMBERS)? {
        Some(m) => fields::object(doc, &m, member.as_str()),
        None => Ok(None),
    }
}

/// Adds a member to the display copy of membership, or re-admits one who left (their
/// pseudonym, role and join time are replaced).
pub fn add_member(
    tx: &mut impl Transactable,
    member: &MemberId,
    pseudonym: &str,
    role: Role,
    joined_ms: i64,
) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    if pseudonym.trim().is_empty() {
        return Err(GroupError::EmptyPseudonym);
    }
    let members = fields::map_in::<GroupError>(tx, &ROOT, MEMBERS)?;
    let entry = fields::map_in::<GroupError>(tx, &members, member.as_str())?;
    fields::set_text::<GroupError>(tx, &entry, "pseudonym", pseudonym)?;
    tx.put(&entry, "role", role.name())?;
    tx.put(&entry, "joinedMs", joined_ms)?;
    tx.put(&entry, "left", false)?;
    tx.delete(&entry, "leftMs")?;
    Ok(())
}

/// Changes a member's role.
pub fn set_role(
    tx: &mut impl Transactable,
    member: &MemberId,
    role: Role,
) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    let entry = member_obj(tx, member)?.ok_or(GroupError::NotAMember)?;
    tx.put(&entry, "role", role.name())?;
    Ok(())
}

/// Changes a member's pseudonym in this group.
pub fn set_pseudonym(
    tx: &mut impl Transactable,
    member: &MemberId,
    pseudonym: &str,
) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    if pseudonym.trim().is_empty() {
        return Err(GroupError::EmptyPseudonym);
    }
    let entry = member_obj(tx, member)?.ok_or(GroupError::NotAMember)?;
    fields::set_text::<GroupError>(tx, &entry, "pseudonym", pseudonym)
}

/// Marks a member as gone (they left, or were removed). The entry stays so their past
/// posts keep a name; access itself is the relay's to withdraw.
pub fn mark_left(
    tx: &mut impl Transactable,
    member: &MemberId,
    left_ms: i64,
) -> Result<(), GroupError> {
    schema::check(tx, DocKind::Group)?;
    let entry = member_obj(tx, member)?.ok_or(GroupError::NotAMember)?;
    tx.put(&entry, "left", true)?;
    tx.put(&entry, "leftMs", left_ms)?;
    Ok(())
}

fn read_member(
    doc: &impl ReadDoc,
    id: MemberId,
    entry: &ObjId,
) -> Result<MemberEntry, SchemaError> {
    let role = fields::string(doc, entry, "role")?
        .and_then(|r| Role::from_name(&r))
        .ok_or_else(|| SchemaError::Shape(MEMBERS.into()))?;
    Ok(MemberEntry {
        pseudonym: fields::string(doc, entry, "pseudonym")?.unwrap_or_default(),
        role,
        joined_ms: fields::int(doc, entry, "joinedMs")?.unwrap_or(0),
        left: fields::boolean(doc, entry, "left")?.unwrap_or(false),
        left_ms: fields::int(doc, entry, "leftMs")?,
        id,
    })
}

/// One member's entry.
pub fn member(doc: &impl ReadDoc, member: &MemberId) -> Result<Option<MemberEntry>, GroupError> {
    schema::check(doc, DocKind::Group)?;
    match member_obj(doc, member)? {
        Some(entry) => Ok(Some(read_member(doc, member.clone(), &entry)?)),
        None => Ok(None),
    }
}

/// Everyone in the membership view, past members included, ordered by member id.
pub fn members(doc: &impl ReadDoc) -> Result<Vec<MemberEntry>, GroupError> {
    schema::check(doc, DocKind::Group)?;
    let mut out = Vec::new();
    if let Some(members) = fields::object(doc, &ROOT, MEMBERS)? {
        for key in doc.keys(&members) {
            let entry = fields::object(doc, &members, &key)?
                .ok_or_else(|| SchemaError::Shape(MEMBERS.into()))?;
            out.push(read_member(doc, MemberId::from(key), &entry)?);
        }
    }
    Ok(out)
}

/// The current members who act as facilitators (who `@facilitators` and reports reach).
pub fn facilitators(doc: &impl ReadDoc) -> Result<Vec<MemberId>, GroupError> {
    Ok(members(doc)?
        .into_iter()
        .filter(|m| !m.left && m.role.is_facilitator())
        .map(|m| m.id)
        .collect())
}

/// The role of a current member (`None` for strangers and for members who left).
pub fn role_of(doc: &impl ReadDoc, member: &MemberId) -> Result<Option<Role>, GroupError> {
    Ok(self::member(doc, member)?
        .filter(|m| !m.left)
        .map(|m| m.role))
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{Automerge, TextEncoding};

    fn new_group() -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        let mut tx = doc.transaction();
        init(
            &mut tx,
            "Peer leads circle",
            "Reflect on practice",
            "We keep what is said here.",
        )
        .unwrap();
        add_member(&mut tx, &MemberId::from("ana"), "Ana", Role::Organiser, 1).unwrap();
        tx.commit();
        doc
    }

    fn change<T>(
        doc: &mut Automerge,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> T,
    ) -> T {
        let mut tx = doc.transaction();
        let out = f(&mut tx);
        tx.commit();
        out
    }

    #[test]
    fn observers_and_alumni_are_read_only() {
        let mut doc = new_group();
        change(&mut doc, |tx| {
            add_member(tx, &"ben".into(), "Ben", Role::Observer, 2).unwrap();
            add_member(tx, &"cai".into(), "Cai", Role::Alumnus, 3).unwrap();
            add_member(tx, &"dee".into(), "Dee", Role::Recorder, 4).unwrap();
            add_member(tx, &"eli".into(), "Eli", Role::Facilitator, 5).unwrap();
        });
        let writers: Vec<_> = members(&doc)
            .unwrap()
            .into_iter()
            .filter(MemberEntry::can_write)
            .map(|m| m.id.to_string())
            .collect();
        assert_eq!(writers, ["ana", "dee", "eli"]);
        assert!(!can_write(Role::Observer) && !can_write(Role::Alumnus));
        assert!(can_write(Role::Member) && can_write(Role::Recorder));
        assert!(is_facilitator(Role::Facilitator) && is_facilitator(Role::Organiser));
        assert!(!is_facilitator(Role::Recorder));
        assert_eq!(
            facilitators(&doc).unwrap(),
            [MemberId::from("ana"), MemberId::from("eli")]
        );
    }

    #[test]
    fn a_member_who_left_keeps_a_name_but_no_role() {
        let mut doc = new_group();
        change(&mut doc, |tx| {
            add_member(tx, &"ben".into(), "Ben", Role::Member, 2).unwrap();
            mark_left(tx, &"ben".into(), 9).unwrap();
        });
        let ben = member(&doc, &"ben".into()).unwrap().unwrap();
        assert_eq!(
            (ben.pseudonym.as_str(), ben.left, ben.left_ms),
            ("Ben", true, Some(9))
        );
        assert!(!ben.can_write());
        assert_eq!(role_of(&doc, &"ben".into()).unwrap(), None);
        assert!(matches!(
            change(&mut doc, |tx| set_role(tx, &"zed".into(), Role::Member)),
            Err(GroupError::NotAMember)
        ));
        assert!(matches!(
            change(&mut doc, |tx| add_member(
                tx,
                &"zed".into(),
                "  ",
                Role::Member,
                1
            )),
            Err(GroupError::EmptyPseudonym)
        ));
    }

    #[test]
    fn a_changed_code_of_conduct_must_be_accepted_again() {
        let mut doc = new_group();
        let ana = MemberId::from("ana");
        assert!(needs_acceptance(&doc, &ana).unwrap());
        change(&mut doc, |tx| record_acceptance(tx, &ana, 1).unwrap());
        assert!(!needs_acceptance(&doc, &ana).unwrap());

        let same = change(&mut doc, |tx| {
            update_code_of_conduct(tx, "We keep what is said here.").unwrap()
        });
        assert_eq!(same, 1, "an unchanged text keeps its version");
        let v2 = change(&mut doc, |tx| {
            update_code_of_conduct(tx, "We keep what is said here. No recordings.").unwrap()
        });
        assert_eq!(v2, 2);
        assert!(needs_acceptance(&doc, &ana).unwrap());
        change(&mut doc, |tx| {
            record_acceptance(tx, &ana, 2).unwrap();
            record_acceptance(tx, &ana, 1).unwrap(); // a stale mirror write does not go back
        });
        assert_eq!(accepted_version(&doc, &ana).unwrap(), Some(2));
        assert!(!needs_acceptance(&doc, &ana).unwrap());
    }

    #[test]
    fn concurrent_code_of_conduct_changes_need_a_fresh_acceptance() {
        let mut a = new_group();
        let ana = MemberId::from("ana");
        let mut b = a.fork();
        let va = change(&mut a, |tx| {
            update_code_of_conduct(tx, "We keep what is said here. No screenshots.").unwrap()
        });
        change(&mut a, |tx| record_acceptance(tx, &ana, va).unwrap());
        change(&mut b, |tx| {
            update_code_of_conduct(tx, "Phones away. We keep what is said here.").unwrap()
        });
        a.merge(&mut b).unwrap();
        let (text, version) = code_of_conduct(&a).unwrap();
        assert_eq!(
            text,
            "Phones away. We keep what is said here. No screenshots."
        );
        assert_eq!(version, 3);
        assert!(
            needs_acceptance(&a, &ana).unwrap(),
            "Ana accepted only her half"
        );
    }

    #[test]
    fn concurrent_membership_edits_merge() {
        let mut a = new_group();
        let mut b = a.fork();
        change(&mut a, |tx| {
            add_member(tx, &"ben".into(), "Ben", Role::Member, 2).unwrap()
        });
        change(&mut b, |tx| {
            add_member(tx, &"cai".into(), "Cai", Role::Member, 3).unwrap();
            set_role(tx, &"ana".into(), Role::Facilitator).unwrap();
        });
        a.merge(&mut b).unwrap();
        let ids: Vec<_> = members(&a)
            .unwrap()
            .into_iter()
            .map(|m| (m.id.to_string(), m.role))
            .collect();
        assert_eq!(
            ids,
            [
                ("ana".to_owned(), Role::Facilitator),
                ("ben".to_owned(), Role::Member),
                ("cai".to_owned(), Role::Member)
            ]
        );
    }

    #[test]
    fn profile_round_trips() {
        let mut doc = new_group();
        let url = DocumentId::from_bytes([7; 16]).url();
        change(&mut doc, |tx| {
            set_meeting_place(
                tx,
                &MeetingPlace {
                    mode: MeetingMode::Hybrid,
                    link: Some("https://meet.example/x".into()),
                    address: Some("Room 4".into()),
                },
            )
            .unwrap();
            set_intended_size(tx, Some(8)).unwrap();
            set_dates(
                tx,
                Some("2025-01-01".parse().unwrap()),
                Some("2025-12-31".parse().unwrap()),
            )
            .unwrap();
            set_state(tx, GroupState::Renewing).unwrap();
            set_start_here(tx, Some("r1")).unwrap();
            set_crisis_support(
                tx,
                Some(&CrisisSupport {
                    label: String::new(),
                    url: "tel:116123".into(),
                }),
            )
            .unwrap();
            index_document(tx, &url, IndexKind::Thread, "Welcome", 5).unwrap();
        });
        let p = profile(&doc).unwrap();
        assert_eq!(p.name, "Peer leads circle");
        assert_eq!(p.how_we_meet.unwrap().mode, MeetingMode::Hybrid);
        assert_eq!(p.intended_size, Some(8));
        assert_eq!(p.time_frame.state, GroupState::Renewing);
        assert_eq!(p.time_frame.end.unwrap().to_string(), "2025-12-31");
        assert_eq!(p.start_here.as_deref(), Some("r1"));
        assert_eq!(p.crisis_support.unwrap().label, DEFAULT_CRISIS_LABEL);
        let docs = documents(&doc).unwrap();
        assert_eq!(
            (docs[0].url.as_str(), docs[0].kind, docs[0].title.as_str()),
            (url.as_str(), IndexKind::Thread, "Welcome")
        );
        assert!(matches!(
            change(&mut doc, |tx| set_dates(
                tx,
                Some("2025-02-01".parse().unwrap()),
                Some("2025-01-01".parse().unwrap())
            )),
            Err(GroupError::EndBeforeStart)
        ));
        assert!(matches!(
            change(&mut doc, |tx| index_document(
                tx,
                "automerge:nope",
                IndexKind::Thread,
                "x",
                1
            )),
            Err(GroupError::InvalidUrl)
        ));
        change(&mut doc, |tx| set_crisis_support(tx, None).unwrap());
        assert_eq!(profile(&doc).unwrap().crisis_support, None);
        change(&mut doc, |tx| unindex_document(tx, &url).unwrap());
        assert!(documents(&doc).unwrap().is_empty());
    }

    #[test]
    fn strings_written_as_scalars_by_foreign_code_are_read() {
        let mut doc = new_group();
        change(&mut doc, |tx| tx.put(ROOT, NAME, "Plain").unwrap());
        assert_eq!(profile(&doc).unwrap().name, "Plain");
        change(&mut doc, |tx| set_name(tx, "Text again").unwrap());
        assert_eq!(profile(&doc).unwrap().name, "Text again");
    }
}
