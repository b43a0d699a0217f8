//! The application's calls into the engine (client role, and tests): create, import,
//! find, read and change documents.

use automerge::{Automerge, ChangeHash};

use super::document::{Doc, DocState};
use super::{Engine, EngineError};
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
        let id = DocumentId::random(&mut self.rng);
        let mut am = self.new_automerge();
        let mut tx = am.transaction();
        init(&mut tx);
        tx.commit();
        self.insert_wanted(now, id, am);
        self.persist(id, &[]);
        self.share_with_open_peers(id);
        id
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
            .map_err(|e| EngineError::Change(e.to_string()))?;
        let heads = am.get_heads();
        if heads != before {
            self.recount(id);
            self.persist(id, &before);
        }
        self.share_with_open_peers(id);
        self.maybe_sync(id);
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
        if matches!(doc.state, DocState::Evicted) {
            doc.state = DocState::Loading;
            self.load(id);
        }
        self.share_with_open_peers(id);
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
    /// the write is durable (watch for `DocumentDurable`). Returns the new heads.
    pub fn change_document<E: std::fmt::Display>(
        &mut self,
        now: Timestamp,
        id: DocumentId,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), E>,
    ) -> Result<Vec<ChangeHash>, EngineError> {
        let doc = self.docs.get_mut(&id).ok_or(EngineError::NotLoaded(id))?;
        let DocState::Ready(am) = &mut doc.state else {
            return Err(EngineError::NotLoaded(id));
        };
        doc.last_active = now;
        let before = am.get_heads();
        let mut tx = am.transaction();
        if let Err(e) = f(&mut tx) {
            tx.rollback();
            return Err(EngineError::Change(e.to_string()));
        }
        tx.commit();
        let heads = am.get_heads();
        if heads != before {
            self.recount(id);
            self.persist(id, &before);
            self.maybe_sync(id);
        }
        Ok(heads)
    }
}
