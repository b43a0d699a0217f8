//! Keeping a connection to the relay: dialling with the device credential, backing off,
//! telling the app what a refused upgrade means, and sending pending document
//! registrations before each connect.
//!
//! | the relay answers the upgrade | status | the client |
//! |---|---|---|
//! | 101 | [`ConnectionStatus::Connected`] | syncs; retries pending registrations on a timer |
//! | 401 | [`ConnectionStatus::Unauthorized`] | stops dialling until [`Client::set_credential`](super::Client::set_credential) |
//! | 403 | [`ConnectionStatus::Forbidden`] | retries at the longest backoff |
//! | 429 | [`ConnectionStatus::QuotaExceeded`] | retries after `Retry-After` (or the backoff) |
//! | no answer, or another status | [`ConnectionStatus::Offline`] | retries with backoff |

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::registration::Retry;
use super::subscription::{Gate, SubscriptionGuard, SubscriptionHandle};
use super::transport::{
    self, Connection, Keepalive, Transport, TransportError, TungsteniteTransport,
};
use super::{api_base_for, Client, ClientError, RelayApi, Shared};
use crate::engine::Direction;
use crate::ids::DocumentId;
use crate::membership::Credential;
use crate::runtime::Host;

/// How long a connection must last before its loss starts the backoff over at
/// `min_backoff`: 10 s, longer than any upgrade plus the first sync exchange. A relay that
/// restarts after hours reconnects at once; one that drops every connection as it opens
/// is dialled at a doubling interval up to `max_backoff`.
pub const HEALTHY_CONNECTION: Duration = Duration::from_secs(10);

/// Where and how the client reaches its relay.
#[derive(Clone)]
pub struct RelayEndpoint {
    /// The websocket URL (e.g. `ws://127.0.0.1:8080/`).
    pub url: String,
    /// Dials the websocket (the phone's platform websocket, or [`TungsteniteTransport`]).
    pub transport: Arc<dyn Transport>,
    /// The relay's membership API (without a credential: the client adds its own). `None`
    /// keeps document registrations on the device until an endpoint with one is used.
    pub api: Option<RelayApi>,
    /// The credential this device presents to this relay (a member of groups on two
    /// relays holds one per relay); each connection joins with its peer id. `None`: the
    /// relay's current one, or for the first relay [`ClientConfig::credential`](super::ClientConfig::credential).
    pub credential: Option<Credential>,
}

impl fmt::Debug for RelayEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayEndpoint")
            .field("url", &self.url)
            .field("api", &self.api)
            .field("credential", &self.credential.is_some())
            .finish()
    }
}

impl RelayEndpoint {
    /// The relay at websocket `url` over tokio-tungstenite (frames up to
    /// `max_frame_bytes`), with its API over plain HTTP on the same host
    /// ([`api_base_for`]; `wss://` relays need the platform's HTTP stack for the API).
    pub fn over_tcp(url: &str, max_frame_bytes: usize) -> RelayEndpoint {
        RelayEndpoint {
            url: url.to_owned(),
            transport: Arc::new(TungsteniteTransport::new(max_frame_bytes)),
            api: api_base_for(url).map(|base| RelayApi::over_http(&base)),
            credential: None,
        }
    }

    /// The same endpoint presenting `credential`.
    pub fn with_credential(mut self, credential: Credential) -> RelayEndpoint {
        self.credential = Some(credential);
        self
    }
}

/// Where the client stands with the relay ([`Client::connection_status`](super::Client::connection_status)).
///
/// | the relay answers the upgrade | status | the client |
/// |---|---|---|
/// | 101 | `Connected` | syncs; retries pending registrations on a timer |
/// | 401 | `Unauthorized` | stops dialling until [`Client::set_credential`](super::Client::set_credential) |
/// | 403 | `Forbidden` | retries at the longest backoff |
/// | 429 | `QuotaExceeded` | retries after `Retry-After` (or the backoff) |
/// | no answer, or another status | `Offline` | retries with backoff |
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionStatus {
    /// Not asked to connect.
    Idle,
    /// Dialling.
    Connecting,
    /// The relay accepted the connection.
    Connected,
    /// The relay cannot be reached (or closed the connection); retrying with backoff.
    Offline,
    /// The relay refused the credential (missing, wrong, rotated away or revoked). The
    /// client does not dial again until the app sets a new credential: enrol the device
    /// again (an invite, a device link) or restore the one in the keystore.
    Unauthorized,
    /// The relay refused this device's connection; retrying at the longest backoff.
    Forbidden,
    /// Too many attempts: retrying after the relay's `Retry-After`.
    QuotaExceeded {
        /// What the relay asked for.
        retry_after: Option<Duration>,
    },
}

