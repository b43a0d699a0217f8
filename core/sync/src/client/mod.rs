//! The on-device runtime (tokio): an [`crate::engine::Engine`] in the client role over a
//! [`Storage`], dialling a relay over websockets with reconnect and backoff.
//!
//! Every call that commits a change returns once the change is durable on this device;
//! [`Client::wait_acknowledged`] waits until the relay has shown it holds our heads
//! ("safely on the relay"), and [`Client::status`] tells an app which of "only on this
//! device", "sending" and "safely on the relay" to show.
//!
//! The relay is reached through a [`RelayEndpoint`]: a [`Transport`] for the websocket
//! and a [`RelayApi`] (over an [`HttpTransport`]) for the membership calls. A phone app
//! hands in its platform websocket and HTTP stack with [`Client::connect_to`];
//! [`Client::connect`] uses [`TungsteniteTransport`] and [`HyperTransport`] (plain HTTP).
//!
//! ## Membership
//! A device enrols with an invite ([`RelayApi::redeem_invite`], no client needed yet) or a
//! device-link code ([`RelayApi::link_device`]) and gets its [`Credential`] once; the app
//! keeps it in the platform keystore and starts the client with
//! [`ClientConfig::for_device`]. Every connect presents it. [`Client::connection_status`]
//! says when the relay refuses it ([`ConnectionStatus::Unauthorized`]: the client stops
//! dialling rather than spin). [`Client::api`] gives the membership calls with the current
//! credential; [`Client::rotate_credential`] hands the app its new one.
//!
//! ## Nothing is lost
//! A document is bound to its group before its first sync ([`Client::create_in_group`],
//! [`Client::register`]); the registration is kept durably on the device until the relay
//! accepts it (see [Registration](self#registration) below). Edits are durable on the device
//! before any call returns, whatever the relay says: made offline, or refused (not yet
//! registered, a read-only role), they stay in the device store and sync on a later
//! connection once access allows.
//!
//! ## Registration
//! Pending registrations live in the device store under
//! `["cairn-client", "pending-registration", <document id>]` ([`CLIENT_KEY_PREFIX`],
//! [`PENDING_REGISTRATION_TABLE`]), written with a flush. They are sent when created,
//! before every (re)connect and, while connected, every
//! [`ClientConfig::registration_retry`]; removed once the relay accepts (2xx: repeating the
//! same registration is accepted too); kept with the reason on a refusal
//! ([`PendingRegistration::refused`]). When the relay accepts a document it has already
//! answered `doc-unavailable` for on the open connection, the client reconnects so the
//! document is offered afresh.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::{Automerge, ChangeHash};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::engine::{Engine, EngineConfig, EngineError, Event, Limits, Role};
use crate::ids::{ConnectionId, DocumentId, PeerId};
use crate::membership::Credential;
use crate::runtime::{Host, HostConfig, Observer};
use crate::store::{Storage, StoreError};

mod connection;
mod http;
mod membership;
mod presence;
mod registration;
#[cfg(test)]
mod relay_tests;
#[cfg(test)]
mod tests;
mod transport;

pub use connection::{ConnectionStatus, RelayEndpoint};
pub use http::{
    HttpRequest, HttpResponse, HttpTransport, HyperTransport, Method, MAX_RESPONSE_BYTES,
};
pub use membership::{
    api_base_for, invite_link, Enrolled, RelayApi, API_TIMEOUT, INVITE_LINK_PREFIX,
};
pub use presence::{PeerPresence, HEARTBEAT_INTERVAL, PEER_TTL, PRESENCE_MARKER};
use presence::{PresenceBook, PresenceMessage};
use registration::Registrations;
pub use registration::{
    PendingRegistration, RegistrationRefused, CLIENT_KEY_PREFIX, PENDING_REGISTRATION_TABLE,
};
pub use transport::{Connection, Transport, TransportError, TungsteniteTransport};

