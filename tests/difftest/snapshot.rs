//! A tree as a user would check it: names, kinds, sizes, contents, modes, link
//! counts, symlink targets, `user.*` extended attributes, and which names are hard
//! links of one file. Not times (the local disk and the ring keep their own clocks)
//! and not directory sizes (each filesystem counts them its own way).

use super::ops::hash;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    /// Regular files and symlinks.
    pub size: Option<u64>,
    pub content: Option<u64>,
    pub target: Option<String>,
    /// Permission bits (not for symlinks, whose mode is always 777).
    pub mode: Option<u32>,
    pub nlink: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub entries: BTreeMap<String, Entry>,
    /// The names of each file with several links, each group sorted.
    pub links: Vec<Vec<String>>,
}

/// Reads the tree under `root` (symlinks are not followed).
pub fn take(root: &Path) -> std::io::Result<Snapshot> {
    let mut s = Snapshot::default();
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    walk(root, "", &mut s, &mut by_ino)?;
    s.links = by_ino.into_values().filter(|g| g.len() > 1).collect();
    for g in &mut s.links {
        g.sort();
    }
    s.links.sort();
    Ok(s)
}

fn walk(
    root: &Path,
    rel: &str,
    s: &mut Snapshot,
    by_ino: &mut BTreeMap<u64, Vec<String>>,
) -> std::io::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for n in names {
        let path = if rel.is_empty() {
            n
        } else {
            format!("{rel}/{n}")
        };
        let full = root.join(&path);
        let md = std::fs::symlink_metadata(&full)?;
        let ft = md.file_type();
        let mut e = Entry {
            kind: "file",
            size: None,
            content: None,
            target: None,
            mode: Some(md.mode() & 0o7777),
            nlink: md.nlink(),
            xattrs: BTreeMap::new(),
        };
        if ft.is_symlink() {
            e.kind = "symlink";
            e.mode = None;
            let t = std::fs::read_link(&full)?;
            e.size = Some(md.len());
            e.target = Some(t.to_string_lossy().into_owned());
        } else {
            e.xattrs = xattrs(&full)?;
            if ft.is_dir() {
                e.kind = "dir";
            } else {
                e.size = Some(md.len());
                e.content = Some(hash(&std::fs::read(&full)?));
                by_ino.entry(md.ino()).or_default().push(path.clone());
            }
        }
        s.entries.insert(path.clone(), e);
        if ft.is_dir() {
            walk(root, &path, s, by_ino)?;
        }
    }
    Ok(())
}

fn xattrs(p: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(p, &mut buf[..])?;
    let mut out = BTreeMap::new();
    for name in buf[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if !name.starts_with("user.") {
            continue;
        }
        let mut v = vec![0u8; 64 * 1024];
        let len = rustix::fs::lgetxattr(p, name.as_str(), &mut v[..])?;
        v.truncate(len);
        out.insert(name, v);
    }
    Ok(out)
}

/// The differences of `got` from `want`, a line each (at most `max`).
pub fn diff(want: &Snapshot, got: &Snapshot, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (p, w) in &want.entries {
        match got.entries.get(p) {
            None => out.push(format!("{p}: missing ({} in the local tree)", w.kind)),
            Some(g) if g != w => out.push(format!("{p}: {}", entry_diff(w, g))),
            Some(_) => {}
        }
    }
    for (p, g) in &got.entries {
        if !want.entries.contains_key(p) {
            out.push(format!("{p}: extra {} (not in the local tree)", g.kind));
        }
    }
    if want.links != got.links {
        out.push(format!(
            "hard links: local {:?}, chordfs {:?}",
            want.links, got.links
        ));
    }
    out.truncate(max);
    out
}

fn entry_diff(w: &Entry, g: &Entry) -> String {
    let mut d = Vec::new();
    if w.kind != g.kind {
        d.push(format!("kind {} (local {})", g.kind, w.kind));
    }
    if w.size != g.size {
        d.push(format!("size {:?} (local {:?})", g.size, w.size));
    }
    if w.content != g.content {
        d.push("content differs".to_string());
    }
    if w.target != g.target {
        d.push(format!("target {:?} (local {:?})", g.target, w.target));
    }
    if w.mode != g.mode {
        d.push(format!(
            "mode {:o} (local {:o})",
            g.mode.unwrap_or(0),
            w.mode.unwrap_or(0)
        ));
    }
    if w.nlink != g.nlink {
        d.push(format!("nlink {} (local {})", g.nlink, w.nlink));
    }
    if w.xattrs != g.xattrs {
        d.push(format!("xattrs {:?} (local {:?})", g.xattrs, w.xattrs));
    }
    d.join(", ")
}
