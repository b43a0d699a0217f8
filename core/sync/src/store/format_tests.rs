//! The data directory's format, migration, rewrite, backup and restore.

use std::path::{Path, PathBuf};

use super::*;

fn k(parts: &[&str]) -> StorageKey {
    parts.iter().map(|s| s.to_string()).collect()
}

fn config() -> SledConfig {
    SledConfig {
        cache_capacity: 8 * 1024 * 1024,
        reserve_bytes: 1024 * 1024,
        ..SledConfig::default()
    }
}

/// Values of several sizes, some long enough to be stored in pieces.
fn fill(s: &SledStore, doc: &str, n: usize, tag: &str) -> Vec<(StorageKey, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let key = k(&[doc, "incremental", &format!("h{i}")]);
        let mut v = format!("{tag}-{i}-").into_bytes();
        v.resize(100 + i * 3000, b'x' + (i % 3) as u8);
        s.put(&key, &v).unwrap();
        out.push((key, v));
    }
    s.flush().unwrap();
    out
}

fn assert_holds(s: &SledStore, want: &[(StorageKey, Vec<u8>)]) {
    for (key, v) in want {
        assert_eq!(s.load(key).unwrap().as_ref(), Some(v), "{key:?}");
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

/// Files under `dir` whose bytes contain `needle`.
fn containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// What a relay of format 1 does with the directory: open it in place.
fn old_relay_refuses(dir: &Path, when: &str) {
    match SledStore::open(dir, &config()) {
        Err(StoreError::Corrupt { .. }) => {}
        Err(e) => panic!("{when}: a format-1 open failed otherwise: {e}"),
        Ok(_) => panic!("{when}: a format-1 relay opened the directory as a store"),
    }
    assert!(SledStore::check(dir, &config()).is_err(), "{when}: check");
}

/// A format-1 store written by today's layout (sled in the directory itself).
fn format_1(dir: &Path) -> (Vec<(StorageKey, Vec<u8>)>, StorageId) {
    let s = SledStore::open(dir, &config()).unwrap();
    let id = s.storage_id().unwrap();
    (fill(&s, "docA", 6, "one"), id)
}

#[test]
fn a_new_data_dir_is_format_2_and_a_format_1_relay_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (s, report) = open_data_dir(&data, &config()).unwrap();
    assert_eq!(
        report,
        DataDirReport {
            format: 2,
            migrated_from: None
        }
    );
    let want = fill(&s, "docA", 3, "x");
    drop(s);
    let current = std::fs::read_to_string(data.join(CURRENT_FILE)).unwrap();
    assert!(current.contains("\"format\":2"), "{current}");
    old_relay_refuses(&data, "a new directory");
    let (s, report) = open_data_dir(&data, &config()).unwrap();
    assert_eq!(report.migrated_from, None);
    assert_holds(&s, &want);
    drop(s);
    let (checked, format) = check_data_dir(&data, &config()).unwrap();
    assert_eq!((checked.keys, format), (3, 2));
}

#[test]
fn a_format_1_store_is_migrated_with_its_data_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let (want, id) = format_1(dir.path());
    assert_eq!(check_data_dir(dir.path(), &config()).unwrap().1, 1);
    let (s, report) = open_data_dir(dir.path(), &config()).unwrap();
    assert_eq!(report.migrated_from, Some(1));
    assert_eq!(report.format, 2);
    assert_holds(&s, &want);
    assert_eq!(s.storage_id().unwrap(), id);
    s.put(&k(&["docB", "snapshot", "s"]), b"after").unwrap();
    s.flush().unwrap();
    drop(s);
    assert!(dir.path().join("store-1").join("db").exists());
    assert!(!dir.path().join("db").exists());
    old_relay_refuses(dir.path(), "after the migration");
    let (s, report) = open_data_dir(dir.path(), &config()).unwrap();
    assert_eq!(report.migrated_from, None, "migrated twice");
    assert_holds(&s, &want);
    assert_eq!(
        s.load(&k(&["docB", "snapshot", "s"])).unwrap(),
        Some(b"after".to_vec())
    );
}

