//! After a restore from backup: the membership changes recorded after the backup, applied
//! again from the old relay's audit log, and the codes the backup still holds closed.
//!
//! A backup holds the membership as it was when it was taken. Changes recorded after it
//! are not in it; the safe choice is that none that took access away comes back to life:
//! - removals, departures, suspensions (and reinstatements), role changes, device
//!   revocations, credential rotations (as revocations: the rotated credential is not in
//!   the backup, the old one may have leaked, so that device links again), erasures and
//!   group deletions, restorations and purges are applied again, in order, from the audit
//!   log's entries newer than the backup's last one;
//! - what the log cannot carry is not invented: a device enrolled or linked after the
//!   backup has no credential in it (it gets 401 and redeems a new invite); a code of
//!   conduct changed after it is back at the older text (organisers set it again);
//! - every invite and device-link code in the backup is closed: one redeemed after the
//!   backup would otherwise work again past its uses. Organisers make new ones.

use super::{
    Actor, AuditEntry, AuditKind, Commit, MemberStatus, Membership, MembershipError, Record,
};
use crate::ids::DocumentId;

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Entries of the log newer than the backup.
    pub newer: usize,
    /// Of those, applied again.
    pub applied: usize,
    /// Of those, kinds a log cannot carry (enrolments, links, codes of conduct, invites).
    pub not_replayable: usize,
    /// Invites and link codes closed.
    pub codes_closed: usize,
    /// Documents whose keys must be deleted (old rosters of erased members, purged
    /// groups' documents): the caller deletes them from the store.
    pub forget: Vec<DocumentId>,
}

impl Membership {
    /// The last audit sequence number the restored state holds (entries after it were
    /// recorded after the backup).
    pub fn last_audit_seq(&self) -> u64 {
        self.read().next_audit_seq.saturating_sub(1)
    }

    /// Applies `log` (the old relay's audit entries, any order) after a restore: every
    /// entry with a `seq` after [`Membership::last_audit_seq`] that changed access, in
    /// order; then closes every invite and link code. `log = None`: the operator kept the
    /// membership as of the backup; the codes are closed all the same.
    pub fn after_restore(
        &self,
        log: Option<&[AuditEntry]>,
        now_ms: u64,
    ) -> Result<Replayed, MembershipError> {
        let mut out = Replayed::default();
        let after = self.last_audit_seq();
        let mut newer: Vec<&AuditEntry> = log
            .unwrap_or_default()
            .iter()
            .filter(|e| e.seq > after)
            .collect();
        newer.sort_by_key(|e| e.seq);
        out.newer = newer.len();
        for entry in newer {
            match self.replay(entry, &mut out.forget)? {
                true => out.applied += 1,
                false => out.not_replayable += 1,
            }
        }
        out.codes_closed = self.close_codes(now_ms)?;
        self.record_audit(
            AuditKind::Restored,
            Actor::Operator,
            None,
            None,
            None,
            Some(out.applied as u64),
            now_ms,
        )?;
        Ok(out)
    }

