//! Callbacks for live values, and the handle that ends them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::app::CairnError;

/// Receives a live value: the current one first, then one per change. Called on Cairn's
/// runtime threads: hand the value to the UI thread and return quickly.
///
/// Any `Fn(T) + Send + Sync` closure is a listener (errors are then ignored). The Kotlin
/// and Swift bindings implement it once per record type.
pub trait Listener<T>: Send + Sync {
    /// A new value.
    fn on_update(&self, value: T);
    /// The value could not be produced (the document could not be loaded, or it holds
    /// data this version cannot read). The subscription stays open: a later change that
    /// fixes it delivers a value again.
    fn on_error(&self, error: CairnError) {
        let _ = error;
    }
}

impl<T, F: Fn(T) + Send + Sync> Listener<T> for F {
    fn on_update(&self, value: T) {
        self(value)
    }
}

/// A live subscription. [`Subscription::cancel`] or dropping it ends it: no callback starts
/// after `cancel` returns (one already running on another thread finishes).
pub struct Subscription {
    cancelled: Arc<AtomicBool>,
    on_cancel: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Subscription {
    /// A subscription whose deliveries check `cancelled` and whose cancel runs `on_cancel`.
    pub(crate) fn new(
        cancelled: Arc<AtomicBool>,
        on_cancel: impl FnOnce() + Send + 'static,
    ) -> Subscription {
        Subscription {
            cancelled,
            on_cancel: Mutex::new(Some(Box::new(on_cancel))),
        }
    }

    /// Ends the subscription (idempotent).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let f = self
            .on_cancel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(f) = f {
            f();
        }
    }

    /// Whether it has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel();
    }
}
