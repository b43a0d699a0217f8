//! The access policy as peers see it: read-only peers (their changes never stored or
//! forwarded, the exchange quiet), readers and connections that lose access while
//! connected, and the relay's own writes (`update_document`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ReadDoc, ROOT};

use super::{title, Side, T0};
use crate::engine::*;
use crate::ids::{ConnectionId, DocumentId};
use crate::store::{Storage, StorageOp, StorageOutcome};
use crate::time::Timestamp;
use crate::wire::{DocMessage, Message, PeerMetadata};

/// Frames a pump may carry before it calls the exchange a loop. A whole first sync of
/// three peers takes about a dozen; an endless resend loop passes any bound.
const MAX_FRAMES: usize = 400;

/// Frames the exchange after a refused change may take before it must be quiet: the
/// change offered, refused, and a reply or two (measured: 1 to 5). Without Automerge's
/// read-only mode on the relay's side, each side answers every message of the other and
/// no bound holds (see `PeerDoc::sync`).
const QUIET_WITHIN: usize = 20;

/// A policy the test changes while the engine holds it.
#[derive(Clone, Default)]
struct Policy(Arc<Mutex<Rules>>);

#[derive(Default)]
struct Rules {
    /// Peers that may read every document but write none.
    read_only: BTreeSet<String>,
    /// (peer, document) pairs that may not be read.
    hidden: BTreeSet<(String, DocumentId)>,
    /// Peers that may read until this time, exclusive (a guest).
    expires: BTreeMap<String, Timestamp>,
    /// Peers that may not be connected.
    revoked: BTreeSet<String>,
}

impl Policy {
    fn with(&self, f: impl FnOnce(&mut Rules)) {
        f(&mut self.0.lock().unwrap());
    }
}

impl Access for Policy {
    fn allows(&self, peer: &PeerInfo<'_>, doc: &DocumentId, op: Operation, now: Timestamp) -> bool {
        let rules = self.0.lock().unwrap();
        let who = peer.peer_id.as_str().to_owned();
        let read = !rules.hidden.contains(&(who.clone(), *doc))
            && rules.expires.get(&who).is_none_or(|until| now < *until);
        match op {
            Operation::Read => read,
            Operation::Write => read && !rules.read_only.contains(&who),
        }
    }

    fn connection_allowed(&self, peer: &PeerInfo<'_>, _: Timestamp) -> bool {
        !self
            .0
            .lock()
            .unwrap()
            .revoked
            .contains(peer.peer_id.as_str())
    }
}

/// A relay engine, phones (client engines) and raw peers (frames by hand), one connection
/// each, all storage run at once unless the relay holds its writes.
pub(super) struct Net {
    pub(super) relay: Side,
    policy: Policy,
    pub(super) phones: Vec<(Side, ConnectionId)>,
    /// Frames the relay sent, in order, with their connection.
    pub(super) relay_sent: Vec<(ConnectionId, Message)>,
    /// Writes the relay's store carried out.
    pub(super) relay_writes: Vec<StorageOp>,
    /// Connections the relay closed.
    closed: Vec<(ConnectionId, CloseReason)>,
    /// Frames from the relay not yet delivered (to phones; raw peers read `relay_sent`).
    outbox: Vec<(ConnectionId, Vec<u8>)>,
    pub(super) now: Timestamp,
}

impl Net {
    pub(super) fn new() -> Self {
        Net::with_relay_debounce(std::time::Duration::ZERO)
    }

    /// A net whose relay passes changes on at most once per `debounce` per document.
    pub(super) fn with_relay_debounce(debounce: std::time::Duration) -> Self {
        let mut relay = Side::with_debounce(Role::Relay, "relay", 9, debounce);
        let policy = Policy::default();
        relay.engine.set_access(Box::new(policy.clone()));
        Net {
            relay,
            policy,
            phones: vec![],
            relay_sent: vec![],
            relay_writes: vec![],
            closed: vec![],
            outbox: vec![],
            now: T0,
        }
    }

