//! The sled-backed store used by the relay and on the phone.
//!
//! sled 0.34's `flush` writes its log with `sync_file_range`, which persists neither the
//! file's growing length nor the drive's write cache, and it never syncs the blob files it
//! writes for large pages (over a quarter of a segment, about 128 KiB). So a
//! [`SledStore`] flush is:
//! 1. the durable record (see [`super::durable_record`]) of the state this flush makes
//!    durable: generation, key count, digest — written and `fdatasync`ed first;
//! 2. every write since the last flush (values over 4 KiB in pieces, so sled never writes
//!    a blob file: see [`PIECE`]), and the new generation, applied as one sled batch
//!    (sled recovers a batch whole or not at all, so after a crash the database is exactly
//!    at the old generation or the new one, and matches one of the record's slots);
//! 3. sled's flush, then `fdatasync` of its log and of every new blob file, and `fsync` of
//!    its directories. Only then is the flush reported done.
//!
//! At open the database must match the record: a database cut short, restored from an
//! older copy, or that silently lost a page is refused with a clear error instead of
//! passing for a whole one.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use super::backup::{BackupHeader, BackupReport, BackupWriter};
use super::data_dir::{remove_stale, store_name, store_number, write_current, STORE_FORMAT};
use super::durable_record::{Contents, DurableRecord, Slot, RECORD_FILE};
use super::{storage_id_key, Storage, StorageKey, StoreError};

/// The key under which the store keeps its generation (bumped in every flush's batch). Not
/// a document id (those are base58), so no document's key range reaches it; it is left out
/// of the record's key count and digest.
const GENERATION_KEY: &[u8] = b"cairn-durable-generation";

/// Values longer than this are stored in pieces of this size, so sled never writes a blob
/// file. Why: sled 0.34 keeps any page over a quarter of a segment (about 128 KiB) in a
/// blob file of its own, outside its log; a log entry that points at a blob lost in a
/// power cut leaves a database sled cannot recover. A leaf page holds at most 17 entries
/// before it splits, so with 4 KiB pieces no page comes near the blob threshold.
const PIECE: usize = 4096;

/// The first bytes of a stored value that stands for pieces: magic, then the value's
/// length (u64), CRC-32 (u32) and number of pieces (u32), all big-endian. No Automerge
/// chunk and no storage id starts with it.
const MANIFEST_MAGIC: &[u8; 8] = b"CAIRNPC1";
const MANIFEST_LEN: usize = 24;

/// Where piece `index` of the value under `key` lives: a leading 0x01 (no key begins
/// with it), the key's length, the key, the index.
fn piece_key(key: &[u8], index: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 9);
    out.push(1);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&index.to_be_bytes());
    out
}

fn is_piece(physical: &[u8]) -> bool {
    physical.first() == Some(&1)
}

/// (length, CRC-32, pieces) if `stored` is a manifest.
fn manifest(stored: &[u8]) -> Option<(u64, u32, u32)> {
    if stored.len() != MANIFEST_LEN || !stored.starts_with(MANIFEST_MAGIC) {
        return None;
    }
    Some((
        u64::from_be_bytes(stored[8..16].try_into().ok()?),
        u32::from_be_bytes(stored[16..20].try_into().ok()?),
        u32::from_be_bytes(stored[20..24].try_into().ok()?),
    ))
}

