//! The filesystem's operations as async functions over the client library, each
//! returning `Result<_, Errno>`; `ops.rs` adapts them to fuser's callbacks.

use super::errno::log_errno;
use super::handles::{Engine, Handles, OpenFile, OpenFiles, Pending};
use super::inodes::{attr, kind_of_mode, InodeTable, BLOCK_BYTES};
use super::placed::Placements;
use crate::client::tree::InodeRef;
use crate::client::{Client, ClientError};
use crate::id::Id;
use crate::proto::{Inode, Kind, Request, Response, Timespec};
use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type FsResult<T> = std::result::Result<T, Errno>;

/// Inodes whose extended attributes are kept.
const XATTR_CACHE_ENTRIES: u64 = 16_384;
/// Inodes whose attributes as given to the kernel are remembered.
const TOLD_ENTRIES: u64 = 65_536;

/// Settings of a mount that the operations need.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// How long the kernel may cache attributes and names.
    pub ttl: Duration,
    /// Chunk size of files created through this mount.
    pub chunk_bytes: u32,
}

/// One row of a directory listing, taken at opendir.
#[derive(Clone, Debug)]
pub struct DirRow {
    pub id: Id,
    pub ino: u64,
    pub kind: FileType,
    pub name: String,
}

/// A directory listing taken at opendir, and when its read started: readdirplus
/// gives the kernel its names for what is left of `ttl` since then.
#[derive(Debug)]
pub struct Listing {
    pub rows: Vec<DirRow>,
    pub since: Instant,
}

/// Who is asking: the caller's ids, for ownership of new nodes.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

pub struct Fs {
    pub engine: Engine,
    pub cfg: FsConfig,
    pub inodes: InodeTable,
    pub open: OpenFiles,
    pub files: Handles<Arc<OpenFile>>,
    pub dirs: Handles<Arc<Listing>>,
    /// Directories open here: their handles and their attributes at the last open. One
    /// removed while open still answers fstat, with no links, until its last close, as
    /// POSIX wants (xfstests generic/035).
    // Never held across an await.
    open_dirs: std::sync::Mutex<std::collections::HashMap<Id, (usize, FileAttr)>>,
    /// File locks across the ring's mounts (`locks.rs`).
    pub locks: super::locks::FsLocks,
    /// Extended attributes of inodes read in the last `ttl` (`ls -l` asks for
    /// `security.*` names of every file it lists; this spares the ring those reads).
    xattr_cache: moka::sync::Cache<Id, Arc<Xattrs>>,
    /// Size and mtime of each inode as last given to the kernel, kept as long as the
    /// kernel may keep them: an open that reads other ones makes the kernel drop its
    /// copy (see [`Fs::open`]).
    told: moka::sync::Cache<u64, (u64, std::time::SystemTime)>,
    /// How to tell the kernel to drop what it caches, once the session is up.
    notifier: std::sync::OnceLock<fuser::Notifier>,
    /// Where the kernel holds each directory's name (see `placed.rs`).
    placed: Placements,
}

/// How long a lookup that found a directory moved elsewhere waits for the kernel to
/// drop the old name before it gives the directory a new generation instead.
const MOVED_DIR_WAIT: Duration = Duration::from_millis(50);

/// Kept beyond `ttl` in `Fs::told`: the kernel starts its clock after ours.
const TOLD_SLACK: Duration = Duration::from_secs(1);

type Xattrs = std::collections::BTreeMap<String, serde_bytes::ByteBuf>;

/// Changes asked of `setattr`.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

/// Most chunks a file may have: its record lists every chunk's 20-byte hash and must fit
/// in one frame (FRAME_MAX_BYTES, 40 MiB) until chunk maps are paged (docs/metadata.md).
/// A bigger size gets EFBIG, not a map the mount cannot even allocate (xfstests
/// generic/564 wrote at 2^63 and the mount died). Pinned by tests/fs.rs
/// huge_offsets_get_efbig_and_the_mount_lives.
const MAX_FILE_CHUNKS: u64 = 1 << 20;

pub(super) fn too_big(size: u64, chunk_bytes: u64) -> bool {
    size.div_ceil(chunk_bytes) > MAX_FILE_CHUNKS
}

fn name_str(name: &std::ffi::OsStr) -> FsResult<&str> {
    name.to_str().ok_or(Errno::EINVAL)
}

fn ts(t: TimeOrNow, now: Timespec) -> Timespec {
    match t {
        TimeOrNow::Now => now,
        TimeOrNow::SpecificTime(t) => Timespec::from(t),
    }
}

