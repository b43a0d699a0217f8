//! Backup and restore of a relay's store.
//!
//! The round trip: a relay serves three clients that write throughout an online backup;
//! every change acknowledged before the backup started is in the restored store; then the
//! relay is replaced by one on the restored store (same address, new storage id) and the
//! clients, which went on writing after the backup, converge with it without losing those
//! later edits (they resend them). And the `backup`/`restore` commands refuse what they
//! must: a damaged file (nothing written), a non-empty directory, a restore that does not
//! say what to do with membership changes made after the backup.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use cairn_relay::backup::{backup, restore, RestoreArgs};
use cairn_sync::client::Client;
use cairn_sync::ids::DocumentId;
use cairn_sync::store::{open_data_dir, SledConfig, Storage};
use common::{client, config_from_flags, load_stored, SOON};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One acknowledged change: which document, which key, and whether the relay had shown it
/// held it before the backup started.
#[derive(Clone, Debug)]
struct Acked {
    doc: DocumentId,
    key: String,
    before_backup: bool,
}

/// Fills a new data directory with `docs` documents of `bytes` each under other ids, so the
/// backup takes long enough for writes to arrive while it runs.
fn filler(data: &Path, docs: usize, bytes: usize) {
    let (s, _) = open_data_dir(data, &SledConfig::default()).unwrap();
    for i in 0..docs {
        let key = vec![format!("filler{i:05}"), "snapshot".into(), "h".into()];
        s.put(&key, &common::incompressible(bytes, i as u64))
            .unwrap();
        if i % 64 == 63 {
            s.flush().unwrap();
        }
    }
    s.flush().unwrap();
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), cairn_relay::RelayError>>,
}

