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
//! A device may be a member on several relays (groups of two organisations): each relay
//! gets one connection, its own credential and peer id, and its own status
//! ([`RelayHandle`]). Every connection sends a ping every
//! [`ClientConfig::keepalive_interval`] and is closed and redialled when nothing has
//! arrived for [`ClientConfig::keepalive_timeout`] (a half-open socket behind a NAT).
//!
//! ## Runtime
//! [`Client::start_on`] runs every task on the runtime it is given, so an app that owns
//! its runtime starts the client from any thread. Callback subscriptions
//! ([`Client::subscribe`]) run there too; an event about a document wakes only that
//! document's waiters and subscriptions.
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
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::transaction::Transaction;
use automerge::{Automerge, ChangeHash};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::engine::{ChangeFailed, Engine, EngineConfig, EngineError, Event, Limits, Role};
use crate::ids::{ConnectionId, DocumentId, PeerId};
use crate::membership::Credential;
use crate::runtime::{Host, HostConfig, Observer};
use crate::store::{Storage, StoreError};

mod connection;
mod http;
mod membership;
mod notify;
mod presence;
mod registration;
#[cfg(test)]
mod relay_tests;
mod subscription;
mod sync;
#[cfg(test)]
mod tests;
mod transport;

pub use connection::{
    ConnectionState, ConnectionStatus, RelayEndpoint, RelayHandle, HEALTHY_CONNECTION,
};
use connection::{RelayShared, RelayState};
pub use http::{
    HttpRequest, HttpResponse, HttpTransport, HyperTransport, Method, MAX_RESPONSE_BYTES,
};
pub use membership::{
    api_base_for, invite_link, Enrolled, RelayApi, API_TIMEOUT, INVITE_LINK_PREFIX,
};
use notify::DocNotifiers;
pub use presence::{PeerPresence, HEARTBEAT_INTERVAL, PEER_TTL, PRESENCE_MARKER};
use presence::{PresenceBook, PresenceMessage};
use registration::Registrations;
pub use registration::{
    PendingRegistration, RegistrationRefused, CLIENT_KEY_PREFIX, PENDING_REGISTRATION_TABLE,
};
pub use subscription::{SubscriptionHandle, Update};
pub use sync::SyncReport;
pub use transport::{Connection, Received, Transport, TransportError, TungsteniteTransport};

/// How long [`Client::change`] waits for a document that is not in memory to load (from
/// the device, or the relay if the device does not have it). 30 s: a device load takes
/// milliseconds; the rest is for a slow network.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Client::create_in_group`] waits for the relay to accept the registration
/// before creating the document anyway: 5 s. Registered first, the document syncs from
/// its first offer; later, the client has to reconnect to offer it again.
const INLINE_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a wait sleeps at most before it looks again although nothing woke it: 250 ms.
/// Every state a wait looks at is announced by an event; this only bounds the cost of one
/// the engine changes silently (an idle eviction), never the normal path.
const WAIT_SAFETY_NET: Duration = Duration::from_millis(250);

/// How long a local change waits to be reported durable on the device: 60 s (a device
/// write takes milliseconds; a stalled disk is reported rather than waited on forever).
const DURABLE_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// one ([`Client::connect_with`]), or to no relay yet: use [`Client::connect_to`] with
    /// an API.
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

