//! Per-document state and the sync protocol: one Automerge document, one sync state per
//! peer, the write gate that holds back every reveal until it is durable, and the memory
//! rules (idle eviction, the loaded-operations budget, dropping what nobody holds).

use std::collections::{BTreeMap, BTreeSet};

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash, ReadDoc};

use super::access::peer_may;
use super::sync_check::check_sync_message;
use super::{contained, CloseReason, Engine, Event, Operation, Rejection, Role, Timer};
use crate::ids::{ConnectionId, DocumentId, PeerId};
use crate::store::StorageKey;
use crate::time::Timestamp;
use crate::wire::{DocMessage, Message};

pub(super) enum DocState {
    Loading,
    Ready(Box<Automerge>),
    Evicted,
}

pub(super) struct PeerDoc {
    /// Automerge's sync state for this peer. For a peer that may read the document but
    /// not write it, the state is in Automerge's read-only mode (`State::set_read_only`),
    /// and `apply` drops the changes its messages carry before Automerge sees them.
    ///
    /// Why that exchange goes quiet (automerge 0.12, `sync.rs`): in read-only mode
    /// `generate_sync_message` asks for nothing (`need` stays empty although the peer's
    /// heads name changes we refuse) and returns `None` once our heads are those we last
    /// sent and there is nothing to send. Without read-only mode it would also wait for the
    /// peer's heads to equal ours, which never happens while the peer holds a change we
    /// refuse: both sides would answer every message of the other, for ever. Our messages
    /// also carry the `READ_ONLY` flag, on which a peer that understands it stops offering
    /// changes; an older peer offers them again at most once per message of ours, and a
    /// message that brings nothing new gets no answer.
    ///
    /// The peer's unknown heads are deliberately left in its message: when all of them are
    /// unknown (the usual case, one local edit on top of what we have), removing them
    /// leaves `heads` empty, which Automerge takes for "the peer lost all its data": it
    /// forgets what it sent and answers with the whole document, every time.
    pub(super) sync: sync::State,
    /// The heads our last sync message to this peer carried. Automerge skips replying
    /// when a peer's message shows heads equal to ours, but with writes held back that
    /// peer has not yet heard us confirm them: we must still send our heads (the ack).
    pub(super) told: Vec<ChangeHash>,
    /// This peer sent us something that may need an answer. Only the sender of a message
    /// is answered unless our heads changed (then everyone is): regenerating sync messages
    /// for all peers of a document on every acknowledgement was most of the relay's CPU.
    pub(super) dirty: bool,
    /// The peer told us it does not have the document.
    pub(super) unavailable: bool,
}

impl PeerDoc {
    fn new() -> Self {
        PeerDoc {
            sync: sync::State::new(),
            told: Vec::new(),
            dirty: true,
            unavailable: false,
        }
    }
}

/// A sync message that waits: for its document to load, or for the document's write in
/// flight to become durable.
pub(super) struct Queued {
    pub(super) conn: ConnectionId,
    pub(super) request: bool,
    pub(super) msg: sync::Message,
    /// Wire bytes of the message.
    pub(super) size: usize,
    /// Operations its changes carry (from the sync check).
    pub(super) ops: u64,
}

