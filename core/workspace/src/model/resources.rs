//! The group's resources: links, readings and small files, each with a title, a note and
//! tags, attached to the group or to one meeting, and optionally flagged "for next
//! meeting" so the reminder lists it.
//!
//! Layout: `items`, a list of maps
//!
//! | key | value |
//! |---|---|
//! | `id` | the resource's id (the Automerge id of its map) |
//! | `kind` | `"link"`, `"reading"` or `"file"` |
//! | `url` | str, for links and (optionally) readings |
//! | `file` | map `{name: str, mime: str, size: uint, bytes: bytes}` for files |
//! | `title`, `note` | Text |
//! | `tags` | map tag → `true` (a set that merges) |
//! | `meeting` | the `automerge:` URL of the meeting it belongs to; absent = the whole group |
//! | `forNextMeeting` | bool |
//! | `addedBy`, `createdMs` | who added it, when |
//!
//! Files are capped at [`MAX_FILE_BYTES`]: Automerge keeps every version of a document on
//! every member's device for good, so one large upload would make the group's resources
//! document slow to sync and to open on every phone, and a removed file would still take
//! its space in history. Share large material as a link.

use std::collections::BTreeSet;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, ROOT};
use thiserror::Error;

use crate::model::fields;
use crate::model::schema::{self, DocKind, SchemaError};
use cairn_sync::ids::{DocumentId, MemberId};

/// The largest file a resource may hold, in bytes (256 KiB); see the module docs for why.
pub const MAX_FILE_BYTES: usize = 256 * 1024;

cairn_sync::ids::string_id!(
    /// The id of a resource within the resources document.
    ResourceId
);

/// Why a resources operation failed.
#[derive(Debug, Error)]
pub enum ResourcesError {
    /// The document is not a resources document this code can read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Automerge refused the change.
    #[error(transparent)]
    Automerge(#[from] AutomergeError),
    /// The file is over the cap ([`MAX_FILE_BYTES`]); share it as a link instead.
    #[error(
        "the file is {size} bytes; files are limited to {limit} bytes, share larger ones as a link"
    )]
    FileTooLarge {
        /// The file's size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// No resource with this id (it may not have synced yet, or was removed).
    #[error("no such resource")]
    NoSuchResource,
    /// Not an `automerge:` URL with a valid document id.
    #[error("not a valid automerge: document URL")]
    InvalidUrl,
}

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

/// What a stored resource is (a file's bytes are read separately with [`file_bytes`]).
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

/// What a resource belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// The whole group.
    Group,
    /// One meeting, by its `automerge:` URL.
    Meeting(String),
}

/// A resource to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewResource {
    /// Link, reading or file.
    pub content: ResourceContent,
    /// Its title.
    pub title: String,
    /// Why it is worth a look.
    pub note: String,
    /// Tags (blank ones are dropped).
    pub tags: Vec<String>,
    /// The group or a meeting.
    pub attached_to: Attachment,
    /// Whether the next meeting's reminder lists it.
    pub for_next_meeting: bool,
    /// Who added it.
    pub added_by: MemberId,
    /// When.
    pub created_ms: i64,
}

/// A stored resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// Its id.
    pub id: ResourceId,
    /// Link, reading or file.
    pub kind: ResourceKind,
    /// Its title.
    pub title: String,
    /// Its note.
    pub note: String,
    /// Its tags.
    pub tags: BTreeSet<String>,
    /// The group or a meeting.
    pub attached_to: Attachment,
    /// Whether the next meeting's reminder lists it.
    pub for_next_meeting: bool,
    /// Who added it.
    pub added_by: MemberId,
    /// When.
    pub created_ms: i64,
}

const ITEMS: &str = "items";
const TAGS: &str = "tags";
const NEXT: &str = "forNextMeeting";

/// Creates a resources document.
pub fn init(tx: &mut impl Transactable) -> Result<(), ResourcesError> {
    schema::stamp(tx, DocKind::Resources)?;
    tx.put_object(ROOT, ITEMS, ObjType::List)?;
    Ok(())
}

