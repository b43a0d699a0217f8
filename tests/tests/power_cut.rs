//! The power-cut tests: no change that was acknowledged is lost when the disk under the
//! relay, or under a phone, loses power.
//!
//! The store lives on the volatile filesystem (`cairn_tests::volatile_fs`), which keeps
//! only what was made durable by `fsync`/`fdatasync` of a file and `fsync` of its directory.
//! At seeded moments the writer is SIGKILLed and reaped and the power is cut; then, before
//! anything talks to the store again, the test opens it itself (`SledStore::open`, which
//! also checks it for damage) and checks that every change acknowledged so far, at this cut
//! or an earlier one, is there.
//!
//! - **Relay**: the real `cairn-relay` binary serves three clients that write small changes
//!   to two shared documents; every round also adds a document holding one 160 KiB text
//!   insert (over sled's 128 KiB blob threshold; the store splits such values in pieces so
//!   sled keeps them in its log, and the test asserts no blob file appears). A change counts as acknowledged once the
//!   relay showed the client heads that include it (`Client::wait_acknowledged`). Each round
//!   runs a new relay on a new port with new clients, so no client can heal a loss before
//!   the check.
//! - **Phone**: a child process (this test binary, re-run as `phone_child`) writes through
//!   `Client::change` on a `SledStore` (a large insert first, then small changes) and prints
//!   a line for each change that returned; the parent kills it, cuts the power and checks
//!   every printed change.
//! - **Negative controls**: the same with sled's flush alone (the relay's hidden
//!   `--unsafe-durability sled-flush-only`, set through `CAIRN_UNSAFE_DURABILITY`;
//!   `SledDurability::SledFlushOnly` on the phone) must lose at least one acknowledged
//!   change in every run, or the test could not see a missing fsync.
//!
//! `CAIRN_POWER_CUT_SEED=<n>` replays a run's schedule (how long each round writes, which
//! documents, what is inserted; which changes get acknowledged before the cut still
//! depends on timing). The seed is printed. `CAIRN_POWER_CUTS=<n>` cuts that many times
//! (default 6; the controls cut at most twice). The relay binary is the one `cargo test
//! --workspace` builds next to this test binary (`CAIRN_RELAY_BIN` names another).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ObjType, ROOT};
use cairn_sync::client::{Client, ClientConfig};
use cairn_sync::ids::DocumentId;
use cairn_sync::store::{MemoryStore, SledConfig, SledDurability, SledStore, Storage};
use cairn_tests::volatile_fs::{VolatileFs, VolatileStats};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Clients writing to the relay.
const CLIENTS: usize = 3;
/// Documents the relay's clients share.
const SHARED_DOCS: usize = 2;
/// Power cuts per test unless `CAIRN_POWER_CUTS` says otherwise.
const DEFAULT_CUTS: u64 = 6;
/// Power cuts at most in a negative control: the first one already loses.
const CONTROL_CUTS: u64 = 2;
/// How long a relay or a phone writes before the power goes, in milliseconds (seeded).
const UP_MS: std::ops::Range<u64> = 400..1500;
/// How long a change's watcher waits for the relay to acknowledge it while the relay runs.
const ACK_WAIT: Duration = Duration::from_secs(3);
/// Bound for what should happen soon on loopback (start-up, opening documents), generous
/// because these tests share two cores with the rest of the suite.
const SOON: Duration = Duration::from_secs(30);
/// Characters in a large text insert: automerge stores them as a change of about 165 KB,
/// over sled's blob threshold (a quarter of its 512 KiB segment, less a header).
const BIG_INSERT_CHARS: usize = 160 * 1024;
/// Pause between a writer's changes, in milliseconds (seeded).
const PAUSE_MS: std::ops::Range<u64> = 5..40;

