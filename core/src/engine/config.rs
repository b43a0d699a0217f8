//! Engine configuration and limits.

use std::time::Duration;

use automerge::TextEncoding;

use crate::ids::{PeerId, StorageId};

/// Which side of the protocol this engine plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A relay: never volunteers documents, answers requests by id, forwards ephemeral
    /// messages between the peers that have a document open.
    Relay,
    /// A device: announces every document it holds to every peer it connects to, asks for
    /// documents it lacks with `request`, and reports changes to the application.
    Client,
}

/// Limits that protect the host. Defaults are documented with the reason for each value.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest frame accepted. Default 16 MiB + 64 KiB: a first sync carries a whole
    /// document in one frame, so this must exceed `max_document_bytes`.
    pub max_frame_bytes: usize,
    /// Largest document (sum of its stored chunks) the engine accepts changes for.
    /// Default 16 MiB: a year of monthly minutes with rich text measures in the hundreds of
    /// KiB; 20,000 edits (the big-document benchmark) are well under 1 MiB.
    pub max_document_bytes: usize,
    /// Documents untouched for this long are dropped from memory and reloaded on demand.
    /// Default 120 s: long enough to cover a burst of edits, short enough that 400 idle
    /// connections' documents do not pin memory.
    pub idle_eviction: Duration,
    /// A connection that has not finished its handshake by then is closed. Default 10 s.
    pub handshake_timeout: Duration,
    /// Sync messages queued for one document while it loads from storage; past this the
    /// sending connection is closed (it will resync). Default 1,024.
    pub max_queued_per_document: usize,
    /// After this many incremental chunks a document is compacted into one snapshot.
    /// Default 64: keeps load (which concatenates chunks) fast while snapshots stay rare.
    pub compact_after_chunks: usize,
    /// Ephemeral sessions remembered for de-duplication. Default 4,096.
    pub max_ephemeral_sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 16 * 1024 * 1024 + 64 * 1024,
            max_document_bytes: 16 * 1024 * 1024,
            idle_eviction: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
            max_queued_per_document: 1024,
            compact_after_chunks: 64,
            max_ephemeral_sessions: 4096,
        }
    }
}

/// Everything an [`super::Engine`] needs at construction.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Relay or client.
    pub role: Role,
    /// Our `senderId`.
    pub peer_id: PeerId,
    /// Our store's id, sent in handshakes; `None` makes us an ephemeral peer.
    pub storage_id: Option<StorageId>,
    /// Seed for the engine's RNG (document ids, session ids). Hosts pass OS randomness;
    /// the simulator passes its seed.
    pub seed: u64,
    /// Limits.
    pub limits: Limits,
    /// Text index unit for documents created and loaded here. Default UTF-16 code units,
    /// the unit of JS, Kotlin and Swift strings.
    pub text_encoding: TextEncoding,
}

impl EngineConfig {
    /// A config with default limits and no storage id.
    pub fn new(role: Role, peer_id: PeerId, seed: u64) -> Self {
        EngineConfig {
            role,
            peer_id,
            storage_id: None,
            seed,
            limits: Limits::default(),
            text_encoding: TextEncoding::Utf16CodeUnit,
        }
    }

    /// Sets the storage id announced in handshakes.
    pub fn with_storage_id(mut self, id: StorageId) -> Self {
        self.storage_id = Some(id);
        self
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}
