//! What the phone bindings rely on, through the app API and a real relay: the platform's
//! own network carries every call (websocket and membership API), new credentials reach
//! the app's keystore hook, each document says where its changes stand, and the cursors
//! of others in the minutes follow the text.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cairn_core::app::meeting::MeetingKind;
use cairn_core::app::minutes::BlockKind;
use cairn_core::app::presence::{CursorRecord, PeerCursor};
use cairn_core::app::{Cairn, CredentialKeeper, DocumentSync, DocumentSyncState, Platform};
use cairn_sync::client::{
    Connection, HttpRequest, HttpResponse, HttpTransport, HyperTransport, Transport,
    TransportError, TungsteniteTransport,
};
use cairn_sync::membership::Credential;
use cairn_tests::app::{config, enrol, eventually, joined, organiser};
use cairn_tests::proxy::{Network, Proxy};
use cairn_tests::relay::TestRelay;
use futures::future::BoxFuture;

/// The platform's websocket: tokio-tungstenite underneath, counting dials.
struct CountingSockets {
    inner: TungsteniteTransport,
    dials: AtomicUsize,
}

impl Transport for CountingSockets {
    fn connect<'a>(
        &'a self,
        url: &'a str,
        credential: Option<&'a Credential>,
    ) -> BoxFuture<'a, Result<Box<dyn Connection>, TransportError>> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        self.inner.connect(url, credential)
    }
}

/// The platform's HTTP stack: hyper underneath, recording each call's method and path.
#[derive(Default)]
struct RecordingHttp {
    calls: Mutex<Vec<String>>,
}

impl HttpTransport for RecordingHttp {
    fn request(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        let path = request
            .url
            .splitn(4, '/')
            .nth(3)
            .map(|p| p.split('/').take(2).collect::<Vec<_>>().join("/"))
            .unwrap_or_default();
        self.calls
            .lock()
            .unwrap()
            .push(format!("{} /{path}", request.method.as_str()));
        Box::pin(async move { HyperTransport::new().request(request).await })
    }
}

/// The app's keystore: what the keeper was handed, per relay.
#[derive(Default)]
struct Keystore(Mutex<Vec<(String, String)>>);

