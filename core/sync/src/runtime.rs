//! A tokio host for the [`Engine`]: one task owns the engine, a storage thread runs the
//! storage tasks with group commit, and every connection has a bounded outbound queue.
//!
//! Used by the relay (incoming websockets) and by the client runtime (outgoing ones), so
//! both sides run the same engine under the same rules:
//! - a write is reported done only after `Storage::flush`; all writes that arrive while a
//!   flush runs share the next one;
//! - a frame is never dropped: when a connection's outbound queue is full (in frames or in
//!   bytes) the connection is closed and the peer resyncs when it reconnects;
//! - the engine task and the storage thread are supervised: when either ends without a
//!   requested shutdown, [`Host::is_running`] turns false and [`Host::stopped`] resolves, so
//!   the owner can report it and exit (a relay's supervisor then restarts it).
//!
//! A relay may spread its documents over several engine tasks ([`Host::start_sharded`]):
//! a *door* task runs every connection's handshake and close, and each *shard* task owns
//! the documents [`document_shard`] maps to it. Each task is a whole, unchanged [`Engine`]
//! (so the durability rule holds per shard exactly as for one), all share the one storage
//! thread (and its group commit), and each connection's frames are routed by document in
//! its reader. A task that closes a connection tells the others, so no task serves a
//! closed socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::{CloseReason, Direction, Engine, Event, Input, Output, Stats};
use crate::ids::{ConnectionId, DocumentId, PeerId, TaskId};
use crate::store::{Storage, StorageKey, StorageOp, StorageOutcome, StoreError};
use crate::time::Timestamp;
use crate::wire::Message;

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
        local_peer: Option<PeerId>,
        outbound: Outlet,
    },
    Frame {
        conn: ConnectionId,
        frame: Vec<u8>,
    },
    /// A frame the reader decoded, for a shard (or the door) of a sharded host.
    Message {
        conn: ConnectionId,
        msg: Message,
        bytes: usize,
    },
    Closed {
        conn: ConnectionId,
    },
    Call(Call),
    Shutdown(oneshot::Sender<()>),
}

/// Messages between the tasks of a sharded host. Unbounded, so no task ever waits on
/// another (two tasks waiting on each other's full queues would deadlock); each carries
/// at most one entry per connection event.
enum Control {
    /// The door opened this connection: serve it (see [`Input::Attached`]).
    Attach {
        conn: ConnectionId,
        direction: Direction,
        identity: Option<String>,
        local_peer: Option<PeerId>,
        peer: PeerId,
        outbound: Outlet,
    },
    /// Another task closed this connection.
    Disconnected { conn: ConnectionId },
    /// Another task failed: close everything, flush, and end.
    Stop,
}

/// Where a connection stands, as its reader routes frames on a sharded host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// In its handshake: frames go to the door, one at a time.
    Pending,
    /// Open on every task: frames are routed by document.
    Open,
    /// Closed by a task or by its socket: frames are dropped.
    Closed,
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
    /// A connection was closed because its outbound queue was full (in frames).
    fn backpressure_close(&mut self) {}
    /// A connection was closed because its outbound queue would have passed
    /// [`HostConfig::outbound_queue_bytes`].
    fn queue_bytes_close(&mut self) {}
}

/// Default for [`HostConfig::outbound_queue_bytes`]: 8 MiB.
///
/// The frame bound alone let two sockets that never read hold 540 MB with 256 KiB
/// ephemeral messages. 8 MiB is far more than a phone that keeps reading ever has queued
/// (frames leave as fast as the socket takes them), while a thousand stalled sockets cost
/// at most 8 GiB rather than 256 GiB. A single frame larger than the bound (a whole
/// document's first sync may reach the largest frame, 16 MiB + 64 KiB) is still accepted
/// when the queue is empty, so the bound never makes a document unsyncable.
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// Host settings.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Frames a connection may have queued for sending before it is closed. Default 1,024:
    /// a first sync of a whole group is a few dozen frames; a socket that falls a thousand
    /// frames behind is not keeping up and resyncs cheaper than it queues.
    pub outbound_queue: usize,
    /// Bytes a connection may have queued for sending before it is closed; see
    /// [`DEFAULT_OUTBOUND_QUEUE_BYTES`] for the default and why. A frame larger than this is
    /// accepted only into an empty queue.
    pub outbound_queue_bytes: usize,
    /// Storage ops taken into one batch (one flush). Default 512.
    pub max_batch: usize,
    /// A test control, never for use with real data: report writes done *before* flushing
    /// them, so the crash tests can show they would see a lost acknowledgement. Default
    /// false.
    pub unsafe_ack_before_flush: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            outbound_queue: 1024,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            max_batch: 512,
            unsafe_ack_before_flush: false,
        }
    }
}

/// Whether the engine task is still running, as the supervisor last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Running,
    /// Ended because [`Host::shutdown`] asked it to, or every handle was dropped.
    ShutDown,
    /// Ended for any other reason: a panic, or the storage thread stopped.
    Failed,
}

/// How the engine task's loop ended.
#[derive(Debug)]
enum EngineExit {
    /// [`Host::shutdown`] was called and everything queued was flushed.
    Requested,
    /// Every [`Host`] handle was dropped.
    HandlesDropped,
    /// The storage thread ended (it panicked): nothing could be made durable any more.
    StorageStopped,
}

/// A handle to a running host. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Host {
    /// Every engine task's command queue: the only task, or the door then each shard.
    tasks: Arc<[mpsc::Sender<Command>]>,
    next_conn: Arc<AtomicU64>,
    outbound_queue: usize,
    /// The largest frame an open connection may send (the engines' limit), checked by a
    /// sharded host's readers before they decode.
    max_frame_bytes: usize,
    state: watch::Receiver<RunState>,
    /// The engine clock's origin in Unix ms (wall time of `Timestamp` zero).
    origin_unix_ms: u64,
    /// The storage thread's queue for writes from outside the engine; `None` once the host
    /// has shut down (so the storage thread can end).
    jobs: Arc<Mutex<Option<std_mpsc::Sender<Job>>>>,
    storage: SharedStorage,
}

/// The host's store, for [`Host::storage_writer`].
#[derive(Clone)]
struct SharedStorage(Arc<dyn Storage>);

impl std::fmt::Debug for SharedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Storage")
    }
}

/// One unit of work for the storage thread.
enum Job {
    /// A storage task of an engine task (its index).
    Engine(usize, TaskId, StorageOp),
    /// Writes from outside the engine (membership records), reported once flushed.
    External(ExternalWrite),
    /// Work that needs the store to itself (a backup, a rewrite): run between batches.
    Exclusive(Box<dyn FnOnce() + Send>),
}

/// A batch written through [`Host::storage_writer`].
struct ExternalWrite {
    writes: Vec<(StorageKey, Option<Vec<u8>>)>,
    done: std_mpsc::Sender<Result<(), StoreError>>,
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
    pub outbound: OutboundQueue,
}

/// The writer's end of a connection's outbound queue. Taking a frame releases its bytes
/// from the queue's byte bound.
#[derive(Debug)]
pub struct OutboundQueue {
    rx: mpsc::Receiver<Outbound>,
    bytes: Arc<AtomicUsize>,
}

impl OutboundQueue {
    /// The next frame or close; `None` once the engine has let go of the connection and
    /// everything queued was taken.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let out = self.rx.recv().await;
        if let Some(Outbound::Frame(f)) = &out {
            self.bytes.fetch_sub(f.len(), Ordering::AcqRel);
        }
        out
    }

    /// Bytes of frames queued and not yet taken.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

/// The engine's end of a connection's outbound queue. On a sharded host every task that
/// serves the connection holds a clone, so its bounds stay per connection.
#[derive(Clone)]
struct Outlet {
    tx: mpsc::Sender<Outbound>,
    bytes: Arc<AtomicUsize>,
    /// Where the connection stands; `Closed` once any task closed it (the first to set it
    /// sends the socket its close).
    gate: Arc<watch::Sender<Gate>>,
}

/// Why a frame could not be queued.
enum Refused {
    /// The frame bound ([`HostConfig::outbound_queue`]) was reached, or the writer is gone.
    Frames,
    /// The byte bound ([`HostConfig::outbound_queue_bytes`]) would have been passed.
    Bytes,
}

