//! renameat2's RENAME_EXCHANGE and RENAME_WHITEOUT, which the kernel passes to FUSE
//! (RENAME_NOREPLACE is plain `rename` with a check, in vfs.rs).

use super::errno::log_errno;
use super::vfs::{Caller, Fs, FsResult};
use crate::client::kv::Cas;
use crate::id::Id;
use crate::proto::{DirEntry, Inode, Kind, Record};
use fuser::{Errno, INodeNo};
use std::ffi::OsStr;

impl Fs {
    /// rename with RENAME_EXCHANGE or RENAME_WHITEOUT in `flags` (the kernel refuses
    /// EXCHANGE combined with either other flag before asking).
    pub async fn rename2(
        &self,
        who: Caller,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if exchange && flags != libc::RENAME_EXCHANGE {
            return Err(Errno::EINVAL);
        }
        let (name, newname) = (
            name.to_str().ok_or(Errno::EINVAL)?,
            newname.to_str().ok_or(Errno::EINVAL)?,
        );
        let (src, dst) = (self.id(parent)?, self.id(newparent)?);
        self.settle_name(&src, name).await?;
        self.settle_name(&dst, newname).await?;
        let res = if exchange {
            self.client()
                .exchange(&src, name, &dst, newname)
                .await
                .map(|()| None)
        } else {
            self.rename_whiteout(who, &src, name, &dst, newname, flags)
                .await
        };
        // Names and the moved inodes' records changed (ctime; a directory's parent).
        self.engine.forget_all_dirs();
        let replaced = res.map_err(|e| log_errno("rename", &e))?;
        if let Some((old, left)) = replaced {
            self.engine.forget_dir(&old);
            self.maybe_delete(&old, left).await;
        }
        Ok(())
    }

    /// RENAME_WHITEOUT: a rename that leaves a whiteout (a character device 0/0, as
    /// overlayfs makes them) under the source name, in the same directory write that
    /// takes the source out. The whiteout's inode is stored first; a rename that fails
    /// removes it again.
    async fn rename_whiteout(
        &self,
        who: Caller,
        src: &Id,
        name: &str,
        dst: &Id,
        newname: &str,
        flags: u32,
    ) -> crate::client::Result<Option<(Id, u32)>> {
        let client = self.client();
        let mut w = Inode::new(
            Kind::CharDevice,
            0,
            who.uid,
            who.gid,
            *src,
            self.cfg.chunk_bytes,
        );
        w.rdev = 0;
        let wid = Id::random();
        if let Cas::Conflict(_) = client
            .cas_record(&wid, 0, Record::Inode(Box::new(w)))
            .await?
        {
            return Err(crate::client::ClientError::Contended(format!(
                "inode {}",
                wid.short()
            )));
        }
        let leave = DirEntry {
            id: wid,
            kind: Kind::CharDevice,
        };
        let no_replace = flags & libc::RENAME_NOREPLACE != 0;
        let res = client
            .rename_leaving(src, name, dst, newname, no_replace, Some(leave))
            .await;
        if res.is_err() {
            let _ = client.delete_inode(&wid).await;
        }
        res
    }
}
