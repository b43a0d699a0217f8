//! The `engine_frames` harness, shared by the fuzz target (`fuzz_targets/engine_frames.rs`)
//! and the regression replay (`tests/tests/fuzz_regressions.rs`), so that a saved input
//! replays under `cargo test` exactly as the fuzzer ran it.
//!
//! A relay engine is driven through a valid handshake, then fed a fuzzer-chosen list of
//! [`Step`]s: raw frames, envelopes around arbitrary data, real sync messages from a small
//! in-harness peer (whose second-round messages carry Bloom filters), sync messages built
//! from parts (a `have` whose Bloom filter the fuzzer sizes), requests for many document
//! ids, hostile ephemeral messages, second joins, clock jumps, failed and delayed storage.
//!
//! Invariants, checked after every step:
//! - nothing panics (and nothing allocates past the fuzzer's memory limit);
//! - state is bounded: connections ≤ [`MAX_CONNECTIONS`], documents known ≤ the distinct
//!   document ids the harness named, storage tasks in flight ≤ the tasks the harness is
//!   holding back, outputs ≤ [`OUTPUTS_PER_INPUT`] per input fed plus
//!   [`OUTPUTS_PER_DOCUMENT`] per known document;
//! - timers do not spin: after `handle_timeout(now)` the next deadline moves past `now`
//!   within [`MAX_TIMER_ROUNDS`] calls.
//!
//! And at the end of the input:
//! - quiet when idle: once the peer stops sending and every timer has run, a far-future
//!   `handle_timeout` sends nothing;
//! - nothing kept for nobody: once every peer has left and every timer has run, the engine
//!   keeps no entry for a document that is not in memory.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash};
use cairn_sync::engine::{Direction, Engine, EngineConfig, Input, Limits, Output, Role};
use cairn_sync::ids::{ConnectionId, DocumentId, PeerId, TaskId};
use cairn_sync::store::{MemoryStore, Storage, StorageOp, StoreError};
use cairn_sync::time::Timestamp;
use cairn_sync::wire::{DocMessage, Message, PeerMetadata};

/// Steps taken from one input; the rest is ignored. Long enough for a handshake, a few
/// sync rounds and an attack; short enough to keep the fuzzer's runs fast.
pub(crate) const MAX_STEPS: usize = 64;

/// Documents the in-harness peer edits and syncs for real.
const PEER_DOCUMENTS: usize = 3;

/// Connections the harness keeps open at once; a join past this closes the oldest first.
/// Four is enough for takeovers and fan-out without making every run slow.
pub(crate) const MAX_CONNECTIONS: usize = 4;

/// Outputs one engine input (a frame, a storage result, a disconnect, a timer run) may
/// cause, besides per-document work: a few frames to each of [`MAX_CONNECTIONS`] peers, a
/// load, a write, a compaction with its deletes, and their events. Far above what a correct
/// engine emits (see `check_bounds`), far below a loop that amplifies.
pub(crate) const OUTPUTS_PER_INPUT: usize = 64;

/// Outputs a timer run or a disconnect may cause per document it touches (an eviction
/// event, a close, a frame).
pub(crate) const OUTPUTS_PER_DOCUMENT: usize = 4;

/// Due-timer rounds after which the harness calls the timers stuck: a host that calls
/// `handle_timeout` whenever `poll_timeout` is due would spin.
pub(crate) const MAX_TIMER_ROUNDS: usize = 64;

/// Hashes in one crafted list (`heads`, `need`, `lastSync`). Automerge accepts any number;
/// 64 × 32 bytes keeps a crafted frame small.
const MAX_CRAFTED_HASHES: usize = 64;

/// `have` entries in one crafted sync message (automerge sends one).
const MAX_CRAFTED_HAVES: usize = 4;

/// Largest Bloom filter the harness fills to the size its header announces; past this it
/// sends only the fuzzer's own bits (automerge then rejects the truncated filter).
const MAX_BLOOM_FILL: usize = 64 << 10;

/// Storage tasks the harness holds back at once before it completes them anyway.
const MAX_HELD_TASKS: usize = 256;

