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
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::registration::Retry;
use super::transport::{self, Connection, Transport, TransportError, TungsteniteTransport};
use super::{api_base_for, Client, ClientError, RelayApi, Shared};
use crate::engine::Direction;
use crate::ids::DocumentId;
use crate::membership::Credential;
use crate::runtime::Host;

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
}

impl fmt::Debug for RelayEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayEndpoint")
            .field("url", &self.url)
            .field("api", &self.api)
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
        }
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

impl ConnectionStatus {
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

impl Client {
    /// Keeps a connection to the relay at `url` (e.g. `ws://127.0.0.1:8080/`), reconnecting
    /// with backoff until [`Client::shutdown`], over tokio-tungstenite, with the membership
    /// API over plain HTTP on the same host ([`RelayEndpoint::over_tcp`]).
    pub fn connect(&self, url: &str) {
        self.connect_to(RelayEndpoint::over_tcp(
            url,
            self.config.limits.max_frame_bytes,
        ));
    }

    /// Like [`Client::connect`], dialling through the app's own `transport` (the phone's
    /// platform websocket), without a membership API: document registrations wait on
    /// the device. Use [`Client::connect_to`] to give both.
    pub fn connect_with(&self, transport: Arc<dyn Transport>, url: &str) {
        self.connect_to(RelayEndpoint {
            url: url.to_owned(),
            transport,
            api: None,
        });
    }

    /// Keeps a connection to `relay`: presents the credential on every connect, sends
    /// pending registrations before each one, and reports through
    /// [`Client::connection_status`] (see [`ConnectionStatus`]).
    pub fn connect_to(&self, relay: RelayEndpoint) {
        if let Some(api) = &relay.api {
            *self.shared.api.lock().unwrap_or_else(|e| e.into_inner()) = Some(api.clone());
        }
        let dialler = Dialler {
            endpoint: relay,
            host: self.host.clone(),
            shared: self.shared.clone(),
            stop: self.stop.subscribe(),
            min_backoff: self.config.min_backoff,
            max_backoff: self.config.max_backoff,
            registration_retry: self.config.registration_retry,
        };
        tokio::spawn(dialler.run());
    }

    /// Where the client stands with the relay now.
    pub fn connection_status(&self) -> ConnectionStatus {
        self.shared.connection.borrow().clone()
    }

    /// A receiver that sees every change of [`Client::connection_status`] (`changed()`).
    pub fn watch_connection(&self) -> watch::Receiver<ConnectionStatus> {
        self.shared.connection.subscribe()
    }

    /// The credential presented from the next connect on.
    pub fn credential(&self) -> Option<Credential> {
        self.shared.credential.borrow().clone()
    }

    /// Presents `credential` from the next connect on (restored from the keystore, or
    /// after [`ConnectionStatus::Unauthorized`]: the client dials again at once). It must
    /// be this device's ([`ClientError::CredentialMismatch`] otherwise).
    pub fn set_credential(&self, credential: Credential) -> Result<(), ClientError> {
        if credential.peer_id() != self.config.peer_id {
            return Err(ClientError::CredentialMismatch);
        }
        self.shared.credential.send_replace(Some(credential));
        self.shared.connection.send_if_modified(|s| {
            // A new credential is worth presenting: leave the "refused" state.
            let refused = *s == ConnectionStatus::Unauthorized;
            if refused {
                *s = ConnectionStatus::Offline;
            }
            refused
        });
        Ok(())
    }

    /// The relay's membership API with this device's current credential.
    pub fn api(&self) -> Result<RelayApi, ClientError> {
        let api = self
            .shared
            .api
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(ClientError::NoRelayApi)?;
        Ok(match self.credential() {
            Some(c) => api.with_credential(c),
            None => api,
        })
    }

    /// Replaces this device's credential at the relay and returns the new one: keep it in
    /// the platform keystore now (the old one is refused from here on). The client
    /// presents it from the next connect.
    pub async fn rotate_credential(&self) -> Result<Credential, ClientError> {
        let credential = self.api()?.rotate().await?;
        self.set_credential(credential.clone())?;
        Ok(credential)
    }
}

/// One connect loop (one [`RelayEndpoint`]), until the client stops.
pub(super) struct Dialler {
    pub(super) endpoint: RelayEndpoint,
    pub(super) host: Host,
    pub(super) shared: Arc<Shared>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) min_backoff: Duration,
    pub(super) max_backoff: Duration,
    pub(super) registration_retry: Duration,
}

impl Dialler {
    fn api(&self) -> Option<RelayApi> {
        let api = self.endpoint.api.clone()?;
        Some(match self.shared.credential.borrow().clone() {
            Some(c) => api.with_credential(c),
            None => api,
        })
    }

    pub(super) async fn run(self) {
        let mut stop = self.stop.clone();
        let mut credentials = self.shared.credential.subscribe();
        let mut backoff = self.min_backoff;
        loop {
            if *stop.borrow() {
                return;
            }
            if *self.shared.connection.borrow() == ConnectionStatus::Unauthorized {
                // A refused credential is not presented again: wait for another.
                tokio::select! {
                    changed = credentials.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                }
                backoff = self.min_backoff;
            }
            credentials.borrow_and_update();
            let credential = self.shared.credential.borrow().clone();
            if let Some(api) = self.api() {
                // Before the websocket: a document offered on a connection that opens
                // after its registration is served at once.
                tokio::select! {
                    _ = self.shared.registrations.retry(&api, Retry::OnConnect) => {}
                    _ = stop.changed() => return,
                }
                self.shared.bump();
            }
            self.shared.set_connection(ConnectionStatus::Connecting);
            let dial = tokio::select! {
                d = self.endpoint.transport.connect(&self.endpoint.url, credential.as_ref()) => d,
                _ = stop.changed() => return,
            };
            let wait = match dial {
                Ok(conn) => {
                    backoff = self.min_backoff;
                    self.shared.set_connection(ConnectionStatus::Connected);
                    let Ok(handle) = self.host.open(Direction::Outgoing, None).await else {
                        return;
                    };
                    let conn: Arc<dyn Connection> = Arc::from(conn);
                    let mut reoffer = false;
                    tokio::select! {
                        _ = transport::pump(conn, handle, async {
                            self.registered_while_connected().await;
                            reoffer = true;
                        }) => {}
                        _ = stop.changed() => return,
                    }
                    self.shared.set_connection(ConnectionStatus::Offline);
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
                    self.shared.set_connection(ConnectionStatus::Unauthorized);
                    continue;
                }
                Err(TransportError::Rejected { status: 403, .. }) => {
                    self.shared.set_connection(ConnectionStatus::Forbidden);
                    self.max_backoff
                }
                Err(TransportError::Rejected {
                    status: 429,
                    retry_after,
                }) => {
                    self.shared
                        .set_connection(ConnectionStatus::QuotaExceeded { retry_after });
                    retry_after.map_or(backoff, |r| r.max(backoff))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dial failed");
                    self.shared.set_connection(ConnectionStatus::Offline);
                    backoff
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
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
                _ = self.shared.reoffer.notified() => return,
            }
            let Some(api) = self.api() else {
                std::future::pending::<()>().await;
                return;
            };
            let round = self.shared.registrations.retry(&api, Retry::Waiting).await;
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
