//! A group as the app shows it: its profile (the settings document), its roster (written
//! by the relay), its index (the list of its meetings, series, threads and resources), and
//! the way to its threads and resources.
//!
//! Which documents a group has comes from the relay (`GroupInfo`): the settings, roster
//! and index documents are bound to the group there, one of each. A group whose organiser
//! has not yet created its settings and index shows `needs_set_up` until
//! [`Group::set_up`] runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use automerge::transaction::Transaction;
use cairn_sync::ids::{DocumentId, MemberId};
use cairn_sync::membership::{BoundKind, GroupId, MemberStatus};
use jiff::civil::Date;

use crate::app::handles::document_id;
use crate::app::{Cairn, CairnError, Group, Listener, Resources, Subscription, Thread};
use crate::model::group::Role;
use crate::model::index::{self, IndexError, IndexKind};
use crate::model::roster::{self, RosterError};
use crate::model::settings::{self, SettingsError};
use crate::model::thread;

/// The title the group's resources document is listed under in the index.
pub const RESOURCES_TITLE: &str = "Resources";

mod records;
pub use records::*;

// ------------------------------------------------------------- conversions

impl From<settings::MeetingMode> for MeetingMode {
    fn from(m: settings::MeetingMode) -> Self {
        match m {
            settings::MeetingMode::Online => MeetingMode::Online,
            settings::MeetingMode::InPerson => MeetingMode::InPerson,
            settings::MeetingMode::Hybrid => MeetingMode::Hybrid,
        }
    }
}

impl From<MeetingMode> for settings::MeetingMode {
    fn from(m: MeetingMode) -> Self {
        match m {
            MeetingMode::Online => settings::MeetingMode::Online,
            MeetingMode::InPerson => settings::MeetingMode::InPerson,
            MeetingMode::Hybrid => settings::MeetingMode::Hybrid,
        }
    }
}

impl From<settings::GroupState> for GroupState {
    fn from(s: settings::GroupState) -> Self {
        match s {
            settings::GroupState::Active => GroupState::Active,
            settings::GroupState::Renewing => GroupState::Renewing,
            settings::GroupState::Alumni => GroupState::Alumni,
            settings::GroupState::Closed => GroupState::Closed,
        }
    }
}

impl From<GroupState> for settings::GroupState {
    fn from(s: GroupState) -> Self {
        match s {
            GroupState::Active => settings::GroupState::Active,
            GroupState::Renewing => settings::GroupState::Renewing,
            GroupState::Alumni => settings::GroupState::Alumni,
            GroupState::Closed => settings::GroupState::Closed,
        }
    }
}

impl From<settings::MeetingPlace> for MeetingPlace {
    fn from(p: settings::MeetingPlace) -> Self {
        MeetingPlace {
            mode: p.mode.into(),
            link: p.link,
            address: p.address,
        }
    }
}

impl From<&MeetingPlace> for settings::MeetingPlace {
    fn from(p: &MeetingPlace) -> Self {
        settings::MeetingPlace {
            mode: p.mode.into(),
            link: p.link.clone(),
            address: p.address.clone(),
        }
    }
}

impl From<settings::CrisisSupport> for CrisisSupport {
    fn from(c: settings::CrisisSupport) -> Self {
        CrisisSupport {
            label: c.label,
            url: c.url,
        }
    }
}

impl From<&CrisisSupport> for settings::CrisisSupport {
    fn from(c: &CrisisSupport) -> Self {
        settings::CrisisSupport {
            label: c.label.clone(),
            url: c.url.clone(),
        }
    }
}

impl From<settings::GroupProfile> for GroupProfile {
    fn from(p: settings::GroupProfile) -> Self {
        GroupProfile {
            name: p.name,
            purpose: p.purpose,
            meeting_place: p.how_we_meet.map(Into::into),
            intended_size: p.intended_size,
            start_date: p.time_frame.start.map(|d| d.to_string()),
            end_date: p.time_frame.end.map(|d| d.to_string()),
            state: p.time_frame.state.into(),
            start_here: p.start_here,
            crisis_support: p.crisis_support.map(Into::into),
        }
    }
}

