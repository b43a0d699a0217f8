//! The device across its groups and relays: which groups it belongs to, joining one with
//! an invite, creating one, accepting a code of conduct.

use cairn_sync::docs::group::Role;
use cairn_sync::membership::api::{GroupInfo, InvitePreview};
use cairn_sync::membership::{GroupId, MemberStatus};

use crate::app::cairn::parse_credential;
use crate::app::{Cairn, CairnError, Group, RelayConfig, Workspace};

/// One of this device's groups, as its relay says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group's id.
    pub group_id: String,
    /// The websocket URL of the relay the group lives on.
    pub relay_url: String,
    /// This member's role in it.
    pub role: Role,
    /// This member's standing (active, suspended, left, removed).
    pub status: MemberStatus,
    /// The version of the code of conduct in force.
    pub code_of_conduct_version: u64,
    /// The version this member accepted (0: none). Until it matches, the group's documents
    /// stay closed to this device: show the code of conduct and [`Workspace::accept_code_of_conduct`].
    pub accepted_version: u64,
    /// When an organiser deleted the group (ms since the Unix epoch): nobody syncs it, and
    /// its organisers may [restore](Group::restore) it until the relay's grace period
    /// ends. `None` for a group in use.
    pub deleted_ms: Option<u64>,
}

impl GroupSummary {
    fn from_info(relay_url: &str, info: &GroupInfo) -> GroupSummary {
        GroupSummary {
            group_id: info.group_id.to_string(),
            relay_url: relay_url.to_owned(),
            role: info.role,
            status: info.status,
            code_of_conduct_version: info.code_of_conduct_version,
            accepted_version: info.accepted_version,
            deleted_ms: info.deleted_ms,
        }
    }
}

/// What an invite offers, to show before joining.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteRecord {
    /// The group's id.
    pub group_id: String,
    /// The role the invite gives.
    pub role: Role,
    /// When the invite expires (ms since the Unix epoch).
    pub expires_ms: u64,
    /// The version of the group's code of conduct.
    pub code_of_conduct_version: u64,
    /// The code of conduct to read before joining.
    pub code_of_conduct: String,
}

impl From<InvitePreview> for InviteRecord {
    fn from(p: InvitePreview) -> Self {
        InviteRecord {
            group_id: p.group_id.to_string(),
            role: p.role,
            expires_ms: p.expires_ms,
            code_of_conduct_version: p.code_of_conduct.version,
            code_of_conduct: p.code_of_conduct.text,
        }
    }
}

