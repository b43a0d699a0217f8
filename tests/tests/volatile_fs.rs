//! The volatile filesystem of the power-cut tests, driven with plain `std::fs`: it forgets
//! exactly what a POSIX disk may forget at a power cut, and sled 0.34.7 (under
//! `SledStore`) runs on it.
//!
//! These tests need FUSE (`/dev/fuse`, root or `fusermount3`): without it they fail with
//! the reason, they do not skip.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use cairn_sync::store::{SledConfig, SledStore, Storage};
use cairn_tests::volatile_fs::{VolatileFs, VolatileFsError};

fn mount() -> VolatileFs {
    VolatileFs::mount_temp().unwrap_or_else(|e| panic!("{e}"))
}

/// `fsync` of a directory, the way a careful store makes a new name durable.
fn sync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync of directory {}: {e}", dir.display()));
}

/// Writes a new file, fsyncs it and its directory: everything about it is durable.
fn durable_file(dir: &Path, name: &str, bytes: &[u8]) {
    let mut f = File::create(dir.join(name)).expect("create");
    f.write_all(bytes).expect("write");
    f.sync_all().expect("fsync");
    sync_dir(dir);
}

#[test]
fn an_unsynced_write_is_lost_and_a_synced_one_survives() {
    let mut fs = mount();
    let root = fs.path().to_owned();
    durable_file(&root, "log", b"synced");
    // Appended without fsync: readable now (so the write did reach the filesystem) ...
    let f = OpenOptions::new()
        .write(true)
        .open(root.join("log"))
        .expect("open");
    f.write_all_at(b" and then not", 6).expect("write");
    drop(f);
    assert_eq!(
        fs::read(root.join("log")).expect("read"),
        b"synced and then not"
    );
    // ... and a data-only sync of another file keeps that one.
    durable_file(&root, "other", b"");
    let g = OpenOptions::new()
        .write(true)
        .open(root.join("other"))
        .expect("open");
    g.write_all_at(b"kept by fdatasync", 0).expect("write");
    g.sync_data().expect("fdatasync");
    drop(g);

    let report = fs.cut().expect("power cut");

    assert_eq!(fs::read(root.join("log")).expect("read"), b"synced");
    assert_eq!(
        fs::read(root.join("other")).expect("read"),
        b"kept by fdatasync"
    );
    assert_eq!(report.files_rolled_back, 1);
    assert_eq!(
        report.bytes_forgotten, 13,
        "the unsynced tail is what was forgotten"
    );
    assert_eq!(fs.stats().cuts, 1);
}

#[test]
fn a_file_whose_directory_was_not_synced_is_gone() {
    let mut fs = mount();
    let root = fs.path().to_owned();
    fs::create_dir(root.join("db")).expect("mkdir");
    sync_dir(&root);
    let mut f = File::create(root.join("db/blob")).expect("create");
    f.write_all(&[7u8; 200_000]).expect("write");
    f.sync_all()
        .expect("fsync of the file, not of its directory");
    drop(f);
    fs::create_dir(root.join("never-synced-dir")).expect("mkdir");

    let report = fs.cut().expect("power cut");

    assert!(
        !root.join("db/blob").exists(),
        "the blob's name was never durable"
    );
    assert!(!root.join("never-synced-dir").exists());
    assert!(
        root.join("db").is_dir(),
        "the directory's own name was synced"
    );
    assert_eq!(report.files_forgotten, 1);
    assert_eq!(report.bytes_forgotten, 200_000);
}

#[test]
fn a_name_synced_before_its_data_holds_the_last_durable_bytes() {
    let mut fs = mount();
    let root = fs.path().to_owned();
    fs::write(root.join("conf"), b"never synced").expect("write");
    sync_dir(&root);
    fs.cut().expect("power cut");
    assert_eq!(
        fs::read(root.join("conf")).expect("read"),
        b"",
        "the name only"
    );
}

#[test]
fn a_rename_without_a_directory_sync_is_undone() {
    let mut fs = mount();
    let root = fs.path().to_owned();
    durable_file(&root, "snap.tmp", b"new snapshot");
    durable_file(&root, "snap", b"old snapshot");
    fs::rename(root.join("snap.tmp"), root.join("snap")).expect("rename");
    assert_eq!(fs::read(root.join("snap")).expect("read"), b"new snapshot");

    let report = fs.cut().expect("power cut");

    assert_eq!(fs::read(root.join("snap")).expect("read"), b"old snapshot");
    assert_eq!(
        fs::read(root.join("snap.tmp")).expect("read"),
        b"new snapshot"
    );
    assert_eq!(
        report.entries_forgotten, 2,
        "both names of the rename are undone"
    );
}

