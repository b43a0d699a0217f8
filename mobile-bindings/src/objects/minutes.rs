//! `Minutes`: A meeting's minutes: co-edited rich text (UTF-16 indexes), agreement, export.

use std::sync::Arc;

use super::*;

#[uniffi::export]
impl Minutes {
    /// The minutes as they are on this device now.
    pub async fn read(&self) -> Result<MinutesRecord, CairnError> {
        self.0.read().await
    }

    /// The minutes now, then after every change to them, until cancelled or dropped.
    pub fn subscribe(&self, listener: Arc<dyn MinutesListener>) -> Arc<Subscription> {
        Subscription::wrap(self.0.subscribe(listen(listener)))
    }

    /// The version the group agreed (`None` while a draft).
    pub async fn agreed_text(&self) -> Result<Option<MinutesText>, CairnError> {
        self.0.agreed_text().await
    }

    /// The meeting these minutes belong to.
    pub fn meeting(&self) -> Arc<Meeting> {
        Meeting::wrap(self.0.meeting())
    }

    /// Types `text` at `index`. A newline stays inside the paragraph (a line break); use
    /// [`Minutes::insert_paragraph`] for a new paragraph.
    pub async fn insert_text(&self, index: u32, text: String) -> Result<(), CairnError> {
        self.0.insert_text(index, text).await
    }

    /// Deletes `len` units from `index` (paragraph markers in the range go too, joining
    /// the paragraphs).
    pub async fn delete(&self, index: u32, len: u32) -> Result<(), CairnError> {
        self.0.delete(index, len).await
    }

    /// Replaces `delete` units at `index` with `insert`, in one change (what an editor's
    /// text-changed callback reports).
    pub async fn splice(&self, index: u32, delete: u32, insert: String) -> Result<(), CairnError> {
        self.0.splice(index, delete, insert).await
    }

    /// Starts a new paragraph of `kind` at `index` (Enter pressed there): the text after
    /// `index` moves into it.
    pub async fn insert_paragraph(&self, index: u32, kind: BlockKind) -> Result<(), CairnError> {
        self.0.insert_paragraph(index, kind).await
    }

    /// Makes paragraph number `paragraph` (as in [`MinutesText::paragraphs`]) a heading,
    /// a list item or plain text.
    pub async fn set_block(&self, paragraph: u32, kind: BlockKind) -> Result<(), CairnError> {
        self.0.set_block(paragraph, kind).await
    }

    /// Bolds (or un-bolds) `start..end`; typing at the end of bold text continues it.
    pub async fn set_bold(&self, start: u32, end: u32, on: bool) -> Result<(), CairnError> {
        self.0.set_bold(start, end, on).await
    }

    /// Italicises (or not) `start..end`.
    pub async fn set_italic(&self, start: u32, end: u32, on: bool) -> Result<(), CairnError> {
        self.0.set_italic(start, end, on).await
    }

    /// Links `start..end` to `url`, or removes the link with `None`.
    pub async fn set_link(
        &self,
        start: u32,
        end: u32,
        url: Option<String>,
    ) -> Result<(), CairnError> {
        self.0.set_link(start, end, url).await
    }

    /// Marks `start..end` off the record (left out of every export), or back on it. Words
    /// typed on at the end of an off-the-record passage stay off the record.
    pub async fn mark_off_record(&self, start: u32, end: u32, on: bool) -> Result<(), CairnError> {
        self.0.mark_off_record(start, end, on).await
    }

    /// Appends a heading and an empty paragraph per section. New meetings already start
    /// with the standard template; apply a template once: two devices applying it at the
    /// same time would each add the sections.
    pub async fn apply_template(&self, sections: Vec<String>) -> Result<(), CairnError> {
        self.0.apply_template(sections).await
    }

    /// Records, as this device's member, that the group agreed the minutes as they are on
    /// this device now. Prefer [`Minutes::agree_at`] with the heads of the copy on screen.
    pub async fn agree(&self) -> Result<AgreementRecord, CairnError> {
        self.0.agree().await
    }

    /// Records, as this device's member, that the group agreed the minutes as they were at
    /// `heads` (from [`MinutesRecord::heads`]: the version on screen when they said yes).
    pub async fn agree_at(&self, heads: Vec<String>) -> Result<AgreementRecord, CairnError> {
        self.0.agree_at(heads).await
    }

    /// The minutes as Markdown (CommonMark), as they are now; off-the-record passages are
    /// left out and member text is escaped.
    pub async fn export_markdown(&self) -> Result<String, CairnError> {
        self.0.export_markdown().await
    }

    /// The agreed minutes as Markdown; `None` while they are a draft.
    pub async fn export_agreed_markdown(&self) -> Result<Option<String>, CairnError> {
        self.0.export_agreed_markdown().await
    }

    /// The minutes as an HTML fragment, `version` as asked; `None` if the agreed version
    /// was asked for and the minutes are a draft.
    pub async fn export_html(&self, version: MinutesVersion) -> Result<Option<String>, CairnError> {
        self.0.export_html(version).await
    }

    /// Shows this device's caret or selection to everyone else in these minutes (`None`:
    /// leaves, and others stop showing it at once). Indexes past the end are Invalid.
    pub async fn set_cursor(&self, cursor: Option<CursorRecord>) -> Result<(), CairnError> {
        self.0.set_cursor(cursor).await
    }

    /// The other devices' carets and selections in these minutes now.
    pub async fn cursors(&self) -> Result<Vec<PeerCursor>, CairnError> {
        self.0.cursors().await
    }

    /// The other devices' cursors, live: the current list first, then a new one whenever
    /// a peer moves, arrives or leaves, or an edit moves their positions.
    pub fn subscribe_cursors(&self, listener: Arc<dyn CursorsListener>) -> Arc<Subscription> {
        Subscription::wrap(self.0.subscribe_cursors(listen(listener)))
    }
}
