//! The generator: random operation sequences, mostly valid, some deliberately not.
//!
//! Each worker owns a namespace: the directory `w<k>` and the names `k<k>?` in the
//! directory `shared` (which every worker edits at once). Its names come from a small
//! pool of its own, so names collide often (EEXIST, renames over files) and no path a
//! worker builds, even through its relative symlinks, reaches another worker's names:
//! workers run concurrently and the outcome stays deterministic.
//!
//! The model of the tree is a scratch local directory: every generated operation is
//! applied to it, so the next one is chosen from what exists (which files, which
//! directories) without restating POSIX in the generator.

use super::ops::{apply, OpKind};
use super::rng::Rng;
use std::path::Path;

/// Directory depth the generator builds to (components below a worker's root).
const MAX_DEPTH: usize = 3;
/// Names of each worker: k<worker>a .. k<worker>f.
const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f"];
/// Percent of operations whose path is replaced by an arbitrary one of the worker's
/// (missing, of the wrong kind, under a file...): their errno is compared too.
const INVALID_PERCENT: u64 = 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// A worker's entries as the scratch tree holds them now (paths from the run root).
struct Tree {
    files: Vec<String>,
    dirs: Vec<String>,
    links: Vec<String>,
    /// Every entry but the two roots.
    all: Vec<(String, Kind)>,
}

pub fn roots(worker: usize) -> [String; 2] {
    [format!("w{worker}"), "shared".to_string()]
}

fn name(worker: usize, i: usize) -> String {
    format!("k{worker}{}", NAMES[i % NAMES.len()])
}

fn scan(scratch: &Path, worker: usize) -> Tree {
    let mut t = Tree {
        files: Vec::new(),
        dirs: roots(worker).to_vec(),
        links: Vec::new(),
        all: Vec::new(),
    };
    let prefix = format!("k{worker}");
    for (i, root) in roots(worker).iter().enumerate() {
        walk(scratch, root, &mut t, i == 1, &prefix);
    }
    t
}

fn walk(scratch: &Path, dir: &str, t: &mut Tree, only_prefixed: bool, prefix: &str) {
    let Ok(rd) = std::fs::read_dir(scratch.join(dir)) else {
        return;
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !only_prefixed || n.starts_with(prefix))
        .collect();
    names.sort();
    for n in names {
        let rel = format!("{dir}/{n}");
        let Ok(md) = std::fs::symlink_metadata(scratch.join(&rel)) else {
            continue;
        };
        let kind = if md.file_type().is_symlink() {
            Kind::Symlink
        } else if md.is_dir() {
            Kind::Dir
        } else {
            Kind::File
        };
        t.all.push((rel.clone(), kind));
        match kind {
            Kind::File => t.files.push(rel),
            Kind::Symlink => t.links.push(rel),
            Kind::Dir => {
                t.dirs.push(rel.clone());
                walk(scratch, &rel, t, false, prefix);
            }
        }
    }
}

fn depth(path: &str) -> usize {
    path.split('/').count()
}

struct Gen<'a> {
    r: Rng,
    worker: usize,
    tree: Tree,
    scratch: &'a Path,
}