#[test]
fn a_synced_rename_is_kept() {
    let mut fs = mount();
    let root = fs.path().to_owned();
    durable_file(&root, "snap", b"old snapshot");
    let mut f = File::create(root.join("snap.tmp")).expect("create");
    f.write_all(b"new snapshot").expect("write");
    fs::rename(root.join("snap.tmp"), root.join("snap")).expect("rename");
    // The file's data after the rename, then its directory: sled's snapshot order with
    // the syncs a durable store needs.
    f.sync_all().expect("fsync");
    drop(f);
    sync_dir(&root);
    let report = fs.cut().expect("power cut");
    assert_eq!(fs::read(root.join("snap")).expect("read"), b"new snapshot");
    assert!(!root.join("snap.tmp").exists());
    assert_eq!(report, Default::default(), "nothing was left to forget");
}

#[test]
fn a_full_disk_refuses_growth_with_enospc() {
    let fs = mount();
    let root = fs.path().to_owned();
    fs.set_capacity(Some(64 * 1024));
    let mut f = File::create(root.join("big")).expect("create");
    f.write_all(&[1u8; 60 * 1024]).expect("fits");
    let e = f
        .write_all(&[2u8; 8 * 1024])
        .expect_err("past the capacity");
    assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
    let e = f.set_len(128 * 1024).expect_err("growing by truncate");
    assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
    // Overwriting in place and freeing space still work.
    f.write_all_at(&[3u8; 1024], 0).expect("overwrite");
    drop(f);
    fs::remove_file(root.join("big")).expect("remove");
    fs::write(root.join("small"), [4u8; 32 * 1024]).expect("space was freed");
    fs.set_capacity(None);
    fs::write(root.join("large"), vec![5u8; 1 << 20]).expect("no limit any more");
    let stats = fs.stats();
    assert_eq!(stats.no_space, 2);
    assert_eq!(stats.used_bytes, 32 * 1024 + (1 << 20));
}

#[test]
fn a_cut_refuses_while_a_file_is_open() {
    let mut fs = mount();
    let root = fs.path().to_owned();
    let open = File::create(root.join("held")).expect("create");
    match fs.cut() {
        Err(VolatileFsError::Busy { .. }) => {}
        other => panic!("a cut with an open file must fail as busy, got {other:?}"),
    }
    drop(open);
    fs.cut().expect("power cut once nothing is open");
    assert!(!root.join("held").exists());
}

/// sled 0.34.7 (behind `SledStore`) works on the mount: open, insert small and
/// blob-sized values, flush, reopen, read back; and what it flushed outlives a cut.
#[test]
fn sled_runs_on_the_volatile_filesystem() {
    let mut fs = mount();
    let data = fs.path().join("store");
    let key = |s: &str| vec!["doc".to_owned(), "incremental".to_owned(), s.to_owned()];
    // Over sled's blob threshold (a quarter of a 512 KiB segment): goes to a blob file.
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let id = {
        let store = SledStore::open(&data, &SledConfig::default()).expect("open");
        store.put(&key("small"), b"small value").expect("put");
        store.put(&key("blob"), &blob).expect("put");
        store.flush().expect("flush");
        store.storage_id().expect("storage id")
    };
    // sled lets go of its lock when its flusher thread ends, a moment after the drop.
    wait_unlocked(&data.join("db"));
    {
        let store = SledStore::open(&data, &SledConfig::default()).expect("reopen");
        assert_eq!(store.storage_id().expect("storage id"), id);
        assert_eq!(
            store.load(&key("small")).expect("load").as_deref(),
            Some(&b"small value"[..])
        );
        assert_eq!(store.load(&key("blob")).expect("load"), Some(blob));
    }
    wait_unlocked(&data.join("db"));
    let report = fs.cut().expect("power cut");
    let stats = fs.stats();
    eprintln!("sled on the volatile filesystem: {stats:?}; the cut forgot {report:?}");
    // `SledStore::flush` makes its writes durable, so they outlive the cut.
    let store = SledStore::open(&data, &SledConfig::default()).expect("reopen after a cut");
    assert_eq!(store.storage_id().expect("storage id"), id);
    assert_eq!(
        store.load(&key("blob")).expect("load").map(|b| b.len()),
        Some(300_000)
    );
}

/// Waits (at most 10 s) until nothing holds the lock on the sled file `db`.
fn wait_unlocked(db: &std::path::Path) {
    let file = std::fs::File::open(db).expect("the store's db file");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while file.try_lock().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store stays locked"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = file.unlock();
}
