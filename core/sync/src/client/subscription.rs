//! Callback subscriptions: the current state of a document first, then one call per new
//! state, on the client's runtime, until cancelled.
//!
//! Delivery and cancellation share one lock: [`SubscriptionHandle::cancel`] waits for a
//! callback under way to return, and no callback starts once it has returned (one already
//! scheduled sees the flag and is skipped). A callback may cancel its own subscription.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use automerge::{Automerge, ChangeHash};
use tokio::sync::Notify;

use super::{Client, ClientError, Shared, RELOAD_TIMEOUT};
use crate::ids::DocumentId;

/// What a subscription's callback receives.
#[derive(Debug)]
pub enum Update<T> {
    /// A state of the document: the first call carries the state when the subscription
    /// started, each later one a state whose heads differ from the last delivered (changes
    /// that land while a callback runs are delivered together, as the newest state).
    Changed {
        /// The document's heads at this state.
        heads: Vec<ChangeHash>,
        /// What the subscription's view computed from the document at these heads.
        value: T,
    },
    /// The document could not be loaded (not on the device and no relay has it, or the
    /// relay could not be reached in time). The subscription has ended.
    Failed(ClientError),
}

/// Guards delivery against cancellation (see the module docs).
#[derive(Default)]
pub(super) struct Gate {
    cancelled: AtomicBool,
    /// Held while a callback runs.
    delivering: Mutex<()>,
    /// The thread running a callback, so a callback that cancels does not wait for itself.
    caller: Mutex<Option<ThreadId>>,
    wake: Notify,
}

impl Gate {
    /// Runs `f` unless cancelled; returns false when cancelled.
    pub(super) fn deliver(&self, f: impl FnOnce()) -> bool {
        let _one = self.delivering.lock().unwrap_or_else(|e| e.into_inner());
        if self.cancelled.load(Ordering::SeqCst) {
            return false;
        }
        *self.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current().id());
        f();
        *self.caller.lock().unwrap_or_else(|e| e.into_inner()) = None;
        !self.cancelled.load(Ordering::SeqCst)
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let inside = *self.caller.lock().unwrap_or_else(|e| e.into_inner())
            == Some(std::thread::current().id());
        if !inside {
            // Waits for a callback under way; later ones see the flag.
            drop(self.delivering.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Resolves once cancelled.
    pub(super) async fn cancelled(&self) {
        while !self.cancelled.load(Ordering::SeqCst) {
            self.wake.notified().await;
        }
    }
}

/// A running subscription ([`Client::subscribe`], [`RelayHandle::on_status`](super::RelayHandle::on_status)).
/// [`SubscriptionHandle::cancel`] or dropping it ends it at once.
pub struct SubscriptionHandle {
    gate: Arc<Gate>,
}

impl std::fmt::Debug for SubscriptionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionHandle")
            .field("cancelled", &self.gate.cancelled.load(Ordering::SeqCst))
            .finish()
    }
}

impl SubscriptionHandle {
    pub(super) fn new(gate: Arc<Gate>) -> Self {
        SubscriptionHandle { gate }
    }

    /// Ends the subscription: once this returns, the callback is not called again (a call
    /// under way on another thread is waited for). Idempotent.
    pub fn cancel(&self) {
        self.gate.cancel();
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        self.gate.cancel();
    }
}

/// Counts a running subscription task; decrements when the task ends.
pub(super) struct SubscriptionGuard(Arc<Shared>);

impl SubscriptionGuard {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        shared.subscriptions.fetch_add(1, Ordering::SeqCst);
        SubscriptionGuard(shared)
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Client {
    /// Subscribes to `doc`: `on_update` gets [`Update::Changed`] with `view` of the
    /// current state first, then one per new state (local or remote changes; see
    /// [`Update`]), or [`Update::Failed`] once if the document cannot be loaded.
    ///
    /// Not async and infallible to call: a task on the client's runtime loads the document
    /// when it is not in memory (from the device, else the relay, as [`Client::find`]
    /// does) and calls `on_update` there. `view` runs on the engine task: keep it to
    /// reading. The task wakes only for events about `doc`
    /// ([`Client::subscription_wakeups`]). Cancel with the handle, or drop it.
    pub fn subscribe<T: Send + 'static>(
        &self,
        doc: DocumentId,
        view: impl Fn(&Automerge) -> T + Send + Sync + 'static,
        on_update: impl Fn(Update<T>) + Send + Sync + 'static,
    ) -> SubscriptionHandle {
        let gate = Arc::new(Gate::default());
        let guard = SubscriptionGuard::new(self.shared.clone());
        // Listening before the first read, so no change between the two is missed.
        let mut changes = self.shared.docs.subscribe(doc);
        let mut stop = self.shared.stop.subscribe();
        let client = self.clone();
        let task_gate = gate.clone();
        let view = Arc::new(view);
        self.shared.runtime.spawn(async move {
            let _guard = guard;
            let gate = task_gate;
            let loaded = client
                .host
                .call(move |e, _| e.document(&doc).is_some())
                .await
                .unwrap_or(false);
            if !loaded {
                let found = tokio::select! {
                    found = client.find(doc, RELOAD_TIMEOUT) => found,
                    _ = gate.cancelled() => return,
                    _ = stop.changed() => return,
                };
                if let Err(e) = found {
                    gate.deliver(|| on_update(Update::Failed(e)));
                    return;
                }
            }
            let mut last: Option<Vec<ChangeHash>> = None;
            loop {
                changes.borrow_and_update();
                let (view, seen) = (view.clone(), last.clone());
                let next = client
                    .host
                    .call(move |e, _| {
                        let d = e.document(&doc)?;
                        let heads = d.get_heads();
                        (Some(&heads) != seen.as_ref()).then(|| (heads, view(d)))
                    })
                    .await;
                match next {
                    Ok(Some((heads, value))) => {
                        last = Some(heads.clone());
                        if !gate.deliver(|| on_update(Update::Changed { heads, value })) {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => return,
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = gate.cancelled() => return,
                    _ = stop.changed() => return,
                }
                client.shared.wakeups.fetch_add(1, Ordering::Relaxed);
            }
        });
        SubscriptionHandle::new(gate)
    }

    /// Subscription tasks still running (a cancelled or dropped [`SubscriptionHandle`]
    /// stops its task at once).
    pub fn active_subscriptions(&self) -> usize {
        self.shared.subscriptions.load(Ordering::SeqCst)
    }

    /// How many times subscription tasks woke up for an event, in total since the client
    /// started (a diagnostic: an event about one document wakes only that document's
    /// subscriptions).
    pub fn subscription_wakeups(&self) -> u64 {
        self.shared.wakeups.load(Ordering::Relaxed)
    }
}
