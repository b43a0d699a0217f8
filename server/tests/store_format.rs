//! The data directory's format through the real binary: a relay migrates a store of
//! format 1 (sled directly in the data directory) and says so once, keeping every key and
//! the storage id; a directory of a newer format is refused with both versions named.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_sync::store::{open_data_dir, SledConfig, SledStore, Storage, CURRENT_FILE};

const MIGRATED: &str = "migrated the store from format 1 to 2";

fn relay(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(args)
        .arg("--data")
        .arg(data)
        .env("CAIRN_LOG", "info")
        .output()
        .expect("run the relay binary")
}

/// Runs `serve --open` on `data` until it logs that it listens, kills it and returns
/// everything it logged.
fn serve_once(data: &Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(["serve", "--open", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("CAIRN_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the relay binary");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("listening") {
                    break;
                }
            }
            Err(_) if child.try_wait().unwrap().is_some() => panic!("the relay exited:\n{log}"),
            Err(_) => assert!(Instant::now() < deadline, "the relay did not start:\n{log}"),
        }
    }
    // Killed: what it logged at start is all this test reads, and the store is durable.
    child.kill().expect("kill the relay we started");
    child.wait().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        log.push_str(&line);
        log.push('\n');
    }
    log
}

#[test]
fn a_format_1_store_is_migrated_once_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let key = vec!["doc1".to_owned(), "snapshot".to_owned(), "h".to_owned()];
    let value = vec![7u8; 20_000];
    let id = {
        // Today's layout, as a relay of format 1 wrote it.
        let s = SledStore::open(data, &SledConfig::default()).unwrap();
        s.put(&key, &value).unwrap();
        s.flush().unwrap();
        s.storage_id().unwrap()
    };
    let checked = relay(&["check"], data);
    assert!(
        checked.status.success(),
        "{}",
        common::output_text(&checked)
    );
    assert!(
        !data.join(CURRENT_FILE).exists(),
        "check changed the layout"
    );

    let first = serve_once(data);
    assert_eq!(first.matches(MIGRATED).count(), 1, "{first}");
    let second = serve_once(data);
    assert!(!second.contains(MIGRATED), "migrated again:\n{second}");

    let checked = relay(&["check"], data);
    assert!(
        checked.status.success(),
        "{}",
        common::output_text(&checked)
    );
    let (s, report) = open_data_dir(data, &SledConfig::default()).unwrap();
    assert_eq!(report.migrated_from, None);
    assert_eq!(s.load(&key).unwrap(), Some(value));
    assert_eq!(
        s.storage_id().unwrap(),
        id,
        "the migration changed the storage id"
    );
}

#[test]
fn a_newer_store_format_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(CURRENT_FILE),
        br#"{"format":3,"store":"store-1"}"#,
    )
    .unwrap();
    for args in [
        &["serve", "--open", "--listen", "127.0.0.1:0"][..],
        &["check"],
    ] {
        let out = relay(args, dir.path());
        let t = common::output_text(&out);
        assert!(
            !out.status.success(),
            "{args:?} accepted a newer store:\n{t}"
        );
        assert!(
            t.contains("format 3") && t.contains("up to 2") && t.contains("at least as new"),
            "{args:?}: {t}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "something was written beside the newer store"
    );
}
