//! Threads, posts, mentions and reactions.

use cairn_core::app::thread::{
    AgendaDraft, Mention, PostRecord, PostState, Reaction, ThreadRecord,
};

/// Who a post calls on (chosen by the member from a list, not parsed out of the text).
#[uniffi::remote(Enum)]
pub enum Mention {
    /// One member, by member id.
    Member {
        /// The member's id.
        member_id: String,
    },
    /// The group's facilitators (`@facilitators`).
    Facilitators,
    /// Everyone in the group (`@all`).
    All,
}

/// Whether a post can be read.
#[uniffi::remote(Enum)]
pub enum PostState {
    /// Readable.
    Visible,
    /// The author deleted it; a marker stays in its place.
    DeletedByAuthor {
        /// When (ms since the Unix epoch).
        at_ms: i64,
    },
    /// A facilitator removed it; a marker stays in its place.
    RemovedByFacilitator {
        /// The facilitator's member id.
        by: String,
        /// When (ms since the Unix epoch).
        at_ms: i64,
    },
}

/// Everyone who reacted to a post with one emoji.
#[uniffi::remote(Record)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// Who reacted with it, by member id.
    pub members: Vec<String>,
}

/// A post. A deleted or removed post has empty `text`, `mentions` and `reactions`.
#[uniffi::remote(Record)]
pub struct PostRecord {
    /// Its id in the thread.
    pub id: String,
    /// Who wrote it (member id; the roster gives the pseudonym).
    pub author: String,
    /// Exactly what they wrote.
    pub text: String,
    /// When it was written (ms since the Unix epoch, the author's clock).
    pub created_ms: i64,
    /// When it was last edited, if ever.
    pub edited_ms: Option<i64>,
    /// The post it answers.
    pub reply_to: Option<String>,
    /// Who it calls on.
    pub mentions: Vec<Mention>,
    /// Reactions by emoji.
    pub reactions: Vec<Reaction>,
    /// Visible, deleted or removed.
    pub state: PostState,
}

/// A thread as the app shows it.
#[uniffi::remote(Record)]
pub struct ThreadRecord {
    /// The thread's id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// Who started it (member id).
    pub started_by: Option<String>,
    /// Every post, oldest first.
    pub posts: Vec<PostRecord>,
}

/// An agenda item proposed from a post, for a meeting's agenda.
#[uniffi::remote(Record)]
pub struct AgendaDraft {
    /// The thread's title, or the start of the post when the thread has none.
    pub title: String,
    /// The post's author (member id): who raised the matter.
    pub raised_by: String,
    /// The thread's id, to link back.
    pub thread_id: String,
    /// The post it came from.
    pub post_id: String,
}
