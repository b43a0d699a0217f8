//! The audit log: what changed in membership and who did it, by id only.
//!
//! An entry never holds a pseudonym, a code of conduct's text, an invite or link code or
//! a credential: an operator reads the log, exports it and keeps it for a year, so it
//! must be safe to hand over. Each entry is committed in the same durable batch as the
//! change it records (both survive a crash, or neither).

use serde::{Deserialize, Serialize};

use super::{GroupId, Identity};
use crate::docs::group::Role;
use crate::ids::{DeviceId, MemberId};

/// What an audit entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A group was created (bootstrap, the admin API or an organiser).
    GroupCreated,
    /// An invite was created (never its code).
    InviteCreated,
    /// An invite was redeemed: `member` joined `group` with `role` on `device`.
    InviteRedeemed,
    /// A device was linked to a member.
    DeviceLinked,
    /// A group's code of conduct changed (never its text).
    CodeOfConductChanged,
    /// A member's role changed to `role`.
    RoleChanged,
    /// A member was suspended.
    Suspended,
    /// A suspended member was reinstated.
    Reinstated,
    /// A member was removed.
    Removed,
    /// A member left.
    Left,
    /// A device was revoked.
    DeviceRevoked,
    /// A device's credential was rotated.
    CredentialRotated,
    /// Credentials were refused (`count` of them; rate-limited by the relay).
    CredentialFailed,
    /// A member erased their account (or the operator did).
    MemberErased,
    /// A group was deleted (restorable during the grace period).
    GroupDeleted,
    /// A deleted group was restored.
    GroupRestored,
    /// A deleted group was destroyed after its grace period.
    GroupPurged,
    /// A group's quota was changed by the operator.
    QuotaChanged,
    /// The operator created an organiser invite.
    OperatorInvite,
    /// A backup was taken.
    BackupTaken,
    /// The relay was restored from a backup.
    Restored,
    /// The operator's token was rotated.
    OperatorTokenRotated,
}

/// Who made a change.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Actor {
    /// The relay's operator (the admin API, the command line, bootstrap).
    Operator,
    /// The relay itself (retention, purges, credential failures, backups).
    Relay,
    /// A member, from one of their devices.
    Member {
        /// The member.
        member: MemberId,
        /// The device they used.
        device: DeviceId,
    },
}

impl Actor {
    /// The member acting from the device `who`.
    pub fn member(who: &Identity) -> Actor {
        Actor::Member {
            member: who.member.clone(),
            device: who.device.clone(),
        }
    }

    /// The device identity of a member actor.
    pub fn identity(&self) -> Option<Identity> {
        match self {
            Actor::Member { member, device } => Some(Identity {
                member: member.clone(),
                device: device.clone(),
            }),
            Actor::Operator | Actor::Relay => None,
        }
    }
}

/// One audit entry (ids, a role and a count; never content, names, codes or tokens).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its place in the log (from 1, increasing, never reused).
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// What happened.
    pub kind: AuditKind,
    /// Who did it.
    pub actor: Actor,
    /// The group concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    /// The member concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<MemberId>,
    /// The device concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// The role given or changed to, by name.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_role_name"
    )]
    pub role: Option<Role>,
    /// How many (credential failures, documents purged, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl AuditEntry {
    /// An entry with no subject yet; the service gives it its `seq` when it commits.
    pub fn new(kind: AuditKind, actor: Actor, at_ms: u64) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at_ms,
            kind,
            actor,
            group: None,
            member: None,
            device: None,
            role: None,
            count: None,
        }
    }

    /// With the group concerned.
    pub fn group(mut self, group: &GroupId) -> Self {
        self.group = Some(group.clone());
        self
    }

    /// With the member concerned.
    pub fn member(mut self, member: &MemberId) -> Self {
        self.member = Some(member.clone());
        self
    }

    /// With the device concerned.
    pub fn device(mut self, device: &DeviceId) -> Self {
        self.device = Some(device.clone());
        self
    }

    /// With a role.
    pub fn role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }

    /// With a count.
    pub fn count(mut self, count: u64) -> Self {
        self.count = Some(count);
        self
    }

    /// Whether the entry is about `member` or was made by them.
    pub fn concerns(&self, member: &MemberId) -> bool {
        self.member.as_ref() == Some(member)
            || matches!(&self.actor, Actor::Member { member: m, .. } if m == member)
    }

    /// The entry as one line of JSON (no newline), for JSON-lines exports.
    pub fn to_json_line(&self) -> String {
        // A struct of strings and integers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Serde for an optional role by its stored name.
mod opt_role_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::docs::group::Role;

    pub(super) fn serialize<S: Serializer>(role: &Option<Role>, s: S) -> Result<S::Ok, S::Error> {
        match role {
            Some(r) => s.serialize_some(r.name()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Role>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(name) => Role::from_name(&name)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("unknown role")),
        }
    }
}
