//! The membership HTTP API under `/v1` (see `cairn_sync::membership::api` for the paths
//! and bodies).
//!
//! Every change is committed durably by [`Membership`]
//! before it answers; the calls run on the blocking pool because a commit waits for an
//! fsync. A call that takes access away (remove, leave, suspend, a role change, a new code
//! of conduct, revoking or rotating a device) then has the engine re-check every
//! connection and closes the affected sockets, and answers only once they are gone.
//! Errors are `{"error", "message"}` with the status of their code; messages never carry
//! content, names or tokens.

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use cairn_sync::ids::{DeviceId, DocumentId, MemberId};
use cairn_sync::membership::api::{
    AcceptCodeOfConduct, CreateGroup, CreateInvite, LinkDevice, RedeemInvite, RegisterDocument,
    Rotated, SetCodeOfConduct, SetPseudonym, SetRole,
};
use cairn_sync::membership::{Actor, GroupId, Identity, Membership, MembershipError};
use serde::de::DeserializeOwned;

use crate::auth::{Caller, MaybeCaller, Source};
use crate::limits::Limited;
use crate::sockets::Whose;
use crate::AppState;

/// Largest request body: 128 KiB. The largest legitimate one is a code of conduct (at
/// most 64 KiB of text, a little more once escaped as JSON).
pub const MAX_BODY_BYTES: usize = 128 * 1024;

/// `Retry-After` for a quota (not a rate): 3,600 s. A quota frees only when something is
/// removed or expires, so a client should not retry soon.
const QUOTA_RETRY_SECS: u64 = 3600;

/// A failed API call: status, code and a message for developers.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn unauthorized(message: &str) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.to_owned(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: &str) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.to_owned(),
            retry_after: None,
        }
    }

    pub(crate) fn unavailable(message: &str) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.to_owned(),
            retry_after: None,
        }
    }

    pub(crate) fn not_found() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: "not found".to_owned(),
            retry_after: None,
        }
    }

    pub(crate) fn rate_limited(limited: Limited) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "quota_exceeded",
            message: format!("rate limited ({})", limited.limit.label()),
            retry_after: Some(limited.retry_after_secs),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<MembershipError> for ApiError {
    fn from(e: MembershipError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match &e {
            MembershipError::Store(inner) => {
                // Logged once, here; the caller learns only that it may retry.
                tracing::error!(error = %inner, "a membership change could not be stored");
                "the relay could not store the change; nothing was changed, try again".to_owned()
            }
            other => other.to_string(),
        };
        ApiError {
            status,
            code: e.code(),
            message,
            retry_after: matches!(e, MembershipError::QuotaExceeded(_)).then_some(QUOTA_RETRY_SECS),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::debug!(
            status = self.status.as_u16(),
            code = self.code,
            "membership call refused"
        );
        let body = cairn_sync::membership::api::ApiError {
            error: self.code.to_owned(),
            message: self.message,
        };
        let quota = (self.code == "quota_exceeded")
            .then(|| quota_label(&body.message))
            .flatten();
        let mut response = (self.status, Json(body)).into_response();
        if let Some(label) = quota {
            response.extensions_mut().insert(QuotaRefused(label));
        }
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Marks an answer refused by a quota (not a rate limit), for [`count_quota_refusals`].
#[derive(Clone, Copy, Debug)]
struct QuotaRefused(&'static str);

/// The metric label of a quota refusal, from the membership's fixed message.
fn quota_label(message: &str) -> Option<&'static str> {
    const QUOTAS: [(&str, &str); 6] = [
        ("documents in this group", "documents_per_group"),
        ("bytes in this group", "bytes_per_group"),
        ("per member per hour", "documents_per_member_per_hour"),
        ("devices per member", "devices_per_member"),
        ("groups per member", "groups_per_member"),
        ("open invites per group", "open_invites_per_group"),
    ];
    QUOTAS
        .iter()
        .find(|(text, _)| message.contains(text))
        .map(|(_, label)| *label)
}

/// Counts every `/v1` answer refused by a quota in `cairn_quota_exceeded_total{quota}`.
pub(crate) async fn count_quota_refusals(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    if let Some(QuotaRefused(label)) = response.extensions().get::<QuotaRefused>() {
        state.metrics.quota_exceeded(label);
    }
    response
}

/// A JSON body of at most [`MAX_BODY_BYTES`]; anything else is a `bad_request`.
pub(crate) struct Body<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes: Bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::bad_request("the body is too large or was cut off"))?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|_| ApiError::bad_request("the body is not the expected JSON"))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The `/v1` routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/invites/redeem", post(redeem))
        .route("/v1/invites/{code}", get(invite_preview))
        .route("/v1/groups", post(create_group).get(groups))
        .route("/v1/groups/{g}", delete(delete_group))
        .route("/v1/groups/{g}/restore", post(restore_group))
        .route("/v1/me", delete(erase_me))
        .route("/v1/me/export", get(export_me))
        .route(
            "/v1/groups/{g}/code-of-conduct",
            get(code_of_conduct).put(set_code_of_conduct),
        )
        .route("/v1/groups/{g}/code-of-conduct/accept", post(accept))
        .route("/v1/groups/{g}/members", get(members))
        .route("/v1/groups/{g}/members/{m}", delete(remove))
        .route("/v1/groups/{g}/members/{m}/role", put(set_role))
        .route("/v1/groups/{g}/members/{m}/suspend", post(suspend))
        .route("/v1/groups/{g}/members/{m}/reinstate", post(reinstate))
        .route("/v1/groups/{g}/me/pseudonym", put(set_pseudonym))
        .route("/v1/groups/{g}/invites", post(create_invite))
        .route("/v1/groups/{g}/documents", post(register_document))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/link-codes", post(create_link_code))
        .route("/v1/devices/link", post(link_device))
        .route("/v1/devices/self/rotate", post(rotate))
        .route("/v1/devices/{d}", delete(revoke))
        .fallback(|| async { ApiError::not_found() })
}

