//! The victim: two well-behaved devices (cairn-core engines, as in `cairn-bench`) that
//! co-edit one document through the relay while an attack runs. Device A makes one edit
//! every [`EDIT_GAP`]; device B records when each edit arrives. Both reconnect (every
//! [`RECONNECT_GAP`]) when the relay drops them, as a phone would.
//!
//! They run on their own thread and single-threaded runtime, so the attacker's tasks in
//! this process do not delay them (they still share the machine's CPUs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use cairn_bench::device::Device;
use cairn_sync::engine::Event;
use cairn_sync::ids::DocumentId;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// Device A's peer id.
pub(crate) const PEER_A: &str = "victim-a";
/// Device B's peer id (the takeover attack joins with it).
pub(crate) const PEER_B: &str = "victim-b";

/// Gap between two of A's edits.
const EDIT_GAP: Duration = Duration::from_millis(20);
/// Gap between reconnect attempts of a dropped device.
const RECONNECT_GAP: Duration = Duration::from_millis(500);
/// Longest a reconnect attempt (connect + handshake) may take before it is abandoned.
const RECONNECT_LIMIT: Duration = Duration::from_secs(1);
/// Longest the TCP probe before a reconnect may take: a relay that is gone refuses at
/// once, and the device must not stop editing while it finds out.
const PROBE_LIMIT: Duration = Duration::from_millis(100);
/// Longest the setup (both devices connected, the document shared) may take.
const SETUP_LIMIT: Duration = Duration::from_secs(30);
/// Longest the victim thread may take to stop once told.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// Which part of the run an edit was made in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before the attack: the calm baseline.
    Calm,
    /// During the attack (and a minimum window after its start).
    Attack,
    /// After the attack: edits are made but not measured; arrivals still count.
    After,
    /// Finish and report.
    Stop,
}

/// Latencies and counts of the edits made in one phase.
#[derive(Debug, Default)]
pub(crate) struct PhaseFigures {
    /// Edits A made.
    pub(crate) sent: usize,
    /// Edits that arrived at B.
    pub(crate) delivered: usize,
    /// One delay per edit, sorted, in microseconds: the arrival delay of a delivered edit,
    /// or, for one that never arrived, its age when the victim stopped (a lower bound, so
    /// a dead relay does not show the few fast edits from before it died as its latency).
    delays: Vec<Delay>,
}

/// One edit's delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Delay {
    us: u64,
    /// The edit never arrived; `us` is how long it had been waiting.
    lost: bool,
}

/// A quantile of the delays.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quantile {
    /// Milliseconds.
    pub(crate) ms: f64,
    /// Only a lower bound: the edit at this quantile never arrived.
    pub(crate) at_least: bool,
}

impl PhaseFigures {
    fn record(&mut self, us: u64, lost: bool) {
        if !lost {
            self.delivered += 1;
        }
        self.delays.push(Delay { us, lost });
    }

    fn sort(&mut self) {
        self.delays.sort_unstable();
    }

    /// The `q` quantile over every edit made in the phase.
    pub(crate) fn quantile(&self, q: f64) -> Option<Quantile> {
        if self.delays.is_empty() {
            return None;
        }
        let i = ((self.delays.len() as f64 - 1.0) * q).round() as usize;
        let d = self.delays[i];
        Some(Quantile {
            ms: d.us as f64 / 1000.0,
            at_least: d.lost,
        })
    }
}

/// What the victim saw.
#[derive(Debug, Default)]
pub(crate) struct VictimReport {
    /// Edits before the attack.
    pub(crate) calm: PhaseFigures,
    /// Edits during the attack window.
    pub(crate) attack: PhaseFigures,
    /// Successful reconnects of A and of B.
    pub(crate) reconnects: (u32, u32),
    /// Reconnect attempts that failed or timed out, A and B.
    pub(crate) failed_reconnects: (u32, u32),
    /// Ephemeral messages A and B received.
    pub(crate) ephemerals: (u64, u64),
}

/// The running victim.
pub(crate) struct Victim {
    phase: watch::Sender<Phase>,
    thread: Option<JoinHandle<anyhow::Result<VictimReport>>>,
    /// The document A and B share.
    pub(crate) doc: DocumentId,
}