impl Fs {
    pub fn new(client: Arc<Client>, cfg: FsConfig) -> Fs {
        Fs {
            locks: super::locks::FsLocks::new(client.clone()),
            engine: Engine::new(client, cfg.ttl),
            cfg: cfg.clone(),
            inodes: InodeTable::new(),
            open: OpenFiles::default(),
            files: Handles::new(),
            dirs: Handles::new(),
            open_dirs: Default::default(),
            xattr_cache: moka::sync::Cache::builder()
                .max_capacity(XATTR_CACHE_ENTRIES)
                .time_to_live(cfg.ttl.max(Duration::from_millis(1)))
                .build(),
            told: moka::sync::Cache::builder()
                .max_capacity(TOLD_ENTRIES)
                .time_to_live(cfg.ttl + TOLD_SLACK)
                .build(),
            notifier: std::sync::OnceLock::new(),
            placed: Placements::default(),
        }
    }

    /// The generation of inode `ino` to give the kernel with its entry.
    pub fn generation(&self, ino: INodeNo) -> u64 {
        self.placed.generation(ino.0)
    }

    /// Asks the kernel to drop its name `name` in `parent`; true when that finished
    /// within `MOVED_DIR_WAIT` (not while the parent is locked, as by a rename).
    async fn drop_kernel_name(&self, parent: u64, name: String) -> bool {
        let Some(n) = self.notifier.get().cloned() else {
            return false;
        };
        // On a blocking thread: the kernel takes the parent's lock first.
        let done = tokio::task::spawn_blocking(move || {
            // ENOENT: the kernel holds no such name, which is as good.
            let _ = n.inval_entry(INodeNo(parent), std::ffi::OsStr::new(&name));
        });
        tokio::time::timeout(MOVED_DIR_WAIT, done).await.is_ok()
    }

    /// Lets the filesystem tell the kernel to drop cached attributes and pages.
    pub fn set_notifier(&self, n: fuser::Notifier) {
        let _ = self.notifier.set(n);
    }

    /// Makes the kernel drop its attributes of `ino` (and its cached pages too, with
    /// `pages`), so its next stat, read past the end or seek reads them afresh. Never
    /// called while the kernel waits on a reply about the same pages.
    pub fn forget_kernel_copy(&self, ino: INodeNo, pages: bool) {
        self.told.invalidate(&ino.0);
        if let Some(n) = self.notifier.get() {
            // Offset -1: attributes only.
            if let Err(e) = n.inval_inode(ino, if pages { 0 } else { -1 }, 0) {
                tracing::debug!("invalidating inode {}: {e}", ino.0);
            }
        }
    }

    pub fn client(&self) -> &Client {
        &self.engine.client
    }

    pub(super) fn id(&self, ino: INodeNo) -> FsResult<Id> {
        self.inodes.id(ino).ok_or(Errno::ENOENT)
    }

    /// An inode: a file created here and not yet stored answers from memory.
    async fn get(&self, id: &Id) -> FsResult<InodeRef> {
        if let Some(p) = self.engine.pending(id) {
            return Ok(InodeRef {
                id: *id,
                version: 0,
                inode: p.inode,
            });
        }
        self.client()
            .get_inode(id)
            .await
            .map_err(|e| log_errno("get inode", &e))
    }

    /// A directory's record, from the cache when read within the last `ttl`.
    async fn dir(&self, id: &Id) -> FsResult<Arc<InodeRef>> {
        if let Some(d) = self.engine.cached_dir(id) {
            return Ok(d);
        }
        self.read_dir(id).await
    }

    /// A directory's record read from the ring (and cached).
    async fn read_dir(&self, id: &Id) -> FsResult<Arc<InodeRef>> {
        let since = Instant::now();
        let d = self.get(id).await?;
        self.engine.cache_dir(d.clone(), since);
        Ok(Arc::new(d))
    }

    fn forget_dirs(&self, ids: &[Id]) {
        for id in ids {
            self.engine.forget_dir(id);
        }
    }

    /// Stores a file created here that is still pending (see `handles.rs`), as its
    /// first close would: done before any operation that needs it on the ring.
    async fn settle(&self, id: &Id) -> FsResult<()> {
        if self.engine.pending(id).is_none() {
            return Ok(());
        }
        match self.open.get(id) {
            Some(f) => f
                .commit(&self.engine)
                .await
                .map_err(|e| log_errno("storing a new file", &e)),
            None => Ok(()),
        }
    }

    pub(super) async fn settle_name(&self, parent: &Id, name: &str) -> FsResult<()> {
        match self.engine.pending_named(parent, name) {
            Some(id) => self.settle(&id).await,
            None => Ok(()),
        }
    }

    async fn settle_all(&self) -> FsResult<()> {
        for id in self.engine.pending_ids() {
            self.settle(&id).await?;
        }
        Ok(())
    }

    /// The attributes of an inode just read or written, with what its open handles
    /// wrote but not committed.
    pub fn attr_of(&self, r: &InodeRef) -> FileAttr {
        if !self.cfg.ttl.is_zero() {
            self.xattr_cache
                .insert(r.id, Arc::new(r.inode.xattrs.clone()));
        }
        self.attr_of_copy(r)
    }

