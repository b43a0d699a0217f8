//! Exports of workspace documents to formats people keep outside the app.
//!
//! - [`minutes`]: a meeting's minutes as Markdown and HTML, without off-the-record passages.
//! - [`member`]: a member's own data.

pub mod member;
pub mod minutes;
