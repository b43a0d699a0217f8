//! The three scenarios. Each runs against one freshly started server and returns table rows.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use automerge::transaction::Transactable;
use automerge::{ChangeHash, ObjType, ReadDoc, ROOT};
use cairn_sync::engine::Event;
use cairn_sync::ids::DocumentId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, watch};

use cairn_bench::device::Device;
use cairn_bench::server::{own_cpu, Cpu, Server};

/// How big each scenario is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    pub(crate) groups: usize,
    pub(crate) peers_per_group: usize,
    pub(crate) edits_per_peer: usize,
    /// Gap between one peer's edits, drawn uniformly from this range (ms).
    pub(crate) edit_gap_ms: (u64, u64),
    pub(crate) docs: usize,
    pub(crate) changes_per_doc: usize,
    pub(crate) big_edits: usize,
}

impl Sizes {
    pub(crate) fn full() -> Sizes {
        Sizes {
            groups: 50,
            peers_per_group: 8,
            edits_per_peer: 20,
            edit_gap_ms: (50, 100),
            docs: 500,
            changes_per_doc: 50,
            big_edits: 20_000,
        }
    }

    pub(crate) fn quick() -> Sizes {
        Sizes {
            groups: 10,
            edits_per_peer: 10,
            docs: 100,
            big_edits: 2_000,
            ..Sizes::full()
        }
    }
}

/// One measured phase against one server.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) label: String,
    pub(crate) wall_s: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
    pub(crate) cpu_s: f64,
    pub(crate) rss_mb: f64,
    pub(crate) lost: u64,
    /// The bench's own CPU over the phase (it shares the machine with the server).
    pub(crate) bench_cpu_s: f64,
    pub(crate) note: String,
}

/// A CPU/time sample taken at the start of a phase.
struct Phase {
    started: Instant,
    server: Cpu,
    bench: Cpu,
}

impl Phase {
    fn begin(server: &Server) -> Phase {
        Phase {
            started: Instant::now(),
            server: server.cpu(),
            bench: own_cpu(),
        }
    }

    fn end(self, server: &Server, label: String, lost: u64) -> Row {
        Row {
            label,
            wall_s: self.started.elapsed().as_secs_f64(),
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
            cpu_s: server.cpu().0 - self.server.0,
            rss_mb: server.peak_rss_mb(),
            lost,
            bench_cpu_s: own_cpu().0 - self.bench.0,
            note: String::new(),
        }
    }
}

fn micros_since(epoch: Instant) -> i64 {
    epoch.elapsed().as_micros() as i64
}

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

/// Steps `dev` until `done` holds (checked before each wait), or fails at `deadline`.
async fn wait_until(
    dev: &mut Device,
    deadline: Instant,
    what: &str,
    mut done: impl FnMut(&mut Device) -> bool,
) -> anyhow::Result<()> {
    loop {
        if done(dev) {
            return Ok(());
        }
        if !dev.step_until(deadline).await? {
            bail!("timed out waiting for {what}");
        }
    }
}

/// True (and the events drained) once the server showed it has `heads` of `doc`.
fn acked(dev: &mut Device, doc: DocumentId, heads: &[ChangeHash]) -> bool {
    let hit = dev.events.iter().any(|e| {
        matches!(e, Event::PeerHasHeads { doc: d, heads: h, .. }
            if *d == doc && sorted(h.clone()) == heads)
    });
    dev.events.clear();
    hit
}

// ------------------------------------------------------------------------------ fan-out

/// How long after the last scheduled edit the fan-out waits for every peer to have every
/// edit; what is still missing then is counted lost.
const CONVERGE_LIMIT: Duration = Duration::from_secs(120);

struct PeerOutcome {
    latencies_us: Vec<u32>,
    received: usize,
}

