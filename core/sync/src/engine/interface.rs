//! What goes into the engine and what comes out: inputs, outputs, events, and the
//! reasons behind every close and refusal (each with a stable label for metrics).

use automerge::ChangeHash;
use thiserror::Error;

use crate::ids::{ConnectionId, DocumentId, PeerId, TaskId};
use crate::store::{StorageOp, StorageOutcome, StoreError};
use crate::wire::{Message, PeerMetadata};

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The remote dialled us; we wait for its `join`.
    Incoming,
    /// We dialled; we send `join`.
    Outgoing,
}

/// Something that happened outside the engine.
#[derive(Debug)]
pub enum Input {
    /// A transport connection is open.
    Connected {
        /// Host-chosen handle.
        conn: ConnectionId,
        /// Who dialled.
        direction: Direction,
        /// The identity the host authenticated for this socket (e.g. a device id), if any.
        /// When set, a `join` with a different `senderId` is refused.
        identity: Option<String>,
        /// The peer id we present on this connection (outgoing: the `senderId` of our
        /// `join` and of every message after it), when it is not the engine's own
        /// ([`EngineConfig::peer_id`](super::EngineConfig)): a device that is a member on
        /// two relays holds a different identity on each. `None`: the engine's own.
        local_peer: Option<PeerId>,
    },
    /// A binary frame arrived.
    Frame {
        /// From which connection.
        conn: ConnectionId,
        /// The bytes.
        frame: Vec<u8>,
    },
    /// A protocol message that arrived on a connection, already checked against
    /// `Limits::max_frame_bytes` and decoded by the host (a sharded host decodes each frame
    /// once, in the socket's reader, to route it by document). Dispatched exactly as a
    /// [`Input::Frame`] after its decode.
    Message {
        /// From which connection.
        conn: ConnectionId,
        /// The decoded message.
        msg: Message,
        /// The size of the frame it was decoded from.
        bytes: usize,
    },
    /// A connection whose handshake another engine finished (a sharded host's door): it is
    /// created open, with no handshake and no handshake timer, so this engine serves its
    /// document messages. Emits no [`Event::PeerConnected`], and its end no
    /// [`Event::PeerDisconnected`]: the engine that ran the handshake reports both.
    Attached {
        /// Host-chosen handle (the same on every engine).
        conn: ConnectionId,
        /// Who dialled.
        direction: Direction,
        /// The identity the host authenticated for this socket, if any.
        identity: Option<String>,
        /// The peer id we present on this connection, when not the engine's own.
        local_peer: Option<PeerId>,
        /// The remote peer id the handshake accepted.
        peer: PeerId,
    },
    /// The transport closed (for any reason, including our own `Close`).
    Disconnected {
        /// Which one.
        conn: ConnectionId,
    },
    /// A storage task finished.
    StorageDone {
        /// The task.
        task: TaskId,
        /// Its result. Writes are `Ok` only once durable.
        result: Result<StorageOutcome, StoreError>,
    },
}

/// Something the host must do.
#[derive(Debug)]
pub enum Output {
    /// Send a binary frame. Never drop it: if the connection cannot take it, close it.
    Send {
        /// To which connection.
        conn: ConnectionId,
        /// The bytes.
        frame: Vec<u8>,
    },
    /// Close the connection (any frames emitted before this one go first).
    Close {
        /// Which one.
        conn: ConnectionId,
        /// Why.
        reason: CloseReason,
    },
    /// Run a storage task and feed its result back as [`Input::StorageDone`].
    Storage {
        /// The task id to report back.
        task: TaskId,
        /// What to do.
        op: StorageOp,
    },
    /// Tell the application.
    Event(Event),
}

/// Why the engine closes a connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CloseReason {
    /// The peer sent something we could not decode or that breaks the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// No common protocol version.
    #[error("unsupported protocol version")]
    UnsupportedVersion,
    /// The `join` named another peer than the socket's authenticated identity.
    #[error("senderId does not match the authenticated identity")]
    IdentityMismatch,
    /// A newer connection joined with the same peer id.
    #[error("replaced by a newer connection of the same peer")]
    Replaced,
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The peer said `leave` or `error`.
    #[error("peer left")]
    PeerLeft,
    /// Too much queued for a loading document; the peer will resync on reconnect.
    #[error("overloaded")]
    Overloaded,
    /// A write or a read for a document this connection was syncing failed; closing makes
    /// the peer redial, resend what was not stored and ask again.
    #[error("storage failed")]
    StorageFailed,
    /// The `join` used the relay's own peer id.
    #[error("that peer id is reserved")]
    ReservedPeerId,
    /// The peer id is connected from another socket with another identity, or it has taken
    /// its socket over too often lately (`Limits::takeover_burst`).
    #[error("that peer id is already connected")]
    PeerIdInUse,
    /// Handling a message for a document failed inside Automerge (a bug it should not have);
    /// the document is reloaded from storage and this peer resyncs when it reconnects.
    #[error("internal error while handling a document; reconnect to resync")]
    Internal,
    /// The access policy no longer allows this peer to be connected (a revoked device, a
    /// removed member): refused at the handshake or closed by
    /// [`Engine::revalidate_access`](super::Engine::revalidate_access).
    #[error("access revoked")]
    AccessRevoked,
    /// This side forgot a document the connection was syncing
    /// ([`Engine::forget_document`](super::Engine::forget_document)); a new connection
    /// syncs the others without it.
    #[error("a document was forgotten")]
    Forgotten,
}

