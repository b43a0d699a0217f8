//! Backups and restores of the relay's store.
//!
//! A backup is one consistent file of the whole store (documents, membership, audit), taken
//! while the relay serves: [`backup`] runs through [`Host::exclusive`], between two batches
//! of the storage thread, so every write acknowledged before it started is in the file and
//! none is half in it; writes that arrive meanwhile wait and are not refused. Offline
//! (relay stopped): `cairn-relay backup --data DIR --to FILE` ([`backup_offline`]).
//!
//! `cairn-relay restore --from FILE --data DIR` ([`restore`]) writes a backup into an empty
//! data directory after checking the whole file, under a new storage id (clients resend what
//! the backup lacks). What the membership should look like afterwards cannot be guessed:
//! removals, revocations and erasures recorded after the backup are not in it and would
//! come back. So a restore refuses unless the operator says how to treat them
//! (`--replay-audit FILE` or `--membership-as-of-backup`); [`after_restore`] applies that
//! choice.
//!
//! [`Host::exclusive`]: cairn_sync::runtime::Host::exclusive

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_sync::ids::StorageId;
use cairn_sync::membership::{
    Actor, AuditEntry, AuditKind, KvMembershipStore, Membership, Quotas, Replayed,
};
use cairn_sync::store::{
    restore_backup, BackupHeader, BackupReport, RestoreReport, SledConfig, SledStore, Storage,
    StoreError,
};
use clap::Args;

use crate::{AppState, RelayError};

/// The extension of backup files.
pub const BACKUP_EXTENSION: &str = "cairnbak";

/// A backup written.
#[derive(Clone, Debug)]
pub struct BackupDone {
    /// What it holds.
    pub report: BackupReport,
    /// Where it is.
    pub path: PathBuf,
}

/// A restore done.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The backup's header (when it was taken, from which store).
    pub header: BackupHeader,
    /// What was written.
    pub report: RestoreReport,
    /// The restored store's new id.
    pub storage_id: StorageId,
    /// What the membership step did.
    pub membership: Replayed,
}

/// Flags of `restore`.
#[derive(Debug, Args, Clone)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The data directory to restore into: it must be empty or missing.
    #[arg(long, env = "CAIRN_DATA", default_value = "cairn-data")]
    pub data: PathBuf,
    /// Re-apply every access-reducing membership change recorded after the backup, from the
    /// old relay's audit log (JSON lines, as `cairn-relay admin audit` prints it).
    #[arg(long, value_name = "FILE", conflicts_with = "membership_as_of_backup")]
    pub replay_audit: Option<PathBuf>,
    /// Accept the membership as it was at the backup: removals, suspensions, revocations,
    /// erasures and group deletions recorded after it come back.
    #[arg(long)]
    pub membership_as_of_backup: bool,
}

/// How a restore treats membership changes made after the backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipPolicy {
    /// Re-apply the access-reducing entries of this audit log (JSON lines) that are newer
    /// than the backup.
    ReplayAudit(PathBuf),
    /// Keep the membership as of the backup (the operator accepted that later removals and
    /// revocations come back).
    AsOfBackup,
}

impl RestoreArgs {
    /// The operator's choice, or why a restore without one is refused.
    pub fn policy(&self) -> Result<MembershipPolicy, RelayError> {
        match (&self.replay_audit, self.membership_as_of_backup) {
            (Some(path), false) => Ok(MembershipPolicy::ReplayAudit(path.clone())),
            (None, true) => Ok(MembershipPolicy::AsOfBackup),
            (Some(_), true) => Err(RelayError::Backup(
                "give either --replay-audit FILE or --membership-as-of-backup, not both".into(),
            )),
            (None, false) => Err(RelayError::Backup(
                "a restore needs to know what to do with membership changes made after the \
                 backup: removals, suspensions, device revocations and erasures recorded after \
                 it are not in it and would come back to life. Give --replay-audit FILE (the \
                 old relay's audit log, JSON lines: those changes are applied again) or \
                 --membership-as-of-backup (you accept that they come back)"
                    .into(),
            )),
        }
    }
}

