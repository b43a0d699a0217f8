//! A relay engine under attack: every message here comes from a hostile or careless peer.
//! Each test names the attack and asserts bounded state and that other peers are served.

use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ReadDoc, ROOT};

use super::super::*;
use crate::ids::{ConnectionId, DocumentId, PeerId};
use crate::store::{MemoryStore, Storage};
use crate::time::Timestamp;
use crate::wire::{DocMessage, Message, PeerMetadata};

const T0: Timestamp = Timestamp::from_millis(0);
const MALLORY: ConnectionId = ConnectionId::new(66);
const PHONE: ConnectionId = ConnectionId::new(1);
const OTHER: ConnectionId = ConnectionId::new(2);

/// A relay engine whose storage runs at once, with every output recorded per connection.
struct Relay {
    engine: Engine,
    store: MemoryStore,
    frames: Vec<(ConnectionId, Message)>,
    closed: Vec<(ConnectionId, CloseReason)>,
    events: Vec<Event>,
    now: Timestamp,
}

impl Relay {
    fn new(limits: Limits) -> Self {
        let store = MemoryStore::default();
        let config = EngineConfig::new(Role::Relay, PeerId::from("relay"), 7)
            .with_storage_id(store.storage_id().unwrap())
            .with_limits(limits);
        Relay {
            engine: Engine::new(config),
            store,
            frames: vec![],
            closed: vec![],
            events: vec![],
            now: T0,
        }
    }

    /// A relay of a cluster: it shares ephemeral messages with the other relays.
    fn sharing(limits: Limits) -> Self {
        let mut relay = Relay::new(limits);
        let config = EngineConfig::new(Role::Relay, PeerId::from("relay"), 7)
            .with_storage_id(relay.store.storage_id().unwrap())
            .with_limits(relay.engine.config.limits.clone())
            .with_shared_ephemeral(true);
        relay.engine = Engine::new(config);
        relay
    }

    fn run(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { conn, frame } => {
                    self.frames.push((conn, Message::decode(&frame).unwrap()))
                }
                Output::Storage { task, op } => {
                    let result = self.store.execute(op);
                    self.engine
                        .handle_input(self.now, Input::StorageDone { task, result });
                }
                Output::Close { conn, reason } => self.closed.push((conn, reason)),
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    fn connect(&mut self, conn: ConnectionId, identity: Option<&str>) {
        self.engine.handle_input(
            self.now,
            Input::Connected {
                conn,
                direction: Direction::Incoming,
                identity: identity.map(str::to_owned),
                local_peer: None,
            },
        );
        self.run();
    }

    fn frame(&mut self, conn: ConnectionId, frame: Vec<u8>) {
        self.engine
            .handle_input(self.now, Input::Frame { conn, frame });
        self.run();
    }

    fn join(&mut self, conn: ConnectionId, name: &str) {
        self.connect(conn, None);
        self.frame(conn, join(name));
    }

    fn sync(&mut self, conn: ConnectionId, from: &str, doc: DocumentId, data: Vec<u8>) {
        let msg = Message::Sync(DocMessage {
            sender_id: from.into(),
            target_id: "relay".into(),
            document_id: doc,
            data,
        });
        self.frame(conn, msg.encode());
    }

    fn sent_to(&self, conn: ConnectionId) -> Vec<&Message> {
        self.frames
            .iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, m)| m)
            .collect()
    }

    fn closed(&self, conn: ConnectionId) -> Option<&CloseReason> {
        self.closed.iter().find(|(c, _)| *c == conn).map(|(_, r)| r)
    }

    fn rejections(&self, reason: Rejection) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::DocumentRejected { reason: r, .. } if *r == reason))
            .count()
    }

    fn unavailable_to(&self, conn: ConnectionId, doc: DocumentId) -> bool {
        self.sent_to(conn).iter().any(
            |m| matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == doc),
        )
    }

    /// Asks for `doc` as a fresh peer would and returns the document it receives.
    fn fetch(&mut self, conn: ConnectionId, name: &str, doc: DocumentId) -> Automerge {
        let mut copy = Automerge::new();
        let mut state = sync::State::new();
        for _ in 0..10 {
            let first = copy.generate_sync_message(&mut state);
            if let Some(m) = first {
                self.sync(conn, name, doc, m.encode());
            }
            let answers: Vec<Vec<u8>> = self
                .frames
                .drain(..)
                .filter_map(|(c, m)| match m {
                    Message::Sync(d) if c == conn && d.document_id == doc => Some(d.data),
                    _ => None,
                })
                .collect();
            if answers.is_empty() {
                break;
            }
            for a in answers {
                copy.receive_sync_message(&mut state, sync::Message::decode(&a).unwrap())
                    .unwrap();
            }
        }
        copy
    }
}

