//! File and directory records: the mutable, versioned values kept under inode ids.
//!
//! One `Inode` type covers every kind of file; fields that a kind does not use stay
//! empty. A directory's entries live in its own record, so a lookup is one read.

use crate::id::Id;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timespec {
    pub secs: i64,
    pub nanos: u32,
}

impl Timespec {
    pub fn now() -> Timespec {
        Timespec::from(SystemTime::now())
    }
}

impl From<SystemTime> for Timespec {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timespec {
                        secs: -(d.as_secs() as i64),
                        nanos: 0,
                    }
                } else {
                    Timespec {
                        secs: -(d.as_secs() as i64) - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
}

impl From<Timespec> for SystemTime {
    /// Saturates instead of overflowing: a record from a peer or a disk holds whatever
    /// numbers it holds (`nanos` above a second, `secs` near `i64::MAX`), and reading
    /// its times must not panic. Pinned by `extreme_times_saturate_instead_of_panicking`.
    fn from(t: Timespec) -> Self {
        let base = if t.secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_secs(t.secs as u64))
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_secs(t.secs.unsigned_abs()))
        }
        .unwrap_or(UNIX_EPOCH);
        base.checked_add(Duration::from_nanos(t.nanos as u64))
            .unwrap_or(base)
    }
}

/// A directory entry: the child's inode id and kind (so listing needs no extra reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub id: Id,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inode {
    pub kind: Kind,
    /// Permission bits (07777), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub rdev: u32,
    /// Bytes per chunk for this file; fixed when the file is created.
    pub chunk_bytes: u32,
    /// Chunk keys in file order; `Id::ZERO` marks a hole that reads as zeros.
    pub chunks: Vec<Id>,
    /// Directory entries by name.
    pub entries: BTreeMap<String, DirEntry>,
    /// The parent directory (for `..`); the root is its own parent.
    pub parent: Id,
    /// Symlink target.
    pub target: String,
    pub xattrs: BTreeMap<String, serde_bytes::ByteBuf>,
    /// The whole content of a small file, kept in its record instead of a chunk (then
    /// `chunks` is empty): one replicated write stores both. Bytes past its end, up to
    /// `size`, read as zeros. Absent in records written before it existed.
    #[serde(default)]
    pub inline: Option<serde_bytes::ByteBuf>,
}

impl Inode {
    pub fn new(kind: Kind, mode: u32, uid: u32, gid: u32, parent: Id, chunk_bytes: u32) -> Inode {
        let now = Timespec::now();
        Inode {
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            chunk_bytes,
            chunks: Vec::new(),
            entries: BTreeMap::new(),
            parent,
            target: String::new(),
            xattrs: BTreeMap::new(),
            inline: None,
        }
    }

    /// Subdirectory count, for a directory's link count (2 + subdirectories).
    pub fn subdirs(&self) -> u32 {
        self.entries
            .values()
            .filter(|e| e.kind == Kind::Dir)
            .count() as u32
    }
}

/// Files up to this size keep their content in their record (see [`Inode::inline`]).
pub const INLINE_MAX_BYTES: u64 = 16 * 1024;

/// What a record key holds: a live inode, or a tombstone that keeps a deleted inode
/// from being resurrected by a stale replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Inode(Box<Inode>),
    Deleted,
}

/// A change to a record that its primary applies to the version it holds: the client
/// sends the change, not the record, and the primary reads, changes and writes the
/// record under the key's lock (a compare-and-set made where the record is), then
/// replicates the result as any write. A directory update then costs the client neither
/// a read nor the whole directory on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Edit {
    /// Directory: enter `name` for `entry`, unless another inode holds the name. The
    /// name holding this very inode is an earlier try whose answer was lost: it is
    /// written again, not refused. The directory's mtime and ctime become at least `time`.
    Link {
        name: String,
        entry: DirEntry,
        time: Timespec,
    },
    /// Directory: take `name` out. `dir` says what the caller removes (rmdir: a
    /// directory; unlink: anything else); the other kind is refused. With `id`, only
    /// the entry naming that inode is removed.
    Unlink {
        name: String,
        dir: bool,
        id: Option<Id>,
        time: Timespec,
    },
}

impl Edit {
    /// The name the edit is about.
    pub fn name(&self) -> &str {
        match self {
            Edit::Link { name, .. } | Edit::Unlink { name, .. } => name,
        }
    }

