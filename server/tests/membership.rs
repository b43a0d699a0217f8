//! A relay with membership, on loopback, against its rules: credentials on the upgrade,
//! invites that expire or are used up, groups that see nothing of each other, document
//! bindings, read-only peers whose edits go nowhere, removal and revocation that close
//! sockets before the call returns, peer ids bound to credentials, rate limits, and
//! revocation that survives a SIGKILL. Each test fails if its rule breaks.

mod common;

use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ReadDoc, ROOT};
use cairn_sync::ids::{DocumentId, PeerId};
use cairn_sync::wire::{DocMessage, Message};
use common::members::{call, call_with, redeem, upgrade, upgrade_with, Device, Group, Upgrade};
use common::{doc_id, http_get, load_stored, metric_value, Raw, Seen, SyncOutcome, SOON};
use serde_json::json;

/// How long a raw peer waits to call an exchange quiet.
const QUIET: Duration = Duration::from_millis(300);

/// A labelled or unlabelled metric's value from `/metrics` (0 when absent).
async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let (status, text) = http_get(addr, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200);
    metric_value(&text, name).unwrap_or(0.0)
}

/// A document with one field, as a device would create it.
fn doc_with(key: &str, value: &str) -> Automerge {
    let mut am = Automerge::new();
    let mut tx = am.transaction();
    tx.put(ROOT, key, value).expect("put");
    tx.commit();
    am
}

/// Syncs a copy of `doc` holding `am` and expects the relay to hold our heads.
async fn push(ws: &mut Raw, doc: DocumentId, am: &mut Automerge) {
    let outcome = ws.sync_doc(doc, am, &mut sync::State::new()).await;
    assert!(
        matches!(outcome, SyncOutcome::Acknowledged(_)),
        "the relay took the document: {outcome:?}"
    );
}

/// A fresh copy of `doc` as the relay serves it to `ws` (`None`: doc-unavailable).
async fn fetch(ws: &mut Raw, doc: DocumentId) -> Option<Automerge> {
    let mut am = Automerge::new();
    let mut state = sync::State::new();
    match ws.sync_doc(doc, &mut am, &mut state).await {
        SyncOutcome::Unavailable => return None,
        SyncOutcome::Acknowledged(_) => {}
    }
    // The first answer carries the relay's heads; keep going until we hold them all.
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        if let Some(m) = am.generate_sync_message(&mut state) {
            ws.send_sync(doc, m).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left.min(QUIET)).await {
            Seen::Frame(Message::Sync(d)) if d.document_id == doc => {
                let m = sync::Message::decode(&d.data).expect("valid sync");
                am.receive_sync_message(&mut state, m).expect("apply");
            }
            Seen::Frame(_) => {}
            Seen::Nothing => return Some(am),
            other => panic!("while fetching {doc}: {other:?}"),
        }
    }
}

/// Sends `frame` then a request for an unbound document, and returns everything the relay
/// sent before answering that request: every frame the engine queued for this socket
/// before it handled the request.
async fn until_barrier(ws: &mut Raw) -> Vec<Message> {
    let barrier = DocumentId::from_bytes(*cairn_sync::store::random_uuid().as_bytes());
    let am = Automerge::new();
    let m = am
        .generate_sync_message(&mut sync::State::new())
        .expect("a first sync message");
    ws.send(&Message::Request(DocMessage {
        sender_id: ws.peer.clone(),
        target_id: PeerId::from(cairn_relay::RELAY_PEER_ID),
        document_id: barrier,
        data: m.encode(),
    }))
    .await;
    let mut before = Vec::new();
    loop {
        match ws.next(SOON).await {
            Seen::Frame(Message::DocUnavailable { document_id, .. }) if document_id == barrier => {
                return before
            }
            Seen::Frame(m) => before.push(m),
            other => panic!("waiting for the barrier: {other:?}"),
        }
    }
}

fn ephemeral(from: &Raw, doc: DocumentId, count: u64, data: &[u8]) -> Message {
    Message::Ephemeral {
        sender_id: from.peer.clone(),
        target_id: PeerId::from(cairn_relay::RELAY_PEER_ID),
        document_id: doc,
        session_id: format!("{}-session", from.peer),
        count,
        data: data.to_vec(),
    }
}

