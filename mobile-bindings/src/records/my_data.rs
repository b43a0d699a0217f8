//! A member's own data on a relay.

use cairn_core::app::my_data::{ExportedDocument, MyDataExport};

/// Everything the relay at `relay_url` holds about this device's member, and every
/// document they may read there.
#[uniffi::remote(Record)]
pub struct MyDataExport {
    /// The relay it came from.
    pub relay_url: String,
    /// The member it is about.
    pub member_id: String,
    /// What the relay keeps about the member, as the relay's JSON: their memberships
    /// (group, role, status, pseudonym, dates), their devices, and the audit entries
    /// about them (ids, kinds and times only).
    pub relay_record_json: String,
    /// Every document they may read on the relay, as Automerge binaries and as JSON.
    pub documents: Vec<ExportedDocument>,
}

/// One document of a [`MyDataExport`].
#[uniffi::remote(Record)]
pub struct ExportedDocument {
    /// Its group.
    pub group_id: String,
    /// Its id.
    pub document_id: String,
    /// What it is: `settings`, `roster`, `index`, `series`, `meeting`, `resources`,
    /// `thread` or `report`.
    pub kind: String,
    /// The whole document with its history (Automerge's saved format; opens in any
    /// Automerge implementation).
    pub automerge: Vec<u8>,
    /// Its current state as JSON.
    pub json: String,
}
