//! A volatile filesystem for power-cut tests: an in-memory FUSE filesystem that forgets,
//! at a simulated power cut, everything a POSIX disk is allowed to forget.
//!
//! - A file's bytes (and length) survive a cut only as they were at its last
//!   `fsync`/`fdatasync` (through any handle); a file never synced comes back empty.
//! - A directory's entries (creations, removals, renames into or out of it) survive only as
//!   they were at its last `fsync`; a file whose name was never made durable is gone, even
//!   if its own data was synced.
//! - Nothing else makes anything durable: not `close`, not `sync_file_range` (which FUSE
//!   does not forward), not unmounting.
//!
//! [`VolatileFs::cut`] is the power cut: it unmounts, drops everything not durable and
//! mounts again at the same place. Whatever the filesystem held when it was mounted counts
//! as durable. The filesystem runs on background threads of the calling process (fuser's
//! pure-Rust mount path: as root it mounts `/dev/fuse` directly; otherwise fuser falls back
//! to `fusermount3` from Debian's `fuse3` package).
//!
//! ```no_run
//! # fn main() -> Result<(), cairn_tests::volatile_fs::VolatileFsError> {
//! use cairn_tests::volatile_fs::VolatileFs;
//! let mut fs = VolatileFs::mount_temp()?;
//! std::fs::write(fs.path().join("lost"), b"never synced").expect("write");
//! let report = fs.cut()?;
//! assert_eq!(report.files_forgotten, 1);
//! # Ok(()) }
//! ```

mod fuse;
mod tree;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, MountOption, SessionACL};
use nix::errno::Errno;
use nix::mount::MntFlags;
use thiserror::Error;

pub use tree::{CutReport, VolatileStats};

use fuse::VolatileFuse;
use tree::Tree;

/// The FUSE device the kernel module provides.
const FUSE_DEVICE: &str = "/dev/fuse";

/// Threads serving kernel requests. Two let one client's read proceed while another's
/// write holds the model's lock only briefly; the model is one mutex, so more buy nothing.
const FUSE_THREADS: usize = 2;

/// How long a cut waits for a busy mount to come free before it reports it busy. The
/// kernel closes a killed process's files during its exit, but a FUSE release can still be
/// in flight just after the reap; a second is far more than that takes.
const BUSY_GRACE: Duration = Duration::from_secs(1);

/// Pause between unmount attempts within [`BUSY_GRACE`].
const BUSY_RETRY: Duration = Duration::from_millis(20);

/// Why the volatile filesystem could not be mounted, cut or unmounted.
#[derive(Debug, Error)]
pub enum VolatileFsError {
    /// There is no FUSE device: FUSE is not available on this machine.
    #[error(
        "FUSE is not available: {FUSE_DEVICE} is missing (load the `fuse` kernel module, or give \
         the container the device); the power-cut tests need it and do not skip without it"
    )]
    NoFuseDevice,
    /// The temporary mountpoint could not be made.
    #[error("creating a temporary mountpoint failed: {0}")]
    Mountpoint(#[source] std::io::Error),
    /// The kernel (or `fusermount3`) refused the mount.
    #[error(
        "mounting the volatile FUSE filesystem at {mountpoint} failed (as root {FUSE_DEVICE} is \
         mounted directly; otherwise `fusermount3` from Debian's `fuse3` package is needed, \
         which scripts/test.sh installs): {source}"
    )]
    Mount {
        /// Where.
        mountpoint: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Something still has a file or directory open on the mount, so it cannot be cut.
    #[error(
        "{mountpoint} is busy: kill and reap every process using it, and close every file and \
         store this process opened on it, before a power cut"
    )]
    Busy {
        /// Where.
        mountpoint: PathBuf,
    },
    /// `umount` failed for another reason.
    #[error("unmounting {mountpoint} failed: {source}")]
    Unmount {
        /// Where.
        mountpoint: PathBuf,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// The thread serving the filesystem stopped with an error or a panic.
    #[error("the FUSE session thread for {mountpoint} failed: {source}")]
    Session {
        /// Where.
        mountpoint: PathBuf,
        /// What it returned.
        #[source]
        source: std::io::Error,
    },
}

/// A mounted volatile filesystem; unmounted when dropped.
pub struct VolatileFs {
    mountpoint: PathBuf,
    tree: Arc<Mutex<Tree>>,
    session: Option<BackgroundSession>,
    // Declared last: removed only after the filesystem is unmounted.
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for VolatileFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolatileFs")
            .field("mountpoint", &self.mountpoint)
            .field("mounted", &self.session.is_some())
            .finish()
    }
}