impl Victim {
    /// Connects both devices to `url`, shares a document, starts editing (phase
    /// [`Phase::Calm`]) and returns once that works (at most [`SETUP_LIMIT`]).
    pub(crate) fn start(url: String, addr: SocketAddr, epoch: Instant) -> anyhow::Result<Victim> {
        let (phase_tx, phase_rx) = watch::channel(Phase::Calm);
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("victim".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building the victim's runtime")?;
                rt.block_on(run(url, addr, epoch, phase_rx, ready_tx))
            })
            .context("starting the victim thread")?;
        match ready_rx.recv_timeout(SETUP_LIMIT + Duration::from_secs(5)) {
            Ok(doc) => Ok(Victim {
                phase: phase_tx,
                thread: Some(thread),
                doc,
            }),
            Err(_) => {
                let _ = phase_tx.send(Phase::Stop);
                let why = match thread.join() {
                    Ok(Err(e)) => format!("{e:#}"),
                    Ok(Ok(_)) => "it stopped without a document".into(),
                    Err(_) => "its thread panicked".into(),
                };
                bail!("the victim could not start: {why}")
            }
        }
    }

    /// Moves to `phase`.
    pub(crate) fn set(&self, phase: Phase) {
        let _ = self.phase.send(phase);
    }

    /// Stops both devices and returns what they saw (at most [`STOP_LIMIT`]).
    pub(crate) fn finish(mut self) -> anyhow::Result<VictimReport> {
        self.set(Phase::Stop);
        let thread = self
            .thread
            .take()
            .ok_or_else(|| anyhow!("already finished"))?;
        let deadline = Instant::now() + STOP_LIMIT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !thread.is_finished() {
            bail!("the victim did not stop within {STOP_LIMIT:?}");
        }
        thread
            .join()
            .map_err(|_| anyhow!("the victim thread panicked"))?
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        // Tell the thread to stop even when the caller bailed out early; its loops check
        // the phase at least every EDIT_GAP, and its sockets close when it ends.
        let _ = self.phase.send(Phase::Stop);
    }
}

/// One edit A made.
struct Sent {
    seq: u64,
    at_us: u64,
    phase: Phase,
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

fn key(seq: u64) -> String {
    format!("e/{seq}")
}

async fn run(
    url: String,
    addr: SocketAddr,
    epoch: Instant,
    phase: watch::Receiver<Phase>,
    ready: std_mpsc::Sender<DocumentId>,
) -> anyhow::Result<VictimReport> {
    let setup_deadline = Instant::now() + SETUP_LIMIT;
    let mut a = tokio::time::timeout(SETUP_LIMIT, Device::connect(&url, PEER_A, 1, epoch))
        .await
        .context("victim A: connect timed out")??;
    let now = a.now();
    let doc = a.engine.create_document(now, |tx| {
        tx.put(ROOT, "title", "victim")
            .expect("put on a new document");
    });
    a.pump();
    let heads = a.engine.document(&doc).expect("created").get_heads();
    loop {
        let acked = a.events.iter().any(|e| {
            matches!(e, Event::PeerHasHeads { doc: d, heads: h, .. } if *d == doc && *h == heads)
        });
        a.events.clear();
        if acked {
            break;
        }
        if !a.step_until(setup_deadline).await? {
            bail!("victim A: the relay did not acknowledge the new document");
        }
    }
    let mut b = tokio::time::timeout(SETUP_LIMIT, Device::connect(&url, PEER_B, 2, epoch))
        .await
        .context("victim B: connect timed out")??;
    let now = b.now();
    b.engine.find(now, doc);
    b.pump();
    while b
        .engine
        .document(&doc)
        .is_none_or(|am| am.get_heads().is_empty())
    {
        b.events.clear();
        if !b.step_until(setup_deadline).await? {
            bail!("victim B: the shared document did not arrive");
        }
    }
    b.events.clear();
    ready
        .send(doc)
        .map_err(|_| anyhow!("nobody waits for the victim"))?;

    let (sent_tx, sent_rx) = mpsc::unbounded_channel();
    let (a_out, b_out) = tokio::join!(
        editor(&mut a, (&url, addr), doc, epoch, phase.clone(), sent_tx),
        watcher(&mut b, (&url, addr), doc, epoch, phase, sent_rx),
    );
    a.disconnect();
    b.disconnect();
    let a_out = a_out?;
    let mut report = b_out?;
    report.reconnects.0 = a_out.reconnects;
    report.failed_reconnects.0 = a_out.failed;
    report.ephemerals.0 = a_out.ephemerals;
    Ok(report)
}

/// The relay's websocket URL and address.
type Relay<'a> = (&'a str, SocketAddr);

/// Per-device counters.
#[derive(Default)]
struct DeviceCounts {
    reconnects: u32,
    failed: u32,
    ephemerals: u64,
}

