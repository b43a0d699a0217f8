//! A discussion thread between meetings: posts, replies, reactions, mentions, and the
//! author's own edits and deletions.
//!
//! "Edit or delete only your own posts" is applied here, on the device: the relay checks
//! who may write the thread, not who wrote a change. Deleting a post leaves a "deleted by
//! author" marker; its words stay in the document's history on every phone that synced
//! it, and copies on other members' phones cannot be recalled.

use std::sync::Arc;

use automerge::Automerge;
use cairn_sync::ids::MemberId;

use crate::app::group::{id_of_url, my_member_id};
use crate::app::{CairnError, Group, Listener, Subscription, Thread};
use crate::model::index::{self, IndexError};
use crate::model::thread::{self as model, PostId, ThreadError};

/// Who a post calls on (chosen by the member from a list, not parsed out of the text).
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// Who reacted with it, by member id.
    pub members: Vec<String>,
}

/// A post. A deleted or removed post has empty `text`, `mentions` and `reactions`.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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

impl From<ThreadError> for CairnError {
    fn from(e: ThreadError) -> Self {
        match e {
            ThreadError::Schema(e) => e.into(),
            ThreadError::Automerge(e) => e.into(),
            ThreadError::NoSuchPost => CairnError::not_found("post in this thread"),
            ThreadError::NotAuthor => CairnError::Forbidden {
                reason: e.to_string(),
            },
            ThreadError::PostGone
            | ThreadError::EmptyPost
            | ThreadError::EmptyReaction
            | ThreadError::InvalidUrl => CairnError::invalid(e.to_string()),
        }
    }
}

impl From<&Mention> for model::Mention {
    fn from(m: &Mention) -> Self {
        match m {
            Mention::Member { member_id } => {
                model::Mention::Member(MemberId::from(member_id.as_str()))
            }
            Mention::Facilitators => model::Mention::Facilitators,
            Mention::All => model::Mention::All,
        }
    }
}

impl From<model::Mention> for Mention {
    fn from(m: model::Mention) -> Self {
        match m {
            model::Mention::Member(id) => Mention::Member {
                member_id: id.to_string(),
            },
            model::Mention::Facilitators => Mention::Facilitators,
            model::Mention::All => Mention::All,
        }
    }
}