impl CredentialKeeper for Keystore {
    fn keep(&self, relay_url: &str, credential: &str) {
        self.0
            .lock()
            .unwrap()
            .push((relay_url.to_owned(), credential.to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_network_carries_every_call_and_new_credentials_reach_the_keystore() {
    let (relay, first) = TestRelay::start_with_membership().await;
    let dir = tempfile::tempdir().unwrap();
    let sockets = Arc::new(CountingSockets {
        inner: TungsteniteTransport::new(cairn_sync::engine::Limits::default().max_frame_bytes),
        dials: AtomicUsize::new(0),
    });
    let http = Arc::new(RecordingHttp::default());
    let keystore = Arc::new(Keystore::default());
    let platform = Platform {
        transport: Some(sockets.clone()),
        http: Some(http.clone()),
        credentials: Some(keystore.clone()),
    };
    let cairn = Cairn::start_with(config(dir.path(), "phone"), platform).unwrap();
    let url = relay.url();
    let enrolment = enrol(&cairn, &url, &first.link, "Robin").await;
    // The credential the join returned is the one the keystore was handed.
    let credential = enrolment
        .credential
        .clone()
        .expect("a new device's credential");
    assert_eq!(
        *keystore.0.lock().unwrap(),
        vec![(url.clone(), credential.clone())]
    );
    cairn_tests::app::online(&cairn).await;
    assert!(
        sockets.dials.load(Ordering::SeqCst) >= 1,
        "the websocket is the platform's"
    );
    let calls = http.calls.lock().unwrap().clone();
    assert!(
        calls.iter().any(|c| c.starts_with("POST /v1/invites"))
            && calls.iter().any(|c| c.starts_with("GET /v1/invites")),
        "preview and join went through the platform's HTTP: {calls:?}"
    );

    // Rotating hands the new credential to the keystore before the call returns.
    let rotated = cairn.workspace().rotate_credential(&url).await.unwrap();
    assert_ne!(rotated, credential);
    assert_eq!(
        keystore.0.lock().unwrap().last(),
        Some(&(url.clone(), rotated))
    );
    // ...and the device goes on syncing with it, over the platform's websocket.
    let before = sockets.dials.load(Ordering::SeqCst);
    cairn_tests::app::online(&cairn).await;
    let group = cairn.group(&enrolment.group_id);
    group
        .set_up(cairn_core::app::group::GroupProfile::new(
            "Circle", "Practice",
        ))
        .await
        .unwrap();
    assert!(cairn.sync_now(10_000).await.unwrap().pending.is_empty());
    assert!(sockets.dials.load(Ordering::SeqCst) >= before);
    cairn.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_says_whether_its_changes_are_only_here_or_safe_on_the_relay() {
    let (relay, first) = TestRelay::start_with_membership().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (organiser, group_id, invite) =
        organiser(dirs[0].path(), &relay.url(), &first.link, 1).await;
    let meeting = organiser
        .group(&group_id)
        .create_meeting("Circle".to_owned(), MeetingKind::Training)
        .await
        .unwrap();
    assert!(organiser.sync_now(10_000).await.unwrap().pending.is_empty());
    let safe = meeting.sync_status().await.unwrap();
    assert_eq!(safe.state, DocumentSyncState::SafelyOnRelay);
    assert_eq!(safe.pending_changes, 0);

    // A member edits with no network: the change waits on the phone.
    let net = Proxy::start(relay.addr()).await;
    let (member, _) = joined(dirs[1].path(), "phone", &net.ws_url(), &invite.link, "Sam").await;
    let theirs = member.group(&group_id).meeting(&meeting.id()).unwrap();
    theirs.read().await.unwrap();
    let states: Arc<Mutex<Vec<DocumentSync>>> = Arc::default();
    let log = states.clone();
    let live =
        theirs.subscribe_sync_status(Arc::new(move |s: DocumentSync| log.lock().unwrap().push(s)));
    net.set(Network::Down);
    theirs.set_title("Circle, March".to_owned()).await.unwrap();
    let waiting = theirs.sync_status().await.unwrap();
    assert_eq!(waiting.state, DocumentSyncState::Sending);
    assert!(waiting.pending_changes >= 1, "{waiting:?}");

    net.set(Network::Up);
    let t = theirs.clone();
    eventually("the change is safe on the relay", move || {
        let t = t.clone();
        async move {
            t.sync_status().await.is_ok_and(|s| {
                s.state == DocumentSyncState::SafelyOnRelay && s.pending_changes == 0
            })
        }
    })
    .await;
    // The live status went the same way: sending while offline, then safe.
    let l = states.clone();
    eventually("the live status reached safe", move || {
        let last = l.lock().unwrap().last().copied();
        async move { last.is_some_and(|s| s.state == DocumentSyncState::SafelyOnRelay) }
    })
    .await;
    let seen = states.lock().unwrap().clone();
    let sending = seen
        .iter()
        .position(|s| s.state == DocumentSyncState::Sending && s.pending_changes >= 1);
    assert!(
        sending.is_some(),
        "the offline edit showed as sending: {seen:?}"
    );
    live.cancel();
    for c in [organiser, member] {
        c.shutdown().await;
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn others_cursors_in_the_minutes_follow_the_text_and_go_when_they_leave() {
    let (relay, first) = TestRelay::start_with_membership().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (ana, group_id, invite) = organiser(dirs[0].path(), &relay.url(), &first.link, 1).await;
    let meeting = ana
        .group(&group_id)
        .create_meeting("Circle".to_owned(), MeetingKind::Training)
        .await
        .unwrap();
    let ana_minutes = meeting.minutes();
    let end = ana_minutes.read().await.unwrap().current.length;
    ana_minutes
        .insert_paragraph(end, BlockKind::Paragraph)
        .await
        .unwrap();
    ana_minutes
        .insert_text(end + 1, "We meet monthly.".to_owned())
        .await
        .unwrap();
    assert!(ana.sync_now(10_000).await.unwrap().pending.is_empty());
    let (ben, _) = joined(
        dirs[1].path(),
        "ben-phone",
        &relay.url(),
        &invite.link,
        "Ben",
    )
    .await;
    let ben_minutes = ben.group(&group_id).minutes(&meeting.id()).unwrap();
    let text = ben_minutes.read().await.unwrap().current.text;
    let utf16 = |needle: &str| text[..text.find(needle).unwrap()].encode_utf16().count() as u32;
    let monthly = utf16("monthly");

    let seen: Arc<Mutex<Vec<Vec<PeerCursor>>>> = Arc::default();
    let log = seen.clone();
    let watch = ben_minutes.subscribe_cursors(Arc::new(move |v: Vec<PeerCursor>| {
        log.lock().unwrap().push(v)
    }));
    let latest = move || seen.lock().unwrap().last().cloned();

    // Ana selects "monthly"; Ben sees her selection there.
    ana_minutes
        .set_cursor(Some(CursorRecord {
            anchor: monthly,
            head: monthly + 7,
        }))
        .await
        .unwrap();
    let l = latest.clone();
    eventually("Ben sees Ana's selection", move || {
        let v = l();
        async move {
            v.is_some_and(|v| {
                v.len() == 1
                    && v[0].anchor == monthly
                    && v[0].head == monthly + 7
                    && v[0].member_id.is_some()
            })
        }
    })
    .await;

    // Ben types before it: her selection stays on "monthly" as he sees it.
    ben_minutes
        .insert_text(utf16("meet"), "all ".to_owned())
        .await
        .unwrap();
    let l = latest.clone();
    eventually("her selection moved with the text", move || {
        let v = l();
        async move { v.is_some_and(|v| v.len() == 1 && v[0].anchor == monthly + 4) }
    })
    .await;
    let now = ben_minutes.cursors().await.unwrap();
    let read = ben_minutes.read().await.unwrap().current.text;
    let units: Vec<u16> = read.encode_utf16().collect();
    let selected =
        String::from_utf16(&units[now[0].anchor as usize..now[0].head as usize]).unwrap();
    assert_eq!(selected, "monthly");

    // Past the end is refused, not sent.
    let len = ana_minutes.read().await.unwrap().current.length;
    let err = ana_minutes
        .set_cursor(Some(CursorRecord {
            anchor: len + 10,
            head: len + 10,
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(err, cairn_core::app::CairnError::Invalid { .. }),
        "{err:?}"
    );

    // Ana leaves the minutes: Ben stops showing her at once.
    ana_minutes.set_cursor(None).await.unwrap();
    let l = latest.clone();
    eventually("her cursor is gone", move || {
        let v = l();
        async move { v.is_some_and(|v| v.is_empty()) }
    })
    .await;
    watch.cancel();
    for c in [ana, ben] {
        c.shutdown().await;
    }
    relay.shutdown().await;
}
