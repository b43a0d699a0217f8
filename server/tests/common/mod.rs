//! Helpers shared by the relay's integration tests: a relay in-process on `127.0.0.1:0`,
//! well-behaved clients, and a raw websocket that speaks (or abuses) the wire protocol.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test crate uses a different subset of these helpers"
)]

pub mod members;
pub mod pg;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ReadDoc, ROOT};
use cairn_relay::config::{Cli, Command};
use cairn_relay::Config;
use cairn_sync::client::{Client, ClientConfig};
use cairn_sync::ids::{DocumentId, PeerId};
use cairn_sync::store::{MemoryStore, SledConfig, Storage};
use cairn_sync::wire::{DocMessage, Message, PeerMetadata};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous bound for anything that should happen "soon" on loopback.
pub const SOON: Duration = Duration::from_secs(10);

/// A validated config built from command-line flags, as `cairn-relay serve` would.
pub fn config_from_flags(flags: &[&str]) -> Config {
    let mut argv = vec!["cairn-relay", "serve"];
    argv.extend_from_slice(flags);
    let Command::Serve(args) = Cli::parse_from(argv).command else {
        unreachable!("parsed `serve`")
    };
    args.validate().expect("valid flags")
}

/// A relay running in this process (`cairn_relay::run`) until dropped or stopped.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), cairn_relay::RelayError>>>,
}

impl Relay {
    /// Binds `127.0.0.1:0` and runs an open relay on `data` with extra flags.
    pub async fn start(data: &Path, extra: &[&str]) -> Relay {
        Relay::start_with(data, true, extra).await
    }

    /// Binds `127.0.0.1:0` and runs a relay with membership (no `--open`) on `data`.
    pub async fn start_members(data: &Path, extra: &[&str]) -> Relay {
        Relay::start_with(data, false, extra).await
    }

