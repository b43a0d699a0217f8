//! `cairn-attack`: runs the attacks of issue 6 ("No peer can stop the relay or make it
//! hoard memory") one by one against a fresh relay process each, and prints one Markdown
//! table row per attack: whether the relay survived, another client's edit latency and
//! delivery during the attack, and the relay's memory during and after it.
//!
//! ```text
//! cargo build --release -p cairn-relay -p cairn-bench
//! target/release/cairn-attack                       # every attack, the issue's sizes
//! target/release/cairn-attack --quick               # smaller counts, a smoke run
//! target/release/cairn-attack --only bloom-zero,takeovers --relay path/to/cairn-relay
//! ```
//!
//! For each attack:
//! - the relay binary starts as a child process on 127.0.0.1 (`serve --open`, a fresh
//!   temporary data directory, `CAIRN_LOG=warn`, and `--idle-secs 2` when the attack
//!   makes it load documents, so "RSS after" is measured after idle eviction). It runs
//!   under `ulimit -v` (`--relay-max-vm-mb`, default 8 GiB) so an attack that asks for tens
//!   of GiB fails inside the relay rather than starving a shared machine, and with a soft
//!   open-file limit of 1024 (`--relay-nofile`), the common default of service managers;
//! - the victim, two engine-backed clients co-editing one document (one edit every 20 ms
//!   from A, arrival timed at B; both reconnect when dropped), runs 2 s calm, then through
//!   the attack window (the attack, at least 5 s) and 5 s after;
//! - the attack runs, bounded in count and time (≤ ~20 s, loopback only), while the
//!   relay's VmRSS is sampled every 100 ms;
//! - 5 s after the attacker disconnected: the relay's VmRSS, whether the process is alive,
//!   and what `/healthz` and `/readyz` answer;
//! - if the relay is alive but not ready then, `/readyz` is polled (at most 60 s more) to
//!   tell a stall that ends (and how long it lasted) from an engine that is gone;
//! - the relay process is killed (through its own child handle) whatever happened.
//!
//! Columns: "victim p50/p99/max" are arrival delays of the edits made during the attack
//! window, where an edit that never arrived counts with its age when the victim stopped
//! (shown as `>N`: a lower bound); "delivered/sent" counts those edits, delivered meaning
//! seen at B before the victim stopped (5 s after the window). Notes give the calm p99, reconnects, the load
//! average when the attack started, and what happened to the attacker's sockets.

#![warn(missing_docs)]

mod attacks;
mod probe;
mod raw;
mod victim;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_bench::server::{clock_ticks, proc_ticks, Kind, Launch, Programs, Server};
use clap::Parser;

use attacks::{Attack, Sizes, Target};
use victim::{Phase, Quantile, Victim, VictimReport};

/// The victim edits undisturbed this long before the attack (the calm baseline).
const CALM: Duration = Duration::from_secs(2);
/// The shortest attack window: a quick attack's aftermath is measured too.
const MIN_WINDOW: Duration = Duration::from_secs(5);
/// "After" figures are taken this long after the attacker disconnected.
const AFTER: Duration = Duration::from_secs(5);
/// An attack that has not returned by then is dropped (its sockets close).
const ATTACK_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for a stalled relay to become ready again, after the figures are taken.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// Limit for each health request.
const HEALTH_LIMIT: Duration = Duration::from_secs(3);

/// Attacks from issue 6 against the Cairn relay, measured.
#[derive(Debug, Parser)]
#[command(name = "cairn-attack")]
struct Cli {
    /// The relay binary (default: `cairn-relay` beside this binary, i.e.
    /// target/release/cairn-relay).
    #[arg(long)]
    relay: Option<PathBuf>,
    /// Run only these attacks (comma-separated names; see the table's first column).
    #[arg(long)]
    only: Option<String>,
    /// Smaller counts, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Address-space limit of the relay process in MiB (`ulimit -v`).
    #[arg(long, default_value_t = 8192)]
    relay_max_vm_mb: u64,
    /// Soft open-file limit of the relay process.
    #[arg(long, default_value_t = 1024)]
    relay_nofile: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let attacks = match &cli.only {
        Some(list) => Attack::parse_list(list)?,
        None => Attack::ALL.to_vec(),
    };
    let sizes = if cli.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let programs = Programs::locate(&[Kind::Cairn], cli.relay.clone())?;
    let fd_limit = probe::raise_fd_limit(sizes.sockets() + 256)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let launch = Launch {
        extra_args: Vec::new(),
        max_vm_kib: Some(cli.relay_max_vm_mb * 1024),
        nofile: Some(cli.relay_nofile),
    };

