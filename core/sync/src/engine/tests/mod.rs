//! Unit tests of engine behaviour with a tiny in-memory host.

use super::*;
use crate::ids::TaskId;
use crate::store::{MemoryStore, Storage, StorageOp, StoreError};
use crate::wire::PeerMetadata;
use automerge::transaction::Transactable;
use automerge::ReadDoc;

const T0: Timestamp = Timestamp::from_millis(0);

struct Side {
    engine: Engine,
    store: MemoryStore,
    /// Storage tasks held back (to observe what happens before they complete).
    held: Vec<(TaskId, StorageOp)>,
    hold_writes: bool,
    sent: Vec<Message>,
    events: Vec<Event>,
    closed: Vec<CloseReason>,
}

impl Side {
    fn new(role: Role, name: &str, seed: u64) -> Self {
        // Time stands still in most of these tests (`T0`): a debounce would hold
        // announcements for ever. `flow.rs` tests it with a moving clock.
        Side::with_debounce(role, name, seed, std::time::Duration::ZERO)
    }

    fn with_debounce(role: Role, name: &str, seed: u64, debounce: std::time::Duration) -> Self {
        let store = MemoryStore::default();
        let config = EngineConfig::new(role, PeerId::from(name), seed)
            .with_storage_id(store.storage_id().unwrap())
            .with_sync_debounce(debounce);
        Side {
            engine: Engine::new(config),
            store,
            held: vec![],
            hold_writes: false,
            sent: vec![],
            events: vec![],
            closed: vec![],
        }
    }

    /// Runs outputs; returns frames to deliver to the other side.
    fn drain(&mut self, now: Timestamp) -> Vec<Vec<u8>> {
        let mut frames = vec![];
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { frame, .. } => {
                    self.sent.push(Message::decode(&frame).unwrap());
                    frames.push(frame);
                }
                Output::Storage { task, op } => {
                    if self.hold_writes && op.is_write() {
                        self.held.push((task, op));
                    } else {
                        let result = self.store.execute(op);
                        self.engine
                            .handle_input(now, Input::StorageDone { task, result });
                    }
                }
                Output::Close { reason, .. } => self.closed.push(reason),
                Output::Event(e) => self.events.push(e),
            }
        }
        frames
    }

    fn release(&mut self, now: Timestamp) {
        for (task, op) in std::mem::take(&mut self.held) {
            let result = self.store.execute(op);
            self.engine
                .handle_input(now, Input::StorageDone { task, result });
        }
    }
}

const LINK: ConnectionId = ConnectionId::new(1);

fn connect(phone: &mut Side, relay: &mut Side) {
    attach(&mut relay.engine, &mut phone.engine, LINK, None);
}

/// Connects a phone's engine to a relay's over `conn`; the relay authenticated the
/// socket as `identity`.
fn attach(relay: &mut Engine, phone: &mut Engine, conn: ConnectionId, identity: Option<&str>) {
    relay.handle_input(
        T0,
        Input::Connected {
            conn,
            direction: Direction::Incoming,
            identity: identity.map(str::to_owned),
            local_peer: None,
        },
    );
    phone.handle_input(
        T0,
        Input::Connected {
            conn,
            direction: Direction::Outgoing,
            identity: None,
            local_peer: None,
        },
    );
}

fn pump(a: &mut Side, b: &mut Side) {
    for _ in 0..100 {
        let fa = a.drain(T0);
        let fb = b.drain(T0);
        if fa.is_empty() && fb.is_empty() {
            return;
        }
        for frame in fa {
            b.engine
                .handle_input(T0, Input::Frame { conn: LINK, frame });
        }
        for frame in fb {
            a.engine
                .handle_input(T0, Input::Frame { conn: LINK, frame });
        }
    }
    panic!("no quiescence after 100 rounds");
}

fn title(e: &Engine, id: &DocumentId) -> Option<String> {
    let doc = e.document(id)?;
    doc.get(automerge::ROOT, "title")
        .ok()
        .flatten()
        .map(|(v, _)| v.as_str().unwrap_or_default().to_owned())
}

