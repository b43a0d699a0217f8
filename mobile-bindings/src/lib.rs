//! Cairn's core for Android and iOS: the app API of `cairn_core::app`, one to one, through
//! uniffi. Objects for the workspace, a group, a meeting, minutes, a thread, the journal;
//! records and enums for plain data; `suspend`/`async` for whatever touches the store or
//! the network; one error enum an app branches on. The network is the platform's: the host
//! implements the websocket and HTTP transports.

uniffi::setup_scaffolding!("cairn");

/// This library's version (the Cargo package version).
#[uniffi::export]
pub fn cairn_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
