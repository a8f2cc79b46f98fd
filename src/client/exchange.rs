//! renameat2(RENAME_EXCHANGE): two names swap the inodes they hold.
//!
//! Within one directory the swap is one compare-and-set of that directory: atomic.
//! Across directories it is two, ordered as a cross-directory rename is (target
//! first): the second directory's write expects its entry unchanged, and when it is
//! not, the first is undone, so a concurrent change to either name makes the exchange
//! fail (`EAGAIN`) rather than half happen. Between the two writes both names hold the
//! source's inode: a reader of either name finds an inode, never ENOENT. A client that
//! dies between them leaves the target's inode without a name (kept, not collected);
//! the rename intents of docs/metadata.md §2 are what closes that window.

use super::{Client, ClientError, Result};
use crate::id::Id;
use crate::proto::{DirEntry, Inode, Kind, Timespec};

/// Sets `name` in `dir` to `to`, when it holds `from` now.
fn swap_entry(dir: &mut Inode, name: &str, from: &Id, to: DirEntry, now: Timespec) -> Result<()> {
    if dir.kind != Kind::Dir {
        return Err(ClientError::NotDir(name.to_string()));
    }
    if dir.entries.get(name).map(|e| e.id) != Some(*from) {
        return Err(ClientError::Contended(name.to_string()));
    }
    dir.entries.insert(name.to_string(), to);
    dir.mtime = now;
    dir.ctime = now;
    Ok(())
}

impl Client {
    /// Exchanges `a_parent/a_name` and `b_parent/b_name`; both must exist. Directories
    /// may be exchanged with anything, across directories too, but never into their
    /// own subtree (EINVAL).
    pub async fn exchange(
        &self,
        a_parent: &Id,
        a_name: &str,
        b_parent: &Id,
        b_name: &str,
    ) -> Result<()> {
        super::tree::check_name(a_name)?;
        super::tree::check_name(b_name)?;
        let a = self
            .lookup_child(a_parent, a_name)
            .await?
            .ok_or_else(|| ClientError::NotFound(a_name.to_string()))?;
        let b = self
            .lookup_child(b_parent, b_name)
            .await?
            .ok_or_else(|| ClientError::NotFound(b_name.to_string()))?;
        if a.id == b.id {
            return Ok(()); // two links of one inode: nothing changes
        }
        let now = Timespec::now();
        if a_parent == b_parent {
            self.update_inode(a_parent, |dir| {
                swap_entry(dir, a_name, &a.id, b, now)?;
                // Undo if the other name moved on: both change in this one write or neither.
                if dir.entries.get(b_name).map(|e| e.id) != Some(b.id) {
                    return Err(ClientError::Contended(b_name.to_string()));
                }
                dir.entries.insert(b_name.to_string(), a);
                Ok(())
            })
            .await?;
        } else {
            for (moved, into) in [(&a, b_parent), (&b, a_parent)] {
                if moved.kind == Kind::Dir && self.is_ancestor(&moved.id, into).await? {
                    return Err(ClientError::Invalid(
                        "cannot move a directory into itself".into(),
                    ));
                }
            }
            self.update_inode(b_parent, |dir| swap_entry(dir, b_name, &b.id, a, now))
                .await?;
            let second = self
                .update_inode(a_parent, |dir| swap_entry(dir, a_name, &a.id, b, now))
                .await;
            if let Err(e) = second {
                let _ = self
                    .update_inode(b_parent, |dir| swap_entry(dir, b_name, &a.id, b, now))
                    .await;
                return Err(e);
            }
        }
        // Each moved inode's ctime; a directory's parent (for `..`).
        for (moved, parent) in [(&a, *b_parent), (&b, *a_parent)] {
            self.update_inode(&moved.id, |ino| {
                ino.ctime = now;
                if ino.kind == Kind::Dir {
                    ino.parent = parent;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}