struct FanoutShared {
    url: String,
    sizes: Sizes,
    epoch: Instant,
    ready: mpsc::UnboundedSender<()>,
    done: mpsc::UnboundedSender<()>,
    start: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

/// `groups` × `peers_per_group` devices; each group shares one document and every peer
/// appends `edits_per_peer` timestamped entries; every peer records the arrival delay of
/// every remote entry.
pub(crate) async fn fanout(server: &Server, sizes: Sizes, epoch: Instant) -> anyhow::Result<Row> {
    let total = sizes.groups * sizes.peers_per_group;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (start_tx, start_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(total);
    for g in 0..sizes.groups {
        let (id_tx, id_rx) = watch::channel(None);
        let mut id_tx = Some(id_tx);
        for p in 0..sizes.peers_per_group {
            let shared = FanoutShared {
                url: server.url(),
                sizes,
                epoch,
                ready: ready_tx.clone(),
                done: done_tx.clone(),
                start: start_rx.clone(),
                stop: stop_rx.clone(),
            };
            let tx = if p == 0 { id_tx.take() } else { None };
            tasks.push(tokio::spawn(fanout_peer(shared, g, p, tx, id_rx.clone())));
        }
    }
    drop((ready_tx, done_tx));

    // Setup (not measured): every socket connected and handshaken.
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    for n in 0..total {
        match tokio::time::timeout_at(setup_deadline.into(), ready_rx.recv()).await {
            Ok(Some(())) => {}
            _ => {
                let _ = stop_tx.send(true);
                let err = first_error(tasks).await;
                bail!("only {n} of {total} devices connected: {err}");
            }
        }
    }

    let phase = Phase::begin(server);
    let _ = start_tx.send(true);
    let edit_span = sizes.edit_gap_ms.1 * (sizes.edits_per_peer as u64 + 1);
    let deadline = Instant::now() + Duration::from_millis(edit_span) + CONVERGE_LIMIT;
    let mut finished = 0;
    while finished < total {
        match tokio::time::timeout_at(deadline.into(), done_rx.recv()).await {
            Ok(Some(())) => finished += 1,
            _ => break,
        }
    }
    let mut row = phase.end(server, server.kind.to_string(), 0);
    let _ = stop_tx.send(true);

    let expected = sizes.peers_per_group * sizes.edits_per_peer;
    let mut latencies = Vec::new();
    let mut lost = 0u64;
    let mut errors = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(30), t).await {
            Ok(Ok(Ok(out))) => {
                lost += expected.saturating_sub(out.received) as u64;
                latencies.extend(out.latencies_us);
            }
            Ok(Ok(Err(e))) => {
                lost += expected as u64;
                errors.push(format!("{e:#}"));
            }
            _ => {
                lost += expected as u64;
                errors.push("device task did not finish".into());
            }
        }
    }
    latencies.sort_unstable();
    let pct = |q: f64| -> Option<f64> {
        if latencies.is_empty() {
            return None;
        }
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        Some(latencies[i] as f64 / 1000.0)
    };
    row.p50_ms = pct(0.5);
    row.p99_ms = pct(0.99);
    row.max_ms = pct(1.0);
    row.lost = lost;
    row.note = format!("{} samples", latencies.len());
    if finished < total {
        row.note += &format!("; {} of {total} peers incomplete", total - finished);
    }
    if !errors.is_empty() {
        row.note += &format!("; {} errors, first: {}", errors.len(), errors[0]);
    }
    Ok(row)
}

async fn first_error(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<PeerOutcome>>>) -> String {
    for t in tasks {
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), t).await {
            return format!("{e:#}");
        }
    }
    "no device reported an error".into()
}

