//! Storage: the key-value interface the engine writes through, as data.
//!
//! Keys are lists of strings with the automerge-repo layout
//! (`[docId, "incremental", hash]`, `[docId, "snapshot", hash]`, `["storage-adapter-id"]`),
//! so a store can be migrated from and to the Node sync server's layout.
//! The engine emits [`StorageOp`]s; the host runs them against a [`Storage`] and feeds the
//! `Result` back. Writes are reported done only once they are flushed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use thiserror::Error;

use crate::ids::StorageId;

#[cfg(feature = "sled")]
mod backup;
#[cfg(feature = "sled")]
mod data_dir;
#[cfg(feature = "sled")]
mod durable_record;
#[cfg(feature = "sled")]
mod sled_store;
#[cfg(feature = "sled")]
pub use backup::{
    restore_backup, verify_backup, BackupHeader, BackupReport, RestoreReport, BACKUP_MAGIC,
    BACKUP_VERSION,
};
#[cfg(feature = "sled")]
pub use data_dir::{
    check_data_dir, open_data_dir, store_dir, DataDirReport, CURRENT_FILE, STORE_FORMAT,
};
#[cfg(feature = "sled")]
pub use durable_record::RECORD_FILE;
#[cfg(feature = "sled")]
pub use sled_store::{RewriteReport, SledConfig, SledDurability, SledStore, VerifyReport};

/// A storage key: a list of path parts.
pub type StorageKey = Vec<String>;

/// A lock held across every process sharing a store ([`Storage::lock_shared`]); dropping
/// it releases the lock.
pub type SharedLock = Box<dyn std::any::Any + Send>;

/// A random UUID v4 from OS randomness (store ids, host seeds; never inside the engine).
pub fn random_uuid() -> uuid::Uuid {
    uuid::Uuid::new_v4()
}

/// The key under which a store keeps its own id.
pub fn storage_id_key() -> StorageKey {
    vec!["storage-adapter-id".to_owned()]
}

/// One storage task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageOp {
    /// Read one key.
    Load {
        /// The key.
        key: StorageKey,
    },
    /// Read every key that starts with `prefix`, in key order.
    LoadRange {
        /// The prefix.
        prefix: StorageKey,
    },
    /// Write (and make durable before reporting success).
    Put {
        /// The key.
        key: StorageKey,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Remove (durably).
    Delete {
        /// The key.
        key: StorageKey,
    },
    /// Remove every key that starts with `prefix` (durably): forgetting a document.
    DeleteRange {
        /// The prefix.
        prefix: StorageKey,
    },
    /// Read every key under `prefix` except those in `known`, in key order, and say which
    /// of `known` are gone: what other writers of a shared store added to (and compacted
    /// out of) a document this engine already holds. Answered with
    /// [`StorageOutcome::Update`].
    LoadRangeExcept {
        /// The prefix.
        prefix: StorageKey,
        /// Keys the caller already has (their values are not read).
        known: Vec<StorageKey>,
    },
}

impl StorageOp {
    /// Whether this op changes the store (and so needs a flush before it is reported).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            StorageOp::Put { .. } | StorageOp::Delete { .. } | StorageOp::DeleteRange { .. }
        )
    }
}

/// What [`Storage::load_range_except`] found under a prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeUpdate {
    /// The keys the caller did not know, with their values, in key order.
    pub added: Vec<(StorageKey, Vec<u8>)>,
    /// The keys the caller knew that are no longer there (another writer deleted them),
    /// in key order.
    pub gone: Vec<StorageKey>,
}

/// A successful storage result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageOutcome {
    /// Answer to `Load`.
    Loaded(Option<Vec<u8>>),
    /// Answer to `LoadRange`.
    Range(Vec<(StorageKey, Vec<u8>)>),
    /// Answer to `LoadRangeExcept`.
    Update(RangeUpdate),
    /// A `Put` or `Delete` is durable.
    Written,
}

