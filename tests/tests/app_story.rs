//! The app API (`cairn_core::app`) lived as a phone app lives it, against the real relay
//! on loopback: joining with an invite, a whole meeting, losing the network and coming
//! back, leaving a group.

use std::path::Path;
use std::time::Duration;

use cairn_core::app::{Cairn, CairnConfig, CairnError};
use cairn_sync::docs::group::Role;
use cairn_tests::relay::TestRelay;

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &Path, name: &str) -> CairnConfig {
    CairnConfig {
        data_dir: dir.to_string_lossy().into_owned(),
        relays: Vec::new(),
        journal_key: vec![9; 32],
        time_zone: "Europe/London".to_owned(),
        device_name: Some(name.to_owned()),
    }
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

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
    let credential = enrolment.credential.clone().expect("a new device's credential");
    assert_eq!(enrolment.group_id, preview.group_id);
    assert!(!format!("{enrolment:?}").contains(&credential), "Debug hides the credential");

    // A used invite is refused with the error the app shows.
    let again = workspace.join(&relay.url(), &first.link, "Someone").await;
    assert_eq!(again.unwrap_err(), CairnError::InviteExpired);

    workspace
        .accept_code_of_conduct(&enrolment.group_id, preview.code_of_conduct_version)
        .await
        .unwrap();
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
    assert!(!contains(&bytes, credential.as_bytes()));
    assert!(!contains(&bytes, secret.as_bytes()));
    relay.shutdown().await;
}
