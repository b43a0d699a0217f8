//! Binding new documents to their group, without losing one.
//!
//! The relay stores and serves only documents bound to a group, so a document created on
//! the device is registered (`POST /v1/groups/{g}/documents`) before its first sync. The
//! registration is first written durably to the device store, under
//! `["cairn-client", "pending-registration", <document id>]`, and only removed once the
//! relay has accepted it: offline, or while the relay refuses for a while (429, 503), it
//! is retried before every (re)connect and, while connected, every
//! [`ClientConfig::registration_retry`](super::ClientConfig::registration_retry).
//!
//! A refusal that retrying cannot fix by itself (403, 404, 409, 400) is kept with the
//! reason ([`PendingRegistration::refused`]) for the app to show; the document stays on
//! the device. A 403 (for instance a code of conduct not yet accepted, or a role without
//! write access) is still tried again on each reconnect, since access may have been
//! granted meanwhile; the others only when the app asks
//! ([`Client::retry_registrations`](super::Client::retry_registrations)).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use automerge::transaction::Transaction;
use automerge::Automerge;

use super::connection::RelayShared;
use super::{
    ChangeError, Client, ClientError, ConnectionStatus, RelayApi, RelayHandle,
    INLINE_REGISTRATION_TIMEOUT,
};
use crate::ids::DocumentId;
use crate::membership::{BoundKind, GroupId};
use crate::store::{Storage, StorageKey, StoreError};

/// The first part of every key the client keeps in the device store beside documents.
pub const CLIENT_KEY_PREFIX: &str = "cairn-client";
/// The table of registrations not yet accepted by the relay.
pub const PENDING_REGISTRATION_TABLE: &str = "pending-registration";

fn key(doc: &DocumentId) -> StorageKey {
    vec![
        CLIENT_KEY_PREFIX.to_owned(),
        PENDING_REGISTRATION_TABLE.to_owned(),
        doc.to_string(),
    ]
}

/// Why the relay refused a registration in a way retrying alone does not fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum RegistrationRefused {
    /// 403: the role may not add this kind (an observer, a guest, settings by a
    /// non-organiser), or the code of conduct is not accepted yet. Tried again on each
    /// reconnect.
    Forbidden {
        /// The relay's explanation (no content).
        reason: String,
    },
    /// 409: the id is bound to a group already, or the relay already holds a document
    /// with it.
    Conflict {
        /// The relay's explanation.
        reason: String,
    },
    /// 404: the group does not exist, or the device is not a member.
    NotFound,
    /// 400: the relay could not read the registration.
    BadRequest {
        /// The relay's explanation.
        reason: String,
    },
}

impl RegistrationRefused {
    fn from_error(e: &ClientError) -> Option<RegistrationRefused> {
        Some(match e {
            ClientError::Forbidden { reason } => RegistrationRefused::Forbidden {
                reason: reason.clone(),
            },
            ClientError::Conflict { reason } => RegistrationRefused::Conflict {
                reason: reason.clone(),
            },
            ClientError::NotFound => RegistrationRefused::NotFound,
            ClientError::BadRequest { reason } => RegistrationRefused::BadRequest {
                reason: reason.clone(),
            },
            _ => return None,
        })
    }

    /// The same refusal as the error an app branches on.
    pub fn to_error(&self) -> ClientError {
        match self {
            RegistrationRefused::Forbidden { reason } => ClientError::Forbidden {
                reason: reason.clone(),
            },
            RegistrationRefused::Conflict { reason } => ClientError::Conflict {
                reason: reason.clone(),
            },
            RegistrationRefused::NotFound => ClientError::NotFound,
            RegistrationRefused::BadRequest { reason } => ClientError::BadRequest {
                reason: reason.clone(),
            },
        }
    }
}

/// A document the relay has not accepted yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRegistration {
    /// The document.
    pub document: DocumentId,
    /// The group it belongs to.
    pub group: GroupId,
    /// What it is.
    pub kind: BoundKind,
    /// Set when the relay refused it (see [`RegistrationRefused`]); `None` while it waits
    /// to be sent.
    pub refused: Option<RegistrationRefused>,
    /// The websocket URL of the relay it is sent to (the group's); `None`: the first relay
    /// the client connects to (records written before the client knew several relays).
    pub relay: Option<String>,
}

