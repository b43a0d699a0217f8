//! The relay's membership: the service, its rate limiters, and what happens after a change
//! that takes access away (the engine re-checks every connection, affected sockets close,
//! and the call answers only once they are gone), including when a guest's access expires.

use std::sync::Arc;
use std::time::Duration;

use cairn_sync::ids::{ConnectionId, MemberId};
use cairn_sync::membership::{GroupId, MemberStatus, Membership};
use cairn_sync::runtime::Host;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::{now_ms, ApiError};
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
            .call(move |engine, now| engine.update_document(now, doc, update))
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
        let closed = self.revalidate().await;
        let mut closing = self.sockets.of_connections(&closed);
        let mut revoked = closed.len();
        if let Some(whose) = &whose {
            let theirs = self.sockets.revoke(whose);
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
        self.host
            .call(|engine, now| engine.revalidate_access(now))
            .await
            .unwrap_or_default()
    }
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

/// Destroys a deleted group after its grace period: its membership in one durable commit
/// (`Membership::purge_group`), then the engine forgets its documents (deleting their keys)
/// and the store is rewritten so that none of their bytes stay readable in the data
/// directory. Returns how many documents were destroyed.
///
/// Minimal version added with the admin API (its hourly purge and nothing else calls it);
/// the lead owns this file and may reshape it.
pub(crate) async fn purge(state: &AppState, group: &GroupId) -> Result<usize, ApiError> {
    let membership = state.members()?.membership.clone();
    let gr = group.clone();
    let purged = tokio::task::spawn_blocking(move || membership.purge_group(&gr, now_ms()))
        .await
        .map_err(|_| ApiError::unavailable("the relay failed this call; try again"))??;
    state.changed("group_purged");
    // Nobody could see the group since its deletion; any connection still holding one of
    // its documents is closed by the forget below.
    state.access_reduced(None).await;
    let docs = purged.documents.clone();
    let n = docs.len();
    state
        .host
        .call(move |engine, _| {
            for doc in docs {
                engine.forget_document(doc);
            }
        })
        .await
        .map_err(|_| ApiError::unavailable("the sync engine stopped"))?;
    // Runs after the deletes queued above: the storage thread takes tasks in order.
    let store = state.store.clone();
    match state.host.exclusive(move || store.rewrite()).await {
        Ok(Ok(report)) => {
            tracing::info!(group = %group, documents = n, keys = report.keys, bytes = report.bytes, "group purged; store rewritten")
        }
        Ok(Err(e)) => {
            tracing::error!(group = %group, error = %e, "group purged but the store rewrite failed; it runs again at the next purge")
        }
        Err(_) => return Err(ApiError::unavailable("the sync engine stopped")),
    }
    Ok(n)
}
