//! The admin API: the operator's HTTP interface under `/admin/v1`, on its own listen
//! address (`--admin-listen`, loopback unless `--admin-allow-remote`), with a second
//! `/metrics`. `cairn-relay admin …` ([`crate::admin_cli`]) is its command-line client.
//!
//! Every `/admin/v1` call presents the operator token as `Authorization: Bearer`; anything
//! else gets 401. The token comes from `CAIRN_ADMIN_TOKEN` or a file (default
//! `DATA/admin-token`, created with a random token and mode 0600 on the first start); the
//! relay keeps only its hash and compares in constant time, and never logs it. A member's
//! device credential is not an operator token, whatever it may do under `/v1`.
//!
//! Answers are JSON (`{"error","message"}` on failure, as under `/v1`); they carry ids,
//! counts and sizes, never pseudonyms or content. The only secrets an answer carries are the
//! organiser invites the operator asked for. A call that takes access away answers once the
//! affected sockets are closed, as under `/v1`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cairn_sync::ids::{DeviceId, MemberId};
use cairn_sync::membership::api::{GroupSummary, Invite};
use cairn_sync::membership::{
    hash_secret, os_random, secret_matches, Actor, AuditKind, GroupId, Identity, MembershipError,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{blocking, group_deletion, new_document_id, now_ms, ApiError, Body};
use crate::config::AdminToken;
use crate::sockets::Whose;
use crate::{tcp, AppState, RelayError};

/// TCP connections the admin address accepts at once: 64. One operator and a scraper
/// need a few; the cap keeps a stuck client from holding descriptors the relay needs.
const ADMIN_TCP_CAP: usize = 64;

/// Hours an organiser invite made through the admin API works by default: 72, time to
/// pass it to the group's first organiser (as `cairn-relay bootstrap`).
const DEFAULT_INVITE_HOURS: u64 = 72;

/// Longest invite: 720 hours (30 days), as for every invite.
const MAX_INVITE_HOURS: u64 = 720;

/// The operator token as the relay holds it: its hash, and where it came from.
#[derive(Debug)]
pub(crate) struct Operator {
    hash: RwLock<String>,
    source: AdminToken,
}

impl Operator {
    /// Loads the operator token from its source; a missing token file is created with a
    /// fresh random token (mode 0600).
    pub(crate) fn load(source: &AdminToken) -> Result<Operator, RelayError> {
        let token = match source {
            AdminToken::Env(token) => token.clone(),
            AdminToken::File(path) => read_or_create_token(path)?,
        };
        Ok(Operator {
            hash: RwLock::new(hash_secret(&token)),
            source: source.clone(),
        })
    }

    /// Whether `presented` is the operator token (constant-time on the hashes).
    fn accepts(&self, presented: &str) -> bool {
        let hash = self.hash.read().unwrap_or_else(|e| e.into_inner());
        secret_matches(presented, &hash)
    }
}

/// A fresh operator token: `cairnop_` and 64 hex digits (256 random bits).
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    os_random(&mut bytes);
    let mut token = String::from("cairnop_");
    for b in bytes {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

fn token_error(path: &Path, e: std::io::Error) -> RelayError {
    RelayError::Serve(std::io::Error::new(
        e.kind(),
        format!("operator token file {}: {e}", path.display()),
    ))
}

/// Reads the token in `path`, or creates the file with a new token.
fn read_or_create_token(path: &Path) -> Result<String, RelayError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.len() < crate::config::MIN_TOKEN_CHARS {
                return Err(token_error(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "holds no token (delete it to have a new one made)",
                    ),
                ));
            }
            warn_if_readable_by_others(path);
            Ok(token.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token();
            write_token_file(path, &token).map_err(|e| token_error(path, e))?;
            tracing::info!(file = %path.display(), "created the operator token file (mode 0600)");
            Ok(token)
        }
        Err(e) => Err(token_error(path, e)),
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "the operator token file is readable by other users; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// Writes `token` to `path` atomically: a mode-0600 temporary file beside it, fsynced,
/// renamed over it, and the directory fsynced, so a crash leaves the old token or the new
/// one, never a torn file.
fn write_token_file(path: &Path, token: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("admin-token".into(), |n| n.to_string_lossy())
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// The admin router's state: the relay's, and the operator token.
#[derive(Clone, Debug)]
pub(crate) struct AdminState {
    pub(crate) app: AppState,
    operator: Arc<Operator>,
}

/// Starts the operator's side of a relay until `stop`: the background tasks (with a
/// membership), and the admin API on `--admin-listen` if set. Returns their tasks.
pub(crate) async fn spawn(
    state: &AppState,
    stop: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, RelayError> {
    let mut tasks = Vec::new();
    if let Some(members) = &state.members {
        let m = members.membership.clone();
        tasks.push(tokio::spawn(audit_retention(
            state.clone(),
            m,
            stop.clone(),
        )));
        tasks.push(tokio::spawn(audit_failed_credentials(
            state.clone(),
            stop.clone(),
        )));
    }
    let Some(addr) = state.config.admin_listen else {
        return Ok(tasks);
    };
    let operator = Arc::new(Operator::load(&state.config.admin_token)?);
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        RelayError::Serve(std::io::Error::new(
            e.kind(),
            format!("binding the admin address {addr} (--admin-listen): {e}"),
        ))
    })?;
    tracing::info!(addr = %listener.local_addr()?, "admin API listening");
    let router = routes(AdminState {
        app: state.clone(),
        operator,
    });
    let serving = tcp::Serving {
        router,
        gate: tcp::Gate::new(ADMIN_TCP_CAP),
        metrics: state.metrics.clone(),
        header_timeout: state.config.header_timeout,
        stop,
        tls: None,
    };
    tasks.push(tokio::spawn(tcp::serve(listener, serving, async {})));
    Ok(tasks)
}

/// Refreshes the gauges an operator alerts on that are read rather than counted (free disk
/// space), before a scrape.
pub(crate) fn refresh_gauges(state: &AppState) {
    match rustix::fs::statvfs(&state.config.data) {
        Ok(stat) => {
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            state
                .metrics
                .disk_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        Err(e) => tracing::warn!(error = %e, "could not read the data directory's free space"),
    }
    let Some(members) = &state.members else {
        return;
    };
    let pending = members
        .membership
        .group_summaries()
        .iter()
        .filter(|g| g.deleted_ms.is_some())
        .count();
    state
        .metrics
        .groups_pending_deletion
        .set(i64::try_from(pending).unwrap_or(i64::MAX));
    // Counts the entries written since the last scrape (whoever wrote them: membership
    // changes and the relay's own), reading only those.
    let seen = state.metrics.audit_seen_seq.load(Ordering::Relaxed);
    if let Ok(new) = members.membership.audit_since(seen, MAX_AUDIT_PAGE) {
        if let Some(last) = new.last() {
            state.metrics.audit_entries.inc_by(new.len() as u64);
            state
                .metrics
                .audit_seen_seq
                .store(last.seq, Ordering::Relaxed);
        }
    }
}

/// The admin router: `/metrics`, and `/admin/v1` behind the operator token.
pub(crate) fn routes(state: AdminState) -> Router {
    let v1 = Router::new()
        .route("/admin/v1/groups", get(groups).post(create_group))
        .route(
            "/admin/v1/groups/{g}/organiser-invite",
            post(organiser_invite),
        )
        .route("/admin/v1/groups/{g}/members/{m}/suspend", post(suspend))
        .route("/admin/v1/groups/{g}/members/{m}", delete(remove))
        .route("/admin/v1/members/{m}/devices/{d}", delete(revoke))
        .route("/admin/v1/members/{m}", delete(erase))
        .route("/admin/v1/groups/{g}", delete(delete_group))
        .route("/admin/v1/groups/{g}/restore", post(restore_group))
        .route("/admin/v1/quotas", get(quotas))
        .route(
            "/admin/v1/groups/{g}/quota",
            get(group_quota).put(set_group_quota),
        )
        .route("/admin/v1/backups", post(backup))
        .route("/admin/v1/audit", get(audit))
        .route("/admin/v1/token/rotate", post(rotate_token))
        .fallback(|| async { ApiError::not_found() })
        // `layer`, not `route_layer`: unknown paths too answer 401 without the token.
        .layer(middleware::from_fn_with_state(state.clone(), operator_only));
    Router::new()
        .route("/metrics", get(metrics))
        .merge(v1)
        .with_state(state)
}

/// Lets through only requests that present the operator token.
async fn operator_only(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(token) if state.operator.accepts(token) => next.run(request).await,
        _ => {
            state.app.metrics.auth_failures.inc();
            tracing::info!("admin call refused: no or a wrong operator token");
            ApiError::unauthorized("the operator token is required (Authorization: Bearer)")
                .into_response()
        }
    }
}

type AdminResult<T> = Result<T, ApiError>;

async fn metrics(State(state): State<AdminState>) -> Response {
    crate::metrics_handler(State(state.app))
        .await
        .into_response()
}

// ------------------------------------------------------------------ groups

/// `GET /admin/v1/groups`: ids, counts, sizes and quotas, never names.
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupList {
    /// Every group, oldest first (deleted ones awaiting their purge included).
    pub groups: Vec<GroupSummary>,
}

async fn groups(State(state): State<AdminState>) -> AdminResult<Json<GroupList>> {
    let mut groups = state.app.members()?.membership.group_summaries();
    groups.sort_by(|a, b| (a.created_ms, &a.group).cmp(&(b.created_ms, &b.group)));
    Ok(Json(GroupList { groups }))
}

/// `POST /admin/v1/groups` (every field optional).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NewGroup {
    /// The group's code of conduct; without it the generic one `bootstrap` uses.
    #[serde(default)]
    pub code_of_conduct: Option<String>,
    /// Hours the organiser invite works (default 72, at most 720).
    #[serde(default)]
    pub invite_hours: Option<u64>,
}

