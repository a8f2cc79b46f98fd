//! The file tree: inodes under 160-bit ids, directories mapping names to ids, every
//! change a compare-and-set on the record's version, retried on conflict.
//!
//! Multi-record changes (create, rename across directories, link) are ordered so that a
//! crash between steps leaves at worst an unreferenced inode or one extra link, never a
//! name pointing at nothing.

use super::kv::Cas;
use super::retry::Retry;
use super::{Client, ClientError, Result};
use crate::id::Id;
use crate::proto::record::root_id;
use crate::proto::{DirEntry, Edit, EditRefusal, Inode, Kind, Record, Request, Response, Timespec};
use std::time::Duration;

pub use crate::proto::record::NAME_MAX_BYTES;
/// Compare-and-set attempts before an update gives up.
const CAS_ATTEMPTS: u32 = 200;

/// A random pause after a lost compare-and-set, longer as the attempts add up (at most
/// 20 ms), so contending writers drift apart.
async fn contention_pause(attempt: u32) {
    let jitter = rand::random::<u64>() % (1 + (attempt as u64).min(20));
    tokio::time::sleep(Duration::from_millis(jitter)).await;
}
/// Deepest directory walk (bounds a corrupt tree's cycle).
const MAX_DEPTH: usize = 4096;

/// An inode as read: its id, its version (for the next compare-and-set) and its body.
#[derive(Clone, Debug, PartialEq)]
pub struct InodeRef {
    pub id: Id,
    pub version: u64,
    pub inode: Inode,
}

impl InodeRef {
    /// The inode a record holds, or None for a tombstone.
    fn from_record(id: &Id, version: u64, record: Record) -> Option<InodeRef> {
        match record {
            Record::Inode(inode) => Some(InodeRef {
                id: *id,
                version,
                inode: *inode,
            }),
            Record::Deleted => None,
        }
    }
}

/// Checks one path component.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(ClientError::InvalidPath(name.to_string()));
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(ClientError::NameTooLong(name.to_string()));
    }
    Ok(())
}

/// Splits an absolute or relative ring path into checked components.
pub fn split_path(path: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for p in &parts {
        if *p == ".." {
            return Err(ClientError::InvalidPath(format!(
                "{path}: '..' is not allowed"
            )));
        }
        check_name(p)?;
    }
    Ok(parts)
}

impl Client {
    /// The root directory, created on first use by whichever client gets there first.
    pub async fn root(&self) -> Result<InodeRef> {
        let id = root_id();
        if let Some(r) = self.get_inode_opt(&id).await? {
            return Ok(r);
        }
        let root = Inode::new(Kind::Dir, 0o755, 0, 0, id, 0);
        match self
            .cas_record(&id, 0, Record::Inode(Box::new(root)))
            .await?
        {
            Cas::Done(_) | Cas::Conflict(_) => self.get_inode(&id).await,
        }
    }

    pub async fn get_inode_opt(&self, id: &Id) -> Result<Option<InodeRef>> {
        Ok(self
            .get_record(id)
            .await?
            .and_then(|(version, record)| InodeRef::from_record(id, version, record)))
    }

    /// An inode as its primary holds it (see [`Client::peek_record`]), for checks
    /// that a later compare-and-set on its version confirms.
    pub async fn peek_inode(&self, id: &Id) -> Result<InodeRef> {
        match self.peek_record(id).await? {
            Some((version, record)) => InodeRef::from_record(id, version, record),
            None => None,
        }
        .ok_or_else(|| ClientError::NotFound(format!("inode {}", id.short())))
    }

