//! A member's own data, as JSON (stable field names) and as Markdown: the right to data
//! portability (GDPR Art. 20).
//!
//! What is included, from the documents the app hands in:
//! - their entry in each group's roster (pseudonym, role, status, dates, the code-of-conduct
//!   version they accepted);
//! - the threads they started (title) and every post they wrote, deleted and removed ones as
//!   bare markers;
//! - the reactions they gave (which post, which emoji — never the post's text);
//! - the resources they added;
//! - the agenda items they raised and the actions they own, read from meeting documents;
//! - the reports they filed, from their own reports documents (status only, not which
//!   facilitator resolved them).
//!
//! What is left out: anything written by another member — their posts (even replies to
//! this member's posts), their reactions, other people's threads' titles, and reports
//! filed *about* this member (handing those over could expose the reporter; a subject
//! access request for them is the organisation's to handle).
//!
//! Meeting documents belong to the meeting module; this one reads only their `agenda` and
//! `actions` containers (maps keyed by item id; lists are accepted too), defensively, so a
//! change there cannot break an export: an item counts when its `raisedBy` (agenda) or
//! `owner` (action) is the member; its words are read from `title` or `text`, an action's
//! date from `due`. Items in another shape are skipped rather than failing the export.

use std::fmt::Write as _;

use automerge::{Automerge, ObjId, ObjType, ReadDoc, Value, ROOT};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::resources::{self, Attachment, ResourceKind, ResourcesError};
use crate::model::roster::{self, RosterError};
use crate::model::safety::{self, ReportStatus, ReportSubject, SafetyError};
use crate::model::schema::{self, DocKind, SchemaError};
use crate::model::thread::{self, Mention, PostState, ThreadError};
use cairn_sync::ids::MemberId;

/// The `format` field of every export.
pub const FORMAT: &str = "cairn-member-export";
/// The `formatVersion` this code writes.
pub const FORMAT_VERSION: u32 = 2;

