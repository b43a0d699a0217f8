//! The app API (`cairn_core::app`) lived as a phone app lives it, against the real relay
//! on loopback: joining with an invite, a whole meeting, losing the network and coming
//! back, leaving a group.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::app::meeting::{AgendaKind, MeetingKind, MeetingRecord, NewAgendaItem};
use cairn_core::app::{Cairn, CairnError, ConnectionState, Listener, RelayStatus};
use cairn_sync::docs::group::Role;
use cairn_sync::store::{SledConfig, SledStore, Storage};
use cairn_tests::app::{all_bytes, config, eventually, holds, joined, online, organiser, WAIT};
use cairn_tests::proxy::{Network, Proxy};
use cairn_tests::relay::TestRelay;

/// Opens the sled store in `dir` once the stopped client has let go of its lock.
async fn wait_for_store(dir: &Path) -> SledStore {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match SledStore::open(dir, &SledConfig::default()) {
            Ok(store) => return store,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "store not released: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Every byte of every file under `dir`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_with_an_invite_enrols_the_device_and_its_credential_never_reaches_the_disk() {
    let (relay, first) = TestRelay::start_with_membership().await;
    let dir = tempfile::tempdir().unwrap();
    let robin = Cairn::start(config(dir.path(), "robin-phone")).unwrap();
    let workspace = robin.workspace();

    let preview = workspace
        .preview_invite(&relay.url(), &first.link)
        .await
        .unwrap();
    assert_eq!(preview.role, Role::Organiser);
    assert!(!preview.code_of_conduct.is_empty());

    let enrolment = workspace
        .join(&relay.url(), &first.link, "Robin")
        .await
        .unwrap();
    let credential = enrolment
        .credential
        .clone()
        .expect("a new device's credential");
    assert_eq!(enrolment.group_id, preview.group_id);
    assert!(
        !format!("{enrolment:?}").contains(&credential),
        "Debug hides the credential"
    );

    // A used invite is refused with the error the app shows.
    let again = workspace.join(&relay.url(), &first.link, "Someone").await;
    assert_eq!(again.unwrap_err(), CairnError::InviteExpired);

    workspace
        .accept_code_of_conduct(&enrolment.group_id, preview.code_of_conduct_version)
        .await
        .unwrap();
    // The credential went to the connection: the relay lets the device in.
    online(&robin).await;
    let groups = workspace.groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group_id, enrolment.group_id);
    assert_eq!(groups[0].role, Role::Organiser);
    assert_eq!(groups[0].accepted_version, preview.code_of_conduct_version);

    robin.shutdown().await;
    drop(robin);
    // The keystore holds the credential; Cairn never writes it (nor its secret) to disk.
    let secret = credential.rsplit('_').next().unwrap();
    let bytes = all_bytes(dir.path());
    assert!(!bytes.is_empty());
    assert!(!holds(&bytes, &credential));
    assert!(!holds(&bytes, secret));
    relay.shutdown().await;
}

/// Records every value a listener gets, for a test to wait on.
struct Seen<T>(Arc<Mutex<Vec<T>>>);

