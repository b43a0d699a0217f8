//! A simulated key-value store with an explicit page cache, so a test can pull the plug.
//!
//! Writes land in `unflushed` (the OS page cache); [`Storage::flush`] moves them to `flushed`
//! (the disk). [`SimStore::crash`] throws the cache away, as a power cut would. Reads see the
//! cache over the disk, like a real file system.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use cairn_core::ids::StorageId;
use cairn_core::store::{storage_id_key, Storage, StorageKey, StoreError};
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
}

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
                match value {
                    Some(v) => maps.flushed.insert(key, v),
                    None => maps.flushed.remove(&key),
                };
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
        for (key, value) in std::mem::take(&mut maps.unflushed) {
            match value {
                Some(v) => maps.flushed.insert(key, v),
                None => maps.flushed.remove(&key),
            };
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
    fn flushed_writes_survive() {
        let s = SimStore::default();
        s.put(&k(&["d", "snapshot", "a"]), b"x").unwrap();
        s.flush().unwrap();
        assert_eq!(s.crash(&mut ChaCha8Rng::seed_from_u64(0), 0.0), 0);
        assert_eq!(s.flushed_range(&k(&["d"])).len(), 1);
        assert_eq!(s.unflushed_len(), 0);
    }
}
