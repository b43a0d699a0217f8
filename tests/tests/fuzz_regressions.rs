//! Replays every saved fuzzer input, so plain `cargo test` keeps checking what the fuzzers
//! once found:
//! - `fuzz/regressions/decode_frame/` through [`Message::decode`]: none may panic (or abort
//!   on a huge allocation), and whatever decodes must round-trip through `encode`;
//! - `fuzz/regressions/engine_frames/` through the `engine_frames` harness itself
//!   (`fuzz/harness/engine_frames.rs`, included below), decoded as libfuzzer-sys decodes
//!   them, each in a child process with a memory ceiling like the fuzzer's.
//!
//! Crashers found by `cargo +nightly fuzz run <target>` (or `scripts/fuzz.sh`) go into those
//! folders. `generate_seed_corpus` (ignored) rewrites the seed corpus under `fuzz/corpus/`
//! and the hand-written regressions.

use std::path::{Path, PathBuf};
use std::process::Command;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::Automerge;
use cairn_sync::ids::DocumentId;
use cairn_sync::wire::{DocMessage, Message, PeerMetadata};

#[path = "../../fuzz/harness/engine_frames.rs"]
mod engine_frames;

use engine_frames::{
    Bloom, BloomBits, Changes, Claimed, Count32, Count64, CraftedHave, CraftedSync, DocRef, Hashes,
    Session, Step,
};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("regressions").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            (
                name,
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            )
        })
        .collect()
}

#[test]
fn decode_frame_regressions_do_not_panic() {
    let inputs = inputs("decode_frame");
    assert!(
        inputs.len() >= 2,
        "the regression folder lost its seed inputs"
    );
    for (name, bytes) in inputs {
        if let Ok(message) = Message::decode(&bytes) {
            assert_eq!(
                Message::decode(&message.encode()).as_ref(),
                Ok(&message),
                "{name} does not round-trip"
            );
        }
    }
}

/// The seed inputs are malformed on purpose: each must be a typed error, not a message.
#[test]
fn malformed_seed_inputs_are_rejected() {
    for (name, bytes) in inputs("decode_frame") {
        let known_bad = [
            "truncated-map",
            "huge-byte-string-length",
            "huge-text-length",
            "huge-map-count",
        ];
        if known_bad.contains(&name.as_str()) {
            assert!(Message::decode(&bytes).is_err(), "{name} decoded");
        }
    }
}

/// Address space for one replayed engine input, in KiB (the unit of `ulimit -v`). The
/// harness needs a few MiB; the fuzzer stops at 2 GiB of RSS and 2 GiB per allocation. An
/// input that makes the engine ask for more (automerge's Bloom probes once asked for 16 GiB)
/// aborts the child instead of swapping the machine, and the parent names it.
const REPLAY_ADDRESS_SPACE_KIB: u64 = 3 << 20;

/// Where the child reads the input to replay from.
const REPLAY_INPUT_VAR: &str = "CAIRN_FUZZ_REPLAY_INPUT";

