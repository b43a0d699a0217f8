//! The objects: one newtype per handle of `cairn_core::app`, each forwarding every public
//! method of the handle it wraps. `&str` parameters become `String`, handles come back as
//! `Arc`s, listeners are the host-implemented traits of [`crate::listeners`].

use std::sync::Arc;

use cairn_core::app;

pub(crate) use crate::listeners::*;
pub(crate) use crate::network::PlatformNetwork;
pub(crate) use crate::platform::CredentialKeeper;
pub(crate) use cairn_core::app::group::*;
pub(crate) use cairn_core::app::journal::*;
pub(crate) use cairn_core::app::meeting::*;
pub(crate) use cairn_core::app::membership::*;
pub(crate) use cairn_core::app::minutes::*;
pub(crate) use cairn_core::app::my_data::*;
pub(crate) use cairn_core::app::presence::*;
pub(crate) use cairn_core::app::resources::*;
pub(crate) use cairn_core::app::series::*;
pub(crate) use cairn_core::app::thread::*;
pub(crate) use cairn_core::app::workspace::*;
pub(crate) use cairn_core::app::{
    CairnConfig, CairnError, DocumentSync, RelayConfig, RelayStatus, SyncReport,
};
pub(crate) use cairn_sync::docs::group::Role;

mod cairn;
mod group;
mod journal;
mod meeting;
mod minutes;
mod resources;
mod series;
mod thread;
mod workspace;

macro_rules! object {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(uniffi::Object)]
        pub struct $name(pub(crate) app::$name);

        impl $name {
            /// Wraps the app handle for the host.
            pub(crate) fn wrap(inner: app::$name) -> Arc<$name> {
                Arc::new($name(inner))
            }
        }
    };
}

object!(
    /// Cairn on this device: started once per process with the data directory, the relays
    /// and their credentials, the journal key and the time zone. Every other object comes
    /// from it.
    Cairn
);
object!(
    /// The device across its groups and relays: joining with an invite, creating a group,
    /// the device list.
    Workspace
);
object!(
    /// One group: profile, roster, index, membership, and the way to its documents.
    Group
);
object!(
    /// A meeting (one-off or one occurrence of a series): agenda, attendance, RSVPs,
    /// roles, actions. Its minutes are a `Minutes` on the same document.
    Meeting
);
object!(
    /// The minutes of a meeting: co-edited rich text (indexes in UTF-16 code units),
    /// agreement, export.
    Minutes
);
object!(
    /// A recurring meeting: its rule in an IANA zone and its occurrences.
    Series
);
object!(
    /// A discussion thread between meetings.
    Thread
);
object!(
    /// The group's shared readings and files.
    Resources
);
object!(
    /// The device's private journal: reflections that never leave this device.
    Journal
);
object!(
    /// A live subscription: `cancel()` or releasing it (Kotlin `close()`, Swift `deinit`)
    /// ends it. No callback starts after `cancel()` returns.
    Subscription
);

#[uniffi::export]
impl Subscription {
    /// Ends the subscription (idempotent).
    pub fn cancel(&self) {
        self.0.cancel()
    }

    /// Whether it has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// What every document handle has: its id, its group's id, and its sync status (once and
/// live). A second `#[uniffi::export]` impl block per handle, so the five handles share it.
macro_rules! document_handle {
    ($($name:ident),*) => {$(
        #[uniffi::export]
        impl $name {
            /// The document's id.
            pub fn id(&self) -> String {
                self.0.id()
            }

            /// The id of the group it belongs to.
            pub fn group_id(&self) -> String {
                self.0.group_id()
            }

            /// This document's sync status: only on this device, sending, or safely on the
            /// relay, with the number of changes not yet acknowledged.
            pub async fn sync_status(&self) -> Result<DocumentSync, CairnError> {
                self.0.sync_status().await
            }

            /// This document's sync status, live: the current one first, then each change
            /// (an edit here, the relay acknowledging it).
            pub fn subscribe_sync_status(
                &self,
                listener: Arc<dyn SyncStatusListener>,
            ) -> Arc<Subscription> {
                Subscription::wrap(self.0.subscribe_sync_status(listen(listener)))
            }
        }
    )*};
}

document_handle!(Meeting, Minutes, Series, Thread, Resources);