fn join(name: &str) -> Vec<u8> {
    Message::Join {
        sender_id: name.into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    }
    .encode()
}

fn doc_id(n: u32) -> DocumentId {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&n.to_le_bytes());
    b[15] = 0x5a;
    DocumentId::from_bytes(b)
}

/// A sync message carrying one change of `chars` characters of text (one op each).
fn change_message(chars: usize) -> Vec<u8> {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    let text = tx
        .put_object(ROOT, "text", automerge::ObjType::Text)
        .unwrap();
    tx.splice_text(&text, 0, 0, &"a".repeat(chars)).unwrap();
    tx.commit();
    let change = doc.get_changes(&[]).pop().unwrap().raw_bytes().to_vec();
    sync::Message {
        heads: doc.get_heads(),
        need: vec![],
        have: vec![],
        changes: vec![change].into(),
        flags: None,
        version: sync::MessageVersion::V1,
    }
    .encode()
}

/// What an empty, fresh peer sends first for a document it does not have.
fn empty_first_message() -> Vec<u8> {
    Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .unwrap()
        .encode()
}

/// A `have` whose Bloom filter claims one entry, `bits_per_entry` bits each and
/// `probes` probes (the hex from the issue is bits 0, probes 3).
fn bloom_message(bits_per_entry: u8, probes: u32) -> Vec<u8> {
    let mut m = vec![0x42, 0x00, 0x00, 0x01, 0x00];
    let mut bloom = vec![0x01, bits_per_entry];
    leb(&mut bloom, u64::from(probes));
    bloom.extend(std::iter::repeat_n(
        0u8,
        usize::from(bits_per_entry).div_ceil(8),
    ));
    leb(&mut m, bloom.len() as u64);
    m.extend(bloom);
    m.push(0x00);
    m
}

fn leb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn the_ten_byte_bloom_filter_closes_only_the_sender() {
    assert_eq!(
        hex::encode(bloom_message(0, 1)),
        "42000001000301000100",
        "the bytes from the issue"
    );
    let mut relay = Relay::new(Limits::default());
    relay.join(MALLORY, "mallory");
    relay.join(PHONE, "phone");
    let doc = doc_id(1);
    relay.sync(PHONE, "phone", doc, change_message(10));
    let own = doc_id(2);
    relay.sync(MALLORY, "mallory", own, change_message(3));
    relay.sync(MALLORY, "mallory", own, bloom_message(0, 1));
    assert!(
        matches!(relay.closed(MALLORY), Some(CloseReason::Protocol(_))),
        "{:?}",
        relay.closed
    );
    assert!(matches!(
        relay.sent_to(MALLORY).last(),
        Some(Message::Error { .. })
    ));
    // Everyone else is still served.
    assert_eq!(relay.closed(PHONE), None);
    relay.join(OTHER, "other");
    let copy = relay.fetch(OTHER, "other", doc);
    assert_eq!(
        copy.text(copy.get(ROOT, "text").unwrap().unwrap().1)
            .unwrap()
            .len(),
        10
    );
}