/// Mixed into the seed for the phone tests ("PHONE" in ASCII): with one seed for the run,
/// the phone's moments are not the relay's.
const PHONE_STREAM: u64 = 0x0050_484f_4e45;
/// The phone child's store directory; its absence means "not a child: do nothing".
const PHONE_DIR_VAR: &str = "CAIRN_POWER_CUT_PHONE_DIR";
/// The phone child's seed.
const PHONE_SEED_VAR: &str = "CAIRN_POWER_CUT_PHONE_SEED";
/// `fsync` or `sled-flush-only`.
const PHONE_DURABILITY_VAR: &str = "CAIRN_POWER_CUT_PHONE_DURABILITY";
/// Comma-separated documents the phone child opens and keeps changing.
const PHONE_DOCS_VAR: &str = "CAIRN_POWER_CUT_PHONE_DOCS";
/// What the phone child prints before `<doc> <hash,hash,...>` for each durable change.
const DURABLE_LINE: &str = "durable-change";
/// What the phone child prints once its large change is durable and the small ones begin.
const READY_LINE: &str = "small-changes-begin";
/// Upper bound on a phone child's life, in case its parent is gone.
const PHONE_CHILD_LIFETIME: Duration = Duration::from_secs(120);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
    )
}

/// The run's seed: `CAIRN_POWER_CUT_SEED`, or a fresh one.
fn seed() -> u64 {
    env_u64("CAIRN_POWER_CUT_SEED").unwrap_or_else(|| {
        u64::from_le_bytes(
            cairn_sync::store::random_uuid().as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        )
    })
}

fn cuts(control: bool) -> u64 {
    let n = env_u64("CAIRN_POWER_CUTS").unwrap_or(DEFAULT_CUTS).max(1);
    if control {
        n.min(CONTROL_CUTS)
    } else {
        n
    }
}

fn durability(control: bool) -> SledDurability {
    if control {
        SledDurability::SledFlushOnly
    } else {
        SledDurability::Fsync
    }
}

fn mount() -> VolatileFs {
    VolatileFs::mount_temp().unwrap_or_else(|e| panic!("{e}"))
}

/// A text insert of [`BIG_INSERT_CHARS`] characters that does not compress below sled's
/// blob threshold.
fn big_text(rng: &mut ChaCha8Rng) -> String {
    const ALPHABET: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .";
    (0..BIG_INSERT_CHARS)
        .map(|_| ALPHABET[rng.gen_range(0..64)] as char)
        .collect()
}

