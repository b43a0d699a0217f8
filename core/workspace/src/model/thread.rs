//! A discussion thread between meetings: one small document per thread.
//!
//! Layout: `title` (Text), `startedBy` (MemberId), `createdMs`, and `posts`, a list of maps
//!
//! | key | value |
//! |---|---|
//! | `id` | the post's id (the Automerge id of the post's map, so no randomness is needed and ids never collide) |
//! | `author` | MemberId |
//! | `body` | Text, exactly what the author wrote |
//! | `replyTo` | id of the post this answers, absent for a top-level post |
//! | `mentions` | list of `{kind: "member", member}` / `{kind: "facilitators"}` / `{kind: "all"}` |
//! | `reactions` | map `"<member>\u{1f}<emoji>"` → `{member, emoji}`: one flat key per reaction (see below) |
//! | `createdMs`, `editedMs` | times |
//! | `state` | `"visible"`, `"deletedByAuthor"` (+ `deletedMs`) or `"removedByFacilitator"` (+ `removedBy`, `removedMs`) |
//!
//! Reactions are one flat map with a key per (member, emoji) rather than a map per emoji:
//! two members who are first to react with the same emoji on two devices would each create
//! that emoji's map, the two maps would conflict and one member's reaction would vanish.
//!
//! Mentions are data passed alongside the body, not parsed out of it: the app knows which
//! member the user picked from a list, a pseudonym can change or repeat, and text like
//! "@all" in a quoted passage must not notify anyone.
//!
//! "Edit only your own posts" is a rule the core applies ([`ThreadError::NotAuthor`]): the
//! relay checks who may write a document, not who wrote a change, and cannot prove
//! authorship without signed changes.
//!
//! **What deletion can and cannot do.** Deleting a post empties its body in the current
//! document and leaves a "deleted by author" marker. Automerge keeps full history: the
//! words remain in this document's history on every device that has synced it, and the
//! core cannot recall copies already on other members' phones. Removing them from history
//! means rebuilding the thread document from its current state (the next issue's
//! moderation tools); keeping one document per thread keeps that rebuild small.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ROOT};
use thiserror::Error;

use crate::model::fields;
use crate::model::group::Role;
use crate::model::roster::RosterMember;
use crate::model::schema::{self, DocKind, SchemaError};
use cairn_sync::ids::{DocumentId, MemberId};

cairn_sync::ids::string_id!(
    /// The id of a post within its thread.
    PostId
);

/// Who a post calls on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mention {
    /// One member (`@Ana`).
    Member(MemberId),
    /// The group's facilitators (`@facilitators`).
    Facilitators,
    /// Everyone in the group (`@all`).
    All,
}

/// Whether a post can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostState {
    /// Readable.
    Visible,
    /// The author deleted it; a marker stays in its place.
    DeletedByAuthor {
        /// When.
        at_ms: i64,
    },
    /// A facilitator removed it; a marker stays in its place.
    RemovedByFacilitator {
        /// The facilitator.
        by: MemberId,
        /// When.
        at_ms: i64,
    },
}

/// A post as the app shows it. For a deleted or removed post `body`, `mentions` and
/// `reactions` are empty whatever the document still holds (an edit merged concurrently
/// with the deletion may have put text back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Post {
    /// Its id.
    pub id: PostId,
    /// Who wrote it.
    pub author: MemberId,
    /// What they wrote.
    pub body: String,
    /// The post it answers.
    pub reply_to: Option<PostId>,
    /// Who it calls on.
    pub mentions: Vec<Mention>,
    /// Emoji → who reacted with it.
    pub reactions: BTreeMap<String, BTreeSet<MemberId>>,
    /// When it was written.
    pub created_ms: i64,
    /// When it was last edited.
    pub edited_ms: Option<i64>,
    /// Visible, deleted or removed.
    pub state: PostState,
}

impl Post {
    /// Whether the post still shows its content.
    pub fn is_visible(&self) -> bool {
        self.state == PostState::Visible
    }
}

/// Whether `post` calls on `member`, whose current role in the group is `role` (`None`
/// for someone who is not a current member). Drives notifications; a member is not
/// notified of their own post.
pub fn is_mentioned(post: &Post, member: &MemberId, role: Option<Role>) -> bool {
    if !post.is_visible() || &post.author == member || role.is_none() {
        return false;
    }
    post.mentions.iter().any(|m| match m {
        Mention::Member(id) => id == member,
        Mention::Facilitators => role.is_some_and(Role::is_facilitator),
        Mention::All => true,
    })
}

