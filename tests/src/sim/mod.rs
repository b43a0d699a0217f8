//! A deterministic network simulator: one relay [`Engine`] and N client engines, each with
//! its own [`SimStore`], a virtual clock, and one seeded ChaCha8 RNG behind every choice.
//!
//! The simulator is the host of every engine (see the host contract in `cairn_core`):
//!
//! - **Links** are websockets: frames on one link arrive in order, each after a random
//!   delay, so frames on different links interleave arbitrarily. Occasional delay spikes
//!   hold a link up (head-of-line blocking).
//! - **Faults**: a link can be cut mid-stream (frames in flight are lost, both ends learn of
//!   it at different times, the client redials with a new [`ConnectionId`]); a client can be
//!   partitioned for a while (it keeps editing offline); the relay can lose power (its
//!   unflushed writes are lost, its engine is rebuilt from what survived, every client
//!   redials); the relay's disk can fill up for a while (writes still land in memory, every
//!   flush fails, so the writes are reported failed).
//! - **Storage** tasks complete in order per store after a small random delay, through a
//!   [`StorageHost`] that keeps the real runtime's rules: under [`Durability::FlushThenAck`]
//!   a write is reported only after a flush, and after a failed flush no read is served
//!   until a flush succeeds.
//! - **Users** create documents, edit them (puts and text splices through
//!   [`Engine::change_document`]), and send ephemeral messages. A document's link is shared
//!   with the other users once its creator has seen the relay acknowledge it.
//!
//! ```
//! use cairn_tests::sim::{Sim, SimConfig};
//!
//! let mut sim = Sim::new(SimConfig::random(7));
//! sim.run_until_quiet();
//! sim.check_converged().unwrap();
//! sim.check_quiet_when_idle().unwrap();
//! assert!(sim.violations().is_empty());
//! ```
//!
//! # The durability invariant
//!
//! Every change hash the relay names as one of its `heads` in a message it sends loads, at
//! the moment it sends that message, from the relay's flushed data (what a power cut then
//! would leave). In Automerge's sync protocol the heads are a peer's only acknowledgement,
//! so this is "acknowledged means durable"; the changes a message carries are ancestors of
//! its heads, so they are covered too. It is stated on what the relay sends, not on how its
//! engine keeps it, so it holds whatever replaces today's mechanism.
//!
//! The simulator checks it on every message the relay sends, and checks everything the
//! relay ever revealed again after each power cut and at the end, so a change that was
//! durable when revealed and lost later shows up too. Breaches are in [`Sim::violations`]
//! and counted in [`Stats::violations`].

pub mod content;
mod durability;
pub mod host;
pub mod seeds;
pub mod store;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use automerge::{Automerge, ChangeHash};
use cairn_sync::engine::{
    CloseReason, Direction, Engine, EngineConfig, Event, Input, Limits, Output, Role,
};
use cairn_sync::ids::{ConnectionId, DocumentId, PeerId, StorageId, TaskId};
use cairn_sync::store::{Storage, StorageOp};
use cairn_sync::time::Timestamp;
use cairn_sync::wire::Message;
use rand::seq::IteratorRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use content::Content;
pub use durability::{Found, Violation};
pub use host::{AfterFailedFlush, StorageHost};
pub use store::{Durability, SimStore};

use durability::FlushedDocs;
use host::Begun;

/// The chance that a relay write finds the disk full, when write failures are on. Default
/// 1 in 100: a run of a few hundred writes sees a few full disks, and most of its writes
/// still succeed, so the run still converges in its usual time.
const DISK_FULL_CHANCE: f64 = 0.01;

/// How long a full disk stays full, in virtual milliseconds. 100–2,000: often long enough
/// that the engine reloads the failed document (after its peers redial) while the disk is
/// still full, so the host's read rule is exercised, and short enough that the run heals.
const DISK_FULL_MILLIS: std::ops::RangeInclusive<u64> = 100..=2_000;

/// Violations kept for inspection; the rest are only counted (in [`Stats::violations`]). A
/// broken host violates the invariant on nearly every message; 64 is plenty to read.
const MAX_RECORDED_VIOLATIONS: usize = 64;

/// Index of the relay among the simulator's nodes; clients are `1..=clients`.
pub const RELAY: usize = 0;

/// Which faults a run may inject.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Cut client links mid-stream.
    pub link_drops: bool,
    /// Take clients offline for a while.
    pub partitions: bool,
    /// Occasionally hold a frame (and so its link) for up to 3 s.
    pub delay_spikes: bool,
    /// Cut the relay's power.
    pub relay_crashes: bool,
    /// Fill the relay's disk for a while now and then: writes still land in memory, every
    /// flush fails with "disk full", so the host reports those writes failed.
    pub write_failures: bool,
}

/// Everything that shapes one run. [`SimConfig::random`] draws it all from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Drives every random choice of the run.
    pub seed: u64,
    /// Client engines (the relay is extra).
    pub clients: usize,
    /// Documents the users create.
    pub documents: usize,
    /// Virtual milliseconds of user activity and faults; then everything heals.
    pub active_millis: u64,
    /// Mean virtual milliseconds between two user or fault actions.
    pub action_gap_millis: u64,
    /// Faults to inject.
    pub faults: Faults,
    /// When stores report writes done.
    pub durability: Durability,
    /// What the hosts read after a failed flush.
    pub after_failed_flush: AfterFailedFlush,
    /// In a crash, the chance that each unflushed write makes it to disk anyway.
    pub crash_survival: f64,
    /// Engine limits (small eviction and compaction thresholds exercise those paths).
    pub limits: Limits,
    /// Steps [`Sim::run_until_quiet`] may take before it declares a livelock.
    pub step_bound: u64,
    /// Virtual milliseconds past the end of the active phase within which the network must
    /// go quiet; a healthy run needs a few seconds, a livelock ping-pongs for ever.
    pub quiet_bound_millis: u64,
}