    /// Opens the relay's side of a connection authenticated as `name`.
    fn accept(&mut self, conn: ConnectionId, name: &str) {
        self.relay.engine.handle_input(
            self.now,
            Input::Connected {
                conn,
                direction: Direction::Incoming,
                identity: Some(name.to_owned()),
                local_peer: None,
            },
        );
    }

    /// A phone named `name` dials the relay; returns its index.
    pub(super) fn phone(&mut self, name: &str, seed: u64) -> usize {
        self.phone_with(name, seed, std::time::Duration::ZERO)
    }

    /// A phone whose engine announces its changes with `debounce`.
    pub(super) fn phone_with(
        &mut self,
        name: &str,
        seed: u64,
        debounce: std::time::Duration,
    ) -> usize {
        let conn = ConnectionId::new(100 + self.phones.len() as u64);
        let mut side = Side::with_debounce(Role::Client, name, seed, debounce);
        self.accept(conn, name);
        side.engine.handle_input(
            self.now,
            Input::Connected {
                conn,
                direction: Direction::Outgoing,
                identity: None,
                local_peer: None,
            },
        );
        self.phones.push((side, conn));
        self.phones.len() - 1
    }

    /// The phone's connection drops and it dials again under a new connection id.
    fn redial(&mut self, i: usize) {
        let old = self.phones[i].1;
        let conn = ConnectionId::new(old.get() + 1000);
        self.relay
            .engine
            .handle_input(self.now, Input::Disconnected { conn: old });
        let name = self.phones[i].0.engine.config().peer_id.as_str().to_owned();
        let phone = &mut self.phones[i].0;
        phone
            .engine
            .handle_input(self.now, Input::Disconnected { conn: old });
        phone.engine.handle_input(
            self.now,
            Input::Connected {
                conn,
                direction: Direction::Outgoing,
                identity: None,
                local_peer: None,
            },
        );
        self.phones[i].1 = conn;
        self.accept(conn, &name);
    }

    /// Runs the relay's outputs; the frames it sends wait in `outbox` for `pump`.
    fn run_relay(&mut self) {
        let now = self.now;
        while let Some(out) = self.relay.engine.poll_output() {
            match out {
                Output::Send { conn, frame } => {
                    self.relay_sent
                        .push((conn, Message::decode(&frame).unwrap()));
                    self.outbox.push((conn, frame));
                }
                Output::Storage { task, op } => {
                    if self.relay.hold_writes && op.is_write() {
                        self.relay.held.push((task, op));
                        continue;
                    }
                    if op.is_write() {
                        self.relay_writes.push(op.clone());
                    }
                    let result = self.relay.store.execute(op);
                    self.relay
                        .engine
                        .handle_input(now, Input::StorageDone { task, result });
                }
                Output::Close { conn, reason } => self.closed.push((conn, reason)),
                Output::Event(e) => self.relay.events.push(e),
            }
        }
    }

    /// Carries frames between the relay and the phones until nothing moves; returns how
    /// many frames moved. Frames for other connections (raw peers) stay in `relay_sent`.
    pub(super) fn pump(&mut self) -> usize {
        let now = self.now;
        let mut moved = 0;
        loop {
            let mut any = false;
            for i in 0..self.phones.len() {
                let conn = self.phones[i].1;
                for frame in self.phones[i].0.drain(now) {
                    any = true;
                    moved += 1;
                    self.relay
                        .engine
                        .handle_input(now, Input::Frame { conn, frame });
                }
            }
            self.run_relay();
            for (conn, frame) in std::mem::take(&mut self.outbox) {
                if let Some((phone, _)) = self.phones.iter_mut().find(|(_, c)| *c == conn) {
                    any = true;
                    moved += 1;
                    phone.engine.handle_input(now, Input::Frame { conn, frame });
                }
            }
            assert!(moved < MAX_FRAMES, "no quiescence after {moved} frames");
            if !any {
                return moved;
            }
        }
    }

