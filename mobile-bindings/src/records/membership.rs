//! The relay's membership records (invites, members, devices).

use cairn_core::app::membership::{DeviceRecord, InviteCode, InviteRequest, MembershipRecord};
use cairn_sync::docs::group::Role;
use cairn_sync::membership::MemberStatus;

/// A member as the relay holds them (organisers and facilitators see everyone; others
/// see active members).
#[uniffi::remote(Record)]
pub struct MembershipRecord {
    /// The member's id.
    pub member_id: String,
    /// Their pseudonym in this group.
    pub pseudonym: String,
    /// Their role.
    pub role: Role,
    /// Their standing.
    pub status: MemberStatus,
    /// The code-of-conduct version they accepted (0: none).
    pub accepted_version: u64,
    /// When they joined (ms since the Unix epoch).
    pub joined_ms: u64,
    /// When a guest's access ends, if it does.
    pub expires_ms: Option<u64>,
    /// The one meeting a guest may read.
    pub meeting_id: Option<String>,
}

/// A new invite to hand out (as text, link or QR code).
#[uniffi::remote(Record)]
pub struct InviteCode {
    /// The code to type.
    pub code: String,
    /// The `cairn://invite/…` link (for a QR code).
    pub link: String,
    /// When it expires (ms since the Unix epoch).
    pub expires_ms: u64,
    /// How many people may use it.
    pub max_uses: u32,
}

/// What an organiser asks for in an invite.
#[uniffi::remote(Record)]
pub struct InviteRequest {
    /// The role it gives.
    pub role: Role,
    /// How long the code stays valid, in seconds.
    pub expires_in_secs: u64,
    /// How many people may use it.
    pub max_uses: u32,
    /// For a one-meeting guest: the meeting they may read.
    pub meeting_id: Option<String>,
    /// For a guest: how long their access lasts after joining, in seconds.
    pub access_expires_in_secs: Option<u64>,
}

/// One of the member's devices.
#[uniffi::remote(Record)]
pub struct DeviceRecord {
    /// The device's id.
    pub device_id: String,
    /// When it was enrolled (ms since the Unix epoch).
    pub created_ms: u64,
    /// Whether it has been revoked.
    pub revoked: bool,
}
