//! The simulator's storage host: what a host's storage thread does between an engine's
//! storage task and its result, following the rules a real host must keep.
//!
//! A task reaches the storage thread when the engine emits it ([`StorageHost::begin`]): a
//! write lands in the store's page cache at once, so a power cut from then on may catch it
//! there, and a read takes what the cache and the disk hold. The result is reported later,
//! in task order ([`StorageHost::finish`]): under [`Durability::FlushThenAck`] a write is
//! reported only after a flush, and reported failed when that flush fails.
//!
//! The read rule ([`AfterFailedFlush::RefuseReads`], the real runtime's): after a failed
//! flush, the store may still hold the unflushed writes in memory (sled does), and a reload
//! would read them and let the engine reveal changes that are not durable. So the host
//! serves no read until a later flush succeeds; it retries the flush before the read, and
//! fails the read when the retry fails too.
//!
//! Reads are taken when the task begins and judged when it finishes. That is the real
//! thread's order: every write begun before the read has finished by then, so either the
//! last flush succeeded (and made everything the read saw durable) or a flush failed and
//! the rule applies.

use cairn_sync::store::{Storage, StorageOp, StorageOutcome, StoreError};
use rand::Rng;

use super::store::{Durability, SimStore};

/// What a host serves after a flush failed, until a later flush succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailedFlush {
    /// The real runtime's rule: retry the flush before each read, and fail the read when
    /// the retry fails. A reload only ever sees durable data.
    RefuseReads,
    /// A broken host, for negative controls: serve reads from whatever the store holds,
    /// writes that never reached the disk included.
    ServeReads,
}

/// A task's result before the host reports it.
#[derive(Debug)]
pub struct Begun {
    write: bool,
    result: Result<StorageOutcome, StoreError>,
}

/// One node's storage thread over its [`SimStore`].
#[derive(Debug)]
pub struct StorageHost {
    store: SimStore,
    durability: Durability,
    after_failed_flush: AfterFailedFlush,
    /// The last flush failed; no later flush has succeeded.
    flush_failed: bool,
}

/// What [`StorageHost::finish`] did besides producing the result, for the statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Finished {
    /// A flush failed: a write was reported failed, or a read refused.
    pub flush_failed: bool,
    /// A read was refused by the rule.
    pub read_refused: bool,
}

impl StorageHost {
    /// A host over `store`.
    pub fn new(
        store: SimStore,
        durability: Durability,
        after_failed_flush: AfterFailedFlush,
    ) -> Self {
        StorageHost {
            store,
            durability,
            after_failed_flush,
            flush_failed: false,
        }
    }

    /// The store.
    pub fn store(&self) -> &SimStore {
        &self.store
    }

    /// The task reaches the storage thread: a write goes to the page cache, a read takes
    /// what the store holds now.
    pub fn begin(&self, op: &StorageOp) -> Begun {
        Begun {
            write: op.is_write(),
            result: self.store.apply(op),
        }
    }

    /// Flushes the store, remembering whether it failed.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let result = self.store.flush();
        self.flush_failed = result.is_err();
        result
    }

    /// The task's result, as the host reports it to the engine.
    pub fn finish(&mut self, begun: Begun) -> (Result<StorageOutcome, StoreError>, Finished) {
        let mut finished = Finished::default();
        let result = match begun.result {
            Err(e) => Err(e),
            Ok(outcome) if begun.write => match self.durability {
                Durability::FlushThenAck => match self.flush() {
                    Ok(()) => Ok(outcome),
                    Err(e) => {
                        finished.flush_failed = true;
                        Err(e)
                    }
                },
                Durability::AckBeforeFlush => Ok(outcome),
            },
            Ok(outcome) => {
                if self.flush_failed && self.after_failed_flush == AfterFailedFlush::RefuseReads {
                    if let Err(e) = self.flush() {
                        finished.flush_failed = true;
                        finished.read_refused = true;
                        return (Err(e), finished);
                    }
                }
                Ok(outcome)
            }
        };
        (result, finished)
    }

    /// A power cut: unflushed writes are lost (each survives with probability `survival`),
    /// and the host restarts with no failed flush behind it. Returns the writes lost.
    pub fn crash(&mut self, rng: &mut impl Rng, survival: f64) -> usize {
        self.flush_failed = false;
        self.store.crash(rng, survival)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sync::store::StorageKey;

    fn key(n: &str) -> StorageKey {
        vec!["d".into(), "incremental".into(), n.into()]
    }

    fn range() -> StorageOp {
        StorageOp::LoadRange {
            prefix: vec!["d".into()],
        }
    }

    fn put(n: &str) -> StorageOp {
        StorageOp::Put {
            key: key(n),
            data: n.as_bytes().to_vec(),
        }
    }

    fn host(rule: AfterFailedFlush) -> StorageHost {
        StorageHost::new(SimStore::default(), Durability::FlushThenAck, rule)
    }

    /// Returns how many chunks a reload would see, or `None` when the read fails.
    fn reload(host: &mut StorageHost) -> Option<usize> {
        let begun = host.begin(&range());
        match host.finish(begun).0 {
            Ok(StorageOutcome::Range(chunks)) => Some(chunks.len()),
            Ok(other) => panic!("a range read answered {other:?}"),
            Err(_) => None,
        }
    }

    #[test]
    fn a_write_whose_flush_fails_is_reported_failed() {
        let mut h = host(AfterFailedFlush::RefuseReads);
        h.store().set_full(true);
        let begun = h.begin(&put("1"));
        let (result, finished) = h.finish(begun);
        assert!(result.expect_err("the flush failed").is_disk_full());
        assert!(finished.flush_failed);
    }

    #[test]
    fn after_a_failed_flush_no_read_is_served_until_a_flush_succeeds() {
        let mut h = host(AfterFailedFlush::RefuseReads);
        let begun = h.begin(&put("1"));
        h.finish(begun).0.expect("the disk has room");
        h.store().set_full(true);
        let begun = h.begin(&put("2"));
        assert!(h.finish(begun).0.is_err());
        assert_eq!(
            reload(&mut h),
            None,
            "the retried flush fails too: the read must fail rather than show chunk 2"
        );
        h.store().set_full(false);
        assert_eq!(
            reload(&mut h),
            Some(2),
            "the retry succeeds: chunk 2 is durable now, so the read may show it"
        );
        assert_eq!(h.store().flushed_range(&["d".into()]).len(), 2);
    }

    #[test]
    fn a_host_without_the_rule_serves_a_write_that_is_not_durable() {
        let mut h = host(AfterFailedFlush::ServeReads);
        h.store().set_full(true);
        let begun = h.begin(&put("1"));
        assert!(h.finish(begun).0.is_err());
        assert_eq!(reload(&mut h), Some(1), "the failed write is read back");
        assert!(h.store().flushed_range(&["d".into()]).is_empty());
    }
}
