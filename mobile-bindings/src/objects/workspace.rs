//! `Workspace`: The device across its groups and relays: joining, creating groups, devices.

use std::sync::Arc;

use super::*;

#[uniffi::export]
impl Workspace {
    /// This device's groups on every relay it is enrolled with (what the relays said last
    /// when offline).
    pub async fn groups(&self) -> Result<Vec<GroupSummary>, CairnError> {
        self.0.groups().await
    }

    /// The group with this id.
    pub fn group(&self, group_id: String) -> Arc<Group> {
        Group::wrap(self.0.group(&group_id))
    }

    /// What the invite (a code, or its `cairn://invite/…` link) on the relay at
    /// `relay_url` offers.
    pub async fn preview_invite(
        &self,
        relay_url: String,
        invite: String,
    ) -> Result<InviteRecord, CairnError> {
        self.0.preview_invite(&relay_url, &invite).await
    }

    /// Joins a group with an invite under `pseudonym`, enrolling this device with the
    /// relay if it was not yet, and starts syncing with it. Keep the returned credential
    /// in the platform keystore.
    pub async fn join(
        &self,
        relay_url: String,
        invite: String,
        pseudonym: String,
    ) -> Result<Enrolment, CairnError> {
        self.0.join(&relay_url, &invite, &pseudonym).await
    }

    /// Creates a group on the relay at `relay_url` (this member becomes its first
    /// organiser, if the relay lets members create groups).
    pub async fn create_group(
        &self,
        relay_url: String,
        pseudonym: String,
        code_of_conduct: String,
    ) -> Result<Arc<Group>, CairnError> {
        self.0
            .create_group(&relay_url, &pseudonym, &code_of_conduct)
            .await
            .map(Group::wrap)
    }

    /// Accepts version `version` of the group's code of conduct (what the member read).
    pub async fn accept_code_of_conduct(
        &self,
        group_id: String,
        version: u64,
    ) -> Result<(), CairnError> {
        self.0.accept_code_of_conduct(&group_id, version).await
    }

    /// This member's devices on the relay at `relay_url`.
    pub async fn devices(&self, relay_url: String) -> Result<Vec<DeviceRecord>, CairnError> {
        self.0.devices(&relay_url).await
    }

    /// Revokes one of this member's devices (a lost phone): it is disconnected at once.
    pub async fn revoke_device(
        &self,
        relay_url: String,
        device_id: String,
    ) -> Result<(), CairnError> {
        self.0.revoke_device(&relay_url, &device_id).await
    }

    /// Replaces this device's credential on the relay at `relay_url` and returns the new
    /// one: keep it in the platform keystore now (the old one is refused from here on).
    pub async fn rotate_credential(&self, relay_url: String) -> Result<String, CairnError> {
        self.0.rotate_credential(&relay_url).await
    }

    /// Exports everything the relay at `relay_url` holds about this device's member: their
    /// memberships, roles, devices and the audit entries about them, and every document
    /// they may read as an Automerge binary and as JSON. Each document comes from this
    /// device's copy, fetched from the relay first if the device has none.
    pub async fn export_my_data(&self, relay_url: String) -> Result<MyDataExport, CairnError> {
        self.0.export_my_data(&relay_url).await
    }

    /// Erases this device's member on the relay at `relay_url`: every device and
    /// membership removed, their pseudonym gone from everything the relay serves from now
    /// on (it rebuilds each group's roster without them). What they wrote stays, shown as
    /// by a former member. Copies already on other members' phones cannot be recalled.
    /// This device stops syncing with that relay; delete its credential from the platform
    /// keystore.
    pub async fn erase_my_account(&self, relay_url: String) -> Result<(), CairnError> {
        self.0.erase_my_account(&relay_url).await
    }
}
