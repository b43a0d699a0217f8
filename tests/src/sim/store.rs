//! A simulated key-value store with an explicit page cache, so a test can pull the plug.
//!
//! Writes land in `unflushed` (the OS page cache, or sled's memory); [`Storage::flush`] moves
//! them to `flushed` (the disk). [`SimStore::crash`] throws the cache away, as a power cut
//! would. Reads see the cache over the disk, like a real file system.
//!
//! A full disk ([`SimStore::set_full`]) fails every flush and leaves the writes where they
//! were: still unflushed and still readable, as sled keeps a write it could not flush in
//! memory. What a host may read after such a failure is the host's rule (see
//! [`super::host`]), not the store's.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use cairn_sync::ids::StorageId;
use cairn_sync::store::{storage_id_key, Storage, StorageKey, StoreError};
use rand::Rng;

/// When the simulator reports a write to the engine as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A correct host: flush, then report. This is what the engine's contract requires.
    FlushThenAck,
    /// A broken host, for negative controls: report at once and flush some time later.
    /// A crash in between loses writes the engine believes are durable.
    AckBeforeFlush,
}

#[derive(Default, Debug)]
struct Maps {
    flushed: BTreeMap<StorageKey, Vec<u8>>,
    /// `None` is a delete not yet on disk.
    unflushed: BTreeMap<StorageKey, Option<Vec<u8>>>,
    /// Bumped, per first key part (a document id), whenever `flushed` changes under it: lets
    /// a checker cache what it loaded from the disk.
    versions: BTreeMap<String, u64>,
    /// The disk is full: every flush fails.
    full: bool,
}

impl Maps {
    /// Puts one write on the disk.
    fn settle(&mut self, key: StorageKey, value: Option<Vec<u8>>) {
        if let Some(first) = key.first() {
            *self.versions.entry(first.clone()).or_default() += 1;
        }
        match value {
            Some(v) => self.flushed.insert(key, v),
            None => self.flushed.remove(&key),
        };
    }
}

/// The `errno` of a full disk (`ENOSPC` on Linux), as the real store would report it.
const ENOSPC: i32 = 28;

/// An in-memory store with separate flushed and unflushed state.
#[derive(Default, Debug)]
pub struct SimStore {
    maps: Mutex<Maps>,
}

fn in_range<'a>(
    map: &'a BTreeMap<StorageKey, impl Sized>,
    prefix: &'a [String],
) -> impl Iterator<Item = &'a StorageKey> + 'a {
    map.range(prefix.to_vec()..)
        .map(|(k, _)| k)
        .take_while(move |k| k.starts_with(prefix))
}

impl SimStore {
    /// A store that already holds `id` under `["storage-adapter-id"]`, flushed.
    pub fn with_storage_id(id: &StorageId) -> Self {
        let store = SimStore::default();
        store
            .lock()
            .flushed
            .insert(storage_id_key(), id.as_str().as_bytes().to_vec());
        store
    }

    fn lock(&self) -> MutexGuard<'_, Maps> {
        // The simulator is single-threaded; a poisoned lock only follows a panic we report anyway.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A power cut: every unflushed write is lost, except that each survives with
    /// probability `survival` (the OS may have written some pages back on its own).
    /// Returns how many unflushed writes were lost.
    pub fn crash(&self, rng: &mut impl Rng, survival: f64) -> usize {
        let mut maps = self.lock();
        let pending = std::mem::take(&mut maps.unflushed);
        let mut lost = 0;
        for (key, value) in pending {
            if rng.gen_bool(survival) {
                maps.settle(key, value);
            } else {
                lost += 1;
            }
        }
        lost
    }

    /// What is on disk under `prefix` (what would survive a crash), in key order.
    pub fn flushed_range(&self, prefix: &[String]) -> Vec<(StorageKey, Vec<u8>)> {
        let maps = self.lock();
        in_range(&maps.flushed, prefix)
            .map(|k| (k.clone(), maps.flushed[k].clone()))
            .collect()
    }

    /// Writes not yet flushed.
    pub fn unflushed_len(&self) -> usize {
        self.lock().unflushed.len()
    }

    /// The keys on disk under `prefix`, in key order.
    pub fn flushed_keys(&self, prefix: &[String]) -> Vec<StorageKey> {
        in_range(&self.lock().flushed, prefix).cloned().collect()
    }