/// Why [`Client::change`] (or [`Client::create`], [`Client::create_in_group`]) did not
/// commit.
#[derive(Debug, Error)]
pub enum ChangeError<E> {
    /// The closure returned this error: nothing was committed or written (the document's
    /// heads are what they were).
    #[error("the change was abandoned; nothing was committed")]
    Rejected(E),
    /// The client could not make the change (see [`ClientError`]).
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl<E> ChangeError<E> {
    /// The client's error, or `None` when the closure failed.
    pub fn client_error(&self) -> Option<&ClientError> {
        match self {
            ChangeError::Rejected(_) => None,
            ChangeError::Client(e) => Some(e),
        }
    }
}

impl<E> From<crate::runtime::HostStopped> for ChangeError<E> {
    fn from(_: crate::runtime::HostStopped) -> Self {
        ChangeError::Client(ClientError::Stopped)
    }
}

impl<E> From<ChangeFailed<E>> for ChangeError<E> {
    fn from(e: ChangeFailed<E>) -> Self {
        match e {
            ChangeFailed::Engine(e) => ChangeError::Client(ClientError::Engine(e)),
            ChangeFailed::Rejected(e) => ChangeError::Rejected(e),
        }
    }
}

/// How often a registration the relay has not accepted yet is sent again while connected:
/// 30 s. The relay answered 429 or 503, or the call got lost; each (re)connect sends it
/// too, so this only covers a long-lived connection.
pub const REGISTRATION_RETRY: Duration = Duration::from_secs(30);

/// Default [`ClientConfig::keepalive_interval`]: 20 s, under the 30 s after which mobile
/// carriers' NATs and many proxies drop an idle TCP flow.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// Default [`ClientConfig::keepalive_timeout`]: 45 s, two missed pings and a little for a
/// slow network, so one lost pong does not cost a reconnect.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(45);

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// This device's peer id (`member/device`; from the credential when there is one).
    /// Presented on connections without a credential of their own.
    pub peer_id: PeerId,
    /// The device credential presented on every connect and membership call to the first
    /// relay connected to (unless its [`RelayEndpoint::credential`] names another). When
    /// set, its peer id must be `peer_id` ([`ClientError::CredentialMismatch`] otherwise).
    pub credential: Option<Credential>,
    /// Engine limits. Default [`Limits::client`].
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
    /// How often each connection sends a ping. Default [`KEEPALIVE_INTERVAL`].
    pub keepalive_interval: Duration,
    /// A connection on which nothing (no frame, no pong) has arrived for this long is
    /// closed and redialled. Default [`KEEPALIVE_TIMEOUT`].
    pub keepalive_timeout: Duration,
    /// How long local changes to a document gather before they are announced together
    /// (see [`EngineConfig::sync_debounce`]). Default
    /// [`DEFAULT_SYNC_DEBOUNCE`](crate::engine::DEFAULT_SYNC_DEBOUNCE), 100 ms: a member
    /// typing minutes sends a few frames a second, not one per keystroke.
    pub sync_debounce: Duration,
}

