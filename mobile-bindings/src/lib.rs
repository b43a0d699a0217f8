//! Cairn's core for Android and iOS: the app API of `cairn_core::app`, one to one, through
//! uniffi (namespace `cairn`: Kotlin package `uniffi.cairn`, Swift module `cairn`, Python
//! module `cairn`).
//!
//! - [`objects`]: `Cairn`, `Workspace`, `Group`, `Meeting`, `Minutes`, `Series`, `Thread`,
//!   `Resources`, `Journal`, `Subscription`, each forwarding every public method of the app
//!   handle it wraps (`async` stays `async`: the app's futures run on Cairn's own runtime).
//! - [`records`]: the app's records and enums and `CairnError`, exported as they are
//!   (uniffi remote types, so the compiler checks every field against the original).
//! - [`listeners`]: the host-implemented listeners of the `subscribe*` methods.
//! - [`network`]: the host-implemented websocket and HTTP transport.
//! - [`platform`]: the host's credential keeper.
//!
//! Nothing here logs content, and nothing here panics across the boundary.

#![warn(missing_docs)]

uniffi::setup_scaffolding!("cairn");

pub mod listeners;
pub mod network;
pub mod objects;
pub mod platform;
pub mod records;

/// Calls host code, containing a host exception: uniffi turns an exception thrown by a
/// host method that returns nothing into a Rust panic, which must not unwind through
/// Cairn's runtime (a dead connection loop would never reconnect). `None` if it threw.
pub(crate) fn host<T>(call: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).ok()
}

/// This library's version (the Cargo package version).
#[uniffi::export]
pub fn cairn_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
