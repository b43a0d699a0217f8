//! Several relays on one shared store: what another relay changed, found by reloading the
//! state from the store and comparing it with the state this relay holds.
//!
//! This relay's own changes are applied to its state as they commit, so whatever a reload
//! finds different was written by another relay. The relay acts on it as on a change of
//! its own: it closes the sockets of members and devices that lost access, has the engine
//! re-check every connection, forgets unbound documents and rewrites rosters.

use std::collections::BTreeSet;

use super::{GroupId, Identity, MemberStatus, MembershipState};
use crate::ids::{DocumentId, MemberId};

/// What other relays changed in the shared membership since this relay last took them
/// ([`Membership::take_external_changes`](super::Membership::take_external_changes)). Ids
/// only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalChanges {
    /// Whether any record changed, appeared or went (an invite made elsewhere counts).
    pub changed: bool,
    /// Whether a record that may have given access changed or went: the engine re-checks
    /// every connection.
    pub reduces_access: bool,
    /// Members whose every socket closes: suspended, removed, left or erased somewhere in
    /// a group (as after the same change made here), or back in a restored group (so
    /// their devices sync it again).
    pub members: BTreeSet<MemberId>,
    /// Devices whose sockets close: revoked, gone, or given a new credential.
    pub devices: BTreeSet<Identity>,
    /// Groups whose membership view (members, roles, statuses, pseudonyms, acceptances, the
    /// code of conduct) changed: their roster documents are rewritten.
    pub rosters: BTreeSet<GroupId>,
    /// Documents no longer bound to any group (a purged group's, an erased member's old
    /// rosters): the engine forgets them.
    pub unbound: BTreeSet<DocumentId>,
}

impl ExternalChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.changed
    }

    /// Adds `other` (changes found by a later reload) to these.
    pub fn merge(&mut self, other: ExternalChanges) {
        self.changed |= other.changed;
        self.reduces_access |= other.reduces_access;
        self.members.extend(other.members);
        self.devices.extend(other.devices);
        self.rosters.extend(other.rosters);
        self.unbound.extend(other.unbound);
    }

    /// What differs from `old` (the state held) to `new` (the state just loaded). The audit
    /// sequence alone is no change: it moves with every entry any relay writes.
    pub(super) fn between(old: &MembershipState, new: &MembershipState) -> ExternalChanges {
        let mut c = ExternalChanges::default();

        for (key, was) in &old.memberships {
            let (group, member) = key;
            match new.memberships.get(key) {
                Some(now) if now == was => continue,
                Some(now) => {
                    if was.status == MemberStatus::Active && now.status != MemberStatus::Active {
                        c.members.insert(member.clone());
                    }
                }
                None => {
                    c.members.insert(member.clone());
                }
            }
            c.reduces_access = true;
            if new.groups.contains_key(group) {
                c.rosters.insert(group.clone());
            }
        }
        for ((group, _), _) in new
            .memberships
            .iter()
            .filter(|(k, _)| !old.memberships.contains_key(*k))
        {
            if old.groups.contains_key(group) && new.groups.contains_key(group) {
                c.rosters.insert(group.clone());
            }
        }

        for (id, was) in &old.groups {
            let Some(now) = new.groups.get(id) else {
                c.reduces_access = true;
                continue;
            };
            if now == was {
                continue;
            }
            c.reduces_access = true;
            if now.coc_version != was.coc_version || now.coc_text != was.coc_text {
                c.rosters.insert(id.clone());
            }
            if was.deleted_ms.is_some() && now.deleted_ms.is_none() {
                // Restored: its members' devices stopped syncing its documents while it was
                // deleted; closing their sockets makes them reconnect and sync again.
                c.members.extend(
                    new.members_of(id)
                        .filter(|m| m.status == MemberStatus::Active)
                        .map(|m| m.member.clone()),
                );
                c.rosters.insert(id.clone());
            }
        }

        for (key, was) in &old.devices {
            let now = new.devices.get(key);
            if now == Some(was) {
                continue;
            }
            c.reduces_access = true;
            let still_same =
                now.is_some_and(|d| d.revoked_ms.is_none() && d.secret_hash == was.secret_hash);
            if was.revoked_ms.is_none() && !still_same {
                c.devices.insert(Identity {
                    member: key.0.clone(),
                    device: key.1.clone(),
                });
            }
        }

        for (doc, was) in &old.bindings {
            match new.bindings.get(doc) {
                Some(now) if now == was => {}
                Some(_) => c.reduces_access = true,
                None => {
                    c.reduces_access = true;
                    c.unbound.insert(*doc);
                }
            }
        }

        c.changed = c.reduces_access
            || old.groups != new.groups
            || old.devices != new.devices
            || old.memberships != new.memberships
            || old.invites != new.invites
            || old.link_codes != new.link_codes
            || old.bindings != new.bindings
            || old.quotas != new.quotas;
        c
    }
}