/// The four states an app shows for a relay ([`ConnectionStatus::state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected (not asked to, unreachable, refused for a while, or rate-limited).
    Offline,
    /// Dialling.
    Connecting,
    /// Connected.
    Online,
    /// The relay refused the credential: the app must enrol again or restore it.
    Unauthorized,
}

impl ConnectionStatus {
    /// The coarse state: `Forbidden`, `QuotaExceeded` and `Idle` read as `Offline`.
    pub fn state(&self) -> ConnectionState {
        match self {
            ConnectionStatus::Connecting => ConnectionState::Connecting,
            ConnectionStatus::Connected => ConnectionState::Online,
            ConnectionStatus::Unauthorized => ConnectionState::Unauthorized,
            ConnectionStatus::Idle
            | ConnectionStatus::Offline
            | ConnectionStatus::Forbidden
            | ConnectionStatus::QuotaExceeded { .. } => ConnectionState::Offline,
        }
    }

    /// The error an app branches on, for the states that are one.
    pub fn error(&self) -> Option<ClientError> {
        match self {
            ConnectionStatus::Idle | ConnectionStatus::Connecting | ConnectionStatus::Connected => {
                None
            }
            ConnectionStatus::Offline => Some(ClientError::Offline),
            ConnectionStatus::Unauthorized => Some(ClientError::Unauthorized),
            ConnectionStatus::Forbidden => Some(ClientError::Forbidden {
                reason: "the relay refused this device's connection".to_owned(),
            }),
            ConnectionStatus::QuotaExceeded { retry_after } => Some(ClientError::QuotaExceeded {
                retry_after: *retry_after,
            }),
        }
    }
}

/// A relay's credential and status. The first relay's are the client's own
/// ([`Client::connection_status`], [`Client::set_credential`]).
pub(super) struct RelayState {
    /// The credential presented from the next connect on.
    pub(super) credential: watch::Sender<Option<Credential>>,
    /// Where we stand with the relay.
    pub(super) status: watch::Sender<ConnectionStatus>,
}

impl RelayState {
    pub(super) fn new(credential: Option<Credential>) -> Self {
        RelayState {
            credential: watch::channel(credential).0,
            status: watch::channel(ConnectionStatus::Idle).0,
        }
    }

    fn set_status(&self, status: ConnectionStatus) {
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    fn set_credential(&self, credential: Credential) {
        self.credential.send_replace(Some(credential));
        self.status.send_if_modified(|s| {
            // A new credential is worth presenting: leave the "refused" state.
            let refused = *s == ConnectionStatus::Unauthorized;
            if refused {
                *s = ConnectionStatus::Offline;
            }
            refused
        });
    }
}

/// One relay the client keeps a connection to.
pub(super) struct RelayShared {
    pub(super) url: String,
    pub(super) state: Arc<RelayState>,
    /// The transport and API of the last endpoint given for this URL.
    endpoint: Mutex<RelayEndpoint>,
    /// The first relay: pending registrations without a relay URL are its.
    pub(super) primary: bool,
    /// Ends this relay's loop.
    stop: watch::Sender<bool>,
    /// Asks the loop to dial now rather than wait out its backoff ([`Client::sync_now`]).
    pub(super) dial_now: Notify,
    /// Asks the open connection to reconnect: a document it offered was registered since.
    pub(super) reoffer: Notify,
}

impl RelayShared {
    fn endpoint(&self) -> RelayEndpoint {
        self.endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The membership API with this relay's current credential.
    pub(super) fn api(&self) -> Option<RelayApi> {
        let api = self.endpoint().api?;
        Some(match self.state.credential.borrow().clone() {
            Some(c) => api.with_credential(c),
            None => api,
        })
    }

    /// Whether a pending registration recorded for `relay` is this relay's.
    pub(super) fn owns(&self, relay: Option<&str>) -> bool {
        match relay {
            Some(url) => url == self.url,
            None => self.primary,
        }
    }
}

/// A relay the client keeps a connection to ([`Client::connect_to`]). Cheap to clone.
#[derive(Clone)]
pub struct RelayHandle {
    client: Client,
    relay: Arc<RelayShared>,
}

impl fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayHandle")
            .field("url", &self.relay.url)
            .finish()
    }
}

