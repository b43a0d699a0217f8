//! A tokio host for the [`Engine`]: one task owns the engine, a storage thread runs the
//! storage tasks with group commit, and every connection has a bounded outbound queue.
//!
//! Used by the relay (incoming websockets) and by the client runtime (outgoing ones), so
//! both sides run the same engine under the same rules:
//! - a write is reported done only after `Storage::flush`; all writes that arrive while a
//!   flush runs share the next one;
//! - a frame is never dropped: when a connection's outbound queue is full the connection is
//!   closed and the peer resyncs when it reconnects.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::engine::{CloseReason, Direction, Engine, Event, Input, Output};
use crate::ids::{ConnectionId, TaskId};
use crate::store::{Storage, StorageOp, StorageOutcome, StoreError};
use crate::time::Timestamp;

/// What a connection's writer receives.
#[derive(Debug)]
pub enum Outbound {
    /// A binary frame to send.
    Frame(Vec<u8>),
    /// Send a close frame and stop.
    Close(CloseReason),
}

type Call = Box<dyn FnOnce(&mut Engine, Timestamp) + Send>;

enum Command {
    Open {
        conn: ConnectionId,
        direction: Direction,
        identity: Option<String>,
        outbound: mpsc::Sender<Outbound>,
    },
    Frame {
        conn: ConnectionId,
        frame: Vec<u8>,
    },
    Closed {
        conn: ConnectionId,
    },
    Call(Call),
    Shutdown(oneshot::Sender<()>),
}

/// Everything the host reports to its owner (metrics, the client's waiters).
pub trait Observer: Send + 'static {
    /// An engine event.
    fn event(&mut self, event: &Event);
    /// A storage batch finished: how many ops, how many were writes, how long it took.
    fn storage_batch(&mut self, _ops: usize, _writes: usize, _elapsed: Duration) {}
    /// A frame was queued for sending (bytes).
    fn frame_out(&mut self, _bytes: usize) {}
    /// A frame arrived (bytes).
    fn frame_in(&mut self, _bytes: usize) {}
    /// A connection was closed because its outbound queue was full.
    fn backpressure_close(&mut self) {}
}

/// Host settings.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Frames a connection may have queued for sending before it is closed. Default 1,024:
    /// a first sync of a whole group is a few dozen frames; a socket that falls a thousand
    /// frames behind is not keeping up and resyncs cheaper than it queues.
    pub outbound_queue: usize,
    /// Storage ops taken into one batch (one flush). Default 512.
    pub max_batch: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            outbound_queue: 1024,
            max_batch: 512,
        }
    }
}

/// A handle to a running host. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Host {
    commands: mpsc::Sender<Command>,
    next_conn: Arc<std::sync::atomic::AtomicU64>,
    outbound_queue: usize,
}

/// The host has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the sync host has stopped")]
pub struct HostStopped;

/// The engine-facing half of one connection, handed to the transport's reader/writer.
#[derive(Debug)]
pub struct ConnectionHandle {
    /// Where received frames go.
    pub input: ConnectionInput,
    /// Frames (and a final close) to write to the socket.
    pub outbound: mpsc::Receiver<Outbound>,
}

/// The reader's side of a connection: hands frames to the engine.
#[derive(Debug, Clone)]
pub struct ConnectionInput {
    /// The id the engine knows this connection by.
    pub conn: ConnectionId,
    host: Host,
}

impl ConnectionInput {
    /// Hands a received frame to the engine. Waits when the engine is behind (this is
    /// the reader's backpressure).
    pub async fn frame(&self, frame: Vec<u8>) -> Result<(), HostStopped> {
        self.host
            .send(Command::Frame {
                conn: self.conn,
                frame,
            })
            .await
    }

    /// Reports that the socket closed.
    pub async fn closed(&self) {
        let _ = self.host.send(Command::Closed { conn: self.conn }).await;
    }
}

impl Host {
    /// Starts the engine task (on the current tokio runtime) and the storage thread.
    pub fn start(
        engine: Engine,
        storage: Arc<dyn Storage>,
        observer: Box<dyn Observer>,
        config: HostConfig,
    ) -> Host {
        let (commands, rx) = mpsc::channel(4096);
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let (ops_tx, ops_rx) = std_mpsc::channel::<(TaskId, StorageOp)>();
        let max_batch = config.max_batch;
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("cairn-storage".into())
            .spawn(move || storage_thread(storage, ops_rx, results_tx, batch_tx, max_batch))
            .expect("spawning the storage thread");
        let origin = Instant::now();
        tokio::spawn(engine_task(
            engine, rx, ops_tx, results_rx, batch_rx, observer, origin,
        ));
        Host {
            commands,
            next_conn: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            outbound_queue: config.outbound_queue,
        }
    }