impl SimConfig {
    /// A configuration drawn from `seed`: 1–5 clients, 1–4 documents, 2–12 s of activity,
    /// each fault (relay power cuts and full disks included) on with probability 3/4, a
    /// correct host, and in half the runs short eviction and compaction thresholds.
    pub fn random(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0f1_9000_0000);
        let mut limits = Limits::default();
        if rng.gen_bool(0.5) {
            limits.idle_eviction = Duration::from_millis(rng.gen_range(300..=5_000));
        }
        if rng.gen_bool(0.5) {
            limits.compact_after_chunks = rng.gen_range(3..=20);
        }
        let mut config = SimConfig {
            seed,
            clients: rng.gen_range(1..=5),
            documents: rng.gen_range(1..=4),
            active_millis: rng.gen_range(2_000..=12_000),
            action_gap_millis: rng.gen_range(10..=80),
            faults: Faults {
                link_drops: rng.gen_bool(0.75),
                partitions: rng.gen_bool(0.75),
                delay_spikes: rng.gen_bool(0.75),
                relay_crashes: false,
                write_failures: false,
            },
            durability: Durability::FlushThenAck,
            after_failed_flush: AfterFailedFlush::RefuseReads,
            crash_survival: if rng.gen_bool(0.5) { 0.0 } else { 0.5 },
            limits,
            step_bound: 200_000,
            quiet_bound_millis: 120_000,
        };
        config.faults.relay_crashes = rng.gen_bool(0.75);
        config.faults.write_failures = rng.gen_bool(0.75);
        config
    }
}

/// Counters describing a run, for sanity checks ("the faults did happen") and for
/// `CAIRN_SIM_VERBOSE`. [`Stats::add`] sums runs.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Events and timer firings processed.
    pub steps: u64,
    /// Virtual time at the last step, in milliseconds.
    pub now_millis: u64,
    /// Frames engines emitted.
    pub frames_sent: u64,
    /// Frames handed to an engine.
    pub frames_delivered: u64,
    /// Frames lost to cut links, crashes and closes.
    pub frames_lost: u64,
    /// Frames an engine emitted on a connection it had already closed or been told was closed.
    pub sends_after_close: u64,
    /// Local changes made.
    pub edits: u64,
    /// Ephemeral messages broadcast and received.
    pub ephemeral_sent: u64,
    /// Ephemeral messages received.
    pub ephemeral_received: u64,
    /// Links cut by the network.
    pub link_drops: u64,
    /// Client partitions.
    pub partitions: u64,
    /// Relay power cuts.
    pub relay_crashes: u64,
    /// Unflushed writes the crashes destroyed.
    pub writes_lost: u64,
    /// Times the relay's disk filled up.
    pub disk_full: u64,
    /// Relay writes reported failed because their flush failed.
    pub write_failures: u64,
    /// Relay reads refused because a flush had failed and its retry failed too.
    pub reads_refused: u64,
    /// Documents dropped from memory for idleness.
    pub evictions: u64,
    /// Snapshots written.
    pub compactions: u64,
    /// `DocumentUnavailable` events on clients.
    pub unavailable: u64,
    /// Timer firings after which `poll_timeout` still returned a time not in the future.
    pub stale_timeouts: u64,
    /// Distinct change hashes the relay revealed in sync messages.
    pub revealed: u64,
    /// Relay messages checked against the durability invariant.
    pub messages_checked: u64,
    /// Times the checker (re)loaded a document from the relay's flushed data.
    pub flushed_loads: u64,
    /// Revealed changes that were not durable: the invariant broken (each message, crash
    /// or end check counts its own).
    pub violations: u64,
    /// Of those, revealed changes found missing from the disk by a later check (after a
    /// crash, or at the end): acknowledged changes actually lost.
    pub lost: u64,
    /// Connection closes requested by engines, by reason.
    pub closes: BTreeMap<String, u64>,
}