async fn fanout_peer(
    mut s: FanoutShared,
    g: usize,
    p: usize,
    id_tx: Option<watch::Sender<Option<DocumentId>>>,
    mut id_rx: watch::Receiver<Option<DocumentId>>,
) -> anyhow::Result<PeerOutcome> {
    let name = format!("g{g}p{p}");
    let seed = (g * 1000 + p) as u64 + 1;
    let mut dev = Device::connect(&s.url, &format!("bench-{name}"), seed, s.epoch).await?;
    let _ = s.ready.send(());
    s.start.wait_for(|v| *v).await?;
    let sizes = s.sizes;
    let edit_span = sizes.edit_gap_ms.1 * (sizes.edits_per_peer as u64 + 1);
    let deadline = Instant::now() + Duration::from_millis(edit_span) + CONVERGE_LIMIT;

    let doc = match id_tx {
        Some(id_tx) => {
            let now = dev.now();
            let id = dev.engine.create_document(now, |tx| {
                tx.put(ROOT, "group", g as i64)
                    .expect("put on a new document");
            });
            dev.pump();
            let heads = sorted(dev.engine.document(&id).expect("created").get_heads());
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

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let expected = sizes.peers_per_group * sizes.edits_per_peer;
    let mut seen: HashSet<String> = HashSet::with_capacity(expected);
    let mut latencies = Vec::with_capacity(expected);
    // Entries that arrived with the document itself (edits made before we found it).
    scan(&dev, doc, &mut seen, &mut latencies, s.epoch);
    let mut next_edit =
        Instant::now() + Duration::from_millis(rng.gen_range(0..sizes.edit_gap_ms.1));
    let mut seq = 0;
    let mut done_sent = false;
    loop {
        if dev
            .events
            .iter()
            .any(|e| matches!(e, Event::DocumentChanged { doc: d, .. } if *d == doc))
        {
            scan(&dev, doc, &mut seen, &mut latencies, s.epoch);
        }
        dev.events.clear();
        if seen.len() >= expected && !done_sent {
            done_sent = true;
            let _ = s.done.send(());
        }
        if *s.stop.borrow() || Instant::now() >= deadline {
            break;
        }
        if seq < sizes.edits_per_peer && Instant::now() >= next_edit {
            let key = format!("e/{name}/{seq}");
            let sent = micros_since(s.epoch);
            let now = dev.now();
            dev.engine
                .change_document(now, doc, |tx| tx.put(ROOT, key.as_str(), sent))?;
            dev.pump();
            seen.insert(key);
            seq += 1;
            next_edit +=
                Duration::from_millis(rng.gen_range(sizes.edit_gap_ms.0..=sizes.edit_gap_ms.1));
            continue;
        }
        let wake = if seq < sizes.edits_per_peer {
            next_edit.min(deadline)
        } else {
            deadline
        };
        tokio::select! {
            r = dev.step_until(wake) => { r?; }
            _ = s.stop.changed() => {}
        }
    }
    dev.disconnect();
    Ok(PeerOutcome {
        latencies_us: latencies,
        received: seen.len(),
    })
}

/// Records every entry not seen before; for remote ones, its delay from `sent_at`.
fn scan(
    dev: &Device,
    doc: DocumentId,
    seen: &mut HashSet<String>,
    latencies: &mut Vec<u32>,
    epoch: Instant,
) {
    let Some(am) = dev.engine.document(&doc) else {
        return;
    };
    let now = micros_since(epoch);
    for key in am.keys(ROOT) {
        if !key.starts_with("e/") || seen.contains(&key) {
            continue;
        }
        if let Ok(Some((value, _))) = am.get(ROOT, key.as_str()) {
            if let Some(sent) = value.as_i64() {
                latencies.push((now - sent).clamp(0, u32::MAX as i64) as u32);
            }
        }
        seen.insert(key);
    }
}

/// Waits until the server acknowledges `heads` of `doc`: at most 240 s, and gives up
/// early once the server has been idle (no frame to us, no CPU used) for 10 s. The error
/// carries the moment the server went quiet.
async fn wait_for_ack(
    dev: &mut Device,
    server: &Server,
    doc: DocumentId,
    heads: &[ChangeHash],
) -> Result<(), (String, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut quiet_since = (Instant::now(), server.cpu().0);
    loop {
        if acked(dev, doc, heads) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err((
                "no acknowledgement of the last edit within 240 s".into(),
                now,
            ));
        }
        let stepped = dev
            .step_until((now + Duration::from_secs(1)).min(deadline))
            .await
            .map_err(|e| (format!("{e:#}"), Instant::now()))?;
        if stepped || server.cpu().0 > quiet_since.1 + 0.05 {
            quiet_since = (Instant::now(), server.cpu().0);
        } else if quiet_since.0.elapsed() >= Duration::from_secs(10) {
            return Err((
                "server went idle without acknowledging the last edit".into(),
                quiet_since.0,
            ));
        }
    }
}

// ---------------------------------------------------------------------------- cold start

/// One device stores `docs` documents of `changes_per_doc` changes each on the server; then
/// a new device fetches them all. Only the fetch is measured.
pub(crate) async fn cold(server: &Server, sizes: Sizes, epoch: Instant) -> anyhow::Result<Row> {
    let mut writer = Device::offline("bench-cold-writer", 7, epoch);
    let mut expected: BTreeMap<DocumentId, Vec<ChangeHash>> = BTreeMap::new();
    for d in 0..sizes.docs {
        let now = writer.now();
        let id = writer.engine.create_document(now, |tx| {
            tx.put(ROOT, "doc", d as i64)
                .expect("put on a new document");
        });
        for c in 1..sizes.changes_per_doc {
            writer
                .engine
                .change_document(now, id, |tx| tx.put(ROOT, "n", c as i64))?;
            writer.pump();
        }
        writer.pump();
        let heads = writer.engine.document(&id).expect("created").get_heads();
        expected.insert(id, sorted(heads));
    }
    writer.events.clear();
    let populate = Instant::now();
    writer.attach(&server.url()).await?;
    let mut waiting = expected.clone();
    wait_until(
        &mut writer,
        Instant::now() + Duration::from_secs(180),
        "the server to acknowledge every document",
        |w| {
            for e in w.events.drain(..) {
                if let Event::PeerHasHeads { doc, heads, .. } = e {
                    if waiting.get(&doc) == Some(&sorted(heads)) {
                        waiting.remove(&doc);
                    }
                }
            }
            waiting.is_empty()
        },
    )
    .await
    .with_context(|| format!("{} documents unacknowledged", waiting.len()))?;
    let populate_s = populate.elapsed().as_secs_f64();
    writer.disconnect();

    let mut reader = Device::connect(&server.url(), "bench-cold-reader", 8, epoch).await?;
    let phase = Phase::begin(server);
    let now = reader.now();
    for id in expected.keys() {
        reader.engine.find(now, *id);
    }
    reader.pump();
    let mut missing: HashSet<DocumentId> = expected.keys().copied().collect();
    let result = wait_until(
        &mut reader,
        Instant::now() + Duration::from_secs(120),
        "every document",
        |r| {
            for e in std::mem::take(&mut r.events) {
                if let Event::DocumentChanged { doc, heads } = e {
                    if expected.get(&doc) == Some(&sorted(heads)) {
                        missing.remove(&doc);
                    }
                }
            }
            missing.is_empty()
        },
    )
    .await;
    let mut row = phase.end(server, server.kind.to_string(), missing.len() as u64);
    row.note = format!("populate {populate_s:.2} s");
    if let Err(e) = result {
        row.note += &format!("; {e:#}");
    }
    reader.disconnect();
    Ok(row)
}

// ------------------------------------------------------------------------- big document

/// Edits the big-document writer may make beyond the server's last acknowledgement.
const PUSH_WINDOW: usize = 256;

/// One device appends `big_edits` characters to one Text, one commit each, and waits for
/// the server's acknowledgement; then a new device fetches the document. Two rows.
pub(crate) async fn big(server: &Server, sizes: Sizes, epoch: Instant) -> anyhow::Result<Vec<Row>> {
    let mut writer = Device::connect(&server.url(), "bench-big-writer", 9, epoch).await?;
    let now = writer.now();
    let id = writer.engine.create_document(now, |tx| {
        tx.put_object(ROOT, "text", ObjType::Text)
            .expect("put on a new document");
    });
    writer.pump();
    let text = writer
        .engine
        .document(&id)
        .and_then(|a| a.get(ROOT, "text").ok().flatten())
        .map(|(_, obj)| obj)
        .ok_or_else(|| anyhow!("the new document has no text"))?;
    let alphabet = b"abcdefghijklmnopqrstuvwxyz ";

    // The writer runs at most PUSH_WINDOW edits ahead of the server's acknowledgement (a
    // client that floods a single-threaded server gets its socket dropped for a late pong).
    // If acknowledgements stop for 2 s with the window full, it goes on anyway and counts a
    // stall.
    let phase = Phase::begin(server);
    let mut tip: std::collections::HashMap<ChangeHash, usize> = Default::default();
    let mut acked_upto = 0usize;
    let mut stalls = 0usize;
    for i in 0..sizes.big_edits {
        let mut last_progress = Instant::now();
        loop {
            for e in writer.events.drain(..) {
                if let Event::PeerHasHeads { heads, .. } = e {
                    if let [h] = heads.as_slice() {
                        if let Some(&n) = tip.get(h) {
                            if n > acked_upto {
                                acked_upto = n;
                                last_progress = Instant::now();
                            }
                        }
                    }
                }
            }
            if i < acked_upto + PUSH_WINDOW {
                break;
            }
            if last_progress.elapsed() >= Duration::from_secs(2) {
                stalls += 1;
                break;
            }
            writer
                .step_until(Instant::now() + Duration::from_millis(200))
                .await
                .with_context(|| format!("after {i} edits"))?;
        }
        let ch = alphabet[i % alphabet.len()] as char;
        let now = writer.now();
        let (_, heads) = writer.engine.change_document(now, id, |tx| {
            tx.splice_text(&text, i, 0, ch.encode_utf8(&mut [0; 4]))
        })?;
        if let [h] = heads.as_slice() {
            tip.insert(*h, i + 1);
        }
        writer.pump();
        if i % 64 == 63 {
            writer.poll_ready();
            tokio::task::yield_now().await;
        }
        if writer.closed {
            bail!("the connection closed after {i} edits");
        }
    }
    let heads = sorted(writer.engine.document(&id).expect("ours").get_heads());
    let acked_ok = wait_for_ack(&mut writer, server, id, &heads).await;
    let started = phase.started;
    let mut push = phase.end(server, format!("{} push", server.kind), 0);
    if stalls > 0 {
        push.note = format!("{stalls} acknowledgement stalls of 2 s; ");
    }
    if let Err((e, quiet_at)) = acked_ok {
        push.wall_s = quiet_at.duration_since(started).as_secs_f64();
        push.note += &format!("{e} (wall = until it went idle)");
    }
    writer.disconnect();

    let mut reader = Device::connect(&server.url(), "bench-big-reader", 10, epoch).await?;
    let phase = Phase::begin(server);
    let now = reader.now();
    reader.engine.find(now, id);
    reader.pump();
    let got = wait_until(
        &mut reader,
        Instant::now() + Duration::from_secs(120),
        "the big document",
        |r| {
            r.events.clear();
            r.engine
                .document(&id)
                .is_some_and(|a| sorted(a.get_heads()) == heads)
        },
    )
    .await;
    let have = reader
        .engine
        .document(&id)
        .and_then(|a| {
            let (_, obj) = a.get(ROOT, "text").ok().flatten()?;
            Some(a.length(&obj))
        })
        .unwrap_or(0);
    let mut fetch = phase.end(
        server,
        format!("{} fetch", server.kind),
        sizes.big_edits.saturating_sub(have) as u64,
    );
    if let Err(e) = got {
        fetch.note = format!("{e:#}");
    }
    reader.disconnect();
    Ok(vec![push, fetch])
}
