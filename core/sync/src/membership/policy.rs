//! The access policy: who may read and write a document, decided from the membership
//! state alone (no IO), for the engine to consult on every message.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use super::{BindingRecord, BoundKind, GroupId, Identity, MembershipState};
use crate::engine::{Access, Operation, PeerInfo};
use crate::ids::DocumentId;
use crate::time::Timestamp;

impl MembershipState {
    /// Whether the device `who` may do `op` on `doc` at `now_ms` (Unix ms). See the table
    /// in the [module docs](super).
    pub fn allows(&self, who: &Identity, doc: &DocumentId, op: Operation, now_ms: u64) -> bool {
        if self.active_device(who).is_none() {
            return false;
        }
        let Some(binding) = self.bindings.get(doc) else {
            return false;
        };
        let Some(m) = self.membership(&binding.group, &who.member) else {
            return false;
        };
        if !self.may_see(&binding.group, &who.member, now_ms) {
            return false;
        }
        if let Some(meeting) = &m.meeting {
            return doc == meeting && op == Operation::Read;
        }
        let role = m.role;
        match (binding.kind, op) {
            (BoundKind::Settings, Operation::Read) => true,
            (BoundKind::Settings, Operation::Write) => role == crate::docs::group::Role::Organiser,
            (BoundKind::Roster, Operation::Read) => true,
            (BoundKind::Roster, Operation::Write) => false,
            (
                BoundKind::Index
                | BoundKind::Series
                | BoundKind::Meeting
                | BoundKind::Resources
                | BoundKind::Thread,
                Operation::Read,
            ) => true,
            (
                BoundKind::Index
                | BoundKind::Series
                | BoundKind::Meeting
                | BoundKind::Resources
                | BoundKind::Thread,
                Operation::Write,
            ) => role.can_write(),
            (BoundKind::Report, _) => {
                role.is_facilitator() || binding.registrant.as_ref() == Some(&who.member)
            }
        }
    }
}

/// Each stored document's size and each group's total, as the engine reports them. Kept
/// in memory beside the membership state (the engine consults the totals on every change
/// it is about to accept, without IO); the relay seeds it at start from the store.
#[derive(Debug, Default)]
pub(super) struct DocumentSizes {
    docs: HashMap<DocumentId, (GroupId, u64)>,
    groups: HashMap<GroupId, u64>,
}

impl DocumentSizes {
    /// `doc` now takes `bytes`; `group` is its group (`None`: unbound, not counted).
    pub(super) fn set(&mut self, doc: DocumentId, group: Option<&GroupId>, bytes: u64) {
        self.forget(&doc);
        if let Some(group) = group {
            *self.groups.entry(group.clone()).or_default() += bytes;
            self.docs.insert(doc, (group.clone(), bytes));
        }
    }

    /// `doc` no longer counts (forgotten, or its group purged).
    pub(super) fn forget(&mut self, doc: &DocumentId) {
        if let Some((group, bytes)) = self.docs.remove(doc) {
            if let Some(total) = self.groups.get_mut(&group) {
                *total = total.saturating_sub(bytes);
                if *total == 0 {
                    self.groups.remove(&group);
                }
            }
        }
    }

    /// Follows bindings another relay changed: a document whose binding is gone (its group
    /// purged, an erased member's old roster) no longer counts, and one whose group differs
    /// counts for its new group. Sizes of newly bound documents arrive from the engine.
    pub(super) fn regroup(&mut self, bindings: &BTreeMap<DocumentId, BindingRecord>) {
        let moved: Vec<(DocumentId, Option<GroupId>, u64)> = self
            .docs
            .iter()
            .filter_map(|(doc, (group, bytes))| {
                let now = bindings.get(doc).map(|b| &b.group);
                (now != Some(group)).then(|| (*doc, now.cloned(), *bytes))
            })
            .collect();
        for (doc, group, bytes) in moved {
            self.set(doc, group.as_ref(), bytes);
        }
    }

    /// Bytes stored for `group`'s documents.
    pub(super) fn group_bytes(&self, group: &GroupId) -> u64 {
        self.groups.get(group).copied().unwrap_or(0)
    }
}

/// The engine's [`Access`] over the relay's in-memory membership state.
///
/// Connections carry the identity the relay authenticated (`member/device`); one without
/// an identity, or with a revoked device, may do nothing. The engine's `now` counts from
/// the host's origin; `origin_unix_ms` turns it into wall time for guest expiry.
#[derive(Clone, Debug)]
pub struct MembershipAccess {
    state: Arc<RwLock<MembershipState>>,
    sizes: Arc<Mutex<DocumentSizes>>,
    /// The relay's default bytes per group (a group's override wins).
    default_bytes: u64,
    origin_unix_ms: u64,
}

impl MembershipAccess {
    pub(super) fn new(
        state: Arc<RwLock<MembershipState>>,
        sizes: Arc<Mutex<DocumentSizes>>,
        default_bytes: u64,
        origin_unix_ms: u64,
    ) -> Self {
        MembershipAccess {
            state,
            sizes,
            default_bytes,
            origin_unix_ms,
        }
    }

    fn wall(&self, now: Timestamp) -> u64 {
        self.origin_unix_ms.saturating_add(now.as_millis())
    }

    fn identity(peer: &PeerInfo<'_>) -> Option<Identity> {
        Identity::parse(peer.identity?).ok()
    }
}

impl Access for MembershipAccess {
    fn allows(&self, peer: &PeerInfo<'_>, doc: &DocumentId, op: Operation, now: Timestamp) -> bool {
        let Some(who) = Self::identity(peer) else {
            return false;
        };
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.allows(&who, doc, op, self.wall(now))
    }

    fn connection_allowed(&self, peer: &PeerInfo<'_>, _now: Timestamp) -> bool {
        let Some(who) = Self::identity(peer) else {
            return false;
        };
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.active_device(&who).is_some()
    }

    fn document_stored(&self, doc: &DocumentId, bytes: u64) {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let group = state.bindings.get(doc).map(|b| &b.group);
        self.sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(*doc, group, bytes);
    }

    /// A group at or over its bytes quota takes no more changes for any of its documents
    /// (a document that shrinks by compaction makes room again).
    fn may_grow(&self, doc: &DocumentId, adding: u64) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let Some(binding) = state.bindings.get(doc) else {
            return true;
        };
        let limit = state
            .quotas
            .get(&binding.group)
            .and_then(|q| q.bytes)
            .unwrap_or(self.default_bytes);
        let sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes.group_bytes(&binding.group).saturating_add(adding) <= limit
    }
}
