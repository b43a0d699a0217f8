//! A relay whose sync engine stops is visibly down: `/healthz` answers 503, the engine
//! gauge reads 0, sockets close, and `serve` returns `EngineStopped` so the process exits
//! and its supervisor restarts it.

mod common;

use axum::http::StatusCode;
use cairn_relay::RelayError;
use common::{config_from_flags, metric_value, oneshot_get as get, Raw, Seen, SOON};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_engine_fails_healthz_and_ends_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let listen = addr.to_string();
    let data = dir.path().to_str().expect("utf-8 path");
    let config = config_from_flags(&["--open", "--listen", &listen, "--data", data]);
    let (state, store) = cairn_relay::start(&config).await.expect("start");
    let serving = tokio::spawn(cairn_relay::serve(
        state.clone(),
        store,
        listener,
        std::future::pending(),
    ));
    let mut raw = Raw::joined(&format!("ws://{addr}/"), "ana/phone").await;
    assert_eq!(get(&state, "/healthz").await, (StatusCode::OK, "ok".into()));

    // A bug in the engine: the task that owns it panics.
    let call = state
        .host()
        .call::<()>(|_, _| panic!("a bug in the engine"))
        .await;
    assert!(call.is_err(), "a call that panicked returned a value");

    let ended = tokio::time::timeout(SOON, serving)
        .await
        .expect("serving ends when the engine stops, without a shutdown signal")
        .expect("serve did not panic");
    assert!(
        matches!(ended, Err(RelayError::EngineStopped)),
        "serve ended with {ended:?}"
    );
    assert_eq!(
        get(&state, "/healthz").await,
        (StatusCode::SERVICE_UNAVAILABLE, "engine stopped".into())
    );
    let (_, metrics) = get(&state, "/metrics").await;
    assert_eq!(metric_value(&metrics, "cairn_engine_up"), Some(0.0));
    loop {
        match raw.next(SOON).await {
            Seen::Closed => break,
            Seen::Frame(_) => continue,
            other => panic!("expected the socket to close, got {other:?}"),
        }
    }
}
