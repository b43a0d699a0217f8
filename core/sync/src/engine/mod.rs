//! The sans-IO sync engine.
//!
//! One [`Engine`] serves many connections and many documents. It keeps one
//! `automerge::sync::State` per (connection, document), loads documents from storage on
//! demand, writes every new change as an incremental chunk, compacts, evicts idle documents,
//! and forwards ephemeral messages. See the crate docs for the host contract.
//!
//! The code is split by concern:
//! - [`interface`](self): inputs, outputs, events, close and refusal reasons;
//! - `connection`: per-connection state (handshake, identity, rate budgets, the ephemeral
//!   de-duplication table) and frame dispatch;
//! - `document`: per-document state (the Automerge document, one sync state per peer, the
//!   write gate) and the sync protocol;
//! - `storage`: storage tasks and their results (load, write, compact);
//! - `access`: the access policy ([`Access`]) and its enforcement: who may read, write or
//!   stay connected, re-checked on demand ([`Engine::revalidate_access`]);
//! - `ephemeral`: forwarding ephemeral messages;
//! - `app`: the application's calls (create, import, find, change) and the host's own
//!   writes ([`Engine::update_document`]);
//! - `sync_check`: checks every Automerge sync message before Automerge sees it;
//! - `timers`, `budget`: the timer heap and the token buckets behind the rate limits.
//!
//! ## Durable acknowledgement
//! Every sync message reveals the sender's heads. The engine therefore generates sync
//! messages for a document only when it has no write for that document in flight: changes
//! received from one peer are written first, and only after the host reports the write
//! durable do the sender and everyone else hear about them.
//!
//! A busy document (a meeting's minutes with eight members typing) would almost always have
//! a write in flight, and its peers would wait for a gap that never comes. So while a write
//! is in flight, peers' messages for that document wait; when it is durable the engine
//! first sends what it now may (everything in memory is durable), then applies every
//! waiting message at once and writes what they added as one chunk. Each flush thus
//! releases one round of sync messages, and the write and the messages cost one per flush
//! rather than one per incoming message.
//!
//! ## Hostile peers
//! Every field of a frame that sizes an allocation or a loop is checked against a named
//! limit ([`Limits`], [`SyncLimits`]) before it is used; a peer that breaks the protocol is
//! closed with `error`, never the engine. Should Automerge still panic on a message, the
//! panic is contained: the connection that sent it is closed and the document is dropped
//! from memory (it reloads from what is durable).

mod access;
mod app;
mod budget;
mod config;
mod connection;
mod document;
mod ephemeral;
mod interface;
mod storage;
pub mod sync_check;
mod timers;

use std::collections::{BTreeMap, VecDeque};

use automerge::Automerge;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use access::{Access, OpenAccess, Operation, PeerInfo};
pub use app::DocumentUpdate;
pub use config::{EngineConfig, Limits, Role, DEFAULT_SYNC_DEBOUNCE};
pub use interface::{
    ChangeFailed, CloseReason, Direction, EngineError, EphemeralDrop, Event, Input, Output,
    Rejection, SharedEphemeral, Stats,
};
pub use sync_check::{SyncCheckError, SyncLimits, SyncSummary};

use budget::Buckets;
use connection::{Conn, ConnState};
use document::{Doc, DocState};
use storage::Task;
use timers::{Timer, Timers};

use crate::ids::{ConnectionId, DocumentId, PeerId, TaskId};
use crate::store::StorageOp;
use crate::time::Timestamp;
use crate::wire::{Message, PeerMetadata};

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
    timers: Timers,
    /// New-document budgets per identity (relay role).
    creations: Buckets,
    /// Operations held by loaded documents (sum of `Doc::ops`).
    loaded_ops: u64,
    outputs: VecDeque<Output>,
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
            timers: Timers::default(),
            creations: Buckets::default(),
            loaded_ops: 0,
            outputs: VecDeque::new(),
        }
    }

    /// Replaces the access policy (checked on every document message). Connections already
    /// open follow the new policy from their next message; call
    /// [`Engine::revalidate_access`] to apply it to them at once.
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
            loaded_ops: self.loaded_ops,
            timers: self.timers.len(),
        }
    }

    /// The next thing the host must do, in production order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Engine::handle_timeout`] should next be called, if ever. It may be earlier
    /// than strictly needed (a document used since its timer was set); calling
    /// `handle_timeout` then is harmless.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    /// Runs timers: handshake timeouts, idle eviction and debounced announcements.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let mut idle = Vec::new();
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Handshake(conn) => {
                    let late = self.conns.get(&conn).is_some_and(|c| {
                        matches!(c.state, ConnState::Handshaking { since }
                            if since.plus(self.config.limits.handshake_timeout) <= now)
                    });
                    if late {
                        self.close(conn, CloseReason::HandshakeTimeout);
                    }
                }
                Timer::Idle(id, generation) => {
                    if self.idle_due(now, id, generation) {
                        idle.push(id);
                    }
                }
                Timer::Sync(id, generation) => {
                    let due = self.docs.get_mut(&id).is_some_and(|d| {
                        let due = d.generation == generation;
                        if due {
                            d.sync_timer = false;
                        }
                        due
                    });
                    if due {
                        self.maybe_sync(id, now);
                    }
                }
            }
        }
        for id in idle {
            self.evict(id);
        }
    }

    /// Feeds one input in.
    pub fn handle_input(&mut self, now: Timestamp, input: Input) {
        match input {
            Input::Connected {
                conn,
                direction,
                identity,
                local_peer,
            } => self.on_connected(now, conn, direction, identity, local_peer),
            Input::Frame { conn, frame } => self.on_frame(now, conn, frame),
            Input::Message { conn, msg, .. } => self.on_message(now, conn, msg),
            Input::Attached {
                conn,
                direction,
                identity,
                local_peer,
                peer,
            } => self.on_attached(now, conn, direction, identity, local_peer, peer),
            Input::Disconnected { conn } => self.forget_conn(conn),
            Input::StorageDone { task, result } => self.on_storage(now, task, result),
        }
    }

    // ---------------------------------------------------------------- shared helpers

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// A new Automerge document whose actor comes from the engine's seeded RNG (never the
    /// OS RNG, or the simulator would not be deterministic).
    fn new_automerge(&mut self) -> Automerge {
        let mut am = Automerge::new_with_encoding(self.config.text_encoding);
        let mut actor = [0u8; 16];
        self.rng.fill_bytes(&mut actor);
        am.set_actor(automerge::ActorId::from(actor));
        am
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
}

/// Runs `f`, turning a panic into `None`. Automerge is a large dependency fed with bytes
/// from peers; a panic inside it must cost one connection and one document, never the
/// engine that serves everyone.
fn contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

#[cfg(test)]
mod tests;