/// Who `post` notifies among the group's members, as the roster lists them
/// ([`crate::model::roster::members`]): `@all` reaches every member at `now_ms`,
/// `@facilitators` those in a facilitating role, a named mention that member; suspended,
/// departed, removed and expired members are not notified, nor is the author. In roster
/// (member id) order.
pub fn notified(post: &Post, members: &[RosterMember], now_ms: i64) -> Vec<MemberId> {
    members
        .iter()
        .filter(|m| is_mentioned(post, &m.member_id, m.is_active(now_ms).then_some(m.role)))
        .map(|m| m.member_id.clone())
        .collect()
}

/// A proposal for an agenda item raised from a thread; the meeting module adds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgendaItemDraft {
    /// The thread's title, or the start of the post when the thread has none.
    pub title: String,
    /// The post's author: the person who raised the matter.
    pub raised_by: MemberId,
    /// The thread's `automerge:` URL, so the agenda can link back.
    pub source_thread_url: String,
    /// The post the item came from.
    pub source_post: PostId,
}

/// Why a thread operation failed.
#[derive(Debug, Error)]
pub enum ThreadError {
    /// The document is not a thread document this code can read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Automerge refused the change.
    #[error(transparent)]
    Automerge(#[from] AutomergeError),
    /// No post with this id in the thread (it may not have synced yet).
    #[error("no such post in this thread")]
    NoSuchPost,
    /// Only the author may edit or delete a post.
    #[error("only the author may change this post")]
    NotAuthor,
    /// The post was deleted or removed; it can no longer be changed or answered with reactions.
    #[error("the post was deleted or removed")]
    PostGone,
    /// A post needs some text; to take one back, delete it.
    #[error("a post cannot be empty")]
    EmptyPost,
    /// A reaction needs an emoji.
    #[error("a reaction cannot be empty")]
    EmptyReaction,
    /// Not an `automerge:` URL with a valid document id.
    #[error("not a valid automerge: document URL")]
    InvalidUrl,
}

const TITLE: &str = "title";
const STARTED_BY: &str = "startedBy";
const CREATED: &str = "createdMs";
const POSTS: &str = "posts";
const MENTIONS: &str = "mentions";
const REACTIONS: &str = "reactions";
const STATE: &str = "state";
/// Longest agenda title taken from a post body, in characters.
const DRAFT_TITLE_CHARS: usize = 80;

/// Creates a thread document.
pub fn init(
    tx: &mut impl Transactable,
    title: &str,
    started_by: &MemberId,
    created_ms: i64,
) -> Result<(), ThreadError> {
    schema::stamp(tx, DocKind::Thread)?;
    fields::put_text(tx, &ROOT, TITLE, title)?;
    tx.put(ROOT, STARTED_BY, started_by.as_str())?;
    tx.put(ROOT, CREATED, created_ms)?;
    tx.put_object(ROOT, POSTS, ObjType::List)?;
    Ok(())
}

/// The thread's title.
pub fn title(doc: &impl ReadDoc) -> Result<String, ThreadError> {
    schema::check(doc, DocKind::Thread)?;
    Ok(fields::string(doc, &ROOT, TITLE)?.unwrap_or_default())
}

/// Who started the thread (and so wrote its title).
pub fn started_by(doc: &impl ReadDoc) -> Result<Option<MemberId>, ThreadError> {
    schema::check(doc, DocKind::Thread)?;
    Ok(fields::string(doc, &ROOT, STARTED_BY)?.map(MemberId::from))
}

/// Retitles the thread.
pub fn set_title(tx: &mut impl Transactable, title: &str) -> Result<(), ThreadError> {
    schema::check(tx, DocKind::Thread)?;
    fields::set_text::<ThreadError>(tx, &ROOT, TITLE, title)
}

/// Adds a post whose body is exactly `body` (no trimming: a shared reflection excerpt must
/// arrive as previewed) and returns its id. `reply_to` must name a post of this thread.
pub fn add_post(
    tx: &mut impl Transactable,
    author: &MemberId,
    body: &str,
    mentions: &[Mention],
    reply_to: Option<&PostId>,
    now_ms: i64,
) -> Result<PostId, ThreadError> {
    schema::check(tx, DocKind::Thread)?;
    if body.is_empty() {
        return Err(ThreadError::EmptyPost);
    }
    let posts = fields::list_in::<ThreadError>(tx, &ROOT, POSTS)?;
    if let Some(parent) = reply_to {
        find(tx, parent)?.ok_or(ThreadError::NoSuchPost)?;
    }
    let at = tx.length(&posts);
    let post = tx.insert_object(&posts, at, ObjType::Map)?;
    let id = PostId(post.to_string());
    tx.put(&post, "id", id.as_str())?;
    tx.put(&post, "author", author.as_str())?;
    fields::put_text(tx, &post, "body", body)?;
    if let Some(parent) = reply_to {
        tx.put(&post, "replyTo", parent.as_str())?;
    }
    let list = tx.put_object(&post, MENTIONS, ObjType::List)?;
    for mention in dedup(mentions) {
        push_mention(tx, &list, mention)?;
    }
    tx.put_object(&post, REACTIONS, ObjType::Map)?;
    tx.put(&post, "createdMs", now_ms)?;
    tx.put(&post, STATE, "visible")?;
    Ok(id)
}

/// Rewrites a post's body (the smallest splices, so a reaction or another edit made
/// concurrently merges) and its mentions. Only the author may edit.
pub fn edit_post(
    tx: &mut impl Transactable,
    post_id: &PostId,
    editor: &MemberId,
    new_body: &str,
    mentions: &[Mention],
    now_ms: i64,
) -> Result<(), ThreadError> {
    schema::check(tx, DocKind::Thread)?;
    if new_body.is_empty() {
        return Err(ThreadError::EmptyPost);
    }
    let post = find(tx, post_id)?.ok_or(ThreadError::NoSuchPost)?;
    check_author(tx, &post, editor)?;
    ensure_visible(tx, &post)?;
    fields::set_text::<ThreadError>(tx, &post, "body", new_body)?;
    set_mentions(tx, &post, mentions)?;
    tx.put(&post, "editedMs", now_ms)?;
    Ok(())
}

/// Deletes the author's own post: the body is emptied and a "deleted by author" marker
/// stays so replies keep their place. See the module docs for what this cannot recall.
pub fn delete_post(
    tx: &mut impl Transactable,
    post_id: &PostId,
    author: &MemberId,
    now_ms: i64,
) -> Result<(), ThreadError> {
    schema::check(tx, DocKind::Thread)?;
    let post = find(tx, post_id)?.ok_or(ThreadError::NoSuchPost)?;
    check_author(tx, &post, author)?;
    ensure_visible(tx, &post)?;
    blank(tx, &post)?;
    tx.put(&post, STATE, "deletedByAuthor")?;
    tx.put(&post, "deletedMs", now_ms)?;
    Ok(())
}

/// Adds `member`'s reaction to a post (idempotent).
pub fn react(
    tx: &mut impl Transactable,
    post_id: &PostId,
    member: &MemberId,
    emoji: &str,
) -> Result<(), ThreadError> {
    schema::check(tx, DocKind::Thread)?;
    if emoji.trim().is_empty() {
        return Err(ThreadError::EmptyReaction);
    }
    let post = find(tx, post_id)?.ok_or(ThreadError::NoSuchPost)?;
    ensure_visible(tx, &post)?;
    let reactions = fields::map_in::<ThreadError>(tx, &post, REACTIONS)?;
    let key = reaction_key(member, emoji);
    if fields::object(tx, &reactions, &key)?.is_none() {
        let r = tx.put_object(&reactions, key.as_str(), ObjType::Map)?;
        tx.put(&r, "member", member.as_str())?;
        tx.put(&r, "emoji", emoji)?;
    }
    Ok(())
}

/// Takes back `member`'s reaction (nothing happens if there was none).
pub fn unreact(
    tx: &mut impl Transactable,
    post_id: &PostId,
    member: &MemberId,
    emoji: &str,
) -> Result<(), ThreadError> {
    schema::check(tx, DocKind::Thread)?;
    let post = find(tx, post_id)?.ok_or(ThreadError::NoSuchPost)?;
    let Some(reactions) = fields::object(tx, &post, REACTIONS)? else {
        return Ok(());
    };
    let key = reaction_key(member, emoji);
    if tx.get(&reactions, key.as_str())?.is_some() {
        tx.delete(&reactions, key.as_str())?;
    }
    Ok(())
}

/// Every post, oldest first (by the time written on the author's device; posts made
/// offline on two phones interleave by when they were written, not when they synced).
pub fn posts(doc: &impl ReadDoc) -> Result<Vec<Post>, ThreadError> {
    schema::check(doc, DocKind::Thread)?;
    let Some(list) = fields::list(doc, &ROOT, POSTS)? else {
        return Ok(Vec::new());
    };
    let mut out = fields::maps_in_list(doc, &list, POSTS)?
        .into_iter()
        .map(|(_, obj)| read_post(doc, &obj))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by_key(|p| p.created_ms); // stable: list order breaks ties
    Ok(out)
}

/// One post.
pub fn post(doc: &impl ReadDoc, post_id: &PostId) -> Result<Option<Post>, ThreadError> {
    schema::check(doc, DocKind::Thread)?;
    match find(doc, post_id)? {
        Some(obj) => Ok(Some(read_post(doc, &obj)?)),
        None => Ok(None),
    }
}

/// Proposes an agenda item from a post: the thread's title (or the post's first line),
/// raised by the post's author, linking back to the thread. Deleted and removed posts
/// cannot be raised.
pub fn turn_into_agenda_item(
    doc: &impl ReadDoc,
    thread_url: &str,
    post_id: &PostId,
) -> Result<AgendaItemDraft, ThreadError> {
    let thread_title = title(doc)?;
    let post = post(doc, post_id)?.ok_or(ThreadError::NoSuchPost)?;
    if !post.is_visible() {
        return Err(ThreadError::PostGone);
    }
    let url = DocumentId::parse_url(thread_url)
        .map_err(|_| ThreadError::InvalidUrl)?
        .url();
    let title = if thread_title.trim().is_empty() {
        let first = post.body.lines().next().unwrap_or_default().trim();
        let mut short: String = first.chars().take(DRAFT_TITLE_CHARS).collect();
        if first.chars().count() > DRAFT_TITLE_CHARS {
            short.push('…');
        }
        short
    } else {
        thread_title.trim().to_owned()
    };
    Ok(AgendaItemDraft {
        title,
        raised_by: post.author,
        source_thread_url: url,
        source_post: post.id,
    })
}

// ---------------------------------------------------------------- internals

/// The map of the post with this id.
pub(crate) fn find(doc: &impl ReadDoc, post_id: &PostId) -> Result<Option<ObjId>, SchemaError> {
    let Some(list) = fields::list(doc, &ROOT, POSTS)? else {
        return Ok(None);
    };
    for (_, obj) in fields::maps_in_list(doc, &list, POSTS)? {
        if stored_id(doc, &obj)? == post_id.0 {
            return Ok(Some(obj));
        }
    }
    Ok(None)
}

fn stored_id(doc: &impl ReadDoc, obj: &ObjId) -> Result<String, SchemaError> {
    // A post written by foreign code without an `id` is known by its object id, the same
    // rule `add_post` follows.
    Ok(fields::string(doc, obj, "id")?.unwrap_or_else(|| obj.to_string()))
}

fn check_author(doc: &impl ReadDoc, post: &ObjId, who: &MemberId) -> Result<(), ThreadError> {
    match fields::string(doc, post, "author")? {
        Some(a) if a == who.as_str() => Ok(()),
        _ => Err(ThreadError::NotAuthor),
    }
}

/// Whether the post is still visible, as an error for changes that need it to be.
pub(crate) fn ensure_visible(doc: &impl ReadDoc, post: &ObjId) -> Result<(), ThreadError> {
    match fields::string(doc, post, STATE)?.as_deref() {
        None | Some("visible") => Ok(()),
        _ => Err(ThreadError::PostGone),
    }
}

/// Empties a post's body, mentions and reactions, leaving the map as a marker.
pub(crate) fn blank(tx: &mut impl Transactable, post: &ObjId) -> Result<(), ThreadError> {
    fields::set_text::<ThreadError>(tx, post, "body", "")?;
    tx.put_object(post, MENTIONS, ObjType::List)?;
    tx.put_object(post, REACTIONS, ObjType::Map)?;
    Ok(())
}

/// Removes a post as a facilitator (called by the safety module, which checks the role).
pub(crate) fn mark_removed(
    tx: &mut impl Transactable,
    post_id: &PostId,
    facilitator: &MemberId,
    now_ms: i64,
) -> Result<(), ThreadError> {
    schema::check(tx, DocKind::Thread)?;
    let post = find(tx, post_id)?.ok_or(ThreadError::NoSuchPost)?;
    blank(tx, &post)?;
    tx.put(&post, STATE, "removedByFacilitator")?;
    tx.put(&post, "removedBy", facilitator.as_str())?;
    tx.put(&post, "removedMs", now_ms)?;
    Ok(())
}

/// The key of one member's reaction with one emoji. The unit separator appears in
/// neither member ids nor emoji, so keys cannot collide.
fn reaction_key(member: &MemberId, emoji: &str) -> String {
    format!("{}\u{1f}{}", member.as_str(), emoji)
}

fn dedup(mentions: &[Mention]) -> Vec<&Mention> {
    let mut seen = BTreeSet::new();
    mentions.iter().filter(|m| seen.insert(*m)).collect()
}

fn push_mention(
    tx: &mut impl Transactable,
    list: &ObjId,
    mention: &Mention,
) -> Result<(), AutomergeError> {
    let at = tx.length(list);
    let m = tx.insert_object(list, at, ObjType::Map)?;
    match mention {
        Mention::Member(id) => {
            tx.put(&m, "kind", "member")?;
            tx.put(&m, "member", id.as_str())?;
        }
        Mention::Facilitators => tx.put(&m, "kind", "facilitators")?,
        Mention::All => tx.put(&m, "kind", "all")?,
    }
    Ok(())
}

fn read_mention(doc: &impl ReadDoc, obj: &ObjId) -> Result<Mention, SchemaError> {
    let shape = || SchemaError::Shape(MENTIONS.into());
    match fields::string(doc, obj, "kind")?.as_deref() {
        Some("member") => Ok(Mention::Member(
            fields::string(doc, obj, "member")?
                .ok_or_else(shape)?
                .into(),
        )),
        Some("facilitators") => Ok(Mention::Facilitators),
        Some("all") => Ok(Mention::All),
        _ => Err(shape()),
    }
}

/// Changes the stored mentions to `wanted` touching only what differs, so a concurrent
/// edit's mentions merge instead of duplicating.
fn set_mentions(
    tx: &mut impl Transactable,
    post: &ObjId,
    wanted: &[Mention],
) -> Result<(), ThreadError> {
    let list = fields::list_in::<ThreadError>(tx, post, MENTIONS)?;
    let wanted = dedup(wanted);
    let mut kept = BTreeSet::new();
    let existing = fields::maps_in_list(tx, &list, MENTIONS)?;
    for (i, obj) in existing.into_iter().rev() {
        let m = read_mention(tx, &obj)?;
        if wanted.contains(&&m) && !kept.contains(&m) {
            kept.insert(m);
        } else {
            tx.delete(&list, i)?;
        }
    }
    for m in wanted {
        if !kept.contains(m) {
            push_mention(tx, &list, m)?;
        }
    }
    Ok(())
}

fn read_post(doc: &impl ReadDoc, obj: &ObjId) -> Result<Post, SchemaError> {
    let shape = |k: &str| SchemaError::Shape(k.to_owned());
    let state = match fields::string(doc, obj, STATE)?.as_deref() {
        None | Some("visible") => PostState::Visible,
        Some("deletedByAuthor") => PostState::DeletedByAuthor {
            at_ms: fields::int(doc, obj, "deletedMs")?.unwrap_or(0),
        },
        Some("removedByFacilitator") => PostState::RemovedByFacilitator {
            by: fields::string(doc, obj, "removedBy")?
                .unwrap_or_default()
                .into(),
            at_ms: fields::int(doc, obj, "removedMs")?.unwrap_or(0),
        },
        Some(_) => return Err(shape(STATE)),
    };
    let visible = state == PostState::Visible;
    let mut mentions = Vec::new();
    let mut reactions = BTreeMap::new();
    if visible {
        if let Some(list) = fields::list(doc, obj, MENTIONS)? {
            let mut seen = BTreeSet::new();
            for (_, m) in fields::maps_in_list(doc, &list, MENTIONS)? {
                let m = read_mention(doc, &m)?;
                if seen.insert(m.clone()) {
                    mentions.push(m);
                }
            }
        }
        if let Some(map) = fields::object(doc, obj, REACTIONS)? {
            for key in doc.keys(&map) {
                let r = fields::object(doc, &map, &key)?.ok_or_else(|| shape(REACTIONS))?;
                let (Some(member), Some(emoji)) = (
                    fields::string(doc, &r, "member")?,
                    fields::string(doc, &r, "emoji")?,
                ) else {
                    return Err(shape(REACTIONS));
                };
                reactions
                    .entry(emoji)
                    .or_insert_with(BTreeSet::new)
                    .insert(MemberId::from(member));
            }
        }
    }
    Ok(Post {
        id: PostId(stored_id(doc, obj)?),
        author: fields::string(doc, obj, "author")?
            .ok_or_else(|| shape("author"))?
            .into(),
        body: if visible {
            fields::string(doc, obj, "body")?.unwrap_or_default()
        } else {
            String::new()
        },
        reply_to: fields::string(doc, obj, "replyTo")?.map(PostId),
        mentions,
        reactions,
        created_ms: fields::int(doc, obj, "createdMs")?.unwrap_or(0),
        edited_ms: fields::int(doc, obj, "editedMs")?,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{Automerge, TextEncoding};

    const URL: &str = "automerge:488sijVLJ6Grs5PnrczSYBwfNg25";

    fn new_thread(title: &str) -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        let mut tx = doc.transaction();
        init(&mut tx, title, &"ana".into(), 1).unwrap();
        tx.commit();
        doc
    }

    fn change<T>(
        doc: &mut Automerge,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> T,
    ) -> T {
        let mut tx = doc.transaction();
        let out = f(&mut tx);
        tx.commit();
        out
    }

    fn ana() -> MemberId {
        "ana".into()
    }
    fn ben() -> MemberId {
        "ben".into()
    }

    #[test]
    fn a_post_keeps_exactly_its_text_and_replies_link_back() {
        let mut doc = new_thread("Supervision");
        let body = "  Line one 🌱\n\nline two  ";
        let first = change(&mut doc, |tx| {
            add_post(tx, &ana(), body, &[], None, 10).unwrap()
        });
        let reply = change(&mut doc, |tx| {
            add_post(tx, &ben(), "Thanks", &[], Some(&first), 11).unwrap()
        });
        let all = posts(&doc).unwrap();
        assert_eq!(all[0].body, body);
        assert_eq!(all[1].reply_to.as_ref(), Some(&first));
        assert_eq!(all[1].id, reply);
        assert!(matches!(
            change(&mut doc, |tx| add_post(
                tx,
                &ben(),
                "x",
                &[],
                Some(&"nope".into()),
                12
            )),
            Err(ThreadError::NoSuchPost)
        ));
        assert!(matches!(
            change(&mut doc, |tx| add_post(tx, &ben(), "", &[], None, 12)),
            Err(ThreadError::EmptyPost)
        ));
    }

    #[test]
    fn concurrent_posts_and_reactions_merge() {
        let mut a = new_thread("Check-in");
        let first = change(&mut a, |tx| {
            add_post(tx, &ana(), "How is everyone?", &[], None, 10).unwrap()
        });
        let mut b = a.fork();
        change(&mut a, |tx| {
            add_post(tx, &ana(), "Written offline at noon", &[], None, 20).unwrap();
            react(tx, &first, &ana(), "💚").unwrap();
        });
        change(&mut b, |tx| {
            add_post(
                tx,
                &ben(),
                "Written offline at eleven",
                &[],
                Some(&first),
                15,
            )
            .unwrap();
            react(tx, &first, &ben(), "💚").unwrap();
            react(tx, &first, &ben(), "🙏").unwrap();
        });
        a.merge(&mut b).unwrap();
        b.merge(&mut a).unwrap();
        let merged = posts(&a).unwrap();
        assert_eq!(merged, posts(&b).unwrap());
        let bodies: Vec<_> = merged.iter().map(|p| p.body.as_str()).collect();
        assert_eq!(
            bodies,
            [
                "How is everyone?",
                "Written offline at eleven",
                "Written offline at noon"
            ]
        );
        let hearts = &merged[0].reactions["💚"];
        assert_eq!(
            hearts.iter().map(MemberId::as_str).collect::<Vec<_>>(),
            ["ana", "ben"]
        );
        assert_eq!(merged[0].reactions["🙏"].len(), 1);

        change(&mut a, |tx| unreact(tx, &first, &ben(), "🙏").unwrap());
        assert!(!post(&a, &first)
            .unwrap()
            .unwrap()
            .reactions
            .contains_key("🙏"));
    }

    #[test]
    fn only_the_author_edits_and_edits_merge_with_concurrent_ones() {
        let mut a = new_thread("Readings");
        let id = change(&mut a, |tx| {
            add_post(tx, &ana(), "I liked the chapter.", &[], None, 10).unwrap()
        });
        assert!(matches!(
            change(&mut a, |tx| edit_post(
                tx,
                &id,
                &ben(),
                "Ben was here",
                &[],
                11
            )),
            Err(ThreadError::NotAuthor)
        ));
        let mut b = a.fork();
        change(&mut a, |tx| {
            edit_post(tx, &id, &ana(), "I really liked the chapter.", &[], 12).unwrap()
        });
        change(&mut b, |tx| react(tx, &id, &ben(), "👍").unwrap());
        a.merge(&mut b).unwrap();
        let p = post(&a, &id).unwrap().unwrap();
        assert_eq!(p.body, "I really liked the chapter.");
        assert_eq!(p.edited_ms, Some(12));
        assert_eq!(p.reactions["👍"].len(), 1);
    }

    #[test]
    fn deletion_leaves_a_marker_and_replies_stay() {
        let mut doc = new_thread("Check-in");
        let id = change(&mut doc, |tx| {
            add_post(
                tx,
                &ana(),
                "Something I regret saying",
                &[Mention::All],
                None,
                10,
            )
            .unwrap()
        });
        change(&mut doc, |tx| {
            react(tx, &id, &ben(), "💚").unwrap();
            add_post(tx, &ben(), "Reply", &[], Some(&id), 11).unwrap();
        });
        assert!(matches!(
            change(&mut doc, |tx| delete_post(tx, &id, &ben(), 12)),
            Err(ThreadError::NotAuthor)
        ));
        change(&mut doc, |tx| delete_post(tx, &id, &ana(), 13).unwrap());
        let all = posts(&doc).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].state, PostState::DeletedByAuthor { at_ms: 13 });
        assert_eq!(
            (
                all[0].body.as_str(),
                all[0].mentions.len(),
                all[0].reactions.len()
            ),
            ("", 0, 0)
        );
        assert_eq!(all[1].reply_to.as_ref(), Some(&id));
        assert!(matches!(
            change(&mut doc, |tx| edit_post(tx, &id, &ana(), "again", &[], 14)),
            Err(ThreadError::PostGone)
        ));
        assert!(matches!(
            change(&mut doc, |tx| react(tx, &id, &ben(), "👍")),
            Err(ThreadError::PostGone)
        ));
        assert!(matches!(
            turn_into_agenda_item(&doc, URL, &id),
            Err(ThreadError::PostGone)
        ));
    }

