//! The membership service: every call the relay's API makes, each checked against the
//! caller's role, committed durably, then applied to the state access checks read.

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use thiserror::Error;

use super::api::{
    CodeOfConduct, CreateInvite, DeviceInfo, Erased, ExportDocument, ExportMembership,
    GroupDocuments, GroupInfo, GroupQuota, GroupSummary, Invite, InvitePreview, LinkCode,
    MemberInfo, MemberRecordExport, Purged, Redeemed,
};
use super::policy::DocumentSizes;
use super::reload::ExternalChanges;
use super::{
    hash_secret, normalise_code, random_code, random_id, secret_matches, Actor, AuditEntry,
    AuditKind, BindingRecord, BoundKind, Commit, Credential, DeviceRecord, GroupId, GroupRecord,
    Identity, InviteRecord, LinkCodeRecord, MemberStatus, MembershipAccess, MembershipRecord,
    MembershipState, MembershipStore, QuotaRecord, Record, RecordKey,
};
use crate::docs::group::Role;
use crate::ids::{DeviceId, DocumentId, MemberId};
use crate::store::StoreError;

/// Limits on what one member or group may create; past one a call fails with
/// [`MembershipError::QuotaExceeded`].
#[derive(Clone, Debug)]
pub struct Quotas {
    /// Devices per member, revoked ones included: 20 (a person has a few; a loop that
    /// links devices without end is stopped).
    pub devices_per_member: usize,
    /// Groups one member may have created: 50.
    pub groups_per_member: usize,
    /// Unexpired invites per group: 200.
    pub open_invites_per_group: usize,
    /// Longest invite lifetime: 30 days.
    pub max_invite_secs: u64,
    /// Most uses of one invite: 500 (a large community's launch).
    pub max_invite_uses: u32,
    /// Bytes of a code of conduct: 64 KiB.
    pub max_code_of_conduct_bytes: usize,
    /// Bytes of a pseudonym: 200.
    pub max_pseudonym_bytes: usize,
    /// Documents bound to one group: 100,000 (the operator may override it per group).
    pub documents_per_group: usize,
    /// Bytes the relay stores for one group's documents: 1 GiB (the operator may override
    /// it per group).
    pub bytes_per_group: u64,
    /// Documents one member may register in an hour: 120 (a buggy or hostile app that
    /// creates documents in a loop is stopped; a person creates a few a day).
    pub documents_per_member_per_hour: usize,
    /// Whether a member who organises a group may create more groups (the operator may
    /// keep group creation to `bootstrap`).
    pub organisers_create_groups: bool,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            devices_per_member: 20,
            groups_per_member: 50,
            open_invites_per_group: 200,
            max_invite_secs: 30 * 24 * 3600,
            max_invite_uses: 500,
            max_code_of_conduct_bytes: 64 * 1024,
            max_pseudonym_bytes: 200,
            documents_per_group: 100_000,
            bytes_per_group: 1 << 30,
            documents_per_member_per_hour: 120,
            organisers_create_groups: true,
        }
    }
}

/// The cluster-wide lock every membership change holds on a shared store
/// ([`MembershipStore::lock_shared`]): `cairn-membership`.
pub const SHARED_LOCK: &str = "cairn-membership";

/// How long a device-link code works: 10 minutes (the two devices are in one hand).
pub const LINK_CODE_MS: u64 = 10 * 60 * 1000;

/// Why a membership call failed. Each maps to an HTTP status and an API error code.
#[derive(Debug, Error)]
pub enum MembershipError {
    /// No credential, a wrong one, or a revoked device.
    #[error("not authenticated")]
    Unauthorized,
    /// The caller's role does not allow this.
    #[error("not allowed: {0}")]
    Forbidden(&'static str),
    /// No such group, member, device or invite visible to the caller.
    #[error("not found")]
    NotFound,
    /// The state does not allow it (an id already bound, an outdated version, the last
    /// organiser leaving).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The invite or link code has expired or been used up.
    #[error("the invite has expired or been used up")]
    InviteExpired,
    /// A quota is reached.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(&'static str),
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MembershipError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            MembershipError::Unauthorized => 401,
            MembershipError::Forbidden(_) => 403,
            MembershipError::NotFound => 404,
            MembershipError::Conflict(_) => 409,
            MembershipError::InviteExpired => 410,
            MembershipError::QuotaExceeded(_) => 429,
            MembershipError::BadRequest(_) => 400,
            MembershipError::Store(_) => 503,
        }
    }

    /// The API error code.
    pub fn code(&self) -> &'static str {
        match self {
            MembershipError::Unauthorized => "unauthorized",
            MembershipError::Forbidden(_) => "forbidden",
            MembershipError::NotFound => "not_found",
            MembershipError::Conflict(_) => "conflict",
            MembershipError::InviteExpired => "invite_expired",
            MembershipError::QuotaExceeded(_) => "quota_exceeded",
            MembershipError::BadRequest(_) => "bad_request",
            MembershipError::Store(_) => "unavailable",
        }
    }
}

type Result<T> = std::result::Result<T, MembershipError>;

/// The relay's membership: see the [module docs](super). Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Membership {
    store: Arc<dyn MembershipStore>,
    state: Arc<RwLock<MembershipState>>,
    /// One change at a time: check, commit, apply (and a reload: its read and its
    /// replacement of the state may not straddle a change, or the change would be undone
    /// in memory). On a shared store the cluster-wide lock is taken inside this one.
    writer: Arc<Mutex<()>>,
    /// What reloads found other relays changed, until the relay takes it.
    external: Arc<Mutex<ExternalChanges>>,
    quotas: Quotas,
    /// Each document's stored size, shared with the engine's [`MembershipAccess`].
    sizes: Arc<Mutex<DocumentSizes>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.read();
        f.debug_struct("Membership")
            .field("groups", &s.groups.len())
            .field("devices", &s.devices.len())
            .field("memberships", &s.memberships.len())
            .field("bindings", &s.bindings.len())
            .finish()
    }
}

