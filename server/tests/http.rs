//! The HTTP surface: health, readiness, metrics (through `app(state).oneshot`), a
//! membership relay's refusal of websockets without a credential, and config validation.

mod common;

use std::time::Duration;

use automerge::transaction::Transactable;
use axum::http::StatusCode;
use cairn_relay::config::{Cli, Command};
use cairn_relay::{app, AppState, ConfigError};
use clap::Parser;
use common::{client, config_from_flags, oneshot_get as get, SOON};
use tokio::net::TcpListener;

/// The value of an unlabelled metric in the text exposition.
fn metric(text: &str, name: &str) -> f64 {
    common::metric_value(text, name)
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// Serves `state` on a loopback port (as `run` would) and returns its websocket URL.
async fn serve(state: AppState) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    format!("ws://{addr}/")
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = cairn_relay::Config::open_for_tests(
        "127.0.0.1:0".parse().expect("addr"),
        dir.path().into(),
    );
    let (state, _store) = cairn_relay::start(&config).await.expect("start");
    assert_eq!(get(&state, "/healthz").await, (StatusCode::OK, "ok".into()));
    assert_eq!(
        get(&state, "/readyz").await,
        (StatusCode::OK, "ready".into())
    );
    assert_eq!(get(&state, "/nope").await.0, StatusCode::NOT_FOUND);
    // `/` is only a websocket endpoint: a plain GET is a client error, never a page.
    assert!(get(&state, "/").await.0.is_client_error());
}

#[tokio::test]
async fn metrics_count_peers_and_documents_without_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = cairn_relay::Config::open_for_tests(
        "127.0.0.1:0".parse().expect("addr"),
        dir.path().into(),
    );
    let (state, _store) = cairn_relay::start(&config).await.expect("start");
    let (status, before) = get(&state, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metric(&before, "cairn_peers"), 0.0);
    assert_eq!(metric(&before, "cairn_sockets"), 0.0);

    let url = serve(state.clone()).await;
    let phone = client("ana/phone", &url);
    let doc = phone
        .create(|tx| {
            tx.put(automerge::ROOT, "title", "private minutes")
                .expect("put");
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .expect("create")
        .0;
    phone
        .wait_acknowledged(doc, SOON)
        .await
        .expect("acknowledged");

    let (status, text) = get(&state, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metric(&text, "cairn_peers"), 1.0);
    assert_eq!(metric(&text, "cairn_sockets"), 1.0);
    assert!(metric(&text, "cairn_documents") >= 1.0);
    assert!(metric(&text, "cairn_frames_received_total") >= 2.0);
    assert!(metric(&text, "cairn_storage_ops_total") >= 1.0);
    assert!(text.contains("cairn_storage_batch_seconds_bucket"));
    // The acknowledgement of the change was its passing on (to its only peer, the writer).
    assert!(metric(&text, "cairn_forward_delay_seconds_count") >= 1.0);
    for secret in [
        doc.to_string(),
        "ana/phone".to_owned(),
        "private".to_owned(),
    ] {
        assert!(!text.contains(&secret), "/metrics leaks {secret:?}");
    }
    phone.shutdown().await;
}

#[tokio::test]
async fn a_relay_without_open_refuses_websockets_without_a_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 path");
    let config = config_from_flags(&["--listen", "127.0.0.1:0", "--data", data]);
    assert!(!config.open);
    let (state, _store) = cairn_relay::start(&config).await.expect("start");
    let url = serve(state.clone()).await;
    for _ in 0..3 {
        match tokio::time::timeout(SOON, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .expect("answer in time")
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
                assert_eq!(
                    response
                        .headers()
                        .get("www-authenticate")
                        .map(|v| v.as_bytes()),
                    Some(&b"Bearer"[..])
                );
            }
            Ok(_) => panic!("a relay with membership accepted a websocket without a credential"),
            Err(other) => panic!("expected 401, got {other}"),
        }
    }
    let (_, text) = get(&state, "/metrics").await;
    assert_eq!(metric(&text, "cairn_refused_total"), 3.0);
    assert_eq!(metric(&text, "cairn_auth_failures_total"), 3.0);
    assert_eq!(metric(&text, "cairn_sockets"), 0.0);
    // Health does not depend on membership.
    assert_eq!(get(&state, "/readyz").await.0, StatusCode::OK);
}

fn validate(flags: &[&str]) -> Result<cairn_relay::Config, ConfigError> {
    let mut argv = vec!["cairn-relay", "serve"];
    argv.extend_from_slice(flags);
    let Command::Serve(args) = Cli::parse_from(argv).command else {
        unreachable!("parsed `serve`")
    };
    args.validate()
}

#[test]
fn open_mode_is_refused_off_loopback() {
    for listen in ["0.0.0.0:8080", "[::]:8080", "192.0.2.7:8080"] {
        assert_eq!(
            validate(&["--open", "--listen", listen]).expect_err("refused"),
            ConfigError::OpenNotLoopback(listen.parse().expect("addr")),
            "{listen}"
        );
    }
    let ok = validate(&["--open", "--listen", "127.0.0.1:9"]).expect("loopback is fine");
    assert!(ok.open);
    // Closed mode may listen anywhere: it refuses every websocket.
    assert!(
        !validate(&["--listen", "0.0.0.0:8080"])
            .expect("closed mode on any address")
            .open
    );
}

#[test]
fn zero_limits_are_refused_and_sizes_convert() {
    assert_eq!(
        validate(&["--max-document-mb", "0"]).expect_err("zero"),
        ConfigError::Zero("--max-document-mb")
    );
    assert_eq!(
        validate(&["--socket-timeout-secs", "0"]).expect_err("zero"),
        ConfigError::Zero("--socket-timeout-secs")
    );
    let c = validate(&["--max-document-mb", "3", "--idle-secs", "7"]).expect("valid");
    assert_eq!(c.max_document_bytes, 3 * 1024 * 1024);
    assert_eq!(c.idle, Duration::from_secs(7));
}
