//! Who to wake when something happens: one notifier per document, made on demand and
//! dropped once nobody listens, so an event about document D wakes only D's waiters and
//! subscriptions; plus client-wide notifiers for what is not about one document.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::ids::DocumentId;

/// Notifiers kept before the map is swept of ones nobody listens to any more: 256. A
/// notifier is dropped on its document's next event when unheard; the sweep covers
/// documents that never have another event, and costs one pass per 256 new listeners.
const SWEEP_AFTER: usize = 256;

/// One [`watch`] counter per document someone waits on.
#[derive(Default)]
pub(super) struct DocNotifiers {
    docs: Mutex<BTreeMap<DocumentId, watch::Sender<u64>>>,
}

impl DocNotifiers {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<DocumentId, watch::Sender<u64>>> {
        self.docs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that changes on every later event about `doc`.
    pub(super) fn subscribe(&self, doc: DocumentId) -> watch::Receiver<u64> {
        let mut docs = self.map();
        if docs.len() >= SWEEP_AFTER && !docs.contains_key(&doc) {
            docs.retain(|_, tx| tx.receiver_count() > 0);
        }
        docs.entry(doc)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes `doc`'s listeners (and drops its notifier when there are none).
    pub(super) fn notify(&self, doc: DocumentId) {
        let mut docs = self.map();
        let Some(tx) = docs.get(&doc) else {
            return;
        };
        if tx.receiver_count() == 0 {
            docs.remove(&doc);
        } else {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wakes every document's listeners.
    pub(super) fn notify_all(&self) {
        let mut docs = self.map();
        docs.retain(|_, tx| tx.receiver_count() > 0);
        for tx in docs.values() {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Notifiers currently kept (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map().len()
    }
}

/// Bumps a client-wide counter.
pub(super) fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|v| *v = v.wrapping_add(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_wakes_only_its_documents_listeners_and_unheard_notifiers_go() {
        let n = DocNotifiers::default();
        let (a, b) = (
            DocumentId::from_bytes([1; 16]),
            DocumentId::from_bytes([2; 16]),
        );
        let mut ra = n.subscribe(a);
        let rb = n.subscribe(b);
        n.notify(a);
        assert!(ra.has_changed().unwrap());
        assert!(!rb.has_changed().unwrap());
        ra.borrow_and_update();
        drop(rb);
        n.notify(b);
        assert_eq!(n.len(), 1, "b's notifier is dropped once nobody listens");
        n.notify(a);
        assert!(ra.has_changed().unwrap());
    }
}
