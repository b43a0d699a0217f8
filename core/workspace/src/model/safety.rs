//! Safety: reports to the facilitators, device-local blocks, and facilitators removing posts.
//!
//! **Reports** live in reports documents (kind `report`), one per reporter: the reporter
//! creates theirs and registers it with the relay, which shares it with the group's
//! facilitators and organisers and with the reporter alone (a member who can sync a
//! document can read all of it, so reporters never share one). Neither the group's index
//! nor any other member-readable document lists them. Layout:
//!
//! | key | value |
//! |---|---|
//! | `reporter` | MemberId of the one member whose reports these are |
//! | `reports` | list of `{id, reporter, subject: {kind: "post", thread, post} \| {kind: "member", member}, reason, note: Text, createdMs, status: "open"\|"resolved", resolvedBy?, resolvedMs?}` |
//!
//! The reporter files reports ([`report`]; filing into someone else's document is
//! [`SafetyError::NotYourReports`]); a facilitator marks them resolved in the same document
//! ([`resolve_report`]). The relay lets both write it; which of them may do what here is
//! the core's rule, as with post authorship in threads.
//!
//! **Blocks** never leave the device: a [`BlockList`] is plain data the app keeps in its
//! own storage (it serialises with serde), and [`visible_posts`] hides blocked members'
//! posts and reactions on this device only. Nobody else learns of a block.
//!
//! **Removal by a facilitator** empties a post and leaves a "removed by a facilitator"
//! marker. As with deletion by the author, the words remain in the thread's history on
//! every device that synced it; the core cannot recall copies on other members' phones.

use std::collections::BTreeSet;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ROOT};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::fields;
use crate::model::group::Role;
use crate::model::schema::{self, DocKind, SchemaError};
use crate::model::thread::{self, Post, PostId, ThreadError};
use cairn_sync::ids::{DocumentId, MemberId};

cairn_sync::ids::string_id!(
    /// The id of a report.
    ReportId
);

/// Why a safety operation failed.
#[derive(Debug, Error)]
pub enum SafetyError {
    /// The document is not a reports document this code can read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Automerge refused the change.
    #[error(transparent)]
    Automerge(#[from] AutomergeError),
    /// A thread operation failed (the post is missing, or the document is not a thread).
    #[error(transparent)]
    Thread(#[from] ThreadError),
    /// Only facilitators (and organisers) may resolve reports or remove posts.
    #[error("only a facilitator may do this")]
    NotFacilitator,
    /// No report with this id.
    #[error("no such report")]
    NoSuchReport,
    /// Not an `automerge:` URL with a valid document id.
    #[error("not a valid automerge: document URL")]
    InvalidUrl,
    /// This reports document belongs to another member; file into your own.
    #[error("this reports document belongs to another member")]
    NotYourReports,
}

/// What is being reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportSubject {
    /// One post.
    Post {
        /// The thread's `automerge:` URL.
        thread_url: String,
        /// The post.
        post: PostId,
    },
    /// A member.
    Member(MemberId),
}

/// The reason category a reporter picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportReason {
    /// Hostile, demeaning or threatening behaviour.
    Harassment,
    /// Prejudice about who someone is.
    Discrimination,
    /// Something shared outside the group, or identifying someone who is not here.
    Confidentiality,
    /// Someone may be at risk of harm.
    Safeguarding,
    /// Advertising or unrelated content.
    Spam,
    /// Anything else (say more in the note).
    Other,
}

impl ReportReason {
    /// Every reason, in the order an app may offer them.
    pub const ALL: [ReportReason; 6] = [
        ReportReason::Harassment,
        ReportReason::Discrimination,
        ReportReason::Confidentiality,
        ReportReason::Safeguarding,
        ReportReason::Spam,
        ReportReason::Other,
    ];

