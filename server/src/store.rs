//! The relay's store: the embedded sled store (one relay) or one PostgreSQL database
//! shared by every relay of a cluster (`--store`). The engine, the membership and the
//! operator's tools see one [`Storage`]; what only one backend can do (a backup file, a
//! rewrite of the data directory) says so.

use std::collections::BTreeMap;

use cairn_sync::ids::StorageId;
use cairn_sync::store::{
    BackupReport, RangeUpdate, RewriteReport, SharedLock, SledStore, Storage, StorageKey,
    StoreError,
};

use crate::pg_store::PgStore;

/// The store a relay runs on.
#[derive(Clone, Debug)]
pub enum RelayStore {
    /// The embedded sled store in the data directory.
    Sled(SledStore),
    /// A PostgreSQL database shared with the other relays of a cluster.
    Postgres(PgStore),
}

impl RelayStore {
    fn inner(&self) -> &dyn Storage {
        match self {
            RelayStore::Sled(s) => s,
            RelayStore::Postgres(p) => p,
        }
    }

    /// The PostgreSQL store, if the relay runs on one.
    pub fn postgres(&self) -> Option<&PgStore> {
        match self {
            RelayStore::Postgres(p) => Some(p),
            RelayStore::Sled(_) => None,
        }
    }

    /// Stored bytes per document id (and per record family: keys that are not document
    /// ids are the store's own).
    pub fn document_sizes(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        match self {
            RelayStore::Sled(s) => s.document_sizes(),
            RelayStore::Postgres(p) => Ok(p.document_sizes()?.into_iter().collect()),
        }
    }

    /// Bytes the store takes on this machine's disk (`None` for PostgreSQL: its disk is
    /// the database server's).
    pub fn size_on_disk(&self) -> Option<u64> {
        match self {
            RelayStore::Sled(s) => s.size_on_disk().ok(),
            RelayStore::Postgres(_) => None,
        }
    }

    /// Writes a backup file of the whole store. Only the embedded store: a PostgreSQL
    /// cluster is backed up with PostgreSQL's own tools (a base backup plus WAL
    /// archiving), which also cover every relay at once.
    pub fn backup_to(
        &self,
        out: impl std::io::Write,
        taken_ms: u64,
    ) -> Result<BackupReport, StoreError> {
        match self {
            RelayStore::Sled(s) => s.backup_to(out, taken_ms),
            RelayStore::Postgres(_) => Err(unsupported(
                "a PostgreSQL store is backed up with PostgreSQL's own tools \
                 (pg_basebackup and WAL archiving), not by the relay",
            )),
        }
    }

    /// Copies the live data into fresh files so that deleted bytes are gone from the data
    /// directory (embedded store). On PostgreSQL the deleted rows are gone from every
    /// query at once; their bytes leave the database files at PostgreSQL's next vacuum of
    /// the table, and the WAL and base backups keep them until those are recycled.
    pub fn rewrite(&self) -> Result<RewriteReport, StoreError> {
        match self {
            RelayStore::Sled(s) => s.rewrite(),
            RelayStore::Postgres(_) => Ok(RewriteReport::default()),
        }
    }
}

fn unsupported(what: &str) -> StoreError {
    StoreError::Io(std::io::Error::new(std::io::ErrorKind::Unsupported, what))
}

impl Storage for RelayStore {
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner().load(key)
    }
    fn load_range(&self, prefix: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
        self.inner().load_range(prefix)
    }
    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
        self.inner().put(key, data)
    }
    fn delete(&self, key: &[String]) -> Result<(), StoreError> {
        self.inner().delete(key)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner().flush()
    }
    fn write_batch(&self, writes: &[(StorageKey, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        self.inner().write_batch(writes)
    }
    fn list_keys(&self, prefix: &[String]) -> Result<Vec<StorageKey>, StoreError> {
        self.inner().list_keys(prefix)
    }
    fn delete_range(&self, prefix: &[String]) -> Result<(), StoreError> {
        self.inner().delete_range(prefix)
    }
    fn load_range_except(
        &self,
        prefix: &[String],
        known: &[StorageKey],
    ) -> Result<RangeUpdate, StoreError> {
        self.inner().load_range_except(prefix, known)
    }
    fn is_shared(&self) -> bool {
        self.inner().is_shared()
    }
    fn lock_shared(&self, name: &str) -> Result<Option<SharedLock>, StoreError> {
        self.inner().lock_shared(name)
    }
    fn storage_id(&self) -> Result<StorageId, StoreError> {
        self.inner().storage_id()
    }
}
