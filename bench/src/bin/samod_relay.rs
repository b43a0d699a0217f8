//! `cairn-samod-relay`: a [`samod`] repo (the Rust automerge-repo) run as a websocket sync
//! server, the third server `cairn-bench` measures the Cairn relay against.
//!
//! ```text
//! cairn-samod-relay --port 4000 --data DIR      # documents on disk, as the Node sync server keeps them
//! cairn-samod-relay --port 4000 --memory        # documents in memory only
//! ```
//!
//! It listens on 127.0.0.1 only, accepts every websocket on any path, hands each one to the
//! repo as a transport (one binary frame = one protocol message) and, like the official
//! Node sync server (`sharePolicy: false`), announces no document to anyone: peers sync
//! what they ask for. With `--data` it uses samod's tokio filesystem storage, the on-disk
//! layout of automerge-repo's Node filesystem adapter (which the Node sync server uses);
//! neither fsyncs. Prints `listening <port>` once it accepts connections.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use samod::{Repo, ShareConfig, Transport};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// Flags.
#[derive(Debug, Parser)]
#[command(name = "cairn-samod-relay", about)]
struct Args {
    /// Loopback port to listen on.
    #[arg(long)]
    port: u16,
    /// Directory for the documents (samod's filesystem storage).
    #[arg(long, conflicts_with = "memory", required_unless_present = "memory")]
    data: Option<PathBuf>,
    /// Keep documents in memory only.
    #[arg(long)]
    memory: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Loopback only, whatever the caller passes: this is a benchmark peer, not a service.
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    // The Node sync server answers requests but announces nothing.
    let policy = ShareConfig::read_write().with_announce(false);
    let repo = match &args.data {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Repo::build_tokio()
                .with_storage(samod::storage::TokioFilesystemStorage::new(dir))
                .with_share_policy(policy)
                .load()
                .await
        }
        None => Repo::build_tokio().with_share_policy(policy).load().await,
    };
    let url = url::Url::parse(&format!("ws://{addr}/")).context("the listener's url")?;
    let acceptor = repo
        .make_acceptor(url)
        .context("the repo stopped before it accepted anything")?;
    println!("listening {}", args.port);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: say so and keep serving the others.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let ws = match tokio_tungstenite::accept_async(tcp).await {
                Ok(ws) => ws,
                Err(e) => {
                    eprintln!("websocket handshake failed: {e}");
                    return;
                }
            };
            let (sink, stream) = ws.split();
            // Binary frames are protocol messages; tungstenite answers pings itself.
            let stream = stream
                .filter_map(|msg| async move {
                    match msg {
                        Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
                        Ok(Message::Text(_)) => {
                            Some(Err(std::io::Error::other("unexpected text frame")))
                        }
                        Ok(_) => None,
                        Err(e) => Some(Err(std::io::Error::other(e))),
                    }
                })
                .boxed();
            let sink = sink
                .sink_map_err(std::io::Error::other)
                .with(|bytes: Vec<u8>| {
                    futures_util::future::ready(Ok::<_, std::io::Error>(Message::Binary(
                        bytes.into(),
                    )))
                });
            if let Err(e) = acceptor.accept(Transport::new(stream, sink)) {
                eprintln!("the repo stopped: {e}");
            }
        });
    }
}
