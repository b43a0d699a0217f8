//! A [`samod`] (Rust automerge-repo) client peer for interop tests against a websocket
//! relay speaking the automerge-repo protocol.
//!
//! The websocket is dialled with a plain `tokio-tungstenite` client (no TLS) wrapped into a
//! `samod::Transport`; samod's own `tungstenite` feature would pull in native-tls.
//! The repo keeps its documents in memory and announces them to the relay (samod's default).
//!
//! ```no_run
//! # async fn demo(url: &str) -> Result<(), cairn_tests::samod_peer::SamodPeerError> {
//! use automerge::{transaction::Transactable, ReadDoc, ROOT};
//! use cairn_tests::samod_peer::SamodPeer;
//!
//! let peer = SamodPeer::connect(url).await?;
//! let doc = peer.find("488sijVLJ6Grs5PnrczSYBwfNg25").await?.expect("the relay has it");
//! doc.change(|tx| {
//!     let (_, notes) = tx.get(ROOT, "notes").unwrap().unwrap();
//!     let len = tx.length(&notes);
//!     tx.splice_text(&notes, len, 0, "!").unwrap();
//! })
//! .await?; // returns once the relay has acknowledged the change
//! peer.shutdown().await;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transaction;
use automerge::{AutoSerde, Automerge};
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use samod::{
    BackoffConfig, ConnectionId, DialError, Dialer, DialerHandle, DocHandle, DocumentId, PeerId,
    Repo, Transport,
};
use thiserror::Error;
use tokio_tungstenite::tungstenite::Message;