impl Outlet {
    /// Queues `frame` unless that would pass a bound. The byte bound admits one frame of
    /// any size into an empty queue: a first sync can be larger than the bound.
    fn push(&self, frame: Vec<u8>, max_bytes: usize) -> Result<(), Refused> {
        let len = frame.len();
        let queued = self.bytes.load(Ordering::Acquire);
        if queued > 0 && queued.saturating_add(len) > max_bytes {
            return Err(Refused::Bytes);
        }
        // Counted before the send so the writer's decrement never runs first.
        self.bytes.fetch_add(len, Ordering::AcqRel);
        self.tx.try_send(Outbound::Frame(frame)).map_err(|_| {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            Refused::Frames
        })
    }
}

/// The reader's side of a connection: hands frames to the engine.
#[derive(Debug, Clone)]
pub struct ConnectionInput {
    /// The id the engine knows this connection by.
    pub conn: ConnectionId,
    host: Host,
    /// On a sharded host: where the connection stands, to route its frames.
    gate: Option<watch::Receiver<Gate>>,
}

impl ConnectionInput {
    /// Hands a received frame to the engine. Waits when the engine is behind (this is
    /// the reader's backpressure).
    ///
    /// On a sharded host a frame before the handshake goes to the door, and the reader
    /// waits for its verdict (open or closed) before it takes the next, so nothing sent
    /// behind a `join` reaches a shard before the connection is open there. Once open, a
    /// frame is size-checked and decoded here once, and a document's message goes to that
    /// document's shard; everything else (and a frame too large or undecodable, which the
    /// door answers with `error` and a close) goes to the door.
    pub async fn frame(&self, frame: Vec<u8>) -> Result<(), HostStopped> {
        let conn = self.conn;
        let Some(gate) = &self.gate else {
            return self.host.send(Command::Frame { conn, frame }).await;
        };
        let state = *gate.borrow();
        match state {
            Gate::Closed => Ok(()),
            Gate::Pending => {
                self.host.send(Command::Frame { conn, frame }).await?;
                let mut gate = gate.clone();
                gate.wait_for(|g| *g != Gate::Pending)
                    .await
                    .map_err(|_| HostStopped)?;
                Ok(())
            }
            Gate::Open => {
                if frame.len() > self.host.max_frame_bytes {
                    return self.host.send(Command::Frame { conn, frame }).await;
                }
                let Ok(msg) = Message::decode(&frame) else {
                    return self.host.send(Command::Frame { conn, frame }).await;
                };
                let task = match &msg {
                    Message::Request(d) | Message::Sync(d) => self.host.task_of(&d.document_id),
                    Message::DocUnavailable { document_id, .. }
                    | Message::Ephemeral { document_id, .. } => self.host.task_of(document_id),
                    _ => 0,
                };
                let bytes = frame.len();
                drop(frame);
                self.host
                    .send_to(task, Command::Message { conn, msg, bytes })
                    .await
            }
        }
    }

    /// Reports that the socket closed.
    pub async fn closed(&self) {
        // After the frames already handed over, on every task that may serve it.
        for task in 0..self.host.tasks.len() {
            let _ = self
                .host
                .send_to(task, Command::Closed { conn: self.conn })
                .await;
        }
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
        Host::start_on(
            &tokio::runtime::Handle::current(),
            engine,
            storage,
            observer,
            config,
        )
    }

    /// Starts the engine task on `runtime` and the storage thread; needs no ambient
    /// runtime (an app that owns its runtime starts the host from any thread).
    pub fn start_on(
        runtime: &tokio::runtime::Handle,
        engine: Engine,
        storage: Arc<dyn Storage>,
        observer: Box<dyn Observer>,
        config: HostConfig,
    ) -> Host {
        Host::start_tasks(runtime, vec![(engine, observer)], storage, config)
    }

    /// Starts a host whose documents are spread over `shards` engine tasks (a relay that
    /// uses every core), on `runtime`, with one storage thread for all of them.
    ///
    /// With `shards` of 1 (or 0) this is [`Host::start_on`] with `make_engine(0)` and
    /// `make_observer(0)`: one task serves everything. With more, task 0 is the *door*: it
    /// runs every connection's handshake (identity, takeovers, access to connect) and its
    /// leave, error and close; tasks `1..=shards` each own the documents
    /// [`document_shard`] maps to them and serve those documents' messages to every open
    /// connection. `make_engine(i)` and `make_observer(i)` build task `i`'s engine and
    /// observer: give each engine its own seed, and split the memory budget
    /// (`Limits::max_loaded_ops`) between the shards. Per-connection limits (documents
    /// per connection, ephemeral and creation budgets) then hold per shard, so a peer gets
    /// at most `shards` times them.
    pub fn start_sharded(
        runtime: &tokio::runtime::Handle,
        shards: usize,
        make_engine: impl Fn(usize) -> Engine,
        storage: Arc<dyn Storage>,
        make_observer: impl Fn(usize) -> Box<dyn Observer>,
        config: HostConfig,
    ) -> Host {
        let tasks = if shards <= 1 { 1 } else { shards + 1 };
        let parts = (0..tasks)
            .map(|i| (make_engine(i), make_observer(i)))
            .collect();
        Host::start_tasks(runtime, parts, storage, config)
    }

