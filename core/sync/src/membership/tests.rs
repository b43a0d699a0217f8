//! The membership service against a real key-value store: who may do what, and that
//! nothing is applied that is not committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::api::CreateInvite;
use super::*;
use crate::docs::group::Role;
use crate::engine::Operation;
use crate::ids::DocumentId;
use crate::store::{MemoryStore, Storage, StorageKey, StoreError};

const T0: u64 = 1_800_000_000_000;
const HOUR: u64 = 3_600_000;

/// A memory store whose writes can be made to fail (a full disk).
#[derive(Default)]
struct Failing {
    inner: MemoryStore,
    fail: AtomicBool,
}

impl Storage for Failing {
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.load(key)
    }
    fn load_range(&self, p: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
        self.inner.load_range(p)
    }
    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
        self.inner.put(key, data)
    }
    fn delete(&self, key: &[String]) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
    fn flush(&self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Io(std::io::Error::from_raw_os_error(28)));
        }
        Ok(())
    }
    fn write_batch(&self, writes: &[(StorageKey, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        // Fails before anything is written, as the durable store does on a full disk.
        self.flush()?;
        for (k, v) in writes {
            match v {
                Some(v) => self.inner.put(k, v)?,
                None => self.inner.delete(k)?,
            }
        }
        Ok(())
    }
}

struct Relay {
    store: Arc<Failing>,
    m: Membership,
}

fn relay() -> Relay {
    let store = Arc::new(Failing::default());
    let m = Membership::open(
        Arc::new(KvMembershipStore::new(store.clone())),
        Quotas::default(),
    )
    .unwrap();
    Relay { store, m }
}

fn doc(n: u8) -> DocumentId {
    DocumentId::from_bytes([n; 16])
}

/// A device that has joined with `code` and accepted the code of conduct.
fn join(m: &Membership, code: &str, now: u64) -> (Identity, String, GroupId) {
    let r = m.redeem(None, code, "Wren", now).unwrap();
    let token = r.token.unwrap();
    let who = m.authenticate(&token).unwrap();
    let g = r.group.unwrap();
    m.accept_code_of_conduct(&who, &g.group_id, g.code_of_conduct_version, now)
        .unwrap();
    (who, token, g.group_id)
}

fn invite(m: &Membership, who: &Identity, g: &GroupId, role: Role, uses: u32) -> String {
    m.create_invite(
        who,
        g,
        &CreateInvite {
            role,
            expires_in_secs: 3600,
            max_uses: uses,
            meeting: None,
            access_expires_in_secs: None,
        },
        T0,
    )
    .unwrap()
    .code
}

/// A bootstrapped group with an organiser who registered settings and index.
fn group(m: &Membership) -> (Identity, GroupId) {
    let (_, first) = m.bootstrap("Be kind.", doc(1), 72 * 3600, T0).unwrap();
    let (org, _, g) = join(m, &first.link, T0);
    m.register_document(&org, &g, doc(2), BoundKind::Settings, T0)
        .unwrap();
    m.register_document(&org, &g, doc(3), BoundKind::Index, T0)
        .unwrap();
    (org, g)
}

#[test]
fn a_redeemed_invite_gives_a_device_whose_credential_alone_authenticates() {
    let r = relay();
    let (org, g) = group(&r.m);
    let code = invite(&r.m, &org, &g, Role::Member, 1);
    let redeemed = r.m.redeem(None, &code, "Ash", T0).unwrap();
    let token = redeemed.token.unwrap();
    let who = r.m.authenticate(&token).unwrap();
    assert_eq!(who.peer_id(), redeemed.peer_id);
    let mut wrong = token.clone();
    wrong.pop();
    wrong.push(if token.ends_with('0') { '1' } else { '0' });
    assert!(matches!(
        r.m.authenticate(&wrong),
        Err(MembershipError::Unauthorized)
    ));
    assert!(matches!(
        r.m.authenticate(""),
        Err(MembershipError::Unauthorized)
    ));
    // The secret is nowhere in the store, only its hash.
    let secret = token.rsplit('_').next().unwrap();
    for (_, v) in r.store.inner.load_range(&[KEY_PREFIX.to_owned()]).unwrap() {
        assert!(!String::from_utf8_lossy(&v).contains(secret));
    }
}

#[test]
fn expired_and_used_up_invites_are_refused() {
    let r = relay();
    let (org, g) = group(&r.m);
    let code = invite(&r.m, &org, &g, Role::Member, 1);
    assert!(matches!(
        r.m.redeem(None, &code, "Late", T0 + 2 * HOUR),
        Err(MembershipError::InviteExpired)
    ));
    r.m.redeem(None, &code, "First", T0).unwrap();
    assert!(matches!(
        r.m.redeem(None, &code, "Second", T0),
        Err(MembershipError::InviteExpired)
    ));
    assert!(matches!(
        r.m.redeem(None, "AAAAAAAAAAAAAAAAAAAA", "Guess", T0),
        Err(MembershipError::NotFound)
    ));
}

#[test]
fn content_needs_the_current_code_of_conduct_and_each_kind_has_one_level() {
    let r = relay();
    let (org, g) = group(&r.m);
    let code = invite(&r.m, &org, &g, Role::Member, 1);
    let red = r.m.redeem(None, &code, "Ash", T0).unwrap();
    let member = r.m.authenticate(red.token.as_deref().unwrap()).unwrap();
    let s = |who: &Identity, d: DocumentId, op| r.m.snapshot().allows(who, &d, op, T0);
    assert!(!s(&member, doc(3), Operation::Read), "before accepting");
    assert!(
        r.m.code_of_conduct(&member, &g, T0).is_ok(),
        "its text is readable first"
    );
    r.m.accept_code_of_conduct(&member, &g, 1, T0).unwrap();
    assert!(s(&member, doc(3), Operation::Read));
    assert!(
        s(&member, doc(3), Operation::Write),
        "members write the index"
    );
    assert!(s(&member, doc(2), Operation::Read));
    assert!(
        !s(&member, doc(2), Operation::Write),
        "settings are the organisers'"
    );
    assert!(s(&org, doc(2), Operation::Write));
    assert!(s(&member, doc(1), Operation::Read));
    assert!(
        !s(&org, doc(1), Operation::Write),
        "nobody syncs into the roster"
    );
    assert!(
        !s(&member, doc(99), Operation::Read),
        "unbound documents are nobody's"
    );
    // A new code of conduct closes content until it is accepted again.
    r.m.set_code_of_conduct(&org, &g, "Be kinder.", T0).unwrap();
    assert!(!s(&member, doc(3), Operation::Read));
    assert!(s(&org, doc(3), Operation::Read), "its author accepted it");
    assert!(matches!(
        r.m.accept_code_of_conduct(&member, &g, 1, T0),
        Err(MembershipError::Conflict(_))
    ));
    r.m.accept_code_of_conduct(&member, &g, 2, T0).unwrap();
    assert!(s(&member, doc(3), Operation::Read));
}

#[test]
fn observers_and_alumni_read_and_reports_reach_only_facilitators_and_their_reporter() {
    let r = relay();
    let (org, g) = group(&r.m);
    let (obs, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Observer, 1), T0);
    let (mem, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 1), T0);
    let (other, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 1), T0);
    let (fac, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Facilitator, 1), T0);
    let s = |who: &Identity, d: DocumentId, op| r.m.snapshot().allows(who, &d, op, T0);
    r.m.register_document(&mem, &g, doc(10), BoundKind::Thread, T0)
        .unwrap();
    assert!(s(&obs, doc(10), Operation::Read));
    assert!(!s(&obs, doc(10), Operation::Write));
    assert!(matches!(
        r.m.register_document(&obs, &g, doc(11), BoundKind::Thread, T0),
        Err(MembershipError::Forbidden(_))
    ));
    r.m.register_document(&mem, &g, doc(12), BoundKind::Report, T0)
        .unwrap();
    assert!(s(&mem, doc(12), Operation::Write));
    assert!(s(&fac, doc(12), Operation::Read));
    assert!(s(&org, doc(12), Operation::Read));
    assert!(
        !s(&other, doc(12), Operation::Read),
        "another member never sees a report"
    );
    r.m.set_role(&org, &g, &mem.member, Role::Alumnus, T0)
        .unwrap();
    assert!(s(&mem, doc(10), Operation::Read));
    assert!(!s(&mem, doc(10), Operation::Write));
}

