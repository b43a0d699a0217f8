//! Group scenarios: groups of peers sharing one document each, every peer writing into it
//! (fan-out, steady, burst), sending cursor messages about it (presence), or coming back
//! after the others wrote while it was offline (catch-up).
//!
//! Each peer writes entries `e/<peer>/<seq>` holding the moment (µs since the bench epoch)
//! just before its commit. A reader counts an entry as arrived when its engine reports the
//! document changed and the entry is in it, and records the delay. A writer's entries
//! arrive in order (each change depends on the writer's previous one), so a reader only
//! looks for each writer's next entry.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use cairn_sync::engine::Event;
use cairn_sync::ids::DocumentId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Semaphore};

use cairn_bench::device::{Device, Traffic};
use cairn_bench::server::Server;

use super::{acked, micros_since, pct_ms, sorted, wait_until, Phase, Row};

/// The shape of a group scenario.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupLoad {
    pub(crate) groups: usize,
    pub(crate) peers: usize,
    /// Edits (or cursor messages) per writing peer.
    pub(crate) edits_per_peer: usize,
    /// Gap between one peer's edits, drawn uniformly from this range (ms); the first edit
    /// comes at a uniform offset within the largest gap, so the peers do not write in step.
    pub(crate) gap_ms: (u64, u64),
    /// How long after the last scheduled edit the bench waits for every peer to have every
    /// edit; what is still missing then is counted lost.
    pub(crate) grace: Duration,
    /// Every device's sync debounce, when not the engine's client default.
    pub(crate) client_debounce: Option<Duration>,
}

impl GroupLoad {
    fn edit_span(&self) -> Duration {
        Duration::from_millis(self.gap_ms.1 * (self.edits_per_peer as u64 + 1))
    }
}

/// What the peers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every peer edits; latency, CPU and traffic per edit.
    Edits,
    /// Every peer sends cursor (ephemeral) messages; their latency.
    Presence,
    /// The last peer of each group goes offline, the others edit, then it comes back.
    Catchup,
}

struct PeerOutcome {
    latencies_us: Vec<u32>,
    received: usize,
    expected: usize,
    send_us: Vec<u32>,
    traffic: Traffic,
    /// A rejoining peer's time to have everything, and what it received meanwhile.
    catchup: Option<(Duration, Traffic)>,
}

struct Shared {
    url: String,
    load: GroupLoad,
    mode: Mode,
    epoch: Instant,
    /// Set up (or why not: the run stops at the first device that cannot be set up).
    ready: mpsc::UnboundedSender<Result<(), String>>,
    done: mpsc::UnboundedSender<()>,
    start: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    rejoin: watch::Receiver<bool>,
    /// Connections being opened at once during setup.
    connecting: Arc<Semaphore>,
}

/// Handshakes in flight at once during setup: hundreds of devices dialling in the same
/// millisecond make a busy server miss the client's handshake timeout, which is not
/// what the scenarios measure (setup is not measured).
const CONNECTING: usize = 16;

/// How long connecting every device and opening every group's document may take.
const SETUP_LIMIT: Duration = Duration::from_secs(180);

