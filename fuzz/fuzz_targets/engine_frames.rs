//! Drives a relay engine through a fuzzer-chosen list of steps and checks its invariants
//! after each one. The harness lives in `../harness/engine_frames.rs` so that
//! `cargo test -p cairn-tests --test fuzz_regressions` replays saved inputs through the
//! very same code.
#![no_main]

#[path = "../harness/engine_frames.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|steps: Vec<harness::Step>| harness::run(steps));