#[test]
fn a_bound_or_held_id_is_never_bound_again() {
    let r = relay();
    let (org_a, a) = group(&r.m);
    let (_, first_b) = r.m.bootstrap("B", doc(50), 3600, T0).unwrap();
    let (org_b, _, b) = join(&r.m, &first_b.code, T0);
    r.m.register_document(&org_a, &a, doc(20), BoundKind::Thread, T0)
        .unwrap();
    assert!(matches!(
        r.m.register_document(&org_b, &b, doc(20), BoundKind::Thread, T0),
        Err(MembershipError::Conflict(_))
    ));
    assert!(!r.m.snapshot().allows(&org_b, &doc(20), Operation::Read, T0));
    // Held by the document store (e.g. written in development mode): not claimable.
    r.store
        .put(&[doc(21).to_string(), "snapshot".into(), "h".into()], b"x")
        .unwrap();
    assert!(matches!(
        r.m.register_document(&org_a, &a, doc(21), BoundKind::Thread, T0),
        Err(MembershipError::Conflict(_))
    ));
    // The same registration again (a retry) is accepted.
    r.m.register_document(&org_a, &a, doc(20), BoundKind::Thread, T0)
        .unwrap();
    // So is the same binding from another writer of the group (a deterministic id two
    // devices opened offline), but not under another kind.
    let (mem_a, _, _) = join(&r.m, &invite(&r.m, &org_a, &a, Role::Member, 1), T0);
    r.m.register_document(&mem_a, &a, doc(20), BoundKind::Thread, T0)
        .unwrap();
    assert!(matches!(
        r.m.register_document(&mem_a, &a, doc(20), BoundKind::Meeting, T0),
        Err(MembershipError::Conflict(_))
    ));
    assert!(matches!(
        r.m.register_document(&org_a, &a, doc(22), BoundKind::Settings, T0),
        Err(MembershipError::Conflict(_))
    ));
}

#[test]
fn removal_suspension_revocation_and_guest_expiry_end_access() {
    let r = relay();
    let (org, g) = group(&r.m);
    let (mem, token, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 1), T0);
    let s = |who: &Identity, t| r.m.snapshot().allows(who, &doc(3), Operation::Read, t);
    r.m.suspend(&org, &g, &mem.member, T0).unwrap();
    assert!(!s(&mem, T0));
    r.m.reinstate(&org, &g, &mem.member, T0).unwrap();
    assert!(s(&mem, T0));
    // A second device of the same member; revoking the first leaves the second working.
    let link = r.m.create_link_code(&mem, T0).unwrap();
    let second = r.m.link_device(&link.code, T0).unwrap();
    let second = r.m.authenticate(second.token.as_deref().unwrap()).unwrap();
    assert_eq!(second.member, mem.member);
    assert!(matches!(
        r.m.link_device(&link.code, T0),
        Err(MembershipError::InviteExpired)
    ));
    r.m.revoke_device(&second, &mem.device, T0).unwrap();
    assert!(matches!(
        r.m.authenticate(&token),
        Err(MembershipError::Unauthorized)
    ));
    assert!(!s(&mem, T0));
    assert!(s(&second, T0));
    // Rotation: the old credential stops working.
    let old = r.m.rotate(&second, T0).unwrap();
    let new = r.m.rotate(&second, T0).unwrap();
    assert!(r.m.authenticate(&old).is_err());
    assert!(r.m.authenticate(&new).is_ok());
    r.m.remove(&org, &g, &second.member, T0).unwrap();
    assert!(!s(&second, T0));
    // A guest for one meeting, for two hours.
    r.m.register_document(&org, &g, doc(30), BoundKind::Meeting, T0)
        .unwrap();
    let guest_code =
        r.m.create_invite(
            &org,
            &g,
            &CreateInvite {
                role: Role::Observer,
                expires_in_secs: 3600,
                max_uses: 1,
                meeting: Some(doc(30)),
                access_expires_in_secs: Some(2 * 3600),
            },
            T0,
        )
        .unwrap();
    let (guest, _, _) = join(&r.m, &guest_code.code, T0);
    let snap = r.m.snapshot();
    assert!(snap.allows(&guest, &doc(30), Operation::Read, T0));
    assert!(!snap.allows(&guest, &doc(30), Operation::Write, T0));
    assert!(
        !snap.allows(&guest, &doc(3), Operation::Read, T0),
        "one meeting only"
    );
    assert!(!snap.allows(&guest, &doc(30), Operation::Read, T0 + 2 * HOUR));
    assert_eq!(r.m.next_expiry(T0), Some(T0 + 2 * HOUR));
}