/// How long [`Client::change`] waits for a document that is not in memory to load (from
/// the device, or the relay if the device does not have it). 30 s: a device load takes
/// milliseconds; the rest is for a slow network.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Client::create_in_group`] waits for the relay to accept the registration
/// before creating the document anyway: 5 s. Registered first, the document syncs from
/// its first offer; later, the client has to reconnect to offer it again.
const INLINE_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a client call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The runtime has been shut down.
    #[error("the client has stopped")]
    Stopped,
    /// The wait passed its time limit (the relay may be unreachable).
    #[error("timed out")]
    Timeout,
    /// No connected peer has the document.
    #[error("document {0} is unavailable")]
    Unavailable(DocumentId),
    /// The device has no space left: the change was not kept (the document holds what it
    /// held before). Free space and make the change again.
    #[error("the device storage is full; the change to document {0} was not kept")]
    StorageFull(DocumentId),
    /// The device store failed for another reason (I/O error, damage); the change was not
    /// kept.
    #[error("storage failed for document {0}")]
    StorageFailed(DocumentId),
    /// The engine refused the call.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Opening the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The relay refused the device credential (none, a wrong one, rotated away or
    /// revoked). Enrol the device again or restore its credential
    /// ([`Client::set_credential`]).
    #[error("the relay refused the device credential")]
    Unauthorized,
    /// The caller's role or state does not allow this (not an organiser, a read-only role,
    /// the code of conduct not yet accepted: `reason` says which).
    #[error("not allowed: {reason}")]
    Forbidden {
        /// The relay's explanation (no content).
        reason: String,
    },
    /// No such group, member, device or invite, as far as this device may know.
    #[error("not found")]
    NotFound,
    /// The relay's state does not allow it (an id already bound, an outdated code of
    /// conduct version, the last organiser leaving).
    #[error("conflict: {reason}")]
    Conflict {
        /// The relay's explanation.
        reason: String,
    },
    /// The invite or link code has expired or been used up: ask for a new one.
    #[error("the invite has expired or been used up")]
    InviteExpired,
    /// Too many attempts: try again after `retry_after`.
    #[error("too many attempts; try again later")]
    QuotaExceeded {
        /// How long the relay asked to wait.
        retry_after: Option<Duration>,
    },
    /// The relay refused the request as malformed (a too long pseudonym, an empty code).
    #[error("bad request: {reason}")]
    BadRequest {
        /// The relay's explanation.
        reason: String,
    },
    /// The relay could not complete the call (5xx): nothing changed; try again later.
    #[error("the relay is unavailable")]
    RelayUnavailable {
        /// How long the relay asked to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The relay could not be reached (no network, a wrong address) or did not answer in
    /// [`API_TIMEOUT`].
    #[error("the relay cannot be reached")]
    Offline,
    /// The relay's answer is not this API's (a proxy's error page, another version).
    #[error("unexpected answer from the relay (HTTP {status}): {reason}")]
    InvalidResponse {
        /// The HTTP status.
        status: u16,
        /// What did not fit.
        reason: String,
    },
    /// The call needs the relay's membership API, and the client was connected without
    /// one ([`Client::connect_with`]): use [`Client::connect_to`] with an API.
    #[error("no relay API is configured")]
    NoRelayApi,
    /// The credential belongs to another device than this client's peer id.
    #[error("the credential belongs to another device")]
    CredentialMismatch,
}

impl From<crate::runtime::HostStopped> for ClientError {
    fn from(_: crate::runtime::HostStopped) -> Self {
        ClientError::Stopped
    }
}

/// How often a registration the relay has not accepted yet is sent again while connected:
/// 30 s. The relay answered 429 or 503, or the call got lost; each (re)connect sends it
/// too, so this only covers a long-lived connection.
pub const REGISTRATION_RETRY: Duration = Duration::from_secs(30);

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// This device's peer id (`member/device`; from the credential when there is one).
    pub peer_id: PeerId,
    /// The device credential presented on every connect and membership call. When set,
    /// its peer id must be `peer_id` ([`ClientError::CredentialMismatch`] otherwise).
    pub credential: Option<Credential>,
    /// Engine limits.
    pub limits: Limits,
    /// First reconnect delay; doubles up to `max_backoff`. Default 250 ms.
    pub min_backoff: Duration,
    /// Longest reconnect delay. Default 5 s (what JS clients use).
    pub max_backoff: Duration,
    /// Seed for the engine's RNG; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// How often pending registrations are retried while connected. Default
    /// [`REGISTRATION_RETRY`].
    pub registration_retry: Duration,
}

