//! The membership state: records as stored, and the in-memory tables access checks read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{role_name, AuditEntry, BoundKind, GroupId, Identity, MemberStatus};
use crate::docs::group::Role;
use crate::ids::{DeviceId, DocumentId, MemberId};

/// A group as the relay keeps it (its profile lives in its settings document).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group.
    pub id: GroupId,
    /// The code of conduct's version (from 1; increases with every change of the text).
    pub coc_version: u64,
    /// The code of conduct's text (shown before acceptance; never logged).
    pub coc_text: String,
    /// When it was created (Unix ms).
    pub created_ms: u64,
    /// The membership view the relay writes.
    pub roster: DocumentId,
    /// The settings document, once registered.
    pub settings: Option<DocumentId>,
    /// The document index, once registered.
    pub index: Option<DocumentId>,
    /// When it was deleted (Unix ms): nobody sees it until it is restored, and it is
    /// purged after the grace period. Absent in records written before deletion existed.
    #[serde(default)]
    pub deleted_ms: Option<u64>,
}

/// A device and the hash of its credential's secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its member.
    pub member: MemberId,
    /// The device.
    pub device: DeviceId,
    /// SHA-256 of the current credential's secret (hex).
    pub secret_hash: String,
    /// When it was added (Unix ms).
    pub created_ms: u64,
    /// When it was revoked (Unix ms); a revoked device is refused for good.
    pub revoked_ms: Option<u64>,
}

/// A member's place in a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    /// The group.
    pub group: GroupId,
    /// The member.
    pub member: MemberId,
    /// Their role.
    #[serde(with = "role_name")]
    pub role: Role,
    /// Their status.
    pub status: MemberStatus,
    /// The code-of-conduct version they accepted (0: none).
    pub accepted_version: u64,
    /// Their pseudonym in this group (never logged).
    pub pseudonym: String,
    /// When they joined (Unix ms).
    pub joined_ms: u64,
    /// A guest's one meeting: they read this document and nothing else.
    pub meeting: Option<DocumentId>,
    /// When a guest's access ends (Unix ms).
    pub expires_ms: Option<u64>,
}

/// An invite; only the hash of its code is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// SHA-256 of the code (hex).
    pub code_hash: String,
    /// The group.
    pub group: GroupId,
    /// The role it gives.
    #[serde(with = "role_name")]
    pub role: Role,
    /// When it stops working (Unix ms).
    pub expires_ms: u64,
    /// How many times it may be redeemed.
    pub max_uses: u32,
    /// How many times it has been.
    pub uses: u32,
    /// A guest invite's one meeting.
    pub meeting: Option<DocumentId>,
    /// How long access lasts after redeeming (ms), for guests.
    pub access_ms: Option<u64>,
    /// Who made it (`None`: the operator's bootstrap).
    pub created_by: Option<MemberId>,
}

/// A device-link code; only its hash is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCodeRecord {
    /// SHA-256 of the code (hex).
    pub code_hash: String,
    /// The member the new device joins.
    pub member: MemberId,
    /// When it stops working (Unix ms).
    pub expires_ms: u64,
    /// Whether it has been used (one use).
    pub used: bool,
}

/// Which group a document belongs to, and what it is. Never changes once written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingRecord {
    /// The document.
    pub document: DocumentId,
    /// Its group.
    pub group: GroupId,
    /// Its kind.
    pub kind: BoundKind,
    /// Who registered it (`None`: the relay's own roster).
    pub registrant: Option<MemberId>,
    /// When (Unix ms).
    pub created_ms: u64,
}

/// The operator's override of one group's quota (`None`: the relay's default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRecord {
    /// The group.
    pub group: GroupId,
    /// Documents the group may have bound.
    pub documents: Option<usize>,
    /// Bytes the relay stores for the group at most.
    pub bytes: Option<u64>,
}

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "table", rename_all = "lowercase")]
pub enum Record {
    /// A group.
    Group(GroupRecord),
    /// A device.
    Device(DeviceRecord),
    /// A membership.
    Membership(MembershipRecord),
    /// An invite.
    Invite(InviteRecord),
    /// A device-link code.
    LinkCode(LinkCodeRecord),
    /// A document's binding.
    Binding(BindingRecord),
    /// A group's quota override.
    Quota(QuotaRecord),
}