    /// Applies the edit to `current` (None: no record). Returns the record to write,
    /// and the entry removed, or why the edit is refused. Pure, so the primary and the
    /// tests decide alike.
    pub fn apply(
        &self,
        current: Option<&Record>,
    ) -> Result<(Record, Option<DirEntry>), EditRefusal> {
        let dir = match current {
            Some(Record::Inode(ino)) if ino.kind == Kind::Dir => ino,
            Some(Record::Inode(_)) => return Err(EditRefusal::NotDir),
            Some(Record::Deleted) | None => return Err(EditRefusal::NotFound),
        };
        let mut dir = dir.clone();
        let (time, removed) = match self {
            Edit::Link { name, entry, time } => {
                match dir.entries.get(name) {
                    Some(e) if e.id != entry.id => return Err(EditRefusal::Exists),
                    _ => {}
                }
                dir.entries.insert(name.clone(), *entry);
                (*time, None)
            }
            Edit::Unlink {
                name,
                dir: want_dir,
                id,
                time,
            } => {
                let e = *dir.entries.get(name).ok_or(EditRefusal::NotFound)?;
                if id.is_some_and(|id| id != e.id) {
                    return Err(EditRefusal::NotFound);
                }
                match (*want_dir, e.kind == Kind::Dir) {
                    (true, false) => return Err(EditRefusal::NotDir),
                    (false, true) => return Err(EditRefusal::IsDir),
                    _ => {}
                }
                dir.entries.remove(name);
                (*time, Some(e))
            }
        };
        dir.mtime = dir.mtime.max(time);
        dir.ctime = dir.ctime.max(time);
        Ok((Record::Inode(dir), removed))
    }
}

/// Why a primary did not apply an [`Edit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EditRefusal {
    /// Another inode holds the name.
    Exists,
    /// No such directory, or no such name in it.
    NotFound,
    /// The record is not a directory, or (Unlink) the name is not one.
    NotDir,
    /// Unlink of a name that is a directory.
    IsDir,
}

/// True for a name a directory may hold: not empty, not `.` or `..`, without `/` or
/// NUL, at most [`NAME_MAX_BYTES`].
pub fn valid_name(name: &str) -> bool {
    !(name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > NAME_MAX_BYTES)
}

/// Longest file name, as on most Linux filesystems.
pub const NAME_MAX_BYTES: usize = 255;

