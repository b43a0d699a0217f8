//! # cairn-tests
//!
//! Cairn's test harnesses, shared by the integration tests in `tests/tests/`:
//!
//! - [`sim`]: a deterministic network simulator that drives one relay engine and several
//!   client engines over simulated links and stores, with a virtual clock, a seeded RNG,
//!   and fault injection (cut links, partitions, delays, relay power loss, disk-full writes).
//! - [`volatile_fs`]: an in-memory FUSE filesystem that forgets, at a simulated power cut,
//!   every write and directory change not made durable by an fsync.
//! - [`app`]: helpers for tests that drive the app API (start a device, join, wait online).
//! - [`proxy`]: a loopback TCP proxy that takes the network away (down, or half-open).
//!
//! The integration tests: `simulation.rs` (convergence and quiet-when-idle over many seeds),
//! `power_loss.rs` (no acknowledged change is lost when the relay loses power, with a
//! negative control), `fuzz_regressions.rs` (replays `fuzz/regressions/`), `volatile_fs.rs`
//! (the volatile filesystem forgets what it should, and sled runs on it), `power_cut.rs`
//! (no acknowledged change is lost when the relay's or the phone's disk loses power, with
//! negative controls).
#![warn(missing_docs)]

pub mod app;
pub mod proxy;
pub mod relay;
pub mod samod_peer;
pub mod sim;
pub mod volatile_fs;
