//! A loopback TCP proxy that can take the network away, the way a phone loses it: `down`
//! closes every connection and refuses new ones (airplane mode), `silent` keeps the
//! connections open but forwards nothing (a half-open TCP connection after a network
//! switch), `up` restores it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// Forwards both ways.
    Up,
    /// Closes every connection and refuses new ones.
    Down,
    /// Keeps connections open and forwards nothing; new connections are accepted and
    /// stay silent too.
    Silent,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<watch::Sender<Network>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards `127.0.0.1:<port>` to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(watch::channel(Network::Up).0);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if *shared.borrow() == Network::Down {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(forward(inbound, target, shared.subscribe()));
            }
        });
        Proxy { addr, state, task }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A websocket URL through the proxy, for a relay at `/`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Switches the network.
    pub fn set(&self, network: Network) {
        self.state.send_replace(network);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.send_replace(Network::Down);
        self.task.abort();
    }
}

async fn forward(inbound: TcpStream, target: SocketAddr, mut state: watch::Receiver<Network>) {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let (mut ri, mut wi) = inbound.into_split();
    let (mut ro, mut wo) = outbound.into_split();
    let (mut a, mut b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let network = *state.borrow_and_update();
        match network {
            Network::Down => return,
            Network::Silent => {
                // Hold both sockets open, read nothing, send nothing.
                if state.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Network::Up => {}
        }
        tokio::select! {
            n = ri.read(&mut a) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if wo.write_all(&a[..n]).await.is_err() { return },
            },
            n = ro.read(&mut b) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if wi.write_all(&b[..n]).await.is_err() { return },
            },
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}
