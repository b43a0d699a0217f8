//! A group's roster document: the membership view and the code of conduct, written by the
//! relay alone and read by every member who may see the group.
//!
//! The relay decides membership (who is in, with which role, suspended or not, which
//! code-of-conduct version they accepted, their pseudonym in this group) and keeps it in
//! its own store; after each change it makes this document show the same thing with
//! [`reconcile`]. The relay refuses every member's change to this document, so nothing
//! here can be forged by a member, and nothing a member writes elsewhere changes it.
//!
//! Layout (root keys; every value is a scalar, since nobody co-edits this document):
//!
//! | key | value |
//! |---|---|
//! | `members` | map MemberId → `{pseudonym, role, status, acceptedVersion, joinedMs, expiresMs?}` |
//! | `codeOfConduct` | map `{version: uint, text: str}` |
//!
//! `role` is a [`Role`] name; `status` is `"active"`, `"suspended"`, `"left"` or
//! `"removed"`; `acceptedVersion` is the code-of-conduct version the member accepted (0:
//! none yet); `expiresMs` is set for guests whose access ends. Members who left or were
//! removed may stay listed so their past posts keep a name; that is the relay's choice.
//!
//! Both maps are created in the document's first change (by [`reconcile`] on an empty
//! document), so a second writer could never create a rival map.
//!
//! Pseudonyms are names: apps show them, logs never do.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::docs::fields::{self, named_enum};
use crate::docs::group::Role;
use crate::docs::schema::{self, DocKind, SchemaError, KIND_KEY, VERSION_KEY};
use crate::ids::MemberId;

/// Why a roster operation failed.
#[derive(Debug, Error)]
pub enum RosterError {
    /// The document is not a roster document this code can read (for [`reconcile`]: it
    /// holds another kind of document, or one written by a newer relay).
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Automerge refused the change (a bug in the object ids used here).
    #[error(transparent)]
    Automerge(#[from] AutomergeError),
    /// The desired view lists a member twice; nothing was written.
    #[error("member {0} is listed twice in the roster view")]
    DuplicateMember(MemberId),
}

named_enum!(
    /// Where a member stands in the group.
    MemberStatus {
        /// A member: reads (and writes, if the role allows) once they accepted the current
        /// code of conduct.
        Active => "active",
        /// Held back by a facilitator or organiser: no reading or writing until reinstated.
        Suspended => "suspended",
        /// Left of their own accord.
        Left => "left",
        /// Removed by a facilitator or organiser.
        Removed => "removed",
    }
);

/// One member as the roster shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RosterMember {
    /// The member.
    #[serde(with = "member_id_text")]
    pub member_id: MemberId,
    /// Their name in this group (a name: never log it).
    pub pseudonym: String,
    /// Their role.
    pub role: Role,
    /// Active, suspended, left or removed.
    pub status: MemberStatus,
    /// The code-of-conduct version they accepted; 0 when none.
    pub accepted_version: u64,
    /// When they joined (ms since the Unix epoch).
    pub joined_ms: i64,
    /// When a guest's access ends (ms since the Unix epoch); `None` for members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

impl RosterMember {
    /// Whether they are a member at `now_ms`: active and, for a guest, not yet expired.
    /// (Whether they accepted the current code of conduct is separate: see
    /// [`RosterMember::has_accepted`].)
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.status == MemberStatus::Active && self.expires_ms.is_none_or(|e| now_ms < e)
    }

    /// Whether they accepted `code`'s version (a group without a code of conduct text asks
    /// nothing).
    pub fn has_accepted(&self, code: &CodeOfConduct) -> bool {
        code.text.trim().is_empty() || self.accepted_version >= code.version
    }

    /// Whether they may add to the group's documents at `now_ms`: active, and in a role
    /// that writes.
    pub fn can_write(&self, now_ms: i64) -> bool {
        self.is_active(now_ms) && self.role.can_write()
    }
}

