//! The backup file: one consistent copy of a whole store.
//!
//! Layout: the magic `CAIRNBAK`, the file version (u32 big-endian), the header's length
//! (u32) and the header as JSON ([`BackupHeader`]), then `keys` entries, each the key as a
//! JSON array of strings (u32 length first) and the value (u64 length first), and last the
//! SHA-256 of everything before it. A restore checks the whole file (structure and
//! digest) before it writes anything, so a cut-off or altered file is refused whole.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::data_dir::open_data_dir;
use super::{storage_id_key, SledConfig, SledStore, Storage, StorageKey, StoreError};

/// The first bytes of a backup file.
pub const BACKUP_MAGIC: &[u8; 8] = b"CAIRNBAK";

/// The backup file version this build writes and reads.
pub const BACKUP_VERSION: u32 = 1;

/// Longest header accepted (it is a few hundred bytes).
const MAX_HEADER: u32 = 64 * 1024;

/// Longest key accepted (keys are a few short strings).
const MAX_KEY: u32 = 64 * 1024;

/// A restore flushes after this many bytes of entries, so its memory stays bounded.
const RESTORE_FLUSH_BYTES: usize = 16 * 1024 * 1024;

/// What a backup file says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// When the backup was taken (Unix ms).
    pub taken_ms: u64,
    /// The store format of the relay that took it.
    pub store_format: u32,
    /// The storage id of the store it was taken from (a restore takes a new one).
    pub source_storage_id: String,
    /// How many entries follow.
    pub keys: u64,
    /// The store's generation when it was taken.
    pub generation: u64,
}

/// What a backup wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// Entries written.
    pub keys: u64,
    /// Bytes of values written.
    pub bytes: u64,
    /// The time the backup says it was taken (Unix ms).
    pub taken_ms: u64,
}

/// What a restore wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    /// Entries written (every entry of the file but the old storage id).
    pub keys: u64,
    /// Bytes of values written.
    pub bytes: u64,
}