    /// The inode named by a directory entry. A create writes the inode and its entry
    /// at once, so a reader that found the entry can meet the inode still on its way:
    /// an absent record is read again a few times (about 0.75 s in all) before it
    /// counts as missing; a deleted one is not. Pinned by
    /// `concurrent_puts_of_one_path_leave_one_clean_winner` (tests/replication.rs).
    pub async fn get_inode(&self, id: &Id) -> Result<InodeRef> {
        const TRIES: u64 = 6;
        for attempt in 1..=TRIES {
            match self.get_record(id).await? {
                Some((version, record)) => match InodeRef::from_record(id, version, record) {
                    Some(found) => return Ok(found),
                    None => break,
                },
                None if attempt < TRIES => {
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await
                }
                None => break,
            }
        }
        Err(ClientError::NotFound(format!("inode {}", id.short())))
    }

    /// Applies `change` to the newest version of an inode and writes it back, retrying on
    /// conflict. `change` may run several times; it must only depend on the inode.
    pub async fn update_inode<T>(
        &self,
        id: &Id,
        change: impl FnMut(&mut Inode) -> Result<T>,
    ) -> Result<(T, InodeRef)> {
        self.update_inode_from(None, id, change).await
    }

    /// Like [`Client::update_inode`], but first tries `known`, a copy of the record the
    /// caller already holds, so an uncontended update is one write and no read. A
    /// conflict, or `change` refusing the copy, falls back to the newest version.
    pub async fn update_inode_from<T>(
        &self,
        known: Option<InodeRef>,
        id: &Id,
        mut change: impl FnMut(&mut Inode) -> Result<T>,
    ) -> Result<(T, InodeRef)> {
        let mut known = known.filter(|k| k.id == *id && k.version > 0);
        let mut attempt = 0;
        while attempt < CAS_ATTEMPTS {
            // The caller's copy is one extra try, not one of the CAS_ATTEMPTS reads.
            let (cur, optimistic) = match known.take() {
                Some(k) => (k, true),
                None => (self.get_inode(id).await?, false),
            };
            let mut inode = cur.inode;
            let out = match change(&mut inode) {
                Ok(out) => out,
                Err(_) if optimistic => continue,
                Err(e) => return Err(e),
            };
            match self
                .cas_record(id, cur.version, Record::Inode(Box::new(inode.clone())))
                .await?
            {
                Cas::Done(version) => {
                    return Ok((
                        out,
                        InodeRef {
                            id: *id,
                            version,
                            inode,
                        },
                    ))
                }
                Cas::Conflict(_) if optimistic => {}
                Cas::Conflict(_) => {
                    contention_pause(attempt).await;
                    attempt += 1;
                }
            }
        }
        Err(ClientError::Contended(format!("inode {}", id.short())))
    }