#[test]
fn bloom_filters_asking_for_huge_probe_counts_are_refused() {
    for probes in [100_000_000, u32::MAX] {
        let mut relay = Relay::new(Limits::default());
        relay.join(MALLORY, "mallory");
        let own = doc_id(2);
        relay.sync(MALLORY, "mallory", own, change_message(3));
        relay.sync(MALLORY, "mallory", own, bloom_message(10, probes));
        assert!(matches!(
            relay.closed(MALLORY),
            Some(CloseReason::Protocol(_))
        ));
    }
}

#[test]
fn an_automerge_panic_costs_one_connection_and_one_document() {
    let mut relay = Relay::new(Limits::default());
    relay.join(MALLORY, "mallory");
    relay.join(PHONE, "phone");
    relay.join(OTHER, "other");
    let (hit, safe) = (doc_id(1), doc_id(2));
    relay.sync(PHONE, "phone", hit, change_message(5));
    relay.sync(MALLORY, "mallory", hit, empty_first_message());
    relay.sync(OTHER, "other", safe, change_message(7));
    // What the engine does when Automerge panics inside a call for `hit` on MALLORY's
    // message (the sync check leaves no known way to make it panic from the wire).
    assert_eq!(
        super::super::contained(|| panic!("inside automerge")),
        None::<()>
    );
    relay.engine.contain_panic(MALLORY, hit);
    relay.run();
    assert_eq!(relay.closed(MALLORY), Some(&CloseReason::Internal));
    assert_eq!(
        relay.closed(PHONE),
        Some(&CloseReason::Internal),
        "it resyncs"
    );
    assert_eq!(relay.closed(OTHER), None, "another document is untouched");
    assert!(relay.engine.document(&hit).is_none(), "dropped from memory");
    // The document reloads from what is durable.
    relay.join(ConnectionId::new(9), "later");
    let copy = relay.fetch(ConnectionId::new(9), "later", hit);
    assert_eq!(
        copy.text(copy.get(ROOT, "text").unwrap().unwrap().1)
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn ids_a_peer_merely_names_are_capped_and_forgotten_when_it_leaves() {
    let limits = Limits {
        max_documents_per_connection: 100,
        ..Limits::default()
    };
    let mut relay = Relay::new(limits);
    relay.join(PHONE, "phone");
    let kept = doc_id(0);
    relay.sync(PHONE, "phone", kept, change_message(3));
    relay.join(MALLORY, "mallory");
    let first = empty_first_message();
    for n in 1..=300 {
        relay.sync(MALLORY, "mallory", doc_id(n), first.clone());
    }
    assert_eq!(relay.closed(MALLORY), None);
    assert_eq!(relay.rejections(Rejection::TooManyDocuments), 200);
    assert!(relay.engine.stats().documents <= 101);
    relay
        .engine
        .handle_input(relay.now, Input::Disconnected { conn: MALLORY });
    relay.run();
    assert_eq!(
        relay.engine.stats().documents,
        1,
        "only the phone's document"
    );
    // Once idle, nothing at all is left: no documents, no timers.
    relay
        .engine
        .handle_input(relay.now, Input::Disconnected { conn: PHONE });
    let later = T0.plus(Duration::from_secs(3600));
    relay.now = later;
    relay.engine.handle_timeout(later);
    relay.run();
    let stats = relay.engine.stats();
    assert_eq!((stats.documents, stats.loaded_ops, stats.timers), (0, 0, 0));
}

#[test]
fn one_identity_creates_at_most_its_burst_of_new_documents() {
    let limits = Limits {
        new_documents_burst: 3,
        new_document_interval: Duration::from_secs(3600),
        ..Limits::default()
    };
    let mut relay = Relay::new(limits);
    relay.join(MALLORY, "mallory");
    for n in 1..=5 {
        relay.sync(MALLORY, "mallory", doc_id(n), change_message(2));
    }
    assert_eq!(relay.rejections(Rejection::CreationQuota), 2);
    assert!(relay.unavailable_to(MALLORY, doc_id(4)));
    let stored: std::collections::BTreeSet<String> = relay
        .store
        .keys()
        .into_iter()
        .filter(|k| k.len() == 3)
        .map(|k| k[0].clone())
        .collect();
    assert_eq!(stored.len(), 3);
    // Someone else is not affected, and writing to an existing document is no creation.
    relay.join(PHONE, "phone");
    relay.sync(PHONE, "phone", doc_id(6), change_message(2));
    relay.sync(MALLORY, "mallory", doc_id(1), change_message(4));
    assert_eq!(relay.rejections(Rejection::CreationQuota), 2);
}

#[test]
fn a_change_with_more_operations_than_a_document_may_hold_is_refused_unapplied() {
    let limits = Limits {
        max_document_ops: 1_000,
        ..Limits::default()
    };
    let mut relay = Relay::new(limits);
    relay.join(MALLORY, "mallory");
    relay.sync(MALLORY, "mallory", doc_id(1), change_message(5_000));
    assert!(relay.unavailable_to(MALLORY, doc_id(1)));
    assert_eq!(relay.rejections(Rejection::TooManyOps), 1);
    assert_eq!(relay.engine.stats().loaded_ops, 0);
    // At the limit it is accepted, on the same connection.
    relay.sync(MALLORY, "mallory", doc_id(2), change_message(999));
    assert_eq!(relay.closed(MALLORY), None);
    assert_eq!(relay.engine.stats().loaded_ops, 1_000);
}

#[test]
fn loaded_documents_stay_within_the_operations_budget() {
    let limits = Limits {
        max_loaded_ops: 2_500,
        ..Limits::default()
    };
    let mut relay = Relay::new(limits);
    relay.join(PHONE, "phone");
    for n in 1..=4 {
        relay.now = T0.plus(Duration::from_secs(u64::from(n)));
        relay.sync(PHONE, "phone", doc_id(n), change_message(999));
        assert!(
            relay.engine.stats().loaded_ops <= 2_500,
            "after document {n}"
        );
    }
    assert!(relay
        .events
        .iter()
        .any(|e| matches!(e, Event::BudgetEviction { .. })));
    // Nothing was lost: an evicted document reloads.
    relay.join(OTHER, "other");
    let copy = relay.fetch(OTHER, "other", doc_id(1));
    assert_eq!(
        copy.text(copy.get(ROOT, "text").unwrap().unwrap().1)
            .unwrap()
            .len(),
        999
    );
    assert!(relay.engine.stats().loaded_ops <= 2_500);
}

fn ephemeral(from: &str, to: &str, doc: DocumentId, session: &str, count: u64) -> Vec<u8> {
    Message::Ephemeral {
        sender_id: from.into(),
        target_id: to.into(),
        document_id: doc,
        session_id: session.into(),
        count,
        data: b"cursor".to_vec(),
    }
    .encode()
}

fn ephemerals_to(relay: &Relay, conn: ConnectionId) -> Vec<(PeerId, String, u64)> {
    relay
        .sent_to(conn)
        .into_iter()
        .filter_map(|m| match m {
            Message::Ephemeral {
                sender_id,
                session_id,
                count,
                ..
            } => Some((sender_id.clone(), session_id.clone(), *count)),
            _ => None,
        })
        .collect()
}

/// The relay with PHONE, OTHER and MALLORY all holding document 1.
fn three_on_one_document(limits: Limits) -> (Relay, DocumentId) {
    let mut relay = Relay::new(limits);
    let doc = doc_id(1);
    for (conn, name) in [(PHONE, "phone"), (OTHER, "other"), (MALLORY, "mallory")] {
        relay.join(conn, name);
        relay.sync(conn, name, doc, change_message(1));
    }
    relay.frames.clear();
    (relay, doc)
}

#[test]
fn ephemeral_messages_carry_the_senders_own_peer_id_and_honour_the_target() {
    let (mut relay, doc) = three_on_one_document(Limits::default());
    // Mallory pretends to be the phone, and targets only the other peer.
    relay.frame(MALLORY, ephemeral("phone", "other", doc, "s1", 1));
    assert_eq!(
        ephemerals_to(&relay, OTHER),
        vec![(PeerId::from("mallory"), "s1".into(), 1)]
    );
    assert!(ephemerals_to(&relay, PHONE).is_empty(), "not its target");
    // Addressed to the relay: everyone else gets it.
    relay.frame(PHONE, ephemeral("phone", "relay", doc, "p1", 1));
    assert_eq!(ephemerals_to(&relay, MALLORY).len(), 1);
    assert_eq!(ephemerals_to(&relay, OTHER).len(), 2);
    // A target nobody holds is dropped.
    relay.frame(PHONE, ephemeral("phone", "nobody", doc, "p1", 2));
    assert!(relay.events.iter().any(|e| matches!(
        e,
        Event::EphemeralDropped {
            reason: EphemeralDrop::NoTarget,
            ..
        }
    )));
}

/// Reads for everyone but the peer named `barred` (what a membership change leaves).
struct AllBut(&'static str);

impl Access for AllBut {
    fn allows(&self, peer: &PeerInfo<'_>, _: &DocumentId, _: Operation, _: Timestamp) -> bool {
        peer.peer_id.as_str() != self.0
    }
}

fn shared(events: &[Event]) -> Vec<&SharedEphemeral> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::EphemeralShared(m) => Some(m),
            _ => None,
        })
        .collect()
}

