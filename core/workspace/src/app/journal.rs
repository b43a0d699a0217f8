//! The private journal: reflections a member writes on this device.
//!
//! Entries never leave the device. They are not Automerge documents: each is sealed with
//! the journal key the app gave [`crate::app::CairnConfig`] (from the Keychain/Keystore)
//! and kept in the device store, where the sync engine never loads, announces or syncs
//! it. The only way text leaves is [`Journal::share_to_thread`]: the member picks a passage,
//! the app shows [`Journal::preview_excerpt`], and exactly that text becomes a thread post.

use std::collections::BTreeMap;

use crate::app::group::my_member_id;
use crate::app::{CairnError, Journal, Thread};
use crate::reflection::{self as model, Reflection, ReflectionError, ReflectionId};

/// A structure for a reflection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReflectionTemplate {
    /// Gibbs' reflective cycle: six prompts from what happened to what to do next time.
    Gibbs,
}

/// One prompt of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    /// The key its answer is stored under.
    pub key: String,
    /// The question shown to the member.
    pub question: String,
}

/// The answer to one prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The prompt's key.
    pub key: String,
    /// What the member wrote.
    pub text: String,
}

/// A journal entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReflectionRecord {
    /// Its id.
    pub id: String,
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
    /// Answers, in the template's prompt order (then any others by key).
    pub answers: Vec<Answer>,
}

/// Which text of an entry an excerpt is cut from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExcerptSource {
    /// The free-text body.
    Body,
    /// The answer to one prompt.
    Answer {
        /// The prompt's key.
        key: String,
    },
}

/// The passage a member chose to share: a range of UTF-16 code units (Swift, Kotlin and
/// JS string indexes) of one text of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExcerptSelection {
    /// Which text.
    pub source: ExcerptSource,
    /// First code unit.
    pub start: u32,
    /// One past the last code unit.
    pub end: u32,
}

impl From<ReflectionError> for CairnError {
    fn from(e: ReflectionError) -> Self {
        match e {
            ReflectionError::WrongKey => CairnError::invalid(
                "the journal key does not open the journal (was the keystore item replaced?)",
            ),
            ReflectionError::Corrupt { .. } => CairnError::generic(e),
            ReflectionError::Store(e) => e.into(),
            ReflectionError::Thread(e) => e.into(),
            ReflectionError::NoSuchAnswer(_) => CairnError::not_found(e.to_string()),
            ReflectionError::BadRange { .. } | ReflectionError::EmptyExcerpt => {
                CairnError::invalid(e.to_string())
            }
        }
    }
}

impl From<ReflectionTemplate> for model::ReflectionTemplate {
    fn from(t: ReflectionTemplate) -> Self {
        match t {
            ReflectionTemplate::Gibbs => model::ReflectionTemplate::Gibbs,
        }
    }
}

impl From<model::ReflectionTemplate> for ReflectionTemplate {
    fn from(t: model::ReflectionTemplate) -> Self {
        match t {
            model::ReflectionTemplate::Gibbs => ReflectionTemplate::Gibbs,
        }
    }
}

impl From<Reflection> for ReflectionRecord {
    fn from(r: Reflection) -> Self {
        let mut answers = r.answers;
        let mut ordered = Vec::with_capacity(answers.len());
        if let Some(t) = r.template {
            for p in t.prompts() {
                if let Some(text) = answers.remove(p.key) {
                    ordered.push(Answer {
                        key: p.key.to_owned(),
                        text,
                    });
                }
            }
        }
        ordered.extend(answers.into_iter().map(|(key, text)| Answer { key, text }));
        ReflectionRecord {
            id: r.id.to_string(),
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            template: r.template.map(Into::into),
            title: r.title,
            body: r.body,
            answers: ordered,
        }
    }
}

/// The answers as the model keeps them; a key the template does not ask is Invalid.
fn answers(
    template: Option<ReflectionTemplate>,
    list: Vec<Answer>,
) -> Result<BTreeMap<String, String>, CairnError> {
    if let Some(t) = template {
        let prompts = model::ReflectionTemplate::from(t).prompts();
        if let Some(a) = list
            .iter()
            .find(|a| !prompts.iter().any(|p| p.key == a.key))
        {
            return Err(CairnError::invalid(format!(
                "the template has no prompt {:?}",
                a.key
            )));
        }
    }
    Ok(list.into_iter().map(|a| (a.key, a.text)).collect())
}