/// The in-harness peer's id.
const PEER: &str = "fuzzer";
/// The relay's id.
const RELAY: &str = "relay";

/// One thing the fuzzer makes happen.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Any bytes as a frame.
    Raw(Vec<u8>),
    /// A valid envelope (`request`, `sync`, `doc-unavailable`, `leave`) around arbitrary data.
    Envelope {
        /// Which envelope (`kind % 4`).
        kind: u8,
        /// About which document.
        doc: DocRef,
        /// The sync data it carries.
        data: Vec<u8>,
    },
    /// The in-harness peer changes one of its documents.
    Edit {
        /// Which (`doc % PEER_DOCUMENTS`).
        doc: u8,
        /// Which key (`key % 8`).
        key: u8,
        /// The value.
        value: i64,
    },
    /// The in-harness peer sends its next real sync message, maybe with one byte flipped.
    Sync {
        /// Which document.
        doc: u8,
        /// Send it as `request` rather than `sync`.
        request: bool,
        /// Flip `byte` into the message at `at % len`.
        flip: Option<(u16, u8)>,
    },
    /// A sync message built from parts for one of the peer's documents.
    Crafted {
        /// Which document.
        doc: u8,
        /// Send it as `request` rather than `sync`.
        request: bool,
        /// The parts.
        message: CraftedSync,
    },
    /// `sync` (or `request`) with an empty document's first message for `count` ids in a
    /// row from the named-document space, as a peer that opens many documents does.
    ManyDocuments {
        /// The first id's number.
        first: u16,
        /// How many.
        count: u8,
        /// Send `request` rather than `sync`.
        request: bool,
    },
    /// An ephemeral message.
    Ephemeral {
        /// About which document.
        doc: DocRef,
        /// The `senderId` it claims.
        sender: Claimed,
        /// The session id.
        session: Session,
        /// The per-session counter.
        count: Count64,
        /// The payload.
        data: Vec<u8>,
    },
    /// A new connection joins under this peer id (the old connections stay open); it
    /// becomes the connection the in-harness peer talks through.
    Join(Claimed),
    /// Advance the clock by this many tens of milliseconds and run due timers.
    Tick(u16),
    /// The next write the relay asks for fails with "disk full".
    FailNextWrite,
    /// Hold the relay's storage tasks back until [`Step::ReleaseStorage`].
    HoldStorage,
    /// Complete every held storage task, oldest or newest first.
    ReleaseStorage {
        /// Complete the newest first.
        newest_first: bool,
    },
    /// Drop the current connection and handshake again as the in-harness peer.
    Reconnect,
}

/// A document a step names.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DocRef {
    /// One of the in-harness peer's documents (`n % PEER_DOCUMENTS`).
    Peer(u8),
    /// One of 65,536 other ids.
    Named(u16),
}

/// A peer id a message claims.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The in-harness peer's own id.
    Same,
    /// The relay's own id.
    Relay,
    /// One of four other ids.
    Other(u8),
}

/// An ephemeral session id.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Session {
    /// One of eight short ids.
    Short(u8),
    /// `len` copies of one letter.
    Long {
        /// Length in bytes.
        len: u16,
        /// Which letter (`fill % 26`).
        fill: u8,
    },
}

/// A 64-bit count, favouring the small and the extreme.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count64 {
    /// `n`.
    Small(u8),
    /// `u64::MAX - n`.
    NearMax(u8),
    /// Any value.
    Any(u64),
}

/// A 32-bit count, favouring the small and the extreme.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count32 {
    /// `n % 8`.
    Tiny(u8),
    /// `n`.
    Small(u8),
    /// `u32::MAX - n`.
    NearMax(u8),
    /// Any value.
    Any(u32),
}

/// An automerge sync message built from parts (encoded as automerge's wire format, not
/// through its encoder, so that anything its decoder accepts can be sent).
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub(crate) struct CraftedSync {
    /// Message type byte 0x43 (v2) instead of 0x42 (v1).
    pub(crate) v2: bool,
    /// `heads`.
    pub(crate) heads: Hashes,
    /// `need`.
    pub(crate) need: Hashes,
    /// `have` (at most [`MAX_CRAFTED_HAVES`] are sent).
    pub(crate) have: Vec<CraftedHave>,
    /// `changes`.
    pub(crate) changes: Changes,
    /// The trailing flags bytes, if any.
    pub(crate) flags: Option<Vec<u8>>,
}

