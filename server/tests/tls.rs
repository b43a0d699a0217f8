//! Built-in TLS (`--tls-cert/--tls-key`) on loopback with a self-signed certificate made
//! here: an HTTPS `/healthz`, a websocket upgrade and handshake over TLS, plain HTTP
//! refused, and unusable certificate files refused at start with the file named.

mod common;

use std::sync::Arc;

use cairn_sync::wire::{Message, PeerMetadata};
use common::{http_get, Relay, SOON};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite;

/// A client that trusts only `cert` (DER).
fn connector(cert: &rcgen::Certificate) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("a valid certificate");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_stream(
    addr: std::net::SocketAddr,
    tls: &TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(SOON, tls.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake with the relay's certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_https_and_wss_with_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, made.cert.pem()).expect("write cert");
    std::fs::write(&key_file, made.signing_key.serialize_pem()).expect("write key");
    let relay = Relay::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert_file.to_str().expect("utf-8"),
            "--tls-key",
            key_file.to_str().expect("utf-8"),
        ],
    )
    .await;
    let tls = connector(&made.cert);

    // HTTPS /healthz (the relay may still be starting: bounded retries).
    let deadline = tokio::time::Instant::now() + SOON;
    let answer = loop {
        if let Ok(tcp) = TcpStream::connect(relay.addr).await {
            let name = ServerName::try_from("localhost").expect("name");
            if let Ok(Ok(mut s)) = tokio::time::timeout(SOON, tls.connect(name, tcp)).await {
                s.write_all(
                    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
                .await
                .expect("send");
                let mut answer = String::new();
                s.read_to_string(&mut answer).await.ok();
                break answer;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no TLS answer");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");

    // A websocket over TLS: the upgrade and the protocol's handshake.
    let stream = tls_stream(relay.addr, &tls).await;
    let (mut ws, response) = tokio::time::timeout(
        SOON,
        tokio_tungstenite::client_async("wss://localhost/", stream),
    )
    .await
    .expect("upgrade in time")
    .expect("websocket upgrade over TLS");
    assert_eq!(response.status().as_u16(), 101);
    let join = Message::Join {
        sender_id: "tls-peer".into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    };
    ws.send(tungstenite::Message::Binary(join.encode().into()))
        .await
        .expect("send join");
    let reply = tokio::time::timeout(SOON, async {
        loop {
            match ws.next().await {
                Some(Ok(tungstenite::Message::Binary(b))) => return Message::decode(&b),
                Some(Ok(_)) => continue,
                other => panic!("the socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("peer in time")
    .expect("a protocol message");
    assert!(
        matches!(reply, Message::Peer { ref target_id, .. } if target_id.as_str() == "tls-peer"),
        "{reply:?}"
    );
    drop(ws);

    // Plain HTTP to the TLS port gets no answer.
    assert_ne!(
        http_get(relay.addr, "/healthz").await.map(|r| r.0),
        Some(200)
    );
    relay.stop().await.expect("clean stop");

    // Unusable files are refused at start, naming the file.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let missing = dir.path().join("missing.pem");
    let config = common::config_from_flags(&[
        "--open",
        "--listen",
        &listener.local_addr().expect("addr").to_string(),
        "--data",
        dir.path().join("data2").to_str().expect("utf-8"),
        "--tls-cert",
        missing.to_str().expect("utf-8"),
        "--tls-key",
        key_file.to_str().expect("utf-8"),
    ]);
    let err = cairn_relay::run(config, listener, std::future::pending())
        .await
        .expect_err("a missing certificate is refused");
    assert!(matches!(err, cairn_relay::RelayError::Tls(_)), "{err}");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
