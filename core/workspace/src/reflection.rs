//! The private journal: reflections a peer worker writes on their own device.
//!
//! Reflections are not Automerge documents and never reach the sync engine. Each entry is
//! serialised, sealed with XChaCha20-Poly1305 under a 32-byte key the app keeps in the
//! Keychain/Keystore, and written to the device's [`Storage`] under `["reflection", id]`.
//! The engine only ever loads keys under a document id, and `"reflection"` cannot parse as
//! one (it is not base58: `l` is outside the alphabet), so a journal sharing the phone's
//! store with the engine is never loaded, announced or synced.
//!
//! Sharing is the member's explicit act: [`share_excerpt`] cuts exactly the text the app
//! previewed, and [`post_excerpt`] puts that text, and nothing else, into a thread post.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use automerge::transaction::Transactable;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::thread::{self, PostId, ThreadError};
use cairn_sync::ids::MemberId;
use cairn_sync::store::{random_uuid, Storage, StoreError};

/// The first key part of every journal entry.
pub const KEY_PREFIX: &str = "reflection";

/// Format byte in front of every sealed entry, so a later format can be told apart.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// Why a journal call failed.
#[derive(Debug, Error)]
pub enum ReflectionError {
    /// The entry does not open with this key: the app passed another key than the one it
    /// was written with (e.g. the Keychain item was reset), or the bytes were tampered with.
    #[error("the journal key does not open this entry")]
    WrongKey,
    /// The stored entry is not in a format this code reads (truncated or damaged bytes).
    #[error("journal entry {id} is corrupt")]
    Corrupt {
        /// The entry's id (never its content).
        id: String,
    },
    /// The device store failed (e.g. disk full); nothing was kept.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The excerpt range lies outside the chosen text or splits a character.
    #[error("the excerpt range {start}..{end} is not inside the text (length {len})")]
    BadRange {
        /// Range start (UTF-16 code units).
        start: usize,
        /// Range end (UTF-16 code units).
        end: usize,
        /// Length of the text (UTF-16 code units).
        len: usize,
    },
    /// The excerpt source names a prompt this entry has no answer for.
    #[error("the entry has no answer for prompt {0}")]
    NoSuchAnswer(String),
    /// An empty excerpt cannot be shared (a thread post needs a body).
    #[error("the excerpt is empty")]
    EmptyExcerpt,
    /// Posting the excerpt into the thread failed.
    #[error(transparent)]
    Thread(#[from] ThreadError),
}

/// A journal entry's id (a random UUID).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReflectionId(String);

impl ReflectionId {
    /// A fresh random id.
    pub fn random() -> Self {
        ReflectionId(random_uuid().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ReflectionId {
    fn from(s: &str) -> Self {
        ReflectionId(s.to_owned())
    }
}

impl std::fmt::Display for ReflectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One prompt of a reflection template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prompt {
    /// Stable key the answer is stored under.
    pub key: &'static str,
    /// The question shown to the member.
    pub question: &'static str,
}

/// A structure for a reflection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReflectionTemplate {
    /// Gibbs' reflective cycle (1988): six stages from what happened to what to do next time.
    Gibbs,
}

const GIBBS: [Prompt; 6] = [
    Prompt {
        key: "description",
        question: "What happened?",
    },
    Prompt {
        key: "feelings",
        question: "What were you thinking and feeling?",
    },
    Prompt {
        key: "evaluation",
        question: "What was good and bad about the experience?",
    },
    Prompt {
        key: "analysis",
        question: "What sense can you make of the situation?",
    },
    Prompt {
        key: "conclusion",
        question: "What else could you have done?",
    },
    Prompt {
        key: "actionPlan",
        question: "If it arose again, what would you do?",
    },
];

impl ReflectionTemplate {
    /// The template's prompts, in the order the app asks them.
    pub fn prompts(self) -> &'static [Prompt] {
        match self {
            ReflectionTemplate::Gibbs => &GIBBS,
        }
    }
}

/// A journal entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reflection {
    /// Its id.
    pub id: ReflectionId,
    /// When it was first written (ms since the Unix epoch).
    pub created_ms: i64,
    /// When it was last saved.
    pub updated_ms: i64,
    /// The template it follows, if any.
    pub template: Option<ReflectionTemplate>,
    /// A title (may be empty).
    pub title: String,
    /// Free text (the whole entry when there is no template).
    pub body: String,
    /// Answers by prompt key (see [`ReflectionTemplate::prompts`]).
    pub answers: BTreeMap<String, String>,
}

impl Reflection {
    /// A new, empty entry.
    pub fn new(now_ms: i64, template: Option<ReflectionTemplate>, title: &str) -> Self {
        Reflection {
            id: ReflectionId::random(),
            created_ms: now_ms,
            updated_ms: now_ms,
            template,
            title: title.to_owned(),
            body: String::new(),
            answers: BTreeMap::new(),
        }
    }
}

/// Which text of an entry an excerpt is cut from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExcerptSource {
    /// The free-text body.
    Body,
    /// The answer to one prompt, by key.
    Answer(String),
}

