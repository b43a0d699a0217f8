//! `cairn-bench`: runs load scenarios against the Cairn relay and the Node automerge-repo
//! servers and prints server CPU, peak memory, latency and loss side by side.
//!
//! ```text
//! cargo build --release -p cairn-relay -p cairn-bench && target/release/cairn-bench
//! target/release/cairn-bench --scenario fanout --servers cairn,node-sync --quick
//! ```
//!
//! Every server runs as a child process on 127.0.0.1 with a fresh data directory per
//! scenario. The simulated devices are cairn-core engines (client role, in-memory store) in
//! this process, one tokio task each. The bench and the server share the machine, so the
//! bench's own CPU is printed beside each row.

mod scenario;

use std::time::Instant;

use anyhow::bail;
use clap::Parser;

use cairn_bench::server::{Kind, Programs, Server};
use scenario::{Row, Sizes};

/// Load benchmark: Cairn relay vs the Node automerge-repo servers.
#[derive(Debug, Parser)]
#[command(name = "cairn-bench")]
struct Cli {
    /// Which scenarios: all, fanout, cold, big (comma-separated).
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Which servers: cairn, node-sync, node-repo (comma-separated).
    #[arg(long, default_value = "cairn,node-sync,node-repo")]
    servers: String,
    /// Small counts, for a smoke run well under a minute.
    #[arg(long)]
    quick: bool,
    /// Fan-out: gap between one peer's edits in ms, as MIN-MAX (default 50-100).
    #[arg(long, value_parser = parse_gap)]
    edit_gap_ms: Option<(u64, u64)>,
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
    Fanout,
    Cold,
    Big,
}

fn parse_scenarios(s: &str) -> anyhow::Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        match part {
            "all" => out.extend([Scenario::Fanout, Scenario::Cold, Scenario::Big]),
            "fanout" | "fan-out" => out.push(Scenario::Fanout),
            "cold" => out.push(Scenario::Cold),
            "big" => out.push(Scenario::Big),
            other => bail!("unknown scenario `{other}` (expected all, fanout, cold or big)"),
        }
    }
    out.dedup();
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
    let programs = Programs::locate(&kinds, cli.relay.clone())?;
    let mut sizes = if cli.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if let Some(gap) = cli.edit_gap_ms {
        sizes.edit_gap_ms = gap;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus)
        .enable_all()
        .build()?;

    println!(
        "# cairn-bench ({})",
        if cli.quick { "quick" } else { "full" }
    );
    println!(
        "machine: {cpus} CPUs (nproc), {}; server and bench share them",
        cpu_model()
    );
    println!(
        "CPU = server utime+stime (with child processes) over the measured phase; RSS = server VmHWM"
    );

    let epoch = Instant::now();
    let mut results: Vec<(Scenario, Vec<Row>)> = Vec::new();
    for &sc in &scenarios {
        println!();
        match sc {
            Scenario::Fanout => println!(
                "## fan-out: {} groups x {} peers = {} connections, {} edits per peer every {}-{} ms; measured from all connected to all converged",
                sizes.groups,
                sizes.peers_per_group,
                sizes.groups * sizes.peers_per_group,
                sizes.edits_per_peer,
                sizes.edit_gap_ms.0,
                sizes.edit_gap_ms.1
            ),
            Scenario::Cold => println!(
                "## cold start: a new device fetches {} documents of {} changes; measured: the fetch",
                sizes.docs, sizes.changes_per_doc
            ),
            Scenario::Big => println!(
                "## big document: {} one-character commits pushed to one Text, then fetched by a new device",
                sizes.big_edits
            ),
        }
        let mut rows = Vec::new();
        for &kind in &kinds {
            eprintln!("running {sc:?} against {kind} ...");
            let outcome = Server::start(kind, &programs).and_then(|server| {
                let r = runtime.block_on(async {
                    match sc {
                        Scenario::Fanout => scenario::fanout(&server, sizes, epoch)
                            .await
                            .map(|r| vec![r]),
                        Scenario::Cold => {
                            scenario::cold(&server, sizes, epoch).await.map(|r| vec![r])
                        }
                        Scenario::Big => scenario::big(&server, sizes, epoch).await,
                    }
                });
                if r.is_err() {
                    eprintln!("{kind} log tail:\n{}", server.log_tail());
                }
                r
            });
            match outcome {
                Ok(r) => rows.extend(r),
                Err(e) => rows.push(Row {
                    label: kind.to_string(),
                    wall_s: f64::NAN,
                    p50_ms: None,
                    p99_ms: None,
                    max_ms: None,
                    cpu_s: f64::NAN,
                    rss_mb: f64::NAN,
                    lost: u64::MAX,
                    bench_cpu_s: f64::NAN,
                    note: format!("failed: {e:#}"),
                }),
            }
        }
        print_table(&rows);
        print_ratios(&rows);
        results.push((sc, rows));
    }
    print_targets(&results, &sizes);
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into())
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12} {:>6}  {:>11}  note",
        "server",
        "wall s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU s",
        "peak RSS MB",
        "lost",
        "bench CPU s"
    );
    for r in rows {
        let lost = if r.lost == u64::MAX {
            "?".into()
        } else {
            r.lost.to_string()
        };
        println!(
            "{:<16} {:>8.2} {:>8} {:>8} {:>8} {:>8.2} {:>12.1} {:>6}  {:>11.2}  {}",
            r.label,
            r.wall_s,
            opt(r.p50_ms),
            opt(r.p99_ms),
            opt(r.max_ms),
            r.cpu_s,
            r.rss_mb,
            lost,
            r.bench_cpu_s,
            r.note
        );
    }
}