    /// Writes a tombstone for an inode nothing refers to any more.
    pub async fn delete_inode(&self, id: &Id) -> Result<()> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((version, _)) = self.get_record(id).await? else {
                return Ok(());
            };
            if let Cas::Done(_) = self.cas_record(id, version, Record::Deleted).await? {
                return Ok(());
            }
        }
        Err(ClientError::Contended(format!("inode {}", id.short())))
    }

    /// Looks `name` up in directory `dir` as its primary holds it, without moving the
    /// directory: the directory's version and the name's entry. None when the primary
    /// did not answer so (the caller then reads the directory).
    pub async fn peek_name(&self, dir: &Id, name: &str) -> Result<Option<(u64, Option<DirEntry>)>> {
        let Some(primary) = self.view.get().successors_of(dir, 1).into_iter().next() else {
            return Ok(None);
        };
        let req = Request::LookupName {
            key: *dir,
            name: name.to_string(),
        };
        match self
            .net
            .call(&primary.addr, req, self.cfg.rpc_timeout)
            .await
        {
            Ok(Response::Entry { version, entry }) => Ok(Some((version, entry))),
            Ok(Response::EditRefused(EditRefusal::NotDir)) => {
                Err(ClientError::NotDir(format!("inode {}", dir.short())))
            }
            _ => Ok(None),
        }
    }

    /// Changes directory `key` at its primary (see [`Edit`]): the primary applies the
    /// change to the version it holds, so the client sends neither a read nor the
    /// directory. Retried like a compare-and-set: on a lost answer, on a primary that
    /// is not (any more) the key's, and on a replica found ahead of the primary. Returns
    /// the version written and the entry an unlink removed.
    ///
    /// A retry of an unlink whose first answer was lost finds the name gone and says
    /// `NotFound`, as for a name someone else removed: its inode keeps one link too
    /// many (an unreferenced inode, at worst), never one too few.
    pub async fn edit_dir(&self, key: &Id, edit: Edit) -> Result<(u64, Option<DirEntry>)> {
        let mut retry = Retry::new(
            self,
            format!("directory {}", key.short()),
            "empty ring view",
        );
        while retry.attempt < CAS_ATTEMPTS {
            let view = self.view.get();
            if let Some(primary) = view.successors_of(key, 1).first() {
                let req = Request::EditRecord {
                    key: *key,
                    edit: edit.clone(),
                };
                match self
                    .net
                    .call(&primary.addr, req, self.cfg.rpc_timeout)
                    .await
                {
                    Ok(Response::Edited { version, removed }) => return Ok((version, removed)),
                    Ok(Response::EditRefused(why)) => return Err(refusal(why, edit.name())),
                    Ok(Response::Conflict { current }) => {
                        // The primary was behind a replica and has caught up: again.
                        tracing::debug!(key = %key.short(), current, "edit met a newer replica");
                        contention_pause(retry.attempt).await;
                        retry.again();
                        continue;
                    }
                    Ok(other) => retry.unexpected(primary, &other),
                    Err(e) => retry.failed(primary, &e),
                }
            }
            if retry.pause().await.is_err() {
                break;
            }
        }
        Err(retry.unavailable())
    }

    /// Resolves a path to its inode.
    pub async fn resolve(&self, path: &str) -> Result<InodeRef> {
        let parts = split_path(path)?;
        let mut cur = self.root().await?;
        for (depth, name) in parts.iter().enumerate() {
            if cur.inode.kind != Kind::Dir {
                return Err(ClientError::NotDir(parts[..depth].join("/")));
            }
            let entry =
                cur.inode.entries.get(*name).copied().ok_or_else(|| {
                    ClientError::NotFound(format!("/{}", parts[..=depth].join("/")))
                })?;
            cur = self.get_inode(&entry.id).await?;
        }
        Ok(cur)
    }

    /// Resolves all but the last component: (parent directory, last name).
    pub async fn resolve_parent<'a>(&self, path: &'a str) -> Result<(InodeRef, &'a str)> {
        let parts = split_path(path)?;
        let Some((last, dirs)) = parts.split_last() else {
            return Err(ClientError::InvalidPath(format!("{path:?} names the root")));
        };
        let parent = self.resolve(&dirs.join("/")).await?;
        if parent.inode.kind != Kind::Dir {
            return Err(ClientError::NotDir(dirs.join("/")));
        }
        Ok((parent, last))
    }

    /// Creates every missing directory along `path` (like `mkdir -p`).
    pub async fn mkdir_p(&self, path: &str, uid: u32, gid: u32) -> Result<InodeRef> {
        let parts = split_path(path)?;
        let mut cur = self.root().await?;
        for name in parts {
            if cur.inode.kind != Kind::Dir {
                return Err(ClientError::NotDir(name.to_string()));
            }
            cur = match cur.inode.entries.get(name) {
                Some(e) => self.get_inode(&e.id).await?,
                None => {
                    let dir = Inode::new(Kind::Dir, 0o755, uid, gid, cur.id, 0);
                    match self
                        .create_child(&cur.id, name, dir, Some(cur.clone()))
                        .await
                    {
                        Ok(r) => r,
                        Err(ClientError::Exists(_)) => {
                            let again = self.get_inode(&cur.id).await?;
                            let e = again.inode.entries.get(name).copied();
                            self.get_inode(&e.ok_or_else(|| ClientError::NotFound(name.into()))?.id)
                                .await?
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
        }
        Ok(cur)
    }

    /// Looks a name up in a directory.
    pub async fn lookup_child(&self, dir: &Id, name: &str) -> Result<Option<DirEntry>> {
        let d = self.get_inode(dir).await?;
        if d.inode.kind != Kind::Dir {
            return Err(ClientError::NotDir(format!("inode {}", dir.short())));
        }
        Ok(d.inode.entries.get(name).copied())
    }

    /// Creates `inode` under a fresh id and links it as `parent/name`. Fails with
    /// `Exists` when the name is taken (the new inode is then removed again).
    ///
    /// `known_parent` is the caller's copy of the parent directory, if it has one (see
    /// [`Client::update_inode_from`]). The inode and the name are written at once, so a
    /// create takes one write's latency. A name is only ever left pointing at nothing
    /// when this client dies between the two; it then looks up as ENOENT, and unlink or
    /// rmdir removes it.
    pub async fn create_child(
        &self,
        parent: &Id,
        name: &str,
        inode: Inode,
        known_parent: Option<InodeRef>,
    ) -> Result<InodeRef> {
        self.create_child_in(parent, name, inode, known_parent)
            .await
            .map(|(child, _)| child)
    }

    /// [`Client::create_child`], also returning the parent directory as written when
    /// `known_parent` was the version before (so a caller that caches directories need
    /// not read it again). The name goes in as an edit at the directory's primary.
    pub async fn create_child_in(
        &self,
        parent: &Id,
        name: &str,
        mut inode: Inode,
        known_parent: Option<InodeRef>,
    ) -> Result<(InodeRef, Option<InodeRef>)> {
        check_name(name)?;
        let id = Id::random();
        inode.parent = *parent;
        let kind = inode.kind;
        let write_inode = async {
            match self
                .cas_record(&id, 0, Record::Inode(Box::new(inode.clone())))
                .await?
            {
                Cas::Done(v) => Ok(v),
                Cas::Conflict(_) => Err(ClientError::Exists(format!("inode {}", id.short()))),
            }
        };
        let edit = Edit::Link {
            name: name.to_string(),
            entry: DirEntry { id, kind },
            time: Timespec::now(),
        };
        let link = self.edit_dir(parent, edit.clone());
        let (written, linked) = tokio::join!(write_inode, link);
        match (written, linked) {
            (Ok(version), Ok((dir_version, _))) => {
                let dir = edited(known_parent.as_ref(), &edit, dir_version);
                Ok((InodeRef { id, version, inode }, dir))
            }
            (written, Err(e)) => {
                if written.is_ok() {
                    let _ = self.delete_inode(&id).await;
                }
                Err(e)
            }
            (Err(e), Ok(_)) => {
                // The name went in but its inode did not: take the name out again.
                let _ = self.unlink_entry(parent, name, id).await;
                Err(e)
            }
        }
    }

    /// Takes `parent/name` out if it still names inode `id` (a create undone).
    pub async fn unlink_entry(&self, parent: &Id, name: &str, id: Id) -> Result<()> {
        let edit = Edit::Unlink {
            name: name.to_string(),
            dir: false,
            id: Some(id),
            time: Timespec::now(),
        };
        match self.edit_dir(parent, edit).await {
            Ok(_) | Err(ClientError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Adds a hard link `parent/name` to an existing non-directory inode.
    pub async fn link_child(&self, id: &Id, parent: &Id, name: &str) -> Result<InodeRef> {
        check_name(name)?;
        let now = Timespec::now();
        let (kind, target) = self
            .update_inode(id, |ino| {
                if ino.kind == Kind::Dir {
                    return Err(ClientError::IsDir("cannot hard-link a directory".into()));
                }
                ino.nlink += 1;
                ino.ctime = now;
                Ok(ino.kind)
            })
            .await?;
        let linked = self
            .update_inode(parent, |dir| {
                if dir.kind != Kind::Dir {
                    return Err(ClientError::NotDir(name.to_string()));
                }
                if dir.entries.contains_key(name) {
                    return Err(ClientError::Exists(name.to_string()));
                }
                dir.entries
                    .insert(name.to_string(), DirEntry { id: *id, kind });
                dir.mtime = now;
                dir.ctime = now;
                Ok(())
            })
            .await;
        if let Err(e) = linked {
            let _ = self
                .update_inode(id, |ino| {
                    ino.nlink = ino.nlink.saturating_sub(1);
                    Ok(())
                })
                .await;
            return Err(e);
        }
        Ok(target)
    }

    /// Removes the name `parent/name`. `want_dir` says what the caller expects (rmdir: an
    /// empty directory; unlink: anything else). Returns the inode id, its link count
    /// after the removal, and whether the inode was deleted. A directory's inode is
    /// deleted here; a file's when its last link goes and `may_delete(id)` agrees (the
    /// mount says no while a handle is open, and deletes it at the last close). Two
    /// ordered steps for a file: the name comes out by an edit at the directory's
    /// primary (which checks its kind and answers the entry removed), then the inode's
    /// link count goes down, written straight as a deletion when it drops to 0.
    pub async fn unlink_child(
        &self,
        parent: &Id,
        name: &str,
        want_dir: bool,
        may_delete: impl Fn(&Id) -> bool,
    ) -> Result<(Id, u32, bool)> {
        self.unlink_child_in(parent, name, want_dir, may_delete, None)
            .await
            .map(|(out, _)| out)
    }

    /// [`Client::unlink_child`], also returning the parent directory as the removal
    /// wrote it when `known_parent` was the version before (for a caller's cache).
    pub async fn unlink_child_in(
        &self,
        parent: &Id,
        name: &str,
        want_dir: bool,
        may_delete: impl Fn(&Id) -> bool,
        known_parent: Option<&InodeRef>,
    ) -> Result<((Id, u32, bool), Option<InodeRef>)> {
        check_name(name)?;
        let mut only = None;
        if want_dir {
            // Empty first: read the name's directory (a name whose inode is missing,
            // its creator having died mid-create, is empty), then remove that very one.
            let dir = self.peek_inode(parent).await?;
            if dir.inode.kind != Kind::Dir {
                return Err(ClientError::NotDir(format!("inode {}", parent.short())));
            }
            let entry = dir
                .inode
                .entries
                .get(name)
                .copied()
                .ok_or_else(|| ClientError::NotFound(name.to_string()))?;
            if entry.kind != Kind::Dir {
                return Err(ClientError::NotDir(name.to_string()));
            }
            let child = self.get_inode_opt(&entry.id).await?;
            if child.is_some_and(|c| !c.inode.entries.is_empty()) {
                return Err(ClientError::NotEmpty(name.to_string()));
            }
            only = Some(entry.id);
        }
        let now = Timespec::now();
        let edit = Edit::Unlink {
            name: name.to_string(),
            dir: want_dir,
            id: only,
            time: now,
        };
        let (version, removed) = self.edit_dir(parent, edit.clone()).await?;
        let entry = removed.ok_or_else(|| ClientError::NotFound(name.to_string()))?;
        let dir = edited(known_parent, &edit, version);
        if want_dir {
            self.delete_inode(&entry.id).await?;
            return Ok(((entry.id, 0, true), dir));
        }
        let (left, deleted) = self.drop_link(&entry.id, now, &may_delete).await?;
        Ok(((entry.id, left, deleted), dir))
    }

    /// Takes one link off inode `id`; at 0 links, and when `may_delete(id)`, writes its
    /// deletion instead, in the same compare-and-set. Returns the links left and whether
    /// the inode is gone (a name that pointed at nothing, see `create_child`: 0, true).
    async fn drop_link(
        &self,
        id: &Id,
        now: Timespec,
        may_delete: impl Fn(&Id) -> bool,
    ) -> Result<(u32, bool)> {
        for attempt in 0..CAS_ATTEMPTS {
            // The primary's copy first: the compare-and-set confirms its version, and a
            // conflict reads again through the primary's catch-up.
            let read = if attempt == 0 {
                self.peek_record(id).await?
            } else {
                self.get_record(id).await?
            };
            let Some((version, record)) = read else {
                return Ok((0, true));
            };
            let Record::Inode(mut ino) = record else {
                return Ok((0, true));
            };
            ino.nlink = ino.nlink.saturating_sub(1);
            ino.ctime = now;
            let left = ino.nlink;
            let delete = left == 0 && may_delete(id);
            let new = if delete {
                Record::Deleted
            } else {
                Record::Inode(ino)
            };
            if let Cas::Done(_) = self.cas_record(id, version, new).await? {
                return Ok((left, delete));
            }
            contention_pause(attempt).await;
        }
        Err(ClientError::Contended(format!("inode {}", id.short())))
    }

    /// True when `ancestor` is `dir` or one of its ancestors.
    pub(crate) async fn is_ancestor(&self, ancestor: &Id, dir: &Id) -> Result<bool> {
        let root = root_id();
        let mut cur = *dir;
        for _ in 0..MAX_DEPTH {
            if cur == *ancestor {
                return Ok(true);
            }
            if cur == root {
                return Ok(false);
            }
            cur = self.get_inode(&cur).await?.inode.parent;
        }
        Ok(false)
    }

    /// POSIX rename: moves `src_parent/src_name` to `dst_parent/dst_name`, replacing a
    /// compatible target. Returns the replaced inode's id and remaining link count, if
    /// one was replaced, for the caller to delete when unreferenced.
    pub async fn rename(
        &self,
        src_parent: &Id,
        src_name: &str,
        dst_parent: &Id,
        dst_name: &str,
        no_replace: bool,
    ) -> Result<Option<(Id, u32)>> {
        self.rename_leaving(src_parent, src_name, dst_parent, dst_name, no_replace, None)
            .await
    }

    /// [`Client::rename`] that leaves `leave` under the source name, in the same
    /// directory write that takes the moved entry out (RENAME_WHITEOUT: a whiteout
    /// device the caller has stored): the source name never reads as absent.
    pub async fn rename_leaving(
        &self,
        src_parent: &Id,
        src_name: &str,
        dst_parent: &Id,
        dst_name: &str,
        no_replace: bool,
        leave: Option<DirEntry>,
    ) -> Result<Option<(Id, u32)>> {
        check_name(src_name)?;
        check_name(dst_name)?;
        let src = self
            .lookup_child(src_parent, src_name)
            .await?
            .ok_or_else(|| ClientError::NotFound(src_name.to_string()))?;
        let dst = self.lookup_child(dst_parent, dst_name).await?;
        if src_parent == dst_parent && src_name == dst_name {
            return Ok(None);
        }
        if let Some(d) = &dst {
            if d.id == src.id {
                return Ok(None); // two links to one inode: POSIX says do nothing
            }
            if no_replace {
                return Err(ClientError::Exists(dst_name.to_string()));
            }
            match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                (true, false) => return Err(ClientError::NotDir(dst_name.to_string())),
                (false, true) => return Err(ClientError::IsDir(dst_name.to_string())),
                (true, true) => {
                    if !self.get_inode(&d.id).await?.inode.entries.is_empty() {
                        return Err(ClientError::NotEmpty(dst_name.to_string()));
                    }
                }
                (false, false) => {}
            }
        }
        if src.kind == Kind::Dir && self.is_ancestor(&src.id, dst_parent).await? {
            return Err(ClientError::Invalid(format!(
                "cannot move {src_name} into itself"
            )));
        }
        let now = Timespec::now();
        let expect_dst = dst.map(|d| d.id);
        if src_parent == dst_parent {
            self.update_inode(src_parent, |dir| {
                check_entries(dir, src_name, &src.id, dst_name, expect_dst)?;
                dir.entries.remove(src_name);
                dir.entries.insert(dst_name.to_string(), src);
                if let Some(w) = leave {
                    dir.entries.insert(src_name.to_string(), w);
                }
                dir.mtime = now;
                dir.ctime = now;
                Ok(())
            })
            .await?;
        } else {
            // Target first, then source: a crash in between leaves an extra name, never none.
            self.update_inode(dst_parent, |dir| {
                if dir.kind != Kind::Dir {
                    return Err(ClientError::NotDir(dst_name.to_string()));
                }
                if dir.entries.get(dst_name).map(|e| e.id) != expect_dst {
                    return Err(ClientError::Contended(dst_name.to_string()));
                }
                dir.entries.insert(dst_name.to_string(), src);
                dir.mtime = now;
                dir.ctime = now;
                Ok(())
            })
            .await?;
            self.update_inode(src_parent, |dir| {
                if dir.entries.get(src_name).map(|e| e.id) == Some(src.id) {
                    dir.entries.remove(src_name);
                    if let Some(w) = leave {
                        dir.entries.insert(src_name.to_string(), w);
                    }
                }
                dir.mtime = now;
                dir.ctime = now;
                Ok(())
            })
            .await?;
        }
        let new_parent = *dst_parent;
        self.update_inode(&src.id, |ino| {
            ino.ctime = now;
            if ino.kind == Kind::Dir {
                ino.parent = new_parent;
            }
            Ok(())
        })
        .await?;
        match expect_dst {
            None => Ok(None),
            Some(old) => {
                let (left, _) = self
                    .update_inode(&old, |ino| {
                        ino.nlink = if ino.kind == Kind::Dir {
                            0
                        } else {
                            ino.nlink.saturating_sub(1)
                        };
                        ino.ctime = now;
                        Ok(ino.nlink)
                    })
                    .await?;
                Ok(Some((old, left)))
            }
        }
    }
}

fn check_entries(
    dir: &Inode,
    src_name: &str,
    src: &Id,
    dst_name: &str,
    dst: Option<Id>,
) -> Result<()> {
    if dir.entries.get(src_name).map(|e| e.id) != Some(*src) {
        return Err(ClientError::NotFound(src_name.to_string()));
    }
    if dir.entries.get(dst_name).map(|e| e.id) != dst {
        return Err(ClientError::Contended(dst_name.to_string()));
    }
    Ok(())
}

/// The client error for a refused edit of `name`.
fn refusal(why: EditRefusal, name: &str) -> ClientError {
    let name = name.to_string();
    match why {
        EditRefusal::Exists => ClientError::Exists(name),
        EditRefusal::NotFound => ClientError::NotFound(name),
        EditRefusal::NotDir => ClientError::NotDir(name),
        EditRefusal::IsDir => ClientError::IsDir(name),
    }
}

/// The directory as an edit written it, from a copy of the version before (the caller's
/// cache): None when the copy is not that version.
pub fn edited(known: Option<&InodeRef>, edit: &Edit, version: u64) -> Option<InodeRef> {
    let known = known.filter(|k| k.version + 1 == version)?;
    let (record, _) = edit
        .apply(Some(&Record::Inode(Box::new(known.inode.clone()))))
        .ok()?;
    InodeRef::from_record(&known.id, version, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert_eq!(split_path("/a//b/./c").unwrap(), ["a", "b", "c"]);
        assert!(split_path("/").unwrap().is_empty());
        assert!(matches!(
            split_path("/a/../b"),
            Err(ClientError::InvalidPath(_))
        ));
        assert!(matches!(
            split_path(&"x".repeat(256)),
            Err(ClientError::NameTooLong(_))
        ));
        assert!(check_name(&"x".repeat(255)).is_ok());
        assert!(check_name("a\0b").is_err());
    }
}