#[test]
fn a_created_document_reaches_the_relay() {
    let mut phone = Side::new(Role::Client, "phone", 1);
    let mut relay = Side::new(Role::Relay, "relay", 2);
    let doc = phone.engine.create_document(T0, |tx| {
        tx.put(automerge::ROOT, "title", "Minutes").unwrap();
    });
    connect(&mut phone, &mut relay);
    pump(&mut phone, &mut relay);
    assert_eq!(title(&relay.engine, &doc).as_deref(), Some("Minutes"));
    assert!(relay
        .store
        .keys()
        .iter()
        .any(|k| k[0] == doc.to_string() && k[1] == "incremental"));
}

#[test]
fn relay_reveals_nothing_until_the_write_is_durable() {
    let mut phone = Side::new(Role::Client, "phone", 1);
    let mut relay = Side::new(Role::Relay, "relay", 2);
    let doc = phone.engine.create_document(T0, |tx| {
        tx.put(automerge::ROOT, "title", "Minutes").unwrap();
    });
    relay.hold_writes = true;
    connect(&mut phone, &mut relay);
    pump(&mut phone, &mut relay);
    assert!(
        !relay.held.is_empty(),
        "the relay must be writing the change"
    );
    // Up to here the relay has said nothing that names the new heads.
    let heads = phone.engine.document(&doc).unwrap().get_heads();
    let revealing = |sent: &[Message]| {
        sent.iter().any(|m| match m {
            Message::Sync(d) => automerge::sync::Message::decode(&d.data).unwrap().heads == heads,
            _ => false,
        })
    };
    assert!(!revealing(&relay.sent));
    relay.release(T0);
    pump(&mut phone, &mut relay);
    assert!(
        revealing(&relay.sent),
        "after the write the relay acknowledges"
    );
    assert!(phone
        .events
        .iter()
        .any(|e| matches!(e, Event::PeerHasHeads { heads: h, .. } if *h == heads)));
}

#[test]
fn failed_write_closes_the_writer_and_reveals_nothing() {
    let mut phone = Side::new(Role::Client, "phone", 1);
    let mut relay = Side::new(Role::Relay, "relay", 2);
    let doc = phone.engine.create_document(T0, |tx| {
        tx.put(automerge::ROOT, "title", "Minutes").unwrap();
    });
    relay.hold_writes = true;
    connect(&mut phone, &mut relay);
    pump(&mut phone, &mut relay);
    let heads = phone.engine.document(&doc).unwrap().get_heads();
    let (task, _) = relay.held.pop().unwrap();
    let full = std::io::Error::from_raw_os_error(28);
    relay.engine.handle_input(
        T0,
        Input::StorageDone {
            task,
            result: Err(StoreError::Io(full)),
        },
    );
    relay.drain(T0);
    assert_eq!(relay.closed, vec![CloseReason::StorageFailed]);
    assert!(relay
        .events
        .iter()
        .any(|e| matches!(e, Event::StorageFailed { error, .. } if error.is_disk_full())));
    let revealed = relay.sent.iter().any(|m| match m {
        Message::Sync(d) => automerge::sync::Message::decode(&d.data).unwrap().heads == heads,
        _ => false,
    });
    assert!(!revealed, "a change that failed to store was acknowledged");
    assert!(
        relay.engine.document(&doc).is_none(),
        "the undurable copy is dropped"
    );
}

#[test]
fn request_for_an_unknown_document_is_unavailable() {
    let mut phone = Side::new(Role::Client, "phone", 1);
    let mut relay = Side::new(Role::Relay, "relay", 2);
    connect(&mut phone, &mut relay);
    pump(&mut phone, &mut relay);
    let id = DocumentId::from_bytes([7; 16]);
    phone.engine.find(T0, id);
    pump(&mut phone, &mut relay);
    assert!(phone.sent.iter().any(|m| matches!(m, Message::Request(_))));
    assert!(relay
        .sent
        .iter()
        .any(|m| matches!(m, Message::DocUnavailable { .. })));
    assert!(phone
        .events
        .iter()
        .any(|e| matches!(e, Event::DocumentUnavailable { doc } if *doc == id)));
    assert_eq!(
        relay.engine.stats().documents,
        0,
        "unknown ids leave nothing behind"
    );
}

/// Connects `phone` to `relay` over `conn`.
fn link(relay: &mut Side, phone: &mut Side, conn: ConnectionId) {
    attach(&mut relay.engine, &mut phone.engine, conn, None);
}

