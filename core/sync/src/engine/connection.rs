//! Per-connection state and everything that happens to a connection as a whole: the
//! handshake (identity, protocol version, takeovers), frame dispatch, and closing.
//!
//! What a connection knows is kept here and nowhere else: its identity, its peer id, the
//! documents it has open, its rate budgets and its ephemeral de-duplication table. Per
//! document state lives in `document`.

use std::collections::{BTreeMap, BTreeSet};

use super::budget::Bucket;
use super::{CloseReason, Direction, Engine, Event, Output, PeerInfo, Role, Timer};
use crate::ids::{ConnectionId, DocumentId, PeerId};
use crate::time::Timestamp;
use crate::wire::{Message, PeerMetadata, PROTOCOL_VERSION};

pub(super) enum ConnState {
    Handshaking { since: Timestamp },
    Open { peer: PeerId },
}

pub(super) struct Conn {
    pub(super) direction: Direction,
    /// The identity the host authenticated for this socket, if any.
    pub(super) identity: Option<String>,
    /// The peer id we present on this connection, when not the engine's own.
    pub(super) local_peer: Option<PeerId>,
    pub(super) state: ConnState,
    /// Documents this connection has open (it is in their `peers` or `queued`).
    pub(super) docs: BTreeSet<DocumentId>,
    /// Highest ephemeral count seen per (document, session) from this socket.
    pub(super) ephemeral_seen: BTreeMap<(DocumentId, String), u64>,
    pub(super) ephemeral_budget: Bucket,
    /// Takeovers left for this peer id; carried over to the socket that takes over.
    pub(super) takeovers: Bucket,
    /// Opened by another engine's handshake ([`super::Input::Attached`]): that engine
    /// reports the connection's start and end, this one stays quiet about both.
    pub(super) attached: bool,
}

impl Conn {
    /// A connection with full rate budgets and no documents yet.
    fn new(
        limits: &super::Limits,
        now: Timestamp,
        direction: Direction,
        identity: Option<String>,
        local_peer: Option<PeerId>,
        state: ConnState,
    ) -> Conn {
        Conn {
            direction,
            identity,
            local_peer,
            state,
            docs: BTreeSet::new(),
            ephemeral_seen: BTreeMap::new(),
            ephemeral_budget: Bucket::full(limits.ephemeral_burst, now),
            takeovers: Bucket::full(limits.takeover_burst, now),
            attached: false,
        }
    }
}

