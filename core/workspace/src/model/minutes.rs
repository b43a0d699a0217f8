//! A meeting's minutes: co-edited rich text in the meeting document.
//!
//! Layout: the root key `minutes` holds one Automerge Text object.
//!
//! - **Paragraphs** are Automerge block markers ([`split_block`]): each block starts with a
//!   marker (one UTF-16 unit, read back as `U+FFFC`) whose map says what the paragraph is,
//!   in the shape the automerge-prosemirror binding uses:
//!   `{type: "paragraph" | "heading" | "unordered-list-item" | "ordered-list-item",
//!   parents: [], attrs: {level?: int}}`. Text before the first marker (written by a plain-text
//!   client) reads as an implicit plain paragraph. Blocks rather than `heading`/`list` marks
//!   because a block is one element: two people retyping a heading concurrently cannot leave
//!   half of it a heading, and a paragraph split merges like any insertion.
//! - **Inline style** is Automerge marks (Peritext): `bold` and `italic` (value `true`,
//!   expanding after, so typing at the end of a bold phrase continues bold), `link` (value = the
//!   URL, not expanding, so typing after a link is plain text) and `offRecord` (value `true`,
//!   expanding after: words typed on at the end of an off-the-record passage stay off the
//!   record — if in doubt, leave it out of the exports).
//!
//! Every index is a UTF-16 code unit offset into the Text, counting block markers, exactly the
//! offsets of [`RichText::text`]. Documents must be created and loaded with
//! [`TextEncoding::Utf16CodeUnit`]; any other encoding is refused with
//! [`MinutesError::Utf16Required`] rather than silently shifting every mark.
//!
//! [`split_block`]: automerge::transaction::Transactable::split_block

use std::ops::Range;

use automerge::marks::{ExpandMark, Mark, MarkSet};
use automerge::transaction::Transactable;
use automerge::{
    AutomergeError, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, TextEncoding, Value, ROOT,
};
use thiserror::Error;

use crate::model::schema::{self, DocKind, SchemaError};

/// Root key of the minutes Text.
pub const MINUTES_KEY: &str = "minutes";
/// Mark name for bold text.
pub const BOLD: &str = "bold";
/// Mark name for italic text.
pub const ITALIC: &str = "italic";
/// Mark name for links; the mark's value is the URL.
pub const LINK: &str = "link";
/// Mark name for passages left out of every export.
pub const OFF_RECORD: &str = "offRecord";

/// The character a block marker reads as in [`RichText::text`].
pub const BLOCK_MARKER: char = '\u{fffc}';

/// Why an edit or read of the minutes failed.
#[derive(Debug, Error)]
pub enum MinutesError {
    /// The document is not a meeting document this code can read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Automerge refused the operation (usually stale object ids or unknown heads).
    #[error(transparent)]
    Automerge(#[from] AutomergeError),
    /// This copy lacks changes the requested version includes (not synced yet).
    #[error("{0} changes of the requested version are not on this device yet")]
    MissingChanges(usize),
    /// The meeting document has no minutes Text (not synced yet, or written by foreign code).
    #[error("the meeting has no minutes text")]
    NoMinutes,
    /// The document was created or loaded without UTF-16 text indexes; pass
    /// `TextEncoding::Utf16CodeUnit` on create and in `LoadOptions` on every load.
    #[error("the document does not use UTF-16 text indexes")]
    Utf16Required,
    /// An index or range lies outside the minutes (the editor's copy is stale).
    #[error("range {start}..{end} is outside the minutes (length {len})")]
    OutOfRange {
        /// Start of the requested range.
        start: usize,
        /// End of the requested range.
        end: usize,
        /// Current length in UTF-16 units.
        len: usize,
    },
    /// No paragraph with that number.
    #[error("paragraph {index} does not exist ({count} paragraphs)")]
    NoParagraph {
        /// The requested paragraph.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// Headings have levels 1 to 6.
    #[error("heading level {0} is not between 1 and 6")]
    HeadingLevel(u8),
    /// A link needs a URL; use `None` to remove a link.
    #[error("a link URL cannot be empty")]
    EmptyLink,
}

/// What a paragraph is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Plain text.
    Paragraph,
    /// A heading of level 1 (largest) to 6.
    Heading(u8),
    /// An item of a bulleted list.
    BulletItem,
    /// An item of a numbered list.
    NumberedItem,
}

impl BlockKind {
    fn type_name(self) -> &'static str {
        match self {
            BlockKind::Paragraph => "paragraph",
            BlockKind::Heading(_) => "heading",
            BlockKind::BulletItem => "unordered-list-item",
            BlockKind::NumberedItem => "ordered-list-item",
        }
    }

