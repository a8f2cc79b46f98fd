//! Inode numbers and attributes: the kernel's 64-bit inode numbers mapped to ring ids,
//! and ring records turned into `stat` attributes.
//!
//! An inode number is the first 8 bytes of the inode id, except the root, which is 1.
//! The map only grows (ids are never reused, so a stale number can only miss).

use crate::id::Id;
use crate::proto::record::root_id;
use crate::proto::{Inode, Kind};
use fuser::{FileAttr, FileType, INodeNo};
use std::collections::HashMap;
use std::sync::RwLock;

/// Block size reported by `stat` (and the unit of `st_blocks` is 512 bytes, as always).
pub const BLOCK_BYTES: u32 = 4096;

#[derive(Default)]
pub struct InodeTable {
    // Never held across an await: plain lookups and inserts.
    ids: RwLock<HashMap<u64, Id>>,
}

impl InodeTable {
    pub fn new() -> InodeTable {
        let t = InodeTable::default();
        t.ids
            .write()
            .expect("inode table")
            .insert(INodeNo::ROOT.0, root_id());
        t
    }

    /// The inode number of an id, remembered so the kernel's number leads back to it.
    pub fn ino(&self, id: &Id) -> u64 {
        let n = ino_of(id);
        let known = self.ids.read().expect("inode table").contains_key(&n);
        if !known {
            self.ids.write().expect("inode table").insert(n, *id);
        }
        n
    }

    pub fn id(&self, ino: INodeNo) -> Option<Id> {
        self.ids.read().expect("inode table").get(&ino.0).copied()
    }
}

/// The inode number of an id: its first 8 bytes; the root is 1.
pub fn ino_of(id: &Id) -> u64 {
    if *id == root_id() {
        return INodeNo::ROOT.0;
    }
    match id.prefix_u64() {
        // 0 and 1 are not usable as numbers of other inodes.
        n @ (0 | 1) => n | 0x8000_0000_0000_0000,
        n => n,
    }
}

pub fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

/// The kind of a node from the file-type bits of a `mode_t`.
pub fn kind_of_mode(mode: u32) -> Option<Kind> {
    match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => Some(Kind::File),
        libc::S_IFDIR => Some(Kind::Dir),
        libc::S_IFLNK => Some(Kind::Symlink),
        libc::S_IFIFO => Some(Kind::Fifo),
        libc::S_IFSOCK => Some(Kind::Socket),
        libc::S_IFCHR => Some(Kind::CharDevice),
        libc::S_IFBLK => Some(Kind::BlockDevice),
        _ => None,
    }
}

/// Bytes a file's stored chunks take (holes take none).
pub fn stored_bytes(inode: &Inode) -> u64 {
    if let Some(data) = &inode.inline {
        return data.len() as u64;
    }
    let cb = inode.chunk_bytes.max(1) as u64;
    inode
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, k)| **k != Id::ZERO)
        .map(|(i, _)| inode.size.saturating_sub(i as u64 * cb).min(cb))
        .sum()
}

/// `st_blksize`: a regular file's chunk size (the unit in which chordfs shares, punches,
/// collapses and inserts, so COLLAPSE_RANGE and INSERT_RANGE must be aligned to it, and
/// the I/O size that costs no read-modify-write), 4 KiB for everything else.
pub fn blksize(inode: &Inode) -> u32 {
    match inode.kind {
        Kind::File if inode.chunk_bytes > 0 => inode.chunk_bytes,
        _ => BLOCK_BYTES,
    }
}

/// The `stat` attributes of an inode.
pub fn attr(ino: u64, inode: &Inode) -> FileAttr {
    let nlink = match inode.kind {
        Kind::Dir => 2 + inode.subdirs(),
        _ => inode.nlink,
    };
    let size = match inode.kind {
        Kind::File => inode.size,
        Kind::Symlink => inode.target.len() as u64,
        Kind::Dir => (inode.entries.len() as u64 + 2) * 32,
        _ => 0,
    };
    let blocks = match inode.kind {
        Kind::File => stored_bytes(inode).div_ceil(512),
        Kind::Dir => size.div_ceil(512),
        _ => 0,
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks,
        atime: inode.atime.into(),
        mtime: inode.mtime.into(),
        ctime: inode.ctime.into(),
        crtime: inode.ctime.into(),
        kind: file_type(inode.kind),
        perm: (inode.mode & 0o7777) as u16,
        nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev: inode.rdev,
        blksize: blksize(inode),
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_one_and_others_map_back() {
        let t = InodeTable::new();
        assert_eq!(t.ino(&root_id()), 1);
        let id = Id::hash(b"x");
        let n = t.ino(&id);
        assert_eq!(t.id(INodeNo(n)), Some(id));
        assert_eq!(kind_of_mode(libc::S_IFIFO | 0o644), Some(Kind::Fifo));
    }

    #[test]
    fn holes_take_no_blocks() {
        let mut ino = Inode::new(Kind::File, 0o644, 0, 0, root_id(), 4096);
        ino.size = 3 * 4096 + 100;
        ino.chunks = vec![Id::hash(b"a"), Id::ZERO, Id::ZERO, Id::hash(b"b")];
        assert_eq!(stored_bytes(&ino), 4096 + 100);
        assert_eq!(attr(5, &ino).blocks, 9);
    }
}