/// One change to `doc`: a large text insert if `big`, else a small put.
async fn write_one(
    c: &Client,
    doc: DocumentId,
    key: String,
    big: bool,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<ChangeHash>, cairn_sync::client::ClientError> {
    let written = if big {
        let text = big_text(rng);
        c.change_with_heads(doc, move |tx| {
            let obj = tx.put_object(ROOT, key, ObjType::Text)?;
            tx.splice_text(&obj, 0, 0, &text)
        })
        .await
    } else {
        let n = rng.gen::<i64>();
        c.change_with_heads(doc, move |tx| tx.put(ROOT, key, n))
            .await
    };
    written.map(|((), heads)| heads).map_err(|e| match e {
        cairn_sync::client::ChangeError::Client(e) => e,
        cairn_sync::client::ChangeError::Rejected(e) => panic!("the edit itself failed: {e}"),
    })
}

/// A change some writer saw acknowledged (relay) or durable (phone).
#[derive(Clone, Debug)]
struct Acked {
    doc: DocumentId,
    heads: Vec<ChangeHash>,
    /// A document holding a large change: checked at every cut, never written again (each
    /// small change to it would cost a rewrite of it when the store compacts).
    large: bool,
}

/// What the checks found after one cut.
#[derive(Debug, Default)]
struct Checked {
    /// Acknowledged changes looked for.
    changes: usize,
    /// Those not in the store.
    lost: Vec<Acked>,
    /// Blob files (values over the threshold) in the store after the cut.
    blob_files: usize,
    /// The store did not open at all (only a control may get there).
    unopenable: Option<String>,
}

/// What a document's stored chunks held when last loaded: the chunks' digest and every
/// change hash in them. A document whose chunks did not change since is not loaded again
/// (loading a large text change op by op dominated the cost of a check).
type Loaded = BTreeMap<DocumentId, (u64, BTreeSet<ChangeHash>)>;

/// Opens the store in `dir` as the app would and checks that every change in `acked` is in
/// it: each document is loaded from its stored chunks into automerge.
fn check_store(
    dir: &Path,
    durability: SledDurability,
    acked: &[Acked],
    cache: &mut Loaded,
) -> Checked {
    // A relay's data directory (store format 2) keeps its store where `CURRENT` says.
    let dir = &cairn_sync::store::store_dir(dir).unwrap_or_else(|_| dir.to_owned());
    let mut checked = Checked {
        changes: acked.len(),
        blob_files: std::fs::read_dir(dir.join("blobs")).map_or(0, |d| d.count()),
        ..Checked::default()
    };
    let config = SledConfig {
        durability,
        ..SledConfig::default()
    };
    let store = match SledStore::open(dir, &config) {
        Ok(store) => store,
        Err(e) => {
            checked.unopenable = Some(e.to_string());
            checked.lost = acked.to_vec();
            return checked;
        }
    };
    let docs: BTreeSet<DocumentId> = acked.iter().map(|a| a.doc).collect();
    for doc in docs {
        // All of a document's chunks in one load: one by one, each would re-sort the ops.
        let mut bytes = Vec::new();
        let mut digest = DefaultHasher::new();
        for (key, chunk) in store.load_range(&[doc.to_string()]).expect("load_range") {
            if key.len() == 3 && (key[1] == "incremental" || key[1] == "snapshot") {
                key.hash(&mut digest);
                chunk.hash(&mut digest);
                bytes.extend_from_slice(&chunk);
            }
        }
        let digest = digest.finish();
        if cache.get(&doc).is_some_and(|(d, _)| *d == digest) {
            continue;
        }
        let mut am = Automerge::new();
        am.load_incremental(&bytes)
            .unwrap_or_else(|e| panic!("the stored chunks of {doc} do not load: {e}"));
        let hashes = am.get_changes(&[]).iter().map(|c| c.hash()).collect();
        cache.insert(doc, (digest, hashes));
    }
    checked.lost = acked
        .iter()
        .filter(|a| {
            let (_, hashes) = &cache[&a.doc];
            a.heads.iter().any(|h| !hashes.contains(h))
        })
        .cloned()
        .collect();
    checked
}

/// The figures a run prints and asserts on.
#[derive(Debug, Default)]
struct Figures {
    cuts: u64,
    /// Acknowledged changes recorded.
    acknowledged: usize,
    /// Change checks made (each acknowledged change is checked at every later cut).
    checks: usize,
    /// Checks that found the change missing.
    lost: usize,
    /// Most blob files seen in the store at a check.
    blob_files: usize,
}

fn report(what: &str, seed: u64, figures: &Figures, fs: &VolatileStats, started: Instant) {
    eprintln!(
        "power cut ({what}): seed {seed} (replay: CAIRN_POWER_CUT_SEED={seed}); {} cuts, {} \
         acknowledged changes, {} checks, {} lost; at most {} blob files; the filesystem saw \
         {} file and {} directory syncs and forgot {} files, {} bytes and {} directory \
         entries; {:.1} s",
        figures.cuts,
        figures.acknowledged,
        figures.checks,
        figures.lost,
        figures.blob_files,
        fs.file_syncs,
        fs.dir_syncs,
        fs.forgotten.files_forgotten,
        fs.forgotten.bytes_forgotten,
        fs.forgotten.entries_forgotten,
        started.elapsed().as_secs_f64(),
    );
}

// ---------------------------------------------------------------------------------------
// The relay

/// The `cairn-relay` binary `cargo test --workspace` built beside this test binary, or
/// `CAIRN_RELAY_BIN`. A missing or stale binary fails the test: it would test old code.
fn relay_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CAIRN_RELAY_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/power_cut-<hash> -> target/<profile>/cairn-relay
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .join("cairn-relay");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: build the relay first (`cargo build -p cairn-relay`; `cargo test \
                 --workspace` builds it)",
                bin.display()
            )
        });
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Sources only: cargo relinks the binary whenever they change, but not when an
    // unrelated part of Cargo.lock does, so the lock file would make a fresh binary look stale.
    let sources = ["server/src", "core/sync/src"];
    if let Some(newer) = sources
        .iter()
        .filter_map(|s| newest_change(&root.join(s)))
        .filter(|(_, t)| *t > built)
        .max_by_key(|(_, t)| *t)
    {
        panic!(
            "{} is older than {}: rebuild it (`cargo build -p cairn-relay`) so the test runs \
             the relay as it is now",
            bin.display(),
            newer.0.display()
        );
    }
    bin
}

