//! The relay's membership API as calls an app makes: [`RelayApi`].
//!
//! A `RelayApi` is the relay's base URL, an [`HttpTransport`] and (once the device has
//! one) its [`Credential`]. The calls a device makes before it has a credential (preview
//! and redeem an invite, link a device) work without one; every other call presents it.
//! A running [`Client`](super::Client) hands out one with its current credential
//! ([`Client::api`](super::Client::api)) and rotates through it
//! ([`Client::rotate_credential`](super::Client::rotate_credential)) so the next connect
//! uses the new one.
//!
//! Failures come back as the [`ClientError`] variants an app branches on: `Unauthorized`,
//! `Forbidden`, `NotFound`, `Conflict`, `InviteExpired`, `QuotaExceeded`, `BadRequest`,
//! `RelayUnavailable`, `Offline` (no answer at all), mapped from the API's error codes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::http::{HttpRequest, HttpResponse, HttpTransport, HyperTransport, Method};
use super::ClientError;
use crate::docs::group::Role;
use crate::ids::{DeviceId, DocumentId, MemberId, PeerId};
use crate::membership::api::{
    AcceptCodeOfConduct, ApiError, CodeOfConduct, CreateGroup, CreateInvite, DeviceInfo, GroupInfo,
    Invite, InvitePreview, LinkCode, LinkDevice, MemberInfo, MemberRecordExport, RedeemInvite,
    Redeemed, RegisterDocument, Rotated, SetCodeOfConduct, SetPseudonym, SetRole, PREFIX,
};
use crate::membership::{normalise_code, BoundKind, Credential, GroupId, Identity};

/// How long one API call may take before it counts as [`ClientError::Offline`]: 30 s.
/// Every call is a small JSON exchange; a relay that has not answered by then is
/// unreachable for the app's purposes (the call may still have happened: every call that
/// matters is safe to repeat).
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// The link form of an invite code, for QR codes and sharing: `cairn://invite/{code}`.
pub const INVITE_LINK_PREFIX: &str = "cairn://invite/";

/// The shareable link for an invite code.
pub fn invite_link(code: &str) -> String {
    format!("{INVITE_LINK_PREFIX}{}", normalise_code(code))
}

/// The membership API's base URL for a relay's websocket URL: `ws://host:port/…` becomes
/// `http://host:port`, `wss://` becomes `https://` (the API lives under `/v1` on the same
/// host). Returns `None` for other schemes.
pub fn api_base_for(websocket_url: &str) -> Option<String> {
    let (scheme, rest) = websocket_url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

/// A device enrolled by redeeming an invite or a device-link code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// The device's identity (`member/device`).
    pub identity: Identity,
    /// The new device's credential, given once: keep it in the platform keystore and
    /// start the client with it. `None` when an existing device redeemed an invite (its
    /// credential stays what it was).
    pub credential: Option<Credential>,
    /// The group joined (`None` when linking a device).
    pub group: Option<GroupInfo>,
}

impl Enrolled {
    /// The peer id the device uses (`member/device`).
    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }
}

/// The relay's membership API: its base URL, an [`HttpTransport`] and (once the device
/// has one) its [`Credential`]. Cheap to clone.
///
/// The calls a device makes before it has a credential (preview and redeem an invite,
/// link a device) work without one; every other call presents it, and without one fails
/// with [`ClientError::Unauthorized`] before sending anything. A running
/// [`Client`](super::Client) hands out one with its current credential
/// ([`Client::api`](super::Client::api)). Failures are the [`ClientError`] variants an app
/// branches on: `Unauthorized`, `Forbidden`, `NotFound`, `Conflict`, `InviteExpired`,
/// `QuotaExceeded`, `BadRequest`, `RelayUnavailable`, and `Offline` when no answer came
/// within [`API_TIMEOUT`].
#[derive(Clone)]
pub struct RelayApi {
    base: String,
    http: Arc<dyn HttpTransport>,
    credential: Option<Credential>,
}

impl fmt::Debug for RelayApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayApi")
            .field("base", &self.base)
            .field("credential", &self.credential)
            .finish()
    }
}

