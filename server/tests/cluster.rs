//! Several relays on one PostgreSQL database (a throwaway cluster started by the test):
//! members on different relays converge, with hints and with the sweep alone; a relay
//! killed with SIGKILL loses nothing it acknowledged; PostgreSQL restarting, crashing or
//! frozen stops no relay and loses no acknowledged change; lost notifications are made up
//! by the reconnect and the sweep; two relays compacting one document keep every change;
//! a removal on one relay closes the member's socket on another.
//!
//! Waits are generous and their times are printed; speed belongs in the benchmark.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ReadDoc, ROOT};
use cairn_relay::pg_store::{PgOptions, PgStore, EPHEMERAL_PREFIX};
use cairn_sync::client::{Client, ClientConfig};
use cairn_sync::ids::DocumentId;
use cairn_sync::store::{MemoryStore, Storage};
use cairn_sync::wire::Message;
use common::members::Group;
use common::pg::PgCluster;
use common::{client, http_get, metric_value, Relay, Seen};

/// Bound for convergence across relays (the sweep runs every 200 ms here).
const LONG: Duration = Duration::from_secs(60);

/// Two tests of one scenario: with hints (`LISTEN`) and by the sweep alone; every
/// cross-relay scenario must pass both ways.
macro_rules! with_and_without_hints {
    ($scenario:ident: $with:ident, $sweep:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $with() {
            $scenario(true).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sweep() {
            $scenario(false).await;
        }
    };
}

fn relay_flags(url: &str, listen: bool) -> Vec<String> {
    [
        "--store",
        url,
        "--cluster-sweep-ms",
        "200",
        "--cluster-listen",
        if listen { "true" } else { "false" },
        "--pg-timeout-secs",
        "2",
        "--engine-shards",
        "2",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// `n` open relays in this process on the database `url`.
async fn relays(url: &str, n: usize, listen: bool) -> (Vec<Relay>, Vec<tempfile::TempDir>) {
    let flags = relay_flags(url, listen);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    relays_with(n, &flags).await
}

/// `n` open relays in this process with `flags` (which name the store).
async fn relays_with(n: usize, flags: &[&str]) -> (Vec<Relay>, Vec<tempfile::TempDir>) {
    let mut relays = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().expect("tempdir");
        relays.push(Relay::start(dir.path(), flags).await);
        dirs.push(dir);
    }
    for r in &relays {
        wait_ready(r.addr, true, LONG).await;
    }
    (relays, dirs)
}

/// Polls `/readyz` until it answers 200 (`ready`) or anything else (`!ready`); returns
/// the time it took.
async fn wait_ready(addr: SocketAddr, ready: bool, within: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        let status = http_get(addr, "/readyz").await.map(|(s, _)| s);
        if (status == Some(200)) == ready {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "/readyz on {addr} did not turn {} within {within:?}",
        if ready { "200" } else { "503" }
    );
}

/// The document as PostgreSQL holds it, read by a store of its own.
async fn stored(url: &str, doc: DocumentId) -> Automerge {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let pg = PgStore::connect(
            &url,
            "check",
            PgOptions {
                pool_size: 1,
                op_timeout: Duration::from_secs(10),
            },
        )
        .expect("connect");
        let mut am = Automerge::new();
        for (_, bytes) in pg.load_range(&[doc.to_string()]).expect("load") {
            am.load_incremental(&bytes).expect("a stored chunk loads");
        }
        am
    })
    .await
    .expect("read")
}

fn keys(d: &Automerge) -> BTreeSet<String> {
    d.keys(ROOT).collect()
}

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

async fn put(c: &Client, doc: DocumentId, key: String) {
    c.change(doc, move |tx| tx.put(ROOT, key, 1).map(|_| ()))
        .await
        .expect("a change on the device");
}

async fn wait_keys(c: &Client, doc: DocumentId, want: usize, who: &str) {
    c.wait_for(doc, LONG, move |d| d.keys(ROOT).count() >= want)
        .await
        .unwrap_or_else(|e| panic!("{who} never had {want} keys: {e}"));
}

