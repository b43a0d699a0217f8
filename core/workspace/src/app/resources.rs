//! The group's resources: links, readings and small files with a title, a note and tags,
//! attached to the group or to one meeting, and flagged "for next meeting" so the reminder
//! lists them. One document per group ([`crate::app::Group::resources`]).
//!
//! Files are small (at most [`MAX_FILE_BYTES`]): every version stays in the document's
//! history on every member's phone. Share large material as a link.

use std::sync::Arc;

use automerge::Automerge;
use cairn_sync::ids::DocumentId;

use crate::app::group::{id_of_url, my_member_id};
use crate::app::{CairnError, Listener, Resources, Subscription};
use crate::model::resources::{self as model, ResourceId, ResourcesError};

pub use crate::model::resources::MAX_FILE_BYTES;

/// What a new resource holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceContent {
    /// A web link.
    Link {
        /// Where it points.
        url: String,
    },
    /// Something to read, online or on paper.
    Reading {
        /// Where to find it, if online.
        url: Option<String>,
    },
    /// A small file (at most [`MAX_FILE_BYTES`]).
    File {
        /// The file name.
        name: String,
        /// Its media type (`application/pdf`).
        mime: String,
        /// Its contents.
        bytes: Vec<u8>,
    },
}

/// What a stored resource is (a file's bytes come from [`Resources::file_bytes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    /// A web link.
    Link {
        /// Where it points.
        url: String,
    },
    /// Something to read.
    Reading {
        /// Where to find it, if online.
        url: Option<String>,
    },
    /// A small file.
    File {
        /// The file name.
        name: String,
        /// Its media type.
        mime: String,
        /// Its size in bytes.
        size: u64,
    },
}

/// A resource to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewResource {
    /// Link, reading or file.
    pub content: ResourceContent,
    /// Its title (not empty).
    pub title: String,
    /// Why it is worth a look.
    pub note: String,
    /// Tags (blank ones are dropped).
    pub tags: Vec<String>,
    /// The meeting it belongs to (its id); `None`: the whole group.
    pub meeting_id: Option<String>,
    /// Whether the next meeting's reminder lists it.
    pub for_next_meeting: bool,
}

/// A stored resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRecord {
    /// Its id in the group's resources.
    pub id: String,
    /// Link, reading or file.
    pub kind: ResourceKind,
    /// Its title.
    pub title: String,
    /// Its note.
    pub note: String,
    /// Its tags, sorted.
    pub tags: Vec<String>,
    /// The meeting it belongs to (its id); `None`: the whole group.
    pub meeting_id: Option<String>,
    /// Whether the next meeting's reminder lists it.
    pub for_next_meeting: bool,
    /// Who added it (member id).
    pub added_by: String,
    /// When (ms since the Unix epoch).
    pub created_ms: i64,
}

impl From<ResourcesError> for CairnError {
    fn from(e: ResourcesError) -> Self {
        match e {
            ResourcesError::Schema(e) => e.into(),
            ResourcesError::Automerge(e) => e.into(),
            ResourcesError::NoSuchResource => CairnError::not_found("resource"),
            ResourcesError::FileTooLarge { .. } | ResourcesError::InvalidUrl => {
                CairnError::invalid(e.to_string())
            }
        }
    }
}

impl From<model::Resource> for ResourceRecord {
    fn from(r: model::Resource) -> Self {
        ResourceRecord {
            id: r.id.to_string(),
            kind: match r.kind {
                model::ResourceKind::Link { url } => ResourceKind::Link { url },
                model::ResourceKind::Reading { url } => ResourceKind::Reading { url },
                model::ResourceKind::File { name, mime, size } => {
                    ResourceKind::File { name, mime, size }
                }
            },
            title: r.title,
            note: r.note,
            tags: r.tags.into_iter().collect(),
            meeting_id: match r.attached_to {
                model::Attachment::Group => None,
                model::Attachment::Meeting(url) => Some(id_of_url(&url)),
            },
            for_next_meeting: r.for_next_meeting,
            added_by: r.added_by.to_string(),
            created_ms: r.created_ms,
        }
    }
}

/// The model's attachment for a meeting id as the app holds it.
fn attachment(meeting_id: Option<&str>) -> Result<model::Attachment, CairnError> {
    Ok(match meeting_id {
        None => model::Attachment::Group,
        Some(id) => model::Attachment::Meeting(
            crate::app::handles::document_id(id)
                .map_err(|_| CairnError::invalid("not a meeting id"))?
                .url(),
        ),
    })
}

fn records(list: Vec<model::Resource>) -> Vec<ResourceRecord> {
    list.into_iter().map(Into::into).collect()
}

fn read_all(doc: &Automerge) -> Result<Vec<ResourceRecord>, CairnError> {
    Ok(records(model::resources(doc)?))
}