#[test]
fn a_relay_of_a_cluster_shares_its_sockets_ephemeral_messages() {
    let (mut relay, doc) = three_on_one_document(Limits::default());
    relay.frame(PHONE, ephemeral("phone", "relay", doc, "p1", 1));
    assert!(
        shared(&relay.events).is_empty(),
        "a relay alone shares nothing"
    );

    let mut relay = Relay::sharing(Limits::default());
    for (conn, name) in [(PHONE, "phone"), (OTHER, "other"), (MALLORY, "mallory")] {
        relay.join(conn, name);
        relay.sync(conn, name, doc, change_message(1));
    }
    relay.frames.clear();
    // For everyone: forwarded here as before, and shared under the socket's own peer id.
    relay.frame(MALLORY, ephemeral("phone", "relay", doc, "m1", 1));
    assert_eq!(ephemerals_to(&relay, OTHER).len(), 1);
    assert_eq!(
        shared(&relay.events),
        vec![&SharedEphemeral {
            doc,
            sender: "mallory".into(),
            target: None,
            session_id: "m1".into(),
            count: 1,
            data: b"cursor".to_vec(),
        }]
    );
    // For a peer not connected here: shared for the relay that has it, not dropped.
    relay.frame(PHONE, ephemeral("phone", "ben", doc, "p1", 1));
    assert_eq!(
        shared(&relay.events)[1].target,
        Some(PeerId::from("ben")),
        "targeted at a peer elsewhere"
    );
    assert!(!relay
        .events
        .iter()
        .any(|e| matches!(e, Event::EphemeralDropped { .. })));
    // For a peer here: delivered here only.
    relay.frame(PHONE, ephemeral("phone", "other", doc, "p1", 2));
    assert_eq!(shared(&relay.events).len(), 2);
    // A replay or a flood is dropped before it is shared.
    relay.frame(PHONE, ephemeral("phone", "relay", doc, "p1", 2));
    assert_eq!(shared(&relay.events).len(), 2);
}

