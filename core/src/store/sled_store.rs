//! The sled-backed store used by the relay and on the phone.

use std::path::Path;

use super::{Storage, StorageKey, StoreError};

/// Tuning for [`SledStore`].
#[derive(Clone, Debug)]
pub struct SledConfig {
    /// sled's page cache in bytes. Default 64 MiB: sled's own default (1 GiB) would dwarf a
    /// phone's budget and a small relay's; documents are cached by the engine anyway.
    pub cache_capacity: u64,
}

impl Default for SledConfig {
    fn default() -> Self {
        SledConfig {
            cache_capacity: 64 * 1024 * 1024,
        }
    }
}

/// A [`Storage`] on an embedded sled database. Key parts are joined with a NUL byte, which
/// cannot appear in document ids or the fixed key words.
#[derive(Clone, Debug)]
pub struct SledStore {
    db: sled::Db,
}

fn encode_key(parts: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(p.as_bytes());
    }
    out
}

fn decode_key(bytes: &[u8]) -> Result<StorageKey, StoreError> {
    bytes
        .split(|b| *b == 0)
        .map(|p| {
            String::from_utf8(p.to_vec()).map_err(|_| StoreError::Corrupt {
                detail: "a key is not UTF-8".to_owned(),
            })
        })
        .collect()
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StoreError::Io(io),
            sled::Error::CollectionNotFound(_) => StoreError::Closed,
            other => StoreError::Corrupt {
                detail: other.to_string(),
            },
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, config: &SledConfig) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_capacity)
            // We flush explicitly (batched); sled's timer flush would only add fsyncs.
            .flush_every_ms(None)
            .open()?;
        Ok(SledStore { db })
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

impl Storage for SledStore {
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(encode_key(key))?.map(|v| v.to_vec()))
    }

    fn load_range(&self, prefix: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
        let mut p = encode_key(prefix);
        if !prefix.is_empty() {
            p.push(0);
        }
        let mut out = Vec::new();
        for item in self.db.scan_prefix(&p) {
            let (k, v) = item?;
            out.push((decode_key(&k)?, v.to_vec()));
        }
        // An exact match of the prefix itself (e.g. a one-part key) belongs to the range too.
        if let Some(v) = self.db.get(encode_key(prefix))? {
            if !prefix.is_empty() {
                out.insert(0, (prefix.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }

    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
        self.db.insert(encode_key(key), data)?;
        Ok(())
    }

    fn delete(&self, key: &[String]) -> Result<(), StoreError> {
        self.db.remove(encode_key(key))?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
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
    fn survives_reopen_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let s = SledStore::open(dir.path(), &SledConfig::default()).unwrap();
            id = s.storage_id().unwrap();
            s.put(&k(&["doc", "incremental", "h1"]), b"one").unwrap();
            s.put(&k(&["doc", "snapshot", "h2"]), b"two").unwrap();
            s.put(&k(&["docx", "snapshot", "h3"]), b"other").unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path(), &SledConfig::default()).unwrap();
        assert_eq!(s.storage_id().unwrap(), id);
        let got = s.load_range(&k(&["doc"])).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, k(&["doc", "incremental", "h1"]));
        s.delete(&k(&["doc", "incremental", "h1"])).unwrap();
        assert_eq!(s.load_range(&k(&["doc"])).unwrap().len(), 1);
    }
}