impl Gen<'_> {
    /// A name of the worker's pool not yet in `dir` (any of them when all are taken).
    fn fresh_in(&mut self, dir: &str) -> String {
        let start = self.r.below(NAMES.len() as u64) as usize;
        for i in 0..NAMES.len() {
            let p = format!("{dir}/{}", name(self.worker, start + i));
            if !self.scratch.join(&p).exists()
                && std::fs::symlink_metadata(self.scratch.join(&p)).is_err()
            {
                return p;
            }
        }
        format!("{dir}/{}", name(self.worker, start))
    }

    /// A fresh name in a directory shallow enough to hold one more level.
    fn fresh(&mut self) -> String {
        let dirs: Vec<String> = self
            .tree
            .dirs
            .iter()
            .filter(|d| depth(d) <= MAX_DEPTH)
            .cloned()
            .collect();
        let dir = self
            .r
            .pick(&dirs)
            .cloned()
            .unwrap_or_else(|| roots(self.worker)[0].clone());
        self.fresh_in(&dir)
    }

    /// Any path the worker could name: an existing directory (or a file, now and then)
    /// and a name of its pool, which may or may not exist.
    fn arbitrary(&mut self) -> String {
        let parent = if self.r.chance(15) && !self.tree.files.is_empty() {
            self.r.pick(&self.tree.files).cloned()
        } else {
            self.r.pick(&self.tree.dirs).cloned()
        };
        let n = name(self.worker, self.r.below(NAMES.len() as u64) as usize);
        format!(
            "{}/{n}",
            parent.unwrap_or_else(|| roots(self.worker)[0].clone())
        )
    }

    fn pick_or_arbitrary(&mut self, from: &[String]) -> String {
        match self.r.pick(from).cloned() {
            Some(p) if !self.r.chance(INVALID_PERCENT) => p,
            _ => self.arbitrary(),
        }
    }

    fn any_entry(&mut self) -> String {
        let all: Vec<String> = self.tree.all.iter().map(|(p, _)| p.clone()).collect();
        self.pick_or_arbitrary(&all)
    }

    fn size(&mut self) -> usize {
        match self.r.below(10) {
            0..=3 => self.r.below(200) as usize,
            4..=6 => 200 + self.r.below(20_000) as usize,
            7..=8 => 20_000 + self.r.below(120_000) as usize,
            _ => 140_000 + self.r.below(260_000) as usize,
        }
    }

    fn file_len(&self, path: &str) -> u64 {
        std::fs::metadata(self.scratch.join(path))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// A relative symlink target for a link at `link`: an entry of the worker's, a pool
    /// name, or one through "..", resolving inside the worker's names or nowhere.
    fn target(&mut self, link: &str) -> String {
        let dir_depth = depth(link) - 1;
        match self.r.below(3) {
            0 => {
                let all: Vec<String> = self.tree.all.iter().map(|(p, _)| p.clone()).collect();
                match self.r.pick(&all) {
                    Some(p) => format!("{}{p}", "../".repeat(dir_depth)),
                    None => name(self.worker, 0),
                }
            }
            1 => name(self.worker, self.r.below(NAMES.len() as u64) as usize),
            _ => format!(
                "../{}",
                name(self.worker, self.r.below(NAMES.len() as u64) as usize)
            ),
        }
    }

    fn next(&mut self) -> OpKind {
        self.tree = scan(self.scratch, self.worker);
        let files = self.tree.files.clone();
        let dirs: Vec<String> = self.tree.dirs[2..].to_vec();
        let links = self.tree.links.clone();
        match self.r.below(100) {
            0..=13 => {
                let path = if self.r.chance(85) {
                    self.fresh()
                } else {
                    self.pick_or_arbitrary(&files)
                };
                let path = if self.r.chance(1) {
                    format!("{}/{}", roots(self.worker)[0], "n".repeat(256))
                } else {
                    path
                };
                OpKind::Create {
                    path,
                    len: self.size(),
                    seed: self.r.next(),
                    excl: self.r.chance(30),
                    mode: *self.r.pick(&[0o644, 0o600, 0o755, 0o444]).unwrap(),
                }
            }
            14..=31 => {
                let path = self.pick_or_arbitrary(&files);
                let cur = self.file_len(&path);
                let off = match self.r.below(5) {
                    0 => Some(0),
                    1 => Some(self.r.below(cur + 1)),
                    2 => Some(cur),
                    3 => Some(cur + self.r.below(200_000)),
                    _ => None,
                };
                OpKind::Write {
                    path,
                    off,
                    len: self.size().max(1),
                    seed: self.r.next(),
                }
            }
            32..=37 => {
                let path = self.pick_or_arbitrary(&files);
                let cur = self.file_len(&path);
                let len = match self.r.below(4) {
                    0 => 0,
                    1 => self.r.below(cur + 1),
                    2 => cur + self.r.below(150_000),
                    _ => self.r.below(400_000),
                };
                OpKind::Truncate { path, len }
            }
            38..=45 => {
                let mut from = files.clone();
                from.extend(links.iter().cloned());
                OpKind::Read {
                    path: self.pick_or_arbitrary(&from),
                }
            }
            46..=55 => {
                let from = self.any_entry();
                let to = match self.r.below(10) {
                    0..=4 => self.fresh(),
                    5..=7 => self.any_entry(),
                    _ => self.arbitrary(),
                };
                OpKind::Rename {
                    from,
                    to,
                    noreplace: self.r.chance(15),
                }
            }
            56..=60 => {
                let from = if self.r.chance(85) {
                    self.pick_or_arbitrary(&files)
                } else {
                    self.any_entry()
                };
                OpKind::Link {
                    from,
                    to: self.fresh(),
                }
            }
            61..=66 => {
                let mut from = files.clone();
                from.extend(links.iter().cloned());
                let path = if self.r.chance(90) {
                    self.pick_or_arbitrary(&from)
                } else {
                    self.any_entry()
                };
                OpKind::Unlink { path }
            }
            67..=74 => OpKind::Mkdir {
                path: if self.r.chance(90) {
                    self.fresh()
                } else {
                    self.any_entry()
                },
                mode: *self.r.pick(&[0o755, 0o700, 0o775, 0o2755]).unwrap(),
            },
            75..=79 => {
                let empty: Vec<String> = dirs
                    .iter()
                    .filter(|d| {
                        std::fs::read_dir(self.scratch.join(d))
                            .map(|mut r| r.next().is_none())
                            .unwrap_or(false)
                    })
                    .cloned()
                    .collect();
                let path = match self.r.below(10) {
                    0..=5 => self.pick_or_arbitrary(&empty),
                    6..=8 => self.pick_or_arbitrary(&dirs),
                    _ => self.any_entry(),
                };
                OpKind::Rmdir { path }
            }
            80..=84 => {
                let path = self.fresh();
                OpKind::Symlink {
                    target: self.target(&path),
                    path,
                }
            }
            85..=89 => OpKind::Chmod {
                path: self.any_entry(),
                mode: *self
                    .r
                    .pick(&[0o644, 0o600, 0o755, 0o700, 0o444, 0o4755, 0o1777])
                    .unwrap(),
            },
            _ => {
                let mut on = files.clone();
                on.extend(dirs.iter().cloned());
                let path = if self.r.chance(95) {
                    self.pick_or_arbitrary(&on)
                } else {
                    self.any_entry()
                };
                let name = format!("user.{}", self.r.pick(&["a", "b", "c"]).unwrap());
                let value = (!self.r.chance(20)).then(|| {
                    let n = self.r.below(40) as usize;
                    super::ops::pattern(n, self.r.next())
                });
                let flags = match self.r.below(10) {
                    0..=6 => 0,
                    7..=8 => libc::XATTR_CREATE,
                    _ => libc::XATTR_REPLACE,
                };
                OpKind::Xattr {
                    path,
                    name,
                    value,
                    flags,
                }
            }
        }
    }
}

/// The operations of one worker: `count` of them from `seed`, each applied to `scratch`
/// (a directory holding the two roots) as it is chosen.
pub fn worker_ops(seed: u64, worker: usize, count: usize, scratch: &Path) -> Vec<(usize, OpKind)> {
    let mut g = Gen {
        r: Rng::new(seed ^ (worker as u64).wrapping_mul(0xA24B_AED4_963E_E407)),
        worker,
        tree: scan(scratch, worker),
        scratch,
    };
    let mut mount = g.r.below(2) as usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if g.r.chance(25) {
            mount = 1 - mount;
        }
        let op = g.next();
        apply(scratch, &op);
        out.push((mount, op));
    }
    out
}