impl<T: Clone + Send + 'static> Seen<T> {
    fn new() -> (Seen<T>, Arc<dyn Listener<T>>) {
        let values = Arc::new(Mutex::new(Vec::new()));
        let sink = values.clone();
        let listener: Arc<dyn Listener<T>> = Arc::new(move |v: T| sink.lock().unwrap().push(v));
        (Seen(values), listener)
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn last(&self) -> Option<T> {
        self.0.lock().unwrap().last().cloned()
    }

    /// Waits until the latest value satisfies `check`.
    async fn until(&self, what: &str, check: impl Fn(&T) -> bool) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(v) = self.last().filter(|v| check(v)) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_meeting_through_the_app_api_with_the_network_lost_and_back() {
    let (relay, first) = TestRelay::start_with_membership().await;
    let (robin_dir, ana_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (robin, group_id, invite) = organiser(robin_dir.path(), &relay.url(), &first.link, 1).await;
    let group = robin.group(&group_id);

    // Ana's phone reaches the relay through a network that can go away.
    let proxy = Proxy::start(relay.addr()).await;
    let (ana, _) = joined(
        ana_dir.path(),
        "ana-phone",
        &proxy.ws_url(),
        &invite.link,
        "Ana",
    )
    .await;
    online(&ana).await;
    let (states, state_listener) = Seen::new();
    let _states = ana.subscribe_relays(state_listener);

    // The organiser prepares the meeting; Ana's app subscribes to it.
    let meeting = group
        .create_meeting("March meeting".to_owned(), MeetingKind::Other)
        .await
        .unwrap();
    let check_in = meeting
        .add_agenda_item(NewAgendaItem {
            title: "Check-in".to_owned(),
            raised_by: None,
            time_box_minutes: Some(10),
            kind: AgendaKind::Case,
            notes: String::new(),
        })
        .await
        .unwrap();
    let report = robin.sync_now(10_000).await.unwrap();
    assert!(
        report.pending.is_empty(),
        "the organiser's meeting reached the relay"
    );

    let ana_meeting = ana.group(&group_id).meeting(&meeting.id()).unwrap();
    let (seen, listener) = Seen::new();
    let subscription = ana_meeting.subscribe(listener);
    let first_value = seen
        .until("Ana's app shows the agenda", |m: &MeetingRecord| {
            !m.agenda.is_empty()
        })
        .await;
    assert_eq!(first_value.agenda[0].id, check_in);
    assert_eq!(first_value.title, "March meeting");

    // Both write the minutes at once; both see both.
    let (robin_minutes, ana_minutes) = (meeting.minutes(), ana_meeting.minutes());
    robin_minutes
        .insert_text(0, "Robin: welcome. ".to_owned())
        .await
        .unwrap();
    ana_minutes
        .insert_text(0, "Ana: notes. ".to_owned())
        .await
        .unwrap();
    for minutes in [&robin_minutes, &ana_minutes] {
        let m = minutes.clone();
        eventually("both edits in both copies", move || {
            let m = m.clone();
            async move {
                let text = m.read().await.map(|r| r.current.text).unwrap_or_default();
                text.contains("Robin: welcome.") && text.contains("Ana: notes.")
            }
        })
        .await;
    }

    // Ana loses the network: her app says so, and she keeps working.
    proxy.set(Network::Down);
    states
        .until("Ana's app shows offline", |s: &Vec<RelayStatus>| {
            s.iter().all(|r| r.state != ConnectionState::Online)
        })
        .await;
    let offline_item = ana_meeting
        .add_agenda_item(NewAgendaItem {
            title: "Written on the train".to_owned(),
            raised_by: None,
            time_box_minutes: None,
            kind: AgendaKind::Case,
            notes: String::new(),
        })
        .await
        .unwrap();
    let pending = ana.sync_now(300).await.unwrap();
    assert!(
        pending.pending.contains(&ana_meeting.id()),
        "the offline edit is reported pending, not lost"
    );
    let robin_id = group.read().await.unwrap().my_member_id;
    let action = meeting
        .add_action("Book the room".to_owned(), robin_id, None)
        .await
        .unwrap();

    // The network comes back: her edit reaches the organiser, his reaches her app.
    proxy.set(Network::Up);
    states
        .until("Ana's app shows online", |s: &Vec<RelayStatus>| {
            s.iter().all(|r| r.state == ConnectionState::Online)
        })
        .await;
    let report = ana.sync_now(10_000).await.unwrap();
    assert!(
        report.pending.is_empty(),
        "everything of Ana's is on the relay"
    );
    seen.until(
        "the organiser's action reaches Ana's app",
        |m: &MeetingRecord| m.actions.iter().any(|a| a.id == action),
    )
    .await;
    let robin_meeting = meeting.clone();
    let offline = offline_item.clone();
    eventually("Ana's offline item reaches the organiser", move || {
        let (m, item) = (robin_meeting.clone(), offline.clone());
        async move {
            m.read()
                .await
                .is_ok_and(|r| r.agenda.iter().any(|i| i.id == item))
        }
    })
    .await;

    // Cancelled: no more callbacks, though changes still arrive.
    subscription.cancel();
    let delivered = seen.count();
    meeting
        .set_title("March meeting (moved)".to_owned())
        .await
        .unwrap();
    let m = ana_meeting.clone();
    eventually("the new title reaches Ana's device", move || {
        let m = m.clone();
        async move {
            m.read()
                .await
                .is_ok_and(|r| r.title == "March meeting (moved)")
        }
    })
    .await;
    assert_eq!(seen.count(), delivered, "no callback after cancel");
    drop(subscription);

    ana.shutdown().await;
    robin.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_group_wipes_its_documents_from_the_device() {
    let (relay, first) = TestRelay::start_with_membership().await;
    let (robin_dir, ana_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (robin, group_id, invite) = organiser(robin_dir.path(), &relay.url(), &first.link, 1).await;
    let group = robin.group(&group_id);
    let meeting = group
        .create_meeting("April meeting".to_owned(), MeetingKind::Other)
        .await
        .unwrap();
    let thread = group
        .create_thread("Readings", "Chapter 3 first")
        .await
        .unwrap();
    assert!(robin.sync_now(10_000).await.unwrap().pending.is_empty());

    let (ana, _) = joined(
        ana_dir.path(),
        "ana-phone",
        &relay.url(),
        &invite.link,
        "Ana",
    )
    .await;
    online(&ana).await;
    let ana_group = ana.group(&group_id);
    let record = ana_group.read().await.unwrap();
    assert_eq!(
        record.index.len(),
        2,
        "the meeting and the thread are listed"
    );
    ana_group
        .meeting(&meeting.id())
        .unwrap()
        .read()
        .await
        .unwrap();
    ana_group
        .thread(&thread.id())
        .unwrap()
        .read()
        .await
        .unwrap();
    assert!(ana.sync_now(10_000).await.unwrap().pending.is_empty());

    let wiped = ana.leave_group(&group_id).await.unwrap();
    assert!(
        wiped >= 5,
        "settings, roster, index, meeting and thread: {wiped}"
    );
    assert!(ana.workspace().groups().await.unwrap().is_empty());
    ana.shutdown().await;
    drop((ana, ana_group));

    // Nothing of the group is left in the phone's store (no key, no value holding its ids
    // or content); the organiser still has it all.
    let store = wait_for_store(&ana_dir.path().join("store")).await;
    let entries = store.load_range(&[]).unwrap();
    assert!(!entries.is_empty(), "the store is there");
    for (key, value) in &entries {
        for id in [meeting.id(), thread.id(), group_id.clone()] {
            assert!(
                !key.iter().any(|k| k.contains(&id)),
                "key {key:?} of the group is left"
            );
            assert!(!holds(value, &id), "a value under {key:?} names {id}");
        }
        assert!(!holds(value, "Chapter 3 first"), "content under {key:?}");
    }
    assert_eq!(meeting.read().await.unwrap().title, "April meeting");
    robin.shutdown().await;
    relay.shutdown().await;
}