/// The group's code of conduct (the relay keeps it; this is the copy members read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeOfConduct {
    /// Its version: it grows with every change of the text, and members accept again.
    pub version: u64,
    /// The text.
    pub text: String,
}

/// The whole roster: what the relay wants the document to show.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RosterView {
    /// Every member listed, in any order (readers return them by member id).
    pub members: Vec<RosterMember>,
    /// The current code of conduct.
    pub code_of_conduct: CodeOfConduct,
}

/// Serde for [`MemberId`] as its text (the id type itself stays serde-free).
mod member_id_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::ids::MemberId;

    pub(super) fn serialize<S: Serializer>(id: &MemberId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(id.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MemberId, D::Error> {
        String::deserialize(d).map(MemberId::from)
    }
}

const MEMBERS: &str = "members";
const COC: &str = "codeOfConduct";
const PSEUDONYM: &str = "pseudonym";
const ROLE: &str = "role";
const STATUS: &str = "status";
const ACCEPTED: &str = "acceptedVersion";
const JOINED: &str = "joinedMs";
const EXPIRES: &str = "expiresMs";
const VERSION: &str = "version";
const TEXT: &str = "text";

// ---------------------------------------------------------------- reading

fn read_member(
    doc: &impl ReadDoc,
    id: MemberId,
    entry: &ObjId,
) -> Result<RosterMember, SchemaError> {
    let shape = |key: &str| SchemaError::Shape(key.to_owned());
    Ok(RosterMember {
        pseudonym: fields::string(doc, entry, PSEUDONYM)?.unwrap_or_default(),
        role: fields::string(doc, entry, ROLE)?
            .and_then(|r| Role::from_name(&r))
            .ok_or_else(|| shape(ROLE))?,
        status: fields::string(doc, entry, STATUS)?
            .and_then(|s| MemberStatus::from_name(&s))
            .ok_or_else(|| shape(STATUS))?,
        accepted_version: fields::int(doc, entry, ACCEPTED)?
            .map(|v| u64::try_from(v).map_err(|_| shape(ACCEPTED)))
            .transpose()?
            .unwrap_or(0),
        joined_ms: fields::int(doc, entry, JOINED)?.unwrap_or(0),
        expires_ms: fields::int(doc, entry, EXPIRES)?,
        member_id: id,
    })
}

/// Everyone listed, past members included, ordered by member id.
pub fn members(doc: &impl ReadDoc) -> Result<Vec<RosterMember>, RosterError> {
    schema::check(doc, DocKind::Roster)?;
    let mut out = Vec::new();
    if let Some(members) = fields::object(doc, &ROOT, MEMBERS)? {
        for key in doc.keys(&members) {
            let entry = fields::object(doc, &members, &key)?
                .ok_or_else(|| SchemaError::Shape(MEMBERS.into()))?;
            out.push(read_member(doc, MemberId::from(key), &entry)?);
        }
    }
    out.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    Ok(out)
}

/// One member's entry (`None` if the roster does not list them).
pub fn member(doc: &impl ReadDoc, member: &MemberId) -> Result<Option<RosterMember>, RosterError> {
    schema::check(doc, DocKind::Roster)?;
    let entry = match fields::object(doc, &ROOT, MEMBERS)? {
        Some(m) => fields::object(doc, &m, member.as_str())?,
        None => None,
    };
    match entry {
        Some(entry) => Ok(Some(read_member(doc, member.clone(), &entry)?)),
        None => Ok(None),
    }
}

/// The role of someone who is a member at `now_ms` (`None` for strangers, and for members
/// who are suspended, left, were removed or whose guest access expired).
pub fn role_of(
    doc: &impl ReadDoc,
    member: &MemberId,
    now_ms: i64,
) -> Result<Option<Role>, RosterError> {
    Ok(self::member(doc, member)?
        .filter(|m| m.is_active(now_ms))
        .map(|m| m.role))
}

/// The members at `now_ms` who act as facilitators (who `@facilitators` and reports reach).
pub fn facilitators(doc: &impl ReadDoc, now_ms: i64) -> Result<Vec<MemberId>, RosterError> {
    Ok(members(doc)?
        .into_iter()
        .filter(|m| m.is_active(now_ms) && m.role.is_facilitator())
        .map(|m| m.member_id)
        .collect())
}

/// Every listed member's pseudonym, past members included (so old posts and minutes keep
/// a name), by member id.
pub fn pseudonyms(doc: &impl ReadDoc) -> Result<BTreeMap<MemberId, String>, RosterError> {
    Ok(members(doc)?
        .into_iter()
        .map(|m| (m.member_id, m.pseudonym))
        .collect())
}

/// The current code of conduct (version 0 and no text until the relay has written one).
pub fn code_of_conduct(doc: &impl ReadDoc) -> Result<CodeOfConduct, RosterError> {
    schema::check(doc, DocKind::Roster)?;
    let Some(coc) = fields::object(doc, &ROOT, COC)? else {
        return Ok(CodeOfConduct::default());
    };
    Ok(CodeOfConduct {
        version: fields::int(doc, &coc, VERSION)?
            .map(|v| u64::try_from(v).map_err(|_| SchemaError::Shape(COC.into())))
            .transpose()?
            .unwrap_or(0),
        text: fields::string(doc, &coc, TEXT)?.unwrap_or_default(),
    })
}

/// The whole roster as a [`RosterView`] (members by id).
pub fn view(doc: &impl ReadDoc) -> Result<RosterView, RosterError> {
    Ok(RosterView {
        members: members(doc)?,
        code_of_conduct: code_of_conduct(doc)?,
    })
}

// ---------------------------------------------------------------- the relay's writer

/// Makes the roster document show exactly `desired`, writing only what differs; returns
/// how many operations it made (0 when the document already matched, so calling it again
/// with the same view changes nothing and syncs nothing).
///
/// For the relay, inside `Engine::update_document`. On an empty document it stamps the
/// `roster` kind and creates both maps in this same change. Entries and keys the view
/// does not have are deleted, and a conflict left by two concurrent writers is resolved
/// to the desired value. A document of another kind, or from a newer relay, is refused
/// untouched; so is a view that lists a member twice.
pub fn reconcile(tx: &mut impl Transactable, desired: &RosterView) -> Result<usize, RosterError> {
    let mut seen = BTreeSet::new();
    for m in &desired.members {
        if !seen.insert(&m.member_id) {
            return Err(RosterError::DuplicateMember(m.member_id.clone()));
        }
    }
    let before = tx.pending_ops();
    match schema::check(tx, DocKind::Roster) {
        Ok(_) => {}
        Err(SchemaError::Missing) => {
            schema::stamp(tx, DocKind::Roster)?;
            tx.put_object(ROOT, MEMBERS, ObjType::Map)?;
            tx.put_object(ROOT, COC, ObjType::Map)?;
        }
        Err(e) => return Err(e.into()),
    }
    retain_keys(tx, &ROOT, &[KIND_KEY, VERSION_KEY, MEMBERS, COC])?;

    let members = map_at(tx, &ROOT, MEMBERS)?;
    let wanted: BTreeSet<&str> = desired
        .members
        .iter()
        .map(|m| m.member_id.as_str())
        .collect();
    let gone: Vec<String> = tx
        .keys(&members)
        .filter(|k| !wanted.contains(k.as_str()))
        .collect();
    for key in gone {
        tx.delete(&members, key.as_str())?;
    }
    for m in &desired.members {
        let entry = map_at(tx, &members, m.member_id.as_str())?;
        put_if_changed(
            tx,
            &entry,
            PSEUDONYM,
            ScalarValue::Str(m.pseudonym.as_str().into()),
        )?;
        put_if_changed(tx, &entry, ROLE, ScalarValue::Str(m.role.name().into()))?;
        put_if_changed(tx, &entry, STATUS, ScalarValue::Str(m.status.name().into()))?;
        put_if_changed(tx, &entry, ACCEPTED, ScalarValue::Uint(m.accepted_version))?;
        put_if_changed(tx, &entry, JOINED, ScalarValue::Int(m.joined_ms))?;
        match m.expires_ms {
            Some(e) => {
                put_if_changed(tx, &entry, EXPIRES, ScalarValue::Int(e))?;
                retain_keys(
                    tx,
                    &entry,
                    &[PSEUDONYM, ROLE, STATUS, ACCEPTED, JOINED, EXPIRES],
                )?;
            }
            None => retain_keys(tx, &entry, &[PSEUDONYM, ROLE, STATUS, ACCEPTED, JOINED])?,
        }
    }

    let coc = map_at(tx, &ROOT, COC)?;
    let code = &desired.code_of_conduct;
    put_if_changed(tx, &coc, VERSION, ScalarValue::Uint(code.version))?;
    put_if_changed(tx, &coc, TEXT, ScalarValue::Str(code.text.as_str().into()))?;
    retain_keys(tx, &coc, &[VERSION, TEXT])?;

    Ok(tx.pending_ops() - before)
}

/// The map under `key`; (re)created when it is missing, not a map, or in conflict.
fn map_at(tx: &mut impl Transactable, obj: &ObjId, key: &str) -> Result<ObjId, AutomergeError> {
    let all = tx.get_all(obj, key)?;
    if let [(Value::Object(ObjType::Map), id)] = all.as_slice() {
        return Ok(id.clone());
    }
    tx.put_object(obj, key, ObjType::Map)
}

/// Writes `want` under `key` unless it already holds exactly that, without a conflict.
fn put_if_changed(
    tx: &mut impl Transactable,
    obj: &ObjId,
    key: &str,
    want: ScalarValue,
) -> Result<(), AutomergeError> {
    let all = tx.get_all(obj, key)?;
    let same = matches!(all.as_slice(), [(Value::Scalar(s), _)] if s.as_ref() == &want);
    if !same {
        tx.put(obj, key, want)?;
    }
    Ok(())
}

/// Deletes every key of `obj` not in `keep`.
fn retain_keys(
    tx: &mut impl Transactable,
    obj: &ObjId,
    keep: &[&str],
) -> Result<(), AutomergeError> {
    let extra: Vec<String> = tx
        .keys(obj)
        .filter(|k| !keep.contains(&k.as_str()))
        .collect();
    for key in extra {
        tx.delete(obj, key.as_str())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::Automerge;

    fn reconciled(doc: &mut Automerge, view: &RosterView) -> usize {
        let mut tx = doc.transaction();
        let ops = reconcile(&mut tx, view).unwrap();
        tx.commit();
        ops
    }

    fn entry(id: &str, pseudonym: &str, role: Role) -> RosterMember {
        RosterMember {
            member_id: id.into(),
            pseudonym: pseudonym.into(),
            role,
            status: MemberStatus::Active,
            accepted_version: 1,
            joined_ms: 1_000,
            expires_ms: None,
        }
    }

    fn group_view() -> RosterView {
        RosterView {
            members: vec![
                entry("ben", "Ben", Role::Member),
                entry("ana", "Ana", Role::Organiser),
                RosterMember {
                    expires_ms: Some(5_000),
                    ..entry("gus", "Guest", Role::Observer)
                },
            ],
            code_of_conduct: CodeOfConduct {
                version: 1,
                text: "We keep what is said here.".into(),
            },
        }
    }

    #[test]
    fn reconcile_creates_the_roster_and_apps_read_it_back() {
        let mut doc = Automerge::new();
        assert!(reconciled(&mut doc, &group_view()) > 0);
        assert_eq!(schema::check(&doc, DocKind::Roster), Ok(1));

        let listed: Vec<_> = members(&doc)
            .unwrap()
            .into_iter()
            .map(|m| (m.member_id.to_string(), m.pseudonym, m.role, m.status))
            .collect();
        assert_eq!(
            listed,
            [
                (
                    "ana".into(),
                    "Ana".into(),
                    Role::Organiser,
                    MemberStatus::Active
                ),
                (
                    "ben".into(),
                    "Ben".into(),
                    Role::Member,
                    MemberStatus::Active
                ),
                (
                    "gus".into(),
                    "Guest".into(),
                    Role::Observer,
                    MemberStatus::Active
                ),
            ]
        );
        let mut expected = group_view();
        expected
            .members
            .sort_by(|a, b| a.member_id.cmp(&b.member_id));
        assert_eq!(view(&doc).unwrap(), expected);
        assert_eq!(code_of_conduct(&doc).unwrap().version, 1);
        assert_eq!(
            role_of(&doc, &"ben".into(), 2_000).unwrap(),
            Some(Role::Member)
        );
        assert_eq!(role_of(&doc, &"zed".into(), 2_000).unwrap(), None);
        assert_eq!(pseudonyms(&doc).unwrap()[&MemberId::from("gus")], "Guest");
    }

    #[test]
    fn reconciling_the_same_view_again_writes_nothing() {
        let mut doc = Automerge::new();
        reconciled(&mut doc, &group_view());
        let heads = doc.get_heads();
        assert_eq!(reconciled(&mut doc, &group_view()), 0);
        // The members in another order are the same view.
        let mut shuffled = group_view();
        shuffled.members.reverse();
        assert_eq!(reconciled(&mut doc, &shuffled), 0);
        assert_eq!(doc.get_heads(), heads, "no change was made");
    }

    #[test]
    fn reconcile_writes_only_what_changed() {
        let mut doc = Automerge::new();
        reconciled(&mut doc, &group_view());
        let mut next = group_view();
        next.members[0].role = Role::Facilitator; // ben
        assert_eq!(reconciled(&mut doc, &next), 1);
        assert_eq!(
            facilitators(&doc, 2_000).unwrap(),
            [MemberId::from("ana"), MemberId::from("ben")]
        );

        // Ana suspends Ben, the guest loses the expiry, and Ben's old entry keys go.
        next.members[0].status = MemberStatus::Suspended;
        next.members[2].expires_ms = None;
        assert_eq!(reconciled(&mut doc, &next), 2);
        assert_eq!(role_of(&doc, &"ben".into(), 2_000).unwrap(), None);
        assert!(!member(&doc, &"ben".into())
            .unwrap()
            .unwrap()
            .can_write(2_000));
        assert_eq!(
            member(&doc, &"gus".into()).unwrap().unwrap().expires_ms,
            None
        );

        // A new code of conduct, and a member who is no longer listed.
        next.members.retain(|m| m.member_id.as_str() != "gus");
        next.code_of_conduct = CodeOfConduct {
            version: 2,
            text: "We keep what is said here. No recordings.".into(),
        };
        assert_eq!(reconciled(&mut doc, &next), 3);
        assert_eq!(member(&doc, &"gus".into()).unwrap(), None);
        let code = code_of_conduct(&doc).unwrap();
        assert_eq!(code.version, 2);
        let ana = member(&doc, &"ana".into()).unwrap().unwrap();
        assert!(!ana.has_accepted(&code), "accepted version 1 only");
        assert_eq!(reconciled(&mut doc, &next), 0);
    }

    #[test]
    fn a_guest_is_a_member_only_until_their_access_expires() {
        let mut doc = Automerge::new();
        reconciled(&mut doc, &group_view());
        let gus = member(&doc, &"gus".into()).unwrap().unwrap();
        assert!(gus.is_active(4_999));
        assert!(!gus.is_active(5_000));
        assert!(!gus.can_write(4_999), "observers only read");
        assert_eq!(
            role_of(&doc, &"gus".into(), 4_999).unwrap(),
            Some(Role::Observer)
        );
        assert_eq!(role_of(&doc, &"gus".into(), 5_000).unwrap(), None);
    }

    #[test]
    fn what_the_view_lacks_is_deleted_and_conflicts_are_resolved() {
        let mut doc = Automerge::new();
        reconciled(&mut doc, &group_view());
        // Two writers (a later multi-relay setup, a restore) change the same fields.
        let mut other = doc.fork();
        let mut tx = doc.transaction();
        let members = fields::object(&tx, &ROOT, MEMBERS).unwrap().unwrap();
        let ana = fields::object(&tx, &members, "ana").unwrap().unwrap();
        tx.put(&ana, PSEUDONYM, "Ana B").unwrap();
        tx.put(&ana, "left", true).unwrap();
        tx.put(ROOT, "stray", 1).unwrap();
        tx.commit();
        let mut tx = other.transaction();
        let members = fields::object(&tx, &ROOT, MEMBERS).unwrap().unwrap();
        let ana = fields::object(&tx, &members, "ana").unwrap().unwrap();
        tx.put(&ana, PSEUDONYM, "Ana C").unwrap();
        tx.commit();
        doc.merge(&mut other).unwrap();

        assert!(reconciled(&mut doc, &group_view()) > 0);
        assert_eq!(reconciled(&mut doc, &group_view()), 0);
        let members = fields::object(&doc, &ROOT, MEMBERS).unwrap().unwrap();
        let ana = fields::object(&doc, &members, "ana").unwrap().unwrap();
        assert_eq!(doc.get_all(&ana, PSEUDONYM).unwrap().len(), 1);
        assert_eq!(doc.get(&ana, "left").unwrap(), None);
        assert_eq!(doc.get(ROOT, "stray").unwrap(), None);
        assert_eq!(
            member(&doc, &"ana".into()).unwrap().unwrap().pseudonym,
            "Ana"
        );
    }

    #[test]
    fn reconcile_refuses_other_documents_and_duplicate_members_untouched() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        schema::stamp(&mut tx, DocKind::Settings).unwrap();
        tx.commit();
        let heads = doc.get_heads();
        let mut tx = doc.transaction();
        assert!(matches!(
            reconcile(&mut tx, &group_view()),
            Err(RosterError::Schema(SchemaError::WrongKind { .. }))
        ));
        assert_eq!(tx.pending_ops(), 0);
        tx.commit();

        let mut twice = group_view();
        twice.members.push(entry("ana", "Other Ana", Role::Member));
        let mut fresh = Automerge::new();
        let mut tx = fresh.transaction();
        assert!(matches!(
            reconcile(&mut tx, &twice),
            Err(RosterError::DuplicateMember(m)) if m.as_str() == "ana"
        ));
        assert_eq!(tx.pending_ops(), 0);
        tx.commit();
        assert_eq!(doc.get_heads(), heads);
    }

    #[test]
    fn the_view_has_a_stable_json_form() {
        let view = RosterView {
            members: vec![
                entry("ana", "Ana", Role::Organiser),
                RosterMember {
                    status: MemberStatus::Suspended,
                    expires_ms: Some(9),
                    ..entry("gus", "Guest", Role::Observer)
                },
            ],
            code_of_conduct: CodeOfConduct {
                version: 3,
                text: "Be kind.".into(),
            },
        };
        let json = serde_json::to_string(&view).unwrap();
        assert_eq!(
            json,
            r#"{"members":[{"memberId":"ana","pseudonym":"Ana","role":"organiser","status":"active","acceptedVersion":1,"joinedMs":1000},{"memberId":"gus","pseudonym":"Guest","role":"observer","status":"suspended","acceptedVersion":1,"joinedMs":1000,"expiresMs":9}],"codeOfConduct":{"version":3,"text":"Be kind."}}"#
        );
        assert_eq!(serde_json::from_str::<RosterView>(&json).unwrap(), view);
    }

    #[test]
    fn readers_refuse_a_document_that_is_not_a_roster() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        schema::stamp(&mut tx, DocKind::Index).unwrap();
        tx.commit();
        assert!(matches!(
            members(&doc),
            Err(RosterError::Schema(SchemaError::WrongKind { .. }))
        ));
        assert!(matches!(
            members(&Automerge::new()),
            Err(RosterError::Schema(SchemaError::Missing))
        ));
    }
}