/// Why an export failed. A document of the wrong kind or from a newer Cairn fails the
/// export rather than leaving a silent gap in it. (The model errors are boxed: they carry
/// Automerge's error and would make every `Result` here large.)
#[derive(Debug, Error)]
pub enum ExportError {
    /// A roster document could not be read.
    #[error(transparent)]
    Roster(Box<RosterError>),
    /// A thread document could not be read.
    #[error(transparent)]
    Thread(Box<ThreadError>),
    /// A resources document could not be read.
    #[error(transparent)]
    Resources(Box<ResourcesError>),
    /// A reports document could not be read.
    #[error(transparent)]
    Safety(Box<SafetyError>),
    /// A meeting document is not one this code can read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Serialising the JSON failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

macro_rules! boxed_from {
    ($($variant:ident($error:ty)),*) => {$(
        impl From<$error> for ExportError {
            fn from(e: $error) -> Self {
                ExportError::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(
    Roster(RosterError),
    Thread(ThreadError),
    Resources(ResourcesError),
    Safety(SafetyError)
);

/// The documents to export from, each with its `automerge:` URL. Leave out what the
/// device does not have; only what is given is searched.
#[derive(Clone, Copy, Default)]
pub struct ExportSources<'a> {
    /// Roster documents (one per group), where memberships are read.
    pub rosters: &'a [(&'a str, &'a Automerge)],
    /// Thread documents.
    pub threads: &'a [(&'a str, &'a Automerge)],
    /// Resources documents.
    pub resources: &'a [(&'a str, &'a Automerge)],
    /// Meeting documents.
    pub meetings: &'a [(&'a str, &'a Automerge)],
    /// Reports documents (the member's own; only their reports are taken from any).
    pub reports: &'a [(&'a str, &'a Automerge)],
}

/// Everything one member wrote or is recorded as, across the given documents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberExport {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The member.
    pub member: String,
    /// When the export was made (ms since the Unix epoch).
    pub exported_ms: i64,
    /// Their membership in each group.
    pub memberships: Vec<MembershipExport>,
    /// Threads they started.
    pub threads_started: Vec<ThreadStartedExport>,
    /// Their posts.
    pub posts: Vec<PostExport>,
    /// Their reactions.
    pub reactions: Vec<ReactionExport>,
    /// Resources they added.
    pub resources: Vec<ResourceExport>,
    /// Agenda items they raised.
    pub agenda_items: Vec<AgendaItemExport>,
    /// Actions they own.
    pub actions: Vec<ActionExport>,
    /// Reports they filed.
    pub reports: Vec<ReportExport>,
}

/// A membership entry, as the group's roster shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipExport {
    /// The URL of the group's roster document.
    pub roster_url: String,
    /// Their pseudonym in the group.
    pub pseudonym: String,
    /// Their role (`organiser`, `member`, …).
    pub role: String,
    /// `active`, `suspended`, `left` or `removed`.
    pub status: String,
    /// When they joined.
    pub joined_ms: i64,
    /// When a guest's access ends.
    pub expires_ms: Option<i64>,
    /// The code-of-conduct version they accepted (`None`: none yet).
    pub accepted_code_of_conduct_version: Option<u64>,
}

/// A thread they started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadStartedExport {
    /// The thread's URL.
    pub thread_url: String,
    /// Its title.
    pub title: String,
}

/// A mention in one of their posts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MentionExport {
    /// `member`, `facilitators` or `all`.
    pub kind: String,
    /// The member mentioned, for `member`.
    pub member: Option<String>,
}

/// One of their posts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostExport {
    /// The thread's URL.
    pub thread_url: String,
    /// The post's id.
    pub post_id: String,
    /// What they wrote (empty once deleted or removed).
    pub body: String,
    /// The id of the post it answered.
    pub reply_to: Option<String>,
    /// Who it called on.
    pub mentions: Vec<MentionExport>,
    /// When written.
    pub created_ms: i64,
    /// When last edited.
    pub edited_ms: Option<i64>,
    /// `visible`, `deletedByAuthor` or `removedByFacilitator`.
    pub state: String,
}

/// A reaction they gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReactionExport {
    /// The thread's URL.
    pub thread_url: String,
    /// The post reacted to.
    pub post_id: String,
    /// The emoji.
    pub emoji: String,
}

/// A resource they added (a file's bytes are not copied into the export; its name and
/// size are, and the app can save the file itself next to the export).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceExport {
    /// The resources document's URL.
    pub resources_url: String,
    /// The resource's id.
    pub resource_id: String,
    /// `link`, `reading` or `file`.
    pub kind: String,
    /// Its title.
    pub title: String,
    /// Its note.
    pub note: String,
    /// Its link, if any.
    pub url: Option<String>,
    /// The file's name, for files.
    pub file_name: Option<String>,
    /// The file's size, for files.
    pub file_size: Option<u64>,
    /// Its tags.
    pub tags: Vec<String>,
    /// The meeting it is attached to, if not the whole group.
    pub meeting_url: Option<String>,
    /// When added.
    pub created_ms: i64,
}

/// An agenda item they raised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgendaItemExport {
    /// The meeting's URL.
    pub meeting_url: String,
    /// The item's title.
    pub title: String,
}

/// An action they own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionExport {
    /// The meeting's URL.
    pub meeting_url: String,
    /// What is to be done.
    pub title: String,
    /// By when (`YYYY-MM-DD`), if set.
    pub due_date: Option<String>,
    /// Its status as the meeting records it.
    pub status: Option<String>,
}

/// A report they filed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportExport {
    /// The reports document's URL.
    pub reports_url: String,
    /// The report's id.
    pub report_id: String,
    /// `post` or `member`.
    pub subject_kind: String,
    /// The thread, for a post.
    pub thread_url: Option<String>,
    /// The post, for a post.
    pub post_id: Option<String>,
    /// The member, for a member.
    pub member: Option<String>,
    /// The reason category.
    pub reason: String,
    /// Their note.
    pub note: String,
    /// When filed.
    pub created_ms: i64,
    /// `open` or `resolved`.
    pub status: String,
}