    /// Starts one engine task per entry of `parts` (the first is the door when there are
    /// several), the storage thread, and their supervisors.
    fn start_tasks(
        runtime: &tokio::runtime::Handle,
        parts: Vec<(Engine, Box<dyn Observer>)>,
        storage: Arc<dyn Storage>,
        config: HostConfig,
    ) -> Host {
        let n = parts.len();
        let (ops_tx, ops_rx) = std_mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(Some(ops_tx.clone())));
        let max_batch = config.max_batch;
        if config.unsafe_ack_before_flush {
            tracing::warn!(
                "UNSAFE: writes are reported before they are flushed (a test control); \
                 acknowledged changes WILL be lost in a crash"
            );
        }
        let worker = StorageWorker {
            storage: storage.clone(),
            unflushed: false,
            ack_before_flush: config.unsafe_ack_before_flush,
        };
        let mut results_tx = Vec::with_capacity(n);
        let mut results_rx = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            results_tx.push(tx);
            results_rx.push(rx);
        }
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("cairn-storage".into())
            .spawn(move || storage_thread(worker, ops_rx, results_tx, batch_tx, max_batch))
            .expect("spawning the storage thread");
        let origin = Instant::now();
        let origin_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let max_frame_bytes = parts
            .first()
            .map_or(usize::MAX, |(e, _)| e.config().limits.max_frame_bytes);
        let mut controls_tx = Vec::with_capacity(n);
        let mut controls_rx = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            controls_tx.push(tx);
            controls_rx.push(rx);
        }
        let controls: Arc<[mpsc::UnboundedSender<Control>]> = controls_tx.into();
        let mut commands = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        let mut batch_rx = Some(batch_rx);
        for (index, (((engine, observer), control), results)) in parts
            .into_iter()
            .zip(controls_rx)
            .zip(results_rx)
            .enumerate()
        {
            let (tx, rx) = mpsc::channel(4096);
            commands.push(tx);
            let task = EngineLoop {
                engine,
                index,
                controls: controls.clone(),
                conns: HashMap::new(),
                opening: HashMap::new(),
                observer,
                origin,
                queue_bytes: config.outbound_queue_bytes,
                ops: Some(ops_tx.clone()),
                jobs: jobs.clone(),
                stopping: false,
                done: None,
                repeated_closes: Vec::new(),
            };
            // Storage batches are reported once, to the first task's observer.
            let batches = batch_rx.take();
            handles.push(runtime.spawn(engine_task(task, rx, control, results, batches)));
        }
        drop(ops_tx);
        let (state_tx, state) = watch::channel(RunState::Running);
        let state_tx = Arc::new(state_tx);
        let running = Arc::new(AtomicUsize::new(n));
        for engine in handles {
            let (state_tx, running, controls) =
                (state_tx.clone(), running.clone(), controls.clone());
            // The supervisor: a panic would otherwise end the engine task silently, every
            // socket would drop and nothing would say why or recover.
            runtime.spawn(async move {
                let end = match engine.await {
                    Ok(EngineExit::Requested) | Ok(EngineExit::HandlesDropped) => {
                        RunState::ShutDown
                    }
                    Ok(EngineExit::StorageStopped) => {
                        tracing::error!(
                            "the storage thread stopped; the sync engine stopped with it"
                        );
                        RunState::Failed
                    }
                    Err(e) if e.is_panic() => {
                        // The panic message is not logged here: it may quote data.
                        tracing::error!("the sync engine panicked and stopped");
                        RunState::Failed
                    }
                    // Cancelled: the runtime itself is shutting down.
                    Err(_) => RunState::ShutDown,
                };
                if end == RunState::Failed {
                    state_tx.send_replace(RunState::Failed);
                    // The other tasks of a sharded host stop too (closing their sockets and
                    // flushing), so no socket stays half served.
                    for c in controls.iter() {
                        let _ = c.send(Control::Stop);
                    }
                } else if running.fetch_sub(1, Ordering::AcqRel) == 1 {
                    state_tx.send_if_modified(|s| {
                        let was_running = *s == RunState::Running;
                        if was_running {
                            *s = end;
                        }
                        was_running
                    });
                }
            });
        }
        Host {
            tasks: commands.into(),
            next_conn: Arc::new(AtomicU64::new(1)),
            outbound_queue: config.outbound_queue,
            max_frame_bytes,
            state,
            origin_unix_ms,
            jobs,
            storage: SharedStorage(storage),
        }
    }

    /// Document shards: 1 when a single task serves everything.
    pub fn shards(&self) -> usize {
        self.tasks.len().saturating_sub(1).max(1)
    }

    /// The task that serves `doc`.
    fn task_of(&self, doc: &DocumentId) -> usize {
        if self.tasks.len() == 1 {
            0
        } else {
            1 + document_shard(doc, self.tasks.len() - 1)
        }
    }
    /// The engine clock's origin in Unix milliseconds: `Timestamp` zero as wall time. An
    /// access policy that needs wall time (guest expiry) adds it to the engine's `now`.
    pub fn origin_unix_ms(&self) -> u64 {
        self.origin_unix_ms
    }

    /// A [`Storage`] for writers outside the engine (the relay's membership records):
    /// reads go to the store, and every write goes through the storage thread, which takes
    /// it into its next batch and answers once that batch's flush succeeded. So these
    /// writes follow the engine's durability rule and never race its flushes. Its calls
    /// block: use them from blocking threads, not the async runtime.
    pub fn storage_writer(&self) -> Arc<dyn Storage> {
        Arc::new(HostStorage {
            jobs: self.jobs.clone(),
            storage: self.storage.0.clone(),
        })
    }

    /// Runs `f` on the storage thread between two batches: every write acknowledged before
    /// it is flushed, none is half applied while it runs, and writes that arrive meanwhile
    /// queue behind it (they wait, none is refused). For work that needs the whole store
    /// consistent: a backup, a store rewrite. `f` is queued when this is called, not when
    /// the future is polled. A panic in `f` is caught and reported as [`HostStopped`].
    pub fn exclusive<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> impl std::future::Future<Output = Result<R, HostStopped>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let job = Job::Exclusive(Box::new(move || {
            if let Ok(r) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let _ = tx.send(r);
            } else {
                tracing::error!("exclusive storage work panicked");
            }
        }));
        let sent = match &*self.jobs.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        async move {
            if !sent {
                return Err(HostStopped);
            }
            rx.await.map_err(|_| HostStopped)
        }
    }

    /// True while the engine task runs: false after a requested [`Host::shutdown`] and
    /// after the engine stopped on its own (see [`Host::stopped`]).
    pub fn is_running(&self) -> bool {
        *self.state.borrow() == RunState::Running
    }

    /// Resolves when the engine task has ended for any reason other than a requested
    /// shutdown (a panic, or the storage thread stopped). Never resolves after a requested
    /// [`Host::shutdown`].
    pub async fn stopped(&self) {
        let mut state = self.state.clone();
        let failed = state.wait_for(|s| *s == RunState::Failed).await.is_ok();
        if !failed {
            // The supervisor ended with another state: the engine never fails from here.
            std::future::pending::<()>().await;
        }
    }

    async fn send(&self, cmd: Command) -> Result<(), HostStopped> {
        self.send_to(0, cmd).await
    }

    async fn send_to(&self, task: usize, cmd: Command) -> Result<(), HostStopped> {
        self.tasks[task].send(cmd).await.map_err(|_| HostStopped)
    }

    /// Registers a new connection with the engine.
    pub async fn open(
        &self,
        direction: Direction,
        identity: Option<String>,
    ) -> Result<ConnectionHandle, HostStopped> {
        self.open_as(direction, identity, None).await
    }

    /// Registers a new connection on which we present `local_peer` rather than the
    /// engine's own peer id (see [`Input::Connected`]).
    pub async fn open_as(
        &self,
        direction: Direction,
        identity: Option<String>,
        local_peer: Option<PeerId>,
    ) -> Result<ConnectionHandle, HostStopped> {
        let conn = ConnectionId::new(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(self.outbound_queue);
        let bytes = Arc::new(AtomicUsize::new(0));
        let (gate, gate_rx) = watch::channel(Gate::Pending);
        // The door (or the only task) runs the handshake.
        self.send(Command::Open {
            conn,
            direction,
            identity,
            local_peer,
            outbound: Outlet {
                tx,
                bytes: bytes.clone(),
                gate: Arc::new(gate),
            },
        })
        .await?;
        let gate = (self.tasks.len() > 1).then_some(gate_rx);
        Ok(ConnectionHandle {
            input: ConnectionInput {
                conn,
                host: self.clone(),
                gate,
            },
            outbound: OutboundQueue { rx, bytes },
        })
    }

    /// Runs `f` inside the engine task and returns its result. On a sharded host
    /// ([`Host::start_sharded`]) that is the door, which holds the connections but no
    /// document: use [`Host::call_doc`] or [`Host::call_all`] for documents.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine, Timestamp) -> R + Send + 'static,
    ) -> Result<R, HostStopped> {
        self.call_on(0, f).await
    }

    /// Runs `f` inside the engine task that serves `doc` and returns its result.
    pub async fn call_doc<R: Send + 'static>(
        &self,
        doc: DocumentId,
        f: impl FnOnce(&mut Engine, Timestamp) -> R + Send + 'static,
    ) -> Result<R, HostStopped> {
        self.call_on(self.task_of(&doc), f).await
    }

    /// Runs `f` inside every engine task (the door first, then each shard) and returns
    /// their results in that order; one result on a host with one task.
    pub async fn call_all<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Engine, Timestamp) -> R + Send + Clone + 'static,
    ) -> Result<Vec<R>, HostStopped> {
        let mut answers = Vec::with_capacity(self.tasks.len());
        // Queued on every task first, so they run side by side.
        for task in 0..self.tasks.len() {
            let (tx, rx) = oneshot::channel();
            let f = f.clone();
            self.send_to(
                task,
                Command::Call(Box::new(move |e, now| {
                    let _ = tx.send(f(e, now));
                })),
            )
            .await?;
            answers.push(rx);
        }
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            out.push(rx.await.map_err(|_| HostStopped)?);
        }
        Ok(out)
    }

    /// The engines' counters together: connections as the door (or the only task) counts
    /// them, everything else summed over the tasks.
    pub async fn stats(&self) -> Result<Stats, HostStopped> {
        let all = self.call_all(|e, _| e.stats()).await?;
        let mut sum = Stats {
            connections: all.first().map_or(0, |s| s.connections),
            ..Stats::default()
        };
        for s in all {
            sum.documents += s.documents;
            sum.documents_loaded += s.documents_loaded;
            sum.storage_tasks += s.storage_tasks;
            sum.loaded_ops += s.loaded_ops;
            sum.timers += s.timers;
        }
        Ok(sum)
    }

    async fn call_on<R: Send + 'static>(
        &self,
        task: usize,
        f: impl FnOnce(&mut Engine, Timestamp) -> R + Send + 'static,
    ) -> Result<R, HostStopped> {
        let (tx, rx) = oneshot::channel();
        self.send_to(
            task,
            Command::Call(Box::new(move |e, now| {
                let _ = tx.send(f(e, now));
            })),
        )
        .await?;
        rx.await.map_err(|_| HostStopped)
    }

    /// Closes every connection, lets in-flight writes finish and flush, and stops.
    pub async fn shutdown(&self) {
        let mut waits = Vec::with_capacity(self.tasks.len());
        for task in 0..self.tasks.len() {
            let (tx, rx) = oneshot::channel();
            if self.send_to(task, Command::Shutdown(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
    }
}

/// Which of `shards` document shards serves `doc` (`0..shards`): a fixed hash of the id's
/// bytes (FNV-1a, then mixed), so the same document lands on the same shard in every run.
pub fn document_shard(doc: &DocumentId, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in doc.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits depend on the bytes' low bits only: mix the high ones in first.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    // The remainder is below `shards`, a usize.
    (h % shards as u64) as usize
}

/// See [`Host::storage_writer`].
struct HostStorage {
    jobs: Arc<Mutex<Option<std_mpsc::Sender<Job>>>>,
    storage: Arc<dyn Storage>,
}

impl Storage for HostStorage {
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
        self.storage.load(key)
    }
    fn load_range(&self, prefix: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
        self.storage.load_range(prefix)
    }
    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
        self.write_batch(&[(key.to_vec(), Some(data.to_vec()))])
    }
    fn delete(&self, key: &[String]) -> Result<(), StoreError> {
        self.write_batch(&[(key.to_vec(), None)])
    }
    fn flush(&self) -> Result<(), StoreError> {
        // Every write here is flushed before it returns.
        Ok(())
    }
    fn write_batch(&self, writes: &[(StorageKey, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        let (done, answer) = std_mpsc::channel();
        let job = Job::External(ExternalWrite {
            writes: writes.to_vec(),
            done,
        });
        let sent = match &*self.jobs.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Closed);
        }
        answer.recv().unwrap_or(Err(StoreError::Closed))
    }
}

