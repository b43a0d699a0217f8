//! `Series`: A recurring meeting: its rule and its occurrences.

use std::sync::Arc;

use super::*;

#[uniffi::export]
impl Series {
    /// The series as it is on this device now.
    pub async fn read(&self) -> Result<SeriesRecord, CairnError> {
        self.0.read().await
    }

    /// The series now, then after every change to it, until cancelled or dropped.
    pub fn subscribe(&self, listener: Arc<dyn SeriesListener>) -> Arc<Subscription> {
        Subscription::wrap(self.0.subscribe(listen(listener)))
    }

    /// The next `count` occurrences that have not ended yet (one in progress counts), in
    /// order of start, times also shown in the device's zone. With `include_cancelled`,
    /// cancelled ones are listed (and counted) too, flagged `cancelled`.
    pub async fn next_occurrences(
        &self,
        count: u32,
        include_cancelled: bool,
    ) -> Result<Vec<OccurrenceRecord>, CairnError> {
        self.0.next_occurrences(count, include_cancelled).await
    }

    /// The occurrences overlapping `from_ms..to_ms` (a calendar's month), in order of start.
    pub async fn occurrences_between(
        &self,
        from_ms: i64,
        to_ms: i64,
        include_cancelled: bool,
    ) -> Result<Vec<OccurrenceRecord>, CairnError> {
        self.0
            .occurrences_between(from_ms, to_ms, include_cancelled)
            .await
    }

    /// The occurrence whose original date is `date` (`YYYY-MM-DD`), cancelled or not;
    /// [`CairnError::NotFound`] if the rule has no occurrence that day.
    pub async fn occurrence(&self, date: String) -> Result<OccurrenceRecord, CairnError> {
        self.0.occurrence(date).await
    }

    /// Renames the series (and its entry in the group's index, when known).
    pub async fn set_title(&self, title: String) -> Result<(), CairnError> {
        self.0.set_title(title).await
    }

    /// Replaces the rule (the first meeting must be an occurrence of the new one).
    /// Moves and cancellations of dates the new rule no longer produces stop applying.
    pub async fn set_rule(&self, rule: RecurrenceRule) -> Result<(), CairnError> {
        self.0.set_rule(rule).await
    }

    /// Changes how long every meeting lasts.
    pub async fn set_duration(&self, minutes: u32) -> Result<(), CairnError> {
        self.0.set_duration(minutes).await
    }

    /// Moves the occurrence originally on `original_date` to start at `new_start_ms`
    /// (kept as the wall-clock time in the series' zone). Moving it back to the rule's
    /// time clears the move; moving a cancelled one restores it. Its meeting, if opened,
    /// is rescheduled too.
    pub async fn move_occurrence(
        &self,
        original_date: String,
        new_start_ms: i64,
    ) -> Result<(), CairnError> {
        self.0.move_occurrence(original_date, new_start_ms).await
    }

    /// Cancels the occurrence originally on `original_date` (idempotent).
    pub async fn cancel_occurrence(&self, original_date: String) -> Result<(), CairnError> {
        self.0.cancel_occurrence(original_date).await
    }

    /// Undoes any move or cancellation of the occurrence originally on `original_date`.
    pub async fn restore_occurrence(&self, original_date: String) -> Result<(), CairnError> {
        self.0.restore_occurrence(original_date).await
    }

    /// The meeting of the occurrence originally on `original_date` (`YYYY-MM-DD`): the
    /// same document on every device, created here if nobody has opened it yet (also
    /// offline: two organisers opening it apart end with one meeting), scheduled at the
    /// occurrence's time, and recorded in the series.
    pub async fn occurrence_meeting(
        &self,
        original_date: String,
    ) -> Result<Arc<Meeting>, CairnError> {
        self.0
            .occurrence_meeting(original_date)
            .await
            .map(Meeting::wrap)
    }
}