/// Collects `member`'s own data from `sources`.
pub fn export(
    member: &MemberId,
    sources: &ExportSources<'_>,
    now_ms: i64,
) -> Result<MemberExport, ExportError> {
    let mut out = MemberExport {
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        member: member.to_string(),
        exported_ms: now_ms,
        memberships: Vec::new(),
        threads_started: Vec::new(),
        posts: Vec::new(),
        reactions: Vec::new(),
        resources: Vec::new(),
        agenda_items: Vec::new(),
        actions: Vec::new(),
        reports: Vec::new(),
    };

    for (url, doc) in sources.rosters {
        if let Some(entry) = roster::member(*doc, member)? {
            out.memberships.push(MembershipExport {
                roster_url: (*url).to_owned(),
                pseudonym: entry.pseudonym,
                role: entry.role.name().to_owned(),
                status: entry.status.name().to_owned(),
                joined_ms: entry.joined_ms,
                expires_ms: entry.expires_ms,
                accepted_code_of_conduct_version: (entry.accepted_version > 0)
                    .then_some(entry.accepted_version),
            });
        }
    }

    for (url, doc) in sources.threads {
        if thread::started_by(*doc)?.as_ref() == Some(member) {
            out.threads_started.push(ThreadStartedExport {
                thread_url: (*url).to_owned(),
                title: thread::title(*doc)?,
            });
        }
        for post in thread::posts(*doc)? {
            for (emoji, who) in &post.reactions {
                if who.contains(member) {
                    out.reactions.push(ReactionExport {
                        thread_url: (*url).to_owned(),
                        post_id: post.id.to_string(),
                        emoji: emoji.clone(),
                    });
                }
            }
            if &post.author != member {
                continue;
            }
            out.posts.push(PostExport {
                thread_url: (*url).to_owned(),
                post_id: post.id.to_string(),
                body: post.body,
                reply_to: post.reply_to.map(|p| p.to_string()),
                mentions: post
                    .mentions
                    .into_iter()
                    .map(|m| match m {
                        Mention::Member(id) => MentionExport {
                            kind: "member".into(),
                            member: Some(id.to_string()),
                        },
                        Mention::Facilitators => MentionExport {
                            kind: "facilitators".into(),
                            member: None,
                        },
                        Mention::All => MentionExport {
                            kind: "all".into(),
                            member: None,
                        },
                    })
                    .collect(),
                created_ms: post.created_ms,
                edited_ms: post.edited_ms,
                state: match post.state {
                    PostState::Visible => "visible",
                    PostState::DeletedByAuthor { .. } => "deletedByAuthor",
                    PostState::RemovedByFacilitator { .. } => "removedByFacilitator",
                }
                .to_owned(),
            });
        }
    }

    for (url, doc) in sources.resources {
        for r in resources::resources(*doc)? {
            if &r.added_by != member {
                continue;
            }
            let (kind, link, file_name, file_size) = match r.kind {
                ResourceKind::Link { url } => ("link", Some(url), None, None),
                ResourceKind::Reading { url } => ("reading", url, None, None),
                ResourceKind::File { name, size, .. } => ("file", None, Some(name), Some(size)),
            };
            out.resources.push(ResourceExport {
                resources_url: (*url).to_owned(),
                resource_id: r.id.to_string(),
                kind: kind.to_owned(),
                title: r.title,
                note: r.note,
                url: link,
                file_name,
                file_size,
                tags: r.tags.into_iter().collect(),
                meeting_url: match r.attached_to {
                    Attachment::Group => None,
                    Attachment::Meeting(m) => Some(m),
                },
                created_ms: r.created_ms,
            });
        }
    }

    for (url, doc) in sources.meetings {
        schema::check(*doc, DocKind::Meeting)?;
        for item in items(doc, "agenda") {
            if raw_string(doc, &item, &["raisedBy"]).as_deref() == Some(member.as_str()) {
                out.agenda_items.push(AgendaItemExport {
                    meeting_url: (*url).to_owned(),
                    title: raw_string(doc, &item, &["title", "text"]).unwrap_or_default(),
                });
            }
        }
        for item in items(doc, "actions") {
            if raw_string(doc, &item, &["owner"]).as_deref() == Some(member.as_str()) {
                out.actions.push(ActionExport {
                    meeting_url: (*url).to_owned(),
                    title: raw_string(doc, &item, &["title", "text"]).unwrap_or_default(),
                    due_date: raw_string(doc, &item, &["due", "dueDate"]),
                    status: raw_string(doc, &item, &["status"]),
                });
            }
        }
    }

    for (url, doc) in sources.reports {
        for r in safety::reports_by(*doc, member)? {
            let (subject_kind, thread_url, post_id, subject_member) = match r.subject {
                ReportSubject::Post { thread_url, post } => {
                    ("post", Some(thread_url), Some(post.to_string()), None)
                }
                ReportSubject::Member(m) => ("member", None, None, Some(m.to_string())),
            };
            out.reports.push(ReportExport {
                reports_url: (*url).to_owned(),
                report_id: r.id.to_string(),
                subject_kind: subject_kind.to_owned(),
                thread_url,
                post_id,
                member: subject_member,
                reason: r.reason.name().to_owned(),
                note: r.note,
                created_ms: r.created_ms,
                status: match r.status {
                    ReportStatus::Open => "open",
                    ReportStatus::Resolved { .. } => "resolved",
                }
                .to_owned(),
            });
        }
    }
    Ok(out)
}