impl ClientConfig {
    /// Defaults for a device with this peer id and no credential (a relay in `--open`
    /// mode, tests).
    pub fn new(peer_id: impl Into<PeerId>) -> Self {
        ClientConfig {
            peer_id: peer_id.into(),
            credential: None,
            limits: Limits::client(),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            seed: None,
            registration_retry: REGISTRATION_RETRY,
            keepalive_interval: KEEPALIVE_INTERVAL,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            sync_debounce: crate::engine::DEFAULT_SYNC_DEBOUNCE,
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
    /// Documents whose keys were all deleted ([`Client::forget`]).
    forgotten: BTreeSet<DocumentId>,
    connections: BTreeSet<ConnectionId>,
    presence: PresenceBook,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the waiters and subscriptions of one document.
    docs: DocNotifiers,
    /// Wakes the watchers of one document's presence ([`Client::presence_changes`]).
    presence_watch: DocNotifiers,
    /// Wakes waits that depend on connections and registrations.
    general: watch::Sender<u64>,
    /// Wakes waits over many documents ([`Client::sync_now`]); subscriptions never use it.
    any_doc: watch::Sender<u64>,
    /// Times subscription tasks woke ([`Client::subscription_wakeups`]).
    wakeups: AtomicU64,
    /// Asks the presence task to (re)send our snapshot of a document.
    announce: mpsc::UnboundedSender<DocumentId>,
    /// Subscription tasks still running.
    subscriptions: AtomicUsize,
    our_peer: PeerId,
    /// The first relay's credential and status (the client-wide ones of a single-relay
    /// app: [`Client::connection_status`], [`Client::set_credential`]).
    primary: Arc<RelayState>,
    /// The relays connected to, in the order of their first connect.
    relays: Mutex<Vec<Arc<RelayShared>>>,
    registrations: Registrations,
    /// Where every task of the client runs.
    runtime: tokio::runtime::Handle,
    /// Set once on shutdown.
    stop: watch::Sender<bool>,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Wakes the waits that depend on connections and registrations.
    fn bump(&self) {
        notify::bump(&self.general);
    }

    /// Wakes `doc`'s waiters and subscriptions.
    fn doc_changed(&self, doc: DocumentId) {
        self.docs.notify(doc);
        notify::bump(&self.any_doc);
    }

    fn relays(&self) -> Vec<Arc<RelayShared>> {
        self.relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

struct ClientObserver(Arc<Shared>);

/// Who an event wakes.
enum Wake {
    Nobody,
    Doc(DocumentId),
    Presence(DocumentId),
    General,
}

impl Observer for ClientObserver {
    fn event(&mut self, event: &Event) {
        let mut announce = Vec::new();
        let mut forgotten_presence = false;
        let wake = self.0.with(|s| match event {
            Event::Ephemeral { doc, sender, data } => {
                let Some(msg) = PresenceMessage::decode(data) else {
                    return Wake::Nobody;
                };
                if *sender == self.0.our_peer {
                    return Wake::Nobody;
                }
                if s.presence
                    .receive(*doc, sender.clone(), msg, Instant::now())
                    && s.presence.local.contains_key(doc)
                {
                    announce.push(*doc);
                }
                // Presence is read when the app asks ([`Client::presence`]); its watchers
                // are told to ask again.
                Wake::Presence(*doc)
            }
            Event::DocumentDurable { doc, heads } => {
                s.durable.entry(*doc).or_default().insert(heads.clone());
                Wake::Doc(*doc)
            }
            Event::PeerHasHeads { doc, heads, .. } => {
                s.remote_heads.insert(*doc, heads.clone());
                Wake::Doc(*doc)
            }
            Event::DocumentUnavailable { doc } => {
                s.unavailable.insert(*doc);
                Wake::Doc(*doc)
            }
            Event::StorageFailed {
                doc: Some(doc),
                error,
            } => {
                s.failed.insert(*doc, error.is_disk_full());
                Wake::Doc(*doc)
            }
            Event::DocumentForgotten { doc } => {
                s.forgotten.insert(*doc);
                Wake::Doc(*doc)
            }
            Event::PeerConnected { conn, .. } => {
                // Whoever is on the relay learns we are here (our earlier snapshots went
                // nowhere while offline).
                announce.extend(s.presence.local.keys().copied());
                s.connections.insert(*conn);
                Wake::General
            }
            Event::PeerDisconnected { conn } => {
                s.connections.remove(conn);
                if s.connections.is_empty() {
                    // Their goodbyes cannot reach us any more.
                    s.presence.forget_all_peers();
                    forgotten_presence = true;
                }
                Wake::General
            }
            Event::DocumentChanged { doc, .. } | Event::DocumentLoaded { doc, .. } => {
                Wake::Doc(*doc)
            }
            _ => Wake::Nobody,
        });
        for doc in announce {
            let _ = self.0.announce.send(doc);
        }
        if forgotten_presence {
            self.0.presence_watch.notify_all();
        }
        match wake {
            Wake::Nobody => {}
            Wake::Doc(doc) => self.0.doc_changed(doc),
            Wake::Presence(doc) => self.0.presence_watch.notify(doc),
            Wake::General => self.0.bump(),
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

/// A running client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    host: Host,
    shared: Arc<Shared>,
    config: ClientConfig,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer_id", &self.config.peer_id)
            .finish()
    }
}

impl Client {
    /// Starts a client on `store`, on the current tokio runtime (must be called inside
    /// one): [`Client::start_on`] with [`tokio::runtime::Handle::current`].
    pub fn start(store: Arc<dyn Storage>, config: ClientConfig) -> Result<Client, ClientError> {
        Client::start_on(tokio::runtime::Handle::current(), store, config)
    }

    /// Starts a client on `store` whose tasks (the engine, the relay connections,
    /// subscriptions) all run on `runtime`; callable from any thread, no ambient runtime
    /// needed.
    pub fn start_on(
        runtime: tokio::runtime::Handle,
        store: Arc<dyn Storage>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        if config
            .credential
            .as_ref()
            .is_some_and(|c| c.peer_id() != config.peer_id)
        {
            return Err(ClientError::CredentialMismatch);
        }
        let storage_id = store.storage_id()?;
        let registrations = Registrations::load(store.clone(), runtime.clone())?;
        let seed = config.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            crate::membership::os_random(&mut b);
            u64::from_le_bytes(b)
        });
        let engine_config = EngineConfig::new(Role::Client, config.peer_id.clone(), seed)
            .with_storage_id(storage_id)
            .with_limits(config.limits.clone())
            .with_sync_debounce(config.sync_debounce);
        let (announce, announce_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            docs: DocNotifiers::default(),
            presence_watch: DocNotifiers::default(),
            general: watch::channel(0).0,
            any_doc: watch::channel(0).0,
            wakeups: AtomicU64::new(0),
            announce,
            subscriptions: AtomicUsize::new(0),
            our_peer: config.peer_id.clone(),
            primary: Arc::new(RelayState::new(config.credential.clone())),
            relays: Mutex::new(Vec::new()),
            registrations,
            runtime: runtime.clone(),
            stop: watch::channel(false).0,
        });
        let host = Host::start_on(
            &runtime,
            Engine::new(engine_config),
            store,
            Box::new(ClientObserver(shared.clone())),
            HostConfig::default(),
        );
        runtime.spawn(presence_task(
            host.clone(),
            shared.clone(),
            announce_rx,
            shared.stop.subscribe(),
        ));
        Ok(Client {
            host,
            shared,
            config,
        })
    }

    /// Number of relays we are currently connected to (handshake done).
    pub fn connected(&self) -> usize {
        self.shared.with(|s| s.connections.len())
    }

    /// Calls `check` until it gives a value, waking whenever `wake` changes (and at least
    /// every [`WAIT_SAFETY_NET`]); [`ClientError::Timeout`] after `timeout`. The one wait
    /// loop of the client: every wait names what wakes it, so an event about one document
    /// does not wake waits on others.
    async fn wait_until<R, Fut>(
        &self,
        mut wake: watch::Receiver<u64>,
        timeout: Duration,
        mut check: impl FnMut() -> Fut,
    ) -> Result<R, ClientError>
    where
        Fut: Future<Output = Result<Option<R>, ClientError>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            wake.borrow_and_update();
            if let Some(r) = check().await? {
                return Ok(r);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            let nap = (deadline - now).min(WAIT_SAFETY_NET);
            if let Ok(Err(_)) = tokio::time::timeout(nap, wake.changed()).await {
                return Err(ClientError::Stopped);
            }
        }
    }

    async fn wait_durable(
        &self,
        doc: DocumentId,
        heads: Vec<ChangeHash>,
    ) -> Result<(), ClientError> {
        let shared = &self.shared;
        self.wait_until(shared.docs.subscribe(doc), DURABLE_TIMEOUT, || {
            let heads = &heads;
            async move {
                shared.with(|s| {
                    match s.failed.get(&doc) {
                        Some(true) => return Err(ClientError::StorageFull(doc)),
                        Some(false) => return Err(ClientError::StorageFailed(doc)),
                        None => {}
                    }
                    Ok(s.durable
                        .get(&doc)
                        .filter(|set| set.contains(heads))
                        .map(|_| ()))
                })
            }
        })
        .await
    }

    /// Creates a document, initialised by `init`; returns its id and `init`'s value once
    /// it is durable on this device. When `init` fails nothing is created
    /// ([`ChangeError::Rejected`]).
    pub async fn create<R: Send + 'static, E: Send + 'static>(
        &self,
        init: impl FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<(DocumentId, R), ChangeError<E>> {
        let (id, value, heads) = self
            .host
            .call(move |e, now| {
                let (id, value) = e.try_create_document(now, init)?;
                let heads = e.document(&id).map(|d| d.get_heads()).unwrap_or_default();
                Ok((id, value, heads))
            })
            .await?
            .map_err(ChangeError::Rejected)?;
        self.wait_durable(id, heads).await?;
        Ok((id, value))
    }

    /// Applies a change; returns the closure's value once the change is durable on this
    /// device. When the closure fails nothing is committed and its error comes back as
    /// [`ChangeError::Rejected`].
    pub async fn change<R: Send + 'static, E: Send + 'static>(
        &self,
        doc: DocumentId,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<R, ChangeError<E>> {
        Ok(self.change_with_heads(doc, f).await?.0)
    }

    /// [`Client::change`], also returning the document's heads after the change.
    pub async fn change_with_heads<R: Send + 'static, E: Send + 'static>(
        &self,
        doc: DocumentId,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<(R, Vec<ChangeHash>), ChangeError<E>> {
        // Not in memory: evicted, or dropped after a write failed (it holds only what is
        // durable on the device). Load it first, so a retry after `StorageFull` works.
        if !self
            .host
            .call(move |e, _| e.document(&doc).is_some())
            .await?
        {
            self.find(doc, RELOAD_TIMEOUT).await?;
        }
        let (before, value, heads) = self
            .host
            .call(move |e, now| {
                let before = e.document(&doc).map(|d| d.get_heads());
                e.change_document(now, doc, f)
                    .map(|(value, after)| (before, value, after))
            })
            .await??;
        if before.as_ref() == Some(&heads) {
            // The closure changed nothing: there is no write to wait for.
            return Ok((value, heads));
        }
        self.shared.with(|s| s.failed.remove(&doc));
        self.wait_durable(doc, heads.clone()).await?;
        Ok((value, heads))
    }

    /// Opens a document from the device or, failing that, from the relay.
    pub async fn find(&self, doc: DocumentId, timeout: Duration) -> Result<(), ClientError> {
        self.shared.with(|s| {
            s.unavailable.remove(&doc);
            s.forgotten.remove(&doc);
        });
        let wake = self.shared.docs.subscribe(doc);
        self.host.call(move |e, now| e.find(now, doc)).await?;
        let (host, shared) = (&self.host, &self.shared);
        self.wait_until(wake, timeout, || async move {
            let has = host
                .call(move |e, _| e.document(&doc).is_some_and(|d| !d.get_heads().is_empty()))
                .await?;
            if has {
                return Ok(Some(()));
            }
            if shared.with(|s| s.unavailable.contains(&doc)) {
                return Err(ClientError::Unavailable(doc));
            }
            Ok(None)
        })
        .await
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

    /// Whether the relay has shown it holds every change we have of `doc` (a document
    /// not in memory reads as having none).
    async fn acknowledged(&self, doc: DocumentId) -> Result<bool, ClientError> {
        let ours = self.heads(doc).await?.unwrap_or_default();
        Ok(self.shared.with(|s| {
            s.remote_heads
                .get(&doc)
                .is_some_and(|theirs| ours.iter().all(|h| theirs.contains(h)))
        }))
    }

    /// Waits until a relay has shown it holds every change we have of `doc`.
    pub async fn wait_acknowledged(
        &self,
        doc: DocumentId,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        self.wait_until(self.shared.docs.subscribe(doc), timeout, || async move {
            Ok(self.acknowledged(doc).await?.then_some(()))
        })
        .await
    }

    /// Waits until `pred` holds for the document's content.
    pub async fn wait_for(
        &self,
        doc: DocumentId,
        timeout: Duration,
        pred: impl Fn(&Automerge) -> bool + Send + Sync + 'static,
    ) -> Result<(), ClientError> {
        let pred = Arc::new(pred);
        self.wait_until(self.shared.docs.subscribe(doc), timeout, || {
            let p = pred.clone();
            async move {
                let holds = self.read(doc, move |d| p(d)).await?.unwrap_or(false);
                Ok(holds.then_some(()))
            }
        })
        .await
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

    /// [`Client::status`] and [`Client::pending_changes`] read together, at one moment.
    pub async fn sync_state(&self, doc: DocumentId) -> Result<(SyncStatus, usize), ClientError> {
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

    /// A receiver that changes on every event about `doc`: a change (local or synced), a
    /// load, a relay showing its heads (an acknowledgement), durability, a failed write,
    /// unavailability. For values that depend on more than the document's content, like
    /// its sync status; [`Client::subscribe`] is the way to follow the content.
    pub fn document_events(&self, doc: DocumentId) -> watch::Receiver<u64> {
        self.shared.docs.subscribe(doc)
    }

    /// A receiver that changes whenever another peer's presence on `doc` arrives (a
    /// snapshot, an update, a heartbeat or a goodbye) or every peer is forgotten (the last
    /// connection closed). Peers that fall silent drop out of [`Client::presence`] after
    /// [`PEER_TTL`] without a wake-up: a watcher re-reads at least that often.
    pub fn presence_changes(&self, doc: DocumentId) -> watch::Receiver<u64> {
        self.shared.presence_watch.subscribe(doc)
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
        let host = &self.host;
        self.wait_until(
            self.shared.docs.subscribe(doc),
            Duration::from_secs(60),
            || async move {
                let ready = host
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
                Ok(ready.then_some(()))
            },
        )
        .await?;
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
        let _ = self.shared.stop.send(true);
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
