//! Several relays on one store: a relay brings in what another relay stored for a
//! document it holds (`Engine::refresh_document`), passes it on to its own phones without
//! writing it again, and two relays compacting one document lose nothing.

use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::Automerge;

use super::access::{get, put};
use super::{attach, Side, T0};
use crate::engine::*;
use crate::ids::{ConnectionId, DocumentId, PeerId, TaskId};
use crate::store::{MemoryStore, Storage, StorageOp, StorageOutcome, StoreError};

/// Frames a pump may carry before it calls the exchange a loop.
const MAX_FRAMES: usize = 2_000;

/// A relay engine on the cluster's shared store.
struct Relay {
    engine: Engine,
    store: Arc<MemoryStore>,
    /// Reads run when asked for, but their results wait in `held` (a read that ran before
    /// another relay's commit, whose answer is still on its way).
    hold_reads: bool,
    held: Vec<(TaskId, Result<StorageOutcome, StoreError>)>,
    /// Writes this relay carried out.
    writes: Vec<StorageOp>,
    /// Refresh reads: how many values each returned.
    refreshes: Vec<usize>,
    /// The size of each document as the engine last reported it to its access policy.
    sizes: Sizes,
    /// Frames this relay sent.
    sent: usize,
    events: Vec<Event>,
}

/// Open access that records the sizes the engine reports (what a bytes quota counts).
#[derive(Clone, Default)]
struct Sizes(Arc<std::sync::Mutex<std::collections::BTreeMap<DocumentId, u64>>>);

impl Access for Sizes {
    fn allows(
        &self,
        _: &PeerInfo<'_>,
        _: &DocumentId,
        _: Operation,
        _: crate::time::Timestamp,
    ) -> bool {
        true
    }
    fn document_stored(&self, doc: &DocumentId, bytes: u64) {
        self.0.lock().unwrap().insert(*doc, bytes);
    }
}

impl Relay {
    fn new(name: &str, seed: u64, store: Arc<MemoryStore>, compact_after: usize) -> Self {
        let limits = Limits {
            compact_after_chunks: compact_after,
            ..Limits::default()
        };
        let config = EngineConfig::new(Role::Relay, PeerId::from(name), seed)
            .with_storage_id(store.storage_id().unwrap())
            .with_sync_debounce(Duration::ZERO)
            .with_limits(limits);
        let sizes = Sizes::default();
        let mut engine = Engine::new(config);
        engine.set_access(Box::new(sizes.clone()));
        Relay {
            engine,
            sizes,
            store,
            hold_reads: false,
            held: vec![],
            writes: vec![],
            refreshes: vec![],
            sent: 0,
            events: vec![],
        }
    }

    /// Runs the relay's outputs; returns the frames it sends.
    fn run(&mut self) -> Vec<(ConnectionId, Vec<u8>)> {
        let mut frames = vec![];
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { conn, frame } => {
                    self.sent += 1;
                    frames.push((conn, frame));
                }
                Output::Storage { task, op } => {
                    let write = op.is_write();
                    let refresh = matches!(op, StorageOp::LoadRangeExcept { .. });
                    if write {
                        self.writes.push(op.clone());
                    }
                    let result = self.store.execute(op);
                    if refresh {
                        let n = match &result {
                            Ok(StorageOutcome::Update(update)) => update.added.len(),
                            _ => 0,
                        };
                        self.refreshes.push(n);
                    }
                    if self.hold_reads && !write {
                        self.held.push((task, result));
                    } else {
                        self.engine
                            .handle_input(T0, Input::StorageDone { task, result });
                    }
                }
                Output::Close { .. } => {}
                Output::Event(e) => self.events.push(e),
            }
        }
        frames
    }

    /// Delivers the held read results.
    fn release(&mut self) {
        for (task, result) in std::mem::take(&mut self.held) {
            self.engine
                .handle_input(T0, Input::StorageDone { task, result });
        }
    }

    fn chunk_writes(&self, doc: DocumentId) -> usize {
        self.writes
            .iter()
            .filter(|op| matches!(op, StorageOp::Put { key, .. } if key[0] == doc.to_string()))
            .count()
    }

    fn compactions(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Compacted { .. }))
            .count()
    }
}

