//! `cairn-shard-bench`: the relay's engine work per edit at 1, 2 and 4 engine shards, with
//! no sockets.
//!
//! `cargo run --release -p cairn-bench --bin cairn-shard-bench -- [--groups 50 --peers 8
//! --edits 20 --shards 1,2,4 --sled DIR]` builds the relay's host in-process on its own
//! tokio runtime (worker threads named `relay`, one more than the shards) and drives
//! groups × peers client-role engines from another runtime (threads named `clients`),
//! wired to the host in memory (`Host::open`, `ConnectionInput::frame`,
//! `OutboundQueue::recv`). Every peer makes its edits to its group's document one after
//! another, each as soon as the relay acknowledged the last; the run ends when every peer
//! holds every edit of its group (the same heads everywhere, every key present) and fails
//! if any is missing. Relay CPU is the run time of the relay runtime's threads and the
//! storage thread (`/proc/self/task/*/schedstat`) during the edit phase.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ReadDoc, ROOT};
use cairn_sync::engine::{Direction, Engine, EngineConfig, Event, Input, Limits, Output, Role};
use cairn_sync::ids::{ConnectionId, DocumentId, PeerId};
use cairn_sync::runtime::{document_shard, Host, HostConfig, Observer, Outbound};
use cairn_sync::store::{open_data_dir, MemoryStore, SledConfig, Storage};
use cairn_sync::time::Timestamp;
use clap::Parser;
use rand::{RngCore, SeedableRng};
use tokio::sync::watch;

/// Flags.
#[derive(Debug, Parser)]
#[command(name = "cairn-shard-bench", about)]
struct Args {
    /// Groups, one document each.
    #[arg(long, default_value_t = 50)]
    groups: usize,
    /// Peers per group.
    #[arg(long, default_value_t = 8)]
    peers: usize,
    /// Edits each peer makes.
    #[arg(long, default_value_t = 20)]
    edits: usize,
    /// Shard counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    shards: Vec<usize>,
    /// Worker threads driving the simulated peers.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Run the relay on a sled store in a new directory under DIR (default: in memory).
    #[arg(long)]
    sled: Option<std::path::PathBuf>,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// One run's figures.
struct Figures {
    shards: usize,
    wall: Duration,
    relay_cpu: Duration,
    /// CPU of the threads driving the simulated peers (not the relay's).
    client_cpu: Duration,
    edits: usize,
    /// Documents per shard (how evenly the groups spread).
    spread: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for &shards in &args.shards {
        let f = run(&args, shards).with_context(|| format!("the run with {shards} shard(s)"))?;
        eprintln!(
            "shards={} wall={:.2}s relay_cpu={:.2}s spread={:?}",
            f.shards,
            f.wall.as_secs_f64(),
            f.relay_cpu.as_secs_f64(),
            f.spread
        );
        rows.push(f);
    }
    println!(
        "\n{} groups × {} peers × {} edits ({} edits, lost 0), relay store: {}\n",
        args.groups,
        args.peers,
        args.edits,
        args.groups * args.peers * args.edits,
        if args.sled.is_some() {
            "sled"
        } else {
            "memory"
        }
    );
    println!("| shards | wall s | relay CPU s | relay CPU µs / edit | edits / s | peers' CPU s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for f in &rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} |",
            f.shards,
            f.wall.as_secs_f64(),
            f.relay_cpu.as_secs_f64(),
            f.relay_cpu.as_secs_f64() * 1e6 / f.edits as f64,
            f.edits as f64 / f.wall.as_secs_f64(),
            f.client_cpu.as_secs_f64()
        );
    }
    Ok(())
}

/// An observer that counts nothing: the bench measures the engines, not the metrics.
struct Quiet;

impl Observer for Quiet {
    fn event(&mut self, _: &Event) {}
}

