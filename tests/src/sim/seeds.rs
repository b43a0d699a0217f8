//! Which seeds a simulation test runs, and how a failing one is reported.
//!
//! - `CAIRN_SIM_SEED=n` replays exactly seed `n` (tests whose claim is about a set of
//!   seeds, like "at least one seed catches it", always run their set).
//! - `CAIRN_SIM_SEEDS=n` runs seeds `0..n` (the longer simulation mode).
//! - Otherwise each test runs its default number of seeds.
//! - `CAIRN_SIM_THREADS=n` runs the seeds on `n` threads (default: one per core).
//! - `CAIRN_SIM_VERBOSE=1` prints a line of statistics per seed.
//! - `CAIRN_SIM_TRACE=1` prints every simulated event (use it with `CAIRN_SIM_SEED` and
//!   `--nocapture`).

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

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

/// Runs `run` once per seed, on as many threads as the machine has cores (or
/// `CAIRN_SIM_THREADS`), and returns what each seed returned, in seed order. When one
/// panics, prints the seed and the command that replays it, lets the other threads finish
/// the seed they are on, then lets the panic continue so the test fails.
pub fn for_each_seed<T: Send>(
    test: &str,
    default_count: u64,
    run: impl Fn(u64) -> T + Sync,
) -> Vec<T> {
    for_seeds(test, &seeds(default_count), run)
}

/// [`for_each_seed`] over exactly `seeds`, whatever the environment says (for a claim about
/// a set of seeds, which one replayed seed cannot make).
pub fn for_seeds<T: Send>(test: &str, seeds: &[u64], run: impl Fn(u64) -> T + Sync) -> Vec<T> {
    let threads = threads().min(seeds.len()).max(1);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<Option<T>>> = Mutex::new(seeds.iter().map(|_| None).collect());
    let failure: Mutex<Option<Box<dyn Any + Send>>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else {
                        return;
                    };
                    match catch_unwind(AssertUnwindSafe(|| run(seed))) {
                        Ok(value) => lock(&results)[i] = Some(value),
                        Err(panic) => {
                            report(test, seed);
                            stop.store(true, Ordering::Relaxed);
                            lock(&failure).get_or_insert(panic);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(panic) = lock(&failure).take() {
        resume_unwind(panic);
    }
    let results = std::mem::take(&mut *lock(&results));
    results
        .into_iter()
        .map(|r| r.expect("every seed ran"))
        .collect()
}

/// Threads for [`for_each_seed`]: `CAIRN_SIM_THREADS`, else the machine's cores.
fn threads() -> usize {
    env_u64("CAIRN_SIM_THREADS").map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n.max(1) as usize,
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic inside `run` is caught before it can poison these locks.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn report(test: &str, seed: u64) {
    eprintln!("{test}: seed {seed} failed; replay with CAIRN_SIM_SEED={seed} cargo test -p cairn-tests -- {test}");
}

/// Runs `run` for one given seed (a pinned regression), reporting it like [`for_each_seed`].
pub fn run_seed<T>(test: &str, seed: u64, run: impl FnOnce(u64) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(|| run(seed))) {
        Ok(value) => value,
        Err(panic) => {
            report(test, seed);
            resume_unwind(panic)
        }
    }
}
