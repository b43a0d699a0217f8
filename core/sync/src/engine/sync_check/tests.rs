//! Tests against hand-made bytes (limits, attacks) and real automerge 0.12 output.

use std::io::Write;

use automerge::sync::{Message, State, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, AutomergeError, Change, ObjType, ReadDoc, ROOT};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use SyncCheckError as E;

fn uleb(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    uleb(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A V1 message: `heads` and `need` count hashes, a `have` is (`last_sync` hashes, filter).
fn v1(
    heads: u64,
    need: u64,
    haves: &[(u64, Vec<u8>)],
    changes: &[Vec<u8>],
    flags: &[u8],
) -> Vec<u8> {
    let hashes = |out: &mut Vec<u8>, n: u64| {
        uleb(out, n);
        out.extend((0..n * 32).map(|i| i as u8));
    };
    let mut out = vec![MESSAGE_V1];
    hashes(&mut out, heads);
    hashes(&mut out, need);
    uleb(&mut out, haves.len() as u64);
    for (last_sync, bloom) in haves {
        hashes(&mut out, *last_sync);
        prefixed(&mut out, bloom);
    }
    uleb(&mut out, changes.len() as u64);
    changes.iter().for_each(|c| prefixed(&mut out, c));
    if !flags.is_empty() {
        prefixed(&mut out, flags);
    }
    out
}

fn with_changes(changes: &[Vec<u8>]) -> Vec<u8> {
    v1(0, 0, &[], changes, &[])
}

fn bloom(entries: u64, bits_per_entry: u64, probes: u64) -> Vec<u8> {
    let mut out = vec![];
    [entries, bits_per_entry, probes]
        .into_iter()
        .for_each(|n| uleb(&mut out, n));
    out.resize(
        out.len() + (entries * bits_per_entry).div_ceil(8) as usize,
        0xa5,
    );
    out
}

fn chunk(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = CHUNK_MAGIC.to_vec();
    out.extend([0, 0, 0, 0, kind]);
    prefixed(&mut out, body);
    out
}

/// A change body with one column: one run of `rows` copies of the value 1.
fn change_body(column: u32, rows: u64) -> Vec<u8> {
    let mut run = vec![];
    uleb(&mut run, rows);
    if let Some(last) = run.last_mut().filter(|b| **b & 0x40 != 0) {
        *last |= 0x80; // one more byte keeps the signed run length positive
        run.push(0);
    }
    run.push(1);
    // No deps, actor [7], seq 1, start op 1, time 0, no message, no other actors, 1 column.
    let mut out = vec![0, 1, 7, 1, 1, 0, 0, 0, 1];
    uleb(&mut out, column.into());
    prefixed(&mut out, &run);
    out
}

/// Sets one [`SyncLimits`] field.
type SetLimit = fn(&mut SyncLimits, u64);

fn check(bytes: &[u8]) -> Result<SyncSummary> {
    check_sync_message(bytes, &SyncLimits::default())
}

fn check_with(bytes: &[u8], set: impl FnOnce(&mut SyncLimits)) -> Result<SyncSummary> {
    let mut limits = SyncLimits::default();
    set(&mut limits);
    check_sync_message(bytes, &limits)
}

fn bad_bloom(field: &'static str, value: u64, limit: u64) -> Result<SyncSummary> {
    Err(E::BadBloom {
        field,
        value,
        limit,
    })
}

fn text_doc(chars: usize) -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from([1; 16]));
    let mut tx = doc.transaction();
    let text = tx.put_object(ROOT, "text", ObjType::Text).unwrap();
    tx.splice_text(&text, 0, 0, &"cairn ".repeat(chars / 6))
        .unwrap();
    tx.put(ROOT, "title", "minutes").unwrap();
    tx.commit();
    doc
}

fn put(doc: &mut Automerge, key: &str, value: i64) {
    doc.transact::<_, _, AutomergeError>(|tx| tx.put(ROOT, key, value))
        .unwrap();
}

