//! A group on a relay with membership, end to end: the core client's membership calls
//! (redeem, accept, invite, register, roles, removal), the unmodified JS
//! `@automerge/automerge-repo` client with its credential in the query string, a raw samod
//! peer as an observer trying to write, and the roster document the relay writes.

use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc, ROOT};
use cairn_core::model::group::Role;
use cairn_core::model::roster;
use cairn_sync::client::{Client, ClientConfig, ClientError, RelayApi};
use cairn_sync::membership::api::CreateInvite;
use cairn_sync::membership::{BoundKind, Credential, GroupId};
use cairn_sync::store::MemoryStore;
use cairn_tests::relay::{NodeProcess, TestRelay};
use cairn_tests::samod_peer::{ConnectOptions, SamodPeer};

const WAIT: Duration = Duration::from_secs(15);
/// Longer than the Node programs' own 30 s deadline, so theirs reports first.
const NODE_LIMIT: Duration = Duration::from_secs(45);

fn api(relay: &TestRelay) -> RelayApi {
    RelayApi::over_http(&format!("http://{}", relay.addr()))
}

/// A device that redeemed `code` and accepted the group's code of conduct.
async fn enrol(relay: &TestRelay, code: &str, pseudonym: &str) -> (Credential, GroupId) {
    let enrolled = api(relay).redeem_invite(code, pseudonym).await.unwrap();
    let credential = enrolled
        .credential
        .expect("a new device gets its credential");
    let group = enrolled.group.expect("the group joined");
    let me = api(relay).with_credential(credential.clone());
    me.accept_code_of_conduct(&group.group_id, group.code_of_conduct_version)
        .await
        .unwrap();
    (credential, group.group_id)
}

async fn invite(organiser: &RelayApi, group: &GroupId, role: Role) -> String {
    organiser
        .create_invite(
            group,
            &CreateInvite {
                role,
                expires_in_secs: 600,
                max_uses: 1,
                meeting: None,
                access_expires_in_secs: None,
            },
        )
        .await
        .unwrap()
        .link
}

fn client(relay: &TestRelay, credential: &Credential) -> Client {
    let client = Client::start(
        Arc::new(MemoryStore::default()),
        ClientConfig::for_device(credential.clone()),
    )
    .unwrap();
    client.connect(&relay.url());
    client
}

fn notes(doc: &automerge::Automerge) -> String {
    doc.get(ROOT, "notes")
        .ok()
        .flatten()
        .and_then(|(_, id)| doc.text(&id).ok())
        .unwrap_or_default()
}

/// The websocket URL with the device credential as the browser form, `?token=`.
fn token_url(relay: &TestRelay, credential: &Credential) -> String {
    format!("{}?token={}", relay.url(), credential.as_str())
}

