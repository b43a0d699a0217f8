//! The websocket endpoint: one reader and one writer per socket around the engine host.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_core::engine::Direction;
use cairn_core::runtime::Outbound;
use cairn_core::wire::Message as WireMessage;
use futures_util::{Sink, SinkExt, StreamExt};

use crate::metrics::Metrics;
use crate::AppState;

/// Per-socket buffers: tungstenite's 128 KiB defaults would cost ~100 MB at 400 sockets.
const SOCKET_BUFFER: usize = 16 * 1024;

pub(crate) async fn upgrade(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    if !state.config.open {
        state.metrics.refused.inc();
        return (
            StatusCode::FORBIDDEN,
            "this relay has no membership configured yet",
        )
            .into_response();
    }
    if state.sockets.load(Ordering::Relaxed) >= state.config.max_connections {
        state.metrics.refused.inc();
        return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached").into_response();
    }
    let max_frame = state.config.max_document_bytes + 64 * 1024;
    ws.read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_write_buffer_size(max_frame + 1024 * 1024)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| serve_socket(socket, state))
}

async fn serve_socket(socket: WebSocket, state: AppState) {
    state.sockets.fetch_add(1, Ordering::Relaxed);
    if let Ok(handle) = state.host.open(Direction::Incoming, None).await {
        let timeouts = Timeouts {
            silence: state.config.socket_timeout,
            send: state.config.send_timeout,
        };
        pump(socket, handle, timeouts, &state.metrics).await;
    }
    state.sockets.fetch_sub(1, Ordering::Relaxed);
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
    outbound: &mut cairn_core::runtime::OutboundQueue,
    timeouts: Timeouts,
    conn: cairn_core::ids::ConnectionId,
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
    handle: cairn_core::runtime::ConnectionHandle,
    timeouts: Timeouts,
    metrics: &Metrics,
) {
    let cairn_core::runtime::ConnectionHandle {
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
    let read_error = tokio::select! {
        _ = writer => None,
        e = reader => e,
    };
    if let Some(e) = read_error {
        // tungstenite refuses a frame over the size limit (or a broken one) before the
        // engine sees it, and would drop the socket silently; tell the peer why, as the
        // engine does for bad messages. A peer that has gone away just fails the send.
        tracing::debug!(%conn, error = %e, "websocket read failed");
        let frame = WireMessage::Error {
            message: "protocol violation: frame too large or not a valid websocket frame".into(),
        }
        .encode();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            sink.send(Message::Binary(frame.into())).await?;
            sink.send(Message::Close(None)).await
        })
        .await;
    }
    input.closed().await;
}