/// Why a storage task failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The operating system refused (most often a full disk or a read-only filesystem:
    /// see [`StoreError::is_disk_full`]).
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The store found its own files damaged; restore from backup.
    #[error("storage is corrupt: {detail}")]
    Corrupt {
        /// Where, without content.
        detail: String,
    },
    /// The store was closed or its worker stopped (the host is shutting down).
    #[error("storage is closed")]
    Closed,
    /// The data directory was written by a newer Cairn: its format is newer than this
    /// build reads.
    #[error(
        "the data directory has store format {found}, this relay reads formats up to \
         {supported}: run a relay at least as new as the one that wrote it (format {found})"
    )]
    TooNew {
        /// The format the directory's `CURRENT` file names.
        found: u32,
        /// The newest format this build reads.
        supported: u32,
    },
    /// A backup file is damaged, cut short or not a Cairn backup; nothing was written.
    #[error("the backup file is unusable: {detail}")]
    BadBackup {
        /// What is wrong, without content.
        detail: String,
    },
}

impl StoreError {
    /// A fixed label for metrics: `disk_full`, `io`, `corrupt`, `closed`, `too_new` or
    /// `bad_backup`.
    pub fn label(&self) -> &'static str {
        match self {
            e if e.is_disk_full() => "disk_full",
            StoreError::Io(_) => "io",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Closed => "closed",
            StoreError::TooNew { .. } => "too_new",
            StoreError::BadBackup { .. } => "bad_backup",
        }
    }

    /// True when the failure is "no space left on device".
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io(e) => {
                e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
            }
            _ => false,
        }
    }

    /// True when another open store (most often another process) holds the directory's
    /// lock. The sled store reports it with this message; its kind is only `Other`.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Io(e) if e.to_string().contains("could not acquire lock"))
    }
}

/// The keys of `known` under `prefix` that are not in `present`, in key order (for
/// [`Storage::load_range_except`]).
pub fn gone_keys(
    prefix: &[String],
    known: &[StorageKey],
    present: &std::collections::BTreeSet<&StorageKey>,
) -> Vec<StorageKey> {
    let gone: std::collections::BTreeSet<&StorageKey> = known
        .iter()
        .filter(|k| k.starts_with(prefix) && !present.contains(k))
        .collect();
    gone.into_iter().cloned().collect()
}