    /// Applies one entry; false when its kind cannot be replayed.
    fn replay(
        &self,
        e: &AuditEntry,
        forget: &mut Vec<DocumentId>,
    ) -> Result<bool, MembershipError> {
        let status = match e.kind {
            AuditKind::Removed => Some(MemberStatus::Removed),
            AuditKind::Left => Some(MemberStatus::Left),
            AuditKind::Suspended => Some(MemberStatus::Suspended),
            AuditKind::Reinstated => Some(MemberStatus::Active),
            _ => None,
        };
        match e.kind {
            _ if status.is_some() || e.kind == AuditKind::RoleChanged => {
                let (Some(group), Some(member)) = (&e.group, &e.member) else {
                    return Ok(false);
                };
                self.change(|state| {
                    let Some(m) = state.membership(group, member) else {
                        return Ok((Commit::default(), ()));
                    };
                    let mut m = m.clone();
                    if let Some(status) = status {
                        m.status = status;
                    }
                    if let (AuditKind::RoleChanged, Some(role)) = (e.kind, e.role) {
                        m.role = role;
                    }
                    Ok((Commit::of(vec![Record::Membership(m)]), ()))
                })?;
                Ok(true)
            }
            AuditKind::DeviceRevoked | AuditKind::CredentialRotated => {
                let (Some(member), Some(device)) = (&e.member, &e.device) else {
                    return Ok(false);
                };
                self.change(|state| {
                    let Some(d) = state.devices.get(&(member.clone(), device.clone())) else {
                        return Ok((Commit::default(), ()));
                    };
                    let mut d = d.clone();
                    d.revoked_ms.get_or_insert(e.at_ms);
                    Ok((Commit::of(vec![Record::Device(d)]), ()))
                })?;
                Ok(true)
            }
            AuditKind::MemberErased => {
                let Some(member) = &e.member else {
                    return Ok(false);
                };
                match self.erase_member(&Actor::Operator, member, e.at_ms) {
                    Ok(erased) => forget.extend(erased.old_rosters),
                    Err(MembershipError::NotFound) => {}
                    Err(other) => return Err(other),
                }
                Ok(true)
            }
            AuditKind::GroupDeleted | AuditKind::GroupRestored | AuditKind::GroupPurged => {
                let Some(group) = &e.group else {
                    return Ok(false);
                };
                let done = match e.kind {
                    AuditKind::GroupRestored => {
                        self.restore_group(&Actor::Operator, group, e.at_ms)
                    }
                    _ => self.delete_group(&Actor::Operator, group, e.at_ms),
                };
                match done {
                    Ok(()) | Err(MembershipError::NotFound) => {}
                    Err(other) => return Err(other),
                }
                if e.kind == AuditKind::GroupPurged {
                    match self.purge_group(group, e.at_ms) {
                        Ok(purged) => forget.extend(purged.documents),
                        Err(MembershipError::NotFound) => {}
                        Err(other) => return Err(other),
                    }
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Closes every invite and link code that still works; returns how many.
    fn close_codes(&self, now_ms: u64) -> Result<usize, MembershipError> {
        self.change(|state| {
            let mut records = Vec::new();
            for invite in state.invites.values().filter(|i| i.expires_ms > now_ms) {
                let mut invite = invite.clone();
                invite.expires_ms = now_ms;
                records.push(Record::Invite(invite));
            }
            for link in state
                .link_codes
                .values()
                .filter(|l| !l.used && l.expires_ms > now_ms)
            {
                let mut link = link.clone();
                link.used = true;
                records.push(Record::LinkCode(link));
            }
            let n = records.len();
            Ok((Commit::of(records), n))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::api::CreateInvite;
    use super::super::{GroupId, Identity, KvMembershipStore, Quotas};
    use super::*;
    use crate::docs::group::Role;
    use crate::store::{MemoryStore, Storage};

    const T0: u64 = 1_800_000_000_000;

    fn open(store: &Arc<MemoryStore>) -> Membership {
        Membership::open(
            Arc::new(KvMembershipStore::new(store.clone())),
            Quotas::default(),
        )
        .unwrap()
    }

    /// A copy of every key: what a backup holds.
    fn backup(store: &MemoryStore) -> Arc<MemoryStore> {
        let copy = Arc::new(MemoryStore::default());
        for (k, v) in store.load_range(&[]).unwrap() {
            copy.put(&k, &v).unwrap();
        }
        copy
    }

    fn join(m: &Membership, code: &str, now: u64) -> (Identity, String, GroupId) {
        let r = m.redeem(None, code, "Wren", now).unwrap();
        let token = r.token.unwrap();
        let who = m.authenticate(&token).unwrap();
        let g = r.group.unwrap();
        m.accept_code_of_conduct(&who, &g.group_id, g.code_of_conduct_version, now)
            .unwrap();
        (who, token, g.group_id)
    }

    fn invite(m: &Membership, who: &Identity, g: &GroupId, uses: u32) -> String {
        let request = CreateInvite {
            role: Role::Member,
            expires_in_secs: 3600,
            max_uses: uses,
            meeting: None,
            access_expires_in_secs: None,
        };
        m.create_invite(who, g, &request, T0).unwrap().code
    }

    #[test]
    fn a_replayed_log_keeps_later_removals_and_revocations_and_later_devices_redeem_again() {
        let live_store = Arc::new(MemoryStore::default());
        let live = open(&live_store);
        let (_, first) = live
            .bootstrap("Be kind.", DocumentId::from_bytes([1; 16]), 3600, T0)
            .unwrap();
        let (org, org_token, g) = join(&live, &first.link, T0);
        let code = invite(&live, &org, &g, 3);
        let (removed, _, _) = join(&live, &code, T0);
        let (revoked, revoked_token, _) = join(&live, &code, T0);
        let (erased, erased_token, _) = join(&live, &code, T0);
        let later_code = invite(&live, &org, &g, 1);

        let at_backup = backup(&live_store);

        // After the backup: a removal, a revocation, a role change, a new member.
        let t1 = T0 + 1000;
        live.remove(&org, &g, &removed.member, t1).unwrap();
        live.revoke_device(&revoked, &revoked.device, t1).unwrap();
        live.set_role(&org, &g, &revoked.member, Role::Observer, t1)
            .unwrap();
        let old_roster = live
            .erase_member(&Actor::Operator, &erased.member, t1)
            .unwrap();
        let (_, late_token, _) = join(&live, &later_code, t1);
        let log = live.audit_since(0, usize::MAX).unwrap();

        // Restored with the log: none of it comes back to life.
        let restored = open(&backup(&at_backup));
        let replayed = restored.after_restore(Some(&log), t1 + 1000).unwrap();
        assert_eq!(replayed.applied, 4, "{replayed:?}");
        assert!(restored.authenticate(&erased_token).is_err());
        assert!(restored.snapshot().membership(&g, &erased.member).is_none());
        assert_eq!(
            replayed.forget.len(),
            old_roster.old_rosters.len(),
            "the roster that held the erased pseudonym is to be deleted"
        );
        assert!(
            replayed.not_replayable >= 1,
            "the later enrolment is not invented"
        );
        assert!(replayed.codes_closed >= 2);
        let now = t1 + 2000;
        assert!(!restored.snapshot().may_see(&g, &removed.member, now));
        assert!(restored.authenticate(&revoked_token).is_err());
        assert_eq!(
            restored
                .snapshot()
                .membership(&g, &revoked.member)
                .unwrap()
                .role,
            Role::Observer
        );
        assert!(
            restored.authenticate(&late_token).is_err(),
            "a device enrolled after the backup redeems again"
        );
        assert!(
            matches!(
                restored.redeem(None, &later_code, "Again", now),
                Err(MembershipError::InviteExpired)
            ),
            "an invite used after the backup does not work twice"
        );
        assert!(restored.authenticate(&org_token).is_ok());
        assert!(restored.snapshot().may_see(&g, &org.member, now));
        let kinds: Vec<AuditKind> = restored
            .audit_since(0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds.last(), Some(&AuditKind::Restored));

        // The control: kept as of the backup, the removal comes back (which is why a
        // restore makes the operator choose); the codes are closed all the same.
        let as_of = open(&backup(&at_backup));
        let kept = as_of.after_restore(None, t1 + 1000).unwrap();
        assert_eq!(kept.applied, 0);
        assert!(as_of.snapshot().may_see(&g, &removed.member, now));
        assert!(as_of.authenticate(&revoked_token).is_ok());
        assert!(as_of.authenticate(&erased_token).is_ok());
        assert!(kept.codes_closed >= 2);
    }
}