/// The roster's status of a member, as the relay's membership calls name it.
fn status_of(s: roster::MemberStatus) -> MemberStatus {
    match s {
        roster::MemberStatus::Active => MemberStatus::Active,
        roster::MemberStatus::Suspended => MemberStatus::Suspended,
        roster::MemberStatus::Left => MemberStatus::Left,
        roster::MemberStatus::Removed => MemberStatus::Removed,
    }
}

impl From<roster::RosterView> for RosterRecord {
    fn from(v: roster::RosterView) -> Self {
        let code = &v.code_of_conduct;
        RosterRecord {
            members: v
                .members
                .iter()
                .map(|m| MemberRecord {
                    member_id: m.member_id.to_string(),
                    pseudonym: m.pseudonym.clone(),
                    role: m.role,
                    status: status_of(m.status),
                    accepted_version: m.accepted_version,
                    accepted_current_code: m.has_accepted(code),
                    joined_ms: m.joined_ms,
                    expires_ms: m.expires_ms,
                })
                .collect(),
            code_of_conduct: CodeOfConduct {
                version: code.version,
                text: code.text.clone(),
            },
        }
    }
}

impl From<IndexKind> for DocumentKind {
    fn from(k: IndexKind) -> Self {
        match k {
            IndexKind::Meeting => DocumentKind::Meeting,
            IndexKind::Series => DocumentKind::Series,
            IndexKind::Thread => DocumentKind::Thread,
            IndexKind::Resources => DocumentKind::Resources,
        }
    }
}

/// The app's id of a document the model refers to by `automerge:` URL.
pub(crate) fn id_of_url(url: &str) -> String {
    DocumentId::parse_url(url)
        .map(|d| d.to_string())
        .unwrap_or_else(|_| url.to_owned())
}

impl From<index::IndexEntry> for IndexEntry {
    fn from(e: index::IndexEntry) -> Self {
        IndexEntry {
            id: id_of_url(&e.url),
            kind: e.kind.into(),
            title: e.title,
            created_ms: e.created_ms,
        }
    }
}

impl From<SettingsError> for CairnError {
    fn from(e: SettingsError) -> Self {
        match e {
            SettingsError::Schema(e) => e.into(),
            SettingsError::Automerge(e) => e.into(),
            SettingsError::EndBeforeStart => CairnError::invalid(e.to_string()),
        }
    }
}

impl From<IndexError> for CairnError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Schema(e) => e.into(),
            IndexError::Automerge(e) => e.into(),
            IndexError::InvalidUrl => CairnError::invalid(e.to_string()),
            IndexError::NotIndexed => CairnError::not_found("document in the group's index"),
        }
    }
}

impl From<RosterError> for CairnError {
    fn from(e: RosterError) -> Self {
        match e {
            RosterError::Schema(e) => e.into(),
            RosterError::Automerge(e) => e.into(),
            // Only the relay's reconcile reports it; a reader never sees it.
            RosterError::DuplicateMember(_) => {
                CairnError::generic("the roster lists a member twice")
            }
        }
    }
}

// ------------------------------------------------------------------ plumbing

/// What the relay says of a group and this device's place in it.
#[derive(Clone, Debug)]
pub(crate) struct GroupContext {
    /// This device's member id in the group.
    pub(crate) member: MemberId,
    /// Its role.
    pub(crate) role: Role,
    /// Its status.
    pub(crate) status: MemberStatus,
    /// The settings document, once bound.
    pub(crate) settings: Option<DocumentId>,
    /// The roster document, once the relay wrote it.
    pub(crate) roster: Option<DocumentId>,
    /// The index document, once bound.
    pub(crate) index: Option<DocumentId>,
}

impl GroupContext {
    fn is_organiser(&self) -> bool {
        self.role == Role::Organiser && self.status == MemberStatus::Active
    }

    fn can_write(&self) -> bool {
        self.role.can_write() && self.status == MemberStatus::Active
    }

