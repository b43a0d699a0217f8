//! The automerge-repo wire protocol, version "1": one CBOR map per websocket binary frame.
//!
//! Decoding is strict about the fields a message needs and lenient about everything else:
//! unknown message types decode to [`Message::Unknown`] and are ignored by the engine, extra
//! fields are skipped, and CBOR `undefined` (what JS leaves in unset optional fields) reads
//! as absent.

use ciborium::Value;
use thiserror::Error;

use crate::ids::{DocumentId, DocumentIdError, PeerId, StorageId};

/// The only protocol version this code speaks.
pub const PROTOCOL_VERSION: &str = "1";

/// What a peer says about its storage in `join` and `peer`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PeerMetadata {
    /// The peer's store id, if it has a store.
    pub storage_id: Option<StorageId>,
    /// `false` means "I will come back with this storage".
    pub is_ephemeral: bool,
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client → server handshake.
    Join {
        /// The client's peer id.
        sender_id: PeerId,
        /// The client's storage.
        peer_metadata: PeerMetadata,
        /// Versions the client speaks.
        supported_protocol_versions: Vec<String>,
    },
    /// Server → client handshake answer.
    Peer {
        /// The server's peer id.
        sender_id: PeerId,
        /// The client's peer id.
        target_id: PeerId,
        /// The server's storage.
        peer_metadata: PeerMetadata,
        /// Always [`PROTOCOL_VERSION`].
        selected_protocol_version: String,
    },
    /// A fatal complaint; the sender closes the socket after it.
    Error {
        /// Human-readable reason (never content).
        message: String,
    },
    /// "Do you have this document?" carrying an Automerge sync message.
    Request(DocMessage),
    /// An Automerge sync message.
    Sync(DocMessage),
    /// "I don't have it" (or "you may not see it": never reveal existence).
    DocUnavailable {
        /// Sender.
        sender_id: PeerId,
        /// Recipient.
        target_id: PeerId,
        /// The document.
        document_id: DocumentId,
    },
    /// Application data such as presence; never stored, de-duplicated by (session, count).
    Ephemeral {
        /// The peer that made it (kept when forwarded).
        sender_id: PeerId,
        /// Recipient.
        target_id: PeerId,
        /// The document it is about.
        document_id: DocumentId,
        /// The originating session.
        session_id: String,
        /// Per-session counter.
        count: u64,
        /// Opaque payload.
        data: Vec<u8>,
    },
    /// `remote-subscription-change` / `remote-heads-changed`: opt-in heads gossip, ignored here.
    RemoteHeads {
        /// Which of the two it was.
        kind: String,
    },
    /// Legacy `leave`: treated as a close.
    Leave,
    /// A type this version does not know; ignored.
    Unknown {
        /// The `type` field as sent.
        kind: String,
    },
}

/// The fields shared by `request` and `sync`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocMessage {
    /// Sender.
    pub sender_id: PeerId,
    /// Recipient.
    pub target_id: PeerId,
    /// The document.
    pub document_id: DocumentId,
    /// An encoded `automerge::sync::Message`.
    pub data: Vec<u8>,
}

/// Why a frame could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not one well-formed CBOR item (truncated, garbage, trailing bytes).
    #[error("frame is not valid CBOR")]
    Cbor,
    /// The top-level item is not a map with text keys.
    #[error("frame is not a CBOR map")]
    NotAMap,
    /// A field the message type requires is missing.
    #[error("`{0}` is missing")]
    Missing(&'static str),
    /// A field has the wrong CBOR type.
    #[error("`{0}` has the wrong type")]
    WrongType(&'static str),
    /// A `documentId` that is not a valid bs58check id.
    #[error("bad documentId: {0}")]
    DocumentId(#[from] DocumentIdError),
    /// More CBOR items than [`MAX_FRAME_ITEMS`] or nesting deeper than [`MAX_FRAME_DEPTH`]:
    /// no protocol message needs that, and decoding it would allocate per item.
    #[error(
        "frame has more than {MAX_FRAME_ITEMS} CBOR items or nests deeper than {MAX_FRAME_DEPTH}"
    )]
    TooComplex,
}

/// Most CBOR items (every map key, value, array element and tag counts) in one frame.
/// 1,024: the largest protocol message has about a dozen. The byte strings that carry
/// sync data count as one item each, whatever their length. Without this bound a 16 MiB
/// frame holding an array of 16 million small integers decodes into ~600 MB of values.
pub const MAX_FRAME_ITEMS: usize = 1024;

