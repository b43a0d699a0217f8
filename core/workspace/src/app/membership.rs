//! The relay's membership calls, on the handles an app already holds: invites, roles and
//! moderation on [`Group`], devices on [`Workspace`]. The relay decides; these ask it.

use cairn_sync::client::RelayApi;
use cairn_sync::docs::group::Role;
use cairn_sync::ids::{DeviceId, MemberId};
use cairn_sync::membership::api::{CreateInvite, MemberInfo};
use cairn_sync::membership::MemberStatus;

use crate::app::handles::document_id;
use crate::app::{Cairn, CairnError, Group, Workspace};

/// A member as the relay holds them (organisers and facilitators see everyone; others
/// see active members).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipRecord {
    /// The member's id.
    pub member_id: String,
    /// Their pseudonym in this group.
    pub pseudonym: String,
    /// Their role.
    pub role: Role,
    /// Their standing.
    pub status: MemberStatus,
    /// The code-of-conduct version they accepted (0: none).
    pub accepted_version: u64,
    /// When they joined (ms since the Unix epoch).
    pub joined_ms: u64,
    /// When a guest's access ends, if it does.
    pub expires_ms: Option<u64>,
    /// The one meeting a guest may read.
    pub meeting_id: Option<String>,
}

impl From<MemberInfo> for MembershipRecord {
    fn from(m: MemberInfo) -> Self {
        MembershipRecord {
            member_id: m.member_id.to_string(),
            pseudonym: m.pseudonym,
            role: m.role,
            status: m.status,
            accepted_version: m.accepted_version,
            joined_ms: m.joined_ms,
            expires_ms: m.expires_ms,
            meeting_id: m.meeting.map(|d| d.to_string()),
        }
    }
}

/// A new invite to hand out (as text, link or QR code).
#[derive(Clone, PartialEq, Eq)]
pub struct InviteCode {
    /// The code to type.
    pub code: String,
    /// The `cairn://invite/…` link (for a QR code).
    pub link: String,
    /// When it expires (ms since the Unix epoch).
    pub expires_ms: u64,
    /// How many people may use it.
    pub max_uses: u32,
}

impl std::fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The code is a secret until redeemed.
        f.debug_struct("InviteCode")
            .field("expires_ms", &self.expires_ms)
            .field("max_uses", &self.max_uses)
            .finish_non_exhaustive()
    }
}

/// What an organiser asks for in an invite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteRequest {
    /// The role it gives.
    pub role: Role,
    /// How long the code stays valid, in seconds.
    pub expires_in_secs: u64,
    /// How many people may use it.
    pub max_uses: u32,
    /// For a one-meeting guest: the meeting they may read.
    pub meeting_id: Option<String>,
    /// For a guest: how long their access lasts after joining, in seconds.
    pub access_expires_in_secs: Option<u64>,
}

/// One of the member's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device's id.
    pub device_id: String,
    /// When it was enrolled (ms since the Unix epoch).
    pub created_ms: u64,
    /// Whether it has been revoked.
    pub revoked: bool,
}

impl Group {
    async fn api(&self) -> Result<RelayApi, CairnError> {
        self.cairn.api_of_group(&self.group).await
    }

