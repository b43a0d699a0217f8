//! A damaged store never passes for a whole one: the relay refuses to start with a clear
//! message (not a panic), and `cairn-relay check` says what is wrong.
//!
//! The directories are real relay stores written by the relay itself through clients, then
//! copied and damaged the ways a disk, a careless restore or a cut-off copy damage them.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::ROOT;
use cairn_sync::store::store_dir;
use common::client;

fn relay(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(args)
        .arg("--data")
        .arg(data)
        .env("CAIRN_LOG", "warn")
        .output()
        .expect("run the relay binary")
}

/// `serve` on a port nobody uses; a damaged store must stop it before it listens. A relay
/// still running after 20 s started on the store: it is killed and that is reported.
fn serve(data: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(["serve", "--open", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the relay binary");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child.kill().expect("kill the relay we started");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("relay output")
}

/// The sled log of the relay's data directory `data` (in the store directory its
/// `CURRENT` names).
fn db(data: &Path) -> std::path::PathBuf {
    store_dir(data).unwrap().join("db")
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

/// A store the relay wrote: 60 documents of 20 KB of text that does not compress, from two
/// clients, each acknowledged: about 1.2 MB, several of sled's 512 KiB segments. The relay
/// runs as its own process and is stopped with SIGTERM, so its lock is gone when it exits.
async fn written_store(dir: &Path) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(["serve", "--open", "--listen", &listen, "--data"])
        .arg(dir)
        .env("CAIRN_LOG", "warn")
        .spawn()
        .expect("run the relay binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(&listen).await.is_err() {
        assert!(Instant::now() < deadline, "the relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("ws://{listen}/");
    let (a, b) = (client("ana", &url), client("ben", &url));
    for i in 0..30u32 {
        for c in [&a, &b] {
            let text: String = common::incompressible(20_000, u64::from(i))
                .iter()
                .map(|b| char::from(b'a' + b % 26))
                .collect();
            let doc = c
                .create(move |tx| {
                    tx.put(ROOT, "minutes", text).unwrap();
                    Ok::<(), std::convert::Infallible>(())
                })
                .await
                .unwrap()
                .0;
            // A liveness bound, not a timing check: the machine may be busy.
            c.wait_acknowledged(doc, Duration::from_secs(60))
                .await
                .unwrap();
        }
    }
    a.shutdown().await;
    b.shutdown().await;
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(
        child.wait().unwrap().success(),
        "the relay did not stop cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_at_start_and_reported_by_check() {
    let original = tempfile::tempdir().unwrap();
    written_store(original.path()).await;

    let whole = relay(&["check"], original.path());
    assert!(whole.status.success(), "{}", common::output_text(&whole));
    assert!(
        common::output_text(&whole).contains("whole"),
        "{}",
        common::output_text(&whole)
    );

    // Cut off: the log cut short by 4 KiB, then by every further 64 KiB, one copy each.
    // A cut into what the database holds is refused at start and by `check`; a cut into
    // unused space leaves a store `check` finds whole (every key, matching its record).
    let len = std::fs::metadata(db(original.path())).unwrap().len();
    let (mut refused, mut whole_copies) = (0, 0);
    for cut_by in (0..len / (64 * 1024)).map(|k| 4096 + k * 64 * 1024) {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(original.path(), copy.path());
        std::fs::OpenOptions::new()
            .write(true)
            .open(db(copy.path()))
            .unwrap()
            .set_len(len - cut_by)
            .unwrap();
        let checked = relay(&["check"], copy.path());
        match checked.status.code() {
            Some(0) => whole_copies += 1,
            Some(2) => {
                refused += 1;
                assert!(
                    common::output_text(&checked).contains("DAMAGED"),
                    "{}",
                    common::output_text(&checked)
                );
                let started = serve(copy.path());
                let out = common::output_text(&started);
                assert_eq!(started.status.code(), Some(1), "cut by {cut_by}: {out}");
                assert!(out.contains("the store is damaged"), "{out}");
                assert!(out.contains("cairn-relay check"), "{out}");
            }
            other => panic!(
                "cut by {cut_by}: check exited {other:?}: {}",
                common::output_text(&checked)
            ),
        }
    }
    eprintln!("cut copies: {refused} refused, {whole_copies} whole (cut in unused space)");
    assert!(refused > 0, "no cut copy was found damaged");

    // Zeroed: 4 KiB of zeros at every 64 KiB of the log, one copy each. Each copy either
    // is refused (never a panic, exit 101) or still holds every document.
    let bytes = std::fs::read(db(original.path())).unwrap();
    let (mut refused, mut whole_copies) = (0, 0);
    for at in (0..bytes.len().saturating_sub(4096)).step_by(64 * 1024) {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(original.path(), copy.path());
        let mut damaged = bytes.clone();
        damaged[at..at + 4096].fill(0);
        std::fs::write(db(copy.path()), &damaged).unwrap();
        let checked = relay(&["check"], copy.path());
        match checked.status.code() {
            Some(0) => whole_copies += 1,
            Some(2) => {
                refused += 1;
                let started = serve(copy.path());
                assert_eq!(
                    started.status.code(),
                    Some(1),
                    "zeros at {at}: {}",
                    common::output_text(&started)
                );
            }
            other => panic!(
                "zeros at {at}: check exited {other:?}: {}",
                common::output_text(&checked)
            ),
        }
    }
    eprintln!("zeroed copies: {refused} refused, {whole_copies} whole (zeros in unused space)");
    assert!(refused > 0, "no zeroed copy was found damaged");
}

/// A store whose record says it made more durable than its database holds (the database
/// files restored from an older copy, the record left in place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_older_than_its_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    written_store(dir.path()).await;
    let older = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), older.path());
    written_store(dir.path()).await;
    std::fs::copy(
        store_dir(dir.path())
            .unwrap()
            .join(cairn_sync::store::RECORD_FILE),
        store_dir(older.path())
            .unwrap()
            .join(cairn_sync::store::RECORD_FILE),
    )
    .unwrap();
    let started = serve(older.path());
    assert_eq!(
        started.status.code(),
        Some(1),
        "{}",
        common::output_text(&started)
    );
    assert!(
        common::output_text(&started).contains("lost"),
        "{}",
        common::output_text(&started)
    );
}
