//! The device's groups, invites and enrolment.

use cairn_core::app::workspace::{Enrolment, GroupSummary, InviteRecord};
use cairn_sync::docs::group::Role;
use cairn_sync::membership::MemberStatus;

/// One of this device's groups, as its relay says.
#[uniffi::remote(Record)]
pub struct GroupSummary {
    /// The group's id.
    pub group_id: String,
    /// The websocket URL of the relay the group lives on.
    pub relay_url: String,
    /// This member's role in it.
    pub role: Role,
    /// This member's standing (active, suspended, left, removed).
    pub status: MemberStatus,
    /// The version of the code of conduct in force.
    pub code_of_conduct_version: u64,
    /// The version this member accepted (0: none). Until it matches, the group's documents
    /// stay closed to this device: show the code of conduct and [`Workspace::accept_code_of_conduct`].
    pub accepted_version: u64,
    /// When an organiser deleted the group (ms since the Unix epoch): nobody syncs it, and
    /// its organisers may [restore](Group::restore) it until the relay's grace period
    /// ends. `None` for a group in use.
    pub deleted_ms: Option<u64>,
}

/// What an invite offers, to show before joining.
#[uniffi::remote(Record)]
pub struct InviteRecord {
    /// The group's id.
    pub group_id: String,
    /// The role the invite gives.
    pub role: Role,
    /// When the invite expires (ms since the Unix epoch).
    pub expires_ms: u64,
    /// The version of the group's code of conduct.
    pub code_of_conduct_version: u64,
    /// The code of conduct to read before joining.
    pub code_of_conduct: String,
}

/// A device newly enrolled with a relay by an invite.
#[uniffi::remote(Record)]
pub struct Enrolment {
    /// The relay's websocket URL.
    pub relay_url: String,
    /// The group joined.
    pub group_id: String,
    /// This member's id on that relay.
    pub member_id: String,
    /// This device's id on that relay.
    pub device_id: String,
    /// The device credential for that relay, given once when the device was new there:
    /// keep it in the platform keystore now and pass it in [`crate::app::RelayConfig`] at
    /// every start. `None` when the device was already enrolled there (its credential
    /// stays what it was).
    pub credential: Option<String>,
}