pub(super) struct Doc {
    pub(super) generation: u64,
    pub(super) state: DocState,
    pub(super) peers: BTreeMap<ConnectionId, PeerDoc>,
    /// Sync messages waiting for the load, or for the writes in flight (applied together
    /// once they are durable: see `Engine::apply_batch`).
    pub(super) queued: Vec<Queued>,
    /// Chunk writes in flight. While any is, no sync message goes out (it would reveal
    /// heads that are not durable) and peers' messages wait in `queued`.
    pub(super) pending_writes: usize,
    pub(super) needs_sync: bool,
    /// Chunks on disk (durable) and their sizes.
    pub(super) chunks: BTreeMap<StorageKey, usize>,
    /// Bytes of writes in flight.
    pub(super) inflight_bytes: usize,
    pub(super) compacting: bool,
    pub(super) last_active: Timestamp,
    /// The application asked for this document (client role).
    pub(super) wanted: bool,
    pub(super) unavailable_reported: bool,
    /// Operations this document adds to `Engine::loaded_ops` (0 unless loaded).
    pub(super) ops: u64,
    /// An idle timer for this generation is in the heap.
    pub(super) timer: bool,
    /// Host updates waiting for the document to load, applied in order once it has.
    pub(super) updates: Vec<super::DocumentUpdate>,
    /// Heads changes are announced to every peer no earlier than this
    /// ([`super::EngineConfig::sync_debounce`]).
    pub(super) announce_after: Timestamp,
    /// A `Timer::Sync` for this generation is in the heap.
    pub(super) sync_timer: bool,
    /// When the oldest peer change not yet passed on to the other peers arrived.
    pub(super) arrived: Option<Timestamp>,
    /// A refresh (a read of the keys other writers of a shared store added) is in flight.
    pub(super) refreshing: bool,
    /// Another refresh was asked for while one was in flight or while the document loaded:
    /// that read may have missed a commit made during it, so one more runs after it.
    pub(super) refresh_again: bool,
}

impl Doc {
    pub(super) fn new(generation: u64, now: Timestamp) -> Self {
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
            ops: 0,
            timer: false,
            updates: Vec::new(),
            announce_after: Timestamp::from_millis(0),
            sync_timer: false,
            arrived: None,
            refreshing: false,
            refresh_again: false,
        }
    }

    pub(super) fn stored_bytes(&self) -> usize {
        self.chunks.values().sum::<usize>() + self.inflight_bytes
    }

    /// A document dropped before it loaded takes the host's pending updates with it
    /// (the host saw `Event::StorageFailed` and applies them again).
    pub(super) fn log_lost_updates(&self, id: DocumentId) {
        if !self.updates.is_empty() {
            tracing::error!(doc = %id, updates = self.updates.len(), "document could not be loaded; host updates dropped");
        }
    }

    fn queued_bytes(&self) -> usize {
        self.queued.iter().map(|q| q.size).sum()
    }

    /// Something is under way that eviction would lose or break.
    fn busy(&self) -> bool {
        let DocState::Ready(am) = &self.state else {
            return false;
        };
        // Changes Automerge holds back until their dependencies arrive live only in
        // memory, and the sender will not send them again.
        self.pending_writes > 0
            || self.compacting
            || self.needs_sync
            || !am.get_missing_deps(&[]).is_empty()
    }
}

impl Engine {
    // ------------------------------------------------------------ memory bookkeeping

    /// Makes `am` the loaded copy of `id`, counts its operations and arms its idle timer.
    pub(super) fn set_ready(&mut self, id: DocumentId, am: Automerge, now: Timestamp) {
        let idle = self.config.limits.idle_eviction;
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        doc.state = DocState::Ready(Box::new(am));
        doc.last_active = now;
        if !doc.timer {
            doc.timer = true;
            self.timers
                .schedule(now.plus(idle), Timer::Idle(id, doc.generation));
        }
        self.recount(id);
    }

    /// Brings `loaded_ops` up to date with the document's operation count.
    pub(super) fn recount(&mut self, id: DocumentId) {
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        let now_ops = match &doc.state {
            DocState::Ready(am) => am.stats().num_ops,
            DocState::Loading | DocState::Evicted => 0,
        };
        self.loaded_ops = self.loaded_ops - doc.ops + now_ops;
        doc.ops = now_ops;
    }

    /// Drops the loaded copy (the document reloads on demand).
    fn unload(&mut self, id: DocumentId) {
        if let Some(doc) = self.docs.get_mut(&id) {
            doc.state = DocState::Evicted;
        }
        self.recount(id);
    }

    /// Removes a document from the map, keeping the operation count right.
    pub(super) fn remove_doc(&mut self, id: DocumentId) -> Option<super::Doc> {
        self.unload(id);
        self.docs.remove(&id)
    }

