//! `Group`: One group: profile, roster, index, membership, and the way to its documents.

use std::sync::Arc;

use super::*;

#[uniffi::export]
impl Group {
    /// The group's id.
    pub fn id(&self) -> String {
        self.0.id()
    }

    /// The members as the relay holds them (who may see whom is the relay's rule).
    pub async fn memberships(&self) -> Result<Vec<MembershipRecord>, CairnError> {
        self.0.memberships().await
    }

    /// Creates an invite (organisers; facilitators for guests, as the relay allows).
    pub async fn create_invite(&self, request: InviteRequest) -> Result<InviteCode, CairnError> {
        self.0.create_invite(request).await
    }

    /// Gives a member another role (organisers).
    pub async fn set_member_role(&self, member_id: String, role: Role) -> Result<(), CairnError> {
        self.0.set_member_role(&member_id, role).await
    }

    /// Suspends a member: their devices are disconnected and read nothing until
    /// reinstated (organisers, facilitators).
    pub async fn suspend_member(&self, member_id: String) -> Result<(), CairnError> {
        self.0.suspend_member(&member_id).await
    }

    /// Reinstates a suspended member.
    pub async fn reinstate_member(&self, member_id: String) -> Result<(), CairnError> {
        self.0.reinstate_member(&member_id).await
    }

    /// Removes a member from the group (organisers).
    pub async fn remove_member(&self, member_id: String) -> Result<(), CairnError> {
        self.0.remove_member(&member_id).await
    }

    /// Sets this member's pseudonym in the group (the roster shows it).
    pub async fn set_my_pseudonym(&self, pseudonym: String) -> Result<(), CairnError> {
        self.0.set_my_pseudonym(&pseudonym).await
    }

    /// Publishes a new code of conduct (organisers); every member accepts it again before
    /// reading on.
    pub async fn set_code_of_conduct(&self, text: String) -> Result<u64, CairnError> {
        self.0.set_code_of_conduct(&text).await
    }

    /// Creates a one-off meeting (a Peer Assist, a training session…) with the standard
    /// minutes template, and lists it in the group's index. `kind` cannot be
    /// [`MeetingKind::Occurrence`]: occurrences are opened from their series
    /// ([`Series::occurrence_meeting`]). Fails with [`CairnError::NotFound`] before
    /// creating anything if the group's index is not known yet (the relay has not been
    /// reached since joining).
    pub async fn create_meeting(
        &self,
        title: String,
        kind: MeetingKind,
    ) -> Result<Arc<Meeting>, CairnError> {
        self.0.create_meeting(title, kind).await.map(Meeting::wrap)
    }

    /// The meeting with this document id (not loaded until used).
    pub fn meeting(&self, meeting_id: String) -> Result<Arc<Meeting>, CairnError> {
        self.0.meeting(&meeting_id).map(Meeting::wrap)
    }

    /// The minutes of the meeting with this document id.
    pub fn minutes(&self, meeting_id: String) -> Result<Arc<Minutes>, CairnError> {
        self.0.minutes(&meeting_id).map(Minutes::wrap)
    }

    /// Creates a recurring series and lists it in the group's index. Fails with
    /// [`CairnError::NotFound`] before creating anything if the group's index is not known
    /// yet, and with [`CairnError::Invalid`] if the zone is unknown, the start is not an
    /// occurrence of the rule or the duration is 0 or over a week.
    pub async fn create_series(&self, series: NewSeries) -> Result<Arc<Series>, CairnError> {
        self.0.create_series(series).await.map(Series::wrap)
    }

    /// The series with this document id (not loaded until used).
    pub fn series(&self, series_id: String) -> Result<Arc<Series>, CairnError> {
        self.0.series(&series_id).map(Series::wrap)
    }

    /// The group screen's whole value, read once.
    pub async fn read(&self) -> Result<GroupRecord, CairnError> {
        self.0.read().await
    }

    /// The group screen, live: the current [`GroupRecord`] first, then a new one whenever
    /// the settings, roster or index change, until the [`Subscription`] ends. Errors (the
    /// relay unreachable before the group was ever seen, a document that cannot be read)
    /// go to [`GroupListener::on_error`]. Which documents the group has is read when the
    /// subscription starts: after [`Group::set_up`], subscribe again.
    pub fn subscribe(&self, listener: Arc<dyn GroupListener>) -> Arc<Subscription> {
        Subscription::wrap(self.0.subscribe(listen(listener)))
    }

