//! The documents the simulated users edit, and how the simulator compares them.
//!
//! Every document is a map with a few scalar keys and one collaborative Text object under
//! `"text"`, made once by the document's creator (two peers making a Text under the same key
//! would be a conflict the app never produces).

use std::collections::BTreeMap;

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, AutomergeError, ObjType, ReadDoc, Value, ROOT};
use cairn_sync::store::StorageKey;
use rand::Rng;

/// The materialised state of a document: each root key and every value it holds (more than
/// one while concurrent puts conflict), rendered as text and sorted.
pub type Content = BTreeMap<String, Vec<String>>;

/// Characters the simulated users type: ASCII and a few BMP letters (one UTF-16 unit each,
/// so any index is a valid splice point).
const ALPHABET: &[char] = &['a', 'b', 'c', 'd', 'e', ' ', 'é', 'ß', '中', 'ñ'];

fn random_text(rng: &mut impl Rng, max: usize) -> String {
    let n = rng.gen_range(0..=max);
    (0..n)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
        .collect()
}

/// The creator's first change: a title and the shared Text object.
pub fn init_document(tx: &mut Transaction<'_>, rng: &mut impl Rng) -> Result<(), AutomergeError> {
    tx.put(ROOT, "title", random_text(rng, 8))?;
    let text = tx.put_object(ROOT, "text", ObjType::Text)?;
    tx.splice_text(&text, 0, 0, &random_text(rng, 6))?;
    Ok(())
}

/// Whether a document has received its creator's first change (so users can edit it).
pub fn is_editable(doc: &Automerge) -> bool {
    matches!(
        doc.get(ROOT, "text"),
        Ok(Some((Value::Object(ObjType::Text), _)))
    )
}

/// One to three random operations in one transaction: puts, deletes and text splices.
pub fn random_edit(tx: &mut Transaction<'_>, rng: &mut impl Rng) -> Result<(), AutomergeError> {
    for _ in 0..rng.gen_range(1..=3) {
        let key = format!("k{}", rng.gen_range(0..6));
        match rng.gen_range(0..10) {
            0..=3 => {
                let Some((Value::Object(ObjType::Text), text)) = tx.get(ROOT, "text")? else {
                    continue;
                };
                let len = tx.length(&text);
                let pos = rng.gen_range(0..=len);
                let del = rng.gen_range(0..=(len - pos).min(3));
                tx.splice_text(&text, pos, del as isize, &random_text(rng, 5))?;
            }
            4..=6 => tx.put(ROOT, key, rng.gen_range(0..1000i64))?,
            7..=8 => tx.put(ROOT, key, random_text(rng, 4))?,
            _ => {
                if tx.get(ROOT, &key)?.is_some() {
                    tx.delete(ROOT, key)?;
                }
            }
        }
    }
    Ok(())
}

/// Renders a document for comparison.
pub fn materialise(doc: &Automerge) -> Content {
    let mut content = Content::new();
    for key in doc.keys(ROOT) {
        let mut values: Vec<String> = doc
            .get_all(ROOT, key.as_str())
            .expect("the key was just listed")
            .into_iter()
            .map(|(value, id)| match value {
                Value::Object(ObjType::Text) => {
                    format!("text:{:?}", doc.text(&id).expect("a text object"))
                }
                Value::Object(kind) => format!("object:{kind:?}"),
                Value::Scalar(s) => format!("{s:?}"),
            })
            .collect();
        values.sort();
        content.insert(key, values);
    }
    content
}

/// Loads a document the way the engine does: every `incremental` and `snapshot` chunk,
/// concatenated (loading is idempotent, so overlapping chunks are fine).
pub fn load_chunks(chunks: &[(StorageKey, Vec<u8>)]) -> Result<Automerge, AutomergeError> {
    let mut doc = Automerge::new();
    for (key, bytes) in chunks {
        if key.len() == 3 && (key[1] == "incremental" || key[1] == "snapshot") {
            doc.load_incremental(bytes)?;
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn random_edits_apply_and_materialise() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut doc = Automerge::new_with_encoding(automerge::TextEncoding::Utf16CodeUnit);
        let mut tx = doc.transaction();
        init_document(&mut tx, &mut rng).unwrap();
        tx.commit();
        assert!(is_editable(&doc));
        for _ in 0..200 {
            let mut tx = doc.transaction();
            random_edit(&mut tx, &mut rng).unwrap();
            tx.commit();
        }
        let content = materialise(&doc);
        assert!(content["text"][0].starts_with("text:"));
        let reloaded =
            load_chunks(&[(vec!["d".into(), "snapshot".into(), "h".into()], doc.save())]).unwrap();
        assert_eq!(materialise(&reloaded), content);
    }
}