    /// Runs one membership call on the group's relay.
    pub(crate) async fn call<T: Send + 'static, F>(
        &self,
        f: impl FnOnce(RelayApi, cairn_sync::membership::GroupId) -> F + Send + 'static,
    ) -> Result<T, CairnError>
    where
        F: std::future::Future<Output = Result<T, cairn_sync::client::ClientError>>
            + Send
            + 'static,
    {
        let api = self.api().await?;
        let group = self.group.clone();
        self.cairn
            .run(async move { Ok(f(api, group).await?) })
            .await
    }

    /// The members as the relay holds them (who may see whom is the relay's rule).
    pub async fn memberships(&self) -> Result<Vec<MembershipRecord>, CairnError> {
        let members = self
            .call(|api, g| async move { api.members(&g).await })
            .await?;
        Ok(members.into_iter().map(Into::into).collect())
    }

    /// Creates an invite (organisers; facilitators for guests, as the relay allows).
    pub async fn create_invite(&self, request: InviteRequest) -> Result<InviteCode, CairnError> {
        let meeting = request.meeting_id.as_deref().map(document_id).transpose()?;
        let body = CreateInvite {
            role: request.role,
            expires_in_secs: request.expires_in_secs,
            max_uses: request.max_uses,
            meeting,
            access_expires_in_secs: request.access_expires_in_secs,
        };
        let invite = self
            .call(move |api, g| async move { api.create_invite(&g, &body).await })
            .await?;
        Ok(InviteCode {
            code: invite.code,
            link: invite.link,
            expires_ms: invite.expires_ms,
            max_uses: invite.max_uses,
        })
    }

    /// Gives a member another role (organisers).
    pub async fn set_member_role(&self, member_id: &str, role: Role) -> Result<(), CairnError> {
        let member = MemberId::from(member_id);
        self.call(move |api, g| async move { api.set_role(&g, &member, role).await })
            .await?;
        Ok(())
    }

    /// Suspends a member: their devices are disconnected and read nothing until
    /// reinstated (organisers, facilitators).
    pub async fn suspend_member(&self, member_id: &str) -> Result<(), CairnError> {
        let member = MemberId::from(member_id);
        self.call(move |api, g| async move { api.suspend(&g, &member).await })
            .await?;
        Ok(())
    }

    /// Reinstates a suspended member.
    pub async fn reinstate_member(&self, member_id: &str) -> Result<(), CairnError> {
        let member = MemberId::from(member_id);
        self.call(move |api, g| async move { api.reinstate(&g, &member).await })
            .await?;
        Ok(())
    }

    /// Removes a member from the group (organisers).
    pub async fn remove_member(&self, member_id: &str) -> Result<(), CairnError> {
        let member = MemberId::from(member_id);
        self.call(move |api, g| async move { api.remove_member(&g, &member).await })
            .await?;
        Ok(())
    }

    /// Sets this member's pseudonym in the group (the roster shows it).
    pub async fn set_my_pseudonym(&self, pseudonym: &str) -> Result<(), CairnError> {
        let pseudonym = pseudonym.to_owned();
        self.call(move |api, g| async move { api.set_pseudonym(&g, &pseudonym).await })
            .await
    }

    /// Publishes a new code of conduct (organisers); every member accepts it again before
    /// reading on.
    pub async fn set_code_of_conduct(&self, text: &str) -> Result<u64, CairnError> {
        let text = text.to_owned();
        let coc = self
            .call(move |api, g| async move { api.set_code_of_conduct(&g, &text).await })
            .await?;
        Ok(coc.version)
    }
}

impl Workspace {
    fn relay_api(&self, relay_url: &str) -> Result<RelayApi, CairnError> {
        self.cairn.api_of(relay_url)
    }

    /// This member's devices on the relay at `relay_url`.
    pub async fn devices(&self, relay_url: &str) -> Result<Vec<DeviceRecord>, CairnError> {
        let api = self.relay_api(relay_url)?;
        let devices = self
            .cairn
            .run(async move { Ok(api.devices().await?) })
            .await?;
        Ok(devices
            .into_iter()
            .map(|d| DeviceRecord {
                device_id: d.device_id.to_string(),
                created_ms: d.created_ms,
                revoked: d.revoked,
            })
            .collect())
    }

    /// Revokes one of this member's devices (a lost phone): it is disconnected at once.
    pub async fn revoke_device(&self, relay_url: &str, device_id: &str) -> Result<(), CairnError> {
        let api = self.relay_api(relay_url)?;
        let device = DeviceId::from(device_id);
        self.cairn
            .run(async move { Ok(api.revoke_device(&device).await?) })
            .await
    }

    /// Replaces this device's credential on the relay at `relay_url` and returns the new
    /// one: keep it in the platform keystore now (the old one is refused from here on).
    pub async fn rotate_credential(&self, relay_url: &str) -> Result<String, CairnError> {
        let api = self.relay_api(relay_url)?;
        let credential = self
            .cairn
            .run(async move { Ok(api.rotate().await?) })
            .await?;
        let token = credential.as_str().to_owned();
        self.cairn.add_relay(crate::app::RelayConfig {
            url: relay_url.to_owned(),
            credential: Some(token.clone()),
        })?;
        self.cairn.inner.network.keep(relay_url, &token);
        Ok(token)
    }
}

impl Cairn {
    /// The URLs of the relays this device is enrolled with.
    pub fn relay_urls(&self) -> Vec<String> {
        self.inner
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| r.url.clone())
            .collect()
    }
}
