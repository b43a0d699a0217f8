//! `Resources`: The group's shared readings and files.

use std::sync::Arc;

use super::*;

#[uniffi::export]
impl Resources {
    /// Every resource, in list order.
    pub async fn list(&self) -> Result<Vec<ResourceRecord>, CairnError> {
        self.0.list().await
    }

    /// The resources, live: the current list first, then one per change.
    pub fn subscribe(&self, listener: Arc<dyn ResourcesListener>) -> Arc<Subscription> {
        Subscription::wrap(self.0.subscribe(listen(listener)))
    }

    /// One resource (NotFound if there is none with this id).
    pub async fn get(&self, resource_id: String) -> Result<ResourceRecord, CairnError> {
        self.0.get(&resource_id).await
    }

    /// Adds a resource and returns its id. An empty title, a file over
    /// [`MAX_FILE_BYTES`] or a bad meeting id is Invalid and adds nothing.
    pub async fn add(&self, resource: NewResource) -> Result<String, CairnError> {
        self.0.add(resource).await
    }

    /// Retitles a resource (not empty).
    pub async fn set_title(&self, resource_id: String, title: String) -> Result<(), CairnError> {
        self.0.set_title(&resource_id, &title).await
    }

    /// Rewrites a resource's note.
    pub async fn set_note(&self, resource_id: String, note: String) -> Result<(), CairnError> {
        self.0.set_note(&resource_id, &note).await
    }

    /// Tags a resource (tags added on two phones at once both stay).
    pub async fn add_tag(&self, resource_id: String, tag: String) -> Result<(), CairnError> {
        self.0.add_tag(&resource_id, &tag).await
    }

    /// Removes a tag.
    pub async fn remove_tag(&self, resource_id: String, tag: String) -> Result<(), CairnError> {
        self.0.remove_tag(&resource_id, &tag).await
    }

    /// Flags or unflags a resource for the next meeting's reminder.
    pub async fn set_for_next_meeting(
        &self,
        resource_id: String,
        for_next_meeting: bool,
    ) -> Result<(), CairnError> {
        self.0
            .set_for_next_meeting(&resource_id, for_next_meeting)
            .await
    }

    /// Clears every "for next meeting" flag (after the meeting); returns how many were set.
    pub async fn clear_for_next_meeting(&self) -> Result<u32, CairnError> {
        self.0.clear_for_next_meeting().await
    }

    /// Attaches a resource to a meeting (its id), or to the whole group with `None`.
    pub async fn attach_to_meeting(
        &self,
        resource_id: String,
        meeting_id: Option<String>,
    ) -> Result<(), CairnError> {
        self.0.attach_to_meeting(&resource_id, meeting_id).await
    }

    /// Removes a resource from the list. Its content stays in the document's history on
    /// every phone that synced it.
    pub async fn remove(&self, resource_id: String) -> Result<(), CairnError> {
        self.0.remove(&resource_id).await
    }

    /// A file resource's bytes (`None` for links and readings).
    pub async fn file_bytes(&self, resource_id: String) -> Result<Option<Vec<u8>>, CairnError> {
        self.0.file_bytes(&resource_id).await
    }

    /// What the reminder before the next meeting lists: every resource flagged "for next
    /// meeting", in list order.
    pub async fn readings_for_next_meeting(&self) -> Result<Vec<ResourceRecord>, CairnError> {
        self.0.readings_for_next_meeting().await
    }

    /// The resources attached to one meeting (by its id).
    pub async fn for_meeting(&self, meeting_id: String) -> Result<Vec<ResourceRecord>, CairnError> {
        self.0.for_meeting(&meeting_id).await
    }
}