/// The maps inside a root container that may be a list or a map; anything else is empty.
fn items(doc: &Automerge, key: &str) -> Vec<ObjId> {
    let Ok(Some((Value::Object(kind), container))) = doc.get(ROOT, key) else {
        return Vec::new();
    };
    let values: Vec<_> = match kind {
        ObjType::List => (0..doc.length(&container))
            .filter_map(|i| doc.get(&container, i).ok().flatten())
            .collect(),
        ObjType::Map | ObjType::Table => doc
            .keys(&container)
            .filter_map(|k| doc.get(&container, k.as_str()).ok().flatten())
            .collect(),
        ObjType::Text => Vec::new(),
    };
    values
        .into_iter()
        .filter_map(|(v, id)| {
            matches!(v, Value::Object(ObjType::Map | ObjType::Table)).then_some(id)
        })
        .collect()
}

/// The first of `keys` present as a string (scalar or Text).
fn raw_string(doc: &Automerge, obj: &ObjId, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| match doc.get(obj, *key).ok()?? {
        (Value::Object(ObjType::Text), id) => doc.text(&id).ok(),
        (Value::Scalar(s), _) => s.as_str().map(str::to_owned),
        _ => None,
    })
}

/// The export as pretty-printed JSON.
pub fn to_json(export: &MemberExport) -> Result<String, ExportError> {
    Ok(serde_json::to_string_pretty(export)?)
}

fn when(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
        Err(_) => ms.to_string(),
    }
}

/// Text on one line (titles may hold newlines).
fn line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text as a Markdown block quote, every line kept.
fn quote(out: &mut String, s: &str) {
    for l in s.lines() {
        let _ = writeln!(out, "> {l}");
    }
    out.push('\n');
}

