//! The platform network adapters against fake host sockets written in Rust (no network):
//! what the client sees for each thing a host can report.

use std::sync::atomic::AtomicUsize;

use cairn_sync::client::Method;

use super::*;

/// What the fake host does when asked to open a socket.
type Behaviour = Box<dyn Fn(Arc<SocketEvents>) + Send + Sync>;
/// What the fake host does with an HTTP request.
type HttpBehaviour = Box<dyn Fn(NetworkRequest, Arc<HttpReply>) + Send + Sync>;

#[derive(Default)]
struct FakeSocket {
    sent: Mutex<Vec<Vec<u8>>>,
    pings: AtomicUsize,
    closes: AtomicUsize,
}

impl PlatformSocket for FakeSocket {
    fn send(&self, frame: Vec<u8>) {
        lock(&self.sent).push(frame);
    }
    fn ping(&self) {
        self.pings.fetch_add(1, Ordering::SeqCst);
    }
    fn disconnect(&self) {
        self.closes.fetch_add(1, Ordering::SeqCst);
    }
}

struct FakeNetwork {
    on_open: Behaviour,
    on_http: HttpBehaviour,
    socket: Arc<FakeSocket>,
    bearers: Mutex<Vec<Option<String>>>,
}

impl PlatformNetwork for FakeNetwork {
    fn open_socket(
        &self,
        _url: String,
        bearer: Option<String>,
        events: Arc<SocketEvents>,
    ) -> Arc<dyn PlatformSocket> {
        lock(&self.bearers).push(bearer);
        (self.on_open)(events);
        self.socket.clone()
    }
    fn http_request(&self, request: NetworkRequest, reply: Arc<HttpReply>) {
        (self.on_http)(request, reply)
    }
}

fn network(on_open: Behaviour, on_http: HttpBehaviour) -> (HostTransport, Arc<FakeNetwork>) {
    let fake = Arc::new(FakeNetwork {
        on_open,
        on_http,
        socket: Arc::new(FakeSocket::default()),
        bearers: Mutex::new(Vec::new()),
    });
    (HostTransport::new(fake.clone()), fake)
}

fn sockets(on_open: Behaviour) -> (HostTransport, Arc<FakeNetwork>) {
    network(on_open, Box::new(|_, _| {}))
}

fn http(on_http: HttpBehaviour) -> HostTransport {
    network(Box::new(|_| {}), on_http).0
}

fn credential() -> Credential {
    let token = format!(
        "cairn1_{}_{}_{}",
        "a".repeat(16),
        "b".repeat(16),
        "c".repeat(64)
    );
    Credential::parse(&token).expect("a well-formed test credential")
}

async fn dial(t: &HostTransport) -> Result<Box<dyn Connection>, TransportError> {
    let cred = credential();
    t.connect("wss://relay.example.org/", Some(&cred)).await
}

/// Bounded, so a lost event fails the test instead of hanging it.
async fn next(conn: &dyn Connection) -> Option<Received> {
    tokio::time::timeout(Duration::from_secs(10), conn.recv())
        .await
        .expect("an event or the end within 10 s")
}

#[tokio::test]
async fn frames_and_pongs_reported_before_open_socket_returns_arrive_in_order() {
    let (t, fake) = sockets(Box::new(|e| {
        e.frame(vec![1]);
        e.opened();
        e.pong();
        e.frame(vec![2, 2]);
        e.closed();
        e.frame(vec![3]); // after closed: ignored
    }));
    let conn = dial(&t).await.expect("opened");
    assert_eq!(next(&*conn).await, Some(Received::Frame(vec![1])));
    assert_eq!(next(&*conn).await, Some(Received::Pong));
    assert_eq!(next(&*conn).await, Some(Received::Frame(vec![2, 2])));
    assert_eq!(next(&*conn).await, None, "closed ends the stream");
    assert_eq!(
        lock(&fake.bearers).as_slice(),
        &[Some(credential().as_str().to_owned())],
        "the credential goes to the host as the bearer"
    );
    drop(conn);
    assert_eq!(fake.socket.closes.load(Ordering::SeqCst), 1, "closed once");
}

#[tokio::test]
async fn events_from_another_host_thread_after_open_socket_returned_arrive() {
    let (t, fake) = sockets(Box::new(|e| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            e.opened();
            e.frame(vec![7]);
            e.pong();
        });
    }));
    let conn = dial(&t).await.expect("opened later");
    assert_eq!(next(&*conn).await, Some(Received::Frame(vec![7])));
    assert_eq!(next(&*conn).await, Some(Received::Pong));
    conn.send(vec![9, 9]).await.expect("sent");
    conn.ping().await.expect("pinged");
    assert_eq!(lock(&fake.socket.sent).as_slice(), &[vec![9, 9]]);
    assert_eq!(fake.socket.pings.load(Ordering::SeqCst), 1);
    conn.close().await;
    assert!(matches!(
        conn.send(vec![1]).await,
        Err(TransportError::Closed)
    ));
    drop(conn);
    assert_eq!(
        fake.socket.closes.load(Ordering::SeqCst),
        1,
        "close is once"
    );
}

