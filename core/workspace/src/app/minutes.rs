//! [`Minutes`]: a meeting's co-edited minutes — rich text as paragraphs of styled runs,
//! edits by UTF-16 index, draft → agreed, and export to Markdown or HTML (off-the-record
//! passages left out).
//!
//! Every index is a UTF-16 code unit offset into [`MinutesText::text`], where each paragraph
//! starts with one marker character (`U+FFFC`): what Android's and iOS's text views count.

use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash};
use cairn_sync::ids::{DocumentId, MemberId};

use crate::app::meeting::{heads_hex, AgreementRecord, MinutesStatus};
use crate::app::saturating_u32;
use crate::app::{CairnError, Listener, Meeting, Minutes, Subscription};
use crate::export::minutes::{self as export, ExportError, Version};
use crate::model::meeting as meeting_model;
use crate::model::minutes::{self as model, MinutesError, MinutesTemplate, RichText};

/// What a paragraph is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

impl From<model::BlockKind> for BlockKind {
    fn from(k: model::BlockKind) -> Self {
        match k {
            model::BlockKind::Paragraph => BlockKind::Paragraph,
            model::BlockKind::Heading(level) => BlockKind::Heading { level },
            model::BlockKind::BulletItem => BlockKind::BulletItem,
            model::BlockKind::NumberedItem => BlockKind::NumberedItem,
        }
    }
}

impl From<BlockKind> for model::BlockKind {
    fn from(k: BlockKind) -> Self {
        match k {
            BlockKind::Paragraph => model::BlockKind::Paragraph,
            BlockKind::Heading { level } => model::BlockKind::Heading(level),
            BlockKind::BulletItem => model::BlockKind::BulletItem,
            BlockKind::NumberedItem => model::BlockKind::NumberedItem,
        }
    }
}

/// A run of text with one style.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MinutesVersion {
    /// As they are now.
    Current,
    /// As the group agreed them.
    Agreed,
}