    /// The index document, or NotFound: nothing is created unlisted.
    pub(crate) fn index(&self) -> Result<DocumentId, CairnError> {
        self.index
            .ok_or_else(|| CairnError::not_found("the group's index (not set up yet)"))
    }
}

/// This device's member id in `group`: from the relay credential the group is reached by
/// (asking the relay which groups it is in if the client does not know yet).
pub(crate) async fn my_member_id(cairn: &Cairn, group: &GroupId) -> Result<MemberId, CairnError> {
    #[cfg(test)]
    if let Some(ctx) = fixture::context(cairn, group) {
        return Ok(ctx.member);
    }
    match cairn.member_id(group) {
        Ok(m) => Ok(m),
        Err(CairnError::NotFound { .. }) => {
            cairn.group_info(group).await?;
            cairn.member_id(group)
        }
        Err(e) => Err(e),
    }
}

/// Creates a document bound to `group` (see [`Cairn::create_doc`]); in unit tests of a
/// group set up by [`fixture::set_context`], a plain local document.
pub(crate) async fn create_group_doc<R: Send + 'static>(
    cairn: &Cairn,
    group: &GroupId,
    kind: BoundKind,
    init: impl FnOnce(&mut Transaction<'_>) -> Result<R, CairnError> + Send + 'static,
) -> Result<(DocumentId, R), CairnError> {
    #[cfg(test)]
    if fixture::context(cairn, group).is_some() {
        let _ = kind;
        return fixture::create_local(cairn, init).await;
    }
    cairn.create_doc(group, kind, init).await
}

fn parse_date(date: &Option<String>) -> Result<Option<Date>, CairnError> {
    date.as_deref()
        .map(|d| {
            d.parse::<Date>()
                .map_err(|_| CairnError::invalid("dates are YYYY-MM-DD"))
        })
        .transpose()
}

fn check_name(name: &str) -> Result<(), CairnError> {
    if name.trim().is_empty() {
        return Err(CairnError::invalid("the group needs a name"));
    }
    Ok(())
}

/// Writes `wanted` into a settings document, touching only what differs from `current`
/// (so an unchanged field never overwrites another organiser's concurrent edit).
fn apply_profile(
    tx: &mut Transaction<'_>,
    current: &GroupProfile,
    wanted: &GroupProfile,
) -> Result<(), CairnError> {
    check_name(&wanted.name)?;
    let start = parse_date(&wanted.start_date)?;
    let end = parse_date(&wanted.end_date)?;
    if wanted.name != current.name {
        settings::set_name(tx, &wanted.name)?;
    }
    if wanted.purpose != current.purpose {
        settings::set_purpose(tx, &wanted.purpose)?;
    }
    match (&wanted.meeting_place, &current.meeting_place) {
        (Some(w), c) if Some(w) != c.as_ref() => settings::set_meeting_place(tx, &w.into())?,
        (None, Some(_)) => {
            return Err(CairnError::invalid(
                "a meeting place can be changed but not cleared",
            ))
        }
        _ => {}
    }
    if wanted.intended_size != current.intended_size {
        settings::set_intended_size(tx, wanted.intended_size)?;
    }
    if (&wanted.start_date, &wanted.end_date) != (&current.start_date, &current.end_date) {
        settings::set_dates(tx, start, end)?;
    }
    if wanted.state != current.state {
        settings::set_state(tx, wanted.state.into())?;
    }
    if wanted.start_here != current.start_here {
        settings::set_start_here(tx, wanted.start_here.as_deref())?;
    }
    if wanted.crisis_support != current.crisis_support {
        let support: Option<settings::CrisisSupport> =
            wanted.crisis_support.as_ref().map(Into::into);
        settings::set_crisis_support(tx, support.as_ref())?;
    }
    Ok(())
}

fn read_profile(doc: &automerge::Automerge) -> Result<GroupProfile, CairnError> {
    Ok(settings::profile(doc)?.into())
}

fn read_roster(doc: &automerge::Automerge) -> Result<RosterRecord, CairnError> {
    Ok(roster::view(doc)?.into())
}