#[tokio::test]
async fn a_refused_upgrade_is_rejected_with_its_status_and_retry_after() {
    let (t, fake) = sockets(Box::new(|e| e.refused(401, None)));
    match dial(&t).await {
        Err(TransportError::Rejected {
            status: 401,
            retry_after: None,
        }) => {}
        other => panic!("expected Rejected 401, got {:?}", other.err()),
    }
    assert_eq!(
        fake.socket.closes.load(Ordering::SeqCst),
        1,
        "socket released"
    );

    let (t, _) = sockets(Box::new(|e| e.refused(429, Some(7))));
    match dial(&t).await {
        Err(TransportError::Rejected {
            status: 429,
            retry_after: Some(d),
        }) => assert_eq!(d, Duration::from_secs(7)),
        other => panic!("expected Rejected 429, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn unreachable_closed_early_or_released_unanswered_is_unreachable() {
    let behaviours: Vec<Behaviour> = vec![
        Box::new(|e| e.unreachable("no route".to_owned())),
        Box::new(|e| e.closed()),
        Box::new(drop), // the host lets go of the events without a word
    ];
    for b in behaviours {
        let (t, _) = sockets(b);
        assert!(matches!(
            dial(&t).await,
            Err(TransportError::Unreachable { .. })
        ));
    }
}

#[tokio::test]
async fn an_oversized_frame_ends_the_connection() {
    let (t, fake) = sockets(Box::new(|e| {
        e.opened();
        e.frame(vec![1]);
        e.frame(vec![0; Limits::default().max_frame_bytes + 1]);
        e.frame(vec![2]);
    }));
    let conn = dial(&t).await.expect("opened");
    assert_eq!(next(&*conn).await, Some(Received::Frame(vec![1])));
    assert_eq!(
        next(&*conn).await,
        None,
        "nothing after the oversized frame"
    );
    assert_eq!(fake.socket.closes.load(Ordering::SeqCst), 1, "host told");
    assert!(matches!(conn.ping().await, Err(TransportError::Closed)));
}

fn request(json: Option<Vec<u8>>) -> HttpRequest {
    HttpRequest {
        method: Method::Post,
        url: "https://relay.example.org/v1/groups".to_owned(),
        bearer: Some(credential()),
        json,
    }
}

#[tokio::test]
async fn an_http_answer_comes_back_whole_and_only_the_first_counts() {
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let t = http(Box::new(move |req, reply| {
        *lock(&seen2) = Some(req);
        std::thread::spawn(move || {
            reply.respond(429, Some(3), b"{}".to_vec());
            reply.respond(200, None, Vec::new());
            reply.unreachable("late".to_owned());
        });
    }));
    let response = t.request(request(Some(b"{\"a\":1}".to_vec()))).await;
    let response = response.expect("an answer");
    assert_eq!(response.status, 429);
    assert_eq!(response.retry_after, Some(Duration::from_secs(3)));
    assert_eq!(response.body, b"{}");
    let req = lock(&seen).take().expect("the host saw the request");
    assert_eq!(req.method, "POST");
    assert_eq!(req.url, "https://relay.example.org/v1/groups");
    assert_eq!(req.bearer.as_deref(), Some(credential().as_str()));
    assert_eq!(req.json_body.as_deref(), Some(&b"{\"a\":1}"[..]));
}

#[tokio::test]
async fn a_dropped_unanswered_or_oversized_http_reply_is_unreachable() {
    let behaviours: Vec<HttpBehaviour> = vec![
        Box::new(|_, reply| drop(reply)),
        Box::new(|_, reply| reply.unreachable("tls".to_owned())),
        Box::new(|_, reply| reply.respond(200, None, vec![b' '; MAX_RESPONSE_BYTES + 1])),
    ];
    for b in behaviours {
        let t = http(b);
        assert!(matches!(
            t.request(request(None)).await,
            Err(TransportError::Unreachable { .. })
        ));
    }
}

/// A host whose every call throws (uniffi turns that into a panic in Rust).
struct ThrowingHost;

impl PlatformSocket for ThrowingHost {
    fn send(&self, _frame: Vec<u8>) {
        panic!("host exception in send");
    }
    fn ping(&self) {
        panic!("host exception in ping");
    }
    fn disconnect(&self) {
        panic!("host exception in disconnect");
    }
}

impl PlatformNetwork for ThrowingHost {
    fn open_socket(
        &self,
        _url: String,
        _bearer: Option<String>,
        events: Arc<SocketEvents>,
    ) -> Arc<dyn PlatformSocket> {
        if lock(&events.received).is_some() && events.max_frame_bytes == 1 {
            panic!("host exception in open_socket");
        }
        events.opened();
        Arc::new(ThrowingHost)
    }
    fn http_request(&self, _request: NetworkRequest, _reply: Arc<HttpReply>) {
        panic!("host exception in http_request");
    }
}

#[tokio::test]
async fn a_host_exception_fails_the_call_instead_of_unwinding_through_cairn() {
    let host: Arc<dyn PlatformNetwork> = Arc::new(ThrowingHost);
    let mut t = HostTransport::new(host);
    let conn = dial(&t).await.expect("opened");
    assert!(matches!(
        conn.send(vec![1]).await,
        Err(TransportError::Closed)
    ));
    assert!(matches!(conn.ping().await, Err(TransportError::Closed)));
    conn.close().await; // throws inside: contained
    drop(conn);
    assert!(matches!(
        t.request(request(None)).await,
        Err(TransportError::Unreachable { .. })
    ));
    t.max_frame_bytes = 1; // makes this host throw in open_socket
    assert!(matches!(
        dial(&t).await,
        Err(TransportError::Unreachable { .. })
    ));
}