    /// Feeds one frame from a raw peer to the relay and runs the relay.
    fn raw_frame(&mut self, conn: ConnectionId, msg: &Message) {
        self.relay.engine.handle_input(
            self.now,
            Input::Frame {
                conn,
                frame: msg.encode(),
            },
        );
        self.run_relay();
    }

    fn unavailable_to(&self, conn: ConnectionId, doc: DocumentId) -> bool {
        self.relay_sent.iter().any(|(c, m)| {
            *c == conn
                && matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == doc)
        })
    }

    fn rejections(&self, reason: Rejection) -> usize {
        self.relay
            .events
            .iter()
            .filter(|e| matches!(e, Event::DocumentRejected { reason: r, .. } if *r == reason))
            .count()
    }

    /// Every change the relay's store holds for `doc`, loaded into one document.
    fn stored(&self, doc: DocumentId) -> Automerge {
        let mut am = Automerge::new();
        let op = StorageOp::LoadRange {
            prefix: vec![doc.to_string()],
        };
        let Ok(StorageOutcome::Range(chunks)) = self.relay.store.execute(op) else {
            panic!("the store does not answer");
        };
        for (_, bytes) in chunks {
            am.load_incremental(&bytes).unwrap();
        }
        am
    }
}

pub(super) fn get(am: &Automerge, key: &str) -> Option<String> {
    am.get(ROOT, key)
        .ok()
        .flatten()
        .and_then(|(v, _)| v.as_str().map(str::to_owned))
}

pub(super) fn put(
    phone: &mut Side,
    now: Timestamp,
    doc: DocumentId,
    key: &str,
    value: &str,
) -> ChangeHash {
    let (_, heads) = phone
        .engine
        .change_document(now, doc, |tx| tx.put(ROOT, key, value))
        .unwrap();
    heads[0]
}

/// A writer who created a document and a read-only observer who has a copy of it.
fn writer_and_observer() -> (Net, DocumentId) {
    let mut net = Net::new();
    net.policy.with(|r| {
        r.read_only.insert("observer".into());
    });
    let w = net.phone("writer", 1);
    let doc = net.phones[w].0.engine.create_document(T0, |tx| {
        tx.put(ROOT, "title", "Minutes").unwrap();
    });
    net.pump();
    let o = net.phone("observer", 2);
    net.phones[o].0.engine.find(T0, doc);
    net.pump();
    assert_eq!(
        title(&net.phones[o].0.engine, &doc).as_deref(),
        Some("Minutes")
    );
    (net, doc)
}

#[test]
fn a_read_only_peers_change_is_never_stored_or_forwarded_and_the_exchange_goes_quiet() {
    let (mut net, doc) = writer_and_observer();
    let (w, o) = (0, 1);
    let writes_before = net.relay_writes.len();
    let forged = put(&mut net.phones[o].0, T0, doc, "title", "Forged");
    let frames = net.pump();
    assert!(
        frames < QUIET_WITHIN,
        "{frames} frames after a refused change"
    );

    assert!(net
        .relay
        .engine
        .document(&doc)
        .unwrap()
        .get_change_by_hash(&forged)
        .is_none());
    assert_eq!(
        net.relay_writes.len(),
        writes_before,
        "nothing written for it"
    );
    assert!(net.stored(doc).get_change_by_hash(&forged).is_none());
    assert_eq!(
        title(&net.phones[w].0.engine, &doc).as_deref(),
        Some("Minutes")
    );
    assert!(
        !net.unavailable_to(net.phones[o].1, doc),
        "the document stays readable"
    );
    assert!(net.closed.is_empty());

    // The observer still reads what writers write, and the exchange goes quiet again.
    put(&mut net.phones[w].0, T0, doc, "agenda", "Budget");
    let frames = net.pump();
    assert!(frames < QUIET_WITHIN, "{frames} frames");
    let observer = net.phones[o].0.engine.document(&doc).unwrap();
    assert_eq!(get(observer, "agenda").as_deref(), Some("Budget"));
    assert!(net
        .relay
        .engine
        .document(&doc)
        .unwrap()
        .get_change_by_hash(&forged)
        .is_none());
    assert!(net.phones[w]
        .0
        .engine
        .document(&doc)
        .unwrap()
        .get_change_by_hash(&forged)
        .is_none());

    // After a reconnect (fresh sync states on both sides) it offers the change again:
    // still refused, still quiet.
    net.redial(o);
    let frames = net.pump();
    assert!(frames < QUIET_WITHIN, "{frames} frames after a reconnect");
    assert!(net
        .relay
        .engine
        .document(&doc)
        .unwrap()
        .get_change_by_hash(&forged)
        .is_none());
    assert!(net.stored(doc).get_change_by_hash(&forged).is_none());
    assert!(!net.unavailable_to(net.phones[o].1, doc));
}

