//! The phone-side runtime through a real relay on loopback, as members live it: what the
//! app shows about sync, live views, who else is editing, a private journal that never
//! leaves the phone, and a commit that survives the app being killed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::ReadDoc;
use cairn_core::model::thread;
use cairn_core::reflection::{
    post_excerpt, share_excerpt, ExcerptSource, Journal, Reflection, ReflectionTemplate,
};
use cairn_sync::client::{
    Client, ClientConfig, Connection, Received, SyncStatus, Transport, TransportError,
    TungsteniteTransport, Update,
};
use cairn_sync::ids::{DocumentId, MemberId};
use cairn_sync::membership::Credential;
use cairn_sync::store::{MemoryStore, SledConfig, SledStore, Storage};
use cairn_sync::wire::Message;
use cairn_tests::relay::TestRelay;
use futures::future::BoxFuture;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn phone(name: &str, store: Arc<dyn Storage>) -> Client {
    let mut config = ClientConfig::new(name);
    config.min_backoff = Duration::from_millis(50);
    Client::start(store, config).expect("starting a client")
}

fn title_of(doc: &automerge::Automerge) -> Option<String> {
    match doc.get(automerge::ROOT, "title").ok()?? {
        (automerge::Value::Scalar(s), _) => s.as_str().map(str::to_owned),
        _ => None,
    }
}

