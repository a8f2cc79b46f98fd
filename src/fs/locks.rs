//! File locks through the mount: fcntl (F_GETLK, F_SETLK, F_SETLKW), OFD and flock
//! locks held across every mount of the ring, at each file's primary
//! ([`crate::client::locks`]; docs/locks.md).
//!
//! How the kernel hands them over (FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS): every lock
//! request names a lock owner, the process's file table for POSIX locks and the open
//! file for OFD locks; flock() comes as a whole-file lock owned by the open file (fuser
//! does not pass the kernel's flock flag, so flock and fcntl locks on one file conflict
//! with each other, as on NFS). A close sends FLUSH with the closer's owner: POSIX
//! locks are dropped when their process closes any descriptor of the file. The last
//! close of an open file sends RELEASE: its OFD and flock locks go.
//!
//! Locks order data too, as on NFS: a change that releases bytes first commits what
//! was written (so the next holder, on any mount, reads it), and one that takes bytes
//! drops the kernel's cached pages and attributes of the file, takes the newest record
//! and forgets the cached directory, so what others wrote under the lock is read.
//!
//! A blocked F_SETLKW ends with EINTR when its thread gets a signal. fuser 0.18 answers
//! FUSE_INTERRUPT with ENOSYS (the kernel then sends no more interrupts and waits on,
//! killable only, for the answer), so the mount looks for itself: every
//! [`SIGNAL_POLL`] the waiting thread's pending signals are read from /proc. A FUSE
//! reply cannot ask for a restart (the kernel refuses ERESTARTSYS from userspace), so
//! the call ends with EINTR even under SA_RESTART.

use super::errno::log_errno;
use super::vfs::{Fs, FsResult};
use crate::client::locks::LockError;
use crate::id::Id;
use crate::proto::lock::{LockKind, LockRange, LOCK_EOF};
use crate::ring::locks::{apply, covers, LockOp};
use fuser::{Errno, INodeNo};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How often a blocked lock request looks for a signal to its thread.
pub const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The lock owners that took locks through one file handle.
#[derive(Default)]
struct HandleLocks {
    id: Id,
    owners: HashSet<u64>,
    /// An owner's lock taken through this handle was lost: every later operation on
    /// it fails with EIO until it is closed.
    poisoned: bool,
}

/// The mount's side of locking: the session and which handles locked what.
pub struct FsLocks {
    pub session: Arc<crate::client::locks::LockSession>,
    // Never held across an await.
    handles: Mutex<HashMap<u64, HandleLocks>>,
    notifier: OnceLock<fuser::Notifier>,
}

