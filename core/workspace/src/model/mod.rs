//! The group workspace: one small Automerge document per concern.
//!
//! | document | module | one per | written by |
//! |---|---|---|---|
//! | Settings (profile, how the group meets, crisis link) | [`settings`] | group | organisers |
//! | Roster (membership view, code of conduct) | [`roster`] | group | the relay alone |
//! | Index of the group's other documents | [`index`] | group | members |
//! | Series (recurrence anchored in an IANA zone) | [`series`] | recurring meeting | members |
//! | Meeting (agenda, attendance, minutes, actions) | [`meeting`], [`minutes`] | occurrence or one-off | members |
//! | Resources | [`resources`] | group | members |
//! | Thread | [`thread`] | thread | members |
//! | Reports to facilitators | [`safety`] | reporter | the reporter and the facilitators |
//!
//! "Members" means roles that write ([`group::Role::can_write`]); observers, guests and
//! alumni read only. The relay enforces one access level per document kind
//! ([`schema::DocKind`]), which is why a group is split into three documents ([`group`]).
//!
//! Conventions every module follows:
//! - Functions that change a document take `&mut automerge::transaction::Transaction` and
//!   functions that read take `&impl automerge::ReadDoc`, so they run inside
//!   `Client::change`/`Client::read` and inside plain Automerge code alike.
//! - Every document root carries `schemaKind` and `schemaVersion` ([`schema`]); a document
//!   written by newer code is a [`schema::SchemaError::TooNew`], never silently misread.
//! - Co-edited strings are Automerge Text (what JS automerge 3 writes for strings);
//!   structured parts use `autosurgeon` typed structs.
//! - Instants are `i64` milliseconds since the Unix epoch (`…Ms` keys), calendar dates
//!   `YYYY-MM-DD` strings, zones IANA names, and document references `automerge:` URLs.
//! - Members are referred to by [`cairn_sync::ids::MemberId`]; display names (pseudonyms, per
//!   group) live only in the roster, which the relay writes.

pub(crate) use cairn_sync::docs::fields;
pub use cairn_sync::docs::{group, roster, schema};
pub mod index;
pub mod meeting;
pub mod minutes;
pub mod resources;
pub mod safety;
pub mod series;
pub mod settings;
pub mod templates;
pub mod thread;
