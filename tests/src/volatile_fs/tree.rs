//! The volatile filesystem's model, free of FUSE: inodes that keep what a process sees
//! (`current`) beside what a power cut would leave (`durable`), and the cut itself.
//!
//! A file's bytes live in fixed-size copy-on-write pages, so making a file durable copies
//! a list of page pointers, not its data, and the first write to a page after that copies
//! only that page: a store that syncs after every small write stays cheap to model.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use thiserror::Error;

/// Size of one copy-on-write page of file data. 64 KiB: large enough that a multi-megabyte
/// log is a short list of pointers to copy at each fsync, small enough that the copy made
/// by the first small write after an fsync stays cheap.
const PAGE: usize = 64 * 1024;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub(crate) const ROOT: u64 = 1;

/// Why an operation on the model failed; the FUSE layer turns each into an errno.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsError {
    /// No such inode or directory entry (`ENOENT`).
    #[error("no such file or directory")]
    NotFound,
    /// The name is taken (`EEXIST`).
    #[error("the name exists")]
    Exists,
    /// A directory was expected (`ENOTDIR`).
    #[error("not a directory")]
    NotDir,
    /// A file was expected (`EISDIR`).
    #[error("is a directory")]
    IsDir,
    /// A directory to remove or replace still has entries (`ENOTEMPTY`).
    #[error("directory not empty")]
    NotEmpty,
    /// The capacity set with `set_capacity` would be exceeded (`ENOSPC`).
    #[error("no space left on the volatile filesystem")]
    NoSpace,
    /// A request the model cannot honour, such as moving a directory into itself (`EINVAL`).
    #[error("invalid argument")]
    Invalid,
    /// A mode the model does not implement (`EOPNOTSUPP`), e.g. punching holes.
    #[error("operation not supported")]
    NotSupported,
}

/// What one power cut threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files that could be opened before the cut and are gone after it (their names were
    /// never made durable by an fsync of their directory).
    pub files_forgotten: u64,
    /// Files that survive but lost bytes or length (written after their last fsync).
    pub files_rolled_back: u64,
    /// Bytes that differ from what a process read before the cut: the length of every
    /// forgotten file, plus the changed or cut-off bytes of every rolled-back file.
    pub bytes_forgotten: u64,
    /// Directory entries whose creation, removal or rename was undone.
    pub entries_forgotten: u64,
}

impl CutReport {
    fn add(&mut self, other: &CutReport) {
        self.files_forgotten += other.files_forgotten;
        self.files_rolled_back += other.files_rolled_back;
        self.bytes_forgotten += other.bytes_forgotten;
        self.entries_forgotten += other.entries_forgotten;
    }
}

/// Counters since the filesystem was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolatileStats {
    /// Power cuts so far.
    pub cuts: u64,
    /// Everything those cuts threw away, summed.
    pub forgotten: CutReport,
    /// `fsync`/`fdatasync` calls on files.
    pub file_syncs: u64,
    /// `fsync` calls on directories.
    pub dir_syncs: u64,
    /// Writes, truncations and allocations refused with `ENOSPC`.
    pub no_space: u64,
    /// Bytes in files that exist now (what the capacity limits).
    pub used_bytes: u64,
}

fn zero_page() -> Arc<Vec<u8>> {
    static ZERO: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    ZERO.get_or_init(|| Arc::new(vec![0; PAGE])).clone()
}

/// A file's bytes: `ceil(len / PAGE)` pages of `PAGE` bytes, zero past `len`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Bytes {
    pages: Vec<Arc<Vec<u8>>>,
    len: u64,
}

