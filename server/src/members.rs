//! The relay's membership: the service, its rate limiters, and what happens after a change
//! that takes access away (the engine re-checks every connection, affected sockets close,
//! and the call answers only once they are gone), including when a guest's access expires.

use std::sync::Arc;
use std::time::Duration;

use cairn_sync::ids::{ConnectionId, DocumentId, MemberId};
use cairn_sync::membership::api::{Erased, Purged};
use cairn_sync::membership::{Actor, GroupId, MemberStatus, Membership};
use cairn_sync::runtime::Host;
use cairn_sync::store::Storage;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::{blocking, now_ms, ApiError};
use crate::limits::{Limited, Limiters, HOUSEKEEPING_EVERY};
use crate::sockets::{Sockets, Whose};
use crate::AppState;

/// Membership and what guards it.
#[derive(Debug)]
pub struct Members {
    /// The membership service.
    pub membership: Membership,
    pub(crate) limiters: Limiters,
    /// Woken after every change, so the guest-expiry task looks again at the next expiry.
    pub(crate) expiry: Notify,
}

impl Members {
    pub(crate) fn new(membership: Membership, limiters: Limiters) -> Members {
        Members {
            membership,
            limiters,
            expiry: Notify::new(),
        }
    }
}

/// Queues the rewrite of `group`'s roster document in the engine (`Engine::update_document`).
/// The update reads the membership state when it runs, so rewrites that overtake each other
/// still end with the latest view; a rewrite lost to a failed write is made again by the
/// next change of the group or at the next start.
pub(crate) fn write_roster(host: &Host, membership: &Membership, group: &GroupId) {
    let Some((doc, update)) = membership.roster_update(group) else {
        return;
    };
    let host = host.clone();
    tokio::spawn(async move {
        let _ = host
            .call_doc(doc, move |engine, now| {
                engine.update_document(now, doc, update)
            })
            .await;
    });
}

impl AppState {
    /// The membership, or 404 on a relay in `--open` mode (it serves none).
    pub(crate) fn members(&self) -> Result<&Arc<Members>, ApiError> {
        self.members.as_ref().ok_or_else(ApiError::not_found)
    }

    /// Counts a refusal by a rate limit and turns it into the 429 answer.
    pub(crate) fn limited(&self, limited: Limited) -> ApiError {
        self.metrics
            .rate_limited
            .get_or_create(&vec![("limit", limited.limit.label())])
            .inc();
        ApiError::rate_limited(limited)
    }

    /// Counts a membership change of `kind`, and wakes the guest-expiry task (a change
    /// may add or move the next expiry).
    pub(crate) fn changed(&self, kind: &'static str) {
        self.metrics
            .membership_changes
            .get_or_create(&vec![("kind", kind)])
            .inc();
        if let Some(members) = &self.members {
            members.expiry.notify_one();
        }
    }

    /// The membership view of `group` changed (members, roles, statuses, pseudonyms,
    /// acceptances or the code of conduct): the relay rewrites the group's roster document.
    ///
    /// The hook where the roster document is written (through `Engine::update_document`
    /// and the model's roster reconciliation); a no-op until that lands.
    pub(crate) fn roster_changed(&self, group: &GroupId) {
        if let Some(members) = &self.members {
            write_roster(&self.host, &members.membership, group);
        }
    }

    /// After a committed change that took access away: the engine re-checks every
    /// connection (closing those no longer allowed and dropping documents no longer
    /// readable), the sockets of `whose` are closed whatever the engine decided, and this
    /// returns once every closed socket has ended (bounded by
    /// [`CLOSE_WAIT`](crate::sockets::CLOSE_WAIT) per round).
    pub(crate) async fn access_reduced(&self, whose: Option<Whose>) {
        self.access_reduced_of(whose.as_slice()).await;
    }

    /// [`access_reduced`](Self::access_reduced) for several members and devices at once
    /// (one re-check of every connection for all of them).
    async fn access_reduced_of(&self, whose: &[Whose]) {
        let closed = self.revalidate().await;
        let mut closing = self.sockets.of_connections(&closed);
        let mut revoked = closed.len();
        for whose in whose {
            let theirs = self.sockets.revoke(whose, &closed);
            revoked += theirs.outside(&closed);
            closing = Sockets::union(closing, theirs);
        }
        self.metrics.access_revocations.inc_by(revoked as u64);
        if !closing.is_empty() {
            let aborted = self.sockets.wait_closed(&closing).await;
            tracing::info!(
                sockets = revoked,
                aborted,
                "closed sockets whose access was taken away"
            );
        }
        if let Some(members) = &self.members {
            members.expiry.notify_one();
        }
    }