/// One `have` entry.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub(crate) struct CraftedHave {
    /// `lastSync`.
    pub(crate) last_sync: Hashes,
    /// The Bloom filter.
    pub(crate) bloom: Bloom,
}

/// A list of change hashes.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hashes {
    /// None.
    Empty,
    /// The in-harness peer's heads for the document.
    Ours,
    /// `count` made-up hashes.
    Random {
        /// How many (`count % (MAX_CRAFTED_HASHES + 1)`).
        count: u8,
        /// Varies the hashes.
        seed: u8,
    },
}

/// A Bloom filter, as automerge encodes it: three LEB128 numbers and the bits.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bloom {
    /// No bytes: automerge reads the default (empty) filter.
    Empty,
    /// Header and bits chosen by the fuzzer.
    Parts {
        /// `numEntries`.
        num_entries: Count32,
        /// `numBitsPerEntry`.
        bits_per_entry: Count32,
        /// `numProbes`.
        num_probes: Count32,
        /// The bits.
        bits: BloomBits,
    },
}

/// The bit array of a crafted Bloom filter.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub(crate) enum BloomBits {
    /// As many bytes as the header announces (up to [`MAX_BLOOM_FILL`]), all this value.
    Fill(u8),
    /// Exactly these bytes, whatever the header says.
    Given(Vec<u8>),
}

/// The `changes` of a crafted message.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub(crate) enum Changes {
    /// None.
    Empty,
    /// Every change of the in-harness peer's document.
    Ours,
    /// One chunk of these bytes.
    Garbage(Vec<u8>),
}

/// Decodes a fuzzer input into steps exactly as `libfuzzer_sys::fuzz_target!` does for a
/// `|steps: Vec<Step>|` target: inputs shorter than the size hint, or that `Arbitrary`
/// rejects, are skipped (`None`).
#[allow(
    dead_code,
    reason = "the replay test calls it; the fuzz target decodes through libfuzzer-sys itself"
)]
pub(crate) fn decode(bytes: &[u8]) -> Option<Vec<Step>> {
    if bytes.len() < <Vec<Step> as Arbitrary>::size_hint(0).0 {
        return None;
    }
    <Vec<Step> as Arbitrary>::arbitrary_take_rest(Unstructured::new(bytes)).ok()
}

/// Runs one input and checks every invariant; panics on a violation.
pub(crate) fn run(steps: Vec<Step>) {
    let mut h = Harness::new();
    for step in steps.into_iter().take(MAX_STEPS) {
        h.step(step);
        h.check_bounds();
    }
    h.check_quiet_when_idle();
    h.check_nothing_kept_for_nobody();
}

/// One of the in-harness peer's documents and its sync state with the relay.
struct PeerDoc {
    id: DocumentId,
    doc: Automerge,
    state: sync::State,
}

struct Harness {
    relay: Engine,
    store: MemoryStore,
    now: Timestamp,
    next_conn: u64,
    /// Open connections, oldest first.
    open: Vec<ConnectionId>,
    /// The connection the in-harness peer talks through, and the id it joined as.
    current: Option<(ConnectionId, PeerId)>,
    fail_next_write: bool,
    hold_storage: bool,
    held: VecDeque<(TaskId, StorageOp)>,
    docs: Vec<PeerDoc>,
    /// Every document id a frame sent to the relay named.
    named: BTreeSet<DocumentId>,
    /// An empty document's first sync message (what a peer opening a document sends).
    first_message: Vec<u8>,
    /// Counters for this step's output bound.
    inputs: usize,
    outputs: usize,
    most_documents: usize,
    /// Frames the relay sent, over the whole run.
    sends: usize,
}