impl Journal {
    /// Runs blocking journal work on Cairn's runtime.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&model::Journal) -> Result<T, CairnError> + Send + 'static,
    ) -> Result<T, CairnError> {
        let cairn = self.cairn.clone();
        self.cairn
            .run(async move { f(cairn.journal_store()) })
            .await
    }

    async fn load(&self, id: &str) -> Result<Reflection, CairnError> {
        let id = ReflectionId::from(id);
        self.with(move |j| {
            j.get(&id)?
                .ok_or_else(|| CairnError::not_found(format!("reflection {id}")))
        })
        .await
    }

    /// A template's prompts, in the order the app asks them.
    pub fn prompts(&self, template: ReflectionTemplate) -> Vec<Prompt> {
        model::ReflectionTemplate::from(template)
            .prompts()
            .iter()
            .map(|p| Prompt {
                key: p.key.to_owned(),
                question: p.question.to_owned(),
            })
            .collect()
    }

    /// Every entry, oldest first. A journal key other than the one the entries were
    /// written with is Invalid (nothing is shown rather than anything guessed).
    pub async fn list(&self) -> Result<Vec<ReflectionRecord>, CairnError> {
        self.with(|j| Ok(j.list()?.into_iter().map(Into::into).collect()))
            .await
    }

    /// One entry (NotFound if there is none with this id).
    pub async fn get(&self, reflection_id: &str) -> Result<ReflectionRecord, CairnError> {
        Ok(self.load(reflection_id).await?.into())
    }

    /// Writes a new entry, durably on this device only; returns its id.
    pub async fn write(
        &self,
        title: &str,
        template: Option<ReflectionTemplate>,
        body: &str,
        answers_: Vec<Answer>,
    ) -> Result<String, CairnError> {
        let answers = answers(template, answers_)?;
        let mut entry = Reflection::new(self.cairn.now_ms(), template.map(Into::into), title);
        entry.body = body.to_owned();
        entry.answers = answers;
        let id = entry.id.to_string();
        self.with(move |j| Ok(j.save(&entry)?)).await?;
        Ok(id)
    }

    /// Saves new title, template, body and answers over the entry with `reflection.id`
    /// (NotFound if there is none); its creation time stays and its update time is now.
    pub async fn update(&self, reflection: ReflectionRecord) -> Result<(), CairnError> {
        let answers = answers(reflection.template, reflection.answers)?;
        let mut entry = self.load(&reflection.id).await?;
        entry.title = reflection.title;
        entry.template = reflection.template.map(Into::into);
        entry.body = reflection.body;
        entry.answers = answers;
        entry.updated_ms = self.cairn.now_ms().max(entry.created_ms);
        self.with(move |j| Ok(j.save(&entry)?)).await
    }

    /// Deletes an entry from this device, durably (NotFound if there is none).
    pub async fn delete(&self, reflection_id: &str) -> Result<(), CairnError> {
        let entry = self.load(reflection_id).await?;
        self.with(move |j| Ok(j.delete(&entry.id)?)).await
    }

    /// Exactly the text that [`Journal::share_to_thread`] would post for this selection,
    /// for the app to show before the member confirms.
    pub async fn preview_excerpt(
        &self,
        reflection_id: &str,
        selection: ExcerptSelection,
    ) -> Result<String, CairnError> {
        let entry = self.load(reflection_id).await?;
        Ok(excerpt(&entry, &selection)?.text)
    }

    /// Posts the selected passage, exactly as previewed and nothing else, into `thread`
    /// as this member's post; returns the post's id. The entry itself stays private.
    pub async fn share_to_thread(
        &self,
        reflection_id: &str,
        selection: ExcerptSelection,
        thread: &Thread,
    ) -> Result<String, CairnError> {
        let entry = self.load(reflection_id).await?;
        let excerpt = excerpt(&entry, &selection)?;
        let me = my_member_id(&thread.cairn, &thread.group).await?;
        let now = thread.cairn.now_ms();
        thread
            .cairn
            .change_doc(thread.doc, move |tx| {
                Ok(model::post_excerpt(tx, &me, &excerpt, now)?.to_string())
            })
            .await
    }
}

