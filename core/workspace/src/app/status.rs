//! Per-document sync status: what a phone shows beside a meeting, its minutes or a thread
//! ("only on this phone", "sending", "safe on the relay"). The overall picture is
//! [`Cairn::relays`](crate::app::Cairn::relays) and
//! [`Cairn::sync_now`](crate::app::Cairn::sync_now).

use cairn_sync::client::SyncStatus;
use cairn_sync::ids::DocumentId;

use crate::app::{
    Cairn, CairnError, Listener, Meeting, Minutes, Resources, Series, Subscription, Thread,
};

/// Where a document's changes made on this device stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DocumentSyncState {
    /// No relay has shown it holds any of the document: it exists only on this device.
    OnlyOnThisDevice,
    /// A relay holds part of it; some changes made here are not acknowledged yet.
    Sending,
    /// A relay has shown it holds every change this device has.
    SafelyOnRelay,
}

/// A document's sync status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DocumentSync {
    /// Where it stands.
    pub state: DocumentSyncState,
    /// Changes on this device a relay has not acknowledged yet (0 once safe).
    pub pending_changes: u32,
}

impl From<SyncStatus> for DocumentSyncState {
    fn from(s: SyncStatus) -> Self {
        match s {
            SyncStatus::OnlyOnThisDevice => DocumentSyncState::OnlyOnThisDevice,
            SyncStatus::Sending => DocumentSyncState::Sending,
            SyncStatus::SafelyOnRelay => DocumentSyncState::SafelyOnRelay,
        }
    }
}

impl Cairn {
    /// `doc`'s sync status (loading it first if it is only on disk).
    pub(crate) async fn document_sync(&self, doc: DocumentId) -> Result<DocumentSync, CairnError> {
        // Loads it (from the device, else the relay) as every read does.
        self.read_doc(doc, |_| Ok(())).await?;
        let client = self.inner.client.clone();
        self.run(async move {
            let (status, pending) = client.sync_state(doc).await?;
            Ok(DocumentSync {
                state: status.into(),
                pending_changes: crate::app::saturating_u32(pending),
            })
        })
        .await
    }
}

macro_rules! sync_status {
    ($($handle:ident),*) => {$(
        impl $handle {
            /// This document's sync status: only on this device, sending, or safely on
            /// the relay, with the number of changes not yet acknowledged.
            pub async fn sync_status(&self) -> Result<DocumentSync, CairnError> {
                self.cairn.document_sync(self.doc).await
            }

            /// This document's sync status, live: the current one first, then each
            /// change (an edit here, the relay acknowledging it).
            pub fn subscribe_sync_status(
                &self,
                listener: std::sync::Arc<dyn Listener<DocumentSync>>,
            ) -> Subscription {
                let (cairn, doc) = (self.cairn.clone(), self.doc);
                self.cairn.subscribe_computed(
                    doc,
                    None,
                    None,
                    move || {
                        let cairn = cairn.clone();
                        async move { cairn.document_sync(doc).await }
                    },
                    listener,
                )
            }
        }
    )*};
}

sync_status!(Meeting, Minutes, Series, Thread, Resources);