impl Bytes {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, size: usize) -> Vec<u8> {
        if offset >= self.len {
            return Vec::new();
        }
        let end = self.len.min(offset.saturating_add(size as u64));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut at = offset;
        while at < end {
            let page = &self.pages[(at / PAGE as u64) as usize];
            let from = (at % PAGE as u64) as usize;
            let to = PAGE.min(from + (end - at) as usize);
            out.extend_from_slice(&page[from..to]);
            at += (to - from) as u64;
        }
        out
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        if end > self.len {
            self.set_len(end);
        }
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let page = Arc::make_mut(&mut self.pages[(at / PAGE as u64) as usize]);
            let from = (at % PAGE as u64) as usize;
            let n = rest.len().min(PAGE - from);
            page[from..from + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            at += n as u64;
        }
    }

    fn set_len(&mut self, len: u64) {
        let pages = len.div_ceil(PAGE as u64) as usize;
        if len < self.len {
            self.pages.truncate(pages);
            // Bytes past the end must read as zero if the file grows again.
            let tail = (len % PAGE as u64) as usize;
            if tail != 0 {
                if let Some(last) = self.pages.last_mut() {
                    if last[tail..].iter().any(|b| *b != 0) {
                        Arc::make_mut(last)[tail..].fill(0);
                    }
                }
            }
        } else {
            self.pages.resize_with(pages, zero_page);
        }
        self.len = len;
    }

    /// How many of the bytes a reader of `self` saw differ in `other` (a byte past the end
    /// of `other` counts as different).
    fn bytes_lost_in(&self, other: &Bytes) -> u64 {
        let mut lost = self.len.saturating_sub(other.len);
        let common = self.len.min(other.len);
        for (i, (a, b)) in self.pages.iter().zip(&other.pages).enumerate() {
            let start = (i * PAGE) as u64;
            if start >= common {
                break;
            }
            if Arc::ptr_eq(a, b) {
                continue;
            }
            let n = (common - start).min(PAGE as u64) as usize;
            lost += a[..n].iter().zip(&b[..n]).filter(|(x, y)| x != y).count() as u64;
        }
        lost
    }

    fn same_as(&self, other: &Bytes) -> bool {
        self.len == other.len
            && self
                .pages
                .iter()
                .zip(&other.pages)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

/// What kind of inode, with its two states.
#[derive(Debug)]
pub(crate) enum Node {
    /// A regular file.
    File {
        /// What a process reads now.
        current: Bytes,
        /// What survives a cut: the bytes at the last fsync (empty if none).
        durable: Bytes,
    },
    /// A directory.
    Dir {
        /// The directory holding this one now (the root is its own parent).
        parent: u64,
        /// Entries a process sees now.
        current: BTreeMap<OsString, u64>,
        /// Entries that survive a cut: those at the last fsync of this directory.
        durable: BTreeMap<OsString, u64>,
    },
}

/// One inode. Permissions and times are kept but not modelled as volatile: the tests
/// are about data and names.
#[derive(Debug)]
pub(crate) struct Inode {
    pub(crate) node: Node,
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) atime: SystemTime,
    pub(crate) mtime: SystemTime,
    pub(crate) ctime: SystemTime,
    /// Current directory entries naming this inode.
    links: u32,
    /// Open handles.
    open: u32,
    /// Whether its length is counted in `Tree::used` (it has a name or an open handle).
    counted: bool,
}

impl Inode {
    fn new(node: Node, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            node,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            links: 1,
            open: 0,
            counted: true,
        }
    }

    /// Bytes a process sees (0 for a directory).
    pub(crate) fn size(&self) -> u64 {
        match &self.node {
            Node::File { current, .. } => current.len(),
            Node::Dir { .. } => 0,
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.node, Node::Dir { .. })
    }

    /// `st_nlink`: names of a file; 2 plus subdirectories for a directory.
    pub(crate) fn nlink(&self, tree: &Tree) -> u32 {
        match &self.node {
            Node::File { .. } => self.links,
            Node::Dir { current, .. } => {
                2 + current
                    .values()
                    .filter(|i| tree.inodes.get(i).is_some_and(Inode::is_dir))
                    .count() as u32
            }
        }
    }
}

/// One directory entry as `readdir` reports it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) name: OsString,
    pub(crate) ino: u64,
    pub(crate) is_dir: bool,
}

/// A directory's listing.
#[derive(Debug)]
pub(crate) struct Listing {
    pub(crate) parent: u64,
    pub(crate) entries: Vec<Entry>,
}

/// The whole filesystem.
#[derive(Debug)]
pub(crate) struct Tree {
    pub(crate) inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    capacity: Option<u64>,
    used: u64,
    stats: VolatileStats,
}