impl Record {
    /// The record's key: which record it replaces.
    pub fn key(&self) -> RecordKey {
        match self {
            Record::Group(r) => RecordKey::Group(r.id.clone()),
            Record::Device(r) => RecordKey::Device(r.member.clone(), r.device.clone()),
            Record::Membership(r) => RecordKey::Membership(r.group.clone(), r.member.clone()),
            Record::Invite(r) => RecordKey::Invite(r.code_hash.clone()),
            Record::LinkCode(r) => RecordKey::LinkCode(r.code_hash.clone()),
            Record::Binding(r) => RecordKey::Binding(r.document),
            Record::Quota(r) => RecordKey::Quota(r.group.clone()),
        }
    }

    /// The table and the record's id in it (its storage key under the membership prefix).
    pub fn table_and_id(&self) -> (&'static str, String) {
        self.key().table_and_id()
    }
}

/// Which record: a deletion names the record it removes by this.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    /// A group.
    Group(GroupId),
    /// A device of a member.
    Device(MemberId, DeviceId),
    /// A member's place in a group.
    Membership(GroupId, MemberId),
    /// An invite, by its code's hash.
    Invite(String),
    /// A device-link code, by its hash.
    LinkCode(String),
    /// A document's binding.
    Binding(DocumentId),
    /// A group's quota override.
    Quota(GroupId),
}

impl RecordKey {
    /// The table and the record's id in it (its storage key under the membership prefix).
    pub fn table_and_id(&self) -> (&'static str, String) {
        match self {
            RecordKey::Group(g) => ("group", g.to_string()),
            RecordKey::Device(m, d) => ("device", format!("{m}/{d}")),
            RecordKey::Membership(g, m) => ("membership", format!("{g}/{m}")),
            RecordKey::Invite(h) => ("invite", h.clone()),
            RecordKey::LinkCode(h) => ("link", h.clone()),
            RecordKey::Binding(d) => ("binding", d.to_string()),
            RecordKey::Quota(g) => ("quota", g.to_string()),
        }
    }
}

/// One change as it is committed: records written, records deleted and the audit entries
/// that describe it, durable together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commit {
    /// Records to write (each replaces the one with its key).
    pub records: Vec<Record>,
    /// Records to delete.
    pub deletions: Vec<RecordKey>,
    /// Audit entries, their `seq` given.
    pub audit: Vec<AuditEntry>,
}

impl Commit {
    /// A commit that writes `records`.
    pub fn of(records: Vec<Record>) -> Commit {
        Commit {
            records,
            ..Commit::default()
        }
    }

    /// With one more audit entry.
    pub fn audit(mut self, entry: AuditEntry) -> Commit {
        self.audit.push(entry);
        self
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.deletions.is_empty() && self.audit.is_empty()
    }
}

/// Every record, indexed for the access checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipState {
    /// Groups by id.
    pub groups: BTreeMap<GroupId, GroupRecord>,
    /// Devices by (member, device).
    pub devices: BTreeMap<(MemberId, DeviceId), DeviceRecord>,
    /// Memberships by (group, member).
    pub memberships: BTreeMap<(GroupId, MemberId), MembershipRecord>,
    /// Invites by code hash.
    pub invites: BTreeMap<String, InviteRecord>,
    /// Link codes by code hash.
    pub link_codes: BTreeMap<String, LinkCodeRecord>,
    /// Document bindings by document.
    pub bindings: BTreeMap<DocumentId, BindingRecord>,
    /// Quota overrides by group.
    pub quotas: BTreeMap<GroupId, QuotaRecord>,
    /// The `seq` the next audit entry gets (0 or 1: the log is empty).
    pub next_audit_seq: u64,
}