/// The most recently modified file under `path`, with its time.
fn newest_change(path: &Path) -> Option<(PathBuf, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return Some((path.to_owned(), meta.modified().ok()?));
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| newest_change(&e.ok()?.path()))
        .max_by_key(|(_, t)| *t)
}

/// A `cairn-relay serve` child; SIGKILLed if dropped.
struct RelayProcess {
    child: Child,
    log: PathBuf,
}

impl RelayProcess {
    async fn spawn(bin: &Path, port: u16, data: &Path, control: bool, log: PathBuf) -> Self {
        let stderr = std::fs::File::create(&log).expect("relay log file");
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--open")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(data);
        if control {
            // The relay's hidden `--unsafe-durability` switch, through its environment
            // variable.
            cmd.env("CAIRN_UNSAFE_DURABILITY", "sled-flush-only");
        } else {
            cmd.env_remove("CAIRN_UNSAFE_DURABILITY");
        }
        let child = cmd
            .env("CAIRN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut relay = RelayProcess { child, log };
        let deadline = Instant::now() + SOON;
        loop {
            if let Ok(Some(status)) = relay.child.try_wait() {
                panic!("the relay exited at start-up ({status}):\n{}", relay.log());
            }
            if healthz(port).await {
                return relay;
            }
            assert!(
                Instant::now() < deadline,
                "the relay did not answer /healthz within {SOON:?}:\n{}",
                relay.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap: once this returns no file of the relay's is open.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the relay");
        self.child.wait().expect("reap the relay");
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A raw `GET /healthz`; true on a 200 answer.
async fn healthz(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        s.read_to_end(&mut response).await?;
        std::io::Result::Ok(response)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), exchange).await,
        Ok(Ok(r)) if r.starts_with(b"HTTP/1.1 200")
    )
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// A client on an in-memory store, dialling `url` (and redialling quickly).
fn client(name: &str, url: &str) -> Client {
    let mut config = ClientConfig::new(name);
    config.min_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(500);
    let c = Client::start(Arc::new(MemoryStore::default()), config).expect("client starts");
    c.connect(url);
    c
}

/// Records `heads` of `doc` if the relay acknowledges them: while it runs, within
/// [`ACK_WAIT`]; once it is killed, only if the client had already seen the acknowledgement.
fn watch_ack(
    c: &Client,
    doc: DocumentId,
    heads: Vec<ChangeHash>,
    acked: &Arc<Mutex<Vec<Acked>>>,
    killed: &tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (c, acked, mut killed) = (c.clone(), acked.clone(), killed.clone());
    tokio::spawn(async move {
        // `wait_acknowledged` is satisfied by heads the relay sent that cover all of ours;
        // ours only grow, so they cover `heads` too.
        let seen = tokio::select! {
            r = c.wait_acknowledged(doc, ACK_WAIT) => r.is_ok(),
            _ = async { drop(killed.wait_for(|k| *k).await) } => {
                c.wait_acknowledged(doc, Duration::ZERO).await.is_ok()
            }
        };
        if seen {
            acked.lock().expect("lock").push(Acked {
                doc,
                heads,
                large: false,
            });
        }
    })
}

/// One power-cut test's settings.
struct Run {
    control: bool,
    seed: u64,
    started: Instant,
    /// Whose store: "relay" or "phone".
    who: &'static str,
    /// What a recorded change is: "acknowledged" or "durable".
    changes: &'static str,
}

/// What a power-cut test carries from cut to cut.
#[derive(Default)]
struct Kept {
    figures: Figures,
    cache: Loaded,
    /// Every change acknowledged so far, checked at every cut.
    acked: Vec<Acked>,
    /// Documents the next round writes to.
    docs: Vec<DocumentId>,
}

/// Cuts the power and checks the store before anything restarts: every change recorded so
/// far must be there. A real run fails on a loss (with `context` in the message); a control
/// counts the loss and forgets those documents, so each loss counts once.
fn cut_and_check(
    fs: &mut VolatileFs,
    data: &Path,
    run: &Run,
    round: u64,
    kept: &mut Kept,
    context: &dyn Fn() -> String,
) {
    let cut = fs
        .cut()
        .unwrap_or_else(|e| panic!("power cut {round}: {e}"));
    kept.figures.cuts += 1;
    let checked = check_store(data, durability(run.control), &kept.acked, &mut kept.cache);
    kept.figures.checks += checked.changes;
    kept.figures.lost += checked.lost.len();
    kept.figures.blob_files = kept.figures.blob_files.max(checked.blob_files);
    eprintln!(
        "  cut {round} at {:.1} s: {} {} changes checked, {} lost; the cut forgot {cut:?}",
        run.started.elapsed().as_secs_f64(),
        checked.changes,
        run.changes,
        checked.lost.len()
    );
    let (who, seed) = (run.who, run.seed);
    if !run.control {
        if let Some(why) = &checked.unopenable {
            panic!("the {who}'s store does not open after power cut {round} (seed {seed}): {why}");
        }
        assert!(
            checked.lost.is_empty(),
            "{} {} changes are missing from the {who}'s store after power cut {round} (seed \
             {seed}), e.g. {:?}\n{}",
            checked.lost.len(),
            run.changes,
            &checked.lost[..checked.lost.len().min(3)],
            context()
        );
    } else {
        // Count each loss once; a store sled cannot open starts again empty.
        let lost: BTreeSet<DocumentId> = checked.lost.iter().map(|a| a.doc).collect();
        kept.acked.retain(|a| !lost.contains(&a.doc));
        kept.docs.retain(|d| !lost.contains(d));
        if checked.unopenable.is_some() {
            std::fs::remove_dir_all(data).expect("clear the unopenable store");
        }
    }
}

async fn relay_power_cuts(control: bool) -> Figures {
    let what = if control {
        "relay, negative control: sled-flush-only"
    } else {
        "relay"
    };
    let seed = seed();
    let cuts = cuts(control);
    eprintln!("power cut ({what}): seed {seed}, {cuts} cuts (replay: CAIRN_POWER_CUT_SEED={seed})");
    let started = Instant::now();
    let bin = relay_binary();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fs = mount();
    let logs = tempfile::tempdir().expect("a directory for relay logs");
    let data = fs.path().join("relay");
    let mut kept = Kept::default();
    let run = Run {
        control,
        seed,
        started,
        who: "relay",
        changes: "acknowledged",
    };

    for round in 1..=cuts {
        let port = free_port();
        let log = logs.path().join(format!("relay-{round}.log"));
        let mut relay = RelayProcess::spawn(&bin, port, &data, control, log).await;
        let url = format!("ws://127.0.0.1:{port}/");
        let clients: Vec<Client> = (0..CLIENTS)
            .map(|i| client(&format!("member-{i}/phone"), &url))
            .collect();
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();

        // Every client opens what the relay still holds; the first adds documents if needed.
        let mut live = Vec::new();
        for doc in &kept.docs {
            let mut found = true;
            for c in &clients {
                found &= c.find(*doc, SOON).await.is_ok();
            }
            assert!(
                found || control,
                "the relay cannot serve document {doc} after power cut {} (seed {seed})",
                round - 1
            );
            if found {
                live.push(*doc);
            }
        }
        while live.len() < SHARED_DOCS {
            let n = live.len() as i64;
            let doc = clients[0]
                .create(move |tx| {
                    tx.put(ROOT, "shared", n).expect("put");
                    Ok::<(), std::convert::Infallible>(())
                })
                .await
                .expect("create a shared document")
                .0;
            clients[0]
                .wait_acknowledged(doc, SOON)
                .await
                .expect("the relay takes the new document");
            let heads = clients[0].heads(doc).await.expect("heads").expect("loaded");
            acked.lock().expect("lock").push(Acked {
                doc,
                heads,
                large: false,
            });
            for c in &clients[1..] {
                c.find(doc, SOON)
                    .await
                    .expect("find the new shared document");
            }
            live.push(doc);
        }
        kept.docs = live.clone();
        // One large change every round, in a document of its own (the shared ones stay small
        // and quick to sync), acknowledged before the others start: each cut checks values
        // over sled's blob threshold.
        let text = big_text(&mut rng);
        let big = clients[0]
            .create(move |tx| {
                let obj = tx.put_object(ROOT, "text", ObjType::Text).expect("put");
                tx.splice_text(&obj, 0, 0, &text).expect("splice");
                Ok::<(), std::convert::Infallible>(())
            })
            .await
            .expect("a document with a large change")
            .0;
        clients[0]
            .wait_acknowledged(big, SOON)
            .await
            .expect("the relay takes the large change");
        let heads = clients[0].heads(big).await.expect("heads").expect("loaded");
        acked.lock().expect("lock").push(Acked {
            doc: big,
            heads,
            large: true,
        });
        clients[1]
            .find(big, SOON)
            .await
            .expect("another client opens the large document");

        let stop = Arc::new(AtomicBool::new(false));
        let (killed_tx, killed) = tokio::sync::watch::channel(false);
        let mut writers = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let (c, live, stop, acked, killed) = (
                c.clone(),
                live.clone(),
                stop.clone(),
                acked.clone(),
                killed.clone(),
            );
            let mut wrng = ChaCha8Rng::seed_from_u64(rng.gen());
            writers.push(tokio::spawn(async move {
                let mut watchers = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let doc = live[wrng.gen_range(0..live.len())];
                    let key = format!("r{round}-m{i}-{n}");
                    // Once the relay is gone a change still succeeds locally; it is simply
                    // never acknowledged.
                    if let Ok(heads) = write_one(&c, doc, key, false, &mut wrng).await {
                        watchers.push(watch_ack(&c, doc, heads, &acked, &killed));
                    }
                    tokio::time::sleep(Duration::from_millis(wrng.gen_range(PAUSE_MS))).await;
                }
                watchers
            }));
        }

        tokio::time::sleep(Duration::from_millis(rng.gen_range(UP_MS))).await;
        relay.kill();
        stop.store(true, Ordering::SeqCst);
        let _ = killed_tx.send(true);
        for w in writers {
            for watcher in w.await.expect("writer") {
                watcher.await.expect("watcher");
            }
        }
        for c in &clients {
            c.shutdown().await;
        }
        let new = std::mem::take(&mut *acked.lock().expect("lock"));
        kept.figures.acknowledged += new.len();
        kept.acked.extend(new);

        cut_and_check(&mut fs, &data, &run, round, &mut kept, &String::new);
    }
    report(what, seed, &kept.figures, &fs.stats(), started);
    kept.figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_acknowledged_changes_survive_power_cuts() {
    let figures = relay_power_cuts(false).await;
    assert_eq!(figures.lost, 0);
    // Every round acknowledged a change over sled's blob threshold; the store keeps such
    // values in pieces inside sled's log, where one fdatasync covers them.
    assert_eq!(
        figures.blob_files, 0,
        "sled wrote blob files, which a power cut can separate from its log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_negative_control_sled_flush_only_loses_acknowledged_changes() {
    let figures = relay_power_cuts(true).await;
    assert!(
        figures.lost > 0,
        "the relay with sled's flush alone lost no acknowledged change in {} cuts: the \
         power-cut test cannot see a missing fsync",
        figures.cuts
    );
}

// ---------------------------------------------------------------------------------------
// The phone

/// Runs one phone child until the power cut and returns the changes it reported durable.
fn phone_round(
    data: &Path,
    control: bool,
    seed: u64,
    docs: &[DocumentId],
    up: Duration,
    log: &Path,
) -> Vec<Acked> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let docs: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    let mut child = Command::new(exe)
        .args([
            "phone_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PHONE_DIR_VAR, data)
        .env(PHONE_SEED_VAR, seed.to_string())
        .env(
            PHONE_DURABILITY_VAR,
            if control { "sled-flush-only" } else { "fsync" },
        )
        .env(PHONE_DOCS_VAR, docs.join(","))
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("phone log file"))
        .spawn()
        .expect("start the phone child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        // Only whole lines: one cut short by the kill was never reported.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(acked) = parse_durable_line(&line) {
                let _ = tx.send(acked);
            } else if line == READY_LINE {
                let _ = ready_tx.send(());
            }
        }
    });
    let child_log = || std::fs::read_to_string(log).unwrap_or_default();
    if ready.recv_timeout(SOON).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the phone child did not start its small changes within {SOON:?}:\n{}",
            child_log()
        );
    }
    std::thread::sleep(up);
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "the phone child exited ({status}) before the power cut:\n{}",
            child_log()
        );
    }
    child.kill().expect("SIGKILL the phone child");
    child.wait().expect("reap the phone child");
    reader.join().expect("stdout reader");
    rx.try_iter().collect()
}

