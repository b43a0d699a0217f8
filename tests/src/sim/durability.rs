//! The durability invariant, and a cheap way to check it on every message.
//!
//! **Invariant.** Every change hash the relay names as one of its `heads` in a message it
//! sends loads, at the moment it sends that message, from the relay's flushed data (what a
//! power cut would leave). In Automerge's sync protocol the heads are the only
//! acknowledgement a peer gets, so this is what "acknowledged means durable" asks; it holds
//! whatever mechanism an engine uses to keep it (holding replies back while a write is in
//! flight, or anything else).
//!
//! The changes a message carries need no separate check: the relay generates each message
//! from one document whose heads it names, and Automerge only holds a change once all its
//! dependencies are there, so every carried change is an ancestor of those heads, and a
//! document loaded from the flushed chunks that has the heads has their ancestors too.
//!
//! Checking every message would reload the document from the disk each time; instead
//! [`FlushedDocs`] keeps each document as last loaded from the disk, with the disk's
//! version of it, and reloads only when that changed (loading just the new chunks when none
//! was removed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use automerge::{Automerge, ChangeHash, ReadDoc};
use cairn_sync::ids::{ConnectionId, DocumentId};
use cairn_sync::store::StorageKey;

use super::store::SimStore;

/// A change the relay revealed (named as a head) that its flushed data did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The document.
    pub doc: DocumentId,
    /// The change that was revealed but not durable.
    pub hash: ChangeHash,
    /// Where the check found it.
    pub found: Found,
}

/// Where a [`Violation`] was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// In a message the relay was sending: it revealed a change that was not durable.
    InMessage {
        /// Virtual time of the message.
        at_millis: u64,
        /// The connection it went out on.
        conn: ConnectionId,
    },
    /// Among everything the relay ever revealed, checked again later (after a power cut, or
    /// when a test asks): an acknowledged change is gone.
    Later {
        /// Which check.
        when: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.found {
            Found::InMessage { at_millis, conn } => write!(
                f,
                "t={at_millis} ms: the relay's message on {conn} names change {} of {} as a head, but it does not load from the relay's flushed data",
                self.hash, self.doc
            ),
            Found::Later { when } => write!(
                f,
                "{when}: change {} of {}, which the relay revealed, does not load from its flushed data",
                self.hash, self.doc
            ),
        }
    }
}

/// One document as loaded from the disk.
struct Flushed {
    version: u64,
    keys: BTreeSet<StorageKey>,
    doc: Automerge,
    /// Every flushed change loaded (none waits for a dependency the disk lacks).
    complete: bool,
}

/// Documents as the relay's disk holds them, reloaded only when the disk changed.
#[derive(Default)]
pub(crate) struct FlushedDocs {
    docs: BTreeMap<DocumentId, Flushed>,
    /// Documents (re)loaded, for the statistics.
    pub(crate) loads: u64,
}

fn is_chunk(key: &StorageKey) -> bool {
    key.len() == 3 && (key[1] == "incremental" || key[1] == "snapshot")
}

impl FlushedDocs {
    /// The hashes of `heads` that do not load from `store`'s flushed data for `doc`.
    ///
    /// # Panics
    /// When the flushed chunks do not load: the disk is damaged, which no test expects.
    pub(crate) fn missing(
        &mut self,
        store: &SimStore,
        doc: &DocumentId,
        heads: &[ChangeHash],
    ) -> Vec<ChangeHash> {
        let flushed = self.load(store, doc);
        if flushed.complete {
            // The hashes neither applied nor queued: with nothing queued, exactly the heads
            // the document lacks (a lookup per head, where `get_change_by_hash` rebuilds
            // the change).
            flushed.doc.get_missing_deps(heads)
        } else {
            heads
                .iter()
                .filter(|h| flushed.doc.get_change_by_hash(h).is_none())
                .copied()
                .collect()
        }
    }

    /// The heads of `doc` as loaded from `store`'s flushed data.
    pub(crate) fn heads(&mut self, store: &SimStore, doc: &DocumentId) -> Vec<ChangeHash> {
        self.load(store, doc).doc.get_heads()
    }

    /// `doc` as `store`'s flushed data holds it, loading what changed since last time.
    fn load(&mut self, store: &SimStore, doc: &DocumentId) -> &Flushed {
        let name = doc.to_string();
        let version = store.flushed_version(&name);
        let stale = self.docs.get(doc).is_none_or(|f| f.version != version);
        if stale {
            self.loads += 1;
            let prefix = [name];
            let keys: BTreeSet<StorageKey> = store
                .flushed_keys(&prefix)
                .into_iter()
                .filter(is_chunk)
                .collect();
            let flushed = self.docs.entry(*doc).or_insert_with(|| Flushed {
                version,
                keys: BTreeSet::new(),
                doc: Automerge::new(),
                complete: true,
            });
            // Chunks are named by their content, so a key still there holds what we loaded;
            // only a removal forces a full reload.
            if !flushed.keys.is_subset(&keys) {
                flushed.keys.clear();
                flushed.doc = Automerge::new();
            }
            for key in keys.difference(&flushed.keys) {
                let bytes = store.flushed_value(key).expect("listed above");
                flushed.doc.load_incremental(&bytes).unwrap_or_else(|e| {
                    panic!("the relay's flushed chunks of {doc} do not load: {e}")
                });
            }
            flushed.keys = keys;
            flushed.version = version;
            flushed.complete = flushed.doc.get_missing_deps(&[]).is_empty();
        }
        &self.docs[doc]
    }
}
