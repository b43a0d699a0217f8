//! The sans-IO sync engine.
//!
//! One [`Engine`] serves many connections and many documents. It keeps one
//! `automerge::sync::State` per (connection, document), loads documents from storage on
//! demand, writes every new change as an incremental chunk, compacts, evicts idle documents,
//! and forwards ephemeral messages. See the crate docs for the host contract.
//!
//! ## Durable acknowledgement
//! Every sync message reveals the sender's heads. The engine therefore generates sync
//! messages for a document only when it has no write for that document in flight: changes
//! received from one peer are written first, and only after the host reports the write
//! durable do the sender and everyone else hear about them.

mod access;
mod config;
pub mod sync_check;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use access::{Access, OpenAccess, Operation, PeerInfo};
pub use config::{EngineConfig, Limits, Role};

use crate::ids::{ConnectionId, DocumentId, PeerId, TaskId};
use crate::store::{StorageKey, StorageOp, StorageOutcome, StoreError};
use crate::time::Timestamp;
use crate::wire::{DocMessage, Message, PeerMetadata, PROTOCOL_VERSION};

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
    },
    /// A binary frame arrived.
    Frame {
        /// From which connection.
        conn: ConnectionId,
        /// The bytes.
        frame: Vec<u8>,
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
    /// A write for a document this connection was syncing failed; closing makes the peer
    /// resend what was not stored.
    #[error("storage failed")]
    StorageFailed,
}

