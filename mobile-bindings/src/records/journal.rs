//! The private journal's records.

use cairn_core::app::journal::{
    Answer, ExcerptSelection, ExcerptSource, Prompt, ReflectionRecord, ReflectionTemplate,
};

/// A structure for a reflection.
#[uniffi::remote(Enum)]
pub enum ReflectionTemplate {
    /// Gibbs' reflective cycle: six prompts from what happened to what to do next time.
    Gibbs,
}

/// One prompt of a template.
#[uniffi::remote(Record)]
pub struct Prompt {
    /// The key its answer is stored under.
    pub key: String,
    /// The question shown to the member.
    pub question: String,
}

/// The answer to one prompt.
#[uniffi::remote(Record)]
pub struct Answer {
    /// The prompt's key.
    pub key: String,
    /// What the member wrote.
    pub text: String,
}

/// A journal entry.
#[uniffi::remote(Record)]
pub struct ReflectionRecord {
    /// Its id.
    pub id: String,
    /// When it was first written (ms since the Unix epoch).
    pub created_ms: i64,
    /// When it was last saved.
    pub updated_ms: i64,
    /// The template it follows, if any.
    pub template: Option<ReflectionTemplate>,
    /// A title (may be empty).
    pub title: String,
    /// Free text (the whole entry when there is no template).
    pub body: String,
    /// Answers, in the template's prompt order (then any others by key).
    pub answers: Vec<Answer>,
}

/// Which text of an entry an excerpt is cut from.
#[uniffi::remote(Enum)]
pub enum ExcerptSource {
    /// The free-text body.
    Body,
    /// The answer to one prompt.
    Answer {
        /// The prompt's key.
        key: String,
    },
}

/// The passage a member chose to share: a range of UTF-16 code units (Swift, Kotlin and
/// JS string indexes) of one text of an entry.
#[uniffi::remote(Record)]
pub struct ExcerptSelection {
    /// Which text.
    pub source: ExcerptSource,
    /// First code unit.
    pub start: u32,
    /// One past the last code unit.
    pub end: u32,
}
