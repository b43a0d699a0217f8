//! The cairn-sync enums the records carry: a member's role and status.

use cairn_sync::docs::group::Role;
use cairn_sync::membership::MemberStatus;

/// A member's role in the group. Decided by the relay (organisers change it through the
/// relay's API); the roster shows it.
#[uniffi::remote(Enum)]
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

/// Where a member stands in a group.
#[uniffi::remote(Enum)]
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