/// A peer driving Automerge's sync protocol by hand, as a samod or JS peer does. With
/// `ignore_read_only` it drops the flags of what it receives, like an Automerge that
/// predates the read-only flag: it keeps offering its change.
struct RawPeer {
    name: &'static str,
    conn: ConnectionId,
    doc: Automerge,
    state: sync::State,
    ignore_read_only: bool,
    /// Sync frames the relay sent it so far (the read position in `Net::relay_sent`).
    seen: usize,
}

impl RawPeer {
    fn join(net: &mut Net, name: &'static str, conn: ConnectionId) -> Self {
        net.accept(conn, name);
        net.raw_frame(
            conn,
            &Message::Join {
                sender_id: name.into(),
                peer_metadata: PeerMetadata::default(),
                supported_protocol_versions: vec!["1".into()],
            },
        );
        RawPeer {
            name,
            conn,
            doc: Automerge::new(),
            state: sync::State::new(),
            ignore_read_only: true,
            seen: net.relay_sent.len(),
        }
    }

    /// Exchanges sync messages for `id` with the relay until neither side has anything
    /// to say; returns how many frames moved (both ways).
    fn sync(&mut self, net: &mut Net, id: DocumentId) -> usize {
        let mut frames = 0;
        loop {
            if let Some(m) = self.doc.generate_sync_message(&mut self.state) {
                frames += 1;
                let msg = Message::Sync(DocMessage {
                    sender_id: self.name.into(),
                    target_id: "relay".into(),
                    document_id: id,
                    data: m.encode(),
                });
                net.raw_frame(self.conn, &msg);
            }
            let answers: Vec<Vec<u8>> = net.relay_sent[self.seen..]
                .iter()
                .filter_map(|(c, m)| match m {
                    Message::Sync(d) if *c == self.conn && d.document_id == id => {
                        Some(d.data.clone())
                    }
                    _ => None,
                })
                .collect();
            self.seen = net.relay_sent.len();
            if answers.is_empty() {
                return frames;
            }
            for data in answers {
                frames += 1;
                let mut m = sync::Message::decode(&data).unwrap();
                if self.ignore_read_only {
                    m.flags = None;
                }
                self.doc.receive_sync_message(&mut self.state, m).unwrap();
            }
            assert!(frames < MAX_FRAMES, "no quiescence after {frames} frames");
        }
    }
}