/// Wall time in Unix ms, as the membership core takes it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs a membership call on the blocking pool (a change waits for an fsync).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MembershipError> + Send + 'static,
) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => {
            tracing::error!("a membership call panicked");
            Err(ApiError::unavailable(
                "the relay failed this call; try again",
            ))
        }
    }
}

// ------------------------------------------------------------------ invites

async fn invite_preview(
    State(state): State<AppState>,
    Source(source): Source,
    Path(code): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let members = state.members()?;
    members
        .limiters
        .invite_from(source)
        .map_err(|l| state.limited(l))?;
    Ok(Json(members.membership.invite_preview(&code, now_ms())?))
}

async fn redeem(
    State(state): State<AppState>,
    Source(source): Source,
    MaybeCaller(who): MaybeCaller,
    Body(req): Body<RedeemInvite>,
) -> ApiResult<impl IntoResponse> {
    let members = state.members()?;
    members
        .limiters
        .invite_from(source)
        .map_err(|l| state.limited(l))?;
    let membership = members.membership.clone();
    let redeemed =
        blocking(move || membership.redeem(who.as_ref(), &req.code, &req.pseudonym, now_ms()))
            .await?;
    state.changed("redeemed");
    if let Some(group) = &redeemed.group {
        tracing::info!(group = %group.group_id, member = %redeemed.member_id, new_device = redeemed.token.is_some(), "invite redeemed");
        state.roster_changed(&group.group_id);
    }
    Ok(Json(redeemed))
}

// ------------------------------------------------------------------ groups