/// Relays on one shared store, each phone connected to one of them.
struct Cluster {
    store: Arc<MemoryStore>,
    relays: Vec<Relay>,
    /// (phone, its relay, its connection).
    phones: Vec<(Side, usize, ConnectionId)>,
}

impl Cluster {
    /// Two relays, phone 0 on relay 0 and phone 1 on relay 1, and a document phone 0
    /// created (title "Minutes") and stored through relay 0, which phone 1 has not asked
    /// for yet.
    fn two_before_find(compact_after: usize) -> (Cluster, DocumentId) {
        let store = Arc::new(MemoryStore::default());
        let relays = vec![
            Relay::new("relay-a", 21, store.clone(), compact_after),
            Relay::new("relay-b", 22, store.clone(), compact_after),
        ];
        let mut net = Cluster {
            store,
            relays,
            phones: vec![],
        };
        net.phone("ana", 1, 0);
        net.phone("ben", 2, 1);
        let doc = net.phones[0].0.engine.create_document(T0, |_| {});
        put(&mut net.phones[0].0, T0, doc, "title", "Minutes");
        net.pump();
        (net, doc)
    }

    /// [`Cluster::two_before_find`], and phone 1 holds the document too.
    fn two(compact_after: usize) -> (Cluster, DocumentId) {
        let (mut net, doc) = Cluster::two_before_find(compact_after);
        net.phones[1].0.engine.find(T0, doc);
        net.pump();
        assert_eq!(net.has(1, doc, "title").as_deref(), Some("Minutes"));
        (net, doc)
    }

    fn phone(&mut self, name: &str, seed: u64, relay: usize) {
        let conn = ConnectionId::new(100 + self.phones.len() as u64);
        let mut side = Side::new(Role::Client, name, seed);
        attach(
            &mut self.relays[relay].engine,
            &mut side.engine,
            conn,
            Some(name),
        );
        self.phones.push((side, relay, conn));
    }

    /// Carries frames until nothing moves.
    fn pump(&mut self) {
        let mut moved = 0;
        loop {
            let mut any = false;
            for (phone, relay, conn) in &mut self.phones {
                for frame in phone.drain(T0) {
                    any = true;
                    moved += 1;
                    self.relays[*relay]
                        .engine
                        .handle_input(T0, Input::Frame { conn: *conn, frame });
                }
            }
            for r in 0..self.relays.len() {
                for (conn, frame) in self.relays[r].run() {
                    let to = self
                        .phones
                        .iter_mut()
                        .find(|(_, relay, c)| *relay == r && *c == conn);
                    if let Some((phone, _, _)) = to {
                        any = true;
                        moved += 1;
                        phone.engine.handle_input(T0, Input::Frame { conn, frame });
                    }
                }
            }
            assert!(moved < MAX_FRAMES, "no quiescence after {moved} frames");
            if !any {
                return;
            }
        }
    }

    fn has(&self, phone: usize, doc: DocumentId, key: &str) -> Option<String> {
        get(self.phones[phone].0.engine.document(&doc)?, key)
    }

    /// Everything the shared store holds for `doc`, loaded fresh.
    fn stored(&self, doc: DocumentId) -> Automerge {
        let mut am = Automerge::new();
        for (_, bytes) in self.store.load_range(&[doc.to_string()]).unwrap() {
            am.load_incremental(&bytes).unwrap();
        }
        am
    }
}

