//! How the client reaches a relay: a [`Transport`] dials, a [`Connection`] carries binary
//! frames. A phone app hands in its platform websocket (platform TLS, proxies, background
//! rules); [`TungsteniteTransport`] serves tests, desktop and servers.
//!
//! Every dial presents the device's [`Credential`] (when it has one) as
//! `Authorization: Bearer <token>`; a transport that cannot set headers (a browser-like
//! websocket) may append it as the `token` query parameter instead. The relay answers a
//! missing, wrong or revoked credential with 401 on the upgrade, which the transport
//! reports as [`TransportError::Rejected`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderMap, HeaderValue};
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig};

use crate::membership::Credential;

/// Why dialling or sending failed.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The relay could not be reached (DNS, TCP, TLS): offline, or a wrong URL.
    #[error("the relay is unreachable: {reason}")]
    Unreachable {
        /// What the platform said (no content, no tokens).
        reason: String,
    },
    /// The relay refused the websocket upgrade: 401 (no valid credential: missing, wrong,
    /// rotated or revoked), 403 (the device may not connect), 429 (too many attempts).
    #[error("the relay refused the connection with HTTP status {status}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The relay's `Retry-After` (429), if it sent one in seconds.
        retry_after: Option<Duration>,
    },
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
}

/// What arrived on a [`Connection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// A binary frame.
    Frame(Vec<u8>),
    /// The answer to one of our pings (or any other sign of life the platform reports):
    /// it keeps the connection alive without carrying data.
    Pong,
}

/// One open connection carrying binary frames, in order and without loss (a websocket).
///
/// `send`, `recv` and `ping` are called concurrently from several tasks, so all take
/// `&self`.
pub trait Connection: Send + Sync {
    /// Sends one binary frame. An error means the connection is unusable.
    fn send(&self, frame: Vec<u8>) -> BoxFuture<'_, Result<(), TransportError>>;
    /// The next binary frame or pong, or `None` once the connection has closed.
    fn recv(&self) -> BoxFuture<'_, Option<Received>>;
    /// Sends a ping (a websocket ping frame, or the platform's own keepalive); its pong
    /// comes back through `recv` as [`Received::Pong`]. The client pings every
    /// [`ClientConfig::keepalive_interval`](super::ClientConfig::keepalive_interval) and
    /// closes a connection on which nothing arrived for the keepalive timeout, so a
    /// transport must report pongs.
    fn ping(&self) -> BoxFuture<'_, Result<(), TransportError>>;
    /// Closes the connection (best effort).
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Opens connections to a relay.
pub trait Transport: Send + Sync {
    /// Dials `url` (e.g. `wss://relay.example.org/`), presenting `credential` on the upgrade
    /// (`Authorization: Bearer`, or the `token` query parameter where headers cannot be
    /// set). A refused upgrade is [`TransportError::Rejected`] with the HTTP status, so the
    /// client can tell a bad credential (stop and tell the app) from a network failure
    /// (retry).
    fn connect<'a>(
        &'a self,
        url: &'a str,
        credential: Option<&'a Credential>,
    ) -> BoxFuture<'a, Result<Box<dyn Connection>, TransportError>>;
}

/// The `Retry-After` header in seconds (the relay's form; an HTTP date is not used by it
/// and reads as absent).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The `Authorization` header value for a credential, marked sensitive so no HTTP library
/// prints it.
pub(crate) fn bearer(credential: &Credential) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", credential.as_str())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The tokio-tungstenite transport, with buffers sized for the engine's frame limit.
#[derive(Clone, Debug)]
pub struct TungsteniteTransport {
    max_frame_bytes: usize,
}

impl TungsteniteTransport {
    /// A transport accepting frames up to `max_frame_bytes` (use the engine's
    /// `Limits::max_frame_bytes`).
    pub fn new(max_frame_bytes: usize) -> Self {
        TungsteniteTransport { max_frame_bytes }
    }

