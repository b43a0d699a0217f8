//! Tests against hand-made bytes (limits, attacks) and real automerge 0.12 output.

use std::io::Write;

use automerge::sync::{Message, State, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, Change, ObjType, ReadDoc, ROOT};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

fn uleb(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            return out.push(byte);
        }
        out.push(byte | 0x80);
    }
}

fn prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    uleb(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A message with `n` hashes in `heads`, `need`, and in the `last_sync` of each `have`.
#[derive(Default)]
struct Msg {
    heads: u64,
    need: u64,
    haves: Vec<(u64, Vec<u8>)>,
    changes: Vec<Vec<u8>>,
    flags: Option<Vec<u8>>,
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        let hashes = |out: &mut Vec<u8>, n: u64| {
            uleb(out, n);
            out.extend((0..n * 32).map(|i| i as u8));
        };
        let mut out = vec![MESSAGE_V1];
        hashes(&mut out, self.heads);
        hashes(&mut out, self.need);
        uleb(&mut out, self.haves.len() as u64);
        for (last_sync, bloom) in &self.haves {
            hashes(&mut out, *last_sync);
            prefixed(&mut out, bloom);
        }
        uleb(&mut out, self.changes.len() as u64);
        for change in &self.changes {
            prefixed(&mut out, change);
        }
        if let Some(flags) = &self.flags {
            prefixed(&mut out, flags);
        }
        out
    }
}

fn bloom(entries: u64, bits_per_entry: u64, probes: u64) -> Vec<u8> {
    let mut out = vec![];
    for n in [entries, bits_per_entry, probes] {
        uleb(&mut out, n);
    }
    out.resize(
        out.len() + (entries * bits_per_entry).div_ceil(8) as usize,
        0xa5,
    );
    out
}

fn chunk(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = CHUNK_MAGIC.to_vec();
    out.extend([0; 4]);
    out.push(kind);
    prefixed(&mut out, body);
    out
}

/// A change body with one column holding one run of `rows` copies of the value 1.
fn change_body(column: u32, rows: u64) -> Vec<u8> {
    let mut run = vec![];
    uleb(&mut run, rows);
    if let Some(last) = run.last_mut().filter(|b| **b & 0x40 != 0) {
        *last |= 0x80; // one more byte keeps the signed run length positive
        run.push(0);
    }
    run.push(1);
    let mut out = vec![0, 1, 7, 1, 1, 0, 0, 0, 1];
    uleb(&mut out, column.into());
    uleb(&mut out, run.len() as u64);
    out.extend(run);
    out
}

fn check(bytes: &[u8]) -> Result<SyncSummary> {
    check_sync_message(bytes, &SyncLimits::default())
}

fn with(f: impl FnOnce(&mut SyncLimits)) -> SyncLimits {
    let mut limits = SyncLimits::default();
    f(&mut limits);
    limits
}

fn text_doc(actor: u8, chars: usize) -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from([actor; 16]));
    let mut tx = doc.transaction();
    let text = tx.put_object(ROOT, "text", ObjType::Text).unwrap();
    tx.splice_text(&text, 0, 0, &"cairn ".repeat(chars / 6))
        .unwrap();
    tx.put(ROOT, "title", "minutes").unwrap();
    tx.commit();
    doc
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

/// An independent count: each chunk parsed by automerge itself.
fn automerge_counts(message: &[u8]) -> (usize, u64) {
    let (mut changes, mut ops) = (0, 0);
    for entry in Message::decode(message).unwrap().changes.iter() {
        let mut rest = entry;
        while !rest.is_empty() {
            let mut c = Cursor::new(&rest[9..]);
            let body = c.uleb("test").unwrap() as usize;
            let (chunk, tail) = rest.split_at(9 + c.pos + body);
            if chunk[8] == CHUNK_DOCUMENT {
                let doc = Automerge::load(chunk).unwrap();
                changes += doc.stats().num_changes as usize;
                ops += doc.stats().num_ops;
            } else {
                changes += 1;
                ops += Change::from_bytes(chunk.to_vec()).unwrap().len() as u64;
            }
            rest = tail;
        }
    }
    (changes, ops)
}

