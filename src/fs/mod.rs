//! The FUSE driver: `chordfs mount` shows the ring as a POSIX filesystem, built on the
//! client library.
//!
//! ```text
//!  kernel --/dev/fuse--> fuser threads (ops.rs) --spawn--> tokio tasks (vfs.rs)
//!                                                          |  open files (handles.rs)
//!                                                          v
//!                                             client library -> ring
//! ```
//!
//! # Usage
//! `chordfs mount [--ring HOST:PORT] MOUNTPOINT [-o OPTIONS] [--foreground]`
//!
//! Without `--foreground` the command starts the filesystem as a background process
//! and returns once the mountpoint is mounted (exit status 0), or prints why it could
//! not be mounted (ring unreachable, bad option, ...) and exits non-zero. The background
//! process logs to `$CHORDFS_MOUNT_LOG`, by default
//! `/tmp/chordfs-mount.<mountpoint with / as _>.log`. `umount MOUNTPOINT`, `SIGTERM` or
//! `SIGINT` end it cleanly: dirty data is flushed to the ring first.
//!
//! # Options
//! `-o` takes a comma-separated list and may repeat; later values win.
//! - `ring=HOST:PORT`: any ring member (overrides `--ring`; default `$CHORDFS_RING`,
//!   else `127.0.0.1:7400`).
//! - `secret_file=PATH`: the cluster secret, when the ring has one (also
//!   `--secret-file` or `$CHORDFS_SECRET_FILE`).
//! - `chunk_size=BYTES`: chunk size of files created through this mount (default
//!   256 KiB; at most 32 MiB). Existing files keep their own.
//! - `cache_size=BYTES`: size of the chunk cache in memory (default 32 MiB).
//!   Sizes take a K, M, G or T suffix (powers of 1024).
//! - `timeout=SECONDS`: how long one operation keeps trying replicas before it fails
//!   with `EIO` (default 10; fractions allowed). No program hangs on a dead node longer.
//! - `attr_timeout=SECONDS`: how long the kernel caches attributes and names (default
//!   1): the longest a removed name or an old attribute outlives its change made on
//!   another mount (see Semantics). 0 turns every cache off.
//! - `allow_other` / `noallow_other`: let users other than the mounting one in
//!   (default on when mounted by root). Permissions are checked by the kernel from
//!   the files' modes (`default_permissions`).
//! - `ro` / `rw`: read-only or read-write (default `rw`).
//! - `dev`/`nodev`, `suid`/`nosuid`, `exec`/`noexec`: as for any mount (defaults
//!   `nodev`, `nosuid`, `exec`).
//! - `subtype=NAME` / `nosubtype`: the type the kernel shows for the mount in
//!   /proc/mounts and `df -T`: `fuse.NAME` (default `fuse.chordfs`), or plain `fuse`.
//!   xfstests (`FSTYP=fuse`) wants plain `fuse`; see docs/xfstests.md.
//! - Ignored, for mount(8) and fstab: `defaults`, `auto`, `noauto`, `user`, `nouser`,
//!   `users`, `owner`, `group`, `_netdev`, `nofail`, the atime options (`atime`,
//!   `noatime`, `relatime`, ...), `sync`, `async`, `dirsync`, `default_permissions`,
//!   and any `x-*` or `comment=*`. Anything else is refused.
//!
//! # Semantics
//! - Data is written in chunks: a chunk that fills up is uploaded in the background
//!   (a mount holds at most 32 MiB of dirty data); `close`, `fsync` and the end of a
//!   mount upload the rest and write the file's record. When they return success the
//!   data is durable on min(R, live) nodes; when they cannot, they fail with `EIO`.
//! - An open file whose uploaded chunks have waited `WRITEBACK_MAX_SECS` (5 min) for
//!   its record is committed as by `fsync`, so the ring's garbage collection, which
//!   spares unreferenced chunks only for its grace period, never takes them.
//! - `open(O_CREAT)` without `O_EXCL` keeps the new file on this mount until its first
//!   flush, fsync or close, which writes its inode and its name at once (see
//!   `handles.rs`); this mount shows it at once, other mounts after that close. A name
//!   taken elsewhere meanwhile makes that close fail with `EIO`, never overwritten.
//!   `O_EXCL` creates are written before `open` returns.
//! - What another mount of the same ring sees, and when:
//!   - a name made there (mkdir, symlink, link, rename's new name, and a created file
//!     once its creator closed or fsynced it) is found by any lookup here that starts
//!     after: a name missing from this mount's cached directory is asked of the
//!     directory's primary, and misses are cached nowhere (not in the kernel either);
//!   - a name removed or renamed away there may still be served here for at most
//!     `attr_timeout` from the removal (names found in a cached directory are given to
//!     the kernel only for what is left of that copy's `attr_timeout`);
//!   - a file closed there is read afresh by the next open here (close-to-open): its
//!     content, and its size even when the kernel here still holds the old one (the
//!     open makes it drop that), and an `O_APPEND` write goes at the new end;
//!   - other attributes (`stat` of a file not opened since: size, mtime, mode, link
//!     count; extended attributes) may be up to `attr_timeout` old.
//! - atime is set at creation and by `utimensat`, not by reads.
//! - Hard links, symlinks, FIFOs, sockets, device nodes, extended attributes
//!   (`user.*`, `trusted.*`, `security.*`; not `system.*`) are stored in the ring.
//!   `RENAME_EXCHANGE` is refused (`EINVAL`); `RENAME_NOREPLACE` is honoured.
//! - fcntl (POSIX and OFD) and flock locks hold across every mount of the ring, at the
//!   file's primary; a mount that dies loses them one lease (30 s) after its last
//!   renewal, and a holder whose lease lapsed gets `EIO` from its next operation on the
//!   file. Unlocking commits the file's writes, locking re-reads it (see `locks.rs`,
//!   docs/locks.md).

mod alloc;
mod errno;
mod handles;
mod inodes;
mod locks;
mod mount;
mod ops;
mod options;
mod placed;
mod rename2;
mod vfs;

pub use errno::errno;
pub use handles::WRITEBACK_MAX_SECS;
pub use mount::{run, MountArgs, MountError};
pub use options::{parse as parse_options, MountOptions};
