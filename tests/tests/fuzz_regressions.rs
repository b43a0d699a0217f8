//! Replays every input under `fuzz/regressions/decode_frame/` through
//! [`Message::decode`]: none may panic (or abort on a huge allocation), and whatever decodes
//! must round-trip through `encode`. Crashers found by `cargo +nightly fuzz run decode_frame`
//! go into that folder so plain `cargo test` keeps checking them.

use std::path::PathBuf;

use cairn_core::wire::Message;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
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