impl Harness {
    fn new() -> Self {
        let store = MemoryStore::default();
        let limits = Limits {
            idle_eviction: Duration::from_secs(1),
            compact_after_chunks: 4,
            max_frame_bytes: 1 << 20,
            max_document_bytes: 256 << 10,
            max_queued_per_document: 8,
            max_ephemeral_sessions: 16,
            ..Limits::default()
        };
        let config = EngineConfig::new(Role::Relay, PeerId::from(RELAY), 1)
            .with_storage_id(store.storage_id().expect("memory store"))
            .with_limits(limits);
        let docs = (0..PEER_DOCUMENTS)
            .map(|i| PeerDoc {
                id: DocumentId::from_bytes([i as u8 + 1; 16]),
                doc: Automerge::new(),
                state: sync::State::new(),
            })
            .collect();
        let first_message = Automerge::new()
            .generate_sync_message(&mut sync::State::new())
            .expect("an empty document still says hello")
            .encode();
        let mut h = Harness {
            relay: Engine::new(config),
            store,
            now: Timestamp::from_millis(0),
            next_conn: 0,
            open: Vec::new(),
            current: None,
            fail_next_write: false,
            hold_storage: false,
            held: VecDeque::new(),
            docs,
            named: BTreeSet::new(),
            first_message,
            inputs: 0,
            outputs: 0,
            most_documents: 0,
            sends: 0,
        };
        h.join(PeerId::from(PEER));
        h
    }

    fn input(&mut self, input: Input) {
        self.inputs += 1;
        self.relay.handle_input(self.now, input);
    }

    fn timeout(&mut self) {
        self.inputs += 1;
        self.relay.handle_timeout(self.now);
        self.drain();
    }

    /// Opens a connection and sends `join` as `peer`.
    fn join(&mut self, peer: PeerId) {
        if self.open.len() >= MAX_CONNECTIONS {
            let oldest = self.open.remove(0);
            self.disconnect(oldest);
        }
        self.next_conn += 1;
        let conn = ConnectionId::new(self.next_conn);
        self.open.push(conn);
        self.current = Some((conn, peer.clone()));
        for d in &mut self.docs {
            d.state = sync::State::new();
        }
        self.input(Input::Connected {
            conn,
            direction: Direction::Incoming,
            identity: None,
            local_peer: None,
        });
        self.drain();
        let join = Message::Join {
            sender_id: peer,
            peer_metadata: PeerMetadata::default(),
            supported_protocol_versions: vec!["1".into()],
        };
        self.send(join.encode());
    }

    fn disconnect(&mut self, conn: ConnectionId) {
        self.open.retain(|c| *c != conn);
        if self.current.as_ref().is_some_and(|(c, _)| *c == conn) {
            self.current = None;
        }
        self.input(Input::Disconnected { conn });
        self.drain();
    }

    /// Sends a frame on the current connection.
    fn send(&mut self, frame: Vec<u8>) {
        let Some((conn, _)) = self.current else {
            return;
        };
        if let Ok(
            Message::Request(DocMessage { document_id, .. })
            | Message::Sync(DocMessage { document_id, .. })
            | Message::DocUnavailable { document_id, .. }
            | Message::Ephemeral { document_id, .. },
        ) = Message::decode(&frame)
        {
            self.named.insert(document_id);
        }
        self.input(Input::Frame { conn, frame });
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(output) = self.relay.poll_output() {
            self.outputs += 1;
            match output {
                Output::Send { conn, frame } => {
                    self.sends += 1;
                    if self.current.as_ref().is_some_and(|(c, _)| *c == conn) {
                        self.receive(&frame);
                    }
                }
                Output::Event(_) => {}
                Output::Close { conn, .. } => {
                    if self.open.contains(&conn) {
                        self.disconnect(conn);
                    }
                }
                Output::Storage { task, op } => {
                    if self.hold_storage && self.held.len() < MAX_HELD_TASKS {
                        self.held.push_back((task, op));
                    } else {
                        self.complete(task, op);
                    }
                }
            }
        }
    }

    fn complete(&mut self, task: TaskId, op: StorageOp) {
        let result = if op.is_write() && std::mem::take(&mut self.fail_next_write) {
            Err(StoreError::Io(std::io::Error::from_raw_os_error(28)))
        } else {
            self.store.execute(op)
        };
        self.input(Input::StorageDone { task, result });
    }