    fn validate(self) -> Result<(), MinutesError> {
        match self {
            BlockKind::Heading(level) if !(1..=6).contains(&level) => {
                Err(MinutesError::HeadingLevel(level))
            }
            _ => Ok(()),
        }
    }

    /// Reads a block marker's map; unknown types (from richer editors) read as paragraphs so
    /// their text still shows.
    fn from_block(map: &automerge::hydrate::Map) -> BlockKind {
        let type_name = match map.get("type") {
            Some(automerge::hydrate::Value::Scalar(ScalarValue::Str(s))) => s.to_string(),
            Some(automerge::hydrate::Value::Text(t)) => String::from(t),
            _ => String::new(),
        };
        match type_name.as_str() {
            "heading" => {
                let level = match map.get("attrs") {
                    Some(automerge::hydrate::Value::Map(attrs)) => match attrs.get("level") {
                        Some(automerge::hydrate::Value::Scalar(s)) => match s {
                            ScalarValue::Int(i) => *i,
                            ScalarValue::Uint(u) => (*u).min(6) as i64,
                            ScalarValue::F64(f) => *f as i64,
                            _ => 1,
                        },
                        _ => 1,
                    },
                    _ => 1,
                };
                BlockKind::Heading(level.clamp(1, 6) as u8)
            }
            "unordered-list-item" => BlockKind::BulletItem,
            "ordered-list-item" => BlockKind::NumberedItem,
            _ => BlockKind::Paragraph,
        }
    }
}

/// The inline style of a stretch of text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Marks {
    /// Bold.
    pub bold: bool,
    /// Italic.
    pub italic: bool,
    /// The link target, if the text is a link.
    pub link: Option<String>,
    /// Left out of every export.
    pub off_record: bool,
}

impl Marks {
    /// No style at all.
    pub fn is_plain(&self) -> bool {
        *self == Marks::default()
    }

    fn from_set(set: Option<&MarkSet>) -> Marks {
        let mut marks = Marks::default();
        let Some(set) = set else { return marks };
        for (name, value) in set.iter() {
            let on = !matches!(value, ScalarValue::Null | ScalarValue::Boolean(false));
            match name {
                BOLD => marks.bold = on,
                ITALIC => marks.italic = on,
                OFF_RECORD => marks.off_record = on,
                LINK => {
                    marks.link = match value {
                        ScalarValue::Str(url) if !url.is_empty() => Some(url.to_string()),
                        _ => None,
                    }
                }
                // Marks from other editors (comments, highlights) are kept in the document
                // but have no meaning here.
                _ => {}
            }
        }
        marks
    }
}

/// A styled stretch of the minutes: `start..end` in UTF-16 units of [`RichText::text`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// First unit.
    pub start: usize,
    /// One past the last unit.
    pub end: usize,
    /// The style.
    pub marks: Marks,
}

/// A paragraph marker at `index` in [`RichText::text`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Where the marker sits (UTF-16 units).
    pub index: usize,
    /// What the paragraph that starts here is.
    pub kind: BlockKind,
}

/// A run of text with one style, inside a [`Paragraph`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The text.
    pub text: String,
    /// Its style.
    pub marks: Marks,
}

/// One paragraph of the minutes, for display and export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paragraph {
    /// What it is.
    pub kind: BlockKind,
    /// Where its text starts (after its marker), in UTF-16 units of [`RichText::text`].
    pub start: usize,
    /// Where its text ends.
    pub end: usize,
    /// Its text split where the style changes.
    pub runs: Vec<Run>,
}

impl Paragraph {
    /// The paragraph's text without style.
    pub fn text(&self) -> String {
        self.runs.iter().map(|r| r.text.as_str()).collect()
    }
}

/// The minutes as read: text, styled spans and paragraph markers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RichText {
    /// The whole Text, each paragraph marker read as [`BLOCK_MARKER`]; indexes into this
    /// string (in UTF-16 units) are the indexes every editing function takes.
    pub text: String,
    /// Every styled stretch (unstyled text has no span), in order, not overlapping.
    pub spans: Vec<Span>,
    /// The paragraph markers, in order.
    pub blocks: Vec<Block>,
}

impl RichText {
    /// Length in UTF-16 units.
    pub fn len_utf16(&self) -> usize {
        self.text.encode_utf16().count()
    }

