//! # cairn-sync
//!
//! Cairn's sync layer, shared by the relay and the phone: a sans-IO sync engine that
//! speaks the automerge-repo wire protocol (version "1"), the storage trait it writes
//! through, the relay-authoritative membership, a tokio host for the engine (`runtime`)
//! and (behind the default `client` feature) the device's relay client.
//!
//! It knows nothing of meetings, calendars or journals: the workspace model and the
//! app-facing API are the `cairn-core` crate, built on this one. The relay depends on
//! this crate alone, so it compiles no time-zone database and no cipher.
//!
//! ## Host contract
//!
//! [`engine::Engine`] is a deterministic state machine. It never touches sockets, files,
//! clocks or OS randomness. A host drives it like this:
//!
//! 1. Feed every event in with [`engine::Engine::handle_input`], passing the current
//!    [`time::Timestamp`]: a connection opened ([`engine::Input::Connected`]), a binary
//!    frame received, a connection closed, a storage task finished (with its `Result`).
//! 2. After every input (and after [`engine::Engine::handle_timeout`]), drain
//!    [`engine::Engine::poll_output`] until it returns `None`. Outputs come out in the
//!    order the engine produced them: send a frame, close a connection, run a storage
//!    task, or report an event to the application.
//! 3. Ask [`engine::Engine::poll_timeout`] when to call `handle_timeout` next.
//!
//! Storage tasks must be carried out and their results fed back. A `Put` may only be
//! reported `Ok` once the bytes are durable (flushed): the engine holds back every frame
//! that would reveal a change to a peer until the change's `Put` has completed, which is
//! what makes an acknowledgement (see `protocol.md`) mean "safely stored".
//!
//! ```
//! use automerge::transaction::Transactable;
//! use cairn_sync::engine::{Direction, Engine, EngineConfig, Input, Output, Role};
//! use cairn_sync::ids::{ConnectionId, PeerId};
//! use cairn_sync::store::{MemoryStore, Storage};
//! use cairn_sync::time::Timestamp;
//!
//! // A relay and a phone, wired together in memory over one connection.
//! let stores = [MemoryStore::default(), MemoryStore::default()];
//! let relay_config = EngineConfig::new(Role::Relay, PeerId::from("relay"), 1)
//!     .with_storage_id(stores[0].storage_id().unwrap());
//! let mut engines = [
//!     Engine::new(relay_config),
//!     Engine::new(EngineConfig::new(Role::Client, PeerId::from("phone"), 2)),
//! ];
//! let now = Timestamp::from_millis(0);
//! let link = ConnectionId::new(1);
//! let doc = engines[1].create_document(now, |tx| {
//!     tx.put(automerge::ROOT, "title", "Minutes").unwrap();
//! });
//! engines[0].handle_input(now, Input::Connected { conn: link, direction: Direction::Incoming, identity: None, local_peer: None });
//! engines[1].handle_input(now, Input::Connected { conn: link, direction: Direction::Outgoing, identity: None, local_peer: None });
//!
//! // The host loop: run storage tasks, carry frames across, until both sides are quiet.
//! loop {
//!     let mut frames = Vec::new();
//!     for side in 0..2 {
//!         while let Some(output) = engines[side].poll_output() {
//!             match output {
//!                 Output::Send { frame, .. } => frames.push((1 - side, frame)),
//!                 Output::Storage { task, op } => {
//!                     let result = stores[side].execute(op);
//!                     engines[side].handle_input(now, Input::StorageDone { task, result });
//!                 }
//!                 Output::Close { .. } | Output::Event(_) => {}
//!             }
//!         }
//!     }
//!     if frames.is_empty() {
//!         break;
//!     }
//!     for (to, frame) in frames {
//!         engines[to].handle_input(now, Input::Frame { conn: link, frame });
//!     }
//! }
//! assert!(engines[0].document(&doc).is_some(), "the relay has the phone's document");
//! ```
#![warn(missing_docs)]

pub mod docs;
pub mod engine;
pub mod ids;
pub mod membership;
pub mod store;
pub mod time;
pub mod wire;

#[cfg(feature = "runtime")]
pub mod runtime;

#[cfg(feature = "client")]
pub mod client;
