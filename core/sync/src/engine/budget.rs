//! Token buckets: how the engine rate-limits what one socket or one identity may do
//! (ephemeral messages, takeovers, new documents) without a clock of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::time::Timestamp;

/// A bucket of `burst` tokens that refills one token per `interval`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bucket {
    tokens: u32,
    /// When the bucket last gained a token (or was full).
    since: Timestamp,
}

impl Bucket {
    pub(super) fn full(burst: u32, now: Timestamp) -> Self {
        Bucket {
            tokens: burst,
            since: now,
        }
    }

    fn refill(&mut self, burst: u32, interval: Duration, now: Timestamp) {
        let step = interval.as_millis().max(1) as u64;
        let elapsed = now.as_millis().saturating_sub(self.since.as_millis());
        let gained = elapsed / step;
        if gained == 0 {
            return;
        }
        let tokens = u64::from(self.tokens) + gained;
        if tokens >= u64::from(burst) {
            self.tokens = burst;
            self.since = now;
        } else {
            self.tokens = tokens as u32;
            self.since = Timestamp::from_millis(self.since.as_millis() + gained * step);
        }
    }

    /// Takes one token if there is one.
    pub(super) fn take(&mut self, burst: u32, interval: Duration, now: Timestamp) -> bool {
        self.refill(burst, interval, now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    fn is_full(&mut self, burst: u32, interval: Duration, now: Timestamp) -> bool {
        self.refill(burst, interval, now);
        self.tokens >= burst
    }
}

/// One bucket per key (an identity), remembering at most `max_keys` of them. A full
/// bucket carries no information, so those are forgotten first.
#[derive(Debug, Default)]
pub(super) struct Buckets {
    buckets: BTreeMap<String, Bucket>,
}

impl Buckets {
    pub(super) fn take(
        &mut self,
        key: &str,
        burst: u32,
        interval: Duration,
        max_keys: usize,
        now: Timestamp,
    ) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= max_keys.max(1) {
            let forget = self
                .buckets
                .iter_mut()
                .find_map(|(k, b)| b.is_full(burst, interval, now).then(|| k.clone()))
                .or_else(|| self.buckets.keys().next().cloned());
            if let Some(k) = forget {
                self.buckets.remove(&k);
            }
        }
        self.buckets
            .entry(key.to_owned())
            .or_insert_with(|| Bucket::full(burst, now))
            .take(burst, interval, now)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(100);

    #[test]
    fn a_bucket_allows_its_burst_then_one_per_interval() {
        let t0 = Timestamp::from_millis(1_000);
        let mut b = Bucket::full(3, t0);
        assert!((0..3).all(|_| b.take(3, MS, t0)));
        assert!(!b.take(3, MS, t0), "the burst is spent");
        assert!(!b.take(3, MS, t0.plus(Duration::from_millis(99))));
        assert!(b.take(3, MS, t0.plus(MS)), "one token per interval");
        assert!(!b.take(3, MS, t0.plus(MS)));
        // A long pause refills to the burst, never beyond.
        let later = t0.plus(Duration::from_secs(60));
        assert!((0..3).all(|_| b.take(3, MS, later)));
        assert!(!b.take(3, MS, later));
    }

    #[test]
    fn buckets_remember_at_most_max_keys_and_forget_full_ones_first() {
        let t0 = Timestamp::from_millis(0);
        let mut all = Buckets::default();
        assert!(all.take("spent", 1, MS, 2, t0));
        assert!(all.take("fresh", 5, MS, 2, t0));
        // A third key forgets a bucket; "spent" is empty, so it must stay spent.
        assert!(all.take("third", 1, MS, 2, t0));
        assert_eq!(all.len(), 2);
        assert!(!all.take("spent", 1, MS, 2, t0));
    }
}
