//! The operations of the differential test, and how one is applied to a directory tree.
//!
//! An operation is plain data (paths relative to a run's root), so a sequence can be
//! printed, replayed on a fresh tree and cut down when it fails. Each one is a whole
//! syscall sequence (open, write, close): nothing stays open between operations, so
//! what one mount closed, an operation on the other mount opens afterwards.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// One operation of a worker, through one of the two mounts.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    pub worker: usize,
    pub mount: usize,
    pub kind: OpKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    /// open(O_CREAT|O_WRONLY, mode) with O_TRUNC, or O_EXCL; write `len` bytes; close.
    Create {
        path: String,
        len: usize,
        seed: u64,
        excl: bool,
        mode: u32,
    },
    /// open(O_WRONLY) (O_APPEND when `off` is None), one write, close.
    Write {
        path: String,
        off: Option<u64>,
        len: usize,
        seed: u64,
    },
    Truncate {
        path: String,
        len: u64,
    },
    /// The whole content, read back (its length and hash are the outcome).
    Read {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        noreplace: bool,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    /// setxattr with flags 0, XATTR_CREATE or XATTR_REPLACE; `value: None` removes it.
    Xattr {
        path: String,
        name: String,
        value: Option<Vec<u8>>,
        flags: i32,
    },
}

/// What an operation gave: success (with the bytes a read saw), or an errno.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Read { len: u64, hash: u64 },
    Err(i32),
}

impl OpKind {
    /// Whether a successful run of this operation takes a name away (or points it at
    /// another inode): the other mount may serve the old name for up to attr_timeout.
    pub fn removes_names(&self) -> bool {
        matches!(
            self,
            OpKind::Unlink { .. } | OpKind::Rmdir { .. } | OpKind::Rename { .. }
        )
    }
}

/// Applies `op` under `root` and says how it went.
pub fn apply(root: &Path, op: &OpKind) -> Outcome {
    match run(root, op) {
        Ok(o) => o,
        Err(e) => Outcome::Err(e.raw_os_error().unwrap_or(-1)),
    }
}

fn run(root: &Path, op: &OpKind) -> std::io::Result<Outcome> {
    let p = |rel: &str| root.join(rel);
    match op {
        OpKind::Create {
            path,
            len,
            seed,
            excl,
            mode,
        } => {
            let mut o = OpenOptions::new();
            o.write(true).mode(*mode);
            if *excl {
                o.create_new(true);
            } else {
                o.create(true).truncate(true);
            }
            let mut f = o.open(p(path))?;
            f.write_all(&pattern(*len, *seed))?;
            close(f)?;
        }
        OpKind::Write {
            path,
            off,
            len,
            seed,
        } => {
            let mut o = OpenOptions::new();
            match off {
                Some(_) => o.write(true),
                None => o.append(true),
            };
            let mut f = o.open(p(path))?;
            let data = pattern(*len, *seed);
            match off {
                Some(off) => std::os::unix::fs::FileExt::write_all_at(&f, &data, *off)?,
                None => f.write_all(&data)?,
            }
            close(f)?;
        }
        OpKind::Truncate { path, len } => {
            nix::unistd::truncate(&p(path), *len as i64)?;
        }
        OpKind::Read { path } => {
            let mut f = std::fs::File::open(p(path))?;
            let mut data = Vec::new();
            f.read_to_end(&mut data)?;
            close(f)?;
            return Ok(Outcome::Read {
                len: data.len() as u64,
                hash: hash(&data),
            });
        }
        OpKind::Rename {
            from,
            to,
            noreplace,
        } => {
            if *noreplace {
                let cwd = std::fs::File::open(root)?;
                nix::fcntl::renameat2(
                    &cwd,
                    Path::new(from),
                    &cwd,
                    Path::new(to),
                    nix::fcntl::RenameFlags::RENAME_NOREPLACE,
                )?;
            } else {
                std::fs::rename(p(from), p(to))?;
            }
        }
        OpKind::Link { from, to } => std::fs::hard_link(p(from), p(to))?,
        OpKind::Unlink { path } => std::fs::remove_file(p(path))?,
        OpKind::Mkdir { path, mode } => {
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), *mode)
                .create(p(path))?
        }
        OpKind::Rmdir { path } => std::fs::remove_dir(p(path))?,
        OpKind::Symlink { target, path } => std::os::unix::fs::symlink(target, p(path))?,
        OpKind::Chmod { path, mode } => {
            std::fs::set_permissions(p(path), std::fs::Permissions::from_mode(*mode))?
        }
        OpKind::Xattr {
            path,
            name,
            value,
            flags,
        } => match value {
            Some(v) => rustix::fs::setxattr(
                p(path),
                name.as_str(),
                v,
                rustix::fs::XattrFlags::from_bits_retain(*flags as u32),
            )?,
            None => rustix::fs::removexattr(p(path), name.as_str())?,
        },
    }
    Ok(Outcome::Ok)
}

/// close(2) with its error: a mount reports a failed upload or commit there.
fn close(f: std::fs::File) -> std::io::Result<()> {
    nix::unistd::close(f).map_err(std::io::Error::from)
}

/// Deterministic bytes: `len` of them from `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = super::rng::Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&r.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a: enough to tell contents apart in a report.
pub fn hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {} mount {}: ", self.worker, self.mount)?;
        match &self.kind {
            OpKind::Create {
                path,
                len,
                excl,
                mode,
                ..
            } => write!(
                f,
                "create{} {path} mode {mode:o}, write {len} bytes, close",
                if *excl { " (O_EXCL)" } else { " (O_TRUNC)" }
            ),
            OpKind::Write { path, off, len, .. } => match off {
                Some(off) => write!(f, "write {len} bytes at {off} into {path}"),
                None => write!(f, "append {len} bytes to {path}"),
            },
            OpKind::Truncate { path, len } => write!(f, "truncate {path} to {len}"),
            OpKind::Read { path } => write!(f, "read {path}"),
            OpKind::Rename {
                from,
                to,
                noreplace,
            } => write!(
                f,
                "rename {from} -> {to}{}",
                if *noreplace {
                    " (RENAME_NOREPLACE)"
                } else {
                    ""
                }
            ),
            OpKind::Link { from, to } => write!(f, "link {from} -> {to}"),
            OpKind::Unlink { path } => write!(f, "unlink {path}"),
            OpKind::Mkdir { path, mode } => write!(f, "mkdir {path} mode {mode:o}"),
            OpKind::Rmdir { path } => write!(f, "rmdir {path}"),
            OpKind::Symlink { target, path } => write!(f, "symlink {path} -> {target}"),
            OpKind::Chmod { path, mode } => write!(f, "chmod {mode:o} {path}"),
            OpKind::Xattr {
                path,
                name,
                value,
                flags,
            } => match value {
                Some(v) => write!(f, "setxattr {path} {name}={v:?} flags {flags}"),
                None => write!(f, "removexattr {path} {name}"),
            },
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Read { len, hash } => write!(f, "read {len} bytes (hash {hash:016x})"),
            Outcome::Err(e) => write!(f, "{}", errno_name(*e)),
        }
    }
}

/// An errno by its name, for reports.
pub fn errno_name(e: i32) -> String {
    let name = nix::errno::Errno::from_raw(e);
    format!("{name:?} ({e})")
}