/// The stored form (JSON; golden-tested: a device upgraded in place must read it).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    group_id: GroupId,
    kind: BoundKind,
    #[serde(default)]
    refused: Option<RegistrationRefused>,
    /// Absent in records written before relays were told apart: the first relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relay: Option<String>,
}

/// Which pending registrations a retry sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Those not refused (the timer while connected).
    Waiting,
    /// Those not refused, and those refused with 403 (before each connect: access may
    /// have been granted meanwhile).
    OnConnect,
    /// Every one (the app asked).
    All,
}

/// What one round of retries did.
#[derive(Debug, Default)]
pub(crate) struct Round {
    /// Accepted by the relay (and removed from the device store).
    pub(crate) registered: Vec<DocumentId>,
    /// The relay asked to wait this long (429 or 503 with `Retry-After`).
    pub(crate) retry_after: Option<Duration>,
}

/// The pending registrations: in memory, mirrored durably in the device store.
pub(crate) struct Registrations {
    store: Arc<dyn Storage>,
    /// Where the blocking store writes run.
    runtime: tokio::runtime::Handle,
    pending: Mutex<BTreeMap<DocumentId, PendingRegistration>>,
    /// One writer at a time, so a slow "refused" write cannot land after the removal
    /// that followed it.
    writer: tokio::sync::Mutex<()>,
    /// Documents being created by [`Client::create_in_group`]: registered before they
    /// exist, so a retry round that happens to register one need not have it offered
    /// again (it has not been offered yet).
    creating: Mutex<std::collections::BTreeSet<DocumentId>>,
}

/// Keeps a document in [`Registrations::creating`] while it is being created.
struct Creating<'a>(&'a Registrations, DocumentId);

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