/// Reconnects `dev` if it was dropped and the retry time has come.
async fn keep_connected(
    dev: &mut Device,
    (url, addr): Relay<'_>,
    retry_at: &mut Instant,
    counts: &mut DeviceCounts,
) {
    if !dev.closed || Instant::now() < *retry_at {
        return;
    }
    *retry_at = Instant::now() + RECONNECT_GAP;
    dev.abandon();
    // `attach` retries a refused connect for about a second; a device that is offline
    // keeps editing instead, so probe first.
    if !matches!(
        tokio::time::timeout(PROBE_LIMIT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    ) {
        counts.failed += 1;
        return;
    }
    match tokio::time::timeout(RECONNECT_LIMIT, dev.attach(url)).await {
        Ok(Ok(())) => counts.reconnects += 1,
        _ => {
            dev.abandon();
            counts.failed += 1;
        }
    }
}

/// Steps `dev` until `until` (or just waits, while it is disconnected).
async fn step(dev: &mut Device, until: Instant) {
    if dev.closed {
        tokio::time::sleep_until(until.into()).await;
    } else if dev.step_until(until).await.is_err() {
        // Closed under us: the next `keep_connected` reconnects.
        dev.closed = true;
    }
}

fn count_ephemerals(dev: &mut Device, counts: &mut DeviceCounts) {
    counts.ephemerals += dev
        .events
        .iter()
        .filter(|e| matches!(e, Event::Ephemeral { .. }))
        .count() as u64;
}

/// Device A: one edit every [`EDIT_GAP`], offline or not (an offline-first app keeps
/// working; edits made while dropped travel after the reconnect).
async fn editor(
    a: &mut Device,
    relay: Relay<'_>,
    doc: DocumentId,
    epoch: Instant,
    phase: watch::Receiver<Phase>,
    sent: mpsc::UnboundedSender<Sent>,
) -> anyhow::Result<DeviceCounts> {
    let mut counts = DeviceCounts::default();
    let mut retry_at = Instant::now();
    let mut next_edit = Instant::now();
    let mut seq = 0u64;
    loop {
        let ph = *phase.borrow();
        if ph == Phase::Stop {
            break;
        }
        keep_connected(a, relay, &mut retry_at, &mut counts).await;
        if Instant::now() >= next_edit {
            seq += 1;
            let at_us = micros_since(epoch);
            let now = a.now();
            let k = key(seq);
            a.engine
                .change_document(now, doc, |tx| tx.put(ROOT, k.as_str(), at_us as i64))
                .map_err(|e| anyhow!("victim A could not edit: {e}"))?;
            a.pump();
            let _ = sent.send(Sent {
                seq,
                at_us,
                phase: ph,
            });
            // After a stall, carry on from now rather than bursting to catch up.
            next_edit = (next_edit + EDIT_GAP).max(Instant::now());
        }
        step(a, next_edit).await;
        count_ephemerals(a, &mut counts);
        a.events.clear();
    }
    Ok(counts)
}

/// Device B: records the arrival of every edit A reports.
async fn watcher(
    b: &mut Device,
    relay: Relay<'_>,
    doc: DocumentId,
    epoch: Instant,
    phase: watch::Receiver<Phase>,
    mut sent: mpsc::UnboundedReceiver<Sent>,
) -> anyhow::Result<VictimReport> {
    let mut counts = DeviceCounts::default();
    let mut report = VictimReport::default();
    let mut retry_at = Instant::now();
    // seq -> (sent at, phase), for edits not yet seen at B.
    let mut pending: BTreeMap<u64, (u64, Phase)> = BTreeMap::new();
    loop {
        if *phase.borrow() == Phase::Stop {
            break;
        }
        keep_connected(b, relay, &mut retry_at, &mut counts).await;
        step(b, Instant::now() + EDIT_GAP).await;
        // A records an edit before it can reach B (same thread, recorded before A
        // yields), so every arrival finds its record here.
        while let Ok(s) = sent.try_recv() {
            match s.phase {
                Phase::Calm => report.calm.sent += 1,
                Phase::Attack => report.attack.sent += 1,
                Phase::After | Phase::Stop => {}
            }
            pending.insert(s.seq, (s.at_us, s.phase));
        }
        count_ephemerals(b, &mut counts);
        b.events.clear();
        let Some(am) = b.engine.document(&doc) else {
            continue;
        };
        let now_us = micros_since(epoch);
        pending.retain(|&seq, &mut (at_us, ph)| {
            let arrived = matches!(am.get(ROOT, key(seq).as_str()), Ok(Some(_)));
            if arrived {
                let lat = now_us.saturating_sub(at_us);
                match ph {
                    Phase::Calm => report.calm.record(lat, false),
                    Phase::Attack => report.attack.record(lat, false),
                    Phase::After | Phase::Stop => {}
                }
            }
            !arrived
        });
    }
    let now_us = micros_since(epoch);
    for (at_us, ph) in pending.into_values() {
        let waited = now_us.saturating_sub(at_us);
        match ph {
            Phase::Calm => report.calm.record(waited, true),
            Phase::Attack => report.attack.record(waited, true),
            Phase::After | Phase::Stop => {}
        }
    }
    report.calm.sort();
    report.attack.sort();
    report.reconnects.1 = counts.reconnects;
    report.failed_reconnects.1 = counts.failed;
    report.ephemerals.1 = counts.ephemerals;
    Ok(report)
}
