//! The platform network: the host implements [`PlatformNetwork`] over its own websocket and
//! HTTP stacks (OkHttp or the JDK on Android, URLSession on iOS), so TLS, proxies and
//! background rules are the platform's. Every host call returns at once; outcomes come
//! back through the Rust objects [`SocketEvents`] and [`HttpReply`], from any host thread,
//! before or after the call that handed them out has returned.
//!
//! `HostTransport` adapts it to the client's `Transport`/`Connection` and
//! `HttpTransport`. Frames and bodies are never logged; a frame or body larger than the
//! engine would accept is a failure, not something to buffer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cairn_sync::client::{
    Connection, HttpRequest, HttpResponse, HttpTransport, Received, Transport, TransportError,
    MAX_RESPONSE_BYTES,
};
use cairn_sync::engine::Limits;
use cairn_sync::membership::Credential;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

/// How long a dial may wait for the host to report `opened`, `refused` or `unreachable`
/// (the client has no dial timeout of its own; a host that never answers must not hang
/// the relay's connection loop).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The host's network: a websocket per relay connection and one-shot HTTP requests for
/// the membership API.
#[uniffi::export(with_foreign)]
pub trait PlatformNetwork: Send + Sync {
    /// Opens a websocket to `url` (ws:// or wss://), sending `Authorization: Bearer
    /// <bearer>` on the upgrade when `bearer` is given. Returns at once; reports through
    /// `events`: `opened()` once upgraded, or `refused(status, retry_after_secs)` when the
    /// server answered the upgrade with an HTTP status (401, 403, 429…), or
    /// `unreachable(reason)`; then `frame(bytes)` per binary message (whole messages only),
    /// `pong()` per pong, and `closed()` once.
    fn open_socket(
        &self,
        url: String,
        bearer: Option<String>,
        events: Arc<SocketEvents>,
    ) -> Arc<dyn PlatformSocket>;

    /// Sends one HTTP request. Returns at once; reports through `reply`:
    /// `respond(status, retry_after_secs, body)` for any HTTP answer (errors included) or
    /// `unreachable(reason)`. A JSON body goes with `Content-Type: application/json`.
    fn http_request(&self, request: NetworkRequest, reply: Arc<HttpReply>);
}

/// One websocket the host opened.
#[uniffi::export(with_foreign)]
pub trait PlatformSocket: Send + Sync {
    /// Sends one binary message; the host queues sends in order.
    fn send(&self, frame: Vec<u8>);
    /// Sends a websocket ping; the host reports the answer with `SocketEvents.pong()`. May
    /// do nothing where the platform pings by itself (then report its pongs, or any sign
    /// of life, as `pong()`).
    fn ping(&self);
    /// Closes the socket (idempotent). Not `close`: the generated Kotlin class is
    /// `AutoCloseable`, whose `close()` releases the Rust handle.
    fn disconnect(&self);
}

/// One HTTP request of the membership API.
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
pub struct NetworkRequest {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: String,
    /// The whole URL.
    pub url: String,
    /// The device credential, for `Authorization: Bearer <bearer>`.
    pub bearer: Option<String>,
    /// A JSON body, sent with `Content-Type: application/json`.
    pub json_body: Option<Vec<u8>>,
}

impl std::fmt::Debug for NetworkRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credential, the body, or a URL that may hold an invite code.
        f.debug_struct("NetworkRequest")
            .field("method", &self.method)
            .field("authenticated", &self.bearer.is_some())
            .field("json_bytes", &self.json_body.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type Opened = oneshot::Sender<Result<(), TransportError>>;

/// Where a socket's events go: the dial's outcome once, then frames and pongs in order.
/// The host calls it from any thread; calls after `closed()` are ignored.
#[derive(uniffi::Object)]
pub struct SocketEvents {
    opened: Mutex<Option<Opened>>,
    received: Mutex<Option<mpsc::UnboundedSender<Received>>>,
    max_frame_bytes: usize,
}

impl std::fmt::Debug for SocketEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketEvents").finish_non_exhaustive()
    }
}