/// Takes a backup of the running relay's store into a new file
/// `cairn-backup-<UTC time>.cairnbak` in `dir` (created if missing; refused inside the data
/// directory, whose files a rewrite replaces). The store is read on the storage thread
/// between batches ([`Host::exclusive`](cairn_sync::runtime::Host::exclusive)); the file is
/// written under a temporary name, synced, renamed and its directory synced, so a crash
/// never leaves a partial file under a backup's name.
pub async fn backup(state: &AppState, dir: &Path) -> Result<BackupDone, RelayError> {
    let dir = dir.to_owned();
    let data = state.config.data.clone();
    let (tmp, path) = tokio::task::spawn_blocking(move || backup_paths(&data, &dir))
        .await
        .map_err(|_| RelayError::EngineStopped)??;
    let store = state.store.clone();
    let taken_ms = crate::api::now_ms();
    let file = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
    let writing = file.try_clone().map_err(|e| io_error(&tmp, e))?;
    let written = state
        .host
        .exclusive(move || store.backup_to(writing, taken_ms))
        .await
        .map_err(|_| RelayError::EngineStopped)
        .and_then(|r| r.map_err(RelayError::from));
    let finished = match written {
        Ok(report) => tokio::task::spawn_blocking(move || {
            finish(file, &tmp, &path).map(|()| BackupDone { report, path })
        })
        .await
        .map_err(|_| RelayError::EngineStopped)?,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    };
    if let Ok(done) = &finished {
        tracing::info!(
            keys = done.report.keys,
            bytes = done.report.bytes,
            "backup written"
        );
        if let Some(membership) = state.membership().cloned() {
            let keys = done.report.keys;
            // The audit log says when backups were taken (a restore's replay starts after
            // the last entry the backup holds). A failure here loses no backup.
            let recorded = tokio::task::spawn_blocking(move || {
                membership.record_audit(
                    AuditKind::BackupTaken,
                    Actor::Operator,
                    None,
                    None,
                    None,
                    Some(keys),
                    crate::api::now_ms(),
                )
            })
            .await;
            if !matches!(recorded, Ok(Ok(()))) {
                tracing::warn!("the backup was written but could not be recorded in the audit log");
            }
        }
    }
    finished
}

/// `cairn-relay backup --data DIR --to FILE`, with the relay stopped.
pub fn backup_offline(data: &Path, to: &Path) -> Result<BackupDone, RelayError> {
    if to.exists() {
        return Err(RelayError::Backup(format!(
            "{} exists: a backup never replaces a file",
            to.display()
        )));
    }
    let parent = match to.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_owned(),
        None => PathBuf::from("."),
    };
    refuse_inside(data, &parent)?;
    let name = to
        .file_name()
        .ok_or_else(|| RelayError::Backup(format!("{} is not a file name", to.display())))?;
    let tmp = parent.join(format!(".{}.tmp", name.to_string_lossy()));
    let store = crate::open_store(data, &SledConfig::default())?;
    let file = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
    let report = match store.backup_to(&file, crate::api::now_ms()) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    finish(file, &tmp, to)?;
    Ok(BackupDone {
        report,
        path: to.to_owned(),
    })
}

/// `cairn-relay restore`: checks the choice for membership and the whole backup file
/// before anything is written, restores into the empty data directory `args.data`, then
/// applies the membership choice ([`after_restore`]).
pub fn restore(args: &RestoreArgs) -> Result<Restored, RelayError> {
    let policy = args.policy()?;
    let log = check_policy(&policy)?;
    let (store, header, report) = restore_backup(&args.from, &args.data, &SledConfig::default())
        .map_err(|e| match e {
            StoreError::BadBackup { detail } => RelayError::Backup(format!(
                "{} is not a usable backup: {detail}; nothing was written",
                args.from.display()
            )),
            StoreError::Io(io) if io.kind() == std::io::ErrorKind::AlreadyExists => {
                RelayError::Backup(io.to_string())
            }
            other => other.into(),
        })?;
    let membership = after_restore(&store, &header, log.as_deref())?;
    let storage_id = store.storage_id()?;
    tracing::info!(
        keys = report.keys,
        bytes = report.bytes,
        taken_ms = header.taken_ms,
        storage_id = %storage_id,
        "restored a backup"
    );
    Ok(Restored {
        header,
        report,
        storage_id,
        membership,
    })
}

