//! Presence (who is editing, cursors) over ephemeral messages, in the shapes of
//! automerge-repo 2.5.6's `Presence` so browser clients and phones see each other.
//!
//! Each ephemeral payload is CBOR of `{"__presence": message}` where message is one of
//! `{"type":"snapshot","state":{...}}`, `{"type":"update","channel":c,"value":v}`,
//! `{"type":"heartbeat"}` or `{"type":"goodbye"}`. A peer's state is the merge of its last
//! snapshot and later channel updates; heartbeats from unknown peers are ignored (they will
//! send a snapshot); a goodbye forgets the peer at once; a peer silent for
//! [`PEER_TTL`] is forgotten. When a new peer shows up we answer with our own snapshot, as
//! the JS helper does, so both sides learn of each other.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::ids::{DocumentId, PeerId};

/// The envelope key automerge-repo's Presence uses.
pub const PRESENCE_MARKER: &str = "__presence";
/// How often we send a heartbeat when nothing else was sent (automerge-repo's default).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// How long a silent peer stays listed (three heartbeats, automerge-repo's default).
pub const PEER_TTL: Duration = Duration::from_secs(45);

/// Another peer's presence on a document.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerPresence {
    /// The peer (one per device or browser tab, not per member).
    pub peer: PeerId,
    /// Its state: the last snapshot with later channel updates merged in.
    pub state: Value,
}

/// A presence message, as sent and received.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PresenceMessage {
    Snapshot(Value),
    Update { channel: String, value: Value },
    Heartbeat,
    Goodbye,
}

impl PresenceMessage {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let inner = match self {
            PresenceMessage::Snapshot(state) => json!({"type": "snapshot", "state": state}),
            PresenceMessage::Update { channel, value } => {
                json!({"type": "update", "channel": channel, "value": value})
            }
            PresenceMessage::Heartbeat => json!({"type": "heartbeat"}),
            PresenceMessage::Goodbye => json!({"type": "goodbye"}),
        };
        let mut out = Vec::new();
        // Writing a JSON value into a Vec cannot fail.
        let _ = ciborium::into_writer(&json!({ PRESENCE_MARKER: inner }), &mut out);
        out
    }

    /// `None` for ephemeral messages that are not presence (or not understood).
    pub(crate) fn decode(data: &[u8]) -> Option<PresenceMessage> {
        let value: Value = ciborium::from_reader(data).ok()?;
        let inner = value.get(PRESENCE_MARKER)?;
        match inner.get("type")?.as_str()? {
            "snapshot" => Some(PresenceMessage::Snapshot(
                inner.get("state").cloned().unwrap_or(Value::Null),
            )),
            "update" => Some(PresenceMessage::Update {
                channel: inner.get("channel")?.as_str()?.to_owned(),
                value: inner.get("value").cloned().unwrap_or(Value::Null),
            }),
            "heartbeat" => Some(PresenceMessage::Heartbeat),
            "goodbye" => Some(PresenceMessage::Goodbye),
            _ => None,
        }
    }
}

struct Seen {
    state: Map<String, Value>,
    last_seen: Instant,
}

/// Presence bookkeeping for every document (inside the client's shared state).
#[derive(Default)]
pub(crate) struct PresenceBook {
    /// Our own state per document (what we re-announce).
    pub(crate) local: BTreeMap<DocumentId, Value>,
    peers: BTreeMap<DocumentId, BTreeMap<PeerId, Seen>>,
}

impl PresenceBook {
    /// Records a received message; returns true when the sender was new to us (so we
    /// should answer with our snapshot).
    pub(crate) fn receive(
        &mut self,
        doc: DocumentId,
        sender: PeerId,
        msg: PresenceMessage,
        now: Instant,
    ) -> bool {
        let peers = self.peers.entry(doc).or_default();
        let is_new = !peers.contains_key(&sender);
        let merge = |peers: &mut BTreeMap<PeerId, Seen>, value: Map<String, Value>| {
            let seen = peers.entry(sender.clone()).or_insert_with(|| Seen {
                state: Map::new(),
                last_seen: now,
            });
            seen.state.extend(value);
            seen.last_seen = now;
        };
        match msg {
            PresenceMessage::Heartbeat => {
                if let Some(seen) = peers.get_mut(&sender) {
                    seen.last_seen = now;
                }
            }
            PresenceMessage::Goodbye => {
                peers.remove(&sender);
            }
            PresenceMessage::Snapshot(state) => {
                let map = match state {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                merge(peers, map);
            }
            PresenceMessage::Update { channel, value } => {
                let mut m = Map::new();
                m.insert(channel, value);
                merge(peers, m);
            }
        }
        is_new
    }

    /// Forgets everyone a document's peers (e.g. when the relay connection drops, their
    /// goodbyes cannot reach us).
    pub(crate) fn forget_all_peers(&mut self) {
        self.peers.clear();
    }

    /// Peers currently present on `doc`, by peer id.
    pub(crate) fn present(&mut self, doc: &DocumentId, now: Instant) -> Vec<PeerPresence> {
        let Some(peers) = self.peers.get_mut(doc) else {
            return Vec::new();
        };
        peers.retain(|_, s| now.saturating_duration_since(s.last_seen) < PEER_TTL);
        peers
            .iter()
            .map(|(peer, s)| PeerPresence {
                peer: peer.clone(),
                state: Value::Object(s.state.clone()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_in_the_js_shape() {
        let msgs = [
            PresenceMessage::Snapshot(json!({"cursor": {"start": 3, "end": 7}, "name": "x"})),
            PresenceMessage::Update {
                channel: "cursor".into(),
                value: json!(5),
            },
            PresenceMessage::Heartbeat,
            PresenceMessage::Goodbye,
        ];
        for m in msgs {
            assert_eq!(PresenceMessage::decode(&m.encode()), Some(m));
        }
        let raw: Value = ciborium::from_reader(&PresenceMessage::Heartbeat.encode()[..]).unwrap();
        assert_eq!(raw, json!({"__presence": {"type": "heartbeat"}}));
    }

    #[test]
    fn other_ephemeral_messages_are_not_presence() {
        let mut out = Vec::new();
        ciborium::into_writer(&json!({"cursor": 1}), &mut out).unwrap();
        assert_eq!(PresenceMessage::decode(&out), None);
        assert_eq!(PresenceMessage::decode(b"\xff\x00"), None);
    }

    #[test]
    fn updates_merge_goodbye_forgets_and_silence_expires() {
        let doc = DocumentId::from_bytes([1; 16]);
        let ana = PeerId::from("ana");
        let mut book = PresenceBook::default();
        let t0 = Instant::now();
        // A heartbeat from a stranger is ignored.
        assert!(book.receive(doc, ana.clone(), PresenceMessage::Heartbeat, t0));
        assert!(book.present(&doc, t0).is_empty());
        assert!(book.receive(
            doc,
            ana.clone(),
            PresenceMessage::Snapshot(json!({"name": "A", "cursor": 1})),
            t0
        ));
        assert!(!book.receive(
            doc,
            ana.clone(),
            PresenceMessage::Update {
                channel: "cursor".into(),
                value: json!(9)
            },
            t0
        ));
        assert_eq!(
            book.present(&doc, t0),
            vec![PeerPresence {
                peer: ana.clone(),
                state: json!({"name": "A", "cursor": 9})
            }]
        );
        assert!(book.present(&doc, t0 + PEER_TTL).is_empty());
        book.receive(doc, ana.clone(), PresenceMessage::Snapshot(json!({})), t0);
        book.receive(doc, ana, PresenceMessage::Goodbye, t0);
        assert!(book.present(&doc, t0).is_empty());
    }
}