    fn release_storage(&mut self, newest_first: bool) {
        self.hold_storage = false;
        while let Some((task, op)) = if newest_first {
            self.held.pop_back()
        } else {
            self.held.pop_front()
        } {
            self.complete(task, op);
            self.drain();
        }
    }

    /// The in-harness peer takes the relay's sync messages in, so the protocol moves on.
    fn receive(&mut self, frame: &[u8]) {
        let Ok(Message::Sync(d) | Message::Request(d)) = Message::decode(frame) else {
            return;
        };
        let Some(pd) = self.docs.iter_mut().find(|pd| pd.id == d.document_id) else {
            return;
        };
        if let Ok(msg) = sync::Message::decode(&d.data) {
            // A relay message the peer cannot apply is the relay's business, not a finding.
            let _ = pd.doc.receive_sync_message(&mut pd.state, msg);
        }
    }

    fn document(&self, doc: DocRef) -> DocumentId {
        match doc {
            DocRef::Peer(i) => self.docs[usize::from(i) % PEER_DOCUMENTS].id,
            DocRef::Named(n) => {
                let mut bytes = [0u8; 16];
                bytes[0] = 0xab;
                bytes[1..3].copy_from_slice(&n.to_be_bytes());
                DocumentId::from_bytes(bytes)
            }
        }
    }

    fn claimed(&self, who: Claimed) -> PeerId {
        match who {
            Claimed::Same => PeerId::from(PEER),
            Claimed::Relay => PeerId::from(RELAY),
            Claimed::Other(n) => PeerId::from(format!("peer-{}", n % 4)),
        }
    }

    fn our_id(&self) -> PeerId {
        self.current
            .as_ref()
            .map_or_else(|| PeerId::from(PEER), |(_, id)| id.clone())
    }

    fn envelope(&self, kind: u8, id: DocumentId, data: Vec<u8>) -> Message {
        let d = DocMessage {
            sender_id: self.our_id(),
            target_id: PeerId::from(RELAY),
            document_id: id,
            data,
        };
        match kind % 4 {
            0 => Message::Request(d),
            1 => Message::Sync(d),
            2 => Message::DocUnavailable {
                sender_id: d.sender_id,
                target_id: d.target_id,
                document_id: d.document_id,
            },
            _ => Message::Leave,
        }
    }

    fn step(&mut self, step: Step) {
        self.inputs = 0;
        self.outputs = 0;
        self.most_documents = self.relay.stats().documents;
        if self.current.is_none() {
            self.join(PeerId::from(PEER));
        }
        match step {
            Step::Raw(frame) => self.send(frame),
            Step::Envelope { kind, doc, data } => {
                let frame = self.envelope(kind, self.document(doc), data).encode();
                self.send(frame);
            }
            Step::Edit { doc, key, value } => {
                let pd = &mut self.docs[usize::from(doc) % PEER_DOCUMENTS];
                let mut tx = pd.doc.transaction();
                tx.put(automerge::ROOT, format!("k{}", key % 8), value)
                    .expect("a put on the root map");
                tx.commit();
            }
            Step::Sync { doc, request, flip } => {
                let i = usize::from(doc) % PEER_DOCUMENTS;
                let pd = &mut self.docs[i];
                let Some(msg) = pd.doc.generate_sync_message(&mut pd.state) else {
                    return;
                };
                let mut data = msg.encode();
                if let Some((at, byte)) = flip {
                    if !data.is_empty() {
                        let at = usize::from(at) % data.len();
                        data[at] ^= byte;
                    }
                }
                let frame = self
                    .envelope(u8::from(!request), self.docs[i].id, data)
                    .encode();
                self.send(frame);
            }
            Step::Crafted {
                doc,
                request,
                message,
            } => {
                let i = usize::from(doc) % PEER_DOCUMENTS;
                let data = message.encode(&self.docs[i].doc);
                let frame = self
                    .envelope(u8::from(!request), self.docs[i].id, data)
                    .encode();
                self.send(frame);
            }
            Step::ManyDocuments {
                first,
                count,
                request,
            } => {
                for n in 0..u16::from(count) {
                    let id = self.document(DocRef::Named(first.wrapping_add(n)));
                    let frame = self
                        .envelope(u8::from(!request), id, self.first_message.clone())
                        .encode();
                    self.send(frame);
                }
            }
            Step::Ephemeral {
                doc,
                sender,
                session,
                count,
                data,
            } => {
                let frame = Message::Ephemeral {
                    sender_id: self.claimed(sender),
                    target_id: PeerId::from(RELAY),
                    document_id: self.document(doc),
                    session_id: session.text(),
                    count: count.value(),
                    data,
                }
                .encode();
                self.send(frame);
            }
            Step::Join(who) => self.join(self.claimed(who)),
            Step::Tick(tens) => {
                self.now = self.now.plus(Duration::from_millis(u64::from(tens) * 10));
                self.run_due_timers();
            }
            Step::FailNextWrite => self.fail_next_write = true,
            Step::HoldStorage => self.hold_storage = true,
            Step::ReleaseStorage { newest_first } => self.release_storage(newest_first),
            Step::Reconnect => {
                if let Some((conn, _)) = self.current {
                    self.disconnect(conn);
                }
                self.join(PeerId::from(PEER));
            }
        }
    }

