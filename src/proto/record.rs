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
    /// its times must not panic (found by tests/fuzz.rs).
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
