//! `cairn-bench`: runs load scenarios against the Cairn relay, the official Node
//! automerge-repo sync server and samod (the Rust automerge-repo) and prints server CPU,
//! peak memory, latency, client CPU, traffic and loss side by side, as markdown tables.
//!
//! ```text
//! cargo build --release -p cairn-relay -p cairn-bench && target/release/cairn-bench
//! target/release/cairn-bench --scenario steady,burst --servers cairn,node-sync --quick
//! ```
//!
//! Every server runs as a child process on 127.0.0.1 with a fresh data directory per
//! scenario. The simulated devices are cairn-sync engines (client role, default client
//! configuration, in-memory store) in this process, one tokio task each, so "client CPU"
//! is this process's CPU over the phase divided by the devices. The bench and the server
//! share the machine: only ratios within one run mean anything.

mod scenario;

use std::time::Instant;

use anyhow::bail;
use clap::Parser;

use cairn_bench::server::{raise_fd_limit, Kind, Programs, Server};
use scenario::{GroupLoad, Mode, Row, Sizes};

/// Load benchmark: the Cairn relay vs the Node automerge-repo sync server and samod.
#[derive(Debug, Parser)]
#[command(name = "cairn-bench")]
struct Cli {
    /// Which scenarios (comma-separated): steady (50 groups x 8 peers, one edit per peer
    /// per second), steady4x (the same at 200 groups), burst (10 x 8, ten edits per peer
    /// per second), presence (cursor messages, 10 x 8), catchup (a member offline while 7
    /// others edit, then back), cold (500 documents fetched), big (20,000 changes pushed,
    /// then fetched), fanout (50 x 8 at ~13 edits per peer per second; only when named);
    /// all = every one but fanout.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Which servers: cairn, node-sync, samod, node-repo (comma-separated).
    #[arg(long, default_value = "cairn,node-sync,samod")]
    servers: String,
    /// Small counts, for a smoke run of about two minutes.
    #[arg(long)]
    quick: bool,
    /// Steady and steady4x: how long the peers edit, in seconds (default 30; quick 10).
    #[arg(long)]
    seconds: Option<u64>,
    /// Fan-out: gap between one peer's edits in ms, as MIN-MAX (default 50-100).
    #[arg(long, value_parser = parse_gap)]
    edit_gap_ms: Option<(u64, u64)>,
    /// Every simulated device's sync debounce in ms, overriding the engine's client
    /// default (`EngineConfig::sync_debounce`; 0 sends every change at once).
    #[arg(long)]
    client_debounce_ms: Option<u64>,
    /// Pin each server to CPU 0 and this bench (every simulated device) to the other CPUs,
    /// as the issue's outside harness did, so the server under test does not compete with
    /// its load generator for a core (needs 2+ CPUs and `taskset`).
    #[arg(long)]
    pin: bool,
    /// The relay binary to run (default: `cairn-relay` beside this binary), e.g. to
    /// compare two builds.
    #[arg(long)]
    relay: Option<std::path::PathBuf>,
}

