//! The device's connections and what it holds: each relay's state, "sync now" for a
//! background task, and leaving a group with its documents wiped from the device.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use automerge::Automerge;
use cairn_sync::ids::DocumentId;
use cairn_sync::membership::api::GroupInfo;
use cairn_sync::membership::GroupId;
use cairn_sync::store::Storage;

use crate::app::{Cairn, CairnError, Listener, Subscription};
use crate::model::{index, series};

pub use cairn_sync::client::ConnectionState;

/// Where the device stands with one relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayStatus {
    /// The relay's websocket URL.
    pub url: String,
    /// Offline, connecting, online, or unauthorised (enrol again or restore the credential).
    pub state: ConnectionState,
}

/// What [`Cairn::sync_now`] got done before it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// Documents on the device the relays have shown they hold entirely.
    pub synced: u32,
    /// Documents with changes no relay has acknowledged yet (kept on the device; they go
    /// on the next sync).
    pub pending: Vec<String>,
    /// No relay was connected when it returned.
    pub offline: bool,
}

/// The longest [`Cairn::sync_now`] waits, whatever it is asked: 10 minutes. Background
/// tasks on phones get far less; a longer wait only hides a stuck network.
pub const MAX_SYNC_WAIT_MS: u64 = 10 * 60 * 1000;

/// Where the device remembers each group it belongs to: `["cairn-app", "group", <id>]` →
/// JSON `{relay, info}`. Kept so a member who is removed (the relay then no longer lists
/// the group) can still wipe its documents from the device, and so an offline start
/// knows its groups.
pub(crate) const GROUP_KEY_PREFIX: [&str; 2] = ["cairn-app", "group"];

#[derive(serde::Serialize, serde::Deserialize)]
struct KnownGroup {
    relay: String,
    info: GroupInfo,
}

fn group_key(group: &GroupId) -> Vec<String> {
    let mut key: Vec<String> = GROUP_KEY_PREFIX.iter().map(|s| s.to_string()).collect();
    key.push(group.to_string());
    key
}

/// Writes what the relay said of a group, if it differs from what is stored.
pub(crate) fn remember_group(
    store: &dyn Storage,
    relay: &str,
    info: &GroupInfo,
) -> Result<(), CairnError> {
    let bytes = serde_json::to_vec(&KnownGroup {
        relay: relay.to_owned(),
        info: info.clone(),
    })
    .map_err(CairnError::generic)?;
    let key = group_key(&info.group_id);
    if store.load(&key)?.as_deref() == Some(bytes.as_slice()) {
        return Ok(());
    }
    store.put(&key, &bytes)?;
    store.flush()?;
    Ok(())
}

/// Every group the device remembers: (relay, what it last said).
pub(crate) fn remembered_groups(
    store: &dyn Storage,
) -> Result<Vec<(String, GroupInfo)>, CairnError> {
    let prefix: Vec<String> = GROUP_KEY_PREFIX.iter().map(|s| s.to_string()).collect();
    Ok(store
        .load_range(&prefix)?
        .into_iter()
        // A record this version cannot read is skipped, not fatal: the relay says again.
        .filter_map(|(_, bytes)| serde_json::from_slice::<KnownGroup>(&bytes).ok())
        .map(|k| (k.relay, k.info))
        .collect())
}

