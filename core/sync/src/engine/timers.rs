//! The engine's timers in a min-heap: handshake deadlines and idle evictions cost
//! O(log n) to schedule and fire, however many documents and sockets there are.
//!
//! Entries are never updated in place. A document's idle deadline moves with every message,
//! so its entry may fire early; the engine then checks the real deadline and reschedules.
//! Entries for documents that were dropped (their generation changed) are skipped when they
//! fire. Each live document and handshaking connection has at most one entry.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::ids::{ConnectionId, DocumentId};
use crate::time::Timestamp;

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// The connection must finish its handshake by then.
    Handshake(ConnectionId),
    /// The document (of this generation) may be idle by then.
    Idle(DocumentId, u64),
    /// The document's (of this generation) debounced announcement is due.
    Sync(DocumentId, u64),
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Timestamp, Timer)>>,
}

impl Timers {
    pub(super) fn schedule(&mut self, at: Timestamp, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    /// The earliest deadline (possibly of an entry that turns out stale).
    pub(super) fn next(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the earliest entry due at `now`.
    pub(super) fn pop_due(&mut self, now: Timestamp) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, t))| t),
            _ => None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}