impl Tree {
    /// An empty filesystem: just the root directory, durable.
    pub(crate) fn new(uid: u32, gid: u32) -> Tree {
        let root = Node::Dir {
            parent: ROOT,
            current: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        let mut inodes = BTreeMap::new();
        inodes.insert(ROOT, Inode::new(root, 0o755, uid, gid));
        Tree {
            inodes,
            next_ino: ROOT + 1,
            capacity: None,
            used: 0,
            stats: VolatileStats::default(),
        }
    }

    pub(crate) fn stats(&self) -> VolatileStats {
        VolatileStats {
            used_bytes: self.used,
            ..self.stats
        }
    }

    pub(crate) fn set_capacity(&mut self, capacity: Option<u64>) {
        self.capacity = capacity;
    }

    /// `(total, free)` bytes for `statfs`; without a capacity, `unlimited` stands in.
    pub(crate) fn space(&self, unlimited: u64) -> (u64, u64) {
        let total = self.capacity.unwrap_or(unlimited.max(self.used));
        (total, total.saturating_sub(self.used))
    }

    pub(crate) fn inode(&self, ino: u64) -> Result<&Inode, FsError> {
        self.inodes.get(&ino).ok_or(FsError::NotFound)
    }

    pub(crate) fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode, FsError> {
        self.inodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, FsError> {
        match &self.inode(dir)?.node {
            Node::Dir { current, .. } => Ok(current),
            Node::File { .. } => Err(FsError::NotDir),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, FsError> {
        match &mut self.inode_mut(dir)?.node {
            Node::Dir { current, .. } => Ok(current),
            Node::File { .. } => Err(FsError::NotDir),
        }
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, FsError> {
        self.entries(parent)?
            .get(name)
            .copied()
            .ok_or(FsError::NotFound)
    }

    /// A directory's parent and entries, for `readdir`.
    pub(crate) fn list(&self, dir: u64) -> Result<Listing, FsError> {
        match &self.inode(dir)?.node {
            Node::Dir {
                parent, current, ..
            } => Ok(Listing {
                parent: *parent,
                entries: current
                    .iter()
                    .map(|(name, ino)| Entry {
                        name: name.clone(),
                        ino: *ino,
                        is_dir: self.inodes.get(ino).is_some_and(Inode::is_dir),
                    })
                    .collect(),
            }),
            Node::File { .. } => Err(FsError::NotDir),
        }
    }

    fn add(
        &mut self,
        parent: u64,
        name: &OsStr,
        node: Node,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, FsError> {
        if self.entries(parent)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::new(node, perm, uid, gid));
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        self.touch(parent);
        Ok(ino)
    }

    /// Creates an empty file; its name is durable only after its directory is synced.
    pub(crate) fn create_file(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, FsError> {
        let node = Node::File {
            current: Bytes::default(),
            durable: Bytes::default(),
        };
        self.add(parent, name, node, perm, uid, gid)
    }

    /// Creates an empty directory (its own entries start durable: there are none).
    pub(crate) fn mkdir(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, FsError> {
        let node = Node::Dir {
            parent,
            current: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        self.add(parent, name, node, perm, uid, gid)
    }

    fn touch(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            let now = SystemTime::now();
            inode.mtime = now;
            inode.ctime = now;
        }
    }

    /// Removes a file's name.
    pub(crate) fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?;
        if self.inode(ino)?.is_dir() {
            return Err(FsError::IsDir);
        }
        self.entries_mut(parent)?.remove(name);
        self.touch(parent);
        self.drop_link(ino);
        Ok(())
    }

    /// Removes an empty directory.
    pub(crate) fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?;
        if !self.entries(ino)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.entries_mut(parent)?.remove(name);
        self.touch(parent);
        self.drop_link(ino);
        Ok(())
    }

    /// Moves `parent/name` to `new_parent/new_name`, replacing a file there (or an empty
    /// directory, if a directory moves). Only the two directories' current entries change.
    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?;
        self.entries(new_parent)?;
        let moving_dir = self.inode(ino)?.is_dir();
        if moving_dir && self.is_within(new_parent, ino) {
            return Err(FsError::Invalid);
        }
        let replaced = self.entries(new_parent)?.get(new_name).copied();
        if let Some(old) = replaced {
            if old == ino {
                return Ok(());
            }
            if no_replace {
                return Err(FsError::Exists);
            }
            match (moving_dir, self.inode(old)?.is_dir()) {
                (false, true) => return Err(FsError::IsDir),
                (true, false) => return Err(FsError::NotDir),
                (true, true) if !self.entries(old)?.is_empty() => return Err(FsError::NotEmpty),
                _ => {}
            }
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(new_parent)?
            .insert(new_name.to_owned(), ino);
        if let Some(old) = replaced {
            self.drop_link(old);
        }
        if let Node::Dir { parent: up, .. } = &mut self.inode_mut(ino)?.node {
            *up = new_parent;
        }
        self.touch(parent);
        self.touch(new_parent);
        if let Ok(inode) = self.inode_mut(ino) {
            inode.ctime = SystemTime::now();
        }
        Ok(())
    }

    /// Whether `dir` is `ancestor` or below it.
    fn is_within(&self, mut dir: u64, ancestor: u64) -> bool {
        loop {
            if dir == ancestor {
                return true;
            }
            match self.inodes.get(&dir).map(|i| &i.node) {
                Some(Node::Dir { parent, .. }) if *parent != dir => dir = *parent,
                _ => return false,
            }
        }
    }

    fn drop_link(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.links = inode.links.saturating_sub(1);
            inode.ctime = SystemTime::now();
        }
        self.release_if_unused(ino);
    }

    /// Frees the space of an inode with no name and no open handle, and forgets it
    /// altogether once no durable entry names it either (a cut could bring it back).
    fn release_if_unused(&mut self, ino: u64) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        if inode.links > 0 || inode.open > 0 {
            return;
        }
        if inode.counted {
            inode.counted = false;
            self.used -= inode.size();
        }
        if ino != ROOT && !self.durably_named(ino) {
            self.inodes.remove(&ino);
        }
    }

    fn durably_named(&self, ino: u64) -> bool {
        self.inodes.values().any(|i| match &i.node {
            Node::Dir { durable, .. } => durable.values().any(|v| *v == ino),
            Node::File { .. } => false,
        })
    }

    pub(crate) fn open(&mut self, ino: u64) -> Result<(), FsError> {
        self.inode_mut(ino)?.open += 1;
        Ok(())
    }

    pub(crate) fn release(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.open = inode.open.saturating_sub(1);
        }
        self.release_if_unused(ino);
    }

    fn file_mut(&mut self, ino: u64) -> Result<(&mut Bytes, bool), FsError> {
        let inode = self.inodes.get_mut(&ino).ok_or(FsError::NotFound)?;
        match &mut inode.node {
            Node::File { current, .. } => Ok((current, inode.counted)),
            Node::Dir { .. } => Err(FsError::IsDir),
        }
    }

    pub(crate) fn read(&self, ino: u64, offset: u64, size: usize) -> Result<Vec<u8>, FsError> {
        match &self.inode(ino)?.node {
            Node::File { current, .. } => Ok(current.read(offset, size)),
            Node::Dir { .. } => Err(FsError::IsDir),
        }
    }

    /// Checks that growing a file by `growth` bytes fits the capacity.
    fn reserve(&mut self, growth: u64) -> Result<(), FsError> {
        match self.capacity {
            Some(cap) if growth > 0 && self.used + growth > cap => {
                self.stats.no_space += 1;
                Err(FsError::NoSpace)
            }
            _ => Ok(()),
        }
    }

    /// Writes `data` at `offset`; all of it, or nothing if it would not fit.
    pub(crate) fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), FsError> {
        self.resize(ino, offset + data.len() as u64, true)?;
        let (bytes, _) = self.file_mut(ino)?;
        bytes.write(offset, data);
        self.touch(ino);
        Ok(())
    }

    /// Sets a file's length (`grow_only`: never shrink, as a write or `fallocate` does).
    pub(crate) fn resize(&mut self, ino: u64, len: u64, grow_only: bool) -> Result<(), FsError> {
        let (bytes, counted) = self.file_mut(ino)?;
        let old = bytes.len();
        if len == old || (grow_only && len < old) {
            return Ok(());
        }
        if len > old && counted {
            self.reserve(len - old)?;
        }
        let (bytes, _) = self.file_mut(ino)?;
        bytes.set_len(len);
        if counted {
            // A counted inode's length is part of `used`, so this cannot underflow.
            self.used = self.used - old + len;
        }
        self.touch(ino);
        Ok(())
    }

    /// `fallocate`: mode 0 extends the file; `FALLOC_FL_KEEP_SIZE` only checks the space.
    pub(crate) fn allocate(&mut self, ino: u64, end: u64, keep_size: bool) -> Result<(), FsError> {
        let (bytes, _) = self.file_mut(ino)?;
        if keep_size {
            let growth = end.saturating_sub(bytes.len());
            return self.reserve(growth);
        }
        self.resize(ino, end, true)
    }

    /// `fsync`/`fdatasync` of a file, `fsync` of a directory: makes its current state the
    /// one a cut leaves.
    pub(crate) fn sync(&mut self, ino: u64) -> Result<(), FsError> {
        let inode = self.inodes.get_mut(&ino).ok_or(FsError::NotFound)?;
        match &mut inode.node {
            Node::File { current, durable } => {
                *durable = current.clone();
                self.stats.file_syncs += 1;
            }
            Node::Dir {
                current, durable, ..
            } => {
                let dropped: Vec<u64> = durable
                    .values()
                    .filter(|i| !current.values().any(|c| c == *i))
                    .copied()
                    .collect();
                *durable = current.clone();
                self.stats.dir_syncs += 1;
                // Names only a durable entry kept alive may now be forgotten.
                for i in dropped {
                    self.release_if_unused(i);
                }
            }
        }
        Ok(())
    }

    /// The power cut: every file falls back to its durable bytes and every directory to
    /// its durable entries; whatever no durable entry reaches from the root is gone.
    /// Call it only while nothing is mounted (no handle can be open).
    pub(crate) fn cut(&mut self) -> CutReport {
        let mut report = CutReport::default();
        let before = self.reachable();
        for inode in self.inodes.values_mut() {
            match &mut inode.node {
                Node::Dir {
                    current, durable, ..
                } => {
                    let names: BTreeSet<&OsString> = current.keys().chain(durable.keys()).collect();
                    report.entries_forgotten += names
                        .into_iter()
                        .filter(|n| current.get(*n) != durable.get(*n))
                        .count() as u64;
                    *current = durable.clone();
                }
                Node::File { .. } => {}
            }
        }
        // Rebuild the tree from the root over durable entries. A directory reached a second
        // time (moved between two directories that were both synced at different moments)
        // keeps only its first name, so the result stays a tree.
        let mut parents = BTreeMap::new();
        parents.insert(ROOT, ROOT);
        let mut links: BTreeMap<u64, u32> = BTreeMap::new();
        let mut queue = VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            let entries: Vec<(OsString, u64)> = match &self.inodes[&dir].node {
                Node::Dir { current, .. } => current.iter().map(|(n, i)| (n.clone(), *i)).collect(),
                Node::File { .. } => continue,
            };
            for (name, ino) in entries {
                let is_dir = self.inodes[&ino].is_dir();
                if is_dir && parents.contains_key(&ino) {
                    if let Node::Dir {
                        current, durable, ..
                    } = &mut self.inodes.get_mut(&dir).expect("queued directory").node
                    {
                        current.remove(&name);
                        durable.remove(&name);
                    }
                    report.entries_forgotten += 1;
                    continue;
                }
                *links.entry(ino).or_default() += 1;
                if is_dir {
                    parents.insert(ino, dir);
                    queue.push_back(ino);
                }
            }
        }
        let gone: Vec<u64> = self
            .inodes
            .keys()
            .filter(|i| **i != ROOT && !links.contains_key(i))
            .copied()
            .collect();
        for ino in gone {
            let inode = self.inodes.remove(&ino).expect("listed inode");
            if let Node::File { current, .. } = &inode.node {
                if before.contains(&ino) {
                    report.files_forgotten += 1;
                    report.bytes_forgotten += current.len();
                }
            }
        }
        self.used = 0;
        for (ino, inode) in &mut self.inodes {
            inode.links = links.get(ino).copied().unwrap_or(1);
            inode.open = 0;
            inode.counted = true;
            match &mut inode.node {
                Node::File { current, durable } => {
                    if !current.same_as(durable) {
                        report.files_rolled_back += 1;
                        report.bytes_forgotten += current.bytes_lost_in(durable);
                        *current = durable.clone();
                    }
                    self.used += current.len();
                }
                Node::Dir { parent, .. } => *parent = parents[ino],
            }
        }
        self.stats.cuts += 1;
        self.stats.forgotten.add(&report);
        report
    }

