//! Connections that never finish a request: every TCP connection counts against a cap
//! (before and after a websocket upgrade) and is closed at once past it; request headers
//! must arrive within the header timeout.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use cairn_relay::tcp::PROBE_HEADROOM;
use common::{doc_id, http_get, wait_metric, Raw, Relay, SyncOutcome, SOON};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the relay closes the connection; `None` if it is still open after `within`.
/// A reset counts as closed.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut got)).await {
        Err(_) => None,
        Ok(_) => Some(got),
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// The relay still holds and acknowledges a change from `raw`.
async fn still_syncs(raw: &mut Raw, n: u64) {
    let mut am = Automerge::new();
    let mut tx = am.transaction();
    tx.put(ROOT, "n", n as i64).expect("put");
    tx.commit();
    let mut state = automerge::sync::State::new();
    assert!(matches!(
        raw.sync_doc(doc_id(n), &mut am, &mut state).await,
        SyncOutcome::Acknowledged(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_tcp_cap_are_closed_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A header timeout far beyond this test: only the cap can close a connection here.
    let relay = Relay::start(
        dir.path(),
        &["--max-connections", "2", "--header-timeout-secs", "600"],
    )
    .await;
    // Two websockets take every websocket slot; upgraded, they still count as TCP.
    let mut a = Raw::joined(&relay.url(), "ana/phone").await;
    let mut b = Raw::joined(&relay.url(), "ben/phone").await;
    // Silent connections fill the headroom left for probes.
    let mut silent = Vec::new();
    for _ in 0..PROBE_HEADROOM {
        silent.push(connect(relay.addr).await);
    }
    // The kernel hands connections over in order: these come after all of the above.
    for _ in 0..3 {
        let mut extra = connect(relay.addr).await;
        let answer = closed_within(&mut extra, SOON)
            .await
            .expect("a connection past the cap is closed at once, not held");
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 503"),
            "unexpected answer past the cap: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // The silent ones end; health and metrics answer again (a scrape that comes before
    // the relay has seen them close is refused and counted too).
    drop(silent);
    wait_metric(relay.addr, "cairn_tcp_refused_total", |v| v >= 3.0).await;
    assert_eq!(
        http_get(relay.addr, "/healthz").await,
        Some((200, "ok".into()))
    );
    // Two websockets and the scrape itself.
    wait_metric(relay.addr, "cairn_tcp_connections", |v| v == 3.0).await;
    // The websockets that held their slots were never disturbed.
    still_syncs(&mut a, 1).await;
    still_syncs(&mut b, 2).await;
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_and_silent_connections_are_closed_after_the_header_timeout() {
    const EACH: usize = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), &["--header-timeout-secs", "1"]).await;
    let mut held = Vec::new();
    for _ in 0..EACH {
        let mut half = connect(relay.addr).await;
        half.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .expect("write part of a request");
        held.push(half);
        held.push(connect(relay.addr).await);
    }
    for s in &mut held {
        let answer = closed_within(s, SOON)
            .await
            .expect("the relay closes a connection whose headers never arrive");
        assert!(
            !answer.starts_with(b"HTTP/1.1 200"),
            "an unfinished request was answered"
        );
    }
    let timeouts = wait_metric(relay.addr, "cairn_header_timeouts_total", |v| {
        v >= (2 * EACH) as f64
    })
    .await;
    assert_eq!(timeouts, (2 * EACH) as f64);
    // Whole requests are still served, and websockets still upgrade.
    assert_eq!(
        http_get(relay.addr, "/healthz").await,
        Some((200, "ok".into()))
    );
    let mut raw = Raw::joined(&relay.url(), "ana/phone").await;
    still_syncs(&mut raw, 1).await;
    relay.stop().await.expect("clean stop");
}