fn bad(detail: impl Into<String>) -> StoreError {
    StoreError::BadBackup {
        detail: detail.into(),
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a backup file entry by entry (see [`SledStore::backup_to`]).
pub(super) struct BackupWriter<W: Write> {
    out: Hashing<BufWriter<W>>,
    expected: u64,
    report: BackupReport,
}

impl<W: Write> BackupWriter<W> {
    pub(super) fn start(out: W, header: &BackupHeader) -> Result<Self, StoreError> {
        let mut out = Hashing {
            inner: BufWriter::with_capacity(1024 * 1024, out),
            hasher: Sha256::new(),
        };
        let json = serde_json::to_vec(header).map_err(|e| bad(e.to_string()))?;
        out.write_all(BACKUP_MAGIC)?;
        out.write_all(&BACKUP_VERSION.to_be_bytes())?;
        out.write_all(&(json.len() as u32).to_be_bytes())?;
        out.write_all(&json)?;
        Ok(BackupWriter {
            out,
            expected: header.keys,
            report: BackupReport {
                keys: 0,
                bytes: 0,
                taken_ms: header.taken_ms,
            },
        })
    }

    pub(super) fn entry(&mut self, key: &[String], value: &[u8]) -> Result<(), StoreError> {
        let key = serde_json::to_vec(key).map_err(|e| bad(e.to_string()))?;
        self.out.write_all(&(key.len() as u32).to_be_bytes())?;
        self.out.write_all(&key)?;
        self.out.write_all(&(value.len() as u64).to_be_bytes())?;
        self.out.write_all(value)?;
        self.report.keys += 1;
        self.report.bytes += value.len() as u64;
        Ok(())
    }

    /// Writes the trailer and flushes (the caller syncs the file).
    pub(super) fn finish(self) -> Result<BackupReport, StoreError> {
        let Hashing { inner, hasher } = self.out;
        if self.report.keys != self.expected {
            return Err(super::sled_store::corrupt(format!(
                "the store listed {} entries for a backup, its count says {}",
                self.report.keys, self.expected
            )));
        }
        let mut inner = inner;
        inner.write_all(&hasher.finalize())?;
        inner.flush()?;
        Ok(self.report)
    }
}

/// Reads a backup file's parts, hashing what it reads.
struct Reader<R: Read> {
    inner: R,
    hasher: Sha256,
    /// Bytes left before the trailer.
    left: u64,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, StoreError> {
        if n > self.left {
            return Err(bad(format!("it ends inside {what} (cut short?)")));
        }
        let mut buf = vec![0u8; usize::try_from(n).map_err(|_| bad("an entry is too large"))?];
        self.inner.read_exact(&mut buf)?;
        self.hasher.update(&buf);
        self.left -= n;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, StoreError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, StoreError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }

    fn header(&mut self) -> Result<BackupHeader, StoreError> {
        if self.bytes(8, "the magic")?.as_slice() != BACKUP_MAGIC {
            return Err(bad("it is not a Cairn backup file"));
        }
        let version = self.u32("the version")?;
        if version != BACKUP_VERSION {
            return Err(bad(format!(
                "it is backup version {version}, this relay reads version {BACKUP_VERSION}: \
                 restore it with a relay at least as new as the one that wrote it"
            )));
        }
        let len = self.u32("the header")?;
        if len > MAX_HEADER {
            return Err(bad("its header is too long"));
        }
        let json = self.bytes(u64::from(len), "the header")?;
        serde_json::from_slice(&json).map_err(|_| bad("its header is not valid"))
    }

    fn entry(&mut self, with_value: bool) -> Result<(StorageKey, Option<Vec<u8>>), StoreError> {
        let len = self.u32("an entry")?;
        if len > MAX_KEY {
            return Err(bad("a key is too long"));
        }
        let key = self.bytes(u64::from(len), "an entry")?;
        let key: StorageKey =
            serde_json::from_slice(&key).map_err(|_| bad("a key is not valid"))?;
        let vlen = self.u64("an entry")?;
        if with_value {
            Ok((key, Some(self.bytes(vlen, "an entry")?)))
        } else {
            // Checked and hashed in bounded pieces: a value may be large.
            let mut left = vlen;
            while left > 0 {
                let n = left.min(1024 * 1024);
                self.bytes(n, "an entry")?;
                left -= n;
            }
            Ok((key, None))
        }
    }

    /// Reads the trailer and compares it with the digest of everything before it.
    fn trailer(mut self) -> Result<(), StoreError> {
        if self.left != 0 {
            return Err(bad(format!(
                "{} bytes follow its last entry (it is not one backup)",
                self.left
            )));
        }
        let mut trailer = [0u8; 32];
        self.inner.read_exact(&mut trailer)?;
        if self.hasher.finalize().as_slice() != trailer {
            return Err(bad(
                "its SHA-256 does not match its contents: it was damaged or altered",
            ));
        }
        Ok(())
    }
}

fn open_reader(path: &Path) -> Result<Reader<BufReader<std::fs::File>>, StoreError> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len < 32 {
        return Err(bad("it is too short to be a backup"));
    }
    Ok(Reader {
        inner: BufReader::with_capacity(1024 * 1024, file),
        hasher: Sha256::new(),
        left: len - 32,
    })
}

/// Checks the whole backup file at `path` (its structure and its SHA-256 trailer) and
/// returns its header. Reads the file once; writes nothing.
pub fn verify_backup(path: &Path) -> Result<BackupHeader, StoreError> {
    let mut r = open_reader(path)?;
    let header = r.header()?;
    for _ in 0..header.keys {
        r.entry(false)?;
    }
    r.trailer()?;
    Ok(header)
}

/// Restores the backup at `from` into the data directory `data`, which must be missing or
/// empty. The file is checked whole first ([`verify_backup`]); only then is the directory
/// created (store format 2) and every entry written but the old storage id, so the
/// restored store has a new id and clients resend what it lacks. Durable when it returns.
pub fn restore_backup(
    from: &Path,
    data: &Path,
    config: &SledConfig,
) -> Result<(SledStore, BackupHeader, RestoreReport), StoreError> {
    let empty = match std::fs::read_dir(data) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e.into()),
    };
    if !empty {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} is not empty: a backup is restored only into an empty or new directory",
                data.display()
            ),
        )));
    }
    let header = verify_backup(from)?;
    let (store, _) = open_data_dir(data, config)?;
    let mut r = open_reader(from)?;
    if r.header()? != header {
        return Err(bad("the file changed while it was restored"));
    }
    let skip = storage_id_key();
    let mut report = RestoreReport { keys: 0, bytes: 0 };
    let mut staged = 0;
    for _ in 0..header.keys {
        let (key, value) = r.entry(true)?;
        let value = value.unwrap_or_default();
        if key == skip {
            continue;
        }
        store.put(&key, &value)?;
        report.keys += 1;
        report.bytes += value.len() as u64;
        staged += value.len();
        if staged >= RESTORE_FLUSH_BYTES {
            store.flush()?;
            staged = 0;
        }
    }
    r.trailer()?;
    store.flush()?;
    // A new id, made durable: clients that remember the old one resend what this lacks.
    store.storage_id()?;
    Ok((store, header, report))
}
