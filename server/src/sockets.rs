//! The live websockets, by connection and by device, so that a call that takes access away
//! can close the affected sockets and wait until they are gone before it answers.
//!
//! A socket is "gone" when its task has ended: its close frame was sent (or could not be)
//! and the TCP connection was dropped. Each socket holds the sending end of a `watch`
//! channel for as long as it lives; waiting on the receiving end ends when it is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cairn_core::ids::{ConnectionId, MemberId};
use cairn_core::membership::Identity;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a call that took access away waits for each closed socket to end: 2 s. A
/// socket that keeps the peer's close frame waiting longer is dropped without it.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What a live socket's task watches.
#[derive(Debug)]
pub(crate) struct SocketGuard {
    /// Cancelled when access is taken away: send `error` and a close frame, then end.
    pub(crate) close: CancellationToken,
    /// Cancelled when the polite close took too long: drop the socket at once.
    pub(crate) abort: CancellationToken,
    /// Dropped when the task ends, which is what waiters wait for.
    _alive: watch::Sender<()>,
}

struct Entry {
    identity: Option<Identity>,
    close: CancellationToken,
    abort: CancellationToken,
    alive: watch::Receiver<()>,
}

/// Every live socket.
#[derive(Default)]
pub struct Sockets {
    live: Mutex<HashMap<ConnectionId, Entry>>,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets")
            .field("live", &self.live().len())
            .finish()
    }
}

/// Which sockets to close.
#[derive(Clone, Debug)]
pub(crate) enum Whose {
    /// Every device of a member.
    Member(MemberId),
    /// One device.
    Device(Identity),
}

impl Sockets {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, Entry>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a socket; it stays registered until [`Sockets::remove`].
    pub(crate) fn insert(&self, conn: ConnectionId, identity: Option<Identity>) -> SocketGuard {
        let (tx, rx) = watch::channel(());
        let close = CancellationToken::new();
        let abort = CancellationToken::new();
        self.live().insert(
            conn,
            Entry {
                identity,
                close: close.clone(),
                abort: abort.clone(),
                alive: rx,
            },
        );
        SocketGuard {
            close,
            abort,
            _alive: tx,
        }
    }

    /// Forgets a socket whose task is ending.
    pub(crate) fn remove(&self, conn: ConnectionId) {
        self.live().remove(&conn);
    }

    /// Asks the sockets of `whose` to close (with `error` "access revoked") and returns
    /// their connections.
    pub(crate) fn revoke(&self, whose: &Whose) -> Vec<ConnectionId> {
        let live = self.live();
        live.iter()
            .filter(|(_, e)| match (whose, &e.identity) {
                (Whose::Member(m), Some(id)) => &id.member == m,
                (Whose::Device(d), Some(id)) => id == d,
                _ => false,
            })
            .map(|(conn, e)| {
                e.close.cancel();
                *conn
            })
            .collect()
    }

    /// Waits until each of `conns` has ended, at most [`CLOSE_WAIT`] in all; those still
    /// alive then are dropped without a close handshake, and waited for again (briefly:
    /// dropping is immediate once their task runs). Returns how many had to be aborted.
    pub(crate) async fn wait_closed(&self, conns: &[ConnectionId]) -> usize {
        let waiting: Vec<(ConnectionId, watch::Receiver<()>)> = {
            let live = self.live();
            conns
                .iter()
                .filter_map(|c| live.get(c).map(|e| (*c, e.alive.clone())))
                .collect()
        };
        if waiting.is_empty() {
            return 0;
        }
        let all = futures_util::future::join_all(waiting.iter().map(|(_, rx)| ended(rx.clone())));
        if tokio::time::timeout(CLOSE_WAIT, all).await.is_ok() {
            return 0;
        }
        let mut aborted = 0;
        {
            let live = self.live();
            for (conn, rx) in &waiting {
                if rx.has_changed().is_ok() {
                    if let Some(e) = live.get(conn) {
                        e.abort.cancel();
                        aborted += 1;
                    }
                }
            }
        }
        tracing::warn!(
            aborted,
            "sockets did not close within the wait; dropped them"
        );
        let all = futures_util::future::join_all(waiting.iter().map(|(_, rx)| ended(rx.clone())));
        if tokio::time::timeout(CLOSE_WAIT, all).await.is_err() {
            tracing::error!("dropped sockets did not end; their tasks are stuck");
        }
        aborted
    }

    /// Live sockets.
    pub fn len(&self) -> usize {
        self.live().len()
    }

    /// Whether no socket is live.
    pub fn is_empty(&self) -> bool {
        self.live().is_empty()
    }
}

/// Resolves when the socket's task has dropped its guard.
async fn ended(mut rx: watch::Receiver<()>) {
    while rx.changed().await.is_ok() {}
}