    #[test]
    fn an_edit_merged_with_a_deletion_stays_hidden() {
        let mut a = new_thread("t");
        let id = change(&mut a, |tx| {
            add_post(tx, &ana(), "first words", &[], None, 10).unwrap()
        });
        let mut b = a.fork();
        change(&mut a, |tx| delete_post(tx, &id, &ana(), 11).unwrap());
        change(&mut b, |tx| {
            edit_post(tx, &id, &ana(), "first words, more", &[], 11).unwrap()
        });
        a.merge(&mut b).unwrap();
        let p = post(&a, &id).unwrap().unwrap();
        assert!(!p.is_visible());
        assert_eq!(p.body, "");
    }

    #[test]
    fn mentions_are_data_and_reach_the_right_people() {
        let mut doc = new_thread("Rota");
        let id = change(&mut doc, |tx| {
            add_post(
                tx,
                &ana(),
                "Can @Ben and the facilitators look at this? (@all is quoted, not a mention)",
                &[
                    Mention::Member(ben()),
                    Mention::Facilitators,
                    Mention::Member(ben()),
                ],
                None,
                10,
            )
            .unwrap()
        });
        let p = post(&doc, &id).unwrap().unwrap();
        assert_eq!(p.mentions, [Mention::Member(ben()), Mention::Facilitators]);
        assert!(is_mentioned(&p, &ben(), Some(Role::Member)));
        assert!(is_mentioned(&p, &"cai".into(), Some(Role::Facilitator)));
        assert!(!is_mentioned(&p, &"dee".into(), Some(Role::Member)));
        assert!(
            !is_mentioned(&p, &ben(), None),
            "not notified once gone from the group"
        );
        assert!(
            !is_mentioned(&p, &ana(), Some(Role::Organiser)),
            "not notified of one's own post"
        );

        let mut other = doc.fork();
        change(&mut doc, |tx| {
            edit_post(
                tx,
                &id,
                &ana(),
                "Can the facilitators look?",
                &[Mention::Facilitators],
                11,
            )
            .unwrap()
        });
        change(&mut other, |tx| {
            edit_post(
                tx,
                &id,
                &ana(),
                "Can @Ben and the facilitators look at this?",
                &[Mention::Member(ben()), Mention::Facilitators, Mention::All],
                12,
            )
            .unwrap()
        });
        doc.merge(&mut other).unwrap();
        let p = post(&doc, &id).unwrap().unwrap();
        assert_eq!(
            p.mentions,
            [Mention::Facilitators, Mention::All],
            "no duplicates after merging two edits"
        );
    }