    /// Inodes a process can reach by name now.
    fn reachable(&self) -> BTreeSet<u64> {
        let mut seen = BTreeSet::from([ROOT]);
        let mut queue = VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            if let Some(Node::Dir { current, .. }) = self.inodes.get(&dir).map(|i| &i.node) {
                for ino in current.values() {
                    if seen.insert(*ino) {
                        queue.push_back(*ino);
                    }
                }
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(tree: &mut Tree, dir: u64, n: &str) -> u64 {
        tree.create_file(dir, name(n), 0o644, 0, 0).unwrap()
    }

    #[test]
    fn unsynced_bytes_and_names_are_forgotten() {
        let mut t = Tree::new(0, 0);
        let kept = file(&mut t, ROOT, "kept");
        t.write(kept, 0, b"durable").unwrap();
        t.sync(kept).unwrap();
        t.sync(ROOT).unwrap();
        t.write(kept, 3, b"-lost-tail").unwrap();
        let lost = file(&mut t, ROOT, "lost");
        t.write(lost, 0, b"12345").unwrap();
        t.sync(lost).unwrap();
        let report = t.cut();
        assert_eq!(t.read(kept, 0, 100).unwrap(), b"durable");
        assert_eq!(t.lookup(ROOT, name("lost")), Err(FsError::NotFound));
        assert_eq!(report.files_forgotten, 1);
        assert_eq!(report.files_rolled_back, 1);
        // 5 bytes of the forgotten file, 10 changed or cut off in the kept one.
        assert_eq!(report.bytes_forgotten, 5 + 10);
        assert_eq!(t.stats().used_bytes, 7);
    }

    #[test]
    fn pages_are_shared_until_written() {
        let mut t = Tree::new(0, 0);
        let f = file(&mut t, ROOT, "f");
        let big = vec![7u8; 3 * PAGE + 10];
        t.write(f, 0, &big).unwrap();
        t.sync(f).unwrap();
        t.write(f, PAGE as u64 + 1, b"x").unwrap();
        let Node::File { current, durable } = &t.inode(f).unwrap().node else {
            panic!("a file")
        };
        let shared = current
            .pages
            .iter()
            .zip(&durable.pages)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, 3, "only the written page is copied");
        assert_eq!(current.bytes_lost_in(durable), 1);
    }

    #[test]
    fn truncation_zeroes_the_tail_for_later_growth() {
        let mut t = Tree::new(0, 0);
        let f = file(&mut t, ROOT, "f");
        t.write(f, 0, b"abcdef").unwrap();
        t.resize(f, 2, false).unwrap();
        t.resize(f, 6, false).unwrap();
        assert_eq!(t.read(f, 0, 10).unwrap(), b"ab\0\0\0\0");
    }

    #[test]
    fn capacity_refuses_growth_not_overwrites() {
        let mut t = Tree::new(0, 0);
        t.set_capacity(Some(10));
        let f = file(&mut t, ROOT, "f");
        t.write(f, 0, b"0123456789").unwrap();
        assert_eq!(t.write(f, 10, b"x"), Err(FsError::NoSpace));
        t.write(f, 0, b"abc").unwrap();
        t.unlink(ROOT, name("f")).unwrap();
        assert_eq!(t.stats().used_bytes, 0);
        assert_eq!(t.stats().no_space, 1);
    }

    #[test]
    fn an_unlink_without_a_directory_sync_is_undone() {
        let mut t = Tree::new(0, 0);
        let d = t.mkdir(ROOT, name("d"), 0o755, 0, 0).unwrap();
        t.sync(ROOT).unwrap();
        let f = file(&mut t, d, "f");
        t.write(f, 0, b"data").unwrap();
        t.sync(f).unwrap();
        t.sync(d).unwrap();
        t.unlink(d, name("f")).unwrap();
        t.rename(ROOT, name("d"), ROOT, name("e"), false).unwrap();
        t.cut();
        assert_eq!(t.lookup(ROOT, name("d")), Ok(d));
        assert_eq!(t.lookup(ROOT, name("e")), Err(FsError::NotFound));
        assert_eq!(
            t.read(t.lookup(d, name("f")).unwrap(), 0, 9).unwrap(),
            b"data"
        );
    }
}
