//! `cairn-cluster-bench`: cross-relay propagation in a cluster of relays on one PostgreSQL
//! database (issue 13's steady state: 10 documents × 3 peers, each peer on a different
//! relay, 3,000 changes; identical heads everywhere).
//!
//! ```text
//! scripts/cluster-bench.sh                       # a throwaway PostgreSQL, then this
//! target/release/cairn-cluster-bench --pg postgres://postgres@127.0.0.1:5432/postgres
//! ```
//!
//! For each mode (`--listen both` = hints on, then the sweep alone) it creates a fresh
//! database through `--pg`, starts `--relays` relay processes on it (`serve --open` on
//! free loopback ports, `--store` the new database), and connects one simulated device
//! (a cairn-sync client, in-memory store) to each relay. Every device opens every
//! document, so each document has one peer per relay. The devices then make the changes
//! round-robin, each device one change every `--gap-ms` (a steady rate: this measures
//! propagation, not a flood). Each change writes a key of its own; the bench keeps the
//! moment each change was committed (in this process, not in the document) and the moment
//! each device on another relay first held the key (read on every document event). The
//! table gives those latencies (p50/p90/p99/max), how long after the last write every
//! device held every change, and whether every device's heads and the heads of what
//! PostgreSQL holds agree per document. Exits non-zero if a change never arrived (within
//! `--timeout-secs` after the last write) or anything diverged. The database is dropped
//! after each mode.
//!
//! With hints on, a presence phase follows: `--presence-rounds` times, one device in turn
//! moves its cursor (a presence update) on one document, and the bench times how long until
//! each device on another relay shows it (presence crosses relays only with hints). A
//! second table gives those latencies; an update that never arrives (within 5 s) counts as
//! missing and fails the run.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ReadDoc, ROOT};
use cairn_bench::server::{Kind, Launch, Programs, Server};
use cairn_relay::pg_store::{PgOptions, PgStore};
use cairn_sync::client::{Client, ClientConfig};
use cairn_sync::ids::DocumentId;
use cairn_sync::store::{MemoryStore, Storage};
use clap::{Parser, ValueEnum};
use tokio::sync::watch;

/// Cross-relay propagation benchmark for relays sharing one PostgreSQL database.
#[derive(Debug, Parser)]
#[command(name = "cairn-cluster-bench")]
struct Cli {
    /// A PostgreSQL URL whose user may create databases (e.g. the `postgres` database as
    /// the superuser); each mode runs in a new database created and dropped through it.
    #[arg(long)]
    pg: String,
    /// Relays in the cluster (one device on each).
    #[arg(long, default_value_t = 3)]
    relays: usize,
    /// Documents (every device is a peer on each).
    #[arg(long, default_value_t = 10)]
    docs: usize,
    /// Changes in all, spread round-robin over the devices and documents.
    #[arg(long, default_value_t = 3000)]
    changes: usize,
    /// Which modes: `on` (the relays LISTEN for each other's hints), `off` (the sweep
    /// alone), or `both` (on, then off).
    #[arg(long, value_enum, default_value_t = ListenChoice::Both)]
    listen: ListenChoice,
    /// The relays' `--cluster-sweep-ms`.
    #[arg(long, default_value_t = 2000)]
    sweep_ms: u64,
    /// Milliseconds between two changes of one device.
    #[arg(long, default_value_t = 20)]
    gap_ms: u64,
    /// Every device's sync debounce in ms (default: the client's own default), the time
    /// a device gathers its local changes before it sends them.
    #[arg(long)]
    client_debounce_ms: Option<u64>,
    /// How long after the last write every change must have reached every device.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Presence updates in the presence phase (hints on only; 0: none).
    #[arg(long, default_value_t = 300)]
    presence_rounds: usize,
    /// The relay binary to run (default: `cairn-relay` beside this binary).
    #[arg(long)]
    relay: Option<PathBuf>,
}

