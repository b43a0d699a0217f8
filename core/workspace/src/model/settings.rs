//! A group's settings document: who the group is and how it meets. Organisers write it
//! (the relay drops anyone else's changes); every member who may see the group reads it.
//!
//! Layout (root keys; user-typed strings are Text so organisers co-edit them from JS
//! clients too, identifiers, enums, URLs and dates are scalar strings; readers accept
//! either form):
//!
//! | key | value |
//! |---|---|
//! | `name`, `purpose` | Text |
//! | `howWeMeet` | map `{mode: "online"\|"inPerson"\|"hybrid", link?: str, address?: Text}` |
//! | `intendedSize` | uint, absent when not set |
//! | `timeFrame` | map `{startDate?: "YYYY-MM-DD", endDate?: …, state: "active"\|"renewing"\|"alumni"\|"closed"}` |
//! | `startHere` | str: id of the pinned resource in the group's resources document |
//! | `crisisSupport` | map `{label: Text, url: str}` |
//!
//! Every container is created by [`init`], in the first change: two organisers who each
//! created a missing `timeFrame` map concurrently would end with one of the two maps and
//! lose the other's dates.
//!
//! The code of conduct is not here: the relay keeps its text and version (organisers
//! change it through the relay, which then asks every member to accept it again) and the
//! roster carries a copy for display ([`crate::model::roster::code_of_conduct`]).
//!
//! The link or address of a meeting place is for members only: this document is shared
//! with the group's members and nobody else, which the relay enforces.

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, ROOT};
use jiff::civil::Date;
use thiserror::Error;

use crate::model::fields::{self, named_enum};
use crate::model::schema::{self, DocKind, SchemaError};

/// The label shown for the crisis-support link when the group has not chosen one.
pub const DEFAULT_CRISIS_LABEL: &str = "Need support now";

/// Why a settings operation failed.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// The document is not a settings document this code can read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Automerge refused the change (usually a bug in the caller's object ids).
    #[error(transparent)]
    Automerge(#[from] AutomergeError),
    /// The end date of the time frame lies before its start date.
    #[error("the group's end date is before its start date")]
    EndBeforeStart,
}

named_enum!(
    /// How the group meets.
    MeetingMode {
        /// By video call.
        Online => "online",
        /// Face to face.
        InPerson => "inPerson",
        /// Both at once.
        Hybrid => "hybrid",
    }
);

/// Where the group meets. Members only: the relay shares the settings with members alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeetingPlace {
    /// Online, in person or hybrid.
    pub mode: MeetingMode,
    /// The call link (online and hybrid).
    pub link: Option<String>,
    /// The address (in person and hybrid).
    pub address: Option<String>,
}

named_enum!(
    /// Where the group is in its life.
    GroupState {
        /// Running.
        Active => "active",
        /// Reaching its end date and deciding whether to carry on.
        Renewing => "renewing",
        /// Finished, kept as an alumni group.
        Alumni => "alumni",
        /// Finished.
        Closed => "closed",
    }
);

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

/// The group's profile: everything in the settings document.
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
    /// The id of the pinned "start here" resource in the group's resources document.
    pub start_here: Option<String>,
    /// The crisis-support link, if configured.
    pub crisis_support: Option<CrisisSupport>,
}

const NAME: &str = "name";
const PURPOSE: &str = "purpose";
const HOW: &str = "howWeMeet";
const SIZE: &str = "intendedSize";
const TIME_FRAME: &str = "timeFrame";
const START_HERE: &str = "startHere";
const CRISIS: &str = "crisisSupport";

/// Creates a settings document: stamps the schema and creates every container.
pub fn init(tx: &mut impl Transactable, name: &str, purpose: &str) -> Result<(), SettingsError> {
    schema::stamp(tx, DocKind::Settings)?;
    fields::put_text(tx, &ROOT, NAME, name)?;
    fields::put_text(tx, &ROOT, PURPOSE, purpose)?;
    let frame = tx.put_object(ROOT, TIME_FRAME, ObjType::Map)?;
    tx.put(&frame, "state", GroupState::Active.name())?;
    for key in [HOW, CRISIS] {
        tx.put_object(ROOT, key, ObjType::Map)?;
    }
    Ok(())
}

/// Reads the group's profile.
pub fn profile(doc: &impl ReadDoc) -> Result<GroupProfile, SettingsError> {
    schema::check(doc, DocKind::Settings)?;
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
pub fn set_name(tx: &mut impl Transactable, name: &str) -> Result<(), SettingsError> {
    schema::check(tx, DocKind::Settings)?;
    fields::set_text::<SettingsError>(tx, &ROOT, NAME, name)
}

/// Rewrites the group's purpose.
pub fn set_purpose(tx: &mut impl Transactable, purpose: &str) -> Result<(), SettingsError> {
    schema::check(tx, DocKind::Settings)?;
    fields::set_text::<SettingsError>(tx, &ROOT, PURPOSE, purpose)
}

/// Sets how and where the group meets.
pub fn set_meeting_place(
    tx: &mut impl Transactable,
    place: &MeetingPlace,
) -> Result<(), SettingsError> {
    schema::check(tx, DocKind::Settings)?;
    let how = fields::map_in::<SettingsError>(tx, &ROOT, HOW)?;
    tx.put(&how, "mode", place.mode.name())?;
    match &place.link {
        Some(link) => tx.put(&how, "link", link.as_str())?,
        None => tx.delete(&how, "link")?,
    }
    match &place.address {
        Some(address) => fields::set_text::<SettingsError>(tx, &how, "address", address)?,
        None => tx.delete(&how, "address")?,
    }
    Ok(())
}

/// Sets or clears the intended group size.
pub fn set_intended_size(
    tx: &mut impl Transactable,
    size: Option<u32>,
) -> Result<(), SettingsError> {
    schema::check(tx, DocKind::Settings)?;
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
) -> Result<(), SettingsError> {
    schema::check(tx, DocKind::Settings)?;
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            return Err(SettingsError::EndBeforeStart);
        }
    }
    let frame = fields::map_in::<SettingsError>(tx, &ROOT, TIME_FRAME)?;
    for (key, value) in [("startDate", start), ("endDate", end)] {
        match value {
            Some(d) => tx.put(&frame, key, d.to_string())?,
            None => tx.delete(&frame, key)?,
        }
    }
    Ok(())
}