/// The export as a Markdown document for the member to read.
pub fn to_markdown(export: &MemberExport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Your data in Cairn\n");
    let _ = writeln!(
        md,
        "Member `{}`, exported {}.\n",
        export.member,
        when(export.exported_ms)
    );

    let _ = writeln!(md, "## Memberships\n");
    if export.memberships.is_empty() {
        md.push_str("None.\n\n");
    }
    for m in &export.memberships {
        let _ = write!(
            md,
            "- Group roster `{}`: pseudonym “{}”, role {}, {}, joined {}",
            m.roster_url,
            line(&m.pseudonym),
            m.role,
            m.status,
            when(m.joined_ms)
        );
        if let Some(e) = m.expires_ms {
            let _ = write!(md, ", access until {}", when(e));
        }
        match m.accepted_code_of_conduct_version {
            Some(v) => {
                let _ = writeln!(md, "; accepted code of conduct version {v}");
            }
            None => md.push_str("; has not accepted the code of conduct\n"),
        }
    }
    md.push('\n');

    if !export.threads_started.is_empty() {
        let _ = writeln!(md, "## Threads you started\n");
        for t in &export.threads_started {
            let _ = writeln!(md, "- “{}” (`{}`)", line(&t.title), t.thread_url);
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Posts\n");
    if export.posts.is_empty() {
        md.push_str("None.\n\n");
    }
    for p in &export.posts {
        let _ = writeln!(md, "### {} in `{}`\n", when(p.created_ms), p.thread_url);
        match p.state.as_str() {
            "deletedByAuthor" => md.push_str("*Deleted by you.*\n\n"),
            "removedByFacilitator" => md.push_str("*Removed by a facilitator.*\n\n"),
            _ => {
                if let Some(e) = p.edited_ms {
                    let _ = writeln!(md, "*Edited {}.*\n", when(e));
                }
                quote(&mut md, &p.body);
            }
        }
    }

    if !export.reactions.is_empty() {
        let _ = writeln!(md, "## Reactions\n");
        for r in &export.reactions {
            let _ = writeln!(
                md,
                "- {} on post `{}` in `{}`",
                r.emoji, r.post_id, r.thread_url
            );
        }
        md.push('\n');
    }

    if !export.resources.is_empty() {
        let _ = writeln!(md, "## Resources you added\n");
        for r in &export.resources {
            let _ = write!(md, "- **{}** ({})", line(&r.title), r.kind);
            if let Some(u) = &r.url {
                let _ = write!(md, " <{u}>");
            }
            if let Some(name) = &r.file_name {
                let _ = write!(md, " file `{name}`");
            }
            if !r.note.is_empty() {
                let _ = write!(md, ": {}", line(&r.note));
            }
            md.push('\n');
        }
        md.push('\n');
    }

    if !export.agenda_items.is_empty() {
        let _ = writeln!(md, "## Agenda items you raised\n");
        for a in &export.agenda_items {
            let _ = writeln!(md, "- {} (`{}`)", line(&a.title), a.meeting_url);
        }
        md.push('\n');
    }

    if !export.actions.is_empty() {
        let _ = writeln!(md, "## Your actions\n");
        for a in &export.actions {
            let _ = write!(md, "- {}", line(&a.title));
            if let Some(d) = &a.due_date {
                let _ = write!(md, ", due {d}");
            }
            if let Some(s) = &a.status {
                let _ = write!(md, ", {s}");
            }
            let _ = writeln!(md, " (`{}`)", a.meeting_url);
        }
        md.push('\n');
    }

    if !export.reports.is_empty() {
        let _ = writeln!(md, "## Reports you filed\n");
        for r in &export.reports {
            let about = match (&r.member, &r.post_id) {
                (Some(m), _) => format!("member `{m}`"),
                (None, Some(p)) => format!("post `{p}`"),
                _ => String::from("?"),
            };
            let _ = writeln!(
                md,
                "- {}: {} about {}, {}",
                when(r.created_ms),
                r.reason,
                about,
                r.status
            );
            if !r.note.is_empty() {
                quote(&mut md, &r.note);
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::group::Role;
    use crate::model::resources::{NewResource, ResourceContent};
    use crate::model::roster::{CodeOfConduct, MemberStatus, RosterMember, RosterView};
    use crate::model::safety::ReportReason;
    use automerge::transaction::Transactable;
    use automerge::TextEncoding;
    use cairn_sync::ids::DocumentId;

    fn change<T>(
        doc: &mut Automerge,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> T,
    ) -> T {
        let mut tx = doc.transaction();
        let out = f(&mut tx);
        tx.commit();
        out
    }

    fn new_doc() -> Automerge {
        Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit)
    }

    fn url(n: u8) -> String {
        DocumentId::from_bytes([n; 16]).url()
    }

    struct World {
        roster: Automerge,
        threads: [Automerge; 2],
        resources: Automerge,
        meeting: Automerge,
        reports: [Automerge; 2],
    }

    fn world() -> World {
        let (ana, ben) = (MemberId::from("ana"), MemberId::from("ben"));
        let mut roster = new_doc();
        let entry = |id: &MemberId, pseudonym: &str, role, accepted| RosterMember {
            member_id: id.clone(),
            pseudonym: pseudonym.into(),
            role,
            status: MemberStatus::Active,
            accepted_version: accepted,
            joined_ms: 1,
            expires_ms: None,
        };
        change(&mut roster, |tx| {
            roster::reconcile(
                tx,
                &RosterView {
                    members: vec![
                        entry(&ana, "Ana", Role::Member, 1),
                        entry(&ben, "BEN-SECRET name", Role::Organiser, 0),
                    ],
                    code_of_conduct: CodeOfConduct {
                        version: 1,
                        text: "Confidential".into(),
                    },
                },
            )
            .unwrap()
        });
        let mut t1 = new_doc();
        change(&mut t1, |tx| {
            thread::init(tx, "Ben's private worries", &ben, 1).unwrap();
            let b = thread::add_post(tx, &ben, "BEN-SECRET one", &[], None, 2).unwrap();
            let a = thread::add_post(
                tx,
                &ana,
                "ana first\nsecond line",
                &[Mention::Member(ben.clone())],
                Some(&b),
                3,
            )
            .unwrap();
            thread::add_post(tx, &ben, "BEN-SECRET reply", &[], Some(&a), 4).unwrap();
            thread::react(tx, &b, &ana, "💚").unwrap();
            thread::react(tx, &a, &ben, "👍").unwrap();
        });
        let mut t2 = new_doc();
        change(&mut t2, |tx| {
            thread::init(tx, "Ana's thread", &ana, 1).unwrap();
            let gone = thread::add_post(tx, &ana, "ANA-REGRET", &[], None, 5).unwrap();
            thread::delete_post(tx, &gone, &ana, 6).unwrap();
            thread::add_post(tx, &ana, "ana third", &[Mention::All], None, 7).unwrap();
        });
        let mut res = new_doc();
        change(&mut res, |tx| {
            resources::init(tx).unwrap();
            for (who, title) in [(&ana, "Ana's reading"), (&ben, "BEN-SECRET reading")] {
                resources::add_resource(
                    tx,
                    &NewResource {
                        content: ResourceContent::Reading { url: None },
                        title: title.into(),
                        note: String::new(),
                        tags: vec![],
                        attached_to: resources::Attachment::Group,
                        for_next_meeting: false,
                        added_by: who.clone(),
                        created_ms: 1,
                    },
                )
                .unwrap();
            }
        });
        // A meeting document shaped like the meeting module's.
        let mut meeting = new_doc();
        change(&mut meeting, |tx| {
            schema::stamp(tx, DocKind::Meeting).unwrap();
            let agenda = tx.put_object(ROOT, "agenda", ObjType::List).unwrap();
            for (i, (who, title)) in [("ana", "Peer drift"), ("ben", "BEN-SECRET item")]
                .into_iter()
                .enumerate()
            {
                let item = tx.insert_object(&agenda, i, ObjType::Map).unwrap();
                let t = tx.put_object(&item, "title", ObjType::Text).unwrap();
                tx.splice_text(&t, 0, 0, title).unwrap();
                tx.put(&item, "raisedBy", who).unwrap();
            }
            let actions = tx.put_object(ROOT, "actions", ObjType::Map).unwrap();
            for (id, who, text) in [
                ("a1", "ana", "Send the link"),
                ("a2", "ben", "BEN-SECRET action"),
            ] {
                let item = tx.put_object(&actions, id, ObjType::Map).unwrap();
                let t = tx.put_object(&item, "text", ObjType::Text).unwrap();
                tx.splice_text(&t, 0, 0, text).unwrap();
                tx.put(&item, "owner", who).unwrap();
                tx.put(&item, "due", "2025-03-01").unwrap();
                tx.put(&item, "status", "open").unwrap();
            }
        });
        let mut ana_reports = new_doc();
        change(&mut ana_reports, |tx| {
            safety::init_reports(tx, &ana).unwrap();
            safety::report(
                tx,
                &ana,
                &ReportSubject::Member(ben.clone()),
                ReportReason::Other,
                "ana's note",
                8,
            )
            .unwrap();
        });
        let mut ben_reports = new_doc();
        change(&mut ben_reports, |tx| {
            safety::init_reports(tx, &ben).unwrap();
            safety::report(
                tx,
                &ben,
                &ReportSubject::Member(ana.clone()),
                ReportReason::Harassment,
                "BEN-SECRET report",
                9,
            )
            .unwrap();
        });
        let reports = [ana_reports, ben_reports];
        World {
            roster,
            threads: [t1, t2],
            resources: res,
            meeting,
            reports,
        }
    }

    fn export_ana(w: &World) -> MemberExport {
        let (g, t1, t2, r, m) = (url(1), url(2), url(3), url(4), url(5));
        let (rep_a, rep_b) = (url(6), url(7));
        export(
            &"ana".into(),
            &ExportSources {
                rosters: &[(&g, &w.roster)],
                threads: &[(&t1, &w.threads[0]), (&t2, &w.threads[1])],
                resources: &[(&r, &w.resources)],
                meetings: &[(&m, &w.meeting)],
                reports: &[(&rep_a, &w.reports[0]), (&rep_b, &w.reports[1])],
            },
            1_700_000_000_000,
        )
        .unwrap()
    }

    #[test]
    fn the_export_holds_exactly_the_members_own_posts() {
        let w = world();
        let e = export_ana(&w);
        let bodies: Vec<_> = e
            .posts
            .iter()
            .map(|p| (p.body.as_str(), p.state.as_str()))
            .collect();
        assert_eq!(
            bodies,
            [
                ("ana first\nsecond line", "visible"),
                ("", "deletedByAuthor"),
                ("ana third", "visible")
            ]
        );
        assert_eq!(
            e.posts[0].mentions,
            [MentionExport {
                kind: "member".into(),
                member: Some("ben".into())
            }]
        );
        assert_eq!(
            e.reactions,
            [ReactionExport {
                thread_url: url(2),
                post_id: e.posts[0].reply_to.clone().unwrap(),
                emoji: "💚".into()
            }]
        );
        assert_eq!(
            e.threads_started,
            [ThreadStartedExport {
                thread_url: url(3),
                title: "Ana's thread".into()
            }]
        );
        assert_eq!(
            e.memberships,
            [MembershipExport {
                roster_url: url(1),
                pseudonym: "Ana".into(),
                role: "member".into(),
                status: "active".into(),
                joined_ms: 1,
                expires_ms: None,
                accepted_code_of_conduct_version: Some(1),
            }]
        );
        assert_eq!(e.resources.len(), 1);
        assert_eq!(
            e.agenda_items,
            [AgendaItemExport {
                meeting_url: url(5),
                title: "Peer drift".into()
            }]
        );
        assert_eq!(e.actions.len(), 1);
        assert_eq!(e.actions[0].due_date.as_deref(), Some("2025-03-01"));
        assert_eq!(e.reports.len(), 1);
        assert_eq!(e.reports[0].note, "ana's note");
        assert_eq!(e.reports[0].reports_url, url(6));

        let json = to_json(&e).unwrap();
        let md = to_markdown(&e);
        for out in [&json, &md] {
            assert!(
                !out.contains("BEN-SECRET"),
                "another member's content leaked"
            );
            assert!(
                !out.contains("ANA-REGRET"),
                "a deleted post's text came back"
            );
            assert!(
                !out.contains("Ben's private worries"),
                "another member's thread title leaked"
            );
        }
        assert!(md.contains("> ana first\n> second line\n"));
        assert!(md.contains("*Deleted by you.*"));
        assert!(
            md.contains("pseudonym “Ana”, role member, active, joined"),
            "{md}"
        );

        let ben = export(
            &"ben".into(),
            &ExportSources {
                rosters: &[(&url(1), &w.roster)],
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(ben.memberships[0].accepted_code_of_conduct_version, None);
        assert!(to_markdown(&ben).contains("has not accepted the code of conduct"));
        let back: MemberExport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn json_field_names_are_stable() {
        let w = world();
        let v: serde_json::Value =
            serde_json::from_str(&to_json(&export_ana(&w)).unwrap()).unwrap();
        let sorted = |o: &serde_json::Value| {
            let mut k: Vec<_> = o.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let keys = sorted(&v);
        assert_eq!(
            keys,
            [
                "actions",
                "agendaItems",
                "exportedMs",
                "format",
                "formatVersion",
                "member",
                "memberships",
                "posts",
                "reactions",
                "reports",
                "resources",
                "threadsStarted"
            ]
        );
        let post = sorted(&v["posts"][0]);
        assert_eq!(
            post,
            [
                "body",
                "createdMs",
                "editedMs",
                "mentions",
                "postId",
                "replyTo",
                "state",
                "threadUrl"
            ]
        );
        assert_eq!(v["format"], FORMAT);
        assert_eq!(v["formatVersion"], 2);
        assert_eq!(
            sorted(&v["memberships"][0]),
            [
                "acceptedCodeOfConductVersion",
                "expiresMs",
                "joinedMs",
                "pseudonym",
                "role",
                "rosterUrl",
                "status"
            ]
        );
        assert_eq!(v["memberships"][0]["acceptedCodeOfConductVersion"], 1);
    }

    #[test]
    fn a_member_with_nothing_gets_an_empty_export() {
        let w = world();
        let t = url(2);
        let e = export(
            &"zed".into(),
            &ExportSources {
                threads: &[(&t, &w.threads[0])],
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert!(e.posts.is_empty() && e.memberships.is_empty() && e.reactions.is_empty());
        assert!(to_markdown(&e).contains("## Posts\n\nNone."));
    }

    #[test]
    fn items_written_by_the_meeting_module_are_found() {
        use crate::model::meeting::{self, AgendaKind, NewAgendaItem, OneOffKind};
        let (ana, ben) = (MemberId::from("ana"), MemberId::from("ben"));
        let mut doc = new_doc();
        change(&mut doc, |tx| {
            meeting::init(tx, OneOffKind::Training, "Medication conversations").unwrap();
            for (who, title) in [(&ana, "Ana's case"), (&ben, "BEN-SECRET case")] {
                let item = NewAgendaItem {
                    title: title.into(),
                    raised_by: who.clone(),
                    time_box_minutes: Some(10),
                    kind: AgendaKind::Case,
                    format: None,
                    notes: String::new(),
                };
                meeting::add_agenda_item(tx, &item, 1).unwrap();
            }
            meeting::add_action(
                tx,
                "Book the room",
                &ana,
                Some("2025-04-02".parse().unwrap()),
                2,
            )
            .unwrap();
            meeting::add_action(tx, "BEN-SECRET action", &ben, None, 3).unwrap();
        });
        let m = url(9);
        let e = export(
            &ana,
            &ExportSources {
                meetings: &[(&m, &doc)],
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(
            e.agenda_items,
            [AgendaItemExport {
                meeting_url: m.clone(),
                title: "Ana's case".into()
            }]
        );
        assert_eq!(e.actions.len(), 1);
        assert_eq!(
            (
                e.actions[0].title.as_str(),
                e.actions[0].due_date.as_deref(),
                e.actions[0].status.as_deref()
            ),
            ("Book the room", Some("2025-04-02"), Some("open"))
        );
    }
}
