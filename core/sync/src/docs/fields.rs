//! Readers and writers over raw Automerge shared by the workspace modules: strings are
//! read from scalars or Text alike (JS automerge 3 writes Text), numbers from any numeric
//! scalar, and a value of the wrong shape is a [`SchemaError::Shape`] naming the key.

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, Value};

use crate::docs::schema::SchemaError;

fn shape(key: &str) -> SchemaError {
    SchemaError::Shape(key.to_owned())
}

fn scalar(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<ScalarValue>, SchemaError> {
    match doc.get(obj, key).map_err(|_| shape(key))? {
        None => Ok(None),
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Null => Ok(None),
            other => Ok(Some(other.clone())),
        },
        Some(_) => Err(shape(key)),
    }
}

/// A string, stored as a scalar or as Text.
pub fn string(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<String>, SchemaError> {
    match doc.get(obj, key).map_err(|_| shape(key))? {
        Some((Value::Object(ObjType::Text), id)) => doc.text(&id).map(Some).map_err(|_| shape(key)),
        Some((Value::Object(_), _)) => Err(shape(key)),
        _ => match scalar(doc, obj, key)? {
            None => Ok(None),
            Some(ScalarValue::Str(s)) => Ok(Some(s.to_string())),
            Some(_) => Err(shape(key)),
        },
    }
}

/// An integer (JS numbers may arrive as floats; counters and timestamps count too).
pub fn int(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<i64>, SchemaError> {
    match scalar(doc, obj, key)? {
        None => Ok(None),
        Some(ScalarValue::F64(f)) if f.fract() == 0.0 => Ok(Some(f as i64)),
        Some(ScalarValue::F64(_)) => Err(shape(key)),
        Some(s) => s.as_i64().map(Some).ok_or_else(|| shape(key)),
    }
}

/// A boolean.
pub fn boolean(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<bool>, SchemaError> {
    match scalar(doc, obj, key)? {
        None => Ok(None),
        Some(s) => s.as_bool().map(Some).ok_or_else(|| shape(key)),
    }
}

/// A byte string.
pub fn bytes(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<Vec<u8>>, SchemaError> {
    match scalar(doc, obj, key)? {
        None => Ok(None),
        Some(ScalarValue::Bytes(b)) => Ok(Some(b)),
        Some(_) => Err(shape(key)),
    }
}

/// A nested map (or table).
pub fn object(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<ObjId>, SchemaError> {
    match doc.get(obj, key).map_err(|_| shape(key))? {
        None => Ok(None),
        Some((Value::Object(ObjType::Map | ObjType::Table), id)) => Ok(Some(id)),
        Some((Value::Scalar(s), _)) if s.is_null() => Ok(None),
        Some(_) => Err(shape(key)),
    }
}

/// A nested list.
pub fn list(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Result<Option<ObjId>, SchemaError> {
    match doc.get(obj, key).map_err(|_| shape(key))? {
        None => Ok(None),
        Some((Value::Object(ObjType::List), id)) => Ok(Some(id)),
        Some((Value::Scalar(s), _)) if s.is_null() => Ok(None),
        Some(_) => Err(shape(key)),
    }
}

/// The maps in a list, with their indexes (other elements are a shape error).
pub fn maps_in_list(
    doc: &impl ReadDoc,
    list: &ObjId,
    key: &str,
) -> Result<Vec<(usize, ObjId)>, SchemaError> {
    let mut out = Vec::with_capacity(doc.length(list));
    for i in 0..doc.length(list) {
        match doc.get(list, i).map_err(|_| shape(key))? {
            Some((Value::Object(ObjType::Map | ObjType::Table), id)) => out.push((i, id)),
            _ => return Err(shape(key)),
        }
    }
    Ok(out)
}

/// Writes a new Text holding `value` under `key`.
pub fn put_text(
    tx: &mut impl Transactable,
    obj: &ObjId,
    key: &str,
    value: &str,
) -> Result<ObjId, AutomergeError> {
    let text = tx.put_object(obj, key, ObjType::Text)?;
    tx.splice_text(&text, 0, 0, value)?;
    Ok(text)
}

/// Makes the Text under `key` read `value` with the smallest splices (so concurrent
/// edits elsewhere in it survive); creates it if missing or stored as a scalar.
pub fn set_text<E: From<AutomergeError> + From<SchemaError>>(
    tx: &mut impl Transactable,
    obj: &ObjId,
    key: &str,
    value: &str,
) -> Result<(), E> {
    match tx.get(obj, key).map_err(|_| shape(key))? {
        Some((Value::Object(ObjType::Text), id)) => tx.update_text(&id, value)?,
        Some((Value::Object(_), _)) => return Err(shape(key).into()),
        _ => {
            put_text(tx, obj, key, value)?;
        }
    }
    Ok(())
}

/// The map under `key`, created if missing.
pub fn map_in<E: From<AutomergeError> + From<SchemaError>>(
    tx: &mut impl Transactable,
    obj: &ObjId,
    key: &str,
) -> Result<ObjId, E> {
    match object(tx, obj, key)? {
        Some(id) => Ok(id),
        None => Ok(tx.put_object(obj, key, ObjType::Map)?),
    }
}

/// The list under `key`, created if missing.
pub fn list_in<E: From<AutomergeError> + From<SchemaError>>(
    tx: &mut impl Transactable,
    obj: &ObjId,
    key: &str,
) -> Result<ObjId, E> {
    match list(tx, obj, key)? {
        Some(id) => Ok(id),
        None => Ok(tx.put_object(obj, key, ObjType::List)?),
    }
}

/// Declares an enum stored in documents by name: `name()`/`from_name()` give the stored
/// text and serde uses the same text, so documents and JSON agree. Every `$text` must be
/// the camelCase form of its variant, which is what serde writes.
#[doc(hidden)]
#[macro_export]
macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// The name stored in the document.
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses a stored name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

#[doc(hidden)]
pub use crate::named_enum;
