//! The durable record: a small file beside the database that says what the database must
//! hold, so a database that lost writes it had made durable is refused at open.
//!
//! Before every flush the store writes the record of the state that flush makes durable:
//! its generation (a counter the database stores with the data), how many keys it holds
//! and a digest of all of them (see [`Contents`]); once the flush is done it writes the
//! same slot again marked committed. At open the database's generation must match one of
//! the two slots, with that slot's count and digest, and no committed slot may be newer
//! (that flush was acknowledged, and the database lost it). Two fixed-size slots are
//! written alternately (generation modulo 2), each checked by a CRC-32, so a write torn by
//! a power cut leaves the other one intact.
//!
//! A slot (128 bytes): magic `CAIRNDR2`, generation (u64 big-endian), key count (u64),
//! digest (16 bytes), committed (u8), storage id length (u8), storage id (up to 40 bytes,
//! zero-padded), CRC-32 (big-endian) of everything before it, then zeros.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::StoreError;

/// The record's file name in the store's directory.
pub const RECORD_FILE: &str = "cairn-durable";

const MAGIC: &[u8; 8] = b"CAIRNDR2";
const SLOT: usize = 128;
const MAX_ID: usize = 40;
const COMMITTED_AT: usize = 40;
const ID_LEN_AT: usize = 41;
const ID_AT: usize = 42;
const CRC_AT: usize = ID_AT + MAX_ID;

/// What a database holds: its key count and an order-independent digest of every entry
/// (the XOR of each entry's hash), kept up to date on every put and delete so it never
/// needs a scan except at open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Contents {
    pub(crate) keys: u64,
    pub(crate) digest: [u8; 16],
}

impl Contents {
    /// An entry's hash: SHA-256 of the key, the value's length and the value's CRC-32
    /// (the values are checked by sled's own CRCs; this catches a lost or stale entry).
    fn entry(key: &[u8], value: &[u8]) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update((key.len() as u64).to_be_bytes());
        h.update(key);
        h.update((value.len() as u64).to_be_bytes());
        h.update(crc32fast::hash(value).to_be_bytes());
        let full = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    fn toggle(&mut self, key: &[u8], value: &[u8]) {
        for (d, e) in self.digest.iter_mut().zip(Self::entry(key, value)) {
            *d ^= e;
        }
    }

    /// An entry was added.
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        self.keys += 1;
        self.toggle(key, value);
    }

    /// An entry was removed.
    pub(crate) fn remove(&mut self, key: &[u8], value: &[u8]) {
        self.keys = self.keys.saturating_sub(1);
        self.toggle(key, value);
    }
}

/// One slot's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// The generation this slot describes.
    pub(crate) generation: u64,
    /// What the database holds at that generation.
    pub(crate) contents: Contents,
    /// The store's id (empty before the store had one).
    pub(crate) storage_id: String,
    /// Whether the flush this slot describes completed (written again after it did). A
    /// slot written ahead of a flush that a crash interrupted is not committed: the
    /// database may be one generation behind it.
    pub(crate) committed: bool,
}

pub(crate) fn encode(slot: &Slot) -> [u8; SLOT] {
    let id = &slot.storage_id.as_bytes()[..slot.storage_id.len().min(MAX_ID)];
    let mut out = [0u8; SLOT];
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&slot.generation.to_be_bytes());
    out[16..24].copy_from_slice(&slot.contents.keys.to_be_bytes());
    out[24..40].copy_from_slice(&slot.contents.digest);
    out[COMMITTED_AT] = u8::from(slot.committed);
    out[ID_LEN_AT] = id.len() as u8;
    out[ID_AT..ID_AT + id.len()].copy_from_slice(id);
    let crc = crc32fast::hash(&out[..CRC_AT]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<Slot> {
    if bytes.len() < SLOT || &bytes[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_be_bytes(bytes[CRC_AT..CRC_AT + 4].try_into().ok()?);
    if crc32fast::hash(&bytes[..CRC_AT]) != crc {
        return None;
    }
    let len = usize::from(bytes[ID_LEN_AT]).min(MAX_ID);
    Some(Slot {
        generation: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
        contents: Contents {
            keys: u64::from_be_bytes(bytes[16..24].try_into().ok()?),
            digest: bytes[24..40].try_into().ok()?,
        },
        storage_id: String::from_utf8(bytes[ID_AT..ID_AT + len].to_vec()).ok()?,
        committed: bytes[COMMITTED_AT] == 1,
    })
}

/// The record file, open for writing.
#[derive(Debug)]
pub(crate) struct DurableRecord {
    file: File,
}

impl DurableRecord {
    /// Reads the whole slots of the record in `dir`, oldest first: empty if there is no
    /// record, an error if there is one and no slot of it is whole.
    pub(crate) fn read(dir: &Path) -> Result<Vec<Slot>, StoreError> {
        let bytes = match std::fs::read(dir.join(RECORD_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut slots: Vec<Slot> = bytes.chunks(SLOT).take(2).filter_map(decode).collect();
        slots.sort_by_key(|s| s.generation);
        if slots.is_empty() && !bytes.is_empty() {
            return Err(StoreError::Corrupt {
                detail: format!(
                    "the durable record ({RECORD_FILE}) in {} is damaged",
                    dir.display()
                ),
            });
        }
        Ok(slots)
    }

    /// Opens the record for writing, creating it if needed; a new file's name is made
    /// durable before anything is written to the database.
    pub(crate) fn open(dir: &Path) -> Result<DurableRecord, StoreError> {
        let path = dir.join(RECORD_FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if !existed {
            file.sync_all()?;
            File::open(dir)?.sync_all()?;
        }
        Ok(DurableRecord { file })
    }

    /// Writes `slot` into its place and makes it durable.
    pub(crate) fn write(&mut self, slot: &Slot) -> Result<(), StoreError> {
        let at = (slot.generation % 2) * SLOT as u64;
        self.file.write_all_at(&encode(slot), at)?;
        self.file.sync_data()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(generation: u64) -> Slot {
        let mut contents = Contents::default();
        contents.add(b"k", b"v");
        Slot {
            generation,
            contents,
            storage_id: "id".to_owned(),
            committed: true,
        }
    }

    #[test]
    fn both_slots_read_back_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = DurableRecord::open(dir.path()).unwrap();
        r.write(&slot(6)).unwrap();
        r.write(&slot(7)).unwrap();
        assert_eq!(
            DurableRecord::read(dir.path()).unwrap(),
            vec![slot(6), slot(7)]
        );
        // Tear slot 1 (generation 7): only generation 6 is left.
        let path = dir.path().join(RECORD_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT + 12] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(DurableRecord::read(dir.path()).unwrap(), vec![slot(6)]);
        // Both torn: damaged, not "no record".
        bytes[12] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            DurableRecord::read(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn the_digest_does_not_depend_on_order_and_sees_a_lost_entry() {
        let (mut a, mut b) = (Contents::default(), Contents::default());
        a.add(b"x", b"1");
        a.add(b"y", b"2");
        b.add(b"y", b"2");
        b.add(b"x", b"1");
        assert_eq!(a, b);
        b.remove(b"x", b"1");
        assert_ne!(a, b);
        b.add(b"x", b"changed");
        assert_eq!(a.keys, b.keys);
        assert_ne!(a.digest, b.digest);
    }
}