/// Runs storage ops in batches with one flush per batch, and keeps the durability rules:
/// a write is reported done only after a flush succeeded, and after a failed flush no read
/// is answered until a flush succeeds again, so a reload never reveals a write that is not
/// durable (sled, for one, keeps a write it could not flush readable in memory).
struct StorageWorker {
    storage: Arc<dyn Storage>,
    /// A flush failed and none has succeeded since: the store may hold writes that are not
    /// durable, and reads would reveal them.
    unflushed: bool,
    /// The negative control of the durability tests: report writes before flushing them.
    ack_before_flush: bool,
}

/// One op of a batch and its result.
struct Done {
    /// The engine task it is for.
    task_of: usize,
    task: TaskId,
    write: bool,
    /// A read that ran after a write of the same batch (it may see that write).
    after_write: bool,
    result: Result<StorageOutcome, StoreError>,
}

/// An external write's result, reported after the batch's flush.
struct External {
    done: std_mpsc::Sender<Result<(), StoreError>>,
    result: Result<(), StoreError>,
}

/// The error every write of a batch whose flush failed gets: the flush's own kind, so a full
/// disk still reads as one.
fn flush_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io(io) => StoreError::Io(std::io::Error::new(io.kind(), "flush failed")),
        StoreError::Corrupt { detail } => StoreError::Corrupt {
            detail: detail.clone(),
        },
        StoreError::Closed => StoreError::Closed,
        StoreError::TooNew { found, supported } => StoreError::TooNew {
            found: *found,
            supported: *supported,
        },
        StoreError::BadBackup { detail } => StoreError::BadBackup {
            detail: detail.clone(),
        },
    }
}

impl StorageWorker {
    /// Before a read: if an earlier flush failed, retry it; the read may run only once
    /// everything the store holds is durable.
    fn ready_to_read(&mut self) -> Result<(), StoreError> {
        if self.unflushed {
            self.storage.flush().map_err(|e| flush_error(&e))?;
            tracing::info!("flush succeeded again after a failure; reads resume");
            self.unflushed = false;
        }
        Ok(())
    }

    fn run_batch(&mut self, batch: Vec<Job>) -> (Vec<Done>, Vec<External>, usize) {
        let mut done = Vec::with_capacity(batch.len());
        let mut externals = Vec::new();
        let mut writes = 0;
        for job in batch {
            let (task_of, task, op) = match job {
                Job::Engine(task_of, task, op) => (task_of, task, op),
                // The thread runs these between batches and never puts one in a batch.
                Job::Exclusive(f) => {
                    f();
                    continue;
                }
                Job::External(ExternalWrite { writes: w, done }) => {
                    writes += w.len();
                    let result = w.iter().try_for_each(|(key, value)| match value {
                        Some(v) => self.storage.put(key, v),
                        None => self.storage.delete(key),
                    });
                    externals.push(External { done, result });
                    continue;
                }
            };
            let write = op.is_write();
            let result = if write {
                writes += 1;
                self.storage.apply(&op)
            } else {
                self.ready_to_read().and_then(|()| self.storage.apply(&op))
            };
            done.push(Done {
                task_of,
                task,
                write,
                after_write: !write && writes > 0,
                result,
            });
        }
        (done, externals, writes)
    }

    fn flush(&mut self, done: &mut [Done], externals: &mut [External], writes: usize) {
        if writes == 0 {
            return;
        }
        if let Err(e) = self.storage.flush() {
            for x in externals.iter_mut() {
                if x.result.is_ok() {
                    x.result = Err(flush_error(&e));
                }
            }
            tracing::error!(error = %e, writes, disk_full = e.is_disk_full(), "flush failed");
            self.unflushed = true;
            // Nothing written in this batch is durable, and a read after one of its writes
            // may have seen it.
            for d in done.iter_mut() {
                if d.result.is_ok() && (d.write || d.after_write) {
                    d.result = Err(flush_error(&e));
                }
            }
        } else {
            self.unflushed = false;
        }
    }
}

fn storage_thread(
    mut worker: StorageWorker,
    ops: std_mpsc::Receiver<Job>,
    results: Vec<mpsc::UnboundedSender<(TaskId, Result<StorageOutcome, StoreError>)>>,
    batches: mpsc::UnboundedSender<(usize, usize, Duration)>,
    max_batch: usize,
) {
    // A result for a task that has ended is dropped; the thread ends once every task has.
    let report = |d: Done| {
        let _ = results[d.task_of].send((d.task, d.result));
        !results.iter().all(|r| r.is_closed())
    };
    // An exclusive job met while a batch was gathered: it runs after that batch's flush.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match ops.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        if let Job::Exclusive(f) = first {
            f();
            continue;
        }
        let started = Instant::now();
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match ops.try_recv() {
                Ok(job @ Job::Exclusive(_)) => {
                    held = Some(job);
                    break;
                }
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let (mut done, mut externals, writes) = worker.run_batch(batch);
        let n = done.len() + externals.len();
        if worker.ack_before_flush {
            // The negative control: results leave before the flush, as a broken host would.
            for d in done {
                if !report(d) {
                    return;
                }
            }
            worker.flush(&mut [], &mut externals, writes);
        } else {
            worker.flush(&mut done, &mut externals, writes);
            for d in done {
                if !report(d) {
                    return;
                }
            }
        }
        for x in externals {
            let _ = x.done.send(x.result);
        }
        let _ = batches.send((n, writes, started.elapsed()));
    }
}

/// One engine task's state: its engine, the outlets of the connections it serves, and its
/// links to the storage thread and (on a sharded host) to the other tasks.
struct EngineLoop {
    engine: Engine,
    /// This task's index: 0 is the only task, or the door of a sharded host.
    index: usize,
    /// Every task's control channel (this one's included); one entry on a single task.
    controls: Arc<[mpsc::UnboundedSender<Control>]>,
    conns: HashMap<ConnectionId, Outlet>,
    /// The door's record of each connection in its handshake, to attach it to the shards.
    opening: HashMap<ConnectionId, Opening>,
    observer: Box<dyn Observer>,
    origin: Instant,
    queue_bytes: usize,
    /// `None` once stopping: dropping every sender lets the storage thread finish what is
    /// queued, flush, and exit; results are taken until it does.
    ops: Option<std_mpsc::Sender<Job>>,
    jobs: Arc<Mutex<Option<std_mpsc::Sender<Job>>>>,
    stopping: bool,
    /// Who asked for the shutdown, answered once everything is flushed.
    done: Option<oneshot::Sender<()>>,
    /// Connections this task closed after another task had closed them already (in the
    /// outputs being handled): their `ConnectionClosed` was counted by the first.
    repeated_closes: Vec<ConnectionId>,
}

/// What the door keeps of a connection until its handshake ends.
struct Opening {
    direction: Direction,
    identity: Option<String>,
    local_peer: Option<PeerId>,
}

