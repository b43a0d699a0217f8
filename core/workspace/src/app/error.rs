//! The one error type of the app API: every module's error folds into it.

use std::time::Duration;

use cairn_sync::client::{ChangeError, ClientError};
use cairn_sync::docs::schema::SchemaError;
use cairn_sync::store::StoreError;
use thiserror::Error;

/// Why an app call failed. Flat on purpose: an app (and the Kotlin/Swift bindings) matches
/// on what the member should see, not on which module failed. Messages carry ids, counts
/// and field names only, never document content, names or tokens.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CairnError {
    /// The relay cannot be reached (no network, a wrong address, no answer in time). What
    /// was written is kept on the device and syncs later.
    #[error("the relay cannot be reached")]
    Offline,
    /// The relay refused this device's credential (revoked, rotated away, never valid):
    /// enrol again or restore the credential from the keystore.
    #[error("the relay refused this device's credential")]
    Unauthorized,
    /// The member's role or state does not allow this (an observer writing, not an
    /// organiser, the code of conduct not yet accepted).
    #[error("not allowed: {reason}")]
    Forbidden {
        /// Which rule refused it.
        reason: String,
    },
    /// No such group, document, item, post or reflection (as far as this device may know).
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for (a kind and an id, never content).
        what: String,
    },
    /// The invite or link code has expired or been used up: ask for a new one.
    #[error("the invite has expired or been used up")]
    InviteExpired,
    /// Too many attempts: try again later.
    #[error("too many attempts; try again later")]
    QuotaExceeded {
        /// How long the relay asked to wait, in milliseconds, if it said.
        retry_after_ms: Option<u64>,
    },
    /// The device has no space left: the change was not kept. Free space and retry.
    #[error("the device storage is full")]
    StorageFull,
    /// The input or the stored data is not acceptable (an empty title, an unknown time
    /// zone, a document written by a newer Cairn).
    #[error("invalid: {reason}")]
    Invalid {
        /// What is wrong (field names, limits; no content).
        reason: String,
    },
    /// Anything else (a damaged store, the client stopped, an unexpected relay answer).
    #[error("{reason}")]
    Generic {
        /// What failed.
        reason: String,
    },
}

impl CairnError {
    /// An [`CairnError::Invalid`] with this reason.
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        CairnError::Invalid {
            reason: reason.into(),
        }
    }

    /// A [`CairnError::NotFound`] for `what`.
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        CairnError::NotFound { what: what.into() }
    }

    /// A [`CairnError::Generic`] from any error's message.
    pub(crate) fn generic(error: impl std::fmt::Display) -> Self {
        CairnError::Generic {
            reason: error.to_string(),
        }
    }
}

fn millis(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl From<ClientError> for CairnError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Offline | ClientError::RelayUnavailable { .. } | ClientError::Timeout => {
                CairnError::Offline
            }
            ClientError::Unavailable(doc) => CairnError::not_found(format!("document {doc}")),
            ClientError::StorageFull(_) => CairnError::StorageFull,
            ClientError::Unauthorized | ClientError::CredentialMismatch => CairnError::Unauthorized,
            ClientError::Forbidden { reason } => CairnError::Forbidden { reason },
            ClientError::NotFound => CairnError::not_found("on the relay"),
            ClientError::InviteExpired => CairnError::InviteExpired,
            ClientError::QuotaExceeded { retry_after } => CairnError::QuotaExceeded {
                retry_after_ms: millis(retry_after),
            },
            ClientError::BadRequest { reason } | ClientError::Conflict { reason } => {
                CairnError::Invalid { reason }
            }
            ClientError::Store(e) => e.into(),
            other => CairnError::generic(other),
        }
    }
}

impl From<StoreError> for CairnError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            CairnError::StorageFull
        } else {
            CairnError::generic(e)
        }
    }
}

impl From<SchemaError> for CairnError {
    fn from(e: SchemaError) -> Self {
        match e {
            // Not synced yet, or not what the caller thinks it is: the app cannot show it.
            SchemaError::Missing | SchemaError::WrongKind { .. } => {
                CairnError::not_found(e.to_string())
            }
            other => CairnError::invalid(other.to_string()),
        }
    }
}

impl From<automerge::AutomergeError> for CairnError {
    fn from(e: automerge::AutomergeError) -> Self {
        CairnError::generic(e)
    }
}

/// A change's failure as the app sees it: the closure's own error (nothing was committed),
/// or the client's.
impl From<ChangeError<CairnError>> for CairnError {
    fn from(e: ChangeError<CairnError>) -> Self {
        match e {
            ChangeError::Rejected(e) => e,
            ChangeError::Client(e) => e.into(),
        }
    }
}