async fn create_group(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Body(req): Body<CreateGroup>,
) -> ApiResult<impl IntoResponse> {
    let membership = state.members()?.membership.clone();
    let roster = new_document_id();
    let who = identity.clone();
    let info = blocking(move || {
        membership.create_group(&who, &req.pseudonym, &req.code_of_conduct, roster, now_ms())
    })
    .await?;
    state.changed("group_created");
    tracing::info!(group = %info.group_id, member = %identity.member, "group created");
    state.roster_changed(&info.group_id);
    Ok((StatusCode::CREATED, Json(info)))
}

/// A fresh document id from the OS RNG (a group's roster).
pub(crate) fn new_document_id() -> DocumentId {
    DocumentId::from_bytes(cairn_sync::store::random_uuid().into_bytes())
}

async fn groups(
    State(state): State<AppState>,
    Caller { identity }: Caller,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        state.members()?.membership.groups_of(&identity, now_ms())?,
    ))
}

/// Deletes a group (its organisers): nobody reads or writes it from now on; it can be
/// restored until its grace period ends, then it is destroyed.
async fn delete_group(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(g): Path<String>,
) -> ApiResult<impl IntoResponse> {
    group_deletion(&state, Actor::member(&identity), GroupId::from(g), true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Restores a deleted group within its grace period (its organisers).
async fn restore_group(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(g): Path<String>,
) -> ApiResult<impl IntoResponse> {
    group_deletion(&state, Actor::member(&identity), GroupId::from(g), false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes (`delete`) or restores a group as `actor`; a deletion closes every socket's
/// access to the group before it answers. The operator's admin API calls it too.
pub(crate) async fn group_deletion(
    state: &AppState,
    actor: Actor,
    group: GroupId,
    delete: bool,
) -> ApiResult<()> {
    let membership = state.members()?.membership.clone();
    let g = group.clone();
    blocking(move || {
        if delete {
            membership.delete_group(&actor, &g, now_ms())
        } else {
            membership.restore_group(&actor, &g, now_ms())
        }
    })
    .await?;
    let kind = if delete {
        "group_deleted"
    } else {
        "group_restored"
    };
    state.changed(kind);
    tracing::info!(group = %group, kind, "group deletion changed");
    if delete {
        state.access_reduced(None).await;
    } else {
        // Devices that met `doc-unavailable` while the group was deleted stopped syncing
        // its documents: closing their sockets makes them reconnect and sync everything
        // again (what they wrote meanwhile included).
        let members: Vec<MemberId> = state
            .members()?
            .membership
            .snapshot()
            .members_of(&group)
            .map(|m| m.member.clone())
            .collect();
        for member in members {
            state.access_reduced(Some(Whose::Member(member))).await;
        }
        state.roster_changed(&group);
    }
    Ok(())
}

/// Erases the caller's account: devices and memberships removed, their pseudonym gone
/// from every roster the relay serves. What they wrote stays, shown as by a former member;
/// copies already on other members' phones cannot be recalled.
async fn erase_me(
    State(state): State<AppState>,
    Caller { identity }: Caller,
) -> ApiResult<impl IntoResponse> {
    let member = identity.member.clone();
    crate::members::erase(&state, Actor::member(&identity), member).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Everything the relay holds about the caller: memberships, roles, devices, the audit
/// entries about them, and the documents they may read (which the app fetches by sync).
async fn export_me(
    State(state): State<AppState>,
    Caller { identity }: Caller,
) -> ApiResult<impl IntoResponse> {
    let membership = state.members()?.membership.clone();
    Ok(Json(
        blocking(move || membership.export_member(&identity, now_ms())).await?,
    ))
}

async fn code_of_conduct(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(g): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let group = GroupId::from(g);
    Ok(Json(state.members()?.membership.code_of_conduct(
        &identity,
        &group,
        now_ms(),
    )?))
}

async fn set_code_of_conduct(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(g): Path<String>,
    Body(req): Body<SetCodeOfConduct>,
) -> ApiResult<impl IntoResponse> {
    let membership = state.members()?.membership.clone();
    let group = GroupId::from(g);
    let (who, gr) = (identity.clone(), group.clone());
    let coc =
        blocking(move || membership.set_code_of_conduct(&who, &gr, &req.text, now_ms())).await?;
    state.changed("code_of_conduct_changed");
    tracing::info!(group = %group, version = coc.version, bytes = coc.text.len(), "code of conduct changed");
    // Every member but its author must accept the new version before reading on.
    state.access_reduced(None).await;
    state.roster_changed(&group);
    Ok(Json(coc))
}

async fn accept(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(g): Path<String>,
    Body(req): Body<AcceptCodeOfConduct>,
) -> ApiResult<impl IntoResponse> {
    let membership = state.members()?.membership.clone();
    let group = GroupId::from(g);
    let gr = group.clone();
    blocking(move || membership.accept_code_of_conduct(&identity, &gr, req.version, now_ms()))
        .await?;
    state.changed("code_of_conduct_accepted");
    state.roster_changed(&group);
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ members

async fn members(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(g): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let group = GroupId::from(g);
    Ok(Json(state.members()?.membership.members(
        &identity,
        &group,
        now_ms(),
    )?))
}

/// What a change to one member takes away, to be closed before the call answers.
enum Reduces {
    /// Nothing (a reinstatement only gives access back).
    Nothing,
    /// What the engine re-checks (a role change: a lower role writes less).
    Access,
    /// That, and every socket of the member (suspension, removal, leaving).
    MemberSockets,
}

/// A change to member `m` of group `g` by the caller: runs `f` on the blocking pool (it
/// commits durably), counts it as `kind`, closes what it took away, and rewrites the
/// group's roster.
async fn member_change<T: Send + 'static>(
    state: &AppState,
    identity: Identity,
    (g, m): (String, String),
    kind: &'static str,
    reduces: Reduces,
    f: impl FnOnce(&Membership, &Identity, &GroupId, &MemberId, u64) -> Result<T, MembershipError>
        + Send
        + 'static,
) -> ApiResult<T> {
    let membership = state.members()?.membership.clone();
    let (group, member) = (GroupId::from(g), MemberId::from(m));
    let (gr, mb) = (group.clone(), member.clone());
    let answer = blocking(move || f(&membership, &identity, &gr, &mb, now_ms())).await?;
    state.changed(kind);
    tracing::info!(group = %group, member = %member, kind, "member changed");
    match reduces {
        Reduces::Nothing => {}
        Reduces::Access => state.access_reduced(None).await,
        Reduces::MemberSockets => state.access_reduced(Some(Whose::Member(member))).await,
    }
    state.roster_changed(&group);
    Ok(answer)
}

async fn set_role(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(ids): Path<(String, String)>,
    Body(req): Body<SetRole>,
) -> ApiResult<impl IntoResponse> {
    let change = move |m: &Membership, who: &Identity, g: &GroupId, mb: &MemberId, now| {
        m.set_role(who, g, mb, req.role, now)
    };
    let info = member_change(
        &state,
        identity,
        ids,
        "role_changed",
        Reduces::Access,
        change,
    );
    Ok(Json(info.await?))
}

async fn suspend(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(ids): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let info = member_change(
        &state,
        identity,
        ids,
        "suspended",
        Reduces::MemberSockets,
        |m, who, g, mb, now| m.suspend(who, g, mb, now),
    );
    Ok(Json(info.await?))
}

async fn reinstate(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(ids): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let info = member_change(
        &state,
        identity,
        ids,
        "reinstated",
        Reduces::Nothing,
        |m, who, g, mb, now| m.reinstate(who, g, mb, now),
    );
    Ok(Json(info.await?))
}

async fn remove(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(ids): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let kind = if identity.member.as_str() == ids.1 {
        "left"
    } else {
        "removed"
    };
    member_change(
        &state,
        identity,
        ids,
        kind,
        Reduces::MemberSockets,
        |m, who, g, mb, now| m.remove(who, g, mb, now),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_pseudonym(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(g): Path<String>,
    Body(req): Body<SetPseudonym>,
) -> ApiResult<impl IntoResponse> {
    let membership = state.members()?.membership.clone();
    let group = GroupId::from(g);
    let gr = group.clone();
    blocking(move || membership.set_pseudonym(&identity, &gr, &req.pseudonym, now_ms())).await?;
    state.changed("pseudonym_changed");
    state.roster_changed(&group);
    Ok(StatusCode::NO_CONTENT)
}

async fn create_invite(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(g): Path<String>,
    Body(req): Body<CreateInvite>,
) -> ApiResult<impl IntoResponse> {
    let membership = state.members()?.membership.clone();
    let group = GroupId::from(g);
    let gr = group.clone();
    let invite = blocking(move || membership.create_invite(&identity, &gr, &req, now_ms())).await?;
    state.changed("invite_created");
    tracing::info!(group = %group, max_uses = invite.max_uses, "invite created");
    Ok((StatusCode::CREATED, Json(invite)))
}

async fn register_document(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(g): Path<String>,
    Body(req): Body<RegisterDocument>,
) -> ApiResult<impl IntoResponse> {
    let membership = state.members()?.membership.clone();
    let group = GroupId::from(g);
    let gr = group.clone();
    let answer = req.clone();
    blocking(move || {
        membership.register_document(&identity, &gr, req.document_id, req.kind, now_ms())
    })
    .await?;
    state.changed("document_registered");
    tracing::info!(group = %group, doc = %answer.document_id, kind = answer.kind.name(), "document registered");
    Ok((StatusCode::CREATED, Json(answer)))
}

// ------------------------------------------------------------------ devices

async fn devices(
    State(state): State<AppState>,
    Caller { identity }: Caller,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(state.members()?.membership.devices(&identity)?))
}

async fn create_link_code(
    State(state): State<AppState>,
    Caller { identity }: Caller,
) -> ApiResult<impl IntoResponse> {
    let membership = state.members()?.membership.clone();
    let code = blocking(move || membership.create_link_code(&identity, now_ms())).await?;
    state.changed("link_code_created");
    Ok((StatusCode::CREATED, Json(code)))
}

async fn link_device(
    State(state): State<AppState>,
    Source(source): Source,
    Body(req): Body<LinkDevice>,
) -> ApiResult<impl IntoResponse> {
    let members = state.members()?;
    members
        .limiters
        .invite_from(source)
        .map_err(|l| state.limited(l))?;
    let membership = members.membership.clone();
    let linked = blocking(move || membership.link_device(&req.code, now_ms())).await?;
    state.changed("device_linked");
    tracing::info!(member = %linked.member_id, device = %linked.device_id, "device linked");
    Ok(Json(linked))
}

async fn rotate(
    State(state): State<AppState>,
    Caller { identity }: Caller,
) -> ApiResult<impl IntoResponse> {
    let membership = state.members()?.membership.clone();
    let who = identity.clone();
    let token = blocking(move || membership.rotate(&who, now_ms())).await?;
    state.changed("device_rotated");
    tracing::info!(member = %identity.member, device = %identity.device, "credential rotated");
    // The old credential may have been stolen: its sockets go too.
    state.access_reduced(Some(Whose::Device(identity))).await;
    Ok(Json(Rotated { token }))
}

async fn revoke(
    State(state): State<AppState>,
    Caller { identity }: Caller,
    Path(d): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let membership = state.members()?.membership.clone();
    let device = DeviceId::from(d);
    let (who, dv) = (identity.clone(), device.clone());
    blocking(move || membership.revoke_device(&who, &dv, now_ms())).await?;
    state.changed("device_revoked");
    tracing::info!(member = %identity.member, device = %device, "device revoked");
    let revoked = cairn_sync::membership::Identity {
        member: identity.member.clone(),
        device,
    };
    state.access_reduced(Some(Whose::Device(revoked))).await;
    Ok(StatusCode::NO_CONTENT)
}