    /// The name stored in the document.
    pub const fn name(self) -> &'static str {
        match self {
            ReportReason::Harassment => "harassment",
            ReportReason::Discrimination => "discrimination",
            ReportReason::Confidentiality => "confidentiality",
            ReportReason::Safeguarding => "safeguarding",
            ReportReason::Spam => "spam",
            ReportReason::Other => "other",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        ReportReason::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Whether a report still needs attention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportStatus {
    /// Waiting for a facilitator.
    Open,
    /// Dealt with.
    Resolved {
        /// The facilitator who resolved it.
        by: MemberId,
        /// When.
        at_ms: i64,
    },
}

/// A stored report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Its id.
    pub id: ReportId,
    /// Who reported.
    pub reporter: MemberId,
    /// What about.
    pub subject: ReportSubject,
    /// The category.
    pub reason: ReportReason,
    /// The reporter's note (may be empty).
    pub note: String,
    /// When.
    pub created_ms: i64,
    /// Open or resolved.
    pub status: ReportStatus,
}

const REPORTS: &str = "reports";
const REPORTER: &str = "reporter";

/// Creates `reporter`'s reports document.
pub fn init_reports(tx: &mut impl Transactable, reporter: &MemberId) -> Result<(), SafetyError> {
    schema::stamp(tx, DocKind::Report)?;
    tx.put(ROOT, REPORTER, reporter.as_str())?;
    tx.put_object(ROOT, REPORTS, ObjType::List)?;
    Ok(())
}

/// Whose reports document this is.
pub fn reporter(doc: &impl ReadDoc) -> Result<MemberId, SafetyError> {
    schema::check(doc, DocKind::Report)?;
    Ok(fields::string(doc, &ROOT, REPORTER)?
        .ok_or_else(|| SchemaError::Shape(REPORTER.into()))?
        .into())
}

/// Files a report in the reporter's own reports document; returns its id.
pub fn report(
    tx: &mut impl Transactable,
    reporter: &MemberId,
    subject: &ReportSubject,
    reason: ReportReason,
    note: &str,
    now_ms: i64,
) -> Result<ReportId, SafetyError> {
    if &self::reporter(tx)? != reporter {
        return Err(SafetyError::NotYourReports);
    }
    // Validate before writing anything: a caller that commits on error must not keep half a report.
    let thread_url = match subject {
        ReportSubject::Post { thread_url, .. } => Some(
            DocumentId::parse_url(thread_url)
                .map_err(|_| SafetyError::InvalidUrl)?
                .url(),
        ),
        ReportSubject::Member(_) => None,
    };
    let list = fields::list_in::<SafetyError>(tx, &ROOT, REPORTS)?;
    let at = tx.length(&list);
    let obj = tx.insert_object(&list, at, ObjType::Map)?;
    let id = ReportId(obj.to_string());
    tx.put(&obj, "id", id.as_str())?;
    tx.put(&obj, "reporter", reporter.as_str())?;
    let s = tx.put_object(&obj, "subject", ObjType::Map)?;
    match subject {
        ReportSubject::Post { post, .. } => {
            tx.put(&s, "kind", "post")?;
            tx.put(&s, "thread", thread_url.unwrap_or_default())?;
            tx.put(&s, "post", post.as_str())?;
        }
        ReportSubject::Member(member) => {
            tx.put(&s, "kind", "member")?;
            tx.put(&s, "member", member.as_str())?;
        }
    }
    tx.put(&obj, "reason", reason.name())?;
    fields::put_text(tx, &obj, "note", note)?;
    tx.put(&obj, "createdMs", now_ms)?;
    tx.put(&obj, "status", "open")?;
    Ok(id)
}

/// Marks a report resolved. `role` is the facilitator's current role in the group (read
/// from the roster by the caller, [`crate::model::roster::role_of`]).
pub fn resolve_report(
    tx: &mut impl Transactable,
    id: &ReportId,
    facilitator: &MemberId,
    role: Role,
    now_ms: i64,
) -> Result<(), SafetyError> {
    schema::check(tx, DocKind::Report)?;
    if !role.is_facilitator() {
        return Err(SafetyError::NotFacilitator);
    }
    let obj = find_report(tx, id)?.ok_or(SafetyError::NoSuchReport)?;
    tx.put(&obj, "status", "resolved")?;
    tx.put(&obj, "resolvedBy", facilitator.as_str())?;
    tx.put(&obj, "resolvedMs", now_ms)?;
    Ok(())
}

fn find_report(doc: &impl ReadDoc, id: &ReportId) -> Result<Option<ObjId>, SchemaError> {
    let Some(list) = fields::list(doc, &ROOT, REPORTS)? else {
        return Ok(None);
    };
    for (_, obj) in fields::maps_in_list(doc, &list, REPORTS)? {
        if fields::string(doc, &obj, "id")?.unwrap_or_else(|| obj.to_string()) == id.0 {
            return Ok(Some(obj));
        }
    }
    Ok(None)
}

fn read_report(doc: &impl ReadDoc, obj: &ObjId) -> Result<Report, SchemaError> {
    let shape = |k: &str| SchemaError::Shape(k.to_owned());
    let s = fields::object(doc, obj, "subject")?.ok_or_else(|| shape("subject"))?;
    let subject = match fields::string(doc, &s, "kind")?.as_deref() {
        Some("post") => ReportSubject::Post {
            thread_url: fields::string(doc, &s, "thread")?.ok_or_else(|| shape("subject"))?,
            post: fields::string(doc, &s, "post")?
                .ok_or_else(|| shape("subject"))?
                .into(),
        },
        Some("member") => ReportSubject::Member(
            fields::string(doc, &s, "member")?
                .ok_or_else(|| shape("subject"))?
                .into(),
        ),
        _ => return Err(shape("subject")),
    };
    let status = match fields::string(doc, obj, "status")?.as_deref() {
        None | Some("open") => ReportStatus::Open,
        Some("resolved") => ReportStatus::Resolved {
            by: fields::string(doc, obj, "resolvedBy")?
                .unwrap_or_default()
                .into(),
            at_ms: fields::int(doc, obj, "resolvedMs")?.unwrap_or(0),
        },
        Some(_) => return Err(shape("status")),
    };
    Ok(Report {
        id: ReportId(fields::string(doc, obj, "id")?.unwrap_or_else(|| obj.to_string())),
        reporter: fields::string(doc, obj, "reporter")?
            .ok_or_else(|| shape("reporter"))?
            .into(),
        subject,
        reason: fields::string(doc, obj, "reason")?
            .and_then(|r| ReportReason::from_name(&r))
            .ok_or_else(|| shape("reason"))?,
        note: fields::string(doc, obj, "note")?.unwrap_or_default(),
        created_ms: fields::int(doc, obj, "createdMs")?.unwrap_or(0),
        status,
    })
}

/// Every report in the document, oldest first.
pub fn reports(doc: &impl ReadDoc) -> Result<Vec<Report>, SafetyError> {
    schema::check(doc, DocKind::Report)?;
    let Some(list) = fields::list(doc, &ROOT, REPORTS)? else {
        return Ok(Vec::new());
    };
    let mut out = fields::maps_in_list(doc, &list, REPORTS)?
        .into_iter()
        .map(|(_, obj)| read_report(doc, &obj))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by_key(|r| r.created_ms);
    Ok(out)
}

/// The reports still waiting for a facilitator.
pub fn open_reports(doc: &impl ReadDoc) -> Result<Vec<Report>, SafetyError> {
    let mut all = reports(doc)?;
    all.retain(|r| r.status == ReportStatus::Open);
    Ok(all)
}

/// The reports one member filed (all of a document's reports are its reporter's; this
/// also filters a document put together by foreign code).
pub fn reports_by(doc: &impl ReadDoc, reporter: &MemberId) -> Result<Vec<Report>, SafetyError> {
    let mut all = reports(doc)?;
    all.retain(|r| &r.reporter == reporter);
    Ok(all)
}

/// Removes a post from a thread as a facilitator, leaving a "removed by a facilitator"
/// marker. `role` is the facilitator's current role in the group (from the roster). The
/// core cannot recall the copies already synced to other members' phones (see the module
/// docs).
pub fn remove_post_as_facilitator(
    tx: &mut impl Transactable,
    post: &PostId,
    facilitator: &MemberId,
    role: Role,
    now_ms: i64,
) -> Result<(), SafetyError> {
    if !role.is_facilitator() {
        return Err(SafetyError::NotFacilitator);
    }
    thread::mark_removed(tx, post, facilitator, now_ms)?;
    Ok(())
}

/// The members this device hides. Kept by the app on the device, never synced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockList {
    /// Blocked member ids.
    blocked: BTreeSet<String>,
}