fn meeting_url(url: &str) -> Result<String, ResourcesError> {
    DocumentId::parse_url(url)
        .map(|id| id.url())
        .map_err(|_| ResourcesError::InvalidUrl)
}

/// Adds a resource and returns its id. A file over [`MAX_FILE_BYTES`] is refused before
/// anything is written.
pub fn add_resource(
    tx: &mut impl Transactable,
    new: &NewResource,
) -> Result<ResourceId, ResourcesError> {
    schema::check(tx, DocKind::Resources)?;
    if let ResourceContent::File { bytes, .. } = &new.content {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(ResourcesError::FileTooLarge {
                size: bytes.len(),
                limit: MAX_FILE_BYTES,
            });
        }
    }
    let meeting = match &new.attached_to {
        Attachment::Group => None,
        Attachment::Meeting(url) => Some(meeting_url(url)?),
    };
    let items = fields::list_in::<ResourcesError>(tx, &ROOT, ITEMS)?;
    let at = tx.length(&items);
    let item = tx.insert_object(&items, at, ObjType::Map)?;
    let id = ResourceId(item.to_string());
    tx.put(&item, "id", id.as_str())?;
    match &new.content {
        ResourceContent::Link { url } => {
            tx.put(&item, "kind", "link")?;
            tx.put(&item, "url", url.as_str())?;
        }
        ResourceContent::Reading { url } => {
            tx.put(&item, "kind", "reading")?;
            if let Some(url) = url {
                tx.put(&item, "url", url.as_str())?;
            }
        }
        ResourceContent::File { name, mime, bytes } => {
            tx.put(&item, "kind", "file")?;
            let file = tx.put_object(&item, "file", ObjType::Map)?;
            tx.put(&file, "name", name.as_str())?;
            tx.put(&file, "mime", mime.as_str())?;
            tx.put(&file, "size", ScalarValue::Uint(bytes.len() as u64))?;
            tx.put(&file, "bytes", ScalarValue::Bytes(bytes.clone()))?;
        }
    }
    fields::put_text(tx, &item, "title", &new.title)?;
    fields::put_text(tx, &item, "note", &new.note)?;
    let tags = tx.put_object(&item, TAGS, ObjType::Map)?;
    for tag in new.tags.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        tx.put(&tags, tag, true)?;
    }
    if let Some(url) = meeting {
        tx.put(&item, "meeting", url)?;
    }
    tx.put(&item, NEXT, new.for_next_meeting)?;
    tx.put(&item, "addedBy", new.added_by.as_str())?;
    tx.put(&item, "createdMs", new.created_ms)?;
    Ok(id)
}

fn find_item(doc: &impl ReadDoc, id: &ResourceId) -> Result<Option<(usize, ObjId)>, SchemaError> {
    let Some(items) = fields::list(doc, &ROOT, ITEMS)? else {
        return Ok(None);
    };
    for (i, obj) in fields::maps_in_list(doc, &items, ITEMS)? {
        if stored_id(doc, &obj)? == id.0 {
            return Ok(Some((i, obj)));
        }
    }
    Ok(None)
}

fn stored_id(doc: &impl ReadDoc, obj: &ObjId) -> Result<String, SchemaError> {
    Ok(fields::string(doc, obj, "id")?.unwrap_or_else(|| obj.to_string()))
}

fn item(tx: &impl ReadDoc, id: &ResourceId) -> Result<ObjId, ResourcesError> {
    schema::check(tx, DocKind::Resources)?;
    Ok(find_item(tx, id)?.ok_or(ResourcesError::NoSuchResource)?.1)
}

/// Retitles a resource.
pub fn set_title(
    tx: &mut impl Transactable,
    id: &ResourceId,
    title: &str,
) -> Result<(), ResourcesError> {
    let obj = item(tx, id)?;
    fields::set_text::<ResourcesError>(tx, &obj, "title", title)
}

