//! Where the membership state is kept: committed durably before any call that changed it
//! returns, the same rule as documents.

use std::sync::Arc;

use super::{MembershipState, Record};
use crate::ids::DocumentId;
use crate::store::{Storage, StorageKey, StoreError};

/// The first key part of every membership record in a [`Storage`]: `cairn-membership`.
/// No document id can collide with it (`-` is not in the base58 alphabet).
pub const KEY_PREFIX: &str = "cairn-membership";

/// Durable membership state. Implementations: [`KvMembershipStore`] (beside the documents in
/// the relay's store); a database-backed one for several relays later.
pub trait MembershipStore: Send + Sync {
    /// Every record, to rebuild the in-memory state at start-up.
    fn load(&self) -> Result<MembershipState, StoreError>;
    /// Writes `records` (each replacing the one with its key) and makes them durable
    /// before returning. Either all are durable or the call fails.
    fn commit(&self, records: &[Record]) -> Result<(), StoreError>;
    /// Whether the document store already holds anything for `doc` (an id that is held
    /// cannot be bound to a group: it may hold someone else's content).
    fn holds_document(&self, doc: &DocumentId) -> Result<bool, StoreError>;
}

/// Membership records in any [`Storage`], as JSON under `["cairn-membership", table, id]`.
pub struct KvMembershipStore {
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for KvMembershipStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvMembershipStore")
    }
}

impl KvMembershipStore {
    /// Keeps membership in `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        KvMembershipStore { storage }
    }

    fn key(record: &Record) -> StorageKey {
        let (table, id) = record.table_and_id();
        vec![KEY_PREFIX.to_owned(), table.to_owned(), id]
    }
}

impl MembershipStore for KvMembershipStore {
    fn load(&self) -> Result<MembershipState, StoreError> {
        let mut state = MembershipState::default();
        for (key, value) in self.storage.load_range(&[KEY_PREFIX.to_owned()])? {
            let record: Record =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    detail: format!(
                        "membership record {} does not read back: {e}",
                        key.get(1).map_or("?", String::as_str)
                    ),
                })?;
            if Self::key(&record) != key {
                return Err(StoreError::Corrupt {
                    detail: "a membership record is stored under another record's key".into(),
                });
            }
            state.apply(record);
        }
        Ok(state)
    }

    fn commit(&self, records: &[Record]) -> Result<(), StoreError> {
        let writes: Vec<(StorageKey, Option<Vec<u8>>)> = records
            .iter()
            .map(|r| {
                let bytes = serde_json::to_vec(r).expect("records serialise");
                (Self::key(r), Some(bytes))
            })
            .collect();
        self.storage.write_batch(&writes)
    }

    fn holds_document(&self, doc: &DocumentId) -> Result<bool, StoreError> {
        Ok(!self.storage.load_range(&[doc.to_string()])?.is_empty())
    }
}
