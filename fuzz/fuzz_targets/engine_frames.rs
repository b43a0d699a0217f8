//! Drives a relay engine through a valid handshake, then feeds it a fuzzer-chosen mix of
//! raw frames, well-formed envelopes around arbitrary sync data, real sync messages from a
//! small in-harness peer (optionally with one byte flipped), ephemeral messages, clock
//! jumps, failed writes and reconnects. Nothing may panic.
#![no_main]

use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::Automerge;
use cairn_core::engine::{Direction, Engine, EngineConfig, Input, Limits, Output, Role};
use cairn_core::ids::{ConnectionId, DocumentId, PeerId};
use cairn_core::store::{MemoryStore, Storage, StoreError};
use cairn_core::time::Timestamp;
use cairn_core::wire::{DocMessage, Message, PeerMetadata};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const DOCS: usize = 3;

#[derive(Arbitrary, Debug)]
enum Step {
    /// Any bytes as a frame.
    Raw(Vec<u8>),
    /// A valid envelope (`request`, `sync`, `doc-unavailable`, ...) around arbitrary data.
    Envelope { kind: u8, doc: u8, data: Vec<u8> },
    /// The in-harness peer changes one of its documents.
    Edit { doc: u8, key: u8, value: i64 },
    /// The in-harness peer sends its next real sync message, maybe with one byte flipped.
    Sync {
        doc: u8,
        request: bool,
        flip: Option<(u16, u8)>,
    },
    /// An ephemeral message.
    Ephemeral {
        doc: u8,
        session: u8,
        count: u64,
        data: Vec<u8>,
    },
    /// Advance the clock by this many tens of milliseconds and run due timers.
    Tick(u16),
    /// The next write the relay asks for fails with "disk full".
    FailNextWrite,
    /// Drop the connection and handshake again.
    Reconnect,
}

struct Harness {
    relay: Engine,
    store: MemoryStore,
    now: Timestamp,
    conn: ConnectionId,
    open: bool,
    fail_next_write: bool,
    docs: Vec<(DocumentId, Automerge, sync::State)>,
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
            ..Limits::default()
        };
        let config = EngineConfig::new(Role::Relay, PeerId::from("relay"), 1)
            .with_storage_id(store.storage_id().expect("memory store"))
            .with_limits(limits);
        let docs = (0..DOCS)
            .map(|i| {
                (
                    DocumentId::from_bytes([i as u8 + 1; 16]),
                    Automerge::new(),
                    sync::State::new(),
                )
            })
            .collect();
        let mut h = Harness {
            relay: Engine::new(config),
            store,
            now: Timestamp::from_millis(0),
            conn: ConnectionId::new(0),
            open: false,
            fail_next_write: false,
            docs,
        };
        h.connect();
        h
    }

    fn connect(&mut self) {
        if self.open {
            self.relay
                .handle_input(self.now, Input::Disconnected { conn: self.conn });
            self.drain();
        }
        self.conn = ConnectionId::new(self.conn.get() + 1);
        self.open = true;
        for (_, _, state) in &mut self.docs {
            *state = sync::State::new();
        }
        self.relay.handle_input(
            self.now,
            Input::Connected {
                conn: self.conn,
                direction: Direction::Incoming,
                identity: None,
            },
        );
        let join = Message::Join {
            sender_id: PeerId::from("fuzzer"),
            peer_metadata: PeerMetadata::default(),
            supported_protocol_versions: vec!["1".into()],
        };
        self.send(join.encode());
    }

    fn send(&mut self, frame: Vec<u8>) {
        self.relay.handle_input(
            self.now,
            Input::Frame {
                conn: self.conn,
                frame,
            },
        );
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(output) = self.relay.poll_output() {
            match output {
                Output::Send { conn, frame } if conn == self.conn && self.open => {
                    self.receive(&frame)
                }
                Output::Send { .. } | Output::Event(_) => {}
                Output::Close { conn, .. } => {
                    if conn == self.conn {
                        self.open = false;
                    }
                    self.relay
                        .handle_input(self.now, Input::Disconnected { conn });
                }
                Output::Storage { task, op } => {
                    let result = if op.is_write() && std::mem::take(&mut self.fail_next_write) {
                        Err(StoreError::Io(std::io::Error::from_raw_os_error(28)))
                    } else {
                        self.store.execute(op)
                    };
                    self.relay
                        .handle_input(self.now, Input::StorageDone { task, result });
                }
            }
        }
    }

    /// The in-harness peer takes the relay's sync messages in, so the protocol moves on.
    fn receive(&mut self, frame: &[u8]) {
        let Ok(Message::Sync(d) | Message::Request(d)) = Message::decode(frame) else {
            return;
        };
        let Some((_, doc, state)) = self.docs.iter_mut().find(|(id, ..)| *id == d.document_id)
        else {
            return;
        };
        if let Ok(msg) = sync::Message::decode(&d.data) {
            let _ = doc.receive_sync_message(state, msg);
        }
    }

    fn envelope(&self, kind: u8, doc: usize, data: Vec<u8>) -> Message {
        let d = DocMessage {
            sender_id: PeerId::from("fuzzer"),
            target_id: PeerId::from("relay"),
            document_id: self.docs[doc].0,
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
        if !self.open {
            self.connect();
        }
        match step {
            Step::Raw(frame) => self.send(frame),
            Step::Envelope { kind, doc, data } => {
                let frame = self.envelope(kind, doc as usize % DOCS, data).encode();
                self.send(frame);
            }
            Step::Edit { doc, key, value } => {
                let (_, am, _) = &mut self.docs[doc as usize % DOCS];
                let mut tx = am.transaction();
                let _ = tx.put(automerge::ROOT, format!("k{}", key % 8), value);
                tx.commit();
            }
            Step::Sync { doc, request, flip } => {
                let i = doc as usize % DOCS;
                let (_, am, state) = &mut self.docs[i];
                let Some(msg) = am.generate_sync_message(state) else {
                    return;
                };
                let mut data = msg.encode();
                if let Some((at, byte)) = flip {
                    if !data.is_empty() {
                        let at = at as usize % data.len();
                        data[at] ^= byte;
                    }
                }
                let frame = self.envelope(if request { 0 } else { 1 }, i, data).encode();
                self.send(frame);
            }
            Step::Ephemeral {
                doc,
                session,
                count,
                data,
            } => {
                let frame = Message::Ephemeral {
                    sender_id: PeerId::from("fuzzer"),
                    target_id: PeerId::from("relay"),
                    document_id: self.docs[doc as usize % DOCS].0,
                    session_id: format!("s{session}"),
                    count,
                    data,
                }
                .encode();
                self.send(frame);
            }
            Step::Tick(tens) => {
                self.now = self.now.plus(Duration::from_millis(u64::from(tens) * 10));
                for _ in 0..16 {
                    match self.relay.poll_timeout() {
                        Some(t) if t <= self.now => {
                            self.relay.handle_timeout(self.now);
                            self.drain();
                        }
                        _ => break,
                    }
                }
            }
            Step::FailNextWrite => self.fail_next_write = true,
            Step::Reconnect => self.connect(),
        }
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut h = Harness::new();
    for step in steps.into_iter().take(64) {
        h.step(step);
    }
});