    #[test]
    fn all_and_facilitators_resolve_against_the_roster() {
        use crate::model::roster::{self, CodeOfConduct, MemberStatus, RosterView};
        let entry = |id: &str, role, status| RosterMember {
            member_id: id.into(),
            pseudonym: id.to_uppercase(),
            role,
            status,
            accepted_version: 1,
            joined_ms: 0,
            expires_ms: None,
        };
        let mut roster_doc = Automerge::new();
        let mut tx = roster_doc.transaction();
        roster::reconcile(
            &mut tx,
            &RosterView {
                members: vec![
                    entry("ana", Role::Member, MemberStatus::Active),
                    entry("ben", Role::Member, MemberStatus::Active),
                    entry("cai", Role::Facilitator, MemberStatus::Active),
                    entry("dee", Role::Organiser, MemberStatus::Suspended),
                    entry("eli", Role::Observer, MemberStatus::Active),
                    entry("fay", Role::Member, MemberStatus::Left),
                    RosterMember {
                        expires_ms: Some(50),
                        ..entry("gus", Role::Observer, MemberStatus::Active)
                    },
                ],
                code_of_conduct: CodeOfConduct::default(),
            },
        )
        .unwrap();
        tx.commit();
        let members = roster::members(&roster_doc).unwrap();

        let mut doc = new_thread("Rota");
        let ids = change(&mut doc, |tx| {
            [
                add_post(tx, &ana(), "Everyone", &[Mention::All], None, 1).unwrap(),
                add_post(tx, &ana(), "Help", &[Mention::Facilitators], None, 2).unwrap(),
                add_post(
                    tx,
                    &ana(),
                    "Fay?",
                    &[Mention::Member("fay".into())],
                    None,
                    3,
                )
                .unwrap(),
            ]
        });
        let who = |i: usize, now: i64| -> Vec<String> {
            let p = post(&doc, &ids[i]).unwrap().unwrap();
            notified(&p, &members, now)
                .into_iter()
                .map(|m| m.to_string())
                .collect()
        };
        assert_eq!(who(0, 10), ["ben", "cai", "eli", "gus"]);
        assert_eq!(
            who(0, 50),
            ["ben", "cai", "eli"],
            "the guest's access ended"
        );
        assert_eq!(who(1, 10), ["cai"], "a suspended organiser is not reached");
        assert!(who(2, 10).is_empty(), "a member who left is not notified");
    }

