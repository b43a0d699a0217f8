//! The document formats the sync layer itself reads or writes: the schema header every
//! Cairn document carries, the group roles the relay decides, and the roster (the
//! membership view only the relay writes). The rest of the workspace model lives in the
//! `cairn-core` crate, which builds on these.

#[doc(hidden)]
pub mod fields;
pub mod group;
pub mod roster;
pub mod schema;
