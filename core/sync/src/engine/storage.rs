//! Storage tasks and their results: loading a document, writing incremental chunks,
//! compacting into a snapshot (snapshot first, then deletes), and what a failure means.

use std::collections::{BTreeMap, BTreeSet};

use automerge::ChangeHash;
use sha2::{Digest, Sha256};

use super::document::DocState;
use super::{contained, CloseReason, Engine, Event, Rejection};
use crate::ids::DocumentId;
use crate::store::{StorageKey, StorageOp, StorageOutcome, StoreError};
use crate::time::Timestamp;
use crate::wire::Message;

pub(super) enum Task {
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