impl EngineLoop {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.origin.elapsed().as_millis() as u64)
    }

    fn input(&mut self, input: Input) {
        let now = self.now();
        self.engine.handle_input(now, input);
    }

    /// Whether this is the door of a sharded host.
    fn is_door(&self) -> bool {
        self.index == 0 && self.controls.len() > 1
    }

    /// Tells every other task that `conn` is gone, so none keeps serving it.
    fn tell_others(&self, conn: ConnectionId) {
        for (i, c) in self.controls.iter().enumerate() {
            if i != self.index {
                let _ = c.send(Control::Disconnected { conn });
            }
        }
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Attach {
                conn,
                direction,
                identity,
                local_peer,
                peer,
                outbound,
            } => {
                if self.stopping {
                    return;
                }
                self.conns.insert(conn, outbound);
                self.input(Input::Attached {
                    conn,
                    direction,
                    identity,
                    local_peer,
                    peer,
                });
            }
            Control::Disconnected { conn } => {
                self.opening.remove(&conn);
                if self.conns.remove(&conn).is_some() {
                    self.input(Input::Disconnected { conn });
                }
            }
            Control::Stop => self.stop(None),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Open {
                conn,
                direction,
                identity,
                local_peer,
                outbound,
            } => {
                self.conns.insert(conn, outbound);
                if self.is_door() {
                    self.opening.insert(
                        conn,
                        Opening {
                            direction,
                            identity: identity.clone(),
                            local_peer: local_peer.clone(),
                        },
                    );
                }
                self.input(Input::Connected {
                    conn,
                    direction,
                    identity,
                    local_peer,
                });
            }
            Command::Frame { conn, frame } => {
                self.observer.frame_in(frame.len());
                self.input(Input::Frame { conn, frame });
            }
            Command::Message { conn, msg, bytes } => {
                self.observer.frame_in(bytes);
                self.input(Input::Message { conn, msg, bytes });
            }
            Command::Closed { conn } => {
                if let Some(out) = self.conns.remove(&conn) {
                    out.gate.send_replace(Gate::Closed);
                }
                self.opening.remove(&conn);
                // A reader dropped while its join was with the door reports the close to
                // every task, maybe before the door attached it to the shards: this
                // follows any attach on each shard's control queue, so none keeps it.
                if self.is_door() {
                    self.tell_others(conn);
                }
                self.input(Input::Disconnected { conn });
            }
            Command::Call(f) => {
                let now = self.now();
                f(&mut self.engine, now);
            }
            Command::Shutdown(done) => self.stop(Some(done)),
        }
    }

    /// Closes every connection and lets the storage thread finish; the task ends once
    /// its writes are done.
    fn stop(&mut self, done: Option<oneshot::Sender<()>>) {
        if done.is_some() {
            self.done = done;
        }
        if self.stopping {
            return;
        }
        self.stopping = true;
        for (_, out) in self.conns.drain() {
            out.gate.send_replace(Gate::Closed);
            let _ = out.tx.try_send(Outbound::Close(CloseReason::PeerLeft));
        }
        self.opening.clear();
        self.ops = None;
        *self.jobs.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Carries out everything the engine asked for.
    fn drain_outputs(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { conn, frame } => {
                    let Some(out) = self.conns.get(&conn) else {
                        continue;
                    };
                    // Another task closed it and this one has not heard yet: the socket's
                    // close is queued, nothing after it would be written.
                    if self.controls.len() > 1 && *out.gate.borrow() == Gate::Closed {
                        continue;
                    }
                    let len = frame.len();
                    let refused = match out.push(frame, self.queue_bytes) {
                        Ok(()) => {
                            self.observer.frame_out(len);
                            continue;
                        }
                        Err(refused) => refused,
                    };
                    // Close rather than drop a frame: dropping the sender lets the writer
                    // send what is queued, then close; the peer resyncs when it reconnects.
                    match refused {
                        Refused::Frames => {
                            tracing::info!(%conn, "outbound queue full; closing so the peer resyncs");
                            self.observer.backpressure_close();
                        }
                        Refused::Bytes => {
                            tracing::info!(%conn, queued_bytes = out.bytes.load(Ordering::Relaxed), frame_bytes = len, "outbound queue over its byte bound; closing so the peer resyncs");
                            self.observer.queue_bytes_close();
                        }
                    }
                    if let Some(out) = self.conns.remove(&conn) {
                        out.gate.send_replace(Gate::Closed);
                    }
                    self.opening.remove(&conn);
                    self.tell_others(conn);
                    self.input(Input::Disconnected { conn });
                }
                Output::Close { conn, reason } => {
                    if let Some(out) = self.conns.remove(&conn) {
                        if out.gate.send_replace(Gate::Closed) == Gate::Closed {
                            self.repeated_closes.push(conn);
                        } else {
                            let _ = out.tx.try_send(Outbound::Close(reason));
                        }
                        self.tell_others(conn);
                    }
                    self.opening.remove(&conn);
                }
                Output::Storage { task, op } => match &self.ops {
                    Some(ops) => {
                        if ops.send(Job::Engine(self.index, task, op)).is_err() {
                            self.input(Input::StorageDone {
                                task,
                                result: Err(StoreError::Closed),
                            });
                        }
                    }
                    None => self.input(Input::StorageDone {
                        task,
                        result: Err(StoreError::Closed),
                    }),
                },
                Output::Event(e) => {
                    match &e {
                        Event::PeerConnected { conn, peer, .. } if self.is_door() => {
                            self.attach(*conn, peer);
                        }
                        Event::ConnectionClosed { conn, .. }
                            if self.repeated_closes.contains(conn) =>
                        {
                            self.repeated_closes.retain(|c| c != conn);
                            continue;
                        }
                        _ => {}
                    }
                    self.observer.event(&e);
                }
            }
        }
        self.repeated_closes.clear();
    }

    /// The door opened `conn`: every shard gets it, open, before its reader is released
    /// (the shards take control messages before frames), so its first document message
    /// finds it there.
    fn attach(&mut self, conn: ConnectionId, peer: &PeerId) {
        let (Some(o), Some(out)) = (self.opening.remove(&conn), self.conns.get(&conn)) else {
            return;
        };
        for c in self.controls.iter().skip(1) {
            let _ = c.send(Control::Attach {
                conn,
                direction: o.direction,
                identity: o.identity.clone(),
                local_peer: o.local_peer.clone(),
                peer: peer.clone(),
                outbound: out.clone(),
            });
        }
        out.gate.send_replace(Gate::Open);
    }
}

async fn engine_task(
    mut task: EngineLoop,
    mut commands: mpsc::Receiver<Command>,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut results: mpsc::UnboundedReceiver<(TaskId, Result<StorageOutcome, StoreError>)>,
    mut batches: Option<mpsc::UnboundedReceiver<(usize, usize, Duration)>>,
) -> EngineExit {
    // The storage thread has ended and every result it sent was taken.
    let mut storage_done = false;
    let exit = loop {
        let deadline = task.engine.poll_timeout().map(|t| {
            let ms = t.as_millis().saturating_sub(task.now().as_millis());
            tokio::time::Instant::now() + Duration::from_millis(ms)
        });
        tokio::select! {
            Some(c) = control.recv() => task.on_control(c),
            cmd = commands.recv(), if !task.stopping => {
                // An attach sent before a reader was released is taken before its frames.
                while let Ok(c) = control.try_recv() {
                    task.on_control(c);
                }
                match cmd {
                    None => break EngineExit::HandlesDropped,
                    Some(cmd) => task.on_command(cmd),
                }
            }
            done = results.recv(), if !storage_done => match done {
                Some((id, result)) => {
                    task.input(Input::StorageDone { task: id, result });
                    while let Ok((id, result)) = results.try_recv() {
                        task.input(Input::StorageDone { task: id, result });
                    }
                }
                // Before a shutdown the thread only ends by panicking: nothing the engine
                // acknowledges from now on could be durable, so stop and say so.
                None if !task.stopping => break EngineExit::StorageStopped,
                None => storage_done = true,
            },
            Some((n, writes, elapsed)) = next_batch(&mut batches) => {
                task.observer.storage_batch(n, writes, elapsed);
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                let now = task.now();
                task.engine.handle_timeout(now);
            }
            else => break EngineExit::Requested,
        }
        task.drain_outputs();
        if task.stopping && (task.engine.stats().storage_tasks == 0 || storage_done) {
            break EngineExit::Requested;
        }
    };
    if let Some(done) = task.done.take() {
        let _ = done.send(());
    }
    exit
}

