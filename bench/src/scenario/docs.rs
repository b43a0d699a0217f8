//! Document-size scenarios: cold start (many documents fetched by a new device) and a big
//! document (pushed change by change, then fetched).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use automerge::transaction::Transactable;
use automerge::{ChangeHash, ObjType, ReadDoc, ROOT};
use cairn_sync::engine::Event;
use cairn_sync::ids::DocumentId;

use cairn_bench::device::Device;
use cairn_bench::server::Server;

use super::{acked, sorted, wait_until, Phase, Row, Sizes};

/// Waits until the server acknowledges `heads` of `doc`: at most 240 s, and gives up
/// early once the server has been idle (no frame to us, no CPU used) for 10 s. The error
/// carries the moment the server went quiet.
async fn wait_for_ack(
    dev: &mut Device,
    server: &Server,
    doc: DocumentId,
    heads: &[ChangeHash],
) -> Result<(), (String, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut quiet_since = (Instant::now(), server.cpu().0);
    loop {
        if acked(dev, doc, heads) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err((
                "no acknowledgement of the last edit within 240 s".into(),
                now,
            ));
        }
        let stepped = dev
            .step_until((now + Duration::from_secs(1)).min(deadline))
            .await
            .map_err(|e| (format!("{e:#}"), Instant::now()))?;
        if stepped || server.cpu().0 > quiet_since.1 + 0.05 {
            quiet_since = (Instant::now(), server.cpu().0);
        } else if quiet_since.0.elapsed() >= Duration::from_secs(10) {
            return Err((
                "server went idle without acknowledging the last edit".into(),
                quiet_since.0,
            ));
        }
    }
}

// ---------------------------------------------------------------------------- cold start

/// One device stores `docs` documents of `changes_per_doc` changes each on the server; then
/// a new device fetches them all. Only the fetch is measured.
pub(crate) async fn cold(server: &Server, sizes: Sizes, epoch: Instant) -> anyhow::Result<Row> {
    let mut writer = Device::offline_with("bench-cold-writer", 7, epoch, sizes.client_debounce);
    let mut expected: BTreeMap<DocumentId, Vec<ChangeHash>> = BTreeMap::new();
    for d in 0..sizes.docs {
        let now = writer.now();
        let id = writer.engine.create_document(now, |tx| {
            tx.put(ROOT, "doc", d as i64)
                .expect("put on a new document");
        });
        for c in 1..sizes.changes_per_doc {
            writer
                .engine
                .change_document(now, id, |tx| tx.put(ROOT, "n", c as i64))?;
            writer.pump();
        }
        writer.pump();
        let heads = writer.engine.document(&id).expect("created").get_heads();
        expected.insert(id, sorted(heads));
    }
    writer.events.clear();
    let populate = Instant::now();
    writer.attach(&server.url()).await?;
    let mut waiting = expected.clone();
    wait_until(
        &mut writer,
        Instant::now() + Duration::from_secs(180),
        "the server to acknowledge every document",
        |w| {
            for e in w.events.drain(..) {
                if let Event::PeerHasHeads { doc, heads, .. } = e {
                    if waiting.get(&doc) == Some(&sorted(heads)) {
                        waiting.remove(&doc);
                    }
                }
            }
            waiting.is_empty()
        },
    )
    .await
    .with_context(|| format!("{} documents unacknowledged", waiting.len()))?;
    let populate_s = populate.elapsed().as_secs_f64();
    writer.disconnect();

    let mut reader = Device::connect_with(
        &server.url(),
        "bench-cold-reader",
        8,
        epoch,
        sizes.client_debounce,
    )
    .await?;
    let phase = Phase::begin(server);
    let now = reader.now();
    for id in expected.keys() {
        reader.engine.find(now, *id);
    }
    reader.pump();
    let mut missing: HashSet<DocumentId> = expected.keys().copied().collect();
    let result = wait_until(
        &mut reader,
        Instant::now() + Duration::from_secs(120),
        "every document",
        |r| {
            for e in std::mem::take(&mut r.events) {
                if let Event::DocumentChanged { doc, heads } = e {
                    if expected.get(&doc) == Some(&sorted(heads)) {
                        missing.remove(&doc);
                    }
                }
            }
            missing.is_empty()
        },
    )
    .await;
    let mut row = phase.end(server, server.kind.to_string(), missing.len() as u64);
    row.note = format!("populate {populate_s:.2} s");
    if let Err(e) = result {
        row.note += &format!("; {e:#}");
    }
    reader.disconnect();
    Ok(row)
}

// ------------------------------------------------------------------------- big document