/// Default time limit for connecting, syncing and waiting.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a [`SamodPeer`] call failed.
#[derive(Debug, Error)]
pub enum SamodPeerError {
    /// The relay address is not a URL.
    #[error("not a websocket url: {0}")]
    Url(#[from] url::ParseError),
    /// The text is not a bs58check (or legacy UUID) document id.
    #[error("not a document id: {0:?}")]
    DocumentId(String),
    /// samod gave up dialling the relay.
    #[error("dialing {url} failed: {reason}")]
    Dial {
        /// The relay URL.
        url: String,
        /// samod's description of the failure.
        reason: String,
    },
    /// Something did not happen within its time limit (is the relay running?).
    #[error("{what}: not within {limit:?}")]
    Timeout {
        /// What we were waiting for.
        what: String,
        /// The time limit.
        limit: Duration,
    },
    /// The peer has no connection to the relay right now.
    #[error("not connected to the relay")]
    NotConnected,
    /// The samod repo was stopped.
    #[error(transparent)]
    Stopped(#[from] samod::Stopped),
    /// The document's change stream ended while waiting.
    #[error("document {0} closed while waiting")]
    Closed(String),
    /// The document could not be rendered as JSON.
    #[error("document is not representable as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Options for [`SamodPeer::connect_with`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Peer id sent in `join` (`senderId`); random if `None`.
    pub peer_id: Option<String>,
    /// Time limit for connect + handshake, and default for later waits.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            peer_id: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Dials `ws://...` and hands the socket to samod as a byte transport (one binary frame =
/// one protocol message). samod calls this again on every reconnect.
struct WsDialer {
    url: url::Url,
}

impl Dialer for WsDialer {
    type Error = Infallible;

    fn url(&self) -> url::Url {
        self.url.clone()
    }

    fn connect(&self) -> BoxFuture<'static, Result<Transport, DialError<Infallible>>> {
        let url = self.url.to_string();
        async move {
            let (ws, _response) = tokio_tungstenite::connect_async(url)
                .await
                .map_err(DialError::transient)?;
            let (sink, stream) = ws.split();
            // Binary frames are messages; tungstenite answers pings itself, and a text frame
            // is a protocol error.
            let stream = stream
                .filter_map(|msg| async move {
                    match msg {
                        Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
                        Ok(Message::Text(_)) => {
                            Some(Err(std::io::Error::other("unexpected text frame")))
                        }
                        Ok(_) => None,
                        Err(e) => Some(Err(std::io::Error::other(e))),
                    }
                })
                .boxed();
            let sink = sink
                .sink_map_err(std::io::Error::other)
                .with(|bytes: Vec<u8>| {
                    futures::future::ready(Ok::<_, std::io::Error>(Message::Binary(bytes.into())))
                });
            Ok(Transport::new(stream, sink))
        }
        .boxed()
    }
}

/// A samod repo (in-memory storage, on the current tokio runtime) connected to one relay.
pub struct SamodPeer {
    repo: Repo,
    dialer: DialerHandle<Infallible>,
    timeout: Duration,
}

impl SamodPeer {
    /// Connects with a random peer id; returns once the `join`/`peer` handshake is done.
    pub async fn connect(url: &str) -> Result<SamodPeer, SamodPeerError> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Connects with explicit options; returns once the handshake is done.
    pub async fn connect_with(
        url: &str,
        opts: ConnectOptions,
    ) -> Result<SamodPeer, SamodPeerError> {
        let url = url::Url::parse(url)?;
        let mut builder = Repo::build_tokio();
        if let Some(id) = &opts.peer_id {
            builder = builder.with_peer_id(PeerId::from(id.as_str()));
        }
        let repo = builder.load().await;
        let backoff = BackoffConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_retries: None,
        };
        let dialer = repo.dial(backoff, Arc::new(WsDialer { url: url.clone() }))?;
        match tokio::time::timeout(opts.timeout, dialer.established()).await {
            Ok(Ok(_peer_info)) => Ok(SamodPeer {
                repo,
                dialer,
                timeout: opts.timeout,
            }),
            Ok(Err(e)) => {
                repo.stop().await;
                Err(SamodPeerError::Dial {
                    url: url.to_string(),
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                dialer.close();
                repo.stop().await;
                Err(SamodPeerError::Timeout {
                    what: format!("handshake with {url}"),
                    limit: opts.timeout,
                })
            }
        }
    }

    /// The underlying samod repo.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// Our `senderId`.
    pub fn peer_id(&self) -> String {
        self.repo.peer_id().to_string()
    }

    /// The relay's `senderId` and `storageId` from its `peer` message, while connected.
    pub fn relay_info(&self) -> Option<(String, Option<String>)> {
        self.dialer
            .peer_info()
            .map(|p| (p.peer_id.to_string(), p.storage_id.map(|s| s.to_string())))
    }

    /// Whether the connection to the relay is up.
    pub fn is_connected(&self) -> bool {
        self.dialer.is_connected()
    }

    /// Id of the current connection to the relay (changes on reconnect).
    pub fn connection_id(&self) -> Result<ConnectionId, SamodPeerError> {
        self.dialer
            .connection_id()
            .ok_or(SamodPeerError::NotConnected)
    }

    /// Creates a document, announces it to the relay and waits until the relay has
    /// acknowledged our heads. Returns the bs58check document id.
    pub async fn create(
        &self,
        init: impl FnOnce(&mut Transaction<'_>),
    ) -> Result<String, SamodPeerError> {
        Ok(self.create_doc(init).await?.id())
    }

    /// Like [`create`](Self::create) but returns the document.
    pub async fn create_doc(
        &self,
        init: impl FnOnce(&mut Transaction<'_>),
    ) -> Result<SamodDoc, SamodPeerError> {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        init(&mut tx);
        tx.commit();
        let handle = self.repo.create(doc).await?;
        let doc = self.wrap(handle);
        doc.wait_synced().await?;
        Ok(doc)
    }

    /// Asks the relay for a document; `Ok(None)` when it answers `doc-unavailable`.
    pub async fn find(&self, doc_id: &str) -> Result<Option<SamodDoc>, SamodPeerError> {
        let id: DocumentId = doc_id
            .parse()
            .map_err(|_| SamodPeerError::DocumentId(doc_id.to_owned()))?;
        let found = tokio::time::timeout(self.timeout, self.repo.find(id))
            .await
            .map_err(|_| SamodPeerError::Timeout {
                what: format!("finding {doc_id}"),
                limit: self.timeout,
            })??;
        Ok(found.map(|handle| self.wrap(handle)))
    }

    fn wrap(&self, handle: DocHandle) -> SamodDoc {
        SamodDoc {
            handle,
            dialer: self.dialer.clone(),
            timeout: self.timeout,
        }
    }

    /// Closes the connection and stops the repo.
    pub async fn shutdown(self) {
        self.dialer.close();
        let _ = tokio::time::timeout(self.timeout, self.repo.stop()).await;
    }
}

/// One document held by a [`SamodPeer`].
#[derive(Clone)]
pub struct SamodDoc {
    handle: DocHandle,
    dialer: DialerHandle<Infallible>,
    timeout: Duration,
}

impl SamodDoc {
    /// The bs58check id (no `automerge:` prefix).
    pub fn id(&self) -> String {
        self.handle.document_id().to_string()
    }

    /// The underlying samod handle.
    pub fn handle(&self) -> &DocHandle {
        &self.handle
    }

    /// Runs `f` on the document (on samod's document task).
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Automerge) -> R + Send + 'static,
    ) -> Result<R, SamodPeerError> {
        Ok(self.handle.with_document_async(move |d| f(d)).await?)
    }

    /// The document as JSON (Text objects become strings).
    pub async fn json(&self) -> Result<serde_json::Value, SamodPeerError> {
        Ok(self
            .read(|d| serde_json::to_value(AutoSerde::from(d)))
            .await??)
    }

    /// Applies a change locally; it syncs to the relay in the background.
    pub async fn change_local(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) + Send + 'static,
    ) -> Result<(), SamodPeerError> {
        self.handle
            .with_document_async(move |d| {
                let mut tx = d.transaction();
                f(&mut tx);
                tx.commit();
            })
            .await?;
        Ok(())
    }

    /// Applies a change and waits until the relay has acknowledged it.
    pub async fn change(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) + Send + 'static,
    ) -> Result<(), SamodPeerError> {
        self.change_local(f).await?;
        self.wait_synced().await
    }

    /// Waits until the relay's sync messages show it has all our heads.
    pub async fn wait_synced(&self) -> Result<(), SamodPeerError> {
        let conn = self
            .dialer
            .connection_id()
            .ok_or(SamodPeerError::NotConnected)?;
        tokio::time::timeout(self.timeout, self.handle.they_have_our_changes(conn))
            .await
            .map_err(|_| SamodPeerError::Timeout {
                what: format!("relay acknowledging {}", self.id()),
                limit: self.timeout,
            })
    }

    /// Waits until the JSON view satisfies `pred`; returns that JSON.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, SamodPeerError> {
        self.wait_for_within(self.timeout, pred).await
    }

    /// [`wait_for`](Self::wait_for) with an explicit time limit.
    pub async fn wait_for_within(
        &self,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, SamodPeerError> {
        let deadline = tokio::time::Instant::now() + limit;
        // Subscribe before the first look so no change slips between look and wait.
        let mut changes = self.handle.changes();
        loop {
            let value = self.json().await?;
            if pred(&value) {
                return Ok(value);
            }
            match tokio::time::timeout_at(deadline, changes.next()).await {
                Ok(Some(_)) => {}
                Ok(None) => return Err(SamodPeerError::Closed(self.id())),
                Err(_) => {
                    return Err(SamodPeerError::Timeout {
                        what: format!("{}: condition (last value {value})", self.id()),
                        limit,
                    })
                }
            }
        }
    }
}
