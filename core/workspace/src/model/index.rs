//! A group's index document: the list of its meetings, series, threads and resources, so
//! every member's device knows which documents to open. Members write it (observers,
//! guests and alumni only read, which the relay enforces): starting a thread or planning
//! a meeting adds an entry here.
//!
//! Layout (root keys):
//!
//! | key | value |
//! |---|---|
//! | `documents` | map `automerge:` URL → `{kind: "meeting"\|"series"\|"thread"\|"resources", title: Text, createdMs}` |
//!
//! `documents` is created by [`init`], in the first change: two devices that each created
//! a missing map concurrently would end with one of the two and lose the other's entries.
//! Keys are canonical URLs (no heads or path), so two members indexing the same document
//! write the same entry.
//!
//! Reports are never indexed: this document is readable by every member, and an entry
//! would tell them that someone reported. Settings and roster are found through the relay
//! (the group's description lists them), not here.
//!
//! An entry only tells devices where to look; who may open a document is the relay's
//! binding of that document to the group, made before its first sync.

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjType, ReadDoc, ROOT};
use thiserror::Error;

use crate::model::fields::{self, named_enum};
use crate::model::schema::{self, DocKind, SchemaError};
use cairn_sync::ids::DocumentId;

/// Why an index operation failed.
#[derive(Debug, Error)]
pub enum IndexError {
    /// The document is not an index document this code can read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Automerge refused the change (usually a bug in the caller's object ids).
    #[error(transparent)]
    Automerge(#[from] AutomergeError),
    /// Not an `automerge:` URL with a valid document id (a typo or a truncated link).
    #[error("not a valid automerge: document URL")]
    InvalidUrl,
    /// The document is not in the group's index.
    #[error("the document is not in the group's index")]
    NotIndexed,
}

named_enum!(
    /// What an indexed document is.
    IndexKind {
        /// One meeting.
        Meeting => "meeting",
        /// A recurring series.
        Series => "series",
        /// A discussion thread.
        Thread => "thread",
        /// The resources list.
        Resources => "resources",
    }
);

impl IndexKind {
    /// The document kind an entry of this kind points at.
    pub const fn doc_kind(self) -> DocKind {
        match self {
            IndexKind::Meeting => DocKind::Meeting,
            IndexKind::Series => DocKind::Series,
            IndexKind::Thread => DocKind::Thread,
            IndexKind::Resources => DocKind::Resources,
        }
    }
}

/// One entry of the group's document index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The document's `automerge:` URL.
    pub url: String,
    /// What it is.
    pub kind: IndexKind,
    /// Its title, for lists.
    pub title: String,
    /// When it was created.
    pub created_ms: i64,
}

const DOCUMENTS: &str = "documents";

/// Creates an index document: stamps the schema and creates the `documents` map.
pub fn init(tx: &mut impl Transactable) -> Result<(), IndexError> {
    schema::stamp(tx, DocKind::Index)?;
    tx.put_object(ROOT, DOCUMENTS, ObjType::Map)?;
    Ok(())
}

fn canonical_url(url: &str) -> Result<String, IndexError> {
    DocumentId::parse_url(url)
        .map(|id| id.url())
        .map_err(|_| IndexError::InvalidUrl)
}

/// Adds (or re-describes) a document in the group's index; returns its canonical URL.
pub fn index_document(
    tx: &mut impl Transactable,
    url: &str,
    kind: IndexKind,
    title: &str,
    created_ms: i64,
) -> Result<String, IndexError> {
    schema::check(tx, DocKind::Index)?;
    let url = canonical_url(url)?;
    let documents = fields::map_in::<IndexError>(tx, &ROOT, DOCUMENTS)?;
    let entry = fields::map_in::<IndexError>(tx, &documents, &url)?;
    tx.put(&entry, "kind", kind.name())?;
    fields::set_text::<IndexError>(tx, &entry, "title", title)?;
    tx.put(&entry, "createdMs", created_ms)?;
    Ok(url)
}

/// Changes an indexed document's title.
pub fn set_document_title(
    tx: &mut impl Transactable,
    url: &str,
    title: &str,
) -> Result<(), IndexError> {
    schema::check(tx, DocKind::Index)?;
    let url = canonical_url(url)?;
    let entry = fields::object(tx, &ROOT, DOCUMENTS)?
        .map(|d| fields::object(tx, &d, &url))
        .transpose()?
        .flatten()
        .ok_or(IndexError::NotIndexed)?;
    fields::set_text::<IndexError>(tx, &entry, "title", title)
}

/// Removes a document from the index (the document itself is not touched, and the relay
/// keeps it bound to the group).
pub fn unindex_document(tx: &mut impl Transactable, url: &str) -> Result<(), IndexError> {
    schema::check(tx, DocKind::Index)?;
    let url = canonical_url(url)?;
    let documents = fields::object(tx, &ROOT, DOCUMENTS)?.ok_or(IndexError::NotIndexed)?;
    if tx.get(&documents, url.as_str())?.is_none() {
        return Err(IndexError::NotIndexed);
    }
    tx.delete(&documents, url.as_str())?;
    Ok(())
}

