//! The client against an in-process relay (a relay-role engine on its own host, reached
//! through fake websocket and HTTP transports): credentials on connect, document
//! registration kept across restarts and offered again once accepted, and edits that stay
//! on the device until the relay takes them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::transaction::Transactable;
use futures_util::future::BoxFuture;

use super::*;
use crate::engine::{Access, Direction, Operation, PeerInfo};
use crate::ids::{DeviceId, MemberId};
use crate::membership::api::RegisterDocument;
use crate::membership::{random_id, BoundKind, GroupId, Identity};
use crate::runtime::{ConnectionInput, Outbound, OutboundQueue};
use crate::store::MemoryStore;
use crate::time::Timestamp;

/// Every wait in these tests: generous, since a loaded CI machine is slow; a pass takes
/// milliseconds.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    ReadOnly,
    ReadWrite,
}

/// What the relay has bound, and how our device may use it.
#[derive(Clone, Default)]
struct Bindings(Arc<Mutex<BTreeMap<DocumentId, Mode>>>);

impl Bindings {
    fn get(&self, doc: &DocumentId) -> Option<Mode> {
        self.0.lock().unwrap().get(doc).copied()
    }
    fn set(&self, doc: DocumentId, mode: Mode) {
        self.0.lock().unwrap().insert(doc, mode);
    }
}

impl Access for Bindings {
    fn allows(&self, _: &PeerInfo<'_>, doc: &DocumentId, op: Operation, _: Timestamp) -> bool {
        match (self.get(doc), op) {
            (None, _) => false,
            (Some(_), Operation::Read) => true,
            (Some(mode), Operation::Write) => mode == Mode::ReadWrite,
        }
    }
}

struct Relay {
    host: Host,
    store: Arc<MemoryStore>,
    bindings: Bindings,
    /// The network to the relay works.
    up: AtomicBool,
    /// The credential the relay accepts.
    token: Mutex<String>,
    /// Websocket dials seen.
    dials: AtomicUsize,
    /// Registrations to answer 503 before accepting.
    busy: AtomicUsize,
    /// Registrations are answered 403.
    forbid: AtomicBool,
    /// How new registrations are bound.
    new_mode: Mutex<Mode>,
    open: Mutex<Vec<Arc<Bridge>>>,
}

impl Relay {
    fn start(token: &Credential) -> Arc<Relay> {
        let bindings = Bindings::default();
        let mut engine = Engine::new(EngineConfig::new(Role::Relay, PeerId::from("relay"), 7));
        engine.set_access(Box::new(bindings.clone()));
        let store = Arc::new(MemoryStore::default());
        struct Quiet;
        impl Observer for Quiet {
            fn event(&mut self, _: &Event) {}
        }
        let host = Host::start(
            engine,
            store.clone(),
            Box::new(Quiet),
            HostConfig::default(),
        );
        Arc::new(Relay {
            host,
            store,
            bindings,
            up: AtomicBool::new(true),
            token: Mutex::new(token.as_str().to_owned()),
            dials: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            forbid: AtomicBool::new(false),
            new_mode: Mutex::new(Mode::ReadWrite),
            open: Mutex::new(Vec::new()),
        })
    }

    fn endpoint(self: &Arc<Self>) -> RelayEndpoint {
        RelayEndpoint {
            url: "ws://relay.test/".to_owned(),
            transport: Arc::new(self.clone()),
            api: Some(RelayApi::new("http://relay.test", Arc::new(self.clone()))),
            credential: None,
        }
    }

    /// Whether the relay's own store holds any of `doc`.
    fn stores(&self, doc: &DocumentId) -> bool {
        !self
            .store
            .load_range(&[doc.to_string()])
            .unwrap()
            .is_empty()
    }

    /// Closes every open connection from the relay's side.
    async fn drop_connections(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap());
        for bridge in open {
            bridge.close().await;
        }
    }

    async fn shutdown(&self) {
        self.drop_connections().await;
        self.host.shutdown().await;
    }
}

/// One websocket between the client and the relay's host.
struct Bridge {
    input: ConnectionInput,
    outbound: tokio::sync::Mutex<OutboundQueue>,
    closed: watch::Sender<bool>,
}