impl From<model::Post> for PostRecord {
    fn from(p: model::Post) -> Self {
        PostRecord {
            id: p.id.to_string(),
            author: p.author.to_string(),
            text: p.body,
            created_ms: p.created_ms,
            edited_ms: p.edited_ms,
            reply_to: p.reply_to.map(|r| r.to_string()),
            mentions: p.mentions.into_iter().map(Into::into).collect(),
            reactions: p
                .reactions
                .into_iter()
                .map(|(emoji, members)| Reaction {
                    emoji,
                    members: members.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            state: match p.state {
                model::PostState::Visible => PostState::Visible,
                model::PostState::DeletedByAuthor { at_ms } => PostState::DeletedByAuthor { at_ms },
                model::PostState::RemovedByFacilitator { by, at_ms } => {
                    PostState::RemovedByFacilitator {
                        by: by.to_string(),
                        at_ms,
                    }
                }
            },
        }
    }
}

fn model_mentions(list: &[Mention]) -> Vec<model::Mention> {
    list.iter().map(Into::into).collect()
}

impl Thread {
    fn view(&self) -> impl Fn(&Automerge) -> Result<ThreadRecord, CairnError> + Send + Sync {
        let id = self.doc.to_string();
        move |doc| {
            Ok(ThreadRecord {
                id: id.clone(),
                title: model::title(doc)?,
                started_by: model::started_by(doc)?.map(|m| m.to_string()),
                posts: model::posts(doc)?.into_iter().map(Into::into).collect(),
            })
        }
    }

    /// The thread now.
    pub async fn read(&self) -> Result<ThreadRecord, CairnError> {
        self.cairn.read_doc(self.doc, self.view()).await
    }

    /// The thread, live: the current record first, then one per change, until the
    /// [`Subscription`] ends.
    pub fn subscribe(&self, listener: Arc<dyn Listener<ThreadRecord>>) -> Subscription {
        self.cairn.subscribe_doc(self.doc, self.view(), listener)
    }

    async fn add(
        &self,
        text: &str,
        reply_to: Option<&str>,
        mentions_: &[Mention],
    ) -> Result<String, CairnError> {
        let me = my_member_id(&self.cairn, &self.group).await?;
        let now = self.cairn.now_ms();
        let (text, reply_to, mentions) = (
            text.to_owned(),
            reply_to.map(PostId::from),
            model_mentions(mentions_),
        );
        self.cairn
            .change_doc(self.doc, move |tx| {
                Ok(model::add_post(tx, &me, &text, &mentions, reply_to.as_ref(), now)?.to_string())
            })
            .await
    }

    /// Posts `text` (kept exactly, not trimmed; not empty); returns the post's id.
    pub async fn post(&self, text: &str) -> Result<String, CairnError> {
        self.add(text, None, &[]).await
    }

    /// Posts `text` calling on `mentions`; returns the post's id.
    pub async fn post_with_mentions(
        &self,
        text: &str,
        mentions: Vec<Mention>,
    ) -> Result<String, CairnError> {
        self.add(text, None, &mentions).await
    }

    /// Answers post `to` (NotFound if the thread has no such post); returns the new post's id.
    pub async fn reply(&self, to: &str, text: &str) -> Result<String, CairnError> {
        self.add(text, Some(to), &[]).await
    }

    /// Answers post `to`, calling on `mentions`; returns the new post's id.
    pub async fn reply_with_mentions(
        &self,
        to: &str,
        text: &str,
        mentions: Vec<Mention>,
    ) -> Result<String, CairnError> {
        self.add(text, Some(to), &mentions).await
    }

    async fn edit(
        &self,
        post_id: &str,
        text: &str,
        mentions_: Option<&[Mention]>,
    ) -> Result<(), CairnError> {
        let me = my_member_id(&self.cairn, &self.group).await?;
        let now = self.cairn.now_ms();
        let (id, text, mentions) = (
            PostId::from(post_id),
            text.to_owned(),
            mentions_.map(model_mentions),
        );
        self.cairn
            .change_doc(self.doc, move |tx| {
                let mentions = match mentions {
                    Some(m) => m,
                    None => {
                        model::post(tx, &id)?
                            .ok_or(ThreadError::NoSuchPost)?
                            .mentions
                    }
                };
                Ok(model::edit_post(tx, &id, &me, &text, &mentions, now)?)
            })
            .await
    }

    /// Rewrites one's own post, keeping its mentions. Someone else's post is Forbidden; a
    /// deleted one Invalid.
    pub async fn edit_post(&self, post_id: &str, text: &str) -> Result<(), CairnError> {
        self.edit(post_id, text, None).await
    }

    /// Rewrites one's own post and who it calls on.
    pub async fn edit_post_with_mentions(
        &self,
        post_id: &str,
        text: &str,
        mentions: Vec<Mention>,
    ) -> Result<(), CairnError> {
        self.edit(post_id, text, Some(&mentions)).await
    }

    /// Deletes one's own post: a "deleted by author" marker stays so replies keep their
    /// place. Copies already on other members' phones cannot be recalled.
    pub async fn delete_post(&self, post_id: &str) -> Result<(), CairnError> {
        let me = my_member_id(&self.cairn, &self.group).await?;
        let now = self.cairn.now_ms();
        let id = PostId::from(post_id);
        self.cairn
            .change_doc(self.doc, move |tx| {
                Ok(model::delete_post(tx, &id, &me, now)?)
            })
            .await
    }

    /// Adds this member's reaction (idempotent).
    pub async fn react(&self, post_id: &str, emoji: &str) -> Result<(), CairnError> {
        let me = my_member_id(&self.cairn, &self.group).await?;
        let (id, emoji) = (PostId::from(post_id), emoji.to_owned());
        self.cairn
            .change_doc(self.doc, move |tx| Ok(model::react(tx, &id, &me, &emoji)?))
            .await
    }

    /// Takes this member's reaction back (nothing happens if there was none).
    pub async fn unreact(&self, post_id: &str, emoji: &str) -> Result<(), CairnError> {
        let me = my_member_id(&self.cairn, &self.group).await?;
        let (id, emoji) = (PostId::from(post_id), emoji.to_owned());
        self.cairn
            .change_doc(self.doc, move |tx| {
                Ok(model::unreact(tx, &id, &me, &emoji)?)
            })
            .await
    }

    /// Retitles the thread, and its entry in the group's index when it is listed there.
    pub async fn set_title(&self, title: &str) -> Result<(), CairnError> {
        let t = title.to_owned();
        self.cairn
            .change_doc(self.doc, move |tx| Ok(model::set_title(tx, &t)?))
            .await?;
        // The index entry follows when the group's index is known; a group the relay has
        // not described yet (offline since start-up) keeps the old title in its list.
        let group = Group::new(self.cairn.clone(), self.group.clone());
        if let Some(index_doc) = group.context().await.ok().and_then(|c| c.index) {
            let (url, t) = (self.doc.url(), title.to_owned());
            self.cairn
                .change_doc(index_doc, move |tx| {
                    match index::set_document_title(tx, &url, &t) {
                        Ok(()) | Err(IndexError::NotIndexed) => Ok(()),
                        Err(e) => Err(e.into()),
                    }
                })
                .await?;
        }
        Ok(())
    }

    /// Proposes an agenda item from a post (for a meeting's agenda). A deleted post is
    /// Invalid.
    pub async fn agenda_draft(&self, post_id: &str) -> Result<AgendaDraft, CairnError> {
        let (url, id) = (self.doc.url(), PostId::from(post_id));
        self.cairn
            .read_doc(self.doc, move |doc| {
                let d = model::turn_into_agenda_item(doc, &url, &id)?;
                Ok(AgendaDraft {
                    title: d.title,
                    raised_by: d.raised_by.to_string(),
                    thread_id: id_of_url(&d.source_thread_url),
                    post_id: d.source_post.to_string(),
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::group::fixture::{self, Collect};
    use crate::model::group::Role;

    fn setup(name: &str) -> (tempfile::TempDir, tokio::runtime::Runtime, Thread) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cairn = fixture::cairn(&dir);
        let group = fixture::group(&rt, &cairn, name, "ana", Role::Member);
        let thread = rt
            .block_on(group.create_thread("Supervision", "Opening words"))
            .unwrap();
        (dir, rt, thread)
    }

    #[test]
    fn posts_and_replies_come_back_with_their_ids() {
        let (_dir, rt, thread) = setup("g-posts");
        rt.block_on(async {
            let body = "  Line one 🌱\n\nline two  ";
            let first = thread.post(body).await.unwrap();
            let reply = thread.reply(&first, "Thanks").await.unwrap();
            let mention = thread
                .post_with_mentions(
                    "Can the facilitators look?",
                    vec![
                        Mention::Facilitators,
                        Mention::Member {
                            member_id: "ben".into(),
                        },
                    ],
                )
                .await
                .unwrap();
            let record = thread.read().await.unwrap();
            assert_eq!(record.title, "Supervision");
            assert_eq!(record.started_by.as_deref(), Some("ana"));
            let ids: Vec<_> = record.posts.iter().map(|p| p.id.as_str()).collect();
            assert_eq!(&ids[1..], [&first, &reply, &mention]);
            assert_eq!(record.posts[1].text, body, "kept exactly");
            assert_eq!(record.posts[2].reply_to.as_deref(), Some(first.as_str()));
            assert_eq!(record.posts[3].mentions.len(), 2);

            thread.react(&first, "💚").await.unwrap();
            thread
                .edit_post(&mention, "Facilitators, please look")
                .await
                .unwrap();
            let record = thread.read().await.unwrap();
            assert_eq!(record.posts[1].reactions[0].members, ["ana"]);
            let edited = &record.posts[3];
            assert_eq!(edited.text, "Facilitators, please look");
            assert!(edited.edited_ms.is_some());
            assert_eq!(edited.mentions.len(), 2, "an edit keeps the mentions");
            thread.unreact(&first, "💚").await.unwrap();

            thread.delete_post(&first).await.unwrap();
            let record = thread.read().await.unwrap();
            assert!(matches!(
                record.posts[1].state,
                PostState::DeletedByAuthor { .. }
            ));
            assert_eq!(record.posts[1].text, "");
            assert!(record.posts[1].reactions.is_empty());
            assert_eq!(record.posts.len(), 4, "the marker and the reply stay");
        });
    }

    #[test]
    fn unknown_posts_are_not_found_and_bad_input_is_invalid() {
        let (_dir, rt, thread) = setup("g-unknown");
        rt.block_on(async {
            assert!(matches!(
                thread.reply("nope", "x").await,
                Err(CairnError::NotFound { .. })
            ));
            assert!(matches!(
                thread.edit_post("nope", "x").await,
                Err(CairnError::NotFound { .. })
            ));
            assert!(matches!(
                thread.react("nope", "👍").await,
                Err(CairnError::NotFound { .. })
            ));
            assert!(matches!(
                thread.post("").await,
                Err(CairnError::Invalid { .. })
            ));
            let id = thread.post("mine").await.unwrap();
            assert!(matches!(
                thread.react(&id, " ").await,
                Err(CairnError::Invalid { .. })
            ));
            thread.delete_post(&id).await.unwrap();
            assert!(matches!(
                thread.edit_post(&id, "again").await,
                Err(CairnError::Invalid { .. })
            ));
        });
    }

    #[test]
    fn another_members_post_cannot_be_edited() {
        let (_dir, rt, thread) = setup("g-author");
        let ctx = {
            let mut ctx = fixture::context(&thread.cairn, &thread.group).unwrap();
            ctx.member = "ben".into();
            ctx
        };
        rt.block_on(async {
            let anas = thread.post("Ana's words").await.unwrap();
            fixture::set_context(&thread.cairn, &thread.group, ctx);
            assert!(matches!(
                thread.edit_post(&anas, "Ben's words").await,
                Err(CairnError::Forbidden { .. })
            ));
            assert!(matches!(
                thread.delete_post(&anas).await,
                Err(CairnError::Forbidden { .. })
            ));
            thread.react(&anas, "🙏").await.unwrap();
            let post = &thread.read().await.unwrap().posts[1];
            assert_eq!(post.text, "Ana's words");
            assert_eq!(post.reactions[0].members, ["ben"]);
        });
    }

    #[test]
    fn a_subscription_gets_the_thread_then_each_change_and_nothing_after_cancel() {
        let (_dir, rt, thread) = setup("g-sub");
        let seen = Collect::<ThreadRecord>::new();
        let sub = thread.subscribe(seen.clone());
        let first = seen.wait_until("the current thread", |v| !v.is_empty());
        assert_eq!(first[0].posts.len(), 1);
        let id = rt.block_on(thread.post("Second")).unwrap();
        let values = seen.wait_until("the new post", |v| {
            v.last().is_some_and(|r| r.posts.len() == 2)
        });
        assert_eq!(values.last().unwrap().posts[1].id, id);

        sub.cancel();
        let delivered = seen.count();
        rt.block_on(thread.post("Third")).unwrap();
        let later = Collect::<ThreadRecord>::new();
        let _live = thread.subscribe(later.clone());
        later.wait_until("the post after cancel", |v| {
            v.last().is_some_and(|r| r.posts.len() == 3)
        });
        assert_eq!(seen.count(), delivered, "nothing after cancel");
    }

    #[test]
    fn retitling_updates_the_index_and_a_post_becomes_an_agenda_draft() {
        let (_dir, rt, thread) = setup("g-title");
        let group = Group::new(thread.cairn.clone(), thread.group.clone());
        rt.block_on(async {
            thread.set_title("Supervision, March").await.unwrap();
            assert_eq!(thread.read().await.unwrap().title, "Supervision, March");
            assert_eq!(group.index().await.unwrap()[0].title, "Supervision, March");
            let id = thread.post("Can we talk about drift?").await.unwrap();
            let draft = thread.agenda_draft(&id).await.unwrap();
            assert_eq!(draft.title, "Supervision, March");
            assert_eq!(draft.raised_by, "ana");
            assert_eq!(draft.thread_id, thread.id());
            assert_eq!(draft.post_id, id);
        });
    }
}