/// Why a document was refused to a peer (answered with `doc-unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The access policy said no.
    Forbidden,
    /// Accepting the changes would pass `max_document_bytes`.
    TooLarge,
    /// The stored document could not be loaded.
    StorageFailed,
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
    /// Changes from a peer were applied to a document (client role).
    DocumentChanged {
        /// Which.
        doc: DocumentId,
        /// Heads after the change.
        heads: Vec<ChangeHash>,
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
    /// A document was refused to a connection.
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
    /// A storage task failed. For a failed write, the changes it carried were not made
    /// durable and were not revealed to anyone.
    StorageFailed {
        /// The document, when the task was for one.
        doc: Option<DocumentId>,
        /// The error.
        error: StoreError,
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
    /// The document is not in memory (call [`Engine::find`] and wait for it).
    #[error("document {0} is not loaded")]
    NotLoaded(DocumentId),
    /// The change function returned an error; nothing was committed.
    #[error("the change failed: {0}")]
    Change(String),
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
}

enum ConnState {
    Handshaking { since: Timestamp },
    Open { peer: PeerId },
}

struct Conn {
    direction: Direction,
    identity: Option<String>,
    state: ConnState,
    docs: BTreeSet<DocumentId>,
}

enum DocState {
    Loading,
    Ready(Box<Automerge>),
    Evicted,
}

struct PeerDoc {
    sync: sync::State,
    /// The heads our last sync message to this peer carried. Automerge skips replying
    /// when a peer's message shows heads equal to ours, but with writes held back that
    /// peer has not yet heard us confirm them: we must still send our heads (the ack).
    told: Vec<ChangeHash>,
    /// This peer sent us something that may need an answer. Only the sender of a message
    /// is answered unless our heads changed (then everyone is): regenerating sync messages
    /// for all peers of a document on every acknowledgement was most of the relay's CPU.
    dirty: bool,
    /// The peer told us it does not have the document.
    unavailable: bool,
}

struct Doc {
    generation: u64,
    state: DocState,
    peers: BTreeMap<ConnectionId, PeerDoc>,
    queued: Vec<(ConnectionId, bool, sync::Message, usize)>,
    pending_writes: usize,
    needs_sync: bool,
    /// Chunks on disk (durable) and their sizes.
    chunks: BTreeMap<StorageKey, usize>,
    /// Bytes of writes in flight.
    inflight_bytes: usize,
    compacting: bool,
    last_active: Timestamp,
    /// The application asked for this document (client role).
    wanted: bool,
    unavailable_reported: bool,
}

impl Doc {
    fn new(generation: u64, now: Timestamp) -> Self {
        Doc {
            generation,
            state: DocState::Loading,
            peers: BTreeMap::new(),
            queued: Vec::new(),
            pending_writes: 0,
            needs_sync: false,
            chunks: BTreeMap::new(),
            inflight_bytes: 0,
            compacting: false,
            last_active: now,
            wanted: false,
            unavailable_reported: false,
        }
    }
    fn stored_bytes(&self) -> usize {
        self.chunks.values().sum::<usize>() + self.inflight_bytes
    }
}

enum Task {
    Load {
        doc: DocumentId,
        generation: u64,
    },
    Chunk {
        doc: DocumentId,
        generation: u64,
        key: StorageKey,
        bytes: usize,
        heads: Vec<ChangeHash>,
    },
    Snapshot {
        doc: DocumentId,
        generation: u64,
        key: StorageKey,
        bytes: usize,
        covers: Vec<StorageKey>,
    },
    Delete {
        doc: DocumentId,
    },
}

/// The sync engine. See the module and crate docs.
pub struct Engine {
    config: EngineConfig,
    rng: ChaCha8Rng,
    access: Box<dyn Access>,
    next_task: u64,
    next_generation: u64,
    session_id: String,
    ephemeral_count: u64,
    conns: BTreeMap<ConnectionId, Conn>,
    peers: BTreeMap<PeerId, ConnectionId>,
    docs: BTreeMap<DocumentId, Doc>,
    tasks: BTreeMap<TaskId, Task>,
    ephemeral_seen: BTreeMap<String, u64>,
    outputs: VecDeque<Output>,
}

fn chunk_key(doc: &DocumentId, kind: &str, hash: String) -> StorageKey {
    vec![doc.to_string(), kind.to_owned(), hash]
}

fn heads_hash(heads: &[ChangeHash]) -> String {
    let mut h = Sha256::new();
    for head in heads {
        h.update(head.0);
    }
    hex::encode(h.finalize())
}

impl Engine {
    /// A new engine with open access.
    pub fn new(config: EngineConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut session = [0u8; 8];
        rng.fill_bytes(&mut session);
        Engine {
            config,
            rng,
            access: Box::new(OpenAccess),
            next_task: 0,
            next_generation: 0,
            session_id: hex::encode(session),
            ephemeral_count: 0,
            conns: BTreeMap::new(),
            peers: BTreeMap::new(),
            docs: BTreeMap::new(),
            tasks: BTreeMap::new(),
            ephemeral_seen: BTreeMap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// Replaces the access policy (checked on every document message).
    pub fn set_access(&mut self, access: Box<dyn Access>) {
        self.access = access;
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self
                .conns
                .values()
                .filter(|c| matches!(c.state, ConnState::Open { .. }))
                .count(),
            documents: self.docs.len(),
            documents_loaded: self
                .docs
                .values()
                .filter(|d| matches!(d.state, DocState::Ready(_)))
                .count(),
            storage_tasks: self.tasks.len(),
        }
    }

    /// The next thing the host must do, in production order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Engine::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let limits = &self.config.limits;
        let handshakes = self.conns.values().filter_map(|c| match c.state {
            ConnState::Handshaking { since } => Some(since.plus(limits.handshake_timeout)),
            ConnState::Open { .. } => None,
        });
        let evictions = self
            .docs
            .values()
            .filter(|d| matches!(d.state, DocState::Ready(_)))
            .map(|d| d.last_active.plus(limits.idle_eviction));
        handshakes.chain(evictions).min()
    }

    /// Runs timers: handshake timeouts and idle eviction.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let limits = self.config.limits.clone();
        let late: Vec<ConnectionId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnState::Handshaking { since } if since.plus(limits.handshake_timeout) <= now))
            .map(|(id, _)| *id)
            .collect();
        for conn in late {
            self.close(conn, CloseReason::HandshakeTimeout);
        }
        let mut idle: Vec<DocumentId> = Vec::new();
        for (id, d) in self.docs.iter_mut() {
            let DocState::Ready(am) = &d.state else {
                continue;
            };
            if d.last_active.plus(limits.idle_eviction) > now {
                continue;
            }
            // Changes Automerge holds back until their dependencies arrive live only in
            // memory, and the sender will not send them again: keep such a document. Same
            // for one with a write, a compaction or a sync still under way.
            let busy = d.pending_writes > 0 || d.compacting || d.needs_sync;
            if busy || !automerge::ReadDoc::get_missing_deps(am.as_ref(), &[]).is_empty() {
                // Look again one idle period from now, so the deadline moves past `now`.
                d.last_active = now;
                continue;
            }
            idle.push(*id);
        }
        for id in idle {
            let doc = self.docs.get_mut(&id).expect("collected above");
            if doc.peers.is_empty() && !doc.wanted {
                self.docs.remove(&id);
            } else {
                doc.state = DocState::Evicted;
            }
            self.emit(Event::DocumentEvicted { doc: id });
        }
    }

    /// Feeds one input in.
    pub fn handle_input(&mut self, now: Timestamp, input: Input) {
        match input {
            Input::Connected {
                conn,
                direction,
                identity,
            } => {
                self.conns.insert(
                    conn,
                    Conn {
                        direction,
                        identity,
                        state: ConnState::Handshaking { since: now },
                        docs: BTreeSet::new(),
                    },
                );
                if direction == Direction::Outgoing {
                    let join = Message::Join {
                        sender_id: self.config.peer_id.clone(),
                        peer_metadata: self.metadata(),
                        supported_protocol_versions: vec![PROTOCOL_VERSION.to_owned()],
                    };
                    self.send(conn, &join);
                }
            }
            Input::Frame { conn, frame } => self.on_frame(now, conn, frame),
            Input::Disconnected { conn } => self.forget_conn(conn),
            Input::StorageDone { task, result } => self.on_storage(now, task, result),
        }
    }

    // ---------------------------------------------------------------- application calls

    /// Creates a document (client role), initialised by `init`, and starts writing and
    /// announcing it. Returns its id.
    pub fn create_document(
        &mut self,
        now: Timestamp,
        init: impl FnOnce(&mut automerge::transaction::Transaction<'_>),
    ) -> DocumentId {
        let id = DocumentId::random(&mut self.rng);
        let mut am = Automerge::new_with_encoding(self.config.text_encoding);
        let mut actor = [0u8; 16];
        self.rng.fill_bytes(&mut actor);
        am.set_actor(automerge::ActorId::from(actor));
        let mut tx = am.transaction();
        init(&mut tx);
        tx.commit();
        let generation = self.generation();
        let mut doc = Doc::new(generation, now);
        doc.state = DocState::Ready(Box::new(am));
        doc.wanted = true;
        self.docs.insert(id, doc);
        self.persist(id, &[]);
        self.share_with_open_peers(id);
        id
    }

    /// Creates a document under a caller-chosen id from saved Automerge bytes, or merges
    /// the bytes into it if it is already loaded. Used for documents whose id and first
    /// change are derived deterministically (e.g. a meeting occurrence that two organisers
    /// may open offline at once: both produce the identical first change, so the copies
    /// merge into one). A document that is known but not in memory must be found first.
    pub fn import_document(
        &mut self,
        now: Timestamp,
        id: DocumentId,
        bytes: &[u8],
    ) -> Result<Vec<ChangeHash>, EngineError> {
        let encoding = self.config.text_encoding;
        if !self.docs.contains_key(&id) {
            let mut am = Automerge::new_with_encoding(encoding);
            let mut actor = [0u8; 16];
            self.rng.fill_bytes(&mut actor);
            am.set_actor(automerge::ActorId::from(actor));
            let generation = self.generation();
            let mut doc = Doc::new(generation, now);
            doc.state = DocState::Ready(Box::new(am));
            doc.wanted = true;
            self.docs.insert(id, doc);
        }
        let doc = self.docs.get_mut(&id).expect("inserted above");
        let DocState::Ready(am) = &mut doc.state else {
            return Err(EngineError::NotLoaded(id));
        };
        doc.wanted = true;
        doc.last_active = now;
        let before = am.get_heads();
        am.load_incremental(bytes)
            .map_err(|e| EngineError::Change(e.to_string()))?;
        let heads = am.get_heads();
        if heads != before {
            self.persist(id, &before);
        }
        self.share_with_open_peers(id);
        self.maybe_sync(id);
        Ok(heads)
    }

    /// Opens a document (client role): loads it from storage, and if it is not there asks
    /// connected peers for it. Watch for `DocumentChanged`/`DocumentUnavailable`.
    pub fn find(&mut self, now: Timestamp, id: DocumentId) {
        let created = !self.docs.contains_key(&id);
        if created {
            let generation = self.generation();
            self.docs.insert(id, Doc::new(generation, now));
            self.load(id);
        }
        let doc = self.docs.get_mut(&id).expect("inserted above");
        doc.wanted = true;
        doc.last_active = now;
        if matches!(doc.state, DocState::Evicted) {
            doc.state = DocState::Loading;
            self.load(id);
        }
        self.share_with_open_peers(id);
    }

    /// The in-memory document, if loaded.
    pub fn document(&self, id: &DocumentId) -> Option<&Automerge> {
        match &self.docs.get(id)?.state {
            DocState::Ready(am) => Some(am),
            _ => None,
        }
    }

    /// Ids of every document the engine knows (loaded or not).
    pub fn document_ids(&self) -> Vec<DocumentId> {
        self.docs.keys().copied().collect()
    }

    /// Applies a local change. The change is written at once and announced to peers once
    /// the write is durable (watch for `DocumentDurable`). Returns the new heads.
    pub fn change_document<E: std::fmt::Display>(
        &mut self,
        now: Timestamp,
        id: DocumentId,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), E>,
    ) -> Result<Vec<ChangeHash>, EngineError> {
        let doc = self.docs.get_mut(&id).ok_or(EngineError::NotLoaded(id))?;
        let DocState::Ready(am) = &mut doc.state else {
            return Err(EngineError::NotLoaded(id));
        };
        doc.last_active = now;
        let before = am.get_heads();
        let mut tx = am.transaction();
        if let Err(e) = f(&mut tx) {
            tx.rollback();
            return Err(EngineError::Change(e.to_string()));
        }
        tx.commit();
        let heads = am.get_heads();
        if heads != before {
            self.persist(id, &before);
            self.maybe_sync(id);
        }
        Ok(heads)
    }

    /// Sends an ephemeral message about a document to every peer that has it open.
    pub fn broadcast_ephemeral(&mut self, id: DocumentId, data: Vec<u8>) {
        self.ephemeral_count += 1;
        let count = self.ephemeral_count;
        let Some(doc) = self.docs.get(&id) else {
            return;
        };
        let targets: Vec<ConnectionId> = doc.peers.keys().copied().collect();
        let session_id = self.session_id.clone();
        let sender_id = self.config.peer_id.clone();
        for conn in targets {
            let Some(target_id) = self.peer_of(conn) else {
                continue;
            };
            let msg = Message::Ephemeral {
                sender_id: sender_id.clone(),
                target_id,
                document_id: id,
                session_id: session_id.clone(),
                count,
                data: data.clone(),
            };
            self.send(conn, &msg);
        }
    }

    // ---------------------------------------------------------------- internals

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn metadata(&self) -> PeerMetadata {
        PeerMetadata {
            storage_id: self.config.storage_id.clone(),
            is_ephemeral: self.config.storage_id.is_none(),
        }
    }

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn send(&mut self, conn: ConnectionId, msg: &Message) {
        self.outputs.push_back(Output::Send {
            conn,
            frame: msg.encode(),
        });
    }

    fn task(&mut self, task: Task, op: StorageOp) {
        let id = TaskId(self.next_task);
        self.next_task += 1;
        self.tasks.insert(id, task);
        self.outputs.push_back(Output::Storage { task: id, op });
    }

    fn peer_of(&self, conn: ConnectionId) -> Option<PeerId> {
        match &self.conns.get(&conn)?.state {
            ConnState::Open { peer } => Some(peer.clone()),
            ConnState::Handshaking { .. } => None,
        }
    }

    fn load(&mut self, id: DocumentId) {
        let generation = self.docs[&id].generation;
        self.task(
            Task::Load {
                doc: id,
                generation,
            },
            StorageOp::LoadRange {
                prefix: vec![id.to_string()],
            },
        );
    }

    /// Sends `error` and closes.
    fn violation(&mut self, conn: ConnectionId, reason: CloseReason) {
        let message = reason.to_string();
        self.send(conn, &Message::Error { message });
        self.close(conn, reason);
    }

    fn close(&mut self, conn: ConnectionId, reason: CloseReason) {
        if self.conns.contains_key(&conn) {
            tracing::debug!(%conn, %reason, "closing connection");
            self.outputs.push_back(Output::Close { conn, reason });
            self.forget_conn(conn);
        }
    }

    fn forget_conn(&mut self, conn: ConnectionId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let ConnState::Open { peer } = &c.state {
            if self.peers.get(peer) == Some(&conn) {
                self.peers.remove(peer);
            }
        }
        for id in c.docs {
            if let Some(doc) = self.docs.get_mut(&id) {
                doc.peers.remove(&conn);
                doc.queued.retain(|(q, ..)| *q != conn);
                self.check_unavailable(id);
            }
        }
        self.emit(Event::PeerDisconnected { conn });
    }

    fn on_frame(&mut self, now: Timestamp, conn: ConnectionId, frame: Vec<u8>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if frame.len() > self.config.limits.max_frame_bytes {
            self.violation(
                conn,
                CloseReason::Protocol(format!("frame of {} bytes is too large", frame.len())),
            );
            return;
        }
        let msg = match Message::decode(&frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%conn, bytes = frame.len(), error = %e, "undecodable frame");
                self.violation(conn, CloseReason::Protocol(e.to_string()));
                return;
            }
        };
        let open_peer = match &c.state {
            ConnState::Open { peer } => Some(peer.clone()),
            ConnState::Handshaking { .. } => None,
        };
        let direction = c.direction;
        match (open_peer, msg) {
            (_, Message::Error { .. }) | (_, Message::Leave) => {
                self.close(conn, CloseReason::PeerLeft)
            }
            (
                None,
                Message::Join {
                    sender_id,
                    peer_metadata,
                    supported_protocol_versions,
                },
            ) if direction == Direction::Incoming => {
                self.on_join(conn, sender_id, peer_metadata, supported_protocol_versions)
            }
            (
                None,
                Message::Peer {
                    sender_id,
                    peer_metadata,
                    selected_protocol_version,
                    ..
                },
            ) if direction == Direction::Outgoing => {
                if selected_protocol_version != PROTOCOL_VERSION {
                    self.violation(conn, CloseReason::UnsupportedVersion);
                    return;
                }
                self.open(conn, sender_id, peer_metadata);
            }
            (None, other) => self.violation(
                conn,
                CloseReason::Protocol(format!("`{}` before the handshake", other.kind())),
            ),
            (Some(_), m @ (Message::Join { .. } | Message::Peer { .. })) => self.violation(
                conn,
                CloseReason::Protocol(format!("`{}` after the handshake", m.kind())),
            ),
            (Some(peer), Message::Request(d)) => self.on_doc_message(now, conn, peer, d, true),
            (Some(peer), Message::Sync(d)) => self.on_doc_message(now, conn, peer, d, false),
            (Some(_), Message::DocUnavailable { document_id, .. }) => {
                if let Some(doc) = self.docs.get_mut(&document_id) {
                    if let Some(pd) = doc.peers.get_mut(&conn) {
                        pd.unavailable = true;
                    }
                    self.check_unavailable(document_id);
                }
            }
            (
                Some(peer),
                Message::Ephemeral {
                    sender_id,
                    document_id,
                    session_id,
                    count,
                    data,
                    ..
                },
            ) => self.on_ephemeral(conn, peer, sender_id, document_id, session_id, count, data),
            (Some(_), Message::RemoteHeads { .. } | Message::Unknown { .. }) => {}
        }
    }

    fn on_join(
        &mut self,
        conn: ConnectionId,
        sender: PeerId,
        meta: PeerMetadata,
        versions: Vec<String>,
    ) {
        if !versions.iter().any(|v| v == PROTOCOL_VERSION) {
            self.violation(conn, CloseReason::UnsupportedVersion);
            return;
        }
        let identity = self.conns[&conn].identity.clone();
        if identity.as_deref().is_some_and(|id| id != sender.as_str()) {
            self.violation(conn, CloseReason::IdentityMismatch);
            return;
        }
        if let Some(old) = self.peers.get(&sender).copied() {
            if old != conn {
                self.close(old, CloseReason::Replaced);
            }
        }
        let answer = Message::Peer {
            sender_id: self.config.peer_id.clone(),
            target_id: sender.clone(),
            peer_metadata: self.metadata(),
            selected_protocol_version: PROTOCOL_VERSION.to_owned(),
        };
        self.send(conn, &answer);
        self.open(conn, sender, meta);
    }

    fn open(&mut self, conn: ConnectionId, peer: PeerId, metadata: PeerMetadata) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Open { peer: peer.clone() };
        }
        self.peers.insert(peer.clone(), conn);
        self.emit(Event::PeerConnected {
            conn,
            peer,
            metadata,
        });
        if self.config.role == Role::Client {
            let ids: Vec<DocumentId> = self.docs.keys().copied().collect();
            for id in ids {
                self.share_with(id, conn);
            }
        }
    }

    /// Client role: make every open connection a peer of this document and sync.
    fn share_with_open_peers(&mut self, id: DocumentId) {
        if self.config.role != Role::Client {
            return;
        }
        let open: Vec<ConnectionId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnState::Open { .. }))
            .map(|(id, _)| *id)
            .collect();
        for conn in open {
            self.share_with(id, conn);
        }
    }

    fn share_with(&mut self, id: DocumentId, conn: ConnectionId) {
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        doc.peers.entry(conn).or_insert_with(|| PeerDoc {
            sync: sync::State::new(),
            told: Vec::new(),
            dirty: true,
            unavailable: false,
        });
        doc.needs_sync = true;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.docs.insert(id);
        }
        if matches!(doc.state, DocState::Evicted) {
            doc.state = DocState::Loading;
            self.load(id);
        }
        self.maybe_sync(id);
    }

    fn on_doc_message(
        &mut self,
        now: Timestamp,
        conn: ConnectionId,
        peer: PeerId,
        d: DocMessage,
        request: bool,
    ) {
        let id = d.document_id;
        let identity = self.conns.get(&conn).and_then(|c| c.identity.clone());
        let info = PeerInfo {
            peer_id: &peer,
            identity: identity.as_deref(),
        };
        if !self.access.allows(&info, &id, Operation::Read) {
            self.reject(conn, &peer, id, Rejection::Forbidden);
            return;
        }
        let size = d.data.len();
        let msg = match sync::Message::decode(&d.data) {
            Ok(m) => m,
            Err(_) => {
                self.violation(
                    conn,
                    CloseReason::Protocol("undecodable automerge sync message".into()),
                );
                return;
            }
        };
        if !msg.changes.is_empty() && !self.access.allows(&info, &id, Operation::Write) {
            self.reject(conn, &peer, id, Rejection::Forbidden);
            return;
        }
        if !self.docs.contains_key(&id) {
            let generation = self.generation();
            self.docs.insert(id, Doc::new(generation, now));
            self.load(id);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.docs.insert(id);
        }
        let max_queue = self.config.limits.max_queued_per_document;
        let doc = self.docs.get_mut(&id).expect("inserted above");
        doc.last_active = now;
        match doc.state {
            DocState::Ready(_) => self.apply(conn, &peer, id, request, msg, size),
            DocState::Loading | DocState::Evicted => {
                if matches!(doc.state, DocState::Evicted) {
                    doc.state = DocState::Loading;
                    doc.queued.push((conn, request, msg, size));
                    self.load(id);
                } else if doc.queued.len() >= max_queue {
                    self.close(conn, CloseReason::Overloaded);
                } else {
                    doc.queued.push((conn, request, msg, size));
                }
            }
        }
    }

    fn reject(&mut self, conn: ConnectionId, peer: &PeerId, id: DocumentId, reason: Rejection) {
        let msg = Message::DocUnavailable {
            sender_id: self.config.peer_id.clone(),
            target_id: peer.clone(),
            document_id: id,
        };
        self.send(conn, &msg);
        self.emit(Event::DocumentRejected {
            conn,
            doc: id,
            reason,
        });
    }

    fn apply(
        &mut self,
        conn: ConnectionId,
        peer: &PeerId,
        id: DocumentId,
        request: bool,
        msg: sync::Message,
        size: usize,
    ) {
        let role = self.config.role;
        let max_doc = self.config.limits.max_document_bytes;
        let doc = self.docs.get_mut(&id).expect("caller checked");
        if !msg.changes.is_empty() && doc.stored_bytes() + size > max_doc {
            self.reject(conn, peer, id, Rejection::TooLarge);
            return;
        }
        let DocState::Ready(am) = &mut doc.state else {
            return;
        };
        let pd = doc.peers.entry(conn).or_insert_with(|| PeerDoc {
            sync: sync::State::new(),
            told: Vec::new(),
            dirty: true,
            unavailable: false,
        });
        pd.unavailable = false;
        let their_heads = msg.heads.clone();
        let empty_here = am.get_heads().is_empty();
        if role == Role::Relay && request && empty_here && msg.changes.is_empty() {
            // Neither side has it: answer like the JS server and forget the peer's interest.
            doc.peers.remove(&conn);
            let forget = doc.peers.is_empty() && doc.chunks.is_empty() && doc.pending_writes == 0;
            if forget {
                self.docs.remove(&id);
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                c.docs.remove(&id);
            }
            self.reject_unavailable(conn, peer, id);
            return;
        }
        let before = am.get_heads();
        if let Err(e) = am.receive_sync_message(&mut pd.sync, msg) {
            tracing::debug!(%conn, doc = %id, error = %e, "sync message could not be applied");
            self.violation(
                conn,
                CloseReason::Protocol("sync message could not be applied".into()),
            );
            return;
        }
        let after = am.get_heads();
        if !their_heads.is_empty() {
            self.emit(Event::PeerHasHeads {
                conn,
                doc: id,
                heads: their_heads,
            });
        }
        if after != before {
            if role == Role::Client {
                self.emit(Event::DocumentChanged {
                    doc: id,
                    heads: after,
                });
            }
            // New heads: `persist` flags every peer of the document.
            self.persist(id, &before);
        }
        let doc = self.docs.get_mut(&id).expect("still there");
        if let Some(pd) = doc.peers.get_mut(&conn) {
            pd.dirty = true;
        }
        self.maybe_sync(id);
    }

    fn reject_unavailable(&mut self, conn: ConnectionId, peer: &PeerId, id: DocumentId) {
        let msg = Message::DocUnavailable {
            sender_id: self.config.peer_id.clone(),
            target_id: peer.clone(),
            document_id: id,
        };
        self.send(conn, &msg);
    }

    /// Writes the changes since `before` as an incremental chunk.
    fn persist(&mut self, id: DocumentId, before: &[ChangeHash]) {
        let doc = self.docs.get_mut(&id).expect("caller checked");
        let DocState::Ready(am) = &doc.state else {
            return;
        };
        let bytes = am.save_after(before);
        let heads = am.get_heads();
        let key = chunk_key(&id, "incremental", hex::encode(Sha256::digest(&bytes)));
        doc.pending_writes += 1;
        doc.needs_sync = true;
        doc.inflight_bytes += bytes.len();
        let task = Task::Chunk {
            doc: id,
            generation: doc.generation,
            key: key.clone(),
            bytes: bytes.len(),
            heads,
        };
        self.task(task, StorageOp::Put { key, data: bytes });
    }

    /// Generates sync messages for every peer of the document, unless a write is in flight.
    fn maybe_sync(&mut self, id: DocumentId) {
        let role = self.config.role;
        let our_id = self.config.peer_id.clone();
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        let any_dirty = doc.peers.values().any(|p| p.dirty);
        if (!doc.needs_sync && !any_dirty) || doc.pending_writes > 0 {
            return;
        }
        let DocState::Ready(am) = &doc.state else {
            return;
        };
        let everyone = std::mem::replace(&mut doc.needs_sync, false);
        let empty = am.get_heads().is_empty();
        let ours = am.get_heads();
        let mut frames = Vec::new();
        for (conn, pd) in doc.peers.iter_mut() {
            let dirty = std::mem::replace(&mut pd.dirty, false);
            if !everyone && !dirty && pd.told == ours {
                continue;
            }
            if pd.unavailable && empty {
                continue;
            }
            if pd.told != ours {
                // Undo automerge's "they already know" shortcut (see `PeerDoc::told`).
                pd.sync.last_sent_heads = pd.told.clone();
            }
            if let Some(m) = am.generate_sync_message(&mut pd.sync) {
                pd.told = m.heads.clone();
                frames.push((*conn, m.encode()));
            }
        }
        for (conn, data) in frames {
            let Some(target_id) = self.peer_of(conn) else {
                continue;
            };
            let d = DocMessage {
                sender_id: our_id.clone(),
                target_id,
                document_id: id,
                data,
            };
            let msg = if role == Role::Client && empty {
                Message::Request(d)
            } else {
                Message::Sync(d)
            };
            self.send(conn, &msg);
        }
    }

    fn check_unavailable(&mut self, id: DocumentId) {
        if self.config.role != Role::Client {
            return;
        }
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        let DocState::Ready(am) = &doc.state else {
            return;
        };
        let all_said_no = !doc.peers.is_empty() && doc.peers.values().all(|p| p.unavailable);
        if doc.wanted && am.get_heads().is_empty() && all_said_no && !doc.unavailable_reported {
            doc.unavailable_reported = true;
            self.emit(Event::DocumentUnavailable { doc: id });
        }
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one wire message")]
    fn on_ephemeral(
        &mut self,
        from: ConnectionId,
        peer: PeerId,
        sender_id: PeerId,
        id: DocumentId,
        session_id: String,
        count: u64,
        data: Vec<u8>,
    ) {
        let identity = self.conns.get(&from).and_then(|c| c.identity.clone());
        let info = PeerInfo {
            peer_id: &peer,
            identity: identity.as_deref(),
        };
        if !self.access.allows(&info, &id, Operation::Read) {
            return;
        }
        if let Some(&last) = self.ephemeral_seen.get(&session_id) {
            if count <= last {
                return;
            }
        } else if self.ephemeral_seen.len() >= self.config.limits.max_ephemeral_sessions {
            // Forget the oldest-keyed session; at worst one duplicate gets through.
            let first = self.ephemeral_seen.keys().next().cloned();
            if let Some(first) = first {
                self.ephemeral_seen.remove(&first);
            }
        }
        self.ephemeral_seen.insert(session_id.clone(), count);
        if self.config.role == Role::Client {
            self.emit(Event::Ephemeral {
                doc: id,
                sender: sender_id.clone(),
                data: data.clone(),
            });
        }
        let Some(doc) = self.docs.get(&id) else {
            return;
        };
        let targets: Vec<ConnectionId> = doc.peers.keys().copied().filter(|c| *c != from).collect();
        for conn in targets {
            let Some(target_id) = self.peer_of(conn) else {
                continue;
            };
            let ident = self.conns.get(&conn).and_then(|c| c.identity.clone());
            let info = PeerInfo {
                peer_id: &target_id,
                identity: ident.as_deref(),
            };
            if !self.access.allows(&info, &id, Operation::Read) {
                continue;
            }
            let msg = Message::Ephemeral {
                sender_id: sender_id.clone(),
                target_id,
                document_id: id,
                session_id: session_id.clone(),
                count,
                data: data.clone(),
            };
            self.send(conn, &msg);
        }
    }

    fn on_storage(
        &mut self,
        now: Timestamp,
        task: TaskId,
        result: Result<StorageOutcome, StoreError>,
    ) {
        let Some(t) = self.tasks.remove(&task) else {
            return;
        };
        match t {
            Task::Load { doc, generation } => self.on_loaded(now, doc, generation, result),
            Task::Chunk {
                doc,
                generation,
                key,
                bytes,
                heads,
            } => {
                let Some(d) = self.docs.get_mut(&doc) else {
                    return;
                };
                if d.generation != generation {
                    return;
                }
                d.pending_writes -= 1;
                d.inflight_bytes = d.inflight_bytes.saturating_sub(bytes);
                match result {
                    Ok(_) => {
                        d.chunks.insert(key, bytes);
                        self.emit(Event::DocumentDurable { doc, heads });
                        self.maybe_sync(doc);
                        self.maybe_compact(doc);
                    }
                    Err(error) => self.write_failed(doc, error),
                }
            }
            Task::Snapshot {
                doc,
                generation,
                key,
                bytes,
                covers,
            } => {
                let Some(d) = self.docs.get_mut(&doc) else {
                    return;
                };
                if d.generation != generation {
                    return;
                }
                d.compacting = false;
                match result {
                    Ok(_) => {
                        for k in &covers {
                            d.chunks.remove(k);
                        }
                        d.chunks.insert(key.clone(), bytes);
                        let n = covers.len();
                        for k in covers.into_iter().filter(|k| *k != key) {
                            self.task(Task::Delete { doc }, StorageOp::Delete { key: k });
                        }
                        self.emit(Event::Compacted { doc, chunks: n });
                    }
                    // Nothing was lost: the chunks are still there.
                    Err(error) => self.emit(Event::StorageFailed {
                        doc: Some(doc),
                        error,
                    }),
                }
            }
            Task::Delete { doc } => {
                if let Err(error) = result {
                    // A leftover chunk is harmless: loading is idempotent.
                    self.emit(Event::StorageFailed {
                        doc: Some(doc),
                        error,
                    });
                }
            }
        }
    }

    fn on_loaded(
        &mut self,
        now: Timestamp,
        id: DocumentId,
        generation: u64,
        result: Result<StorageOutcome, StoreError>,
    ) {
        let encoding = self.config.text_encoding;
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        if doc.generation != generation || !matches!(doc.state, DocState::Loading) {
            return;
        }
        let chunks = match result {
            Ok(StorageOutcome::Range(chunks)) => chunks,
            Ok(_) => Vec::new(),
            Err(error) => {
                self.emit(Event::StorageFailed {
                    doc: Some(id),
                    error,
                });
                self.load_failed(id);
                return;
            }
        };
        let mut am = Automerge::new_with_encoding(encoding);
        let mut actor = [0u8; 16];
        self.rng.fill_bytes(&mut actor);
        am.set_actor(automerge::ActorId::from(actor));
        let mut sizes = BTreeMap::new();
        let mut total = 0;
        for (key, bytes) in chunks {
            if key.len() != 3 || !(key[1] == "incremental" || key[1] == "snapshot") {
                continue;
            }
            if let Err(e) = am.load_incremental(&bytes) {
                tracing::error!(doc = %id, bytes = bytes.len(), error = %e, "stored chunk does not load");
                self.emit(Event::StorageFailed {
                    doc: Some(id),
                    error: StoreError::Corrupt {
                        detail: format!("chunk of document {id} does not load"),
                    },
                });
                self.load_failed(id);
                return;
            }
            total += bytes.len();
            sizes.insert(key, bytes.len());
        }
        let doc = self.docs.get_mut(&id).expect("checked above");
        doc.chunks = sizes;
        doc.state = DocState::Ready(Box::new(am));
        doc.last_active = now;
        doc.needs_sync = true;
        self.emit(Event::DocumentLoaded {
            doc: id,
            bytes: total,
        });
        let doc = self.docs.get_mut(&id).expect("checked above");
        let queued = std::mem::take(&mut doc.queued);
        for (conn, request, msg, size) in queued {
            let Some(peer) = self.peer_of(conn) else {
                continue;
            };
            if !self.docs.contains_key(&id) {
                // A request for a missing document removed it; re-create to answer the rest.
                let generation = self.generation();
                let mut d = Doc::new(generation, now);
                d.state = DocState::Ready(Box::new(Automerge::new_with_encoding(encoding)));
                self.docs.insert(id, d);
            }
            self.apply(conn, &peer, id, request, msg, size);
        }
        self.maybe_sync(id);
        self.check_unavailable(id);
        self.maybe_compact(id);
    }

    fn load_failed(&mut self, id: DocumentId) {
        let Some(doc) = self.docs.remove(&id) else {
            return;
        };
        let our_id = self.config.peer_id.clone();
        let mut told = BTreeSet::new();
        for conn in doc
            .queued
            .iter()
            .map(|q| q.0)
            .chain(doc.peers.keys().copied())
        {
            if !told.insert(conn) {
                continue;
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                c.docs.remove(&id);
            }
            if let Some(target_id) = self.peer_of(conn) {
                self.send(
                    conn,
                    &Message::DocUnavailable {
                        sender_id: our_id.clone(),
                        target_id,
                        document_id: id,
                    },
                );
                self.emit(Event::DocumentRejected {
                    conn,
                    doc: id,
                    reason: Rejection::StorageFailed,
                });
            }
        }
    }

    /// A write failed: the in-memory document holds changes that are not durable and were
    /// never revealed. Drop it (it reloads from what is durable) and close the connections
    /// syncing it so their peers resend.
    fn write_failed(&mut self, id: DocumentId, error: StoreError) {
        tracing::error!(doc = %id, error = %error, "write failed; dropping the document from memory");
        self.emit(Event::StorageFailed {
            doc: Some(id),
            error,
        });
        let Some(doc) = self.docs.remove(&id) else {
            return;
        };
        for conn in doc
            .peers
            .keys()
            .copied()
            .chain(doc.queued.iter().map(|q| q.0))
            .collect::<BTreeSet<_>>()
        {
            self.close(conn, CloseReason::StorageFailed);
        }
    }

    fn maybe_compact(&mut self, id: DocumentId) {
        let threshold = self.config.limits.compact_after_chunks;
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        if doc.compacting || doc.chunks.len() < threshold {
            return;
        }
        let DocState::Ready(am) = &doc.state else {
            return;
        };
        let bytes = am.save();
        let key = chunk_key(&id, "snapshot", heads_hash(&am.get_heads()));
        let covers: Vec<StorageKey> = doc.chunks.keys().cloned().collect();
        doc.compacting = true;
        let task = Task::Snapshot {
            doc: id,
            generation: doc.generation,
            key: key.clone(),
            bytes: bytes.len(),
            covers,
        };
        self.task(task, StorageOp::Put { key, data: bytes });
    }
}

#[cfg(test)]
mod tests;
