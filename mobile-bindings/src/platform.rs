//! What the host hands Cairn at start-up besides its settings: the credential keeper.

/// Keeps credentials the relay issues to this device (joining with an invite, linking a
/// device, rotating) in the platform keystore (Android Keystore, iOS Keychain). Called on
/// Cairn's threads; store it and return.
#[uniffi::export(with_foreign)]
pub trait CredentialKeeper: Send + Sync {
    /// The relay at `relay_url` now knows this device by `credential`: keep it (replacing
    /// any earlier one for that relay) and pass it back in `RelayConfig` at the next start.
    fn keep(&self, relay_url: String, credential: String);
}
