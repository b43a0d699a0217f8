//! Where the membership state is kept: committed durably before any call that changed it
//! returns, the same rule as documents.

use std::sync::Arc;

use super::{AuditEntry, Commit, MembershipState, Record, RecordKey};
use crate::ids::DocumentId;
use crate::store::{SharedLock, Storage, StorageKey, StoreError};

/// The first key part of every membership record in a [`Storage`]: `cairn-membership`.
/// No document id can collide with it (`-` is not in the base58 alphabet).
pub const KEY_PREFIX: &str = "cairn-membership";

/// The first key part of every audit entry: `cairn-audit` (then the entry's `seq`, 20
/// digits, so key order is log order).
pub const AUDIT_PREFIX: &str = "cairn-audit";

/// Durable membership state. Implementations: [`KvMembershipStore`] (beside the documents in
/// the relay's store); a database-backed one for several relays later.
pub trait MembershipStore: Send + Sync {
    /// Every record, to rebuild the in-memory state at start-up, and the next audit `seq`.
    fn load(&self) -> Result<MembershipState, StoreError>;
    /// Writes the commit's records (each replacing the one with its key), deletes its
    /// deletions and appends its audit entries, and makes all of it durable before
    /// returning. Either all are durable or the call fails.
    fn commit(&self, commit: &Commit) -> Result<(), StoreError>;
    /// Audit entries with `seq > since_seq`, oldest first, at most `limit`.
    fn audit_since(&self, since_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Deletes (durably) the audit entries made before `before_ms`, except the newest
    /// entry of all: it keeps the sequence going after a restart. Returns how many.
    fn expire_audit(&self, before_ms: u64) -> Result<usize, StoreError>;
    /// Whether the document store already holds anything for `doc` (an id that is held
    /// cannot be bound to a group: it may hold someone else's content).
    fn holds_document(&self, doc: &DocumentId) -> Result<bool, StoreError>;
    /// True when other processes (the other relays of a cluster) change this store too, so
    /// the in-memory state may be behind it ([`Storage::is_shared`]). The default: false.
    fn is_shared(&self) -> bool {
        false
    }
    /// Takes the cluster-wide lock named `name`, waiting for it; dropping the guard releases
    /// it ([`Storage::lock_shared`]). The default, for a store one process writes: `None`.
    fn lock_shared(&self, name: &str) -> Result<Option<SharedLock>, StoreError> {
        let _ = name;
        Ok(None)
    }
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

    fn key(record: &RecordKey) -> StorageKey {
        let (table, id) = record.table_and_id();
        vec![KEY_PREFIX.to_owned(), table.to_owned(), id]
    }

    fn audit_key(seq: u64) -> StorageKey {
        vec![AUDIT_PREFIX.to_owned(), format!("{seq:020}")]
    }

    fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.storage
            .load_range(&[AUDIT_PREFIX.to_owned()])?
            .into_iter()
            .map(|(key, value)| {
                let entry: AuditEntry =
                    serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                        detail: format!("audit entry does not read back: {e}"),
                    })?;
                if Self::audit_key(entry.seq) != key {
                    return Err(StoreError::Corrupt {
                        detail: "an audit entry is stored under another entry's key".into(),
                    });
                }
                Ok(entry)
            })
            .collect()
    }

    fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
            detail: format!("a membership record does not serialise: {e}"),
        })
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
            if Self::key(&record.key()) != key {
                return Err(StoreError::Corrupt {
                    detail: "a membership record is stored under another record's key".into(),
                });
            }
            state.apply(record);
        }
        let last = self.storage.list_keys(&[AUDIT_PREFIX.to_owned()])?;
        if let Some(key) = last.last() {
            let last_seq = key
                .get(1)
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    detail: "an audit key is not a sequence number".into(),
                })?;
            state.next_audit_seq = last_seq + 1;
        }
        Ok(state)
    }

    fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        let mut writes: Vec<(StorageKey, Option<Vec<u8>>)> =
            Vec::with_capacity(commit.records.len() + commit.deletions.len() + commit.audit.len());
        for r in &commit.records {
            writes.push((Self::key(&r.key()), Some(Self::encode(r)?)));
        }
        for k in &commit.deletions {
            writes.push((Self::key(k), None));
        }
        for e in &commit.audit {
            writes.push((Self::audit_key(e.seq), Some(Self::encode(e)?)));
        }
        self.storage.write_batch(&writes)
    }

    fn audit_since(&self, since_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self
            .audit_entries()?
            .into_iter()
            .filter(|e| e.seq > since_seq)
            .take(limit)
            .collect())
    }

    fn expire_audit(&self, before_ms: u64) -> Result<usize, StoreError> {
        let keys = self.storage.list_keys(&[AUDIT_PREFIX.to_owned()])?;
        let Some(newest) = keys.last().cloned() else {
            return Ok(0);
        };
        let writes: Vec<(StorageKey, Option<Vec<u8>>)> = self
            .audit_entries()?
            .into_iter()
            .filter(|e| e.at_ms < before_ms)
            .map(|e| Self::audit_key(e.seq))
            .filter(|k| *k != newest)
            .map(|k| (k, None))
            .collect();
        if writes.is_empty() {
            return Ok(0);
        }
        self.storage.write_batch(&writes)?;
        Ok(writes.len())
    }

    fn holds_document(&self, doc: &DocumentId) -> Result<bool, StoreError> {
        Ok(!self.storage.load_range(&[doc.to_string()])?.is_empty())
    }

    fn is_shared(&self) -> bool {
        self.storage.is_shared()
    }

    fn lock_shared(&self, name: &str) -> Result<Option<SharedLock>, StoreError> {
        self.storage.lock_shared(name)
    }
}
