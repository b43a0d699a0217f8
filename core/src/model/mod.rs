//! The group workspace: one small Automerge document per concern.
//!
//! | document | module | one per |
//! |---|---|---|
//! | Group (profile, index of the other documents, membership view) | [`group`] | group |
//! | Series (recurrence anchored in an IANA zone) | [`series`] | recurring meeting |
//! | Meeting (agenda, attendance, minutes, actions) | [`meeting`], [`minutes`] | occurrence or one-off |
//! | Resources | [`resources`] | group |
//! | Thread | [`thread`] | thread |
//! | Reports to facilitators | [`safety`] | group |
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
//! - Members are referred to by [`crate::ids::MemberId`]; display names (pseudonyms, per
//!   group) live only in the group document's membership view.

pub(crate) mod fields;
pub mod group;
pub mod meeting;
pub mod minutes;
pub mod resources;
pub mod safety;
pub mod schema;
pub mod series;
pub mod templates;
pub mod thread;