impl RelayHandle {
    /// The relay's websocket URL.
    pub fn url(&self) -> &str {
        &self.relay.url
    }

    /// Where the client stands with this relay now.
    pub fn status(&self) -> ConnectionStatus {
        self.relay.state.status.borrow().clone()
    }

    /// A receiver that sees every change of [`RelayHandle::status`] (`changed()`).
    pub fn watch_status(&self) -> watch::Receiver<ConnectionStatus> {
        self.relay.state.status.subscribe()
    }

    /// Calls `on_status` with the current status first, then with each change, on the
    /// client's runtime, until the handle is cancelled or dropped (changes in quick
    /// succession may be delivered as the newest one).
    pub fn on_status(
        &self,
        on_status: impl Fn(ConnectionStatus) + Send + Sync + 'static,
    ) -> SubscriptionHandle {
        let gate = Arc::new(Gate::default());
        let guard = SubscriptionGuard::new(self.client.shared.clone());
        let mut rx = self.relay.state.status.subscribe();
        let mut stop = self.client.shared.stop.subscribe();
        let task_gate = gate.clone();
        self.client.shared.runtime.spawn(async move {
            let _guard = guard;
            loop {
                let status = rx.borrow_and_update().clone();
                if !task_gate.deliver(|| on_status(status)) {
                    return;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = task_gate.cancelled() => return,
                    _ = stop.changed() => return,
                }
            }
        });
        SubscriptionHandle::new(gate)
    }

    /// The credential presented to this relay from the next connect on.
    pub fn credential(&self) -> Option<Credential> {
        self.relay.state.credential.borrow().clone()
    }

    /// Presents `credential` to this relay from the next connect on (after
    /// [`ConnectionStatus::Unauthorized`] the client dials again at once). Its peer id is
    /// the one the connection joins with.
    pub fn set_credential(&self, credential: Credential) {
        self.relay.state.set_credential(credential);
    }

    /// This relay's membership API with its current credential.
    pub fn api(&self) -> Result<RelayApi, ClientError> {
        self.relay.api().ok_or(ClientError::NoRelayApi)
    }

    /// Replaces this device's credential at this relay and returns the new one: keep it in
    /// the platform keystore now (the old one is refused from here on).
    pub async fn rotate_credential(&self) -> Result<Credential, ClientError> {
        let credential = self.api()?.rotate().await?;
        self.set_credential(credential.clone());
        Ok(credential)
    }

    /// Ends this relay's connection loop (the status goes back to `Idle`). A later
    /// [`Client::connect_to`] with its URL starts a new one.
    pub fn disconnect(&self) {
        let _ = self.relay.stop.send(true);
        self.client
            .shared
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| !Arc::ptr_eq(r, &self.relay));
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn shared(&self) -> &Arc<RelayShared> {
        &self.relay
    }
}

impl Client {
    /// Keeps a connection to the relay at `url` (e.g. `ws://127.0.0.1:8080/`), reconnecting
    /// with backoff until [`Client::shutdown`], over tokio-tungstenite, with the membership
    /// API over plain HTTP on the same host ([`RelayEndpoint::over_tcp`]).
    pub fn connect(&self, url: &str) -> RelayHandle {
        self.connect_to(RelayEndpoint::over_tcp(
            url,
            self.config.limits.max_frame_bytes,
        ))
    }

    /// Like [`Client::connect`], dialling through the app's own `transport` (the phone's
    /// platform websocket), without a membership API: document registrations wait on
    /// the device. Use [`Client::connect_to`] to give both.
    pub fn connect_with(&self, transport: Arc<dyn Transport>, url: &str) -> RelayHandle {
        self.connect_to(RelayEndpoint {
            url: url.to_owned(),
            transport,
            api: None,
            credential: None,
        })
    }