#[test]
fn a_document_asked_for_again_after_it_was_unavailable_is_fetched_once_the_relay_has_it() {
    let mut relay = Side::new(Role::Relay, "relay", 9);
    let mut writer = Side::new(Role::Client, "writer", 10);
    let mut reader = Side::new(Role::Client, "reader", 11);
    let doc = writer.engine.create_document(T0, |tx| {
        tx.put(automerge::ROOT, "title", "Minutes").unwrap();
    });
    // The reader asks before the writer's document has reached the relay.
    link(&mut relay, &mut reader, ConnectionId::new(101));
    let mut phones = vec![(reader, ConnectionId::new(101))];
    pump_many(&mut relay, &mut phones);
    phones[0].0.engine.find(T0, doc);
    pump_many(&mut relay, &mut phones);
    assert!(phones[0]
        .0
        .events
        .iter()
        .any(|e| matches!(e, Event::DocumentUnavailable { doc: d } if *d == doc)));
    // The writer comes online and the relay stores the document.
    link(&mut relay, &mut writer, ConnectionId::new(100));
    phones.push((writer, ConnectionId::new(100)));
    pump_many(&mut relay, &mut phones);
    assert_eq!(title(&relay.engine, &doc).as_deref(), Some("Minutes"));
    // Asked again, the reader gets it (it used to wait for ever: its sync state with the
    // relay had already sent the request that was answered `doc-unavailable`).
    phones[0].0.engine.find(T0, doc);
    pump_many(&mut relay, &mut phones);
    assert_eq!(title(&phones[0].0.engine, &doc).as_deref(), Some("Minutes"));
}

#[test]
fn idle_documents_are_evicted_and_reloaded() {
    let mut phone = Side::new(Role::Client, "phone", 1);
    let mut relay = Side::new(Role::Relay, "relay", 2);
    let doc = phone.engine.create_document(T0, |tx| {
        tx.put(automerge::ROOT, "title", "Minutes").unwrap();
    });
    connect(&mut phone, &mut relay);
    pump(&mut phone, &mut relay);
    let later = T0.plus(relay.engine.config().limits.idle_eviction);
    // Timers may fire early (the handshake's, say); the document stays until it is idle.
    let just_before = Timestamp::from_millis(later.as_millis() - 1);
    relay.engine.handle_timeout(just_before);
    assert!(relay.engine.document(&doc).is_some());
    assert_eq!(relay.engine.poll_timeout(), Some(later));
    relay.engine.handle_timeout(later);
    relay.drain(later);
    assert!(relay.engine.document(&doc).is_none());
    assert_eq!(relay.engine.stats().documents_loaded, 0);
    // A new edit brings it back.
    phone
        .engine
        .change_document(later, doc, |tx| tx.put(automerge::ROOT, "title", "Agenda"))
        .unwrap();
    pump(&mut phone, &mut relay);
    assert_eq!(title(&relay.engine, &doc).as_deref(), Some("Agenda"));
}

/// Found by the simulator once its host refused reads after a failed flush (a full disk):
/// the relay answered a failed read with `doc-unavailable`, the phones stopped syncing the
/// document, and the changes they held never reached the relay after the disk was freed.
#[test]
fn a_failed_read_closes_the_connection_instead_of_calling_the_document_unavailable() {
    let mut phone = Side::new(Role::Client, "phone", 1);
    let mut relay = Side::new(Role::Relay, "relay", 2);
    let doc = phone.engine.create_document(T0, |tx| {
        tx.put(automerge::ROOT, "title", "Minutes").unwrap();
    });
    connect(&mut phone, &mut relay);
    pump(&mut phone, &mut relay);
    let later = T0.plus(relay.engine.config().limits.idle_eviction);
    relay.engine.handle_timeout(later);
    relay.drain(later);
    assert!(relay.engine.document(&doc).is_none(), "evicted");
    phone
        .engine
        .change_document(later, doc, |tx| tx.put(automerge::ROOT, "title", "Agenda"))
        .unwrap();
    // The phone's sync makes the relay reload the document; the disk is full, so the read
    // fails.
    for frame in phone.drain(later) {
        relay
            .engine
            .handle_input(later, Input::Frame { conn: LINK, frame });
    }
    let mut reads = 0;
    while let Some(out) = relay.engine.poll_output() {
        match out {
            Output::Storage { task, op } if !op.is_write() => {
                reads += 1;
                let full = std::io::Error::from_raw_os_error(28);
                let result = Err(StoreError::Io(full));
                relay
                    .engine
                    .handle_input(later, Input::StorageDone { task, result });
            }
            Output::Storage { .. } => panic!("nothing to write before the document loads"),
            Output::Send { frame, .. } => relay.sent.push(Message::decode(&frame).unwrap()),
            Output::Close { reason, .. } => relay.closed.push(reason),
            Output::Event(e) => relay.events.push(e),
        }
    }
    assert_eq!(reads, 1);
    assert!(
        !relay
            .sent
            .iter()
            .any(|m| matches!(m, Message::DocUnavailable { .. })),
        "a failed read was answered as if the document did not exist"
    );
    assert_eq!(
        relay.closed,
        vec![CloseReason::StorageFailed],
        "the phone must be made to retry"
    );
    // The phone redials once the disk has room: the change gets through.
    relay
        .engine
        .handle_input(later, Input::Disconnected { conn: LINK });
    phone
        .engine
        .handle_input(later, Input::Disconnected { conn: LINK });
    connect(&mut phone, &mut relay);
    pump(&mut phone, &mut relay);
    assert_eq!(title(&relay.engine, &doc).as_deref(), Some("Agenda"));
}