impl CloseReason {
    /// A stable, low-cardinality name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::Protocol(_) => "protocol",
            CloseReason::UnsupportedVersion => "unsupported_version",
            CloseReason::IdentityMismatch => "identity_mismatch",
            CloseReason::Replaced => "replaced",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::PeerLeft => "peer_left",
            CloseReason::Overloaded => "overloaded",
            CloseReason::StorageFailed => "storage_failed",
            CloseReason::ReservedPeerId => "reserved_peer_id",
            CloseReason::PeerIdInUse => "peer_id_in_use",
            CloseReason::Internal => "internal",
            CloseReason::AccessRevoked => "access_revoked",
            CloseReason::Forgotten => "forgotten",
        }
    }
}

/// Why a document, or the changes a peer sent for it, were refused. Every reason but
/// [`Rejection::ReadOnly`] is answered with `doc-unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The access policy said no (to reading; or reading is no longer allowed).
    Forbidden,
    /// The access policy lets this peer read the document but not write it: the changes
    /// its message carried were dropped (never applied, stored or forwarded) and the rest
    /// of the message was served as a read. The peer is not told the document is
    /// unavailable.
    ReadOnly,
    /// Accepting the changes would pass `max_document_bytes`.
    TooLarge,
    /// The stored document could not be loaded.
    StorageFailed,
    /// Accepting the changes would pass `max_document_ops`.
    TooManyOps,
    /// The connection already has `max_documents_per_connection` documents open.
    TooManyDocuments,
    /// The peer's identity has created `new_documents_burst` documents lately.
    CreationQuota,
    /// The document's group is at its bytes quota ([`Access::may_grow`](super::Access::may_grow)).
    GroupQuota,
}

impl Rejection {
    /// A stable, low-cardinality name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Forbidden => "forbidden",
            Rejection::ReadOnly => "read_only",
            Rejection::TooLarge => "too_large",
            Rejection::StorageFailed => "storage_failed",
            Rejection::TooManyOps => "too_many_ops",
            Rejection::TooManyDocuments => "too_many_documents",
            Rejection::CreationQuota => "creation_quota",
            Rejection::GroupQuota => "group_quota",
        }
    }
}

/// Why an ephemeral message was not forwarded. Ephemeral data is lossy by design
/// (presence, cursors), so these are dropped and counted rather than closing the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EphemeralDrop {
    /// The socket sent more than `Limits::ephemeral_burst` lately.
    RateLimited,
    /// The payload is larger than `Limits::max_ephemeral_bytes`.
    TooLarge,
    /// Already seen from this socket (same session, count not higher).
    Duplicate,
    /// `targetId` names no peer that has the document open.
    NoTarget,
}

impl EphemeralDrop {
    /// A stable, low-cardinality name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            EphemeralDrop::RateLimited => "rate_limited",
            EphemeralDrop::TooLarge => "too_large",
            EphemeralDrop::Duplicate => "duplicate",
            EphemeralDrop::NoTarget => "no_target",
        }
    }
}

