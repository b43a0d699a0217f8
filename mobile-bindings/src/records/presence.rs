//! Cursors in the minutes (presence) and per-document sync status.

use cairn_core::app::presence::{CursorRecord, PeerCursor};
use cairn_core::app::{DocumentSync, DocumentSyncState};

/// This device's caret or selection in the minutes: UTF-16 indexes into the minutes'
/// text. A caret has `anchor == head`; a selection runs from `anchor` (where it started)
/// to `head` (where the caret is).
#[uniffi::remote(Record)]
pub struct CursorRecord {
    /// Where the selection started.
    pub anchor: u32,
    /// Where the caret is.
    pub head: u32,
}

/// Another device's caret or selection, resolved against this device's copy.
#[uniffi::remote(Record)]
pub struct PeerCursor {
    /// The other device's peer id (one per device).
    pub peer_id: String,
    /// Its member id, if it said (show the member's pseudonym from the roster).
    pub member_id: Option<String>,
    /// Where its selection started, in UTF-16 units of this device's text.
    pub anchor: u32,
    /// Where its caret is.
    pub head: u32,
}

/// Where a document's changes made on this device stand.
#[uniffi::remote(Enum)]
pub enum DocumentSyncState {
    /// No relay has shown it holds any of the document: it exists only on this device.
    OnlyOnThisDevice,
    /// A relay holds part of it; some changes made here are not acknowledged yet.
    Sending,
    /// A relay has shown it holds every change this device has.
    SafelyOnRelay,
}

/// A document's sync status.
#[uniffi::remote(Record)]
pub struct DocumentSync {
    /// Where it stands.
    pub state: DocumentSyncState,
    /// Changes on this device a relay has not acknowledged yet (0 once safe).
    pub pending_changes: u32,
}
