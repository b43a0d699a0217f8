//! The websocket endpoint: the credential check before the upgrade, then one reader and
//! one writer per socket around the engine host.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cairn_sync::engine::Direction;
use cairn_sync::runtime::Outbound;
use cairn_sync::wire::Message as WireMessage;
use futures_util::{Sink, SinkExt, StreamExt};

use crate::api::ApiError;
use crate::auth::{authenticate, presented_token, Source};
use crate::metrics::Metrics;
use crate::sockets::SocketGuard;
use crate::AppState;

/// Per-socket buffers: tungstenite's 128 KiB defaults would cost ~100 MB at 400 sockets.
const SOCKET_BUFFER: usize = 16 * 1024;

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    Source(source): Source,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    let guard = if state.config.open {
        state.sockets.insert(None)
    } else {
        match admit(&state, source, &headers, &uri) {
            Ok(guard) => guard,
            Err(refusal) => {
                state.metrics.refused.inc();
                return refusal.into_response();
            }
        }
    };
    if state.socket_count.load(Ordering::Relaxed) >= state.config.max_connections {
        state.metrics.refused.inc();
        return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached").into_response();
    }
    let max_frame = state.config.max_document_bytes + 64 * 1024;
    ws.read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_write_buffer_size(max_frame + 1024 * 1024)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| serve_socket(socket, state, guard))
}

/// The checks before a websocket upgrade in membership mode: the source's upgrade rate,
/// its failed credentials, the credential, then the device's upgrade rate. Registers the
/// socket under its identity.
fn admit(
    state: &AppState,
    source: std::net::IpAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<SocketGuard, ApiError> {
    let members = state.members()?;
    members
        .limiters
        .upgrade_from(source)
        .map_err(|l| state.limited(l))?;
    let token = presented_token(headers, uri);
    let identity = authenticate(state, source, token.as_deref())?;
    members
        .limiters
        .upgrade_by(&identity.to_string())
        .map_err(|l| state.limited(l))?;
    let guard = state.sockets.insert(Some(identity.clone()));
    // Checked again once registered: a rotation or revocation committed after the first
    // check closes the sockets it finds registered, and this one is registered now.
    let still = token
        .as_deref()
        .and_then(|t| members.membership.authenticate(t).ok());
    if still.as_ref() != Some(&identity) {
        state.metrics.auth_failures.inc();
        return Err(ApiError::unauthorized("the credential was revoked"));
    }
    Ok(guard)
}

async fn serve_socket(socket: WebSocket, state: AppState, guard: SocketGuard) {
    state.socket_count.fetch_add(1, Ordering::Relaxed);
    let peer = guard.identity().map(|id| id.to_string());
    if let Ok(handle) = state.host.open(Direction::Incoming, peer).await {
        let input = handle.input.clone();
        guard.bind(input.conn);
        let timeouts = Timeouts {
            silence: state.config.socket_timeout,
            send: state.config.send_timeout,
        };
        // Dropping the pump drops the socket: that is the abort past the close wait.
        let aborted = tokio::select! {
            _ = pump(socket, handle, timeouts, &state.metrics, &guard.close) => false,
            _ = guard.abort.cancelled() => true,
        };
        if aborted {
            input.closed().await;
        }
    }
    state.socket_count.fetch_sub(1, Ordering::Relaxed);
    // The guard goes last: whoever waits for this socket to end wakes after the socket
    // itself is dropped and no longer counted.
    drop(guard);
}

/// The `error` message a socket whose access was taken away gets before its close: the
/// engine's words for the same event.
const ACCESS_REVOKED: &str = "access revoked";

/// How a socket's pump ended.
enum End {
    /// The writer ended: the engine closed the connection, or the socket failed.
    Written,
    /// The peer closed, or went silent.
    Read,
    /// The peer sent something that is not a valid frame.
    ReadFailed(axum::Error),
    /// The relay took the socket's access away.
    Revoked,
}

/// The socket's time limits.
#[derive(Clone, Copy)]
struct Timeouts {
    /// Silence (no frame, no pong) before the socket is closed; pings go out at a third.
    silence: Duration,
    /// Longest a frame may wait for the socket to take it.
    send: Duration,
}

/// Why a send did not complete.
#[derive(Debug, PartialEq, Eq)]
enum SendFailed {
    /// The socket took nothing for the whole send timeout.
    TimedOut,
    /// The socket is closed or broken.
    Closed,
}

/// Sends one message, waiting at most `timeout` for the socket to take it.
async fn send_within<S>(sink: &mut S, msg: Message, timeout: Duration) -> Result<(), SendFailed>
where
    S: Sink<Message> + Unpin,
{
    match tokio::time::timeout(timeout, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendFailed::Closed),
        Err(_) => Err(SendFailed::TimedOut),
    }
}

