//! The client runtime on its own (no relay): status, subscriptions and import offline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
        .create(|tx| tx.put(automerge::ROOT, "n", 1))
        .await
        .unwrap()
        .0;
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

fn read_n(d: &Automerge) -> Option<i64> {
    match d.get(automerge::ROOT, "n") {
        Ok(Some((automerge::Value::Scalar(s), _))) => s.as_i64(),
        _ => None,
    }
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

#[tokio::test]
async fn a_subscription_sees_local_changes_and_stops_when_cancelled_or_dropped() {
    let client = offline();
    let (doc, ()) = client
        .create(|tx| tx.put(automerge::ROOT, "n", 1))
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let sub = client.subscribe(doc, read_n, move |u| {
        if let Update::Changed { heads, value } = u {
            sink.lock().unwrap().push((heads, value));
        }
    });
    eventually("the current value first", || {
        seen.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(seen.lock().unwrap()[0].1, Some(1));
    client
        .change(doc, |tx| tx.put(automerge::ROOT, "n", 2))
        .await
        .unwrap();
    eventually("the change", || seen.lock().unwrap().len() == 2).await;
    let (heads, value) = seen.lock().unwrap()[1].clone();
    assert_eq!(value, Some(2));
    assert_eq!(Some(heads), client.heads(doc).await.unwrap());
    assert_eq!(client.active_subscriptions(), 1);
    sub.cancel();
    let after_cancel = seen.lock().unwrap().len();
    client
        .change(doc, |tx| tx.put(automerge::ROOT, "n", 3))
        .await
        .unwrap();
    eventually("the task ends", || client.active_subscriptions() == 0).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        after_cancel,
        "no callback after cancel"
    );

    let dropped = client.subscribe(doc, read_n, |_| {});
    eventually("a second subscription runs", || {
        client.active_subscriptions() == 1
    })
    .await;
    drop(dropped);
    eventually("dropping ends it", || client.active_subscriptions() == 0).await;
    client.shutdown().await;
}

#[tokio::test]
async fn changes_to_one_document_wake_only_its_subscription() {
    let client = offline();
    let mut docs = Vec::new();
    for i in 0..10 {
        let (doc, ()) = client
            .create(move |tx| tx.put(automerge::ROOT, "n", i))
            .await
            .unwrap();
        docs.push(doc);
    }
    let calls: Arc<Vec<AtomicUsize>> = Arc::new((0..10).map(|_| AtomicUsize::new(0)).collect());
    let subs: Vec<_> = docs
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            let calls = calls.clone();
            client.subscribe(*doc, read_n, move |_| {
                calls[i].fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    eventually("every subscription got its first value", || {
        calls.iter().all(|c| c.load(Ordering::SeqCst) == 1)
    })
    .await;
    let before = client.subscription_wakeups();
    const CHANGES: i64 = 100;
    for n in 0..CHANGES {
        client
            .change(docs[0], move |tx| tx.put(automerge::ROOT, "n", 100 + n))
            .await
            .unwrap();
    }
    eventually("the last change reached the subscription", || {
        calls[0].load(Ordering::SeqCst) >= 2
    })
    .await;
    client
        .wait_for(docs[0], Duration::from_secs(10), |d| {
            read_n(d) == Some(100 + CHANGES - 1)
        })
        .await
        .unwrap();
    let woken = client.subscription_wakeups() - before;
    // One durable write per change wakes the one subscription at most once; the old
    // single notifier woke all ten subscriptions for every event (at least 1,000 here).
    assert!(woken >= 1, "the changed document's subscription woke");
    assert!(
        woken <= CHANGES as u64 + 5,
        "{woken} wake-ups for {CHANGES} changes to one of ten documents"
    );
    for (i, c) in calls.iter().enumerate().skip(1) {
        assert_eq!(
            c.load(Ordering::SeqCst),
            1,
            "subscription {i} was called again"
        );
    }
    drop(subs);
    client.shutdown().await;
}

#[tokio::test]
async fn change_returns_the_closures_value_and_a_failing_closure_commits_nothing() {
    #[derive(Debug, PartialEq)]
    struct TitleTooLong(usize);
    let store = Arc::new(MemoryStore::default());
    let client = Client::start(store.clone(), ClientConfig::new("phone")).unwrap();
    let (doc, created) = client
        .create(|tx| tx.put(automerge::ROOT, "n", 1).map(|()| "made"))
        .await
        .unwrap();
    assert_eq!(created, "made");
    let (value, heads) = client
        .change_with_heads(doc, |tx| {
            tx.put(automerge::ROOT, "n", 2)?;
            Ok::<_, automerge::AutomergeError>(42)
        })
        .await
        .unwrap();
    assert_eq!(value, 42);
    assert_eq!(Some(heads.clone()), client.heads(doc).await.unwrap());
    let keys_before = store.load_range(&[doc.to_string()]).unwrap().len();
    let refused = client
        .change(doc, |tx| {
            tx.put(automerge::ROOT, "n", 3).unwrap();
            Err::<(), _>(TitleTooLong(300))
        })
        .await;
    assert!(matches!(
        refused,
        Err(ChangeError::Rejected(TitleTooLong(300)))
    ));
    assert_eq!(client.heads(doc).await.unwrap(), Some(heads));
    assert_eq!(client.read(doc, read_n).await.unwrap(), Some(Some(2)));
    assert_eq!(
        store.load_range(&[doc.to_string()]).unwrap().len(),
        keys_before
    );
    let not_created = client.create(|_| Err::<(), _>(TitleTooLong(0))).await;
    assert!(matches!(
        not_created,
        Err(ChangeError::Rejected(TitleTooLong(0)))
    ));
    client.shutdown().await;
}

#[test]
fn a_client_starts_on_a_runtime_it_is_handed_without_an_ambient_one() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // No runtime is entered on this thread.
    let client = Client::start_on(
        runtime.handle().clone(),
        Arc::new(MemoryStore::default()),
        ClientConfig::new("phone"),
    )
    .unwrap();
    let c = client.clone();
    let (doc, ()) = runtime
        .block_on(async move { c.create(|tx| tx.put(automerge::ROOT, "n", 5)).await })
        .unwrap();
    let got = Arc::new(Mutex::new(None));
    let sink = got.clone();
    let sub = client.subscribe(doc, read_n, move |u| {
        if let Update::Changed { value, .. } = u {
            *sink.lock().unwrap() = Some(value);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.lock().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "no first value");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*got.lock().unwrap(), Some(Some(5)));
    drop(sub);
    runtime.block_on(client.shutdown());
}

#[tokio::test]
async fn a_forgotten_document_leaves_no_key_in_the_sled_store() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Arc::new(crate::store::SledStore::open(dir.path(), &Default::default()).unwrap());
    let store = open();
    let client = Client::start(store.clone(), ClientConfig::new("phone")).unwrap();
    let mut docs = Vec::new();
    for i in 0..3 {
        let (doc, ()) = client
            .create(move |tx| tx.put(automerge::ROOT, "n", i))
            .await
            .unwrap();
        client
            .change(doc, |tx| tx.put(automerge::ROOT, "more", 1))
            .await
            .unwrap();
        docs.push(doc);
    }
    let group = crate::membership::GroupId::from("0123456789abcdef");
    for doc in &docs[..2] {
        client
            .register(*doc, &group, crate::membership::BoundKind::Thread)
            .await
            .unwrap();
    }
    assert_eq!(
        client.registrations().len(),
        2,
        "kept while no relay is connected"
    );
    client.forget(&docs[..2]).await.unwrap();
    assert!(client.read(docs[0], read_n).await.unwrap().is_none());
    client.shutdown().await;
    drop(client);
    drop(store);

    // sled lets go of its lock from a background thread a moment after the last handle.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let store = loop {
        match crate::store::SledStore::open(dir.path(), &Default::default()) {
            Ok(s) => break Arc::new(s),
            Err(e) => assert!(std::time::Instant::now() < deadline, "reopening: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for doc in &docs[..2] {
        assert!(store.load_range(&[doc.to_string()]).unwrap().is_empty());
    }
    assert!(!store.load_range(&[docs[2].to_string()]).unwrap().is_empty());
    let reopened = Client::start(store, ClientConfig::new("phone")).unwrap();
    assert_eq!(reopened.registrations(), vec![]);
    reopened
        .find(docs[2], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(reopened.read(docs[2], read_n).await.unwrap(), Some(Some(2)));
    reopened.shutdown().await;
}

#[tokio::test]
async fn an_import_merges_into_the_stored_copy_and_is_durable() {
    let store = Arc::new(MemoryStore::default());
    let first = Client::start(store.clone(), ClientConfig::new("phone")).unwrap();
    let doc = first
        .create(|tx| tx.put(automerge::ROOT, "a", 1))
        .await
        .unwrap()
        .0;
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

/// A relay that accepts every upgrade and then drops the connection after the next of
/// `lifetimes` (the last one repeats): a proxy that accepts and hangs up, or a relay that
/// answers garbage.
struct HangingUp {
    lifetimes: Vec<Duration>,
    dials: Mutex<Vec<tokio::time::Instant>>,
}

struct Dropping(Duration);

impl Connection for Dropping {
    fn send(&self, _: Vec<u8>) -> futures_util::future::BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async { Ok(()) })
    }
    fn recv(&self) -> futures_util::future::BoxFuture<'_, Option<Received>> {
        let life = self.0;
        Box::pin(async move {
            tokio::time::sleep(life).await;
            None
        })
    }
    fn ping(&self) -> futures_util::future::BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async { Ok(()) })
    }
    fn close(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl Transport for HangingUp {
    fn connect<'a>(
        &'a self,
        _url: &'a str,
        _credential: Option<&'a crate::membership::Credential>,
    ) -> futures_util::future::BoxFuture<'a, Result<Box<dyn Connection>, TransportError>> {
        let mut dials = self.dials.lock().unwrap();
        let n = dials.len().min(self.lifetimes.len() - 1);
        dials.push(tokio::time::Instant::now());
        let life = self.lifetimes[n];
        Box::pin(async move { Ok(Box::new(Dropping(life)) as Box<dyn Connection>) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_relay_that_hangs_up_at_once_is_redialled_at_a_doubling_interval() {
    let client = offline();
    let zero = Duration::ZERO;
    let relay = Arc::new(HangingUp {
        // Four connections dropped at once, one that lasts, then at once again.
        lifetimes: vec![zero, zero, zero, zero, Duration::from_secs(15), zero],
        dials: Mutex::new(Vec::new()),
    });
    let _handle = client.connect_to(RelayEndpoint {
        url: "ws://relay.test/".to_owned(),
        transport: relay.clone(),
        api: None,
        credential: None,
    });
    // Virtual time: the intervals below are the client's own waits, exactly.
    while relay.dials.lock().unwrap().len() < 7 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dials = relay.dials.lock().unwrap().clone();
    let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1] - w[0]).collect();
    let min = ClientConfig::new("x").min_backoff;
    // Dropped at once: every wait doubles (a redial four times a second drains a phone).
    for w in gaps[..4].windows(2) {
        assert!(
            w[1] >= w[0] * 2,
            "waits double while connections drop at once: {gaps:?}"
        );
    }
    // A connection that lasted starts over: the relay restarted, reconnect at once.
    let after_lasting = gaps[4] - Duration::from_secs(15);
    assert!(
        after_lasting < min * 2,
        "reconnects quickly after a lasting connection: {gaps:?}"
    );
    // ...and the next instant drop waits again from there.
    assert!(gaps[5] >= gaps[4] - Duration::from_secs(15), "{gaps:?}");
    client.shutdown().await;
}