    /// [`Fs::attr_of`] for a copy from the directory cache: its extended attributes,
    /// as old as the copy, do not go into the xattr cache for another `ttl`.
    fn attr_of_copy(&self, r: &InodeRef) -> FileAttr {
        let ino = self.inodes.ino(&r.id);
        let mut a = attr(ino, &r.inode);
        if r.inode.kind == Kind::Dir {
            // Files created here and not yet stored are in the directory already.
            for (name, id) in self.engine.pending_in(&r.id) {
                if r.inode.entries.contains_key(&name) {
                    continue;
                }
                a.size += 32;
                a.blocks = a.size.div_ceil(512);
                if let Some(p) = self.engine.pending(&id) {
                    a.mtime = a.mtime.max(p.inode.ctime.into());
                    a.ctime = a.ctime.max(p.inode.ctime.into());
                }
            }
        }
        if r.inode.kind == Kind::File {
            if let Some(o) = self.open.get(&r.id).and_then(|f| f.overlay()) {
                a.size = o.size;
                a.blocks = a.blocks.max(o.size.div_ceil(512));
                if let Some(m) = o.mtime {
                    a.mtime = m.into();
                    a.ctime = m.into();
                }
            }
            if !self.cfg.ttl.is_zero() {
                self.told.insert(ino, (a.size, a.mtime));
            }
        }
        a
    }

    /// A name in a directory: its attributes, and how long the kernel may keep the
    /// name (the attributes, read now, are good for `ttl`).
    ///
    /// A name the cached directory holds is served from it, for what is left of the
    /// copy's `ttl`, so a name removed elsewhere lives at most `ttl` here. A name the
    /// copy lacks is asked of the directory's primary (one small round trip), so a name
    /// made on another mount is found once its creator's close returned. Misses are
    /// cached nowhere: an ENOENT reply leaves the kernel no negative entry. Pinned by
    /// `tests/fs.rs`, `names_made_and_removed_on_one_mount_reach_the_other`.
    ///
    /// Also returns the generation to answer with: a directory found elsewhere than the
    /// kernel last had it (moved by another mount) first has the kernel drop its old
    /// name, or gets a new generation when that cannot finish (see `placed.rs`).
    pub async fn lookup(
        &self,
        parent: INodeNo,
        name: &std::ffi::OsStr,
    ) -> FsResult<(FileAttr, Duration, u64)> {
        let (a, ttl) = self.find(parent, name).await?;
        let ino = a.ino;
        if a.kind == FileType::Directory && ino != INodeNo::ROOT {
            let name = name_str(name)?;
            if let Some((p, n)) = self.placed.place(ino.0, parent.0, name) {
                if !self.drop_kernel_name(p, n).await {
                    self.placed.renew(ino.0);
                }
            }
        }
        Ok((a, ttl, self.generation(ino)))
    }

    async fn find(
        &self,
        parent: INodeNo,
        name: &std::ffi::OsStr,
    ) -> FsResult<(FileAttr, Duration)> {
        let name = name_str(name)?;
        if name.len() > crate::client::tree::NAME_MAX_BYTES {
            return Err(Errno::ENAMETOOLONG);
        }
        let pid = self.id(parent)?;
        let ttl = self.cfg.ttl;
        // The kernel asks for "." (any node) and ".." (a directory) only to turn a file
        // handle back into an inode it no longer caches (open_by_handle_at; the mount
        // sets FUSE_EXPORT_SUPPORT). Pinned by tests/fs.rs file_handles_outlive_the_cache.
        match name {
            "." => return Ok((self.attr_of(&self.get(&pid).await?), ttl)),
            ".." => {
                let dir = self.get(&pid).await?;
                if dir.inode.kind != Kind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                return Ok((self.attr_of(&self.get(&dir.inode.parent).await?), ttl));
            }
            _ => {}
        }
        if let Some(id) = self.engine.pending_named(&pid, name) {
            return Ok((self.attr_of(&self.get(&id).await?), ttl));
        }
        if let Some((dir, left)) = self.engine.cached_dir_left(&pid) {
            if dir.inode.kind != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            match dir.inode.entries.get(name) {
                Some(entry) => match self.get(&entry.id).await {
                    Ok(child) => return Ok((self.attr_of(&child), left)),
                    // Removed since the copy was read: the directory is read again.
                    Err(Errno::ENOENT) => self.engine.forget_dir(&pid),
                    Err(e) => return Err(e),
                },
                None => {
                    let peeked = self.client().peek_name(&pid, name).await;
                    if let Some((version, found)) = peeked.map_err(|e| log_errno("lookup", &e))? {
                        if version != dir.version {
                            // Changed elsewhere: later lookups read it again.
                            self.engine.forget_dir(&pid);
                        }
                        let entry = found.ok_or(Errno::ENOENT)?;
                        return Ok((self.attr_of(&self.get(&entry.id).await?), ttl));
                    }
                    // No answer from the primary as such: the directory is read whole.
                }
            }
        }
        let dir = self.read_dir(&pid).await?;
        if dir.inode.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let entry = dir.inode.entries.get(name).ok_or(Errno::ENOENT)?;
        let child = self.get(&entry.id).await?;
        Ok((self.attr_of(&child), ttl))
    }