impl ClientConfig {
    /// Defaults for a device with this peer id and no credential (a relay in `--open`
    /// mode, tests).
    pub fn new(peer_id: impl Into<PeerId>) -> Self {
        ClientConfig {
            peer_id: peer_id.into(),
            credential: None,
            limits: Limits::default(),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            seed: None,
            registration_retry: REGISTRATION_RETRY,
        }
    }

    /// Defaults for the device holding `credential` (its peer id is the credential's).
    pub fn for_device(credential: Credential) -> Self {
        ClientConfig {
            credential: Some(credential.clone()),
            ..ClientConfig::new(credential.peer_id())
        }
    }
}

#[derive(Default)]
struct State {
    durable: BTreeMap<DocumentId, BTreeSet<Vec<ChangeHash>>>,
    remote_heads: BTreeMap<DocumentId, Vec<ChangeHash>>,
    unavailable: BTreeSet<DocumentId>,
    /// Documents whose last write failed, and whether because the disk was full.
    failed: BTreeMap<DocumentId, bool>,
    connections: BTreeSet<ConnectionId>,
    presence: PresenceBook,
}

struct Shared {
    state: Mutex<State>,
    version: watch::Sender<u64>,
    /// Asks the presence task to (re)send our snapshot of a document.
    announce: mpsc::UnboundedSender<DocumentId>,
    /// Subscription tasks still running.
    subscriptions: AtomicUsize,
    our_peer: PeerId,
    /// The credential presented from the next connect on.
    credential: watch::Sender<Option<Credential>>,
    /// Where we stand with the relay.
    connection: watch::Sender<ConnectionStatus>,
    /// The membership API of the last endpoint connected to (without a credential).
    api: Mutex<Option<RelayApi>>,
    registrations: Registrations,
    /// Asks the open connection to reconnect: a document it offered was registered since.
    reoffer: tokio::sync::Notify,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Wakes every waiter (registrations and the connection are part of what they see).
    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn set_connection(&self, status: ConnectionStatus) {
        self.connection.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        self.bump();
    }
}

struct ClientObserver(Arc<Shared>);

impl Observer for ClientObserver {
    fn event(&mut self, event: &Event) {
        let mut announce = Vec::new();
        let changed = self.0.with(|s| match event {
            Event::Ephemeral { doc, sender, data } => {
                let Some(msg) = PresenceMessage::decode(data) else {
                    return false;
                };
                if *sender == self.0.our_peer {
                    return false;
                }
                if s.presence
                    .receive(*doc, sender.clone(), msg, Instant::now())
                    && s.presence.local.contains_key(doc)
                {
                    announce.push(*doc);
                }
                true
            }
            Event::DocumentDurable { doc, heads } => {
                s.durable.entry(*doc).or_default().insert(heads.clone());
                true
            }
            Event::PeerHasHeads { doc, heads, .. } => {
                s.remote_heads.insert(*doc, heads.clone());
                true
            }
            Event::DocumentUnavailable { doc } => s.unavailable.insert(*doc),
            Event::StorageFailed {
                doc: Some(doc),
                error,
            } => {
                s.failed.insert(*doc, error.is_disk_full());
                true
            }
            Event::PeerConnected { conn, .. } => {
                // Whoever is on the relay learns we are here (our earlier snapshots went
                // nowhere while offline).
                announce.extend(s.presence.local.keys().copied());
                s.connections.insert(*conn)
            }
            Event::PeerDisconnected { conn } => {
                let removed = s.connections.remove(conn);
                if s.connections.is_empty() {
                    // Their goodbyes cannot reach us any more.
                    s.presence.forget_all_peers();
                }
                removed
            }
            Event::DocumentChanged { .. } | Event::DocumentLoaded { .. } => true,
            _ => false,
        });
        for doc in announce {
            let _ = self.0.announce.send(doc);
        }
        if changed {
            self.0.version.send_modify(|v| *v += 1);
        }
    }
}

/// What an app shows about a document's sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncStatus {
    /// The relay has never shown it holds any of this document: it is only on this device.
    OnlyOnThisDevice,
    /// The relay has part of it; some of our changes are not yet acknowledged.
    Sending,
    /// The relay has shown it holds every change we have (its heads include ours).
    SafelyOnRelay,
}

