//! A member's data and a group's end, through the app API and a real relay: a member
//! exports what the relay holds about them and erases their account (their posts stay, by
//! a former member; their pseudonym is gone from what the relay serves); an organiser
//! deletes a group, restores it within the grace period, and after it the relay destroys
//! it so that a byte search of its data directory finds nothing of it.

use std::path::Path;
use std::time::Duration;

use cairn_core::app::{Cairn, CairnError, Thread, FORMER_MEMBER};
use cairn_relay::members::purge_due;
use cairn_tests::app::{all_bytes, enrol, eventually, holds, online, organiser};
use cairn_tests::relay::TestRelay;

/// A member's device joined to the organiser's group with `pseudonym`, online.
async fn member(dir: &Path, url: &str, invite: &str, pseudonym: &str) -> Cairn {
    let cairn = Cairn::start(cairn_tests::app::config(dir, "member-phone")).unwrap();
    enrol(&cairn, url, invite, pseudonym).await;
    online(&cairn).await;
    cairn
}

/// A relay whose group has an organiser (Robin) and a member (Sam, under `pseudonym`)
/// who started a thread with `post`, seen by Robin.
struct Circle {
    relay: TestRelay,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    robin: Cairn,
    sam: Cairn,
    group_id: String,
    /// The thread as Sam's device has it.
    thread: Thread,
    /// The same thread on Robin's device.
    seen_by_robin: Thread,
}