impl Connection for Bridge {
    fn send(&self, frame: Vec<u8>) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if *self.closed.borrow() {
                return Err(TransportError::Closed);
            }
            self.input
                .frame(frame)
                .await
                .map_err(|_| TransportError::Closed)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        // The bridge never goes half-open: a ping has nothing to prove.
        Box::pin(async { Ok(()) })
    }

    fn recv(&self) -> BoxFuture<'_, Option<Received>> {
        Box::pin(async move {
            let mut closed = self.closed.subscribe();
            if *closed.borrow_and_update() {
                return None;
            }
            let mut outbound = self.outbound.lock().await;
            tokio::select! {
                out = outbound.recv() => match out {
                    Some(Outbound::Frame(f)) => Some(Received::Frame(f)),
                    Some(Outbound::Close(_)) | None => None,
                },
                _ = closed.changed() => None,
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if !self.closed.send_replace(true) {
                self.input.closed().await;
            }
        })
    }
}

impl Transport for Arc<Relay> {
    fn connect<'a>(
        &'a self,
        _url: &'a str,
        credential: Option<&'a Credential>,
    ) -> BoxFuture<'a, Result<Box<dyn Connection>, TransportError>> {
        Box::pin(async move {
            self.dials.fetch_add(1, Ordering::SeqCst);
            if !self.up.load(Ordering::SeqCst) {
                return Err(TransportError::Unreachable {
                    reason: "no route".to_owned(),
                });
            }
            let Some(credential) =
                credential.filter(|c| c.as_str() == self.token.lock().unwrap().as_str())
            else {
                return Err(TransportError::Rejected {
                    status: 401,
                    retry_after: None,
                });
            };
            let handle = self
                .host
                .open(Direction::Incoming, Some(credential.peer_id().to_string()))
                .await
                .map_err(|_| TransportError::Closed)?;
            let bridge = Arc::new(Bridge {
                input: handle.input,
                outbound: tokio::sync::Mutex::new(handle.outbound),
                closed: watch::channel(false).0,
            });
            self.open.lock().unwrap().push(bridge.clone());
            Ok(Box::new(ArcBridge(bridge)) as Box<dyn Connection>)
        })
    }
}

struct ArcBridge(Arc<Bridge>);

impl Connection for ArcBridge {
    fn send(&self, frame: Vec<u8>) -> BoxFuture<'_, Result<(), TransportError>> {
        self.0.send(frame)
    }
    fn recv(&self) -> BoxFuture<'_, Option<Received>> {
        self.0.recv()
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        self.0.ping()
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        self.0.close()
    }
}

fn json(status: u16, body: &impl serde::Serialize) -> HttpResponse {
    HttpResponse {
        status,
        retry_after: None,
        body: serde_json::to_vec(body).unwrap(),
    }
}

impl HttpTransport for Arc<Relay> {
    fn request(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(async move {
            if !self.up.load(Ordering::SeqCst) {
                return Err(TransportError::Unreachable {
                    reason: "no route".to_owned(),
                });
            }
            let registering = request.method == Method::Post
                && request.url.starts_with("http://relay.test/v1/groups/")
                && request.url.ends_with("/documents");
            if !registering {
                return Ok(json(
                    404,
                    &serde_json::json!({"error": "not_found", "message": ""}),
                ));
            }
            let authorised = request
                .bearer
                .as_ref()
                .is_some_and(|c| c.as_str() == self.token.lock().unwrap().as_str());
            if !authorised {
                return Ok(json(
                    401,
                    &serde_json::json!({"error": "unauthorized", "message": ""}),
                ));
            }
            if self.forbid.load(Ordering::SeqCst) {
                return Ok(json(
                    403,
                    &serde_json::json!({"error": "forbidden", "message": "the role may not write this kind"}),
                ));
            }
            if self
                .busy
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Ok(json(
                    503,
                    &serde_json::json!({"error": "unavailable", "message": ""}),
                ));
            }
            let body: RegisterDocument =
                serde_json::from_slice(request.json.as_deref().unwrap_or_default()).unwrap();
            let mode = *self.new_mode.lock().unwrap();
            if self.bindings.get(&body.document_id).is_none() {
                self.bindings.set(body.document_id, mode);
            }
            Ok(json(201, &body))
        })
    }
}