/// Starts an open relay on `data` listening on `listener`, keeping its state for backups.
async fn relay_on(data: &Path, listener: TcpListener) -> (cairn_relay::AppState, Running) {
    let addr = listener.local_addr().unwrap().to_string();
    let config = config_from_flags(&[
        "--listen",
        &addr,
        "--data",
        data.to_str().unwrap(),
        "--open",
    ]);
    let (state, store) = cairn_relay::start(&config).await.expect("the relay starts");
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(cairn_relay::serve(
        state.clone(),
        store,
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    (state, Running { stop, task })
}

/// Writes a change to `doc` under a new key and waits until the relay holds it.
async fn write(c: &Client, doc: DocumentId, key: String, started: &AtomicBool) -> Acked {
    let k = key.clone();
    c.change(doc, move |tx| tx.put(ROOT, k, 1)).await.unwrap();
    c.wait_acknowledged(doc, SOON)
        .await
        .expect("the relay acknowledges");
    Acked {
        doc,
        key,
        before_backup: !started.load(Ordering::SeqCst),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_clients_write_restores_and_the_clients_converge() {
    let dir = tempfile::tempdir().unwrap();
    let (data, backups, restored) = (
        dir.path().join("data"),
        dir.path().join("backups"),
        dir.path().join("restored"),
    );
    filler(&data, 400, 32 * 1024);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("ws://{addr}/");
    let (state, relay) = relay_on(&data, listener).await;

    let writers: Vec<Client> = ["ana", "ben", "cho"]
        .iter()
        .map(|n| client(&format!("{n}/phone"), &url))
        .collect();
    let mut docs = Vec::new();
    for c in &writers {
        let doc = c
            .create(|tx| tx.put(ROOT, "title", "minutes").map(|_| ()))
            .await
            .unwrap()
            .0;
        c.wait_acknowledged(doc, SOON).await.unwrap();
        docs.push(doc);
    }

    // Each writer writes and waits for each acknowledgement until told to stop.
    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let mut tasks = Vec::new();
    for (w, (c, doc)) in writers.iter().zip(&docs).enumerate() {
        let (c, doc) = (c.clone(), *doc);
        let (started, stop, log) = (started.clone(), stop.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let acked = write(&c, doc, format!("w{w}-{i}"), &started).await;
                log.lock().unwrap().push(acked);
                i += 1;
            }
        }));
    }
    // Some changes acknowledged before the backup.
    let deadline = Instant::now() + SOON;
    while log.lock().unwrap().len() < 30 {
        assert!(Instant::now() < deadline, "the writers did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let inside = data.join("backups");
    assert!(
        backup(&state, &inside).await.is_err(),
        "a backup into the data directory was taken"
    );
    assert!(!inside.exists());
    started.store(true, Ordering::SeqCst);
    let taken = Instant::now();
    let done = backup(&state, &backups).await.expect("the backup");
    eprintln!(
        "backup: {} keys, {} bytes of values in {:?}, {} changes acknowledged by then",
        done.report.keys,
        done.report.bytes,
        taken.elapsed(),
        log.lock().unwrap().len()
    );
    assert!(done.path.starts_with(&backups));
    assert!(done
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .ends_with(".cairnbak"));
    // Later edits: every writer goes on for a while after the backup.
    let after = log.lock().unwrap().len();
    let deadline = Instant::now() + SOON;
    while log.lock().unwrap().len() < after + 30 {
        assert!(
            Instant::now() < deadline,
            "the writers stalled after the backup"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = log.lock().unwrap().clone();
    let _ = relay.stop.send(());
    relay.task.await.unwrap().expect("the relay stops cleanly");

    // The restore (the relay stopped; membership does not matter to an open relay).
    let args = RestoreArgs {
        from: done.path.clone(),
        data: restored.clone(),
        replay_audit: None,
        membership_as_of_backup: true,
    };
    let r = tokio::task::spawn_blocking(move || restore(&args))
        .await
        .unwrap()
        .expect("the restore");
    assert_ne!(r.storage_id.as_str(), r.header.source_storage_id);

    // Every change acknowledged before the backup started is in the restored store.
    let stored = load_stored(&restored, &docs).await;
    let before: Vec<&Acked> = acked.iter().filter(|a| a.before_backup).collect();
    assert!(!before.is_empty());
    for a in &before {
        let (_, am) = stored.iter().find(|(d, _)| *d == a.doc).unwrap();
        assert!(
            am.get(ROOT, &a.key).unwrap().is_some(),
            "{} acknowledged before the backup is not in the restored store",
            a.key
        );
    }

    // The restored relay on the same address: the writers reconnect on their own and
    // resend what it lacks; a new reader sees every change, later edits included.
    let listener = TcpListener::bind(addr).await.expect("rebind the address");
    let (_state2, relay2) = relay_on(&restored, listener).await;
    let reader = client("dee/laptop", &url);
    for (w, doc) in docs.iter().enumerate() {
        reader
            .find(*doc, SOON)
            .await
            .expect("the reader finds the document");
        let keys: Vec<String> = acked
            .iter()
            .filter(|a| a.doc == *doc)
            .map(|a| a.key.clone())
            .collect();
        let n = keys.len();
        reader
            .wait_for(*doc, SOON, move |d| {
                keys.iter().all(|k| d.get(ROOT, k).ok().flatten().is_some())
            })
            .await
            .unwrap_or_else(|e| {
                panic!("writer {w}'s {n} acknowledged changes did not all reach the restored relay: {e}")
            });
    }
    // And it goes on both ways: a change from the reader reaches a writer.
    reader
        .change(docs[0], |tx| tx.put(ROOT, "after-restore", 1))
        .await
        .unwrap();
    writers[0]
        .wait_for(docs[0], SOON, |d| {
            d.get(ROOT, "after-restore").ok().flatten().is_some()
        })
        .await
        .expect("the writer sees a change made on the restored relay");
    eprintln!(
        "{} changes acknowledged, {} before the backup",
        acked.len(),
        before.len()
    );
    for c in writers.iter().chain([&reader]) {
        c.shutdown().await;
    }
    let _ = relay2.stop.send(());
    relay2.task.await.unwrap().unwrap();
}

fn relay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(args)
        .env("CAIRN_LOG", "warn")
        .output()
        .expect("run the relay binary")
}

#[test]
fn backup_and_restore_commands_refuse_what_they_must() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let key = vec!["doc1".to_owned(), "snapshot".to_owned(), "h".to_owned()];
    let old_id = {
        let (s, _) = open_data_dir(Path::new(&p("data")), &SledConfig::default()).unwrap();
        s.put(&key, b"kept").unwrap();
        s.flush().unwrap();
        s.storage_id().unwrap()
    };
    let out = relay(&[
        "backup",
        "--data",
        &p("data"),
        "--to",
        &p("data/inside.cairnbak"),
    ]);
    assert!(
        !out.status.success(),
        "a backup inside the data directory: {}",
        common::output_text(&out)
    );
    let out = relay(&["backup", "--data", &p("data"), "--to", &p("b.cairnbak")]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let out = relay(&["backup", "--data", &p("data"), "--to", &p("b.cairnbak")]);
    assert!(
        !out.status.success(),
        "a backup replaced a file: {}",
        common::output_text(&out)
    );

    // Without a membership choice: refused, saying why, nothing written.
    let out = relay(&["restore", "--from", &p("b.cairnbak"), "--data", &p("r1")]);
    assert!(!out.status.success());
    assert!(
        common::output_text(&out).contains("would come back"),
        "{}",
        common::output_text(&out)
    );
    assert!(!Path::new(&p("r1")).exists());

    // Damaged copies: refused before anything is written.
    let bytes = std::fs::read(p("b.cairnbak")).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x20;
    for (name, b) in [
        ("cut.cairnbak", &bytes[..bytes.len() - 1]),
        ("flipped.cairnbak", &flipped[..]),
    ] {
        std::fs::write(p(name), b).unwrap();
        let out = relay(&[
            "restore",
            "--from",
            &p(name),
            "--data",
            &p("r2"),
            "--membership-as-of-backup",
        ]);
        assert!(!out.status.success(), "{name} was restored");
        assert!(
            common::output_text(&out).contains("nothing was written"),
            "{name}: {}",
            common::output_text(&out)
        );
        assert!(
            !Path::new(&p("r2")).exists(),
            "{name}: something was written"
        );
    }

    // Into a directory that holds something: refused.
    std::fs::create_dir(p("full")).unwrap();
    std::fs::write(dir.path().join("full/x"), b"x").unwrap();
    let out = relay(&[
        "restore",
        "--from",
        &p("b.cairnbak"),
        "--data",
        &p("full"),
        "--membership-as-of-backup",
    ]);
    assert!(!out.status.success());
    assert!(
        common::output_text(&out).contains("not empty"),
        "{}",
        common::output_text(&out)
    );

    // The real thing: a whole store under a new id.
    let out = relay(&[
        "restore",
        "--from",
        &p("b.cairnbak"),
        "--data",
        &p("r3"),
        "--membership-as-of-backup",
    ]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    assert!(
        common::output_text(&out).contains("new storage id"),
        "{}",
        common::output_text(&out)
    );
    let (s, _) = open_data_dir(Path::new(&p("r3")), &SledConfig::default()).unwrap();
    assert_eq!(s.load(&key).unwrap(), Some(b"kept".to_vec()));
    assert_ne!(s.storage_id().unwrap(), old_id);
}