fn run(args: &Args, shards: usize) -> anyhow::Result<Figures> {
    let relay_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(shards + 1)
        .thread_name("relay")
        .enable_all()
        .build()?;
    let clients_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("clients")
        .enable_all()
        .build()?;
    let dir = match &args.sled {
        Some(d) => Some(tempfile::tempdir_in(d)?),
        None => None,
    };
    let store: Arc<dyn Storage> = match &dir {
        Some(d) => Arc::new(open_data_dir(d.path(), &SledConfig::default())?.0),
        None => Arc::new(MemoryStore::default()),
    };
    let host = relay_host(relay_rt.handle(), shards, store);

    // One document per group, its first change made once and imported by every member.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5a4d);
    let mut groups = Vec::new();
    let mut spread = vec![0; shards.max(1)];
    for g in 0..args.groups {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let doc = DocumentId::from_bytes(id);
        spread[document_shard(&doc, shards)] += 1;
        let mut am = Automerge::new();
        let mut tx = am.transaction();
        tx.put(ROOT, "title", format!("group {g}"))?;
        tx.commit();
        groups.push((doc, Arc::new(am.save())));
    }

    let connected = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (go_tx, go) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let mut peers = Vec::new();
    for (g, (doc, initial)) in groups.iter().enumerate() {
        for p in 0..args.peers {
            let peer = Sim {
                host: host.clone(),
                name: PeerId::from(format!("g{g}-p{p}")),
                seed: (g * args.peers + p) as u64,
                doc: *doc,
                initial: initial.clone(),
                edits: args.edits,
                keys: args.peers * args.edits + 1,
                connected: connected.clone(),
                finished: finished.clone(),
                go: go.clone(),
                stop: stop.clone(),
            };
            peers.push((g, clients_rt.spawn(peer.run())));
        }
    }
    let total = args.groups * args.peers;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    wait_count(&connected, total, deadline, "peers connected and synced")?;

    let before = thread_cpu();
    let started = Instant::now();
    let _ = go_tx.send(true);
    let waited = wait_count(&finished, total, deadline, "peers holding every edit");
    let wall = started.elapsed();
    let after = thread_cpu();
    let _ = stop_tx.send(true);
    let mut heads: HashMap<usize, Vec<ChangeHash>> = HashMap::new();
    let mut lost = 0;
    for (g, handle) in peers {
        match clients_rt.block_on(handle)? {
            Ok(h) => {
                let first = heads.entry(g).or_insert_with(|| h.clone());
                if *first != h {
                    lost += 1;
                }
            }
            Err(e) => {
                eprintln!("a peer of group {g} failed: {e:#}");
                lost += 1;
            }
        }
    }
    waited?;
    if lost > 0 {
        bail!("{lost} peer(s) did not end with every edit of their group");
    }
    relay_rt.block_on(host.shutdown());
    relay_rt.shutdown_timeout(Duration::from_secs(10));
    clients_rt.shutdown_timeout(Duration::from_secs(10));
    Ok(Figures {
        shards,
        wall,
        relay_cpu: cpu_of(&before, &after, &["relay", "cairn-storage"]),
        client_cpu: cpu_of(&before, &after, &["clients"]),
        edits: total * args.edits,
        spread,
    })
}

/// The relay's host as `cairn-relay` builds it: `shards` engine tasks (one: the single
/// task), the memory budget shared out between them.
fn relay_host(rt: &tokio::runtime::Handle, shards: usize, store: Arc<dyn Storage>) -> Host {
    let per_shard_ops = (Limits::default().max_loaded_ops / shards.max(1) as u64).max(1);
    Host::start_sharded(
        rt,
        shards,
        |task| {
            Engine::new(
                EngineConfig::new(Role::Relay, PeerId::from("relay"), 7 + task as u64).with_limits(
                    Limits {
                        max_loaded_ops: per_shard_ops,
                        ..Limits::default()
                    },
                ),
            )
        },
        store,
        |_| Box::new(Quiet),
        HostConfig::default(),
    )
}