fn read_index(doc: &automerge::Automerge) -> Result<Vec<IndexEntry>, CairnError> {
    Ok(index::documents(doc)?.into_iter().map(Into::into).collect())
}

// ------------------------------------------------------------------ Group

impl Group {
    /// What the relay says of this group and this device's place in it.
    pub(crate) async fn context(&self) -> Result<GroupContext, CairnError> {
        #[cfg(test)]
        if let Some(ctx) = fixture::context(&self.cairn, &self.group) {
            return Ok(ctx);
        }
        let info = self.cairn.group_info(&self.group).await?;
        Ok(GroupContext {
            member: self.cairn.member_id(&self.group)?,
            role: info.role,
            status: info.status,
            settings: info.documents.settings,
            roster: info.documents.roster,
            index: info.documents.index,
        })
    }

    /// Lists `doc` in the group's index (for handles that create documents: threads,
    /// resources, meetings, series).
    pub(crate) async fn list_in_index(
        &self,
        index_doc: DocumentId,
        doc: DocumentId,
        kind: IndexKind,
        title: &str,
    ) -> Result<(), CairnError> {
        let title = title.to_owned();
        let now = self.cairn.now_ms();
        self.cairn
            .change_doc(index_doc, move |tx| {
                index::index_document(tx, &doc.url(), kind, &title, now)?;
                Ok(())
            })
            .await
    }

    async fn settings_for_organiser(&self) -> Result<DocumentId, CairnError> {
        let ctx = self.context().await?;
        if !ctx.is_organiser() {
            return Err(CairnError::Forbidden {
                reason: "only organisers change the group's profile".into(),
            });
        }
        ctx.settings
            .ok_or_else(|| CairnError::not_found("the group's settings (not set up yet)"))
    }

    async fn change_settings(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<(), CairnError> + Send + 'static,
    ) -> Result<(), CairnError> {
        let doc = self.settings_for_organiser().await?;
        self.cairn.change_doc(doc, f).await
    }

    /// The group screen's whole value, read once.
    pub async fn read(&self) -> Result<GroupRecord, CairnError> {
        let ctx = self.context().await?;
        let profile = match ctx.settings {
            Some(doc) => Some(self.cairn.read_doc(doc, read_profile).await?),
            None => None,
        };
        let roster = match ctx.roster {
            Some(doc) => Some(self.cairn.read_doc(doc, read_roster).await?),
            None => None,
        };
        let index = match ctx.index {
            Some(doc) => self.cairn.read_doc(doc, read_index).await?,
            None => Vec::new(),
        };
        Ok(Parts::record(&self.group, &ctx, profile, roster, index))
    }

