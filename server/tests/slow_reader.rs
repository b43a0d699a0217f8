//! A websocket that stops reading: the relay's writer gives up after the send timeout and
//! closes it, instead of holding the socket, its queue and its buffers for ever.

mod common;

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use common::{doc_id, incompressible, wait_metric, Raw, Relay, Seen, SyncOutcome, SOON};

/// Size of the document the stuck socket asks for: far more than loopback socket
/// buffers take from a peer that does not read.
const CHUNKS: usize = 8;
const CHUNK: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_takes_no_frame_is_closed_after_the_send_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Silence and queue bounds far beyond this test: only the send timeout can act.
    let relay = Relay::start(
        dir.path(),
        &[
            "--send-timeout-secs",
            "1",
            "--socket-timeout-secs",
            "600",
            "--outbound-queue-mb",
            "64",
        ],
    )
    .await;
    let id = doc_id(7);
    let mut writer = Raw::joined(&relay.url(), "ana/phone").await;
    let mut am = Automerge::new();
    for i in 0..CHUNKS {
        let mut tx = am.transaction();
        tx.put(ROOT, format!("chunk-{i}"), incompressible(CHUNK, i as u64))
            .expect("put");
        tx.commit();
    }
    let mut state = automerge::sync::State::new();
    assert!(matches!(
        writer.sync_doc(id, &mut am, &mut state).await,
        SyncOutcome::Acknowledged(_)
    ));

    // Asks for the whole document, then never reads the answer.
    let mut stuck = Raw::joined(&relay.url(), "stuck/phone").await;
    let empty = Automerge::new();
    let first = {
        use automerge::sync::SyncDoc;
        empty
            .generate_sync_message(&mut automerge::sync::State::new())
            .expect("a first sync message")
    };
    stuck.send_sync(id, first).await;
    let timeouts = wait_metric(relay.addr, "cairn_send_timeouts_total", |v| v >= 1.0).await;
    assert_eq!(timeouts, 1.0);

    // What the socket buffered arrives, then the end: no whole answer follows.
    loop {
        match stuck.next(SOON).await {
            Seen::Closed => break,
            Seen::Frame(m) if m.kind() != "sync" => continue,
            other => panic!("expected the relay to have closed the socket, got {other:?}"),
        }
    }
    // The writer's own socket was not disturbed.
    let mut tx = am.transaction();
    tx.put(ROOT, "after", 1).expect("put");
    tx.commit();
    assert!(matches!(
        writer.sync_doc(id, &mut am, &mut state).await,
        SyncOutcome::Acknowledged(_)
    ));
    relay.stop().await.expect("clean stop");
}