    async fn start_with(data: &Path, open: bool, extra: &[&str]) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let listen = addr.to_string();
        let data = data.to_str().expect("utf-8 temp path");
        let mut flags = vec!["--listen", &listen, "--data", data];
        if open {
            flags.push("--open");
        }
        // No admin API unless a test asks for one: the default address is one fixed port.
        if !extra.contains(&"--admin-listen") {
            flags.extend_from_slice(&["--admin-listen", "off"]);
        }
        flags.extend_from_slice(extra);
        let config = config_from_flags(&flags);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cairn_relay::run(config, listener, async move {
            let _ = rx.await;
        }));
        Relay {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Whether `run` is still serving (it returns when the engine stops or on an error).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Triggers the shutdown future and waits (bounded) for `run` to return.
    pub async fn stop(mut self) -> Result<(), cairn_relay::RelayError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("not stopped twice");
        tokio::time::timeout(SOON, task)
            .await
            .expect("run returned after shutdown")
            .expect("run did not panic")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A well-behaved client on an in-memory store, connected to `url`.
pub fn client(name: &str, url: &str) -> Client {
    let mut config = ClientConfig::new(name);
    config.min_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(500);
    let c = Client::start(Arc::new(MemoryStore::default()), config).expect("client starts");
    c.connect(url);
    c
}

/// Two clients co-editing one document through the relay.
pub struct Pair {
    pub a: Client,
    pub b: Client,
    pub doc: DocumentId,
    round: u64,
}

impl Pair {
    pub async fn start(url: &str) -> Pair {
        let a = client("alice/phone", url);
        let b = client("ben/phone", url);
        let doc = a
            .create(|tx| {
                tx.put(ROOT, "title", "minutes").expect("put");
                Ok::<(), std::convert::Infallible>(())
            })
            .await
            .expect("create")
            .0;
        a.wait_acknowledged(doc, SOON)
            .await
            .expect("relay acknowledges the new document");
        b.find(doc, SOON).await.expect("ben finds the document");
        let mut pair = Pair {
            a,
            b,
            doc,
            round: 0,
        };
        pair.still_syncing().await;
        pair
    }

    /// A change made now by one client reaches the other, both ways.
    pub async fn still_syncing(&mut self) {
        for (from, to) in [(&self.a, &self.b), (&self.b, &self.a)] {
            self.round += 1;
            let key = format!("edit-{}", self.round);
            let k = key.clone();
            let n = self.round as i64;
            from.change(self.doc, move |tx| tx.put(ROOT, k, n))
                .await
                .expect("local change");
            to.wait_for(self.doc, SOON, move |d| {
                d.get(ROOT, &key).ok().flatten().is_some()
            })
            .await
            .expect("the other client sees the change");
        }
    }

    pub async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a raw socket saw.
#[derive(Debug)]
pub enum Seen {
    Frame(Message),
    /// A binary frame that is not a protocol message.
    Undecodable(Vec<u8>),
    /// A websocket close frame, the end of the stream, or a transport error.
    Closed,
    Nothing,
}

/// A raw websocket to the relay, driven frame by frame.
pub struct Raw {
    pub ws: Ws,
    pub peer: PeerId,
}

impl Raw {
    pub async fn dial(url: &str, peer: &str) -> Raw {
        let (ws, _) = tokio::time::timeout(SOON, tokio_tungstenite::connect_async(url))
            .await
            .expect("dial in time")
            .expect("websocket upgrade");
        Raw {
            ws,
            peer: PeerId::from(peer),
        }
    }

    /// Dials and completes the handshake.
    pub async fn joined(url: &str, peer: &str) -> Raw {
        let mut raw = Raw::dial(url, peer).await;
        raw.send(&Message::Join {
            sender_id: raw.peer.clone(),
            peer_metadata: PeerMetadata::default(),
            supported_protocol_versions: vec!["1".into()],
        })
        .await;
        match raw.next(SOON).await {
            Seen::Frame(Message::Peer { target_id, .. }) => assert_eq!(target_id, raw.peer),
            other => panic!("expected `peer`, got {other:?}"),
        }
        raw
    }

    pub async fn send(&mut self, msg: &Message) {
        self.send_bytes(msg.encode()).await.expect("send");
    }

    pub async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<(), tungstenite::Error> {
        self.ws
            .send(tungstenite::Message::Binary(bytes.into()))
            .await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        self.ws
            .send(tungstenite::Message::Text(text.to_owned().into()))
            .await
    }

    /// The next protocol-relevant thing within `within` (pings and pongs are skipped).
    pub async fn next(&mut self, within: Duration) -> Seen {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Seen::Nothing,
                Ok(got) => got,
            };
            return match got {
                Some(Ok(tungstenite::Message::Binary(b))) => match Message::decode(&b) {
                    Ok(m) => Seen::Frame(m),
                    Err(_) => Seen::Undecodable(b.to_vec()),
                },
                Some(Ok(tungstenite::Message::Close(_))) | Some(Err(_)) | None => Seen::Closed,
                Some(Ok(tungstenite::Message::Text(t))) => Seen::Undecodable(t.as_bytes().to_vec()),
                Some(Ok(_)) => continue,
            };
        }
    }

    /// Asserts that the next frame is `error` and that the relay then closes the socket.
    /// Returns the error's message.
    pub async fn expect_error_then_close(&mut self) -> String {
        let message = match self.next(SOON).await {
            Seen::Frame(Message::Error { message }) => message,
            other => panic!("expected an `error` frame, got {other:?}"),
        };
        match self.next(SOON).await {
            Seen::Closed => {}
            other => panic!("expected the relay to close after `error`, got {other:?}"),
        }
        message
    }

    /// Syncs `doc` (our copy `am`, sync state `state`) until the relay has shown it holds our
    /// heads, or it answers `doc-unavailable`. Other documents' frames are ignored.
    pub async fn sync_doc(
        &mut self,
        id: DocumentId,
        am: &mut Automerge,
        state: &mut sync::State,
    ) -> SyncOutcome {
        let deadline = tokio::time::Instant::now() + SOON;
        let ours = am.get_heads();
        if let Some(m) = am.generate_sync_message(state) {
            self.send_sync(id, m).await;
        }
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Seen::Frame(Message::Sync(d)) | Seen::Frame(Message::Request(d))
                    if d.document_id == id =>
                {
                    let m = sync::Message::decode(&d.data).expect("relay sends valid sync");
                    let theirs = m.heads.clone();
                    am.receive_sync_message(state, m).expect("apply relay sync");
                    if ours.iter().all(|h| theirs.contains(h)) {
                        return SyncOutcome::Acknowledged(theirs);
                    }
                    if let Some(m) = am.generate_sync_message(state) {
                        self.send_sync(id, m).await;
                    }
                }
                Seen::Frame(Message::DocUnavailable { document_id, .. }) if document_id == id => {
                    return SyncOutcome::Unavailable;
                }
                Seen::Frame(_) => {}
                other => panic!("while syncing {id}: {other:?}"),
            }
        }
    }

    pub async fn send_sync(&mut self, id: DocumentId, m: sync::Message) {
        self.send(&Message::Sync(DocMessage {
            sender_id: self.peer.clone(),
            target_id: PeerId::from(cairn_relay::RELAY_PEER_ID),
            document_id: id,
            data: m.encode(),
        }))
        .await;
    }
}