#[test]
fn a_raw_peer_that_keeps_offering_its_change_is_refused_quietly_across_reconnects() {
    let (mut net, doc) = writer_and_observer();
    net.policy.with(|r| {
        r.read_only.insert("raw".into());
    });
    let mut raw = RawPeer::join(&mut net, "raw", ConnectionId::new(7));
    let frames = raw.sync(&mut net, doc);
    assert!(frames < QUIET_WITHIN, "{frames} frames for a first read");
    assert_eq!(get(&raw.doc, "title").as_deref(), Some("Minutes"));

    let mut tx = raw.doc.transaction();
    tx.put(ROOT, "title", "Forged").unwrap();
    let forged = tx.commit().0.unwrap();
    let writes_before = net.relay_writes.len();
    let frames = raw.sync(&mut net, doc);
    assert!(
        frames < QUIET_WITHIN,
        "{frames} frames after a refused change"
    );
    assert_eq!(
        net.rejections(Rejection::ReadOnly),
        1,
        "the change was offered and refused"
    );
    assert!(net
        .relay
        .engine
        .document(&doc)
        .unwrap()
        .get_change_by_hash(&forged)
        .is_none());
    assert_eq!(net.relay_writes.len(), writes_before);
    // The writer and the observer hear nothing of it.
    assert_eq!(net.pump(), 0);
    assert!(!net.unavailable_to(raw.conn, doc));

    // Others' changes still reach the raw peer.
    put(&mut net.phones[0].0, T0, doc, "agenda", "Budget");
    net.pump();
    raw.sync(&mut net, doc);
    assert_eq!(get(&raw.doc, "agenda").as_deref(), Some("Budget"));

    // A new connection with a fresh sync state: the change is offered again and refused.
    net.relay
        .engine
        .handle_input(net.now, Input::Disconnected { conn: raw.conn });
    let mut again = RawPeer::join(&mut net, "raw", ConnectionId::new(8));
    again.doc = raw.doc;
    let frames = again.sync(&mut net, doc);
    assert!(frames < QUIET_WITHIN, "{frames} frames after a reconnect");
    assert_eq!(
        net.rejections(Rejection::ReadOnly),
        2,
        "offered again, refused again"
    );
    assert!(net
        .relay
        .engine
        .document(&doc)
        .unwrap()
        .get_change_by_hash(&forged)
        .is_none());
    assert!(net.stored(doc).get_change_by_hash(&forged).is_none());
    assert!(!net.unavailable_to(again.conn, doc));
    assert!(net.closed.is_empty());
}

#[test]
fn a_peer_that_honours_the_read_only_flag_stops_offering_its_change() {
    let (mut net, doc) = writer_and_observer();
    net.policy.with(|r| {
        r.read_only.insert("raw".into());
    });
    let mut raw = RawPeer::join(&mut net, "raw", ConnectionId::new(7));
    raw.ignore_read_only = false;
    raw.sync(&mut net, doc);
    let mut tx = raw.doc.transaction();
    tx.put(ROOT, "title", "Forged").unwrap();
    tx.commit();
    let frames = raw.sync(&mut net, doc);
    assert!(frames < QUIET_WITHIN, "{frames} frames");
    assert!(raw.state.is_peer_read_only());
    assert_eq!(net.rejections(Rejection::ReadOnly), 0, "never offered");
}

#[test]
fn a_promoted_observers_offline_change_reaches_the_others() {
    let (mut net, doc) = writer_and_observer();
    let (w, o) = (0, 1);
    let note = put(&mut net.phones[o].0, T0, doc, "note", "from the observer");
    net.pump();
    assert!(net
        .relay
        .engine
        .document(&doc)
        .unwrap()
        .get_change_by_hash(&note)
        .is_none());

    net.policy.with(|r| {
        r.read_only.clear();
    });
    assert!(net.relay.engine.revalidate_access(net.now).is_empty());
    net.pump();
    let writer = net.phones[w].0.engine.document(&doc).unwrap();
    assert_eq!(get(writer, "note").as_deref(), Some("from the observer"));
    assert!(net.stored(doc).get_change_by_hash(&note).is_some());
}