/// "cairn/node" ratios for rows with the same suffix ("push", "fetch" or none).
fn print_ratios(rows: &[Row]) {
    for r in rows.iter().filter(|r| r.label.starts_with("cairn")) {
        let suffix = r.label.trim_start_matches("cairn");
        for n in rows
            .iter()
            .filter(|n| n.label.starts_with("node") && n.label.ends_with(suffix))
        {
            let node = n.label.trim_end_matches(suffix);
            println!(
                "  cairn/{}{}: CPU {:.3}x  RSS {:.3}x  wall {:.3}x",
                node,
                suffix,
                r.cpu_s / n.cpu_s,
                r.rss_mb / n.rss_mb,
                r.wall_s / n.wall_s
            );
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

fn print_targets(results: &[(Scenario, Vec<Row>)], sizes: &Sizes) {
    println!();
    println!("## targets");
    for (sc, limit, what) in [
        (Scenario::Fanout, 5.0, "fan-out"),
        (Scenario::Cold, 2.0, "cold start"),
    ] {
        let (Some(c), Some(n)) = (find(results, sc, "cairn"), find(results, sc, "node-sync"))
        else {
            continue;
        };
        let ratio = c.cpu_s / n.cpu_s;
        println!(
            "{} relay CPU <= 1/{limit} of node-sync on {what}: {:.2} s vs {:.2} s = 1/{:.1}",
            verdict(ratio <= 1.0 / limit),
            c.cpu_s,
            n.cpu_s,
            1.0 / ratio
        );
    }
    if let Some(c) = find(results, Scenario::Fanout, "cairn") {
        let conns = sizes.groups * sizes.peers_per_group;
        println!(
            "{} cairn peak RSS < 64 MB at {conns} connections: {:.1} MB{}",
            verdict(c.rss_mb < 64.0),
            c.rss_mb,
            if conns < 400 {
                " (quick run: target is for 400)"
            } else {
                ""
            }
        );
    }
    let cairn_rows: Vec<&Row> = results
        .iter()
        .flat_map(|(_, rows)| rows.iter())
        .filter(|r| r.label.starts_with("cairn"))
        .collect();
    if !cairn_rows.is_empty() {
        let lost: u64 = cairn_rows
            .iter()
            .map(|r| r.lost)
            .fold(0, u64::saturating_add);
        println!(
            "{} nothing lost through cairn: {lost} missing",
            verdict(lost == 0)
        );
    }
}
