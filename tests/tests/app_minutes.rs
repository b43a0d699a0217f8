//! The minutes story through the app API and a real relay: two phones co-edit the same
//! minutes offline — Ana types inside a phrase Ben is bolding, Ben extends the bold across
//! her insertion — then both reconnect, and each ends with the same text and the exact
//! mark boundaries.

use cairn_core::app::meeting::MeetingKind;
use cairn_core::app::minutes::{BlockKind, MinutesText};
use cairn_tests::app::{eventually, joined, organiser};
use cairn_tests::proxy::{Network, Proxy};
use cairn_tests::relay::TestRelay;

/// UTF-16 index of the first occurrence of `needle` in the minutes text.
fn at(text: &MinutesText, needle: &str) -> u32 {
    let byte = text.text.find(needle).expect("needle in minutes");
    text.text[..byte].encode_utf16().count() as u32
}

/// The bold stretches of text, adjacent bold runs joined.
fn bold_spans(text: &MinutesText) -> Vec<String> {
    let mut spans = Vec::new();
    for paragraph in &text.paragraphs {
        let mut current: Option<String> = None;
        for run in &paragraph.runs {
            match (&mut current, run.bold) {
                (Some(s), true) => s.push_str(&run.text),
                (None, true) => current = Some(run.text.clone()),
                (Some(_), false) => spans.extend(current.take()),
                (None, false) => {}
            }
        }
        spans.extend(current);
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bolding_across_a_concurrent_insertion_survives_offline_editing_and_sync() {
    let (relay, first) = TestRelay::start_with_membership().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // The recorder sets up the group and the meeting while online.
    let (recorder, group_id, invite) =
        organiser(dirs[0].path(), &relay.url(), &first.link, 2).await;
    let group = recorder.group(&group_id);
    let meeting = group
        .create_meeting("Circle".to_owned(), MeetingKind::Training)
        .await
        .unwrap();
    let minutes = meeting.minutes();
    let end = minutes.read().await.unwrap().current.length;
    minutes
        .insert_paragraph(end, BlockKind::Paragraph)
        .await
        .unwrap();
    minutes
        .insert_text(
            end + 1,
            "The circle agreed to meet monthly online.".to_owned(),
        )
        .await
        .unwrap();
    assert!(recorder.sync_now(10_000).await.unwrap().pending.is_empty());

    // Ana and Ben have that copy on their phones, then lose the network.
    let (ana_net, ben_net) = (
        Proxy::start(relay.addr()).await,
        Proxy::start(relay.addr()).await,
    );
    let (ana, _) = joined(
        dirs[1].path(),
        "ana-phone",
        &ana_net.ws_url(),
        &invite.link,
        "Ana",
    )
    .await;
    let (ben, _) = joined(
        dirs[2].path(),
        "ben-phone",
        &ben_net.ws_url(),
        &invite.link,
        "Ben",
    )
    .await;
    let ana_minutes = ana.group(&group_id).minutes(&meeting.id()).unwrap();
    let ben_minutes = ben.group(&group_id).minutes(&meeting.id()).unwrap();
    let base = ana_minutes.read().await.unwrap().current;
    assert_eq!(base, ben_minutes.read().await.unwrap().current);
    ana_net.set(Network::Down);
    ben_net.set(Network::Down);

    let agreed = at(&base, "agreed");
    let monthly = at(&base, "monthly");
    let space_monthly = at(&base, " monthly");
    ana_minutes
        .insert_text(monthly, "twice ".to_owned())
        .await
        .unwrap();
    ben_minutes
        .set_bold(agreed, space_monthly, true)
        .await
        .unwrap();
    ben_minutes
        .set_bold(agreed, monthly + "monthly".len() as u32, true)
        .await
        .unwrap();

    // Back online.
    ana_net.set(Network::Up);
    ben_net.set(Network::Up);
    for m in [&ana_minutes, &ben_minutes] {
        let m = m.clone();
        eventually("both edits arrive", move || {
            let m = m.clone();
            async move {
                m.read().await.is_ok_and(|r| {
                    r.current.text.contains("twice monthly")
                        && bold_spans(&r.current).iter().any(|s| s.contains("twice"))
                })
            }
        })
        .await;
    }
    let a = ana_minutes.read().await.unwrap().current;
    let b = ben_minutes.read().await.unwrap().current;
    assert_eq!(a, b, "both phones read the same minutes");
    assert!(
        a.text
            .ends_with("The circle agreed to meet twice monthly online."),
        "{:?}",
        a.text
    );
    // Exactly one bold run: from "agreed" to the end of "monthly", covering Ana's "twice ".
    assert_eq!(
        bold_spans(&a),
        vec!["agreed to meet twice monthly".to_owned()]
    );
    for c in [recorder, ana, ben] {
        c.shutdown().await;
    }
    relay.shutdown().await;
}
