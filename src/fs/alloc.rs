//! Space and ranges: `copy_file_range` that shares chunks (a server-side copy),
//! `fallocate` in every mode the kernel passes, and SEEK_DATA/SEEK_HOLE. What each
//! promises is in docs/mount.md ("Copies, holes and ranges").

use super::errno::log_errno;
use super::handles::FILE_MAX_BYTES;
use super::vfs::{too_big, Fs, FsResult};
use crate::client::ranges::{plan_copy, CopyPiece};
use crate::id::Id;
use fuser::Errno;

/// Bytes moved per read and write when a copy moves bytes (its unaligned edges, or
/// everything between files of different chunk sizes).
const COPY_STEP_BYTES: u64 = 1024 * 1024;
/// Longest copy one call makes: its answer counts bytes in 32 bits (the kernel asks
/// for at most this much anyway, and `cp` calls again for the rest).
const COPY_MAX_BYTES: u64 = (u32::MAX as u64) & !0xfff;

impl Fs {
    /// copy_file_range within the mount. The destination's chunks that the copy covers
    /// whole, at the same place within a chunk as in the source, name the source's
    /// chunks (no byte moves, so a copy costs about its metadata); only the edges
    /// (and copies between files of different chunk sizes) move bytes. Each file's
    /// record is its own afterwards: writing either changes only that one's map. The
    /// shared chunks are touched on their holders before the destination's record
    /// names them, so garbage collection keeps them (`client/keep.rs`). The copy is
    /// committed before the call returns. Returns the bytes copied (0 at the source's
    /// end); overlapping ranges of one file are EINVAL (copy_file_range(2)).
    pub async fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<u32> {
        // A lapsed lock lease fails writes through the handle (docs/locks.md).
        self.lock_check(fh_out)?;
        let (fin, fout) = (self.file(fh_in)?, self.file(fh_out)?);
        let e = &self.engine;
        // The source as its record: this mount's writes to it uploaded and named.
        fin.commit(e)
            .await
            .map_err(|err| log_errno("copy_file_range: source", &err))?;
        let (size_in, cb_in) = fin.layout().await;
        if off_in >= size_in || len == 0 {
            return Ok(0);
        }
        let n = len.min(size_in - off_in).min(COPY_MAX_BYTES);
        if fin.id == fout.id && off_out < off_in + n && off_in < off_out + n {
            return Err(Errno::EINVAL);
        }
        match off_out.checked_add(n) {
            Some(end) if end <= FILE_MAX_BYTES => {}
            _ => return Err(Errno::EFBIG),
        }
        let (_, cb_out) = fout.layout().await;
        if too_big(off_out + n, cb_out) {
            return Err(Errno::EFBIG);
        }
        let plan = if cb_in == cb_out {
            plan_copy(off_in, off_out, n, cb_in)
        } else {
            vec![CopyPiece::Bytes {
                src: off_in,
                dst: off_out,
                len: n,
            }]
        };
        let mut shared: Vec<(usize, Id)> = Vec::new();
        let mut bytes: Vec<(u64, u64, u64)> = Vec::new();
        for piece in plan {
            match piece {
                CopyPiece::Bytes { src, dst, len } => bytes.push((src, dst, len)),
                CopyPiece::Share { src, dst, count } => {
                    let keys = fin.chunk_keys(src, count).await;
                    for (k, key) in keys.into_iter().enumerate() {
                        match key {
                            Some(key) => shared.push((dst + k, key)),
                            // In memory here (written since the commit above): its bytes.
                            None => bytes.push((
                                (src + k) as u64 * cb_in,
                                (dst + k) as u64 * cb_in,
                                cb_in,
                            )),
                        }
                    }
                }
            }
        }
        if let Some(&(last, _)) = shared.last() {
            let keys: Vec<Id> = shared.iter().map(|(_, k)| *k).collect();
            e.client
                .keep_chunks(&keys)
                .await
                .map_err(|err| log_errno("copy_file_range: keeping shared chunks", &err))?;
            let end = ((last as u64 + 1) * cb_in).min(off_out + n);
            fout.share_in(&shared, end).await;
        }
        for (src, dst, len) in bytes {
            let mut done = 0;
            while done < len {
                let step = (len - done).min(COPY_STEP_BYTES);
                let data = fin
                    .read(e, src + done, step as usize)
                    .await
                    .map_err(|err| log_errno("copy_file_range: read", &err))?;
                if data.is_empty() {
                    break; // the source shrank meanwhile
                }
                fout.write(e, Some(dst + done), &data)
                    .await
                    .map_err(|err| log_errno("copy_file_range: write", &err))?;
                done += data.len() as u64;
            }
        }
        fout.commit(e)
            .await
            .map_err(|err| log_errno("copy_file_range: commit", &err))?;
        Ok(n as u32)
    }

    /// fallocate(2). Mode 0 grows the file (the new range reads as zeros; the ring has
    /// no reservations, so nothing is allocated ahead), KEEP_SIZE alone does nothing.
    /// PUNCH_HOLE (with KEEP_SIZE, as the kernel insists) and ZERO_RANGE make whole
    /// chunks holes and zero the edges in place; COLLAPSE_RANGE and INSERT_RANGE shift
    /// the chunk map, aligned to the chunk size (`st_blksize`), else EINVAL. The change
    /// is committed before the call returns.
    pub async fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        self.lock_check(fh)?;
        let f = self.file(fh)?;
        let e = &self.engine;
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        let (size, cb) = f.layout().await;
        // INSERT_RANGE grows the file by `length` past its current end.
        let grown = if mode & libc::FALLOC_FL_INSERT_RANGE != 0 {
            size.checked_add(length).ok_or(Errno::EFBIG)?
        } else {
            end
        };
        if end > FILE_MAX_BYTES || too_big(end.max(grown), cb) {
            return Err(Errno::EFBIG);
        }
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let res = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 if keep => return Ok(()),
            0 => f.extend(e, end).await,
            libc::FALLOC_FL_PUNCH_HOLE if keep => f.zero_range(e, offset, end, false).await,
            libc::FALLOC_FL_ZERO_RANGE => f.zero_range(e, offset, end, !keep).await,
            libc::FALLOC_FL_COLLAPSE_RANGE if !keep => f.collapse(e, offset, length).await,
            libc::FALLOC_FL_INSERT_RANGE if !keep => f.insert(e, offset, length).await,
            libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE => {
                return Err(Errno::EINVAL)
            }
            _ => return Err(Errno::EOPNOTSUPP),
        };
        res.map_err(|err| log_errno("fallocate", &err))?;
        f.commit(e)
            .await
            .map_err(|err| log_errno("fallocate", &err))
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE (the kernel answers the other whences
    /// itself): holes are the chunks the map leaves out, and the end of the file.
    pub async fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let f = self.file(fh)?;
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(Errno::EINVAL),
        };
        if offset < 0 {
            return Err(Errno::ENXIO);
        }
        f.seek(offset as u64, data)
            .await
            .map(|o| o as i64)
            .ok_or(Errno::ENXIO)
    }
}