async fn circle(pseudonym: &str, post: &str) -> Circle {
    let (relay, first) = TestRelay::start_with_membership().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (robin, group_id, invite) = organiser(dirs.0.path(), &relay.url(), &first.link, 1).await;
    let sam = member(dirs.1.path(), &relay.url(), &invite.code, pseudonym).await;
    let thread = sam
        .group(&group_id)
        .create_thread("Readings", post)
        .await
        .unwrap();
    // Robin opens the thread at once, perhaps before it reaches the relay: asking again
    // fetches it once it is there.
    let seen_by_robin = robin.group(&group_id).thread(&thread.id()).unwrap();
    eventually("Robin sees Sam's post", || {
        let t = seen_by_robin.clone();
        async move { t.read().await.is_ok_and(|t| t.posts.len() == 1) }
    })
    .await;
    Circle {
        relay,
        _dirs: dirs,
        robin,
        sam,
        group_id,
        thread,
        seen_by_robin,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_exports_their_data_then_erases_their_account_and_their_posts_stay_by_a_former_member(
) {
    const PSEUDONYM: &str = "Canary-Pseudonym-Kw3";
    const POST: &str = "canary post text that stays after erasure";
    let Circle {
        relay,
        robin,
        sam,
        group_id,
        thread,
        seen_by_robin,
        // Kept to the end: the devices' data directories.
        _dirs,
    } = circle(PSEUDONYM, POST).await;
    let sam_id = thread.read().await.unwrap().posts[0].author.clone();
    let thread_id = thread.id();

    // The export: what the relay holds about Sam, and every document Sam may read.
    let export = sam.workspace().export_my_data(&relay.url()).await.unwrap();
    assert_eq!(export.member_id, sam_id);
    let record: serde_json::Value = serde_json::from_str(&export.relay_record_json).unwrap();
    assert!(
        export.relay_record_json.contains(PSEUDONYM),
        "their own pseudonym is their data"
    );
    assert_eq!(record["devices"].as_array().map(Vec::len), Some(1));
    assert!(record["audit"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "invite_redeemed"));
    let kinds: Vec<&str> = export.documents.iter().map(|d| d.kind.as_str()).collect();
    for kind in ["settings", "roster", "index", "thread"] {
        assert!(kinds.contains(&kind), "the export has the {kind} document");
    }
    let exported_thread = export
        .documents
        .iter()
        .find(|d| d.document_id == thread_id)
        .expect("the thread is exported");
    assert!(exported_thread.json.contains(POST));
    let loaded = automerge::Automerge::load(&exported_thread.automerge).unwrap();
    assert!(!loaded.get_heads().is_empty(), "the binary is the document");

    // The erasure.
    sam.workspace()
        .erase_my_account(&relay.url())
        .await
        .unwrap();
    assert!(sam.workspace().groups().await.unwrap().is_empty());
    let again = sam.workspace().export_my_data(&relay.url()).await;
    assert!(again.is_err(), "the erased device's credential is void");

    // Robin's view: the roster is rebuilt without Sam, Sam's post stays, by a former member.
    let group = robin.group(&group_id);
    eventually("the roster no longer lists Sam", || {
        let g = group.clone();
        let sam_id = sam_id.clone();
        async move {
            g.members()
                .await
                .is_ok_and(|r| r.members.iter().all(|m| m.member_id != sam_id))
        }
    })
    .await;
    let roster = group.members().await.unwrap();
    assert_eq!(roster.members.len(), 1, "Robin stays");
    assert_eq!(roster.name_of(&sam_id), FORMER_MEMBER);
    let posts = seen_by_robin.read().await.unwrap().posts;
    assert_eq!(posts.len(), 1);
    assert_eq!(
        (posts[0].text.as_str(), posts[0].author.as_str()),
        (POST, sam_id.as_str())
    );

    // Nothing the relay serves from now on holds the pseudonym: the new roster's whole
    // history (Robin's export of it comes from the relay: it is a new document) and the
    // membership API.
    let robins = robin
        .workspace()
        .export_my_data(&relay.url())
        .await
        .unwrap();
    let new_roster = robins
        .documents
        .iter()
        .find(|d| d.kind == "roster")
        .expect("Robin's export has the roster");
    assert!(!holds(&new_roster.automerge, PSEUDONYM));
    assert!(!new_roster.json.contains(PSEUDONYM));
    assert!(!robins.relay_record_json.contains(PSEUDONYM));
    let members = group.memberships().await.unwrap();
    assert!(members.iter().all(|m| m.pseudonym != PSEUDONYM));
    // The relay's data directory, once its rewrite has run, holds it nowhere.
    let data = relay.data_dir().to_owned();
    eventually("the relay's files no longer hold the pseudonym", || {
        let data = data.clone();
        async move { !holds(&all_bytes(&data), PSEUDONYM) }
    })
    .await;

    robin.shutdown().await;
    sam.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_group_is_restorable_within_its_grace_period_then_destroyed_to_the_last_byte() {
    const PSEUDONYM: &str = "Canary-Pseudonym-Jd8";
    const POST: &str = "canary words of a group that will be destroyed";
    let Circle {
        relay,
        robin,
        sam,
        group_id,
        thread,
        seen_by_robin,
        // Kept to the end: the devices' data directories.
        _dirs,
    } = circle(PSEUDONYM, POST).await;

    // A member may not delete the group; an organiser may.
    assert!(matches!(
        sam.group(&group_id).delete().await,
        Err(CairnError::Forbidden { .. })
    ));
    robin.group(&group_id).delete().await.unwrap();
    let summaries = robin.workspace().groups().await.unwrap();
    assert!(
        summaries
            .iter()
            .any(|g| g.group_id == group_id && g.deleted_ms.is_some()),
        "organisers still see the deleted group, to restore it"
    );
    // While deleted nobody syncs it: Sam's new post does not reach the relay.
    let relay_state = relay.state().clone();
    let late = thread
        .post("written while the group was deleted")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Within the grace period an organiser restores it, and everything is there.
    robin.group(&group_id).restore().await.unwrap();
    eventually("the group syncs again after its restore", || {
        let t = seen_by_robin.clone();
        let late = late.clone();
        async move {
            t.read()
                .await
                .is_ok_and(|t| t.posts.iter().any(|p| p.id == late))
        }
    })
    .await;

    // Deleted again; a purge before the grace period ends destroys nothing.
    robin.group(&group_id).delete().await.unwrap();
    let now = cairn_relay::api::now_ms();
    assert_eq!(purge_due(&relay_state, now).await.unwrap(), 0);
    let data = relay.data_dir().to_owned();
    let before = all_bytes(&data);
    assert!(
        holds(&before, POST) && holds(&before, PSEUDONYM),
        "the search is real: the group's words and names are in the relay's files before"
    );

    // Fifteen days later (the library's clock, not the binary's) the relay destroys it.
    let later = now + 15 * 24 * 3600 * 1000;
    assert_eq!(purge_due(&relay_state, later).await.unwrap(), 1);
    let after = all_bytes(&data);
    assert!(!holds(&after, POST), "no content of the group is left");
    assert!(
        !holds(&after, PSEUDONYM),
        "no pseudonym of the group is left"
    );
    let summaries = robin.workspace().groups().await.unwrap();
    assert!(summaries.iter().all(|g| g.group_id != group_id));
    assert!(matches!(
        robin.group(&group_id).restore().await,
        Err(CairnError::NotFound { .. })
    ));
    robin.shutdown().await;
    sam.shutdown().await;
    relay.shutdown().await;
}