/// Runs one group scenario against `server`: setup (connect, create and open the group
/// documents) is not measured; the phase runs from the first edit until every peer has
/// every edit (or the grace period ends). For [`Mode::Catchup`] the measured phase is
/// the rejoin.
pub(crate) async fn groups(
    server: &Server,
    load: GroupLoad,
    mode: Mode,
    epoch: Instant,
) -> anyhow::Result<Row> {
    let total = load.groups * load.peers;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (start_tx, start_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (rejoin_tx, rejoin_rx) = watch::channel(false);
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let mut tasks = Vec::with_capacity(total);
    for g in 0..load.groups {
        let (id_tx, id_rx) = watch::channel(None);
        let mut id_tx = Some(id_tx);
        for p in 0..load.peers {
            let shared = Shared {
                url: server.url(),
                load,
                mode,
                epoch,
                ready: ready_tx.clone(),
                done: done_tx.clone(),
                start: start_rx.clone(),
                stop: stop_rx.clone(),
                rejoin: rejoin_rx.clone(),
                connecting: connecting.clone(),
            };
            let tx = if p == 0 { id_tx.take() } else { None };
            tasks.push(tokio::spawn(peer(shared, g, p, tx, id_rx.clone())));
        }
    }
    drop((ready_tx, done_tx));

    let setup_deadline = Instant::now() + SETUP_LIMIT;
    for n in 0..total {
        let why = match tokio::time::timeout_at(setup_deadline.into(), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => continue,
            Ok(Some(Err(e))) => e,
            Ok(None) => "every device task ended".into(),
            Err(_) => format!("not within {SETUP_LIMIT:?}"),
        };
        let _ = stop_tx.send(true);
        for t in &tasks {
            t.abort();
        }
        bail!("only {n} of {total} devices were set up: {why}");
    }

    let mut phase = Phase::begin(server);
    let _ = start_tx.send(true);
    let deadline = Instant::now() + load.edit_span() + load.grace;
    let online = if mode == Mode::Catchup {
        load.groups * (load.peers - 1)
    } else {
        total
    };
    let mut finished = 0;
    while finished < online {
        match tokio::time::timeout_at(deadline.into(), done_rx.recv()).await {
            Ok(Some(())) => finished += 1,
            _ => break,
        }
    }
    let mut incomplete = online - finished;
    if mode == Mode::Catchup {
        // The edits are in; now the absent peers come back, and that is what is measured.
        phase = Phase::begin(server);
        let _ = rejoin_tx.send(true);
        let deadline = Instant::now() + load.grace;
        let mut back = 0;
        while back < load.groups {
            match tokio::time::timeout_at(deadline.into(), done_rx.recv()).await {
                Ok(Some(())) => back += 1,
                _ => break,
            }
        }
        incomplete += load.groups - back;
    }
    let mut row = phase.end(server, server.kind.to_string(), 0);
    let _ = stop_tx.send(true);

    let mut latencies = Vec::new();
    let mut send = Vec::new();
    let mut traffic = Traffic::default();
    let mut rejoin = (Vec::new(), Traffic::default());
    let mut lost = 0u64;
    let mut errors = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(30), t).await {
            Ok(Ok(Ok(out))) => {
                lost += out.expected.saturating_sub(out.received) as u64;
                latencies.extend(out.latencies_us);
                send.extend(out.send_us);
                traffic += out.traffic;
                if let Some((took, t)) = out.catchup {
                    rejoin.0.push(took.as_micros().min(u32::MAX as u128) as u32);
                    rejoin.1 += t;
                }
            }
            Ok(Ok(Err(e))) => {
                lost += expected_per_peer(load, mode) as u64;
                errors.push(format!("{e:#}"));
            }
            _ => {
                lost += expected_per_peer(load, mode) as u64;
                errors.push("device task did not finish".into());
            }
        }
    }
    latencies.sort_unstable();
    send.sort_unstable();
    rejoin.0.sort_unstable();
    row.lost = lost;
    row.peers = Some(total as u64);
    match mode {
        Mode::Edits | Mode::Presence => {
            row.p50_ms = pct_ms(&latencies, 0.5);
            row.p99_ms = pct_ms(&latencies, 0.99);
            row.max_ms = pct_ms(&latencies, 1.0);
            row.edits = Some((total * load.edits_per_peer) as u64);
            row.traffic = Some(traffic);
            row.note = format!("{} arrivals", latencies.len());
        }
        Mode::Catchup => {
            row.p50_ms = pct_ms(&rejoin.0, 0.5);
            row.p99_ms = pct_ms(&rejoin.0, 0.99);
            row.max_ms = pct_ms(&rejoin.0, 1.0);
            let n = rejoin.0.len().max(1) as f64;
            row.rejoin_in = Some((
                rejoin.1.frames_received as f64 / n,
                rejoin.1.bytes_received as f64 / n,
            ));
            row.note = format!(
                "{} peers back, each missing {} edits",
                rejoin.0.len(),
                (load.peers - 1) * load.edits_per_peer
            );
        }
    }
    if mode == Mode::Edits {
        row.send_p50_ms = pct_ms(&send, 0.5);
        row.send_p99_ms = pct_ms(&send, 0.99);
    }
    if mode == Mode::Presence {
        let sent = (total * (load.peers - 1) * load.edits_per_peer) as u64;
        let got = latencies.len() as u64;
        row.note = format!("{got} of {sent} cursor deliveries");
        // A server that forwards only a few cursor messages does not offer presence; its
        // few figures would compare nothing.
        if got * 2 < sent {
            row.p50_ms = None;
            row.p99_ms = None;
            row.max_ms = None;
            row.note += ": the server does not forward cursor messages to the group";
        }
    }
    if let Some((p50, p99)) = row.relay_forward_ms {
        row.note += &format!("; relay forward p50 ≤ {p50} ms, p99 ≤ {p99} ms");
    }
    if incomplete > 0 {
        row.note += &format!("; {incomplete} peers incomplete");
    }
    if !errors.is_empty() {
        row.note += &format!("; {} errors, first: {}", errors.len(), errors[0]);
    }
    if lost > 0 && mode != Mode::Presence {
        row.note += "; lost edits: not an anchor";
    }
    Ok(row)
}

