//! One engine task: its loop (commands, control messages from the other tasks, storage
//! results, timers) and how it carries out what its engine asks for.

use super::*;

/// One engine task's state: its engine, the outlets of the connections it serves, and its
/// links to the storage thread and (on a sharded host) to the other tasks.
pub(super) struct EngineLoop {
    pub(super) engine: Engine,
    /// This task's index: 0 is the only task, or the door of a sharded host.
    pub(super) index: usize,
    /// Every task's control channel (this one's included); one entry on a single task.
    pub(super) controls: Arc<[mpsc::UnboundedSender<Control>]>,
    pub(super) conns: HashMap<ConnectionId, Outlet>,
    /// The door's record of each connection in its handshake, to attach it to the shards.
    pub(super) opening: HashMap<ConnectionId, Opening>,
    pub(super) observer: Box<dyn Observer>,
    pub(super) origin: Instant,
    pub(super) queue_bytes: usize,
    /// `None` once stopping: dropping every sender lets the storage thread finish what is
    /// queued, flush, and exit; results are taken until it does.
    pub(super) ops: Option<std_mpsc::Sender<Job>>,
    pub(super) jobs: Arc<Mutex<Option<std_mpsc::Sender<Job>>>>,
    pub(super) stopping: bool,
    /// Who asked for the shutdown, answered once everything is flushed.
    pub(super) done: Option<oneshot::Sender<()>>,
    /// Connections this task closed after another task had closed them already (in the
    /// outputs being handled): their `ConnectionClosed` was counted by the first.
    pub(super) repeated_closes: Vec<ConnectionId>,
}

/// What the door keeps of a connection until its handshake ends.
pub(super) struct Opening {
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

pub(super) async fn engine_task(
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
