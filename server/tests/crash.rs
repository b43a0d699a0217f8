//! The process-crash test: no acknowledged change is lost when the relay is SIGKILLed.
//!
//! The real `cairn-relay` binary runs on a data directory while a few writers, each a raw
//! websocket peer with its own copies of a few shared documents, make many small changes
//! (now and then a larger one) and sync them. Every sync message the relay sends reveals
//! its heads, which it may do only once they are durable. A writer records the heads, and
//! every change of its own they cover (acknowledged), the moment the frame arrives, tagged
//! with the relay process whose socket carried it.
//!
//! The relay is SIGKILLed at seeded moments: after a seeded time, or the instant a writer
//! sees the relay reveal a head it never revealed before (after a seeded warm-up). After
//! every kill, with the relay reaped and every writer's socket to it read to the end (so
//! every acknowledgement that process sent is recorded, and none from a later process can
//! be), the test opens the data directory itself and checks that every head ever revealed
//! and every change ever acknowledged loads from it. Only then does the next relay start:
//! no writer can resend a lost change before the check.
//!
//! The negative control runs the same test against a relay started with
//! `--unsafe-durability ack-before-flush` (writes reported done before they are flushed)
//! and must lose an acknowledged change. A SIGKILL keeps the kernel's page cache, so that
//! relay loses only what a kill catches between a reveal and the moment the flush hands the
//! write to the kernel (the store's durable record is synced first: a few milliseconds of
//! each flush). Killing the instant a reveal is seen aims at that window and hits it in
//! about half of such kills here (a timed kill in about one of ten), so the control runs
//! until its first loss (bounded).
//!
//! `CAIRN_CRASH_SEED=<n>` replays a schedule (kill times and kinds, document choices,
//! change sizes; what the relay does in between still depends on timing);
//! `CAIRN_CRASH_ITERATIONS=<n>` sets the number of kills (the long mode; the control then
//! makes every kill instead of stopping at its first loss).

#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ScalarValue, ROOT};
use cairn_sync::ids::{DocumentId, PeerId};
use cairn_sync::wire::{DocMessage, Message, PeerMetadata};
use common::{incompressible, load_stored, Raw, Seen, SOON};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{watch, Notify};

/// The signal `Child::kill` sends.
const SIGKILL: i32 = 9;
/// Writers: enough concurrent sockets that the relay's storage thread batches writes.
const WRITERS: usize = 4;
/// Documents every writer edits: shared, so the relay merges changes from several peers.
const DOCS: usize = 3;
/// Kills in a default run of the durable test (about 0.6 s each).
const DEFAULT_KILLS: usize = 20;
/// The most kills the control gets in a default run; it stops at its first loss.
const CONTROL_MAX_KILLS: usize = 60;
/// Share of rounds that kill the instant a writer sees an acknowledgement (the others kill
/// at a seeded time): a write acknowledged before it is durable is lost only by a kill
/// that lands before the flush that follows the acknowledgement.
const KILL_ON_ACK_SHARE: f64 = 0.75;
/// How long a relay runs before a timed kill, or before a kill-on-ack round arms.
const UP_MS: std::ops::Range<u64> = 150..700;
/// Pause between one writer's changes: many small writes.
const CHANGE_GAP_MS: std::ops::Range<u64> = 5..30;
/// One change in this many carries [`LARGE_BYTES`] (the rest carry a number).
const LARGE_EVERY: u32 = 32;
/// A larger value (incompressible), so flushes vary in size; small enough that the
/// documents stay quick to load at every check.
const LARGE_BYTES: usize = 8 * 1024;

/// How the relay process is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// The default: a write is acknowledged only after it is durable.
    Full,
    /// `--unsafe-durability ack-before-flush`: the negative control.
    AckBeforeFlush,
}

/// A `cairn-relay serve` child process; killed (SIGKILL) when dropped. The child sits
/// behind a shared lock so that a writer can kill it the instant it sees an
/// acknowledgement.
struct RelayProcess {
    child: Arc<Mutex<Child>>,
    log: PathBuf,
}

