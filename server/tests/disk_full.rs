//! A full disk reaches the user and loses nothing: the relay refuses the change (never
//! acknowledges it) and counts it in `cairn_storage_errors_total{kind="disk_full"}`; the
//! phone's `Client::change` returns `StorageFull`. Once space is freed both go on, and the
//! refused change arrives when the client resends it.
//!
//! The data directories sit on a real filesystem that fills up: a small tmpfs mounted by
//! the test (CI runs as root).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::ROOT;
use cairn_sync::client::{ChangeError, Client, ClientConfig, ClientError};
use cairn_sync::store::{SledConfig, SledStore};
use common::{client, metric_value, Relay, SOON};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tmpfs of `mb` MiB mounted on a temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mb: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "cairn-test"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Fills what is left with one file, which `free` removes.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path("filler")).unwrap();
        let block = vec![0x5au8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

async fn metrics(relay: &Relay) -> String {
    let mut s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Text big enough to need new space on the disk (and over sled's blob threshold).
fn big(seed: u64) -> String {
    common::incompressible(300 * 1024, seed)
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_refuses_a_change_on_a_full_disk_and_takes_it_once_there_is_room() {
    let disk = SmallDisk::mount(16);
    let relay = Relay::start(&disk.path("relay"), &["--min-free-mb", "2"]).await;
    let url = relay.url();
    let ana = client("ana/phone", &url);
    let doc = ana
        .create(|tx| {
            tx.put(ROOT, "title", "minutes").unwrap();
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap()
        .0;
    ana.wait_acknowledged(doc, SOON).await.unwrap();

    disk.fill();
    let text = big(1);
    let ((), heads) = ana
        .change_with_heads(doc, move |tx| {
            tx.put(ROOT, "notes", text.as_str()).map(|_| ())
        })
        .await
        .unwrap();
    // Not acknowledged while the disk is full.
    assert!(
        ana.wait_acknowledged(doc, Duration::from_secs(3))
            .await
            .is_err(),
        "the relay acknowledged a change it could not store"
    );
    let m = metrics(&relay).await;
    let full = metric_value(&m, "cairn_storage_errors_total{kind=\"disk_full\"}").unwrap_or(0.0);
    assert!(full >= 1.0, "no disk_full storage error counted:\n{m}");

    // Room again: the client resends on its own and the relay keeps it.
    disk.free();
    let mut acknowledged = false;
    for _ in 0..30 {
        if ana
            .wait_acknowledged(doc, Duration::from_secs(1))
            .await
            .is_ok()
        {
            acknowledged = true;
            break;
        }
    }
    assert!(
        acknowledged,
        "the change was never acknowledged after space was freed"
    );
    ana.shutdown().await;
    relay.stop().await.unwrap();
    let stored = common::load_stored(&disk.path("relay"), &[doc]).await;
    let (_, am) = &stored[0];
    assert_eq!(
        am.get_heads(),
        heads,
        "the refused change did not arrive once there was room"
    );
}

fn config() -> SledConfig {
    SledConfig {
        reserve_bytes: 2 * 1024 * 1024,
        ..SledConfig::default()
    }
}

fn phone(store: &Path) -> Client {
    let store = SledStore::open(store, &config()).unwrap();
    Client::start(Arc::new(store), ClientConfig::new("ana/phone")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_change_on_a_full_disk_returns_storage_full_and_loses_nothing() {
    let disk = SmallDisk::mount(16);
    let ana = phone(&disk.path("phone"));
    let doc = ana
        .create(|tx| {
            tx.put(ROOT, "title", "reflection").unwrap();
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap()
        .0;
    let kept = ana.heads(doc).await.unwrap();

    disk.fill();
    let text = big(2);
    let refused = ana
        .change(doc, move |tx| {
            tx.put(ROOT, "body", text.as_str()).map(|_| ())
        })
        .await;
    assert!(
        matches!(refused, Err(ChangeError::Client(ClientError::StorageFull(d))) if d == doc),
        "a change on a full disk returned {refused:?}"
    );

    disk.free();
    let text = big(3);
    let ((), heads) = ana
        .change_with_heads(doc, move |tx| {
            tx.put(ROOT, "body", text.as_str()).map(|_| ())
        })
        .await
        .expect("a change once there is room");
    assert_ne!(Some(heads.clone()), kept);
    ana.shutdown().await;
    drop(ana);
    // sled lets go of its lock from a background thread a moment after the last handle.
    common::members::wait_unlocked(&disk.path("phone")).await;
    // What the phone said was kept is on its disk.
    let store = SledStore::open(&disk.path("phone"), &config()).unwrap();
    let chunks = cairn_sync::store::Storage::load_range(&store, &[doc.to_string()]).unwrap();
    let mut am = automerge::Automerge::new();
    for (_, bytes) in chunks {
        am.load_incremental(&bytes).unwrap();
    }
    assert_eq!(am.get_heads(), heads);
}
