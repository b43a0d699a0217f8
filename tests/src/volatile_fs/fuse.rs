//! The FUSE face of the [`Tree`]: each kernel request becomes one call on the model,
//! under one lock.
//!
//! Every file is opened with `FOPEN_DIRECT_IO` and every attribute and entry is given a
//! zero time-to-live, so the kernel keeps no page cache and no dentry cache for this
//! filesystem: each read, write and lookup reaches the model, and nothing the model forgot
//! at a cut can be served from a cache afterwards. `sync_file_range` therefore has nothing
//! to write back, and FUSE does not forward it: exactly the gap the tests look for.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use super::tree::{Entry, FsError, Inode, Tree};

/// Attributes and entries are never cached by the kernel (see the module doc).
const TTL: Duration = Duration::ZERO;

/// Block size reported by `stat` and `statfs`.
const BLOCK: u32 = 4096;

/// Size `statfs` reports when no capacity is set: 1 TiB, large enough that nothing
/// refuses to start for lack of space, small enough to print sanely.
const UNLIMITED_BYTES: u64 = 1 << 40;

/// Inodes `statfs` reports as the total: sled and the relay create a few hundred files.
const MAX_INODES: u64 = 1 << 20;

/// Longest name accepted (`statfs`'s `namelen`), as on ext4.
const NAME_MAX: u32 = 255;

/// `S_IFMT` and the two file types the model has, from `<sys/stat.h>`.
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;

/// `fallocate` mode bit that reserves space without changing the length.
const FALLOC_FL_KEEP_SIZE: i32 = 1;

/// The filesystem handed to fuser; it shares the model with the [`super::VolatileFs`]
/// handle, which cuts it while nothing is mounted.
pub(crate) struct VolatileFuse {
    pub(crate) tree: Arc<Mutex<Tree>>,
}

impl VolatileFuse {
    fn tree(&self) -> MutexGuard<'_, Tree> {
        // A panic while holding the lock would be a bug in the model; the data is still
        // the best picture of the filesystem there is, so carry on with it.
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn errno(e: FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::Exists => Errno::EEXIST,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::NotEmpty => Errno::ENOTEMPTY,
        FsError::NoSpace => Errno::ENOSPC,
        FsError::Invalid => Errno::EINVAL,
        FsError::NotSupported => Errno::EOPNOTSUPP,
    }
}

fn attr(tree: &Tree, ino: u64) -> Result<FileAttr, FsError> {
    let inode = tree.inode(ino)?;
    Ok(file_attr(tree, ino, inode))
}

fn file_attr(tree: &Tree, ino: u64, inode: &Inode) -> FileAttr {
    let size = inode.size();
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: inode.atime,
        mtime: inode.mtime,
        ctime: inode.ctime,
        crtime: inode.ctime,
        kind: if inode.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: inode.perm,
        nlink: inode.nlink(tree),
        uid: inode.uid,
        gid: inode.gid,
        rdev: 0,
        blksize: BLOCK,
        flags: 0,
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for VolatileFuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tree = self.tree();
        match tree.lookup(parent.0, name).and_then(|ino| attr(&tree, ino)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match attr(&self.tree(), ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut tree = self.tree();
        let result = (|| {
            if let Some(size) = size {
                tree.resize(ino.0, size, false)?;
            }
            let inode = tree.inode_mut(ino.0)?;
            if let Some(mode) = mode {
                inode.perm = perm(mode, 0);
            }
            if let Some(uid) = uid {
                inode.uid = uid;
            }
            if let Some(gid) = gid {
                inode.gid = gid;
            }
            if let Some(t) = atime {
                inode.atime = time(t);
            }
            if let Some(t) = mtime {
                inode.mtime = time(t);
            }
            inode.ctime = SystemTime::now();
            attr(&tree, ino.0)
        })();
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & S_IFMT != S_IFREG {
            // Only regular files and directories are modelled.
            reply.error(Errno::EPERM);
            return;
        }
        let mut tree = self.tree();
        let made = tree
            .create_file(parent.0, name, perm(mode, umask), req.uid(), req.gid())
            .and_then(|ino| attr(&tree, ino));
        match made {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut tree = self.tree();
        let made = tree
            .mkdir(parent.0, name, perm(mode, umask), req.uid(), req.gid())
            .and_then(|ino| attr(&tree, ino));
        match made {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.tree().unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.tree().rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            // RENAME_EXCHANGE and RENAME_WHITEOUT: nothing here uses them.
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .tree()
            .rename(parent.0, name, newparent.0, newname, no_replace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut tree = self.tree();
        let opened = match tree.inode(ino.0) {
            Ok(inode) if inode.is_dir() => Err(FsError::IsDir),
            Ok(_) => tree.open(ino.0),
            Err(e) => Err(e),
        };
        match opened {
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree().read(ino.0, offset, size as usize) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.tree().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.tree().release(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.tree().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let tree = self.tree();
        match tree.inode(ino.0) {
            Ok(inode) if inode.is_dir() => reply.opened(FileHandle(ino.0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.tree().list(ino.0) {
            Ok(listing) => listing,
            Err(e) => {
                reply.error(errno(e));
                return;
            }
        };
        let dot = |name: &str, ino| Entry {
            name: name.into(),
            ino,
            is_dir: true,
        };
        let all = [dot(".", ino.0), dot("..", listing.parent)]
            .into_iter()
            .chain(listing.entries);
        // The offset of an entry is its position plus one: the kernel asks for what
        // follows the last entry it got.
        for (i, entry) in all.enumerate().skip(offset as usize) {
            let kind = if entry.is_dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(entry.ino), i as u64 + 1, kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.tree().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let tree = self.tree();
        let (total, free) = tree.space(UNLIMITED_BYTES);
        let files = tree.inodes.len() as u64;
        let block = u64::from(BLOCK);
        reply.statfs(
            total / block,
            free / block,
            free / block,
            MAX_INODES,
            MAX_INODES.saturating_sub(files),
            BLOCK,
            NAME_MAX,
            BLOCK,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Everything runs as root here; existence is the only check.
        match self.tree().inode(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut tree = self.tree();
        let made = tree
            .create_file(parent.0, name, perm(mode, umask), req.uid(), req.gid())
            .and_then(|ino| {
                tree.open(ino)?;
                Ok((ino, attr(&tree, ino)?))
            });
        match made {
            Ok((ino, a)) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(ino),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = match mode {
            0 => self.tree().allocate(ino.0, offset + length, false),
            FALLOC_FL_KEEP_SIZE => self.tree().allocate(ino.0, offset + length, true),
            _ => Err(FsError::NotSupported),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}