/// Expects `error` "access revoked" and the close that follows. The engine may first
/// answer `doc-unavailable` for the documents the socket may no longer read; nothing else
/// comes first.
async fn expect_revoked(ws: &mut Raw) {
    loop {
        match ws.next(SOON).await {
            Seen::Frame(Message::DocUnavailable { .. }) => {}
            Seen::Frame(Message::Error { message }) => {
                assert_eq!(message, "access revoked");
                break;
            }
            other => panic!("expected `error` \"access revoked\", got {other:?}"),
        }
    }
    match ws.next(SOON).await {
        Seen::Closed => {}
        other => panic!("expected the close after `error`, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_rotated_and_revoked_credentials_get_401() {
    let g = Group::start(&[]).await;
    let url = g.url();
    let organiser = g.organiser.clone();
    // The control: a valid credential opens a socket, as a header and as `?token=`.
    assert_eq!(upgrade(&url, Some(&organiser.token)).await.status(), 101);
    assert_eq!(
        upgrade(&format!("{url}?token={}", organiser.token), None)
            .await
            .status(),
        101
    );
    let wrong_secret = format!(
        "{}{}",
        &organiser.token[..organiser.token.len() - 64],
        "0".repeat(64)
    );
    for token in [None, Some(wrong_secret.as_str()), Some("not-a-credential")] {
        let refused = upgrade(&url, token).await;
        assert_eq!(refused.status(), 401, "{token:?}");
        assert_eq!(
            refused.header("www-authenticate").as_deref(),
            Some("Bearer")
        );
        let api = call(g.addr(), "GET", "/v1/groups", token, None).await;
        assert_eq!((api.status, api.code()), (401, "unauthorized"), "{token:?}");
    }

    // Revoking a device closes its socket before the call returns; the credential is dead.
    let phone = g.link(&organiser).await;
    let mut live = Raw::joined_as(&url, &phone).await;
    assert_eq!(metric(g.addr(), "cairn_sockets").await, 1.0);
    g.call(
        &organiser,
        "DELETE",
        &format!("/v1/devices/{}", phone.device),
        None,
    )
    .await
    .expect(204);
    assert_eq!(
        metric(g.addr(), "cairn_sockets").await,
        0.0,
        "the revoked device's socket was gone when the call returned"
    );
    expect_revoked(&mut live).await;
    assert_eq!(upgrade(&url, Some(&phone.token)).await.status(), 401);
    assert_eq!(g.call(&phone, "GET", "/v1/devices", None).await.status, 401);

    // Rotating closes the sockets of the old credential, which is refused from then on.
    let laptop = g.link(&organiser).await;
    let mut old = Raw::joined_as(&url, &laptop).await;
    let rotated = g
        .call(&laptop, "POST", "/v1/devices/self/rotate", None)
        .await
        .expect(200);
    assert_eq!(metric(g.addr(), "cairn_sockets").await, 0.0);
    expect_revoked(&mut old).await;
    assert_eq!(upgrade(&url, Some(&laptop.token)).await.status(), 401);
    let new_token = rotated["token"].as_str().expect("token");
    assert_eq!(upgrade(&url, Some(new_token)).await.status(), 101);
    assert!(metric(g.addr(), "cairn_access_revocations_total").await >= 2.0);
    assert!(metric(g.addr(), "cairn_auth_failures_total").await >= 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_used_up_invites_answer_410() {
    let g = Group::start(&[]).await;
    let (organiser, group) = (g.organiser.clone(), g.group.clone());
    let once = g.invite_to(&organiser, &group, "member", 1, 3600).await;
    let preview = call(g.addr(), "GET", &format!("/v1/invites/{once}"), None, None)
        .await
        .expect(200);
    assert_eq!(preview["role"], "member");
    assert!(preview["code_of_conduct"]["text"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    redeem(g.addr(), &once, "first").await.expect(200);
    let again = redeem(g.addr(), &once, "second").await;
    assert_eq!((again.status, again.code()), (410, "invite_expired"));
    let used = call(g.addr(), "GET", &format!("/v1/invites/{once}"), None, None).await;
    assert_eq!(used.status, 410);

    let brief = g.invite_to(&organiser, &group, "member", 5, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let late = redeem(g.addr(), &brief, "late").await;
    assert_eq!((late.status, late.code()), (410, "invite_expired"));
    let unknown = redeem(g.addr(), "AAAAAAAAAAAAAAAAAAAA", "guess").await;
    assert_eq!(unknown.status, 404);
    // Bodies are bounded (128 KiB).
    let huge = json!({"code": once, "pseudonym": "x".repeat(200 * 1024)});
    let refused = call(g.addr(), "POST", "/v1/invites/redeem", None, Some(&huge)).await;
    assert_eq!((refused.status, refused.code()), (400, "bad_request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_another_group_gets_doc_unavailable_and_none_of_its_presence() {
    let g = Group::start(&[]).await;
    let organiser = g.organiser.clone();
    let b = g
        .call(
            &organiser,
            "POST",
            "/v1/groups",
            Some(json!({"pseudonym": "organiser", "code_of_conduct": "be kind"})),
        )
        .await
        .expect(201);
    let group_b = b["group_id"].as_str().expect("group id").to_owned();
    let meeting_b = doc_id(1);
    g.register_in(&organiser, &group_b, meeting_b, "meeting")
        .await
        .expect(201);
    let yan = g.join_group(&organiser, &group_b, "member", "yan").await;
    let xia = g.join("member", "xia").await;

    let url = g.url();
    let mut yan_ws = Raw::joined_as(&url, &yan).await;
    push(
        &mut yan_ws,
        meeting_b,
        &mut doc_with("agenda", "group B only"),
    )
    .await;
    let mut org_ws = Raw::joined_as(&url, &organiser).await;
    assert!(fetch(&mut org_ws, meeting_b).await.is_some());
    let mut xia_ws = Raw::joined_as(&url, &xia).await;

    // Xia knows the id, and gets the same answer as for a document that does not exist.
    assert_eq!(fetch(&mut xia_ws, meeting_b).await.map(|_| ()), None);

    // Yan's presence reaches the organiser (a member of B) and never Xia.
    yan_ws
        .send(&ephemeral(&yan_ws, meeting_b, 1, b"yan is here"))
        .await;
    // Xia's presence about B's document goes nowhere.
    xia_ws
        .send(&ephemeral(&xia_ws, meeting_b, 1, b"xia is here"))
        .await;
    let to_xia = until_barrier(&mut xia_ws).await;
    let to_org = until_barrier(&mut org_ws).await;
    let to_yan = until_barrier(&mut yan_ws).await;
    let presence = |seen: &[Message], who: &str| {
        seen.iter().any(|m| {
            matches!(m, Message::Ephemeral { sender_id, document_id, .. }
                if *document_id == meeting_b && sender_id.as_str() == who)
        })
    };
    assert!(
        presence(&to_org, &yan.peer()),
        "the control: B's members see each other's presence"
    );
    assert!(
        !to_xia
            .iter()
            .any(|m| matches!(m, Message::Ephemeral { .. } | Message::Sync(_))),
        "nothing of B reached Xia: {to_xia:?}"
    );
    assert!(!presence(&to_org, &xia.peer()) && !presence(&to_yan, &xia.peer()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_id_cannot_be_claimed_again_and_unbound_documents_are_not_stored() {
    let g = Group::start(&[]).await;
    let organiser = g.organiser.clone();
    let b = g
        .call(
            &organiser,
            "POST",
            "/v1/groups",
            Some(json!({"pseudonym": "organiser", "code_of_conduct": "be kind"})),
        )
        .await
        .expect(201);
    let group_b = b["group_id"].as_str().expect("group id").to_owned();
    let thread = doc_id(7);
    g.register(&organiser, thread, "thread").await.expect(201);
    // A retry of the same registration is answered the same (a lost answer).
    g.register(&organiser, thread, "thread").await.expect(201);
    let mia = g.join("member", "mia").await;
    // Another group never gets it, nor the same group under another kind; another writer of
    // the same group registering the same binding (a deterministic id two devices opened
    // offline) is answered the same.
    for (who, group, kind) in [
        (&organiser, &group_b, "thread"),
        (&mia, &g.group, "meeting"),
    ] {
        let taken = g.register_in(who, group, thread, kind).await;
        assert_eq!((taken.status, taken.code()), (409, "conflict"));
    }
    g.register_in(&mia, &g.group, thread, "thread")
        .await
        .expect(201);
    // The roster the relay writes is bound too.
    let groups = g.call(&mia, "GET", "/v1/groups", None).await.expect(200);
    let roster: DocumentId = groups[0]["documents"]["roster"]
        .as_str()
        .expect("roster id")
        .parse()
        .expect("a document id");
    assert_eq!(g.register(&mia, roster, "thread").await.status, 409);

    let mut ws = Raw::joined_as(&g.url(), &mia).await;
    let stray = doc_id(8);
    let outcome = ws
        .sync_doc(
            stray,
            &mut doc_with("text", "nobody registered me"),
            &mut sync::State::new(),
        )
        .await;
    assert_eq!(outcome, SyncOutcome::Unavailable);
    push(&mut ws, thread, &mut doc_with("text", "a bound thread")).await;
    drop(ws);

    // Bindings are durable: still taken after a restart.
    let g = g.restart().await;
    let retry = g.register_in(&organiser, &group_b, thread, "thread").await;
    assert_eq!(retry.status, 409);
    let dir = g.stop().await;
    let stored = load_stored(&dir.path().join("relay"), &[stray, thread]).await;
    assert!(
        stored[0].1.get_heads().is_empty(),
        "the unbound document was not stored"
    );
    assert_eq!(
        stored[1]
            .1
            .get(ROOT, "text")
            .expect("read")
            .map(|(v, _)| v.to_string()),
        Some("\"a bound thread\"".to_owned()),
        "the control: the bound one was"
    );
}

/// Edits `doc` (already synced into `am` with `state`) as a hostile raw peer: the change
/// is pushed in a sync message whether or not the relay asked for it. Then answers the
/// relay like an ordinary Automerge peer until it goes quiet, and returns the change's
/// hash. Fails if the relay says the document is unavailable, closes, or keeps talking.
async fn edit_until_quiet(
    ws: &mut Raw,
    doc: DocumentId,
    am: &mut Automerge,
    state: &mut sync::State,
    value: &str,
) -> automerge::ChangeHash {
    let mut tx = am.transaction();
    tx.put(ROOT, "title", value).expect("put");
    let (hash, _) = tx.commit();
    let hash = hash.expect("a change");
    let mut forced = am
        .generate_sync_message(&mut sync::State::new())
        .expect("a first message always goes");
    let change = am.get_change_by_hash(&hash).expect("our change");
    forced.changes = sync::ChunkList::from(vec![change.raw_bytes().to_vec()]);
    ws.send_sync(doc, forced).await;
    let mut frames = 0;
    loop {
        match ws.next(QUIET).await {
            Seen::Nothing => return hash,
            Seen::Frame(Message::Sync(d)) if d.document_id == doc => {
                frames += 1;
                assert!(frames < 20, "the exchange never went quiet");
                let m = sync::Message::decode(&d.data).expect("valid sync");
                am.receive_sync_message(state, m).expect("apply");
                if let Some(m) = am.generate_sync_message(state) {
                    ws.send_sync(doc, m).await;
                }
            }
            other => panic!("a read-only peer was answered {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_without_write_access_reach_nobody_and_the_document_stays_readable() {
    let g = Group::start(&[]).await;
    let organiser = g.organiser.clone();
    let (settings, meeting) = (doc_id(20), doc_id(21));
    g.register(&organiser, settings, "settings")
        .await
        .expect(201);
    g.register(&organiser, meeting, "meeting").await.expect(201);
    let mut org_ws = Raw::joined_as(&g.url(), &organiser).await;
    push(&mut org_ws, settings, &mut doc_with("title", "our group")).await;
    push(&mut org_ws, meeting, &mut doc_with("title", "tuesday")).await;

    // A member may not write settings; an observer may not write a meeting.
    let mia = g.join("member", "mia").await;
    let oli = g.join("observer", "oli").await;
    let mut edits = Vec::new();
    for (who, doc) in [(&mia, settings), (&oli, meeting)] {
        let mut ws = Raw::joined_as(&g.url(), who).await;
        let mut am = Automerge::new();
        let mut state = sync::State::new();
        assert!(matches!(
            ws.sync_doc(doc, &mut am, &mut state).await,
            SyncOutcome::Acknowledged(_)
        ));
        let hash = edit_until_quiet(&mut ws, doc, &mut am, &mut state, "hijacked").await;
        edits.push((doc, hash));
        // Still readable: a fresh request is served, not refused.
        assert!(
            fetch(&mut ws, doc).await.is_some(),
            "the document stays readable"
        );
    }
    assert!(
        metric(g.addr(), "cairn_rejections_total{reason=\"read_only\"}").await >= 2.0,
        "the relay saw and dropped both edits"
    );

    // Another member reads both documents: neither edit is there.
    let ned = g.join("member", "ned").await;
    let mut ned_ws = Raw::joined_as(&g.url(), &ned).await;
    for (doc, hash) in &edits {
        let copy = fetch(&mut ned_ws, *doc).await.expect("readable");
        assert!(
            copy.get_change_by_hash(hash).is_none(),
            "the edit reached a member"
        );
        assert_ne!(
            copy.get(ROOT, "title")
                .expect("read")
                .map(|(v, _)| v.to_string()),
            Some("\"hijacked\"".to_owned())
        );
    }
    // Nor the store.
    let dir = g.stop().await;
    let stored = load_stored(&dir.path().join("relay"), &[settings, meeting]).await;
    for ((_, am), (_, hash)) in stored.iter().zip(&edits) {
        assert!(
            !am.get_heads().is_empty(),
            "the control: the document is stored"
        );
        assert!(
            am.get_change_by_hash(hash).is_none(),
            "the edit reached the store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_socket_is_closed_when_the_removal_returns() {
    let g = Group::start(&[]).await;
    let organiser = g.organiser.clone();
    let meeting = doc_id(30);
    g.register(&organiser, meeting, "meeting").await.expect(201);
    let mia = g.join("member", "mia").await;
    let mut ws = Raw::joined_as(&g.url(), &mia).await;
    push(&mut ws, meeting, &mut doc_with("title", "notes")).await;
    assert_eq!(metric(g.addr(), "cairn_sockets").await, 1.0);

    g.call(
        &organiser,
        "DELETE",
        &format!("/v1/groups/{}/members/{}", g.group, mia.member),
        None,
    )
    .await
    .expect(204);
    assert_eq!(
        metric(g.addr(), "cairn_sockets").await,
        0.0,
        "her socket was gone when the removal returned"
    );
    expect_revoked(&mut ws).await;

    // Her device's credential still opens a socket (she may belong to other groups), but
    // the group's documents are unavailable to her, as if they did not exist.
    let mut again = Raw::joined_as(&g.url(), &mia).await;
    assert!(fetch(&mut again, meeting).await.is_none());
    let members = g
        .call(
            &mia,
            "GET",
            &format!("/v1/groups/{}/members", g.group),
            None,
        )
        .await;
    assert_eq!(members.status, 404);
    assert_eq!(
        metric(g.addr(), "cairn_membership_changes_total{kind=\"removed\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guests_socket_closes_when_their_access_expires() {
    let g = Group::start(&[]).await;
    let organiser = g.organiser.clone();
    let (meeting, thread) = (doc_id(40), doc_id(41));
    g.register(&organiser, meeting, "meeting").await.expect(201);
    g.register(&organiser, thread, "thread").await.expect(201);
    let mut org_ws = Raw::joined_as(&g.url(), &organiser).await;
    push(&mut org_ws, meeting, &mut doc_with("title", "open meeting")).await;
    push(&mut org_ws, thread, &mut doc_with("title", "members only")).await;
    let invite = g
        .call(
            &organiser,
            "POST",
            &format!("/v1/groups/{}/invites", g.group),
            Some(json!({
                "role": "observer", "expires_in_secs": 3600, "max_uses": 1,
                "meeting": meeting.to_string(), "access_expires_in_secs": 1
            })),
        )
        .await
        .expect(201);
    let redeemed = redeem(g.addr(), invite["code"].as_str().expect("code"), "guest")
        .await
        .expect(200);
    let guest = Device {
        token: redeemed["token"].as_str().expect("token").to_owned(),
        member: redeemed["member_id"].as_str().expect("member").to_owned(),
        device: redeemed["device_id"].as_str().expect("device").to_owned(),
    };
    g.accept(&guest, &g.group).await;
    let mut ws = Raw::joined_as(&g.url(), &guest).await;
    assert!(
        fetch(&mut ws, meeting).await.is_some(),
        "the guest reads the meeting"
    );
    assert!(fetch(&mut ws, thread).await.is_none(), "and nothing else");
    // About a second later the relay closes the guest's socket by itself.
    expect_revoked(&mut ws).await;
    let mut again = Raw::joined_as(&g.url(), &guest).await;
    assert!(fetch(&mut again, meeting).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_join_under_another_devices_peer_id() {
    let g = Group::start(&[]).await;
    let mia = g.join("member", "mia").await;
    let ned = g.join("member", "ned").await;
    for claimed in [
        ned.peer(),
        format!("{}/0000000000000000", mia.member),
        "anyone".into(),
    ] {
        let Upgrade::Open(mut ws) = upgrade(&g.url(), Some(&mia.token)).await else {
            panic!("mia's credential opens a socket");
        };
        ws.peer = claimed.clone().into();
        ws.send(&Message::Join {
            sender_id: ws.peer.clone(),
            peer_metadata: Default::default(),
            supported_protocol_versions: vec!["1".into()],
        })
        .await;
        ws.expect_error_then_close().await;
    }
    // The control: her own peer id is accepted.
    Raw::joined_as(&g.url(), &mia).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_invites_and_credentials_is_throttled() {
    let g = Group::start(&[]).await;
    // Invite codes: previews and redemptions share one budget per address (the fixture
    // spent one redeeming the organiser's invite).
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..12 {
        let r = call(
            g.addr(),
            "GET",
            &format!("/v1/invites/AAAAAAAAAAAAAAAAAA{i:02}"),
            None,
            None,
        )
        .await;
        statuses.push(r.status);
        if r.status == 429 {
            assert_eq!(r.code(), "quota_exceeded");
            retry_after = r.header("retry-after").map(str::to_owned);
            break;
        }
    }
    assert!(
        statuses.len() <= 10 && statuses[..statuses.len() - 1].iter().all(|s| *s == 404),
        "{statuses:?}"
    );
    assert!(retry_after
        .and_then(|s| s.parse::<u64>().ok())
        .is_some_and(|s| s >= 1));
    assert_eq!(
        redeem(g.addr(), "AAAAAAAAAAAAAAAAAAAA", "guess")
            .await
            .status,
        429
    );

    // Credentials: wrong ones get 401 until the address's budget is spent, then 429, and
    // then even the organiser's good credential is refused from that address.
    let wrong = format!(
        "{}{}",
        &g.organiser.token[..g.organiser.token.len() - 64],
        "f".repeat(64)
    );
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let refused = upgrade(&g.url(), Some(&wrong)).await;
        statuses.push(refused.status());
        if refused.status() == 429 {
            assert!(refused
                .header("retry-after")
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s >= 1));
            break;
        }
    }
    assert_eq!(statuses.len(), 11, "{statuses:?}");
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(
        upgrade(&g.url(), Some(&g.organiser.token)).await.status(),
        429
    );
    let api = g.call(&g.organiser, "GET", "/v1/groups", None).await;
    assert_eq!(api.status, 429);
    assert!(api.header("retry-after").is_some());
    for limit in ["invites_per_address", "failed_credentials"] {
        let name = format!("cairn_rate_limited_total{{limit=\"{limit}\"}}");
        assert!(metric(g.addr(), &name).await >= 1.0, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_limits_count_the_forwarded_address() {
    let flags = [
        "--trusted-proxies",
        "127.0.0.1",
        "--failed-credentials-burst",
        "2",
        "--upgrades-per-device-burst",
        "3",
    ];
    let g = Group::start(&flags).await;
    let wrong = format!(
        "{}{}",
        &g.organiser.token[..g.organiser.token.len() - 64],
        "f".repeat(64)
    );
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            upgrade_with(&g.url(), Some(&wrong), &from("192.0.2.1"))
                .await
                .status(),
        );
    }
    assert_eq!(statuses, [401, 401, 429]);
    let good = Some(g.organiser.token.as_str());
    assert_eq!(
        upgrade_with(&g.url(), good, &from("192.0.2.1"))
            .await
            .status(),
        429
    );
    // Another client behind the same proxy is not held back.
    assert_eq!(
        upgrade_with(&g.url(), good, &from("192.0.2.2"))
            .await
            .status(),
        101
    );
    // One device may upgrade only so often, from any address.
    assert_eq!(
        upgrade_with(&g.url(), good, &from("192.0.2.3"))
            .await
            .status(),
        101
    );
    assert_eq!(
        upgrade_with(&g.url(), good, &from("192.0.2.4"))
            .await
            .status(),
        101
    );
    assert_eq!(
        upgrade_with(&g.url(), good, &from("192.0.2.5"))
            .await
            .status(),
        429
    );
    let api = call_with(
        g.addr(),
        "GET",
        "/v1/groups",
        good,
        None,
        &from("192.0.2.1"),
    )
    .await;
    assert_eq!(api.status, 429);

    // A relay that trusts no proxy ignores the header: a client cannot pick its address.
    let h = Group::start(&["--failed-credentials-burst", "2"]).await;
    let mut statuses = Vec::new();
    for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        statuses.push(
            upgrade_with(&h.url(), Some(&wrong), &from(ip))
                .await
                .status(),
        );
    }
    assert_eq!(statuses, [401, 401, 429]);
}

/// `cairn-relay` as a child process, killed when dropped.
#[cfg(unix)]
struct Child {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

#[cfg(unix)]
impl Child {
    /// `cairn-relay serve` on `data` and a free loopback port, at TRACE level, its output
    /// appended to `log`. The port is the one the relay reports (a port picked beforehand
    /// could be taken by another test's relay in the meantime).
    async fn serve(data: &std::path::Path, log: &std::path::Path) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let from = out.metadata().expect("log metadata").len() as usize;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "off",
                "--data",
            ])
            .arg(data)
            .env("CAIRN_LOG", "trace")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .expect("spawn the relay binary");
        let deadline = tokio::time::Instant::now() + SOON;
        let addr = loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay did not start"
            );
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let new = text.get(from..).unwrap_or("");
            let listening = new.lines().find_map(|l| {
                l.contains(" listening")
                    .then(|| l.split("addr=").nth(1)?.split_whitespace().next())
                    .flatten()
            });
            if let Some(addr) = listening {
                break addr.parse().expect("a socket address");
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("the relay exited ({status}):\n{new}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        while http_get(addr, "/healthz").await != Some((200, "ok".into())) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay is not healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Child { child, addr }
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        self.child.kill().expect("kill the relay");
        let status = self.child.wait().expect("reap the relay");
        assert_eq!(status.signal(), Some(9), "the relay had exited on its own");
    }
}

#[cfg(unix)]
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cairn-relay bootstrap` with `args`: (succeeded, stdout, stderr).
#[cfg(unix)]
fn bootstrap_cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .arg("bootstrap")
        .args(args)
        .env("CAIRN_LOG", "trace")
        .output()
        .expect("run bootstrap");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value after `label` on a line of bootstrap's output.
#[cfg(unix)]
fn printed<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{stdout}"))
        .trim()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_survives_a_sigkill_and_no_secret_reaches_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("relay");
    let data_arg = data.to_str().expect("utf-8 path");
    let log = dir.path().join("relay.log");
    let coc_path = dir.path().join("coc.txt");
    let unique = cairn_sync::store::random_uuid().simple().to_string();
    let coc_text = format!("canary-code-of-conduct-{unique}");
    std::fs::write(&coc_path, &coc_text).expect("write the code of conduct");

    let (ok, stdout, stderr) = bootstrap_cli(&[
        "--data",
        data_arg,
        "--code-of-conduct-file",
        coc_path.to_str().expect("utf-8"),
    ]);
    assert!(ok, "bootstrap failed: {stderr}");
    let code = printed(&stdout, "code:").to_owned();
    assert_eq!(printed(&stdout, "link:"), format!("cairn://invite/{code}"));
    assert_eq!(
        stdout.matches(code.as_str()).count(),
        2,
        "the code is printed once, and once in its link, and never logged:\n{stdout}"
    );
    let group = printed(&stdout, "Created group")
        .trim_end_matches('.')
        .to_owned();

    let mut relay = Child::serve(&data, &log).await;
    let (addr, url) = (relay.addr, format!("ws://{}/", relay.addr));

    // Bootstrap refuses a store that a running relay holds.
    let (ok, _, stderr) = bootstrap_cli(&["--data", data_arg]);
    assert!(!ok && stderr.contains("in use"), "{stderr}");

    let pseudonym = format!("canary-pseudonym-{unique}");
    let redeemed = redeem(addr, &code, &pseudonym).await.expect(200);
    let organiser = Device {
        token: redeemed["token"].as_str().expect("token").to_owned(),
        member: redeemed["member_id"].as_str().expect("member").to_owned(),
        device: redeemed["device_id"].as_str().expect("device").to_owned(),
    };
    let link = call(
        addr,
        "POST",
        "/v1/devices/link-codes",
        Some(&organiser.token),
        None,
    )
    .await
    .expect(201);
    let link_code = link["code"].as_str().expect("code").to_owned();
    let linked = call(
        addr,
        "POST",
        "/v1/devices/link",
        None,
        Some(&json!({"code": link_code})),
    )
    .await
    .expect(200);
    let phone = Device {
        token: linked["token"].as_str().expect("token").to_owned(),
        member: linked["member_id"].as_str().expect("member").to_owned(),
        device: linked["device_id"].as_str().expect("device").to_owned(),
    };
    // The phone connects the way a browser does: the credential in the query string.
    let Upgrade::Open(mut ws) = upgrade(&format!("{url}?token={}", phone.token), None).await else {
        panic!("the phone's credential opens a socket");
    };
    ws.peer = phone.peer().into();
    ws.join().await;
    // It accepts the code of conduct and writes a document whose text is a canary.
    call(
        addr,
        "POST",
        &format!("/v1/groups/{group}/code-of-conduct/accept"),
        Some(&phone.token),
        Some(&json!({"version": 1})),
    )
    .await
    .expect(204);
    let doc = doc_id(90);
    let register = json!({"document_id": doc.to_string(), "kind": "meeting"});
    call(
        addr,
        "POST",
        &format!("/v1/groups/{group}/documents"),
        Some(&phone.token),
        Some(&register),
    )
    .await
    .expect(201);
    let content = format!("canary-content-{unique}");
    push(&mut ws, doc, &mut doc_with("minutes", &content)).await;
    let (_, metrics) = http_get(addr, "/metrics").await.expect("/metrics answers");

    call(
        addr,
        "DELETE",
        &format!("/v1/devices/{}", phone.device),
        Some(&organiser.token),
        None,
    )
    .await
    .expect(204);
    relay.kill();
    drop(ws);

    let mut relay = Child::serve(&data, &log).await;
    let (addr, url) = (relay.addr, format!("ws://{}/", relay.addr));
    assert_eq!(upgrade(&url, Some(&phone.token)).await.status(), 401);
    assert_eq!(
        call(addr, "GET", "/v1/devices", Some(&phone.token), None)
            .await
            .status,
        401
    );
    // The control: the organiser's own device still works, and sees the phone revoked.
    assert_eq!(upgrade(&url, Some(&organiser.token)).await.status(), 101);
    let devices = call(addr, "GET", "/v1/devices", Some(&organiser.token), None)
        .await
        .expect(200);
    let revoked: Vec<bool> = devices
        .as_array()
        .expect("a list")
        .iter()
        .filter(|d| d["device_id"] == phone.device.as_str())
        .map(|d| d["revoked"].as_bool().expect("revoked"))
        .collect();
    assert_eq!(revoked, [true]);
    relay.kill();

    // A second bootstrap refuses; the recovery path gives a new organiser invite.
    let (ok, _, stderr) = bootstrap_cli(&["--data", data_arg]);
    assert!(!ok && stderr.contains("already has groups"), "{stderr}");
    let (ok, stdout, stderr) =
        bootstrap_cli(&["--data", data_arg, "--new-organiser-invite", &group]);
    assert!(ok, "{stderr}");
    let recovery = printed(&stdout, "code:").to_owned();
    assert_ne!(recovery, code);

    let text = std::fs::read_to_string(&log).expect("read the log");
    assert!(
        text.contains("TRACE"),
        "no trace lines: the check would prove nothing"
    );
    let secret = |token: &str| token[token.len() - 64..].to_owned();
    for canary in [
        secret(&organiser.token),
        secret(&phone.token),
        code,
        link_code,
        pseudonym,
        coc_text,
        content,
    ] {
        assert!(!text.contains(&canary), "the relay's log holds {canary:?}");
        assert!(!metrics.contains(&canary), "/metrics holds {canary:?}");
    }
    for id in [&organiser.member, &phone.device, &group] {
        assert!(!metrics.contains(id.as_str()), "/metrics names {id}");
    }
}