#[test]
fn compaction_writes_the_snapshot_before_deleting() {
    let mut phone = Side::new(Role::Client, "phone", 1);
    let mut relay = Side::new(Role::Relay, "relay", 2);
    let doc = phone.engine.create_document(T0, |tx| {
        tx.put(automerge::ROOT, "n", 0).unwrap();
    });
    connect(&mut phone, &mut relay);
    pump(&mut phone, &mut relay);
    let threshold = relay.engine.config().limits.compact_after_chunks;
    for i in 0..threshold as i64 + 1 {
        phone
            .engine
            .change_document(T0, doc, |tx| tx.put(automerge::ROOT, "n", i))
            .unwrap();
        pump(&mut phone, &mut relay);
    }
    let keys: Vec<_> = relay
        .store
        .keys()
        .into_iter()
        .filter(|k| k[0] == doc.to_string())
        .collect();
    assert!(keys.iter().any(|k| k[1] == "snapshot"), "{keys:?}");
    assert!(
        keys.len() < threshold / 2,
        "chunks were deleted: {}",
        keys.len()
    );
    // And the store alone reproduces the document.
    let mut fresh = Side::new(Role::Relay, "relay2", 3);
    fresh.store = relay.store;
    let mut other = Side::new(Role::Client, "other", 4);
    connect(&mut other, &mut fresh);
    pump(&mut other, &mut fresh);
    other.engine.find(T0, doc);
    pump(&mut other, &mut fresh);
    let n = other
        .engine
        .document(&doc)
        .unwrap()
        .get(automerge::ROOT, "n")
        .unwrap()
        .unwrap()
        .0
        .as_i64();
    assert_eq!(n, Some(threshold as i64));
}

#[test]
fn unsupported_version_gets_error_and_close() {
    let mut relay = Side::new(Role::Relay, "relay", 2);
    relay.engine.handle_input(
        T0,
        Input::Connected {
            conn: LINK,
            direction: Direction::Incoming,
            identity: None,
            local_peer: None,
        },
    );
    let join = Message::Join {
        sender_id: "p".into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["2".into()],
    };
    relay.engine.handle_input(
        T0,
        Input::Frame {
            conn: LINK,
            frame: join.encode(),
        },
    );
    relay.drain(T0);
    assert!(
        matches!(&relay.sent[..], [Message::Error { message }] if message.contains("unsupported protocol version"))
    );
    assert_eq!(relay.closed, vec![CloseReason::UnsupportedVersion]);
}

#[test]
fn identity_mismatch_is_refused() {
    let mut relay = Side::new(Role::Relay, "relay", 2);
    relay.engine.handle_input(
        T0,
        Input::Connected {
            conn: LINK,
            direction: Direction::Incoming,
            identity: Some("ana/phone".into()),
            local_peer: None,
        },
    );
    let join = Message::Join {
        sender_id: "ben/phone".into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    };
    relay.engine.handle_input(
        T0,
        Input::Frame {
            conn: LINK,
            frame: join.encode(),
        },
    );
    relay.drain(T0);
    assert_eq!(relay.closed, vec![CloseReason::IdentityMismatch]);
}