#[test]
fn list_limits_hold_at_the_limit_and_refuse_one_past() {
    type Set = fn(&mut SyncLimits, u64);
    let cases: [(&str, Msg, Set); 5] = [
        (
            "heads",
            Msg {
                heads: 3,
                ..Msg::default()
            },
            |l, n| l.max_heads = n,
        ),
        (
            "need",
            Msg {
                need: 3,
                ..Msg::default()
            },
            |l, n| l.max_need = n,
        ),
        (
            "haves",
            Msg {
                haves: vec![(0, vec![]); 3],
                ..Msg::default()
            },
            |l, n| l.max_haves = n,
        ),
        (
            "last_sync",
            Msg {
                haves: vec![(3, vec![])],
                ..Msg::default()
            },
            |l, n| l.max_last_sync = n,
        ),
        (
            "flag bytes",
            Msg {
                flags: Some(vec![2, 0x84, 0]),
                ..Msg::default()
            },
            |l, n| l.max_flag_bytes = n,
        ),
    ];
    for (field, msg, set) in cases {
        let bytes = msg.encode();
        assert!(
            check_sync_message(&bytes, &with(|l| set(l, 3))).is_ok(),
            "{field}"
        );
        let refused = check_sync_message(&bytes, &with(|l| set(l, 2)));
        assert_eq!(refused, Err(too_many(field, 3, 2)));
    }
}

#[test]
fn bloom_parameters_are_bounded_and_zero_bits_refused() {
    let have = |bloom: Vec<u8>| {
        Msg {
            haves: vec![(1, bloom)],
            ..Msg::default()
        }
        .encode()
    };
    let bad = |field, value, limit| {
        Err(SyncCheckError::BadBloom {
            field,
            value,
            limit,
        })
    };
    assert!(check(&have(vec![])).is_ok(), "an empty filter");
    assert!(check(&have(bloom(5, 1, 7))).is_ok());
    assert!(check(&have(bloom(5, 64, 32))).is_ok());
    assert!(
        check(&have(bloom(0, 10, 7))).is_ok(),
        "zero entries, no bits"
    );
    assert_eq!(check(&have(bloom(5, 0, 7))), bad("bits per entry", 0, 64));
    assert_eq!(check(&have(bloom(5, 65, 7))), bad("bits per entry", 65, 64));
    assert_eq!(check(&have(bloom(5, 10, 0))), bad("probes", 0, 32));
    assert_eq!(check(&have(bloom(5, 10, 33))), bad("probes", 33, 32));
    let mut long = bloom(5, 10, 7);
    long.push(0);
    assert_eq!(
        check(&have(long)),
        Err(SyncCheckError::BloomSize {
            expected: 7,
            actual: 8
        })
    );
    let mut short = bloom(5, 10, 7);
    short.pop();
    assert_eq!(
        check(&have(short)),
        Err(SyncCheckError::BloomSize {
            expected: 7,
            actual: 6
        })
    );
}

#[test]
fn attack_bytes_from_the_issue_are_refused() {
    let zero_bits = hex::decode("42000001000301000100").unwrap();
    let refused = Err(SyncCheckError::BadBloom {
        field: "bits per entry",
        value: 0,
        limit: 64,
    });
    assert_eq!(check(&zero_bits), refused);
    for probes in [4_294_967_295, 100_000_000] {
        let msg = Msg {
            haves: vec![(0, bloom(1, 10, probes))],
            ..Msg::default()
        }
        .encode();
        let refused = Err(SyncCheckError::BadBloom {
            field: "probes",
            value: probes,
            limit: 32,
        });
        assert_eq!(check(&msg), refused);
    }
}

/// Documents the upstream bug the Bloom checks guard against: automerge 0.12 accepts the
/// ten bytes and then divides by zero while answering.
#[test]
fn automerge_0_12_panics_answering_a_zero_bits_bloom_filter() {
    let mut doc = text_doc(1, 6);
    let message = Message::decode(&hex::decode("42000001000301000100").unwrap()).unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut state = State::new();
        doc.receive_sync_message(&mut state, message).unwrap();
        doc.generate_sync_message(&mut state)
    }));
    assert!(
        outcome.is_err(),
        "automerge no longer panics: the upstream bug is fixed"
    );
}

#[test]
fn declared_counts_are_checked_before_any_loop() {
    // Eight million empty `have`s declared in a few bytes: refused, nothing iterated.
    let mut many = vec![MESSAGE_V1, 0, 0];
    uleb(&mut many, 8_000_000);
    many.extend([0, 0, 0]);
    assert_eq!(check(&many), Err(too_many("haves", 8_000_000, 8)));
    let lax = with(|l| l.max_haves = u64::MAX);
    assert_eq!(
        check_sync_message(&many, &lax),
        Err(SyncCheckError::Truncated { field: "haves" })
    );
    let mut huge_heads = vec![MESSAGE_V1];
    uleb(&mut huge_heads, u64::MAX);
    let lax = with(|l| l.max_heads = u64::MAX);
    assert!(matches!(
        check_sync_message(&huge_heads, &lax),
        Err(SyncCheckError::Truncated { .. })
    ));
    let mut changes = vec![MESSAGE_V1, 0, 0, 0];
    uleb(&mut changes, 1 << 40);
    assert_eq!(check(&changes), Err(too_many("changes", 1 << 40, 100_000)));
}