#[test]
fn roles_are_decided_by_role_and_a_group_keeps_an_organiser() {
    let r = relay();
    let (org, g) = group(&r.m);
    let (mem, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 1), T0);
    let (fac, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Facilitator, 1), T0);
    assert!(matches!(
        r.m.set_role(&mem, &g, &mem.member, Role::Organiser, T0),
        Err(MembershipError::Forbidden(_))
    ));
    assert!(matches!(
        r.m.remove(&mem, &g, &fac.member, T0),
        Err(MembershipError::Forbidden(_))
    ));
    assert!(matches!(
        r.m.remove(&fac, &g, &org.member, T0),
        Err(MembershipError::Forbidden(_))
    ));
    assert!(matches!(
        r.m.remove(&org, &g, &org.member, T0),
        Err(MembershipError::Conflict(_))
    ));
    assert!(matches!(
        r.m.create_invite(
            &mem,
            &g,
            &CreateInvite {
                role: Role::Organiser,
                expires_in_secs: 60,
                max_uses: 1,
                meeting: None,
                access_expires_in_secs: None
            },
            T0
        ),
        Err(MembershipError::Forbidden(_))
    ));
    r.m.remove(&fac, &g, &mem.member, T0).unwrap();
    r.m.remove(&fac, &g, &fac.member, T0).unwrap();
    assert_eq!(r.m.groups_of(&fac, T0).unwrap(), vec![], "left");
    // A stranger learns nothing about the group.
    let (_, other_first) = r.m.bootstrap("", doc(60), 60, T0).unwrap();
    let (stranger, _, _) = join(&r.m, &other_first.code, T0);
    assert!(matches!(
        r.m.members(&stranger, &g, T0),
        Err(MembershipError::NotFound)
    ));
}

#[test]
fn the_state_is_what_was_committed_and_a_failed_commit_changes_nothing() {
    let r = relay();
    let (org, g) = group(&r.m);
    let (mem, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 1), T0);
    let reopened = Membership::open(
        Arc::new(KvMembershipStore::new(r.store.clone())),
        Quotas::default(),
    )
    .unwrap();
    assert_eq!(reopened.snapshot(), r.m.snapshot());
    r.store.fail.store(true, Ordering::SeqCst);
    let before = r.m.snapshot();
    let err = r.m.remove(&org, &g, &mem.member, T0).unwrap_err();
    assert!(
        matches!(err, MembershipError::Store(ref e) if e.is_disk_full()),
        "{err}"
    );
    assert_eq!(r.m.snapshot(), before, "not applied without a commit");
    assert!(r.m.snapshot().allows(&mem, &doc(3), Operation::Read, T0));
    r.store.fail.store(false, Ordering::SeqCst);
    r.m.remove(&org, &g, &mem.member, T0).unwrap();
    let reopened = Membership::open(
        Arc::new(KvMembershipStore::new(r.store.clone())),
        Quotas::default(),
    )
    .unwrap();
    assert!(!reopened
        .snapshot()
        .allows(&mem, &doc(3), Operation::Read, T0));
}

#[test]
fn the_engine_policy_uses_the_socket_identity_and_wall_time() {
    use crate::engine::{Access, PeerInfo};
    use crate::time::Timestamp;
    let r = relay();
    let (org, g) = group(&r.m);
    r.m.register_document(&org, &g, doc(30), BoundKind::Meeting, T0)
        .unwrap();
    let code =
        r.m.create_invite(
            &org,
            &g,
            &CreateInvite {
                role: Role::Observer,
                expires_in_secs: 3600,
                max_uses: 1,
                meeting: Some(doc(30)),
                access_expires_in_secs: Some(3600),
            },
            T0,
        )
        .unwrap();
    let (guest, _, _) = join(&r.m, &code.code, T0);
    // The host's clock started an hour before T0.
    let access = r.m.access(T0 - HOUR);
    let peer = guest.peer_id();
    let id = guest.to_string();
    let info = PeerInfo {
        peer_id: &peer,
        identity: Some(&id),
    };
    let at = |ms| Timestamp::from_millis(ms);
    assert!(access.allows(&info, &doc(30), Operation::Read, at(HOUR)));
    assert!(
        !access.allows(&info, &doc(30), Operation::Read, at(2 * HOUR)),
        "expired"
    );
    assert!(access.connection_allowed(&info, at(HOUR)));
    let anonymous = PeerInfo {
        peer_id: &peer,
        identity: None,
    };
    assert!(!access.allows(&anonymous, &doc(30), Operation::Read, at(HOUR)));
    assert!(!access.connection_allowed(&anonymous, at(HOUR)));
    r.m.revoke_device(&guest, &guest.device, T0).unwrap();
    assert!(!access.connection_allowed(&info, at(HOUR)), "revoked");
}

#[test]
fn facilitators_find_every_report_and_a_member_only_their_own() {
    let r = relay();
    let (org, g) = group(&r.m);
    let (mem, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 1), T0);
    let (other, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 1), T0);
    r.m.register_document(&mem, &g, doc(40), BoundKind::Report, T0)
        .unwrap();
    let reports = |who: &Identity| r.m.groups_of(who, T0).unwrap()[0].documents.reports.clone();
    assert_eq!(reports(&org), vec![doc(40)]);
    assert_eq!(reports(&mem), vec![doc(40)]);
    assert_eq!(reports(&other), Vec::<DocumentId>::new());
}

#[test]
fn the_roster_document_shows_the_membership_state_and_rewrites_only_changes() {
    use crate::docs::roster;
    let r = relay();
    let (org, g) = group(&r.m);
    let (mem, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 1), T0);
    let mut am = automerge::Automerge::new();
    let apply = |am: &mut automerge::Automerge| {
        let (doc, update) = r.m.roster_update(&g).unwrap();
        assert_eq!(doc, doc_roster(&r.m, &g));
        let mut tx = am.transaction();
        update(&mut tx);
        tx.commit();
    };
    apply(&mut am);
    let view = roster::view(&am).unwrap();
    assert_eq!(view.members.len(), 2);
    assert_eq!(view.code_of_conduct.text, "Be kind.");
    let shown = view
        .members
        .iter()
        .find(|m| m.member_id == mem.member)
        .unwrap();
    assert_eq!(shown.pseudonym, "Wren");
    assert_eq!(shown.role, Role::Member);
    r.m.set_role(&org, &g, &mem.member, Role::Recorder, T0)
        .unwrap();
    apply(&mut am);
    let heads = am.get_heads();
    apply(&mut am);
    assert_eq!(
        am.get_heads(),
        heads,
        "nothing to write when it already matches"
    );
    let view = roster::view(&am).unwrap();
    let shown = view
        .members
        .iter()
        .find(|m| m.member_id == mem.member)
        .unwrap();
    assert_eq!(shown.role, Role::Recorder);
}