/// Writes queued frames (and pings) to the socket until the queue ends, the socket fails,
/// or it takes nothing for a whole send timeout. Returns how it ended.
async fn write<S>(
    sink: &mut S,
    outbound: &mut cairn_sync::runtime::OutboundQueue,
    timeouts: Timeouts,
    conn: cairn_sync::ids::ConnectionId,
) -> Result<(), SendFailed>
where
    S: Sink<Message> + Unpin,
{
    let mut ping = tokio::time::interval(timeouts.silence / 3);
    ping.tick().await;
    loop {
        tokio::select! {
            out = outbound.recv() => match out {
                Some(Outbound::Frame(f)) => {
                    tracing::trace!(%conn, bytes = f.len(), "frame sent");
                    send_within(sink, Message::Binary(f.into()), timeouts.send).await?;
                }
                Some(Outbound::Close(_)) | None => {
                    return send_within(sink, Message::Close(None), timeouts.send).await;
                }
            },
            _ = ping.tick() => {
                send_within(sink, Message::Ping(Default::default()), timeouts.send).await?;
            }
        }
    }
}

async fn pump(
    socket: WebSocket,
    handle: cairn_sync::runtime::ConnectionHandle,
    timeouts: Timeouts,
    metrics: &Metrics,
    revoked: &tokio_util::sync::CancellationToken,
) {
    let cairn_sync::runtime::ConnectionHandle {
        input,
        mut outbound,
    } = handle;
    let conn = input.conn;
    let timeout = timeouts.silence;
    let (mut sink, mut stream) = socket.split();
    let writer = async {
        if let Err(SendFailed::TimedOut) = write(&mut sink, &mut outbound, timeouts, conn).await {
            // Dropping the socket discards what it did not take; the peer resyncs.
            metrics.send_timeouts.inc();
            tracing::debug!(%conn, queued_bytes = outbound.queued_bytes(), "socket took no frame within the send timeout; closing");
        }
    };
    let reader = async {
        loop {
            match tokio::time::timeout(timeout, stream.next()).await {
                Err(_) => {
                    tracing::debug!(%conn, "socket silent too long");
                    return None;
                }
                Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return None,
                Ok(Some(Err(e))) => return Some(e),
                Ok(Some(Ok(Message::Binary(b)))) => {
                    tracing::trace!(%conn, bytes = b.len(), "frame received");
                    if input.frame(b.to_vec()).await.is_err() {
                        return None;
                    }
                }
                // The protocol is binary-only; let the engine answer `error` and close.
                Ok(Some(Ok(Message::Text(t)))) => {
                    if input.frame(t.as_str().as_bytes().to_vec()).await.is_err() {
                        return None;
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    };
    let end = tokio::select! {
        _ = writer => End::Written,
        e = reader => e.map_or(End::Read, End::ReadFailed),
        _ = revoked.cancelled() => End::Revoked,
    };
    let said = match end {
        End::Written | End::Read => None,
        End::ReadFailed(e) => {
            // tungstenite refuses a frame over the size limit (or a broken one) before the
            // engine sees it, and would drop the socket silently; tell the peer why, as the
            // engine does for bad messages.
            tracing::debug!(%conn, error = %e, "websocket read failed");
            Some("protocol violation: frame too large or not a valid websocket frame")
        }
        End::Revoked => {
            tracing::debug!(%conn, "access revoked; closing");
            Some(ACCESS_REVOKED)
        }
    };
    if let Some(message) = said {
        let frame = WireMessage::Error {
            message: message.into(),
        }
        .encode();
        // A peer that has gone away just fails the send.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            sink.send(Message::Binary(frame.into())).await?;
            sink.send(Message::Close(None)).await
        })
        .await;
    }
    input.closed().await;
}