    /// The group's profile (NotFound while it has no settings document).
    pub async fn profile(&self) -> Result<GroupProfile, CairnError> {
        self.0.profile().await
    }

    /// Replaces the profile (organisers only); only the fields that differ are written, so
    /// another organiser's concurrent edit of another field stays. A bad date, an end
    /// before the start, an empty name or clearing the meeting place is Invalid and
    /// changes nothing.
    pub async fn update_profile(&self, profile: GroupProfile) -> Result<(), CairnError> {
        self.0.update_profile(profile).await
    }

    /// Renames the group (organisers only).
    pub async fn set_name(&self, name: String) -> Result<(), CairnError> {
        self.0.set_name(&name).await
    }

    /// Rewrites the group's purpose (organisers only).
    pub async fn set_purpose(&self, purpose: String) -> Result<(), CairnError> {
        self.0.set_purpose(&purpose).await
    }

    /// Sets how and where the group meets (organisers only).
    pub async fn set_meeting_place(&self, place: MeetingPlace) -> Result<(), CairnError> {
        self.0.set_meeting_place(place).await
    }

    /// Sets or clears the intended size (organisers only).
    pub async fn set_intended_size(&self, size: Option<u32>) -> Result<(), CairnError> {
        self.0.set_intended_size(size).await
    }

    /// Sets the first and last day, `YYYY-MM-DD`, either open (organisers only).
    pub async fn set_dates(
        &self,
        start_date: Option<String>,
        end_date: Option<String>,
    ) -> Result<(), CairnError> {
        self.0.set_dates(start_date, end_date).await
    }

    /// Moves the group to another state (organisers only).
    pub async fn set_state(&self, state: GroupState) -> Result<(), CairnError> {
        self.0.set_state(state).await
    }

    /// Pins a resource (its id in [`Resources`]) as "start here", or unpins (organisers
    /// only).
    pub async fn set_start_here(&self, resource_id: Option<String>) -> Result<(), CairnError> {
        self.0.set_start_here(resource_id).await
    }

    /// Configures or clears the "need support now" link (organisers only).
    pub async fn set_crisis_support(
        &self,
        support: Option<CrisisSupport>,
    ) -> Result<(), CairnError> {
        self.0.set_crisis_support(support).await
    }

    /// The roster (NotFound until the relay has written it).
    pub async fn members(&self) -> Result<RosterRecord, CairnError> {
        self.0.members().await
    }

    /// Deletes the group (organisers): from now on nobody reads or writes it. An
    /// organiser can restore it until the relay's grace period ends (14 days unless the
    /// operator set another); then the relay destroys it.
    pub async fn delete(&self) -> Result<(), CairnError> {
        self.0.delete().await
    }

    /// Restores the group after `delete`, within the grace period (organisers).
    pub async fn restore(&self) -> Result<(), CairnError> {
        self.0.restore().await
    }

    /// The group's documents, oldest first (empty while it has no index).
    pub async fn index(&self) -> Result<Vec<IndexEntry>, CairnError> {
        self.0.index().await
    }

    /// Creates the group's settings and index documents if it has none (organisers only;
    /// the relay binds one of each per group). Idempotent: what exists is kept as it is.
    pub async fn set_up(&self, profile: GroupProfile) -> Result<(), CairnError> {
        self.0.set_up(profile).await
    }

    /// Starts a thread with its first post; it is listed in the group's index. A group
    /// without an index is NotFound (set it up first) rather than given an unlisted thread.
    pub async fn create_thread(
        &self,
        title: String,
        first_post: String,
    ) -> Result<Arc<Thread>, CairnError> {
        self.0
            .create_thread(&title, &first_post)
            .await
            .map(Thread::wrap)
    }

    /// The thread with this id (as [`IndexEntry::id`] gives it). Invalid if it is not a
    /// document id; reading a thread that is not on the device or the relay is NotFound.
    pub fn thread(&self, thread_id: String) -> Result<Arc<Thread>, CairnError> {
        self.0.thread(&thread_id).map(Thread::wrap)
    }

    /// The group's resources document: the one listed in the index (the oldest, should two
    /// members have created one at once offline), created and listed on first use.
    pub async fn resources(&self) -> Result<Arc<Resources>, CairnError> {
        self.0.resources().await.map(Resources::wrap)
    }
}