/// Deepest nesting of CBOR arrays, maps and tags in one frame. 16: messages nest three deep.
pub const MAX_FRAME_DEPTH: usize = 16;

/// Walks the CBOR structure of a frame without allocating, counting items and depth.
/// Only the shape is checked here; `ciborium` reports malformed content.
fn check_shape(frame: &[u8]) -> Result<(), DecodeError> {
    struct Walk<'a> {
        bytes: &'a [u8],
        pos: usize,
        items: usize,
    }
    impl Walk<'_> {
        fn byte(&mut self) -> Result<u8, DecodeError> {
            let b = *self.bytes.get(self.pos).ok_or(DecodeError::Cbor)?;
            self.pos += 1;
            Ok(b)
        }
        fn skip(&mut self, n: u64) -> Result<(), DecodeError> {
            let left = (self.bytes.len() - self.pos) as u64;
            if n > left {
                return Err(DecodeError::Cbor);
            }
            self.pos += n as usize;
            Ok(())
        }
        /// The argument of a head whose low five bits are `info`; `None` for indefinite.
        fn argument(&mut self, info: u8) -> Result<Option<u64>, DecodeError> {
            let width = match info {
                0..=23 => return Ok(Some(u64::from(info))),
                24 => 1,
                25 => 2,
                26 => 4,
                27 => 8,
                31 => return Ok(None),
                _ => return Err(DecodeError::Cbor),
            };
            let mut v = 0u64;
            for _ in 0..width {
                v = (v << 8) | u64::from(self.byte()?);
            }
            Ok(Some(v))
        }
        /// One item; `Ok(true)` if it was a "break" (end of an indefinite container).
        fn item(&mut self, depth: usize) -> Result<bool, DecodeError> {
            let head = self.byte()?;
            if head == 0xff {
                return Ok(true);
            }
            self.items += 1;
            if self.items > MAX_FRAME_ITEMS || depth > MAX_FRAME_DEPTH {
                return Err(DecodeError::TooComplex);
            }
            let (major, info) = (head >> 5, head & 0x1f);
            let arg = self.argument(info)?;
            match (major, arg) {
                (0 | 1 | 7, _) => {}
                (2 | 3, Some(len)) => self.skip(len)?,
                (2 | 3, None) => while !self.item(depth + 1)? {},
                (4, Some(n)) => {
                    for _ in 0..n {
                        if self.item(depth + 1)? {
                            return Err(DecodeError::Cbor);
                        }
                    }
                }
                (5, Some(n)) => {
                    for _ in 0..n.saturating_mul(2) {
                        if self.item(depth + 1)? {
                            return Err(DecodeError::Cbor);
                        }
                    }
                }
                (4 | 5, None) => while !self.item(depth + 1)? {},
                (6, _) => {
                    if self.item(depth + 1)? {
                        return Err(DecodeError::Cbor);
                    }
                }
                _ => return Err(DecodeError::Cbor),
            }
            Ok(false)
        }
    }
    let mut walk = Walk {
        bytes: frame,
        pos: 0,
        items: 0,
    };
    if walk.item(0)? {
        return Err(DecodeError::Cbor);
    }
    Ok(())
}

/// Why a message could not be encoded (only an internal CBOR writer failure).
#[derive(Debug, Error)]
#[error("could not encode frame: {0}")]
pub struct EncodeError(String);

struct Fields(Vec<(Value, Value)>);