fn parse_gap(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once('-').ok_or("expected MIN-MAX, e.g. 50-100")?;
    let (a, b) = (a.trim().parse::<u64>(), b.trim().parse::<u64>());
    match (a, b) {
        (Ok(a), Ok(b)) if a <= b && b > 0 => Ok((a, b)),
        _ => Err("expected MIN-MAX with MIN <= MAX, e.g. 50-100".into()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Steady,
    Steady4x,
    Burst,
    Presence,
    Catchup,
    Cold,
    Big,
    Fanout,
}

const ALL: [Scenario; 7] = [
    Scenario::Steady,
    Scenario::Steady4x,
    Scenario::Burst,
    Scenario::Presence,
    Scenario::Catchup,
    Scenario::Cold,
    Scenario::Big,
];

fn parse_scenarios(s: &str) -> anyhow::Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        match part {
            "all" => out.extend(ALL),
            "steady" => out.push(Scenario::Steady),
            "steady4x" => out.push(Scenario::Steady4x),
            "burst" => out.push(Scenario::Burst),
            "presence" => out.push(Scenario::Presence),
            "catchup" | "catch-up" => out.push(Scenario::Catchup),
            "cold" => out.push(Scenario::Cold),
            "big" => out.push(Scenario::Big),
            "fanout" | "fan-out" => out.push(Scenario::Fanout),
            other => bail!(
                "unknown scenario `{other}` (expected all, steady, steady4x, burst, presence, catchup, cold, big or fanout)"
            ),
        }
    }
    let mut seen = Vec::new();
    out.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scenarios = parse_scenarios(&cli.scenario)?;
    let kinds = cli
        .servers
        .split(',')
        .map(|s| Kind::parse(s.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut programs = Programs::locate(&kinds, cli.relay.clone())?;
    let mut sizes = Sizes::new(cli.quick, cli.seconds);
    if let Some(gap) = cli.edit_gap_ms {
        sizes.fanout.gap_ms = gap;
    }
    if let Some(ms) = cli.client_debounce_ms {
        sizes.set_client_debounce(std::time::Duration::from_millis(ms));
    }
    // steady4x holds 1,600 client sockets here and as many in the server (which inherits
    // the limit).
    let sockets = ALL
        .iter()
        .chain([Scenario::Fanout].iter())
        .filter(|s| scenarios.contains(s))
        .filter_map(|s| group_load(*s, &sizes).map(|(l, _)| l.groups * l.peers))
        .max()
        .unwrap_or(0) as u64;
    let fds = raise_fd_limit(sockets + 1024)?;
    if fds < sockets + 64 {
        bail!("{sockets} connections need more open files than the hard limit of {fds}");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut workers = cpus;
    if cli.pin {
        if cpus < 2 {
            bail!("--pin needs at least 2 CPUs, this machine has {cpus}");
        }
        // The runtime's threads, created below, inherit the main thread's affinity.
        let mut set = rustix::thread::CpuSet::new();
        for cpu in 1..cpus {
            set.set(cpu);
        }
        rustix::thread::sched_setaffinity(None, &set)
            .map_err(|e| anyhow::anyhow!("pinning the bench to CPUs 1..{cpus}: {e}"))?;
        programs.pin_server_to(0);
        workers = cpus - 1;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;

    println!(
        "# cairn-bench ({})",
        if cli.quick { "quick" } else { "full" }
    );
    println!();
    println!(
        "machine: {cpus} CPUs (nproc), {}; {}. Server CPU = utime+stime \
         of the server process tree over the measured phase; RSS = its peak (VmHWM); client CPU = \
         this bench process's CPU over the phase / devices (every device lives here); \
         end-to-end = writer's commit to the reader's change event; send = writer's commit to \
         its first frame carrying the change.",
        cpu_model(),
        if cli.pin {
            "each server pinned to CPU 0, the bench to the others"
        } else {
            "servers and bench share them"
        }
    );

    let started = Instant::now();
    let epoch = Instant::now();
    let mut results: Vec<(Scenario, Vec<Row>)> = Vec::new();
    for &sc in &scenarios {
        println!();
        println!("## {}", describe(sc, &sizes));
        println!();
        let mut rows = Vec::new();
        for &kind in &kinds {
            eprintln!("running {sc:?} against {kind} ...");
            let run = || {
                Server::start(kind, &programs).and_then(|server| {
                    let r = runtime.block_on(async {
                        match sc {
                            Scenario::Cold => {
                                scenario::cold(&server, sizes, epoch).await.map(|r| vec![r])
                            }
                            Scenario::Big => scenario::big(&server, sizes, epoch).await,
                            _ => {
                                let (load, mode) =
                                    group_load(sc, &sizes).expect("a group scenario");
                                scenario::groups(&server, load, mode, epoch)
                                    .await
                                    .map(|r| vec![r])
                            }
                        }
                    });
                    if r.is_err() {
                        eprintln!("{kind} log tail:\n{}", server.log_tail());
                    }
                    r
                })
            };
            // A setup that fails (a server dropping a connection before the measured
            // phase) is retried once on a fresh server; the row says so.
            let mut outcome = run();
            if let Err(e) = &outcome {
                let why = format!("{e:#}");
                if why.contains("were set up") {
                    eprintln!("{kind}: setup failed ({why}); once more on a fresh server");
                    outcome = run().map(|mut rows| {
                        for r in &mut rows {
                            r.note += &format!("; retried after a failed setup: {why}");
                        }
                        rows
                    });
                }
            }
            match outcome {
                Ok(r) => rows.extend(r),
                Err(e) => rows.push(Row::failed(kind.to_string(), format!("{e:#}"))),
            }
        }
        print_table(&rows);
        print_ratios(&rows);
        results.push((sc, rows));
    }
    print_targets(&results);
    println!();
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The load and mode of a group scenario; `None` for cold and big.
fn group_load(sc: Scenario, sizes: &Sizes) -> Option<(GroupLoad, Mode)> {
    Some(match sc {
        Scenario::Steady => (sizes.steady, Mode::Edits),
        Scenario::Steady4x => (sizes.steady4x, Mode::Edits),
        Scenario::Burst => (sizes.burst, Mode::Edits),
        Scenario::Fanout => (sizes.fanout, Mode::Edits),
        Scenario::Presence => (sizes.presence, Mode::Presence),
        Scenario::Catchup => (sizes.catchup, Mode::Catchup),
        Scenario::Cold | Scenario::Big => return None,
    })
}

fn describe(sc: Scenario, sizes: &Sizes) -> String {
    let g = |l: &GroupLoad, what: &str| {
        format!(
            "{} groups x {} peers = {} connections, {} {what} per peer at {}-{} ms gaps",
            l.groups,
            l.peers,
            l.groups * l.peers,
            l.edits_per_peer,
            l.gap_ms.0,
            l.gap_ms.1
        )
    };
    match sc {
        Scenario::Steady => format!(
            "steady: {}; measured from the first edit until every peer has every edit",
            g(&sizes.steady, "edits")
        ),
        Scenario::Steady4x => format!("steady4x: {}", g(&sizes.steady4x, "edits")),
        Scenario::Burst => format!("burst: {}", g(&sizes.burst, "edits")),
        Scenario::Fanout => format!("fan-out: {}", g(&sizes.fanout, "edits")),
        Scenario::Presence => format!(
            "presence: {}; latency from send to each other peer's event",
            g(&sizes.presence, "cursor messages")
        ),
        Scenario::Catchup => format!(
            "catch-up: {}, one peer per group offline meanwhile; measured: its rejoin until it has all {} edits (p50/p99/max = per rejoining peer)",
            g(&sizes.catchup, "edits"),
            (sizes.catchup.peers - 1) * sizes.catchup.edits_per_peer
        ),
        Scenario::Cold => format!(
            "cold start: a new device fetches {} documents of {} changes; measured: the fetch",
            sizes.docs, sizes.changes_per_doc
        ),
        Scenario::Big => format!(
            "big document: {} one-character commits pushed to one Text, then fetched by a new device",
            sizes.big_edits
        ),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into())
}

type Column = (&'static str, fn(&Row) -> Option<String>);

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

fn pair(v: (f64, f64), digits: usize) -> String {
    format!("{:.digits$} / {:.digits$}", v.0, v.1)
}

const COLUMNS: [Column; 14] = [
    ("wall s", |r| Some(format!("{:.2}", r.wall_s))),
    ("p50 ms", |r| r.p50_ms.map(f1)),
    ("p99 ms", |r| r.p99_ms.map(f1)),
    ("max ms", |r| r.max_ms.map(f1)),
    ("send p50 / p99 ms", |r| {
        Some(pair((r.send_p50_ms?, r.send_p99_ms?), 1))
    }),
    ("server CPU s", |r| Some(format!("{:.2}", r.cpu_s))),
    ("CPU ms/edit", |r| {
        r.cpu_per_edit_ms().map(|v| format!("{v:.3}"))
    }),
    ("peak RSS MB", |r| Some(f1(r.rss_mb))),
    ("lost", |r| {
        Some(if r.lost == u64::MAX {
            "?".into()
        } else {
            r.lost.to_string()
        })
    }),
    ("client CPU ms/peer", |r| r.client_cpu_ms().map(f1)),
    ("frames/edit out / in", |r| {
        r.frames_per_edit().map(|v| pair(v, 2))
    }),
    ("bytes/edit out / in", |r| {
        r.bytes_per_edit().map(|v| pair(v, 0))
    }),
    ("rejoin frames / KB in", |r| {
        r.rejoin_in.map(|(f, b)| pair((f, b / 1024.0), 1))
    }),
    ("bench CPU s", |r| Some(format!("{:.2}", r.bench_cpu_s))),
];

/// A markdown table with the columns some row has a value for.
fn print_table(rows: &[Row]) {
    let cols: Vec<&Column> = COLUMNS
        .iter()
        .filter(|(_, f)| rows.iter().any(|r| f(r).is_some()))
        .collect();
    let mut line = String::from("| server |");
    for (h, _) in &cols {
        line += &format!(" {h} |");
    }
    line += " note |";
    println!("{line}");
    println!("|---|{}---|", "---:|".repeat(cols.len()));
    for r in rows {
        let mut line = format!("| {} |", r.label);
        for (_, f) in &cols {
            line += &format!(" {} |", f(r).unwrap_or_else(|| "–".into()));
        }
        line += &format!(" {} |", r.note.trim_start_matches("; "));
        println!("{line}");
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// "cairn/<other>" ratios for rows with the same suffix ("push", "fetch" or none).
fn print_ratios(rows: &[Row]) {
    println!();
    for c in rows.iter().filter(|r| r.label.starts_with("cairn")) {
        let suffix = c.label.trim_start_matches("cairn");
        for o in rows
            .iter()
            .filter(|o| !o.label.starts_with("cairn") && o.label.ends_with(suffix))
        {
            let mut parts = Vec::new();
            let figures: [(&str, Option<f64>, Option<f64>); 8] = [
                ("CPU", Some(c.cpu_s), Some(o.cpu_s)),
                ("p50", c.p50_ms, o.p50_ms),
                ("p99", c.p99_ms, o.p99_ms),
                ("RSS", Some(c.rss_mb), Some(o.rss_mb)),
                ("client CPU", c.client_cpu_ms(), o.client_cpu_ms()),
                (
                    "frames out",
                    c.frames_per_edit().map(|f| f.0),
                    o.frames_per_edit().map(|f| f.0),
                ),
                (
                    "frames in",
                    c.frames_per_edit().map(|f| f.1),
                    o.frames_per_edit().map(|f| f.1),
                ),
                ("wall", Some(c.wall_s), Some(o.wall_s)),
            ];
            for (name, a, b) in figures {
                if let Some(x) = ratio(a, b) {
                    parts.push(format!("{name} {x:.2}×"));
                }
            }
            let anchor = if o.lost > 0 && o.lost != u64::MAX && o.p50_ms.is_some() {
                " (it lost edits: not an anchor)"
            } else {
                ""
            };
            println!("- cairn/{}: {}{anchor}", o.label, parts.join(", "));
        }
    }
}

fn find<'a>(results: &'a [(Scenario, Vec<Row>)], sc: Scenario, label: &str) -> Option<&'a Row> {
    results
        .iter()
        .find(|(s, _)| *s == sc)
        .and_then(|(_, rows)| rows.iter().find(|r| r.label == label))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// A target "cairn's figure at most `limit` × the anchor's", or why it cannot be judged.
fn against(
    what: &str,
    cairn: Option<&Row>,
    anchor: Option<&Row>,
    limit: f64,
    figure: fn(&Row) -> Option<f64>,
) {
    let (Some(c), Some(a)) = (cairn, anchor) else {
        return;
    };
    if a.lost == u64::MAX || c.lost == u64::MAX {
        println!("- n/a {what}: a run failed");
        return;
    }
    if a.lost > 0 {
        println!("- n/a {what}: {} lost edits, not an anchor", a.label);
        return;
    }
    match (figure(c), figure(a)) {
        (Some(x), Some(y)) if y > 0.0 && x.is_finite() => println!(
            "- {} {what} (at most {limit}× {}): {x:.3} vs {y:.3} = {:.2}×",
            verdict(x <= y * limit),
            a.label,
            x / y
        ),
        _ => println!("- n/a {what}: no figure"),
    }
}

fn print_targets(results: &[(Scenario, Vec<Row>)]) {
    println!();
    println!("## targets");
    println!();
    let cairn = |sc| find(results, sc, "cairn");
    let node = |sc| find(results, sc, "node-sync");
    let samod = |sc, l| find(results, sc, l);
    use Scenario::*;
    against("steady p50", cairn(Steady), node(Steady), 0.25, |r| {
        r.p50_ms
    });
    against("steady p99", cairn(Steady), node(Steady), 0.25, |r| {
        r.p99_ms
    });
    against("steady relay CPU", cairn(Steady), node(Steady), 0.2, |r| {
        Some(r.cpu_s)
    });
    if let Some(c) = cairn(Steady) {
        println!(
            "- {} steady cairn peak RSS under 64 MB: {:.1} MB",
            verdict(c.rss_mb < 64.0),
            c.rss_mb
        );
        match c.relay_forward_ms {
            Some((_, p99)) => println!(
                "- {} steady relay frame-in to frames-out p99 under 20 ms (its cairn_forward_delay_seconds, bucket bound): ≤ {p99} ms",
                verdict(p99 <= 16.0)
            ),
            None => println!("- n/a steady relay frame-in to frames-out p99 under 20 ms: the relay's metric could not be read"),
        }
    }
    if let Some(c) = cairn(Steady4x) {
        println!(
            "- {} steady4x no loss through cairn: {} missing",
            verdict(c.lost == 0),
            c.lost
        );
    }
    against(
        "steady4x relay CPU per edit vs steady",
        cairn(Steady4x),
        cairn(Steady),
        1.0,
        Row::cpu_per_edit_ms,
    );
    against("burst relay CPU", cairn(Burst), node(Burst), 0.5, |r| {
        Some(r.cpu_s)
    });
    against(
        "burst client CPU",
        cairn(Burst),
        node(Burst),
        1.0,
        Row::client_cpu_ms,
    );
    against(
        "burst frames per edit out",
        cairn(Burst),
        node(Burst),
        1.0,
        |r| r.frames_per_edit().map(|f| f.0),
    );
    against(
        "burst frames per edit in",
        cairn(Burst),
        node(Burst),
        1.0,
        |r| r.frames_per_edit().map(|f| f.1),
    );
    against(
        "cold relay CPU",
        cairn(Cold),
        samod(Cold, "samod"),
        0.5,
        |r| Some(r.cpu_s),
    );
    for part in ["push", "fetch"] {
        let (c, s) = (format!("cairn {part}"), format!("samod {part}"));
        against(
            &format!("big {part} relay CPU"),
            find(results, Big, &c),
            find(results, Big, &s),
            0.5,
            |r| Some(r.cpu_s),
        );
    }
    let lost: u64 = results
        .iter()
        .filter(|(s, _)| *s != Presence)
        .flat_map(|(_, rows)| rows.iter())
        .filter(|r| r.label.starts_with("cairn"))
        .map(|r| r.lost)
        .fold(0, u64::saturating_add);
    println!(
        "- {} nothing lost through cairn: {lost} edits missing",
        verdict(lost == 0)
    );
}