/// Edits the big-document writer may make beyond the server's last acknowledgement.
const PUSH_WINDOW: usize = 256;

/// One device appends `big_edits` characters to one Text, one commit each, and waits for
/// the server's acknowledgement; then a new device fetches the document. Two rows.
pub(crate) async fn big(server: &Server, sizes: Sizes, epoch: Instant) -> anyhow::Result<Vec<Row>> {
    let mut writer = Device::connect_with(
        &server.url(),
        "bench-big-writer",
        9,
        epoch,
        sizes.client_debounce,
    )
    .await?;
    let now = writer.now();
    let id = writer.engine.create_document(now, |tx| {
        tx.put_object(ROOT, "text", ObjType::Text)
            .expect("put on a new document");
    });
    writer.pump();
    let text = writer
        .engine
        .document(&id)
        .and_then(|a| a.get(ROOT, "text").ok().flatten())
        .map(|(_, obj)| obj)
        .ok_or_else(|| anyhow!("the new document has no text"))?;
    let alphabet = b"abcdefghijklmnopqrstuvwxyz ";

    // The writer runs at most PUSH_WINDOW edits ahead of the server's acknowledgement (a
    // client that floods a single-threaded server gets its socket dropped for a late pong).
    // If acknowledgements stop for 2 s with the window full, it goes on anyway and counts a
    // stall.
    let phase = Phase::begin(server);
    let mut tip: std::collections::HashMap<ChangeHash, usize> = Default::default();
    let mut acked_upto = 0usize;
    let mut stalls = 0usize;
    for i in 0..sizes.big_edits {
        let mut last_progress = Instant::now();
        loop {
            for e in writer.events.drain(..) {
                if let Event::PeerHasHeads { heads, .. } = e {
                    if let [h] = heads.as_slice() {
                        if let Some(&n) = tip.get(h) {
                            if n > acked_upto {
                                acked_upto = n;
                                last_progress = Instant::now();
                            }
                        }
                    }
                }
            }
            if i < acked_upto + PUSH_WINDOW {
                break;
            }
            if last_progress.elapsed() >= Duration::from_secs(2) {
                stalls += 1;
                break;
            }
            writer
                .step_until(Instant::now() + Duration::from_millis(200))
                .await
                .with_context(|| format!("after {i} edits"))?;
        }
        let ch = alphabet[i % alphabet.len()] as char;
        let now = writer.now();
        let (_, heads) = writer.engine.change_document(now, id, |tx| {
            tx.splice_text(&text, i, 0, ch.encode_utf8(&mut [0; 4]))
        })?;
        if let [h] = heads.as_slice() {
            tip.insert(*h, i + 1);
        }
        writer.pump();
        if i % 64 == 63 {
            writer.poll_ready();
            tokio::task::yield_now().await;
        }
        if writer.closed {
            bail!(
                "the connection closed after {i} edits ({})",
                writer.close_reason()
            );
        }
    }
    let heads = sorted(writer.engine.document(&id).expect("ours").get_heads());
    let acked_ok = wait_for_ack(&mut writer, server, id, &heads).await;
    let started = phase.started;
    let mut push = phase.end(server, format!("{} push", server.kind), 0);
    if stalls > 0 {
        push.note = format!("{stalls} acknowledgement stalls of 2 s");
    }
    if let Err((e, quiet_at)) = acked_ok {
        push.wall_s = quiet_at.duration_since(started).as_secs_f64();
        push.note += &format!("; {e} (wall = until it went idle)");
    }
    writer.disconnect();

    let mut reader = Device::connect_with(
        &server.url(),
        "bench-big-reader",
        10,
        epoch,
        sizes.client_debounce,
    )
    .await?;
    let phase = Phase::begin(server);
    let now = reader.now();
    reader.engine.find(now, id);
    reader.pump();
    let got = wait_until(
        &mut reader,
        Instant::now() + Duration::from_secs(120),
        "the big document",
        |r| {
            r.events.clear();
            r.engine
                .document(&id)
                .is_some_and(|a| sorted(a.get_heads()) == heads)
        },
    )
    .await;
    let have = reader
        .engine
        .document(&id)
        .and_then(|a| {
            let (_, obj) = a.get(ROOT, "text").ok().flatten()?;
            Some(a.length(&obj))
        })
        .unwrap_or(0);
    let mut fetch = phase.end(
        server,
        format!("{} fetch", server.kind),
        sizes.big_edits.saturating_sub(have) as u64,
    );
    if let Err(e) = got {
        fetch.note = format!("{e:#}");
    }
    reader.disconnect();
    Ok(vec![push, fetch])
}