impl Fields {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_text() == Some(key))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }
    fn text(&self, key: &'static str) -> Result<String, DecodeError> {
        match self.get(key) {
            None => Err(DecodeError::Missing(key)),
            Some(Value::Text(t)) => Ok(t.clone()),
            Some(_) => Err(DecodeError::WrongType(key)),
        }
    }
    fn opt_text(&self, key: &'static str) -> Result<Option<String>, DecodeError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Text(t)) => Ok(Some(t.clone())),
            Some(_) => Err(DecodeError::WrongType(key)),
        }
    }
    fn bytes(&self, key: &'static str) -> Result<Vec<u8>, DecodeError> {
        match self.get(key) {
            None => Err(DecodeError::Missing(key)),
            Some(Value::Bytes(b)) => Ok(b.clone()),
            // cbor-x with tagUint8Array enabled writes tag 64 around the bytes; accept it.
            Some(Value::Tag(64, inner)) => match inner.as_ref() {
                Value::Bytes(b) => Ok(b.clone()),
                _ => Err(DecodeError::WrongType(key)),
            },
            Some(_) => Err(DecodeError::WrongType(key)),
        }
    }
    fn uint(&self, key: &'static str) -> Result<u64, DecodeError> {
        match self.get(key) {
            None => Err(DecodeError::Missing(key)),
            Some(Value::Integer(i)) => u64::try_from(*i).map_err(|_| DecodeError::WrongType(key)),
            Some(_) => Err(DecodeError::WrongType(key)),
        }
    }
    fn peer(&self, key: &'static str) -> Result<PeerId, DecodeError> {
        self.text(key).map(PeerId::from)
    }
    fn doc(&self) -> Result<DocumentId, DecodeError> {
        Ok(self.text("documentId")?.parse()?)
    }
    fn metadata(&self) -> Result<PeerMetadata, DecodeError> {
        match self.get("peerMetadata") {
            None => Ok(PeerMetadata::default()),
            Some(Value::Map(m)) => {
                let inner = Fields(m.clone());
                let storage_id = inner.opt_text("storageId")?.map(StorageId::from);
                let is_ephemeral = match inner.get("isEphemeral") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(DecodeError::WrongType("isEphemeral")),
                };
                Ok(PeerMetadata {
                    storage_id,
                    is_ephemeral,
                })
            }
            Some(_) => Err(DecodeError::WrongType("peerMetadata")),
        }
    }
}

impl Message {
    /// Decodes one frame.
    pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
        check_shape(frame)?;
        let mut reader = frame;
        let value: Value = ciborium::from_reader(&mut reader).map_err(|_| DecodeError::Cbor)?;
        if !reader.is_empty() {
            return Err(DecodeError::Cbor);
        }
        let Value::Map(entries) = value else {
            return Err(DecodeError::NotAMap);
        };
        let f = Fields(entries);
        let kind = f.text("type")?;
        let doc_message = |f: &Fields| -> Result<DocMessage, DecodeError> {
            Ok(DocMessage {
                sender_id: f.peer("senderId")?,
                target_id: f.peer("targetId")?,
                document_id: f.doc()?,
                data: f.bytes("data")?,
            })
        };
        Ok(match kind.as_str() {
            "join" => Message::Join {
                sender_id: f.peer("senderId")?,
                peer_metadata: f.metadata()?,
                supported_protocol_versions: match f.get("supportedProtocolVersions") {
                    None => Vec::new(),
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|v| {
                            v.as_text()
                                .map(str::to_owned)
                                .ok_or(DecodeError::WrongType("supportedProtocolVersions"))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(DecodeError::WrongType("supportedProtocolVersions")),
                },
            },
            "peer" => Message::Peer {
                sender_id: f.peer("senderId")?,
                target_id: f.peer("targetId")?,
                peer_metadata: f.metadata()?,
                selected_protocol_version: f.text("selectedProtocolVersion")?,
            },
            "error" => Message::Error {
                message: f.opt_text("message")?.unwrap_or_default(),
            },
            "request" => Message::Request(doc_message(&f)?),
            "sync" => Message::Sync(doc_message(&f)?),
            "doc-unavailable" => Message::DocUnavailable {
                sender_id: f.peer("senderId")?,
                target_id: f.peer("targetId")?,
                document_id: f.doc()?,
            },
            "ephemeral" => Message::Ephemeral {
                sender_id: f.peer("senderId")?,
                target_id: f.peer("targetId")?,
                document_id: f.doc()?,
                session_id: f.text("sessionId")?,
                count: f.uint("count")?,
                data: f.bytes("data")?,
            },
            "remote-subscription-change" | "remote-heads-changed" => Message::RemoteHeads { kind },
            "leave" => Message::Leave,
            _ => Message::Unknown { kind },
        })
    }