    /// Keeps one connection to `endpoint`'s relay: presents its credential on every
    /// connect, sends pending registrations before each one, and reports through the
    /// returned handle (see [`ConnectionStatus`]). A second call for the same URL returns
    /// the running relay's handle (no second connection), taking the endpoint's transport
    /// and API and, if it names one, its credential from the next connect on.
    pub fn connect_to(&self, endpoint: RelayEndpoint) -> RelayHandle {
        let mut relays = self.shared.relays.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(relay) = relays.iter().find(|r| r.url == endpoint.url) {
            if let Some(c) = &endpoint.credential {
                relay.state.set_credential(c.clone());
            }
            *relay.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = endpoint;
            return RelayHandle {
                client: self.clone(),
                relay: relay.clone(),
            };
        }
        let primary = relays.is_empty();
        let state = if primary {
            self.shared.primary.clone()
        } else {
            Arc::new(RelayState::new(None))
        };
        if let Some(c) = &endpoint.credential {
            state.credential.send_replace(Some(c.clone()));
        }
        let relay = Arc::new(RelayShared {
            url: endpoint.url.clone(),
            state,
            endpoint: Mutex::new(endpoint),
            primary,
            stop: watch::channel(false).0,
            dial_now: Notify::new(),
            reoffer: Notify::new(),
        });
        relays.push(relay.clone());
        drop(relays);
        let dialler = Dialler {
            relay: relay.clone(),
            host: self.host.clone(),
            shared: self.shared.clone(),
            min_backoff: self.config.min_backoff,
            max_backoff: self.config.max_backoff,
            registration_retry: self.config.registration_retry,
            keepalive: Keepalive {
                interval: self.config.keepalive_interval,
                timeout: self.config.keepalive_timeout,
            },
        };
        self.shared.runtime.spawn(dialler.run());
        RelayHandle {
            client: self.clone(),
            relay,
        }
    }

    /// Every relay the client keeps a connection to, in the order of their first connect.
    pub fn relays(&self) -> Vec<RelayHandle> {
        self.shared
            .relays()
            .into_iter()
            .map(|relay| RelayHandle {
                client: self.clone(),
                relay,
            })
            .collect()
    }

    /// The first relay connected to, if any.
    pub(super) fn primary_relay(&self) -> Option<RelayHandle> {
        self.relays().into_iter().next()
    }

    /// Where the client stands with its first relay now (`Idle` before any connect).
    pub fn connection_status(&self) -> ConnectionStatus {
        self.shared.primary.status.borrow().clone()
    }

    /// A receiver that sees every change of [`Client::connection_status`] (`changed()`).
    pub fn watch_connection(&self) -> watch::Receiver<ConnectionStatus> {
        self.shared.primary.status.subscribe()
    }

    /// The credential presented to the first relay from the next connect on.
    pub fn credential(&self) -> Option<Credential> {
        self.shared.primary.credential.borrow().clone()
    }

    /// Presents `credential` to the first relay from the next connect on (restored from
    /// the keystore, or after [`ConnectionStatus::Unauthorized`]: the client dials again
    /// at once). It must be this device's ([`ClientError::CredentialMismatch`] otherwise);
    /// another relay's credential goes through its [`RelayHandle::set_credential`].
    pub fn set_credential(&self, credential: Credential) -> Result<(), ClientError> {
        if credential.peer_id() != self.config.peer_id {
            return Err(ClientError::CredentialMismatch);
        }
        self.shared.primary.set_credential(credential);
        Ok(())
    }

    /// The first relay's membership API with this device's current credential.
    pub fn api(&self) -> Result<RelayApi, ClientError> {
        self.primary_relay().ok_or(ClientError::NoRelayApi)?.api()
    }

    /// Replaces this device's credential at the first relay and returns the new one: keep
    /// it in the platform keystore now (the old one is refused from here on). The client
    /// presents it from the next connect.
    pub async fn rotate_credential(&self) -> Result<Credential, ClientError> {
        let credential = self.api()?.rotate().await?;
        self.set_credential(credential.clone())?;
        Ok(credential)
    }
}

/// One relay's connect loop, until the client stops or the relay is disconnected.
struct Dialler {
    relay: Arc<RelayShared>,
    host: Host,
    shared: Arc<Shared>,
    min_backoff: Duration,
    max_backoff: Duration,
    registration_retry: Duration,
    keepalive: Keepalive,
}

impl Dialler {
    fn set_status(&self, status: ConnectionStatus) {
        self.relay.state.set_status(status);
        self.shared.bump();
    }

    async fn run(self) {
        let mut client_stop = self.shared.stop.subscribe();
        let mut relay_stop = self.relay.stop.subscribe();
        let stopped = async move {
            tokio::select! {
                _ = client_stop.wait_for(|s| *s) => {}
                _ = relay_stop.wait_for(|s| *s) => {}
            }
        };
        tokio::select! {
            _ = self.dial_loop() => {}
            _ = stopped => {}
        }
        self.set_status(ConnectionStatus::Idle);
    }