/// A device newly enrolled with a relay by an invite.
#[derive(Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// The relay's websocket URL.
    pub relay_url: String,
    /// The group joined.
    pub group_id: String,
    /// This member's id on that relay.
    pub member_id: String,
    /// This device's id on that relay.
    pub device_id: String,
    /// The device credential for that relay, given once when the device was new there:
    /// keep it in the platform keystore now and pass it in [`crate::app::RelayConfig`] at
    /// every start. `None` when the device was already enrolled there (its credential
    /// stays what it was).
    pub credential: Option<String>,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolment")
            .field("relay_url", &self.relay_url)
            .field("group_id", &self.group_id)
            .field("member_id", &self.member_id)
            .field("device_id", &self.device_id)
            .field("credential", &self.credential.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Workspace {
    /// This device's groups on every relay it is enrolled with (what the relays said last
    /// when offline).
    pub async fn groups(&self) -> Result<Vec<GroupSummary>, CairnError> {
        let groups = self.cairn.refresh_groups().await?;
        Ok(groups
            .iter()
            .map(|(url, info)| GroupSummary::from_info(url, info))
            .collect())
    }

    /// The group with this id.
    pub fn group(&self, group_id: &str) -> Group {
        self.cairn.group(group_id)
    }

    /// What the invite (a code, or its `cairn://invite/…` link) on the relay at
    /// `relay_url` offers.
    pub async fn preview_invite(
        &self,
        relay_url: &str,
        invite: &str,
    ) -> Result<InviteRecord, CairnError> {
        let api = self.cairn.api_for_enrolment(relay_url)?;
        let invite = invite.to_owned();
        let preview = self
            .cairn
            .run(async move { Ok(api.preview_invite(&invite).await?) })
            .await?;
        Ok(preview.into())
    }

    /// Joins a group with an invite under `pseudonym`, enrolling this device with the
    /// relay if it was not yet, and starts syncing with it. Keep the returned credential
    /// in the platform keystore.
    pub async fn join(
        &self,
        relay_url: &str,
        invite: &str,
        pseudonym: &str,
    ) -> Result<Enrolment, CairnError> {
        let api = self.cairn.api_for_enrolment(relay_url)?;
        let (invite, pseudonym) = (invite.to_owned(), pseudonym.to_owned());
        let enrolled = self
            .cairn
            .run(async move { Ok(api.redeem_invite(&invite, &pseudonym).await?) })
            .await?;
        let group = enrolled
            .group
            .as_ref()
            .map(|g| g.group_id.to_string())
            .unwrap_or_default();
        if let Some(credential) = &enrolled.credential {
            self.cairn.add_relay(RelayConfig {
                url: relay_url.to_owned(),
                credential: Some(credential.as_str().to_owned()),
            })?;
            self.cairn
                .inner
                .network
                .keep(relay_url, credential.as_str());
        }
        self.cairn.refresh_groups().await?;
        Ok(Enrolment {
            relay_url: relay_url.to_owned(),
            group_id: group,
            member_id: enrolled.identity.member.to_string(),
            device_id: enrolled.identity.device.to_string(),
            credential: enrolled.credential.map(|c| c.as_str().to_owned()),
        })
    }

    /// Creates a group on the relay at `relay_url` (this member becomes its first
    /// organiser, if the relay lets members create groups).
    pub async fn create_group(
        &self,
        relay_url: &str,
        pseudonym: &str,
        code_of_conduct: &str,
    ) -> Result<Group, CairnError> {
        let api = self.cairn.api_of(relay_url)?;
        let (pseudonym, code) = (pseudonym.to_owned(), code_of_conduct.to_owned());
        let info = self
            .cairn
            .run(async move { Ok(api.create_group(&pseudonym, &code).await?) })
            .await?;
        let id = info.group_id.clone();
        self.cairn
            .inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (relay_url.to_owned(), info));
        Ok(Group::new(self.cairn.clone(), id))
    }

    /// Accepts version `version` of the group's code of conduct (what the member read).
    pub async fn accept_code_of_conduct(
        &self,
        group_id: &str,
        version: u64,
    ) -> Result<(), CairnError> {
        let group = GroupId::from(group_id);
        let api = self.cairn.api_of_group(&group).await?;
        self.cairn
            .run(async move { Ok(api.accept_code_of_conduct(&group, version).await?) })
            .await?;
        self.cairn.refresh_groups().await?;
        Ok(())
    }
}

impl Cairn {
    /// The API to enrol with at `relay_url`: the device's own there if it has one.
    fn api_for_enrolment(
        &self,
        relay_url: &str,
    ) -> Result<cairn_sync::client::RelayApi, CairnError> {
        if let Ok(api) = self.api_of(relay_url) {
            return Ok(api);
        }
        self.inner.network.api(relay_url)
    }

    /// The API of the relay `group` is on.
    pub(crate) async fn api_of_group(
        &self,
        group: &GroupId,
    ) -> Result<cairn_sync::client::RelayApi, CairnError> {
        if self.relay_of(group).is_none() {
            self.refresh_groups().await?;
        }
        let url = self
            .relay_of(group)
            .ok_or_else(|| CairnError::not_found(format!("group {group}")))?;
        self.api_of(&url)
    }

    /// Starts syncing with the relay at `url` with this credential (after enrolling, or
    /// a credential restored from the keystore). The same URL again replaces the
    /// credential.
    pub fn add_relay(&self, relay: RelayConfig) -> Result<(), CairnError> {
        let url = relay.url.as_str();
        let credential = relay
            .credential
            .as_deref()
            .map(parse_credential)
            .transpose()?;
        let entry = self
            .inner
            .network
            .connect(&self.inner.client, url, credential);
        {
            let mut relays = self.inner.relays.lock().unwrap_or_else(|e| e.into_inner());
            match relays.iter_mut().find(|r| r.url == url) {
                Some(r) => *r = entry,
                None => relays.push(entry),
            }
        }
        Ok(())
    }

    /// Stops syncing with the relay at `url` and forgets its credential and groups in
    /// the live view (after the member's account there was erased: the credential is
    /// void). The documents stay on the device until the app wipes them.
    pub(crate) fn remove_relay(&self, url: &str) {
        let removed: Vec<_> = {
            let mut relays = self.inner.relays.lock().unwrap_or_else(|e| e.into_inner());
            let (gone, kept): (Vec<_>, Vec<_>) = relays.drain(..).partition(|r| r.url == url);
            *relays = kept;
            gone
        };
        for entry in removed {
            entry.handle.disconnect();
        }
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (relay, _)| relay != url);
    }
}