/// The value stored under `key` whose main entry is `stored`: itself, or its pieces put
/// back together and checked.
fn assemble(db: &sled::Db, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, StoreError> {
    let Some((len, crc, pieces)) = manifest(stored) else {
        return Ok(stored.to_vec());
    };
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    for i in 0..pieces {
        let piece = db
            .get(piece_key(key, i))?
            .ok_or_else(|| corrupt(format!("piece {i} of {pieces} of a value is missing")))?;
        out.extend_from_slice(&piece);
    }
    if out.len() as u64 != len || crc32fast::hash(&out) != crc {
        return Err(corrupt("a value's pieces do not add up to it"));
    }
    Ok(out)
}

fn read(db: &sled::Db, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    db.get(key)?.map(|v| assemble(db, key, &v)).transpose()
}

/// Adds to `batch` what stores `value` under `key` (or removes it), in pieces if long,
/// removing pieces an earlier, longer value left.
fn write(
    db: &sled::Db,
    batch: &mut sled::Batch,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<(), StoreError> {
    let old_pieces = db
        .get(key)?
        .and_then(|v| manifest(&v))
        .map_or(0, |(_, _, n)| n);
    let new_pieces = match value {
        Some(v) if v.len() > PIECE => {
            let n = v.len().div_ceil(PIECE) as u32;
            let mut m = Vec::with_capacity(MANIFEST_LEN);
            m.extend_from_slice(MANIFEST_MAGIC);
            m.extend_from_slice(&(v.len() as u64).to_be_bytes());
            m.extend_from_slice(&crc32fast::hash(v).to_be_bytes());
            m.extend_from_slice(&n.to_be_bytes());
            batch.insert(key, m);
            for (i, piece) in v.chunks(PIECE).enumerate() {
                batch.insert(piece_key(key, i as u32), piece);
            }
            n
        }
        Some(v) => {
            batch.insert(key, v);
            0
        }
        None => {
            batch.remove(key);
            0
        }
    };
    for i in new_pieces..old_pieces {
        batch.remove(piece_key(key, i));
    }
    Ok(())
}

/// A rewrite flushes the copy after this many bytes, so its memory stays bounded.
const REWRITE_FLUSH_BYTES: usize = 16 * 1024 * 1024;

/// The length of the value whose main entry is `stored`, without reading its pieces.
fn stored_len(stored: &[u8]) -> u64 {
    manifest(stored).map_or(stored.len() as u64, |(len, _, _)| len)
}

/// Calls `f` with every live entry (encoded key, value) as the store will hold it once
/// its pending writes are applied: the database's entries first, then pending ones.
fn for_each_live(
    db: &sled::Db,
    state: &State,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for item in db.iter() {
        let (k, v) = item?;
        if is_piece(&k) || k.as_ref() == GENERATION_KEY || state.pending.contains_key(k.as_ref()) {
            continue;
        }
        f(&k, &assemble(db, &k, &v)?)?;
    }
    for (k, v) in &state.pending {
        if let Some(v) = v {
            f(k, v)?;
        }
    }
    Ok(())
}

/// What [`SledStore::rewrite`] copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewriteReport {
    /// Live keys copied.
    pub keys: u64,
    /// Bytes of values copied.
    pub bytes: u64,
}

/// Free bytes opening a store needs: its flush writes only the generation, but sled may
/// start a new 512 KiB segment. Lower than the reserve for changes, so a nearly full phone
/// can still open its store and read.
const OPEN_RESERVE: u64 = 1024 * 1024;

/// How a [`SledStore`] makes writes durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SledDurability {
    /// The durable record, then sled's flush, then `fdatasync` of its log and new blob
    /// files and `fsync` of its directories. The default, and the only safe choice.
    #[default]
    Fsync,
    /// sled's flush alone (`sync_file_range`, no fsync, no record): a **test control** that
    /// loses acknowledged writes on power loss, so the power-cut tests can show they see it.
    SledFlushOnly,
}

/// Tuning for [`SledStore`].
#[derive(Clone, Debug)]
pub struct SledConfig {
    /// sled's page cache in bytes. Default 64 MiB: sled's own default (1 GiB) would dwarf a
    /// phone's budget and a small relay's; documents are cached by the engine anyway.
    pub cache_capacity: u64,
    /// How writes are made durable. Default [`SledDurability::Fsync`].
    pub durability: SledDurability,
    /// Free bytes the filesystem must keep beyond twice what a flush writes; a flush that
    /// would go below is refused with "no space left" before sled sees it. Default 64 MiB.
    /// Why: sled 0.34 does not return from a flush that meets a full disk (its writer
    /// fails, its flush waits for it for ever), so the store must refuse first; sled also
    /// writes more than the values (page rewrites, a new 512 KiB segment), hence the margin.
    pub reserve_bytes: u64,
}