impl SocketEvents {
    /// Events for one dial, and the receiving ends: the dial's outcome and the stream.
    fn new(
        max_frame_bytes: usize,
    ) -> (
        Arc<SocketEvents>,
        oneshot::Receiver<Result<(), TransportError>>,
        mpsc::UnboundedReceiver<Received>,
    ) {
        let (opened_tx, opened_rx) = oneshot::channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let events = Arc::new(SocketEvents {
            opened: Mutex::new(Some(opened_tx)),
            received: Mutex::new(Some(tx)),
            max_frame_bytes,
        });
        (events, opened_rx, rx)
    }

    /// Reports the dial's outcome (the first report wins).
    fn settle(&self, outcome: Result<(), TransportError>) -> bool {
        let sender = lock(&self.opened).take();
        match sender {
            Some(sender) => {
                let _ = sender.send(outcome);
                true
            }
            None => false,
        }
    }

    /// Ends the stream: `recv` drains what arrived, then reads `None`.
    fn end(&self) {
        lock(&self.received).take();
    }

    fn deliver(&self, item: Received) {
        if let Some(tx) = lock(&self.received).as_ref() {
            let _ = tx.send(item);
        }
    }
}

#[uniffi::export]
impl SocketEvents {
    /// The websocket is open.
    pub fn opened(&self) {
        self.settle(Ok(()));
    }

    /// The server answered the upgrade with this HTTP status (and `Retry-After`, in
    /// seconds, if it sent one).
    pub fn refused(&self, status: u16, retry_after_secs: Option<u64>) {
        let refused = TransportError::Rejected {
            status,
            retry_after: retry_after_secs.map(Duration::from_secs),
        };
        if !self.settle(Err(refused)) {
            self.end();
        }
    }

    /// The server could not be reached (DNS, TCP, TLS), or the socket failed.
    pub fn unreachable(&self, reason: String) {
        if !self.settle(Err(TransportError::Unreachable { reason })) {
            self.end();
        }
    }

    /// One whole binary message. One larger than the engine accepts ends the connection.
    pub fn frame(&self, bytes: Vec<u8>) {
        if bytes.len() > self.max_frame_bytes {
            self.end();
        } else {
            self.deliver(Received::Frame(bytes));
        }
    }

    /// A pong, or any other sign of life.
    pub fn pong(&self) {
        self.deliver(Received::Pong);
    }

    /// The socket has closed (by either side).
    pub fn closed(&self) {
        self.settle(Err(TransportError::Unreachable {
            reason: "closed before it opened".to_owned(),
        }));
        self.end();
    }
}

type Replied = oneshot::Sender<Result<HttpResponse, TransportError>>;

/// Where one HTTP request's outcome goes. The first answer counts; releasing it unanswered
/// counts as unreachable.
#[derive(uniffi::Object)]
pub struct HttpReply {
    reply: Mutex<Option<Replied>>,
    max_body_bytes: usize,
}

impl std::fmt::Debug for HttpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpReply").finish_non_exhaustive()
    }
}

impl HttpReply {
    fn answer(&self, outcome: Result<HttpResponse, TransportError>) {
        if let Some(reply) = lock(&self.reply).take() {
            let _ = reply.send(outcome);
        }
    }
}

#[uniffi::export]
impl HttpReply {
    /// The server's answer (any status): `Retry-After` in seconds if it sent one, and the
    /// body (empty for none). A body larger than Cairn accepts is a failure.
    pub fn respond(&self, status: u16, retry_after_secs: Option<u64>, body: Vec<u8>) {
        if body.len() > self.max_body_bytes {
            self.answer(Err(TransportError::Unreachable {
                reason: format!("a response of {} bytes is too large", body.len()),
            }));
        } else {
            self.answer(Ok(HttpResponse {
                status,
                retry_after: retry_after_secs.map(Duration::from_secs),
                body,
            }));
        }
    }

