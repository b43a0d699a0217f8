//! The data directory's layout and its format version.
//!
//! Format 2 (this build): `DATA/CURRENT` is JSON `{"format": 2, "store": "store-N"}` and
//! names the directory that holds the sled database and its durable record. A store
//! rewrite ([`SledStore::rewrite`]) copies the live keys into `store-(N+1)` and switches
//! `CURRENT` to it with one atomic rename, so a crash leaves either the old store or the
//! new one current, never a mix; the next open removes the other.
//!
//! Format 1 (earlier relays): the sled files sit directly in `DATA`. Opening one migrates
//! it by moving its files into `store-1` (renames within one directory tree, each atomic),
//! copying its durable record there, writing `CURRENT`, and only then replacing the
//! top-level durable record with a marker. Every step can be repeated, so a migration a
//! crash interrupted finishes on the next open.
//!
//! The marker keeps a format-1 relay away from a format-2 directory: such a relay refuses a
//! directory whose durable record (`cairn-durable`) has a slot but which has no `db` file,
//! instead of creating an empty store beside the real one. During a migration the real
//! record stays on top until `CURRENT` exists, so an old relay refuses at every step too.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::durable_record::{encode, Contents, DurableRecord, Slot, RECORD_FILE};
use super::sled_store::{corrupt, sync_dir};
use super::{SledConfig, SledStore, StoreError, VerifyReport};

/// The store format this build writes and the newest it reads.
pub const STORE_FORMAT: u32 = 2;

/// The file in the data directory that names the current store directory.
pub const CURRENT_FILE: &str = "CURRENT";

/// The storage id written in the marker's slot (at most 40 bytes): an old relay that dumps
/// its record sees why the directory is not its own.
const MARKER_ID: &str = "cairn store format 2: run a newer relay";

/// Files and directories sled 0.34 keeps in its directory (`snap.*` too).
const SLED_FILES: &[&str] = &["db", "conf", "blobs"];

/// What [`open_data_dir`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDirReport {
    /// The format the directory is in now (always [`STORE_FORMAT`] after an open).
    pub format: u32,
    /// The format it was migrated from during this open, if it was.
    pub migrated_from: Option<u32>,
}

/// `CURRENT`'s contents.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Current {
    format: u32,
    store: String,
}

/// What the top-level durable record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopRecord {
    None,
    Marker,
    /// A format-1 store's own record.
    Store,
}

/// Opens (or creates) the store in the data directory `dir`: creates format 2 in an empty
/// or missing directory, migrates a format-1 directory (and finishes a migration a crash
/// interrupted), refuses a directory of a newer format with [`StoreError::TooNew`], and
/// removes a store directory a crash during a rewrite left behind. The store is checked
/// like [`SledStore::open`].
pub fn open_data_dir(
    dir: &Path,
    config: &SledConfig,
) -> Result<(SledStore, DataDirReport), StoreError> {
    // The directory may be new, made here or just before by the caller (the relay creates
    // it to check its permissions): its name is durable only once its parent is synced, on
    // every open, or a power cut can take the whole store with it (the power-cut test saw
    // exactly that).
    std::fs::create_dir_all(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    let (store, migrated_from) = match read_current(dir)? {
        Some(current) => {
            let path = current_dir(dir, &current)?;
            // A crash between writing CURRENT and the marker (a migration) leaves the
            // format-1 record on top: replace it now.
            ensure_marker(dir)?;
            (SledStore::open_in(&path, config, Some(dir))?, None)
        }
        None => {
            let top = sled_files(dir)?;
            let record = top_record(dir)?;
            let first = dir.join(store_name(1));
            if top.is_empty() && record != TopRecord::Store && !first.exists() {
                create(dir, config)?
            } else {
                (migrate(dir, config, &top, record)?, Some(1))
            }
        }
    };
    remove_stale(dir)?;
    Ok((
        store,
        DataDirReport {
            format: STORE_FORMAT,
            migrated_from,
        },
    ))
}

/// Checks the store in the data directory `dir` without changing its layout (a format-1
/// directory is checked in place): see [`SledStore::check`]. Returns the report and the
/// directory's format.
pub fn check_data_dir(dir: &Path, config: &SledConfig) -> Result<(VerifyReport, u32), StoreError> {
    match read_current(dir)? {
        Some(current) => {
            let path = current_dir(dir, &current)?;
            Ok((SledStore::check(&path, config)?, STORE_FORMAT))
        }
        None if dir.join(store_name(1)).exists() => Err(corrupt(format!(
            "{} is half-way through its migration to store format {STORE_FORMAT} (a crash \
             interrupted it): start the relay on it once to finish the migration, then check",
            dir.display()
        ))),
        None => Ok((SledStore::check(dir, config)?, 1)),
    }
}

/// The directory holding the sled database of the data directory `dir`: the one its
/// `CURRENT` names, or `dir` itself for a format-1 directory. For tools and tests that
/// look at the store's files.
pub fn store_dir(dir: &Path) -> Result<PathBuf, StoreError> {
    match read_current(dir)? {
        Some(current) => current_dir(dir, &current),
        None => Ok(dir.to_owned()),
    }
}

/// `store-N`.
pub(super) fn store_name(n: u64) -> String {
    format!("store-{n}")
}

/// N of a `store-N` name.
pub(super) fn store_number(name: &OsStr) -> Option<u64> {
    let n = name.to_str()?.strip_prefix("store-")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

fn read_current(dir: &Path) -> Result<Option<Current>, StoreError> {
    let bytes = match std::fs::read(dir.join(CURRENT_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // A newer format may change anything but the `format` field: read that first.
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let damaged = || {
        corrupt(format!(
            "{CURRENT_FILE} in {} is not a store format file",
            dir.display()
        ))
    };
    let format: Format = serde_json::from_slice(&bytes).map_err(|_| damaged())?;
    if format.format > STORE_FORMAT {
        return Err(StoreError::TooNew {
            found: format.format,
            supported: STORE_FORMAT,
        });
    }
    let current: Current = serde_json::from_slice(&bytes).map_err(|_| damaged())?;
    if current.format != STORE_FORMAT || store_number(OsStr::new(&current.store)).is_none() {
        return Err(damaged());
    }
    Ok(Some(current))
}

fn current_dir(dir: &Path, current: &Current) -> Result<PathBuf, StoreError> {
    let path = dir.join(&current.store);
    if !path.is_dir() {
        return Err(corrupt(format!(
            "{CURRENT_FILE} in {} names {}, which is missing: the directory was only partly \
             restored",
            dir.display(),
            current.store
        )));
    }
    Ok(path)
}

/// Replaces `CURRENT` with one naming `store` (write a temporary file, sync it, rename it
/// over, sync the directory): after a crash it names the old store or the new one.
pub(super) fn write_current(dir: &Path, store: &str) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(&Current {
        format: STORE_FORMAT,
        store: store.to_owned(),
    })
    .map_err(|e| corrupt(format!("encoding {CURRENT_FILE}: {e}")))?;
    replace_file(dir, CURRENT_FILE, &bytes)
}

/// Atomically replaces `dir/name` with `bytes`, durably.
pub(super) fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok(())
}

/// The sled files at the top of `dir` (a format-1 store, or what a migration has not
/// moved yet).
fn sled_files(dir: &Path) -> Result<Vec<std::ffi::OsString>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let s = name.to_string_lossy();
        if SLED_FILES.contains(&s.as_ref()) || s.starts_with("snap.") {
            out.push(name);
        }
    }
    Ok(out)
}