#[test]
fn malformed_messages_and_chunks_are_refused() {
    let change = |c: Vec<u8>| {
        Msg {
            changes: vec![c],
            ..Msg::default()
        }
        .encode()
    };
    assert_eq!(
        check(&[0x44, 0, 0, 0, 0]),
        Err(SyncCheckError::UnknownVersion(0x44))
    );
    assert!(matches!(
        check(&[MESSAGE_V1, 0, 0]),
        Err(SyncCheckError::Truncated { .. })
    ));
    let mut trailing = Msg {
        flags: Some(vec![2, 0x84]),
        ..Msg::default()
    }
    .encode();
    trailing.push(0);
    assert_eq!(
        check(&trailing),
        Err(SyncCheckError::TrailingBytes {
            field: "flags",
            count: 1
        })
    );
    assert_eq!(check(&change(vec![1; 20])), Err(SyncCheckError::NotAChunk));
    assert_eq!(
        check(&change(chunk(3, &[0; 8]))),
        Err(SyncCheckError::UnsupportedChunk(3))
    );
    assert_eq!(
        check(&change(chunk(2, &[0xff; 8]))),
        Err(SyncCheckError::Inflate)
    );
    let mut cut = chunk(1, &change_body(ACTION_COLUMN, 3));
    cut.pop();
    assert!(matches!(
        check(&change(cut)),
        Err(SyncCheckError::Truncated { .. })
    ));
    let overlong = Msg {
        changes: vec![],
        ..Msg::default()
    }
    .encode();
    let mut overlong = overlong[..3].to_vec();
    overlong.extend([0x80, 0x00, 0]);
    assert_eq!(
        check(&overlong),
        Err(SyncCheckError::BadNumber { field: "haves" })
    );
}

#[test]
fn runs_declaring_a_billion_rows_are_refused_without_iterating() {
    let msg = |column| Msg {
        changes: vec![chunk(1, &change_body(column, 1 << 30))],
        ..Msg::default()
    };
    let refused = Err(SyncCheckError::TooManyOps {
        ops: 1 << 30,
        limit: 1_000_000,
    });
    assert_eq!(check(&msg(ACTION_COLUMN).encode()), refused);
    let pred_group = 0x70;
    let refused = Err(SyncCheckError::ColumnTooLong {
        column: pred_group,
        rows: 1 << 30,
        limit: 1_000_000,
    });
    assert_eq!(check(&msg(pred_group).encode()), refused);
    let compressed = Err(SyncCheckError::CompressedChangeColumn {
        column: ACTION_COLUMN | COLUMN_DEFLATE,
    });
    assert_eq!(
        check(&msg(ACTION_COLUMN | COLUMN_DEFLATE).encode()),
        compressed
    );
}

#[test]
fn deflate_bomb_stops_one_byte_past_the_limit() {
    let mut deflate = flate2::write::DeflateEncoder::new(vec![], flate2::Compression::best());
    deflate.write_all(&vec![0; 8 << 20]).unwrap();
    let bomb = chunk(2, &deflate.finish().unwrap());
    let limits = with(|l| l.max_expanded_bytes = 1 << 20);
    let msg = Msg {
        changes: vec![bomb],
        ..Msg::default()
    }
    .encode();
    let refused = Err(SyncCheckError::TooLarge {
        expanded: (1 << 20) + 1,
        limit: 1 << 20,
    });
    assert_eq!(check_sync_message(&msg, &limits), refused);
}

#[test]
fn v1_changes_plain_and_compressed_count_their_ops() {
    let doc = text_doc(1, 600);
    let mut change = doc.get_last_local_change().unwrap();
    let compressed = change.bytes().to_vec();
    assert_eq!(
        compressed[8], CHUNK_COMPRESSED_CHANGE,
        "over 256 bytes, so compressed"
    );
    let changes = vec![change.raw_bytes().to_vec(), compressed.clone()];
    let summary = check(
        &Msg {
            changes,
            ..Msg::default()
        }
        .encode(),
    )
    .unwrap();
    assert_eq!(summary.ops, 2 * change.len() as u64);
    assert_eq!(summary.changes, 2);
    assert!(summary.expanded_bytes > change.raw_bytes().len() as u64);
    let mut two = Msg {
        changes: vec![compressed; 3],
        ..Msg::default()
    }
    .encode();
    assert!(check_sync_message(&two, &with(|l| l.max_changes = 3)).is_ok());
    let one_past = check_sync_message(&two, &with(|l| l.max_changes = 2));
    assert_eq!(one_past, Err(too_many("changes", 3, 2)));
    two.truncate(two.len() - 1);
    assert!(check(&two).is_err());
}