    async fn dial_loop(&self) {
        let state = &self.relay.state;
        let mut credentials = state.credential.subscribe();
        let mut backoff = self.min_backoff;
        loop {
            if *state.status.borrow() == ConnectionStatus::Unauthorized {
                // A refused credential is not presented again: wait for another.
                if credentials.changed().await.is_err() {
                    return;
                }
                backoff = self.min_backoff;
            }
            credentials.borrow_and_update();
            let credential = state.credential.borrow().clone();
            if let Some(api) = self.relay.api() {
                // Before the websocket: a document offered on a connection that opens
                // after its registration is served at once.
                self.shared
                    .registrations
                    .retry(&api, Retry::OnConnect, &self.relay)
                    .await;
                self.shared.bump();
            }
            self.set_status(ConnectionStatus::Connecting);
            let endpoint = self.relay.endpoint();
            let dial = endpoint
                .transport
                .connect(&endpoint.url, credential.as_ref())
                .await;
            let wait = match dial {
                Ok(conn) => {
                    let opened = tokio::time::Instant::now();
                    self.set_status(ConnectionStatus::Connected);
                    let local_peer = credential.as_ref().map(|c| c.peer_id());
                    let Ok(handle) = self
                        .host
                        .open_as(Direction::Outgoing, None, local_peer)
                        .await
                    else {
                        return;
                    };
                    let conn: Arc<dyn Connection> = Arc::from(conn);
                    let mut reoffer = false;
                    transport::pump(
                        conn,
                        handle,
                        async {
                            self.registered_while_connected().await;
                            reoffer = true;
                        },
                        self.keepalive,
                    )
                    .await;
                    self.set_status(ConnectionStatus::Offline);
                    // Only a connection that lasted starts the backoff over: one that
                    // drops as soon as it opens (a relay answering garbage, a proxy that
                    // accepts and hangs up) would otherwise be redialled four times a
                    // second for ever, draining a phone's battery.
                    if opened.elapsed() >= HEALTHY_CONNECTION {
                        backoff = self.min_backoff;
                    }
                    if reoffer {
                        // The relay answered `doc-unavailable` for a document it now
                        // accepts: a new connection offers every document afresh.
                        tracing::debug!("reconnecting to offer newly registered documents");
                        continue;
                    }
                    backoff
                }
                Err(TransportError::Rejected { status: 401, .. }) => {
                    tracing::info!("the relay refused the device credential");
                    self.set_status(ConnectionStatus::Unauthorized);
                    continue;
                }
                Err(TransportError::Rejected { status: 403, .. }) => {
                    self.set_status(ConnectionStatus::Forbidden);
                    self.max_backoff
                }
                Err(TransportError::Rejected {
                    status: 429,
                    retry_after,
                }) => {
                    self.set_status(ConnectionStatus::QuotaExceeded { retry_after });
                    retry_after.map_or(backoff, |r| r.max(backoff))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dial failed");
                    self.set_status(ConnectionStatus::Offline);
                    backoff
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.relay.dial_now.notified() => backoff = self.min_backoff,
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    /// While connected: retries waiting registrations on the timer, and returns once one
    /// was accepted for a document this connection has already offered (or the app's own
    /// registration of a loaded document asks for it), so the caller reconnects.
    async fn registered_while_connected(&self) {
        // At once on connecting: a registration made while the dial was under way (after
        // the round before it) must not wait a whole retry period.
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.relay.reoffer.notified() => return,
            }
            let Some(api) = self.relay.api() else {
                self.relay.reoffer.notified().await;
                return;
            };
            let round = self
                .shared
                .registrations
                .retry(&api, Retry::Waiting, &self.relay)
                .await;
            self.shared.bump();
            wait = round
                .retry_after
                .map_or(self.registration_retry, |r| r.max(self.registration_retry));
            if self.any_loaded(round.registered).await {
                return;
            }
        }
    }

    async fn any_loaded(&self, docs: Vec<DocumentId>) -> bool {
        if docs.is_empty() {
            return false;
        }
        self.host
            .call(move |e, _| {
                let known = e.document_ids();
                docs.iter().any(|d| known.contains(d))
            })
            .await
            .unwrap_or(false)
    }
}
