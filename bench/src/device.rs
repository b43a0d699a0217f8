//! A simulated device: a cairn-core [`Engine`] in the client role with an in-memory store
//! run inline, over one tokio-tungstenite websocket. The socket has a reader task and a
//! writer task so the device never stops draining the server while it edits; everything
//! else (engine, storage, bookkeeping) runs in the device's own task.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use cairn_sync::engine::{Direction, Engine, EngineConfig, Event, Input, Output, Role};
use cairn_sync::ids::{ConnectionId, DocumentId, PeerId};
use cairn_sync::store::{MemoryStore, Storage};
use cairn_sync::time::Timestamp;
use cairn_sync::wire::Message as WireMessage;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The one connection a device has.
const LINK: ConnectionId = ConnectionId::new(1);

/// What the reader task hands the device.
enum Incoming {
    Frame(Vec<u8>),
    /// Why the socket ended (close frame or error).
    Closed(String),
}

/// Frames and bytes a device sent and received (websocket payloads, handshake included).
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    /// Frames sent to the server.
    pub frames_sent: u64,
    /// Payload bytes sent to the server.
    pub bytes_sent: u64,
    /// Frames received from the server.
    pub frames_received: u64,
    /// Payload bytes received from the server.
    pub bytes_received: u64,
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, o: Traffic) {
        self.frames_sent += o.frames_sent;
        self.bytes_sent += o.bytes_sent;
        self.frames_received += o.frames_received;
        self.bytes_received += o.bytes_received;
    }
}

/// See the module docs.
pub struct Device {
    /// The device's engine; callers create, find and change documents through it and
    /// then call [`Device::pump`].
    pub engine: Engine,
    store: MemoryStore,
    epoch: Instant,
    outgoing: Option<mpsc::UnboundedSender<Vec<u8>>>,
    incoming: Option<mpsc::UnboundedReceiver<Incoming>>,
    /// Events since the caller last took them.
    pub events: Vec<Event>,
    /// The server closed the socket.
    pub closed: bool,
    /// Why, when known.
    close_reason: String,
    /// Frames and bytes through the socket; callers reset it to start counting a phase.
    pub traffic: Traffic,
    /// Local commits (see [`Device::committed`]) not yet carried by a sent frame.
    unsent: Vec<(DocumentId, Instant)>,
    /// For each local commit, microseconds from the commit until the first frame carrying
    /// changes of its document was handed to the socket writer: the client's own part of
    /// the edit-to-arrival latency (sync debounce included).
    pub commit_to_frame_us: Vec<u32>,
}

impl Device {
    /// A device with no connection yet (it can create and edit documents offline), on the
    /// engine's default client configuration.
    pub fn offline(peer: &str, seed: u64, epoch: Instant) -> Device {
        Device::offline_with(peer, seed, epoch, None)
    }

    /// [`Device::offline`] with the client's sync debounce set to `debounce` instead of
    /// the engine's default (`None` keeps the default).
    pub fn offline_with(
        peer: &str,
        seed: u64,
        epoch: Instant,
        debounce: Option<Duration>,
    ) -> Device {
        let mut config = EngineConfig::new(Role::Client, PeerId::from(peer), seed);
        if let Some(d) = debounce {
            config = config.with_sync_debounce(d);
        }
        let engine = Engine::new(config);
        Device {
            engine,
            store: MemoryStore::default(),
            epoch,
            outgoing: None,
            incoming: None,
            events: Vec::new(),
            closed: false,
            close_reason: String::new(),
            traffic: Traffic::default(),
            unsent: Vec::new(),
            commit_to_frame_us: Vec::new(),
        }
    }

    /// Notes that a local change of `doc` was committed at `at` (the moment the engine
    /// applied it; call before [`Device::pump`]), to time when a frame first carries it.
    pub fn committed(&mut self, doc: DocumentId, at: Instant) {
        self.unsent.push((doc, at));
    }

