//! `Meeting`: A meeting: agenda, attendance, RSVPs, roles, actions.

use std::sync::Arc;

use super::*;

#[uniffi::export]
impl Meeting {
    /// The meeting as it is on this device now.
    pub async fn read(&self) -> Result<MeetingRecord, CairnError> {
        self.0.read().await
    }

    /// The meeting now, then after every change to it (from this device or synced), until
    /// the subscription is cancelled or dropped. Times are shown in the device's zone at
    /// the time of each delivery.
    pub fn subscribe(&self, listener: Arc<dyn MeetingListener>) -> Arc<Subscription> {
        Subscription::wrap(self.0.subscribe(listen(listener)))
    }

    /// The minutes of this meeting.
    pub fn minutes(&self) -> Arc<Minutes> {
        Minutes::wrap(self.0.minutes())
    }

    /// The series this meeting is an occurrence of (`None` for a one-off).
    pub async fn series(&self) -> Result<Option<Arc<Series>>, CairnError> {
        self.0.series().await.map(|o| o.map(Series::wrap))
    }

    /// Renames the meeting (and its entry in the group's index, when known).
    pub async fn set_title(&self, title: String) -> Result<(), CairnError> {
        self.0.set_title(title).await
    }

    /// Replaces a text field's whole value, writing only the difference (for forms).
    pub async fn set_text(&self, field: MeetingTextField, text: String) -> Result<(), CairnError> {
        self.0.set_text(field, text).await
    }

    /// Edits a text field as the user typed: at `index` (UTF-16 units) deletes `delete`
    /// units and inserts `insert`. This merges best with concurrent edits.
    pub async fn splice_text(
        &self,
        field: MeetingTextField,
        index: u32,
        delete: u32,
        insert: String,
    ) -> Result<(), CairnError> {
        self.0.splice_text(field, index, delete, insert).await
    }

    /// Sets when the meeting takes place (`zone`: the IANA zone it is planned in).
    pub async fn set_schedule(
        &self,
        start_ms: i64,
        end_ms: i64,
        zone: String,
    ) -> Result<(), CairnError> {
        self.0.set_schedule(start_ms, end_ms, zone).await
    }

    /// Adds an item at the end of the agenda; returns its id.
    pub async fn add_agenda_item(&self, item: NewAgendaItem) -> Result<String, CairnError> {
        self.0.add_agenda_item(item).await
    }

    /// Changes an agenda item's title.
    pub async fn set_agenda_title(&self, item_id: String, title: String) -> Result<(), CairnError> {
        self.0.set_agenda_title(item_id, title).await
    }

    /// Changes an agenda item's notes.
    pub async fn set_agenda_notes(&self, item_id: String, notes: String) -> Result<(), CairnError> {
        self.0.set_agenda_notes(item_id, notes).await
    }

    /// Changes an agenda item's time box (`None`: none).
    pub async fn set_time_box(
        &self,
        item_id: String,
        minutes: Option<u32>,
    ) -> Result<(), CairnError> {
        self.0.set_time_box(item_id, minutes).await
    }

    /// Changes what an agenda item is about.
    pub async fn set_agenda_kind(
        &self,
        item_id: String,
        kind: AgendaKind,
    ) -> Result<(), CairnError> {
        self.0.set_agenda_kind(item_id, kind).await
    }

    /// Moves an agenda item before `before_id`, or to the end with `None`.
    pub async fn move_agenda_item(
        &self,
        item_id: String,
        before_id: Option<String>,
    ) -> Result<(), CairnError> {
        self.0.move_agenda_item(item_id, before_id).await
    }

    /// Removes an agenda item.
    pub async fn remove_agenda_item(&self, item_id: String) -> Result<(), CairnError> {
        self.0.remove_agenda_item(item_id).await
    }

    /// Records a member's attendance (`None` clears it).
    pub async fn set_attendance(
        &self,
        member: String,
        attendance: Option<Attendance>,
    ) -> Result<(), CairnError> {
        self.0.set_attendance(member, attendance).await
    }

    /// Records this device's member's answer to the invitation (`None` clears it).
    pub async fn set_rsvp(&self, rsvp: Option<Rsvp>) -> Result<(), CairnError> {
        self.0.set_rsvp(rsvp).await
    }

    /// Chooses this meeting's facilitator (`None` clears).
    pub async fn set_facilitator(&self, member: Option<String>) -> Result<(), CairnError> {
        self.0.set_facilitator(member).await
    }

    /// Chooses this meeting's recorder, who takes the minutes (`None` clears).
    pub async fn set_recorder(&self, member: Option<String>) -> Result<(), CairnError> {
        self.0.set_recorder(member).await
    }

    /// Adds an open action item for `owner`, due by `due` (`YYYY-MM-DD`); returns its id.
    pub async fn add_action(
        &self,
        text: String,
        owner: String,
        due: Option<String>,
    ) -> Result<String, CairnError> {
        self.0.add_action(text, owner, due).await
    }

    /// Changes what an action says.
    pub async fn set_action_text(&self, action_id: String, text: String) -> Result<(), CairnError> {
        self.0.set_action_text(action_id, text).await
    }

    /// Sets an action's status.
    pub async fn set_action_status(
        &self,
        action_id: String,
        status: ActionStatus,
    ) -> Result<(), CairnError> {
        self.0.set_action_status(action_id, status).await
    }

    /// Hands an action to another member.
    pub async fn set_action_owner(
        &self,
        action_id: String,
        owner: String,
    ) -> Result<(), CairnError> {
        self.0.set_action_owner(action_id, owner).await
    }

    /// Sets (`YYYY-MM-DD`) or clears an action's due date.
    pub async fn set_action_due(
        &self,
        action_id: String,
        due: Option<String>,
    ) -> Result<(), CairnError> {
        self.0.set_action_due(action_id, due).await
    }

    /// Copies the open actions of an earlier meeting into this one for its review, each
    /// marked with where it came from. Idempotent (also across devices): an action carried
    /// before is left as it is, even if since marked done. Returns the ids of the actions
    /// carried now.
    pub async fn carry_open_actions(
        &self,
        from_meeting_id: String,
    ) -> Result<Vec<String>, CairnError> {
        self.0.carry_open_actions(from_meeting_id).await
    }
}
