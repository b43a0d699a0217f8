//! The minutes' rich text as spans, blocks and marks.

use cairn_core::app::meeting::{AgreementRecord, MinutesStatus};
use cairn_core::app::minutes::{
    BlockKind, MinutesRecord, MinutesText, MinutesVersion, ParagraphRecord, RunRecord,
};

/// What a paragraph is.
#[uniffi::remote(Enum)]
pub enum BlockKind {
    /// Plain text.
    Paragraph,
    /// A heading.
    Heading {
        /// 1 (largest) to 6.
        level: u8,
    },
    /// An item of a bulleted list.
    BulletItem,
    /// An item of a numbered list.
    NumberedItem,
}

/// A run of text with one style.
#[uniffi::remote(Record)]
pub struct RunRecord {
    /// The text.
    pub text: String,
    /// Bold.
    pub bold: bool,
    /// Italic.
    pub italic: bool,
    /// The link target, if the text is a link.
    pub link: Option<String>,
    /// Left out of every export.
    pub off_record: bool,
}

/// One paragraph.
#[uniffi::remote(Record)]
pub struct ParagraphRecord {
    /// What it is.
    pub kind: BlockKind,
    /// Where its text starts (after its marker), in UTF-16 units of [`MinutesText::text`].
    pub start: u32,
    /// Where its text ends.
    pub end: u32,
    /// Its text, split where the style changes.
    pub runs: Vec<RunRecord>,
}

/// The minutes' text at one version.
#[uniffi::remote(Record)]
pub struct MinutesText {
    /// The whole text, each paragraph marker read as `U+FFFC`: the text every index
    /// refers to.
    pub text: String,
    /// Its length in UTF-16 units.
    pub length: u32,
    /// The paragraphs in order; their number is what [`Minutes::set_block`] takes.
    pub paragraphs: Vec<ParagraphRecord>,
}

/// The minutes as read.
#[uniffi::remote(Record)]
pub struct MinutesRecord {
    /// The meeting's document id.
    pub meeting_id: String,
    /// The minutes as they are now.
    pub current: MinutesText,
    /// Draft, agreed, or changed since agreed.
    pub status: MinutesStatus,
    /// The agreement, once agreed.
    pub agreement: Option<AgreementRecord>,
    /// The document's heads this record was read at (lowercase hex); pass them to
    /// [`Minutes::agree_at`] to agree exactly what the member saw.
    pub heads: Vec<String>,
}

/// Which version of the minutes to export.
#[uniffi::remote(Enum)]
pub enum MinutesVersion {
    /// As they are now.
    Current,
    /// As the group agreed them.
    Agreed,
}