/// Makes an attacker-chosen string safe to put in a log line or an `error` frame: at most
/// 64 characters, control characters (newlines, ANSI escapes) escaped.
pub(super) fn printable(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out: String = s
        .chars()
        .take(MAX_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if s.chars().count() > MAX_CHARS {
        out.push('…');
    }
    out
}

impl Engine {
    pub(super) fn on_connected(
        &mut self,
        now: Timestamp,
        conn: ConnectionId,
        direction: Direction,
        identity: Option<String>,
        local_peer: Option<PeerId>,
    ) {
        let state = ConnState::Handshaking { since: now };
        let c = Conn::new(
            &self.config.limits,
            now,
            direction,
            identity,
            local_peer,
            state,
        );
        self.conns.insert(conn, c);
        self.timers.schedule(
            now.plus(self.config.limits.handshake_timeout),
            Timer::Handshake(conn),
        );
        if direction == Direction::Outgoing {
            let join = Message::Join {
                sender_id: self.local_id(conn),
                peer_metadata: self.metadata(),
                supported_protocol_versions: vec![PROTOCOL_VERSION.to_owned()],
            };
            self.send(conn, &join);
        }
    }

    /// A connection another engine handshook (see [`super::Input::Attached`]): open at
    /// once, no handshake timer, no event. Its rate budgets start full here, so a peer's
    /// per-connection budgets apply per engine.
    pub(super) fn on_attached(
        &mut self,
        now: Timestamp,
        conn: ConnectionId,
        direction: Direction,
        identity: Option<String>,
        local_peer: Option<PeerId>,
        peer: PeerId,
    ) {
        let state = ConnState::Open { peer: peer.clone() };
        let mut c = Conn::new(
            &self.config.limits,
            now,
            direction,
            identity,
            local_peer,
            state,
        );
        c.attached = true;
        self.conns.insert(conn, c);
        self.peers.insert(peer, conn);
    }

    /// The peer id we present on `conn`: its own when the host gave one, else the
    /// engine's.
    pub(super) fn local_id(&self, conn: ConnectionId) -> PeerId {
        self.conns
            .get(&conn)
            .and_then(|c| c.local_peer.clone())
            .unwrap_or_else(|| self.config.peer_id.clone())
    }

    /// Sends `error` and closes.
    pub(super) fn violation(&mut self, conn: ConnectionId, reason: CloseReason) {
        let message = reason.to_string();
        self.send(conn, &Message::Error { message });
        self.close(conn, reason);
    }

    pub(super) fn close(&mut self, conn: ConnectionId, reason: CloseReason) {
        if self.conns.contains_key(&conn) {
            tracing::debug!(%conn, reason = reason.label(), "closing connection");
            self.outputs.push_back(Output::Close {
                conn,
                reason: reason.clone(),
            });
            self.emit(Event::ConnectionClosed { conn, reason });
            self.forget_conn(conn);
        }
    }

    pub(super) fn forget_conn(&mut self, conn: ConnectionId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let ConnState::Open { peer } = &c.state {
            if self.peers.get(peer) == Some(&conn) {
                self.peers.remove(peer);
            }
        }
        for id in c.docs {
            if let Some(doc) = self.docs.get_mut(&id) {
                doc.peers.remove(&conn);
                doc.queued.retain(|q| q.conn != conn);
                self.check_unavailable(id);
                self.release_if_unused(id);
            }
        }
        if !c.attached {
            self.emit(Event::PeerDisconnected { conn });
        }
    }

    pub(super) fn on_frame(&mut self, now: Timestamp, conn: ConnectionId, frame: Vec<u8>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let limits = &self.config.limits;
        let handshaking = matches!(c.state, ConnState::Handshaking { .. });
        let max = if handshaking {
            limits.max_handshake_frame_bytes
        } else {
            limits.max_frame_bytes
        };
        if frame.len() > max {
            self.violation(
                conn,
                CloseReason::Protocol(format!(
                    "frame of {} bytes is too large (limit {max})",
                    frame.len()
                )),
            );
            return;
        }
        let msg = match Message::decode(&frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%conn, bytes = frame.len(), error = %e, "undecodable frame");
                self.violation(conn, CloseReason::Protocol(e.to_string()));
                return;
            }
        };
        self.dispatch(now, conn, msg);
    }

    /// A message the host decoded (and size-checked) itself: dispatched as a frame is
    /// after its decode.
    pub(super) fn on_message(&mut self, now: Timestamp, conn: ConnectionId, msg: Message) {
        if self.conns.contains_key(&conn) {
            self.dispatch(now, conn, msg);
        }
    }

    /// Handles one decoded message from `conn`, which is known to the engine.
    fn dispatch(&mut self, now: Timestamp, conn: ConnectionId, msg: Message) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let open_peer = match &c.state {
            ConnState::Open { peer } => Some(peer.clone()),
            ConnState::Handshaking { .. } => None,
        };
        let direction = c.direction;
        match (open_peer, msg) {
            (_, Message::Error { .. }) | (_, Message::Leave) => {
                self.close(conn, CloseReason::PeerLeft)
            }
            (
                None,
                Message::Join {
                    sender_id,
                    peer_metadata,
                    supported_protocol_versions,
                },
            ) if direction == Direction::Incoming => self.on_join(
                now,
                conn,
                sender_id,
                peer_metadata,
                supported_protocol_versions,
            ),
            (
                None,
                Message::Peer {
                    sender_id,
                    peer_metadata,
                    selected_protocol_version,
                    ..
                },
            ) if direction == Direction::Outgoing => {
                if selected_protocol_version != PROTOCOL_VERSION {
                    self.violation(conn, CloseReason::UnsupportedVersion);
                    return;
                }
                self.open(now, conn, sender_id, peer_metadata);
            }
            (None, other) => self.violation(
                conn,
                CloseReason::Protocol(format!(
                    "`{}` before the handshake",
                    printable(other.kind())
                )),
            ),
            (Some(_), m @ (Message::Join { .. } | Message::Peer { .. })) => self.violation(
                conn,
                CloseReason::Protocol(format!("`{}` after the handshake", m.kind())),
            ),
            (Some(peer), Message::Request(d)) => self.on_doc_message(now, conn, peer, d, true),
            (Some(peer), Message::Sync(d)) => self.on_doc_message(now, conn, peer, d, false),
            (Some(_), Message::DocUnavailable { document_id, .. }) => {
                if let Some(doc) = self.docs.get_mut(&document_id) {
                    if let Some(pd) = doc.peers.get_mut(&conn) {
                        pd.unavailable = true;
                    }
                    self.check_unavailable(document_id);
                }
            }
            (
                Some(peer),
                Message::Ephemeral {
                    sender_id,
                    target_id,
                    document_id,
                    session_id,
                    count,
                    data,
                },
            ) => self.on_ephemeral(
                now,
                conn,
                super::ephemeral::Incoming {
                    peer,
                    claimed_sender: sender_id,
                    target: target_id,
                    doc: document_id,
                    session_id,
                    count,
                    data,
                },
            ),
            (Some(_), Message::RemoteHeads { .. } | Message::Unknown { .. }) => {}
        }
    }

    fn on_join(
        &mut self,
        now: Timestamp,
        conn: ConnectionId,
        sender: PeerId,
        meta: PeerMetadata,
        versions: Vec<String>,
    ) {
        let limits = self.config.limits.clone();
        if !versions.iter().any(|v| v == PROTOCOL_VERSION) {
            self.violation(conn, CloseReason::UnsupportedVersion);
            return;
        }
        let storage_len = meta.storage_id.as_ref().map_or(0, |s| s.as_str().len());
        if sender.as_str().len() > limits.max_peer_id_bytes
            || storage_len > limits.max_peer_id_bytes
        {
            self.violation(
                conn,
                CloseReason::Protocol(format!(
                    "senderId or storageId longer than {} bytes",
                    limits.max_peer_id_bytes
                )),
            );
            return;
        }
        if sender == self.config.peer_id {
            self.violation(conn, CloseReason::ReservedPeerId);
            return;
        }
        let identity = self.conns[&conn].identity.clone();
        if identity.as_deref().is_some_and(|id| id != sender.as_str()) {
            self.violation(conn, CloseReason::IdentityMismatch);
            return;
        }
        // Before a takeover: a revoked device must not even displace its old socket.
        let info = PeerInfo {
            peer_id: &sender,
            identity: identity.as_deref(),
        };
        if !self.access.connection_allowed(&info, now) {
            self.violation(conn, CloseReason::AccessRevoked);
            return;
        }
        if let Some(old) = self.peers.get(&sender).copied().filter(|old| *old != conn) {
            // A phone that switched networks rejoins while its old socket lingers: the newer
            // socket wins, but only with the same credential, and not over and over.
            let old_conn = self.conns.get_mut(&old).expect("peers point at live conns");
            let same_identity = old_conn.identity == identity;
            if !same_identity
                || !old_conn
                    .takeovers
                    .take(limits.takeover_burst, limits.takeover_interval, now)
            {
                tracing::debug!(%conn, same_identity, "takeover refused");
                self.violation(conn, CloseReason::PeerIdInUse);
                return;
            }
            let budget = old_conn.takeovers;
            self.violation(old, CloseReason::Replaced);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.takeovers = budget;
            }
        }
        let answer = Message::Peer {
            sender_id: self.config.peer_id.clone(),
            target_id: sender.clone(),
            peer_metadata: self.metadata(),
            selected_protocol_version: PROTOCOL_VERSION.to_owned(),
        };
        self.send(conn, &answer);
        self.open(now, conn, sender, meta);
    }

    fn open(&mut self, now: Timestamp, conn: ConnectionId, peer: PeerId, metadata: PeerMetadata) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Open { peer: peer.clone() };
        }
        self.peers.insert(peer.clone(), conn);
        self.emit(Event::PeerConnected {
            conn,
            peer,
            metadata,
        });
        if self.config.role == Role::Client {
            let ids: Vec<DocumentId> = self.docs.keys().copied().collect();
            for id in ids {
                self.share_with(id, conn, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn untrusted_strings_cannot_forge_log_lines() {
        let forged = printable("sync\n2026-11-29T00:00:00Z  INFO forged\u{1b}[31m");
        assert!(!forged.contains('\n'));
        assert!(!forged.contains('\u{1b}'));
        assert!(forged.starts_with("sync\\n"));
        assert_eq!(printable(&"x".repeat(1000)).chars().count(), 65);
    }
}