fn device() -> Credential {
    Credential::issue(Identity {
        member: MemberId::from(random_id()),
        device: DeviceId::from(random_id()),
    })
    .0
}

fn config(credential: &Credential) -> ClientConfig {
    let mut config = ClientConfig::for_device(credential.clone());
    config.min_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(50);
    config.registration_retry = Duration::from_millis(20);
    config
}

async fn wait_status(client: &Client, want: ConnectionStatus) {
    let mut rx = client.watch_connection();
    tokio::time::timeout(WAIT, rx.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("status {:?}, not {want:?}", client.connection_status()))
        .unwrap();
}

async fn put_n(client: &Client, doc: DocumentId, n: i64) {
    client
        .change(doc, move |tx| tx.put(automerge::ROOT, "n", n))
        .await
        .unwrap();
}

fn group() -> GroupId {
    GroupId::from("0123456789abcdef")
}

#[tokio::test]
async fn a_document_made_offline_is_registered_after_a_restart_and_reaches_the_relay() {
    let credential = device();
    let relay = Relay::start(&credential);
    relay.up.store(false, Ordering::SeqCst);
    let store = Arc::new(MemoryStore::default());

    let first = Client::start(store.clone(), config(&credential)).unwrap();
    first.connect_to(relay.endpoint());
    wait_status(&first, ConnectionStatus::Offline).await;
    let doc = first
        .create_in_group(&group(), BoundKind::Thread, |tx| {
            tx.put(automerge::ROOT, "n", 1)
        })
        .await
        .unwrap()
        .0;
    put_n(&first, doc, 2).await;
    let pending = first.registration(doc).expect("kept while offline");
    assert_eq!((pending.kind, &pending.refused), (BoundKind::Thread, &None));
    first.shutdown().await;
    let kept = store
        .load_range(&[
            CLIENT_KEY_PREFIX.to_owned(),
            PENDING_REGISTRATION_TABLE.to_owned(),
        ])
        .unwrap();
    assert_eq!(kept.len(), 1, "the registration is in the device store");

    relay.up.store(true, Ordering::SeqCst);
    let second = Client::start(store.clone(), config(&credential)).unwrap();
    assert_eq!(second.registration(doc), Some(pending));
    second.connect_to(relay.endpoint());
    second.find(doc, WAIT).await.unwrap();
    second.wait_acknowledged(doc, WAIT).await.unwrap();
    assert_eq!(relay.bindings.get(&doc), Some(Mode::ReadWrite));
    assert!(relay.stores(&doc));
    assert_eq!(second.registration(doc), None);
    let kept = store
        .load_range(&[
            CLIENT_KEY_PREFIX.to_owned(),
            PENDING_REGISTRATION_TABLE.to_owned(),
        ])
        .unwrap();
    assert!(kept.is_empty(), "the record is removed once accepted");
    second.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_document_offered_before_the_relay_accepted_it_is_offered_again_once_registered() {
    let credential = device();
    let relay = Relay::start(&credential);
    // The first registration finds the relay busy: the document is created and offered
    // anyway, and the relay answers `doc-unavailable` (it is not bound yet).
    relay.busy.store(1, Ordering::SeqCst);
    let mut config = config(&credential);
    // Long enough that the timer's retry does not take the 503 meant for the first try.
    config.registration_retry = Duration::from_millis(200);
    let client = Client::start(Arc::new(MemoryStore::default()), config).unwrap();
    client.connect_to(relay.endpoint());
    wait_status(&client, ConnectionStatus::Connected).await;
    let doc = client
        .create_in_group(&group(), BoundKind::Meeting, |tx| {
            tx.put(automerge::ROOT, "n", 1)
        })
        .await
        .unwrap()
        .0;
    client.wait_acknowledged(doc, WAIT).await.unwrap();
    assert!(relay.stores(&doc));
    assert_eq!(client.registration(doc), None);
    client.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_refused_credential_stops_the_dialling_until_the_app_sets_another() {
    let good = device();
    let relay = Relay::start(&good);
    let store = Arc::new(MemoryStore::default());
    // The same device, with a credential the relay no longer accepts (rotated away).
    let stale = Credential::issue(good.identity().clone()).0;
    let client = Client::start(store, config(&stale)).unwrap();
    client.connect_to(relay.endpoint());
    wait_status(&client, ConnectionStatus::Unauthorized).await;
    assert!(matches!(
        client.connection_status().error(),
        Some(ClientError::Unauthorized)
    ));
    let dials = relay.dials.load(Ordering::SeqCst);
    // Many backoff periods later, no further attempt was made with the refused credential.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(relay.dials.load(Ordering::SeqCst), dials);

    let other = device();
    assert!(matches!(
        client.set_credential(other),
        Err(ClientError::CredentialMismatch)
    ));
    client.set_credential(good.clone()).unwrap();
    wait_status(&client, ConnectionStatus::Connected).await;
    assert_eq!(client.credential(), Some(good));
    client.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_refused_registration_is_shown_and_the_document_syncs_once_allowed() {
    let credential = device();
    let relay = Relay::start(&credential);
    relay.forbid.store(true, Ordering::SeqCst);
    let client = Client::start(Arc::new(MemoryStore::default()), config(&credential)).unwrap();
    client.connect_to(relay.endpoint());
    wait_status(&client, ConnectionStatus::Connected).await;
    let doc = client
        .create_in_group(&group(), BoundKind::Settings, |tx| {
            tx.put(automerge::ROOT, "n", 1)
        })
        .await
        .unwrap()
        .0;
    let refused = client.registration(doc).and_then(|r| r.refused);
    assert!(
        matches!(refused, Some(RegistrationRefused::Forbidden { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        refused.unwrap().to_error(),
        ClientError::Forbidden { .. }
    ));
    // The document stays on the device and editable; the relay has none of it.
    put_n(&client, doc, 2).await;
    assert_eq!(
        client.status(doc).await.unwrap(),
        SyncStatus::OnlyOnThisDevice
    );
    assert!(!relay.stores(&doc));

    relay.forbid.store(false, Ordering::SeqCst);
    assert_eq!(client.retry_registrations().await.unwrap(), vec![]);
    client.wait_acknowledged(doc, WAIT).await.unwrap();
    assert!(relay.stores(&doc));
    client.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn edits_refused_to_a_read_only_device_stay_on_it_and_sync_once_it_may_write() {
    let credential = device();
    let relay = Relay::start(&credential);
    *relay.new_mode.lock().unwrap() = Mode::ReadOnly;
    let store = Arc::new(MemoryStore::default());
    let client = Client::start(store.clone(), config(&credential)).unwrap();
    client.connect_to(relay.endpoint());
    wait_status(&client, ConnectionStatus::Connected).await;
    let doc = client
        .create_in_group(&group(), BoundKind::Thread, |tx| {
            tx.put(automerge::ROOT, "n", 1)
        })
        .await
        .unwrap()
        .0;
    assert_eq!(client.registration(doc), None, "registered, read-only");
    put_n(&client, doc, 2).await;
    assert!(matches!(
        client
            .wait_acknowledged(doc, Duration::from_millis(300))
            .await,
        Err(ClientError::Timeout)
    ));
    assert!(!relay.stores(&doc), "a refused write is never stored");
    client.shutdown().await;

    // The edits are in the device store: a restarted client has them.
    relay.bindings.set(doc, Mode::ReadWrite);
    relay.drop_connections().await;
    let restarted = Client::start(store, config(&credential)).unwrap();
    restarted.find(doc, WAIT).await.unwrap();
    assert_eq!(restarted.pending_changes(doc).await.unwrap(), 2);
    restarted.connect_to(relay.endpoint());
    restarted.wait_acknowledged(doc, WAIT).await.unwrap();
    assert!(relay.stores(&doc));
    restarted.shutdown().await;
    relay.shutdown().await;
}
