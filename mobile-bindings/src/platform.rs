//! What the host hands Cairn at start-up besides its settings: the credential keeper.

use std::sync::Arc;

use cairn_core::app;

/// Keeps credentials the relay issues to this device (joining with an invite, linking a
/// device, rotating) in the platform keystore (Android Keystore, iOS Keychain). Called on
/// Cairn's threads; store it and return.
#[uniffi::export(with_foreign)]
pub trait CredentialKeeper: Send + Sync {
    /// The relay at `relay_url` now knows this device by `credential`: keep it (replacing
    /// any earlier one for that relay) and pass it back in `RelayConfig` at the next start.
    fn keep(&self, relay_url: String, credential: String);
}

/// The host's keeper as the app's.
pub(crate) struct HostKeeper(pub(crate) Arc<dyn CredentialKeeper>);

impl app::CredentialKeeper for HostKeeper {
    fn keep(&self, relay_url: &str, credential: &str) {
        let (url, credential) = (relay_url.to_owned(), credential.to_owned());
        // A keeper that throws must not unwind through the call that enrolled.
        crate::host(|| self.0.keep(url, credential));
    }
}
