//! The accept loop: every TCP connection holds a permit of one cap from accept to close
//! (through a websocket upgrade), request headers must arrive within a timeout, and a
//! shutdown stops accepting and lets connections finish within a bound.
//!
//! Each request carries its TCP peer address as a [`ConnectInfo`] extension: the source
//! address rate limits count by (see [`crate::limits::source_address`]).
//!
//! `axum::serve` had none of these: half-sent requests were held for as long as the peer
//! liked, and silent connections used up the open-files limit until `/metrics` hung.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// TCP connections allowed beyond `--max-connections`: 16. With every websocket slot
/// taken, health probes, `/metrics` scrapes and a refused upgrade's 503 still get through.
pub const PROBE_HEADROOM: usize = 16;

/// Open files kept out of the TCP cap: 256. The store's files (sled's log, snapshots and
/// blobs), the listener, stdio and the runtime's own descriptors; a connection refused at
/// the cap also needs one for the moment between accept and close.
pub const FD_RESERVE: u64 = 256;

/// How long a shutdown waits for connections to close after asking them to: 3 s. In-flight
/// requests are short and websockets are told to close first; a peer that does not
/// finish in time is dropped with the runtime.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// Back-off after `accept` fails (for example with no file descriptors left): 100 ms, so
/// the loop does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Sent to a connection refused at the cap before it is closed, if the socket takes it at
/// once, so a client sees why instead of a bare reset.
const REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The TCP connection cap for `max_connections` websockets with an open-files soft limit
/// of `fd_limit`: `max_connections + PROBE_HEADROOM`, lowered so that it plus
/// [`FD_RESERVE`] fits the limit. Returns (TCP cap, websocket cap).
pub fn fit_caps(max_connections: usize, fd_limit: u64) -> (usize, usize) {
    let wanted = max_connections.saturating_add(PROBE_HEADROOM);
    let room = usize::try_from(fd_limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    if wanted <= room {
        return (wanted, max_connections);
    }
    let tcp = room.max(1);
    let ws = tcp.saturating_sub(PROBE_HEADROOM).max(1);
    (tcp, ws)
}

/// The current open-files soft limit (`None` where it cannot be read).
pub(crate) fn fd_soft_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// The TCP connection cap: one permit per open connection.
#[derive(Clone, Debug)]
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
    cap: usize,
}

impl Gate {
    pub(crate) fn new(cap: usize) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(cap)),
            cap,
        }
    }

    /// Waits until every connection has closed.
    async fn all_closed(&self) {
        let n = u32::try_from(self.cap).unwrap_or(u32::MAX);
        // The semaphore is never closed, so this only waits.
        let _ = self.permits.acquire_many(n).await;
    }
}

/// A TCP stream that holds its connection's permit until it is dropped, wherever it goes
/// (into hyper, then into an upgraded websocket).
struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What the accept loop needs besides the listener.
pub(crate) struct Serving {
    pub(crate) router: Router,
    pub(crate) gate: Gate,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) header_timeout: Duration,
    /// Cancelled to stop accepting and ask every connection to finish.
    pub(crate) stop: CancellationToken,
    /// Built-in TLS (`--tls-cert`), if configured: every connection is TLS.
    pub(crate) tls: Option<TlsAcceptor>,
}

/// One accepted connection's share of the accept loop's state.
struct Connection {
    http: http1::Builder,
    router: Router,
    peer: std::net::SocketAddr,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Connection {
    /// Serves HTTP/1.1 (and upgrades) on `io` until it ends or the relay stops.
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            http,
            router,
            peer,
            stop,
            metrics,
        } = self;
        // Each request carries its TCP peer, the source address rate limits count by.
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn = http
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                metrics.header_timeouts.inc();
                tracing::debug!("request headers did not arrive in time; connection closed");
            } else {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
    }
}

/// The TLS acceptor of `files`: rustls with the ring provider, TLS 1.2 and 1.3, HTTP/1.1
/// by ALPN. Fails with a message naming the file that could not be used.
pub fn tls_acceptor(files: &crate::config::TlsFiles) -> Result<TlsAcceptor, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading the certificate {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("reading the private key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "the certificate {} and key {} do not make a TLS identity: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts until `serving.stop` is cancelled, then waits (at most [`SHUTDOWN_DRAIN`]
/// after `drained` resolves) for every connection to close. `drained` is where the caller
/// closes upgraded websockets, which hyper no longer sees.
pub(crate) async fn serve(
    listener: TcpListener,
    serving: Serving,
    drained: impl std::future::Future<Output = ()>,
) {
    let Serving {
        router,
        gate,
        metrics,
        header_timeout,
        stop,
        tls,
    } = serving;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Per-connection errors (reset before accept) are harmless; running
                    // out of descriptors is not, and retrying at once would spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let Ok(permit) = gate.permits.clone().try_acquire_owned() else {
            // Closed at once so the kernel's backlog keeps moving and the descriptor is
            // back before the next accept.
            metrics.tcp_refused.inc();
            let _ = stream.try_write(REFUSAL);
            drop(stream);
            continue;
        };
        // Every frame is written whole, so Nagle's algorithm only delays: it held a small
        // frame (a cursor, an acknowledgement) behind an unacknowledged one until the
        // phone's delayed ACK, up to 40 ms (the cluster bench's presence p90 was 43 ms
        // with it, against a p50 of 1.4 ms). The client side disables it too.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        metrics.tcp_connections.inc();
        let io = Counted {
            stream,
            _permit: permit,
            open: metrics.tcp_connections.clone(),
        };
        let connection = Connection {
            http: http.clone(),
            router: router.clone(),
            peer,
            stop: stop.clone(),
            metrics: metrics.clone(),
        };
        match &tls {
            None => {
                tokio::spawn(connection.serve(io));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // The handshake counts against the header timeout: a peer that opens
                    // a connection and sends nothing holds a descriptor all the same.
                    match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => connection.serve(tls).await,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            connection.metrics.header_timeouts.inc();
                            tracing::debug!("the TLS handshake did not finish in time");
                        }
                    }
                });
            }
        }
    }
    // New connections are refused from here on.
    drop(listener);
    drained.await;
    if tokio::time::timeout(SHUTDOWN_DRAIN, gate.all_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            open = gate.cap - gate.permits.available_permits(),
            "connections still open after the shutdown drain; dropping them"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_open_files_limit() {
        assert_eq!(fit_caps(10_000, 1_048_576), (10_016, 10_000));
        // The limit this relay was attacked under: 1,024 open files.
        assert_eq!(fit_caps(10_000, 1024), (768, 752));
        assert_eq!(fit_caps(10, 1024), (26, 10));
        // Nothing left after the reserve: one connection, so health can still answer.
        assert_eq!(fit_caps(10, 100), (1, 1));
    }
}