/// Runs the sync protocol to quiescence, returning every encoded message.
fn sync(a: &mut Automerge, sa: &mut State, b: &mut Automerge, sb: &mut State) -> Vec<Vec<u8>> {
    let mut sent = vec![];
    for _ in 0..50 {
        let (ma, mb) = (a.generate_sync_message(sa), b.generate_sync_message(sb));
        if ma.is_none() && mb.is_none() {
            return sent;
        }
        for (msg, doc, state) in [(ma, &mut *b, &mut *sb), (mb, &mut *a, &mut *sa)] {
            if let Some(msg) = msg {
                let bytes = msg.encode();
                doc.receive_sync_message(state, Message::decode(&bytes).unwrap())
                    .unwrap();
                sent.push(bytes);
            }
        }
    }
    panic!("sync did not settle");
}

/// The first message of a sync with a fresh peer that carries changes: a V2 whole document.
fn whole_document_message(doc: &mut Automerge) -> Vec<u8> {
    let (mut fresh, mut ours, mut theirs) = (Automerge::new(), State::new(), State::new());
    let sent = sync(doc, &mut ours, &mut fresh, &mut theirs);
    assert_eq!(fresh.get_heads(), doc.get_heads());
    let carries = |m: &Vec<u8>| !Message::decode(m).unwrap().changes.is_empty();
    sent.into_iter()
        .find(carries)
        .filter(|m| m[0] == MESSAGE_V2)
        .unwrap()
}

/// An independent count: each chunk parsed by automerge itself.
fn automerge_counts(message: &[u8]) -> (usize, u64) {
    let (mut changes, mut ops) = (0, 0);
    for mut rest in Message::decode(message).unwrap().changes.iter() {
        while !rest.is_empty() {
            let mut c = Cursor::new(&rest[9..]);
            let body = c.uleb("test").unwrap() as usize;
            let (chunk, tail) = rest.split_at(9 + c.pos + body);
            if chunk[8] == CHUNK_DOCUMENT {
                let stats = Automerge::load(chunk).unwrap().stats();
                (changes, ops) = (changes + stats.num_changes as usize, ops + stats.num_ops);
            } else {
                let change = Change::from_bytes(chunk.to_vec()).unwrap();
                (changes, ops) = (changes + 1, ops + change.len() as u64);
            }
            rest = tail;
        }
    }
    (changes, ops)
}

#[test]
fn list_limits_hold_at_the_limit_and_refuse_one_past() {
    let three_haves = vec![(0, vec![]); 3];
    let cases: [(&str, Vec<u8>, SetLimit); 5] = [
        ("heads", v1(3, 0, &[], &[], &[]), |l, n| l.max_heads = n),
        ("need", v1(0, 3, &[], &[], &[]), |l, n| l.max_need = n),
        ("haves", v1(0, 0, &three_haves, &[], &[]), |l, n| {
            l.max_haves = n
        }),
        ("last_sync", v1(0, 0, &[(3, vec![])], &[], &[]), |l, n| {
            l.max_last_sync = n
        }),
        ("flag bytes", v1(0, 0, &[], &[], &[2, 0x84, 0]), |l, n| {
            l.max_flag_bytes = n
        }),
    ];
    for (field, bytes, set) in cases {
        assert!(check_with(&bytes, |l| set(l, 3)).is_ok(), "{field}");
        assert_eq!(
            check_with(&bytes, |l| set(l, 2)),
            Err(too_many(field, 3, 2))
        );
    }
}

#[test]
fn bloom_parameters_are_bounded_and_zero_bits_refused() {
    let have = |bloom: Vec<u8>| check(&v1(0, 0, &[(1, bloom)], &[], &[]));
    assert!(have(vec![]).is_ok(), "an empty filter");
    assert!(have(bloom(0, 10, 7)).is_ok(), "zero entries, no bits");
    assert!(have(bloom(5, 1, 7)).is_ok());
    assert!(have(bloom(5, 64, 32)).is_ok());
    assert_eq!(have(bloom(5, 0, 7)), bad_bloom("bits per entry", 0, 64));
    assert_eq!(have(bloom(5, 65, 7)), bad_bloom("bits per entry", 65, 64));
    assert_eq!(have(bloom(5, 10, 0)), bad_bloom("probes", 0, 32));
    assert_eq!(have(bloom(5, 10, 33)), bad_bloom("probes", 33, 32));
    let (mut long, mut short) = (bloom(5, 10, 7), bloom(5, 10, 7));
    long.push(0);
    short.pop();
    assert_eq!(
        have(long),
        Err(E::BloomSize {
            expected: 7,
            actual: 8
        })
    );
    assert_eq!(
        have(short),
        Err(E::BloomSize {
            expected: 7,
            actual: 6
        })
    );
}