async fn node(script: &str, args: &[&str], peer: &str) -> serde_json::Value {
    NodeProcess::spawn_with_env(script, args, &[("CAIRN_PEER_ID", peer)])
        .unwrap_or_else(|e| panic!("{e}"))
        .finish(NODE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_syncs_through_the_core_client_js_and_samod_as_roles_allow() {
    let (relay, first) = TestRelay::start_with_membership().await;
    let (org_cred, group) = enrol(&relay, &first.link, "Robin").await;
    let organiser = api(&relay).with_credential(org_cred.clone());
    let org = client(&relay, &org_cred);

    // The organiser's client creates a thread in the group: registered, then synced.
    let thread = org
        .create_in_group(&group, BoundKind::Thread, |tx| {
            let notes = tx.put_object(ROOT, "notes", ObjType::Text).unwrap();
            tx.splice_text(&notes, 0, 0, "hello").unwrap();
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap()
        .0;
    if let Err(e) = org.wait_acknowledged(thread, WAIT).await {
        panic!(
            "{e}: connection {:?}, registrations {:?}",
            org.connection_status(),
            org.registrations()
        );
    }

    // A member with the unmodified JS client, credential in the query string, writes.
    let (ana, _) = enrol(
        &relay,
        &invite(&organiser, &group, Role::Member).await,
        "Ana",
    )
    .await;
    let ana_peer = ana.peer_id().to_string();
    let ana_url = token_url(&relay, &ana);
    let thread_id = thread.to_string();
    node(
        "live.mjs",
        &[&ana_url, &thread_id, "write", " from js"],
        &ana_peer,
    )
    .await;
    org.wait_for(thread, WAIT, |d| notes(d).contains("from js"))
        .await
        .unwrap();

    // An observer reads through JS (the relay's read-only sync messages parse there)...
    let (obs, _) = enrol(
        &relay,
        &invite(&organiser, &group, Role::Observer).await,
        "Ob",
    )
    .await;
    let obs_peer = obs.peer_id().to_string();
    let read = node(
        "read.mjs",
        &[&token_url(&relay, &obs), &thread_id],
        &obs_peer,
    )
    .await;
    assert_eq!(read["doc"]["notes"], "hello from js");

    // ...and its edit, sent by a raw samod peer, never reaches a member or the relay, while
    // the document stays readable to it.
    let samod = SamodPeer::connect_with(
        &token_url(&relay, &obs),
        ConnectOptions {
            peer_id: Some(obs_peer.clone()),
            ..ConnectOptions::default()
        },
    )
    .await
    .unwrap();
    let seen = samod
        .find(&thread_id)
        .await
        .unwrap()
        .expect("readable to the observer");
    seen.change_local(|tx| {
        let (_, notes) = tx.get(ROOT, "notes").unwrap().unwrap();
        let len = tx.length(&notes);
        tx.splice_text(&notes, len, 0, " OBSERVER").unwrap();
    })
    .await
    .unwrap();
    org.change(thread, |tx| {
        let (_, notes) = tx.get(ROOT, "notes").unwrap().unwrap();
        let len = tx.length(&notes);
        tx.splice_text(&notes, len, 0, " later")
    })
    .await
    .unwrap();
    seen.wait_for(|v| v["notes"].as_str().is_some_and(|n| n.contains("later")))
        .await
        .expect("the observer keeps reading");
    let fresh = node("read.mjs", &[&ana_url, &thread_id], &ana_peer).await;
    let text = fresh["doc"]["notes"].as_str().unwrap().to_owned();
    assert!(
        text.contains("later") && !text.contains("OBSERVER"),
        "{text}"
    );
    assert!(!org
        .read(thread, notes)
        .await
        .unwrap()
        .unwrap()
        .contains("OBSERVER"));
    samod.shutdown().await;

    // The roster the relay writes shows the three members with their roles, and follows
    // a role change made through the API.
    let roster_doc = organiser.groups().await.unwrap()[0]
        .documents
        .roster
        .expect("the group's roster");
    org.find(roster_doc, WAIT).await.unwrap();
    let ana_member = ana.identity().member.clone();
    organiser
        .set_role(&group, &ana_member, Role::Recorder)
        .await
        .unwrap();
    org.wait_for(roster_doc, WAIT, move |d| {
        roster::members(d).is_ok_and(|ms| {
            ms.len() == 3
                && ms
                    .iter()
                    .any(|m| m.member_id == ana_member && m.role == Role::Recorder)
        })
    })
    .await
    .unwrap();
    let shown = org
        .read(roster_doc, |d| roster::members(d).unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut names: Vec<_> = shown.iter().map(|m| m.pseudonym.as_str()).collect();
    names.sort();
    assert_eq!(names, ["Ana", "Ob", "Robin"]);
    let ana_client = client(&relay, &ana);
    ana_client.find(thread, WAIT).await.unwrap();

    // Removing a member closes their client's socket before the call returns; their
    // credential still authenticates (they may be in other groups) but the group's
    // documents are unavailable to them from then on.
    organiser
        .remove_member(&group, &ana.identity().member)
        .await
        .unwrap();
    let after = ana_client.find(roster_doc, Duration::from_secs(5)).await;
    assert!(
        matches!(
            after,
            Err(ClientError::Unavailable(_)) | Err(ClientError::Timeout)
        ),
        "{after:?}"
    );
    ana_client.shutdown().await;
    org.shutdown().await;
    relay.shutdown().await;
}