/// The next storage batch report, for the task that takes them; never for the others.
async fn next_batch(
    batches: &mut Option<mpsc::UnboundedReceiver<(usize, usize, Duration)>>,
) -> Option<(usize, usize, Duration)> {
    match batches {
        Some(b) => b.recv().await,
        None => std::future::pending().await,
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
    use crate::store::{MemoryStore, StorageKey};
    use crate::wire::{DocMessage, Message, PeerMetadata};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts closes: (frame bound, byte bound).
    #[derive(Clone, Default)]
    struct Closes(Arc<AtomicUsize>, Arc<AtomicUsize>);
    impl Observer for Closes {
        fn event(&mut self, _: &Event) {}
        fn backpressure_close(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn queue_bytes_close(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
    impl Closes {
        fn frames(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
        fn bytes(&self) -> usize {
            self.1.load(Ordering::SeqCst)
        }
        /// Waits (bounded) until some close was counted.
        async fn wait_any(&self) {
            for _ in 0..500 {
                if self.frames() + self.bytes() > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    fn relay_host(observer: Closes, config: HostConfig) -> Host {
        let store = Arc::new(MemoryStore::default());
        let engine = Engine::new(EngineConfig::new(Role::Relay, PeerId::from("relay"), 1));
        Host::start(engine, store, Box::new(observer), config)
    }

    fn join() -> Vec<u8> {
        join_as("p")
    }

    fn join_as(peer: &str) -> Vec<u8> {
        Message::Join {
            sender_id: peer.into(),
            peer_metadata: PeerMetadata::default(),
            supported_protocol_versions: vec!["1".into()],
        }
        .encode()
    }

    /// A request for an unknown document: the relay answers each one (after a load).
    fn request(i: u8) -> Vec<u8> {
        use automerge::sync::SyncDoc;
        let empty = automerge::Automerge::new();
        Message::Request(DocMessage {
            sender_id: "p".into(),
            target_id: "relay".into(),
            document_id: DocumentId::from_bytes([i; 16]),
            data: empty
                .generate_sync_message(&mut automerge::sync::State::new())
                .unwrap()
                .encode(),
        })
        .encode()
    }

    /// Takes everything left in the queue: the frames' lengths, until the queue ends.
    async fn drain(outbound: &mut OutboundQueue) -> Vec<usize> {
        let mut got = Vec::new();
        while let Some(Outbound::Frame(f)) = outbound.recv().await {
            Message::decode(&f).expect("a whole protocol message");
            got.push(f.len());
        }
        got
    }

    #[tokio::test]
    async fn a_reader_that_holds_too_many_bytes_is_closed_not_dropped_frames() {
        const BOUND: usize = 600;
        let closes = Closes::default();
        let host = relay_host(
            closes.clone(),
            HostConfig {
                outbound_queue_bytes: BOUND,
                ..HostConfig::default()
            },
        );
        let mut handle = host.open(Direction::Incoming, None).await.unwrap();
        handle.input.frame(join()).await.unwrap();
        // Twenty answers are far more than BOUND bytes and far fewer than the frame bound.
        for i in 0..20u8 {
            let _ = handle.input.frame(request(i)).await;
        }
        closes.wait_any().await;
        assert_eq!((closes.frames(), closes.bytes()), (0, 1));
        let got = drain(&mut handle.outbound).await;
        let total: usize = got.iter().sum();
        assert!(
            got.len() < 21,
            "every answer was queued: {got:?} bytes (bound {BOUND})"
        );
        assert!(
            total <= BOUND,
            "{total} bytes were queued past the {BOUND}-byte bound: {got:?}"
        );
        assert_eq!(handle.outbound.queued_bytes(), 0);
        host.shutdown().await;
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_byte_bound_goes_into_an_empty_queue_only() {
        let closes = Closes::default();
        let host = relay_host(
            closes.clone(),
            HostConfig {
                // Every protocol message is larger than this.
                outbound_queue_bytes: 1,
                ..HostConfig::default()
            },
        );
        let mut handle = host.open(Direction::Incoming, None).await.unwrap();
        handle.input.frame(join()).await.unwrap();
        let Some(Outbound::Frame(peer)) = handle.outbound.recv().await else {
            panic!("the handshake answer was not delivered");
        };
        assert_eq!(Message::decode(&peer).unwrap().kind(), "peer");
        // Taken as it comes: each answer finds the queue empty.
        handle.input.frame(request(1)).await.unwrap();
        assert!(matches!(
            handle.outbound.recv().await,
            Some(Outbound::Frame(_))
        ));
        // Not taken: the first answer fills the queue, the second closes the connection.
        handle.input.frame(request(2)).await.unwrap();
        handle.input.frame(request(3)).await.unwrap();
        closes.wait_any().await;
        assert_eq!((closes.frames(), closes.bytes()), (0, 1));
        assert_eq!(drain(&mut handle.outbound).await.len(), 1);
        host.shutdown().await;
    }

    #[tokio::test]
    async fn an_engine_panic_is_reported_and_a_shutdown_is_not() {
        let host = relay_host(Closes::default(), HostConfig::default());
        assert!(host.is_running());
        let handle = host.open(Direction::Incoming, None).await.unwrap();
        let panicked = host.call::<()>(|_, _| panic!("a bug in the engine")).await;
        assert!(panicked.is_err(), "the call returned after a panic");
        tokio::time::timeout(Duration::from_secs(10), host.stopped())
            .await
            .expect("`stopped` resolves after the engine panicked");
        assert!(!host.is_running());
        // The connection's queue ends, so its writer closes the socket.
        let mut outbound = handle.outbound;
        assert!(outbound.recv().await.is_none());
        assert!(host.call(|e, _| e.stats()).await.is_err());

        let host = relay_host(Closes::default(), HostConfig::default());
        host.shutdown().await;
        for _ in 0..500 {
            if !host.is_running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!host.is_running());
        tokio::select! {
            biased;
            _ = host.stopped() => panic!("a requested shutdown was reported as a failure"),
            _ = tokio::task::yield_now() => {}
        }
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_closed_not_dropped_frames() {
        let closes = Closes::default();
        let host = relay_host(
            closes.clone(),
            HostConfig {
                outbound_queue: 4,
                ..HostConfig::default()
            },
        );
        let handle = host.open(Direction::Incoming, None).await.unwrap();
        handle.input.frame(join()).await.unwrap();
        // Each request for an unknown document is answered; nobody reads the answers.
        for i in 0..20u8 {
            let _ = handle.input.frame(request(i)).await;
        }
        // Answers come once each load finishes on the storage thread.
        for _ in 0..500 {
            if closes.frames() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((closes.frames(), closes.bytes()), (1, 0));
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

    /// How [`Gated`]'s flush behaves.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum FlushMode {
        Succeed,
        /// Fails with "no space left on device".
        Fail,
        /// Waits until the mode changes.
        Block,
    }

    /// A memory store whose writes are readable at once (as sled's are) and whose flush the
    /// test controls.
    #[derive(Default)]
    struct Gated {
        inner: MemoryStore,
        mode: std::sync::Mutex<Option<FlushMode>>,
        changed: std::sync::Condvar,
        in_flush: AtomicUsize,
    }

    impl Gated {
        fn set(&self, mode: FlushMode) {
            *self.mode.lock().unwrap() = Some(mode);
            self.changed.notify_all();
        }
    }

    impl Storage for Gated {
        fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.load(key)
        }
        fn load_range(&self, p: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
            self.inner.load_range(p)
        }
        fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
            self.inner.put(key, data)
        }
        fn delete(&self, key: &[String]) -> Result<(), StoreError> {
            self.inner.delete(key)
        }
        fn flush(&self) -> Result<(), StoreError> {
            let mut mode = self.mode.lock().unwrap();
            self.in_flush.fetch_add(1, Ordering::SeqCst);
            while *mode == Some(FlushMode::Block) {
                mode = self.changed.wait(mode).unwrap();
            }
            match *mode {
                Some(FlushMode::Fail) => Err(StoreError::Io(std::io::Error::from_raw_os_error(28))),
                _ => Ok(()),
            }
        }
    }

    /// A peer's sync message carrying one new change, and that change's hash.
    fn one_change(doc: DocumentId) -> (Vec<u8>, automerge::ChangeHash) {
        use automerge::sync::SyncDoc;
        use automerge::transaction::Transactable;
        let mut am = automerge::Automerge::new();
        let mut tx = am.transaction();
        tx.put(automerge::ROOT, "agenda", "check-in").unwrap();
        tx.commit();
        let hash = am.get_heads()[0];
        let mut state = automerge::sync::State::new();
        // Tell the sender the relay has nothing, so the first message carries the change.
        let empty = automerge::Automerge::new();
        let mut theirs = automerge::sync::State::new();
        let hello = empty.generate_sync_message(&mut theirs).unwrap();
        am.receive_sync_message(&mut state, hello).unwrap();
        let data = am.generate_sync_message(&mut state).unwrap().encode();
        let frame = Message::Request(DocMessage {
            sender_id: "p".into(),
            target_id: "relay".into(),
            document_id: doc,
            data,
        })
        .encode();
        (frame, hash)
    }

    /// Whether a frame is a sync message from the relay whose heads include `hash`.
    fn reveals(frame: &[u8], hash: &automerge::ChangeHash) -> bool {
        match Message::decode(frame) {
            Ok(Message::Sync(d)) | Ok(Message::Request(d)) => {
                automerge::sync::Message::decode(&d.data).is_ok_and(|m| m.heads.contains(hash))
            }
            _ => false,
        }
    }

    /// Every frame queued right now (the engine has handled everything sent before).
    async fn queued_now(host: &Host, outbound: &mut OutboundQueue) -> Vec<Vec<u8>> {
        host.call_all(|_, _| ()).await.unwrap();
        let mut got = Vec::new();
        while let Ok(Some(Outbound::Frame(f))) =
            tokio::time::timeout(Duration::from_millis(20), outbound.recv()).await
        {
            got.push(f);
        }
        got
    }

    fn gated_host(store: Arc<Gated>) -> Host {
        sharded_host(store, 1)
    }

    /// A relay host over `store` with `shards` document shards (1: a single task).
    fn sharded_host(store: Arc<dyn Storage>, shards: usize) -> Host {
        Host::start_sharded(
            &tokio::runtime::Handle::current(),
            shards,
            |i| {
                Engine::new(EngineConfig::new(
                    Role::Relay,
                    PeerId::from("relay"),
                    i as u64 + 1,
                ))
            },
            store,
            |_| Box::new(Closes::default()),
            HostConfig::default(),
        )
    }

    /// Exclusive work (a backup) sees every write acknowledged before it, and a write
    /// issued while it runs waits behind it (it is neither applied nor refused meanwhile).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exclusive_work_sees_acknowledged_writes_and_holds_later_ones() {
        let store = Arc::new(Gated::default());
        let host = gated_host(store.clone());
        let writer = host.storage_writer();
        let key = |s: &str| -> StorageKey { vec!["cairn-membership".into(), "t".into(), s.into()] };
        let (w, k) = (writer.clone(), key("before"));
        tokio::task::spawn_blocking(move || w.write_batch(&[(k, Some(b"1".to_vec()))]))
            .await
            .unwrap()
            .unwrap();
        let (entered_tx, entered) = std_mpsc::channel::<()>();
        let (release, release_rx) = std_mpsc::channel::<()>();
        let (s, k) = (store.clone(), key("before"));
        let work = tokio::spawn(host.exclusive(move || {
            let saw = s.load(&k).unwrap();
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            saw
        }));
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the exclusive work runs");
        let (w, k) = (writer.clone(), key("during"));
        let pending = std::thread::spawn(move || w.write_batch(&[(k, Some(b"2".to_vec()))]));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !pending.is_finished(),
            "a write finished during exclusive work"
        );
        assert_eq!(store.inner.load(&key("during")).unwrap(), None);
        release.send(()).unwrap();
        assert_eq!(work.await.unwrap().unwrap(), Some(b"1".to_vec()));
        pending
            .join()
            .unwrap()
            .expect("the held write goes through after it");
        assert_eq!(
            store.inner.load(&key("during")).unwrap(),
            Some(b"2".to_vec())
        );
        host.shutdown().await;
    }

    /// A write through `storage_writer` (membership records) returns only once the storage
    /// thread's flush has succeeded, and a failed flush reaches the writer as an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_external_write_returns_only_after_its_flush() {
        let store = Arc::new(Gated::default());
        let host = gated_host(store.clone());
        let writer = host.storage_writer();
        store.set(FlushMode::Block);
        let key: StorageKey = vec!["cairn-membership".into(), "device".into(), "a".into()];
        let w = writer.clone();
        let k = key.clone();
        let pending = std::thread::spawn(move || w.write_batch(&[(k, Some(b"one".to_vec()))]));
        while store.in_flush.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !pending.is_finished(),
            "returned while its flush was blocked"
        );
        store.set(FlushMode::Fail);
        assert!(pending.join().unwrap().unwrap_err().is_disk_full());
        store.set(FlushMode::Succeed);
        let w = writer.clone();
        let k = key.clone();
        tokio::task::spawn_blocking(move || w.write_batch(&[(k, Some(b"two".to_vec()))]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(writer.load(&key).unwrap(), Some(b"two".to_vec()));
        host.shutdown().await;
        let w = writer.clone();
        let after = tokio::task::spawn_blocking(move || w.write_batch(&[(key, None)]))
            .await
            .unwrap();
        assert!(matches!(after, Err(StoreError::Closed)), "{after:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_frame_reveals_a_change_while_its_flush_blocks() {
        no_frame_reveals_a_change_while_its_flush_blocks_with(1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_frame_reveals_a_change_while_its_flush_blocks_on_a_sharded_host() {
        no_frame_reveals_a_change_while_its_flush_blocks_with(3).await;
    }

    async fn no_frame_reveals_a_change_while_its_flush_blocks_with(shards: usize) {
        let store = Arc::new(Gated::default());
        let host = sharded_host(store.clone(), shards);
        let mut handle = host.open(Direction::Incoming, None).await.unwrap();
        handle.input.frame(join()).await.unwrap();
        let doc = DocumentId::from_bytes([7; 16]);
        let (frame, hash) = one_change(doc);
        store.set(FlushMode::Block);
        handle.input.frame(frame).await.unwrap();
        for _ in 0..1000 {
            if store.in_flush.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            store.in_flush.load(Ordering::SeqCst) > 0,
            "the write never reached flush"
        );
        let early = queued_now(&host, &mut handle.outbound).await;
        assert!(
            !early.iter().any(|f| reveals(f, &hash)),
            "a frame revealed the change while its flush was still running"
        );
        store.set(FlushMode::Succeed);
        let mut revealed = false;
        for _ in 0..200 {
            let frames = queued_now(&host, &mut handle.outbound).await;
            if frames.iter().any(|f| reveals(f, &hash)) {
                revealed = true;
                break;
            }
        }
        assert!(revealed, "the change was never acknowledged once durable");
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_whose_flush_failed_is_not_revealed_by_a_reload() {
        a_change_whose_flush_failed_is_not_revealed_by_a_reload_with(1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_whose_flush_failed_is_not_revealed_by_a_reload_on_a_sharded_host() {
        a_change_whose_flush_failed_is_not_revealed_by_a_reload_with(3).await;
    }

    async fn a_change_whose_flush_failed_is_not_revealed_by_a_reload_with(shards: usize) {
        let store = Arc::new(Gated::default());
        let host = sharded_host(store.clone(), shards);
        let doc = DocumentId::from_bytes([8; 16]);
        let (frame, hash) = one_change(doc);
        store.set(FlushMode::Fail);
        let mut writer = host.open(Direction::Incoming, None).await.unwrap();
        writer.input.frame(join()).await.unwrap();
        writer.input.frame(frame).await.unwrap();
        // The write fails: the writer's connection is closed (its peer resends later) and
        // nothing it received revealed the change.
        let mut seen = Vec::new();
        while let Ok(Some(Outbound::Frame(f))) =
            tokio::time::timeout(Duration::from_secs(10), writer.outbound.recv()).await
        {
            seen.push(f);
        }
        assert!(!seen.iter().any(|f| reveals(f, &hash)));
        // The change is still readable in the store's memory, as it is in sled's; a second
        // peer asking for the document must not get it while the disk is still full.
        assert!(!store.inner.keys().is_empty());
        let mut reader = host.open(Direction::Incoming, None).await.unwrap();
        reader.input.frame(join()).await.unwrap();
        reader.input.frame(request_for(doc)).await.unwrap();
        // The read fails (the flush it retries fails): the reader's connection is closed,
        // so its peer redials and asks again, and nothing it got revealed the change.
        let mut answer = Vec::new();
        let mut closed = false;
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_millis(100), reader.outbound.recv()).await {
                Ok(Some(Outbound::Frame(f))) => answer.push(f),
                Ok(Some(_)) => {}
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => {}
            }
        }
        assert!(
            !answer.iter().any(|f| reveals(f, &hash)),
            "a reload revealed an unflushed change"
        );
        assert!(closed, "the reader was neither answered nor closed");
        // Space again: the next flush makes the change durable, and then it may be served.
        store.set(FlushMode::Succeed);
        let mut later = host.open(Direction::Incoming, None).await.unwrap();
        later.input.frame(join()).await.unwrap();
        later.input.frame(request_for(doc)).await.unwrap();
        let mut revealed = false;
        for _ in 0..200 {
            if queued_now(&host, &mut later.outbound)
                .await
                .iter()
                .any(|f| reveals(f, &hash))
            {
                revealed = true;
                break;
            }
        }
        assert!(
            revealed,
            "the change was not served once the disk had room again"
        );
        host.shutdown().await;
    }

    fn request_for(doc: DocumentId) -> Vec<u8> {
        use automerge::sync::SyncDoc;
        let empty = automerge::Automerge::new();
        Message::Request(DocMessage {
            sender_id: "p".into(),
            target_id: "relay".into(),
            document_id: doc,
            data: empty
                .generate_sync_message(&mut automerge::sync::State::new())
                .unwrap()
                .encode(),
        })
        .encode()
    }

    // ---------------------------------------------------------------- sharded host

    /// Documents spread over every one of `shards` shards (the first ids that reach each).
    fn docs_on_every_shard(shards: usize) -> Vec<DocumentId> {
        let mut docs: Vec<DocumentId> = Vec::new();
        for i in 1..=255u8 {
            let doc = DocumentId::from_bytes([i; 16]);
            if !docs
                .iter()
                .any(|d| document_shard(d, shards) == document_shard(&doc, shards))
            {
                docs.push(doc);
            }
            if docs.len() == shards {
                break;
            }
        }
        assert_eq!(docs.len(), shards, "some shard got no document");
        docs
    }

    /// Waits (bounded) until a frame revealing `hash` arrives; false on timeout.
    async fn revealed(
        host: &Host,
        outbound: &mut OutboundQueue,
        hash: &automerge::ChangeHash,
    ) -> bool {
        for _ in 0..200 {
            if queued_now(host, outbound)
                .await
                .iter()
                .any(|f| reveals(f, hash))
            {
                return true;
            }
        }
        false
    }

    /// Two connections sync documents held by different shards: each change one peer
    /// sends is served to the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_connections_sync_documents_through_shards() {
        let host = sharded_host(Arc::new(MemoryStore::default()), 3);
        assert_eq!(host.shards(), 3);
        let mut writer = host.open(Direction::Incoming, None).await.unwrap();
        writer.input.frame(join_as("w")).await.unwrap();
        let mut reader = host.open(Direction::Incoming, None).await.unwrap();
        reader.input.frame(join_as("r")).await.unwrap();
        for doc in docs_on_every_shard(3) {
            let (frame, hash) = one_change(doc);
            writer.input.frame(frame).await.unwrap();
            assert!(
                revealed(&host, &mut writer.outbound, &hash).await,
                "the writer's change was not acknowledged"
            );
            reader.input.frame(request_for(doc)).await.unwrap();
            assert!(
                revealed(&host, &mut reader.outbound, &hash).await,
                "the reader was not served the change"
            );
        }
        let stats = host.stats().await.unwrap();
        assert_eq!((stats.connections, stats.documents), (2, 3));
        host.shutdown().await;
    }

    /// A takeover (the same peer joins again) closes the old socket on every task: its
    /// queue ends, which happens only once every task let go of it, and a document
    /// message sent on it afterwards gets nothing back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_takeover_closes_the_old_socket_on_every_shard() {
        let host = sharded_host(Arc::new(MemoryStore::default()), 3);
        let docs = docs_on_every_shard(3);
        let mut old = host.open(Direction::Incoming, None).await.unwrap();
        old.input.frame(join()).await.unwrap();
        for doc in &docs {
            old.input.frame(request_for(*doc)).await.unwrap();
        }
        let mut new = host.open(Direction::Incoming, None).await.unwrap();
        new.input.frame(join()).await.unwrap();
        for doc in &docs {
            old.input.frame(request_for(*doc)).await.unwrap();
        }
        let mut closed = None;
        let mut after_close = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), old.outbound.recv()).await {
                Ok(Some(Outbound::Close(reason))) => closed = Some(reason),
                Ok(Some(Outbound::Frame(_))) if closed.is_some() => after_close += 1,
                Ok(Some(Outbound::Frame(_))) => {}
                Ok(None) => break,
                Err(_) => panic!("the old socket's queue never ended: a task still holds it"),
            }
        }
        assert_eq!(closed, Some(CloseReason::Replaced));
        assert_eq!(after_close, 0, "frames were queued behind the close");
        // The new socket is served on every shard.
        for doc in &docs {
            let (frame, hash) = one_change(*doc);
            new.input.frame(frame).await.unwrap();
            assert!(revealed(&host, &mut new.outbound, &hash).await);
        }
        assert_eq!(host.stats().await.unwrap().connections, 1);
        host.shutdown().await;
    }

    /// A join and a sync sent back to back: the sync waits for the door's verdict and
    /// reaches the document's shard (the door holds no document).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_right_behind_a_join_reaches_the_documents_shard() {
        let host = sharded_host(Arc::new(MemoryStore::default()), 3);
        let doc = DocumentId::from_bytes([9; 16]);
        let (frame, hash) = one_change(doc);
        let mut handle = host.open(Direction::Incoming, None).await.unwrap();
        handle.input.frame(join()).await.unwrap();
        handle.input.frame(frame).await.unwrap();
        assert!(revealed(&host, &mut handle.outbound, &hash).await);
        assert_eq!(host.call(|e, _| e.stats().documents).await.unwrap(), 0);
        assert_eq!(
            host.call_doc(doc, |e, _| e.stats().documents)
                .await
                .unwrap(),
            1
        );
        // A refused join closes the connection, and what follows it is dropped unread.
        let mut refused = host.open(Direction::Incoming, None).await.unwrap();
        refused.input.frame(join_as("relay")).await.unwrap();
        refused.input.frame(request_for(doc)).await.unwrap();
        let mut kinds = Vec::new();
        while let Ok(Some(Outbound::Frame(f))) =
            tokio::time::timeout(Duration::from_secs(10), refused.outbound.recv()).await
        {
            kinds.push(Message::decode(&f).unwrap().kind().to_owned());
        }
        assert_eq!(kinds, ["error"]);
        host.shutdown().await;
    }

    /// A panic in one task stops the whole host: reported, and every socket's queue ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_one_shard_stops_every_task() {
        let host = sharded_host(Arc::new(MemoryStore::default()), 2);
        let mut handle = host.open(Direction::Incoming, None).await.unwrap();
        handle.input.frame(join()).await.unwrap();
        let doc = DocumentId::from_bytes([3; 16]);
        let panicked = host
            .call_doc::<()>(doc, |_, _| panic!("a bug in the engine"))
            .await;
        assert!(panicked.is_err());
        tokio::time::timeout(Duration::from_secs(10), host.stopped())
            .await
            .expect("`stopped` resolves after a shard panicked");
        assert!(!host.is_running());
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while handle.outbound.recv().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "a socket stayed open after a shard panicked");
    }

    #[test]
    fn documents_land_on_a_fixed_shard() {
        let doc = DocumentId::from_bytes([1; 16]);
        assert_eq!(document_shard(&doc, 1), 0);
        let a: Vec<usize> = (0..64u8)
            .map(|i| document_shard(&DocumentId::from_bytes([i; 16]), 4))
            .collect();
        assert!(a.iter().all(|s| *s < 4));
        assert!(
            (0..4).all(|s| a.contains(&s)),
            "a shard got none of 64 documents"
        );
        assert_eq!(document_shard(&doc, 4), document_shard(&doc, 4));
    }
}