    /// After a connection let go of a document: forget it if nobody holds it and nothing
    /// is under way. A loaded document with content stays until it is idle (a reconnect
    /// often follows); everything else goes now, so ids a peer merely named cost nothing
    /// once it has gone.
    pub(super) fn release_if_unused(&mut self, id: DocumentId) {
        let Some(doc) = self.docs.get(&id) else {
            return;
        };
        let unused = doc.peers.is_empty()
            && doc.queued.is_empty()
            && doc.updates.is_empty()
            && !doc.wanted
            && doc.pending_writes == 0
            && !doc.compacting;
        let worth_keeping = match &doc.state {
            DocState::Ready(am) => !am.get_heads().is_empty() || !doc.chunks.is_empty(),
            DocState::Loading | DocState::Evicted => false,
        };
        if unused && !worth_keeping {
            self.remove_doc(id);
        }
    }

    /// Whether an idle timer that fired finds its document idle; re-arms it otherwise.
    pub(super) fn idle_due(&mut self, now: Timestamp, id: DocumentId, generation: u64) -> bool {
        let idle = self.config.limits.idle_eviction;
        let Some(doc) = self.docs.get_mut(&id) else {
            return false;
        };
        if doc.generation != generation {
            return false;
        }
        doc.timer = false;
        if !matches!(doc.state, DocState::Ready(_)) {
            // `set_ready` arms a new timer when it is loaded again.
            return false;
        }
        let deadline = doc.last_active.plus(idle);
        let rearm = if deadline > now {
            Some(deadline)
        } else if doc.busy() {
            // Look again one idle period from now.
            doc.last_active = now;
            Some(now.plus(idle))
        } else {
            None
        };
        match rearm {
            Some(at) => {
                doc.timer = true;
                self.timers.schedule(at, Timer::Idle(id, generation));
                false
            }
            None => true,
        }
    }

    /// Drops an idle (or budget-evicted) document from memory: forgotten entirely when
    /// nobody holds it, otherwise reloaded on the next message.
    pub(super) fn evict(&mut self, id: DocumentId) {
        let Some(doc) = self.docs.get(&id) else {
            return;
        };
        if doc.peers.is_empty() && !doc.wanted {
            self.remove_doc(id);
        } else {
            self.unload(id);
        }
        self.emit(Event::DocumentEvicted { doc: id });
    }

    /// Evicts the least recently used documents (not `keep`, none busy) until `extra`
    /// more operations fit under `max_loaded_ops`. Returns whether they fit.
    pub(super) fn make_room(&mut self, extra: u64, keep: DocumentId) -> bool {
        let max = self.config.limits.max_loaded_ops;
        if self.loaded_ops + extra <= max {
            return true;
        }
        // Only reached past the budget, so the scan is rare.
        let mut candidates: Vec<(Timestamp, DocumentId, u64)> = self
            .docs
            .iter()
            .filter(|(id, d)| **id != keep && matches!(d.state, DocState::Ready(_)) && !d.busy())
            .map(|(id, d)| (d.last_active, *id, d.ops))
            .collect();
        candidates.sort();
        let mut evicted = 0;
        for (_, id, _) in candidates {
            if self.loaded_ops + extra <= max {
                break;
            }
            self.evict(id);
            evicted += 1;
        }
        if evicted > 0 {
            tracing::info!(
                documents = evicted,
                loaded_ops = self.loaded_ops,
                "loaded documents passed the operations budget; evicted early"
            );
            self.emit(Event::BudgetEviction { documents: evicted });
        }
        self.loaded_ops + extra <= max
    }

    /// Automerge panicked on something a peer sent. Close that peer, and drop the document
    /// from memory (its state can no longer be trusted): every connection syncing it is
    /// closed so its peer resyncs against the copy reloaded from what is durable.
    pub(super) fn contain_panic(&mut self, conn: ConnectionId, id: DocumentId) {
        tracing::error!(%conn, doc = %id, "automerge panicked on a peer's message; closing that connection and reloading the document");
        self.violation(conn, CloseReason::Internal);
        self.drop_document(id, CloseReason::Internal);
    }

