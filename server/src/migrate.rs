//! `cairn-relay migrate`: copies a stopped relay's embedded store into an empty PostgreSQL
//! database, byte for byte, and reads every key back.
//!
//! The storage id goes along: the content is the same, so clients that synced with the
//! old relay keep what they know about it and resend nothing.

use std::path::Path;
use std::time::Duration;

use cairn_sync::ids::{DocumentId, StorageId};
use cairn_sync::store::{SledConfig, Storage, StorageKey};

use crate::pg_store::{PgOptions, PgStore};
use crate::RelayError;

/// Bytes of values written in one PostgreSQL transaction.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// What a migration copied.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// Keys copied.
    pub keys: u64,
    /// Bytes of values copied.
    pub bytes: u64,
    /// Documents among them.
    pub documents: u64,
    /// The storage id, the same on both sides.
    pub storage_id: StorageId,
}

/// Copies the embedded store in `from` (the relay must be stopped: its lock is taken) into
/// the empty PostgreSQL database at `to`, one record family (a document, the membership,
/// the audit log) at a time, then reads each family back and compares it. Refuses a
/// database that holds anything already.
pub fn migrate(from: &Path, to: &str) -> Result<Migrated, RelayError> {
    if !from.join(cairn_sync::store::CURRENT_FILE).exists() {
        return Err(RelayError::Backup(format!(
            "{} is not a relay's data directory (no {} file)",
            from.display(),
            cairn_sync::store::CURRENT_FILE
        )));
    }
    let sled = crate::open_store(from, &SledConfig::default())?;
    let pg = PgStore::connect(
        to,
        "migrate",
        PgOptions {
            pool_size: 2,
            op_timeout: Duration::from_secs(60),
        },
    )?;
    if !pg.document_sizes()?.is_empty() {
        return Err(RelayError::Backup(
            "the PostgreSQL database already holds a store; migrate into an empty database".into(),
        ));
    }
    // Made before the copy if the store never had one, so both sides share it.
    let storage_id = sled.storage_id()?;
    let families: Vec<String> = sled.document_sizes()?.into_keys().collect();
    let mut out = Migrated {
        keys: 0,
        bytes: 0,
        documents: 0,
        storage_id,
    };
    for family in &families {
        let prefix = [family.clone()];
        let rows = sled.load_range(&prefix)?;
        let mut batch: Vec<(StorageKey, Option<Vec<u8>>)> = Vec::new();
        let mut batch_bytes = 0;
        for (key, value) in &rows {
            out.keys += 1;
            out.bytes += value.len() as u64;
            batch_bytes += value.len();
            batch.push((key.clone(), Some(value.clone())));
            if batch_bytes >= BATCH_BYTES {
                pg.write_batch(&std::mem::take(&mut batch))?;
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            pg.write_batch(&batch)?;
        }
        if pg.load_range(&prefix)? != rows {
            return Err(RelayError::Backup(format!(
                "reading back record family {} from PostgreSQL gave other keys or bytes than the embedded store holds",
                family_label(family)
            )));
        }
        if family.parse::<DocumentId>().is_ok() {
            out.documents += 1;
        }
    }
    tracing::info!(
        keys = out.keys,
        bytes = out.bytes,
        documents = out.documents,
        "migrated the embedded store to PostgreSQL"
    );
    Ok(out)
}

/// A record family for an error message: a document id or a fixed record name, never
/// content.
fn family_label(family: &str) -> &str {
    if family.len() <= 64 {
        family
    } else {
        "(a long key)"
    }
}