impl FsLocks {
    pub fn new(client: Arc<crate::client::Client>) -> FsLocks {
        FsLocks {
            session: crate::client::locks::LockSession::new(client),
            handles: Mutex::new(HashMap::new()),
            notifier: OnceLock::new(),
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HandleLocks>> {
        self.handles.lock().expect("lock handles")
    }
}

/// A lock range of the kernel (`start..=end`, `end` at or past `OFFSET_MAX` for "to
/// the end") as `[start, end)`.
fn span(start: u64, end: u64) -> FsResult<(u64, u64)> {
    if end < start {
        return Err(Errno::EINVAL);
    }
    let end = if end >= i64::MAX as u64 {
        LOCK_EOF
    } else {
        end + 1
    };
    Ok((start, end))
}

/// The last byte of `[_, end)` as the kernel writes it.
fn last(end: u64) -> u64 {
    if end == LOCK_EOF {
        i64::MAX as u64
    } else {
        end - 1
    }
}

fn kind_of(typ: i32) -> FsResult<Option<LockKind>> {
    match typ {
        libc::F_RDLCK => Ok(Some(LockKind::Shared)),
        libc::F_WRLCK => Ok(Some(LockKind::Exclusive)),
        libc::F_UNLCK => Ok(None),
        _ => Err(Errno::EINVAL),
    }
}

fn typ_of(kind: LockKind) -> i32 {
    match kind {
        LockKind::Shared => libc::F_RDLCK,
        LockKind::Exclusive => libc::F_WRLCK,
    }
}

/// One mask of a /proc status line ("SigPnd:\t0000000000000002").
fn mask(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether thread `tid` of process `tgid` has a signal pending that it does not block
/// and that will interrupt its system call: one sent to the thread, or one sent to the
/// process when the thread is its main one or its only one (otherwise another thread
/// may take it, and this one's call must go on). A thread that is gone counts as
/// signalled (nobody waits for the answer).
pub fn signal_pending(tid: u32, tgid: u32) -> bool {
    let read = |p: String| std::fs::read_to_string(p).ok();
    let Some(st) = read(format!("/proc/{tgid}/task/{tid}/status"))
        .or_else(|| read(format!("/proc/{tid}/status")))
    else {
        return true;
    };
    let blocked = mask(&st, "SigBlk:");
    let own = mask(&st, "SigPnd:") & !blocked;
    let shared = mask(&st, "ShdPnd:") & !blocked;
    let threads = st
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(1);
    own != 0 || (shared != 0 && (tid == tgid || threads == 1))
}

/// Completes once thread `tid` (of `tgid`) has a signal pending.
async fn signalled(tid: u32, tgid: u32) {
    loop {
        if signal_pending(tid, tgid) {
            return;
        }
        tokio::time::sleep(SIGNAL_POLL).await;
    }
}

fn lock_errno(e: &LockError) -> Errno {
    match e {
        LockError::WouldBlock => Errno::EAGAIN,
        LockError::Interrupted => Errno::EINTR,
        LockError::Lost => Errno::EIO,
        LockError::TooMany => Errno::ENOLCK,
        LockError::Refused(why) => {
            tracing::warn!("lock refused: {why}");
            Errno::ENOLCK
        }
        LockError::Client(c) => log_errno("lock", c),
    }
}

impl Fs {
    /// Starts locking: the kernel notifier (to drop cached pages), the lease renewal,
    /// and what a loss does (poison the handles, drop the file's uncommitted writes).
    pub fn start_locks(self: &Arc<Self>, notifier: fuser::Notifier, rt: &tokio::runtime::Handle) {
        let _ = self.locks.notifier.set(notifier);
        let weak = Arc::downgrade(self);
        let handle = rt.clone();
        self.locks.session.on_lost(Box::new(move |key, owners| {
            if let Some(fs) = weak.upgrade() {
                fs.locks_lost(key, owners, &handle);
            }
        }));
        rt.spawn(self.locks.session.clone().run());
    }

    /// The locks of `owners` on `key` are lost: the handles they locked through fail
    /// from now on, and writes not yet committed are dropped (they were made under a
    /// lock another mount may hold now).
    fn locks_lost(&self, key: Id, owners: &[u64], rt: &tokio::runtime::Handle) {
        let mut n = 0;
        for h in self.locks.handles().values_mut() {
            if h.id == key && owners.iter().any(|o| h.owners.contains(o)) {
                h.poisoned = true;
                n += 1;
            }
        }
        tracing::warn!(
            "locks on {} lost; {n} open handles fail until closed",
            key.short()
        );
        if let Some(f) = self.open.get(&key) {
            rt.spawn(async move { f.discard().await });
        }
    }

    /// Fails (EIO) an operation on a handle whose locks were lost, or whose locks' lease
    /// lapsed just now.
    pub fn lock_check(&self, fh: u64) -> FsResult<()> {
        let id = match self.locks.handles().get(&fh) {
            None => return Ok(()),
            Some(h) if h.poisoned => return Err(Errno::EIO),
            Some(h) => h.id,
        };
        if self.locks.session.check(&id) {
            return Err(Errno::EIO);
        }
        match self.locks.handles().get(&fh) {
            Some(h) if h.poisoned => Err(Errno::EIO),
            _ => Ok(()),
        }
    }

    /// F_GETLK: the first conflicting lock of another owner (anywhere in the ring), or
    /// the range back with F_UNLCK.
    #[allow(clippy::too_many_arguments)]
    pub async fn getlk(
        &self,
        fh: u64,
        tid: u32,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
    ) -> FsResult<(u64, u64, i32, u32)> {
        let f = self.file(fh)?;
        self.lock_check(fh)?;
        let kind = kind_of(typ)?.ok_or(Errno::EINVAL)?;
        let (s, e) = span(start, end)?;
        let range = LockRange {
            start: s,
            end: e,
            kind,
            pid,
        };
        let tgid = if pid == 0 { tid } else { pid };
        match self
            .locks
            .session
            .test(f.id, owner, range, signalled(tid, tgid))
            .await
        {
            Ok(Some(h)) => Ok((
                h.range.start,
                last(h.range.end),
                typ_of(h.range.kind),
                h.range.pid,
            )),
            Ok(None) => Ok((start, end, libc::F_UNLCK, 0)),
            Err(e) => Err(lock_errno(&e)),
        }
    }

    /// F_SETLK / F_SETLKW / flock (see the module doc).
    #[allow(clippy::too_many_arguments)]
    pub async fn setlk(
        &self,
        ino: INodeNo,
        fh: u64,
        tid: u32,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
    ) -> FsResult<()> {
        let f = self.file(fh)?;
        self.lock_check(fh)?;
        let kind = kind_of(typ)?;
        let (s, e) = span(start, end)?;
        let op = LockOp {
            start: s,
            end: e,
            kind,
            pid,
        };
        let id = f.id;
        let before = self.locks.session.held(&id, owner);
        let after = apply(&before, &op);
        if after == before {
            return Ok(());
        }
        if !covers(&after, &before) {
            // Bytes are released: what was written under them goes to the ring first.
            f.commit(&self.engine)
                .await
                .map_err(|e| log_errno("commit before unlock", &e))?;
        }
        self.locks
            .handles()
            .entry(fh)
            .or_insert_with(|| HandleLocks {
                id,
                ..HandleLocks::default()
            })
            .owners
            .insert(owner);
        let tgid = if pid == 0 { tid } else { pid };
        if let Err(e) = self
            .locks
            .session
            .set(id, owner, op, sleep, signalled(tid, tgid))
            .await
        {
            if matches!(e, LockError::Lost) {
                if let Some(h) = self.locks.handles().get_mut(&fh) {
                    h.poisoned = true;
                }
            }
            return Err(lock_errno(&e));
        }
        if !covers(&before, &after) {
            self.revalidate(ino, &f).await;
        }
        Ok(())
    }

    /// After bytes were locked: what others committed before they unlocked is what
    /// this mount reads now.
    async fn revalidate(&self, ino: INodeNo, f: &Arc<super::handles::OpenFile>) {
        if self.engine.pending(&f.id).is_some() {
            return;
        }
        if let Err(e) = f.commit(&self.engine).await {
            tracing::warn!("commit after lock of {}: {e}", f.id.short());
        }
        match self.client().get_inode(&f.id).await {
            Ok(r) => {
                self.engine.forget_dir(&r.inode.parent);
                f.refresh(r.inode, r.version).await;
            }
            Err(e) => tracing::warn!("reading {} after a lock: {e}", f.id.short()),
        }
        if let Some(n) = self.locks.notifier.get().cloned() {
            // The kernel may wait for page locks of reads this mount is serving: not on
            // a runtime thread.
            let res = tokio::task::spawn_blocking(move || n.inval_inode(ino, 0, 0)).await;
            if let Ok(Err(e)) = res {
                tracing::debug!("invalidating cached pages of {ino:?}: {e}");
            }
        }
    }

    /// FLUSH (a close by `owner`): its POSIX locks on the file go.
    pub async fn unlock_owner(&self, fh: u64, owner: u64) {
        let Ok(f) = self.file(fh) else {
            return;
        };
        if !self.locks.session.held(&f.id, owner).is_empty() {
            if let Err(e) = self.locks.session.release(f.id, owner).await {
                tracing::warn!("unlocking {} on close: {e}", f.id.short());
            }
        }
        for h in self.locks.handles().values_mut() {
            if h.id == f.id {
                h.owners.remove(&owner);
            }
        }
    }

    /// RELEASE (the last close of an open file): the locks taken through it that are
    /// left (OFD and flock locks, owned by the open file) go.
    pub async fn release_locks(&self, fh: u64, owner: Option<u64>) {
        let Some(h) = self.locks.handles().remove(&fh) else {
            return;
        };
        for o in h.owners.iter().copied().chain(owner) {
            if self.locks.session.held(&h.id, o).is_empty() {
                continue;
            }
            if let Err(e) = self.locks.session.release(h.id, o).await {
                tracing::warn!("unlocking {} on release: {e}", h.id.short());
            }
        }
    }

    /// Drops every lock of this mount (unmount).
    pub async fn release_all_locks(&self) {
        self.locks.session.release_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_ranges_convert_both_ways() {
        assert_eq!(span(0, i64::MAX as u64), Ok((0, LOCK_EOF)));
        assert_eq!(span(10, 19), Ok((10, 20)));
        assert_eq!(span(5, 4), Err(Errno::EINVAL));
        assert_eq!(last(20), 19);
        assert_eq!(last(LOCK_EOF), i64::MAX as u64);
    }

    #[test]
    fn status_masks_parse() {
        let st = "Name:\tx\nThreads:\t1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000004000\nSigBlk:\t0000000000000000\n";
        assert_eq!(mask(st, "ShdPnd:"), 0x4000);
        assert_eq!(mask(st, "SigPnd:"), 0);
    }

    #[test]
    fn a_live_thread_without_signals_is_not_interrupted() {
        let me = std::process::id();
        // This test's own thread: no signal pending (the test harness blocks none).
        assert!(!signal_pending(me, me));
        assert!(signal_pending(u32::MAX - 1, u32::MAX - 1), "a gone thread");
    }
}