impl Stats {
    /// Adds another run's counters to these (virtual time and steps add up too).
    pub fn add(&mut self, other: &Stats) {
        self.steps += other.steps;
        self.now_millis += other.now_millis;
        self.frames_sent += other.frames_sent;
        self.frames_delivered += other.frames_delivered;
        self.frames_lost += other.frames_lost;
        self.sends_after_close += other.sends_after_close;
        self.edits += other.edits;
        self.ephemeral_sent += other.ephemeral_sent;
        self.ephemeral_received += other.ephemeral_received;
        self.link_drops += other.link_drops;
        self.partitions += other.partitions;
        self.relay_crashes += other.relay_crashes;
        self.writes_lost += other.writes_lost;
        self.disk_full += other.disk_full;
        self.write_failures += other.write_failures;
        self.reads_refused += other.reads_refused;
        self.evictions += other.evictions;
        self.compactions += other.compactions;
        self.unavailable += other.unavailable;
        self.stale_timeouts += other.stale_timeouts;
        self.revealed += other.revealed;
        self.messages_checked += other.messages_checked;
        self.flushed_loads += other.flushed_loads;
        self.violations += other.violations;
        self.lost += other.lost;
        for (reason, n) in &other.closes {
            *self.closes.entry(reason.clone()).or_default() += n;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Relay = 0,
    Client = 1,
}

impl End {
    fn other(self) -> End {
        match self {
            End::Relay => End::Client,
            End::Client => End::Relay,
        }
    }
}

struct Link {
    client: usize,
    relay_epoch: u32,
    /// The end still reads and writes.
    open: [bool; 2],
    /// The end's engine has been given `Disconnected`.
    told: [bool; 2],
    /// The network cut it: nothing in flight arrives.
    severed: bool,
    /// Arrival time of the last frame scheduled towards each end (frames stay in order).
    last_arrival: [u64; 2],
}

struct Node {
    peer: PeerId,
    config: EngineConfig,
    engine: Engine,
    host: StorageHost,
    /// Bumped when the node loses power; older storage completions are void.
    epoch: u32,
    storage_free_at: u64,
    timer_fired_at: Option<u64>,
    /// Client: the current connection, from the client's point of view.
    conn: Option<ConnectionId>,
    /// Client: offline until then.
    offline_until: Option<u64>,
    /// Client: documents the user created or opened.
    known: BTreeSet<DocumentId>,
    /// Client: ephemeral payloads received.
    ephemeral_seen: BTreeSet<Vec<u8>>,
}

struct DocInfo {
    creator: usize,
    /// The creator saw the relay acknowledge it and shared the link.
    shared: bool,
}

enum Ev {
    Deliver {
        conn: ConnectionId,
        to: End,
        frame: Vec<u8>,
    },
    Disconnect {
        conn: ConnectionId,
        to: End,
    },
    StorageDone {
        node: usize,
        epoch: u32,
        task: TaskId,
        write: bool,
        begun: Begun,
    },
    Flush {
        node: usize,
        epoch: u32,
    },
    DiskFreed {
        node: usize,
    },
    Connect {
        client: usize,
    },
    Online {
        client: usize,
    },
    Find {
        client: usize,
        doc: DocumentId,
    },
    Action,
    CrashRelay {
        epoch: u32,
    },
}

#[derive(Clone, Copy)]
enum Act {
    Create,
    Edit,
    Ephemeral,
    DropLink,
    Partition,
    CrashRelay,
}

/// The simulator. See the module docs.
pub struct Sim {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<Node>,
    links: BTreeMap<ConnectionId, Link>,
    next_conn: u64,
    docs: BTreeMap<DocumentId, DocInfo>,
    healed: bool,
    active_until: u64,
    revealed: BTreeMap<DocumentId, BTreeSet<ChangeHash>>,
    /// What the relay's disk holds, as the checker last loaded it (`RefCell`: the read-only
    /// checks reuse it too).
    flushed: RefCell<FlushedDocs>,
    violations: Vec<Violation>,
    problems: Vec<String>,
    stats: Stats,
    digest: u64,
    /// `CAIRN_SIM_TRACE` is set: print every event.
    trace: bool,
}

fn engine_seed(seed: u64, node: usize, epoch: u32) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((node as u64) << 32) ^ u64::from(epoch)
}

fn close_label(reason: &CloseReason) -> String {
    let debug = format!("{reason:?}");
    debug.split('(').next().unwrap_or_default().to_owned()
}

impl Sim {
    /// Builds the relay and the clients, all offline-free and idle; the first action is at
    /// time 0.
    pub fn new(config: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut nodes = Vec::with_capacity(config.clients + 1);
        for i in 0..=config.clients {
            let (role, peer) = if i == RELAY {
                (Role::Relay, PeerId::from("relay"))
            } else {
                (Role::Client, PeerId::from(format!("member{i}/phone")))
            };
            let storage_id = StorageId::random(&mut rng);
            let engine_config =
                EngineConfig::new(role, peer.clone(), engine_seed(config.seed, i, 0))
                    .with_storage_id(storage_id.clone())
                    .with_limits(config.limits.clone());
            nodes.push(Node {
                peer,
                engine: Engine::new(engine_config.clone()),
                config: engine_config,
                host: StorageHost::new(
                    SimStore::with_storage_id(&storage_id),
                    config.durability,
                    config.after_failed_flush,
                ),
                epoch: 0,
                storage_free_at: 0,
                timer_fired_at: None,
                conn: None,
                offline_until: None,
                known: BTreeSet::new(),
                ephemeral_seen: BTreeSet::new(),
            });
        }
        let mut sim = Sim {
            config,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            links: BTreeMap::new(),
            next_conn: 1,
            docs: BTreeMap::new(),
            healed: false,
            active_until: 0,
            revealed: BTreeMap::new(),
            flushed: RefCell::default(),
            violations: Vec::new(),
            problems: Vec::new(),
            stats: Stats::default(),
            digest: 0xcbf2_9ce4_8422_2325,
            trace: std::env::var_os("CAIRN_SIM_TRACE").is_some(),
        };
        for client in 1..=sim.config.clients {
            let at = sim.rng.gen_range(0..=100);
            sim.schedule(at, Ev::Connect { client });
        }
        sim.active_until = sim.config.active_millis;
        sim.schedule(0, Ev::Action);
        sim
    }

