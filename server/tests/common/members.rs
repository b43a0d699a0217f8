//! Helpers for a relay with membership: a tiny HTTP client for the `/v1` API, devices
//! with their credentials, a bootstrapped group, and websockets that present a credential.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cairn_sync::wire::{Message, PeerMetadata};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Raw, Relay, Seen, SOON};

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Resp {
    /// A header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The API error code of a failed call.
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {:?}", self.body);
        self.body
    }
}

/// One HTTP/1.1 request over its own connection. `token` goes in `Authorization: Bearer`;
/// `extra` adds raw header lines.
pub async fn call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    extra: &[(&str, &str)],
) -> Resp {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "{method} {path}: {e} after {:?}",
                    String::from_utf8_lossy(&response)
                ),
            }
        }
        std::io::Result::Ok(response)
    };
    let raw = tokio::time::timeout(SOON, exchange)
        .await
        .expect("the relay answers in time")
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    assert!(
        !headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")),
        "answers carry a content length"
    );
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// A request with an optional credential.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    call_with(addr, method, path, token, body, &[]).await
}

/// A device and its credential.
#[derive(Clone, Debug)]
pub struct Device {
    pub token: String,
    pub member: String,
    pub device: String,
}

impl Device {
    /// `member/device`: the peer id its `join` must carry.
    pub fn peer(&self) -> String {
        format!("{}/{}", self.member, self.device)
    }

    fn from_redeemed(v: &Value) -> Device {
        Device {
            token: v["token"]
                .as_str()
                .expect("a new device's token")
                .to_owned(),
            member: v["member_id"].as_str().expect("member id").to_owned(),
            device: v["device_id"].as_str().expect("device id").to_owned(),
        }
    }
}

/// Redeems an invite as a new device.
pub async fn redeem(addr: SocketAddr, code: &str, pseudonym: &str) -> Resp {
    let body = json!({"code": code, "pseudonym": pseudonym});
    call(addr, "POST", "/v1/invites/redeem", None, Some(&body)).await
}

