//! The relay's membership HTTP API as data: request and response bodies (JSON), shared by
//! the relay that serves them and the client that calls them, and the error body.
//!
//! Paths (all under `/v1`, JSON bodies, `Authorization: Bearer <token>` or `?token=`):
//!
//! | method and path | auth | body → answer |
//! |---|---|---|
//! | `GET /v1/invites/{code}` | none | → [`InvitePreview`] |
//! | `POST /v1/invites/redeem` | none (new device) or a device (its member joins) | [`RedeemInvite`] → [`Redeemed`] |
//! | `POST /v1/groups` | device | [`CreateGroup`] → [`GroupInfo`] |
//! | `GET /v1/groups` | device | → `[GroupInfo]` |
//! | `GET /v1/groups/{g}/code-of-conduct` | member (before accepting too) | → [`CodeOfConduct`] |
//! | `PUT /v1/groups/{g}/code-of-conduct` | organiser | [`SetCodeOfConduct`] → [`CodeOfConduct`] |
//! | `POST /v1/groups/{g}/code-of-conduct/accept` | member | [`AcceptCodeOfConduct`] → 204 |
//! | `GET /v1/groups/{g}/members` | member who accepted | → `[MemberInfo]` |
//! | `PUT /v1/groups/{g}/members/{m}/role` | organiser | [`SetRole`] → [`MemberInfo`] |
//! | `POST /v1/groups/{g}/members/{m}/suspend`, `…/reinstate` | facilitator, organiser | → [`MemberInfo`] |
//! | `DELETE /v1/groups/{g}/members/{m}` | facilitator, organiser; the member (leave) | → 204 |
//! | `PUT /v1/groups/{g}/me/pseudonym` | member | [`SetPseudonym`] → 204 |
//! | `POST /v1/groups/{g}/invites` | organiser | [`CreateInvite`] → [`Invite`] |
//! | `POST /v1/groups/{g}/documents` | writer of that kind | [`RegisterDocument`] → 201 [`RegisterDocument`] |
//! | `POST /v1/devices/link-codes` | device | → [`LinkCode`] |
//! | `POST /v1/devices/link` | none | [`LinkDevice`] → [`Redeemed`] |
//! | `GET /v1/devices` | device | → `[DeviceInfo]` |
//! | `POST /v1/devices/self/rotate` | device | → [`Rotated`] |
//! | `DELETE /v1/devices/{d}` | a device of the same member | → 204 |
//!
//! Errors answer with a status and an [`ApiError`] body; `Retry-After` (seconds) comes with 429.

use serde::{Deserialize, Serialize};

use super::{BoundKind, GroupId, MemberStatus};
use crate::docs::group::Role;
use crate::ids::{DeviceId, DocumentId, MemberId, PeerId};

/// The path prefix of every membership call.
pub const PREFIX: &str = "/v1";

/// The error body of every failed call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A fixed code: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `invite_expired`, `quota_exceeded`, `unavailable`.
    pub error: String,
    /// What went wrong, for a developer (never content, names or tokens).
    pub message: String,
}

/// What an invite offers, shown before redeeming it (with the code of conduct to read first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitePreview {
    /// The group.
    pub group_id: GroupId,
    /// The role the invite gives.
    #[serde(with = "super::role_name")]
    pub role: Role,
    /// When the invite stops working (Unix ms).
    pub expires_ms: u64,
    /// The group's current code of conduct.
    pub code_of_conduct: CodeOfConduct,
}

/// Redeems an invite.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemInvite {
    /// The invite code (or the whole `cairn://invite/…` link).
    pub code: String,
    /// The pseudonym to use in this group.
    pub pseudonym: String,
}

/// A device's identity after redeeming an invite or linking a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeemed {
    /// The member (the same on all of a person's devices).
    pub member_id: MemberId,
    /// This device.
    pub device_id: DeviceId,
    /// The peer id this device must use in `join` (`member/device`).
    pub peer_id: PeerId,
    /// The device's credential, returned once: keep it in the platform keystore. `None`
    /// when an existing device redeemed an invite (it keeps its credential).
    pub token: Option<String>,
    /// The group joined (`None` when linking a device).
    pub group: Option<GroupInfo>,
}

/// Creates a group; the caller becomes its first organiser.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGroup {
    /// The caller's pseudonym in the new group.
    pub pseudonym: String,
    /// The code of conduct members accept before seeing content.
    pub code_of_conduct: String,
}

/// The documents the relay knows a group by.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDocuments {
    /// The membership view, written by the relay alone.
    pub roster: Option<DocumentId>,
    /// Group settings (organisers write), once registered.
    pub settings: Option<DocumentId>,
    /// The group's document index (members write), once registered.
    pub index: Option<DocumentId>,
    /// The report documents the caller may read: all of the group's for facilitators and
    /// organisers, a member's own otherwise. Reports are not in the index, which every
    /// member reads: a listed report would tell them someone reported.
    #[serde(default)]
    pub reports: Vec<DocumentId>,
}

/// One of the caller's groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group.
    pub group_id: GroupId,
    /// The caller's role.
    #[serde(with = "super::role_name")]
    pub role: Role,
    /// The caller's status.
    pub status: MemberStatus,
    /// The code-of-conduct version the caller accepted (0: none).
    pub accepted_version: u64,
    /// The current code-of-conduct version: content is readable once the two match.
    pub code_of_conduct_version: u64,
    /// The group's well-known documents.
    pub documents: GroupDocuments,
    /// When the group was deleted (Unix ms): only its organisers still see it listed, and
    /// may restore it until the relay purges it.
    #[serde(default)]
    pub deleted_ms: Option<u64>,
}

