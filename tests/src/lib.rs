//! # cairn-tests
//!
//! Cairn's test harnesses, shared by the integration tests in `tests/tests/`:
//!
//! - [`sim`]: a deterministic network simulator that drives one relay engine and several
//!   client engines over simulated links and stores, with a virtual clock, a seeded RNG,
//!   and fault injection (cut links, partitions, delays, relay power loss, disk-full writes).
//!
//! The integration tests: `simulation.rs` (convergence and quiet-when-idle over many seeds),
//! `power_loss.rs` (no acknowledged change is lost when the relay loses power, with a
//! negative control), `fuzz_regressions.rs` (replays `fuzz/regressions/`).
#![warn(missing_docs)]

pub mod relay;
pub mod samod_peer;
pub mod sim;