/// The answer to `POST /admin/v1/groups`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewGroupMade {
    /// The new group.
    pub group_id: GroupId,
    /// Its first organiser invite (shown once).
    pub invite: Invite,
}

/// `POST /admin/v1/groups/{g}/organiser-invite` (optional body).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NewInvite {
    /// Hours the invite works (default 72, at most 720).
    #[serde(default)]
    pub invite_hours: Option<u64>,
}

fn invite_secs(hours: Option<u64>) -> AdminResult<u64> {
    let hours = hours.unwrap_or(DEFAULT_INVITE_HOURS);
    if hours == 0 || hours > MAX_INVITE_HOURS {
        return Err(ApiError::bad_request(
            "invite_hours must be between 1 and 720",
        ));
    }
    Ok(hours * 3600)
}

/// An optional JSON body: none (or empty) is the default.
async fn optional_body<T: serde::de::DeserializeOwned + Default>(
    request: Request,
) -> AdminResult<T> {
    let bytes = axum::body::to_bytes(request.into_body(), crate::api::MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::bad_request("the body is too large or was cut off"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::bad_request("the body is not the expected JSON"))
}

async fn create_group(
    State(state): State<AdminState>,
    Body(req): Body<NewGroup>,
) -> AdminResult<impl IntoResponse> {
    let secs = invite_secs(req.invite_hours)?;
    let membership = state.app.members()?.membership.clone();
    let coc = req
        .code_of_conduct
        .unwrap_or_else(|| crate::bootstrap::DEFAULT_CODE_OF_CONDUCT.to_owned());
    let (group_id, invite) =
        blocking(move || membership.bootstrap(&coc, new_document_id(), secs, now_ms())).await?;
    state.app.changed("group_created");
    tracing::info!(group = %group_id, "group created by the operator");
    state.app.roster_changed(&group_id);
    Ok((StatusCode::CREATED, Json(NewGroupMade { group_id, invite })))
}

async fn organiser_invite(
    State(state): State<AdminState>,
    UrlPath(g): UrlPath<String>,
    request: Request,
) -> AdminResult<impl IntoResponse> {
    let req: NewInvite = optional_body(request).await?;
    let secs = invite_secs(req.invite_hours)?;
    let membership = state.app.members()?.membership.clone();
    let group = GroupId::from(g);
    let gr = group.clone();
    let invite = blocking(move || membership.organiser_invite(&gr, secs, now_ms())).await?;
    state.app.changed("invite_created");
    tracing::info!(group = %group, "organiser invite created by the operator");
    Ok((StatusCode::CREATED, Json(invite)))
}

// ------------------------------------------------------------------ members

/// A change by the operator that takes access away from `member` (suspension, removal):
/// committed durably, then the member's sockets are closed and the engine re-checks
/// every connection before this answers; the group's roster is rewritten.
async fn member_change(
    state: &AdminState,
    (g, m): (String, String),
    kind: &'static str,
    f: impl FnOnce(
            &cairn_sync::membership::Membership,
            &GroupId,
            &MemberId,
            u64,
        ) -> Result<(), MembershipError>
        + Send
        + 'static,
) -> AdminResult<()> {
    let membership = state.app.members()?.membership.clone();
    let (group, member) = (GroupId::from(g), MemberId::from(m));
    let (gr, mb) = (group.clone(), member.clone());
    blocking(move || f(&membership, &gr, &mb, now_ms())).await?;
    state.app.changed(kind);
    tracing::info!(group = %group, member = %member, kind, "member changed by the operator");
    state.app.access_reduced(Some(Whose::Member(member))).await;
    state.app.roster_changed(&group);
    Ok(())
}

async fn suspend(
    State(state): State<AdminState>,
    UrlPath(ids): UrlPath<(String, String)>,
) -> AdminResult<StatusCode> {
    member_change(&state, ids, "suspended", |m, g, mb, now| {
        m.suspend_as(&Actor::Operator, g, mb, now).map(|_| ())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(
    State(state): State<AdminState>,
    UrlPath(ids): UrlPath<(String, String)>,
) -> AdminResult<StatusCode> {
    member_change(&state, ids, "removed", |m, g, mb, now| {
        m.remove_as(&Actor::Operator, g, mb, now)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke(
    State(state): State<AdminState>,
    UrlPath((m, d)): UrlPath<(String, String)>,
) -> AdminResult<StatusCode> {
    let membership = state.app.members()?.membership.clone();
    let revoked = Identity {
        member: MemberId::from(m),
        device: DeviceId::from(d),
    };
    let who = revoked.clone();
    blocking(move || {
        membership.revoke_device_as(&Actor::Operator, &who.member, &who.device, now_ms())
    })
    .await?;
    state.app.changed("device_revoked");
    tracing::info!(member = %revoked.member, device = %revoked.device, "device revoked by the operator");
    state.app.access_reduced(Some(Whose::Device(revoked))).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Erases a member (`crate::members::erase`, as a member's own `DELETE /v1/me`): devices,
/// memberships and link codes gone, new roster documents without them; their sockets are
/// closed and the old rosters forgotten before this answers. Copies already on other
/// members' devices cannot be recalled.
async fn erase(
    State(state): State<AdminState>,
    UrlPath(m): UrlPath<String>,
) -> AdminResult<Json<cairn_sync::membership::api::Erased>> {
    let erased = crate::members::erase(&state.app, Actor::Operator, MemberId::from(m)).await?;
    Ok(Json(erased))
}

// ------------------------------------------------------------------ audit

/// Most audit entries one call returns: 10,000.
const MAX_AUDIT_PAGE: usize = 10_000;

/// `GET /admin/v1/audit` query.
#[derive(Debug, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// The audit log as JSON lines (`application/jsonl`), oldest first, entries after `since`.
async fn audit(
    State(state): State<AdminState>,
    axum::extract::Query(q): axum::extract::Query<AuditQuery>,
) -> AdminResult<Response> {
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_AUDIT_PAGE);
    flush_failed_credentials(&state.app).await;
    let membership = state.app.members()?.membership.clone();
    let entries = blocking(move || membership.audit_since(q.since, limit)).await?;
    let mut body = String::new();
    for entry in &entries {
        body.push_str(&entry.to_json_line());
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], body).into_response())
}

/// Records a relay-side audit entry (backups, token rotation) on the blocking pool; a
/// failure is logged, not fatal (what it records has happened).
pub(crate) async fn record(state: &AppState, kind: AuditKind, count: Option<u64>) {
    let Some(members) = &state.members else {
        return;
    };
    let membership = members.membership.clone();
    let done = tokio::task::spawn_blocking(move || {
        membership.record_audit(kind, Actor::Operator, None, None, None, count, now_ms())
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, ?kind, "could not write an audit entry"),
        Err(_) => tracing::error!(?kind, "writing an audit entry panicked"),
    }
}

// ------------------------------------------------------------------ group deletion

/// The answer to `DELETE /admin/v1/groups/{g}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupDeleted {
    /// The group.
    pub group_id: GroupId,
    /// When it was deleted (Unix ms).
    pub deleted_ms: u64,
    /// From when it is destroyed (Unix ms; the hourly purge runs after this).
    pub purge_after_ms: u64,
}

async fn delete_group(
    State(state): State<AdminState>,
    UrlPath(g): UrlPath<String>,
) -> AdminResult<Json<GroupDeleted>> {
    let membership = state.app.members()?.membership.clone();
    let group = GroupId::from(g);
    // As an organiser's deletion: every connection is re-checked before this answers.
    group_deletion(&state.app, Actor::Operator, group.clone(), true).await?;
    let deleted_ms = membership
        .group_summaries()
        .into_iter()
        .find(|s| s.group == group)
        .and_then(|s| s.deleted_ms)
        .unwrap_or_else(now_ms);
    let grace =
        u64::try_from(state.app.config.group_deletion_grace.as_millis()).unwrap_or(u64::MAX);
    Ok(Json(GroupDeleted {
        group_id: group,
        deleted_ms,
        purge_after_ms: deleted_ms.saturating_add(grace),
    }))
}

async fn restore_group(
    State(state): State<AdminState>,
    UrlPath(g): UrlPath<String>,
) -> AdminResult<StatusCode> {
    // As an organiser's restore: the group's members reconnect and sync again.
    group_deletion(&state.app, Actor::Operator, GroupId::from(g), false).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ quotas

/// `GET /admin/v1/quotas`: the relay's defaults (`--group-max-documents`,
/// `--group-max-mb`, `--member-documents-per-hour`).
#[derive(Debug, Serialize, Deserialize)]
pub struct QuotaDefaults {
    /// Documents one group may hold.
    pub documents_per_group: usize,
    /// Bytes one group's documents may take.
    pub bytes_per_group: u64,
    /// Documents one member may register per hour.
    pub documents_per_member_per_hour: usize,
}

async fn quotas(State(state): State<AdminState>) -> Json<QuotaDefaults> {
    let c = &state.app.config;
    Json(QuotaDefaults {
        documents_per_group: c.group_max_documents,
        bytes_per_group: c.group_max_bytes,
        documents_per_member_per_hour: c.member_documents_per_hour,
    })
}

/// `PUT /admin/v1/groups/{g}/quota`: the group's own limits; a field left out (or null)
/// returns to the relay's default.
#[derive(Debug, Serialize, Deserialize)]
pub struct SetQuota {
    /// Documents the group may hold.
    #[serde(default)]
    pub documents: Option<usize>,
    /// Bytes the group's documents may take.
    #[serde(default)]
    pub bytes: Option<u64>,
}

async fn group_quota(
    State(state): State<AdminState>,
    UrlPath(g): UrlPath<String>,
) -> AdminResult<Json<cairn_sync::membership::api::GroupQuota>> {
    let group = GroupId::from(g);
    Ok(Json(state.app.members()?.membership.group_quota(&group)?))
}

async fn set_group_quota(
    State(state): State<AdminState>,
    UrlPath(g): UrlPath<String>,
    Body(req): Body<SetQuota>,
) -> AdminResult<Json<cairn_sync::membership::api::GroupQuota>> {
    if req.documents == Some(0) || req.bytes == Some(0) {
        return Err(ApiError::bad_request("a quota must be greater than zero"));
    }
    let membership = state.app.members()?.membership.clone();
    let group = GroupId::from(g);
    let gr = group.clone();
    let quota = blocking(move || {
        membership.set_group_quota(&Actor::Operator, &gr, req.documents, req.bytes, now_ms())
    })
    .await?;
    state.app.changed("quota_changed");
    tracing::info!(group = %group, documents = quota.documents, bytes = quota.bytes, "group quota set by the operator");
    Ok(Json(quota))
}

// ------------------------------------------------------------------ backups

/// The answer to `POST /admin/v1/backups`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupTaken {
    /// The backup file.
    pub path: PathBuf,
    /// Entries in it.
    pub keys: u64,
    /// Bytes of values in it.
    pub bytes: u64,
    /// When it was taken (Unix ms).
    pub taken_ms: u64,
}

async fn backup(State(state): State<AdminState>) -> AdminResult<Json<BackupTaken>> {
    let Some(dir) = state.app.config.backup_dir.clone() else {
        return Err(MembershipError::Conflict(
            "online backups need a backup directory: start the relay with --backup-dir DIR (outside its data directory)",
        )
        .into());
    };
    let metrics = &state.app.metrics;
    match crate::backup::backup(&state.app, &dir).await {
        Ok(done) => {
            metrics.backups.get_or_create(&vec![("result", "ok")]).inc();
            metrics
                .last_backup_timestamp
                .set(i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX));
            // `backup::backup` has recorded it in the audit log.
            Ok(Json(BackupTaken {
                path: done.path,
                keys: done.report.keys,
                bytes: done.report.bytes,
                taken_ms: done.report.taken_ms,
            }))
        }
        Err(e) => {
            metrics
                .backups
                .get_or_create(&vec![("result", "failed")])
                .inc();
            tracing::error!(error = %e, "online backup failed");
            Err(ApiError::unavailable(&format!("the backup failed: {e}")))
        }
    }
}

// ------------------------------------------------------------------ background

/// How often audit retention runs: daily.
const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How often counted credential failures become audit entries: every minute.
const FAILURES_EVERY: Duration = crate::auth::FAILURE_AUDIT_EVERY;

/// Sleeps `every`; false if `stop` came first.
async fn every(stop: &CancellationToken, every: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(every) => true,
    }
}

/// Daily: deletes audit entries older than `--audit-retention-days`.
async fn audit_retention(
    state: AppState,
    membership: cairn_sync::membership::Membership,
    stop: CancellationToken,
) {
    let keep = u64::try_from(state.config.audit_retention.as_millis()).unwrap_or(u64::MAX);
    loop {
        let m = membership.clone();
        let before = now_ms().saturating_sub(keep);
        match tokio::task::spawn_blocking(move || m.expire_audit(before)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(entries = n, "expired audit entries past retention"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit retention failed; it runs again tomorrow")
            }
            Err(_) => tracing::error!("audit retention panicked"),
        }
        if !every(&stop, RETENTION_EVERY).await {
            return;
        }
    }
}

/// Every minute (and once more at shutdown): one `CredentialFailed` audit entry per
/// claimed identity that presented wrong credentials since, with their count.
async fn audit_failed_credentials(state: AppState, stop: CancellationToken) {
    loop {
        let go_on = every(&stop, FAILURES_EVERY).await;
        flush_failed_credentials(&state).await;
        if !go_on {
            return;
        }
    }
}

/// Writes the credential failures that may get an entry now (see
/// `auth::FailedCredentials`): from the minute task, and before an audit export so that it
/// is up to date.
async fn flush_failed_credentials(state: &AppState) {
    let Some(members) = &state.members else {
        return;
    };
    let failed = state.failed_credentials.take_due(std::time::Instant::now());
    if failed.is_empty() {
        return;
    }
    let membership = members.membership.clone();
    let done = tokio::task::spawn_blocking(move || {
        for (claimed, count) in failed {
            let (member, device) = match claimed {
                Some(id) => (Some(id.member), Some(id.device)),
                None => (None, None),
            };
            membership.record_audit(
                AuditKind::CredentialFailed,
                Actor::Relay,
                None,
                member,
                device,
                Some(count),
                now_ms(),
            )?;
        }
        Ok::<(), MembershipError>(())
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "could not audit credential failures"),
        Err(_) => tracing::error!("auditing credential failures panicked"),
    }
}

// ------------------------------------------------------------------ token

/// The answer to `POST /admin/v1/token/rotate`: where the new token is (never the token).
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenRotated {
    /// The token file that now holds the new token.
    pub token_file: PathBuf,
}

async fn rotate_token(State(state): State<AdminState>) -> AdminResult<Json<TokenRotated>> {
    let AdminToken::File(path) = &state.operator.source else {
        return Err(MembershipError::Conflict(
            "the operator token comes from CAIRN_ADMIN_TOKEN; change it there and restart the relay",
        )
        .into());
    };
    let path = path.clone();
    let token = new_token();
    let hash = hash_secret(&token);
    let file = path.clone();
    tokio::task::spawn_blocking(move || write_token_file(&file, &token))
        .await
        .map_err(|_| ApiError::unavailable("the relay failed this call; try again"))?
        .map_err(|e| {
            tracing::error!(error = %e, file = %path.display(), "could not write the new operator token");
            ApiError::unavailable("could not write the token file; the old token still works")
        })?;
    *state
        .operator
        .hash
        .write()
        .unwrap_or_else(|e| e.into_inner()) = hash;
    tracing::info!(file = %path.display(), "operator token rotated");
    record(&state.app, AuditKind::OperatorTokenRotated, None).await;
    Ok(Json(TokenRotated { token_file: path }))
}
