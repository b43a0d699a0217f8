//! Relay connection states and sync reports.

use cairn_core::app::{RelayStatus, SyncReport};
use cairn_sync::client::ConnectionState;

/// Where the device stands with one relay.
#[uniffi::remote(Record)]
pub struct RelayStatus {
    /// The relay's websocket URL.
    pub url: String,
    /// Offline, connecting, online, or unauthorised (enrol again or restore the credential).
    pub state: ConnectionState,
}

/// What [`Cairn::sync_now`] got done before it returned.
#[uniffi::remote(Record)]
pub struct SyncReport {
    /// Documents on the device the relays have shown they hold entirely.
    pub synced: u32,
    /// Documents with changes no relay has acknowledged yet (kept on the device; they go
    /// on the next sync).
    pub pending: Vec<String>,
    /// No relay was connected when it returned.
    pub offline: bool,
}

/// The four states an app shows for a relay ([`ConnectionStatus::state`]).
#[uniffi::remote(Enum)]
pub enum ConnectionState {
    /// Not connected (not asked to, unreachable, refused for a while, or rate-limited).
    Offline,
    /// Dialling.
    Connecting,
    /// Connected.
    Online,
    /// The relay refused the credential: the app must enrol again or restore it.
    Unauthorized,
}
