//! Groups without a relay, for unit tests: a [`GroupContext`](super::GroupContext) given by the test stands in
//! for what the relay would say, and documents are created locally.

use std::collections::BTreeMap;

use super::*;

type Key = (usize, GroupId);

static CONTEXTS: Mutex<BTreeMap<Key, GroupContext>> = Mutex::new(BTreeMap::new());

fn key(cairn: &Cairn, group: &GroupId) -> Key {
    (Arc::as_ptr(&cairn.inner) as usize, group.clone())
}

/// Makes `group` on `cairn` look as `ctx` says.
pub(crate) fn set_context(cairn: &Cairn, group: &GroupId, ctx: GroupContext) {
    CONTEXTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key(cairn, group), ctx);
}

pub(crate) fn context(cairn: &Cairn, group: &GroupId) -> Option<GroupContext> {
    CONTEXTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key(cairn, group))
        .cloned()
}

/// Creates a document on this device only (no relay, no group binding).
pub(crate) async fn create_local<R: Send + 'static>(
    cairn: &Cairn,
    init: impl FnOnce(&mut Transaction<'_>) -> Result<R, CairnError> + Send + 'static,
) -> Result<(DocumentId, R), CairnError> {
    let client = cairn.inner.client.clone();
    cairn
        .run(async move { Ok(client.create(init).await?) })
        .await
}

/// A started Cairn on a temporary directory, without a relay.
pub(crate) fn cairn(dir: &tempfile::TempDir) -> Cairn {
    start(dir, vec![7; 32]).unwrap()
}

/// Starts a Cairn on `dir` with this journal key.
pub(crate) fn start(dir: &tempfile::TempDir, journal_key: Vec<u8>) -> Result<Cairn, CairnError> {
    Cairn::start(crate::app::CairnConfig {
        data_dir: dir.path().to_string_lossy().into_owned(),
        relays: vec![],
        journal_key,
        time_zone: "Europe/London".into(),
        device_name: Some("ana-phone".into()),
    })
}

/// A group with settings, roster and index documents, seen by `member` as `role`.
pub(crate) fn group(
    rt: &tokio::runtime::Runtime,
    cairn: &Cairn,
    name: &str,
    member: &str,
    role: Role,
) -> Group {
    let group = GroupId::from(name);
    let me = MemberId::from(member);
    let view = roster::RosterView {
        members: vec![roster::RosterMember {
            member_id: me.clone(),
            pseudonym: "Ana".into(),
            role,
            status: roster::MemberStatus::Active,
            accepted_version: 1,
            joined_ms: 1,
            expires_ms: None,
        }],
        code_of_conduct: roster::CodeOfConduct {
            version: 1,
            text: "Be kind.".into(),
        },
    };
    let (settings_doc, roster_doc, index_doc) = rt.block_on(async {
        let (s, _) = create_local(cairn, |tx| {
            Ok(settings::init(tx, "Peer leads", "Practice")?)
        })
        .await
        .unwrap();
        let (r, _) = create_local(cairn, move |tx| Ok(roster::reconcile(tx, &view)?))
            .await
            .unwrap();
        let (i, _) = create_local(cairn, |tx| Ok(index::init(tx)?))
            .await
            .unwrap();
        (s, r, i)
    });
    set_context(
        cairn,
        &group,
        GroupContext {
            member: me,
            role,
            status: MemberStatus::Active,
            settings: Some(settings_doc),
            roster: Some(roster_doc),
            index: Some(index_doc),
        },
    );
    Group::new(cairn.clone(), group)
}

/// Collects what a listener receives.
pub(crate) struct Collect<T> {
    pub(crate) values: Mutex<Vec<T>>,
    pub(crate) errors: Mutex<Vec<CairnError>>,
    changed: std::sync::Condvar,
}

impl<T: Clone> Collect<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Collect {
            values: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            changed: std::sync::Condvar::new(),
        })
    }

    /// Waits (at most 10 s, else panics) until `pred` holds for the values received.
    pub(crate) fn wait_until(&self, what: &str, pred: impl Fn(&[T]) -> bool) -> Vec<T> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut values = self.values.lock().unwrap();
        loop {
            if pred(&values) {
                return values.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            values = self.changed.wait_timeout(values, left).unwrap().0;
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.values.lock().unwrap().len()
    }
}

impl<T: Send> Listener<T> for Collect<T> {
    fn on_update(&self, value: T) {
        self.values.lock().unwrap().push(value);
        self.changed.notify_all();
    }

    fn on_error(&self, error: CairnError) {
        self.errors.lock().unwrap().push(error);
        self.changed.notify_all();
    }
}