#[test]
fn another_relays_ephemeral_message_reaches_the_readers_here_only() {
    let (mut relay, doc) = three_on_one_document(Limits::default());
    relay.engine.set_access(Box::new(AllBut("mallory")));
    let from_ben = |target: Option<&str>, count| SharedEphemeral {
        doc,
        sender: "ben".into(),
        target: target.map(PeerId::from),
        session_id: "b1".into(),
        count,
        data: b"ben is here".to_vec(),
    };
    let now = relay.now;
    assert_eq!(
        relay
            .engine
            .deliver_shared_ephemeral(now, from_ben(None, 1)),
        2
    );
    relay.run();
    let got = (PeerId::from("ben"), "b1".to_owned(), 1);
    assert_eq!(ephemerals_to(&relay, PHONE), vec![got.clone()]);
    assert_eq!(ephemerals_to(&relay, OTHER), vec![got]);
    assert!(
        ephemerals_to(&relay, MALLORY).is_empty(),
        "a peer who may not read the document hears nothing of it"
    );
    // For one peer: that peer only; for a peer not here, or a document not open here,
    // nobody.
    assert_eq!(
        relay
            .engine
            .deliver_shared_ephemeral(now, from_ben(Some("other"), 2)),
        1
    );
    assert_eq!(
        relay
            .engine
            .deliver_shared_ephemeral(now, from_ben(Some("cleo"), 3)),
        0
    );
    let elsewhere = SharedEphemeral {
        doc: doc_id(9),
        ..from_ben(None, 4)
    };
    assert_eq!(relay.engine.deliver_shared_ephemeral(now, elsewhere), 0);
    relay.run();
    assert_eq!(ephemerals_to(&relay, OTHER).len(), 2);
    assert_eq!(ephemerals_to(&relay, PHONE).len(), 1);
    // A device connected to two relays does not hear itself.
    let echo = SharedEphemeral {
        sender: "phone".into(),
        ..from_ben(None, 5)
    };
    assert_eq!(relay.engine.deliver_shared_ephemeral(now, echo), 1);
    // Nothing of it was stored.
    assert!(!relay
        .store
        .load_range(&[])
        .unwrap()
        .iter()
        .any(|(_, v)| v.windows(11).any(|w| w == b"ben is here")));
}