/// Three phones on one relay, all with the document open.
fn three_phones() -> (Side, Vec<(Side, ConnectionId)>, DocumentId) {
    let mut relay = Side::new(Role::Relay, "relay", 9);
    let mut phones = Vec::new();
    let mut doc = None;
    for i in 0..3u64 {
        let mut phone = Side::new(Role::Client, &format!("phone{i}"), 10 + i);
        let conn = ConnectionId::new(100 + i);
        let id = match doc {
            None => {
                let id = phone.engine.create_document(T0, |tx| {
                    tx.put(automerge::ROOT, "title", "Minutes").unwrap();
                });
                doc = Some(id);
                id
            }
            Some(id) => {
                phone.engine.find(T0, id);
                id
            }
        };
        let _ = id;
        link(&mut relay, &mut phone, conn);
        phones.push((phone, conn));
        pump_many(&mut relay, &mut phones);
    }
    (relay, phones, doc.unwrap())
}

/// Carries frames between a relay and several phones until all are quiet.
fn pump_many(relay: &mut Side, phones: &mut [(Side, ConnectionId)]) {
    for _ in 0..200 {
        let mut moved = false;
        for (phone, conn) in phones.iter_mut() {
            for frame in phone.drain(T0) {
                moved = true;
                relay
                    .engine
                    .handle_input(T0, Input::Frame { conn: *conn, frame });
            }
        }
        let mut to_phones = Vec::new();
        while let Some(out) = relay.engine.poll_output() {
            match out {
                Output::Send { conn, frame } => {
                    relay.sent.push(Message::decode(&frame).unwrap());
                    to_phones.push((conn, frame));
                }
                Output::Storage { task, op } => {
                    let result = relay.store.execute(op);
                    relay
                        .engine
                        .handle_input(T0, Input::StorageDone { task, result });
                }
                Output::Close { reason, .. } => relay.closed.push(reason),
                Output::Event(e) => relay.events.push(e),
            }
        }
        for (conn, frame) in to_phones {
            moved = true;
            if let Some((phone, _)) = phones.iter_mut().find(|(_, c)| *c == conn) {
                phone.engine.handle_input(T0, Input::Frame { conn, frame });
            }
        }
        if !moved {
            return;
        }
    }
    panic!("no quiescence");
}

#[test]
fn ephemeral_messages_reach_the_others_once_and_are_never_stored() {
    let (mut relay, mut phones, doc) = three_phones();
    let keys_before = relay.store.keys();
    phones[0]
        .0
        .engine
        .broadcast_ephemeral(doc, b"cursor at 4".to_vec());
    // Deliver the same frame twice, as gossip might.
    let frames = phones[0].0.drain(T0);
    assert_eq!(frames.len(), 1);
    let conn0 = phones[0].1;
    for _ in 0..2 {
        relay.engine.handle_input(
            T0,
            Input::Frame {
                conn: conn0,
                frame: frames[0].clone(),
            },
        );
    }
    pump_many(&mut relay, &mut phones);
    for (i, (phone, _)) in phones.iter().enumerate() {
        let got: Vec<_> = phone
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Ephemeral { data, sender, .. } => Some((sender.clone(), data.clone())),
                _ => None,
            })
            .collect();
        if i == 0 {
            assert!(got.is_empty(), "not echoed to the sender");
        } else {
            assert_eq!(
                got,
                vec![(PeerId::from("phone0"), b"cursor at 4".to_vec())],
                "phone{i}"
            );
        }
    }
    assert_eq!(
        relay.store.keys(),
        keys_before,
        "ephemeral data is never stored"
    );
}

/// A phone's socket to its relay carries a whole meeting's presence: twenty members
/// moving their cursors at once all reach it (each member is held to its own budget at
/// the relay).
#[test]
fn a_phone_takes_a_whole_meetings_cursors_from_its_relay() {
    let (_relay, mut phones, doc) = three_phones();
    let (phone, conn) = &mut phones[2];
    phone.events.clear();
    let sent = 19 * 15;
    for n in 0..15u64 {
        for member in 0..19 {
            let frame = Message::Ephemeral {
                sender_id: format!("member{member}/phone").into(),
                target_id: "phone2".into(),
                document_id: doc,
                session_id: format!("session{member}"),
                count: n + 1,
                data: format!("cursor {n}").into_bytes(),
            }
            .encode();
            phone
                .engine
                .handle_input(T0, Input::Frame { conn: *conn, frame });
        }
    }
    phone.drain(T0);
    let heard = phone
        .events
        .iter()
        .filter(|e| matches!(e, Event::Ephemeral { .. }))
        .count();
    assert_eq!(heard, sent, "every cursor of the meeting reached the phone");
    // The relay's own budget per socket is unchanged.
    assert_eq!(Limits::default().ephemeral_burst, 120);
}

