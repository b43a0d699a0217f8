//! `Cairn`: The device's Cairn: started once per process with its settings, the way to every other handle.

use std::sync::Arc;

use cairn_core::app;

use cairn_sync::client::{HttpTransport, Transport};

use super::*;
use crate::network::HostTransport;
use crate::platform::HostKeeper;

#[uniffi::export]
impl Cairn {
    /// Starts Cairn: opens the store in `config.data_dir`, dials the relays through the
    /// host's `network` (`None`: Cairn's own websocket and plain-HTTP clients, for tests and
    /// desktops), and reports new credentials to `credentials` so the app can keep them in
    /// the platform keystore.
    #[uniffi::constructor]
    pub fn new(
        config: CairnConfig,
        network: Option<Arc<dyn PlatformNetwork>>,
        credentials: Option<Arc<dyn CredentialKeeper>>,
    ) -> Result<Arc<Cairn>, CairnError> {
        let (transport, http) = match network {
            Some(network) => {
                let host = Arc::new(HostTransport::new(network));
                let transport: Arc<dyn Transport> = host.clone();
                let http: Arc<dyn HttpTransport> = host;
                (Some(transport), Some(http))
            }
            None => (None, None),
        };
        let credentials = credentials
            .map(|keeper| Arc::new(HostKeeper(keeper)) as Arc<dyn app::CredentialKeeper>);
        let platform = app::Platform {
            transport,
            http,
            credentials,
        };
        app::Cairn::start_with(config, platform).map(Cairn::wrap)
    }

    /// The device's IANA time zone changed (a member who travels): times are shown in the
    /// new one from now on. Unknown names are [`CairnError::Invalid`].
    pub fn set_time_zone(&self, zone: String) -> Result<(), CairnError> {
        self.0.set_time_zone(&zone)
    }

    /// The device's IANA time zone name.
    pub fn time_zone(&self) -> String {
        self.0.time_zone()
    }

    /// Stops syncing, lets pending writes finish, and stops the runtime's tasks.
    pub async fn shutdown(&self) {
        self.0.shutdown().await
    }

    /// The device across its groups.
    pub fn workspace(&self) -> Arc<Workspace> {
        Workspace::wrap(self.0.workspace())
    }

    /// The group with this id.
    pub fn group(&self, group_id: String) -> Arc<Group> {
        Group::wrap(self.0.group(&group_id))
    }

    /// The private journal.
    pub fn journal(&self) -> Arc<Journal> {
        Journal::wrap(self.0.journal())
    }

    /// Each relay's state now.
    pub fn relays(&self) -> Vec<RelayStatus> {
        self.0.relays()
    }

    /// Every relay's state now, then again whenever one changes, until the subscription
    /// ends. Covers the relays enrolled when it is called: subscribe again after joining a
    /// group on a new relay.
    pub fn subscribe_relays(&self, listener: Arc<dyn RelaysListener>) -> Arc<Subscription> {
        Subscription::wrap(self.0.subscribe_relays(listen(listener)))
    }

    /// Syncs what is pending now, for at most `deadline_ms` (a background task's budget):
    /// dials every relay at once, sends pending registrations, and waits until the relays
    /// hold every change on this device or the deadline passes. Running out of time is
    /// not an error: the report lists what is still pending (safe on the device).
    pub async fn sync_now(&self, deadline_ms: u64) -> Result<SyncReport, CairnError> {
        self.0.sync_now(deadline_ms).await
    }

    /// Leaves the group (the relay removes this member; the last organiser cannot leave)
    /// and wipes its documents from this device. Returns how many documents were wiped.
    pub async fn leave_group(&self, group_id: String) -> Result<u32, CairnError> {
        self.0.leave_group(&group_id).await
    }

    /// Wipes a group's documents from this device without asking the relay (a member who
    /// was removed, or who left from another device). Returns how many were wiped.
    pub async fn forget_group(&self, group_id: String) -> Result<u32, CairnError> {
        self.0.forget_group(&group_id).await
    }

    /// Starts syncing with the relay at `url` with this credential (after enrolling, or
    /// a credential restored from the keystore). The same URL again replaces the
    /// credential.
    pub fn add_relay(&self, relay: RelayConfig) -> Result<(), CairnError> {
        self.0.add_relay(relay)
    }

    /// The URLs of the relays this device is enrolled with.
    pub fn relay_urls(&self) -> Vec<String> {
        self.0.relay_urls()
    }
}