    /// Starts another active phase of `millis` (after a quiet spell, when every document
    /// has been evicted): users edit again and faults resume, then everything heals.
    pub fn continue_for(&mut self, millis: u64) {
        self.active_until = self.now + millis;
        self.healed = false;
        self.schedule(self.now, Ev::Action);
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Breaches of the durability invariant: changes the relay revealed that did not load
    /// from its flushed data when it sent the message, after a crash, or at the end (the
    /// first few; [`Stats::violations`] counts them all).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Things no host should see from correct engines: a duplicated or echoed ephemeral
    /// message, an undecodable frame from our own relay.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Documents created so far.
    pub fn documents(&self) -> Vec<DocumentId> {
        self.docs.keys().copied().collect()
    }

    /// A hash of every frame delivered (with its time and receiver) and every change made:
    /// two runs of one seed must agree on it.
    pub fn trace_digest(&self) -> u64 {
        self.digest
    }

    fn mix(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.digest ^= u64::from(*b);
            self.digest = self.digest.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn ts(&self) -> Timestamp {
        Timestamp::from_millis(self.now)
    }

    // ------------------------------------------------------------------ the loop

    /// Processes events and timers until nothing is in flight: no frames, no storage tasks,
    /// no pending user or fault actions (the active phase ends by healing every partition).
    /// Engine timers alone do not count as activity.
    ///
    /// # Panics
    /// When it takes more than `step_bound` steps, or runs `quiet_bound_millis` of virtual
    /// time past the active phase (a livelock), naming the seed.
    pub fn run_until_quiet(&mut self) {
        self.run_while(|_| true);
    }

    /// Like [`Sim::run_until_quiet`], but stops at the first breach of the durability
    /// invariant (a negative control needs no more) and returns it.
    pub fn run_until_violation(&mut self) -> Option<&Violation> {
        self.run_while(|sim| sim.stats.violations == 0);
        self.violations.first()
    }

    fn run_while(&mut self, go_on: impl Fn(&Sim) -> bool) {
        let start = self.stats.steps;
        let deadline = self.now.max(self.active_until) + self.config.quiet_bound_millis;
        while go_on(self) && self.step() {
            if self.stats.steps - start > self.config.step_bound || self.now > deadline {
                panic!(
                    "livelock: not quiet after {} steps and {} ms (now t={} ms; seed {}, {} events queued)",
                    self.stats.steps - start,
                    self.config.quiet_bound_millis,
                    self.now,
                    self.config.seed,
                    self.queue.len()
                );
            }
        }
    }

    fn step(&mut self) -> bool {
        let Some((&(at, _), _)) = self.queue.first_key_value() else {
            return false;
        };
        if let Some((t, node)) = self.due_timer(at) {
            self.now = self.now.max(t);
            self.fire_timer(node);
        } else {
            let ((at, _), ev) = self.queue.pop_first().expect("peeked above");
            self.now = self.now.max(at);
            self.handle(ev);
        }
        self.stats.steps += 1;
        self.stats.now_millis = self.now;
        true
    }

    /// The earliest engine timer due no later than `limit`. A timer that fired at this very
    /// instant without moving its deadline is skipped until the clock moves (and counted in
    /// [`Stats::stale_timeouts`]), as a host's sleep would.
    fn due_timer(&self, limit: u64) -> Option<(u64, usize)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let t = n.engine.poll_timeout()?.as_millis().max(self.now);
                if t <= self.now && n.timer_fired_at == Some(self.now) {
                    return None;
                }
                (t <= limit).then_some((t, i))
            })
            .min()
    }