fn top_record(dir: &Path) -> Result<TopRecord, StoreError> {
    let slots = DurableRecord::read(dir)?;
    Ok(if slots.is_empty() {
        TopRecord::None
    } else if slots.iter().all(|s| s.storage_id == MARKER_ID) {
        TopRecord::Marker
    } else {
        TopRecord::Store
    })
}

/// Writes the top-level marker unless it is there.
fn ensure_marker(dir: &Path) -> Result<(), StoreError> {
    if top_record(dir)? == TopRecord::Marker {
        return Ok(());
    }
    let slot = Slot {
        generation: 0,
        contents: Contents::default(),
        storage_id: MARKER_ID.to_owned(),
        committed: true,
    };
    replace_file(dir, RECORD_FILE, &encode(&slot))
}

/// A new format-2 directory: the marker, then `store-1` (created and made durable by its
/// open), then `CURRENT`. A crash before `CURRENT` leaves a marker and `store-1`, which the
/// next open takes as a migration to finish: the same end.
fn create(dir: &Path, config: &SledConfig) -> Result<(SledStore, Option<u32>), StoreError> {
    ensure_marker(dir)?;
    let name = store_name(1);
    let store = SledStore::open_in(&dir.join(&name), config, Some(dir))?;
    write_current(dir, &name)?;
    Ok((store, None))
}

/// Moves a format-1 store into `store-1` (or finishes doing so) and opens it.
fn migrate(
    dir: &Path,
    config: &SledConfig,
    top: &[std::ffi::OsString],
    record: TopRecord,
) -> Result<SledStore, StoreError> {
    let name = store_name(1);
    let target = dir.join(&name);
    if !target.exists() {
        // Not started yet: move only a whole store that no relay holds (the check takes
        // sled's lock and reads every entry against the record).
        SledStore::check(dir, config)?;
        if record == TopRecord::None {
            // A store without a record (never flushed with fsync): the marker goes first,
            // so no step of the move leaves a directory an old relay opens as empty.
            ensure_marker(dir)?;
        }
        std::fs::create_dir(&target)?;
        sync_dir(dir)?;
    }
    for file in top {
        std::fs::rename(dir.join(file), target.join(file))?;
    }
    sync_dir(&target)?;
    sync_dir(dir)?;
    if record == TopRecord::Store {
        // Copied, not moved: until CURRENT exists the top-level record keeps a format-1
        // relay from opening the directory as an empty store.
        let bytes = std::fs::read(dir.join(RECORD_FILE))?;
        replace_file(&target, RECORD_FILE, &bytes)?;
    }
    write_current(dir, &name)?;
    ensure_marker(dir)?;
    // The caller logs the migration (from the report), once.
    SledStore::open_in(&target, config, Some(dir))
}

/// Removes what a crash left: store directories `CURRENT` does not name (a rewrite's old
/// or unfinished copy) and temporary files.
pub(super) fn remove_stale(dir: &Path) -> Result<(), StoreError> {
    let Some(current) = read_current(dir)? else {
        return Ok(());
    };
    let mut removed = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str() == Some(current.store.as_str()) {
            continue;
        }
        if store_number(&name).is_some() && entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
            tracing::info!(
                dir = %name.to_string_lossy(),
                "removed a store directory an interrupted rewrite left"
            );
            removed = true;
        } else if name.to_string_lossy().ends_with(".tmp")
            && [CURRENT_FILE, RECORD_FILE]
                .iter()
                .any(|f| name.to_str() == Some(&format!("{f}.tmp")))
        {
            std::fs::remove_file(entry.path())?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}
