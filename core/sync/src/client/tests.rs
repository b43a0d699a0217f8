//! The client runtime on its own (no relay): status, subscriptions and import offline.

use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::ReadDoc;

use super::*;
use crate::store::MemoryStore;

fn offline() -> Client {
    Client::start(Arc::new(MemoryStore::default()), ClientConfig::new("phone")).unwrap()
}

#[tokio::test]
async fn offline_documents_are_only_on_this_device_with_every_change_pending() {
    let client = offline();
    let doc = client
        .create(|tx| {
            tx.put(automerge::ROOT, "n", 1).unwrap();
        })
        .await
        .unwrap();
    for n in 2..=3 {
        client
            .change(doc, move |tx| tx.put(automerge::ROOT, "n", n))
            .await
            .unwrap();
    }
    assert_eq!(
        client.status(doc).await.unwrap(),
        SyncStatus::OnlyOnThisDevice
    );
    assert_eq!(client.pending_changes(doc).await.unwrap(), 3);
    let unknown = DocumentId::from_bytes([9; 16]);
    assert!(matches!(
        client.status(unknown).await,
        Err(ClientError::Engine(EngineError::NotLoaded(_)))
    ));
    client.shutdown().await;
}

#[tokio::test]
async fn a_subscription_sees_local_changes_and_stops_when_dropped() {
    let client = offline();
    let doc = client
        .create(|tx| {
            tx.put(automerge::ROOT, "n", 1).unwrap();
        })
        .await
        .unwrap();
    let read_n = |d: &Automerge| match d.get(automerge::ROOT, "n") {
        Ok(Some((automerge::Value::Scalar(s), _))) => s.as_i64(),
        _ => None,
    };
    let mut sub = client.subscribe_with(doc, read_n).await.unwrap();
    assert_eq!(sub.next().await.unwrap().value, Some(1));
    client
        .change(doc, |tx| tx.put(automerge::ROOT, "n", 2))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.value, Some(2));
    assert_eq!(Some(next.heads), client.heads(doc).await.unwrap());
    assert_eq!(client.active_subscriptions(), 1);
    drop(sub);
    tokio::time::timeout(Duration::from_secs(10), async {
        while client.active_subscriptions() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    client.shutdown().await;
}

#[tokio::test]
async fn an_import_merges_into_the_stored_copy_and_is_durable() {
    let store = Arc::new(MemoryStore::default());
    let first = Client::start(store.clone(), ClientConfig::new("phone")).unwrap();
    let doc = first
        .create(|tx| {
            tx.put(automerge::ROOT, "a", 1).unwrap();
        })
        .await
        .unwrap();
    let saved = first.read(doc, |d| d.save()).await.unwrap().unwrap();
    first.shutdown().await;

    // Another device's edit on top of the same history, imported after a restart.
    let mut other = Automerge::load(&saved).unwrap();
    other
        .transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(automerge::ROOT, "b", 2)?;
            Ok(())
        })
        .unwrap();
    let restarted = Client::start(store, ClientConfig::new("phone")).unwrap();
    let heads = restarted.import(doc, other.save()).await.unwrap();
    assert_eq!(heads, other.get_heads());
    let keys = restarted
        .read(doc, |d| d.keys(automerge::ROOT).collect::<Vec<_>>())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(restarted.pending_changes(doc).await.unwrap(), 2);
    restarted.shutdown().await;
}
