//! # cairn-core
//!
//! What a Cairn app embeds: the group workspace (group profile and roster view, meetings
//! with agendas, minutes and actions, resources, threads, reports), calendars, exports and
//! the private journal, over the sync layer in the `cairn-sync` crate.
//!
//! The crate line is the sans-IO line made visible: `cairn-sync` holds the engine, the
//! store, the host runtime, the relay client and membership, and is all the relay
//! compiles; this crate adds what only a member's device needs (a time-zone database,
//! the journal's cipher).
#![warn(missing_docs)]

#[cfg(feature = "client")]
pub mod app;
pub mod calendar;
pub mod export;
pub mod model;
pub mod reflection;

pub use cairn_sync as sync;