    fn fire_timer(&mut self, node: usize) {
        let now = self.ts();
        let n = &mut self.nodes[node];
        if self.trace {
            eprintln!("{:>8} timer  {} {:?}", self.now, n.peer, n.engine.stats());
        }
        n.engine.handle_timeout(now);
        n.timer_fired_at = Some(self.now);
        if n.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.stats.stale_timeouts += 1;
        }
        self.drain(node);
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.ts();
        if self.trace {
            self.trace_event(&ev);
        }
        match ev {
            Ev::Deliver { conn, to, frame } => {
                let Some(link) = self.links.get(&conn) else {
                    return;
                };
                if link.severed || !link.open[to as usize] {
                    self.stats.frames_lost += 1;
                    return;
                }
                let node = self.node_of(link, to);
                self.stats.frames_delivered += 1;
                self.mix(&self.now.to_le_bytes());
                self.mix(&(node as u64).to_le_bytes());
                self.mix(&frame);
                self.nodes[node]
                    .engine
                    .handle_input(now, Input::Frame { conn, frame });
                self.drain(node);
            }
            Ev::Disconnect { conn, to } => {
                let relay_epoch = self.nodes[RELAY].epoch;
                let Some(link) = self.links.get_mut(&conn) else {
                    return;
                };
                if link.told[to as usize] || (to == End::Relay && link.relay_epoch != relay_epoch) {
                    return;
                }
                link.told[to as usize] = true;
                link.open[to as usize] = false;
                let client = link.client;
                let node = if to == End::Relay { RELAY } else { client };
                self.nodes[node]
                    .engine
                    .handle_input(now, Input::Disconnected { conn });
                self.drain(node);
                if to == End::Client && self.nodes[client].conn == Some(conn) {
                    self.nodes[client].conn = None;
                    let backoff = self.rng.gen_range(20..=1_500);
                    self.schedule(self.now + backoff, Ev::Connect { client });
                }
            }
            Ev::StorageDone {
                node,
                epoch,
                task,
                write,
                begun,
            } => {
                let n = &mut self.nodes[node];
                if n.epoch != epoch {
                    return;
                }
                let (result, finished) = n.host.finish(begun);
                if self.trace && result.is_err() {
                    eprintln!("{:>8} node {node} task {} failed", self.now, task.get());
                }
                if finished.flush_failed && write {
                    self.stats.write_failures += 1;
                }
                if finished.read_refused {
                    self.stats.reads_refused += 1;
                }
                n.engine
                    .handle_input(now, Input::StorageDone { task, result });
                self.drain(node);
            }
            Ev::Flush { node, epoch } => {
                let n = &mut self.nodes[node];
                if n.epoch == epoch {
                    // A broken host's late flush; if it fails, a later one carries the writes.
                    let _ = n.host.flush();
                }
            }
            Ev::DiskFreed { node } => self.nodes[node].host.store().set_full(false),
            Ev::Connect { client } => self.connect(client),
            Ev::Online { client } => {
                let n = &mut self.nodes[client];
                if n.offline_until.is_some_and(|t| t <= self.now) {
                    n.offline_until = None;
                    self.connect(client);
                }
            }
            Ev::Find { client, doc } => {
                if self.trace {
                    eprintln!("{:>8} {} finds {doc}", self.now, self.nodes[client].peer);
                }
                if self.nodes[client].known.insert(doc) {
                    self.nodes[client].engine.find(now, doc);
                    self.drain(client);
                }
            }
            Ev::CrashRelay { epoch } => {
                if epoch == self.nodes[RELAY].epoch {
                    self.crash_relay();
                }
            }
            Ev::Action => {
                if self.now >= self.active_until {
                    self.heal();
                } else {
                    self.random_action();
                    let gap = self.rng.gen_range(1..=2 * self.config.action_gap_millis);
                    self.schedule(self.now + gap, Ev::Action);
                }
            }
        }
    }

    fn trace_event(&self, ev: &Ev) {
        let t = self.now;
        match ev {
            Ev::Deliver { conn, to, frame } => {
                let what = match Message::decode(frame) {
                    Ok(Message::Sync(d) | Message::Request(d)) => {
                        match automerge::sync::Message::decode(&d.data) {
                            Ok(m) => format!(
                                "{} {} heads {} need {} have {} changes {}",
                                Message::decode(frame)
                                    .map(|m| m.kind().to_owned())
                                    .unwrap_or_default(),
                                d.document_id,
                                m.heads.len(),
                                m.need.len(),
                                m.have.len(),
                                m.changes.len()
                            ),
                            Err(e) => format!("bad sync message {e}"),
                        }
                    }
                    Ok(m) => m.kind().to_owned(),
                    Err(e) => format!("undecodable {e}"),
                };
                eprintln!("{t:>8} deliver {conn} to {to:?}: {what}");
            }
            Ev::Disconnect { conn, to } => eprintln!("{t:>8} disconnect {conn} at {to:?}"),
            Ev::StorageDone {
                node, task, write, ..
            } => {
                eprintln!(
                    "{t:>8} storage-done node {node} task {} write {write}",
                    task.get(),
                )
            }
            Ev::Flush { node, .. } => eprintln!("{t:>8} flush node {node}"),
            Ev::DiskFreed { node } => eprintln!("{t:>8} disk freed node {node}"),
            Ev::Connect { client } => eprintln!("{t:>8} connect client {client}"),
            Ev::Online { client } => eprintln!("{t:>8} online client {client}"),
            Ev::Find { client, doc } => eprintln!("{t:>8} find client {client} {doc}"),
            Ev::Action => eprintln!("{t:>8} action"),
            Ev::CrashRelay { .. } => eprintln!("{t:>8} crash relay"),
        }
    }

    fn node_of(&self, link: &Link, end: End) -> usize {
        match end {
            End::Relay => RELAY,
            End::Client => link.client,
        }
    }

    /// Runs an engine's outputs in the order it produced them.
    fn drain(&mut self, node: usize) {
        while let Some(output) = self.nodes[node].engine.poll_output() {
            match output {
                Output::Send { conn, frame } => self.on_send(node, conn, frame),
                Output::Close { conn, reason } => self.on_close(node, conn, &reason),
                Output::Storage { task, op } => self.on_storage(node, task, op),
                Output::Event(event) => self.on_event(node, event),
            }
        }
    }

    fn frame_delay(&mut self) -> u64 {
        if self.config.faults.delay_spikes && self.rng.gen_bool(0.02) {
            self.rng.gen_range(200..=3_000)
        } else {
            self.rng.gen_range(1..=30)
        }
    }

    fn on_send(&mut self, node: usize, conn: ConnectionId, frame: Vec<u8>) {
        self.stats.frames_sent += 1;
        if self.trace {
            eprintln!("{:>8} {} sends on {conn}", self.now, self.nodes[node].peer);
        }
        if node == RELAY {
            self.check_message(conn, &frame);
        }
        let from = if node == RELAY {
            End::Relay
        } else {
            End::Client
        };
        let to = from.other();
        let delay = self.frame_delay();
        let now = self.now;
        let Some(link) = self.links.get_mut(&conn) else {
            self.problems
                .push(format!("node {node} sent on unknown connection {conn}"));
            return;
        };
        if !link.open[from as usize]
            || (from == End::Relay && link.relay_epoch != self.nodes[RELAY].epoch)
        {
            self.stats.sends_after_close += 1;
            return;
        }
        let at = (now + delay).max(link.last_arrival[to as usize]);
        link.last_arrival[to as usize] = at;
        self.schedule(at, Ev::Deliver { conn, to, frame });
    }

    fn on_close(&mut self, node: usize, conn: ConnectionId, reason: &CloseReason) {
        *self.stats.closes.entry(close_label(reason)).or_default() += 1;
        let from = if node == RELAY {
            End::Relay
        } else {
            End::Client
        };
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if !link.open[from as usize] {
            return;
        }
        link.open[from as usize] = false;
        // What the closing side sent before the close still arrives, then the close.
        let other_at = self.now.max(link.last_arrival[from.other() as usize]);
        let severed = link.severed;
        self.schedule(self.now, Ev::Disconnect { conn, to: from });
        if !severed {
            self.schedule(
                other_at,
                Ev::Disconnect {
                    conn,
                    to: from.other(),
                },
            );
        }
    }

    fn on_storage(&mut self, node: usize, task: TaskId, op: StorageOp) {
        let write = op.is_write();
        if node == RELAY
            && write
            && !self.healed
            && self.config.faults.write_failures
            && !self.nodes[node].host.store().is_full()
            && self.rng.gen_bool(DISK_FULL_CHANCE)
        {
            self.stats.disk_full += 1;
            self.nodes[node].host.store().set_full(true);
            let until = self.now + self.rng.gen_range(DISK_FULL_MILLIS);
            self.schedule(until, Ev::DiskFreed { node });
        }
        let begun = self.nodes[node].host.begin(&op);
        let delay = if self.rng.gen_bool(0.03) {
            self.rng.gen_range(100..=800)
        } else {
            self.rng.gen_range(0..=15)
        };
        let flush_delay = self.rng.gen_range(50..=1_500);
        let n = &mut self.nodes[node];
        let at = (self.now + delay).max(n.storage_free_at);
        n.storage_free_at = at;
        let epoch = n.epoch;
        self.schedule(
            at,
            Ev::StorageDone {
                node,
                epoch,
                task,
                write,
                begun,
            },
        );
        if write && self.config.durability == Durability::AckBeforeFlush {
            self.schedule(at + flush_delay, Ev::Flush { node, epoch });
        }
        // Power cuts are most telling while writes are in flight: aim some of them there.
        if node == RELAY
            && write
            && !self.healed
            && self.config.faults.relay_crashes
            && self.rng.gen_bool(0.01)
        {
            let crash_at = self.rng.gen_range(self.now..=at + flush_delay);
            self.schedule(crash_at, Ev::CrashRelay { epoch });
        }
    }

    fn on_event(&mut self, node: usize, event: Event) {
        if self.trace {
            match &event {
                Event::DocumentEvicted { doc } => {
                    eprintln!("{:>8} {} evicted {doc}", self.now, self.nodes[node].peer)
                }
                Event::DocumentLoaded { doc, bytes } => {
                    eprintln!(
                        "{:>8} {} loaded {doc} ({bytes} bytes)",
                        self.now, self.nodes[node].peer
                    )
                }
                Event::PeerConnected { conn, peer, .. } => eprintln!(
                    "{:>8} {} connected {conn} to {peer}",
                    self.now, self.nodes[node].peer
                ),
                _ => {}
            }
        }
        match event {
            Event::PeerHasHeads { doc, heads, .. } if node != RELAY && !heads.is_empty() => {
                let Some(info) = self.docs.get_mut(&doc) else {
                    return;
                };
                if info.creator != node || info.shared {
                    return;
                }
                // The relay has it: the creator shares the link with everyone else.
                info.shared = true;
                for client in (1..=self.config.clients).filter(|c| *c != node) {
                    let at = self.now + self.rng.gen_range(0..=2_000);
                    self.schedule(at, Ev::Find { client, doc });
                }
            }
            Event::DocumentUnavailable { doc } => {
                self.stats.unavailable += 1;
                self.problems.push(format!(
                    "t={} {} was told {doc} is unavailable",
                    self.now, self.nodes[node].peer
                ));
            }
            Event::Ephemeral { sender, data, .. } => {
                self.stats.ephemeral_received += 1;
                let n = &mut self.nodes[node];
                if sender == n.peer {
                    self.problems
                        .push(format!("{} received its own ephemeral message", n.peer));
                } else if !n.ephemeral_seen.insert(data) {
                    self.problems
                        .push(format!("{} received an ephemeral message twice", n.peer));
                }
            }
            Event::DocumentEvicted { .. } => self.stats.evictions += 1,
            Event::Compacted { .. } => self.stats.compactions += 1,
            _ => {}
        }
    }

    /// The durability invariant, on one message the relay sends: every head it names loads
    /// from its flushed data now.
    fn check_message(&mut self, conn: ConnectionId, frame: &[u8]) {
        let (Message::Sync(d) | Message::Request(d)) = (match Message::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                self.problems
                    .push(format!("the relay sent an undecodable frame: {e}"));
                return;
            }
        }) else {
            return;
        };
        let heads = match automerge::sync::Message::decode(&d.data) {
            Ok(msg) => msg.heads,
            Err(e) => {
                self.problems
                    .push(format!("the relay sent an undecodable sync message: {e}"));
                return;
            }
        };
        self.stats.messages_checked += 1;
        let store = self.nodes[RELAY].host.store();
        let missing = self
            .flushed
            .get_mut()
            .missing(store, &d.document_id, &heads);
        self.stats.flushed_loads = self.flushed.get_mut().loads;
        if !missing.is_empty() {
            let found = Found::InMessage {
                at_millis: self.now,
                conn,
            };
            self.violate(d.document_id, missing, found);
        }
        let set = self.revealed.entry(d.document_id).or_default();
        for h in heads {
            if set.insert(h) {
                self.stats.revealed += 1;
            }
        }
    }

    fn violate(&mut self, doc: DocumentId, hashes: Vec<ChangeHash>, found: Found) {
        self.stats.violations += hashes.len() as u64;
        if matches!(found, Found::Later { .. }) {
            self.stats.lost += hashes.len() as u64;
        }
        for hash in hashes {
            if self.violations.len() == MAX_RECORDED_VIOLATIONS {
                return;
            }
            self.violations.push(Violation {
                doc,
                hash,
                found: found.clone(),
            });
        }
    }

    // ------------------------------------------------------------------ network

    fn connect(&mut self, client: usize) {
        let n = &self.nodes[client];
        if n.conn.is_some() || n.offline_until.is_some() {
            return;
        }
        let conn = ConnectionId::new(self.next_conn);
        self.next_conn += 1;
        self.links.insert(
            conn,
            Link {
                client,
                relay_epoch: self.nodes[RELAY].epoch,
                open: [true, true],
                told: [false, false],
                severed: false,
                last_arrival: [0, 0],
            },
        );
        let now = self.ts();
        self.nodes[client].conn = Some(conn);
        self.nodes[RELAY].engine.handle_input(
            now,
            Input::Connected {
                conn,
                direction: Direction::Incoming,
                identity: None,
                local_peer: None,
            },
        );
        self.drain(RELAY);
        self.nodes[client].engine.handle_input(
            now,
            Input::Connected {
                conn,
                direction: Direction::Outgoing,
                identity: None,
                local_peer: None,
            },
        );
        self.drain(client);
    }

    /// The network cuts a link: frames in flight are lost; the client notices soon, the
    /// relay maybe much later.
    fn sever(&mut self, conn: ConnectionId) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if link.severed {
            return;
        }
        link.severed = true;
        link.open = [false, false];
        let client_at = self.now + self.rng.gen_range(1..=200);
        let relay_at = self.now + self.rng.gen_range(1..=3_000);
        self.schedule(
            client_at,
            Ev::Disconnect {
                conn,
                to: End::Client,
            },
        );
        self.schedule(
            relay_at,
            Ev::Disconnect {
                conn,
                to: End::Relay,
            },
        );
    }

    /// Ends the active phase: every client comes online and dials.
    fn heal(&mut self) {
        self.healed = true;
        for client in 1..=self.config.clients {
            self.nodes[client].offline_until = None;
            self.schedule(self.now, Ev::Connect { client });
        }
    }

    /// Cuts the relay's power: unflushed writes are lost, every link drops, and a new engine
    /// starts from the surviving store with the same storage id. Then checks that every
    /// change the relay ever acknowledged survived.
    pub fn crash_relay(&mut self) {
        self.stats.relay_crashes += 1;
        let epoch = self.nodes[RELAY].epoch;
        let conns: Vec<ConnectionId> = self
            .links
            .iter()
            .filter(|(_, l)| l.relay_epoch == epoch && !l.told[End::Relay as usize])
            .map(|(c, _)| *c)
            .collect();
        for conn in conns {
            let link = self.links.get_mut(&conn).expect("listed above");
            link.told[End::Relay as usize] = true;
            if !link.severed {
                link.severed = true;
                link.open = [false, false];
                let at = self.now + self.rng.gen_range(1..=200);
                self.schedule(
                    at,
                    Ev::Disconnect {
                        conn,
                        to: End::Client,
                    },
                );
            }
        }
        let survival = self.config.crash_survival;
        let relay = &mut self.nodes[RELAY];
        self.stats.writes_lost += relay.host.crash(&mut self.rng, survival) as u64;
        relay.epoch += 1;
        relay.storage_free_at = self.now;
        relay.timer_fired_at = None;
        relay.config.seed = engine_seed(self.config.seed, RELAY, relay.epoch);
        relay.engine = Engine::new(relay.config.clone());
        let when = format!(
            "after relay crash #{} at t={} ms",
            self.stats.relay_crashes, self.now
        );
        self.check_durability(&when);
    }

    // ------------------------------------------------------------------ users and faults

    fn random_action(&mut self) {
        let faults = self.config.faults;
        let mut choices: Vec<(u32, Act)> = vec![(70, Act::Edit), (5, Act::Ephemeral)];
        if self.docs.len() < self.config.documents {
            choices.push((if self.docs.is_empty() { 1_000 } else { 8 }, Act::Create));
        }
        if faults.link_drops {
            choices.push((5, Act::DropLink));
        }
        if faults.partitions {
            choices.push((3, Act::Partition));
        }
        if faults.relay_crashes {
            choices.push((1, Act::CrashRelay));
        }
        let total: u32 = choices.iter().map(|c| c.0).sum();
        let mut pick = self.rng.gen_range(0..total);
        let act = choices
            .iter()
            .find(|(w, _)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .expect("the weights add up")
            .1;
        let client = self.rng.gen_range(1..=self.config.clients);
        match act {
            Act::Create => self.create(client),
            Act::Edit => self.edit(client),
            Act::Ephemeral => self.ephemeral(client),
            Act::DropLink => {
                if let Some(conn) = self.nodes[client].conn {
                    self.sever(conn);
                    self.stats.link_drops += 1;
                }
            }
            Act::Partition => {
                self.stats.partitions += 1;
                let until = self.now + self.rng.gen_range(500..=8_000);
                let n = &mut self.nodes[client];
                n.offline_until = Some(n.offline_until.unwrap_or(0).max(until));
                if let Some(conn) = n.conn {
                    self.sever(conn);
                }
                self.schedule(until, Ev::Online { client });
            }
            Act::CrashRelay => self.crash_relay(),
        }
    }

    fn create(&mut self, client: usize) {
        let now = self.ts();
        let Sim { nodes, rng, .. } = self;
        let id = nodes[client].engine.create_document(now, |tx| {
            content::init_document(tx, rng).expect("a fresh document takes the first change")
        });
        self.nodes[client].known.insert(id);
        self.docs.insert(
            id,
            DocInfo {
                creator: client,
                shared: false,
            },
        );
        self.stats.edits += 1;
        self.mix(id.as_bytes());
        self.drain(client);
    }

    fn edit(&mut self, client: usize) {
        let now = self.ts();
        let Sim { nodes, rng, .. } = self;
        let n = &mut nodes[client];
        let Some(id) = n.known.iter().copied().choose(rng) else {
            return;
        };
        match n.engine.document(&id) {
            None => {
                // Evicted (or still loading): the app opens it again and edits later.
                n.engine.find(now, id);
                self.drain(client);
            }
            Some(doc) if content::is_editable(doc) => {
                let result = n
                    .engine
                    .change_document(now, id, |tx| content::random_edit(tx, rng));
                let (_, heads) = result.unwrap_or_else(|e| panic!("a random edit failed: {e}"));
                if self.trace {
                    eprintln!(
                        "{:>8} {} edited {id} -> {} heads",
                        self.now,
                        self.nodes[client].peer,
                        heads.len()
                    );
                }
                self.stats.edits += 1;
                for h in heads {
                    self.mix(&h.0);
                }
                self.drain(client);
            }
            Some(_) => {}
        }
    }

    fn ephemeral(&mut self, client: usize) {
        let Sim { nodes, rng, .. } = self;
        let n = &mut nodes[client];
        let Some(id) = n.known.iter().copied().choose(rng) else {
            return;
        };
        self.stats.ephemeral_sent += 1;
        let data = format!("{}#{}", n.peer, self.stats.ephemeral_sent).into_bytes();
        n.engine.broadcast_ephemeral(id, data);
        self.drain(client);
    }

    // ------------------------------------------------------------------ checks

    /// Checks that every change the relay ever revealed is on its disk (flushed), recording
    /// a [`Violation`] for each that is not.
    pub fn check_durability(&mut self, when: &str) {
        let revealed = std::mem::take(&mut self.revealed);
        for (doc, hashes) in &revealed {
            let heads: Vec<ChangeHash> = hashes.iter().copied().collect();
            let store = self.nodes[RELAY].host.store();
            let missing = self.flushed.get_mut().missing(store, doc, &heads);
            if !missing.is_empty() {
                let found = Found::Later {
                    when: when.to_owned(),
                };
                self.violate(*doc, missing, found);
            }
        }
        self.stats.flushed_loads = self.flushed.get_mut().loads;
        self.revealed = revealed;
    }

    /// A node's copy of a document: in memory, or else loaded from its store.
    fn view(&self, node: usize, id: &DocumentId) -> Cow<'_, Automerge> {
        let n = &self.nodes[node];
        match n.engine.document(id) {
            Some(doc) => Cow::Borrowed(doc),
            None => {
                let chunks = n
                    .host
                    .store()
                    .load_range(&[id.to_string()])
                    .expect("the simulated store cannot fail");
                Cow::Owned(
                    content::load_chunks(&chunks)
                        .unwrap_or_else(|e| panic!("{}'s chunks of {id} do not load: {e}", n.peer)),
                )
            }
        }
    }

    /// After [`Sim::run_until_quiet`]: every document was shared, and every peer (the relay
    /// too, in memory and on disk) has the same heads and the same content for it.
    pub fn check_converged(&self) -> Result<(), String> {
        if !self.healed {
            return Err("the active phase has not ended".into());
        }
        if self.docs.is_empty() {
            return Err("no document was created".into());
        }
        for (id, info) in &self.docs {
            if !info.shared {
                return Err(format!(
                    "{id}: the relay never acknowledged it to its creator"
                ));
            }
            let relay = self.view(RELAY, id);
            let mut heads = relay.get_heads();
            heads.sort();
            if heads.is_empty() {
                return Err(format!("{id}: the relay has no changes"));
            }
            let content = content::materialise(&relay);
            let mut disk_heads = self
                .flushed
                .borrow_mut()
                .heads(self.nodes[RELAY].host.store(), id);
            disk_heads.sort();
            if disk_heads != heads {
                return Err(format!(
                    "{id}: the relay's disk has heads {disk_heads:?}, its memory {heads:?}"
                ));
            }
            for client in 1..=self.config.clients {
                let n = &self.nodes[client];
                if !n.known.contains(id) {
                    return Err(format!("{id}: {} never opened it", n.peer));
                }
                let copy = self.view(client, id);
                let mut theirs = copy.get_heads();
                theirs.sort();
                if theirs != heads {
                    return Err(format!(
                        "{id}: {} has heads {theirs:?}, the relay {heads:?}",
                        n.peer
                    ));
                }
                let their_content = content::materialise(&copy);
                if their_content != content {
                    return Err(format!(
                        "{id}: {} sees {their_content:?}, the relay {content:?}",
                        n.peer
                    ));
                }
            }
        }
        Ok(())
    }

    /// After [`Sim::run_until_quiet`]: advancing the clock through every engine timer (past
    /// idle eviction) produces no frame, and timers stop coming.
    pub fn check_quiet_when_idle(&mut self) -> Result<(), String> {
        let sent = self.stats.frames_sent;
        for _ in 0..1_000 {
            let Some((t, node)) = self.due_timer(u64::MAX) else {
                return Ok(());
            };
            self.now = self.now.max(t);
            self.fire_timer(node);
            self.run_until_quiet();
            if self.stats.frames_sent != sent {
                return Err(format!(
                    "{} frames sent by an idle network at t={} ms",
                    self.stats.frames_sent - sent,
                    self.now
                ));
            }
        }
        Err("engine timers keep firing on an idle network".into())
    }

    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "seed {} clients {} docs {} t={}ms steps {} frames {}/{} lost {} edits {} drops {} partitions {} crashes {} lost-writes {} disk-full {} write-failures {} reads-refused {} evictions {} compactions {} revealed {} checked {} violations {} stale-timeouts {} closes {:?}",
            self.config.seed,
            self.config.clients,
            self.docs.len(),
            s.now_millis,
            s.steps,
            s.frames_delivered,
            s.frames_sent,
            s.frames_lost,
            s.edits,
            s.link_drops,
            s.partitions,
            s.relay_crashes,
            s.writes_lost,
            s.disk_full,
            s.write_failures,
            s.reads_refused,
            s.evictions,
            s.compactions,
            s.revealed,
            s.messages_checked,
            s.violations,
            s.stale_timeouts,
            s.closes,
        )
    }
}
