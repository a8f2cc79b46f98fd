//! fuser's callbacks: each one copies its arguments, hands its reply to a task on the
//! mount's tokio runtime and returns, so FUSE threads never wait on the network.

use super::vfs::{Caller, Fs, FsResult, SetAttr};
use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::task::TaskTracker;

/// Listing rows whose attributes one readdirplus step fetches at once.
const READDIRPLUS_BATCH: usize = 64;

/// Largest read or write the kernel sends in one request (its limit here is 1 MiB).
pub const MAX_IO_BYTES: u32 = 1024 * 1024;

pub struct ChordFuse {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    tracker: TaskTracker,
}

impl ChordFuse {
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle, tracker: TaskTracker) -> ChordFuse {
        ChordFuse { fs, rt, tracker }
    }

    /// Runs an operation as a tracked task (unmount waits for the tracked ones).
    fn spawn<F, Fut>(&self, op: F)
    where
        F: FnOnce(Arc<Fs>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = op(self.fs.clone());
        self.rt.spawn(self.tracker.track_future(fut));
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn entry(fs: &Fs, reply: ReplyEntry, res: FsResult<FileAttr>) {
    match res {
        Ok(a) => reply.entry(&fs.cfg.ttl, &a, Generation(fs.generation(a.ino))),
        Err(e) => reply.error(e),
    }
}

fn attr(fs: &Fs, reply: ReplyAttr, res: FsResult<FileAttr>) {
    match res {
        Ok(a) => reply.attr(&fs.cfg.ttl, &a),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, res: FsResult<()>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn xattr(reply: ReplyXattr, size: u32, res: FsResult<Vec<u8>>) {
    match res {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

impl fuser::Filesystem for ChordFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO_BYTES);
        let _ = config.set_max_readahead(MAX_IO_BYTES);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        for cap in [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            // File handles (name_to_handle_at) stay valid after the kernel drops the
            // inode: it looks the number up again with "." and "..".
            InitFlags::FUSE_EXPORT_SUPPORT,
            // Locks go to the ring (getlk/setlk below), not to this kernel alone.
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.spawn(|fs| async move {
            match fs.lookup(parent, &name).await {
                // The name for as long as it is known good, its attributes for the TTL.
                Ok((a, left, generation)) => {
                    reply.entry_with_ttls(&fs.cfg.ttl, &left, &a, Generation(generation))
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(|fs| async move {
            match fs.getattr(ino).await {
                Ok((a, left)) => reply.attr(&left, &a),
                Err(e) => reply.error(e),
            }
        });
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
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        self.spawn(|fs| async move {
            let res = fs.setattr(ino, set).await;
            attr(&fs, reply, res)
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(|fs| async move {
            match fs.readlink(ino).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (who, name) = (caller(req), name.to_owned());
        self.spawn(|fs| async move {
            let res = fs
                .make(who, parent, &name, mode, rdev, None)
                .await
                .map(|r| fs.attr_of(&r));
            entry(&fs, reply, res)
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (who, name) = (caller(req), name.to_owned());
        let mode = (mode & 0o7777) | libc::S_IFDIR;
        self.spawn(|fs| async move {
            let res = fs
                .make(who, parent, &name, mode, 0, None)
                .await
                .map(|r| fs.attr_of(&r));
            entry(&fs, reply, res)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn(|fs| async move { empty(reply, fs.remove(parent, &name, false).await) });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn(|fs| async move { empty(reply, fs.remove(parent, &name, true).await) });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (who, name) = (caller(req), link_name.to_owned());
        let target = target.as_os_str().to_owned();
        self.spawn(|fs| async move {
            let res = match target.to_str() {
                None => Err(Errno::EINVAL),
                Some(t) => fs
                    .make(who, parent, &name, 0, 0, Some(t))
                    .await
                    .map(|r| fs.attr_of(&r)),
            };
            entry(&fs, reply, res)
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        let bits = flags.bits();
        if bits & (libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT) != 0 {
            let who = caller(req);
            return self.spawn(|fs| async move {
                let res = fs
                    .rename2(who, parent, &name, newparent, &newname, bits)
                    .await;
                empty(reply, res)
            });
        }
        self.spawn(|fs| async move {
            empty(
                reply,
                fs.rename(parent, &name, newparent, &newname, flags.bits())
                    .await,
            )
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = newname.to_owned();
        self.spawn(|fs| async move {
            let res = fs.link(ino, newparent, &newname).await;
            entry(&fs, reply, res)
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(|fs| async move {
            match fs.open(ino).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(|fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        let append = flags.0 & libc::O_APPEND != 0;
        self.spawn(|fs| async move {
            match fs.write(fh.0, offset, &data, append).await {
                Ok((n, moved)) => {
                    reply.written(n);
                    if moved {
                        // After the reply (the writer holds those pages until then),
                        // on a blocking thread: dropping pages waits for their locks.
                        let task = move || fs.forget_kernel_copy(ino, true);
                        drop(tokio::task::spawn_blocking(task));
                    }
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.spawn(|fs| async move {
            let res = fs.sync(fh.0).await;
            // A close drops the closing process's POSIX locks on the file, whatever the
            // commit did (after it, so the next holder reads what was written).
            fs.unlock_owner(fh.0, lock_owner.0).await;
            empty(reply, res)
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|fs| async move {
            let res = fs.release(fh.0).await;
            fs.release_locks(fh.0, lock_owner.map(|o| o.0)).await;
            empty(reply, res)
        });
    }

    fn getlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let tid = req.pid();
        self.spawn(|fs| async move {
            match fs
                .getlk(fh.0, tid, lock_owner.0, start, end, typ, pid)
                .await
            {
                Ok((start, end, typ, pid)) => reply.locked(start, end, typ, pid),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let tid = req.pid();
        self.spawn(|fs| async move {
            let res = fs
                .setlk(ino, fh.0, tid, lock_owner.0, start, end, typ, pid, sleep)
                .await;
            empty(reply, res)
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|fs| async move { empty(reply, fs.sync(fh.0).await) });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(|fs| async move {
            match fs.opendir(ino).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(listing) = self.fs.dirs.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, row) in listing.rows.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(row.ino), (i + 1) as u64, row.kind, &row.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(listing) = self.fs.dirs.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        self.spawn(|fs| async move {
            // Names as old as the listing; one TTL covers them and their attributes.
            let ttl = fs.cfg.ttl.saturating_sub(listing.since.elapsed());
            let rows = &listing.rows;
            let mut next = offset as usize;
            while next < rows.len() {
                let batch = &rows[next..(next + READDIRPLUS_BATCH).min(rows.len())];
                let attrs = match fs.row_attrs(batch).await {
                    Ok(a) => a,
                    Err(e) => return reply.error(e),
                };
                for (row, attr) in batch.iter().zip(attrs) {
                    next += 1;
                    let Some(attr) = attr else { continue };
                    if reply.add(
                        INodeNo(row.ino),
                        next as u64,
                        &row.name,
                        &ttl,
                        &attr,
                        Generation(fs.generation(attr.ino)),
                    ) {
                        return reply.ok();
                    }
                }
            }
            reply.ok()
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
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
        // Directory changes are compare-and-set writes, durable when they return; only
        // the names of files created here and not yet stored are left to write.
        self.spawn(|fs| async move { empty(reply, fs.sync_dir(ino).await) });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(|fs| async move {
            match fs.statfs().await {
                Ok((blocks, free, files)) => {
                    let bs = super::inodes::BLOCK_BYTES;
                    let ffree = u32::MAX as u64;
                    reply.statfs(blocks, free, free, files + ffree, ffree, bs, 255, bs)
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.spawn(|fs| async move { empty(reply, fs.setxattr(ino, &name, &value, flags).await) });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if let Some(res) = self.fs.cached_xattr(ino, name) {
            // `ls -l` asks this of every file: answer without a task when we can.
            return xattr(reply, size, res);
        }
        let name = name.to_owned();
        self.spawn(|fs| async move { xattr(reply, size, fs.getxattr(ino, &name).await) });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn(|fs| async move { xattr(reply, size, fs.listxattr(ino).await) });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn(|fs| async move { empty(reply, fs.removexattr(ino, &name).await) });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.spawn(
            |fs| async move { empty(reply, fs.fallocate(fh.0, offset, length, mode).await) },
        );
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.spawn(|fs| async move {
            match fs
                .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
                .await
            {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.spawn(|fs| async move {
            match fs.lseek(fh.0, offset, whence).await {
                Ok(o) => reply.offset(o),
                Err(e) => reply.error(e),
            }
        });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // No ioctls here. Python asks every file it opens whether it is a terminal
        // (TCGETS); fuser's default answer logs a warning each time.
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions (default_permissions); existence is all that is left.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (who, name) = (caller(req), name.to_owned());
        let mode = (mode & 0o7777) | libc::S_IFREG;
        self.spawn(|fs| async move {
            match fs.create_file(who, parent, &name, mode, flags).await {
                Ok((a, fh)) => reply.created(
                    &fs.cfg.ttl,
                    &a,
                    Generation(fs.generation(a.ino)),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(e),
            }
        });
    }
}
