//! Time as the engine sees it: milliseconds handed in by the host.

use std::time::Duration;

/// A point in time in milliseconds on the host's monotonic clock. The engine never reads a
/// clock; hosts pass `now` with every input, which keeps the engine deterministic under a
/// simulated clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// From milliseconds since the host's epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }
    /// Milliseconds since the host's epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }
    /// This time plus a duration (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(d.as_millis() as u64))
    }
    /// Time elapsed since `earlier` (zero if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}