    /// The substring `range` (UTF-16 units); `None` if it splits a surrogate pair or is out of range.
    pub fn slice_utf16(&self, range: Range<usize>) -> Option<String> {
        let units: Vec<u16> = self.text.encode_utf16().collect();
        String::from_utf16(units.get(range)?).ok()
    }

    /// The paragraphs in order. Text before the first marker (or empty minutes) is an
    /// implicit plain paragraph, numbered 0; this numbering is what [`set_block`] takes.
    pub fn paragraphs(&self) -> Vec<Paragraph> {
        let mut paragraphs = Vec::new();
        let starts_with_marker = self.blocks.first().is_some_and(|b| b.index == 0);
        if !starts_with_marker {
            paragraphs.push(Paragraph {
                kind: BlockKind::Paragraph,
                start: 0,
                end: 0,
                runs: Vec::new(),
            });
        }
        let mut blocks = self.blocks.iter().peekable();
        let mut spans = self.spans.iter().peekable();
        let mut pos = 0;
        for ch in self.text.chars() {
            let width = ch.len_utf16();
            if blocks.peek().is_some_and(|b| b.index == pos) {
                let block = blocks.next().expect("peeked");
                paragraphs.push(Paragraph {
                    kind: block.kind,
                    start: pos + 1,
                    end: pos + 1,
                    runs: Vec::new(),
                });
                pos += width;
                continue;
            }
            while spans.peek().is_some_and(|s| s.end <= pos) {
                spans.next();
            }
            let marks = match spans.peek() {
                Some(s) if s.start <= pos => s.marks.clone(),
                _ => Marks::default(),
            };
            let paragraph = paragraphs.last_mut().expect("one paragraph exists");
            match paragraph.runs.last_mut() {
                Some(run) if run.marks == marks => run.text.push(ch),
                _ => paragraph.runs.push(Run {
                    text: ch.to_string(),
                    marks,
                }),
            }
            pos += width;
            paragraph.end = pos;
        }
        paragraphs
    }