#[test]
fn a_change_stored_by_one_relay_reaches_the_other_relays_phones_on_refresh_and_is_not_written_again(
) {
    let (mut net, doc) = Cluster::two(64);
    let (b_sent, b_writes) = (net.relays[1].sent, net.relays[1].chunk_writes(doc));
    put(&mut net.phones[0].0, T0, doc, "ana", "1");
    net.pump();
    assert!(
        net.relays[0].chunk_writes(doc) >= 2,
        "relay a stored the change"
    );
    // Relay b is not told by anything but a refresh.
    assert_eq!(net.relays[1].sent, b_sent, "relay b heard nothing");
    assert_eq!(net.has(1, doc, "ana"), None);

    assert!(net.relays[1].engine.refresh_document(doc));
    net.pump();
    assert_eq!(net.has(1, doc, "ana").as_deref(), Some("1"));
    assert_eq!(
        net.relays[1].chunk_writes(doc),
        b_writes,
        "relay b wrote what it read again"
    );
    assert_eq!(net.relays[1].refreshes, vec![1], "one new chunk read");
    assert!(net.relays[1]
        .events
        .iter()
        .any(|e| matches!(e, Event::DocumentChanged { doc: d, .. } if *d == doc)));

    // Nothing new: the keys it has are not read again, and nobody is told anything.
    let b_sent = net.relays[1].sent;
    assert!(net.relays[1].engine.refresh_document(doc));
    net.pump();
    assert_eq!(net.relays[1].refreshes, vec![1, 0]);
    assert_eq!(
        net.relays[1].sent, b_sent,
        "an empty refresh sent something"
    );

    // A document it does not hold is not read.
    let other = DocumentId::from_bytes([9; 16]);
    assert!(!net.relays[1].engine.refresh_document(other));
    net.pump();
    assert_eq!(net.relays[1].refreshes.len(), 2);

    // And back the other way: ben's change reaches ana through relay a.
    put(&mut net.phones[1].0, T0, doc, "ben", "2");
    net.pump();
    assert!(net.relays[0].engine.refresh_document(doc));
    net.pump();
    assert_eq!(net.has(0, doc, "ben").as_deref(), Some("2"));
}

#[test]
fn a_refresh_asked_for_during_a_refresh_runs_once_more_after_it() {
    let (mut net, doc) = Cluster::two(64);
    // Relay b's read runs before ana's commit; its answer arrives after it.
    net.relays[1].hold_reads = true;
    assert!(net.relays[1].engine.refresh_document(doc));
    net.pump();
    assert_eq!(net.relays[1].held.len(), 1);
    put(&mut net.phones[0].0, T0, doc, "ana", "1");
    net.pump();
    // The hints for that commit arrive while the read is on its way: twice, as hints may.
    assert!(net.relays[1].engine.refresh_document(doc));
    assert!(net.relays[1].engine.refresh_document(doc));
    net.pump();
    assert_eq!(net.relays[1].refreshes, vec![0], "one read at a time");
    net.relays[1].hold_reads = false;
    net.relays[1].release();
    net.pump();
    assert_eq!(
        net.relays[1].refreshes,
        vec![0, 1],
        "exactly one more read, after the first"
    );
    assert_eq!(net.has(1, doc, "ana").as_deref(), Some("1"));
}

#[test]
fn a_refresh_asked_for_while_the_document_loads_is_not_lost() {
    let (mut net, doc) = Cluster::two_before_find(64);
    // Ben asks relay b, whose load reads the store before ana's next commit.
    net.relays[1].hold_reads = true;
    net.phones[1].0.engine.find(T0, doc);
    net.pump();
    assert_eq!(net.relays[1].held.len(), 1, "relay b is loading");
    put(&mut net.phones[0].0, T0, doc, "ana", "1");
    net.pump();
    assert!(net.relays[1].engine.refresh_document(doc));
    net.relays[1].hold_reads = false;
    net.relays[1].release();
    net.pump();
    assert_eq!(net.has(1, doc, "title").as_deref(), Some("Minutes"));
    assert_eq!(
        net.has(1, doc, "ana").as_deref(),
        Some("1"),
        "the commit the load missed"
    );
}