/// The well-known key of the root directory.
pub fn root_id() -> Id {
    Id::hash(b"chordfs:root-directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespec_round_trips_before_and_after_epoch() {
        for t in [
            UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            UNIX_EPOCH - Duration::new(5, 250),
            UNIX_EPOCH,
        ] {
            assert_eq!(SystemTime::from(Timespec::from(t)), t);
        }
    }

    #[test]
    fn records_written_before_inline_data_still_decode() {
        // The layout of an inode record before `inline` existed: the same fields, one
        // fewer at the end.
        #[derive(Serialize)]
        struct Old<'a>(
            Kind,
            u32,
            u32,
            u32,
            u32,
            u64,
            Timespec,
            Timespec,
            Timespec,
            u32,
            u32,
            &'a [Id],
            BTreeMap<String, DirEntry>,
            Id,
            &'a str,
            BTreeMap<String, serde_bytes::ByteBuf>,
        );
        let t = Timespec { secs: 5, nanos: 6 };
        let chunks = [Id::hash(b"c")];
        #[derive(Serialize)]
        enum OldRecord<'a> {
            Inode(Old<'a>),
        }
        let old = OldRecord::Inode(Old(
            Kind::File,
            0o640,
            7,
            8,
            1,
            9,
            t,
            t,
            t,
            0,
            4096,
            &chunks,
            BTreeMap::new(),
            root_id(),
            "",
            BTreeMap::new(),
        ));
        let bytes = rmp_serde::to_vec(&old).unwrap();
        let Record::Inode(ino) = rmp_serde::from_slice::<Record>(&bytes).unwrap() else {
            panic!("not an inode");
        };
        assert_eq!(
            (ino.size, ino.uid, ino.chunks.as_slice()),
            (9, 7, &chunks[..])
        );
        assert_eq!(ino.inline, None);
    }

    #[test]
    fn edits_link_and_unlink_like_a_compare_and_set_would() {
        let dir = Record::Inode(Box::new(Inode::new(Kind::Dir, 0o755, 0, 0, root_id(), 0)));
        let (a, d) = (Id::hash(b"a"), Id::hash(b"d"));
        let t = Timespec {
            secs: 4_000_000_000,
            nanos: 0,
        };
        let link = |name: &str, id: Id, kind: Kind| Edit::Link {
            name: name.into(),
            entry: DirEntry { id, kind },
            time: t,
        };
        let (dir, _) = link("a", a, Kind::File).apply(Some(&dir)).unwrap();
        let (dir, _) = link("d", d, Kind::Dir).apply(Some(&dir)).unwrap();
        // The same inode again is a retry, written again; another one is refused.
        assert!(link("a", a, Kind::File).apply(Some(&dir)).is_ok());
        assert_eq!(
            link("a", d, Kind::File).apply(Some(&dir)),
            Err(EditRefusal::Exists)
        );
        let unlink = |name: &str, want_dir: bool, id: Option<Id>| Edit::Unlink {
            name: name.into(),
            dir: want_dir,
            id,
            time: t,
        };
        assert_eq!(
            unlink("d", false, None).apply(Some(&dir)),
            Err(EditRefusal::IsDir)
        );
        assert_eq!(
            unlink("a", true, None).apply(Some(&dir)),
            Err(EditRefusal::NotDir)
        );
        assert_eq!(
            unlink("a", false, Some(d)).apply(Some(&dir)),
            Err(EditRefusal::NotFound)
        );
        let (left, removed) = unlink("a", false, Some(a)).apply(Some(&dir)).unwrap();
        assert_eq!(
            removed,
            Some(DirEntry {
                id: a,
                kind: Kind::File
            })
        );
        let Record::Inode(left) = left else {
            panic!("not an inode")
        };
        assert_eq!(left.entries.len(), 1);
        assert_eq!((left.mtime, left.ctime), (t, t));
        // Not a directory, or nothing there.
        let file = Record::Inode(Box::new(Inode::new(Kind::File, 0o644, 0, 0, root_id(), 0)));
        assert_eq!(
            link("x", a, Kind::File).apply(Some(&file)),
            Err(EditRefusal::NotDir)
        );
        for gone in [None, Some(&Record::Deleted)] {
            assert_eq!(
                unlink("a", false, None).apply(gone),
                Err(EditRefusal::NotFound)
            );
        }
        assert!(valid_name("a") && valid_name(&"x".repeat(NAME_MAX_BYTES)));
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(!valid_name(&"x".repeat(NAME_MAX_BYTES + 1)));
    }

    #[test]
    fn extreme_times_saturate_instead_of_panicking() {
        for (secs, nanos) in [(i64::MAX, u32::MAX), (i64::MIN, u32::MAX), (i64::MIN, 0)] {
            let _ = SystemTime::from(Timespec { secs, nanos });
        }
        let t = SystemTime::from(Timespec {
            secs: 5,
            nanos: 1_500_000_000,
        });
        assert_eq!(t, UNIX_EPOCH + Duration::from_millis(6_500));
    }

    #[test]
    fn record_round_trips_through_msgpack() {
        let mut ino = Inode::new(Kind::Dir, 0o40755, 1, 2, root_id(), 0);
        ino.entries.insert(
            "a".into(),
            DirEntry {
                id: Id::hash(b"a"),
                kind: Kind::File,
            },
        );
        ino.entries.insert(
            "d".into(),
            DirEntry {
                id: Id::hash(b"d"),
                kind: Kind::Dir,
            },
        );
        assert_eq!(ino.mode, 0o755);
        assert_eq!(ino.subdirs(), 1);
        let mut file = Inode::new(Kind::File, 0o644, 1, 2, root_id(), 4096);
        file.size = 3;
        file.inline = Some(serde_bytes::ByteBuf::from(b"abc".to_vec()));
        let file = Record::Inode(Box::new(file));
        let bytes = rmp_serde::to_vec(&file).unwrap();
        assert_eq!(rmp_serde::from_slice::<Record>(&bytes).unwrap(), file);
        let rec = Record::Inode(Box::new(ino));
        let bytes = rmp_serde::to_vec(&rec).unwrap();
        assert_eq!(rmp_serde::from_slice::<Record>(&bytes).unwrap(), rec);
    }
}
