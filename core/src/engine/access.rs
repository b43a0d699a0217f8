//! Access decisions per (peer, document): where relay-authoritative membership plugs in.

use crate::ids::{DocumentId, PeerId};

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

/// Decides, for every message, whether a peer may read or write a document. A peer that may
/// not read gets `doc-unavailable`, the same answer as for a missing document.
pub trait Access: Send {
    /// Whether `peer` may do `op` on `doc`.
    fn allows(&self, peer: &PeerInfo<'_>, doc: &DocumentId, op: Operation) -> bool;
}

/// Everyone may do everything (development mode and devices).
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenAccess;

impl Access for OpenAccess {
    fn allows(&self, _: &PeerInfo<'_>, _: &DocumentId, _: Operation) -> bool {
        true
    }
}
