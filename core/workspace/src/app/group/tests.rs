use super::fixture::{self, Collect};
use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn the_profile_is_read_and_updated_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cairn = fixture::cairn(&dir);
    let group = fixture::group(&rt, &cairn, "g-profile", "ana", Role::Organiser);
    rt.block_on(async {
        let mut p = group.profile().await.unwrap();
        assert_eq!(p, GroupProfile::new("Peer leads", "Practice"));
        p.meeting_place = Some(MeetingPlace {
            mode: MeetingMode::Hybrid,
            link: Some("https://meet.example/x".into()),
            address: Some("Room 4".into()),
        });
        p.intended_size = Some(8);
        p.start_date = Some("2025-01-01".into());
        p.end_date = Some("2025-12-31".into());
        p.state = GroupState::Renewing;
        p.crisis_support = Some(CrisisSupport {
            label: "Call now".into(),
            url: "tel:116123".into(),
        });
        group.update_profile(p.clone()).await.unwrap();
        assert_eq!(group.profile().await.unwrap(), p);

        group.set_name("Peer leads (north)").await.unwrap();
        group.set_start_here(Some("r1".into())).await.unwrap();
        let now = group.profile().await.unwrap();
        assert_eq!(now.name, "Peer leads (north)");
        assert_eq!(now.start_here.as_deref(), Some("r1"));

        let mut bad = now.clone();
        bad.end_date = Some("2024-12-31".into());
        assert!(matches!(
            group.update_profile(bad).await,
            Err(CairnError::Invalid { .. })
        ));
        assert!(matches!(
            group.set_dates(Some("1 March".into()), None).await,
            Err(CairnError::Invalid { .. })
        ));
        assert!(matches!(
            group.set_name("  ").await,
            Err(CairnError::Invalid { .. })
        ));
        assert_eq!(group.profile().await.unwrap(), now, "nothing changed");
    });
}

#[test]
fn a_member_cannot_change_the_profile_but_starts_threads() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cairn = fixture::cairn(&dir);
    let group = fixture::group(&rt, &cairn, "g-member", "ben", Role::Member);
    rt.block_on(async {
        assert!(matches!(
            group.set_name("Mine now").await,
            Err(CairnError::Forbidden { .. })
        ));
        let thread = group
            .create_thread("Check-in", "How is everyone?")
            .await
            .unwrap();
        let index = group.index().await.unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(index[0].id, thread.id());
        assert_eq!(index[0].kind, DocumentKind::Thread);
        assert_eq!(index[0].title, "Check-in");
        let same = group.thread(&index[0].id).unwrap();
        let record = same.read().await.unwrap();
        assert_eq!(record.posts.len(), 1);
        assert_eq!(record.posts[0].author, "ben");
        assert!(matches!(
            group.thread("not-an-id"),
            Err(CairnError::Invalid { .. })
        ));
    });
}

#[test]
fn a_thread_needs_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cairn = fixture::cairn(&dir);
    let group = fixture::group(&rt, &cairn, "g-noindex", "ana", Role::Organiser);
    let mut ctx = fixture::context(&cairn, &group.group).unwrap();
    ctx.index = None;
    fixture::set_context(&cairn, &group.group, ctx);
    rt.block_on(async {
        let before = cairn
            .inner
            .client
            .with_engine(|e| e.document_ids().len())
            .await
            .unwrap();
        assert!(matches!(
            group.create_thread("t", "first").await,
            Err(CairnError::NotFound { .. })
        ));
        let after = cairn
            .inner
            .client
            .with_engine(|e| e.document_ids().len())
            .await
            .unwrap();
        assert_eq!(before, after, "no unlisted thread was created");
        assert!(group.read().await.unwrap().needs_set_up);
    });
}

#[test]
fn the_group_screen_combines_profile_roster_and_index_until_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cairn = fixture::cairn(&dir);
    let group = fixture::group(&rt, &cairn, "g-screen", "ana", Role::Organiser);
    let seen = Collect::<GroupRecord>::new();
    let sub = group.subscribe(seen.clone());
    let first = seen.wait_until("the first record", |v| !v.is_empty());
    let record = &first[0];
    assert_eq!(record.profile.as_ref().unwrap().name, "Peer leads");
    let roster = record.roster.as_ref().unwrap();
    assert_eq!(roster.members[0].pseudonym, "Ana");
    assert!(roster.members[0].accepted_current_code);
    assert_eq!(roster.code_of_conduct.text, "Be kind.");
    assert_eq!(record.my_role, Role::Organiser);
    assert!(!record.needs_set_up);
    assert_eq!(record, &rt.block_on(group.read()).unwrap());

    rt.block_on(group.set_purpose("Reflect together")).unwrap();
    seen.wait_until("the new purpose", |v| {
        v.last()
            .and_then(|r| r.profile.as_ref())
            .is_some_and(|p| p.purpose == "Reflect together")
    });
    rt.block_on(group.create_thread("Readings", "Chapter 2?"))
        .unwrap();
    seen.wait_until("the new thread in the index", |v| {
        v.last().is_some_and(|r| r.index.len() == 1)
    });

    sub.cancel();
    let delivered = seen.count();
    rt.block_on(group.set_purpose("After cancel")).unwrap();
    rt.block_on(group.create_thread("Later", "x")).unwrap();
    // A fresh subscription sees both changes: the cancelled one was woken by them too.
    let later = Collect::<GroupRecord>::new();
    let _live = group.subscribe(later.clone());
    later.wait_until("the changes after cancel", |v| {
        v.last().is_some_and(|r| r.index.len() == 2)
    });
    assert_eq!(seen.count(), delivered, "nothing after cancel");
}

#[test]
fn the_resources_document_is_created_once_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cairn = fixture::cairn(&dir);
    let group = fixture::group(&rt, &cairn, "g-res", "ana", Role::Member);
    rt.block_on(async {
        let first = group.resources().await.unwrap();
        let again = group.resources().await.unwrap();
        assert_eq!(first.id(), again.id());
        let index = group.index().await.unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(index[0].kind, DocumentKind::Resources);
        assert_eq!(index[0].title, RESOURCES_TITLE);
    });
}