/// Entries (or cursor messages) one peer should receive.
fn expected_per_peer(load: GroupLoad, mode: Mode) -> usize {
    match mode {
        Mode::Edits | Mode::Presence => (load.peers - 1) * load.edits_per_peer,
        // Online peers get the other online peers' edits; the rejoining one gets them all.
        Mode::Catchup => (load.peers - 2) * load.edits_per_peer,
    }
}

/// Connects and opens the group's document: peer 0 creates it and publishes its id once
/// the server has it; the others find it.
async fn open_group(
    s: &Shared,
    g: usize,
    p: usize,
    id_tx: Option<watch::Sender<Option<DocumentId>>>,
    id_rx: &mut watch::Receiver<Option<DocumentId>>,
) -> anyhow::Result<(Device, DocumentId)> {
    let deadline = Instant::now() + SETUP_LIMIT;
    let seed = (g * 1000 + p) as u64 + 1;
    let permit = s.connecting.acquire().await?;
    let mut dev = Device::connect_with(
        &s.url,
        &format!("bench-g{g}p{p}"),
        seed,
        s.epoch,
        s.load.client_debounce,
    )
    .await?;
    drop(permit);
    let doc = match id_tx {
        Some(id_tx) => {
            let now = dev.now();
            let id = dev.engine.create_document(now, |tx| {
                tx.put(ROOT, "group", g as i64)
                    .expect("put on a new document");
            });
            dev.pump();
            let heads = sorted(
                dev.engine
                    .document(&id)
                    .ok_or_else(|| anyhow!("the new document is not loaded"))?
                    .get_heads(),
            );
            wait_until(
                &mut dev,
                deadline,
                "the server to acknowledge the new document",
                |d| acked(d, id, &heads),
            )
            .await?;
            let _ = id_tx.send(Some(id));
            id
        }
        None => {
            let id = id_rx
                .wait_for(|v| v.is_some())
                .await?
                .ok_or_else(|| anyhow!("no document id"))?;
            let now = dev.now();
            dev.engine.find(now, id);
            dev.pump();
            wait_until(&mut dev, deadline, "the group document", |d| {
                d.events.clear();
                d.engine
                    .document(&id)
                    .is_some_and(|a| !a.get_heads().is_empty())
            })
            .await?;
            id
        }
    };
    Ok((dev, doc))
}