    async fn send(&self, cmd: Command) -> Result<(), HostStopped> {
        self.commands.send(cmd).await.map_err(|_| HostStopped)
    }

    /// Registers a new connection with the engine.
    pub async fn open(
        &self,
        direction: Direction,
        identity: Option<String>,
    ) -> Result<ConnectionHandle, HostStopped> {
        let conn = ConnectionId::new(
            self.next_conn
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let (tx, outbound) = mpsc::channel(self.outbound_queue);
        self.send(Command::Open {
            conn,
            direction,
            identity,
            outbound: tx,
        })
        .await?;
        Ok(ConnectionHandle {
            input: ConnectionInput {
                conn,
                host: self.clone(),
            },
            outbound,
        })
    }

    /// Runs `f` inside the engine task and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine, Timestamp) -> R + Send + 'static,
    ) -> Result<R, HostStopped> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Call(Box::new(move |e, now| {
            let _ = tx.send(f(e, now));
        })))
        .await?;
        rx.await.map_err(|_| HostStopped)
    }

    /// Closes every connection, lets in-flight writes finish and flush, and stops.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn storage_thread(
    storage: Arc<dyn Storage>,
    ops: std_mpsc::Receiver<(TaskId, StorageOp)>,
    results: mpsc::UnboundedSender<(TaskId, Result<StorageOutcome, StoreError>)>,
    batches: mpsc::UnboundedSender<(usize, usize, Duration)>,
    max_batch: usize,
) {
    while let Ok(first) = ops.recv() {
        let started = Instant::now();
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut done = Vec::with_capacity(batch.len());
        let mut writes = 0;
        for (task, op) in batch {
            if op.is_write() {
                writes += 1;
            }
            let result = storage.apply(&op);
            done.push((task, op.is_write(), result));
        }
        if writes > 0 {
            if let Err(e) = storage.flush() {
                // Nothing written in this batch can be called durable.
                let kind = match &e {
                    StoreError::Io(io) => Some(io.kind()),
                    _ => None,
                };
                tracing::error!(error = %e, writes, "flush failed");
                for (_, is_write, result) in done.iter_mut() {
                    if *is_write && result.is_ok() {
                        *result = Err(match kind {
                            Some(k) => StoreError::Io(std::io::Error::new(k, "flush failed")),
                            None => StoreError::Closed,
                        });
                    }
                }
            }
        }
        let n = done.len();
        for (task, _, result) in done {
            if results.send((task, result)).is_err() {
                return;
            }
        }
        let _ = batches.send((n, writes, started.elapsed()));
    }
}

