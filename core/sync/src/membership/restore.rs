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