impl VolatileFs {
    /// Mounts an empty volatile filesystem on a new temporary directory.
    pub fn mount_temp() -> Result<VolatileFs, VolatileFsError> {
        let temp = tempfile::Builder::new()
            .prefix("cairn-volatile-")
            .tempdir()
            .map_err(VolatileFsError::Mountpoint)?;
        let mut fs = VolatileFs::mount(temp.path())?;
        fs._temp = Some(temp);
        Ok(fs)
    }

    /// Mounts an empty volatile filesystem on `mountpoint` (an existing directory).
    pub fn mount(mountpoint: &Path) -> Result<VolatileFs, VolatileFsError> {
        if !Path::new(FUSE_DEVICE).exists() {
            return Err(VolatileFsError::NoFuseDevice);
        }
        let tree = Tree::new(
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let mut fs = VolatileFs {
            mountpoint: mountpoint.to_owned(),
            tree: Arc::new(Mutex::new(tree)),
            session: None,
            _temp: None,
        };
        fs.session = Some(fs.spawn()?);
        Ok(fs)
    }

    fn spawn(&self) -> Result<BackgroundSession, VolatileFsError> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("cairn-volatile".into()),
            MountOption::Subtype("cairn-volatile".into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        config.acl = SessionACL::Owner;
        config.n_threads = Some(FUSE_THREADS);
        let fs = VolatileFuse {
            tree: self.tree.clone(),
        };
        fuser::spawn_mount(fs, &self.mountpoint, &config).map_err(|source| VolatileFsError::Mount {
            mountpoint: self.mountpoint.clone(),
            source,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    fn tree(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counters since the mount: cuts, what they forgot, syncs seen, bytes in use.
    pub fn stats(&self) -> VolatileStats {
        self.tree().stats()
    }

    /// Limits the bytes all files may hold together (`None`: no limit). A write, truncate
    /// or `fallocate` that would grow past it fails with `ENOSPC`; overwrites still work.
    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.tree().set_capacity(capacity);
    }

    /// The power cut. The caller must first SIGKILL and reap every process using the mount
    /// and close everything this process opened on it: the cut unmounts (and fails with
    /// [`VolatileFsError::Busy`] otherwise), forgets everything not durable, and mounts
    /// again at the same place.
    pub fn cut(&mut self) -> Result<CutReport, VolatileFsError> {
        self.unmount()?;
        let report = self.tree().cut();
        self.session = Some(self.spawn()?);
        Ok(report)
    }

    fn unmount(&mut self) -> Result<(), VolatileFsError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // A plain umount, not a lazy one: a busy mount must be an error, not a filesystem
        // that lives on, detached, for whoever still has it open.
        let mut unmounted = nix::mount::umount(&self.mountpoint);
        let deadline = Instant::now() + BUSY_GRACE;
        while unmounted == Err(Errno::EBUSY) && Instant::now() < deadline {
            std::thread::sleep(BUSY_RETRY);
            unmounted = nix::mount::umount(&self.mountpoint);
        }
        if let Err(e) = unmounted {
            self.session = Some(session);
            return Err(if e == Errno::EBUSY {
                VolatileFsError::Busy {
                    mountpoint: self.mountpoint.clone(),
                }
            } else {
                VolatileFsError::Unmount {
                    mountpoint: self.mountpoint.clone(),
                    source: e,
                }
            });
        }
        // The kernel ends the connection when the superblock goes, which ends the session
        // threads. Not `umount_and_join`: fuser 0.18 takes the ended connection for a live
        // mount and fails unmounting it again (EINVAL); `join` drops fuser's mount handle only
        // after the threads ended, while nothing is mounted here, so its own unmount attempt
        // finds nothing to unmount (and is only logged).
        session.join().map_err(|source| VolatileFsError::Session {
            mountpoint: self.mountpoint.clone(),
            source,
        })
    }
}

impl Drop for VolatileFs {
    fn drop(&mut self) {
        match self.unmount() {
            Ok(()) => {}
            Err(VolatileFsError::Busy { .. }) => {
                // A failing test left something open: detach the mount so the process can
                // still end; the session threads serve the open files until they close.
                let _ = nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH);
                if let Some(session) = self.session.take() {
                    std::mem::forget(session);
                }
            }
            Err(e) => eprintln!("volatile filesystem: {e}"),
        }
    }
}
