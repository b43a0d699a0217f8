//! A member's own data on a relay: everything the relay holds about them, exported
//! through the core; erasing their account; and deleting or restoring a group.
//!
//! What erasure cannot recall, said plainly: the copies of the group's documents already
//! on other members' phones (Automerge keeps their history, the pseudonym in old rosters
//! included), and backups the operator took before the erasure.

use automerge::AutoSerde;

use crate::app::{CairnError, Group, Workspace};

/// Everything the relay at `relay_url` holds about this device's member, and every
/// document they may read there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MyDataExport {
    /// The relay it came from.
    pub relay_url: String,
    /// The member it is about.
    pub member_id: String,
    /// What the relay keeps about the member, as the relay's JSON: their memberships
    /// (group, role, status, pseudonym, dates), their devices, and the audit entries
    /// about them (ids, kinds and times only).
    pub relay_record_json: String,
    /// Every document they may read on the relay, as Automerge binaries and as JSON.
    pub documents: Vec<ExportedDocument>,
}

/// One document of a [`MyDataExport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedDocument {
    /// Its group.
    pub group_id: String,
    /// Its id.
    pub document_id: String,
    /// What it is: `settings`, `roster`, `index`, `series`, `meeting`, `resources`,
    /// `thread` or `report`.
    pub kind: String,
    /// The whole document with its history (Automerge's saved format; opens in any
    /// Automerge implementation).
    pub automerge: Vec<u8>,
    /// Its current state as JSON.
    pub json: String,
}

impl Workspace {
    /// Exports everything the relay at `relay_url` holds about this device's member (see
    /// [`MyDataExport`]). Each document comes from this device's copy, fetched from the
    /// relay first if the device has none.
    pub async fn export_my_data(&self, relay_url: &str) -> Result<MyDataExport, CairnError> {
        let api = self.cairn.api_of(relay_url)?;
        let record = self
            .cairn
            .run(async move { Ok(api.export_me().await?) })
            .await?;
        let relay_record_json = serde_json::to_string_pretty(&record)
            .map_err(|e| CairnError::invalid(format!("the relay's export: {e}")))?;
        let mut documents = Vec::with_capacity(record.documents.len());
        for d in &record.documents {
            let (automerge, json) = self.cairn.read_doc(d.document_id, save_as_json).await?;
            documents.push(ExportedDocument {
                group_id: d.group_id.to_string(),
                document_id: d.document_id.to_string(),
                kind: d.kind.name().to_owned(),
                automerge,
                json,
            });
        }
        Ok(MyDataExport {
            relay_url: relay_url.to_owned(),
            member_id: record.member_id.to_string(),
            relay_record_json,
            documents,
        })
    }

    /// Erases this device's member on the relay at `relay_url`: every device and
    /// membership removed, their pseudonym gone from everything the relay serves from now
    /// on (it rebuilds each group's roster without them). What they wrote stays, shown as
    /// by a [former member](crate::app::FORMER_MEMBER). Copies already on other members'
    /// phones cannot be recalled. This device stops syncing with that relay; delete its
    /// credential from the platform keystore.
    pub async fn erase_my_account(&self, relay_url: &str) -> Result<(), CairnError> {
        let api = self.cairn.api_of(relay_url)?;
        self.cairn
            .run(async move { Ok(api.erase_me().await?) })
            .await?;
        self.cairn.remove_relay(relay_url);
        Ok(())
    }
}

impl Group {
    /// Deletes the group (organisers): from now on nobody reads or writes it. An
    /// organiser can [restore](Group::restore) it until the relay's grace period ends (14
    /// days unless the operator set another); then the relay destroys it.
    pub async fn delete(&self) -> Result<(), CairnError> {
        self.call(|api, g| async move { api.delete_group(&g).await })
            .await
    }

    /// Restores the group after [`Group::delete`], within the grace period (organisers).
    pub async fn restore(&self) -> Result<(), CairnError> {
        self.call(|api, g| async move { api.restore_group(&g).await })
            .await
    }
}

fn save_as_json(doc: &automerge::Automerge) -> Result<(Vec<u8>, String), CairnError> {
    let json = serde_json::to_string(&AutoSerde::from(doc))
        .map_err(|e| CairnError::invalid(format!("a document does not read as JSON: {e}")))?;
    Ok((doc.save(), json))
}