impl Default for SledConfig {
    fn default() -> Self {
        SledConfig {
            cache_capacity: 64 * 1024 * 1024,
            durability: SledDurability::Fsync,
            reserve_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What the check at open found: the database matches its durable record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Keys read (every one, with sled checking each page's checksum).
    pub keys: u64,
    /// Bytes of values read.
    pub bytes: u64,
    /// The generation the database is at.
    pub generation: u64,
}

/// A [`Storage`] on an embedded sled database. Key parts are joined with a NUL byte, which
/// cannot appear in document ids or the fixed key words.
#[derive(Clone)]
pub struct SledStore {
    inner: std::sync::Arc<Inner>,
}

/// Names the directory only: sled's own `Debug` prints every key and value.
impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("root", &self.inner.root)
            .field("durability", &self.inner.config.durability)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// The data directory when the store was opened through
    /// [`open_data_dir`](super::open_data_dir) (format 2: the database lives in a
    /// `store-N` directory in it, which [`SledStore::rewrite`] replaces); `None` when
    /// opened directly on its own directory.
    root: Option<PathBuf>,
    config: SledConfig,
    /// `None` after a failed flush: sled keeps an I/O error for good, so the next call
    /// reopens the database from its files.
    db: RwLock<Option<sled::Db>>,
    state: Mutex<State>,
}

/// Writes not flushed yet, and what the flush path remembers between flushes.
struct State {
    /// The directory of the sled database and its durable record.
    dir: PathBuf,
    /// Writes since the last flush (`None`: a removal); reads see them first.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// What the database holds once `pending` is applied.
    contents: Contents,
    /// What it held at the last successful flush.
    committed: Contents,
    /// The generation of the last flush that succeeded (or found at open).
    generation: u64,
    /// Blob files already synced (sled never rewrites one; it writes a new file). With
    /// values in pieces sled writes none; a store from before the pieces may hold some.
    synced_blobs: BTreeSet<OsString>,
    /// The blob directory's own entry and contents were synced once since open.
    blobs_dir_synced: bool,
    record: Option<DurableRecord>,
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

pub(super) fn corrupt(detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        detail: detail.into(),
    }
}

/// `fsync` of a directory: makes the files created, renamed or removed in it durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `fdatasync` of a file by name.
fn sync_file(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_data()
}

/// How long an open waits for the directory's lock before it reports
/// [`StoreError::is_locked`]. sled releases the lock only when its last background write
/// lets go of the database, which can be a moment after the store was dropped: a store
/// closed and reopened in one process (a rewrite, a check after a close, an app that
/// switches accounts) must not fail on that. Another process holding the lock still gets
/// the error, a second later.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens sled, turning a panic in its recovery (it panics on some damaged logs) into an
/// error that names the directory, and waiting up to [`LOCK_WAIT`] for the lock.
fn open_sled(dir: &Path, config: &SledConfig) -> Result<sled::Db, StoreError> {
    let start = std::time::Instant::now();
    loop {
        match open_sled_once(dir, config) {
            Err(e) if e.is_locked() && start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn open_sled_once(dir: &Path, config: &SledConfig) -> Result<sled::Db, StoreError> {
    let opened = catch_unwind(AssertUnwindSafe(|| {
        sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_capacity)
            // We flush explicitly (batched); sled's timer flush would only add syncs.
            .flush_every_ms(None)
            .open()
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(corrupt(format!(
            "sled could not recover the database in {} (it panicked reading its log): the \
             files are damaged",
            dir.display()
        ))),
    }
}

/// Reads every entry: the generation, and the contents and size of everything else.
fn scan(db: &sled::Db) -> Result<(u64, Contents, VerifyReport), StoreError> {
    let mut contents = Contents::default();
    let mut report = VerifyReport::default();
    let mut generation = 0;
    for item in db.iter() {
        let (k, v) = item.map_err(|e| match StoreError::from(e) {
            StoreError::Corrupt { detail } => corrupt(format!(
                "a value does not read back after {} good keys: {detail}",
                report.keys
            )),
            other => other,
        })?;
        if is_piece(&k) {
            continue;
        }
        if k.as_ref() == GENERATION_KEY {
            let bytes: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| corrupt("the stored generation is not 8 bytes"))?;
            generation = u64::from_be_bytes(bytes);
            continue;
        }
        decode_key(&k)?;
        let v = assemble(db, &k, &v)?;
        contents.add(&k, &v);
        report.keys += 1;
        report.bytes += v.len() as u64;
    }
    report.generation = generation;
    Ok((generation, contents, report))
}

/// Checks a freshly opened database against its durable record.
fn check_against_record(
    dir: &Path,
    config: &SledConfig,
    slots: &[Slot],
    generation: u64,
    contents: &Contents,
    storage_id: &str,
) -> Result<(), StoreError> {
    let where_ = dir.display();
    if slots.is_empty() {
        if generation > 0 && config.durability == SledDurability::Fsync {
            return Err(corrupt(format!(
                "the database in {where_} is at generation {generation} but its durable \
                 record ({RECORD_FILE}) is missing: it cannot be checked for lost writes"
            )));
        }
        return Ok(());
    }
    let newest = slots.iter().map(|s| s.generation).max().unwrap_or(0);
    let oldest = slots.iter().map(|s| s.generation).min().unwrap_or(0);
    if let Some(lost) = slots
        .iter()
        .find(|s| s.committed && s.generation > generation)
    {
        return Err(corrupt(format!(
            "the database in {where_} has lost writes it had made durable: it is at \
             generation {generation}, its durable record says generation {} was flushed",
            lost.generation
        )));
    }
    match slots.iter().find(|s| s.generation == generation) {
        Some(slot) => {
            if !slot.storage_id.is_empty() && slot.storage_id != storage_id {
                return Err(corrupt(format!(
                    "the database in {where_} does not belong to its durable record (the \
                     storage ids differ): its files come from different copies"
                )));
            }
            if slot.contents != *contents {
                return Err(corrupt(format!(
                    "the database in {where_} has lost or changed entries it had made \
                     durable: it holds {} keys, its durable record says {} (and their \
                     digests differ)",
                    contents.keys, slot.contents.keys
                )));
            }
            Ok(())
        }
        None if generation < oldest => Err(corrupt(format!(
            "the database in {where_} has lost writes it had made durable: it is at \
             generation {generation}, its durable record at {newest}"
        ))),
        None => {
            // Newer than the record: it was last used without one (the sled-flush-only
            // test control). Nothing can be checked; the next flush records it.
            tracing::warn!(
                generation,
                recorded = newest,
                "the durable record is older than the database"
            );
            Ok(())
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir` and checks it: sled must recover its log, every
    /// entry must read back, and what the database holds must match its durable record
    /// (generation, key count, digest). A damaged store is refused with
    /// [`StoreError::Corrupt`], never opened with what is left.
    pub fn open(dir: &Path, config: &SledConfig) -> Result<Self, StoreError> {
        Self::open_in(dir, config, None)
    }

    /// [`SledStore::open`] on `dir`, which is the current store directory of the data
    /// directory `root` if one is given.
    pub(super) fn open_in(
        dir: &Path,
        config: &SledConfig,
        root: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let (db, state, _) = Self::open_checked(dir, config)?;
        let store = SledStore {
            inner: std::sync::Arc::new(Inner {
                root: root.map(Path::to_owned),
                config: config.clone(),
                db: RwLock::new(Some(db)),
                state: Mutex::new(state),
            }),
        };
        // Everything sled created or recovered is made durable before anything is served.
        {
            let guard = store.db()?;
            let db = guard.as_ref().ok_or(StoreError::Closed)?;
            let mut state = store.state();
            store.check_space(&state, OPEN_RESERVE)?;
            store.flush_db(db, &mut state)?;
        }
        Ok(store)
    }

    /// Opens and checks the store in `dir` like [`SledStore::open`], and reports what it
    /// read; writes nothing but what sled's own recovery writes.
    pub fn check(dir: &Path, config: &SledConfig) -> Result<VerifyReport, StoreError> {
        if !dir.join("db").exists() {
            return Err(corrupt(format!("{} holds no database", dir.display())));
        }
        Self::open_checked(dir, config).map(|(_, _, report)| report)
    }

    fn open_checked(
        dir: &Path,
        config: &SledConfig,
    ) -> Result<(sled::Db, State, VerifyReport), StoreError> {
        let slots = DurableRecord::read(dir)?;
        if !slots.is_empty() && !dir.join("db").exists() {
            return Err(corrupt(format!(
                "{} holds a durable record ({RECORD_FILE}) but no database: the database \
                 files were removed or the directory was only partly restored",
                dir.display()
            )));
        }
        let db = open_sled(dir, config)?;
        // sled also panics on some damage only when it reads the pages (a page table
        // entry whose page is gone): a damaged store, not a crash.
        let (generation, contents, report) = catch_unwind(AssertUnwindSafe(|| scan(&db)))
            .unwrap_or_else(|_| {
                Err(corrupt(format!(
                    "sled could not read the database in {} (it panicked on a missing page): \
                     the files are damaged",
                    dir.display()
                )))
            })?;
        let storage_id = db
            .get(encode_key(&storage_id_key()))?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        check_against_record(dir, config, &slots, generation, &contents, &storage_id)?;
        let state = State {
            dir: dir.to_owned(),
            pending: BTreeMap::new(),
            contents,
            committed: contents,
            generation,
            synced_blobs: BTreeSet::new(),
            blobs_dir_synced: false,
            record: None,
        };
        Ok((db, state, report))
    }

    /// The open database, reopening it first if a flush failed since (sled keeps an I/O
    /// error for good). The reopened database is checked like a fresh open and made
    /// durable before it is used.
    fn db(&self) -> Result<RwLockReadGuard<'_, Option<sled::Db>>, StoreError> {
        {
            let guard = self.inner.db.read().unwrap_or_else(|e| e.into_inner());
            if guard.is_some() {
                return Ok(guard);
            }
        }
        self.reopen()?;
        Ok(self.inner.db.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.inner.db.write().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        let dir = self.state().dir.clone();
        let (db, fresh, _) = Self::open_checked(&dir, &self.inner.config)?;
        let mut state = self.state();
        let record = state.record.take();
        *state = State { record, ..fresh };
        self.check_space(&state, OPEN_RESERVE)?;
        self.flush_db(&db, &mut state)?;
        tracing::info!(
            generation = state.generation,
            "store reopened after a failed flush"
        );
        *slot = Some(db);
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_db<R>(
        &self,
        f: impl FnOnce(&sled::Db) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().ok_or(StoreError::Closed)?;
        f(db)
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.with_db(|db| Ok(db.size_on_disk()?))
    }

    /// The generation of the last successful flush (it grows by one per flush).
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Bytes of values by the first part of their keys (documents' ids, and the fixed
    /// words of other records), pending writes included. Reads every key, not values.
    pub fn document_sizes(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.with_db(|db| {
            let state = self.state();
            let mut out: BTreeMap<String, u64> = BTreeMap::new();
            let mut add = |k: &[u8], len: u64| -> Result<(), StoreError> {
                let first = k.split(|b| *b == 0).next().unwrap_or_default();
                let first =
                    String::from_utf8(first.to_vec()).map_err(|_| corrupt("a key is not UTF-8"))?;
                *out.entry(first).or_default() += len;
                Ok(())
            };
            for item in db.iter() {
                let (k, v) = item?;
                if is_piece(&k)
                    || k.as_ref() == GENERATION_KEY
                    || state.pending.contains_key(k.as_ref())
                {
                    continue;
                }
                add(&k, stored_len(&v))?;
            }
            for (k, v) in &state.pending {
                if let Some(v) = v {
                    add(k, v.len() as u64)?;
                }
            }
            Ok(out)
        })
    }

    /// Writes a backup of the whole store to `out` (see [`BackupHeader`] for the format):
    /// every live key, read while every other call on this store waits, so the copy is
    /// consistent. On a store a [`Host`](crate::runtime::Host) runs, call it through
    /// [`Host::exclusive`](crate::runtime::Host::exclusive) so that no batch of writes is
    /// half applied. The caller syncs the file.
    pub fn backup_to(
        &self,
        out: impl std::io::Write,
        taken_ms: u64,
    ) -> Result<BackupReport, StoreError> {
        self.with_db(|db| {
            let state = self.state();
            let storage_id = Self::current(db, &state, &encode_key(&storage_id_key()))?
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            let header = BackupHeader {
                taken_ms,
                store_format: STORE_FORMAT,
                source_storage_id: storage_id,
                keys: state.contents.keys,
                generation: state.generation,
            };
            let mut writer = BackupWriter::start(out, &header)?;
            for_each_live(db, &state, |k, v| writer.entry(&decode_key(k)?, v))?;
            writer.finish()
        })
    }

    /// Copies every live key into a fresh store directory (`store-(N+1)` beside the
    /// current `store-N`), switches the data directory's `CURRENT` to it, goes on in it and
    /// deletes the old directory: afterwards nothing deleted before the rewrite is left in
    /// the data directory's files. Every other call on this store waits meanwhile (on a
    /// store a host runs, call it through
    /// [`Host::exclusive`](crate::runtime::Host::exclusive)). Needs free space for a
    /// second copy of the live data.
    ///
    /// A crash at any point leaves `CURRENT` naming the old store (the copy was not
    /// finished) or the new one (it was), and the next [`open_data_dir`](super::open_data_dir)
    /// removes the other directory. Only for a store opened with `open_data_dir`.
    pub fn rewrite(&self) -> Result<RewriteReport, StoreError> {
        let root = self.inner.root.clone().ok_or_else(|| {
            StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a store rewrite needs a store opened with open_data_dir",
            ))
        })?;
        // Reopens the database if a flush failed since, before every call is held off.
        drop(self.db()?);
        let mut slot = self.inner.db.write().unwrap_or_else(|e| e.into_inner());
        let db = slot.as_ref().ok_or(StoreError::Closed)?;
        let mut state = self.state();
        let old_dir = state.dir.clone();
        let n = old_dir
            .file_name()
            .and_then(store_number)
            .ok_or_else(|| corrupt("the store directory is not named store-N"))?;
        let new_name = store_name(n + 1);
        let new_dir = root.join(&new_name);
        if new_dir.exists() {
            // An unfinished copy a failed rewrite left (CURRENT never named it).
            std::fs::remove_dir_all(&new_dir)?;
        }
        let copy = || -> Result<(SledStore, RewriteReport), StoreError> {
            let fresh = SledStore::open_in(&new_dir, &self.inner.config, Some(&root))?;
            let mut report = RewriteReport::default();
            let mut staged = 0;
            for_each_live(db, &state, |k, v| {
                fresh.stage(k.to_vec(), Some(v))?;
                report.keys += 1;
                report.bytes += v.len() as u64;
                staged += k.len() + v.len();
                if staged >= REWRITE_FLUSH_BYTES {
                    fresh.flush()?;
                    staged = 0;
                }
                Ok(())
            })?;
            fresh.flush()?;
            if fresh.state().contents != state.contents {
                return Err(corrupt(
                    "the rewritten store does not hold what the store held (its key count \
                     or digest differs)",
                ));
            }
            Ok((fresh, report))
        };
        let abandon = |e: StoreError| {
            let _ = std::fs::remove_dir_all(&new_dir);
            let _ = sync_dir(&root);
            e
        };
        let (fresh, report) = copy().map_err(abandon)?;
        let inner = std::sync::Arc::try_unwrap(fresh.inner)
            .map_err(|_| abandon(corrupt("the rewritten store is still in use")))?;
        let new_db = inner
            .db
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| abandon(StoreError::Closed))?;
        let new_state = inner.state.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = write_current(&root, &new_name) {
            // Renamed but not synced: CURRENT may name the copy, which is whole. Otherwise
            // the old store stays current and the copy goes.
            if super::data_dir::store_dir(&root).ok().as_deref() != Some(new_dir.as_path()) {
                return Err(abandon(e));
            }
        }
        *state = new_state;
        // The old database closes before its directory goes.
        let old = slot.replace(new_db);
        drop(old);
        drop(state);
        drop(slot);
        remove_stale(&root)?;
        tracing::info!(
            keys = report.keys,
            bytes = report.bytes,
            store = %new_name,
            "store rewritten"
        );
        Ok(report)
    }

    /// The value `key` will have once pending writes are applied.
    fn current(db: &sled::Db, state: &State, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match state.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => read(db, key),
        }
    }

    fn stage(&self, key: Vec<u8>, value: Option<&[u8]>) -> Result<(), StoreError> {
        self.with_db(|db| {
            let mut state = self.state();
            if let Some(old) = Self::current(db, &state, &key)? {
                state.contents.remove(&key, &old);
            }
            if let Some(v) = value {
                state.contents.add(&key, v);
            }
            state.pending.insert(key, value.map(<[u8]>::to_vec));
            Ok(())
        })
    }

    /// Writes the record, applies the pending writes and the new generation as one batch,
    /// flushes sled and syncs its files.
    fn flush_db(&self, db: &sled::Db, state: &mut State) -> Result<(), StoreError> {
        let fsync = self.inner.config.durability == SledDurability::Fsync;
        let next = state.generation + 1;
        let ahead = if fsync {
            if state.record.is_none() {
                let dir = &state.dir;
                std::fs::create_dir_all(dir)?;
                // The directory itself may be new: make its name durable too.
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent)?;
                }
                state.record = Some(DurableRecord::open(dir)?);
            }
            let storage_id = Self::current(db, state, &encode_key(&storage_id_key()))?
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            let slot = Slot {
                generation: next,
                contents: state.contents,
                storage_id,
                committed: false,
            };
            state.record.as_mut().expect("opened above").write(&slot)?;
            Some(slot)
        } else {
            None
        };
        let mut batch = sled::Batch::default();
        for (k, v) in std::mem::take(&mut state.pending) {
            write(db, &mut batch, &k, v.as_deref())?;
        }
        batch.insert(GENERATION_KEY, &next.to_be_bytes());
        db.apply_batch(batch)?;
        db.flush()?;
        if fsync {
            let dir = state.dir.clone();
            sync_file(&dir.join("db"))?;
            Self::sync_blobs(state)?;
            sync_dir(&dir)?;
        }
        if let (Some(mut slot), Some(record)) = (ahead, state.record.as_mut()) {
            slot.committed = true;
            record.write(&slot)?;
        }
        state.generation = next;
        state.committed = state.contents;
        Ok(())
    }

    /// Refuses a flush that would leave less than `reserve` free (see
    /// [`SledConfig::reserve_bytes`]), before sled is touched.
    fn check_space(&self, state: &State, reserve: u64) -> Result<(), StoreError> {
        let pending: u64 = state
            .pending
            .iter()
            .map(|(k, v)| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64)
            .sum();
        let stat = rustix::fs::statvfs(&state.dir).map_err(std::io::Error::from)?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        let needed = pending.saturating_mul(2) + reserve;
        if free < needed {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("{free} bytes free, a flush of {pending} bytes needs {needed}"),
            )));
        }
        Ok(())
    }

    /// `fdatasync` of every blob file not synced yet, then of the blob directory.
    fn sync_blobs(state: &mut State) -> std::io::Result<()> {
        let blobs = state.dir.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = BTreeSet::new();
        let mut new = 0;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !state.synced_blobs.contains(&name) {
                match sync_file(&entry.path()) {
                    Ok(()) => new += 1,
                    // sled removed it between the listing and the open (garbage collection).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            present.insert(name);
        }
        state.synced_blobs = present;
        if new > 0 || !state.blobs_dir_synced {
            sync_dir(&blobs)?;
            state.blobs_dir_synced = true;
        }
        Ok(())
    }
}

impl Storage for SledStore {
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| Self::current(db, &self.state(), &encode_key(key)))
    }

    fn load_range(&self, prefix: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
        self.with_db(|db| {
            let state = self.state();
            let mut p = encode_key(prefix);
            if !prefix.is_empty() {
                p.push(0);
            }
            let mut found: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for item in db.scan_prefix(&p) {
                let (k, v) = item?;
                if is_piece(&k) || k.as_ref() == GENERATION_KEY {
                    continue;
                }
                let v = assemble(db, &k, &v)?;
                found.insert(k.to_vec(), v);
            }
            for (k, v) in state.pending.range(p.clone()..) {
                if !k.starts_with(&p) {
                    break;
                }
                match v {
                    Some(v) => found.insert(k.clone(), v.clone()),
                    None => found.remove(k),
                };
            }
            let mut out = Vec::with_capacity(found.len() + 1);
            // An exact match of the prefix itself (a one-part key) belongs to the range too.
            if !prefix.is_empty() {
                if let Some(v) = Self::current(db, &state, &encode_key(prefix))? {
                    out.push((prefix.to_vec(), v));
                }
            }
            for (k, v) in found {
                out.push((decode_key(&k)?, v));
            }
            Ok(out)
        })
    }

    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
        self.stage(encode_key(key), Some(data))
    }

    fn delete(&self, key: &[String]) -> Result<(), StoreError> {
        self.stage(encode_key(key), None)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().ok_or(StoreError::Closed)?;
        let mut state = self.state();
        if state.pending.is_empty() {
            // Nothing to make durable: everything sled holds was flushed and synced.
            return Ok(());
        }
        if let Err(e) = self.check_space(&state, self.inner.config.reserve_bytes) {
            // Refused before sled saw it: drop the writes, the database is as it was.
            state.pending.clear();
            state.contents = state.committed;
            return Err(e);
        }
        let result = self.flush_db(db, &mut state);
        if result.is_err() {
            // The writes of this flush were refused; sled keeps an I/O error for good and
            // may hold some of them in memory only. The next call reopens the database
            // from its files, which hold exactly the old generation or the new one.
            state.pending.clear();
            drop(state);
            drop(guard);
            *self.inner.db.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
        result
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

    /// Long values go in pieces: they read back whole, a shorter value replaces a longer
    /// one, and sled writes no blob file (which a power cut could separate from its log).
    #[test]
    fn long_values_are_stored_in_pieces_and_never_as_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let long: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let key = k(&["doc", "snapshot", "h"]);
        {
            let s = SledStore::open(dir.path(), &SledConfig::default()).unwrap();
            for i in 0..20u8 {
                let mut v = long.clone();
                v[0] = i;
                s.put(&k(&["doc", "incremental", &i.to_string()]), &v)
                    .unwrap();
            }
            s.put(&key, &long).unwrap();
            s.flush().unwrap();
        }
        let blobs = std::fs::read_dir(dir.path().join("blobs")).map_or(0, |d| d.count());
        assert_eq!(blobs, 0, "sled wrote blob files");
        let s = SledStore::open(dir.path(), &SledConfig::default()).unwrap();
        assert_eq!(s.load(&key).unwrap(), Some(long.clone()));
        assert_eq!(s.load_range(&k(&["doc"])).unwrap().len(), 21);
        s.put(&key, b"short").unwrap();
        s.flush().unwrap();
        drop(s);
        let s = SledStore::open(dir.path(), &SledConfig::default()).unwrap();
        assert_eq!(s.load(&key).unwrap(), Some(b"short".to_vec()));
    }

    #[test]
    fn the_generation_grows_with_every_flush_and_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), &SledConfig::default()).unwrap();
        let id = s.storage_id().unwrap();
        let g = s.generation();
        s.put(&k(&["doc", "incremental", "h1"]), b"one").unwrap();
        s.flush().unwrap();
        assert_eq!(s.generation(), g + 1);
        let slots = DurableRecord::read(dir.path()).unwrap();
        let newest = slots.last().unwrap();
        assert_eq!(newest.generation, g + 1);
        assert_eq!(newest.storage_id, id.as_str());
    }

    /// A copy of the directory taken earlier, with the newer durable record: the database
    /// lost flushed writes, and opening it must say so rather than serve what is left.
    #[test]
    fn a_database_behind_its_durable_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let old = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path(), &SledConfig::default()).unwrap();
            s.storage_id().unwrap();
            s.put(&k(&["doc", "incremental", "h1"]), b"one").unwrap();
            s.flush().unwrap();
        }
        copy_dir(dir.path(), old.path());
        {
            let s = SledStore::open(dir.path(), &SledConfig::default()).unwrap();
            s.put(&k(&["doc", "incremental", "h2"]), b"two").unwrap();
            s.flush().unwrap();
        }
        // Put the newer record beside the older database.
        std::fs::copy(dir.path().join(RECORD_FILE), old.path().join(RECORD_FILE)).unwrap();
        let err = SledStore::open(old.path(), &SledConfig::default()).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { detail } if detail.contains("lost writes")),
            "{err}"
        );
    }

    #[test]
    fn a_record_without_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        SledStore::open(dir.path(), &SledConfig::default()).unwrap();
        std::fs::remove_file(dir.path().join("db")).unwrap();
        let err = SledStore::open(dir.path(), &SledConfig::default()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    pub(super) fn copy_dir(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(&target).unwrap();
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
}

#[cfg(test)]
mod damage {
    use super::*;

    const DOCS: usize = 200;

    fn doc_key(i: usize) -> StorageKey {
        vec![
            format!("doc{i:04}"),
            "incremental".to_owned(),
            "h".to_owned(),
        ]
    }

    fn doc_value(i: usize) -> Vec<u8> {
        vec![i as u8; 3000 + i]
    }

    /// A store with [`DOCS`] documents of a few KiB each, written over several flushes and
    /// closed; returns its `db` file's bytes.
    fn filled(dir: &Path) -> Vec<u8> {
        let s = SledStore::open(dir, &SledConfig::default()).unwrap();
        s.storage_id().unwrap();
        for i in 0..DOCS {
            s.put(&doc_key(i), &doc_value(i)).unwrap();
            if i % 10 == 9 {
                s.flush().unwrap();
            }
        }
        s.flush().unwrap();
        drop(s);
        std::fs::read(dir.join("db")).unwrap()
    }

    /// Opens a damaged copy: either it is refused as corrupt, or every document is whole.
    /// Never a panic, never a store that opens and silently misses a document.
    fn refused_or_whole(dir: &Path, what: &str) -> bool {
        match SledStore::open(dir, &SledConfig::default()) {
            Err(StoreError::Corrupt { .. }) => true,
            Err(other) => panic!("{what}: not reported as damage: {other}"),
            Ok(s) => {
                for i in 0..DOCS {
                    assert!(
                        s.load(&doc_key(i)).unwrap() == Some(doc_value(i)),
                        "{what}: the store opened but document {i} is missing or wrong"
                    );
                }
                false
            }
        }
    }

    #[test]
    fn a_database_cut_short_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = filled(dir.path());
        bytes.truncate(bytes.len() - 4096);
        std::fs::write(dir.path().join("db"), &bytes).unwrap();
        assert!(
            refused_or_whole(dir.path(), "cut by 4 KiB"),
            "a cut-off database opened"
        );
    }

    /// 4 KiB of zeros at every 32 KiB of the file, one copy each.
    #[test]
    fn zeroed_bytes_anywhere_are_refused_or_harmless() {
        let original = tempfile::tempdir().unwrap();
        let bytes = filled(original.path());
        let mut refused = 0;
        let mut offsets = 0;
        for at in (0..bytes.len().saturating_sub(4096)).step_by(32 * 1024) {
            let copy = tempfile::tempdir().unwrap();
            super::tests::copy_dir(original.path(), copy.path());
            let mut damaged = bytes.clone();
            damaged[at..at + 4096].fill(0);
            std::fs::write(copy.path().join("db"), &damaged).unwrap();
            if refused_or_whole(copy.path(), &format!("zeros at {at}")) {
                refused += 1;
            }
            offsets += 1;
        }
        eprintln!("{refused} of {offsets} damaged copies refused, the rest whole");
        // Live data sits in the file; zeroing all of it unnoticed would mean no check at all.
        assert!(refused > 0, "none of {offsets} damaged copies was refused");
    }
}