/// 10 documents, 3 members each on another relay, 3,000 changes: everyone and the
/// database end with identical heads.
async fn steady(listen: bool) {
    let pg = PgCluster::start();
    let url = pg.create_database(if listen { "steady" } else { "steady_sweep" });
    let (relays, _dirs) = relays(&url, 3, listen).await;
    let clients: Vec<Client> = relays
        .iter()
        .enumerate()
        .map(|(i, r)| client(&format!("member{i}/phone"), &r.url()))
        .collect();
    let mut docs = Vec::new();
    for n in 0..10i64 {
        let (doc, ()) = clients[0]
            .create(move |tx| tx.put(ROOT, "n", n).map(|_| ()))
            .await
            .expect("create");
        docs.push(doc);
    }
    for doc in &docs {
        clients[0]
            .wait_acknowledged(*doc, LONG)
            .await
            .expect("acknowledged");
        for c in &clients[1..] {
            c.find(*doc, LONG)
                .await
                .expect("found through another relay");
        }
    }
    let started = Instant::now();
    let per = 100;
    let writers = clients.iter().enumerate().map(|(p, c)| {
        let docs = docs.clone();
        async move {
            for i in 0..per {
                for doc in &docs {
                    put(c, *doc, format!("m{p}-{i}")).await;
                }
            }
        }
    });
    futures_util::future::join_all(writers).await;
    let want = 1 + per * clients.len();
    for (i, c) in clients.iter().enumerate() {
        for doc in &docs {
            wait_keys(c, *doc, want, &format!("member{i}")).await;
        }
    }
    eprintln!(
        "steady (listen {listen}): {} changes through 3 relays converged in {:?}",
        per * clients.len() * docs.len(),
        started.elapsed()
    );
    for doc in &docs {
        let heads = sorted(
            clients[0]
                .heads(*doc)
                .await
                .expect("heads")
                .expect("loaded"),
        );
        for c in &clients[1..] {
            assert_eq!(sorted(c.heads(*doc).await.unwrap().unwrap()), heads);
        }
        let stored = stored(&url, *doc).await;
        assert_eq!(
            sorted(stored.get_heads()),
            heads,
            "the database holds every change"
        );
    }
    for c in &clients {
        c.shutdown().await;
    }
    for r in relays {
        r.stop().await.expect("clean stop");
    }
}

with_and_without_hints!(
    steady: members_on_three_relays_converge,
    members_on_three_relays_converge_by_the_sweep_alone
);