#[test]
fn nobody_can_silence_another_peers_presence() {
    let (mut relay, doc) = three_on_one_document(Limits::default());
    // Mallory replays the phone's session id with the largest count there is.
    relay.frame(
        MALLORY,
        ephemeral("phone", "relay", doc, "phone-session", u64::MAX),
    );
    relay.frame(PHONE, ephemeral("phone", "relay", doc, "phone-session", 1));
    relay.frame(PHONE, ephemeral("phone", "relay", doc, "phone-session", 1));
    let from_phone: Vec<_> = ephemerals_to(&relay, OTHER)
        .into_iter()
        .filter(|(s, ..)| s.as_str() == "phone")
        .collect();
    assert_eq!(from_phone.len(), 1, "delivered once, duplicates dropped");
}

#[test]
fn an_ephemeral_flood_is_cut_to_the_sockets_budget() {
    let limits = Limits {
        ephemeral_burst: 50,
        ..Limits::default()
    };
    let (mut relay, doc) = three_on_one_document(limits);
    for count in 1..=2_000 {
        relay.frame(MALLORY, ephemeral("mallory", "relay", doc, "m", count));
    }
    assert_eq!(ephemerals_to(&relay, PHONE).len(), 50);
    // The budget refills with time.
    relay.now = T0.plus(Duration::from_secs(1));
    relay.frame(MALLORY, ephemeral("mallory", "relay", doc, "m", 5_000));
    assert_eq!(ephemerals_to(&relay, PHONE).len(), 51);
    assert_eq!(relay.closed(MALLORY), None);
}

#[test]
fn ephemeral_session_ids_and_payloads_are_bounded() {
    let limits = Limits::default();
    let max = limits.max_session_id_bytes;
    let (mut relay, doc) = three_on_one_document(limits);
    relay.frame(
        MALLORY,
        ephemeral("mallory", "relay", doc, &"s".repeat(max), 1),
    );
    assert_eq!(ephemerals_to(&relay, PHONE).len(), 1, "at the limit");
    relay.frame(
        MALLORY,
        ephemeral("mallory", "relay", doc, &"s".repeat(max + 1), 1),
    );
    assert!(matches!(
        relay.closed(MALLORY),
        Some(CloseReason::Protocol(_))
    ));
    let big = Message::Ephemeral {
        sender_id: "phone".into(),
        target_id: "relay".into(),
        document_id: doc,
        session_id: "p".into(),
        count: 1,
        data: vec![0; Limits::default().max_ephemeral_bytes + 1],
    };
    relay.frame(PHONE, big.encode());
    assert!(
        ephemerals_to(&relay, OTHER).len() == 1,
        "too large: dropped"
    );
    assert_eq!(relay.closed(PHONE), None);
}