impl Membership {
    /// Loads the state from `store`.
    pub fn open(store: Arc<dyn MembershipStore>, quotas: Quotas) -> Result<Membership> {
        let state = store.load()?;
        Ok(Membership {
            store,
            state: Arc::new(RwLock::new(state)),
            writer: Arc::new(Mutex::new(())),
            external: Arc::new(Mutex::new(ExternalChanges::default())),
            quotas,
            sizes: Arc::new(Mutex::new(DocumentSizes::default())),
        })
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, MembershipState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the whole state (tests, reports).
    pub fn snapshot(&self) -> MembershipState {
        self.read().clone()
    }

    /// The engine's access policy over this state; `origin_unix_ms` is the host clock's
    /// origin in Unix ms (`runtime::Host::origin_unix_ms`).
    pub fn access(&self, origin_unix_ms: u64) -> MembershipAccess {
        MembershipAccess::new(
            self.state.clone(),
            self.sizes.clone(),
            self.quotas.bytes_per_group,
            origin_unix_ms,
        )
    }

    /// Reads the state from the store and puts it in place of the one held (the engine's
    /// [`MembershipAccess`] shares it, so access checks see it at once); returns whether
    /// anything differs from what this relay held or earlier reloads found and the relay
    /// has not taken yet ([`take_external_changes`](Self::take_external_changes)).
    ///
    /// On a shared store this is how a relay learns what the others changed: it runs on
    /// their hints and on a timer. A change reloads by itself before its check. On a store
    /// only this relay writes, it finds nothing.
    pub fn reload(&self) -> Result<bool> {
        let _one = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.reload_held()?;
        Ok(!self.external().is_empty())
    }

    /// Takes what reloads found other relays changed (members and devices whose sockets
    /// close, rosters to rewrite, documents to forget), leaving nothing pending.
    pub fn take_external_changes(&self) -> ExternalChanges {
        std::mem::take(&mut *self.external())
    }

    fn external(&self) -> std::sync::MutexGuard<'_, ExternalChanges> {
        self.external.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reload itself; the caller holds `writer`. The state is replaced only when it
    /// differs, so a reload that finds nothing new writes nothing.
    fn reload_held(&self) -> Result<()> {
        let fresh = self.store.load()?;
        // Compared under the read lock (access checks go on meanwhile); `writer` keeps
        // anyone else from changing the state before it is replaced.
        let changes = ExternalChanges::between(&self.read(), &fresh);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if changes.is_empty() {
            // Only the audit sequence may have moved (another relay's audit entries).
            state.next_audit_seq = fresh.next_audit_seq;
            return Ok(());
        }
        if fresh.bindings != state.bindings {
            self.sizes().regroup(&fresh.bindings);
        }
        *state = fresh;
        drop(state);
        self.external().merge(changes);
        Ok(())
    }

    /// Runs one change: `f` checks it against the state and returns what to commit (records,
    /// deletions, audit entries) and its answer; the audit entries get their `seq`, the
    /// commit is made durable, then applied. A failed commit changes nothing.
    ///
    /// On a shared store the change holds the cluster-wide lock [`SHARED_LOCK`] from
    /// before it reloads the state until it has applied the commit, so its check sees
    /// every other relay's changes and its audit entries get sequence numbers no other
    /// relay gives. On a store only this relay writes, nothing is read.
    pub(super) fn change<T>(
        &self,
        f: impl FnOnce(&MembershipState) -> Result<(Commit, T)>,
    ) -> Result<T> {
        let _one = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _cluster = self.lock_cluster()?;
        let (mut commit, answer) = {
            let state = self.read();
            let (mut commit, answer) = f(&state)?;
            for (seq, e) in (state.next_audit_seq.max(1)..).zip(commit.audit.iter_mut()) {
                e.seq = seq;
            }
            (std::mem::take(&mut commit), answer)
        };
        if !commit.is_empty() {
            self.store.commit(&commit)?;
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            state.apply_commit(std::mem::take(&mut commit));
        }
        Ok(answer)
    }

    /// On a shared store: takes the cluster-wide lock and reloads the state under it (the
    /// caller holds `writer`). `None` on a store only this relay writes.
    fn lock_cluster(&self) -> Result<Option<crate::store::SharedLock>> {
        if !self.store.is_shared() {
            return Ok(None);
        }
        let lock = self.store.lock_shared(SHARED_LOCK)?;
        self.reload_held()?;
        Ok(lock)
    }

    // ------------------------------------------------------------------ audit

    /// Audit entries with `seq > since_seq`, oldest first, at most `limit`.
    pub fn audit_since(&self, since_seq: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        Ok(self.store.audit_since(since_seq, limit)?)
    }

    /// Records a relay-side event (credential failures, backups, token rotation,
    /// restores), durably. Ids and a count only.
    #[allow(clippy::too_many_arguments, reason = "one entry's fields")]
    pub fn record_audit(
        &self,
        kind: AuditKind,
        actor: Actor,
        group: Option<GroupId>,
        member: Option<MemberId>,
        device: Option<DeviceId>,
        count: Option<u64>,
        now_ms: u64,
    ) -> Result<()> {
        self.change(|_| {
            let mut entry = AuditEntry::new(kind, actor, now_ms);
            entry.group = group;
            entry.member = member;
            entry.device = device;
            entry.count = count;
            Ok((Commit::default().audit(entry), ()))
        })
    }

    /// Retention: deletes (durably) the audit entries made before `before_ms` (the newest
    /// entry stays, so the sequence goes on after a restart). Returns how many.
    pub fn expire_audit(&self, before_ms: u64) -> Result<usize> {
        let _one = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // Another relay's change may be adding entries meanwhile: the lock keeps the
        // newest entry (which carries the sequence) from being taken for an old one.
        let _cluster = self.lock_cluster()?;
        Ok(self.store.expire_audit(before_ms)?)
    }

    /// The device a presented credential belongs to, if it is valid and not revoked.
    pub fn authenticate(&self, token: &str) -> Result<Identity> {
        let credential = Credential::parse(token).map_err(|_| MembershipError::Unauthorized)?;
        let state = self.read();
        let device = state
            .active_device(credential.identity())
            .ok_or(MembershipError::Unauthorized)?;
        if secret_matches(credential.secret(), &device.secret_hash) {
            Ok(credential.identity().clone())
        } else {
            Err(MembershipError::Unauthorized)
        }
    }

    /// The earliest guest expiry after `now_ms`: the host re-checks access then.
    pub fn next_expiry(&self, now_ms: u64) -> Option<u64> {
        self.read().next_expiry(now_ms)
    }

    /// Whether any group exists (bootstrap has run).
    pub fn has_groups(&self) -> bool {
        !self.read().groups.is_empty()
    }

    // ------------------------------------------------------------------ groups

    fn new_group_records(
        &self,
        state: &MembershipState,
        coc_text: &str,
        roster: DocumentId,
        now_ms: u64,
    ) -> Result<GroupRecord> {
        if coc_text.len() > self.quotas.max_code_of_conduct_bytes {
            return Err(MembershipError::BadRequest(
                "the code of conduct is too long",
            ));
        }
        if state.bindings.contains_key(&roster) || self.store.holds_document(&roster)? {
            return Err(MembershipError::Conflict("the roster id is taken"));
        }
        Ok(GroupRecord {
            id: GroupId::from(random_id()),
            coc_version: 1,
            coc_text: coc_text.to_owned(),
            created_ms: now_ms,
            roster,
            settings: None,
            index: None,
            deleted_ms: None,
        })
    }

    fn roster_binding(group: &GroupRecord) -> Record {
        Record::Binding(BindingRecord {
            document: group.roster,
            group: group.id.clone(),
            kind: BoundKind::Roster,
            registrant: None,
            created_ms: group.created_ms,
        })
    }

    /// The operator's bootstrap: a group with no members and its first organiser invite.
    /// `roster` is the id of the membership view the relay will write.
    pub fn bootstrap(
        &self,
        coc_text: &str,
        roster: DocumentId,
        invite_secs: u64,
        now_ms: u64,
    ) -> Result<(GroupId, Invite)> {
        self.change(|state| {
            let group = self.new_group_records(state, coc_text, roster, now_ms)?;
            let (invite_record, invite) = Self::invite_records(
                &group.id,
                Role::Organiser,
                invite_secs,
                1,
                None,
                None,
                None,
                now_ms,
            );
            let id = group.id.clone();
            let commit = Commit::of(vec![
                Self::roster_binding(&group),
                Record::Group(group),
                Record::Invite(invite_record),
            ])
            .audit(AuditEntry::new(AuditKind::GroupCreated, Actor::Operator, now_ms).group(&id))
            .audit(
                AuditEntry::new(AuditKind::OperatorInvite, Actor::Operator, now_ms)
                    .group(&id)
                    .role(Role::Organiser),
            );
            Ok((commit, (id, invite)))
        })
    }

    /// A new organiser invite for an existing group (the operator's recovery when every
    /// organiser has lost their devices).
    pub fn organiser_invite(
        &self,
        group: &GroupId,
        invite_secs: u64,
        now_ms: u64,
    ) -> Result<Invite> {
        self.change(|state| {
            let g = state.groups.get(group).ok_or(MembershipError::NotFound)?;
            if g.deleted_ms.is_some() {
                return Err(MembershipError::Conflict(
                    "the group is deleted: restore it first",
                ));
            }
            let (r, invite) = Self::invite_records(
                group,
                Role::Organiser,
                invite_secs,
                1,
                None,
                None,
                None,
                now_ms,
            );
            let commit = Commit::of(vec![Record::Invite(r)]).audit(
                AuditEntry::new(AuditKind::OperatorInvite, Actor::Operator, now_ms)
                    .group(group)
                    .role(Role::Organiser),
            );
            Ok((commit, invite))
        })
    }

    /// Creates a group; `who` becomes its organiser (and has accepted its code of conduct).
    pub fn create_group(
        &self,
        who: &Identity,
        pseudonym: &str,
        coc_text: &str,
        roster: DocumentId,
        now_ms: u64,
    ) -> Result<GroupInfo> {
        let pseudonym = self.check_pseudonym(pseudonym)?;
        self.change(|state| {
            Self::device(state, who)?;
            let mine: Vec<_> = state.memberships_of(&who.member).collect();
            let organiser = mine
                .iter()
                .any(|m| m.role == Role::Organiser && m.status == MemberStatus::Active);
            if !organiser {
                return Err(MembershipError::Forbidden(
                    "only an organiser of a group may create groups",
                ));
            }
            if !self.quotas.organisers_create_groups {
                return Err(MembershipError::Forbidden(
                    "the operator has turned off group creation",
                ));
            }
            let created = mine
                .iter()
                .filter(|m| {
                    m.role == Role::Organiser
                        && m.joined_ms == state.groups.get(&m.group).map_or(0, |g| g.created_ms)
                })
                .count();
            if created >= self.quotas.groups_per_member {
                return Err(MembershipError::QuotaExceeded("groups per member"));
            }
            let group = self.new_group_records(state, coc_text, roster, now_ms)?;
            let membership = MembershipRecord {
                group: group.id.clone(),
                member: who.member.clone(),
                role: Role::Organiser,
                status: MemberStatus::Active,
                accepted_version: group.coc_version,
                pseudonym,
                joined_ms: now_ms,
                meeting: None,
                expires_ms: None,
            };
            let info = Self::group_info(state, &group, &membership);
            let entry = AuditEntry::new(AuditKind::GroupCreated, Actor::member(who), now_ms)
                .group(&group.id)
                .member(&who.member)
                .role(Role::Organiser);
            Ok((
                Commit::of(vec![
                    Self::roster_binding(&group),
                    Record::Group(group),
                    Record::Membership(membership),
                ])
                .audit(entry),
                info,
            ))
        })
    }

    fn group_info(state: &MembershipState, g: &GroupRecord, m: &MembershipRecord) -> GroupInfo {
        let reports = state
            .bindings
            .values()
            .filter(|b| b.group == g.id && b.kind == BoundKind::Report)
            .filter(|b| m.role.is_facilitator() || b.registrant.as_ref() == Some(&m.member))
            .map(|b| b.document)
            .collect();
        GroupInfo {
            group_id: g.id.clone(),
            role: m.role,
            status: m.status,
            accepted_version: m.accepted_version,
            code_of_conduct_version: g.coc_version,
            documents: GroupDocuments {
                roster: Some(g.roster),
                settings: g.settings,
                index: g.index,
                reports,
            },
            deleted_ms: g.deleted_ms,
        }
    }

    /// The caller's groups (current memberships, accepted or not). A deleted group is
    /// listed to its organisers only (with `deleted_ms`), so they can restore it.
    pub fn groups_of(&self, who: &Identity, now_ms: u64) -> Result<Vec<GroupInfo>> {
        let state = self.read();
        Self::device(&state, who)?;
        Ok(state
            .memberships_of(&who.member)
            .filter(|m| m.status != MemberStatus::Removed && m.status != MemberStatus::Left)
            .filter(|m| m.expires_ms.is_none_or(|t| now_ms < t))
            .filter_map(|m| {
                let g = state.groups.get(&m.group)?;
                let shown = g.deleted_ms.is_none()
                    || (m.role == Role::Organiser && m.status == MemberStatus::Active);
                shown.then(|| Self::group_info(&state, g, m))
            })
            .collect())
    }

    /// The membership view of a group for the roster document: its roster id, members and
    /// code of conduct.
    pub fn roster(&self, group: &GroupId) -> Option<(DocumentId, Vec<MemberInfo>, CodeOfConduct)> {
        let state = self.read();
        let g = state.groups.get(group)?;
        let members = state.members_of(group).map(Self::member_info).collect();
        Some((
            g.roster,
            members,
            CodeOfConduct {
                version: g.coc_version,
                text: g.coc_text.clone(),
            },
        ))
    }

    /// Every group id (start-up reconciliation of the roster documents).
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.read().groups.keys().cloned().collect()
    }

