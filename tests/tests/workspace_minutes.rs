//! The minutes story through a real relay: two phones co-edit the same minutes offline — Ana
//! types inside a phrase Ben is bolding, Ben extends the bold across her insertion — then
//! both reconnect, and each ends with the same text and the exact mark boundaries.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::model::meeting::{self, OneOffKind};
use cairn_core::model::minutes::{self, BlockKind, RichText};
use cairn_sync::client::{Client, ClientConfig};
use cairn_sync::store::MemoryStore;
use cairn_tests::relay::TestRelay;

const SOON: Duration = Duration::from_secs(20);

fn phone(name: &str) -> Client {
    Client::start(Arc::new(MemoryStore::default()), ClientConfig::new(name)).expect("client starts")
}

/// UTF-16 index of the first occurrence of `needle` in the minutes text.
fn at(rich: &RichText, needle: &str) -> usize {
    let byte = rich.text.find(needle).expect("needle in minutes");
    rich.text[..byte].encode_utf16().count()
}

fn bold_spans(rich: &RichText) -> Vec<String> {
    rich.spans
        .iter()
        .filter(|s| s.marks.bold)
        .map(|s| rich.slice_utf16(s.start..s.end).expect("span in range"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bolding_across_a_concurrent_insertion_survives_offline_editing_and_sync() {
    let relay = TestRelay::start().await;
    // The recorder sets up the meeting while online.
    let recorder = phone("recorder/phone");
    recorder.connect(&relay.url());
    let doc = recorder
        .create(|tx| {
            meeting::init(tx, OneOffKind::Training, "Circle").expect("meeting");
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .expect("create")
        .0;
    let end = recorder
        .read(doc, |d| {
            minutes::read_minutes(d)
                .expect("minutes")
                .text
                .encode_utf16()
                .count()
        })
        .await
        .expect("read")
        .expect("loaded");
    recorder
        .change(doc, move |tx| {
            minutes::insert_paragraph(tx, end, BlockKind::Paragraph)?;
            minutes::insert_text(tx, end + 1, "The circle agreed to meet monthly online.")
        })
        .await
        .expect("type");
    let bytes = recorder
        .read(doc, |d| d.save())
        .await
        .expect("read")
        .expect("loaded");

    // Ana and Ben have that copy on their phones and are offline.
    let ana = phone("ana/phone");
    let ben = phone("ben/phone");
    ana.import(doc, bytes.clone()).await.expect("ana has it");
    ben.import(doc, bytes).await.expect("ben has it");
    let base = ana
        .read(doc, |d| minutes::read_minutes(d).expect("minutes"))
        .await
        .expect("read")
        .expect("loaded");
    let agreed = at(&base, "agreed");
    let monthly = at(&base, "monthly");
    let space_monthly = at(&base, " monthly");

    ana.change(doc, move |tx| minutes::insert_text(tx, monthly, "twice "))
        .await
        .expect("ana types");
    ben.change(doc, move |tx| {
        minutes::set_bold(tx, agreed..space_monthly, true)
    })
    .await
    .expect("ben bolds");
    ben.change(doc, move |tx| {
        minutes::set_bold(tx, agreed..monthly + "monthly".len(), true)
    })
    .await
    .expect("ben extends the bold");

    // Back online.
    ana.connect(&relay.url());
    ben.connect(&relay.url());
    for p in [&ana, &ben] {
        p.wait_for(doc, SOON, |d| {
            minutes::read_minutes(d)
                .map(|m| {
                    m.text.contains("twice monthly")
                        && bold_spans(&m).iter().any(|s| s.contains("twice"))
                })
                .unwrap_or(false)
        })
        .await
        .expect("both edits arrive");
    }
    let read = |c: Client| async move {
        c.read(doc, |d| minutes::read_minutes(d).expect("minutes"))
            .await
            .expect("read")
            .expect("loaded")
    };
    let (a, b) = (read(ana.clone()).await, read(ben.clone()).await);
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
