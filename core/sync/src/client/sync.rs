//! Device-wide operations: sync everything now (before the app is suspended, on a
//! "sync" button) and forget documents (leaving a group, wiping the device).

use std::collections::BTreeSet;
use std::time::Duration;

use automerge::ChangeHash;

use super::registration::Retry;
use super::{Client, ClientError, ConnectionStatus, CLIENT_KEY_PREFIX};
use crate::ids::DocumentId;

/// What [`Client::sync_now`] found when it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// Documents on the device the relays have shown they hold entirely.
    pub synced: usize,
    /// Documents with changes no relay has acknowledged yet (offline, not yet registered,
    /// or the deadline came first); in id order.
    pub pending: Vec<DocumentId>,
    /// No relay was connected when it returned.
    pub offline: bool,
}

impl Client {
    /// Syncs everything now, for at most `timeout`: every relay loop waiting out a backoff
    /// dials at once, pending registrations are sent, every document stored on the device
    /// is loaded (after a restart the client does not know what the relay has: the sync
    /// handshake tells), and the call waits until the relays have acknowledged every
    /// document's changes or the timeout passes. Never an error because of the deadline:
    /// the report says what is still pending.
    pub async fn sync_now(&self, timeout: Duration) -> Result<SyncReport, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for relay in self.relays() {
            relay.shared().dial_now.notify_one();
        }
        // Listening before the documents are loaded, so no acknowledgement is missed.
        let wake = self.shared.any_doc.subscribe();
        let stored = self.stored_documents().await?;
        let docs: Vec<DocumentId> = self
            .host
            .call(move |e, now| {
                let mut all: BTreeSet<DocumentId> = e.document_ids().into_iter().collect();
                for doc in stored {
                    if all.insert(doc) {
                        e.find(now, doc);
                    }
                }
                all.into_iter().collect()
            })
            .await?;
        for relay in self.relays() {
            let Ok(api) = relay.api() else { continue };
            let round = self
                .shared
                .registrations
                .retry(&api, Retry::Waiting, relay.shared());
            // A registration round is bounded by the deadline too.
            let _ = tokio::time::timeout_at(deadline, round).await;
        }
        self.shared.bump();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let pending = match self
            .wait_until(wake, left, || {
                let docs = docs.clone();
                async move {
                    let pending = self.unacknowledged(docs).await?;
                    Ok(pending.is_empty().then_some(pending))
                }
            })
            .await
        {
            Ok(none) => none,
            Err(ClientError::Timeout) => self.unacknowledged(docs.clone()).await?,
            Err(e) => return Err(e),
        };
        let offline = !self
            .relays()
            .iter()
            .any(|r| r.status() == ConnectionStatus::Connected);
        Ok(SyncReport {
            synced: docs.len() - pending.len(),
            pending,
            offline,
        })
    }

    /// Of `docs`, those with changes no relay has shown it holds (an empty or still
    /// loading document has none to send).
    async fn unacknowledged(&self, docs: Vec<DocumentId>) -> Result<Vec<DocumentId>, ClientError> {
        let ours: Vec<(DocumentId, Option<Vec<ChangeHash>>)> = self
            .host
            .call(move |e, _| {
                docs.into_iter()
                    .map(|d| (d, e.document(&d).map(|am| am.get_heads())))
                    .collect()
            })
            .await?;
        Ok(self.shared.with(|s| {
            ours.into_iter()
                .filter(|(doc, heads)| match heads {
                    // Not loaded yet: whether it has changes to send is not known.
                    None => true,
                    Some(h) if h.is_empty() => false,
                    Some(h) => !s
                        .remote_heads
                        .get(doc)
                        .is_some_and(|theirs| h.iter().all(|x| theirs.contains(x))),
                })
                .map(|(doc, _)| doc)
                .collect()
        }))
    }

    /// Ids of every document with a key in the device store.
    async fn stored_documents(&self) -> Result<Vec<DocumentId>, ClientError> {
        let store = self.shared.registrations.store();
        let keys = self
            .shared
            .runtime
            .spawn_blocking(move || store.list_keys(&[]))
            .await
            .map_err(|_| ClientError::Stopped)??;
        let mut docs = BTreeSet::new();
        for key in keys {
            let Some(first) = key.first() else { continue };
            if first == CLIENT_KEY_PREFIX {
                continue;
            }
            if let Ok(doc) = first.parse::<DocumentId>() {
                docs.insert(doc);
            }
        }
        Ok(docs.into_iter().collect())
    }

    /// Forgets `docs` on this device: stops syncing them, drops them from memory and
    /// deletes every key stored for them and their pending registrations, durably
    /// (flushed) before it returns. A later [`Client::find`] of one is a fresh fetch from
    /// the relay. Connections that were syncing one are closed and redialled (so no
    /// relay message brings it back).
    pub async fn forget(&self, docs: &[DocumentId]) -> Result<(), ClientError> {
        for &doc in docs {
            self.shared.with(|s| {
                s.forgotten.remove(&doc);
                s.failed.remove(&doc);
                s.presence.local.remove(&doc);
            });
            let wake = self.shared.docs.subscribe(doc);
            self.host.call(move |e, _| e.forget_document(doc)).await?;
            let shared = &self.shared;
            self.wait_until(wake, super::DURABLE_TIMEOUT, || async move {
                shared.with(|s| {
                    if s.forgotten.contains(&doc) {
                        return Ok(Some(()));
                    }
                    match s.failed.get(&doc) {
                        Some(true) => Err(ClientError::StorageFull(doc)),
                        Some(false) => Err(ClientError::StorageFailed(doc)),
                        None => Ok(None),
                    }
                })
            })
            .await?;
            self.shared.registrations.remove(doc).await?;
            self.shared.with(|s| {
                s.durable.remove(&doc);
                s.remote_heads.remove(&doc);
                s.unavailable.remove(&doc);
                s.forgotten.remove(&doc);
            });
            tracing::debug!(doc = %doc, "document forgotten");
        }
        Ok(())
    }
}
