//! `cairn-backup-bench`: how fast an online backup and a store rewrite go on a relay's
//! store, and how long a client's acknowledged writes wait meanwhile (both hold every
//! other store call while they copy).
//!
//! `cargo run --release -p cairn-bench --bin cairn-backup-bench -- --mb 200 [--dir DIR]`
//! fills a store of that size (documents of 64 KiB of incompressible bytes), starts an
//! in-process relay on it (loopback), keeps one client writing and waiting for each
//! acknowledgement, and prints the throughput of each operation with the client's write
//! latencies during it and otherwise.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use automerge::transaction::Transactable;
use automerge::ROOT;
use cairn_relay::config::{Cli, Command};
use cairn_sync::client::{Client, ClientConfig};
use cairn_sync::store::{open_data_dir, MemoryStore, SledConfig, Storage};
use clap::Parser;
use tokio::net::TcpListener;

/// Flags.
#[derive(Debug, Parser)]
#[command(name = "cairn-backup-bench", about)]
struct Args {
    /// Megabytes of documents in the store.
    #[arg(long, default_value_t = 200)]
    mb: usize,
    /// Where to put the store (default: the temporary directory). Use the disk the relay
    /// would use: tmpfs leaves out every fsync.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Latencies of acknowledged writes: while an operation ran, and otherwise.
#[derive(Default)]
struct Waits {
    during: Vec<Duration>,
    otherwise: Vec<Duration>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let data = dir.path().join("data");
    let t = Instant::now();
    fill(&data, args.mb * 16, 64 * 1024)?;
    println!(
        "filled {} MB in {:.1} s",
        args.mb,
        t.elapsed().as_secs_f64()
    );

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let data_arg = data.to_str().context("a UTF-8 temporary path")?;
    let cli = Cli::parse_from([
        "cairn-relay",
        "serve",
        "--open",
        "--listen",
        &addr,
        "--data",
        data_arg,
    ]);
    let Command::Serve(serve) = cli.command else {
        anyhow::bail!("not the serve command")
    };
    let config = serve.validate()?;
    let (state, store) = cairn_relay::start(&config).await?;
    let (stop_relay, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(cairn_relay::serve(
        state.clone(),
        store,
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    let mut client_config = ClientConfig::new("bench/phone");
    client_config.min_backoff = Duration::from_millis(50);
    let c = Client::start(Arc::new(MemoryStore::default()), client_config)?;
    c.connect(&format!("ws://{addr}/"));
    let (doc, _) = c
        .create(|tx| tx.put(ROOT, "title", "minutes").map(|_| ()))
        .await?;
    c.wait_acknowledged(doc, Duration::from_secs(30)).await?;

    let busy = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let waits = Arc::new(Mutex::new(Waits::default()));
    let writer = {
        let (c, busy, stop, waits) = (c.clone(), busy.clone(), stop.clone(), waits.clone());
        tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let during = busy.load(Ordering::SeqCst);
                let t = Instant::now();
                c.change(doc, move |tx| tx.put(ROOT, format!("k{i}"), i))
                    .await?;
                c.wait_acknowledged(doc, Duration::from_secs(300)).await?;
                let took = t.elapsed();
                let mut w = waits.lock().unwrap_or_else(|e| e.into_inner());
                if during || busy.load(Ordering::SeqCst) {
                    w.during.push(took);
                } else {
                    w.otherwise.push(took);
                }
                i += 1;
            }
            anyhow::Ok(())
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    busy.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let done = cairn_relay::backup::backup(&state, &dir.path().join("backups")).await?;
    let secs = t.elapsed().as_secs_f64();
    busy.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    report(&waits, "backup", secs, done.report.bytes);

    let store = state.store().clone();
    busy.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let rewritten = state
        .host()
        .exclusive(move || store.rewrite())
        .await
        .map_err(|_| anyhow::anyhow!("the relay stopped"))??;
    let secs = t.elapsed().as_secs_f64();
    busy.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    report(&waits, "rewrite", secs, rewritten.bytes);

    stop.store(true, Ordering::SeqCst);
    writer.await??;
    c.shutdown().await;
    let _ = stop_relay.send(());
    relay.await??;
    Ok(())
}

/// Writes `docs` documents of `bytes` incompressible bytes into a new store at `data`.
fn fill(data: &Path, docs: usize, bytes: usize) -> anyhow::Result<()> {
    let (s, _) = open_data_dir(data, &SledConfig::default())?;
    let mut seed = 0x5eed_u64;
    for i in 0..docs {
        let mut value = Vec::with_capacity(bytes + 8);
        while value.len() < bytes {
            // splitmix64: bytes sled cannot shrink.
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            value.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        value.truncate(bytes);
        s.put(
            &[format!("filler{i:06}"), "snapshot".into(), "h".into()],
            &value,
        )?;
        if i % 64 == 63 {
            s.flush()?;
        }
    }
    s.flush()?;
    Ok(())
}

/// Prints one operation's throughput and the write latencies seen during it and otherwise
/// (then starts counting afresh).
fn report(waits: &Mutex<Waits>, what: &str, secs: f64, bytes: u64) {
    let mut w = waits.lock().unwrap_or_else(|e| e.into_inner());
    let quantile = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        let at = ((v.len().saturating_sub(1)) as f64 * q) as usize;
        v.get(at).copied().unwrap_or_default()
    };
    let mb = bytes as f64 / 1e6;
    let (during_median, during_max) = (quantile(&mut w.during, 0.5), quantile(&mut w.during, 1.0));
    let (other_median, other_max) = (
        quantile(&mut w.otherwise, 0.5),
        quantile(&mut w.otherwise, 1.0),
    );
    println!(
        "{what}: {mb:.1} MB in {secs:.2} s = {:.0} MB/s; writes while it ran: {} (median {during_median:?}, max {during_max:?}); otherwise: {} (median {other_median:?}, max {other_max:?})",
        mb / secs,
        w.during.len(),
        w.otherwise.len(),
    );
    w.during.clear();
    w.otherwise.clear();
}