impl Resources {
    /// Every resource, in list order.
    pub async fn list(&self) -> Result<Vec<ResourceRecord>, CairnError> {
        self.cairn.read_doc(self.doc, read_all).await
    }

    /// The resources, live: the current list first, then one per change.
    pub fn subscribe(&self, listener: Arc<dyn Listener<Vec<ResourceRecord>>>) -> Subscription {
        self.cairn.subscribe_doc(self.doc, read_all, listener)
    }

    /// One resource (NotFound if there is none with this id).
    pub async fn get(&self, resource_id: &str) -> Result<ResourceRecord, CairnError> {
        let id = ResourceId::from(resource_id);
        self.cairn
            .read_doc(self.doc, move |doc| {
                Ok(model::resource(doc, &id)?
                    .ok_or(ResourcesError::NoSuchResource)?
                    .into())
            })
            .await
    }

    /// Adds a resource and returns its id. An empty title, a file over
    /// [`MAX_FILE_BYTES`] or a bad meeting id is Invalid and adds nothing.
    pub async fn add(&self, resource: NewResource) -> Result<String, CairnError> {
        if resource.title.trim().is_empty() {
            return Err(CairnError::invalid("a resource needs a title"));
        }
        let attached_to = attachment(resource.meeting_id.as_deref())?;
        let me = my_member_id(&self.cairn, &self.group).await?;
        let new = model::NewResource {
            content: match resource.content {
                ResourceContent::Link { url } => model::ResourceContent::Link { url },
                ResourceContent::Reading { url } => model::ResourceContent::Reading { url },
                ResourceContent::File { name, mime, bytes } => {
                    model::ResourceContent::File { name, mime, bytes }
                }
            },
            title: resource.title,
            note: resource.note,
            tags: resource.tags,
            attached_to,
            for_next_meeting: resource.for_next_meeting,
            added_by: me,
            created_ms: self.cairn.now_ms(),
        };
        self.cairn
            .change_doc(self.doc, move |tx| {
                Ok(model::add_resource(tx, &new)?.to_string())
            })
            .await
    }

    async fn change(
        &self,
        resource_id: &str,
        f: impl FnOnce(
                &mut automerge::transaction::Transaction<'_>,
                &ResourceId,
            ) -> Result<(), ResourcesError>
            + Send
            + 'static,
    ) -> Result<(), CairnError> {
        let id = ResourceId::from(resource_id);
        self.cairn
            .change_doc(self.doc, move |tx| Ok(f(tx, &id)?))
            .await
    }

    /// Retitles a resource (not empty).
    pub async fn set_title(&self, resource_id: &str, title: &str) -> Result<(), CairnError> {
        if title.trim().is_empty() {
            return Err(CairnError::invalid("a resource needs a title"));
        }
        let title = title.to_owned();
        self.change(resource_id, move |tx, id| model::set_title(tx, id, &title))
            .await
    }

    /// Rewrites a resource's note.
    pub async fn set_note(&self, resource_id: &str, note: &str) -> Result<(), CairnError> {
        let note = note.to_owned();
        self.change(resource_id, move |tx, id| model::set_note(tx, id, &note))
            .await
    }

    /// Tags a resource (tags added on two phones at once both stay).
    pub async fn add_tag(&self, resource_id: &str, tag: &str) -> Result<(), CairnError> {
        let tag = tag.to_owned();
        self.change(resource_id, move |tx, id| model::add_tag(tx, id, &tag))
            .await
    }

    /// Removes a tag.
    pub async fn remove_tag(&self, resource_id: &str, tag: &str) -> Result<(), CairnError> {
        let tag = tag.to_owned();
        self.change(resource_id, move |tx, id| model::remove_tag(tx, id, &tag))
            .await
    }

    /// Flags or unflags a resource for the next meeting's reminder.
    pub async fn set_for_next_meeting(
        &self,
        resource_id: &str,
        for_next_meeting: bool,
    ) -> Result<(), CairnError> {
        self.change(resource_id, move |tx, id| {
            model::set_for_next_meeting(tx, id, for_next_meeting)
        })
        .await
    }

    /// Clears every "for next meeting" flag (after the meeting); returns how many were set.
    pub async fn clear_for_next_meeting(&self) -> Result<u32, CairnError> {
        self.cairn
            .change_doc(self.doc, |tx| {
                let n = model::clear_for_next_meeting(tx)?;
                Ok(crate::app::saturating_u32(n))
            })
            .await
    }

    /// Attaches a resource to a meeting (its id), or to the whole group with `None`.
    pub async fn attach_to_meeting(
        &self,
        resource_id: &str,
        meeting_id: Option<String>,
    ) -> Result<(), CairnError> {
        let to = attachment(meeting_id.as_deref())?;
        self.change(resource_id, move |tx, id| model::attach(tx, id, &to))
            .await
    }