    /// Has the engine re-check every connection against the membership now; returns the
    /// connections it closed.
    async fn revalidate(&self) -> Vec<ConnectionId> {
        // An engine that has stopped is closing every socket anyway.
        // The door (which ran every handshake) first: the connections it closes are gone
        // from every shard before they re-check theirs (a task hears of another's close
        // before its next call), so each socket gets one `error` and one close. Then every
        // task re-checks what it serves (documents no longer readable, read-only ones).
        let mut closed = self
            .host
            .call(|engine, now| engine.revalidate_access(now))
            .await
            .unwrap_or_default();
        closed.extend(
            self.host
                .call_all(|engine, now| engine.revalidate_access(now))
                .await
                .unwrap_or_default()
                .into_iter()
                .flatten(),
        );
        closed.sort_unstable();
        closed.dedup();
        closed
    }
}

/// Brings in what other relays sharing the store changed in the membership, and does what
/// this relay does after the same changes made here: the engine re-checks every connection
/// when access may have shrunk, the sockets of members who were suspended, removed, left or
/// erased and of devices revoked or rotated are closed (this returns once they are gone),
/// documents no longer bound are forgotten, and the rosters of groups whose membership view
/// changed are rewritten (an update of a roster that already matches writes nothing).
/// Returns whether anything had changed. The cluster calls it on a hint from another relay
/// and on its sweep; on a relay that alone writes its store, it finds nothing.
pub async fn reload(state: &AppState) -> Result<bool, ApiError> {
    let members = state.members()?.clone();
    let membership = members.membership.clone();
    let changes = blocking(move || {
        membership.reload()?;
        Ok(membership.take_external_changes())
    })
    .await?;
    if changes.is_empty() {
        return Ok(false);
    }
    tracing::info!(
        members = changes.members.len(),
        devices = changes.devices.len(),
        rosters = changes.rosters.len(),
        unbound = changes.unbound.len(),
        "membership changed on another relay"
    );
    let whose: Vec<Whose> = changes
        .members
        .into_iter()
        .map(Whose::Member)
        .chain(changes.devices.into_iter().map(Whose::Device))
        .collect();
    if changes.reduces_access || !whose.is_empty() {
        state.access_reduced_of(&whose).await;
    } else {
        // New guests may bring an earlier expiry.
        members.expiry.notify_one();
    }
    forget_documents(state, changes.unbound.into_iter().collect()).await;
    for group in &changes.rosters {
        write_roster(&state.host, &members.membership, group);
    }
    Ok(true)
}

/// Runs until `stop`: sleeps until the next guest expiry (or a change), then closes the
/// sockets of every guest whose access ended and has the engine re-check the rest.
pub(crate) async fn expire_guests(state: AppState, members: Arc<Members>, stop: CancellationToken) {
    let mut checked = now_ms();
    loop {
        let next = members.membership.next_expiry(checked);
        let wait = match next {
            // One millisecond past the expiry: access ends at `expires_ms` itself.
            Some(t) => Duration::from_millis(t.saturating_sub(now_ms()).saturating_add(1)),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = members.expiry.notified() => continue,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = now_ms();
        let expired = expired_between(&members.membership, checked, now);
        checked = now;
        if expired.is_empty() {
            continue;
        }
        state.changed_by(expired.len(), "guest_expired");
        tracing::info!(guests = expired.len(), "guest access expired");
        for member in expired {
            state.access_reduced(Some(Whose::Member(member))).await;
        }
    }
}

/// Members whose guest access ended in `(after, until]`.
fn expired_between(membership: &Membership, after: u64, until: u64) -> Vec<MemberId> {
    let mut members: Vec<MemberId> = membership
        .snapshot()
        .memberships
        .values()
        .filter(|m| m.status == MemberStatus::Active)
        .filter(|m| m.expires_ms.is_some_and(|t| t > after && t <= until))
        .map(|m| m.member.clone())
        .collect();
    members.sort();
    members.dedup();
    members
}

impl AppState {
    fn changed_by(&self, n: usize, kind: &'static str) {
        self.metrics
            .membership_changes
            .get_or_create(&vec![("kind", kind)])
            .inc_by(n as u64);
    }
}

/// Runs until `stop`: drops rate-limit keys whose buckets have refilled.
pub(crate) async fn limiter_housekeeping(members: Arc<Members>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => members.limiters.housekeeping(),
        }
    }
}

// ------------------------------------------------------------------ erasure and deletion

