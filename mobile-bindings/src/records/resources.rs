//! The group's readings and files.

use cairn_core::app::resources::{NewResource, ResourceContent, ResourceKind, ResourceRecord};

/// What a new resource holds.
#[uniffi::remote(Enum)]
pub enum ResourceContent {
    /// A web link.
    Link {
        /// Where it points.
        url: String,
    },
    /// Something to read, online or on paper.
    Reading {
        /// Where to find it, if online.
        url: Option<String>,
    },
    /// A small file (at most [`MAX_FILE_BYTES`]).
    File {
        /// The file name.
        name: String,
        /// Its media type (`application/pdf`).
        mime: String,
        /// Its contents.
        bytes: Vec<u8>,
    },
}

/// What a stored resource is (a file's bytes come from [`Resources::file_bytes`]).
#[uniffi::remote(Enum)]
pub enum ResourceKind {
    /// A web link.
    Link {
        /// Where it points.
        url: String,
    },
    /// Something to read.
    Reading {
        /// Where to find it, if online.
        url: Option<String>,
    },
    /// A small file.
    File {
        /// The file name.
        name: String,
        /// Its media type.
        mime: String,
        /// Its size in bytes.
        size: u64,
    },
}

/// A resource to add.
#[uniffi::remote(Record)]
pub struct NewResource {
    /// Link, reading or file.
    pub content: ResourceContent,
    /// Its title (not empty).
    pub title: String,
    /// Why it is worth a look.
    pub note: String,
    /// Tags (blank ones are dropped).
    pub tags: Vec<String>,
    /// The meeting it belongs to (its id); `None`: the whole group.
    pub meeting_id: Option<String>,
    /// Whether the next meeting's reminder lists it.
    pub for_next_meeting: bool,
}

/// A stored resource.
#[uniffi::remote(Record)]
pub struct ResourceRecord {
    /// Its id in the group's resources.
    pub id: String,
    /// Link, reading or file.
    pub kind: ResourceKind,
    /// Its title.
    pub title: String,
    /// Its note.
    pub note: String,
    /// Its tags, sorted.
    pub tags: Vec<String>,
    /// The meeting it belongs to (its id); `None`: the whole group.
    pub meeting_id: Option<String>,
    /// Whether the next meeting's reminder lists it.
    pub for_next_meeting: bool,
    /// Who added it (member id).
    pub added_by: String,
    /// When (ms since the Unix epoch).
    pub created_ms: i64,
}
