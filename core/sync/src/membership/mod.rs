//! Relay-authoritative membership: groups, members and their roles, devices and their
//! credentials, invites, and which group each document belongs to.
//!
//! The relay decides who may read and write every document from this state alone, never
//! from document content. The parts:
//! - [`Membership`]: the service the relay's HTTP API calls. Every change is committed to
//!   a [`MembershipStore`] (durable before the call returns: the same rule as documents)
//!   and only then applied to the in-memory state that access checks read.
//! - [`MembershipAccess`]: the engine's [`Access`](crate::engine::Access) over that
//!   in-memory state. It does no IO, so the sans-IO engine can consult it on every message.
//! - [`MembershipStore`]: where the state lives. [`KvMembershipStore`] keeps it in any
//!   [`Storage`](crate::store::Storage) (the relay's sled store) beside the documents; a
//!   later PostgreSQL store implements the same trait.
//! - Several relays on one shared store: each change takes a cluster-wide lock and
//!   reloads the state before its check; [`Membership::reload`] brings in what the other
//!   relays changed and [`ExternalChanges`] says what the relay must close or rewrite.
//! - [`api`]: the HTTP API's bodies, shared by the relay and the client.
//! - credentials, invite and link codes: random from the OS, stored only as hashes.
//!
//! ## Who may do what
//! A member *may see* a group while their membership is active, not expired (guests), and
//! they have accepted the group's current code of conduct. Each document is bound to one
//! group with one [`BoundKind`]:
//!
//! | kind | read | write (sync) |
//! |---|---|---|
//! | settings | may see the group | organisers |
//! | roster (the membership view) | may see the group | nobody: the relay writes it |
//! | index, series, meeting, resources, thread | may see the group | every role but observer and alumnus |
//! | report (one per reporter) | facilitators, organisers and the member who registered it | the same |
//!
//! A guest invited to one meeting reads that meeting's document and nothing else. A
//! document bound to no group is read and written by nobody, so the relay never stores it.

pub mod api;
mod audit;
mod credential;
mod policy;
mod reload;
mod restore;
mod roster;
mod service;
mod state;
mod store;

use serde::{Deserialize, Serialize};

pub use audit::{Actor, AuditEntry, AuditKind};
pub use credential::{
    hash_secret, normalise_code, os_random, random_code, random_id, secret_matches, Credential,
    CredentialError, Identity, CODE_CHARS, ID_HEX, SECRET_HEX,
};
pub use policy::MembershipAccess;
pub use reload::ExternalChanges;
pub use restore::Replayed;
pub use service::{Membership, MembershipError, Quotas, LINK_CODE_MS, SHARED_LOCK};
pub use state::{
    BindingRecord, Commit, DeviceRecord, GroupRecord, InviteRecord, LinkCodeRecord,
    MembershipRecord, MembershipState, QuotaRecord, Record, RecordKey,
};
pub use store::{KvMembershipStore, MembershipStore, AUDIT_PREFIX, KEY_PREFIX};

crate::ids::string_id!(
    /// A group's id (16 hex characters; not secret).
    GroupId
);

/// What a document bound to a group is: decides who may read and write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoundKind {
    /// Group settings: organisers write, members read.
    Settings,
    /// The membership view: the relay writes, members read.
    Roster,
    /// The group's document index.
    Index,
    /// A recurring meeting series.
    Series,
    /// One meeting.
    Meeting,
    /// The resource list.
    Resources,
    /// A discussion thread.
    Thread,
    /// One member's reports to the facilitators.
    Report,
}

impl BoundKind {
    /// Every kind.
    pub const ALL: [BoundKind; 8] = [
        BoundKind::Settings,
        BoundKind::Roster,
        BoundKind::Index,
        BoundKind::Series,
        BoundKind::Meeting,
        BoundKind::Resources,
        BoundKind::Thread,
        BoundKind::Report,
    ];

    /// The name used on the wire and in the store.
    pub const fn name(self) -> &'static str {
        match self {
            BoundKind::Settings => "settings",
            BoundKind::Roster => "roster",
            BoundKind::Index => "index",
            BoundKind::Series => "series",
            BoundKind::Meeting => "meeting",
            BoundKind::Resources => "resources",
            BoundKind::Thread => "thread",
            BoundKind::Report => "report",
        }
    }
}

/// Where a member stands in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// A member.
    Active,
    /// Suspended by a facilitator: reads and writes nothing until reinstated.
    Suspended,
    /// Left the group.
    Left,
    /// Removed by a facilitator or organiser.
    Removed,
}

/// Serde for [`Role`](crate::docs::group::Role) by its stored name (`organiser`, …).
pub(crate) mod role_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::docs::group::Role;

    pub(crate) fn serialize<S: Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(role.name())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let name = String::deserialize(d)?;
        Role::from_name(&name).ok_or_else(|| serde::de::Error::custom("unknown role"))
    }
}

#[cfg(test)]
mod tests;