    fn member_info(m: &MembershipRecord) -> MemberInfo {
        MemberInfo {
            member_id: m.member.clone(),
            role: m.role,
            status: m.status,
            accepted_version: m.accepted_version,
            pseudonym: m.pseudonym.clone(),
            joined_ms: m.joined_ms,
            expires_ms: m.expires_ms,
            meeting: m.meeting,
        }
    }

    // ------------------------------------------------------------------ helpers

    fn device<'a>(state: &'a MembershipState, who: &Identity) -> Result<&'a DeviceRecord> {
        state
            .active_device(who)
            .ok_or(MembershipError::Unauthorized)
    }

    /// The caller's current membership of `group` (NotFound when there is none, so a
    /// non-member learns nothing about the group).
    fn current<'a>(
        state: &'a MembershipState,
        who: &Identity,
        group: &GroupId,
        now_ms: u64,
    ) -> Result<(&'a GroupRecord, &'a MembershipRecord)> {
        Self::device(state, who)?;
        let g = state
            .groups
            .get(group)
            .filter(|g| g.deleted_ms.is_none())
            .ok_or(MembershipError::NotFound)?;
        let m = state
            .membership(group, &who.member)
            .filter(|m| MembershipState::is_current(m, now_ms))
            .ok_or(MembershipError::NotFound)?;
        Ok((g, m))
    }

    /// Like [`Self::current`], and the caller has accepted the current code of conduct.
    fn seeing<'a>(
        state: &'a MembershipState,
        who: &Identity,
        group: &GroupId,
        now_ms: u64,
    ) -> Result<(&'a GroupRecord, &'a MembershipRecord)> {
        let (g, m) = Self::current(state, who, group, now_ms)?;
        if m.accepted_version != g.coc_version {
            return Err(MembershipError::Forbidden(
                "accept the current code of conduct first",
            ));
        }
        Ok((g, m))
    }

    fn check_pseudonym(&self, p: &str) -> Result<String> {
        let p = p.trim();
        if p.is_empty() {
            return Err(MembershipError::BadRequest("a pseudonym cannot be empty"));
        }
        if p.len() > self.quotas.max_pseudonym_bytes {
            return Err(MembershipError::BadRequest("the pseudonym is too long"));
        }
        Ok(p.to_owned())
    }

    #[allow(clippy::too_many_arguments, reason = "one invite's fields")]
    fn invite_records(
        group: &GroupId,
        role: Role,
        expires_in_secs: u64,
        max_uses: u32,
        meeting: Option<DocumentId>,
        access_ms: Option<u64>,
        created_by: Option<MemberId>,
        now_ms: u64,
    ) -> (InviteRecord, Invite) {
        let code = random_code();
        let expires_ms = now_ms.saturating_add(expires_in_secs.saturating_mul(1000));
        let record = InviteRecord {
            code_hash: hash_secret(&code),
            group: group.clone(),
            role,
            expires_ms,
            max_uses,
            uses: 0,
            meeting,
            access_ms,
            created_by,
        };
        let invite = Invite {
            link: format!("cairn://invite/{code}"),
            code,
            expires_ms,
            max_uses,
        };
        (record, invite)
    }

    fn new_device(
        state: &MembershipState,
        member: MemberId,
        now_ms: u64,
    ) -> (DeviceRecord, Credential) {
        let mut device = DeviceId::from(random_id());
        while state
            .devices
            .contains_key(&(member.clone(), device.clone()))
        {
            device = DeviceId::from(random_id());
        }
        let (credential, secret_hash) = Credential::issue(Identity {
            member: member.clone(),
            device: device.clone(),
        });
        (
            DeviceRecord {
                member,
                device,
                secret_hash,
                created_ms: now_ms,
                revoked_ms: None,
            },
            credential,
        )
    }

    fn usable_invite<'a>(
        state: &'a MembershipState,
        code: &str,
        now_ms: u64,
    ) -> Result<&'a InviteRecord> {
        let hash = hash_secret(&normalise_code(code));
        let invite = state.invites.get(&hash).ok_or(MembershipError::NotFound)?;
        // Invites to a deleted group are refused as if it were gone.
        if state
            .groups
            .get(&invite.group)
            .is_none_or(|g| g.deleted_ms.is_some())
        {
            return Err(MembershipError::NotFound);
        }
        if now_ms >= invite.expires_ms || invite.uses >= invite.max_uses {
            return Err(MembershipError::InviteExpired);
        }
        Ok(invite)
    }

    // ------------------------------------------------------------------ invites

    /// What an invite offers, with the code of conduct to read before redeeming.
    pub fn invite_preview(&self, code: &str, now_ms: u64) -> Result<InvitePreview> {
        let state = self.read();
        let invite = Self::usable_invite(&state, code, now_ms)?;
        let g = state
            .groups
            .get(&invite.group)
            .ok_or(MembershipError::NotFound)?;
        Ok(InvitePreview {
            group_id: g.id.clone(),
            role: invite.role,
            expires_ms: invite.expires_ms,
            code_of_conduct: CodeOfConduct {
                version: g.coc_version,
                text: g.coc_text.clone(),
            },
        })
    }

    /// Creates an invite (organisers).
    pub fn create_invite(
        &self,
        who: &Identity,
        group: &GroupId,
        req: &CreateInvite,
        now_ms: u64,
    ) -> Result<Invite> {
        self.change(|state| {
            let (_, m) = Self::seeing(state, who, group, now_ms)?;
            if m.role != Role::Organiser {
                return Err(MembershipError::Forbidden("only organisers invite"));
            }
            if req.expires_in_secs == 0 || req.expires_in_secs > self.quotas.max_invite_secs {
                return Err(MembershipError::BadRequest("invite lifetime out of range"));
            }
            if req.max_uses == 0 || req.max_uses > self.quotas.max_invite_uses {
                return Err(MembershipError::BadRequest("invite uses out of range"));
            }
            if req.meeting.is_some() && req.role != Role::Observer {
                return Err(MembershipError::BadRequest(
                    "a guest invite for one meeting gives the observer role",
                ));
            }
            if let Some(meeting) = &req.meeting {
                let bound = state.bindings.get(meeting);
                if !bound.is_some_and(|b| &b.group == group && b.kind == BoundKind::Meeting) {
                    return Err(MembershipError::BadRequest("not a meeting of this group"));
                }
            }
            let open = state
                .invites
                .values()
                .filter(|i| &i.group == group && i.expires_ms > now_ms && i.uses < i.max_uses)
                .count();
            if open >= self.quotas.open_invites_per_group {
                return Err(MembershipError::QuotaExceeded("open invites per group"));
            }
            let (r, invite) = Self::invite_records(
                group,
                req.role,
                req.expires_in_secs,
                req.max_uses,
                req.meeting,
                req.access_expires_in_secs.map(|s| s.saturating_mul(1000)),
                Some(who.member.clone()),
                now_ms,
            );
            let entry = AuditEntry::new(AuditKind::InviteCreated, Actor::member(who), now_ms)
                .group(group)
                .role(req.role)
                .count(u64::from(req.max_uses));
            Ok((Commit::of(vec![Record::Invite(r)]).audit(entry), invite))
        })
    }

    /// Redeems an invite. Without `who`, a new member and device are made and the device's
    /// credential is returned once; with `who`, that device's member joins.
    pub fn redeem(
        &self,
        who: Option<&Identity>,
        code: &str,
        pseudonym: &str,
        now_ms: u64,
    ) -> Result<Redeemed> {
        let pseudonym = self.check_pseudonym(pseudonym)?;
        self.change(|state| {
            let invite = Self::usable_invite(state, code, now_ms)?;
            let group = state
                .groups
                .get(&invite.group)
                .ok_or(MembershipError::NotFound)?;
            let mut records = Vec::new();
            let (identity, token) = match who {
                Some(who) => {
                    Self::device(state, who)?;
                    if let Some(m) = state.membership(&invite.group, &who.member) {
                        if m.status == MemberStatus::Active {
                            return Err(MembershipError::Conflict("already a member"));
                        }
                        if m.status == MemberStatus::Removed || m.status == MemberStatus::Suspended
                        {
                            return Err(MembershipError::Forbidden(
                                "removed or suspended from this group",
                            ));
                        }
                    }
                    (who.clone(), None)
                }
                None => {
                    let member = MemberId::from(random_id());
                    let (device, credential) = Self::new_device(state, member, now_ms);
                    records.push(Record::Device(device));
                    (
                        credential.identity().clone(),
                        Some(credential.as_str().to_owned()),
                    )
                }
            };
            let mut used = invite.clone();
            used.uses += 1;
            let membership = MembershipRecord {
                group: invite.group.clone(),
                member: identity.member.clone(),
                role: invite.role,
                status: MemberStatus::Active,
                accepted_version: 0,
                pseudonym,
                joined_ms: now_ms,
                meeting: invite.meeting,
                expires_ms: invite.access_ms.map(|ms| now_ms.saturating_add(ms)),
            };
            let info = Self::group_info(state, group, &membership);
            let entry =
                AuditEntry::new(AuditKind::InviteRedeemed, Actor::member(&identity), now_ms)
                    .group(&membership.group)
                    .member(&identity.member)
                    .device(&identity.device)
                    .role(membership.role);
            records.push(Record::Invite(used));
            records.push(Record::Membership(membership));
            Ok((
                Commit::of(records).audit(entry),
                Redeemed {
                    member_id: identity.member.clone(),
                    device_id: identity.device.clone(),
                    peer_id: identity.peer_id(),
                    token,
                    group: Some(info),
                },
            ))
        })
    }

    // ------------------------------------------------------------------ code of conduct

    /// The group's code of conduct (any current member, before accepting too).
    pub fn code_of_conduct(
        &self,
        who: &Identity,
        group: &GroupId,
        now_ms: u64,
    ) -> Result<CodeOfConduct> {
        let state = self.read();
        let (g, _) = Self::current(&state, who, group, now_ms)?;
        Ok(CodeOfConduct {
            version: g.coc_version,
            text: g.coc_text.clone(),
        })
    }

    /// Replaces the code of conduct (organisers): a new version that every member,
    /// the organiser who wrote it excepted, accepts before reading on.
    pub fn set_code_of_conduct(
        &self,
        who: &Identity,
        group: &GroupId,
        text: &str,
        now_ms: u64,
    ) -> Result<CodeOfConduct> {
        if text.len() > self.quotas.max_code_of_conduct_bytes {
            return Err(MembershipError::BadRequest(
                "the code of conduct is too long",
            ));
        }
        self.change(|state| {
            let (g, m) = Self::seeing(state, who, group, now_ms)?;
            if m.role != Role::Organiser {
                return Err(MembershipError::Forbidden(
                    "only organisers change the code of conduct",
                ));
            }
            let mut g = g.clone();
            g.coc_version += 1;
            g.coc_text = text.to_owned();
            let mut m = m.clone();
            m.accepted_version = g.coc_version;
            let coc = CodeOfConduct {
                version: g.coc_version,
                text: g.coc_text.clone(),
            };
            let entry =
                AuditEntry::new(AuditKind::CodeOfConductChanged, Actor::member(who), now_ms)
                    .group(group)
                    .count(g.coc_version);
            Ok((
                Commit::of(vec![Record::Group(g), Record::Membership(m)]).audit(entry),
                coc,
            ))
        })
    }

    /// Accepts the current code of conduct.
    pub fn accept_code_of_conduct(
        &self,
        who: &Identity,
        group: &GroupId,
        version: u64,
        now_ms: u64,
    ) -> Result<()> {
        self.change(|state| {
            let (g, m) = Self::current(state, who, group, now_ms)?;
            if version != g.coc_version {
                return Err(MembershipError::Conflict("that is not the current version"));
            }
            if m.accepted_version == version {
                return Ok((Commit::default(), ()));
            }
            let mut m = m.clone();
            m.accepted_version = version;
            Ok((Commit::of(vec![Record::Membership(m)]), ()))
        })
    }

    // ------------------------------------------------------------------ members

    /// The group's members (for members who accepted the code of conduct).
    pub fn members(&self, who: &Identity, group: &GroupId, now_ms: u64) -> Result<Vec<MemberInfo>> {
        let state = self.read();
        let (_, m) = Self::seeing(&state, who, group, now_ms)?;
        if m.meeting.is_some() {
            return Err(MembershipError::Forbidden("a guest sees one meeting only"));
        }
        Ok(state.members_of(group).map(Self::member_info).collect())
    }

    fn organisers(state: &MembershipState, group: &GroupId) -> usize {
        state
            .members_of(group)
            .filter(|m| m.role == Role::Organiser && m.status == MemberStatus::Active)
            .count()
    }

    fn target<'a>(
        state: &'a MembershipState,
        group: &GroupId,
        member: &MemberId,
    ) -> Result<&'a MembershipRecord> {
        state
            .membership(group, member)
            .filter(|m| m.status == MemberStatus::Active || m.status == MemberStatus::Suspended)
            .ok_or(MembershipError::NotFound)
    }

    /// Changes a member's role (organisers). The last organiser cannot step down.
    pub fn set_role(
        &self,
        who: &Identity,
        group: &GroupId,
        member: &MemberId,
        role: Role,
        now_ms: u64,
    ) -> Result<MemberInfo> {
        self.change(|state| {
            let (_, me) = Self::seeing(state, who, group, now_ms)?;
            if me.role != Role::Organiser {
                return Err(MembershipError::Forbidden("only organisers change roles"));
            }
            let target = Self::target(state, group, member)?;
            if target.role == Role::Organiser
                && role != Role::Organiser
                && Self::organisers(state, group) <= 1
            {
                return Err(MembershipError::Conflict(
                    "a group keeps at least one organiser",
                ));
            }
            if target.meeting.is_some() && role != Role::Observer {
                return Err(MembershipError::BadRequest(
                    "a one-meeting guest stays an observer",
                ));
            }
            let mut t = target.clone();
            t.role = role;
            let info = Self::member_info(&t);
            let entry = AuditEntry::new(AuditKind::RoleChanged, Actor::member(who), now_ms)
                .group(group)
                .member(member)
                .role(role);
            Ok((Commit::of(vec![Record::Membership(t)]).audit(entry), info))
        })
    }

    /// The member-facing caller of an action, or `None` for the operator; the relay itself
    /// takes no membership action.
    fn caller(actor: &Actor) -> Result<Option<Identity>> {
        match actor {
            Actor::Operator => Ok(None),
            Actor::Member { .. } => Ok(actor.identity()),
            Actor::Relay => Err(MembershipError::Forbidden(
                "the relay takes no membership action of its own",
            )),
        }
    }

    fn moderate(
        &self,
        actor: &Actor,
        group: &GroupId,
        member: &MemberId,
        status: MemberStatus,
        now_ms: u64,
    ) -> Result<MemberInfo> {
        let caller = Self::caller(actor)?;
        self.change(|state| {
            let target = match &caller {
                Some(who) => {
                    let leaving = &who.member == member && status == MemberStatus::Left;
                    let target = Self::target(state, group, member)?;
                    if leaving {
                        Self::current(state, who, group, now_ms).or_else(|_| {
                            Self::device(state, who)?;
                            Ok::<_, MembershipError>((
                                state.groups.get(group).ok_or(MembershipError::NotFound)?,
                                target,
                            ))
                        })?;
                    } else {
                        let (_, me) = Self::seeing(state, who, group, now_ms)?;
                        if !me.role.is_facilitator() {
                            return Err(MembershipError::Forbidden(
                                "only facilitators and organisers moderate",
                            ));
                        }
                        if target.role == Role::Organiser && me.role != Role::Organiser {
                            return Err(MembershipError::Forbidden(
                                "a facilitator cannot moderate an organiser",
                            ));
                        }
                        if &who.member == member {
                            return Err(MembershipError::BadRequest("use leave to leave a group"));
                        }
                    }
                    target
                }
                None => {
                    // The operator may do what an organiser may, in any group.
                    if !state.groups.contains_key(group) {
                        return Err(MembershipError::NotFound);
                    }
                    if status == MemberStatus::Left {
                        return Err(MembershipError::BadRequest("only a member leaves"));
                    }
                    Self::target(state, group, member)?
                }
            };
            let demotes_last = target.role == Role::Organiser
                && target.status == MemberStatus::Active
                && status != MemberStatus::Active
                && Self::organisers(state, group) <= 1;
            if demotes_last {
                return Err(MembershipError::Conflict(
                    "a group keeps at least one organiser",
                ));
            }
            let kind = match status {
                MemberStatus::Active => AuditKind::Reinstated,
                MemberStatus::Suspended => AuditKind::Suspended,
                MemberStatus::Left => AuditKind::Left,
                MemberStatus::Removed => AuditKind::Removed,
            };
            let mut t = target.clone();
            t.status = status;
            let info = Self::member_info(&t);
            let entry = AuditEntry::new(kind, actor.clone(), now_ms)
                .group(group)
                .member(member);
            Ok((Commit::of(vec![Record::Membership(t)]).audit(entry), info))
        })
    }

    /// Suspends a member (facilitators, organisers): no reading or writing until reinstated.
    pub fn suspend(
        &self,
        who: &Identity,
        group: &GroupId,
        member: &MemberId,
        now_ms: u64,
    ) -> Result<MemberInfo> {
        self.suspend_as(&Actor::member(who), group, member, now_ms)
    }

    /// Suspends a member as `actor`: a facilitator or organiser of the group, or the
    /// operator (in any group). A group keeps at least one active organiser.
    pub fn suspend_as(
        &self,
        actor: &Actor,
        group: &GroupId,
        member: &MemberId,
        now_ms: u64,
    ) -> Result<MemberInfo> {
        self.moderate(actor, group, member, MemberStatus::Suspended, now_ms)
    }

    /// Reinstates a suspended member.
    pub fn reinstate(
        &self,
        who: &Identity,
        group: &GroupId,
        member: &MemberId,
        now_ms: u64,
    ) -> Result<MemberInfo> {
        self.reinstate_as(&Actor::member(who), group, member, now_ms)
    }

    /// Reinstates a suspended member as `actor` (as [`Membership::suspend_as`]).
    pub fn reinstate_as(
        &self,
        actor: &Actor,
        group: &GroupId,
        member: &MemberId,
        now_ms: u64,
    ) -> Result<MemberInfo> {
        self.moderate(actor, group, member, MemberStatus::Active, now_ms)
    }

    /// Removes a member (facilitators, organisers), or leaves when `member` is the caller.
    pub fn remove(
        &self,
        who: &Identity,
        group: &GroupId,
        member: &MemberId,
        now_ms: u64,
    ) -> Result<()> {
        self.remove_as(&Actor::member(who), group, member, now_ms)
    }

    /// Removes a member as `actor`: a facilitator or organiser of the group, the operator
    /// (any group), or the member themself (then they leave). A group keeps at least one
    /// active organiser.
    pub fn remove_as(
        &self,
        actor: &Actor,
        group: &GroupId,
        member: &MemberId,
        now_ms: u64,
    ) -> Result<()> {
        let status = match actor {
            Actor::Member { member: me, .. } if me == member => MemberStatus::Left,
            _ => MemberStatus::Removed,
        };
        self.moderate(actor, group, member, status, now_ms)
            .map(|_| ())
    }

    /// Changes the caller's pseudonym in a group.
    pub fn set_pseudonym(
        &self,
        who: &Identity,
        group: &GroupId,
        pseudonym: &str,
        now_ms: u64,
    ) -> Result<()> {
        let pseudonym = self.check_pseudonym(pseudonym)?;
        self.change(|state| {
            let (_, m) = Self::current(state, who, group, now_ms)?;
            let mut m = m.clone();
            m.pseudonym = pseudonym;
            Ok((Commit::of(vec![Record::Membership(m)]), ()))
        })
    }

    // ------------------------------------------------------------------ documents

    /// Binds a new document to a group (before its first sync). The caller must be allowed
    /// to write that kind; settings (organisers) and the index are bound once per group;
    /// the roster is the relay's own. An id already bound, or already held by the store,
    /// is refused.
    pub fn register_document(
        &self,
        who: &Identity,
        group: &GroupId,
        doc: DocumentId,
        kind: BoundKind,
        now_ms: u64,
    ) -> Result<()> {
        self.change(|state| {
            let (g, m) = Self::seeing(state, who, group, now_ms)?;
            if let Some(b) = state.bindings.get(&doc) {
                // The same binding again is accepted: a retry after a lost answer, or a
                // deterministic id (a meeting occurrence) that two organisers opened offline
                // at once. A report is its reporter's alone.
                let same = &b.group == group
                    && b.kind == kind
                    && (kind != BoundKind::Report || b.registrant.as_ref() == Some(&who.member));
                if same && state.allows(who, &doc, crate::engine::Operation::Write, now_ms) {
                    return Ok((Commit::default(), ()));
                }
                return Err(MembershipError::Conflict(
                    "the document is bound to a group already",
                ));
            }
            if m.meeting.is_some() {
                return Err(MembershipError::Forbidden("a guest cannot add documents"));
            }
            let allowed = match kind {
                BoundKind::Roster => false,
                BoundKind::Settings => m.role == Role::Organiser,
                BoundKind::Report => true,
                _ => m.role.can_write(),
            };
            if !allowed {
                return Err(MembershipError::Forbidden(
                    "the role may not write this kind",
                ));
            }
            let quota = self.effective_quota(state, group);
            if quota.documents_used >= quota.documents {
                return Err(MembershipError::QuotaExceeded("documents in this group"));
            }
            let hour_ago = now_ms.saturating_sub(3_600_000);
            let lately = state
                .bindings
                .values()
                .filter(|b| b.registrant.as_ref() == Some(&who.member) && b.created_ms > hour_ago)
                .count();
            if lately >= self.quotas.documents_per_member_per_hour {
                return Err(MembershipError::QuotaExceeded(
                    "documents per member per hour",
                ));
            }
            if quota.bytes_used >= quota.bytes {
                return Err(MembershipError::QuotaExceeded("bytes in this group"));
            }
            if self.store.holds_document(&doc)? {
                return Err(MembershipError::Conflict(
                    "the relay already holds that document",
                ));
            }
            let mut records = Vec::new();
            match kind {
                BoundKind::Settings | BoundKind::Index => {
                    let slot = if kind == BoundKind::Settings {
                        &g.settings
                    } else {
                        &g.index
                    };
                    if slot.is_some() {
                        return Err(MembershipError::Conflict("the group has one already"));
                    }
                    let mut g = g.clone();
                    if kind == BoundKind::Settings {
                        g.settings = Some(doc);
                    } else {
                        g.index = Some(doc);
                    }
                    records.push(Record::Group(g));
                }
                _ => {}
            }
            records.push(Record::Binding(BindingRecord {
                document: doc,
                group: group.clone(),
                kind,
                registrant: Some(who.member.clone()),
                created_ms: now_ms,
            }));
            Ok((Commit::of(records), ()))
        })
    }

    // ------------------------------------------------------------------ devices

    /// A one-time code to link another device to the caller's member.
    pub fn create_link_code(&self, who: &Identity, now_ms: u64) -> Result<LinkCode> {
        self.change(|state| {
            Self::device(state, who)?;
            let code = random_code();
            let expires_ms = now_ms.saturating_add(LINK_CODE_MS);
            let record = LinkCodeRecord {
                code_hash: hash_secret(&code),
                member: who.member.clone(),
                expires_ms,
                used: false,
            };
            Ok((
                Commit::of(vec![Record::LinkCode(record)]),
                LinkCode { code, expires_ms },
            ))
        })
    }

    /// Links a new device with a link code; returns its credential once.
    pub fn link_device(&self, code: &str, now_ms: u64) -> Result<Redeemed> {
        self.change(|state| {
            let hash = hash_secret(&normalise_code(code));
            let link = state
                .link_codes
                .get(&hash)
                .ok_or(MembershipError::NotFound)?;
            if link.used || now_ms >= link.expires_ms {
                return Err(MembershipError::InviteExpired);
            }
            let devices = state
                .devices
                .keys()
                .filter(|(m, _)| m == &link.member)
                .count();
            if devices >= self.quotas.devices_per_member {
                return Err(MembershipError::QuotaExceeded("devices per member"));
            }
            let (device, credential) = Self::new_device(state, link.member.clone(), now_ms);
            let mut used = link.clone();
            used.used = true;
            let identity = credential.identity().clone();
            let entry = AuditEntry::new(AuditKind::DeviceLinked, Actor::member(&identity), now_ms)
                .member(&identity.member)
                .device(&identity.device);
            Ok((
                Commit::of(vec![Record::LinkCode(used), Record::Device(device)]).audit(entry),
                Redeemed {
                    member_id: identity.member.clone(),
                    device_id: identity.device.clone(),
                    peer_id: identity.peer_id(),
                    token: Some(credential.as_str().to_owned()),
                    group: None,
                },
            ))
        })
    }

    /// The caller's member's devices.
    pub fn devices(&self, who: &Identity) -> Result<Vec<DeviceInfo>> {
        let state = self.read();
        Self::device(&state, who)?;
        Ok(state
            .devices
            .values()
            .filter(|d| d.member == who.member)
            .map(|d| DeviceInfo {
                device_id: d.device.clone(),
                created_ms: d.created_ms,
                revoked: d.revoked_ms.is_some(),
            })
            .collect())
    }

    /// A new credential for the caller's device; the old one is refused from now on.
    pub fn rotate(&self, who: &Identity, now_ms: u64) -> Result<String> {
        self.change(|state| {
            let mut device = Self::device(state, who)?.clone();
            let (credential, hash) = Credential::issue(who.clone());
            device.secret_hash = hash;
            let entry = AuditEntry::new(AuditKind::CredentialRotated, Actor::member(who), now_ms)
                .member(&who.member)
                .device(&who.device);
            Ok((
                Commit::of(vec![Record::Device(device)]).audit(entry),
                credential.as_str().to_owned(),
            ))
        })
    }

    /// Revokes one of the caller's member's devices (a lost phone), for good.
    pub fn revoke_device(&self, who: &Identity, device: &DeviceId, now_ms: u64) -> Result<()> {
        self.revoke_device_as(&Actor::member(who), &who.member, device, now_ms)
    }

    /// Revokes a device of `member` as `actor`: a device of the same member, or the
    /// operator. Revoking a revoked device changes nothing.
    pub fn revoke_device_as(
        &self,
        actor: &Actor,
        member: &MemberId,
        device: &DeviceId,
        now_ms: u64,
    ) -> Result<()> {
        let caller = Self::caller(actor)?;
        self.change(|state| {
            if let Some(who) = &caller {
                Self::device(state, who)?;
                if &who.member != member {
                    return Err(MembershipError::NotFound);
                }
            }
            let target = state
                .devices
                .get(&(member.clone(), device.clone()))
                .ok_or(MembershipError::NotFound)?;
            if target.revoked_ms.is_some() {
                return Ok((Commit::default(), ()));
            }
            let mut t = target.clone();
            t.revoked_ms = Some(now_ms);
            let entry = AuditEntry::new(AuditKind::DeviceRevoked, actor.clone(), now_ms)
                .member(member)
                .device(device);
            Ok((Commit::of(vec![Record::Device(t)]).audit(entry), ()))
        })
    }

    // ------------------------------------------------------------------ group deletion

    /// Checks that `actor` may delete or restore `group` (an active organiser of it, or
    /// the operator) and returns the group.
    fn group_admin<'a>(
        state: &'a MembershipState,
        actor: &Actor,
        group: &GroupId,
    ) -> Result<&'a GroupRecord> {
        let caller = Self::caller(actor)?;
        let g = state.groups.get(group).ok_or(MembershipError::NotFound)?;
        if let Some(who) = &caller {
            Self::device(state, who)?;
            let m = state
                .membership(group, &who.member)
                .filter(|m| m.status == MemberStatus::Active)
                .ok_or(MembershipError::NotFound)?;
            if m.role != Role::Organiser {
                return Err(MembershipError::Forbidden(
                    "only organisers delete or restore a group",
                ));
            }
        }
        Ok(g)
    }

    /// Deletes a group (its organisers or the operator): from now on nobody sees it and
    /// its invites are refused; its organisers or the operator may restore it until
    /// [`Membership::purge_group`] destroys it after the grace period. Deleting a deleted
    /// group changes nothing.
    pub fn delete_group(&self, actor: &Actor, group: &GroupId, now_ms: u64) -> Result<()> {
        self.change(|state| {
            let g = Self::group_admin(state, actor, group)?;
            if g.deleted_ms.is_some() {
                return Ok((Commit::default(), ()));
            }
            let mut g = g.clone();
            g.deleted_ms = Some(now_ms);
            let entry =
                AuditEntry::new(AuditKind::GroupDeleted, actor.clone(), now_ms).group(group);
            Ok((Commit::of(vec![Record::Group(g)]).audit(entry), ()))
        })
    }

    /// Restores a deleted group (its organisers or the operator); `NotFound` once purged.
    pub fn restore_group(&self, actor: &Actor, group: &GroupId, now_ms: u64) -> Result<()> {
        self.change(|state| {
            let g = Self::group_admin(state, actor, group)?;
            if g.deleted_ms.is_none() {
                return Ok((Commit::default(), ()));
            }
            let mut g = g.clone();
            g.deleted_ms = None;
            let entry =
                AuditEntry::new(AuditKind::GroupRestored, actor.clone(), now_ms).group(group);
            Ok((Commit::of(vec![Record::Group(g)]).audit(entry), ()))
        })
    }

    /// The deleted groups whose grace period (`grace_ms` after deletion) is over at
    /// `now_ms`: the relay purges them.
    pub fn purge_due(&self, now_ms: u64, grace_ms: u64) -> Vec<GroupId> {
        self.read()
            .groups
            .values()
            .filter(|g| {
                g.deleted_ms
                    .is_some_and(|d| d.saturating_add(grace_ms) <= now_ms)
            })
            .map(|g| g.id.clone())
            .collect()
    }

    /// Destroys a deleted group's membership: its record, memberships, invites, document
    /// bindings and quota, in one durable commit with a `GroupPurged` audit entry (ids
    /// only). Returns the documents that were bound to it: the relay forgets them and
    /// rewrites its store. Refused for a group that is not deleted.
    pub fn purge_group(&self, group: &GroupId, now_ms: u64) -> Result<Purged> {
        let purged = self.change(|state| {
            let g = state.groups.get(group).ok_or(MembershipError::NotFound)?;
            if g.deleted_ms.is_none() {
                return Err(MembershipError::Conflict("only a deleted group is purged"));
            }
            let mut deletions = vec![RecordKey::Group(group.clone())];
            deletions.extend(
                state
                    .members_of(group)
                    .map(|m| RecordKey::Membership(group.clone(), m.member.clone())),
            );
            deletions.extend(
                state
                    .invites
                    .values()
                    .filter(|i| &i.group == group)
                    .map(|i| RecordKey::Invite(i.code_hash.clone())),
            );
            let documents: Vec<DocumentId> = state
                .bindings
                .values()
                .filter(|b| &b.group == group)
                .map(|b| b.document)
                .collect();
            deletions.extend(documents.iter().map(|d| RecordKey::Binding(*d)));
            if state.quotas.contains_key(group) {
                deletions.push(RecordKey::Quota(group.clone()));
            }
            let entry = AuditEntry::new(AuditKind::GroupPurged, Actor::Relay, now_ms)
                .group(group)
                .count(documents.len() as u64);
            let commit = Commit {
                deletions,
                ..Commit::default()
            }
            .audit(entry);
            Ok((commit, Purged { documents }))
        })?;
        let mut sizes = self.sizes();
        for d in &purged.documents {
            sizes.forget(d);
        }
        Ok(purged)
    }

    // ------------------------------------------------------------------ a member's data

    /// A roster id that is bound to nothing and held by nothing.
    fn fresh_roster(&self, state: &MembershipState, taken: &[DocumentId]) -> Result<DocumentId> {
        loop {
            let mut bytes = [0u8; 16];
            super::os_random(&mut bytes);
            let id = DocumentId::from_bytes(bytes);
            if !state.bindings.contains_key(&id)
                && !taken.contains(&id)
                && !self.store.holds_document(&id)?
            {
                return Ok(id);
            }
        }
    }

    /// Erases a member (the member themself, from any of their devices, or the operator):
    /// their devices, memberships and link codes are deleted; every group they were in
    /// gets a new roster document id, and the old roster's binding is deleted (nobody may
    /// read it) and returned for the relay to forget. Their audit entries (ids only) and
    /// the documents they registered stay. Erasing a group's last organiser is allowed:
    /// the operator can issue a new organiser invite. `NotFound` for an unknown member.
    ///
    /// What cannot be recalled: copies of rosters and documents already on other
    /// members' devices.
    pub fn erase_member(&self, actor: &Actor, member: &MemberId, now_ms: u64) -> Result<Erased> {
        let caller = Self::caller(actor)?;
        let erased = self.change(|state| {
            if let Some(who) = &caller {
                Self::device(state, who)?;
                if &who.member != member {
                    return Err(MembershipError::Forbidden(
                        "a member erases their own account only",
                    ));
                }
            }
            let mut deletions: Vec<RecordKey> = state
                .devices
                .keys()
                .filter(|(m, _)| m == member)
                .map(|(m, d)| RecordKey::Device(m.clone(), d.clone()))
                .collect();
            let groups: Vec<GroupId> = state
                .memberships_of(member)
                .map(|m| m.group.clone())
                .collect();
            if deletions.is_empty() && groups.is_empty() {
                return Err(MembershipError::NotFound);
            }
            deletions.extend(
                groups
                    .iter()
                    .map(|g| RecordKey::Membership(g.clone(), member.clone())),
            );
            deletions.extend(
                state
                    .link_codes
                    .values()
                    .filter(|l| &l.member == member)
                    .map(|l| RecordKey::LinkCode(l.code_hash.clone())),
            );
            let mut records = Vec::new();
            let mut old_rosters = Vec::new();
            let mut new_rosters = Vec::new();
            for g in &groups {
                let Some(group) = state.groups.get(g) else {
                    continue;
                };
                let roster = self.fresh_roster(state, &new_rosters)?;
                new_rosters.push(roster);
                old_rosters.push(group.roster);
                deletions.push(RecordKey::Binding(group.roster));
                let mut group = group.clone();
                group.roster = roster;
                records.push(Record::Binding(BindingRecord {
                    document: roster,
                    group: group.id.clone(),
                    kind: BoundKind::Roster,
                    registrant: None,
                    created_ms: now_ms,
                }));
                records.push(Record::Group(group));
            }
            let entry = AuditEntry::new(AuditKind::MemberErased, actor.clone(), now_ms)
                .member(member)
                .count(groups.len() as u64);
            let commit = Commit {
                records,
                deletions,
                audit: vec![entry],
            };
            Ok((
                commit,
                Erased {
                    groups,
                    old_rosters,
                },
            ))
        })?;
        let mut sizes = self.sizes();
        for d in &erased.old_rosters {
            sizes.forget(d);
        }
        Ok(erased)
    }

    /// Everything the relay's membership holds about the caller's member: their
    /// memberships (with their pseudonyms), devices, the audit entries about them or made
    /// by them, and the documents they may read now.
    pub fn export_member(&self, who: &Identity, now_ms: u64) -> Result<MemberRecordExport> {
        let (memberships, devices, documents) = {
            let state = self.read();
            Self::device(&state, who)?;
            let memberships = state
                .memberships_of(&who.member)
                .map(|m| ExportMembership {
                    group_id: m.group.clone(),
                    member: Self::member_info(m),
                })
                .collect();
            let devices = state
                .devices
                .values()
                .filter(|d| d.member == who.member)
                .map(|d| DeviceInfo {
                    device_id: d.device.clone(),
                    created_ms: d.created_ms,
                    revoked: d.revoked_ms.is_some(),
                })
                .collect();
            let documents = state
                .bindings
                .values()
                .filter(|b| state.allows(who, &b.document, crate::engine::Operation::Read, now_ms))
                .map(|b| ExportDocument {
                    group_id: b.group.clone(),
                    document_id: b.document,
                    kind: b.kind,
                })
                .collect();
            (memberships, devices, documents)
        };
        let audit = self
            .store
            .audit_since(0, usize::MAX)?
            .into_iter()
            .filter(|e| e.concerns(&who.member))
            .collect();
        Ok(MemberRecordExport {
            member_id: who.member.clone(),
            memberships,
            devices,
            audit,
            documents,
        })
    }

    // ------------------------------------------------------------------ operator

    /// Every group as the operator sees it: ids, counts and the effective quota (no
    /// names, no content).
    pub fn group_summaries(&self) -> Vec<GroupSummary> {
        let state = self.read();
        state
            .groups
            .values()
            .map(|g| GroupSummary {
                group: g.id.clone(),
                created_ms: g.created_ms,
                deleted_ms: g.deleted_ms,
                members_active: state
                    .members_of(&g.id)
                    .filter(|m| m.status == MemberStatus::Active)
                    .count(),
                members_total: state.members_of(&g.id).count(),
                documents: state.bindings.values().filter(|b| b.group == g.id).count(),
                quota: self.effective_quota(&state, &g.id),
            })
            .collect()
    }

    fn effective_quota(&self, state: &MembershipState, group: &GroupId) -> GroupQuota {
        let custom = state.quotas.get(group);
        GroupQuota {
            documents: custom
                .and_then(|q| q.documents)
                .unwrap_or(self.quotas.documents_per_group),
            bytes: custom
                .and_then(|q| q.bytes)
                .unwrap_or(self.quotas.bytes_per_group),
            documents_used: state
                .bindings
                .values()
                .filter(|b| &b.group == group)
                .count(),
            bytes_used: self.sizes().group_bytes(group),
        }
    }

    /// A group's effective quota and what it uses.
    pub fn group_quota(&self, group: &GroupId) -> Result<GroupQuota> {
        let state = self.read();
        if !state.groups.contains_key(group) {
            return Err(MembershipError::NotFound);
        }
        Ok(self.effective_quota(&state, group))
    }

    /// The relay's default quotas.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Overrides a group's quota (the operator only); `None` keeps the relay's default
    /// for that limit. A lower limit than the group uses refuses what comes next and
    /// loses nothing already stored. Returns the effective quota.
    pub fn set_group_quota(
        &self,
        actor: &Actor,
        group: &GroupId,
        documents: Option<usize>,
        bytes: Option<u64>,
        now_ms: u64,
    ) -> Result<GroupQuota> {
        if *actor != Actor::Operator {
            return Err(MembershipError::Forbidden("only the operator sets quotas"));
        }
        self.change(|state| {
            if !state.groups.contains_key(group) {
                return Err(MembershipError::NotFound);
            }
            let mut commit = Commit::default();
            if documents.is_none() && bytes.is_none() {
                if state.quotas.contains_key(group) {
                    commit.deletions.push(RecordKey::Quota(group.clone()));
                }
            } else {
                commit.records.push(Record::Quota(QuotaRecord {
                    group: group.clone(),
                    documents,
                    bytes,
                }));
            }
            let commit = commit.audit(
                AuditEntry::new(AuditKind::QuotaChanged, actor.clone(), now_ms).group(group),
            );
            Ok((commit, ()))
        })?;
        self.group_quota(group)
    }

    /// Sets each document's stored size (the relay calls it at start with the store's
    /// per-document sizes; ids of no bound document are ignored). The engine keeps them
    /// current from then on through [`MembershipAccess`] for what this relay writes; a
    /// relay sharing its store with others calls it again with what they wrote.
    pub fn seed_document_sizes(&self, sizes: impl IntoIterator<Item = (DocumentId, u64)>) {
        let state = self.read();
        let mut known = self.sizes();
        for (doc, bytes) in sizes {
            let group = state.bindings.get(&doc).map(|b| &b.group);
            known.set(doc, group, bytes);
        }
    }

    fn sizes(&self) -> std::sync::MutexGuard<'_, DocumentSizes> {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner())
    }
}