/// Erases `member`'s account (their own request through `DELETE /v1/me`, or the
/// operator's): the membership commits the erasure (devices, memberships and link codes
/// gone; every group they were in gets a new roster document), their sockets are closed,
/// the old roster documents — whose Automerge history still holds the pseudonym — are
/// forgotten, the new ones written, and the store is rewritten so that no deleted byte
/// stays readable in the data directory. Answers once the sockets are closed and the old
/// rosters forgotten; the rewrite runs after.
pub(crate) async fn erase(
    state: &AppState,
    actor: Actor,
    member: MemberId,
) -> Result<Erased, ApiError> {
    let membership = state.members()?.membership.clone();
    let m = member.clone();
    let erased = blocking(move || membership.erase_member(&actor, &m, now_ms())).await?;
    state.changed("member_erased");
    tracing::info!(
        member = %member,
        groups = erased.groups.len(),
        "member erased"
    );
    state
        .access_reduced(Some(Whose::Member(member.clone())))
        .await;
    forget_documents(state, erased.old_rosters.clone()).await;
    for group in &erased.groups {
        state.roster_changed(group);
    }
    state.destroy_deleted_data(erased.old_rosters.clone());
    Ok(erased)
}

/// Destroys `group` for good (its grace period is over): its records go in one durable
/// commit, every document bound to it is forgotten (the engine closes its syncs and
/// deletes its keys), then the store is rewritten so that a byte search of the data
/// directory finds nothing of it. Returns once all of that is done.
pub async fn purge(state: &AppState, group: &GroupId, now_ms: u64) -> Result<Purged, ApiError> {
    let membership = state.members()?.membership.clone();
    let g = group.clone();
    let purged = blocking(move || membership.purge_group(&g, now_ms)).await?;
    state.changed("group_purged");
    tracing::info!(group = %group, documents = purged.documents.len(), "group destroyed after its grace period");
    // Unbound documents are nobody's: the engine drops them from every connection.
    state.access_reduced(None).await;
    forget_documents(state, purged.documents.clone()).await;
    rewrite_store(state, purged.documents.clone()).await?;
    Ok(purged)
}

/// Purges every group whose grace period ended by `now_ms`; returns how many. The relay's
/// hourly task calls it with the wall clock; tests call it with a clock of their own.
pub async fn purge_due(state: &AppState, now_ms: u64) -> Result<usize, ApiError> {
    let grace_ms = state.config.group_deletion_grace.as_millis();
    let grace_ms = u64::try_from(grace_ms).unwrap_or(u64::MAX);
    let due = state.members()?.membership.purge_due(now_ms, grace_ms);
    for group in &due {
        purge(state, group, now_ms).await?;
    }
    Ok(due.len())
}

/// Has the engine forget `docs`: dropped from memory and from every connection, their
/// keys deleted through the storage thread.
async fn forget_documents(state: &AppState, docs: Vec<DocumentId>) {
    if docs.is_empty() {
        return;
    }
    // Each on the task that serves it; every call returns once its deletes are queued.
    for doc in docs {
        let _ = state
            .host
            .call_doc(doc, move |engine, _| engine.forget_document(doc))
            .await;
    }
}

/// Rewrites the store on the storage thread (every other store call waits): first deletes
/// whatever is left under `docs` (the engine's deletes were queued before this and have
/// run; this makes the order not matter), then copies the live data into a fresh store
/// and removes the old files, so deleted bytes are gone from the data directory.
async fn rewrite_store(state: &AppState, docs: Vec<DocumentId>) -> Result<(), ApiError> {
    let store = state.store.clone();
    let done = state
        .host
        .exclusive(move || {
            for doc in &docs {
                Storage::delete_range(&store, &[doc.to_string()])?;
            }
            Storage::flush(&store)?;
            store.rewrite()
        })
        .await;
    match done {
        Ok(Ok(report)) => {
            tracing::info!(
                keys = report.keys,
                bytes = report.bytes,
                "store rewritten: deleted data destroyed"
            );
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "rewriting the store failed; deleted data may stay in its files until the next rewrite");
            Err(ApiError::unavailable(
                "the relay could not rewrite its store; try again",
            ))
        }
        Err(_) => Err(ApiError::unavailable("the relay is stopping")),
    }
}

impl AppState {
    /// Rewrites the store in the background (after an erasure: the call has answered).
    pub(crate) fn destroy_deleted_data(&self, docs: Vec<DocumentId>) {
        let state = self.clone();
        tokio::spawn(async move {
            let _ = rewrite_store(&state, docs).await;
        });
    }
}

/// Runs until `stop`: every hour (and once at start), purges the groups whose deletion
/// grace period has ended.
pub(crate) async fn purge_deleted_groups(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = purge_due(&state, now_ms()).await {
                    tracing::warn!(status = e.status().as_u16(), "purging deleted groups failed; retrying in an hour");
                }
            }
        }
    }
}

/// How often the relay looks for deleted groups past their grace period.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