/// Rewrites a resource's note.
pub fn set_note(
    tx: &mut impl Transactable,
    id: &ResourceId,
    note: &str,
) -> Result<(), ResourcesError> {
    let obj = item(tx, id)?;
    fields::set_text::<ResourcesError>(tx, &obj, "note", note)
}

/// Tags a resource (tags added on two devices at once both stay).
pub fn add_tag(
    tx: &mut impl Transactable,
    id: &ResourceId,
    tag: &str,
) -> Result<(), ResourcesError> {
    let obj = item(tx, id)?;
    let tag = tag.trim();
    if !tag.is_empty() {
        let tags = fields::map_in::<ResourcesError>(tx, &obj, TAGS)?;
        tx.put(&tags, tag, true)?;
    }
    Ok(())
}

/// Removes a tag.
pub fn remove_tag(
    tx: &mut impl Transactable,
    id: &ResourceId,
    tag: &str,
) -> Result<(), ResourcesError> {
    let obj = item(tx, id)?;
    if let Some(tags) = fields::object(tx, &obj, TAGS)? {
        if tx.get(&tags, tag.trim())?.is_some() {
            tx.delete(&tags, tag.trim())?;
        }
    }
    Ok(())
}

/// Flags or unflags a resource for the next meeting's reminder.
pub fn set_for_next_meeting(
    tx: &mut impl Transactable,
    id: &ResourceId,
    flag: bool,
) -> Result<(), ResourcesError> {
    let obj = item(tx, id)?;
    tx.put(&obj, NEXT, flag)?;
    Ok(())
}

/// Clears every "for next meeting" flag (after the meeting has happened); returns how
/// many were cleared.
pub fn clear_for_next_meeting(tx: &mut impl Transactable) -> Result<usize, ResourcesError> {
    schema::check(tx, DocKind::Resources)?;
    let Some(items) = fields::list(tx, &ROOT, ITEMS)? else {
        return Ok(0);
    };
    let mut cleared = 0;
    for (_, obj) in fields::maps_in_list(tx, &items, ITEMS)? {
        if fields::boolean(tx, &obj, NEXT)?.unwrap_or(false) {
            tx.put(&obj, NEXT, false)?;
            cleared += 1;
        }
    }
    Ok(cleared)
}

/// Attaches a resource to the group or to a meeting.
pub fn attach(
    tx: &mut impl Transactable,
    id: &ResourceId,
    to: &Attachment,
) -> Result<(), ResourcesError> {
    let obj = item(tx, id)?;
    match to {
        Attachment::Group => tx.delete(&obj, "meeting")?,
        Attachment::Meeting(url) => tx.put(&obj, "meeting", meeting_url(url)?)?,
    }
    Ok(())
}

/// Removes a resource from the list. Like every Automerge deletion it stays in the
/// document's history on every device that synced it.
pub fn remove_resource(tx: &mut impl Transactable, id: &ResourceId) -> Result<(), ResourcesError> {
    schema::check(tx, DocKind::Resources)?;
    let (index, _) = find_item(tx, id)?.ok_or(ResourcesError::NoSuchResource)?;
    let items = fields::list(tx, &ROOT, ITEMS)?.ok_or(ResourcesError::NoSuchResource)?;
    tx.delete(&items, index)?;
    Ok(())
}