    println!(
        "# cairn-attack ({})",
        if cli.quick { "quick" } else { "full" }
    );
    println!(
        "{} CPUs, load average at start {}; relay limits: {} MiB address space, {} open files; this process: {fd_limit} open files",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        probe::load_1m(),
        cli.relay_max_vm_mb,
        cli.relay_nofile,
    );
    println!();
    println!("| attack | relay alive after | victim p50/p99/max ms | victim edits delivered/sent | relay peak RSS MB | relay RSS after MB | notes |");
    println!("|---|---|---|---|---|---|---|");
    for attack in attacks {
        eprintln!("running {attack} ...");
        let row = match run_one(attack, &programs, &launch, sizes, &runtime) {
            Ok(row) => row,
            Err(e) => format!(
                "| {attack} | ? | - | - | - | - | failed: {} |",
                cell(&format!("{e:#}"))
            ),
        };
        println!("{row}");
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

/// Makes text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "/").replace(['\n', '\r'], " ")
}

fn ms(v: Option<Quantile>) -> String {
    match v {
        None => "-".into(),
        Some(q) if q.at_least => format!(">{:.0}", q.ms),
        Some(q) => format!("{:.0}", q.ms),
    }
}

fn run_one(
    attack: Attack,
    programs: &Programs,
    base: &Launch,
    sizes: Sizes,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<String> {
    let prepared = attack.prepare(&sizes);
    let mut launch = base.clone();
    if attack.loads_documents() {
        launch.extra_args = vec!["--idle-secs".into(), "2".into()];
    }
    // Killed on drop, whatever happens below.
    let mut server = Server::start_with(Kind::Cairn, programs, &launch)?;
    let pid = server.pid();
    let epoch = Instant::now();
    let victim = Victim::start(server.url(), server.addr, epoch).context("starting the victim")?;
    std::thread::sleep(CALM);
    let base_rss = probe::rss_mb(pid);
    let load = probe::load_1m();
    let sampler = probe::Sampler::start(pid);
    victim.set(Phase::Attack);
    let started = Instant::now();
    let target = Target {
        url: server.url(),
        addr: server.addr,
        victim_doc: victim.doc,
        sizes,
    };
    let outcome = rt.block_on(async {
        tokio::time::timeout(ATTACK_LIMIT, attack.run(&target, prepared)).await
    });
    let disconnected = Instant::now();
    let attack_notes = match outcome {
        Ok(Ok(notes)) => notes,
        Ok(Err(e)) => vec![format!("attack stopped: {e:#}")],
        Err(_) => vec![format!("attack cut off after {} s", ATTACK_LIMIT.as_secs())],
    };
    sleep_until(started + MIN_WINDOW);
    victim.set(Phase::After);
    let peaks = sampler.finish();
    sleep_until(disconnected + AFTER);
    let rss_after = probe::rss_mb(pid);
    let fds_after = probe::open_fds(pid);
    let mut ready = false;
    let alive = match server.exit_status() {
        Some(status) => format!("no ({status})"),
        None => {
            let (healthz, readyz) = rt.block_on(async {
                (
                    probe::http_get(server.addr, "/healthz", HEALTH_LIMIT).await,
                    probe::http_get(server.addr, "/readyz", HEALTH_LIMIT).await,
                )
            });
            ready = matches!(readyz, Ok((200, _)));
            let show = |r: anyhow::Result<(u16, Duration)>| match r {
                Ok((code, _)) => code.to_string(),
                Err(_) => "no answer".into(),
            };
            format!("yes; healthz {}, readyz {}", show(healthz), show(readyz))
        }
    };
    let report = victim.finish();
    let recovery = if !ready && server.exit_status().is_none() {
        Some(await_recovery(&mut server, rt, disconnected))
    } else {
        None
    };
    // The lifetime peak, including any growth while a stalled relay recovered.
    let hwm = probe::hwm_mb(pid);
    let log = server.log_text();
    drop(server);

    let mut notes = attack_notes;
    let (figures, delivered) = match &report {
        Ok(r) => victim_cells(r),
        Err(e) => {
            notes.push(format!("victim failed: {e:#}"));
            ("-".into(), "-".into())
        }
    };
    if let Ok(r) = &report {
        notes.push(format!("calm p99 {} ms", ms(r.calm.quantile(0.99))));
        if r.reconnects != (0, 0) || r.failed_reconnects != (0, 0) {
            notes.push(format!(
                "victim reconnects A {} B {} (failed A {} B {})",
                r.reconnects.0, r.reconnects.1, r.failed_reconnects.0, r.failed_reconnects.1
            ));
        }
        if attack.floods_ephemerals() {
            notes.push(format!(
                "victim got {} + {} ephemerals",
                r.ephemerals.0, r.ephemerals.1
            ));
        }
    }
    if attack.opens_sockets() {
        notes.push(format!(
            "relay fds peak {}, after {}",
            peaks.fds,
            fds_after.map_or("-".into(), |n| n.to_string())
        ));
    }
    if let (Some(hwm), true) = (hwm, peaks.rss_mb > 0.0) {
        if hwm > peaks.rss_mb * 1.1 {
            notes.push(format!("VmHWM {hwm:.0} MB"));
        }
    }
    notes.extend(recovery);
    if let Some(why) = crash_lines(&log) {
        notes.push(format!("relay log: {why}"));
    }
    notes.push(format!(
        "RSS before {} MB, load {load}",
        base_rss.map_or("-".into(), |v| format!("{v:.0}"))
    ));
    Ok(format!(
        "| {attack} | {alive} | {figures} | {delivered} | {:.0} | {} | {} |",
        peaks.rss_mb,
        rss_after.map_or("-".into(), |v| format!("{v:.0}")),
        cell(&notes.join("; "))
    ))
}

fn victim_cells(r: &VictimReport) -> (String, String) {
    let a = &r.attack;
    (
        format!(
            "{}/{}/{}",
            ms(a.quantile(0.5)),
            ms(a.quantile(0.99)),
            ms(a.quantile(1.0))
        ),
        format!("{}/{}", a.delivered, a.sent),
    )
}

/// After the "after" figures, for a relay that is alive but not ready: polls `/readyz`
/// (at most [`RECOVERY_LIMIT`]) to tell a stall that ends from an engine that is gone (not
/// ready and using no CPU), and notes which, with the RSS at that point.
fn await_recovery(server: &mut Server, rt: &tokio::runtime::Runtime, since: Instant) -> String {
    let pid = server.pid();
    let deadline = Instant::now() + RECOVERY_LIMIT;
    let mut cpu = (Instant::now(), proc_ticks(pid));
    while Instant::now() < deadline {
        if let Some(status) = server.exit_status() {
            return format!(
                "relay exited {} s after the attacker left ({status})",
                since.elapsed().as_secs()
            );
        }
        let ready = rt.block_on(probe::http_get(server.addr, "/readyz", HEALTH_LIMIT));
        let rss = probe::rss_mb(pid).map_or("-".into(), |v| format!("{v:.0}"));
        if matches!(ready, Ok((200, _))) {
            return format!(
                "ready again {} s after the attacker left, RSS then {rss} MB",
                since.elapsed().as_secs()
            );
        }
        let ticks = proc_ticks(pid);
        if cpu.0.elapsed() >= Duration::from_secs(2) {
            if (ticks.saturating_sub(cpu.1) as f64) < 0.05 * clock_ticks() {
                return format!(
                    "still not ready {} s after the attacker left and idle: engine gone",
                    since.elapsed().as_secs()
                );
            }
            cpu = (Instant::now(), ticks);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    format!(
        "still not ready {} s after the attacker left (busy), RSS {} MB",
        since.elapsed().as_secs(),
        probe::rss_mb(pid).map_or("-".into(), |v| format!("{v:.0}"))
    )
}

/// The panic or allocation failure in the relay's log, shortened: the source location
/// without its directories, and the message on the next line.
fn crash_lines(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.contains("panicked at") || l.contains("memory allocation"))?;
    let first = lines[i];
    let first = match first.split_once("panicked at ") {
        Some((_, loc)) => format!("panicked at {}", loc.rsplit('/').next().unwrap_or(loc)),
        None => first.to_owned(),
    };
    let next = lines.get(i + 1).copied().unwrap_or("");
    Some(format!("{first} {next}").chars().take(160).collect())
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}