/// A path segment from an id: ids are hex or base58, so anything else is a caller's
/// mistake, refused here rather than sent as a different path.
fn segment(id: &str) -> Result<&str, ClientError> {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(id)
    } else {
        Err(ClientError::BadRequest {
            reason: "not a valid id".to_owned(),
        })
    }
}

impl RelayApi {
    /// The API of the relay at `base_url` (e.g. `http://127.0.0.1:8080`; see
    /// [`api_base_for`]), reached through `http`, with no credential yet.
    pub fn new(base_url: &str, http: Arc<dyn HttpTransport>) -> RelayApi {
        RelayApi {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
            credential: None,
        }
    }

    /// The API at `base_url` over plain HTTP ([`HyperTransport`]: tests, desktop).
    pub fn over_http(base_url: &str) -> RelayApi {
        RelayApi::new(base_url, Arc::new(HyperTransport::new()))
    }

    /// The same API, presenting `credential` from now on.
    pub fn with_credential(mut self, credential: Credential) -> RelayApi {
        self.credential = Some(credential);
        self
    }

    /// The credential presented, if any.
    pub fn credential(&self) -> Option<&Credential> {
        self.credential.as_ref()
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn me(&self) -> Result<&Identity, ClientError> {
        self.credential
            .as_ref()
            .map(Credential::identity)
            .ok_or(ClientError::Unauthorized)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        auth: bool,
    ) -> Result<HttpResponse, ClientError> {
        if auth && self.credential.is_none() {
            return Err(ClientError::Unauthorized);
        }
        let json =
            body.map(serde_json::to_vec)
                .transpose()
                .map_err(|e| ClientError::BadRequest {
                    reason: e.to_string(),
                })?;
        let request = HttpRequest {
            method,
            url: format!("{}{PREFIX}{path}", self.base),
            bearer: self.credential.clone(),
            json,
        };
        let response = tokio::time::timeout(API_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| ClientError::Offline)?
            .map_err(|e| {
                tracing::debug!(error = %e, "relay API unreachable");
                ClientError::Offline
            })?;
        tracing::debug!(
            method = method.as_str(),
            status = response.status,
            "relay API call"
        );
        if (200..300).contains(&response.status) {
            Ok(response)
        } else {
            Err(error_from(&response))
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        auth: bool,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body, auth).await?;
        serde_json::from_slice(&response.body).map_err(|e| ClientError::InvalidResponse {
            status: response.status,
            reason: e.to_string(),
        })
    }

    async fn call_empty(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(), ClientError> {
        self.send(method, path, body, true).await.map(|_| ())
    }

    // ------------------------------------------------------------ before a credential

    /// What an invite (a code, or the `cairn://invite/…` link or QR payload) offers, with
    /// the group's code of conduct to read before redeeming. Needs no credential.
    pub async fn preview_invite(&self, code_or_link: &str) -> Result<InvitePreview, ClientError> {
        let code = normalise_code(code_or_link);
        let path = format!("/invites/{}", segment(&code)?);
        self.call(Method::Get, &path, None::<&()>, false).await
    }

    /// Redeems an invite (code, link or QR payload) under `pseudonym`. Without a
    /// credential this enrols a new member and device and returns its credential once
    /// (keep it in the platform keystore); with one, the caller's member joins the group.
    pub async fn redeem_invite(
        &self,
        code_or_link: &str,
        pseudonym: &str,
    ) -> Result<Enrolled, ClientError> {
        let body = RedeemInvite {
            code: normalise_code(code_or_link),
            pseudonym: pseudonym.to_owned(),
        };
        let redeemed: Redeemed = self
            .call(Method::Post, "/invites/redeem", Some(&body), false)
            .await?;
        enrolled(redeemed)
    }

    /// Links this new device to a member with a code shown on one of their devices
    /// ([`RelayApi::create_link_code`]). Needs no credential; returns the new device's.
    pub async fn link_device(&self, code: &str) -> Result<Enrolled, ClientError> {
        let body = LinkDevice {
            code: normalise_code(code),
        };
        let redeemed: Redeemed = self
            .call(Method::Post, "/devices/link", Some(&body), false)
            .await?;
        let enrolled = enrolled(redeemed)?;
        if enrolled.credential.is_none() {
            return Err(ClientError::InvalidResponse {
                status: 200,
                reason: "a linked device got no credential".to_owned(),
            });
        }
        Ok(enrolled)
    }

    // ------------------------------------------------------------------ groups

    /// Creates a group; the caller becomes its first organiser.
    pub async fn create_group(
        &self,
        pseudonym: &str,
        code_of_conduct: &str,
    ) -> Result<GroupInfo, ClientError> {
        let body = CreateGroup {
            pseudonym: pseudonym.to_owned(),
            code_of_conduct: code_of_conduct.to_owned(),
        };
        self.call(Method::Post, "/groups", Some(&body), true).await
    }

    /// The caller's groups, with their role, status and the well-known documents.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, ClientError> {
        self.call(Method::Get, "/groups", None::<&()>, true).await
    }

    /// A group's current code of conduct (readable before accepting it).
    pub async fn code_of_conduct(&self, group: &GroupId) -> Result<CodeOfConduct, ClientError> {
        let path = format!("/groups/{}/code-of-conduct", segment(group.as_str())?);
        self.call(Method::Get, &path, None::<&()>, true).await
    }

    /// Replaces a group's code of conduct (organisers); every member accepts the new
    /// version before reading on.
    pub async fn set_code_of_conduct(
        &self,
        group: &GroupId,
        text: &str,
    ) -> Result<CodeOfConduct, ClientError> {
        let path = format!("/groups/{}/code-of-conduct", segment(group.as_str())?);
        let body = SetCodeOfConduct {
            text: text.to_owned(),
        };
        self.call(Method::Put, &path, Some(&body), true).await
    }

    /// Accepts `version` of the group's code of conduct (the one read). A newer version
    /// is a [`ClientError::Conflict`]: read it again.
    pub async fn accept_code_of_conduct(
        &self,
        group: &GroupId,
        version: u64,
    ) -> Result<(), ClientError> {
        let path = format!(
            "/groups/{}/code-of-conduct/accept",
            segment(group.as_str())?
        );
        self.call_empty(Method::Post, &path, Some(&AcceptCodeOfConduct { version }))
            .await
    }

    /// The group's members and their roles.
    pub async fn members(&self, group: &GroupId) -> Result<Vec<MemberInfo>, ClientError> {
        let path = format!("/groups/{}/members", segment(group.as_str())?);
        self.call(Method::Get, &path, None::<&()>, true).await
    }

    fn member_path(group: &GroupId, member: &MemberId) -> Result<String, ClientError> {
        Ok(format!(
            "/groups/{}/members/{}",
            segment(group.as_str())?,
            segment(member.as_str())?
        ))
    }

    /// Changes a member's role (organisers).
    pub async fn set_role(
        &self,
        group: &GroupId,
        member: &MemberId,
        role: Role,
    ) -> Result<MemberInfo, ClientError> {
        let path = format!("{}/role", Self::member_path(group, member)?);
        self.call(Method::Put, &path, Some(&SetRole { role }), true)
            .await
    }

    /// Suspends a member (facilitators, organisers): they read and write nothing of the
    /// group until reinstated, and their open connections are closed.
    pub async fn suspend(
        &self,
        group: &GroupId,
        member: &MemberId,
    ) -> Result<MemberInfo, ClientError> {
        let path = format!("{}/suspend", Self::member_path(group, member)?);
        self.call(Method::Post, &path, None::<&()>, true).await
    }

    /// Reinstates a suspended member (facilitators, organisers).
    pub async fn reinstate(
        &self,
        group: &GroupId,
        member: &MemberId,
    ) -> Result<MemberInfo, ClientError> {
        let path = format!("{}/reinstate", Self::member_path(group, member)?);
        self.call(Method::Post, &path, None::<&()>, true).await
    }

    /// Removes a member from the group (facilitators, organisers).
    pub async fn remove_member(
        &self,
        group: &GroupId,
        member: &MemberId,
    ) -> Result<(), ClientError> {
        let path = Self::member_path(group, member)?;
        self.call_empty(Method::Delete, &path, None::<&()>).await
    }

    /// Leaves the group (the caller's own membership).
    pub async fn leave(&self, group: &GroupId) -> Result<(), ClientError> {
        let me = self.me()?.member.clone();
        self.remove_member(group, &me).await
    }

    /// Sets the caller's pseudonym in the group.
    pub async fn set_pseudonym(&self, group: &GroupId, pseudonym: &str) -> Result<(), ClientError> {
        let path = format!("/groups/{}/me/pseudonym", segment(group.as_str())?);
        let body = SetPseudonym {
            pseudonym: pseudonym.to_owned(),
        };
        self.call_empty(Method::Put, &path, Some(&body)).await
    }

    /// Creates an invite (organisers). The answer carries the code and its
    /// `cairn://invite/` link to share (or show as a QR code); the relay keeps only a hash.
    pub async fn create_invite(
        &self,
        group: &GroupId,
        invite: &CreateInvite,
    ) -> Result<Invite, ClientError> {
        let path = format!("/groups/{}/invites", segment(group.as_str())?);
        let mut answer: Invite = self.call(Method::Post, &path, Some(invite), true).await?;
        if answer.link.is_empty() {
            answer.link = invite_link(&answer.code);
        }
        Ok(answer)
    }

    /// Binds `document` to `group` as `kind` (before its first sync: the relay stores and
    /// serves only bound documents). Repeating the same registration succeeds.
    pub async fn register_document(
        &self,
        group: &GroupId,
        document: DocumentId,
        kind: BoundKind,
    ) -> Result<(), ClientError> {
        let path = format!("/groups/{}/documents", segment(group.as_str())?);
        let body = RegisterDocument {
            document_id: document,
            kind,
        };
        self.send(Method::Post, &path, Some(&body), true)
            .await
            .map(|_| ())
    }

    /// Deletes the group (organisers): from now on nobody reads or writes it, and every
    /// device's connection to it closes. It can be restored with
    /// [`RelayApi::restore_group`] until the relay's grace period ends (14 days unless
    /// the operator set another); then the relay destroys it.
    pub async fn delete_group(&self, group: &GroupId) -> Result<(), ClientError> {
        let path = format!("/groups/{}", segment(group.as_str())?);
        self.call_empty(Method::Delete, &path, None::<&()>).await
    }

    /// Restores a deleted group within its grace period (organisers).
    pub async fn restore_group(&self, group: &GroupId) -> Result<(), ClientError> {
        let path = format!("/groups/{}/restore", segment(group.as_str())?);
        self.call_empty(Method::Post, &path, None::<&()>).await
    }

    // ------------------------------------------------------------------ the member's own data

    /// Everything the relay holds about the caller's member: memberships and roles,
    /// devices, the audit entries about them, and the documents they may read.
    pub async fn export_me(&self) -> Result<MemberRecordExport, ClientError> {
        self.call(Method::Get, "/me/export", None::<&()>, true)
            .await
    }

    /// Erases the caller's member on this relay: every device (this one included) and
    /// membership removed, their pseudonym gone from every roster the relay serves from
    /// now on. Their posts stay, shown as by a former member. Copies already on other
    /// members' phones cannot be recalled.
    pub async fn erase_me(&self) -> Result<(), ClientError> {
        self.call_empty(Method::Delete, "/me", None::<&()>).await
    }

    // ------------------------------------------------------------------ devices

    /// A one-time code (about 10 minutes) to link another device to the caller's member.
    pub async fn create_link_code(&self) -> Result<LinkCode, ClientError> {
        self.call(Method::Post, "/devices/link-codes", None::<&()>, true)
            .await
    }

    /// The caller's member's devices.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        self.call(Method::Get, "/devices", None::<&()>, true).await
    }

