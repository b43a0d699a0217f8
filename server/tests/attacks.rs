//! Hostile peers against a running relay (the server's own code on a loopback port), while
//! two well-behaved clients co-edit a document through it: each attack from issue 6 gets
//! its answer (an `error` and a close, a refusal, a drop), the relay's state stays bounded,
//! and the clients never notice.

mod common;

use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use cairn_sync::wire::{DocMessage, Message};
use common::{doc_id, Pair, Raw, Relay, Seen, SOON};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn setup(extra: &[&str]) -> (tempfile::TempDir, Relay, Pair) {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), extra).await;
    let pair = Pair::start(&relay.url()).await;
    (dir, relay, pair)
}

async fn finish(relay: Relay, mut pair: Pair) {
    pair.still_syncing().await;
    assert_eq!(get(&relay, "/healthz").await.0, 200);
    pair.shutdown().await;
    relay.stop().await.expect("relay stops cleanly");
}

/// A plain HTTP GET on the relay's port: (status, body).
async fn get(relay: &Relay, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(relay.addr)
        .await
        .expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(SOON, tcp.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of a metric line (`name` includes any labels) in `/metrics`.
async fn metric(relay: &Relay, name: &str) -> f64 {
    let (_, body) = get(relay, "/metrics").await;
    common::metric_value(&body, name).unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// A sync message carrying one change of `chars` characters of text (one op each).
fn change_message(chars: usize) -> sync::Message {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    let text = tx
        .put_object(ROOT, "text", automerge::ObjType::Text)
        .expect("text");
    tx.splice_text(&text, 0, 0, &"a".repeat(chars))
        .expect("splice");
    tx.commit();
    // `bytes()` is the compressed form a peer sends.
    let change = doc
        .get_last_local_change()
        .expect("one change")
        .bytes()
        .into_owned();
    sync::Message {
        heads: doc.get_heads(),
        need: vec![],
        have: vec![],
        changes: vec![change].into(),
        flags: None,
        version: sync::MessageVersion::V1,
    }
}

fn sync_frame(from: &Raw, doc: cairn_sync::ids::DocumentId, data: Vec<u8>) -> Vec<u8> {
    Message::Sync(DocMessage {
        sender_id: from.peer.clone(),
        target_id: cairn_relay::RELAY_PEER_ID.into(),
        document_id: doc,
        data,
    })
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ten_byte_message_that_stopped_the_relay() {
    let (_dir, relay, mut pair) = setup(&[]).await;
    for bloom in [
        "42000001000301000100",           // one entry, zero bits per entry
        "4200000100080101ffffffff0f0000", // num_probes = u32::MAX (a 16 GiB allocation)
    ] {
        let mut mallory = Raw::joined(&relay.url(), "mallory").await;
        let own = doc_id(7);
        mallory.send_sync(own, change_message(3)).await;
        let bytes = hex::decode(bloom).expect("hex");
        mallory
            .send_bytes(sync_frame(&mallory, own, bytes))
            .await
            .expect("send");
        // Its answers to the first message may come first; then `error` and the close.
        loop {
            match mallory.next(SOON).await {
                Seen::Frame(Message::Error { message }) => {
                    assert!(message.contains("protocol violation"), "{message}");
                    break;
                }
                Seen::Frame(_) => continue,
                other => panic!("expected `error`, got {other:?}"),
            }
        }
        assert!(matches!(mallory.next(SOON).await, Seen::Closed));
        pair.still_syncing().await;
    }
    assert_eq!(get(&relay, "/readyz").await.0, 200);
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_unknown_ids_are_capped_and_gone_after_disconnect() {
    // The cap holds per engine shard (a socket gets shards × it): one shard makes it exact.
    let (_dir, relay, pair) = setup(&[
        "--max-documents-per-connection",
        "500",
        "--engine-shards",
        "1",
    ])
    .await;
    let mut mallory = Raw::joined(&relay.url(), "mallory").await;
    let first = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .expect("first message")
        .encode();
    // Mallory reads its answers in batches, as any client does: one that sends 2,000 frames
    // without reading would instead be closed as a slow reader once its answers pass the
    // outbound queue (1,024 frames), which is a different defence (slow_reader.rs).
    let mut unavailable = 0;
    let mut answered = 0;
    for batch in 0..8u64 {
        for n in 0..250u64 {
            let id = doc_id(1_000 + batch * 250 + n);
            let frame = sync_frame(&mallory, id, first.clone());
            mallory.send_bytes(frame).await.expect("send");
        }
        // Every id gets an answer; past the cap, `doc-unavailable`.
        while answered < (batch + 1) * 250 {
            match mallory.next(SOON).await {
                Seen::Frame(Message::DocUnavailable { .. }) => {
                    unavailable += 1;
                    answered += 1;
                }
                Seen::Frame(Message::Sync(_)) => answered += 1,
                other => panic!("after {answered} answers: {other:?}"),
            }
        }
    }
    assert_eq!(unavailable, 1_500);
    assert!(metric(&relay, "cairn_documents").await <= 501.0);
    drop(mallory);
    let mut documents = f64::MAX;
    for _ in 0..100 {
        documents = metric(&relay, "cairn_documents").await;
        if documents <= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(documents, 1.0, "only the pair's document is left");
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_compressed_change_with_millions_of_operations_is_refused_unapplied() {
    let (_dir, relay, pair) = setup(&[]).await;
    let mut mallory = Raw::joined(&relay.url(), "mallory").await;
    let bomb = change_message(2_000_000);
    let wire = sync_frame(&mallory, doc_id(9), bomb.encode());
    assert!(
        wire.len() < 64 * 1024,
        "a small frame: {} bytes",
        wire.len()
    );
    mallory.send_bytes(wire).await.expect("send");
    let why = mallory.expect_error_then_close().await;
    assert!(why.contains("operations"), "{why}");
    assert_eq!(metric(&relay, "cairn_documents_loaded").await, 1.0);
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_session_ids_close_the_sender_and_hold_nothing() {
    let (_dir, relay, pair) = setup(&[]).await;
    let mut mallory = Raw::joined(&relay.url(), "mallory").await;
    let frame = Message::Ephemeral {
        sender_id: "mallory".into(),
        target_id: cairn_relay::RELAY_PEER_ID.into(),
        document_id: pair.doc,
        session_id: "s".repeat(1024 * 1024),
        count: 1,
        data: b"x".to_vec(),
    };
    mallory.send(&frame).await;
    let why = mallory.expect_error_then_close().await;
    assert!(why.contains("sessionId"), "{why}");
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_flood_reaches_others_only_at_the_rate_limit() {
    let (_dir, relay, pair) = setup(&[]).await;
    let mut watcher = Raw::joined(&relay.url(), "watcher").await;
    let mut copy = Automerge::new();
    let mut state = sync::State::new();
    watcher.sync_doc(pair.doc, &mut copy, &mut state).await;
    let mut mallory = Raw::joined(&relay.url(), "mallory").await;
    mallory
        .sync_doc(pair.doc, &mut Automerge::new(), &mut sync::State::new())
        .await;
    let started = tokio::time::Instant::now();
    for count in 1..=20_000u64 {
        let frame = Message::Ephemeral {
            sender_id: "alice/phone".into(), // a lie: the relay stamps "mallory"
            target_id: cairn_relay::RELAY_PEER_ID.into(),
            document_id: pair.doc,
            session_id: "m".into(),
            count,
            data: b"cursor".to_vec(),
        };
        mallory.send(&frame).await;
    }
    let mut got = 0u64;
    loop {
        match watcher.next(Duration::from_millis(500)).await {
            Seen::Frame(Message::Ephemeral { sender_id, .. }) => {
                assert_eq!(sender_id.as_str(), "mallory");
                got += 1;
            }
            Seen::Frame(_) => {}
            Seen::Nothing => break,
            other => panic!("{other:?}"),
        }
    }
    // The default budget: a burst of 120, then one per 16 ms of the flood's duration.
    let allowed = 120 + started.elapsed().as_millis() as u64 / 16 + 1;
    assert!(
        got >= 120 && got <= allowed,
        "{got} delivered, {allowed} allowed"
    );
    assert!(
        metric(
            &relay,
            "cairn_ephemeral_dropped_total{reason=\"rate_limited\"}"
        )
        .await
            >= (20_000 - allowed) as f64
    );
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeovers_are_told_rate_limited_and_the_relays_id_is_reserved() {
    let (_dir, relay, pair) = setup(&[]).await;
    let mut first = Raw::joined(&relay.url(), "carol/phone").await;
    let mut refused = 0;
    let mut sockets = Vec::new();
    for _ in 0..200 {
        let mut raw = Raw::dial(&relay.url(), "carol/phone").await;
        raw.send(&Message::Join {
            sender_id: raw.peer.clone(),
            peer_metadata: Default::default(),
            supported_protocol_versions: vec!["1".into()],
        })
        .await;
        match raw.next(SOON).await {
            Seen::Frame(Message::Peer { .. }) => sockets.push(raw),
            Seen::Frame(Message::Error { message }) => {
                assert!(message.contains("already connected"), "{message}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused, 200 - 4, "a burst of 4 takeovers, then refusals");
    // The first socket heard why it was dropped.
    let why = first.expect_error_then_close().await;
    assert!(why.contains("replaced"), "{why}");
    let mut fake = Raw::dial(&relay.url(), cairn_relay::RELAY_PEER_ID).await;
    fake.send(&Message::Join {
        sender_id: fake.peer.clone(),
        peer_metadata: Default::default(),
        supported_protocol_versions: vec!["1".into()],
    })
    .await;
    let why = fake.expect_error_then_close().await;
    assert!(why.contains("reserved"), "{why}");
    finish(relay, pair).await;
}