/// Every saved `engine_frames` input runs through the harness (no panic, bounded state,
/// quiet when idle) in its own child process, so one abort (a failed huge allocation) still
/// names its input and the others still run.
#[test]
fn engine_frames_regressions_hold_the_invariants() {
    let dir = fuzz_dir().join("regressions/engine_frames");
    let inputs = inputs("engine_frames");
    assert!(!inputs.is_empty(), "{} has no inputs", dir.display());
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut failures = Vec::new();
    for (name, _) in &inputs {
        let path = dir.join(name);
        let out = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -v "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(REPLAY_ADDRESS_SPACE_KIB.to_string())
            .arg(&exe)
            .args([
                "replay_engine_input",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(REPLAY_INPUT_VAR, &path)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run the replay child");
        if !out.status.success() {
            // The panic message (or the allocator's last words), without the steps line.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.is_empty() && !l.contains(" steps: ") && !l.starts_with("note:"))
                .take(6)
                .collect();
            failures.push(format!("--- {name}: {}\n{}", out.status, why.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} engine_frames regressions fail; replay one, under the same memory \
         ceiling, with\n  sh -c 'ulimit -v {REPLAY_ADDRESS_SPACE_KIB} && \
         {REPLAY_INPUT_VAR}=fuzz/regressions/engine_frames/<name> cargo test -p cairn-tests \
         --test fuzz_regressions replay_engine_input -- --ignored --nocapture'\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
}

/// The child half of `engine_frames_regressions_hold_the_invariants`: replays the file
/// named by `CAIRN_FUZZ_REPLAY_INPUT` and prints its steps first.
#[test]
#[ignore = "run by engine_frames_regressions_hold_the_invariants, one child per input"]
fn replay_engine_input() {
    let Some(path) = std::env::var_os(REPLAY_INPUT_VAR) else {
        eprintln!("{REPLAY_INPUT_VAR} is not set: nothing to replay");
        return;
    };
    // Relative to the repository root (cargo runs tests in `tests/`); absolute stays so.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let steps = engine_frames::decode(&bytes)
        .expect("libfuzzer-sys would skip this input: it is not a regression");
    let shown = format!("{steps:?}");
    eprintln!(
        "{} steps: {}",
        steps.len(),
        &shown[..shown.floor_char_boundary(2000)]
    );
    engine_frames::run(steps);
}

/// Every seed input decodes back to the steps it was written from: if `arbitrary` changes
/// its byte layout, the generator below would write nonsense, and this says so.
#[test]
fn seed_inputs_decode_to_the_steps_they_were_written_from() {
    for (name, steps) in engine_seeds().into_iter().chain(engine_regressions()) {
        assert_eq!(
            engine_frames::decode(&encode_steps(&steps)).as_ref(),
            Some(&steps),
            "{name}"
        );
    }
}

/// Rewrites the seed corpus and the hand-written regressions from the code below:
/// `cargo test -p cairn-tests --test fuzz_regressions generate_seed_corpus -- --ignored`.
/// Then grow and minimise `engine_frames` (see `fuzz/README.md`).
#[test]
#[ignore = "writes fuzz/corpus and fuzz/regressions; run by hand"]
fn generate_seed_corpus() {
    let write = |dir: &Path, name: &str, bytes: &[u8]| {
        std::fs::create_dir_all(dir).expect("create the corpus folder");
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    };
    let frames = fuzz_dir().join("corpus/decode_frame");
    for (name, message) in frame_seeds() {
        write(&frames, &name, &message.encode());
    }
    let engine = fuzz_dir().join("corpus/engine_frames");
    for (name, steps) in engine_seeds() {
        write(&engine, &format!("seed-{name}"), &encode_steps(&steps));
    }
    let regressions = fuzz_dir().join("regressions/engine_frames");
    for (name, steps) in engine_regressions() {
        write(&regressions, name, &encode_steps(&steps));
    }
}

// ------------------------------------------------------------------ decode_frame seeds

/// Valid frames of every message type, with real automerge sync messages: a first message,
/// a reply carrying changes, and second-round messages whose `have` holds a Bloom filter of
/// the changes made since the last sync.
fn frame_seeds() -> Vec<(String, Message)> {
    let doc: DocumentId = "488sijVLJ6Grs5PnrczSYBwfNg25".parse().expect("a valid id");
    let envelope = |data: Vec<u8>| DocMessage {
        sender_id: "phone".into(),
        target_id: "relay".into(),
        document_id: doc,
        data,
    };
    let mut seeds = vec![
        (
            "join".to_owned(),
            Message::Join {
                sender_id: "phone".into(),
                peer_metadata: PeerMetadata {
                    storage_id: Some("3760df37-a4c6-4f66-9ecd-732039a9385d".into()),
                    is_ephemeral: false,
                },
                supported_protocol_versions: vec!["1".into()],
            },
        ),
        (
            "join-ephemeral".to_owned(),
            Message::Join {
                sender_id: "browser".into(),
                peer_metadata: PeerMetadata {
                    storage_id: None,
                    is_ephemeral: true,
                },
                supported_protocol_versions: vec!["1".into(), "2".into()],
            },
        ),
        (
            "peer".to_owned(),
            Message::Peer {
                sender_id: "relay".into(),
                target_id: "phone".into(),
                peer_metadata: PeerMetadata::default(),
                selected_protocol_version: "1".into(),
            },
        ),
        (
            "error".to_owned(),
            Message::Error {
                message: "unsupported protocol version".into(),
            },
        ),
        (
            "doc-unavailable".to_owned(),
            Message::DocUnavailable {
                sender_id: "relay".into(),
                target_id: "phone".into(),
                document_id: doc,
            },
        ),
        (
            "ephemeral".to_owned(),
            Message::Ephemeral {
                sender_id: "phone".into(),
                target_id: "relay".into(),
                document_id: doc,
                session_id: "9f3c2a".into(),
                count: 3,
                data: vec![0xa1, 0x61, 0x78, 0x01],
            },
        ),
        (
            "remote-subscription-change".to_owned(),
            Message::RemoteHeads {
                kind: "remote-subscription-change".into(),
            },
        ),
        (
            "remote-heads-changed".to_owned(),
            Message::RemoteHeads {
                kind: "remote-heads-changed".into(),
            },
        ),
        ("leave".to_owned(), Message::Leave),
        (
            "unknown".to_owned(),
            Message::Unknown {
                kind: "future-message".into(),
            },
        ),
    ];
    let empty_hello = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .expect("an empty document says hello")
        .encode();
    seeds.push((
        "request-empty-document".to_owned(),
        Message::Request(envelope(empty_hello)),
    ));
    for (i, data) in sync_rounds().into_iter().enumerate() {
        seeds.push((format!("sync-round-{i}"), Message::Sync(envelope(data))));
    }
    seeds
}

/// Two peers with their own changes sync, edit again and sync again. Returns every
/// message in order; each one past the first round carries a non-empty Bloom filter.
fn sync_rounds() -> Vec<Vec<u8>> {
    let edit = |doc: &mut Automerge, key: &str, value: i64| {
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, key, value)
            .expect("a put on the root");
        tx.commit();
    };
    /// One message from `from` to `to`, if `from` has something to say.
    fn pass(
        from: &mut (Automerge, sync::State),
        to: &mut (Automerge, sync::State),
        messages: &mut Vec<Vec<u8>>,
    ) -> bool {
        let Some(message) = from.0.generate_sync_message(&mut from.1) else {
            return false;
        };
        let bytes = message.encode();
        let decoded = sync::Message::decode(&bytes).expect("automerge decodes its own message");
        to.0.receive_sync_message(&mut to.1, decoded)
            .expect("a real sync message applies");
        messages.push(bytes);
        true
    }
    let mut a = (Automerge::new(), sync::State::new());
    let mut b = (Automerge::new(), sync::State::new());
    edit(&mut a.0, "title", 1);
    edit(&mut b.0, "agenda", 2);
    let mut messages = Vec::new();
    for round in 0..3 {
        if round > 0 {
            edit(&mut a.0, "title", 10 + round);
            edit(&mut b.0, "notes", 20 + round);
        }
        for _ in 0..4 {
            let ab = pass(&mut a, &mut b, &mut messages);
            let ba = pass(&mut b, &mut a, &mut messages);
            if !ab && !ba {
                break;
            }
        }
    }
    let blooms = messages
        .iter()
        .filter(|m| {
            let m = sync::Message::decode(m).expect("ours");
            m.have.iter().any(|h| !h.bloom.to_bytes().is_empty())
        })
        .count();
    assert!(blooms >= 4, "only {blooms} messages carried a Bloom filter");
    messages
}

// ------------------------------------------------------------------ engine_frames inputs

/// The generated start for `engine_frames`: short stories that reach deep states (two sync
/// rounds, Bloom filters, storage held back, takeovers) which random bytes rarely do.
fn engine_seeds() -> Vec<(&'static str, Vec<Step>)> {
    let edit = |doc, key, value| Step::Edit { doc, key, value };
    let sync = |doc| Step::Sync {
        doc,
        request: false,
        flip: None,
    };
    let valid_bloom = CraftedHave {
        last_sync: Hashes::Empty,
        bloom: Bloom::Parts {
            num_entries: Count32::Tiny(1),
            bits_per_entry: Count32::Small(10),
            num_probes: Count32::Tiny(7),
            bits: BloomBits::Fill(0xff),
        },
    };
    vec![
        ("idle", vec![Step::Tick(200)]),
        (
            "two-rounds",
            vec![edit(0, 1, 5), sync(0), edit(0, 2, 6), sync(0), sync(0)],
        ),
        (
            "three-documents",
            vec![
                edit(0, 0, 1),
                edit(1, 0, 2),
                edit(2, 0, 3),
                sync(0),
                Step::Sync {
                    doc: 1,
                    request: true,
                    flip: None,
                },
                sync(2),
                Step::Tick(150),
                edit(1, 3, 4),
                sync(1),
                Step::Reconnect,
                sync(0),
                sync(1),
            ],
        ),
        (
            "compaction",
            (0..6)
                .flat_map(|i| [edit(0, i, i64::from(i)), sync(0)])
                .collect(),
        ),
        (
            "crafted-bloom",
            vec![
                edit(0, 0, 1),
                sync(0),
                Step::Crafted {
                    doc: 0,
                    request: false,
                    message: CraftedSync {
                        v2: false,
                        heads: Hashes::Ours,
                        need: Hashes::Empty,
                        have: vec![valid_bloom.clone()],
                        changes: Changes::Empty,
                        flags: None,
                    },
                },
            ],
        ),
        (
            // A first message that carries its change and offers a Bloom filter, from a
            // peer without v2 messages: the relay reads the filter while answering.
            "crafted-first-message",
            vec![
                edit(0, 0, 1),
                Step::Crafted {
                    doc: 0,
                    request: false,
                    message: CraftedSync {
                        v2: false,
                        heads: Hashes::Ours,
                        need: Hashes::Empty,
                        have: vec![valid_bloom.clone()],
                        changes: Changes::Ours,
                        flags: None,
                    },
                },
                sync(0),
            ],
        ),
        (
            "crafted-need-v2",
            vec![
                edit(1, 0, 1),
                sync(1),
                Step::Crafted {
                    doc: 1,
                    request: true,
                    message: CraftedSync {
                        v2: true,
                        heads: Hashes::Random { count: 2, seed: 9 },
                        need: Hashes::Random { count: 3, seed: 7 },
                        have: vec![valid_bloom],
                        changes: Changes::Ours,
                        flags: Some(vec![0x02, 0x84]),
                    },
                },
            ],
        ),
        (
            "crafted-garbage-change",
            vec![
                edit(0, 0, 1),
                sync(0),
                Step::Crafted {
                    doc: 0,
                    request: false,
                    message: CraftedSync {
                        v2: false,
                        heads: Hashes::Empty,
                        need: Hashes::Empty,
                        have: Vec::new(),
                        changes: Changes::Garbage(vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3]),
                        flags: None,
                    },
                },
            ],
        ),
        (
            "flipped-sync",
            vec![
                edit(2, 1, 1),
                Step::Sync {
                    doc: 2,
                    request: false,
                    flip: Some((40, 0x10)),
                },
            ],
        ),
        (
            "many-documents",
            vec![
                Step::ManyDocuments {
                    first: 0,
                    count: 24,
                    request: false,
                },
                Step::Tick(150),
                Step::ManyDocuments {
                    first: 16,
                    count: 24,
                    request: true,
                },
                Step::Reconnect,
                Step::ManyDocuments {
                    first: 8,
                    count: 8,
                    request: false,
                },
            ],
        ),
        (
            "ephemeral",
            vec![
                edit(0, 0, 1),
                sync(0),
                Step::Join(Claimed::Other(1)),
                sync(0),
                Step::Ephemeral {
                    doc: DocRef::Peer(0),
                    sender: Claimed::Same,
                    session: Session::Short(1),
                    count: Count64::Small(1),
                    data: vec![1, 2, 3],
                },
                Step::Ephemeral {
                    doc: DocRef::Peer(0),
                    sender: Claimed::Other(2),
                    session: Session::Long { len: 600, fill: 3 },
                    count: Count64::NearMax(0),
                    data: vec![4],
                },
                Step::Ephemeral {
                    doc: DocRef::Named(5),
                    sender: Claimed::Relay,
                    session: Session::Short(1),
                    count: Count64::Any(1 << 40),
                    data: Vec::new(),
                },
            ],
        ),
        (
            "second-join",
            vec![
                edit(0, 0, 1),
                sync(0),
                Step::Join(Claimed::Same),
                sync(0),
                Step::Join(Claimed::Relay),
                sync(0),
                Step::Join(Claimed::Other(3)),
                sync(0),
            ],
        ),
        (
            "storage-held",
            vec![
                Step::HoldStorage,
                edit(0, 0, 1),
                sync(0),
                sync(0),
                edit(0, 1, 2),
                sync(0),
                Step::ReleaseStorage { newest_first: true },
                sync(0),
            ],
        ),
        (
            "write-fails",
            vec![
                edit(1, 0, 1),
                sync(1),
                Step::FailNextWrite,
                edit(1, 1, 2),
                sync(1),
                sync(1),
            ],
        ),
        (
            "envelopes",
            vec![
                Step::Envelope {
                    kind: 0,
                    doc: DocRef::Named(7),
                    data: vec![0x42, 0, 0, 1, 0, 0, 0],
                },
                Step::Envelope {
                    kind: 2,
                    doc: DocRef::Peer(1),
                    data: Vec::new(),
                },
                Step::Envelope {
                    kind: 1,
                    doc: DocRef::Peer(1),
                    data: vec![0x42, 0xff],
                },
                Step::Envelope {
                    kind: 3,
                    doc: DocRef::Peer(0),
                    data: Vec::new(),
                },
            ],
        ),
        (
            "raw-frames",
            vec![
                Step::Raw(
                    Message::RemoteHeads {
                        kind: "remote-heads-changed".into(),
                    }
                    .encode(),
                ),
                Step::Raw(Message::Unknown { kind: "x".into() }.encode()),
                Step::Raw(vec![0xa1, 0x64, 0x74, 0x79, 0x70, 0x65]),
            ],
        ),
    ]
}

/// Hand-written regressions: the cases issue 6 reported, as exact inputs.
fn engine_regressions() -> Vec<(&'static str, Vec<Step>)> {
    // A first message that creates the sender's document: its change, its heads, no
    // capability flags (as an automerge without v2 messages sends). With v2 advertised the
    // relay would answer an empty-headed peer with the whole document and never read the
    // Bloom filter.
    let created = [
        Step::Edit {
            doc: 0,
            key: 0,
            value: 1,
        },
        Step::Crafted {
            doc: 0,
            request: false,
            message: CraftedSync {
                v2: false,
                heads: Hashes::Ours,
                need: Hashes::Empty,
                have: Vec::new(),
                changes: Changes::Ours,
                flags: None,
            },
        },
    ];
    let probes_max = CraftedHave {
        last_sync: Hashes::Empty,
        bloom: Bloom::Parts {
            num_entries: Count32::Tiny(1),
            bits_per_entry: Count32::Small(10),
            num_probes: Count32::NearMax(0),
            bits: BloomBits::Fill(0),
        },
    };
    vec![
        (
            // The relay evicts the document while the peer is connected; the peer leaves;
            // the evicted entry stayed in the relay's map for ever.
            "evicted-entries-kept-after-disconnect",
            created.to_vec(),
        ),
        (
            // A `have` with one entry and zero bits per entry after a first message that
            // created the sender's document: automerge computed `x % 0`.
            "bloom-zero-bits-issue-hex",
            created
                .iter()
                .cloned()
                .chain([Step::Envelope {
                    kind: 1,
                    doc: DocRef::Peer(0),
                    data: vec![0x42, 0x00, 0x00, 0x01, 0x00, 0x03, 0x01, 0x00, 0x01, 0x00],
                }])
                .collect(),
        ),
        (
            // `numProbes` = 2^32 - 1: automerge allocated 16 GiB for the probes.
            "bloom-probes-u32-max-handwritten",
            created
                .iter()
                .cloned()
                .chain([Step::Crafted {
                    doc: 0,
                    request: false,
                    message: CraftedSync {
                        v2: false,
                        heads: Hashes::Empty,
                        need: Hashes::Empty,
                        have: vec![probes_max],
                        changes: Changes::Empty,
                        flags: None,
                    },
                }])
                .collect(),
        ),
    ]
}

/// Writes values in the byte layout `arbitrary` 1.5 reads them from (little-endian
/// integers, a `1` byte before each element of a collection and a `0` after the last, a
/// `u32` choosing an enum variant), so seeds can be written as steps.
trait Encode {
    fn put(&self, out: &mut Vec<u8>);
}

fn encode_steps(steps: &[Step]) -> Vec<u8> {
    let mut out = Vec::new();
    steps.to_vec().put(&mut out);
    out
}

/// The `u32` that `#[derive(Arbitrary)]` maps to variant `index` of `count`:
/// it picks `(u64::from(tag) * count) >> 32`.
fn variant(out: &mut Vec<u8>, index: u32, count: u32) {
    let tag = (u64::from(index) << 32).div_ceil(u64::from(count));
    let tag = u32::try_from(tag).expect("index < count");
    out.extend_from_slice(&tag.to_le_bytes());
}

macro_rules! encode_int {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
encode_int!(u8, u16, u32, u64, i64);

impl Encode for bool {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode> Encode for Option<T> {
    fn put(&self, out: &mut Vec<u8>) {
        self.is_some().put(out);
        if let Some(v) = self {
            v.put(out);
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn put(&self, out: &mut Vec<u8>) {
        for item in self {
            true.put(out);
            item.put(out);
        }
        false.put(out);
    }
}

impl<A: Encode, B: Encode> Encode for (A, B) {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.put(out);
        self.1.put(out);
    }
}

impl Encode for Step {
    fn put(&self, out: &mut Vec<u8>) {
        const N: u32 = 13;
        match self {
            Step::Raw(frame) => {
                variant(out, 0, N);
                frame.put(out);
            }
            Step::Envelope { kind, doc, data } => {
                variant(out, 1, N);
                kind.put(out);
                doc.put(out);
                data.put(out);
            }
            Step::Edit { doc, key, value } => {
                variant(out, 2, N);
                doc.put(out);
                key.put(out);
                value.put(out);
            }
            Step::Sync { doc, request, flip } => {
                variant(out, 3, N);
                doc.put(out);
                request.put(out);
                flip.put(out);
            }
            Step::Crafted {
                doc,
                request,
                message,
            } => {
                variant(out, 4, N);
                doc.put(out);
                request.put(out);
                message.put(out);
            }
            Step::ManyDocuments {
                first,
                count,
                request,
            } => {
                variant(out, 5, N);
                first.put(out);
                count.put(out);
                request.put(out);
            }
            Step::Ephemeral {
                doc,
                sender,
                session,
                count,
                data,
            } => {
                variant(out, 6, N);
                doc.put(out);
                sender.put(out);
                session.put(out);
                count.put(out);
                data.put(out);
            }
            Step::Join(who) => {
                variant(out, 7, N);
                who.put(out);
            }
            Step::Tick(tens) => {
                variant(out, 8, N);
                tens.put(out);
            }
            Step::FailNextWrite => variant(out, 9, N),
            Step::HoldStorage => variant(out, 10, N),
            Step::ReleaseStorage { newest_first } => {
                variant(out, 11, N);
                newest_first.put(out);
            }
            Step::Reconnect => variant(out, 12, N),
        }
    }
}

impl Encode for DocRef {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            DocRef::Peer(n) => {
                variant(out, 0, 2);
                n.put(out);
            }
            DocRef::Named(n) => {
                variant(out, 1, 2);
                n.put(out);
            }
        }
    }
}

impl Encode for Claimed {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Claimed::Same => variant(out, 0, 3),
            Claimed::Relay => variant(out, 1, 3),
            Claimed::Other(n) => {
                variant(out, 2, 3);
                n.put(out);
            }
        }
    }
}

impl Encode for Session {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Session::Short(n) => {
                variant(out, 0, 2);
                n.put(out);
            }
            Session::Long { len, fill } => {
                variant(out, 1, 2);
                len.put(out);
                fill.put(out);
            }
        }
    }
}