    /// The value on disk under `key`.
    pub fn flushed_value(&self, key: &[String]) -> Option<Vec<u8>> {
        self.lock().flushed.get(key).cloned()
    }

    /// A number that changes whenever what is on disk under keys starting with `first`
    /// changes (and only then).
    pub fn flushed_version(&self, first: &str) -> u64 {
        self.lock().versions.get(first).copied().unwrap_or(0)
    }

    /// Fills the disk (every flush fails with `ENOSPC` and changes nothing) or frees it.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// Whether the disk is full.
    pub fn is_full(&self) -> bool {
        self.lock().full
    }
}

impl Storage for SimStore {
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
        let maps = self.lock();
        Ok(match maps.unflushed.get(key) {
            Some(v) => v.clone(),
            None => maps.flushed.get(key).cloned(),
        })
    }

    fn load_range(&self, prefix: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
        let maps = self.lock();
        let mut view: BTreeMap<StorageKey, Vec<u8>> = in_range(&maps.flushed, prefix)
            .map(|k| (k.clone(), maps.flushed[k].clone()))
            .collect();
        for k in in_range(&maps.unflushed, prefix) {
            match &maps.unflushed[k] {
                Some(v) => view.insert(k.clone(), v.clone()),
                None => view.remove(k),
            };
        }
        Ok(view.into_iter().collect())
    }

    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
        self.lock()
            .unflushed
            .insert(key.to_vec(), Some(data.to_vec()));
        Ok(())
    }

    fn delete(&self, key: &[String]) -> Result<(), StoreError> {
        self.lock().unflushed.insert(key.to_vec(), None);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut maps = self.lock();
        if maps.full && !maps.unflushed.is_empty() {
            return Err(StoreError::Io(std::io::Error::from_raw_os_error(ENOSPC)));
        }
        for (key, value) in std::mem::take(&mut maps.unflushed) {
            maps.settle(key, value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn k(parts: &[&str]) -> StorageKey {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_crash_loses_exactly_the_unflushed_writes() {
        let s = SimStore::default();
        s.put(&k(&["d", "incremental", "1"]), b"one").unwrap();
        s.flush().unwrap();
        s.put(&k(&["d", "incremental", "2"]), b"two").unwrap();
        s.delete(&k(&["d", "incremental", "1"])).unwrap();
        assert_eq!(
            s.load_range(&k(&["d"])).unwrap().len(),
            1,
            "reads see the cache"
        );
        let lost = s.crash(&mut ChaCha8Rng::seed_from_u64(0), 0.0);
        assert_eq!(lost, 2);
        assert_eq!(
            s.load_range(&k(&["d"])).unwrap(),
            vec![(k(&["d", "incremental", "1"]), b"one".to_vec())]
        );
    }

    #[test]
    fn a_full_disk_fails_the_flush_and_keeps_the_write_readable() {
        let s = SimStore::default();
        s.set_full(true);
        s.put(&k(&["d", "incremental", "1"]), b"one").unwrap();
        let error = s.flush().expect_err("a full disk fails the flush");
        assert!(error.is_disk_full(), "{error}");
        assert_eq!(
            s.load(&k(&["d", "incremental", "1"])).unwrap(),
            Some(b"one".to_vec()),
            "the write stays readable, as in sled's memory"
        );
        assert!(
            s.flushed_range(&k(&["d"])).is_empty(),
            "nothing reached the disk"
        );
        s.set_full(false);
        let before = s.flushed_version("d");
        s.flush().unwrap();
        assert_eq!(s.flushed_range(&k(&["d"])).len(), 1);
        assert_ne!(s.flushed_version("d"), before, "the disk under d changed");
    }

    #[test]
    fn flushed_writes_survive() {
        let s = SimStore::default();
        s.put(&k(&["d", "snapshot", "a"]), b"x").unwrap();
        s.flush().unwrap();
        assert_eq!(s.crash(&mut ChaCha8Rng::seed_from_u64(0), 0.0), 0);
        assert_eq!(s.flushed_range(&k(&["d"])).len(), 1);
        assert_eq!(s.unflushed_len(), 0);
    }
}
