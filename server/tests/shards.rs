//! A relay whose documents are spread over several engine tasks (`--engine-shards`):
//! clients converge on documents held by different shards, and a removed member's socket
//! is closed once, on every shard.

mod common;

use std::collections::BTreeSet;

use automerge::sync;
use automerge::transaction::Transactable;
use automerge::{Automerge, ReadDoc, ROOT};
use cairn_sync::runtime::document_shard;
use cairn_sync::wire::Message;
use common::members::Group;
use common::{client, doc_id, http_get, metric_value, Raw, Relay, Seen, SyncOutcome, SOON};

const SHARDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_converge_on_documents_held_by_different_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), &["--engine-shards", "3"]).await;
    let url = relay.url();
    let (a, b) = (client("alice/phone", &url), client("ben/phone", &url));
    // Document ids are random: create until at least two shards hold some (bounded).
    let mut docs = Vec::new();
    let mut shards = BTreeSet::new();
    for i in 0..24i64 {
        if docs.len() >= 4 && shards.len() >= 2 {
            break;
        }
        let (doc, ()) = a
            .create(move |tx| tx.put(ROOT, "title", i).map(|_| ()))
            .await
            .expect("create");
        shards.insert(document_shard(&doc, SHARDS));
        docs.push(doc);
    }
    assert!(shards.len() >= 2, "every document landed on one shard");
    for doc in &docs {
        a.wait_acknowledged(*doc, SOON)
            .await
            .expect("the relay acknowledges each document");
        b.find(*doc, SOON).await.expect("ben finds each document");
        b.change(*doc, |tx| tx.put(ROOT, "reply", "seen"))
            .await
            .expect("ben changes it");
    }
    for doc in &docs {
        a.wait_for(*doc, SOON, |d| {
            d.get(ROOT, "reply").ok().flatten().is_some()
        })
        .await
        .expect("alice sees ben's change to every document");
    }
    // The shards' counters add up: every document is known once, in its shard.
    let (status, text) = http_get(relay.addr, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric_value(&text, "cairn_documents"),
        Some(docs.len() as f64),
        "{text}"
    );
    a.shutdown().await;
    b.shutdown().await;
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_socket_is_closed_once_on_every_shard() {
    let g = Group::start(&["--engine-shards", "3"]).await;
    let organiser = g.organiser.clone();
    let mia = g.join("member", "mia").await;
    let mut ws = Raw::joined_as(&g.url(), &mia).await;
    // Documents on every shard, each open on her socket.
    let mut per_shard = BTreeSet::new();
    for n in 50..200u64 {
        let doc = doc_id(n);
        if per_shard.insert(document_shard(&doc, SHARDS)) {
            g.register(&organiser, doc, "meeting").await.expect(201);
            let mut am = Automerge::new();
            let mut tx = am.transaction();
            tx.put(ROOT, "title", "notes").expect("put");
            tx.commit();
            let outcome = ws.sync_doc(doc, &mut am, &mut sync::State::new()).await;
            assert!(
                matches!(outcome, SyncOutcome::Acknowledged(_)),
                "{outcome:?}"
            );
        }
        if per_shard.len() == SHARDS {
            break;
        }
    }
    g.call(
        &organiser,
        "DELETE",
        &format!("/v1/groups/{}/members/{}", g.group, mia.member),
        None,
    )
    .await
    .expect(204);
    // One `error`, then the close: no second error from another shard.
    let mut errors = Vec::new();
    loop {
        match ws.next(SOON).await {
            Seen::Frame(Message::Error { message }) => errors.push(message),
            Seen::Frame(Message::DocUnavailable { .. }) => {}
            Seen::Closed => break,
            other => panic!("expected `error` then the close, got {other:?}"),
        }
    }
    assert_eq!(errors, ["access revoked"]);
}
