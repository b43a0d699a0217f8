//! The host-implemented listeners: one foreign trait per live value type, each adapted to
//! `cairn_core::app::Listener<T>`. Cairn calls them on its own runtime threads: the host
//! hands the value to its UI thread and returns quickly. An exception a listener throws
//! is dropped here (the subscription goes on).

use std::sync::Arc;

use cairn_core::app::group::GroupRecord;
use cairn_core::app::meeting::MeetingRecord;
use cairn_core::app::minutes::MinutesRecord;
use cairn_core::app::presence::PeerCursor;
use cairn_core::app::resources::ResourceRecord;
use cairn_core::app::series::SeriesRecord;
use cairn_core::app::thread::ThreadRecord;
use cairn_core::app::{CairnError, DocumentSync, Listener, RelayStatus};

/// A host listener seen as an app listener.
pub(crate) struct Adapter<L: ?Sized>(Arc<L>);

/// Adapts a host listener to the app's `Listener<T>`; `T` follows from where it is passed.
pub(crate) fn listen<T, L>(listener: Arc<L>) -> Arc<dyn Listener<T>>
where
    L: ?Sized + 'static,
    Adapter<L>: Listener<T>,
{
    Arc::new(Adapter(listener))
}

macro_rules! listener {
    ($(#[$doc:meta])* $name:ident($value:ty)) => {
        $(#[$doc])*
        #[uniffi::export(with_foreign)]
        pub trait $name: Send + Sync {
            /// A new value: the current one first, then one per change.
            fn on_update(&self, value: $value);
            /// The value could not be produced (the document could not be loaded, or holds
            /// data this version cannot read). The subscription stays open.
            fn on_error(&self, error: CairnError);
        }

        impl Listener<$value> for Adapter<dyn $name> {
            fn on_update(&self, value: $value) {
                crate::host(|| self.0.on_update(value));
            }

            fn on_error(&self, error: CairnError) {
                crate::host(|| self.0.on_error(error));
            }
        }
    };
}

listener!(
    /// Receives a group as one value: profile, roster, index, this member's role.
    GroupListener(GroupRecord)
);
listener!(
    /// Receives a meeting: agenda, attendance, actions.
    MeetingListener(MeetingRecord)
);
listener!(
    /// Receives the minutes: text as spans and blocks, status, agreement.
    MinutesListener(MinutesRecord)
);
listener!(
    /// Receives a series: rule, moved and cancelled occurrences.
    SeriesListener(SeriesRecord)
);
listener!(
    /// Receives a thread: its posts in order.
    ThreadListener(ThreadRecord)
);
listener!(
    /// Receives the group's resources.
    ResourcesListener(Vec<ResourceRecord>)
);
listener!(
    /// Receives every relay's connection state.
    RelaysListener(Vec<RelayStatus>)
);
listener!(
    /// Receives the other devices' cursors in the minutes.
    CursorsListener(Vec<PeerCursor>)
);
listener!(
    /// Receives a document's sync status: only on this device, sending, safe on the relay.
    SyncStatusListener(DocumentSync)
);