    /// The group screen, live: the current [`GroupRecord`] first, then a new one whenever
    /// the settings, roster or index change, until the [`Subscription`] ends. Errors (the
    /// relay unreachable before the group was ever seen, a document that cannot be read)
    /// go to [`Listener::on_error`]. Which documents the group has is read when the
    /// subscription starts: after [`Group::set_up`], subscribe again.
    pub fn subscribe(&self, listener: Arc<dyn Listener<GroupRecord>>) -> Subscription {
        let cancelled = Arc::new(AtomicBool::new(false));
        let inner: Arc<Mutex<Vec<Subscription>>> = Arc::new(Mutex::new(Vec::new()));
        let this = self.clone();
        let (flag, subs) = (cancelled.clone(), inner.clone());
        self.cairn.spawn(async move {
            let ctx = match this.context().await {
                Ok(ctx) => ctx,
                Err(e) => {
                    if !flag.load(Ordering::SeqCst) {
                        listener.on_error(e);
                    }
                    return;
                }
            };
            let combiner = Arc::new(Combiner {
                group: this.group.clone(),
                parts: Mutex::new(Parts {
                    profile: ctx.settings.is_none().then_some(None),
                    roster: ctx.roster.is_none().then_some(None),
                    index: ctx.index.is_none().then(Vec::new),
                }),
                ctx: ctx.clone(),
                listener,
                cancelled: flag.clone(),
            });
            let mut made = Vec::new();
            if let Some(doc) = ctx.settings {
                made.push(this.cairn.subscribe_doc(
                    doc,
                    read_profile,
                    Arc::new(PartListener {
                        combiner: combiner.clone(),
                        set: |p: &mut Parts, v: GroupProfile| p.profile = Some(Some(v)),
                    }),
                ));
            }
            if let Some(doc) = ctx.roster {
                made.push(this.cairn.subscribe_doc(
                    doc,
                    read_roster,
                    Arc::new(PartListener {
                        combiner: combiner.clone(),
                        set: |p: &mut Parts, v: RosterRecord| p.roster = Some(Some(v)),
                    }),
                ));
            }
            if let Some(doc) = ctx.index {
                made.push(this.cairn.subscribe_doc(
                    doc,
                    read_index,
                    Arc::new(PartListener {
                        combiner: combiner.clone(),
                        set: |p: &mut Parts, v: Vec<IndexEntry>| p.index = Some(v),
                    }),
                ));
            }
            // With none of the three documents there is nothing to wait for.
            combiner.deliver_if_complete();
            let mut held = subs.lock().unwrap_or_else(|e| e.into_inner());
            if flag.load(Ordering::SeqCst) {
                drop(held);
                drop(made); // cancelled meanwhile: end them at once
            } else {
                held.extend(made);
            }
        });
        Subscription::new(cancelled, move || {
            let ended: Vec<Subscription> =
                std::mem::take(&mut *inner.lock().unwrap_or_else(|e| e.into_inner()));
            drop(ended);
        })
    }

    /// The group's profile (NotFound while it has no settings document).
    pub async fn profile(&self) -> Result<GroupProfile, CairnError> {
        let doc = self
            .context()
            .await?
            .settings
            .ok_or_else(|| CairnError::not_found("the group's settings (not set up yet)"))?;
        self.cairn.read_doc(doc, read_profile).await
    }

    /// Replaces the profile (organisers only); only the fields that differ are written, so
    /// another organiser's concurrent edit of another field stays. A bad date, an end
    /// before the start, an empty name or clearing the meeting place is Invalid and
    /// changes nothing.
    pub async fn update_profile(&self, profile: GroupProfile) -> Result<(), CairnError> {
        self.change_settings(move |tx| {
            let current: GroupProfile = settings::profile(tx)?.into();
            apply_profile(tx, &current, &profile)
        })
        .await
    }

    /// Renames the group (organisers only).
    pub async fn set_name(&self, name: &str) -> Result<(), CairnError> {
        check_name(name)?;
        let name = name.to_owned();
        self.change_settings(move |tx| Ok(settings::set_name(tx, &name)?))
            .await
    }

    /// Rewrites the group's purpose (organisers only).
    pub async fn set_purpose(&self, purpose: &str) -> Result<(), CairnError> {
        let purpose = purpose.to_owned();
        self.change_settings(move |tx| Ok(settings::set_purpose(tx, &purpose)?))
            .await
    }

    /// Sets how and where the group meets (organisers only).
    pub async fn set_meeting_place(&self, place: MeetingPlace) -> Result<(), CairnError> {
        self.change_settings(move |tx| Ok(settings::set_meeting_place(tx, &(&place).into())?))
            .await
    }

    /// Sets or clears the intended size (organisers only).
    pub async fn set_intended_size(&self, size: Option<u32>) -> Result<(), CairnError> {
        self.change_settings(move |tx| Ok(settings::set_intended_size(tx, size)?))
            .await
    }

    /// Sets the first and last day, `YYYY-MM-DD`, either open (organisers only).
    pub async fn set_dates(
        &self,
        start_date: Option<String>,
        end_date: Option<String>,
    ) -> Result<(), CairnError> {
        let (start, end) = (parse_date(&start_date)?, parse_date(&end_date)?);
        self.change_settings(move |tx| Ok(settings::set_dates(tx, start, end)?))
            .await
    }