    /// Replaces this device's credential: the old one is refused from the moment this
    /// returns. Keep the new one in the platform keystore (a running client should rotate
    /// through [`Client::rotate_credential`](super::Client::rotate_credential), which also
    /// uses it from the next connect).
    pub async fn rotate(&self) -> Result<Credential, ClientError> {
        let me = self.me()?.clone();
        let rotated: Rotated = self
            .call(Method::Post, "/devices/self/rotate", None::<&()>, true)
            .await?;
        let credential =
            Credential::parse(&rotated.token).map_err(|e| ClientError::InvalidResponse {
                status: 200,
                reason: e.to_string(),
            })?;
        if credential.identity() != &me {
            return Err(ClientError::InvalidResponse {
                status: 200,
                reason: "the rotated credential is for another device".to_owned(),
            });
        }
        Ok(credential)
    }

    /// Revokes one of the caller's member's devices (a lost phone): its credential is
    /// refused and its connections closed before this returns.
    pub async fn revoke_device(&self, device: &DeviceId) -> Result<(), ClientError> {
        let path = format!("/devices/{}", segment(device.as_str())?);
        self.call_empty(Method::Delete, &path, None::<&()>).await
    }
}

fn enrolled(redeemed: Redeemed) -> Result<Enrolled, ClientError> {
    let invalid = |reason: String| ClientError::InvalidResponse {
        status: 200,
        reason,
    };
    let identity =
        Identity::parse(redeemed.peer_id.as_str()).map_err(|e| invalid(e.to_string()))?;
    if identity.member != redeemed.member_id || identity.device != redeemed.device_id {
        return Err(invalid("the peer id does not match the ids".to_owned()));
    }
    let credential = redeemed
        .token
        .as_deref()
        .map(Credential::parse)
        .transpose()
        .map_err(|e| invalid(e.to_string()))?;
    if credential
        .as_ref()
        .is_some_and(|c| c.identity() != &identity)
    {
        return Err(invalid("the credential is for another device".to_owned()));
    }
    Ok(Enrolled {
        identity,
        credential,
        group: redeemed.group,
    })
}