/// A fresh peer is sent the whole document in a V2 message with compressed columns.
fn whole_document_message(doc: &mut Automerge) -> Vec<u8> {
    let (mut fresh, mut ours, mut theirs) = (Automerge::new(), State::new(), State::new());
    let sent = sync(doc, &mut ours, &mut fresh, &mut theirs);
    assert_eq!(fresh.get_heads(), doc.get_heads());
    sent.into_iter()
        .find(|m| m[0] == MESSAGE_V2 && !Message::decode(m).unwrap().changes.is_empty())
        .unwrap()
}

#[test]
fn whole_document_v2_message_counts_every_op_and_change() {
    let mut doc = text_doc(1, 50_000);
    doc.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(ROOT, "more", 1).map(drop))
        .unwrap();
    let msg = whole_document_message(&mut doc);
    assert!(
        msg.len() < 20_000,
        "columns are compressed: {} bytes",
        msg.len()
    );
    let summary = check(&msg).unwrap();
    let stats = doc.stats();
    assert_eq!(summary.ops, stats.num_ops);
    assert_eq!(summary.changes as u64, stats.num_changes);
    assert!(summary.expanded_bytes > 50_000);
    assert_eq!(automerge_counts(&msg), (summary.changes, summary.ops));
}

#[test]
fn totals_hold_at_the_limit_and_refuse_one_past() {
    let mut doc = text_doc(1, 3_000);
    for i in 0..4 {
        doc.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(ROOT, "n", i).map(drop))
            .unwrap();
    }
    let msg = whole_document_message(&mut doc);
    let s = check(&msg).unwrap();
    let (ops, changes, bytes) = (s.ops, s.changes as u64, s.expanded_bytes);
    let at = |f: fn(&mut SyncLimits, u64), n| check_sync_message(&msg, &with(|l| f(l, n)));
    assert_eq!(at(|l, n| l.max_ops = n, ops), Ok(s));
    assert_eq!(
        at(|l, n| l.max_ops = n, ops - 1),
        Err(SyncCheckError::TooManyOps {
            ops,
            limit: ops - 1
        })
    );
    assert_eq!(at(|l, n| l.max_document_changes = n, changes), Ok(s));
    let past = Err(too_many("document changes", changes, changes - 1));
    assert_eq!(at(|l, n| l.max_document_changes = n, changes - 1), past);
    assert_eq!(at(|l, n| l.max_expanded_bytes = n, bytes), Ok(s));
    let past = at(|l, n| l.max_expanded_bytes = n, bytes - 1);
    assert!(matches!(past, Err(SyncCheckError::TooLarge { limit, .. }) if limit == bytes - 1));
    // Per-chunk structure: find the smallest passing limit, then one less must fail.
    let fields: [(&str, fn(&mut SyncLimits, u64)); 2] = [
        ("columns", |l, n| l.max_columns = n),
        ("document actors", |l, n| l.max_actors = n),
    ];
    for (field, set) in fields {
        let least = (0..64).find(|n| at(set, *n).is_ok()).unwrap();
        assert!(least > 0, "{field}");
        assert_eq!(at(set, least - 1), Err(too_many(field, least, least - 1)));
    }
}

#[test]
fn a_two_million_character_change_is_refused_by_its_ops() {
    let doc = text_doc(1, 2_000_000);
    let mut change = doc.get_last_local_change().unwrap();
    let msg = Msg {
        changes: vec![change.bytes().to_vec()],
        ..Msg::default()
    }
    .encode();
    assert!(
        msg.len() < 100_000,
        "small on the wire: {} bytes",
        msg.len()
    );
    let ops = change.len() as u64;
    assert_eq!(
        check(&msg),
        Err(SyncCheckError::TooManyOps {
            ops,
            limit: 1_000_000
        })
    );
}

#[test]
fn real_sync_sessions_pass_with_exact_counts() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (mut a, mut b) = (
        text_doc(1, 600),
        Automerge::new().with_actor(ActorId::from([2; 16])),
    );
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
    let mut multi_chunk_v2 = false;
    for msg in &messages {
        let summary = check(msg).unwrap();
        assert_eq!((summary.changes, summary.ops), automerge_counts(msg));
        let decoded = Message::decode(msg).unwrap();
        multi_chunk_v2 |= msg[0] == MESSAGE_V2 && decoded.changes.len() == 1 && summary.changes > 1;
    }
    assert!(
        multi_chunk_v2,
        "a V2 message carried several change chunks in one entry"
    );
}