#[test]
fn attack_bytes_from_the_issue_are_refused() {
    let zero_bits = hex::decode("42000001000301000100").unwrap();
    assert_eq!(check(&zero_bits), bad_bloom("bits per entry", 0, 64));
    for probes in [4_294_967_295, 100_000_000] {
        let msg = v1(0, 0, &[(0, bloom(1, 10, probes))], &[], &[]);
        assert_eq!(check(&msg), bad_bloom("probes", probes, 32));
    }
}

/// Documents the upstream bug the Bloom checks guard against: automerge 0.12 accepts the
/// ten bytes and then divides by zero while answering.
#[test]
fn automerge_0_12_panics_answering_a_zero_bits_bloom_filter() {
    let mut doc = text_doc(6);
    let message = Message::decode(&hex::decode("42000001000301000100").unwrap()).unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut state = State::new();
        doc.receive_sync_message(&mut state, message).unwrap();
        doc.generate_sync_message(&mut state)
    }));
    assert!(
        outcome.is_err(),
        "automerge no longer panics: upstream fixed it"
    );
}

#[test]
fn declared_counts_are_checked_before_any_loop() {
    // Eight million empty `have`s declared in a few bytes: refused before iterating.
    let mut haves = vec![MESSAGE_V1, 0, 0];
    uleb(&mut haves, 8_000_000);
    haves.extend([0, 0, 0]);
    assert_eq!(check(&haves), Err(too_many("haves", 8_000_000, 8)));
    let unlimited = check_with(&haves, |l| l.max_haves = u64::MAX);
    assert_eq!(unlimited, Err(E::Truncated { field: "haves" }));
    let mut heads = vec![MESSAGE_V1];
    uleb(&mut heads, u64::MAX);
    let unlimited = check_with(&heads, |l| l.max_heads = u64::MAX);
    assert_eq!(unlimited, Err(E::Truncated { field: "heads" }));
    let mut changes = vec![MESSAGE_V1, 0, 0, 0];
    uleb(&mut changes, 1 << 40);
    assert_eq!(check(&changes), Err(too_many("changes", 1 << 40, 100_000)));
}

#[test]
fn malformed_messages_and_chunks_are_refused() {
    assert_eq!(check(&[0x44, 0, 0, 0, 0]), Err(E::UnknownVersion(0x44)));
    assert_eq!(
        check(&[MESSAGE_V1, 0, 0]),
        Err(E::Truncated { field: "haves" })
    );
    assert_eq!(
        check(&[MESSAGE_V1, 0, 0, 0x80, 0]),
        Err(E::BadNumber { field: "haves" })
    );
    let mut trailing = v1(0, 0, &[], &[], &[2, 0x84]);
    trailing.push(0);
    assert_eq!(
        check(&trailing),
        Err(E::TrailingBytes {
            field: "flags",
            count: 1
        })
    );
    assert_eq!(check(&with_changes(&[vec![1; 20]])), Err(E::NotAChunk));
    assert_eq!(
        check(&with_changes(&[chunk(3, &[0; 8])])),
        Err(E::UnsupportedChunk(3))
    );
    assert_eq!(
        check(&with_changes(&[chunk(2, &[0xff; 8])])),
        Err(E::Inflate)
    );
    let mut cut = chunk(1, &change_body(ACTION_COLUMN, 3));
    assert!(check(&with_changes(&[cut.clone()])).is_ok());
    cut.pop();
    assert_eq!(
        check(&with_changes(&[cut])),
        Err(E::Truncated {
            field: "chunk body"
        })
    );
}