/// Polls `check` until it holds or [`WAIT`] passes.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_moves_from_this_device_to_safely_on_the_relay() {
    let relay = TestRelay::start().await;
    let ana = phone("ana-phone", Arc::new(MemoryStore::default()));
    let doc = ana
        .create(|tx| {
            tx.put(automerge::ROOT, "title", "Check-in").unwrap();
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap()
        .0;
    ana.change(doc, |tx| {
        tx.put(automerge::ROOT, "title", "Check-in and review")
    })
    .await
    .unwrap();

    // Offline: the app shows "only on this device" and two pending changes.
    assert_eq!(ana.status(doc).await.unwrap(), SyncStatus::OnlyOnThisDevice);
    assert_eq!(ana.pending_changes(doc).await.unwrap(), 2);

    ana.connect(&relay.url());
    ana.wait_acknowledged(doc, WAIT).await.unwrap();
    assert_eq!(ana.status(doc).await.unwrap(), SyncStatus::SafelyOnRelay);
    assert_eq!(ana.pending_changes(doc).await.unwrap(), 0);

    // A new change is pending until the relay has it again.
    ana.change(doc, |tx| tx.put(automerge::ROOT, "title", "Agenda"))
        .await
        .unwrap();
    ana.wait_acknowledged(doc, WAIT).await.unwrap();
    assert_eq!(ana.status(doc).await.unwrap(), SyncStatus::SafelyOnRelay);
    assert_eq!(ana.pending_changes(doc).await.unwrap(), 0);

    ana.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_gets_the_current_value_then_remote_changes_and_ends_when_dropped() {
    let relay = TestRelay::start().await;
    let ana = phone("ana-phone", Arc::new(MemoryStore::default()));
    let ben = phone("ben-phone", Arc::new(MemoryStore::default()));
    ana.connect(&relay.url());
    ben.connect(&relay.url());
    let doc = ana
        .create(|tx| {
            tx.put(automerge::ROOT, "title", "Minutes").unwrap();
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap()
        .0;
    ana.wait_acknowledged(doc, WAIT).await.unwrap();
    ben.find(doc, WAIT).await.unwrap();
    ben.wait_for(doc, WAIT, |d| title_of(d).as_deref() == Some("Minutes"))
        .await
        .unwrap();

    let (tx, mut updates) = tokio::sync::mpsc::unbounded_channel();
    let sub = ben.subscribe(doc, title_of, move |u| {
        let _ = tx.send(u);
    });
    let Some(Update::Changed { heads, value }) =
        tokio::time::timeout(WAIT, updates.recv()).await.unwrap()
    else {
        panic!("no first state");
    };
    assert_eq!(value.as_deref(), Some("Minutes"));
    assert_eq!(Some(heads), ben.heads(doc).await.unwrap());

    ana.change(doc, |tx| tx.put(automerge::ROOT, "title", "Minutes, March"))
        .await
        .unwrap();
    let mut latest = value;
    while latest.as_deref() != Some("Minutes, March") {
        match tokio::time::timeout(WAIT, updates.recv())
            .await
            .expect("an update for Ana's change")
            .expect("the subscription is live")
        {
            Update::Changed { value, .. } => latest = value,
            Update::Failed(e) => panic!("the subscription failed: {e}"),
        }
    }
    assert_eq!(ben.active_subscriptions(), 1);

    drop(sub);
    eventually("the dropped subscription stops", || {
        ben.active_subscriptions() == 0
    })
    .await;

    ana.shutdown().await;
    ben.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reaches_the_other_phone_and_goodbye_clears_it() {
    let relay = TestRelay::start().await;
    let ana = phone("ana-phone", Arc::new(MemoryStore::default()));
    let ben = phone("ben-phone", Arc::new(MemoryStore::default()));
    ana.connect(&relay.url());
    ben.connect(&relay.url());
    let doc = ana
        .create(|tx| {
            tx.put(automerge::ROOT, "title", "Minutes").unwrap();
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap()
        .0;
    ana.wait_acknowledged(doc, WAIT).await.unwrap();
    ana.set_presence(doc, json!({"cursor": {"start": 3, "end": 3}}))
        .await
        .unwrap();
    ben.find(doc, WAIT).await.unwrap();
    ben.set_presence(doc, json!({"cursor": {"start": 0, "end": 0}}))
        .await
        .unwrap();

    // Ben's snapshot reaches Ana, who answers with hers (as automerge-repo's Presence does).
    eventually("Ana sees Ben", || {
        ana.presence(doc)
            .iter()
            .any(|p| p.peer.as_str() == "ben-phone")
    })
    .await;
    eventually("Ben sees Ana's cursor", || {
        ben.presence(doc).iter().any(|p| {
            p.peer.as_str() == "ana-phone" && p.state == json!({"cursor": {"start": 3, "end": 3}})
        })
    })
    .await;

    ana.update_presence(doc, "cursor", json!({"start": 9, "end": 12}))
        .await
        .unwrap();
    eventually("Ben sees Ana's moved cursor", || {
        ben.presence(doc)
            .iter()
            .any(|p| p.state["cursor"] == json!({"start": 9, "end": 12}))
    })
    .await;

    ana.leave_presence(doc).await.unwrap();
    eventually("Ben forgets Ana", || ben.presence(doc).is_empty()).await;

    ana.shutdown().await;
    ben.shutdown().await;
    relay.shutdown().await;
}

/// Wraps a transport and keeps a copy of every frame the engine sent.
struct Recording {
    inner: TungsteniteTransport,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

struct RecordingConnection {
    inner: Box<dyn Connection>,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Transport for Recording {
    fn connect<'a>(
        &'a self,
        url: &'a str,
        credential: Option<&'a Credential>,
    ) -> BoxFuture<'a, Result<Box<dyn Connection>, TransportError>> {
        Box::pin(async move {
            let inner = self.inner.connect(url, credential).await?;
            Ok(Box::new(RecordingConnection {
                inner,
                sent: self.sent.clone(),
            }) as Box<dyn Connection>)
        })
    }
}

impl Connection for RecordingConnection {
    fn send(&self, frame: Vec<u8>) -> BoxFuture<'_, Result<(), TransportError>> {
        self.sent.lock().unwrap().push(frame.clone());
        self.inner.send(frame)
    }
    fn recv(&self) -> BoxFuture<'_, Option<Received>> {
        self.inner.recv()
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        self.inner.ping()
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflections_written_offline_never_cross_the_wire_and_a_shared_excerpt_does_exactly() {
    let relay = TestRelay::start().await;
    // The journal shares the phone's store with the engine, as it would on a device.
    let store = Arc::new(MemoryStore::default());
    let journal = Journal::open(store.clone(), &[42; 32]);
    let secrets = [
        "I froze when the caller mentioned pills",
        "Supervision helped me name the fear",
        "Next time I will slow down and breathe",
    ];
    let mut entries = Vec::new();
    for (i, text) in secrets.iter().enumerate() {
        let mut entry = Reflection::new(
            1_700_000_000_000 + i as i64,
            Some(ReflectionTemplate::Gibbs),
            "",
        );
        entry.answers.insert("feelings".into(), (*text).to_owned());
        journal.save(&entry).unwrap();
        entries.push(entry);
    }

    let ana_id = MemberId::from("member-ana");
    let sent = Arc::new(Mutex::new(Vec::new()));
    let ana = phone("ana-phone", store.clone());
    let author = ana_id.clone();
    let thread_doc = ana
        .create(move |tx| thread::init(tx, "Between meetings", &author, 1))
        .await
        .unwrap()
        .0;
    ana.connect_with(
        Arc::new(Recording {
            inner: TungsteniteTransport::new(8 * 1024 * 1024),
            sent: sent.clone(),
        }),
        &relay.url(),
    );
    ana.wait_acknowledged(thread_doc, WAIT).await.unwrap();

    // The member previews a part of the third reflection and shares it.
    let excerpt = share_excerpt(
        &entries[2],
        &ExcerptSource::Answer("feelings".into()),
        10..38,
    )
    .unwrap();
    assert_eq!(excerpt.text, "I will slow down and breathe");
    let (author, shared) = (ana_id.clone(), excerpt.clone());
    ana.change(thread_doc, move |tx| {
        post_excerpt(tx, &author, &shared, 2).map(|_| ())
    })
    .await
    .unwrap();
    ana.wait_acknowledged(thread_doc, WAIT).await.unwrap();

    // Another member's phone gets exactly the excerpt.
    let ben = phone("ben-phone", Arc::new(MemoryStore::default()));
    ben.connect(&relay.url());
    ben.find(thread_doc, WAIT).await.unwrap();
    ben.wait_for(thread_doc, WAIT, |d| {
        thread::posts(d).is_ok_and(|p| !p.is_empty())
    })
    .await
    .unwrap();
    let posts = ben
        .read(thread_doc, |d| thread::posts(d).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].body, "I will slow down and breathe");

    // What Ana's engine sent: only the thread document, and no reflection text beyond the
    // shared excerpt.
    let frames = sent.lock().unwrap().clone();
    assert!(frames.len() >= 3, "the engine synced (handshake + sync)");
    let mut announced = BTreeSet::new();
    for frame in &frames {
        for secret in [secrets[0], secrets[1], "Next time"] {
            assert!(!contains(frame, secret), "a reflection crossed the wire");
        }
        match Message::decode(frame).expect("the engine sends valid frames") {
            Message::Request(m) | Message::Sync(m) => {
                for secret in [secrets[0], secrets[1], "Next time"] {
                    assert!(!contains(&m.data, secret));
                }
                announced.insert(m.document_id);
            }
            Message::Ephemeral { .. } => panic!("no ephemeral message was asked for"),
            _ => {}
        }
    }
    assert_eq!(announced, BTreeSet::from([thread_doc]));

    // The journal is intact on the phone, and the engine never loaded it as a document.
    assert_eq!(journal.list().unwrap(), entries);
    let docs: Vec<DocumentId> = ana.with_engine(|e| e.document_ids()).await.unwrap();
    assert_eq!(docs, vec![thread_doc]);

    ana.shutdown().await;
    ben.shutdown().await;
    relay.shutdown().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The phone is killed the moment `change` returns: what is on disk then (copied before
/// anything else can run, so no drop or shutdown can flush on the way out) must hold it.
#[test]
fn a_phone_killed_right_after_a_commit_has_it_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let after_kill = dir.path().join("after-kill");
    let (doc, heads) = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let result = rt.block_on(async {
            let store = Arc::new(SledStore::open(&live, &SledConfig::default()).unwrap());
            let client = phone("ana-phone", store);
            let doc = client
                .create(|tx| {
                    tx.put(automerge::ROOT, "title", "Reflection on boundaries")
                        .unwrap();
                    Ok::<(), std::convert::Infallible>(())
                })
                .await
                .unwrap()
                .0;
            let ((), heads) = client
                .change_with_heads(doc, |tx| {
                    tx.put(automerge::ROOT, "title", "Minutes, agreed")
                })
                .await
                .unwrap();
            copy_dir(&live, &after_kill);
            (doc, heads)
        });
        // No shutdown: the runtime is torn down under the client.
        rt.shutdown_background();
        result
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Arc::new(SledStore::open(&after_kill, &SledConfig::default()).unwrap());
        let client = phone("ana-phone", store);
        client.find(doc, WAIT).await.unwrap();
        assert_eq!(client.heads(doc).await.unwrap(), Some(heads));
        let title = client.read(doc, title_of).await.unwrap().flatten();
        assert_eq!(title.as_deref(), Some("Minutes, agreed"));
        client.shutdown().await;
    });
}