impl Registrations {
    /// Reads the pending registrations kept in `store`. A record this version cannot read
    /// is skipped (and logged by document id), not fatal: the document itself is intact.
    pub(crate) fn load(
        store: Arc<dyn Storage>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Registrations, StoreError> {
        let prefix = vec![
            CLIENT_KEY_PREFIX.to_owned(),
            PENDING_REGISTRATION_TABLE.to_owned(),
        ];
        let mut pending = BTreeMap::new();
        for (key, value) in store.load_range(&prefix)? {
            let Some(Ok(document)) = key.get(2).map(|k| k.parse::<DocumentId>()) else {
                tracing::warn!(parts = key.len(), "unreadable pending-registration key");
                continue;
            };
            match serde_json::from_slice::<Stored>(&value) {
                Ok(s) => {
                    pending.insert(
                        document,
                        PendingRegistration {
                            document,
                            group: s.group_id,
                            kind: s.kind,
                            refused: s.refused,
                            relay: s.relay,
                        },
                    );
                }
                Err(_) => tracing::warn!(doc = %document, "unreadable pending registration"),
            }
        }
        Ok(Registrations {
            store,
            runtime,
            pending: Mutex::new(pending),
            writer: tokio::sync::Mutex::new(()),
            creating: Mutex::default(),
        })
    }

    /// The device store.
    pub(crate) fn store(&self) -> Arc<dyn Storage> {
        self.store.clone()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<DocumentId, PendingRegistration>) -> R) -> R {
        f(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn list(&self) -> Vec<PendingRegistration> {
        self.with(|p| p.values().cloned().collect())
    }

    pub(crate) fn get(&self, doc: &DocumentId) -> Option<PendingRegistration> {
        self.with(|p| p.get(doc).cloned())
    }

    /// Writes (`Some`) or removes (`None`) one record durably (flushed when this returns).
    async fn persist(
        &self,
        doc: DocumentId,
        value: Option<&PendingRegistration>,
    ) -> Result<(), ClientError> {
        let bytes = value.map(|p| {
            serde_json::to_vec(&Stored {
                group_id: p.group.clone(),
                kind: p.kind,
                refused: p.refused.clone(),
                relay: p.relay.clone(),
            })
            .expect("a pending registration serialises")
        });
        let store = self.store.clone();
        let written = self
            .runtime
            .spawn_blocking(move || store.write_batch(&[(key(&doc), bytes)]))
            .await
            .map_err(|_| ClientError::StorageFailed(doc))?;
        written.map_err(|e| {
            tracing::warn!(doc = %doc, error = e.label(), "pending registration not written");
            if e.is_disk_full() {
                ClientError::StorageFull(doc)
            } else {
                ClientError::StorageFailed(doc)
            }
        })
    }

    /// Keeps a registration to send (durable when this returns).
    pub(crate) async fn add(
        &self,
        document: DocumentId,
        group: GroupId,
        kind: BoundKind,
        relay: Option<String>,
    ) -> Result<(), ClientError> {
        let record = PendingRegistration {
            document,
            group,
            kind,
            refused: None,
            relay,
        };
        let _one = self.writer.lock().await;
        self.persist(document, Some(&record)).await?;
        self.with(|p| p.insert(document, record));
        Ok(())
    }

    fn creating(&self, doc: DocumentId) -> Creating<'_> {
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(doc);
        Creating(self, doc)
    }

    fn is_creating(&self, doc: &DocumentId) -> bool {
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(doc)
    }

    /// Drops `doc`'s registration, durably ([`Client::forget`]).
    pub(crate) async fn remove(&self, doc: DocumentId) -> Result<(), ClientError> {
        let _one = self.writer.lock().await;
        if self.get(&doc).is_none() {
            return Ok(());
        }
        self.persist(doc, None).await?;
        self.with(|p| p.remove(&doc));
        Ok(())
    }

    /// Sends one registration and records the outcome: removed once accepted, marked
    /// refused on a lasting refusal, kept as it was otherwise. Returns the relay's answer:
    /// `Ok(true)` when this attempt is the one that removed the record (another one under
    /// way at the same time, the app's inline attempt, say, gets `Ok(false)`, so only one
    /// of them asks for the document to be offered again).
    pub(crate) async fn attempt(
        &self,
        api: &RelayApi,
        doc: DocumentId,
    ) -> Result<bool, ClientError> {
        let Some(record) = self.get(&doc) else {
            return Ok(false);
        };
        let answer = api.register_document(&record.group, doc, record.kind).await;
        let _one = self.writer.lock().await;
        // Still the same record (the app may have retried it meanwhile).
        if self.get(&doc).as_ref() != Some(&record) {
            return answer.map(|()| false);
        }
        match &answer {
            Ok(()) => {
                tracing::debug!(doc = %doc, kind = record.kind.name(), "document registered");
                // Removed from memory even if the delete fails: the relay has it, and a
                // leftover record only causes one repeat (which the relay accepts).
                self.with(|p| p.remove(&doc));
                if let Err(e) = self.persist(doc, None).await {
                    tracing::warn!(doc = %doc, error = %e, "registered, but the record stays");
                }
            }
            Err(e) => {
                if let Some(refused) = RegistrationRefused::from_error(e) {
                    tracing::debug!(doc = %doc, kind = record.kind.name(), "registration refused");
                    let updated = PendingRegistration {
                        refused: Some(refused),
                        ..record
                    };
                    self.persist(doc, Some(&updated)).await?;
                    self.with(|p| p.insert(doc, updated));
                }
            }
        }
        answer.map(|()| true)
    }

    /// Sends the pending registrations `which` selects, in document order. Stops at the
    /// first answer saying the relay cannot be reached or asks to wait: the others would
    /// get the same.
    pub(crate) async fn retry(&self, api: &RelayApi, which: Retry, relay: &RelayShared) -> Round {
        let docs: Vec<DocumentId> = self.with(|p| {
            p.values()
                .filter(|r| relay.owns(r.relay.as_deref()))
                .filter(|r| {
                    matches!(
                        (&r.refused, which),
                        (None, _)
                            | (_, Retry::All)
                            | (
                                Some(RegistrationRefused::Forbidden { .. }),
                                Retry::OnConnect
                            )
                    )
                })
                .map(|r| r.document)
                .collect()
        });
        let mut round = Round::default();
        for doc in docs {
            match self.attempt(api, doc).await {
                Ok(true) if !self.is_creating(&doc) => round.registered.push(doc),
                Ok(true) => {}
                Ok(false) => {}
                Err(
                    ClientError::QuotaExceeded { retry_after }
                    | ClientError::RelayUnavailable { retry_after },
                ) => {
                    round.retry_after = retry_after;
                    break;
                }
                Err(ClientError::Offline | ClientError::Unauthorized) => break,
                Err(e) => tracing::debug!(doc = %doc, error = %e, "registration not accepted"),
            }
        }
        round
    }
}

impl Client {
    /// Creates a document of `group` as `kind` on the first relay (see
    /// [`RelayHandle::create_in_group`]).
    pub async fn create_in_group<R: Send + 'static, E: Send + 'static>(
        &self,
        group: &GroupId,
        kind: BoundKind,
        init: impl FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<(DocumentId, R), ChangeError<E>> {
        let relay = self.primary_relay();
        self.create_bound(relay.as_ref(), group, kind, init).await
    }

    async fn create_bound<R: Send + 'static, E: Send + 'static>(
        &self,
        relay: Option<&RelayHandle>,
        group: &GroupId,
        kind: BoundKind,
        init: impl FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<(DocumentId, R), ChangeError<E>> {
        // The first change is made before anything is kept: a failing `init` leaves no
        // registration behind.
        let mut first = Automerge::new();
        let mut tx = first.transaction();
        let value = match init(&mut tx) {
            Ok(v) => v,
            Err(e) => {
                tx.rollback();
                return Err(ChangeError::Rejected(e));
            }
        };
        tx.commit();
        let bytes = first.save();
        let doc = random_document_id();
        let _creating = self.shared.registrations.creating(doc);
        let url = relay
            .filter(|r| !r.shared().primary)
            .map(|r| r.url().to_owned());
        self.shared
            .registrations
            .add(doc, group.clone(), kind, url)
            .await?;
        if let Some(relay) = relay {
            if relay.status() == ConnectionStatus::Connected {
                if let Ok(api) = relay.api() {
                    // Bounded: a slow network must not hold up creating a document; a
                    // later retry covers it.
                    let attempt = self.shared.registrations.attempt(&api, doc);
                    let _ = tokio::time::timeout(INLINE_REGISTRATION_TIMEOUT, attempt).await;
                    self.shared.bump();
                }
            }
        }
        let heads = self
            .host
            .call(move |e, now| e.import_document(now, doc, &bytes))
            .await?
            .map_err(ClientError::from)?;
        if !heads.is_empty() {
            self.wait_durable(doc, heads).await?;
        }
        Ok((doc, value))
    }

    /// Binds an existing document to `group` as `kind` on the first relay (see
    /// [`RelayHandle::register`]).
    pub async fn register(
        &self,
        doc: DocumentId,
        group: &GroupId,
        kind: BoundKind,
    ) -> Result<Option<PendingRegistration>, ClientError> {
        let relay = self.primary_relay();
        self.register_on(relay.as_ref(), doc, group, kind).await
    }

    async fn register_on(
        &self,
        relay: Option<&RelayHandle>,
        doc: DocumentId,
        group: &GroupId,
        kind: BoundKind,
    ) -> Result<Option<PendingRegistration>, ClientError> {
        let url = relay
            .filter(|r| !r.shared().primary)
            .map(|r| r.url().to_owned());
        self.shared
            .registrations
            .add(doc, group.clone(), kind, url)
            .await?;
        if let Some(api) = relay.and_then(|r| r.api().ok()) {
            if self.shared.registrations.attempt(&api, doc).await.is_ok() {
                self.reoffer(relay, vec![doc]).await?;
            }
            self.shared.bump();
        }
        Ok(self.shared.registrations.get(&doc))
    }

    /// Registrations the relays have not accepted yet (waiting or refused).
    pub fn registrations(&self) -> Vec<PendingRegistration> {
        self.shared.registrations.list()
    }

    /// `doc`'s registration if the relay has not accepted it yet (`None`: accepted, or
    /// never registered through this client).
    pub fn registration(&self, doc: DocumentId) -> Option<PendingRegistration> {
        self.shared.registrations.get(&doc)
    }

    /// Sends every pending registration now, each to its relay, refused ones included
    /// (after the app fixed the cause: accepted the code of conduct, got a writing role).
    /// Returns what is still pending. [`ClientError::NoRelayApi`] when no relay with an API
    /// is connected.
    pub async fn retry_registrations(&self) -> Result<Vec<PendingRegistration>, ClientError> {
        let mut any = false;
        for relay in self.relays() {
            let Ok(api) = relay.api() else { continue };
            any = true;
            let round = self
                .shared
                .registrations
                .retry(&api, Retry::All, relay.shared())
                .await;
            self.shared.bump();
            self.reoffer(Some(&relay), round.registered).await?;
        }
        if !any {
            return Err(ClientError::NoRelayApi);
        }
        Ok(self.registrations())
    }

    /// Asks `relay`'s open connection to reconnect if one of `docs` is loaded (and so was
    /// offered to the relay before it was registered).
    async fn reoffer(
        &self,
        relay: Option<&RelayHandle>,
        docs: Vec<DocumentId>,
    ) -> Result<(), ClientError> {
        let Some(relay) = relay else { return Ok(()) };
        if docs.is_empty() {
            return Ok(());
        }
        let loaded = self
            .host
            .call(move |e, _| {
                let known = e.document_ids();
                docs.iter().any(|d| known.contains(d))
            })
            .await?;
        if loaded {
            relay.shared().reoffer.notify_waiters();
        }
        Ok(())
    }
}

impl RelayHandle {
    /// Creates a document of `group` (a group on this relay) as `kind`, initialised by
    /// `init`; returns its id and `init`'s value once it is durable on this device.
    ///
    /// The registration that binds it to the group is written to the device store first
    /// (with this relay's URL) and, when connected, sent before the document exists, so
    /// the relay serves it from its first sync. Offline or refused, the document is
    /// created all the same and the registration is retried on this relay (see
    /// [`Client::registration`]). When `init` fails nothing is created or kept.
    pub async fn create_in_group<R: Send + 'static, E: Send + 'static>(
        &self,
        group: &GroupId,
        kind: BoundKind,
        init: impl FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<(DocumentId, R), ChangeError<E>> {
        self.client()
            .create_bound(Some(self), group, kind, init)
            .await
    }

    /// Binds an existing document (imported, or created with [`Client::create`]) to
    /// `group` on this relay as `kind`. Kept on the device until the relay accepts it;
    /// returns `None` once accepted, or the registration as it stands (waiting, or
    /// refused with the reason). A document the relay refused earlier on the open
    /// connection is offered again once accepted.
    pub async fn register(
        &self,
        doc: DocumentId,
        group: &GroupId,
        kind: BoundKind,
    ) -> Result<Option<PendingRegistration>, ClientError> {
        self.client()
            .register_on(Some(self), doc, group, kind)
            .await
    }
}

/// A fresh document id from the OS RNG (the engine's own ids come from its seeded RNG;
/// ids made outside it must not repeat across restarts).
fn random_document_id() -> DocumentId {
    use rand::SeedableRng;
    let mut seed = [0u8; 32];
    crate::membership::os_random(&mut seed);
    DocumentId::random(&mut rand_chacha::ChaCha20Rng::from_seed(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_record_keeps_its_golden_form() {
        let stored = Stored {
            group_id: GroupId::from("0123456789abcdef"),
            kind: BoundKind::Thread,
            refused: Some(RegistrationRefused::Forbidden {
                reason: "the role may not write this kind".to_owned(),
            }),
            relay: None,
        };
        let golden = r#"{"group_id":"0123456789abcdef","kind":"thread","refused":{"error":"forbidden","reason":"the role may not write this kind"}}"#;
        assert_eq!(serde_json::to_string(&stored).unwrap(), golden);
        assert_eq!(serde_json::from_str::<Stored>(golden).unwrap(), stored);
        let waiting = r#"{"group_id":"0123456789abcdef","kind":"meeting"}"#;
        let back: Stored = serde_json::from_str(waiting).unwrap();
        assert_eq!(back.kind, BoundKind::Meeting);
        assert_eq!(back.refused, None);
        assert_eq!(back.relay, None, "an old record belongs to the first relay");
        let elsewhere = Stored {
            relay: Some("wss://relay.example.org/".to_owned()),
            ..back
        };
        let golden = r#"{"group_id":"0123456789abcdef","kind":"meeting","refused":null,"relay":"wss://relay.example.org/"}"#;
        assert_eq!(serde_json::to_string(&elsewhere).unwrap(), golden);
        assert_eq!(serde_json::from_str::<Stored>(golden).unwrap(), elsewhere);
    }
}