/// Moves the group to another state (renewing, alumni, closed, or back to active).
pub fn set_state(tx: &mut impl Transactable, state: GroupState) -> Result<(), SettingsError> {
    schema::check(tx, DocKind::Settings)?;
    let frame = fields::map_in::<SettingsError>(tx, &ROOT, TIME_FRAME)?;
    tx.put(&frame, "state", state.name())?;
    Ok(())
}

/// Pins a resource (its id in the group's resources document) as "start here", or unpins.
pub fn set_start_here(
    tx: &mut impl Transactable,
    resource_id: Option<&str>,
) -> Result<(), SettingsError> {
    schema::check(tx, DocKind::Settings)?;
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
) -> Result<(), SettingsError> {
    schema::check(tx, DocKind::Settings)?;
    // Keep the map even when clearing, so a later setting on two devices at once writes
    // into one shared map instead of two conflicting ones.
    let c = fields::map_in::<SettingsError>(tx, &ROOT, CRISIS)?;
    match support {
        Some(s) => {
            fields::set_text::<SettingsError>(tx, &c, "label", &s.label)?;
            tx.put(&c, "url", s.url.as_str())?;
        }
        None => {
            tx.delete(&c, "url")?;
            tx.delete(&c, "label")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{Automerge, TextEncoding};

    fn new_settings() -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        change(&mut doc, |tx| {
            init(tx, "Peer leads circle", "Reflect on practice").unwrap()
        });
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
    fn profile_round_trips() {
        let mut doc = new_settings();
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
        });
        let p = profile(&doc).unwrap();
        assert_eq!(p.name, "Peer leads circle");
        assert_eq!(p.purpose, "Reflect on practice");
        let place = p.how_we_meet.unwrap();
        assert_eq!(place.mode, MeetingMode::Hybrid);
        assert_eq!(place.address.as_deref(), Some("Room 4"));
        assert_eq!(p.intended_size, Some(8));
        assert_eq!(p.time_frame.state, GroupState::Renewing);
        assert_eq!(p.time_frame.end.unwrap().to_string(), "2025-12-31");
        assert_eq!(p.start_here.as_deref(), Some("r1"));
        assert_eq!(p.crisis_support.unwrap().label, DEFAULT_CRISIS_LABEL);
        assert!(matches!(
            change(&mut doc, |tx| set_dates(
                tx,
                Some("2025-02-01".parse().unwrap()),
                Some("2025-01-01".parse().unwrap())
            )),
            Err(SettingsError::EndBeforeStart)
        ));
        change(&mut doc, |tx| set_crisis_support(tx, None).unwrap());
        assert_eq!(profile(&doc).unwrap().crisis_support, None);
    }

    #[test]
    fn concurrent_edits_by_two_organisers_merge() {
        let mut a = new_settings();
        let mut b = a.fork();
        change(&mut a, |tx| {
            set_name(tx, "Peer leads circle (north)").unwrap();
            set_dates(tx, Some("2025-01-01".parse().unwrap()), None).unwrap();
        });
        change(&mut b, |tx| {
            set_name(tx, "The peer leads circle").unwrap();
            set_state(tx, GroupState::Renewing).unwrap();
        });
        a.merge(&mut b).unwrap();
        let p = profile(&a).unwrap();
        assert_eq!(p.name, "The peer leads circle (north)");
        assert_eq!(p.time_frame.start.unwrap().to_string(), "2025-01-01");
        assert_eq!(p.time_frame.state, GroupState::Renewing);
    }

    #[test]
    fn strings_written_as_scalars_by_foreign_code_are_read() {
        let mut doc = new_settings();
        change(&mut doc, |tx| tx.put(ROOT, NAME, "Plain").unwrap());
        assert_eq!(profile(&doc).unwrap().name, "Plain");
        change(&mut doc, |tx| set_name(tx, "Text again").unwrap());
        assert_eq!(profile(&doc).unwrap().name, "Text again");
    }

    #[test]
    fn another_kind_of_document_is_refused() {
        let mut doc = Automerge::new();
        change(&mut doc, |tx| schema::stamp(tx, DocKind::Index).unwrap());
        assert!(matches!(
            profile(&doc),
            Err(SettingsError::Schema(SchemaError::WrongKind { .. }))
        ));
        assert!(matches!(
            change(&mut doc, |tx| set_name(tx, "x")),
            Err(SettingsError::Schema(SchemaError::WrongKind { .. }))
        ));
    }
}