#[test]
fn runs_declaring_a_billion_rows_are_refused_without_iterating() {
    let msg = |column| with_changes(&[chunk(1, &change_body(column, 1 << 30))]);
    let limit = 1_000_000;
    assert_eq!(
        check(&msg(ACTION_COLUMN)),
        Err(E::TooManyOps {
            ops: 1 << 30,
            limit
        })
    );
    let pred_group = 0x70;
    let refused = Err(E::ColumnTooLong {
        column: pred_group,
        rows: 1 << 30,
        limit,
    });
    assert_eq!(check(&msg(pred_group)), refused);
    let column = ACTION_COLUMN | COLUMN_DEFLATE;
    assert_eq!(
        check(&msg(column)),
        Err(E::CompressedChangeColumn { column })
    );
}

#[test]
fn document_dependencies_must_name_its_changes() {
    // One actor, no heads; change columns: actor (2 rows), dependency counts, indexes.
    let doc = |counts: &[u8], indexes: &[u8]| {
        let mut body = vec![1, 1, 7, 0, 3, 0x01, 2, 0x40, counts.len() as u8];
        body.extend([0x43, indexes.len() as u8, 0, 2, 0]);
        body.extend(counts.iter().chain(indexes));
        check(&with_changes(&[chunk(CHUNK_DOCUMENT, &body)]))
    };
    // Change 1 depends on change 0: counts are the literals [0, 1], indexes [0].
    assert_eq!(doc(&[0x7e, 0, 1], &[0x7f, 0]).map(|s| s.changes), Ok(2));
    let past_the_end = doc(&[0x7e, 0, 1], &[0x7f, 63]);
    assert_eq!(
        past_the_end,
        Err(E::BadDependency {
            index: 63,
            changes: 2
        })
    );
    let negative = doc(&[0x7e, 0, 1], &[0x7f, 0x7f]);
    assert_eq!(
        negative,
        Err(E::BadDependency {
            index: -1,
            changes: 2
        })
    );
    let counts = "document dependency counts";
    assert_eq!(doc(&[3, 0], &[]), Err(too_many(counts, 3, 2)));
}

#[test]
fn deflate_bomb_stops_one_byte_past_the_limit() {
    let mut deflate = flate2::write::DeflateEncoder::new(vec![], flate2::Compression::best());
    deflate.write_all(&vec![0; 8 << 20]).unwrap();
    let bomb = with_changes(&[chunk(2, &deflate.finish().unwrap())]);
    let refused = Err(E::TooLarge {
        expanded: (1 << 20) + 1,
        limit: 1 << 20,
    });
    assert_eq!(
        check_with(&bomb, |l| l.max_expanded_bytes = 1 << 20),
        refused
    );
}

#[test]
fn v1_changes_plain_and_compressed_count_their_ops() {
    let mut change = text_doc(600).get_last_local_change().unwrap();
    let compressed = change.bytes().to_vec();
    assert_eq!(
        compressed[8], CHUNK_COMPRESSED_CHANGE,
        "over 256 bytes, so compressed"
    );
    let summary = check(&with_changes(&[
        change.raw_bytes().to_vec(),
        compressed.clone(),
    ]));
    let summary = summary.unwrap();
    assert_eq!((summary.changes, summary.ops), (2, 2 * change.len() as u64));
    assert!(summary.expanded_bytes > change.raw_bytes().len() as u64);
    let three = with_changes(&[compressed.clone(), compressed.clone(), compressed]);
    assert!(check_with(&three, |l| l.max_changes = 3).is_ok());
    assert_eq!(
        check_with(&three, |l| l.max_changes = 2),
        Err(too_many("changes", 3, 2))
    );
}

#[test]
fn whole_document_v2_message_counts_every_op_and_change() {
    let mut doc = text_doc(50_000);
    put(&mut doc, "more", 1);
    let msg = whole_document_message(&mut doc);
    assert!(
        msg.len() < 20_000,
        "columns are compressed: {} bytes",
        msg.len()
    );
    let summary = check(&msg).unwrap();
    let stats = doc.stats();
    assert_eq!(
        (summary.changes as u64, summary.ops),
        (stats.num_changes, stats.num_ops)
    );
    assert!(summary.expanded_bytes > 50_000);
    assert_eq!(automerge_counts(&msg), (summary.changes, summary.ops));
}

