//! `Thread`: A discussion thread between meetings.

use std::sync::Arc;

use super::*;

#[uniffi::export]
impl Thread {
    /// The thread now.
    pub async fn read(&self) -> Result<ThreadRecord, CairnError> {
        self.0.read().await
    }

    /// The thread, live: the current record first, then one per change, until the
    /// [`Subscription`] ends.
    pub fn subscribe(&self, listener: Arc<dyn ThreadListener>) -> Arc<Subscription> {
        Subscription::wrap(self.0.subscribe(listen(listener)))
    }

    /// Posts `text` (kept exactly, not trimmed; not empty); returns the post's id.
    pub async fn post(&self, text: String) -> Result<String, CairnError> {
        self.0.post(&text).await
    }

    /// Posts `text` calling on `mentions`; returns the post's id.
    pub async fn post_with_mentions(
        &self,
        text: String,
        mentions: Vec<Mention>,
    ) -> Result<String, CairnError> {
        self.0.post_with_mentions(&text, mentions).await
    }

    /// Answers post `to` (NotFound if the thread has no such post); returns the new post's id.
    pub async fn reply(&self, to: String, text: String) -> Result<String, CairnError> {
        self.0.reply(&to, &text).await
    }

    /// Answers post `to`, calling on `mentions`; returns the new post's id.
    pub async fn reply_with_mentions(
        &self,
        to: String,
        text: String,
        mentions: Vec<Mention>,
    ) -> Result<String, CairnError> {
        self.0.reply_with_mentions(&to, &text, mentions).await
    }

    /// Rewrites one's own post, keeping its mentions. Someone else's post is Forbidden; a
    /// deleted one Invalid.
    pub async fn edit_post(&self, post_id: String, text: String) -> Result<(), CairnError> {
        self.0.edit_post(&post_id, &text).await
    }

    /// Rewrites one's own post and who it calls on.
    pub async fn edit_post_with_mentions(
        &self,
        post_id: String,
        text: String,
        mentions: Vec<Mention>,
    ) -> Result<(), CairnError> {
        self.0
            .edit_post_with_mentions(&post_id, &text, mentions)
            .await
    }

    /// Deletes one's own post: a "deleted by author" marker stays so replies keep their
    /// place. Copies already on other members' phones cannot be recalled.
    pub async fn delete_post(&self, post_id: String) -> Result<(), CairnError> {
        self.0.delete_post(&post_id).await
    }

    /// Adds this member's reaction (idempotent).
    pub async fn react(&self, post_id: String, emoji: String) -> Result<(), CairnError> {
        self.0.react(&post_id, &emoji).await
    }

    /// Takes this member's reaction back (nothing happens if there was none).
    pub async fn unreact(&self, post_id: String, emoji: String) -> Result<(), CairnError> {
        self.0.unreact(&post_id, &emoji).await
    }

    /// Retitles the thread, and its entry in the group's index when it is listed there.
    pub async fn set_title(&self, title: String) -> Result<(), CairnError> {
        self.0.set_title(&title).await
    }

    /// Proposes an agenda item from a post (for a meeting's agenda). A deleted post is
    /// Invalid.
    pub async fn agenda_draft(&self, post_id: String) -> Result<AgendaDraft, CairnError> {
        self.0.agenda_draft(&post_id).await
    }
}