/// What one peer has received of the others' entries.
struct Arrivals {
    /// Per writer: the next sequence number expected, or `None` for peers that do not
    /// write to this reader (itself, an absent peer).
    next: Vec<Option<usize>>,
    received: usize,
    latencies_us: Vec<u32>,
    /// Cursor messages seen, (writer, seq): the protocol may deliver one twice.
    seen: HashSet<(u32, u32)>,
}

impl Arrivals {
    fn new(peers: usize, me: usize, absent: Option<usize>, expected: usize) -> Arrivals {
        let next = (0..peers)
            .map(|w| (w != me && Some(w) != absent).then_some(0))
            .collect();
        Arrivals {
            next,
            received: 0,
            latencies_us: Vec::with_capacity(expected),
            seen: HashSet::new(),
        }
    }

    /// Looks for each writer's next entries in the document.
    fn scan(&mut self, dev: &Device, doc: DocumentId, epoch: Instant) {
        let Some(am) = dev.engine.document(&doc) else {
            return;
        };
        let now = micros_since(epoch);
        for (w, next) in self.next.iter_mut().enumerate() {
            let Some(seq) = next else { continue };
            while let Ok(Some((value, _))) = am.get(ROOT, format!("e/{w}/{seq}").as_str()) {
                if let Some(sent) = value.as_i64() {
                    self.latencies_us
                        .push((now - sent).clamp(0, u32::MAX as i64) as u32);
                }
                self.received += 1;
                *seq += 1;
            }
        }
    }

    /// A cursor message: 8 bytes of send time (µs), 4 of writer, 4 of sequence number.
    fn cursor(&mut self, data: &[u8], epoch: Instant) {
        let (Some(sent), Some(w), Some(seq)) = (
            data.get(0..8).and_then(|b| b.try_into().ok()),
            data.get(8..12).and_then(|b| b.try_into().ok()),
            data.get(12..16).and_then(|b| b.try_into().ok()),
        ) else {
            return;
        };
        let (sent, w, seq) = (
            i64::from_le_bytes(sent),
            u32::from_le_bytes(w),
            u32::from_le_bytes(seq),
        );
        if self.seen.insert((w, seq)) {
            let now = micros_since(epoch);
            self.latencies_us
                .push((now - sent).clamp(0, u32::MAX as i64) as u32);
            self.received += 1;
        }
    }
}

