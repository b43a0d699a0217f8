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
use crate::store::{SharedLock, Storage, StorageKey, StorageOp, StorageOutcome, StoreError};
use crate::time::Timestamp;
use crate::wire::Message;

mod storage;
mod task;
#[cfg(test)]
mod tests;

use storage::{storage_thread, HostStorage, StorageWorker};
use task::{engine_task, EngineLoop};

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

    /// Brings in what other writers of a shared store stored for `doc` (the engine that
    /// serves it runs [`Engine::refresh_document`]; its read then runs on the storage
    /// thread, in order with every other storage task). False when the document is not in
    /// memory.
    pub async fn refresh(&self, doc: DocumentId) -> Result<bool, HostStopped> {
        self.call_doc(doc, move |e, _| e.refresh_document(doc))
            .await
    }

    /// Every document in memory that at least one connection syncs, over every engine task
    /// ([`Engine::loaded_documents_with_peers`]): what a sweep for changes other writers of
    /// a shared store made refreshes.
    pub async fn loaded_documents(&self) -> Result<Vec<DocumentId>, HostStopped> {
        let all = self
            .call_all(|e, _| e.loaded_documents_with_peers())
            .await?;
        Ok(all.into_iter().flatten().collect())
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
