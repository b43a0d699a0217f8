//! How changes flow under load: a busy document's fan-out does not wait for a moment with
//! no write in flight, the messages that waited for a write are applied and written
//! together, and a client's announcements are debounced.

use std::time::Duration;

use super::access::{get, put, Net};
use super::T0;
use crate::engine::DEFAULT_SYNC_DEBOUNCE;
use crate::time::Timestamp;
use crate::wire::Message;

/// Three phones with one shared document, every copy synced.
fn three_on_one() -> (Net, crate::ids::DocumentId) {
    three_on(Net::new())
}

/// Three phones on `net` with one shared document, every copy synced.
fn three_on(mut net: Net) -> (Net, crate::ids::DocumentId) {
    for (name, seed) in [("ana", 1), ("ben", 2), ("cleo", 3)] {
        net.phone(name, seed);
    }
    let doc = net.phones[0].0.engine.create_document(T0, |_| {});
    put(&mut net.phones[0].0, T0, doc, "title", "Minutes");
    net.pump();
    for i in 1..3 {
        net.phones[i].0.engine.find(T0, doc);
    }
    net.pump();
    for (phone, _) in &net.phones {
        assert_eq!(
            get(phone.engine.document(&doc).unwrap(), "title").as_deref(),
            Some("Minutes")
        );
    }
    (net, doc)
}

fn has(net: &Net, phone: usize, doc: crate::ids::DocumentId, key: &str) -> Option<String> {
    get(net.phones[phone].0.engine.document(&doc).unwrap(), key)
}

#[test]
fn a_busy_documents_fan_out_goes_out_after_each_write_not_after_a_gap() {
    let (mut net, doc) = three_on_one();
    net.relay.hold_writes = true;
    put(&mut net.phones[0].0, T0, doc, "ana", "1");
    net.pump();
    assert_eq!(net.relay.held.len(), 1, "ana's change is being written");
    // Ben types while that write is in flight: his message waits for it, so the relay's
    // document holds nothing that is not durable beyond the one write.
    put(&mut net.phones[1].0, T0, doc, "ben", "2");
    net.pump();
    assert_eq!(net.relay.held.len(), 1, "ben's change waits for the write");
    let relay_copy = net.relay.engine.document(&doc).unwrap();
    assert_eq!(get(relay_copy, "ben"), None);
    assert_eq!(
        has(&net, 2, doc, "ana"),
        None,
        "nothing revealed before it is durable"
    );

    // The first write completes while Ben's is about to be in flight: Cleo hears of
    // Ana's change at once (with the old gate she waited for a moment with no write).
    net.relay.release(T0);
    net.pump();
    assert_eq!(net.relay.held.len(), 1, "ben's change is now being written");
    assert_eq!(has(&net, 2, doc, "ana").as_deref(), Some("1"));
    assert_eq!(has(&net, 1, doc, "ana").as_deref(), Some("1"));
    assert_eq!(
        has(&net, 2, doc, "ben"),
        None,
        "ben's change is not durable yet"
    );

    net.relay.release(T0);
    net.pump();
    for i in 0..3 {
        assert_eq!(has(&net, i, doc, "ana").as_deref(), Some("1"));
        assert_eq!(has(&net, i, doc, "ben").as_deref(), Some("2"));
    }
}

#[test]
fn messages_that_waited_for_a_write_are_written_as_one_chunk() {
    let (mut net, doc) = three_on_one();
    net.relay.hold_writes = true;
    put(&mut net.phones[0].0, T0, doc, "ana", "1");
    net.pump();
    put(&mut net.phones[1].0, T0, doc, "ben", "2");
    put(&mut net.phones[2].0, T0, doc, "cleo", "3");
    net.pump();
    assert_eq!(net.relay.held.len(), 1);
    let mut relay_copy = net.relay.engine.document(&doc).unwrap().clone();
    net.relay.release(T0);
    net.pump();
    // Ben's and Cleo's changes went in together: one write, holding both.
    assert_eq!(
        net.relay.held.len(),
        1,
        "one write for both waiting messages"
    );
    let crate::store::StorageOp::Put { data, .. } = &net.relay.held[0].1 else {
        panic!("a chunk write");
    };
    assert_eq!(
        relay_copy.load_incremental(data).unwrap(),
        2,
        "the chunk holds both changes"
    );
    assert_eq!(get(&relay_copy, "ben").as_deref(), Some("2"));
    assert_eq!(get(&relay_copy, "cleo").as_deref(), Some("3"));
    net.relay.release(T0);
    net.pump();
    for i in 0..3 {
        assert_eq!(has(&net, i, doc, "cleo").as_deref(), Some("3"));
        assert_eq!(has(&net, i, doc, "ben").as_deref(), Some("2"));
    }
}

/// Sync messages phone `i` has sent so far.
fn syncs_sent(net: &Net, i: usize) -> usize {
    net.phones[i]
        .0
        .sent
        .iter()
        .filter(|m| matches!(m, Message::Sync(_) | Message::Request(_)))
        .count()
}