async fn peer(
    mut s: Shared,
    g: usize,
    p: usize,
    id_tx: Option<watch::Sender<Option<DocumentId>>>,
    mut id_rx: watch::Receiver<Option<DocumentId>>,
) -> anyhow::Result<PeerOutcome> {
    let (mut dev, doc) = match open_group(&s, g, p, id_tx, &mut id_rx).await {
        Ok(v) => v,
        Err(e) => {
            // When the group's creator failed the others fail for want of the document id;
            // the creator's own error is the one worth reporting.
            let follow_on = p != 0 && id_rx.borrow().is_none() && id_rx.has_changed().is_err();
            if !follow_on {
                let _ = s.ready.send(Err(format!("device g{g}p{p}: {e:#}")));
            }
            return Err(e);
        }
    };
    let _ = s.ready.send(Ok(()));
    s.start.wait_for(|v| *v).await?;
    let load = s.load;
    let deadline = Instant::now() + load.edit_span() + load.grace;
    let absent = (s.mode == Mode::Catchup).then_some(load.peers - 1);
    dev.traffic = Traffic::default();
    dev.events.clear();

    if absent == Some(p) {
        return rejoin(s, dev, doc, p).await;
    }

    let expected = expected_per_peer(load, s.mode);
    let mut arrivals = Arrivals::new(load.peers, p, absent, expected);
    arrivals.scan(&dev, doc, s.epoch);
    let mut rng = ChaCha8Rng::seed_from_u64((g * 1000 + p) as u64 + 1);
    let mut next_edit = Instant::now() + Duration::from_millis(rng.gen_range(0..load.gap_ms.1));
    let mut seq = 0;
    let mut done_sent = false;
    loop {
        let mut changed = false;
        for e in dev.events.drain(..) {
            match e {
                Event::DocumentChanged { doc: d, .. } if d == doc => changed = true,
                Event::Ephemeral { doc: d, data, .. } if d == doc => {
                    arrivals.cursor(&data, s.epoch)
                }
                _ => {}
            }
        }
        if changed {
            arrivals.scan(&dev, doc, s.epoch);
        }
        if arrivals.received >= expected && !done_sent {
            done_sent = true;
            let _ = s.done.send(());
        }
        if *s.stop.borrow() || Instant::now() >= deadline {
            break;
        }
        if seq < load.edits_per_peer && Instant::now() >= next_edit {
            let sent = micros_since(s.epoch);
            if s.mode == Mode::Presence {
                let mut data = Vec::with_capacity(16);
                data.extend_from_slice(&sent.to_le_bytes());
                data.extend_from_slice(&(p as u32).to_le_bytes());
                data.extend_from_slice(&(seq as u32).to_le_bytes());
                dev.engine.broadcast_ephemeral(doc, data);
            } else {
                let key = format!("e/{p}/{seq}");
                let now = dev.now();
                dev.engine
                    .change_document(now, doc, |tx| tx.put(ROOT, key.as_str(), sent))?;
                dev.committed(doc, Instant::now());
            }
            dev.pump();
            seq += 1;
            next_edit += Duration::from_millis(rng.gen_range(load.gap_ms.0..=load.gap_ms.1));
            continue;
        }
        let wake = if seq < load.edits_per_peer {
            next_edit.min(deadline)
        } else {
            deadline
        };
        tokio::select! {
            r = dev.step_until(wake) => { r?; }
            _ = s.stop.changed() => {}
        }
    }
    let traffic = dev.traffic;
    dev.disconnect();
    Ok(PeerOutcome {
        latencies_us: arrivals.latencies_us,
        received: arrivals.received,
        expected,
        send_us: std::mem::take(&mut dev.commit_to_frame_us),
        traffic,
        catchup: None,
    })
}

/// The absent peer of a catch-up group: offline until told to rejoin, then reconnects and
/// waits until it has every other peer's entries.
async fn rejoin(
    mut s: Shared,
    mut dev: Device,
    doc: DocumentId,
    p: usize,
) -> anyhow::Result<PeerOutcome> {
    dev.abandon();
    let expected = (s.load.peers - 1) * s.load.edits_per_peer;
    let mut arrivals = Arrivals::new(s.load.peers, p, None, expected);
    tokio::select! {
        r = s.rejoin.wait_for(|v| *v) => { r?; }
        _ = s.stop.wait_for(|v| *v) => {
            return Ok(PeerOutcome {
                latencies_us: Vec::new(),
                received: 0,
                expected,
                send_us: Vec::new(),
                traffic: Traffic::default(),
                catchup: None,
            });
        }
    }
    let started = Instant::now();
    let deadline = started + s.load.grace;
    dev.traffic = Traffic::default();
    dev.events.clear();
    dev.attach(&s.url).await?;
    let mut took = None;
    loop {
        if dev
            .events
            .drain(..)
            .any(|e| matches!(e, Event::DocumentChanged { doc: d, .. } if d == doc))
        {
            arrivals.scan(&dev, doc, s.epoch);
        }
        if arrivals.received >= expected && took.is_none() {
            took = Some(started.elapsed());
            let _ = s.done.send(());
        }
        if *s.stop.borrow() || Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            r = dev.step_until(deadline) => { r?; }
            _ = s.stop.changed() => {}
        }
    }
    let traffic = dev.traffic;
    dev.disconnect();
    Ok(PeerOutcome {
        // The rejoin's figures go to the row; these entries' ages say nothing.
        latencies_us: Vec::new(),
        received: arrivals.received,
        expected,
        send_us: Vec::new(),
        traffic: Traffic::default(),
        catchup: took.map(|t| (t, traffic)),
    })
}