/// A key-value store with explicit durability.
///
/// `put` and `delete` may buffer; `flush` makes everything before it durable. A host that
/// batches runs several writes and then one `flush` before reporting any of them done, so
/// concurrent writers share one fsync.
pub trait Storage: Send + Sync {
    /// Reads one key.
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Reads every key under `prefix`, in key order.
    fn load_range(&self, prefix: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError>;
    /// Writes a key (not yet durable).
    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError>;
    /// Removes a key (not yet durable).
    fn delete(&self, key: &[String]) -> Result<(), StoreError>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Writes (`Some`) or deletes (`None`) every key and flushes, as one step: durable when
    /// it returns, and no concurrent flush can take the writes and fail them unseen. For
    /// writers outside the engine's storage thread (the relay's membership records).
    fn write_batch(&self, writes: &[(StorageKey, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        for (key, value) in writes {
            match value {
                Some(v) => self.put(key, v)?,
                None => self.delete(key)?,
            }
        }
        self.flush()
    }

    /// Every key under `prefix`, in key order. The default reads the values too; a store
    /// that can list keys alone should.
    fn list_keys(&self, prefix: &[String]) -> Result<Vec<StorageKey>, StoreError> {
        Ok(self
            .load_range(prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Removes every key under `prefix` (not yet durable). The default reads the range
    /// and deletes each key: a document has a few dozen keys at most after compaction.
    fn delete_range(&self, prefix: &[String]) -> Result<(), StoreError> {
        for (key, _) in self.load_range(prefix)? {
            self.delete(&key)?;
        }
        Ok(())
    }

    /// Runs one op without flushing.
    fn apply(&self, op: &StorageOp) -> Result<StorageOutcome, StoreError> {
        Ok(match op {
            StorageOp::Load { key } => StorageOutcome::Loaded(self.load(key)?),
            StorageOp::LoadRange { prefix } => StorageOutcome::Range(self.load_range(prefix)?),
            StorageOp::LoadRangeExcept { prefix, known } => {
                StorageOutcome::Update(self.load_range_except(prefix, known)?)
            }
            StorageOp::Put { key, data } => {
                self.put(key, data)?;
                StorageOutcome::Written
            }
            StorageOp::Delete { key } => {
                self.delete(key)?;
                StorageOutcome::Written
            }
            StorageOp::DeleteRange { prefix } => {
                self.delete_range(prefix)?;
                StorageOutcome::Written
            }
        })
    }

    /// Runs one op and, if it writes, flushes: the simple host's way.
    fn execute(&self, op: StorageOp) -> Result<StorageOutcome, StoreError> {
        let out = self.apply(&op)?;
        if op.is_write() {
            self.flush()?;
        }
        Ok(out)
    }

    /// Every key under `prefix` except those in `known`, with its value, and the keys of
    /// `known` under `prefix` that are no longer stored. The default reads the whole range
    /// and drops the known values; a store on a network should not send them.
    fn load_range_except(
        &self,
        prefix: &[String],
        known: &[StorageKey],
    ) -> Result<RangeUpdate, StoreError> {
        let all = self.load_range(prefix)?;
        let present: std::collections::BTreeSet<&StorageKey> = all.iter().map(|(k, _)| k).collect();
        let gone = gone_keys(prefix, known, &present);
        let known: std::collections::BTreeSet<&StorageKey> = known.iter().collect();
        let added = all
            .into_iter()
            .filter(|(k, _)| !known.contains(k))
            .collect();
        Ok(RangeUpdate { added, gone })
    }

    /// True when other processes (other relays of a cluster) write this store too, so
    /// what a process holds in memory may be behind it. The default: false.
    fn is_shared(&self) -> bool {
        false
    }

    /// Takes the lock named `name` across every process sharing this store, waiting for
    /// it; dropping the returned guard releases it. `None` from a store that only one
    /// process writes (the default): the caller's own in-process locks are enough.
    fn lock_shared(&self, name: &str) -> Result<Option<SharedLock>, StoreError> {
        let _ = name;
        Ok(None)
    }

    /// This store's id, made on first use and kept.
    fn storage_id(&self) -> Result<StorageId, StoreError> {
        if let Some(bytes) = self.load(&storage_id_key())? {
            if let Ok(s) = String::from_utf8(bytes) {
                return Ok(StorageId::from(s));
            }
        }
        let id = random_uuid().to_string();
        self.put(&storage_id_key(), id.as_bytes())?;
        self.flush()?;
        Ok(StorageId::from(id))
    }
}

/// An in-memory store (tests, ephemeral peers). Writes are "durable" at once.
#[derive(Default, Debug)]
pub struct MemoryStore {
    data: Mutex<BTreeMap<StorageKey, Vec<u8>>>,
}

impl MemoryStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<StorageKey, Vec<u8>>> {
        // A poisoned lock only means a panicking test thread; the map is still consistent.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Every key currently stored, in order.
    pub fn keys(&self) -> Vec<StorageKey> {
        self.map().keys().cloned().collect()
    }
}

impl Storage for MemoryStore {
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(key).cloned())
    }
    fn load_range(&self, prefix: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
        Ok(self
            .map()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
        self.map().insert(key.to_vec(), data.to_vec());
        Ok(())
    }
    fn delete(&self, key: &[String]) -> Result<(), StoreError> {
        self.map().remove(key);
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(parts: &[&str]) -> StorageKey {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn range_stops_at_the_prefix() {
        let s = MemoryStore::default();
        s.put(&k(&["a", "incremental", "1"]), b"x").unwrap();
        s.put(&k(&["a", "snapshot", "2"]), b"y").unwrap();
        s.put(&k(&["ab", "snapshot", "3"]), b"z").unwrap();
        s.put(&k(&["b"]), b"w").unwrap();
        let got = s.load_range(&k(&["a"])).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(key, _)| key[0] == "a"));
    }

    #[test]
    fn storage_id_is_kept() {
        let s = MemoryStore::default();
        let a = s.storage_id().unwrap();
        assert_eq!(s.storage_id().unwrap(), a);
        assert_eq!(a.as_str().len(), 36);
    }
}

#[cfg(all(test, feature = "sled"))]
mod format_tests;