/// A crash at each step of the migration: the format-1 relay still refuses the directory,
/// and the next open finishes the migration with every key.
#[test]
fn an_interrupted_migration_finishes_on_the_next_open() {
    for step in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let (want, id) = format_1(data);
        let target = data.join("store-1");
        // The migration's own moves, by hand, stopped after `step`.
        std::fs::create_dir(&target).unwrap();
        if step >= 1 {
            std::fs::rename(data.join("db"), target.join("db")).unwrap();
        }
        if step >= 2 {
            for entry in std::fs::read_dir(data).unwrap() {
                let name = entry.unwrap().file_name();
                let s = name.to_string_lossy();
                if s == "conf" || s == "blobs" || s.starts_with("snap.") {
                    std::fs::rename(data.join(&name), target.join(&name)).unwrap();
                }
            }
        }
        if step >= 3 {
            std::fs::copy(data.join(RECORD_FILE), target.join(RECORD_FILE)).unwrap();
        }
        if step >= 1 {
            old_relay_refuses(data, &format!("migration stopped after step {step}"));
        }
        let (s, report) = open_data_dir(data, &config())
            .unwrap_or_else(|e| panic!("stopped after step {step}: {e}"));
        assert_eq!(report.migrated_from, Some(1), "step {step}");
        assert_holds(&s, &want);
        assert_eq!(s.storage_id().unwrap(), id, "step {step}");
        drop(s);
        old_relay_refuses(data, &format!("finished after step {step}"));
    }
}

#[test]
fn a_newer_format_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(CURRENT_FILE),
        br#"{"format":3,"store":"elsewhere","more":true}"#,
    )
    .unwrap();
    let err = open_data_dir(dir.path(), &config()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooNew {
                found: 3,
                supported: 2
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("format 3") && message.contains("up to 2"),
        "{message}"
    );
    assert!(message.contains("at least as new"), "{message}");
    assert!(matches!(
        check_data_dir(dir.path(), &config()),
        Err(StoreError::TooNew { .. })
    ));
    // Nothing was created beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

const CANARY: &str = "CANARY-erased-7f3a9c";

/// A store holding documents whose values carry [`CANARY`] (some in pieces), deleted and
/// flushed, and a kept document.
fn with_deleted_canaries(data: &Path) -> (SledStore, Vec<(StorageKey, Vec<u8>)>) {
    let (s, _) = open_data_dir(data, &config()).unwrap();
    s.storage_id().unwrap();
    let kept = fill(&s, "docKept", 5, "kept");
    let gone = fill(&s, "docGone", 5, CANARY);
    for (key, _) in &gone {
        s.delete(key).unwrap();
    }
    s.flush().unwrap();
    (s, kept)
}

#[test]
fn a_rewrite_leaves_no_deleted_bytes_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (s, kept) = with_deleted_canaries(&data);
    assert!(
        !containing(&data, CANARY.as_bytes()).is_empty(),
        "the deleted values are not in the files before the rewrite: the search proves nothing"
    );
    let sizes = s.document_sizes().unwrap();
    let kept_bytes: u64 = kept.iter().map(|(_, v)| v.len() as u64).sum();
    assert_eq!(sizes.get("docKept"), Some(&kept_bytes));
    assert_eq!(sizes.get("docGone"), None);
    let report = s.rewrite().unwrap();
    // The kept document, and the storage id.
    assert_eq!(report.keys, kept.len() as u64 + 1);
    let found = containing(&data, CANARY.as_bytes());
    assert!(found.is_empty(), "deleted bytes remain in {found:?}");
    // The store goes on in the new directory.
    assert_holds(&s, &kept);
    s.put(&k(&["docNew", "snapshot", "a"]), b"later").unwrap();
    s.flush().unwrap();
    let id = s.storage_id().unwrap();
    drop(s);
    assert!(!data.join("store-1").exists());
    let (checked, _) = check_data_dir(&data, &config()).unwrap();
    assert_eq!(checked.keys, kept.len() as u64 + 2);
    let (s, _) = open_data_dir(&data, &config()).unwrap();
    assert_holds(&s, &kept);
    assert_eq!(s.storage_id().unwrap(), id);
    assert_eq!(
        s.load(&k(&["docNew", "snapshot", "a"])).unwrap(),
        Some(b"later".to_vec())
    );
    // A second rewrite goes on numbering.
    s.rewrite().unwrap();
    assert!(data.join("store-3").exists() && !data.join("store-2").exists());
}

