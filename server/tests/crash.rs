//! The process-crash test: no acknowledged change is lost when the relay is SIGKILLed.
//!
//! The real `cairn-relay` binary runs on a data directory while several clients write to
//! shared and private documents. After every change a background task waits (briefly) for
//! the relay to show it holds the change, and records the change only if it did. The relay
//! is killed at seeded random moments and restarted on the same directory; the clients
//! reconnect on their own. After a final kill the test opens the store itself and checks that
//! every acknowledged head is there.
//!
//! `CAIRN_CRASH_SEED=<n>` replays a schedule (kill times, document choices);
//! `CAIRN_CRASH_ITERATIONS=<n>` runs longer (default 8 kill/restart rounds).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ChangeHash, ReadDoc, ROOT};
use cairn_core::client::Client;
use cairn_core::ids::DocumentId;
use common::{client, load_stored, SOON};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CLIENTS: usize = 3;
const SHARED_DOCS: usize = 2;
/// How long a change's background task waits for the relay to acknowledge it.
const ACK_WAIT: Duration = Duration::from_millis(1500);

/// A `cairn-relay serve` child process; killed (SIGKILL) when dropped.
struct RelayProcess {
    child: Child,
    log: PathBuf,
}

impl RelayProcess {
    async fn spawn(port: u16, data: &Path, log: PathBuf) -> RelayProcess {
        let stderr = std::fs::File::create(&log).expect("relay log file");
        let child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
            .arg("serve")
            .arg("--open")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(data)
            .env("CAIRN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the relay binary");
        let mut relay = RelayProcess { child, log };
        relay.wait_healthy(port).await;
        relay
    }

    /// Polls `/healthz` with a raw HTTP request until it answers 200 (bounded).
    async fn wait_healthy(&mut self, port: u16) {
        let deadline = Instant::now() + SOON;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the relay exited at start-up ({status}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if healthz(port).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "the relay did not become healthy:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        self.child.kill().expect("kill the relay");
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

/// A raw `GET /healthz` over TCP; true on a 200 answer.
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
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
    )
}

/// (epoch the acknowledgement arrived in, document, heads the change returned)
type Acked = Arc<Mutex<Vec<(usize, DocumentId, Vec<ChangeHash>)>>>;

/// Waits in the background for the relay to acknowledge `heads` of `doc`; records it if so.
fn watch_ack(
    c: &Client,
    doc: DocumentId,
    heads: Vec<ChangeHash>,
    acked: &Acked,
    epoch: &Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let (c, acked, epoch) = (c.clone(), acked.clone(), epoch.clone());
    tokio::spawn(async move {
        // `wait_acknowledged` is satisfied only by heads the relay sent; our heads only
        // grow, so a relay that holds our current heads holds `heads` too.
        if c.wait_acknowledged(doc, ACK_WAIT).await.is_ok() {
            let e = epoch.load(Ordering::SeqCst);
            acked.lock().expect("lock").push((e, doc, heads));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_changes_survive_sigkill() {
    let seed = env_u64("CAIRN_CRASH_SEED").unwrap_or_else(|| {
        u64::from_le_bytes(
            cairn_core::store::random_uuid().as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        )
    });
    let iterations = env_u64("CAIRN_CRASH_ITERATIONS").unwrap_or(8) as usize;
    println!("crash test seed {seed}, {iterations} kills (replay: CAIRN_CRASH_SEED={seed})");
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/");
    let log = |n: usize| dir.path().join(format!("relay-{n}.log"));
    let mut relay = RelayProcess::spawn(port, &data, log(0)).await;

    let acked: Acked = Arc::default();
    let epoch = Arc::new(AtomicUsize::new(0));
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| client(&format!("member-{i}/phone"), &url))
        .collect();
    let mut shared = Vec::new();
    for s in 0..SHARED_DOCS {
        let doc = clients[0]
            .create(move |tx| {
                tx.put(ROOT, "shared", s as i64).expect("put");
            })
            .await
            .expect("create");
        clients[0]
            .wait_acknowledged(doc, SOON)
            .await
            .expect("the relay takes the shared document");
        let heads = clients[0].heads(doc).await.expect("heads").expect("loaded");
        acked.lock().expect("lock").push((0, doc, heads));
        shared.push(doc);
    }
    for c in &clients[1..] {
        for doc in &shared {
            c.find(*doc, SOON).await.expect("find the shared document");
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let own = c
            .create(move |tx| {
                tx.put(ROOT, "owner", i as i64).expect("put");
            })
            .await
            .expect("create");
        let (c, shared, stop) = (c.clone(), shared.clone(), stop.clone());
        let (acked, epoch) = (acked.clone(), epoch.clone());
        let mut wrng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1 + i as u64));
        writers.push(tokio::spawn(async move {
            let mut waiters = Vec::new();
            let mut n: i64 = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let doc = if wrng.gen_bool(0.5) {
                    shared[wrng.gen_range(0..shared.len())]
                } else {
                    own
                };
                let key = format!("member-{i}-{n}");
                let heads = c
                    .change(doc, move |tx| tx.put(ROOT, key, n))
                    .await
                    .expect("a local change is durable on the device");
                waiters.push(watch_ack(&c, doc, heads, &acked, &epoch));
                tokio::time::sleep(Duration::from_millis(wrng.gen_range(5..40))).await;
            }
            for w in waiters {
                w.await.expect("ack waiter");
            }
            n
        }));
    }

    for round in 1..=iterations {
        let up = Duration::from_millis(rng.gen_range(300..2500));
        tokio::time::sleep(up).await;
        relay.kill();
        epoch.store(round, Ordering::SeqCst);
        let down = Duration::from_millis(rng.gen_range(0..300));
        tokio::time::sleep(down).await;
        relay = RelayProcess::spawn(port, &data, log(round)).await;
    }
    // Let the clients reconnect and catch up, then stop writing and collect the waiters.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut changes = 0;
    for w in writers {
        changes += w.await.expect("writer");
    }
    relay.kill();
    for c in &clients {
        c.shutdown().await;
    }

    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    let mut per_epoch = BTreeMap::<usize, usize>::new();
    let mut by_doc = BTreeMap::<DocumentId, Vec<ChangeHash>>::new();
    for (e, doc, heads) in &acked {
        *per_epoch.entry(*e).or_default() += 1;
        by_doc
            .entry(*doc)
            .or_default()
            .extend(heads.iter().copied());
    }
    println!(
        "{changes} changes, {} acknowledged, per epoch {per_epoch:?}, {:?}",
        acked.len(),
        started.elapsed()
    );
    assert!(
        per_epoch.get(&iterations).copied().unwrap_or(0) > 0,
        "no change was acknowledged after the last restart (seed {seed})"
    );

    let ids: Vec<DocumentId> = by_doc.keys().copied().collect();
    let mut lost = Vec::new();
    for (doc, am) in load_stored(&data, &ids).await {
        for h in &by_doc[&doc] {
            if am.get_change_by_hash(h).is_none() {
                lost.push((doc, *h));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged changes are missing from the relay's store after SIGKILL \
         (seed {seed}), e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}
