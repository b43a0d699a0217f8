//! Abuse over raw websockets while two well-behaved clients co-edit a document through the
//! same relay: every bad socket gets `error` and is closed, nobody else notices.

mod common;

use automerge::sync;
use automerge::transaction::Transactable;
use automerge::{Automerge, ScalarValue, ROOT};
use cairn_sync::ids::PeerId;
use cairn_sync::wire::{DocMessage, Message, PeerMetadata};
use ciborium::Value;
use common::{doc_id, incompressible, Pair, Raw, Relay, Seen, SyncOutcome, SOON};

/// A relay with a 1 MiB document limit (frames up to 1 MiB + 64 KiB) and two clients.
async fn setup() -> (tempfile::TempDir, Relay, Pair) {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), &["--max-document-mb", "1"]).await;
    let pair = Pair::start(&relay.url()).await;
    (dir, relay, pair)
}

fn cbor(value: Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(&value, &mut out).expect("encode");
    out
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.into()), v))
            .collect(),
    )
}

async fn finish(relay: Relay, mut pair: Pair) {
    pair.still_syncing().await;
    pair.shutdown().await;
    relay.stop().await.expect("relay stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_cbor_before_the_handshake() {
    let (_dir, relay, mut pair) = setup().await;
    for garbage in [vec![0xff, 0x00, 0x13], vec![0x5f], vec![0xa1, 0x61], vec![]] {
        let mut raw = Raw::dial(&relay.url(), "mallory").await;
        raw.send_bytes(garbage).await.expect("send");
        let why = raw.expect_error_then_close().await;
        assert!(why.contains("protocol violation"), "{why}");
        pair.still_syncing().await;
    }
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_with_wrong_field_types() {
    let (_dir, relay, mut pair) = setup().await;
    // Before the handshake: a `join` whose senderId is a number.
    let mut raw = Raw::dial(&relay.url(), "mallory").await;
    let join = map(vec![
        ("type", Value::Text("join".into())),
        ("senderId", Value::Integer(7.into())),
        (
            "supportedProtocolVersions",
            Value::Array(vec![Value::Text("1".into())]),
        ),
    ]);
    raw.send_bytes(cbor(join)).await.expect("send");
    let why = raw.expect_error_then_close().await;
    assert!(why.contains("senderId"), "{why}");
    pair.still_syncing().await;

    // After the handshake: a `sync` whose data is text and documentId a number; a map
    // without `type`; a CBOR array instead of a map.
    let bad = [
        map(vec![
            ("type", Value::Text("sync".into())),
            ("senderId", Value::Text("mallory".into())),
            ("targetId", Value::Text(cairn_relay::RELAY_PEER_ID.into())),
            ("documentId", Value::Integer(5.into())),
            ("data", Value::Text("not bytes".into())),
        ]),
        map(vec![
            ("type", Value::Text("sync".into())),
            ("senderId", Value::Text("mallory".into())),
            ("targetId", Value::Text(cairn_relay::RELAY_PEER_ID.into())),
            ("documentId", Value::Text(doc_id(1).to_string())),
            ("data", Value::Text("not bytes".into())),
        ]),
        map(vec![("senderId", Value::Text("mallory".into()))]),
        Value::Array(vec![Value::Text("sync".into())]),
    ];
    for frame in bad {
        let mut raw = Raw::joined(&relay.url(), "mallory").await;
        raw.send_bytes(cbor(frame)).await.expect("send");
        raw.expect_error_then_close().await;
        pair.still_syncing().await;
    }
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_larger_than_the_limit() {
    let (_dir, relay, mut pair) = setup().await;
    let mut raw = Raw::joined(&relay.url(), "mallory").await;
    // 1.5 MiB: past the 1 MiB + 64 KiB frame limit. The relay may close before it has read
    // it all, so the send itself may fail.
    let _ = raw.send_bytes(vec![0xa5; 1536 * 1024]).await;
    raw.expect_error_then_close().await;
    pair.still_syncing().await;
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_sync_data_for_an_unknown_document() {
    let (_dir, relay, mut pair) = setup().await;
    let unknown = doc_id(42);
    for data in [vec![0xde, 0xad, 0xbe, 0xef], vec![0x42; 64], vec![]] {
        let mut raw = Raw::joined(&relay.url(), "mallory").await;
        raw.send(&Message::Sync(DocMessage {
            sender_id: PeerId::from("mallory"),
            target_id: PeerId::from(cairn_relay::RELAY_PEER_ID),
            document_id: unknown,
            data,
        }))
        .await;
        let why = raw.expect_error_then_close().await;
        assert!(why.contains("sync message"), "{why}");
        pair.still_syncing().await;
    }
    // The relay kept nothing of it: asking for the document gets `doc-unavailable`.
    let mut honest = Raw::joined(&relay.url(), "honest").await;
    let am = Automerge::new();
    let mut state = sync::State::new();
    let first = sync::SyncDoc::generate_sync_message(&am, &mut state).expect("first message");
    honest
        .send(&Message::Request(DocMessage {
            sender_id: PeerId::from("honest"),
            target_id: PeerId::from(cairn_relay::RELAY_PEER_ID),
            document_id: unknown,
            data: first.encode(),
        }))
        .await;
    match honest.next(SOON).await {
        Seen::Frame(Message::DocUnavailable { document_id, .. }) => {
            assert_eq!(document_id, unknown)
        }
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_an_unsupported_protocol_version() {
    let (_dir, relay, mut pair) = setup().await;
    for versions in [vec!["2".to_owned()], vec![], vec!["0".into(), "1.1".into()]] {
        let mut raw = Raw::dial(&relay.url(), "future-client").await;
        raw.send(&Message::Join {
            sender_id: PeerId::from("future-client"),
            peer_metadata: PeerMetadata::default(),
            supported_protocol_versions: versions,
        })
        .await;
        let why = raw.expect_error_then_close().await;
        assert!(why.contains("unsupported protocol version"), "{why}");
        pair.still_syncing().await;
    }
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_a_valid_handshake() {
    let (_dir, relay, mut pair) = setup().await;
    for garbage in [incompressible(300, 1), b"\x00\x01\x02".to_vec(), vec![0xa0]] {
        let mut raw = Raw::joined(&relay.url(), "mallory").await;
        raw.send_bytes(garbage).await.expect("send");
        raw.expect_error_then_close().await;
        pair.still_syncing().await;
    }
    // A second `join` on an open socket is a violation too.
    let mut raw = Raw::joined(&relay.url(), "mallory").await;
    raw.send(&Message::Join {
        sender_id: PeerId::from("mallory"),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    })
    .await;
    raw.expect_error_then_close().await;
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_frames() {
    let (_dir, relay, mut pair) = setup().await;
    let mut raw = Raw::dial(&relay.url(), "mallory").await;
    raw.send_text("hello").await.expect("send");
    raw.expect_error_then_close().await;
    let mut raw = Raw::joined(&relay.url(), "mallory").await;
    raw.send_text(r#"{"type":"sync"}"#).await.expect("send");
    raw.expect_error_then_close().await;
    pair.still_syncing().await;
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bad_frame_after_twenty_reconnects() {
    let (_dir, relay, mut pair) = setup().await;
    let bad = cbor(map(vec![
        ("type", Value::Text("join".into())),
        ("senderId", Value::Bool(true)),
    ]));
    for round in 0..20 {
        let mut raw = Raw::dial(&relay.url(), "mallory").await;
        raw.send_bytes(bad.clone()).await.expect("send");
        raw.expect_error_then_close().await;
        if round % 5 == 4 {
            pair.still_syncing().await;
        }
    }
    // The good clients never lost their connections, and an honest newcomer still joins.
    assert_eq!(pair.a.connected() + pair.b.connected(), 2);
    let _probe = Raw::joined(&relay.url(), "probe").await;
    finish(relay, pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_large_document_is_refused_alone() {
    let (_dir, relay, mut pair) = setup().await;
    let mut raw = Raw::joined(&relay.url(), "bulk-uploader").await;

    // A document of twenty small changes, then 600 KiB of incompressible bytes: fits the
    // 1 MiB limit. (Small changes first so that automerge sends the big ones as changes
    // rather than a whole-document save: it ships the whole document once more than a
    // third of its changes are new.)
    let big = doc_id(7);
    let mut am = Automerge::new();
    let mut state = sync::State::new();
    for i in 0..20 {
        let mut tx = am.transaction();
        tx.put(ROOT, format!("line-{i}"), i).expect("put");
        tx.commit();
    }
    assert!(matches!(
        raw.sync_doc(big, &mut am, &mut state).await,
        SyncOutcome::Acknowledged(_)
    ));
    let mut tx = am.transaction();
    tx.put(
        ROOT,
        "blob",
        ScalarValue::Bytes(incompressible(600 * 1024, 7)),
    )
    .expect("put");
    tx.commit();
    assert!(matches!(
        raw.sync_doc(big, &mut am, &mut state).await,
        SyncOutcome::Acknowledged(_)
    ));
    // ...a second 600 KiB change does not.
    let mut tx = am.transaction();
    tx.put(
        ROOT,
        "blob2",
        ScalarValue::Bytes(incompressible(600 * 1024, 8)),
    )
    .expect("put");
    tx.commit();
    assert_eq!(
        raw.sync_doc(big, &mut am, &mut state).await,
        SyncOutcome::Unavailable
    );
    pair.still_syncing().await;

    // The same socket still syncs another document.
    let small = doc_id(8);
    let mut am2 = Automerge::new();
    let mut state2 = sync::State::new();
    let mut tx = am2.transaction();
    tx.put(ROOT, "note", "still here").expect("put");
    tx.commit();
    let heads = am2.get_heads();
    match raw.sync_doc(small, &mut am2, &mut state2).await {
        SyncOutcome::Acknowledged(theirs) => assert_eq!(theirs, heads),
        other => panic!("the second document was refused: {other:?}"),
    }
    // And a good client can fetch it from the relay.
    pair.b.find(small, SOON).await.expect("ben finds it");
    finish(relay, pair).await;
}
