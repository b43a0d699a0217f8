//! Ephemeral messages (presence, cursors): never stored, forwarded to the peers that have
//! the document open, lossy by design.
//!
//! A relay stamps the sending socket's own peer id on what it forwards (a peer cannot speak
//! for another), honours `targetId` (the relay's own id means "everyone else"), keeps the
//! de-duplication table per (document, session) of the sending socket — so nobody can
//! silence someone else's session by replaying its id with a huge count — and drops what
//! passes the socket's rate budget.

use super::{Engine, EphemeralDrop, Event, Operation, Role, SharedEphemeral};
use crate::ids::{ConnectionId, DocumentId, PeerId};
use crate::time::Timestamp;
use crate::wire::Message;

/// An `ephemeral` frame as it arrived on a handshaken connection.
pub(super) struct Incoming {
    /// The connection's own peer id.
    pub(super) peer: PeerId,
    /// The `senderId` the frame claims (trusted only from a relay, in the client role).
    pub(super) claimed_sender: PeerId,
    pub(super) target: PeerId,
    pub(super) doc: DocumentId,
    pub(super) session_id: String,
    pub(super) count: u64,
    pub(super) data: Vec<u8>,
}

impl Engine {
    pub(super) fn on_ephemeral(&mut self, now: Timestamp, from: ConnectionId, m: Incoming) {
        let limits = self.config.limits.clone();
        if m.session_id.len() > limits.max_session_id_bytes {
            self.violation(
                from,
                super::CloseReason::Protocol(format!(
                    "ephemeral sessionId longer than {} bytes",
                    limits.max_session_id_bytes
                )),
            );
            return;
        }
        let Some(c) = self.conns.get_mut(&from) else {
            return;
        };
        if !c
            .ephemeral_budget
            .take(limits.ephemeral_burst, limits.ephemeral_interval, now)
        {
            return self.dropped(from, EphemeralDrop::RateLimited);
        }
        if m.data.len() > limits.max_ephemeral_bytes {
            return self.dropped(from, EphemeralDrop::TooLarge);
        }
        let key = (m.doc, m.session_id);
        if c.ephemeral_seen
            .get(&key)
            .is_some_and(|last| m.count <= *last)
        {
            return self.dropped(from, EphemeralDrop::Duplicate);
        }
        if !c.ephemeral_seen.contains_key(&key)
            && c.ephemeral_seen.len() >= limits.max_ephemeral_sessions
        {
            // Forget the oldest-keyed session; at worst one duplicate gets through.
            c.ephemeral_seen.pop_first();
        }
        c.ephemeral_seen.insert(key.clone(), m.count);
        let (doc, session_id) = key;
        if !self.may(from, &doc, Operation::Read, now) {
            return;
        }
        let sender = match self.config.role {
            Role::Relay => m.peer.clone(),
            Role::Client => m.claimed_sender.clone(),
        };
        let Some(d) = self.docs.get(&doc) else {
            return;
        };
        let share = self.config.share_ephemeral && self.config.role == Role::Relay;
        let everyone = m.target == self.local_id(from);
        let targets: Vec<ConnectionId> = if everyone {
            d.peers.keys().copied().filter(|c| *c != from).collect()
        } else {
            match self.peers.get(&m.target) {
                Some(conn) if *conn != from && d.peers.contains_key(conn) => vec![*conn],
                // The peer may be on another relay of the cluster.
                _ if share => Vec::new(),
                _ => return self.dropped(from, EphemeralDrop::NoTarget),
            }
        };
        if share && (everyone || targets.is_empty()) {
            self.emit(Event::EphemeralShared(SharedEphemeral {
                doc,
                sender: sender.clone(),
                target: (!everyone).then(|| m.target.clone()),
                session_id: session_id.clone(),
                count: m.count,
                data: m.data.clone(),
            }));
        }
        if self.config.role == Role::Client {
            self.emit(Event::Ephemeral {
                doc,
                sender: sender.clone(),
                data: m.data.clone(),
            });
        }
        for conn in targets {
            let Some(target_id) = self.peer_of(conn) else {
                continue;
            };
            if !self.may(conn, &doc, Operation::Read, now) {
                continue;
            }
            let msg = Message::Ephemeral {
                sender_id: sender.clone(),
                target_id,
                document_id: doc,
                session_id: session_id.clone(),
                count: m.count,
                data: m.data.clone(),
            };
            self.send(conn, &msg);
        }
    }

    /// Delivers an ephemeral message another relay of the cluster took from one of its
    /// sockets ([`Event::EphemeralShared`]) to the peers here that have its document open
    /// and may read it: everyone, or the one peer it is for. Returns how many peers it
    /// went to (none when the document is not open here).
    pub fn deliver_shared_ephemeral(&mut self, now: Timestamp, m: SharedEphemeral) -> usize {
        let Some(d) = self.docs.get(&m.doc) else {
            return 0;
        };
        let targets: Vec<ConnectionId> = match &m.target {
            None => d.peers.keys().copied().collect(),
            Some(peer) => match self.peers.get(peer) {
                Some(conn) if d.peers.contains_key(conn) => vec![*conn],
                _ => return 0,
            },
        };
        let mut sent = 0;
        for conn in targets {
            let Some(target_id) = self.peer_of(conn) else {
                continue;
            };
            // Nobody gets their own message back (a device connected to two relays).
            if target_id == m.sender || !self.may(conn, &m.doc, Operation::Read, now) {
                continue;
            }
            let msg = Message::Ephemeral {
                sender_id: m.sender.clone(),
                target_id,
                document_id: m.doc,
                session_id: m.session_id.clone(),
                count: m.count,
                data: m.data.clone(),
            };
            self.send(conn, &msg);
            sent += 1;
        }
        sent
    }

    fn dropped(&mut self, conn: ConnectionId, reason: EphemeralDrop) {
        self.emit(Event::EphemeralDropped { conn, reason });
    }

    /// Sends an ephemeral message about a document to every peer that has it open.
    pub fn broadcast_ephemeral(&mut self, id: DocumentId, data: Vec<u8>) {
        self.ephemeral_count += 1;
        let count = self.ephemeral_count;
        let Some(doc) = self.docs.get(&id) else {
            return;
        };
        let targets: Vec<ConnectionId> = doc.peers.keys().copied().collect();
        let session_id = self.session_id.clone();
        for conn in targets {
            let sender_id = self.local_id(conn);
            let Some(target_id) = self.peer_of(conn) else {
                continue;
            };
            let msg = Message::Ephemeral {
                sender_id: sender_id.clone(),
                target_id,
                document_id: id,
                session_id: session_id.clone(),
                count,
                data: data.clone(),
            };
            self.send(conn, &msg);
        }
    }
}