#[test]
fn a_reader_that_loses_a_document_gets_doc_unavailable_and_nothing_more_of_it() {
    let mut net = Net::new();
    let w = net.phone("writer", 1);
    let doc_a = net.phones[w].0.engine.create_document(T0, |tx| {
        tx.put(ROOT, "title", "A").unwrap();
    });
    let doc_b = net.phones[w].0.engine.create_document(T0, |tx| {
        tx.put(ROOT, "title", "B").unwrap();
    });
    net.pump();
    let r = net.phone("reader", 2);
    net.phones[r].0.engine.find(T0, doc_a);
    net.phones[r].0.engine.find(T0, doc_b);
    net.pump();
    let reader_conn = net.phones[r].1;
    assert_eq!(title(&net.phones[r].0.engine, &doc_a).as_deref(), Some("A"));

    net.policy.with(|rules| {
        rules.hidden.insert(("reader".into(), doc_a));
    });
    assert!(!net.unavailable_to(reader_conn, doc_a));
    assert!(net.relay.engine.revalidate_access(net.now).is_empty());
    net.run_relay();
    assert!(net.unavailable_to(reader_conn, doc_a));
    assert!(!net.unavailable_to(reader_conn, doc_b));
    net.pump();

    for (doc, value) in [(doc_a, "secret"), (doc_b, "public")] {
        put(&mut net.phones[w].0, T0, doc, "later", value);
        net.phones[w]
            .0
            .engine
            .broadcast_ephemeral(doc, value.as_bytes().to_vec());
    }
    net.pump();
    let reader = &net.phones[r].0;
    assert_eq!(get(reader.engine.document(&doc_a).unwrap(), "later"), None);
    assert_eq!(
        get(reader.engine.document(&doc_b).unwrap(), "later").as_deref(),
        Some("public"),
        "the other document still syncs"
    );
    let presence: Vec<DocumentId> = reader
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Ephemeral { doc, .. } => Some(*doc),
            _ => None,
        })
        .collect();
    assert_eq!(presence, vec![doc_b]);
    assert!(net.closed.is_empty());
}

#[test]
fn a_guest_past_its_expiry_hears_nothing_more_without_a_revalidation() {
    let mut net = Net::new();
    let w = net.phone("writer", 1);
    let doc = net.phones[w].0.engine.create_document(T0, |tx| {
        tx.put(ROOT, "title", "Minutes").unwrap();
    });
    net.pump();
    let expiry = Timestamp::from_millis(60_000);
    net.policy.with(|r| {
        r.expires.insert("guest".into(), expiry);
    });
    let g = net.phone("guest", 2);
    net.phones[g].0.engine.find(T0, doc);
    net.pump();
    assert_eq!(
        title(&net.phones[g].0.engine, &doc).as_deref(),
        Some("Minutes")
    );

    net.now = expiry;
    put(&mut net.phones[w].0, expiry, doc, "title", "Agenda");
    net.pump();
    assert_eq!(
        title(&net.phones[g].0.engine, &doc).as_deref(),
        Some("Minutes")
    );
    assert!(net.unavailable_to(net.phones[g].1, doc));
}

#[test]
fn a_revoked_connection_is_closed_and_its_later_frames_change_nothing() {
    let (mut net, doc) = writer_and_observer();
    let o = 1;
    let conn = net.phones[o].1;
    net.policy.with(|r| {
        r.revoked.insert("observer".into());
        r.read_only.clear();
    });
    assert_eq!(net.relay.engine.revalidate_access(net.now), vec![conn]);
    net.run_relay();
    let to_it: Vec<&Message> = net
        .relay_sent
        .iter()
        .filter(|(c, _)| *c == conn)
        .map(|(_, m)| m)
        .collect();
    assert!(
        matches!(to_it.last(), Some(Message::Error { message }) if message == "access revoked"),
        "{to_it:?}"
    );
    assert_eq!(net.closed, vec![(conn, CloseReason::AccessRevoked)]);
    assert_eq!(CloseReason::AccessRevoked.label(), "access_revoked");

    // Its host has not noticed yet: a change it sends over the dead connection is ignored.
    put(&mut net.phones[o].0, T0, doc, "title", "Forged");
    let frames = net.phones[o].0.drain(T0);
    assert!(!frames.is_empty());
    let keys = net.relay.store.keys();
    let sent = net.relay_sent.len();
    for frame in frames {
        net.relay
            .engine
            .handle_input(T0, Input::Frame { conn, frame });
    }
    assert!(
        net.relay.engine.poll_output().is_none(),
        "not even an answer"
    );
    assert_eq!(net.relay.store.keys(), keys);
    assert_eq!(net.relay_sent.len(), sent);
    assert_eq!(title(&net.relay.engine, &doc).as_deref(), Some("Minutes"));

    // And it cannot come back.
    let again = ConnectionId::new(77);
    net.accept(again, "observer");
    net.raw_frame(
        again,
        &Message::Join {
            sender_id: "observer".into(),
            peer_metadata: PeerMetadata::default(),
            supported_protocol_versions: vec!["1".into()],
        },
    );
    assert_eq!(
        net.closed.last(),
        Some(&(again, CloseReason::AccessRevoked))
    );
    assert_eq!(net.relay.engine.stats().connections, 1, "only the writer");
}