/// A code of conduct.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeOfConduct {
    /// Increases with every change of the text.
    pub version: u64,
    /// The text.
    pub text: String,
}

/// Replaces the code of conduct (every member accepts the new version before reading on).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetCodeOfConduct {
    /// The new text.
    pub text: String,
}

/// Accepts a version of the code of conduct.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptCodeOfConduct {
    /// The version read (must be the current one).
    pub version: u64,
}

/// A member of a group, as members see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member.
    pub member_id: MemberId,
    /// Their role.
    #[serde(with = "super::role_name")]
    pub role: Role,
    /// Their status.
    pub status: MemberStatus,
    /// The code-of-conduct version they accepted (0: none).
    pub accepted_version: u64,
    /// Their pseudonym in this group.
    pub pseudonym: String,
    /// When they joined (Unix ms).
    pub joined_ms: u64,
    /// When a guest's access ends (Unix ms).
    pub expires_ms: Option<u64>,
    /// The one meeting a guest may read.
    pub meeting: Option<DocumentId>,
}

/// Changes a member's role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRole {
    /// The new role.
    #[serde(with = "super::role_name")]
    pub role: Role,
}

/// Changes the caller's pseudonym in a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPseudonym {
    /// The new pseudonym.
    pub pseudonym: String,
}

/// Creates an invite.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateInvite {
    /// The role it gives.
    #[serde(with = "super::role_name")]
    pub role: Role,
    /// Seconds until the invite stops working.
    pub expires_in_secs: u64,
    /// How many times it may be redeemed.
    pub max_uses: u32,
    /// A guest invite for one meeting: the invitee may read only this document (the role
    /// must then be observer).
    #[serde(default)]
    pub meeting: Option<DocumentId>,
    /// How long the invitee's access lasts after redeeming (guests).
    #[serde(default)]
    pub access_expires_in_secs: Option<u64>,
}

/// A new invite: the code is shown once (the relay keeps only its hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The code.
    pub code: String,
    /// The QR-friendly link form, `cairn://invite/{code}`.
    pub link: String,
    /// When it stops working (Unix ms).
    pub expires_ms: u64,
    /// How many times it may be redeemed.
    pub max_uses: u32,
}

/// Binds a new document to a group (before its first sync).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterDocument {
    /// The document.
    pub document_id: DocumentId,
    /// What it is; decides who may read and write it.
    pub kind: BoundKind,
}

/// A one-time code to link another device to the caller's member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCode {
    /// The code (shown once; valid for a few minutes, one use).
    pub code: String,
    /// When it stops working (Unix ms).
    pub expires_ms: u64,
}

/// Links a new device with a code from one the member already holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkDevice {
    /// The link code.
    pub code: String,
}

/// One of the caller's member's devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device.
    pub device_id: DeviceId,
    /// When it was added (Unix ms).
    pub created_ms: u64,
    /// Whether it has been revoked.
    pub revoked: bool,
}

/// A rotated credential: the old one is refused from now on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotated {
    /// The new credential (keep it in the platform keystore).
    pub token: String,
}

/// A group as the operator sees it (ids and counts; no names, no content).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group.
    pub group: GroupId,
    /// When it was created (Unix ms).
    pub created_ms: u64,
    /// When it was deleted (Unix ms): it is purged after the grace period unless restored.
    #[serde(default)]
    pub deleted_ms: Option<u64>,
    /// Members whose status is active.
    pub members_active: usize,
    /// Every membership record (active, suspended, left, removed).
    pub members_total: usize,
    /// Documents bound to the group.
    pub documents: usize,
    /// Its effective quota and what it uses.
    pub quota: GroupQuota,
}

/// A group's effective quota (the operator's override, else the relay's default) and
/// what the group uses of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupQuota {
    /// Documents the group may have bound.
    pub documents: usize,
    /// Bytes the relay stores for the group's documents at most.
    pub bytes: u64,
    /// Documents bound now.
    pub documents_used: usize,
    /// Bytes stored now.
    pub bytes_used: u64,
}

/// What purging a group destroyed: the relay forgets these documents and rewrites its
/// store so nothing of them stays readable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    /// Every document that was bound to the group (the roster included).
    pub documents: Vec<DocumentId>,
}

/// What erasing a member changed: the relay rewrites the roster of each group under its
/// new id and forgets the old rosters (their Automerge history still holds the
/// pseudonym, so they are dropped, not overwritten).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erased {
    /// The groups the member was in (each now has a new roster document).
    pub groups: Vec<GroupId>,
    /// The former roster documents, no longer bound: nobody may read them.
    pub old_rosters: Vec<DocumentId>,
}

/// One of a member's memberships in their export (their own record, pseudonym included:
/// it is their data).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportMembership {
    /// The group.
    pub group_id: GroupId,
    /// Their membership.
    #[serde(flatten)]
    pub member: MemberInfo,
}

/// A document a member may read, in their export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportDocument {
    /// Its group.
    pub group_id: GroupId,
    /// The document.
    pub document_id: DocumentId,
    /// What it is.
    pub kind: BoundKind,
}

/// Everything the relay's membership holds about one member, for them to export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecordExport {
    /// The member.
    pub member_id: MemberId,
    /// Their memberships, whatever their status.
    pub memberships: Vec<ExportMembership>,
    /// Their devices, revoked ones included.
    pub devices: Vec<DeviceInfo>,
    /// Audit entries about them or made by them.
    pub audit: Vec<super::AuditEntry>,
    /// Every document they may read now.
    pub documents: Vec<ExportDocument>,
}