pub(crate) fn minutes_text(rich: &RichText) -> MinutesText {
    MinutesText {
        text: rich.text.clone(),
        length: saturating_u32(rich.len_utf16()),
        paragraphs: rich
            .paragraphs()
            .into_iter()
            .map(|p| ParagraphRecord {
                kind: p.kind.into(),
                start: saturating_u32(p.start),
                end: saturating_u32(p.end),
                runs: p
                    .runs
                    .into_iter()
                    .map(|r| RunRecord {
                        text: r.text,
                        bold: r.marks.bold,
                        italic: r.marks.italic,
                        link: r.marks.link,
                        off_record: r.marks.off_record,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn minutes_record(doc: &Automerge, id: &DocumentId) -> Result<MinutesRecord, CairnError> {
    let rich = model::read_minutes(doc)?;
    let agreement = meeting_model::agreement(doc)?;
    let status = match &agreement {
        None => MinutesStatus::Draft,
        Some(a) if model::read_minutes_at(doc, &a.heads)? == rich => MinutesStatus::Agreed,
        Some(_) => MinutesStatus::ChangedSinceAgreed,
    };
    Ok(MinutesRecord {
        meeting_id: id.to_string(),
        current: minutes_text(&rich),
        status,
        agreement: agreement.map(|a| AgreementRecord {
            heads: a.heads.iter().map(ToString::to_string).collect(),
            by: a.by.to_string(),
            at_ms: a.at_ms,
        }),
        heads: heads_hex(doc),
    })
}

impl From<ExportError> for CairnError {
    fn from(e: ExportError) -> Self {
        match e {
            ExportError::Meeting(e) => (*e).into(),
            e @ ExportError::NotAgreed => CairnError::invalid(e.to_string()),
        }
    }
}

fn range(start: u32, end: u32) -> std::ops::Range<usize> {
    start as usize..end as usize
}

impl Minutes {
    async fn change(
        &self,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), MinutesError>
            + Send
            + 'static,
    ) -> Result<(), CairnError> {
        self.cairn
            .change_doc(self.doc, move |tx| f(tx).map_err(CairnError::from))
            .await
    }

    /// The minutes as they are on this device now.
    pub async fn read(&self) -> Result<MinutesRecord, CairnError> {
        let id = self.doc;
        self.cairn
            .read_doc(self.doc, move |doc| minutes_record(doc, &id))
            .await
    }

    /// The minutes now, then after every change to them, until cancelled or dropped.
    pub fn subscribe(&self, listener: Arc<dyn Listener<MinutesRecord>>) -> Subscription {
        let id = self.doc;
        self.cairn
            .subscribe_doc(self.doc, move |doc| minutes_record(doc, &id), listener)
    }

    /// The version the group agreed (`None` while a draft).
    pub async fn agreed_text(&self) -> Result<Option<MinutesText>, CairnError> {
        self.cairn
            .read_doc(self.doc, |doc| {
                Ok(meeting_model::agreed_minutes_text(doc)?.map(|r| minutes_text(&r)))
            })
            .await
    }

    /// The meeting these minutes belong to.
    pub fn meeting(&self) -> Meeting {
        Meeting::new(self.cairn.clone(), self.group.clone(), self.doc)
    }

    /// Types `text` at `index`. A newline stays inside the paragraph (a line break); use
    /// [`Minutes::insert_paragraph`] for a new paragraph.
    pub async fn insert_text(&self, index: u32, text: String) -> Result<(), CairnError> {
        self.change(move |tx| model::insert_text(tx, index as usize, &text))
            .await
    }

    /// Deletes `len` units from `index` (paragraph markers in the range go too, joining
    /// the paragraphs).
    pub async fn delete(&self, index: u32, len: u32) -> Result<(), CairnError> {
        self.change(move |tx| model::delete(tx, index as usize, len as usize))
            .await
    }

    /// Replaces `delete` units at `index` with `insert`, in one change (what an editor's
    /// text-changed callback reports).
    pub async fn splice(&self, index: u32, delete: u32, insert: String) -> Result<(), CairnError> {
        self.change(move |tx| {
            model::delete(tx, index as usize, delete as usize)?;
            model::insert_text(tx, index as usize, &insert)
        })
        .await
    }

    /// Starts a new paragraph of `kind` at `index` (Enter pressed there): the text after
    /// `index` moves into it.
    pub async fn insert_paragraph(&self, index: u32, kind: BlockKind) -> Result<(), CairnError> {
        self.change(move |tx| model::insert_paragraph(tx, index as usize, kind.into()))
            .await
    }

    /// Makes paragraph number `paragraph` (as in [`MinutesText::paragraphs`]) a heading,
    /// a list item or plain text.
    pub async fn set_block(&self, paragraph: u32, kind: BlockKind) -> Result<(), CairnError> {
        self.change(move |tx| model::set_block(tx, paragraph as usize, kind.into()))
            .await
    }

    /// Bolds (or un-bolds) `start..end`; typing at the end of bold text continues it.
    pub async fn set_bold(&self, start: u32, end: u32, on: bool) -> Result<(), CairnError> {
        self.change(move |tx| model::set_bold(tx, range(start, end), on))
            .await
    }

    /// Italicises (or not) `start..end`.
    pub async fn set_italic(&self, start: u32, end: u32, on: bool) -> Result<(), CairnError> {
        self.change(move |tx| model::set_italic(tx, range(start, end), on))
            .await
    }

    /// Links `start..end` to `url`, or removes the link with `None`.
    pub async fn set_link(
        &self,
        start: u32,
        end: u32,
        url: Option<String>,
    ) -> Result<(), CairnError> {
        self.change(move |tx| model::set_link(tx, range(start, end), url.as_deref()))
            .await
    }

    /// Marks `start..end` off the record (left out of every export), or back on it. Words
    /// typed on at the end of an off-the-record passage stay off the record.
    pub async fn mark_off_record(&self, start: u32, end: u32, on: bool) -> Result<(), CairnError> {
        self.change(move |tx| model::mark_off_record(tx, range(start, end), on))
            .await
    }

    /// Appends a heading and an empty paragraph per section. New meetings already start
    /// with the standard template; apply a template once: two devices applying it at the
    /// same time would each add the sections.
    pub async fn apply_template(&self, sections: Vec<String>) -> Result<(), CairnError> {
        if sections.iter().any(|s| s.trim().is_empty()) {
            return Err(CairnError::invalid("a template section needs a heading"));
        }
        let template = MinutesTemplate { sections };
        self.change(move |tx| model::apply_template(tx, &template))
            .await
    }

    /// Records, as this device's member, that the group agreed the minutes as they are on
    /// this device now. Prefer [`Minutes::agree_at`] with the heads of the copy on screen.
    pub async fn agree(&self) -> Result<AgreementRecord, CairnError> {
        let me = self.cairn.member_id(&self.group)?;
        self.agree_as(me, None).await
    }

    /// Records, as this device's member, that the group agreed the minutes as they were at
    /// `heads` (from [`MinutesRecord::heads`]: the version on screen when they said yes).
    pub async fn agree_at(&self, heads: Vec<String>) -> Result<AgreementRecord, CairnError> {
        let heads = heads
            .iter()
            .map(|h| h.parse::<ChangeHash>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CairnError::invalid("heads must be hex change hashes"))?;
        let me = self.cairn.member_id(&self.group)?;
        self.agree_as(me, Some(heads)).await
    }

    pub(crate) async fn agree_as(
        &self,
        by: MemberId,
        heads: Option<Vec<ChangeHash>>,
    ) -> Result<AgreementRecord, CairnError> {
        let now = self.cairn.now_ms();
        self.cairn
            .change_doc(self.doc, move |tx| {
                let heads = heads.unwrap_or_else(|| tx.base_heads());
                meeting_model::agree_minutes(tx, &heads, &by, now)?;
                Ok(AgreementRecord {
                    heads: heads.iter().map(ToString::to_string).collect(),
                    by: by.to_string(),
                    at_ms: now,
                })
            })
            .await
    }

    /// The minutes as Markdown (CommonMark), as they are now; off-the-record passages are
    /// left out and member text is escaped.
    pub async fn export_markdown(&self) -> Result<String, CairnError> {
        self.export(MinutesVersion::Current, false)
            .await
            .map(Option::unwrap_or_default)
    }

    /// The agreed minutes as Markdown; `None` while they are a draft.
    pub async fn export_agreed_markdown(&self) -> Result<Option<String>, CairnError> {
        self.export(MinutesVersion::Agreed, false).await
    }

    /// The minutes as an HTML fragment, `version` as asked; `None` if the agreed version
    /// was asked for and the minutes are a draft.
    pub async fn export_html(&self, version: MinutesVersion) -> Result<Option<String>, CairnError> {
        self.export(version, true).await
    }

    async fn export(
        &self,
        version: MinutesVersion,
        html: bool,
    ) -> Result<Option<String>, CairnError> {
        self.cairn
            .read_doc(self.doc, move |doc| {
                let version = match version {
                    MinutesVersion::Current => Version::Current,
                    MinutesVersion::Agreed => Version::Agreed,
                };
                let out = if html {
                    export::html(doc, version)
                } else {
                    export::markdown(doc, version)
                };
                match out {
                    Ok(text) => Ok(Some(text)),
                    Err(ExportError::NotAgreed) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::meeting::test_support::{channel, Device, WAIT};

    #[test]
    fn minutes_are_edited_styled_agreed_and_exported() {
        let device = Device::start();
        let minutes = device.meeting("Circle").minutes();
        let record = device.run(minutes.read()).unwrap();
        assert_eq!(record.status, MinutesStatus::Draft);
        let paragraphs = &record.current.paragraphs;
        assert_eq!(paragraphs.len(), 10, "the standard template");
        assert_eq!(paragraphs[4].kind, BlockKind::Heading { level: 2 });
        assert_eq!(paragraphs[4].runs[0].text, "Decisions");
        let at = paragraphs[5].start;

        device.run(async {
            minutes
                .insert_text(at, "Meet monthly. Private bit.".into())
                .await
                .unwrap();
            minutes.set_bold(at, at + 4, true).await.unwrap();
            minutes
                .mark_off_record(at + 14, at + 26, true)
                .await
                .unwrap();
            // Enter after "Meet monthly." then make the new paragraph a bullet.
            minutes
                .insert_paragraph(at + 13, BlockKind::BulletItem)
                .await
                .unwrap();
            minutes.splice(at, 4, "Gather".into()).await.unwrap();
        });
        let record = device.run(minutes.read()).unwrap();
        let p = &record.current.paragraphs;
        assert_eq!(p.len(), 11);
        let decision: String = p[5].runs.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(decision, "Gather monthly.");
        assert_eq!(p[6].kind, BlockKind::BulletItem);
        assert!(p[6]
            .runs
            .iter()
            .any(|r| r.off_record && r.text.contains("Private")));
        assert_eq!(
            record.current.length as usize,
            record.current.text.encode_utf16().count()
        );

        let markdown = device.run(minutes.export_markdown()).unwrap();
        assert!(markdown.contains("## Decisions"), "{markdown}");
        assert!(markdown.contains("monthly."), "{markdown}");
        assert!(
            !markdown.contains("Private"),
            "off the record is left out: {markdown}"
        );
        assert_eq!(device.run(minutes.export_agreed_markdown()).unwrap(), None);

        let agreed = device
            .run(minutes.agree_as(MemberId::from("ana"), None))
            .unwrap();
        assert_eq!(agreed.heads, record.heads);
        let after = device.run(minutes.read()).unwrap();
        assert_eq!(after.status, MinutesStatus::Agreed);
        assert_eq!(after.agreement, Some(agreed));
        device.run(minutes.insert_text(0, "x".into())).unwrap();
        assert_eq!(
            device.run(minutes.read()).unwrap().status,
            MinutesStatus::ChangedSinceAgreed
        );
        let agreed_md = device
            .run(minutes.export_agreed_markdown())
            .unwrap()
            .unwrap();
        assert_eq!(agreed_md, markdown, "the agreed version is what was agreed");
        let agreed_text = device.run(minutes.agreed_text()).unwrap().unwrap();
        assert_eq!(agreed_text, record.current);
    }

    #[test]
    fn bad_indexes_and_levels_are_invalid() {
        let device = Device::start();
        let minutes = device.meeting("Circle").minutes();
        let len = device.run(minutes.read()).unwrap().current.length;
        for bad in [
            device.run(minutes.insert_text(len + 1, "x".into())),
            device.run(minutes.delete(len, 1)),
            device.run(minutes.set_block(99, BlockKind::Paragraph)),
            device.run(minutes.set_block(0, BlockKind::Heading { level: 9 })),
            device.run(minutes.set_link(1, 3, Some(" ".into()))),
            device.run(minutes.agree_at(vec!["zz".into()])).map(|_| ()),
        ] {
            assert!(matches!(bad, Err(CairnError::Invalid { .. })), "{bad:?}");
        }
    }

    #[test]
    fn a_minutes_subscription_sees_typing() {
        let device = Device::start();
        let minutes = device.meeting("Circle").minutes();
        let (listener, rx) = channel();
        let _sub = minutes.subscribe(listener);
        let first: MinutesRecord = rx.recv_timeout(WAIT).unwrap();
        device
            .run(minutes.insert_text(first.current.length, "Thanks all".into()))
            .unwrap();
        loop {
            let r: MinutesRecord = rx.recv_timeout(WAIT).unwrap();
            if r.current.text.ends_with("Thanks all") {
                break;
            }
        }
    }
}