fn doc_roster(m: &Membership, g: &GroupId) -> DocumentId {
    m.snapshot().groups[g].roster
}

fn reopen(r: &Relay) -> Membership {
    Membership::open(
        Arc::new(KvMembershipStore::new(r.store.clone())),
        Quotas::default(),
    )
    .unwrap()
}

fn kinds(m: &Membership, since: u64) -> Vec<AuditKind> {
    m.audit_since(since, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

#[test]
fn every_change_is_audited_in_order_by_id_only() {
    let r = relay();
    let m = &r.m;
    let (_, first) = m
        .bootstrap("CANARY-COC-ONE be kind", doc(1), 3600, T0)
        .unwrap();
    let red = m
        .redeem(None, &first.code, "CANARY-PSEUDO-ORG", T0)
        .unwrap();
    let org_token = red.token.clone().unwrap();
    let org = m.authenticate(&org_token).unwrap();
    let g = red.group.unwrap().group_id;
    m.accept_code_of_conduct(&org, &g, 1, T0).unwrap();
    let code = invite(m, &org, &g, Role::Member, 1);
    let red = m.redeem(None, &code, "CANARY-PSEUDO-MEM", T0).unwrap();
    let mem_token = red.token.clone().unwrap();
    let mem = m.authenticate(&mem_token).unwrap();
    m.accept_code_of_conduct(&mem, &g, 1, T0).unwrap();
    m.set_pseudonym(&mem, &g, "CANARY-PSEUDO-NEW", T0).unwrap();
    m.set_code_of_conduct(&org, &g, "CANARY-COC-TWO", T0)
        .unwrap();
    m.accept_code_of_conduct(&mem, &g, 2, T0).unwrap();
    m.set_role(&org, &g, &mem.member, Role::Facilitator, T0)
        .unwrap();
    m.suspend(&org, &g, &mem.member, T0).unwrap();
    m.reinstate(&org, &g, &mem.member, T0).unwrap();
    let link = m.create_link_code(&mem, T0).unwrap();
    let second = m.link_device(&link.code, T0).unwrap();
    let second_token = second.token.clone().unwrap();
    let second = m.authenticate(&second_token).unwrap();
    let rotated = m.rotate(&second, T0).unwrap();
    m.revoke_device(&second, &mem.device, T0).unwrap();
    m.remove(&second, &g, &second.member, T0).unwrap();
    let code2 = invite(m, &org, &g, Role::Member, 1);
    let third = m.redeem(None, &code2, "CANARY-PSEUDO-3", T0).unwrap();
    let third_id = m.authenticate(third.token.as_deref().unwrap()).unwrap();
    m.accept_code_of_conduct(&third_id, &g, 2, T0).unwrap();
    m.remove(&org, &g, &third_id.member, T0).unwrap();
    m.organiser_invite(&g, 3600, T0).unwrap();
    use AuditKind::*;
    assert_eq!(
        kinds(m, 0),
        vec![
            GroupCreated,
            OperatorInvite,
            InviteRedeemed,
            InviteCreated,
            InviteRedeemed,
            CodeOfConductChanged,
            RoleChanged,
            Suspended,
            Reinstated,
            DeviceLinked,
            CredentialRotated,
            DeviceRevoked,
            Left,
            InviteCreated,
            InviteRedeemed,
            Removed,
            OperatorInvite,
        ]
    );
    let all = m.audit_since(0, 10_000).unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    assert_eq!(all[0].actor, Actor::Operator);
    let redeemed = &all[4];
    assert_eq!(redeemed.member.as_ref(), Some(&mem.member));
    assert_eq!(redeemed.device.as_ref(), Some(&mem.device));
    assert_eq!(redeemed.group.as_ref(), Some(&g));
    assert_eq!(redeemed.role, Some(Role::Member));
    assert_eq!(all[6].role, Some(Role::Facilitator));
    assert_eq!(all[12].actor, Actor::member(&second));
    assert_eq!(m.audit_since(15, 1).unwrap()[0].seq, 16);
    // Nothing a person wrote or holds as a secret is in the log, as stored or as exported.
    let mut text: String = all.iter().map(|e| e.to_json_line() + "\n").collect();
    for (k, v) in r
        .store
        .inner
        .load_range(&[AUDIT_PREFIX.to_owned()])
        .unwrap()
    {
        text.push_str(&k.join("/"));
        text.push_str(&String::from_utf8_lossy(&v));
    }
    assert!(text.contains("invite_redeemed") && text.contains(mem.member.as_str()));
    let secret = |t: &str| t.rsplit('_').next().unwrap().to_owned();
    for canary in [
        "CANARY".to_owned(),
        first.code.clone(),
        code.clone(),
        code2.clone(),
        link.code.clone(),
        secret(&org_token),
        secret(&mem_token),
        secret(&second_token),
        secret(&rotated),
    ] {
        assert!(!text.contains(&canary), "{canary} is in the audit log");
    }
    // One JSON object per line.
    for line in text.lines().take(all.len()) {
        let back: AuditEntry = serde_json::from_str(line).unwrap();
        assert!(back.seq >= 1);
    }
}

#[test]
fn a_failed_commit_leaves_neither_the_change_nor_its_entry_and_reopening_continues() {
    let r = relay();
    let (org, g) = group(&r.m);
    let (mem, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 1), T0);
    let before = kinds(&r.m, 0);
    r.store.fail.store(true, Ordering::SeqCst);
    assert!(r.m.suspend(&org, &g, &mem.member, T0).is_err());
    assert!(r
        .m
        .record_audit(
            AuditKind::BackupTaken,
            Actor::Relay,
            None,
            None,
            None,
            None,
            T0
        )
        .is_err());
    r.store.fail.store(false, Ordering::SeqCst);
    assert_eq!(kinds(&r.m, 0), before);
    assert_eq!(kinds(&reopen(&r), 0), before);
    assert!(r.m.snapshot().allows(&mem, &doc(3), Operation::Read, T0));
    // After a restart the sequence goes on where it stopped.
    let last = r.m.audit_since(0, 10_000).unwrap().last().unwrap().seq;
    let reopened = reopen(&r);
    reopened
        .record_audit(
            AuditKind::CredentialFailed,
            Actor::Relay,
            None,
            Some(mem.member.clone()),
            None,
            Some(3),
            T0 + HOUR,
        )
        .unwrap();
    let after = reopened.audit_since(last, 10).unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].seq, last + 1);
    assert_eq!(after[0].count, Some(3));
    // Retention deletes old entries durably and keeps the newest, so the sequence goes on.
    assert_eq!(reopened.expire_audit(T0 + 2 * HOUR).unwrap(), last as usize);
    let reopened = reopen(&r);
    assert_eq!(kinds(&reopened, 0), vec![AuditKind::CredentialFailed]);
    reopened
        .record_audit(
            AuditKind::BackupTaken,
            Actor::Relay,
            None,
            None,
            None,
            None,
            T0,
        )
        .unwrap();
    assert_eq!(reopened.audit_since(last + 1, 10).unwrap()[0].seq, last + 2);
}

