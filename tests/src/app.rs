//! Helpers for tests that drive the app API (`cairn_core::app`) against the real relay:
//! start a device, enrol it with an invite, wait for it to be online.

use std::path::Path;
use std::time::Duration;

use cairn_core::app::group::GroupProfile;
use cairn_core::app::membership::{InviteCode, InviteRequest};
use cairn_core::app::workspace::Enrolment;
use cairn_core::app::{Cairn, CairnConfig, ConnectionState};
use cairn_sync::docs::group::Role;

/// How long a helper waits before it fails the test.
pub const WAIT: Duration = Duration::from_secs(20);

/// A device's start-up settings: its data under `dir`, no relay yet, a fixed journal key,
/// London time.
pub fn config(dir: &Path, name: &str) -> CairnConfig {
    CairnConfig {
        data_dir: dir.to_string_lossy().into_owned(),
        relays: Vec::new(),
        journal_key: vec![9; 32],
        time_zone: "Europe/London".to_owned(),
        device_name: Some(name.to_owned()),
    }
}

/// A device that joined a group with `invite` under `pseudonym` through the relay at
/// `url`, and accepted its code of conduct; returns it and the group's id.
pub async fn joined(
    dir: &Path,
    name: &str,
    url: &str,
    invite: &str,
    pseudonym: &str,
) -> (Cairn, String) {
    let cairn = Cairn::start(config(dir, name)).expect("starting a device");
    let enrolment = enrol(&cairn, url, invite, pseudonym).await;
    (cairn, enrolment.group_id)
}

/// What a member does with an invite: preview it, join under `pseudonym`, accept the code
/// of conduct the preview showed.
pub async fn enrol(cairn: &Cairn, url: &str, invite: &str, pseudonym: &str) -> Enrolment {
    let preview = cairn
        .workspace()
        .preview_invite(url, invite)
        .await
        .expect("previewing the invite");
    let enrolment = cairn
        .workspace()
        .join(url, invite, pseudonym)
        .await
        .expect("joining");
    cairn
        .workspace()
        .accept_code_of_conduct(&enrolment.group_id, preview.code_of_conduct_version)
        .await
        .expect("accepting the code of conduct");
    enrolment
}

/// Polls `check` until it holds; fails the test after [`WAIT`].
pub async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until every relay of `cairn` is online.
pub async fn online(cairn: &Cairn) {
    let c = cairn.clone();
    eventually("online", move || {
        let c = c.clone();
        async move {
            let relays = c.relays();
            !relays.is_empty() && relays.iter().all(|r| r.state == ConnectionState::Online)
        }
    })
    .await;
}

/// The organiser's device: joined with the relay's first invite, online, the group set up
/// (settings and index), and an invite for `members` more members. Returns the device,
/// the group's id and the invite.
pub async fn organiser(
    dir: &Path,
    relay_url: &str,
    first_invite: &str,
    members: u32,
) -> (Cairn, String, InviteCode) {
    let (cairn, group_id) = joined(dir, "organiser-phone", relay_url, first_invite, "Robin").await;
    online(&cairn).await;
    let group = cairn.group(&group_id);
    group
        .set_up(GroupProfile::new("Peer support circle", "Monthly practice"))
        .await
        .expect("setting the group up");
    let invite = group
        .create_invite(InviteRequest {
            role: Role::Member,
            expires_in_secs: 600,
            max_uses: members,
            meeting_id: None,
            access_expires_in_secs: None,
        })
        .await
        .expect("inviting members");
    (cairn, group_id, invite)
}

/// Every byte of every file under `dir` (for byte searches of a device's or a relay's
/// files).
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("reading a directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            // A file removed meanwhile (a store rewrite) holds nothing.
            out.extend(bytes);
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn holds(haystack: &[u8], needle: impl AsRef<[u8]>) -> bool {
    let needle = needle.as_ref();
    haystack.windows(needle.len()).any(|w| w == needle)
}