#[test]
fn a_takeover_tells_the_old_socket_why_and_is_rate_limited() {
    let limits = Limits {
        takeover_burst: 2,
        ..Limits::default()
    };
    let mut relay = Relay::new(limits);
    let conns: Vec<ConnectionId> = (10..20).map(ConnectionId::new).collect();
    for conn in &conns {
        relay.join(*conn, "ana/phone");
    }
    // The first socket was replaced (and told so), the next took over once more, and the
    // remaining attempts were refused: the second socket still holds the peer id.
    assert_eq!(relay.closed(conns[0]), Some(&CloseReason::Replaced));
    assert!(matches!(
        relay.sent_to(conns[0]).last(),
        Some(Message::Error { message }) if message.contains("replaced")
    ));
    assert_eq!(relay.closed(conns[1]), Some(&CloseReason::Replaced));
    assert_eq!(relay.closed(conns[2]), None);
    for conn in &conns[3..] {
        assert_eq!(relay.closed(*conn), Some(&CloseReason::PeerIdInUse));
    }
    assert_eq!(relay.engine.stats().connections, 1);
    // After a quiet while a takeover is allowed again.
    relay.now = T0.plus(Duration::from_secs(60));
    relay.join(ConnectionId::new(30), "ana/phone");
    assert_eq!(relay.closed(ConnectionId::new(30)), None);
    assert_eq!(relay.closed(conns[2]), Some(&CloseReason::Replaced));
}

#[test]
fn only_the_same_identity_may_take_over_and_nobody_may_be_the_relay() {
    let mut relay = Relay::new(Limits::default());
    relay.connect(PHONE, Some("ana/phone"));
    relay.frame(PHONE, join("ana/phone"));
    // An unauthenticated socket claiming the same peer id.
    relay.join(MALLORY, "ana/phone");
    assert_eq!(relay.closed(MALLORY), Some(&CloseReason::PeerIdInUse));
    assert_eq!(relay.closed(PHONE), None);
    relay.join(OTHER, "relay");
    assert_eq!(relay.closed(OTHER), Some(&CloseReason::ReservedPeerId));
}

#[test]
fn handshake_frames_and_ids_are_bounded() {
    let limits = Limits::default();
    let (max_frame, max_id) = (limits.max_handshake_frame_bytes, limits.max_peer_id_bytes);
    let mut relay = Relay::new(limits);
    relay.connect(MALLORY, None);
    relay.frame(MALLORY, vec![0xa0; max_frame + 1]);
    assert!(
        matches!(relay.closed(MALLORY), Some(CloseReason::Protocol(r)) if r.contains("too large"))
    );
    relay.join(PHONE, &"p".repeat(max_id));
    assert_eq!(relay.closed(PHONE), None, "at the limit");
    relay.join(OTHER, &"p".repeat(max_id + 1));
    assert!(matches!(
        relay.closed(OTHER),
        Some(CloseReason::Protocol(_))
    ));
}

#[test]
fn a_forged_message_type_cannot_forge_log_lines() {
    let mut relay = Relay::new(Limits::default());
    relay.connect(MALLORY, None);
    let forged = Message::Unknown {
        kind: "x\n2026-11-29T00:00:00Z  INFO cairn: \u{1b}[31mforged".into(),
    };
    relay.frame(MALLORY, forged.encode());
    let Some(CloseReason::Protocol(reason)) = relay.closed(MALLORY) else {
        panic!("{:?}", relay.closed);
    };
    assert!(
        !reason.contains('\n') && !reason.contains('\u{1b}'),
        "{reason}"
    );
}