    /// Attributes, and how long the kernel may keep them; a directory's come from the
    /// directory cache when it holds one (the kernel asks for the parent's after every
    /// create, to check permissions), for what is left of the copy's `ttl`.
    pub async fn getattr(&self, ino: INodeNo) -> FsResult<(FileAttr, Duration)> {
        let id = self.id(ino)?;
        if let Some((d, left)) = self.engine.cached_dir_left(&id) {
            return Ok((self.attr_of_copy(&d), left));
        }
        let since = Instant::now();
        let r = match self.get(&id).await {
            Err(Errno::ENOENT) => {
                let a = self.removed_dir_attr(&id).ok_or(Errno::ENOENT)?;
                return Ok((a, self.cfg.ttl));
            }
            r => r?,
        };
        self.engine.cache_dir(r.clone(), since);
        Ok((self.attr_of(&r), self.cfg.ttl))
    }

    /// The attributes of a directory that is gone from the ring but still open here.
    fn removed_dir_attr(&self, id: &Id) -> Option<FileAttr> {
        let open = self.open_dirs.lock().expect("open dirs");
        let (_, a) = open.get(id)?;
        Some(FileAttr {
            nlink: 0,
            size: 0,
            blocks: 0,
            ..*a
        })
    }

    pub async fn setattr(&self, ino: INodeNo, set: SetAttr) -> FsResult<FileAttr> {
        let id = self.id(ino)?;
        self.settle(&id).await?;
        self.forget_dirs(&[id]);
        let now = Timespec::now();
        if let Some(size) = set.size {
            let cur = self.get(&id).await?;
            match cur.inode.kind {
                Kind::Dir => return Err(Errno::EISDIR),
                Kind::File => {}
                _ => return Err(Errno::EINVAL),
            }
            if too_big(size, cur.inode.chunk_bytes.max(1) as u64) {
                return Err(Errno::EFBIG);
            }
            let (f, _) = self.open.open(id, cur.inode, cur.version);
            let res = async {
                f.truncate(&self.engine, size).await?;
                f.commit(&self.engine).await
            }
            .await;
            self.release_file(&f).await;
            res.map_err(|e| log_errno("truncate", &e))?;
        } else if let Some(f) = self.open.get(&id) {
            // Explicit times must not be overwritten by a later commit of older writes.
            if set.mtime.is_some() {
                f.commit(&self.engine)
                    .await
                    .map_err(|e| log_errno("commit", &e))?;
            }
        }
        let has_meta = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
            || set.size.is_some();
        let r = if has_meta {
            let (_, r) = self
                .client()
                .update_inode(&id, |ino| {
                    if let Some(m) = set.mode {
                        ino.mode = m & 0o7777;
                    }
                    if let Some(u) = set.uid {
                        ino.uid = u;
                    }
                    if let Some(g) = set.gid {
                        ino.gid = g;
                    }
                    if let Some(a) = set.atime {
                        ino.atime = ts(a, now);
                    }
                    if let Some(m) = set.mtime {
                        ino.mtime = ts(m, now);
                    }
                    ino.ctime = now;
                    Ok(())
                })
                .await
                .map_err(|e| log_errno("setattr", &e))?;
            r
        } else {
            self.get(&id).await?
        };
        self.refresh_open(r.clone()).await;
        Ok(self.attr_of(&r))
    }

    async fn refresh_open(&self, r: InodeRef) {
        self.forget_dirs(&[r.id]);
        self.xattr_cache
            .insert(r.id, Arc::new(r.inode.xattrs.clone()));
        if let Some(f) = self.open.get(&r.id) {
            f.refresh(r.inode, r.version).await;
        }
    }

    /// Creates a node of any kind under `parent`, owned by the caller (the group of a
    /// set-group-id directory, which new directories inherit).
    pub async fn make(
        &self,
        who: Caller,
        parent: INodeNo,
        name: &std::ffi::OsStr,
        mode: u32,
        rdev: u32,
        target: Option<&str>,
    ) -> FsResult<InodeRef> {
        let name = name_str(name)?;
        let pid = self.id(parent)?;
        let dir = self.dir(&pid).await?;
        if dir.inode.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if dir.inode.entries.contains_key(name) || self.engine.pending_named(&pid, name).is_some() {
            return Err(Errno::EEXIST);
        }
        let inode = self.new_inode(who, &dir.inode, pid, mode, rdev, target)?;
        let since = Instant::now();
        match self
            .client()
            .create_child_in(&pid, name, inode, Some((*dir).clone()))
            .await
        {
            Ok((child, dir)) => {
                // The directory as this create wrote it: the next create or lookup in
                // it needs no read.
                match dir {
                    Some(dir) => self.engine.cache_dir(dir, since),
                    None => self.forget_dirs(&[pid]),
                }
                if child.inode.kind == Kind::Dir {
                    let ino = self.inodes.ino(&child.id);
                    self.placed.place(ino, parent.0, name);
                }
                Ok(child)
            }
            Err(e) => {
                self.forget_dirs(&[pid]);
                Err(log_errno("create", &e))
            }
        }
    }