#[test]
fn the_operator_moderates_any_group_and_is_audited_as_the_operator() {
    let r = relay();
    let (org, g) = group(&r.m);
    let (mem, token, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 2), T0);
    let (other, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 1), T0);
    let op = Actor::Operator;
    let since = r.m.audit_since(0, 10_000).unwrap().len() as u64;
    r.m.suspend_as(&op, &g, &mem.member, T0).unwrap();
    assert!(!r.m.snapshot().allows(&mem, &doc(3), Operation::Read, T0));
    r.m.reinstate_as(&op, &g, &mem.member, T0).unwrap();
    r.m.revoke_device_as(&op, &mem.member, &mem.device, T0)
        .unwrap();
    assert!(r.m.authenticate(&token).is_err());
    r.m.remove_as(&op, &g, &other.member, T0).unwrap();
    assert!(!r.m.snapshot().allows(&other, &doc(3), Operation::Read, T0));
    // The operator too leaves a group an organiser; the relay acts on nobody's behalf.
    assert!(matches!(
        r.m.remove_as(&op, &g, &org.member, T0),
        Err(MembershipError::Conflict(_))
    ));
    assert!(matches!(
        r.m.suspend_as(&Actor::Relay, &g, &mem.member, T0),
        Err(MembershipError::Forbidden(_))
    ));
    // A member revokes only their own member's devices.
    assert!(matches!(
        r.m.revoke_device_as(&Actor::member(&org), &other.member, &other.device, T0),
        Err(MembershipError::NotFound)
    ));
    assert!(matches!(
        r.m.suspend_as(&op, &GroupId::from("nope"), &mem.member, T0),
        Err(MembershipError::NotFound)
    ));
    let entries = r.m.audit_since(since, 100).unwrap();
    let got: Vec<_> = entries.iter().map(|e| (e.kind, e.actor.clone())).collect();
    assert_eq!(
        got,
        vec![
            (AuditKind::Suspended, Actor::Operator),
            (AuditKind::Reinstated, Actor::Operator),
            (AuditKind::DeviceRevoked, Actor::Operator),
            (AuditKind::Removed, Actor::Operator),
        ]
    );
    let summaries = r.m.group_summaries();
    assert_eq!(summaries.len(), 1);
    let s = &summaries[0];
    assert_eq!(s.group, g);
    assert_eq!((s.members_active, s.members_total), (2, 3));
    assert_eq!(s.documents, 3, "roster, settings, index");
    assert_eq!(s.quota.documents, Quotas::default().documents_per_group);
    assert_eq!(s.quota.documents_used, 3);
    r.m.seed_document_sizes([(doc(2), 100), (doc(3), 50), (doc(99), 7)]);
    assert_eq!(r.m.group_summaries()[0].quota.bytes_used, 150);
}

fn engine_may(m: &Membership, who: &Identity, d: DocumentId, op: Operation) -> bool {
    use crate::engine::{Access, PeerInfo};
    let peer = who.peer_id();
    let text = peer.to_string();
    let info = PeerInfo {
        peer_id: &peer,
        identity: Some(&text),
    };
    m.access(T0)
        .allows(&info, &d, op, crate::time::Timestamp::from_millis(0))
}

#[test]
fn a_deleted_group_is_hidden_until_restored_and_a_purge_leaves_no_record_of_it() {
    let r = relay();
    let (org, g) = group(&r.m);
    let (mem, _, _) = join(&r.m, &invite(&r.m, &org, &g, Role::Member, 1), T0);
    let pending = invite(&r.m, &org, &g, Role::Member, 1);
    r.m.register_document(&mem, &g, doc(40), BoundKind::Thread, T0)
        .unwrap();
    // A second group that must survive the purge untouched.
    let (_, other_first) = r.m.bootstrap("Other.", doc(50), 3600, T0).unwrap();
    let (other_org, _, other) = join(&r.m, &other_first.code, T0);
    assert!(matches!(
        r.m.delete_group(&Actor::member(&mem), &g, T0),
        Err(MembershipError::Forbidden(_))
    ));
    r.m.delete_group(&Actor::member(&org), &g, T0 + 1).unwrap();
    for who in [&org, &mem] {
        assert!(!engine_may(&r.m, who, doc(40), Operation::Read));
        assert!(!engine_may(&r.m, who, doc(1), Operation::Read));
    }
    assert!(matches!(
        r.m.redeem(None, &pending, "Late", T0),
        Err(MembershipError::NotFound)
    ));
    assert!(r.m.organiser_invite(&g, 60, T0).is_err());
    assert_eq!(r.m.groups_of(&mem, T0).unwrap(), vec![]);
    let listed = r.m.groups_of(&org, T0).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].deleted_ms, Some(T0 + 1));
    assert_eq!(
        r.m.purge_due(T0 + 1 + HOUR - 1, HOUR),
        Vec::<GroupId>::new()
    );
    assert_eq!(r.m.purge_due(T0 + 1 + HOUR, HOUR), vec![g.clone()]);
    // The organiser restores it: access comes back as it was.
    r.m.restore_group(&Actor::member(&org), &g, T0 + 2).unwrap();
    assert!(engine_may(&r.m, &mem, doc(40), Operation::Read));
    assert!(engine_may(&r.m, &mem, doc(40), Operation::Write));
    assert_eq!(r.m.purge_due(T0 + 100 * HOUR, HOUR), Vec::<GroupId>::new());
    assert!(matches!(
        r.m.purge_group(&g, T0),
        Err(MembershipError::Conflict(_))
    ));
    // The operator deletes it, and the relay purges it after the grace period.
    r.m.delete_group(&Actor::Operator, &g, T0 + 3).unwrap();
    let purged = r.m.purge_group(&g, T0 + 4).unwrap();
    let mut docs = purged.documents.clone();
    docs.sort();
    assert_eq!(docs, vec![doc(1), doc(2), doc(3), doc(40)]);
    assert!(matches!(
        r.m.restore_group(&Actor::Operator, &g, T0 + 5),
        Err(MembershipError::NotFound)
    ));
    let keys = r.store.inner.load_range(&[KEY_PREFIX.to_owned()]).unwrap();
    for (k, v) in &keys {
        let text = format!("{}{}", k.join("/"), String::from_utf8_lossy(v));
        assert!(
            !text.contains(g.as_str()),
            "{} still names the group",
            k.join("/")
        );
        for d in &docs {
            assert!(
                !text.contains(&d.to_string()),
                "{} names a purged document",
                k.join("/")
            );
        }
    }
    assert!(engine_may(&r.m, &other_org, doc(50), Operation::Read));
    assert_eq!(reopen(&r).snapshot(), r.m.snapshot());
    assert!(reopen(&r).snapshot().groups.contains_key(&other));
    let tail: Vec<_> = kinds(&r.m, 0).into_iter().rev().take(4).collect();
    assert_eq!(
        tail,
        vec![
            AuditKind::GroupPurged,
            AuditKind::GroupDeleted,
            AuditKind::GroupRestored,
            AuditKind::GroupDeleted
        ]
    );
}

