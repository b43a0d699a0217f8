//! The one error type.

use cairn_core::app::CairnError;

/// Why an app call failed. Flat on purpose: an app (and the Kotlin/Swift bindings) matches
/// on what the member should see, not on which module failed. Messages carry ids, counts
/// and field names only, never document content, names or tokens.
#[uniffi::remote(Error)]
pub enum CairnError {
    /// The relay cannot be reached (no network, a wrong address, no answer in time). What
    /// was written is kept on the device and syncs later.
    Offline,
    /// The relay refused this device's credential (revoked, rotated away, never valid):
    /// enrol again or restore the credential from the keystore.
    Unauthorized,
    /// The member's role or state does not allow this (an observer writing, not an
    /// organiser, the code of conduct not yet accepted).
    Forbidden {
        /// Which rule refused it.
        reason: String,
    },
    /// No such group, document, item, post or reflection (as far as this device may know).
    NotFound {
        /// What was looked for (a kind and an id, never content).
        what: String,
    },
    /// The invite or link code has expired or been used up: ask for a new one.
    InviteExpired,
    /// Too many attempts: try again later.
    QuotaExceeded {
        /// How long the relay asked to wait, in milliseconds, if it said.
        retry_after_ms: Option<u64>,
    },
    /// The device has no space left: the change was not kept. Free space and retry.
    StorageFull,
    /// The input or the stored data is not acceptable (an empty title, an unknown time
    /// zone, a document written by a newer Cairn).
    Invalid {
        /// What is wrong (field names, limits; no content).
        reason: String,
    },
    /// Anything else (a damaged store, the client stopped, an unexpected relay answer).
    Generic {
        /// What failed.
        reason: String,
    },
}
