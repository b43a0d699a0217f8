//! `Journal`: The device's private journal: reflections that never leave this device.

use std::sync::Arc;

use super::*;

#[uniffi::export]
impl Journal {
    /// A template's prompts, in the order the app asks them.
    pub fn prompts(&self, template: ReflectionTemplate) -> Vec<Prompt> {
        self.0.prompts(template)
    }

    /// Every entry, oldest first. A journal key other than the one the entries were
    /// written with is Invalid (nothing is shown rather than anything guessed).
    pub async fn list(&self) -> Result<Vec<ReflectionRecord>, CairnError> {
        self.0.list().await
    }

    /// One entry (NotFound if there is none with this id).
    pub async fn get(&self, reflection_id: String) -> Result<ReflectionRecord, CairnError> {
        self.0.get(&reflection_id).await
    }

    /// Writes a new entry, durably on this device only; returns its id.
    pub async fn write(
        &self,
        title: String,
        template: Option<ReflectionTemplate>,
        body: String,
        answers: Vec<Answer>,
    ) -> Result<String, CairnError> {
        self.0.write(&title, template, &body, answers).await
    }

    /// Saves new title, template, body and answers over the entry with `reflection.id`
    /// (NotFound if there is none); its creation time stays and its update time is now.
    pub async fn update(&self, reflection: ReflectionRecord) -> Result<(), CairnError> {
        self.0.update(reflection).await
    }

    /// Deletes an entry from this device, durably (NotFound if there is none).
    pub async fn delete(&self, reflection_id: String) -> Result<(), CairnError> {
        self.0.delete(&reflection_id).await
    }

    /// Exactly the text that [`Journal::share_to_thread`] would post for this selection,
    /// for the app to show before the member confirms.
    pub async fn preview_excerpt(
        &self,
        reflection_id: String,
        selection: ExcerptSelection,
    ) -> Result<String, CairnError> {
        self.0.preview_excerpt(&reflection_id, selection).await
    }

    /// Posts the selected passage, exactly as previewed and nothing else, into `thread`
    /// as this member's post; returns the post's id. The entry itself stays private.
    pub async fn share_to_thread(
        &self,
        reflection_id: String,
        selection: ExcerptSelection,
        thread: Arc<Thread>,
    ) -> Result<String, CairnError> {
        self.0
            .share_to_thread(&reflection_id, selection, &thread.0)
            .await
    }
}
