//! The application's calls into the engine: create, import, find, read and change
//! documents (client role, and tests), and the relay's own writes (`update_document`).

use automerge::{Automerge, ChangeHash};

use super::document::{Doc, DocState};
use super::{ChangeFailed, Engine, EngineError};

/// A change the host makes to a document, applied inside one Automerge transaction (see
/// [`Engine::update_document`]).
pub type DocumentUpdate = Box<dyn FnOnce(&mut automerge::transaction::Transaction<'_>) + Send>;
use crate::ids::DocumentId;
use crate::time::Timestamp;

impl Engine {
    /// Creates a document (client role), initialised by `init`, and starts writing and
    /// announcing it. Returns its id.
    pub fn create_document(
        &mut self,
        now: Timestamp,
        init: impl FnOnce(&mut automerge::transaction::Transaction<'_>),
    ) -> DocumentId {
        let created = self.try_create_document(now, |tx| {
            init(tx);
            Ok::<(), std::convert::Infallible>(())
        });
        match created {
            Ok((id, ())) => id,
            Err(never) => match never {},
        }
    }

    /// Like [`Engine::create_document`], with an `init` that may fail (nothing is created
    /// then: nothing is kept or written) or return a value. Returns the new id and
    /// `init`'s value.
    pub fn try_create_document<R, E>(
        &mut self,
        now: Timestamp,
        init: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<R, E>,
    ) -> Result<(DocumentId, R), E> {
        let id = DocumentId::random(&mut self.rng);
        let mut am = self.new_automerge();
        let mut tx = am.transaction();
        let value = match init(&mut tx) {
            Ok(v) => v,
            Err(e) => {
                tx.rollback();
                return Err(e);
            }
        };
        tx.commit();
        self.insert_wanted(now, id, am);
        self.persist(id, &[]);
        self.share_with_open_peers(id, now);
        Ok((id, value))
    }

    fn insert_wanted(&mut self, now: Timestamp, id: DocumentId, am: Automerge) {
        let generation = self.generation();
        let mut doc = Doc::new(generation, now);
        doc.wanted = true;
        self.docs.insert(id, doc);
        self.set_ready(id, am, now);
    }

    /// Creates a document under a caller-chosen id from saved Automerge bytes, or merges
    /// the bytes into it if it is already loaded. Used for documents whose id and first
    /// change are derived deterministically (e.g. a meeting occurrence that two organisers
    /// may open offline at once: both produce the identical first change, so the copies
    /// merge into one). A document that is known but not in memory must be found first.
    pub fn import_document(
        &mut self,
        now: Timestamp,
        id: DocumentId,
        bytes: &[u8],
    ) -> Result<Vec<ChangeHash>, EngineError> {
        if !self.docs.contains_key(&id) {
            let am = self.new_automerge();
            self.insert_wanted(now, id, am);
        }
        let doc = self.docs.get_mut(&id).expect("inserted above");
        let DocState::Ready(am) = &mut doc.state else {
            return Err(EngineError::NotLoaded(id));
        };
        doc.wanted = true;
        doc.last_active = now;
        let before = am.get_heads();
        am.load_incremental(bytes)
            .map_err(|e| EngineError::Import(e.to_string()))?;
        let heads = am.get_heads();
        if heads != before {
            self.recount(id);
            self.persist(id, &before);
        }
        self.share_with_open_peers(id, now);
        self.maybe_sync(id, now);
        Ok(heads)
    }

    /// Opens a document (client role): loads it from storage, and if it is not there asks
    /// connected peers for it. Watch for `DocumentChanged`/`DocumentUnavailable`.
    pub fn find(&mut self, now: Timestamp, id: DocumentId) {
        if !self.docs.contains_key(&id) {
            let generation = self.generation();
            self.docs.insert(id, Doc::new(generation, now));
            self.load(id);
        }
        let doc = self.docs.get_mut(&id).expect("inserted above");
        doc.wanted = true;
        doc.last_active = now;
        // Asked again while empty: the peers that said `doc-unavailable` may have it by now
        // (another device's first sync reached the relay meanwhile). Their sync states
        // already sent our request and would not send it again, so they start afresh.
        if matches!(&doc.state, DocState::Ready(am) if am.get_heads().is_empty()) {
            doc.peers.retain(|_, p| !p.unavailable);
            doc.unavailable_reported = false;
        }
        if matches!(doc.state, DocState::Evicted) {
            doc.state = DocState::Loading;
            self.load(id);
        }
        self.share_with_open_peers(id, now);
    }

    /// The in-memory document, if loaded.
    pub fn document(&self, id: &DocumentId) -> Option<&Automerge> {
        match &self.docs.get(id)?.state {
            DocState::Ready(am) => Some(am),
            _ => None,
        }
    }

    /// Ids of every document the engine knows (loaded or not).
    pub fn document_ids(&self) -> Vec<DocumentId> {
        self.docs.keys().copied().collect()
    }

    /// Applies a local change. The change is written at once and announced to peers once
    /// the write is durable (watch for `DocumentDurable`). Returns `f`'s value and the new
    /// heads. When `f` fails the transaction is rolled back: nothing is committed or
    /// written, and `f`'s error comes back as [`ChangeFailed::Rejected`].
    pub fn change_document<R, E>(
        &mut self,
        now: Timestamp,
        id: DocumentId,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<R, E>,
    ) -> Result<(R, Vec<ChangeHash>), ChangeFailed<E>> {
        let doc = self.docs.get_mut(&id).ok_or(EngineError::NotLoaded(id))?;
        let DocState::Ready(am) = &mut doc.state else {
            return Err(EngineError::NotLoaded(id).into());
        };
        doc.last_active = now;
        let before = am.get_heads();
        let mut tx = am.transaction();
        let value = match f(&mut tx) {
            Ok(v) => v,
            Err(e) => {
                tx.rollback();
                return Err(ChangeFailed::Rejected(e));
            }
        };
        tx.commit();
        let heads = am.get_heads();
        if heads != before {
            self.recount(id);
            self.persist(id, &before);
            self.maybe_sync(id, now);
        }
        Ok((value, heads))
    }

    /// Changes a document on the host's own account, whether or not it is in memory: the
    /// relay writes documents that no peer may write (the group's membership view, say).
    ///
    /// `f` runs at once if the document is loaded. Otherwise the document is loaded from
    /// storage (or started empty if the store has none of it) and `f` runs once it has
    /// loaded, after any update queued before it, so the change lands on top of what is
    /// stored rather than beside it. The change is written and, like every change, revealed
    /// to the peers syncing the document only once the write is durable.
    ///
    /// If the load or the write fails the engine emits
    /// [`Event::StorageFailed`](super::Event::StorageFailed) for the document and the
    /// update is lost with the undurable copy (the document reloads from what is durable):
    /// the host applies it again.
    pub fn update_document(&mut self, now: Timestamp, id: DocumentId, f: DocumentUpdate) {
        if !self.docs.contains_key(&id) {
            let generation = self.generation();
            self.docs.insert(id, Doc::new(generation, now));
            self.load(id);
        }
        let doc = self.docs.get_mut(&id).expect("inserted above");
        doc.last_active = now;
        doc.updates.push(f);
        match doc.state {
            DocState::Ready(_) => self.run_updates(now, id),
            DocState::Evicted => {
                doc.state = DocState::Loading;
                self.load(id);
            }
            DocState::Loading => {}
        }
    }

    /// Applies the host's pending updates to a loaded document, written as one chunk.
    pub(super) fn run_updates(&mut self, now: Timestamp, id: DocumentId) {
        let Some(doc) = self.docs.get_mut(&id) else {
            return;
        };
        let DocState::Ready(am) = &mut doc.state else {
            return;
        };
        if doc.updates.is_empty() {
            return;
        }
        let before = am.get_heads();
        for f in std::mem::take(&mut doc.updates) {
            let mut tx = am.transaction();
            f(&mut tx);
            tx.commit();
        }
        if am.get_heads() != before {
            self.recount(id);
            self.persist(id, &before);
            self.maybe_sync(id, now);
        }
    }
}