/// `--listen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ListenChoice {
    Both,
    On,
    Off,
}

/// Bound for setting up: relays ready, documents found through another relay, a device's
/// changes acknowledged before the heads are compared.
const SETUP: Duration = Duration::from_secs(60);

/// What one mode measured.
struct Outcome {
    listen: bool,
    /// Cross-relay latencies, one per (change, device on another relay) that arrived.
    latencies: Vec<Duration>,
    /// Arrivals that never came within the bound.
    missing: usize,
    /// From the first commit to the last.
    writing: Duration,
    /// From the last commit until every device held every change (`None`: never).
    converged_after_last: Option<Duration>,
    /// CPU seconds of all the relays over the write phase and convergence.
    relay_cpu: f64,
    /// What disagreed (document ids and counts only).
    divergences: Vec<String>,
    /// Presence latencies across relays, one per (update, device on another relay).
    presence: Vec<Duration>,
    /// Presence updates that never showed on a device within [`PRESENCE_WAIT`].
    presence_missing: usize,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.missing == 0 && self.divergences.is_empty() && self.presence_missing == 0
    }
}

/// How long a presence update may take to show on another relay's device.
const PRESENCE_WAIT: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if cli.relays < 2 {
        bail!("--relays must be at least 2: latency is measured across relays");
    }
    if cli.docs == 0 || cli.changes == 0 || cli.gap_ms == 0 {
        bail!("--docs, --changes and --gap-ms must be at least 1");
    }
    let programs = Programs::locate(&[Kind::Cairn], cli.relay.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the bench's runtime")?;
    let modes: &[bool] = match cli.listen {
        ListenChoice::Both => &[true, false],
        ListenChoice::On => &[true],
        ListenChoice::Off => &[false],
    };
    let mut outcomes = Vec::new();
    for &listen in modes {
        let name = format!(
            "cairn_cluster_bench_{}_{}",
            if listen { "listen" } else { "sweep" },
            std::process::id()
        );
        let db = rt.block_on(Database::create(&cli.pg, &name))?;
        let outcome = measure(&cli, &programs, &rt, &db.url, listen)
            .with_context(|| format!("the run with listen {}", on_off(listen)));
        // The relays are gone by now (`measure` owns them), so nothing holds the database.
        let dropped = rt.block_on(db.drop());
        let outcome = outcome?;
        dropped?;
        eprintln!(
            "listen {}: {} arrivals, {} missing, {} divergences",
            on_off(listen),
            outcome.latencies.len(),
            outcome.missing,
            outcome.divergences.len()
        );
        outcomes.push(outcome);
    }
    print_table(&cli, &outcomes);
    let ok = outcomes.iter().all(Outcome::ok);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn on_off(listen: bool) -> &'static str {
    if listen {
        "on"
    } else {
        "off"
    }
}

/// A database of its own for one run, made and dropped through an admin connection.
struct Database {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin_url: &str, name: &str) -> anyhow::Result<Database> {
        let (admin, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
            .await
            .context("connecting to --pg")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("the admin connection to PostgreSQL ended: {e}");
            }
        });
        // `name` is ours (letters, digits, underscores): quoting it is enough.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await
            .context("dropping a leftover bench database")?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .context("creating the bench database")?;
        let mut url = url::Url::parse(admin_url).context("--pg is not a URL")?;
        url.set_path(&format!("/{name}"));
        Ok(Database {
            admin,
            name: name.to_owned(),
            url: url.to_string(),
        })
    }

    async fn drop(self) -> anyhow::Result<()> {
        // FORCE (PostgreSQL 13+) ends sessions a killed relay may have left behind.
        self.admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .context("dropping the bench database")
    }
}