/// How a [`Raw::sync_doc`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The relay's heads include ours.
    Acknowledged(Vec<ChangeHash>),
    /// The relay answered `doc-unavailable`.
    Unavailable,
}

/// A random, valid document id (deterministic per `n`).
pub fn doc_id(n: u64) -> DocumentId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[8..].copy_from_slice(&(n ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes());
    DocumentId::from_bytes(b)
}

/// Bytes that do not compress (so a document's stored size is what the test says).
pub fn incompressible(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // splitmix64
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Opens a relay's data directory (retrying while the relay still holds its lock) and
/// loads one document from the stored chunks, as a fresh reader would.
pub async fn load_stored(data: &Path, docs: &[DocumentId]) -> Vec<(DocumentId, Automerge)> {
    let deadline = tokio::time::Instant::now() + SOON;
    let store = loop {
        match cairn_sync::store::open_data_dir(data, &SledConfig::default()) {
            Ok((s, _)) => break s,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the data directory does not open: {e}"),
        }
    };
    docs.iter()
        .map(|id| {
            let mut am = Automerge::new();
            let chunks = store.load_range(&[id.to_string()]).expect("load_range");
            for (key, bytes) in chunks {
                if key.len() != 3 || !(key[1] == "incremental" || key[1] == "snapshot") {
                    continue;
                }
                am.load_incremental(&bytes)
                    .unwrap_or_else(|e| panic!("stored chunk {key:?} does not load: {e}"));
            }
            (*id, am)
        })
        .collect()
}

/// A raw `GET path` over its own TCP connection: `Some((status, body))`, or `None` if the
/// relay closed or did not answer within a second.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut response = Vec::new();
        s.read_to_end(&mut response).await?;
        std::io::Result::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Polls `/metrics` until `name` (an unlabelled metric) satisfies `ok`, or panics after
/// [`SOON`] with the last value seen. Returns the value.
pub async fn wait_metric(addr: SocketAddr, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + SOON;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Some((200, text)) = http_get(addr, "/metrics").await {
            last = metric_value(&text, name);
            if let Some(v) = last {
                if ok(v) {
                    return v;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never reached the expected value (last seen {last:?})");
}

/// The value of an unlabelled metric in the text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// Answers `GET path` through the router alone (`app(state).oneshot`): (status, body).
pub async fn oneshot_get(
    state: &cairn_relay::AppState,
    path: &str,
) -> (axum::http::StatusCode, String) {
    use tower::ServiceExt;
    let request = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .expect("request");
    let response = cairn_relay::app(state.clone())
        .oneshot(request)
        .await
        .expect("infallible router");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        String::from_utf8(body.to_vec()).expect("utf-8 body"),
    )
}

/// What a finished command printed, stdout then stderr.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