async fn engine_task(
    mut engine: Engine,
    mut commands: mpsc::Receiver<Command>,
    ops: std_mpsc::Sender<(TaskId, StorageOp)>,
    mut results: mpsc::UnboundedReceiver<(TaskId, Result<StorageOutcome, StoreError>)>,
    mut batches: mpsc::UnboundedReceiver<(usize, usize, Duration)>,
    mut observer: Box<dyn Observer>,
    origin: Instant,
) {
    let now = || Timestamp::from_millis(origin.elapsed().as_millis() as u64);
    let mut conns: std::collections::HashMap<ConnectionId, mpsc::Sender<Outbound>> =
        Default::default();
    let mut shutdown: Option<oneshot::Sender<()>> = None;
    let mut ops = Some(ops);
    loop {
        let deadline = engine.poll_timeout().map(|t| {
            let ms = t.as_millis().saturating_sub(now().as_millis());
            tokio::time::Instant::now() + Duration::from_millis(ms)
        });
        tokio::select! {
            cmd = commands.recv(), if shutdown.is_none() => match cmd {
                None => break,
                Some(Command::Open { conn, direction, identity, outbound }) => {
                    conns.insert(conn, outbound);
                    engine.handle_input(now(), Input::Connected { conn, direction, identity });
                }
                Some(Command::Frame { conn, frame }) => {
                    observer.frame_in(frame.len());
                    engine.handle_input(now(), Input::Frame { conn, frame });
                }
                Some(Command::Closed { conn }) => {
                    conns.remove(&conn);
                    engine.handle_input(now(), Input::Disconnected { conn });
                }
                Some(Command::Call(f)) => f(&mut engine, now()),
                Some(Command::Shutdown(done)) => {
                    for (_, tx) in conns.drain() {
                        let _ = tx.try_send(Outbound::Close(CloseReason::PeerLeft));
                    }
                    shutdown = Some(done);
                    // Dropping the sender lets the storage thread finish what is queued,
                    // flush, and exit; we keep feeding results until it does.
                    ops = None;
                }
            },
            Some((task, result)) = results.recv() => {
                engine.handle_input(now(), Input::StorageDone { task, result });
                while let Ok((task, result)) = results.try_recv() {
                    engine.handle_input(now(), Input::StorageDone { task, result });
                }
            }
            Some((n, writes, elapsed)) = batches.recv() => observer.storage_batch(n, writes, elapsed),
            _ = sleep_until(deadline), if deadline.is_some() => engine.handle_timeout(now()),
            else => break,
        }
        while let Some(out) = engine.poll_output() {
            match out {
                Output::Send { conn, frame } => {
                    let Some(tx) = conns.get(&conn) else { continue };
                    let len = frame.len();
                    match tx.try_send(Outbound::Frame(frame)) {
                        Ok(()) => observer.frame_out(len),
                        Err(_) => {
                            // Full (or the writer is gone): close rather than drop a frame.
                            tracing::info!(%conn, "outbound queue full; closing so the peer resyncs");
                            observer.backpressure_close();
                            conns.remove(&conn);
                            engine.handle_input(now(), Input::Disconnected { conn });
                        }
                    }
                }
                Output::Close { conn, reason } => {
                    if let Some(tx) = conns.remove(&conn) {
                        let _ = tx.try_send(Outbound::Close(reason));
                    }
                }
                Output::Storage { task, op } => match &ops {
                    Some(ops) => {
                        if ops.send((task, op)).is_err() {
                            engine.handle_input(
                                now(),
                                Input::StorageDone {
                                    task,
                                    result: Err(StoreError::Closed),
                                },
                            );
                        }
                    }
                    None => engine.handle_input(
                        now(),
                        Input::StorageDone {
                            task,
                            result: Err(StoreError::Closed),
                        },
                    ),
                },
                Output::Event(e) => observer.event(&e),
            }
        }
        if shutdown.is_some() && engine.stats().storage_tasks == 0 {
            break;
        }
    }
    if let Some(done) = shutdown {
        let _ = done.send(());
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, Role};
    use crate::ids::{DocumentId, PeerId};
    use crate::store::MemoryStore;
    use crate::wire::{DocMessage, Message, PeerMetadata};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(Arc<AtomicUsize>);
    impl Observer for Count {
        fn event(&mut self, _: &Event) {}
        fn backpressure_close(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_closed_not_dropped_frames() {
        let store = Arc::new(MemoryStore::default());
        let engine = Engine::new(EngineConfig::new(Role::Relay, PeerId::from("relay"), 1));
        let closes = Arc::new(AtomicUsize::new(0));
        let host = Host::start(
            engine,
            store,
            Box::new(Count(closes.clone())),
            HostConfig {
                outbound_queue: 4,
                ..HostConfig::default()
            },
        );
        let handle = host.open(Direction::Incoming, None).await.unwrap();
        let join = Message::Join {
            sender_id: "p".into(),
            peer_metadata: PeerMetadata::default(),
            supported_protocol_versions: vec!["1".into()],
        };
        handle.input.frame(join.encode()).await.unwrap();
        // Each request for an unknown document is answered; nobody reads the answers.
        for i in 0..20u8 {
            let req = Message::Request(DocMessage {
                sender_id: "p".into(),
                target_id: "relay".into(),
                document_id: DocumentId::from_bytes([i; 16]),
                data: {
                    use automerge::sync::SyncDoc;
                    let empty = automerge::Automerge::new();
                    empty
                        .generate_sync_message(&mut automerge::sync::State::new())
                        .unwrap()
                        .encode()
                },
            });
            let _ = handle.input.frame(req.encode()).await;
        }
        // Answers come once each load finishes on the storage thread.
        for _ in 0..500 {
            if closes.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(closes.load(Ordering::SeqCst), 1);
        // What was queued is delivered in full and in order, then the queue ends.
        let mut outbound = handle.outbound;
        let mut got = Vec::new();
        while let Some(Outbound::Frame(f)) = outbound.recv().await {
            got.push(Message::decode(&f).unwrap().kind().to_owned());
        }
        assert_eq!(got.first().map(String::as_str), Some("peer"));
        assert_eq!(got.len(), 4);
        host.shutdown().await;
    }
}