#[test]
fn a_second_join_with_the_same_peer_id_replaces_the_first_socket() {
    let mut relay = Side::new(Role::Relay, "relay", 2);
    let join = Message::Join {
        sender_id: "ana/phone".into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    };
    for n in [1, 2] {
        let conn = ConnectionId::new(n);
        relay.engine.handle_input(
            T0,
            Input::Connected {
                conn,
                direction: Direction::Incoming,
                identity: None,
                local_peer: None,
            },
        );
        relay.engine.handle_input(
            T0,
            Input::Frame {
                conn,
                frame: join.encode(),
            },
        );
    }
    relay.drain(T0);
    assert_eq!(relay.closed, vec![CloseReason::Replaced]);
    assert_eq!(relay.engine.stats().connections, 1);
}

#[test]
fn a_silent_socket_is_closed_after_the_handshake_timeout() {
    let mut relay = Side::new(Role::Relay, "relay", 2);
    relay.engine.handle_input(
        T0,
        Input::Connected {
            conn: LINK,
            direction: Direction::Incoming,
            identity: None,
            local_peer: None,
        },
    );
    let deadline = relay.engine.poll_timeout().unwrap();
    assert_eq!(
        deadline,
        T0.plus(relay.engine.config().limits.handshake_timeout)
    );
    relay.engine.handle_timeout(deadline);
    relay.drain(deadline);
    assert_eq!(relay.closed, vec![CloseReason::HandshakeTimeout]);
}

#[test]
fn a_document_past_the_size_limit_is_refused_and_the_connection_carries_on() {
    let mut phone = Side::new(Role::Client, "phone", 1);
    let mut relay = Side::new(Role::Relay, "relay", 2);
    let limits = Limits {
        max_document_bytes: 2_000,
        ..Limits::default()
    };
    relay.engine = Engine::new(
        EngineConfig::new(Role::Relay, PeerId::from("relay"), 2)
            .with_storage_id(relay.store.storage_id().unwrap())
            .with_limits(limits),
    );
    let big = phone.engine.create_document(T0, |tx| {
        let bytes: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        tx.put(automerge::ROOT, "blob", bytes).unwrap();
    });
    let small = phone.engine.create_document(T0, |tx| {
        tx.put(automerge::ROOT, "title", "Agenda").unwrap();
    });
    connect(&mut phone, &mut relay);
    pump(&mut phone, &mut relay);
    assert!(relay.events.iter().any(|e| matches!(e, Event::DocumentRejected { doc, reason: Rejection::TooLarge, .. } if *doc == big)));
    assert!(relay
        .sent
        .iter()
        .any(|m| matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == big)));
    assert!(relay.closed.is_empty());
    assert_eq!(title(&relay.engine, &small).as_deref(), Some("Agenda"));
    assert!(!relay
        .store
        .keys()
        .iter()
        .any(|k| k[0] == big.to_string() && k.len() == 3));
}

#[test]
fn garbage_after_the_handshake_gets_error_and_close() {
    let mut phone = Side::new(Role::Client, "phone", 1);
    let mut relay = Side::new(Role::Relay, "relay", 2);
    connect(&mut phone, &mut relay);
    pump(&mut phone, &mut relay);
    relay.engine.handle_input(
        T0,
        Input::Frame {
            conn: LINK,
            frame: vec![0xa1, 0x61],
        },
    );
    relay.drain(T0);
    assert!(matches!(relay.sent.last(), Some(Message::Error { .. })));
    assert!(matches!(
        relay.closed.as_slice(),
        [CloseReason::Protocol(_)]
    ));
}

