//! Access decisions per (peer, document): where relay-authoritative membership plugs in.
//!
//! The engine asks on every document message, in both directions: a `sync` or `request`
//! (read, and write when it carries changes), every sync message it is about to send
//! (read), an ephemeral message's sender and each of its recipients (read), and whether a
//! peer may be connected at all when its handshake completes. Decisions take the engine's
//! `now` (guests expire) and must not do IO: an implementation answers from memory, for
//! example from a membership snapshot that the host keeps up to date, and the host calls
//! [`Engine::revalidate_access`](super::Engine::revalidate_access) after every change that
//! reduces someone's access so that open connections follow at once.

use std::collections::{BTreeMap, BTreeSet};

use super::connection::{Conn, ConnState};
use super::{CloseReason, Engine, Rejection};
use crate::ids::{ConnectionId, DocumentId, PeerId};
use crate::time::Timestamp;

/// What a peer is trying to do with a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Receive its contents or its ephemeral messages.
    Read,
    /// Deliver changes to it.
    Write,
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo<'a> {
    /// The `senderId` from the handshake.
    pub peer_id: &'a PeerId,
    /// The identity the host authenticated for this socket, if any.
    pub identity: Option<&'a str>,
}

/// Decides, for every message, whether a peer may read or write a document.
///
/// - A peer that may not read gets `doc-unavailable`, the same answer as for a missing
///   document, and none of the document's ephemeral messages.
/// - A peer that may read but not write is served as a reader: the changes it sends are
///   dropped (never applied, stored or forwarded), it is not told the document is
///   unavailable, and the exchange goes quiet (see `document.rs`).
/// - A peer whose connection is no longer allowed is closed with `error` "access revoked".
pub trait Access: Send {
    /// Whether `peer` may do `op` on `doc` at `now` (the host's monotonic time, as passed
    /// to the engine's inputs).
    fn allows(&self, peer: &PeerInfo<'_>, doc: &DocumentId, op: Operation, now: Timestamp) -> bool;

    /// Whether `peer` may be connected at all at `now` (a revoked device or a removed
    /// member may not). Checked when a connection completes its handshake and by
    /// [`Engine::revalidate_access`](super::Engine::revalidate_access). Default: yes.
    fn connection_allowed(&self, peer: &PeerInfo<'_>, now: Timestamp) -> bool {
        let _ = (peer, now);
        true
    }

    /// The engine learnt that `doc` now takes `bytes` in the store: after a write or a
    /// compaction completed, when it loaded, and 0 once forgotten. For a policy that keeps
    /// per-group byte quotas. Default: ignored.
    fn document_stored(&self, doc: &DocumentId, bytes: u64) {
        let _ = (doc, bytes);
    }

    /// Whether `doc` may take about `adding` more bytes (a sync message carrying changes
    /// of that size). Checked where `max_document_bytes` is; a refusal answers that peer
    /// `doc-unavailable` with [`Rejection::GroupQuota`] and stores nothing of the message.
    /// Default: yes.
    fn may_grow(&self, doc: &DocumentId, adding: u64) -> bool {
        let _ = (doc, adding);
        true
    }
}

/// Everyone may do everything (development mode and devices).
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenAccess;

impl Access for OpenAccess {
    fn allows(&self, _: &PeerInfo<'_>, _: &DocumentId, _: Operation, _: Timestamp) -> bool {
        true
    }
}

impl Engine {
    /// Whether the peer on `conn` may do `op` on `doc` at `now`; never for a connection
    /// that is gone or has not finished its handshake.
    pub(super) fn may(
        &self,
        conn: ConnectionId,
        doc: &DocumentId,
        op: Operation,
        now: Timestamp,
    ) -> bool {
        peer_may(&*self.access, &self.conns, conn, doc, op, now)
    }

    /// Re-checks every open connection against the access policy, for a host whose policy
    /// just changed (a member removed or suspended, a role changed, a device revoked, a
    /// guest expired). Returns the connections it closed.
    ///
    /// - A connection whose peer may no longer be connected
    ///   ([`Access::connection_allowed`]) gets `error` "access revoked" and is closed
    ///   ([`CloseReason::AccessRevoked`]); the engine ignores anything it sends afterwards.
    /// - For every other connection, each document it may no longer read is dropped from
    ///   it: its sync state is forgotten, it is sent `doc-unavailable`, and it receives no
    ///   further changes or ephemeral messages of that document
    ///   ([`Event::DocumentRejected`](super::Event::DocumentRejected) with
    ///   [`Rejection::Forbidden`]).
    /// - A document it may still read but whose write permission changed switches its sync
    ///   state between read-only and read-write. On the way back to read-write, Automerge
    ///   asks the peer to resend what it sent while read-only (the changes it kept offline
    ///   reach the relay as soon as access allows).
    pub fn revalidate_access(&mut self, now: Timestamp) -> Vec<ConnectionId> {
        let open: Vec<ConnectionId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnState::Open { .. }))
            .map(|(id, _)| *id)
            .collect();
        let mut closed = Vec::new();
        let mut resync = BTreeSet::new();
        for conn in open {
            let allowed = {
                let c = &self.conns[&conn];
                let ConnState::Open { peer } = &c.state else {
                    continue;
                };
                let info = PeerInfo {
                    peer_id: peer,
                    identity: c.identity.as_deref(),
                };
                self.access.connection_allowed(&info, now)
            };
            if !allowed {
                tracing::info!(%conn, "access revoked; closing the connection");
                self.violation(conn, CloseReason::AccessRevoked);
                closed.push(conn);
                continue;
            }
            let docs: Vec<DocumentId> = self.conns[&conn].docs.iter().copied().collect();
            for id in docs {
                if !self.may(conn, &id, Operation::Read, now) {
                    self.drop_reader(conn, id);
                    continue;
                }
                let read_only = !self.may(conn, &id, Operation::Write, now);
                let Some(pd) = self.docs.get_mut(&id).and_then(|d| d.peers.get_mut(&conn)) else {
                    continue;
                };
                if pd.sync.read_only != read_only {
                    pd.sync.set_read_only(read_only);
                    pd.dirty = true;
                    resync.insert(id);
                }
            }
        }
        for id in resync {
            self.maybe_sync(id, now);
        }
        closed
    }

    /// Stops serving `id` to `conn`, which may no longer read it: forgets its sync state
    /// and anything it queued, and answers `doc-unavailable` as for a missing document.
    pub(super) fn drop_reader(&mut self, conn: ConnectionId, id: DocumentId) {
        let Some(peer) = self.peer_of(conn) else {
            return;
        };
        if let Some(doc) = self.docs.get_mut(&id) {
            doc.peers.remove(&conn);
            doc.queued.retain(|q| q.conn != conn);
        }
        tracing::debug!(%conn, doc = %id, "read access withdrawn");
        self.reject(conn, &peer, id, Rejection::Forbidden);
    }
}

/// [`Engine::may`] over borrowed parts of the engine, for loops that hold a document
/// mutably.
pub(super) fn peer_may(
    access: &dyn Access,
    conns: &BTreeMap<ConnectionId, Conn>,
    conn: ConnectionId,
    doc: &DocumentId,
    op: Operation,
    now: Timestamp,
) -> bool {
    let Some(c) = conns.get(&conn) else {
        return false;
    };
    let ConnState::Open { peer } = &c.state else {
        return false;
    };
    let info = PeerInfo {
        peer_id: peer,
        identity: c.identity.as_deref(),
    };
    access.allows(&info, doc, op, now)
}