    /// No answer (no network, DNS, TLS, a dropped connection).
    pub fn unreachable(&self, reason: String) {
        self.answer(Err(TransportError::Unreachable { reason }));
    }
}

/// The host's network as the client's transports.
pub(crate) struct HostTransport {
    network: Arc<dyn PlatformNetwork>,
    max_frame_bytes: usize,
    max_body_bytes: usize,
}

impl HostTransport {
    /// With the engine's frame limit and the client's response limit.
    pub(crate) fn new(network: Arc<dyn PlatformNetwork>) -> HostTransport {
        HostTransport {
            network,
            max_frame_bytes: Limits::default().max_frame_bytes,
            max_body_bytes: MAX_RESPONSE_BYTES,
        }
    }
}

/// One open host websocket.
struct HostConnection {
    socket: Arc<dyn PlatformSocket>,
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    closed: AtomicBool,
}

impl HostConnection {
    /// Closes the host socket once.
    fn close_socket(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            crate::host(|| self.socket.disconnect());
        }
    }

    fn usable(&self) -> Result<(), TransportError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(TransportError::Closed)
        } else {
            Ok(())
        }
    }
}

impl Drop for HostConnection {
    fn drop(&mut self) {
        self.close_socket();
    }
}

impl Connection for HostConnection {
    fn send(&self, frame: Vec<u8>) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            self.usable()?;
            crate::host(|| self.socket.send(frame)).ok_or(TransportError::Closed)
        })
    }

    fn recv(&self) -> BoxFuture<'_, Option<Received>> {
        Box::pin(async move {
            let next = self.received.lock().await.recv().await;
            if next.is_none() {
                self.close_socket();
            }
            next
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            self.usable()?;
            crate::host(|| self.socket.ping()).ok_or(TransportError::Closed)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.close_socket() })
    }
}

impl Transport for HostTransport {
    fn connect<'a>(
        &'a self,
        url: &'a str,
        credential: Option<&'a Credential>,
    ) -> BoxFuture<'a, Result<Box<dyn Connection>, TransportError>> {
        Box::pin(async move {
            let (events, opened, received) = SocketEvents::new(self.max_frame_bytes);
            let bearer = credential.map(|c| c.as_str().to_owned());
            let socket = crate::host(|| self.network.open_socket(url.to_owned(), bearer, events))
                .ok_or_else(|| TransportError::Unreachable {
                reason: "the platform failed to open a socket".to_owned(),
            })?;
            let connection = HostConnection {
                socket,
                received: tokio::sync::Mutex::new(received),
                closed: AtomicBool::new(false),
            };
            // On any failure `connection` drops here, closing the host socket.
            match tokio::time::timeout(DIAL_TIMEOUT, opened).await {
                Ok(Ok(Ok(()))) => Ok(Box::new(connection) as Box<dyn Connection>),
                Ok(Ok(Err(e))) => Err(e),
                Ok(Err(_)) => Err(TransportError::Unreachable {
                    reason: "the platform released the socket without an answer".to_owned(),
                }),
                Err(_) => Err(TransportError::Unreachable {
                    reason: "the platform did not open the socket in time".to_owned(),
                }),
            }
        })
    }
}

impl HttpTransport for HostTransport {
    fn request(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let reply = Arc::new(HttpReply {
                reply: Mutex::new(Some(tx)),
                max_body_bytes: self.max_body_bytes,
            });
            let request = NetworkRequest {
                method: request.method.as_str().to_owned(),
                url: request.url,
                bearer: request.bearer.map(|c| c.as_str().to_owned()),
                json_body: request.json,
            };
            if crate::host(|| self.network.http_request(request, reply)).is_none() {
                return Err(TransportError::Unreachable {
                    reason: "the platform failed to send the request".to_owned(),
                });
            }
            rx.await.unwrap_or_else(|_| {
                Err(TransportError::Unreachable {
                    reason: "the platform released the request without an answer".to_owned(),
                })
            })
        })
    }
}

#[cfg(test)]
mod tests;
