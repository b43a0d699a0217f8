//! Which seeds a simulation test runs, and how a failing one is reported.
//!
//! - `CAIRN_SIM_SEED=n` replays exactly seed `n`.
//! - `CAIRN_SIM_SEEDS=n` runs seeds `0..n` (the longer simulation mode).
//! - Otherwise each test runs its default number of seeds.
//! - `CAIRN_SIM_VERBOSE=1` prints a line of statistics per seed.
//! - `CAIRN_SIM_TRACE=1` prints every simulated event (use it with `CAIRN_SIM_SEED` and
//!   `--nocapture`).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}

/// The seeds to run, honouring `CAIRN_SIM_SEED` and `CAIRN_SIM_SEEDS`.
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Some(seed) = env_u64("CAIRN_SIM_SEED") {
        return vec![seed];
    }
    (0..env_u64("CAIRN_SIM_SEEDS").unwrap_or(default_count)).collect()
}

/// Whether per-seed statistics should be printed.
pub fn verbose() -> bool {
    std::env::var_os("CAIRN_SIM_VERBOSE").is_some()
}

/// Runs `run` once per seed. When one panics, prints the seed and the command that replays
/// it, then lets the panic continue so the test fails.
pub fn for_each_seed(test: &str, default_count: u64, mut run: impl FnMut(u64)) {
    for seed in seeds(default_count) {
        run_seed(test, seed, &mut run);
    }
}

/// Runs `run` for one given seed (a pinned regression), reporting it like [`for_each_seed`].
pub fn run_seed(test: &str, seed: u64, run: impl FnOnce(u64)) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(seed))) {
        eprintln!("{test}: seed {seed} failed; replay with CAIRN_SIM_SEED={seed} cargo test -p cairn-tests -- {test}");
        resume_unwind(panic);
    }
}
