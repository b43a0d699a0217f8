//! The device's relay client against real relays on loopback: callback subscriptions, two
//! relays with an identity each, keepalive through a half-open link, sync-now.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use cairn_sync::client::{
    Client, ClientConfig, Connection, ConnectionState, ConnectionStatus, RelayApi, RelayEndpoint,
    Transport, TransportError, TungsteniteTransport, Update,
};
use cairn_sync::membership::{BoundKind, Credential, GroupId};
use cairn_sync::store::{MemoryStore, Storage};
use cairn_tests::relay::TestRelay;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

fn phone(name: &str) -> ClientConfig {
    let mut config = ClientConfig::new(name);
    config.min_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(500);
    config
}

fn n_of(doc: &automerge::Automerge) -> Option<i64> {
    match doc.get(ROOT, "n").ok()?? {
        (automerge::Value::Scalar(s), _) => s.as_i64(),
        _ => None,
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_state(relay: &cairn_sync::client::RelayHandle, want: ConnectionState) {
    let mut rx = relay.watch_status();
    tokio::time::timeout(WAIT, rx.wait_for(|s| s.state() == want))
        .await
        .unwrap_or_else(|_| panic!("{} never {want:?} (is {:?})", relay.url(), relay.status()))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_subscription_sees_a_remote_change_and_nothing_after_cancel() {
    let relay = TestRelay::start().await;
    let store: Arc<dyn Storage> = Arc::new(MemoryStore::default());
    let ana = Client::start(store.clone(), phone("ana")).unwrap();
    let store: Arc<dyn Storage> = Arc::new(MemoryStore::default());
    let ben = Client::start(store.clone(), phone("ben")).unwrap();
    ana.connect(&relay.url());
    ben.connect(&relay.url());
    let (doc, ()) = ana.create(|tx| tx.put(ROOT, "n", 1)).await.unwrap();
    ana.wait_acknowledged(doc, WAIT).await.unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    // Ben does not have the document: the subscription fetches it from the relay.
    let sub = ben.subscribe(doc, n_of, move |u| match u {
        Update::Changed { value, .. } => sink.lock().unwrap().push(value),
        Update::Failed(e) => panic!("the subscription failed: {e}"),
    });
    eventually("Ben's first value", || {
        seen.lock().unwrap().first() == Some(&Some(1))
    })
    .await;
    ana.change(doc, |tx| tx.put(ROOT, "n", 2)).await.unwrap();
    eventually("Ana's change reaches Ben's callback", || {
        seen.lock().unwrap().last() == Some(&Some(2))
    })
    .await;
    sub.cancel();
    let calls = seen.lock().unwrap().len();
    ana.change(doc, |tx| tx.put(ROOT, "n", 3)).await.unwrap();
    ben.wait_for(doc, WAIT, |d| n_of(d) == Some(3))
        .await
        .unwrap();
    eventually("the task ends", || ben.active_subscriptions() == 0).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        calls,
        "a callback after cancel returned"
    );

    let dropped = ben.subscribe(doc, n_of, |_| {});
    eventually("a new subscription runs", || {
        ben.active_subscriptions() == 1
    })
    .await;
    drop(dropped);
    eventually("dropping it ends it", || ben.active_subscriptions() == 0).await;
    ana.shutdown().await;
    ben.shutdown().await;
}

fn api(relay: &TestRelay) -> RelayApi {
    RelayApi::over_http(&format!("http://{}", relay.addr()))
}

/// A device enrolled on `relay` with its first invite (its own member and device ids).
async fn enrol(relay: &TestRelay, code: &str, pseudonym: &str) -> (Credential, GroupId) {
    let enrolled = api(relay).redeem_invite(code, pseudonym).await.unwrap();
    let credential = enrolled
        .credential
        .expect("a new device gets its credential");
    let group = enrolled.group.expect("the group joined");
    api(relay)
        .with_credential(credential.clone())
        .accept_code_of_conduct(&group.group_id, group.code_of_conduct_version)
        .await
        .unwrap();
    (credential, group.group_id)
}

/// Counts dials per URL.
#[derive(Default)]
struct Counting {
    inner: Option<TungsteniteTransport>,
    dials: Mutex<BTreeMap<String, usize>>,
}

impl Transport for Counting {
    fn connect<'a>(
        &'a self,
        url: &'a str,
        credential: Option<&'a Credential>,
    ) -> BoxFuture<'a, Result<Box<dyn Connection>, TransportError>> {
        *self
            .dials
            .lock()
            .unwrap()
            .entry(url.to_owned())
            .or_default() += 1;
        self.inner
            .as_ref()
            .expect("a transport")
            .connect(url, credential)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_syncs_with_two_relays_under_an_identity_each() {
    let (north, north_invite) = TestRelay::start_with_membership().await;
    let (south, south_invite) = TestRelay::start_with_membership().await;
    let (north_cred, north_group) = enrol(&north, &north_invite.link, "Robin").await;
    let (south_cred, south_group) = enrol(&south, &south_invite.link, "Robin").await;
    assert_ne!(north_cred.peer_id(), south_cred.peer_id());

    let transport = Arc::new(Counting {
        inner: Some(TungsteniteTransport::new(16 * 1024 * 1024)),
        ..Counting::default()
    });
    let endpoint = |relay: &TestRelay, credential: &Credential| RelayEndpoint {
        url: relay.url(),
        transport: transport.clone(),
        api: Some(api(relay)),
        credential: Some(credential.clone()),
    };
    let store: Arc<dyn Storage> = Arc::new(MemoryStore::default());
    let client =
        Client::start(store.clone(), ClientConfig::for_device(north_cred.clone())).unwrap();
    let to_north = client.connect_to(endpoint(&north, &north_cred));
    let to_south = client.connect_to(endpoint(&south, &south_cred));
    wait_state(&to_north, ConnectionState::Online).await;
    wait_state(&to_south, ConnectionState::Online).await;

    let (n_doc, ()) = to_north
        .create_in_group(&north_group, BoundKind::Thread, |tx| tx.put(ROOT, "n", 1))
        .await
        .unwrap();
    let (s_doc, ()) = to_south
        .create_in_group(&south_group, BoundKind::Thread, |tx| tx.put(ROOT, "n", 2))
        .await
        .unwrap();
    client.wait_acknowledged(n_doc, WAIT).await.unwrap();
    client.wait_acknowledged(s_doc, WAIT).await.unwrap();
    assert_eq!(
        client.registrations(),
        vec![],
        "each relay took its own registration"
    );

    // A second connect to the same URL is the same relay, not a second connection.
    let dials_before = transport.dials.lock().unwrap().clone();
    let again = client.connect_to(endpoint(&north, &north_cred));
    assert_eq!(again.url(), to_north.url());
    assert_eq!(client.relays().len(), 2);
    let (n_doc2, ()) = to_north
        .create_in_group(&north_group, BoundKind::Thread, |tx| tx.put(ROOT, "n", 3))
        .await
        .unwrap();
    client.wait_acknowledged(n_doc2, WAIT).await.unwrap();
    assert_eq!(
        *transport.dials.lock().unwrap(),
        dials_before,
        "no new dial"
    );
    assert_eq!(client.connected(), 2, "one connection per relay");

    // Each relay's status is its own.
    south.shutdown().await;
    wait_state(&to_south, ConnectionState::Offline).await;
    assert_eq!(to_north.status(), ConnectionStatus::Connected);
    assert_eq!(client.connection_status(), ConnectionStatus::Connected);
    client.shutdown().await;
}

/// A loopback TCP proxy whose links can be made half-open: they stop forwarding in both
/// directions without closing.
struct Proxy {
    addr: std::net::SocketAddr,
    /// Links accepted so far.
    accepted: Arc<AtomicUsize>,
    /// Links numbered below this forward nothing.
    stalled_below: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(to: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stalled_below = Arc::new(AtomicUsize::new(0));
        let (a, s) = (accepted.clone(), stalled_below.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let link = a.fetch_add(1, Ordering::SeqCst);
                let Ok(relay) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (rr, rw) = relay.into_split();
                tokio::spawn(forward(cr, rw, link, s.clone()));
                tokio::spawn(forward(rr, cw, link, s.clone()));
            }
        });
        Proxy {
            addr,
            accepted,
            stalled_below,
            task,
        }
    }

    /// Makes every link open now half-open; later ones forward.
    fn stall_open_links(&self) {
        self.stalled_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: usize,
    stalled_below: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if link < stalled_below.load(Ordering::SeqCst) {
            // Half-open: the bytes go nowhere and nobody is told.
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_link_is_noticed_by_keepalive_and_the_edit_made_meanwhile_arrives() {
    let relay = TestRelay::start().await;
    let proxy = Proxy::start(relay.addr()).await;
    let store: Arc<dyn Storage> = Arc::new(MemoryStore::default());
    let mut config = phone("ana");
    config.keepalive_interval = Duration::from_millis(100);
    config.keepalive_timeout = Duration::from_millis(400);
    // Long enough that the Offline state is seen before the redial.
    config.min_backoff = Duration::from_millis(300);
    let client = Client::start(store, config).unwrap();
    let to_relay = client.connect(&format!("ws://{}/", proxy.addr));
    let (doc, ()) = client.create(|tx| tx.put(ROOT, "n", 1)).await.unwrap();
    client.wait_acknowledged(doc, WAIT).await.unwrap();

    let states = Arc::new(Mutex::new(Vec::new()));
    let sink = states.clone();
    let _watch = to_relay.on_status(move |s| sink.lock().unwrap().push(s.state()));
    proxy.stall_open_links();
    client.change(doc, |tx| tx.put(ROOT, "n", 2)).await.unwrap();
    eventually("the client reports Offline", || {
        states.lock().unwrap().contains(&ConnectionState::Offline)
    })
    .await;
    client.wait_acknowledged(doc, WAIT).await.unwrap();
    assert_eq!(to_relay.status(), ConnectionStatus::Connected);
    assert!(
        proxy.accepted.load(Ordering::SeqCst) >= 2,
        "a new link was dialled"
    );

    // What the relay holds: another device reads the edit straight from it.
    let reader = Client::start(Arc::new(MemoryStore::default()), phone("ben")).unwrap();
    reader.connect(&relay.url());
    reader.find(doc, WAIT).await.unwrap();
    reader
        .wait_for(doc, WAIT, |d| n_of(d) == Some(2))
        .await
        .unwrap();
    reader.shutdown().await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_reports_pending_documents_offline_and_none_once_the_relay_has_them() {
    // An address nobody listens on.
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let store = Arc::new(MemoryStore::default());
    let first = Client::start(store.clone(), phone("ana")).unwrap();
    first.connect(&format!("ws://{unreachable}/"));
    let mut docs = Vec::new();
    for n in 0..2 {
        docs.push(
            first
                .create(move |tx| tx.put(ROOT, "n", n))
                .await
                .unwrap()
                .0,
        );
    }
    let report = tokio::time::timeout(WAIT, first.sync_now(Duration::from_millis(500)))
        .await
        .expect("sync_now keeps its deadline")
        .unwrap();
    docs.sort();
    assert_eq!(report.pending, docs);
    assert_eq!(report.synced, 0);
    assert!(report.offline);
    first.shutdown().await;

    // After a restart nothing is in memory: sync_now loads the stored documents itself.
    let relay = TestRelay::start().await;
    let restarted = Client::start(store.clone(), phone("ana")).unwrap();
    restarted.connect(&relay.url());
    let report = restarted.sync_now(WAIT).await.unwrap();
    assert_eq!(report.pending, vec![]);
    assert_eq!(report.synced, 2);
    assert!(!report.offline);
    restarted.shutdown().await;
}
