//! Whole-file streams for the CLI, and chunk reads for the mount: a file is its chunk
//! list; all-zero chunks are holes (`Id::ZERO`) and take no space.
//!
//! Uploads and downloads keep at most `parallel_chunks` chunks in flight, so memory is
//! bounded by a few chunks whatever the file size.

use super::tree::InodeRef;
use super::{Client, ClientError, Result};
use crate::id::Id;
use crate::proto::{Inode, Kind, Timespec};
pub use crate::sys::current_ids;
use crate::sys::start_writeback;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::task::AbortOnDropHandle;

/// The outcome of a chunk task; a panic in one is an error of the transfer.
fn joined<T>(r: std::result::Result<T, tokio::task::JoinError>) -> Result<T> {
    r.map_err(|e| ClientError::Io(std::io::Error::other(format!("chunk task failed: {e}"))))
}

/// Called with the bytes moved since the last call.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// Reads until `buf` is full or the stream ends; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = r.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

impl Client {
    /// Stores a chunk, or records a hole when it is all zeros.
    pub async fn put_block(&self, data: Bytes) -> Result<Id> {
        if data.iter().all(|b| *b == 0) {
            return Ok(Id::ZERO);
        }
        self.put_chunk(data).await
    }

    /// Chunks a stream and stores the chunks, `parallel_chunks` at a time. Each chunk is
    /// stored by a task of its own, so hashing and sending go on while the next chunk
    /// is read (polled only from here, they would wait for every read: the CLI's put ran
    /// at half the mount's rate).
    pub async fn upload<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        reader: &mut R,
        chunk_bytes: u32,
        progress: Progress<'_>,
    ) -> Result<(Vec<Id>, u64)> {
        let mut keys: Vec<Id> = Vec::new();
        let mut size = 0u64;
        let mut pending = FuturesUnordered::new();
        let parallel = self.cfg.parallel_chunks.max(1);
        loop {
            let mut buf = vec![0u8; chunk_bytes as usize];
            let n = read_full(reader, &mut buf).await?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            size += n as u64;
            let index = keys.len();
            keys.push(Id::ZERO);
            while pending.len() >= parallel {
                let (i, len, res) = joined(pending.next().await.expect("non-empty"))?;
                keys[i] = res?;
                progress(len);
            }
            let data = Bytes::from(buf);
            let client = self.clone();
            pending.push(AbortOnDropHandle::new(tokio::spawn(async move {
                let len = data.len() as u64;
                (index, len, client.put_block(data).await)
            })));
            if n < chunk_bytes as usize {
                break;
            }
        }
        while let Some(done) = pending.next().await {
            let (i, len, res) = joined(done)?;
            keys[i] = res?;
            progress(len);
        }
        Ok((keys, size))
    }

    /// The bytes of chunk `index` of a file: its stored bytes, or zeros for a hole,
    /// cut to the file's size.
    pub async fn read_block(&self, inode: &Inode, index: usize) -> Result<Bytes> {
        let cb = inode.chunk_bytes.max(1) as u64;
        let start = index as u64 * cb;
        if start >= inode.size {
            return Ok(Bytes::new());
        }
        let len = (inode.size - start).min(cb) as usize;
        if let Some(data) = &inode.inline {
            // A small file's content, in its record: only the first chunk has bytes.
            let mut v = vec![0u8; len];
            if index == 0 {
                let n = data.len().min(len);
                v[..n].copy_from_slice(&data[..n]);
            }
            return Ok(Bytes::from(v));
        }
        let key = inode.chunks.get(index).copied().unwrap_or(Id::ZERO);
        if key == Id::ZERO {
            return Ok(Bytes::from(vec![0u8; len]));
        }
        let data = self.get_chunk(&key).await?;
        Ok(if data.len() >= len {
            data.slice(..len)
        } else {
            // A chunk shorter than the file says (a truncate-up): the rest reads as zeros.
            let mut v = data.to_vec();
            v.resize(len, 0);
            Bytes::from(v)
        })
    }

    /// Reads `len` bytes at `offset`, fetching the chunks involved in parallel.
    pub async fn read_at(&self, inode: &Inode, offset: u64, len: usize) -> Result<Vec<u8>> {
        if offset >= inode.size || len == 0 {
            return Ok(Vec::new());
        }
        let end = (offset + len as u64).min(inode.size);
        let cb = inode.chunk_bytes.max(1) as u64;
        let (first, last) = ((offset / cb) as usize, ((end - 1) / cb) as usize);
        let blocks: Vec<Bytes> =
            futures::future::try_join_all((first..=last).map(|i| self.read_block(inode, i)))
                .await?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (n, b) in blocks.iter().enumerate() {
            let base = (first + n) as u64 * cb;
            let from = offset.saturating_sub(base) as usize;
            let to = ((end - base) as usize).min(b.len());
            if from < to {
                out.extend_from_slice(&b[from..to]);
            }
        }
        Ok(out)
    }

    /// The blocks of a whole file in order, `parallel_chunks` chunks ahead, each fetched
    /// (and its hash checked) by a task of its own while earlier ones are consumed.
    fn blocks(
        self: &Arc<Self>,
        inode: &Inode,
    ) -> impl futures::Stream<Item = Result<Bytes>> + Send + 'static {
        let cb = inode.chunk_bytes.max(1) as u64;
        let count = inode.size.div_ceil(cb) as usize;
        let parallel = self.cfg.parallel_chunks.max(1);
        let (client, inode) = (self.clone(), Arc::new(inode.clone()));
        futures::stream::iter(0..count)
            .map(move |i| {
                let (client, inode) = (client.clone(), inode.clone());
                AbortOnDropHandle::new(tokio::spawn(
                    async move { client.read_block(&inode, i).await },
                ))
            })
            .buffered(parallel)
            .map(|r| joined(r)?)
    }

    /// Streams a whole file to `writer` (see `Client::blocks`).
    pub async fn download<W: AsyncWrite + Unpin>(
        self: &Arc<Self>,
        inode: &Inode,
        writer: &mut W,
        progress: Progress<'_>,
    ) -> Result<u64> {
        let mut blocks = std::pin::pin!(self.blocks(inode));
        let mut written = 0u64;
        while let Some(block) = blocks.next().await {
            let block = block?;
            writer.write_all(&block).await?;
            written += block.len() as u64;
            progress(block.len() as u64);
        }
        writer.flush().await?;
        Ok(written)
    }

    /// Streams a whole file into `file` and makes it durable (fsync) before returning.
    ///
    /// The blocks go to a writer thread of their own, straight from the received frames
    /// (no copy through async buffers), and the kernel is asked to start writing them
    /// back as they come (`WRITEBACK_STEP_BYTES`): left alone it starts only when a
    /// tenth of memory is dirty, and the final fsync would write the whole file after
    /// the download instead of alongside it.
    pub async fn download_to_file(
        self: &Arc<Self>,
        inode: &Inode,
        file: std::fs::File,
        progress: Progress<'_>,
    ) -> Result<u64> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(WRITER_QUEUE_BLOCKS);
        let writer = tokio::task::spawn_blocking(move || write_blocks(file, rx));
        let mut blocks = std::pin::pin!(self.blocks(inode));
        let mut written = 0u64;
        let mut failed = None;
        while let Some(block) = blocks.next().await {
            let block = match block {
                Ok(b) => b,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let len = block.len() as u64;
            if tx.send(block).await.is_err() {
                break; // The writer failed: its error is the answer.
            }
            written += len;
            progress(len);
        }
        drop(tx);
        let wrote = joined(writer.await)?;
        if let Some(e) = failed {
            return Err(e);
        }
        wrote?;
        Ok(written)
    }

    /// Stores a local stream as `path`, creating missing parent directories. An existing
    /// file at `path` gets the new content (same inode, so hard links see it).
    pub async fn put_file<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        path: &str,
        reader: &mut R,
        mode: u32,
        progress: Progress<'_>,
    ) -> Result<InodeRef> {
        let parts = super::tree::split_path(path)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(ClientError::IsDir("/".into()));
        };
        let (uid, gid) = current_ids();
        let parent = self.mkdir_p(&dirs.join("/"), uid, gid).await?;
        let chunk_bytes = self.cfg.chunk_bytes;
        let (chunks, size) = self.upload(reader, chunk_bytes, progress).await?;
        let now = Timespec::now();
        let set_content = |ino: &mut Inode| {
            if ino.kind == Kind::Dir {
                return Err(ClientError::IsDir(name.to_string()));
            }
            ino.chunks = chunks.clone();
            ino.inline = None;
            ino.size = size;
            ino.chunk_bytes = chunk_bytes;
            ino.mtime = now;
            ino.ctime = now;
            Ok(())
        };
        for _ in 0..16 {
            if let Some(e) = parent
                .inode
                .entries
                .get(*name)
                .copied()
                .or(self.lookup_child(&parent.id, name).await?)
            {
                let (_, r) = self.update_inode(&e.id, set_content).await?;
                return Ok(r);
            }
            let mut ino = Inode::new(Kind::File, mode, uid, gid, parent.id, chunk_bytes);
            set_content(&mut ino)?;
            match self
                .create_child(&parent.id, name, ino, Some(parent.clone()))
                .await
            {
                Ok(r) => return Ok(r),
                // Another writer created it meanwhile: give that file our content.
                Err(ClientError::Exists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Contended(path.to_string()))
    }

    /// Streams the file at `path` into `writer`. Returns its size.
    pub async fn get_file<W: AsyncWrite + Unpin>(
        self: &Arc<Self>,
        path: &str,
        writer: &mut W,
        progress: Progress<'_>,
    ) -> Result<u64> {
        let f = self.resolve(path).await?;
        if f.inode.kind == Kind::Dir {
            return Err(ClientError::IsDir(path.to_string()));
        }
        self.download(&f.inode, writer, progress).await
    }
}

/// Blocks queued for the writer thread of [`Client::download_to_file`].
const WRITER_QUEUE_BLOCKS: usize = 8;
/// Written bytes after which the writer asks the kernel to start writing them back.
const WRITEBACK_STEP_BYTES: u64 = 8 * 1024 * 1024;

/// The writer thread of [`Client::download_to_file`]: writes each block, starts the
/// write-back of every [`WRITEBACK_STEP_BYTES`] written, and fsyncs at the end.
fn write_blocks(
    mut file: std::fs::File,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<()> {
    use std::io::Write;
    let (mut done, mut flushed) = (0u64, 0u64);
    while let Some(block) = rx.blocking_recv() {
        file.write_all(&block)?;
        done += block.len() as u64;
        if done - flushed >= WRITEBACK_STEP_BYTES {
            start_writeback(&file, flushed, done - flushed);
            flushed = done;
        }
    }
    file.sync_all()
}