    /// Runs `handle_timeout` while a deadline is due; panics if it stays due.
    fn run_due_timers(&mut self) {
        for _ in 0..MAX_TIMER_ROUNDS {
            match self.relay.poll_timeout() {
                Some(due) if due <= self.now => self.timeout(),
                _ => return,
            }
        }
        panic!(
            "timers still due after {MAX_TIMER_ROUNDS} handle_timeout calls at {} ms: a host would spin",
            self.now.as_millis()
        );
    }

    fn check_bounds(&mut self) {
        let stats = self.relay.stats();
        self.most_documents = self.most_documents.max(stats.documents);
        assert!(
            stats.connections <= MAX_CONNECTIONS,
            "{} open connections, the harness opened at most {MAX_CONNECTIONS}",
            stats.connections
        );
        assert!(
            stats.documents <= self.named.len(),
            "the relay knows {} documents, peers named {}",
            stats.documents,
            self.named.len()
        );
        // The host answered every task it is not holding back; the engine may have
        // forgotten some of those it holds (for a document it dropped), never more.
        assert!(
            stats.storage_tasks <= self.held.len(),
            "{} storage tasks in flight, the host holds back {}",
            stats.storage_tasks,
            self.held.len()
        );
        let bound =
            OUTPUTS_PER_INPUT * self.inputs.max(1) + OUTPUTS_PER_DOCUMENT * self.most_documents;
        assert!(
            self.outputs <= bound,
            "{} outputs in one step for {} inputs and at most {} documents (bound {bound})",
            self.outputs,
            self.inputs,
            self.most_documents
        );
    }

    /// The peer stops sending: let every timer run, then a far-future timer call must not
    /// send anything.
    fn check_quiet_when_idle(&mut self) {
        self.release_storage(false);
        let limits = self.relay.config().limits.clone();
        let horizon = limits.idle_eviction.max(limits.handshake_timeout) + Duration::from_secs(1);
        self.now = self.now.plus(horizon);
        self.run_due_timers();
        let sends = self.sends;
        self.now = self.now.plus(Duration::from_secs(24 * 3600));
        self.timeout();
        assert_eq!(
            self.sends - sends,
            0,
            "the relay sent frames to a peer that had been idle for a day"
        );
    }

    /// Every peer leaves: once every timer has run, nothing may be kept for a document that
    /// is not in memory (a peer that opened many documents must not leave entries behind).
    fn check_nothing_kept_for_nobody(&mut self) {
        for conn in self.open.clone() {
            self.disconnect(conn);
        }
        let limits = self.relay.config().limits.clone();
        let horizon = limits.idle_eviction.max(limits.handshake_timeout) + Duration::from_secs(1);
        self.now = self.now.plus(horizon);
        self.run_due_timers();
        let stats = self.relay.stats();
        assert_eq!(
            stats.connections, 0,
            "connections open after every peer left"
        );
        assert!(
            stats.documents <= stats.documents_loaded,
            "after every peer left and every timer ran, the relay keeps {} entries for \
             documents that are not in memory ({} known, {} loaded)",
            stats.documents - stats.documents_loaded,
            stats.documents,
            stats.documents_loaded
        );
    }
}