    /// Removes a resource from the list. Its content stays in the document's history on
    /// every phone that synced it.
    pub async fn remove(&self, resource_id: &str) -> Result<(), CairnError> {
        self.change(resource_id, |tx, id| model::remove_resource(tx, id))
            .await
    }

    /// A file resource's bytes (`None` for links and readings).
    pub async fn file_bytes(&self, resource_id: &str) -> Result<Option<Vec<u8>>, CairnError> {
        let id = ResourceId::from(resource_id);
        self.cairn
            .read_doc(self.doc, move |doc| Ok(model::file_bytes(doc, &id)?))
            .await
    }

    /// What the reminder before the next meeting lists: every resource flagged "for next
    /// meeting", in list order.
    pub async fn readings_for_next_meeting(&self) -> Result<Vec<ResourceRecord>, CairnError> {
        self.cairn
            .read_doc(self.doc, |doc| {
                Ok(records(model::readings_for_next_meeting(doc)?))
            })
            .await
    }

    /// The resources attached to one meeting (by its id).
    pub async fn for_meeting(&self, meeting_id: &str) -> Result<Vec<ResourceRecord>, CairnError> {
        let url = crate::app::handles::document_id(meeting_id)
            .map_err(|_| CairnError::invalid("not a meeting id"))
            .map(|d: DocumentId| d.url())?;
        self.cairn
            .read_doc(self.doc, move |doc| {
                Ok(records(model::resources_for_meeting(doc, &url)?))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::group::fixture::{self, Collect};
    use crate::model::group::Role;

    fn link(title: &str) -> NewResource {
        NewResource {
            content: ResourceContent::Link {
                url: "https://example.org/peer-support".into(),
            },
            title: title.into(),
            note: "Worth a read".into(),
            tags: vec!["training".into(), " ".into()],
            meeting_id: None,
            for_next_meeting: false,
        }
    }

    #[test]
    fn resources_are_added_changed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cairn = fixture::cairn(&dir);
        let group = fixture::group(&rt, &cairn, "g-resources", "ana", Role::Member);
        rt.block_on(async {
            let resources = group.resources().await.unwrap();
            let seen = Collect::<Vec<ResourceRecord>>::new();
            let _sub = resources.subscribe(seen.clone());
            seen.wait_until("the empty list", |v| v.last().is_some_and(Vec::is_empty));

            let a = resources.add(link("Drift")).await.unwrap();
            let meeting = DocumentId::from_bytes([3; 16]).to_string();
            let b = resources
                .add(NewResource {
                    content: ResourceContent::File {
                        name: "notes.txt".into(),
                        mime: "text/plain".into(),
                        bytes: b"hello".to_vec(),
                    },
                    meeting_id: Some(meeting.clone()),
                    for_next_meeting: true,
                    ..link("Notes")
                })
                .await
                .unwrap();
            let listed = resources.list().await.unwrap();
            assert_eq!(
                listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
                [&a, &b]
            );
            assert_eq!(listed[0].tags, ["training"]);
            assert_eq!(listed[0].added_by, "ana");
            assert_eq!(listed[1].meeting_id.as_deref(), Some(meeting.as_str()));
            assert_eq!(
                resources.file_bytes(&b).await.unwrap().as_deref(),
                Some(&b"hello"[..])
            );
            assert_eq!(resources.for_meeting(&meeting).await.unwrap()[0].id, b);
            assert_eq!(
                resources.readings_for_next_meeting().await.unwrap()[0].id,
                b
            );

            resources.set_title(&a, "Peer drift").await.unwrap();
            resources.set_for_next_meeting(&a, true).await.unwrap();
            resources.add_tag(&a, "supervision").await.unwrap();
            let got = resources.get(&a).await.unwrap();
            assert_eq!(got.title, "Peer drift");
            assert_eq!(got.tags, ["supervision", "training"]);
            assert_eq!(resources.clear_for_next_meeting().await.unwrap(), 2);

            resources.remove(&a).await.unwrap();
            assert!(matches!(
                resources.get(&a).await,
                Err(CairnError::NotFound { .. })
            ));
            assert!(matches!(
                resources.remove(&a).await,
                Err(CairnError::NotFound { .. })
            ));
            seen.wait_until("the list after removal", |v| {
                v.last().is_some_and(|l| l.len() == 1 && l[0].id == b)
            });

            assert!(matches!(
                resources.add(link(" ")).await,
                Err(CairnError::Invalid { .. })
            ));
            let big = NewResource {
                content: ResourceContent::File {
                    name: "big.pdf".into(),
                    mime: "application/pdf".into(),
                    bytes: vec![0; MAX_FILE_BYTES + 1],
                },
                ..link("Big")
            };
            assert!(matches!(
                resources.add(big).await,
                Err(CairnError::Invalid { .. })
            ));
            assert_eq!(resources.list().await.unwrap().len(), 1);
        });
    }
}
