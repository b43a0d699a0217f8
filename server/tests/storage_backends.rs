//! One storage contract, run on both of the relay's stores: the embedded sled store and
//! the PostgreSQL store several relays share. Then what only the shared store does: a
//! second relay's view, a frozen, stopped or crashed database, the cluster-wide lock,
//! document versions and the change hints between relays.
//!
//! One PostgreSQL server serves these (its start-up counts against the test budget); each
//! part has its own database. A second one, which takes TCP over TLS only, serves the
//! TLS cases.

mod common;

use std::io::ErrorKind;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use cairn_relay::pg_store::{Hint, PgListener, PgOptions, PgStore};
use cairn_sync::store::{SledConfig, Storage, StorageKey, StoreError};
use common::pg::PgCluster;
use common::SOON;
use tokio::sync::mpsc;

fn k(parts: &[&str]) -> StorageKey {
    parts.iter().map(|s| s.to_string()).collect()
}

fn keys(range: &[(StorageKey, Vec<u8>)]) -> Vec<StorageKey> {
    range.iter().map(|(k, _)| k.clone()).collect()
}

/// The contract every store keeps. `open` opens the store (again: the earlier handle is
/// dropped first, as a restarted relay would).
fn contract(open: &dyn Fn() -> Box<dyn Storage>) {
    let s = open();

    // A read sees a write before its flush, and after.
    s.put(&k(&["d1", "incremental", "h1"]), b"one").unwrap();
    assert_eq!(
        s.load(&k(&["d1", "incremental", "h1"])).unwrap(),
        Some(b"one".to_vec())
    );
    assert_eq!(
        keys(&s.load_range(&k(&["d1"])).unwrap()),
        vec![k(&["d1", "incremental", "h1"])]
    );
    s.flush().unwrap();
    assert_eq!(
        s.load(&k(&["d1", "incremental", "h1"])).unwrap(),
        Some(b"one".to_vec())
    );
    assert_eq!(s.load(&k(&["d1", "incremental", "nope"])).unwrap(), None);

    // Overwrite, flushed and not.
    s.put(&k(&["d1", "snapshot", "s"]), b"v1").unwrap();
    s.flush().unwrap();
    s.put(&k(&["d1", "snapshot", "s"]), b"v2").unwrap();
    assert_eq!(
        s.load(&k(&["d1", "snapshot", "s"])).unwrap(),
        Some(b"v2".to_vec())
    );
    s.flush().unwrap();
    assert_eq!(
        s.load(&k(&["d1", "snapshot", "s"])).unwrap(),
        Some(b"v2".to_vec())
    );

    // Delete: gone before the flush and after; a key put and deleted in one batch too.
    s.delete(&k(&["d1", "snapshot", "s"])).unwrap();
    assert_eq!(s.load(&k(&["d1", "snapshot", "s"])).unwrap(), None);
    s.put(&k(&["d1", "tmp"]), b"x").unwrap();
    s.delete(&k(&["d1", "tmp"])).unwrap();
    s.flush().unwrap();
    assert_eq!(s.load(&k(&["d1", "snapshot", "s"])).unwrap(), None);
    assert_eq!(s.load(&k(&["d1", "tmp"])).unwrap(), None);

    // Range order and the prefix boundary: ["a"] holds ["a"] and ["a", ..], never ["ab"].
    for key in [
        k(&["a", "snapshot", "2"]),
        k(&["ab", "x"]),
        k(&["a", "incremental", "1"]),
        k(&["a"]),
        k(&["b"]),
    ] {
        s.put(&key, key.join("/").as_bytes()).unwrap();
    }
    s.flush().unwrap();
    let want = vec![
        k(&["a"]),
        k(&["a", "incremental", "1"]),
        k(&["a", "snapshot", "2"]),
    ];
    let range = s.load_range(&k(&["a"])).unwrap();
    assert_eq!(keys(&range), want);
    assert_eq!(range[1].1, b"a/incremental/1".to_vec());
    assert_eq!(s.list_keys(&k(&["a"])).unwrap(), want);
    assert_eq!(s.list_keys(&k(&["ab"])).unwrap(), vec![k(&["ab", "x"])]);
    assert_eq!(
        s.list_keys(&k(&["a", "incremental"])).unwrap(),
        vec![k(&["a", "incremental", "1"])]
    );

    // delete_range removes the prefix's keys only.
    s.delete_range(&k(&["a"])).unwrap();
    assert!(s.load_range(&k(&["a"])).unwrap().is_empty());
    s.flush().unwrap();
    assert!(s.load_range(&k(&["a"])).unwrap().is_empty());
    assert_eq!(s.list_keys(&k(&["ab"])).unwrap(), vec![k(&["ab", "x"])]);
    assert_eq!(s.load(&k(&["b"])).unwrap(), Some(b"b".to_vec()));

    // load_range_except leaves out the keys the caller has, flushed or not, and names
    // those it had that are gone (deleted, flushed or not).
    for h in ["h0", "h1", "h2", "h3", "h5"] {
        s.put(&k(&["c", "incremental", h]), h.as_bytes()).unwrap();
    }
    s.flush().unwrap();
    s.delete(&k(&["c", "incremental", "h0"])).unwrap();
    s.flush().unwrap();
    s.put(&k(&["c", "incremental", "h4"]), b"h4").unwrap();
    s.delete(&k(&["c", "incremental", "h5"])).unwrap();
    let known = vec![
        k(&["c", "incremental", "h5"]),
        k(&["c", "incremental", "h1"]),
        k(&["c", "incremental", "h3"]),
        k(&["c", "incremental", "h0"]),
        k(&["b"]),
    ];
    let fresh = s.load_range_except(&k(&["c"]), &known).unwrap();
    assert_eq!(
        fresh.added,
        vec![
            (k(&["c", "incremental", "h2"]), b"h2".to_vec()),
            (k(&["c", "incremental", "h4"]), b"h4".to_vec()),
        ]
    );
    assert_eq!(
        fresh.gone,
        vec![
            k(&["c", "incremental", "h0"]),
            k(&["c", "incremental", "h5"])
        ],
        "a known key outside the prefix is not gone"
    );
    s.flush().unwrap();

    // write_batch: durable when it returns.
    s.write_batch(&[
        (k(&["m", "1"]), Some(b"first".to_vec())),
        (k(&["m", "2"]), Some(b"second".to_vec())),
        (k(&["c", "incremental", "h2"]), None),
    ])
    .unwrap();
    assert_eq!(s.load(&k(&["m", "2"])).unwrap(), Some(b"second".to_vec()));

    let id = s.storage_id().unwrap();
    assert_eq!(s.storage_id().unwrap(), id);
    drop(s);

    // Reopened: everything flushed is there, the id is the same.
    let s = open();
    assert_eq!(s.storage_id().unwrap(), id);
    assert_eq!(
        s.load(&k(&["d1", "incremental", "h1"])).unwrap(),
        Some(b"one".to_vec())
    );
    assert_eq!(s.load(&k(&["m", "1"])).unwrap(), Some(b"first".to_vec()));
    assert_eq!(
        s.list_keys(&k(&["c"])).unwrap(),
        vec![
            k(&["c", "incremental", "h1"]),
            k(&["c", "incremental", "h3"]),
            k(&["c", "incremental", "h4"])
        ]
    );
    assert!(s.load_range(&k(&["a"])).unwrap().is_empty());
}