impl Session {
    fn text(self) -> String {
        match self {
            Session::Short(n) => format!("s{}", n % 8),
            Session::Long { len, fill } => {
                let letter = char::from(b'a' + fill % 26);
                std::iter::repeat_n(letter, usize::from(len)).collect()
            }
        }
    }
}

impl Count64 {
    fn value(self) -> u64 {
        match self {
            Count64::Small(n) => u64::from(n),
            Count64::NearMax(n) => u64::MAX - u64::from(n),
            Count64::Any(n) => n,
        }
    }
}

impl Count32 {
    fn value(self) -> u32 {
        match self {
            Count32::Tiny(n) => u32::from(n % 8),
            Count32::Small(n) => u32::from(n),
            Count32::NearMax(n) => u32::MAX - u32::from(n),
            Count32::Any(n) => n,
        }
    }
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

impl Hashes {
    fn encode(self, doc: &Automerge, out: &mut Vec<u8>) {
        let hashes: Vec<ChangeHash> = match self {
            Hashes::Empty => Vec::new(),
            Hashes::Ours => doc.get_heads(),
            Hashes::Random { count, seed } => (0..usize::from(count) % (MAX_CRAFTED_HASHES + 1))
                .map(|i| {
                    let mut h = [seed; 32];
                    h[0] = i as u8;
                    ChangeHash(h)
                })
                .collect(),
        };
        leb128(out, hashes.len() as u64);
        for h in hashes {
            out.extend_from_slice(&h.0);
        }
    }
}

impl Bloom {
    fn encode(&self) -> Vec<u8> {
        let Bloom::Parts {
            num_entries,
            bits_per_entry,
            num_probes,
            bits,
        } = self
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let (entries, per_entry) = (num_entries.value(), bits_per_entry.value());
        leb128(&mut out, u64::from(entries));
        leb128(&mut out, u64::from(per_entry));
        leb128(&mut out, u64::from(num_probes.value()));
        match bits {
            BloomBits::Fill(byte) => {
                // The size automerge's decoder reads: ceil(entries × bits per entry / 8).
                let size = (u64::from(entries) * u64::from(per_entry)).div_ceil(8);
                if let Ok(size @ 0..=MAX_BLOOM_FILL) = usize::try_from(size) {
                    out.resize(out.len() + size, *byte);
                }
            }
            BloomBits::Given(given) => out.extend_from_slice(given),
        }
        out
    }
}

impl CraftedSync {
    /// The message in automerge's sync wire format.
    pub(crate) fn encode(&self, doc: &Automerge) -> Vec<u8> {
        let mut out = vec![if self.v2 { 0x43 } else { 0x42 }];
        self.heads.encode(doc, &mut out);
        self.need.encode(doc, &mut out);
        let haves = &self.have[..self.have.len().min(MAX_CRAFTED_HAVES)];
        leb128(&mut out, haves.len() as u64);
        for have in haves {
            have.last_sync.encode(doc, &mut out);
            let bloom = have.bloom.encode();
            leb128(&mut out, bloom.len() as u64);
            out.extend_from_slice(&bloom);
        }
        match &self.changes {
            Changes::Empty => leb128(&mut out, 0),
            Changes::Ours => {
                let changes = doc.get_changes(&[]);
                leb128(&mut out, changes.len() as u64);
                for change in &changes {
                    leb128(&mut out, change.raw_bytes().len() as u64);
                    out.extend_from_slice(change.raw_bytes());
                }
            }
            Changes::Garbage(bytes) => {
                leb128(&mut out, 1);
                leb128(&mut out, bytes.len() as u64);
                out.extend_from_slice(bytes);
            }
        }
        if let Some(flags) = &self.flags {
            leb128(&mut out, flags.len() as u64);
            out.extend_from_slice(flags);
        }
        out
    }
}