impl Cairn {
    /// Each relay's state now.
    pub fn relays(&self) -> Vec<RelayStatus> {
        self.inner
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| RelayStatus {
                url: r.url.clone(),
                state: r.handle.status().state(),
            })
            .collect()
    }

    /// Every relay's state now, then again whenever one changes, until the subscription
    /// ends. Covers the relays enrolled when it is called: subscribe again after joining a
    /// group on a new relay.
    pub fn subscribe_relays(&self, listener: Arc<dyn Listener<Vec<RelayStatus>>>) -> Subscription {
        let cancelled = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = self
            .inner
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| r.handle.clone())
            .collect();
        let mut subscriptions = Vec::new();
        for handle in &handles {
            let (listener, flag, cairn) = (listener.clone(), cancelled.clone(), self.clone());
            subscriptions.push(handle.on_status(move |_| {
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    listener.on_update(cairn.relays());
                }
            }));
        }
        if handles.is_empty() {
            listener.on_update(Vec::new());
        }
        Subscription::new(cancelled, move || {
            for s in subscriptions {
                s.cancel();
            }
        })
    }

    /// Syncs what is pending now, for at most `deadline_ms` (a background task's budget):
    /// dials every relay at once, sends pending registrations, and waits until the relays
    /// hold every change on this device or the deadline passes. Running out of time is
    /// not an error: the report lists what is still pending (safe on the device).
    pub async fn sync_now(&self, deadline_ms: u64) -> Result<SyncReport, CairnError> {
        let client = self.inner.client.clone();
        let wait = Duration::from_millis(deadline_ms.min(MAX_SYNC_WAIT_MS));
        let report = self
            .run(async move { Ok(client.sync_now(wait).await?) })
            .await?;
        Ok(SyncReport {
            synced: crate::app::saturating_u32(report.synced),
            pending: report.pending.iter().map(ToString::to_string).collect(),
            offline: report.offline,
        })
    }

    /// Leaves the group (the relay removes this member; the last organiser cannot leave)
    /// and wipes its documents from this device. Returns how many documents were wiped.
    pub async fn leave_group(&self, group_id: &str) -> Result<u32, CairnError> {
        let group = GroupId::from(group_id);
        // What to wipe is gathered while the relay still shows the group to us.
        let docs = self.group_documents(&group).await?;
        let api = self.api_of_group(&group).await?;
        let g = group.clone();
        self.run(async move { Ok(api.leave(&g).await?) }).await?;
        self.wipe(&group, docs).await
    }

    /// Wipes a group's documents from this device without asking the relay (a member who
    /// was removed, or who left from another device). Returns how many were wiped.
    pub async fn forget_group(&self, group_id: &str) -> Result<u32, CairnError> {
        let group = GroupId::from(group_id);
        let docs = self.group_documents(&group).await?;
        self.wipe(&group, docs).await
    }

    async fn wipe(&self, group: &GroupId, docs: BTreeSet<DocumentId>) -> Result<u32, CairnError> {
        let client = self.inner.client.clone();
        let list: Vec<DocumentId> = docs.into_iter().collect();
        let count = crate::app::saturating_u32(list.len());
        self.run(async move { Ok(client.forget(&list).await?) })
            .await?;
        self.inner.store.delete(&group_key(group))?;
        self.inner.store.flush()?;
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(group);
        tracing::info!(group = %group, documents = count, "group wiped from the device");
        Ok(count)
    }

    /// Every document of `group` this device may hold: the group's own (settings, roster,
    /// index, reports), everything its index lists, and every series' occurrence meetings,
    /// read from the device's copies.
    async fn group_documents(&self, group: &GroupId) -> Result<BTreeSet<DocumentId>, CairnError> {
        let info = match self.group_info(group).await {
            Ok(info) => info,
            // Removed, or offline: what the device remembers.
            Err(CairnError::NotFound { .. }) | Err(CairnError::Offline) => {
                remembered_groups(self.inner.store.as_ref())?
                    .into_iter()
                    .map(|(_, info)| info)
                    .find(|info| info.group_id == *group)
                    .ok_or_else(|| CairnError::not_found(format!("group {group}")))?
            }
            Err(e) => return Err(e),
        };
        let d = &info.documents;
        let mut docs: BTreeSet<DocumentId> = [d.settings, d.roster, d.index]
            .into_iter()
            .flatten()
            .collect();
        docs.extend(d.reports.iter().copied());
        let Some(index_doc) = d.index else {
            return Ok(docs);
        };
        let listed = self
            .local_read(index_doc, |doc| {
                Ok(index::documents(doc)
                    .map(|entries| {
                        entries
                            .iter()
                            .filter_map(|e| DocumentId::parse_url(&e.url).ok())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default())
            })
            .await?
            .unwrap_or_default();
        for doc in listed {
            docs.insert(doc);
            let meetings = self
                .local_read(doc, |d| {
                    Ok(series::read_series(d)
                        .map(|s| s.meetings.into_values().collect::<Vec<_>>())
                        .unwrap_or_default())
                })
                .await?
                .unwrap_or_default();
            docs.extend(meetings);
        }
        Ok(docs)
    }

    /// Reads a document only if it is on this device (never fetches from a relay).
    async fn local_read<T: Send + 'static>(
        &self,
        doc: DocumentId,
        f: impl FnOnce(&Automerge) -> Result<T, CairnError> + Send + 'static,
    ) -> Result<Option<T>, CairnError> {
        let client = self.inner.client.clone();
        let store = self.inner.store.clone();
        self.run(async move {
            let key = [doc.to_string()];
            let held = tokio::task::spawn_blocking(move || store.list_keys(&key))
                .await
                .map_err(CairnError::generic)??;
            if held.is_empty() {
                return Ok(None);
            }
            let _ = client.find(doc, Duration::from_secs(5)).await;
            client.read(doc, f).await?.transpose()
        })
        .await
    }
}