/// One state of a subscribed document.
#[derive(Clone, Debug)]
pub struct Update<T> {
    /// The document's heads at this state.
    pub heads: Vec<ChangeHash>,
    /// What the subscription's view computed from the document at these heads.
    pub value: T,
}

/// A live view of a document: the current state first, then one update per change (local
/// or remote; changes that land while the app has not yet taken the previous update are
/// delivered together as the newest state). Dropping it ends the subscription.
#[derive(Debug)]
pub struct Subscription<T = ()> {
    rx: mpsc::Receiver<Update<T>>,
}

impl<T> Subscription<T> {
    /// The next state, or `None` once the client has stopped.
    pub async fn next(&mut self) -> Option<Update<T>> {
        self.rx.recv().await
    }
}

/// Decrements the live-subscription count when a subscription task ends.
struct SubscriptionGuard(Arc<Shared>);

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    host: Host,
    shared: Arc<Shared>,
    config: ClientConfig,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer_id", &self.config.peer_id)
            .finish()
    }
}

impl Client {
    /// Starts a client on `store` (must be called inside a tokio runtime).
    pub fn start(store: Arc<dyn Storage>, config: ClientConfig) -> Result<Client, ClientError> {
        if config
            .credential
            .as_ref()
            .is_some_and(|c| c.peer_id() != config.peer_id)
        {
            return Err(ClientError::CredentialMismatch);
        }
        let storage_id = store.storage_id()?;
        let registrations = Registrations::load(store.clone())?;
        let seed = config.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
            u64::from_le_bytes(b)
        });
        let engine_config = EngineConfig::new(Role::Client, config.peer_id.clone(), seed)
            .with_storage_id(storage_id)
            .with_limits(config.limits.clone());
        let (version, _) = watch::channel(0);
        let (announce, announce_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            version,
            announce,
            subscriptions: AtomicUsize::new(0),
            our_peer: config.peer_id.clone(),
            credential: watch::channel(config.credential.clone()).0,
            connection: watch::channel(ConnectionStatus::Idle).0,
            api: Mutex::new(None),
            registrations,
            reoffer: tokio::sync::Notify::new(),
        });
        let host = Host::start(
            Engine::new(engine_config),
            store,
            Box::new(ClientObserver(shared.clone())),
            HostConfig::default(),
        );
        let (stop, _) = watch::channel(false);
        tokio::spawn(presence_task(
            host.clone(),
            shared.clone(),
            announce_rx,
            stop.subscribe(),
        ));
        Ok(Client {
            host,
            shared,
            config,
            stop,
        })
    }

    /// Number of relays we are currently connected to (handshake done).
    pub fn connected(&self) -> usize {
        self.shared.with(|s| s.connections.len())
    }

    async fn wait<R>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&State) -> Option<R>,
    ) -> Result<R, ClientError> {
        let mut rx = self.shared.version.subscribe();
        let fut = async {
            loop {
                if let Some(r) = self.shared.with(|s| check(s)) {
                    return Ok(r);
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Stopped);
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Sleeps until the next event (or at most `left`, and at most 200 ms as a safety net).
    async fn settle(&self, rx: &mut watch::Receiver<u64>, left: Duration) {
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
    }

    async fn wait_durable(
        &self,
        doc: DocumentId,
        heads: Vec<ChangeHash>,
    ) -> Result<(), ClientError> {
        self.wait(Duration::from_secs(60), |s| {
            match s.failed.get(&doc) {
                Some(true) => return Some(Err(ClientError::StorageFull(doc))),
                Some(false) => return Some(Err(ClientError::StorageFailed(doc))),
                None => {}
            }
            s.durable
                .get(&doc)
                .filter(|set| set.contains(&heads))
                .map(|_| Ok(()))
        })
        .await?
    }

    /// Creates a document; returns once it is durable on this device.
    pub async fn create(
        &self,
        init: impl FnOnce(&mut automerge::transaction::Transaction<'_>) + Send + 'static,
    ) -> Result<DocumentId, ClientError> {
        let (id, heads) = self
            .host
            .call(move |e, now| {
                let id = e.create_document(now, init);
                let heads = e.document(&id).map(|d| d.get_heads()).unwrap_or_default();
                (id, heads)
            })
            .await?;
        self.wait_durable(id, heads).await?;
        Ok(id)
    }

    /// Applies a change; returns the new heads once durable on this device.
    pub async fn change<E: std::fmt::Display + 'static>(
        &self,
        doc: DocumentId,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), E> + Send + 'static,
    ) -> Result<Vec<ChangeHash>, ClientError> {
        // Not in memory: evicted, or dropped after a write failed (it holds only what is
        // durable on the device). Load it first, so a retry after `StorageFull` works.
        if !self
            .host
            .call(move |e, _| e.document(&doc).is_some())
            .await?
        {
            self.find(doc, RELOAD_TIMEOUT).await?;
        }
        let (before, heads) = self
            .host
            .call(move |e, now| {
                let before = e.document(&doc).map(|d| d.get_heads());
                e.change_document(now, doc, f).map(|after| (before, after))
            })
            .await??;
        if before.as_ref() == Some(&heads) {
            // The closure changed nothing: there is no write to wait for.
            return Ok(heads);
        }
        self.shared.with(|s| s.failed.remove(&doc));
        self.wait_durable(doc, heads.clone()).await?;
        Ok(heads)
    }

    /// Opens a document from the device or, failing that, from the relay.
    pub async fn find(&self, doc: DocumentId, timeout: Duration) -> Result<(), ClientError> {
        self.shared.with(|s| s.unavailable.remove(&doc));
        self.host.call(move |e, now| e.find(now, doc)).await?;
        let host = self.host.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.version.subscribe();
        loop {
            rx.borrow_and_update();
            let has = host
                .call(move |e, _| e.document(&doc).is_some_and(|d| !d.get_heads().is_empty()))
                .await?;
            if has {
                return Ok(());
            }
            if self.shared.with(|s| s.unavailable.contains(&doc)) {
                return Err(ClientError::Unavailable(doc));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            self.settle(&mut rx, left).await;
        }
    }

    /// Reads a loaded document.
    pub async fn read<R: Send + 'static>(
        &self,
        doc: DocumentId,
        f: impl FnOnce(&Automerge) -> R + Send + 'static,
    ) -> Result<Option<R>, ClientError> {
        Ok(self.host.call(move |e, _| e.document(&doc).map(f)).await?)
    }

    /// The document's current heads, if loaded.
    pub async fn heads(&self, doc: DocumentId) -> Result<Option<Vec<ChangeHash>>, ClientError> {
        self.read(doc, |d| d.get_heads()).await
    }

    /// Waits until a relay has shown it holds every change we have of `doc`.
    pub async fn wait_acknowledged(
        &self,
        doc: DocumentId,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.version.subscribe();
        loop {
            rx.borrow_and_update();
            let ours = self.heads(doc).await?.unwrap_or_default();
            let acked = self.shared.with(|s| {
                s.remote_heads
                    .get(&doc)
                    .is_some_and(|theirs| ours.iter().all(|h| theirs.contains(h)))
            });
            if acked {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            self.settle(&mut rx, left).await;
        }
    }

    /// Waits until `pred` holds for the document's content.
    pub async fn wait_for(
        &self,
        doc: DocumentId,
        timeout: Duration,
        pred: impl Fn(&Automerge) -> bool + Send + Sync + 'static,
    ) -> Result<(), ClientError> {
        let pred = Arc::new(pred);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.version.subscribe();
        loop {
            rx.borrow_and_update();
            let p = pred.clone();
            if self.read(doc, move |d| p(d)).await?.unwrap_or(false) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            self.settle(&mut rx, left).await;
        }
    }

    /// Runs `f` on the engine (advanced use: tests and tools).
    pub async fn with_engine<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> R + Send + 'static,
    ) -> Result<R, ClientError> {
        Ok(self.host.call(move |e, _| f(e)).await?)
    }

    /// What to show about `doc`'s sync (see [`SyncStatus`]).
    pub async fn status(&self, doc: DocumentId) -> Result<SyncStatus, ClientError> {
        Ok(self.sync_state(doc).await?.0)
    }

    /// How many of our changes to `doc` the relay has not yet acknowledged (0 when safely
    /// on the relay). Counts every change not reachable from the heads the relay last
    /// showed; heads we do not know yet cannot be followed, so what they cover still
    /// counts as pending.
    pub async fn pending_changes(&self, doc: DocumentId) -> Result<usize, ClientError> {
        Ok(self.sync_state(doc).await?.1)
    }

    async fn sync_state(&self, doc: DocumentId) -> Result<(SyncStatus, usize), ClientError> {
        let theirs = self.shared.with(|s| s.remote_heads.get(&doc).cloned());
        let state = self
            .host
            .call(move |e, _| {
                let d = e.document(&doc)?;
                let ours = d.get_heads();
                let Some(theirs) = theirs else {
                    return Some((SyncStatus::OnlyOnThisDevice, d.get_changes(&[]).len()));
                };
                if ours.iter().all(|h| theirs.contains(h)) {
                    return Some((SyncStatus::SafelyOnRelay, 0));
                }
                let known: Vec<ChangeHash> = theirs
                    .into_iter()
                    .filter(|h| automerge::ReadDoc::get_change_by_hash(d, h).is_some())
                    .collect();
                Some((SyncStatus::Sending, d.get_changes(&known).len()))
            })
            .await?;
        state.ok_or(ClientError::Engine(EngineError::NotLoaded(doc)))
    }

    /// Subscribes to `doc` (which must be loaded: [`Client::create`] or [`Client::find`]
    /// first). Yields the current heads first, then an update per change.
    pub async fn subscribe(&self, doc: DocumentId) -> Result<Subscription<()>, ClientError> {
        self.subscribe_with(doc, |_| ()).await
    }

    /// Subscribes to `doc`, computing `view` (e.g. a model read function) for the current
    /// state first and then for every change. `view` runs on the engine task: keep it to
    /// reading.
    pub async fn subscribe_with<T: Send + 'static>(
        &self,
        doc: DocumentId,
        view: impl Fn(&Automerge) -> T + Send + Sync + 'static,
    ) -> Result<Subscription<T>, ClientError> {
        let view = Arc::new(view);
        let first = {
            let view = view.clone();
            self.host
                .call(move |e, _| e.document(&doc).map(|d| (d.get_heads(), view(d))))
                .await?
        };
        let Some((heads, value)) = first else {
            return Err(ClientError::Engine(EngineError::NotLoaded(doc)));
        };
        let (tx, rx) = mpsc::channel(16);
        // The first update is in the channel before the caller sees the subscription.
        let _ = tx.try_send(Update {
            heads: heads.clone(),
            value,
        });
        self.shared.subscriptions.fetch_add(1, Ordering::SeqCst);
        let guard = SubscriptionGuard(self.shared.clone());
        let host = self.host.clone();
        let mut version = self.shared.version.subscribe();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let _guard = guard;
            let mut last = heads;
            loop {
                tokio::select! {
                    changed = version.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = stop.changed() => return,
                }
                version.borrow_and_update();
                let (view, seen) = (view.clone(), last.clone());
                let next = host
                    .call(move |e, _| {
                        let d = e.document(&doc)?;
                        let heads = d.get_heads();
                        (heads != seen).then(|| (heads, view(d)))
                    })
                    .await;
                match next {
                    Ok(Some((heads, value))) => {
                        last = heads.clone();
                        if tx.send(Update { heads, value }).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(Subscription { rx })
    }

    /// Subscriptions whose tasks are still running (a dropped [`Subscription`] stops its
    /// task at once).
    pub fn active_subscriptions(&self) -> usize {
        self.shared.subscriptions.load(Ordering::SeqCst)
    }

    /// Sets our whole presence state on `doc` (e.g. `{"cursor": {...}, "name": ...}`) and
    /// sends it as a presence `snapshot` to everyone with the document open. Kept and
    /// re-sent when new peers appear and after reconnecting; heartbeats keep it alive.
    pub async fn set_presence(
        &self,
        doc: DocumentId,
        state: serde_json::Value,
    ) -> Result<(), ClientError> {
        let data = PresenceMessage::Snapshot(state.clone()).encode();
        self.shared.with(|s| s.presence.local.insert(doc, state));
        self.host
            .call(move |e, _| e.broadcast_ephemeral(doc, data))
            .await?;
        Ok(())
    }

    /// Updates one channel of our presence on `doc` (e.g. `"cursor"`) and sends it as a
    /// presence `update`.
    pub async fn update_presence(
        &self,
        doc: DocumentId,
        channel: &str,
        value: serde_json::Value,
    ) -> Result<(), ClientError> {
        let data = PresenceMessage::Update {
            channel: channel.to_owned(),
            value: value.clone(),
        }
        .encode();
        self.shared.with(|s| {
            let local = s
                .presence
                .local
                .entry(doc)
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if !local.is_object() {
                *local = serde_json::Value::Object(Default::default());
            }
            if let Some(map) = local.as_object_mut() {
                map.insert(channel.to_owned(), value);
            }
        });
        self.host
            .call(move |e, _| e.broadcast_ephemeral(doc, data))
            .await?;
        Ok(())
    }

    /// Leaves `doc`'s presence: sends `goodbye` (others forget us at once) and stops
    /// heartbeats for it.
    pub async fn leave_presence(&self, doc: DocumentId) -> Result<(), ClientError> {
        let was = self.shared.with(|s| s.presence.local.remove(&doc));
        if was.is_some() {
            let data = PresenceMessage::Goodbye.encode();
            self.host
                .call(move |e, _| e.broadcast_ephemeral(doc, data))
                .await?;
        }
        Ok(())
    }

    /// Other peers present on `doc` now (silent ones drop out after [`PEER_TTL`]).
    pub fn presence(&self, doc: DocumentId) -> Vec<PeerPresence> {
        self.shared
            .with(|s| s.presence.present(&doc, Instant::now()))
    }

    /// Adds saved Automerge bytes to `doc` under this id (creating it, or merging into the
    /// copy on this device), as [`Engine::import_document`] does; returns the heads once
    /// they are durable on this device.
    pub async fn import(
        &self,
        doc: DocumentId,
        bytes: Vec<u8>,
    ) -> Result<Vec<ChangeHash>, ClientError> {
        // A document kept on this device but not in memory must be loaded first, or the
        // import would start a second, empty copy beside it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut rx = self.shared.version.subscribe();
        loop {
            rx.borrow_and_update();
            let ready = self
                .host
                .call(move |e, now| {
                    if e.document(&doc).is_some() {
                        return true;
                    }
                    if !e.document_ids().contains(&doc) {
                        e.find(now, doc);
                    }
                    e.document(&doc).is_some()
                })
                .await?;
            if ready {
                break;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            self.settle(&mut rx, left).await;
        }
        let (before, heads) = self
            .host
            .call(move |e, now| {
                let before = e.document(&doc).map(|d| d.get_heads()).unwrap_or_default();
                e.import_document(now, doc, &bytes).map(|h| (before, h))
            })
            .await??;
        self.shared.with(|s| s.failed.remove(&doc));
        if heads != before {
            self.wait_durable(doc, heads.clone()).await?;
        }
        Ok(heads)
    }

    /// Disconnects, lets pending writes finish, and stops.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        self.host.shutdown().await;
    }
}

/// Re-sends our presence snapshot when asked (a new peer appeared, we reconnected) and
/// sends heartbeats for every document we are present on.
async fn presence_task(
    host: Host,
    shared: Arc<Shared>,
    mut announce: mpsc::UnboundedReceiver<DocumentId>,
    mut stop: watch::Receiver<bool>,
) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sends: Vec<(DocumentId, Vec<u8>)> = tokio::select! {
            doc = announce.recv() => {
                let Some(doc) = doc else { return };
                shared
                    .with(|s| s.presence.local.get(&doc).cloned())
                    .map(|state| (doc, PresenceMessage::Snapshot(state).encode()))
                    .into_iter()
                    .collect()
            }
            _ = heartbeat.tick() => {
                let data = PresenceMessage::Heartbeat.encode();
                shared.with(|s| s.presence.local.keys().map(|d| (*d, data.clone())).collect())
            }
            _ = stop.changed() => return,
        };
        for (doc, data) in sends {
            if host
                .call(move |e, _| e.broadcast_ephemeral(doc, data))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