    /// Forgets the in-memory document and closes every connection syncing it. A document
    /// the application holds stays known (evicted) so it reloads from storage.
    pub(super) fn drop_document(&mut self, id: DocumentId, reason: CloseReason) {
        let Some(doc) = self.remove_doc(id) else {
            return;
        };
        doc.log_lost_updates(id);
        let conns: BTreeSet<ConnectionId> = doc
            .peers
            .keys()
            .copied()
            .chain(doc.queued.iter().map(|q| q.conn))
            .collect();
        if doc.wanted {
            let generation = self.generation();
            let mut fresh = Doc::new(generation, doc.last_active);
            fresh.state = DocState::Evicted;
            fresh.wanted = true;
            self.docs.insert(id, fresh);
        }
        for conn in conns {
            self.close(conn, reason.clone());
        }
    }

    // ------------------------------------------------------------ the sync protocol

    pub(super) fn on_doc_message(
        &mut self,
        now: Timestamp,
        conn: ConnectionId,
        peer: PeerId,
        d: DocMessage,
        request: bool,
    ) {
        let id = d.document_id;
        if !self.may(conn, &id, Operation::Read, now) {
            self.reject(conn, &peer, id, Rejection::Forbidden);
            return;
        }
        let size = d.data.len();
        // Before Automerge sees a byte: its decoder and its Bloom filter code trust fields
        // that size allocations and loops (see `sync_check`).
        let summary = match check_sync_message(&d.data, &self.config.limits.sync) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%conn, doc = %id, bytes = size, error = %e, "sync message refused");
                self.violation(
                    conn,
                    CloseReason::Protocol(format!("sync message refused: {e}")),
                );
                return;
            }
        };
        let msg = match contained(|| sync::Message::decode(&d.data)) {
            Some(Ok(m)) => m,
            _ => {
                self.violation(
                    conn,
                    CloseReason::Protocol("undecodable automerge sync message".into()),
                );
                return;
            }
        };
        let limits = &self.config.limits;
        let (max_docs, max_queue, max_queued_bytes) = (
            limits.max_documents_per_connection,
            limits.max_queued_per_document,
            limits.max_document_bytes,
        );
        let wanted = self.docs.get(&id).is_some_and(|d| d.wanted);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.docs.contains(&id) && c.docs.len() >= max_docs && !wanted {
            self.reject(conn, &peer, id, Rejection::TooManyDocuments);
            return;
        }
        c.docs.insert(id);
        if !self.docs.contains_key(&id) {
            let generation = self.generation();
            self.docs.insert(id, Doc::new(generation, now));
            self.load(id);
        }
        let doc = self.docs.get_mut(&id).expect("inserted above");
        doc.last_active = now;
        if !msg.changes.is_empty() {
            doc.arrived.get_or_insert(now);
        }
        let queued = Queued {
            conn,
            request,
            msg,
            size,
            ops: summary.ops,
        };
        match doc.state {
            // A write for it is in flight: the message waits for it (see `Doc::queued`), so
            // what the document holds in memory stays what is durable plus at most one
            // write, and the sync messages that the write's completion releases go out
            // at once rather than wait for a moment with no write in flight.
            DocState::Ready(_)
                if doc.pending_writes > 0
                    && doc.queued.len() < max_queue
                    && doc.queued_bytes() + size <= max_queued_bytes
                    && (!queued.msg.changes.is_empty()
                        || doc.queued.iter().any(|q| q.conn == conn)) =>
            {
                doc.queued.push(queued);
            }
            // A message without changes (an acknowledgement, a peer's heads) adds nothing
            // that needs writing: it goes in now, so the round of sync messages that the
            // write's completion releases is generated from the peer's latest state
            // (behind its own earlier messages, which stay in order).
            DocState::Ready(_) if doc.pending_writes > 0 && queued.msg.changes.is_empty() => {
                self.apply_batch(now, id, vec![queued]);
            }
            DocState::Ready(_) => {
                // Nothing in flight, or the queue is full (the messages then go in now,
                // together: their reveal waits for every write, as it did before).
                let mut batch = std::mem::take(&mut doc.queued);
                batch.push(queued);
                self.apply_batch(now, id, batch);
            }
            DocState::Evicted => {
                doc.state = DocState::Loading;
                doc.queued.push(queued);
                self.load(id);
            }
            DocState::Loading => {
                if doc.queued.len() >= max_queue || doc.queued_bytes() + size > max_queued_bytes {
                    self.close(conn, CloseReason::Overloaded);
                } else {
                    doc.queued.push(queued);
                }
            }
        }
    }

    pub(super) fn reject(
        &mut self,
        conn: ConnectionId,
        peer: &PeerId,
        id: DocumentId,
        reason: Rejection,
    ) {
        tracing::debug!(%conn, doc = %id, reason = reason.label(), "document refused");
        self.reject_unavailable(conn, peer, id);
        if let Some(c) = self.conns.get_mut(&conn) {
            let holds = self.docs.get(&id).is_some_and(|d| {
                d.peers.contains_key(&conn) || d.queued.iter().any(|q| q.conn == conn)
            });
            if !holds {
                c.docs.remove(&id);
            }
        }
        self.release_if_unused(id);
        self.emit(Event::DocumentRejected {
            conn,
            doc: id,
            reason,
        });
    }

    pub(super) fn reject_unavailable(&mut self, conn: ConnectionId, peer: &PeerId, id: DocumentId) {
        let msg = Message::DocUnavailable {
            sender_id: self.local_id(conn),
            target_id: peer.clone(),
            document_id: id,
        };
        self.send(conn, &msg);
    }

    /// Applies sync messages to a loaded document in order, then writes what they added as
    /// one chunk and answers. Coalescing matters under load: eight members typing into one
    /// document send messages faster than a flush completes, and one chunk and one round of
    /// sync messages per flush costs far less than one per message.
    pub(super) fn apply_batch(&mut self, now: Timestamp, id: DocumentId, batch: Vec<Queued>) {
        // The heads before the first message that changed the document.
        let mut before: Option<Vec<ChangeHash>> = None;
        for q in batch {
            if !self.conns.contains_key(&q.conn) {
                continue;
            }
            if !self.docs.contains_key(&id) {
                // A request for a missing document removed it; re-create to answer the rest.
                let generation = self.generation();
                self.docs.insert(id, Doc::new(generation, now));
                let am = self.new_automerge();
                self.set_ready(id, am, now);
            }
            if let Some(b) = self.receive(now, id, q) {
                before.get_or_insert(b);
            }
        }
        match before {
            Some(before) if self.docs.contains_key(&id) => {
                // New heads: `persist` flags every peer of the document.
                self.recount(id);
                self.persist(id, &before);
            }
            _ => {
                // Nothing new (changes we had, or held back by Automerge for their
                // dependencies): nothing of theirs to pass on until something is.
                if let Some(doc) = self.docs.get_mut(&id) {
                    if doc.pending_writes == 0 {
                        doc.arrived = None;
                    }
                }
            }
        }
        self.maybe_sync(id, now);
    }

    /// Applies one sync message to a loaded document; returns the heads it had before when
    /// the message changed it (the caller writes the change and syncs).
    fn receive(&mut self, now: Timestamp, id: DocumentId, q: Queued) -> Option<Vec<ChangeHash>> {
        let Queued {
            conn,
            request,
            mut msg,
            size,
            mut ops,
        } = q;
        let peer = self.peer_of(conn)?;
        // Decided when the message is applied, not when it arrived: it may have waited for
        // a load while the policy changed.
        if !self.may(conn, &id, Operation::Read, now) {
            self.drop_reader(conn, id);
            return None;
        }
        let read_only = !self.may(conn, &id, Operation::Write, now);
        if read_only && !msg.changes.is_empty() {
            // Served as a read (see `PeerDoc::sync` for why the exchange still goes quiet).
            tracing::debug!(%conn, doc = %id, changes = msg.changes.len(), "changes from a read-only peer dropped");
            msg.changes = sync::ChunkList::empty();
            ops = 0;
            self.emit(Event::DocumentRejected {
                conn,
                doc: id,
                reason: Rejection::ReadOnly,
            });
        }
        let role = self.config.role;
        let limits = self.config.limits.clone();
        let identity = self.conns.get(&conn).and_then(|c| c.identity.clone());
        let doc = self.docs.get(&id)?;
        let DocState::Ready(am) = &doc.state else {
            return None;
        };
        let has_changes = !msg.changes.is_empty();
        if has_changes && doc.stored_bytes() + size > limits.max_document_bytes {
            self.reject(conn, &peer, id, Rejection::TooLarge);
            return None;
        }
        if has_changes && !self.access.may_grow(&id, size as u64) {
            self.reject(conn, &peer, id, Rejection::GroupQuota);
            return None;
        }
        if doc.ops + ops > limits.max_document_ops {
            self.reject(conn, &peer, id, Rejection::TooManyOps);
            return None;
        }
        let creates = role == Role::Relay
            && has_changes
            && doc.chunks.is_empty()
            && doc.pending_writes == 0
            && am.get_heads().is_empty();
        if creates {
            let who = identity.unwrap_or_else(|| peer.as_str().to_owned());
            let allowed = self.creations.take(
                &who,
                limits.new_documents_burst,
                limits.new_document_interval,
                limits.max_tracked_identities,
                now,
            );
            if !allowed {
                self.reject(conn, &peer, id, Rejection::CreationQuota);
                return None;
            }
        }
        if ops > 0 && !self.make_room(ops, id) {
            tracing::info!(%conn, doc = %id, ops, "no room for more operations in memory; closing so the peer resyncs later");
            self.close(conn, CloseReason::Overloaded);
            return None;
        }
        let doc = self.docs.get_mut(&id).expect("checked above");
        let DocState::Ready(am) = &mut doc.state else {
            return None;
        };
        let pd = doc.peers.entry(conn).or_insert_with(PeerDoc::new);
        pd.unavailable = false;
        if pd.sync.read_only != read_only {
            pd.sync.set_read_only(read_only);
        }
        // A connection's `docs` must name every document that holds it (a refusal of an
        // earlier message in the same loaded batch may have taken the id out).
        if let Some(c) = self.conns.get_mut(&conn) {
            c.docs.insert(id);
        }
        let their_heads = msg.heads.clone();
        let empty_here = am.get_heads().is_empty();
        if role == Role::Relay && request && empty_here && !has_changes {
            // Neither side has it: answer like the JS server and forget the peer's interest.
            doc.peers.remove(&conn);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.docs.remove(&id);
            }
            self.release_if_unused(id);
            self.reject_unavailable(conn, &peer, id);
            return None;
        }
        let before = am.get_heads();
        let received = contained(|| am.receive_sync_message(&mut pd.sync, msg));
        pd.dirty = true;
        let after = am.get_heads();
        match received {
            None => {
                self.contain_panic(conn, id);
                return None;
            }
            Some(Err(e)) => {
                tracing::debug!(%conn, doc = %id, error = %e, "sync message could not be applied");
                self.violation(
                    conn,
                    CloseReason::Protocol("sync message could not be applied".into()),
                );
            }
            Some(Ok(())) => {
                if !their_heads.is_empty() {
                    self.emit(Event::PeerHasHeads {
                        conn,
                        doc: id,
                        heads: their_heads,
                    });
                }
            }
        }
        // Whatever the message added is written before anyone hears of it, even when
        // Automerge refused part of it.
        if after == before {
            return None;
        }
        if role == Role::Client {
            self.emit(Event::DocumentChanged {
                doc: id,
                heads: after,
            });
        }
        Some(before)
    }

    /// Generates sync messages for the peers of the document that need one, unless a
    /// write is in flight. A peer that may no longer read the document at `now` gets
    /// `doc-unavailable` instead and is dropped from it.
    pub(super) fn maybe_sync(&mut self, id: DocumentId, now: Timestamp) {
        let role = self.config.role;
        let debounce = self.config.sync_debounce;
        let (access, conns) = (&*self.access, &self.conns);
        let mut lost = Vec::new();
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
        // The announcement to everyone waits out the debounce; answers go now.
        let held = doc.needs_sync && now < doc.announce_after;
        if held && !doc.sync_timer {
            doc.sync_timer = true;
            self.timers
                .schedule(doc.announce_after, Timer::Sync(id, doc.generation));
        }
        if held && !any_dirty {
            return;
        }
        let everyone = !held && std::mem::replace(&mut doc.needs_sync, false);
        if everyone && !debounce.is_zero() && !doc.peers.is_empty() {
            doc.announce_after = now.plus(debounce);
        }
        let ours = am.get_heads();
        let empty = ours.is_empty();
        let mut frames = Vec::new();
        let mut panicked = None;
        for (conn, pd) in doc.peers.iter_mut() {
            let dirty = std::mem::replace(&mut pd.dirty, false);
            if !everyone && !dirty && (held || pd.told == ours) {
                continue;
            }
            if pd.unavailable && empty {
                continue;
            }
            if !peer_may(access, conns, *conn, &id, Operation::Read, now) {
                lost.push(*conn);
                continue;
            }
            if pd.told != ours {
                // Undo automerge's "they already know" shortcut (see `PeerDoc::told`).
                pd.sync.last_sent_heads = pd.told.clone();
            }
            match contained(|| am.generate_sync_message(&mut pd.sync)) {
                None => {
                    // The peer's last message (its Bloom filter, say) is what breaks it.
                    panicked = Some(*conn);
                    break;
                }
                Some(Some(m)) => {
                    pd.told = m.heads.clone();
                    frames.push((*conn, m.encode()));
                }
                Some(None) => {}
            }
        }
        if let Some(conn) = panicked {
            self.contain_panic(conn, id);
            return;
        }
        let forwarded = if everyone && !frames.is_empty() {
            doc.arrived.take()
        } else {
            None
        };
        if let Some(arrived) = forwarded {
            self.emit(Event::ChangesForwarded {
                doc: id,
                waited: now.since(arrived),
            });
        }
        for (conn, data) in frames {
            let Some(target_id) = self.peer_of(conn) else {
                continue;
            };
            let d = DocMessage {
                sender_id: self.local_id(conn),
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
        for conn in lost {
            self.drop_reader(conn, id);
        }
    }

    pub(super) fn check_unavailable(&mut self, id: DocumentId) {
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

    /// Client role: make every open connection a peer of this document and sync.
    pub(super) fn share_with_open_peers(&mut self, id: DocumentId, now: Timestamp) {
        if self.config.role != Role::Client {
            return;
        }
        let open: Vec<ConnectionId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, super::ConnState::Open { .. }))
            .map(|(id, _)| *id)
            .collect();
        for conn in open {
            self.share_with(id, conn, now);
        }
    }

    pub(super) fn share_with(&mut self, id: DocumentId, conn: ConnectionId, now: Timestamp) {
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        doc.peers.entry(conn).or_insert_with(PeerDoc::new);
        doc.needs_sync = true;
        // A peer's first sync is not a keystroke: no debounce.
        doc.announce_after = now;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.docs.insert(id);
        }
        if matches!(doc.state, DocState::Evicted) {
            doc.state = DocState::Loading;
            self.load(id);
        }
        self.maybe_sync(id, now);
    }
}
