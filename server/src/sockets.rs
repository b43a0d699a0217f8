//! The live websockets, by device, so that a call that takes access away can close the
//! affected sockets and wait until they are gone before it answers.
//!
//! A socket is registered with its identity before its upgrade is answered (so a socket
//! whose credential is rotated or revoked a moment later is found) and gets its engine
//! connection id once the engine knows it. It is "gone" when its task has ended: its close
//! frame was sent (or could not be) and the TCP connection was dropped. Each socket's
//! `SocketGuard` holds the sending end of a `watch` channel for as long as it lives;
//! waiting on the receiving end ends when the guard is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cairn_sync::ids::{ConnectionId, MemberId};
use cairn_sync::membership::Identity;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a call that took access away waits for its closed sockets to end: 2 s. A
/// socket that keeps its close frame waiting longer is dropped without it.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A registered socket; dropping it unregisters the socket and wakes its waiters.
#[derive(Debug)]
pub(crate) struct SocketGuard {
    sockets: Arc<Sockets>,
    key: u64,
    identity: Option<Identity>,
    /// Cancelled when access is taken away: send `error` and a close frame, then end.
    pub(crate) close: CancellationToken,
    /// Cancelled when the polite close took too long: drop the socket at once.
    pub(crate) abort: CancellationToken,
    /// Dropped with the guard, which is what waiters wait for.
    _alive: watch::Sender<()>,
}

impl SocketGuard {
    /// The identity the socket authenticated as.
    pub(crate) fn identity(&self) -> Option<Identity> {
        self.identity.clone()
    }

    /// Records the engine's id for this socket's connection.
    pub(crate) fn bind(&self, conn: ConnectionId) {
        if let Some(e) = self.sockets.live().get_mut(&self.key) {
            e.conn = Some(conn);
        }
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.sockets.live().remove(&self.key);
    }
}

struct Entry {
    identity: Option<Identity>,
    conn: Option<ConnectionId>,
    close: CancellationToken,
    abort: CancellationToken,
    alive: watch::Receiver<()>,
}

/// Every live socket.
#[derive(Default)]
pub struct Sockets {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets")
            .field("live", &self.live().len())
            .finish()
    }
}

/// Whose sockets to close.
#[derive(Clone, Debug)]
pub(crate) enum Whose {
    /// Every device of a member.
    Member(MemberId),
    /// One device.
    Device(Identity),
}

/// Sockets to wait for (registry keys).
#[derive(Debug, Default)]
pub(crate) struct Closing(Vec<(u64, Option<ConnectionId>)>);

impl Closing {
    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many are not among `conns`.
    pub(crate) fn outside(&self, conns: &[ConnectionId]) -> usize {
        self.0
            .iter()
            .filter(|(_, c)| !c.is_some_and(|c| conns.contains(&c)))
            .count()
    }
}

impl Sockets {
    fn live(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a socket of `identity` (`None` in `--open` mode).
    pub(crate) fn insert(self: &Arc<Self>, identity: Option<Identity>) -> SocketGuard {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let identity_copy = identity.clone();
        let (tx, rx) = watch::channel(());
        let close = CancellationToken::new();
        let abort = CancellationToken::new();
        self.live().insert(
            key,
            Entry {
                identity,
                conn: None,
                close: close.clone(),
                abort: abort.clone(),
                alive: rx,
            },
        );
        SocketGuard {
            sockets: self.clone(),
            key,
            identity: identity_copy,
            close,
            abort,
            _alive: tx,
        }
    }

    /// Asks the sockets of `whose` to close (with `error` "access revoked"), except those
    /// of the engine connections in `closing`: the engine is closing them with its own
    /// `error`, and a second one could overtake its close.
    pub(crate) fn revoke(&self, whose: &Whose, closing: &[ConnectionId]) -> Closing {
        let live = self.live();
        Closing(
            live.iter()
                .filter(|(_, e)| match (whose, &e.identity) {
                    (Whose::Member(m), Some(id)) => &id.member == m,
                    (Whose::Device(d), Some(id)) => id == d,
                    _ => false,
                })
                .map(|(key, e)| {
                    if !e.conn.is_some_and(|c| closing.contains(&c)) {
                        e.close.cancel();
                    }
                    (*key, e.conn)
                })
                .collect(),
        )
    }

    /// The sockets of engine connections (that the engine is closing).
    pub(crate) fn of_connections(&self, conns: &[ConnectionId]) -> Closing {
        let live = self.live();
        Closing(
            live.iter()
                .filter(|(_, e)| e.conn.is_some_and(|c| conns.contains(&c)))
                .map(|(key, e)| (*key, e.conn))
                .collect(),
        )
    }

    /// Both sets, each socket once.
    pub(crate) fn union(mut a: Closing, b: Closing) -> Closing {
        a.0.extend(b.0);
        a.0.sort_unstable_by_key(|(key, _)| *key);
        a.0.dedup_by_key(|(key, _)| *key);
        a
    }

    /// Waits until each socket in `closing` has ended, at most [`CLOSE_WAIT`]; those still
    /// alive then are dropped without a close handshake and waited for again (dropping is
    /// immediate once their task runs). Returns how many had to be dropped.
    pub(crate) async fn wait_closed(&self, closing: &Closing) -> usize {
        let waiting: Vec<(u64, watch::Receiver<()>)> = {
            let live = self.live();
            closing
                .0
                .iter()
                .filter_map(|(k, _)| live.get(k).map(|e| (*k, e.alive.clone())))
                .collect()
        };
        let all =
            || futures_util::future::join_all(waiting.iter().map(|(_, rx)| ended(rx.clone())));
        if waiting.is_empty() || tokio::time::timeout(CLOSE_WAIT, all()).await.is_ok() {
            return 0;
        }
        let mut aborted = 0;
        for (key, _) in &waiting {
            if let Some(e) = self.live().get(key) {
                e.abort.cancel();
                aborted += 1;
            }
        }
        tracing::warn!(
            aborted,
            "sockets did not close within the wait; dropped them"
        );
        if tokio::time::timeout(CLOSE_WAIT, all()).await.is_err() {
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

/// Resolves when the socket's guard has been dropped.
async fn ended(mut rx: watch::Receiver<()>) {
    while rx.changed().await.is_ok() {}
}