#[test]
fn totals_and_chunk_structure_hold_at_the_limit_and_refuse_one_past() {
    let mut doc = text_doc(3_000);
    (0..4).for_each(|i| put(&mut doc, "n", i));
    let msg = whole_document_message(&mut doc);
    let s = check(&msg).unwrap();
    let (ops, changes, bytes) = (s.ops, s.changes as u64, s.expanded_bytes);
    assert_eq!(check_with(&msg, |l| l.max_ops = ops), Ok(s));
    let past = check_with(&msg, |l| l.max_ops = ops - 1);
    assert_eq!(
        past,
        Err(E::TooManyOps {
            ops,
            limit: ops - 1
        })
    );
    assert_eq!(
        check_with(&msg, |l| l.max_document_changes = changes),
        Ok(s)
    );
    let past = check_with(&msg, |l| l.max_document_changes = changes - 1);
    assert_eq!(
        past,
        Err(too_many("document changes", changes, changes - 1))
    );
    assert_eq!(check_with(&msg, |l| l.max_expanded_bytes = bytes), Ok(s));
    let past = check_with(&msg, |l| l.max_expanded_bytes = bytes - 1);
    assert!(matches!(past, Err(E::TooLarge { limit, .. }) if limit == bytes - 1));
    // Per-chunk structure: find the least passing limit; one less must fail.
    let fields: [(&str, SetLimit); 2] = [
        ("columns", |l, n| l.max_columns = n),
        ("document actors", |l, n| l.max_actors = n),
    ];
    for (field, set) in fields {
        let least = (0..64)
            .find(|n| check_with(&msg, |l| set(l, *n)).is_ok())
            .unwrap();
        assert!(least > 0, "{field}");
        let past = check_with(&msg, |l| set(l, least - 1));
        assert_eq!(past, Err(too_many(field, least, least - 1)));
    }
}

/// The issue's 10-million-character change, scaled down to keep the test light (2 million
/// characters took 11 s and 700 MB to build here): refused by its ops and by its expanded
/// size, though small on the wire.
#[test]
fn a_large_text_change_is_refused_by_ops_and_by_expanded_size() {
    let mut change = text_doc(300_000).get_last_local_change().unwrap();
    let msg = with_changes(&[change.bytes().to_vec()]);
    assert!(msg.len() < 20_000, "small on the wire: {} bytes", msg.len());
    let ops = change.len() as u64;
    let refused = Err(E::TooManyOps {
        ops,
        limit: 100_000,
    });
    assert_eq!(check_with(&msg, |l| l.max_ops = 100_000), refused);
    let limit = 100_000;
    let refused = Err(E::TooLarge {
        expanded: limit + 1,
        limit,
    });
    assert_eq!(check_with(&msg, |l| l.max_expanded_bytes = limit), refused);
}

#[test]
fn real_sync_sessions_pass_with_exact_counts() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (mut a, mut b) = (text_doc(600), Automerge::new());
    let (mut sa, mut sb) = (State::new(), State::new());
    let mut messages = sync(&mut a, &mut sa, &mut b, &mut sb);
    let text = a.get(ROOT, "text").unwrap().unwrap().1;
    for round in 0..12 {
        for doc in [&mut a, &mut b] {
            for _ in 0..rng.gen_range(0..4) {
                let mut tx = doc.transaction();
                let len = tx.length(&text);
                let pos = rng.gen_range(0..=len);
                let del = rng.gen_range(0..3).min(len - pos) as isize;
                tx.splice_text(&text, pos, del, &"x".repeat(rng.gen_range(0..400)))
                    .unwrap();
                tx.put(ROOT, "round", round as i64).unwrap();
                tx.commit();
            }
        }
        messages.extend(sync(&mut a, &mut sa, &mut b, &mut sb));
    }
    assert_eq!(a.get_heads(), b.get_heads());
    let mut several_in_one_entry = false;
    for msg in &messages {
        let summary = check(msg).unwrap();
        assert_eq!((summary.changes, summary.ops), automerge_counts(msg));
        let entries = Message::decode(msg).unwrap().changes.len();
        several_in_one_entry |= msg[0] == MESSAGE_V2 && entries == 1 && summary.changes > 1;
    }
    assert!(
        several_in_one_entry,
        "a V2 message carried several changes in one entry"
    );
}