    /// A new inode of any kind under `dir` (whose id is `pid`), owned by the caller (the
    /// group of a set-group-id directory, which new directories inherit).
    fn new_inode(
        &self,
        who: Caller,
        dir: &Inode,
        pid: Id,
        mode: u32,
        rdev: u32,
        target: Option<&str>,
    ) -> FsResult<Inode> {
        let kind = if target.is_some() {
            Kind::Symlink
        } else {
            kind_of_mode(mode).ok_or(Errno::EINVAL)?
        };
        let mut gid = who.gid;
        let mut perm = mode & 0o7777;
        if dir.mode & libc::S_ISGID != 0 {
            gid = dir.gid;
            if kind == Kind::Dir {
                perm |= libc::S_ISGID;
            }
        }
        let mut inode = Inode::new(kind, perm, who.uid, gid, pid, self.cfg.chunk_bytes);
        if kind == Kind::Symlink {
            inode.mode = 0o777;
            inode.target = target.unwrap_or_default().to_string();
            inode.size = inode.target.len() as u64;
        }
        if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
            inode.rdev = rdev;
        }
        Ok(inode)
    }

    /// open(O_CREAT) of a regular file: returns its attributes and a handle.
    ///
    /// Without O_EXCL the file is only *pending* until its first flush, fsync or close,
    /// which writes its inode (with its content, for a small file) and its name at once
    /// (see `handles.rs`): one round of writes per small file instead of two in a row.
    /// The name is checked against the directory as the ring holds it now, so a name
    /// that exists anywhere is `EEXIST` here; one made elsewhere between this and the
    /// first close makes that close fail (`EIO`), never overwritten. O_EXCL creates are
    /// written at once, so exclusive creation stays atomic across mounts.
    pub async fn create_file(
        &self,
        who: Caller,
        parent: INodeNo,
        name: &std::ffi::OsStr,
        mode: u32,
        flags: i32,
    ) -> FsResult<(FileAttr, u64)> {
        if flags & libc::O_EXCL != 0 || self.cfg.ttl.is_zero() {
            let r = self.make(who, parent, name, mode, 0, None).await?;
            let a = self.attr_of(&r);
            return Ok((a, self.open_ref(r).await));
        }
        let name = name_str(name)?;
        crate::client::tree::check_name(name).map_err(|e| log_errno("create", &e))?;
        let pid = self.id(parent)?;
        let dir = self.fresh_name(&pid, name).await?;
        let mut inode = self.new_inode(who, &dir.inode, pid, mode, 0, None)?;
        if inode.kind != Kind::File {
            return Err(Errno::EINVAL);
        }
        inode.parent = pid;
        let id = Id::random();
        let p = Pending {
            parent: pid,
            name: name.to_string(),
            inode: inode.clone(),
        };
        if !self.engine.add_pending(id, p) {
            return Err(Errno::EEXIST);
        }
        let (f, _) = self.open.open(id, inode.clone(), 0);
        let a = self.attr_of(&InodeRef {
            id,
            version: 0,
            inode,
        });
        Ok((a, self.files.insert(f)))
    }

    /// The directory `pid` for a create of `name`, once the name is found free on the
    /// ring, not only here: the primary's copy is asked (the first commit's write
    /// confirms it), for the one name when the directory is cached (its mode and group
    /// are what the new file needs), or whole otherwise.
    async fn fresh_name(&self, pid: &Id, name: &str) -> FsResult<Arc<InodeRef>> {
        if let Some(dir) = self.engine.cached_dir(pid) {
            let peeked = self.client().peek_name(pid, name).await;
            match peeked.map_err(|e| log_errno("create", &e))? {
                Some((_, Some(_))) => return Err(Errno::EEXIST),
                Some((version, None)) => {
                    if version != dir.version {
                        // Changed elsewhere: later lookups read it again.
                        self.engine.forget_dir(pid);
                    }
                    return Ok(dir);
                }
                None => {}
            }
        }
        let since = Instant::now();
        let dir = self.client().peek_inode(pid).await;
        let dir = dir.map_err(|e| log_errno("create", &e))?;
        self.engine.cache_dir(dir.clone(), since);
        if dir.inode.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if dir.inode.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        Ok(Arc::new(dir))
    }

    /// Removes a name; deletes the inode when no name and no open handle is left.
    pub async fn remove(&self, parent: INodeNo, name: &std::ffi::OsStr, dir: bool) -> FsResult<()> {
        let name = name_str(name)?;
        let pid = self.id(parent)?;
        if dir {
            // A pending file in the directory to remove makes it non-empty.
            self.settle_all().await?;
        } else {
            self.settle_name(&pid, name).await?;
        }
        // A file open here is deleted at its last close instead.
        let known = self.engine.cached_dir(&pid);
        let since = Instant::now();
        let ((id, left, deleted), written) = self
            .client()
            .unlink_child_in(
                &pid,
                name,
                dir,
                |id| !self.open.is_open(id),
                known.as_deref(),
            )
            .await
            .inspect_err(|_| self.forget_dirs(&[pid]))
            .map_err(|e| log_errno("unlink", &e))?;
        // The directory as the removal wrote it, when the cached copy was the version
        // before: the next lookup in it needs no read.
        match written {
            Some(d) => self.engine.cache_dir(d, since),
            None => self.forget_dirs(&[pid]),
        }
        self.forget_dirs(&[id]);
        if !deleted {
            self.maybe_delete(&id, left).await;
        }
        Ok(())
    }

    pub(super) async fn maybe_delete(&self, id: &Id, left: u32) {
        if left == 0 && !self.open.defer_delete(id) {
            if let Err(e) = self.client().delete_inode(id).await {
                tracing::warn!("deleting unlinked inode {}: {e}", id.short());
            }
        }
    }

    pub async fn rename(
        &self,
        parent: INodeNo,
        name: &std::ffi::OsStr,
        newparent: INodeNo,
        newname: &std::ffi::OsStr,
        flags: u32,
    ) -> FsResult<()> {
        if flags & libc::RENAME_EXCHANGE != 0 || flags & libc::RENAME_WHITEOUT != 0 {
            return Err(Errno::EINVAL);
        }
        let (name, newname) = (name_str(name)?, name_str(newname)?);
        let (src, dst) = (self.id(parent)?, self.id(newparent)?);
        self.settle_name(&src, name).await?;
        self.settle_name(&dst, newname).await?;
        let no_replace = flags & libc::RENAME_NOREPLACE != 0;
        let replaced = self
            .client()
            .rename(&src, name, &dst, newname, no_replace)
            .await
            .inspect_err(|_| self.forget_dirs(&[src, dst]))
            .map_err(|e| log_errno("rename", &e))?;
        // The moved node's own record changed too (its ctime; a directory's parent).
        self.engine.forget_all_dirs();
        // The kernel moves its name itself.
        self.placed.moved(parent.0, name, newparent.0, newname);
        if let Some((old, left)) = replaced {
            self.forget_dirs(&[old]);
            self.maybe_delete(&old, left).await;
        }
        Ok(())
    }

    pub async fn link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &std::ffi::OsStr,
    ) -> FsResult<FileAttr> {
        let name = name_str(newname)?;
        let (id, pid) = (self.id(ino)?, self.id(newparent)?);
        if self.engine.pending_named(&pid, name).is_some() {
            return Err(Errno::EEXIST);
        }
        self.settle(&id).await?;
        let r = self
            .client()
            .link_child(&id, &pid, name)
            .await
            .inspect(|_| self.forget_dirs(&[pid]))
            .map_err(|e| match e {
                ClientError::IsDir(_) => Errno::EPERM,
                e => log_errno("link", &e),
            })?;
        Ok(self.attr_of(&r))
    }

    pub async fn readlink(&self, ino: INodeNo) -> FsResult<Vec<u8>> {
        let r = self.get(&self.id(ino)?).await?;
        if r.inode.kind != Kind::Symlink {
            return Err(Errno::EINVAL);
        }
        Ok(r.inode.target.into_bytes())
    }

    /// Opens a file: reads its record afresh (close-to-open) and returns a handle.
    ///
    /// The kernel checked the open against attributes it may hold from before another
    /// mount's close; with a stale size it would cut reads short and append at the old
    /// end. So when the record read now differs from what the kernel was told, the
    /// kernel drops its copy before the open returns (its pages it drops itself: no
    /// `FOPEN_KEEP_CACHE`). Pinned by `tests/fs.rs`,
    /// `sizes_closed_on_one_mount_hold_at_the_next_open_on_the_other`.
    pub async fn open(&self, ino: INodeNo) -> FsResult<u64> {
        let id = self.id(ino)?;
        let r = self.get(&id).await?;
        match r.inode.kind {
            Kind::Dir => return Err(Errno::EISDIR),
            Kind::File => {}
            _ => return Err(Errno::EINVAL),
        }
        if !self.open.is_open(&id) {
            if let Some(told) = self.told.get(&ino.0) {
                let now = attr(ino.0, &r.inode);
                if told != (now.size, now.mtime) {
                    self.forget_kernel_copy(ino, false);
                }
            }
        }
        Ok(self.open_ref(r).await)
    }

    pub async fn open_ref(&self, r: InodeRef) -> u64 {
        let (f, existed) = self.open.open(r.id, r.inode.clone(), r.version);
        // (A pending file, version 0, has nothing newer on the ring to take.)
        if existed && r.version > 0 {
            f.refresh(r.inode, r.version).await;
        }
        self.files.insert(f)
    }

    pub(super) fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files.get(fh).ok_or(Errno::EBADF)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let f = self.file(fh)?;
        self.lock_check(fh)?;
        f.read(&self.engine, offset, size as usize)
            .await
            .map_err(|e| log_errno("read", &e))
    }

    /// A write at `offset`; with `append` (an O_APPEND handle) at the file's end as
    /// this mount knows it, which lies past the kernel's offset when another mount grew
    /// the file since the kernel last read its size. Returns the bytes written and
    /// whether they went elsewhere than the kernel said (its pages there are wrong).
    pub async fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        append: bool,
    ) -> FsResult<(u32, bool)> {
        let f = self.file(fh)?;
        self.lock_check(fh)?;
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > i64::MAX as u64 || too_big(end, f.state.lock().await.cb()) {
            return Err(Errno::EFBIG);
        }
        let at = f
            .write(&self.engine, (!append).then_some(offset), data)
            .await
            .map_err(|e| log_errno("write", &e))?;
        Ok((data.len() as u32, at != offset))
    }

    /// flush and fsync: everything written through any handle of the file is durable.
    pub async fn sync(&self, fh: u64) -> FsResult<()> {
        let f = self.file(fh)?;
        self.lock_check(fh)?;
        f.commit(&self.engine)
            .await
            .map_err(|e| log_errno("flush", &e))
    }

    /// fsyncdir: the files created here in this directory and not yet stored are.
    pub async fn sync_dir(&self, ino: INodeNo) -> FsResult<()> {
        let id = self.id(ino)?;
        for (_, child) in self.engine.pending_in(&id) {
            self.settle(&child).await?;
        }
        Ok(())
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let f = self.files.remove(fh).ok_or(Errno::EBADF)?;
        let res = f
            .commit(&self.engine)
            .await
            .map_err(|e| log_errno("release", &e));
        self.release_file(&f).await;
        res
    }

    async fn release_file(&self, f: &Arc<OpenFile>) {
        if let Some(last) = self.open.close(&f.id) {
            if let Some(p) = self.engine.pending(&last.id) {
                // Its close could not store it (and said so): nothing is left to try.
                self.engine.remove_pending(&last.id);
                self.forget_dirs(&[p.parent]);
                let _ = self
                    .client()
                    .unlink_entry(&p.parent, &p.name, last.id)
                    .await;
                return;
            }
            if last.unlinked.load(std::sync::atomic::Ordering::SeqCst) {
                if let Err(e) = self.client().delete_inode(&last.id).await {
                    tracing::warn!("deleting unlinked inode {}: {e}", last.id.short());
                }
            }
        }
    }

    /// Commits the open files whose uploaded chunks have waited too long for their
    /// record (see `WRITEBACK_MAX_SECS`). Returns how many commits failed.
    pub async fn commit_overdue(&self) -> usize {
        let mut failed = 0;
        for f in self.open.all() {
            if !f.commit_if_overdue(&self.engine).await {
                failed += 1;
            }
        }
        failed
    }

    /// Commits every open file (before an unmount).
    pub async fn flush_all(&self) -> usize {
        let mut failed = 0;
        for f in self.open.all() {
            if let Err(e) = f.commit(&self.engine).await {
                tracing::error!("flushing inode {} failed: {e}", f.id.short());
                failed += 1;
            }
        }
        failed
    }

    pub async fn opendir(&self, ino: INodeNo) -> FsResult<u64> {
        let id = self.id(ino)?;
        // Taken before the read: a file stored meanwhile is in one or the other.
        let pending = self.engine.pending_in(&id);
        let since = Instant::now();
        let r = self.get(&id).await?;
        if r.inode.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let me = self.inodes.ino(&r.id);
        let parent = self.inodes.ino(&r.inode.parent);
        let mut rows = vec![
            DirRow {
                id: r.id,
                ino: me,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirRow {
                id: r.inode.parent,
                ino: parent,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for (name, e) in &r.inode.entries {
            rows.push(DirRow {
                id: e.id,
                ino: self.inodes.ino(&e.id),
                kind: super::inodes::file_type(e.kind),
                name: name.clone(),
            });
        }
        for (name, id) in pending {
            if !r.inode.entries.contains_key(&name) {
                rows.push(DirRow {
                    id,
                    ino: self.inodes.ino(&id),
                    kind: FileType::RegularFile,
                    name,
                });
            }
        }
        let a = self.attr_of(&r);
        let mut open = self.open_dirs.lock().expect("open dirs");
        let e = open.entry(r.id).or_insert((0, a));
        *e = (e.0 + 1, a);
        drop(open);
        Ok(self.dirs.insert(Arc::new(Listing { rows, since })))
    }

    pub fn releasedir(&self, fh: u64) {
        // The first row is always ".", the directory itself.
        let Some(id) = self
            .dirs
            .remove(fh)
            .and_then(|l| l.rows.first().map(|r| r.id))
        else {
            return;
        };
        let mut open = self.open_dirs.lock().expect("open dirs");
        if let Some(e) = open.get_mut(&id) {
            e.0 -= 1;
            if e.0 == 0 {
                open.remove(&id);
            }
        }
    }

    /// Attributes of a batch of listing rows, fetched in parallel; `None` for a row
    /// whose inode vanished since the listing was taken.
    pub async fn row_attrs(&self, rows: &[DirRow]) -> FsResult<Vec<Option<FileAttr>>> {
        let ids: Vec<Id> = rows.iter().map(|r| r.id).collect();
        let got = futures::future::join_all(ids.iter().map(|id| async move {
            match self.engine.pending(id) {
                Some(p) => Ok(Some(InodeRef {
                    id: *id,
                    version: 0,
                    inode: p.inode,
                })),
                None => self.client().get_inode_opt(id).await,
            }
        }))
        .await;
        got.into_iter()
            .map(|g| match g {
                Ok(Some(r)) => Ok(Some(self.attr_of(&r))),
                Ok(None) => Ok(None),
                Err(e) => Err(log_errno("readdirplus", &e)),
            })
            .collect()
    }

    pub async fn statfs(&self) -> FsResult<(u64, u64, u64)> {
        let view = self.client().view();
        let t = self.client().cfg.rpc_timeout;
        let stats = futures::future::join_all(
            view.peers
                .iter()
                .map(|p| self.client().net.call(&p.addr, Request::Stats, t)),
        )
        .await;
        // Used is what the ring stores (every copy, divided by R below), not what the
        // disks hold for anyone: so df shows space coming back when chunks are freed,
        // whatever else shares the disks. Size is used plus the disks' free space.
        let (mut stored, mut free, mut records) = (0u64, 0u64, 0u64);
        for s in stats.into_iter().flatten() {
            if let Response::Stats(s) = s {
                stored += s.bytes;
                free += s.disk_free;
                records += s.records;
            }
        }
        let total = stored + free;
        let copies = view.replicas.clamp(1, view.peers.len().max(1)) as u64;
        let b = BLOCK_BYTES as u64;
        Ok((total / copies / b, free / copies / b, records / copies))
    }

    pub async fn getxattr(&self, ino: INodeNo, name: &std::ffi::OsStr) -> FsResult<Vec<u8>> {
        let name = name_str(name)?;
        let id = self.id(ino)?;
        if let Some(f) = self.open.get(&id) {
            return f.xattr(name).await.ok_or(Errno::ENODATA);
        }
        let r = self.get(&id).await?;
        r.inode
            .xattrs
            .get(name)
            .map(|v| v.to_vec())
            .ok_or(Errno::ENODATA)
    }

    /// An extended attribute answered from memory, when the inode was read within the
    /// TTL and is not open (open files answer from their own state).
    pub fn cached_xattr(&self, ino: INodeNo, name: &std::ffi::OsStr) -> Option<FsResult<Vec<u8>>> {
        let id = self.inodes.id(ino)?;
        let name = name.to_str()?;
        if self.open.get(&id).is_some() {
            return None;
        }
        let x = self.xattr_cache.get(&id)?;
        Some(x.get(name).map(|v| v.to_vec()).ok_or(Errno::ENODATA))
    }

    pub async fn listxattr(&self, ino: INodeNo) -> FsResult<Vec<u8>> {
        let r = self.get(&self.id(ino)?).await?;
        let mut out = Vec::new();
        for k in r.inode.xattrs.keys() {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub async fn setxattr(
        &self,
        ino: INodeNo,
        name: &std::ffi::OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        let name = name_str(name)?.to_string();
        if name.starts_with("system.") {
            return Err(Errno::EOPNOTSUPP);
        }
        if name.is_empty() || name.len() > 255 {
            return Err(Errno::ERANGE);
        }
        let id = self.id(ino)?;
        self.settle(&id).await?;
        let now = Timespec::now();
        let res = self
            .client()
            .update_inode(&id, |ino| {
                let exists = ino.xattrs.contains_key(&name);
                if flags & libc::XATTR_CREATE != 0 && exists {
                    return Err(ClientError::Exists(name.clone()));
                }
                if flags & libc::XATTR_REPLACE != 0 && !exists {
                    return Err(ClientError::NoAttribute(name.clone()));
                }
                ino.xattrs
                    .insert(name.clone(), serde_bytes::ByteBuf::from(value.to_vec()));
                ino.ctime = now;
                Ok(())
            })
            .await;
        match res {
            Ok((_, r)) => {
                self.refresh_open(r).await;
                Ok(())
            }
            Err(e) => Err(log_errno("setxattr", &e)),
        }
    }

    pub async fn removexattr(&self, ino: INodeNo, name: &std::ffi::OsStr) -> FsResult<()> {
        let name = name_str(name)?.to_string();
        let id = self.id(ino)?;
        self.settle(&id).await?;
        let now = Timespec::now();
        let res = self
            .client()
            .update_inode(&id, |ino| {
                if ino.xattrs.remove(&name).is_none() {
                    return Err(ClientError::NoAttribute(name.clone()));
                }
                ino.ctime = now;
                Ok(())
            })
            .await;
        match res {
            Ok((_, r)) => {
                self.refresh_open(r).await;
                Ok(())
            }
            Err(e) => Err(log_errno("removexattr", &e)),
        }
    }
}
