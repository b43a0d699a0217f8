//! Graceful shutdown: `run` returns soon after its shutdown future resolves, even with
//! clients and idle sockets connected, and what it acknowledged is on disk.

mod common;

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use common::{client, load_stored, Raw, Relay, Seen, SOON};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_returns_promptly_and_keeps_acknowledged_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), &[]).await;
    let url = relay.url();

    let a = client("ana/phone", &url);
    let b = client("ben/phone", &url);
    let doc = a
        .create(|tx| {
            tx.put(ROOT, "title", "minutes").expect("put");
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .expect("create")
        .0;
    a.wait_acknowledged(doc, SOON).await.expect("acknowledged");
    b.find(doc, SOON).await.expect("ben finds it");
    let mut acknowledged = Vec::new();
    for i in 0..10i64 {
        let (c, who) = if i % 2 == 0 { (&a, "ana") } else { (&b, "ben") };
        let ((), heads) = c
            .change_with_heads(doc, move |tx| tx.put(ROOT, format!("{who}-{i}"), i))
            .await
            .expect("change");
        c.wait_acknowledged(doc, SOON).await.expect("acknowledged");
        acknowledged.extend(heads);
    }
    // Sockets in every state: handshaken and idle, mid-handshake, and a client that keeps
    // writing while the relay stops.
    let mut idle = Raw::joined(&url, "idle/phone").await;
    let mut silent = Raw::dial(&url, "silent").await;
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..50i64 {
                if a.change(doc, move |tx| tx.put(ROOT, "late", i))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = Instant::now();
    relay.stop().await.expect("run returns Ok");
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5), "run took {took:?} to return");

    // Every socket was closed by the relay.
    for raw in [&mut idle, &mut silent] {
        loop {
            match raw.next(SOON).await {
                Seen::Closed => break,
                Seen::Frame(_) => continue,
                other => panic!("expected the relay to close the socket, got {other:?}"),
            }
        }
    }
    writer.await.expect("writer");
    a.shutdown().await;
    b.shutdown().await;

    // A fresh reader of the data directory finds everything that was acknowledged.
    let stored = load_stored(dir.path(), &[doc]).await;
    let (_, am) = &stored[0];
    for h in &acknowledged {
        assert!(
            am.get_change_by_hash(h).is_some(),
            "acknowledged change {h} is missing after a graceful shutdown"
        );
    }
    assert_eq!(
        am.get(ROOT, "title")
            .expect("read")
            .and_then(|(v, _)| v.as_str().map(str::to_owned)),
        Some("minutes".to_owned())
    );
}