    #[test]
    fn a_post_becomes_an_agenda_item_draft() {
        let mut doc = new_thread("Peer drift");
        let id = change(&mut doc, |tx| {
            add_post(
                tx,
                &ben(),
                "Can we talk about drift next time?",
                &[],
                None,
                10,
            )
            .unwrap()
        });
        let draft = turn_into_agenda_item(&doc, URL, &id).unwrap();
        assert_eq!(draft.title, "Peer drift");
        assert_eq!(draft.raised_by, ben());
        assert_eq!(draft.source_thread_url, URL);
        assert_eq!(draft.source_post, id);

        let mut untitled = new_thread(" ");
        let long = "x".repeat(100) + "\nsecond line";
        let id = change(&mut untitled, |tx| {
            add_post(tx, &ben(), &long, &[], None, 10).unwrap()
        });
        let draft = turn_into_agenda_item(&untitled, URL, &id).unwrap();
        assert_eq!(draft.title.chars().count(), DRAFT_TITLE_CHARS + 1);
        assert!(matches!(
            turn_into_agenda_item(&untitled, "automerge:bad", &id),
            Err(ThreadError::InvalidUrl)
        ));
    }

    #[test]
    fn edits_count_in_utf16_units_around_emoji() {
        let mut a = new_thread("t");
        let id = change(&mut a, |tx| {
            add_post(tx, &ana(), "🌱 growth", &[], None, 10).unwrap()
        });
        let mut b = a.fork();
        change(&mut a, |tx| {
            edit_post(tx, &id, &ana(), "🌱 slow growth", &[], 11).unwrap()
        });
        change(&mut b, |tx| {
            edit_post(tx, &id, &ana(), "🌱 growth 🌳", &[], 12).unwrap()
        });
        a.merge(&mut b).unwrap();
        assert_eq!(post(&a, &id).unwrap().unwrap().body, "🌱 slow growth 🌳");
    }
}