#[test]
fn sled_keeps_the_storage_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    contract(&|| {
        Box::new(cairn_relay::open_store(&path, &SledConfig::default()).expect("open sled"))
    });
}

fn connect(url: &str, relay: &str, op_timeout: Duration) -> PgStore {
    PgStore::connect(
        url,
        relay,
        PgOptions {
            pool_size: 4,
            op_timeout,
        },
    )
    .expect("connect to PostgreSQL")
}

fn kind(e: &StoreError) -> Option<ErrorKind> {
    match e {
        StoreError::Io(io) => Some(io.kind()),
        _ => None,
    }
}

/// Waits (bounded) for the next hint.
async fn next_hint(rx: &mut mpsc::Receiver<Hint>) -> Hint {
    tokio::time::timeout(SOON, rx.recv())
        .await
        .expect("a hint within the bound")
        .expect("the listener is running")
}

/// Everything on one server, in sequence: the cases that stop or freeze it must not
/// overlap the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_storage_contract_and_shares_one_store() {
    let started = Instant::now();
    let cluster = PgCluster::start();
    eprintln!("PostgreSQL started in {:?}", started.elapsed());

    let url = cluster.create_database("contract");
    let open_url = url.clone();
    tokio::task::block_in_place(|| {
        contract(&|| Box::new(connect(&open_url, "relay-a", Duration::from_secs(10))));
    });
    eprintln!("contract done at {:?}", started.elapsed());

    // `prefer` falls back to plain on a server without TLS.
    let prefer = url.replace("sslmode=disable", "sslmode=prefer");
    tokio::task::block_in_place(|| {
        let store = connect(&prefer, "relay-a", Duration::from_secs(10));
        assert!(store.storage_id().is_ok());
    });

    let url = cluster.create_database("shared");
    let a = connect(&url, "relay-a", Duration::from_secs(10));
    let b = connect(&url, "relay-b", Duration::from_secs(10));
    assert_eq!(a.storage_id().unwrap(), b.storage_id().unwrap());
    assert!(a.is_shared());
    assert!(format!("{a:?}").contains("relay-a"));

    // The listeners: each relay hears the other's writes, not its own.
    let (tx_a, mut hints_a) = mpsc::channel(64);
    let (tx_b, mut hints_b) = mpsc::channel(64);
    let listen_a = PgListener::spawn(&url, "relay-a", tx_a).unwrap();
    let listen_b = PgListener::spawn(&url, "relay-b", tx_b).unwrap();
    assert_eq!(next_hint(&mut hints_a).await, Hint::Reconnected);
    assert_eq!(next_hint(&mut hints_b).await, Hint::Reconnected);
    assert!(listen_a.is_connected() && listen_b.is_connected());

    tokio::task::block_in_place(|| {
        // A second relay sees a write once it is flushed, not before.
        a.put(&k(&["doc-1", "incremental", "h1"]), b"one").unwrap();
        assert_eq!(b.load(&k(&["doc-1", "incremental", "h1"])).unwrap(), None);
        a.flush().unwrap();
        assert_eq!(
            b.load(&k(&["doc-1", "incremental", "h1"])).unwrap(),
            Some(b"one".to_vec())
        );
        let e = a.put(&k(&["doc-1", "bad\0part"]), b"x").unwrap_err();
        assert_eq!(kind(&e), Some(ErrorKind::InvalidInput));
    });
    assert_eq!(
        next_hint(&mut hints_b).await,
        Hint::Changed {
            doc: "doc-1".into()
        }
    );
    tokio::task::block_in_place(|| {
        b.write_batch(&[(k(&["doc-2", "incremental", "h1"]), Some(b"two".to_vec()))])
            .unwrap();
    });
    // A's first hint is B's write: its own write to doc-1 was not handed to it.
    assert_eq!(
        next_hint(&mut hints_a).await,
        Hint::Changed {
            doc: "doc-2".into()
        }
    );

    tokio::task::block_in_place(|| {
        // Versions move only for the document written, and only when its data changes.
        let docs = vec![
            "doc-1".to_owned(),
            "doc-2".to_owned(),
            "doc-none".to_owned(),
        ];
        let v1 = a.document_versions(&docs).unwrap();
        assert_eq!(v1.len(), 2, "{v1:?}");
        b.write_batch(&[(k(&["doc-1", "incremental", "h2"]), Some(b"more".to_vec()))])
            .unwrap();
        let v2 = a.document_versions(&docs).unwrap();
        assert!(v2["doc-1"] > v1["doc-1"], "{v1:?} {v2:?}");
        assert_eq!(v2["doc-2"], v1["doc-2"]);
        b.write_batch(&[(k(&["doc-1", "incremental", "h2"]), Some(b"more".to_vec()))])
            .unwrap();
        assert_eq!(a.document_versions(&docs).unwrap(), v2);
        let sizes = a.document_sizes().unwrap();
        assert!(sizes.contains(&("doc-1".to_owned(), 7)), "{sizes:?}");
        a.ping().unwrap();

        // The shared lock excludes another relay until its guard drops.
        let guard = a.lock_shared("membership").unwrap().expect("a shared lock");
        let (got, taken) = std_mpsc::channel();
        let b2 = b.clone();
        let waiter = std::thread::spawn(move || {
            let lock = b2.lock_shared("membership").unwrap();
            got.send(()).unwrap();
            drop(lock);
        });
        assert!(
            taken.recv_timeout(Duration::from_millis(300)).is_err(),
            "B took the lock A holds"
        );
        drop(guard);
        taken
            .recv_timeout(SOON)
            .expect("B takes the lock once A's guard dropped");
        waiter.join().unwrap();

        // Frozen database: the flush fails within the timeout, the write is kept and
        // the flush after the thaw commits it. A store with a short timeout, so the test
        // waits little; after the thaw its flush is retried (bounded), as a loaded
        // machine may be slow to answer.
        let f = connect(&url, "relay-f", Duration::from_secs(1));
        f.ping().unwrap();
        cluster.freeze();
        f.put(&k(&["doc-3", "incremental", "h1"]), b"frozen")
            .unwrap();
        let e = f.flush().unwrap_err();
        assert_eq!(kind(&e), Some(ErrorKind::TimedOut), "{e}");
        assert_eq!(
            f.load(&k(&["doc-3", "incremental", "h1"])).unwrap_or(None),
            Some(b"frozen".to_vec()),
            "the unflushed write is still readable from the buffer"
        );
        let e = f.ping().unwrap_err();
        assert_eq!(kind(&e), Some(ErrorKind::TimedOut), "{e}");
        cluster.thaw();
        retry_until_ok(|| f.flush());
        drop(f);
        assert_eq!(
            b.load(&k(&["doc-3", "incremental", "h1"])).unwrap(),
            Some(b"frozen".to_vec())
        );

        // Stopped database: the flush fails; after the restart a retry commits the write.
        cluster.stop_fast();
        a.put(&k(&["doc-4", "incremental", "h1"]), b"stopped")
            .unwrap();
        let e = a.flush().unwrap_err();
        eprintln!("flush with the database stopped: {e}");
        // While flushes fail, the writes waiting for one are bounded: more is refused.
        a.set_max_unflushed_bytes(1000);
        let e = a
            .put(&k(&["doc-4", "incremental", "h2"]), &[7; 2000])
            .unwrap_err();
        assert_eq!(kind(&e), Some(ErrorKind::OutOfMemory), "{e}");
        cluster.start_again();
        retry_until_ok(|| a.flush());
        a.put(&k(&["doc-4", "incremental", "h2"]), &[7; 2000])
            .unwrap();
        a.flush().unwrap();
        a.set_max_unflushed_bytes(cairn_relay::pg_store::DEFAULT_MAX_UNFLUSHED_BYTES);
        assert_eq!(
            retry_until_ok(|| b.load(&k(&["doc-4", "incremental", "h1"]))),
            Some(b"stopped".to_vec())
        );

        // Crashed database: every flush that returned Ok is there after recovery.
        for i in 0..20 {
            a.put(&k(&["doc-5", "incremental", &i.to_string()]), b"c")
                .unwrap();
            a.flush().unwrap();
        }
        cluster.stop_immediate();
        cluster.start_again();
        assert_eq!(retry_until_ok(|| b.list_keys(&k(&["doc-5"]))).len(), 20);
    });
    eprintln!("shared store cases done at {:?}", started.elapsed());

    // The listeners came back after the restarts, each saying so.
    wait_for_reconnected(&mut hints_a, &listen_a, 0).await;
    wait_for_reconnected(&mut hints_b, &listen_b, 0).await;
    // A lost listen connection is followed by `Reconnected`.
    let deadline = Instant::now() + SOON;
    while !(listen_a.is_connected() && listen_b.is_connected()) {
        assert!(Instant::now() < deadline, "the listeners did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (before_a, before_b) = (listen_a.status().listens(), listen_b.status().listens());
    assert!(cluster.terminate_listeners("shared") >= 2);
    wait_for_reconnected(&mut hints_a, &listen_a, before_a).await;
    wait_for_reconnected(&mut hints_b, &listen_b, before_b).await;

    // A relay that does not read its hints: the listener drops and counts them, and
    // commits go on.
    let (tx_c, mut hints_c) = mpsc::channel(1);
    let listen_c = PgListener::spawn(&url, "relay-c", tx_c).unwrap();
    assert_eq!(next_hint(&mut hints_c).await, Hint::Reconnected);
    tokio::task::block_in_place(|| {
        for i in 0..20 {
            a.write_batch(&[(k(&[&format!("many-{i}"), "x"]), Some(vec![1]))])
                .unwrap();
        }
    });
    let deadline = Instant::now() + SOON;
    while listen_c.dropped_hints() < 19 {
        assert!(
            Instant::now() < deadline,
            "dropped {} of 20 hints",
            listen_c.dropped_hints()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    listen_a.stop();
    listen_b.stop();
    listen_c.stop();
    drop((a, b));
    eprintln!("PostgreSQL part took {:?}", started.elapsed());
    drop(cluster);
    eprintln!("PostgreSQL stopped at {:?}", started.elapsed());
}

/// Against a server that refuses plain TCP: each `sslmode` connects, or fails, as libpq's
/// would, and the listener uses TLS too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_checks_the_certificate_as_the_url_asks() {
    let started = Instant::now();
    let cluster = PgCluster::start_tls();
    eprintln!("PostgreSQL with TLS started in {:?}", started.elapsed());
    cluster.psql("postgres", "CREATE DATABASE tls");
    let base = format!("postgres://postgres@127.0.0.1:{}/tls", cluster.port());
    let ca = cluster.ca_file();
    let timeout = Duration::from_secs(10);

    // `require`: encrypted without a certificate check; the whole contract holds.
    let require = format!("{base}?sslmode=require");
    tokio::task::block_in_place(|| {
        contract(&|| Box::new(connect(&require, "relay-a", timeout)));
        // No sslmode is libpq's `prefer`: TLS when the server offers it.
        let prefer = connect(&base, "relay-a", timeout);
        assert!(prefer.storage_id().is_ok());
    });

    // `verify-full` and `verify-ca` with the CA that signed the server's certificate: the
    // store and the listener connect, and one relay hears the other's write.
    let full = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    let verify_ca = format!("{base}?sslmode=verify-ca&sslrootcert={}", ca.display());
    let (tx, mut hints) = mpsc::channel(16);
    let listener = PgListener::spawn(&full, "relay-b", tx).unwrap();
    assert_eq!(next_hint(&mut hints).await, Hint::Reconnected);
    tokio::task::block_in_place(|| {
        let a = connect(&verify_ca, "relay-a", timeout);
        let b = connect(&full, "relay-b", timeout);
        a.put(&k(&["tls-doc", "incremental", "h1"]), b"one")
            .unwrap();
        a.flush().unwrap();
        assert_eq!(
            b.load(&k(&["tls-doc", "incremental", "h1"])).unwrap(),
            Some(b"one".to_vec())
        );
    });
    assert_eq!(
        next_hint(&mut hints).await,
        Hint::Changed {
            doc: "tls-doc".to_owned()
        }
    );
    listener.stop();

    // A CA that did not sign the server's certificate: a clear error, not a hang or a
    // fallback to plain.
    let other_ca = rcgen::generate_simple_self_signed(vec!["other-ca.invalid".to_owned()])
        .expect("another CA");
    let other = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(other.path(), other_ca.cert.pem()).expect("write the other CA");
    let options = PgOptions {
        pool_size: 2,
        op_timeout: timeout,
    };
    for mode in ["verify-full", "verify-ca"] {
        let wrong = format!(
            "{base}?sslmode={mode}&sslrootcert={}",
            other.path().display()
        );
        let e =
            tokio::task::block_in_place(|| PgStore::connect(&wrong, "relay-c", options.clone()))
                .expect_err("a certificate from an unknown CA is refused");
        let msg = e.to_string();
        eprintln!("{mode} with another CA: {msg}");
        assert!(msg.contains("certificate"), "{mode}: {msg}");
        assert_eq!(kind(&e), Some(ErrorKind::InvalidData), "{mode}: {msg}");
    }

    // Plain TCP is refused by the server (pg_hba): the cases above really used TLS.
    let plain = format!("{base}?sslmode=disable");
    let e = tokio::task::block_in_place(|| PgStore::connect(&plain, "relay-d", options.clone()))
        .expect_err("plain TCP is refused");
    eprintln!("sslmode=disable: {e}");
    assert!(e.to_string().contains("28000"), "{e}");
    eprintln!("TLS part took {:?}", started.elapsed());
}

/// Drains hints (bounded) until a `Reconnected` from a `LISTEN` after the first
/// `listens_before`: changes, and `Reconnected` from earlier sessions, may come first.
async fn wait_for_reconnected(
    rx: &mut mpsc::Receiver<Hint>,
    listener: &PgListener,
    listens_before: u64,
) {
    loop {
        if next_hint(rx).await == Hint::Reconnected && listener.status().listens() > listens_before
        {
            return;
        }
    }
}

/// Retries `f` for a bounded time: the pool may hand out one connection the restart
/// closed before it notices.
fn retry_until_ok<T>(mut f: impl FnMut() -> Result<T, StoreError>) -> T {
    let deadline = Instant::now() + SOON;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying after: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("still failing: {e}"),
        }
    }
}