#[test]
fn two_phones_importing_the_same_first_change_end_with_one_document() {
    // The same deterministic first change, made independently on two phones.
    let skeleton = || {
        let mut am = Automerge::new();
        am.set_actor(automerge::ActorId::from([42u8; 16]));
        let mut tx = am.transaction();
        let notes = tx
            .put_object(automerge::ROOT, "notes", automerge::ObjType::Text)
            .unwrap();
        let _ = notes;
        tx.commit_with(automerge::transaction::CommitOptions::default().with_time(0));
        am.save()
    };
    let id = DocumentId::from_bytes([5; 16]);
    let mut a = Side::new(Role::Client, "a", 1);
    let mut b = Side::new(Role::Client, "b", 2);
    let mut relay = Side::new(Role::Relay, "relay", 3);
    for (side, word) in [(&mut a, "Ana"), (&mut b, "Ben")] {
        side.engine.import_document(T0, id, &skeleton()).unwrap();
        side.engine
            .change_document(T0, id, |tx| {
                let (_, notes) = tx.get(automerge::ROOT, "notes")?.unwrap();
                tx.splice_text(&notes, 0, 0, word)
            })
            .unwrap();
        side.drain(T0);
    }
    let mut phones = vec![(a, ConnectionId::new(1)), (b, ConnectionId::new(2))];
    for (phone, conn) in phones.iter_mut() {
        relay.engine.handle_input(
            T0,
            Input::Connected {
                conn: *conn,
                direction: Direction::Incoming,
                identity: None,
                local_peer: None,
            },
        );
        phone.engine.handle_input(
            T0,
            Input::Connected {
                conn: *conn,
                direction: Direction::Outgoing,
                identity: None,
                local_peer: None,
            },
        );
    }
    pump_many(&mut relay, &mut phones);
    let text = |e: &Engine| {
        let d = e.document(&id).unwrap();
        let (_, notes) = d.get(automerge::ROOT, "notes").unwrap().unwrap();
        d.text(&notes).unwrap()
    };
    let (ta, tb) = (text(&phones[0].0.engine), text(&phones[1].0.engine));
    assert_eq!(ta, tb);
    assert!(ta.contains("Ana") && ta.contains("Ben"), "{ta}");
}

mod access;
mod flow;
mod hostile;
mod refresh;

/// Everyone may do everything; all documents share one group whose stored bytes are
/// capped, from the sizes the engine reports.
#[derive(Clone, Default)]
struct GroupBytes {
    limit: u64,
    stored: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<DocumentId, u64>>>,
}

impl Access for GroupBytes {
    fn allows(&self, _: &PeerInfo<'_>, _: &DocumentId, _: Operation, _: Timestamp) -> bool {
        true
    }
    fn document_stored(&self, doc: &DocumentId, bytes: u64) {
        self.stored.lock().unwrap().insert(*doc, bytes);
    }
    fn may_grow(&self, _: &DocumentId, adding: u64) -> bool {
        self.stored.lock().unwrap().values().sum::<u64>() + adding <= self.limit
    }
}

#[test]
fn a_change_past_the_groups_bytes_quota_is_refused_and_earlier_ones_stay_stored() {
    let mut phone = Side::new(Role::Client, "phone", 1);
    let mut relay = Side::new(Role::Relay, "relay", 2);
    let policy = GroupBytes {
        // Room for a title, not for a blob (its sync message is about 2 kB).
        limit: 1_000,
        ..GroupBytes::default()
    };
    relay.engine.set_access(Box::new(policy.clone()));
    let small = phone.engine.create_document(T0, |tx| {
        tx.put(automerge::ROOT, "title", "Agenda").unwrap();
    });
    connect(&mut phone, &mut relay);
    pump(&mut phone, &mut relay);
    assert_eq!(title(&relay.engine, &small).as_deref(), Some("Agenda"));
    let reported = policy.stored.lock().unwrap().get(&small).copied();
    assert!(
        reported.is_some_and(|b| b > 0),
        "the engine reports what it stored"
    );
    let big = phone.engine.create_document(T0, |tx| {
        let bytes: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        tx.put(automerge::ROOT, "blob", bytes).unwrap();
    });
    pump(&mut phone, &mut relay);
    assert!(relay.events.iter().any(|e| matches!(e, Event::DocumentRejected { doc, reason: Rejection::GroupQuota, .. } if *doc == big)));
    assert!(relay
        .sent
        .iter()
        .any(|m| matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == big)));
    assert!(relay.closed.is_empty());
    assert!(!relay.store.keys().iter().any(|k| k[0] == big.to_string()));
    assert!(relay.store.keys().iter().any(|k| k[0] == small.to_string()));
    assert_eq!(title(&relay.engine, &small).as_deref(), Some("Agenda"));
    assert_eq!(Rejection::GroupQuota.label(), "group_quota");
}