/// A crash during a rewrite leaves two store directories; the next open uses the one
/// CURRENT names and removes the other.
#[test]
fn after_a_crash_in_a_rewrite_current_decides_and_the_other_copy_goes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let before = dir.path().join("before");
    let (s, kept) = with_deleted_canaries(&data);
    drop(s);
    copy_dir(&data, &before);
    let (s, _) = open_data_dir(&data, &config()).unwrap();
    s.rewrite().unwrap();
    s.put(&k(&["docNew", "snapshot", "a"]), b"only in store-2")
        .unwrap();
    s.flush().unwrap();
    drop(s);

    // Crashed after the copy, before CURRENT switched: store-1 stays current.
    let early = dir.path().join("early");
    copy_dir(&before, &early);
    copy_dir(&data.join("store-2"), &early.join("store-2"));
    let (s, _) = open_data_dir(&early, &config()).unwrap();
    assert_holds(&s, &kept);
    assert_eq!(s.load(&k(&["docNew", "snapshot", "a"])).unwrap(), None);
    drop(s);
    assert!(
        !early.join("store-2").exists(),
        "the unfinished copy stayed"
    );

    // Crashed after CURRENT switched, before the old directory went: store-2 is current.
    let late = dir.path().join("late");
    copy_dir(&data, &late);
    copy_dir(&before.join("store-1"), &late.join("store-1"));
    let (s, _) = open_data_dir(&late, &config()).unwrap();
    assert_holds(&s, &kept);
    assert_eq!(
        s.load(&k(&["docNew", "snapshot", "a"])).unwrap(),
        Some(b"only in store-2".to_vec())
    );
    drop(s);
    assert!(!late.join("store-1").exists(), "the old store stayed");
    assert!(
        containing(&late, CANARY.as_bytes()).is_empty(),
        "deleted bytes came back"
    );
}

#[test]
fn a_store_opened_outside_a_data_dir_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), &config()).unwrap();
    assert!(matches!(s.rewrite(), Err(StoreError::Io(_))));
}

#[test]
fn a_backup_restores_every_key_under_a_new_id_and_a_damaged_one_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open_data_dir(&dir.path().join("data"), &config()).unwrap();
    let old_id = s.storage_id().unwrap();
    let mut want = fill(&s, "docA", 4, "a");
    want.extend(fill(&s, "docB", 3, "b"));
    // Not flushed yet: a backup sees the store as its next flush will make it.
    s.put(&k(&["cairn-membership", "group", "g1"]), b"{}")
        .unwrap();
    want.push((k(&["cairn-membership", "group", "g1"]), b"{}".to_vec()));
    let file = dir.path().join("b.cairnbak");
    let report = s
        .backup_to(std::fs::File::create(&file).unwrap(), 1234)
        .unwrap();
    assert_eq!(report.keys, want.len() as u64 + 1);
    assert_eq!(report.taken_ms, 1234);
    let header = verify_backup(&file).unwrap();
    assert_eq!(header.source_storage_id, old_id.as_str());
    assert_eq!(header.store_format, 2);

    let bytes = std::fs::read(&file).unwrap();
    let damaged = [
        ("cut short", bytes[..bytes.len() - 100].to_vec()),
        ("a flipped byte", {
            let mut b = bytes.clone();
            let at = b.len() / 2;
            b[at] ^= 1;
            b
        }),
        ("a flipped trailer", {
            let mut b = bytes.clone();
            let at = b.len() - 1;
            b[at] ^= 1;
            b
        }),
        ("empty", Vec::new()),
    ];
    for (what, b) in damaged {
        let bad = dir.path().join("bad.cairnbak");
        std::fs::write(&bad, &b).unwrap();
        let target = dir.path().join("restored-bad");
        let err = restore_backup(&bad, &target, &config()).unwrap_err();
        assert!(matches!(err, StoreError::BadBackup { .. }), "{what}: {err}");
        assert!(!target.exists(), "{what}: the restore wrote something");
    }

    let target = dir.path().join("restored");
    let (r, header, restored) = restore_backup(&file, &target, &config()).unwrap();
    assert_eq!(header.taken_ms, 1234);
    assert_eq!(restored.keys, want.len() as u64);
    assert_holds(&r, &want);
    assert_ne!(r.storage_id().unwrap(), old_id);
    drop(r);
    assert!(check_data_dir(&target, &config()).is_ok());

    // Into a directory that holds anything: refused, untouched.
    let err = restore_backup(&file, &target, &config()).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

/// A store held open refuses a second open with the lock error the relay turns into "in
/// use", and a store closed in this process opens again at once, however soon: sled lets
/// go of its lock only when its last background write does (CI once saw a check right
/// after a close fail on the lock).
#[test]
fn a_store_held_open_is_locked_and_opens_again_right_after_it_closes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (s, _) = open_data_dir(&data, &config()).unwrap();
    let err = check_data_dir(&data, &config()).unwrap_err();
    assert!(err.is_locked(), "not a lock error: {err}");
    drop(s);
    for round in 0..30 {
        let (s, _) = open_data_dir(&data, &config()).unwrap();
        fill(&s, &format!("doc{round}"), 3, "x");
        s.flush().unwrap();
        drop(s);
        let (checked, _) = check_data_dir(&data, &config()).unwrap();
        assert!(checked.keys >= 3 * (round + 1));
    }
}