/// Something the application (or the host's metrics) may want to know.
#[derive(Debug)]
pub enum Event {
    /// A handshake finished.
    PeerConnected {
        /// Connection.
        conn: ConnectionId,
        /// The remote peer id.
        peer: PeerId,
        /// What the remote said about its storage.
        metadata: PeerMetadata,
    },
    /// A connection ended (after `Disconnected` or our own `Close`).
    PeerDisconnected {
        /// Connection.
        conn: ConnectionId,
    },
    /// Changes from a peer were applied to a document (client role), or changes other
    /// writers of a shared store stored were read in by
    /// [`Engine::refresh_document`](super::Engine::refresh_document) (any role).
    DocumentChanged {
        /// Which.
        doc: DocumentId,
        /// Heads after the change.
        heads: Vec<ChangeHash>,
    },
    /// Changes that peers sent were passed on: the document's sync messages went out to
    /// its peers `waited` after the first of those changes arrived (the relay's own part
    /// of an edit's way from one member to the others: the wait for its write, and for
    /// any write before it, included).
    ChangesForwarded {
        /// Which.
        doc: DocumentId,
        /// From the arrival of the oldest change not yet passed on, to now.
        waited: std::time::Duration,
    },
    /// A write completed: everything up to these heads is durable.
    DocumentDurable {
        /// Which.
        doc: DocumentId,
        /// The heads the write covered.
        heads: Vec<ChangeHash>,
    },
    /// A peer showed (in a sync message) that it has these heads of a document: for a
    /// client talking to a relay, "safely on the relay".
    PeerHasHeads {
        /// Connection.
        conn: ConnectionId,
        /// Which document.
        doc: DocumentId,
        /// The heads the peer reported.
        heads: Vec<ChangeHash>,
    },
    /// Every connected peer said it does not have a document we asked for.
    DocumentUnavailable {
        /// Which.
        doc: DocumentId,
    },
    /// A document was loaded from storage into memory.
    DocumentLoaded {
        /// Which.
        doc: DocumentId,
        /// Stored bytes read.
        bytes: usize,
    },
    /// An idle document was dropped from memory.
    DocumentEvicted {
        /// Which.
        doc: DocumentId,
    },
    /// A document was refused to a connection, or (with [`Rejection::ReadOnly`]) the
    /// changes it sent for a document it may only read were dropped.
    DocumentRejected {
        /// Connection.
        conn: ConnectionId,
        /// Which.
        doc: DocumentId,
        /// Why.
        reason: Rejection,
    },
    /// An ephemeral message for a document (client role).
    Ephemeral {
        /// Which document.
        doc: DocumentId,
        /// The originating peer.
        sender: PeerId,
        /// The payload.
        data: Vec<u8>,
    },
    /// An ephemeral message a socket sent this relay, for the other relays sharing its
    /// store (relay role with [`super::EngineConfig::share_ephemeral`] only). Already
    /// forwarded to the peers here.
    EphemeralShared(SharedEphemeral),
    /// A storage task failed. For a failed write, the changes it carried were not made
    /// durable and were not revealed to anyone.
    StorageFailed {
        /// The document, when the task was for one.
        doc: Option<DocumentId>,
        /// The error.
        error: StoreError,
    },
    /// The engine closed a connection (after `Output::Close`), and why.
    ConnectionClosed {
        /// Connection.
        conn: ConnectionId,
        /// Why.
        reason: CloseReason,
    },
    /// An ephemeral message was dropped.
    EphemeralDropped {
        /// From which connection.
        conn: ConnectionId,
        /// Why.
        reason: EphemeralDrop,
    },
    /// Documents were evicted before they were idle because the loaded documents passed
    /// `Limits::max_loaded_ops`.
    BudgetEviction {
        /// How many.
        documents: usize,
    },
    /// Every key of a forgotten document was deleted durably
    /// ([`Engine::forget_document`](super::Engine::forget_document)).
    DocumentForgotten {
        /// Which.
        doc: DocumentId,
    },
    /// A document was compacted into a snapshot.
    Compacted {
        /// Which.
        doc: DocumentId,
        /// Chunks the snapshot replaced.
        chunks: usize,
    },
}

/// Why an application call failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EngineError {
    /// The document is not in memory (call [`Engine::find`](super::Engine::find) and wait for it).
    #[error("document {0} is not loaded")]
    NotLoaded(DocumentId),
    /// The bytes handed to [`Engine::import_document`](super::Engine::import_document)
    /// do not load as Automerge changes; nothing was applied.
    #[error("the imported bytes do not load: {0}")]
    Import(String),
}

/// Why [`Engine::change_document`](super::Engine::change_document) did not commit.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChangeFailed<E> {
    /// The document is not in memory.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The change function returned this error; the transaction was rolled back and
    /// nothing was committed or written.
    #[error("the change function failed; nothing was committed")]
    Rejected(E),
}

/// A snapshot of the engine's counters, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Open (handshaken) connections.
    pub connections: usize,
    /// Documents known (any state).
    pub documents: usize,
    /// Documents in memory.
    pub documents_loaded: usize,
    /// Storage tasks in flight.
    pub storage_tasks: usize,
    /// Automerge operations held by the documents in memory (see `Limits::max_loaded_ops`).
    pub loaded_ops: u64,
    /// Pending timers (handshakes, idle evictions).
    pub timers: usize,
}

/// An ephemeral message passed between relays that share a store: one relay took it from
/// a socket (checking the sender's right to read the document), the others deliver it to
/// their own peers of the document ([`super::Engine::deliver_shared_ephemeral`]). Never
/// stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedEphemeral {
    /// The document.
    pub doc: DocumentId,
    /// The peer that sent it, as the first relay stamped it.
    pub sender: PeerId,
    /// The one peer it is for; `None`: everyone with the document open.
    pub target: Option<PeerId>,
    /// The sender's `sessionId`.
    pub session_id: String,
    /// The sender's `count`.
    pub count: u64,
    /// The payload (opaque to relays).
    pub data: Vec<u8>,
}