impl MembershipState {
    /// Applies one record (insert or replace).
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Group(r) => {
                self.groups.insert(r.id.clone(), r);
            }
            Record::Device(r) => {
                self.devices.insert((r.member.clone(), r.device.clone()), r);
            }
            Record::Membership(r) => {
                self.memberships
                    .insert((r.group.clone(), r.member.clone()), r);
            }
            Record::Invite(r) => {
                self.invites.insert(r.code_hash.clone(), r);
            }
            Record::LinkCode(r) => {
                self.link_codes.insert(r.code_hash.clone(), r);
            }
            Record::Binding(r) => {
                self.bindings.insert(r.document, r);
            }
            Record::Quota(r) => {
                self.quotas.insert(r.group.clone(), r);
            }
        }
    }

    /// Removes one record (nothing if it is not there).
    pub fn remove(&mut self, key: &RecordKey) {
        match key {
            RecordKey::Group(g) => {
                self.groups.remove(g);
            }
            RecordKey::Device(m, d) => {
                self.devices.remove(&(m.clone(), d.clone()));
            }
            RecordKey::Membership(g, m) => {
                self.memberships.remove(&(g.clone(), m.clone()));
            }
            RecordKey::Invite(h) => {
                self.invites.remove(h);
            }
            RecordKey::LinkCode(h) => {
                self.link_codes.remove(h);
            }
            RecordKey::Binding(d) => {
                self.bindings.remove(d);
            }
            RecordKey::Quota(g) => {
                self.quotas.remove(g);
            }
        }
    }

    /// Applies a committed change: its records, then its deletions, then counts its audit
    /// entries.
    pub fn apply_commit(&mut self, commit: Commit) {
        for r in commit.records {
            self.apply(r);
        }
        for k in &commit.deletions {
            self.remove(k);
        }
        if let Some(last) = commit.audit.iter().map(|e| e.seq).max() {
            self.next_audit_seq = self.next_audit_seq.max(last + 1);
        }
    }

    /// The device record of an identity, if it exists and is not revoked.
    pub fn active_device(&self, who: &Identity) -> Option<&DeviceRecord> {
        self.devices
            .get(&(who.member.clone(), who.device.clone()))
            .filter(|d| d.revoked_ms.is_none())
    }

    /// A member's membership of a group (any status).
    pub fn membership(&self, group: &GroupId, member: &MemberId) -> Option<&MembershipRecord> {
        self.memberships.get(&(group.clone(), member.clone()))
    }

    /// Memberships of one member (any status).
    pub fn memberships_of<'a>(
        &'a self,
        member: &'a MemberId,
    ) -> impl Iterator<Item = &'a MembershipRecord> + 'a {
        self.memberships
            .values()
            .filter(move |m| &m.member == member)
    }

    /// Memberships of one group (any status).
    pub fn members_of<'a>(
        &'a self,
        group: &'a GroupId,
    ) -> impl Iterator<Item = &'a MembershipRecord> + 'a {
        self.memberships
            .range((group.clone(), MemberId::from(""))..)
            .take_while(move |((g, _), _)| g == group)
            .map(|(_, m)| m)
    }

    /// Whether the membership is active and, for a guest, not expired at `now_ms`.
    pub fn is_current(m: &MembershipRecord, now_ms: u64) -> bool {
        m.status == MemberStatus::Active && m.expires_ms.is_none_or(|t| now_ms < t)
    }

    /// Whether `member` may see group content at `now_ms`: a current membership that
    /// accepted the group's current code of conduct.
    pub fn may_see(&self, group: &GroupId, member: &MemberId, now_ms: u64) -> bool {
        let (Some(g), Some(m)) = (self.groups.get(group), self.membership(group, member)) else {
            return false;
        };
        g.deleted_ms.is_none() && Self::is_current(m, now_ms) && m.accepted_version == g.coc_version
    }

    /// The earliest guest expiry after `now_ms`, so a host can re-check access then.
    pub fn next_expiry(&self, now_ms: u64) -> Option<u64> {
        self.memberships
            .values()
            .filter(|m| m.status == MemberStatus::Active)
            .filter_map(|m| m.expires_ms)
            .filter(|&t| t > now_ms)
            .min()
    }
}