    /// Moves the group to another state (organisers only).
    pub async fn set_state(&self, state: GroupState) -> Result<(), CairnError> {
        self.change_settings(move |tx| Ok(settings::set_state(tx, state.into())?))
            .await
    }

    /// Pins a resource (its id in [`Resources`]) as "start here", or unpins (organisers
    /// only).
    pub async fn set_start_here(&self, resource_id: Option<String>) -> Result<(), CairnError> {
        self.change_settings(move |tx| Ok(settings::set_start_here(tx, resource_id.as_deref())?))
            .await
    }

    /// Configures or clears the "need support now" link (organisers only).
    pub async fn set_crisis_support(
        &self,
        support: Option<CrisisSupport>,
    ) -> Result<(), CairnError> {
        let support: Option<settings::CrisisSupport> = support.as_ref().map(Into::into);
        self.change_settings(move |tx| Ok(settings::set_crisis_support(tx, support.as_ref())?))
            .await
    }

    /// The roster (NotFound until the relay has written it).
    pub async fn members(&self) -> Result<RosterRecord, CairnError> {
        let doc = self
            .context()
            .await?
            .roster
            .ok_or_else(|| CairnError::not_found("the group's roster"))?;
        self.cairn.read_doc(doc, read_roster).await
    }

    /// The group's documents, oldest first (empty while it has no index).
    pub async fn index(&self) -> Result<Vec<IndexEntry>, CairnError> {
        match self.context().await?.index {
            Some(doc) => self.cairn.read_doc(doc, read_index).await,
            None => Ok(Vec::new()),
        }
    }

    /// Creates the group's settings and index documents if it has none (organisers only;
    /// the relay binds one of each per group). Idempotent: what exists is kept as it is.
    pub async fn set_up(&self, profile: GroupProfile) -> Result<(), CairnError> {
        check_name(&profile.name)?;
        parse_date(&profile.start_date)?;
        parse_date(&profile.end_date)?;
        let ctx = self.context().await?;
        if !ctx.is_organiser() {
            return Err(CairnError::Forbidden {
                reason: "only organisers set a group up".into(),
            });
        }
        if ctx.settings.is_none() {
            create_group_doc(&self.cairn, &self.group, BoundKind::Settings, move |tx| {
                settings::init(tx, &profile.name, &profile.purpose)?;
                let current: GroupProfile = settings::profile(tx)?.into();
                apply_profile(tx, &current, &profile)
            })
            .await?;
        }
        if ctx.index.is_none() {
            create_group_doc(&self.cairn, &self.group, BoundKind::Index, |tx| {
                Ok(index::init(tx)?)
            })
            .await?;
        }
        Ok(())
    }

    /// Starts a thread with its first post; it is listed in the group's index. A group
    /// without an index is NotFound (set it up first) rather than given an unlisted thread.
    pub async fn create_thread(&self, title: &str, first_post: &str) -> Result<Thread, CairnError> {
        if first_post.is_empty() {
            return Err(thread::ThreadError::EmptyPost.into());
        }
        let ctx = self.context().await?;
        let index_doc = ctx.index()?;
        if !ctx.can_write() {
            return Err(CairnError::Forbidden {
                reason: "this role reads but does not write".into(),
            });
        }
        let now = self.cairn.now_ms();
        let (me, title_, body) = (ctx.member.clone(), title.to_owned(), first_post.to_owned());
        let (doc, _) = create_group_doc(&self.cairn, &self.group, BoundKind::Thread, move |tx| {
            thread::init(tx, &title_, &me, now)?;
            Ok(thread::add_post(tx, &me, &body, &[], None, now)?)
        })
        .await?;
        self.list_in_index(index_doc, doc, IndexKind::Thread, title)
            .await?;
        Ok(Thread::new(self.cairn.clone(), self.group.clone(), doc))
    }