fn read_resource(doc: &impl ReadDoc, obj: &ObjId) -> Result<Resource, SchemaError> {
    let shape = |k: &str| SchemaError::Shape(k.to_owned());
    let kind = match fields::string(doc, obj, "kind")?.as_deref() {
        Some("link") => ResourceKind::Link {
            url: fields::string(doc, obj, "url")?.unwrap_or_default(),
        },
        Some("reading") => ResourceKind::Reading {
            url: fields::string(doc, obj, "url")?,
        },
        Some("file") => {
            let file = fields::object(doc, obj, "file")?.ok_or_else(|| shape("file"))?;
            ResourceKind::File {
                name: fields::string(doc, &file, "name")?.unwrap_or_default(),
                mime: fields::string(doc, &file, "mime")?.unwrap_or_default(),
                size: fields::int(doc, &file, "size")?.unwrap_or(0).max(0) as u64,
            }
        }
        _ => return Err(shape("kind")),
    };
    let tags = match fields::object(doc, obj, TAGS)? {
        Some(t) => doc.keys(&t).collect(),
        None => BTreeSet::new(),
    };
    Ok(Resource {
        id: ResourceId(stored_id(doc, obj)?),
        kind,
        title: fields::string(doc, obj, "title")?.unwrap_or_default(),
        note: fields::string(doc, obj, "note")?.unwrap_or_default(),
        tags,
        attached_to: match fields::string(doc, obj, "meeting")? {
            Some(url) => Attachment::Meeting(url),
            None => Attachment::Group,
        },
        for_next_meeting: fields::boolean(doc, obj, NEXT)?.unwrap_or(false),
        added_by: fields::string(doc, obj, "addedBy")?
            .unwrap_or_default()
            .into(),
        created_ms: fields::int(doc, obj, "createdMs")?.unwrap_or(0),
    })
}

/// Every resource, in list order.
pub fn resources(doc: &impl ReadDoc) -> Result<Vec<Resource>, ResourcesError> {
    schema::check(doc, DocKind::Resources)?;
    let Some(items) = fields::list(doc, &ROOT, ITEMS)? else {
        return Ok(Vec::new());
    };
    Ok(fields::maps_in_list(doc, &items, ITEMS)?
        .into_iter()
        .map(|(_, obj)| read_resource(doc, &obj))
        .collect::<Result<_, _>>()?)
}

/// One resource.
pub fn resource(doc: &impl ReadDoc, id: &ResourceId) -> Result<Option<Resource>, ResourcesError> {
    schema::check(doc, DocKind::Resources)?;
    match find_item(doc, id)? {
        Some((_, obj)) => Ok(Some(read_resource(doc, &obj)?)),
        None => Ok(None),
    }
}

/// A file resource's bytes (`None` for links and readings).
pub fn file_bytes(doc: &impl ReadDoc, id: &ResourceId) -> Result<Option<Vec<u8>>, ResourcesError> {
    schema::check(doc, DocKind::Resources)?;
    let (_, obj) = find_item(doc, id)?.ok_or(ResourcesError::NoSuchResource)?;
    match fields::object(doc, &obj, "file")? {
        Some(file) => Ok(fields::bytes(doc, &file, "bytes")?),
        None => Ok(None),
    }
}

/// What the reminder a week before the next meeting lists: every resource flagged
/// "for next meeting", in list order.
pub fn readings_for_next_meeting(doc: &impl ReadDoc) -> Result<Vec<Resource>, ResourcesError> {
    Ok(resources(doc)?
        .into_iter()
        .filter(|r| r.for_next_meeting)
        .collect())
}