/// Waits until nothing holds the store in `data` (sled releases its lock from a
/// background thread a moment after the last handle is dropped, so a store closed in
/// this process may still be locked when the next relay opens it). Probes sled's lock
/// (an exclusive `flock` on `db`) without taking the store.
pub async fn wait_unlocked(data: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + SOON;
    let Ok(db) = std::fs::File::open(data.join("db")) else {
        return;
    };
    loop {
        match db.try_lock() {
            Ok(()) => {
                let _ = db.unlock();
                return;
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("the store stays locked: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// A relay with membership and one bootstrapped group whose first organiser has joined.
pub struct Group {
    pub dir: tempfile::TempDir,
    pub relay: Relay,
    pub group: String,
    pub organiser: Device,
    flags: Vec<String>,
}

impl Group {
    /// Bootstraps a store, starts a relay on it with `flags`, and redeems the organiser
    /// invite (the organiser accepts the code of conduct).
    pub async fn start(flags: &[&str]) -> Group {
        Group::start_with_store(flags, "embedded").await
    }

    /// [`Group::start`] on the store `store` (`embedded`, or a PostgreSQL URL: the relay
    /// then runs with `--store` too).
    pub async fn start_with_store(flags: &[&str], store: &str) -> Group {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = cairn_relay::config::BootstrapArgs {
            data: dir.path().join("relay"),
            code_of_conduct_file: None,
            invite_hours: 1,
            new_organiser_invite: None,
            store: store.into(),
        };
        let made = tokio::task::spawn_blocking(move || cairn_relay::bootstrap::bootstrap(&args))
            .await
            .expect("bootstrap ran")
            .expect("bootstrap");
        let mut flags: Vec<&str> = flags.to_vec();
        if store == "embedded" {
            wait_unlocked(&dir.path().join("relay")).await;
        } else {
            flags.extend_from_slice(&["--store", store]);
        }
        let relay = Relay::start_members(&dir.path().join("relay"), &flags).await;
        let redeemed = redeem(relay.addr, &made.invite.code, "organiser")
            .await
            .expect(200);
        let organiser = Device::from_redeemed(&redeemed);
        let group = made.group.to_string();
        let g = Group {
            dir,
            relay,
            group,
            organiser,
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        };
        g.accept(&g.organiser, &g.group.clone()).await;
        g
    }

    pub fn addr(&self) -> SocketAddr {
        self.relay.addr
    }

    pub fn url(&self) -> String {
        self.relay.url()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("relay")
    }

    /// Stops the relay and starts a new one on the same store.
    pub async fn restart(self) -> Group {
        let Group {
            dir,
            relay,
            group,
            organiser,
            flags,
        } = self;
        relay.stop().await.expect("clean stop");
        wait_unlocked(&dir.path().join("relay")).await;
        let relay = Relay::start_members(
            &dir.path().join("relay"),
            &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        Group {
            dir,
            relay,
            group,
            organiser,
            flags,
        }
    }

    /// Stops the relay (to look at its store) and returns the data directory.
    pub async fn stop(self) -> tempfile::TempDir {
        self.relay.stop().await.expect("clean stop");
        self.dir
    }

    /// A call by `who`.
    pub async fn call(&self, who: &Device, method: &str, path: &str, body: Option<Value>) -> Resp {
        call(self.addr(), method, path, Some(&who.token), body.as_ref()).await
    }

    /// Accepts `group`'s current code of conduct.
    pub async fn accept(&self, who: &Device, group: &str) {
        let coc = self
            .call(
                who,
                "GET",
                &format!("/v1/groups/{group}/code-of-conduct"),
                None,
            )
            .await
            .expect(200);
        let version = coc["version"].as_u64().expect("version");
        self.call(
            who,
            "POST",
            &format!("/v1/groups/{group}/code-of-conduct/accept"),
            Some(json!({"version": version})),
        )
        .await
        .expect(204);
    }

    /// A new invite to `group` by its organiser `by`.
    pub async fn invite_to(
        &self,
        by: &Device,
        group: &str,
        role: &str,
        max_uses: u32,
        secs: u64,
    ) -> String {
        let body = json!({"role": role, "expires_in_secs": secs, "max_uses": max_uses});
        let invite = self
            .call(
                by,
                "POST",
                &format!("/v1/groups/{group}/invites"),
                Some(body),
            )
            .await
            .expect(201);
        invite["code"].as_str().expect("code").to_owned()
    }

    /// A new member of `group` (invited by `by`) with `role`, who accepted the code of
    /// conduct.
    pub async fn join_group(
        &self,
        by: &Device,
        group: &str,
        role: &str,
        pseudonym: &str,
    ) -> Device {
        let code = self.invite_to(by, group, role, 1, 3600).await;
        let device =
            Device::from_redeemed(&redeem(self.addr(), &code, pseudonym).await.expect(200));
        self.accept(&device, group).await;
        device
    }

    /// A new member of the bootstrapped group.
    pub async fn join(&self, role: &str, pseudonym: &str) -> Device {
        let (organiser, group) = (self.organiser.clone(), self.group.clone());
        self.join_group(&organiser, &group, role, pseudonym).await
    }

    /// Binds `doc` to `group` as `kind`, registered by `who`.
    pub async fn register_in(
        &self,
        who: &Device,
        group: &str,
        doc: cairn_sync::ids::DocumentId,
        kind: &str,
    ) -> Resp {
        let body = json!({"document_id": doc.to_string(), "kind": kind});
        self.call(
            who,
            "POST",
            &format!("/v1/groups/{group}/documents"),
            Some(body),
        )
        .await
    }

    /// Binds `doc` to the bootstrapped group.
    pub async fn register(
        &self,
        who: &Device,
        doc: cairn_sync::ids::DocumentId,
        kind: &str,
    ) -> Resp {
        let group = self.group.clone();
        self.register_in(who, &group, doc, kind).await
    }

    /// A second device of `who`'s member, linked with a link code.
    pub async fn link(&self, who: &Device) -> Device {
        let code = self
            .call(who, "POST", "/v1/devices/link-codes", None)
            .await
            .expect(201);
        let body = json!({"code": code["code"]});
        let linked = call(self.addr(), "POST", "/v1/devices/link", None, Some(&body))
            .await
            .expect(200);
        Device::from_redeemed(&linked)
    }
}

/// How a websocket upgrade went.
pub enum Upgrade {
    Open(Box<Raw>),
    /// Refused with this status and these headers.
    Refused(u16, Vec<(String, String)>),
}

impl Upgrade {
    #[track_caller]
    pub fn status(&self) -> u16 {
        match self {
            Upgrade::Open(_) => 101,
            Upgrade::Refused(s, _) => *s,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        match self {
            Upgrade::Open(_) => None,
            Upgrade::Refused(_, h) => h
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone()),
        }
    }
}

/// Dials `url` presenting `token` as a Bearer header (`None`: no credential), with extra
/// header lines.
pub async fn upgrade_with(url: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Upgrade {
    let mut request = url.into_client_request().expect("a websocket url");
    if let Some(t) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header value"),
        );
    }
    for (name, value) in extra {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    let dialled = tokio::time::timeout(SOON, tokio_tungstenite::connect_async(request))
        .await
        .expect("the relay answers the upgrade in time");
    match dialled {
        Ok((ws, _)) => Upgrade::Open(Box::new(Raw {
            ws,
            peer: "unset".into(),
        })),
        Err(tungstenite::Error::Http(response)) => Upgrade::Refused(
            response.status().as_u16(),
            response
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
        ),
        Err(e) => panic!("the upgrade failed without an HTTP answer: {e}"),
    }
}

/// Dials `url` with `token` as a Bearer header.
pub async fn upgrade(url: &str, token: Option<&str>) -> Upgrade {
    upgrade_with(url, token, &[]).await
}

impl Raw {
    /// Dials with `device`'s credential and joins under its peer id.
    pub async fn joined_as(url: &str, device: &Device) -> Raw {
        let Upgrade::Open(raw) = upgrade(url, Some(&device.token)).await else {
            panic!("the device's credential was refused");
        };
        let mut raw = *raw;
        raw.peer = device.peer().into();
        raw.join().await;
        raw
    }

    /// Sends `join` under this socket's peer id and expects `peer`.
    pub async fn join(&mut self) {
        self.send(&Message::Join {
            sender_id: self.peer.clone(),
            peer_metadata: PeerMetadata::default(),
            supported_protocol_versions: vec!["1".into()],
        })
        .await;
        match self.next(SOON).await {
            Seen::Frame(Message::Peer { target_id, .. }) => assert_eq!(target_id, self.peer),
            other => panic!("expected `peer`, got {other:?}"),
        }
    }

    /// Reads until the relay has said nothing for `quiet`; returns what it said.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Seen> {
        let mut seen = Vec::new();
        loop {
            match self.next(quiet).await {
                Seen::Nothing => return seen,
                Seen::Closed => {
                    seen.push(Seen::Closed);
                    return seen;
                }
                other => seen.push(other),
            }
        }
    }
}
