//! The on-device runtime (tokio): an [`crate::engine::Engine`] in the client role over a
//! [`Storage`], dialling a relay over websockets with reconnect and backoff.
//!
//! Every call that commits a change returns once the change is durable on this device;
//! [`Client::wait_acknowledged`] waits until the relay has shown it holds our heads
//! ("safely on the relay").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::{Automerge, ChangeHash};
use futures_util::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig};

use crate::engine::{Direction, Engine, EngineConfig, EngineError, Event, Limits, Role};
use crate::ids::{ConnectionId, DocumentId, PeerId};
use crate::runtime::{Host, HostConfig, Observer, Outbound};
use crate::store::{Storage, StoreError};

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
    /// The device store failed (e.g. disk full); the change was not kept.
    #[error("storage failed for document {0}")]
    StorageFailed(DocumentId),
    /// The engine refused the call.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Opening the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::runtime::HostStopped> for ClientError {
    fn from(_: crate::runtime::HostStopped) -> Self {
        ClientError::Stopped
    }
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// This device's peer id (per device, e.g. `member/device`).
    pub peer_id: PeerId,
    /// Engine limits.
    pub limits: Limits,
    /// First reconnect delay; doubles up to `max_backoff`. Default 250 ms.
    pub min_backoff: Duration,
    /// Longest reconnect delay. Default 5 s (what JS clients use).
    pub max_backoff: Duration,
    /// Seed for the engine's RNG; `None` draws one from the OS.
    pub seed: Option<u64>,
}

impl ClientConfig {
    /// Defaults for a device with this peer id.
    pub fn new(peer_id: impl Into<PeerId>) -> Self {
        ClientConfig {
            peer_id: peer_id.into(),
            limits: Limits::default(),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            seed: None,
        }
    }
}

#[derive(Default)]
struct State {
    durable: BTreeMap<DocumentId, BTreeSet<Vec<ChangeHash>>>,
    remote_heads: BTreeMap<DocumentId, Vec<ChangeHash>>,
    unavailable: BTreeSet<DocumentId>,
    failed: BTreeSet<DocumentId>,
    connections: BTreeSet<ConnectionId>,
}

struct Shared {
    state: Mutex<State>,
    version: watch::Sender<u64>,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct ClientObserver(Arc<Shared>);

impl Observer for ClientObserver {
    fn event(&mut self, event: &Event) {
        let changed = self.0.with(|s| match event {
            Event::DocumentDurable { doc, heads } => {
                s.durable.entry(*doc).or_default().insert(heads.clone());
                true
            }
            Event::PeerHasHeads { doc, heads, .. } => {
                s.remote_heads.insert(*doc, heads.clone());
                true
            }
            Event::DocumentUnavailable { doc } => s.unavailable.insert(*doc),
            Event::StorageFailed { doc: Some(doc), .. } => s.failed.insert(*doc),
            Event::PeerConnected { conn, .. } => s.connections.insert(*conn),
            Event::PeerDisconnected { conn } => s.connections.remove(conn),
            Event::DocumentChanged { .. } | Event::DocumentLoaded { .. } => true,
            _ => false,
        });
        if changed {
            self.0.version.send_modify(|v| *v += 1);
        }
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
        let storage_id = store.storage_id()?;
        let seed = config.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
            u64::from_le_bytes(b)
        });
        let engine_config = EngineConfig::new(Role::Client, config.peer_id.clone(), seed)
            .with_storage_id(storage_id)
            .with_limits(config.limits.clone());
        let (version, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            version,
        });
        let host = Host::start(
            Engine::new(engine_config),
            store,
            Box::new(ClientObserver(shared.clone())),
            HostConfig::default(),
        );
        let (stop, _) = watch::channel(false);
        Ok(Client {
            host,
            shared,
            config,
            stop,
        })
    }

    /// Keeps a connection to the relay at `url` (e.g. `ws://127.0.0.1:8080/`), reconnecting
    /// with backoff until [`Client::shutdown`].
    pub fn connect(&self, url: &str) {
        let url = url.to_owned();
        let host = self.host.clone();
        let mut stop = self.stop.subscribe();
        let (min, max) = (self.config.min_backoff, self.config.max_backoff);
        let max_frame = self.config.limits.max_frame_bytes;
        tokio::spawn(async move {
            let mut backoff = min;
            loop {
                if *stop.borrow() {
                    return;
                }
                let ws_config = WebSocketConfig::default()
                    .max_message_size(Some(max_frame))
                    .max_frame_size(Some(max_frame))
                    .read_buffer_size(16 * 1024)
                    .write_buffer_size(16 * 1024)
                    .max_write_buffer_size(max_frame + 1024 * 1024);
                let dial = tokio_tungstenite::connect_async_with_config(
                    url.as_str(),
                    Some(ws_config),
                    true,
                );
                match dial.await {
                    Ok((ws, _)) => {
                        backoff = min;
                        let Ok(handle) = host.open(Direction::Outgoing, None).await else {
                            return;
                        };
                        tokio::select! {
                            _ = pump(ws, handle) => {}
                            _ = stop.changed() => return,
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "dial failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(max);
            }
        });
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
            if s.failed.contains(&doc) {
                return Some(Err(ClientError::StorageFailed(doc)));
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
        let heads = self
            .host
            .call(move |e, now| e.change_document(now, doc, f))
            .await??;
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

    /// Disconnects, lets pending writes finish, and stops.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        self.host.shutdown().await;
    }
}

/// Pumps one websocket to and from the engine until either side closes.
async fn pump<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    handle: crate::runtime::ConnectionHandle,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let crate::runtime::ConnectionHandle {
        input,
        mut outbound,
    } = handle;
    let (mut sink, mut stream) = ws.split();
    let writer = async {
        while let Some(out) = outbound.recv().await {
            match out {
                Outbound::Frame(f) => {
                    if sink
                        .send(tungstenite::Message::Binary(f.into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Outbound::Close(_) => {
                    let _ = sink.close().await;
                    break;
                }
            }
        }
    };
    let reader = async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(tungstenite::Message::Binary(b)) => {
                    if input.frame(b.to_vec()).await.is_err() {
                        break;
                    }
                }
                Ok(tungstenite::Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
    input.closed().await;
}