#[test]
fn group_records_written_before_deletion_existed_still_load() {
    let old = r#"{"table":"group","id":"0011223344556677","coc_version":1,"coc_text":"","created_ms":5,"roster":"2ZN3Ly1GaBVPMzRX6fbW6rzKfhxd","settings":null,"index":null}"#;
    let roster = doc(1).to_string();
    let old = old.replace("2ZN3Ly1GaBVPMzRX6fbW6rzKfhxd", &roster);
    let Record::Group(g) = serde_json::from_str::<Record>(&old).unwrap() else {
        panic!("not a group");
    };
    assert_eq!(g.deleted_ms, None);
}

#[test]
fn an_erased_member_is_gone_from_everything_served_and_their_documents_stay() {
    let r = relay();
    let (org, g) = group(&r.m);
    let code = invite(&r.m, &org, &g, Role::Member, 1);
    let red = r.m.redeem(None, &code, "CANARY-ERASED", T0).unwrap();
    let token = red.token.unwrap();
    let mem = r.m.authenticate(&token).unwrap();
    r.m.accept_code_of_conduct(&mem, &g, 1, T0).unwrap();
    r.m.register_document(&mem, &g, doc(41), BoundKind::Thread, T0)
        .unwrap();
    r.m.register_document(&mem, &g, doc(42), BoundKind::Report, T0)
        .unwrap();
    let link = r.m.create_link_code(&mem, T0).unwrap();
    let second = r.m.link_device(&link.code, T0).unwrap();
    let second = r.m.authenticate(second.token.as_deref().unwrap()).unwrap();
    // A second group, where the member is suspended.
    let (_, first2) = r.m.bootstrap("Two.", doc(60), 3600, T0).unwrap();
    let (org2, _, g2) = join(&r.m, &first2.code, T0);
    let code2 = invite(&r.m, &org2, &g2, Role::Member, 1);
    r.m.redeem(Some(&mem), &code2, "CANARY-ERASED-2", T0)
        .unwrap();
    r.m.suspend(&org2, &g2, &mem.member, T0).unwrap();
    // The export lists exactly what the relay holds about them.
    let export = r.m.export_member(&mem, T0).unwrap();
    assert_eq!(export.member_id, mem.member);
    let mut groups: Vec<_> = export
        .memberships
        .iter()
        .map(|m| m.group_id.clone())
        .collect();
    groups.sort();
    let mut expected = vec![g.clone(), g2.clone()];
    expected.sort();
    assert_eq!(groups, expected);
    assert!(export
        .memberships
        .iter()
        .any(|m| m.member.pseudonym == "CANARY-ERASED"));
    let mut devices: Vec<_> = export.devices.iter().map(|d| d.device_id.clone()).collect();
    devices.sort();
    let mut expected = vec![mem.device.clone(), second.device.clone()];
    expected.sort();
    assert_eq!(devices, expected);
    let mut readable: Vec<_> = export.documents.iter().map(|d| d.document_id).collect();
    readable.sort();
    assert_eq!(
        readable,
        vec![doc(1), doc(2), doc(3), doc(41), doc(42)],
        "group one's documents; none of the group they are suspended from"
    );
    let audit: Vec<_> = export.audit.iter().map(|e| e.kind).collect();
    assert_eq!(
        audit,
        vec![
            AuditKind::InviteRedeemed,
            AuditKind::DeviceLinked,
            AuditKind::InviteRedeemed,
            AuditKind::Suspended
        ]
    );
    assert!(export.audit.iter().all(|e| e.concerns(&mem.member)));
    // Only the member themself or the operator erases.
    assert!(matches!(
        r.m.erase_member(&Actor::member(&org), &mem.member, T0),
        Err(MembershipError::Forbidden(_))
    ));
    let old_roster = doc_roster(&r.m, &g);
    let erased =
        r.m.erase_member(&Actor::member(&second), &mem.member, T0 + 1)
            .unwrap();
    let mut eg = erased.groups.clone();
    eg.sort();
    assert_eq!(eg, groups);
    assert!(erased.old_rosters.contains(&old_roster));
    assert!(erased.old_rosters.contains(&doc(60)));
    assert!(r.m.authenticate(&token).is_err());
    assert!(r.m.export_member(&second, T0).is_err());
    assert!(r
        .m
        .members(&org, &g, T0)
        .unwrap()
        .iter()
        .all(|m| m.member_id != mem.member));
    // The roster is served under a new id and never names them; the old one is unbound.
    let new_roster = doc_roster(&r.m, &g);
    assert_ne!(new_roster, old_roster);
    assert!(engine_may(&r.m, &org, new_roster, Operation::Read));
    assert!(!engine_may(&r.m, &org, old_roster, Operation::Read));
    let view = format!("{:?}", r.m.roster_view(&g).unwrap());
    assert!(!view.contains("CANARY") && !view.contains(mem.member.as_str()));
    for (_, v) in r.store.inner.load_range(&[KEY_PREFIX.to_owned()]).unwrap() {
        assert!(!String::from_utf8_lossy(&v).contains("CANARY"));
    }
    // What they posted stays; their report stays readable by facilitators.
    let snap = r.m.snapshot();
    assert!(snap.bindings.contains_key(&doc(41)) && snap.bindings.contains_key(&doc(42)));
    assert!(engine_may(&r.m, &org, doc(42), Operation::Read));
    assert_eq!(
        kinds(&r.m, 0).last(),
        Some(&AuditKind::MemberErased),
        "audited"
    );
    assert!(matches!(
        r.m.erase_member(&Actor::Operator, &mem.member, T0 + 2),
        Err(MembershipError::NotFound)
    ));
    assert_eq!(reopen(&r).snapshot(), r.m.snapshot());
}