/// One mode: relays on `url`, one device each, the changes, the checks.
fn measure(
    cli: &Cli,
    programs: &Programs,
    rt: &tokio::runtime::Runtime,
    url: &str,
    listen: bool,
) -> anyhow::Result<Outcome> {
    let launch = Launch {
        extra_args: [
            "--store",
            url,
            "--admin-listen",
            "off",
            "--cluster-listen",
            if listen { "true" } else { "false" },
            "--cluster-sweep-ms",
            &cli.sweep_ms.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
        ..Launch::default()
    };
    let mut relays = Vec::new();
    for i in 0..cli.relays {
        relays.push(
            Server::start_with(Kind::Cairn, programs, &launch)
                .with_context(|| format!("starting relay {i}"))?,
        );
    }
    for (i, r) in relays.iter().enumerate() {
        wait_ready(r.addr, SETUP)
            .with_context(|| format!("relay {i} never ready; its log:\n{}", r.log_tail()))?;
    }
    let outcome = rt.block_on(workload(cli, &relays, url, listen));
    for (i, r) in relays.iter_mut().enumerate() {
        if let Some(status) = r.exit_status() {
            bail!(
                "relay {i} exited during the run ({status}); its log:\n{}",
                r.log_tail()
            );
        }
    }
    // Dropping the relays kills them and waits for them.
    drop(relays);
    outcome
}

/// Polls `/readyz` until it answers 200.
fn wait_ready(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < within {
        if http_status(addr, "/readyz") == Some(200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("/readyz on {addr} not 200 within {within:?}")
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Change `k` is made by device `k % n` on document `(k / n) % docs`: each device takes
/// every document in turn.
fn writer_of(k: usize, n: usize) -> usize {
    k % n
}

fn doc_of(k: usize, n: usize, docs: usize) -> usize {
    (k / n) % docs
}

fn key_of(k: usize) -> String {
    format!("k{k}")
}

async fn workload(
    cli: &Cli,
    relays: &[Server],
    url: &str,
    listen: bool,
) -> anyhow::Result<Outcome> {
    let mut clients = Vec::new();
    for (i, r) in relays.iter().enumerate() {
        let mut config = ClientConfig::new(format!("member{i}/phone"));
        config.min_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_millis(500);
        if let Some(ms) = cli.client_debounce_ms {
            config.sync_debounce = Duration::from_millis(ms);
        }
        let c =
            Client::start(Arc::new(MemoryStore::default()), config).context("starting a device")?;
        c.connect(&r.url());
        clients.push(c);
    }
    let result = drive(cli, relays, &clients, url, listen).await;
    for c in &clients {
        c.shutdown().await;
    }
    result
}

async fn drive(
    cli: &Cli,
    relays: &[Server],
    clients: &[Client],
    url: &str,
    listen: bool,
) -> anyhow::Result<Outcome> {
    let n = clients.len();
    // The documents, created on every relay in turn; every other device opens each
    // through its own relay (so through PostgreSQL).
    let mut docs = Vec::new();
    for d in 0..cli.docs {
        let creator = &clients[d % n];
        let (doc, ()) = creator
            .create(|tx| tx.put(ROOT, "title", "bench").map(|_| ()))
            .await
            .context("creating a document")?;
        creator
            .wait_acknowledged(doc, SETUP)
            .await
            .context("a new document acknowledged by its relay")?;
        docs.push(doc);
    }
    for (d, doc) in docs.iter().enumerate() {
        for (i, c) in clients.iter().enumerate() {
            if i != d % n {
                c.find(*doc, SETUP)
                    .await
                    .with_context(|| format!("device {i} finding document {d}"))?;
            }
        }
    }

    // Readers: one task per (device, document), recording when each change made on
    // another relay first shows up.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = Vec::new();
    for (r, c) in clients.iter().enumerate() {
        for (d, doc) in docs.iter().enumerate() {
            let want = (0..cli.changes)
                .filter(|&k| doc_of(k, n, cli.docs) == d && writer_of(k, n) != r)
                .count();
            readers.push(tokio::spawn(read_arrivals(
                c.clone(),
                *doc,
                r,
                n,
                want,
                stop_rx.clone(),
            )));
        }
    }

    let cpu_before: f64 = relays.iter().map(|r| r.cpu().0).sum();
    let gap = Duration::from_millis(cli.gap_ms);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let writers = clients.iter().enumerate().map(|(p, c)| {
        let docs = docs.clone();
        let changes = cli.changes;
        let ndocs = cli.docs;
        async move {
            // The devices' ticks are spread over the gap, so the changes come evenly.
            let offset = gap.mul_f64(p as f64 / n as f64);
            let mut tick = tokio::time::interval_at(start + offset, gap);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut commits = Vec::new();
            for k in (p..changes).step_by(n) {
                tick.tick().await;
                let doc = docs[doc_of(k, n, ndocs)];
                let key = key_of(k);
                // The commit time is taken on the device's engine, as it commits.
                let at = c
                    .change(doc, move |tx| {
                        let at = Instant::now();
                        tx.put(ROOT, key, p as i64).map(|_| at)
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("a change on device {p}: {e}"))?;
                commits.push((k, at));
            }
            anyhow::Ok(commits)
        }
    });
    let mut commit_at: HashMap<usize, Instant> = HashMap::new();
    for commits in futures_util::future::join_all(writers).await {
        commit_at.extend(commits?);
    }
    let first = commit_at.values().min().copied();
    let last = commit_at.values().max().copied();

    // Every change must reach every other device within the bound after the last write.
    let all = futures_util::future::join_all(readers);
    tokio::pin!(all);
    let timeout = Duration::from_secs(cli.timeout_secs);
    let joined = match tokio::time::timeout(timeout, &mut all).await {
        Ok(joined) => joined,
        Err(_) => {
            let _ = stop_tx.send(true);
            all.await
        }
    };
    let mut latencies = Vec::new();
    let mut missing = 0;
    let mut last_arrival = None::<Instant>;
    for j in joined {
        let (arrivals, short) = j.context("a reader task")??;
        missing += short;
        for (k, at) in arrivals {
            let committed = commit_at
                .get(&k)
                .context("an arrival of an unknown change")?;
            latencies.push(at.saturating_duration_since(*committed));
            last_arrival = last_arrival.max(Some(at));
        }
    }
    let relay_cpu = relays.iter().map(|r| r.cpu().0).sum::<f64>() - cpu_before;
    let converged_after_last = match (missing, last, last_arrival) {
        (0, Some(last), Some(arrived)) => Some(arrived.saturating_duration_since(last)),
        _ => None,
    };
    let writing = match (first, last) {
        (Some(f), Some(l)) => l - f,
        _ => Duration::ZERO,
    };

    let divergences = compare_heads(clients, &docs, url, cli, n).await?;
    latencies.sort();
    let (mut presence, presence_missing) = if listen && cli.presence_rounds > 0 {
        presence_phase(clients, &docs, cli.presence_rounds).await?
    } else {
        (Vec::new(), 0)
    };
    presence.sort();
    Ok(Outcome {
        listen,
        latencies,
        missing,
        writing,
        converged_after_last,
        relay_cpu,
        divergences,
        presence,
        presence_missing,
    })
}

/// Whether `c` shows device `from`'s presence on `doc` at `seq`.
fn shows(c: &Client, doc: DocumentId, from: usize, seq: usize) -> bool {
    let peer = format!("member{from}/phone");
    c.presence(doc)
        .iter()
        .any(|p| p.peer.as_str() == peer && p.state["seq"] == seq)
}

/// Waits until `c` shows device `from` at `seq` on `doc`; the time it took, or `None`
/// after [`PRESENCE_WAIT`].
async fn presence_arrival(
    c: &Client,
    doc: DocumentId,
    from: usize,
    seq: usize,
    sent: Instant,
) -> Option<Duration> {
    let mut changes = c.presence_changes(doc);
    let deadline = tokio::time::Instant::from_std(sent + PRESENCE_WAIT);
    loop {
        if shows(c, doc, from, seq) {
            return Some(sent.elapsed());
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            return None;
        }
    }
}

/// Every device shows its presence on every document; then, round by round, one device
/// moves (`seq` = the round) on one document and every device on another relay is timed
/// until it shows the move. Returns the latencies and how many never arrived.
async fn presence_phase(
    clients: &[Client],
    docs: &[DocumentId],
    rounds: usize,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let n = clients.len();
    for c in clients {
        for doc in docs {
            c.set_presence(*doc, serde_json::json!({"seq": 0}))
                .await
                .context("setting presence")?;
        }
    }
    for (i, c) in clients.iter().enumerate() {
        for doc in docs {
            for from in (0..n).filter(|&f| f != i) {
                if presence_arrival(c, *doc, from, 0, Instant::now())
                    .await
                    .is_none()
                {
                    bail!("device {i} never showed device {from}'s presence");
                }
            }
        }
    }
    let mut latencies = Vec::new();
    let mut missing = 0;
    for round in 1..=rounds {
        let from = round % n;
        let doc = docs[round % docs.len()];
        let sent = Instant::now();
        clients[from]
            .update_presence(doc, "seq", serde_json::json!(round))
            .await
            .context("a presence update")?;
        let arrivals = futures_util::future::join_all(
            clients
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != from)
                .map(|(_, c)| presence_arrival(c, doc, from, round, sent)),
        )
        .await;
        for a in arrivals {
            match a {
                Some(d) => latencies.push(d),
                None => missing += 1,
            }
        }
    }
    Ok((latencies, missing))
}

/// Follows one document on one device until it holds `want` changes from other relays
/// (or `stop`); returns when each first showed up and how many never did.
async fn read_arrivals(
    c: Client,
    doc: DocumentId,
    reader: usize,
    n: usize,
    want: usize,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(Vec<(usize, Instant)>, usize)> {
    let mut events = c.document_events(doc);
    let mut seen = std::collections::HashSet::new();
    let mut arrivals = Vec::new();
    let mut length = 0;
    while arrivals.len() < want {
        // Read on the engine, timed there; keys are only ever added, so an unchanged
        // length means nothing new (most events are acknowledgements).
        let known = length;
        let read = c
            .read(doc, move |d| {
                let at = Instant::now();
                let len = d.length(ROOT);
                let keys: Vec<usize> = if len == known {
                    Vec::new()
                } else {
                    d.keys(ROOT)
                        .filter_map(|k| k.strip_prefix('k')?.parse().ok())
                        .collect()
                };
                (at, len, keys)
            })
            .await
            .context("reading a document")?;
        if let Some((at, len, keys)) = read {
            length = len;
            for k in keys {
                if writer_of(k, n) != reader && seen.insert(k) {
                    arrivals.push((k, at));
                }
            }
        }
        if arrivals.len() >= want {
            break;
        }
        tokio::select! {
            changed = events.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = stop.changed() => break,
        }
    }
    let short = want.saturating_sub(arrivals.len());
    Ok((arrivals, short))
}

/// Every device's heads per document, and the heads of what PostgreSQL holds, compared;
/// returns what disagreed.
async fn compare_heads(
    clients: &[Client],
    docs: &[DocumentId],
    url: &str,
    cli: &Cli,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut divergences = Vec::new();
    // Each device's own changes acknowledged first: then its relay has them in the
    // database.
    for (i, c) in clients.iter().enumerate() {
        for (d, doc) in docs.iter().enumerate() {
            if c.wait_acknowledged(*doc, SETUP).await.is_err() {
                divergences.push(format!(
                    "document {d}: device {i}'s changes never acknowledged"
                ));
            }
        }
    }
    let url = url.to_owned();
    let wanted = docs.to_vec();
    // The store runs its own runtime: made, used and dropped off this one.
    let stored: Vec<(Vec<ChangeHash>, usize)> = tokio::task::spawn_blocking(move || {
        let pg = PgStore::connect(
            &url,
            "cluster-bench-check",
            PgOptions {
                pool_size: 1,
                op_timeout: Duration::from_secs(30),
            },
        )
        .context("connecting to the bench database")?;
        let mut out = Vec::new();
        for doc in wanted {
            let mut am = Automerge::new();
            for (_, bytes) in pg
                .load_range(&[doc.to_string()])
                .context("reading a document from PostgreSQL")?
            {
                am.load_incremental(&bytes)
                    .context("a stored chunk does not load")?;
            }
            out.push((sorted(am.get_heads()), am.length(ROOT)));
        }
        anyhow::Ok(out)
    })
    .await
    .context("the PostgreSQL check")??;
    for (d, doc) in docs.iter().enumerate() {
        let want_keys = 1
            + (0..cli.changes)
                .filter(|&k| doc_of(k, n, cli.docs) == d)
                .count();
        let (db_heads, db_keys) = &stored[d];
        if *db_keys != want_keys {
            divergences.push(format!(
                "document {d}: PostgreSQL holds {db_keys} keys, {want_keys} were written"
            ));
        }
        for (i, c) in clients.iter().enumerate() {
            let heads = sorted(c.heads(*doc).await?.unwrap_or_default());
            if heads != *db_heads {
                divergences.push(format!(
                    "document {d}: device {i}'s heads differ from PostgreSQL's"
                ));
            }
        }
    }
    for d in &divergences {
        eprintln!("DIVERGED: {d}");
    }
    Ok(divergences)
}

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

/// The `q`-quantile of sorted `v` (nearest rank).
fn quantile(v: &[Duration], q: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "—".to_owned(),
        |d| format!("{:.1}", d.as_secs_f64() * 1e3),
    )
}

fn print_table(cli: &Cli, outcomes: &[Outcome]) {
    println!(
        "\n{} relays on one PostgreSQL, {} documents × {} peers (one per relay), {} changes, \
         one change per device every {} ms, sweep every {} ms, device sync debounce {}\n",
        cli.relays,
        cli.docs,
        cli.relays,
        cli.changes,
        cli.gap_ms,
        cli.sweep_ms,
        cli.client_debounce_ms
            .map_or_else(|| "default".to_owned(), |ms| format!("{ms} ms")),
    );
    println!(
        "| listen | arrivals | missing | p50 ms | p90 ms | p99 ms | max ms | writing s | \
         converged after last write ms | relay CPU s | identical heads (devices + database) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for o in outcomes {
        let l = &o.latencies;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.1} | {} |",
            if o.listen { "on" } else { "off (sweep)" },
            l.len(),
            o.missing,
            ms(quantile(l, 0.50)),
            ms(quantile(l, 0.90)),
            ms(quantile(l, 0.99)),
            ms(l.last().copied()),
            o.writing.as_secs_f64(),
            ms(o.converged_after_last),
            o.relay_cpu,
            if o.divergences.is_empty() {
                "yes".to_owned()
            } else {
                format!("NO ({})", o.divergences.len())
            }
        );
    }
    for o in outcomes
        .iter()
        .filter(|o| o.listen && cli.presence_rounds > 0)
    {
        let l = &o.presence;
        println!(
            "\nPresence across relays (hints on): {} updates, each timed on the {} devices \
             of the other relays\n",
            cli.presence_rounds,
            cli.relays - 1
        );
        println!("| arrivals | missing | p50 ms | p90 ms | p99 ms | max ms |");
        println!("|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            l.len(),
            o.presence_missing,
            ms(quantile(l, 0.50)),
            ms(quantile(l, 0.90)),
            ms(quantile(l, 0.99)),
            ms(l.last().copied()),
        );
    }
}