impl RelayProcess {
    async fn spawn(port: u16, data: &Path, log: PathBuf, durability: Durability) -> RelayProcess {
        let stderr = std::fs::File::create(&log).expect("relay log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn-relay"));
        command
            .arg("serve")
            .arg("--open")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(data)
            .env("CAIRN_LOG", "warn")
            .env_remove("CAIRN_UNSAFE_DURABILITY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if durability == Durability::AckBeforeFlush {
            command.args(["--unsafe-durability", "ack-before-flush"]);
        }
        let child = command.spawn().expect("spawn the relay binary");
        let relay = RelayProcess {
            child: Arc::new(Mutex::new(child)),
            log,
        };
        relay.wait_healthy(port).await;
        relay
    }

    /// Polls `/healthz` with a raw HTTP request until it answers 200 (bounded).
    async fn wait_healthy(&self, port: u16) {
        let deadline = Instant::now() + SOON;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.lock().expect("lock").try_wait() {
                panic!(
                    "the relay exited at start-up ({status}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if let Some((200, _)) = common::http_get(addr, "/healthz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the relay did not become healthy:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGKILL (unless a writer already sent it), then reap. Panics if the relay had
    /// exited on its own.
    fn kill(&self) {
        let mut child = self.child.lock().expect("lock");
        child.kill().expect("kill the relay");
        let status = child.wait().expect("reap the relay");
        assert_eq!(
            status.signal(),
            Some(SIGKILL),
            "the relay exited on its own ({status}):\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
    )
}

/// The seed: `CAIRN_CRASH_SEED`, or a fresh one.
fn seed() -> u64 {
    env_u64("CAIRN_CRASH_SEED").unwrap_or_else(|| {
        u64::from_le_bytes(
            cairn_sync::store::random_uuid().as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        )
    })
}

/// When one round's relay is killed.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// After this long.
    After(Duration),
    /// Once this long has passed, the instant a writer sees the relay reveal a head it had
    /// not revealed before (the acknowledgement of a change).
    OnAckAfter(Duration),
}

fn schedule(rng: &mut ChaCha8Rng, kills: usize) -> Vec<Kill> {
    (0..kills)
        .map(|_| {
            let up = Duration::from_millis(rng.gen_range(UP_MS));
            if rng.gen_bool(KILL_ON_ACK_SHARE) {
                Kill::OnAckAfter(up)
            } else {
                Kill::After(up)
            }
        })
        .collect()
}

/// What the writers know about the relay process, published by the test's main loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RelayState {
    /// The relay process (1-based); 0 before the first.
    epoch: usize,
    /// The process is running (false once it was killed).
    up: bool,
    /// The run is over: writers return.
    stop: bool,
}

/// Everything the relay revealed, recorded the moment it arrived.
#[derive(Default)]
struct AckLog {
    /// Heads the relay sent in a sync message, with the relay process that sent them first.
    revealed: BTreeMap<DocumentId, BTreeMap<ChangeHash, usize>>,
    /// Writers' own changes covered by revealed heads, with the relay process that did so.
    acknowledged: BTreeMap<DocumentId, BTreeMap<ChangeHash, usize>>,
    /// Acknowledged changes per relay process.
    per_epoch: BTreeMap<usize, usize>,
}

/// State the writers share with the main loop.
#[derive(Default)]
struct Shared {
    log: Mutex<AckLog>,
    /// Armed by a kill-on-ack round: the first writer to see a head revealed for the first
    /// time takes the child and kills it before it does anything else.
    kill_on_ack: Mutex<Option<Arc<Mutex<Child>>>>,
    /// Told when a writer fired the armed kill.
    killed_on_ack: Notify,
}

/// One writer's copy of one document.
struct Replica {
    am: Automerge,
    /// Sync state with the current relay process (fresh per connection).
    state: sync::State,
    /// Every change this writer made to the document.
    own: HashSet<ChangeHash>,
    /// Changes known to be covered by heads the relay revealed.
    covered: HashSet<ChangeHash>,
    /// Revealed heads not yet in our copy: walked once their change arrives.
    unresolved: BTreeSet<ChangeHash>,
}

impl Replica {
    /// Walks from the unresolved heads to everything they cover; returns our own changes
    /// that became covered.
    fn cover(&mut self) -> Vec<ChangeHash> {
        let mut newly = Vec::new();
        let mut stack: Vec<ChangeHash> = std::mem::take(&mut self.unresolved).into_iter().collect();
        while let Some(h) = stack.pop() {
            if self.covered.contains(&h) {
                continue;
            }
            let Some(change) = self.am.get_change_meta_by_hash(&h) else {
                self.unresolved.insert(h);
                continue;
            };
            self.covered.insert(h);
            if self.own.contains(&h) {
                newly.push(h);
            }
            stack.extend(change.deps.iter().copied());
        }
        newly
    }
}

struct Writer {
    index: usize,
    peer: PeerId,
    rng: ChaCha8Rng,
    docs: Vec<DocumentId>,
    copies: BTreeMap<DocumentId, Replica>,
    shared: Arc<Shared>,
    changes: u64,
}

/// How a writer's connection to one relay process ended.
enum Ended {
    /// The socket closed (the relay died): read to the end.
    Closed,
    /// The run is over.
    Stop,
}

impl Writer {
    fn new(index: usize, seed: u64, docs: &[DocumentId], shared: Arc<Shared>) -> Writer {
        let copies = docs
            .iter()
            .map(|d| {
                let mut am = Automerge::new();
                // A fixed actor per writer, not a random one: a replayed run writes alike.
                am.set_actor(ActorId::from(format!("writer-{index}").into_bytes()));
                let copy = Replica {
                    am,
                    state: sync::State::new(),
                    own: HashSet::new(),
                    covered: HashSet::new(),
                    unresolved: BTreeSet::new(),
                };
                (*d, copy)
            })
            .collect();
        Writer {
            index,
            peer: PeerId::from(format!("writer-{index}/phone").as_str()),
            rng: ChaCha8Rng::seed_from_u64(seed),
            docs: docs.to_vec(),
            copies,
            shared,
            changes: 0,
        }
    }

    fn gap(&mut self) -> Duration {
        Duration::from_millis(self.rng.gen_range(CHANGE_GAP_MS))
    }

    /// Makes one local change; returns its document.
    fn change(&mut self) -> DocumentId {
        let doc = self.docs[self.rng.gen_range(0..self.docs.len())];
        self.changes += 1;
        let n = self.changes;
        let value = if self.rng.gen_ratio(1, LARGE_EVERY) {
            ScalarValue::Bytes(incompressible(LARGE_BYTES, self.rng.gen()))
        } else {
            ScalarValue::Int(n as i64)
        };
        let copy = self.copies.get_mut(&doc).expect("a copy of every document");
        let mut tx = copy.am.transaction();
        tx.put(ROOT, format!("w{}-{n}", self.index), value)
            .expect("put");
        let (hash, _) = tx.commit();
        copy.own.insert(hash.expect("a change with an op"));
        doc
    }

    async fn send_sync(&mut self, raw: &mut Raw, doc: DocumentId) -> bool {
        let copy = self.copies.get_mut(&doc).expect("a copy");
        let Some(m) = copy.am.generate_sync_message(&mut copy.state) else {
            return true;
        };
        let msg = Message::Sync(DocMessage {
            sender_id: self.peer.clone(),
            target_id: PeerId::from(cairn_relay::RELAY_PEER_ID),
            document_id: doc,
            data: m.encode(),
        });
        raw.send_bytes(msg.encode()).await.is_ok()
    }

    /// Takes in one relay sync message: records what it reveals, then (if armed) kills.
    fn receive(&mut self, doc: DocumentId, data: &[u8], epoch: usize) {
        let Some(copy) = self.copies.get_mut(&doc) else {
            return;
        };
        let m = sync::Message::decode(data).expect("the relay sends valid sync messages");
        let heads = m.heads.clone();
        // First what the message reveals, and the armed kill if it reveals something new:
        // a kill-on-ack round kills before this writer spends any time on the message.
        let mut fresh = Vec::new();
        {
            let mut log = self.shared.log.lock().expect("lock");
            let revealed = log.revealed.entry(doc).or_default();
            for h in &heads {
                if !revealed.contains_key(h) {
                    revealed.insert(*h, epoch);
                    fresh.push(*h);
                }
            }
        }
        if !fresh.is_empty() {
            let armed = self.shared.kill_on_ack.lock().expect("lock").take();
            if let Some(child) = armed {
                let _ = child.lock().expect("lock").kill();
                self.shared.killed_on_ack.notify_one();
            }
        }
        copy.am
            .receive_sync_message(&mut copy.state, m)
            .expect("apply the relay's sync message");
        copy.unresolved.extend(heads.iter().copied());
        let newly = copy.cover();
        let mut log = self.shared.log.lock().expect("lock");
        let acknowledged = log.acknowledged.entry(doc).or_default();
        for h in &newly {
            acknowledged.insert(*h, epoch);
        }
        *log.per_epoch.entry(epoch).or_default() += newly.len();
    }

    /// Dials relay process `epoch` and syncs until its socket closes.
    async fn connection(
        &mut self,
        url: &str,
        epoch: usize,
        relay: &mut watch::Receiver<RelayState>,
    ) -> Ended {
        let Some(mut raw) = join(url, &self.peer).await else {
            return Ended::Closed;
        };
        for copy in self.copies.values_mut() {
            copy.state = sync::State::new();
        }
        for doc in self.docs.clone() {
            if !self.copies[&doc].am.get_heads().is_empty() && !self.send_sync(&mut raw, doc).await
            {
                return drain(&mut raw, self, epoch).await;
            }
        }
        let mut next_change = tokio::time::Instant::now() + self.gap();
        loop {
            tokio::select! {
                seen = raw.next(SOON) => match seen {
                    Seen::Frame(Message::Sync(d)) | Seen::Frame(Message::Request(d)) => {
                        self.receive(d.document_id, &d.data, epoch);
                        if !self.send_sync(&mut raw, d.document_id).await {
                            return drain(&mut raw, self, epoch).await;
                        }
                    }
                    Seen::Frame(Message::Error { message }) => {
                        panic!("the relay refused writer {}: {message}", self.index)
                    }
                    Seen::Closed => return Ended::Closed,
                    Seen::Frame(_) | Seen::Undecodable(_) | Seen::Nothing => {}
                },
                _ = tokio::time::sleep_until(next_change) => {
                    let doc = self.change();
                    next_change = tokio::time::Instant::now() + self.gap();
                    if !self.send_sync(&mut raw, doc).await {
                        return drain(&mut raw, self, epoch).await;
                    }
                }
                _ = relay.changed() => {
                    if relay.borrow().stop {
                        return Ended::Stop;
                    }
                }
            }
        }
    }

    /// Writes while no relay is reachable (an offline phone), until the relay state moves
    /// past process `after` (a new process is up, or one we never reached has died).
    async fn offline(
        &mut self,
        after: usize,
        relay: &mut watch::Receiver<RelayState>,
    ) -> RelayState {
        loop {
            let s = *relay.borrow_and_update();
            if s.stop || s.epoch > after {
                return s;
            }
            tokio::select! {
                _ = relay.changed() => {}
                _ = tokio::time::sleep(self.gap()) => {
                    self.change();
                }
            }
        }
    }

    /// Runs until the test stops; reports on `done` each relay process whose socket it has
    /// read to the end (or never reached). Returns how many changes it made.
    async fn run(
        mut self,
        url: String,
        mut relay: watch::Receiver<RelayState>,
        done: watch::Sender<usize>,
    ) -> u64 {
        let mut last = 0;
        loop {
            let s = self.offline(last, &mut relay).await;
            if s.stop {
                break;
            }
            if s.up
                && matches!(
                    self.connection(&url, s.epoch, &mut relay).await,
                    Ended::Stop
                )
            {
                break;
            }
            last = s.epoch;
            let _ = done.send(last);
        }
        let _ = done.send(usize::MAX);
        self.changes
    }
}

/// Reads a socket whose sends fail until it closes, recording what it still carries.
async fn drain(raw: &mut Raw, writer: &mut Writer, epoch: usize) -> Ended {
    loop {
        match raw.next(SOON).await {
            Seen::Frame(Message::Sync(d)) | Seen::Frame(Message::Request(d)) => {
                writer.receive(d.document_id, &d.data, epoch)
            }
            Seen::Closed | Seen::Nothing => return Ended::Closed,
            Seen::Frame(_) | Seen::Undecodable(_) => {}
        }
    }
}

/// Dials and completes the handshake; `None` if the relay is gone.
async fn join(url: &str, peer: &PeerId) -> Option<Raw> {
    let (ws, _) = tokio::time::timeout(SOON, tokio_tungstenite::connect_async(url))
        .await
        .ok()?
        .ok()?;
    let mut raw = Raw {
        ws,
        peer: peer.clone(),
    };
    let join = Message::Join {
        sender_id: peer.clone(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    };
    raw.send_bytes(join.encode()).await.ok()?;
    match raw.next(SOON).await {
        Seen::Frame(Message::Peer { .. }) => Some(raw),
        _ => None,
    }
}

/// An acknowledged change (or revealed head) the store did not hold after a kill.
#[derive(Debug)]
#[allow(dead_code, reason = "read through Debug in the failure message")]
struct Lost {
    /// The kill after which it was missing.
    kill: usize,
    doc: DocumentId,
    hash: ChangeHash,
    /// The relay process that acknowledged it.
    acknowledged_by: usize,
}

/// What one run found.
#[derive(Debug, Default)]
struct Outcome {
    kills: usize,
    kills_on_ack: usize,
    /// Changes the writers made.
    changes: u64,
    /// Distinct acknowledged changes.
    acknowledged: usize,
    /// Acknowledged changes checked, summed over the checks.
    change_checks: usize,
    /// Revealed heads checked, summed over the checks.
    head_checks: usize,
    /// Acknowledged changes or revealed heads missing from the store at a check.
    lost: Vec<Lost>,
    /// Relay processes during which at least one change was acknowledged.
    epochs_with_acks: usize,
}

impl Outcome {
    /// Distinct changes (or heads) found missing, over all checks.
    fn distinct_lost(&self) -> usize {
        self.lost
            .iter()
            .map(|l| (l.doc, l.hash))
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Kills after which something was missing.
    fn kills_with_loss(&self) -> BTreeSet<usize> {
        self.lost.iter().map(|l| l.kill).collect()
    }

    fn summary(&self) -> String {
        format!(
            "{} kills ({} on an acknowledgement), {} changes made, {} acknowledged, {} \
             acknowledged changes and {} revealed heads checked (summed over the checks), \
             {} lost ({} distinct) at kills {:?}; acknowledgements from {} of {} relay processes",
            self.kills,
            self.kills_on_ack,
            self.changes,
            self.acknowledged,
            self.change_checks,
            self.head_checks,
            self.lost.len(),
            self.distinct_lost(),
            self.kills_with_loss(),
            self.epochs_with_acks,
            self.kills,
        )
    }
}

/// Checks the store in `data` (no relay running) against everything recorded so far:
/// every head the relay revealed and every change it acknowledged must load from it.
async fn check(data: &Path, shared: &Shared, kill: usize, out: &mut Outcome) {
    let expected: BTreeMap<DocumentId, BTreeMap<ChangeHash, usize>> = {
        let log = shared.log.lock().expect("lock");
        out.change_checks += log.acknowledged.values().map(BTreeMap::len).sum::<usize>();
        out.head_checks += log.revealed.values().map(BTreeMap::len).sum::<usize>();
        let mut all = log.revealed.clone();
        for (doc, hashes) in &log.acknowledged {
            all.entry(*doc).or_default().extend(hashes);
        }
        all
    };
    let ids: Vec<DocumentId> = expected.keys().copied().collect();
    // `load_stored` opens the directory with `open_data_dir` (default config) and closes
    // it again before returning.
    for (doc, am) in load_stored(data, &ids).await {
        let present: HashSet<ChangeHash> = am
            .get_changes_meta(&[])
            .into_iter()
            .map(|m| m.hash)
            .collect();
        for (hash, epoch) in &expected[&doc] {
            if !present.contains(hash) {
                out.lost.push(Lost {
                    kill,
                    doc,
                    hash: *hash,
                    acknowledged_by: *epoch,
                });
            }
        }
    }
}

/// Runs the writers against a relay killed `kills` times; checks the store after each kill.
async fn run(seed: u64, kills: usize, durability: Durability, stop_at_first_loss: bool) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let docs: Vec<DocumentId> = (0..DOCS).map(|_| DocumentId::random(&mut rng)).collect();
    let writer_seeds: Vec<u64> = (0..WRITERS).map(|_| rng.gen()).collect();
    // Drawn last: a run with more kills replays a shorter one's kills first.
    let plan = schedule(&mut rng, kills);

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/");
    let shared = Arc::new(Shared::default());
    let (relay_tx, relay_rx) = watch::channel(RelayState {
        epoch: 0,
        up: false,
        stop: false,
    });
    let mut done = Vec::new();
    let mut writers = Vec::new();
    for (i, writer_seed) in writer_seeds.into_iter().enumerate() {
        let writer = Writer::new(i, writer_seed, &docs, shared.clone());
        let (done_tx, done_rx) = watch::channel(0);
        done.push(done_rx);
        writers.push(tokio::spawn(writer.run(
            url.clone(),
            relay_rx.clone(),
            done_tx,
        )));
    }

    let mut out = Outcome::default();
    for (round, kill) in plan.iter().enumerate() {
        let epoch = round + 1;
        let log = dir.path().join(format!("relay-{epoch}.log"));
        let relay = RelayProcess::spawn(port, &data, log, durability).await;
        relay_tx.send_replace(RelayState {
            epoch,
            up: true,
            stop: false,
        });
        match *kill {
            Kill::After(up) => {
                tokio::time::sleep(up).await;
                relay.kill();
            }
            Kill::OnAckAfter(up) => {
                tokio::time::sleep(up).await;
                *shared.kill_on_ack.lock().expect("lock") = Some(relay.child.clone());
                let fired = tokio::time::timeout(SOON, shared.killed_on_ack.notified())
                    .await
                    .is_ok();
                shared.kill_on_ack.lock().expect("lock").take();
                assert!(
                    fired,
                    "no acknowledgement within {SOON:?} of arming (seed {seed})"
                );
                out.kills_on_ack += 1;
                relay.kill();
            }
        }
        out.kills += 1;
        relay_tx.send_replace(RelayState {
            epoch,
            up: false,
            stop: false,
        });
        // Every writer has read its socket to this process to the end: nothing the process
        // sent is still on its way, and nothing a later process sends can be taken for it.
        for d in &mut done {
            tokio::time::timeout(SOON, d.wait_for(|e| *e >= epoch))
                .await
                .unwrap_or_else(|_| {
                    panic!("a writer did not notice relay {epoch} die (seed {seed})")
                })
                .expect("writer alive");
        }
        check(&data, &shared, epoch, &mut out).await;
        println!(
            "kill {epoch} ({kill:?}): {} acknowledged so far, {} missing",
            shared
                .log
                .lock()
                .expect("lock")
                .per_epoch
                .values()
                .sum::<usize>(),
            out.lost.iter().filter(|l| l.kill == epoch).count()
        );
        if stop_at_first_loss && !out.lost.is_empty() {
            break;
        }
    }
    relay_tx.send_replace(RelayState {
        epoch: out.kills,
        up: false,
        stop: true,
    });
    for w in writers {
        out.changes += w.await.expect("writer");
    }
    let log = shared.log.lock().expect("lock");
    out.acknowledged = log.acknowledged.values().map(BTreeMap::len).sum();
    out.epochs_with_acks = log.per_epoch.values().filter(|n| **n > 0).count();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill() {
    let seed = seed();
    let kills = env_u64("CAIRN_CRASH_ITERATIONS").map_or(DEFAULT_KILLS, |n| n as usize);
    println!("crash test seed {seed}, {kills} kills (replay: CAIRN_CRASH_SEED={seed})");
    let started = Instant::now();
    let out = run(seed, kills, Durability::Full, false).await;
    println!(
        "crash test: {}, {:?} (seed {seed})",
        out.summary(),
        started.elapsed()
    );
    assert!(
        out.lost.is_empty(),
        "acknowledged changes are missing from the relay's store after SIGKILL \
         (replay: CAIRN_CRASH_SEED={seed}): {}; e.g. {:?}",
        out.summary(),
        &out.lost[..out.lost.len().min(5)]
    );
    assert!(
        out.epochs_with_acks * 2 >= out.kills,
        "acknowledgements came from only {} of {} relay processes: the test checked too \
         little (replay: CAIRN_CRASH_SEED={seed})",
        out.epochs_with_acks,
        out.kills
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_loses_acknowledged_changes_when_the_relay_acks_before_flushing() {
    let seed = seed();
    let long = env_u64("CAIRN_CRASH_ITERATIONS").map(|n| n as usize);
    let kills = long.unwrap_or(CONTROL_MAX_KILLS);
    println!("crash control seed {seed}, up to {kills} kills (replay: CAIRN_CRASH_SEED={seed})");
    let started = Instant::now();
    let out = run(seed, kills, Durability::AckBeforeFlush, long.is_none()).await;
    println!(
        "crash control: {}, {:?} (seed {seed})",
        out.summary(),
        started.elapsed()
    );
    assert!(
        !out.lost.is_empty(),
        "a relay that acknowledges before flushing lost nothing in {} kills: this test could \
         not see a lost acknowledged change (replay: CAIRN_CRASH_SEED={seed}): {}",
        out.kills,
        out.summary()
    );
}