    /// The thread with this id (as [`IndexEntry::id`] gives it). Invalid if it is not a
    /// document id; reading a thread that is not on the device or the relay is NotFound.
    pub fn thread(&self, thread_id: &str) -> Result<Thread, CairnError> {
        Ok(Thread::new(
            self.cairn.clone(),
            self.group.clone(),
            document_id(thread_id)?,
        ))
    }

    /// The group's resources document: the one listed in the index (the oldest, should two
    /// members have created one at once offline), created and listed on first use.
    pub async fn resources(&self) -> Result<Resources, CairnError> {
        let ctx = self.context().await?;
        let index_doc = ctx.index()?;
        let listed = self
            .cairn
            .read_doc(index_doc, |doc| {
                Ok(index::documents_of_kind(doc, IndexKind::Resources)?
                    .into_iter()
                    .next())
            })
            .await?;
        let doc = match listed {
            Some(entry) => DocumentId::parse_url(&entry.url)
                .map_err(|_| CairnError::from(IndexError::InvalidUrl))?,
            None => {
                let (doc, _) =
                    create_group_doc(&self.cairn, &self.group, BoundKind::Resources, |tx| {
                        Ok(crate::model::resources::init(tx)?)
                    })
                    .await?;
                self.list_in_index(index_doc, doc, IndexKind::Resources, RESOURCES_TITLE)
                    .await?;
                doc
            }
        };
        Ok(Resources::new(self.cairn.clone(), self.group.clone(), doc))
    }
}

// ------------------------------------------------- the group subscription

/// The latest value of each of the three documents (`None`: not delivered yet).
struct Parts {
    profile: Option<Option<GroupProfile>>,
    roster: Option<Option<RosterRecord>>,
    index: Option<Vec<IndexEntry>>,
}

impl Parts {
    fn record(
        group: &GroupId,
        ctx: &GroupContext,
        profile: Option<GroupProfile>,
        roster: Option<RosterRecord>,
        index: Vec<IndexEntry>,
    ) -> GroupRecord {
        GroupRecord {
            id: group.to_string(),
            my_member_id: ctx.member.to_string(),
            my_role: ctx.role,
            my_status: ctx.status,
            profile,
            roster,
            index,
            needs_set_up: ctx.settings.is_none() || ctx.index.is_none(),
        }
    }
}

struct Combiner {
    group: GroupId,
    ctx: GroupContext,
    parts: Mutex<Parts>,
    listener: Arc<dyn Listener<GroupRecord>>,
    cancelled: Arc<AtomicBool>,
}

impl Combiner {
    /// Delivers the combined record once every part has arrived. The lock is held while
    /// the listener runs, so records reach it in the order the parts changed.
    fn update(&self, change: impl FnOnce(&mut Parts)) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut parts);
        self.deliver(&parts);
    }

    fn deliver_if_complete(&self) {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        self.deliver(&parts);
    }

    fn deliver(&self, parts: &Parts) {
        if self.cancelled.load(Ordering::SeqCst) {
            return;
        }
        if let (Some(profile), Some(roster), Some(index)) =
            (&parts.profile, &parts.roster, &parts.index)
        {
            self.listener.on_update(Parts::record(
                &self.group,
                &self.ctx,
                profile.clone(),
                roster.clone(),
                index.clone(),
            ));
        }
    }

    fn error(&self, error: CairnError) {
        let _parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        if !self.cancelled.load(Ordering::SeqCst) {
            self.listener.on_error(error);
        }
    }
}

/// Feeds one document's values into the [`Combiner`].
struct PartListener<T> {
    combiner: Arc<Combiner>,
    set: fn(&mut Parts, T),
}

impl<T: Send + Sync> Listener<T> for PartListener<T> {
    fn on_update(&self, value: T) {
        self.combiner.update(|parts| (self.set)(parts, value));
    }

    fn on_error(&self, error: CairnError) {
        self.combiner.error(error);
    }
}

// ------------------------------------------------------------- test fixture

/// Groups without a relay, for unit tests: a [`GroupContext`] given by the test stands in
/// for what the relay would say, and documents are created locally.
#[cfg(test)]
pub(crate) mod fixture;

#[cfg(test)]
mod tests;