    /// The visible text: paragraphs joined by newlines, no markers, no style.
    pub fn plain_text(&self) -> String {
        self.paragraphs()
            .iter()
            .map(Paragraph::text)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Creates the empty minutes Text on a new meeting document (called by the meeting's init).
pub(crate) fn create(tx: &mut impl Transactable) -> Result<ObjId, AutomergeError> {
    tx.put_object(ROOT, MINUTES_KEY, ObjType::Text)
}

/// Finds the minutes Text after checking the schema and the text encoding.
fn minutes_obj(doc: &impl ReadDoc) -> Result<ObjId, MinutesError> {
    schema::check(doc, DocKind::Meeting)?;
    if doc.text_encoding() != TextEncoding::Utf16CodeUnit {
        return Err(MinutesError::Utf16Required);
    }
    match doc.get(ROOT, MINUTES_KEY)? {
        Some((Value::Object(ObjType::Text), id)) => Ok(id),
        _ => Err(MinutesError::NoMinutes),
    }
}

fn check_range(doc: &impl ReadDoc, obj: &ObjId, range: &Range<usize>) -> Result<(), MinutesError> {
    let len = doc.length(obj);
    if range.start > range.end || range.end > len {
        return Err(MinutesError::OutOfRange {
            start: range.start,
            end: range.end,
            len,
        });
    }
    Ok(())
}

/// Types `text` at `index` (UTF-16 units). Newlines stay inside the paragraph (a line break);
/// use [`insert_paragraph`] for a new paragraph.
pub fn insert_text(
    tx: &mut impl Transactable,
    index: usize,
    text: &str,
) -> Result<(), MinutesError> {
    let obj = minutes_obj(tx)?;
    check_range(tx, &obj, &(index..index))?;
    tx.splice_text(&obj, index, 0, text)?;
    Ok(())
}

/// Deletes `len` UTF-16 units from `index`; paragraph markers in the range are removed too
/// (joining the paragraphs).
pub fn delete(tx: &mut impl Transactable, index: usize, len: usize) -> Result<(), MinutesError> {
    let obj = minutes_obj(tx)?;
    check_range(tx, &obj, &(index..index.saturating_add(len)))?;
    if len > 0 {
        tx.splice_text(&obj, index, len as isize, "")?;
    }
    Ok(())
}

/// Starts a new paragraph of `kind` at `index` (the user pressed Enter there): the text after
/// `index` moves into the new paragraph.
pub fn insert_paragraph(
    tx: &mut impl Transactable,
    index: usize,
    kind: BlockKind,
) -> Result<(), MinutesError> {
    kind.validate()?;
    let obj = minutes_obj(tx)?;
    check_range(tx, &obj, &(index..index))?;
    let block = tx.split_block(&obj, index)?;
    write_new_block(tx, &block, kind)?;
    Ok(())
}

/// Fills a fresh marker's map: every key is created once here, so concurrent restyling
/// later only overwrites scalars and never races to create the containers.
fn write_new_block(
    tx: &mut impl Transactable,
    block: &ObjId,
    kind: BlockKind,
) -> Result<(), AutomergeError> {
    tx.put(block, "type", kind.type_name())?;
    tx.put_object(block, "parents", ObjType::List)?;
    let attrs = tx.put_object(block, "attrs", ObjType::Map)?;
    if let BlockKind::Heading(level) = kind {
        tx.put(&attrs, "level", ScalarValue::Int(level as i64))?;
    }
    Ok(())
}

/// Makes paragraph number `paragraph` (as numbered by [`RichText::paragraphs`]) a `kind`.
pub fn set_block(
    tx: &mut impl Transactable,
    paragraph: usize,
    kind: BlockKind,
) -> Result<(), MinutesError> {
    kind.validate()?;
    let obj = minutes_obj(tx)?;
    let rich = read_from(tx, &obj, None)?;
    let implicit = rich.blocks.first().is_none_or(|b| b.index != 0);
    let count = rich.blocks.len() + usize::from(implicit);
    if paragraph >= count {
        return Err(MinutesError::NoParagraph {
            index: paragraph,
            count,
        });
    }
    if implicit && paragraph == 0 {
        // Give the leading text a marker of its own so it can carry a kind.
        let block = tx.split_block(&obj, 0)?;
        write_new_block(tx, &block, kind)?;
        return Ok(());
    }
    let index = rich.blocks[paragraph - usize::from(implicit)].index;
    let block = match tx.get(&obj, index)? {
        Some((Value::Object(ObjType::Map), id)) => id,
        _ => {
            return Err(MinutesError::NoParagraph {
                index: paragraph,
                count,
            })
        }
    };
    tx.put(&block, "type", kind.type_name())?;
    let attrs = match tx.get(&block, "attrs")? {
        Some((Value::Object(ObjType::Map), id)) => id,
        _ => tx.put_object(&block, "attrs", ObjType::Map)?,
    };
    if tx.get(&block, "parents")?.is_none() {
        tx.put_object(&block, "parents", ObjType::List)?;
    }
    match kind {
        BlockKind::Heading(level) => tx.put(&attrs, "level", ScalarValue::Int(level as i64))?,
        _ => {
            if tx.get(&attrs, "level")?.is_some() {
                tx.delete(&attrs, "level")?;
            }
        }
    }
    Ok(())
}

/// Makes a paragraph a heading of `level` (1–6).
pub fn set_heading(
    tx: &mut impl Transactable,
    paragraph: usize,
    level: u8,
) -> Result<(), MinutesError> {
    set_block(tx, paragraph, BlockKind::Heading(level))
}

/// Makes a paragraph a list item (`numbered`: ordered list, else bullets).
pub fn set_list_item(
    tx: &mut impl Transactable,
    paragraph: usize,
    numbered: bool,
) -> Result<(), MinutesError> {
    set_block(
        tx,
        paragraph,
        if numbered {
            BlockKind::NumberedItem
        } else {
            BlockKind::BulletItem
        },
    )
}

/// Makes a paragraph plain text again.
pub fn set_paragraph(tx: &mut impl Transactable, paragraph: usize) -> Result<(), MinutesError> {
    set_block(tx, paragraph, BlockKind::Paragraph)
}

fn set_flag(
    tx: &mut impl Transactable,
    range: Range<usize>,
    name: &str,
    on: bool,
    expand: ExpandMark,
) -> Result<(), MinutesError> {
    let obj = minutes_obj(tx)?;
    check_range(tx, &obj, &range)?;
    if range.is_empty() {
        return Ok(());
    }
    if on {
        tx.mark(
            &obj,
            Mark::new(name.to_owned(), true, range.start, range.end),
            expand,
        )?;
    } else {
        tx.unmark(&obj, name, range.start, range.end, expand)?;
    }
    Ok(())
}

/// Bolds (or un-bolds) `range`. Text typed at the end of a bold stretch is bold too.
pub fn set_bold(
    tx: &mut impl Transactable,
    range: Range<usize>,
    on: bool,
) -> Result<(), MinutesError> {
    set_flag(tx, range, BOLD, on, ExpandMark::After)
}

/// Italicises (or not) `range`. Text typed at the end of an italic stretch is italic too.
pub fn set_italic(
    tx: &mut impl Transactable,
    range: Range<usize>,
    on: bool,
) -> Result<(), MinutesError> {
    set_flag(tx, range, ITALIC, on, ExpandMark::After)
}

/// Marks `range` as off the record (left out of exports), or back on the record.
pub fn mark_off_record(
    tx: &mut impl Transactable,
    range: Range<usize>,
    on: bool,
) -> Result<(), MinutesError> {
    set_flag(tx, range, OFF_RECORD, on, ExpandMark::After)
}

/// Links `range` to `url`, or removes the link with `None`. Links never grow: text typed
/// at either end is plain. The URL is stored as given; exports only render http, https
/// and mailto links.
pub fn set_link(
    tx: &mut impl Transactable,
    range: Range<usize>,
    url: Option<&str>,
) -> Result<(), MinutesError> {
    let obj = minutes_obj(tx)?;
    check_range(tx, &obj, &range)?;
    if range.is_empty() {
        return Ok(());
    }
    match url {
        Some(url) => {
            let url = url.trim();
            if url.is_empty() {
                return Err(MinutesError::EmptyLink);
            }
            tx.mark(
                &obj,
                Mark::new(LINK.to_owned(), url, range.start, range.end),
                ExpandMark::None,
            )?;
        }
        None => tx.unmark(&obj, LINK, range.start, range.end, ExpandMark::None)?,
    }
    Ok(())
}

/// Reads the current minutes.
pub fn read_minutes(doc: &impl ReadDoc) -> Result<RichText, MinutesError> {
    let obj = minutes_obj(doc)?;
    read_from(doc, &obj, None)
}

/// A stable position in the minutes for presence: the cursor at UTF-16 `index`, as text
/// (Automerge's cursor form, which automerge-repo's JS clients use too). It keeps pointing
/// at the same character while others type before it.
pub fn cursor_at(doc: &impl ReadDoc, index: usize) -> Result<String, MinutesError> {
    let obj = minutes_obj(doc)?;
    check_range(doc, &obj, &(index..index))?;
    Ok(doc.get_cursor(&obj, index, None)?.to_string())
}

/// Where a cursor from [`cursor_at`] (this device's or another's) points now, in UTF-16
/// units; `None` when it is not a cursor into these minutes (another peer's malformed
/// presence, or a character this copy has not received yet).
pub fn cursor_position(doc: &impl ReadDoc, cursor: &str) -> Option<usize> {
    let obj = minutes_obj(doc).ok()?;
    let cursor = automerge::Cursor::try_from(cursor).ok()?;
    doc.get_cursor_position(&obj, &cursor, None).ok()
}

/// Reads the minutes as they were at `heads` (e.g. the agreed version). Fails with
/// [`MinutesError::MissingChanges`] if this copy does not have those changes yet.
pub fn read_minutes_at(doc: &impl ReadDoc, heads: &[ChangeHash]) -> Result<RichText, MinutesError> {
    let obj = minutes_obj(doc)?;
    let missing = doc.get_missing_deps(heads);
    if !missing.is_empty() {
        return Err(MinutesError::MissingChanges(missing.len()));
    }
    read_from(doc, &obj, Some(heads))
}

fn read_from(
    doc: &impl ReadDoc,
    obj: &ObjId,
    heads: Option<&[ChangeHash]>,
) -> Result<RichText, MinutesError> {
    let spans = match heads {
        Some(heads) => doc.spans_at(obj, heads)?,
        None => doc.spans(obj)?,
    };
    let mut rich = RichText::default();
    let mut pos = 0;
    for span in spans {
        match span {
            automerge::Span::Text { text, marks } => {
                let width = text.encode_utf16().count();
                let marks = Marks::from_set(marks.as_deref());
                if !marks.is_plain() && width > 0 {
                    match rich.spans.last_mut() {
                        Some(last) if last.end == pos && last.marks == marks => last.end += width,
                        _ => rich.spans.push(Span {
                            start: pos,
                            end: pos + width,
                            marks,
                        }),
                    }
                }
                rich.text.push_str(&text);
                pos += width;
            }
            automerge::Span::Block(map) => {
                rich.blocks.push(Block {
                    index: pos,
                    kind: BlockKind::from_block(&map),
                });
                rich.text.push(BLOCK_MARKER);
                pos += 1;
            }
        }
    }
    Ok(rich)
}

/// The headings a new meeting's minutes start with.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MinutesTemplate {
    /// Section headings, in order; each is followed by an empty paragraph to write in.
    pub sections: Vec<String>,
}

impl MinutesTemplate {
    /// Attendees, apologies, decisions, actions, topics for next time.
    pub fn standard() -> Self {
        MinutesTemplate {
            sections: [
                "Attendees",
                "Apologies",
                "Decisions",
                "Actions",
                "Topics for next time",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}

/// Appends the template's sections (a level-2 heading and an empty paragraph each) to the
/// end of the minutes. Apply it once, when the meeting is created: two devices applying it
/// concurrently would each add the sections.
pub fn apply_template(
    tx: &mut impl Transactable,
    template: &MinutesTemplate,
) -> Result<(), MinutesError> {
    let obj = minutes_obj(tx)?;
    write_template(tx, &obj, template)?;
    Ok(())
}

/// Writes the template into `obj` without checks (the meeting skeleton's fixed layout).
pub(crate) fn write_template(
    tx: &mut impl Transactable,
    obj: &ObjId,
    template: &MinutesTemplate,
) -> Result<(), AutomergeError> {
    for section in &template.sections {
        let at = tx.length(obj);
        let heading = tx.split_block(obj, at)?;
        write_new_block(tx, &heading, BlockKind::Heading(2))?;
        tx.splice_text(obj, at + 1, 0, section)?;
        let at = tx.length(obj);
        let paragraph = tx.split_block(obj, at)?;
        write_new_block(tx, &paragraph, BlockKind::Paragraph)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{ActorId, Automerge};

    fn new_doc(actor: u8) -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        doc.set_actor(ActorId::from([actor; 16]));
        let mut tx = doc.transaction();
        schema::stamp(&mut tx, DocKind::Meeting).unwrap();
        create(&mut tx).unwrap();
        tx.commit();
        doc
    }

    fn fork(doc: &Automerge, actor: u8) -> Automerge {
        doc.fork().with_actor(ActorId::from([actor; 16]))
    }

    fn edit<R>(
        doc: &mut Automerge,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> R,
    ) -> R {
        let mut tx = doc.transaction();
        let r = f(&mut tx);
        tx.commit();
        r
    }

    /// UTF-16 offset of `needle` in the minutes text.
    fn at(rich: &RichText, needle: &str) -> usize {
        let byte = rich
            .text
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in minutes"));
        rich.text[..byte].encode_utf16().count()
    }

    fn bold_spans(rich: &RichText) -> Vec<(usize, usize)> {
        rich.spans
            .iter()
            .filter(|s| s.marks.bold)
            .map(|s| (s.start, s.end))
            .collect()
    }

    #[test]
    fn the_issue_story_bolding_across_a_concurrent_insertion() {
        // Whichever phone's actor id sorts first, the outcome is the same.
        for (ana_actor, ben_actor) in [(2, 3), (3, 2)] {
            bolding_across_a_concurrent_insertion(ana_actor, ben_actor);
        }
    }

    fn bolding_across_a_concurrent_insertion(ana_actor: u8, ben_actor: u8) {
        // Both phones have the same paragraph.
        let mut base = new_doc(1);
        edit(&mut base, |tx| {
            insert_paragraph(tx, 0, BlockKind::Paragraph).unwrap();
            insert_text(tx, 1, "The circle agreed to meet monthly online.").unwrap();
        });
        let mut ana = fork(&base, ana_actor);
        let mut ben = fork(&base, ben_actor);
        let rich = read_minutes(&base).unwrap();
        let agreed = at(&rich, "agreed");
        let monthly = at(&rich, "monthly");

        // Offline, Ana types a word inside the phrase Ben is bolding…
        edit(&mut ana, |tx| insert_text(tx, monthly, "twice ").unwrap());
        // …while Ben bolds "agreed to meet", then extends the bold across "monthly", which in
        // his copy spans the place where Ana typed.
        edit(&mut ben, |tx| {
            set_bold(tx, agreed..at(&rich, " monthly"), true).unwrap()
        });
        edit(&mut ben, |tx| {
            set_bold(tx, agreed..monthly + "monthly".len(), true).unwrap()
        });

        ana.merge(&mut ben).unwrap();
        ben.merge(&mut ana).unwrap();
        let a = read_minutes(&ana).unwrap();
        let b = read_minutes(&ben).unwrap();
        assert_eq!(a, b, "both phones read the same minutes");
        assert_eq!(
            a.text,
            "\u{fffc}The circle agreed to meet twice monthly online."
        );
        // Exact boundaries: bold runs from "agreed" (index 12) to the end of "monthly"
        // (index 40), covering Ana's "twice "; the marker, "The circle " and " online." are plain.
        assert_eq!(bold_spans(&a), vec![(12, 40)]);
        assert_eq!(
            a.slice_utf16(12..40).unwrap(),
            "agreed to meet twice monthly"
        );
        assert_eq!(a.spans.len(), 1);
    }

    #[test]
    fn typing_after_a_synced_bold_phrase_is_bold_but_after_a_link_is_plain() {
        let mut base = new_doc(1);
        edit(&mut base, |tx| {
            insert_text(tx, 0, "See notes here today").unwrap()
        });
        let mut ana = fork(&base, 2);
        let mut ben = fork(&base, 3);
        // Ben bolds "notes" and links "here"; Ana receives it and types right after each word.
        // (A *concurrent* insertion exactly at a mark's edge lands inside or outside depending
        // on the two changes' op ids, so only the edges as seen by the typist are asserted.)
        edit(&mut ben, |tx| {
            set_bold(tx, 4..9, true).unwrap();
            set_link(tx, 10..14, Some("https://example.org/notes")).unwrap();
        });
        ana.merge(&mut ben).unwrap();
        edit(&mut ana, |tx| {
            insert_text(tx, 14, "!").unwrap();
            insert_text(tx, 9, "s").unwrap();
        });
        ben.merge(&mut ana).unwrap();
        let rich = read_minutes(&ben).unwrap();
        assert_eq!(rich, read_minutes(&ana).unwrap());
        assert_eq!(rich.text, "See notess here! today");
        // Bold expands after: "notess" (4..10) is bold. The link does not: "here" (11..15) only.
        assert_eq!(bold_spans(&rich), vec![(4, 10)]);
        let links: Vec<_> = rich
            .spans
            .iter()
            .filter(|s| s.marks.link.is_some())
            .map(|s| (s.start, s.end))
            .collect();
        assert_eq!(links, vec![(11, 15)]);
        assert_eq!(
            rich.spans[1].marks.link.as_deref(),
            Some("https://example.org/notes")
        );
    }

    #[test]
    fn typing_at_the_end_of_a_bold_phrase_continues_it() {
        let mut doc = new_doc(1);
        edit(&mut doc, |tx| {
            insert_text(tx, 0, "Decision: yes").unwrap();
            set_bold(tx, 0..9, true).unwrap();
            set_italic(tx, 10..13, true).unwrap();
        });
        edit(&mut doc, |tx| insert_text(tx, 9, "!").unwrap());
        let rich = read_minutes(&doc).unwrap();
        assert_eq!(rich.text, "Decision:! yes");
        assert_eq!(bold_spans(&rich), vec![(0, 10)]);
        assert!(rich
            .spans
            .iter()
            .any(|s| s.marks.italic && (s.start, s.end) == (11, 14)));
        edit(&mut doc, |tx| set_bold(tx, 0..10, false).unwrap());
        assert!(bold_spans(&read_minutes(&doc).unwrap()).is_empty());
    }

    #[test]
    fn indexes_are_utf16_units() {
        let mut doc = new_doc(1);
        // "🌱" is two UTF-16 units: "growth" starts at 3, not 2.
        edit(&mut doc, |tx| {
            insert_text(tx, 0, "🌱 growth").unwrap();
            set_bold(tx, 3..9, true).unwrap();
        });
        let rich = read_minutes(&doc).unwrap();
        assert_eq!(rich.slice_utf16(3..9).unwrap(), "growth");
        assert_eq!(bold_spans(&rich), vec![(3, 9)]);
        let other = Automerge::new_with_encoding(TextEncoding::UnicodeCodePoint);
        let mut other = other;
        edit(&mut other, |tx| {
            schema::stamp(tx, DocKind::Meeting).unwrap();
            create(tx).unwrap();
        });
        assert!(matches!(
            read_minutes(&other),
            Err(MinutesError::Utf16Required)
        ));
    }

    #[test]
    fn headings_and_lists_are_blocks_that_merge() {
        let mut base = new_doc(1);
        edit(&mut base, |tx| {
            apply_template(tx, &MinutesTemplate::standard()).unwrap()
        });
        let rich = read_minutes(&base).unwrap();
        let paragraphs = rich.paragraphs();
        assert_eq!(paragraphs.len(), 10);
        assert_eq!(paragraphs[0].kind, BlockKind::Heading(2));
        assert_eq!(paragraphs[0].text(), "Attendees");
        assert_eq!(paragraphs[5].text(), "");
        assert_eq!(paragraphs[4].text(), "Decisions");

        // Two recorders write under "Decisions" at once, one as a list item.
        let mut ana = fork(&base, 2);
        let mut ben = fork(&base, 3);
        let decisions_body = paragraphs[5].start;
        edit(&mut ana, |tx| {
            insert_text(tx, decisions_body, "Meet in June").unwrap();
            set_list_item(tx, 5, false).unwrap();
        });
        edit(&mut ben, |tx| {
            insert_text(tx, decisions_body, "Renew the circle").unwrap();
            set_heading(tx, 0, 1).unwrap();
        });
        ana.merge(&mut ben).unwrap();
        let merged = read_minutes(&ana).unwrap().paragraphs();
        assert_eq!(merged[0].kind, BlockKind::Heading(1));
        assert_eq!(merged[5].kind, BlockKind::BulletItem);
        let body = merged[5].text();
        assert!(
            body.contains("Meet in June") && body.contains("Renew the circle"),
            "{body}"
        );
        assert_eq!(body.len(), "Meet in JuneRenew the circle".len());
    }

    #[test]
    fn leading_text_without_a_marker_is_paragraph_zero() {
        let mut doc = new_doc(1);
        edit(&mut doc, |tx| insert_text(tx, 0, "Welcome").unwrap());
        assert_eq!(read_minutes(&doc).unwrap().paragraphs().len(), 1);
        edit(&mut doc, |tx| set_heading(tx, 0, 3).unwrap());
        let rich = read_minutes(&doc).unwrap();
        assert_eq!(rich.text, "\u{fffc}Welcome");
        assert_eq!(rich.paragraphs()[0].kind, BlockKind::Heading(3));
        assert_eq!(rich.plain_text(), "Welcome");
        assert!(matches!(
            edit(&mut doc, |tx| set_heading(tx, 0, 9)),
            Err(MinutesError::HeadingLevel(9))
        ));
        assert!(matches!(
            edit(&mut doc, |tx| set_paragraph(tx, 4)),
            Err(MinutesError::NoParagraph { .. })
        ));
        assert!(matches!(
            edit(&mut doc, |tx| insert_text(tx, 99, "x")),
            Err(MinutesError::OutOfRange { .. })
        ));
    }

    #[test]
    fn the_agreed_version_is_read_at_its_heads() {
        let mut doc = new_doc(1);
        edit(&mut doc, |tx| {
            insert_text(tx, 0, "Agreed text").unwrap();
            set_bold(tx, 0..6, true).unwrap();
        });
        let heads = doc.get_heads();
        edit(&mut doc, |tx| {
            delete(tx, 0, 7).unwrap();
            insert_text(tx, 0, "Changed ").unwrap();
        });
        let then = read_minutes_at(&doc, &heads).unwrap();
        assert_eq!(then.text, "Agreed text");
        assert_eq!(bold_spans(&then), vec![(0, 6)]);
        assert_eq!(read_minutes(&doc).unwrap().text, "Changed text");
    }

    #[test]
    fn off_record_marks_cover_concurrent_typing_inside() {
        let mut base = new_doc(1);
        edit(&mut base, |tx| {
            insert_text(tx, 0, "Public. Private bit. Public.").unwrap()
        });
        let mut ana = fork(&base, 2);
        let mut ben = fork(&base, 3);
        edit(&mut ana, |tx| mark_off_record(tx, 8..20, true).unwrap());
        edit(&mut ben, |tx| insert_text(tx, 16, "sensitive ").unwrap());
        ana.merge(&mut ben).unwrap();
        let rich = read_minutes(&ana).unwrap();
        let off: Vec<_> = rich.spans.iter().filter(|s| s.marks.off_record).collect();
        assert_eq!(off.len(), 1);
        assert_eq!(
            rich.slice_utf16(off[0].start..off[0].end).unwrap(),
            "Private sensitive bit."
        );
    }

    #[test]
    fn other_documents_are_refused() {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        edit(&mut doc, |tx| schema::stamp(tx, DocKind::Thread).unwrap());
        assert!(matches!(
            read_minutes(&doc),
            Err(MinutesError::Schema(SchemaError::WrongKind { .. }))
        ));
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        edit(&mut doc, |tx| schema::stamp(tx, DocKind::Meeting).unwrap());
        assert!(matches!(read_minutes(&doc), Err(MinutesError::NoMinutes)));
    }
}