/// Exactly the text the member previewed and chose to share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Excerpt {
    /// The text, unchanged.
    pub text: String,
}

/// Cuts the excerpt the app previewed: `range` is in UTF-16 code units (Swift, Kotlin and JS
/// string indexes) into the chosen text. The result is exactly that text, with nothing
/// trimmed or added, so what the member saw is what is posted.
pub fn share_excerpt(
    entry: &Reflection,
    source: &ExcerptSource,
    range: Range<usize>,
) -> Result<Excerpt, ReflectionError> {
    let text = match source {
        ExcerptSource::Body => &entry.body,
        ExcerptSource::Answer(key) => entry
            .answers
            .get(key)
            .ok_or_else(|| ReflectionError::NoSuchAnswer(key.clone()))?,
    };
    let units: Vec<u16> = text.encode_utf16().collect();
    let bad = || ReflectionError::BadRange {
        start: range.start,
        end: range.end,
        len: units.len(),
    };
    if range.start > range.end || range.end > units.len() {
        return Err(bad());
    }
    if range.is_empty() {
        return Err(ReflectionError::EmptyExcerpt);
    }
    // A range that splits a surrogate pair does not match any text the member could see.
    let text = String::from_utf16(&units[range.clone()]).map_err(|_| bad())?;
    Ok(Excerpt { text })
}

/// Posts a shared excerpt into a thread document as a new post by `author` (call inside
/// `Client::change` on the thread). The post body is exactly `excerpt.text`.
pub fn post_excerpt(
    tx: &mut impl Transactable,
    author: &MemberId,
    excerpt: &Excerpt,
    now_ms: i64,
) -> Result<PostId, ReflectionError> {
    if excerpt.text.is_empty() {
        return Err(ReflectionError::EmptyExcerpt);
    }
    Ok(thread::add_post(
        tx,
        author,
        &excerpt.text,
        &[],
        None,
        now_ms,
    )?)
}

/// The encrypted journal on one device.
pub struct Journal {
    store: Arc<dyn Storage>,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

fn key_of(id: &ReflectionId) -> Vec<String> {
    vec![KEY_PREFIX.to_owned(), id.0.clone()]
}

/// 24 bytes of OS randomness for a nonce, from the UUID v4 source already in the tree.
/// A v4 UUID fixes 6 bits in bytes 6 and 8; the other 14 bytes are fully random.
fn random_nonce() -> [u8; NONCE_LEN] {
    let mut out = [0u8; NONCE_LEN];
    let mut filled = 0;
    while filled < NONCE_LEN {
        let uuid = random_uuid();
        for (i, b) in uuid.as_bytes().iter().enumerate() {
            if i == 6 || i == 8 || filled == NONCE_LEN {
                continue;
            }
            out[filled] = *b;
            filled += 1;
        }
    }
    out
}

impl Journal {
    /// Opens the journal in `store` with the app's 32-byte key.
    pub fn open(store: Arc<dyn Storage>, key: &[u8; 32]) -> Journal {
        Journal {
            store,
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Seals and saves an entry; returns once it is durable on this device.
    pub fn save(&self, entry: &Reflection) -> Result<(), ReflectionError> {
        let plain = serde_json::to_vec(entry).map_err(|_| ReflectionError::Corrupt {
            id: entry.id.0.clone(),
        })?;
        let nonce = random_nonce();
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: entry.id.0.as_bytes(),
                },
            )
            // Encryption only fails for messages beyond the cipher's size limit (~256 GiB).
            .map_err(|_| ReflectionError::Corrupt {
                id: entry.id.0.clone(),
            })?;
        let mut blob = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        blob.push(FORMAT_V1);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        self.store.put(&key_of(&entry.id), &blob)?;
        self.store.flush()?;
        Ok(())
    }