#[test]
fn quotas_refuse_with_the_limit_reached_and_keep_what_was_bound() {
    let store = Arc::new(Failing::default());
    let quotas = Quotas {
        documents_per_group: 7,
        documents_per_member_per_hour: 3,
        bytes_per_group: 1_000,
        ..Quotas::default()
    };
    let m = Membership::open(Arc::new(KvMembershipStore::new(store.clone())), quotas).unwrap();
    let (org, g) = group(&m);
    let (mem, _, _) = join(&m, &invite(&m, &org, &g, Role::Member, 1), T0);
    for n in 10..13 {
        m.register_document(&mem, &g, doc(n), BoundKind::Thread, T0)
            .unwrap();
    }
    let refused = m
        .register_document(&mem, &g, doc(13), BoundKind::Thread, T0 + 1)
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "quota exceeded: documents per member per hour"
    );
    assert_eq!(refused.status(), 429);
    // An hour later the member may again; the group is then full.
    m.register_document(&mem, &g, doc(13), BoundKind::Thread, T0 + HOUR)
        .unwrap();
    let refused = m
        .register_document(&mem, &g, doc(14), BoundKind::Thread, T0 + HOUR)
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "quota exceeded: documents in this group"
    );
    assert!(matches!(
        m.set_group_quota(&Actor::member(&org), &g, Some(100), None, T0),
        Err(MembershipError::Forbidden(_))
    ));
    let q = m
        .set_group_quota(&Actor::Operator, &g, Some(100), None, T0)
        .unwrap();
    assert_eq!((q.documents, q.documents_used, q.bytes), (100, 7, 1_000));
    m.register_document(&mem, &g, doc(14), BoundKind::Thread, T0 + HOUR)
        .unwrap();
    // Bytes: the engine reports sizes through the access policy it was given.
    let access = m.access(T0);
    use crate::engine::Access;
    access.document_stored(&doc(10), 600);
    assert!(access.may_grow(&doc(11), 400));
    assert!(!access.may_grow(&doc(11), 401));
    access.document_stored(&doc(11), 400);
    assert_eq!(m.group_quota(&g).unwrap().bytes_used, 1_000);
    let refused = m
        .register_document(&mem, &g, doc(15), BoundKind::Thread, T0 + HOUR)
        .unwrap_err();
    assert_eq!(refused.to_string(), "quota exceeded: bytes in this group");
    m.set_group_quota(&Actor::Operator, &g, Some(100), Some(5_000), T0)
        .unwrap();
    assert!(access.may_grow(&doc(11), 4_000));
    m.register_document(&mem, &g, doc(15), BoundKind::Thread, T0 + HOUR)
        .unwrap();
    // Nothing bound earlier was lost along the way, and the overrides are durable.
    let snap = m.snapshot();
    for n in [2, 3, 10, 11, 12, 13, 14, 15] {
        assert!(
            snap.bindings.contains_key(&doc(n)),
            "document {n} stays bound"
        );
    }
    let reopened = Membership::open(
        Arc::new(KvMembershipStore::new(store.clone())),
        Quotas::default(),
    )
    .unwrap();
    assert_eq!(reopened.group_quota(&g).unwrap().bytes, 5_000);
    assert_eq!(reopened.group_quota(&g).unwrap().documents, 100);
    // Clearing the override brings back the defaults.
    m.set_group_quota(&Actor::Operator, &g, None, None, T0)
        .unwrap();
    assert!(m.snapshot().quotas.is_empty());
    assert_eq!(m.group_quota(&g).unwrap().documents, 7);
    assert!(kinds(&m, 0).contains(&AuditKind::QuotaChanged));
}

/// A membership on `store` (a plain memory store: the restore tests copy it).
fn open_on(store: &Arc<MemoryStore>) -> Membership {
    Membership::open(
        Arc::new(KvMembershipStore::new(store.clone())),
        Quotas::default(),
    )
    .unwrap()
}

/// A copy of every key: what a backup holds.
fn copy_of(store: &MemoryStore) -> Arc<MemoryStore> {
    let copy = Arc::new(MemoryStore::default());
    for (k, v) in store.load_range(&[]).unwrap() {
        copy.put(&k, &v).unwrap();
    }
    copy
}

#[test]
fn a_replayed_log_keeps_later_removals_and_revocations_and_later_devices_redeem_again() {
    let live_store = Arc::new(MemoryStore::default());
    let live = open_on(&live_store);
    let (_, first) = live
        .bootstrap("Be kind.", DocumentId::from_bytes([1; 16]), 3600, T0)
        .unwrap();
    let (org, org_token, g) = join(&live, &first.link, T0);
    let code = invite(&live, &org, &g, Role::Member, 3);
    let (removed, _, _) = join(&live, &code, T0);
    let (revoked, revoked_token, _) = join(&live, &code, T0);
    let (erased, erased_token, _) = join(&live, &code, T0);
    let later_code = invite(&live, &org, &g, Role::Member, 1);

    let at_backup = copy_of(&live_store);

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
    let restored = open_on(&copy_of(&at_backup));
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
    let as_of = open_on(&copy_of(&at_backup));
    let kept = as_of.after_restore(None, t1 + 1000).unwrap();
    assert_eq!(kept.applied, 0);
    assert!(as_of.snapshot().may_see(&g, &removed.member, now));
    assert!(as_of.authenticate(&revoked_token).is_ok());
    assert!(as_of.authenticate(&erased_token).is_ok());
    assert!(kept.codes_closed >= 2);
}

// ------------------------------------------------------------------ relays sharing a store