/// The resources attached to one meeting.
pub fn resources_for_meeting(
    doc: &impl ReadDoc,
    meeting_url_or_id: &str,
) -> Result<Vec<Resource>, ResourcesError> {
    let url = meeting_url(meeting_url_or_id)?;
    Ok(resources(doc)?
        .into_iter()
        .filter(|r| r.attached_to == Attachment::Meeting(url.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{Automerge, TextEncoding};

    fn new_doc() -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        let mut tx = doc.transaction();
        init(&mut tx).unwrap();
        tx.commit();
        doc
    }

    fn change<T>(
        doc: &mut Automerge,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> T,
    ) -> T {
        let mut tx = doc.transaction();
        let out = f(&mut tx);
        tx.commit();
        out
    }

    fn link(title: &str, next: bool) -> NewResource {
        NewResource {
            content: ResourceContent::Link {
                url: "https://example.org/wrap".into(),
            },
            title: title.into(),
            note: "worth a read".into(),
            tags: vec!["wellness".into(), " ".into()],
            attached_to: Attachment::Group,
            for_next_meeting: next,
            added_by: "ana".into(),
            created_ms: 5,
        }
    }

    #[test]
    fn a_file_over_the_cap_is_refused_and_nothing_is_written() {
        let mut doc = new_doc();
        let big = NewResource {
            content: ResourceContent::File {
                name: "slides.pdf".into(),
                mime: "application/pdf".into(),
                bytes: vec![0; MAX_FILE_BYTES + 1],
            },
            ..link("Slides", false)
        };
        let err = change(&mut doc, |tx| add_resource(tx, &big)).unwrap_err();
        assert!(
            matches!(err, ResourcesError::FileTooLarge { size, limit } if size == MAX_FILE_BYTES + 1 && limit == MAX_FILE_BYTES)
        );
        assert!(resources(&doc).unwrap().is_empty());

        let small = NewResource {
            content: ResourceContent::File {
                name: "plan.txt".into(),
                mime: "text/plain".into(),
                bytes: b"WRAP plan".to_vec(),
            },
            ..link("My plan", false)
        };
        let id = change(&mut doc, |tx| add_resource(tx, &small).unwrap());
        assert_eq!(file_bytes(&doc, &id).unwrap().unwrap(), b"WRAP plan");
        let r = resource(&doc, &id).unwrap().unwrap();
        assert_eq!(
            r.kind,
            ResourceKind::File {
                name: "plan.txt".into(),
                mime: "text/plain".into(),
                size: 9
            }
        );
    }

    #[test]
    fn readings_for_next_meeting_feed_the_reminder() {
        let mut doc = new_doc();
        let meeting = DocumentId::from_bytes([3; 16]).url();
        let (a, b) = change(&mut doc, |tx| {
            let a = add_resource(tx, &link("Wellness recovery plans", true)).unwrap();
            let b = add_resource(
                tx,
                &NewResource {
                    attached_to: Attachment::Meeting(meeting.clone()),
                    ..link("Later", false)
                },
            )
            .unwrap();
            (a, b)
        });
        let titles = |doc: &Automerge| {
            readings_for_next_meeting(doc)
                .unwrap()
                .into_iter()
                .map(|r| r.title)
                .collect::<Vec<_>>()
        };
        assert_eq!(titles(&doc), ["Wellness recovery plans"]);
        change(&mut doc, |tx| set_for_next_meeting(tx, &b, true).unwrap());
        assert_eq!(titles(&doc), ["Wellness recovery plans", "Later"]);
        assert_eq!(resources_for_meeting(&doc, &meeting).unwrap()[0].id, b);
        assert_eq!(
            change(&mut doc, |tx| clear_for_next_meeting(tx).unwrap()),
            2
        );
        assert!(titles(&doc).is_empty());
        change(&mut doc, |tx| remove_resource(tx, &a).unwrap());
        assert_eq!(resources(&doc).unwrap().len(), 1);
        assert!(matches!(
            change(&mut doc, |tx| set_title(tx, &a, "x")),
            Err(ResourcesError::NoSuchResource)
        ));
    }

    #[test]
    fn concurrent_tags_and_note_edits_merge() {
        let mut a = new_doc();
        let id = change(&mut a, |tx| {
            add_resource(tx, &link("Peer drift", false)).unwrap()
        });
        let mut b = a.fork();
        change(&mut a, |tx| {
            add_tag(tx, &id, "supervision").unwrap();
            set_note(tx, &id, "worth a read before March").unwrap();
        });
        change(&mut b, |tx| {
            add_tag(tx, &id, "training").unwrap();
            remove_tag(tx, &id, "wellness").unwrap();
            set_note(tx, &id, "really worth a read").unwrap();
        });
        a.merge(&mut b).unwrap();
        let r = resource(&a, &id).unwrap().unwrap();
        assert_eq!(
            r.tags.into_iter().collect::<Vec<_>>(),
            ["supervision", "training"]
        );
        assert_eq!(r.note, "really worth a read before March");
    }
}