impl BlockList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Blocks a member; returns whether they were not blocked before.
    pub fn block(&mut self, member: &MemberId) -> bool {
        self.blocked.insert(member.as_str().to_owned())
    }

    /// Unblocks a member; returns whether they were blocked.
    pub fn unblock(&mut self, member: &MemberId) -> bool {
        self.blocked.remove(member.as_str())
    }

    /// Whether a member is blocked.
    pub fn is_blocked(&self, member: &MemberId) -> bool {
        self.blocked.contains(member.as_str())
    }

    /// The blocked members, in id order.
    pub fn members(&self) -> Vec<MemberId> {
        self.blocked
            .iter()
            .map(|m| MemberId::from(m.as_str()))
            .collect()
    }
}

/// The thread's posts as this device shows them: blocked members' posts are left out and
/// their reactions dropped from other posts. Replies to a hidden post keep their
/// `reply_to`, so the app can show "in reply to a hidden post".
pub fn visible_posts(thread: &impl ReadDoc, blocks: &BlockList) -> Result<Vec<Post>, ThreadError> {
    let mut posts = thread::posts(thread)?;
    posts.retain(|p| !blocks.is_blocked(&p.author));
    for post in &mut posts {
        for who in post.reactions.values_mut() {
            who.retain(|m| !blocks.is_blocked(m));
        }
        post.reactions.retain(|_, who| !who.is_empty());
    }
    Ok(posts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::thread::{add_post, post, react, PostState};
    use automerge::{Automerge, TextEncoding};

    const URL: &str = "automerge:488sijVLJ6Grs5PnrczSYBwfNg25";

    fn change<T>(
        doc: &mut Automerge,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> T,
    ) -> T {
        let mut tx = doc.transaction();
        let out = f(&mut tx);
        tx.commit();
        out
    }

    fn thread_doc() -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        change(&mut doc, |tx| {
            thread::init(tx, "Check-in", &"ana".into(), 1).unwrap()
        });
        doc
    }

    #[test]
    fn a_blocked_member_is_hidden_on_this_device_only() {
        let mut doc = thread_doc();
        let (ana, ben) = (MemberId::from("ana"), MemberId::from("ben"));
        let first = change(&mut doc, |tx| {
            let first = add_post(tx, &ana, "Hello", &[], None, 1).unwrap();
            add_post(tx, &ben, "Unkind words", &[], Some(&first), 2).unwrap();
            react(tx, &first, &ben, "👎").unwrap();
            react(tx, &first, &"cai".into(), "💚").unwrap();
            first
        });
        let mut blocks = BlockList::new();
        assert!(blocks.block(&ben));
        let json = serde_json::to_string(&blocks).unwrap();
        assert_eq!(json, r#"{"blocked":["ben"]}"#);
        let blocks: BlockList = serde_json::from_str(&json).unwrap();

        let shown = visible_posts(&doc, &blocks).unwrap();
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].id, first);
        assert_eq!(shown[0].reactions.keys().collect::<Vec<_>>(), ["💚"]);
        assert_eq!(
            thread::posts(&doc).unwrap().len(),
            2,
            "the document itself is unchanged"
        );
    }

    #[test]
    fn a_facilitator_removes_a_post_and_a_member_cannot() {
        let mut doc = thread_doc();
        let id = change(&mut doc, |tx| {
            add_post(
                tx,
                &"ben".into(),
                "Someone's full name and story",
                &[],
                None,
                1,
            )
            .unwrap()
        });
        let err = change(&mut doc, |tx| {
            remove_post_as_facilitator(tx, &id, &"cai".into(), Role::Member, 2)
        })
        .unwrap_err();
        assert!(matches!(err, SafetyError::NotFacilitator));
        change(&mut doc, |tx| {
            remove_post_as_facilitator(tx, &id, &"eli".into(), Role::Facilitator, 3).unwrap()
        });
        let p = post(&doc, &id).unwrap().unwrap();
        assert_eq!(
            p.state,
            PostState::RemovedByFacilitator {
                by: "eli".into(),
                at_ms: 3
            }
        );
        assert_eq!(p.body, "");
    }

    #[test]
    fn reports_are_filed_in_the_reporters_own_document_and_resolved_by_facilitators() {
        let ana = MemberId::from("ana");
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        change(&mut doc, |tx| init_reports(tx, &ana).unwrap());
        assert_eq!(reporter(&doc).unwrap(), ana);
        // Ana reports from her phone while her laptop, offline, files another.
        let mut laptop = doc.fork();
        let r1 = change(&mut doc, |tx| {
            report(
                tx,
                &ana,
                &ReportSubject::Post {
                    thread_url: URL.into(),
                    post: "4@ab".into(),
                },
                ReportReason::Confidentiality,
                "Names a client",
                10,
            )
            .unwrap()
        });
        change(&mut laptop, |tx| {
            report(
                tx,
                &ana,
                &ReportSubject::Member("ben".into()),
                ReportReason::Harassment,
                "",
                11,
            )
            .unwrap()
        });
        doc.merge(&mut laptop).unwrap();
        assert_eq!(reports(&doc).unwrap().len(), 2);
        assert_eq!(reports_by(&doc, &ana).unwrap()[0].note, "Names a client");

        let before = doc.get_heads();
        assert!(matches!(
            change(&mut doc, |tx| report(
                tx,
                &"cai".into(),
                &ReportSubject::Member("ben".into()),
                ReportReason::Other,
                "",
                12
            )),
            Err(SafetyError::NotYourReports)
        ));
        assert_eq!(doc.get_heads(), before, "nothing was written");

        assert!(matches!(
            change(&mut doc, |tx| resolve_report(
                tx,
                &r1,
                &"ben".into(),
                Role::Member,
                12
            )),
            Err(SafetyError::NotFacilitator)
        ));
        change(&mut doc, |tx| {
            resolve_report(tx, &r1, &"eli".into(), Role::Facilitator, 12).unwrap()
        });
        let open = open_reports(&doc).unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].subject, ReportSubject::Member("ben".into()));
        assert!(matches!(
            change(&mut doc, |tx| report(
                tx,
                &ana,
                &ReportSubject::Post {
                    thread_url: "x".into(),
                    post: "p".into()
                },
                ReportReason::Other,
                "",
                1
            )),
            Err(SafetyError::InvalidUrl)
        ));
    }
}