/// The group's documents, oldest first.
pub fn documents(doc: &impl ReadDoc) -> Result<Vec<IndexEntry>, IndexError> {
    schema::check(doc, DocKind::Index)?;
    let mut out = Vec::new();
    let Some(documents) = fields::object(doc, &ROOT, DOCUMENTS)? else {
        return Ok(out);
    };
    for url in doc.keys(&documents) {
        let entry = fields::object(doc, &documents, &url)?
            .ok_or_else(|| SchemaError::Shape(DOCUMENTS.into()))?;
        let kind = fields::string(doc, &entry, "kind")?
            .and_then(|k| IndexKind::from_name(&k))
            .ok_or_else(|| SchemaError::Shape(DOCUMENTS.into()))?;
        out.push(IndexEntry {
            title: fields::string(doc, &entry, "title")?.unwrap_or_default(),
            created_ms: fields::int(doc, &entry, "createdMs")?.unwrap_or(0),
            kind,
            url,
        });
    }
    out.sort_by(|a, b| (a.created_ms, &a.url).cmp(&(b.created_ms, &b.url)));
    Ok(out)
}

/// The group's documents of one kind, oldest first.
pub fn documents_of_kind(
    doc: &impl ReadDoc,
    kind: IndexKind,
) -> Result<Vec<IndexEntry>, IndexError> {
    let mut all = documents(doc)?;
    all.retain(|e| e.kind == kind);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{Automerge, TextEncoding};

    fn change<T>(
        doc: &mut Automerge,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> T,
    ) -> T {
        let mut tx = doc.transaction();
        let out = f(&mut tx);
        tx.commit();
        out
    }

    fn new_index() -> Automerge {
        let mut doc = Automerge::new_with_encoding(TextEncoding::Utf16CodeUnit);
        change(&mut doc, |tx| init(tx).unwrap());
        doc
    }

    fn url(n: u8) -> String {
        DocumentId::from_bytes([n; 16]).url()
    }

    #[test]
    fn documents_are_indexed_retitled_and_removed() {
        let mut doc = new_index();
        let with_heads = format!("{}#abc", url(7));
        let stored = change(&mut doc, |tx| {
            index_document(tx, &with_heads, IndexKind::Thread, "Welcome", 5).unwrap()
        });
        assert_eq!(stored, url(7), "stored under the canonical URL");
        change(&mut doc, |tx| {
            index_document(tx, &url(8), IndexKind::Meeting, "March", 3).unwrap();
            set_document_title(tx, &url(7), "Welcome, all").unwrap();
        });
        let docs = documents(&doc).unwrap();
        let listed: Vec<_> = docs
            .iter()
            .map(|d| (d.url.as_str(), d.kind, d.title.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                (url(8).as_str(), IndexKind::Meeting, "March"),
                (url(7).as_str(), IndexKind::Thread, "Welcome, all")
            ]
        );
        assert_eq!(documents_of_kind(&doc, IndexKind::Thread).unwrap().len(), 1);
        assert!(matches!(
            change(&mut doc, |tx| index_document(
                tx,
                "automerge:nope",
                IndexKind::Thread,
                "x",
                1
            )),
            Err(IndexError::InvalidUrl)
        ));
        change(&mut doc, |tx| unindex_document(tx, &url(7)).unwrap());
        assert_eq!(documents(&doc).unwrap().len(), 1);
        assert!(matches!(
            change(&mut doc, |tx| unindex_document(tx, &url(7))),
            Err(IndexError::NotIndexed)
        ));
        assert!(matches!(
            change(&mut doc, |tx| set_document_title(tx, &url(9), "x")),
            Err(IndexError::NotIndexed)
        ));
    }

    #[test]
    fn threads_started_by_two_members_offline_both_stay_listed() {
        let mut a = new_index();
        let mut b = a.fork();
        change(&mut a, |tx| {
            index_document(tx, &url(1), IndexKind::Thread, "Ana's question", 1).unwrap()
        });
        change(&mut b, |tx| {
            index_document(tx, &url(2), IndexKind::Thread, "Ben's question", 2).unwrap()
        });
        a.merge(&mut b).unwrap();
        let titles: Vec<_> = documents(&a)
            .unwrap()
            .into_iter()
            .map(|d| d.title)
            .collect();
        assert_eq!(titles, ["Ana's question", "Ben's question"]);
    }

    #[test]
    fn index_kinds_point_at_their_document_kinds() {
        for (kind, doc_kind) in [
            (IndexKind::Meeting, DocKind::Meeting),
            (IndexKind::Series, DocKind::Series),
            (IndexKind::Thread, DocKind::Thread),
            (IndexKind::Resources, DocKind::Resources),
        ] {
            assert_eq!(kind.doc_kind(), doc_kind);
            assert_eq!(kind.name(), doc_kind.name());
        }
    }
}