/// The error an app acts on for a failed answer: the API's error code decides; the status
/// stands in when the body is not an API error (a proxy's page, say) or has a code this
/// client does not know.
pub(crate) fn error_from(response: &HttpResponse) -> ClientError {
    let body: Option<ApiError> = serde_json::from_slice(&response.body).ok();
    let reason = body.as_ref().map(|b| b.message.clone()).unwrap_or_default();
    let status = match body.as_ref().map(|b| b.error.as_str()) {
        Some("bad_request") => 400,
        Some("unauthorized") => 401,
        Some("forbidden") => 403,
        Some("not_found") => 404,
        Some("conflict") => 409,
        Some("invite_expired") => 410,
        Some("quota_exceeded") => 429,
        Some("unavailable") => 503,
        _ => response.status,
    };
    let retry_after = response.retry_after;
    match status {
        400 => ClientError::BadRequest { reason },
        401 => ClientError::Unauthorized,
        403 => ClientError::Forbidden { reason },
        404 => ClientError::NotFound,
        409 => ClientError::Conflict { reason },
        410 => ClientError::InviteExpired,
        429 => ClientError::QuotaExceeded { retry_after },
        500..=599 => ClientError::RelayUnavailable { retry_after },
        status => ClientError::InvalidResponse {
            status,
            reason: "an answer this client does not understand".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::client::TransportError;
    use crate::membership::random_id;

    type Answer = Box<dyn Fn(&HttpRequest) -> Result<HttpResponse, TransportError> + Send + Sync>;

    /// Answers every request with `answer` and keeps what was asked.
    struct Fake {
        answer: Answer,
        seen: Mutex<Vec<HttpRequest>>,
    }

    impl HttpTransport for Arc<Fake> {
        fn request(
            &self,
            request: HttpRequest,
        ) -> futures_util::future::BoxFuture<'_, Result<HttpResponse, TransportError>> {
            let answer = (self.answer)(&request);
            self.seen.lock().unwrap().push(request);
            Box::pin(async move { answer })
        }
    }

    fn fake(
        answer: impl Fn(&HttpRequest) -> Result<HttpResponse, TransportError> + Send + Sync + 'static,
    ) -> (RelayApi, Arc<Fake>) {
        let fake = Arc::new(Fake {
            answer: Box::new(answer),
            seen: Mutex::new(Vec::new()),
        });
        (
            RelayApi::new("http://relay.test:8080/", Arc::new(fake.clone())),
            fake,
        )
    }

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            retry_after: None,
            body: body.as_bytes().to_vec(),
        }
    }

    fn device() -> Credential {
        Credential::issue(Identity {
            member: MemberId::from(random_id()),
            device: DeviceId::from(random_id()),
        })
        .0
    }

    fn error(code: &str) -> String {
        format!(r#"{{"error":"{code}","message":"why"}}"#)
    }

    #[tokio::test]
    async fn each_api_error_maps_to_what_an_app_branches_on() {
        type Expect = fn(&ClientError) -> bool;
        let cases: Vec<(u16, String, Expect)> = vec![
            (401, error("unauthorized"), |e| {
                matches!(e, ClientError::Unauthorized)
            }),
            (
                403,
                error("forbidden"),
                |e| matches!(e, ClientError::Forbidden { reason } if reason == "why"),
            ),
            (404, error("not_found"), |e| {
                matches!(e, ClientError::NotFound)
            }),
            (409, error("conflict"), |e| {
                matches!(e, ClientError::Conflict { .. })
            }),
            (410, error("invite_expired"), |e| {
                matches!(e, ClientError::InviteExpired)
            }),
            (400, error("bad_request"), |e| {
                matches!(e, ClientError::BadRequest { .. })
            }),
            (503, error("unavailable"), |e| {
                matches!(e, ClientError::RelayUnavailable { .. })
            }),
            // A proxy's page: the status decides.
            (502, "<html>bad gateway</html>".to_owned(), |e| {
                matches!(e, ClientError::RelayUnavailable { .. })
            }),
            (403, "forbidden".to_owned(), |e| {
                matches!(e, ClientError::Forbidden { .. })
            }),
            // A code this client does not know: the status decides.
            (410, error("gone_fishing"), |e| {
                matches!(e, ClientError::InviteExpired)
            }),
            (418, String::new(), |e| {
                matches!(e, ClientError::InvalidResponse { status: 418, .. })
            }),
        ];
        for (status, body, expected) in cases {
            let body2 = body.clone();
            let (api, _) = fake(move |_| Ok(answer(status, &body2)));
            let got = api
                .preview_invite("ABCDEFGHIJKLMNOPQRST")
                .await
                .unwrap_err();
            assert!(expected(&got), "{status} {body}: {got:?}");
        }
    }

    #[tokio::test]
    async fn too_many_attempts_carry_the_relays_retry_after_and_no_answer_is_offline() {
        let (api, _) = fake(|_| {
            Ok(HttpResponse {
                status: 429,
                retry_after: Some(Duration::from_secs(7)),
                body: error("quota_exceeded").into_bytes(),
            })
        });
        let got = api.redeem_invite("X", "Ana").await.unwrap_err();
        assert!(
            matches!(got, ClientError::QuotaExceeded { retry_after: Some(d) } if d == Duration::from_secs(7)),
            "{got:?}"
        );
        let (api, _) = fake(|_| {
            Err(TransportError::Unreachable {
                reason: "no route".to_owned(),
            })
        });
        assert!(matches!(
            api.preview_invite("X").await,
            Err(ClientError::Offline)
        ));
    }

    #[tokio::test]
    async fn a_preview_asks_by_code_and_never_shows_it_in_debug() {
        let (api, seen) = fake(|_| Ok(answer(404, &error("not_found"))));
        let _ = api
            .preview_invite("cairn://invite/abcdefghijklmnopqrst")
            .await;
        let seen = seen.seen.lock().unwrap();
        assert_eq!(seen[0].method, Method::Get);
        assert_eq!(
            seen[0].url,
            "http://relay.test:8080/v1/invites/ABCDEFGHIJKLMNOPQRST"
        );
        let shown = format!("{:?}", seen[0]);
        assert!(!shown.contains("ABCDEFGHIJKLMNOPQRST"), "{shown}");
    }

    #[tokio::test]
    async fn redeeming_a_link_needs_no_credential_and_returns_the_new_one() {
        let issued = device();
        let redeemed = Redeemed {
            member_id: issued.identity().member.clone(),
            device_id: issued.identity().device.clone(),
            peer_id: issued.peer_id(),
            token: Some(issued.as_str().to_owned()),
            group: None,
        };
        let body = serde_json::to_string(&redeemed).unwrap();
        let (api, seen) = fake(move |_| Ok(answer(200, &body)));
        let enrolled = api
            .redeem_invite("cairn://invite/abcd-efgh-ijkl-mnop-qrst", "Ana")
            .await
            .unwrap();
        assert_eq!(enrolled.credential.as_ref(), Some(&issued));
        assert_eq!(enrolled.peer_id(), issued.peer_id());
        let seen = seen.seen.lock().unwrap();
        let request = &seen[0];
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.url, "http://relay.test:8080/v1/invites/redeem");
        assert_eq!(request.bearer, None);
        let sent: RedeemInvite = serde_json::from_slice(request.json.as_ref().unwrap()).unwrap();
        assert_eq!(sent.code, "ABCDEFGHIJKLMNOPQRST");
        assert_eq!(sent.pseudonym, "Ana");
    }

    #[tokio::test]
    async fn an_answer_with_someone_elses_credential_is_refused() {
        let issued = device();
        let other = device();
        let redeemed = Redeemed {
            member_id: issued.identity().member.clone(),
            device_id: issued.identity().device.clone(),
            peer_id: issued.peer_id(),
            token: Some(other.as_str().to_owned()),
            group: None,
        };
        let body = serde_json::to_string(&redeemed).unwrap();
        let (api, _) = fake(move |_| Ok(answer(200, &body)));
        assert!(matches!(
            api.link_device("ABCD").await,
            Err(ClientError::InvalidResponse { .. })
        ));
    }

    #[tokio::test]
    async fn member_calls_present_the_credential_on_the_documented_paths() {
        let me = device();
        let group = GroupId::from("00112233aabbccdd");
        let (api, seen) = fake(|r| {
            Ok(match r.method {
                Method::Delete => answer(204, ""),
                _ => answer(400, &error("bad_request")),
            })
        });
        // Without a credential, nothing is sent.
        assert!(matches!(
            api.leave(&group).await,
            Err(ClientError::Unauthorized)
        ));
        assert!(seen.seen.lock().unwrap().is_empty());

        let api = api.with_credential(me.clone());
        api.leave(&group).await.unwrap();
        let _ = api
            .set_role(&group, &me.identity().member, Role::Observer)
            .await;
        let bad = MemberId::from("../devices");
        assert!(matches!(
            api.suspend(&group, &bad).await,
            Err(ClientError::BadRequest { .. })
        ));
        let seen = seen.seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "the malformed id was not sent");
        assert_eq!(seen[0].method, Method::Delete);
        assert_eq!(
            seen[0].url,
            format!(
                "http://relay.test:8080/v1/groups/00112233aabbccdd/members/{}",
                me.identity().member
            )
        );
        assert_eq!(seen[0].bearer.as_ref(), Some(&me));
        assert_eq!(seen[1].method, Method::Put);
        assert!(seen[1].url.ends_with("/role"));
        let sent: serde_json::Value =
            serde_json::from_slice(seen[1].json.as_ref().unwrap()).unwrap();
        assert_eq!(sent, serde_json::json!({"role": "observer"}));
        // Neither the credential nor the body shows in a request's Debug.
        let shown = format!("{:?}", seen[1]);
        assert!(
            !shown.contains(me.secret()) && !shown.contains("observer"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn a_rotated_credential_is_returned_for_the_same_device() {
        let me = device();
        let next = Credential::issue(me.identity().clone()).0;
        let body = serde_json::to_string(&Rotated {
            token: next.as_str().to_owned(),
        })
        .unwrap();
        let (api, _) = fake(move |_| Ok(answer(200, &body)));
        let api = api.with_credential(me.clone());
        assert_eq!(api.rotate().await.unwrap(), next);

        let stranger = device();
        let body = serde_json::to_string(&Rotated {
            token: stranger.as_str().to_owned(),
        })
        .unwrap();
        let (api, _) = fake(move |_| Ok(answer(200, &body)));
        assert!(matches!(
            api.with_credential(me).rotate().await,
            Err(ClientError::InvalidResponse { .. })
        ));
    }

    #[test]
    fn the_api_lives_on_the_websocket_host_and_invites_have_a_link_form() {
        assert_eq!(
            api_base_for("ws://127.0.0.1:8080/").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            api_base_for("wss://relay.example.org/sync?x=1").as_deref(),
            Some("https://relay.example.org")
        );
        assert_eq!(
            api_base_for("ws://[::1]:9/").as_deref(),
            Some("http://[::1]:9")
        );
        assert_eq!(api_base_for("ftp://x/"), None);
        assert_eq!(api_base_for("ws:///"), None);
        assert_eq!(
            invite_link("abcd efgh-ijkl mnop qrst"),
            "cairn://invite/ABCDEFGHIJKLMNOPQRST"
        );
    }
}