    fn ws_config(&self) -> WebSocketConfig {
        let max = self.max_frame_bytes;
        // tungstenite's 128 KiB buffers per direction are more than a phone needs; the
        // write buffer is capped so a stalled socket cannot grow without bound.
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            .read_buffer_size(16 * 1024)
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(max + 1024 * 1024)
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct TungsteniteConnection {
    sink: Mutex<SplitSink<Ws, tungstenite::Message>>,
    stream: Mutex<SplitStream<Ws>>,
}

impl Transport for TungsteniteTransport {
    fn connect<'a>(
        &'a self,
        url: &'a str,
        credential: Option<&'a Credential>,
    ) -> BoxFuture<'a, Result<Box<dyn Connection>, TransportError>> {
        Box::pin(async move {
            let mut request =
                url.into_client_request()
                    .map_err(|e| TransportError::Unreachable {
                        reason: e.to_string(),
                    })?;
            if let Some(value) = credential.and_then(bearer) {
                request.headers_mut().insert(header::AUTHORIZATION, value);
            }
            let dial =
                tokio_tungstenite::connect_async_with_config(request, Some(self.ws_config()), true);
            match dial.await {
                Ok((ws, _)) => {
                    let (sink, stream) = ws.split();
                    Ok(Box::new(TungsteniteConnection {
                        sink: Mutex::new(sink),
                        stream: Mutex::new(stream),
                    }) as Box<dyn Connection>)
                }
                Err(tungstenite::Error::Http(response)) => Err(TransportError::Rejected {
                    status: response.status().as_u16(),
                    retry_after: retry_after(response.headers()),
                }),
                Err(e) => Err(TransportError::Unreachable {
                    reason: e.to_string(),
                }),
            }
        })
    }
}

impl Connection for TungsteniteConnection {
    fn send(&self, frame: Vec<u8>) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            self.sink
                .lock()
                .await
                .send(tungstenite::Message::Binary(frame.into()))
                .await
                .map_err(|_| TransportError::Closed)
        })
    }

    fn recv(&self) -> BoxFuture<'_, Option<Received>> {
        Box::pin(async move {
            let mut stream = self.stream.lock().await;
            loop {
                match stream.next().await? {
                    Ok(tungstenite::Message::Binary(b)) => {
                        return Some(Received::Frame(b.to_vec()))
                    }
                    // The relay's pings (tungstenite answers them) are signs of life too.
                    Ok(tungstenite::Message::Pong(_) | tungstenite::Message::Ping(_)) => {
                        return Some(Received::Pong)
                    }
                    Ok(tungstenite::Message::Close(_)) | Err(_) => return None,
                    // Text frames are not ours.
                    Ok(_) => {}
                }
            }
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            self.sink
                .lock()
                .await
                .send(tungstenite::Message::Ping(Vec::new().into()))
                .await
                .map_err(|_| TransportError::Closed)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.sink.lock().await.close().await;
        })
    }
}

/// How long closing a connection may take: 2 s. A half-open socket never answers the
/// close; the connection is dropped after this either way.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

async fn close(conn: &dyn Connection) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
}

/// A connection's keepalive settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keepalive {
    /// How often to ping.
    pub(crate) interval: Duration,
    /// Close after this long with nothing received.
    pub(crate) timeout: Duration,
}

/// Pumps one connection to and from the engine until either side closes, `until`
/// completes, or nothing has arrived for the keepalive timeout (then the connection is
/// closed). Pings every keepalive interval. The engine always hears that it closed.
pub(crate) async fn pump(
    conn: Arc<dyn Connection>,
    handle: crate::runtime::ConnectionHandle,
    until: impl std::future::Future<Output = ()>,
    keepalive: Keepalive,
) {
    use crate::runtime::Outbound;
    let crate::runtime::ConnectionHandle {
        input,
        mut outbound,
    } = handle;
    let writer = async {
        while let Some(out) = outbound.recv().await {
            match out {
                Outbound::Frame(f) => {
                    if conn.send(f).await.is_err() {
                        break;
                    }
                }
                Outbound::Close(_) => {
                    conn.close().await;
                    break;
                }
            }
        }
    };
    let last_heard = std::sync::Mutex::new(tokio::time::Instant::now());
    let heard = || *last_heard.lock().unwrap_or_else(|e| e.into_inner());
    let reader = async {
        while let Some(received) = conn.recv().await {
            *last_heard.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
            if let Received::Frame(frame) = received {
                if input.frame(frame).await.is_err() {
                    break;
                }
            }
        }
    };
    let alive = async {
        let mut next_ping = tokio::time::Instant::now() + keepalive.interval;
        loop {
            let silent_until = heard() + keepalive.timeout;
            tokio::time::sleep_until(next_ping.min(silent_until)).await;
            let now = tokio::time::Instant::now();
            if now >= heard() + keepalive.timeout {
                tracing::debug!(
                    silent_ms = keepalive.timeout.as_millis() as u64,
                    "nothing received for the keepalive timeout; closing"
                );
                return;
            }
            if now >= next_ping {
                next_ping = now + keepalive.interval;
                // A ping stuck behind a full send buffer must not hold up the timeout.
                tokio::select! {
                    sent = conn.ping() => if sent.is_err() { return },
                    _ = tokio::time::sleep_until(heard() + keepalive.timeout) => {}
                }
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = alive => close(&*conn).await,
        _ = until => close(&*conn).await,
    }
    input.closed().await;
}