fn wait_count(n: &AtomicUsize, want: usize, deadline: Instant, what: &str) -> anyhow::Result<()> {
    while n.load(Ordering::Acquire) < want {
        if Instant::now() > deadline {
            bail!("timed out: {} of {want} {what}", n.load(Ordering::Acquire));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A simulated member's device: a client-role engine with an in-memory store.
struct Sim {
    host: Host,
    name: PeerId,
    seed: u64,
    doc: DocumentId,
    initial: Arc<Vec<u8>>,
    edits: usize,
    /// Keys the document holds once every edit of the group arrived.
    keys: usize,
    connected: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    go: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

impl Sim {
    /// Runs until stopped; returns the document's final heads.
    async fn run(mut self) -> anyhow::Result<Vec<ChangeHash>> {
        let origin = Instant::now();
        let now = || Timestamp::from_millis(origin.elapsed().as_millis() as u64);
        let store = MemoryStore::default();
        // No client debounce: every edit is its own message, the relay's worst case, so
        // the figure is the relay's work per edit rather than per debounce period.
        let mut engine = Engine::new(
            EngineConfig::new(Role::Client, self.name.clone(), self.seed)
                .with_sync_debounce(Duration::ZERO),
        );
        let initial = engine.import_document(now(), self.doc, &self.initial)?;
        let handle = self
            .host
            .open(Direction::Incoming, None)
            .await
            .map_err(|_| anyhow::anyhow!("the host stopped"))?;
        let (input, mut outbound) = (handle.input, handle.outbound);
        let conn = ConnectionId::new(1);
        engine.handle_input(
            now(),
            Input::Connected {
                conn,
                direction: Direction::Outgoing,
                identity: None,
                local_peer: None,
            },
        );
        let mut made = 0;
        let mut unacked: Option<Vec<ChangeHash>> = None;
        let mut synced = false;
        let mut done = false;
        let mut started = false;
        loop {
            // Everything the engine asked for, until it asks for nothing more.
            loop {
                let mut storage = Vec::new();
                while let Some(out) = engine.poll_output() {
                    match out {
                        Output::Send { frame, .. } => input
                            .frame(frame)
                            .await
                            .map_err(|_| anyhow::anyhow!("the host stopped"))?,
                        Output::Close { .. } => bail!("{} closed its connection", self.name),
                        Output::Storage { task, op } => storage.push((task, store.execute(op))),
                        Output::Event(Event::PeerHasHeads { doc, heads, .. })
                            if doc == self.doc =>
                        {
                            // Connected once the relay shows it holds the group's document.
                            if !synced && initial.iter().all(|h| heads.contains(h)) {
                                synced = true;
                                self.connected.fetch_add(1, Ordering::AcqRel);
                            }
                            if unacked
                                .as_ref()
                                .is_some_and(|ours| ours.iter().all(|h| heads.contains(h)))
                            {
                                unacked = None;
                            }
                        }
                        Output::Event(_) => {}
                    }
                }
                if storage.is_empty() {
                    break;
                }
                for (task, result) in storage {
                    engine.handle_input(now(), Input::StorageDone { task, result });
                }
            }
            started = started || *self.go.borrow();
            if started && unacked.is_none() && made < self.edits {
                let key = format!("{}-{made}", self.name.as_str());
                let value = made as i64;
                let (_, heads) = engine
                    .change_document(now(), self.doc, move |tx| tx.put(ROOT, key, value))
                    .map_err(|e| anyhow::anyhow!("a local change failed: {e}"))?;
                unacked = Some(heads);
                made += 1;
                continue;
            }
            if !done && made == self.edits && unacked.is_none() {
                let have = engine.document(&self.doc).map_or(0, |d| d.length(ROOT));
                if have == self.keys {
                    done = true;
                    self.finished.fetch_add(1, Ordering::AcqRel);
                }
            }
            let deadline = engine.poll_timeout().map(|t| {
                tokio::time::Instant::now()
                    + Duration::from_millis(t.as_millis().saturating_sub(now().as_millis()))
            });
            tokio::select! {
                got = outbound.recv() => match got {
                    Some(Outbound::Frame(frame)) => {
                        engine.handle_input(now(), Input::Frame { conn, frame });
                    }
                    Some(Outbound::Close(reason)) => bail!("the relay closed {}: {reason}", self.name),
                    None => bail!("the relay dropped {}", self.name),
                },
                _ = self.go.changed(), if !started => {}
                _ = self.stop.changed() => break,
                _ = sleep_until(deadline) => engine.handle_timeout(now()),
            }
        }
        if !done {
            bail!("{} ended without every edit", self.name);
        }
        Ok(engine
            .document(&self.doc)
            .map(|d| d.get_heads())
            .unwrap_or_default())
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// CPU time used so far by each live thread of this process: (name, nanoseconds), by
/// thread id. From `schedstat` (ns), else `stat` (clock ticks of 10 ms).
fn thread_cpu() -> HashMap<u64, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let path = t.path();
        let name = std::fs::read_to_string(path.join("comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .or_else(|| {
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
                let rest = &stat[stat.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(ticks * 10_000_000)
            })
            .unwrap_or(0);
        out.insert(tid, (name, ns));
    }
    out
}

/// CPU used between two snapshots by threads whose name starts with one of `names`.
fn cpu_of(
    before: &HashMap<u64, (String, u64)>,
    after: &HashMap<u64, (String, u64)>,
    names: &[&str],
) -> Duration {
    let ns: u64 = after
        .iter()
        .filter(|(_, (name, _))| names.iter().any(|n| name.starts_with(n)))
        .map(|(tid, (_, ns))| ns.saturating_sub(before.get(tid).map_or(0, |(_, b)| *b)))
        .sum();
    Duration::from_nanos(ns)
}