/// Moves the clock to `ms` and runs every timer due by then, as a host does.
fn at(net: &mut Net, ms: u64) -> Timestamp {
    let now = Timestamp::from_millis(ms);
    net.now = now;
    for (phone, _) in &mut net.phones {
        phone.engine.handle_timeout(now);
    }
    net.relay.engine.handle_timeout(now);
    net.pump();
    now
}

#[test]
fn a_typing_client_announces_its_changes_together_once_per_debounce() {
    let mut net = Net::new();
    let writer = net.phone_with("ana", 1, DEFAULT_SYNC_DEBOUNCE);
    let reader = net.phone("ben", 2);
    let doc = net.phones[writer].0.engine.create_document(T0, |tx| {
        automerge::transaction::Transactable::put(tx, automerge::ROOT, "k", "0").unwrap();
    });
    net.pump();
    net.phones[reader].0.engine.find(T0, doc);
    net.pump();

    // After a quiet spell the first keystroke goes out at once.
    let now = at(&mut net, 1_000);
    put(&mut net.phones[writer].0, now, doc, "k", "1");
    net.pump();
    assert_eq!(has(&net, reader, doc, "k").as_deref(), Some("1"));

    // The next ones, within the debounce, wait and go out together.
    let before = syncs_sent(&net, writer);
    for (ms, value) in [(1_010, "2"), (1_040, "3"), (1_070, "4")] {
        let now = at(&mut net, ms);
        put(&mut net.phones[writer].0, now, doc, "k", value);
        net.pump();
    }
    assert_eq!(syncs_sent(&net, writer), before, "held within the debounce");
    assert_eq!(has(&net, reader, doc, "k").as_deref(), Some("1"));
    let due = net.phones[writer].0.engine.poll_timeout().unwrap();
    assert!(due <= Timestamp::from_millis(1_000).plus(DEFAULT_SYNC_DEBOUNCE));
    let now = at(&mut net, due.as_millis());
    net.phones[writer].0.engine.handle_timeout(now);
    net.pump();
    assert_eq!(has(&net, reader, doc, "k").as_deref(), Some("4"));
    assert_eq!(
        syncs_sent(&net, writer) - before,
        1,
        "three changes, one announcement (the relay's acknowledgement needs no answer)"
    );
}

#[test]
fn without_a_debounce_every_change_is_announced_at_once() {
    let mut net = Net::new();
    let writer = net.phone_with("ana", 1, Duration::ZERO);
    let reader = net.phone("ben", 2);
    let doc = net.phones[writer].0.engine.create_document(T0, |tx| {
        automerge::transaction::Transactable::put(tx, automerge::ROOT, "k", "0").unwrap();
    });
    net.pump();
    net.phones[reader].0.engine.find(T0, doc);
    net.pump();
    let before = syncs_sent(&net, writer);
    for (ms, value) in [(1_010, "2"), (1_040, "3"), (1_070, "4")] {
        let now = at(&mut net, ms);
        put(&mut net.phones[writer].0, now, doc, "k", value);
        net.pump();
        assert_eq!(has(&net, reader, doc, "k").as_deref(), Some(value));
    }
    assert_eq!(syncs_sent(&net, writer) - before, 3);
}

#[test]
fn the_relay_reports_how_long_a_change_waited_before_it_was_passed_on() {
    let (mut net, doc) = three_on_one();
    net.relay.hold_writes = true;
    at(&mut net, 1_000);
    put(&mut net.phones[0].0, net.now, doc, "ana", "1");
    net.pump();
    let forwarded = |net: &Net| -> Vec<Duration> {
        net.relay
            .events
            .iter()
            .filter_map(|e| match e {
                crate::engine::Event::ChangesForwarded { waited, .. } => Some(*waited),
                _ => None,
            })
            .collect()
    };
    let before = forwarded(&net).len();
    let now = at(&mut net, 1_007);
    net.relay.release(now);
    net.pump();
    let after = forwarded(&net);
    assert_eq!(after.len(), before + 1, "one forward for the change");
    assert_eq!(after[after.len() - 1], Duration::from_millis(7));
}

#[test]
fn a_relay_with_a_fan_out_debounce_acknowledges_at_once_and_passes_changes_on_together() {
    let (mut net, doc) = three_on(Net::with_relay_debounce(Duration::from_millis(50)));
    at(&mut net, 1_000);
    put(&mut net.phones[0].0, net.now, doc, "ana", "1");
    net.pump();
    at(&mut net, 1_100);
    assert_eq!(has(&net, 2, doc, "ana").as_deref(), Some("1"));
    // Within a period: Ben hears back at once (his acknowledgement), Cleo waits for the
    // period's end.
    at(&mut net, 1_110);
    let change = put(&mut net.phones[1].0, net.now, doc, "ben", "2");
    net.pump();
    let acked = net.phones[1].0.events.iter().any(|e| {
        matches!(e, crate::engine::Event::PeerHasHeads { heads, .. } if heads.contains(&change))
    });
    assert!(acked, "the writer's change is acknowledged at once");
    assert_eq!(
        has(&net, 2, doc, "ben"),
        None,
        "the others wait for the debounce"
    );
    at(&mut net, 1_160);
    assert_eq!(has(&net, 2, doc, "ben").as_deref(), Some("2"));
}
