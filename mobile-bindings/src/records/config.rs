//! The start-up settings.

use cairn_core::app::{CairnConfig, RelayConfig};

/// One relay the device is enrolled with.
#[uniffi::remote(Record)]
pub struct RelayConfig {
    /// The relay's websocket URL (`wss://relay.example.org/` or `ws://127.0.0.1:8080/`).
    pub url: String,
    /// This device's credential on that relay (from the platform keystore), or `None` for
    /// a relay in open mode.
    pub credential: Option<String>,
}

/// What [`Cairn::start`] needs.
#[uniffi::remote(Record)]
pub struct CairnConfig {
    /// A directory private to the app; Cairn keeps its store in it.
    pub data_dir: String,
    /// The relays this device is enrolled with (none: a device that has not joined yet).
    pub relays: Vec<RelayConfig>,
    /// The key of the private journal, 32 bytes, kept in the platform keystore. Cairn never
    /// writes it to disk.
    pub journal_key: Vec<u8>,
    /// The device's IANA time zone now (`Europe/London`); see [`Cairn::set_time_zone`].
    pub time_zone: String,
    /// The peer id used on a relay without a credential (open mode, tests). `None`: a
    /// random one.
    pub device_name: Option<String>,
}