    /// Encodes the message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut m: Vec<(Value, Value)> = Vec::with_capacity(7);
        let mut put = |k: &str, v: Value| m.push((Value::Text(k.to_owned()), v));
        let text = |s: &str| Value::Text(s.to_owned());
        let meta = |p: &PeerMetadata| {
            let mut inner = Vec::new();
            if let Some(s) = &p.storage_id {
                inner.push((text("storageId"), text(s.as_str())));
            }
            inner.push((text("isEphemeral"), Value::Bool(p.is_ephemeral)));
            Value::Map(inner)
        };
        match self {
            Message::Join {
                sender_id,
                peer_metadata,
                supported_protocol_versions,
            } => {
                put("type", text("join"));
                put("senderId", text(sender_id.as_str()));
                put("peerMetadata", meta(peer_metadata));
                put(
                    "supportedProtocolVersions",
                    Value::Array(
                        supported_protocol_versions
                            .iter()
                            .map(|v| text(v))
                            .collect(),
                    ),
                );
            }
            Message::Peer {
                sender_id,
                target_id,
                peer_metadata,
                selected_protocol_version,
            } => {
                put("type", text("peer"));
                put("senderId", text(sender_id.as_str()));
                put("targetId", text(target_id.as_str()));
                put("peerMetadata", meta(peer_metadata));
                put("selectedProtocolVersion", text(selected_protocol_version));
            }
            Message::Error { message } => {
                put("type", text("error"));
                put("message", text(message));
            }
            Message::Request(d) | Message::Sync(d) => {
                let kind = if matches!(self, Message::Request(_)) {
                    "request"
                } else {
                    "sync"
                };
                put("type", text(kind));
                put("senderId", text(d.sender_id.as_str()));
                put("targetId", text(d.target_id.as_str()));
                put("documentId", text(&d.document_id.to_string()));
                put("data", Value::Bytes(d.data.clone()));
            }
            Message::DocUnavailable {
                sender_id,
                target_id,
                document_id,
            } => {
                put("type", text("doc-unavailable"));
                put("senderId", text(sender_id.as_str()));
                put("targetId", text(target_id.as_str()));
                put("documentId", text(&document_id.to_string()));
            }
            Message::Ephemeral {
                sender_id,
                target_id,
                document_id,
                session_id,
                count,
                data,
            } => {
                put("type", text("ephemeral"));
                put("senderId", text(sender_id.as_str()));
                put("targetId", text(target_id.as_str()));
                put("documentId", text(&document_id.to_string()));
                put("sessionId", text(session_id));
                put("count", Value::Integer((*count).into()));
                put("data", Value::Bytes(data.clone()));
            }
            Message::RemoteHeads { kind } | Message::Unknown { kind } => {
                put("type", text(kind));
            }
            Message::Leave => put("type", text("leave")),
        }
        let mut out = Vec::new();
        // Writing a Value into a Vec cannot fail: the writer is infallible and every value is finite.
        ciborium::into_writer(&Value::Map(m), &mut out)
            .expect("CBOR encoding into a Vec is infallible");
        out
    }

    /// The `type` string, for logs and metrics.
    pub fn kind(&self) -> &str {
        match self {
            Message::Join { .. } => "join",
            Message::Peer { .. } => "peer",
            Message::Error { .. } => "error",
            Message::Request(_) => "request",
            Message::Sync(_) => "sync",
            Message::DocUnavailable { .. } => "doc-unavailable",
            Message::Ephemeral { .. } => "ephemeral",
            Message::RemoteHeads { kind } | Message::Unknown { kind } => kind,
            Message::Leave => "leave",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array_of_zeros(n: usize) -> Vec<u8> {
        let mut frame = vec![0x9a];
        frame.extend_from_slice(&(n as u32).to_be_bytes());
        frame.resize(5 + n, 0);
        frame
    }

    #[test]
    fn a_frame_of_millions_of_tiny_items_is_refused_before_it_is_decoded() {
        // At the limit (the array itself is one item) it decodes (and is not a map);
        // one past, it is refused without allocating a value per item.
        assert_eq!(
            Message::decode(&array_of_zeros(MAX_FRAME_ITEMS - 1)),
            Err(DecodeError::NotAMap)
        );
        assert_eq!(
            Message::decode(&array_of_zeros(MAX_FRAME_ITEMS)),
            Err(DecodeError::TooComplex)
        );
        assert_eq!(
            Message::decode(&array_of_zeros(16 * 1024 * 1024)),
            Err(DecodeError::TooComplex)
        );
        // Indefinite-length containers count the same way.
        let mut indefinite = vec![0x9f];
        indefinite.resize(1 + 2 * MAX_FRAME_ITEMS, 0);
        indefinite.push(0xff);
        assert_eq!(Message::decode(&indefinite), Err(DecodeError::TooComplex));
    }

    #[test]
    fn nesting_past_the_depth_limit_is_refused() {
        let nested = |depth: usize| {
            let mut f = vec![0x81; depth];
            f.push(0);
            f
        };
        assert_eq!(
            Message::decode(&nested(MAX_FRAME_DEPTH)),
            Err(DecodeError::NotAMap)
        );
        assert_eq!(
            Message::decode(&nested(MAX_FRAME_DEPTH + 1)),
            Err(DecodeError::TooComplex)
        );
    }

    fn doc() -> DocumentId {
        "488sijVLJ6Grs5PnrczSYBwfNg25".parse().unwrap()
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Join {
                sender_id: "phone".into(),
                peer_metadata: PeerMetadata {
                    storage_id: Some("3760df37-a4c6-4f66-9ecd-732039a9385d".into()),
                    is_ephemeral: false,
                },
                supported_protocol_versions: vec!["1".into()],
            },
            Message::Peer {
                sender_id: "relay".into(),
                target_id: "phone".into(),
                peer_metadata: PeerMetadata::default(),
                selected_protocol_version: "1".into(),
            },
            Message::Error {
                message: "nope".into(),
            },
            Message::Request(DocMessage {
                sender_id: "a".into(),
                target_id: "b".into(),
                document_id: doc(),
                data: vec![0x42, 0, 1],
            }),
            Message::Sync(DocMessage {
                sender_id: "a".into(),
                target_id: "b".into(),
                document_id: doc(),
                data: vec![],
            }),
            Message::DocUnavailable {
                sender_id: "a".into(),
                target_id: "b".into(),
                document_id: doc(),
            },
            Message::Ephemeral {
                sender_id: "a".into(),
                target_id: "b".into(),
                document_id: doc(),
                session_id: "s".into(),
                count: 9,
                data: vec![1, 2],
            },
            Message::Leave,
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m, "{}", m.kind());
        }
    }

    /// Golden bytes: the exact frame for a `request`, matching what cbor-x writes in JS
    /// (text keys, a plain byte string for `data`).
    #[test]
    fn request_golden_bytes() {
        let frame = samples()[3].encode();
        assert_eq!(
            hex::encode(&frame),
            concat!(
                "a5647479706567726571756573746873656e6465724964616168746172676574496461",
                "626a646f63756d656e744964781c34383873696a564c4a3647727335506e72637a5359",
                "4277664e673235646461746143420001"
            )
        );
    }

    #[test]
    fn undefined_storage_id_reads_as_absent() {
        // {"type":"join","senderId":"p","peerMetadata":{"storageId":undefined,"isEphemeral":true},
        //  "supportedProtocolVersions":["1"]}
        let mut frame = Vec::new();
        frame.push(0xa4);
        for (k, v) in [("type", "join"), ("senderId", "p")] {
            ciborium::into_writer(&k, &mut frame).unwrap();
            ciborium::into_writer(&v, &mut frame).unwrap();
        }
        ciborium::into_writer(&"peerMetadata", &mut frame).unwrap();
        frame.push(0xa2);
        ciborium::into_writer(&"storageId", &mut frame).unwrap();
        frame.push(0xf7); // undefined
        ciborium::into_writer(&"isEphemeral", &mut frame).unwrap();
        frame.push(0xf5);
        ciborium::into_writer(&"supportedProtocolVersions", &mut frame).unwrap();
        ciborium::into_writer(&vec!["1"], &mut frame).unwrap();
        match Message::decode(&frame).unwrap() {
            Message::Join { peer_metadata, .. } => {
                assert_eq!(peer_metadata.storage_id, None);
                assert!(peer_metadata.is_ephemeral);
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn unknown_types_are_not_errors() {
        let mut frame = Vec::new();
        ciborium::into_writer(
            &std::collections::BTreeMap::from([("type", "future-thing"), ("senderId", "x")]),
            &mut frame,
        )
        .unwrap();
        assert_eq!(
            Message::decode(&frame).unwrap(),
            Message::Unknown {
                kind: "future-thing".into()
            }
        );
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(Message::decode(&[0xff, 0x00]), Err(DecodeError::Cbor));
        assert_eq!(Message::decode(&[0x01]), Err(DecodeError::NotAMap));
        let mut frame = Vec::new();
        ciborium::into_writer(
            &std::collections::BTreeMap::from([
                ("type", "sync"),
                ("senderId", "x"),
                ("targetId", "y"),
                ("documentId", "nope"),
            ]),
            &mut frame,
        )
        .unwrap();
        assert!(matches!(
            Message::decode(&frame),
            Err(DecodeError::DocumentId(_))
        ));
        let mut trailing = samples()[0].encode();
        trailing.push(0);
        assert_eq!(Message::decode(&trailing), Err(DecodeError::Cbor));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn ephemeral_round_trips(session in ".{0,20}", count in proptest::prelude::any::<u64>(),
                                 data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let m = Message::Ephemeral { sender_id: "a".into(), target_id: "b".into(), document_id: doc(),
                                         session_id: session, count, data };
            proptest::prop_assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }
}
