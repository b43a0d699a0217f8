//! Engine configuration and limits.

use std::time::Duration;

use automerge::TextEncoding;

use super::sync_check::SyncLimits;
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
    /// Ephemeral sessions remembered per connection for de-duplication (the table is per
    /// (document, session) of one socket and goes with it). Default 256: a phone has a few
    /// documents open with one session each; past this the oldest-keyed entry is forgotten,
    /// at worst letting one duplicate through.
    pub max_ephemeral_sessions: usize,
    /// Longest ephemeral `sessionId`. Default 128 bytes: automerge-repo and Cairn write 16
    /// to 36 characters. Longer ones close the connection as a protocol violation.
    pub max_session_id_bytes: usize,
    /// Largest ephemeral payload forwarded. Default 64 KiB: presence and cursors are tens
    /// of bytes; larger ones are dropped (ephemeral data is lossy by design).
    pub max_ephemeral_bytes: usize,
    /// Ephemeral messages one socket may send in a burst. Default 120 (a device's own
    /// socket at the relay); 1,000 in [`Limits::client`].
    pub ephemeral_burst: u32,
    /// One more ephemeral message is allowed per this interval once the burst is spent.
    /// Default 16 ms (about 60 a second: cursor updates while typing are 10 to 30); 1 ms
    /// in [`Limits::client`].
    pub ephemeral_interval: Duration,
    /// Longest peer id (and storage id) accepted in a handshake. Default 256 bytes.
    pub max_peer_id_bytes: usize,
    /// Largest frame before the handshake finished. Default 64 KiB: a `join` is ~100 bytes.
    pub max_handshake_frame_bytes: usize,
    /// Takeovers (a `join` with a peer id that another socket holds) one peer id may make
    /// in a burst. Default 4: a phone switching networks rejoins once while its old socket
    /// lingers. Past it the new socket gets `error` and is closed.
    pub takeover_burst: u32,
    /// One more takeover is allowed per this interval once the burst is spent. Default 5 s.
    pub takeover_interval: Duration,
    /// Documents one connection may have open at once. Default 4,096: a member of several
    /// groups holds a few hundred (meetings, threads, resource lists). Past it further
    /// documents get `doc-unavailable`.
    pub max_documents_per_connection: usize,
    /// New documents (first write of an id the store did not have) one identity may create
    /// in a burst. Default 1,000: joining a busy group copies a few hundred.
    pub new_documents_burst: u32,
    /// One more new document is allowed per this interval once the burst is spent.
    /// Default 3.6 s (1,000 an hour).
    pub new_document_interval: Duration,
    /// Identities whose creation budget is remembered. Default 10,000; past it a full (idle)
    /// budget is forgotten first.
    pub max_tracked_identities: usize,
    /// Most Automerge operations in one document. Default 1,000,000: in memory an operation
    /// costs ~90 bytes (a 10-million-character text took 888 MB), so this caps one document
    /// near 90 MB; a year of a group's minutes is tens of thousands of operations.
    pub max_document_ops: u64,
    /// Automerge operations held by all loaded documents together. Default 4,000,000 (about
    /// 360 MB). Past it idle-most documents are evicted early; if that cannot make room the
    /// connection bringing more is closed (`overloaded`) and resyncs later.
    pub max_loaded_ops: u64,
    /// Checks on every Automerge sync message before Automerge sees it.
    pub sync: SyncLimits,
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
            max_ephemeral_sessions: 256,
            max_session_id_bytes: 128,
            max_ephemeral_bytes: 64 * 1024,
            ephemeral_burst: 120,
            ephemeral_interval: Duration::from_millis(16),
            max_peer_id_bytes: 256,
            max_handshake_frame_bytes: 64 * 1024,
            takeover_burst: 4,
            takeover_interval: Duration::from_secs(5),
            max_documents_per_connection: 4096,
            new_documents_burst: 1000,
            new_document_interval: Duration::from_millis(3600),
            max_tracked_identities: 10_000,
            max_document_ops: 1_000_000,
            max_loaded_ops: 4_000_000,
            sync: SyncLimits::default(),
        }
    }
}

impl Limits {
    /// The defaults for a device (the client role): [`Limits::default`], but its socket
    /// may bring 1,000 ephemeral messages a second (after a burst of 1,000). A device's
    /// socket to its relay carries the presence of every member of its groups, each
    /// member already held to the relay's 60 a second, where a relay's socket carries one
    /// device's: at the relay's default, a meeting of twenty moving their cursors lost
    /// most of them at each phone.
    pub fn client() -> Self {
        Limits {
            ephemeral_burst: 1_000,
            ephemeral_interval: Duration::from_millis(1),
            ..Limits::default()
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
    /// After a document's heads change, how long before they may be announced to every
    /// peer again: changes made meanwhile (a member typing) go out together in one sync
    /// message at the end of the period, not one frame per keystroke. The first change
    /// after a quiet period goes out at once, and answers to a peer's message are never
    /// held. Default [`DEFAULT_SYNC_DEBOUNCE`] for the client role (what automerge-repo's
    /// `syncDebounceRate` defaults to), zero for the relay, whose fan-out is already
    /// paced by its flushes (one round of sync messages per durable write).
    pub sync_debounce: Duration,
    /// A relay among several (on one shared store): every ephemeral message it takes from
    /// a socket for everyone, or for a peer not connected here, is also reported as
    /// [`super::Event::EphemeralShared`], for the host to hand to the other relays, which
    /// deliver it with [`super::Engine::deliver_shared_ephemeral`]. Default false.
    pub share_ephemeral: bool,
}

/// The client role's default [`EngineConfig::sync_debounce`]: 100 ms.
pub const DEFAULT_SYNC_DEBOUNCE: Duration = Duration::from_millis(100);

impl EngineConfig {
    /// A config with default limits and no storage id.
    pub fn new(role: Role, peer_id: PeerId, seed: u64) -> Self {
        EngineConfig {
            role,
            peer_id,
            storage_id: None,
            seed,
            limits: match role {
                Role::Client => Limits::client(),
                Role::Relay => Limits::default(),
            },
            text_encoding: TextEncoding::Utf16CodeUnit,
            sync_debounce: match role {
                Role::Client => DEFAULT_SYNC_DEBOUNCE,
                Role::Relay => Duration::ZERO,
            },
            share_ephemeral: false,
        }
    }

    /// Sets [`EngineConfig::share_ephemeral`].
    pub fn with_shared_ephemeral(mut self, share: bool) -> Self {
        self.share_ephemeral = share;
        self
    }

    /// Sets [`EngineConfig::sync_debounce`] (zero: announce every change at once).
    pub fn with_sync_debounce(mut self, debounce: Duration) -> Self {
        self.sync_debounce = debounce;
        self
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