/// Refuses, before anything is written, a membership choice that cannot be carried out;
/// returns the audit log to replay (read whole: a log with a line that is not an audit
/// entry is refused, not half applied).
fn check_policy(policy: &MembershipPolicy) -> Result<Option<Vec<AuditEntry>>, RelayError> {
    match policy {
        MembershipPolicy::AsOfBackup => Ok(None),
        MembershipPolicy::ReplayAudit(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                RelayError::Backup(format!("reading the audit log {}: {e}", path.display()))
            })?;
            let mut entries = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let entry = serde_json::from_str::<AuditEntry>(line).map_err(|_| {
                    RelayError::Backup(format!(
                        "line {} of the audit log {} is not an audit entry; nothing was written",
                        n + 1,
                        path.display()
                    ))
                })?;
                entries.push(entry);
            }
            Ok(Some(entries))
        }
    }
}

/// The membership step of a restore, run once every entry of the backup is written and
/// durable (see [`cairn_sync::membership::Membership::after_restore`]): replays the
/// access-reducing changes of `log` made after the backup (`None`: the operator kept the
/// membership as of the backup), closes every invite and device-link code the backup
/// holds, deletes the documents a replayed erasure or purge dropped, and rewrites the store
/// if it deleted any. Devices enrolled after the backup are not in it: they get 401 and
/// redeem again.
pub fn after_restore(
    store: &SledStore,
    header: &BackupHeader,
    log: Option<&[AuditEntry]>,
) -> Result<Replayed, RelayError> {
    let membership = Membership::open(
        Arc::new(KvMembershipStore::new(Arc::new(store.clone()))),
        Quotas::default(),
    )?;
    let replayed = membership.after_restore(log, crate::api::now_ms())?;
    if log.is_none() {
        tracing::warn!(
            taken_ms = header.taken_ms,
            "membership restored as of the backup: removals, suspensions, revocations and \
             erasures recorded after it are back"
        );
    }
    if !replayed.forget.is_empty() {
        for doc in &replayed.forget {
            store.delete_range(&[doc.to_string()])?;
        }
        store.flush()?;
        store.rewrite()?;
    }
    tracing::info!(
        newer = replayed.newer,
        applied = replayed.applied,
        not_replayable = replayed.not_replayable,
        codes_closed = replayed.codes_closed,
        "membership after the restore"
    );
    Ok(replayed)
}

fn io_error(path: &Path, e: std::io::Error) -> RelayError {
    RelayError::Backup(format!("writing {}: {e}", path.display()))
}

/// Refuses a backup destination inside the data directory.
fn refuse_inside(data: &Path, dir: &Path) -> Result<(), RelayError> {
    // A directory not made yet is compared by its absolute path.
    let canon = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_owned())
    };
    if canon(dir).starts_with(canon(data)) {
        return Err(RelayError::Backup(format!(
            "{} is inside the data directory {}: keep backups elsewhere (a store rewrite \
             replaces what is there, and a backup beside the data is lost with it)",
            dir.display(),
            data.display()
        )));
    }
    Ok(())
}

/// (temporary path, final path) for a new backup in `dir`.
fn backup_paths(data: &Path, dir: &Path) -> Result<(PathBuf, PathBuf), RelayError> {
    refuse_inside(data, dir)?;
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let stamp = utc_stamp(crate::api::now_ms() / 1000);
    let mut n = 0;
    loop {
        let name = if n == 0 {
            format!("cairn-backup-{stamp}.{BACKUP_EXTENSION}")
        } else {
            format!("cairn-backup-{stamp}-{n}.{BACKUP_EXTENSION}")
        };
        let path = dir.join(&name);
        if !path.exists() {
            return Ok((dir.join(format!(".{name}.tmp")), path));
        }
        n += 1;
    }
}

/// Syncs the written file, renames it into place and syncs its directory.
fn finish(file: File, tmp: &Path, to: &Path) -> Result<(), RelayError> {
    let done = (|| {
        file.sync_all()?;
        drop(file);
        std::fs::rename(tmp, to)?;
        let dir = to
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    })();
    done.map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        io_error(to, e)
    })
}

/// `YYYYMMDDTHHMMSSZ` for Unix seconds `secs` (UTC).
fn utc_stamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_stamps() {
        assert_eq!(super::utc_stamp(0), "19700101T000000Z");
        assert_eq!(super::utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(super::utc_stamp(1_700_000_000), "20231114T221320Z");
    }
}