#[test]
fn a_chunk_that_does_not_load_is_reported_and_the_rest_is_taken_in() {
    let (mut net, doc) = Cluster::two(64);
    put(&mut net.phones[0].0, T0, doc, "ana", "1");
    net.pump();
    // A change that reuses a sequence number of ana's actor: Automerge refuses it.
    let actor = net.phones[0]
        .0
        .engine
        .document(&doc)
        .unwrap()
        .get_actor()
        .clone();
    let mut forged = Automerge::new().with_actor(actor);
    forged
        .transact(|tx| tx.put(automerge::ROOT, "title", "Forged"))
        .unwrap();
    let damaged = vec![doc.to_string(), "incremental".into(), "00".into()];
    net.store.put(&damaged, &forged.save_after(&[])).unwrap();
    assert!(net.relays[1].engine.refresh_document(doc));
    net.pump();
    assert_eq!(net.has(1, doc, "ana").as_deref(), Some("1"));
    assert_eq!(net.has(1, doc, "title").as_deref(), Some("Minutes"));
    assert!(net.relays[1]
        .events
        .iter()
        .any(|e| matches!(e, Event::StorageFailed { doc: Some(d), .. } if *d == doc)));
    // Not taken for one of its own: read (and reported) again, never folded in.
    assert!(net.relays[1].engine.refresh_document(doc));
    net.pump();
    assert_eq!(net.relays[1].refreshes, vec![2, 1]);
    assert!(net.store.load(&damaged).unwrap().is_some());
}

#[test]
fn two_relays_compacting_one_document_while_both_phones_edit_lose_nothing() {
    let (mut net, doc) = Cluster::two(3);
    let rounds = 24;
    for i in 0..rounds {
        put(&mut net.phones[0].0, T0, doc, &format!("a{i}"), "x");
        put(&mut net.phones[1].0, T0, doc, &format!("b{i}"), "y");
        net.pump();
        // Each relay hears of the other's writes, sometimes late: its read ran before the
        // other relay's next commits and compaction.
        let late = i % 3;
        if late < 2 {
            net.relays[late].hold_reads = true;
            assert!(net.relays[late].engine.refresh_document(doc));
            net.pump();
            net.relays[late].hold_reads = false;
            put(&mut net.phones[late].0, T0, doc, &format!("late{i}"), "z");
            net.pump();
            net.relays[late].release();
            net.pump();
        }
        for r in 0..2 {
            assert!(net.relays[r].engine.refresh_document(doc));
            net.pump();
        }
    }
    for r in 0..2 {
        assert!(
            net.relays[r].compactions() >= 2,
            "relay {r} compacted {} times",
            net.relays[r].compactions()
        );
    }
    let stored = net.stored(doc);
    let mut expected = vec!["title".to_owned()];
    for i in 0..rounds {
        expected.push(format!("a{i}"));
        expected.push(format!("b{i}"));
        if i % 3 < 2 {
            expected.push(format!("late{i}"));
        }
    }
    for key in &expected {
        assert!(get(&stored, key).is_some(), "{key} is not in the store");
        for p in 0..2 {
            assert!(net.has(p, doc, key).is_some(), "phone {p} lacks {key}");
        }
    }
    // Each relay counts the document at the size the store holds (a bytes quota counts
    // it so), the chunks the other relay compacted away included: once neither has
    // anything left to compact, a last refresh each brings both views to the store's.
    for _ in 0..5 {
        for r in 0..2 {
            assert!(net.relays[r].engine.refresh_document(doc));
            net.pump();
        }
    }
    let in_store: u64 = net
        .store
        .load_range(&[doc.to_string()])
        .unwrap()
        .iter()
        .map(|(_, v)| v.len() as u64)
        .sum();
    for r in 0..2 {
        assert_eq!(
            net.relays[r].sizes.0.lock().unwrap().get(&doc),
            Some(&in_store),
            "relay {r}'s count of the document's bytes"
        );
    }
    // Compaction keeps the store small: far fewer keys than chunks written.
    let keys = net
        .store
        .keys()
        .into_iter()
        .filter(|k| k[0] == doc.to_string())
        .count();
    let written = net.relays[0].chunk_writes(doc) + net.relays[1].chunk_writes(doc);
    assert!(keys < 12, "{keys} keys left of {written} written");
    // And a relay that loads it fresh has it all.
    let mut reader = Cluster {
        store: net.store.clone(),
        relays: vec![Relay::new("relay-c", 23, net.store.clone(), 64)],
        phones: vec![],
    };
    reader.phone("cleo", 3, 0);
    reader.phones[0].0.engine.find(T0, doc);
    reader.pump();
    for key in &expected {
        assert!(
            reader.has(0, doc, key).is_some(),
            "a fresh load lacks {key}"
        );
    }
}