/// `durable-change <doc> <hash,hash,...> [large]`.
fn parse_durable_line(line: &str) -> Option<Acked> {
    let mut words = line.strip_prefix(DURABLE_LINE)?.split_whitespace();
    let doc = words.next()?.parse().ok()?;
    let heads = words
        .next()?
        .split(',')
        .map(|h| h.parse().ok())
        .collect::<Option<Vec<ChangeHash>>>()?;
    let large = words.next() == Some("large");
    Some(Acked { doc, heads, large })
}

fn phone_power_cuts(control: bool) -> Figures {
    let what = if control {
        "phone, negative control: SledFlushOnly"
    } else {
        "phone"
    };
    let seed = seed();
    let cuts = cuts(control);
    eprintln!("power cut ({what}): seed {seed}, {cuts} cuts (replay: CAIRN_POWER_CUT_SEED={seed})");
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ PHONE_STREAM);
    let mut fs = mount();
    let logs = tempfile::tempdir().expect("a directory for phone logs");
    let data = fs.path().join("phone");
    let mut kept = Kept::default();
    let run = Run {
        control,
        seed,
        started,
        who: "phone",
        changes: "durable",
    };

    for round in 1..=cuts {
        let up = Duration::from_millis(rng.gen_range(UP_MS));
        let log = logs.path().join(format!("phone-{round}.log"));
        let new = phone_round(&data, control, rng.gen(), &kept.docs, up, &log);
        kept.figures.acknowledged += new.len();
        for a in &new {
            if !a.large && !kept.docs.contains(&a.doc) {
                kept.docs.push(a.doc);
            }
        }
        kept.acked.extend(new);

        cut_and_check(&mut fs, &data, &run, round, &mut kept, &|| {
            format!(
                "child log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    }
    report(what, seed, &kept.figures, &fs.stats(), started);
    kept.figures
}

#[test]
fn phone_durable_changes_survive_power_cuts() {
    let figures = phone_power_cuts(false);
    assert_eq!(figures.lost, 0);
    assert!(figures.acknowledged > 0, "the phone made no durable change");
}

#[test]
fn phone_negative_control_sled_flush_only_loses_durable_changes() {
    let figures = phone_power_cuts(true);
    assert!(
        figures.lost > 0,
        "the phone with sled's flush alone lost no durable change in {} cuts: the power-cut \
         test cannot see a missing fsync",
        figures.cuts
    );
}

/// The phone half of the phone tests, run in a child process: opens the store in
/// `CAIRN_POWER_CUT_PHONE_DIR`, reopens the documents it is given, creates one more, and
/// changes them until it is killed, printing each change `Client::change` returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the phone power-cut tests, one child per round"]
async fn phone_child() {
    let Some(dir) = std::env::var_os(PHONE_DIR_VAR) else {
        eprintln!("{PHONE_DIR_VAR} is not set: this runs only as the phone tests' child");
        return;
    };
    let seed = env_u64(PHONE_SEED_VAR).expect("the parent passes a seed");
    let durability = match std::env::var(PHONE_DURABILITY_VAR).as_deref() {
        Ok("sled-flush-only") => SledDurability::SledFlushOnly,
        _ => SledDurability::Fsync,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let config = SledConfig {
        durability,
        ..SledConfig::default()
    };
    let store = SledStore::open(Path::new(&dir), &config)
        .unwrap_or_else(|e| panic!("the phone's store does not open: {e}"));
    let c = Client::start(Arc::new(store), ClientConfig::new("phone"))
        .expect("the phone's client starts");
    let mut small = Vec::new();
    for doc in std::env::var(PHONE_DOCS_VAR)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let doc: DocumentId = doc.parse().expect("a document id from the parent");
        c.find(doc, SOON)
            .await
            .unwrap_or_else(|e| panic!("document {doc} does not open from the phone's store: {e}"));
        small.push(doc);
    }
    for large in [false, true] {
        let doc = c
            .create(|tx| {
                tx.put(ROOT, "phone", 1).expect("put");
                Ok::<(), std::convert::Infallible>(())
            })
            .await
            .expect("create a document on the phone")
            .0;
        let heads = c.heads(doc).await.expect("heads").expect("loaded");
        print_durable(doc, &heads, large);
        if large {
            // One large change every round, over sled's blob threshold, in a document of its
            // own (see `Acked::large`).
            let heads = write_one(&c, doc, "text".to_owned(), true, &mut rng)
                .await
                .unwrap_or_else(|e| panic!("Client::change failed on the phone: {e}"));
            print_durable(doc, &heads, true);
        } else {
            small.push(doc);
        }
    }
    println!("{READY_LINE}");
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < PHONE_CHILD_LIFETIME {
        n += 1;
        let doc = small[rng.gen_range(0..small.len())];
        let heads = write_one(&c, doc, format!("phone-{seed}-{n}"), false, &mut rng)
            .await
            .unwrap_or_else(|e| panic!("Client::change failed on the phone: {e}"));
        print_durable(doc, &heads, false);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(PAUSE_MS))).await;
    }
}

fn print_durable(doc: DocumentId, heads: &[ChangeHash], large: bool) {
    let heads: Vec<String> = heads.iter().map(|h| h.to_string()).collect();
    let tag = if large { " large" } else { "" };
    println!("{DURABLE_LINE} {doc} {}{tag}", heads.join(","));
}