// ------------------------------------------------------------------ update_document

fn roster(value: &'static str) -> DocumentUpdate {
    Box::new(move |tx| {
        tx.put(ROOT, "roster", value).unwrap();
    })
}

#[test]
fn an_update_of_an_evicted_document_lands_on_top_of_what_is_stored() {
    let (mut net, doc) = writer_and_observer();
    let later = T0.plus(net.relay.engine.config().limits.idle_eviction);
    net.relay.engine.handle_timeout(later);
    net.now = later;
    net.run_relay();
    assert!(net.relay.engine.document(&doc).is_none(), "evicted");
    let stored_heads = net.stored(doc).get_heads();

    net.relay
        .engine
        .update_document(later, doc, roster("ana, ben"));
    net.run_relay();
    let am = net.relay.engine.document(&doc).expect("loaded again");
    assert_eq!(get(am, "title").as_deref(), Some("Minutes"));
    assert_eq!(get(am, "roster").as_deref(), Some("ana, ben"));
    let heads = am.get_heads();
    assert_eq!(heads.len(), 1, "one line of history, not a fork");
    assert_eq!(
        am.get_change_by_hash(&heads[0]).unwrap().deps(),
        stored_heads
    );
    assert_eq!(net.stored(doc).get_heads(), heads, "written");
    // Both phones still hold the document open: they get the update.
    net.pump();
    for (phone, _) in &net.phones {
        let copy = phone.engine.document(&doc).unwrap();
        assert_eq!(get(copy, "roster").as_deref(), Some("ana, ben"));
    }
}

#[test]
fn updates_of_a_document_the_store_lacks_start_it_and_run_in_order() {
    let mut net = Net::new();
    let doc = DocumentId::from_bytes([3; 16]);
    net.relay.engine.update_document(T0, doc, roster("ana"));
    net.relay.engine.update_document(
        T0,
        doc,
        Box::new(|tx| {
            let (value, _) = tx.get(ROOT, "roster").unwrap().expect("the first ran");
            let first = value.as_str().unwrap();
            let more = format!("{first}, ben");
            tx.put(ROOT, "roster", more).unwrap();
        }),
    );
    net.run_relay();
    let am = net.relay.engine.document(&doc).expect("started");
    assert_eq!(get(am, "roster").as_deref(), Some("ana, ben"));
    let stored = net.stored(doc);
    assert_eq!(get(&stored, "roster").as_deref(), Some("ana, ben"));
    assert_eq!(stored.get_heads(), am.get_heads());
    // A peer that asks for it is served.
    let r = net.phone("reader", 2);
    net.phones[r].0.engine.find(T0, doc);
    net.pump();
    let copy = net.phones[r].0.engine.document(&doc).unwrap();
    assert_eq!(get(copy, "roster").as_deref(), Some("ana, ben"));
}

#[test]
fn a_reader_receives_an_update_only_once_it_is_durable() {
    let (mut net, doc) = writer_and_observer();
    net.relay.hold_writes = true;
    net.relay.engine.update_document(T0, doc, roster("ana"));
    net.pump();
    assert!(!net.relay.held.is_empty(), "the update is being written");
    for (phone, _) in &net.phones {
        assert_eq!(get(phone.engine.document(&doc).unwrap(), "roster"), None);
    }
    net.relay.release(T0);
    net.pump();
    for (phone, _) in &net.phones {
        let copy = phone.engine.document(&doc).unwrap();
        assert_eq!(get(copy, "roster").as_deref(), Some("ana"));
    }
}