impl Encode for Count64 {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Count64::Small(n) => {
                variant(out, 0, 3);
                n.put(out);
            }
            Count64::NearMax(n) => {
                variant(out, 1, 3);
                n.put(out);
            }
            Count64::Any(n) => {
                variant(out, 2, 3);
                n.put(out);
            }
        }
    }
}

impl Encode for Count32 {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Count32::Tiny(n) => {
                variant(out, 0, 4);
                n.put(out);
            }
            Count32::Small(n) => {
                variant(out, 1, 4);
                n.put(out);
            }
            Count32::NearMax(n) => {
                variant(out, 2, 4);
                n.put(out);
            }
            Count32::Any(n) => {
                variant(out, 3, 4);
                n.put(out);
            }
        }
    }
}

impl Encode for CraftedSync {
    fn put(&self, out: &mut Vec<u8>) {
        self.v2.put(out);
        self.heads.put(out);
        self.need.put(out);
        self.have.put(out);
        self.changes.put(out);
        self.flags.put(out);
    }
}

impl Encode for CraftedHave {
    fn put(&self, out: &mut Vec<u8>) {
        self.last_sync.put(out);
        self.bloom.put(out);
    }
}

impl Encode for Hashes {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Hashes::Empty => variant(out, 0, 3),
            Hashes::Ours => variant(out, 1, 3),
            Hashes::Random { count, seed } => {
                variant(out, 2, 3);
                count.put(out);
                seed.put(out);
            }
        }
    }
}

impl Encode for Bloom {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Bloom::Empty => variant(out, 0, 2),
            Bloom::Parts {
                num_entries,
                bits_per_entry,
                num_probes,
                bits,
            } => {
                variant(out, 1, 2);
                num_entries.put(out);
                bits_per_entry.put(out);
                num_probes.put(out);
                bits.put(out);
            }
        }
    }
}

impl Encode for BloomBits {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            BloomBits::Fill(byte) => {
                variant(out, 0, 2);
                byte.put(out);
            }
            BloomBits::Given(bytes) => {
                variant(out, 1, 2);
                bytes.put(out);
            }
        }
    }
}

impl Encode for Changes {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Changes::Empty => variant(out, 0, 3),
            Changes::Ours => variant(out, 1, 3),
            Changes::Garbage(bytes) => {
                variant(out, 2, 3);
                bytes.put(out);
            }
        }
    }
}