    fn open_blob(&self, id: &ReflectionId, blob: &[u8]) -> Result<Reflection, ReflectionError> {
        let corrupt = || ReflectionError::Corrupt { id: id.0.clone() };
        if blob.len() < 1 + NONCE_LEN || blob[0] != FORMAT_V1 {
            return Err(corrupt());
        }
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(&blob[1..1 + NONCE_LEN]),
                Payload {
                    msg: &blob[1 + NONCE_LEN..],
                    aad: id.0.as_bytes(),
                },
            )
            .map_err(|_| ReflectionError::WrongKey)?;
        let entry: Reflection = serde_json::from_slice(&plain).map_err(|_| corrupt())?;
        if entry.id != *id {
            return Err(corrupt());
        }
        Ok(entry)
    }

    /// Reads one entry.
    pub fn get(&self, id: &ReflectionId) -> Result<Option<Reflection>, ReflectionError> {
        match self.store.load(&key_of(id))? {
            Some(blob) => Ok(Some(self.open_blob(id, &blob)?)),
            None => Ok(None),
        }
    }

    /// Every entry, oldest first.
    pub fn list(&self) -> Result<Vec<Reflection>, ReflectionError> {
        let mut out = Vec::new();
        for (key, blob) in self.store.load_range(&[KEY_PREFIX.to_owned()])? {
            if key.len() != 2 {
                continue;
            }
            let id = ReflectionId(key[1].clone());
            out.push(self.open_blob(&id, &blob)?);
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    /// Removes an entry from this device (durably).
    pub fn delete(&self, id: &ReflectionId) -> Result<(), ReflectionError> {
        self.store.delete(&key_of(id))?;
        self.store.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::Automerge;
    use cairn_sync::store::MemoryStore;

    const KEY: [u8; 32] = [7; 32];

    fn gibbs_entry() -> Reflection {
        let mut e = Reflection::new(1_000, Some(ReflectionTemplate::Gibbs), "After the circle");
        e.answers.insert(
            "feelings".into(),
            "I felt shaky when Sam talked about relapse 🌧 but steadier after.".into(),
        );
        e.body = "Note to self: ask my supervisor about boundaries.".into();
        e
    }

    #[test]
    fn an_entry_round_trips() {
        let store = Arc::new(MemoryStore::default());
        let journal = Journal::open(store, &KEY);
        let entry = gibbs_entry();
        journal.save(&entry).unwrap();
        assert_eq!(journal.get(&entry.id).unwrap(), Some(entry.clone()));
        assert_eq!(journal.list().unwrap(), vec![entry.clone()]);
        journal.delete(&entry.id).unwrap();
        assert_eq!(journal.get(&entry.id).unwrap(), None);
    }

    #[test]
    fn another_key_is_wrong_key() {
        let store = Arc::new(MemoryStore::default());
        let entry = gibbs_entry();
        Journal::open(store.clone(), &KEY).save(&entry).unwrap();
        let other = Journal::open(store, &[8; 32]);
        assert!(matches!(
            other.get(&entry.id),
            Err(ReflectionError::WrongKey)
        ));
    }

    #[test]
    fn stored_bytes_do_not_contain_the_plaintext() {
        let store = Arc::new(MemoryStore::default());
        let entry = gibbs_entry();
        Journal::open(store.clone(), &KEY).save(&entry).unwrap();
        for key in store.keys() {
            let blob = store.load(&key).unwrap().unwrap();
            for secret in ["shaky", "supervisor", "After the circle", "feelings"] {
                assert!(
                    !blob.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{secret} stored in the clear"
                );
            }
        }
    }

    #[test]
    fn an_entry_moved_to_another_id_does_not_open() {
        // The id is the AAD: a blob copied under another id is refused, not misattributed.
        let store = Arc::new(MemoryStore::default());
        let journal = Journal::open(store.clone(), &KEY);
        let entry = gibbs_entry();
        journal.save(&entry).unwrap();
        let blob = store.load(&key_of(&entry.id)).unwrap().unwrap();
        let other = ReflectionId::random();
        store.put(&key_of(&other), &blob).unwrap();
        assert!(matches!(
            journal.get(&other),
            Err(ReflectionError::WrongKey)
        ));
    }

    #[test]
    fn truncated_bytes_are_corrupt() {
        let store = Arc::new(MemoryStore::default());
        let journal = Journal::open(store.clone(), &KEY);
        let id = ReflectionId::random();
        store.put(&key_of(&id), &[FORMAT_V1, 1, 2]).unwrap();
        assert!(matches!(
            journal.get(&id),
            Err(ReflectionError::Corrupt { .. })
        ));
    }

    #[test]
    fn two_saves_use_different_nonces() {
        let store = Arc::new(MemoryStore::default());
        let journal = Journal::open(store.clone(), &KEY);
        let entry = gibbs_entry();
        journal.save(&entry).unwrap();
        let first = store.load(&key_of(&entry.id)).unwrap().unwrap();
        journal.save(&entry).unwrap();
        let second = store.load(&key_of(&entry.id)).unwrap().unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn the_journal_key_is_not_a_document_id() {
        assert!(KEY_PREFIX.parse::<cairn_sync::ids::DocumentId>().is_err());
    }

    #[test]
    fn gibbs_has_six_prompts_in_order() {
        let keys: Vec<_> = ReflectionTemplate::Gibbs
            .prompts()
            .iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(
            keys,
            [
                "description",
                "feelings",
                "evaluation",
                "analysis",
                "conclusion",
                "actionPlan"
            ]
        );
    }

    #[test]
    fn an_excerpt_is_exactly_the_previewed_text() {
        let entry = gibbs_entry();
        let answer = &entry.answers["feelings"];
        // The app previews "shaky when Sam talked about relapse 🌧" (UTF-16 indexes: the
        // emoji is two code units).
        assert!(answer.starts_with("I felt "));
        let start = "I felt ".encode_utf16().count();
        let end = start
            + "shaky when Sam talked about relapse 🌧"
                .encode_utf16()
                .count();
        let excerpt = share_excerpt(
            &entry,
            &ExcerptSource::Answer("feelings".into()),
            start..end,
        )
        .unwrap();
        assert_eq!(excerpt.text, "shaky when Sam talked about relapse 🌧");
        // Cutting through the emoji's surrogate pair is refused.
        assert!(matches!(
            share_excerpt(
                &entry,
                &ExcerptSource::Answer("feelings".into()),
                start..end - 1
            ),
            Err(ReflectionError::BadRange { .. })
        ));
        assert!(matches!(
            share_excerpt(&entry, &ExcerptSource::Body, 0..10_000),
            Err(ReflectionError::BadRange { .. })
        ));
        assert!(matches!(
            share_excerpt(&entry, &ExcerptSource::Answer("analysis".into()), 0..1),
            Err(ReflectionError::NoSuchAnswer(_))
        ));
    }

    #[test]
    fn a_shared_excerpt_becomes_exactly_one_post() {
        let entry = gibbs_entry();
        let excerpt = share_excerpt(&entry, &ExcerptSource::Body, 0..13).unwrap();
        assert_eq!(excerpt.text, "Note to self:");
        let mut doc = Automerge::new_with_encoding(automerge::TextEncoding::Utf16CodeUnit);
        let author = MemberId::from("m1");
        doc.transact(|tx| {
            thread::init(tx, "Boundaries", &author, 5)?;
            post_excerpt(tx, &author, &excerpt, 10)
        })
        .map_err(|f| f.error)
        .unwrap();
        let posts = thread::posts(&doc).unwrap();
        assert_eq!(posts.len(), 1);
        assert_eq!(posts[0].body, "Note to self:");
        assert_eq!(posts[0].author, author);
    }
}