/// A relay as its own process (so that it can be killed with SIGKILL).
struct RelayProcess {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    async fn start(url: &str, listen: bool) -> RelayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        // A free port: bound, read, released (the relay binds it a moment later).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let address = addr.to_string();
        let mut args = vec![
            "serve",
            "--open",
            "--listen",
            &address,
            "--data",
            dir.path().to_str().expect("utf-8"),
            "--admin-listen",
            "off",
        ];
        let flags = relay_flags(url, listen);
        args.extend(flags.iter().map(String::as_str));
        let child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the relay starts");
        wait_ready(addr, true, LONG).await;
        RelayProcess {
            child,
            addr,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

with_and_without_hints!(
    sigkill: a_relay_killed_with_sigkill_loses_nothing_it_acknowledged,
    a_relay_killed_with_sigkill_loses_nothing_it_acknowledged_by_the_sweep_alone
);

async fn sigkill(listen: bool) {
    let pg = PgCluster::start();
    let url = pg.create_database(if listen { "kill" } else { "kill_sweep" });
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(RelayProcess::start(&url, listen).await);
    }
    let a = client("ana/phone", &procs[0].url());
    let c = client("cleo/phone", &procs[2].url());
    let (doc, ()) = c
        .create(|tx| tx.put(ROOT, "title", "minutes").map(|_| ()))
        .await
        .expect("create");
    for i in 0..50 {
        put(&c, doc, format!("acked-{i}")).await;
    }
    c.wait_acknowledged(doc, LONG).await.expect("acknowledged");
    a.find(doc, LONG)
        .await
        .expect("ana finds it through her relay");
    for i in 0..20 {
        put(&c, doc, format!("late-{i}")).await;
    }
    // Cleo's relay dies mid-stream.
    procs[2].child.kill().expect("SIGKILL");
    procs[2].child.wait().expect("reaped");
    let held = keys(&stored(&url, doc).await);
    let acked: Vec<String> = (0..50).map(|i| format!("acked-{i}")).collect();
    let kept = acked.iter().filter(|k| held.contains(*k)).count();
    eprintln!(
        "SIGKILL (listen {listen}): {kept} of {} acknowledged changes in the database, {} of 20 unacknowledged ones",
        acked.len(),
        held.iter().filter(|k| k.starts_with("late-")).count()
    );
    assert_eq!(kept, acked.len(), "an acknowledged change was lost");
    // Her phone reconnects to another relay and resends what was not acknowledged.
    // (`connect` to a URL already connected returns that connection's handle.)
    c.connect(&procs[2].url()).disconnect();
    c.connect(&procs[1].url());
    let started = Instant::now();
    wait_keys(&a, doc, 71, "ana").await;
    wait_keys(&c, doc, 71, "cleo").await;
    eprintln!(
        "SIGKILL (listen {listen}): converged {:?} after the reconnect",
        started.elapsed()
    );
    c.wait_acknowledged(doc, LONG)
        .await
        .expect("acknowledged by the new relay");
    assert_eq!(
        sorted(a.heads(doc).await.unwrap().unwrap()),
        sorted(c.heads(doc).await.unwrap().unwrap())
    );
    assert_eq!(keys(&stored(&url, doc).await).len(), 71);
    a.shutdown().await;
    c.shutdown().await;
}

/// Ana on the relay at `ana`, Ben on the relay at `ben`, and a document Ana created that
/// Ben found through his relay.
async fn shared_document(ana: &str, ben: &str) -> (Client, Client, DocumentId) {
    let a = client("ana/phone", ana);
    let b = client("ben/phone", ben);
    let (doc, ()) = a
        .create(|tx| tx.put(ROOT, "title", "agenda").map(|_| ()))
        .await
        .expect("create");
    a.wait_acknowledged(doc, LONG).await.expect("acknowledged");
    b.find(doc, LONG)
        .await
        .expect("found through the other relay");
    (a, b, doc)
}

/// Ana writes through relay 0 and waits for each batch to be acknowledged; Ben reads
/// through relay 1.
struct Pair {
    relays: Vec<Relay>,
    _dirs: Vec<tempfile::TempDir>,
    a: Client,
    b: Client,
    doc: DocumentId,
}

impl Pair {
    async fn start(url: &str, listen: bool) -> Pair {
        let flags = relay_flags(url, listen);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Pair::start_with(&flags).await
    }

    async fn start_with(flags: &[&str]) -> Pair {
        let (relays, dirs) = relays_with(2, flags).await;
        let (a, b, doc) = shared_document(&relays[0].url(), &relays[1].url()).await;
        Pair {
            relays,
            _dirs: dirs,
            a,
            b,
            doc,
        }
    }

    fn assert_running(&self, when: &str) {
        for (i, r) in self.relays.iter().enumerate() {
            assert!(r.is_running(), "relay {i} exited {when}");
        }
    }

