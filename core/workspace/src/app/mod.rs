//! The app-facing API: what a phone app (through the Kotlin and Swift bindings) or a
//! desktop app calls.
//!
//! [`Cairn`] is started once with the data directory, the relays and their device
//! credentials, the journal key (all from the platform keystore) and the device's IANA
//! time zone. It owns its runtime (or runs on the app's, [`Cairn::start_on`]) and every
//! `async` method can be awaited from any executor: the work runs on Cairn's runtime.
//!
//! Typed handles give owned records: ids as strings, instants as milliseconds since the
//! Unix epoch, zones as IANA names, heads as hex. Live values come through a
//! [`Listener`]: the current value first, then one per change of that document only,
//! until the [`Subscription`] is cancelled or dropped. Every error is a [`CairnError`].

mod cairn;
mod error;
mod handles;
mod listen;
pub mod membership;

pub mod group;
pub mod journal;
pub mod meeting;
pub mod minutes;
pub mod resources;
pub mod series;
pub mod sync;
pub mod thread;
pub mod workspace;

pub use cairn::{
    Cairn, CairnConfig, RelayConfig, JOURNAL_KEY_BYTES, LOAD_TIMEOUT, RUNTIME_THREADS,
};
pub use error::CairnError;
pub use handles::{Group, Journal, Meeting, Minutes, Resources, Series, Thread, Workspace};
pub use listen::{Listener, Subscription};
pub use sync::{ConnectionState, RelayStatus, SyncReport};