fn excerpt(entry: &Reflection, selection: &ExcerptSelection) -> Result<model::Excerpt, CairnError> {
    let source = match &selection.source {
        ExcerptSource::Body => model::ExcerptSource::Body,
        ExcerptSource::Answer { key } => model::ExcerptSource::Answer(key.clone()),
    };
    Ok(model::share_excerpt(
        entry,
        &source,
        selection.start as usize..selection.end as usize,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::group::fixture;
    use crate::model::group::Role;
    use cairn_sync::store::{SledConfig, SledStore, Storage};

    fn gibbs() -> Vec<Answer> {
        vec![
            Answer {
                key: "feelings".into(),
                text: "Shaky 🌧 then steadier.".into(),
            },
            Answer {
                key: "description".into(),
                text: "Sam talked about relapse.".into(),
            },
        ]
    }

    #[test]
    fn the_journal_round_trips_on_the_device_and_syncs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cairn = fixture::cairn(&dir);
        let journal = cairn.journal();
        let id = rt.block_on(async {
            let id = journal
                .write(
                    "After the circle",
                    Some(ReflectionTemplate::Gibbs),
                    "Ask about boundaries.",
                    gibbs(),
                )
                .await
                .unwrap();
            let other = journal
                .write("Plain", None, "Just words", vec![])
                .await
                .unwrap();
            let got = journal.get(&id).await.unwrap();
            assert_eq!(got.title, "After the circle");
            assert_eq!(got.body, "Ask about boundaries.");
            assert_eq!(
                got.answers
                    .iter()
                    .map(|a| a.key.as_str())
                    .collect::<Vec<_>>(),
                ["description", "feelings"],
                "in the template's order"
            );

            let mut changed = got.clone();
            changed.body = "Asked; it helped.".into();
            journal.update(changed).await.unwrap();
            let again = journal.get(&id).await.unwrap();
            assert_eq!(again.body, "Asked; it helped.");
            assert_eq!(again.created_ms, got.created_ms);
            assert!(again.updated_ms >= got.updated_ms);

            let listed = journal.list().await.unwrap();
            assert_eq!(listed.len(), 2);
            journal.delete(&other).await.unwrap();
            assert!(matches!(
                journal.get(&other).await,
                Err(CairnError::NotFound { .. })
            ));
            assert!(matches!(
                journal.delete(&other).await,
                Err(CairnError::NotFound { .. })
            ));
            assert!(matches!(
                journal
                    .write(
                        "x",
                        Some(ReflectionTemplate::Gibbs),
                        "",
                        vec![Answer {
                            key: "mood".into(),
                            text: "x".into()
                        }]
                    )
                    .await,
                Err(CairnError::Invalid { .. })
            ));
            let known = cairn
                .inner
                .client
                .with_engine(|e| e.document_ids())
                .await
                .unwrap();
            assert!(known.is_empty(), "the sync engine knows no document");
            cairn.shutdown().await;
            id
        });
        drop(journal);
        drop(cairn);
        // Every key in the device store is the journal's (or the store's own id): nothing a
        // sync engine would load as a document.
        let path = dir.path().join("store");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match SledStore::open(&path, &SledConfig::default()) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "store still locked: {e}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        };
        let keys: Vec<_> = store
            .load_range(&[])
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(keys.contains(&vec![model::KEY_PREFIX.to_owned(), id.clone()]));
        for key in &keys {
            assert!(
                key[0].parse::<cairn_sync::ids::DocumentId>().is_err(),
                "a document key in the store: {key:?}"
            );
        }
    }

    #[test]
    fn a_wrong_journal_key_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let id = {
            let cairn = fixture::cairn(&dir);
            let id = rt
                .block_on(cairn.journal().write("t", None, "private words", vec![]))
                .unwrap();
            rt.block_on(cairn.shutdown());
            id
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let cairn = loop {
            match fixture::start(&dir, vec![8; 32]) {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "store still locked: {e}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        };
        let journal = cairn.journal();
        for result in [
            rt.block_on(journal.get(&id)).map(|_| ()),
            rt.block_on(journal.list()).map(|_| ()),
        ] {
            match result {
                Err(CairnError::Invalid { reason }) => {
                    assert!(reason.contains("journal key"), "{reason}");
                    assert!(!reason.contains("private"), "no content in the error");
                }
                other => panic!("expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_excerpt_is_previewed_and_shared_exactly_into_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cairn = fixture::cairn(&dir);
        let group = fixture::group(&rt, &cairn, "g-share", "ana", Role::Member);
        rt.block_on(async {
            let thread = group
                .create_thread("Reflections", "Share if you like")
                .await
                .unwrap();
            let journal = cairn.journal();
            let id = journal
                .write(
                    "t",
                    Some(ReflectionTemplate::Gibbs),
                    "Private note",
                    gibbs(),
                )
                .await
                .unwrap();
            // "Shaky 🌧" is 8 UTF-16 units (the emoji is two).
            let selection = ExcerptSelection {
                source: ExcerptSource::Answer {
                    key: "feelings".into(),
                },
                start: 0,
                end: 8,
            };
            let preview = journal
                .preview_excerpt(&id, selection.clone())
                .await
                .unwrap();
            assert_eq!(preview, "Shaky 🌧");
            let post = journal
                .share_to_thread(&id, selection, &thread)
                .await
                .unwrap();
            let record = thread.read().await.unwrap();
            let shared = record.posts.iter().find(|p| p.id == post).unwrap();
            assert_eq!(shared.text, preview);
            assert_eq!(shared.author, "ana");
            assert!(
                record
                    .posts
                    .iter()
                    .all(|p| !p.text.contains("Private note")),
                "nothing else left the journal"
            );
            let past_the_end = ExcerptSelection {
                source: ExcerptSource::Body,
                start: 0,
                end: 99,
            };
            assert!(matches!(
                journal.share_to_thread(&id, past_the_end, &thread).await,
                Err(CairnError::Invalid { .. })
            ));
            assert!(matches!(
                journal
                    .preview_excerpt(
                        &id,
                        ExcerptSelection {
                            source: ExcerptSource::Answer {
                                key: "analysis".into()
                            },
                            start: 0,
                            end: 1
                        }
                    )
                    .await,
                Err(CairnError::NotFound { .. })
            ));
        });
    }
}