    async fn converged(&self, want: usize) {
        wait_keys(&self.b, self.doc, want, "ben").await;
        self.a
            .wait_acknowledged(self.doc, LONG)
            .await
            .expect("acknowledged");
        assert_eq!(
            sorted(self.a.heads(self.doc).await.unwrap().unwrap()),
            sorted(self.b.heads(self.doc).await.unwrap().unwrap())
        );
    }
}

with_and_without_hints!(
    postgres_stops: postgres_restarting_or_crashing_stops_no_relay_and_loses_no_acknowledged_change,
    postgres_restarting_or_crashing_stops_no_relay_and_loses_no_acknowledged_change_by_the_sweep_alone
);

async fn postgres_stops(listen: bool) {
    let pg = PgCluster::start();
    let url = pg.create_database(if listen { "restart" } else { "restart_sweep" });
    let p = Pair::start(&url, listen).await;
    let mut written = 1;
    for (round, crash) in [("fast", false), ("immediate", true)] {
        let acked: Vec<String> = (0..20).map(|i| format!("{round}-acked-{i}")).collect();
        for k in &acked {
            put(&p.a, p.doc, k.clone()).await;
        }
        p.a.wait_acknowledged(p.doc, LONG)
            .await
            .expect("acknowledged");
        if crash {
            pg.stop_immediate();
        } else {
            pg.stop_fast();
        }
        // Edits go on while the database is away: none can be acknowledged.
        for i in 0..10 {
            put(&p.a, p.doc, format!("{round}-while-down-{i}")).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        p.assert_running(&format!("while PostgreSQL was stopped ({round})"));
        pg.start_again();
        let held = keys(&stored(&url, p.doc).await);
        let kept = acked.iter().filter(|k| held.contains(*k)).count();
        eprintln!(
            "PostgreSQL {round} stop (listen {listen}): {kept} of {} acknowledged changes loadable after it",
            acked.len()
        );
        assert_eq!(
            kept,
            acked.len(),
            "an acknowledged change was lost ({round})"
        );
        written += 30;
        let started = Instant::now();
        p.converged(written).await;
        eprintln!(
            "PostgreSQL {round} stop (listen {listen}): converged {:?} after the restart",
            started.elapsed()
        );
        p.assert_running(&format!("after PostgreSQL came back ({round})"));
    }
    assert_eq!(keys(&stored(&url, p.doc).await).len(), written);
}

/// A process's resident memory in bytes (0 if it cannot be read).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

with_and_without_hints!(
    frozen: a_frozen_database_is_detected_and_everything_converges_after_it,
    a_frozen_database_is_detected_and_everything_converges_after_it_by_the_sweep_alone
);

async fn frozen(listen: bool) {
    let freeze: u64 = std::env::var("CAIRN_PG_FREEZE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let pg = PgCluster::start();
    let url = pg.create_database(if listen { "freeze" } else { "freeze_sweep" });
    // Relays as processes of their own: their memory is theirs alone.
    let mut procs = [
        RelayProcess::start(&url, listen).await,
        RelayProcess::start(&url, listen).await,
    ];
    let (a, b, doc) = shared_document(&procs[0].url(), &procs[1].url()).await;
    let rss = |p: &RelayProcess| rss_bytes(p.child.id());
    let before: Vec<u64> = procs.iter().map(rss).collect();
    pg.freeze();
    let frozen = Instant::now();
    let detected = wait_ready(procs[0].addr, false, Duration::from_secs(10)).await;
    eprintln!("frozen database (listen {listen}): /readyz 503 after {detected:?}");
    // Ana keeps writing for the whole freeze.
    let mut written = 1;
    let mut peak = before.clone();
    while frozen.elapsed() < Duration::from_secs(freeze) {
        put(&a, doc, format!("frozen-{written}")).await;
        written += 1;
        for (p, m) in procs.iter().zip(peak.iter_mut()) {
            *m = (*m).max(rss(p));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "frozen database (listen {listen}): {freeze} s, {} edits, relay memory {} MiB before, {} MiB at most",
        written - 1,
        before.iter().max().copied().unwrap_or(0) >> 20,
        peak.iter().max().copied().unwrap_or(0) >> 20
    );
    for (i, (was, most)) in before.iter().zip(&peak).enumerate() {
        assert!(
            most.saturating_sub(*was) < 64 << 20,
            "relay {i} grew from {was} to {most} bytes while the database was frozen"
        );
    }
    for (i, p) in procs.iter_mut().enumerate() {
        assert!(
            p.child.try_wait().expect("status").is_none(),
            "relay {i} exited while the database was frozen"
        );
    }
    pg.thaw();
    let back = wait_ready(procs[0].addr, true, LONG).await;
    let started = Instant::now();
    wait_keys(&b, doc, written, "ben").await;
    a.wait_acknowledged(doc, LONG).await.expect("acknowledged");
    assert_eq!(
        sorted(a.heads(doc).await.unwrap().unwrap()),
        sorted(b.heads(doc).await.unwrap().unwrap())
    );
    eprintln!(
        "frozen database (listen {listen}): ready {back:?} after the thaw, converged {:?} after that",
        started.elapsed()
    );
    assert_eq!(keys(&stored(&url, doc).await).len(), written);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_whose_hints_were_lost_still_arrive() {
    let pg = PgCluster::start();
    let url = pg.create_database("lost");
    let p = Pair::start(&url, true).await;
    for round in 0..3 {
        pg.terminate_listeners("lost");
        for i in 0..20 {
            put(&p.a, p.doc, format!("r{round}-{i}")).await;
        }
        p.converged(1 + 20 * (round + 1)).await;
    }
    let (_, text) = http_get(p.relays[1].addr, "/metrics")
        .await
        .expect("metrics");
    let reconnects = metric_value(&text, "cairn_cluster_refreshes_total{cause=\"reconnect\"}");
    eprintln!(
        "lost hints: relay 1 re-read {reconnects:?} documents after its listener reconnected"
    );
}

with_and_without_hints!(
    compacting: two_relays_compacting_one_document_keep_every_change,
    two_relays_compacting_one_document_keep_every_change_by_the_sweep_alone
);

async fn compacting(listen: bool) {
    let pg = PgCluster::start();
    let url = pg.create_database(if listen { "compact" } else { "compact_sweep" });
    // Compaction after 8 chunks: many rounds whatever the batching of this machine's load.
    let flags = relay_flags(&url, listen);
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    flags.extend_from_slice(&["--compact-after-chunks", "8"]);
    let p = Pair::start_with(&flags).await;
    // Writers that send each change at once: every change its own message, so the
    // relays write (and compact) many chunks.
    let eager = |name: &str, relay: &Relay| {
        let mut config = ClientConfig::new(name);
        config.sync_debounce = Duration::ZERO;
        config.min_backoff = Duration::from_millis(50);
        let c = Client::start(Arc::new(MemoryStore::default()), config).expect("client starts");
        c.connect(&relay.url());
        c
    };
    let (a, b) = (
        eager("ana/laptop", &p.relays[0]),
        eager("ben/laptop", &p.relays[1]),
    );
    let doc = p.doc;
    a.find(doc, LONG).await.expect("found");
    b.find(doc, LONG).await.expect("found");
    let per = 300;
    let (a, b) = (&a, &b);
    futures_util::future::join(
        async {
            for i in 0..per {
                put(a, doc, format!("ana-{i}")).await;
            }
        },
        async {
            for i in 0..per {
                put(b, doc, format!("ben-{i}")).await;
            }
        },
    )
    .await;
    let want = 1 + 2 * per;
    wait_keys(a, doc, want, "ana").await;
    wait_keys(b, doc, want, "ben").await;
    a.wait_acknowledged(doc, LONG).await.expect("acknowledged");
    b.wait_acknowledged(doc, LONG).await.expect("acknowledged");
    assert_eq!(
        sorted(a.heads(doc).await.unwrap().unwrap()),
        sorted(b.heads(doc).await.unwrap().unwrap())
    );
    let mut compactions = Vec::new();
    for r in &p.relays {
        let (_, text) = http_get(r.addr, "/metrics").await.expect("metrics");
        compactions.push(metric_value(&text, "cairn_compactions_total").unwrap_or(0.0));
    }
    eprintln!("compaction (listen {listen}): the two relays compacted {compactions:?} times");
    assert!(
        compactions.iter().all(|c| *c >= 3.0),
        "each relay should have compacted the document repeatedly: {compactions:?}"
    );
    assert_eq!(
        keys(&stored(&url, doc).await).len(),
        want,
        "a change was lost"
    );
}

/// `who`'s socket on `relay`, joined as soon as that relay knows `who` (a member made
/// through another relay, learnt from the shared store).
async fn joined_once_known(relay: &Relay, who: &common::members::Device) -> common::Raw {
    let started = Instant::now();
    loop {
        if let common::members::Upgrade::Open(raw) =
            common::members::upgrade(&relay.url(), Some(&who.token)).await
        {
            let mut raw = *raw;
            raw.peer = who.peer().into();
            raw.join().await;
            return raw;
        }
        assert!(
            started.elapsed() < LONG,
            "the relay never accepted the member's credential"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A removal made through relay 0 closes the member's socket on relay 1: by the hint, and
/// with the listener off by the sweep.
async fn removal_crosses_relays(listen: bool) {
    let pg = PgCluster::start();
    let url = pg.create_database(if listen { "removal" } else { "removal_sweep" });
    let flags = relay_flags(&url, listen);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // relay_flags carries --store; Group::start_with_store adds it again otherwise.
    let without_store: Vec<&str> = flags[2..].to_vec();
    let g = Group::start_with_store(&without_store, &url).await;
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Relay::start_members(other_dir.path(), &flags).await;
    let mia = g.join("member", "mia").await;
    let doc = common::doc_id(7);
    g.register(&g.organiser, doc, "meeting").await.expect(201);
    // Mia's socket is on the other relay, which learns of her and the document from the
    // shared store.
    let mut ws = joined_once_known(&other, &mia).await;
    g.call(
        &g.organiser,
        "DELETE",
        &format!("/v1/groups/{}/members/{}", g.group, mia.member),
        None,
    )
    .await
    .expect(204);
    let removed = Instant::now();
    loop {
        match ws.next(LONG).await {
            Seen::Frame(Message::Error { .. }) | Seen::Frame(Message::DocUnavailable { .. }) => {}
            Seen::Closed => break,
            other => panic!("expected the close, got {other:?}"),
        }
    }
    eprintln!(
        "removal (listen {listen}): the other relay closed the socket {:?} after the removal",
        removed.elapsed()
    );
    other.stop().await.expect("clean stop");
}

with_and_without_hints!(
    removal_crosses_relays: a_removal_on_one_relay_closes_the_members_socket_on_another,
    a_removal_reaches_another_relay_by_the_sweep_when_hints_are_off
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_an_embedded_relay_keeps_every_documents_heads() {
    let pg = PgCluster::start();
    let url = pg.create_database("migrate");
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), &[]).await;
    let a = client("ana/phone", &relay.url());
    let mut docs = Vec::new();
    for n in 0..3i64 {
        let (doc, ()) = a
            .create(move |tx| tx.put(ROOT, "n", n).map(|_| ()))
            .await
            .expect("create");
        for i in 0..30 {
            put(&a, doc, format!("k{i}")).await;
        }
        a.wait_acknowledged(doc, LONG).await.expect("acknowledged");
        docs.push((doc, sorted(a.heads(doc).await.unwrap().unwrap())));
    }
    a.shutdown().await;
    relay.stop().await.expect("clean stop");
    common::members::wait_unlocked(dir.path()).await;
    let migrate = |to: String| {
        let from = dir.path().to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
                    .args(["migrate", "--from"])
                    .arg(&from)
                    .args(["--to", &to])
                    .output()
                    .expect("the migration runs")
            })
            .await
            .expect("ran")
        }
    };
    let out = migrate(url.clone()).await;
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 documents"), "{text}");
    for (doc, heads) in &docs {
        assert_eq!(&sorted(stored(&url, *doc).await.get_heads()), heads);
    }
    // A second run would mix two stores: refused, nothing written.
    let again = migrate(url.clone()).await;
    assert!(!again.status.success());
    assert!(common::output_text(&again).contains("empty database"));
    // A relay on PostgreSQL serves the documents with the same heads.
    let (relays, _dirs) = relays(&url, 1, true).await;
    let b = client("ben/phone", &relays[0].url());
    for (doc, heads) in &docs {
        b.find(*doc, LONG).await.expect("found after the migration");
        assert_eq!(&sorted(b.heads(*doc).await.unwrap().unwrap()), heads);
    }
    b.shutdown().await;
}

/// Waits until `what` holds, polling; panics after [`LONG`].
async fn eventually(what: &str, mut holds: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !holds() {
        assert!(started.elapsed() < LONG, "{what}: not within {LONG:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Presence crosses relays on PostgreSQL's notifications, and is never stored. Only with
/// the listener: presence is lossy by design, and a sweep has nothing stored to find.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_relays_and_is_never_stored() {
    let pg = PgCluster::start();
    let url = pg.create_database("presence");
    let (relays, _dirs) = relays(&url, 2, true).await;
    let (a, b, doc) = shared_document(&relays[0].url(), &relays[1].url()).await;
    let canary = "cursor-canary-7f3a";
    a.set_presence(doc, serde_json::json!({"cursor": 3, "note": canary}))
        .await
        .expect("presence set");
    b.set_presence(doc, serde_json::json!({"cursor": 0}))
        .await
        .expect("presence set");
    let took = eventually("Ben, on relay 1, sees Ana's presence from relay 0", || {
        b.presence(doc)
            .iter()
            .any(|p| p.peer.as_str() == "ana/phone" && p.state["note"] == canary)
    })
    .await;
    eventually("Ana sees Ben's", || {
        a.presence(doc)
            .iter()
            .any(|p| p.peer.as_str() == "ben/phone")
    })
    .await;
    a.update_presence(doc, "cursor", serde_json::json!(12))
        .await
        .expect("update");
    eventually("Ben sees Ana's cursor move", || {
        b.presence(doc)
            .iter()
            .any(|p| p.peer.as_str() == "ana/phone" && p.state["cursor"] == 12)
    })
    .await;
    a.leave_presence(doc).await.expect("goodbye");
    eventually("Ben forgets Ana", || {
        !b.presence(doc)
            .iter()
            .any(|p| p.peer.as_str() == "ana/phone")
    })
    .await;
    eprintln!("presence: from relay 0 to a peer on relay 1 in {took:?}");
    // Nothing of it is in the database. And a notification that only looks like one
    // (any user of the database may NOTIFY) is counted and dropped.
    let check = url.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let pg = PgStore::connect(&check, "check", PgOptions::default()).expect("connect");
        pg.notify(vec![format!("{EPHEMERAL_PREFIX}not base64!\nrelay-x")])
            .expect("notify");
        pg.load_range(&[]).expect("read every row")
    })
    .await
    .expect("read");
    let started = Instant::now();
    loop {
        let (_, text) = http_get(relays[1].addr, "/metrics").await.expect("metrics");
        let name = "cairn_cluster_ephemeral_total{result=\"malformed\"}";
        if metric_value(&text, name) == Some(1.0) {
            break;
        }
        assert!(started.elapsed() < LONG, "the junk was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_ready(relays[1].addr, true, LONG).await;
    assert!(!rows.is_empty());
    assert!(
        !rows
            .iter()
            .any(|(_, v)| v.windows(canary.len()).any(|w| w == canary.as_bytes())),
        "presence was stored"
    );
    for (relay, result) in [(0, "sent"), (1, "received")] {
        let (_, text) = http_get(relays[relay].addr, "/metrics")
            .await
            .expect("metrics");
        let n = metric_value(
            &text,
            &format!("cairn_cluster_ephemeral_total{{result=\"{result}\"}}"),
        );
        assert!(n.unwrap_or(0.0) >= 3.0, "relay {relay} {result}: {n:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

with_and_without_hints!(
    group_bytes_cross_relays: a_groups_bytes_quota_counts_what_every_relay_stored,
    a_groups_bytes_quota_counts_what_every_relay_stored_by_the_recount_alone
);

/// `chars` random letters and digits (what compresses little).
fn noise(chars: usize, seed: u64) -> String {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..chars)
        .map(|_| {
            let n = rng.gen_range(0..62u8);
            char::from(match n {
                0..=9 => b'0' + n,
                10..=35 => b'a' + n - 10,
                _ => b'A' + n - 36,
            })
        })
        .collect()
}

/// A group's bytes quota (1 MiB here) counts what every relay stored: after a document
/// filled most of it through relay 0, relay 1 refuses a write that would pass it. With
/// the listener the hint's document is measured at once; without, the periodic recount
/// measures every document.
async fn group_bytes_cross_relays(listen: bool) {
    use common::members::call;
    use common::Raw;
    use common::SyncOutcome;
    let pg = PgCluster::start();
    let url = pg.create_database(if listen { "quota" } else { "quota_sweep" });
    let mut flags = relay_flags(&url, listen);
    flags.extend(["--group-max-mb".to_owned(), "1".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let g = Group::start_with_store(&flags[2..], &url).await;
    let other_dir = tempfile::tempdir().expect("tempdir");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let admin_listen = admin.to_string();
    let mut other_flags = flags.clone();
    other_flags.extend(["--admin-listen", &admin_listen]);
    let other = Relay::start_members(other_dir.path(), &other_flags).await;
    // The relay writes its operator token when its admin listener starts.
    let token_file = other_dir.path().join("admin-token");
    let started = Instant::now();
    let token = loop {
        match std::fs::read_to_string(&token_file) {
            Ok(t) if t.ends_with('\n') => break t,
            _ => {
                assert!(started.elapsed() < LONG, "no operator token");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let token = token.trim();
    let mia = g.join("member", "mia").await;
    let (big, late) = (common::doc_id(1), common::doc_id(2));
    g.register(&g.organiser, big, "meeting").await.expect(201);
    g.register(&g.organiser, late, "meeting").await.expect(201);
    let mut on_other = joined_once_known(&other, &mia).await;
    let write = |text: String| {
        let mut am = Automerge::new();
        let mut tx = am.transaction();
        tx.put(ROOT, "minutes", text).expect("put");
        tx.commit();
        am
    };
    // A small write through relay 1 is taken: the group has room.
    let mut small = write(noise(1_000, 1));
    assert!(matches!(
        on_other
            .sync_doc(late, &mut small, &mut automerge::sync::State::new())
            .await,
        SyncOutcome::Acknowledged(_)
    ));
    // Most of the quota through relay 0.
    let mut ws = Raw::joined_as(&g.url(), &g.organiser).await;
    let mut filled = write(noise(900_000, 2));
    assert!(matches!(
        ws.sync_doc(big, &mut filled, &mut automerge::sync::State::new())
            .await,
        SyncOutcome::Acknowledged(_)
    ));
    let stored_big: u64 = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let pg = PgStore::connect(&url, "check", PgOptions::default()).expect("connect");
            pg.sizes_of(&[big.to_string()]).expect("size")[0].1
        })
        .await
        .expect("read")
    };
    assert!(stored_big > 600_000, "{stored_big}");
    // Relay 1 counts it (what its operator sees).
    let path = format!("/admin/v1/groups/{}/quota", g.group);
    let counted = Instant::now();
    loop {
        let quota = call(admin, "GET", &path, Some(token), None)
            .await
            .expect(200);
        if quota["bytes_used"].as_u64().unwrap_or(0) >= stored_big {
            break;
        }
        assert!(
            counted.elapsed() < LONG,
            "relay 1 never counted the other relay's bytes: {quota}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "group quota (listen {listen}): relay 1 counted {stored_big} bytes stored through relay 0 after {:?}",
        counted.elapsed()
    );
    // A write that would take the group past its quota is refused on relay 1.
    let mut too_much = write(noise(900_000, 3));
    assert!(matches!(
        on_other
            .sync_doc(late, &mut too_much, &mut automerge::sync::State::new())
            .await,
        SyncOutcome::Unavailable
    ));
    other.stop().await.expect("clean stop");
}
