//! The real `cairn-relay` binary at `CAIRN_LOG=trace`, its output piped to a file: what a
//! peer syncs never reaches the log (dependencies dump frames at trace level), and the
//! file holds plain text, no colour codes.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use common::{doc_id, http_get, Raw, SyncOutcome, SOON};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The ways a byte string shows up in a log: as text, as hex, as a list of numbers.
fn forms(bytes: &[u8]) -> Vec<String> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let decimal = bytes
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        String::from_utf8_lossy(bytes).into_owned(),
        hex.clone(),
        hex.to_uppercase(),
        decimal,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_carry_no_content_and_no_colour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("relay.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(["serve", "--open", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .env("CAIRN_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .expect("spawn the relay binary");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + SOON;
    while http_get(addr, "/healthz").await != Some((200, "ok".into())) {
        assert!(Instant::now() < deadline, "the relay did not start");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the relay exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let unique = cairn_sync::store::random_uuid().simple().to_string();
    let marker = format!("marker-{unique}");
    let peer = format!("peer-{}", &unique[..12]);
    let mut raw = Raw::joined(&format!("ws://127.0.0.1:{port}/"), &peer).await;
    let mut am = Automerge::new();
    let mut tx = am.transaction();
    tx.put(ROOT, "minutes", marker.as_str()).expect("put");
    tx.commit();
    let mut state = automerge::sync::State::new();
    assert!(matches!(
        raw.sync_doc(doc_id(1), &mut am, &mut state).await,
        SyncOutcome::Acknowledged(_)
    ));
    drop(raw);
    // Let the relay log the socket's end, then stop it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().expect("kill the relay");
    child.wait().expect("reap the relay");

    let text = std::fs::read(&log_path).expect("read the log");
    let lossy = String::from_utf8_lossy(&text);
    assert!(
        lossy.contains("TRACE"),
        "CAIRN_LOG=trace produced no trace lines; the test would prove nothing:\n{lossy}"
    );
    assert!(
        !text.contains(&0x1b),
        "the log holds ANSI escape codes although it is not a terminal"
    );
    for form in forms(marker.as_bytes()) {
        assert!(
            !lossy.contains(&form),
            "the log holds the document's content ({form})"
        );
    }
    // Peer ids are ids and may be logged, but never as the bytes of a frame.
    for form in &forms(peer.as_bytes())[1..] {
        assert!(
            !lossy.contains(form),
            "the log holds the bytes of a frame ({form})"
        );
    }
}
