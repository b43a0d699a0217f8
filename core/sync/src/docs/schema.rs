//! Schema versions stamped on every document root.

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ScalarValue, Value, ROOT};
use thiserror::Error;

use crate::docs::fields::named_enum;

/// Root key holding the document kind.
pub const KIND_KEY: &str = "schemaKind";
/// Root key holding the schema version.
pub const VERSION_KEY: &str = "schemaVersion";

named_enum!(
    /// The kinds of workspace document. Each kind has one access level on the relay, so
    /// the names are the relay's document-binding kinds (`membership::BoundKind`).
    DocKind {
        /// A group's settings: profile, how it meets, crisis link (organisers write).
        Settings => "settings",
        /// A group's membership view and code of conduct (the relay alone writes).
        Roster => "roster",
        /// A group's index of its other documents (members write).
        Index => "index",
        /// A recurring meeting series.
        Series => "series",
        /// One meeting (an occurrence or a one-off).
        Meeting => "meeting",
        /// The group's resource list.
        Resources => "resources",
        /// One discussion thread.
        Thread => "thread",
        /// One member's reports to the facilitators (one document per reporter).
        Report => "report",
    }
);

impl DocKind {
    /// Every kind.
    pub const ALL: [DocKind; 8] = [
        DocKind::Settings,
        DocKind::Roster,
        DocKind::Index,
        DocKind::Series,
        DocKind::Meeting,
        DocKind::Resources,
        DocKind::Thread,
        DocKind::Report,
    ];

    /// The schema version this code writes and understands.
    pub const fn current_version(self) -> u64 {
        1
    }
}

/// Why a document cannot be read as the expected kind.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SchemaError {
    /// The document has no schema stamp (not a Cairn workspace document, or not synced yet).
    #[error("the document has no schema stamp")]
    Missing,
    /// The document is of another kind.
    #[error("expected a {expected} document, found {found}")]
    WrongKind {
        /// What the caller asked for.
        expected: &'static str,
        /// What the document says.
        found: String,
    },
    /// Written by a newer version of Cairn; update the app to read it.
    #[error(
        "{kind} document has schema version {found}; this version of Cairn reads up to {supported}"
    )]
    TooNew {
        /// The kind.
        kind: &'static str,
        /// The version in the document.
        found: u64,
        /// The newest this code reads.
        supported: u64,
    },
    /// A field has an unexpected shape (the document was edited by foreign code).
    #[error("field `{0}` has an unexpected shape")]
    Shape(String),
}

/// Writes the kind and current version on the root of a new document.
pub fn stamp(tx: &mut impl Transactable, kind: DocKind) -> Result<(), automerge::AutomergeError> {
    tx.put(ROOT, KIND_KEY, kind.name())?;
    tx.put(ROOT, VERSION_KEY, ScalarValue::Uint(kind.current_version()))?;
    Ok(())
}

/// Checks that `doc` is a `kind` document this code can read; returns its version.
pub fn check(doc: &impl ReadDoc, kind: DocKind) -> Result<u64, SchemaError> {
    let found = match doc.get(ROOT, KIND_KEY).map_err(|_| SchemaError::Missing)? {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(s) => s.to_string(),
            _ => return Err(SchemaError::Shape(KIND_KEY.into())),
        },
        Some((Value::Object(automerge::ObjType::Text), id)) => {
            doc.text(&id).map_err(|_| SchemaError::Missing)?
        }
        Some(_) => return Err(SchemaError::Shape(KIND_KEY.into())),
        None => return Err(SchemaError::Missing),
    };
    if found != kind.name() {
        return Err(SchemaError::WrongKind {
            expected: kind.name(),
            found,
        });
    }
    let version = match doc
        .get(ROOT, VERSION_KEY)
        .map_err(|_| SchemaError::Missing)?
    {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Uint(v) => *v,
            ScalarValue::Int(v) if *v >= 0 => *v as u64,
            ScalarValue::F64(v) if *v >= 0.0 && v.fract() == 0.0 => *v as u64,
            _ => return Err(SchemaError::Shape(VERSION_KEY.into())),
        },
        _ => return Err(SchemaError::Missing),
    };
    if version > kind.current_version() {
        return Err(SchemaError::TooNew {
            kind: kind.name(),
            found: version,
            supported: kind.current_version(),
        });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::Automerge;

    #[test]
    fn stamped_documents_check() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        stamp(&mut tx, DocKind::Meeting).unwrap();
        tx.commit();
        assert_eq!(check(&doc, DocKind::Meeting), Ok(1));
        assert!(matches!(
            check(&doc, DocKind::Thread),
            Err(SchemaError::WrongKind { .. })
        ));
    }

    #[test]
    fn kind_names_are_the_relays_binding_kinds() {
        let names: Vec<_> = DocKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            [
                "settings",
                "roster",
                "index",
                "series",
                "meeting",
                "resources",
                "thread",
                "report"
            ]
        );
        for kind in DocKind::ALL {
            assert_eq!(DocKind::from_name(kind.name()), Some(kind));
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.name())
            );
        }
        assert_eq!(DocKind::from_name("group"), None);
    }

    #[test]
    fn a_newer_version_is_a_typed_error() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        stamp(&mut tx, DocKind::Settings).unwrap();
        tx.put(ROOT, VERSION_KEY, ScalarValue::Uint(7)).unwrap();
        tx.commit();
        assert_eq!(
            check(&doc, DocKind::Settings),
            Err(SchemaError::TooNew {
                kind: "settings",
                found: 7,
                supported: 1
            })
        );
        assert_eq!(
            check(&Automerge::new(), DocKind::Settings),
            Err(SchemaError::Missing)
        );
    }
}
