//! Storage tasks and their results: loading a document, writing incremental chunks,
//! compacting into a snapshot (snapshot first, then deletes), re-reading what other
//! writers of a shared store added (refresh), and what a failure means.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ChangeHash, ReadDoc};
use sha2::{Digest, Sha256};

use super::document::DocState;
use super::{contained, CloseReason, Engine, Event, Rejection};
use crate::ids::DocumentId;
use crate::store::{RangeUpdate, StorageKey, StorageOp, StorageOutcome, StoreError};
use crate::time::Timestamp;
use crate::wire::Message;

pub(super) enum Task {
    Load {
        doc: DocumentId,
        generation: u64,
    },
    /// Reads the keys of a loaded document that this engine does not know: what other
    /// engines sharing the store wrote.
    Refresh {
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
    Forget {
        doc: DocumentId,
    },
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
    pub(super) fn load(&mut self, id: DocumentId) {
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

    /// Forgets a document: drops it from memory, closes the connections syncing it (so no
    /// peer's later message brings it back; they reconnect without it) and deletes every
    /// key stored under its id. The host reports the delete durable as
    /// [`Event::DocumentForgotten`], or a failure as [`Event::StorageFailed`]. Writes for
    /// it still in flight run first (the host runs storage tasks in order), so nothing of
    /// it is left behind. A later [`Engine::find`] is a fresh fetch.
    pub fn forget_document(&mut self, id: DocumentId) {
        if let Some(doc) = self.remove_doc(id) {
            let conns: BTreeSet<_> = doc
                .peers
                .keys()
                .copied()
                .chain(doc.queued.iter().map(|q| q.conn))
                .collect();
            for conn in conns {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.docs.remove(&id);
                }
                self.close(conn, CloseReason::Forgotten);
            }
        }
        self.task(
            Task::Forget { doc: id },
            StorageOp::DeleteRange {
                prefix: vec![id.to_string()],
            },
        );
    }

    /// Writes the changes since `before` as an incremental chunk.
    pub(super) fn persist(&mut self, id: DocumentId, before: &[ChangeHash]) {
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

    pub(super) fn on_storage(
        &mut self,
        now: Timestamp,
        task: crate::ids::TaskId,
        result: Result<StorageOutcome, StoreError>,
    ) {
        let Some(t) = self.tasks.remove(&task) else {
            return;
        };
        match t {
            Task::Load { doc, generation } => self.on_loaded(now, doc, generation, result),
            Task::Refresh { doc, generation } => self.on_refreshed(now, doc, generation, result),
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
                        let stored = d.stored_bytes() as u64;
                        self.access.document_stored(&doc, stored);
                        self.emit(Event::DocumentDurable { doc, heads });
                        // First reveal what is now durable (everything in memory, unless
                        // another write is in flight), then take in what waited for it.
                        self.maybe_sync(doc, now);
                        self.maybe_compact(doc);
                        self.take_waiting(now, doc);
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
                        let stored = d.stored_bytes() as u64;
                        self.access.document_stored(&doc, stored);
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
            Task::Forget { doc } => match result {
                Ok(_) => {
                    self.access.document_stored(&doc, 0);
                    self.emit(Event::DocumentForgotten { doc });
                }
                Err(error) => self.emit(Event::StorageFailed {
                    doc: Some(doc),
                    error,
                }),
            },
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
        let Some(doc) = self.docs.get(&id) else {
            return;
        };
        if doc.generation != generation || !matches!(doc.state, DocState::Loading) {
            return;
        }
        let chunks = match result {
            Ok(StorageOutcome::Range(chunks)) => chunks,
            Ok(_) => Vec::new(),
            Err(error) => {
                // A read that failed (a full disk, say: a host serves no read after a failed
                // flush) says nothing about whether the document exists. Answering
                // `doc-unavailable` would make the peers give up on it for as long as their
                // connection lasts, with their changes unsent. Drop it and close their
                // connections, as for a failed write: they redial and retry.
                tracing::error!(doc = %id, error = %error, "read failed; closing the connections that wait for it");
                self.emit(Event::StorageFailed {
                    doc: Some(id),
                    error,
                });
                self.drop_document(id, CloseReason::StorageFailed);
                return;
            }
        };
        let mut am = self.new_automerge();
        let mut sizes = BTreeMap::new();
        let mut total = 0;
        for (key, bytes) in chunks {
            if key.len() != 3 || !(key[1] == "incremental" || key[1] == "snapshot") {
                continue;
            }
            if !matches!(contained(|| am.load_incremental(&bytes)), Some(Ok(_))) {
                tracing::error!(doc = %id, bytes = bytes.len(), "stored chunk does not load");
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
        doc.needs_sync = true;
        self.access.document_stored(&id, total as u64);
        self.set_ready(id, am, now);
        self.emit(Event::DocumentLoaded {
            doc: id,
            bytes: total,
        });
        // The host's updates go first: a peer asking for a document the store did not have
        // is then answered with what the host wrote, not `doc-unavailable`.
        self.run_updates(now, id);
        let doc = self.docs.get_mut(&id).expect("checked above");
        let queued = std::mem::take(&mut doc.queued);
        // Also syncs (a no-op while the host's updates are being written).
        self.apply_batch(now, id, queued);
        self.check_unavailable(id);
        self.maybe_compact(id);
        // A document bigger than the room left pushes older ones out.
        self.make_room(0, id);
        // A refresh asked for during the load: the load's read may have missed a commit
        // another writer made while it ran.
        self.refresh_if_asked(id);
    }

    /// Brings in what other writers of a shared store (other relays of a cluster) stored
    /// for `id` since this engine read it: one read of the document's keys this engine does
    /// not know, whose changes are applied to the in-memory copy and synced to its peers
    /// as if a peer had sent them, but not written again (they are durable already). Keys
    /// read are recorded as this engine's own chunks, so its compaction folds them in.
    ///
    /// Returns false, and does nothing, when the document is not in memory (it reads
    /// everything when it next loads). While it loads, or while a refresh of it is in
    /// flight, one more refresh is marked to run after that read (which may have missed a
    /// commit made while it ran); calls meanwhile add nothing more. The host may call this
    /// as often as it likes (on every hint, on a periodic sweep): a refresh that finds
    /// nothing new sends nothing. A chunk that does not load, or a failed read, is reported
    /// as [`Event::StorageFailed`]; a later refresh tries again.
    pub fn refresh_document(&mut self, id: DocumentId) -> bool {
        let Some(doc) = self.docs.get_mut(&id) else {
            return false;
        };
        match doc.state {
            DocState::Evicted => false,
            DocState::Loading => {
                doc.refresh_again = true;
                true
            }
            DocState::Ready(_) if doc.refreshing => {
                doc.refresh_again = true;
                true
            }
            DocState::Ready(_) => {
                self.start_refresh(id);
                true
            }
        }
    }

    /// Documents in memory that at least one connection syncs: those a host sweeping for
    /// changes other writers stored should refresh ([`Engine::refresh_document`]).
    pub fn loaded_documents_with_peers(&self) -> Vec<DocumentId> {
        self.docs
            .iter()
            .filter(|(_, d)| matches!(d.state, DocState::Ready(_)) && !d.peers.is_empty())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Runs the refresh marked while a read was under way, if any and none is in flight.
    fn refresh_if_asked(&mut self, id: DocumentId) {
        let asked = self.docs.get(&id).is_some_and(|d| {
            d.refresh_again && !d.refreshing && matches!(d.state, DocState::Ready(_))
        });
        if asked {
            self.start_refresh(id);
        }
    }

    fn start_refresh(&mut self, id: DocumentId) {
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        doc.refreshing = true;
        doc.refresh_again = false;
        let generation = doc.generation;
        let mut known: BTreeSet<StorageKey> = doc.chunks.keys().cloned().collect();
        // Our own writes still in flight are known too: the read may run after them, and
        // reading back what we wrote would only cost bytes.
        for task in self.tasks.values() {
            match task {
                Task::Chunk { doc, key, .. } | Task::Snapshot { doc, key, .. } if *doc == id => {
                    known.insert(key.clone());
                }
                _ => {}
            }
        }
        self.task(
            Task::Refresh {
                doc: id,
                generation,
            },
            StorageOp::LoadRangeExcept {
                prefix: vec![id.to_string()],
                known: known.into_iter().collect(),
            },
        );
    }

    fn on_refreshed(
        &mut self,
        now: Timestamp,
        id: DocumentId,
        generation: u64,
        result: Result<StorageOutcome, StoreError>,
    ) {
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        if doc.generation != generation {
            // A document removed and created again meanwhile read everything it holds.
            return;
        }
        doc.refreshing = false;
        if !matches!(doc.state, DocState::Ready(_)) {
            // Evicted since: its next load reads everything (and runs a refresh marked
            // meanwhile after it).
            return;
        }
        let RangeUpdate {
            added: chunks,
            gone,
        } = match result {
            Ok(StorageOutcome::Update(update)) => update,
            Ok(_) => RangeUpdate::default(),
            Err(error) => {
                // Nothing changed in memory; the next hint or sweep reads again.
                tracing::warn!(doc = %id, error = %error, "refresh read failed");
                self.emit(Event::StorageFailed {
                    doc: Some(id),
                    error,
                });
                self.refresh_if_asked(id);
                return;
            }
        };
        let doc = self.docs.get_mut(&id).expect("checked above");
        let DocState::Ready(am) = &mut doc.state else {
            return;
        };
        let before = am.get_heads();
        let prefix = id.to_string();
        let mut damaged = 0;
        let mut added = 0;
        let mut panicked = false;
        for (key, bytes) in chunks {
            let ours = key.len() == 3
                && key[0] == prefix
                && (key[1] == "incremental" || key[1] == "snapshot");
            if !ours || doc.chunks.contains_key(&key) {
                continue;
            }
            match contained(|| am.load_incremental(&bytes)) {
                Some(Ok(_)) => {
                    doc.chunks.insert(key, bytes.len());
                    added += 1;
                }
                // Not recorded: this engine's compaction must never delete a chunk whose
                // changes it does not hold. Reported again by every refresh until it is
                // repaired or removed.
                Some(Err(_)) => damaged += 1,
                None => {
                    panicked = true;
                    break;
                }
            }
        }
        // What another writer's compaction folded into its snapshot and deleted no longer
        // counts (towards the size, and the chunks before the next compaction).
        let removed = gone
            .iter()
            .filter(|key| doc.chunks.remove(*key).is_some())
            .count();
        if damaged > 0 || panicked {
            tracing::error!(doc = %id, chunks = damaged.max(1), "a chunk another writer stored does not load");
            self.emit(Event::StorageFailed {
                doc: Some(id),
                error: StoreError::Corrupt {
                    detail: format!("chunk of document {id} does not load"),
                },
            });
        }
        if panicked {
            // The in-memory copy can no longer be trusted: reload it from what is durable
            // and make its peers resync.
            self.drop_document(id, CloseReason::Internal);
            return;
        }
        let doc = self.docs.get_mut(&id).expect("checked above");
        let DocState::Ready(am) = &doc.state else {
            return;
        };
        let after = am.get_heads();
        if added > 0 || removed > 0 {
            let stored = doc.stored_bytes() as u64;
            tracing::debug!(doc = %id, added, removed, "read chunks other writers stored or deleted");
            self.access.document_stored(&id, stored);
        }
        if after != before {
            let doc = self.docs.get_mut(&id).expect("checked above");
            // Already durable: announced to every peer (the write gate still holds it back
            // while a write of ours is in flight), never written again.
            doc.needs_sync = true;
            self.recount(id);
            self.emit(Event::DocumentChanged {
                doc: id,
                heads: after,
            });
            self.maybe_sync(id, now);
            self.make_room(0, id);
        }
        self.maybe_compact(id);
        self.refresh_if_asked(id);
    }

    /// Applies the sync messages that waited for the document's writes, once none is in
    /// flight.
    fn take_waiting(&mut self, now: Timestamp, id: DocumentId) {
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        if doc.pending_writes > 0
            || doc.queued.is_empty()
            || !matches!(doc.state, DocState::Ready(_))
        {
            return;
        }
        let queued = std::mem::take(&mut doc.queued);
        self.apply_batch(now, id, queued);
    }

    fn load_failed(&mut self, id: DocumentId) {
        let Some(doc) = self.remove_doc(id) else {
            return;
        };
        doc.log_lost_updates(id);
        let mut told = BTreeSet::new();
        for conn in doc
            .queued
            .iter()
            .map(|q| q.conn)
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
                        sender_id: self.local_id(conn),
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
        self.drop_document(id, CloseReason::StorageFailed);
    }

    pub(super) fn maybe_compact(&mut self, id: DocumentId) {
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
        // A snapshot holds only the changes Automerge applied. A chunk read from a shared
        // store (a refresh) may hold changes still waiting for their dependencies: deleting
        // it for a snapshot without them would lose them. Compact once they are applied.
        if !am.get_missing_deps(&[]).is_empty() {
            return;
        }
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