/// One memory store written by several relays: shared, with a lock every holder of the
/// store sees (a `Mutex<bool>` and a `Condvar`, as a database's advisory lock), and batches
/// applied under a write lock so a reader never sees half of one (a database transaction).
#[derive(Default)]
struct Shared {
    inner: MemoryStore,
    batch: std::sync::RwLock<()>,
    lock: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

/// Holds [`Shared`]'s lock; dropping it releases the lock.
struct SharedGuard(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Drop for SharedGuard {
    fn drop(&mut self) {
        let (held, freed) = &*self.0;
        *held.lock().unwrap() = false;
        freed.notify_one();
    }
}

impl Storage for Shared {
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
        let _read = self.batch.read().unwrap();
        self.inner.load(key)
    }
    fn load_range(&self, p: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
        let _read = self.batch.read().unwrap();
        self.inner.load_range(p)
    }
    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
        self.inner.put(key, data)
    }
    fn delete(&self, key: &[String]) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn write_batch(&self, writes: &[(StorageKey, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        let _write = self.batch.write().unwrap();
        self.inner.write_batch(writes)
    }
    fn is_shared(&self) -> bool {
        true
    }
    fn lock_shared(&self, name: &str) -> Result<Option<crate::store::SharedLock>, StoreError> {
        assert_eq!(name, SHARED_LOCK);
        let (held, freed) = &*self.lock;
        let mut h = held.lock().unwrap();
        while *h {
            h = freed.wait(h).unwrap();
        }
        *h = true;
        Ok(Some(Box::new(SharedGuard(self.lock.clone()))))
    }
}

/// Two relays' membership over one shared store.
fn two_relays() -> (Membership, Membership) {
    let store = Arc::new(Shared::default());
    let open = || {
        Membership::open(
            Arc::new(KvMembershipStore::new(store.clone())),
            Quotas::default(),
        )
        .unwrap()
    };
    (open(), open())
}

/// Two relays' membership over one shared store, a group made on A with a second member
/// of `role` who joined through A, and B reloaded since: (A, B, the organiser, the group,
/// the member, the member's token).
struct TwoWithMember {
    a: Membership,
    b: Membership,
    org: Identity,
    g: GroupId,
    ash: Identity,
    token: String,
}

fn two_relays_with_member(role: Role) -> TwoWithMember {
    let (a, b) = two_relays();
    let (org, g) = group(&a);
    let code = invite(&a, &org, &g, role, 1);
    let (ash, token, _) = join(&a, &code, T0);
    b.reload().unwrap();
    b.take_external_changes();
    TwoWithMember {
        a,
        b,
        org,
        g,
        ash,
        token,
    }
}

#[test]
fn a_group_and_an_invite_made_on_one_relay_are_seen_on_another_after_a_reload() {
    let (a, b) = two_relays();
    let (org, g) = group(&a);
    assert!(!b.has_groups());
    assert!(b.reload().unwrap());
    assert!(b.has_groups());
    let seen = b.take_external_changes();
    assert!(seen.changed);
    assert!(!b.reload().unwrap(), "a second reload finds nothing new");
    assert!(b.take_external_changes().is_empty());

    let code = invite(&a, &org, &g, Role::Member, 1);
    assert!(b.invite_preview(&code, T0).is_err(), "not reloaded yet");
    assert!(b.reload().unwrap());
    assert!(b.invite_preview(&code, T0).is_ok());
    // Redeemed on B: A sees the new member after its own reload.
    let (ash, _, _) = join(&b, &code, T0);
    assert!(a.reload().unwrap());
    assert!(a
        .members(&org, &g, T0)
        .unwrap()
        .iter()
        .any(|m| m.member_id == ash.member));
    assert_eq!(a.snapshot(), b.snapshot());
}

#[test]
fn a_member_removed_on_one_relay_loses_access_on_another_after_a_reload() {
    let TwoWithMember {
        a, b, org, g, ash, ..
    } = two_relays_with_member(Role::Member);
    assert!(engine_may(&b, &ash, doc(3), Operation::Read));

    a.remove(&org, &g, &ash.member, T0).unwrap();
    assert!(
        engine_may(&b, &ash, doc(3), Operation::Read),
        "B holds the old state"
    );
    assert!(b.reload().unwrap());
    assert!(!engine_may(&b, &ash, doc(3), Operation::Read));
    let changes = b.take_external_changes();
    assert!(changes.reduces_access);
    assert!(changes.members.contains(&ash.member), "their sockets close");
    assert!(changes.rosters.contains(&g), "the roster shows the removal");
    assert!(!changes.members.contains(&org.member));
}

#[test]
fn a_device_revoked_on_one_relay_is_refused_on_another_after_a_reload() {
    let TwoWithMember {
        a, b, ash, token, ..
    } = two_relays_with_member(Role::Member);
    assert!(b.authenticate(&token).is_ok());
    a.revoke_device(&ash, &ash.device, T0).unwrap();
    assert!(b.reload().unwrap());
    assert!(b.authenticate(&token).is_err());
    let changes = b.take_external_changes();
    assert!(changes.devices.contains(&ash));
}

#[test]
fn concurrent_changes_on_two_relays_lose_nothing_and_number_the_audit_without_gaps() {
    let (a, b) = two_relays();
    let (org, g) = group(&a);
    b.reload().unwrap();
    let before = a.audit_since(0, usize::MAX).unwrap().len();
    let invites_before = a.snapshot().invites.len();
    std::thread::scope(|s| {
        for m in [&a, &b, &a, &b] {
            let (org, g) = (&org, &g);
            s.spawn(move || {
                for _ in 0..10 {
                    invite(m, org, g, Role::Member, 1);
                }
            });
        }
    });
    let audit = b.audit_since(0, usize::MAX).unwrap();
    assert_eq!(audit.len(), before + 40);
    let seqs: Vec<u64> = audit.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=audit.len() as u64).collect();
    assert_eq!(seqs, expected, "distinct and without gaps");
    a.reload().unwrap();
    b.reload().unwrap();
    assert_eq!(a.snapshot().invites.len(), invites_before + 40);
    assert_eq!(a.snapshot(), b.snapshot());
}

#[test]
fn a_change_on_one_relay_is_checked_against_the_other_relays_last_change() {
    let TwoWithMember {
        a,
        b,
        org,
        g,
        ash: second,
        ..
    } = two_relays_with_member(Role::Organiser);
    invite(&b, &second, &g, Role::Member, 1);

    // A removes the second organiser; B has not reloaded, yet refuses their invite.
    a.remove(&org, &g, &second.member, T0).unwrap();
    let refused = b.create_invite(
        &second,
        &g,
        &CreateInvite {
            role: Role::Member,
            expires_in_secs: 3600,
            max_uses: 1,
            meeting: None,
            access_expires_in_secs: None,
        },
        T0,
    );
    assert!(refused.is_err(), "checked against A's removal");
    // The change's own reload counts as a reload: the relay still learns what to close.
    assert!(b.take_external_changes().members.contains(&second.member));
}

#[test]
fn a_store_only_one_relay_writes_is_never_reread_by_a_change() {
    let r = relay();
    let (org, g) = group(&r.m);
    // Written behind the service's back: a change on an unshared store does not see it.
    let other = Membership::open(
        Arc::new(KvMembershipStore::new(r.store.clone())),
        Quotas::default(),
    )
    .unwrap();
    invite(&other, &org, &g, Role::Member, 1);
    let held = r.m.snapshot().invites.len();
    invite(&r.m, &org, &g, Role::Member, 1);
    assert_eq!(
        r.m.snapshot().invites.len(),
        held + 1,
        "the other write is not read"
    );
}