    /// A new device connected to `url`, handshake done.
    pub async fn connect(
        url: &str,
        peer: &str,
        seed: u64,
        epoch: Instant,
    ) -> anyhow::Result<Device> {
        Device::connect_with(url, peer, seed, epoch, None).await
    }

    /// [`Device::connect`] with [`Device::offline_with`]'s debounce override.
    pub async fn connect_with(
        url: &str,
        peer: &str,
        seed: u64,
        epoch: Instant,
        debounce: Option<Duration>,
    ) -> anyhow::Result<Device> {
        let mut d = Device::offline_with(peer, seed, epoch, debounce);
        d.attach(url).await?;
        Ok(d)
    }

    /// Milliseconds since the bench epoch, as the engine's clock.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// Opens the websocket (retrying refused connects a few times) and waits for the
    /// handshake (at most 30 s).
    pub async fn attach(&mut self, url: &str) -> anyhow::Result<()> {
        // Small buffers keep 400 clients cheap; tungstenite's 128 KiB defaults would not.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(64 * 1024 * 1024);
        let mut attempt = 0;
        let ws = loop {
            attempt += 1;
            match tokio_tungstenite::connect_async_with_config(url, Some(config), true).await {
                Ok((ws, _)) => break ws,
                Err(e) if attempt < 5 => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(e).context("connecting the websocket"),
            }
        };
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(first) = out_rx.recv().await {
                if sink.feed(Message::Binary(first.into())).await.is_err() {
                    return;
                }
                while let Ok(more) = out_rx.try_recv() {
                    if sink.feed(Message::Binary(more.into())).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        });
        tokio::spawn(async move {
            let mut why = "end of stream".to_owned();
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(Message::Binary(b)) => {
                        if in_tx.send(Incoming::Frame(b.into())).is_err() {
                            return;
                        }
                    }
                    Ok(Message::Close(frame)) => {
                        why = match frame {
                            Some(f) => format!("close frame {} {:?}", f.code, f.reason.as_str()),
                            None => "close frame".into(),
                        };
                        break;
                    }
                    Err(e) => {
                        why = format!("socket error: {e}");
                        break;
                    }
                    Ok(_) => {}
                }
            }
            let _ = in_tx.send(Incoming::Closed(why));
        });
        self.outgoing = Some(out_tx);
        self.incoming = Some(in_rx);
        self.closed = false;
        let now = self.now();
        self.engine.handle_input(
            now,
            Input::Connected {
                conn: LINK,
                direction: Direction::Outgoing,
                identity: None,
                local_peer: None,
            },
        );
        self.pump();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .events
                .iter()
                .any(|e| matches!(e, Event::PeerConnected { .. }))
            {
                self.events
                    .retain(|e| !matches!(e, Event::PeerConnected { .. }));
                return Ok(());
            }
            if !self.step_until(deadline).await? {
                bail!("no handshake from {url} within 30 s");
            }
        }
    }

    /// Drains the engine: frames to the writer, storage run inline, events kept.
    pub fn pump(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { frame, .. } => {
                    if !self.unsent.is_empty() {
                        self.note_sent(&frame);
                    }
                    if let Some(tx) = &self.outgoing {
                        self.traffic.frames_sent += 1;
                        self.traffic.bytes_sent += frame.len() as u64;
                        let _ = tx.send(frame);
                    }
                }
                Output::Storage { task, op } => {
                    let result = self.store.execute(op);
                    let now = self.now();
                    self.engine
                        .handle_input(now, Input::StorageDone { task, result });
                }
                Output::Close { reason, .. } => {
                    self.closed = true;
                    self.close_reason = format!("engine closed it: {reason}");
                }
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    /// If `frame` is a sync message carrying changes of a document with unsent commits,
    /// those commits have now left. Decoding costs the bench (not the engine) a little,
    /// and only while a commit waits.
    fn note_sent(&mut self, frame: &[u8]) {
        let Ok(WireMessage::Sync(m) | WireMessage::Request(m)) = WireMessage::decode(frame) else {
            return;
        };
        if !self.unsent.iter().any(|(d, _)| *d == m.document_id) {
            return;
        }
        let carries =
            automerge::sync::Message::decode(&m.data).is_ok_and(|s| !s.changes.is_empty());
        if !carries {
            return;
        }
        let sent = Instant::now();
        let doc = m.document_id;
        let out = &mut self.commit_to_frame_us;
        self.unsent.retain(|(d, at)| {
            if *d != doc {
                return true;
            }
            out.push(sent.duration_since(*at).as_micros().min(u32::MAX as u128) as u32);
            false
        });
    }

    fn feed(&mut self, incoming: Incoming) {
        let now = self.now();
        match incoming {
            Incoming::Frame(frame) => {
                self.traffic.frames_received += 1;
                self.traffic.bytes_received += frame.len() as u64;
                self.engine
                    .handle_input(now, Input::Frame { conn: LINK, frame });
            }
            Incoming::Closed(why) => {
                self.closed = true;
                self.close_reason = why;
                self.engine
                    .handle_input(now, Input::Disconnected { conn: LINK });
            }
        }
        self.pump();
    }

    /// Feeds every frame that has already arrived, without waiting.
    pub fn poll_ready(&mut self) {
        while let Some(inc) = self.incoming.as_mut().and_then(|rx| rx.try_recv().ok()) {
            self.feed(inc);
        }
    }

    /// Runs the engine's timers that are due (a client's sync debounce, say) and says
    /// when the next one is due, as an instant.
    fn run_timers(&mut self) -> Option<Instant> {
        let due = self.engine.poll_timeout()?;
        let now = self.now();
        if due <= now {
            self.engine.handle_timeout(now);
            self.pump();
        }
        let next = self.engine.poll_timeout()?;
        // A timer the engine keeps reporting as due must not make this spin.
        let at = self.epoch + Duration::from_millis(next.as_millis());
        Some(at.max(Instant::now() + Duration::from_millis(1)))
    }

    /// Waits for at least one frame (until `deadline`) and feeds it and every other
    /// frame already waiting; runs the engine's timers meanwhile. `Ok(false)` on
    /// timeout; an error once the socket is closed.
    pub async fn step_until(&mut self, deadline: Instant) -> anyhow::Result<bool> {
        if self.closed {
            bail!("the connection closed ({})", self.close_reason);
        }
        let got = loop {
            let timer = self.run_timers();
            let wake = timer.map_or(deadline, |t| t.min(deadline));
            let rx = self
                .incoming
                .as_mut()
                .ok_or_else(|| anyhow!("not connected"))?;
            match tokio::time::timeout_at(wake.into(), rx.recv()).await {
                Err(_) if wake < deadline => continue,
                got => break got,
            }
        };
        match got {
            Err(_) => {
                self.run_timers();
                Ok(false)
            }
            Ok(None) => {
                self.closed = true;
                bail!("the connection's reader stopped");
            }
            Ok(Some(inc)) => {
                self.feed(inc);
                self.poll_ready();
                Ok(true)
            }
        }
    }

    /// Why the connection closed, once it has (empty before).
    pub fn close_reason(&self) -> &str {
        &self.close_reason
    }

    /// Closes the socket (the writer sends a close frame).
    pub fn disconnect(&mut self) {
        self.outgoing = None;
        self.incoming = None;
    }

    /// Gives up on the current socket, e.g. after a reconnect attempt timed out half-way
    /// through the handshake: closes it and tells the engine the link is gone (unless it
    /// already knows), so the next [`Device::attach`] starts from a clean link.
    pub fn abandon(&mut self) {
        self.disconnect();
        if !self.closed {
            self.closed = true;
            self.close_reason = "abandoned by the device".into();
            let now = self.now();
            self.engine
                .handle_input(now, Input::Disconnected { conn: LINK });
            self.pump();
        }
    }
}
